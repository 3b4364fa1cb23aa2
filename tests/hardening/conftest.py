"""Fixtures for the hardening tests: a real sshd on loopback, network namespaces, and a way to open
sockets inside a namespace from this process (setns in a short-lived thread; a socket stays in the
namespace it was created in)."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from tests.requirements import require, require_root

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def have_sshd() -> bool:
    return os.path.exists(SSHD) and os.path.exists(SFTP_SERVER)


def need_sshd() -> None:
    require("sshd", have_sshd(), f"{SSHD} or {SFTP_SERVER} does not exist")
    # sshd (even `sshd -t`) insists on its privilege-separation directory; the package normally creates it
    # at service start, which we never do.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)


def need_netadmin() -> None:
    """Namespaces and netfilter need root with CAP_NET_ADMIN: a skip with the reason, or a failure in CI."""
    require_root("kernel firewall tests need CAP_NET_ADMIN, and CAP_SYS_ADMIN for network namespaces")
    missing = [tool for tool in ("ip", "iptables-restore") if not shutil.which(tool)]
    require("netns", not missing, f"{', '.join(missing)} not on PATH")
    probe = f"ikp{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    require("netns", r.returncode == 0, f"`ip netns add` failed (no CAP_NET_ADMIN?): {r.stderr.strip()}")
    try:
        cmd = ["ip", "netns", "exec", probe, "iptables", "-w", "5", "-N", "PROBE"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        require("netns", r.returncode == 0, f"iptables does not work in a network namespace: {r.stderr.strip()}")
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)


_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run fn in a thread that has joined network namespace `name`; sockets it creates stay there."""
    box: dict[str, object] = {}

    def target() -> None:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(10)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SshServer:
    port: int
    client_key: Path
    pid: int
    workdir: Path


def make_keys(tmp: Path) -> tuple[Path, Path]:
    host_key, client_key = tmp / "host_ed25519", tmp / "client_ed25519"
    for k in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True, timeout=10)
    (tmp / "authorized_keys").write_text(Path(str(client_key) + ".pub").read_text())
    return host_key, client_key


def sshd_config(tmp: Path, port: int, host_key: Path, include: str | None = None) -> str:
    """A test sshd: loopback only, keys under tmp, no PAM. `include` puts a drop-in glob first, the way
    Debian's own sshd_config does, so the drop-in's values win."""
    lines = [f"Include {include}"] if include else []
    lines += [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"PidFile {tmp}/sshd.pid",
        f"AuthorizedKeysFile {tmp}/authorized_keys",
        "PasswordAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        f"Subsystem sftp {SFTP_SERVER}",
    ]
    return "\n".join(lines) + "\n"


def start_sshd(tmp: Path, config: str, port: int, client_key: Path, netns: str | None = None) -> SshServer:
    """Start sshd in the foreground (-D) so the PID we hold is sshd's own; wait until it accepts."""
    need_sshd()
    cfg = tmp / "sshd_config"
    cfg.write_text(config)
    subprocess.run([SSHD, "-t", "-f", str(cfg)], check=True, capture_output=True, timeout=10)
    cmd = [SSHD, "-D", "-e", "-f", str(cfg)]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]  # ip netns exec execs sshd: same PID
    with open(tmp / "sshd.log", "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(tmp / 'sshd.log').read_text()}")

        def probe() -> bool:
            with socket.socket() as s:
                s.settimeout(0.2)
                return s.connect_ex(("127.0.0.1", port)) == 0

        if in_netns(netns, probe) if netns else probe():
            return SshServer(port=port, client_key=client_key, pid=proc.pid, workdir=tmp)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("sshd did not start listening within 5 s")


def stop_pid(pid: int, wait: float = 1.0) -> None:
    """Stop a process we started, by its PID only: SIGTERM, `wait` seconds to exit, then SIGKILL (and reap).

    The process need not be our child (a daemon that forked away from the test, found by what it was started
    with): then it cannot be reaped, and whether it is gone is asked with signal 0."""
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    child = True
    for _ in range(max(1, round(wait / 0.02))):
        if child:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                child = False
        if not child:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.02)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        return
    if child:
        os.waitpid(pid, 0)


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    need_sshd()
    tmp = tmp_path_factory.mktemp("sshd")
    host_key, client_key = make_keys(tmp)
    port = free_port()
    server = start_sshd(tmp, sshd_config(tmp, port, host_key), port, client_key)
    yield server
    stop_pid(server.pid)
