"""Run the Coolify replay against a run server in a box (`inkmcp nodes sandbox`) and classify what ran.

Why: the replay data (`coolify_replay.yaml`, `replay.py`) says what Coolify v4.3.11 sends to a run server;
only running it against a daemon configured like a node shows whether each operation still works through
the sandbox and where each of its containers ends up. This module runs one operation the way Coolify does
and reports, per container the operation declares, one of:

- ``platform``: it runs and `uname -r` inside it is the host's kernel (runc);
- ``sandboxed``: it runs and `uname -r` inside it is gVisor's ``4.4.0`` (runsc);
- ``refused``: create/start failed and the error carries the selector's message (``inkmcp-runtime: …``);
- ``ran``: it ran and was gone before it could be probed (``--rm`` one-offs) and the selector left no record;
- ``failed``: it was created but did not run, for a reason other than the selector (the error says which);
- ``not_reached``: an earlier step of the operation failed, so Coolify would never have created it.

How it runs an operation (``run_operation``): values are the data's examples except that every uuid, id
and timestamp is fresh (repeated runs never collide) and what Coolify reads from the server first is read
from the box (``echo $HOME``, the daemon version that picks ``--time``/``--timeout``); the node state the
operation assumes is set up (the ``coolify`` network, ``~/.docker/config.json`` present or absent, a
running database before a backup: ``PREREQUISITES``; no ``coolify`` network yet for our own muscle steps, which
run before Coolify has touched the node; the box's pinned platform digests for them); each step's commands are
joined with newlines and piped to ``bash -se`` inside the box (Coolify's ``ssh … 'bash -se'``), and the
operation stops at the first failing step unless the step says ``ignore_errors``. Right after the step that
creates a container, the container is found through the daemon's event log of that step and probed from
inside; files the step wrote are compared with the rendered content; each expectation with a command runs
(polled with a deadline: Coolify polls health too) once the containers it names exist. Afterwards
everything the run created (containers, networks other than ``coolify``, volumes, image tags, the
resource's directories under /data/coolify) is removed, so operations are independent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import string
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from inkmcp.nodes import sandbox
from inkmcp.nodes.replay import (
    Container,
    Expectation,
    RenderedOperation,
    RenderedStep,
    ReplayData,
    ReplayError,
    load_replay,
)
from inkmcp.nodes.replay_standins import Uplink, make_repository

HOST_KERNEL = os.uname().release
GVISOR_KERNEL = "4.4.0"
"""What gVisor's Sentry answers to uname(2): a tenant sees this, never the host's kernel."""

ContainerClass = Literal["platform", "sandboxed", "refused", "ran", "failed", "not_reached", "no_container"]

PREREQUISITES: dict[str, tuple[str, ...]] = {
    # sandbox_needs of the data: "a running postgres_start database (the dump runs `docker exec` into it)"
    "backup_postgres_s3": ("postgres_start",),
    "backup_postgres_dump_all": ("postgres_start",),
}
"""Operations whose upstream caller only runs them after another one succeeded on the same resource."""

SELECTOR_MESSAGE = re.compile(r"inkmcp-runtime: (.+?)(?:: unknown)?\.?$", re.M)
STEP_TIMEOUT = 600.0
EXPECT_DEADLINE = 120.0
"""Coolify polls a starting resource's health (health_check_retries x interval); stand-ins are healthy in seconds."""
PROBE_TIMEOUT = 30.0
UUID_PATTERN = "[a-z0-9]{24}"
PINNED_PLACEHOLDERS = {"proxy_image": "proxy", "sablier_image": "sablier"}
"""Placeholders the box fills with its own pinned digests (its selector config pins those, not the examples)."""
KEEP_NETWORKS = {"coolify", "bridge", "host", "none"}


class ShellResult(BaseModel):
    """One command run in the box: exit code (None = killed at its deadline), output, wall time."""

    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class StepRun(BaseModel):
    id: str
    transport: str
    ignore_errors: bool
    exit_code: int | None
    seconds: float
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Check(BaseModel):
    """A file comparison or an expectation: ok None = not applicable / not checkable, with the reason."""

    what: str
    ok: bool | None
    detail: str = ""


class ContainerRow(BaseModel):
    """One cell of the replay matrix: where one container of one operation ended up, and the proof."""

    model_config = ConfigDict(populate_by_name=True)

    op: str
    container: str
    role: str
    klass: ContainerClass = Field(alias="class")
    evidence: str
    docker_name: str | None = None
    kernel: str | None = None
    runtime: str | None = None


class ReplayResult(BaseModel):
    op: str
    ok: bool
    seconds: float
    prerequisites: list[ReplayResult] = Field(default_factory=list)
    values: dict[str, str]
    steps: list[StepRun]
    failed_step: str | None
    containers: list[ContainerRow]
    files: list[Check]
    expectations: list[Check]
    cleanup: list[str]


# ------------------------------------------------------------------------------------------ the box's shell


