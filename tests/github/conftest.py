"""Fixtures of the GitHub tests: the stand-in (tests/github_support.py) and the store's embedded PostgreSQL."""

from tests.github_support import github_standin  # noqa: F401  (fixture)
from tests.store import conftest as _store_fixtures

embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg
store_url = _store_fixtures.store_url
store = _store_fixtures.store
