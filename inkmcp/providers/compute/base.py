"""The compute provider contract: what core asks of wherever services are built and run.

Two very different backends implement it. The local provider builds and runs processes on this
machine. The Coolify provider (issue 8) asks Coolify's REST API to build on the build server and
run on a placed run server, and only ever *queues* work there: a deployment, a restart and a delete
are jobs that finish later, a status string is refreshed asynchronously, and the API can refuse
for a minute (429) or not answer at all. So the contract speaks of a *release* (one deployment of
one service at one commit) and leaves build/run mechanics to the provider, and it is shaped by what
a remote provider needs that a local one does not:

* **Provider-owned ids live in core's database, not in the provider.** A provider remembers what it
  created (a Coolify project, one application per process, the run server, the deployment uuids)
  by calling `record(scope, ref)`; core stores the ref in the control-plane database before the
  call returns and hands it back on every later call (`ServiceKey.project_ref/service_ref`,
  `ReleaseRequest.deployment_ref`). A restarted InkMCP, or another replica, therefore finds the
  remote objects without searching the remote API by name and without any in-memory state.
* **`release` is idempotent per deployment id.** Core calls it again for the same deployment after
  a crash, and after a retryable error; the provider re-attaches to what the earlier attempt
  started (the recorded remote deployment) instead of starting a second one.
* **Retryable errors are told apart from permanent ones**: `ProviderUnavailable` (try the same call
  again later; nothing was half-done that a retry would duplicate), `ReleaseFailed` (the tenant's
  release cannot go live: fix the code or settings) and `ProviderRefused` (the platform itself
  refuses, e.g. a token without an ability: an operator must act, retrying cannot help).
* **A service may have several processes** (Procfile `web` + `worker`). The local provider runs
  them side by side in one release; the Coolify provider maps each process to one Coolify
  application (one start command per application, one container each, the route only on the
  `routed` process). `ServiceRuntime.processes` reports them one by one.
* **Env changes may apply asynchronously.** `update_env` says what actually happened
  (`EnvOutcome`): restarted and health-checked before it returned (local), a restart queued at the
  provider (Coolify: env applies only on the next deploy/restart, which is a job), or nothing
  running to restart. `ServiceRuntime.env_revision` tells core when a queued change has applied.

Core records every step and decides what agents see; providers keep only what they need to run.
The in-process `fake.FakeComputeProvider` behaves like a remote provider and documents the contract
by example; `tests/contract/` is the one suite every provider passes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from inkmcp.build.plan import BuildPlan, Mode, ServiceType
from inkmcp.build.source import SourceWorkspace

ProviderRef = dict[str, Any]
"""A provider's own ids for one project, service or deployment: JSON (str keys; str/int/bool/None,
lists and dicts as values). Opaque to core, which only stores it and passes it back."""


class RefScope(StrEnum):
    """Which record a `record` call replaces: the project's, the service's or the deployment's."""

    project = "project"
    service = "service"
    deployment = "deployment"


Record = Callable[[RefScope, ProviderRef], Awaitable[None]]
"""`await record(scope, ref)`: store `ref` as the provider's whole record for that scope of the
current call (it replaces the previous one; pass back what you were given plus what changed).
Returns once the ref is committed to the control-plane database. Call it right after a remote
object is created or a remote job is started, and before the next remote step, so that a crash at
any point leaves a record from which the next attempt can re-attach; and record an *intent* (e.g.
which remote deployments existed before starting one) before a call whose answer could be lost."""


class Resources(BaseModel):
    """Limits a service asks for. The local provider puts them in cgroups; Coolify maps them to
    `limits_memory` / `limits_cpus` of each of the service's applications."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int = Field(default=512, ge=64, le=16384, description="memory limit in MiB")
    cpus: float = Field(default=1.0, gt=0, le=16, description="CPU limit in cores")


class ServiceKey(BaseModel):
    """Which service a call is about: core's stable ids (names are per account and can change), the
    names (for hostnames and logs) and what the provider recorded about where it lives."""

    model_config = ConfigDict(frozen=True)

    account_id: str
    project_id: str
    service_id: str
    project_name: str
    service_name: str
    project_ref: ProviderRef = Field(
        default_factory=dict, description="what the provider recorded for the project (RefScope.project)"
    )
    service_ref: ProviderRef = Field(
        default_factory=dict, description="what the provider recorded for the service (RefScope.service)"
    )

    @property
    def slug(self) -> str:
        return f"{self.service_name}.{self.project_name}"


class ReleaseSpec(BaseModel):
    """What a release runs: enough to start a release that was built before (`restore`), and the
    common part of a `ReleaseRequest`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    deployment_id: str = Field(description="core's id; the provider's unit of idempotency")
    key: ServiceKey
    service_type: ServiceType
    mode: Mode
    plan: BuildPlan
    commit: str
    env: dict[str, SecretStr] = Field(default_factory=dict)
    env_revision: str = Field(
        default="", description="core's keyed hash of `env`; reported back by `runtime()` once processes run with it"
    )
    resources: Resources = Field(default_factory=Resources)
    domains: list[str] = Field(
        default_factory=list, description="custom host names the routed process also answers (deploy_app's "
        "`domains`); providers that cannot serve them refuse with ReleaseFailed"
    )


