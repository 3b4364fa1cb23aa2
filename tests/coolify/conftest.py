"""Fixtures for the Coolify client and registration tests: a started stand-in per test (a real HTTP server on
127.0.0.1, stopped and joined in teardown) whose answers must all match Coolify's spec."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from inkmcp.coolify.client import CoolifyClient, RetryPolicy
from inkmcp.coolify.spec import CoolifySpec
from tests.contract.conftest import CoolifyHarness
from tests.coolify_standin import CoolifyStandin

FAST = RetryPolicy(attempts=4, backoff_initial=0.01, backoff_max=0.05, max_total_wait=5.0)


@pytest.fixture(scope="session")
def spec() -> CoolifySpec:
    return CoolifySpec.load()


@pytest.fixture
def standin(tmp_path: Path, spec: CoolifySpec) -> Iterator[CoolifyStandin]:
    with CoolifyStandin(tmp_path / "nodes", spec=spec, validation_delay=0.05) as s:
        yield s
    # The stand-in must never answer outside the contract, whatever a test sent it.
    assert s.response_violations == []


@pytest.fixture
def token(standin: CoolifyStandin) -> str:
    """What registration needs: read, read:sensitive (the proxy's DB copy) and write, on a team admin."""
    return standin.add_token("read", "read:sensitive", "write")


@pytest.fixture
def key_uuid(standin: CoolifyStandin) -> str:
    return standin.add_private_key()


@pytest.fixture
async def client(standin: CoolifyStandin, token: str, spec: CoolifySpec) -> AsyncIterator[CoolifyClient]:
    """The client as registration uses it, checking every request against the spec before sending; the stand-in
    checks them again on arrival, and a test using this client must leave no request violation."""
    async with CoolifyClient(standin.url, token, validate_with=spec, retry=FAST) as c:
        yield c
    assert standin.request_violations == []


@pytest.fixture
async def h() -> AsyncIterator[CoolifyHarness]:
    """The Coolify compute provider over a stand-in, as the contract suite builds it (tests/contract/conftest.py)."""
    harness = CoolifyHarness()
    await harness.setup()
    try:
        yield harness
    finally:
        await harness.teardown()
