"""Scheduled backups while `inkmcp serve` runs: every INKMCP_BACKUP_INTERVAL_S seconds a set in INKMCP_BACKUP_DIR,
the oldest beyond INKMCP_BACKUP_KEEP deleted after each success, reported in /metrics.

`start_scheduled(stack, settings, metrics)` is the one call the composition root makes (inkmcp/app.py); the task is
cancelled when the runtime closes (a set being written then is removed: sets appear only when complete).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from inkmcp.backup.settings import BackupSettings
from inkmcp.metrics import Metrics
from inkmcp.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class BackupMetrics:
    last_success: Gauge
    last_size: Gauge
    last_duration: Gauge
    failures: Counter

    @classmethod
    def register(cls, metrics: Metrics) -> BackupMetrics:
        r = metrics.registry
        return cls(
            last_success=Gauge("inkmcp_backup_last_success_timestamp_seconds",
                               "Unix time the last scheduled backup set was completed", registry=r),
            last_size=Gauge("inkmcp_backup_last_size_bytes", "Size of the last backup set", registry=r),
            last_duration=Gauge("inkmcp_backup_last_duration_seconds", "How long the last backup took", registry=r),
            failures=Counter("inkmcp_backup_failures", "Scheduled backups that failed", registry=r),
        )


async def run_once(settings: Settings, backup: BackupSettings, metrics: BackupMetrics) -> None:
    from inkmcp.backup.create import create_backup, prune

    target = backup.target(settings.data_dir)
    try:
        created = await asyncio.to_thread(create_backup, settings, target, keys_to=backup.keys_to)
    except Exception:
        metrics.failures.inc()
        log.exception("scheduled backup failed")
        return
    metrics.last_success.set(time.time())
    metrics.last_size.set(created.size)
    metrics.last_duration.set(created.seconds)
    removed = await asyncio.to_thread(prune, target, backup.keep)
    log.info("scheduled backup written", extra={"set": str(created.path), "bytes": created.size,
                                                "seconds": round(created.seconds, 2), "pruned": len(removed)})


def start_scheduled(stack: AsyncExitStack, settings: Settings, metrics: Metrics,
                    backup: BackupSettings | None = None) -> asyncio.Task[None] | None:
    """Start the schedule (None when INKMCP_BACKUP_INTERVAL_S is 0); stopped when `stack` closes."""
    backup = backup or BackupSettings()
    if backup.interval_s <= 0:
        return None
    gauges = BackupMetrics.register(metrics)

    async def loop() -> None:
        while True:
            await asyncio.sleep(backup.interval_s)  # the schedule's period, not a synchronisation
            await run_once(settings, backup, gauges)

    task = asyncio.ensure_future(loop())

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
    log.info("scheduled backups every %g s into %s, keeping %d", backup.interval_s, backup.target(settings.data_dir),
             backup.keep)
    return task
