"""Pydantic models of the Neon API v2 bodies InkMCP sends and the parts of answers it reads.

Answers are parsed leniently (`extra="ignore"`): Neon adds fields over time and the spec check in tests catches
shape changes; requests are built from closed models (`extra="forbid"`) so a typo fails here, not at Neon.
Field names and enums follow `openapi-v2-subset.json` (components/schemas/<Name>).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

_ID = r"^[a-z0-9-]{1,60}$"

TERMINAL_OK = frozenset({"finished", "skipped"})
"""Operation statuses after which the change is in place (docs: terminal are finished, skipped, cancelled)."""
TERMINAL_BAD = frozenset({"cancelled"})
"""Terminal without the change. `failed`/`error` are not terminal: Neon retries them (docs/manage/operations)."""


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# -- answers ---------------------------------------------------------------------------------------------------


class Operation(_Answer):
    id: str
    project_id: str
    branch_id: str | None = None
    endpoint_id: str | None = None
    action: str
    status: str
    error: str | None = None
    failures_count: int = 0

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_OK or self.status in TERMINAL_BAD


class Project(_Answer):
    id: str = Field(pattern=_ID)
    name: str
    region_id: str
    pg_version: int
    created_at: datetime
    org_id: str | None = None


class Branch(_Answer):
    id: str = Field(pattern=_ID)
    project_id: str
    name: str
    default: bool = False
    created_at: datetime


class Role(_Answer):
    branch_id: str
    name: str
    password: SecretStr | None = None
    protected: bool | None = None


class Database(_Answer):
    id: int
    branch_id: str
    name: str
    owner_name: str


class ConnectionParameters(_Answer):
    database: str
    password: SecretStr
    role: str
    host: str
    pooler_host: str


class ConnectionDetails(_Answer):
    connection_uri: SecretStr
    connection_parameters: ConnectionParameters


class CreatedProject(_Answer):
    """201 of createProject (components/responses/CreatedProject)."""

    project: Project
    branch: Branch
    roles: list[Role]
    databases: list[Database]
    operations: list[Operation]
    connection_uris: list[ConnectionDetails] = Field(default_factory=list)


class ProjectsPage(_Answer):
    projects: list[Project]
    pagination: dict[str, Any] | None = None


class RoleOperations(_Answer):
    role: Role
    operations: list[Operation]


class DatabaseOperations(_Answer):
    database: Database
    operations: list[Operation]


# -- requests --------------------------------------------------------------------------------------------------


class BranchSpec(_Request):
    name: str | None = None
    role_name: str | None = None
    database_name: str | None = None


class DefaultEndpointSettings(_Request):
    autoscaling_limit_min_cu: float | None = Field(default=None, ge=0.25)
    autoscaling_limit_max_cu: float | None = Field(default=None, ge=0.25)


class ProjectSpec(_Request):
    name: str
    region_id: str | None = None
    pg_version: int | None = Field(default=None, ge=14, le=17)
    org_id: str | None = Field(default=None, pattern=_ID)
    branch: BranchSpec | None = None
    default_endpoint_settings: DefaultEndpointSettings | None = None
    store_passwords: bool | None = None


class ProjectCreate(_Request):
    project: ProjectSpec


class RoleSpec(_Request):
    name: str = Field(max_length=63)


class RoleCreate(_Request):
    role: RoleSpec


class DatabaseSpec(_Request):
    name: str
    owner_name: str


class DatabaseCreate(_Request):
    database: DatabaseSpec
