"""The build path on one machine: the registry host, the platform's private hosts and the internet as
network namespaces behind a router, all addresses existing only inside them.

    rtr (router, forwards)
     ├─ reg    10.0.1.12     nginx :443 (TLS, auth) -> Debian docker-registry 127.0.0.1:5000; sshd stand-in :22
     ├─ master 10.0.1.10     Coolify API stand-in :8000;  203.0.113.10 (its public address) :443, :8000
     ├─ pg     10.0.1.13     control-plane Postgres stand-in :5432
     ├─ git    10.0.1.14     a private git server :443 (allow-listed for builds), :22 (not)
     ├─ run    10.0.2.21     run-server sshd stand-in :22 (the vSwitch subnet)
     ├─ meta   169.254.169.254 :80
     ├─ web    203.0.113.80  :80, :443 (the public internet)
     ├─ lan    192.168.7.7, 172.20.7.7, 100.64.7.7 :80 (private ranges outside the platform's)
     ├─ cli    a client with no address of interest (registry protocol tests)
     └─ bhost  the build server's root namespace; `inkmcp-build-netns up` (rendered) creates the build
               namespace behind it (tests/buildpath/test_build_netns.py)

The registry host's files are written by the rendered `registry_host_script` itself (with a root prefix
under a temporary directory), then Debian's /usr/bin/docker-registry (as its own user) and /usr/sbin/nginx
are started in `reg` with exactly those files and stopped by PID. Every stand-in port has a listener that
answers "<name>:<port>", so a refused connection is the firewall's, not a closed port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from inkmcp.nodes.buildnet import BuildNetParams, render_buildnet
from inkmcp.nodes.registry import (
    HostFile,
    RegistryServerParams,
    htpasswd,
    issue_server_cert,
    make_ca,
    registry_host_script,
    registry_host_stdin,
    salt_key_from,
)
from tests.hardening.conftest import in_netns, need_netadmin
from tests.netns import LISTENER, link_standin, sh
from tests.requirements import require

T = TypeVar("T")

REGISTRY_IP = "10.0.1.12"
PASSWORDS = {"push": "push-secret-0123456789", "pull": "pull-secret-0123456789"}
STANDINS: dict[str, tuple[list[str], list[int]]] = {
    "master": (["10.0.1.10", "203.0.113.10"], [8000, 443]),
    "pg": (["10.0.1.13"], [5432]),
    "git": (["10.0.1.14"], [443, 22]),  # a private git server builds are allowed to clone from (443 only)
    "run": (["10.0.2.21"], [22]),
    "meta": (["169.254.169.254"], [80]),
    "web": (["203.0.113.80"], [80, 443]),
    "lan": (["192.168.7.7", "172.20.7.7", "100.64.7.7"], [80]),
}


def stop(proc: subprocess.Popen, wait: float = 10) -> None:
    """SIGTERM the process we started (by its PID), SIGKILL after `wait` s, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 20, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: exited {proc.returncode}: {log.read_text()[-2000:] if log else ''}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout} s: {log.read_text()[-2000:] if log else ''}")
        time.sleep(0.1)


def tcp_open(ns: str, addr: str, port: int) -> bool:
    def attempt() -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((addr, port)) == 0

    return in_netns(ns, attempt)


@dataclass
class Pki:
    ca: str
    ca_key: str
    cert: str
    key: str
    other_ca: str  # a CA that did not sign the registry's certificate


