"""Placement against the control-plane Postgres: reservations that survive restarts, shared by every replica,
and never overbooked when replicas place at the same time.

Concurrency scheme (one transaction per decision, READ COMMITTED):

1. `pg_advisory_xact_lock(SERVICE, hashtext(service_id))`: one decision per service at a time, so a repeated
   or concurrent reserve of the same service finds the first one's row (idempotent) instead of racing it.
2. If the demand spreads: `pg_advisory_xact_lock(PROJECT, hashtext(project_id))`, so two services of one
   project placed at once see each other (anti-affinity holds under concurrency too).
3. Read every node's load (one `GROUP BY` over `placements`) and decide in memory (`engine.Engine`).
4. Lock the chosen node's `placement_nodes` row (`INSERT … ON CONFLICT DO NOTHING`, then
   `SELECT … FOR UPDATE`), and *re-read that node's load* in a new statement: in READ COMMITTED it sees every
   reservation committed by whoever held the lock before, because they hold it until they commit. If the
   node no longer fits (another replica took the room, or an operator started draining it), the transaction
   ends and the decision is made again with fresh loads (up to `reserve_attempts` times, then PlacementBusy).
5. Write the row and commit, which releases the locks.

Locks are always taken in the order service → project → node and a transaction holds at most one node lock,
so decisions cannot deadlock. A release is a plain `DELETE` (it only frees room; a decision that read the
higher load is merely conservative). Only this module writes `placements`.

Affinity: a demand with `require_node` (the Coolify provider pins a project's services to the server of its
database, adapter.py) is decided by the same steps; the engine refuses it with the reason when that node does
not take it. A service already placed on another node is reported (PlacementError), never moved by a reserve.

A project's database reservation (its memory/CPU counted on its node, `reserve_database`) lives in
`projects.provider_ref["placement-db"]`, not in `placements`: that table is keyed by service (foreign key to
`services`) and the migration chain is fixed. One JSON entry per project, written only here under the same
locks (a per-project key in the service lock space, then the node's row), summed into every node's load by
`_LOADS`, and gone with the project row (or `release_database`).
"""

from __future__ import annotations

import dataclasses
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import delete, func, literal, select, text, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.build.plan import Mode
from inkmcp.placement.engine import Engine, NodeLoad, demand_of, pinned, reservation_for, same_demand
from inkmcp.placement.models import (
    Demand,
    DrainPlan,
    Move,
    Node,
    NodeSource,
    PlacedServer,
    PlacementBusy,
    PlacementError,
    Policy,
    Reservation,
    millicpus,
)
from inkmcp.providers.compute.base import Resources, ServiceKey
from inkmcp.store.models import Placement, PlacementNode, Project
from inkmcp.store.statements import statement_pool

SERVICE_LOCK = zlib.crc32(b"inkmcp.placement.service") & 0x7FFFFFFF
PROJECT_LOCK = zlib.crc32(b"inkmcp.placement.project") & 0x7FFFFFFF
"""First key of the two-key advisory locks (readable in pg_locks.classid)."""

DB_REF_KEY = "placement-db"
"""Placement's entry in `projects.provider_ref`: the project database's reservation (module docstring)."""

NIL = "00000000-0000-0000-0000-000000000000"

_LOADS = """
SELECT node_uuid,
       sum(charged_memory_mb), sum(charged_millicpus),
       coalesce(sum(charged_memory_mb) FILTER (WHERE mode <> 'on_demand'), 0),
       coalesce(sum(charged_millicpus) FILTER (WHERE mode <> 'on_demand'), 0),
       coalesce(max(memory_mb) FILTER (WHERE mode = 'on_demand'), 0),
       coalesce(max(millicpus) FILTER (WHERE mode = 'on_demand'), 0),
       count(*) FILTER (WHERE kind = 's'), count(*) FILTER (WHERE kind = 'd')
FROM (
    SELECT 's' AS kind, node_uuid, mode, memory_mb, millicpus, charged_memory_mb, charged_millicpus
    FROM placements
    WHERE service_id <> :sid {node_filter}
    UNION ALL
    SELECT 'd', r ->> 'node_uuid', 'persistent', (r ->> 'memory_mb')::int, (r ->> 'millicpus')::int,
           (r ->> 'charged_memory_mb')::int, (r ->> 'charged_millicpus')::int
    FROM (SELECT provider_ref -> 'placement-db' AS r FROM projects
          WHERE provider_ref -> 'placement-db' IS NOT NULL AND id <> :pid) d
    WHERE true {db_node_filter}
) x
GROUP BY node_uuid
"""


