"""Env vars: stored encrypted, per project ('*') or per service; service values win.

Values are never returned unless asked for, never logged and never written to the audit log.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.core.names import check_env_key
from inkmcp.errors import InvalidArgument
from inkmcp.store.crypto import SecretBox
from inkmcp.store.models import EnvVar
from inkmcp.store.statements import statement_pool

PROJECT_SCOPE = "*"
_RESOLVE = "SELECT scope, key, value_enc FROM env_vars WHERE project_id = %s AND scope = ANY(%s)"
# A service's id and the agent's values for it (project-wide and its own), by name: one statement for deploy_app
_RESOLVE_NAMED = (
    "SELECT s.id, e.scope, e.key, e.value_enc FROM services s LEFT JOIN env_vars e "
    "ON e.project_id = s.project_id AND (e.scope = %(project_scope)s OR e.scope = s.id::text) "
    "WHERE s.project_id = %(project)s AND s.name = %(name)s"
)
MAX_KEYS = 200
MAX_VALUE_BYTES = 32 * 1024
# --- attacker2: what a project may hold in all (its own scope and every service's). The caps above are per call
# only: red team dec2 stored 6,000 variables (1.8 MB) in one project with 30 update_env_vars calls, each 64 KB
# more of the control database that every account shares, with nothing but the call rate to stop it. A process
# cannot even start with more than ~2 MB of environment (Linux ARG_MAX), so no working app needs more.
MAX_PROJECT_KEYS = 1000
MAX_PROJECT_STORED_BYTES = 2 * 1024 * 1024  # encrypted (Fernet), about 1.4 MB of values
# --- end


def validate_env_payload(env: Mapping[str, str | None], max_bytes: int) -> None:
    if len(env) > MAX_KEYS:
        raise InvalidArgument(
            f"{len(env)} variables in one call; at most {MAX_KEYS} are accepted.",
            argument="env_vars",
            fix="split the update into several calls",
        )
    total = 0
    for k, v in env.items():
        check_env_key(k)
        if v is not None and not isinstance(v, str):  # (None still unsets: callers from before `unset`)
            raise InvalidArgument(
                f"value of {k} must be a string, not {type(v).__name__}.", argument="env_vars",
                fix=f'pass it as a string (e.g. "{v}"); to remove a variable, call update_env_vars with unset=["{k}"]',
            )
        size = len(k) + (len(v.encode()) if v else 0)
        if v is not None and len(v.encode()) > MAX_VALUE_BYTES:
            raise InvalidArgument(
                f"value of {k} is {len(v.encode())} bytes; at most {MAX_VALUE_BYTES} are accepted.",
                argument="env_vars",
                fix="store large data in the database or a file in the repo, not in an env var",
            )
        if v is not None and "\x00" in v:
            raise InvalidArgument(f"value of {k} contains a NUL byte.", argument="env_vars", fix="remove it")
        total += size
    if total > max_bytes:
        raise InvalidArgument(
            f"env payload is {total} bytes; at most {max_bytes} are accepted per call.",
            argument="env_vars",
            fix="send fewer or smaller variables",
        )


def mask(value: str) -> str:
    return "****" if len(value) < 12 else value[:2] + "****" + f"({len(value)} chars)"


def project_totals_error(count: int, stored: int) -> InvalidArgument:
    """The refusal for a project past MAX_PROJECT_KEYS / MAX_PROJECT_STORED_BYTES (update_env_vars and deploy_app)."""
    return InvalidArgument(
        f"this project would hold {count:,} env vars ({stored / 2**20:.1f} MiB stored); at most "
        f"{MAX_PROJECT_KEYS:,} variables and {MAX_PROJECT_STORED_BYTES // 2**20} MiB (about 1.4 MB of values) "
        "are kept per project, for all its services together.",
        argument="env_vars",
        fix="unset variables you no longer need (update_env_vars(unset=[...])), and keep large data in the "
        "database or a file in the repo, not in env vars",
    )


async def check_project_totals(s: AsyncSession, project_id: uuid.UUID) -> None:
    """Raise (the caller's transaction then rolls the change back) when the project now holds more variables or
    stored bytes than MAX_PROJECT_KEYS / MAX_PROJECT_STORED_BYTES. Concurrent calls each see their own rows, so
    together they may pass the cap by one call's worth (MAX_KEYS); it still bounds what an account can store.
    deploy_app's env write checks the same totals inside its one statement (deployments._NEW_DEPLOYMENT_SQL)."""
    count, stored = (await s.execute(
        select(func.count(), func.coalesce(func.sum(func.octet_length(EnvVar.value_enc)), 0))
        .where(EnvVar.project_id == project_id)
    )).one()
    if count > MAX_PROJECT_KEYS or stored > MAX_PROJECT_STORED_BYTES:
        raise project_totals_error(count, stored)


class EnvService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], box: SecretBox) -> None:
        self._sessions = sessions
        self._box = box

    async def apply(
        self, s: AsyncSession, project_id: uuid.UUID, scope: str, env: Mapping[str, str | None]
    ) -> tuple[list[str], list[str]]:
        """Set and unset in the caller's transaction. Returns (set keys, unset keys).

        A project-wide change applies to every service ("omit service_name for all services"), so it
        also clears service-level values of the same keys that would otherwise keep overriding it.
        """
        set_keys, unset_keys = [], []
        if scope == PROJECT_SCOPE and env:
            res = await s.execute(
                delete(EnvVar).where(
                    EnvVar.project_id == project_id, EnvVar.scope != PROJECT_SCOPE, EnvVar.key.in_(list(env))
                ).returning(EnvVar.key)
            )
            unset_keys.extend(k for k in res.scalars() if env[k] is None)
        for k, v in sorted(env.items()):
            if v is None:
                res = await s.execute(
                    delete(EnvVar).where(EnvVar.project_id == project_id, EnvVar.scope == scope, EnvVar.key == k)
                )
                if res.rowcount and k not in unset_keys:
                    unset_keys.append(k)
                continue
            enc = self._box.encrypt(v.encode())
            await s.execute(
                insert(EnvVar)
                .values(id=uuid.uuid4(), project_id=project_id, scope=scope, key=k, value_enc=enc)
                .on_conflict_do_update(constraint="uq_env_vars_scope_key", set_={"value_enc": enc})
            )
            set_keys.append(k)
        if set_keys:
            await check_project_totals(s, project_id)  # --- attacker2 (see MAX_PROJECT_KEYS)
        return set_keys, sorted(set(unset_keys))

    async def snapshot(self, project_id: uuid.UUID) -> list[tuple[str, str, bytes]]:
        """All of a project's rows, still encrypted: what `restore` puts back if applying fails."""
        async with self._sessions() as s:
            rows = await s.execute(
                select(EnvVar.scope, EnvVar.key, EnvVar.value_enc).where(EnvVar.project_id == project_id)
            )
            return [(r[0], r[1], r[2]) for r in rows]

    async def by_scope(self, project_id: uuid.UUID) -> dict[str, dict[str, SecretStr]]:
        """Every value of the project, decrypted, by scope (PROJECT_SCOPE or a service id)."""
        out: dict[str, dict[str, SecretStr]] = {}
        for scope, key, enc in await self.snapshot(project_id):
            out.setdefault(scope, {})[key] = SecretStr(self._box.decrypt(enc).decode())
        return out

    async def restore(self, project_id: uuid.UUID, rows: list[tuple[str, str, bytes]]) -> None:
        async with self._sessions.begin() as s:
            await s.execute(delete(EnvVar).where(EnvVar.project_id == project_id))
            for scope, key, enc in rows:
                s.add(EnvVar(project_id=project_id, scope=scope, key=key, value_enc=enc))

    def seal(self, env: Mapping[str, str | None]) -> tuple[list[str], list[bytes], list[str]]:
        """(keys set, their values encrypted, keys unset) of a service-scoped change, for a caller that writes it
        in a statement of its own (deploy_app: with the deployment it belongs to,
        `DeployService._create_with_reads`)."""
        sets = sorted((k, v) for k, v in env.items() if v is not None)
        return [k for k, _ in sets], [self._box.encrypt(v.encode()) for _, v in sets], \
            sorted(k for k, v in env.items() if v is None)

    async def resolve_named(
        self, project_id: uuid.UUID, service_name: str
    ) -> tuple[uuid.UUID | None, dict[str, SecretStr], dict[str, SecretStr]]:
        """(the service's id, the project-wide values, the service's own values), in one statement; (None, {}, {})
        when the project has no service of that name."""
        rows = await statement_pool(self._sessions).fetch(
            _RESOLVE_NAMED, {"project": project_id, "name": service_name, "project_scope": PROJECT_SCOPE})
        if not rows:
            return None, {}, {}
        shared: dict[str, SecretStr] = {}
        own: dict[str, SecretStr] = {}
        for _id, scope, key, enc in rows:
            if key is not None:
                (shared if scope == PROJECT_SCOPE else own)[key] = SecretStr(self._box.decrypt(enc).decode())
        return rows[0][0], shared, own

    async def resolve(self, project_id: uuid.UUID, service_id: uuid.UUID | None) -> dict[str, SecretStr]:
        scopes = [PROJECT_SCOPE] + ([str(service_id)] if service_id else [])
        # one prepared statement on the statement pool (store.statements): every deploy and release reads this
        return self.resolved(await statement_pool(self._sessions).fetch(_RESOLVE, (project_id, scopes)))

    def resolved(self, rows: list[tuple[Any, ...]]) -> dict[str, SecretStr]:
        """`resolve`'s answer from its statement's rows (`resolve_statement`), read by a caller in a transaction of
        its own (--- overhead8: deploy_app reads them in the transaction that creates the deployment)."""
        out: dict[str, SecretStr] = {}
        # project-wide first, so service-scoped values overwrite them
        for _scope, key, enc in sorted(rows, key=lambda r: r[0] != PROJECT_SCOPE):
            out[key] = SecretStr(self._box.decrypt(enc).decode())
        return out

    @staticmethod
    def resolve_statement(project_id: uuid.UUID, service_id: uuid.UUID) -> tuple[str, tuple[Any, ...]]:
        """--- overhead8: `resolve`'s statement and parameters (its rows go to `resolved`)."""
        return _RESOLVE, (project_id, [PROJECT_SCOPE, str(service_id)])
