"""Projects and environments: app/Http/Controllers/Api/ProjectController.php at 379abb2 (NOTES.md §b).

A project is created with its `production` environment (Project.php:55-63, `static::created`). Names follow
ValidationPatterns::nameRules (3-255 chars, letters/digits/space -_.@/&()#,:+). A project or environment that
still holds resources cannot be deleted (400, ProjectController.php:506, :918). Environment lookups take a name
first, then a uuid (:182-186), like the create-application lookup.
"""

from __future__ import annotations

import threading
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inkmcp.coolify.standin import rules
from inkmcp.coolify.standin.state import Application, Database, Environment, NodeServer, Project, Token, new_uuid


def _name_errors(body: dict[str, Any], key: str, required: bool = True) -> list[str]:
    value = body.get(key)
    if value is None:
        return ["The name field is required."] if required else []
    if not isinstance(value, str):
        return [f"The {key} field must be a string."]
    errors = []
    if len(value) < 3:
        errors.append(f"The {key} must be at least 3 characters.")
    if len(value) > 255:
        errors.append(f"The {key} may not be greater than 255 characters.")
    if not rules.NAME_PATTERN.fullmatch(value):
        errors.append(f"The {key} may only contain letters, numbers, spaces, and the characters - _ . @ / & ( ) "
                      "# , : +")
    return errors


