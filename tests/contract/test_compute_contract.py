"""The compute contract (inkmcp/providers/compute/base.py), provider by provider.

Each test calls the provider the way core does: refs from a `RefBook` standing in for the database, a fresh
checkout on every attempt for providers that build from one, the same deployment id again after a crash or a
retryable error. What the provider says is checked against what really runs (`Harness.serve`, `instances`,
`census`), never against its own answers.
"""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from inkmcp.providers.compute.base import (
    EnvOutcome,
    LogScope,
    ProviderRefused,
    ProviderUnavailable,
    RefScope,
    ReleaseFailed,
    RuntimeState,
    Step,
)
from inkmcp.providers.compute.fake import FakeCrash
from tests.contract.conftest import (
    HARNESSES,
    PROVIDERS,
    REMOTE_PROVIDERS,
    Events,
    Harness,
    Interrupt,
    Interrupting,
    RefBook,
    provider_param,
    release,
    revision,
    wait_for,
)

PROVIDER_STEPS = {Step.building, Step.releasing, Step.starting, Step.health_check, Step.switching, Step.live}
RELEASE_CRASH_POINTS = ("after_create_project", "after_create_app", "after_deploy_call", "after_record_deployment",
                        "after_remote_finished")  # fmt: skip


CRASH_CASES = [provider_param(name, where) for name in PROVIDERS
               for where in ["step:building", "step:switching",
                             *(f"point:{p}" for p in HARNESSES[name].crash_points if p in RELEASE_CRASH_POINTS)]]
"""Crash scenarios per provider: the contract-level ones (a step) for all, the provider's own points for those
that have them."""