# The same statements for `reserve` on the statement pool's psycopg connection (PlacementService.reserve).
_PG_LOCK = "SELECT pg_advisory_xact_lock(%s::int, hashtext(%s::text))"
_PG_DRAINING = "SELECT uuid FROM placement_nodes WHERE draining_since IS NOT NULL"
_PG_ROW = ("SELECT service_id, project_id, node_uuid, mode, memory_mb, millicpus, charged_memory_mb, "
           "charged_millicpus, labels, spread FROM placements WHERE service_id = %s")
_PG_PROJECT_NODES = ("SELECT node_uuid, count(*) FROM placements WHERE project_id = %s AND service_id <> %s "
                     "GROUP BY node_uuid")
_PG_NODE_ROW = "INSERT INTO placement_nodes (uuid, name) VALUES (%s, %s) ON CONFLICT (uuid) DO NOTHING"
_PG_NODE_LOCK = "SELECT draining_since FROM placement_nodes WHERE uuid = %s FOR UPDATE"
_PG_WRITE = (
    "INSERT INTO placements (service_id, project_id, node_uuid, mode, memory_mb, millicpus, charged_memory_mb, "
    "charged_millicpus, labels, spread) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (service_id) DO UPDATE SET project_id = excluded.project_id, node_uuid = excluded.node_uuid, "
    "mode = excluded.mode, memory_mb = excluded.memory_mb, millicpus = excluded.millicpus, "
    "charged_memory_mb = excluded.charged_memory_mb, charged_millicpus = excluded.charged_millicpus, "
    "labels = excluded.labels, spread = excluded.spread, updated_at = now()")


def _pg_params(sql: str) -> str:
    return sql.replace(":sid", "%(sid)s").replace(":pid", "%(pid)s").replace(":node", "%(node)s")


_PG_LOADS_ALL = _pg_params(_LOADS.format(node_filter="", db_node_filter=""))
_PG_LOADS_NODE = _pg_params(_LOADS.format(node_filter="AND node_uuid = :node",
                                          db_node_filter="AND r ->> 'node_uuid' = :node"))


def _load_rows(rows: Sequence[Sequence[Any]]) -> dict[str, NodeLoad]:
    return {r[0]: NodeLoad(int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]), int(r[8]))
            for r in rows}


def _reservation_of(row: Sequence[Any]) -> Reservation:
    """`_reservation` of a `_PG_ROW` row."""
    return Reservation(service_id=str(row[0]), project_id=str(row[1]), node_uuid=row[2], mode=Mode(row[3]),
                       memory_mb=row[4], millicpus=row[5], charged_memory_mb=row[6], charged_millicpus=row[7],
                       labels=dict(row[8] or {}), spread=row[9])


async def _pg_lock_node(conn: psycopg.AsyncConnection[Any], pipe: psycopg.AsyncPipeline, node: Node,
                        exclude_service: uuid.UUID) -> tuple[bool, dict[str, NodeLoad]]:
    """`_lock_node` and the node's fresh load in one round trip: PostgreSQL runs the load statement after the lock
    statement was granted, on a snapshot of its own (READ COMMITTED), so it sees every reservation committed by
    whoever held the lock before. (False, …) if the node is draining (checked under the lock)."""
    await conn.execute(_PG_NODE_ROW, (node.uuid, node.name), prepare=True)
    lock_cur = await conn.execute(_PG_NODE_LOCK, (node.uuid,), prepare=True)
    loads_cur = await conn.execute(_PG_LOADS_NODE, {"sid": exclude_service, "pid": uuid.UUID(NIL),
                                                    "node": node.uuid}, prepare=True)
    await pipe.sync()
    draining = (await lock_cur.fetchone() or (None,))[0]
    return draining is None, _load_rows(await loads_cur.fetchall())


