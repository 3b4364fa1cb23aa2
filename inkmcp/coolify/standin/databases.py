"""Standalone PostgreSQL: DatabasesController.php at 379abb2 (NOTES.md §b Databases).

`POST /databases/postgresql` (create_database :1764-1970): JSON body, the allow-list (422 per unknown key),
environment_name or _uuid (422), project (404), environment (422 "You need to provide a valid environment_name or
environment_uuid."), server (404), build server (422), `is_public` silently false without `public_port`
(:1802-1804), a public port used by another database of the server (400), public_port 1024-65535 (422),
postgres_conf base64. The common type rules (:1852-1878) are never enforced: the controller asks
`$validator->failed()`, which is empty before validation runs (:1874), so e.g. `limits_memory: 512` passes.
Answer **201** {uuid, internal_db_url, external_db_url when public} (the spec says 200, no schema).
`internal_db_url` = postgres://user:pass@<uuid>:5432/<db> (StandalonePostgresql.php:319-336), external with the
server's IP and public port. `instant_deploy` dispatches StartDatabase: `status_delay` later `running:healthy`.
GET shows passwords and both URLs only with can_read_sensitive (removeSensitiveData :56-84). DELETE is queued
like applications (DeleteResourceJob).

The PostgreSQL rules that *are* enforced (:1901-1908, `ValidationPatterns.php:122,129,307-390`): postgres_user and
postgres_db nullable strings of 1-63 characters matching `^[A-Za-z_][A-Za-z0-9_]{0,62}$`; postgres_password 1-128
characters among letters, digits and `!@#%^*()_+-=[]{}:,.?/~` (no shell metacharacters); Laravel's default messages
("The postgres user field format is invalid.", customApiValidator passes only `required`'s). Tags
(HandlesTagsApi::validateTagsParameter): each at least 2 characters after trim/strip_tags/lower-casing, else 422.
`server_status` is the model's appended `Server::isFunctional()` (StandalonePostgresql.php:61,151-157): false when
the server is unreachable, and then StartDatabase cannot start it (the status stays `exited`).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inkmcp.coolify.standin import rules
from inkmcp.coolify.standin.state import Database, NodeServer, Project, Token, new_uuid

DB_ALLOWED = ["name", "description", "image", "public_port", "public_port_timeout", "is_public", "project_uuid",
              "environment_name", "environment_uuid", "server_uuid", "destination_uuid", "instant_deploy",
              "limits_memory", "limits_memory_swap", "limits_memory_swappiness", "limits_memory_reservation",
              "limits_cpus", "limits_cpuset", "limits_cpu_shares", "postgres_user", "postgres_password",
              "postgres_db", "postgres_initdb_args", "postgres_host_auth_method", "postgres_conf", "tags"]
"""create_database, POSTGRESQL branch $allowedFields (:1893)."""

SENSITIVE_DB = {"postgres_password", "internal_db_url", "external_db_url", "init_scripts"}
DB_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
"""ValidationPatterns::DB_IDENTIFIER_PATTERN (fullmatch)."""
DB_SECRET_CHARS = r"[A-Za-z0-9!@#%^*()_+\-=\[\]{}:,.?/~]+"  # noqa: S105 - a regex
"""ValidationPatterns::DB_PASSWORD_PATTERN (fullmatch)."""


def _laravel_string_rules(key: str, value: Any, pattern: str, max_len: int) -> list[str]:
    """`nullable|string|min:1|max:N|regex:...` with Laravel 12's default messages (the type message comes from
    rules.fields)."""
    if value is None or not isinstance(value, str):
        return []
    label = key.replace("_", " ")
    errors = []
    if len(value) < 1:
        errors.append(f"The {label} field must be at least 1 characters.")
    if len(value) > max_len:
        errors.append(f"The {label} field must not be greater than {max_len} characters.")
    if not re.fullmatch(pattern, value):
        errors.append(f"The {label} field format is invalid.")
    return errors


def _bool(value: Any) -> bool:
    return value in (True, 1, "1", "true", "on", "yes")


class DatabasesMixin:
    ROUTES_DATABASES: list[tuple[str, str, str, str]] = [
        ("GET", r"/databases", "read", "_list_databases"),
        ("POST", r"/databases/postgresql", "write", "_create_postgresql"),
        ("GET", r"/databases/(?P<uuid>[^/]+)", "read", "_get_database"),
        ("DELETE", r"/databases/(?P<uuid>[^/]+)", "write", "_delete_database"),
        ("GET", r"/databases/(?P<uuid>[^/]+)/(?:start|stop|restart)", "deploy", "_db_action_get"),
        ("POST", r"/databases/(?P<uuid>[^/]+)/start", "deploy", "_db_start"),
        ("POST", r"/databases/(?P<uuid>[^/]+)/stop", "deploy", "_db_stop"),
        ("POST", r"/databases/(?P<uuid>[^/]+)/restart", "deploy", "_db_restart"),
    ]

    _lock: threading.RLock
    servers: dict[str, NodeServer]
    projects: dict[str, Project]
    databases: dict[str, Database]
    deleted_with: dict[str, dict[str, bool]]
    status_delay: float
    delete_delay: float

    def _id(self) -> int:
        raise NotImplementedError

    @staticmethod
    def _environment(project: Project, name: str | None, uuid: str | None = None) -> Any:
        raise NotImplementedError

    def _post_required(self) -> Response:
        raise NotImplementedError

    def _db_urls(self, db: Database) -> tuple[str, str | None]:
        f = db.fields
        cred = f"{quote(f['postgres_user'], safe='')}:{quote(f['postgres_password'], safe='')}"
        internal = f"postgres://{cred}@{db.uuid}:5432/{f['postgres_db']}"
        external = None
        if f.get("is_public") and f.get("public_port"):
            server = self.servers.get(db.server_uuid)
            if server is not None:
                external = f"postgres://{cred}@{server.ip}:{f['public_port']}/{f['postgres_db']}"
        return internal, external

    def _db_json(self, db: Database, sensitive: bool) -> dict[str, Any]:
        internal, external = self._db_urls(db)
        out: dict[str, Any] = {"uuid": db.uuid, "status": db.status, "environment_id": db.environment_id,
                               "destination_id": db.destination_id, "database_type": "standalone-postgresql",
                               "server_status": not self.servers[db.server_uuid].unreachable
                               if db.server_uuid in self.servers else False,
                               "created_at": db.created_at, "updated_at": db.updated_at,
                               "internal_db_url": internal, "external_db_url": external}
        out.update(db.fields)
        if not sensitive:
            for key in SENSITIVE_DB:
                out.pop(key, None)
        return dict(sorted(out.items()))

    def _start_database(self, db: Database) -> None:
        """StartDatabase::dispatch: the container runs `status_delay` later."""
        db.pending_status, db.status_at = "running:healthy", time.monotonic() + self.status_delay

    def _advance_databases(self, now: float) -> None:
        for db in list(self.databases.values()):
            lost = self.servers.get(db.server_uuid) is not None and self.servers[db.server_uuid].unreachable
            if lost and db.pending_status is not None and db.pending_status.startswith("running"):
                # StartDatabase works over SSH for `status_delay`: a server lost meanwhile fails the start (it stays
                # `exited`); it must not come up later on its own once the server is back
                db.pending_status, db.status_at = None, None
            if db.pending_status is not None and db.status_at is not None and db.status_at <= now:
                db.status, db.pending_status, db.status_at = db.pending_status, None, None
            if db.status.startswith("running") and self.servers.get(db.server_uuid) is not None \
                    and self.servers[db.server_uuid].unreachable:
                db.status = "exited"  # GetContainersStatus on an unreachable server
            if db.delete_at is not None and db.delete_at <= now:
                self.deleted_with[db.uuid] = dict(db.delete_flags)
                del self.databases[db.uuid]
                server = self.servers.get(db.server_uuid)
                if server is not None:
                    server.resources = max(0, server.resources - 1)

    # -- controllers ------------------------------------------------------------------------------------

    def _list_databases(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        return JSONResponse([self._db_json(d, sensitive) for d in self.databases.values()
                             if d.team_id == token.team_id])

    def _create_postgresql(self, token: Token, sensitive: bool, request: Request, raw: bytes,
                           body: Any) -> Response:
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        if not isinstance(body, dict):
            return JSONResponse({"message": "Invalid request.", "error": "Invalid JSON."}, 400)
        extra = [k for k in body if k not in DB_ALLOWED]
        if extra:
            return rules.invalid({k: ["This field is not allowed."] for k in extra})
        if not body.get("environment_uuid") and not body.get("environment_name"):
            return JSONResponse({"message": "You need to provide at least one of environment_name or "
                                            "environment_uuid."}, 422)
        if body.get("is_public") and not body.get("public_port"):
            body["is_public"] = False  # :1802-1804
        project = self.projects.get(str(body.get("project_uuid")))
        if project is None or project.team_id != token.team_id:
            return JSONResponse({"message": "Project not found."}, 404)
        environment = self._environment(project, body.get("environment_name"), body.get("environment_uuid"))
        if environment is None:
            return JSONResponse({"message": "You need to provide a valid environment_name or environment_uuid."},
                                422)
        server = self.servers.get(str(body.get("server_uuid")))
        if server is None or server.team_id != token.team_id:
            return JSONResponse({"message": "Server not found."}, 404)
        if server.settings.get("is_build_server"):
            return rules.invalid({"server_uuid": [
                "The specified server is configured as a build server and cannot host resources."]})
        port = body.get("public_port")
        if port is not None and body.get("is_public"):
            if any(d.server_uuid == server.uuid and d.fields.get("is_public") and d.fields.get("public_port") == port
                   for d in self.databases.values()):
                return JSONResponse({"message": "Public port already used by another database."}, 400)
        if "tags" in body:  # validateTagsParameter (after the never-enforced common rules)
            tags = body["tags"] if isinstance(body["tags"], list) else []
            names = list(dict.fromkeys(re.sub(r"<[^>]*>", "", str(t)).strip().lower() for t in tags))
            if any(len(t) < 2 for t in names):
                return rules.invalid({"tags": ["Each tag name must be at least 2 characters after sanitization."]})
            body["tags"] = names
        # :1852-1878 the common rules: never enforced ($validator->failed() before validation ran)
        if port and isinstance(port, int) and not 1024 <= port <= 65535:
            return rules.invalid({"public_port": "The public port should be between 1024 and 65535."})
        errors = rules.fields(body, None, {"postgres_user": "string", "postgres_password": "string",
                                           "postgres_db": "string", "postgres_initdb_args": "string",
                                           "postgres_host_auth_method": "string", "postgres_conf": "string"})
        for key, pattern, max_len in (("postgres_user", DB_IDENTIFIER, 63), ("postgres_password", DB_SECRET_CHARS, 128),
                                      ("postgres_db", DB_IDENTIFIER, 63)):
            for message in _laravel_string_rules(key, body.get(key), pattern, max_len):
                errors.setdefault(key, []).append(message)
        if errors:
            return rules.invalid(errors)
        conf = None
        if "postgres_conf" in body:
            conf = rules.b64_text(body["postgres_conf"])
            if conf is None:
                return rules.invalid({"postgres_conf": "The postgres_conf should be base64 encoded."})
        uuid = new_uuid()
        fields: dict[str, Any] = {
            "name": body.get("name") or f"postgresql-database-{uuid}", "image": "postgres:16-alpine",
            "postgres_user": "postgres", "postgres_password": secrets.token_urlsafe(48)[:64], "postgres_db": "postgres",
            "is_public": False, "public_port_timeout": 3600, "limits_memory": "0", "limits_memory_swap": "0",
            "limits_memory_swappiness": 60, "limits_memory_reservation": "0", "limits_cpus": "0",
            "limits_cpuset": "0", "limits_cpu_shares": 1024, "health_check_enabled": True}
        for key in DB_ALLOWED:
            if key in body and key not in ("project_uuid", "environment_name", "environment_uuid", "server_uuid",
                                           "destination_uuid", "instant_deploy", "tags") and body[key] is not None:
                fields[key] = body[key]
        if conf is not None:
            fields["postgres_conf"] = conf
        db = Database(self._id(), uuid, token.team_id, environment.id, server.uuid, server.destination_id, fields,
                      tags=list(body.get("tags") or []))
        self.databases[uuid] = db
        server.resources += 1
        if _bool(body.get("instant_deploy")):
            self._start_database(db)
        internal, external = self._db_urls(db)
        payload: dict[str, Any] = {"uuid": uuid, "internal_db_url": internal}
        if external:
            payload["external_db_url"] = external
        return JSONResponse(payload, 201)

    def _get_database(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                      uuid: str) -> Response:
        db = self.databases.get(uuid)
        if db is None or db.team_id != token.team_id:
            return JSONResponse({"message": "Database not found."}, 404)
        return JSONResponse(self._db_json(db, sensitive))

    def _delete_database(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                         uuid: str) -> Response:
        db = self.databases.get(uuid)
        if db is None or db.team_id != token.team_id:
            return JSONResponse({"message": "Database not found."}, 404)
        q = request.query_params
        if db.delete_at is None:
            db.delete_at = time.monotonic() + self.delete_delay
            db.delete_flags = {k: _bool(q.get(k, "true")) for k in (
                "delete_configurations", "delete_volumes", "docker_cleanup", "delete_connected_networks")}
        return JSONResponse({"message": "Database deletion request queued."})

    def _db_action_get(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                       uuid: str) -> Response:
        return self._post_required()

    def _visible_db(self, token: Token, uuid: str) -> Database | None:
        db = self.databases.get(uuid)
        return db if db is not None and db.team_id == token.team_id else None

    def _db_start(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                  uuid: str) -> Response:
        """action_deploy (:3155-3190): 400 when already running, else StartDatabase queued."""
        db = self._visible_db(token, uuid)
        if db is None:
            return JSONResponse({"message": "Database not found."}, 404)
        if "running" in db.status:
            return JSONResponse({"message": "Database is already running."}, 400)
        self._start_database(db)
        return JSONResponse({"message": "Database starting request queued."})

    def _db_stop(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                 uuid: str) -> Response:
        """action_stop (:3251-3290): 400 when stopped/exited, else StopDatabase queued."""
        db = self._visible_db(token, uuid)
        if db is None:
            return JSONResponse({"message": "Database not found."}, 404)
        if "stopped" in db.status or "exited" in db.status:
            return JSONResponse({"message": "Database is already stopped."}, 400)
        db.pending_status, db.status_at = "exited", time.monotonic() + self.status_delay
        return JSONResponse({"message": "Database stopping request queued."})

    def _db_restart(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                    uuid: str) -> Response:
        """action_restart (:3341-3373): RestartDatabase queued, no state check."""
        db = self._visible_db(token, uuid)
        if db is None:
            return JSONResponse({"message": "Database not found."}, 404)
        self._start_database(db)
        return JSONResponse({"message": "Database restarting request queued."})
