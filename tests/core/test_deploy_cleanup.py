"""A deploy_app that fails before anything was deployed leaves nothing behind: no project, no Unix user."""

from __future__ import annotations

import pwd

import pytest

from inkmcp.core.deployments import DeployRequest
from inkmcp.errors import InkError
from tests.requirements import require_root


async def test_unfetchable_repo_leaves_no_project_or_user(make_core) -> None:  # type: ignore[no-untyped-def]
    core = make_core()
    p = await core.account()
    name = core.name("typo")
    # Syntactically fine, so the project is created first; the fetch then fails (the host does not resolve).
    with pytest.raises(InkError) as failed:
        await core.deploys.deploy(p, DeployRequest(repo_url="https://nonexistent.invalid/o/r.git", project_name=name))
    assert failed.value.argument == "repo_url"
    projects, total = await core.projects.list(p)
    assert total == 0 and projects == []
    # the name is free again, for this account or any other
    other = await core.account("other")
    project, created = await core.projects.ensure(other, name)
    assert created and project.name == name


async def test_existing_project_survives_a_failed_fetch(make_core) -> None:  # type: ignore[no-untyped-def]
    core = make_core()
    p = await core.account()
    name = core.name("keep")
    await core.service(p, name)  # an existing project with a service
    with pytest.raises(InkError):
        await core.deploys.deploy(p, DeployRequest(repo_url="https://nonexistent.invalid/o/r.git", project_name=name))
    projects, total = await core.projects.list(p)
    assert total == 1 and projects[0].name == name


async def test_unfetchable_repo_leaves_no_unix_user_or_home(make_core) -> None:  # type: ignore[no-untyped-def]
    """As root the failed call had created the project's user (and home) to fetch with: both must go."""
    require_root("per-project Unix users exist only when InkMCP runs as root")
    core = make_core()
    p = await core.account()
    with pytest.raises(InkError):
        await core.deploys.deploy(p, DeployRequest(repo_url="https://nonexistent.invalid/o/r.git",
                                                   project_name=core.name("typo")))  # fmt: skip
    homes = core.deploys._compute.data_dir / "homes"
    assert homes.is_dir()  # the call did get as far as creating the user's home
    left = [u.pw_name for u in pwd.getpwall() if u.pw_dir.startswith(f"{homes}/")]
    assert left == [], f"users left behind: {left}"
    assert not any(homes.glob("ink-*"))
