"""The Neon provider end to end over the stand-in, whose roles and databases are real ones on the session's
tenant PostgreSQL: every returned URL is proven by logging in with it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx
import pytest

from inkmcp.errors import InkError, InvalidArgument, ProviderError
from inkmcp.neon.models import ProjectCreate, ProjectSpec
from inkmcp.neon.standin import NeonStandin
from inkmcp.providers.database.base import Tier
from inkmcp.providers.database.neon import NeonDatabaseProvider
from inkmcp.providers.database.postgres import database_name_for
from tests.neon.conftest import API_KEY, can_login, connect, slug

Make = Callable[..., NeonDatabaseProvider]


async def test_provision_gives_a_working_isolated_database(neon: NeonStandin, make_provider: Make) -> None:
    provider = make_provider()
    a, b = slug(), slug()
    ha = await provider.provision(owner_slug=a, tier=Tier.free)
    hb = await provider.provision(owner_slug=b, tier=Tier.standard)

    assert ha.provider == "neon" and ha.tier == Tier.free
    assert ha.credentials.user == ha.credentials.database == database_name_for(a)
    assert ha.credentials.options == {"sslmode": "disable"}  # Neon's URI options are kept (sslmode=require there)
    [project] = neon.by_name(provider.project_name(a))
    assert ha.external_id == project.id and project.max_cu == 0.25
    assert neon.by_name(provider.project_name(b))[0].max_cu == 2.0  # tier → autoscaling limit

    conn = await connect(ha.credentials)
    try:
        await conn.execute("CREATE TABLE t (x int)")
        await conn.execute("INSERT INTO t VALUES (42)")
        row = await (await conn.execute("SELECT x, current_user, current_database() FROM t")).fetchone()
        assert row == (42, ha.credentials.user, ha.credentials.database)
    finally:
        await conn.close()

    # The attack: tenant b logs in with its own valid password to tenant a's database.
    stolen = hb.credentials.model_copy(update={"database": ha.credentials.database})
    assert not await can_login(stolen)
    assert await can_login(hb.credentials)


async def test_repeat_provision_finds_the_project_and_resets_the_password(neon: NeonStandin,
                                                                          make_provider: Make) -> None:
    provider = make_provider()
    s = slug()
    first = await provider.provision(owner_slug=s, tier=Tier.free)
    second = await provider.provision(owner_slug=s, tier=Tier.free)
    assert second.external_id == first.external_id
    assert len(neon.by_name(provider.project_name(s))) == 1
    assert neon.count("POST", "/projects") == 1
    assert second.credentials.password.get_secret_value() != first.credentials.password.get_secret_value()
    assert await can_login(second.credentials)
    assert not await can_login(first.credentials)  # nobody holds the old one; it no longer works


async def test_concurrent_provisions_make_one_project(neon: NeonStandin, make_provider: Make) -> None:
    provider = make_provider()
    s = slug()
    handles = await asyncio.gather(*[provider.provision(owner_slug=s, tier=Tier.free) for _ in range(5)])
    assert len({h.external_id for h in handles}) == 1
    assert len(neon.by_name(provider.project_name(s))) == 1
    assert neon.count("POST", "/projects") == 1
    # Serialised per slug: the last one to finish holds the valid password.
    assert await can_login(handles[-1].credentials)


async def test_duplicates_from_a_race_without_core_lock_converge_to_the_oldest(neon: NeonStandin,
                                                                             make_provider: Make) -> None:
    """Two replicas racing without core's lock can both create; the next provision keeps the oldest."""
    provider = make_provider()
    s = slug()
    first = await provider.provision(owner_slug=s, tier=Tier.free)
    await asyncio.sleep(1.1)  # created_at has second resolution; the duplicate must be strictly newer
    await provider._client.create_project(ProjectCreate(project=ProjectSpec(name=provider.project_name(s))))
    assert len(neon.by_name(provider.project_name(s))) == 2
    again = await provider.provision(owner_slug=s, tier=Tier.free)
    assert again.external_id == first.external_id
    assert [p.id for p in neon.by_name(provider.project_name(s))] == [first.external_id]
    assert await can_login(again.credentials)


class SimulatedCrash(BaseException):
    """The process dies: raised after a response arrived, so Neon did the step but InkMCP never saw it."""


