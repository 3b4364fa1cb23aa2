"""A deploy_app that fails before anything was deployed leaves nothing behind: no project, no Unix user."""

from __future__ import annotations

import os
import pwd

import pytest

from inkmcp.core.deployments import DeployRequest
from inkmcp.errors import InkError


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
    if os.geteuid() == 0:  # as root the failed call had created the project's user (and home) for the fetch
        homes = core.deploys._compute.data_dir / "homes"  # type: ignore[attr-defined]
        left = [u.pw_name for u in pwd.getpwall() if u.pw_dir.startswith(f"{homes}/")]
        assert left == [], f"users left behind: {left}"
        assert not any(homes.glob("ink-*"))
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
