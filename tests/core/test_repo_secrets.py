"""A token in repo_url is never returned by any list or view and is stored only encrypted."""

from __future__ import annotations

import uuid

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from inkmcp.core.deployments import DeployRequest
from inkmcp.store.crypto import DecryptionError, SecretBox
from inkmcp.store.models import Service


async def test_repo_url_token_is_encrypted_and_never_listed(make_core) -> None:
    core = make_core()
    alice = await core.account("alice")
    token = f"ghp_SUPERSECRET{uuid.uuid4().hex}"
    url = f"http://alice:{token}@git.example:18099/repo.git"
    name = core.name("tok")
    project, _ = await core.projects.ensure(alice, name, repo_url=url)
    sid = await core.deploys._ensure_service(project.id, DeployRequest(repo_url=url, service_name="web"))
    dep = await core.deployment(sid)

    # every read model an agent or the CLI sees
    outputs = [
        (await core.platform.list_projects(alice)).model_dump_json(),
        "".join(v.model_dump_json() for v in await core.platform.list_services(alice, name)),
        (await core.platform.wait_for_deployment(alice, str(dep), timeout=0)).model_dump_json(),
        "".join(d.model_dump_json() for d in await core.platform.list_deployments(alice, name, None)),
    ]
    for out in outputs:
        assert token not in out and "alice:" not in out, out
    listed = (await core.platform.list_projects(alice)).projects
    assert [p.repo_url for p in listed if p.name == name] == ["http://***@git.example:18099/repo.git"]

    # at rest: no column of any row of any table holds the token in clear
    async with core.store.session() as s:
        tables = (await s.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))).scalars().all()
        for table in tables:
            rows = (await s.execute(text(f'SELECT t::text FROM "{table}" t'))).scalars().all()
            assert not [r for r in rows if token in r], table
        raw = (await s.execute(text("SELECT repo_url, repo_url_enc FROM services WHERE id = :i"), {"i": sid})).one()
    assert raw.repo_url == "http://***@git.example:18099/repo.git"
    assert token.encode() not in bytes(raw.repo_url_enc)
    assert core.box.decrypt(bytes(raw.repo_url_enc)).decode() == url  # encrypted with the server's key
    with pytest.raises(DecryptionError):
        SecretBox([Fernet.generate_key()]).decrypt(bytes(raw.repo_url_enc))

    # the fetch path gets the whole URL back, and only it
    async with core.store.session() as s:
        svc = await s.get(Service, sid)
    assert core.projects.fetch_url(svc) == url


async def test_redeploy_without_token_clears_the_stored_secret(make_core) -> None:
    """The stored secret follows the latest deploy_app: a public URL next time leaves nothing behind."""
    core = make_core()
    alice = await core.account("alice")
    name = core.name("pub")
    project, _ = await core.projects.ensure(alice, name)
    secret_url = f"https://x-access-token:{uuid.uuid4().hex}@git.example/o/r.git"
    sid = await core.deploys._ensure_service(project.id, DeployRequest(repo_url=secret_url))
    public = "https://git.example/o/r.git"
    assert await core.deploys._ensure_service(project.id, DeployRequest(repo_url=public)) == sid
    async with core.store.session() as s:
        svc = await s.get(Service, sid)
    assert svc.repo_url == public and svc.repo_url_enc is None
    assert core.projects.fetch_url(svc) == public
