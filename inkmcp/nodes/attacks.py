"""Attacks on a run server, run against `inkmcp nodes sandbox` with proof from the attacker's side.

Why: "the selector refused it" is only worth something if the same request, let through, would have
reached the host. So every attack here is the docker request a tenant (through Coolify fields it controls,
or through a package that changed the node) could make, and the runner reports what the *container* saw,
not what the daemon said: for a container that runs, a probe inside prints the kernel release (gVisor's
Sentry says 4.4.0, the host says its own), reads a secret the runner planted on the host through the
attack's host bind, tries to write a file next to it, pings the Docker API over any mounted socket and
names PID 1. The host side then checks that the secret was not read and nothing was written. A refused
attack must leave no container running and no trace on the host.

Outcomes: ``refused`` (create/start failed; the daemon's message is the evidence), ``sandboxed`` (ran,
kernel 4.4.0, no secret, no write, no Docker API), ``escaped`` (anything else: host kernel, secret read,
file written on the host, Docker API answered, host PID 1). Each attack states what the design
(runbooks/gvisor-decision.md §4, §5) expects; `inkmcp nodes attack --box DIR` prints the matrix and exits 1
when an outcome differs, so an operator can try a hardening change on a box before rolling it out.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from inkmcp.nodes.sandbox import SandboxError, docker_cli, load_state

Outcome = Literal["refused", "sandboxed", "escaped", "error"]
GVISOR_KERNEL = "4.4.0"
ATTACKER_IMAGE = "inkmcp/attacker:local"
PROBE_SOURCE = Path(__file__).with_name("attack_probe.c")
# What the probe prints, one `key=value` per line (parsed by `parse_probe`).
PROBE_SCRIPT = r"""
echo "kernel=$(uname -r)"
echo "pid1=$(cat /proc/1/comm 2>/dev/null || echo none)"
echo "capeff=$(grep CapEff /proc/self/status | tr -d ' \t' | cut -d: -f2)"
if [ -n "$SECRET" ] && [ -r "$SECRET" ]; then echo "secret=$(cat "$SECRET")"; else echo "secret=unreadable"; fi
if [ -n "$DROP" ] && (echo pwned > "$DROP") 2>/dev/null; then echo "drop=written"; else echo "drop=failed"; fi
for s in /var/run/docker.sock /run/docker.sock /host/var/run/docker.sock /host/run/docker.sock; do
  if [ -S "$s" ] && [ -x /usr/local/bin/inkprobe ] && /usr/local/bin/inkprobe "$s" >/dev/null 2>&1; then
    echo "docker_api=$s"; exit 0
  fi
