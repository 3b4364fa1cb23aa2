"""Tables of the GitHub integration (migration 0008), on the store's shared declarative `Base`.

Kept out of inkmcp/store/models.py so the GitHub work owns its schema; `inkmcp.store.models` imports this module
at its end so `Base.metadata` (alembic's comparison, `crypto.encrypted_columns` for key rotation) sees them.
The only secret is `github_identities.token_enc` (a Fernet token of the user's GitHub access token).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, LargeBinary, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from inkmcp.store.models import Base


class GitHubIdentity(Base):
    """The GitHub user an account signed in as. Bound by GitHub's numeric user id, which survives a rename of
    the login; one GitHub user ↔ one account."""

    __tablename__ = "github_identities"

    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    github_id: Mapped[int] = mapped_column(BigInteger, unique=True, comment="GitHub's numeric user id")
    login: Mapped[str] = mapped_column(String(39), comment="GitHub login at the last sign-in")
    token_enc: Mapped[bytes] = mapped_column(LargeBinary, comment="Fernet token of the user's GitHub access token")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class GitHubTracking(Base):
    """A service deployed from a GitHub repository: which repo and branch a push redeploys it for."""

    __tablename__ = "github_tracking"
    __table_args__ = (Index("ix_github_tracking_repo_branch", "repo", "branch"),)

    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), primary_key=True)
    repo: Mapped[str] = mapped_column(Text, comment="owner/name, lowercase (GitHub names are case-insensitive)")
    branch: Mapped[str] = mapped_column(Text, comment="branch a push to which redeploys the service")
    auto_deploy: Mapped[bool] = mapped_column(server_default=text("true"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class GitHubDelivery(Base):
    """Webhook deliveries seen (X-GitHub-Delivery): a replayed delivery id is ignored."""

    __tablename__ = "github_deliveries"

    delivery_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event: Mapped[str] = mapped_column(String(64))
    repo: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DeploymentTrigger(Base):
    """Which push started a deployment (deployments made by deploy_app have no row)."""

    __tablename__ = "deployment_triggers"

    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), server_default=text("'github_push'"))
    delivery_id: Mapped[str] = mapped_column(String(64))
    repo: Mapped[str] = mapped_column(Text)
    branch: Mapped[str] = mapped_column(Text)
    commit: Mapped[str | None] = mapped_column(String(64), comment="head commit of the push")
    pusher: Mapped[str | None] = mapped_column(Text, comment="GitHub login of who pushed")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class GitHubDeployKey(Base):
    """The deploy key of a service built from a private GitHub repository under Coolify compute (migration 0011).

    One key pair per service (inkmcp/github/deploy_keys.py says why): the private key sealed here and registered in
    Coolify (`coolify_key_uuid`), the public key added read-only to the repository on GitHub (`github_key_id`).
    Each id is recorded as soon as it is known, before the next remote step, so a retry after a crash finds and
    reuses what was made instead of adding a second key. The only secret is `private_key_enc`."""

    __tablename__ = "github_deploy_keys"

    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"),
                                                  comment="whose GitHub token added (and removes) the key")
    repo: Mapped[str] = mapped_column(Text, comment="owner/name the key is (to be) added to")
    public_key: Mapped[str] = mapped_column(Text, comment="OpenSSH public key line")
    private_key_enc: Mapped[bytes] = mapped_column(LargeBinary, comment="Fernet token of the OpenSSH private key")
    github_key_id: Mapped[int | None] = mapped_column(BigInteger, comment="GitHub's deploy key id, once added")
    coolify_key_uuid: Mapped[str | None] = mapped_column(String(64), comment="Coolify private key uuid, once there")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