class BoxShell:
    """Commands inside the box as Coolify's SSH session runs them, and the box's docker CLI from outside.

    Scripts go through `sandbox.exec_in_box` when the sandbox provides it (the box's namespaces, PATH,
    HOME and /data/coolify as a node has them); otherwise through nsenter into the daemon's network and
    mount namespaces with the box's binaries first on PATH (the same view dockerd has).
    """

    def __init__(self, box: Path | str) -> None:
        box = Path(box).resolve()
        state = sandbox.load_state(box)
        if state is None:
            raise ReplayError(f"--box {box}: no box is up there; start one with `inkmcp nodes sandbox up --dir {box}`")
        self.box = box
        self.state = state
        self.docker_bin = sandbox.docker_cli(box)

    # -- scripts inside the box
    def bash_se(self, script: str, timeout: float = STEP_TIMEOUT) -> ShellResult:
        """`script` on the stdin of `bash -se` (Coolify's remote_process / instant_remote_process: a heredoc,
        so the script ends with a newline)."""
        return self._in_box(["bash", "-se"], script + "\n", timeout)

    def run(self, step: RenderedStep, timeout: float = STEP_TIMEOUT) -> ShellResult:
        """One rendered step through its transport (RenderedStep.argv/stdin: `bash -se` with the script on
        stdin, or `bash -euo pipefail -c SCRIPT` for our own Pulumi commands)."""
        return self._in_box(step.argv(), step.stdin() or "", timeout)

    def _in_box(self, argv: list[str], stdin: str, timeout: float) -> ShellResult:
        started = time.monotonic()
        exec_in_box = getattr(sandbox, "exec_in_box", None)
        if exec_in_box is None:  # a sandbox module without exec_in_box: the same view by hand
            return _run_killable(self._nsenter_argv(argv), stdin, timeout, started)
        try:
            proc = exec_in_box(self.box, stdin, timeout=timeout, command=argv)
        except subprocess.TimeoutExpired as e:
            return ShellResult(exit_code=None, stdout=_text(e.stdout), stderr=_text(e.stderr) + "\n(timed out)",
                               seconds=round(time.monotonic() - started, 2))
        return ShellResult(exit_code=proc.returncode, stdout=_text(proc.stdout), stderr=_text(proc.stderr),
                           seconds=round(time.monotonic() - started, 2))

    def _nsenter_argv(self, argv: list[str]) -> list[str]:
        path = f"/usr/local/sbin:{self.box}/root/usr/sbin:{self.box}/root/usr/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return ["nsenter", "-t", str(self.state.dockerd_pid), "--net", "--mount", "--wd=/root", "--",
                "env", "-i", f"PATH={path}", "HOME=/root", "USER=root", "LANG=C.UTF-8", *argv]

    def read_file(self, path: str) -> str | None:
        got = self.bash_se(f"cat -- {shlex.quote(path)}", timeout=30)
        return got.stdout if got.ok else None

    # -- the daemon, from outside
    def docker(self, *args: str, timeout: float = 120, stdin: str | None = None) -> ShellResult:
        started = time.monotonic()
        return _run_killable([self.docker_bin, "-H", self.state.docker_host, *args], stdin, timeout, started)

    def selector_state_dirs(self) -> list[Path]:
        """Where the selector records which runtime owns a container (its state_dir, seen from outside)."""
        cfg = self.box / "root/etc/inkmcp/runtime-selector.json"
        with contextlib.suppress(OSError, ValueError):
            state_dir = str(json.loads(cfg.read_text()).get("state_dir") or "")
            if state_dir.startswith("/run/"):
                return [self.box / "run" / state_dir.removeprefix("/run/")]
        return [self.box / "run/inkmcp-runtime"]

    def selector_digest(self) -> str:
        """sha256 over the selector the box runs (its launcher and any rules module next to it): which selector
        a matrix was measured with ("before"/"after")."""
        lib = self.box / "root/usr/local/lib/inkmcp"
        files = [lib / "inkmcp-runtime", *sorted(lib.glob("*.py"))]
        digest = hashlib.sha256()
        try:
            for f in files:
                digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
        except OSError:
            return "unknown"
        return digest.hexdigest()