done
echo "docker_api=none"
"""


class AttackResult(BaseModel):
    """One row of the matrix."""

    id: str
    title: str
    expected: Outcome
    outcome: Outcome
    evidence: str

    @property
    def ok(self) -> bool:
        return self.outcome == self.expected


@dataclass
class Target:
    """A box the attacks run against, and the host paths the probe is pointed at."""

    box: Path
    docker_host: str
    work: Path
    secret: Path = field(init=False)
    drop: Path = field(init=False)
    token: str = field(default_factory=lambda: secrets.token_hex(8))

    def __post_init__(self) -> None:
        self.secret = self.work / "host-secret"
        self.drop = self.work / "dropped-by-tenant"

    def docker(self, *args: str, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([docker_cli(self.box), "-H", self.docker_host, *args], capture_output=True,
                              text=True, timeout=timeout, check=False, input=stdin)

    def reset_host_marks(self) -> None:
        self.secret.write_text(self.token + "\n")
        self.secret.chmod(0o600)
        self.drop.unlink(missing_ok=True)


@dataclass
class Attack:
    """A docker request a tenant could make. `args` go between `docker run -d --name NAME` and the image;
    `{secret}`/`{drop}`/`{work}` are the host paths of the planted secret, the drop file and their dir."""

    id: str
    title: str
    expected: Outcome
    args: list[str]
    image: str = ATTACKER_IMAGE
    name: str | None = None
    # Paths as the container sees them (a `/:/host` bind puts the host's /x at /host/x).
    read_path: str = "/host{secret}"
    write_path: str = "/host{drop}"
    setup: Callable[[Target], None] | None = None
    cleanup: Callable[[Target], None] | None = None
    cmd: list[str] | None = None  # None: keep the image's own command running (sleep for the attacker image)


def parse_probe(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[a-z_0-9]+", key):
            out[key] = value.strip()
    return out


def judge(text: str, target: Target) -> tuple[Outcome, str]:
    """What the probe's output means, checked against the host (the drop file is looked for on the host).
    The secret counts as read wherever its token shows up in the output (a file may hold it on any line)."""
    probe = parse_probe(text)
    problems = []
    kernel = probe.get("kernel", "?")
    if kernel != GVISOR_KERNEL:
        problems.append(f"host kernel {kernel}")
    if target.token in text:
        problems.append("read the host secret")
    if target.drop.exists():
        problems.append(f"wrote {target.drop} on the host")
    if probe.get("docker_api", "none") != "none":
        problems.append(f"Docker API answered on {probe['docker_api']}")
    evidence = (f"kernel {kernel}, pid1 {probe.get('pid1', '?')}, CapEff {probe.get('capeff', '?')}, "
                f"secret {'read' if target.token in text else probe.get('secret', '?')[:12]}, "
                f"drop {probe.get('drop', '?')}, "
                f"docker_api {probe.get('docker_api', '?')}")
    if problems:
        return "escaped", "; ".join(problems) + f" ({evidence})"
    return "sandboxed", evidence


def _first_error(text: str) -> str:
    """The daemon's error on one line, from the selector's own message on when there is one."""
    line = " ".join(text.strip().split())
    start = line.find("inkmcp-runtime:")
    if start > 0:
        line = line[start:]
    return line[:600]


def run_attack(target: Target, attack: Attack) -> AttackResult:
    target.reset_host_marks()
    name = attack.name or f"ink-attack-{attack.id.lower()}-{secrets.token_hex(3)}"
    fill = {"secret": str(target.secret), "drop": str(target.drop), "work": str(target.work)}
    args = [a.format(**fill) for a in attack.args]
    outcome: Outcome
    try:
        if attack.setup is not None:
            attack.setup(target)
        cmd = attack.cmd if attack.cmd is not None else (["sleep", "600"] if attack.image == ATTACKER_IMAGE else [])
        started = target.docker("run", "-d", "--name", name, *args, attack.image, *cmd)
        if started.returncode != 0:
            outcome, evidence = "refused", _first_error(started.stderr or started.stdout)
            if target.drop.exists():
                outcome, evidence = "escaped", f"refused, but {target.drop} was written on the host: {evidence}"
            running = target.docker("ps", "-q", "--filter", f"name=^{name}$").stdout.strip()
            if running:
                outcome, evidence = "escaped", f"create reported failure but {name} runs: {evidence}"
        else:
            env = ["-e", f"SECRET={attack.read_path.format(**fill)}", "-e", f"DROP={attack.write_path.format(**fill)}"]
            probed = _probe(target, name, env)
            if probed is None:
                outcome, evidence = "error", f"{name} started but could not be probed: {_logs(target, name)}"
            else:
                outcome, evidence = judge(probed, target)
    except (OSError, subprocess.SubprocessError, SandboxError) as e:
        outcome, evidence = "error", f"{type(e).__name__}: {e}"
    finally:
        target.docker("rm", "-f", name, timeout=60)
        if attack.cleanup is not None:
            with contextlib.suppress(Exception):
                attack.cleanup(target)
        target.drop.unlink(missing_ok=True)
    return AttackResult(id=attack.id, title=attack.title, expected=attack.expected, outcome=outcome,
                        evidence=evidence)


def _logs(target: Target, name: str) -> str:
    proc = target.docker("logs", "--tail", "5", name, timeout=30)
    return _first_error(proc.stdout + proc.stderr) or "no logs"


def _probe(target: Target, name: str, env: list[str]) -> str | None:
    """The probe script through `docker exec` (runs under the runtime the container was created with),
    after copying the socket prober in. Waits (bounded) for a container that is still starting."""
    deadline = time.monotonic() + 30
    while True:
        state = target.docker("inspect", "-f", "{{.State.Running}}", name, timeout=30).stdout.strip()
        if state == "true":
            break
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    prober = target.work / "inkprobe"
    if prober.exists():
        target.docker("exec", name, "mkdir", "-p", "/usr/local/bin", timeout=30)
        target.docker("cp", str(prober), f"{name}:/usr/local/bin/inkprobe", timeout=60)
    proc = target.docker("exec", *env, name, "sh", "-c", PROBE_SCRIPT, timeout=60)
    if proc.returncode != 0 and "kernel=" not in proc.stdout:
        return None
    return proc.stdout


# ------------------------------------------------------------------------------------------------------
# The attacker image and the catalogue
# ------------------------------------------------------------------------------------------------------

def build_attacker_image(target: Target) -> None:
    """busybox-static + the socket prober, `docker import`ed (offline, nothing pulled)."""
    if target.docker("image", "inspect", ATTACKER_IMAGE).returncode == 0 and (target.work / "inkprobe").exists():
        return
    if shutil.which("gcc") is None:
        raise SandboxError("gcc is needed to build the attack probe (apt-get install gcc libc6-dev)")
    prober = target.work / "inkprobe"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(prober), str(PROBE_SOURCE)], check=True,
                   capture_output=True, timeout=120)
    with tempfile.TemporaryDirectory(prefix="inkattack-rootfs-") as tmp:
        rootfs = Path(tmp)
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "usr/local/bin"):
            (rootfs / d).mkdir(parents=True, exist_ok=True)
        busybox = shutil.which("busybox") or "/bin/busybox"
        shutil.copy2(busybox, rootfs / "bin/busybox")
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        shutil.copy2(prober, rootfs / "usr/local/bin/inkprobe")
        (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc/group").write_text("root:x:0:\n")
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    proc = subprocess.run([docker_cli(target.box), "-H", target.docker_host, "import", "-c", 'CMD ["sh"]', "-",
                           ATTACKER_IMAGE], input=tar, capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise SandboxError(f"docker import of the attacker image failed: {proc.stderr.decode(errors='replace')}")


def catalogue() -> list[Attack]:
    """Issue 7 item 4: every way a tenant's container could be asked to reach the host. Expected outcomes
    are the design's (runbooks/gvisor-decision.md §4.2 T1-T5, §4.3)."""
    host_root = ["-v", "/:/host"]
    # Devices the node really has (a missing one would be refused by the daemon before any runtime runs).
    kernel_dev = _first_device("/dev/kmsg", "/dev/mem", "/dev/full")
    block_dev = _first_device("/dev/loop0", "/dev/fuse", "/dev/net/tun", "/dev/full")
    return [
        Attack("A1", "--runtime io.containerd.evil.v1 after a package installed containerd-shim-evil-v1", "refused",
               ["--runtime", "io.containerd.evil.v1"], setup=_plant_shim, cleanup=_remove_shim),
        Attack("A2a", "--runtime runc (Docker's built-in name)", "sandboxed", ["--runtime", "runc"],
               read_path="{secret}", write_path="{drop}"),
        Attack("A2b", "--runtime io.containerd.runc.v2", "sandboxed", ["--runtime", "io.containerd.runc.v2"],
               read_path="{secret}", write_path="{drop}"),
        Attack("A2c", "--runtime io.containerd.runc.v1", "sandboxed", ["--runtime", "io.containerd.runc.v1"],
               read_path="{secret}", write_path="{drop}"),
        Attack("A6a", "host bind -v /:/host", "refused", host_root),
        Attack("A6b", "host bind --mount type=bind,source=/,target=/host", "refused",
               ["--mount", "type=bind,source=/,target=/host"]),
        Attack("A6c", "bind of the secret's directory", "refused", ["-v", "{work}:/loot"],
               read_path="/loot/host-secret", write_path="/loot/dropped-by-tenant"),
        Attack("A6d", "volume with bind driver options (local driver, o=bind)", "refused",
               ["-v", "inkattack-bindvol:/host"], setup=_bind_volume, cleanup=_drop_bind_volume),
        Attack("A7a", "Docker socket -v /var/run/docker.sock", "refused",
               ["-v", "/var/run/docker.sock:/var/run/docker.sock"]),
        Attack("A7b", "Docker socket through /run", "refused", ["-v", "/run:/host/run"]),
        Attack("A8a", "--privileged", "refused", ["--privileged", *host_root]),
        Attack("A8b", "--privileged alone (devices, all caps)", "refused", ["--privileged"]),
        Attack("A9a", "--network host", "refused", ["--network", "host"]),
        Attack("A9b", "--pid host", "refused", ["--pid", "host"]),
        Attack("A9c", "--ipc host", "refused", ["--ipc", "host"]),
        Attack("A9d", "--uts host", "refused", ["--uts", "host"]),
        Attack("A9e", "--network container:sablier (platform, holds the socket)", "refused",
               ["--network", f"container:{VICTIM}"], setup=_victim, cleanup=_drop_victim),
        Attack("A9f", "--pid container:sablier", "refused",
               ["--pid", f"container:{VICTIM}"], setup=_victim, cleanup=_drop_victim),
        Attack("A9g", "--volumes-from sablier (copies its socket mount)", "refused",
               ["--volumes-from", VICTIM], setup=_victim, cleanup=_drop_victim),
        Attack("A10a", "--cap-add SYS_ADMIN", "refused", ["--cap-add", "SYS_ADMIN"]),
        Attack("A10b", "--cap-add ALL", "refused", ["--cap-add", "ALL"]),
        Attack("A10c", "--security-opt seccomp=unconfined (no extra caps)", "sandboxed",
               ["--security-opt", "seccomp=unconfined"], read_path="{secret}", write_path="{drop}"),
        Attack("A11a", f"--device {kernel_dev} (kernel log / memory)", "refused", ["--device", kernel_dev]),
        Attack("A11b", f"--device {block_dev} (a host block or loop device)", "refused", ["--device", block_dev]),
        Attack("A12", "annotation dev.gvisor.flag.host-uds=all (runsc flag override)", "refused",
               ["--annotation", "dev.gvisor.flag.host-uds=all"]),
        # Review #6: a platform container's name while it is free (Coolify's custom_internal_name), with the
        # genuine platform image. Coolify stamps coolify.* labels on every tenant container (docker.php:379-415).
        Attack("A3a", "coolify-proxy name + genuine proxy image + socket + /:/host", "refused",
               ["-v", "/var/run/docker.sock:/var/run/docker.sock:ro", "-v", "/data/coolify/proxy:/traefik", *host_root],
               image=PROXY_IMAGE, name="coolify-proxy", cmd=[]),
        Attack("A3b", "coolify-proxy name + genuine image + the proxy's exact mounts + Coolify's tenant labels",
               "refused", ["-v", "/var/run/docker.sock:/var/run/docker.sock:ro", "-v", "/data/coolify/proxy:/traefik",
                           "-l", "coolify.applicationId=7", "-l", "coolify.type=application"],
               image=PROXY_IMAGE, name="coolify-proxy", cmd=[]),
        Attack("A3c", "coolify-proxy name + the tenant's own image + socket", "refused",
               ["-v", "/var/run/docker.sock:/var/run/docker.sock:ro"], name="coolify-proxy"),
        Attack("A3d", "coolify-proxy name + the tenant's own image, no mounts (a reserved name)", "refused", [],
               name="coolify-proxy"),
        Attack("A3e", "sablier name + genuine Sablier image + socket + /:/host", "refused",
               ["-v", "/var/run/docker.sock:/var/run/docker.sock", *host_root], image=SABLIER_IMAGE, name="sablier",
               cmd=["start", "--provider.name=docker"]),
        # Review #2/#6: the deploy helper's shape (24-char deployment uuid name, helper image, socket).
        Attack("A4a", "helper name + genuine helper image + socket, labelled as a Coolify database", "refused",
               ["-v", "/var/run/docker.sock:/var/run/docker.sock", "-l", "coolify.type=database",
                "-l", "coolify.databaseId=3"], image=HELPER_IMAGE, name=HELPER_LIKE_NAME, cmd=[]),
        Attack("A4b", "helper name + genuine helper image + socket + /:/host", "refused",
               ["-v", "/var/run/docker.sock:/var/run/docker.sock", *host_root], image=HELPER_IMAGE,
               name=HELPER_LIKE_NAME, cmd=[]),
        Attack("A4c", "helper name + tenant image + socket", "refused",
               ["-v", "/var/run/docker.sock:/var/run/docker.sock"], name=HELPER_LIKE_NAME),
        # Review #8: a tenant database may bind its own /data/coolify/databases/<uuid>/ (custom config, init
        # scripts), nothing else: not a neighbour's dir (its docker-compose.yml holds that DB's password) and
        # not a symlink planted in its own dir.
        Attack("A5a", "database container binding another database's resource dir", "refused",
               ["-v", f"/data/coolify/databases/{NEIGHBOUR_UUID}:/loot", "-l", "coolify.databaseId=3",
                "-l", "coolify.type=database"], name=TENANT_DB_UUID, setup=_resource_dirs, cleanup=_drop_resource_dirs,
               read_path="/loot/docker-compose.yml"),
        Attack("A5b", "database container binding a symlink to / planted in its own resource dir", "refused",
               ["-v", f"/data/coolify/databases/{TENANT_DB_UUID}/escape:/host", "-l", "coolify.databaseId=3",
                "-l", "coolify.type=database"], name=TENANT_DB_UUID, setup=_resource_dirs,
               cleanup=_drop_resource_dirs),
        Attack("A5c", "database container binding its own resource dir (custom postgres.conf): allowed", "sandboxed",
               ["-v", f"/data/coolify/databases/{TENANT_DB_UUID}/custom-postgres.conf:/etc/postgresql.conf:ro",
                "-l", "coolify.databaseId=3", "-l", "coolify.type=database"], name=TENANT_DB_UUID,
               setup=_resource_dirs, cleanup=_drop_resource_dirs),
    ]


