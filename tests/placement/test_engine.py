"""The pure placement decision: capacity per mode, labels, spreading, best fit, stickiness, drain plans."""

from __future__ import annotations

import random

import pytest

from inkmcp.build.plan import Mode
from inkmcp.placement.engine import Engine
from inkmcp.placement.models import Demand, Node, PlacementError, Policy, Reservation


def node(uuid: str, memory: int = 4096, cpus: int = 4000, **kw: object) -> Node:
    return Node(uuid=uuid, name=f"name-of-{uuid}", memory_mb=memory, millicpus=cpus, **kw)  # type: ignore[arg-type]


def demand(sid: str, mode: Mode = Mode.persistent, memory: int = 1024, cpus: int = 500, project: str = "p",
           **kw: object) -> Demand:
    return Demand(service_id=sid, project_id=project, mode=mode, memory_mb=memory, millicpus=cpus, **kw)  # type: ignore[arg-type]


def check_invariants(engine: Engine, nodes: list[Node]) -> None:
    """What must hold after any sequence of decisions: no node over capacity in total charges, and every node
    has room for its largest on_demand service at full limits beside its persistent/static charges."""
    by_node: dict[str, list[Reservation]] = {n.uuid: [] for n in nodes}
    for sid in list(engine._reservations):
        r = engine.reservation(sid)
        assert r is not None
        by_node[r.node_uuid].append(r)
    for n in nodes:
        rs = by_node[n.uuid]
        assert sum(r.charged_memory_mb for r in rs) <= n.memory_mb
        assert sum(r.charged_millicpus for r in rs) <= n.millicpus
        hard_m = sum(r.charged_memory_mb for r in rs if r.hard)
        hard_c = sum(r.charged_millicpus for r in rs if r.hard)
        od = [r for r in rs if not r.hard]
        assert hard_m + max((r.memory_mb for r in od), default=0) <= n.memory_mb
        assert hard_c + max((r.millicpus for r in od), default=0) <= n.millicpus
        load = engine.load(n.uuid)
        assert load.memory_mb == sum(r.charged_memory_mb for r in rs)
        assert load.services == len(rs)
    # the indexes hold every target node exactly once, sorted, with its current free room
    for lists in ((engine._by_memory, engine._empty_memory), (engine._by_cpu, engine._empty_cpu)):
        entries = [e for lst in lists for e in lst]
        assert all(lst == sorted(lst) for lst in lists)
        assert sorted(u for _, u in entries) == sorted(n.uuid for n in nodes if engine._nodes[n.uuid].target)
    for free, u in engine._by_memory + engine._empty_memory:
        assert free == engine._nodes[u].free_memory


def test_persistent_reserves_its_limits_and_is_never_overcommitted() -> None:
    e = Engine([node("a", memory=4096, cpus=4000)], Policy(on_demand_overcommit=8))
    e.place(demand("s1", memory=2048))
    e.place(demand("s2", memory=2048))
    with pytest.raises(PlacementError):
        e.place(demand("s3", memory=64, cpus=100))
    assert e.load("a").memory_mb == 4096


def test_on_demand_is_overcommitted_by_the_configured_ratio() -> None:
    for ratio, fits in ((4.0, 8), (2.0, 4), (1.0, 2)):
        e = Engine([node("a", memory=4096, cpus=16000)], Policy(on_demand_overcommit=ratio))
        placed = 0
        with pytest.raises(PlacementError):
            for i in range(100):
                e.place(demand(f"s{i}", Mode.on_demand, memory=2048, cpus=1000))
                placed += 1
        assert placed == fits, ratio
        assert e.reservation("s0") is not None and e.reservation("s0").charged_memory_mb == int(2048 / ratio)