def _text(v: object) -> str:
    if v is None:
        return ""
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _run_killable(argv: list[str], stdin: str | None, timeout: float, started: float) -> ShellResult:
    """Run argv in its own session; on the deadline kill the whole group (docker CLIs a script started too)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code, err = None, (err or "") + f"\n(killed after {timeout:.0f} s)"
    return ShellResult(exit_code=code, stdout=out or "", stderr=err or "", seconds=round(time.monotonic() - started, 2))


# ------------------------------------------------------------------------------------------ values


def new_uuid() -> str:
    """A Coolify public id (cuid2 shape: 24 lowercase alphanumerics, starting with a letter)."""
    alphabet = string.ascii_lowercase + string.digits
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(alphabet) for _ in range(23))


class BoxFacts(BaseModel):
    """What Coolify reads from the server before it renders its commands."""

    home: str
    docker_version: str
    platform: dict[str, str] = {}
    """Platform entry -> the repo digest the box's selector config pins (what the muscle's steps are given)."""

    @property
    def stop_time_option(self) -> str:
        """dockerStopTimeoutOption (bootstrap/helpers/docker.php:234-242): --timeout from Docker 28 on."""
        major = re.match(r"(\d+)", self.docker_version)
        return "--timeout" if major and int(major.group(1)) >= 28 else "--time"


def box_facts(shell: BoxShell) -> BoxFacts:
    home = shell.bash_se("echo $HOME", timeout=30)
    version = shell.docker("version", "--format", "{{.Server.Version}}", timeout=30)
    if not home.ok or not home.stdout.strip():
        raise ReplayError(f"`echo $HOME` in the box failed: {home.stderr.strip()}")
    if not version.ok:
        raise ReplayError(f"the box's daemon does not answer `docker version`: {version.stderr.strip()}")
    return BoxFacts(home=home.stdout.strip(), docker_version=version.stdout.strip(),
                    platform=dict(shell.state.platform))


def _pem_set(workdir: Path) -> dict[str, str]:
    """A real CA and a server certificate and key signed by it (openssl), as Coolify's SslHelper makes them."""
    def ossl(*args: str) -> None:
        proc = subprocess.run(["openssl", *args], cwd=workdir, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise ReplayError(f"openssl {args[0]} failed: {proc.stderr.strip()}")

    ossl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key")
    ossl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=Coolify CA", "-days", "30", "-out", "ca.crt")
    ossl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "server.key")
    ossl("req", "-new", "-key", "server.key", "-subj", "/CN=db", "-out", "server.csr")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "30",
         "-out", "server.crt")
    crt, key = (workdir / "server.crt").read_text(), (workdir / "server.key").read_text()
    return {"ca_crt_pem": (workdir / "ca.crt").read_text(), "server_crt_pem": crt, "server_key_pem": key,
            "server_pem": crt + key}


def fresh_values(data: ReplayData, op_ids: Iterable[str], facts: BoxFacts | None = None,
                 now: dt.datetime | None = None) -> dict[str, str]:
    """Values for rendering `op_ids` together: examples, with every uuid, id and timestamp new.

    Shared between the operations (a backup's prerequisite database gets the same db_uuid). Values that
    Coolify derives from each other are derived the same way (container_name from app_uuid, built_image
    from app_uuid and git_commit).
    """
    names: set[str] = set()
    for op_id in op_ids:
        names |= set(data.required_placeholders(op_id))
    values = {n: data.placeholders[n].example for n in names}
    now = now or dt.datetime.now()
    earlier = now - dt.timedelta(hours=1)
    for name in names:
        if data.placeholders[name].pattern == UUID_PATTERN:
            values[name] = new_uuid()
        elif name in ("app_id", "db_id"):
            values[name] = str(100_000 + secrets.randbelow(900_000_000))
    app_uuid = values.get("app_uuid", new_uuid())
    service = values.get("compose_service", "web")
    derived = {
        "container_name": f"{app_uuid}-{now:%H%M%S%f}",
        "old_container_name": f"{app_uuid}-{earlier:%H%M%S%f}",
        "old_compose_container_name": f"{service}-{app_uuid}-{earlier:%H%M%S%f}",
        "built_image": f"{app_uuid}:{values.get('git_commit', data.placeholders['git_commit'].example)}",
        "backup_timestamp": str(int(now.timestamp())),
        "updated_at": f"{now:%Y-%m-%d %H:%M:%S}",
    }
    values.update({k: v for k, v in derived.items() if k in names})
    if facts is not None:
        if "home" in names:
            values["home"] = facts.home
        if "stop_time_option" in names:
            values["stop_time_option"] = facts.stop_time_option
        for name, entry in PINNED_PLACEHOLDERS.items():
            if name in names and facts.platform.get(entry):
                values[name] = facts.platform[entry]
    if names & {"ca_crt_pem", "server_crt_pem", "server_key_pem", "server_pem"}:
        with tempfile.TemporaryDirectory(prefix="inkmcp-replay-pem-") as tmp:
            values.update({k: v for k, v in _pem_set(Path(tmp)).items() if k in names})
    return values


