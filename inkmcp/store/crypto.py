"""Encryption at rest for the store's secret columns (`*_enc`), with rotatable keys.

Fernet (AES-128-CBC + HMAC-SHA256, with a timestamp) via MultiFernet: the first key encrypts, every
key decrypts. Rotation is therefore three steps, none of which loses data:

1. `add_primary_key(key_file)`  new key first, old keys kept (restart/reload so processes see it);
2. `await rotate_all(store, box)`  re-encrypt every `*_enc` value under the new key, one transaction;
3. `retire_old_keys(key_file)`  drop the old keys.

Keys come from INKMCP_ENCRYPTION_KEYS (comma-separated, first = primary) when set, so an operator
can keep them in a secret manager; otherwise from `<data_dir>/secrets/encryption.keys` (one key per
line, 0600), created with one fresh key on first start. Nothing here logs a key or a plaintext, and
`SecretBox` has no repr that could leak one.

More than one replica (issue 8 item 7): everything replicas must agree on comes from shared settings or the
database, never from one replica's data dir.

* Encryption keys: INKMCP_ENCRYPTION_KEYS, the same value on every replica (the data-dir key file is the
  one-machine default). `check_shared_keys` stores a check value in `shared_keys` on first start and refuses
  to start a replica whose keys cannot read it, naming the setting: otherwise it would write secrets the
  other replicas cannot read.
* The MAC key behind the "same deploy again is a no-op" check (`config_hash`) and env revisions:
  INKMCP_MAC_KEY when set; otherwise `shared_mac_key` keeps it in `shared_keys`, sealed by the encryption
  keys. The first start adopts an existing `<data_dir>/secrets/mac.key` (so one-machine installs keep their
  hashes, and their first redeploy after the upgrade is still a no-op), else makes a fresh one; every later
  start of any replica reads that row. Both rows are `*_enc` values, so `rotate_all` re-encrypts them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.errors import InkError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from inkmcp.store.db import Store

log = logging.getLogger(__name__)

ENV_VAR = "INKMCP_ENCRYPTION_KEYS"
KEY_FILE_RELATIVE = Path("secrets") / "encryption.keys"


class DecryptionError(Exception):
    """A token was not made by any configured key (wrong key set, or tampered data)."""


class SecretBox:
    """Encrypts with the primary (first) key, decrypts with any key."""

    __slots__ = ("_fernet", "_n_keys")

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise ValueError("SecretBox needs at least one Fernet key")
        try:
            fernets = [Fernet(k) for k in keys]
        except (ValueError, TypeError):
            # Do not chain: the original message could quote the key material.
            raise ValueError(
                "invalid Fernet key: each key must be 32 url-safe base64-encoded bytes "
                "(generate one with `Fernet.generate_key()`)"
            ) from None
        self._fernet = MultiFernet(fernets)
        self._n_keys = len(fernets)

    def __repr__(self) -> str:
        return f"SecretBox(<{self._n_keys} key(s)>)"

    @property
    def key_count(self) -> int:
        return self._n_keys

    @classmethod
    def load(cls, data_dir: Path) -> SecretBox:
        """Keys from INKMCP_ENCRYPTION_KEYS, else from the data dir key file (created if missing)."""
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            return cls([k.strip() for k in env.split(",") if k.strip()])
        return cls(ensure_key_file(Path(data_dir) / KEY_FILE_RELATIVE))

    def encrypt(self, data: bytes | str) -> bytes:
        if isinstance(data, str):
            data = data.encode()
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise DecryptionError(
                "secret value cannot be decrypted with the configured keys; was a key removed "
                f"before rotate_all ran? (check {ENV_VAR} or {KEY_FILE_RELATIVE})"
            ) from None

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt `token` under the primary key (keeps its original timestamp)."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken:
            raise DecryptionError("secret value cannot be decrypted with the configured keys") from None


def _read_keys(key_file: Path) -> list[str]:
    keys = []
    for line in key_file.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.extend(k.strip() for k in line.split(",") if k.strip())
    return keys


def _write_keys(key_file: Path, keys: Sequence[str]) -> None:
    """Atomic 0600 write: a crash mid-write must never leave a truncated key file."""
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = key_file.with_name(f".{key_file.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# InkMCP encryption keys, newest (primary) first. Keep this file secret and backed up.\n")
        f.write("".join(f"{k}\n" for k in keys))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, key_file)


def ensure_key_file(key_file: Path) -> list[str]:
    """Return the keys in `key_file`, creating it with one new key the first time."""
    try:
        keys = _read_keys(key_file)
    except FileNotFoundError:
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Fernet.generate_key().decode()
        fd_tmp = key_file.with_name(f".{key_file.name}.{os.getpid()}.new")
        _write_keys(fd_tmp, [key])
        try:
            os.link(fd_tmp, key_file)  # atomic "create if absent": two first starts agree on one key
        except FileExistsError:
            pass
        finally:
            fd_tmp.unlink(missing_ok=True)
        keys = _read_keys(key_file)
        log.info("created encryption key file %s", key_file)
    if not keys:
        raise ValueError(f"{key_file} holds no keys; restore it from backup")
    return keys


def add_primary_key(key_file: Path, key: str | None = None) -> None:
    """Prepend a new primary key; older keys stay for decrypting existing values."""
    keys = ensure_key_file(key_file)
    new = key or Fernet.generate_key().decode()
    Fernet(new)  # validate before writing
    _write_keys(key_file, [new, *[k for k in keys if k != new]])
    log.info("added a new primary encryption key to %s (%d keys now)", key_file, len(keys) + 1)


def retire_old_keys(key_file: Path) -> None:
    """Keep only the primary key. Run only after `rotate_all` committed."""
    keys = ensure_key_file(key_file)
    _write_keys(key_file, keys[:1])


def encrypted_columns() -> list[tuple[str, str, str]]:
    """(table, primary key column, column) for every `*_enc` column in the schema.

    Discovered from the models so a new secret column is rotated without touching this module.
    """
    from inkmcp.store.models import Base

    out = []
    for table in Base.metadata.sorted_tables:
        pk = list(table.primary_key.columns)
        for col in table.columns:
            if col.name.endswith("_enc"):
                assert len(pk) == 1, f"{table.name} needs a single-column primary key for rotation"
                out.append((table.name, pk[0].name, col.name))
    return out


async def rotate_all(store: Store, box: SecretBox) -> int:
    """Re-encrypt every `*_enc` value under `box`'s primary key, in one transaction.

    Rows are locked (FOR UPDATE) so a concurrent writer cannot slip in a value under the old key
    between our read and our commit. Returns the number of values rewritten. If any value cannot
    be decrypted, nothing is changed and DecryptionError names the table and column.
    """
    from sqlalchemy import bindparam, column, select, table, update

    count = 0
    async with store.session() as session, session.begin():
        for table_name, pk_name, col_name in encrypted_columns():
            t = table(table_name, column(pk_name), column(col_name))
            rows = (
                await session.execute(
                    select(t.c[pk_name], t.c[col_name]).where(t.c[col_name].is_not(None)).with_for_update()
                )
            ).all()  # nullable secret columns (services.repo_url_enc) hold NULL when there is no secret
            updates = []
            for pk, token in rows:
                try:
                    updates.append({"_pk": pk, "_v": box.rotate(bytes(token))})
                except DecryptionError:
                    raise DecryptionError(
                        f"{table_name}.{col_name} row {pk} cannot be decrypted with the configured keys; "
                        "nothing was rotated"
                    ) from None
            if updates:
                stmt = (
                    update(t)
                    .where(t.c[pk_name] == bindparam("_pk"))
                    .values({col_name: bindparam("_v")})
                )
                conn = await session.connection()
                await conn.execute(stmt, updates)
                count += len(updates)
    log.info("re-encrypted %d secret values under the primary key", count)
    return count


# ---------------------------------------------------------------------------------------------------------------
# Keys shared by replicas (issue 8 item 7)
# ---------------------------------------------------------------------------------------------------------------

MAC_ENV_VAR = "INKMCP_MAC_KEY"
MAC_KEY_RELATIVE = Path("secrets") / "mac.key"
MAC_KEY_ROW = "mac"
BOX_CHECK_ROW = "encryption-check"
MIN_MAC_BYTES = 32


class KeySettings(BaseSettings):
    """Key settings every replica must share. Wired in inkmcp/app.py (`shared_mac_key`)."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_", extra="ignore")

    mac_key: SecretStr | None = Field(
        default=None,
        description="the MAC key behind no-op detection and env revisions: at least 32 bytes as hex or url-safe "
        "base64, the same on every replica. Unset: kept in the database (shared_keys), sealed by the encryption "
        "keys, which is what replicas normally want",
    )


