"""Issue 11, private repos under Coolify compute, end to end: a real `inkmcp serve` on Coolify (the Coolify stand-in,
its runner really building and serving what is deployed, every request checked against Coolify's spec) with the
GitHub stand-in (REST checked against GitHub's spec; its deploy keys are what the runner's "SSH clone" checks),
over the real MCP transport.

A private repo the signed-in user administers deploys through a deploy key: one read-only key on GitHub, the same
key's private half in Coolify, the application created with `POST /applications/private-deploy-key` at the exact
commit, and the runner clones it only because GitHub's side accepts that key for that repo. A redeploy adds no
second key; deleting the service removes both. A collaborator without admin, and a user who cannot read the repo,
get clear tool errors and nothing is made. Neither the token nor the private key appears in results, /metrics or
the server's log.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from inkmcp.core.accounts import AccountService
from inkmcp.github.client import GitHubUser
from inkmcp.github.identity import sign_in
from inkmcp.github.standin import StandinGitHub
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import open_store
from inkmcp.store.embedded import EmbeddedPostgres
from tests.e2e.coolify import CoolifyServerProc, coolify_server
from tests.github_support import deploy_live, github_env, unique_login
from tests.support import call, call_error, mcp_session

pytestmark = pytest.mark.slow

SITE = {"index.html": "<!doctype html><h1>deploy-key site v1</h1>\n"}


@contextlib.contextmanager
def keyed_coolify_server(github_standin: StandinGitHub, prefix: str) -> Iterator[CoolifyServerProc]:
    """A real serve over the Coolify stand-in, with GitHub configured and Coolify's SSH clone meeting GitHub's
    deploy keys."""
    with coolify_server(prefix, (), INKMCP_ALLOW_LOCAL_SOURCES="0", **github_env(github_standin)) as srv:
        srv.runner.ssh_clone = github_standin.ssh_clone
        yield srv


@pytest.fixture(scope="module")
def server(github_standin: StandinGitHub) -> Iterator[CoolifyServerProc]:
    with keyed_coolify_server(github_standin, "inkmcp-ghkeys-") as srv:
        yield srv


async def signed_in(srv: CoolifyServerProc, standin: StandinGitHub, login: str) -> tuple[str, str, Any]:
    """A GitHub user signed in to the server's store: (API key, GitHub token, stand-in user)."""
    user = standin.add_user(unique_login(login))
    token = standin.state.issue_token(user.id)
    store = await open_store(EmbeddedPostgres(srv.data_dir / "pg" / "control").url(database="postgres")
                             .get_secret_value())
    try:
        account = await sign_in(store.sessionmaker, SecretBox.load(srv.data_dir),
                                GitHubUser(id=user.id, login=user.login), token)
        key = (await AccountService(store.sessionmaker).create_key(account)).key
    finally:
        await store.close()
    return key, token, user


def key_body(pem: str) -> str:
    """The base64 body of an OpenSSH private key (what a leak would contain, in any wrapping)."""
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


def leaked(secret: str, text: str) -> bool:
    return secret in text or secret[:40] in text.replace("\n", "") or \
        base64.b64encode(f"x-access-token:{secret}".encode()).decode() in text


