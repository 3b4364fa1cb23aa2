"""Audit log of every mutating call. Arguments are stored with secret values replaced."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.core.names import redact_url
from inkmcp.core.principal import Principal
from inkmcp.store.models import AuditEntry

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


class AuditLog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record(
        self,
        principal: Principal | None,
        action: str,
        *,
        target: str | None,
        arguments: dict[str, Any],
        error: str | None = None,
    ) -> None:
        async with self._sessions.begin() as s:
            s.add(
                AuditEntry(
                    account_id=principal.account_id if principal else None,
                    actor=principal.actor if principal else "anonymous",
                    action=action,
                    target=redact_url(target) if target else None,
                    arguments=redact_arguments(arguments),
                    result="error" if error else "ok",
                    error=error[:2000] if error else None,
                )
            )
