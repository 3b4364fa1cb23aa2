"""Control-plane schema. Alembic migrations in `migrations/` are the source of truth on disk;
these models must match them (a test compares autogenerate against a migrated database).

Secret values live only in `*_enc` columns (Fernet tokens, see `crypto.py`); nothing else in the
schema holds a secret, so audit rows, logs and dumps of other tables are safe to show.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PROVIDER_REF_COMMENT = "the compute provider's own ids, {provider name: ref}; see inkmcp.store.refs"


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONB, uuid.UUID: UUID(as_uuid=True)}


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Account(TimestampMixin, Base):
    __tablename__ = "accounts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    # Per-account limits set by the operator (`inkmcp accounts limits`); NULL = the INKMCP_MAX_* default.
    max_projects: Mapped[int | None] = mapped_column(Integer)
    max_services_per_project: Mapped[int | None] = mapped_column(Integer)
    max_databases: Mapped[int | None] = mapped_column(Integer)
    max_concurrent_builds: Mapped[int | None] = mapped_column(Integer)
    database_tiers: Mapped[list[str] | None] = mapped_column(
        ARRAY(String(32)), comment="tiers this account may choose; NULL = INKMCP_DATABASE_TIERS"
    )


class ApiKey(TimestampMixin, Base):
    """Only the SHA-256 of a key is stored; the key itself is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(24), comment="first characters, for operators to tell keys apart")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str | None] = mapped_column(String(120))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Project(TimestampMixin, Base):
    """Project names are unique across all accounts (index on lower(name)): they form the hostnames
    `<service>.<project>.<domain>`, so a per-account name would let one account take over another's URL."""

    __tablename__ = "projects"
    __table_args__ = (Index("uq_projects_name", text("lower(name)"), unique=True),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    repo_url: Mapped[str | None] = mapped_column(Text, comment="for display: credentials replaced by ***")
    provider_ref: Mapped[dict[str, Any]] = mapped_column(
        server_default=text("'{}'::jsonb"), comment=PROVIDER_REF_COMMENT
    )


class Service(TimestampMixin, Base):
    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_services_project_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    service_type: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(32))
    repo_url: Mapped[str] = mapped_column(Text, comment="for display: credentials replaced by ***")
    repo_url_enc: Mapped[bytes | None] = mapped_column(
        LargeBinary, comment="Fernet token of the full repo_url, set only when it carries credentials"
    )
    ref: Mapped[str | None] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(
        default=dict, comment="build_command, start_command, port, resources as last requested"
    )
    live_deployment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL", use_alter=True, name="fk_services_live_deployment")
    )
    url: Mapped[str | None] = mapped_column(Text)
    provider_ref: Mapped[dict[str, Any]] = mapped_column(
        server_default=text("'{}'::jsonb"), comment=PROVIDER_REF_COMMENT
    )
    # --- envfix (migration 0013): set while delete removes the service at the compute platform, outside the
    # service's lock; deploy_app refuses the service meanwhile (DeployService.remove_service)
    removing_since: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="set while the service is being deleted; deploy_app refuses it meanwhile"
    )
    # --- end envfix


