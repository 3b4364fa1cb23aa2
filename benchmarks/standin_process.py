"""The Coolify stand-in in a process of its own, for benchmarks that time InkMCP against it.

Why: in a thread of the benchmark process the stand-in shares the GIL with InkMCP, so its work (routing, the
controllers, the OpenAPI check of every request and answer, JSON) lands in InkMCP's column or stalls it. Here it
runs as a child process (`python benchmarks/standin_process.py --serve DIR`), with its clocks at 0 and spec
validation on, as a real Coolify would run on another machine.

Each request's own time is taken inside the child, at the stand-in's ASGI boundary: from the moment uvicorn
hands it the request until its answer is written (reading the body, auth and throttle, the controller, both spec
checks, JSON). uvicorn's HTTP parsing in the child and the loopback transfer are not in it (they count as the
caller's). The benchmark reads the request log, these times and the spec violations over an admin route,
`GET /_bench/requests?since=N`, which bypasses the stand-in (never logged, never counted against a token);
it asks only between timed deploys.

`GET /_bench/build_seconds?seconds=S` sets the simulated build time of deployments started after it (part 1c of
coolify_deploy.py: how late InkMCP's polling notices a build's end), and the snapshot's `build_ends` says when each
deployment's build ended on the stand-in's clock (time.monotonic, the same clock in every process here).

The child stops when its stdin closes (the parent's `stop()`, or the parent's death).
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_TIMING: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("standin_timing", default=None)


def serve(root: Path, servers: int) -> None:
    """The child: a CoolifyStandin (clocks at 0, no rate limit to speak of) with per-request timing and the admin
    route; prints `{"url", "token"}` on stdout, then serves until stdin closes."""
    from starlette.responses import JSONResponse

    from inkmcp.coolify.standin import CoolifyStandin

    standin = CoolifyStandin(root, rate_limit=10_000_000, build_seconds=0.0, restart_seconds=0.0, status_delay=0.0,
                             delete_delay=0.0, stop_delay=0.0, validation_delay=0.0, log_level="warning")
    inner = standin._asgi
    real_record = standin._record

    def record(seen: Any, status: int) -> None:  # the request's timing travels with its log entry
        timing = _TIMING.get()
        if timing is not None:
            seen.timing = timing
        real_record(seen, status)

    standin._record = record  # type: ignore[method-assign]

    async def admin(scope: Any, receive: Any, send: Any) -> None:
        query = dict(p.split("=", 1) for p in scope.get("query_string", b"").decode().split("&") if "=" in p)
        if scope["path"] == "/_bench/build_seconds":  # the simulated build time of deployments started from now on
            with standin._lock:
                standin.build_seconds = float(query["seconds"])
            await JSONResponse({"build_seconds": standin.build_seconds})(scope, receive, send)
            return
        since = int(query.get("since", "0"))
        with standin._lock:
            rows = [{"method": s.method, "path": s.path, "operation": s.operation, "status": s.status,
                     "token_id": s.token_id, "at": s.at,
                     "asgi": getattr(s, "timing", {}).get("asgi", 0.0)} for s in standin.requests[since:]]
            body = {"total": len(standin.requests), "requests": rows,
                    "request_violations": list(standin.request_violations),
                    "response_violations": list(standin.response_violations),
                    # when each deployment's simulated build ended (time.monotonic: one clock for every process)
                    "build_ends": {d.deployment_uuid: d.started_at + d.duration
                                   for d in standin.deployments.values() if d.started_at is not None}}
        await JSONResponse(body)(scope, receive, send)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in ("/_bench/requests", "/_bench/build_seconds"):
            await admin(scope, receive, send)
            return
        timing = {"asgi": 0.0}
        _TIMING.set(timing)  # uvicorn runs each request in a task of its own: the context is this request's
        t = time.perf_counter()
        try:
            await inner(scope, receive, send)
        finally:
            timing["asgi"] = time.perf_counter() - t

    standin._asgi = app  # type: ignore[method-assign]
    token = standin.add_token("root")
    standin.add_servers(servers)
    standin.add_private_key()
    standin.start()
    print(json.dumps({"url": standin.url, "token": token}), flush=True)
    try:
        sys.stdin.read()  # until the parent closes it
    finally:
        standin.stop()


class StandinProcess:
    """The parent's handle on the child: `url`, `token`, and what the benchmark reads of the stand-in."""

    def __init__(self, root: Path, servers: int = 1) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen([sys.executable, __file__, "--serve", str(root), "--servers", str(servers)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("the stand-in process did not start")
        started = json.loads(line)
        self.url: str = started["url"]
        self.token: str = started["token"]
        import httpx

        self._admin = httpx.Client(base_url=self.url, timeout=30)

    def snapshot(self, since: int = 0) -> dict[str, Any]:
        r = self._admin.get("/_bench/requests", params={"since": since})
        r.raise_for_status()
        return dict(r.json())

    def count(self) -> int:
        return int(self.snapshot(10**12)["total"])

    def set_build_seconds(self, seconds: float) -> None:
        self._admin.get("/_bench/build_seconds", params={"seconds": seconds}).raise_for_status()

    def build_ends(self) -> dict[str, float]:
        """Deployment uuid -> when its simulated build ended (time.monotonic)."""
        return dict(self.snapshot(10**12)["build_ends"])

    def requests_since(self, since: int, token: str | None = None) -> list[SimpleNamespace]:
        """The requests logged after the first `since` (of `token`, when given), as objects with the log's fields
        and `asgi` (seconds)."""
        token_id = token.split("|", 1)[0] if token else None
        return [SimpleNamespace(**r) for r in self.snapshot(since)["requests"]
                if token_id is None or r["token_id"] == token_id]

    def requests_of(self, token: str | None = None) -> list[SimpleNamespace]:
        return self.requests_since(0, token)

    def log(self) -> list[str]:
        return [f"{r.method} {r.path} {r.status}" for r in self.requests_of()]

    def throttled(self) -> list[SimpleNamespace]:
        return [r for r in self.requests_of() if r.status == 429]

    @property
    def request_violations(self) -> list[str]:
        return list(self.snapshot(10**12)["request_violations"])

    @property
    def response_violations(self) -> list[str]:
        return list(self.snapshot(10**12)["response_violations"])

    def stop(self) -> None:
        stop_child(self._proc, getattr(self, "_admin", None))


def stop_child(proc: subprocess.Popen[str], admin: Any) -> None:
    """Close the child's stdin (it stops its server and exits); by its PID if it does not within 10 s. `admin`: the
    parent's HTTP client of it, if it was made (closed first)."""
    if admin is not None:
        admin.close()
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait(5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the Coolify stand-in in its own process (benchmarks)")
    parser.add_argument("--serve", type=Path, required=True, help="the stand-in's node files directory")
    parser.add_argument("--servers", type=int, default=1)
    args = parser.parse_args()
    serve(args.serve, args.servers)
