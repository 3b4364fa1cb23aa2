"""Findings 1 and 2: root must never follow a symlink a tenant planted in its own directories.

#1: a live process of mallory's service watched its `releases/` dir and, when a redeploy created
`releases/<did>/`, planted `src -> /any/dir`; root then moved the checkout into that dir and chowned
everything in it to the tenant (local root with /etc). #2: symlinks in the tenant's venvs dir
(`<hash>.lock`, `<hash>/.inkmcp-complete`, `_bare`) turned root's lock open, marker write and shim
creation into create/overwrite of any file.

One fixture replays both, the way the review did: mallory deploys a lab, arms a racer and a planter
inside it, then redeploys twice under load (v2 adds requirements.txt: lock + marker; v3 drops it:
the no-deps shim). Root-owned 0600 targets in a root 0700 dir must come out untouched.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.conftest import LAB_START, ROOT, deploy, host_of, lab_exec, lab_live, lab_repo, session, whoami
from tests.support import ServerProc, git_commit

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: starts or shares a real server

PYTHON = "/usr/bin/python3"  # InkMCP's default tenant_python, which the venv key includes
REQUIREMENTS = "# no deps\n"

# Arms the attacks inside mallory's running app (idempotent per process). Every event goes to
# $HOME/attack-log.jsonl: the home outlives the process a redeploy replaces.
ARM = r'''
import json, os, threading, time

LOG = os.path.join(os.environ["HOME"], "attack-log.jsonl")
_lock = threading.Lock()


def log(**event):
    with _lock, open(LOG, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **event}) + "\n")


def race(releases, own, target, stop):
    """The review's racer: find every new release dir and plant src -> target in it until that fails for good."""
    done, reported, n = set(), set(), 0
    while not stop.is_set():
        n += 1
        candidates = set()
        try:
            candidates.update(os.listdir(releases))
        except OSError as e:
            if ("listdir", e.errno) not in reported:
                reported.add(("listdir", e.errno))
                log(event="listdir-releases", outcome=attempt(os.listdir, releases)[0])
        # Mallory's own build step (v2's build_command) tells where it runs: since each tenant process is a
        # Landlock domain of its own, the app may no longer read a build step's /proc/<pid>/cwd (ptrace rules).
        try:
            with open(os.path.join(os.environ["HOME"], "known-releases")) as f:
                for line in f:
                    if line.startswith(releases + "/"):
                        candidates.add(line.strip()[len(releases) + 1:].split("/")[0])
        except OSError:
            pass
        for pid in os.listdir("/proc"):  # our own build steps and processes run inside the new release dir
            if pid.isdigit():
                try:
                    cwd = os.readlink(f"/proc/{pid}/cwd")
                except OSError:
                    continue
                if cwd.startswith(releases + "/"):
                    candidates.add(cwd[len(releases) + 1:].split("/")[0])
        for did in candidates - done - {own, "mallory-made", "mallory-link"}:
            if ("saw", did) not in reported:
                reported.add(("saw", did))
                log(event="saw-release", did=did)
            outcome = attempt(os.symlink, target, os.path.join(releases, did, "src"))[0]
            if outcome == "ok":
                log(event="planted-src", did=did)
                done.add(did)
            elif outcome == "EEXIST":
                log(event="src-exists", did=did)
                done.add(did)
            elif (did, outcome) not in reported:
                reported.add((did, outcome))
                log(event="symlink-src", did=did, outcome=outcome)
    log(event="racer-stopped", iterations=n)


def plant(venvs, lock_names, lock_target, marker_target, bare_target, stop):
    """The review's venv attack: links where root opened the lock, wrote the marker and made the shim."""
    for name in lock_names:
        log(event="lock", name=name, outcome=attempt(os.symlink, lock_target, os.path.join(venvs, name + ".lock"))[0])
    bare = os.path.join(venvs, "_bare")
    if os.path.lexists(bare) and not os.path.islink(bare):
        log(event="bare-moved", outcome=attempt(os.rename, bare, f"{bare}.old-{os.getpid()}")[0])
    if not os.path.islink(bare):
        log(event="bare", outcome=attempt(os.symlink, bare_target, bare)[0])
    while not stop.is_set():
        try:
            entries = os.listdir(venvs)
        except OSError:
            time.sleep(0.05)
            continue
        for name in entries:
            d = os.path.join(venvs, name)
            if name.startswith("_bare") or name.endswith(".lock") or os.path.islink(d) or not os.path.isdir(d):
                continue
            lock = d + ".lock"
            if not os.path.lexists(lock):
                log(event="lock", name=name, outcome=attempt(os.symlink, lock_target, lock)[0])
            marker = os.path.join(d, ".inkmcp-complete")
            if not os.path.lexists(marker):
                log(event="marker", venv=name, outcome=attempt(os.symlink, marker_target, marker)[0])
        time.sleep(0.005)