def running(instances: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """(process, deployment id) of what runs, without the instance ids."""
    return [(process, deployment) for process, deployment, _ in instances]


async def test_release_goes_live_and_reports_what_runs(harness: Harness, book: RefBook) -> None:
    key = harness.key()
    req = harness.request(key, message="one")
    events = Events()
    result = await release(harness, book, req, events)
    assert result.url
    assert await harness.serve(key) == "one"
    assert running(await harness.instances(key)) == [("web", req.deployment_id)]
    assert events.steps and events.steps[0] == Step.building and set(events.steps) <= PROVIDER_STEPS, events.steps
    rt = await harness.provider.runtime(book.key(key))
    assert (rt.state, rt.deployment_id, rt.env_revision) == (RuntimeState.running, req.deployment_id, req.env_revision)
    assert [(p.name, p.state, p.routed) for p in rt.processes] == [("web", RuntimeState.running, True)]
    build = await harness.provider.logs(
        book.key(key), LogScope.build, deployment_id=req.deployment_id,
        deployment_ref=book.refs.get((RefScope.deployment, req.deployment_id)), tail=50,
    )  # fmt: skip
    assert build, "no build log for the deployment"
    census = harness.census(key)
    if census is not None:
        assert census == {"projects": 1, "apps": {"web": 1}, "deployments": {req.deployment_id: {"web": 1}}}


async def test_runtime_of_a_service_never_deployed_is_stopped(harness: Harness) -> None:
    rt = await harness.provider.runtime(harness.key())
    assert rt.state == RuntimeState.stopped and rt.deployment_id is None and rt.processes == []


async def test_release_of_the_same_deployment_again_changes_nothing(harness: Harness, book: RefBook) -> None:
    """A repeat (core resuming a deployment that went live just before a crash) returns the same result and
    starts nothing: same processes or containers, no second remote deployment."""
    key = harness.key()
    req = harness.request(key, message="one", worker=True)
    first = await release(harness, book, req)
    before = await harness.instances(key)
    census = harness.census(key)
    events = Events()
    again = await release(harness, book, req, events)
    assert again == first
    assert Step.building not in events.steps
    assert await harness.instances(key) == before
    assert harness.census(key) == census


async def test_web_and_worker_run_as_one_service_all_or_nothing(harness: Harness, book: RefBook) -> None:
    """A Procfile's web + worker: both run, only web is routed; a release whose worker cannot start leaves both
    processes on the previous release; a release without the worker removes it."""
    key = harness.key()
    v1 = harness.request(key, message="one", worker=True)
    await release(harness, book, v1)
    assert running(await harness.instances(key)) == [("web", v1.deployment_id), ("worker", v1.deployment_id)]
    rt = await harness.provider.runtime(book.key(key))
    assert {(p.name, p.state, p.routed) for p in rt.processes} == {
        ("web", RuntimeState.running, True), ("worker", RuntimeState.running, False)}
    logs = await harness.provider.logs(book.key(key), LogScope.runtime, deployment_id=None, tail=100)
    assert any(line.startswith("worker | ") for line in logs), logs
    census = harness.census(key)
    if census is not None:
        assert census["apps"] == {"web": 1, "worker": 1}  # one application per process

    v2 = harness.request(key, message="two", worker=True, crash="worker")
    with pytest.raises(ReleaseFailed) as failed:
        await release(harness, book, v2)
    assert failed.value.step == Step.health_check and "worker" in failed.value.reason
    assert running(await harness.instances(key)) == [("web", v1.deployment_id), ("worker", v1.deployment_id)]
    assert await harness.serve(key) == "one"

    v3 = harness.request(key, message="three")
    await release(harness, book, v3)

    async def worker_gone() -> bool:
        return running(await harness.instances(key)) == [("web", v3.deployment_id)]

    await wait_for(worker_gone, what="only the new web process runs")
    assert await harness.serve(key) == "three"
    assert [p.name for p in (await harness.provider.runtime(book.key(key))).processes] == ["web"]
    census = harness.census(key)
    if census is not None:
        assert census["apps"] == {"web": 1}


@pytest.mark.parametrize(("options", "step", "text"), [
    ({"build_command": "echo compile error: missing colon >&2; exit 2"}, Step.building, "compile error"),
    ({"release_command": "echo migrating the db; exit 3"}, Step.releasing, "migrating the db"),
])  # fmt: skip
async def test_tenant_failures_are_permanent_and_keep_the_previous_release(
    harness: Harness, book: RefBook, options: dict[str, str], step: Step, text: str
) -> None:
    key = harness.key()
    v1 = harness.request(key, message="one")
    await release(harness, book, v1)
    bad = harness.request(key, message="two", **options)
    with pytest.raises(ReleaseFailed) as failed:
        await release(harness, book, bad)
    assert not failed.value.retryable
    assert failed.value.step == step and text in failed.value.reason, failed.value
    assert await harness.serve(key) == "one"
    assert running(await harness.instances(key)) == [("web", v1.deployment_id)]
    build = await harness.provider.logs(
        book.key(key), LogScope.build, deployment_id=bad.deployment_id,
        deployment_ref=book.refs.get((RefScope.deployment, bad.deployment_id)), tail=50,
    )  # fmt: skip
    assert any(text in line for line in build), build


async def test_env_change_is_reported_as_it_really_happens(harness: Harness, book: RefBook) -> None:
    """`restarted` only if the new values serve when the call returns; `pending` while the old ones still do,
    until runtime() reports the new revision; a restart that fails never reports the new revision."""
    key = harness.key()
    v1 = harness.request(key, message="one", worker=True)
    await release(harness, book, v1)
    provider = harness.provider
    two = {"MESSAGE": "two"}
    async with harness.hold():
        change = await provider.update_env(book.key(key), {k: SecretStr(v) for k, v in two.items()}, revision(two),
                                           book.recorder(key, None))  # fmt: skip
        rt = await provider.runtime(book.key(key))
        if change.outcome == EnvOutcome.restarted:
            assert await harness.serve(key) == "two" and rt.env_revision == revision(two)
        else:
            assert change.outcome == EnvOutcome.pending, change
            assert await harness.serve(key) == "one" and rt.env_revision == v1.env_revision

    async def applied() -> bool:
        return (await provider.runtime(book.key(key))).env_revision == revision(two)

    await wait_for(applied, what="the env change applied")
    assert await harness.serve(key) == "two"
    assert {d for _, d in running(await harness.instances(key))} == {v1.deployment_id}  # same release

    broken = {"MESSAGE": "three", "CRASH": "web"}
    try:
        change = await provider.update_env(book.key(key), {k: SecretStr(v) for k, v in broken.items()},
                                           revision(broken), book.recorder(key, None))  # fmt: skip
    except ReleaseFailed as e:  # a synchronous restart that failed its health check
        assert "web" in e.reason
    else:
        assert change.outcome == EnvOutcome.pending, change
        await harness.settle()
    assert (await provider.runtime(book.key(key))).env_revision == revision(two)
    assert await harness.serve(key) == "two"


@pytest.mark.parametrize(("harness", "where"), CRASH_CASES, indirect=["harness"])
async def test_interrupted_release_resumes_without_a_second_deployment(
    harness: Harness, book: RefBook, where: str
) -> None:
    """InkMCP dies in the middle of a release; a new instance (core resuming at start-up: restore the live one,
    then release the same deployment again) finishes it with exactly one remote deployment per process and
    exactly one instance of each process."""
    kind, name = where.split(":")
    key = harness.key()
    v1 = harness.request(key, message="one", worker=True)
    if kind == "point" and name in ("after_create_project", "after_create_app"):
        v1 = harness.request(key, message="two", worker=True)  # these happen in a service's first release
        target = v1
    else:
        await release(harness, book, v1)
        # same commit, new env (deploy_app with env_vars): only the write-ahead tells its deployment from v1's
        target = harness.request(key, message="two", worker=True, commit=v1.commit)
    armed = harness.provider
    if kind == "step":
        armed = Interrupting(harness.provider, Step(name), Interrupt)
    else:
        harness.arm_crash(name)
    with pytest.raises((Interrupt, FakeCrash)):
        await release(harness, book, target, provider=armed)
    await harness.settle()  # a restart takes a while: what the dead process queued remotely has finished

    provider = await harness.restart()
    if target is not v1:
        await provider.restore(book.request(v1))  # core restores the live release first
    result = await release(harness, book, target)
    assert result.url
    assert running(await harness.instances(key)) == [("web", target.deployment_id), ("worker", target.deployment_id)]
    assert await harness.serve(key) == "two"
    census = harness.census(key)
    if census is not None:
        assert census["projects"] == 1 and census["apps"] == {"web": 1, "worker": 1}, census
        assert census["deployments"][target.deployment_id] == {"web": 1, "worker": 1}, census


async def test_retryable_errors_then_success_leave_no_duplicates(harness: Harness, book: RefBook) -> None:
    """A ProviderUnavailable (an answer lost on the way, a 503, a full queue...) is retryable: the same
    release again succeeds, and nothing remote exists twice."""
    for scenario in ["step:building", *harness.fault_scenarios()]:
        key = harness.key()
        req = harness.request(key, message="one", worker=True)
        provider = harness.provider
        if scenario == "step:building":
            provider = Interrupting(harness.provider, Step.building,
                                    lambda: ProviderUnavailable("connection reset", retry_after=0.01))
        else:
            harness.arm_fault(scenario)
        errors: list[ProviderUnavailable] = []
        for _ in range(5):
            try:
                await release(harness, book, req, provider=provider)
                break
            except ProviderUnavailable as e:
                assert e.retryable
                errors.append(e)
                await harness.settle()  # core waits before it retries: whatever the attempt queued has finished
        assert errors, f"{scenario}: no retryable error was raised"
        assert running(await harness.instances(key)) == [("web", req.deployment_id), ("worker", req.deployment_id)]
        census = harness.census(key)
        if census is not None:
            assert census == {"projects": 1, "apps": {"web": 1, "worker": 1},
                              "deployments": {req.deployment_id: {"web": 1, "worker": 1}}}, (scenario, census)


@pytest.mark.parametrize("harness", [provider_param(name) for name in REMOTE_PROVIDERS], indirect=True)
async def test_a_refusal_of_the_platform_is_permanent(harness: Harness, book: RefBook) -> None:
    key = harness.key()
    await release(harness, book, harness.request(key, message="one"))
    harness.refuse("deploy", "Missing required permissions: deploy")
    with pytest.raises(ProviderRefused) as refused:
        await release(harness, book, harness.request(key, message="two"))
    assert not refused.value.retryable and "Missing required permissions: deploy" in refused.value.reason
    assert await harness.serve(key) == "one"


async def test_remove_is_idempotent_and_leaves_nothing(harness: Harness, book: RefBook) -> None:
    key = harness.key()
    await release(harness, book, harness.request(key, message="one", worker=True))
    await harness.provider.remove(book.key(key))
    await harness.provider.remove(book.key(key))

    async def nothing_runs() -> bool:
        return await harness.instances(key) == []

    await wait_for(nothing_runs, what="no process left")
    assert await harness.serve(key) is None
    census = harness.census(key)
    if census is not None:
        assert census["apps"] == {}
    project_ref = book.refs.get((RefScope.project, key.project_id), {})
    await harness.provider.remove_project(key.project_id, project_ref)
    await harness.provider.remove_project(key.project_id, project_ref)
    census = harness.census(key)
    if census is not None:
        assert census["projects"] == 0
