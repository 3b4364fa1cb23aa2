"""The DR drill's world: a Storage Box stand-in (real sshd on port 23 with rsync, in its own network namespace),
the Hetzner API stand-in next to the clients, a "Postgres host" mount namespace for the factory's unchanged
backup script, and PostgreSQL clusters from the embedded server's binaries run as the `postgres` OS user (as
Debian runs them on the factory host).

Topology: netns `drc*` (clients: the backup script, `inkmcp dr`, the API stand-in on 127.0.0.1:8089) -- veth --
netns `drb*` (the box: sshd on 192.0.2.62:23, user u4242 whose home is the box). Every daemon started here is
stopped by its PID in teardown, and both namespaces are deleted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.dr.hetzner_standin import TOKEN as API_TOKEN
from tests.hardening.conftest import stop_pid
from tests.requirements import require, require_root

REPO = Path(__file__).resolve().parents[2]
BOX_IP = "192.0.2.62"
CLIENT_IP = "192.0.2.61"
BOX_USER = "u4242"
BOX_UID = 4242
API_PORT = 8089


def run(*argv: str, check: bool = True, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)[:300]} -> {r.returncode}\nstdout: {r.stdout[-2000:]}\n"
                             f"stderr: {r.stderr[-2000:]}")
    return r  # type: ignore[no-any-return]


def wait_until(probe: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def pg_bin() -> Path:
    from inkmcp.store.embedded import _bin_dir

    return _bin_dir()


@dataclass
class Cluster:
    """One PostgreSQL cluster from the embedded binaries, owned and run by the `postgres` OS user."""

    data: Path
    sock: Path
    started: bool = False

    def start(self) -> None:
        for d in (self.data, self.sock):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.chown(d, "postgres", "postgres")
        b = pg_bin()
        run("runuser", "-u", "postgres", "--", str(b / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth-local=trust", "--encoding=UTF8", "--locale=C", "--no-instructions", "--no-sync", timeout=120)
        run("runuser", "-u", "postgres", "--", str(b / "pg_ctl"), "-D", str(self.data), "-l",
            str(self.data / "server.log"), "-w", "-o",
            f"-c listen_addresses='' -c unix_socket_directories={self.sock} -c port=5432 -c fsync=off", "start",
            timeout=60)
        self.started = True

    def stop(self) -> None:
        if self.started:
            run("runuser", "-u", "postgres", "--", str(pg_bin() / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                "-w", "stop", check=False, timeout=60)
            self.started = False

    def psql(self, sql: str, db: str = "postgres", user: str = "postgres") -> str:
        return run(str(pg_bin() / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", str(self.sock), "-U",
                   user, "-d", db, "-c", sql).stdout

    def dump_text(self, db: str) -> str:
        """Plain pg_dump with a fixed \\restrict key (PostgreSQL 18 otherwise writes a random one per run)."""
        return run(str(pg_bin() / "pg_dump"), "--restrict-key=inkmcpdrtest", "-h", str(self.sock), "-U", "postgres",
                   "-d", db).stdout


def start_box_sshd(sshd_dir: Path, *, user: str, uid: int, home: Path, address: str, authorized_key: Path,
                   overlay: str, netns: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """An sshd playing a Storage Box on `address`:23 (in `netns` when given): key-only login of `user` (home
    `home`, which the caller makes) with `authorized_key`, sftp, nothing else. The user exists only inside sshd's
    private mount namespace: an overlay on /etc whose upper layer holds passwd and group with the user added (a
    bind mount of the files alone would be bypassed as soon as anything on the host rewrites /etc/passwd by rename,
    as useradd does). Returns the running sshd and its host key ("type base64"); stopped again by its PID if it
    does not come up."""
    (sshd_dir / "authorized_keys").mkdir(parents=True)
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sshd_dir / "host_ed25519"))
    host_key = " ".join((sshd_dir / "host_ed25519.pub").read_text().split()[:2])
    shutil.copy(authorized_key, sshd_dir / "authorized_keys" / user)
    upper, work = sshd_dir / "etc-upper", sshd_dir / "etc-work"
    upper.mkdir()
    work.mkdir()
    (upper / "passwd").write_text(Path("/etc/passwd").read_text()
                                  + f"{user}:x:{uid}:{uid}:Storage Box stand-in:{home}:/bin/sh\n")
    (upper / "group").write_text(Path("/etc/group").read_text() + f"{user}:x:{uid}:\n")
    (sshd_dir / "sshd_config").write_text(
        f"Port 23\nListenAddress {address}\nHostKey {sshd_dir}/host_ed25519\nPidFile {sshd_dir}/sshd.pid\n"
        f"AuthorizedKeysFile {sshd_dir}/authorized_keys/%u\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin no\n"
        f"AllowUsers {user}\nX11Forwarding no\nAllowTcpForwarding no\nSubsystem sftp internal-sftp\n")
    run("/usr/sbin/sshd", "-t", "-f", str(sshd_dir / "sshd_config"))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    with open(sshd_dir / "sshd.log", "wb") as log:
        proc = subprocess.Popen(
            [*(["ip", "netns", "exec", netns] if netns else []), "unshare", "--mount", "--propagation", "private",
             "sh", "-c", f"mount -t overlay {overlay} -o lowerdir=/etc,upperdir={upper},workdir={work} /etc && "
             f"exec /usr/sbin/sshd -D -e -f {sshd_dir}/sshd_config"], stdout=log, stderr=log)
    try:
        wait_until(lambda: b"Server listening" in (sshd_dir / "sshd.log").read_bytes() or proc.poll() is not None,
                   10, "the Storage Box stand-in's sshd")
        assert proc.poll() is None, (sshd_dir / "sshd.log").read_text()
    except BaseException:
        stop_pid(proc.pid, wait=5)
        raise
    return proc, host_key


@dataclass
class World:
    root: Path
    client_ns: str
    box_ns: str
    box_home: Path
    api_state: Path
    backup_key: Path
    known_hosts: Path
    pids: list[int] = field(default_factory=list)
    worker: subprocess.Popen[str] | None = None

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of an `inkmcp dr` run against the stand-ins (Storage Box settings as the runbook sets)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("INKMCP_DR_")}
        env.update({"INKMCP_DR_BOX_HOST": BOX_IP, "INKMCP_DR_BOX_USER": BOX_USER, "INKMCP_DR_BOX_KEY":
                    str(self.backup_key), "INKMCP_DR_BOX_KNOWN_HOSTS": str(self.known_hosts),
                    "INKMCP_DR_BOX_ID": "4242", "INKMCP_DR_HETZNER_TOKEN": API_TOKEN,
                    "INKMCP_DR_HETZNER_API_URL": f"http://127.0.0.1:{API_PORT}", "COLUMNS": "200"})
        env.update(extra)
        return env

    def inkmcp(self, *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 120,
               new_process: bool = False) -> subprocess.CompletedProcess[str]:
        """`inkmcp dr …` inside the client namespace: through the CLI worker (tests/dr/cli_worker.py), or as the
        installed entry point in a process of its own (`new_process`)."""
        if new_process or self.worker is None:
            r = run("ip", "netns", "exec", self.client_ns, str(REPO / ".venv/bin/inkmcp"), "dr", *args,
                    env=env or self.env(), check=False, timeout=timeout, cwd=str(REPO))
        else:
            r = self._via_worker(["dr", *args], env or self.env(), timeout)
        if check and r.returncode != 0:
            box_log = (self.root / "box" / "sshd" / "sshd.log").read_text()[-1500:]
            raise AssertionError(f"inkmcp dr {' '.join(args)} -> {r.returncode}\nstdout: {r.stdout[-3000:]}\n"
                                 f"stderr: {r.stderr[-3000:]}\nbox sshd log: {box_log}")
        return r

    def _via_worker(self, argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
        import json
        import select

        assert self.worker is not None and self.worker.stdin is not None and self.worker.stdout is not None
        self.worker.stdin.write(json.dumps({"args": argv, "env": env}) + "\n")
        self.worker.stdin.flush()
        ready, _, _ = select.select([self.worker.stdout], [], [], timeout)
        assert ready, f"inkmcp {' '.join(argv)}: no answer within {timeout} s"
        answer = json.loads(self.worker.stdout.readline())
        return subprocess.CompletedProcess(["inkmcp", *argv], answer["code"], answer["stdout"], answer["stderr"])

    def state(self) -> dict[str, object]:
        import json

        return json.loads((self.api_state / "state.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    require_root("network namespaces, a second sshd on port 23 and the postgres OS user")
    require("sshd", Path("/usr/sbin/sshd").exists(), "/usr/sbin/sshd not installed")
    require("rsync", shutil.which("rsync") is not None, "rsync not installed")
    require("netns", shutil.which("ip") is not None and shutil.which("unshare") is not None, "iproute2/unshare")
    root = Path(tempfile.mkdtemp(prefix="inkmcp-dr-", dir="/tmp"))
    root.chmod(0o755)
    tag = f"{os.getpid() % 100000}"
    cns, bns = f"drc{tag}", f"drb{tag}"
    w = World(root, cns, bns, root / "box" / "home", root / "api", root / "keys" / "backup",
              root / "keys" / "known_hosts")
    sshd_proc: subprocess.Popen[bytes] | None = None
    api_proc: subprocess.Popen[str] | None = None
    try:
        run("ip", "netns", "add", cns)
        run("ip", "netns", "add", bns)
        run("ip", "-n", cns, "link", "add", "tobox", "type", "veth", "peer", "name", "toclient", "netns", bns)
        run("ip", "-n", cns, "addr", "add", f"{CLIENT_IP}/30", "dev", "tobox")
        run("ip", "-n", bns, "addr", "add", f"{BOX_IP}/30", "dev", "toclient")
        for ns, dev in ((cns, "tobox"), (bns, "toclient")):
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        # Keys: the backup key (what the factory's backupPrivateKey holds) and the box's host key.
        (root / "keys").mkdir()
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "inkmcp-backup", "-f", str(w.backup_key))
        w.box_home.mkdir(parents=True)
        os.chown(w.box_home, BOX_UID, BOX_UID)
        w.box_home.chmod(0o750)
        sshd_proc, _ = start_box_sshd(root / "box" / "sshd", user=BOX_USER, uid=BOX_UID, home=w.box_home,
                                      address=BOX_IP, authorized_key=w.backup_key.with_suffix(".pub"),
                                      overlay="inkmcp-dr-etc", netns=bns)
        w.pids.append(sshd_proc.pid)
        api_proc = subprocess.Popen(
            ["ip", "netns", "exec", cns, sys.executable, "-m", "tests.dr.hetzner_standin", str(w.api_state),
             str(w.box_home), str(API_PORT)], cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        w.pids.append(api_proc.pid)
        assert api_proc.stdout is not None and api_proc.stdout.readline().strip() == "ready"
        w.worker = subprocess.Popen(
            ["ip", "netns", "exec", cns, sys.executable, "-m", "tests.dr.cli_worker"], cwd=str(REPO),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=w.env())
        w.pids.append(w.worker.pid)
        assert w.worker.stdout is not None and "ready" in w.worker.stdout.readline()
        yield w
    finally:
        if w.worker is not None:
            assert w.worker.stdin is not None
            w.worker.stdin.close()
            stop_pid(w.worker.pid, wait=5)
        for proc in (api_proc, sshd_proc):
            if proc is not None:
                stop_pid(proc.pid, wait=5)
        run("ip", "netns", "del", cns, check=False)
        run("ip", "netns", "del", bns, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def fresh_cluster(world: World) -> Iterator[Cluster]:
    """The replacement server's PostgreSQL (the drill restores into it; the Coolify test uses its own databases)."""
    cluster = Cluster(world.root / "pg-new", world.root / "sock-new")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@dataclass
