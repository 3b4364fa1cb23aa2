"""Issue 9's corpus: each real public sample app whose needs InkMCP offers goes live from ONE deploy_app call
with only what a user would naturally pass, and serves its own page (or, for a worker, logs its own line).

One real `inkmcp serve` on the embedded defaults for the module; one project per app (named after its repo).
Apps InkMCP does not offer (`offered = false` in apps.toml) are not collected here: benchmarks/corpus.py
deploys them too and reports them. `-m "corpus and not slow_corpus"` is the fast subset (CORPUS_FAST below);
the whole corpus is `-m corpus` or `.venv/bin/python benchmarks/corpus.py`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.corpus.corpus import DEPLOY_DEADLINE_S, App, clone_app, describe, load_apps, run_app
from tests.support import ServerProc, mcp_session, running_server, traversable_tmpdir

APPS = load_apps()
OFFERED = [a for a in APPS if a.offered]

# The subset measured to fit the suite's budget (one of each kind: pip, Poetry, Django + Postgres, PG*, Redis
# worker, yarn, npm, pnpm + Vite static, CRA static, Next.js, plain static). The rest are `slow_corpus`.
CORPUS_FAST: frozenset[str] = frozenset({
    "render-flask-hello-world", "hexlet-flask-poetry", "fastapi-deployments-hello", "render-django",
    "railway-django", "render-celery", "render-express-hello-world", "koyeb-expressjs", "vite-vue-pnpm",
    "render-create-react-app", "railway-nextjs-basic", "mdn-beginner-html-site", "render-ioredis-worker",
})
assert CORPUS_FAST <= {a.name for a in OFFERED}, CORPUS_FAST - {a.name for a in OFFERED}

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


@pytest.mark.parametrize("app", [_param(a) for a in OFFERED])
async def test_app_goes_live_from_one_call(server: ServerProc, repos: Path, app: App) -> None:
    repo = clone_app(app, repos)
    async with mcp_session(server, server.keys["corpus"]) as s:
        out = await run_app(server, s, app, repo)
    # one deploy_app call: live, and the page is the app's own (its template's text, or a production build's
    # asset path that a dev server or a source index.html would not serve)
    assert out.ok, describe(out)
