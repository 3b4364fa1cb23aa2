"""Builds with uv and per-project download caches: what apps rely on from pip, cache reuse, poisoning.

The packages come from a real PEP 503 index served on loopback by the test (wheels made here), so the
installer really downloads, caches and installs; nothing leaves the machine. As root, the builds run
as real project users (`ink-<hex>`, made by the local provider's own code) in the provider's layout.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from inkmcp.build import buildpack, node_install
from inkmcp.build.buildpack import node_install_command, run_build
from inkmcp.build.plan import BuildPlan, RunAs, Stack
from inkmcp.errors import BuildFailed
from inkmcp.providers.compute.local.layout import ProjectLayout, ServiceLayout, prepare_data_dir
from inkmcp.providers.compute.local.users import delete_project_user, ensure_project_user
from tests.requirements import require, require_root, requires
from tests.support import serving, traversable_tmpdir

from .conftest import write_files

PKG = "inkmcp-cachetest-pkg"  # not on PyPI: a build that asked PyPI instead of our index fails
MODULE = "inkmcp_cachetest_pkg"


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def make_wheel(dest: Path, version: str, who: str) -> Path:
    """A pure-Python wheel of PKG whose module says `WHO = who` and `VERSION = version`."""
    dist = f"{MODULE}-{version}.dist-info"
    files = {
        f"{MODULE}/__init__.py": f"WHO = {who!r}\nVERSION = {version!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {PKG}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    lines = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}")
    path = dest / f"{MODULE}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist}/RECORD", "\n".join([*lines, f"{dist}/RECORD,,"]) + "\n")
    return path


@dataclass
class Index:
    """A PEP 503 simple index on loopback; `requests` lists every path asked for."""

    url: str
    requests: list[str] = field(default_factory=list)


@contextlib.contextmanager
def package_index(root: Path, versions: tuple[str, ...] = ("1.0",), who: str = "genuine") -> Iterator[Index]:
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    links = []
    for version in versions:
        wheel = make_wheel(files, version, who)
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        links.append(f'<a href="../../files/{wheel.name}#sha256={sha}">{wheel.name}</a>')
    page = root / "simple" / PKG
    page.mkdir(parents=True, exist_ok=True)
    (page / "index.html").write_text("<!doctype html><html><body>" + "".join(links) + "</body></html>\n")
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, directory=str(root), **kw)

        def do_GET(self) -> None:
            seen.append(self.path)
            super().do_GET()

        def log_message(self, *a: Any) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as port:
        yield Index(url=f"http://127.0.0.1:{port}/simple", requests=seen)


def python_plan(**kw: Any) -> BuildPlan:
    return BuildPlan(stack=Stack.python, source="call", **kw)


def installed(venv: str | None, run_as: RunAs | None = None) -> dict[str, str]:
    """What the build installed, asked from the venv's own interpreter (as the tenant, if given)."""
    code = f"import json, {MODULE} as m; print(json.dumps({{'who': m.WHO, 'version': m.VERSION, 'file': m.__file__}}))"
    pre = ["setpriv", f"--reuid={run_as.uid}", f"--regid={run_as.gid}", "--clear-groups"] if run_as else []
    done = subprocess.run([*pre, f"{venv}/bin/python", "-c", code], capture_output=True, text=True, check=True, cwd="/")
    return json.loads(done.stdout)


# --- what apps rely on from pip ------------------------------------------------------------------


async def test_uv_venv_keeps_pip_semantics(tmp_path: Path) -> None:
    """uv makes the venv; requirements.txt with `-c constraints.txt` is honoured; PIP_INDEX_URL from the
    service env reaches uv; `pip` is inside the venv as with `python -m venv`."""
    app, venvs = tmp_path / "app", tmp_path / "venvs"
    write_files(app, {"requirements.txt": f"-c constraints.txt\n{PKG}\n", "constraints.txt": f"{PKG}==1.0\n"})
    venvs.mkdir()
    log = Log()
    with package_index(tmp_path / "index", versions=("1.0", "2.0")) as index:
        out = await run_build(python_plan(), app, venv_root=venvs, env={"PIP_INDEX_URL": index.url}, log=log,
                              run_as=None, timeout=120, cache_dir=tmp_path / "cache")  # fmt: skip
    assert any(p.startswith(f"/simple/{PKG}") for p in index.requests), index.requests  # our index, not PyPI's
    assert installed(out.venv_dir)["version"] == "1.0"  # the constraint, not the newest (2.0)
    uv = str(buildpack.find_uv())
    assert f"$ {uv} venv --no-python-downloads --python /usr/bin/python3" in log.text
    assert "uv = " in Path(out.venv_dir or "", "pyvenv.cfg").read_text()
    pip = subprocess.run([f"{out.venv_dir}/bin/python", "-m", "pip", "--version"], capture_output=True, text=True)
    assert pip.returncode == 0 and "pip " in pip.stdout, pip.stderr
    assert (tmp_path / "cache" / "uv").is_dir()  # the cache went where the caller said


