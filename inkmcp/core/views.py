"""Read models returned by core: what agents and operators see. No provider or server details."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ProjectView(BaseModel):
    name: str
    repo_url: str | None = None
    services: int = 0
    database: str | None = Field(default=None, description="provider of the project's database, if any")
    created_at: datetime


class ServiceView(BaseModel):
    name: str
    type: str
    mode: str
    url: str | None
    state: str = Field(description="running | sleeping | suspended (its account cannot pay) | starting | crashed | "
                       "stopped | unknown | not_deployed")
    health: str = Field(description="ok | failing | unknown")
    deployment_id: str | None = None
    deployment_status: str | None = None
    commit: str | None = None
    restarts: int = 0
    env: str | None = Field(
        default=None, description="applied | pending: whether the processes run the stored env values yet"
    )


class DeploymentView(BaseModel):
    deployment_id: str
    project: str
    service: str
    status: str
    url: str | None
    commit: str | None
    error: str | None = None
    done: bool
    reused: bool = Field(default=False, description="true when an identical deployment was returned (no-op)")
    history: list[str] = Field(default_factory=list, description="'<status>: <detail>' oldest first")
    next_step: str | None = None


class DeploymentSummary(BaseModel):
    deployment_id: str
    service: str
    status: str
    commit: str | None
    created_at: datetime
    error: str | None = None


TERMINAL = frozenset({"live", "failed", "superseded"})