VICTIM = "sablier"
PROXY_IMAGE = "traefik:v3.6"
SABLIER_IMAGE = "sablierapp/sablier:1.16.2"  # MuscleConfig.sablier_image
HELPER_IMAGE = "coollabsio/coolify-helper:1.0.15"
HELPER_LIKE_NAME = "a8k4wcgwo0s8ok4gkwoc8w4s"
TENANT_DB_UUID = "d4g0wk0s8c8gk4so0k4ggwsk"
NEIGHBOUR_UUID = "n3ighb0urk0s8c8gk4so0k4g"


def coolify_dir(box: Path) -> Path:
    """Where the box keeps its /data/coolify (the path Coolify's binds name inside the box)."""
    return box / "coolify"


def _resource_dirs(target: Target) -> None:
    """Two databases' resource dirs as Coolify writes them: ours with a custom config (and a planted symlink
    to /), the neighbour's with its compose file holding its password (here: the host secret's token)."""
    base = coolify_dir(target.box) / "databases"
    own, other = base / TENANT_DB_UUID, base / NEIGHBOUR_UUID
    own.mkdir(parents=True, exist_ok=True)
    other.mkdir(parents=True, exist_ok=True)
    (own / "custom-postgres.conf").write_text("listen_addresses = '*'\n")
    escape = own / "escape"
    if not escape.is_symlink():
        escape.symlink_to("/")
    (other / "docker-compose.yml").write_text(f"environment:\n  POSTGRES_PASSWORD: {target.token}\n")