def test_a_woken_on_demand_service_always_fits_beside_the_persistent_ones() -> None:
    # persistent 3072 of 4096: an on_demand service of 2048 would be charged only 512, but awake it would eat
    # into the persistent service's memory
    e = Engine([node("a", memory=4096)], Policy(on_demand_overcommit=4))
    e.place(demand("p1", memory=3072))
    with pytest.raises(PlacementError):
        e.place(demand("o1", Mode.on_demand, memory=2048))
    e.place(demand("o2", Mode.on_demand, memory=1024))
    # and the other way round: a persistent service may not take the room the on_demand one wakes into
    e2 = Engine([node("b", memory=4096)], Policy(on_demand_overcommit=4))
    e2.place(demand("o1", Mode.on_demand, memory=2048))
    with pytest.raises(PlacementError):
        e2.place(demand("p1", memory=3072))
    e2.place(demand("p2", memory=2048))
    check_invariants(e2, [node("b", memory=4096)])


def test_static_sites_take_a_small_fixed_reservation() -> None:
    e = Engine([node("a", memory=1024, cpus=1000)], Policy(static_memory_mb=64, static_millicpus=100))
    for i in range(10):  # limits asked are ignored: 10 x 100 millicores fill the CPU
        r, _ = e.place(demand(f"s{i}", Mode.static, memory=4096, cpus=4000))
        assert (r.charged_memory_mb, r.charged_millicpus) == (64, 100)
    with pytest.raises(PlacementError):
        e.place(demand("s10", Mode.static))


def test_build_server_draining_unusable_and_unconfigured_nodes_are_never_targets() -> None:
    nodes = [node("build", memory=65536, cpus=32000, is_build_server=True),
             node("drain", memory=65536, cpus=32000, draining=True),
             node("down", memory=65536, cpus=32000, usable=False),
             node("nocap", memory=0, cpus=0),
             node("nourl", memory=65536, cpus=32000, unfit="no wildcard domain"),
             node("ok", memory=2048, cpus=2000)]
    e = Engine(nodes)
    for i in range(2):
        r, _ = e.place(demand(f"s{i}", memory=1024))
        assert r.node_uuid == "ok"
    with pytest.raises(PlacementError) as err:
        e.place(demand("s9", memory=1024))
    for reason in ("build server", "draining", "not usable", "no capacity configured", "no wildcard domain", "full"):
        assert reason in err.value.detail


def test_labels_requested_by_a_service_must_match() -> None:
    nodes = [node("big-fsn", memory=8192, labels={"region": "fsn1", "tier": "big"}),
             node("fsn", memory=4096, labels={"region": "fsn1"}),
             node("nbg", memory=4096, labels={"region": "nbg1"})]
    e = Engine(nodes)
    assert e.place(demand("a", labels={"region": "nbg1"}))[0].node_uuid == "nbg"
    assert e.place(demand("b", labels={"tier": "big"}))[0].node_uuid == "big-fsn"
    assert e.place(demand("c", labels={"region": "fsn1"}))[0].node_uuid in {"big-fsn", "fsn"}
    with pytest.raises(PlacementError) as err:
        e.place(demand("d", labels={"region": "hel1"}))
    assert "region=hel1" in str(err.value) and "labels do not match" in err.value.detail
    with pytest.raises(PlacementError):  # nbg is full for a 4 GiB persistent service
        e.place(demand("e", memory=4096, labels={"region": "nbg1"}))


def test_best_fit_packs_used_nodes_before_opening_the_largest_empty_one() -> None:
    nodes = [node("small", memory=2048, cpus=8000), node("mid", memory=8192, cpus=8000),
             node("large", memory=16384, cpus=8000)]
    e = Engine(nodes)
    assert e.place(demand("a", memory=1024))[0].node_uuid == "large"  # first: the largest empty node
    assert e.place(demand("b", memory=1024))[0].node_uuid == "large"  # then pack it
    for i in range(12):
        e.place(demand(f"f{i}", memory=1024))
    assert e.nodes_used() == 1 and e.load("large").memory_mb == 14 * 1024
    assert e.place(demand("big", memory=4096))[0].node_uuid == "mid"  # large has 2 GiB left: open mid
    # best fit among used nodes: 2 GiB fits in large (2 GiB free) and mid (4 GiB free) → the tighter, large
    assert e.place(demand("tight", memory=2048))[0].node_uuid == "large"
    check_invariants(e, nodes)


