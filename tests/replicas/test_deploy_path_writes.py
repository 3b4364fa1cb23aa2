"""The deploy path's writes, made cheaper without losing fencing or resumability: the `live` record is one fenced
statement, a waiter on this replica hears a step from the write itself (not a poll tick), and a redeploy of a
known commit reuses its build plan instead of checking the commit out again (providers that need no checkout).

Over a real PostgreSQL, with two `DeployService`s standing for two replicas (tests/replicas/test_leases.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inkmcp.build import source as source_mod
from inkmcp.build.plan import Mode, ServiceType
from inkmcp.core import deployments as deployments_module
from inkmcp.core.accounts import AccountService
from inkmcp.core.deployments import DeployRequest, DeployService
from inkmcp.core.leases import LeaseLost
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.principal import Principal
from inkmcp.core.projects import Prechecked  # --- overhead
from inkmcp.core.views import TERMINAL
from inkmcp.errors import InkError
from inkmcp.providers.compute.base import Step
from inkmcp.store.db import Store
from inkmcp.store.models import Project, Service
from inkmcp.store.statements import StatementPool
from tests.replicas import test_leases as _leases
from tests.replicas.conftest import wait_for
from tests.support import git_repo

# The real PostgreSQL and the two-replica factory of test_leases, as fixtures here too.
embedded_pg_factory = _leases.embedded_pg_factory
control_pg = _leases.control_pg
store = _leases.store
replicas = _leases.replicas
PLAN, events, new_service, row, set_lease = _leases.PLAN, _leases.events, _leases.new_service, _leases.row, \
    _leases.set_lease


async def live_of(db: Store, service_id: uuid.UUID) -> tuple[uuid.UUID | None, str | None]:
    async with db.sessionmaker() as s:
        svc = await s.get(Service, service_id)
        assert svc is not None
        return svc.live_deployment_id, svc.url


async def test_live_is_one_fenced_write_that_supersedes_the_previous_release(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    a, b = replicas("a"), replicas("b")
    sid = await new_service(store, a)
    first, first_lease = await a._create_or_reuse(sid, "1" * 40, "h1", PLAN, ServiceType.webapp, Mode.persistent)
    assert first_lease is not None
    await a._record_live(first_lease, "https://one.example")
    second, lease = await a._create_or_reuse(sid, "2" * 40, "h2", PLAN, ServiceType.backend, Mode.on_demand)
    assert lease is not None
    async with store.sessionmaker() as s:  # created in one statement: the service's kind, the row, its event
        svc = await s.get(Service, sid)
        assert svc is not None and (svc.service_type, svc.mode) == ("backend", "on_demand")
    made = await row(store, second)
    assert (made.status, made.commit, made.config_hash, made.claimed_by, made.lease_epoch) == (
        "queued", "2" * 40, "h2", "a", 1)
    assert made.plan == PLAN.model_dump(mode="json") and made.lease_until is not None
    assert await events(store, second) == [("queued", f"commit {'2' * 12}")]
    assert await a._create_or_reuse(sid, "2" * 40, "h2", PLAN, ServiceType.backend, Mode.on_demand) == (second, None)

    # a paused past its lease; b took the deployment over: a's live write is refused and changes nothing
    await set_lease(store, second, "a", -1, 1)
    taken = await b._leases.claim(second)
    assert taken is not None
    before = await events(store, second)
    with pytest.raises(LeaseLost):
        await a._record_live(lease, "https://late.example")
    assert (await row(store, second)).status == "queued"
    assert (await row(store, first)).status == "live"
    assert await live_of(store, sid) == (first, "https://one.example")
    assert await events(store, second) == before

    await b._record_live(taken, "https://two.example")
    done = await row(store, second)
    assert (done.status, done.url, done.lease_until) == ("live", "https://two.example", None)
    assert done.finished_at is not None
    assert (await row(store, first)).status == "superseded"
    assert await live_of(store, sid) == (second, "https://two.example")
    assert (await events(store, second))[-1] == ("live", "https://two.example")


async def test_a_waiter_hears_each_step_from_the_write_not_from_a_poll(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    a = replicas("a")
    a.poll_seconds = 60.0  # only the write's wake-up can answer within the timeouts below
    sid = await new_service(store, a)
    async with store.sessionmaker() as s:
        svc = await s.get(Service, sid)
        project = await s.get(Project, svc.project_id) if svc is not None else None
        assert project is not None
    p = Principal(account_id=project.account_id, account_name="x", actor="test")
    dep, lease = await a._create_or_reuse(sid, "3" * 40, "h3", PLAN, ServiceType.webapp, Mode.persistent)
    assert lease is not None
    heard: list[str] = []

    async def on_progress(line: str) -> None:
        heard.append(line)

    waiter = asyncio.ensure_future(a.wait(p, dep, timeout=50, on_progress=on_progress))

    async def waiting() -> bool:
        return dep in a._waiting and bool(heard)

    await wait_for(waiting, 10, "the waiter reading the record once")
    await a._record(lease, Step.building, "building now")
    await wait_for(lambda: _async(any(h.startswith("building") for h in heard)), 5, "the building step heard")
    await a._record_live(lease, "https://three.example")
    view = await asyncio.wait_for(waiter, 5)
    assert (view.status, view.url, view.done) == ("live", "https://three.example", True)
    assert dep not in a._waiting and dep not in a._changes  # nothing left behind for a finished wait


async def _async(value: Any) -> Any:
    return value


async def test_a_redeploy_of_a_known_commit_reads_no_files_when_the_provider_needs_no_checkout(
    store: Store, replicas: Callable[..., DeployService], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = replicas("a")
    assert not a._compute.needs_checkout  # the fake remote fetches the source itself, like Coolify
    repo = git_repo(tmp_path / "app", {"app.py": "print('hi')\n", "Procfile": "web: python app.py\n"})
    p = await AccountService(store.sessionmaker, LimitDefaults()).principal_for(f"acct-{uuid.uuid4().hex[:6]}", "t")
    started: list[str] = []
    real = source_mod._spawn

    async def spawn(argv: list[str], *args: Any, **kw: Any) -> Any:
        started.append(" ".join(x for x in argv if not x.startswith("-")))
        return await real(argv, *args, **kw)

    monkeypatch.setattr(source_mod, "_spawn", spawn)
    # --- overhead (issue 12 item 4): the plan's files are written by the fetch's own cat-file process now
    written: list[str] = []
    real_write = source_mod._CatFile.write_files

    async def write_files(cat: Any, sha: str, *args: Any, **kw: Any) -> None:
        written.append(sha)
        await real_write(cat, sha, *args, **kw)

    monkeypatch.setattr(source_mod._CatFile, "write_files", write_files)
    # --- end

    async def deploy(message: str) -> Any:
        view = await a.deploy(p, DeployRequest(repo_url=str(repo), project_name="cached",
                                               env_vars={"MESSAGE": message}))
        done = await a.wait(p, uuid.UUID(view.deployment_id), timeout=60)
        assert done.status == "live", done
        return done

    first = await deploy("one")
    # the first deploy of the commit reads its files for the plan (through the fetch's cat-file: overhead)
    assert written == [first.commit] and not any("archive" in c or "tar" in c for c in started), started
    assert list((a._checkouts).iterdir()) == []  # and drops them at once: the provider fetches the source itself
    started.clear()
    written.clear()
    second = await deploy("two")
    assert second.deployment_id != first.deployment_id and second.commit == first.commit
    assert not any("archive" in c or "tar" in c for c in started), started  # plan from the cache: no checkout
    assert written == []  # --- overhead: nor the fetch's cat-file
    plans = []
    for d in (first, second):
        dep = await row(store, uuid.UUID(d.deployment_id))
        assert dep.status in TERMINAL
        plans.append(dep.plan)
    assert plans[0] == plans[1] and plans[0]["processes"][0]["name"] == "web"


async def test_the_checkout_read_alongside_the_database_work_is_dropped_when_the_deploy_stops_early(
    store: Store, replicas: Callable[..., DeployService], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkout starts right after the fetch, beside the database work; a no-op (found by a replica with no
    cached plan) and a deploy the service quota refuses leave no checkout behind, and the refusal is the quota's."""
    a = replicas("a")
    repo = git_repo(tmp_path / "app", {"app.py": "print('hi')\n", "Procfile": "web: python app.py\n"})
    p = await AccountService(store.sessionmaker, LimitDefaults()).principal_for(f"acct-{uuid.uuid4().hex[:6]}", "t")
    req = DeployRequest(repo_url=str(repo), project_name="noop")
    view = await a.deploy(p, req)
    assert (await a.wait(p, uuid.UUID(view.deployment_id), timeout=60)).status == "live"

    b = replicas("b")  # another replica: nothing cached, so it starts a checkout before it finds the no-op
    again = await b.deploy(p, req)
    assert again.reused and again.deployment_id == view.deployment_id
    assert list(b._checkouts.iterdir()) == []

    # a second service beyond the quota, as if another call added one after the advisory precheck passed
    b._projects.limits = LimitDefaults(max_services_per_project=1)

    async def passes(*args: Any) -> Prechecked:  # --- overhead: what precheck_deploy returns now
        return Prechecked(project_id=None, service_exists=False)

    monkeypatch.setattr(b._projects, "precheck_deploy", passes)
    with pytest.raises(InkError) as err:
        await b.deploy(p, DeployRequest(repo_url=str(repo), project_name="noop", service_name="second"))
    assert "INKMCP_MAX_SERVICES_PER_PROJECT" in err.value.render()
    assert list(b._checkouts.iterdir()) == []