if "stop" not in STATE:
    cwd = os.getcwd()
    releases = os.path.dirname(os.path.dirname(cwd))
    venvs = os.path.join(os.path.dirname(releases), "venvs")
    STATE["stop"] = threading.Event()
    log(event="armed", releases=releases, venvs=venvs)
    threading.Thread(target=race, args=(releases, os.path.basename(os.path.dirname(cwd)), ARGS["release_target"],
                                        STATE["stop"]), daemon=True).start()
    threading.Thread(target=plant, args=(venvs, ARGS["lock_names"], ARGS["lock_target"], ARGS["marker_target"],
                                         ARGS["bare_target"], STATE["stop"]), daemon=True).start()
result = {"releases": os.path.dirname(os.path.dirname(os.getcwd()))}
'''

# What a tenant can do to the release dir it lives in, right now (#1, the precondition of the race).
TOUCH_RELEASES = r'''
import os
releases = os.path.dirname(os.path.dirname(os.getcwd()))
result = {
    "releases": releases,
    "mkdir": attempt(os.mkdir, os.path.join(releases, "mallory-made")),
    "symlink": attempt(os.symlink, ARGS["target"], os.path.join(releases, "mallory-link")),
    "listdir": attempt(os.listdir, releases)[0],
}
'''

READ_LOG = r'''
import json, os
if "stop" in STATE:
    STATE["stop"].set()
