"""Billing configuration: off unless INKMCP_PRICES is set.

With billing off nothing is metered and nothing is refused, so a server without prices behaves exactly as it did
before issue 13. Amounts are integer minor units of the operator's currency (cents for EUR/USD).

One part runs with billing off too, on purpose: migration 0012's statement triggers on `services`, which keep each
service's rate segment (`billing_segments`) when its mode, memory or live deployment changes. They cost ~0.07 ms
of database time per statement that changes nothing billable and ~0.3 ms per one that does (EXPLAIN ANALYZE,
2026-12-01; a deploy runs 3-4 statements on `services`), and one small row per rate change. Turning them off with
billing would be a per-database switch driven by a per-process setting: one replica without INKMCP_PRICES would stop
the segments of replicas that charge, and switching billing on later would need a reconciliation of every
service's segment history. Kept, the segments are right on the day billing is switched on.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from inkmcp.errors import settings_from_env

MAX_PRICE = 100_000
"""Keeps every charge computation inside 64-bit integers (price x 16 GiB x 1 h x 10^6 < 2^63)."""


class Prices(BaseModel):
    """INKMCP_PRICES: what one unit of each resource costs, in integer minor units (0 = free)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    persistent: int = Field(
        default=0, ge=0, le=MAX_PRICE, description="per hour per reserved GiB of memory of a persistent service"
    )
    on_demand: int = Field(default=0, ge=0, le=MAX_PRICE, description="per awake hour of an on_demand service")
    static: int = Field(default=0, ge=0, le=MAX_PRICE, description="per hour of a static site")
    build_minute: int = Field(default=0, ge=0, le=MAX_PRICE, description="per minute of build step")
    db_gb_month: int = Field(
        default=0, ge=0, le=MAX_PRICE, description="per GB (10^9 bytes) of database storage per 30-day month"
    )


class BillingSettings(BaseSettings):
    """INKMCP_PRICES and the metering, credit and cap settings (docs/billing.md)."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_", extra="ignore")

    prices: Annotated[Prices | None, NoDecode] = Field(
        default=None, description="JSON object of integer minor units; unset = billing off (nothing metered/refused)"
    )
    metering_interval_s: int = Field(default=60, ge=1, le=3600, description="length of one charged interval")
    metering_catchup_intervals: int = Field(
        default=1440, ge=1, description="intervals a replica charges after a gap (all replicas down); older are lost"
    )
    starter_credits: int = Field(default=0, ge=0, description="granted once to every account (minor units)")
    grace_s: float = Field(
        default=3600.0, ge=0, description="how long persistent services of an account out of credits keep running"
    )
    monthly_cap: int | None = Field(
        default=None, ge=0, description="default spend cap per calendar month (UTC), minor units; unset = no cap"
    )
    public_url: str | None = Field(
        default=None, description="where users reach this server; the refusal message links <it>/dashboard"
    )
    retry_breaker_failures: int = Field(
        default=5, ge=0, description="identical deployments (commit, settings, env) failing at the same step this "
        "many times within the window make the next identical deploy_app refused; 0 = off",
    )
    retry_breaker_window_s: float = Field(default=3600.0, gt=0, description="the breaker's window, seconds")
    rate_limit_per_minute: float = Field(
        default=30.0, ge=0,
        description="mutating calls per account per minute (token bucket, shared by replicas); 0 = off",
    )
    rate_limit_burst: int = Field(default=10, ge=1, description="mutating calls an account may make at once")
    db_size_every_s: float = Field(
        default=600.0, gt=0, description="how often database sizes are measured for storage charges"
    )

    @field_validator("prices", mode="before")
    @classmethod
    def _parse_prices(cls, value: Any) -> Any:
        if value is None or isinstance(value, (dict, Prices)):
            return value
        text = str(value).strip()
        if not text:
            return None
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON ({e.msg} at character {e.pos})") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object such as {\"persistent\": 2, \"on_demand\": 3}")
        for key, v in parsed.items():
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"price {key!r} must be an integer number of minor units, got {v!r}")
        return parsed

    @property
    def enabled(self) -> bool:
        return self.prices is not None

    def dashboard_hint(self, account: str) -> str:
        """How to add credits: the dashboard when the server has a public URL, else the operator command."""
        if self.public_url:
            return f"add credits at {self.public_url.rstrip('/')}/dashboard"
        return (f"ask the operator to run `inkmcp credits grant --account {account} --amount N --reason TEXT` "
                "(or raise the cap: `inkmcp credits cap`)")


def load_billing_settings() -> BillingSettings:
    """The settings from the environment; a bad value is an InkError naming the variable and what to set (for
    INKMCP_PRICES an example, for the others their description)."""
    return settings_from_env(BillingSettings, "INKMCP_", "docs/billing.md", {"prices": PRICES_FIX})


PRICES_FIX = ('set e.g. INKMCP_PRICES=\'{"persistent": 2, "on_demand": 3, "static": 1, "build_minute": 1, '
              '"db_gb_month": 10}\' (non-negative integers, minor units), or unset it to turn billing off')