class PgHost:
    """The control-plane Postgres host as the factory leaves it, in a private mount namespace inside the client
    network namespace: /root, /var/lib/postgresql, /usr/local/sbin and /etc/systemd/system are this test's
    directories, `systemctl` records its calls, and pg_dump is the embedded server's."""

    world: World
    root: Path
    sock: Path

    def sh(self, command: str, *, stdin: str = "", extra_env: dict[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
        binds = " && ".join(f"mount --bind {self.root / name} {target}" for name, target in
                            (("root", "/root"), ("varlibpg", "/var/lib/postgresql"), ("sbin", "/usr/local/sbin"),
                             ("systemd", "/etc/systemd/system")))
        env = {"PATH": f"{self.root / 'stub'}:{pg_bin()}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
               "PGHOST": str(self.sock), "DR_CMD": command, "LANG": "C.UTF-8", **(extra_env or {})}
        return run("ip", "netns", "exec", self.world.client_ns, "unshare", "--mount", "--propagation", "private",
                   "bash", "-c", f'{binds} && exec sh -c "$DR_CMD"', input=stdin, env=env, check=check,
                   timeout=120)

    @property
    def backups(self) -> Path:
        return self.root / "varlibpg" / "backups"

    @property
    def installed_key(self) -> Path:
        return self.root / "root" / ".ssh" / "inkmcp-storagebox"


def make_pghost(world: World, name: str, sock: Path) -> PgHost:
    root = world.root / name
    for d in ("root", "varlibpg", "sbin", "systemd", "stub"):
        (root / d).mkdir(parents=True)
    (root / "root").chmod(0o700)
    shutil.chown(root / "varlibpg", "postgres", "postgres")
    stub = root / "stub" / "systemctl"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {root}/systemctl.log\n')
    stub.chmod(0o755)
    return PgHost(world, root, sock)