async def test_pyproject_without_pep621_is_installed_as_a_project(tmp_path: Path) -> None:
    """`pip install .` semantics: a setup.py-only project is built and installed with its backend."""
    app, venvs = tmp_path / "app", tmp_path / "venvs"
    write_files(app, {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "backend.py": textwrap.dedent("""
            import base64, hashlib, os, zipfile
            FILES = {"sitepkg.py": b"OK = 'built by the backend'\\n",
                     "site-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\\nName: site\\nVersion: 0.1\\n",
                     "site-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
            def _line(n, d):
                return n + ",sha256=" + base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode() + "," + str(len(d))
            def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
                name = "site-0.1-py3-none-any.whl"
                with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
                    for n, d in FILES.items():
                        zf.writestr(n, d)
                    zf.writestr("site-0.1.dist-info/RECORD", "\\n".join([_line(n, d) for n, d in FILES.items()] + ["site-0.1.dist-info/RECORD,,"]))
                return name
            """),  # noqa: E501
    })  # fmt: skip
    venvs.mkdir()
    log = Log()
    out = await run_build(python_plan(), app, venv_root=venvs, env={"PIP_NO_INDEX": "1"}, log=log, run_as=None,
                          timeout=120, cache_dir=tmp_path / "cache")  # fmt: skip
    assert "uv pip install" in log.text and "--no-index ." in log.text
    check = subprocess.run([f"{out.venv_dir}/bin/python", "-c", "import sitepkg; print(sitepkg.OK)"],
                           capture_output=True, text=True, cwd="/")  # fmt: skip
    assert check.stdout.strip() == "built by the backend", check.stderr


async def test_warm_cache_installs_offline(tmp_path: Path) -> None:
    """The second build of the same dependencies into a new venv needs no network at all: with the index
    gone and UV_OFFLINE=1 it installs the same package from the cache. The same build with an empty cache
    fails, so the success came from the cache."""
    cache, venvs = tmp_path / "cache", tmp_path / "venvs"
    venvs.mkdir()
    app = tmp_path / "app"
    write_files(app, {"requirements.txt": f"{PKG}\n"})
    with package_index(tmp_path / "index") as index:
        first = await run_build(python_plan(), app, venv_root=venvs, env={"PIP_INDEX_URL": index.url}, log=Log(),
                                run_as=None, timeout=120, cache_dir=cache)  # fmt: skip
        fetched = [p for p in index.requests if p.startswith("/files/")]
    assert fetched, index.requests  # the first build downloaded the wheel
    (app / "requirements.txt").write_text(f"{PKG}\n# another service, same dependencies\n")  # a new venv key
    offline = {"PIP_INDEX_URL": index.url, "UV_OFFLINE": "1"}  # the index server is stopped by now
    second = await run_build(python_plan(), app, venv_root=venvs, env=offline, log=Log(), run_as=None,
                             timeout=120, cache_dir=cache)  # fmt: skip
    assert second.venv_dir != first.venv_dir and not second.reused_venv
    assert installed(second.venv_dir)["who"] == "genuine"
    (app / "requirements.txt").write_text(f"{PKG}\n# a third venv, with a cold cache\n")
    log = Log()
    with pytest.raises(BuildFailed) as err:
        await run_build(python_plan(), app, venv_root=venvs, env=offline, log=log, run_as=None, timeout=120,
                        cache_dir=tmp_path / "cold-cache")  # fmt: skip
    assert err.value.argument == "repo_url" and "uv pip install -r requirements.txt exited with" in err.value.message
    assert "dependency list" in (err.value.fix or "") and PKG in log.text  # uv's error names the package