@dataclasses.dataclass(frozen=True, slots=True)
class NodeStatus:
    node: Node
    load: NodeLoad
    not_target: str | None


Affinity = Callable[[Sequence[str]], Awaitable[Mapping[str, str]]]
"""`await affinity(project_ids)` → {project_id: node uuid} for the projects whose services must run on one node
(the Coolify database's server: providers.database.coolify.database_servers_of)."""


class Placer(Protocol):
    """What the Coolify compute provider calls."""

    async def place(self, key: ServiceKey, mode: Mode, resources: Resources) -> PlacedServer: ...

    async def release(self, key: ServiceKey) -> None: ...


def _reservation(row: Placement) -> Reservation:
    return Reservation(service_id=str(row.service_id), project_id=str(row.project_id), node_uuid=row.node_uuid,
                       mode=Mode(row.mode), memory_mb=row.memory_mb, millicpus=row.millicpus,
                       charged_memory_mb=row.charged_memory_mb, charged_millicpus=row.charged_millicpus,
                       labels=dict(row.labels or {}), spread=row.spread)


async def _lock(session: AsyncSession, space: int, key: str) -> None:
    await session.execute(text("SELECT pg_advisory_xact_lock(:space, hashtext(:key))"), {"space": space, "key": key})


async def _loads(session: AsyncSession, exclude_service: str, node_uuid: str | None = None, *,
                 exclude_database: str = NIL) -> dict[str, NodeLoad]:
    """Every node's load (or one node's), services' and projects' databases', leaving out one service's and one
    project database's own reservation (the one being decided again)."""
    sql = _LOADS.format(node_filter="AND node_uuid = :node" if node_uuid else "",
                        db_node_filter="AND r ->> 'node_uuid' = :node" if node_uuid else "")
    params: dict[str, Any] = {"sid": exclude_service, "pid": uuid.UUID(exclude_database)}
    if node_uuid:
        params["node"] = node_uuid
    rows = (await session.execute(text(sql), params)).all()
    return {r[0]: NodeLoad(int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]), int(r[8]))
            for r in rows}


async def _lock_node(session: AsyncSession, node: Node) -> bool:
    """Take the node's row lock; False if the node is draining (checked under the lock)."""
    await session.execute(insert(PlacementNode).values(uuid=node.uuid, name=node.name)
                          .on_conflict_do_nothing(index_elements=["uuid"]))
    draining = (await session.execute(
        select(PlacementNode.draining_since).where(PlacementNode.uuid == node.uuid).with_for_update())).scalar_one()
    return draining is None


async def _with_draining(session: AsyncSession, nodes: list[Node]) -> list[Node]:
    """The node source's nodes with InkMCP's draining marks (placement_nodes) applied."""
    draining = set((await session.execute(
        select(PlacementNode.uuid).where(PlacementNode.draining_since.is_not(None)))).scalars())
    return [dataclasses.replace(n, draining=True) if n.uuid in draining else n for n in nodes]


@dataclasses.dataclass(frozen=True, slots=True)
class Pin:
    """--- overhead8: where a demand must go, read inside `reserve`'s first round trip: `query` (with `params`)
    answers the node's uuid in its first row's first column, or NULL / no row for none; `why` names what is there
    (`Demand.require_why`). The adapter's read of the project's Coolify database server, which was a round trip
    of its own before every first placement."""

    query: str
    params: Sequence[Any]
    why: str


