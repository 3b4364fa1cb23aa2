"""Projects: unique per account, created idempotently by name."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.core.names import check_name
from inkmcp.core.principal import Principal
from inkmcp.core.views import ProjectView
from inkmcp.errors import NotFound
from inkmcp.store.models import Database, Project, Service

LIST_LIMIT = 200


class ProjectService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def ensure(self, p: Principal, name: str, repo_url: str | None = None) -> tuple[Project, bool]:
        """Returns (project, created). Concurrent calls for one name yield exactly one row."""
        check_name(name, "project_name")
        async with self._sessions.begin() as s:
            res = await s.execute(
                insert(Project)
                .values(id=uuid.uuid4(), account_id=p.account_id, name=name, repo_url=repo_url)
                .on_conflict_do_nothing(constraint="uq_projects_account_name")
                .returning(Project.id)
            )
            created = res.first() is not None
            project = (
                await s.execute(select(Project).where(Project.account_id == p.account_id, Project.name == name))
            ).scalar_one()
            if repo_url and not project.repo_url:
                project.repo_url = repo_url
            return project, created

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
        """One round trip: the page and the total (a window count) together."""
        svc_count = (
            select(Service.project_id, func.count().label("n")).group_by(Service.project_id).subquery()
        )
        q = (
            select(Project, func.coalesce(svc_count.c.n, 0), Database.provider, func.count().over())
            .outerjoin(svc_count, svc_count.c.project_id == Project.id)
            .outerjoin(Database, Database.project_id == Project.id)
            .where(Project.account_id == p.account_id)
            .order_by(Project.name)
            .limit(LIST_LIMIT)
        )
        async with self._sessions() as s:
            rows = (await s.execute(q)).all()
        total = rows[0][3] if rows else 0
        return [
            ProjectView(name=pr.name, repo_url=pr.repo_url, services=n, database=db, created_at=pr.created_at)
            for pr, n, db, _ in rows
        ], total
