"""Fixtures of the GitHub tests: the stand-in (tests/github_support.py), the store's embedded PostgreSQL, and core
wired over it (tests/core/conftest.py `make_core`)."""

from collections.abc import Iterator

import pytest

from inkmcp.github.standin import StandinGitHub
from tests.core import conftest as _core_fixtures
from tests.github_support import github_standin  # noqa: F401  (fixture)
from tests.store import conftest as _store_fixtures

embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg
tenant_pg = _store_fixtures.tenant_pg
store_url = _store_fixtures.store_url
store = _store_fixtures.store
make_core = _core_fixtures.make_core


@pytest.fixture(autouse=True)
def _on_spec(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the stand-in: nothing it answered or sent was off GitHub's published spec."""
    yield
    if "github_standin" in request.fixturenames:
        standin: StandinGitHub = request.getfixturevalue("github_standin")
        assert standin.response_violations == [], standin.response_violations
        assert standin.payload_violations == [], standin.payload_violations
        assert standin.request_violations == [], standin.request_violations  # what InkMCP sent GitHub
