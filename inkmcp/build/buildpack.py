"""Executing a BuildPlan the way a buildpack would: install dependencies, then run the build.

Isolation rules, because the code being built is untrusted tenant code:
- every subprocess starts from a minimal environment (PATH, HOME, LANG) plus the service's own
  env; InkMCP's environment (database URLs, API tokens) is never inherited;
- with `run_as`, every subprocess runs as the tenant's uid/gid with no supplementary groups;
- Python builds use a system interpreter (the operator's `python`, or the version the repo asks for
  when the server has it: inkmcp.build.python_install), never InkMCP's own venv, so a build cannot
  see or modify InkMCP's packages;
- every subprocess gets its own session, and the whole process group is killed on timeout.

Python virtualenvs are keyed by a hash of the dependency files and reused across builds and
deployments while the dependencies stay the same: that turns the common redeploy (code changed,
requirements did not) from a full install into a directory check. A marker file written
last makes a half-built venv (crash, timeout) never count as reusable.

Installer: uv (`uv venv` + `uv pip install`), the binary pinned with InkMCP itself (it installs
InkMCP too). `python3 -m venv` took 11-14 s on a loaded 2-core machine where `uv venv` takes
~0.1 s, and uv links wheels from its cache instead of downloading them on every build. What apps
rely on from pip stays: `-r requirements.txt` (with its `-c`/`-e`/`--index-url` lines), PEP 621
dependencies, `pip install .` for other pyproject/setup.py projects, `pip` itself inside the venv
(seeded from the interpreter's own bundled wheel, offline, like `python -m venv`), and the common
PIP_* settings of the service env (index URLs, find-links, no-index, trusted hosts, constraints,
pre-releases), which are translated to uv's. One difference is kept on purpose: with several
indexes uv takes a package from the first index that has it (pip mixes versions from all of them,
the dependency-confusion hole); UV_INDEX_STRATEGY=unsafe-best-match in the service env restores
pip's behaviour.

Lock files (Pipfile.lock, poetry.lock, uv.lock) are installed exactly, without their tools, and a
build_command that runs an installer replaces this step: inkmcp.build.python_install says which file
wins, how each is read, and the rule. A failed install, build command or collectstatic quotes the
installer's error or the Python exception it died with, with advice that answers it.

Download caches (uv's, npm's, corepack's) live in `cache_dir`: the local provider passes the
project's own `projects/<pid>/cache/` (tenant 0700 under a root dir), never a cache shared between
projects, because whatever sits in a cache is installed into the next build that hits it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import fnmatch
import hashlib
import os
import re
import shutil
import signal
import ssl
import stat
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

from pydantic import BaseModel, Field

from inkmcp.build import node_install
from inkmcp.build import python_install as pyi
from inkmcp.build.node_install import (  # noqa: F401 (node_install_command, _node_tool: re-exported, tests use them)
    _node_tool,
    node_install_command,
    prepare_node,
)
from inkmcp.build.plan import BuildPlan, RunAs, Stack
from inkmcp.build.process import (
    ExitAwareProtocol,
    TenantSandbox,
    close_pipes,
    kill_process_group,
    spawn,
    tenant_line,
    write_pid_file,
)
from inkmcp.errors import BuildFailed, ProviderError
from inkmcp.safefs import list_beneath, read_beneath

LogSink = Callable[[str], Awaitable[None]]
"""Receives each output line of the build (without the newline), as it is produced."""

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
_DEP_FILES = (
    "requirements.txt",
    "pyproject.toml",
    "poetry.lock",
    "uv.lock",
    "Pipfile.lock",
    "setup.py",
    "setup.cfg",
    "constraints.txt",
)
_MAX_LINE = 8192
# How long the output of a step that exited may go on before what holds it open is stopped (see _Runner._follow).
LEFTOVER_GRACE_SECONDS = 3.0
# --- newuser3: a build step still running after this long is announced to the caller's progress (`on_step`): an
# agent's deploy_app showed "building: building" and then nothing for the 40-60 s of an npm install and a tsc build
STEP_PROGRESS_AFTER = 2.0
# --- end


class BuildOutput(BaseModel):
    """What the runtime needs from the build."""

    env: dict[str, str] = Field(
        default_factory=dict,
        description="env additions for the service's processes (PATH with the venv first, VIRTUAL_ENV)",
    )
    reused_venv: bool = Field(default=False, description="true when an existing virtualenv was reused")
    venv_dir: str | None = Field(default=None, description="virtualenv used by a Python service")


class _Announcement:
    """--- newuser3: a step's `what` told to `on_step` once the step has run for STEP_PROGRESS_AFTER seconds, so the
    deployment's progress (and history) names the long steps (`npm ci`, the build command) and only those: a fast
    build adds nothing. `settle` at the step's end drops an announcement not yet begun and lets one under way finish
    (it records the step: cut off mid-write, it would leave the caller's record half done)."""

    def __init__(self, on_step: LogSink, what: str) -> None:
        self.begun = False
        self.task = asyncio.create_task(self._later(on_step, what))

    async def _later(self, on_step: LogSink, what: str) -> None:
        await asyncio.sleep(STEP_PROGRESS_AFTER)
        self.begun = True
        await on_step(what)

    async def settle(self) -> None:
        if not self.begun:
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class _Runner:
    """Runs build steps with one environment, sandbox, log sink and time budget.

    Every step starts through `inkmcp.build.process.spawn` in `sandbox`: as the tenant, in the
    service's cgroup (its memory, CPU and pids limits), with the service's private /tmp. A step that
    fails because a limit bit (OOM kill, refused fork) fails with an error naming that limit.
    """

    def __init__(self, app_dir: Path, env: dict[str, str], log: LogSink, run_as: RunAs | None, timeout: float,
                 pid_dir: Path | None = None, sandbox: TenantSandbox | None = None,
                 on_step: LogSink | None = None) -> None:  # fmt: skip
        self.app_dir = app_dir
        self.on_step = on_step  # --- newuser3: told each step (its `what`) still running after STEP_PROGRESS_AFTER
        self.pid_dir = pid_dir
        self.env = env
        self.log = log
        self.run_as = run_as
        self.sandbox = sandbox or TenantSandbox(run_as=run_as)
        if self.sandbox.run_as != run_as:
            raise ValueError("the sandbox runs as another user than run_as")
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    async def run(self, argv: list[str], *, what: str, argument: str, fix: str, cwd: Path | None = None,
                  shown: str | None = None) -> None:  # fmt: skip
        """Run one step, streaming merged stdout/stderr lines to the log; raise BuildFailed on failure.

        `shown` replaces the command line in the log (for argv that carries data, not a command to read).
        """
        await self.log(f"$ {shown or (' '.join(argv) if argv[:2] != ['/bin/sh', '-c'] else argv[2])}")
        announce = _Announcement(self.on_step, what) if self.on_step is not None else None  # --- newuser3
        try:
            await self._run(argv, what=what, argument=argument, fix=fix, cwd=cwd)
        finally:
            if announce is not None:
                await announce.settle()

    async def _run(self, argv: list[str], *, what: str, argument: str, fix: str, cwd: Path | None) -> None:
        limits = self.sandbox.limits
        before = limits.snapshot() if limits is not None else None
        protocol = ExitAwareProtocol(asyncio.get_running_loop())
        proc, _ = await spawn(argv, cwd=cwd or self.app_dir, env=self.env, sandbox=self.sandbox, protocol=protocol)
        pid_file = self._record(proc.pid)
        try:
            await asyncio.wait_for(self._follow(proc, protocol, what), timeout=max(self.end - time.monotonic(), 0.01))
        except (TimeoutError, asyncio.CancelledError) as exc:
            await kill_process_group(proc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            await self.log(f"!! build timed out after {self.timeout:.0f}s during: {what}")
            raise BuildFailed(
                f"{what} did not finish within the build timeout of {self.timeout:.0f}s.",
                argument=argument,
                fix="make the build faster (fewer or prebuilt dependencies) or check that it does not "
                "wait for input or start a server",
            ) from None
        finally:
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)
        # A step's leftovers (`cmd &`, and daemons that left its process group) die with it rather than run
        # on, unowned, in the service's build cgroup.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await self._end_leftovers()
        if proc.returncode != 0:
            hit = limits.exceeded(before, "the build") if limits is not None else None
            if hit is not None:
                await self.log(f"!! {hit.message} (during: {what})")
                raise BuildFailed(f"{hit.message} (during: {what}).", argument=hit.argument, fix=hit.fix)
            raise BuildFailed(f"{what} exited with {proc.returncode}.", argument=argument, fix=fix)

    def _record(self, pid: int) -> Path | None:
        """A pid file per running step, in the format the local provider reaps at start-up: a build left
        running by a crashed InkMCP is killed (by process group) instead of running on unowned."""
        if self.pid_dir is None:
            return None
        path = self.pid_dir / f"build-{pid}.pid"
        return path if write_pid_file(path, pid) else None

    async def _follow(self, proc: asyncio.subprocess.Process, protocol: ExitAwareProtocol, what: str) -> None:
        """Forward the step's output until it exits and its output ends.

        The output pipe is shared by everything the step started: a daemon it left running (`setsid`, a
        double fork, a server started "in the background") holds it open after the step exited, and
        waiting for its end kept the deployment "building" until the build timeout. So once the step
        exited its output gets a short grace to end; then the leftovers are stopped, and the pipe is let
        go from this side if something still holds it.
        """
        pump = asyncio.create_task(self._pump(proc))
        try:
            await protocol.exited.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), LEFTOVER_GRACE_SECONDS)
            if not pump.done():
                await self.log(
                    f"!! {what} exited but left a process running in the background that still holds the build's "
                    "output (a daemon or server started by the step); InkMCP stopped it. Build steps must not start "
                    "servers: start them from the Procfile or the start command instead"
                )
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await self._end_leftovers()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(pump), LEFTOVER_GRACE_SECONDS)
                if not pump.done():  # no cgroup to empty (not root): stop reading instead
                    close_pipes(proc)
            await pump
        finally:
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        await proc.wait()

    async def _end_leftovers(self) -> None:
        """Empty the step's cgroup: what the step's process group kill cannot reach (the build cgroup holds
        only this build's steps: builds of one service are serialised)."""
        limits = self.sandbox.limits
        if limits is None:
            return
        try:
            await asyncio.to_thread(limits.end_leftovers)
        except ProviderError as exc:  # stuck in the kernel: they stay capped by the service's limits
            await self.log(f"!! {exc}")

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        """Forward output line by line; long lines (progress bars, minified code) are split, not lost."""
        assert proc.stdout is not None
        pending = b""
        while chunk := await proc.stdout.read(65536):
            pending += chunk
            *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                if line:
                    await self.log(tenant_line(line.decode(errors="replace")))
            while len(pending) > _MAX_LINE:
                await self.log(tenant_line(pending[:_MAX_LINE].decode(errors="replace")))
                pending = pending[_MAX_LINE:]
        if pending:
            await self.log(tenant_line(pending.decode(errors="replace")))

    async def shell(self, command: str, *, what: str, argument: str, fix: str) -> None:
        await self.run(["/bin/sh", "-c", command], what=what, argument=argument, fix=fix)



