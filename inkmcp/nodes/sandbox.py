"""`inkmcp nodes sandbox up|down --dir DIR`: a run server in a box on this machine.

Why: the run-server design must be proven against the Docker a real node runs (>= 23 behaves differently
from Debian 12's 20.10: runtime names, image store), and an operator must be able to try a hardening
change before rolling it out. The box is a private dockerd 26 with its own containerd and gVisor's runsc,
configured by the same renderer as `inkmcp nodes harden` and the muscle stack (`render_plan`), with
nothing installed on or changed in the host system.

Layout (everything under DIR; the packages come from scripts/test-docker-trixie.sh):

    DIR/root/         trixie docker.io + docker-cli + containerd + runsc + docker-compose + docker-buildx,
                      bookworm runc (`dpkg-deb -x`), plus the rendered hardening files (root = DIR/root in
                      HostParams)
    DIR/run/          the box's /run: docker.sock, docker.pid, containerd's state, the selector's state
    DIR/data/         the box's /var/lib/docker
    DIR/home/         the box's /root (Coolify's SSH user's home: it binds ~/.docker into its helper)
    DIR/coolify/      the box's /data/coolify (proxy, applications, databases, backups)
    DIR/registry/     the image registry's storage, kept by `down`: stand-ins are not pushed twice
    DIR/dockerd.log   the daemon's log; DIR/registry.log the registry's
    DIR/sandbox.json  what `up` started (pids, namespace, cgroup) and the stand-ins' digests: what `down` stops

The daemon runs in its own network namespace (its iptables chains, bridges and DOCKER-USER exist only
there) and in its own mount namespace, where the directories above are bind-mounted at the paths a real
node has them (/run, /var/lib/docker, /root, /data/coolify, /etc/docker, /etc/inkmcp,
/usr/local/lib/inkmcp, /usr/local/sbin, /usr/libexec/docker for the CLI plugins). So the rendered
daemon.json and selector config are used verbatim, and a bind source Coolify names (/data/coolify/...,
/root/.docker/...) resolves in the box. Every process the box starts is in one cgroup tree
(`inksbx-<tag>`, containers via --cgroup-parent), so `down` can stop exactly those.

Images: Debian's docker-registry (/usr/bin/docker-registry, scripts/test-system-deps.sh) listens on
127.0.0.1:5000 inside the namespace and holds the stand-ins of inkmcp/nodes/standins.py under Coolify's
names and tags. The box's daemon.json carries `registry-mirrors: ["http://127.0.0.1:5000"]`, merged in
before the renderer's own keys — the box's only difference from a node's configuration — so every
docker.io pull (by tag or digest, by the host CLI or by compose inside Coolify's helper) really pulls from
it, offline. Push a moved tag as `127.0.0.1:5000/library/traefik:v3.6` (loopback registries are insecure
by default); `up` puts the stand-ins' tags back.

Commands run as Coolify runs them over SSH (`bash -se` as root): `inkmcp nodes sandbox exec --dir DIR`,
or `exec_in_box(box, script)` from Python.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from inkmcp.nodes import standins
from inkmcp.nodes.render import (
    DockerCommandError,
    HostParams,
    helper_profile,
    local_docker,
    proxy_profile,
    render_plan,
    resolve_pinned_images,
    sablier_profile,
)

REPO = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO / "scripts" / "test-docker-trixie.sh"
DEFAULT_CACHE = Path(os.environ.get("INKMCP_TRIXIE_CACHE", "/var/cache/inkmcp-trixie"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
STATE_FILE = "sandbox.json"
UP_TIMEOUT = 60.0
EXEC_TIMEOUT = 600.0
# Host path in the box's mount namespace -> directory under DIR it shows.
BINDS: tuple[tuple[str, str], ...] = (
    ("/run", "run"),
    ("/var/lib/docker", "data"),
    ("/root", "home"),
    ("/data/coolify", "coolify"),
    ("/etc/docker", "root/etc/docker"),
    ("/etc/inkmcp", "root/etc/inkmcp"),
    ("/usr/local/lib/inkmcp", "root/usr/local/lib/inkmcp"),
    ("/usr/local/sbin", "root/usr/local/sbin"),
    ("/usr/libexec/docker", "root/usr/libexec/docker"),
)
# Emptied by `down` (a node's state); DIR/root (packages) and DIR/registry (pushed stand-ins) stay.
NODE_STATE_DIRS = ("run", "data", "home", "coolify")
REGISTRY = "127.0.0.1:5000"
REGISTRY_BIN = "/usr/bin/docker-registry"


class SandboxError(RuntimeError):
    """The box cannot be brought up or down; the message says what to do."""


class SandboxState(BaseModel):
    """What `up` started, written to DIR/sandbox.json: `down` reads it and stops exactly this."""

    dir: str
    netns: str
    cgroup: str
    controllers: list[str]
    dockerd_pid: int
    created_mountpoints: list[str]
    socket: str
    up_seconds: float
    # Defaults: a state file written before the registry existed still loads, so `down` can stop that box.
    registry_pid: int | None = None
    registry: str = REGISTRY
    images: dict[str, str] = {}  # stand-in ref (as Coolify writes it, docker.io/ implied) -> repo digest
    up_phases: dict[str, float] = {}  # seconds per phase of `up`, for the record
    platform: dict[str, str] = {}  # platform entry -> the pinned repo digest the selector admits

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"


def _tag(box: Path) -> str:
    return hashlib.sha256(str(box).encode()).hexdigest()[:10]


def docker_cli(box: Path) -> str:
    """The box's own docker CLI (trixie's docker-cli, same API version as the daemon)."""
    return str(box / "root/usr/bin/docker")


def _run(argv: list[str], what: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if proc.returncode != 0:
        raise SandboxError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def fetch_debs(cache: Path = DEFAULT_CACHE) -> list[Path]:
    """The verified .debs (scripts/test-docker-trixie.sh: trixie Docker 26, containerd, runsc, compose,
    buildx; bookworm runc, redis). The script is skipped when its list is newer than the script and every
    .deb on it is there (it verified each against the index when it wrote the list): ~3 s of every `up`."""
    listing = cache / "debs.list"
    with contextlib.suppress(OSError):
        debs = [Path(line) for line in listing.read_text().split()]
        if debs and listing.stat().st_mtime >= FETCH_SCRIPT.stat().st_mtime and all(d.is_file() for d in debs):
            return debs
    _run(["bash", str(FETCH_SCRIPT), str(cache)], "scripts/test-docker-trixie.sh", timeout=900)
    return [Path(line) for line in listing.read_text().split()]


def unpack(debs: list[Path], root: Path) -> None:
    """The packages' files in root (nothing installed); skipped when root already holds them.

    `dpkg-deb -x` runs once per package set into CACHE/unpacked-<hash> (next to the .debs, under a lock);
    a box's root is a copy of that tree (`cp -a`, ~2 s instead of ~12 s of decompressing every box)."""
    stamp = root / ".inkmcp-debs"
    want = "\n".join(sorted(d.name for d in debs)) + "\n"
    if stamp.exists() and stamp.read_text() == want:
        return
    cache = debs[0].parent.parent if debs else root
    shared = cache / f"unpacked-{hashlib.sha256(want.encode()).hexdigest()[:16]}"
    if not (shared / ".inkmcp-debs").exists():
        with open(cache / "unpack.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (shared / ".inkmcp-debs").exists():
                tmp = shared.with_name(shared.name + f".{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                for deb in debs:
                    _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"dpkg-deb -x {deb.name}")
                (tmp / ".inkmcp-debs").write_text(want)
                for old in cache.glob("unpacked-*"):  # earlier package sets
                    if old != tmp:
                        shutil.rmtree(old, ignore_errors=True)
                tmp.rename(shared)
    root.mkdir(parents=True, exist_ok=True)
    _run(["cp", "-a", f"{shared}/.", str(root)], f"copying the unpacked packages into {root}")


def host_params(box: Path, params_file: Path | None = None) -> HostParams:
    """HostParams for the box: the operator's file (HostParams fields, YAML/JSON) with the box's root,
    firewall on (inside the namespace), no host services, and the box's runc/runsc unless given."""
    data: dict[str, Any] = {}
    if params_file is not None:
        text = params_file.read_text()
        data = json.loads(text) if params_file.suffix == ".json" else (yaml.safe_load(text) or {})
        if not isinstance(data, dict):
            raise SandboxError(f"--params {params_file}: must hold a mapping of HostParams fields")
    data.update(root=str(box / "root"), firewall=True, services=False)
    gvisor = dict(data.get("gvisor") or {})
    gvisor.setdefault("runc_path", str(box / "root/usr/sbin/runc"))
    gvisor.setdefault("runsc_path", str(box / "root/usr/bin/runsc"))
    data["gvisor"] = gvisor
    try:
        return HostParams(**data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in p['loc'])}: {p['msg']}" for p in e.errors())
        raise SandboxError(f"--params {params_file}: {problems}") from None