class CrashAfter(httpx.AsyncBaseTransport):
    def __init__(self, n: int) -> None:
        self.n = n
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.n -= 1
        if self.n < 0:
            await response.aclose()
            raise SimulatedCrash(f"{request.method} {request.url.path}")
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("crash_after", range(0, 9))
async def test_crash_between_any_two_steps_converges(neon: NeonStandin, make_provider: Make,
                                                     crash_after: int) -> None:
    """Die after the k-th Neon answer (k = 0..8 covers every step of a first provision), then provision again
    with a fresh process: one Neon project, a working login, nothing left half-made."""
    s = slug()
    crashing = make_provider()
    crashing._client._http._transport = CrashAfter(crash_after)  # the process's only way out is the crash
    try:
        await crashing.provision(owner_slug=s, tier=Tier.free)
    except SimulatedCrash:
        pass
    else:
        assert crash_after >= 7  # a first provision is 7 calls with op_delay 0.05: later crash points pass
    handle = await make_provider().provision(owner_slug=s, tier=Tier.free)
    [project] = neon.by_name(make_provider().project_name(s))
    assert handle.external_id == project.id
    ident = database_name_for(s)
    assert set(project.roles) == {ident} and set(project.databases) == {ident}
    assert await can_login(handle.credentials)


async def test_lost_create_answer_is_looked_up_not_repeated(neon: NeonStandin, make_provider: Make) -> None:
    """POST /projects succeeds at Neon but the answer never arrives (client timeout): no second project."""
    provider = make_provider(request_timeout=0.5)
    neon.inject("POST", "/projects", status=None, apply=True, delay=1.5)
    s = slug()
    handle = await provider.provision(owner_slug=s, tier=Tier.free)
    assert neon.count("POST", "/projects") == 1
    assert len(neon.by_name(provider.project_name(s))) == 1
    assert await can_login(handle.credentials)  # recovered through reset_password (the 423 lock waited out)


async def test_500_on_create_is_not_repeated_blind(neon: NeonStandin, make_provider: Make) -> None:
    provider = make_provider()
    s = slug()
    neon.inject("POST", "/projects", status=500)  # refused, nothing made
    with pytest.raises(ProviderError) as err:
        await provider.provision(owner_slug=s, tier=Tier.free)
    assert "retry later" in str(err.value) and neon.count("POST", "/projects") == 1
    assert neon.by_name(provider.project_name(s)) == []
    handle = await provider.provision(owner_slug=s, tier=Tier.free)
    assert await can_login(handle.credentials)

    neon.inject("POST", "/projects", status=500, apply=True)  # made, then 500: the lookup finds it
    s2 = slug()
    handle2 = await provider.provision(owner_slug=s2, tier=Tier.free)
    assert len(neon.by_name(provider.project_name(s2))) == 1 and await can_login(handle2.credentials)


async def test_safe_calls_are_retried_creates_are_not(neon: NeonStandin, make_provider: Make) -> None:
    provider = make_provider()
    s = slug()
    await provider.provision(owner_slug=s, tier=Tier.free)
    neon.inject("GET", r"/projects/[^/]+/branches", status=503, times=2)
    neon.inject("GET", r"/projects/[^/]+/connection_uri", status=None, delay=0.8)  # slower than the timeout
    provider_short = make_provider(request_timeout=0.4)
    handle = await provider_short.provision(owner_slug=s, tier=Tier.free)
    assert await can_login(handle.credentials)
    assert [st for m, p, st in neon.requests if m == "GET" and p.endswith("/branches")][-3:] == [503, 503, 200]

    # A database create that fails with 500 is not repeated (it may have been made); the next provision
    # resumes. The project exists without our role and database (e.g. made by hand with our name).
    s2 = slug()
    await provider._client.create_project(ProjectCreate(project=ProjectSpec(name=provider.project_name(s2))))
    neon.inject("POST", r"/projects/[^/]+/branches/[^/]+/databases", status=500, times=1)
    with pytest.raises(ProviderError):
        await provider.provision(owner_slug=s2, tier=Tier.free)
    assert neon.count("POST", r"/projects/[^/]+/branches/[^/]+/databases") == 1
    handle2 = await provider.provision(owner_slug=s2, tier=Tier.free)
    assert await can_login(handle2.credentials)
    [project] = neon.by_name(provider.project_name(s2))
    assert set(project.databases) == {"neondb", database_name_for(s2)}


