"""What replicas must agree on comes from shared settings or the database, not from a data dir (issue 8 item 7):
the MAC key behind no-op detection, the encryption keys (checked), and what stays per replica (its id)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from inkmcp.core.leases import ReplicaSettings, replica_id_of
from inkmcp.errors import InkError
from inkmcp.store.crypto import (
    ENV_VAR,
    MAC_ENV_VAR,
    MAC_KEY_RELATIVE,
    SecretBox,
    check_shared_keys,
    rotate_all,
    shared_mac_key,
)
from inkmcp.store.db import Store, migrate, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from tests.store import conftest as _store_fixtures

embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg


@pytest.fixture
async def store(control_pg: EmbeddedPostgres) -> AsyncIterator[Store]:
    url = _store_fixtures.create_database(control_pg, "keys")
    await asyncio.to_thread(migrate, url)
    s = await open_store(url, pool_size=2, max_overflow=2)
    yield s
    await s.close()


@pytest.fixture(autouse=True)
def no_key_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (MAC_ENV_VAR, ENV_VAR, "INKMCP_REPLICA_ID", "INKMCP_LEASE_SECONDS", "INKMCP_HEARTBEAT_SECONDS"):
        monkeypatch.delenv(var, raising=False)


async def test_the_mac_key_is_shared_through_the_database_adopting_an_existing_data_dir_key(
    store: Store, tmp_path: Path
) -> None:
    box = SecretBox([Fernet.generate_key()])
    legacy = secrets.token_bytes(32)
    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    (first_dir / MAC_KEY_RELATIVE).parent.mkdir(parents=True)
    (first_dir / MAC_KEY_RELATIVE).write_bytes(legacy)  # a one-machine install from before replicas
    assert await shared_mac_key(store.sessionmaker, box, first_dir / MAC_KEY_RELATIVE) == legacy
    # another replica with its own (empty) data dir gets the same key, and writes no file
    assert await shared_mac_key(store.sessionmaker, box, second_dir / MAC_KEY_RELATIVE) == legacy
    assert not (second_dir / MAC_KEY_RELATIVE).exists()
    # a data dir with a different key file does not win over the database
    (second_dir / MAC_KEY_RELATIVE).parent.mkdir(parents=True)
    (second_dir / MAC_KEY_RELATIVE).write_bytes(secrets.token_bytes(32))
    assert await shared_mac_key(store.sessionmaker, box, second_dir / MAC_KEY_RELATIVE) == legacy


async def test_concurrent_first_starts_agree_on_one_fresh_mac_key(store: Store) -> None:
    box = SecretBox([Fernet.generate_key()])
    keys = await asyncio.gather(*(shared_mac_key(store.sessionmaker, box, None) for _ in range(6)))
    assert len(set(keys)) == 1 and len(keys[0]) == 32


async def test_the_mac_key_setting_wins_and_a_bad_one_names_the_setting(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = SecretBox([Fernet.generate_key()])
    key = secrets.token_bytes(32)
    monkeypatch.setenv(MAC_ENV_VAR, key.hex())
    assert await shared_mac_key(store.sessionmaker, box, None) == key
    monkeypatch.setenv(MAC_ENV_VAR, "too-short")
    with pytest.raises(InkError) as e:
        await shared_mac_key(store.sessionmaker, box, None)
    assert e.value.argument == MAC_ENV_VAR and "token_hex(32)" in (e.value.fix or "")
    assert "too-short" not in str(e.value)


async def test_a_replica_with_other_encryption_keys_refuses_to_start_naming_the_setting(store: Store) -> None:
    old_key = Fernet.generate_key()
    shared = SecretBox([old_key])
    await check_shared_keys(store.sessionmaker, shared)
    mac = await shared_mac_key(store.sessionmaker, shared, None)
    stranger = SecretBox([Fernet.generate_key()])  # e.g. a second replica that made its own key file
    with pytest.raises(InkError) as e:
        await check_shared_keys(store.sessionmaker, stranger)
    assert e.value.argument == ENV_VAR and "same" in (e.value.fix or "")
    with pytest.raises(InkError):
        await shared_mac_key(store.sessionmaker, stranger, None)
    # key rotation re-encrypts the shared rows too: afterwards the new key alone reads them
    new_key = Fernet.generate_key()
    assert await rotate_all(store, SecretBox([new_key, old_key])) == 2
    only_new = SecretBox([new_key])
    await check_shared_keys(store.sessionmaker, only_new)
    assert await shared_mac_key(store.sessionmaker, only_new, None) == mac


def test_replica_ids_are_per_data_dir_and_stable(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert replica_id_of(one) == replica_id_of(one) != replica_id_of(two)
    assert ReplicaSettings().config(one).replica_id == replica_id_of(one)
    assert ReplicaSettings(replica_id="web-1").config(one).replica_id == "web-1"


def test_a_heartbeat_too_slow_for_the_lease_is_refused_naming_both_settings() -> None:
    with pytest.raises(ValidationError) as e:
        ReplicaSettings(lease_seconds=10, heartbeat_seconds=5)
    assert "INKMCP_HEARTBEAT_SECONDS" in str(e.value) and "INKMCP_LEASE_SECONDS" in str(e.value)