def _write_plan_files(files: dict[str, str], modes: dict[str, int]) -> None:
    for path, content in files.items():
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".inkmcp-new")
        tmp.write_text(content)
        tmp.chmod(modes.get(path, 0o644))
        tmp.replace(target)


def _controllers() -> list[str]:
    """cgroup v1 hierarchies mounted here: `down` removes the box's cgroups from each of them."""
    # Every hierarchy, named ones included: runc also creates the container's cgroup under name=systemd.
    found = sorted(d.name for d in CGROUP_ROOT.iterdir() if not d.is_symlink() and (d / "cgroup.procs").exists())
    if "pids" not in found:
        raise SandboxError(
            "the box needs the cgroup v1 pids controller at /sys/fs/cgroup/pids to track (and stop) what it "
            "starts; this host does not have it mounted"
        )
    return found


def _cgroup_pids(state: SandboxState) -> set[int]:
    pids: set[int] = set()
    top = CGROUP_ROOT / "pids" / state.cgroup
    if top.exists():
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def load_state(box: Path) -> SandboxState | None:
    path = box / STATE_FILE
    if not path.exists():
        return None
    return SandboxState.model_validate_json(path.read_text())


def _responds(box: Path, sock: Path) -> bool:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return subprocess.run([docker_cli(box), "-H", f"unix://{sock}", "version"], capture_output=True,
                              timeout=10, check=False).returncode == 0
    return False