class ReleaseRequest(ReleaseSpec):
    """One deployment for the provider to carry from source to serving traffic."""

    repo_url: SecretStr = Field(
        description="where providers that fetch the source themselves (Coolify builds from git) fetch it: the full "
        "URL, with the credentials the agent gave (so a secret; core shows only a redacted copy)"
    )
    checkout_dir: Path | None = Field(
        description="repo checked out at `commit`, in a directory only InkMCP can reach, when the provider "
        "`needs_checkout`; the provider takes it over (moves it), so core must not use it afterwards. "
        "None for providers that fetch the source themselves."
    )
    deployment_ref: ProviderRef = Field(
        default_factory=dict,
        description="what an earlier attempt of this same deployment recorded (RefScope.deployment): "
        "the remote deployment to re-attach to",
    )


class Step(StrEnum):
    """Pipeline steps. Providers report the non-terminal ones through `progress`; `queued`, `live` and
    `failed` are core's to record (with the URL or the reason)."""

    queued = "queued"
    building = "building"
    releasing = "releasing"
    starting = "starting"
    health_check = "health_check"
    switching = "switching"
    live = "live"
    failed = "failed"


ProgressCallback = Callable[[Step, str], Awaitable[None]]
"""Called by providers as a release moves on: (step, human-readable detail). Core records each step
in the deployment's history, which is what an agent waiting on the deployment sees."""


class DnsRecord(BaseModel):
    """A record the user must create at their DNS provider for a custom domain to reach the service."""

    name: str
    type: str
    value: str


class ReleaseResult(BaseModel):
    url: str | None = Field(description="public URL of the routed process, None for services without one")
    dns_records: list[DnsRecord] = Field(
        default_factory=list, description="for each custom domain of the request: the record the user must create"
    )


class RuntimeState(StrEnum):
    running = "running"
    sleeping = "sleeping"  # on_demand, stopped while idle; wakes on the next request
    starting = "starting"
    crashed = "crashed"  # exited, or restarting with backoff
    stopped = "stopped"
    unknown = "unknown"  # the provider could not tell (a remote status not refreshed yet)
    suspended = "suspended"  # --- billcore (issue 13): its account cannot pay (billing's enforcer reports it)


class ProcessRuntime(BaseModel):
    """One process of a service (Procfile type): with Coolify, one application."""

    name: str
    state: RuntimeState
    routed: bool = False
    restarts: int = 0


class ServiceRuntime(BaseModel):
    """What runs for a service right now, as far as the provider can tell."""

    state: RuntimeState = Field(description="the service as a whole: the worst state of its processes")
    deployment_id: str | None = Field(
        default=None, description="core's deployment id whose release the processes run; None if nothing is deployed"
    )
    env_revision: str | None = Field(
        default=None,
        description="the env revision the processes run with (or start with, if asleep); a queued env restart has "
        "applied once this equals the revision passed to update_env",
    )
    restarts: int = 0
    processes: list[ProcessRuntime] = Field(default_factory=list)
    detail: str = Field(default="", description="for operators: free text (pids, remote status strings)")


class EnvOutcome(StrEnum):
    """What `update_env` actually did, so core can tell the agent the truth."""

    restarted = "restarted"  # processes were replaced and passed their health check before the call returned
    pending = "pending"  # a restart is queued at the provider; runtime().env_revision says when it has applied
    next_start = "next_start"  # nothing runs now (asleep, stopped): the next start uses the new env


class EnvChange(BaseModel):
    outcome: EnvOutcome
    detail: str = ""


class LogScope(StrEnum):
    build = "build"
    runtime = "runtime"


class ComputeError(Exception):
    """Base of the errors a provider raises on purpose. `retryable` tells core whether the same call,
    repeated later, can succeed."""

    retryable: ClassVar[bool] = False

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ReleaseFailed(ComputeError):
    """A release could not go live because of the tenant's code or settings. Permanent: the same
    deployment fails again. The previous release (if any) keeps serving.

    `step` says where it failed; `reason` is safe to show the agent (no secrets)."""

    def __init__(self, step: Step, reason: str) -> None:
        self.step = step
        super().__init__(reason)
        self.args = (f"{step.value}: {reason}",)

    def __str__(self) -> str:
        return f"{self.step.value}: {self.reason}"


