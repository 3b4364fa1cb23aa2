"""Projects: names unique across all accounts, created idempotently by their owner, within limits.

A project name is part of every hostname (`<service>.<project>.<domain>`), so it is global, as on
Heroku, Render or Fly: the first account to create a name holds it, and another account asking for
it gets "project name 'x' is taken; try 'x-<suggestion>'" with a suggestion checked to be free.
The database enforces it (unique index on lower(name)), so two accounts racing for one name get
exactly one winner without any check-then-insert window.

This module also owns repo URL secrecy: the stored `repo_url` columns hold the URL with its
credentials replaced by `***`; a URL that carried credentials is kept whole only encrypted
(`services.repo_url_enc`), and decrypted only to fetch.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.core.databases import as_requested
from inkmcp.core.limits import OVERRIDE_COLUMNS, AccountLimits, LimitDefaults, effective, lock_account, reached
from inkmcp.core.names import check_name, has_credentials, is_name, redact_url
from inkmcp.core.principal import Principal
from inkmcp.core.views import TERMINAL, ProjectView
from inkmcp.errors import Conflict, NotFound
from inkmcp.store.crypto import SecretBox
from inkmcp.store.models import Account, Deployment, Project, Service
from inkmcp.store.statements import statement_pool

T = TypeVar("T")
LIST_LIMIT = 200
_LIST = (
    "SELECT p.name, p.repo_url, p.created_at, "
    "(SELECT count(*) FROM services sv WHERE sv.project_id = p.id), d.provider, count(*) OVER () "
    "FROM projects p LEFT JOIN databases d ON d.project_id = p.id AND d.kind = 'postgres' "
    "WHERE p.account_id = %s ORDER BY p.name LIMIT %s"
)
SUGGESTION_TRIES = 8
# deploy_app's advisory checks in one round trip: the name's owner, the account's limit columns, its project count,
# the named project's id and service names (when the account owns it) and its deployments in progress.
_PRECHECK = (
    "SELECT a.name, a.max_projects, a.max_services_per_project, a.max_databases, a.max_concurrent_builds, "
    "a.database_tiers, "
    "(SELECT account_id FROM projects WHERE lower(name) = lower(%(name)s)), "
    "(SELECT id FROM projects WHERE lower(name) = lower(%(name)s) AND account_id = a.id), "
    "(SELECT count(*) FROM projects WHERE account_id = a.id), "
    "(SELECT array_agg(s.name) FROM services s JOIN projects p ON p.id = s.project_id "
    " WHERE lower(p.name) = lower(%(name)s) AND p.account_id = a.id), "
    "(SELECT count(*) FROM deployments d JOIN services s ON s.id = d.service_id "
    " JOIN projects p ON p.id = s.project_id WHERE p.account_id = a.id AND d.status <> ALL(%(terminal)s)) "
    "FROM accounts a WHERE a.id = %(account)s"
)


@dataclass(frozen=True)
class Prechecked:
    """What `precheck_deploy` saw: the account's project of that name (None: no such project of this account),
    and whether it has the service."""

    project_id: uuid.UUID | None
    service_exists: bool


class ProjectService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        box: SecretBox | None = None,
        limits: LimitDefaults | None = None,
    ) -> None:
        self._sessions = sessions
        self._box = box
        self.limits = limits or LimitDefaults()

    # ----------------------------------------------------------------- names
    @staticmethod
    def _by_name(name: str):  # type: ignore[no-untyped-def]
        return select(Project).where(func.lower(Project.name) == name.lower())

    async def ensure(
        self, p: Principal, name: str, repo_url: str | None = None, new_id: uuid.UUID | None = None
    ) -> tuple[Project, bool]:
        """Returns (project, created). Concurrent calls for one name yield exactly one row, and only
        its owner gets it back: any other account gets a Conflict naming a free alternative. `new_id`: the id a
        project created here gets (deploy_app fetches into that project's workspace meanwhile); an existing
        project keeps its own."""
        project, created, _ = await self.ensure_with(p, name, repo_url, new_id)
        return project, created

    async def ensure_with(
        self, p: Principal, name: str, repo_url: str | None = None, new_id: uuid.UUID | None = None,
        then: Callable[[AsyncSession, Project], Awaitable[T]] | None = None,
    ) -> tuple[Project, bool, T | None]:
        """`ensure`, then `then(session, project)` in the same transaction (deploy_app records its service there:
        one commit instead of two, and a service the quota refuses takes a project this call made with it)."""
        check_name(name, "project_name")
        shown = redact_url(repo_url) if repo_url else None
        async with self._sessions.begin() as s:
            project = (await s.execute(self._by_name(name))).scalar_one_or_none()
            created = False
            if project is None:
                limits = await lock_account(s, p.account_id, self.limits)
                # under the lock: a concurrent call of this account may have created it meanwhile
                project = (await s.execute(self._by_name(name))).scalar_one_or_none()
                if project is None:
                    _refuse_more_projects(limits, await _project_count(s, p.account_id))
            if project is None:
                res = await s.execute(
                    insert(Project)
                    .values(id=new_id or uuid.uuid4(), account_id=p.account_id, name=name, repo_url=shown)
                    .on_conflict_do_nothing()  # the only other unique key is the id: conflict = name taken
                    .returning(Project.id)
                )
                created = res.first() is not None
                # READ COMMITTED: this statement sees the row of whichever transaction won the insert
                project = (await s.execute(self._by_name(name))).scalar_one_or_none()
                if project is None:  # the winner rolled back or deleted it in between: rare, retryable
                    raise Conflict(
                        f"project {name!r} was created and removed concurrently.",
                        argument="project_name",
                        fix="call again",
                    )
            if project.account_id != p.account_id:
                raise await self._taken(s, name, p)
            if shown and not project.repo_url:
                project.repo_url = shown
            return project, created, (await then(s, project) if then is not None else None)

    async def check_available(self, p: Principal, name: str) -> None:
        """Fail fast (before a fetch or build) if another account holds `name`; `ensure` still decides."""
        async with self._sessions() as s:
            owner = (
                await s.execute(select(Project.account_id).where(func.lower(Project.name) == name.lower()))
            ).scalar_one_or_none()
            if owner is not None and owner != p.account_id:
                raise await self._taken(s, name, p)

    async def _taken(self, s: AsyncSession, name: str, p: Principal) -> Conflict:
        suggestion = await self._suggest(s, name, p.account_name)
        return Conflict(
            f"project name {name!r} is taken; try {suggestion!r}.",
            argument="project_name",
            fix=f"pass project_name={suggestion!r} or another name: project names are unique across all "
            "accounts because they are part of the service URLs",
        )

    async def _suggest(self, s: AsyncSession, name: str, account_name: str) -> str:
        """`<name>-<account>` if free, else `<name>-<4 hex>`; each candidate checked against the store."""
        candidates = [_join(name, account_name)] + [_join(name, secrets.token_hex(2)) for _ in range(SUGGESTION_TRIES)]
        candidates = [c for c in dict.fromkeys(candidates) if is_name(c)]
        used = set(
            (
                await s.execute(select(func.lower(Project.name)).where(func.lower(Project.name).in_(candidates)))
            ).scalars()
        )
        for c in candidates:
            if c not in used:
                return c
        return _join(name, secrets.token_hex(4))  # 8 random hex digits: practically free

    async def get(self, p: Principal, name: str) -> Project:
        check_name(name, "project_name")
        async with self._sessions() as s:
            project = (
                await s.execute(select(Project).where(Project.account_id == p.account_id, Project.name == name))
            ).scalar_one_or_none()
        if project is None:
            raise NotFound(
                f"no project named {name!r} in this account.",
                argument="project_name",
                fix=f"call list_projects to see your projects, or ensure_project(name={name!r}) to create it",
            )
        return project

    async def list(self, p: Principal) -> tuple[list[ProjectView], int]:
        """One prepared statement on the statement pool (store/statements.py): the page and the total (a window count)
        together. The database column says what the agent asked for (postgres or byo), never which backend
        serves it, as get_database_credentials does."""
        rows = await statement_pool(self._sessions).fetch(_LIST, (p.account_id, LIST_LIMIT))
        total = rows[0][5] if rows else 0
        return [
            ProjectView(
                name=name,
                # stored redacted already; redacting again costs nothing and covers rows written by older code
                repo_url=redact_url(repo_url) if repo_url else None,
                services=n,
                database=None if db is None else as_requested(db),
                created_at=created_at,
            )
            for name, repo_url, created_at, n, db, _ in rows
        ], total

    # ---------------------------------------------------------------- limits
    async def check_service_quota(self, s: AsyncSession, project_id: uuid.UUID, service_name: str) -> None:
        """In the caller's transaction, before it inserts service `service_name`: refuse a new service
        beyond the account's max_services_per_project. Locks the account row (see core.limits)."""
        exists = (
            await s.execute(select(Service.id).where(Service.project_id == project_id, Service.name == service_name))
        ).first()
        if exists is not None:
            return
        limits, _ = await self._lock_owner(s, project_id=project_id)
        count = (
            await s.execute(select(func.count()).select_from(Service).where(Service.project_id == project_id))
        ).scalar_one()
        _refuse_more_services(limits, count)

    async def check_build_quota(self, s: AsyncSession, service_id: uuid.UUID) -> None:
        """In the caller's transaction, before it inserts a deployment of `service_id`: refuse one more
        deployment in progress than the account's max_concurrent_builds. Locks the account row."""
        limits, account_id = await self._lock_owner(s, service_id=service_id)
        running = await _builds_in_progress(s, account_id)
        named = await _builds_named(s, account_id) if running >= limits.max_concurrent_builds else None  # newuser2
        _refuse_more_builds(limits, running, named)

    async def _lock_owner(
        self, s: AsyncSession, *, project_id: uuid.UUID | None = None, service_id: uuid.UUID | None = None
    ) -> tuple[AccountLimits, uuid.UUID]:
        """core.limits.lock_account for the account owning the project or service `where` names, found and
        locked in one statement (the count that follows must run after the lock, so it stays a statement of its
        own: in READ COMMITTED, a count evaluated with the locking row would not see a concurrent insert)."""
        query = select(Account).join(Project, Project.account_id == Account.id)
        if service_id is not None:
            query = query.join(Service, Service.project_id == Project.id).where(Service.id == service_id)
        else:
            query = query.where(Project.id == project_id)
        # FOR NO KEY UPDATE OF accounts, as lock_account takes it (core.limits: why not FOR UPDATE)
        account = (await s.execute(query.with_for_update(of=Account, key_share=True))).scalar_one_or_none()
        if account is None:
            raise NotFound("the account no longer exists.", argument="account", fix="ask the operator for a new key")
        return effective(account, self.limits), account.id

    async def precheck_deploy(self, p: Principal, project_name: str, service_name: str) -> Prechecked:
        """Cheap checks before deploy_app fetches and builds anything: name taken, and limits that
        are already reached. Advisory only; the transactional checks above decide. One prepared statement
        (_PRECHECK) on the statement pool: it runs on every deploy_app call. Returns what it saw of the project
        and service (deploy_app plans its work with it; `ensure` and the service's upsert still decide)."""
        rows = await statement_pool(self._sessions).fetch(
            _PRECHECK, {"name": project_name, "account": p.account_id, "terminal": sorted(TERMINAL)}
        )
        if not rows:
            raise NotFound("the account no longer exists.", argument="account", fix="ask the operator for a new key")
        name, *columns, owner, own_id, projects, services, builds = rows[0]
        if owner is not None and owner != p.account_id:
            await self.check_available(p, project_name)  # raises the Conflict with a free suggestion
        limits = effective(SimpleNamespace(name=name, **dict(zip(OVERRIDE_COLUMNS, columns, strict=True))),  # type: ignore[arg-type]
                           self.limits)  # fmt: skip
        if owner is None:
            _refuse_more_projects(limits, projects)
        elif service_name not in (services or ()):
            _refuse_more_services(limits, len(services or ()))
        in_flight: list[str] = []
        if builds >= limits.max_concurrent_builds:  # --- newuser2: name them (the refusal path only)
            async with self._sessions() as s:
                in_flight = await _builds_named(s, p.account_id)
        _refuse_more_builds(limits, builds, in_flight)
        return Prechecked(project_id=own_id, service_exists=service_name in (services or ()))

    # ------------------------------------------------------ repo URL secrecy
    def seal_repo_url(self, repo_url: str) -> tuple[str, bytes | None]:
        """(what the `repo_url` column stores, what `repo_url_enc` stores).

        A URL with credentials is stored shown as `https://***@host/...` and kept whole only encrypted.
        """
        if not has_credentials(repo_url):
            return repo_url, None
        if self._box is None:
            raise RuntimeError("ProjectService needs the SecretBox to store a repo_url with credentials")
        return redact_url(repo_url), self._box.encrypt(repo_url)

    def fetch_url(self, svc: Service) -> str:
        """The URL to fetch `svc` from: the decrypted full URL if credentials were given, else the shown one."""
        if svc.repo_url_enc is None:
            return svc.repo_url
        if self._box is None:
            raise RuntimeError("ProjectService needs the SecretBox to read an encrypted repo_url")
        return self._box.decrypt(svc.repo_url_enc).decode()


async def _project_count(s: AsyncSession, account_id: uuid.UUID) -> int:
    return (
        await s.execute(select(func.count()).select_from(Project).where(Project.account_id == account_id))
    ).scalar_one()


async def _builds_in_progress(s: AsyncSession, account_id: uuid.UUID) -> int:
    """Deployments of the account that are not yet live, failed or superseded."""
    return (
        await s.execute(
            select(func.count())
            .select_from(Deployment)
            .join(Service, Deployment.service_id == Service.id)
            .join(Project, Service.project_id == Project.id)
            .where(Project.account_id == account_id, Deployment.status.not_in(list(TERMINAL)))
        )
    ).scalar_one()


async def _builds_named(s: AsyncSession, account_id: uuid.UUID) -> list[str]:
    """--- newuser2: the account's deployments in progress, `project/service <id> (status)`, oldest first (5 at
    most): the refusal said "wait for a deployment to finish (wait_for_deployment)", and wait_for_deployment
    needs an id the agent may not have (another session's deploy, or a deploy_app call that timed out)."""
    rows = (await s.execute(
        select(Deployment.id, Deployment.status, Project.name, Service.name)
        .join(Service, Deployment.service_id == Service.id)
        .join(Project, Service.project_id == Project.id)
        .where(Project.account_id == account_id, Deployment.status.not_in(list(TERMINAL)))
        .order_by(Deployment.created_at).limit(5)
    )).all()  # fmt: skip
    return [f"{project}/{service} {dep_id} ({getattr(status, 'value', status)})"
            for dep_id, status, project, service in rows]


def _refuse_more_projects(limits: AccountLimits, count: int) -> None:
    if count >= limits.max_projects:
        raise reached("projects", limits.max_projects, "max_projects", "delete a project")


def _refuse_more_services(limits: AccountLimits, count: int) -> None:
    if count >= limits.max_services_per_project:
        raise reached(
            "services per project", limits.max_services_per_project, "max_services_per_project",
            "delete a service (delete with service_name)",
        )


def _refuse_more_builds(limits: AccountLimits, running: int, in_flight: list[str] | None = None) -> None:
    if running >= limits.max_concurrent_builds:
        error = reached("concurrent builds", limits.max_concurrent_builds, "max_concurrent_builds",
                        "wait for a deployment to finish (wait_for_deployment)")
        if in_flight:  # --- newuser2: the ids wait_for_deployment takes
            error = type(error)(f"{error.message} In progress (wait_for_deployment(deployment_id=...) follows one): "
                                f"{'; '.join(in_flight)}.")
        raise error


def _join(name: str, suffix: str) -> str:
    """`name-suffix` cut to a 63-character DNS label (the name part shrinks, the suffix stays)."""
    suffix = suffix.lower()[:20].strip("-")
    base = name[: 63 - len(suffix) - 1].rstrip("-")
    return f"{base}-{suffix}"
