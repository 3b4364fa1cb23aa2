"""The placement decision, pure and in memory: which node takes a service, and the drain plan of a node.

Heuristic: **best fit by the demand's dominant resource**. A demand's dominant resource is the one it takes
the larger share of (its charge over the capacity of all target nodes, memory vs CPU). Among the nodes where
it fits (both resources, labels, the on_demand wake-up room), the node with the *least* free room of that
resource wins, so big holes stay open for big services and nodes fill up before a new one is touched: fewer
nodes in use, which is what an operator pays for. Decisions are online (services arrive one at a time), so
"decreasing" order applies where we get a batch: a drain plan moves the node's largest services first. The
benchmark (benchmarks/placement.py) compares this with first fit and worst fit on 10,000 services over 500
servers (seed 8, 30/50/20 % persistent/on_demand/static): best fit used 289 servers against a lower bound of
287 (99.3 %), first fit 365 (78.6 %), worst fit all 500 (57.4 %). Opening the *largest* empty node when no node
in use fits matters as much as best fit itself: opening the tightest empty node instead (plain best fit over all
nodes) used 429 servers (66.9 %), because with mixed sizes a small empty node always "fits best".

On request (`Demand.spread`, or `Policy.spread` for all), a project's services go to nodes that hold none of
its services yet (anti-affinity), best fit among those; when every fitting node already holds one, the node
with the fewest of them — spreading is a preference, never a reason to refuse.

Affinity (`Demand.require_node`) is a requirement, not a preference: the service goes to that node or nowhere.
Why: a project's Coolify database is reachable only on its server's Docker network, so a service placed on
another node would start with a DATABASE_URL that does not resolve. Every other rule still applies on that
node (room, labels, draining, build server); the refusal says which rule failed and what can be done, without
naming the server. Spreading yields to it. A service already placed elsewhere is reported (`place` raises), not
moved: a redeploy never moves a service silently; draining its node moves it to the required node.

Speed: target nodes are kept in two sorted lists, by free memory and by free CPU. A decision bisects to the
first node with enough of the dominant resource and walks up until a node also passes the other checks
(the other resource, labels, wake room). In the benchmark the median decision examines 2 nodes (p90 29, p99
~110, when the dominant resource is plentiful but the other is not), so a decision costs a bisect and a few
comparisons, not a loop over 500 nodes in Python. Updating a node's room is a bisect + list insert.

Rules that keep a node from being overbooked:
* a node's charges (persistent: its limits; static: a small fixed amount; on_demand: limits / overcommit
  ratio) never exceed its capacity, in memory and in CPU;
* `hard` charges (persistent, static) plus the largest on_demand service on the node never exceed capacity:
  whichever on_demand service wakes, it fits beside every persistent one at its full limits. The overcommit
  is only among on_demand services, which is what the ratio promises (they sleep most of the time);
* build servers, draining nodes, unusable nodes and nodes without configured capacity are never targets.

This module never talks to a database: `records.py` loads the state, asks here, and reserves atomically.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from inkmcp.build.plan import Mode
from inkmcp.placement.models import (
    Charge,
    Demand,
    DrainPlan,
    Move,
    Node,
    PlacementError,
    Policy,
    Reservation,
)


@dataclass(slots=True)
class NodeLoad:
    """What is reserved on one node (sums of charges), as `records.py` aggregates it from the database."""

    memory_mb: int = 0
    millicpus: int = 0
    hard_memory_mb: int = 0
    hard_millicpus: int = 0
    on_demand_max_memory_mb: int = 0
    on_demand_max_millicpus: int = 0
    services: int = 0
    databases: int = 0
    """Reservations that are not services (a project's Coolify database, records.py): charged as persistent,
    never moved by a drain; they make the node count as in use."""

    @property
    def in_use(self) -> bool:
        return self.services > 0 or self.databases > 0


@dataclass(slots=True)
class _State:
    node: Node
    load: NodeLoad = field(default_factory=NodeLoad)
    od_memory: Counter[int] | None = None  # limits of the tracked on_demand services (made on first use:
    od_cpu: Counter[int] | None = None  # an engine is built per decision, for hundreds of nodes)
    services: set[str] | None = None
    target: bool = False

    @property
    def free_memory(self) -> int:
        return self.node.memory_mb - self.load.memory_mb

    @property
    def free_cpu(self) -> int:
        return self.node.millicpus - self.load.millicpus

    def od_max(self) -> tuple[int, int]:
        m = max(self.od_memory) if self.od_memory else 0
        c = max(self.od_cpu) if self.od_cpu else 0
        return max(m, self.load.on_demand_max_memory_mb), max(c, self.load.on_demand_max_millicpus)

    def fits(self, charge: Charge, demand_memory: int, demand_cpu: int) -> bool:
        n, ld = self.node, self.load
        if ld.memory_mb + charge.memory_mb > n.memory_mb or ld.millicpus + charge.millicpus > n.millicpus:
            return False
        if charge.hard:
            od_m, od_c = self.od_max()
            return (ld.hard_memory_mb + charge.memory_mb + od_m <= n.memory_mb
                    and ld.hard_millicpus + charge.millicpus + od_c <= n.millicpus)
        return ld.hard_memory_mb + demand_memory <= n.memory_mb and ld.hard_millicpus + demand_cpu <= n.millicpus


class Engine:
    """Nodes, what is reserved on them, and the decisions. Not thread-safe (one decision at a time)."""

    def __init__(self, nodes: Iterable[Node], policy: Policy | None = None,
                 loads: Mapping[str, NodeLoad] | None = None) -> None:
        """`loads`: what is already reserved per node uuid (from the database); nodes not named are empty. The
        engine takes the NodeLoad objects over (it updates them as it decides)."""
        self.policy = policy or Policy()
        self._nodes: dict[str, _State] = {}
        for n in nodes:
            if n.uuid in self._nodes:
                raise ValueError(f"node uuid {n.uuid!r} appears twice in the node list")
            got = (loads or {}).get(n.uuid)
            self._nodes[n.uuid] = _State(n, got if got is not None else NodeLoad())
        # (free room, uuid) of target nodes, ascending: nodes in use, and empty nodes apart
        self._by_memory: list[tuple[int, str]] = []
        self._by_cpu: list[tuple[int, str]] = []
        self._empty_memory: list[tuple[int, str]] = []
        self._empty_cpu: list[tuple[int, str]] = []
        self._reservations: dict[str, Reservation] = {}
        self._projects: dict[str, Counter[str]] = {}
        self._label_sets: dict[frozenset[tuple[str, str]], frozenset[str]] = {}
        self._total_memory = 0
        self._total_cpu = 0
        for s in self._nodes.values():  # built in one sort, not 4 inserts per node: an engine per decision
            if s.node.why_not_target() is None:
                s.target = True
                lm, lc = self._lists(s)
                lm.append((s.free_memory, s.node.uuid))
                lc.append((s.free_cpu, s.node.uuid))
                self._total_memory += s.node.memory_mb
                self._total_cpu += s.node.millicpus
        for lst in (self._by_memory, self._by_cpu, self._empty_memory, self._empty_cpu):
            lst.sort()

    # -- state ---------------------------------------------------------------------------------------------

    def _lists(self, s: _State) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        """The index a target node is in: nodes in use, or empty nodes (searched only when no node in use fits)."""
        if s.load.in_use:
            return self._by_memory, self._by_cpu
        return self._empty_memory, self._empty_cpu

    def _unindex(self, s: _State) -> None:
        if s.target:
            lm, lc = self._lists(s)
            _remove(lm, (s.free_memory, s.node.uuid))
            _remove(lc, (s.free_cpu, s.node.uuid))

    def _index(self, s: _State) -> None:
        if s.target:
            lm, lc = self._lists(s)
            bisect.insort(lm, (s.free_memory, s.node.uuid))
            bisect.insort(lc, (s.free_cpu, s.node.uuid))

    def _enter(self, s: _State) -> None:
        s.target = True
        self._index(s)
        self._total_memory += s.node.memory_mb
        self._total_cpu += s.node.millicpus

    def _leave(self, s: _State) -> None:
        if not s.target:
            return
        self._unindex(s)
        s.target = False
        self._total_memory -= s.node.memory_mb
        self._total_cpu -= s.node.millicpus

    def _change(self, s: _State, memory: int, cpu: int, hard: bool, sign: int) -> None:
        """Add (`sign` 1) or take away (-1) one service's charge, keeping the indexes in order."""
        self._unindex(s)
        ld = s.load
        ld.memory_mb += sign * memory
        ld.millicpus += sign * cpu
        ld.services += sign
        if hard:
            ld.hard_memory_mb += sign * memory
            ld.hard_millicpus += sign * cpu
        self._index(s)

    def set_load(self, node_uuid: str, load: NodeLoad) -> None:
        """Replace a node's load with what the database says (before a decision, or after a reserve found the
        node fuller than this engine thought)."""
        s = self._nodes.get(node_uuid)
        if s is None:
            return
        self._unindex(s)
        s.load = replace(load)
        s.od_memory = s.od_cpu = None
        self._index(s)

    def note_project(self, project_id: str, node_uuid: str, count: int = 1) -> None:
        """Record that `count` services of the project are on the node (for spreading), without any load."""
        self._projects.setdefault(project_id, Counter())[node_uuid] += count

    def track(self, reservation: Reservation) -> None:
        """Know a reservation whose charge is already in the node's load (from `set_load`): needed to release
        or move it (drain plans). Also counts it for spreading."""
        self._reservations[reservation.service_id] = reservation
        s = self._nodes.get(reservation.node_uuid)
        if s is not None:
            if s.services is None:
                s.services = set()
            s.services.add(reservation.service_id)
            if not reservation.hard:
                if s.od_memory is None or s.od_cpu is None:
                    s.od_memory, s.od_cpu = Counter(), Counter()
                s.od_memory[reservation.memory_mb] += 1
                s.od_cpu[reservation.millicpus] += 1
        self.note_project(reservation.project_id, reservation.node_uuid)

    def add(self, reservation: Reservation) -> None:
        """Apply an existing reservation (charge and tracking), e.g. when loading every row in memory."""
        s = self._nodes.get(reservation.node_uuid)
        if s is not None:
            self._change(s, reservation.charged_memory_mb, reservation.charged_millicpus, reservation.hard, 1)
        self.track(reservation)

    def release(self, service_id: str) -> Reservation | None:
        """Give back a service's reservation (the service was removed). Repeating it is harmless."""
        r = self._reservations.pop(service_id, None)
        if r is None:
            return None
        s = self._nodes.get(r.node_uuid)
        if s is not None:
            self._change(s, r.charged_memory_mb, r.charged_millicpus, r.hard, -1)
            if s.services is not None:
                s.services.discard(service_id)
            if not r.hard and s.od_memory is not None and s.od_cpu is not None:
                _dec(s.od_memory, r.memory_mb)
                _dec(s.od_cpu, r.millicpus)
        counts = self._projects.get(r.project_id)
        if counts is not None:
            _dec(counts, r.node_uuid)
        return r

    def set_draining(self, node_uuid: str, draining: bool = True) -> None:
        s = self._nodes[node_uuid]
        s.node = _replace_draining(s.node, draining)
        if s.node.why_not_target() is None:
            if not s.target:
                self._enter(s)
        else:
            self._leave(s)

    def node(self, node_uuid: str) -> Node | None:
        s = self._nodes.get(node_uuid)
        return s.node if s else None

    def load(self, node_uuid: str) -> NodeLoad:
        return self._nodes[node_uuid].load

    def reservation(self, service_id: str) -> Reservation | None:
        return self._reservations.get(service_id)

    def nodes_used(self) -> int:
        return sum(1 for s in self._nodes.values() if s.load.in_use)

    # -- decisions -----------------------------------------------------------------------------------------

    def charge(self, demand: Demand) -> Charge:
        return self.policy.charge(demand.mode, demand.memory_mb, demand.millicpus)

    def fits_on(self, demand: Demand, node_uuid: str) -> bool:
        """Whether the demand fits on this node now, by every rule except spreading."""
        s = self._nodes.get(node_uuid)
        if s is None or not s.target or not s.node.matches(demand.labels):
            return False
        if demand.require_node is not None and node_uuid != demand.require_node:
            return False
        return s.fits(self.charge(demand), demand.memory_mb, demand.millicpus)

    def choose(self, demand: Demand, *, exclude: frozenset[str] = frozenset()) -> Node:
        """The node for a new service (best fit by dominant resource; spread on request). Changes nothing.

        Raises PlacementError when no target node fits, or when the node the demand requires does not take it.
        """
        if demand.require_node is not None:
            return self._pinned(demand, exclude)
        charge = self.charge(demand)
        spread = demand.spread or self.policy.spread
        by_memory = (charge.memory_mb * max(self._total_cpu, 1)) >= (charge.millicpus * max(self._total_memory, 1))
        used, empty = (self._by_memory, self._empty_memory) if by_memory else (self._by_cpu, self._empty_cpu)
        need = charge.memory_mb if by_memory else charge.millicpus
        allowed = self._label_set(demand.labels) if demand.labels else None
        counts = self._projects.get(demand.project_id) if spread else None
        fallback: str | None = None
        fallback_count = 0
        nodes = self._nodes
        # best fit among the nodes in use: the least free room of the dominant resource that still fits
        for k in range(bisect.bisect_left(used, (need, "")), len(used)):
            uuid = used[k][1]
            if uuid in exclude or (allowed is not None and uuid not in allowed):
                continue
            if not nodes[uuid].fits(charge, demand.memory_mb, demand.millicpus):
                continue
            if counts:
                c = counts.get(uuid, 0)
                if c:
                    if fallback is None or c < fallback_count:
                        fallback, fallback_count = uuid, c
                    continue
            return nodes[uuid].node
        # none fits (or spreading wants another node): open the largest empty node, the fewest nodes overall
        for k in range(len(empty) - 1, -1, -1):
            free, uuid = empty[k]
            if free < need:
                break
            if uuid in exclude or (allowed is not None and uuid not in allowed):
                continue
            if nodes[uuid].fits(charge, demand.memory_mb, demand.millicpus):
                return nodes[uuid].node
        if fallback is not None:
            return nodes[fallback].node
        raise self._refusal(demand, charge, allowed, exclude)

    def reserve(self, demand: Demand, node_uuid: str) -> Reservation:
        """Put the demand on this node (checked: raises PlacementError if it does not fit there)."""
        s = self._nodes.get(node_uuid)
        charge = self.charge(demand)
        if demand.require_node is not None and node_uuid != demand.require_node:
            raise PlacementError(
                f"this service must run on the run server of {_why(demand)}, not on another one; this is a bug "
                "in InkMCP's placement, please report it", detail=f"reserve on {node_uuid}, requires "
                f"{demand.require_node}")
        if s is None or not s.target or not s.node.matches(demand.labels) or \
                not s.fits(charge, demand.memory_mb, demand.millicpus):
            if demand.require_node is not None:
                self._pinned(demand, frozenset())  # raises the reason
            raise self._refusal(demand, charge, frozenset([node_uuid]), frozenset())
        r = reservation_for(demand, node_uuid, charge)
        self.add(r)
        return r

    def place(self, demand: Demand) -> tuple[Reservation, bool]:
        """Sticky placement: a service keeps its node across redeploys (resized in place when its limits
        change) unless the node is gone, draining, unusable or no longer has the labels it asks for; then it is
        placed anew. A service whose node is fine but is not the node the demand requires is reported
        (PlacementError from `misplaced`), not moved. Returns (reservation, moved)."""
        old = self._reservations.get(demand.service_id)
        if old is not None:
            s = self._nodes.get(old.node_uuid)
            if s is not None and s.target and s.node.matches(demand.labels):
                if demand.require_node is not None and old.node_uuid != demand.require_node:
                    raise self.misplaced(demand, old)
                if same_demand(old, demand):
                    return old, False
                self.release(demand.service_id)
                charge = self.charge(demand)
                if s.fits(charge, demand.memory_mb, demand.millicpus):
                    r = reservation_for(demand, old.node_uuid, charge)
                    self.add(r)
                    return r, False
                self.add(old)
                raise self.resize_refusal(demand)
            self.release(demand.service_id)
        try:
            node = self.choose(demand)
        except PlacementError:
            if old is not None:  # nothing changes on a refusal: the old reservation stays known
                self.add(old)
            raise
        return self.reserve(demand, node.uuid), old is not None

    def plan_drain(self, node_uuid: str, demands: Mapping[str, Demand] | None = None) -> DrainPlan:
        """Mark the node draining and plan where each of its services goes, largest first (decreasing by
        dominant resource while the room is there), each move applied to this engine before the next is
        planned, so running the moves in order never overbooks a node. `demands` overrides what a service
        asks (labels/spread) when it differs from its reservation; by default each moves with the limits,
        labels and spread it was placed with; pass `demands` with `require_node` for services pinned to a node
        (their project's database): pinned to the draining node itself they are `stuck`, never moved (the
        database does not move with them). Services that fit nowhere are `stuck` with the reason."""
        if node_uuid not in self._nodes:
            raise KeyError(f"no node with uuid {node_uuid!r}")
        self.set_draining(node_uuid, True)
        s = self._nodes[node_uuid]
        total_m, total_c = max(self._total_memory, 1), max(self._total_cpu, 1)
        on_node = [self._reservations[sid] for sid in s.services or ()]

        def size(r: Reservation) -> tuple[float, int, str]:
            dom = max(r.charged_memory_mb / total_m, r.charged_millicpus / total_c)
            return (-dom, 0 if r.hard else 1, r.service_id)

        moves: list[Move] = []
        stuck: list[tuple[str, str]] = []
        for r in sorted(on_node, key=size):
            demand = (demands or {}).get(r.service_id) or demand_of(r)
            try:
                target = self.choose(demand, exclude=frozenset([node_uuid]))
            except PlacementError as e:
                stuck.append((r.service_id, str(e)))
                continue
            self.release(r.service_id)
            new = self.reserve(demand, target.uuid)
            moves.append(Move(r.service_id, r.project_id, node_uuid, target.uuid, new))
        return DrainPlan(node_uuid, tuple(moves), tuple(stuck))

    # -- affinity ------------------------------------------------------------------------------------------

    def _pinned(self, demand: Demand, exclude: frozenset[str]) -> Node:
        """The node a pinned demand requires, if it takes the demand; else the refusal saying why."""
        uuid = demand.require_node
        assert uuid is not None
        s = self._nodes.get(uuid)
        charge = self.charge(demand)
        hints: list[str] = []
        operator = ""
        if s is None:
            problem = "is no longer a run server InkMCP can use"
            operator = "not listed by the node source (gone from Coolify?)"
            hints.append("ask the operator: the server is gone from Coolify, so what runs there must be restored")
        elif uuid in exclude:
            problem = "is the one being drained, and the service cannot move without it (InkMCP does not move " \
                      "a project's database)"
            operator = "excluded (the node being drained)"
            hints.append("the operator moves the database first, or stops draining the server (inkmcp nodes undrain)")
        elif (not_target := s.node.why_not_target()) is not None:
            operator = not_target
            if not_target == "draining":
                problem = "is being drained, so it takes no new services"
                hints.append("ask the operator to stop draining that server (inkmcp nodes undrain); InkMCP does "
                             "not move a project's database")
            else:
                problem = f"cannot take services now ({_agent_reason(not_target)})"
                hints.append("ask the operator to fix that server (inkmcp nodes list shows why)")
        elif not s.node.matches(demand.labels):
            problem = f"does not have the node labels {_labels(demand.labels)} this service asks for"
            operator = f"labels {_labels(s.node.labels) or 'none'}"
            hints.append("drop the labels from the service, or ask the operator to label that server")
        elif not s.fits(charge, demand.memory_mb, demand.millicpus):
            free_m, free_c = self.room(uuid, charge.hard)
            problem = (f"has no room for it (it has {free_m} MiB of memory and {free_c / 1000:g} "
                       "CPUs free for this service)")
            operator = f"full: load {s.load}"
            hints.append("lower the service's memory/cpus (resources=…)")
            if demand.mode is Mode.persistent:
                hints.append("use mode on_demand (charged a fraction of its limits while it sleeps)")
            hints.append("or ask the operator to make room on that server (add capacity, or drain other services "
                         "off it)")
        else:
            return s.node
        asked = _describe(demand, charge, self.policy)
        name = f"{s.node.name} ({uuid})" if s is not None else uuid
        raise PlacementError(
            f"this service must run on the run server of {_why(demand)}, and that server {problem}; the service "
            f"asks {asked}. Fix: {', '.join(hints)}.",
            detail=f"required node {name}: {operator}", asked=charge)

    def room(self, node_uuid: str, hard: bool) -> tuple[int, int]:
        """Free (memory, millicpus) on the node for a new charge: for a hard one, beside the largest on_demand
        service at its full limits (the rule of `_State.fits`)."""
        s = self._nodes[node_uuid]
        free_m, free_c = s.free_memory, s.free_cpu
        if hard:
            od_m, od_c = s.od_max()
            free_m = min(free_m, s.node.memory_mb - s.load.hard_memory_mb - od_m)
            free_c = min(free_c, s.node.millicpus - s.load.hard_millicpus - od_c)
        return max(free_m, 0), max(free_c, 0)

    def misplaced(self, demand: Demand, old: Reservation) -> PlacementError:
        """The error for a service placed on another node than the one it now requires (placed before its
        project's database existed, or on a spread): reported, never moved by a redeploy."""
        s = self._nodes.get(old.node_uuid)
        name = f"{s.node.name} ({old.node_uuid})" if s is not None else old.node_uuid
        return PlacementError(
            f"this service runs on another run server than {_why(demand)}, so what is only reachable there (e.g. "
            "its DATABASE_URL) does not resolve for it; a service keeps its server across redeploys and is not "
            "moved silently. Fix: ask the operator to drain the service's current server (inkmcp nodes drain moves "
            f"it next to {_why(demand)} when there is room), or remove the service and deploy it again.",
            detail=f"service {old.service_id} on {name}, requires {demand.require_node}",
            asked=self.charge(demand))

    # -- helpers -------------------------------------------------------------------------------------------

    def _label_set(self, labels: Mapping[str, str]) -> frozenset[str]:
        key = frozenset(labels.items())
        got = self._label_sets.get(key)
        if got is None:
            got = frozenset(u for u, s in self._nodes.items() if s.node.matches(labels))
            self._label_sets[key] = got
        return got

    def _refusal(self, demand: Demand, charge: Charge, allowed: frozenset[str] | None,
                 exclude: frozenset[str]) -> PlacementError:
        """The error for "nothing fits": agent-safe message + operator detail. Runs only on failure (O(n))."""
        reasons: Counter[str] = Counter()
        best_m = best_c = 0
        for u, s in self._nodes.items():
            why = s.node.why_not_target()
            if why is None and u in exclude:
                why = "excluded (the node being drained or already tried)"
            if why is None and allowed is not None and u not in allowed:
                why = "labels do not match"
            if why is not None:
                reasons[why] += 1
                continue
            best_m = max(best_m, s.free_memory)
            best_c = max(best_c, s.free_cpu)
            reasons["full"] += 1
        asked = _describe(demand, charge, self.policy)
        if not any(r == "full" for r in reasons):
            room = "no run server can take it" + (
                f" (none has the labels {_labels(demand.labels)})" if demand.labels else "")
        else:
            room = f"the largest free room on a run server is {best_m} MiB of memory and {best_c / 1000:g} CPUs"
        hints = ["lower the service's memory/cpus"]
        if demand.mode is Mode.persistent:
            hints.append("use mode on_demand (charged a fraction of its limits while it sleeps)")
        hints.append("or ask the operator to add run-server capacity")
        message = f"no run server has room for this service: it asks {asked}; {room}. Fix: {', '.join(hints)}."
        detail = "nodes: " + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())) if reasons else "no nodes"
        return PlacementError(message, detail=detail, asked=charge, largest_free=(best_m, best_c))

    def resize_refusal(self, demand: Demand) -> PlacementError:
        """The error for new limits that do not fit on the node the service is on (its reservation tracked)."""
        charge = self.charge(demand)
        asked = _describe(demand, charge, self.policy)
        old = self._reservations[demand.service_id]
        s = self._nodes[old.node_uuid]
        free_m = s.free_memory + old.charged_memory_mb
        free_c = s.free_cpu + old.charged_millicpus
        return PlacementError(
            f"this service's run server has no room for its new limits: it asks {asked}; the server has "
            f"{free_m} MiB of memory and {free_c / 1000:g} CPUs for it (a service stays on its server across "
            "redeploys). Fix: keep the previous memory/cpus, or ask the operator to drain the server "
            "(inkmcp nodes drain) so the service moves.",
            detail=f"node {s.node.name} ({s.node.uuid}) load {s.load}", asked=charge, largest_free=(free_m, free_c))


