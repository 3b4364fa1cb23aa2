"""Audit log of every mutating call. Arguments are stored with secret values replaced."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.core.names import redact_url
from inkmcp.core.principal import Principal
from inkmcp.errors import InkError, NotFound
from inkmcp.store.models import Account, AuditEntry
from inkmcp.store.statements import statement_pool

_INSERT_SQL = ("INSERT INTO audit_log (account_id, actor, action, target, arguments, result, error) "
               "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id")
"""`audit_log`'s `at` is the server's now() (its column default), as with the ORM."""

SECRET_ARGS = frozenset({"env_vars", "password", "url", "key"})


def redact_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Keep names of env vars (useful to operators), never their values."""
    out: dict[str, Any] = {}
    for k, v in arguments.items():
        if k == "env_vars" and isinstance(v, dict):
            out[k] = {name: ("<unset>" if val is None else "<redacted>") for name, val in v.items()}
        elif k == "database" and isinstance(v, dict):
            out[k] = {dk: ("<redacted>" if dk in SECRET_ARGS else dv) for dk, dv in v.items()}
        elif k == "repo_url" and isinstance(v, str):
            out[k] = redact_url(v)  # https://<token>@github.com/... must not land in the audit log
        elif k in SECRET_ARGS:
            out[k] = "<redacted>"
        else:
            out[k] = v
    return out


# --- attacker: PostgreSQL text and jsonb cannot hold NUL. A name like "shop\x00" was refused by check_name, then
# recording that refusal failed in the INSERT: the agent got a bare "Error executing tool" instead of the
# refusal, and the call left no audit row. NUL is written as the visible escape "\\x00" instead.
def storable(value: Any) -> Any:
    """`value` with every NUL in its strings (dict keys included) replaced by the text \\x00."""
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value
# --- end attacker


# --- redteam3: a refused call's arguments are the caller's to choose, and every call is audited. Unbounded, one
# key filled the control database every account shares: ensure_project(name=<1 MB of random text>) and deploy_app
# with a 1 MB build_command, refused in milliseconds, stored ~1.6 MB each (the name twice: arguments and target;
# random text does not compress). tests/security/test_redteam3_audit_flood.py.
AUDIT_STRING_CHARS = 1000
"""Longest string (argument value, dict key, target) stored whole; a longer one keeps its start and its length."""
AUDIT_ARGUMENTS_BYTES = 16 << 10
"""Largest arguments object stored (as JSON); past it, lists and objects inside keep their first AUDIT_ITEMS."""
AUDIT_ITEMS = 50


def bounded(value: Any, items: int | None = None) -> Any:
    """`value` with each string cut to AUDIT_STRING_CHARS (saying how much was cut) and, with `items`, each list
    and object cut to its first `items` entries (with an entry saying how many there were): what an operator needs
    to read what a call was, at a size the caller cannot choose."""
    if isinstance(value, str):
        cut = len(value) - AUDIT_STRING_CHARS
        return value if cut <= 0 else f"{value[:AUDIT_STRING_CHARS]}... ({cut} more characters)"
    if isinstance(value, dict):
        out = {bounded(k): bounded(v, items) for k, v in list(value.items())[:items]}
        if items is not None and len(value) > items:
            out["..."] = f"{len(value) - items} more entries"
        return out
    if isinstance(value, list | tuple):
        kept = [bounded(v, items) for v in list(value)[:items]]
        return [*kept, f"... {len(value) - items} more items"] if items is not None and len(value) > items else kept
    return value


def bounded_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments as stored: strings bounded always, entries too when the whole would pass AUDIT_ARGUMENTS_BYTES
    (100,000 env var names), and only the argument names when even that does."""
    for candidate in (bounded(arguments), bounded(arguments, AUDIT_ITEMS)):
        if len(json.dumps(candidate, default=str)) <= AUDIT_ARGUMENTS_BYTES:
            return candidate  # type: ignore[no-any-return]
    return {"...": "arguments too large to keep", "names": bounded(list(arguments), AUDIT_ITEMS)}
# --- end


class AuditRow(BaseModel):
    """One audit entry as an operator reads it (`inkmcp audit`): arguments are the stored, redacted ones."""

    id: int
    at: datetime
    account: str | None
    actor: str
    action: str
    target: str | None
    result: str
    error: str | None
    arguments: dict[str, Any]


class AuditLog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    @asynccontextmanager
    async def recording(
        self, principal: Principal | None, action: str, target: str | None, arguments: dict[str, Any]
    ) -> AsyncIterator[None]:
        """Record the call inside the block: ok, or the error it raised (an InkError as the agent saw it)."""
        try:
            yield
        except InkError as e:
            await self.record(principal, action, target=target, arguments=arguments, error=e.render())
            raise
        except Exception as e:
            await self.record(principal, action, target=target, arguments=arguments, error=type(e).__name__)
            raise
        await self.record(principal, action, target=target, arguments=arguments)

    async def record(
        self,
        principal: Principal | None,
        action: str,
        *,
        target: str | None,
        arguments: dict[str, Any],
        error: str | None = None,
    ) -> None:
        """One INSERT on the statement pool (store.statements): it follows every mutating call, deploy_app
        included, and as an ORM unit of work (BEGIN, INSERT … RETURNING, COMMIT, entity bookkeeping) it cost
        ~7 ms of a Coolify deploy_app's answer; a single autocommit statement is the same one-row transaction."""
        await statement_pool(self._sessions).write(_INSERT_SQL, (
            principal.account_id if principal else None,
            principal.actor if principal else "anonymous",
            action,
            # --- attacker: storable (NUL); redteam3: bounded
            storable(bounded(redact_url(target))) if target else None,
            Jsonb(storable(bounded_arguments(redact_arguments(arguments)))),
            "error" if error else "ok",
            storable(error[:2000]) if error else None,
        ))

    async def query(self, *, account: str | None = None, since: datetime | None = None,
                   limit: int = 1000) -> list[AuditRow]:
        """Entries oldest first (the order things happened in), optionally of one account and from `since` on;
        at most `limit`, the newest ones when there are more. An unknown account is an error, not an empty list."""
        async with self._sessions() as s:
            query = select(AuditEntry, Account.name).outerjoin(Account, Account.id == AuditEntry.account_id)
            if account is not None:
                account_id = (await s.execute(select(Account.id).where(Account.name == account))).scalar()
                if account_id is None:
                    raise NotFound(f"no account {account!r}.", argument="--account",
                                   fix="pass an account name `inkmcp keys list` shows")
                query = query.where(AuditEntry.account_id == account_id)
            if since is not None:
                query = query.where(AuditEntry.at >= since)
            rows = (await s.execute(query.order_by(AuditEntry.id.desc()).limit(limit))).all()
        return [AuditRow(id=e.id, at=e.at, account=name, actor=e.actor, action=e.action, target=e.target,
                         result=e.result, error=e.error, arguments=e.arguments or {})
                for e, name in reversed(rows)]