def _drop_resource_dirs(target: Target) -> None:
    base = coolify_dir(target.box) / "databases"
    for uuid in (TENANT_DB_UUID, NEIGHBOUR_UUID):
        shutil.rmtree(base / uuid, ignore_errors=True)


def _first_device(*candidates: str) -> str:
    return next((d for d in candidates if os.path.exists(d)), candidates[-1])


SHIM_NAME = "containerd-shim-evil-v1"


def _plant_shim(target: Target) -> None:
    """What a package (e.g. gVisor's release channel with `containerd-shim-runsc-v1`) does: a shim binary
    next to containerd's, where containerd looks for `io.containerd.<x>.v<N>` (runtime/v2/manager.go). This
    one proves it ran by writing the drop file on the host, as root, outside any sandbox. Then, as the apt
    hook does after every dpkg run on a node, the node's shim guard runs if the rendered plan has one."""
    shim = target.box / "root/usr/bin" / SHIM_NAME
    shim.write_text(f"#!/bin/sh\necho pwned-by-shim > {target.drop}\nexit 1\n")
    shim.chmod(0o755)
    for command in shim_guard_commands(target.box):
        subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60, check=False)


def _remove_shim(target: Target) -> None:
    for path in (target.box / "root/usr/bin").glob(f"{SHIM_NAME}*"):
        path.unlink(missing_ok=True)


