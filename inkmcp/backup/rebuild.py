"""Rebuilding a live deployment whose files are gone (after `inkmcp backup restore`), from its recorded commit.

Called by `DeployService.restore_all` (marked block, issue 10) when the compute provider builds from checkouts
and could not restore a live deployment. The deployment keeps its id, record and history: the provider's release
is idempotent per deployment id and builds it again from a fresh checkout of the same commit (from the set's copy
of the repository when the restore brought one, sources.py), with the same plan, env and URL. Nothing is added to
the deployment history (the drill checks that nothing is gained). At most two rebuild at once: a machine coming
back should not start every build at the same moment on a small box.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from typing import TYPE_CHECKING, Any

from inkmcp.backup.sources import rebuild_checkout

if TYPE_CHECKING:
    from inkmcp.core.deployments import DeployService

log = logging.getLogger(__name__)
_slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


async def rebuild_live(deploys: DeployService, dep: Any, svc: Any, project: Any) -> None:
    async with _slots.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(2)):
        work = deploys._checkouts / uuid.uuid4().hex
        data_dir = deploys._checkouts.parent.parent
        try:
            workspace = await deploys._compute.source_workspace(str(project.id))
            origin = await rebuild_checkout(data_dir, str(project.id), dep.commit, deploys._projects.fetch_url(svc),
                                            work, workspace=workspace, policy=deploys._sources)
            request = await deploys._release_request(dep, svc, project, work)

            async def progress(step: Any, detail: str) -> None:
                log.info("rebuild %s: %s %s", svc.name, getattr(step, "value", step), detail)

            await deploys._compute.release(request, progress,
                                           deploys._recorder(dep.id, svc.id, project.id))
            log.info("rebuilt service from %s", origin, extra={"service": str(svc.id), "commit": dep.commit[:12]})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not rebuild service; redeploy it", extra={"service": str(svc.id)})
        finally:
            shutil.rmtree(work, ignore_errors=True)
