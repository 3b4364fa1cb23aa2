"""`inkmcp nodes drain NAME`: move every service off a run server, one at a time, each health-checked.

Why one at a time: each move builds a copy of the service on another server (Coolify's deployment queue, the
build server and the 200 requests/minute budget are shared with tenants' own deploys), and stopping at the
first failure leaves at most one service in an unusual state, which the report names.

Steps (`Drainer.drain`):
1. Mark the node draining (placement_nodes: no new service is placed there from now on) and take the plan
   (`PlacementService.plan_drain`: targets chosen largest service first, each move applied to the plan before
   the next, so running them in order never overbooks a target). `--dry-run` plans without the mark.
   A service whose project has a Coolify database is pinned to the database's server (it is reachable only on
   that server's network): if the database is on the drained node, the service is reported `cannot move`
   with the reason and never moved (its DATABASE_URL would break); if it is elsewhere, the service moves there
   (or is stuck when that server has no room). Moving a database is out of scope: an operator does that first
   (or undrains). The dry run shows the same.
2. Services to move: the plan's, plus any the node still runs although placement already points elsewhere
   (a crash between placement's commit and the service's record) and any with an unfinished move from this
   node (a crash after the switch, before the old applications were deleted). Those come first.
3. Per service: refuse while one of its deployments is in progress (run the drain again later); build the live
   deployment's request from core's rows; `CoolifyComputeProvider.move` copies it to the target and waits until
   the copy is healthy. Only then, in the `record` the provider calls to switch the service (`_Switch`), under the
   service's lock: the service must be unchanged since the move began (same ref, same live deployment, no
   deployment started), placement's `commit_move` moves the reservation (checked against the target's fresh
   load under its node lock), and the service's ref, `services.url` and the live deployment's url are written in
   one transaction. Anything else → `MoveConflict`, the provider deletes the copy, the old one keeps serving.
4. Stop at the first failure; the report says what moved (with the new URL), what did not, and why.
Running the drain again continues: moved services are no longer on the node, an interrupted move re-attaches
to what it recorded (the live deployment's ref, under "move"). `undrain` clears the mark.

An env change racing the switch: core's env path holds the service's ref-switch lock for the whole change
(`leases.hold_ref_switch`), and the switch takes it first (`lock_ref_switch`): a switch waits for a running env change
and then finds the service's ref changed (`MoveConflict`, the copy is deleted, the drain is run again); an env change
that starts after the switch reads the new ref.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.build.plan import BuildPlan, Mode, ServiceType
from inkmcp.core.leases import lock_ref_switch, lock_service
from inkmcp.core.views import TERMINAL
from inkmcp.placement.adapter import DATABASE_WHY
from inkmcp.placement.models import DrainPlan, Move, Node, PlacementError
from inkmcp.placement.records import PlacementService
from inkmcp.providers.compute.base import (
    ComputeError,
    DnsRecord,
    ProviderRef,
    ProviderUnavailable,
    RefScope,
    ReleaseRequest,
    Resources,
    ServiceKey,
    Step,
)
from inkmcp.providers.compute.coolify.mapping import PlacedServer
from inkmcp.providers.compute.coolify.provider import CoolifyComputeProvider, MoveConflict
from inkmcp.providers.database.coolify import database_servers_of
from inkmcp.store.models import Deployment, Project, Service
from inkmcp.store.refs import check_ref, ref_of, save_ref


class DrainSettings(BaseSettings):
    """`INKMCP_DRAIN_*`. Read by the CLI (`inkmcp nodes drain`); nothing in `inkmcp serve` uses them."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_DRAIN_", extra="ignore")

    settle_seconds: float = Field(
        default=90.0, ge=0, le=3600,
        description="how long a moved application without a health check must keep running before the move "
                    "counts as healthy (Coolify refreshes container statuses about once a minute)")  # fmt: skip


Progress = Callable[[str], Awaitable[None] | None]