def _mkdirs(target: str) -> list[str]:
    """Create `target` and its missing parents on the host (mount points); the ones created, top first."""
    made: list[str] = []
    missing = []
    p = Path(target)
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o755)
        made.append(str(d))
    return made


def _mount_point_elsewhere(target: str) -> bool:
    """Whether any mount namespace on this machine other than ours has something mounted at `target`
    or below it (another box's bind mounts)."""
    ours = os.readlink("/proc/self/ns/mnt")
    seen = {ours}
    prefix = target.rstrip("/") + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ns = os.readlink(proc / "ns/mnt")
            if ns in seen:
                continue
            seen.add(ns)
            mountinfo = (proc / "mountinfo").read_text()
        except OSError:
            continue
        for line in mountinfo.splitlines():
            point = line.split()[4].encode().decode("unicode_escape")
            if point == target or point.startswith(prefix):
                return True
    return False


def _box_daemon_json(box: Path) -> None:
    """The box's one addition to a node's daemon.json: the registry as docker.io's mirror. Written before
    the renderer's merge, which keeps keys it does not own, exactly as on a node with a prior file."""
    path = box / "root/etc/docker/daemon.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current: dict[str, Any] = {}
    if path.exists() and path.read_text().strip():
        current = json.loads(path.read_text())
    current["registry-mirrors"] = [f"http://{REGISTRY}"]
    path.write_text(json.dumps(current, indent=2) + "\n")


def _start_registry(box: Path, netns: str, cgroup: str) -> subprocess.Popen:
    """Debian's docker-registry on 127.0.0.1:5000 in the box's namespace, storage DIR/registry (kept)."""
    if not os.access(REGISTRY_BIN, os.X_OK):
        raise SandboxError(f"{REGISTRY_BIN} not found: run scripts/test-system-deps.sh (installs Debian's "
                           "docker-registry), the box serves its stand-in images with it")
    (box / "registry").mkdir(exist_ok=True)
    config = box / "registry.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(box / "registry")}, "delete": {"enabled": True}},
        "http": {"addr": REGISTRY},
    }))
    procs = CGROUP_ROOT / "pids" / cgroup / "registry"
    procs.mkdir(parents=True, exist_ok=True)
    with open(box / "registry.log", "ab") as log:
        return subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{netns}", "sh", "-c",
             'echo $$ > "$0" && exec "$@"', str(procs / "cgroup.procs"), REGISTRY_BIN, "serve", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _push_standins(box: Path, netns: str, cache: Path) -> dict[str, str]:
    """Build (or reuse from the cache) every stand-in and push it to the box's registry, from inside the
    namespace (the registry listens on its loopback only). {ref: repo digest}."""
    built = standins.build_all(box / "root", cache)
    proc = _run(["nsenter", f"--net=/var/run/netns/{netns}", sys.executable, "-m", "inkmcp.nodes.standins",
                 "push", "--registry", f"http://{REGISTRY}", *(str(b.dir) for b in built)],
                "pushing the stand-in images to the box's registry", timeout=300, cwd=REPO)
    return dict(json.loads(proc.stdout))


