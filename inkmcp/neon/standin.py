"""A Neon API v2 stand-in for tests and local development: a real HTTP server (starlette on uvicorn,
127.0.0.1, an ephemeral port, in a thread this object starts and joins), stateful, for the operations InkMCP
uses (`inkmcp.neon.spec.OPERATIONS`).

It validates every request and every response against the vendored published spec (`inkmcp.neon.spec`) and
records what fails in `request_violations` / `response_violations` (a test asserts both are empty), and it
behaves as Neon's documentation says (SOURCE.md):

* auth: `Authorization: Bearer <key>` with a key from `api_keys`, else 401 (`GeneralError` body);
* rate limit: `rate_limit` requests per `rate_window` seconds per key, over it 429 (optionally `Retry-After`);
* projects are created with their default branch (`main`), read-write endpoint, role and database (names from
  `project.branch`, Neon's defaults `neondb` / `neondb_owner` otherwise) and return the role's password and
  connection URIs; duplicate project names are allowed, as in Neon;
* every change returns operations (`running`, `finished` after `op_delay` seconds); while a project has an
  unfinished operation, a change to it answers **423 Locked** (reads still answer);
* roles: create (409 when it exists), reset_password (new password), reveal_password (412 when the project does
  not store passwords); databases: create (owner must exist); project delete (then 404);
* fault injection (`inject`): an error status instead of the answer, with or without the change applied first
  (`apply=True`: the change happened, the answer was lost), or a delay before answering (a client timeout).

With `backing` (a real PostgreSQL the tests started, admin URL + the host/port apps use), roles and databases
are really created there (CREATE ROLE ... LOGIN PASSWORD, CREATE DATABASE ... OWNER, REVOKE CONNECT FROM
PUBLIC), passwords really reset, and a project delete drops them, so the connection URI handed out connects.
Names are global in one PostgreSQL cluster, unlike Neon's per-project clusters: tests use distinct names.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import psycopg
import uvicorn
from psycopg import sql
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inkmcp.neon.spec import NeonSpec

API_PREFIX = "/api/v2"
LOCKED_MESSAGE = "project already has running conflicting operations, scheduling of new ones is prohibited"
_WORDS = ("bold", "calm", "dawn", "fog", "glade", "hill", "lake", "mist", "pine", "rain", "sky", "wind")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _name_id(prefix: str = "") -> str:
    return f"{prefix}{secrets.choice(_WORDS)}-{secrets.choice(_WORDS)}-{secrets.randbelow(10**8):08d}"


@dataclass
class Backing:
    """A real PostgreSQL where roles/databases are made: `admin_url` (superuser, libpq form), and the host/port
    that connection URIs carry."""

    admin_url: SecretStr
    host: str
    port: int


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int | None
    apply: bool
    delay: float
    times: int


@dataclass
class Op:
    id: str
    project_id: str
    branch_id: str
    endpoint_id: str
    action: str
    created: str
    finish_at: float

    def json(self) -> dict[str, Any]:
        done = time.monotonic() >= self.finish_at
        return {"id": self.id, "project_id": self.project_id, "branch_id": self.branch_id,
                "endpoint_id": self.endpoint_id, "action": self.action,
                "status": "finished" if done else "running", "failures_count": 0,
                "created_at": self.created, "updated_at": _now() if not done else self.created,
                "total_duration_ms": 0}


@dataclass
class NeonProject:
    id: str
    name: str
    region_id: str
    pg_version: int
    org_id: str | None
    store_passwords: bool
    created: str
    min_cu: float
    max_cu: float
    branch_id: str
    endpoint_id: str
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    """name -> {"password": str, "created": str}"""
    databases: dict[str, dict[str, Any]] = field(default_factory=dict)
    """name -> {"id": int, "owner": str, "created": str}"""
    operations: list[Op] = field(default_factory=list)


class NeonStandin:
    """The stand-in server. `with NeonStandin(api_keys={"k"}) as neon: neon.url` (base URL incl. /api/v2)."""

    def __init__(self, *, api_keys: set[str] | None = None, op_delay: float = 0.05,
                 backing: Backing | None = None, uri_options: dict[str, str] | None = None,
                 rate_limit: int | None = None, rate_window: float = 60.0, retry_after: int | None = None,
                 region: str = "aws-us-east-2") -> None:
        self.spec = NeonSpec.load()
        self.api_keys = set(api_keys or {"neon-standin-key"})
        self.op_delay = op_delay
        self.backing = backing
        self.uri_options = dict(uri_options if uri_options is not None else {"sslmode": "require"})
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.retry_after = retry_after
        self.region = region
        self.projects: dict[str, NeonProject] = {}
        self.deleted: set[str] = set()
        self.requests: list[tuple[str, str, int]] = []
        self.request_violations: list[str] = []
        self.response_violations: list[str] = []
        self.seen_authorizations: set[str] = set()
        self._faults: list[Fault] = []
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.RLock()
        self._next_db_id = 1000
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.app = Starlette(routes=[Route("/{path:path}", self._handle,
                                           methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])

    # -- lifecycle --------------------------------------------------------------------------------------------

    def __enter__(self) -> NeonStandin:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="neon-standin", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Neon stand-in did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{API_PREFIX}"

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                raise RuntimeError("the Neon stand-in thread did not stop")
        self._server = self._thread = None

    # -- test controls ----------------------------------------------------------------------------------------

    def inject(self, method: str, pattern: str, *, status: int | None = 500, apply: bool = False,
               delay: float = 0.0, times: int = 1) -> None:
        """The next `times` requests `method` on an API path matching `pattern` (regex, full match, without
        /api/v2) answer `status` (None: the real answer) after `delay` seconds. `apply`: the change is made at
        once and only the answer is late or replaced (a lost answer); otherwise nothing happens before the delay
        and, with a status, nothing at all."""
        with self._lock:
            self._faults.append(Fault(method.upper(), re.compile(pattern), status, apply, delay, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def by_name(self, name: str) -> list[NeonProject]:
        with self._lock:
            return [p for p in self.projects.values() if p.name == name]

    def count(self, method: str, pattern: str) -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.requests if m == method and re.fullmatch(pattern, p))

    # -- HTTP -------------------------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        raw = await request.body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return self._error(400, "request body is not JSON")
        api_path = path.removeprefix(API_PREFIX)
        query = dict(request.query_params)
        auth = request.headers.get("authorization")
        with self._lock:
            if auth:
                self.seen_authorizations.add(auth)
            self.request_violations += [
                f"{request.method} {api_path}: {p}" for p in self.spec.request_problems(
                    request.method, api_path, query=query, body=body, has_body=bool(raw), authorization=auth)]
            fault = self._take_fault(request.method, api_path)
        if fault is not None and fault.delay and not fault.apply:
            await asyncio.sleep(fault.delay)  # nothing happens until the delay is over
        with self._lock:
            response = self._answer(request.method, path, api_path, query, body, auth, fault)
            self.requests.append((request.method, api_path, response.status_code))
            problems = self.spec.response_problems(request.method, api_path, response.status_code,
                                                   json.loads(bytes(response.body)))
            self.response_violations += [f"{request.method} {api_path} -> {response.status_code}: {p}"
                                         for p in problems]
        if fault is not None and fault.delay and fault.apply:
            await asyncio.sleep(fault.delay)  # the change is made; the answer comes late (or to nobody)
        return response

    def _take_fault(self, method: str, api_path: str) -> Fault | None:
        for fault in self._faults:
            if fault.method == method and fault.pattern.fullmatch(api_path) and fault.times > 0:
                fault.times -= 1
                return fault
        return None

    @staticmethod
    def _error(status: int, message: str, code: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"code": code, "message": message, "request_id": str(uuid.uuid4())}, status,
                            headers=headers)

    def _answer(self, method: str, path: str, api_path: str, query: dict[str, str], body: Any,
                auth: str | None, fault: Fault | None) -> JSONResponse:
        if not path.startswith(API_PREFIX + "/"):
            return self._error(404, "not found")
        if not auth or not auth.startswith("Bearer ") or auth[7:] not in self.api_keys:
            return self._error(401, "authentication required")
        key = auth[7:]
        if self.rate_limit is not None:
            hits = self._hits.setdefault(key, deque())
            now = time.monotonic()
            while hits and hits[0] <= now - self.rate_window:
                hits.popleft()
            if len(hits) >= self.rate_limit:
                headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
                return self._error(429, "too many requests", headers=headers)
            hits.append(now)
        if fault is not None and fault.status is not None and not fault.apply:
            return self._error(fault.status, "injected fault")
        try:
            response = self._route(method, api_path, query, body)
        except _Answer as a:
            response = self._error(a.status, a.message)
        if fault is not None and fault.status is not None:
            return self._error(fault.status, "injected fault (the change was applied)")
        return response

    # -- routes -----------------------------------------------------------------------------------------------

    def _route(self, method: str, p: str, query: dict[str, str], body: Any) -> JSONResponse:
        seg = [unquote(s) for s in p.strip("/").split("/")]
        if seg == ["projects"]:
            return self._list_projects(query) if method == "GET" else self._create_project(body or {})
        if len(seg) < 2 or seg[0] != "projects":
            raise _Answer(404, "not found")
        project = self._project(seg[1])
        rest = seg[2:]
        if method != "GET":
            self._check_unlocked(project)
        if not rest:
            if method == "GET":
                return JSONResponse({"project": self._project_json(project)})
            if method == "DELETE":
                return self._delete_project(project)
        elif rest == ["connection_uri"] and method == "GET":
            return self._connection_uri(project, query)
        elif rest[0] == "operations" and len(rest) == 2 and method == "GET":
            op = next((o for o in project.operations if o.id == rest[1]), None)
            if op is None:
                raise _Answer(404, "operation not found")
            return JSONResponse({"operation": op.json()})
        elif rest == ["branches"] and method == "GET":
            return JSONResponse({"branches": [self._branch_json(project)], "annotations": {}})
        elif rest[0] == "branches" and len(rest) >= 3:
            if rest[1] != project.branch_id:
                raise _Answer(404, "branch not found")
            return self._branch_route(method, project, rest[2:], body or {})
        raise _Answer(404, "not found")

    def _branch_route(self, method: str, project: NeonProject, rest: list[str], body: Any) -> JSONResponse:
        if rest == ["roles"] and method == "POST":
            name = body.get("role", {}).get("name", "")
            if name in project.roles:
                raise _Answer(409, f"role \"{name}\" already exists")
            password = self._make_role(project, name)
            ops = [self._op(project, "apply_config")]
            return JSONResponse({"role": self._role_json(project, name, password),
                                 "operations": [o.json() for o in ops]}, 201)
        if rest[0] == "roles" and len(rest) >= 2:
            name = rest[1]
            if name not in project.roles:
                raise _Answer(404, "role not found")
            if len(rest) == 2 and method == "GET":
                return JSONResponse({"role": self._role_json(project, name)})
            if rest[2:] == ["reset_password"] and method == "POST":
                password = secrets.token_urlsafe(18)
                project.roles[name]["password"] = password
                self._backing_sql(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)))
                ops = [self._op(project, "apply_config")]
                return JSONResponse({"role": self._role_json(project, name, password),
                                     "operations": [o.json() for o in ops]})
            if rest[2:] == ["reveal_password"] and method == "GET":
                if not project.store_passwords:
                    raise _Answer(412, "passwords are not stored for this project")
                return JSONResponse({"password": project.roles[name]["password"]})
        if rest == ["databases"] and method == "POST":
            spec = body.get("database", {})
            name, owner = spec.get("name", ""), spec.get("owner_name", "")
            if name in project.databases:
                raise _Answer(409, f"database \"{name}\" already exists")
            if owner not in project.roles:
                raise _Answer(400, f"role \"{owner}\" does not exist")
            self._make_database(project, name, owner)
            ops = [self._op(project, "apply_config")]
            return JSONResponse({"database": self._db_json(project, name), "operations": [o.json() for o in ops]},
                                201)
        if rest[0] == "databases" and len(rest) == 2 and method == "GET":
            if rest[1] not in project.databases:
                raise _Answer(404, "database not found")
            return JSONResponse({"database": self._db_json(project, rest[1])})
        raise _Answer(404, "not found")

    # -- behaviour --------------------------------------------------------------------------------------------

    def _project(self, project_id: str) -> NeonProject:
        project = self.projects.get(project_id)
        if project is None:
            raise _Answer(404, "project not found")
        return project

    def _check_unlocked(self, project: NeonProject) -> None:
        now = time.monotonic()
        if any(op.finish_at > now for op in project.operations):
            raise _Answer(423, LOCKED_MESSAGE)

    def _op(self, project: NeonProject, action: str) -> Op:
        op = Op(str(uuid.uuid4()), project.id, project.branch_id, project.endpoint_id, action, _now(),
                time.monotonic() + self.op_delay)
        project.operations.append(op)
        return op

    def _list_projects(self, query: dict[str, str]) -> JSONResponse:
        search = query.get("search", "")
        limit = int(query.get("limit", "10"))
        org = query.get("org_id")
        found = [p for p in self.projects.values()
                 if (search in p.name or search in p.id) and (org is None or p.org_id == org)]
        found.sort(key=lambda p: (p.created, p.id))
        start = int(query["cursor"]) if query.get("cursor", "").isdigit() else 0
        page = found[start:start + limit]
        return JSONResponse({"projects": [self._list_item(p) for p in page],
                             "pagination": {"cursor": str(start + len(page)), "limit": limit},
                             "applications": {}, "integrations": {}})

    def _create_project(self, body: dict[str, Any]) -> JSONResponse:
        spec = body.get("project", {})
        branch = spec.get("branch") or {}
        database = branch.get("database_name") or "neondb"
        role = branch.get("role_name") or f"{database}_owner"
        endpoint = spec.get("default_endpoint_settings") or {}
        project = NeonProject(
            id=_name_id(), name=spec.get("name") or _name_id(), region_id=spec.get("region_id") or self.region,
            pg_version=spec.get("pg_version", 17), org_id=spec.get("org_id"),
            store_passwords=spec.get("store_passwords", True), created=_now(),
            min_cu=endpoint.get("autoscaling_limit_min_cu", 0.25),
            max_cu=endpoint.get("autoscaling_limit_max_cu", 0.25),
            branch_id=_name_id("br-"), endpoint_id=_name_id("ep-"))
        self.projects[project.id] = project
        password = self._make_role(project, role)
        self._make_database(project, database, role)
        ops = [self._op(project, "create_timeline"), self._op(project, "start_compute")]
        uri = self._uri(project, role, password, database)
        return JSONResponse({
            "project": self._project_json(project),
            "connection_uris": [{"connection_uri": uri, "connection_parameters": {
                "database": database, "password": password, "role": role, "host": self._host(project),
                "pooler_host": self._host(project, pooled=True)}}],
            "roles": [self._role_json(project, role, password)],
            "databases": [self._db_json(project, database)],
            "operations": [o.json() for o in ops],
            "branch": self._branch_json(project),
            "endpoints": [self._endpoint_json(project)],
        }, 201)

    def _delete_project(self, project: NeonProject) -> JSONResponse:
        answer = {"project": self._project_json(project)}
        for name in project.databases:
            self._backing_sql(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        for name in project.roles:
            self._backing_sql(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        del self.projects[project.id]
        self.deleted.add(project.id)
        return JSONResponse(answer)

    def _make_role(self, project: NeonProject, name: str) -> str:
        password = secrets.token_urlsafe(18)
        project.roles[name] = {"password": password, "created": _now()}
        self._backing_sql(sql.SQL("CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)))
        return password

    def _make_database(self, project: NeonProject, name: str, owner: str) -> None:
        self._next_db_id += 1
        project.databases[name] = {"id": self._next_db_id, "owner": owner, "created": _now()}
        self._backing_sql(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
        self._backing_sql(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))

    def _backing_sql(self, statement: sql.Composable) -> None:
        if self.backing is None:
            return
        with psycopg.connect(self.backing.admin_url.get_secret_value(), autocommit=True) as conn:
            conn.execute(statement)

    def _host(self, project: NeonProject, pooled: bool = False) -> str:
        if self.backing is not None:
            return self.backing.host
        return f"{project.endpoint_id}{'-pooler' if pooled else ''}.{project.region_id}.aws.neon.tech"

    def _uri(self, project: NeonProject, role: str, password: str, database: str) -> str:
        port = f":{self.backing.port}" if self.backing is not None else ""
        query = "&".join(f"{k}={quote(v)}" for k, v in self.uri_options.items())
        return (f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}@{self._host(project)}{port}/"
                f"{quote(database, safe='')}" + (f"?{query}" if query else ""))

    def _connection_uri(self, project: NeonProject, query: dict[str, str]) -> JSONResponse:
        if query.get("branch_id", project.branch_id) != project.branch_id:
            raise _Answer(404, "branch not found")
        role, database = query.get("role_name", ""), query.get("database_name", "")
        if role not in project.roles:
            raise _Answer(404, "role not found")
        if database not in project.databases:
            raise _Answer(404, "database not found")
        return JSONResponse({"uri": self._uri(project, role, project.roles[role]["password"], database)})

    # -- JSON shapes (components/schemas of the spec) ---------------------------------------------------------

    def _project_json(self, p: NeonProject) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": p.id, "platform_id": "aws", "region_id": p.region_id, "name": p.name, "provisioner": "k8s-neonvm",
            "pg_version": p.pg_version, "proxy_host": f"{p.region_id}.aws.neon.tech",
            "branch_logical_size_limit": 0, "branch_logical_size_limit_bytes": 0,
            "store_passwords": p.store_passwords, "cpu_used_sec": 0, "creation_source": "console",
            "history_retention_seconds": 86400, "created_at": p.created, "updated_at": p.created,
            "owner_id": "standin-owner", "consumption_period_start": p.created,
            "consumption_period_end": p.created, "active_time_seconds": 0, "compute_time_seconds": 0,
            "written_data_bytes": 0, "data_transfer_bytes": 0, "data_storage_bytes_hour": 0,
        }
        if p.org_id:
            out["org_id"] = p.org_id
        return out

    def _list_item(self, p: NeonProject) -> dict[str, Any]:
        full = self._project_json(p)
        keep = ("id", "platform_id", "region_id", "name", "provisioner", "pg_version", "proxy_host",
                "branch_logical_size_limit", "branch_logical_size_limit_bytes", "store_passwords", "cpu_used_sec",
                "creation_source", "created_at", "updated_at", "owner_id", "org_id")
        return {**{k: full[k] for k in keep if k in full}, "active_time": 0}

    def _branch_json(self, p: NeonProject) -> dict[str, Any]:
        return {"id": p.branch_id, "project_id": p.id, "name": "main", "current_state": "ready",
                "state_changed_at": p.created, "creation_source": "console", "primary": True, "default": True,
                "protected": False, "cpu_used_sec": 0, "compute_time_seconds": 0, "active_time_seconds": 0,
                "written_data_bytes": 0, "data_transfer_bytes": 0, "created_at": p.created, "updated_at": p.created}

    def _endpoint_json(self, p: NeonProject) -> dict[str, Any]:
        return {"host": self._host(p), "id": p.endpoint_id, "project_id": p.id, "branch_id": p.branch_id,
                "region_id": p.region_id, "autoscaling_limit_min_cu": p.min_cu,
                "autoscaling_limit_max_cu": p.max_cu, "type": "read_write", "current_state": "idle",
                "pooler_enabled": False, "pooler_mode": "transaction", "disabled": False,
                "passwordless_access": True, "creation_source": "console", "created_at": p.created,
                "updated_at": p.created, "settings": {}, "proxy_host": f"{p.region_id}.aws.neon.tech",
                "suspend_timeout_seconds": 0, "provisioner": "k8s-neonvm"}

    def _role_json(self, p: NeonProject, name: str, password: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"branch_id": p.branch_id, "name": name, "protected": False,
                               "created_at": p.roles[name]["created"], "updated_at": p.roles[name]["created"]}
        if password is not None:
            out["password"] = password
        return out

    def _db_json(self, p: NeonProject, name: str) -> dict[str, Any]:
        db = p.databases[name]
        return {"id": db["id"], "branch_id": p.branch_id, "name": name, "owner_name": db["owner"],
                "created_at": db["created"], "updated_at": db["created"]}


class _Answer(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def main(argv: list[str] | None = None) -> None:
    """`python -m inkmcp.neon.standin [--key K] [--backing-url postgresql://… --backing-host H --backing-port P]`:
    a local Neon for development; prints the INKMCP_NEON_* lines to export and serves until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--key", default=secrets.token_hex(16), help="API key the stand-in accepts")
    parser.add_argument("--op-delay", type=float, default=0.5, help="seconds each Neon operation runs")
    parser.add_argument("--backing-url", help="superuser URL of a real PostgreSQL to create roles/databases on")
    parser.add_argument("--backing-host", default="127.0.0.1", help="host apps use to reach that server")
    parser.add_argument("--backing-port", type=int, default=5432, help="port apps use to reach that server")
    args = parser.parse_args(argv)
    backing = (Backing(SecretStr(args.backing_url), args.backing_host, args.backing_port)
               if args.backing_url else None)
    standin = NeonStandin(api_keys={args.key}, op_delay=args.op_delay, backing=backing,
                          uri_options={"sslmode": "disable"} if backing else None)
    standin.start()
    print(f"INKMCP_NEON_API_URL={standin.url}\nINKMCP_NEON_API_KEY={args.key}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