def _base_env(env: dict[str, str], home: str, cache_dir: Path | None) -> dict[str, str]:
    """Minimal environment + the service env; caches go where the (possibly unprivileged) user can write."""
    base = {
        "PATH": BASE_PATH,
        "HOME": home,
        "LANG": "C.UTF-8",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "PIP_PROGRESS_BAR": "off",
        "PYTHONUNBUFFERED": "1",
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "npm_config_progress": "false",
        "CI": "1",
    }
    if cache_dir is not None:
        base["npm_config_cache"] = str(cache_dir / "npm")
        base["PIP_CACHE_DIR"] = str(cache_dir / "pip")  # a `pip` run by the app's own build command
        base["UV_CACHE_DIR"] = str(cache_dir / "uv")
        base["COREPACK_HOME"] = str(cache_dir / "corepack")
        base["YARN_CACHE_FOLDER"] = str(cache_dir / "yarn")
        # pnpm 11+ reads its settings from pnpm_config_* (and ignores npm_config_store_dir); npm never reads
        # this one, so npm builds stay free of `Unknown env config "store-dir"`. pnpm 10 and older read only
        # npm_config_*: run_build adds npm_config_store_dir for a repo that uses pnpm (_pnpm_store_for_old).
        base["pnpm_config_store_dir"] = str(cache_dir / "pnpm-store")
        base["YARN_GLOBAL_FOLDER"] = str(cache_dir / "yarn-berry")
    base["COREPACK_ENABLE_DOWNLOAD_PROMPT"] = "0"
    base["COREPACK_DEFAULT_TO_LATEST"] = "0"
    # Installers trust the machine's certificate store, as Debian's pip and git do, so a CA the operator
    # added (a private index, a TLS-inspecting proxy) works for uv and corepack's downloads alike.
    base["UV_SYSTEM_CERTS"] = "1"
    if (bundle := _system_ca_bundle()) is not None:
        base["NODE_EXTRA_CA_CERTS"] = bundle
    return {**base, **env}


