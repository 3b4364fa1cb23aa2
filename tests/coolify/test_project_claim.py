"""Issue 8 (overhead6): a first release claims its Coolify project's create instead of listing Coolify's projects
first. Core's `record.claim_project` is a fenced compare-and-set of the project's ref (core/deployments.py
_CLAIM_PROJECT_SQL): it writes the create's write-ahead mark only if the stored ref records no project, no create in
flight and no create answered with an error. Every create of a project is preceded by its durable mark, so a won claim
proves no create of that project was ever sent: the lookup by name is not needed (12 -> 11 requests per first
web + worker deploy). Two releases of one new project's services at once (two pipelines, maybe two replicas) race at
the claim, not at Coolify: the loser waits for the winner's project instead of listing, missing it, and making a
second one. A recorder without `claim_project` (outside a pipeline) looks first, as before.

Against the Coolify stand-in (spec-checked both ways), with `ClaimBook`: RefBook's refs plus the claim's semantics
in memory (the SQL itself is tested over PostgreSQL in tests/replicas/test_deploy_path_new_project.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from inkmcp.providers.compute.base import ProviderRef, ProviderUnavailable, Record, RefScope, ServiceKey
from tests.contract.conftest import CoolifyHarness, RefBook, release


class ClaimBook(RefBook):
    """RefBook with core's claim: the project's ref written only if the stored one has no project_uuid, no
    pending.project and no create_answered_error; else the stored one handed back."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: list[bool] = []

    def recorder(self, key: ServiceKey, deployment_id: str | None) -> Record:
        record = super().recorder(key, deployment_id)

        async def claim_project(ref: ProviderRef) -> tuple[bool, dict[str, Any]]:
            await asyncio.sleep(0)  # a round trip: the other release runs meanwhile
            stored = self.refs.get((RefScope.project, key.project_id), {})
            free = not (stored.get("project_uuid") or (stored.get("pending") or {}).get("project")
                        or stored.get("create_answered_error"))  # fmt: skip
            self.claims.append(free)
            if free:
                self.refs[(RefScope.project, key.project_id)] = json.loads(json.dumps(ref))
                return True, dict(ref)
            return False, json.loads(json.dumps(stored))

        record.claim_project = claim_project  # type: ignore[attr-defined]
        return record


def ops(h: CoolifyHarness, since: int = 0) -> list[str]:
    return [s.operation for s in h.standin.requests[since:]]


async def test_a_first_release_claims_its_project_and_looks_nothing_up(h: CoolifyHarness) -> None:
    book = ClaimBook()
    key = h.key()
    await release(h, book, h.request(key, message="one", worker=True))
    seen = ops(h)
    assert "list-projects" not in seen and seen.count("create-project") == 1, seen
    assert book.claims == [True]
    assert h.census(key)["projects"] == 1
    ref = book.refs[(RefScope.project, key.project_id)]
    assert ref["project_uuid"] and ref["environment_uuid"] and "pending" not in ref
    assert await h.serve(key) == "one"


async def test_two_services_of_a_new_project_released_at_once_make_one_project(h: CoolifyHarness) -> None:
    """The create is held 0.3 s at Coolify, so the second release claims while the first's create is in flight:
    it waits for the first's project (no lookup, no second create) and both run in it."""
    book = ClaimBook()
    web = h.key()
    api = web.model_copy(update={"service_id": f"{web.service_id}-api", "service_name": "api"})
    h.standin.delay_next("POST", r"/projects", 0.3)
    await asyncio.gather(release(h, book, h.request(web, message="one")),
                         release(h, book, h.request(api, message="two")))
    seen = ops(h)
    assert seen.count("create-project") == 1 and "list-projects" not in seen, seen
    assert book.claims.count(True) == 1 and False in book.claims, book.claims  # the second one waited
    assert h.census(web)["projects"] == 1
    project = next(p for p in h.standin.projects.values() if p.uuid == book.refs[(RefScope.project, web.project_id)]
                   ["project_uuid"])  # fmt: skip
    environments = {e.id for e in project.environments}
    for key in (web, api):  # each service's application is in that one project
        app = book.refs[(RefScope.service, key.service_id)]["apps"]["web"]
        assert next(a for a in h.standin.applications.values() if a.uuid == app).environment_id in environments
    assert await h.serve(web) == "one" and await h.serve(api) == "two"


async def test_a_project_create_answered_with_an_error_is_looked_up_by_the_next_attempt(h: CoolifyHarness) -> None:
    """Coolify answered the create with a 500 after making the project: the answer settles the request (no mark, no
    wait), but the project may exist, so the ref says `create_answered_error` and the next attempt claims nothing and
    looks by name first: it finds the project and makes no second one."""
    book = ClaimBook()
    key = h.key()
    req = h.request(key, message="one")
    h.provider.late_window = 3600.0  # a wait would hang the test
    h.standin.fail_next("POST", r"/projects", status=500, after=True)
    with pytest.raises(ProviderUnavailable):
        await release(h, book, req)
    ref = book.refs[(RefScope.project, key.project_id)]
    assert ref.get("create_answered_error") and not (ref.get("pending") or {}).get("project"), ref
    since = len(h.standin.requests)
    await release(h, book, req)
    seen = ops(h, since)
    assert "list-projects" in seen and "create-project" not in seen, seen
    assert h.census(key)["projects"] == 1
    ref = book.refs[(RefScope.project, key.project_id)]
    assert "create_answered_error" not in ref and ref["project_uuid"]
    assert await h.serve(key) == "one"


async def test_without_a_claim_the_project_is_looked_up_first_as_before(h: CoolifyHarness) -> None:
    book = RefBook()  # core's recorder outside a pipeline offers no claim
    key = h.key()
    await release(h, book, h.request(key, message="one"))
    seen = ops(h)
    assert seen.index("list-projects") < seen.index("create-project"), seen
    assert h.census(key)["projects"] == 1