def reservation_for(demand: Demand, node_uuid: str, charge: Charge) -> Reservation:
    return Reservation(service_id=demand.service_id, project_id=demand.project_id, node_uuid=node_uuid,
                       mode=demand.mode, memory_mb=demand.memory_mb, millicpus=demand.millicpus,
                       charged_memory_mb=charge.memory_mb, charged_millicpus=charge.millicpus,
                       labels=dict(demand.labels), spread=demand.spread)


def demand_of(r: Reservation) -> Demand:
    """The demand a reservation was made for (to move it)."""
    return Demand(service_id=r.service_id, project_id=r.project_id, mode=r.mode, memory_mb=r.memory_mb,
                  millicpus=r.millicpus, labels=dict(r.labels), spread=r.spread)


def pinned(demand: Demand, node_uuid: str | None, why: str) -> Demand:
    """`demand` required on `node_uuid` (unchanged when None)."""
    return demand if node_uuid is None else replace(demand, require_node=node_uuid, require_why=why)


def same_demand(r: Reservation, d: Demand) -> bool:
    """The reservation was made for exactly this demand (a redeploy with unchanged limits)."""
    return (r.mode is d.mode and r.memory_mb == d.memory_mb and r.millicpus == d.millicpus
            and dict(r.labels) == dict(d.labels) and r.spread == d.spread)