async def test_private_repo_deploys_through_a_deploy_key_and_others_are_refused(
        server: CoolifyServerProc, github_standin: StandinGitHub) -> None:
    alice_key, alice_token, alice = await signed_in(server, github_standin, "alice")
    bob_key, bob_token, bob = await signed_in(server, github_standin, "bob")
    repo = github_standin.create_repo(alice.login, "site", private=True, files=SITE, collaborators=[bob.login])
    results: list[str] = []

    async with mcp_session(server, alice_key) as s:
        dep = await deploy_live(s, repo_url=github_standin.html_url(repo), service_type="webapp_static")
        results.append(json.dumps(dep))
    head = github_standin.state.head(repo)
    assert dep["commit"] == head

    # GitHub: one read-only deploy key, named after InkMCP and the service
    assert len(repo.deploy_keys) == 1, repo.deploy_keys
    gh_key = repo.deploy_keys[0]
    assert gh_key.read_only and "InkMCP" in gh_key.title and "site/web" in gh_key.title, gh_key
    # Coolify: the application was made by private-deploy-key with the SSH URL, that key and the exact commit
    standin = server.standin
    apps = [a for a in standin.applications.values() if a.fields.get("private_key_id") is not None]
    assert len(apps) == 1, [a.fields for a in standin.applications.values()]
    app = apps[0]
    host = httpx.URL(github_standin.url).host
    assert app.fields["git_repository"] == f"git@{host}:{alice.login}/site.git"
    assert app.fields["git_commit_sha"] == head
    records = [r for r in standin._key_records().values() if r["id"] == app.fields["private_key_id"]]
    assert len(records) == 1 and records[0]["name"].startswith("inkmcp-deploy-key-")
    pem = records[0]["private_key"]
    assert records[0]["public_key"].split()[:2] == gh_key.key.split()[:2]  # the pair GitHub holds the public half of
    creates = [r for r in standin.requests
               if r.method == "POST" and r.path.endswith("/applications/private-deploy-key")]
    assert [r.status for r in creates] == [201] and creates[0].body["git_commit_sha"] == head
    assert not [r for r in standin.requests if r.path.endswith("/applications/public")]  # never as a public repo
    # the runner cloned it only because GitHub's side accepted that key for that repo, and it serves the page
    assert (f"git@{host}:{alice.login}/site.git", repo.full_name) in github_standin.ssh_clones
    page = httpx.get(f"http://127.0.0.1:{server.proxy_port}/", headers={"Host": httpx.URL(dep["url"]).netloc.decode()},
                     timeout=30)
    assert "deploy-key site v1" in page.text

    # a redeploy of a new commit: the same key, nothing added on either side
    v2 = github_standin.state.commit(repo, {"index.html": "<h1>deploy-key site v2</h1>\n"}, "v2")
    keys_before = len(standin.private_keys)
    async with mcp_session(server, alice_key) as s:
        again = await deploy_live(s, repo_url=github_standin.clone_url(repo), service_type="webapp_static")
        results.append(json.dumps(again))
    assert again["commit"] == v2 and len(repo.deploy_keys) == 1 and len(standin.private_keys) == keys_before
    assert app.fields["git_commit_sha"] == v2

    # bob can read the repo but is not an admin: a clear error naming the repo and what to do; nothing made
    async with mcp_session(server, bob_key) as s:
        error = await call_error(s, "deploy_app", repo_url=github_standin.html_url(repo),
                                 service_type="webapp_static", project_name=f"site-{bob.login}")
        results.append(error)
        assert f"{alice.login.lower()}/site" in error.lower() and "admin" in error, error
        assert (await call(s, "list_projects"))["projects"] == []
        # a repo bob cannot read at all: refused before anything, as with local compute
        vault = github_standin.create_repo(alice.login, "vault", private=True, files=SITE)
        error = await call_error(s, "deploy_app", repo_url=github_standin.html_url(vault),
                                 project_name=f"vault-{bob.login}")
        results.append(error)
        assert f"{alice.login}/vault" in error and "collaborator" in error, error
        assert (await call(s, "list_projects"))["projects"] == []
    assert len(repo.deploy_keys) == 1 and vault.deploy_keys == []

    # deleting the service removes its key from GitHub and from Coolify
    key_uuid = next(u for u, r in standin._key_records().items() if r["id"] == app.fields["private_key_id"])
    async with mcp_session(server, alice_key) as s:
        results.append(json.dumps(await call(s, "delete", project_name="site", service_name="web", confirm="web")))
    assert repo.deploy_keys == []
    assert key_uuid not in standin.private_keys

    # neither the tokens nor the private key anywhere: results, /metrics, the server's log
    metrics = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text
    log = server.log_path.read_text(errors="replace")  # type: ignore[union-attr]
    for secret in (alice_token, bob_token, key_body(pem)):
        for text in (*results, metrics, log):
            assert not leaked(secret, text)
    # nor in clear anywhere in the server's data dir (its database files included); the runner's directory there
    # plays Coolify's servers, which hold the key by design
    needles = [alice_token.encode(), key_body(pem)[:40].encode()]
    for path in server.data_dir.rglob("*"):
        if path.is_file() and not path.is_symlink() and "coolify-node" not in path.parts:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            assert not any(n in data for n in needles), path
    assert github_standin.request_violations == []
