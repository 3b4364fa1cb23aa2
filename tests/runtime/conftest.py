"""One private Docker daemon with the InkMCP runtime selector, inside a test network namespace.

Session-scoped: dockerd (with its own containerd) starts once, with --data-root/--exec-root/--pidfile/-H
under a temporary directory, inside `nsenter --net=/var/run/netns/<ns>` (so its iptables chains and
bridges live only there), default runtime = the selector installed by hardening/gvisor/install.sh into
a throw-away root, and --dns pointing at a DNS stand-in in the same namespace. Images are built locally
by `docker import` from Debian's busybox-static. Everything is stopped by PID and removed afterwards;
no system daemon, system config or system network is touched.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pytest

from inkmcp.nodes.attacks import PROBE_SOURCE
from inkmcp.nodes.render import helper_profile, image_facts, local_docker, proxy_profile
from tests.netns import LISTENER, link_standin, sh
from tests.requirements import require, require_root

REPO = Path(__file__).resolve().parents[2]
GVISOR = REPO / "hardening" / "gvisor"
HERE = Path(__file__).resolve().parent
DNS_ADDR = "192.0.2.53"
PUBLIC_NAME, PUBLIC_ADDR = "public.example.test", "203.0.113.7"
TENANT_IMAGE, PLATFORM_IMAGE = "inkgv/busybox:local", "inkgv/platform:local"
# Stand-ins for the §4.3 platform images: same shape as the real ones (Traefik's entrypoint takes only
# --flags; Coolify's helper runs its entrypoint + default command), busybox inside.
PROXY_IMAGE, HELPER_IMAGE = "inkgv/traefik:local", "inkgv/coolify-helper:local"
PROXY_STANDIN = """#!/bin/sh
# Traefik stand-in: reports its flags, the kernel it runs on and whether the Docker API answers;
# --probe=IP:PORT also opens a TCP connection (egress), --serve keeps it running.
echo "flags: $*"
uname -r
dockerping /var/run/docker.sock
for arg in "$@"; do
  case "$arg" in --probe=*) target=${arg#--probe=}; nc -w 2 "${target%:*}" "${target##*:}" </dev/null ;; esac
done
case " $* " in *" --serve "*) exec sleep 3600 ;; esac
"""
RUNTIME_NAME = "inkmcp"


def render_config(**params) -> str:
    env = jinja2.Environment(  # noqa: S701 - renders JSON, every value goes through `tojson`
        loader=jinja2.FileSystemLoader(GVISOR), undefined=jinja2.StrictUndefined
    )
    text = env.get_template("runtime-selector.json.j2").render(**params)
    json.loads(text)
    return text


def install(config_text: str, root: Path, *extra: str) -> subprocess.CompletedProcess:
    cfg = root.parent / f"{root.name}-selector.json"
    cfg.write_text(config_text)
    return subprocess.run(
        ["bash", str(GVISOR / "install.sh"), *extra, str(cfg), str(root)],
        capture_output=True, text=True, timeout=60, check=False,
    )


@dataclass
class Node:
    tmp: Path
    netns: str
    sock: Path
    root: Path
    docker_bin: str
    params: dict = field(default_factory=dict)

    @property
    def coolify(self) -> Path:
        """The node's /data/coolify (the selector's coolify_dir)."""
        return self.tmp / "coolify"

    @property
    def home(self) -> Path:
        """$HOME of the user Coolify connects as (the helper binds ~/.docker/buildx and config.json)."""
        return self.tmp / "home"

    @property
    def selector(self) -> Path:
        return self.root / "usr/local/lib/inkmcp/inkmcp-runtime"

    @property
    def config(self) -> Path:
        return self.root / "etc/inkmcp/runtime-selector.json"

    def docker(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [self.docker_bin, "-H", f"unix://{self.sock}", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
        return proc


def _pids_under(tmp: Path) -> list[int]:
    """PIDs of processes whose command line names our temp dir: the daemon's children (shims, sandboxes)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if str(tmp).encode() in (entry / "cmdline").read_bytes():
                out.append(int(entry.name))
    return out