def parse_mac_key(value: str) -> bytes:
    """INKMCP_MAC_KEY as bytes: hex or url-safe base64 of at least 32 bytes, else an error naming the setting."""
    value = value.strip()
    decoded: bytes | None = None
    try:
        decoded = bytes.fromhex(value)
    except ValueError:
        try:
            decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            decoded = None
    if decoded is None or len(decoded) < MIN_MAC_BYTES:
        raise InkError(
            f"{MAC_ENV_VAR} must be at least {MIN_MAC_BYTES} random bytes, written as hex or url-safe base64.",
            argument=MAC_ENV_VAR,
            fix='generate one with `python3 -c "import secrets; print(secrets.token_hex(32))"` and give every '
            "replica the same value, or unset it to keep the key in the database",
        )
    return decoded


async def _read_row(sessions: async_sessionmaker[AsyncSession], name: str) -> bytes | None:
    from sqlalchemy import select

    from inkmcp.store.models import SharedKey

    async with sessions() as s:
        value = (await s.execute(select(SharedKey.value_enc).where(SharedKey.name == name))).scalar()
    return bytes(value) if value is not None else None


async def _insert_row(sessions: async_sessionmaker[AsyncSession], name: str, token: bytes) -> None:
    """Insert unless a row exists: two replicas starting at once agree on whichever committed first."""
    from sqlalchemy.dialects.postgresql import insert

    from inkmcp.store.models import SharedKey

    async with sessions.begin() as s:
        await s.execute(insert(SharedKey).values(name=name, value_enc=token).on_conflict_do_nothing())


