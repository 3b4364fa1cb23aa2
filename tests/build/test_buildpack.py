"""Real builds: virtualenvs with pip, npm, build commands, timeouts, env isolation, run_as."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.build.buildpack import run_build
from inkmcp.build.plan import BuildPlan, RunAs, Stack
from inkmcp.errors import BuildFailed
from tests.requirements import require, require_root, requires

from .conftest import write_files

# A local package with an in-tree PEP 517 backend that zips a wheel itself: a real `pip install`
# through requirements.txt with no network and no setuptools/wheel downloads.
BACKEND = """
import base64, hashlib, os, zipfile

FILES = {"mypkg/__init__.py": b"VALUE = 42\\n",
         "mypkg-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\\nName: mypkg\\nVersion: 0.1\\n",
         "mypkg-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}

def _line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "mypkg-0.1-py3-none-any.whl"
    record = [_line(n, d) for n, d in FILES.items()] + ["mypkg-0.1.dist-info/RECORD,,"]
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for n, d in FILES.items():
            zf.writestr(n, d)
        zf.writestr("mypkg-0.1.dist-info/RECORD", "\\n".join(record) + "\\n")
    return name
"""
MYPKG = {
    "mypkg/pyproject.toml": (
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        '[project]\nname = "mypkg"\nversion = "0.1"\n'
    ),
    "mypkg/backend.py": BACKEND,
}
OFFLINE_PIP = {"PIP_NO_INDEX": "1"}


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def python_plan(**kw: object) -> BuildPlan:
    return BuildPlan(stack=Stack.python, source="call", **kw)  # type: ignore[arg-type]


async def build(plan: BuildPlan, app: Path, venvs: Path, log: Log | None = None, **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("env", dict(OFFLINE_PIP))
    kw.setdefault("run_as", None)
    kw.setdefault("timeout", 120)
    if kw["run_as"] is not None:  # as a tenant, locks/markers/shims must live where only we write
        state = venvs.parent / "state"
        state.mkdir(mode=0o700, exist_ok=True)
        kw.setdefault("state_dir", state)
        kw.setdefault("shim_dir", venvs.parent / "bin")
    return await run_build(plan, app, venv_root=venvs, log=log or Log(), **kw)  # type: ignore[arg-type]


async def test_python_install_reuse_and_rebuild(tmp_path: Path) -> None:
    app, venvs = tmp_path / "app", tmp_path / "venvs"
    write_files(app, {**MYPKG, "requirements.txt": "./mypkg\n"})
    venvs.mkdir()
    log = Log()
    first = await build(python_plan(), app, venvs, log)
    assert not first.reused_venv
    assert first.env["PATH"].startswith(f"{first.venv_dir}/bin:")
    assert first.env["VIRTUAL_ENV"] == first.venv_dir
    assert "$ " in log.text and "mypkg" in log.text  # pip output streamed
    check = subprocess.run(
        [f"{first.venv_dir}/bin/python", "-c", "import mypkg, sys; print(mypkg.VALUE, sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.split() == ["42", str(first.venv_dir)]

    started = time.perf_counter()
    again = await build(python_plan(), app, venvs)
    assert again.reused_venv and again.venv_dir == first.venv_dir
    assert time.perf_counter() - started < 1.0

    (app / "requirements.txt").write_text("./mypkg\n# changed\n")
    changed = await build(python_plan(), app, venvs)
    assert not changed.reused_venv and changed.venv_dir != first.venv_dir


async def test_half_built_venv_is_not_reused(tmp_path: Path) -> None:
    app, venvs = tmp_path / "app", tmp_path / "venvs"
    write_files(app, {"requirements.txt": "./missing-package\n"})
    venvs.mkdir()
    log = Log()
    with pytest.raises(BuildFailed) as err:
        await build(python_plan(), app, venvs, log)
    assert err.value.argument == "repo_url"
    assert "exited with" in err.value.message
    assert "missing-package" in log.text
    with pytest.raises(BuildFailed):  # the broken venv from the first try does not count as built
        await build(python_plan(), app, venvs)


async def test_pyproject_dependencies_and_django_collectstatic(tmp_path: Path) -> None:
    app, venvs = tmp_path / "app", tmp_path / "venvs"
    write_files(
        app,
        {
            "pyproject.toml": '[project]\nname = "site"\nversion = "1"\ndependencies = []\n',
            "manage.py": "import sys, os\nprint('collect', sys.argv[1:], os.environ['VIRTUAL_ENV'])\n",
        },
    )
    venvs.mkdir()
    log = Log()
    out = await build(python_plan(django=True), app, venvs, log)
    assert f"collect ['collectstatic', '--noinput'] {out.venv_dir}" in log.text
    (app / "manage.py").write_text("raise SystemExit(3)\n")
    with pytest.raises(BuildFailed) as err:
        await build(python_plan(django=True), app, venvs)
    assert "collectstatic" in err.value.message and "exited with 3" in err.value.message


async def test_build_command_failure_and_env_isolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INKMCP_SUPER_SECRET", "do-not-leak")
    app = tmp_path / "app"
    app.mkdir()
    plan = BuildPlan(stack=Stack.none, source="call", build_command="env > env.txt; echo done; exit 3")
    log = Log()
    with pytest.raises(BuildFailed) as err:
        await build(plan, app, tmp_path, log, env={"APP_SETTING": "on"})
    assert err.value.argument == "build_command" and "exited with 3" in err.value.message
    assert "done" in log.lines
    env_text = (app / "env.txt").read_text()
    assert "APP_SETTING=on" in env_text and "do-not-leak" not in env_text
    assert "PATH=/usr/local/bin:/usr/bin:/bin" in env_text


async def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    plan = BuildPlan(stack=Stack.none, source="call", build_command="sleep 60 & echo $! > child.pid; wait")
    with pytest.raises(BuildFailed) as err:
        await build(plan, app, tmp_path, timeout=1)
    assert "did not finish" in err.value.message
    child = int((app / "child.pid").read_text())
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper: the container's init may not reap)."""
    for _ in range(20):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in {"Z", "X"}:
            return False
        time.sleep(0.05)
    return True


@requires("npm", shutil.which("npm") is not None, "no npm on PATH")
async def test_node_install_and_build(tmp_path: Path) -> None:
    app = tmp_path / "app"
    script = (
        "node -e \"const fs = require('fs'); fs.mkdirSync('dist', {recursive: true}); "
        "fs.writeFileSync('dist/index.html', '<h1>hi</h1>')\""
    )
    write_files(app, {"package.json": json.dumps({"name": "site", "version": "1.0.0", "scripts": {"build": script}})})
    plan = BuildPlan(stack=Stack.node, source="detected", build_command="npm run build", static_dir="dist")
    log = Log()
    out = await build(plan, app, tmp_path / "venvs", log, cache_dir=tmp_path / "cache", env={})
    assert (app / "dist" / "index.html").read_text() == "<h1>hi</h1>"
    assert "$ npm install" in log.text
    assert out.env["PATH"].startswith(str(app / "node_modules" / ".bin"))


# --- run_as ------------------------------------------------------------------------------------


@pytest.fixture
def tenant() -> Iterator[tuple[RunAs, Path]]:
    """A throwaway system user and a world-traversable work dir (tmp_path lives under a 0700 dir)."""
    require_root("run_as needs root: the test creates a system user and builds as that user")
    require("root", shutil.which("useradd") is not None, "no useradd on PATH (Debian's passwd package)")
    name = f"inkt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    work = Path(tempfile.mkdtemp(prefix="inkmcp-runas-"))
    try:
        work.chmod(0o711)
        entry = pwd.getpwnam(name)
        home = work / "home"
        for d in (home, work / "app", work / "venvs", work / "cache"):
            d.mkdir()
            os.chown(d, entry.pw_uid, entry.pw_gid)
        yield RunAs(user=name, uid=entry.pw_uid, gid=entry.pw_gid, home=str(home)), work
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        subprocess.run(["userdel", name], check=False)
        shutil.rmtree(work, ignore_errors=True)


async def test_run_as_unprivileged_user(tenant: tuple[RunAs, Path]) -> None:
    run_as, work = tenant
    app = work / "app"
    (app / "requirements.txt").write_text("")
    os.chown(app / "requirements.txt", run_as.uid, run_as.gid)
    plan = python_plan(build_command="id -u > uid.txt; echo $HOME > home.txt; touch made.txt")
    out = await build(plan, app, work / "venvs", run_as=run_as, cache_dir=work / "cache")
    assert (app / "uid.txt").read_text().strip() == str(run_as.uid)
    assert (app / "home.txt").read_text().strip() == run_as.home
    for made in (app / "made.txt", Path(out.venv_dir or "") / "bin" / "python3"):
        assert made.lstat().st_uid == run_as.uid
    # The tenant cannot write outside what it owns.
    denied = BuildPlan(stack=Stack.none, source="call", build_command="touch /etc/inkmcp-should-not-exist")
    with pytest.raises(BuildFailed):
        await build(denied, app, work / "venvs", run_as=run_as)


async def test_running_build_steps_leave_pid_files_a_restart_can_reap(tmp_path: Path) -> None:
    """A build left running by a crashed InkMCP must be findable: each step records its pid while it runs."""
    import asyncio

    from inkmcp.providers.compute.local.supervisor import reap_stale

    app, venvs, pids = tmp_path / "app", tmp_path / "venvs", tmp_path / "run"
    app.mkdir()
    task = asyncio.ensure_future(build(BuildPlan(stack=Stack.none, source="call", build_command="sleep 30"),
                                       app, venvs, pid_dir=pids))
    for _ in range(100):
        files = list(pids.glob("build-*.pid")) if pids.exists() else []
        if files:
            break
        await asyncio.sleep(0.05)
    assert len(files) == 1
    pid = json.loads(files[0].read_text())["pid"]
    assert _alive(pid)
    # what a restarted InkMCP does with the leftovers of a crashed one
    assert reap_stale(pids) == 1
    with pytest.raises(BuildFailed):
        await task
    assert not _alive(pid) and not list(pids.glob("*.pid"))

    await build(BuildPlan(stack=Stack.none, source="call", build_command="true"), app, venvs, pid_dir=pids)
    assert not list(pids.glob("*.pid"))  # removed when a step ends
