"""The HTTP layer of the Coolify stand-in: lifecycle (uvicorn in a thread on 127.0.0.1, an ephemeral port,
joined in stop()), Laravel's api middleware in order, injected faults, the request log and counters, and the
check of every request and answer against Coolify's spec.

Middleware order of Laravel's api group (routes/api.php, NOTES.md §a): Sanctum bearer auth (401
"Unauthenticated."), then the throttle per *user* (all tokens of one user share `rate_limit` requests per
`rate_window` seconds, 200/60 s by default like `API_RATE_LIMIT`; 429 "Too Many Attempts." with Retry-After and
X-RateLimit-* headers, HTML unless the client accepts JSON), then the token's team (400 "Invalid token."), the
API switch (403 "API is disabled."), then the route's ability (`read`/`write`/`deploy`, `root` passes; 403
"Missing required permissions: write"); `can_read_sensitive` = (`read:sensitive` or `root`) and an admin user.

The clock: queued work (validations, deployments, status refreshes, deletes, stops) is stored with the time it
completes, and `_advance()` moves every piece whose time has come, at the start of every request and of every
inspection method, in time order. Over HTTP this is indistinguishable from a background worker and it keeps the
stand-in deterministic (no extra thread to stop).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from inkmcp.coolify.spec import CoolifySpec
from inkmcp.coolify.standin.deviations import KNOWN_DEVIATIONS
from inkmcp.coolify.standin.faults import Fault
from inkmcp.coolify.standin.state import ABILITIES, Seen, Throttle, Token

NOT_FOUND = {"message": "Not found.", "docs": "https://coolify.io/docs"}

Route = tuple[str, str, str, str]
"""method, path regex (fullmatch, without /api/v1), ability, handler method name."""



def _empty_to_null(value: Any) -> Any:
    """ConvertEmptyStringsToNull (TransformsRequest::cleanArray): recursively, "" → None."""
    if value == "":
        return None
    if isinstance(value, dict):
        return {k: _empty_to_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_empty_to_null(v) for v in value]
    return value

class StandinCore:
    """Lifecycle, middleware, faults, logs. The controllers live in the mixins of `CoolifyStandin`."""

    ROUTES: list[Route] = []

    def __init__(self, nodes_root: Path, *, rate_limit: int = 200, rate_window: float = 60.0,
                 validation_delay: float = 0.05, nodes_reachable: bool = True, docker_missing: bool = False,
                 spec: CoolifySpec | None = None, port: int = 0, build_seconds: float = 0.05,
                 restart_seconds: float = 0.02, status_delay: float = 0.02, delete_delay: float = 0.05,
                 stop_delay: float = 0.02, log_level: str = "critical") -> None:
        self.nodes_root = nodes_root
        self.port = port
        self.log_level = log_level
        """uvicorn's; "critical" by default because a dropped answer (drop_next) makes uvicorn log an error."""
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.validation_delay = validation_delay
        self.nodes_reachable = nodes_reachable
        self.docker_missing = docker_missing
        self.build_seconds = build_seconds
        """Seconds a deployment stays `in_progress` (slow_builds() changes it)."""
        self.restart_seconds = restart_seconds
        """Seconds a restart-only deployment stays `in_progress` (no build)."""
        self.status_delay = status_delay
        """Seconds after a deployment or start/stop until GetContainersStatus writes the new status."""
        self.delete_delay = delete_delay
        """Seconds until a queued DeleteResourceJob has removed the resource."""
        self.stop_delay = stop_delay
        self.spec = spec or CoolifySpec.load()
        self.api_enabled = True
        """instance_settings.is_api_enabled (false on a new install, NOTES.md §a; true here for convenience)."""
        self.version = "4.3.11"
        self.tokens: dict[str, Token] = {}
        self.requests: list[Seen] = []
        self.request_violations: list[str] = []
        self.response_violations: list[str] = []
        self.deviations_seen: list[str] = []
        """Answers outside the spec in one of the ways real Coolify is (deviations.KNOWN_DEVIATIONS)."""
        self.faults: list[Fault] = []
        self.build_faults: list[Any] = []
        self.crash_faults: list[Any] = []
        self.app_build_seconds: dict[str, float] = {}
        self._throttle: dict[int, Throttle] = {}
        self._lock = threading.RLock()
        self._next_id = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- lifecycle ------------------------------------------------------------------------------------

    def __enter__(self) -> StandinCore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        config = uvicorn.Config(self._asgi, host="127.0.0.1", port=self.port, log_level=self.log_level,
                                access_log=False, lifespan="off", interface="asgi3",
                                # a request held by delay_next must not keep stop() from joining the thread
                                timeout_graceful_shutdown=1)
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

    # -- tokens and the request log ---------------------------------------------------------------------

    def add_token(self, *abilities: str, team_id: int = 0, user_id: int = 1, admin: bool = True) -> str:
        unknown = set(abilities) - ABILITIES
        assert not unknown, f"unknown abilities {unknown}"
        with self._lock:
            plain = f"{self._id()}|{secrets.token_hex(20)}"
            self.tokens[plain] = Token(plain, user_id, team_id, frozenset(abilities), admin)
            return plain

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

    def requests_of(self, token: str | None = None, *, method: str | None = None,
                    path: str | None = None) -> list[Seen]:
        """The requests one token sent (all tokens when None), optionally only `method` and paths matching the
        regex `path` (fullmatch on the path without /api/v1): for "requests per deploy" assertions."""
        token_id = token.split("|", 1)[0] if token else None
        pattern = re.compile(path) if path else None
        with self._lock:
            return [r for r in self.requests
                    if (token_id is None or r.token_id == token_id)
                    and (method is None or r.method == method.upper())
                    and (pattern is None or pattern.fullmatch(r.path.removeprefix("/api/v1")))]

    def request_count(self, token: str | None = None, *, method: str | None = None, path: str | None = None) -> int:
        return len(self.requests_of(token, method=method, path=path))

    def peak_rate(self, token: str | None = None, window: float | None = None) -> int:
        """Most requests one token (or all) sent within any `window` seconds (default: the rate window): tests
        assert it never exceeded `rate_limit`."""
        window = self.rate_window if window is None else window
        times = sorted(r.at for r in self.requests_of(token))
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def throttled(self, token: str | None = None) -> list[Seen]:
        """Requests answered 429 (throttle, full deploy queue, or injected)."""
        return [r for r in self.requests_of(token) if r.status == 429]

    # -- HTTP -------------------------------------------------------------------------------------------

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        raw = await request.body()
        path = scope["path"]
        query = dict(request.query_params)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        api_path = path.removeprefix("/api/v1")
        fault = self._take_fault(request.method, api_path) if path.startswith("/api/v1/") else None
        seen = Seen(request.method, path, query, body, 0, at=time.monotonic(), fault=fault.label if fault else None)
        if fault is not None:  # counted for its token even when the fault answers before the auth middleware
            header = request.headers.get("authorization", "")
            known = self.tokens.get(header[7:]) if header.startswith("Bearer ") else None
            seen.token_id = known.token_id if known else None
        if fault is not None and not fault.after:
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            elif fault.kind == "drop":
                self._record(seen, 0)
                await self._drop(send)
                return
            else:
                response = self._fault_response(fault)
                self._record(seen, response.status_code)
                await response(scope, receive, send)
                return
        with self._lock:
            try:
                self._advance()
                response = self._dispatch(request, path, query, raw, body, seen)
            except Exception as e:  # a bug of the stand-in: Laravel's 500, and a violation so tests notice
                self.response_violations.append(f"{request.method} {path}: the stand-in raised {e!r}")
                response = JSONResponse({"message": "Server Error"}, 500)
            self._check_response(request.method, path, response)
        if fault is not None and fault.after:
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            elif fault.kind == "drop":
                self._record(seen, 0)
                await self._drop(send)
                return
            else:
                response = self._fault_response(fault)
        self._record(seen, response.status_code)
        await response(scope, receive, send)

    def _record(self, seen: Seen, status: int) -> None:
        with self._lock:
            seen.status = status
            self.requests.append(seen)

    @staticmethod
    def _fault_response(fault: Fault) -> Response:
        if fault.status == 429:
            return JSONResponse({"message": "Too Many Attempts."}, 429,
                                headers={"Retry-After": str(fault.retry_after or 60)})
        return JSONResponse({"message": "Server Error"}, fault.status)

    @staticmethod
    async def _drop(send: Send) -> None:
        """Start an answer that promises a body and never send it: uvicorn closes the connection when the app
        returns with the response incomplete, so the client loses the answer (status 0 in the log)."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
        await send({"type": "http.response.body", "body": b'{"', "more_body": True})

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
        if not problems:
            return
        for problem in problems:
            line = f"{method} {path} -> {response.status_code}: {problem}"
            if any(d.matches(method, api_path, response.status_code, problem) for d in KNOWN_DEVIATIONS):
                self.deviations_seen.append(line)
            else:
                self.response_violations.append(line)

    ROUTES_OTHER: list[Route] = [
        ("GET", r"/version", "read", "_version"),
        ("GET", r"/(?:enable|disable)", "write", "_switch_get"),
        ("POST", r"/enable", "write", "_enable_api"),
        ("POST", r"/disable", "write", "_disable_api"),
    ]
    OUTSIDE_API_SWITCH = {"_enable_api", "_disable_api", "_switch_get"}
    """routes/api.php:50-60: /enable and /disable are not behind ApiAllowed (else a disabled API could never be
    switched on again)."""

    def _dispatch(self, request: Request, path: str, query: dict[str, str], raw: bytes, body: Any,
                  seen: Seen) -> Response:
        if request.method == "GET" and path in ("/api/health", "/api/v1/health"):
            # OtherController::healthcheck (:317-320), no auth: Laravel's default text/html answer
            return Response("OK", 200, media_type="text/html")
        if not path.startswith("/api/v1/"):
            return JSONResponse(NOT_FOUND, 404)
        api_path = path[len("/api/v1"):]
        route = None
        for method, pattern, ability, handler in self.ROUTES:
            m = re.fullmatch(pattern, api_path)
            if m and method == request.method:
                route = (ability, handler, m.groupdict())
                break
        if route is None:
            return JSONResponse(NOT_FOUND, 404)
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
        seen.token_id = token.token_id
        # throttle:api, per user (RouteServiceProvider.php:47-54), after auth (Laravel's middleware priority)
        limited = self._throttle_hit(token.user_id, request)
        if limited is not None:
            return limited
        # api.token.team, ApiAllowed, api.ability
        if token.team_id < 0:
            return JSONResponse({"message": "Invalid token.",
                                 "docs": "https://coolify.io/docs/api-reference/authorization"}, 400)
        if not self.api_enabled and handler not in self.OUTSIDE_API_SWITCH:
            return JSONResponse({"success": True, "message": "API is disabled."}, 403)
        if "root" not in token.abilities and ability not in token.abilities:
            return JSONResponse({"message": f"Missing required permissions: {ability}"}, 403)
        sensitive = bool(token.abilities & {"root", "read:sensitive"}) and token.admin
        # Laravel's global ConvertEmptyStringsToNull (app/Http/Kernel.php:61) runs before every controller: "" is
        # null to the rules (`nullable` passes; it is how an API client clears a field). Seen bodies stay as sent.
        response: Response = getattr(self, handler)(token, sensitive, request, raw, _empty_to_null(body), **params)
        # ThrottleRequests::addHeaders: every throttled route's answer says how much of the window is left
        state = self._throttle[token.user_id]
        response.headers["X-RateLimit-Limit"] = str(self.rate_limit)
        response.headers["X-RateLimit-Remaining"] = str(max(0, self.rate_limit - state.hits))
        return response

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

    def _take_fault(self, method: str, api_path: str) -> Fault | None:  # FaultsMixin
        raise NotImplementedError

    def _advance(self) -> None:
        """Complete queued work whose time has come (overridden by the composed stand-in)."""

    def _version(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        """OtherController::version (:47-50): the bare version text."""
        return Response(self.version, 200, media_type="text/html")

    def _switch_get(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        return self._post_required()

    def _enable_api(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        """OtherController::enable_api (:89-106): only the root team (0)."""
        if token.team_id != 0:
            return JSONResponse({"message": "You are not allowed to enable the API."}, 403)
        self.api_enabled = True
        return JSONResponse({"message": "API enabled."})

    def _disable_api(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        if token.team_id != 0:
            return JSONResponse({"message": "You are not allowed to disable the API."}, 403)
        self.api_enabled = False
        return JSONResponse({"message": "API disabled."})

    @staticmethod
    def _post_required() -> Response:
        """OtherController::post_required: GET on a POST-only action route (routes/api.php:144, 273-275)."""
        return JSONResponse({"message": "This endpoint has changed to a POST request."}, 405,
                            headers={"Allow": "POST"})
