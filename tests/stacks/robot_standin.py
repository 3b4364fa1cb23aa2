"""A Hetzner Robot vSwitch stand-in: a real HTTP server on 127.0.0.1 that follows
../../../shared/hetzner/ROBOT-VSWITCH.md §5 closely enough to catch client mistakes.

What it reproduces: HTTP Basic auth (401 UNAUTHORIZED), form-encoded POST *and* DELETE bodies with
repeated ``server[]`` or indexed ``server[0]`` keys, servers named by number or main IPv4, naked
vSwitch JSON, 201 for create/add-servers and empty bodies for update/cancel/remove, INVALID_INPUT with
``missing``/``invalid``, NOT_FOUND/SERVER_NOT_FOUND, asynchronous attachments that stay "in process"
for N reads (optionally ending ``failed``, optionally spelled ``processing``), VSWITCH_IN_PROCESS,
the per-vSwitch/per-server/account limits, VLAN clashes, cancel semantics, a 503 toggle, and a
per-endpoint request window answering 403 RATE_LIMIT_EXCEEDED with ``max_request``/``interval``.
Limits, the window and the clock are constructor arguments so tests can hit them in milliseconds.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

VLAN_MIN, VLAN_MAX = 4000, 4091


@dataclass
class Seen:
    """One request as the stand-in received it (for assertions on call counts and encoding)."""

    method: str
    path: str
    endpoint: str
    content_type: str
    form: dict[str, list[str]]
    status: int = 0


@dataclass
class Attachment:
    status: str = "in process"
    reads_left: int = 0
    removing: bool = False


@dataclass
class StandinVSwitch:
    id: int
    name: str
    vlan: int
    cancelled: bool = False
    servers: dict[int, Attachment] = field(default_factory=dict)

    def busy(self) -> bool:
        return any(a.status == "in process" for a in self.servers.values())


class RobotError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.body = {"error": {"status": status, "code": code, "message": message, **extra}}
        self.status = status


def invalid_input(missing: list[str] | None = None, invalid: list[str] | None = None) -> RobotError:
    return RobotError(400, "INVALID_INPUT", "invalid input", missing=missing or None, invalid=invalid or None)


class RobotStandin:
    """State plus a threaded HTTP server. Use as a context manager; ``url`` is the base URL."""

    def __init__(
        self,
        *,
        user: str = "robot-ws-user",
        password: str = "robot-ws-pass",  # noqa: S107 - stand-in credential
        servers: dict[int, str] | None = None,
        write_limit: int = 100,
        read_limit: int = 500,
        window: float = 3600.0,
        in_process_reads: int = 2,
        vswitch_cap: int = 50,
        server_limit: int = 100,
        per_server_limit: int = 5,
        status_alias: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.user, self.password = user, password
        self.known_servers: dict[int, str] = servers if servers is not None else {
            n: f"203.0.113.{n % 250 + 1}" for n in range(100001, 100011)}
        self.write_limit, self.read_limit, self.window = write_limit, read_limit, window
        self.in_process_reads = in_process_reads
        self.vswitch_cap, self.server_limit, self.per_server_limit = vswitch_cap, server_limit, per_server_limit
        self.status_alias = status_alias
        self.clock = clock
        self.fail_servers: set[int] = set()
        self.unavailable_servers: set[int] = set()
        self.maintenance = False
        self.vswitches: dict[int, StandinVSwitch] = {}
        self.log: list[Seen] = []
        self.failed_logins = 0
        self._next_id = 50001
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> RobotStandin:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, keep-alive requests pay a 40 ms delayed ACK.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                standin._handle(self)

            def do_POST(self) -> None:
                standin._handle(self)

            def do_DELETE(self) -> None:
                standin._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server and self._thread
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._server
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- helpers for tests ---------------------------------------------------------------------------

    def writes(self, endpoint: str | None = None) -> list[Seen]:
        """Authenticated write requests (optionally for one endpoint such as ``POST /vswitch/{id}/server``)."""
        return [s for s in self.log if s.method != "GET" and s.status not in (0, 401)
                and (endpoint is None or s.endpoint == endpoint)]

    def settle(self) -> None:
        """Finish every pending attachment change at once."""
        with self._lock:
            for vs in self.vswitches.values():
                for num, att in list(vs.servers.items()):
                    att.reads_left = 0
                    self._advance(vs, num, att)

    # -- HTTP plumbing -------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length).decode() if length else ""
        ctype = h.headers.get("Content-Type", "")
        form = parse_qs(raw, keep_blank_values=True) if raw else {}
        path = h.path.split("?", 1)[0].rstrip("/") or "/"
        endpoint = re.sub(r"/\d+", "/{id}", path)
        seen = Seen(h.command, path, f"{h.command} {endpoint}", ctype, form)
        with self._lock:
            self.log.append(seen)
            try:
                if raw and "application/x-www-form-urlencoded" not in ctype:
                    raise invalid_input(invalid=["content-type"])
                self._authenticate(h.headers.get("Authorization", ""))
                if self.maintenance:
                    raise RobotError(503, "MAINTENANCE", "Robot is in maintenance")
                self._rate_limit(seen.endpoint, h.command == "GET")
                status, body = self._route(h.command, path, form)
            except RobotError as e:
                status, body = e.status, e.body
        seen.status = status
        payload = b"" if body is None else json.dumps(body).encode()
        h.send_response(status)
        if payload:
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def _authenticate(self, header: str) -> None:
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if header != expected:
            self.failed_logins += 1
            raise RobotError(401, "UNAUTHORIZED", "Unauthorized")

    def _rate_limit(self, endpoint: str, is_read: bool) -> None:
        limit = self.read_limit if is_read else self.write_limit
        now = self.clock()
        hits = self._hits.setdefault(endpoint, deque())
        while hits and now - hits[0] >= self.window:
            hits.popleft()
        if len(hits) >= limit:
            raise RobotError(403, "RATE_LIMIT_EXCEEDED", "rate limit exceeded", max_request=limit,
                             interval=max(1, round(self.window)))
        hits.append(now)

    def _route(self, method: str, path: str, form: dict[str, list[str]]) -> tuple[int, Any]:
        if path == "/vswitch":
            if method == "GET":
                return 200, [{"id": v.id, "name": v.name, "vlan": v.vlan, "cancelled": v.cancelled}
                             for v in self.vswitches.values()]
            if method == "POST":
                return 201, self._create(form)
        m = re.fullmatch(r"/vswitch/(\d+)(/server)?", path)
        if m:
            vs = self.vswitches.get(int(m.group(1)))
            if vs is None:
                raise RobotError(404, "NOT_FOUND", "vSwitch not found")
            if m.group(2):
                if method == "POST":
                    self._add(vs, form)
                    return 201, None
                if method == "DELETE":
                    self._remove(vs, form)
                    return 200, None
            elif method == "GET":
                return 200, self._read(vs)
            elif method == "POST":
                self._update(vs, form)
                return 200, None
            elif method == "DELETE":
                self._cancel(vs, form)
                return 200, None
        raise RobotError(404, "NOT_FOUND", "Not Found")

    # -- vSwitch semantics ---------------------------------------------------------------------------

    @staticmethod
    def _name_vlan(form: dict[str, list[str]]) -> tuple[str, int]:
        missing = [k for k in ("name", "vlan") if not form.get(k) or form[k][0] == ""]
        if missing:
            raise invalid_input(missing=missing)
        try:
            vlan = int(form["vlan"][0])
        except ValueError:
            raise invalid_input(invalid=["vlan"]) from None
        if not VLAN_MIN <= vlan <= VLAN_MAX:
            raise invalid_input(invalid=["vlan"])
        return form["name"][0], vlan

    def _render(self, vs: StandinVSwitch) -> dict[str, Any]:
        def status(a: Attachment) -> str:
            return "processing" if self.status_alias and a.status == "in process" else a.status

        return {
            "id": vs.id, "name": vs.name, "vlan": vs.vlan, "cancelled": vs.cancelled,
            "server": [{"server_ip": self.known_servers[n], "server_ipv6_net": "2001:db8::",
                        "server_number": n, "status": status(a)} for n, a in sorted(vs.servers.items())],
            "subnet": [], "cloud_network": [],
        }

    def _advance(self, vs: StandinVSwitch, num: int, att: Attachment) -> None:
        if att.status != "in process" or att.reads_left > 0:
            return
        if att.removing:
            del vs.servers[num]
        else:
            att.status = "failed" if num in self.fail_servers else "ready"

    def _read(self, vs: StandinVSwitch) -> dict[str, Any]:
        # Each read shows the current state, then counts down: a server stays "in process" for N reads.
        for num, att in list(vs.servers.items()):
            self._advance(vs, num, att)
        body = self._render(vs)
        for att in vs.servers.values():
            if att.status == "in process":
                att.reads_left -= 1
        return body

    def _create(self, form: dict[str, list[str]]) -> dict[str, Any]:
        name, vlan = self._name_vlan(form)
        if sum(not v.cancelled for v in self.vswitches.values()) >= self.vswitch_cap:
            raise RobotError(409, "VSWITCH_LIMIT_REACHED", "vSwitch limit reached")
        vs = StandinVSwitch(self._next_id, name, vlan)
        self._next_id += 1
        self.vswitches[vs.id] = vs
        return self._render(vs)

    def _live_others(self, vs: StandinVSwitch) -> list[StandinVSwitch]:
        return [o for o in self.vswitches.values() if o.id != vs.id and not o.cancelled]

    def _update(self, vs: StandinVSwitch, form: dict[str, list[str]]) -> None:
        name, vlan = self._name_vlan(form)
        if vs.busy():
            raise RobotError(409, "VSWITCH_IN_PROCESS", "vSwitch update is in process")
        for other in self._live_others(vs):
            if other.vlan == vlan and set(other.servers) & set(vs.servers):
                raise RobotError(409, "VSWITCH_VLAN_NOT_UNIQUE", f"VLAN {vlan} is not unique")
        vs.name, vs.vlan = name, vlan

    def _server_args(self, form: dict[str, list[str]]) -> list[int]:
        values = [v for k, vs in form.items() if re.fullmatch(r"server(\[\d*\])?", k) for v in vs]
        if not values:
            raise invalid_input(missing=["server"])
        by_ip = {ip: n for n, ip in self.known_servers.items()}
        numbers = []
        for value in values:
            num = int(value) if value.isdigit() else by_ip.get(value)
            if num is None or num not in self.known_servers:
                raise RobotError(404, "SERVER_NOT_FOUND", f"server {value} not found")
            numbers.append(num)
        return numbers

    def _add(self, vs: StandinVSwitch, form: dict[str, list[str]]) -> None:
        numbers = [n for n in self._server_args(form) if n not in vs.servers]
        if vs.busy():
            raise RobotError(409, "VSWITCH_IN_PROCESS", "vSwitch update is in process")
        for n in numbers:
            if n in self.unavailable_servers:
                raise RobotError(404, "VSWITCH_NOT_AVAILABLE", f"vSwitch not available for server {n}")
        if len(vs.servers) + len(numbers) > self.server_limit:
            raise RobotError(409, "VSWITCH_SERVER_LIMIT_REACHED", "vSwitch server limit reached")
        others = self._live_others(vs)
        for n in numbers:
            if sum(n in o.servers for o in others) >= self.per_server_limit:
                raise RobotError(409, "VSWITCH_PER_SERVER_LIMIT_REACHED", f"server {n} is in too many vSwitches")
            if any(o.vlan == vs.vlan and n in o.servers for o in others):
                raise RobotError(409, "VSWITCH_VLAN_NOT_UNIQUE", f"VLAN {vs.vlan} is already used by server {n}")
        for n in numbers:
            vs.servers[n] = Attachment(reads_left=self.in_process_reads)

    def _remove(self, vs: StandinVSwitch, form: dict[str, list[str]]) -> None:
        numbers = self._server_args(form)
        if vs.busy():
            raise RobotError(409, "VSWITCH_IN_PROCESS", "vSwitch update is in process")
        for n in numbers:
            if n in vs.servers:
                vs.servers[n] = Attachment(reads_left=self.in_process_reads, removing=True)

    def _cancel(self, vs: StandinVSwitch, form: dict[str, list[str]]) -> None:
        date = (form.get("cancellation_date") or [""])[0]
        if not date:
            raise invalid_input(missing=["cancellation_date"])
        if date != "now":
            try:
                when = dt.date.fromisoformat(date) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) else None
            except ValueError:
                when = None
            if when is None or when < dt.date.today():
                raise invalid_input(invalid=["cancellation_date"])
        if vs.cancelled:
            raise RobotError(409, "CONFLICT", "vSwitch is already cancelled")
        vs.cancelled = True
