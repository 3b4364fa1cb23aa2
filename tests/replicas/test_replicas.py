"""Two replicas as real processes on one PostgreSQL (issue 8 item 7): a replica killed with -9 between two steps
has its deployment finished by the other, exactly once; concurrent identical deploys on both make one
deployment; the "same deploy again is a no-op" check holds across replicas; a replica whose lease was taken
over writes nothing afterwards.

Ground truth is the database and the shared remote's own state (`Cluster.census`), never a replica's answer.
The remote is FakeRemote in its own process (`remote.py`); the kill -9 test also runs with the real Coolify
provider against the Coolify stand-in process (`coolify_cluster`, census through Coolify's API). The other tests
over Coolify, and a reconciler comparing records with Coolify's applications, are next.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from inkmcp.providers.compute.fake import CRASH_POINTS
from tests.replicas.conftest import LEASE, Cluster, wait_for

pytestmark = pytest.mark.slow  # each test starts three processes and waits out at least one lease

KILL_POINTS = ["after_create_project", "after_create_app", "after_deploy_call", "after_record_deployment",
               "after_remote_finished"]  # fmt: skip
assert set(KILL_POINTS) <= set(CRASH_POINTS)


async def live(cluster: Cluster, dep_id: str, timeout: float = 60.0) -> object:
    async def done() -> object:
        dep = await cluster.deployment(dep_id)
        return dep if dep.status in ("live", "failed") else None

    try:
        return await wait_for(done, timeout, f"deployment {dep_id} finished")
    except AssertionError as e:  # what the replicas did meanwhile (CI run 43: a survivor that never finished)
        dep = await cluster.deployment(dep_id)
        logs = "\n".join(f"--- replica {r.name} (exit {r.proc.returncode}):\n{r.log.read_text()[-2500:]}"
                          for r in cluster.replicas)  # fmt: skip
        raise AssertionError(f"{e}\nrecord: status={dep.status} claimed_by={dep.claimed_by} "
                             f"epoch={dep.lease_epoch}\nevents: {await cluster.events(dep_id)}\n{logs}") from None


async def _deploy_on_a_killed_at(cluster: Cluster, point: str) -> tuple[Any, str, str]:
    """Replicas a and b; a deploys, freezes at crash point `point` and is killed with -9 there. Returns b, the
    account and the deployment id (b is to finish it)."""
    mark, hold = cluster.root / "paused", cluster.root / "go"
    a, b = await asyncio.gather(cluster.replica("a", REPLICA_PAUSE_AT=point, REPLICA_PAUSE_MARK=str(mark),
                                                REPLICA_HOLD=str(hold)),
                                cluster.replica("b"))  # fmt: skip
    account, project = f"acct-{uuid.uuid4().hex[:6]}", f"kill-{uuid.uuid4().hex[:6]}"
    view = await a.call("deploy", account=account, repo=cluster.repo(), project=project, message="one", wait=0)
    hold.touch()  # only now may its pipeline reach the point where the whole process freezes
    await wait_for(lambda: asyncio.sleep(0, mark.exists()), 30, f"replica a paused at {point}")
    a.kill9()
    await a.proc.wait()
    return b, account, view["deployment_id"]


@pytest.mark.parametrize("point", KILL_POINTS)
async def test_a_replica_killed_between_two_steps_has_its_deployment_finished_once_by_the_other(
    cluster: Cluster, point: str
) -> None:
    b, account, dep_id = await _deploy_on_a_killed_at(cluster, point)

    dep = await live(cluster, dep_id, timeout=30 + LEASE)
    assert dep.status == "live", (dep.status, dep.error, await cluster.events(dep_id))
    assert (dep.claimed_by, dep.lease_epoch) == ("b", 2)  # claimed once at creation by a, once by b
    events = await cluster.events(dep_id)
    details = [d for _, _, d in events]
    assert any(d == "taken over by replica b (the lease of a expired)" for d in details), details
    assert [st for _, st, _ in events].count("live") == 1, events

    census = cluster.census(dep.service_id)
    assert census["apps"] == {"web": 1, "worker": 1}, census  # no second application per process
    assert census["deployments"] == {dep_id: {"web": 1, "worker": 1}}, census  # one remote deployment each
    # b also answers for the deployment (reads the record, whichever replica ran it)
    seen = await b.call("wait", account=account, deployment_id=dep_id, timeout=5)
    assert seen["status"] == "live" and seen["url"] == dep.url


async def test_concurrent_identical_deploys_on_both_replicas_make_one_deployment(cluster: Cluster) -> None:
    """Both replicas pass the lock-free no-op check before either creates (a barrier in `deploy` makes sure);
    the service's advisory lock lets one create and the other find it. Three rounds, new env each."""
    barrier_root = cluster.root / "barrier"
    env = {"REPLICA_BARRIER_COUNT": "2"}
    a, b = await asyncio.gather(cluster.replica("a", REPLICA_BARRIER=str(barrier_root / "a-b"), **env),
                                cluster.replica("b", REPLICA_BARRIER=str(barrier_root / "a-b"), **env))
    account, project, repo = f"acct-{uuid.uuid4().hex[:6]}", f"race-{uuid.uuid4().hex[:6]}", cluster.repo()
    service_id = None
    for message in ("one", "two", "three"):
        (barrier_root / "a-b").mkdir(parents=True, exist_ok=True)
        for f in (barrier_root / "a-b").iterdir():
            f.unlink()
        va, vb = await asyncio.gather(
            a.call("deploy", account=account, repo=repo, project=project, message=message, wait=0),
            b.call("deploy", account=account, repo=repo, project=project, message=message, wait=0),
        )
        assert len(list((barrier_root / "a-b").iterdir())) == 2  # both reached the create step
        assert va["deployment_id"] == vb["deployment_id"], (va, vb)
        assert sorted([va["reused"], vb["reused"]]) == [False, True], (va, vb)
        dep = await live(cluster, va["deployment_id"])
        assert dep.status == "live", (dep.error, await cluster.events(va["deployment_id"]))
        service_id = dep.service_id
    assert service_id is not None
    deployments = await cluster.deployments_of_service(service_id)
    assert len(deployments) == 3 and len({d.config_hash for d in deployments}) == 3
    census = cluster.census(service_id)
    assert census["apps"] == {"web": 1, "worker": 1}, census
    assert census["deployments"] == {str(d.id): {"web": 1, "worker": 1} for d in deployments}, census


