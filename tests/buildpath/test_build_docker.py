"""The build path end to end with real Docker daemons (issue 7 item 6, review #3/#4/X2).

- Build server: Debian 12's dockerd 20.10 (with its own containerd) started inside the build namespace that
  the rendered `inkmcp-build-netns up` created (tests/buildpath/conftest.py), in a private mount namespace
  where /etc/docker is the directory `registry_client_script` wrote (certs.d with the private CA) — what the
  systemd drop-in does on a real build server. The CLI uses the `push` user's config.json, as Coolify's
  helper does. A tenant Dockerfile's RUN step, built with `docker build --network host` exactly as Coolify
  builds (ADJ:3059-3060, 3607-3609, 3694-3716), probes the network: it runs in the build namespace, reaches
  the registry's TLS port and gets 401 (no credentials inside a build), and is refused by the control-plane
  Postgres, Coolify's API, run-server SSH, the metadata service and the private ranges.
  (RUN runs under runc here: sandboxing RUN under runsc is the build-mode selector's job, another part of
  issue 7; the network confinement does not depend on the runtime.)
- Run server: `inkmcp nodes sandbox up` (Docker 26, the hardening renderer's daemon.json, gVisor selector),
  linked to the registry's network. Its certs.d and root's config.json come from the same
  `registry_client_script` with the `pull` user: it pulls over TLS without `insecure-registries`, runs the
  tenant image under gVisor, cannot pull without the CA or the credentials, and cannot push.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inkmcp.nodes import sandbox
from inkmcp.nodes.registry import registry_client_script, registry_client_stdin
from tests.buildpath.conftest import (
    BLOCKED_PUBLIC,
    PASSWORDS,
    REGISTRY_IP,
    BuildNs,
    Platform,
    wait_for,
)
from tests.hardening.conftest import stop_pid
from tests.netns import link_standin
from tests.requirements import require

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
BASE = "inkbp/base:local"
IMAGE = f"{REGISTRY_IP}/tenant-a/app:1"
RUN_PROBES = [
    ("tcp", f"{REGISTRY_IP}:443", "open"),
    ("tcp", "203.0.113.80:443", "open"),
    ("tcp", "10.0.1.13:5432", "refused"),
    ("tcp", "10.0.1.10:8000", "refused"),
    ("tcp", f"{BLOCKED_PUBLIC}:443", "refused"),
    ("tcp", "10.0.2.21:22", "refused"),
    ("tcp", "169.254.169.254:80", "refused"),
    ("tcp", "192.168.7.7:80", "refused"),
    ("tcp", f"{REGISTRY_IP}:22", "refused"),
    ("tcp", "192.0.2.10:22", "refused"),
]


def write_client(root: Path, user: str, ca: str) -> Path:
    """Run the rendered client script (what the factory/muscle run on a Docker host) under `root`."""
    script = registry_client_script(REGISTRY_IP, ca, root=str(root))
    r = subprocess.run(["bash", "-c", script], input=registry_client_stdin(user, PASSWORDS[user]),
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    return root / "root/.docker"


def _rootfs(tmp: Path) -> Path:
    rootfs = tmp / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for d in ("etc", "tmp", "proc", "sys", "dev", "root"):
        (rootfs / d).mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin/busybox")
    for applet in subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout.split():
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    subprocess.run(["gcc", "-static", "-O2", "-o", str(rootfs / "bin/buildprobe"), str(HERE / "buildprobe.c"),
                    "-lssl", "-lcrypto", "-lpthread"], check=True, capture_output=True)
    return rootfs


def _import(docker: list[str], rootfs: Path, env: dict[str, str]) -> None:
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run([*docker, "import", "-c", 'CMD ["sh"]', "-", BASE], stdin=tar.stdout, check=True,
                   capture_output=True, env=env)
    tar.wait()


def _pids_naming(path: Path) -> list[int]:
    """Processes whose command line names `path` (our daemon's containerd and shims), never anything else."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


@dataclass
class BuildDaemon:
    tmp: Path
    sock: Path
    push_config: Path
    pull_config: Path
    ns: BuildNs

    def docker(self, *args: str, config: Path | None = None, timeout: float = 120,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        e = {**os.environ, "DOCKER_BUILDKIT": "1", "DOCKER_CONFIG": str(config or self.push_config), **(env or {})}
        return subprocess.run(["/usr/bin/docker", "-H", f"unix://{self.sock}", *args], capture_output=True,
                              text=True, timeout=timeout, check=False, env=e)


@pytest.fixture(scope="module")
def build_daemon(build_ns: BuildNs, platform: Platform) -> Iterator[BuildDaemon]:
    require("dockerd", os.path.exists("/usr/sbin/dockerd") and os.path.exists("/usr/bin/docker"),
            "Debian's docker.io (dockerd 20.10 + its CLI) is the build server's daemon here")
    tmp = Path(tempfile.mkdtemp(prefix="inkbpd-"))
    push = write_client(tmp / "client-push", "push", platform.pki.ca)
    pull = write_client(tmp / "client-pull", "pull", platform.pki.ca)
    sock = tmp / "docker.sock"
    (tmp / "daemon.json").write_text(json.dumps({"log-driver": "json-file"}))
    q = shlex.quote
    boot = " && ".join([
        f"mount --bind {q(str(tmp / 'client-push/etc/docker'))} /etc/docker",
        f"exec dockerd --config-file {q(str(tmp / 'daemon.json'))} --data-root {q(str(tmp / 'data'))} "
        f"--exec-root {q(str(tmp / 'exec'))} --pidfile {q(str(tmp / 'docker.pid'))} -H unix://{q(str(sock))}",
    ])
    log = open(tmp / "dockerd.log", "wb")  # closed in the teardown, after the daemon
    daemon = subprocess.Popen(["nsenter", f"--net=/run/netns/{build_ns.name}", "unshare", "--mount", "--propagation",
                               "private", "sh", "-c", boot], stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    d = BuildDaemon(tmp=tmp, sock=sock, push_config=push, pull_config=pull, ns=build_ns)
    try:
        wait_for("build dockerd", lambda: d.docker("version", timeout=10).returncode == 0, timeout=60, proc=daemon,
                 log=tmp / "dockerd.log")
        _import(["/usr/bin/docker", "-H", f"unix://{sock}"], _rootfs(tmp), {**os.environ, "DOCKER_CONFIG": str(push)})
        yield d
    finally:
        if daemon.poll() is None and sock.exists():
            ids = d.docker("ps", "-aq", timeout=30).stdout.split()
            if ids:
                d.docker("rm", "-f", *ids, timeout=60)
        stop_pid(daemon.pid, wait=20)
        for pid in _pids_naming(tmp):
            stop_pid(pid, wait=5)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def built(build_daemon: BuildDaemon, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tenant image built the way Coolify builds it; the RUN step reports what it can reach."""
    ctx = tmp_path_factory.mktemp("ctx")
    args = []
    for kind, target, _want in RUN_PROBES:
        args += [kind, target]
    args += ["https", f"{REGISTRY_IP}:443", "GET", "/v2/",
             "https", f"{REGISTRY_IP}:443", "POST", "/v2/tenant-b/app/blobs/uploads/",
             "https", f"{REGISTRY_IP}:443", "DELETE", "/v2/tenant-b/app/manifests/latest"]
    (ctx / "Dockerfile").write_text("\n".join([
        f"FROM {BASE}",
        "RUN echo ADDR $(ip -4 -o addr show | awk '{print $2\"=\"$4}' | tr '\\n' ' ')",
        f"RUN buildprobe {' '.join(args)}",
        'RUN if [ -e /root/.docker/config.json ]; then r=present; else r=absent; fi; echo "CREDS-$r-END"',
        'CMD ["sh"]', ""]))
    r = build_daemon.docker("build", "--network", "host", "--no-cache", "--progress", "plain", "-t", IMAGE, str(ctx),
                            timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr + r.stdout


def test_run_step_shares_the_build_namespace(built: str) -> None:
    """`--network host` = the build dockerd's namespace: the RUN step sees the namespace's link, nothing else."""
    addr = next(line for line in built.splitlines() if "uplink0=" in line)
    assert "uplink0=192.168.254.2/30" in addr and "lo=127.0.0.1/8" in addr, addr


def test_run_step_reaches_only_the_registry_and_the_internet(built: str) -> None:
    got = {}
    for line in built.splitlines():
        parts = line.split()
        if "tcp" in parts and "RUN" not in parts:  # the step's output, not its command line
            i = parts.index("tcp")
            got[parts[i + 1]] = parts[i + 2]
    assert got == {target: want for _kind, target, want in RUN_PROBES}, built[-4000:]


def test_run_step_gets_401_from_the_registry_and_holds_no_credentials(built: str) -> None:
    """The helper holds the push credentials (its config.json); a RUN step of the same build does not."""
    answers = {line.split("https ", 1)[1] for line in built.splitlines() if "https " in line and " -> " in line}
    assert answers == {
        f"{REGISTRY_IP}:443 GET /v2/ -> 401",
        f"{REGISTRY_IP}:443 POST /v2/tenant-b/app/blobs/uploads/ -> 401",
        f"{REGISTRY_IP}:443 DELETE /v2/tenant-b/app/manifests/latest -> 401",
    }, built[-4000:]
    assert "CREDS-absent-END" in built and "CREDS-present-END" not in built


def test_build_server_pushes_with_the_push_user(build_daemon: BuildDaemon, built: str, platform: Platform) -> None:
    r = build_daemon.docker("push", IMAGE)
    assert r.returncode == 0, r.stderr + r.stdout
    head = platform.request("HEAD", "/v2/tenant-a/app/manifests/1", user="pull",
                            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert head.status_code == 200


def test_push_is_refused_with_the_pull_users_config_or_none(build_daemon: BuildDaemon, built: str,
                                                           platform: Platform, tmp_path: Path) -> None:
    evil = f"{REGISTRY_IP}/tenant-b/app:evil"
    assert build_daemon.docker("tag", IMAGE, evil).returncode == 0
    with_pull = build_daemon.docker("push", evil, config=build_daemon.pull_config)
    assert with_pull.returncode != 0, with_pull.stdout
    empty = tmp_path / "no-config"
    empty.mkdir()
    anonymous = build_daemon.docker("push", evil, config=empty)
    assert anonymous.returncode != 0
    assert "no basic auth credentials" in anonymous.stderr + anonymous.stdout
    head = platform.request("HEAD", "/v2/tenant-b/app/manifests/evil", user="pull")
    assert head.status_code == 404


# --------------------------------------------------------------------------------------------------
# The run server: Docker 26 in `inkmcp nodes sandbox`
# --------------------------------------------------------------------------------------------------


@dataclass
class RunBox:
    dir: Path
    state: sandbox.SandboxState
    config: Path

    @property
    def certs(self) -> Path:
        return self.dir / f"root/etc/docker/certs.d/{REGISTRY_IP}"

    def docker(self, *args: str, config: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCKER_CONFIG": str(config or self.config)}
        return subprocess.run([sandbox.docker_cli(self.dir), "-H", self.state.docker_host, *args],
                              capture_output=True, text=True, timeout=timeout, check=False, env=env)


@pytest.fixture(scope="module")
def run_box(platform: Platform) -> Iterator[RunBox]:
    require("dockerd", shutil.which("apt-get") is not None and shutil.which("dpkg-deb") is not None,
            "the run-server box's Docker 26 comes from Debian trixie (scripts/test-docker-trixie.sh)")
    box = Path(tempfile.mkdtemp(prefix="inkbpbox-"))
    try:
        try:
            state = sandbox.up(box)
        except sandbox.SandboxError as e:
            require("dockerd", False, f"`inkmcp nodes sandbox up` failed: {e}")
            raise
        # The run server's uplink to the network the registry is on (the vSwitch in production).
        link_standin(platform.ns["rtr"], state.netns, "rsbox", 100, [])
        config = write_client(box / "root", "pull", platform.pki.ca)
        yield RunBox(dir=box, state=state, config=config)
    finally:
        try:
            sandbox.down(box)
        finally:
            for pid in _pids_naming(box):
                stop_pid(pid, wait=5)
            shutil.rmtree(box, ignore_errors=True)


def test_run_server_pulls_over_tls_with_the_pull_user_and_runs_it_sandboxed(run_box: RunBox, build_daemon: BuildDaemon,
                                                                           built: str) -> None:
    assert build_daemon.docker("push", IMAGE).returncode == 0
    # No `insecure-registries`: TLS is verified through certs.d, nothing else.
    config = json.loads(run_box.docker("info", "--format", "{{json .RegistryConfig}}").stdout)
    assert config["InsecureRegistryCIDRs"] == ["127.0.0.0/8"], config
    assert REGISTRY_IP not in config["IndexConfigs"], config
    pulled = run_box.docker("pull", IMAGE)
    assert pulled.returncode == 0, pulled.stderr
    run = run_box.docker("run", "--rm", IMAGE, "uname", "-r", timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "4.4.0", run.stdout  # gVisor's kernel: the tenant image runs sandboxed


def test_run_server_cannot_pull_without_the_ca_or_the_credentials(run_box: RunBox, build_daemon: BuildDaemon,
                                                                  built: str, tmp_path: Path) -> None:
    assert build_daemon.docker("push", IMAGE).returncode == 0
    run_box.docker("rmi", "-f", IMAGE)
    hidden = tmp_path / "ca.crt"
    shutil.move(run_box.certs / "ca.crt", hidden)
    try:
        no_ca = run_box.docker("pull", IMAGE)
    finally:
        shutil.move(hidden, run_box.certs / "ca.crt")
    assert no_ca.returncode != 0
    assert "certificate signed by unknown authority" in no_ca.stderr, no_ca.stderr
    empty = tmp_path / "no-config"
    empty.mkdir()
    anonymous = run_box.docker("pull", IMAGE, config=empty)
    assert anonymous.returncode != 0
    assert "no basic auth credentials" in anonymous.stderr or "unauthorized" in anonymous.stderr, anonymous.stderr
    assert run_box.docker("image", "inspect", IMAGE).returncode != 0


def test_run_server_cannot_push(run_box: RunBox, build_daemon: BuildDaemon, built: str, platform: Platform) -> None:
    """A compromised run server holds only the pull user: it cannot replace another tenant's image."""
    assert build_daemon.docker("push", IMAGE).returncode == 0
    assert run_box.docker("pull", IMAGE).returncode == 0
    target = f"{REGISTRY_IP}/tenant-b/app:from-run-server"
    assert run_box.docker("tag", IMAGE, target).returncode == 0
    pushed = run_box.docker("push", target)
    assert pushed.returncode != 0, pushed.stdout
    assert platform.request("HEAD", "/v2/tenant-b/app/manifests/from-run-server", user="pull").status_code == 404
