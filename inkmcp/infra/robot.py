"""A small client for the Hetzner Robot webservice's vSwitch endpoints.

Why its own client: the Robot API is not the Cloud API (different host, Basic auth with a webservice
user, form-encoded bodies even on DELETE, naked vSwitch JSON) and its write budget is tiny (100 writes
an hour per endpoint, signalled by 403 ``RATE_LIMIT_EXCEEDED``, not 429). The client therefore

* maps every documented error code to a typed exception carrying status, code, message and the
  ``missing``/``invalid`` lists, so callers branch on types rather than strings;
* retries only ``RATE_LIMIT_EXCEEDED``, with exponential back-off bounded by a total wait — never a
  401, because three failed logins block the caller's IP for ten minutes;
* accepts the live API's ``processing`` alias for ``in process``.

Contract: ../../../shared/hetzner/ROBOT-VSWITCH.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

DEFAULT_BASE_URL = "https://robot-ws.your-server.de"
VLAN_MIN, VLAN_MAX = 4000, 4091

ServerStatus = Literal["ready", "in process", "failed"]


# ---------------------------------------------------------------------------------------------------
# Models of Robot's answers (naked objects, see contract §2)
# ---------------------------------------------------------------------------------------------------


class _RobotModel(BaseModel):
    # Robot may add fields; ignoring them keeps an API addition from breaking `pulumi refresh`.
    model_config = ConfigDict(extra="ignore", frozen=True)


class VSwitchServer(_RobotModel):
    server_number: int
    server_ip: str | None = None
    server_ipv6_net: str | None = None
    status: ServerStatus

    @field_validator("status", mode="before")
    @classmethod
    def _alias_processing(cls, v: Any) -> Any:
        # hrobot-rs saw the live API answer "processing"; both mean the change is still running.
        return "in process" if v == "processing" else v


class VSwitchSubnet(_RobotModel):
    ip: str
    mask: int
    gateway: str


class VSwitchCloudNetwork(_RobotModel):
    id: int
    ip: str
    mask: int
    gateway: str


class VSwitchSummary(_RobotModel):
    """An item of ``GET /vswitch`` (no server list)."""

    id: int
    name: str
    vlan: int
    cancelled: bool = False


class VSwitch(VSwitchSummary):
    """A full vSwitch from ``GET /vswitch/{id}`` or ``POST /vswitch``."""

    server: list[VSwitchServer] = Field(default_factory=list)
    subnet: list[VSwitchSubnet] = Field(default_factory=list)
    cloud_network: list[VSwitchCloudNetwork] = Field(default_factory=list)

    @field_validator("server", "subnet", "cloud_network", mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return [] if v is None else v

    @property
    def server_numbers(self) -> list[int]:
        return sorted(s.server_number for s in self.server)

    @property
    def in_process(self) -> list[int]:
        return sorted(s.server_number for s in self.server if s.status == "in process")

    @property
    def failed(self) -> list[int]:
        return sorted(s.server_number for s in self.server if s.status == "failed")


# ---------------------------------------------------------------------------------------------------
# Errors (contract §1 "Error JSON shapes" and §2 "Error meanings")
# ---------------------------------------------------------------------------------------------------


class RobotError(Exception):
    """An error answer from Robot. ``str()`` names the request, the code and what to do about it."""

    hint: str = ""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        request: str = "",
        missing: Sequence[str] | None = None,
        invalid: Sequence[str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request = request
        self.missing = list(missing or [])
        self.invalid = list(invalid or [])
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [f"{self.request}: " if self.request else "", f"Robot {self.status} {self.code}: {self.message}"]
        if self.missing:
            parts.append(f"; missing: {', '.join(self.missing)}")
        if self.invalid:
            parts.append(f"; invalid: {', '.join(self.invalid)}")
        if self.hint:
            parts.append(f" — {self.hint}")
        return "".join(parts)


class RobotAuthError(RobotError):
    hint = ("check the Robot *webservice* user and password (not the Robot login); "
            "three failed logins block this IP for 10 minutes, so this client never retries them")


class RobotInvalidInput(RobotError):
    hint = "Robot rejected the parameters named above"


class RobotNotFound(RobotError):
    hint = "no vSwitch with this id exists in this Robot account"


class ServerNotFound(RobotError):
    hint = "a server number (or main IP) is not a dedicated server of this Robot account; the message names it"


class VSwitchNotAvailable(RobotError):
    hint = "the vSwitch feature is not available for one of the servers"


class RobotRateLimited(RobotError):
    hint = "Robot allows 100 writes per hour per endpoint; wait for the window to pass"

    def __init__(self, *args: Any, max_request: int | None = None, interval: int | None = None, **kw: Any) -> None:
        self.max_request = max_request
        self.interval = interval
        super().__init__(*args, **kw)


class RobotConflict(RobotError):
    """Any 409 answer."""


class VSwitchLimitReached(RobotConflict):
    hint = "the account has its maximum number of vSwitches; cancel an unused one"


class VSwitchInProcess(RobotConflict):
    hint = "a server change on this vSwitch is still running; wait until every server is ready"


class VlanNotUnique(RobotConflict):
    hint = ("the VLAN is already in use: a server here sits in another vSwitch with the same VLAN ID; "
            "choose another VLAN (4000-4091) or detach the server from the other vSwitch")


class VSwitchServerLimitReached(RobotConflict):
    hint = "a vSwitch holds at most 100 servers"


class VSwitchPerServerLimitReached(RobotConflict):
    hint = "a server can be in at most 5 vSwitches; detach it from one first"


class AlreadyCancelled(RobotConflict):
    hint = "the vSwitch is already cancelled"


class RobotUnavailable(RobotError):
    hint = "Robot is in maintenance (503); try again later"


class RobotWaitTimeout(RobotError):
    """Servers stayed "in process" longer than the caller was willing to wait (no HTTP error)."""


class VSwitchServerFailed(RobotError):
    """Robot reports ``failed`` for a server attachment (no HTTP error)."""


_BY_CODE: dict[str, type[RobotError]] = {
    "UNAUTHORIZED": RobotAuthError,
    "INVALID_INPUT": RobotInvalidInput,
    "NOT_FOUND": RobotNotFound,
    "SERVER_NOT_FOUND": ServerNotFound,
    "VSWITCH_NOT_AVAILABLE": VSwitchNotAvailable,
    "RATE_LIMIT_EXCEEDED": RobotRateLimited,
    "VSWITCH_LIMIT_REACHED": VSwitchLimitReached,
    "VSWITCH_IN_PROCESS": VSwitchInProcess,
    "VSWITCH_VLAN_NOT_UNIQUE": VlanNotUnique,
    "VSWITCH_SERVER_LIMIT_REACHED": VSwitchServerLimitReached,
    "VSWITCH_PER_SERVER_LIMIT_REACHED": VSwitchPerServerLimitReached,
    "CONFLICT": AlreadyCancelled,
}
_BY_STATUS: dict[int, type[RobotError]] = {401: RobotAuthError, 404: RobotNotFound, 409: RobotConflict,
                                           503: RobotUnavailable}


def error_from_response(response: httpx.Response, request: str) -> RobotError:
    """Build the typed exception for a non-2xx answer; tolerate bodies that are not Robot's JSON."""
    try:
        body = response.json()
        err = body["error"] if isinstance(body, dict) else {}
        if not isinstance(err, dict):
            err = {}
    except ValueError:
        err = {}
    code = str(err.get("code") or f"HTTP_{response.status_code}")
    message = str(err.get("message") or response.reason_phrase or "no message")
    cls = _BY_CODE.get(code) or _BY_STATUS.get(response.status_code, RobotError)
    kwargs: dict[str, Any] = {"request": request, "missing": err.get("missing"), "invalid": err.get("invalid")}
    if cls is RobotRateLimited:
        kwargs["max_request"] = err.get("max_request")
        kwargs["interval"] = err.get("interval")
    return cls(int(err.get("status") or response.status_code), code, message, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------------


class RetryPolicy(BaseModel):
    """Back-off on 403 RATE_LIMIT_EXCEEDED: start at ``initial_delay``, double up to ``max_delay`` (and never
    beyond Robot's reported ``interval``), give up once ``max_total_wait`` seconds would be exceeded.

    Defaults follow community.hrobot (5 s start); the total bound keeps a `pulumi up` from hanging for the
    whole hour-long window — failing with a clear error is better than a silent hour.
    """

    model_config = ConfigDict(frozen=True)

    initial_delay: float = Field(5.0, gt=0)
    max_delay: float = Field(60.0, gt=0)
    max_total_wait: float = Field(300.0, ge=0)

    def delays(self, interval: int | None) -> Iterable[float]:
        cap = min(self.max_delay, float(interval)) if interval else self.max_delay
        delay, total = self.initial_delay, 0.0
        while True:
            delay = min(delay, cap)
            if total + delay > self.max_total_wait:
                return
            total += delay
            yield delay
            delay *= 2


FormValue = str | int | Sequence[str | int]


class RobotClient:
    """Synchronous Robot client (Pulumi dynamic providers call synchronously).

    Build one per provider call, inside the call: it holds a connection pool and the password, neither of
    which may be pickled into Pulumi state.
    """

    def __init__(
        self,
        user: str,
        password: str | SecretStr,
        base_url: str = DEFAULT_BASE_URL,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        secret = password.get_secret_value() if isinstance(password, SecretStr) else password
        self._http = httpx.Client(base_url=base_url.rstrip("/"), auth=httpx.BasicAuth(user, secret),
                                  timeout=timeout, transport=transport, headers={"Accept": "application/json"})
        self.retry = retry or RetryPolicy()
        self._sleep = sleep

    def __enter__(self) -> RobotClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, form: dict[str, FormValue] | None = None) -> httpx.Response:
        label = f"{method} {path}"
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else None
        delays = None
        while True:
            response = self._http.request(method, path, data=form, headers=headers)  # type: ignore[arg-type]
            if response.is_success:
                return response
            error = error_from_response(response, label)
            if not isinstance(error, RobotRateLimited):
                raise error
            if delays is None:
                delays = iter(self.retry.delays(error.interval))
            delay = next(delays, None)
            if delay is None:
                raise error
            self._sleep(delay)

    @staticmethod
    def _servers_form(servers: Sequence[int | str]) -> dict[str, FormValue]:
        if not servers:
            raise ValueError("at least one server is required")
        # Repeated `server[]` keys, as the Robot doc examples and hrobot-rs send them.
        return {"server[]": [str(s) for s in servers]}

    # -- endpoints -----------------------------------------------------------------------------------

    def list_vswitches(self) -> list[VSwitchSummary]:
        return [VSwitchSummary.model_validate(v) for v in self._request("GET", "/vswitch").json()]

    def get_vswitch(self, vswitch_id: int) -> VSwitch:
        return VSwitch.model_validate(self._request("GET", f"/vswitch/{int(vswitch_id)}").json())

    def create_vswitch(self, name: str, vlan: int) -> VSwitch:
        return VSwitch.model_validate(self._request("POST", "/vswitch", {"name": name, "vlan": str(vlan)}).json())

    def update_vswitch(self, vswitch_id: int, name: str, vlan: int) -> None:
        self._request("POST", f"/vswitch/{int(vswitch_id)}", {"name": name, "vlan": str(vlan)})

    def cancel_vswitch(self, vswitch_id: int, cancellation_date: str = "now") -> None:
        self._request("DELETE", f"/vswitch/{int(vswitch_id)}", {"cancellation_date": cancellation_date})

    def add_servers(self, vswitch_id: int, servers: Sequence[int | str]) -> None:
        """Attach all servers in ONE write: the write budget is per request, not per server."""
        self._request("POST", f"/vswitch/{int(vswitch_id)}/server", self._servers_form(servers))

    def remove_servers(self, vswitch_id: int, servers: Sequence[int | str]) -> None:
        self._request("DELETE", f"/vswitch/{int(vswitch_id)}/server", self._servers_form(servers))

    def wait_until_settled(self, vswitch_id: int, *, timeout: float, poll_interval: float,
                           clock: Callable[[], float] = time.monotonic) -> VSwitch:
        """Poll until no server is "in process"; raise on ``failed`` or when ``timeout`` passes.

        Reads cost from a separate 500/h budget, so polling is cheap next to a refused write.
        """
        deadline = clock() + timeout
        while True:
            vswitch = self.get_vswitch(vswitch_id)
            if vswitch.failed:
                raise VSwitchServerFailed(
                    0, "SERVER_FAILED", f"vSwitch {vswitch_id}: servers {vswitch.failed} report status failed",
                    request=f"GET /vswitch/{vswitch_id}")
            if not vswitch.in_process:
                return vswitch
            if clock() >= deadline:
                raise RobotWaitTimeout(
                    0, "WAIT_TIMEOUT",
                    f"vSwitch {vswitch_id}: servers {vswitch.in_process} still in process after {timeout:g}s",
                    request=f"GET /vswitch/{vswitch_id}")
            self._sleep(poll_interval)