async def test_the_same_deploy_again_on_the_other_replica_is_a_no_op(cluster: Cluster) -> None:
    """Each replica has its own data dir and no INKMCP_MAC_KEY: the keyed config hash agrees because the MAC
    key comes from the database."""
    a, b = await asyncio.gather(cluster.replica("a"), cluster.replica("b"))
    account, project, repo = f"acct-{uuid.uuid4().hex[:6]}", f"noop-{uuid.uuid4().hex[:6]}", cluster.repo()
    first = await a.call("deploy", account=account, repo=repo, project=project, message="one", wait=30)
    assert first["status"] == "live", first
    again = await b.call("deploy", account=account, repo=repo, project=project, message="one", wait=30)
    assert again["reused"] is True and again["deployment_id"] == first["deployment_id"], again
    changed = await b.call("deploy", account=account, repo=repo, project=project, message="two", wait=30)
    assert changed["reused"] is False and changed["status"] == "live", changed
    assert not (a.data_dir / "secrets" / "mac.key").exists() and not (b.data_dir / "secrets" / "mac.key").exists()
    dep = await cluster.deployment(changed["deployment_id"])
    assert cluster.census(dep.service_id)["deployments"] == {
        first["deployment_id"]: {"web": 1, "worker": 1}, changed["deployment_id"]: {"web": 1, "worker": 1}}


async def test_a_replica_whose_lease_was_taken_over_writes_nothing_afterwards(cluster: Cluster) -> None:
    """a freezes right after asking the remote to deploy (before recording it); b takes over and finishes; then a
    wakes up: its next write is fenced (LeaseLost), so the records b made stay exactly as they were."""
    mark, resume, hold = cluster.root / "paused", cluster.root / "resume", cluster.root / "go"
    a, _ = await asyncio.gather(cluster.replica("a", REPLICA_PAUSE_AT="after_deploy_call",
                                                REPLICA_PAUSE_MARK=str(mark), REPLICA_RESUME=str(resume),
                                                REPLICA_HOLD=str(hold)),
                                cluster.replica("b"))  # fmt: skip
    account, project, repo = f"acct-{uuid.uuid4().hex[:6]}", f"fence-{uuid.uuid4().hex[:6]}", cluster.repo()
    view = await a.call("deploy", account=account, repo=repo, project=project, message="one", wait=0)
    dep_id = view["deployment_id"]
    hold.touch()
    await wait_for(lambda: asyncio.sleep(0, mark.exists()), 30, "replica a paused")

    dep = await live(cluster, dep_id, timeout=30 + LEASE)
    assert dep.status == "live" and (dep.claimed_by, dep.lease_epoch) == ("b", 2), dep.status
    before_events = await cluster.events(dep_id)
    before_refs = dep.provider_ref
    census_before = cluster.census(dep.service_id)

    resume.touch()  # a continues where it froze, still believing it runs the deployment
    await wait_for(lambda: asyncio.sleep(0, "stopped a pipeline whose lease another replica took over" in
                                         a.log.read_text()), 30, "replica a noticed it lost the lease")  # fmt: skip
    assert a.proc.returncode is None  # it stopped the pipeline, not the process
    after = await cluster.deployment(dep_id)
    assert await cluster.events(dep_id) == before_events
    assert (after.status, after.claimed_by, after.lease_epoch, after.provider_ref) == ("live", "b", 2, before_refs)
    # a's remote call made before it froze was adopted by b, not repeated: one remote deployment per process
    assert census_before["deployments"] == {dep_id: {"web": 1, "worker": 1}}, census_before
    assert cluster.census(dep.service_id) == census_before
    # and a still serves: the same deploy on a is the live one b finished
    again = await a.call("deploy", account=account, repo=repo, project=project, message="one", wait=0)
    assert (again["reused"], again["deployment_id"], again["status"]) == (True, dep_id, "live"), again


