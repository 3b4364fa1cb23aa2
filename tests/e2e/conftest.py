from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.coolify import coolify_server
from tests.session_end import at_session_end
from tests.support import SHARED_SERVER_LIMITS, ServerProc, traversable_tmpdir

PROVIDERS = ["local", "coolify"]
"""Every test of tests/e2e is `slow` already (tests/conftest.py SLOW); `-k "not coolify"` runs the local
provider's variants alone, as the suite ran before Coolify joined."""


# The shared servers hold every module's projects and databases of a worker (not one module's): the per-account
# defaults (20 projects, 5 databases) are not what these tests check (tests/core and tests/security do, on servers
# of their own), so these servers allow more. `local_server` is in tests/conftest.py (suitetime: other packages'
# tests that need no setting of their own use it too).
SHARED_LIMITS = SHARED_SERVER_LIMITS


@pytest.fixture(scope="session")
def coolify_server_() -> Iterator[ServerProc]:
    server = coolify_server("inkmcp-e2e-c-", ("alice", "bob"), **SHARED_LIMITS)
    srv = server.__enter__()
    try:
        yield srv
    except BaseException:
        server.__exit__(None, None, None)
        raise
    at_session_end(lambda: server.__exit__(None, None, None))  # --- suitecut: beside the other shared ones


@pytest.fixture(scope="session", params=PROVIDERS)
def server(request: pytest.FixtureRequest) -> ServerProc:
    """One real `inkmcp serve` per compute provider, with two accounts: every test using it runs against the
    local provider and against Coolify (the stand-in, with its runner really running what is deployed).

    Both stay up for the whole session (mender7): with `--dist loadfile` a worker runs one file's [local] tests,
    then its [coolify] tests, then the next file's; a parametrized session fixture keeps one param's value at a
    time, so each file stopped one server and started the other, twice (~20 s each, ~40 s per file and worker).
    Now this fixture only picks one of two session servers."""
    return request.getfixturevalue("local_server" if request.param == "local" else "coolify_server_")


@pytest.fixture(scope="module")
def repos(request: pytest.FixtureRequest, server: ServerProc) -> Iterator[Path]:
    """Test repos of one module and one provider's run (projects are named after their repo, so each server gets
    its own), in a directory tenant users can traverse."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    d = traversable_tmpdir(f"inkmcp-{module}-{server.compute}-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def local_only(reason: str) -> pytest.MarkDecorator:
    """The test runs on the local provider only; `reason` says what local-only thing it inspects."""
    assert reason
    return pytest.mark.parametrize("server", ["local"], indirect=True)


def coolify_gap(reason: str) -> pytest.MarkDecorator:
    """The test runs on both providers and is expected to fail on Coolify for a documented limit of the Coolify
    provider (`reason`, see provider.py's "Known limits"): strict, so it is noticed the day the gap is closed."""
    return pytest.mark.parametrize(
        "server", ["local", pytest.param("coolify", marks=pytest.mark.xfail(strict=True, reason=reason))],
        indirect=True)
