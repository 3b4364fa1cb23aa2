"""Per-account limits: projects, services per project, databases, concurrent builds, database tiers.

Defaults come from settings (INKMCP_MAX_*); an operator overrides them per account with
`inkmcp accounts limits NAME ...`, stored in nullable `accounts.max_*` / `accounts.database_tiers`
columns (NULL = the default).

Counting is race-free because every check runs in the same transaction as the insert it guards,
after `lock_account` took the account row FOR NO KEY UPDATE: two creations for one account queue on
that lock, so the second counts the first's row. NO KEY UPDATE (not UPDATE) keeps the lock from
blocking inserts that merely reference the account (audit rows, API keys), which take KEY SHARE.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from inkmcp.errors import InkError, NotFound
from inkmcp.providers.database.base import Tier
from inkmcp.store.models import Account

if TYPE_CHECKING:
    from inkmcp.settings import Settings


class LimitReached(InkError):
    """An account is at one of its limits; the message names the limit and the setting."""

    code = "limit_reached"


class LimitDefaults(BaseModel):
    """The settings' defaults (INKMCP_MAX_*, INKMCP_DATABASE_TIERS), as core sees them."""

    model_config = ConfigDict(frozen=True)

    max_projects: int = Field(default=20, ge=0)
    max_services_per_project: int = Field(default=10, ge=0)
    max_databases: int = Field(default=5, ge=0)
    max_concurrent_builds: int = Field(default=2, ge=0)
    database_tiers: tuple[Tier, ...] = (Tier.free,)

    @classmethod
    def from_settings(cls, s: Settings) -> LimitDefaults:
        return cls(
            max_projects=s.max_projects_per_account,
            max_services_per_project=s.max_services_per_project,
            max_databases=s.max_databases_per_account,
            max_concurrent_builds=s.max_concurrent_builds_per_account,
            database_tiers=tuple(s.database_tiers),
        )


class AccountLimits(BaseModel):
    """Effective limits of one account, and which of them are per-account overrides."""

    account: str
    max_projects: int
    max_services_per_project: int
    max_databases: int
    max_concurrent_builds: int
    database_tiers: list[Tier]
    overridden: list[str] = Field(default_factory=list, description="fields set for this account, not defaults")


SETTING_OF = {
    "max_projects": "INKMCP_MAX_PROJECTS_PER_ACCOUNT",
    "max_services_per_project": "INKMCP_MAX_SERVICES_PER_PROJECT",
    "max_databases": "INKMCP_MAX_DATABASES_PER_ACCOUNT",
    "max_concurrent_builds": "INKMCP_MAX_CONCURRENT_BUILDS_PER_ACCOUNT",
    "database_tiers": "INKMCP_DATABASE_TIERS",
}
"""Field → the setting holding its default; error messages name it so an operator knows what to raise."""

OVERRIDE_COLUMNS = ("max_projects", "max_services_per_project", "max_databases", "max_concurrent_builds",
                    "database_tiers")


def effective(account: Account, defaults: LimitDefaults) -> AccountLimits:
    values: dict[str, object] = {}
    overridden = []
    for name in OVERRIDE_COLUMNS:
        own = getattr(account, name)
        if own is not None:
            overridden.append(name)
            values[name] = [Tier(t) for t in own] if name == "database_tiers" else own
        else:
            default = getattr(defaults, name)
            values[name] = list(default) if name == "database_tiers" else default
    return AccountLimits(account=account.name, overridden=overridden, **values)  # type: ignore[arg-type]


async def lock_account(
    s: AsyncSession, account_id: uuid.UUID, defaults: LimitDefaults, *, lock: bool = True
) -> AccountLimits:
    """Lock the account row until the caller's transaction ends and return its limits.

    `lock=False` only reads them, for advisory checks that are repeated under the lock later.
    """
    q = select(Account).where(Account.id == account_id)
    if lock:
        q = q.with_for_update(key_share=True)  # renders FOR NO KEY UPDATE (module docstring: why not UPDATE)
    account = (await s.execute(q)).scalar_one_or_none()
    if account is None:
        raise NotFound("the account no longer exists.", argument="account", fix="ask the operator for a new key")
    return effective(account, defaults)


def reached(what: str, limit: int, field: str, action: str) -> LimitReached:
    """`account limit reached: 20 projects (INKMCP_MAX_PROJECTS_PER_ACCOUNT); delete a project or ...`."""
    return LimitReached(
        f"account limit reached: {limit} {what} ({SETTING_OF[field]}); {action} or ask the operator to raise it "
        f"(inkmcp accounts limits <account> --{field.replace('_', '-')} N)."
    )