class ProjectsMixin:
    ROUTES_PROJECTS: list[tuple[str, str, str, str]] = [
        ("GET", r"/projects", "read", "_list_projects"),
        ("POST", r"/projects", "write", "_create_project"),
        ("GET", r"/projects/(?P<uuid>[^/]+)", "read", "_get_project"),
        ("PATCH", r"/projects/(?P<uuid>[^/]+)", "write", "_update_project"),
        ("DELETE", r"/projects/(?P<uuid>[^/]+)", "write", "_delete_project"),
        # routes/api.php:98 before :108, so /environments is not taken for an environment name
        ("GET", r"/projects/(?P<uuid>[^/]+)/environments", "read", "_list_environments"),
        ("POST", r"/projects/(?P<uuid>[^/]+)/environments", "write", "_create_environment"),
        ("DELETE", r"/projects/(?P<uuid>[^/]+)/environments/(?P<env>[^/]+)", "write", "_delete_environment"),
        ("GET", r"/projects/(?P<uuid>[^/]+)/(?P<env>[^/]+)", "read", "_get_environment"),
        ("GET", r"/servers/(?P<uuid>[^/]+)/resources", "read", "_server_resources"),
    ]

    _lock: threading.RLock
    projects: dict[str, Project]
    servers: dict[str, NodeServer]
    applications: dict[str, Application]
    databases: dict[str, Database]

    def _id(self) -> int:
        raise NotImplementedError

    def _app_json(self, app: Application, sensitive: bool) -> dict[str, Any]:
        raise NotImplementedError

    def _db_json(self, db: Database, sensitive: bool) -> dict[str, Any]:
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------------------

    def add_project(self, name: str = "inkmcp", *, team_id: int = 0, description: str | None = None) -> Project:
        """A project that already exists (with its `production` environment)."""
        with self._lock:
            project = Project(self._id(), new_uuid(), team_id, name, description)
            project.environments.append(Environment(self._id(), new_uuid(), "production", project.id))
            self.projects[project.uuid] = project
            return project

    def _project(self, token: Token, uuid: str) -> Project | None:
        project = self.projects.get(uuid)
        return project if project is not None and project.team_id == token.team_id else None

    @staticmethod
    def _environment(project: Project, name: str | None, uuid: str | None = None) -> Environment | None:
        found = next((e for e in project.environments if name is not None and e.name == name), None)
        if found is None and uuid is not None:
            found = next((e for e in project.environments if e.uuid == uuid), None)
        return found

    def _environment_resources(self, env: Environment) -> tuple[list[Application], list[Database]]:
        apps = [a for a in self.applications.values() if a.environment_id == env.id]
        dbs = [d for d in self.databases.values() if d.environment_id == env.id]
        return apps, dbs

    @staticmethod
    def _project_json(project: Project, with_environments: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"id": project.id, "uuid": project.uuid, "name": project.name}
        if project.description is not None:
            out["description"] = project.description
        if with_environments:
            out["environments"] = [ProjectsMixin._environment_json(e) for e in project.environments]
        return out

    @staticmethod
    def _environment_json(env: Environment) -> dict[str, Any]:
        out: dict[str, Any] = {"id": env.id, "uuid": env.uuid, "name": env.name, "project_id": env.project_id,
                               "created_at": env.created_at, "updated_at": env.updated_at}
        if env.description is not None:
            out["description"] = env.description
        return out

    # -- controllers ------------------------------------------------------------------------------------

    def _list_projects(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        # ProjectController.php:55 selects id, name, description, uuid
        return JSONResponse([self._project_json(p, False) for p in self.projects.values()
                             if p.team_id == token.team_id])

    def _get_project(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                     uuid: str) -> Response:
        project = self._project(token, uuid)
        if project is None:
            return JSONResponse({"message": "Project not found."}, 404)
        return JSONResponse(self._project_json(project, True))

    def _create_project(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        errors: dict[str, list[str]] = {}
        if name_errors := _name_errors(body, "name"):
            errors["name"] = name_errors
        if body.get("description") is not None and not isinstance(body["description"], str):
            errors["description"] = ["The description field must be a string."]
        for key in body:
            if key not in ("name", "description"):
                errors.setdefault(key, []).append("This field is not allowed.")
        if errors:
            return rules.invalid(errors)
        project = self.add_project(body["name"], team_id=token.team_id, description=body.get("description"))
        return JSONResponse({"uuid": project.uuid}, 201)

    def _update_project(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                        uuid: str) -> Response:
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        errors: dict[str, list[str]] = {}
        if "name" in body and (name_errors := _name_errors(body, "name", required=False)):
            errors["name"] = name_errors
        for key in body:
            if key not in ("name", "description"):
                errors.setdefault(key, []).append("This field is not allowed.")
        if errors:
            return rules.invalid(errors)
        project = self._project(token, uuid)
        if project is None:
            return JSONResponse({"message": "Project not found."}, 404)
        project.name = body.get("name", project.name)
        project.description = body.get("description", project.description)
        return JSONResponse({"uuid": project.uuid, "name": project.name, "description": project.description}, 201)

    def _delete_project(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                        uuid: str) -> Response:
        project = self._project(token, uuid)
        if project is None:
            return JSONResponse({"message": "Project not found."}, 404)
        if any(any(self._environment_resources(e)) for e in project.environments):
            return JSONResponse({"message": "Project has resources, so it cannot be deleted."}, 400)
        del self.projects[uuid]
        return JSONResponse({"message": "Project deleted."})

    def _list_environments(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                           uuid: str) -> Response:
        project = self._project(token, uuid)
        if project is None:
            return JSONResponse({"message": "Project not found."}, 404)
        # ProjectController.php:559 selects id, name, uuid
        return JSONResponse([{"id": e.id, "uuid": e.uuid, "name": e.name} for e in project.environments])

    def _create_environment(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                            uuid: str) -> Response:
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        errors: dict[str, list[str]] = {}
        if name_errors := _name_errors(body, "name"):
            errors["name"] = name_errors
        for key in body:
            if key != "name":
                errors.setdefault(key, []).append("This field is not allowed.")
        if errors:
            return rules.invalid(errors)
        project = self._project(token, uuid)
        if project is None:
            return JSONResponse({"message": "Project not found."}, 404)
        if self._environment(project, body["name"]) is not None:
            return JSONResponse({"message": "Environment with this name already exists."}, 409)
        env = Environment(self._id(), new_uuid(), body["name"], project.id)
        project.environments.append(env)
        return JSONResponse({"uuid": env.uuid}, 201)

    def _delete_environment(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                            uuid: str, env: str) -> Response:
        project = self._project(token, uuid)
        if project is None:
            return JSONResponse({"message": "Project not found."}, 404)
        environment = self._environment(project, env, env)
        if environment is None:
            return JSONResponse({"message": "Environment not found."}, 404)
        if any(self._environment_resources(environment)):
            return JSONResponse({"message": "Environment has resources, so it cannot be deleted."}, 400)
        project.environments.remove(environment)
        return JSONResponse({"message": "Environment deleted."})

    def _get_environment(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                         uuid: str, env: str) -> Response:
        project = self._project(token, uuid)
        if project is None:
            return JSONResponse({"message": "Project not found."}, 404)
        environment = self._environment(project, env, env)
        if environment is None:
            return JSONResponse({"message": "Environment not found."}, 404)
        apps, dbs = self._environment_resources(environment)
        # ProjectController.php:198-203: loads applications, postgresqls, redis, mongodbs, mysqls, mariadbs,
        # services, each with exposeSensitiveFields
        out = self._environment_json(environment)
        out.update(applications=[self._app_json(a, sensitive) for a in apps],
                   postgresqls=[self._db_json(d, sensitive) for d in dbs], redis=[], mongodbs=[], mysqls=[],
                   mariadbs=[], services=[])
        return JSONResponse(out)

    def _server_resources(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                          uuid: str) -> Response:
        """ServersController::resources_by_server (:231-257): applications and databases on the server, each
        {id, uuid, name, type, created_at, updated_at, status} (what a reconciler compares its records with)."""
        server = self.servers.get(uuid)
        if server is None or server.team_id != token.team_id:
            return JSONResponse({"message": "Server not found."}, 404)
        out: list[dict[str, Any]] = []
        for app in self.applications.values():
            if app.server_uuid == uuid:
                out.append({"id": app.id, "uuid": app.uuid, "name": app.fields.get("name"), "type": "application",
                            "created_at": app.created_at, "updated_at": app.updated_at, "status": app.status})
        for db in self.databases.values():
            if db.server_uuid == uuid:
                out.append({"id": db.id, "uuid": db.uuid, "name": db.fields.get("name"),
                            "type": "standalone-postgresql", "created_at": db.created_at,
                            "updated_at": db.updated_at, "status": db.status})
        return JSONResponse(out)
