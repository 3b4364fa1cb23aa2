"""A Coolify 4.3.11 API stand-in for the servers, Sentinel and proxy endpoints: a real HTTP server (starlette on
uvicorn, 127.0.0.1, an ephemeral port, in a thread this object starts and joins).

It validates every request and every response against Coolify's published spec (`inkmcp.coolify.spec`;
deviations from the spec only as NOTES.md and the controllers at 379abb2 say) and records what fails in
`request_violations` / `response_violations`, and it behaves like the real controllers where a client can get it
wrong (../shared/coolify/NOTES.md §a, app/Http/Controllers/Api/{Servers,ServerProxy,ServerSentinel}Controller.php):

* middleware order of Laravel's api group: Sanctum bearer auth (401 "Unauthenticated."), then the throttle per
  *user* (all tokens of one user share `rate_limit` requests per `rate_window` seconds; 429 "Too Many Attempts."
  with Retry-After and X-RateLimit-* headers; rendered as HTML unless the client accepts JSON), then the token's
  team (400 "Invalid token."), then the ability (`read`/`write`, `root` passes; 403 "Missing required
  permissions: write"), then `can_read_sensitive` (`read:sensitive` or `root`, admin user);
* controllers: JSON-only bodies (400), allow-lists (422 "This field is not allowed." per unknown key), field
  rules, 404 "Server not found.", 400 "A server with this IP/Domain is already in use." (any team);
  build servers: `is_build_server` stored at create and by PATCH (422 for a server with resources, the flag
  only), Sentinel cannot be switched on for one (422);
* state the way Coolify keeps it: the proxy compose in the server's DB copy (`last_saved_proxy_configuration`,
  `last_saved_settings` = md5 of its base64) and written to `<nodes_root>/<ip>/data/coolify/proxy/
  docker-compose.yml` by `SaveProxyConfiguration` (backup of the old file under `backups/` when it changed);
  every proxy start or restart runs `GetProxyConfiguration` (DB copy, else backfill from the node's file, else
  Coolify's default) and `SaveProxyConfiguration` again, so the file is rewritten from the database, then
  "starts" the proxy from that file (`running_proxy`), and records `last_applied_settings`;
* queued work: validation completes `validation_delay` seconds after `POST …/validate` (is_reachable/is_usable,
  or Coolify's validation log when `nodes_reachable` / `docker_missing` say it fails); a node that cannot be
  reached over SSH makes `PUT …/proxy/configuration` answer 500 after the DB copy is stored, as
  `SaveProxyConfiguration` does (it stores, then `instant_remote_process` throws);
  the proxy restart is applied before the answer (the job's effect; real Coolify queues it).

Operator/Coolify-side actions a test needs are methods: `start_proxy` (Coolify's own start, e.g. after
validation in the UI or `ServerCheckJob`'s healing), `compose_up_from_disk` (what a shell edit + `docker compose
up` on the node does), `reset_proxy_configuration` (the UI button), `set_sentinel`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inkmcp.coolify.proxy import default_traefik_compose, parse_compose
from inkmcp.coolify.spec import CoolifySpec

ABILITIES = {"root", "read", "read:sensitive", "write", "write:sensitive", "deploy"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _uuid() -> str:
    """Coolify's new_public_id(): 24 lowercase alphanumerics."""
    return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(24))


@dataclass
class Token:
    plain: str
    user_id: int
    team_id: int
    abilities: frozenset[str]
    admin: bool = True


