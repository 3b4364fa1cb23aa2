"""Fault injection for the Coolify stand-in: what a remote Coolify does to a client on a bad day.

Every fault is armed on the stand-in object by a test (or a developer at a REPL) and consumed by the requests
or deployments it matches, so a test states exactly which call fails and how:

* `fail_next(method, path, times=1, status=500, after=False)`: answer `status` instead of the controller's
  answer. `after=True` runs the controller first, so the state change is made and only the answer is an error:
  Laravel's "500 after the DB save" (e.g. SaveProxyConfiguration.php:26 stores, then :47 throws over SSH), the
  case where a retried create makes a duplicate.
* `throttle_next(method, path, times=1, retry_after=1)`: 429 "Too Many Attempts." with Retry-After.
* `delay_next(method, path, seconds, times=1, after=False)`: answer `seconds` later (longer than a client's
  timeout makes a timeout); with `after=True` the state change happens at once and the answer is late.
* `drop_next(method, path, times=1, after=True)`: "lose the answer": the controller runs (state changed), then
  the connection is closed mid-response (the client sees a protocol error, never the answer). `after=False`
  drops the request before anything happens.
* `fail_builds(times=1, app_uuid=None, line=…)`: the next deployments end `failed` with that log line.
* `slow_builds(seconds, app_uuid=None)`: builds take `seconds` (all apps, or one app).
* `crash_on_start(times=1, app_uuid=None, line=…)`: the build succeeds but the new container crashes: with a
  health check the rolling update fails (deployment `failed`, old container kept); without one the deployment
  is `finished` and the status goes `running:unknown` -> `degraded:unhealthy`.
* `set_server_unreachable(uuid, True)`: the node cannot be reached over SSH: deployments on it fail,
  `settings.is_reachable` turns false.

`path` is a regex matched (fullmatch) against the API path without /api/v1, e.g. r"/applications/public" or
r"/applications/[^/]+/envs/bulk".
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Literal

FaultKind = Literal["status", "delay", "drop"]


@dataclass
class Fault:
    method: str
    path: str
    kind: FaultKind
    times: int
    status: int = 500
    after: bool = False
    seconds: float = 0.0
    retry_after: int | None = None
    used: int = 0
    pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        self.pattern = re.compile(self.path)

    def matches(self, method: str, api_path: str) -> bool:
        return self.times > 0 and method == self.method and self.pattern.fullmatch(api_path) is not None

    @property
    def label(self) -> str:
        return {"status": str(self.status), "delay": "delay", "drop": "drop"}[self.kind]


@dataclass
class BuildFault:
    times: int
    app_uuid: str | None
    line: str


class FaultsMixin:
    """The fault API (module docstring). Needs `_lock` and `servers` from the stand-in."""

    _lock: threading.RLock
    faults: list[Fault]
    build_faults: list[BuildFault]
    crash_faults: list[BuildFault]
    build_seconds: float
    app_build_seconds: dict[str, float]

    def _arm(self, fault: Fault) -> Fault:
        if fault.times < 1:
            raise ValueError(f"times={fault.times}: pass a positive number of requests to affect")
        with self._lock:
            self.faults.append(fault)
        return fault

    def fail_next(self, method: str, path: str, times: int = 1, *, status: int = 500,
                  after: bool = False) -> Fault:
        if status < 400:
            raise ValueError(f"status={status}: pass an error status (>= 400) to fail a request with")
        return self._arm(Fault(method, path, "status", times, status=status, after=after,
                               retry_after=60 if status == 429 else None))

    def throttle_next(self, method: str, path: str, times: int = 1, *, retry_after: int = 1) -> Fault:
        return self._arm(Fault(method, path, "status", times, status=429, retry_after=retry_after))

    def delay_next(self, method: str, path: str, seconds: float, times: int = 1, *, after: bool = False) -> Fault:
        if seconds <= 0:
            raise ValueError(f"seconds={seconds}: pass a positive delay")
        return self._arm(Fault(method, path, "delay", times, seconds=seconds, after=after))

    def drop_next(self, method: str, path: str, times: int = 1, *, after: bool = True) -> Fault:
        return self._arm(Fault(method, path, "drop", times, after=after))

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()
            self.build_faults.clear()
            self.crash_faults.clear()

    def fail_builds(self, times: int = 1, *, app_uuid: str | None = None,
                    line: str = "Oops something is not okay, are you okay? 😢") -> BuildFault:
        """The next `times` deployments (of `app_uuid`, or any) end `failed`, their log ending with `line`
        (ApplicationDeploymentJob::fail logs the exception message, then sets status failed)."""
        fault = BuildFault(times, app_uuid, line)
        with self._lock:
            self.build_faults.append(fault)
        return fault

    def crash_on_start(self, times: int = 1, *, app_uuid: str | None = None,
                       line: str = "Error: Cannot find module '/app/server.js'") -> BuildFault:
        """The next `times` new containers (of `app_uuid`, or any) exit at start, printing `line`."""
        fault = BuildFault(times, app_uuid, line)
        with self._lock:
            self.crash_faults.append(fault)
        return fault

    def slow_builds(self, seconds: float, *, app_uuid: str | None = None) -> None:
        """Builds take `seconds` from `in_progress` to their end (one app, or the default for all)."""
        with self._lock:
            if app_uuid is None:
                self.build_seconds = seconds
            else:
                self.app_build_seconds[app_uuid] = seconds

    def _take_fault(self, method: str, api_path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, api_path):
                    fault.times -= 1
                    fault.used += 1
                    return fault
        return None

    def _take_crash_fault(self, app_uuid: str) -> str | None:
        return self._take_from(self.crash_faults, app_uuid)

    def _take_build_fault(self, app_uuid: str) -> str | None:
        return self._take_from(self.build_faults, app_uuid)

    @staticmethod
    def _take_from(faults: list[BuildFault], app_uuid: str) -> str | None:
        for fault in faults:
            if fault.times > 0 and fault.app_uuid in (None, app_uuid):
                fault.times -= 1
                return fault.line
        return None