def _keys_differ(what: str) -> InkError:
    return InkError(
        f"this replica's encryption keys cannot read the {what} other replicas stored in the control-plane database.",
        argument=ENV_VAR,
        fix=f"give every replica sharing INKMCP_DATABASE_URL the same {ENV_VAR} (comma-separated, primary first; "
        f"copy it from the replica that started first, or from its {KEY_FILE_RELATIVE})",
    )


async def shared_value(sessions: async_sessionmaker[AsyncSession], box: SecretBox, name: str,
                       first: Callable[[], bytes], what: str) -> bytes:
    """The value every replica agrees on under `name` in `shared_keys`, sealed by the encryption keys: the first
    replica's `first()` (two starting at once agree on whichever committed first). Keys that cannot read it are
    refused, naming INKMCP_ENCRYPTION_KEYS (`what` says what could not be read)."""
    token = await _read_row(sessions, name)
    if token is None:
        await _insert_row(sessions, name, box.encrypt(first()))
        token = await _read_row(sessions, name)
    try:
        return box.decrypt(token or b"")
    except DecryptionError:
        raise _keys_differ(what) from None


async def check_shared_keys(sessions: async_sessionmaker[AsyncSession], box: SecretBox) -> None:
    """Refuse to start with encryption keys that cannot read what the database holds (see module docstring)."""
    await shared_value(sessions, box, BOX_CHECK_ROW, lambda: secrets.token_bytes(16), "check value")


async def shared_mac_key(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox, legacy_file: Path | None = None
) -> bytes:
    """The MAC key every replica uses: INKMCP_MAC_KEY, else the database's (adopting `legacy_file` first)."""
    configured = KeySettings().mac_key
    if configured is not None:
        return parse_mac_key(configured.get_secret_value())

    def first() -> bytes:
        if legacy_file is not None and legacy_file.exists():
            log.info("adopted the MAC key of %s into the control-plane database", legacy_file)
            return legacy_file.read_bytes()
        return secrets.token_bytes(MIN_MAC_BYTES)

    return await shared_value(sessions, box, MAC_KEY_ROW, first, "MAC key")