def _stop(pid: int, wait: float = 15) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _unmount_under(tmp: Path) -> None:
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4]
            if point == str(tmp) or point.startswith(f"{tmp}/"):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _build_rootfs(tmp: Path, extra: dict[str, Path]) -> Path:
    rootfs = tmp / f"rootfs-{len(extra)}"
    (rootfs / "bin").mkdir(parents=True)
    for d in ("etc", "tmp", "proc", "sys", "dev", "root"):
        (rootfs / d).mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin/busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\n")
    for name, src in extra.items():
        shutil.copy2(src, rootfs / "bin" / name)
    return rootfs


@pytest.fixture(scope="session")
def node():
    require_root("real Docker/gVisor tests run a private dockerd in a network namespace")
    deps = subprocess.run(["bash", str(REPO / "scripts/test-docker.sh")], capture_output=True, text=True, check=False)
    after = "after scripts/test-docker.sh"
    if deps.returncode != 0:
        after += f" (it exited {deps.returncode}: {deps.stderr.strip() or deps.stdout.strip()})"
    runc, runsc = shutil.which("runc"), shutil.which("runsc")
    docker_bin = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
    missing = [name for name, path in (("dockerd", shutil.which("dockerd")), ("docker", docker_bin), ("runc", runc))
               if path is None]
    require("dockerd", not missing, f"{', '.join(missing)} not on PATH {after}")
    require("runsc", runsc is not None, f"runsc not on PATH {after}")
    missing = [tool for tool in ("ip", "nsenter", "iptables") if shutil.which(tool) is None]
    require("netns", not missing, f"{', '.join(missing)} not on PATH {after}")

    tmp = Path(tempfile.mkdtemp(prefix="inkgv-"))
    netns = f"inkgv{os.getpid()}"
    node = Node(tmp=tmp, netns=netns, sock=tmp / "docker.sock", root=tmp / "root", docker_bin=docker_bin)
    node.params = {
        "runc_path": runc, "runsc_path": runsc, "runsc_flags": ["--network=host", "--host-uds=none"],
        "data_root": str(tmp / "data"), "state_dir": str(tmp / "selector-state"),
        "docker_sockets": [str(node.sock)], "coolify_dir": str(node.coolify), "platform": [],
    }
    for d in ("applications", "services", "databases", "backups", "ssl", "proxy"):
        (node.coolify / d).mkdir(parents=True)
    (node.home / ".docker/buildx").mkdir(parents=True)
    started: list[int] = []
    log = None
    try:
        ip = ["ip", "-n", netns]
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
        subprocess.run([*ip, "link", "set", "lo", "up"], check=True)
        # The upstream resolver's address lives on the namespace's loopback: containers reach it through
        # their bridge gateway like any address of the host (no dummy module needed).
        subprocess.run([*ip, "addr", "add", f"{DNS_ADDR}/32", "dev", "lo"], check=True)
        enter = ["nsenter", f"--net=/var/run/netns/{netns}"]

        dns = subprocess.Popen(
            [*enter, sys.executable, str(HERE / "dnsstub.py"), DNS_ADDR, f"{PUBLIC_NAME}={PUBLIC_ADDR}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        started.append(dns.pid)
        assert dns.stdout.readline().strip() == "ready"

        result = install(render_config(**node.params), node.root)
        assert result.returncode == 0, result.stderr
        daemon_json = {
            "default-runtime": RUNTIME_NAME,
            "runtimes": {RUNTIME_NAME: {"path": str(node.selector), "runtimeArgs": [f"--inkmcp-config={node.config}"]}},
            "dns": [DNS_ADDR],
            "log-driver": "json-file",
        }
        (tmp / "daemon.json").write_text(json.dumps(daemon_json))
        log = open(tmp / "dockerd.log", "wb")  # closed in the teardown, after the daemon
        dockerd = subprocess.Popen(
            [*enter, "dockerd", "--config-file", str(tmp / "daemon.json"), "--data-root", str(tmp / "data"),
             "--exec-root", str(tmp / "exec"), "--pidfile", str(tmp / "docker.pid"), "-H", f"unix://{node.sock}"],
            stdout=log, stderr=subprocess.STDOUT,
            # As on a node, where /usr/local/sbin leads systemd's PATH: the shadowing `runc` comes first.
            env={**os.environ, "PATH": f"{node.root}/usr/local/sbin:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"},
        )
        started.append(dockerd.pid)
        deadline = time.monotonic() + 60
        while node.docker("version", timeout=10).returncode != 0:
            if dockerd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start: {(tmp / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.2)

        probe = tmp / "dockerping"
        # The same socket prober the attack runner copies into containers (inkmcp/nodes/attacks.py).
        subprocess.run(["gcc", "-static", "-O2", "-o", str(probe), str(PROBE_SOURCE)], check=True)
        standin = tmp / "proxy-standin"
        standin.write_text(PROXY_STANDIN)
        standin.chmod(0o755)
        images = (
            (TENANT_IMAGE, {}, ['CMD ["sh"]']),
            (PLATFORM_IMAGE, {"dockerping": probe}, ['CMD ["sh"]']),
            (PROXY_IMAGE, {"dockerping": probe, "proxy-standin": standin},
             ['ENTRYPOINT ["/bin/proxy-standin"]', 'CMD ["--serve"]']),
            (HELPER_IMAGE, {"dockerping": probe}, ['ENTRYPOINT ["/bin/env"]', 'CMD ["tail", "-f", "/dev/null"]']),
        )
        for image, extra, changes in images:
            rootfs = _build_rootfs(tmp / "images" / image.replace("/", "_").replace(":", "_"), extra)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(
                [docker_bin, "-H", f"unix://{node.sock}", "import", *(a for c in changes for a in ("-c", c)), "-",
                 image],
                stdin=tar.stdout, check=True, capture_output=True,
            )
            tar.wait()
        # What the muscle stack does after pulling the pinned platform images: the node's own facts about them
        # (the stand-ins are imported, so they carry no repo digest to check), into the §4.3 profiles.
        docker = local_docker(docker_bin, f"unix://{node.sock}")
        node.params["platform"] = [
            proxy_profile([image_facts(docker, PROXY_IMAGE)], proxy_dir=str(node.coolify / "proxy"),
                          socket=str(node.sock)).selector_entry(),
            helper_profile([image_facts(docker, HELPER_IMAGE)], home=str(node.home),
                           socket=str(node.sock)).selector_entry(),
        ]
        result = install(render_config(**node.params), node.root)
        assert result.returncode == 0 and "changed" in result.stdout, result.stderr
        node.docker("network", "create", "coolify", check=True)
        yield node
    finally:
        if node.sock.exists():
            ids = node.docker("ps", "-aq", timeout=30).stdout.split()
            if ids:
                node.docker("rm", "-f", *ids, timeout=60)
        for pid in reversed(started):
            _stop(pid)
        for pid in _pids_under(tmp):
            _stop(pid, wait=5)
        if log is not None:
            log.close()
        _unmount_under(tmp)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# An uplink for the daemon's namespace, with stand-in hosts behind it (tests/runtime/test_node_egress.py)
# --------------------------------------------------------------------------------------------------
#
#   daemon ns (node.netns)  uplink0 192.0.2.201/30, default route ->  router ns  192.0.2.202
#   router ns --/30 from 192.0.2.208/28-- meta ns  169.254.169.254          (tcp 80)
#                                      -- smtp ns  198.51.100.25            (tcp 25, 465, 587, 80)
#                                      -- peer ns  10.99.0.5                (tcp 5432, 80, 53)
#                                                  10.99.0.53 platform resolver (dnsstub udp 53, tcp 53)
#                                      -- web ns   PUBLIC_ADDR 203.0.113.7  (tcp 80, 443)
# Every probed port has a listener that answers with "<host>:<port>", so an answer names who answered
# and a refusal is the firewall's, not a closed port. 10.99.0.0/16 exists only inside these namespaces.

PLATFORM_CIDR = "10.99.0.0/16"
PLATFORM_DNS = "10.99.0.53"
INTERNAL_NAME, INTERNAL_ADDR = "db.internal.test", "10.99.0.5"  # known only to the platform resolver
STANDINS: dict[str, tuple[list[str], list[int]]] = {
    "meta": (["169.254.169.254"], [80]),
    "smtp": (["198.51.100.25"], [25, 465, 587, 80]),
    "peer": ([INTERNAL_ADDR, PLATFORM_DNS], [5432, 80, 53]),
    "web": ([PUBLIC_ADDR], [80, 443]),
}


@dataclass
class Uplink:
    node: Node
    namespaces: dict[str, str]

    def in_node(self, script: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A shell command inside the daemon's network namespace (where Docker's chains live)."""
        return subprocess.run(
            ["nsenter", f"--net=/var/run/netns/{self.node.netns}", "sh", "-c", script],
            capture_output=True, text=True, timeout=timeout, check=False,
        )


@pytest.fixture(scope="module")
def uplink(node):
    missing = [tool for tool in ("ip", "nsenter", "iptables-save", "iptables-restore") if not shutil.which(tool)]
    require("netns", not missing, f"{', '.join(missing)} not on PATH after scripts/test-docker.sh")
    tag = f"inkeg{os.getpid()}"
    namespaces = {name: f"{tag}{name}" for name in ("rtr", *STANDINS)}
    up = Uplink(node=node, namespaces=namespaces)
    procs: list[subprocess.Popen] = []

    def start(ns: str, *argv: str) -> None:
        proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{ns}", *argv],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready", f"stand-in in {ns} did not start: {argv}"

    try:
        for ns in namespaces.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        rtr, dn = namespaces["rtr"], node.netns
        sh("nsenter", f"--net=/var/run/netns/{rtr}", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        # The node's uplink: one interface and a default route, like eth0 on a run server.
        sh("ip", "-n", dn, "link", "add", "uplink0", "type", "veth", "peer", "name", "down0", "netns", rtr)
        sh("ip", "-n", dn, "addr", "add", "192.0.2.201/30", "dev", "uplink0")
        sh("ip", "-n", dn, "link", "set", "uplink0", "up")
        sh("ip", "-n", rtr, "addr", "add", "192.0.2.202/30", "dev", "down0")
        sh("ip", "-n", rtr, "link", "set", "down0", "up")
        sh("ip", "-n", dn, "route", "add", "default", "via", "192.0.2.202")
        for i, (name, (addrs, _ports)) in enumerate(STANDINS.items()):
            link_standin(rtr, namespaces[name], name, 208 + 4 * i, addrs)
        for name, (addrs, ports) in STANDINS.items():
            start(namespaces[name], sys.executable, "-c", LISTENER, name,
                  *(f"{a}:{p}" for a in addrs for p in ports))
        # The platform's own resolver inside the private range: the DNS allow must come before the
        # private-network reject, and Docker's DNS forwards to it through DOCKER-USER.
        start(namespaces["peer"], sys.executable, str(HERE / "dnsstub.py"), PLATFORM_DNS,
              f"{PUBLIC_NAME}={PUBLIC_ADDR}", f"{INTERNAL_NAME}={INTERNAL_ADDR}")
        yield up
    finally:
        for proc in procs:
            _stop(proc.pid, wait=5)
        # Leave the shared daemon's namespace as it was: DOCKER-USER back to Docker's default content.
        up.in_node("iptables -w 5 -F DOCKER-USER && iptables -w 5 -A DOCKER-USER -j RETURN")
        for ns in namespaces.values():  # deleting a namespace removes its veths, their peers and routes
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