@dataclass
class MoveOutcome:
    """One row of the report."""

    service_id: str
    service: str
    """`service.project` as agents know it."""
    from_node: str
    to_node: str | None
    status: str
    """planned | moved | failed | not moved | cannot move | not tried"""
    detail: str = ""
    url: str | None = None
    seconds: float = 0.0


@dataclass
class DrainReport:
    node: str
    node_uuid: str
    dry_run: bool
    outcomes: list[MoveOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.status in ("moved", "planned") for o in self.outcomes)

    @property
    def moved(self) -> list[MoveOutcome]:
        return [o for o in self.outcomes if o.status == "moved"]


@dataclass
class _Item:
    service_id: str
    to_node: str | None
    move: Move | None
    """placement's move to commit (None: placement already points at `to_node`)."""
    stuck: str | None = None


class Drainer:
    """Runs drains over placement, the Coolify provider and core's rows (module docstring)."""

    def __init__(self, placement: PlacementService, provider: CoolifyComputeProvider,
                 sessions: async_sessionmaker[AsyncSession], *, fetch_url: Callable[[Service], str],
                 settle_seconds: float = 90.0) -> None:  # fmt: skip
        """`fetch_url`: core's `ProjectService.fetch_url` (the repo URL with its credentials, decrypted), which
        the new applications are created with."""
        self.placement = placement
        self.provider = provider
        self.sessions = sessions
        self.fetch_url = fetch_url
        self.settle_seconds = settle_seconds

    async def affinity(self, project_ids: Sequence[str]) -> dict[str, str]:
        """The server each project's Coolify database lives on: its services must stay beside it."""
        return await database_servers_of(self.sessions, project_ids)

    @classmethod
    def from_runtime(cls, runtime: Any, settings: DrainSettings | None = None) -> Drainer:
        """From `open_runtime(settings, serve=False)`: the provider is `runtime.compute`, placement the service
        behind its `place` (app.py wires `CoolifyPlacement(PlacementService(...))`)."""
        provider = runtime.compute
        placement = getattr(getattr(provider, "place", None), "service", None)
        if not isinstance(provider, CoolifyComputeProvider) or not isinstance(placement, PlacementService):
            raise LookupError("draining needs the Coolify compute provider with placement: set INKMCP_COOLIFY_URL "
                              "and INKMCP_COOLIFY_TOKEN (and INKMCP_PLACEMENT_NODES) as for `inkmcp serve`")
        s = settings or DrainSettings()
        return cls(placement, provider, runtime.store.sessionmaker, fetch_url=runtime.platform.projects.fetch_url,
                   settle_seconds=s.settle_seconds)

    # -- the drain ---------------------------------------------------------------------------------------

    async def drain(self, name_or_uuid: str, *, dry_run: bool = False, progress: Progress | None = None) -> DrainReport:
        node = await self.placement.resolve(name_or_uuid)
        plan = await self.placement.plan_drain(node.uuid, mark=not dry_run, affinity=self.affinity,
                                               affinity_why=DATABASE_WHY)
        names = {n.uuid: n.name for n in await self.placement.nodes()}
        items = await self._items(node, plan)
        report = DrainReport(node=node.name, node_uuid=node.uuid, dry_run=dry_run)
        labels = await self._labels([i.service_id for i in items])
        stopped = False
        for item in items:
            out = MoveOutcome(item.service_id, labels.get(item.service_id, item.service_id), node.name,
                              names.get(item.to_node or "", item.to_node), "planned")
            report.outcomes.append(out)
            if item.stuck is not None:
                out.status, out.detail = "cannot move", item.stuck
                continue
            if dry_run:
                continue
            if stopped:
                out.status, out.detail = "not tried", "the drain stopped at an earlier failure"
                continue
            await _say(progress, f"moving {out.service} from {node.name} to {out.to_node} ...")
            started = time.monotonic()
            try:
                out.url, dns = await self._move(item, names, progress)
                out.status = "moved"
                out.detail = f"now at {out.url}" if out.url else "moved (no route)"
                if dns:  # custom domains: their CNAME pointed at the old server's host
                    out.detail += "; the owner must update DNS: " + ", ".join(
                        f"{r.name} {r.type} {r.value}" for r in dns)
            except (ComputeError, PlacementError, LookupError) as e:
                out.status = "not moved"
                out.detail = str(e)
                stopped = True
            out.seconds = round(time.monotonic() - started, 2)
            await _say(progress, f"{out.service}: {out.status} ({out.detail.splitlines()[0] if out.detail else ''})")
        return report

    async def undrain(self, name_or_uuid: str) -> Node:
        node = await self.placement.resolve(name_or_uuid)
        await self.placement.set_draining(node, False)
        return node

    async def _items(self, node: Node, plan: DrainPlan) -> list[_Item]:
        """Interrupted moves first (step 2 of the module docstring), then the plan's order; stuck ones last."""
        name = self.provider.name
        planned = {m.service_id: m for m in plan.moves}
        async with self.sessions() as s:
            on_node = set((await s.execute(select(Service.id).where(
                Service.provider_ref[name]["server_uuid"].astext == node.uuid))).scalars())
            moving = set((await s.execute(select(Service.id).join(
                Deployment, Service.live_deployment_id == Deployment.id).where(
                Deployment.provider_ref[name]["move"]["from"].astext == node.uuid))).scalars())
        items: list[_Item] = []
        for sid in sorted(str(x) for x in (on_node | moving)):
            if sid in planned:
                continue
            placed = await self.placement.placement_of(sid)
            if placed is not None and placed.node_uuid != node.uuid:
                items.append(_Item(sid, placed.node_uuid, None))
        items += [_Item(m.service_id, m.to_node, m) for m in plan.moves]
        items += [_Item(sid, None, None, stuck=why) for sid, why in plan.stuck]
        return items

    async def _labels(self, service_ids: list[str]) -> dict[str, str]:
        if not service_ids:
            return {}
        async with self.sessions() as s:
            rows = (await s.execute(select(Service.id, Service.name, Project.name).join(
                Project, Service.project_id == Project.id).where(
                Service.id.in_([uuid.UUID(x) for x in service_ids])))).all()
        return {str(i): f"{sv}.{p}" for i, sv, p in rows}

    async def _move(self, item: _Item, names: dict[str, str],
                    progress: Progress | None) -> tuple[str | None, list[DnsRecord]]:
        """One service: the provider's move with the switching `record`; the new URL and custom domains' DNS."""
        assert item.to_node is not None
        targets = {n.uuid: n for n in await self.placement.nodes()}
        target = targets.get(item.to_node)
        if target is None or not target.wildcard_base:
            raise LookupError(f"the target server {names.get(item.to_node, item.to_node)} is gone or has no wildcard "
                              "domain any more; run the drain again to plan anew")
        sid = uuid.UUID(item.service_id)
        async with self.sessions() as s:
            svc = await s.get(Service, sid)
            if svc is None:
                raise LookupError("the service was deleted meanwhile; run the drain again")
            project = await s.get(Project, svc.project_id)
            assert project is not None
            busy = await _busy(s, sid)
            dep = await s.get(Deployment, svc.live_deployment_id) if svc.live_deployment_id else None
            if dep is None:
                dep = (await s.execute(select(Deployment).where(Deployment.service_id == sid)
                                       .order_by(Deployment.created_at.desc()).limit(1))).scalar_one_or_none()
        if busy:
            raise ProviderUnavailable("a deployment of this service is in progress; run the drain again once it "
                                      "finished (moving now would race it)")
        key = ServiceKey(account_id=str(project.account_id), project_id=str(project.id), service_id=str(svc.id),
                         project_name=project.name, service_name=svc.name,
                         project_ref=ref_of(project.provider_ref, self.provider.name),
                         service_ref=ref_of(svc.provider_ref, self.provider.name))
        switch = _Switch(self, sid, svc.live_deployment_id, key.service_ref, item.move)
        if dep is None:  # never deployed: nothing runs, only the reservation (and a recorded server) moves
            ref = {k: v for k, v in key.service_ref.items() if k not in ("server_uuid", "wildcard_base")}
            await switch(RefScope.service, ref)
            return None, []
        resources = (svc.settings or {}).get("resources")
        spec = ReleaseRequest(
            deployment_id=str(dep.id), key=key, service_type=ServiceType(svc.service_type), mode=Mode(svc.mode),
            plan=BuildPlan.model_validate(dep.plan), commit=dep.commit or "",
            resources=Resources.model_validate(resources) if resources else Resources(),
            repo_url=SecretStr(self.fetch_url(svc)), checkout_dir=None,
            deployment_ref=ref_of(dep.provider_ref, self.provider.name))

        async def step(s: Step, detail: str) -> None:
            await _say(progress, f"  {s.value}: {detail}")

        async def record(scope: RefScope, ref: ProviderRef) -> None:
            if scope == RefScope.service:
                await switch(scope, ref)
            else:
                rows = {RefScope.deployment: dep.id, RefScope.project: project.id}
                await save_ref(self.sessions, RefScope(scope).value, rows[RefScope(scope)], self.provider.name, ref)

        result = await self.provider.move(key, spec, PlacedServer(uuid=target.uuid, wildcard_base=target.wildcard_base),
                                          step, record, settle_seconds=self.settle_seconds)
        if item.move is not None and switch.done is False:  # already switched before a crash: placement too?
            await self.placement.commit_move(item.move)
        return result.url, list(result.dns_records)