async def test_missing_uv_fails_with_the_fix_but_a_reused_venv_needs_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, venvs = tmp_path / "app", tmp_path / "venvs"
    write_files(app, {"requirements.txt": "# nothing yet\n"})
    venvs.mkdir()
    first = await run_build(python_plan(), app, venv_root=venvs, env={"PIP_NO_INDEX": "1"}, log=Log(), run_as=None,
                            timeout=60, cache_dir=tmp_path / "cache")  # fmt: skip
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "no-such-prefix"))
    monkeypatch.setitem(sys.modules, "uv", None)  # `import uv` raises ImportError
    again = await run_build(python_plan(), app, venv_root=venvs, env={}, log=Log(), run_as=None, timeout=60)
    assert again.reused_venv and again.venv_dir == first.venv_dir
    (app / "requirements.txt").write_text("# changed\n")
    with pytest.raises(BuildFailed) as err:
        await run_build(python_plan(), app, venv_root=venvs, env={}, log=Log(), run_as=None, timeout=60)
    assert "no uv installer" in err.value.message
    assert str(tmp_path / "no-such-prefix" / "bin" / "uv") in err.value.message
    assert "make install" in (err.value.fix or "") and "pip install uv" in (err.value.fix or "")


def test_pip_settings_are_translated_for_uv() -> None:
    env = {"PIP_INDEX_URL": "https://idx.example/simple", "PIP_EXTRA_INDEX_URL": "https://a/simple  https://b/simple",
           "PIP_FIND_LINKS": "/w1 /w2", "PIP_NO_INDEX": "true", "PIP_TRUSTED_HOST": "a b", "PIP_PRE": "1",
           "PIP_CONSTRAINT": "c.txt"}  # fmt: skip
    out, flags = buildpack._pip_settings_for_uv(env)
    assert out == {"UV_INDEX_URL": "https://idx.example/simple", "UV_EXTRA_INDEX_URL": "https://a/simple https://b/simple",
                   "UV_FIND_LINKS": "/w1,/w2", "UV_INSECURE_HOST": "a b", "UV_CONSTRAINT": "c.txt",
                   "UV_PRERELEASE": "allow"}  # fmt: skip
    assert flags == ["--no-index"]
    # the app's own UV_* setting wins; a false PIP_NO_INDEX adds nothing
    out, flags = buildpack._pip_settings_for_uv({"PIP_INDEX_URL": "a", "UV_INDEX_URL": "b", "PIP_NO_INDEX": "0"})
    assert out == {} and flags == []


# --- as real project users: the tenant's uv, its cache, the poisoning attack ----------------------


@dataclass
class Project:
    pid: str
    run_as: RunAs
    layout: ProjectLayout
    service: ServiceLayout
    app: Path


@pytest.fixture
def data_dir() -> Iterator[Path]:
    require_root("builds as real project users (useradd, setuid): run the suite as root")
    require("root", shutil.which("useradd") is not None and shutil.which("setpriv") is not None,
            "needs useradd (passwd) and setpriv (util-linux)")  # fmt: skip
    base = traversable_tmpdir("inkmcp-cachetest-")
    data = base / "data"
    prepare_data_dir(data, root=True)
    try:
        yield data
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def projects(data_dir: Path) -> Any:
    made: list[str] = []

    async def make(requirements: str) -> Project:
        pid = f"cachetest-{uuid.uuid4().hex[:10]}"
        made.append(pid)
        run_as = await ensure_project_user(pid, data_dir / "homes")
        assert run_as is not None
        layout = ProjectLayout(data_dir, pid)
        layout.prepare(run_as)
        service = ServiceLayout(data_dir, f"svc-{pid}")
        service.prepare(run_as)
        app = service.tmp / "app"  # any tenant-owned dir will do for the checkout
        write_files(app, {"requirements.txt": requirements})
        subprocess.run(["chown", "-R", f"{run_as.uid}:{run_as.gid}", str(app)], check=True)
        return Project(pid, run_as, layout, service, app)

    yield make
    for pid in made:
        await delete_project_user(pid, data_dir / "homes")


async def tenant_build(p: Project, data_dir: Path, env: dict[str, str], log: Log | None = None,
                       build_command: str | None = None) -> buildpack.BuildOutput:  # fmt: skip
    """A build exactly as the local provider runs it: as the project's user, the project's cache."""
    return await run_build(
        python_plan(build_command=build_command), p.app, venv_root=p.service.venvs, env=env, log=log or Log(),
        run_as=p.run_as, timeout=120, cache_dir=p.layout.cache, state_dir=p.service.run_dir,
        shim_dir=data_dir / "bin", anchor=p.app,
    )  # fmt: skip


