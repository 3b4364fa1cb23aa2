from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from inkmcp.store.crypto import (
    ENV_VAR,
    DecryptionError,
    SecretBox,
    add_primary_key,
    encrypted_columns,
    ensure_key_file,
    retire_old_keys,
    rotate_all,
)
from inkmcp.store.db import Store
from inkmcp.store.models import Account, Database, EnvVar, Project, Service


def test_round_trip_and_repr_hides_keys() -> None:
    key = Fernet.generate_key().decode()
    box = SecretBox([key])
    token = box.encrypt("s3cret")
    assert b"s3cret" not in token
    assert box.decrypt(token) == b"s3cret"
    assert box.decrypt(box.encrypt(b"\x00bytes")) == b"\x00bytes"
    assert key not in repr(box)


def test_invalid_key_message_does_not_echo_key() -> None:
    with pytest.raises(ValueError, match="invalid Fernet key") as exc:
        SecretBox(["not-a-real-key-but-secret"])
    assert "not-a-real-key-but-secret" not in str(exc.value)
    assert exc.value.__cause__ is None


def test_key_file_created_0600_and_rotation_keeps_old_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    box1 = SecretBox.load(tmp_path)
    key_file = tmp_path / "secrets" / "encryption.keys"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert SecretBox.load(tmp_path).decrypt(box1.encrypt("x")) == b"x"  # same key on reload
    old = box1.encrypt("before")

    add_primary_key(key_file)
    box2 = SecretBox.load(tmp_path)
    assert box2.key_count == 2
    assert box2.decrypt(old) == b"before"
    rotated = box2.rotate(old)
    retire_old_keys(key_file)
    box3 = SecretBox.load(tmp_path)
    assert box3.key_count == 1
    assert box3.decrypt(rotated) == b"before"
    with pytest.raises(DecryptionError):
        box3.decrypt(old)


def test_env_var_overrides_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k1, k2 = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv(ENV_VAR, f"{k1}, {k2}")
    box = SecretBox.load(tmp_path)
    assert box.key_count == 2
    assert not (tmp_path / "secrets").exists()
    assert SecretBox([k1]).decrypt(box.encrypt("p")) == b"p"  # first key is primary


def test_ensure_key_file_rejects_empty(tmp_path: Path) -> None:
    f = tmp_path / "k"
    f.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no keys"):
        ensure_key_file(f)


def test_encrypted_columns_cover_schema() -> None:
    assert {(t, c) for t, _, c in encrypted_columns()} == {
        ("env_vars", "value_enc"),
        ("databases", "credentials_enc"),
        ("services", "repo_url_enc"),
        ("shared_keys", "value_enc"),  # the MAC key and the key check replicas share (issue 8 item 7)
        ("github_identities", "token_enc"),  # the GitHub token of a signed-in user (issue 11)
        ("github_deploy_keys", "private_key_enc"),  # --- ghkeys: a service's deploy key (issue 11, Coolify compute)
    }


async def test_rotate_all_reencrypts_every_secret_column(store: Store, tmp_path: Path) -> None:
    key_file = tmp_path / "encryption.keys"
    box_old = SecretBox(ensure_key_file(key_file))
    plaintexts = {f"env-secret-{i}-{uuid.uuid4().hex}" for i in range(5)}
    db_secret = f"db-secret-{uuid.uuid4().hex}"
    async with store.session() as s, s.begin():
        acct = Account(name=f"rot-{uuid.uuid4().hex[:8]}")
        s.add(acct)
        await s.flush()
        proj = Project(account_id=acct.id, name=f"p-{uuid.uuid4().hex[:8]}")  # project names are global
        s.add(proj)
        await s.flush()
        repo_secret = f"https://ghp_secret{uuid.uuid4().hex}@git.example/a.git"
        for name, enc in (("with-token", box_old.encrypt(repo_secret)), ("public", None)):  # NULL is skipped
            s.add(Service(project_id=proj.id, name=name, service_type="webapp", mode="persistent",
                          repo_url="https://***@git.example/a.git", repo_url_enc=enc, settings={}))
        for i, p in enumerate(sorted(plaintexts)):
            s.add(EnvVar(project_id=proj.id, scope="*", key=f"K{i}", value_enc=box_old.encrypt(p)))
        s.add(Database(project_id=proj.id, provider="postgres", tier="free", external_id="ink_x",
                       credentials_enc=box_old.encrypt(db_secret)))

    add_primary_key(key_file)
    box_both = SecretBox(ensure_key_file(key_file))
    n = await rotate_all(store, box_both)
    assert n >= len(plaintexts) + 1

    retire_old_keys(key_file)
    box_new = SecretBox(ensure_key_file(key_file))
    async with store.session() as s:
        env_tokens = (await s.execute(select(EnvVar.value_enc).where(EnvVar.project_id == proj.id))).scalars().all()
        db_q = select(Database.credentials_enc).where(Database.project_id == proj.id)
        db_token = (await s.execute(db_q)).scalar_one()
        repo_tokens = dict((await s.execute(
            select(Service.name, Service.repo_url_enc).where(Service.project_id == proj.id))).all())
    assert {box_new.decrypt(t).decode() for t in env_tokens} == plaintexts
    assert box_new.decrypt(db_token).decode() == db_secret
    assert box_new.decrypt(repo_tokens["with-token"]).decode() == repo_secret
    assert repo_tokens["public"] is None
    for raw in [*env_tokens, db_token, repo_tokens["with-token"]]:
        assert b"secret" not in bytes(raw)
        with pytest.raises(DecryptionError):
            box_old.decrypt(raw)  # really re-encrypted, not just still readable
