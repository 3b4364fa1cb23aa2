"""A small stateful Coolify 4.3.11 for tests and local development (issue 8 item 3).

A real HTTP server (starlette on uvicorn, 127.0.0.1, an ephemeral port, in a thread this object starts and
joins) for the endpoints InkMCP's Coolify client, compute provider and database provider use: servers (settings
incl. wildcard_domain and is_build_server), Sentinel, proxy, projects and environments, applications (public
git, Dockerfile, Docker image), their environment variables, deployments moving through Coolify's real
statuses on a clock, runtime and build logs, and standalone PostgreSQL. Every request and answer is checked
against Coolify's published spec (`request_violations`, `response_violations`; answers outside the spec in
one of the documented ways real Coolify is go to `deviations_seen`, see deviations.py), and the controllers
behave like Coolify's at 379abb2 where a client can get it wrong (each module's docstring cites file:line).

Faults are injected through the object (faults.py): `fail_next`, `throttle_next`, `delay_next`, `drop_next`,
`fail_builds`, `slow_builds`, `crash_on_start`, `set_server_unreachable`; counters: `requests_of`,
`request_count`, `peak_rate`, `throttled`.

Run one for local development: `python -m inkmcp.coolify.standin --port 8000 --token-file token.txt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inkmcp.coolify.standin.app import StandinCore
from inkmcp.coolify.standin.applications import ApplicationsMixin
from inkmcp.coolify.standin.databases import DatabasesMixin
from inkmcp.coolify.standin.deployments import DeploymentsMixin
from inkmcp.coolify.standin.faults import BuildFault, Fault, FaultsMixin
from inkmcp.coolify.standin.projects import ProjectsMixin
from inkmcp.coolify.standin.servers import ServersMixin
from inkmcp.coolify.standin.state import (
    Application,
    Container,
    Database,
    Deployment,
    EnvVar,
    NodeServer,
    Project,
    Seen,
    Token,
)

__all__ = ["Application", "BuildFault", "Container", "CoolifyStandin", "Database", "Deployment", "EnvVar", "Fault",
           "NodeServer", "Project", "Seen", "Token"]


class CoolifyStandin(FaultsMixin, DeploymentsMixin, ApplicationsMixin, DatabasesMixin, ProjectsMixin, ServersMixin,
                     StandinCore):
    """See the package docstring. Use as a context manager; `url` is the base URL (API under /api/v1).

    Clock settings (seconds): `build_seconds` a build in progress, `restart_seconds` a restart-only deployment,
    `status_delay` until GetContainersStatus writes a new status, `delete_delay` until a queued delete is done,
    `stop_delay` a queued stop, `validation_delay` a server validation. `rate_limit` requests per `rate_window`
    seconds per user (Coolify's default 200/60)."""

    ROUTES = [*ServersMixin.ROUTES_SERVERS, *ProjectsMixin.ROUTES_PROJECTS, *ApplicationsMixin.ROUTES_APPLICATIONS,
              *DeploymentsMixin.ROUTES_DEPLOYMENTS, *DatabasesMixin.ROUTES_DATABASES, *StandinCore.ROUTES_OTHER]

    def __init__(self, nodes_root: Path, **kw: Any) -> None:
        super().__init__(nodes_root, **kw)
        self.private_keys: dict[str, int] = {}  # uuid -> team
        self.servers: dict[str, NodeServer] = {}
        self.projects: dict[str, Project] = {}
        self.applications: dict[str, Application] = {}
        self.databases: dict[str, Database] = {}
        self.deployments: dict[str, Deployment] = {}
        self.deleted_with: dict[str, dict[str, bool]] = {}
        """uuid -> the DeleteResourceJob flags an application or database was deleted with."""

    def __enter__(self) -> CoolifyStandin:
        self.start()
        return self

    def _advance(self) -> None:
        DeploymentsMixin._advance(self)

    @staticmethod
    def _environment(project: Project, name: str | None, uuid: str | None = None) -> Any:
        return ProjectsMixin._environment(project, name, uuid)

    def _id(self) -> int:
        return StandinCore._id(self)

    def _post_required(self) -> Any:
        return StandinCore._post_required()

    def _app_json(self, app: Application, sensitive: bool) -> dict[str, Any]:
        return ApplicationsMixin._app_json(self, app, sensitive)

    def _db_json(self, db: Database, sensitive: bool) -> dict[str, Any]:
        return DatabasesMixin._db_json(self, db, sensitive)

    def _start_database(self, db: Database) -> None:
        DatabasesMixin._start_database(self, db)

    def _queue_deployment(self, app: Application, **kw: Any) -> dict[str, Any]:
        return DeploymentsMixin._queue_deployment(self, app, **kw)

    def _visible_app(self, token: Token, uuid: str) -> Application | None:
        return ApplicationsMixin._visible_app(self, token, uuid)

    def _advance_databases(self, now: float) -> None:
        DatabasesMixin._advance_databases(self, now)

    def _take_build_fault(self, app_uuid: str) -> str | None:
        return FaultsMixin._take_build_fault(self, app_uuid)

    def _take_crash_fault(self, app_uuid: str) -> str | None:
        return FaultsMixin._take_crash_fault(self, app_uuid)

    def _take_fault(self, method: str, api_path: str) -> Fault | None:
        return FaultsMixin._take_fault(self, method, api_path)