ATTACK = r"""
import errno, json, os, sys
mine, theirs, projects, module = sys.argv[1:5]
report = {"uid": os.getuid(), "poisoned": [], "denied": {}, "written": []}
for dirpath, dirnames, filenames in os.walk(mine):  # the attacker owns its cache: rewrite every cached copy
    if os.path.basename(dirpath) == module and "__init__.py" in filenames:
        path = os.path.join(dirpath, "__init__.py")
        os.chmod(path, 0o644)
        with open(path, "w") as f:
            f.write("WHO = 'poisoned'\nVERSION = '1.0'\n")
        report["poisoned"].append(path)
targets = [os.path.join(theirs, "uv", "planted.txt"), os.path.join(theirs, "planted.txt"),
           os.path.join(os.path.dirname(theirs), "cache-planted"), os.path.join(projects, "shared-cache")]
for target in targets:
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write("planted")
        report["written"].append(target)
    except OSError as e:
        report["denied"][target] = errno.errorcode[e.errno]
try:
    report["listed"] = os.listdir(theirs)
except OSError as e:
    report["denied"]["list " + theirs] = errno.errorcode[e.errno]
print(json.dumps(report))
"""


@pytest.mark.slow
async def test_cache_poisoning_across_projects_fails(projects: Any, data_dir: Path) -> None:
    """Tenant A poisons the download cache it can write; tenant B's build of the same requirements
    installs the genuine package. The control (A's own next build installs the planted code) shows the
    attack is real: a cache the two projects shared would have handed B the poisoned package."""
    a, b = await projects(f"{PKG}==1.0\n"), await projects(f"{PKG}==1.0\n")
    with package_index(data_dir.parent / "index") as index:
        env = {"PIP_INDEX_URL": index.url}
        log_a = Log()
        out_a = await tenant_build(a, data_dir, env, log_a, build_command="id -u > uid.txt")
        assert (a.app / "uid.txt").read_text().strip() == str(a.run_as.uid)  # the build ran as A
        assert installed(out_a.venv_dir, a.run_as)["who"] == "genuine"

        # The attack, as tenant A.
        done = subprocess.run(
            ["setpriv", f"--reuid={a.run_as.uid}", f"--regid={a.run_as.gid}", "--clear-groups", sys.executable,
             "-c", ATTACK, str(a.layout.cache), str(b.layout.cache), str(data_dir / "projects"), MODULE],
            capture_output=True, text=True, cwd="/",
        )  # fmt: skip
        report = json.loads(done.stdout or "{}") if done.returncode == 0 else pytest.fail(done.stderr)
        assert report["uid"] == a.run_as.uid and report["poisoned"], report
        assert report["written"] == [], f"tenant A wrote where B's build could read: {report['written']}"
        assert set(report["denied"].values()) == {"EACCES"} and "listed" not in report, report

        # B builds the same requirements while A's cache holds the planted code.
        out_b = await tenant_build(b, data_dir, env, build_command="id -u > uid.txt")
    assert (b.app / "uid.txt").read_text().strip() == str(b.run_as.uid)
    got = installed(out_b.venv_dir, b.run_as)
    assert got["who"] == "genuine", got
    assert Path(got["file"]).stat().st_uid == b.run_as.uid

    # Control: a build that does use A's cache (A's next service, index gone) installs what A planted.
    a.app.joinpath("requirements.txt").write_text(f"{PKG}==1.0\n# A's second service\n")
    out_a2 = await tenant_build(a, data_dir, {**env, "UV_OFFLINE": "1"})
    assert installed(out_a2.venv_dir, a.run_as)["who"] == "poisoned"

    # Who owns what: each cache is its project's only, 0700; uv ran from root's copy in the shim dir.
    for p in (a, b):
        st = p.layout.cache.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (p.run_as.uid, 0o700)
        strangers = [f for f in p.layout.cache.rglob("*") if f.lstat().st_uid != p.run_as.uid]
        assert strangers == [], strangers[:5]
    uv = data_dir / "bin" / "uv"
    assert f"$ {uv} venv" in log_a.text
    st = uv.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755)
    assert uv.read_bytes() == buildpack.find_uv().read_bytes()


# --- Node -----------------------------------------------------------------------------------------

HAS_NPM = shutil.which("npm") is not None


