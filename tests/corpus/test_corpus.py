"""Issue 9's corpus: each real public sample app whose needs InkMCP offers goes live from ONE deploy_app call
with only what a user would naturally pass, and serves its own page (or, for a worker, logs its own line).

One real `inkmcp serve` on the embedded defaults for the module; one project per app (named after its repo).
Apps InkMCP does not offer (`offered = false` in apps.toml) are not collected here: benchmarks/corpus.py
deploys them too and reports them.

Which apps: the suite (CI) runs the fast subset CORPUS_FAST below, measured to fit the suite's budget (cold
Next.js / CRA / NestJS builds take 1.5-4 minutes each on 2 cores). INKMCP_CORPUS=full collects every offered
app (`INKMCP_CORPUS=full .venv/bin/pytest tests/corpus`); benchmarks/corpus.py runs every app with times.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.corpus.corpus import DEPLOY_DEADLINE_S, App, clone_app, delete_project, describe, load_apps, run_app
from tests.support import ServerProc, mcp_session, running_server, traversable_tmpdir

APPS = load_apps()
OFFERED = [a for a in APPS if a.offered]

# The subset measured to fit the suite's budget (the whole suite took 30 min 03 s on a quiet 2-core box with 14
# apps here; these 12 take ~2 min): one of each kind (pip + Procfile, pip + platform file, Poetry, hashed
# requirements + FastAPI, Django + Postgres via PG*, Django + whitenoise, Redis web + worker, Redis worker alone,
# yarn, npm, pnpm + Vite static + SPA fallback, plain static). The other offered apps are `slow_corpus`
# (Django via DATABASE_URL and npm without a lock file among them; e2e tests cover both paths too).
CORPUS_FAST: frozenset[str] = frozenset({
    "koyeb-flask", "railway-flask", "hexlet-flask-poetry", "fastapi-deployments-hello", "railway-django",
    "koyeb-django", "render-celery", "render-ioredis-worker", "render-express-hello-world",
    "koyeb-expressjs", "vite-vue-pnpm", "mdn-beginner-html-site",
})
assert CORPUS_FAST <= {a.name for a in OFFERED}, CORPUS_FAST - {a.name for a in OFFERED}
CORPUS_ENV = "INKMCP_CORPUS"
FULL = os.environ.get(CORPUS_ENV, "").strip().lower() == "full"
SELECTED = [a for a in OFFERED if FULL or a.name in CORPUS_FAST]

# pytest's default per-test timeout (300 s) is shorter than a cold Next.js/CRA/NestJS build on 2 shared cores
pytestmark = [pytest.mark.slow, pytest.mark.corpus, pytest.mark.timeout(int(DEPLOY_DEADLINE_S) + 180)]


def _param(app: App) -> object:
    marks = [] if app.name in CORPUS_FAST else [pytest.mark.slow_corpus]
    return pytest.param(app, id=app.name, marks=marks)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProc]:
    with running_server("inkmcp-corpus-", ("corpus",)) as srv:
        yield srv


@pytest.fixture(scope="module")
def repos() -> Iterator[Path]:
    d = traversable_tmpdir("inkmcp-corpus-repos-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("app", [_param(a) for a in SELECTED])
async def test_app_goes_live_from_one_call(server: ServerProc, repos: Path, app: App) -> None:
    repo = clone_app(app, repos)
    async with mcp_session(server, server.keys["corpus"]) as s:
        try:
            out = await run_app(server, s, app, repo)
        finally:
            await delete_project(s, app.name)  # the project is named after the repo's directory, app.name
    # one deploy_app call: live, and the page is the app's own (its template's text, or a production build's
    # asset path that a dev server or a source index.html would not serve)
    assert out.ok, describe(out)