def test_cpu_dominant_demands_fit_by_cpu() -> None:
    nodes = [node("a", memory=65536, cpus=2000), node("b", memory=65536, cpus=3000)]
    e = Engine(nodes)
    e.place(demand("x", memory=256, cpus=1000))  # largest empty by CPU: b
    assert e.reservation("x").node_uuid == "b"
    assert e.place(demand("y", memory=256, cpus=2000))[0].node_uuid == "b"  # tight fit on b (2000 left)
    assert e.place(demand("z", memory=256, cpus=2000))[0].node_uuid == "a"
    with pytest.raises(PlacementError):
        e.place(demand("w", memory=256, cpus=100))


def test_spread_puts_a_projects_services_on_different_nodes_on_request() -> None:
    nodes = [node(u, memory=8192) for u in "abc"]
    packed = Engine(nodes)
    assert {packed.place(demand(f"s{i}", project="p"))[0].node_uuid for i in range(3)} == {"c"} or \
        len({packed.reservation(f"s{i}").node_uuid for i in range(3)}) == 1
    spread = Engine(nodes)
    got = [spread.place(demand(f"s{i}", project="p", spread=True))[0].node_uuid for i in range(3)]
    assert sorted(got) == ["a", "b", "c"]
    # a fourth: every node holds one, so the least-loaded by the project's count (a tie → best fit), no error
    fourth = spread.place(demand("s3", project="p", spread=True))[0].node_uuid
    assert fourth in {"a", "b", "c"}
    # other projects are unaffected by p's spreading; the policy can turn it on for all
    everyone = Engine(nodes, Policy(spread=True))
    assert len({everyone.place(demand(f"q{i}", project="q"))[0].node_uuid for i in range(3)}) == 3


def test_the_error_says_what_was_asked_the_largest_room_and_what_to_do_without_naming_servers() -> None:
    nodes = [node("secret-uuid-1", memory=4096, cpus=2000), node("secret-uuid-2", memory=2048, cpus=4000)]
    e = Engine(nodes)
    e.place(demand("a", memory=3072, cpus=500))
    with pytest.raises(PlacementError) as err:
        e.place(demand("b", memory=4096, cpus=1000))
    msg = str(err.value)
    assert "4096 MiB" in msg and "1 CPUs" in msg and "persistent" in msg
    assert "largest free room" in msg and "2048 MiB" in msg and "4 CPUs" in msg
    assert "lower the service's memory/cpus" in msg and "on_demand" in msg and "operator" in msg
    assert "secret-uuid" not in msg and "name-of" not in msg
    assert err.value.largest_free == (2048, 4000)


def test_a_service_stays_on_its_node_across_redeploys() -> None:
    nodes = [node(u, memory=8192) for u in "abc"]
    e = Engine(nodes)
    first, moved = e.place(demand("s", memory=1024))
    for _ in range(3):
        again, moved = e.place(demand("s", memory=1024))
        assert again == first and not moved
    assert e.load(first.node_uuid).services == 1
    # new limits: resized in place
    bigger, moved = e.place(demand("s", memory=2048))
    assert bigger.node_uuid == first.node_uuid and not moved and e.load(first.node_uuid).memory_mb == 2048
    # limits its node cannot take: refused, the old reservation kept (no silent move)
    e.place(demand("filler", memory=6144))
    assert e.reservation("filler").node_uuid == first.node_uuid
    with pytest.raises(PlacementError) as err:
        e.place(demand("s", memory=4096))
    assert "stays on its server" in str(err.value)
    assert e.reservation("s") == bigger and e.load(first.node_uuid).memory_mb == 8192
    # its node drains: the next placement moves it
    e.set_draining(first.node_uuid)
    moved_to, moved = e.place(demand("s", memory=2048))
    assert moved and moved_to.node_uuid != first.node_uuid
    assert e.load(first.node_uuid).memory_mb == 6144