async def test_many_concurrent_deploys_over_two_replicas_make_one_deployment_each_and_all_go_live(
    cluster: Cluster,
) -> None:
    """Ten accounts, one project each, every deploy sent to both replicas at once (20 calls in flight)."""
    a, b = await asyncio.gather(cluster.replica("a"), cluster.replica("b"))
    repo = cluster.repo()
    calls = [(f"acct-{i}-{uuid.uuid4().hex[:4]}", f"many-{i}-{uuid.uuid4().hex[:4]}") for i in range(10)]
    replies = await asyncio.gather(*(r.call("deploy", account=acct, repo=repo, project=project, message=acct, wait=0)
                                     for acct, project in calls for r in (a, b)))  # fmt: skip
    pairs = [replies[i:i + 2] for i in range(0, len(replies), 2)]
    assert all(x["deployment_id"] == y["deployment_id"] for x, y in pairs), pairs
    for (va, _), (acct, _) in zip(pairs, calls, strict=True):
        dep = await live(cluster, va["deployment_id"])
        assert dep.status == "live", (acct, dep.error)
        assert len(await cluster.deployments_of_service(dep.service_id)) == 1
        census = cluster.census(dep.service_id)
        assert census == {"apps": {"web": 1, "worker": 1},
                          "deployments": {va["deployment_id"]: {"web": 1, "worker": 1}}}, census  # fmt: skip


async def test_a_killed_replica_with_several_deployments_in_flight_has_each_finished_once(cluster: Cluster) -> None:
    """a takes four deployments; the first to reach `after_deploy_call` freezes the whole process (the others
    wherever they were), then a is killed. b takes each over (scans) and finishes it once."""
    mark, hold = cluster.root / "paused", cluster.root / "go"
    pause = {"REPLICA_PAUSE_AT": "after_deploy_call", "REPLICA_PAUSE_MARK": str(mark), "REPLICA_HOLD": str(hold)}
    a, b = await asyncio.gather(cluster.replica("a", **pause), cluster.replica("b"))
    repo = cluster.repo()
    calls = [(f"acct-{i}-{uuid.uuid4().hex[:4]}", f"inflight-{i}-{uuid.uuid4().hex[:4]}") for i in range(4)]
    views = await asyncio.gather(*(a.call("deploy", account=acct, repo=repo, project=project, message="m", wait=0)
                                   for acct, project in calls))  # fmt: skip
    hold.touch()  # all four answered; now the first to reach the point freezes the others wherever they are
    await wait_for(lambda: asyncio.sleep(0, mark.exists()), 30, "replica a paused")
    a.kill9()
    await a.proc.wait()
    for view in views:
        dep = await live(cluster, view["deployment_id"], timeout=30 + LEASE)
        assert dep.status == "live" and dep.claimed_by == "b", (dep.status, dep.error, dep.claimed_by)
        census = cluster.census(dep.service_id)
        assert census == {"apps": {"web": 1, "worker": 1},
                          "deployments": {view["deployment_id"]: {"web": 1, "worker": 1}}}, census  # fmt: skip
    assert b.proc.returncode is None


COOLIFY_KILL_POINTS = ["after_create_app", "after_deploy_call", "after_record_deployment", "after_remote_finished"]


@pytest.mark.parametrize("point", COOLIFY_KILL_POINTS)
async def test_over_coolify_a_replica_killed_between_two_steps_has_its_deployment_finished_once(
    coolify_cluster: Cluster, point: str
) -> None:
    """The same as over the fake remote, with the real Coolify provider and client against the Coolify stand-in
    (its own process, validating every request against Coolify's spec); the census is read through Coolify's
    API: one application per process and one Coolify deployment each."""
    from inkmcp.providers.compute.coolify.provider import CRASH_POINTS as COOLIFY_CRASH_POINTS

    assert point in COOLIFY_CRASH_POINTS
    cluster = coolify_cluster
    b, _, dep_id = await _deploy_on_a_killed_at(cluster, point)

    dep = await live(cluster, dep_id, timeout=60 + LEASE)
    assert dep.status == "live", (dep.status, dep.error, await cluster.events(dep_id), b.log.read_text()[-2000:])
    assert (dep.claimed_by, dep.lease_epoch) == ("b", 2)
    assert "taken over by replica b (the lease of a expired)" in [d for _, _, d in await cluster.events(dep_id)]
    census = await cluster.coolify_census(dep.service_id)
    assert census == {"apps": {"web": 1, "worker": 1}, "deployments": {"web": 1, "worker": 1}}, census