async def test_locked_and_rate_limited_answers_are_waited_out(neon: NeonStandin, make_provider: Make) -> None:
    provider = make_provider()
    s = slug()
    await provider.provision(owner_slug=s, tier=Tier.free)
    neon.inject("POST", r"/projects/[^/]+/branches/[^/]+/roles/[^/]+/reset_password", status=423, times=3)
    neon.inject("GET", "/projects", status=429, times=2)
    handle = await provider.provision(owner_slug=s, tier=Tier.free)
    assert await can_login(handle.credentials)
    resets = [st for m, p, st in neon.requests if p.endswith("/reset_password")]
    assert resets[-4:] == [423, 423, 423, 200]

    # The real lock: a change while Neon's operations run answers 423 until they finish; the client waits.
    neon.op_delay = 0.6
    fresh = await provider.provision(owner_slug=slug(), tier=Tier.free)
    assert await can_login(fresh.credentials)

    # Past the retry budget the agent gets a retryable ProviderError, not a hang.
    neon.op_delay = 0.05
    neon.inject("GET", "/projects", status=429, times=100)
    with pytest.raises(ProviderError) as err:
        await provider.provision(owner_slug=slug(), tier=Tier.free)
    assert "429" in str(err.value) and "retry later" in str(err.value)
    neon.clear_faults()


async def test_rate_limit_with_retry_after(neon: NeonStandin, make_provider: Make) -> None:
    neon.rate_limit, neon.rate_window, neon.retry_after = 4, 1.0, 1
    provider = make_provider()
    handle = await provider.provision(owner_slug=slug(), tier=Tier.free)
    assert await can_login(handle.credentials)
    assert any(st == 429 for _, _, st in neon.requests)


async def test_api_key_never_in_logs_or_errors(neon: NeonStandin, make_provider: Make,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    provider = make_provider()
    await provider.provision(owner_slug=slug(), tier=Tier.free)
    neon.inject("GET", "/projects", status=500, times=100)
    with pytest.raises(ProviderError) as failed:
        await provider.provision(owner_slug=slug(), tier=Tier.free)
    neon.clear_faults()
    neon.api_keys = {"another-key"}  # the key is revoked: 401
    with pytest.raises(ProviderError) as refused:
        await provider.provision(owner_slug=slug(), tier=Tier.free)
    assert "INKMCP_NEON_API_KEY" in str(refused.value)
    assert f"Bearer {API_KEY}" in neon.seen_authorizations  # it was sent, so absence below means something
    for text in (caplog.text, str(failed.value), repr(failed.value), str(refused.value), repr(provider),
                 repr(provider._client), repr(provider.settings)):
        assert API_KEY not in text


async def test_drop_is_idempotent_and_only_ours(neon: NeonStandin, make_provider: Make) -> None:
    provider = make_provider()
    s = slug()
    handle = await provider.provision(owner_slug=s, tier=Tier.free)
    await provider.drop(handle.external_id)
    assert handle.external_id in neon.deleted and neon.by_name(provider.project_name(s)) == []
    assert not await can_login(handle.credentials)  # the role is gone from the server too
    await provider.drop(handle.external_id)  # again: no error

    foreign = await provider._client.create_project(ProjectCreate(project=ProjectSpec(name="customer-own")))
    await asyncio.sleep(0.1)
    with pytest.raises(InvalidArgument, match="not created by InkMCP"):
        await provider.drop(foreign.project.id)
    assert foreign.project.id in neon.projects
    with pytest.raises(InvalidArgument, match="not a Neon project id"):
        await provider.drop("ink_x; DROP")


async def test_operations_are_waited_on_with_a_deadline(neon: NeonStandin, make_provider: Make) -> None:
    """Neon's operations outlast the wait: a retryable error that says the next attempt resumes; it does."""
    neon.op_delay = 60.0
    s = slug()
    with pytest.raises(ProviderError) as err:
        await make_provider(operation_timeout=0.3).provision(owner_slug=s, tier=Tier.free)
    assert "still running" in str(err.value) and "retry later" in str(err.value)
    [project] = neon.by_name(make_provider().project_name(s))
    polls = neon.count("GET", rf"/projects/{project.id}/operations/[^/]+")
    assert 2 <= polls <= 12  # backed off, not a busy loop
    neon.op_delay = 0.05
    with neon._lock:
        for op in project.operations:
            op.finish_at = 0.0  # Neon finishes them meanwhile
    handle = await make_provider().provision(owner_slug=s, tier=Tier.free)
    assert handle.external_id == project.id and len(neon.by_name(make_provider().project_name(s))) == 1
    assert await can_login(handle.credentials)


async def test_doctor_check_names_the_setting(neon: NeonStandin, make_provider: Make) -> None:
    provider = make_provider()
    await provider.provision(owner_slug=slug(), tier=Tier.free)
    assert "1 InkMCP project(s)" in await provider.check()
    neon.api_keys = {"rotated"}
    with pytest.raises(InkError) as err:
        await provider.check()
    assert err.value.argument == "INKMCP_NEON_API_KEY" and API_KEY not in str(err.value)