@requires("npm", HAS_NPM, "no npm on PATH")
async def test_npm_ci_with_a_lock_file_and_the_given_cache(tmp_path: Path) -> None:
    app, cache = tmp_path / "app", tmp_path / "cache"
    write_files(app, {
        "package.json": json.dumps({"name": "site", "version": "1.0.0", "dependencies": {"localdep": "file:localdep"}}),
        "localdep/package.json": json.dumps({"name": "localdep", "version": "1.0.0", "main": "index.js"}),
        "localdep/index.js": "module.exports = 'local';\n",
    })  # fmt: skip
    plan = BuildPlan(stack=Stack.node, source="call", build_command="npm config get cache > cache.txt")
    log = Log()
    await run_build(plan, app, venv_root=tmp_path / "venvs", env={}, log=log, run_as=None, timeout=120,
                    cache_dir=cache)  # fmt: skip
    assert "$ npm install" in log.text and (app / "package-lock.json").is_file()
    assert (app / "cache.txt").read_text().strip() == str(cache / "npm")
    log = Log()
    await run_build(plan, app, venv_root=tmp_path / "venvs", env={}, log=log, run_as=None, timeout=120,
                    cache_dir=cache)  # fmt: skip
    assert "$ npm ci" in log.text and "$ npm install" not in log.text


def test_lock_files_choose_the_installer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def command(files: dict[str, str]) -> tuple[list[str], str | None]:
        app = tmp_path / uuid.uuid4().hex
        write_files(app, {"package.json": "{}", **files})
        return node_install_command(buildpack.RepoFiles(app))

    assert command({"package-lock.json": "{}"}) == (["npm", "ci"], None)
    assert command({"npm-shrinkwrap.json": "{}"}) == (["npm", "ci"], None)
    assert command({}) == (["npm", "install"], None)
    monkeypatch.setattr(node_install, "_node_tool", lambda tool, path=None: [tool])
    assert command({"yarn.lock": ""})[0] == ["yarn", "install", "--frozen-lockfile"]
    assert command({"yarn.lock": "", ".yarnrc.yml": ""})[0] == ["yarn", "install", "--immutable"]
    assert command({"yarn.lock": "", "package.json": '{"packageManager": "yarn@4.1.0"}'})[0][-1] == "--immutable"
    assert command({"pnpm-lock.yaml": ""})[0] == ["pnpm", "install", "--frozen-lockfile"]
    monkeypatch.setattr(node_install, "_node_tool", lambda tool, path=None: None)
    argv, note = command({"yarn.lock": ""})
    assert argv == ["npm", "install"] and note is not None and "yarn.lock" in note and "corepack" in note


HAS_COREPACK = shutil.which("corepack", path=buildpack.BASE_PATH) is not None


@pytest.mark.slow
@requires("npm", HAS_NPM and HAS_COREPACK, "no npm/corepack on PATH (Node.js's own package ships corepack)")
async def test_yarn_lock_is_installed_frozen_through_corepack(tmp_path: Path) -> None:
    """yarn.lock is honoured: yarn (through corepack, fetched from the npm registry into the project's cache)
    installs it, and a lock that no longer matches package.json fails the build instead of being rewritten."""
    app, cache = tmp_path / "app", tmp_path / "cache"
    dep = {"localdep": "file:./localdep"}
    write_files(app, {
        "package.json": json.dumps({"name": "site", "version": "1.0.0", "dependencies": dep}),
        "localdep/package.json": json.dumps({"name": "localdep", "version": "1.0.0"}),
    })  # fmt: skip
    env = {"YARN_ENABLE_TELEMETRY": "0"}
    make_lock = BuildPlan(stack=Stack.none, source="call", build_command="corepack yarn install")
    await run_build(make_lock, app, venv_root=tmp_path / "venvs", env=env, log=Log(), run_as=None, timeout=180,
                    cache_dir=cache)  # fmt: skip
    assert (app / "yarn.lock").is_file()
    shutil.rmtree(app / "node_modules")
    log = Log()
    plan = BuildPlan(stack=Stack.node, source="call")
    await run_build(plan, app, venv_root=tmp_path / "venvs", env=env, log=log, run_as=None, timeout=180,
                    cache_dir=cache)  # fmt: skip
    assert "$ corepack yarn install --frozen-lockfile" in log.text
    assert (app / "node_modules" / "localdep" / "package.json").is_file()
    assert (cache / "corepack").is_dir()  # yarn itself came into the project's cache, not a shared one
    (app / "package.json").write_text(json.dumps({"name": "site", "version": "1.0.0",
                                                  "dependencies": {**dep, "left-pad": "1.3.0"}}))  # fmt: skip
    with pytest.raises(BuildFailed) as err:
        await run_build(plan, app, venv_root=tmp_path / "venvs", env=env, log=Log(), run_as=None, timeout=180,
                        cache_dir=cache)  # fmt: skip
    assert "yarn install --frozen-lockfile exited with" in err.value.message and "lock file" in (err.value.fix or "")