path = os.path.join(os.environ["HOME"], "attack-log.jsonl")
result = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
'''


def venv_key(requirements: str, python: str = PYTHON) -> str:
    """The venv dir name, computed as the attacker does (sha256 of interpreter + dependency files)."""
    digest = hashlib.sha256(f"python={python}\n".encode())
    digest.update(b"requirements.txt\n" + requirements.encode())
    return digest.hexdigest()[:24]


def root_dir(path: Path, files: dict[str, str]) -> Path:
    """A root 0700 directory holding root 0600 files: what the attacker aims at."""
    path.mkdir(mode=0o700)
    for name, content in files.items():
        f = path / name
        f.parent.mkdir(mode=0o700, exist_ok=True)
        f.write_text(content)
        f.chmod(0o600)
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Owner, group, mode and content of everything under `root`, links not followed."""
    out: dict[str, tuple[int, int, int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for p in (Path(dirpath), *(Path(dirpath) / n for n in (*dirnames, *filenames))):
            st = p.lstat()
            content = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(root))] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), content)
    return out


def load(srv: ServerProc, url: str, stop: threading.Event, threads: int = 12) -> list[threading.Thread]:
    """Keep the proxy and the event loop busy with requests to mallory's own site (widens the race window)."""

    def hammer() -> None:
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                try:
                    c.get(f"http://127.0.0.1:{srv.proxy_port}/", headers={"Host": host_of(url)})
                except httpx.HTTPError:
                    pass

    workers = [threading.Thread(target=hammer, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    return workers


@pytest.fixture(scope="module")
async def attack(server: ServerProc, repos: Path) -> dict[str, Any]:
    targets = repos / "targets"
    targets.mkdir(mode=0o711)
    release_target = root_dir(targets / "release-target", {"secret.txt": "ROOT-ONLY-RELEASE-TARGET\n",
                                                           "sub/deep.txt": "ROOT-ONLY-DEEP\n"})
    venv_target = root_dir(targets / "venv-target", {"victim.txt": "ORIGINAL-ROOT-ONLY-CONTENT\n"})
    bare_target = root_dir(targets / "bare-target", {})
    before = {p.name: snapshot(p) for p in (release_target, venv_target, bare_target)}

    repo = lab_repo(repos, "mrace")
    deploy_args = {"repo_url": str(repo), "start_command": LAB_START, "mode": "persistent",
                   "env_vars": {"LAB_OWNER": "mallory"}, "build_command": 'pwd >> "$HOME/known-releases"'}
    arm_args = {
        "release_target": str(release_target),
        "lock_names": [venv_key(REQUIREMENTS)],
        "lock_target": str(venv_target / "created-by-root"),
        "marker_target": str(venv_target / "victim.txt"),
        "bare_target": str(bare_target),
    }
    async with session(server, "mallory") as s:
        v1 = await lab_live(s, repo, "mallory")
        url = v1["url"]
        touched = lab_exec(server, url, TOUCH_RELEASES, target=str(release_target))
        who = whoami(server, url)
        lab_exec(server, url, ARM, **arm_args)

        git_commit(repo, {"requirements.txt": REQUIREMENTS}, "v2: add requirements.txt")
        stop = threading.Event()
        workers = load(server, url, stop)
        try:
            v2 = await deploy(s, **deploy_args)
        finally:
            stop.set()
            for w in workers:
                w.join(10)
        lab_exec(server, url, ARM, **arm_args)  # the live process may be v2 now: arm it too

        subprocess.run(["git", "-C", str(repo), "rm", "-q", "requirements.txt"], check=True)
        git_commit(repo, {}, "v3: no dependencies again")
        v3 = await deploy(s, **deploy_args)
        events = lab_exec(server, url, READ_LOG)
    venvs = Path(who["cwd"]).parents[2] / "venvs"
    return {"before": before, "targets": (release_target, venv_target, bare_target), "touched": touched,
            "events": events, "deployments": [v1, v2, v3], "venvs": venvs}


def _events(attack: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in attack["events"] if e["event"] == name]


async def test_tenant_cannot_create_entries_in_its_releases_dir(attack: dict[str, Any]) -> None:
    """#1 precondition: `releases/` is root's; a live tenant process gets EACCES there."""
    touched = attack["touched"]
    assert touched["mkdir"][0] == "EACCES", touched
    assert touched["symlink"][0] == "EACCES", touched
    assert touched["listdir"] == "EACCES", touched


async def test_release_dir_race_never_chowns_a_root_file(attack: dict[str, Any]) -> None:
    """#1: the racer ran through two redeploys (one under load) and root's target is untouched."""
    release_target = attack["targets"][0]
    assert snapshot(release_target) == attack["before"]["release-target"], (
        f"root-owned target changed: {sorted(os.listdir(release_target))}; attacker saw {attack['events']}")
    planted = _events(attack, "planted-src")
    assert planted == [], f"the racer planted src symlinks: {planted}"
    # the attack really ran: the racer found the new release dirs (its own build and app processes run there)
    assert _events(attack, "armed") and _events(attack, "saw-release"), attack["events"]
    assert all(d["status"] in ("live", "failed") for d in attack["deployments"])


async def test_venv_symlinks_never_redirect_root_writes(attack: dict[str, Any]) -> None:
    """#2: lock, marker and shim links planted in the tenant's venvs dir: nothing created or overwritten."""
    _, venv_target, bare_target = attack["targets"]
    assert not (venv_target / "created-by-root").exists(), "root created a file through the planted lock link"
    assert snapshot(venv_target) == attack["before"]["venv-target"], (venv_target / "victim.txt").read_text()
    assert snapshot(bare_target) == attack["before"]["bare-target"], sorted(os.listdir(bare_target))
    # the links were in place when root built: the attacker's own log says so
    assert any(e["outcome"] == "ok" for e in _events(attack, "lock")), attack["events"]
    assert any(e["outcome"] == "ok" for e in _events(attack, "bare")), attack["events"]
    assert any(e["outcome"] == "ok" for e in _events(attack, "marker")), attack["events"]


async def test_venv_locks_and_markers_are_not_in_the_tenant_dir(attack: dict[str, Any]) -> None:
    """#2 fix: root creates nothing in the tenant's venvs dir (its venv locks and markers live elsewhere)."""
    venvs: Path = attack["venvs"]
    built = [d for d in venvs.iterdir() if not d.is_symlink() and (d / "bin").is_dir()]
    assert built, f"v2 built no virtualenv in {venvs}: {sorted(os.listdir(venvs))}"
    by_root, bookkeeping = [], []
    for dirpath, dirnames, filenames in os.walk(venvs):
        for name in (*dirnames, *filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            if st.st_uid == 0:
                by_root.append(str(p.relative_to(venvs)))
            ours = (name.endswith(".lock") and dirpath == str(venvs)) or name == ".inkmcp-complete"
            if ours and stat.S_ISREG(st.st_mode):
                bookkeeping.append(str(p.relative_to(venvs)))
    assert by_root == [], f"root-owned entries in the tenant-writable venvs dir: {by_root[:20]}"
    assert bookkeeping == [], f"InkMCP's lock/marker files in the tenant-writable venvs dir: {bookkeeping}"
