"""Migration 0003 and `inkmcp.store.refs`: provider-owned ids survive in the database, per provider."""

from __future__ import annotations

import uuid

import pytest
from alembic import command
from sqlalchemy import create_engine, select, text

from inkmcp.store.db import Store, alembic_config, migrate
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.models import Account, Deployment, Project, Service
from inkmcp.store.refs import RefNotStored, ref_of, save_ref

from .conftest import create_database


def _exec(url: str, sql: str, **params: object) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            res = conn.execute(text(sql), params)
            return [tuple(r) for r in res] if res.returns_rows else []
    finally:
        engine.dispose()


def _to(url: str, revision: str, *, down: bool = False) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, revision)
    finally:
        engine.dispose()


def test_existing_rows_get_an_empty_ref_and_downgrade_drops_it(control_pg: EmbeddedPostgres) -> None:
    url = create_database(control_pg, "m3")
    _to(url, "0002")
    aid, pid, sid, did = (uuid.uuid4() for _ in range(4))
    _exec(url, "INSERT INTO accounts (id, name) VALUES (:i, 'a')", i=aid)
    _exec(url, "INSERT INTO projects (id, account_id, name) VALUES (:i, :a, 'p')", i=pid, a=aid)
    _exec(url, "INSERT INTO services (id, project_id, name, service_type, mode, repo_url, settings) "
               "VALUES (:i, :p, 'web', 'webapp', 'persistent', 'x', '{}')", i=sid, p=pid)
    _exec(url, "INSERT INTO deployments (id, service_id, status, config_hash) VALUES (:i, :s, 'live', 'h')",
          i=did, s=sid)
    migrate(url)
    for table in ("projects", "services", "deployments"):
        assert _exec(url, f"SELECT provider_ref FROM {table}") == [({},)], table
    _to(url, "0002", down=True)
    cols = _exec(url, "SELECT table_name FROM information_schema.columns WHERE column_name = 'provider_ref'")
    assert cols == []
    assert _exec(url, "SELECT count(*) FROM deployments") == [(1,)]  # nothing else lost


async def _rows(store: Store) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    pid, sid, did = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with store.sessionmaker.begin() as s:
        account = Account(name=f"refs-{uuid.uuid4().hex[:8]}")
        s.add(account)
        await s.flush()
        s.add(Project(id=pid, account_id=account.id, name=f"refs-{uuid.uuid4().hex[:8]}"))
        await s.flush()
        s.add(Service(id=sid, project_id=pid, name="web", service_type="webapp", mode="persistent", repo_url="x",
                      settings={}))  # fmt: skip
        await s.flush()
        s.add(Deployment(id=did, service_id=sid, status="queued", config_hash="h"))
    return pid, sid, did


async def test_save_ref_replaces_only_that_providers_entry_and_is_durable(store: Store) -> None:
    pid, sid, did = await _rows(store)
    sessions = store.sessionmaker
    await save_ref(sessions, "service", sid, "coolify", {"apps": {"web": "a" * 24}, "server": "s" * 24})
    await save_ref(sessions, "service", sid, "fake", {"apps": {"web": "f1"}})
    await save_ref(sessions, "service", sid, "coolify", {"apps": {"web": "a" * 24, "worker": "b" * 24},
                                                         "server": "s" * 24})  # fmt: skip
    await save_ref(sessions, "deployment", did, "coolify", {"deployments": {"web": "d" * 24}})
    await save_ref(sessions, "project", pid, "coolify", {"project_uuid": "p" * 24})
    # a new session (as another process would open) reads what was committed
    async with sessions() as s:
        svc = (await s.execute(select(Service.provider_ref).where(Service.id == sid))).scalar_one()
        dep = (await s.execute(select(Deployment.provider_ref).where(Deployment.id == did))).scalar_one()
        proj = (await s.execute(select(Project.provider_ref).where(Project.id == pid))).scalar_one()
    assert ref_of(svc, "coolify") == {"apps": {"web": "a" * 24, "worker": "b" * 24}, "server": "s" * 24}
    assert ref_of(svc, "fake") == {"apps": {"web": "f1"}}  # another provider's entry untouched
    assert ref_of(svc, "local") == {}
    assert ref_of(dep, "coolify") == {"deployments": {"web": "d" * 24}}
    assert ref_of(proj, "coolify") == {"project_uuid": "p" * 24}


async def test_save_ref_refuses_what_it_cannot_store(store: Store) -> None:
    _, sid, _ = await _rows(store)
    sessions = store.sessionmaker
    with pytest.raises(ValueError, match="plain JSON"):
        await save_ref(sessions, "service", sid, "fake", {"when": object()})
    with pytest.raises(ValueError, match="unknown ref scope 'server'; pass one of project, service, deployment"):
        await save_ref(sessions, "server", sid, "fake", {})
    with pytest.raises(ValueError, match="under 65536 bytes"):
        await save_ref(sessions, "service", sid, "fake", {"log": "x" * 70_000})
    with pytest.raises(RefNotStored, match="was deleted"):
        await save_ref(sessions, "deployment", uuid.uuid4(), "fake", {"deployments": {}})