def parse_sets(items: Iterable[str]) -> dict[str, str]:
    """`--set name=value` items as a mapping; a malformed item names itself and the form to use."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ReplayError(f"--set {item!r}: write NAME=VALUE, e.g. --set network=coolify")
        out[name] = value
    return out


# ------------------------------------------------------------------------------------------ observing


class SelectorRecords:
    """Which runtime the selector recorded per container id, watched while a step runs.

    The selector writes `<state_dir>/<hash>/<container id>` (content: runc or runsc) at create and deletes it
    when the container is deleted, so a `--rm` one-off is visible only while it exists: a short poll loop
    (an observation, not a synchronisation) keeps every record it saw.
    """

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs
        self.seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _scan(self) -> None:
        for d in self.dirs:
            with contextlib.suppress(OSError):
                for sub in os.scandir(d):
                    if not sub.is_dir():
                        continue
                    with contextlib.suppress(OSError):
                        for f in os.scandir(sub.path):
                            if re.fullmatch(r"[0-9a-f]{64}", f.name) and f.name not in self.seen:
                                with contextlib.suppress(OSError):
                                    self.seen[f.name] = Path(f.path).read_text().strip()

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            self._scan()

    def __enter__(self) -> SelectorRecords:
        self._scan()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._scan()


class Event(BaseModel):
    type: str
    action: str
    id: str
    name: str
    image: str = ""
    exit_code: str | None = None


def step_events(shell: BoxShell, since: float, until: float) -> list[Event]:
    """The daemon's container/network/volume events between two instants (its in-memory event log).

    One step makes far fewer than the 256 events the daemon keeps, so a query right after each step sees
    every container it created, including `--rm` one-offs that are already gone.
    """
    got = shell.docker("events", "--since", f"{since:.6f}", "--until", f"{until:.6f}", "--format", "{{json .}}",
                       "--filter", "type=container", "--filter", "type=network", "--filter", "type=volume",
                       timeout=60)
    events: list[Event] = []
    for line in got.stdout.splitlines():
        with contextlib.suppress(ValueError):
            raw = json.loads(line)
            attrs = (raw.get("Actor") or {}).get("Attributes") or {}
            events.append(Event(type=raw.get("Type", ""), action=str(raw.get("Action", "")).split(":")[0],
                                id=(raw.get("Actor") or {}).get("ID", ""), name=attrs.get("name", ""),
                                image=attrs.get("image", ""), exit_code=attrs.get("exitCode")))
    return events


def name_regex(declared: str) -> re.Pattern[str]:
    """A declared container name as a regex: `<12 hex>`, `<random docker name>` stand for what Docker picks."""
    parts = re.split(r"(<[^<>]+>)", declared)
    return re.compile("".join(r"[a-z0-9_.-]+" if p.startswith("<") else re.escape(p) for p in parts))


def selector_refusal(text: str) -> str | None:
    m = SELECTOR_MESSAGE.search(text)
    return m.group(1).strip() if m else None


def _tail(text: str, n: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= n else "…" + text[-n:]


def classify(shell: BoxShell, op: str, c: Container, step: StepRun | None, created: list[Event],
             records: Mapping[str, str]) -> ContainerRow:
    """Where container `c` ended up after the step that creates it (see the module docstring's classes)."""
    row = {"op": op, "container": c.name, "role": c.role}
    if step is None:
        return ContainerRow(**row, klass="not_reached", evidence="an earlier step failed; Coolify stops there")
    rx = name_regex(c.name)
    mine = [e for e in created if rx.fullmatch(e.name)]
    if "<random" in c.name:
        mine = [e for e in mine if e.image == c.image] or mine
    candidates = [e.id for e in mine] or [c.name]  # not created in this step: it may have been there before
    for ref in candidates:
        inspected = shell.docker("inspect", "--format", "{{json .}}", ref, timeout=30)
        if not inspected.ok:
            continue
        info = json.loads(inspected.stdout)
        name = str(info.get("Name", "")).lstrip("/")
        runtime = (info.get("HostConfig") or {}).get("Runtime")
        state = info.get("State") or {}
        recorded = records.get(info.get("Id", ""))
        if state.get("Running"):
            return _probe_running(shell, row, info["Id"], name, runtime, recorded)
        error = str(state.get("Error") or "")
        refusal = selector_refusal(error)
        if refusal:
            return ContainerRow(**row, klass="refused", evidence=f"inkmcp-runtime: {refusal}", docker_name=name,
                                runtime=runtime)
        if state.get("Status") == "exited" and recorded:
            return _from_record(row, name, runtime, recorded, f"exited {state.get('ExitCode')}")
        return ContainerRow(**row, klass="failed", docker_name=name, runtime=runtime,
                            evidence=f"state {state.get('Status')} exit {state.get('ExitCode')}: "
                                     f"{_tail(error) or _tail(step.stderr)}")
    # Gone (auto-removed) or never created.
    refusal = selector_refusal(step.stderr) or selector_refusal(step.stdout)
    if mine:
        ev = mine[0]
        if ev.id in records:
            died = next((e.exit_code for e in created if e.id == ev.id and e.action == "die"), None)
            return _from_record(row, ev.name, None, records[ev.id], f"exited {died}, removed (--rm) before a probe")
        if refusal:
            return ContainerRow(**row, klass="refused", evidence=f"inkmcp-runtime: {refusal}", docker_name=ev.name)
        started = any(e.id == ev.id and e.action == "start" for e in created)
        if started:
            died = next((e.exit_code for e in created if e.id == ev.id and e.action == "die"), None)
            return ContainerRow(**row, klass="ran", docker_name=ev.name,
                                evidence=f"started, exited {died}, removed (--rm); the selector left no record")
        return ContainerRow(**row, klass="failed", docker_name=ev.name,
                            evidence=f"created, never started, removed: {_tail(step.stderr)}")
    if refusal:
        return ContainerRow(**row, klass="refused", evidence=f"inkmcp-runtime: {refusal}")
    return ContainerRow(**row, klass="failed",
                        evidence=f"step {step.id} exit {step.exit_code} created no such container: "
                                 f"{_tail(step.stderr)}")


def _from_record(row: dict, name: str, runtime: str | None, recorded: str, how: str) -> ContainerRow:
    klass: ContainerClass = "sandboxed" if recorded == "runsc" else "platform" if recorded == "runc" else "ran"
    return ContainerRow(**row, klass=klass, docker_name=name, runtime=runtime,
                        evidence=f"selector recorded {recorded}; {how}")


def _probe_running(shell: BoxShell, row: dict, cid: str, name: str, runtime: str | None,
                   recorded: str | None) -> ContainerRow:
    probe = shell.docker("exec", cid, "uname", "-r", timeout=PROBE_TIMEOUT)
    kernel = probe.stdout.strip() if probe.ok else None
    also = f"; selector recorded {recorded}" if recorded else ""
    if kernel == GVISOR_KERNEL:
        return ContainerRow(**row, klass="sandboxed", docker_name=name, kernel=kernel, runtime=runtime,
                            evidence=f"running; uname -r inside: {kernel} (gVisor){also}")
    if kernel == HOST_KERNEL:
        return ContainerRow(**row, klass="platform", docker_name=name, kernel=kernel, runtime=runtime,
                            evidence=f"running; uname -r inside: {kernel} (host kernel){also}")
    if recorded:
        how = f"running, uname -r inside failed: {_tail(probe.stderr, 200)}"
        return _from_record(row, name, runtime, recorded, how)
    return ContainerRow(**row, klass="ran", docker_name=name, kernel=kernel, runtime=runtime,
                        evidence=f"running; uname -r inside gave {kernel!r}: {_tail(probe.stderr, 200)}")


# ------------------------------------------------------------------------------------------ running


def _mentions(command: str, containers: list[Container]) -> list[int]:
    return [i for i, c in enumerate(containers) if "<" not in c.name and re.search(
        rf"(?<![A-Za-z0-9_.-]){re.escape(c.name)}(?![A-Za-z0-9_.-])", command)]


def check_expectation(shell: BoxShell, e: Expectation, *, poll: bool) -> Check:
    """Run an expectation's command in the box; with `poll`, until its output matches or the deadline."""
    if e.when:
        return Check(what=e.what, ok=None, detail=f"not applicable: only when {e.when}")
    if not e.command:
        return Check(what=e.what, ok=None, detail="descriptive (no command); covered by the steps' exit codes")
    deadline = time.monotonic() + (EXPECT_DEADLINE if poll else 0)
    while True:
        got = shell.bash_se(e.command, timeout=60)
        matched = got.ok and (e.output is None or re.search(e.output, got.stdout) is not None)
        if matched or time.monotonic() >= deadline:
            shown = _tail(got.stdout, 200) if got.ok else f"exit {got.exit_code}: {_tail(got.stderr, 200)}"
            want = f" (want /{e.output}/)" if e.output else ""
            return Check(what=e.what, ok=matched, detail=f"$ {e.command}\n{shown}{want}")
        time.sleep(1.0)


class _Run:
    """One operation's run: its steps, observations and what it created (for the cleanup)."""

    def __init__(self, shell: BoxShell, data: ReplayData, rendered: RenderedOperation) -> None:
        self.shell = shell
        self.data = data
        self.r = rendered
        self.steps: list[StepRun] = []
        self.rows: list[ContainerRow] = []
        self.files: list[Check] = []
        self.expectations: list[Check] = []
        self.created: list[Event] = []

    def go(self) -> str | None:
        """Run every step; the id of the step that failed (and stopped the operation), else None."""
        r = self.r
        created_by = {i: c.created_by for i, c in enumerate(r.containers)}
        helper = next((c.name for c in r.containers if c.role == "deploy_helper"), None)
        # Each expectation runs once the last container its command names has been created.
        due: dict[str, list[Expectation]] = {}
        at_end: list[Expectation] = []
        for e in r.expect:
            named = _mentions(e.command or "", r.containers)
            if named and not e.when:
                due.setdefault(created_by[max(named, key=lambda i: self._index(created_by[i]))], []).append(e)
            else:
                at_end.append(e)
        failed: str | None = None
        for step in r.steps:
            since = time.time()
            with SelectorRecords(self.shell.selector_state_dirs()) as records:
                res = self.shell.run(step)
            events = step_events(self.shell, since, time.time())
            self.created += [e for e in events if e.action == "create"]
            run = StepRun(id=step.id, transport=step.transport, ignore_errors=step.ignore_errors,
                          exit_code=res.exit_code, seconds=res.seconds, stdout=_tail(res.stdout, 4000),
                          stderr=_tail(res.stderr, 4000))
            self.steps.append(run)
            container_events = [e for e in events if e.type == "container"]
            for c in r.containers:
                if c.created_by == step.id:
                    self.rows.append(classify(self.shell, r.id, c, run, container_events, records.seen))
            for f in r.files:
                if f.written_by == step.id:
                    self.files.append(self._check_file(f.path, f.location, f.content, helper, run))
            for e in due.get(step.id, []):
                klasses = {row.klass for row in self.rows if row.container in (e.command or "")}
                self.expectations.append(check_expectation(self.shell, e, poll=klasses <= {"platform", "sandboxed"}))
            if not run.ok and not step.ignore_errors:
                failed = step.id
                break
        ran = {s.id for s in self.steps}
        for c in r.containers:
            if c.created_by not in ran:
                self.rows.append(classify(self.shell, r.id, c, None, [], {}))
        for e in at_end:
            if failed and e.command:
                self.expectations.append(Check(what=e.what, ok=False, detail=f"not run: step {failed} failed"))
            else:  # names no container of the operation: nothing to wait for
                self.expectations.append(check_expectation(self.shell, e, poll=False))
        for f in r.files:
            if f.written_by not in ran:
                self.files.append(Check(what=f"file {f.path}", ok=False, detail="not written: an earlier step failed"))
        return failed

    def _index(self, step_id: str) -> int:
        return next(i for i, s in enumerate(self.r.steps) if s.id == step_id)

    def _check_file(self, path: str, location: str, content: str, helper: str | None, step: StepRun) -> Check:
        what = f"file {path} ({location})"
        if not step.ok and not step.ignore_errors:
            return Check(what=what, ok=False, detail=f"step {step.id} failed (exit {step.exit_code})")
        if location == "helper":
            if helper is None:
                return Check(what=what, ok=False, detail="no helper container in this operation")
            got = self.shell.docker("exec", helper, "cat", "--", path, timeout=30)
            actual = got.stdout if got.ok else None
        else:
            actual = self.shell.read_file(path)
        if actual is None:
            return Check(what=what, ok=False, detail="missing after the step that writes it")
        if actual != content:
            return Check(what=what, ok=False, detail=f"differs from the rendered content ({len(actual)} vs "
                                                     f"{len(content)} bytes)")
        return Check(what=what, ok=True, detail=f"{len(content)} bytes as rendered")


def _resource_dirs(values: Mapping[str, str]) -> list[str]:
    """The per-resource directories an operation writes under /data/coolify (fresh uuids: safe to remove)."""
    out = []
    for key, base in (("app_uuid", "/data/coolify/applications"), ("db_uuid", "/data/coolify/databases")):
        if re.fullmatch(UUID_PATTERN, values.get(key, "")):
            out.append(f"{base}/{values[key]}")
    if re.fullmatch(UUID_PATTERN, values.get("db_uuid", "")) and values.get("team_dir") and values.get("db_name_slug"):
        out.append(f"/data/coolify/backups/databases/{values['team_dir']}/{values['db_name_slug']}-{values['db_uuid']}")
    return out


def cleanup(shell: BoxShell, created: list[Event], values: Mapping[str, str], extra_images: list[str]) -> list[str]:
    """Remove what a run created: containers, networks but `coolify`, volumes, image tags, resource dirs."""
    done: list[str] = []
    containers = list(dict.fromkeys(e.id for e in created if e.type == "container"))
    if containers:
        alive = [cid for cid in containers if shell.docker("inspect", "--format", "{{.Id}}", cid, timeout=30).ok]
        if alive:
            rm = shell.docker("rm", "-f", "-v", *alive, timeout=180)
            done.append(f"docker rm -f {len(alive)} container(s)" + ("" if rm.ok else f": {_tail(rm.stderr, 300)}"))
    networks = list(dict.fromkeys(e.name or e.id for e in created
                                  if e.type == "network" and e.name not in KEEP_NETWORKS))
    for net in networks:
        if shell.docker("network", "rm", net, timeout=60).ok:
            done.append(f"docker network rm {net}")
    volumes = list(dict.fromkeys(e.id for e in created if e.type == "volume"))
    for vol in volumes:
        if shell.docker("volume", "rm", "-f", vol, timeout=60).ok:
            done.append(f"docker volume rm {vol}")
    for image in extra_images:
        if shell.docker("rmi", image, timeout=60).ok:
            done.append(f"docker rmi {image}")
    dirs = _resource_dirs(values)
    if dirs:
        shell.bash_se("rm -rf -- " + " ".join(shlex.quote(d) for d in dirs), timeout=60)
        done.append("removed " + ", ".join(dirs))
    return done


class _Node:
    """Node state an operation assumes before Coolify runs it; undone after the run."""

    def __init__(self, shell: BoxShell, facts: BoxFacts) -> None:
        self.shell = shell
        self.facts = facts
        self._undo: list[str] = []  # box commands that put the node back, run last-first
        self.images: list[str] = []

    def prepare(self, data: ReplayData, op_id: str, values: Mapping[str, str]) -> None:
        op = data.operation(op_id)
        if op.origin == "inkmcp":
            # Our muscle steps run before Coolify has touched the node, and create the `coolify` network themselves
            # (with the vSwitch MTU): remove an unused one so they do here too (in use: rm fails, the step keeps it
            # and the operation's expectations show what it got).
            self.shell.bash_se("docker network rm coolify >/dev/null 2>&1 || true", timeout=60)
        else:
            # The destination network (server_validate / the muscle stack create it; both are idempotent).
            self.shell.bash_se("docker network inspect coolify >/dev/null 2>&1 || "
                               "docker network create coolify --attachable >/dev/null", timeout=60)
        # ~/.docker/config.json: present when the operation's helper binds it, absent for the variant without.
        step_ids = {s.id for s in data.steps(op_id)}
        wants_config = any(b.source.endswith("/.docker/config.json") for c in op.containers for b in c.binds)
        if wants_config:
            self._docker_config(present=True)
        elif "helper.docker_config" in step_ids:
            self._docker_config(present=False)
        if "built_image" in values and any(s.id == "restart.image_present" for s in data.steps(op_id)):
            self._tag(values.get("app_image", data.placeholders["app_image"].example), values["built_image"])

    def _docker_config(self, present: bool) -> None:
        path = f"{self.facts.home}/.docker/config.json"
        q = shlex.quote(path)
        had = self.shell.bash_se(f"cat -- {q}", timeout=30)
        if present and not had.ok:
            self.shell.bash_se(f"mkdir -p {shlex.quote(self.facts.home + '/.docker')} && echo '{{}}' > {q}", timeout=30)
            self._undo.append(f"rm -f -- {q}")
        elif not present and had.ok:
            self.shell.bash_se(f"mv -f -- {q} {q}.inkmcp-replay", timeout=30)
            self._undo.append(f"mv -f -- {q}.inkmcp-replay {q}")

    def push_to_registry(self, values: dict[str, str]) -> None:
        """The image a build server pushed (`<registry>/<name>:<sha>`), in the box's registry and not in its
        image store, so the run server's `compose up --pull always` really pulls it."""
        registry = getattr(self.shell.state, "registry", None)
        if not registry:
            return
        source = values.get("app_image", "nginx:1.27-alpine")
        commit = values.get("git_commit", "0" * 40)
        target = f"{registry}/{values.get('project_name', 'tenant')}/{values.get('app_name', 'app')}:{commit}"
        if not self.shell.docker("image", "inspect", source, timeout=30).ok:
            self.shell.docker("pull", source, timeout=300)
        self.shell.docker("tag", source, target, timeout=30)
        pushed = self.shell.docker("push", target, timeout=300)
        self.shell.docker("rmi", target, timeout=60)
        if pushed.ok:
            values["registry_image"] = target
            self.images.append(target)

    def _tag(self, source: str, target: str) -> None:
        """An image an earlier deployment built (`<app uuid>:<sha>`): the restart finds it locally."""
        if not self.shell.docker("image", "inspect", source, timeout=30).ok:
            self.shell.docker("pull", source, timeout=300)
        if self.shell.docker("tag", source, target, timeout=30).ok:
            self.images.append(target)

    def restore(self) -> None:
        while self._undo:
            self.shell.bash_se(self._undo.pop(), timeout=30)


def _no_container_row(op: str, failed: str | None, checks: list[Check]) -> ContainerRow:
    checked = [c for c in checks if c.ok is not None]
    bad = [c.what for c in checked if not c.ok]
    evidence = "no container; steps " + ("ok" if failed is None else f"failed at {failed}")
    evidence += f"; {len(checked) - len(bad)}/{len(checked)} checks ok"
    if bad:
        evidence += f" (failed: {'; '.join(bad)})"
    return ContainerRow(op=op, container="-", role="-", klass="no_container", evidence=evidence)


def run_operation(box: Path | BoxShell, op_id: str, values: Mapping[str, str] | None = None, *,
                  data: ReplayData | None = None, prerequisites: bool = True) -> ReplayResult:
    """Run one Coolify operation against the box the way Coolify would; classify its containers.

    `values` override the fresh ones (see `fresh_values`); unknown or malformed names are refused by
    `ReplayData.render` with the placeholder's name and an example. With `prerequisites`, the operations
    of `PREREQUISITES[op_id]` run first with the same values (their results are nested in the result).
    An operation that reaches a git host or S3 gets the stand-ins of `replay_standins.Uplink` unless
    `values` name other endpoints. Everything the run created is removed afterwards.
    """
    shell = BoxShell(box) if isinstance(box, Path | str) else box
    data = data or load_replay()
    data.operation(op_id)  # unknown id: ReplayError naming the known ones
    chain = [*(PREREQUISITES.get(op_id, ()) if prerequisites else ()), op_id]
    unknown = sorted(set(values or {}) - set(data.placeholders))
    if unknown:
        raise ReplayError(f"--set {', '.join(unknown)}: no such placeholder; this data declares: "
                          f"{', '.join(sorted(data.placeholders))}")
    facts = box_facts(shell)
    merged = fresh_values(data, chain, facts)
    merged.update(values or {})
    needed = {n for one in chain for n in data.required_placeholders(one)}
    node = _Node(shell, facts)
    created: list[Event] = []
    results: list[ReplayResult] = []
    uplink: Uplink | None = None
    try:
        if needed & UPLINK_PLACEHOLDERS and not (values or {}).keys() & UPLINK_PLACEHOLDERS:
            uplink = _start_uplink(shell, merged, needed)
        if "registry_image" in needed and "registry_image" not in (values or {}):
            node.push_to_registry(merged)
        for one in chain:
            started = time.monotonic()
            rendered = data.render(one, {k: v for k, v in merged.items() if k in data.required_placeholders(one)})
            node.prepare(data, one, rendered.values)
            run = _Run(shell, data, rendered)
            failed = run.go()
            if uplink is not None and "s3_endpoint" in data.required_placeholders(one):
                run.expectations.append(_uploaded(shell, uplink, failed))
            created += run.created
            checks_ok = all(c.ok is not False for c in run.files + run.expectations)
            results.append(ReplayResult(
                op=one, ok=failed is None and checks_ok, seconds=round(time.monotonic() - started, 1),
                values={k: v for k, v in rendered.values.items() if not k.endswith("_b64")},
                steps=run.steps, failed_step=failed,
                containers=run.rows or [_no_container_row(one, failed, run.files + run.expectations)],
                files=run.files, expectations=run.expectations, cleanup=[]))
    finally:
        done = cleanup(shell, created, merged, node.images)
        node.restore()
        if uplink is not None:
            uplink.stop()
            shutil.rmtree(uplink.workdir, ignore_errors=True)
            done.append(f"stopped the git/S3 stand-ins ({uplink.netns})")
    main = results[-1]
    main.prerequisites = results[:-1]
    main.cleanup = done
    main.seconds = round(sum(r.seconds for r in results), 1)
    return main


UPLINK_PLACEHOLDERS = {"git_repository_url", "git_commit", "s3_endpoint", "s3_resolve"}


def _start_uplink(shell: BoxShell, values: dict[str, str], needed: set[str]) -> Uplink:
    """The git host and S3 stand-ins for this run; fills the values that point at them (and what Coolify
    derives from the repository: the commit, the image tag a restart looks for)."""
    workdir = Path(tempfile.mkdtemp(prefix="replay-uplink-", dir=shell.box))
    uplink = Uplink(shell.state.netns, workdir, values.get("s3_key", "replay"), values.get("s3_secret", "replay"),
                    values.get("s3_bucket", "replay")).start()
    if "git_repository_url" in needed:
        project, app = values.get("project_name", "tenant"), values.get("app_name", "app")
        service = values.get("compose_service", "web")
        image = values.get("compose_service_image", "nginx:1.27-alpine")
        compose = f"services:\n  {service}:\n    image: '{image}'\n"
        branch = values.get("git_branch", "main")
        sha = make_repository(uplink.git_root, f"{project}/{app}.git", {"docker-compose.yaml": compose}, branch)
        values["git_repository_url"] = f"{uplink.git_base}/{project}/{app}.git"
        values["git_commit"] = sha
        if "app_uuid" in values:
            values["built_image"] = f"{values['app_uuid']}:{sha}"
    if "s3_endpoint" in needed:
        values["s3_endpoint"] = uplink.s3_endpoint
        values["s3_resolve"] = uplink.s3_resolve
    return uplink


def _uploaded(shell: BoxShell, uplink: Uplink, failed: str | None) -> Check:
    """The object store received the node's dump, byte for byte (the upload is what a backup is for)."""
    what = "the S3 stand-in holds the uploaded dump, identical to the file on the node (signature checked)"
    objects = uplink.objects()
    if not objects:
        return Check(what=what, ok=False, detail=f"nothing was uploaded{f' (step {failed} failed)' if failed else ''}")
    details, ok = [], True
    for key, content in objects.items():
        path = "/" + key.split("/", 1)[1]
        got = shell.bash_se(f"sha256sum -- {shlex.quote(path)}", timeout=30)
        on_node = got.stdout.split()[0] if got.ok and got.stdout else None
        same = on_node == hashlib.sha256(content).hexdigest()
        ok = ok and same
        details.append(f"{key}: {len(content)} bytes, {'same as' if same else 'DIFFERS from'} {path} on the node")
    return Check(what=what, ok=ok, detail="; ".join(details))


def run_many(box: Path, op_ids: Iterable[str], values: Mapping[str, str] | None = None, *,
             data: ReplayData | None = None, on_result: Callable[[ReplayResult], None] | None = None
             ) -> list[ReplayResult]:
    """`run_operation` for each id in order (each with its own fresh values and cleanup)."""
    shell = BoxShell(box)
    data = data or load_replay()
    out = []
    for op_id in op_ids:
        result = run_operation(shell, op_id, values, data=data)
        out.append(result)
        if on_result is not None:
            on_result(result)
    return out


def matrix(results: Iterable[ReplayResult]) -> list[ContainerRow]:
    return [row for r in results for row in r.containers]


def format_matrix(rows: list[ContainerRow], width: int = 90) -> str:
    """The matrix as a plain-text table (op, container, class, evidence), one row per container."""
    header = ("op", "container", "class", "evidence")
    lines = [(r.op, f"{r.docker_name or r.container} ({r.role})", r.klass, r.evidence.replace("\n", " ")) for r in rows]
    w0 = max(len(header[0]), *(len(x[0]) for x in lines)) if lines else len(header[0])
    w1 = min(48, max(len(header[1]), *(len(x[1]) for x in lines))) if lines else len(header[1])
    w2 = max(len(header[2]), *(len(x[2]) for x in lines)) if lines else len(header[2])
    out = [f"{header[0]:<{w0}}  {header[1]:<{w1}}  {header[2]:<{w2}}  {header[3]}"]
    for op, cont, klass, ev in lines:
        ev = ev if len(ev) <= width else ev[: width - 1] + "…"
        cont = cont if len(cont) <= w1 else cont[: w1 - 1] + "…"
        out.append(f"{op:<{w0}}  {cont:<{w1}}  {klass:<{w2}}  {ev}")
    return "\n".join(out)