def up(box: Path, params_file: Path | None = None, cache: Path = DEFAULT_CACHE) -> SandboxState:
    """Bring the box up (idempotent: a box that is already up is returned as it is)."""
    if os.geteuid() != 0:
        raise SandboxError("run as root: the box needs network/mount namespaces, cgroups and iptables")
    if not box.is_absolute():
        box = box.resolve()
    for target, _src in BINDS:
        if box == Path(target) or box.is_relative_to(target):
            raise SandboxError(f"--dir {box}: pick a directory outside {target}, which the box mounts over")
    existing = load_state(box)
    if existing is not None:
        if _alive(existing.dockerd_pid) and _responds(box, Path(existing.socket)):
            return existing
        down(box)
    started = time.monotonic()
    for tool in ("ip", "nsenter", "unshare", "iptables-restore", "dpkg-deb", "python3", "ldd"):
        if shutil.which(tool) is None:
            raise SandboxError(f"{tool} not found on PATH: install iproute2, util-linux, iptables, dpkg, python3, "
                               "libc-bin")
    params = host_params(box, params_file)  # validate before anything is started
    phases: dict[str, float] = {}
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = round(now - mark, 1)
        mark = now

    debs = fetch_debs(cache)
    phase("fetch")
    unpack(debs, box / "root")
    phase("unpack")

    _box_daemon_json(box)
    plan = render_plan(params)
    _write_plan_files(plan.files, plan.modes)
    apply_after = [c for c in plan.commands if "inkmcp-docker-user-apply" in c]
    for command in plan.commands:
        if command not in apply_after:
            _run(["sh", "-c", command], f"plan step {command.split()[0]}")

    for sub in (*NODE_STATE_DIRS, "root/etc/docker", "root/usr/libexec/docker"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("run", "home", "coolify"):
        (box / sub).chmod(0o700 if sub == "home" else 0o755)
    created: list[str] = []
    for target, _src in BINDS:
        created += _mkdirs(target)
    phase("render")

    tag = _tag(box)
    netns, cgroup = f"inksbx-{tag}", f"inksbx-{tag}"
    controllers = _controllers()
    # The daemon joins the pids hierarchy only (enough to find all it starts; cpuset would first need its
    # cpus/mems set); Docker creates its containers' cgroups under /<cgroup> in every hierarchy.
    (CGROUP_ROOT / "pids" / cgroup / "daemon").mkdir(parents=True, exist_ok=True)
    _run(["ip", "netns", "add", netns], f"ip netns add {netns}")
    state = SandboxState(dir=str(box), netns=netns, cgroup=cgroup, controllers=controllers, dockerd_pid=0,
                         created_mountpoints=created, socket=str(box / "run/docker.sock"), up_seconds=0.0)
    # Written before anything starts: a box that fails half-way is still stopped by `down`.
    (box / STATE_FILE).write_text(state.model_dump_json(indent=2))
    _run(["ip", "-n", netns, "link", "set", "lo", "up"], "loopback up")
    registry = _start_registry(box, netns, cgroup)
    state.registry_pid = registry.pid

    q = shlex.quote
    lines = ["set -e"]
    lines.append(f"echo $$ > {q(str(CGROUP_ROOT / 'pids' / cgroup / 'daemon' / 'cgroup.procs'))}")
    # mkdir -p: another box's `down` may have removed a shared mount point between _mkdirs and here.
    lines += [f"mkdir -p {q(target)} && mount --bind {q(str(box / src))} {q(target)}" for target, src in BINDS]
    lines += [
        # As on a node: /usr/local/sbin leads the PATH, so Docker's `runc` is the selector's shadow.
        f"export PATH={q(_box_path(box))}",
        f"exec {q(str(box / 'root/usr/sbin/dockerd'))} --config-file /etc/docker/daemon.json"
        f" -H unix:///run/docker.sock --cgroup-parent /{cgroup}",
    ]
    boot = box / "boot.sh"
    boot.write_text("\n".join(lines) + "\n")
    sock = box / "run/docker.sock"
    with open(box / "dockerd.log", "ab") as log:
        daemon = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{netns}", "unshare", "--mount", "--propagation", "private",
             "sh", str(boot)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    state.dockerd_pid = daemon.pid
    (box / STATE_FILE).write_text(state.model_dump_json(indent=2))
    try:
        # While dockerd starts: stand-ins built (or taken from the cache) and pushed.
        state.images = _push_standins(box, netns, cache)
    except (SandboxError, standins.StandinError) as e:
        down(box)
        raise SandboxError(f"{e} (registry log: {box}/registry.log)") from None
    phase("standins")
    deadline = time.monotonic() + UP_TIMEOUT
    while not _responds(box, sock):
        if daemon.poll() is not None or time.monotonic() > deadline:
            tail = (box / "dockerd.log").read_text(errors="replace")[-3000:]
            down(box)
            raise SandboxError(f"dockerd did not come up (see {box}/dockerd.log):\n{tail}")
        time.sleep(0.2)
    # The egress rules after Docker has made its chains, as inkmcp-docker-user.service does on a node.
    for command in apply_after:
        _run(["nsenter", "-t", str(daemon.pid), "--net", "--mount", "sh", "-c", command], "DOCKER-USER rules")
    phase("dockerd")
    if not params.gvisor.platform:
        try:
            state.platform = pin_platform(box, params, state)
        except (SandboxError, DockerCommandError, ValueError) as e:
            down(box)
            raise SandboxError(f"pinning the platform images failed: {e}") from None
    phase("pin")
    state.up_phases = phases
    state.up_seconds = round(time.monotonic() - started, 1)
    (box / STATE_FILE).write_text(state.model_dump_json(indent=2))
    return state


# Stand-in refs of the platform containers, as Coolify v4.3.11 and the muscle stack name them.
PLATFORM_REFS = {"proxy": "traefik:v3.6", "sablier": "sablierapp/sablier:1.16.2",
                 "helper": "coollabsio/coolify-helper:1.0.15"}


def pin_platform(box: Path, params: HostParams, state: SandboxState) -> dict[str, str]:
    """What the muscle stack's pin step does on a node (runbooks/gvisor-decision.md §4.5 (3)), for the box's
    stand-ins: pull each platform image by repo digest, resolve its ID, entrypoint and cmd on this daemon,
    and install the selector config with the proxy, Sablier and helper profiles. Skipped when the operator's
    params file brings its own platform entries (then the box runs exactly those)."""
    missing = [ref for ref in PLATFORM_REFS.values() if ref not in state.images]
    if missing:
        raise SandboxError(f"the box's registry lacks the platform stand-ins {missing}")
    pinned = {entry: f"{ref}@{state.images[ref]}" for entry, ref in PLATFORM_REFS.items()}
    resolved = resolve_pinned_images(local_docker(docker_cli(box), host=state.docker_host), list(pinned.values()))
    profiles = [
        proxy_profile([resolved[pinned["proxy"]]]),
        sablier_profile([resolved[pinned["sablier"]]]),
        helper_profile([resolved[pinned["helper"]]]),
    ]
    plan = render_plan(params.model_copy(update={"gvisor": params.gvisor.model_copy(update={"platform": profiles})}))
    selector = [p for p in plan.files if p.endswith("/etc/inkmcp/runtime-selector.json")]
    if len(selector) != 1:
        raise SandboxError(f"the rendered plan has {len(selector)} selector configs, expected one")
    _write_plan_files({selector[0]: plan.files[selector[0]]}, plan.modes)
    return pinned


def _box_path(box: Path) -> str:
    return f"/usr/local/sbin:{box}/root/usr/sbin:{box}/root/usr/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def exec_argv(box: Path, command: list[str]) -> list[str]:
    """argv that runs `command` as Coolify's SSH session would on a node: root, in the box's network and
    mount namespaces (so /var/run/docker.sock, /data/coolify and /root are the box's), cwd /root, a login
    environment without DOCKER_HOST, PATH leading to the box's binaries; in the box's cgroup (`down` stops
    whatever it leaves running)."""
    if not box.is_absolute():
        box = box.resolve()
    state = load_state(box)
    if state is None or not _alive(state.dockerd_pid):
        raise SandboxError(f"no box is up in {box}: run `inkmcp nodes sandbox up --dir {box}` first")
    procs = CGROUP_ROOT / "pids" / state.cgroup / "exec"
    procs.mkdir(parents=True, exist_ok=True)
    env = {"HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash", "PATH": _box_path(box),
           "LANG": "C.UTF-8"}
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs / "cgroup.procs"),
            "nsenter", "-t", str(state.dockerd_pid), "--net", "--mount", "--wd=/root",
            "env", "-i", *(f"{k}={v}" for k, v in env.items()), *command]


