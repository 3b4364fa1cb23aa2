"""Which provider `database={"type":"postgres"}` uses: the configured default.

Why a function of its own: the composition root knows which providers are configured (the embedded or
`INKMCP_TENANT_DATABASE_URL` server always; Neon when `INKMCP_NEON_API_KEY` is set; Coolify-managed Postgres
when its provider exists), and core must get one default for new databases plus every provider by name, so a
database made under an earlier default is still dropped by the provider that made it
(`DatabaseService(..., default, byo, limits, providers=all)`).

Rule: an explicit choice wins (and must name a configured provider); otherwise Neon when configured (the plan's
primary: "InkMCP provisions Postgres via Neon"), else Coolify-managed Postgres when configured, else our own
server. Configuring a key is enough to switch, as issue 8 item 8 asks ("Neon's key likewise").
"""

from __future__ import annotations

from inkmcp.errors import InkError
from inkmcp.providers.database.base import DatabaseProvider

CHOICES = ("postgres", "neon", "coolify")


def choose_default(own: DatabaseProvider, *, neon: DatabaseProvider | None = None,
                   coolify: DatabaseProvider | None = None, choice: str | None = None,
                   setting: str = "INKMCP_DATABASE_PROVIDER") -> tuple[DatabaseProvider, dict[str, DatabaseProvider]]:
    """(default provider, every configured managed provider by its `name`)."""
    configured: dict[str, DatabaseProvider] = {"postgres": own}
    if neon is not None:
        configured["neon"] = neon
    if coolify is not None:
        configured["coolify"] = coolify
    by_name = {p.name: p for p in configured.values()}
    if choice:
        if choice not in CHOICES:
            raise InkError(f"unknown database provider {choice!r}", argument=setting,
                           fix=f"set {setting} to one of {', '.join(CHOICES)}, or unset it to pick automatically")
        if choice not in configured:
            needs = {"neon": "INKMCP_NEON_API_KEY", "coolify": "INKMCP_COOLIFY_URL and INKMCP_COOLIFY_TOKEN"}
            raise InkError(f"the {choice} database provider is chosen but not configured", argument=setting,
                           fix=f"set {needs.get(choice, choice)}, or choose a configured one "
                               f"({', '.join(configured)})")
        return configured[choice], by_name
    for name in ("neon", "coolify", "postgres"):
        if name in configured:
            return configured[name], by_name
    raise AssertionError("unreachable: our own server is always configured")