def shim_guard_commands(box: Path) -> list[str]:
    """The plan's shim-guard commands for this box (empty when the rendered hardening has none)."""
    from inkmcp.nodes.render import render_plan
    from inkmcp.nodes.sandbox import host_params

    return [c for c in render_plan(host_params(box)).commands if "shim-guard" in c]


def _bind_volume(target: Target) -> None:
    target.docker("volume", "rm", "-f", "inkattack-bindvol")
    made = target.docker("volume", "create", "-d", "local", "-o", "type=none", "-o", "o=bind", "-o", "device=/",
                         "inkattack-bindvol")
    if made.returncode != 0:
        raise SandboxError(f"volume create failed: {made.stderr}")


def _drop_bind_volume(target: Target) -> None:
    target.docker("volume", "rm", "-f", "inkattack-bindvol")


def _victim(target: Target) -> None:
    """The platform container to borrow from: Sablier, started exactly as its profile says (pinned image, the
    Docker socket), so it runs under runc with the socket. Joining its namespaces or copying its mounts
    must not hand a tenant what Sablier has."""
    state = load_state(target.box)
    pinned = (state.platform if state else {}).get("sablier")
    if not pinned:
        raise SandboxError("the box has no pinned Sablier image (sandbox.json `platform`): bring it up again")
    target.docker("rm", "-f", VICTIM)
    made = target.docker("run", "-d", "--name", VICTIM, "-v", "/var/run/docker.sock:/var/run/docker.sock", pinned,
                         "start", "--provider.name=docker")
    if made.returncode != 0:
        raise SandboxError(f"the genuine Sablier container did not start: {made.stderr}")
    kernel = target.docker("exec", VICTIM, "uname", "-r").stdout.strip()
    if kernel in ("", GVISOR_KERNEL):
        raise SandboxError(f"the genuine Sablier container is not a platform container (kernel {kernel!r})")


def _drop_victim(target: Target) -> None:
    target.docker("rm", "-f", VICTIM)


def target_for(box: Path) -> Target:
    state = load_state(box)
    if state is None:
        raise SandboxError(f"no box is up in {box}: run `inkmcp nodes sandbox up --dir {box}` first")
    work = box / "attack"
    work.mkdir(mode=0o700, exist_ok=True)
    return Target(box=box, docker_host=state.docker_host, work=work)


def run_all(box: Path, ids: list[str] | None = None) -> list[AttackResult]:
    target = target_for(box)
    build_attacker_image(target)
    attacks = catalogue()
    if ids:
        known = {a.id for a in attacks}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise SandboxError(f"unknown attack id(s) {unknown}; known: {sorted(known)}")
        attacks = [a for a in attacks if a.id in ids]
    return [run_attack(target, a) for a in attacks]