def exec_in_box(box: Path, script: str, timeout: float = EXEC_TIMEOUT,
                command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `script` on stdin of `bash -se` (or of `command`) inside the box, as Coolify runs a step over
    SSH: errexit, the first failing line ends it with its exit code. Output captured as text.

    On the deadline the whole session is killed (the docker CLIs a script started too), then
    subprocess.TimeoutExpired is raised with what was captured."""
    argv = exec_argv(box, command or ["bash", "-se"])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, errs = proc.communicate(script, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, errs = proc.communicate()
        raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=errs) from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, errs)


def _stop_pid(pid: int, state: SandboxState, wait: float) -> None:
    """SIGTERM, then SIGKILL after `wait` s; only a process in the box's cgroup (a pid file can be stale)."""
    if pid not in _cgroup_pids(state):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _remove_cgroups(state: SandboxState) -> list[str]:
    """rmdir the box's cgroup tree in every hierarchy, deepest first; the ones that are still there."""
    left = []
    for ctrl in state.controllers:
        top = CGROUP_ROOT / ctrl / state.cgroup
        if not top.exists():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        try:
            top.rmdir()
        except OSError:
            left.append(str(top))
    return left


def down(box: Path) -> list[str]:
    """Stop what `up` started (by its pid files and cgroup), delete its namespace; what was done, in order."""
    if not box.is_absolute():
        box = box.resolve()
    state = load_state(box)
    if state is None:
        return []
    done: list[str] = []
    sock = Path(state.socket)
    if _alive(state.dockerd_pid) and _responds(box, sock):
        # live-restore is on (rendered daemon.json): containers would outlive the daemon; remove them first.
        ids = subprocess.run([docker_cli(box), "-H", state.docker_host, "ps", "-aq"], capture_output=True,
                             text=True, timeout=30, check=False).stdout.split()
        if ids:
            subprocess.run([docker_cli(box), "-H", state.docker_host, "rm", "-f", *ids], capture_output=True,
                           timeout=120, check=False)
            done.append(f"removed {len(ids)} container(s)")
    for pidfile, wait in ((box / "run/docker.pid", 20.0), (box / "run/docker/containerd/containerd.pid", 10.0)):
        with contextlib.suppress(OSError, ValueError):
            _stop_pid(int(pidfile.read_text().strip()), state, wait)
    _stop_pid(state.dockerd_pid, state, 5.0)
    if state.registry_pid:
        _stop_pid(state.registry_pid, state, 5.0)
    # Whatever is left in the box's cgroup (shims, sandboxes of a daemon that died badly) was started by it.
    deadline = time.monotonic() + 15
    while (left := {p for p in _cgroup_pids(state) if _alive(p)}) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    if left:
        raise SandboxError(f"processes {sorted(left)} of the box did not exit; stop them and run down again")
    done.append("stopped dockerd and every process in its cgroup")
    # A cgroup can stay busy for a moment after its last process was killed (exit still in progress).
    deadline = time.monotonic() + 10
    while busy := _remove_cgroups(state):
        if time.monotonic() > deadline:
            raise SandboxError(f"cannot remove the box's cgroups {busy}; run down again")
        time.sleep(0.1)
    subprocess.run(["ip", "netns", "del", state.netns], capture_output=True, check=False)
    done.append(f"deleted network namespace {state.netns}")
    for target in reversed(state.created_mountpoints):  # deepest first (parents were recorded first)
        # rmdir of a directory that is a mount point in another namespace detaches that mount there
        # (Linux >= 3.18): another box on this machine may be using it. Leave it to the last one.
        if _mount_point_elsewhere(target):
            continue
        with contextlib.suppress(OSError):
            os.rmdir(target)
    for sub in NODE_STATE_DIRS:
        shutil.rmtree(box / sub, ignore_errors=True)
    (box / STATE_FILE).unlink(missing_ok=True)
    return done
