"""`inkmcp.yaml`: the repo's own description of its services, for repos with several of them.

It sits between call arguments (which override it) and Procfile/detection (which it overrides).
The schema is strict (unknown keys are errors) because a typo such as `prot: 3000` that were
silently ignored would deploy something other than what the agent wrote, with no hint why.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inkmcp.build.plan import Mode, ServiceType, check_health_path
from inkmcp.errors import BuildPlanError

MANIFEST = "inkmcp.yaml"
MAX_REPO_FILE_BYTES = 1_000_000
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_FIX = f"edit {MANIFEST} at the repository root, commit and push, then deploy again"


def read_repo_text(base: Path, relative: str, *, root: Path | None = None) -> str | None:
    """Read a small text file from a checkout, or None if absent.

    InkMCP reads repo files with its own privileges, so a symlink such as
    `inkmcp.yaml -> /etc/shadow` must not be followed out of the checkout (`root`, default `base`):
    its content could end up in an error message. Oversized files are refused for the same reason.
    """
    path = base / relative
    if not path.exists() and not path.is_symlink():
        return None
    boundary = (root or base).resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(boundary):
        raise BuildPlanError(
            f"{relative} is a symlink pointing outside the repository.",
            argument="repo_url",
            fix=f"replace the symlink {relative} with a regular file",
        )
    if not resolved.is_file():
        return None
    if resolved.stat().st_size > MAX_REPO_FILE_BYTES:
        raise BuildPlanError(
            f"{relative} is larger than {MAX_REPO_FILE_BYTES} bytes.",
            argument="repo_url",
            fix=f"keep {relative} small",
        )
    return resolved.read_text(encoding="utf-8", errors="replace")


def _relative_path(value: str | None, field: str) -> str | None:
    """Paths in the manifest must stay inside the repo: relative, no `..`."""
    if value is None:
        return None
    posix = PurePosixPath(value.strip() or ".")
    if posix.is_absolute() or ".." in posix.parts:
        raise ValueError(f"{field} must be a relative path inside the repository without '..'")
    return str(posix)


class ServiceEntry(BaseModel):
    """One service under `services:`; every key is optional and falls back to detection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ServiceType | None = Field(default=None, description="webapp_static | webapp | backend")
    mode: Mode | None = Field(default=None, description="static | on_demand | persistent")
    path: str = Field(default=".", description="directory of the app inside the repo")
    build: str | None = Field(default=None, description="build command after dependency install")
    start: str | None = Field(default=None, description="command of the routed (or only) process")
    release: str | None = Field(default=None, description="runs once per deployment before traffic")
    port: int | None = Field(default=None, ge=1, le=65535, description="port the app listens on")
    static_dir: str | None = Field(default=None, description="directory served for webapp_static")
    health_path: str | None = Field(default=None, description="path the health check GETs (default /); newuser4")

    @field_validator("path")
    @classmethod
    def _path_inside(cls, value: str) -> str:
        return _relative_path(value, "path") or "."

    @field_validator("static_dir")
    @classmethod
    def _static_inside(cls, value: str | None) -> str | None:
        return _relative_path(value, "static_dir")

    @field_validator("health_path")
    @classmethod
    def _plain_path(cls, value: str | None) -> str | None:
        return check_health_path(value, "health_path")

    @field_validator("build", "start", "release")
    @classmethod
    def _non_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a non-empty command (or leave the key out)")
        return value.strip() if value is not None else None


class Manifest(BaseModel):
    """The whole `inkmcp.yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    services: dict[str, ServiceEntry] = Field(min_length=1)

    @field_validator("services")
    @classmethod
    def _dns_names(cls, value: dict[str, ServiceEntry]) -> dict[str, ServiceEntry]:
        for name in value:
            if not _DNS_LABEL.match(str(name)):
                raise ValueError(
                    f"service name {name!r} must be a DNS label: lowercase letters, digits and '-', "
                    "1-63 characters, not starting or ending with '-'"
                )
        return value


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        parent = ServiceEntry if len(error["loc"]) >= 3 else Manifest
        allowed = ", ".join(parent.model_fields)
        return f"{where}: unknown key (allowed: {allowed})"
    return f"{where}: {error['msg']}"


def parse_manifest(text: str) -> Manifest:
    """Parse and validate manifest text; BuildPlanError names the file and every bad field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BuildPlanError(f"{MANIFEST} is not valid YAML{where}.", argument="repo_url", fix=_FIX) from None
    if not isinstance(data, dict):
        raise BuildPlanError(
            f"{MANIFEST} must be a mapping with a `services:` key.",
            argument="repo_url",
            fix=f"{_FIX}; minimal example: `services: {{web: {{start: python app.py}}}}`",
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())  # type: ignore[arg-type]
        raise BuildPlanError(f"{MANIFEST} is invalid: {problems}.", argument="repo_url", fix=_FIX) from None


def load_manifest(checkout: Path) -> Manifest | None:
    """Load `inkmcp.yaml` from the repo root, None if the repo has none."""
    text = read_repo_text(checkout, MANIFEST)
    return None if text is None else parse_manifest(text)
