"""Accounts and API keys.

Keys are 32 random bytes behind a `dk_live_` prefix, so a leaked key is recognisable by secret
scanners. Only their SHA-256 is stored: keys have full entropy, so a slow password hash would only
cost latency on every request without adding safety.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.core.limits import OVERRIDE_COLUMNS, AccountLimits, LimitDefaults, effective
from inkmcp.core.names import check_name
from inkmcp.core.principal import Principal
from inkmcp.errors import NotFound
from inkmcp.providers.database.base import Tier
from inkmcp.store.models import Account, ApiKey
from inkmcp.store.statements import statement_pool

KEY_PREFIX = "dk_live_"
LAST_USED_RESOLUTION = timedelta(minutes=1)
DISPLAY_CHARS = 14  # "dk_live_" + 6 characters: enough to tell keys apart, useless to an attacker
# --- cpthroughput (issue 12 item 4): serving processes cache verified keys for a few seconds (mcp/auth.py
# VerifiedKeys); a revocation notifies them on this channel in its own transaction: PostgreSQL delivers it to every
# listening server when the revocation commits, and each empties its cache on hearing it
KEYS_CHANNEL = "inkmcp_api_keys"
_NOTIFY_REVOKED = text(f"SELECT pg_notify('{KEYS_CHANNEL}', '')")
# --- end


_AUTHENTICATE = (
    "SELECT k.id, k.prefix, k.last_used_at, a.id, a.name FROM api_keys k JOIN accounts a ON a.id = k.account_id "
    "WHERE k.key_hash = %s AND k.revoked_at IS NULL"
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class IssuedKey(BaseModel):
    account: str
    key: str  # shown once
    prefix: str


class KeyInfo(BaseModel):
    id: uuid.UUID  # what the dashboard revokes by (a prefix is for people; two keys could share one)
    prefix: str
    account: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class LimitOverrides(BaseModel):
    """What `inkmcp accounts limits` sets; None = leave as is."""

    max_projects: int | None = Field(default=None, ge=0)
    max_services_per_project: int | None = Field(default=None, ge=0)
    max_databases: int | None = Field(default=None, ge=0)
    max_concurrent_builds: int | None = Field(default=None, ge=0)
    database_tiers: list[Tier] | None = None
    reset: bool = False


class AccountService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], limits: LimitDefaults | None = None) -> None:
        self._sessions = sessions
        self.limits = limits or LimitDefaults()

    async def get_limits(self, account_name: str) -> AccountLimits:
        async with self._sessions() as s:
            account = (await s.execute(select(Account).where(Account.name == account_name))).scalar_one_or_none()
        if account is None:
            raise NotFound(f"no account named {account_name!r}.", argument="account",
                           fix="create it with `inkmcp keys create --account NAME`")
        return effective(account, self.limits)

    async def set_limits(self, account_name: str, overrides: LimitOverrides) -> AccountLimits:
        """Operator only (CLI). Fields left unset keep their value; `reset` puts every field back to
        the default first. Lowering a limit below current use blocks new creations, deletes nothing."""
        check_name(account_name, "account")
        async with self._sessions.begin() as s:
            account = (
                await s.execute(select(Account).where(Account.name == account_name).with_for_update(key_share=True))
            ).scalar_one_or_none()
            if account is None:
                raise NotFound(f"no account named {account_name!r}.", argument="account",
                               fix="create it with `inkmcp keys create --account NAME`")
            if overrides.reset:
                for name in OVERRIDE_COLUMNS:
                    setattr(account, name, None)
            for name, value in overrides.model_dump(exclude={"reset"}, exclude_none=True).items():
                setattr(account, name, [Tier(t).value for t in value] if name == "database_tiers" else value)
            await s.flush()
            return effective(account, self.limits)

    async def ensure_account(self, name: str) -> uuid.UUID:
        check_name(name, "account")
        async with self._sessions.begin() as s:
            await s.execute(insert(Account).values(id=uuid.uuid4(), name=name).on_conflict_do_nothing())
            return (await s.execute(select(Account.id).where(Account.name == name))).scalar_one()

    async def create_key(self, account_name: str, label: str | None = None) -> IssuedKey:
        account_id = await self.ensure_account(account_name)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        async with self._sessions.begin() as s:
            s.add(ApiKey(account_id=account_id, prefix=key[:DISPLAY_CHARS], key_hash=hash_key(key), label=label))
        return IssuedKey(account=account_name, key=key, prefix=key[:DISPLAY_CHARS])

    async def revoke_key(self, key_or_prefix: str) -> int:
        """Revoke by full key or by displayed prefix; returns how many keys were revoked."""
        cond = (
            ApiKey.key_hash == hash_key(key_or_prefix)
            if len(key_or_prefix) > DISPLAY_CHARS
            else ApiKey.prefix == key_or_prefix
        )
        async with self._sessions.begin() as s:
            res = await s.execute(
                update(ApiKey).where(cond, ApiKey.revoked_at.is_(None)).values(revoked_at=datetime.now(UTC))
            )
            await s.execute(_NOTIFY_REVOKED)  # cpthroughput: empties the serving processes' key caches
        if res.rowcount == 0:
            raise NotFound(
                f"no active key matches {key_or_prefix[:DISPLAY_CHARS]!r}.",
                argument="key",
                fix="pass the full key or its prefix as shown by `inkmcp keys list`",
            )
        return res.rowcount

    async def revoke_account_key(self, account_id: uuid.UUID, key_id: uuid.UUID) -> str:
        """Revoke one of `account_id`'s own keys (the dashboard). The account is part of the UPDATE's condition, so
        a key id of another account matches nothing and is reported exactly like an unknown one. Returns the
        revoked key's prefix."""
        async with self._sessions.begin() as s:
            prefix = (await s.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.account_id == account_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
                .returning(ApiKey.prefix)
            )).scalar_one_or_none()
            await s.execute(_NOTIFY_REVOKED)  # cpthroughput: empties the serving processes' key caches
        if prefix is None:
            raise NotFound("no active key of this account has that id.", argument="key",
                           fix="pick a key from the list on the dashboard (it may be revoked already)")
        return prefix

    async def list_keys(self, account_name: str | None = None) -> list[KeyInfo]:
        q = select(ApiKey, Account.name).join(Account).order_by(ApiKey.created_at)
        if account_name:
            q = q.where(Account.name == account_name)
        async with self._sessions() as s:
            rows = (await s.execute(q)).all()
        return [
            KeyInfo(
                id=k.id,
                prefix=k.prefix,
                account=name,
                label=k.label,
                created_at=k.created_at,
                revoked_at=k.revoked_at,
                last_used_at=k.last_used_at,
            )
            for k, name in rows
        ]

    async def has_any_key(self) -> bool:
        async with self._sessions() as s:
            return (await s.execute(select(ApiKey.id).limit(1))).first() is not None

    async def authenticate(self, key: str) -> Principal | None:
        """The database's answer, every time (no cache here). One prepared statement on the statement pool
        (store/statements.py). `inkmcp serve` asks it through mcp/auth.py's VerifiedKeys, which keeps accepted keys
        a few seconds and forgets them when a revocation's NOTIFY (KEYS_CHANNEL, below) arrives."""
        if not key.startswith(KEY_PREFIX) or len(key) > 128:
            return None
        rows = await statement_pool(self._sessions).fetch(_AUTHENTICATE, (hash_key(key),))
        if not rows:
            return None
        key_id, prefix, last_used, account_id, account_name = rows[0]
        now = datetime.now(UTC)
        if last_used is None or now - last_used > LAST_USED_RESOLUTION:
            # at most one write per key per minute: operators see stale keys, requests stay reads
            async with self._sessions.begin() as s:
                await s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
        return Principal(account_id=account_id, account_name=account_name, actor=prefix)

    async def principal_for(self, account_name: str, actor: str) -> Principal:
        account_id = await self.ensure_account(account_name)
        return Principal(account_id=account_id, account_name=account_name, actor=actor)