class PlacementService:
    """Placement over the database and a node source: the `Placer` the Coolify provider uses, and the drain
    plan `inkmcp nodes drain` will execute."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], nodes: NodeSource, policy: Policy | None = None,
                 *, attempts: int = 8, before_commit: Callable[[Demand, Node], Awaitable[None]] | None = None) -> None:
        """`before_commit` (tests): awaited after a reservation is written, before its transaction commits, so a
        test can hold the node's lock and show that a second replica waits for it."""
        self._sessions = sessions
        self._source = nodes
        self.policy = policy or Policy()
        self._attempts = attempts
        self._before_commit = before_commit
        self.retries = 0
        """Decisions made again because the chosen node filled up or started draining meanwhile (for tests and
        metrics: non-zero proves replicas really raced)."""

    # -- the Placer protocol -------------------------------------------------------------------------------

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """The control-plane store placement records in (the adapter reads the project's database server)."""
        return self._sessions

    async def place(self, key: ServiceKey, mode: Mode, resources: Resources, *, processes: int = 1,
                    labels: Mapping[str, str] | None = None, spread: bool | None = None,
                    require_node: str | None = None, require_why: str = "", pin: Pin | None = None) -> PlacedServer:
        """Where the service runs: its existing placement (sticky) or a new one, reserved atomically.

        `resources` are per process (one Coolify application each), so `processes` multiplies them. `labels`
        are node labels the service requires; `spread` asks for anti-affinity with the project's services
        (default: the policy's); `require_node` pins it to one node (`Demand.require_node`; `require_why` names
        what is there for the refusal; `pin`: the same read by one statement of the first round trip, see
        `reserve`). Raises PlacementError (nothing fits, the required node does not take
        it, or the service already runs elsewhere: agent-safe message) or PlacementBusy."""
        if processes < 1:
            raise ValueError("processes must be at least 1 (the service's process count)")
        demand = Demand(service_id=key.service_id, project_id=key.project_id, mode=mode,
                        memory_mb=resources.memory_mb * processes, millicpus=millicpus(resources.cpus) * processes,
                        labels=dict(labels or {}), spread=self.policy.spread if spread is None else spread,
                        require_node=require_node, require_why=require_why)
        return await self.reserve(demand, pin=pin)

    async def release(self, key: ServiceKey) -> None:
        await self.release_service(key.service_id)

    # -- reservations --------------------------------------------------------------------------------------

    async def nodes(self) -> list[Node]:
        """The node source's nodes, with InkMCP's draining marks applied."""
        listed = await self._source()
        async with self._sessions() as session:
            return await _with_draining(session, listed)

    async def reserve(self, demand: Demand, *, pin: Pin | None = None) -> PlacedServer:
        """Reserve room for `demand` (idempotent per service; sticky across redeploys). See the module doc.

        One interactive transaction on the statement pool's psycopg connection in pipeline mode (store.statements),
        each step's statements sent together: (1) the service lock, the draining marks and the service's row;
        (2) a new placement's loads (with the project lock and the project's nodes when it spreads); (3) the node's
        row lock and its fresh load, in one round trip but run in that order by PostgreSQL, so the load statement's
        snapshot is taken after the lock was granted (READ COMMITTED); (4) the write with COMMIT. A first placement
        is four round trips where the ORM session took eleven (issue 8, benchmarks/coolify_deploy.py --steps).

        --- overhead8: a new placement's reads of (2) go out with (1), after the service lock in the same pipeline (a
        first placement is what the provider asks for: it reuses the server it recorded), and `pin` (the adapter's
        read of where the project's database lives, `Pin`) is one more statement of (1): three round trips, where
        the adapter's read and these four were five in turn. The project lock of a spreading demand is taken in (1)
        before the pin is known; a pinned demand does not spread, and holding that lock too changes no order
        (service, project, node)."""
        listed = await self._source()
        pool = statement_pool(self._sessions)
        broken = False
        for _ in range(self._attempts):
            try:
                async with pool.connection() as conn, conn.pipeline() as pipe, conn.transaction():
                    placed = await self._decide(conn, pipe, demand, listed, pin)
            except psycopg.OperationalError:
                if broken:
                    raise
                broken = True  # a connection the server closed (restart): once more on a fresh one (idempotent)
                await pool.check()
                continue
            if placed is not None:
                return placed
            self.retries += 1
        raise PlacementBusy("placement is busy (other deployments took the chosen room first); retry shortly")

    async def _decide(self, conn: psycopg.AsyncConnection[Any], pipe: psycopg.AsyncPipeline, demand: Demand,
                      listed: Sequence[Node], pin: Pin | None = None) -> PlacedServer | None:
        """One attempt of `reserve` inside its transaction; None: decide again (the chosen node filled up or
        started draining meanwhile; the transaction commits nothing and releases its locks)."""
        sid = uuid.UUID(demand.service_id)
        await conn.execute(_PG_LOCK, (SERVICE_LOCK, demand.service_id), prepare=True)
        pin_cur = await conn.execute(pin.query, pin.params, prepare=True) if pin is not None else None
        draining_cur = await conn.execute(_PG_DRAINING, prepare=True)
        row_cur = await conn.execute(_PG_ROW, (sid,), prepare=True)
        project_cur = None
        if demand.spread and demand.require_node is None:  # before the pin is known (see `reserve`)
            await conn.execute(_PG_LOCK, (PROJECT_LOCK, demand.project_id), prepare=True)
            project_cur = await conn.execute(_PG_PROJECT_NODES, (uuid.UUID(demand.project_id), sid), prepare=True)
        loads_cur = await conn.execute(_PG_LOADS_ALL, {"sid": sid, "pid": uuid.UUID(NIL)}, prepare=True)
        await pipe.sync()  # round trip 1
        if pin_cur is not None:
            pinned_to = await pin_cur.fetchall()
            if pinned_to and pinned_to[0][0]:
                demand = dataclasses.replace(demand, require_node=str(pinned_to[0][0]), require_why=pin.why)
        draining = {r[0] for r in await draining_cur.fetchall()}
        by_uuid = {n.uuid: dataclasses.replace(n, draining=True) if n.uuid in draining else n for n in listed}
        got = await row_cur.fetchall()
        old = _reservation_of(got[0]) if got else None
        home = by_uuid.get(old.node_uuid) if old else None
        if old is not None and home is not None and home.why_not_target() is None and home.matches(demand.labels):
            if demand.require_node is not None and old.node_uuid != demand.require_node:
                engine = Engine(by_uuid.values(), self.policy)
                engine.track(old)
                raise engine.misplaced(demand, old)  # reported, not moved (engine module docstring)
            if same_demand(old, demand):
                return _placed(home)
            # new limits: resized in place, checked against the node's fresh load under its lock
            free, loads = await _pg_lock_node(conn, pipe, home, sid)
            if not free:
                return None  # it started draining meanwhile: the next attempt moves the service
            engine = Engine([home], self.policy, loads)
            if not engine.fits_on(demand, home.uuid):
                engine.add(old)
                raise engine.resize_refusal(demand)
            await self._pg_write(conn, pipe, demand, home, engine)
            return _placed(home)
        spread = demand.spread and demand.require_node is None  # spreading yields to the requirement
        engine = Engine(by_uuid.values(), self.policy, _load_rows(await loads_cur.fetchall()))
        if project_cur is not None and spread:
            for node_uuid, n in await project_cur.fetchall():
                engine.note_project(demand.project_id, node_uuid, int(n))
        target = engine.choose(demand)
        free, loads = await _pg_lock_node(conn, pipe, target, sid)  # round trip 2
        if not free:
            return None  # it started draining meanwhile: the next attempt reads the mark
        fresh = Engine([target], self.policy, loads)
        if not fresh.fits_on(demand, target.uuid):
            return None  # another replica took the room: decide again with fresh loads
        await self._pg_write(conn, pipe, demand, target, fresh)  # round trip 3, with COMMIT
        return _placed(target, moved=old is not None)

    async def _pg_write(self, conn: psycopg.AsyncConnection[Any], pipe: psycopg.AsyncPipeline, demand: Demand,
                        node: Node, engine: Engine) -> None:
        r = reservation_for(demand, node.uuid, engine.charge(demand))
        await conn.execute(_PG_WRITE, (uuid.UUID(r.service_id), uuid.UUID(r.project_id), r.node_uuid, r.mode.value,
                                       r.memory_mb, r.millicpus, r.charged_memory_mb, r.charged_millicpus,
                                       Jsonb(dict(r.labels)), r.spread), prepare=True)
        if self._before_commit is not None:
            await pipe.sync()  # written (not committed) before the hook runs
            await self._before_commit(demand, node)

    async def _write(self, session: AsyncSession, demand: Demand, node: Node, engine: Engine) -> None:
        r = reservation_for(demand, node.uuid, engine.charge(demand))
        values = {"service_id": uuid.UUID(r.service_id), "project_id": uuid.UUID(r.project_id),
                  "node_uuid": r.node_uuid, "mode": r.mode.value, "memory_mb": r.memory_mb,
                  "millicpus": r.millicpus, "charged_memory_mb": r.charged_memory_mb,
                  "charged_millicpus": r.charged_millicpus, "labels": dict(r.labels), "spread": r.spread}
        stmt = insert(Placement).values(**values)
        await session.execute(stmt.on_conflict_do_update(
            index_elements=["service_id"],
            set_={**{k: stmt.excluded[k] for k in values if k != "service_id"}, "updated_at": text("now()")}))
        if self._before_commit is not None:
            await self._before_commit(demand, node)

    async def release_service(self, service_id: str) -> bool:
        """Give back the service's reservation. Idempotent; True if there was one."""
        async with self._sessions() as session, session.begin():
            got = await session.execute(delete(Placement).where(Placement.service_id == uuid.UUID(service_id)))
            return bool(got.rowcount)  # type: ignore[attr-defined]

    async def placement_of(self, service_id: str) -> Reservation | None:
        async with self._sessions() as session:
            row = await session.get(Placement, uuid.UUID(service_id))
            return _reservation(row) if row is not None else None

    async def status(self) -> list[NodeStatus]:
        """Every node with what is reserved there and why it takes nothing new (None: it does), for operators
        (`inkmcp nodes list`, `inkmcp doctor`): a server Coolify lists but INKMCP_PLACEMENT_NODES does not name
        shows up here as "no capacity configured"."""
        listed = await self._source()
        async with self._sessions() as session:
            nodes = await _with_draining(session, listed)
            loads = await _loads(session, NIL)
        return [NodeStatus(node=n, load=loads.get(n.uuid, NodeLoad()), not_target=n.why_not_target())
                for n in sorted(nodes, key=lambda n: n.name)]

    # -- draining ------------------------------------------------------------------------------------------

    async def resolve(self, name_or_uuid: str) -> Node:
        """A node by Coolify uuid or name (names must be unambiguous)."""
        nodes = await self.nodes()
        for n in nodes:
            if n.uuid == name_or_uuid:
                return n
        named = [n for n in nodes if n.name == name_or_uuid]
        if len(named) == 1:
            return named[0]
        if named:
            raise LookupError(f"{len(named)} servers are named {name_or_uuid!r}; pass the Coolify server uuid instead")
        known = ", ".join(sorted(n.name for n in nodes if not n.is_build_server)) or "none"
        raise LookupError(f"no run server named {name_or_uuid!r} in Coolify; known run servers: {known}")

    async def set_draining(self, node: Node, draining: bool = True) -> None:
        """Mark the node draining (no new placements; existing ones stay until moved) or not. Under the
        node's row lock, so a placement that locks the row afterwards sees it and goes elsewhere."""
        async with self._sessions() as session, session.begin():
            await _lock_node(session, node)
            await session.execute(update(PlacementNode).where(PlacementNode.uuid == node.uuid).values(
                draining_since=datetime.now(UTC) if draining else None, name=node.name, updated_at=text("now()")))

    async def plan_drain(self, name_or_uuid: str, *, mark: bool = True, affinity: Affinity | None = None,
                         affinity_why: str = "its project's database") -> DrainPlan:
        """Mark the node draining and plan its moves (engine.plan_drain over the database's current loads).
        Executing the plan (move one service at a time through the provider, health-check, then
        `commit_move`) is drain.py's job. `mark=False` (a dry run) plans the same without writing the mark.
        `affinity(project_ids)` → {project_id: node uuid} pins those projects' services to a node
        (`Demand.require_node`, named `affinity_why`): pinned to the drained node itself, they are stuck with
        the reason; pinned elsewhere, they move there."""
        node = await self.resolve(name_or_uuid)
        if mark:
            await self.set_draining(node, True)
        nodes = [n if n.uuid != node.uuid else dataclasses.replace(n, draining=True) for n in await self.nodes()]
        async with self._sessions() as session:
            loads = await _loads(session, NIL)
            rows = (await session.execute(select(Placement).where(Placement.node_uuid == node.uuid))).scalars().all()
            on_node = [_reservation(r) for r in rows]
            projects = {r.project_id for r in on_node}
            counts = (await session.execute(text(
                "SELECT project_id::text, node_uuid, count(*) FROM placements WHERE project_id::text = ANY(:p) "
                "GROUP BY project_id, node_uuid"), {"p": sorted(projects)})).all() if projects else []
        if node.uuid not in {n.uuid for n in nodes}:
            nodes.append(node)
        engine = Engine(nodes, self.policy, loads)
        moving = {r.service_id for r in on_node}
        for r in on_node:
            engine.track(r)
        for project_id, node_uuid, n in counts:
            on_this = sum(1 for r in on_node if r.project_id == project_id and r.node_uuid == node_uuid)
            if n - on_this:
                engine.note_project(project_id, node_uuid, int(n) - on_this)
        pins = dict(await affinity(sorted(projects))) if affinity is not None and projects else {}
        demands = {r.service_id: pinned(demand_of(r), pins.get(r.project_id), affinity_why)
                   for r in on_node if pins.get(r.project_id)}
        plan = engine.plan_drain(node.uuid, demands)
        assert {m.service_id for m in plan.moves} | {s for s, _ in plan.stuck} == moving
        return plan

    async def commit_move(self, move: Move) -> Reservation:
        """Record that a service now runs on `move.to_node` (after the provider moved it and it passed its
        health check): the same locks and fresh-load check as a reservation, so a move never overbooks the
        target even if other placements happened since the plan was made. Idempotent."""
        nodes = {n.uuid: n for n in await self.nodes()}
        target = nodes.get(move.to_node)
        if target is None:
            raise PlacementError("the drain target is no longer a run server; plan the drain again",
                                 detail=f"node {move.to_node} not listed by Coolify")
        demand = demand_of(move.reservation)
        async with self._sessions() as session, session.begin():
            await _lock(session, SERVICE_LOCK, demand.service_id)
            row = await session.get(Placement, uuid.UUID(demand.service_id), populate_existing=True)
            if row is None:
                raise PlacementError("the service was removed while its node was draining; nothing to move",
                                     detail=f"service {demand.service_id}")
            if row.node_uuid == target.uuid:
                return _reservation(row)
            if not await _lock_node(session, target):
                raise PlacementError("the drain target started draining too; plan the drain again",
                                     detail=f"node {target.name} ({target.uuid})")
            engine = Engine([target], self.policy, await _loads(session, demand.service_id, target.uuid))
            if not engine.fits_on(demand, target.uuid):
                raise PlacementError("the drain target has no room any more (other services were placed there "
                                     "since the plan); plan the drain again", detail=f"node {target.name}")
            await self._write(session, demand, target, engine)
            return reservation_for(demand, target.uuid, engine.charge(demand))

    # -- a project's database ------------------------------------------------------------------------------

    async def reserve_database(self, project_id: str, node_uuid: str, memory_mb: int, cpus: float, *,
                               check: bool = True) -> Reservation:
        """Count the project's database (its limits, charged as persistent: a database never sleeps) on its
        node. Idempotent. `check=True` (before the database is created): under the node's lock against its fresh
        load, refused with PlacementError when the node is draining, not a target, or has no room. `check=False`
        records it as is: for a database that already runs there (made before reservations existed, or found
        again), where counting what really runs beats refusing. A different node or size replaces the entry."""
        if memory_mb < 1 or cpus <= 0:
            raise ValueError("a database reservation needs memory_mb >= 1 and cpus > 0 (its Coolify limits)")
        demand = Demand(service_id=f"database:{project_id}", project_id=project_id, mode=Mode.persistent,
                        memory_mb=memory_mb, millicpus=millicpus(cpus), require_node=node_uuid,
                        require_why="the project's services")
        charge = self.policy.charge(Mode.persistent, demand.memory_mb, demand.millicpus)
        value = {"node_uuid": node_uuid, "memory_mb": demand.memory_mb, "millicpus": demand.millicpus,
                 "charged_memory_mb": charge.memory_mb, "charged_millicpus": charge.millicpus}
        nodes = {n.uuid: n for n in await self.nodes()} if check else {}
        pid = uuid.UUID(project_id)
        async with self._sessions() as session, session.begin():
            await _lock(session, SERVICE_LOCK, demand.service_id)
            current = (await session.execute(select(Project.provider_ref[DB_REF_KEY]).where(
                Project.id == pid))).one_or_none()
            if current is None:
                raise LookupError(f"no project {project_id}: it was deleted, so its database is not reserved")
            if current[0] == value:
                return _db_reservation(project_id, value)
            if check:
                node = nodes.get(node_uuid)
                if node is None or not await _lock_node(session, node):
                    raise _database_refusal(demand, "is not a run server InkMCP can place on now" if node is None
                                            else "is being drained", node, None)
                engine = Engine([node], self.policy, await _loads(session, NIL, node.uuid,
                                                                  exclude_database=project_id))
                if not engine.fits_on(demand, node.uuid):
                    why = node.why_not_target()
                    raise _database_refusal(demand, f"cannot take it ({why})" if why else "has no room for it",
                                            node, engine.room(node.uuid, True) if why is None else None)
            entry = func.jsonb_build_object(DB_REF_KEY, literal(value, JSONB))
            await session.execute(update(Project).where(Project.id == pid).values(
                provider_ref=func.coalesce(Project.provider_ref, text("'{}'::jsonb")).op("||")(entry)))
        return _db_reservation(project_id, value)

    async def release_database(self, project_id: str) -> bool:
        """Give back the project database's reservation (the database was deleted). Idempotent."""
        async with self._sessions() as session, session.begin():
            await _lock(session, SERVICE_LOCK, f"database:{project_id}")
            got = await session.execute(update(Project).where(
                Project.id == uuid.UUID(project_id), Project.provider_ref[DB_REF_KEY].is_not(None)).values(
                provider_ref=Project.provider_ref.op("-")(DB_REF_KEY)))
            return bool(got.rowcount)  # type: ignore[attr-defined]

    async def database_reservation(self, project_id: str) -> Reservation | None:
        async with self._sessions() as session:
            got = (await session.execute(select(Project.provider_ref[DB_REF_KEY]).where(
                Project.id == uuid.UUID(project_id)))).scalar_one_or_none()
        return _db_reservation(project_id, got) if isinstance(got, dict) and got else None


