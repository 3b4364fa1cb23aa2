"""Tenant RUN steps under gVisor on the build server, in its build namespace (issue 7 item 6, review #4/X2).

Coolify builds every image with `docker build --network host` (ADJ:3059-3060, 3607-3609, 3694-3716), so a RUN
step shares the build dockerd's network namespace, and BuildKit runs it with `runc` from dockerd's PATH: the
runtime selector (hardening/gvisor/) in build mode, which sends it to runsc (runbooks/gvisor-decision.md §4.4).
Two real build servers, each with the selector as Docker's default runtime and the `runc` on dockerd's PATH:

- docker26: `inkmcp nodes sandbox up` with `{"gvisor": {"build_mode": true}}` as its params file (Docker
  26.1.5 + containerd 1.7.24 + runsc 20240729, configured by the hardening renderer), whose own network
  namespace is made the build namespace: the rendered `inkmcp-build-netns up` links it to a host namespace of
  its own behind the platform's router (tests/buildpath/conftest.py) and loads the build egress rules there.
- docker20: Debian 12's dockerd 20.10.24 + runsc 20221219 started inside tests/buildpath's build namespace,
  the selector installed by hardening/gvisor/install.sh with the config GvisorParams(build_mode=True) renders.

Judged from inside the RUN step: gVisor's kernel (4.4.0 and its dmesg), the namespace's only link, what it can
reach (registry 443 -> 401 without credentials, the internet; never Postgres, Coolify's API, SSH, metadata,
private ranges), BuildKit's mounts (cache, secret, context subpath) working under runsc, a failing step failing
the build. The same build with the selector's build mode off (what a run server has) is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inkmcp.nodes import sandbox
from inkmcp.nodes.buildnet import BuildNetParams, render_buildnet
from inkmcp.nodes.render import GvisorParams
from tests.buildpath.conftest import (
    BLOCKED_PUBLIC,
    LISTENER,
    REGISTRY_IP,
    BuildNs,
    Platform,
    _start,
    stop,
    wait_for,
    write_files,
)
from tests.buildpath.test_build_docker import BASE, RUN_PROBES, _import, _pids_naming, _rootfs
from tests.hardening.conftest import stop_pid
from tests.netns import link_standin, sh
from tests.requirements import require

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GVISOR = REPO / "hardening" / "gvisor"
SECRET = "build-secret-4711"
SELF_PROBE = "192.0.2.10:22"  # RUN_PROBES' entry for the build server's own sshd (conftest's bhost uplink)
HTTPS_PROBES = [f"{REGISTRY_IP}:443 GET /v2/", f"{REGISTRY_IP}:443 POST /v2/tenant-b/app/blobs/uploads/",
                f"{REGISTRY_IP}:443 DELETE /v2/tenant-b/app/manifests/latest"]


@dataclass
class Builder:
    """One build server: how to run `docker build` there (as Coolify's helper does) and where its selector's
    config is (to switch build mode off, as on a run server)."""

    name: str
    tmp: Path
    config: Path
    link: str  # the build namespace's link address, as the step sees it on its interface
    own_address: str  # the build server's address in its root namespace (its sshd listens on :22 there)
    run_build: Callable[[Path, list[str]], subprocess.CompletedProcess[str]]
    built: dict[str, str] = field(default_factory=dict)

    def build(self, dockerfile: str, *args: str, context: dict[str, str] | None = None,
              no_cache: bool = True) -> subprocess.CompletedProcess:
        """`docker build --network host [--no-cache] --progress plain` of `dockerfile` (FROM the imported base);
        returncode and the whole output (BuildKit prints the steps' output on stderr). `--no-cache` also starts
        every cache mount empty, so a test of cache mounts builds without it."""
        ctx = Path(tempfile.mkdtemp(prefix="ctx-", dir=self.tmp))
        (ctx / "Dockerfile").write_text(f"FROM {BASE}\n{dockerfile}\n")
        for name, text in (context or {}).items():
            (ctx / name).parent.mkdir(parents=True, exist_ok=True)
            (ctx / name).write_text(text)
        r = self.run_build(ctx, [*(["--no-cache"] if no_cache else []), *args])
        return subprocess.CompletedProcess(r.args, r.returncode, r.stdout + r.stderr, "")

    def set_build_mode(self, on: bool) -> None:
        """Rewrite the installed selector config (root-owned 0644, one rename): the next runtime call reads it."""
        cfg = json.loads(self.config.read_text())
        cfg["build_mode"] = on
        new = self.config.with_name(self.config.name + ".new")
        new.write_text(json.dumps(cfg, indent=2) + "\n")
        new.chmod(0o644)
        os.replace(new, self.config)


def run_probes(builder: Builder) -> list[tuple[str, str, str]]:
    """tests/buildpath's RUN probes, with the build server's own sshd at this build server's address."""
    own = f"{builder.own_address}:22"
    return [(kind, own if target == SELF_PROBE else target, want) for kind, target, want in RUN_PROBES]


def step_lines(out: str, marker: str) -> list[str]:
    """The steps' own output lines containing `marker` (BuildKit also echoes each RUN command, which says RUN)."""
    return [line for line in out.splitlines() if marker in line and "RUN " not in line]


# --------------------------------------------------------------------------------------------------
# docker26: the box, made a build server
# --------------------------------------------------------------------------------------------------


def _box_builder(platform: Platform) -> Iterator[Builder]:
    require("dockerd", shutil.which("apt-get") is not None and shutil.which("dpkg-deb") is not None,
            "the box's Docker 26 comes from Debian trixie (scripts/test-docker-trixie.sh)")
    tag = platform.tag
    work = Path(tempfile.mkdtemp(prefix="inkbs26-"))
    box = work / "box"
    params = work / "params.json"
    params.write_text(json.dumps({"gvisor": {"build_mode": True}}))
    host_ns, alias = f"ibs{tag}h", f"ibs{tag}b"
    bparams: BuildNetParams | None = None
    sshd: subprocess.Popen | None = None
    try:
        try:
            state = sandbox.up(box, params)
        except sandbox.SandboxError as e:
            require("dockerd", False, f"`inkmcp nodes sandbox up` failed: {e}")
            raise
        # The build server's root namespace: a namespace of its own behind the platform's router.
        sh("ip", "netns", "add", host_ns)
        sh("ip", "-n", host_ns, "link", "set", "lo", "up")
        link_standin(platform.ns["rtr"], host_ns, f"bsh{tag}", 104, [])  # its uplink address: 192.0.2.106
        # The build server's own sshd (and any listener of its root namespace), on every address.
        sshd = _start(platform.procs, host_ns, [sys.executable, "-c", LISTENER, "bs-host-ssh", ":::22"],
                      ready_line=True)
        # The box's namespace is the build namespace (a name of at most 15 characters for the same namespace).
        sh("ip", "netns", "attach", alias, str(state.dockerd_pid))
        resolv = work / "resolv.conf"
        resolv.write_text("nameserver 203.0.113.53\n")
        bparams = BuildNetParams(root=str(work / "bhost"), netns=alias, host_if=f"ibs{tag}0", ns_if="uplink0",
                                 link_cidr="192.168.253.0/30", registry=[f"{REGISTRY_IP}:443"],
                                 private_cidrs=["10.0.0.0/16"], blocked_hosts=[BLOCKED_PUBLIC],
                                 dns_resolvers=["203.0.113.53"], resolv_conf=str(resolv), allow=["10.0.1.14:443"])
        write_files(render_buildnet(bparams))
        sh("nsenter", f"--net=/run/netns/{host_ns}", "bash", bparams.path("script"), "up")

        cli = [sandbox.docker_cli(box), "-H", state.docker_host]
        _import(cli, _rootfs(work), dict(os.environ))

        def run_build(ctx: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
            q = shlex.quote
            # As Coolify's helper runs it (ADJ:3607), over the box's shell: the box's docker CLI + buildx.
            script = (f"cd {q(str(ctx))}\nexport S={q(SECRET)}\nDOCKER_BUILDKIT=1 docker build --network host "
                      f"--progress plain {' '.join(q(a) for a in args)} -t inkbs/out:1 .\n")
            return sandbox.exec_in_box(box, script, timeout=300)

        yield Builder(name="docker26", tmp=work, config=box / "root/etc/inkmcp/runtime-selector.json",
                      link="uplink0=192.168.253.2/30", own_address="192.0.2.106", run_build=run_build)
    finally:
        try:
            sandbox.down(box)
        finally:
            if sshd is not None:
                stop(sshd)
            if bparams is not None:
                subprocess.run(["nsenter", f"--net=/run/netns/{host_ns}", "bash", bparams.path("script"), "down"],
                               capture_output=True, check=False)
            for ns in (alias, host_ns):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            for pid in _pids_naming(box):
                stop_pid(pid, wait=5)
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# docker20: Debian 12's dockerd in tests/buildpath's build namespace
# --------------------------------------------------------------------------------------------------


def _debian_builder(build_ns: BuildNs) -> Iterator[Builder]:
    require("dockerd", os.path.exists("/usr/sbin/dockerd") and os.path.exists("/usr/bin/docker"),
            "Debian's docker.io (dockerd 20.10 + its CLI) is this build server's daemon")
    require("runsc", os.path.exists("/usr/bin/runsc"), "Debian's runsc (scripts/test-docker.sh installs it)")
    work = Path(tempfile.mkdtemp(prefix="inkbs20-"))
    root, sock = work / "root", work / "docker.sock"
    # The renderer's config, moved to this daemon's data root, state dir and socket (node constants elsewhere).
    cfg = json.loads(GvisorParams(build_mode=True, runc_path="/usr/sbin/runc", runsc_path="/usr/bin/runsc")
                     .render_config())
    cfg.update(data_root=str(work / "data"), state_dir=str(work / "selector-state"), docker_sockets=[str(sock)])
    rendered = work / "runtime-selector.json"
    rendered.write_text(json.dumps(cfg, indent=2))
    installed = subprocess.run(["bash", str(GVISOR / "install.sh"), str(rendered), str(root)], capture_output=True,
                               text=True, timeout=60, check=False)
    assert installed.returncode == 0, installed.stderr
    selector = root / "usr/local/lib/inkmcp/inkmcp-runtime"
    config = root / "etc/inkmcp/runtime-selector.json"
    (work / "daemon.json").write_text(json.dumps({
        "default-runtime": "inkmcp", "log-driver": "json-file",
        "runtimes": {"inkmcp": {"path": str(selector), "runtimeArgs": [f"--inkmcp-config={config}"]}}}))
    log = open(work / "dockerd.log", "wb")  # closed in the teardown, after the daemon
    # As on a node: /usr/local/sbin (the selector's `runc`) leads dockerd's PATH, so BuildKit runs the selector.
    env = {**os.environ, "PATH": f"{root}/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"}
    daemon = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{build_ns.name}", "dockerd", "--config-file", str(work / "daemon.json"),
         "--data-root", str(work / "data"), "--exec-root", str(work / "exec"), "--pidfile", str(work / "docker.pid"),
         "-H", f"unix://{sock}"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    cli = ["/usr/bin/docker", "-H", f"unix://{sock}"]
    try:
        wait_for("build dockerd 20.10", lambda: subprocess.run([*cli, "version"], capture_output=True,
                                                               timeout=10, check=False).returncode == 0,
                 timeout=60, proc=daemon, log=work / "dockerd.log")
        _import(cli, _rootfs(work), dict(os.environ))

        def run_build(ctx: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*cli, "build", "--network", "host", "--progress", "plain", *args,
                                   "-t", "inkbs/out:1", str(ctx)], capture_output=True, text=True, timeout=300,
                                  check=False, env={**os.environ, "DOCKER_BUILDKIT": "1", "S": SECRET})

        yield Builder(name="docker20", tmp=work, config=config, link="uplink0=192.168.254.2/30",
                      own_address=SELF_PROBE.split(":")[0], run_build=run_build)
    finally:
        stop_pid(daemon.pid, wait=20)
        for pid in _pids_naming(work):
            stop_pid(pid, wait=5)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module", params=["docker26", "docker20"])
def builder(request: pytest.FixtureRequest, platform: Platform) -> Iterator[Builder]:
    if request.param == "docker26":
        yield from _box_builder(platform)
    else:
        yield from _debian_builder(request.getfixturevalue("build_ns"))


@pytest.fixture(scope="module")
def probed(builder: Builder) -> str:
    """One build whose RUN steps report their kernel, their link, what they reach and their credentials."""
    args = []
    for kind, target, _want in run_probes(builder):
        args += [kind, target]
    for probe in HTTPS_PROBES:
        hostport, method, path = probe.split()
        args += ["https", hostport, method, path]
    r = builder.build("\n".join([
        "RUN echo KERNEL-$(uname -r)-END; dmesg | head -1",
        "RUN echo ADDR $(ip -4 -o addr show | awk '{print $2\"=\"$4}' | tr '\\n' ' ')",
        f"RUN buildprobe {' '.join(args)}",
        'RUN if [ -e /root/.docker/config.json ]; then r=present; else r=absent; fi; echo "CREDS-$r-END"',
    ]))
    assert r.returncode == 0, r.stdout[-4000:]
    return r.stdout


def test_run_steps_run_under_gvisor(builder: Builder, probed: str) -> None:
    """The step's kernel is gVisor's Sentry, not the build server's: a kernel exploit in a Dockerfile hits
    gVisor."""
    assert step_lines(probed, "KERNEL-")[0].split("KERNEL-")[1] == "4.4.0-END", probed[-3000:]
    assert os.uname().release != "4.4.0"
    assert any("Starting gVisor" in line for line in probed.splitlines()), probed[-3000:]


def test_run_step_shares_only_the_build_namespace(builder: Builder, probed: str) -> None:
    """`--network host` under runsc = the build namespace's stack: its one link, nothing of the host's."""
    addr = step_lines(probed, "ADDR ")[0]
    assert builder.link in addr and "lo=127.0.0.1/8" in addr, addr
    assert "eth0=" not in addr, addr


def test_run_step_reaches_only_the_registry_and_the_internet(builder: Builder, probed: str) -> None:
    got = {}
    for line in step_lines(probed, " tcp "):
        parts = line.split()
        i = parts.index("tcp")
        got[parts[i + 1]] = parts[i + 2]
    want = {target: verdict for _kind, target, verdict in run_probes(builder)}
    assert got == want, f"{ {t: v for t, v in got.items() if want.get(t) != v} }\n{probed[-4000:]}"


def test_run_step_gets_401_from_the_registry_and_holds_no_credentials(builder: Builder, probed: str) -> None:
    answers = {line.split("https ", 1)[1] for line in step_lines(probed, "https ") if " -> " in line}
    assert answers == {f"{probe} -> 401" for probe in HTTPS_PROBES}, probed[-4000:]
    assert step_lines(probed, "CREDS-") and all("CREDS-absent-END" in line for line in step_lines(probed, "CREDS-"))


def test_buildkit_mounts_work_under_gvisor(builder: Builder) -> None:
    """What Coolify's builds use besides plain RUN: a build secret (`--secret id=…,env=…`, ADJ:2752), cache mounts
    (Nixpacks), a subpath of the context. Each is a bind BuildKit makes; under runsc each must work, and the cache
    must persist from one build to the next."""
    dockerfile = "\n".join([
        "ARG N",
        "RUN --mount=type=secret,id=s echo SECRET-$(cat /run/secrets/s)-END",
        "RUN --mount=type=cache,target=/cache,id=inkbs-cache echo $N >> /cache/n && echo CACHE-$(wc -l < /cache/n)-END",
        "RUN --mount=type=bind,source=sub,target=/sub echo SUB-$(cat /sub/f)-END",
        "RUN echo KERNEL-$(uname -r)-END",
    ])
    counts = []
    for _ in range(2):
        # A new N re-runs every step (no --no-cache: it would start the cache mount empty).
        r = builder.build(dockerfile, "--secret", "id=s,env=S", "--build-arg", f"N={secrets.token_hex(4)}",
                          context={"sub/f": "from-the-context"}, no_cache=False)
        assert r.returncode == 0, r.stdout[-4000:]
        assert step_lines(r.stdout, "SECRET-")[0].endswith(f"SECRET-{SECRET}-END"), r.stdout[-3000:]
        assert step_lines(r.stdout, "SUB-")[0].endswith("SUB-from-the-context-END"), r.stdout[-3000:]
        assert step_lines(r.stdout, "KERNEL-")[0].endswith("KERNEL-4.4.0-END"), r.stdout[-3000:]
        counts.append(int(step_lines(r.stdout, "CACHE-")[0].split("CACHE-")[1].split("-END")[0]))
    assert counts[1] == counts[0] + 1, counts


def test_a_failing_run_step_fails_the_build(builder: Builder) -> None:
    """runsc's exit status reaches BuildKit through the selector (it execs runsc): a broken Dockerfile is not
    silently built."""
    r = builder.build("RUN echo before && exit 3")
    assert r.returncode != 0, r.stdout[-3000:]
    assert "exit code: 3" in r.stdout or "exit status 3" in r.stdout, r.stdout[-3000:]


def test_build_mode_off_refuses_the_same_build(builder: Builder) -> None:
    """A run server's selector (build mode off): Coolify's `docker build --network host` fails closed there,
    with the reason in the build's output. Nothing of the step ran (its marker is absent)."""
    marker = secrets.token_hex(6)
    builder.set_build_mode(False)
    try:
        r = builder.build(f"RUN echo RAN-{marker}-END")
    finally:
        builder.set_build_mode(True)
    assert r.returncode != 0, r.stdout[-3000:]
    assert "[build mode]" in r.stdout and "not in build mode" in r.stdout, r.stdout[-3000:]
    assert f"RAN-{marker}-END" not in r.stdout.replace(f"echo RAN-{marker}-END", "")
    again = builder.build(f"RUN echo RAN-{marker}-END")
    assert again.returncode == 0 and f"RAN-{marker}-END" in again.stdout.replace(f"echo RAN-{marker}-END", "")
