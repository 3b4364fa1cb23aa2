"""The compute provider contract.

Designed for two very different backends: the local provider builds and runs processes on this
machine; the Coolify provider creates an application through Coolify's REST API, lets Coolify build
it on the build server and run it on a placed run server. So the contract speaks of a *release*
(one deployment of one service at one commit) and leaves build/run mechanics to the provider.
Core records everything; providers keep only what they need to run (files, processes, Coolify uuids).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from inkmcp.build.plan import BuildPlan, Mode, ServiceType
from inkmcp.build.source import SourceWorkspace


class Resources(BaseModel):
    """Limits a service asks for. Coolify maps them to limits_memory / limits_cpus."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int = Field(default=512, ge=64, le=16384, description="memory limit in MiB")
    cpus: float = Field(default=1.0, gt=0, le=16, description="CPU limit in cores")


class ServiceKey(BaseModel):
    """Stable identity of a service inside a provider. Ids, not names: names are per-account."""

    model_config = ConfigDict(frozen=True)

    account_id: str
    project_id: str
    service_id: str
    project_name: str
    service_name: str

    @property
    def slug(self) -> str:
        return f"{self.service_name}.{self.project_name}"


class ReleaseRequest(BaseModel):
    """One deployment for the provider to carry from built files to serving traffic."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    deployment_id: str
    key: ServiceKey
    service_type: ServiceType
    mode: Mode
    plan: BuildPlan
    checkout_dir: Path = Field(
        description="repo checked out at `commit`, in a directory only InkMCP can reach; the provider takes "
        "it over (moves it), so core must not use it afterwards"
    )
    repo_url: str
    commit: str
    env: dict[str, SecretStr] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    reuse_build_of: str | None = Field(
        default=None, description="deployment id whose build output can be reused (same commit, same plan)"
    )


class Step(StrEnum):
    """Pipeline steps a provider reports; core records each in the deployment's history."""

    queued = "queued"
    building = "building"
    releasing = "releasing"
    starting = "starting"
    health_check = "health_check"
    switching = "switching"
    live = "live"
    failed = "failed"


ProgressCallback = Callable[[Step, str], Awaitable[None]]
"""Called by providers as a release moves on: (step, human-readable detail)."""


class ReleaseResult(BaseModel):
    url: str | None = Field(description="public URL of the routed process, None for workers")
    detail: str = ""


class RuntimeState(StrEnum):
    running = "running"
    sleeping = "sleeping"  # on_demand, stopped while idle; wakes on the next request
    starting = "starting"
    crashed = "crashed"  # restarting with backoff
    stopped = "stopped"
    unknown = "unknown"


class ServiceRuntime(BaseModel):
    state: RuntimeState
    url: str | None = None
    restarts: int = 0
    detail: str = ""


class LogScope(StrEnum):
    build = "build"
    runtime = "runtime"


class ReleaseFailed(Exception):
    """A release could not go live. The previous release (if any) keeps serving.

    `step` says where it failed; `reason` is safe to show the agent (no secrets).
    """

    def __init__(self, step: Step, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(f"{step.value}: {reason}")


@runtime_checkable
class ComputeProvider(Protocol):
    name: str

    async def start(self) -> None:
        """Begin serving (proxy up, background tasks running)."""

    async def close(self) -> None:
        """Stop everything this provider started, leaving records to core."""

    async def source_workspace(self, project_id: str) -> SourceWorkspace:
        """Where this project's repos are fetched and with whose rights (created on first use).

        On a shared machine that is the project's own user, so fetching a local path or a mirror
        never reads anything with InkMCP's (root's) rights.
        """

    def url_for(self, key: ServiceKey) -> str:
        """The URL a service will have, known before it is deployed."""

    async def release(self, request: ReleaseRequest, progress: ProgressCallback) -> ReleaseResult:
        """Build, run the release command, start, health-check, switch traffic, stop the old version.

        Raises ReleaseFailed; on failure the previous release keeps serving.
        """

    async def restore(self, request: ReleaseRequest) -> None:
        """Bring a release that was live before a restart back to running, without rebuilding."""

    async def update_env(self, key: ServiceKey, env: dict[str, SecretStr]) -> bool:
        """Apply new env to the live release; True if processes were restarted."""

    async def runtime(self, key: ServiceKey) -> ServiceRuntime: ...

    async def logs(
        self, key: ServiceKey, scope: LogScope, *, deployment_id: str | None, tail: int
    ) -> list[str]:
        """Last `tail` lines, oldest first. Redaction and byte bounds are core's job."""

    async def remove(self, key: ServiceKey) -> None:
        """Stop and delete the service and its files. Idempotent."""

    async def remove_project(self, project_id: str) -> None:
        """Release what the provider keeps per project (a Unix user, a Coolify project). Idempotent."""