def _db_reservation(project_id: str, value: Mapping[str, Any]) -> Reservation:
    return Reservation(service_id=f"database:{project_id}", project_id=project_id, node_uuid=str(value["node_uuid"]),
                       mode=Mode.persistent, memory_mb=int(value["memory_mb"]), millicpus=int(value["millicpus"]),
                       charged_memory_mb=int(value["charged_memory_mb"]),
                       charged_millicpus=int(value["charged_millicpus"]))


def _database_refusal(demand: Demand, problem: str, node: Node | None,
                      room: tuple[int, int] | None) -> PlacementError:
    """Agent-safe: the database's server is where the project's services run (it is reachable only there)."""
    free = f" (it has {room[0]} MiB of memory and {room[1] / 1000:g} CPUs free)" if room else ""
    name = f"{node.name} ({node.uuid})" if node else demand.require_node
    return PlacementError(
        f"the project's database must run on the run server of the project's services (it is reachable only on "
        f"that server's network), and that server {problem}{free}; the database asks {demand.memory_mb} MiB of "
        f"memory and {demand.cpus:g} CPUs. Fix: ask the operator to make room on that server (add capacity, or "
        "drain other services off it) or to stop draining it.",
        detail=f"database of project {demand.project_id} on {name}")


def _placed(node: Node, *, moved: bool = False) -> PlacedServer:
    return PlacedServer(server_uuid=node.uuid, wildcard_base=node.wildcard_base, node_name=node.name, moved=moved)
