"""A typed async client for the parts of Neon's API v2 InkMCP uses (projects, branches, roles, databases,
operations, connection URIs).

Why its own client rather than Neon's SDK: the provider needs Neon's answers classified for retry decisions
(what is safe to repeat) and needs the API key kept out of every log line and error; the SDK is synchronous
(requests) and raises bare HTTP errors. The client therefore

* sends `Authorization: Bearer <key>` and never logs or prints the key: it is a `SecretStr`, debug logs carry
  method, path, status and timing, errors name the request path and Neon's `code`/`message`/`request_id`;
* maps every error answer to a typed `NeonError` whose `retryable` says whether a later try can help;
* retries by itself, with exponential backoff bounded by `RetryPolicy.max_total_wait`:
  - `423 Locked` (an operation of the project is running) and `429 Too Many Requests` for any method: Neon
    refused before doing anything, so repeating cannot double an effect (`Retry-After` honoured when sent);
  - connection failures (nothing was sent) for any method;
  - timeouts, broken answers and 5xx only for calls that are safe to repeat: GET, DELETE, and POSTs the caller
    marks `idempotent=True` (reset_password: a repeat just sets another password, which is the one returned).
    A POST that creates something is never repeated blind; the provider looks up what it may have created;
* waits for operations (`wait_operations`) by polling each with backoff until a terminal status;
* validates every request against the vendored spec before sending when `validate_with` is given (tests).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from inkmcp.neon.models import (
    TERMINAL_BAD,
    TERMINAL_OK,
    Branch,
    CreatedProject,
    DatabaseCreate,
    DatabaseOperations,
    Operation,
    Project,
    ProjectCreate,
    ProjectsPage,
    Role,
    RoleCreate,
    RoleOperations,
)
from inkmcp.neon.settings import check_api_url
from inkmcp.neon.spec import NeonSpec

log = logging.getLogger("inkmcp.neon")

SAFE_METHODS = frozenset({"GET", "HEAD", "DELETE"})


class NeonError(Exception):
    """An error answer (or no answer) from Neon. `str()` names the request, never the key."""

    retryable: bool = False
    hint: str = ""

    def __init__(self, message: str, *, method: str = "", path: str = "", status: int | None = None,
                 code: str | None = None, request_id: str | None = None) -> None:
        self.message = message
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.request_id = request_id
        where = f"{method} {path}: " if method else ""
        st = f"Neon {status}" + (f" {code}" if code else "") + ": " if status is not None else ""
        rid = f" (request_id {request_id})" if request_id else ""
        hint = f" — {self.hint}" if self.hint else ""
        super().__init__(f"{where}{st}{message}{rid}{hint}")


class NeonAuthError(NeonError):
    hint = ("Neon refused the API key: set INKMCP_NEON_API_KEY to a valid key (Neon Console → API keys); an "
            "organization's projects need an org key or INKMCP_NEON_ORG_ID")


class NeonNotFound(NeonError):
    """404: no such project/branch/role/database for this key."""


class NeonBadRequest(NeonError):
    """400/409/412/422: Neon refused the request as such; repeating it will not help."""


class NeonLocked(NeonError):
    """423 after the retry budget: an operation of the project is still running."""

    retryable = True


class NeonRateLimited(NeonError):
    """429 after the retry budget (Neon: 700 requests/minute per account)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class NeonUnavailable(NeonError):
    """No answer, a timeout, or 5xx. Retryable later; for a create, the outcome is unknown."""

    retryable = True
    hint = "Neon is unreachable or failing; check INKMCP_NEON_API_URL and https://neonstatus.com, then retry"


class NeonContractError(NeonError):
    """2xx with a body this client cannot read (an API change)."""


class NeonOperationFailed(NeonError):
    """An operation ended cancelled, or did not finish within the wait budget."""

    retryable = True


def _error_for(method: str, path: str, response: httpx.Response) -> NeonError:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    message = body.get("message") if isinstance(body.get("message"), str) else None
    message = message or response.reason_phrase or "error"
    kw: dict[str, Any] = {"method": method, "path": path, "status": response.status_code,
                          "code": body.get("code") or None, "request_id": body.get("request_id")}
    status = response.status_code
    if status in (401, 403):
        return NeonAuthError(message, **kw)
    if status == 404:
        return NeonNotFound(message, **kw)
    if status == 423:
        return NeonLocked(message, **kw)
    if status == 429:
        return NeonRateLimited(message, retry_after=_retry_after(response), **kw)
    if status >= 500:
        return NeonUnavailable(message, **kw)
    return NeonBadRequest(message, **kw)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class RetryPolicy(BaseModel):
    """How long one call keeps trying by itself before handing a retryable error to the caller."""

    model_config = ConfigDict(frozen=True)

    attempts: int = Field(default=8, ge=1)
    backoff_initial: float = Field(default=0.2, gt=0)
    backoff_max: float = Field(default=5.0, gt=0)
    max_total_wait: float = Field(default=60.0, ge=0)

    def backoff(self, retry: int) -> float:
        return float(min(self.backoff_max, self.backoff_initial * 2**retry))


