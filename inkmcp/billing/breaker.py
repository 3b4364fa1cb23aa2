"""The retry-loop breaker: an agent that repeats the same failing deploy_app is stopped before it builds again.

"The same" is the deployment's config hash (commit, settings and env: the key of deploy_app's no-op detection) on
the same service; "failing" counts failed deployments of that hash within INKMCP_RETRY_BREAKER_WINDOW_S that failed
at the same step as the latest one. Once INKMCP_RETRY_BREAKER_FAILURES of them exist, the next identical deploy_app
is refused with the earlier failures and their cause, until something changes: a new commit, other settings or env
vars make another hash, which the breaker does not count. The window moving on lets the same one through again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.billing.settings import BillingSettings
from inkmcp.errors import InkError

FAILURES = text("""
SELECT d.id, d.commit, COALESCE(d.error, ''), d.finished_at,
       (SELECT e.status FROM deployment_events e WHERE e.deployment_id = d.id AND e.status <> 'failed'
        ORDER BY e.id DESC LIMIT 1) AS step
FROM deployments d
WHERE d.service_id = :service AND d.config_hash = :hash AND d.status = 'failed'
  AND d.created_at >= now() - make_interval(secs => :window)
ORDER BY d.created_at DESC LIMIT :limit
""")


class RetryLoop(InkError):
    code = "retry_loop"


@dataclass
class Breaker:
    sessions: async_sessionmaker[AsyncSession]
    settings: BillingSettings

    async def __call__(self, service_id: uuid.UUID, config_hash: str, project_name: str, service_name: str) -> None:
        n = self.settings.retry_breaker_failures
        if n <= 0:
            return
        async with self.sessions() as s:
            rows = (await s.execute(FAILURES, {"service": service_id, "hash": config_hash,
                                               "window": self.settings.retry_breaker_window_s, "limit": 50})).all()
        if not rows:
            return
        step = rows[0][4]
        same = [r for r in rows if r[4] == step]
        if len(same) < n:
            return
        minutes = self.settings.retry_breaker_window_s / 60
        ids = ", ".join(str(r[0])[:8] for r in same[:5])
        cause = same[0][2].strip().splitlines()[0][:300] if same[0][2].strip() else "no error recorded"
        raise RetryLoop(
            f"deploy_app refused: this exact deployment of {project_name}/{service_name} (commit "
            f"{(same[0][1] or '?')[:12]}, same settings and env vars) already failed {len(same)} times in the last "
            f"{minutes:g} min, each at step {step or '?'} (deployments {ids}); latest cause: {cause}",
            fix=f"change something first: fix the code and push a new commit, or change the settings or env vars; "
                f"get_logs(project_name={project_name!r}, service_name={service_name!r}, scope='build') shows why",
        )