def _describe(demand: Demand, charge: Charge, policy: Policy) -> str:
    base = f"{demand.memory_mb} MiB of memory and {demand.cpus:g} CPUs, mode {demand.mode.value}"
    if demand.mode is Mode.on_demand:
        base += (f" (reserved at 1/{policy.on_demand_overcommit:g}: {charge.memory_mb} MiB and "
                 f"{charge.millicpus / 1000:g} CPUs, with its full limits free beside the always-on services)")
    elif demand.mode is Mode.static:
        base = f"a static site (reserved {charge.memory_mb} MiB and {charge.millicpus / 1000:g} CPUs)"
    if demand.labels:
        base += f", on a server labelled {_labels(demand.labels)}"
    return base


def _why(demand: Demand) -> str:
    return demand.require_why or "the service's required server"


def _agent_reason(not_target: str) -> str:
    """`Node.why_not_target` without the operator's setting names."""
    return not_target.split(" (")[0]


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _remove(lst: list[tuple[int, str]], item: tuple[int, str]) -> None:
    i = bisect.bisect_left(lst, item)
    if i < len(lst) and lst[i] == item:
        del lst[i]
    else:  # a bug, not a user error: the index and the load disagree
        raise AssertionError(f"placement index lost {item!r}")


def _dec(c: Counter[str] | Counter[int], key: str | int) -> None:
    n = c.get(key, 0)  # type: ignore[call-overload]
    if n <= 1:
        c.pop(key, None)  # type: ignore[call-overload]
    else:
        c[key] = n - 1  # type: ignore[index]


def _replace_draining(n: Node, draining: bool) -> Node:
    return replace(n, draining=draining)
