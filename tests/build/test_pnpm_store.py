"""Where pnpm keeps its package store during a build, and what npm says about it.

The store is the project's own cache (`<cache>/pnpm-store`): a store shared with another project would let its
tenant plant a package this build links in, and one under HOME is not the cache a rebuild reuses. pnpm 10 and
older read the store dir only from `npm_config_store_dir`, pnpm 11+ only from `pnpm_config_store_dir`; npm warns
`Unknown env config "store-dir"` on every run when it sees the first. Real builds (npm, and pnpm 9/10/11 through
corepack from the registry; pnpm 11 needs Node 22, which the build installs from PyPI): `pnpm store path` in the
build command must name the project's cache, and an npm build's log must carry no such warning.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inkmcp.build.buildpack import run_build
from inkmcp.build.plan import BuildPlan, Stack
from tests.build.test_buildpack import Log
from tests.build.test_node_static import HAS_COREPACK, HAS_NPM, LOCKS
from tests.requirements import requires

pytestmark = [
    pytest.mark.slow,
    requires("npm", HAS_NPM and HAS_COREPACK, "no npm/corepack on PATH (Debian's npm package; Node ships corepack)"),
]


async def test_an_npm_build_is_not_told_about_pnpms_store(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(LOCKS / "npm", app)
    log = Log()
    await run_build(BuildPlan(stack=Stack.node, source="call", build_command="npm run --silent env > env.txt"),
                    app, venv_root=tmp_path / "venvs", env={}, log=log, run_as=None, timeout=300,
                    cache_dir=tmp_path / "cache")  # fmt: skip
    assert "$ npm ci" in log.text and "Unknown env config" not in log.text, log.text
    names = {line.split("=", 1)[0] for line in (app / "env.txt").read_text().splitlines()}
    assert "pnpm_config_store_dir" in names and "npm_config_store_dir" not in names


@pytest.mark.parametrize(("manager", "engines"), [
    ("pnpm@9.15.0", None), ("pnpm@10.34.9", None), ("pnpm@11.28.11", ">=22"),  # pnpm 11 runs on Node 22+ only
], ids=["pnpm9", "pnpm10", "pnpm11"])  # fmt: skip
async def test_pnpms_store_is_the_projects_cache(tmp_path: Path, manager: str, engines: str | None) -> None:
    app, cache = tmp_path / "app", tmp_path / "cache"
    shutil.copytree(LOCKS / "pnpm", app)
    package = json.loads((app / "package.json").read_text())
    package["packageManager"] = manager
    if engines:
        package["engines"] = {"node": engines}
    (app / "package.json").write_text(json.dumps(package))
    log = Log()
    await run_build(BuildPlan(stack=Stack.node, source="call", build_command="pnpm store path > store.txt"),
                    app, venv_root=tmp_path / "venvs", env={}, log=log, run_as=None, timeout=300,
                    cache_dir=cache)  # fmt: skip
    assert "$ corepack pnpm install --frozen-lockfile" in log.text, log.text
    store = Path((app / "store.txt").read_text().strip())
    assert store.parent == cache / "pnpm-store", (store, log.text)
    assert any(store.iterdir()), store  # the install filled it (ms@2.0.0 came through the project's store)
    assert not (cache / "home" / ".local" / "share" / "pnpm").exists()  # HOME holds no second store