def test_release_frees_the_room_and_is_idempotent() -> None:
    e = Engine([node("a", memory=2048)])
    e.place(demand("s", memory=2048))
    with pytest.raises(PlacementError):
        e.place(demand("t", memory=2048))
    assert e.release("s") is not None
    assert e.release("s") is None
    assert e.place(demand("t", memory=2048))[0].node_uuid == "a"


def test_drain_plan_moves_everything_largest_first_without_overbooking() -> None:
    nodes = [node("old", memory=8192, cpus=8000), node("x", memory=4096, cpus=4000),
             node("y", memory=4096, cpus=4000), node("z", memory=2048, cpus=4000, labels={"region": "other"})]
    e = Engine(nodes)
    # fill "old" first (the largest), then give x and y some load
    e.place(demand("big", memory=3072))
    e.place(demand("mid", memory=2048))
    e.place(demand("od", Mode.on_demand, memory=2048))
    e.place(demand("st", Mode.static))
    assert {e.reservation(s).node_uuid for s in ("big", "mid", "od", "st")} == {"old"}
    e.reserve(demand("x-load", memory=1024), "x")
    e.reserve(demand("y-load", memory=512), "y")
    plan = e.plan_drain("old")
    assert plan.complete and [m.service_id for m in plan.moves] == ["big", "mid", "od", "st"]
    assert all(m.to_node != "old" for m in plan.moves)
    assert e.node("old").draining and e.load("old").services == 0
    # replaying the moves in order on a fresh engine never overbooks any node at any step
    replay = Engine(nodes)
    replay.reserve(demand("x-load", memory=1024), "x")
    replay.reserve(demand("y-load", memory=512), "y")
    for d in (demand("big", memory=3072), demand("mid", memory=2048), demand("od", Mode.on_demand, memory=2048),
              demand("st", Mode.static)):
        replay.reserve(d, "old")
    replay.set_draining("old")
    for m in plan.moves:
        replay.release(m.service_id)
        replay.reserve(demand(m.service_id, m.reservation.mode, m.reservation.memory_mb,
                              m.reservation.millicpus), m.to_node)
        check_invariants(replay, nodes)
    # a draining node takes nothing new
    with pytest.raises(PlacementError):
        e.reserve(demand("new"), "old")


def test_drain_plan_reports_what_fits_nowhere_and_honours_labels() -> None:
    nodes = [node("old", memory=8192, labels={"region": "fsn1"}), node("fsn", memory=2048, labels={"region": "fsn1"}),
             node("nbg", memory=16384, labels={"region": "nbg1"})]
    e = Engine(nodes)
    e.reserve(demand("pinned", memory=4096, labels={"region": "fsn1"}), "old")
    e.reserve(demand("small", memory=1024, labels={"region": "fsn1"}), "old")
    e.reserve(demand("free", memory=2048), "old")
    plan = e.plan_drain("old")
    assert not plan.complete
    assert [s for s, _ in plan.stuck] == ["pinned"] and "region=fsn1" in plan.stuck[0][1]
    assert {m.service_id: m.to_node for m in plan.moves} == {"free": "nbg", "small": "fsn"}
    assert e.reservation("pinned").node_uuid == "old"  # stays until handled


