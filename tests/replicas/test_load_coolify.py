"""Load, rate limit and fault injection over Coolify with two replicas (issue 8, "How we will know").

Two replica processes (`replica.py`: DeployService wired as `inkmcp serve` wires it, the real Coolify provider and
client, spec-validated and policy-checked on the wire) share one real PostgreSQL and one Coolify stand-in (a real
HTTP server validating every request and answer against Coolify's spec). The stand-in runs in a thread of the test
process rather than its own process so the test can arm its faults and read its counters directly; the replicas
only ever see its HTTP API, as they would see a real Coolify's.

Ground truth is the database and the stand-in's own state, never a replica's answer (`assert_matches_standin`):
one Coolify application per process of each service, the one the service's record names; its commit and its
running container's commit are the deployment's; its running container came from the Coolify deployment the
record names; exactly one Coolify build (non-restart deployment) per process; no request or answer outside the
spec.

* `test_concurrent_deploys_from_ten_accounts_over_two_replicas`: 30 deploy calls (10 accounts x 3 services,
  alternating replicas, all in flight at once; 100 in benchmarks/coolify_deploy.py) all go live with the census
  above, then the same 30 calls on the other replica are all no-ops (no new build).
* `test_thirty_concurrent_deploys_under_the_rate_limit_all_finish_without_a_429`: the stand-in throttles at 60
  requests per 2 s (Coolify's 200/60 s scaled so the run is CI-sized while the limit still binds; the real 200/60 s
  runs in the benchmark), the replicas' shared DbBudget is set to the same (INKMCP_COOLIFY_RATE_LIMIT/WINDOW) and
  their client uses its production retry policy: every deploy goes live reporting queued → building → switching →
  live, the stand-in answered no 429, its peak rate stayed at or under the limit over several windows, and the
  clients' logs show the budget holding requests back.
* `test_fault_at_each_step_of_a_deploy`: per fault kind, the step list is the distinct (method, path pattern)
  requests of a clean deploy recorded by the stand-in (uuids folded into patterns), so a step the provider adds
  is covered without editing this file; one fault per step is armed, one deploy per step runs concurrently (which
  deploy meets which fault is up to scheduling), every fault must have been consumed and every deployment must end
  live with the census above. The "timeout before" kind (Coolify carries the request out after the client gave
  up) is the provider's late-create case: a retry that does not find what the request would have made waits out
  the provider's `late_window` since it was sent, looks again, and only then sends it again.
* Permanent faults: a failed build fails the deployment naming the build's last log line and the next deploy
  recovers; an unreachable run server fails the deployment with a reason; slow builds wait and go live.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from inkmcp.coolify.standin import CoolifyStandin, Fault
from inkmcp.store.embedded import EmbeddedPostgres
from tests.replicas.coolify_load import (
    CLIENT_TIMEOUT,
    UUID,
    Coolified,
    assert_clean_wire,
    assert_matches_standin,
    coolified,
    finished,
    raise_limits,
    service_ref,
)
from tests.store import conftest as _store_fixtures

embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg

pytestmark = pytest.mark.slow  # each test starts two replica processes and runs dozens of deploys


# -- (a) many concurrent deploys ---------------------------------------------------------------------------------


@pytest.fixture
async def cf(control_pg: EmbeddedPostgres) -> AsyncIterator[Coolified]:
    async with coolified(control_pg) as c:
        yield c


async def test_concurrent_deploys_from_ten_accounts_over_two_replicas(cf: Coolified) -> None:
    """30 calls in flight at once (10 accounts x 3 projects, alternating replicas), then the same 30 again on the
    other replica (all no-ops). No duplicate deployment or application, nothing lost, records match Coolify."""
    repo = cf.cluster.repo()
    calls = [(f"acct-{i}", f"load-{i}-{j}") for i in range(10) for j in range(3)]
    await raise_limits(cf, {acct for acct, _ in calls}, 10)
    started = time.monotonic()
    ids = await asyncio.gather(*(cf.deploy(k % 2, acct, project, acct, repo) for k, (acct, project)
                                 in enumerate(calls)))  # fmt: skip
    deps = [await finished(cf.cluster, d, 120) for d in ids]
    took = time.monotonic() - started
    assert len(set(ids)) == len(calls)
    for dep in deps:
        assert dep.status == "live", (dep.id, dep.error, await cf.cluster.events(str(dep.id)))
        assert len(await cf.cluster.deployments_of_service(dep.service_id)) == 1
        await assert_matches_standin(cf, dep)
    assert len({d.service_id for d in deps}) == len(calls)
    # the same calls again, each on the other replica: every one the existing deployment, no new request to build
    builds_before = sum(not d.restart_only for d in cf.standin.deployments.values())
    again = await asyncio.gather(*(cf.cluster.replicas[(k + 1) % 2].call(
        "deploy", account=acct, repo=repo, project=project, message=acct, wait=0)
        for k, (acct, project) in enumerate(calls)))  # fmt: skip
    assert [(v["reused"], v["deployment_id"]) for v in again] == [(True, d) for d in ids]
    assert sum(not d.restart_only for d in cf.standin.deployments.values()) == builds_before
    with cf.standin._lock:
        assert len(cf.standin.applications) == 2 * len(calls)
    # no rate-limit 429; Coolify's "deployment queue is full" (25 queued per server, a 429 of POST /deploy) may
    # answer under this load: the provider waits and deploys again, every deployment above went live
    assert [f"{r.method} {r.path}" for r in cf.standin.throttled() if r.path != "/api/v1/deploy"] == []
    assert_clean_wire(cf.standin)
    print(f"\n30 concurrent deploys over two replicas: {took:.1f} s, {cf.standin.request_count()} requests")


# -- (b) the rate limit -----------------------------------------------------------------------------------------

RATE_LIMIT, RATE_WINDOW = 60, 2.0  # Coolify's 200/60 s, scaled to keep the test short while the limit binds


async def test_thirty_concurrent_deploys_under_the_rate_limit_all_finish_without_a_429(
    control_pg: EmbeddedPostgres,
) -> None:
    budget = {"INKMCP_COOLIFY_RATE_LIMIT": str(RATE_LIMIT), "INKMCP_COOLIFY_RATE_WINDOW": str(RATE_WINDOW),
              "INKMCP_COOLIFY_RATE_MARGIN": "0.3", "REPLICA_COOLIFY_RETRY": "production",
              "REPLICA_RETRY_WINDOW": "600"}
    async with coolified(control_pg, standin_kw={"rate_limit": RATE_LIMIT, "rate_window": RATE_WINDOW},
                         replica_env=lambda url: {**budget, "REPLICA_COOLIFY_BUDGET_URL": url}) as cf:
        repo = cf.cluster.repo()
        calls = [(f"acct-{i % 10}", f"rate-{i}") for i in range(30)]
        await raise_limits(cf, {acct for acct, _ in calls}, 10)
        started = time.monotonic()
        ids = await asyncio.gather(*(cf.deploy(k % 2, acct, project, acct, repo)
                                     for k, (acct, project) in enumerate(calls)))  # fmt: skip
        deps = [await finished(cf.cluster, d, 240) for d in ids]
        took = time.monotonic() - started
        for dep in deps:
            events = await cf.cluster.events(str(dep.id))
            assert dep.status == "live", (dep.error, events)
            await assert_matches_standin(cf, dep)
            assert_progress(events)
        s = cf.standin
        assert s.throttled() == [], [f"{r.method} {r.path}" for r in s.throttled()][:5]  # no 429, not even once
        assert s.peak_rate(cf.token) <= RATE_LIMIT
        requests = s.request_count(cf.token)
        assert requests > 3 * RATE_LIMIT  # the run spanned several windows...
        waits = sum(r.log.read_text().count("request budget spent, waiting") for r in cf.cluster.replicas)
        assert waits > 0  # ...and the shared budget held requests back (in both replicas' clients)
        assert_clean_wire(s)
        print(f"\n30 deploys at {RATE_LIMIT}/{RATE_WINDOW:g} s: {took:.1f} s, {requests} requests, peak "
              f"{s.peak_rate(cf.token)} per window, {waits} budget waits")


# -- (c) faults at each step ------------------------------------------------------------------------------------


STEPS = ["queued", "building", "switching", "live"]


def assert_progress(events: list[tuple[int, str, str]]) -> None:
    """The deployment went through every step, in order, once. A replica whose heartbeat came late under load may
    have its lease taken over by the other (a correct hand-over: the deploy still finishes once, which the caller
    checks against the stand-in); then the steps go on from the hand-over's event, forward only (a step the first
    replica finished may be skipped), to `live`."""
    states = [st for _, st, _ in events]
    handovers = [i for i, (_, _, msg) in enumerate(events) if "taken over by replica" in msg]
    if not handovers:
        assert states == STEPS, events
        return
    after = states[handovers[-1]:]
    steps = [st for i, st in enumerate(after) if i == 0 or st != after[i - 1]]
    assert states[0] == "queued" and steps == [st for st in STEPS if st in steps] and steps[-1] == "live", events


def pattern_of(path: str) -> str:
    """/api/v1/applications/<uuid>/envs/bulk -> /applications/[^/]+/envs/bulk (the stand-in's fault regex)."""
    return "/".join("[^/]+" if UUID.fullmatch(part) else re.escape(part)
                    for part in path.removeprefix("/api/v1").split("/"))


@pytest.fixture(scope="module")
async def fault_cluster(control_pg: EmbeddedPostgres) -> AsyncIterator[tuple[Coolified, list[tuple[str, str]]]]:
    """One cluster for every fault kind, and the steps of a clean deploy as the stand-in recorded them."""
    env = {"REPLICA_COOLIFY_TIMEOUT": str(CLIENT_TIMEOUT)}
    async with coolified(control_pg, replica_env=lambda _url: env) as cf:
        cf.standin.reset_log()
        dep = await finished(cf.cluster, await cf.deploy(0, "probe", "probe"))
        assert dep.status == "live", dep.error
        await assert_matches_standin(cf, dep)
        steps: list[tuple[str, str]] = []
        for r in cf.standin.requests_of(cf.token):
            step = (r.method, pattern_of(r.path))
            if step not in steps:
                steps.append(step)
        yield cf, steps


@dataclass(frozen=True)
class FaultKind:
    name: str
    arm: Callable[[CoolifyStandin, str, str], Fault]
    permanent: bool = False


FAULTS = [
    FaultKind("500 before", lambda s, m, p: s.fail_next(m, p, status=500)),
    FaultKind("500 after the change", lambda s, m, p: s.fail_next(m, p, status=500, after=True)),
    FaultKind("503 before", lambda s, m, p: s.fail_next(m, p, status=503)),
    FaultKind("429 throttled", lambda s, m, p: s.throttle_next(m, p, retry_after=1)),
    FaultKind("timeout before", lambda s, m, p: s.delay_next(m, p, CLIENT_TIMEOUT + 1)),
    FaultKind("timeout after the change", lambda s, m, p: s.delay_next(m, p, CLIENT_TIMEOUT + 1, after=True)),
    FaultKind("answer lost after the change", lambda s, m, p: s.drop_next(m, p)),
    FaultKind("connection dropped before", lambda s, m, p: s.drop_next(m, p, after=False)),
]


PARAMS = [pytest.param(f, id=f.name) for f in FAULTS]


@pytest.mark.parametrize("kind", PARAMS)
async def test_fault_at_each_step_of_a_deploy(fault_cluster: tuple[Coolified, list[tuple[str, str]]],
                                              kind: FaultKind) -> None:
    cf, steps = fault_cluster
    assert ("POST", "/projects") in steps and ("POST", "/deploy") in steps, steps
    tag = uuid.uuid4().hex[:6]
    armed: list[tuple[tuple[str, str], Fault]] = []
    ids: list[str] = []
    try:
        for step in steps:
            armed.append((step, kind.arm(cf.standin, *step)))
        ids = list(await asyncio.gather(*(cf.deploy(i % 2, f"f-{tag}-{i}", f"f-{tag}-{i}")
                                          for i in range(len(steps)))))  # fmt: skip
        deps = [await finished(cf.cluster, d, 90) for d in ids]
    finally:
        cf.standin.clear_faults()
    unused = [step for step, fault in armed if fault.used != 1]
    assert not unused, f"faults never hit (a deploy no longer makes these requests?): {unused}"
    wrong: list[str] = []
    for step, dep in zip(steps, deps, strict=True):  # deploy i is not necessarily the one that met fault i
        try:
            assert dep.status == "live", (dep.error, await cf.cluster.events(str(dep.id)))
            await assert_matches_standin(cf, dep)
        except AssertionError as e:
            wrong.append(f"deploy {step}: {e}")
    assert not wrong, f"{kind.name}:\n" + "\n".join(wrong)
    assert_clean_wire(cf.standin)


async def test_a_failed_build_fails_the_deploy_naming_the_cause_and_a_redeploy_recovers(
    fault_cluster: tuple[Coolified, list[tuple[str, str]]],
) -> None:
    """Permanent: the build fails on Coolify (fail_builds). The deployment fails with the build log's last line;
    still one application per process; the same deploy again builds and goes live."""
    cf, _ = fault_cluster
    tag = uuid.uuid4().hex[:6]
    cf.standin.fail_builds(1, line=f"npm ERR! missing script: build-{tag}")
    repo = cf.cluster.repo()
    dep = await finished(cf.cluster, await cf.deploy(0, f"b-{tag}", f"b-{tag}", repo=repo))
    assert dep.status == "failed" and f"build-{tag}" in (dep.error or ""), dep.error
    await assert_matches_standin(cf, dep, live=False)
    again = await finished(cf.cluster, await cf.deploy(1, f"b-{tag}", f"b-{tag}", message="two", repo=repo))
    assert again.status == "live", again.error
    ref = await service_ref(cf.cluster, again.service_id)
    assert ref["live"] == str(again.id)
    cf.standin.clear_faults()


async def test_an_unreachable_server_fails_the_deploy_naming_it_and_recovers_when_back(
    fault_cluster: tuple[Coolified, list[tuple[str, str]]],
) -> None:
    cf, _ = fault_cluster
    tag = uuid.uuid4().hex[:6]
    server = next(iter(cf.standin.servers))
    cf.standin.set_server_unreachable(server, True)
    try:
        dep = await finished(cf.cluster, await cf.deploy(0, f"u-{tag}", f"u-{tag}"), 90)
    finally:
        cf.standin.set_server_unreachable(server, False)
    assert dep.status == "failed", (dep.status, await cf.cluster.events(str(dep.id)))
    # ServerCheckJob marked it unusable: placement refuses, naming what the operator must fix
    assert "no Coolify server can take the service" in (dep.error or "") and "usable" in (dep.error or ""), dep.error
    with cf.standin._lock:  # refused before anything was created for it in Coolify
        assert not [a.uuid for a in cf.standin.applications.values()
                    if str(a.fields.get("name", "")).startswith(f"{dep.service_id}-")]


async def test_slow_builds_wait_and_go_live(fault_cluster: tuple[Coolified, list[tuple[str, str]]]) -> None:
    cf, _ = fault_cluster
    cf.standin.slow_builds(3.0)
    try:
        dep = await finished(cf.cluster, await cf.deploy(1, "slow", "slow"), 60)
    finally:
        cf.standin.slow_builds(0.2)
    assert dep.status == "live", dep.error
    await assert_matches_standin(cf, dep)
    assert any(st == "building" for _, st, _ in await cf.cluster.events(str(dep.id)))
