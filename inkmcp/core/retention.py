"""How long finished deployments are kept: each service's newest ones always, older ones until they are old enough.

Why: every `deploy_app` that is not a no-op writes a deployment row (its plan as JSON, the URL, the error) and a
history of step events, and nothing ever removed them. An agent that redeploys on every change — the normal way to
work — grows its services' history without bound, and with it every query that reads it and every backup.

A finished deployment (`live` or `failed`) is deleted, with its events and triggers (their foreign keys cascade),
only when all of these hold:
- it is not among its service's newest `keep` deployments (the history `list_deployments` shows, and the hashes
  deploy_app's no-op check and the retry breaker compare: those look at recent deployments only);
- it finished more than `days` ago (billing rates a deployment's build minutes from its row after the day it
  finished; a late rating run still finds it);
- it is not its service's live deployment (what `restore_all` starts again after a restart).
Deployments still on their way are never touched (their pipelines and leases own them).

Pruned in bounded batches by every replica's lease maintenance (`DeployService._maintenance`), at most once per
`every_seconds`: concurrent replicas delete the same rows at worst, which is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

PRUNE = text("""
DELETE FROM deployments WHERE id IN (
  SELECT d.id FROM (
    SELECT id, service_id, status, finished_at,
           row_number() OVER (PARTITION BY service_id ORDER BY created_at DESC, id DESC) AS newest
    FROM deployments) d
  JOIN services sv ON sv.id = d.service_id
  WHERE d.newest > :keep AND d.status IN ('live', 'failed')
    AND d.finished_at < now() - make_interval(secs => :age)
    AND d.id IS DISTINCT FROM sv.live_deployment_id
  LIMIT :batch)
""")


@dataclass(frozen=True)
class Retention:
    """What to keep (from Settings: INKMCP_DEPLOYMENTS_KEPT, INKMCP_DEPLOYMENTS_KEPT_DAYS)."""

    keep: int = 100
    days: float = 30.0
    every_seconds: float = 3600.0
    batch: int = 1000

    async def prune(self, sessions: async_sessionmaker[AsyncSession], *, max_batches: int = 20) -> int:
        """Delete what this policy no longer keeps, a batch per transaction (short locks); how many were deleted."""
        total = 0
        for _ in range(max_batches):
            async with sessions() as s, s.begin():
                deleted = (await s.execute(PRUNE, {"keep": self.keep, "age": self.days * 86400,
                                                   "batch": self.batch})).rowcount  # fmt: skip
            total += deleted
            if deleted < self.batch:
                break
        return total