def test_random_decisions_keep_every_invariant() -> None:
    rng = random.Random(1)
    nodes = [node(f"n{i}", memory=rng.choice([2048, 4096, 8192]), cpus=rng.choice([2000, 4000]),
                  labels={"r": rng.choice("ab")}) for i in range(12)]
    e = Engine(nodes, Policy(on_demand_overcommit=3))
    live: list[str] = []
    for step in range(1500):
        if live and rng.random() < 0.3:
            e.release(live.pop(rng.randrange(len(live))))
        else:
            d = demand(f"s{step}", rng.choice(list(Mode)), memory=rng.choice([128, 512, 1024, 3000]),
                       cpus=rng.choice([100, 500, 1500]), project=f"p{rng.randrange(20)}",
                       spread=rng.random() < 0.3, labels={"r": "a"} if rng.random() < 0.2 else {})
            try:
                e.place(d)
                live.append(d.service_id)
            except PlacementError:
                pass
        if step % 50 == 0:
            check_invariants(e, nodes)
        if step == 700:
            plan = e.plan_drain("n0")
            assert {m.service_id for m in plan.moves}.isdisjoint(s for s, _ in plan.stuck)
            check_invariants(e, nodes)
    check_invariants(e, nodes)
    assert len(live) > 100


# -- affinity: a demand pinned to one node (its project's database) ---------------------------------------

DB = "its project's database"


def test_a_pinned_demand_lands_on_its_node_even_where_best_fit_would_pick_another() -> None:
    nodes = [node("a", memory=8192), node("b", memory=4096), node("c", memory=2048)]
    e = Engine(nodes)
    e.place(demand("filler", memory=1024, project="other"))
    assert e.reservation("filler").node_uuid == "a"  # best fit opens the largest; the next one packs onto it
    assert e.choose(demand("free")).uuid == "a"
    for i, mode in enumerate((Mode.persistent, Mode.on_demand, Mode.static)):
        r, moved = e.place(demand(f"s{i}", mode, memory=1024, require_node="b", require_why=DB))
        assert r.node_uuid == "b" and not moved
    assert e.load("b").services == 3 and e.load("a").services == 1
    check_invariants(e, nodes)
    # sticky on its node; a redeploy with new limits is resized there
    assert e.place(demand("s0", memory=1024, require_node="b", require_why=DB))[0].node_uuid == "b"
    assert e.place(demand("s0", memory=2048, require_node="b", require_why=DB))[0].node_uuid == "b"
    assert e.fits_on(demand("x", memory=64, require_node="b"), "b") and \
        not e.fits_on(demand("x", memory=64, require_node="b"), "a")


def test_a_pinned_demand_is_refused_with_the_reason_when_its_node_cannot_take_it() -> None:
    nodes = [node("big-a", memory=16384), node("full-b", memory=2048, labels={"disk": "ssd"}),
             node("dr-c", memory=8192, draining=True), node("build-d", memory=8192, is_build_server=True)]
    e = Engine(nodes)
    e.reserve(demand("there", memory=1536), "full-b")

    def refusal(d: Demand) -> str:
        with pytest.raises(PlacementError) as err:
            e.place(d)
        msg = str(err.value)
        assert DB in msg and "Fix:" in msg
        assert "big-a" not in msg and "name-of" not in msg and "full-b" not in msg  # no server names for agents
        assert d.require_node in err.value.detail  # the operator's detail names it
        return msg

    full = refusal(demand("s", memory=1024, require_node="full-b", require_why=DB))
    assert "has no room" in full and "512 MiB of memory" in full and "1024 MiB" in full
    assert "lower the service's memory/cpus (resources=" in full and "on_demand" in full and "operator" in full
    # on_demand at 1/4 would be charged 256 MiB, but it must fit at full limits beside the persistent 1536: no
    assert "has no room" in refusal(demand("s", Mode.on_demand, memory=1024, require_node="full-b", require_why=DB))
    assert "is being drained" in refusal(demand("s", memory=64, require_node="dr-c", require_why=DB))
    assert "build server" in refusal(demand("s", memory=64, require_node="build-d", require_why=DB))
    labels = refusal(demand("s", memory=64, labels={"disk": "nvme"}, require_node="full-b", require_why=DB))
    assert "disk=nvme" in labels and "label" in labels
    assert "no longer a run server" in refusal(demand("s", memory=64, require_node="gone", require_why=DB))
    # nothing was reserved by any refusal; the same small demand fits (labels match, room there)
    assert e.load("full-b").services == 1 and e.reservation("s") is None
    assert e.place(demand("s", memory=512, labels={"disk": "ssd"}, require_node="full-b"))[0].node_uuid == "full-b"
    check_invariants(e, nodes)


