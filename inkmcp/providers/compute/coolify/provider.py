"""The Coolify compute provider: the compute contract (`base.py`) met through Coolify's REST API.

Shape (the fake provider, `fake.py`, is the worked example this follows step by step):

* **One Coolify project per InkMCP project** (`inkmcp-<project id>`, recorded in `project_ref`), one
  **application per process** of a service (Procfile `web` + `worker` → two applications, the route only on the
  routed one), all on the server placement chose for the service; a service stays on the server recorded in its
  `service_ref` across redeploys.
* **Health check and release command** (mapping.py's docstring has the design and Coolify's lines behind it): the
  routed process of a webapp/static site carries Coolify's HTTP health check, which gates Coolify's rolling
  update (a new container that is not healthy is removed, the deployment fails, the old one keeps serving); the
  release command runs in the *new* container, first in the start command of the routed (else first) process,
  guarded by `INKMCP_RELEASE` = the deployment id, which only a release sets. With a release command that
  process is deployed first and the others only once it finished (workers never meet an unmigrated database);
  a failed release is `ReleaseFailed(releasing)` (the guard's marker line in the log Coolify copies from the
  container), a failed health check `ReleaseFailed(health_check)` naming the port and path Coolify asked. Where
  no health check gates the release's container (a backend, a worker-only service, on_demand's routed process
  whose fixed container name costs it the rolling update), Coolify calls the deployment
  finished once it started, so the provider reads the guard's report in the container's log (`_watch_release`,
  up to `release_timeout`) before it goes on; a failed release there deploys the previous release again (its
  container had been replaced) and fails with `releasing`.
* **Env changes** are deployments of the live commit, waited for (`env_wait_timeout`): `restarted` when they
  finished, `ReleaseFailed` with the previous values put back in Coolify when one failed, `pending` past the
  bound (`update_env`).
* **Every remote id is recorded before the next remote step** (`record()`), so a crash or a
  `ProviderUnavailable` at any point leaves enough in core's database to re-attach:

      project_ref     {"project_uuid", "environment_uuid", "pending" (late creates, below)}
      service_ref     {"server_uuid", "wildcard_base", "apps": {process: app uuid}, "routed", "port",
                       "live_config": {process: the release's PATCH body without git_repository},
                       "live_labels": {process: custom labels (on_demand)},
                       "set_fields": {process: optional fields InkMCP set, to clear when a release drops them},
                       "create_answered_error": true while an application create answered with an error may
                       have made it all the same (look by name before creating again),
                       "live": deployment id,
                       "live_commit", "live_deployments": {process: Coolify deployment uuid}, "url",
                       "dns_records", "env_revision", "env_change": {"revision", "after": {process: uuid|None},
                       "deployments": {process: uuid}}}
      deployment_ref  {"env_written": true once the new env may be in Coolify (no rollback snapshot after),
                       "intent": {process: newest Coolify deployment uuid before ours | None},
                       "deployments": {process: uuid}, "rollbacks": {process: uuid | None}}

  `intent` is the write-ahead: recorded *before* `POST /deploy`, so an attempt whose answer was lost (or that
  died right after the call) finds its deployment among the application's deployments newer than the anchor,
  for the same commit, instead of queueing a second one. Coolify's own "Deployment already queued for this
  commit." (the client's `skipped`) is handled the same way.
* **Late creates**: a create (`POST /projects`, `POST /applications/public`) or `POST /deploy` is preceded by a
  write-ahead mark of when it was sent (`"pending": {"project" | "app:<process>" | "deploy:<process>": unix
  time}` in the project / service / deployment ref), dropped once Coolify answered. When the answer never came
  (timeout, lost connection, a proxy's 502/504, or InkMCP died meanwhile), Coolify may still carry the request out
  after the client gave up (a PHP worker keeps going), so finding nothing by name (or no deployment after the
  anchor) right away proves nothing: the retry waits until `late_window` after the mark (2 x the client's
  attempt timeout by default), looks once more, and only then sends the request again. Nothing is duplicated
  unless Coolify holds a request longer than that window.
* **Which writes wait for which** (`_RefBatch`): every write-ahead mark above is durable (a fenced, committed
  statement: core's `record`) before the request it announces. Refs that only record an answer (a uuid Coolify
  gave back, a step) go with the next write instead, because losing them sends the next attempt back to a mark
  that still stands: a first deploy's env PATCHes of the applications its own attempt created go out before
  their uuids are written (`_RefBatch.keep`), and the `building` step of a build finished at the first look goes
  in the next write (overhead9, issue 8). The marks' commits stay synchronous (PostgreSQL's
  `synchronous_commit`): a mark lost to a crash of the control-plane PostgreSQL after its request went out would
  make the next attempt create or deploy a second time.
* **Builds never run on a run server**: `use_build_server` on every application, and only the nixpacks/static/
  dockerfile packs; env changes are applied with `POST /deploy` of the live commit, never `/restart`, because
  Coolify's restart runs its helper container (with the Docker socket) on the run server, which the gVisor
  selector refuses (review infra-2026-11-30 finding 2). Coolify finds the image of that commit and skips the
  build; the env applies when the new container replaces the old.
* **All or nothing across processes**: if one process's deployment fails, processes whose new deployment
  finished are deployed again at the live commit with the env they had (read from Coolify before it was
  replaced; kept in memory only, never in a ref, since refs are not secret storage), every application's
  `git_commit_sha` goes back to the live commit, and the release fails with the failed process's log tail.
  Gap: if InkMCP dies between replacing the env and a failed release, the env snapshot is lost; the rollback
  then redeploys the live commit with the *new* env (stated in the release's failure reason).
* **Errors**: Coolify's 429 (throttle or full deployment queue) and 5xx/unreachable → `ProviderUnavailable`
  (with `retry_after`); 401/403 and refused bodies (422, a policy refusal, a spec violation) →
  `ProviderRefused` naming what to fix; a failed build or release command → `ReleaseFailed(step, last log
  lines)`; a custom domain already used by another application (409) → `ReleaseFailed`.
* **Moving a service to another server** (`move`, for `inkmcp nodes drain`; not in the compute contract, since
  only a provider that places services has somewhere to move one): a copy on the target, health-checked, the
  record switched, the old applications deleted; progress kept in the live deployment's ref under "move".
  The default URL changes with the server (each server has its own wildcard domain); see `move`.
* **Nothing a tenant controls reaches Coolify as a field of its own**: bodies come from `mapping.py`, and
  `policy.py` checks each one before the client sends it (and again on the wire, `PolicyTransport`).

Known limits, left for the next session:
  - on_demand: the applications carry InkMCP's Sablier labels and no Coolify domains; the proxy's file-provider
    router (`mapping.sablier_router`) is written to the run server's `/data/coolify/proxy/dynamic/` over SSH by
    `routes.py` (Coolify has no API for it): after a release, on a move (target before the switch, old node
    after) and removed with the service. It needs INKMCP_NODE_SSH_KEY_FILE and the node's host key in
    INKMCP_NODE_SSH_KNOWN_HOSTS, and the node's Traefik must load the Sablier plugin (registration's flags); the
    reconciler does not yet compare router files with services (`routes.list_routes` exists for it).
  - the branch Coolify clones before checking out the pinned commit is `CoolifySettings.default_branch` (the
    contract carries no branch); Dockerfile detection is not wired (mapping supports `dockerfile_location`;
    the build plan needs a field for it).
  - health checks differ from the local provider's (a TCP connect): Coolify's published check is `curl -f` on
    `/`, so a webapp whose `/` answers 4xx/5xx fails on Coolify (the failure says so, with the 4xx the app's
    access log shows, and names inkmcp.yaml's `health_path`, which goes to `health_check_path`, and
    service_type='backend'); backends (an API or websocket server need not answer 2xx on `/`) and workers get
    none, so a process of theirs that crashes after starting shows in `runtime()` (crashed), not as a failed
    release.
  - the release guard's marker lives in the container's writable layer: an operator's "Restart" in Coolify's UI
    makes a new container that still has INKMCP_RELEASE and runs the release again (idempotent migrations are
    the norm); a failing release makes Docker restart the container, so Coolify reports it only when its health
    window (185 s for that process) ran out, which also bounds how long a release may take. Without a health
    check (backend, worker-only) the old container is already gone when the release runs: its service answers
    502 until the release finished, and a failed release is repaired by deploying the previous release again.
  - on_demand: the routed application has `is_consistent_container_name_enabled` (its proxy router needs a
    stable container name, routes.py), and with a fixed name Coolify does no rolling update at all
    (ApplicationDeploymentJob::rolling_update: "Consistent container name feature enabled, rolling update is not
    supported." → stop_running_container(force) then start_by_compose_file, no health_check()): the old
    container is stopped first and nothing gates the new one, so for an on_demand service a process that never
    listens or an env change that crashes it is not a failed deployment but a service that is down (runtime()
    shows it) until the next good release; a failing release is caught from the guard's report and the previous
    release deployed again, after a downtime. Routing by a name that does not disable the rolling update would
    close this.
  - an env change still running when `env_wait_timeout` ends is `pending`; if it fails later, Coolify keeps the
    new values (the provider no longer holds the old ones), which core stored too, so the next release meets the
    same values and fails its health check the same way, the old container still serving.
  - an env change whose `/deploy` Coolify skips (a deployment of the live commit still running, e.g. an earlier
    env change) is not re-queued; `runtime().env_revision` stays at the base revision until the next release.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from inkmcp.build import http_fetch
from inkmcp.build.plan import Mode
from inkmcp.build.python_install import installer_fix
from inkmcp.build.source import SourceWorkspace
from inkmcp.coolify import models as m
from inkmcp.coolify.client import (
    CoolifyAuthError,
    CoolifyBadRequest,
    CoolifyClient,
    CoolifyConflict,
    CoolifyError,
    CoolifyNotFound,
    CoolifyPermissionError,
    CoolifyRateLimited,
    CoolifyUnavailable,
)
from inkmcp.coolify.spec import SpecError
from inkmcp.providers.compute.base import (
    DnsRecord,
    EnvChange,
    EnvOutcome,
    LogScope,
    ProcessRuntime,
    ProgressCallback,
    ProviderRefused,
    ProviderUnavailable,
    Record,
    RefScope,
    ReleaseFailed,
    ReleaseRequest,
    ReleaseResult,
    ReleaseSpec,
    Resources,
    RuntimeState,
    ServiceKey,
    ServiceRuntime,
    Step,
)
from inkmcp.providers.compute.coolify import deploy_keys as coolify_deploy_keys  # --- ghkeys (issue 11)
from inkmcp.providers.compute.coolify import mapping, policy
from inkmcp.providers.compute.coolify import routes as node_routes
from inkmcp.providers.compute.coolify.mapping import DEPLOYMENT_ENV, AppSpec, MappingSettings, PlacedServer, Process

log = logging.getLogger("inkmcp.coolify.provider")

T = TypeVar("T")
CRASH_POINTS = ("after_create_project", "after_create_app", "after_deploy_call", "after_record_deployment",
                "after_remote_finished", "after_env_deploy_call")  # fmt: skip
"""Where a test can make the provider "die" (`CoolifyComputeProvider.crash_at`), as the fake's: right after a
remote call took effect, before its answer was recorded."""


MOVE_CRASH_POINTS = ("after_move_create_app", "after_move_deploy_call", "after_move_healthy", "after_move_switch")
"""Where a test can make a `move` die (kept apart from CRASH_POINTS, which the contract suite walks for releases)."""


class MoveConflict(ProviderRefused):
    """Raised by the `record` a drain passes to `move` when the service changed while its new copy was built (a
    deployment or env change started, the target filled up): the move undoes itself, the old copy keeps
    serving, and running the drain again moves the service as it is now."""


class _RefBatch:
    """The ref writes of one `release` attempt, coalesced (issue 12 item 4: a first web + worker deploy's 18
    fenced ref writes became 7 statements, the last one with the `switching` step). `record` keeps the ref of each
    scope (the dict itself: it is written as it stands when flushed); `flush` writes every kept one, in one fenced
    statement when core's `record` offers `many`. Flushed before every request that may change something in
    Coolify (the client's `before_write`, through `_BATCH`), and when the attempt ends other than by a crash, so
    each ref is durable before the remote step that depends on it and before core records the outcome. A read
    needs nothing recorded before it: what a crash loses of refs recorded since the last change is found again the
    way a lost answer is (by name, or after the write-ahead `intent` and `pending` marks, which are flushed before
    the request they announce)."""

    def __init__(self, record: Record, progress: ProgressCallback | None = None) -> None:
        self._record = record
        self._dirty: dict[RefScope, Any] = {}
        self._writing = asyncio.Lock()
        """Steps of several processes run side by side (`_together`): a flush waits for one in flight, so a
        request never goes out while a ref recorded before it is still being written by another step's flush."""
        self._progress = progress
        self._later: list[asyncio.Task[None]] = []
        """Progress steps being written beside what follows them (`later`), oldest first."""
        self._held: list[tuple[Step, str]] = []
        """--- overhead9: steps `later` keeps for the batch's next write (core's `record.many` with steps)."""
        self._keeping = False
        """--- overhead9: while True (`keep`), a flush before a Coolify write writes nothing."""

    @contextlib.contextmanager
    def keep(self) -> Iterator[None]:
        """--- overhead9 (issue 8): the refs recorded before and during this block are written with the batch's next
        flush after it, not before the Coolify writes inside it. Only for writes whose refs a crash may lose: a
        first deploy's configuration of the applications its own attempt created (their env PATCHes, absolute
        values). What such a crash loses (the applications' uuids, `env_written`, `set_fields`) the next attempt
        finds again from what is durable: the applications' write-ahead marks send it to look them up by name, it
        PATCHes their settings and env again (absolute), and no process has a live release whose env a rollback
        would need (`snapshot`). One fenced write less on every first deploy's way."""
        self._keeping = True
        try:
            yield
        finally:
            self._keeping = False

    async def __call__(self, scope: RefScope, ref: Any) -> None:
        self._dirty[RefScope(scope)] = ref

    def _folds(self) -> bool:
        """Whether core's `record` writes refs and steps in one statement (`record.many(refs, steps)`)."""
        return getattr(self._record, "many", None) is not None and getattr(self._record, "with_steps", False)

    async def ordered(self, step: Step, detail: str) -> None:
        """The release's progress callback: a step, recorded after every step still being written (`later`)."""
        if self._held:  # --- overhead9: the held steps and this one, one write
            async with self._writing:
                held, self._held = self._held, []
                await self._record.many({}, [*held, (step, detail)])  # type: ignore[attr-defined]
            return
        await self.settle()
        assert self._progress is not None
        await self._progress(step, detail)

    def defers(self, progress: ProgressCallback | None) -> bool:
        """Whether `progress` is this batch's `ordered` (a step of it may be written `later`)."""
        return self._progress is not None and progress == self.ordered

    def later(self, step: Step, detail: str) -> None:
        """--- overhead7 (issue 8): record `step` beside what follows instead of before it: the write starts now
        and the batch's next write (a flush, or the next step through `ordered`) waits for it, so steps and refs
        are recorded in the order they happened. For a step nothing remote depends on: the `building` step of a
        build already finished at the first look (one write less in turn on the release's way).
        --- overhead9: where core writes refs and steps in one statement, the step is not written on its own: it
        goes in the batch's next write (a flush before the next Coolify change, the release's last refs with its
        `switching` step, or the next step), as the first of its events. With a 0 s build (the benchmark's stand-in)
        this took one more fenced write onto the release's way, which a real build has written minutes before."""
        assert self._progress is not None
        if self._folds():
            self._held.append((step, detail))
            return
        self._later.append(asyncio.ensure_future(self._progress(step, detail)))

    async def settle(self) -> None:
        """Wait for the steps being written `later` (their errors, e.g. LeaseLost, are raised here), and write the
        held ones (overhead9) if no other write takes them."""
        while self._later:
            await self._later[0]
            self._later.pop(0)
        if self._held:
            async with self._writing:
                held, self._held = self._held, []
                if held:
                    await self._record.many({}, held)  # type: ignore[attr-defined]

    def abandon(self) -> None:
        """The release ends without settling (a death, a cancellation): stop the steps still being written."""
        for task in self._later:
            task.cancel()
        self._later.clear()
        self._held.clear()

    async def flush(self, force: bool = False) -> None:
        """`force`: write inside `keep` too (--- overhead8: a first deploy's deployment marks, written beside its env
        PATCHes). A flush inside `keep` that is not forced writes nothing and waits for no write in flight (the
        Coolify writes inside `keep` depend on nothing recorded since it began)."""
        if self._keeping and not force:
            return
        while self._later:  # (settle's first half: the held steps go with the refs below)
            await self._later[0]
            self._later.pop(0)
        async with self._writing:
            if (self._keeping and not force) or (not self._dirty and not self._held):
                return
            dirty, self._dirty = self._dirty, {}
            held, self._held = self._held, []
            many = getattr(self._record, "many", None)
            if many is not None:
                await (many(dirty, held) if held else many(dirty))
                return
            for scope, ref in dirty.items():
                await self._record(scope, ref)

    @property
    def claim_project(self) -> Callable[[Any], Awaitable[tuple[bool, dict[str, Any]]]] | None:
        """Core's `record.claim_project` (a fenced compare-and-set of the project's ref, in a pipeline), or None."""
        claim = getattr(self._record, "claim_project", None)
        if claim is None:
            return None

        async def claimed(ref: Any) -> tuple[bool, dict[str, Any]]:
            async with self._writing:
                self._dirty.pop(RefScope.project, None)  # the claim writes the project's ref as it is now
                return await claim(ref)  # type: ignore[no-any-return]

        return claimed

    async def flush_with_step(self, progress: ProgressCallback, step: Step, detail: str) -> None:
        """The kept refs and a progress step: one statement where core's `record` records steps with refs
        (`record.many(refs, step)` in a pipeline); else the step, then the refs."""
        many = getattr(self._record, "many", None)
        if many is None or not getattr(self._record, "with_steps", False):
            await self.settle()
            await progress(step, detail)
            await self.flush()
            return
        while self._later:
            await self._later[0]
            self._later.pop(0)
        async with self._writing:
            dirty, self._dirty = self._dirty, {}
            held, self._held = self._held, []
            await many(dirty, [*held, (step, detail)])  # --- overhead9: with a held `building` step, if any


async def _together(*calls: Awaitable[Any]) -> list[Any]:
    """Independent steps of a release's processes (configuring their applications, reading their deployments),
    run at once: the wait is one process's requests instead of every process's in turn. The first failure
    (a crash included) cancels the others and is raised as itself, as the steps in turn would have raised it; a
    cancelled request is one whose outcome is unknown, which every such step already survives (absolute values,
    or a read)."""
    if len(calls) == 1:
        return [await calls[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]  # type: ignore[arg-type]
    except BaseExceptionGroup as failed:
        first: BaseException = failed
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


async def _settled(*calls: Awaitable[Any]) -> list[Any]:
    """Requests that make something in Coolify (applications, deployments), sent side by side after their
    write-ahead marks were made durable together (one write for all). Unlike `_together`, a failure does not
    cancel the others: each runs until Coolify answered it (or its own error), so no request is left with an
    unknown outcome because of another one's failure (its mark would make the next attempt wait `late_window`
    before sending it again). Then the first failure, in call order, is raised as itself; a death (a
    BaseException that is no Exception, e.g. a test's injected crash) before any ordinary error, so nothing
    records what came after it."""
    if len(calls) == 1:
        return [await calls[0]]
    results = await asyncio.gather(*calls, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise next((f for f in failures if not isinstance(f, Exception)), failures[0])
    return results


_BATCH: contextvars.ContextVar[_RefBatch | None] = contextvars.ContextVar("inkmcp_coolify_ref_batch", default=None)


async def _flush_batch(force: bool = False) -> None:
    """The client's `before_write`: flush the refs of the release this task runs, if any (`force`: also inside
    `_RefBatch.keep`)."""
    batch = _BATCH.get()
    if batch is not None:
        await batch.flush(force=force)


_PROBE_SERVER = PlacedServer(uuid="probe", wildcard_base="probe.invalid")
"""Where a release's input is checked before placement answered: nothing in it but custom domains depends on it."""


class Crash(BaseException):
    """An injected death of the InkMCP process (tests only). A BaseException, so nothing records a failure."""


class Place(Protocol):
    """Placement (issue 8 item 6, inkmcp/placement/adapter.py `CoolifyPlacement`): the run server for a new
    service. `resources` are one application's limits, `processes` how many applications the service has. An
    implementation with an async `release(key)` gets it called when the service is removed."""

    def __call__(self, key: ServiceKey, mode: Mode, resources: Resources, *,
                 processes: int = 1) -> Awaitable[PlacedServer]: ...


def wildcard_base(wildcard_domain: str | None) -> str | None:
    """The host part of a server's wildcard domain setting (`https://s1.apps.example.com` → `s1.apps.example.com`)."""
    if not wildcard_domain:
        return None
    raw = wildcard_domain.strip()
    host = urlsplit(raw if "://" in raw else f"https://{raw}").hostname
    return host.lstrip("*.") if host else None


def first_usable_server(client: CoolifyClient, *, exclude: frozenset[str] = frozenset()) -> Place:
    """The trivial default placement: the first usable, non-build server with a wildcard domain."""

    async def place(key: ServiceKey, mode: Mode, resources: Resources, *, processes: int = 1) -> PlacedServer:
        servers = await client.list_servers()
        for server in servers:
            base = wildcard_base(server.settings.wildcard_domain)
            if server.usable and not server.settings.is_build_server and base and server.uuid not in exclude:
                return PlacedServer(uuid=server.uuid, wildcard_base=base)
        raise ProviderRefused("no Coolify server can take the service: none is usable, a run server (not a build "
                              "server) and has a wildcard domain; validate a run server and set its Wildcard "
                              "Domain in Coolify (Servers → <server> → General)")

    return place


def _error(e: Exception, what: str) -> Exception:
    """A Coolify-side failure as the contract's error (module docstring, "Errors")."""
    if isinstance(e, CoolifyRateLimited):
        why = "the server's deployment queue is full" if e.queue_full else "rate limited"
        return ProviderUnavailable(f"{what}: Coolify is busy ({why}); retrying later", retry_after=e.retry_after)
    if isinstance(e, CoolifyError) and e.retryable:
        return ProviderUnavailable(f"{what}: {e}")
    if isinstance(e, CoolifyAuthError | CoolifyPermissionError):
        return ProviderRefused(f"{what}: {e.message} — an operator must fix the Coolify token (abilities read, "
                               "read:sensitive, write, deploy) or enable the API")
    if isinstance(e, policy.PolicyViolation):
        return ProviderRefused(f"{what}: {e}")
    if isinstance(e, SpecError):
        return ProviderRefused(f"{what}: InkMCP built a request outside Coolify's contract ({e}); report this")
    if isinstance(e, mapping.TenantInputError):
        return ReleaseFailed(Step.building, str(e))
    if isinstance(e, CoolifyError):
        return ProviderRefused(f"{what}: {e}")
    return e


_STATE = (
    ("running", RuntimeState.running), ("starting", RuntimeState.starting), ("restarting", RuntimeState.crashed),
    ("degraded", RuntimeState.crashed), ("exited", RuntimeState.stopped), ("paused", RuntimeState.stopped),
)  # fmt: skip
_ORDER = [RuntimeState.crashed, RuntimeState.stopped, RuntimeState.unknown, RuntimeState.starting,
          RuntimeState.sleeping, RuntimeState.running]  # fmt: skip


class CoolifyComputeProvider:
    """Core's compute provider over Coolify; keeps no state of its own (module docstring)."""

    name = "coolify"
    needs_checkout = False  # Coolify fetches `repo_url` at the pinned commit itself (on the build server)
    rebuilds_same_commit = False  # Coolify reuses the image of a commit it built (newuser6)

    crash_error: type[BaseException] = Crash
    """What an injected crash raises (tests set the contract suite's own)."""

    def __init__(self, client: CoolifyClient, work_dir: Path, *, settings: MappingSettings | None = None,
                 place: Place | None = None, project_prefix: str = "inkmcp-",
                 build_server_uuid: str | None = None, poll_interval: float = 2.0, poll_max_interval: float = 10.0,
                 wait_timeout: float = 1800.0, limits: policy.Limits | None = None,
                 local_repo_url: Callable[[str], str] | None = None,
                 queue_full_retry_after: float | None = None, env_wait_timeout: float = 150.0,
                 late_window: float | None = None) -> None:  # fmt: skip
        self.client = client
        client.before_write = _flush_batch  # refs recorded during a release are durable before each remote change
        self.late_window = late_window if late_window is not None else \
            2 * float(getattr(client, "attempt_timeout", 50.0))
        """How long after a create or deploy request whose answer never came (timeout, lost connection, 502/504,
        or a crash while it was in flight) Coolify may still carry it out (a PHP worker that took the request keeps
        going after the client and the proxy gave up): before sending it again, a retry that does not find what
        it may have made waits until then and looks once more (`_create`)."""
        self.env_wait_timeout = env_wait_timeout
        self.release_timeout = mapping.RELEASE_TIMEOUT
        """How long a release command may run where no health check gates its container (`_watch_release`)."""
        """How long `update_env` waits for the restart deployments' outcome before answering `pending` (the
        mapping's health window, 65 s, plus Coolify's queue and container start)."""
        self.work_dir = Path(work_dir)
        self.settings = settings or MappingSettings()
        exclude = frozenset({build_server_uuid}) if build_server_uuid else frozenset()
        self.place: Place = place or first_usable_server(client, exclude=exclude)
        self.project_prefix = project_prefix
        self.poll_interval = poll_interval
        self.poll_max_interval = max(poll_max_interval, poll_interval)
        self.wait_timeout = wait_timeout
        self.limits = limits or policy.Limits(require_build_server=self.settings.use_build_server)
        self.crash_at: set[str] = set()
        self.local_repo_url = local_repo_url
        self.queue_full_retry_after = queue_full_retry_after
        """When to try a deploy again after Coolify's "deployment queue is full"; None = Coolify's Retry-After
        (a constant 60 s in DeployController.php, not an estimate of when the queue drains)."""
        """Development/tests only: the https URL Coolify is given for a repo core fetched from a local path (the
        stand-in does not fetch). None in production: a local path is refused, Coolify could not fetch it."""

    @classmethod
    def from_settings(cls, settings: Any, work_dir: Path, *, place: Place | None = None,
                      budget: Any = None) -> CoolifyComputeProvider:  # fmt: skip
        """The provider `inkmcp serve` builds from `CoolifySettings` (the client's transport enforces the policy
        on the wire too)."""
        limits = policy.Limits(max_memory_mb=settings.max_memory_mb, max_cpus=settings.max_cpus,
                               require_build_server=settings.use_build_server)  # fmt: skip
        client = CoolifyClient(settings.url, settings.token, transport=policy.PolicyTransport(limits=limits),
                               url_setting="INKMCP_COOLIFY_URL", token_setting="INKMCP_COOLIFY_TOKEN",  # noqa: S106
                               budget=budget)  # fmt: skip
        mapped = MappingSettings(
            environment=settings.environment, default_branch=settings.default_branch,
            use_build_server=settings.use_build_server, static_memory_mb=settings.static_memory_mb,
            static_cpus=settings.static_cpus, sablier_session=settings.sablier_session,
        )
        repo_hook: Callable[[str], str] | None = None
        if getattr(settings, "dev_local_repos", False):  # CoolifySettings refuses it unless Coolify is on loopback
            from inkmcp.coolify.standin.runner import local_repo_url
            from inkmcp.providers.compute.coolify.settings import is_loopback_url

            if not is_loopback_url(settings.url):
                raise ValueError("INKMCP_COOLIFY_DEV_LOCAL_REPOS needs a loopback INKMCP_COOLIFY_URL")
            repo_hook = local_repo_url
        return cls(client, work_dir, settings=mapped, place=place, project_prefix=settings.project_prefix,
                   build_server_uuid=settings.build_server_uuid, poll_interval=settings.poll_interval,
                   poll_max_interval=settings.poll_max_interval, wait_timeout=settings.wait_timeout, limits=limits,
                   local_repo_url=repo_hook)

    early_marks = True
    """--- overhead8: a first deploy's deployment marks written beside its env PATCHes (`_release`); False: after
    them, as before (benchmarks/coolify_deploy.py --ab-overhead8)."""

    async def start(self) -> None:
        """Nothing to start (Coolify runs the services) but the first fetches' TLS context, made off the deploy path."""
        from inkmcp.build.source import CA_BUNDLE

        await http_fetch.prepare(CA_BUNDLE)  # --- overhead10

    async def close(self) -> None:
        await self.client.aclose()
        await http_fetch.close_clients()  # --- overhead10: the first fetches' kept-alive connections to git hosts

    # -- plumbing ------------------------------------------------------------------------------------------

    def _crash(self, point: str) -> None:
        if point in self.crash_at:
            self.crash_at.discard(point)
            raise self.crash_error(point)

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except CoolifyRateLimited as e:
            if e.queue_full and self.queue_full_retry_after is not None:
                e.retry_after = self.queue_full_retry_after
            raise _error(e, what) from None
        except (CoolifyError, SpecError, policy.PolicyViolation, mapping.TenantInputError) as e:
            raise _error(e, what) from None

    def _check(self, method: str, path: str, body: Any = None, query: Mapping[str, str] | None = None) -> None:
        try:
            policy.check_request(method, path, body, query, limits=self.limits)
        except policy.PolicyViolation as e:
            raise ProviderRefused(str(e)) from None

    async def source_workspace(self, project_id: str) -> SourceWorkspace:
        """Core still reads the repo itself (plan, commit pinning), here with InkMCP's rights: nothing of it runs
        on this machine, and Coolify fetches the source again on the build server."""
        mirrors = self.work_dir / "mirrors" / project_id
        locks = self.work_dir / "locks" / project_id
        for d in (mirrors, locks):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return SourceWorkspace(mirrors_dir=mirrors, locks_dir=locks, run_as=None)

    # -- release -------------------------------------------------------------------------------------------

    async def release(self, request: ReleaseRequest, progress: ProgressCallback, record: Record) -> ReleaseResult:
        batch = _RefBatch(record, progress)
        token = _BATCH.set(batch)
        try:
            result = await self._release(request, batch.ordered, batch)
            await batch.flush()  # before core records the release live
        except Exception:
            await batch.flush()  # what this attempt made stays known to the next one (and to later releases)
            raise
        finally:
            batch.abandon()  # nothing left after a flush; a death or a cancellation stops what is
            _BATCH.reset(token)
        return result

    async def _release(self, request: ReleaseRequest, progress: ProgressCallback, record: Record) -> ReleaseResult:
        key = request.key
        service_ref = copy.deepcopy(key.service_ref)
        dep_ref = copy.deepcopy(request.deployment_ref)
        if service_ref.get("live") == request.deployment_id:
            return self._result(service_ref)
        processes = mapping.processes(request.service_type, request.plan)
        if not processes:
            raise ReleaseFailed(Step.building, "the build plan has no process to run (add a Procfile `web:` line or "
                                               "pass start_command)")
        # --- ghkeys (issue 11): a private GitHub repo is cloned by Coolify with the service's deploy key
        request = await coolify_deploy_keys.keyed(self, request)
        # --- end

        def placing() -> Awaitable[PlacedServer]:
            return self._ensure_server(key, request, service_ref, record, len(processes))

        project: tuple[str, str] | None = None
        premarked: dict[str, Any] = {}  # --- overhead8: the applications marked beside the project's read
        if key.project_ref.get("project_uuid") and key.project_ref.get("environment_uuid"):
            server, project = await placing(), self._project_of(key)
        elif not request.domains:
            # the Coolify project (list, create, read) beside placement (its database transaction). Tenant input
            # that cannot be sent fails before anything remote changes: checked first with a stand-in server (only
            # custom domains depend on the real one's wildcard base; with domains the project waits). Settled, not
            # cancelled by a failure beside it: a cancelled create would cost the next attempt a late_window
            self._inputs(request, processes, _PROBE_SERVER)

            placement = asyncio.ensure_future(placing())

            async def mark_apps() -> None:  # --- overhead8: beside the read of the new project (below), once the
                # service's placement is recorded (it goes in the same write: the creates need no write before them)
                try:
                    await asyncio.shield(placement)
                except Exception:
                    return  # raised by _settled below
                await self._premark_apps([p.name for p in processes], service_ref, record, premarked)

            try:
                server, project = await _settled(placement, self._ensure_project(
                    key, record, beside=mark_apps if self.early_marks and isinstance(record, _RefBatch) else None))
            except Exception:  # no create was sent: the applications' marks go again (recorded on the way out)
                self._unmark_apps(premarked, service_ref)
                await record(RefScope.service, service_ref)
                raise
        else:
            server = await placing()
        specs, bodies, env_bodies, hosts = self._inputs(request, processes, server)
        project_uuid, environment_uuid = project or await self._ensure_project(key, record)

        fresh: set[str] = set()  # applications this attempt created: no env and no deployment in them yet
        created_with: dict[str, dict[str, Any]] = {}  # the body each create sent
        # --- overhead8: the applications' marks and the service's placement are durable (written beside the project's
        # read): what is recorded from here on goes with the deployments' marks (`_RefBatch.keep`, as below)
        keep_creates = premarked.get("server") is True and isinstance(record, _RefBatch)
        with record.keep() if keep_creates else contextlib.nullcontext():  # type: ignore[union-attr]
            apps = await self._ensure_apps(key, project_uuid, environment_uuid, specs, service_ref, record, fresh,
                                           created_with, premarked=set(premarked.get("names") or ()))
        started: dict[str, str] = dep_ref.setdefault("deployments", {})
        snapshot: dict[str, dict[str, str]] = {}
        current: dict[str, list[m.EnvVar]] = {}
        if not dep_ref.get("env_written"):  # the env the live release runs with (for a rollback): memory only
            for name in specs:
                current[name] = [] if name in fresh else \
                    await self._call(f"reading env of {name}", self.client.list_envs(apps[name]))
                snapshot[name] = _values(current[name], without_release=True)
            dep_ref["env_written"] = True  # from here on Coolify may hold the new env: a later attempt has no snapshot
            await record(RefScope.deployment, dep_ref)
        # the optional fields every process's PATCH sets, recorded at once before the first (what `_patch` records
        # before each: a repeat after a crash still knows what to clear; one write instead of one per process)
        fields: dict[str, list[str]] = service_ref.setdefault("set_fields", {})
        announced = False
        for name in specs:
            earlier = set(fields.get(name, []))
            now = {k for k, v in bodies[name].items() if v and k in mapping.CLEARABLE}
            if now - earlier:
                fields[name] = sorted(now | earlier)
                announced = True
        if announced:
            await record(RefScope.service, service_ref)
        async def configure(name: str, s: AppSpec) -> None:  # absolute values, safe to repeat on every attempt
            app = apps[name]

            async def settings() -> None:
                made_with = created_with.get(name) if name in fresh else None
                if made_with is None or not mapping.covers(made_with, bodies[name]):
                    await self._patch(app, name, bodies[name], service_ref, record, f"configuring {name}")
                # else created by this attempt with every field of the PATCH (mapping.release_create_body)
                labels = mapping.labels_plain(s)
                if labels is not None:  # after the domains PATCH, which regenerates labels (mapping docstring)
                    self._check("PATCH", f"/applications/{app}", mapping.labels_body(s))
                    await self._call(f"labelling {name}", self.client.update_application(
                        app, m.ApplicationUpdate(custom_labels=labels)))

            # the application's settings and its env are separate resources in Coolify: both absolute, so they go
            # out side by side (each after what is recorded before it: the batch is flushed before every write)
            await _together(settings(), self._set_env(app, name, env_bodies[name], current.pop(name, None)))

        # the processes' applications are configured side by side (each one's requests stay in order): a web +
        # worker release waits for two rounds of requests here instead of four
        made_here = isinstance(record, _RefBatch) and set(specs) <= fresh and not service_ref.get("live_deployments")
        groups = _deploy_groups(processes)
        # --- overhead8 (issue 8): a first deploy's first group of deployments is marked beside its configuration
        # (the marks' write goes out with the env PATCHes instead of after them); the /deploys still go out after
        # both, so each mark is durable before its request. What went beside the marks failing takes them back
        # (no /deploy was sent); a death in between leaves them, and the next attempt looks for deployments it
        # may have made (none) and waits out `late_window`, as after a death during the /deploys.
        premarked: dict[str, str] | None = None
        early = {name: apps[name] for name in groups[0] if name not in started} if made_here else {}
        with record.keep() if made_here else contextlib.nullcontext():  # type: ignore[union-attr]
            # --- overhead9: a first deploy's applications, created by this attempt: what was recorded since their
            # creates goes with the deployments' write-ahead marks (`_RefBatch.keep`)
            if early and set(early) <= fresh and self.early_marks:
                anchored = {name for name in early if name not in (dep_ref.get("intent") or {})}
                try:
                    _, premarked = await _settled(
                        _together(*(configure(name, s) for name, s in specs.items())),
                        self._mark_deployments(early, request.commit, dep_ref, record, fresh=fresh, into=started,
                                               force=True))  # fmt: skip
                except Exception:
                    self._unmark_deployments(early, dep_ref, anchored)
                    await record(RefScope.deployment, dep_ref)
                    raise
            else:
                await _together(*(configure(name, s) for name, s in specs.items()))

        final: dict[str, m.Deployment] = {}
        carrier = next((p.name for p in processes if p.release), None)
        release_problem: list[str] | None = None
        for number, group in enumerate(groups):
            if number:
                await progress(Step.starting, f"the release command finished in {groups[0][0]}; deploying "
                                              f"{', '.join(group)}")
            todo = {name: apps[name] for name in group if name not in started}
            if todo:  # the group's deployments start side by side (one write-ahead write, one round of /deploys)
                try:
                    if number == 0 and premarked is not None:  # --- overhead8: marked beside the configuration
                        if premarked:
                            await self._send_deployments(premarked, request.commit, dep_ref, record, into=started)
                    else:
                        await self._start_deployments(todo, request.commit, dep_ref, record, fresh=fresh,
                                                      into=started)
                finally:  # a deployment started before another process's /deploy failed is recorded too
                    await record(RefScope.deployment, dep_ref)
                self._crash("after_record_deployment")
            # the group's deployments, recorded beside the first read of them (durable then, as when each /deploy
            # flushed the one before it: what the reconciler and a takeover find recorded)
            _, done = await _together(_flush_batch(), self._wait({n: started[n] for n in group}, progress))
            final.update(done)
            if any(final[n].status != "finished" for n in group):
                break  # a later group never starts: the rollback below handles every process
            if carrier in group and not dep_ref.get("released") and _ungated(bodies[carrier]):
                # no health check held the deployment until the release was done (a backend or worker, or an
                # application Coolify gives no rolling update): the guard's report in the container's log tells
                await progress(Step.releasing, f"the release command runs first in the new container of {carrier}")
                release_problem = await self._watch_release(apps[carrier], carrier)
                if release_problem is not None:
                    break
                dep_ref["released"] = True
                await record(RefScope.deployment, dep_ref)
        self._crash("after_remote_finished")
        if release_problem is not None and carrier is not None:
            note = await self._roll_back(apps, final, service_ref, dep_ref, snapshot, record, list(specs))
            tail = "\n".join(release_problem)
            raise ReleaseFailed(Step.releasing, f"process '{carrier}': the release command failed in its new "
                                                f"container; the previous version (if any) was deployed again{note}"
                                                f"\nlast output:\n{tail}")
        failed = {name: dep for name, dep in final.items() if dep.status != "finished"}
        if failed:
            note = await self._roll_back(apps, final, service_ref, dep_ref, snapshot, record, list(specs))
            name, dep = next(iter(failed.items()))
            entries = dep.log_lines()
            tail = _tail(entries)
            step = _failed_step([e.output for e in entries if e.type == "stderr"])
            # --- newuser5: a first deploy said "the previous version keeps serving" (there was none; the local
            # provider says "nothing went live"), and "failed (failed)"
            kept = "the previous version keeps serving" if service_ref.get("live") else "nothing went live"
            status = f" ({dep.status})" if dep.status != "failed" else ""
            said = [e.output for e in entries]
            raise ReleaseFailed(step, f"process '{name}' failed{status}; {kept}{note}"
                                      f"{_hint(step, bodies.get(name), said)}{_dependency_hint(step, said)}"
                                      f"\nlast output:\n{tail}")  # fmt: skip
            # --- end

        await node_routes.after_release(self, request, server, apps, specs)  # before the release is recorded live
        routed = next((p for p in processes if p.routed), None)
        url = f"https://{mapping.hostname(key, server)}" if routed is not None else None
        gone = {n: u for n, u in apps.items() if n not in specs}
        first = {n: apps[n] for n in specs if n not in (service_ref.get("live_deployments") or {})
                 and _ungated(bodies[n])}  # fmt: skip
        service_ref.update(
            live=request.deployment_id, live_commit=request.commit, url=url, env_revision=request.env_revision,
            live_deployments={n: started[n] for n in specs}, apps={n: u for n, u in apps.items() if n in specs},
            dns_records=[r.model_dump() for r in _records(key, server, hosts, routed is not None)],
            routed=routed.name if routed is not None else None, port=mapping.port_of(request.plan),
            live_config={n: {k: v for k, v in bodies[n].items() if k != "git_repository"} for n in specs},
            live_labels={n: mapping.labels_plain(s) for n, s in specs.items() if mapping.labels_plain(s)},
        )  # fmt: skip
        service_ref.pop("env_change", None)
        await record(RefScope.service, service_ref)
        switching = "every process's Coolify deployment finished; Coolify switched traffic"
        # the release's last refs and its switching step (one write), beside the wait for Coolify's status refresh
        # of first containers (a read: it needs nothing recorded before it)
        if isinstance(record, _RefBatch):
            await _together(record.flush_with_step(progress, Step.switching, switching), self._until_reported(first))
        else:
            await _together(progress(Step.switching, switching), self._until_reported(first))
        for name, uuid in gone.items():  # a process the new release no longer has (e.g. worker removed)
            await self._delete_app(uuid, f"deleting the application of process {name}")
        return self._result(service_ref)

    async def _until_reported(self, apps: Mapping[str, str], bound: float = 15.0) -> None:
        """Coolify marks a deployment finished *before* GetContainersStatus refreshed the application's status
        (ApplicationDeploymentJob::post_deployment: completeDeployment, then GetContainersStatus::dispatch), so an
        application's first container without a health check (health_check() writes `running` for checked ones)
        may still read `exited` when the release returns: wait, up to `bound` s, for the refresh, so `runtime()`
        right after a release tells what runs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        waiting = dict(apps)
        interval = self.poll_interval
        while waiting:
            for name, uuid in list(waiting.items()):
                try:
                    app = await self.client.get_application(uuid)
                except CoolifyError:
                    waiting.pop(name)  # runtime() reports what it finds; nothing to wait for here
                    continue
                if not (app.status or "").startswith("exited"):
                    waiting.pop(name)
            if not waiting or loop.time() > deadline:
                return
            await asyncio.sleep(interval)
            interval = min(self.poll_max_interval, interval * 1.5)

    @staticmethod
    def _result(service_ref: Mapping[str, Any]) -> ReleaseResult:
        return ReleaseResult(url=service_ref.get("url"),
                             dns_records=[DnsRecord(**r) for r in service_ref.get("dns_records") or []])

    def _repo_url(self, url: str) -> str:
        """The URL Coolify fetches from: the agent's https URL (credentials included: Coolify stores it)."""
        parts = urlsplit(url)
        if parts.scheme == "https" and parts.hostname:
            return url
        if coolify_deploy_keys.known_ssh_url(url):  # --- ghkeys (issue 11): a deploy key's git@HOST:OWNER/REPO.git
            return url
        if self.local_repo_url is not None and (parts.scheme in ("", "file")):
            return self.local_repo_url(url)
        raise mapping.TenantInputError(
            "repo_url: Coolify builds on the build server and fetches the repository itself, over https; "
            f"a {parts.scheme or 'local'} URL cannot be fetched there. Pass the https:// clone URL of the repository")

    def _inputs(self, request: ReleaseRequest, processes: list[Process], server: PlacedServer) -> tuple[
            dict[str, AppSpec], dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[str]]:
        """Each process's application spec, settings body and env body, and the custom domains' hosts; tenant
        input that cannot be sent raises ReleaseFailed (building, not retryable)."""
        try:
            specs = {p.name: self._app_spec(request, p, server) for p in processes}
            bodies = {name: mapping.update_body(s, self.settings) for name, s in specs.items()}
            env_bodies = {name: self._env(request.env, request.deployment_id, s) for name, s in specs.items()}
            hosts = mapping.custom_domains(request.domains, server, self.settings)
        except mapping.TenantInputError as e:
            raise ReleaseFailed(Step.building, str(e)) from None
        return specs, bodies, env_bodies, hosts

    def _app_spec(self, request: ReleaseRequest, process: Process, server: PlacedServer) -> AppSpec:
        return AppSpec(key=request.key, process=process, service_type=request.service_type, mode=request.mode,
                       plan=request.plan, commit=request.commit, resources=request.resources, server=server,
                       repo_url=self._repo_url(request.repo_url.get_secret_value()),
                       domains=tuple(request.domains))  # fmt: skip

    def _env(self, env: Mapping[str, SecretStr], deployment_id: str, spec: AppSpec) -> dict[str, Any]:
        values = {k: v.get_secret_value() for k, v in env.items()}
        internal = {DEPLOYMENT_ENV: deployment_id}
        if "PORT" not in values and spec.process.routed:
            internal["PORT"] = str(mapping.port_of(spec.plan))
        if spec.process.release:  # this release's container runs the release command (mapping docstring)
            internal[mapping.RELEASE_ENV] = deployment_id
        return mapping.env_body(values, internal=internal)

    async def _ensure_server(self, key: ServiceKey, request: ReleaseSpec, service_ref: dict[str, Any],
                             record: Record, processes: int) -> PlacedServer:  # fmt: skip
        """The service's server: the recorded one (a service never moves by redeploying), else placement's."""
        if service_ref.get("server_uuid") and service_ref.get("wildcard_base"):
            return PlacedServer(uuid=str(service_ref["server_uuid"]), wildcard_base=str(service_ref["wildcard_base"]))
        try:
            placed = await self.place(key, request.mode, request.resources, processes=processes)
        except CoolifyError as e:
            raise _error(e, "placing the service") from None
        service_ref.update(server_uuid=placed.uuid, wildcard_base=placed.wildcard_base)
        await record(RefScope.service, service_ref)
        return placed

    async def _find_project(self, key: ServiceKey) -> tuple[str | None]:
        """The uuid of the Coolify project named for `key`'s project, if one exists (in a tuple: "looked")."""
        name = f"{self.project_prefix}{key.project_id}"
        projects = await self._call("listing projects", self.client.list_projects())
        return (next((p.uuid for p in projects if p.name == name), None),)

    @staticmethod
    def _project_of(key: ServiceKey) -> tuple[str, str]:
        return str(key.project_ref["project_uuid"]), str(key.project_ref["environment_uuid"])

    async def _ensure_project(self, key: ServiceKey, record: Record,
                              beside: Callable[[], Awaitable[None]] | None = None) -> tuple[str, str]:
        """The project's Coolify project and environment uuids, made if missing. `beside`: run beside the read of
        a project this call found or made (--- overhead8: a first release's applications' marks), not otherwise."""
        project_ref = dict(key.project_ref)
        if project_ref.get("project_uuid") and project_ref.get("environment_uuid"):
            return self._project_of(key)
        uuid = project_ref.get("project_uuid")
        pending: dict[str, float] = project_ref.setdefault("pending", {})

        async def save() -> None:
            await record(RefScope.project, project_ref)

        async def find() -> str | None:
            return (await self._find_project(key))[0]

        body = m.ProjectCreate(name=f"{self.project_prefix}{key.project_id}",
                               description=f"InkMCP project {key.project_name}")
        marked = False
        claim = getattr(record, "claim_project", None)
        if not uuid and not pending and not project_ref.get("create_answered_error") and claim is not None:
            # --- overhead6: no create of this project was ever sent (every create is preceded by its durable mark,
            # and a create answered with an error leaves `create_answered_error`): claim the create with its mark
            # (a compare-and-set of the stored ref, core's _CLAIM_PROJECT_SQL) instead of listing Coolify's
            # projects first. Another pipeline of the project (another service, maybe on another replica) that
            # claimed first is waited for here, not raced at Coolify.
            self._check("POST", "/projects", body.body())
            pending["project"] = time.time()
            won, current = await claim(project_ref)
            if won:
                marked = True
            else:
                project_ref, uuid, marked = await self._after_lost_claim(key, claim, current, body)
                pending = project_ref.setdefault("pending", {})
                if project_ref.get("project_uuid") and project_ref.get("environment_uuid"):
                    return str(project_ref["project_uuid"]), str(project_ref["environment_uuid"])
            # --- end overhead6
        elif not uuid and "project" in pending:  # an earlier attempt's create may still be carried out by Coolify
            uuid = await find()
            if not uuid and await self._late("project", pending, "creating the project"):
                uuid = await find()  # the earlier create, carried out late
        elif not uuid:
            # find by name first (a create whose answer was lost must not make a second project), with the create's
            # write-ahead mark made durable beside that read instead of after it: when the project is found the
            # mark goes again in the next write, and one left by a crash in between costs a late_window wait
            self._check("POST", "/projects", body.body())
            pending["project"] = time.time()
            await save()
            try:
                uuid, _ = await _settled(find(), _flush_batch())  # settled: a flush is never cancelled mid-write
            except Exception:  # nothing was created: no mark for the next attempt to wait on (flushed on the way out)
                pending.pop("project", None)
                if not pending:
                    project_ref.pop("pending", None)
                await save()
                raise
            marked = True
        if not uuid:
            self._check("POST", "/projects", body.body())
            uuid = await self._create("creating the project", self.client.create_project(body), pending, "project",
                                      save, project_ref, marked=marked)  # overhead6: an error answer is recorded
            self._crash("after_create_project")
        pending.pop("project", None)
        if not pending:
            project_ref.pop("pending", None)
        project_ref.pop("create_answered_error", None)  # overhead6: the project is recorded now
        project_ref["project_uuid"] = uuid
        await record(RefScope.project, project_ref)
        reading = self._call("reading the project", self.client.get_project(str(uuid)))
        project = (await _settled(reading, beside()))[0] if beside is not None else await reading
        env = next((e for e in project.environments if e.name == self.settings.environment), None)
        if env is None or not env.uuid:
            env_uuid = await self._call("creating the environment", self._create_environment(str(uuid)))
        else:
            env_uuid = env.uuid
        project_ref["environment_uuid"] = env_uuid
        await record(RefScope.project, project_ref)
        return str(uuid), str(env_uuid)

    async def _after_lost_claim(self, key: ServiceKey, claim: Callable[[Any], Awaitable[tuple[bool, dict[str, Any]]]],
                                current: dict[str, Any], body: m.ProjectCreate,
                                ) -> tuple[dict[str, Any], str | None, bool]:  # fmt: skip
        """--- overhead6: another attempt holds the project's create (`current`: the stored ref). Until its mark is
        `late_window` old, wait for it to record the project (or to give the create up, then claim it again);
        after that, or after a create answered with an error, look by name as before (its create may have been
        carried out). Returns (the project's ref to go on with, the project uuid if known, whether this attempt's
        own mark is durable)."""
        interval = 0.02
        while True:
            if current.get("project_uuid"):
                return dict(current), str(current["project_uuid"]), False
            sent = (current.get("pending") or {}).get("project")
            if sent is None or current.get("create_answered_error"):
                break
            if time.time() > float(sent) + self.late_window:
                break  # that attempt died with its create unanswered: look by name (below)
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, 0.5)
            mine = {k: v for k, v in current.items() if k != "pending"}
            mine["pending"] = {"project": time.time()}
            won, current = await claim(mine)
            if won:
                return mine, None, True
        # by name, as when no claim is offered; this attempt's own mark is made durable before any create (`_create`)
        ref = {k: v for k, v in current.items() if k != "pending"}
        found = next((p.uuid for p in await self._call("listing projects", self.client.list_projects())
                      if p.name == body.name), None)
        return ref, found, False

    async def _premark_apps(self, names: list[str], service_ref: dict[str, Any], record: Record,
                            premarked: dict[str, Any]) -> None:
        """--- overhead8 (issue 8): a first release's applications' write-ahead marks, made durable beside the read of
        its new Coolify project instead of after it (one write fewer in turn before the creates), when nothing of
        an earlier attempt's creates is recorded (no application, no mark, no create answered with an error: then
        `_ensure_apps` looks first, as before). `premarked` gets the names, and `server: True` when the service's
        placement was recorded before that write (it went with it, so the creates need no write before them)."""
        pending = service_ref.get("pending") or {}
        if service_ref.get("apps") or service_ref.get("create_answered_error") \
                or any(k.startswith("app:") for k in pending):
            return
        marks = service_ref.setdefault("pending", {})
        now = time.time()
        for name in names:
            marks[f"app:{name}"] = now
        premarked["names"] = list(names)
        placed = bool(service_ref.get("server_uuid"))
        await record(RefScope.service, service_ref)
        await _flush_batch()
        premarked["server"] = placed

    @staticmethod
    def _unmark_apps(premarked: Mapping[str, Any], service_ref: dict[str, Any]) -> None:
        """--- overhead8: `_premark_apps`' marks, taken back (no create was sent)."""
        pending = service_ref.get("pending") or {}
        for name in premarked.get("names") or ():
            pending.pop(f"app:{name}", None)
        if "pending" in service_ref and not pending:
            service_ref.pop("pending", None)

    async def _create_environment(self, project_uuid: str) -> str:
        try:
            return await self.client.create_environment(project_uuid, self.settings.environment)
        except CoolifyConflict:  # created by an attempt whose answer was lost
            envs = await self.client.list_environments(project_uuid)
            return next(str(e.uuid) for e in envs if e.name == self.settings.environment)

    async def _ensure_apps(self, key: ServiceKey, project_uuid: str, environment_uuid: str,
                           specs: Mapping[str, AppSpec], service_ref: dict[str, Any],
                           record: Record, created: set[str] | None = None,
                           sent: dict[str, dict[str, Any]] | None = None,
                           premarked: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:  # fmt: skip
        """One application per process (`sent` gets each create's body). Names are deterministic, so one created
        by an attempt whose answer was lost (or that died before recording it) is found by name, not created
        twice. `created` gets the processes whose application this call created (Coolify answered the create:
        nothing else can be in it yet).

        The list is read only when an earlier attempt sent a create whose result was not recorded: its write-ahead
        mark (`pending["app:<process>"]`, durable before the create is sent: `_create`, the batch flushed before
        every write request; dropped in the same write that records the uuid) or, when Coolify answered it with
        an error, `create_answered_error` (a 500 may come after the insert). The name is the service's id and
        releases of one service run one at a time (core's `_wait_turn`): without either, no InkMCP attempt ever
        asked Coolify for these applications, and the list (one request of the 200 a minute, and the team's whole
        application list to decode) would find nothing. `premarked`: processes whose marks this attempt made durable
        already (--- overhead8, `_premark_apps`): nothing of theirs to look for or wait on."""
        apps: dict[str, str] = dict(service_ref.get("apps") or {})
        missing = [name for name in specs if name not in apps]
        if not missing:
            return apps
        pending: dict[str, float] = service_ref.setdefault("pending", {})
        existing: list[m.Application] = []
        if service_ref.get("create_answered_error") or any(f"app:{name}" in pending for name in missing
                                                           if name not in premarked):
            existing = await self._call("listing applications", self.client.list_applications())

        async def save() -> None:
            await record(RefScope.service, service_ref)

        def found(name: str, uuid: str) -> None:
            pending.pop(f"app:{name}", None)
            if not pending:
                service_ref.pop("pending", None)
            apps[name] = uuid
            service_ref["apps"] = apps

        to_create: dict[str, Awaitable[Any]] = {}
        try:
            for name in missing:
                wanted = mapping.app_name(key, name)
                uuid = next((a.uuid for a in existing if a.name == wanted), None)
                if uuid is None and name not in premarked \
                        and await self._late(f"app:{name}", pending, f"creating the application of {name}"):
                    existing = await self._call("listing applications", self.client.list_applications())
                    uuid = next((a.uuid for a in existing if a.name == wanted), None)
                if uuid is not None:
                    found(name, uuid)
                    continue
                body = mapping.release_create_body(specs[name], project_uuid, environment_uuid, self.settings)
                if sent is not None:
                    sent[name] = body
                call = coolify_deploy_keys.create_call(self, key, body)  # --- ghkeys (issue 11): private-deploy-key
                if call is None:
                    self._check("POST", "/applications/public", body)
                    call = self.client.create_public_application(m.PublicApplicationCreate(**body))
                to_create[name] = call
            if to_create:
                # every create's write-ahead mark durable in one write, then the creates side by side (a web +
                # worker service waits for one create instead of two in turn, and for one write instead of two)
                if set(to_create) - set(premarked):  # (--- overhead8: premarked ones are durable already)
                    for name in to_create:
                        pending[f"app:{name}"] = time.time()
                    await save()
                    await _flush_batch()

                async def create(name: str, call: Awaitable[Any]) -> None:
                    answer = await self._create(f"creating the application of {name}", call, pending,
                                                f"app:{name}", save, service_ref, marked=True)
                    if created is not None:
                        created.add(name)
                    found(name, answer.uuid)
                    await record(RefScope.service, service_ref)
                    self._crash("after_create_app")

                await _settled(*(create(name, call) for name, call in to_create.items()))
        finally:
            for call in to_create.values():  # never sent (an earlier step failed): no "never awaited" warning
                if inspect.iscoroutine(call) and inspect.getcoroutinestate(call) == inspect.CORO_CREATED:
                    call.close()
        if missing:
            await record(RefScope.service, service_ref)
        if service_ref.pop("create_answered_error", None):  # every application is recorded now
            await record(RefScope.service, service_ref)
        return apps

    async def _create(self, what: str, call: Awaitable[T], pending: dict[str, float], mark: str,
                      save: Callable[[], Awaitable[None]], answered: dict[str, Any] | None = None, *,
                      marked: bool = False) -> T:  # fmt: skip
        """A request that makes something (project, application, deployment), with a write-ahead mark of when it
        was sent: kept when its outcome is unknown (`_unclear`: Coolify may still carry it out, `late_window`), or
        when InkMCP dies meanwhile; dropped when Coolify's answer says it is settled. A settled error may still
        have made the thing (a 500 after Coolify's insert): `answered["create_answered_error"]` then tells the
        next attempt to look by name before creating again (`_ensure_apps`). `marked`: the caller set the mark and
        made it durable already (with those of requests sent beside this one)."""
        if not marked:
            pending[mark] = time.time()
            await save()
        try:
            result = await call
        except CoolifyError as e:
            if not _unclear(e):
                pending.pop(mark, None)
                if answered is not None:
                    answered["create_answered_error"] = True
                await save()
            raise self._converted(e, what) from None
        except (SpecError, policy.PolicyViolation, mapping.TenantInputError) as e:
            pending.pop(mark, None)
            await save()
            raise _error(e, what) from None
        return result

    def _converted(self, e: CoolifyError, what: str) -> Exception:
        if isinstance(e, CoolifyRateLimited) and e.queue_full and self.queue_full_retry_after is not None:
            e.retry_after = self.queue_full_retry_after
        return _error(e, what)

    async def _late(self, mark: str, pending: Mapping[str, float], what: str) -> bool:
        """If an earlier attempt's request (`mark`) may still be carried out by Coolify, wait until it can no
        longer be (its send time + `late_window`, wall clock: another replica may have sent it). True when there
        was such a request (the caller looks for its result again before sending a new one)."""
        sent = pending.get(mark)
        if sent is None:
            return False
        left = float(sent) + self.late_window - time.time()
        if left > 0:
            log.info("%s: an earlier request got no answer %.1f s ago and Coolify may still carry it out; looking "
                     "again in %.1f s before sending another", what, time.time() - float(sent), left)
            await asyncio.sleep(left)
        return True

    async def _set_env(self, app: str, process: str, body: dict[str, Any],
                       current: list[m.EnvVar] | None = None) -> None:  # fmt: skip
        """Replace the application's env with `body` (bulk upsert + delete of the rest; `current` is the list
        just read, if the caller has it)."""
        self._check("PATCH", f"/applications/{app}/envs/bulk", body)
        if current is None:
            current = await self._call(f"reading env of {process}", self.client.list_envs(app))
        await self._call(f"setting env of {process}", self.client.update_envs(
            app, [m.EnvVarSet(**item) for item in body["data"]]))
        wanted = {item["key"] for item in body["data"]}
        for env in current:
            if env.key not in wanted:
                self._check("DELETE", f"/applications/{app}/envs/{env.uuid}")
                try:
                    await self.client.delete_env(app, env.uuid)
                except CoolifyNotFound:
                    pass  # gone already (a repeat, or the preview twin went with it)
                except CoolifyError as e:
                    raise _error(e, f"removing env var {env.key} of {process}") from None

    async def _deploy(self, app: str, what: str) -> str | None:
        """`POST /deploy` of one application: its deployment uuid, or None when Coolify skipped it because one
        for the same commit is queued or running."""
        self._check("POST", "/deploy", None, {"uuid": app, "force": "false"})
        result = await self._call(what, self.client.deploy(app))
        return None if result.skipped else result.deployment_uuid

    async def _start_deployment(self, app: str, process: str, commit: str, dep_ref: dict[str, Any],
                                record: Record, *, fresh: bool = False) -> str:  # fmt: skip
        """`_start_deployments` of one application."""
        started = await self._start_deployments({process: app}, commit, dep_ref, record,
                                                fresh={process} if fresh else set())  # fmt: skip
        return started[process]

    async def _start_deployments(self, apps: Mapping[str, str], commit: str, dep_ref: dict[str, Any],
                                 record: Record, *, fresh: set[str] | frozenset[str] = frozenset(),
                                 into: dict[str, str] | None = None) -> dict[str, str]:  # fmt: skip
        """The deployment of each process's application (`apps`: process -> application uuid), started side by
        side: every write-ahead record (`intent`: the newest deployment before we asked; `pending`: when the
        /deploy went out) is durable in one write before the first /deploy, then the /deploys go out together
        (`_settled`: each runs until Coolify answered it). A process an earlier attempt got this far with is
        re-attached to the deployment its /deploy made, if any, instead of deploying again.

        `fresh`: processes whose application this attempt created (Coolify answered the create), so they have no
        deployment yet and the anchor is None without asking (one request less per process of a first deploy).
        `into` gets each deployment as soon as it is known (a failure of another process's /deploy keeps it)."""
        started: dict[str, str] = into if into is not None else {}
        todo = await self._mark_deployments(apps, commit, dep_ref, record, fresh=fresh, into=started)
        if todo:
            await self._send_deployments(todo, commit, dep_ref, record, into=started)
        return {process: started[process] for process in apps}

    async def _mark_deployments(self, apps: Mapping[str, str], commit: str, dep_ref: dict[str, Any],
                                record: Record, *, fresh: set[str] | frozenset[str], into: dict[str, str],
                                force: bool = False) -> dict[str, str]:  # fmt: skip
        """`_start_deployments`' first half: each process's anchor (or the deployment an earlier attempt's /deploy
        made, into `into`), then the marks of those still to deploy, durable in one write. Returns those (process
        -> application uuid). `force`: written even inside `_RefBatch.keep` (overhead8: beside a first deploy's env
        PATCHes; the marks go with the refs kept so far)."""
        intent = dep_ref.setdefault("intent", {})
        pending: dict[str, float] = dep_ref.setdefault("pending", {})
        started = into

        async def save() -> None:
            await record(RefScope.deployment, dep_ref)

        async def anchor(process: str, app: str) -> None:  # reads only: side by side
            if process not in intent:
                intent[process] = None if process in fresh else await self._newest(app, process)
                return
            # an earlier attempt got this far: its /deploy may have taken effect (one request saved otherwise)
            found = await self._newer(app, process, intent[process], commit)
            if found is None and await self._late(f"deploy:{process}", pending, f"deploying {process}"):
                found = await self._newer(app, process, intent[process], commit)
            if found is not None:
                started[process] = found

        await _together(*(anchor(process, app) for process, app in apps.items()))
        todo = {process: app for process, app in apps.items() if process not in started}
        if not todo:
            return todo
        for app in todo.values():
            self._check("POST", "/deploy", None, {"uuid": app, "force": "false"})
        for process in todo:
            pending[f"deploy:{process}"] = time.time()
        await save()  # the anchors and marks, durable before the first /deploy
        await _flush_batch(force=force)
        return todo

    def _unmark_deployments(self, todo: Mapping[str, str], dep_ref: dict[str, Any], anchored: set[str]) -> None:
        """overhead8: the marks `_mark_deployments` made for `todo` whose /deploys were never sent (what went beside
        them failed): taken back, with the anchors it set (`anchored`), so the next attempt neither waits
        `late_window` for them nor lists deployments it never asked for. The caller records the ref."""
        pending = dep_ref.get("pending") or {}
        for process in todo:
            pending.pop(f"deploy:{process}", None)
            if process in anchored:
                (dep_ref.get("intent") or {}).pop(process, None)

    async def _send_deployments(self, todo: Mapping[str, str], commit: str, dep_ref: dict[str, Any], record: Record,
                                *, into: dict[str, str]) -> None:  # fmt: skip
        """`_start_deployments`' second half: the /deploys of `todo`, whose marks are durable, side by side."""
        intent = dep_ref.setdefault("intent", {})
        pending: dict[str, float] = dep_ref.setdefault("pending", {})
        started = into

        async def save() -> None:
            await record(RefScope.deployment, dep_ref)

        async def deploy(process: str, app: str) -> None:
            result = await self._create(f"deploying {process}", self.client.deploy(app), pending,
                                        f"deploy:{process}", save, marked=True)
            uuid = None if result.skipped else result.deployment_uuid
            self._crash("after_deploy_call")
            pending.pop(f"deploy:{process}", None)  # settled: recorded with the deployment
            if uuid is None:  # "already queued for this commit": ours, from an attempt whose answer was lost
                uuid = await self._newer(app, process, intent[process], commit)
                if uuid is None:
                    raise ProviderUnavailable(f"deploying {process}: Coolify says a deployment of this commit is "
                                              "queued but lists none newer than the last one recorded; retrying")
            started[process] = uuid

        await _settled(*(deploy(process, app) for process, app in todo.items()))

    async def _deployments(self, app: str, process: str) -> list[m.Deployment]:
        page = await self._call(f"listing deployments of {process}", self.client.list_deployments(app, take=50))
        return page.deployments  # newest first

    async def _newest(self, app: str, process: str) -> str | None:
        deps = await self._deployments(app, process)
        return deps[0].deployment_uuid if deps else None

    async def _newer(self, app: str, process: str, anchor: str | None, commit: str | None) -> str | None:
        """The newest deployment of `app` (of `commit`, if given) asked for after `anchor`."""
        deps = await self._deployments(app, process)
        if anchor is not None:
            index = next((i for i, d in enumerate(deps) if d.deployment_uuid == anchor), len(deps))
            deps = deps[:index]
        mine = [d for d in deps if commit is None or d.commit in (None, commit)]
        return mine[0].deployment_uuid if mine else None

    async def _wait(self, deployments: Mapping[str, str], progress: ProgressCallback | None) -> dict[str, m.Deployment]:
        """Poll until every deployment is done; ProviderUnavailable after `wait_timeout` (see `_poll`)."""
        final = await self._poll(deployments, progress, self.wait_timeout)
        if final is None:
            raise ProviderUnavailable(f"Coolify's deployments did not finish within {self.wait_timeout:g} s; "
                                      "the next attempt re-attaches to them")
        return final

    async def _poll(self, deployments: Mapping[str, str], progress: ProgressCallback | None,
                    timeout: float) -> dict[str, m.Deployment] | None:  # fmt: skip
        """Poll until every deployment is done (interval backing off to poll_max_interval, so a long build costs
        few requests), None if they are not within `timeout` s; report `building` once the first one runs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = self.poll_interval
        reported = progress is None
        final: dict[str, m.Deployment] = {}
        async def read(name: str, uuid: str) -> None:
            final[name] = await self._call(f"reading the deployment of {name}", self.client.get_deployment(uuid))

        while True:  # the processes' deployments are read side by side; a finished one is not read again
            await _together(*(read(name, uuid) for name, uuid in deployments.items()
                              if name not in final or not final[name].finished))
            done = all(d.finished for d in final.values())
            if not reported and any(d.status != "queued" for d in final.values()):
                reported = True
                assert progress is not None
                batch = _BATCH.get()
                if done and batch is not None and batch.defers(progress):  # --- overhead7 (issue 8)
                    batch.later(Step.building, "Coolify is building on the build server")
                else:
                    await progress(Step.building, "Coolify is building on the build server")
            if done:
                return final
            if loop.time() > deadline:
                return None
            await asyncio.sleep(min(interval, max(deadline - loop.time(), 0.0) + 0.001))
            interval = min(self.poll_max_interval, interval * 1.5)

    async def _roll_back(
        self, apps: dict[str, str], final: Mapping[str, m.Deployment], service_ref: dict[str, Any],
        dep_ref: dict[str, Any], snapshot: Mapping[str, dict[str, str]], record: Record, names: list[str],
    ) -> str:
        """All or nothing (module docstring), over every process of the release (`names`; those never deployed,
        because an earlier group failed, only get their settings and env back). Returns a note for the failure
        reason ("" if nothing to say)."""
        live_commit = service_ref.get("live_commit")
        previous = service_ref.get("live_deployments") or {}
        rollbacks: dict[str, str | None] = dep_ref.setdefault("rollbacks", {})
        note = ""
        for name in names:
            app = apps[name]
            dep = final.get(name)
            if name in previous and live_commit:  # back to the live release's settings, whatever happens next
                await self._apply_live(app, name, service_ref, str(live_commit), record)
                if snapshot.get(name):
                    await self._set_env(app, name, _env_data(snapshot[name]))
                elif dep is not None and dep.status == "finished":
                    note = " (the rolled-back process runs the new env vars: InkMCP restarted during this release)"
            if dep is None or dep.status != "finished" or name in rollbacks:
                continue
            if name in previous and live_commit:
                anchor = dep.deployment_uuid
                found = await self._newer(app, name, anchor, str(live_commit))
                rollbacks[name] = found or await self._deploy(app, f"rolling back {name}") \
                    or await self._newer(app, name, anchor, str(live_commit))
            else:  # new in this release: nothing to go back to
                self._check("POST", f"/applications/{app}/stop")
                await self._call(f"stopping {name}", self.client.stop_application(app))
                rollbacks[name] = None
            await record(RefScope.deployment, dep_ref)
        pending = {n: u for n, u in rollbacks.items() if u}
        if pending:
            await self._wait(pending, None)
        return note

    async def _patch(self, app: str, name: str, body: Mapping[str, Any], service_ref: dict[str, Any], record: Record,
                     what: str) -> None:  # fmt: skip
        """PATCH absolute settings, clearing optional fields an earlier PATCH set (`mapping.clearing`). The fields
        set are recorded (names only) before the PATCH, so a repeat after a crash still knows what to clear."""
        fields: dict[str, list[str]] = service_ref.setdefault("set_fields", {})
        earlier = set(fields.get(name, []))
        body = mapping.clearing(body, earlier)
        now = sorted({k for k, v in body.items() if v and k in mapping.CLEARABLE})
        if set(now) | earlier != earlier:
            fields[name] = sorted(set(now) | earlier)
            await record(RefScope.service, service_ref)
        self._check("PATCH", f"/applications/{app}", body)
        await self._call(what, self.client.update_application(app, _update(body)))
        if fields.get(name) != now:
            fields[name] = now
            await record(RefScope.service, service_ref)

    async def _apply_live(self, app: str, name: str, service_ref: dict[str, Any], commit: str, record: Record) -> None:
        """Put the live release's settings (and labels, which a domains PATCH regenerates) back on `app`."""
        body = {**_legacy_free((service_ref.get("live_config") or {}).get(name, {})), "git_commit_sha": commit}
        await self._patch(app, name, body, service_ref, record, f"setting {name} back to the live release")
        labels = (service_ref.get("live_labels") or {}).get(name)
        if labels:
            self._check("PATCH", f"/applications/{app}", {"custom_labels": policy.labels_text(
                dict(line.split("=", 1) for line in labels.splitlines()))})
            await self._call(f"labelling {name}", self.client.update_application(
                app, m.ApplicationUpdate(custom_labels=labels)))

    async def _delete_app(self, uuid: str, what: str) -> None:
        self._check("DELETE", f"/applications/{uuid}")
        await self._call(what, self.client.delete_application(uuid, missing_ok=True))

    async def restore(self, spec: ReleaseSpec) -> None:
        """Coolify's applications outlive InkMCP: nothing to bring back."""

    # -- moving (inkmcp nodes drain) ------------------------------------------------------------------------

    async def move(self, key: ServiceKey, spec: ReleaseRequest, target: PlacedServer, progress: ProgressCallback,
                   record: Record, *, settle_seconds: float = 30.0) -> ReleaseResult:
        """Move the live service to `target` (another run server): a copy of every application there, deployed at
        the live commit with the live settings and the env the old applications run with, health-checked, then
        the service's record switched to it and the old applications deleted. Used by `inkmcp nodes drain`
        (inkmcp/placement/drain.py); not part of the compute contract, because only a provider that places
        services on several servers can move one (the local and fake providers have nowhere to move to).

        `spec` is the *live* deployment's request (core's rows: plan, commit, repo_url, and as `deployment_ref`
        that deployment's ref). The move keeps its progress there, under `"move"` (RefScope.deployment): not in
        the service's ref, which a release or env change running meanwhile rewrites whole. The service's ref is
        written once, at the switch; the drain's `record` does that as a compare-and-swap and raises
        `MoveConflict` if the service changed since `key` was read (the move then undoes itself).

        Protocol (each step recorded before the next remote one, so a repeat after a crash re-attaches):
          1. write-ahead `move = {from, to, wildcard_base, old_apps, apps: {}, intent: {}, deployments: {}}`;
          2. per process, an application on `target` with the same deterministic name (one left by a crashed
             attempt is found by name: not one of the old applications nor one a failed attempt discarded),
             configured with the live release's PATCH body (`live_config`; the route recomputed for `target`),
             its labels, and the env read from the old application (what runs, not what core would send now);
             with custom domains, the old routed application first lets go of them in its settings (Coolify
             refuses a domain two applications have, and InkMCP never sends force_domain_override): its running
             container keeps its routing labels, so it keeps serving them until it is deleted;
          3. `POST /deploy` per process (write-ahead intent as in `release`), wait until every deployment is
             finished, then until every application is running: `running:healthy` passes at once, a status
             without a health check (`running:unknown`) must stay running for `settle_seconds` (Coolify refreshes
             statuses asynchronously and reports a crash-looping container as degraded/restarting/exited);
          4. switch: record the service's ref with the new server, applications, URL and DNS records;
          5. delete the old applications, then clear the move state.
        All or nothing: a failed build, a new copy that does not stay running, or a `MoveConflict` deletes the new
        applications, gives the custom domains back to the old one and raises (`ReleaseFailed` / `MoveConflict`);
        the old containers were never touched and keep serving. `ProviderUnavailable` leaves the state for the
        next attempt.

        URL: the default host is `<service>-<project>.<server wildcard base>`, and each server's wildcard DNS
        record points at that server, so the default URL *changes* with the server. Keeping the old host as an
        extra domain on the new application would not keep it working (its DNS still resolves to the old server,
        whose proxy has no route once the old application is deleted), so the move returns and records the new
        URL (core's `services.url` and the live deployment's url are updated by the drain's record). Custom
        domains move with the service; their DNS records (CNAME to the service's host) are returned again with
        the new target, and the user must update them (the drain reports it).
        """
        ref = copy.deepcopy(key.service_ref)
        dep_ref = copy.deepcopy(spec.deployment_ref)
        state: dict[str, Any] | None = dep_ref.get("move") or None
        spec = await coolify_deploy_keys.keyed(self, spec)  # --- ghkeys (issue 11): the deploy key's SSH URL

        async def save() -> None:
            await record(RefScope.deployment, dep_ref)

        old_apps: dict[str, str] = dict(ref.get("apps") or {})
        if state is not None and ref.get("server_uuid") == state.get("to") and old_apps == state.get("apps"):
            await self._finish_move(state, dep_ref, save, progress, key)  # switched before a crash: clean up only
            return self._result(ref)
        if ref.get("server_uuid") == target.uuid:
            return self._result(ref)  # already there (nothing in flight)
        if state is not None and state.get("to") != target.uuid:  # an attempt aimed elsewhere: undo it first
            await self._discard_move(state, dep_ref, save, key)
            state = None
        if not ref.get("live") or not old_apps:  # nothing runs: only where the next release goes changes
            for uuid in sorted(old_apps.values()):
                await self._delete_app(uuid, "deleting an application that never went live")
            for k in ("apps", "live_deployments", "url", "dns_records", "set_fields"):
                ref.pop(k, None)
            ref.update(server_uuid=target.uuid, wildcard_base=target.wildcard_base)
            await record(RefScope.service, ref)
            return self._result(ref)

        commit = str(ref.get("live_commit") or spec.commit)
        if state is None:
            state = {"from": ref.get("server_uuid"), "to": target.uuid, "wildcard_base": target.wildcard_base,
                     "old_apps": old_apps, "routed": _routed(ref), "apps": {}, "intent": {}, "deployments": {}}
            dep_ref["move"] = state
            await save()
        try:
            bodies, labels, hosts = self._move_bodies(key, spec, ref, target)
        except mapping.TenantInputError as e:
            await self._discard_move(state, dep_ref, save, key)
            raise ReleaseFailed(Step.building, str(e)) from None
        await progress(Step.building, f"creating the service's applications on the new server ({len(old_apps)})")
        apps = await self._move_apps(key, spec, target, state, dep_ref, save)
        routed = _routed(ref)
        if hosts and routed in old_apps:
            # Coolify refuses (409) a domain another application has, and taking it by force is a field InkMCP
            # never sends (policy: it would let one service take another's domain). So the old application lets
            # go of the custom domains in its settings first: its running container keeps its routing labels
            # (Coolify applies domains when it creates a container), so it keeps serving them; a discarded move
            # gives them back (`_discard_move`).
            if "domains_released" not in state:  # write-ahead: a discard gives these back
                state["domains_released"] = ((ref.get("live_config") or {}).get(routed) or {}).get("domains", "")
                await save()
            home = PlacedServer(uuid=str(ref.get("server_uuid")), wildcard_base=str(ref["wildcard_base"]))
            own = {"domains": f"https://{mapping.hostname(key, home)}"}
            self._check("PATCH", f"/applications/{old_apps[routed]}", own)
            await self._call("releasing the custom domains of the old application",
                             self.client.update_application(old_apps[routed], _update(own)))
        started: dict[str, str] = state["deployments"]
        for name, app in apps.items():
            if name in started:
                continue
            if name not in state["intent"]:  # configure (absolute values), until its deployment is asked for
                self._check("PATCH", f"/applications/{app}", bodies[name])
                await self._call(f"configuring {name} on the new server",
                                 self.client.update_application(app, _update(bodies[name])))
                if labels.get(name):
                    self._check("PATCH", f"/applications/{app}", {"custom_labels": policy.labels_text(
                        dict(line.split("=", 1) for line in labels[name].splitlines()))})
                    await self._call(f"labelling {name}", self.client.update_application(
                        app, m.ApplicationUpdate(custom_labels=labels[name])))
                env = _values(await self._call(f"reading env of {name}", self.client.list_envs(old_apps[name])),
                              without_release=True)  # the release ran already: the copy's container skips it
                await self._set_env(app, name, _env_data(env))

            async def save_intent(scope: RefScope, _ref: Any) -> None:
                await save()

            started[name] = await self._start_deployment(app, name, commit, state, save_intent)
            await save()
            self._crash("after_move_deploy_call")
        final = await self._wait(started, None)
        failed = {n: d for n, d in final.items() if d.status != "finished"}
        if failed:
            name, dep = next(iter(failed.items()))
            entries = dep.log_lines()
            tail = "\n".join(e.output for e in entries[-8:])
            await self._discard_move(state, dep_ref, save, key)
            raise ReleaseFailed(_failed_step([e.output for e in entries if e.type == "stderr"]),
                                f"the new copy of process '{name}' did not deploy ({dep.status}); it was deleted and "
                                f"the service keeps running on its server\nlast output:\n{tail}")
        await progress(Step.health_check, "waiting until every new application runs")
        problem = await self._until_running(apps, settle_seconds)
        if problem is not None:
            await self._discard_move(state, dep_ref, save, key)
            raise ReleaseFailed(Step.health_check, f"the new copy did not stay running ({problem}); it was deleted and "
                                                   "the service keeps running on its server")
        self._crash("after_move_healthy")
        try:  # on_demand: the router on the target's proxy before the switch (the old node's goes after it)
            await node_routes.after_move(self, key, spec, target, apps)
        except (ProviderUnavailable, ProviderRefused, ReleaseFailed):
            await self._discard_move(state, dep_ref, save, key)
            raise

        await progress(Step.switching, "switching the service's record to the new server")
        new_ref = copy.deepcopy(ref)
        new_ref.pop("env_change", None)
        new_ref.update(
            server_uuid=target.uuid, wildcard_base=target.wildcard_base, apps=dict(apps),
            live_deployments=dict(started), env_revision=await self._env_revision(ref),
            url=f"https://{mapping.hostname(key, target)}" if routed else None,
            dns_records=[r.model_dump() for r in _records(key, target, hosts, routed is not None)],
            live_config={n: {k: v for k, v in b.items() if k != "git_repository"} for n, b in bodies.items()},
            set_fields={n: sorted(k for k, v in b.items() if v and k in mapping.CLEARABLE) for n, b in bodies.items()},
        )  # fmt: skip
        try:
            await record(RefScope.service, new_ref)
        except MoveConflict:
            await self._discard_move(state, dep_ref, save, key)
            raise
        self._crash("after_move_switch")
        await self._finish_move(state, dep_ref, save, progress, key)
        return self._result(new_ref)

    def _move_bodies(self, key: ServiceKey, spec: ReleaseRequest, ref: Mapping[str, Any],
                     target: PlacedServer) -> tuple[dict[str, dict[str, Any]], dict[str, str], list[str]]:
        """Per process: the live release's PATCH body for the new server (route recomputed), its labels; and the
        custom domains (from the live record's DNS records: core passes none on its own)."""
        live_config: Mapping[str, Any] = ref.get("live_config") or {}
        custom = tuple(spec.domains) or tuple(r["name"] for r in ref.get("dns_records") or [])
        hosts = mapping.custom_domains(custom, target, self.settings) if custom else []
        repo = self._repo_url(spec.repo_url.get_secret_value())
        by_name = {p.name: p for p in mapping.processes(spec.service_type, spec.plan)}
        bodies: dict[str, dict[str, Any]] = {}
        for name in ref.get("apps") or {}:
            process = by_name.get(name) or Process(name, None, name == ref.get("routed"))
            app_spec = AppSpec(key=key, process=process, service_type=spec.service_type, mode=spec.mode,
                               plan=spec.plan, commit=str(ref.get("live_commit") or spec.commit),
                               resources=spec.resources, server=target, repo_url=repo, domains=custom)
            if name in live_config:
                body = {**_legacy_free(live_config[name]), "git_repository": repo,
                        "git_commit_sha": str(ref.get("live_commit") or spec.commit)}
                if "domains" in body:
                    body.update(mapping.routing_fields(app_spec, self.settings))
            else:
                body = mapping.update_body(app_spec, self.settings)
            bodies[name] = body
        return bodies, dict(ref.get("live_labels") or {}), hosts

    async def _move_apps(self, key: ServiceKey, spec: ReleaseRequest, target: PlacedServer, state: dict[str, Any],
                         dep_ref: dict[str, Any], save: Callable[[], Awaitable[None]]) -> dict[str, str]:
        """The new applications on `target`, one per process, created or found again (by name, excluding the old
        ones and those a failed attempt discarded)."""
        apps: dict[str, str] = state["apps"]
        missing = [n for n in state["old_apps"] if n not in apps]
        if not missing:
            return dict(apps)
        project_uuid, environment_uuid = await self._ensure_project(key, _no_record)
        known = set(state["old_apps"].values()) | set(dep_ref.get("move_discarded") or [])
        existing = await self._call("listing applications", self.client.list_applications())
        by_name = {p.name: p for p in mapping.processes(spec.service_type, spec.plan)}
        for name in missing:
            wanted = mapping.app_name(key, name)
            uuid = next((a.uuid for a in existing if a.name == wanted and a.uuid not in known), None)
            if uuid is None:
                process = by_name.get(name) or Process(name, None, False)
                app_spec = AppSpec(key=key, process=process, service_type=spec.service_type, mode=spec.mode,
                                   plan=spec.plan, commit=str(key.service_ref.get("live_commit") or spec.commit),
                                   resources=spec.resources, server=target,
                                   repo_url=self._repo_url(spec.repo_url.get_secret_value()))
                body = mapping.create_body(app_spec, project_uuid, environment_uuid, self.settings)
                call = coolify_deploy_keys.create_call(self, key, body)  # --- ghkeys (issue 11)
                if call is None:
                    self._check("POST", "/applications/public", body)
                    call = self.client.create_public_application(m.PublicApplicationCreate(**body))
                created = await self._call(f"creating the application of {name} on the new server", call)
                uuid = created.uuid
                self._crash("after_move_create_app")
            apps[name] = uuid
            await save()
        return dict(apps)

    async def _until_running(self, apps: Mapping[str, str], settle_seconds: float) -> str | None:
        """None once every application runs (healthy, or running for `settle_seconds`); else what went wrong."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
        since: dict[str, float] = {}
        seen_up: set[str] = set()
        interval = self.poll_interval
        while True:
            now = loop.time()
            for name, uuid in apps.items():
                app = await self._call(f"reading the status of {name}", self.client.get_application(uuid))
                status = app.status or ""
                if status.startswith(("degraded", "restarting")) or (status.startswith("exited") and name in seen_up):
                    return f"process '{name}' is {status}"
                if status.startswith(("running", "starting")):
                    seen_up.add(name)
                if app.healthy:
                    since[name] = -1.0  # a health check passed: no need to watch longer
                elif status.startswith("running"):
                    since.setdefault(name, now)
                else:
                    since.pop(name, None)
            if all(name in since and (since[name] < 0 or now - since[name] >= settle_seconds) for name in apps):
                return None
            if now > deadline:
                return f"not running within {self.wait_timeout:g} s"
            await asyncio.sleep(interval)
            interval = min(self.poll_max_interval, interval * 1.5, max(settle_seconds / 4, self.poll_interval))

    async def _discard_move(self, state: Mapping[str, Any], dep_ref: dict[str, Any],
                            save: Callable[[], Awaitable[None]], key: ServiceKey) -> None:
        """Undo an unfinished move: delete its new applications (and an on_demand router written on the target)
        and forget it (remembering their uuids, so a later attempt never adopts one that Coolify is still
        deleting)."""
        if state.get("to"):
            await node_routes.remove_service(self, key, str(state["to"]))
        released = state.get("domains_released")
        new_routed = (state.get("apps") or {}).get(state.get("routed") or "")
        if released and new_routed:  # the copy lets go of them first: Coolify deletes it later (queued)
            self._check("PATCH", f"/applications/{new_routed}", {"domains": ""})
            try:
                await self.client.update_application(new_routed, _update({"domains": ""}))
            except CoolifyNotFound:
                pass  # gone already (a repeat)
            except CoolifyError as e:
                raise _error(e, "releasing the custom domains of the new copy") from None
        for uuid in sorted((state.get("apps") or {}).values()):
            await self._delete_app(uuid, "deleting the new copy of a failed move")
        if released and state.get("routed") in (state.get("old_apps") or {}):  # give the custom domains back
            old = state["old_apps"][state["routed"]]
            self._check("PATCH", f"/applications/{old}", {"domains": released})
            await self._call("giving the custom domains back to the old application",
                             self.client.update_application(old, _update({"domains": released})))
        dep_ref["move_discarded"] = [*(dep_ref.get("move_discarded") or []),
                                     *sorted((state.get("apps") or {}).values())][-50:]
        dep_ref.pop("move", None)
        await save()

    async def _finish_move(self, state: Mapping[str, Any], dep_ref: dict[str, Any],
                           save: Callable[[], Awaitable[None]], progress: ProgressCallback, key: ServiceKey) -> None:
        await progress(Step.switching, "deleting the old applications")
        if state.get("from"):  # on_demand: the old node's router (a no-op for other modes)
            await node_routes.remove_service(self, key, str(state["from"]))
        for uuid in sorted((state.get("old_apps") or {}).values()):
            await self._delete_app(uuid, "deleting an application of the old server")
        dep_ref.pop("move", None)
        await save()

    # -- env -----------------------------------------------------------------------------------------------

    async def update_env(self, key: ServiceKey, env: dict[str, SecretStr], revision: str, record: Record) -> EnvChange:
        """Coolify applies env only when a new container starts, and that is a queued job; `/deploy` of the live
        commit (not `/restart`, module docstring) starts it. So: record the write-ahead, set the env (keeping the
        values it replaces, in memory only), queue one deployment per process, record them, then wait up to
        `env_wait_timeout` for their outcome:

        * every one finished (the routed process's health check passed) → `restarted`;
        * one failed (Coolify's rolling update removed its new container; the old one still serves the old env)
          → the previous values go back into Coolify (bulk update, safe to repeat), processes whose new container
          did start are deployed again with them, and `ReleaseFailed` as the local provider's failed restart, so
          core puts its stored values back and tells the agent nothing changed. Without this, Coolify would keep
          the new values and the next deployment or restart would start the crash again;
        * still running at the bound → `pending` (`runtime().env_revision` turns when they finished; a late
          failure leaves Coolify's env as core stored it, so the next release meets the same values).

        `POST /deploy` is never repeated after an unclear failure (the client's rule): a ProviderUnavailable then
        puts the previous values back (best effort) and propagates."""
        service_ref = copy.deepcopy(key.service_ref)
        apps: dict[str, str] = service_ref.get("apps") or {}
        live = service_ref.get("live")
        if not apps or not live:
            return EnvChange(outcome=EnvOutcome.next_start, detail="nothing deployed yet")
        values = {k: v.get_secret_value() for k, v in env.items()}
        bodies = {}
        for name in apps:
            internal = {DEPLOYMENT_ENV: str(live)}
            if name == service_ref.get("routed") and "PORT" not in values and service_ref.get("port"):
                internal["PORT"] = str(service_ref["port"])
            try:  # no INKMCP_RELEASE: the new containers do not run the release command again
                bodies[name] = mapping.env_body(values, internal=internal)
            except mapping.TenantInputError as e:
                raise ReleaseFailed(Step.starting, str(e)) from None
        service_ref["env_revision"] = await self._env_revision(service_ref)  # an applied change becomes the base
        change: dict[str, Any] = {"revision": revision, "after": {}, "deployments": {}}
        for name, uuid in apps.items():
            change["after"][name] = await self._newest(uuid, name)
        service_ref["env_change"] = change
        await record(RefScope.service, service_ref)  # write-ahead, before anything changes remotely
        commit = service_ref.get("live_commit")
        previous: dict[str, dict[str, str]] = {}
        try:
            for name, uuid in apps.items():
                current = await self._call(f"reading env of {name}", self.client.list_envs(uuid))
                previous[name] = _values(current, without_release=True)
                await self._set_env(uuid, name, bodies[name], current)
                if commit:  # the live release's settings: a failed release may have left others on the application
                    await self._apply_live(uuid, name, service_ref, str(commit), record)
                dep = await self._deploy(uuid, f"redeploying {name} with the new env")
                self._crash("after_env_deploy_call")
                if dep is not None:
                    change["deployments"][name] = dep
                    await record(RefScope.service, service_ref)
        except ProviderUnavailable:
            await self._put_env_back(apps, previous, service_ref, record)
            raise
        deployments = dict(change["deployments"])
        for name, uuid in apps.items():  # skipped ("already queued for this commit"): the queued one applies it
            if name not in deployments:
                found = await self._newer(uuid, name, change["after"].get(name), str(commit) if commit else None)
                if found is not None:
                    deployments[name] = found
        log.info("env change of %s: waiting for %d Coolify deployment(s)", key.slug, len(deployments))
        final = await self._poll(deployments, None, self.env_wait_timeout) if len(deployments) == len(apps) else None
        if final is None:
            return EnvChange(outcome=EnvOutcome.pending, detail="a Coolify deployment per process is queued; the new "
                                                                "values apply when each one finishes")
        failed = {name: dep for name, dep in final.items() if dep.status != "finished"}
        if not failed:
            service_ref["env_revision"] = revision
            service_ref.pop("env_change", None)
            await record(RefScope.service, service_ref)
            return EnvChange(outcome=EnvOutcome.restarted, detail="every process runs a new container with the new "
                                                                  "values (Coolify's deployments finished)")
        log.info("env change of %s failed in %s: putting the previous values back", key.slug, ", ".join(failed))
        await self._put_env_back(apps, previous, service_ref, record)
        again: dict[str, str] = {}
        for name, dep in final.items():  # a process that did take the new values goes back to the old ones
            if dep.status == "finished":
                found = await self._deploy(apps[name], f"redeploying {name} with its previous env") \
                    or await self._newer(apps[name], name, dep.deployment_uuid, str(commit) if commit else None)
                if found:
                    again[name] = found
        if again:
            await self._wait(again, None)
        name, dep = next(iter(failed.items()))
        entries = dep.log_lines()
        step = _failed_step([e.output for e in entries if e.type == "stderr"])
        body = (service_ref.get("live_config") or {}).get(name)
        raise ReleaseFailed(step, f"process '{name}' did not start with the new values ({dep.status}): Coolify kept "
                                  "the previous container serving, and the previous values were put back in Coolify"
                                  f"{_hint(step, body, [e.output for e in entries])}\nlast output:\n{_tail(entries)}")

    async def _put_env_back(self, apps: Mapping[str, str], previous: Mapping[str, dict[str, str]],
                            service_ref: dict[str, Any], record: Record) -> None:  # fmt: skip
        """The env an application had before a failed or interrupted env change (bulk update and deletes, safe to
        repeat); the change is forgotten, so runtime() keeps reporting the previous revision."""
        try:
            for name, values in previous.items():
                await self._set_env(apps[name], name, _env_data(values))
        except ProviderUnavailable as e:  # the caller's own failure is what the agent must hear about
            log.warning("could not put the previous env back (%s); core's next apply sends it again", e.reason)
        service_ref.pop("env_change", None)
        await record(RefScope.service, service_ref)

    # -- queries -------------------------------------------------------------------------------------------

    async def runtime(self, key: ServiceKey) -> ServiceRuntime:
        ref = key.service_ref
        apps: dict[str, str] = ref.get("apps") or {}
        if not apps or not ref.get("live"):
            return ServiceRuntime(state=RuntimeState.stopped, detail="not deployed")
        processes: list[ProcessRuntime] = []
        statuses = []
        routed = _routed(ref)
        for name, uuid in apps.items():
            try:
                app = await self.client.get_application(uuid)
            except CoolifyNotFound:
                processes.append(ProcessRuntime(name=name, state=RuntimeState.stopped, routed=name == routed))
                continue
            except CoolifyError as e:
                raise _error(e, f"reading the status of {name}") from None
            status = app.status or ""
            statuses.append(f"{name}: {status or '?'}")
            state = next((s for prefix, s in _STATE if status.startswith(prefix)), RuntimeState.unknown)
            if state == RuntimeState.stopped and _sleeps(app):
                state = RuntimeState.sleeping
            processes.append(ProcessRuntime(name=name, state=state, routed=name == routed))
        state = min((p.state for p in processes), key=_ORDER.index)
        return ServiceRuntime(state=state, deployment_id=str(ref["live"]), env_revision=await self._env_revision(ref),
                              processes=processes, detail="; ".join(statuses))  # fmt: skip

    async def _env_revision(self, ref: Mapping[str, Any]) -> str | None:
        """The release's env revision, or a queued change's once every process's deployment finished."""
        change = ref.get("env_change")
        if not change:
            return ref.get("env_revision")
        for name, uuid in (ref.get("apps") or {}).items():
            dep_uuid = change["deployments"].get(name)
            try:
                if dep_uuid is None:  # died before recording it: look after the write-ahead anchor
                    dep_uuid = await self._newer(uuid, name, change["after"].get(name), ref.get("live_commit"))
                    if dep_uuid is None:
                        return ref.get("env_revision")
                dep = await self.client.get_deployment(dep_uuid)
            except (CoolifyNotFound, ProviderRefused):
                continue  # the application is gone: nothing of it runs the old env either
            except CoolifyError as e:
                raise _error(e, f"reading the env deployment of {name}") from None
            if dep.status != "finished":
                return ref.get("env_revision")
        return str(change["revision"])

    async def logs(self, key: ServiceKey, scope: LogScope, *, deployment_id: str | None,
                   deployment_ref: Mapping[str, Any] | None = None, tail: int) -> list[str]:  # fmt: skip
        apps: dict[str, str] = key.service_ref.get("apps") or {}
        lines: list[str] = []
        if scope == LogScope.runtime:
            for name, uuid in apps.items():
                try:
                    text = await self.client.application_logs(uuid, lines=max(1, min(tail, 10000)))
                except (CoolifyNotFound, CoolifyBadRequest):  # gone, or "Application is not running."
                    continue
                except CoolifyError as e:
                    raise _error(e, f"reading the logs of {name}") from None
                lines += [f"{name} | {line}" for line in text.splitlines()]
            return lines[-tail:]
        deployments = (deployment_ref or {}).get("deployments") or key.service_ref.get("live_deployments") or {}
        for name, uuid in deployments.items():
            try:
                dep = await self.client.get_deployment(uuid)
            except CoolifyNotFound:
                continue
            except CoolifyError as e:
                raise _error(e, f"reading the build log of {name}") from None
            lines += [f"{name} | {line.output}" for line in dep.log_lines()]
            lines += await self._release_output(key.service_ref, name, uuid)
        return lines[-tail:]

    async def _watch_release(self, app: str, name: str) -> list[str] | None:
        """For a release command in a container no health check gates (mapping docstring): poll the container's
        log (backing off) until the guard reports it finished (None) or failed, or `release_timeout` passed (the
        last lines, for the failure reason)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.release_timeout
        interval = self.poll_interval
        lines: list[str] = []
        while True:
            try:
                lines = (await self.client.application_logs(app, lines=500)).splitlines()
            except CoolifyBadRequest:  # "Application is not running.": exited (a failed release) or restarting
                pass
            except CoolifyError as e:
                raise _error(e, f"reading the release output of {name}") from None
            if any(mapping.RELEASE_FINISHED in line for line in lines):
                return None
            if any(mapping.RELEASE_FAILED in line for line in lines):
                return lines[-12:]
            if loop.time() > deadline:
                return [*lines[-12:], f"(the release command did not finish within {self.release_timeout:g} s)"]
            await asyncio.sleep(interval)
            interval = min(self.poll_max_interval, interval * 1.5)

    async def _release_output(self, ref: Mapping[str, Any], name: str, deployment_uuid: str) -> list[str]:
        """The release command's output, which is the new container's own (mapping docstring), shown with the
        build log of the deployment that runs now: read from the container's log, between the guard's markers.
        (A failed deployment's log has it already: Coolify copies the container's last lines into it.)"""
        live_deployments = ref.get("live_deployments") or {}
        config = (ref.get("live_config") or {}).get(name) or {}
        app = (ref.get("apps") or {}).get(name)
        if not app or live_deployments.get(name) != deployment_uuid or not mapping.release_of(
                config.get("start_command")):
            return []
        try:
            text = await self.client.application_logs(app, lines=2000)
        except (CoolifyNotFound, CoolifyBadRequest):  # gone, or "Application is not running."
            return []
        except CoolifyError as e:
            raise _error(e, f"reading the release output of {name}") from None
        out: list[str] = []
        inside = False
        for line in text.splitlines():
            if mapping.RELEASE_STARTED in line:
                inside = True
            if inside:
                out.append(f"{name} | {line}")
            if mapping.RELEASE_FINISHED in line or mapping.RELEASE_FAILED in line:
                inside = False
        return out

    # -- removal -------------------------------------------------------------------------------------------

    async def remove(self, key: ServiceKey) -> None:
        """Delete every application of the service: the recorded ones and any an interrupted attempt created
        without recording it (found by name). Coolify deletes asynchronously; a repeat finds them gone."""
        await node_routes.remove_service(self, key)  # on_demand: no router left pointing at deleted containers
        uuids = set((key.service_ref.get("apps") or {}).values())
        existing = await self._call("listing applications", self.client.list_applications())
        uuids |= {a.uuid for a in existing if (a.name or "").startswith(f"{key.service_id}-")}
        for uuid in sorted(uuids):
            await self._delete_app(uuid, "deleting an application of the service")
        await coolify_deploy_keys.removed(self, key)  # --- ghkeys (issue 11): its deploy key, GitHub and Coolify
        release = getattr(self.place, "release", None)
        if release is not None:  # placement's reservation for the service (idempotent on its side)
            await release(key)

    async def remove_project(self, project_id: str, project_ref: Mapping[str, Any]) -> None:
        uuid = project_ref.get("project_uuid")
        if not uuid:
            name = f"{self.project_prefix}{project_id}"
            projects = await self._call("listing projects", self.client.list_projects())
            uuid = next((p.uuid for p in projects if p.name == name), None)
        if not uuid:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
        interval = self.poll_interval
        while True:  # application deletes are queued: Coolify refuses (400) until they are done
            self._check("DELETE", f"/projects/{uuid}")
            try:
                await self.client.delete_project(str(uuid))
                return
            except CoolifyNotFound:
                return
            except CoolifyBadRequest as e:
                if loop.time() > deadline:
                    raise ProviderUnavailable(f"deleting the project: {e.message}; retrying later") from None
            except CoolifyError as e:
                raise _error(e, "deleting the project") from None
            await asyncio.sleep(interval)
            interval = min(self.poll_max_interval, interval * 1.5)


async def _no_record(scope: RefScope, ref: Any) -> None:
    """For a move: the project exists (the service is live), so `_ensure_project` returns before recording."""


def _ungated(body: Mapping[str, Any]) -> bool:
    """Whether Coolify calls this application's deployment finished without waiting for its health check: none is
    configured, or the container name is fixed (on_demand's routed process), which makes rolling_update() stop
    the old container and start the new one without health_check()."""
    return not body.get("health_check_enabled") or bool(body.get("is_consistent_container_name_enabled"))


def _legacy_free(body: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded release body as it may be sent today: releases recorded before the release command moved into
    the start command carried it as `pre_deployment_command`, which the policy now only lets InkMCP clear."""
    out = dict(body)
    if out.get("pre_deployment_command"):
        out["pre_deployment_command"] = ""
    return out


def _unclear(e: CoolifyError) -> bool:
    """Whether Coolify may still carry out a request that failed so: sent but no answer (a timeout or a lost
    connection: the client's "no complete answer"), or a proxy's 502/504 (the PHP worker behind it may go on).
    Not when the connection never opened (nothing was sent) nor when Coolify answered (it is done with it)."""
    if not isinstance(e, CoolifyUnavailable):
        return False
    if e.status is None:
        return not isinstance(e.__cause__, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return e.status in (502, 504)


def _values(envs: list[m.EnvVar], *, without_release: bool = False) -> dict[str, str]:
    """Env values as set (`value`, not `real_value`: Coolify quotes a literal's real_value for the shell).
    `without_release`: minus INKMCP_RELEASE, for an env a new container of an already released deployment gets
    (a rollback, an env change, a move), so it does not run that release command again."""
    return {e.key: e.value or "" for e in envs if not e.is_preview and e.value is not None
            and not (without_release and e.key == mapping.RELEASE_ENV)}  # fmt: skip


def _env_data(values: Mapping[str, str]) -> dict[str, Any]:
    """A bulk env body of values read back from Coolify (already checked when first set)."""
    return {"data": [{"key": k, "value": v, "is_preview": False, "is_literal": True, "is_multiline": "\n" in v}
                     for k, v in values.items()]}  # fmt: skip


def _deploy_groups(processes: list[Process]) -> list[list[str]]:
    """The order of a release's deployments: the process running the release command first, alone, and the others
    once it finished (its health check passed, so the release is done): a worker never starts new code against
    a database the release has not migrated yet. Without a release command, all at once."""
    carrier = next((p.name for p in processes if p.release), None)
    if carrier is None or len(processes) == 1:
        return [[p.name for p in processes]]
    return [[carrier], [p.name for p in processes if p.name != carrier]]


def _tail(entries: list[m.DeploymentLogLine], lines: int = 12) -> str:
    """The last lines of a deployment's log, without Coolify's separators."""
    return "\n".join([e.output for e in entries if e.output.strip("-")][-lines:])


def _hint(step: Step, body: Mapping[str, Any] | None, output: Sequence[str] = ()) -> str:
    """What the agent should change, for a failed health check (the port and path Coolify asked); `output` is the
    deployment's log (the container's logs Coolify quotes after a failed health check)."""
    if step == Step.releasing:
        return "; the release command failed in the new container (see its output below)"
    if step != Step.health_check or not body or not body.get("health_check_enabled"):
        return ""
    window = mapping.health_window(body)
    path = str(body.get("health_check_path") or "/")
    # --- newuser5: an app with no route for `/` (an API, Flask's tutorial: only /hello) answers it 404: live on the
    # local provider (any answer below 500), failed on Coolify with "make the app listen on 0.0.0.0", which it did
    answered = _answered(path, output)
    if answered is not None:
        return (f"; its health check failed: the app answered GET {path} with {answered}, and Coolify's check "
                f"(curl -f) needs a 2xx/3xx answer there within {window:g} s (the local provider accepts any answer "
                f"below 500). Give the app a route that answers {path}, or set health_path in inkmcp.yaml to a path "
                "it answers with 2xx (services: {web: {health_path: /healthz}}), or pass service_type='backend' "
                "(not health-checked)")
    # the container's own output comes first (an app that exits at start, e.g. on a missing env var, was told only to
    # listen on 0.0.0.0 at $PORT, and the agent changed its bind address)
    return (f"; its health check failed: Coolify asks GET {path} on the app's port "
            f"(PORT={body.get('health_check_port')}) for a 2xx/3xx answer within {window:g} s. If the container's "
            "logs below show an error or the app exiting, fix that first; else make the app listen "
            "on 0.0.0.0 at the PORT env var and answer that path (service_type='backend' is not health-checked)")


# pip's and uv's words for a dependency that did not build (uv: Failed to build `x==1`; pip 24: ... projects (x))
_NOT_BUILT = re.compile(r"Failed to build `(?P<uv>[^`]+)`|Failed to build installable wheels for some pyproject\.toml "
                        r"based projects \((?P<pip>[^)]+)\)|Could not build wheels for (?P<old>[\w.-]+)"
                        r"|Failed building wheel for (?P<wheel>[\w.-]+)")


def _dependency_hint(step: Step, output: Sequence[str]) -> str:
    """--- newuser5: a dependency that failed to build in Coolify's build, said as the local provider says it (a
    mysqlclient app was told "process 'web' failed; nothing went live" and a traceback; locally: the system library
    it compiles against is missing, and PyMySQL installs instead)."""
    if step != Step.building:
        return ""
    for line in reversed(output[-300:]):
        if m := _NOT_BUILT.search(line):
            package = next(g for g in m.groups() if g).strip()
            fix = installer_fix(f"Failed to build `{package}`", "of the build image", output)
            if fix:
                return f"; the app's dependencies did not install: {package} failed to build. Fix: {fix}"
    return ""


def _answered(path: str, output: Sequence[str]) -> str | None:
    """The 4xx status the app's access log shows for the health check's request (`"GET / HTTP/1.1" 404`: werkzeug,
    uvicorn, gunicorn's and most Node loggers' format), or None."""
    request = re.compile(r'"(?:GET|HEAD) ' + re.escape(path) + r'(?:\?[^" ]*)? HTTP/[\d.]+"\s+(4\d\d)\b')
    found = [m[1] for line in output for m in request.finditer(line)]
    return found[-1] if found else None
    # --- end


def _update(body: Mapping[str, Any]) -> m.ApplicationUpdate:
    return m.ApplicationUpdate(**body)


def _records(key: ServiceKey, server: PlacedServer, hosts: list[str], routed: bool) -> list[DnsRecord]:
    return [DnsRecord(**r) for r in mapping.dns_records(key, server, hosts)] if routed else []


def _routed(ref: Mapping[str, Any]) -> str | None:
    routed = ref.get("routed")
    return str(routed) if routed else None


def _sleeps(app: m.Application) -> bool:
    """An on_demand application (InkMCP's Sablier label) that is not running is asleep, not stopped."""
    labels = app.custom_labels or ""
    return "sablier.enable=true" in labels or "c2FibGllci5lbmFibGU9dHJ1ZQ" in labels


def _failed_step(errors: list[str]) -> Step:
    """Where a Coolify deployment failed, read from its stderr log entries (a deployment has no phase field):
    the pre-deployment command → releasing; the new container not becoming healthy → health_check; anything
    else (the build, the clone, the push) → building."""
    text = "\n".join(errors).lower()
    if "pre-deployment command" in text or mapping.RELEASE_FAILED in text:
        return Step.releasing
    if "not healthy" in text or "healthcheck" in text or "container exited" in text:
        return Step.health_check
    return Step.building
