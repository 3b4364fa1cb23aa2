"""Polling that backs off (inkmcp/coolify/polling.py) against the stand-in's deployment clock: the interval grows
to its ceiling, every status change reaches the progress callback once, the deadline ends the wait with a
retryable PollTimeout naming the last status, polls are charged to the request budget (no 429 however eager
the backoff), transient failures do not end a wait while permanent ones do."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from inkmcp.coolify.budget import BudgetSettings, LocalBudget
from inkmcp.coolify.client import CoolifyClient, CoolifyNotFound, RetryPolicy
from inkmcp.coolify.models import ProjectCreate, PublicApplicationCreate
from inkmcp.coolify.polling import Backoff, PollTimeout, Progress, poll, wait_for_deployment
from inkmcp.coolify.spec import CoolifySpec
from tests.coolify_standin import CoolifyStandin


class RecordingSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(seconds)


@pytest.fixture
def token(standin: CoolifyStandin) -> str:
    return standin.add_token("read", "read:sensitive", "write", "deploy")


async def make_app(client: CoolifyClient, standin: CoolifyStandin) -> str:
    server = standin.add_servers(1)[0]
    project = await client.create_project(ProjectCreate(name="polling"))
    env = (await client.get_project(project)).environments[0]
    assert env.uuid
    created = await client.create_public_application(PublicApplicationCreate(
        project_uuid=project, server_uuid=server.uuid, environment_name="production", environment_uuid=env.uuid,
        git_repository="https://github.com/inkmcp/hello", git_branch="main", build_pack="nixpacks",
        ports_exposes="3000"))
    return created.uuid


@pytest.fixture
async def client(standin: CoolifyStandin, token: str, spec: CoolifySpec) -> AsyncIterator[CoolifyClient]:
    async with CoolifyClient(standin.url, token, validate_with=spec,
                             retry=RetryPolicy(attempts=1, max_total_wait=30)) as c:
        yield c
    assert standin.request_violations == []


def test_the_interval_grows_to_its_ceiling() -> None:
    intervals = Backoff(initial=0.5, factor=1.5, maximum=10.0).intervals()
    seen = [next(intervals) for _ in range(12)]
    assert seen[:4] == [0.5, 0.75, 1.125, 1.6875] and seen[-3:] == [10.0, 10.0, 10.0]
    assert all(a <= b for a, b in itertools.pairwise(seen))


async def test_a_build_is_followed_with_growing_intervals_and_each_change_reported(
        standin: CoolifyStandin, client: CoolifyClient) -> None:
    app = await make_app(client, standin)
    standin.slow_builds(1.2, app_uuid=app)
    deployment = (await client.deploy(app)).deployment_uuid
    assert deployment
    before = standin.request_count(method="GET", path=f"/deployments/{deployment}")
    sleep = RecordingSleep()
    changes: list[Progress] = []

    async def on_change(p: Progress) -> None:  # async callbacks are awaited
        changes.append(p)

    done = await wait_for_deployment(client, deployment, timeout=20, sleep=sleep, on_change=on_change,
                                     backoff=Backoff(initial=0.05, factor=2.0, maximum=0.4))
    assert done.status == "finished"
    assert [c.status for c in changes][-1] == "finished" and len({c.status for c in changes}) == len(changes)
    assert [c.previous for c in changes] == [None, *[c.status for c in changes[:-1]]]
    assert all(a.elapsed <= b.elapsed and a.polls < b.polls for a, b in itertools.pairwise(changes))
    assert sleep.calls[:4] == [0.05, 0.1, 0.2, 0.4] and max(sleep.calls) == 0.4
    polls = standin.request_count(method="GET", path=f"/deployments/{deployment}") - before
    assert polls == len(sleep.calls) + 1 and polls <= 8  # ~1.2 s of build: a handful of requests, not dozens


async def test_the_deadline_ends_the_wait_with_the_last_status(standin: CoolifyStandin,
                                                               client: CoolifyClient) -> None:
    app = await make_app(client, standin)
    standin.slow_builds(30.0, app_uuid=app)
    deployment = (await client.deploy(app)).deployment_uuid
    assert deployment
    started = time.monotonic()
    with pytest.raises(PollTimeout) as caught:
        await wait_for_deployment(client, deployment, timeout=0.6, backoff=Backoff(initial=0.1, maximum=0.2))
    elapsed = time.monotonic() - started
    e = caught.value
    assert e.retryable and e.last_status == "in_progress" and e.polls >= 3
    assert "in_progress after 1 s" in str(e) or "in_progress after 0 s" in str(e)
    assert 0.6 <= elapsed < 1.5  # the last sleep is cut to the deadline, not a whole interval beyond it
    await client.cancel_deployment(deployment)


async def test_polls_are_charged_to_the_budget(standin: CoolifyStandin, token: str, spec: CoolifySpec) -> None:
    """An eager backoff (10 ms) over a budget of 5 requests per 0.5 s: the polls wait for slots instead of
    meeting Coolify's throttle, which is set to the same limit."""
    standin.rate_limit, standin.rate_window = 5, 0.5
    budget = LocalBudget(BudgetSettings(limit=5, window=0.5, margin=0.05))
    async with CoolifyClient(standin.url, token, validate_with=spec, budget=budget) as c:
        app = await make_app(c, standin)
        standin.slow_builds(1.0, app_uuid=app)
        deployment = (await c.deploy(app)).deployment_uuid
        assert deployment
        done = await wait_for_deployment(c, deployment, timeout=20,
                                         backoff=Backoff(initial=0.01, factor=1.0, maximum=0.01))
    assert done.status == "finished"
    assert standin.throttled() == [] and standin.peak_rate(window=0.5) <= 5
    assert standin.request_count(method="GET", path=f"/deployments/{deployment}") >= 5


async def test_transient_failures_do_not_end_a_wait_but_a_missing_deployment_does(
        standin: CoolifyStandin, client: CoolifyClient) -> None:
    app = await make_app(client, standin)
    deployment = (await client.deploy(app)).deployment_uuid
    assert deployment
    standin.fail_next("GET", rf"/deployments/{deployment}", times=3, status=503)  # beyond the client's retries
    done = await wait_for_deployment(client, deployment, timeout=10, backoff=Backoff(initial=0.02, maximum=0.05))
    assert done.status == "finished"
    statuses = [r.status for r in standin.requests_of(method="GET", path=f"/deployments/{deployment}")]
    assert statuses[:3] == [503, 503, 503] and statuses[-1] == 200

    before = len(standin.requests)
    with pytest.raises(CoolifyNotFound):
        await wait_for_deployment(client, "x" * 24, timeout=10)
    assert len(standin.requests) == before + 1  # permanent: no second poll


async def test_poll_refuses_a_useless_timeout() -> None:
    async def fetch() -> str:
        return "x"

    with pytest.raises(ValueError, match="timeout=0: pass the seconds to wait for thing"):
        await poll(fetch, str, lambda _: True, what="thing", timeout=0)