M = TypeVar("M", bound=BaseModel)
Sleep = Callable[[float], Awaitable[None]]


class NeonClient:
    """One Neon account (API key). Use as `async with NeonClient(url, key) as c: ...`."""

    def __init__(self, api_url: str, api_key: SecretStr, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, validate_with: NeonSpec | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, sleep: Sleep = asyncio.sleep) -> None:
        self.api_url = check_api_url(api_url)
        self._key = api_key
        self.retry = retry or RetryPolicy()
        self.spec = validate_with
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self.api_url, transport=transport, follow_redirects=False,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"Accept": "application/json", "User-Agent": "inkmcp-neon-client"})

    def __repr__(self) -> str:
        return f"NeonClient(api_url={self.api_url!r})"

    async def __aenter__(self) -> NeonClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport -------------------------------------------------------------------------------------------

    async def request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None,
                      idempotent: bool | None = None) -> httpx.Response:
        """One API call (path relative to the base URL), retried as the module docstring says."""
        method = method.upper()
        safe = method in SAFE_METHODS if idempotent is None else idempotent
        auth = f"Bearer {self._key.get_secret_value()}"
        if self.spec is not None:
            self.spec.check_request(method, path, query=params, body=json, authorization=auth)
        waited = 0.0
        last: NeonError | None = None
        for attempt in range(self.retry.attempts):
            wait: float | None = None
            started = time.monotonic()
            try:
                response = await self._http.request(method, path, json=json, params=params,
                                                    headers={"Authorization": auth})
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
                last = NeonUnavailable(f"cannot connect to {self.api_url}: {type(e).__name__}",
                                       method=method, path=path)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as e:
                last = NeonUnavailable(f"no complete answer from {self.api_url}: {type(e).__name__}",
                                       method=method, path=path)
                if not safe:
                    raise last from None
            else:
                log.debug("neon %s %s -> %s in %.0f ms (attempt %d)", method, path, response.status_code,
                          (time.monotonic() - started) * 1000, attempt + 1)
                if response.is_success:
                    return response
                last = _error_for(method, path, response)
                if isinstance(last, NeonRateLimited):
                    wait = last.retry_after
                elif isinstance(last, NeonLocked):
                    pass
                elif not (isinstance(last, NeonUnavailable) and safe):
                    raise last
            wait = self.retry.backoff(attempt) if wait is None else wait
            if attempt + 1 >= self.retry.attempts or waited + wait > self.retry.max_total_wait:
                break
            log.info("neon %s %s: %s; retrying in %.2f s", method, path, last.message, wait)
            await self._sleep(wait)
            waited += wait
        assert last is not None
        raise last

    async def _call(self, model: type[M], method: str, path: str, **kw: Any) -> M:
        response = await self.request(method, path, **kw)
        try:
            return model.model_validate(response.json())
        except (ValueError, ValidationError) as e:
            # ValidationError messages quote input values; the body may hold passwords, so name the model only.
            raise NeonContractError(f"answer does not match {model.__name__} ({type(e).__name__})",
                                    method=method, path=path, status=response.status_code) from None

    # -- projects --------------------------------------------------------------------------------------------

    async def list_projects(self, search: str, *, org_id: str | None = None) -> list[Project]:
        """Every project whose name or id contains `search` (Neon's `search`), following the cursor."""
        found: list[Project] = []
        cursor: str | None = None
        while True:
            params = {"search": search, "limit": "400"}
            if org_id:
                params["org_id"] = org_id
            if cursor:
                params["cursor"] = cursor
            page = await self._call(ProjectsPage, "GET", "/projects", params=params)
            found += page.projects
            next_cursor = (page.pagination or {}).get("cursor")
            if len(page.projects) < 400 or not next_cursor or next_cursor == cursor:
                return found
            cursor = str(next_cursor)

    async def find_projects(self, name: str, *, org_id: str | None = None) -> list[Project]:
        """Projects named exactly `name` (Neon's `search` also matches partial names and ids)."""
        return [p for p in await self.list_projects(name, org_id=org_id) if p.name == name]

    async def create_project(self, body: ProjectCreate) -> CreatedProject:
        """Never retried on an ambiguous failure (timeout, 5xx): the caller looks the project up by name."""
        return await self._call(CreatedProject, "POST", "/projects", json=body.body())

    async def get_project(self, project_id: str) -> Project:
        return (await self._call(_ProjectAnswer, "GET", f"/projects/{project_id}")).project

    async def delete_project(self, project_id: str) -> None:
        await self.request("DELETE", f"/projects/{project_id}")

    async def list_branches(self, project_id: str) -> list[Branch]:
        return (await self._call(_Branches, "GET", f"/projects/{project_id}/branches")).branches

    async def connection_uri(self, project_id: str, *, branch_id: str, database: str, role: str) -> SecretStr:
        params = {"branch_id": branch_id, "database_name": database, "role_name": role}
        answer = await self._call(_Uri, "GET", f"/projects/{project_id}/connection_uri", params=params)
        return answer.uri

    # -- roles and databases ---------------------------------------------------------------------------------

    def _branch(self, project_id: str, branch_id: str) -> str:
        return f"/projects/{project_id}/branches/{branch_id}"

    async def get_role(self, project_id: str, branch_id: str, name: str) -> Role:
        path = f"{self._branch(project_id, branch_id)}/roles/{quote(name, safe='')}"
        return (await self._call(_RoleAnswer, "GET", path)).role

    async def create_role(self, project_id: str, branch_id: str, body: RoleCreate) -> RoleOperations:
        return await self._call(RoleOperations, "POST", f"{self._branch(project_id, branch_id)}/roles",
                                json=body.body())

    async def reset_password(self, project_id: str, branch_id: str, name: str) -> RoleOperations:
        path = f"{self._branch(project_id, branch_id)}/roles/{quote(name, safe='')}/reset_password"
        return await self._call(RoleOperations, "POST", path, idempotent=True)

    async def reveal_password(self, project_id: str, branch_id: str, name: str) -> SecretStr:
        path = f"{self._branch(project_id, branch_id)}/roles/{quote(name, safe='')}/reveal_password"
        return (await self._call(_Password, "GET", path)).password

    async def get_database(self, project_id: str, branch_id: str, name: str) -> DatabaseOperations | None:
        path = f"{self._branch(project_id, branch_id)}/databases/{quote(name, safe='')}"
        try:
            response = await self.request("GET", path)
        except NeonNotFound:
            return None
        try:
            return DatabaseOperations.model_validate({**response.json(), "operations": []})
        except (ValueError, ValidationError):
            raise NeonContractError("answer does not match DatabaseResponse", method="GET", path=path,
                                    status=response.status_code) from None

    async def create_database(self, project_id: str, branch_id: str, body: DatabaseCreate) -> DatabaseOperations:
        return await self._call(DatabaseOperations, "POST", f"{self._branch(project_id, branch_id)}/databases",
                                json=body.body())

    # -- operations ------------------------------------------------------------------------------------------

    async def get_operation(self, project_id: str, operation_id: str) -> Operation:
        path = f"/projects/{project_id}/operations/{operation_id}"
        return (await self._call(_OperationAnswer, "GET", path)).operation

    async def wait_operations(self, operations: Iterable[Operation], *, timeout: float,
                              poll_initial: float = 0.05, poll_max: float = 2.0) -> None:
        """Poll every operation not yet terminal until it is, backing off from `poll_initial` to `poll_max`.

        `failed`/`error` are not terminal (Neon retries them); `cancelled` raises, as does the deadline.
        """
        pending = {op.id: op for op in operations if op.status not in TERMINAL_OK}
        deadline = time.monotonic() + timeout
        delay = poll_initial
        while pending:
            for op in list(pending.values()):
                if op.status in TERMINAL_BAD:
                    raise NeonOperationFailed(f"operation {op.action} {op.id} was {op.status}"
                                              + (f": {op.error}" if op.error else ""))
                if op.status in TERMINAL_OK:
                    del pending[op.id]
            if not pending:
                return
            if time.monotonic() + delay > deadline:
                op = next(iter(pending.values()))
                raise NeonOperationFailed(
                    f"operation {op.action} {op.id} still {op.status} after {timeout:.0f} s"
                    + (f" (last error: {op.error})" if op.error else "")
                    + "; it may still finish: the next provision of this database resumes")
            await self._sleep(delay)
            delay = min(poll_max, delay * 2)
            for op_id, op in list(pending.items()):
                pending[op_id] = await self.get_operation(op.project_id, op_id)


class _ProjectAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    project: Project


class _Branches(BaseModel):
    model_config = ConfigDict(extra="ignore")
    branches: list[Branch]


class _Uri(BaseModel):
    model_config = ConfigDict(extra="ignore")
    uri: SecretStr


class _RoleAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Role


class _Password(BaseModel):
    model_config = ConfigDict(extra="ignore")
    password: SecretStr


class _OperationAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    operation: Operation
