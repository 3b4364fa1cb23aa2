"""Helpers shared by tests/replicas/test_load_coolify.py and benchmarks/coolify_deploy.py: two replica processes
over one database and a Coolify stand-in run in a thread of the calling process (so its faults can be armed and
its counters read directly; the replicas only see its HTTP API), and the check of InkMCP's records against the
stand-in's state."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from inkmcp.coolify.standin import CoolifyStandin
from inkmcp.store.db import migrate, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.models import Account, Deployment, Service
from tests.replicas.conftest import Cluster, wait_for
from tests.store import conftest as _store_fixtures

PROCESSES = {"web", "worker"}
CLIENT_TIMEOUT = 2.0  # seconds one request may take in the replicas (REPLICA_COOLIFY_TIMEOUT); delays exceed it
UUID = re.compile(r"[a-z0-9]{24}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Coolified:
    """A cluster whose replicas use the in-thread stand-in."""

    cluster: Cluster
    standin: CoolifyStandin
    token: str

    async def deploy(self, replica_index: int, account: str, project: str, message: str = "one",
                     repo: str | None = None) -> str:
        view = await self.cluster.replicas[replica_index].call(
            "deploy", account=account, repo=repo or self.cluster.repo(), project=project, message=message, wait=0)
        return str(view["deployment_id"])


@contextlib.asynccontextmanager
async def coolified(control_pg: EmbeddedPostgres, *, standin_kw: dict[str, Any] | None = None,
                    replica_env: Callable[[str], dict[str, str]] | None = None) -> AsyncIterator[Coolified]:
    """A fresh database, the stand-in (one run server), replicas a and b over it; everything stopped after."""
    db_url = _store_fixtures.create_database(control_pg, "loadcf")
    await asyncio.to_thread(migrate, db_url)
    root = Path(tempfile.mkdtemp(prefix="inkmcp-loadcf-"))
    store = await open_store(db_url, pool_size=2, max_overflow=4)
    standin = CoolifyStandin(root / "nodes", **{"rate_limit": 100_000, "build_seconds": 0.2, "status_delay": 0.05,
                                                 "delete_delay": 0.05, "stop_delay": 0.05, **(standin_kw or {})})
    standin.start()
    cluster = Cluster(root, db_url, store)
    try:
        token = standin.add_token("root")
        standin.add_servers(1)
        standin.add_private_key()
        cluster.coolify_url, cluster.coolify_token = standin.url, token
        cluster.env["REPLICA_COOLIFY_TOKEN"] = token
        extra = replica_env or (lambda _url: {})
        await asyncio.gather(cluster.replica("a", **extra(db_url)), cluster.replica("b", **extra(db_url)))
        yield Coolified(cluster, standin, token)
    finally:
        with contextlib.suppress(Exception):
            await cluster.close()
        standin.stop()
        await store.close()
        shutil.rmtree(root, ignore_errors=True)


async def raise_limits(cf: Coolified, accounts: set[str], builds: int) -> None:
    """What an operator does for a busy account (`inkmcp accounts limits NAME --max-concurrent-builds N`): the
    default of 2 concurrent builds per account would refuse most of the calls below with LimitReached."""
    async with cf.cluster.store.sessionmaker.begin() as s:
        s.add_all(Account(name=name, max_concurrent_builds=builds, max_projects=50) for name in sorted(accounts))


async def finished(cluster: Cluster, dep_id: str, timeout: float = 60.0) -> Deployment:
    async def done() -> Deployment | None:
        dep = await cluster.deployment(dep_id)
        return dep if dep.status in ("live", "failed") else None

    return await wait_for(done, timeout, f"deployment {dep_id} finished")  # type: ignore[no-any-return]


async def service_ref(cluster: Cluster, service_id: uuid.UUID) -> dict[str, Any]:
    async with cluster.store.sessionmaker() as s:
        svc = (await s.execute(select(Service).where(Service.id == service_id))).scalar_one()
    assert set(svc.provider_ref) == {"coolify"}, svc.provider_ref
    return dict(svc.provider_ref["coolify"])


async def assert_matches_standin(cf: Coolified, dep: Deployment, *, live: bool = True) -> None:
    """The record of `dep`'s service against the stand-in's state (module docstring)."""
    s = cf.standin
    ref = await service_ref(cf.cluster, dep.service_id)
    async with cf.cluster.store.sessionmaker() as db:
        project_id = (await db.execute(select(Service.project_id).where(Service.id == dep.service_id))).scalar_one()
    with s._lock:
        s._advance()
        apps = [(str(a.fields.get("name")).rsplit("-", 1)[-1], a) for a in s.applications.values()
                if str(a.fields.get("name", "")).startswith(f"{dep.service_id}-") and a.delete_at is None]
        builds = {a.uuid: [d for d in s.deployments.values() if d.application_uuid == a.uuid and not d.restart_only]
                  for _, a in apps}
        projects = [p.uuid for p in s.projects.values() if p.name == f"inkmcp-{project_id}"]
    assert len(projects) == 1, f"Coolify projects for InkMCP project {project_id}: {projects}"
    processes = sorted(process for process, _ in apps)
    assert processes == sorted(PROCESSES), (  # one application per process, no orphan beside the recorded one
        f"applications per process: {processes}; recorded {ref.get('apps')}; in Coolify "
        f"{[(p, a.uuid, len(builds[a.uuid])) for p, a in apps]}")
    by_process = dict(apps)
    assert ref["apps"] == {p: a.uuid for p, a in by_process.items()}, (ref["apps"], by_process)
    if not live:
        return
    assert ref["live"] == str(dep.id) and ref["live_commit"] == dep.commit, ref
    for process, app in by_process.items():
        mine = builds[app.uuid]
        assert [b.status for b in mine] == ["finished"], (process, [(b.status, b.commit) for b in mine])
        assert app.fields.get("git_commit_sha") == dep.commit, (process, app.fields.get("git_commit_sha"))
        assert app.container is not None and app.container.commit == dep.commit, process
        assert app.container.deployment_uuid == ref["live_deployments"][process] == mine[0].deployment_uuid
        assert app.container.env.get("MESSAGE") is not None, process


def assert_clean_wire(s: CoolifyStandin) -> None:
    assert s.request_violations == [], s.request_violations[:5]
    assert s.response_violations == [], s.response_violations[:5]