async def test_the_next_release_of_a_service_starts_on_the_previous_ones_last_write_not_a_poll(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    a = replicas("a")
    a.poll_seconds = 60.0  # only the write's wake-up can end the wait within the timeout below
    sid = await new_service(store, a)
    first, first_lease = await a._create_or_reuse(sid, "4" * 40, "h4", PLAN, ServiceType.webapp, Mode.persistent)
    second, lease = await a._create_or_reuse(sid, "5" * 40, "h5", PLAN, ServiceType.webapp, Mode.persistent)
    assert first_lease is not None and lease is not None
    turn = asyncio.ensure_future(a._wait_turn(lease))

    async def waiting() -> bool:
        return ("queued", "waiting for the previous deployment of this service") in await events(store, second)

    await wait_for(waiting, 10, "the second deployment waiting for the first")
    assert not turn.done()
    await a._record_live(first_lease, "https://four.example")
    await asyncio.wait_for(turn, 5)
    assert first not in a._waiting and first not in a._changes


async def test_a_release_that_waited_for_the_previous_one_reads_its_refs_and_env_after_the_wait(
    store: Store, replicas: Callable[..., DeployService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 8 (overhead): a pipeline reads its rows and env beside the check for an older deployment of its
    service. When there was one to wait for, what it read before is stale (the older release recorded the
    service's provider ids, the agent changed an env var): the release must get what is recorded after the wait,
    or it would create the service's applications a second time. Without an older one it uses the early reads."""
    a = replicas("a")
    sid = await new_service(store, a)
    async with store.sessionmaker() as s:
        project_id = (await s.get(Service, sid)).project_id
    first, first_lease = await a._create_or_reuse(sid, "6" * 40, "h6", PLAN, ServiceType.webapp, Mode.persistent)
    second, lease = await a._create_or_reuse(sid, "7" * 40, "h7", PLAN, ServiceType.webapp, Mode.persistent)
    assert first_lease is not None and lease is not None
    seen: list[tuple[dict[str, Any], dict[str, str]]] = []

    async def release(request: Any, progress: Any, record: Any) -> Any:  # the provider's view of each release
        seen.append((dict(request.key.service_ref), {k: v.get_secret_value() for k, v in request.env.items()}))
        from inkmcp.providers.compute.base import ReleaseResult

        return ReleaseResult(url=None)

    monkeypatch.setattr(a._compute, "release", release)
    loads: list[uuid.UUID] = []
    real_load = a._load

    async def load(dep_id: uuid.UUID) -> Any:
        loads.append(dep_id)
        return await real_load(dep_id)

    monkeypatch.setattr(a, "_load", load)
    real_first = a._load_first

    async def load_first(dep_id: uuid.UUID) -> Any:  # the early read: the rows and the older deployments at once
        loads.append(dep_id)
        return await real_first(dep_id)

    monkeypatch.setattr(a, "_load_first", load_first)
    older_reads: list[int] = []
    real_fetch = StatementPool.fetch

    async def fetch(pool: Any, query: str, params: Any = ()) -> Any:
        if query == deployments_module._OLDER_SQL:
            older_reads.append(1)
        return await real_fetch(pool, query, params)

    monkeypatch.setattr(StatementPool, "fetch", fetch)
    a._start(lease, None, (project_id, sid))  # reads its rows and env at once, then waits for `first`

    async def waiting() -> bool:
        return ("queued", "waiting for the previous deployment of this service") in await events(store, second)

    await wait_for(waiting, 10, "the second deployment waiting for the first")
    assert loads == [second]  # the early read went out
    # meanwhile the first release records the service's provider ids and the agent sets an env var
    await a._recorder(first, sid, project_id, first_lease)("service", {"apps": {"web": "app-1"}})
    async with store.sessionmaker.begin() as s:
        await a._envs.apply(s, project_id, str(sid), {"LATE": "yes"})
    await a._record_live(first_lease, None)
    await wait_for(lambda: asyncio.sleep(0, bool(seen)), 10, "the second release")
    ref, env = seen[0]
    assert ref.get("apps") == {"web": "app-1"}  # read after the wait, not before
    assert env.get("LATE") == "yes"
    assert loads == [second, second]  # read again after the wait

    # a release with nothing older to wait for uses its early reads: one load only
    third, lease3 = await a._create_or_reuse(sid, "8" * 40, "h8", PLAN, ServiceType.webapp, Mode.persistent)
    await wait_for(lambda: asyncio.sleep(0, second not in a._held), 10, "the second pipeline ended")
    assert lease3 is not None
    loads.clear()
    assert older_reads  # the second one's ticks while it waited
    before = len(older_reads)
    a._start(lease3, None, (project_id, sid))
    await wait_for(lambda: asyncio.sleep(0, len(seen) == 2), 10, "the third release")
    assert loads == [third] and seen[1][1].get("LATE") == "yes"
    # overhead8: the early read brought the older deployments along (one statement, _LOAD_FIRST_SQL): with none
    # to wait for, _OLDER_SQL never went out; the second pipeline read it only on its ticks after its first look
    assert len(older_reads) == before