def _pnpm_store_for_old(repo: RepoFiles, install: list[str], build_env: dict[str, str]) -> dict[str, str]:
    """`npm_config_store_dir` for a repo that uses pnpm (its install runs pnpm, or package.json's packageManager
    names it): pnpm 10 and older take the store dir only from npm_config_* (or .npmrc), and without it a
    build's `pnpm install` would fill a store under the tenant's HOME instead of the project's cache. npm
    warns about it on every run (`Unknown env config "store-dir"`), so only a pnpm repo gets it, and a
    value from the service env wins."""
    store = build_env.get("pnpm_config_store_dir")
    if store is None or "npm_config_store_dir" in build_env:
        return {}
    manager = node_install.package_json(repo).get("packageManager")
    pnpm = any(Path(arg).name == "pnpm" for arg in install[:2])
    return {"npm_config_store_dir": store} if pnpm or str(manager).startswith("pnpm@") else {}


def _system_ca_bundle() -> str | None:
    """The machine's CA bundle file (Debian: /etc/ssl/certs/ca-certificates.crt), if there is one."""
    for candidate in (ssl.get_default_verify_paths().cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


# --- uv -----------------------------------------------------------------------------------------

UV_MISSING_FIX = (
    "the operator must install uv into the environment InkMCP runs from: `make install` does (it pins "
    "the version), or `{prefix}/bin/pip install uv`; then retry the deployment"
)


def find_uv() -> Path:
    """The uv binary installed with InkMCP (`<sys.prefix>/bin/uv`, or where the `uv` package says).

    Never a `uv` from PATH: the build installer is part of InkMCP's pinned environment, not whatever
    the machine happens to have. Raises BuildFailed saying how to install it.
    """
    candidates = [Path(sys.prefix) / "bin" / "uv"]
    with contextlib.suppress(ImportError, FileNotFoundError):
        from uv import find_uv_bin  # the PyPI package's own lookup (user/prefix schemes)

        candidates.append(Path(find_uv_bin()))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BuildFailed(
        f"the build server has no uv installer (looked for {', '.join(map(str, dict.fromkeys(candidates)))}).",
        fix=UV_MISSING_FIX.format(prefix=sys.prefix),
    )


def tenant_uv(shim_dir: Path, uv: Path) -> Path:
    """A copy of `uv` in `shim_dir` (root 0755) that tenant users can execute but not change.

    InkMCP's own install dir may not be traversable by tenant users (a 0700 home, /root), and a
    tenant must never run a binary some other user can swap, so builds run this root-owned copy.
    It is replaced (atomically) when InkMCP's uv changes size or mtime (an upgrade).
    """
    shim_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = shim_dir / "uv"
    src = uv.stat()
    with contextlib.suppress(FileNotFoundError):
        st = target.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (src.st_size, src.st_mtime_ns):
            return target
    tmp = shim_dir / f".uv.{os.getpid()}.{time.monotonic_ns()}.tmp"
    try:
        shutil.copy2(uv, tmp, follow_symlinks=True)
        os.chmod(tmp, 0o755)  # noqa: S103 (executable by tenant users, writable by root only)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


_TRUE = {"1", "true", "yes", "on"}


def _pip_settings_for_uv(env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """uv's equivalents of the PIP_* settings an app may have put in its service env.

    Returns (env additions, extra `uv pip install` flags). A UV_* variable set by the app wins.
    """
    out: dict[str, str] = {}
    for pip_name, uv_name in (("PIP_INDEX_URL", "UV_INDEX_URL"), ("PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL"),
                              ("PIP_TRUSTED_HOST", "UV_INSECURE_HOST"), ("PIP_CONSTRAINT", "UV_CONSTRAINT")):
        if env.get(pip_name, "").strip() and uv_name not in env:
            out[uv_name] = " ".join(env[pip_name].split())  # both take a space-separated list
    if env.get("PIP_FIND_LINKS", "").strip() and "UV_FIND_LINKS" not in env:
        out["UV_FIND_LINKS"] = ",".join(env["PIP_FIND_LINKS"].split())  # pip: spaces, uv: commas
    if env.get("PIP_PRE", "").strip().lower() in _TRUE and "UV_PRERELEASE" not in env:
        out["UV_PRERELEASE"] = "allow"
    flags = ["--no-index"] if env.get("PIP_NO_INDEX", "").strip().lower() in _TRUE else []
    return out, flags


def bundled_seed_wheels(python: str) -> list[Path]:
    """The pip (and setuptools) wheels the interpreter's own `ensurepip` would install, newest of each.

    Debian keeps them in /usr/share/python-wheels, upstream CPython in ensurepip/_bundled. Installing
    them gives the venv the `pip` that `python -m venv` gives, without any download.
    """
    resolved = Path(python).resolve()
    dirs = [Path("/usr/share/python-wheels")]
    if re.fullmatch(r"python3\.\d+", resolved.name):
        dirs.append(resolved.parent.parent / "lib" / resolved.name / "ensurepip" / "_bundled")
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    for d in dirs:
        for wheel in sorted(d.glob("*-py3-none-any.whl")) if d.is_dir() else []:
            name, _, rest = wheel.name.partition("-")
            version = tuple(int(x) for x in re.findall(r"\d+", rest.split("-")[0])[:4])
            if name in {"pip", "setuptools"} and (name not in found or version > found[name][0]):
                found[name] = (version, wheel)
    return [path for _, path in found.values()]


class RepoFiles:
    """Read access to the app's files for InkMCP itself (often root) while the tenant can still change them.

    `anchor` is the checkout root, a directory whose parents only InkMCP can write; `app_dir` lies
    beneath it. Reads never follow a symlink (to /proc/kcore or another tenant's files), and with
    `owner_uid` a file the tenant does not own (a hard link) counts as absent.
    """

    def __init__(self, app_dir: Path, anchor: Path | None = None, owner_uid: int | None = None) -> None:
        self.anchor = anchor or app_dir
        self.rel = os.path.relpath(app_dir, self.anchor)
        if self.rel.startswith(".."):
            raise ValueError(f"{app_dir} is not beneath {self.anchor}")
        self.owner_uid = owner_uid

    def read(self, name: str) -> bytes | None:
        return read_beneath(self.anchor, os.path.join(self.rel, name), owner_uid=self.owner_uid)

    def has(self, name: str) -> bool:
        return self.read(name) is not None

    def names(self, subdir: str | None = None) -> list[str]:
        return list_beneath(self.anchor, os.path.join(self.rel, subdir) if subdir else self.rel)


def dependency_hash(app_dir: Path | RepoFiles, python: str, how: str = "") -> str:
    """Key of the virtualenv: dependency files (every lock file) + interpreter + how it is installed.

    `how` names the installer and, when a build_command installs the dependencies itself, that command:
    the same files installed another way are another venv.
    """
    repo = app_dir if isinstance(app_dir, RepoFiles) else RepoFiles(app_dir)
    digest = hashlib.sha256(f"python={python}\n".encode())
    if how:
        digest.update(f"how={how}\n".encode())
    names = [*_DEP_FILES, *sorted(n for n in repo.names() if fnmatch.fnmatch(n, "requirements*.txt"))]
    for name in dict.fromkeys(names):
        data = repo.read(name)
        if data is not None:
            digest.update(f"{name}\n".encode())
            digest.update(data)
    return digest.hexdigest()[:24]


def _pyproject_dependencies(repo: RepoFiles) -> list[str] | None:
    """`[project].dependencies` of pyproject.toml, or None when it has no [project] table.

    Installing the dependency list (not the project itself) keeps the venv a pure function of the
    dependency files, so it can be shared by every commit; the app runs from its directory.
    """
    raw = repo.read("pyproject.toml")
    try:
        data = tomllib.loads(raw.decode() if raw else "")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    project = data.get("project")
    if not isinstance(project, dict):
        return None
    deps = project.get("dependencies", [])
    return [d for d in deps if isinstance(d, str)]


def _venv_complete(venv: Path, marker: Path) -> bool:
    """True when `venv` finished installing: root's marker exists and the venv is a real directory.

    The marker lives in a directory only InkMCP writes (never inside the tenant's venv), so a tenant
    cannot fake completion or turn the marker write into a write through its own symlink.
    """
    try:
        st = os.stat(venv, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and marker.is_file()


def _write_marker(marker: Path) -> None:
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("ok\n")


async def _flock(path: Path) -> int:
    """Exclusive flock without blocking the event loop; returns the fd (close it to release)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            await asyncio.sleep(0.1)


async def _write_as_tenant(runner: _Runner, path: Path, lines: list[str]) -> None:
    """Write `lines` to `path` (inside the tenant's venv) as the tenant: root never writes into a tenant's tree."""
    script = 'f=$1; shift; printf "%s\\n" "$@" > "$f"'
    await runner.run(["/bin/sh", "-c", script, "sh", str(path), *lines], what=f"writing {path.name}",
                     argument="repo_url", fix="retry the deployment",
                     shown=f"(writing {path.name} into the virtualenv: {len(lines)} lines)")  # fmt: skip


_FIX_DEPS = (
    "fix the dependency list in the repo (names, versions, local paths; the installer's (uv's) own error is in "
    "the build output: its last lines follow, get_logs(scope='build') has all of it), or pass a build_command "
    "that installs the dependencies itself (e.g. 'pip install -r requirements.txt'): a build_command that runs "
    "pip, uv, poetry or pipenv replaces this step"
)


def _dependencies_failed(exc: BuildFailed, source: str | None) -> BuildFailed:
    """`exc` saying first what failed: the app's dependencies, from which file. "uv pip install … exited with 1"
    alone names a tool, not the app's problem, and an agent took it for a fault of InkMCP or of its repo_url."""
    where = f" (from {source})" if source else ""
    return BuildFailed(f"the app's dependencies{where} did not install: {exc.message}", argument=exc.argument,
                       fix=exc.fix)  # fmt: skip


async def _install(runner: _Runner, repo: RepoFiles, installer: pyi.Installer, install: list[str],
                   venv: Path, uv: Path, cache: list[str]) -> None:  # fmt: skip
    """Fill `venv` the way `installer` says (see inkmcp.build.python_install for each)."""
    uv_env, flags = _pip_settings_for_uv(runner.env)
    saved_env = runner.env
    runner.env = {**runner.env, **uv_env}
    what = f"installing the dependencies from {installer.file}"
    reqs, cons = venv / "inkmcp-requirements.txt", venv / "inkmcp-constraints.txt"
    try:
        if installer.kind == "pip":
            await runner.run([*install, *flags, "-r", "requirements.txt"],
                             what="uv pip install -r requirements.txt", argument="repo_url", fix=_FIX_DEPS)  # fmt: skip
        elif installer.kind == "pipenv":
            locked = pyi.pipenv_install(repo)
            if locked.requirements:
                await _write_as_tenant(runner, reqs, locked.requirements)
                await runner.run([*install, *flags, *locked.flags, "-r", str(reqs)], what=what,
                                 argument="repo_url", fix=_FIX_DEPS)  # fmt: skip
        elif installer.kind == "poetry":
            locked = pyi.poetry_install(repo)
            if locked.requirements:
                await _write_as_tenant(runner, reqs, locked.requirements)
                await _write_as_tenant(runner, cons, locked.constraints)
                await runner.run([*install, *flags, *locked.flags, "-r", str(reqs), "-c", str(cons)], what=what,
                                 argument="repo_url", fix=_FIX_DEPS)  # fmt: skip
        elif installer.kind == "uv":
            await runner.run([str(uv), "export", "--frozen", "--no-default-groups", "--no-emit-project",
                              "--no-header", "--no-python-downloads", *cache, "-o", str(reqs)],
                             what="uv export --frozen (reading uv.lock)", argument="repo_url",
                             fix="run `uv lock` and commit uv.lock, or pass a build_command that installs the "
                             "dependencies itself (e.g. 'uv sync --frozen')")  # fmt: skip
            await runner.run([*install, *flags, "--no-deps", "-r", str(reqs)], what=what,
                             argument="repo_url", fix=_FIX_DEPS)  # fmt: skip
        elif installer.kind == "pyproject":
            deps = _pyproject_dependencies(repo)
            if deps:
                await runner.run([*install, *flags, *deps], what="uv pip install (pyproject dependencies)",
                                 argument="repo_url", fix=_FIX_DEPS)  # fmt: skip
        elif installer.kind == "package":
            await runner.run([*install, *flags, "."], what="uv pip install .", argument="repo_url", fix=_FIX_DEPS)
        elif installer.kind in ("poetry-unlocked", "pipenv-unlocked"):
            await runner.log(f"-> {pyi.unlocked_note(installer)}")
            locked = pyi.poetry_install(repo) if installer.kind == "poetry-unlocked" else pyi.pipfile_install(repo)
            if locked.requirements:
                await _write_as_tenant(runner, reqs, locked.requirements)
                await runner.run([*install, *flags, *locked.flags, "-r", str(reqs)], what=what, argument="repo_url",
                                 fix=_FIX_DEPS)  # fmt: skip
    finally:
        runner.env = saved_env


async def _python_deps(
    runner: _Runner, repo: RepoFiles, venv_root: Path, state_dir: Path, python: str,
    locate_uv: Callable[[], Path], cache_dir: Path | None,
    installer: pyi.Installer | None = None, replaced_by: str | None = None,
) -> tuple[Path, bool]:
    """Create or reuse the venv for this dependency set; returns (venv dir, reused).

    The venv itself is made and filled by the tenant (runner) with uv (`locate_uv`, only called when
    a venv must be built: a reused venv needs no installer); InkMCP keeps the lock and the completion
    marker in `state_dir`, a directory the tenant cannot write. With `replaced_by` (a build_command
    that installs the dependencies itself) the venv gets only pip and uv: the build command fills it
    (on every build, into the reused venv, as Render and Heroku rerun theirs).
    """
    installer = installer or pyi.choose_installer(repo)
    key = dependency_hash(repo, python, f"{installer.kind}\n{replaced_by or ''}")
    venv = venv_root / key
    marker = state_dir / f"venv-{key}.ok"
    lock_fd = await _flock(state_dir / f"venv-{key}.lock")
    try:
        if await asyncio.to_thread(_venv_complete, venv, marker):
            await runner.log(f"-> reusing virtualenv {venv.name} (dependencies unchanged)")
            return venv, True
        marker.unlink(missing_ok=True)
        if os.path.lexists(venv):  # a half-built leftover: removed with the tenant's rights, not root's
            await runner.run(["/bin/rm", "-rf", "--", str(venv)], what="removing a half-built virtualenv",
                             argument="repo_url", fix="retry the deployment")  # fmt: skip
        uv = await asyncio.to_thread(locate_uv)
        await runner.log(f"-> creating virtualenv {venv.name}")
        # The cache dir on the command line: it wins over any uv.toml / [tool.uv] the repo carries.
        cache = ["--cache-dir", str(cache_dir / "uv")] if cache_dir is not None else []
        fix_env = "the build server's Python or uv is broken; report this to the operator"
        await runner.run(
            [str(uv), "venv", "--no-python-downloads", "--python", python, *cache, str(venv)],
            what="creating the virtualenv (uv venv)", argument="repo_url", fix=fix_env,
        )  # fmt: skip
        venv_python = str(venv / "bin" / "python")
        install = [str(uv), "pip", "install", "--python", venv_python, *cache]
        if cache_dir is not None and not await asyncio.to_thread(same_mount, cache_dir, venv_root):
            # --- newuser2: uv hardlinks from its cache, which fails across mounts (as root the project's cache
            # and the service's venvs are separate mounts of its disk): it then copies anyway, after a three-line
            # "Failed to hardlink files" warning in every build log. Copying outright says nothing and costs the same.
            install.append("--link-mode=copy")
        seeds = await asyncio.to_thread(bundled_seed_wheels, python)
        if seeds:  # `pip` in the venv, as `python -m venv` gives it (build commands may call it)
            await runner.run([*install, "--offline", "--no-deps", *map(str, seeds)],
                             what="installing pip into the virtualenv", argument="repo_url", fix=fix_env)  # fmt: skip
        if replaced_by is not None:
            # `uv sync` / `uv pip install` in the build command: the pinned uv, from the venv's bin.
            await runner.run(["/bin/ln", "-sfn", "--", str(uv), str(venv / "bin" / "uv")],
                             what="linking uv into the virtualenv", argument="repo_url", fix=fix_env)  # fmt: skip
        else:
            try:
                async with _failure_quoted(runner, repo, "install"):
                    await _install(runner, repo, installer, install, venv, uv, cache)
            except BuildFailed as exc:
                raise _dependencies_failed(exc, installer.file) from None
            for name, script in pyi.tool_shims(installer.kind).items():  # `poetry run ...` and friends
                await _write_as_tenant(runner, venv / "bin" / name, script.splitlines())
                await runner.run(["/bin/chmod", "0755", "--", str(venv / "bin" / name)], what=f"making the {name} shim",
                                 argument="repo_url", fix=fix_env)  # fmt: skip
        await asyncio.to_thread(_write_marker, marker)
        return venv, False
    finally:
        os.close(lock_fd)


def _src_layout(repo: RepoFiles) -> bool:
    """A pyproject/setup project whose packages live under src/ (`src/<pkg>/__init__.py`)."""
    if not (repo.has("pyproject.toml") or repo.has("setup.py") or repo.has("setup.cfg")):
        return False
    return any(repo.has(f"src/{name}/__init__.py") for name in repo.names("src") if name.isidentifier())


def _has_python_deps(repo: RepoFiles) -> bool:
    return pyi.has_python_deps(repo)


async def _pick_python(runner: _Runner, repo: RepoFiles, env: dict[str, str], installer: pyi.Installer,
                       default: str, search_path: str | None) -> str:  # fmt: skip
    """The interpreter for this build: `default` unless the repo asks for a version it does not have."""
    notes: list[str] = []
    request = await asyncio.to_thread(pyi.python_request, repo, env, installer, notes)
    for note in notes:
        await runner.log(f"-> {note}")
    if request is None:
        return default
    search = search_path if search_path is not None else pyi.PythonBuildSettings().search_path
    available = await asyncio.to_thread(pyi.interpreters, default, search)
    chosen = pyi.choose_interpreter(request, available)
    if chosen is None:
        error = pyi.version_unavailable(request, available, installer)
        await runner.log(f"!! {error.message}")
        raise error
    note = "" if request.version is None or request.version == chosen.version[: len(request.version)] else \
        " (another patch release of the same minor version: patch releases are compatible)"  # fmt: skip
    await runner.log(f"-> Python {chosen.shown}: {request.origin} asks for {request.text}{note}")
    return chosen.path


_NOT_FOUND = re.compile(r"(?:^|: )(?P<cmd>[\w.@/+-]+): (?:\d+: )?(?:command )?not found\s*$")


def _command_not_found(tail: Iterable[str]) -> str | None:
    """The command a shell could not find (`sh: 1: vite: not found`, `bash: tsc: command not found`), last one."""
    found = None
    for line in tail:
        if m := _NOT_FOUND.search(line.strip()):
            found = m["cmd"]
    return found


def _not_found_fix(command: str, env: dict[str, str]) -> str:
    """What to do when the build ran a command nothing installed: the package that provides it belongs in the
    repo's dependency file (the server has node, npm, python and git, not the app's tools)."""
    node = "node_modules/.bin" in env.get("PATH", "")
    where = ("add the npm package that provides it to package.json (devDependencies are installed for the build), "
             "commit and push" if node else
             "add the package that provides it to the dependency file (requirements.txt / pyproject.toml), or "
             "install it in the build_command, commit and push")  # fmt: skip
    return f"{where}; or pass a build_command that does not need {command!r}"


_INSTALL_CHOICES = ("npm_config_include", "npm_config_omit", "npm_config_production", "npm_config_dev",
                    "yarn_production")


def _dev_dependencies_for_the_build(plan: BuildPlan, env: dict[str, str], install: list[str]) -> dict[str, str]:
    """Install env that keeps devDependencies when the service sets NODE_ENV=production and a build runs.

    npm, pnpm and yarn classic skip devDependencies under NODE_ENV=production, and the build's tools (vite, tsc,
    webpack) are devDependencies: a new user's vite site with env_vars {"NODE_ENV": "production"} failed with
    "vite: not found" and the advice "fix the build so that it succeeds locally" (it did). Heroku and Render
    install them for the build too. An explicit npm/yarn setting in the service env is left to decide."""
    if not plan.build_command or env.get("NODE_ENV", "").strip().lower() != "production":
        return {}
    if any(k.lower() in _INSTALL_CHOICES for k in env):
        return {}
    # each tool's own switch (npm 11 warns about `production`, pnpm does not know `include`)
    if "pnpm" in install:
        return {"npm_config_production": "false"}
    if "yarn" in install:
        return {"YARN_PRODUCTION": "false"}
    return {"npm_config_include": "dev"}


STATIC_NOT_SERVED = (
    "-> note: collectstatic filled STATIC_ROOT, but nothing serves it: with DEBUG off Django serves no static files "
    "and InkMCP does not either, so STATIC_URL (/static/...) answers 404. Add whitenoise to the dependencies and "
    "'whitenoise.middleware.WhiteNoiseMiddleware' to MIDDLEWARE (right after SecurityMiddleware)"
)


def _serves_static(repo: RepoFiles) -> bool:
    """Whether the Django project serves its static files itself (WhiteNoise, or a static() URL pattern)."""
    settings = _settings_text(repo)
    urls = "\n".join((repo.read(f"{name}/urls.py") or b"").decode(errors="replace") for name in repo.names())
    return "whitenoise" in settings.lower() or "staticfiles_urlpatterns" in urls or "static(settings.STATIC" in urls


def _settings_text(repo: RepoFiles) -> str:
    """The Django settings module's source (as named in manage.py), for advice on a failed collectstatic."""
    manage = (repo.read("manage.py") or b"").decode(errors="replace")
    match = re.search(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([\w.]+)['"]""", manage)
    candidates = []
    if match:
        base = match[1].replace(".", "/")
        candidates += [f"{base}.py", f"{base}/__init__.py", f"{base}/base.py", f"{base}/production.py"]
    candidates += [f"{name}/settings.py" for name in repo.names()]
    texts = [(repo.read(c) or b"").decode(errors="replace") for c in dict.fromkeys(candidates)]
    return "\n".join(t for t in texts if t)


@contextlib.asynccontextmanager
async def _failure_quoted(runner: _Runner, repo: RepoFiles, step: str) -> AsyncIterator[collections.deque[str]]:
    """Run a step whose failure should quote the Python exception it died with (a traceback's last line).

    Only "exited with N" failures are rewritten: a limit or the timeout already says what happened.
    A Django static files exception gets the collectstatic advice, wherever it was raised.
    """
    tail: collections.deque[str] = collections.deque(maxlen=400)
    log = runner.log

    async def keep(line: str) -> None:
        tail.append(line)
        await log(line)

    runner.log = keep
    try:
        yield tail
    except BuildFailed as exc:
        if " exited with " not in exc.message:
            raise
        if step == "install":
            said = pyi.installer_error(list(tail))
            if said is None:
                raise
            said = said.replace(f"file://{runner.app_dir}/", "./").replace(str(runner.app_dir) + "/", "./")
            used = next((m[1] for ln in tail if (m := re.search(r"Using Python (\d+\.\d+)[\d.]* environment", ln))), "")
            fix = pyi.installer_fix(said, used or "of this server", list(tail)) or exc.fix
            raise BuildFailed(f"{exc.message.rstrip('.')}: {said}", argument=exc.argument, fix=fix) from None
        if " exited with 127" in exc.message and (missing := _command_not_found(tail)):
            raise BuildFailed(f"{exc.message.rstrip('.')}: `{missing}` is not installed in the build",
                              argument=exc.argument, fix=_not_found_fix(missing, runner.env)) from None
        exception = pyi.last_exception(list(tail))
        if exception is None:
            raise
        exception = exception.replace(str(runner.app_dir) + "/", "./").replace(str(runner.app_dir), ".")
        if venv := runner.env.get("VIRTUAL_ENV"):
            exception = exception.replace(venv, "$VIRTUAL_ENV")
        fix = exc.fix
        if step == "collectstatic" or "STATIC_ROOT" in exception or "staticfiles" in exception:
            settings = await asyncio.to_thread(_settings_text, repo)
            fix = pyi.collectstatic_fix(exception, settings, in_build_command=step == "build_command")
        else:
            fix = pyi.build_exception_fix(exception) or fix
        raise BuildFailed(f"{exc.message.rstrip('.')}: {exception}", argument=exc.argument, fix=fix) from None
    finally:
        runner.log = log


def _mount_point(path: Path, mounts: list[str]) -> str:
    text = str(path)
    return max((m for m in mounts if text == m or text.startswith(m.rstrip("/") + "/")), key=len, default="/")


def same_mount(a: Path, b: Path) -> bool:
    """Whether two absolute paths lie under the same mount (hardlinks between them can work), from mountinfo:
    a bind mount of the same filesystem has the same st_dev, and link() across it still fails with EXDEV."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            mounts = [line.split()[4].encode().decode("unicode_escape") for line in f if len(line.split()) > 4]
    except OSError:
        return True
    return _mount_point(a, mounts) == _mount_point(b, mounts)


async def _collectstatic(runner: _Runner, repo: RepoFiles, env: dict[str, str]) -> None:
    """`manage.py collectstatic`; on failure the error quotes the exception it died with and answers it."""
    if env.get("DISABLE_COLLECTSTATIC", "").strip().lower() in _TRUE:
        await runner.log("-> DISABLE_COLLECTSTATIC is set: skipping python manage.py collectstatic")
        return
    tail: collections.deque[str] = collections.deque()
    try:
        async with _failure_quoted(runner, repo, "collectstatic") as tail:
            await runner.run(["python", "manage.py", "collectstatic", "--noinput"],
                             what="python manage.py collectstatic --noinput", argument="repo_url",
                             fix=pyi.collectstatic_fix(None, ""))  # fmt: skip
        # --- newuser2: collected files are served by nobody unless the app does it (Django serves none with
        # DEBUG off, gunicorn/uvicorn none at all): /static/... answered 404 with nothing in the logs saying why
        if any("static file" in line and "copied" in line for line in tail) and not _serves_static(repo):
            await runner.log(STATIC_NOT_SERVED)
    except BuildFailed:
        # An app without django.contrib.staticfiles has no static files to collect (Heroku skips it too).
        if any("Unknown command: 'collectstatic'" in line for line in tail):
            await runner.log("-> collectstatic is not available (django.contrib.staticfiles is not in "
                             "INSTALLED_APPS): nothing to collect, skipped")  # fmt: skip
            return
        raise


def python_shim(shim_dir: Path, python: str) -> Path:
    """A bin dir whose `python`/`python3` are the given interpreter (Debian ships only python3).

    `shim_dir` must be a directory only InkMCP writes (the provider's data_dir/bin, 0755), never a
    tenant's: root creates the links there.
    """
    shim_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in ("python", "python3"):
        link = shim_dir / name
        if not link.is_symlink() or os.readlink(link) != python:
            tmp = shim_dir / f".{name}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(python)
            tmp.replace(link)
    return shim_dir


async def run_build(
    plan: BuildPlan,
    app_dir: Path,
    *,
    venv_root: Path,
    env: dict[str, str],
    log: LogSink,
    run_as: RunAs | None,
    timeout: float,
    python: str = "/usr/bin/python3",
    python_search_path: str | None = None,
    cache_dir: Path | None = None,
    pid_dir: Path | None = None,
    state_dir: Path | None = None,
    shim_dir: Path | None = None,
    anchor: Path | None = None,
    sandbox: TenantSandbox | None = None,
    on_step: LogSink | None = None,
) -> BuildOutput:
    """Install dependencies and run the build command of `plan` inside `app_dir`.

    `app_dir` is the service directory (checkout / plan.app_dir). `venv_root` holds the reusable
    virtualenvs; give each tenant its own (venvs are built by and writable for the tenant user).
    `cache_dir`, if given, holds the download caches (uv, npm, corepack, pip for build commands); it
    must be writable by `run_as` and by no other tenant (one cache per project: see the module doc).
    `env` is the service's environment (also visible to the build, like on Heroku).
    `anchor` is the checkout root when `app_dir` is a subdirectory of it (see RepoFiles).
    `state_dir` (venv locks and completion markers) and `shim_dir` (python shims) must be
    directories only InkMCP can write; they are required when the build runs as a tenant (`run_as`),
    and default to inside `venv_root` only when build and InkMCP are the same user.
    `sandbox` confines every step (cgroup, private /tmp, rlimits; see inkmcp.build.process); by
    default steps only run as `run_as`.
    `on_step` is told what each step does (`npm ci`, the build command) once it has run for STEP_PROGRESS_AFTER s.
    `python` is the operator's interpreter, used unless the repo asks for another version
    (`.python-version`, `runtime.txt`, `requires-python`, env PYTHON_VERSION) that one of the
    interpreters in `python_search_path` (default: PythonBuildSettings, INKMCP_PYTHON_SEARCH_PATH) has.
    A `build_command` that runs a Python installer (pip/uv/poetry/pipenv) replaces the dependency step.
    Raises BuildFailed naming the step; the caller attaches the log tail.
    """
    default_python = python
    if run_as is not None and (state_dir is None or shim_dir is None):
        raise ValueError("state_dir and shim_dir are required when the build runs as another user")
    state_dir = state_dir or venv_root
    repo = RepoFiles(app_dir, anchor, run_as.uid if run_as is not None else None)
    shim_dir = shim_dir or venv_root / "_bare" / "bin"
    # HOME receives pip/npm caches when no cache_dir is given: keep them out of the app dir.
    home = run_as.home if run_as else str(cache_dir / "home" if cache_dir else venv_root)
    build_env = _base_env(env, home, cache_dir)
    runner = _Runner(app_dir, build_env, log, run_as, timeout, pid_dir, sandbox, on_step)
    output = BuildOutput()

    installer, replaced_by = pyi.Installer(kind="none", file=None), None
    if plan.stack == Stack.python:
        installer = await asyncio.to_thread(pyi.choose_installer, repo)
        replaced_by = pyi.build_command_installs(plan.build_command, repo.read)
        python = await _pick_python(runner, repo, env, installer, python, python_search_path)
    if plan.stack == Stack.python and installer.kind == "none" and replaced_by is None:
        # Nothing to install: no virtualenv (2-3 s per new service), just `python` on PATH.
        venv_root.mkdir(parents=True, exist_ok=True)
        if python != default_python:  # another interpreter than the shared shim's: its own shim dir
            shim_dir = shim_dir / f"py-{hashlib.sha256(python.encode()).hexdigest()[:12]}"
        shim = await asyncio.to_thread(python_shim, shim_dir, python)
        output.env = {"PATH": f"{shim}:{env.get('PATH', BASE_PATH)}"}
        runner.env = {**build_env, **output.env}
    elif plan.stack == Stack.python:
        venv_root.mkdir(parents=True, exist_ok=True)  # normally pre-created (and owned) by the caller
        if replaced_by is not None:
            await runner.log(f"-> build_command runs {replaced_by}: it installs the dependencies itself, so the "
                             f"default install{f' from {installer.file}' if installer.file else ''} is skipped "
                             "(the virtualenv is active for it: pip, uv, poetry and pipenv install into it)")
        else:
            await runner.log(f"-> {installer.describe()}")
        # As a tenant: the root-owned copy in shim_dir (root's, 0755) that the tenant can execute.
        locate = find_uv if run_as is None else lambda: tenant_uv(shim_dir, find_uv())
        venv, reused = await _python_deps(runner, repo, venv_root, state_dir, python, locate, cache_dir,
                                          installer, replaced_by)  # fmt: skip
        venv_bin = str(venv / "bin")
        output.env = {"PATH": f"{venv_bin}:{env.get('PATH', BASE_PATH)}", "VIRTUAL_ENV": str(venv)}
        if await asyncio.to_thread(_src_layout, repo):
            # The project itself is never installed into the shared venv (it would pin one commit's code):
            # a src/ layout is importable through PYTHONPATH, per release, as `pip install .` would make it.
            output.env["PYTHONPATH"] = ":".join(filter(None, [str(app_dir / "src"), env.get("PYTHONPATH")]))
            await runner.log("-> src/ layout: src is on PYTHONPATH (the project itself is not installed)")
        output.reused_venv = reused
        output.venv_dir = str(venv)
        # For a build_command's own installer: uv sync and poetry install target this venv, not ./.venv.
        runner.env = {**build_env, **output.env, "UV_PROJECT_ENVIRONMENT": str(venv),
                      "POETRY_VIRTUALENVS_CREATE": "false", "PIPENV_VERBOSITY": "-1"}  # fmt: skip
        if cache_dir is not None and "UV_LINK_MODE" not in runner.env and not same_mount(cache_dir, venv_root):
            runner.env["UV_LINK_MODE"] = "copy"  # --- newuser2: a build_command's `uv sync` too (see _python_deps)
    elif plan.stack == Stack.node:
        # Which node (engines.node) and which installer (lock file): inkmcp.build.node_install.
        async def node_log(line: str) -> None:  # --- newuser3: a Node download (engines.node) is a step too
            await runner.log(line)
            if on_step is not None and line.startswith("-> installing Node "):
                await on_step(line[3:].partition(" (")[0])

        setup = await prepare_node(
            repo, app_dir=app_dir, service_env=env, cache_dir=cache_dir, tools_dir=shim_dir.parent / "node",
            log=node_log, uv=find_uv,
        )  # fmt: skip
        runner.env = {**build_env, **_pnpm_store_for_old(repo, setup.install, build_env), **setup.env,
                      **setup.build_only, **_dev_dependencies_for_the_build(plan, env, setup.install)}  # fmt: skip
        if setup.note:
            await runner.log(f"-> {setup.note}")
        if _dev_dependencies_for_the_build(plan, env, setup.install):
            await runner.log(f"-> NODE_ENV=production: devDependencies are installed too, since the build "
                             f"({plan.build_command}) needs its tools (vite, tsc, ...); the app still runs with "
                             "NODE_ENV=production")
        try:
            await runner.run(
                setup.install,
                what=" ".join(setup.install),
                argument="repo_url",
                fix="fix package.json and its lock file (the installer's error is in the build output: its last "
                "lines follow, get_logs(scope='build') has all of it; the same command run locally shows it too), "
                "commit and push",
            )
        except BuildFailed as exc:
            raise _dependencies_failed(exc, "package.json") from None
        output.env = dict(setup.env)

    if plan.build_command:
        async with _failure_quoted(runner, repo, "build_command"):
            await runner.shell(
                plan.build_command,
                what=f"build command {plan.build_command!r}",
                argument="build_command",
                fix="fix the build so that it succeeds locally, or pass a different build_command",
            )
    if plan.stack == Stack.python and plan.django:
        await _collectstatic(runner, repo, env)
    return output
