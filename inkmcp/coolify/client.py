"""A typed async client for Coolify's REST API (Coolify 4.3.11, `/api/v1`).

Why its own client: Coolify's API has sharp edges that every caller would otherwise rediscover
(../shared/coolify/NOTES.md): one unknown body key fails the whole request (422), multi-line fields are base64,
errors come in several shapes, tokens carry abilities whose absence answers 403, and a user's tokens share 200
requests a minute, over which Laravel answers 429 with `Retry-After`. The client therefore

* sends `Authorization: Bearer <token>` and `Accept: application/json` on every request (without the Accept
  header Laravel renders some errors, e.g. the 429 of its throttle, as HTML) and never logs or prints the token:
  it is a `SecretStr`, logs carry method, path, status and timing only, and error messages name the request
  path, never headers;
* refuses an API URL that would carry the token in clear text over the internet (`check_api_url`, review
  finding 14): `https://…`, or `http://` only to a loopback or private address (the Cloud Network);
* maps every error answer to a typed exception (`CoolifyError` subclasses) with `retryable` telling a caller
  whether trying again later can help (429, 5xx, unreachable) or not (401, 403, 404, 422, contract breaks);
* retries by itself only where it is safe: a 429 for any method (the throttle refuses before the controller
  runs, so nothing happened), honouring `Retry-After`; connection failures, timeouts and 502/503/504 only for
  calls marked idempotent (GET, PUT, DELETE, and the PATCHes that set absolute values). Retries are bounded by
  `RetryPolicy.max_total_wait`; a `Retry-After` beyond it raises `CoolifyRateLimited` at once instead of
  holding the caller;
* can check every request against the published spec before sending it (`validate_with=CoolifySpec.load()`),
  which the contract tests do (`SPEC_OMITTED_KEYS` lists the body keys real Coolify accepts that the spec omits);
* stays inside Coolify's rate limit by itself: every attempt first takes a slot from a `RequestBudget`
  (`inkmcp.coolify.budget`; in-process by default, shared by all replicas through Postgres with `DbBudget`).
  When the budget is spent the client waits for the next slot, within `RetryPolicy.max_total_wait`, and past
  that raises a retryable `CoolifyRateLimited` with `retry_after` without sending anything. A 429 that arrives
  anyway pauses the whole budget for its Retry-After;
* never repeats a call that creates something or queues work (POST creates, `/deploy`, start/restart, a PATCH
  with `instant_deploy`) after an ambiguous failure: it raises a retryable error and the caller re-reads state.
  `/deploy` answering 429 because a server's deployment queue is full (Retry-After 60) is raised at once as
  `CoolifyRateLimited(queue_full=True)`, for the caller to report progress and try later.

Endpoints: servers, Sentinel, proxy (registration); projects/environments, applications (public git and
Dockerfile), their env vars, deploy, deployments and runtime logs, Postgres databases (issue 8: the compute and
database providers). `inkmcp.coolify.polling` waits for deployments and statuses with backoff.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError

from inkmcp.coolify.budget import Grant, LocalBudget, RequestBudget
from inkmcp.coolify.models import (
    SKIPPED_MESSAGE,
    ActionQueued,
    Application,
    ApplicationCreated,
    ApplicationLogs,
    ApplicationUpdate,
    Database,
    DatabaseCreated,
    DeployAnswer,
    Deployment,
    DeploymentPage,
    DeployResult,
    DockerfileApplicationCreate,
    Environment,
    EnvironmentCreate,
    EnvVar,
    EnvVarBulk,
    EnvVarSet,
    Message,
    PostgresCreate,
    Project,
    ProjectCreate,
    ProxyConfiguration,
    ProxySettings,
    PublicApplicationCreate,
    SentinelSettings,
    SentinelUpdate,
    Server,
    ServerCreate,
    ServerUpdate,
    Uuid,
    ValidateServer,
)
from inkmcp.coolify.spec import API_PREFIX, CoolifySpec, SpecError

log = logging.getLogger("inkmcp.coolify")

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=10.0)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})

SPEC_OMITTED_KEYS: dict[str, frozenset[str]] = {
    op: frozenset({"is_runtime", "is_buildtime", "comment"})
    for op in ("create-env-by-application-uuid", "update-env-by-application-uuid")
}
"""Body keys real Coolify accepts that its spec omits (NOTES.md §b: "S omits them and comment"; allow-list at
ApplicationsController.php:3314 and :3755). `validate_with` lets exactly these through; everything else the spec
does not list is still refused before sending."""

_PRIVATE_NETS = [ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "::1/128", "fc00::/7")]


# ---------------------------------------------------------------------------------------------------------
# Settings checks
# ---------------------------------------------------------------------------------------------------------


def check_api_url(url: str, setting: str = "the Coolify API URL") -> str:
    """The base URL (API under /api/v1) if it keeps the token off the public internet in clear text; else a
    ValueError naming `setting` and what to pass instead (review finding 14).

    Allowed: `https://<host>` (Coolify's instance domain served through its proxy with a certificate);
    `http://` only to `localhost`, a loopback, RFC 1918, CGNAT (100.64/10) or IPv6 ULA address, i.e. the Cloud
    Network or an SSH tunnel. An http URL with a DNS name is refused: the name may resolve publicly.
    A trailing `/api/v1` is accepted and dropped.
    """
    example = "https://coolify.example.com or http://10.0.1.10:8000 (the master's private address)"
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{setting} {url!r} is not an http(s) URL with a host; pass e.g. {example}")
    if parts.username or parts.password:
        raise ValueError(f"{setting} {url!r} carries credentials; pass the API token separately and the URL "
                         f"without user:password@, e.g. {example}")
    if parts.query or parts.fragment:
        raise ValueError(f"{setting} {url!r} has a query or fragment; pass the base URL only, e.g. {example}")
    host = parts.hostname
    if parts.scheme == "http" and host != "localhost":
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"{setting} {url!r} would send the API token in clear text to {host!r}, a name that may resolve to "
                f"a public address (review finding 14); use https://{host} (Coolify's instance domain behind its "
                "proxy) or the master's private IP, e.g. http://10.0.1.10:8000") from None
        if not any(ip in net for net in _PRIVATE_NETS if net.version == ip.version):
            raise ValueError(
                f"{setting} {url!r} would send the API token in clear text to the public address {host} (review "
                "finding 14); use https://<Coolify's instance domain>, the master's private address on the Cloud "
                "Network (e.g. http://10.0.1.10:8000), or an SSH tunnel (http://127.0.0.1:8000)")
    path = parts.path.rstrip("/")
    if path.endswith(API_PREFIX):
        path = path[: -len(API_PREFIX)]
    netloc = parts.netloc
    return f"{parts.scheme}://{netloc}{path}"


def check_token(token: str, setting: str = "the Coolify API token") -> str:
    """A Sanctum personal access token (`<id>|<secret>`, created in Keys & Tokens → API tokens)."""
    if not token or not token.strip():
        raise ValueError(f"{setting} is empty; create one in Coolify (Keys & Tokens → API tokens) and pass it")
    if any(c.isspace() for c in token):
        raise ValueError(f"{setting} contains whitespace (a pasted newline?); pass the token exactly as Coolify "
                         "showed it, <id>|<secret>")
    return token


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


class CoolifyError(Exception):
    """An error answer (or no answer) from Coolify. `str()` names the request and what to do about it."""

    retryable: bool = False
    hint: str = ""

    def __init__(self, message: str, *, method: str = "", path: str = "", status: int | None = None,
                 errors: Mapping[str, list[str]] | None = None, body: Any = None) -> None:
        self.message = message
        self.method = method
        self.path = path
        self.status = status
        self.errors = dict(errors or {})
        self.body = body
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.method} {self.path}: " if self.method else ""
        status = f"Coolify {self.status}: " if self.status is not None else ""
        detail = "".join(f"; {field}: {' '.join(msgs)}" for field, msgs in self.errors.items())
        hint = f" — {self.hint}" if self.hint else ""
        return f"{where}{status}{self.message}{detail}{hint}"


class CoolifyAuthError(CoolifyError):
    """401 (no or unknown token) or 400 "Invalid token." (the token's team is gone). Never retried."""

    hint = ("the API token was refused: check the token setting (INKMCP_COOLIFY_TOKEN / coolifyApiToken); create "
            "one in Coolify under Keys & Tokens → API tokens, for a team admin")


class CoolifyPermissionError(CoolifyError):
    """403: the token lacks an ability (`Missing required permissions: write`), the user's role forbids it, or
    the API is disabled."""

    @property
    def hint(self) -> str:  # type: ignore[override]
        if "API is disabled" in self.message:
            return "enable the API in Coolify: Settings → Advanced → API access (new installs have it off)"
        return ("give the token the abilities InkMCP needs (read, read:sensitive, write; or root) in Keys & "
                "Tokens → API tokens, on a team admin's account")


class CoolifyNotFound(CoolifyError):
    """404: no such resource for this token's team (or no such route)."""


class CoolifyValidationError(CoolifyError):
    """422: Coolify refused the body; `errors` maps each field to its messages, and `str()` names each field
    (`POST /applications/public: Coolify 422: Validation failed.; git_branch: The git branch format is
    invalid.`) so the fix is in the message."""

    @property
    def fields(self) -> list[str]:
        return [f for f in self.errors if f != "(request)"]


class CoolifyConflict(CoolifyError):
    """409: e.g. a domain already in use."""


class CoolifyBadRequest(CoolifyError):
    """400 other than an invalid token: malformed request, or a refusal such as "A server with this IP/Domain is
    already in use." or "Server has resources."."""


class CoolifyRateLimited(CoolifyError):
    """Not now: `retry_after` says when the next attempt can succeed. Raised for a 429 beyond the wait the retry
    policy allows, for InkMCP's own request budget spent beyond it (`status` None: nothing was sent), and for
    `/deploy`'s 429 when the server's deployment queue is full (`queue_full`). Callers report progress and retry
    later; an agent never sees it as an error."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, queue_full: bool = False,
                 **kw: Any) -> None:
        self.retry_after = retry_after
        self.queue_full = queue_full
        super().__init__(message, **kw)


class CoolifyUnavailable(CoolifyError):
    """Coolify did not answer (connection refused, timeout) or answered 5xx. Retryable later."""

    retryable = True
    hint = "Coolify is unreachable or failing; check the API URL setting and that Coolify is up, then retry"


class CoolifyContractError(CoolifyError):
    """Coolify answered 2xx with a body this client cannot read (a contract change, e.g. an upgrade)."""


_BY_STATUS: dict[int, type[CoolifyError]] = {
    401: CoolifyAuthError, 403: CoolifyPermissionError, 404: CoolifyNotFound, 409: CoolifyConflict,
    422: CoolifyValidationError,
}


def _errors_of(body: Any) -> dict[str, list[str]]:
    """Coolify's `errors` in any of its shapes (NOTES.md §a): {f: [m]}, {f: "m"}, or a list of strings."""
    raw = body.get("errors") if isinstance(body, dict) else None
    if isinstance(raw, dict):
        return {str(k): [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in raw.items()}
    if isinstance(raw, list):
        return {"(request)": [str(m) for m in raw]}
    return {}


def error_for(method: str, path: str, response: httpx.Response) -> CoolifyError:
    """The typed exception for an error answer."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) and isinstance(body.get("message"), str) else None
    message = message or (response.text[:200].strip() or response.reason_phrase)
    status = response.status_code
    kw: dict[str, Any] = {"method": method, "path": path, "status": status, "errors": _errors_of(body), "body": body}
    if status == 400 and message == "Invalid token.":
        return CoolifyAuthError(message, **kw)
    if status == 400:
        error = body.get("error") if isinstance(body, dict) else None
        return CoolifyBadRequest(f"{message} {error}" if isinstance(error, str) else message, **kw)
    if status == 429:
        queue_full = method == "POST" and path.rstrip("/") == "/deploy" and "queue is full" in message
        return CoolifyRateLimited(message, retry_after=retry_after_seconds(response), queue_full=queue_full, **kw)
    if status >= 500:
        return CoolifyUnavailable(message, **kw)
    return _BY_STATUS.get(status, CoolifyError)(message, **kw)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds: delta-seconds (what Laravel sends) or an HTTP date."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ---------------------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------------------


class RetryPolicy(BaseModel):
    """How long the client keeps trying by itself before handing a retryable error to the caller."""

    model_config = ConfigDict(frozen=True)

    attempts: int = Field(default=6, ge=1, description="tries per call, the first included")
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=10.0, gt=0)
    max_total_wait: float = Field(default=90.0, ge=0, description="seconds of sleeping per call, at most")

    def backoff(self, retry: int) -> float:
        return float(min(self.backoff_max, self.backoff_initial * 2 ** retry))


M = TypeVar("M", bound=BaseModel)
Sleep = Callable[[float], Awaitable[None]]


class CoolifyClient:
    """One Coolify instance, one token. Use as `async with CoolifyClient(url, token) as c: ...`."""

    def __init__(self, base_url: str, token: str | SecretStr, *,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, retry: RetryPolicy | None = None,
                 validate_with: CoolifySpec | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Sleep = asyncio.sleep, url_setting: str = "the Coolify API URL",
                 token_setting: str = "the Coolify API token",  # noqa: S107 - a setting name
                 budget: RequestBudget | None = None, attempt_timeout: float = 50.0) -> None:
        """`budget`: where request slots come from; None = a `LocalBudget` for this client alone (the CLI).
        Replicas pass a `DbBudget` with one key per Coolify user so they share Coolify's limit.
        `attempt_timeout`: the most one attempt may take in total (httpx's timeouts are per phase); kept below
        Coolify's 60 s window so that no request outlives the budget slot it was sent on."""
        if attempt_timeout <= 0:
            raise ValueError(f"attempt_timeout={attempt_timeout}: pass the seconds one request may take, e.g. 50")
        self.attempt_timeout = attempt_timeout
        self.base_url = check_api_url(base_url, url_setting)
        secret = token if isinstance(token, SecretStr) else SecretStr(token)
        check_token(secret.get_secret_value(), token_setting)
        self._token = secret
        self.retry = retry or RetryPolicy()
        self.spec = validate_with
        self.budget: RequestBudget = budget if budget is not None else LocalBudget()
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self.base_url + API_PREFIX, timeout=timeout, transport=transport, follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "inkmcp-coolify-client"})
        # The direct path (`_send`): with a transport of the caller's (the provider's PolicyTransport), a request
        # goes straight to it, with exactly the request httpx.AsyncClient would have built (same URL, headers,
        # body, timeouts), but without its per-request machinery that Coolify's API never uses: a second URL
        # parse for the base URL join, the cookie jar, auth and redirect flows, event hooks, the bound stream
        # and its timer (issue 8: ~0.2 ms of CPU per request, 11 requests per first deploy). Without one,
        # httpx's own client runs as before (it mounts the environment's proxies on its default transport).
        self._transport: httpx.AsyncBaseTransport | None = transport
        self._url = self.base_url + API_PREFIX
        self._headers: list[tuple[bytes, bytes]] = list(self._http.headers.raw)  # as spelled, in httpx's order
        self._timeouts: dict[str, float | None] = self._http.timeout.as_dict()
        self.before_write: Callable[[], Awaitable[None]] | None = None
        """Awaited before every request that may change something in Coolify (any method but GET/HEAD), before
        its budget slot is taken: the Coolify provider flushes the refs it recorded since the last such request
        there (`provider._RefBatch`), so each is durable before the remote step that depends on it."""

    def __repr__(self) -> str:
        return f"CoolifyClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> CoolifyClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport ---------------------------------------------------------------------------------------

    def _check_spec(self, method: str, path: str, params: Mapping[str, str] | None, json: Any, auth: str) -> None:
        assert self.spec is not None
        problems = self.spec.request_problems(method, path, query=params, body=json, authorization=auth)
        found = self.spec.find(method, path)
        omitted = SPEC_OMITTED_KEYS.get(found[0].operation_id, frozenset()) if found else frozenset()
        problems = [p for p in problems
                    if not any(p.startswith(f"body key {k!r} is not in the spec's schema") for k in omitted)]
        if problems:
            raise SpecError(f"request {method} {path}", problems)

    async def _take_slot(self, method: str, path: str, waited: float) -> tuple[Grant, float]:
        """Wait for a slot of the request budget; return it and the seconds waited. Past the policy's total wait,
        raise a retryable CoolifyRateLimited without sending."""
        spent = 0.0
        while True:
            try:
                grant = await self.budget.reserve()
            except Exception as e:
                raise CoolifyUnavailable(
                    f"InkMCP's request budget could not be read ({type(e).__name__}); nothing was sent. Check the "
                    "control-plane database (INKMCP_DATABASE_URL), then retry", method=method, path=path) from e
            wait = grant.wait
            if grant.granted:
                return grant, spent
            if waited + spent + wait > self.retry.max_total_wait:
                raise CoolifyRateLimited(
                    f"InkMCP's request budget for this Coolify token is spent (Coolify allows a limited number of "
                    f"API requests per minute); next slot in {wait:.1f} s", retry_after=wait, method=method,
                    path=path)
            log.info("coolify %s %s: request budget spent, waiting %.2f s for a slot", method, path, wait)
            await self._sleep(wait)
            spent += wait

    async def _settle(self, grant: Grant, method: str, path: str) -> None:
        try:
            await self.budget.settle(grant)
        except Exception as e:  # the request is done; a budget that cannot record it must not fail it
            log.warning("coolify %s %s: could not settle the request budget (%s)", method, path, type(e).__name__)

    async def request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None,
                      idempotent: bool | None = None) -> httpx.Response:
        """Send one API call (path relative to /api/v1), retrying as the module docstring says; return the 2xx
        response or raise a `CoolifyError`."""
        method = method.upper()
        idempotent = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        if self.before_write is not None and method not in ("GET", "HEAD"):
            await self.before_write()
        auth = f"Bearer {self._token.get_secret_value()}"
        if self.spec is not None:
            self._check_spec(method, path, params, json, auth)
        headers = {"Authorization": auth}
        waited = 0.0
        last: CoolifyError | None = None
        for attempt in range(self.retry.attempts):
            grant, spent = await self._take_slot(method, path, waited)
            waited += spent
            started = time.monotonic()
            try:
                try:
                    # asyncio.timeout, not wait_for: no task of its own per request (two event-loop turns less)
                    async with asyncio.timeout(self.attempt_timeout):
                        response = await self._send(method, path, json, params, headers)
                finally:
                    await self._settle(grant, method, path)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError) as e:
                # Not sent: safe to repeat, but only calls marked idempotent are (the caller decides the rest).
                # ProxyError: the proxy (HTTPS_PROXY) refused the tunnel to Coolify, before the request went in.
                via = " through the proxy (HTTP(S)_PROXY; NO_PROXY lists hosts that go direct)" \
                    if isinstance(e, httpx.ProxyError) else ""
                last = CoolifyUnavailable(f"cannot connect to {self.base_url}{via}: {type(e).__name__}",
                                          method=method, path=path)
                if not idempotent:
                    raise last from e
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, TimeoutError) as e:
                # Sent, outcome unknown: repeat only what is idempotent.
                last = CoolifyUnavailable(f"no complete answer from {self.base_url}: {type(e).__name__}",
                                          method=method, path=path)
                if not idempotent:
                    raise last from e
            else:
                elapsed = time.monotonic() - started
                log.debug("coolify %s %s -> %s in %.0f ms (attempt %d)", method, path, response.status_code,
                          elapsed * 1000, attempt + 1)
                if response.is_success:
                    return response
                last = error_for(method, path, response)
                if response.status_code == 429:
                    assert isinstance(last, CoolifyRateLimited)
                    if last.queue_full:
                        raise last  # the server's deployment queue, not the rate limit: the caller reports progress
                    wait = last.retry_after if last.retry_after is not None else self.retry.backoff(attempt)
                    try:
                        await self.budget.pause(wait)
                    except Exception as e:  # this call still waits; only the other replicas are not told
                        log.warning("coolify %s %s: could not record the 429 pause in the request budget (%s)",
                                    method, path, type(e).__name__)
                    if waited + wait > self.retry.max_total_wait or attempt + 1 >= self.retry.attempts:
                        raise last
                    log.info("coolify %s %s: rate limited, retrying in %.1f s (Retry-After)", method, path, wait)
                    await self._sleep(wait)
                    waited += wait
                    continue
                if not (response.status_code in (502, 503, 504) and idempotent):
                    raise last
            wait = self.retry.backoff(attempt)
            if waited + wait > self.retry.max_total_wait or attempt + 1 >= self.retry.attempts:
                break
            log.info("coolify %s %s: %s, retrying in %.1f s", method, path, last.message, wait)
            await self._sleep(wait)
            waited += wait
        assert last is not None
        raise last

    async def _send(self, method: str, path: str, json: Any, params: Mapping[str, str] | None,
                    headers: dict[str, str]) -> httpx.Response:
        """One attempt: the answer, read whole and closed (the direct path is the constructor's comment)."""
        transport = self._transport
        if transport is None:
            return await self._http.request(method, path, json=json, params=params, headers=headers)
        request = httpx.Request(method, self._url + (path if path.startswith("/") else f"/{path}"), params=params,
                                headers=[*self._headers, *((k.encode(), v.encode()) for k, v in headers.items())],
                                json=json, extensions={"timeout": self._timeouts})
        try:
            response = await transport.handle_async_request(request)
        except httpx.RequestError as e:  # as httpx's client does: the error names its request
            e.request = request
            raise
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def _call(self, model: type[M] | TypeAdapter[Any], method: str, path: str, **kw: Any) -> Any:
        response = await self.request(method, path, **kw)
        try:  # pydantic parses the JSON and builds the model in one pass (issue 8: no dict of the answer between)
            if isinstance(model, TypeAdapter):
                return model.validate_json(response.content)
            return model.model_validate_json(response.content)
        except ValidationError:
            pass  # the answer read as plain JSON below, to tell "not JSON" from "not the shape InkMCP expects"
        try:
            body = response.json()
        except ValueError as e:
            raise CoolifyContractError(f"answer is not JSON: {response.text[:200]!r}", method=method, path=path,
                                       status=response.status_code) from e
        try:
            if isinstance(model, TypeAdapter):
                return model.validate_python(body)
            return model.model_validate(body)
        except ValidationError as e:
            raise CoolifyContractError(f"answer does not match what InkMCP expects: {e}", method=method, path=path,
                                       status=response.status_code, body=body) from e

    # -- servers -----------------------------------------------------------------------------------------

    async def list_servers(self) -> list[Server]:
        return await self._call(_SERVERS, "GET", "/servers")  # type: ignore[no-any-return]

    async def get_server(self, uuid: str) -> Server:
        return await self._call(Server, "GET", f"/servers/{uuid}")  # type: ignore[no-any-return]

    async def create_server(self, body: ServerCreate) -> str:
        """The new server's uuid. Not retried on an ambiguous failure: list the servers and look for its IP."""
        created: Uuid = await self._call(Uuid, "POST", "/servers", json=body.body())
        return created.uuid

    async def update_server(self, uuid: str, body: ServerUpdate) -> None:
        await self._call(Uuid, "PATCH", f"/servers/{uuid}", json=body.body(), idempotent=True)

    async def delete_server(self, uuid: str) -> None:
        """Coolify refuses (400 "Server has resources.") while the server hosts anything; InkMCP never forces."""
        await self._call(Message, "DELETE", f"/servers/{uuid}")

    async def validate_server(self, uuid: str, body: ValidateServer | None = None) -> str:
        """Queue Coolify's validation (SSH, OS, Docker); poll `get_server` for `settings.is_usable`."""
        kw: dict[str, Any] = {"json": body.body()} if body is not None else {}
        answer: Message = await self._call(Message, "POST", f"/servers/{uuid}/validate", idempotent=True, **kw)
        return answer.message

    # -- sentinel ----------------------------------------------------------------------------------------

    async def get_sentinel(self, uuid: str) -> SentinelSettings:
        return await self._call(SentinelSettings, "GET", f"/servers/{uuid}/sentinel")  # type: ignore[no-any-return]

    async def update_sentinel(self, uuid: str, body: SentinelUpdate) -> SentinelSettings:
        return await self._call(SentinelSettings, "PATCH", f"/servers/{uuid}/sentinel",  # type: ignore[no-any-return]
                                json=body.body(), idempotent=True)

    # -- proxy -------------------------------------------------------------------------------------------

    async def get_proxy(self, uuid: str) -> ProxySettings:
        return await self._call(ProxySettings, "GET", f"/servers/{uuid}/proxy")  # type: ignore[no-any-return]

    async def save_proxy_configuration(self, uuid: str, compose: str) -> ProxySettings:
        """Store `compose` as the server's proxy configuration (Coolify's DB copy, written to the node now and on
        every proxy start). Takes effect on the next proxy (re)start."""
        body = ProxyConfiguration.from_yaml(compose).body()
        return await self._call(ProxySettings, "PUT",  # type: ignore[no-any-return]
                                f"/servers/{uuid}/proxy/configuration", json=body)

    async def restart_proxy(self, uuid: str) -> str:
        answer: Message = await self._call(Message, "POST", f"/servers/{uuid}/proxy/restart")
        return answer.message


    # -- projects and environments -------------------------------------------------------------------------

    async def list_projects(self) -> list[Project]:
        return await self._call(_PROJECTS, "GET", "/projects")  # type: ignore[no-any-return]

    async def get_project(self, uuid: str) -> Project:
        """The project with its environments."""
        return await self._call(Project, "GET", f"/projects/{_seg(uuid)}")  # type: ignore[no-any-return]

    async def create_project(self, body: ProjectCreate) -> str:
        """The new project's uuid (Coolify adds a `production` environment). Not retried on an ambiguous failure:
        list the projects and look for the name."""
        created: Uuid = await self._call(Uuid, "POST", "/projects", json=body.body())
        return created.uuid

    async def delete_project(self, uuid: str) -> None:
        """Coolify refuses (400) while the project has resources."""
        await self._call(Message, "DELETE", f"/projects/{_seg(uuid)}")

    async def list_environments(self, project_uuid: str) -> list[Environment]:
        return await self._call(_ENVIRONMENTS, "GET",  # type: ignore[no-any-return]
                                f"/projects/{_seg(project_uuid)}/environments")

    async def get_environment(self, project_uuid: str, name_or_uuid: str) -> Environment:
        return await self._call(Environment, "GET",  # type: ignore[no-any-return]
                                f"/projects/{_seg(project_uuid)}/{_seg(name_or_uuid)}")

    async def create_environment(self, project_uuid: str, name: str) -> str:
        """The new environment's uuid; CoolifyConflict (409) when the name exists (then list and take it)."""
        created: Uuid = await self._call(Uuid, "POST", f"/projects/{_seg(project_uuid)}/environments",
                                         json=EnvironmentCreate(name=name).body())
        return created.uuid

    # -- applications -----------------------------------------------------------------------------------

    async def create_public_application(self, body: PublicApplicationCreate) -> ApplicationCreated:
        """Create an application from a public git repository. Never retried after an ambiguous failure (a
        repeat would create a second application): the caller looks for it by name/tag and decides."""
        return await self._call(ApplicationCreated, "POST", "/applications/public",  # type: ignore[no-any-return]
                                json=body.body())

    async def create_dockerfile_application(self, body: DockerfileApplicationCreate) -> ApplicationCreated:
        """Create an application from an inline Dockerfile (encoded by the model). Coolify sets ports_exposes to
        80 whatever is sent: PATCH it afterwards. Never retried after an ambiguous failure."""
        return await self._call(ApplicationCreated, "POST",  # type: ignore[no-any-return]
                                "/applications/dockerfile", json=body.body())

    async def list_applications(self, tag: str | None = None) -> list[Application]:
        params = {"tag": tag} if tag else None
        return await self._call(_APPLICATIONS, "GET", "/applications", params=params)  # type: ignore[no-any-return]

    async def get_application(self, uuid: str) -> Application:
        return await self._call(Application, "GET", f"/applications/{_seg(uuid)}")  # type: ignore[no-any-return]

    async def update_application(self, uuid: str, body: ApplicationUpdate) -> None:
        """PATCH absolute values: repeated on an ambiguous failure, unless the body has `instant_deploy` (that
        queues a deployment; the caller checks the deployments instead)."""
        await self._call(Uuid, "PATCH", f"/applications/{_seg(uuid)}", json=body.body(),
                         idempotent=not body.instant_deploy)

    async def delete_application(self, uuid: str, *, delete_configurations: bool = True,
                                 delete_volumes: bool = True, docker_cleanup: bool = True,
                                 delete_connected_networks: bool = True, missing_ok: bool = False) -> bool:
        """Queue the deletion (Coolify deletes asynchronously; poll `get_application` for 404). True if queued,
        False if it was already gone and `missing_ok` (a repeated delete after a crash)."""
        params = {"delete_configurations": _bool(delete_configurations), "delete_volumes": _bool(delete_volumes),
                  "docker_cleanup": _bool(docker_cleanup),
                  "delete_connected_networks": _bool(delete_connected_networks)}
        try:
            await self._call(Message, "DELETE", f"/applications/{_seg(uuid)}", params=params)
        except CoolifyNotFound:
            if missing_ok:
                return False
            raise
        return True

    async def start_application(self, uuid: str, *, force: bool = False,
                                instant_deploy: bool = False) -> ActionQueued:
        """Queue a deployment (start == deploy in Coolify). Not retried: a repeat may queue a second one."""
        params = {"force": _bool(force), "instant_deploy": _bool(instant_deploy)}
        return await self._call(ActionQueued, "POST", f"/applications/{_seg(uuid)}/start",  # type: ignore[no-any-return]
                                params=params, idempotent=False)

    async def stop_application(self, uuid: str, *, docker_cleanup: bool = True) -> str:
        """Queue a stop. Repeating a stop is harmless, so it is retried like a GET."""
        answer: Message = await self._call(Message, "POST", f"/applications/{_seg(uuid)}/stop",
                                           params={"docker_cleanup": _bool(docker_cleanup)}, idempotent=True)
        return answer.message

    async def restart_application(self, uuid: str) -> ActionQueued:
        """Queue a restart (a deployment that re-creates the container; env changes apply). Not retried."""
        return await self._call(ActionQueued, "POST",  # type: ignore[no-any-return]
                                f"/applications/{_seg(uuid)}/restart", idempotent=False)

    async def application_logs(self, uuid: str, *, lines: int = 100, show_timestamps: bool = False) -> str:
        """Runtime logs of the first container (`lines` 1..10000). CoolifyBadRequest "Application is not running."
        when there is no container."""
        if not 1 <= lines <= 10000:
            raise ValueError(f"lines={lines}: Coolify returns 1 to 10000 log lines; pass a value in that range")
        answer: ApplicationLogs = await self._call(
            ApplicationLogs, "GET", f"/applications/{_seg(uuid)}/logs",
            params={"lines": str(lines), "show_timestamps": _bool(show_timestamps)})
        return answer.logs

    # -- environment variables --------------------------------------------------------------------------

    async def list_envs(self, app_uuid: str) -> list[EnvVar]:
        """Every variable, preview twins included (Coolify creates one per variable)."""
        return await self._call(_ENVS, "GET", f"/applications/{_seg(app_uuid)}/envs")  # type: ignore[no-any-return]

    async def create_env(self, app_uuid: str, env: EnvVarSet) -> str:
        """The new variable's uuid; CoolifyConflict (409) if the key exists (use `update_env`/`update_envs`).
        Not retried after an ambiguous failure."""
        created: Uuid = await self._call(Uuid, "POST", f"/applications/{_seg(app_uuid)}/envs", json=env.body())
        return created.uuid

    async def update_env(self, app_uuid: str, env: EnvVarSet) -> EnvVar:
        """Change the variable with `env.key` (Coolify matches by key, not uuid); 404 if absent. Takes effect on
        the next deploy or restart."""
        return await self._call(EnvVar, "PATCH", f"/applications/{_seg(app_uuid)}/envs",  # type: ignore[no-any-return]
                                json=env.body(), idempotent=True)

    async def update_envs(self, app_uuid: str, envs: Sequence[EnvVarSet]) -> list[EnvVar]:
        """Upsert many variables by key in one request (the provider's path: one request whatever the count).
        Absolute values, so retried on an ambiguous failure. Takes effect on the next deploy or restart."""
        body = EnvVarBulk(data=list(envs)).body()
        return await self._call(_ENVS, "PATCH", f"/applications/{_seg(app_uuid)}/envs/bulk",  # type: ignore[no-any-return]
                                json=body, idempotent=True)

    async def delete_env(self, app_uuid: str, env_uuid: str) -> None:
        await self._call(Message, "DELETE", f"/applications/{_seg(app_uuid)}/envs/{_seg(env_uuid)}")

    # -- deploy and deployments -------------------------------------------------------------------------

    async def deploy(self, uuid: str, *, force: bool = False) -> DeployResult:
        """Queue a deployment of one application (`POST /deploy?uuid=&force=`; `GET /deploy` answers 405 since
        Coolify 4.3). Never retried after an ambiguous failure: a repeat could queue a second build; the caller
        lists the application's deployments and resumes. A full deployment queue on the server raises
        CoolifyRateLimited(queue_full=True, retry_after=60) at once."""
        answer: DeployAnswer = await self._call(DeployAnswer, "POST", "/deploy",
                                                params={"uuid": uuid, "force": _bool(force)}, idempotent=False)
        item = next((d for d in answer.deployments if d.resource_uuid == uuid), None)
        if item is None:
            raise CoolifyContractError(f"no deployment entry for {uuid} in the answer", method="POST",
                                       path="/deploy", status=200, body=answer.model_dump())
        message = item.message or ""
        skipped = message == SKIPPED_MESSAGE
        return DeployResult(resource_uuid=uuid, message=message, skipped=skipped,
                            deployment_uuid=None if skipped else item.deployment_uuid)

    async def get_deployment(self, deployment_uuid: str) -> Deployment:
        """One deployment with its status and, for a read:sensitive token, its build log (`log_lines()`)."""
        return await self._call(Deployment, "GET",  # type: ignore[no-any-return]
                                f"/deployments/{_seg(deployment_uuid)}")

    async def list_deployments(self, app_uuid: str, *, skip: int = 0, take: int = 10) -> DeploymentPage:
        """An application's deployments, newest first, `take` at a time."""
        if skip < 0 or take < 1:
            raise ValueError(f"skip={skip}, take={take}: pass skip >= 0 and take >= 1")
        return await self._call(DeploymentPage, "GET",  # type: ignore[no-any-return]
                                f"/deployments/applications/{_seg(app_uuid)}",
                                params={"skip": str(skip), "take": str(take)})

    async def cancel_deployment(self, deployment_uuid: str) -> str:
        """Cancel a queued or running deployment; CoolifyBadRequest if it already ended. Repeating is harmless."""
        answer: Message = await self._call(Message, "POST", f"/deployments/{_seg(deployment_uuid)}/cancel",
                                           idempotent=True)
        return answer.message

    # -- databases --------------------------------------------------------------------------------------

    async def create_postgresql(self, body: PostgresCreate) -> DatabaseCreated:
        """Create a Coolify-managed Postgres; the answer carries its connection URLs (secrets). Never retried
        after an ambiguous failure."""
        return await self._call(DatabaseCreated, "POST", "/databases/postgresql",  # type: ignore[no-any-return]
                                json=body.body())

    async def get_database(self, uuid: str) -> Database:
        return await self._call(Database, "GET", f"/databases/{_seg(uuid)}")  # type: ignore[no-any-return]

    async def delete_database(self, uuid: str, *, delete_configurations: bool = True, delete_volumes: bool = True,
                              docker_cleanup: bool = True, delete_connected_networks: bool = True,
                              missing_ok: bool = False) -> bool:
        """Queue the deletion; like `delete_application`."""
        params = {"delete_configurations": _bool(delete_configurations), "delete_volumes": _bool(delete_volumes),
                  "docker_cleanup": _bool(docker_cleanup),
                  "delete_connected_networks": _bool(delete_connected_networks)}
        try:
            await self._call(Message, "DELETE", f"/databases/{_seg(uuid)}", params=params)
        except CoolifyNotFound:
            if missing_ok:
                return False
            raise
        return True


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _seg(value: str) -> str:
    """A path segment from a caller: refuse what would change the path (a uuid never has these)."""
    if not value or any(c in value for c in "/?#%") or value in (".", ".."):
        raise ValueError(f"{value!r} is not a Coolify uuid or name usable in a URL path; pass the resource's uuid")
    return value


_PROJECTS: TypeAdapter[list[Project]] = TypeAdapter(list[Project])
_ENVIRONMENTS: TypeAdapter[list[Environment]] = TypeAdapter(list[Environment])
_APPLICATIONS: TypeAdapter[list[Application]] = TypeAdapter(list[Application])
_ENVS: TypeAdapter[list[EnvVar]] = TypeAdapter(list[EnvVar])

_SERVERS: TypeAdapter[list[Server]] = TypeAdapter(list[Server])
