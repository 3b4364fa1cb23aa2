"""Project names are global (they form the URLs) and creation stays within the account's limit."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from inkmcp.core.accounts import LimitOverrides
from inkmcp.core.limits import LimitReached
from inkmcp.errors import Conflict
from inkmcp.store.models import Project

TAKEN = re.compile(r"project name '(?P<name>[a-z0-9-]+)' is taken; try '(?P<suggestion>[a-z0-9-]+)'\.")


async def _rows(core, name: str) -> list[Project]:
    async with core.store.session() as s:
        return list((await s.execute(select(Project).where(func.lower(Project.name) == name))).scalars())


async def test_two_accounts_racing_for_one_name_get_exactly_one_winner(make_core) -> None:
    core = make_core()
    alice, mallory = await core.account("alice"), await core.account("mallory")
    for _ in range(10):
        name = core.name("shop")
        results = await asyncio.gather(
            core.projects.ensure(alice, name), core.projects.ensure(mallory, name), return_exceptions=True
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1 and len(lost) == 1, results
        assert isinstance(lost[0], Conflict) and TAKEN.search(str(lost[0])), lost[0]
        project, created = won[0]
        assert created is True
        rows = await _rows(core, name)
        assert [r.id for r in rows] == [project.id]  # one row, owned by the winner
        winner = alice if results[0] is won[0] else mallory
        assert rows[0].account_id == winner.account_id


async def test_name_taken_error_suggests_a_free_name(make_core) -> None:
    core = make_core()
    alice, bob = await core.account("alice"), await core.account("bob")
    name = core.name("shop")
    await core.projects.ensure(alice, name)
    # the first candidate, <name>-<bob's account>, is taken too: the suggestion must skip it
    await core.projects.ensure(alice, f"{name}-{bob.account_name}"[:63].rstrip("-"))
    with pytest.raises(Conflict) as err:
        await core.projects.ensure(bob, name)
    m = TAKEN.search(err.value.render())
    assert m and m["name"] == name, err.value.render()
    assert err.value.argument == "project_name"
    suggestion = m["suggestion"]
    assert suggestion.startswith(name) and suggestion != f"{name}-{bob.account_name}"
    assert await _rows(core, suggestion) == []
    project, created = await core.projects.ensure(bob, suggestion)  # and it really is free
    assert created and project.account_id == bob.account_id
    # the holder is unaffected
    assert (await core.projects.get(alice, name)).account_id == alice.account_id
    # deploy_app's early check gives the same error before any fetch
    with pytest.raises(Conflict, match="is taken; try"):
        await core.projects.precheck_deploy(bob, name, "web")


async def test_taken_suggestion_with_account_name_when_free(make_core) -> None:
    core = make_core()
    alice, bob = await core.account("alice"), await core.account("bob")
    name = core.name("api")
    await core.projects.ensure(alice, name)
    with pytest.raises(Conflict) as err:
        await core.projects.ensure(bob, name)
    assert f"try '{name}-{bob.account_name}'" in err.value.render()


async def test_owner_reensure_is_idempotent_even_at_the_limit(make_core) -> None:
    core = make_core(max_projects=1)
    alice = await core.account("alice")
    name = core.name("solo")
    results = await asyncio.gather(*[core.projects.ensure(alice, name) for _ in range(8)])
    assert sum(created for _, created in results) == 1
    assert len({p.id for p, _ in results}) == 1
    again, created = await core.projects.ensure(alice, name)  # at the limit: still fine for its own name
    assert not created and again.id == results[0][0].id
    with pytest.raises(LimitReached):
        await core.projects.ensure(alice, core.name("second"))


async def test_database_refuses_a_second_holder_even_without_the_service(make_core) -> None:
    """The unique index is what decides, not a check in Python: a raw insert of a taken name fails,
    whatever its case."""
    core = make_core()
    alice, mallory = await core.account("alice"), await core.account("mallory")
    name = core.name("raw")
    await core.projects.ensure(alice, name)
    for variant in (name, name.upper()):
        with pytest.raises(IntegrityError, match="uq_projects_name"):
            async with core.store.session() as s, s.begin():
                s.add(Project(account_id=mallory.account_id, name=variant))


async def test_project_limit_is_exact_under_concurrent_creation(make_core) -> None:
    core = make_core(max_projects=3)
    acct = await core.account("hoarder")
    names = [core.name(f"q{i}") for i in range(10)]
    results = await asyncio.gather(*[core.projects.ensure(acct, n) for n in names], return_exceptions=True)
    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(created) == 3, results
    assert len(refused) == 7 and all(isinstance(e, LimitReached) for e in refused), refused
    assert str(refused[0]) == (
        "account limit reached: 3 projects (INKMCP_MAX_PROJECTS_PER_ACCOUNT); delete a project or ask the "
        "operator to raise it (inkmcp accounts limits <account> --max-projects N)."
    )
    async with core.store.session() as s:
        n = (await s.execute(select(func.count()).select_from(Project).where(Project.account_id == acct.account_id)))
        assert n.scalar_one() == 3


async def test_operator_override_raises_and_resets_the_limit(make_core) -> None:
    core = make_core(max_projects=1)
    acct = await core.account("grown")
    await core.projects.ensure(acct, core.name("a"))
    with pytest.raises(LimitReached):
        await core.projects.ensure(acct, core.name("b"))
    limits = await core.accounts.set_limits(acct.account_name, LimitOverrides(max_projects=2))
    assert limits.max_projects == 2 and limits.overridden == ["max_projects"]
    await core.projects.ensure(acct, core.name("b"))
    limits = await core.accounts.set_limits(acct.account_name, LimitOverrides(reset=True))
    assert limits.max_projects == 1 and limits.overridden == []
    with pytest.raises(LimitReached):
        await core.projects.ensure(acct, core.name("c"))


async def test_unknown_account_limits_are_a_clear_error(make_core) -> None:
    core = make_core()
    from inkmcp.errors import NotFound

    with pytest.raises(NotFound, match="no account named"):
        await core.accounts.set_limits(f"ghost-{uuid.uuid4().hex[:6]}", LimitOverrides(max_projects=3))