def test_spread_yields_to_the_required_node() -> None:
    nodes = [node(u, memory=8192) for u in "abc"]
    e = Engine(nodes, Policy(spread=True))
    got = [e.place(demand(f"s{i}", project="p", spread=True, require_node="b", require_why=DB))[0].node_uuid
           for i in range(3)]
    assert got == ["b", "b", "b"]
    # an unpinned service of the same project still spreads away from b
    assert e.place(demand("free", project="p", spread=True))[0].node_uuid != "b"


def test_a_service_placed_elsewhere_is_reported_not_moved_until_its_node_drains() -> None:
    nodes = [node("a", memory=8192), node("b", memory=4096)]
    e = Engine(nodes)
    first, _ = e.place(demand("s", memory=1024))
    assert first.node_uuid == "a"
    with pytest.raises(PlacementError) as err:  # its project's database was made on b afterwards
        e.place(demand("s", memory=1024, require_node="b", require_why=DB))
    assert "runs on another run server than its project's database" in str(err.value)
    assert "inkmcp nodes drain" in str(err.value) and "a (" not in str(err.value)
    assert e.reservation("s") == first and e.load("b").services == 0
    # its node drains: the next placement moves it, and to the required node (best fit has no say)
    e.set_draining("a")
    moved_to, moved = e.place(demand("s", memory=1024, require_node="b", require_why=DB))
    assert moved and moved_to.node_uuid == "b" and e.load("a").services == 0
    # a refused move keeps the old reservation known
    e2 = Engine([node("a", memory=8192), node("b", memory=512)])
    old, _ = e2.place(demand("s", memory=1024))
    e2.set_draining("a")
    with pytest.raises(PlacementError):
        e2.place(demand("s", memory=1024, require_node="b", require_why=DB))
    assert e2.reservation("s") == old


def test_drain_plan_keeps_services_pinned_to_the_draining_node_and_moves_others_to_their_node() -> None:
    nodes = [node("old", memory=8192), node("big", memory=16384), node("db", memory=4096)]
    e = Engine(nodes)
    for sid in ("with-db-here", "with-db-there", "free"):  # memory-dominant: best fit by memory
        e.reserve(demand(sid, memory=1024, cpus=100, project=sid), "old")
    demands = {"with-db-here": demand("with-db-here", memory=1024, cpus=100, project="with-db-here",
                                      require_node="old", require_why=DB),
               "with-db-there": demand("with-db-there", memory=1024, cpus=100, project="with-db-there",
                                       require_node="db", require_why=DB)}
    plan = e.plan_drain("old", demands)
    assert [s for s, _ in plan.stuck] == ["with-db-here"]
    why = plan.stuck[0][1]
    assert "being drained" in why and "cannot move without it" in why and DB in why
    assert "does not move a project's database" in why and "undrain" in why
    # "free" opens the largest node; best fit would then pack "with-db-there" beside it, but its database is on db
    assert {m.service_id: m.to_node for m in plan.moves} == {"free": "big", "with-db-there": "db"}
    assert e.reservation("with-db-here").node_uuid == "old"


def test_a_database_reservation_counts_as_load_and_marks_the_node_in_use() -> None:
    from inkmcp.placement.engine import NodeLoad

    nodes = [node("a", memory=8192), node("b", memory=4096)]
    db = NodeLoad(memory_mb=3072, millicpus=1000, hard_memory_mb=3072, hard_millicpus=1000, databases=1)
    e = Engine(nodes, loads={"b": db})
    assert e.nodes_used() == 1
    assert e.place(demand("s", memory=1024))[0].node_uuid == "b"  # packs beside the database first
    with pytest.raises(PlacementError):
        e.reserve(demand("t", memory=1024), "b")  # 3072 + 1024 + 1024 > 4096