class Deployment(TimestampMixin, Base):
    __tablename__ = "deployments"
    __table_args__ = (Index("ix_deployments_service_created", "service_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(32), comment="a Step value from providers.compute.base")
    commit: Mapped[str | None] = mapped_column(String(64))
    config_hash: Mapped[str] = mapped_column(String(64), comment="hash of commit + settings + env, for no-op detection")
    plan: Mapped[dict[str, Any] | None] = mapped_column(comment="the BuildPlan used, as JSON")
    url: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    provider_ref: Mapped[dict[str, Any]] = mapped_column(
        server_default=text("'{}'::jsonb"), comment=PROVIDER_REF_COMMENT
    )
    # Issue 8 item 7 (migration 0005, inkmcp/core/leases.py): the replica running this deployment's pipeline.
    claimed_by: Mapped[str | None] = mapped_column(String(128), comment="replica id holding the pipeline's lease")
    lease_until: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="the lease expires then (database clock); any replica may take over after"
    )
    lease_epoch: Mapped[int] = mapped_column(
        BigInteger, server_default=text("0"), comment="fencing token: +1 per claim; writes need the current one"
    )


class SharedKey(Base):
    """Keys every replica must agree on (the MAC key of no-op detection, a check value of the encryption keys),
    sealed by the encryption keys: issue 8 item 7, migration 0005, inkmcp/store/crypto.py."""

    __tablename__ = "shared_keys"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value_enc: Mapped[bytes] = mapped_column(LargeBinary, comment="Fernet token of the key")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DeploymentEvent(Base):
    """Status history of a deployment: one row per step transition."""

    __tablename__ = "deployment_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class EnvVar(Base):
    """`scope` is '*' for project-wide values, else a service id; service values win."""

    __tablename__ = "env_vars"
    __table_args__ = (UniqueConstraint("project_id", "scope", "key", name="uq_env_vars_scope_key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(256))
    value_enc: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Database(TimestampMixin, Base):
    """A project's add-ons: at most one Postgres (managed or byo) and one Redis (migration 0007 added `kind`)."""

    __tablename__ = "databases"
    __table_args__ = (UniqueConstraint("project_id", "kind", name="uq_databases_project_kind"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(
        String(16), server_default=text("'postgres'"), comment="postgres | redis: one of each per project"
    )
    provider: Mapped[str] = mapped_column(String(32))
    tier: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(Text)
    credentials_enc: Mapped[bytes] = mapped_column(LargeBinary, comment="Fernet token of DatabaseCredentials JSON")


class AuditEntry(Base):
    """Every mutating call: who, what, when, result. Arguments are stored redacted."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_account_at", "account_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(64), comment="key prefix or 'cli'")
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(Text)
    arguments: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[str] = mapped_column(String(16), comment="ok | error")
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PlacementNode(Base):
    """A run server placement has used or an operator drained (migration 0006; inkmcp/placement/records.py).
    The row a reservation locks before it re-checks the node's room."""

    __tablename__ = "placement_nodes"

    uuid: Mapped[str] = mapped_column(String(64), primary_key=True, comment="Coolify server uuid")
    name: Mapped[str | None] = mapped_column(Text, comment="last known Coolify server name")
    draining_since: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="set by inkmcp nodes drain: no new placements here"
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Placement(TimestampMixin, Base):
    """Where a service runs and what it reserves there (one row per placed service; migration 0006)."""

    __tablename__ = "placements"

    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    node_uuid: Mapped[str] = mapped_column(String(64), ForeignKey("placement_nodes.uuid"), index=True)
    mode: Mapped[str] = mapped_column(String(32))
    memory_mb: Mapped[int] = mapped_column(Integer, comment="limit asked (all processes), MiB")
    millicpus: Mapped[int] = mapped_column(Integer, comment="limit asked (all processes), millicores")
    charged_memory_mb: Mapped[int] = mapped_column(Integer, comment="what counts against the node")
    charged_millicpus: Mapped[int] = mapped_column(Integer, comment="what counts against the node")
    labels: Mapped[dict[str, Any]] = mapped_column(
        server_default=text("'{}'::jsonb"), comment="node labels the service requires"
    )
    spread: Mapped[bool] = mapped_column(server_default=text("false"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CoolifyRequestBudget(Base):
    """Coolify API rate budget shared by InkMCP replicas (migration 0004; inkmcp/coolify/budget.py): the sliding
    log of a Coolify user's granted requests, changed only by the SQL function inkmcp_coolify_budget_take."""

    __tablename__ = "coolify_request_budget"
    __table_args__ = {"comment": "Coolify API rate budget shared by InkMCP replicas; see inkmcp.coolify.budget"}

    key: Mapped[str] = mapped_column(
        Text, primary_key=True, comment="sha256:<hex> of the token, or an explicit user key"
    )
    stamps: Mapped[list[float]] = mapped_column(
        ARRAY(Double), server_default=text("'{}'::double precision[]"),
        comment="epoch seconds of the grants still counting against the limit",
    )
    paused_until: Mapped[float] = mapped_column(
        Double, server_default=text("0"), comment="epoch seconds: nobody sends before (a 429's Retry-After)"
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# Tables of other packages on this Base (their migrations: 0008 GitHub and web sessions, 0009 tenant database backups,
# 0010 credits). Importing them here puts them in Base.metadata wherever the schema is used: the alembic comparison
# in the migrations' tests, and crypto.encrypted_columns, which finds every *_enc column to re-encrypt on rotation.
from inkmcp.billing import models as _billing_models  # noqa: E402, F401
from inkmcp.dbbackup import models as _dbbackup_models  # noqa: E402, F401
from inkmcp.github import models as _github_models  # noqa: E402, F401
from inkmcp.web import models as _web_models  # noqa: E402, F401
