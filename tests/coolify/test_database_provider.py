"""The Coolify database provider (inkmcp/providers/database/coolify.py) over the stand-in, with core's
DatabaseService on the real control-plane store: one Coolify Postgres per project, on the project's server,
recorded before the next remote step, found again after lost answers, never duplicated, encrypted at rest.

Every request the provider sends is checked against Coolify's spec twice (the client's `validate_with`, and the
stand-in on arrival); the `standin`/`client` fixtures fail a test that leaves a violation."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text

from inkmcp.coolify.client import CoolifyClient, RetryPolicy
from inkmcp.coolify.spec import CoolifySpec
from inkmcp.core.accounts import AccountService
from inkmcp.core.databases import DatabaseRequest, DatabaseService
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.projects import ProjectService
from inkmcp.errors import InkError, InvalidArgument, ProviderError
from inkmcp.placement.coolify_nodes import CoolifyNodeSource
from inkmcp.placement.records import PlacementService
from inkmcp.placement.settings import NodeCapacity, PlacementSettings
from inkmcp.providers.database.base import Tier
from inkmcp.providers.database.byo import BringYourOwnDatabase
from inkmcp.providers.database.coolify import (
    REACHABILITY,
    REF_KEY,
    CoolifyDatabaseProvider,
    CoolifyDatabaseSettings,
    database_server_of,
)
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store
from inkmcp.store.models import Database, Project, Service
from tests.coolify_standin import CoolifyStandin
from tests.store import conftest as _store_fixtures

embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg
store_url = _store_fixtures.store_url
store = _store_fixtures.store

FAST = RetryPolicy(attempts=4, backoff_initial=0.01, backoff_max=0.05, max_total_wait=5.0)
QUICK = {"poll_interval": 0.02, "poll_max_interval": 0.1, "start_timeout": 5.0, "delete_timeout": 5.0,
         "lookup_grace": 3.0, "start_grace": 0.3}

Make = Callable[..., CoolifyDatabaseProvider]


@pytest.fixture
def token(standin: CoolifyStandin) -> str:
    return standin.add_token("read", "read:sensitive", "write", "deploy")


@pytest.fixture
async def make(standin: CoolifyStandin, token: str, spec: CoolifySpec, store: Store) -> AsyncIterator[Make]:
    """`make(**settings) -> provider` (a new client each: like a second replica); all spec-checked."""
    made: list[CoolifyDatabaseProvider] = []

    def build(*, timeout: float = 5.0, with_store: bool = True, placement: object = None,
              progress: object = None, **settings: object) -> CoolifyDatabaseProvider:
        client = CoolifyClient(standin.url, token, validate_with=spec, retry=FAST, timeout=timeout)
        provider = CoolifyDatabaseProvider(client, CoolifyDatabaseSettings(**{**QUICK, **settings}),  # type: ignore[arg-type]
                                           sessions=store.sessionmaker if with_store else None,
                                           placement=placement, progress=progress)  # type: ignore[arg-type]
        made.append(provider)
        return provider

    yield build
    for p in made:
        await p.close()
    assert standin.request_violations == []


async def _project(store: Store, box: SecretBox) -> uuid.UUID:
    limits = LimitDefaults()
    p = await AccountService(store.sessionmaker, limits).principal_for(f"cdb-{uuid.uuid4().hex[:8]}", "test")
    project, _ = await ProjectService(store.sessionmaker, box, limits).ensure(p, f"c-{uuid.uuid4().hex[:10]}")
    return project.id


def _service(store: Store, box: SecretBox, default: CoolifyDatabaseProvider) -> DatabaseService:
    return DatabaseService(store.sessionmaker, box, default, BringYourOwnDatabase(), LimitDefaults(),  # type: ignore[arg-type]
                           providers={"coolify": default})  # type: ignore[dict-item]


async def _ref(store: Store, project_id: uuid.UUID) -> dict[str, object]:
    async with store.sessionmaker() as s:
        refs = (await s.execute(select(Project.provider_ref).where(Project.id == project_id))).scalar_one()
    return dict(refs.get(REF_KEY) or {})


def _creates(standin: CoolifyStandin) -> int:
    return standin.request_count(method="POST", path="/databases/postgresql")


async def test_provision_through_core_one_database_on_a_run_server_encrypted_at_rest(
        standin: CoolifyStandin, make: Make, store: Store) -> None:
    servers = standin.add_servers(2)
    box = SecretBox([Fernet.generate_key()])
    provider = make()
    databases = _service(store, box, provider)
    project_id = await _project(store, box)

    info = await databases.ensure(project_id, DatabaseRequest(type="postgres"))
    assert info.created and info.provider == "postgres"  # agents are not told which backend serves it
    [db] = standin.databases.values()
    assert db.status == "running:healthy" and db.server_uuid == servers[0].uuid
    # credentials: the internal address on the server's Coolify network, with our generated login
    assert (info.host, info.port) == (db.uuid, 5432)
    assert info.user == info.database == f"ink_{project_id.hex}"
    password = info.password.get_secret_value()
    assert len(password) == 48 and password.isalnum() and db.fields["postgres_password"] == password
    assert info.url.get_secret_value() == f"postgresql://ink_{project_id.hex}:{password}@{db.uuid}:5432/ink_{project_id.hex}"
    # names from InkMCP's ids only; limits from the settings for the tier
    assert db.fields["name"] == f"inkmcp-db-{project_id}"
    assert f"[inkmcp-db:{project_id.hex}]" in db.fields["description"]
    assert (db.fields["limits_memory"], db.fields["limits_cpus"]) == ("256m", "0.5")
    sent = standin.requests_of(method="POST", path="/databases/postgresql")[0].body  # type: ignore[attr-defined]
    assert set(sent) <= {"project_uuid", "environment_uuid", "environment_name", "server_uuid", "name", "description",
                         "postgres_user", "postgres_db", "postgres_password", "limits_memory", "limits_cpus",
                         "instant_deploy"}
    # recorded in the control-plane database: every Coolify id, before core's row
    ref = await _ref(store, project_id)
    assert ref["database_uuid"] == db.uuid and ref["server_uuid"] == servers[0].uuid
    assert standin.projects[str(ref["project_uuid"])].name == f"inkmcp-db-{project_id}"
    assert await database_server_of(store.sessionmaker, project_id) == servers[0].uuid
    # at rest: core's row holds the Coolify uuid and a Fernet token, never the password in clear
    async with store.sessionmaker() as s:
        row = (await s.execute(select(Database).where(Database.project_id == project_id))).scalar_one()
        raw = (await s.execute(text("SELECT credentials_enc::text, provider_ref::text FROM databases d JOIN projects p "
                                    "ON p.id = d.project_id WHERE d.project_id = :p"), {"p": project_id})).one()
    assert (row.provider, row.external_id, row.tier) == ("coolify", db.uuid, "free")
    assert password.encode() not in row.credentials_enc and password not in raw[0] and password not in raw[1]
    assert json.loads(box.decrypt(row.credentials_enc))["password"] == password
    assert "only from this project's apps" in REACHABILITY and provider.reachability == REACHABILITY

    # a repeat is core's no-op; the provider itself, asked again, finds the same database and its password
    again = await databases.ensure(project_id, DatabaseRequest())
    assert not again.created and again.password.get_secret_value() == password
    handle = await make().provision(owner_slug=project_id.hex, tier=Tier.free)
    assert handle.external_id == db.uuid and handle.credentials.password.get_secret_value() == password
    assert _creates(standin) == 1 and standin.request_count(method="POST", path="/projects") == 1

    assert await databases.drop(project_id)
    assert not standin.databases and str(ref["project_uuid"]) not in standin.projects
    assert await _ref(store, project_id) == {}
    await provider.drop(db.uuid)  # idempotent


async def test_concurrent_provisions_of_one_project_make_one_database(
        standin: CoolifyStandin, make: Make, store: Store) -> None:
    standin.add_servers(1)
    box = SecretBox([Fernet.generate_key()])
    project_id = await _project(store, box)
    replicas = [_service(store, box, make()) for _ in range(3)]  # three replicas, each its own provider/client
    infos = await asyncio.gather(*[replicas[i % 3].ensure(project_id, DatabaseRequest()) for i in range(6)])
    assert len(standin.databases) == 1 and _creates(standin) == 1
    assert sum(i.created for i in infos) == 1
    assert len({i.password.get_secret_value() for i in infos}) == 1
    # the provider alone (no core lock), twice at once in one process: its own per-project lock
    provider = make()
    handles = await asyncio.gather(*[provider.provision(owner_slug=project_id.hex, tier=Tier.free) for _ in range(3)])
    assert {h.external_id for h in handles} == set(standin.databases) and _creates(standin) == 1


async def test_database_goes_to_the_server_of_the_projects_services(
        standin: CoolifyStandin, make: Make, store: Store) -> None:
    servers = standin.add_servers(3)
    box = SecretBox([Fernet.generate_key()])
    project_id = await _project(store, box)
    async with store.sessionmaker.begin() as s:
        for i, server in enumerate([servers[2], servers[2], servers[1]]):
            s.add(Service(project_id=project_id, name=f"s{i}", service_type="webapp", mode="persistent",
                          repo_url="https://example.com/r.git", provider_ref={"coolify": {"server_uuid": server.uuid}}))
    await _service(store, box, make()).ensure(project_id, DatabaseRequest())
    [db] = standin.databases.values()
    assert db.server_uuid == servers[2].uuid


async def test_server_setting_and_refusals_name_what_to_fix(standin: CoolifyStandin, make: Make,
                                                            store: Store) -> None:
    servers = standin.add_servers(2)
    box = SecretBox([Fernet.generate_key()])
    project_id = await _project(store, box)
    handle = await make(server=servers[1].name).provision(owner_slug=project_id.hex, tier=Tier.standard)
    assert standin.databases[handle.external_id].server_uuid == servers[1].uuid
    assert standin.databases[handle.external_id].fields["limits_memory"] == "1024m"
    assert standin.databases[handle.external_id].fields["limits_cpus"] == "1"

    with pytest.raises(InkError) as bad:
        await make(server="nope").provision(owner_slug=uuid.uuid4().hex, tier=Tier.free)
    assert bad.value.argument == "INKMCP_COOLIFY_DB_SERVER" and "run-1" in str(bad.value)

    # the project's server is unreachable: a clear error naming it, and nothing created elsewhere
    other = await _project(store, box)
    async with store.sessionmaker.begin() as s:
        s.add(Service(project_id=other, name="web", service_type="webapp", mode="persistent",
                      repo_url="https://example.com/r.git", provider_ref={"coolify": {"server_uuid": servers[0].uuid}}))
    standin.set_server_unreachable(servers[0].uuid)
    before = _creates(standin)
    with pytest.raises(ProviderError, match=r"run-1.*not reachable"):
        await make().provision(owner_slug=other.hex, tier=Tier.free)
    assert _creates(standin) == before

    with pytest.raises(InvalidArgument):
        await make().drop("../servers")


async def test_server_lost_while_starting_fails_fast_and_the_repeat_starts_it(
        standin: CoolifyStandin, make: Make, store: Store) -> None:
    [server] = standin.add_servers(1)
    standin.status_delay = 0.3
    box = SecretBox([Fernet.generate_key()])
    project_id = await _project(store, box)
    standin.delay_next("POST", "/databases/postgresql", 0.01, after=True)  # create, then make the node unreachable

    async def cut() -> None:
        while not standin.databases:
            await asyncio.sleep(0.01)
        standin.set_server_unreachable(server.uuid)

    cutter = asyncio.create_task(cut())
    with pytest.raises(ProviderError, match="unreachable"):
        await make(start_timeout=30).provision(owner_slug=project_id.hex, tier=Tier.free)
    await cutter
    [db] = standin.databases.values()
    assert db.status == "exited"
    standin.set_server_unreachable(server.uuid, False)
    handle = await make().provision(owner_slug=project_id.hex, tier=Tier.free)
    assert handle.external_id == db.uuid and db.status == "running:healthy" and _creates(standin) == 1
    assert standin.request_count(method="POST", path=f"/databases/{db.uuid}/start") == 1


@pytest.mark.parametrize("after", [False, True], ids=["500-before-save", "500-after-save"])
async def test_500_on_create_is_retried_only_when_nothing_was_made(standin: CoolifyStandin, make: Make,
                                                                   store: Store, after: bool) -> None:
    standin.add_servers(1)
    box = SecretBox([Fernet.generate_key()])
    project_id = await _project(store, box)
    standin.fail_next("POST", "/databases/postgresql", status=500, after=after)
    handle = await make().provision(owner_slug=project_id.hex, tier=Tier.free)
    assert list(standin.databases) == [handle.external_id]
    # after the save: the lookup adopts it (one POST); before: the lookup shows nothing, so a second POST
    assert _creates(standin) == (1 if after else 2)
    assert standin.databases[handle.external_id].fields["postgres_password"] == \
        handle.credentials.password.get_secret_value()


@pytest.mark.parametrize("after", [True, False], ids=["saved-then-late", "late-then-saved"])
async def test_timeout_on_create_is_found_again_not_duplicated(standin: CoolifyStandin, make: Make, store: Store,
                                                               after: bool) -> None:
    standin.add_servers(1)
    box = SecretBox([Fernet.generate_key()])
    project_id = await _project(store, box)
    standin.delay_next("POST", "/databases/postgresql", 1.0, after=after)
    provider = make(timeout=0.3)
    handle = await provider.provision(owner_slug=project_id.hex, tier=Tier.free)
    assert list(standin.databases) == [handle.external_id]
    await asyncio.wait_for(_until(lambda: _creates(standin) >= 1), 5)  # logged once its late answer is out
    assert _creates(standin) == 1
    assert (await _ref(store, project_id))["database_uuid"] == handle.external_id


async def test_lost_answers_are_looked_up_and_a_late_create_is_adopted_next_time(
        standin: CoolifyStandin, make: Make, store: Store) -> None:
    """No answer and nothing to be seen within the grace: the call fails retryable, records no database uuid and
    does not create again; a create that lands later is adopted by the next provision instead of duplicated."""
    standin.add_servers(1)
    box = SecretBox([Fernet.generate_key()])
    project_id = await _project(store, box)
    standin.drop_next("POST", "/databases/postgresql", after=False)  # connection lost before Coolify acted
    with pytest.raises(ProviderError, match="looks for it again"):
        await make(lookup_grace=0).provision(owner_slug=project_id.hex, tier=Tier.free)
    assert not standin.databases and "database_uuid" not in await _ref(store, project_id)

    standin.delay_next("POST", "/databases/postgresql", 1.0, after=False)  # Coolify acts after we gave up
    with pytest.raises(ProviderError, match="looks for it again"):
        await make(lookup_grace=0, timeout=0.3).provision(owner_slug=project_id.hex, tier=Tier.free)
    await asyncio.wait_for(_until(lambda: len(standin.databases) == 1), 5)
    [late] = standin.databases
    handle = await make().provision(owner_slug=project_id.hex, tier=Tier.free)
    assert handle.external_id == late and list(standin.databases) == [late]
    assert (await _ref(store, project_id))["database_uuid"] == late

    other = await _project(store, box)
    standin.drop_next("POST", "/databases/postgresql", after=True)  # made, then the answer lost: found at once
    handle = await make(lookup_grace=0).provision(owner_slug=other.hex, tier=Tier.free)
    assert len(standin.databases) == 2 and handle.external_id in standin.databases


async def test_duplicates_converge_to_the_oldest_and_drop_refuses_foreign(standin: CoolifyStandin, make: Make,
                                                                           store: Store) -> None:
    standin.add_servers(1)
    box = SecretBox([Fernet.generate_key()])
    project_id = await _project(store, box)
    first = await make().provision(owner_slug=project_id.hex, tier=Tier.free)
    second_provider = make()
    body = standin.requests_of(method="POST", path="/databases/postgresql")[0].body  # type: ignore[attr-defined]
    await second_provider.client.request("POST", "/databases/postgresql", json=body)  # a racing replica's twin
    assert len(standin.databases) == 2
    handle = await second_provider.provision(owner_slug=project_id.hex, tier=Tier.free)
    assert handle.external_id == first.external_id  # the recorded one is kept, the twin deleted
    [twin] = set(standin.databases) - {first.external_id}
    assert standin.databases[twin].delete_at is not None  # queued (Coolify deletes asynchronously)
    assert await second_provider._get(twin) is None or await _gone(second_provider, twin)
    # without records (no store), replicas agree on the oldest (ties by uuid)
    other = uuid.uuid4().hex
    a = await make(with_store=False).provision(owner_slug=other, tier=Tier.free)
    twin = (await second_provider.client.request("POST", "/databases/postgresql", json=standin.requests_of(
        method="POST", path="/databases/postgresql")[-1].body)).json()["uuid"]  # type: ignore[attr-defined]
    keep = min((standin.databases[u].created_at, u) for u in (a.external_id, twin))[1]
    b = await make(with_store=False).provision(owner_slug=other, tier=Tier.free)
    assert b.external_id == keep

    foreign = await second_provider.client.request("POST", "/databases/postgresql", json={
        **{k: body[k] for k in ("project_uuid", "environment_name", "environment_uuid", "server_uuid")},
        "name": "someone-elses"})
    with pytest.raises(InvalidArgument, match="not created by InkMCP"):
        await second_provider.drop(foreign.json()["uuid"])
    assert foreign.json()["uuid"] in standin.databases


async def test_stand_in_refuses_what_coolify_refuses_for_postgres(standin: CoolifyStandin, make: Make,
                                                                  store: Store) -> None:
    """The stand-in enforces ValidationPatterns' identifier and password rules (so the provider's names and
    passwords are proven acceptable), and a 422 reaches the caller as a clear error, not retried."""
    [server] = standin.add_servers(1)
    provider = make()
    handle = await provider.provision(owner_slug=uuid.uuid4().hex, tier=Tier.free)  # ours pass
    body = standin.requests_of(method="POST", path="/databases/postgresql")[0].body  # type: ignore[attr-defined]
    base = {k: body[k] for k in ("project_uuid", "environment_name", "environment_uuid", "server_uuid")}
    for key, value, message in (("postgres_user", "my-user", "The postgres user field format is invalid."),
                                ("postgres_db", "1db", "The postgres db field format is invalid."),
                                ("postgres_password", "a b;c", "The postgres password field format is invalid."),
                                ("postgres_user", "u" * 64, "The postgres user field must not be greater than 63 "
                                                            "characters.")):
        with pytest.raises(Exception) as refused:
            await provider.client.request("POST", "/databases/postgresql", json={**base, key: value})
        assert message in str(refused.value), str(refused.value)
    with pytest.raises(Exception, match="at least 2 characters"):
        await provider.client.request("POST", "/databases/postgresql", json={**base, "tags": [" A "]})
    assert len(standin.databases) == 1 and server.uuid == standin.databases[handle.external_id].server_uuid


async def test_missing_read_sensitive_is_named(standin: CoolifyStandin, spec: CoolifySpec, store: Store) -> None:
    standin.add_servers(1)
    token = standin.add_token("read", "write", "deploy")
    client = CoolifyClient(standin.url, token, validate_with=spec, retry=FAST)
    provider = CoolifyDatabaseProvider(client, CoolifyDatabaseSettings(**QUICK), sessions=store.sessionmaker)  # type: ignore[arg-type]
    try:
        with pytest.raises(ProviderError, match="read:sensitive") as e:
            await provider.provision(owner_slug=uuid.uuid4().hex, tier=Tier.free)
        assert e.value.argument == "INKMCP_COOLIFY_TOKEN"
    finally:
        await provider.close()
    assert standin.request_violations == []


async def test_new_project_goes_to_placements_roomiest_server(standin: CoolifyStandin, make: Make, store: Store,
                                                              token: str, spec: CoolifySpec) -> None:
    """No service placed yet and no server setting: placement's view decides (most free memory among its targets;
    a server without configured capacity or without a wildcard domain is not a target)."""
    servers = standin.add_servers(3)
    bare = standin.add_server("10.77.0.60", name="no-wildcard", usable=True)  # no wildcard domain: never a target
    settings = PlacementSettings(nodes={"run-1": NodeCapacity(memory_mb=2048, cpus=2),
                                        "run-2": NodeCapacity(memory_mb=16384, cpus=8),
                                        "run-3": NodeCapacity(memory_mb=8192, cpus=4),
                                        "no-wildcard": NodeCapacity(memory_mb=65536, cpus=32)})
    async with CoolifyClient(standin.url, token, validate_with=spec, retry=FAST) as lister:
        placement = PlacementService(store.sessionmaker, CoolifyNodeSource(lister, settings), settings.policy())
        box = SecretBox([Fernet.generate_key()])
        project_id = await _project(store, box)
        handle = await make(placement=placement).provision(owner_slug=project_id.hex, tier=Tier.free)
    assert standin.databases[handle.external_id].server_uuid == servers[1].uuid != bare.uuid


async def test_the_databases_limits_are_reserved_on_its_server_refused_when_full_and_released_on_drop(
        standin: CoolifyStandin, make: Make, store: Store, token: str, spec: CoolifySpec) -> None:
    """The database's memory/CPU count on its run server in placement (so services are not packed into room it
    uses), checked before Coolify is asked to create it, given back when it is dropped."""
    servers = standin.add_servers(2)
    settings = PlacementSettings(nodes={"run-1": NodeCapacity(memory_mb=2048, cpus=2),
                                        "run-2": NodeCapacity(memory_mb=1536, cpus=2)}, node_cache_seconds=0)
    box = SecretBox([Fernet.generate_key()])
    async with CoolifyClient(standin.url, token, validate_with=spec, retry=FAST) as lister:
        placement = PlacementService(store.sessionmaker, CoolifyNodeSource(lister, settings), settings.policy())

        def load(server: int) -> tuple[int, int, int]:
            return next((st.load.memory_mb, st.load.millicpus, st.load.databases) for st in statuses
                        if st.node.uuid == servers[server].uuid)

        first = await _project(store, box)
        handle = await make(placement=placement).provision(owner_slug=first.hex, tier=Tier.standard)
        assert standin.databases[handle.external_id].server_uuid == servers[0].uuid  # the roomiest
        reserved = await placement.database_reservation(str(first))
        assert reserved is not None and (reserved.node_uuid, reserved.memory_mb, reserved.millicpus) == (
            servers[0].uuid, 1024, 1000)
        statuses = await placement.status()
        assert load(0) == (1024, 1000, 1) and load(1) == (0, 0, 0)

        # a project whose services run on run-2: its database goes there, and the second one finds no room
        second, third = await _project(store, box), await _project(store, box)
        async with store.sessionmaker.begin() as s:
            for i, pid in enumerate((second, third)):
                s.add(Service(project_id=pid, name=f"s{i}", service_type="webapp", mode="persistent",
                              repo_url="https://example.com/r.git",
                              provider_ref={"coolify": {"server_uuid": servers[1].uuid}}))
        await make(placement=placement).provision(owner_slug=second.hex, tier=Tier.standard)
        creates = _creates(standin)
        with pytest.raises(ProviderError) as full:
            await make(placement=placement).provision(owner_slug=third.hex, tier=Tier.standard)
        msg = str(full.value)
        assert "the project's database must run on the run server of the project's services" in msg
        assert "has no room for it" in msg and "512 MiB of memory" in msg and "1024 MiB" in msg
        assert "run-2" not in msg and servers[1].uuid not in msg
        assert _creates(standin) == creates and await _ref(store, third) == {}  # Coolify was not asked
        assert await placement.database_reservation(str(third)) is None

        # a repeat of a made one keeps its reservation as is; a drop gives the room back
        assert (await make(placement=placement).provision(owner_slug=first.hex, tier=Tier.standard)
                ).external_id == handle.external_id
        assert await placement.database_reservation(str(first)) == reserved
        await make(placement=placement).drop(handle.external_id)
        assert await placement.database_reservation(str(first)) is None
        statuses = await placement.status()
        assert load(0) == (0, 0, 0) and load(1) == (1024, 1000, 1)


async def test_waiting_for_running_reports_progress_and_is_bounded(standin: CoolifyStandin, make: Make,
                                                                    store: Store) -> None:
    standin.add_servers(1)
    standin.status_delay = 30.0  # StartDatabase takes longer than the bound
    box = SecretBox([Fernet.generate_key()])
    project_id = await _project(store, box)
    lines: list[str] = []

    async def progress(line: str) -> None:
        lines.append(line)

    with pytest.raises(ProviderError) as late:
        await make(start_timeout=0.5, progress=progress).provision(owner_slug=project_id.hex, tier=Tier.free)
    assert late.value.argument == "INKMCP_COOLIFY_DB_START_TIMEOUT" and "status exited" in str(late.value)
    [db] = standin.databases.values()
    assert lines and lines[0].startswith(f"database {db.uuid}: exited")
    # the start job was queued by instant_deploy; once it has run, the repeat adopts the same database
    standin.status_delay = 0.02
    db.status_at = 0.0
    handle = await make().provision(owner_slug=project_id.hex, tier=Tier.free)
    assert handle.external_id == db.uuid and _creates(standin) == 1


async def _gone(provider: CoolifyDatabaseProvider, db_uuid: str, timeout: float = 5.0) -> bool:
    """Poll Coolify (each request lets the stand-in run its queued jobs) until the database is deleted."""
    async with asyncio.timeout(timeout):
        while await provider._get(db_uuid) is not None:
            await asyncio.sleep(0.02)
    return True


async def _until(probe: Callable[[], bool]) -> None:
    while not probe():
        await asyncio.sleep(0.01)


async def test_choose_default_picks_coolify_when_configured_and_neon_first(make: Make) -> None:
    from inkmcp.providers.database.select import choose_default

    coolify = make()
    own, neon = type("Own", (), {"name": "postgres"})(), type("Neon", (), {"name": "neon"})()
    default, providers = choose_default(own, coolify=coolify)  # type: ignore[arg-type]
    assert default is coolify and set(providers) == {"postgres", "coolify"}
    assert choose_default(own, neon=neon, coolify=coolify)[0] is neon  # type: ignore[arg-type]
    assert choose_default(own, neon=neon, coolify=coolify, choice="coolify")[0] is coolify  # type: ignore[arg-type]
