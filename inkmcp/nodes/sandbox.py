"""`inkmcp nodes sandbox up|down --dir DIR`: a run server in a box on this machine.

Why: the run-server design must be proven against the Docker a real node runs (>= 23 behaves differently
from Debian 12's 20.10: runtime names, image store), and an operator must be able to try a hardening
change before rolling it out. The box is a private dockerd 26 with its own containerd and gVisor's runsc,
configured by the same renderer as `inkmcp nodes harden` and the muscle stack (`render_plan`), with
nothing installed on or changed in the host system.

Layout (everything under DIR; the packages come from scripts/test-docker-trixie.sh):

    DIR/root/         trixie docker.io + docker-cli + containerd + runsc, bookworm runc (`dpkg-deb -x`),
                      plus the rendered hardening files (root = DIR/root in HostParams)
    DIR/run/          the box's /run: docker.sock, docker.pid, containerd's state, the selector's state
    DIR/data/         the box's /var/lib/docker
    DIR/dockerd.log   the daemon's log
    DIR/sandbox.json  what `up` started (pids, namespace, cgroup): what `down` stops

The daemon runs in its own network namespace (its iptables chains, bridges and DOCKER-USER exist only
there) and in its own mount namespace, where DIR/run, DIR/data and the rendered files are bind-mounted
at the paths a real node has them (/run, /var/lib/docker, /etc/docker, /etc/inkmcp,
/usr/local/lib/inkmcp, /usr/local/sbin). So the rendered daemon.json and selector config are used
verbatim: the box differs from a node only in where the binaries live. Every process the box starts is
in one cgroup tree (`inksbx-<tag>`, containers via --cgroup-parent), so `down` can stop exactly those.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from inkmcp.nodes.render import HostParams, render_plan

REPO = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO / "scripts" / "test-docker-trixie.sh"
DEFAULT_CACHE = Path(os.environ.get("INKMCP_TRIXIE_CACHE", "/var/cache/inkmcp-trixie"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
STATE_FILE = "sandbox.json"
UP_TIMEOUT = 60.0
# Host path in the box's mount namespace -> directory under DIR it shows.
BINDS: tuple[tuple[str, str], ...] = (
    ("/run", "run"),
    ("/var/lib/docker", "data"),
    ("/etc/docker", "root/etc/docker"),
    ("/etc/inkmcp", "root/etc/inkmcp"),
    ("/usr/local/lib/inkmcp", "root/usr/local/lib/inkmcp"),
    ("/usr/local/sbin", "root/usr/local/sbin"),
)


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
    """The verified .debs (scripts/test-docker-trixie.sh: trixie Docker 26, containerd, runsc; bookworm runc)."""
    _run(["bash", str(FETCH_SCRIPT), str(cache)], "scripts/test-docker-trixie.sh", timeout=900)
    return [Path(line) for line in (cache / "debs.list").read_text().split()]


def unpack(debs: list[Path], root: Path) -> None:
    """`dpkg-deb -x` each package into root (nothing installed); skipped when root already holds them."""
    stamp = root / ".inkmcp-debs"
    want = "\n".join(sorted(d.name for d in debs)) + "\n"
    if stamp.exists() and stamp.read_text() == want:
        return
    root.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
    stamp.write_text(want)


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
    for tool in ("ip", "nsenter", "unshare", "iptables-restore", "dpkg-deb", "python3"):
        if shutil.which(tool) is None:
            raise SandboxError(f"{tool} not found on PATH: install iproute2, util-linux, iptables, dpkg, python3")
    params = host_params(box, params_file)  # validate before anything is started
    unpack(fetch_debs(cache), box / "root")

    plan = render_plan(params)
    _write_plan_files(plan.files, plan.modes)
    apply_after = [c for c in plan.commands if "inkmcp-docker-user-apply" in c]
    for command in plan.commands:
        if command not in apply_after:
            _run(["sh", "-c", command], f"plan step {command.split()[0]}")

    for sub in ("run", "data", "root/etc/docker"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    (box / "run").chmod(0o755)
    created = []
    for target, _src in BINDS:
        if not os.path.isdir(target):
            os.makedirs(target, mode=0o755)
            created.append(target)

    tag = _tag(box)
    netns, cgroup = f"inksbx-{tag}", f"inksbx-{tag}"
    controllers = _controllers()
    # The daemon joins the pids hierarchy only (enough to find all it starts; cpuset would first need its
    # cpus/mems set); Docker creates its containers' cgroups under /<cgroup> in every hierarchy.
    (CGROUP_ROOT / "pids" / cgroup / "daemon").mkdir(parents=True, exist_ok=True)
    _run(["ip", "netns", "add", netns], f"ip netns add {netns}")
    _run(["ip", "-n", netns, "link", "set", "lo", "up"], "loopback up")

    q = shlex.quote
    lines = ["set -e"]
    lines.append(f"echo $$ > {q(str(CGROUP_ROOT / 'pids' / cgroup / 'daemon' / 'cgroup.procs'))}")
    lines += [f"mount --bind {q(str(box / src))} {q(target)}" for target, src in BINDS]
    path = f"/usr/local/sbin:{box}/root/usr/sbin:{box}/root/usr/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    lines += [
        # As on a node: /usr/local/sbin leads the PATH, so Docker's `runc` is the selector's shadow.
        f"export PATH={q(path)}",
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
    state = SandboxState(dir=str(box), netns=netns, cgroup=cgroup, controllers=controllers,
                         dockerd_pid=daemon.pid, created_mountpoints=created, socket=str(sock), up_seconds=0.0)
    # Written before waiting: a daemon that fails half-way is still stopped by `down`.
    (box / STATE_FILE).write_text(state.model_dump_json(indent=2))
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
    state.up_seconds = round(time.monotonic() - started, 1)
    (box / STATE_FILE).write_text(state.model_dump_json(indent=2))
    return state


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
    for target in state.created_mountpoints:
        with contextlib.suppress(OSError):
            os.rmdir(target)
    for sub in ("run", "data"):
        shutil.rmtree(box / sub, ignore_errors=True)
    (box / STATE_FILE).unlink(missing_ok=True)
    return done
