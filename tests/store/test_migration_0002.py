"""Migration 0002 on a store with data: duplicates stop it unchanged; credentials are redacted."""

from __future__ import annotations

import uuid

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from inkmcp.store.db import alembic_config, migrate
from inkmcp.store.embedded import EmbeddedPostgres

from .conftest import create_database


def _at_0001(pg: EmbeddedPostgres) -> str:
    url = create_database(pg, "m2")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
    finally:
        engine.dispose()
    return url


def _exec(url: str, sql: str, **params: object) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            res = conn.execute(text(sql), params)
            return [tuple(r) for r in res] if res.returns_rows else []
    finally:
        engine.dispose()


def _account(url: str, name: str) -> uuid.UUID:
    aid = uuid.uuid4()
    _exec(url, "INSERT INTO accounts (id, name) VALUES (:i, :n)", i=aid, n=name)
    return aid


def _project(url: str, account: uuid.UUID, name: str, repo_url: str | None = None) -> uuid.UUID:
    pid = uuid.uuid4()
    _exec(url, "INSERT INTO projects (id, account_id, name, repo_url) VALUES (:i, :a, :n, :r)",
          i=pid, a=account, n=name, r=repo_url)
    return pid


def test_duplicate_names_stop_the_upgrade_with_the_fix_and_change_nothing(control_pg: EmbeddedPostgres) -> None:
    url = _at_0001(control_pg)
    alice, mallory = _account(url, "alice"), _account(url, "mallory")
    _project(url, alice, "shop")
    dup = _project(url, mallory, "shop")
    _project(url, alice, "unique-one", "https://alice:ghp_tok@git.example/a.git")
    with pytest.raises(Exception) as err:
        migrate(url)
    assert type(err.value).__name__ == "DuplicateProjectNames"
    msg = str(err.value)
    assert "'shop': held by alice (project id" in msg and "mallory (project id" in msg and str(dup) in msg
    assert "UPDATE projects SET name = '<new-name>' WHERE id = '<project id>';" in msg
    # rolled back whole: still 0001, old constraint, the token not yet touched
    assert _exec(url, "SELECT version_num FROM alembic_version") == [("0001",)]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            uniques = {u["name"] for u in inspect(conn).get_unique_constraints("projects")}
    finally:
        engine.dispose()
    assert "uq_projects_account_name" in uniques
    # the operator renames as told, then the upgrade goes through
    _exec(url, "UPDATE projects SET name = 'shop-mallory' WHERE id = :i", i=dup)
    migrate(url)  # through 0002 and every later revision
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert _exec(url, "SELECT version_num FROM alembic_version") == [(head,)]


def test_upgrade_redacts_stored_credentials_and_keeps_other_urls(control_pg: EmbeddedPostgres) -> None:
    url = _at_0001(control_pg)
    alice = _account(url, "alice")
    urls = {
        "tok": ("https://alice:ghp_SUPERSECRET@git.example/a.git", "https://***@git.example/a.git"),
        "at-in-pw": ("http://u:p@ss@127.0.0.1:18099/r.git", "http://***@127.0.0.1:18099/r.git"),
        "plain": ("https://git.example/a.git", "https://git.example/a.git"),
        "local": ("/srv/repos/app", "/srv/repos/app"),
    }
    for name, (before, _) in urls.items():
        pid = _project(url, alice, name, before)
        _exec(url, "INSERT INTO services (id, project_id, name, service_type, mode, repo_url, settings) "
                   "VALUES (:i, :p, 'web', 'webapp', 'persistent', :r, '{}')", i=uuid.uuid4(), p=pid, r=before)
    migrate(url)
    got = dict(_exec(url, "SELECT name, repo_url FROM projects"))
    svc = dict(_exec(url, "SELECT p.name, s.repo_url FROM services s JOIN projects p ON p.id = s.project_id"))
    for name, (_, after) in urls.items():
        assert got[name] == after and svc[name] == after, (name, got[name], svc[name])
    assert _exec(url, "SELECT count(*) FROM services WHERE repo_url_enc IS NOT NULL") == [(0,)]
