"""Server-side record of each signed-in browser (table `web_sessions`, migration 0008).

Why a table and not only a signed cookie: a cookie that carries the whole session cannot be withdrawn, so a
cookie copied before logout would keep working until it expires. The cookie carries a random token; only its
SHA-256 is stored (a leaked database row is not a working cookie), and logout deletes the row, which ends the
session on every replica at once.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from inkmcp.store.models import Base, TimestampMixin, new_id


class WebSession(TimestampMixin, Base):
    __tablename__ = "web_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(
        String(64), unique=True, comment="SHA-256 of the session token the signed cookie carries"
    )
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
