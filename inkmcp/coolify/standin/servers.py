"""Servers, Sentinel and proxy: app/Http/Controllers/Api/{Servers,ServerProxy,ServerSentinel}Controller.php at
379abb2 (NOTES.md §a/§b Servers).

Controllers: JSON-only bodies (400), allow-lists (422 "This field is not allowed." per unknown key), field
rules, 404 "Server not found.", 400 "A server with this IP/Domain is already in use." (any team); build servers:
`is_build_server` stored at create and by PATCH (422 for a server with resources, the flag only), Sentinel
cannot be switched on for one (422). Every server has one destination (the `coolify` network) and settings
incl. `wildcard_domain` (null until set, ServerSetting) and `is_build_server`.

State the way Coolify keeps it: the proxy compose in the server's DB copy (`last_saved_proxy_configuration`,
`last_saved_settings` = md5 of its base64) and written to `<nodes_root>/<ip>/data/coolify/proxy/
docker-compose.yml` by `SaveProxyConfiguration` (backup of the old file under `backups/` when it changed);
every proxy start or restart runs `GetProxyConfiguration` (DB copy, else backfill from the node's file, else
Coolify's default) and `SaveProxyConfiguration` again, so the file is rewritten from the database, then
"starts" the proxy from that file (`running_proxy`), and records `last_applied_settings`.

Queued work: validation completes `validation_delay` seconds after `POST …/validate` (is_reachable/is_usable,
or Coolify's validation log when `nodes_reachable` / `docker_missing` say it fails); a node that cannot be
reached over SSH makes `PUT …/proxy/configuration` answer 500 after the DB copy is stored, as
`SaveProxyConfiguration` does (it stores, then `instant_remote_process` throws); the proxy restart is applied
before the answer (the job's effect; real Coolify queues it).

Operator/Coolify-side actions a test needs are methods: `start_proxy`, `compose_up_from_disk`,
`reset_proxy_configuration`, `set_sentinel`, and for placement tests `add_servers` (N run servers with
capacity facts and a wildcard domain) and `set_server_unreachable`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inkmcp.coolify.proxy import default_traefik_compose, parse_compose
from inkmcp.coolify.standin import rules
from inkmcp.coolify.standin.state import NodeServer, Token, new_uuid, now_iso


class ServersMixin:
    ROUTES_SERVERS: list[tuple[str, str, str, str]] = [
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
        ("GET", r"/security/keys", "read", "_list_keys"),
        # --- ghkeys (issue 11): SecurityController create/show/delete (deploy keys of private repositories)
        ("POST", r"/security/keys", "write", "_create_key"),
        ("GET", r"/security/keys/(?P<uuid>[^/]+)", "read", "_get_key"),
        ("DELETE", r"/security/keys/(?P<uuid>[^/]+)", "write", "_delete_key"),
        # --- end
    ]

    _lock: threading.RLock
    nodes_root: Path
    nodes_reachable: bool
    docker_missing: bool
    validation_delay: float
    private_keys: dict[str, int]
    servers: dict[str, NodeServer]

    def _id(self) -> int:
        raise NotImplementedError

    # -- fixtures a test sets up -----------------------------------------------------------------------

    def add_private_key(self, team_id: int = 0) -> str:
        uuid = new_uuid()
        self.private_keys[uuid] = team_id
        return uuid

    # --- ghkeys (issue 11): keys made through the API keep what was sent (name, description, the key itself)
    def _advance(self) -> None:
        raise NotImplementedError

    def key_record(self, uuid: str) -> dict[str, Any] | None:
        """name, description, private_key, id of a key created through `POST /security/keys` (tests read it)."""
        with self._lock:
            record = self._key_records().get(uuid)
            return dict(record) if record is not None else None

    def _key_records(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] | None = getattr(self, "_api_keys", None)
        if records is None:
            records = self._api_keys = {}
        return records

    def _key_in_use(self, uuid: str) -> bool:
        """PrivateKey::isInUse: a server, an application (private_key_id) or a GitHub app uses it."""
        record = self._key_records().get(uuid)
        if any(getattr(server, "private_key_uuid", None) == uuid for server in self.servers.values()):
            return True
        apps = getattr(self, "applications", {})
        return record is not None and any(app.fields.get("private_key_id") == record["id"] for app in apps.values())

    def _key_json(self, uuid: str, team: int, n: int, sensitive: bool) -> dict[str, Any]:
        record = self._key_records().get(uuid)
        item: dict[str, Any] = {"id": record["id"] if record else n, "uuid": uuid,
                                "name": record["name"] if record else f"key-{n}",
                                "description": (record or {}).get("description") or "",
                                "is_git_related": False, "team_id": team,
                                "created_at": (record or {}).get("created_at") or now_iso(),
                                "updated_at": (record or {}).get("created_at") or now_iso()}
        if record is not None:
            item["public_key"] = record["public_key"]
            item["fingerprint"] = record["fingerprint"]
        if sensitive:
            item["private_key"] = record["private_key"] if record else (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nstand-in\n-----END OPENSSH PRIVATE KEY-----\n")
        return item

    def _create_key(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        """SecurityController::create_key: allow-list (422 per unknown key), `private_key` required and a valid
        private key (PrivateKey::validatePrivateKey → 422), `name` defaults to a generated one; 201 {uuid}."""
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        errors = rules.fields(body, ["name", "description", "private_key"], {
            "name": "string", "description": "string|nullable", "private_key": "string|required"})
        if errors:
            return rules.invalid(errors)
        public = _public_key_of(str(body["private_key"]))
        if public is None:
            return rules.invalid({"private_key": ["The private key is invalid."]})
        with self._lock:
            uuid = new_uuid()
            self.private_keys[uuid] = token.team_id
            self._key_records()[uuid] = {
                "id": self._id(), "name": body.get("name") or f"key-{uuid[:8]}",
                "description": body.get("description") or "", "private_key": body["private_key"],
                "public_key": public, "fingerprint": hashlib.sha256(public.encode()).hexdigest(),
                "created_at": now_iso()}
        return JSONResponse({"uuid": uuid}, 201)

    def _get_key(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                 uuid: str) -> Response:
        with self._lock:
            if self.private_keys.get(uuid) != token.team_id:
                return JSONResponse({"message": "Private Key not found."}, 404)
            return JSONResponse(self._key_json(uuid, token.team_id, 0, sensitive))

    def _delete_key(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                    uuid: str) -> Response:
        """SecurityController::delete_key: 404 for another team's or an unknown key, 422 while in use."""
        with self._lock:
            self._advance()  # queued application deletes that are due
            if self.private_keys.get(uuid) != token.team_id:
                return JSONResponse({"message": "Private Key not found."}, 404)
            if self._key_in_use(uuid):
                return JSONResponse({"message": "Private Key is in use and cannot be deleted."}, 422)
            del self.private_keys[uuid]
            self._key_records().pop(uuid, None)
        return JSONResponse({"message": "Private Key deleted."})
    # --- end

    def add_server(self, ip: str, *, team_id: int = 0, name: str = "existing", description: str | None = None,
                   is_build_server: bool = False, usable: bool = False, resources: int = 0,
                   wildcard_domain: str | None = None, capacity: dict[str, Any] | None = None) -> NodeServer:
        """A server that already exists in Coolify (created in the UI, by another team, or by the old script)."""
        with self._lock:
            server = self._new_server(team_id, name, description, ip, 22, "root", "", is_build_server)
            server.resources = resources
            server.settings["wildcard_domain"] = wildcard_domain
            server.capacity = dict(capacity or {})
            if usable:
                server.settings.update(is_reachable=True, is_usable=True)
            return server

    def add_servers(self, count: int, *, team_id: int = 0, cpus: float = 4, memory_mb: int = 8192,
                    disk_gb: int = 80, name_prefix: str = "run", ip_prefix: str = "10.77.0.",
                    wildcard_base: str = "apps.test", labels: dict[str, str] | None = None,
                    capacities: list[dict[str, Any]] | None = None) -> list[NodeServer]:
        """`count` usable run servers `run-1..N` at `<ip_prefix>1..N`, wildcard domain `http://run-i.<base>`
        and capacity facts (`capacities[i]` overrides the uniform cpus/memory_mb/disk_gb/labels for server i)."""
        if capacities is not None and len(capacities) != count:
            raise ValueError(f"capacities has {len(capacities)} entries for count={count}: pass one per server")
        with self._lock:
            start = 1 + sum(1 for s in self.servers.values() if s.name.startswith(f"{name_prefix}-"))
            out = []
            for i in range(start, start + count):
                facts: dict[str, Any] = {"cpus": cpus, "memory_mb": memory_mb, "disk_gb": disk_gb,
                                         "labels": dict(labels or {})}
                if capacities is not None:
                    facts.update(capacities[i - start])
                out.append(self.add_server(f"{ip_prefix}{i}", team_id=team_id, name=f"{name_prefix}-{i}",
                                           usable=True, wildcard_domain=f"http://{name_prefix}-{i}.{wildcard_base}",
                                           capacity=facts))
            return out

    def set_server_unreachable(self, uuid: str, unreachable: bool = True) -> None:
        """SSH to the node fails (or works again): deployments on it fail with Coolify's connection error, and
        ServerCheckJob marks it `is_reachable=false` / `is_usable=false`."""
        with self._lock:
            server = self.servers[uuid]
            server.unreachable = unreachable
            server.settings.update(is_reachable=not unreachable, is_usable=not unreachable)

    def node_root(self, ip: str) -> Path:
        return self.nodes_root / ip

    def proxy_file(self, ip: str) -> Path:
        return self.node_root(ip) / "data/coolify/proxy/docker-compose.yml"

    def server_by_ip(self, ip: str) -> NodeServer:
        with self._lock:
            return next(s for s in self.servers.values() if s.ip == ip)

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
        self._id()
        uuid = new_uuid()
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
                      "generate_exact_labels": False, "created_at": now_iso(), "updated_at": now_iso()},
            # ServersController.php:568-570: type TRAEFIK, status exited
            proxy={"type": "TRAEFIK", "status": "exited"})
        server.destination_id = self._id()
        server.destination_uuid = new_uuid()  # ServersController create_server: StandaloneDocker 'coolify'
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

    # -- controllers -----------------------------------------------------------------------------------

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

    def _list_keys(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        """SecurityController::keys: the team's keys; `private_key` hidden (makeHidden, :13-24) unless the token
        can read sensitive data. The key material is a placeholder: nothing here uses it."""
        items = [self._key_json(uuid, team, n, sensitive)  # --- ghkeys (issue 11): API-made keys as sent
                 for n, (uuid, team) in enumerate(self.private_keys.items(), start=1) if team == token.team_id]
        return JSONResponse(items)

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
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        allowed = ["name", "description", "ip", "port", "user", "private_key_uuid", "is_build_server",
                   "instant_validate", "proxy_type"]
        errors = rules.fields(body, allowed, {
            "name": "string", "description": "string|nullable", "ip": "string|required", "port": "integer|nullable",
            "private_key_uuid": "string|required", "user": "string", "is_build_server": "boolean|nullable",
            "instant_validate": "boolean|nullable", "proxy_type": "string|nullable"})
        if errors:
            return rules.invalid(errors)
        if body.get("proxy_type") and str(body["proxy_type"]).lower() not in ("traefik", "caddy", "nginx", "none"):
            return JSONResponse({"message": "Invalid proxy type."}, 422)
        key = body["private_key_uuid"]
        if self.private_keys.get(key) != token.team_id:
            return JSONResponse({"message": "Private key not found."}, 404)
        if any(s.ip == body["ip"] for s in self.servers.values()):  # whereIp, across all teams
            return JSONResponse({"message": "A server with this IP/Domain is already in use."}, 400)
        server = self._new_server(token.team_id, body.get("name") or f"server-{new_uuid()[:6]}",
                                  body.get("description"),
                                  body["ip"], body.get("port") or 22, body.get("user") or "root", key,
                                  bool(body.get("is_build_server")))
        if body.get("proxy_type"):
            server.proxy["type"] = str(body["proxy_type"]).upper()
        if body.get("instant_validate"):
            server.validating_until = time.monotonic() + self.validation_delay
        return JSONResponse({"uuid": server.uuid}, 201)

    def _update_server(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                       uuid: str) -> Response:
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        allowed = ["name", "description", "ip", "port", "user", "private_key_uuid", "is_build_server",
                   "instant_validate", "proxy_type", "concurrent_builds", "dynamic_timeout", "deployment_queue_limit",
                   "server_disk_usage_notification_threshold", "server_disk_usage_check_frequency",
                   "connection_timeout", "is_terminal_enabled"]
        errors = rules.fields(body, allowed, {
            "name": "string", "description": "string|nullable", "ip": "string", "port": "integer",
            "private_key_uuid": "string", "user": "string", "is_build_server": "boolean",
            "instant_validate": "boolean", "proxy_type": "string", "concurrent_builds": "integer",
            "dynamic_timeout": "integer", "deployment_queue_limit": "integer", "connection_timeout": "integer"})
        if errors:
            return rules.invalid(errors)
        server = self._visible(token, uuid)
        if server is None:
            return self._not_found()
        if body.get("is_build_server") is True and not server.settings["is_build_server"] and server.resources:
            # ServersController.php:737-742
            return rules.invalid({"is_build_server": [
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
            return rules.invalid({"install": ["The install field must be true or false."]})
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
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        server = self._visible(token, uuid)
        if server is None:
            return self._not_found()
        allowed = ["is_sentinel_enabled", "is_metrics_enabled", "is_sentinel_debug_enabled", "sentinel_token",
                   "sentinel_metrics_refresh_rate_seconds", "sentinel_metrics_history_days",
                   "sentinel_push_interval_seconds", "sentinel_custom_url"]
        errors = rules.fields(body, allowed, {
            "is_sentinel_enabled": "boolean", "is_metrics_enabled": "boolean", "is_sentinel_debug_enabled": "boolean",
            "sentinel_token": "string", "sentinel_metrics_refresh_rate_seconds": "integer",
            "sentinel_metrics_history_days": "integer", "sentinel_push_interval_seconds": "integer"})
        if errors:
            return rules.invalid(errors)
        if (body.get("is_sentinel_enabled") is True and not server.settings["is_sentinel_enabled"]
                and server.settings["is_build_server"]):  # ServerSentinelController.php:192-201
            return rules.invalid({"is_sentinel_enabled": ["Sentinel cannot be enabled on build servers."]})
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
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        errors = rules.fields(body, ["configuration"], {"configuration": "string|required"})
        if errors:
            return rules.invalid(errors)
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
                return rules.invalid(
                    {"configuration": ["The configuration should be valid base64-encoded UTF-8 text."]})
        if not configuration.strip():
            return rules.invalid({"configuration": ["The configuration field is required."]})
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


# --- ghkeys (issue 11)
def _public_key_of(private_key: str) -> str | None:
    """The OpenSSH public key of an OpenSSH private key (None: not a private key), as PrivateKey::validatePrivateKey
    and its public-key accessor (phpseclib) read it."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_ssh_private_key(private_key.encode(), password=None)
    except (ValueError, TypeError):
        return None
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,  # type: ignore[union-attr]
                                         serialization.PublicFormat.OpenSSH).decode()
# --- end
