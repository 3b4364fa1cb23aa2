"""The `database_backups` table (migration 0009), on the control plane's declarative Base.

One row per dump of a project's managed Postgres. The dump file's path is derived from ids only
(`<backup dir>/<project id hex>/<backup id hex>.dump`), never from anything a tenant typed, and the
row keeps its size and SHA-256 so a truncated or altered file is refused before a restore touches
the database.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from inkmcp.store.models import Base, new_id

KINDS = ("scheduled", "manual", "pre-restore")
STATUSES = ("running", "ok", "failed")


class DatabaseBackup(Base):
    """A dump of one project's managed Postgres. Deleted with its project (the files go with the project's
    backup directory, swept by the scheduler)."""

    __tablename__ = "database_backups"
    __table_args__ = (Index("ix_database_backups_project_created", "project_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    database_name: Mapped[str] = mapped_column(Text, comment="the dumped database (its provider's external_id)")
    provider: Mapped[str] = mapped_column(String(32), comment="the database provider that served it")
    kind: Mapped[str] = mapped_column(String(16), comment="scheduled | manual | pre-restore")
    status: Mapped[str] = mapped_column(String(16), comment="running | ok | failed")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    file: Mapped[str] = mapped_column(Text, comment="path relative to the backup dir: <project hex>/<id hex>.dump")
    error: Mapped[str | None] = mapped_column(Text, comment="why a failed dump failed (no secrets)")