class ProviderUnavailable(ComputeError):
    """The provider (or its remote API) cannot do it now: unreachable, 5xx, rate limited, queue full.
    Retryable: repeat the same call later (after `retry_after` seconds if given). Whatever the failed
    attempt did is recorded or harmless, so a repeat re-attaches instead of duplicating."""

    retryable: ClassVar[bool] = True

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(reason)


class ProviderRefused(ComputeError):
    """The platform itself refuses (a token without an ability, a remote contract break, no server
    with room): not the tenant's fault and not transient; an operator must act. `reason` is safe to
    show the agent."""


@runtime_checkable
class ComputeProvider(Protocol):
    """The members core calls (and the composition root: `start`, `close`). Nothing else: a member no
    caller uses is a promise no test keeps (the review removed `url_for` and `reuse_build_of`)."""

    name: str
    """Namespaces the provider's refs in the database, so a switch of provider never feeds one
    provider's ids to another."""

    needs_checkout: bool
    """True if `release` builds from `checkout_dir` (local). False if the provider fetches the
    source itself from `repo_url` at `commit` (Coolify): core then does not fetch again to resume."""

    rebuilds_same_commit: bool
    """--- newuser6: True if a new deployment of a commit already built runs its build again (local: with the env it is
    given, so a build-time variable changes); False if the build of a commit is reused (Coolify's /deploy without
    force finds the image for the commit and skips the build). Said in update_env_vars' note (core/platform.py)."""

    async def start(self) -> None:
        """Begin serving (proxy up, background tasks running)."""

    async def close(self) -> None:
        """Stop everything this provider started in this process, leaving records to core. Remote
        services keep running."""

    async def source_workspace(self, project_id: str) -> SourceWorkspace:
        """Where this project's repos are fetched and with whose rights (created on first use).

        Core reads the repo itself (build plan, commit pinning) whatever the provider. On a shared
        machine that is the project's own user, so fetching a local path or a mirror never reads
        anything with InkMCP's (root's) rights.
        """

    async def release(self, request: ReleaseRequest, progress: ProgressCallback, record: Record) -> ReleaseResult:
        """Build, run the release command, start every process, health-check, switch traffic, stop
        the old version; return once the release serves.

        Idempotent per `request.deployment_id`: called again for the same deployment (after a crash
        or a `ProviderUnavailable`) it re-attaches to what `request.deployment_ref` says was started
        and never starts a second remote deployment; called for a deployment that is already live
        it returns its result. All or nothing across processes: on failure every process keeps (or
        gets back) the previous release.

        Raises ReleaseFailed (permanent, tenant's), ProviderUnavailable (retry later) or
        ProviderRefused (operator's).
        """

    async def restore(self, spec: ReleaseSpec) -> None:
        """At InkMCP start-up: bring the live release back to running if it stopped with InkMCP
        (local processes), without rebuilding. A no-op where services outlive the control plane."""

    async def update_env(
        self, key: ServiceKey, env: dict[str, SecretStr], revision: str, record: Record
    ) -> EnvChange:
        """Apply new env to the live release and say honestly what happened (`EnvOutcome`).

        Raises ReleaseFailed if a synchronous restart failed its health check (the processes keep
        their previous env), or ProviderUnavailable.
        """

    async def runtime(self, key: ServiceKey) -> ServiceRuntime:
        """What runs now, per process. Never raises for a service the provider does not know: that
        is `stopped` with no deployment."""

    async def logs(
        self,
        key: ServiceKey,
        scope: LogScope,
        *,
        deployment_id: str | None,
        deployment_ref: Mapping[str, Any] | None = None,
        tail: int,
    ) -> list[str]:
        """Last `tail` lines, oldest first, each prefixed with its process name for runtime logs.
        Build logs are those of `deployment_id` (its `deployment_ref` names the remote deployments),
        or the latest. Redaction and byte bounds are core's job."""

    async def remove(self, key: ServiceKey) -> None:
        """Stop and delete the service and everything the provider made for it. Idempotent (a
        repeat after a crash or a ProviderUnavailable finishes the job)."""

    async def remove_project(self, project_id: str, project_ref: Mapping[str, Any]) -> None:
        """After its last service is gone: release what the provider keeps per project (a Unix
        user, a Coolify project). Idempotent."""