class _Switch:
    """The `record(RefScope.service, ...)` of a move: the compare-and-swap switch (module docstring, step 3)."""

    def __init__(self, drainer: Drainer, service_id: uuid.UUID, live: uuid.UUID | None, expected: ProviderRef,
                 move: Move | None) -> None:  # fmt: skip
        self.d = drainer
        self.service_id = service_id
        self.live = live
        self.expected = json.loads(json.dumps(expected))
        self.move = move
        self.done = False

    async def __call__(self, scope: RefScope, ref: ProviderRef) -> None:
        name = self.d.provider.name
        value = json.loads(check_ref(ref))
        async with self.d.sessions.begin() as s:
            await lock_ref_switch(s, self.service_id)  # an env change running now finishes first (then: conflict)
            await lock_service(s, self.service_id)
            # NO KEY UPDATE: placement's own transaction below writes a row referencing this one (FK, KEY SHARE)
            row = (await s.execute(select(Service).where(Service.id == self.service_id)
                                   .with_for_update(key_share=True))).scalar_one_or_none()
            if row is None:
                raise MoveConflict("the service was deleted during the move")
            if ref_of(row.provider_ref, name) != self.expected or row.live_deployment_id != self.live:
                raise MoveConflict("the service changed during the move (a deployment or env change); the new copy "
                                   "was deleted, run the drain again")
            if await _busy(s, self.service_id):
                raise MoveConflict("a deployment of the service started during the move; the new copy was deleted, "
                                   "run the drain again once it finished")
            if self.move is not None:
                try:
                    await self.d.placement.commit_move(self.move)
                except PlacementError as e:
                    raise MoveConflict(f"placement refused the target: {e}") from None
            entry = func.jsonb_build_object(name, literal(value, JSONB))
            await s.execute(update(Service).where(Service.id == self.service_id).values(
                provider_ref=Service.provider_ref.op("||")(entry), url=value.get("url")))
            if self.live is not None:
                await s.execute(update(Deployment).where(Deployment.id == self.live).values(url=value.get("url")))
        self.done = True


async def _busy(s: AsyncSession, service_id: uuid.UUID) -> int:
    return int((await s.execute(select(func.count()).select_from(Deployment).where(
        Deployment.service_id == service_id, Deployment.status.not_in(sorted(TERMINAL))))).scalar_one())


async def _say(progress: Progress | None, line: str) -> None:
    if progress is None:
        return
    got = progress(line)
    if got is not None:
        await got