@dataclass
class Seen:
    """One request as the stand-in received it, and its answer."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int
    operation: str = ""
    user_id: int | None = None
    at: float = 0.0

    @property
    def write(self) -> bool:
        return self.method != "GET"


@dataclass
class NodeServer:
    uuid: str
    team_id: int
    name: str
    description: str | None
    ip: str
    port: int
    user: str
    private_key_uuid: str
    settings: dict[str, Any]
    proxy: dict[str, Any]
    validation_logs: str | None = None
    validating_until: float | None = None
    running_proxy: dict[str, Any] | None = None
    id: int = 0
    resources: int = 0
    """Applications, databases and services on the server (`Server::isEmpty` when 0)."""


@dataclass
class Throttle:
    hits: int = 0
    resets_at: float = 0.0


class CoolifyStandin:
    """See the module docstring. Use as a context manager; `url` is the base URL (API under /api/v1)."""

    def __init__(self, nodes_root: Path, *, rate_limit: int = 200, rate_window: float = 60.0,
                 validation_delay: float = 0.05, nodes_reachable: bool = True, docker_missing: bool = False,
                 spec: CoolifySpec | None = None, port: int = 0) -> None:
        self.nodes_root = nodes_root
        self.port = port
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.validation_delay = validation_delay
        self.nodes_reachable = nodes_reachable
        self.docker_missing = docker_missing
        self.spec = spec or CoolifySpec.load()
        self.api_enabled = True
        self.tokens: dict[str, Token] = {}
        self.private_keys: dict[str, int] = {}  # uuid -> team
        self.servers: dict[str, NodeServer] = {}
        self.requests: list[Seen] = []
        self.request_violations: list[str] = []
        self.response_violations: list[str] = []
        self._throttle: dict[int, Throttle] = {}
        self._lock = threading.RLock()
        self._next_id = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.app = Starlette(routes=[Route("/{path:path}", self._handle,
                                           methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])

    # -- lifecycle ------------------------------------------------------------------------------------

    def __enter__(self) -> CoolifyStandin:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="coolify-standin", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Coolify stand-in did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                raise RuntimeError("the Coolify stand-in thread did not stop")
        self._server = self._thread = None

    # -- fixtures a test sets up -----------------------------------------------------------------------

    def add_token(self, *abilities: str, team_id: int = 0, user_id: int = 1, admin: bool = True) -> str:
        unknown = set(abilities) - ABILITIES
        assert not unknown, f"unknown abilities {unknown}"
        with self._lock:
            self._next_id += 1
            plain = f"{self._next_id}|{secrets.token_hex(20)}"
            self.tokens[plain] = Token(plain, user_id, team_id, frozenset(abilities), admin)
            return plain

    def add_private_key(self, team_id: int = 0) -> str:
        uuid = _uuid()
        self.private_keys[uuid] = team_id
        return uuid

    def add_server(self, ip: str, *, team_id: int = 0, name: str = "existing", description: str | None = None,
                   is_build_server: bool = False, usable: bool = False, resources: int = 0) -> NodeServer:
        """A server that already exists in Coolify (created in the UI, by another team, or by the old script)."""
        with self._lock:
            server = self._new_server(team_id, name, description, ip, 22, "root", "", is_build_server)
            server.resources = resources
            if usable:
                server.settings.update(is_reachable=True, is_usable=True)
            return server

    def node_root(self, ip: str) -> Path:
        return self.nodes_root / ip

    def proxy_file(self, ip: str) -> Path:
        return self.node_root(ip) / "data/coolify/proxy/docker-compose.yml"

    def server_by_ip(self, ip: str) -> NodeServer:
        with self._lock:
            return next(s for s in self.servers.values() if s.ip == ip)

    def writes(self) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.write]

    def log(self) -> list[str]:
        """`METHOD path status` per request, for assertions on order and count."""
        with self._lock:
            return [f"{r.method} {r.path} {r.status}" for r in self.requests]

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.request_violations.clear()

    # -- Coolify's own actions (not API calls) ---------------------------------------------------------

    def start_proxy(self, uuid: str) -> None:
        """`StartProxy` (StartProxy.php:33-85): configuration from the DB (or backfill / default), written to
        the node, `docker compose pull` + `up` of that file."""
        with self._lock:
            self._start(self.servers[uuid])

    def compose_up_from_disk(self, ip: str) -> None:
        """What `docker compose -f /data/coolify/proxy/docker-compose.yml up -d --force-recreate` on the node
        does: the proxy runs whatever the file says, Coolify's database is untouched."""
        with self._lock:
            server = self.server_by_ip(ip)
            server.running_proxy = self._run_compose(self.proxy_file(ip).read_text())

    def reset_proxy_configuration(self, uuid: str) -> None:
        """The UI's "Reset proxy configuration" (Livewire/Server/Proxy.php:171-184): Coolify's default, no
        custom commands (GetProxyConfiguration with forceRegenerate drops them), saved to DB and node."""
        with self._lock:
            self._save_proxy(self.servers[uuid], default_traefik_compose().strip())

    def set_sentinel(self, uuid: str, enabled: bool) -> None:
        with self._lock:
            self.servers[uuid].settings["is_sentinel_enabled"] = enabled

    # -- the Coolify semantics -------------------------------------------------------------------------

    def _new_server(self, team_id: int, name: str, description: str | None, ip: str, port: int, user: str,
                    key: str, is_build_server: bool) -> NodeServer:
        self._next_id += 1
        uuid = _uuid()
        server = NodeServer(
            uuid=uuid, team_id=team_id, name=name, description=description, ip=ip, port=port, user=user,
            private_key_uuid=key, id=self._next_id,
            settings={"id": self._next_id, "server_id": self._next_id, "is_build_server": is_build_server,
                      "is_reachable": False, "is_usable": False, "force_disabled": False,
                      # migration 2025_06_16_123532: Sentinel on by default
                      "is_sentinel_enabled": True, "is_metrics_enabled": False, "is_sentinel_debug_enabled": False,
                      "sentinel_token": secrets.token_hex(16), "sentinel_custom_url": None,
                      "sentinel_metrics_refresh_rate_seconds": 10, "sentinel_metrics_history_days": 7,
                      "sentinel_push_interval_seconds": 60, "concurrent_builds": 2, "deployment_queue_limit": 25,
                      "dynamic_timeout": 3600, "connection_timeout": 10, "wildcard_domain": None,
                      "generate_exact_labels": False, "created_at": _now(), "updated_at": _now()},
            # ServersController.php:568-570: type TRAEFIK, status exited
            proxy={"type": "TRAEFIK", "status": "exited"})
        self.servers[uuid] = server
        return server

    def _save_proxy(self, server: NodeServer, configuration: str) -> None:
        """SaveProxyConfiguration.php:14-48."""
        b64 = base64.b64encode(configuration.encode()).decode()
        new_hash = hashlib.md5(b64.encode()).hexdigest()  # noqa: S324 - Coolify's own change marker
        old_hash = server.proxy.get("last_saved_settings")
        server.proxy["last_saved_settings"] = new_hash
        server.proxy["last_saved_proxy_configuration"] = configuration
        if not self.nodes_reachable:
            raise ConnectionError(f"ssh to {server.ip} failed")
        target = self.proxy_file(server.ip)
        target.parent.mkdir(parents=True, exist_ok=True)
        if old_hash and old_hash != new_hash and target.exists():
            backups = target.parent / "backups"
            backups.mkdir(exist_ok=True)
            if not list(backups.glob(f"docker-compose.*.{old_hash[:8]}.yml")):
                stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
                (backups / f"docker-compose.{stamp}.{old_hash[:8]}.yml").write_bytes(target.read_bytes())
        target.write_text(configuration)

    def _get_proxy_configuration(self, server: NodeServer) -> str:
        """GetProxyConfiguration.php:17-62 (no forced regeneration)."""
        stored = server.proxy.get("last_saved_proxy_configuration")
        if stored and server.proxy.get("type") == "TRAEFIK" and parse_compose(stored) is None:
            stored = None  # configMatchesProxyType: no services.traefik -> regenerate
        if not (stored or "").strip():
            disk = self.proxy_file(server.ip)
            if disk.exists() and disk.read_text().strip():
                stored = disk.read_text()
                server.proxy["last_saved_proxy_configuration"] = stored  # backfillFromDisk
        if not (stored or "").strip():
            stored = default_traefik_compose().strip()
            self._save_proxy(server, stored)  # generateDefaultProxyConfiguration saves it (proxy.php:400)
        return stored

    def _start(self, server: NodeServer) -> None:
        configuration = self._get_proxy_configuration(server)
        self._save_proxy(server, configuration)
        b64 = base64.b64encode(configuration.encode()).decode()
        server.proxy["last_applied_settings"] = hashlib.md5(b64.encode()).hexdigest()  # noqa: S324
        server.running_proxy = self._run_compose(self.proxy_file(server.ip).read_text())
        server.proxy["status"] = "running"
        server.proxy["force_stop"] = False

    @staticmethod
    def _run_compose(text: str) -> dict[str, Any]:
        doc = yaml.safe_load(text)
        traefik = doc["services"]["traefik"]
        return {"image": traefik["image"], "command": list(traefik.get("command") or [])}

    def _settle(self, server: NodeServer) -> None:
        """Finish a queued validation whose time has come (ValidateServer + Server::validateConnection)."""
        if server.validating_until is not None and time.monotonic() >= server.validating_until:
            server.validating_until = None
            if self.nodes_reachable and self.docker_missing:
                server.settings.update(is_reachable=True, is_usable=False)
                server.validation_logs = (  # ValidateServer.php:96-101
                    "Docker Engine is not installed. Please install Docker manually before continuing: <a "
                    'target="_blank" class="text-black underline dark:text-white" '
                    'href="https://docs.docker.com/engine/install/#server">documentation</a>.')
            elif self.nodes_reachable:
                server.settings.update(is_reachable=True, is_usable=True)
                server.validation_logs = None
            else:
                server.settings.update(is_reachable=False)
                server.validation_logs = ("Server is not reachable. Please validate your configuration and "
                                          "connection.<br><br><div class=\"text-error\">Error: ssh: connect to host "
                                          f"{server.ip} port 22: Connection refused</div>")

    # -- HTTP ------------------------------------------------------------------------------------------

    ROUTES: list[tuple[str, str, str, str]] = [
        # method, regex, ability, handler
        ("GET", r"/servers", "read", "_list_servers"),
        ("POST", r"/servers", "write", "_create_server"),
        ("GET", r"/servers/(?P<uuid>[^/]+)", "read", "_get_server"),
        ("PATCH", r"/servers/(?P<uuid>[^/]+)", "write", "_update_server"),
        ("DELETE", r"/servers/(?P<uuid>[^/]+)", "write", "_delete_server"),
        ("POST", r"/servers/(?P<uuid>[^/]+)/validate", "write", "_validate_server"),
        ("GET", r"/servers/(?P<uuid>[^/]+)/sentinel", "read", "_get_sentinel"),
        ("PATCH", r"/servers/(?P<uuid>[^/]+)/sentinel", "write", "_update_sentinel"),
        ("GET", r"/servers/(?P<uuid>[^/]+)/proxy", "read", "_get_proxy"),
        ("PUT", r"/servers/(?P<uuid>[^/]+)/proxy/configuration", "write", "_save_proxy_configuration"),
        ("POST", r"/servers/(?P<uuid>[^/]+)/proxy/restart", "write", "_restart_proxy"),
    ]

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        path = "/" + request.path_params["path"]
        query = dict(request.query_params)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        with self._lock:
            seen = Seen(request.method, path, query, body, 0, at=time.monotonic())
            response = self._dispatch(request, path, query, raw, body, seen)
            seen.status = response.status_code
            self.requests.append(seen)
            self._check_response(request.method, path, response)
        return response

    def _check_request(self, request: Request, path: str, query: dict[str, str], body: Any, has_body: bool) -> None:
        problems = self.spec.request_problems(request.method, path, query=query, body=body, has_body=has_body,
                                              authorization=request.headers.get("authorization"))
        if has_body and "application/json" not in request.headers.get("content-type", ""):
            problems.append("body sent without Content-Type: application/json")
        self.request_violations += [f"{request.method} {path}: {p}" for p in problems]

    def _check_response(self, method: str, path: str, response: Response) -> None:
        if not response.headers.get("content-type", "").startswith("application/json"):
            return  # Laravel's HTML error pages: nothing in the contract describes them
        api_path = path.removeprefix("/api/v1")
        body = json.loads(bytes(response.body))
        problems = self.spec.response_problems(method, api_path, response.status_code, body,
                                               dict(response.headers))
        self.response_violations += [f"{method} {path} -> {response.status_code}: {p}" for p in problems]

    def _dispatch(self, request: Request, path: str, query: dict[str, str], raw: bytes, body: Any,
                  seen: Seen) -> Response:
        if not path.startswith("/api/v1/"):
            return JSONResponse({"message": "Not found.", "docs": "https://coolify.io/docs"}, 404)
        api_path = path[len("/api/v1"):]
        route = None
        for method, pattern, ability, handler in self.ROUTES:
            m = re.fullmatch(pattern, api_path)
            if m and method == request.method:
                route = (ability, handler, m.groupdict())
                break
        if route is None:
            return JSONResponse({"message": "Not found.", "docs": "https://coolify.io/docs"}, 404)
        ability, handler, params = route
        found = self.spec.find(request.method, api_path)
        seen.operation = found[0].operation_id if found else ""
        self._check_request(request, api_path, query, body, bool(raw))

        # auth:sanctum
        header = request.headers.get("authorization", "")
        token = self.tokens.get(header[7:]) if header.startswith("Bearer ") else None
        if token is None:
            return JSONResponse({"message": "Unauthenticated."}, 401)
        seen.user_id = token.user_id
        # throttle:api, per user (RouteServiceProvider.php:47-54), after auth (Laravel's middleware priority)
        limited = self._throttle_hit(token.user_id, request)
        if limited is not None:
            return limited
        # api.token.team, ApiAllowed, api.ability
        if token.team_id < 0:
            return JSONResponse({"message": "Invalid token.",
                                 "docs": "https://coolify.io/docs/api-reference/authorization"}, 400)
        if not self.api_enabled:
            return JSONResponse({"success": True, "message": "API is disabled."}, 403)
        if "root" not in token.abilities and ability not in token.abilities:
            return JSONResponse({"message": f"Missing required permissions: {ability}"}, 403)
        sensitive = bool(token.abilities & {"root", "read:sensitive"}) and token.admin
        return getattr(self, handler)(token, sensitive, request, raw, body, **params)  # type: ignore[no-any-return]

    def _throttle_hit(self, user_id: int, request: Request) -> Response | None:
        now = time.monotonic()
        state = self._throttle.setdefault(user_id, Throttle())
        if now >= state.resets_at:
            state.hits, state.resets_at = 0, now + self.rate_window
        state.hits += 1
        remaining = max(0, self.rate_limit - state.hits)
        if state.hits <= self.rate_limit:
            return None
        retry_after = max(1, math.ceil(state.resets_at - now))
        headers = {"Retry-After": str(retry_after), "X-RateLimit-Limit": str(self.rate_limit),
                   "X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": str(int(time.time()) + retry_after)}
        if "json" in request.headers.get("accept", ""):
            return JSONResponse({"message": "Too Many Attempts."}, 429, headers=headers)
        return Response("<!DOCTYPE html><title>Too Many Requests</title>", 429, headers=headers,
                        media_type="text/html")

    # -- helpers of the controllers --------------------------------------------------------------------

    @staticmethod
    def _incoming(raw: bytes, body: Any, request: Request) -> Response | None:
        """validateIncomingRequest (bootstrap/helpers/api.php:341-364)."""
        if "json" not in request.headers.get("content-type", ""):
            return JSONResponse({"message": "Invalid request.", "error": "Content-Type must be application/json."},
                                400)
        if not isinstance(body, (dict, list)) or not body:
            error = "Empty JSON." if body in ({}, []) else "Invalid JSON."
            return JSONResponse({"message": "Invalid request.", "error": error}, 400)
        return None

    @staticmethod
    def _invalid(errors: dict[str, list[str]]) -> JSONResponse:
        return JSONResponse({"message": "Validation failed.", "errors": errors}, 422)

    @staticmethod
    def _fields(body: dict[str, Any], allowed: list[str], rules: dict[str, str]) -> dict[str, list[str]]:
        """customApiValidator + the allow-list check every controller does."""
        errors: dict[str, list[str]] = {}
        for key, rule in rules.items():
            value = body.get(key)
            required = "required" in rule
            if key not in body or value is None:
                if required:
                    errors.setdefault(key, []).append("This field is required.")
                continue
            kind = rule.split("|")[0]
            ok = {"string": isinstance(value, str), "integer": isinstance(value, int) and not isinstance(value, bool),
                  "boolean": isinstance(value, bool)}.get(kind, True)
            if not ok:
                errors.setdefault(key, []).append(f"The {key.replace('_', ' ')} field must be {'an' if kind == 'integer' else 'a'} {kind}.")  # noqa: E501
        for key in body:
            if key not in allowed:
                errors.setdefault(key, []).append("This field is not allowed.")
        return errors

    def _visible(self, token: Token, uuid: str) -> NodeServer | None:
        server = self.servers.get(uuid)
        if server is None or server.team_id != token.team_id:
            return None
        self._settle(server)
        return server

    @staticmethod
    def _not_found() -> JSONResponse:
        return JSONResponse({"message": "Server not found."}, 404)

    def _settings(self, server: NodeServer, sensitive: bool) -> dict[str, Any]:
        hidden = set() if sensitive else {"sentinel_token", "sentinel_custom_url"}
        return {k: v for k, v in sorted(server.settings.items()) if k not in hidden}

    def _server_list_item(self, server: NodeServer, sensitive: bool) -> dict[str, Any]:
        # ServersController.php:94-106: selected columns + is_reachable/is_usable + settings; id hidden
        return {"name": server.name, "uuid": server.uuid, "ip": server.ip, "user": server.user, "port": server.port,
                "description": server.description, "is_reachable": server.settings["is_reachable"],
                "is_usable": server.settings["is_usable"], "settings": self._settings(server, sensitive)}

    # -- controllers -----------------------------------------------------------------------------------

    def _list_servers(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        items = []
        for server in self.servers.values():
            if server.team_id == token.team_id:
                self._settle(server)
                items.append(self._server_list_item(server, sensitive))
        return JSONResponse(items)

    def _get_server(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                    uuid: str) -> Response:
        server = self._visible(token, uuid)
        if server is None:
            return self._not_found()
        # server_by_uuid (ServersController.php:149-188): the whole model, settings loaded, id hidden. The
        # schemaless `proxy` attribute is serialised as stored (it includes the DB copy of the compose even for
        # tokens without read:sensitive; only ServerProxyController guards it).
        out = {"uuid": server.uuid, "name": server.name, "description": server.description, "ip": server.ip,
               "port": server.port, "user": server.user, "proxy": dict(server.proxy),
               "validation_logs": server.validation_logs, "unreachable_count": 0,
               "unreachable_notification_sent": False, "high_disk_usage_notification_sent": False,
               "log_drain_notification_sent": False, "settings": self._settings(server, sensitive)}
        return JSONResponse(dict(sorted(out.items())))

    def _create_server(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        bad = self._incoming(raw, body, request)
        if bad is not None:
            return bad
        allowed = ["name", "description", "ip", "port", "user", "private_key_uuid", "is_build_server",
                   "instant_validate", "proxy_type"]
        errors = self._fields(body, allowed, {
            "name": "string", "description": "string|nullable", "ip": "string|required", "port": "integer|nullable",
            "private_key_uuid": "string|required", "user": "string", "is_build_server": "boolean|nullable",
            "instant_validate": "boolean|nullable", "proxy_type": "string|nullable"})
        if errors:
            return self._invalid(errors)
        if body.get("proxy_type") and str(body["proxy_type"]).lower() not in ("traefik", "caddy", "nginx", "none"):
            return JSONResponse({"message": "Invalid proxy type."}, 422)
        key = body["private_key_uuid"]
        if self.private_keys.get(key) != token.team_id:
            return JSONResponse({"message": "Private key not found."}, 404)
        if any(s.ip == body["ip"] for s in self.servers.values()):  # whereIp, across all teams
            return JSONResponse({"message": "A server with this IP/Domain is already in use."}, 400)
        server = self._new_server(token.team_id, body.get("name") or f"server-{_uuid()[:6]}", body.get("description"),
                                  body["ip"], body.get("port") or 22, body.get("user") or "root", key,
                                  bool(body.get("is_build_server")))
        if body.get("proxy_type"):
            server.proxy["type"] = str(body["proxy_type"]).upper()
        if body.get("instant_validate"):
            server.validating_until = time.monotonic() + self.validation_delay
        return JSONResponse({"uuid": server.uuid}, 201)

    def _update_server(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                       uuid: str) -> Response:
        bad = self._incoming(raw, body, request)
        if bad is not None:
            return bad
        allowed = ["name", "description", "ip", "port", "user", "private_key_uuid", "is_build_server",
                   "instant_validate", "proxy_type", "concurrent_builds", "dynamic_timeout", "deployment_queue_limit",
                   "server_disk_usage_notification_threshold", "server_disk_usage_check_frequency",
                   "connection_timeout", "is_terminal_enabled"]
        errors = self._fields(body, allowed, {
            "name": "string", "description": "string|nullable", "ip": "string", "port": "integer",
            "private_key_uuid": "string", "user": "string", "is_build_server": "boolean",
            "instant_validate": "boolean", "proxy_type": "string", "concurrent_builds": "integer",
            "dynamic_timeout": "integer", "deployment_queue_limit": "integer", "connection_timeout": "integer"})
        if errors:
            return self._invalid(errors)
        server = self._visible(token, uuid)
        if server is None:
            return self._not_found()
        if body.get("is_build_server") is True and not server.settings["is_build_server"] and server.resources:
            # ServersController.php:737-742
            return self._invalid({"is_build_server": [
                "A server with existing resources cannot be configured as a build server."]})
        for key in ("name", "description", "ip", "port", "user"):
            if key in body:
                setattr(server, key, body[key])
        if "is_build_server" in body:  # :745-749, the flag only (a running proxy stays)
            server.settings["is_build_server"] = bool(body["is_build_server"])
        for key in ("concurrent_builds", "dynamic_timeout", "deployment_queue_limit", "connection_timeout"):
            if body.get(key) is not None:
                server.settings[key] = body[key]
        if body.get("instant_validate"):
            server.validating_until = time.monotonic() + self.validation_delay
        return JSONResponse({"uuid": server.uuid}, 201)

    def _delete_server(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                       uuid: str) -> Response:
        server = self._visible(token, uuid)
        if server is None:
            return self._not_found()
        del self.servers[uuid]
        return JSONResponse({"message": "Server deleted."})

    def _validate_server(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                         uuid: str) -> Response:
        server = self._visible(token, uuid)
        if server is None:
            return self._not_found()
        if isinstance(body, dict) and "install" in body and not isinstance(body["install"], bool):
            return self._invalid({"install": ["The install field must be true or false."]})
        server.validating_until = time.monotonic() + self.validation_delay
        return JSONResponse({"message": "Validation started."}, 201)

    def _sentinel_payload(self, server: NodeServer, sensitive: bool) -> dict[str, Any]:
        s = server.settings
        out = {"is_sentinel_enabled": bool(s["is_sentinel_enabled"]),
               "is_metrics_enabled": bool(s["is_metrics_enabled"]),
               "is_sentinel_debug_enabled": bool(s["is_sentinel_debug_enabled"]),
               "sentinel_metrics_refresh_rate_seconds": s["sentinel_metrics_refresh_rate_seconds"],
               "sentinel_metrics_history_days": s["sentinel_metrics_history_days"],
               "sentinel_push_interval_seconds": s["sentinel_push_interval_seconds"], "sentinel_updated_at": None}
        if sensitive:
            out["sentinel_token"] = s["sentinel_token"]
            out["sentinel_custom_url"] = s["sentinel_custom_url"] or ""
        return out

    def _get_sentinel(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                      uuid: str) -> Response:
        server = self._visible(token, uuid)
        if server is None:
            return self._not_found()
        return JSONResponse(self._sentinel_payload(server, sensitive))

    def _update_sentinel(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                         uuid: str) -> Response:
        bad = self._incoming(raw, body, request)
        if bad is not None:
            return bad
        server = self._visible(token, uuid)
        if server is None:
            return self._not_found()
        allowed = ["is_sentinel_enabled", "is_metrics_enabled", "is_sentinel_debug_enabled", "sentinel_token",
                   "sentinel_metrics_refresh_rate_seconds", "sentinel_metrics_history_days",
                   "sentinel_push_interval_seconds", "sentinel_custom_url"]
        errors = self._fields(body, allowed, {
            "is_sentinel_enabled": "boolean", "is_metrics_enabled": "boolean", "is_sentinel_debug_enabled": "boolean",
            "sentinel_token": "string", "sentinel_metrics_refresh_rate_seconds": "integer",
            "sentinel_metrics_history_days": "integer", "sentinel_push_interval_seconds": "integer"})
        if errors:
            return self._invalid(errors)
        if (body.get("is_sentinel_enabled") is True and not server.settings["is_sentinel_enabled"]
                and server.settings["is_build_server"]):  # ServerSentinelController.php:192-201
            return self._invalid({"is_sentinel_enabled": ["Sentinel cannot be enabled on build servers."]})
        for key in allowed:
            if key in body:
                server.settings[key] = body[key]
        if body.get("is_sentinel_enabled") is False:
            server.settings.update(is_metrics_enabled=False, is_sentinel_debug_enabled=False)
        return JSONResponse(self._sentinel_payload(server, sensitive))

    def _proxy_payload(self, server: NodeServer, sensitive: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"proxy_type": server.proxy.get("type"), "status": server.proxy.get("status"),
                               "redirect_enabled": bool(server.proxy.get("redirect_enabled", True)),
                               "redirect_url": server.proxy.get("redirect_url"),
                               "generate_exact_labels": bool(server.settings.get("generate_exact_labels"))}
        if sensitive:
            out["configuration"] = server.proxy.get("last_saved_proxy_configuration") or None
        return out

    def _get_proxy(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                   uuid: str) -> Response:
        server = self._visible(token, uuid)
        if server is None:
            return self._not_found()
        return JSONResponse(self._proxy_payload(server, sensitive))

    def _save_proxy_configuration(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                                  uuid: str) -> Response:
        bad = self._incoming(raw, body, request)
        if bad is not None:
            return bad
        errors = self._fields(body, ["configuration"], {"configuration": "string|required"})
        if errors:
            return self._invalid(errors)
        server = self._visible(token, uuid)
        if server is None:
            return self._not_found()
        configuration: str = body["configuration"].strip()  # TrimStrings (global middleware)
        try:
            decoded = base64.b64decode(configuration, validate=True)
            is_b64 = base64.b64encode(decoded).decode() == configuration
        except (binascii.Error, ValueError):
            is_b64 = False
        if is_b64:
            try:
                configuration = decoded.decode("utf-8")
            except UnicodeDecodeError:
                return self._invalid(
                    {"configuration": ["The configuration should be valid base64-encoded UTF-8 text."]})
        if not configuration.strip():
            return self._invalid({"configuration": ["The configuration field is required."]})
        try:
            self._save_proxy(server, configuration)
        except ConnectionError:
            return JSONResponse({"message": "Server Error"}, 500)
        return JSONResponse({**self._proxy_payload(server, sensitive), "message": "Proxy configuration saved."})

    def _restart_proxy(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                       uuid: str) -> Response:
        server = self._visible(token, uuid)
        if server is None:
            return self._not_found()
        # RestartProxyJob::handle + buildRestartCommands (RestartProxyJob.php:36-155), run at once
        server.proxy["status"] = "restarting"
        try:
            self._start(server)
        except ConnectionError:
            server.proxy["status"] = "error"
        return JSONResponse({"message": "Proxy restart queued."})