@dataclass
class Platform:
    tag: str
    tmp: Path
    ns: dict[str, str]
    pki: Pki
    params: RegistryServerParams
    script_output: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def reg_root(self) -> Path:
        return Path(self.params.root)

    def ca_file(self, which: str = "ca") -> Path:
        path = self.tmp / f"{which}.crt"
        if not path.exists():
            path.write_text(self.pki.ca if which == "ca" else self.pki.other_ca)
        return path

    def in_ns(self, name: str, fn: Callable[[], T]) -> T:
        return in_netns(self.ns[name], fn)

    def request(self, method: str, path: str, *, user: str | None = None, password: str | None = None,
                ca: str = "ca", ns: str = "cli", **kw: object) -> httpx.Response:
        """One HTTPS request to the registry from namespace `ns`, verified against `ca`."""
        auth = None
        if user is not None:
            auth = (user, password if password is not None else PASSWORDS[user])
        context = ssl.create_default_context(cafile=str(self.ca_file(ca)))

        def go() -> httpx.Response:
            with httpx.Client(verify=context, timeout=10) as client:
                return client.request(method, f"https://{REGISTRY_IP}{path}", auth=auth, **kw)  # type: ignore[arg-type]

        return self.in_ns(ns, go)


@pytest.fixture(scope="session")
def pki() -> Pki:
    ca, ca_key = make_ca()
    cert, key = issue_server_cert(ca, ca_key, [REGISTRY_IP])
    other_ca, _ = make_ca("Some other CA")
    return Pki(ca=ca, ca_key=ca_key, cert=cert, key=key, other_ca=other_ca)


def _start(procs: list[subprocess.Popen], ns: str, argv: list[str], log: Path | None = None,
           ready_line: bool = False) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.PIPE
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", *argv], stdout=out,
                            stderr=subprocess.STDOUT if log else subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    procs.append(proc)
    if log:
        out.close()  # type: ignore[union-attr]
    if ready_line:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert line == "ready", f"{argv[:3]} in {ns} did not start: {line!r}"
    return proc


@pytest.fixture(scope="session")
def platform(pki: Pki) -> Iterator[Platform]:
    need_netadmin()
    missing = [p for p in ("/usr/bin/docker-registry", "/usr/sbin/nginx", "/usr/bin/setpriv") if not os.path.exists(p)]
    require("netns", not missing, f"{', '.join(missing)} missing: the build path runs Debian's docker-registry "
                                  "and nginx (scripts/test-system-deps.sh installs them)")
    tag = uuid.uuid4().hex[:5]
    ns = {name: f"ibp{tag}{name}" for name in ("rtr", "reg", "cli", "bhost", *STANDINS)}
    tmp = Path(tempfile.mkdtemp(prefix="inkbp-"))
    tmp.chmod(0o755)  # the registry and nginx workers run as their own users
    procs: list[subprocess.Popen] = []
    try:
        for name in ns.values():
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        rtr = ns["rtr"]
        sh("ip", "netns", "exec", rtr, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        link_standin(rtr, ns["reg"], "reg", 0, [REGISTRY_IP])
        link_standin(rtr, ns["cli"], "cli", 4, [])
        link_standin(rtr, ns["bhost"], "bhost", 8, [])
        for i, (name, (addrs, _ports)) in enumerate(STANDINS.items()):
            link_standin(rtr, ns[name], name, 16 + 4 * i, addrs)
        for name, (addrs, ports) in STANDINS.items():
            _start(procs, ns[name], [sys.executable, "-c", LISTENER, name, *(f"{a}:{p}" for a in addrs for p in ports)],
                   ready_line=True)
        # The registry host's sshd stand-in: only its :443 is open to builds.
        _start(procs, ns["reg"], [sys.executable, "-c", LISTENER, "reg-ssh", f"{REGISTRY_IP}:22"], ready_line=True)

        params = RegistryServerParams(root=str(tmp / "reg"), listen=REGISTRY_IP, tls_cert_pem=pki.cert,
                                      ca_cert_pem=pki.ca)
        stdin = registry_host_stdin(pki.key, htpasswd(params, PASSWORDS, salt_key_from(pki.key)))
        result = subprocess.run(["bash", "-c", registry_host_script(params)], input=stdin, capture_output=True,
                                text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        storage = Path(params.storage_path)
        shutil.chown(storage, "docker-registry", "docker-registry")  # what the script does on the host

        reg_log = tmp / "docker-registry.log"
        registry = _start(procs, ns["reg"], ["setpriv", "--reuid=docker-registry", "--regid=docker-registry",
                                             "--init-groups", "/usr/bin/docker-registry", "serve",
                                             params.path("registry_config")], log=reg_log)
        wait_for("docker-registry", lambda: tcp_open(ns["reg"], "127.0.0.1", 5000), proc=registry, log=reg_log)

        conf = tmp / "nginx.conf"
        temp = {k: tmp / f"nginx-{k}" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
        conf.write_text("\n".join([
            "# Debian's /etc/nginx/nginx.conf, reduced to what the registry site needs, paths under the test dir.",
            "user www-data;", "worker_processes 1;", f"pid {tmp}/nginx.pid;", f"error_log {tmp}/nginx-error.log;",
            "events { worker_connections 64; }",
            "http {",
            *(f"  {k}_temp_path {v};" for k, v in temp.items()),
            "  access_log off;",
            f"  include {params.path('nginx_enabled').rsplit('/', 1)[0]}/*;",
            "}", ""]))
        nginx_log = tmp / "nginx.out"
        nginx = _start(procs, ns["reg"], ["/usr/sbin/nginx", "-c", str(conf), "-e", str(tmp / "nginx-error.log"),
                                          "-g", "daemon off;"], log=nginx_log)
        wait_for("nginx", lambda: tcp_open(ns["reg"], REGISTRY_IP, 443), proc=nginx, log=tmp / "nginx-error.log")
        yield Platform(tag=tag, tmp=tmp, ns=ns, pki=pki, params=params, script_output=result.stdout, procs=procs)
    finally:
        for proc in reversed(procs):
            stop(proc)
        for name in ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)


# --------------------------------------------------------------------------------------------------
# The build namespace behind `bhost` (the build server's root namespace)
# --------------------------------------------------------------------------------------------------

BLOCKED_PUBLIC = "203.0.113.10"  # the Coolify master's public address
LINK_CIDR = "192.168.254.0/30"


@dataclass
class BuildNs:
    platform: Platform
    params: BuildNetParams
    root: Path
    first_up: str = ""

    @property
    def name(self) -> str:
        return self.params.netns

    @property
    def host(self) -> str:
        return self.platform.ns["bhost"]

    def script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The rendered inkmcp-build-netns, run in `bhost` as systemd runs it in a host's root namespace."""
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.host}", "bash", self.params.path("script"), *args],
                           capture_output=True, text=True, timeout=30, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"inkmcp-build-netns {' '.join(args)} failed: {r.stderr}{r.stdout}")
        return r

    def in_host(self, *argv: str, check: bool = True) -> str:
        return sh("nsenter", f"--net=/run/netns/{self.host}", *argv, check=check)


