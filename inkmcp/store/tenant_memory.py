"""How much memory one backend of the embedded tenant server may take: one tenant's query must fail, not crash all.

The tenant server's cgroup caps all backends together (tenant_server.confine_tenant_server). But `work_mem` is a
tenant's to SET, so one `SET work_mem = '4GB'` and a big hash aggregate grew a single backend until the kernel
OOM-killed it at the group's cap; Postgres then treats the server's shared memory as corrupt and ends *every*
session on the server, every tenant's, to run crash recovery (a denial of service on the other tenants, repeatable
at will). An address-space limit (RLIMIT_AS) on the postmaster, inherited by every backend it forks, turns the
same query into Postgres's own `out of memory` error in that session (palloc checks malloc's answer), and the
other tenants' sessions do not notice.

The limit is per process: the server's shared memory (mapped in every backend; `postgres -C shared_memory_size`
before start; after a crash the postmaster unmaps the old segment before it maps a new one), plus slack for the
binary, its libraries and the JIT, plus the budget (INKMCP_TENANT_PG_BACKEND_MEMORY_MB). It is set by
starting `pg_ctl` under util-linux's `prlimit`: a process may lower its own limits without privileges, where
setting another process's limits needs CAP_SYS_RESOURCE (which containers often drop). A server adopted with
another limit is restarted once (embedded.EmbeddedPostgres.start).

What it does not do: many backends of one tenant, each under its limit, can still add up to the group's cap (then
the kernel kills one, as before); the default budget keeps a free-tier role (5 connections) under it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

MIB = 1 << 20
SLACK_MB = 256
"""Per backend beyond shared memory and the budget: postgres and its libraries (~15 MiB), the LLVM JIT's (~120)."""
DEFAULT_SHARE = 8
"""Unset budget: the server's memory cap / this (a free-tier role's 5 connections then stay within the cap)."""
MIN_BUDGET_MB = 64


def backend_budget_mb(configured: int | None, server_cap_mb: int) -> int:
    """The configured budget (0 = no limit), else a share of the server's memory cap."""
    if configured is not None:
        return configured
    return max(MIN_BUDGET_MB, server_cap_mb // DEFAULT_SHARE)


def configured_budget_mb() -> int:
    """This configuration's budget: INKMCP_TENANT_PG_BACKEND_MEMORY_MB, else a share of the server's memory cap."""
    from inkmcp.settings import TenantPostgresSettings
    from inkmcp.store.tenant_server import default_caps

    settings = TenantPostgresSettings()
    return backend_budget_mb(settings.backend_memory_mb, default_caps(settings.cpus, settings.memory_mb)[1])


def address_space_limit(shared_memory_mb: int, budget_mb: int) -> int | None:
    """RLIMIT_AS in bytes for the postmaster and every backend; None when the budget is 0 (no limit)."""
    if budget_mb <= 0:
        return None
    return (shared_memory_mb + SLACK_MB + budget_mb) * MIB


def parse_shared_memory_mb(output: str) -> int | None:
    """`postgres -C shared_memory_size` prints the size in MB (e.g. `143`); None when it printed anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*(MB)?\s*", output)
    return int(match.group(1)) if match else None


def limited_argv(argv: list[str], limit: int | None) -> list[str]:
    """`argv` started under the address-space limit (soft and hard: a backend cannot raise it again)."""
    prlimit = shutil.which("prlimit", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if limit is None or prlimit is None:
        return argv
    return [prlimit, f"--as={limit}", "--", *argv]


def address_space_limit_of(pid: int) -> int | None:
    """The running process's RLIMIT_AS (soft) in bytes, None when unlimited or unreadable."""
    try:
        text = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Max address space"):
            soft = line.split()[3]
            return None if soft == "unlimited" else int(soft)
    return None