def write_files(files: list[HostFile]) -> None:
    for f in files:
        path = Path(f.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f.content)
        path.chmod(f.mode)


@pytest.fixture(scope="session")
def build_ns(platform: Platform) -> Iterator[BuildNs]:
    tag = platform.tag
    root = platform.tmp / "bhost"
    resolv = platform.tmp / "resolv.conf"
    resolv.write_text("# the build server's resolv.conf\nnameserver 203.0.113.53\n")
    params = BuildNetParams(root=str(root), netns=f"ibp{tag}bld", host_if=f"ib{tag}b0", ns_if="uplink0",
                            link_cidr=LINK_CIDR, registry=[f"{REGISTRY_IP}:443"], private_cidrs=["10.0.0.0/16"],
                            blocked_hosts=[BLOCKED_PUBLIC], dns_resolvers=["203.0.113.53"], resolv_conf=str(resolv),
                            allow=["10.0.1.14:443"])
    write_files(render_buildnet(params))
    b = BuildNs(platform=platform, params=params, root=root)
    # The build server's own sshd (and any other listener in its root namespace), on every address, v4 and v6.
    _start(platform.procs, b.host, [sys.executable, "-c", LISTENER, "bhost-ssh", ":::22"], ready_line=True)
    try:
        b.first_up = b.script("up").stdout
        yield b
    finally:
        b.script("down", check=False)
        subprocess.run(["ip", "netns", "del", params.netns], capture_output=True, check=False)
