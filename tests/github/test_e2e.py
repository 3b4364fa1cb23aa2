"""Issue 11 end to end: a real `inkmcp serve` (local compute, real PostgreSQL, the real MCP streamable-HTTP
transport) against the GitHub stand-in (OAuth, REST, git smart HTTP via git http-backend, signed webhooks).

One server for the module (started once: ~5 s). Accounts sign in through `identity.sign_in` against the server's
own store (the browser path is the web UI's tests). INKMCP_ALLOW_LOCAL_SOURCES is OFF: the stand-in on loopback is
reached only because it is the configured INKMCP_GITHUB_URL (SourcePolicy.trusted_origins).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import func, select

from inkmcp.core.accounts import AccountService
from inkmcp.github.client import GitHubUser
from inkmcp.github.identity import sign_in
from inkmcp.github.models import DeploymentTrigger, GitHubDelivery
from inkmcp.github.standin import StandinGitHub, User
from inkmcp.github.standin.state import Hook
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.models import Account, AuditEntry, Deployment
from tests.github_support import deploy_live, github_env, unique_login
from tests.support import ServerProc, ToolFailed, call, call_error, dispose_server, make_server, mcp_session

pytestmark = pytest.mark.slow

SECRET = "whsec-" + secrets.token_hex(12)
SITE = {"index.html": "<!doctype html><h1>private site v1</h1>\n"}


@dataclass
class World:
    server: ServerProc
    store: Store
    alice: User
    bob: User
    alice_key: str
    bob_key: str
    carol_key: str  # an account that never signed in with GitHub
    tokens: list[str]  # every GitHub token the server holds

    @property
    def hook_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/webhooks/github"


@pytest.fixture(scope="module")
async def world(github_standin: StandinGitHub) -> AsyncIterator[World]:
    srv = make_server("inkmcp-github-", INKMCP_ALLOW_LOCAL_SOURCES="0")
    srv.env.update(github_env(github_standin, public_url=f"http://127.0.0.1:{srv.port}", webhook_secret=SECRET))
    srv.start()
    store: Store | None = None
    try:
        pg = EmbeddedPostgres(srv.data_dir / "pg" / "control")
        store = await open_store(pg.url(database="postgres").get_secret_value())
        box = SecretBox.load(srv.data_dir)
        alice, bob = github_standin.add_user(unique_login("alice")), github_standin.add_user(unique_login("bob"))
        tokens = [github_standin.state.issue_token(u.id) for u in (alice, bob)]  # what an OAuth exchange returns
        keys = []
        for user, token in zip((alice, bob), tokens, strict=True):
            account = await sign_in(store.sessionmaker, box, GitHubUser(id=user.id, login=user.login), token)
            keys.append((await AccountService(store.sessionmaker).create_key(account)).key)
        carol = (await AccountService(store.sessionmaker).create_key(unique_login("carol"))).key
        yield World(srv, store, alice, bob, keys[0], keys[1], carol, tokens)
    finally:
        if store is not None:
            await store.close()
        dispose_server(srv)


def via_proxy(server: ServerProc, url: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{server.proxy_port}/", headers={"Host": httpx.URL(url).netloc.decode()},
                     timeout=30)


async def until(what: str, check: Any, timeout: float = 60, detail: Any = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {detail()}"
        await asyncio.sleep(0.2)


class ArgvWatcher:
    """Samples every process's argv (as `ps` shows it) while a clone runs."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in psutil.process_iter(["cmdline"]):
                cmdline = proc.info.get("cmdline")
                if cmdline:
                    self.seen.add(" ".join(cmdline))
            time.sleep(0.01)

    def __enter__(self) -> ArgvWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def leaked(token: str, text: str | bytes) -> bool:
    data = text.encode() if isinstance(text, str) else text
    basic = base64.b64encode(f"x-access-token:{token}".encode())
    return token.encode() in data or basic in data


def scan_dir(root: Path, tokens: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits += [f"{path}: token {i}" for i, t in enumerate(tokens) if leaked(t, data)]
    return hits


async def deployments_of(store: Store, commit: str | None = None) -> int:
    async with store.sessionmaker() as s:
        q = select(func.count()).select_from(Deployment)
        return (await s.execute(q.where(Deployment.commit == commit) if commit else q)).scalar_one()


async def test_private_repo_deploys_with_the_token_and_a_signed_push_redeploys_it(
        world: World, github_standin: StandinGitHub) -> None:
    alice = world.alice
    repo = github_standin.create_repo(alice.login, "site", private=True, files=SITE)
    github_standin.add_hook(repo, world.hook_url, SECRET)
    results: list[str] = []
    github_standin.git_latency = 0.3  # the clone lasts long enough for the argv watcher to see git's processes
    try:
        with ArgvWatcher() as argv:
            async with mcp_session(world.server, world.alice_key) as s:
                dep = await deploy_live(s, repo_url=github_standin.html_url(repo), service_type="webapp_static")
    finally:
        github_standin.git_latency = 0.0
    results.append(json.dumps(dep))
    assert "private site v1" in via_proxy(world.server, dep["url"]).text
    fetches = [r for r in github_standin.git_requests if f"/{alice.login}/site" in r[1]]
    assert fetches and all(status == 200 for _, _, status in fetches), fetches  # authenticated, not 401
    git_argv = [a for a in argv.seen if f"/{alice.login}/site" in a and "git" in a]
    assert git_argv, "the watcher never saw the clone's git processes"
    assert not any(leaked(t, a) for t in world.tokens for a in argv.seen), "a GitHub token was in a process's argv"

    # a signed push: the service serves the new commit, and the deployment says which push made it
    after, deliveries = await github_standin.push(repo, {"index.html": "<h1>private site v2</h1>\n"}, "v2",
                                                  pusher=alice)
    assert [d.status for d in deliveries] == [202], world.server.log()
    assert json.loads(deliveries[0].body)["after"] == after
    async with mcp_session(world.server, world.alice_key) as s:
        async def live_v2() -> dict[str, Any] | None:
            listed = await call(s, "list_services", project_name="site")
            results.append(json.dumps(listed))
            web = listed["services"][0]
            return web if web["commit"] == after[:12] and web["deployment_status"] == "live" else None

        new = await until("the pushed commit to go live", live_v2, detail=lambda: results[-1])
        view = await call(s, "wait_for_deployment", deployment_id=new["deployment_id"], timeout_seconds=0)
        results.append(json.dumps(view))
    assert "private site v2" in via_proxy(world.server, dep["url"]).text
    history = " ".join(view["history"])
    assert f"GitHub push {after[:12]}" in history and alice.login in history, history
    async with world.store.sessionmaker() as db:
        trigger = (await db.execute(select(DeploymentTrigger).where(
            DeploymentTrigger.deployment_id == uuid.UUID(new["deployment_id"])))).scalar_one()
    assert (trigger.delivery_id, trigger.commit, trigger.pusher) == (deliveries[0].id, after, alice.login)
    async with world.store.sessionmaker() as db:  # the redeploy went through deploy_app as alice's account: audited
        audited = (await db.execute(select(AuditEntry.account_id, AuditEntry.result).where(
            AuditEntry.actor == "github-push", AuditEntry.action == "deploy_app"))).all()
        alice_id = (await db.execute(select(Account.id).where(Account.name == alice.login))).scalar_one()
    assert audited == [(alice_id, "ok")], audited

    # a replayed delivery (same id, valid signature) is ignored
    count = await deployments_of(world.store)
    payload = github_standin.push_payload(repo, "main", "0" * 40, after, alice)
    replay = await github_standin.deliver(Hook(world.hook_url, SECRET), "push", payload, delivery_id=deliveries[0].id)
    assert replay.status == 200 and json.loads(replay.response_body)["status"] == "duplicate"

    # forged pushes: wrong secret, no signature, signature of another body → 401, nothing recorded or deployed
    v3 = github_standin.state.commit(repo, {"index.html": "<h1>v3</h1>\n"}, "v3")
    forged_payload = github_standin.push_payload(repo, "main", after, v3, alice)
    for hook, signature in ((Hook(world.hook_url, "not-the-secret"), None), (Hook(world.hook_url, None), None),
                            (Hook(world.hook_url, SECRET), "sha256=" + "0" * 64)):
        forged = await github_standin.deliver(hook, "push", forged_payload, signature=signature)
        assert forged.status == 401, forged
        async with world.store.sessionmaker() as db:
            assert await db.get(GitHubDelivery, forged.id) is None
    ping = await github_standin.deliver(Hook(world.hook_url, SECRET), "ping", {"zen": "Keep it logically awesome."})
    assert ping.status == 200
    other = await github_standin.deliver(Hook(world.hook_url, SECRET), "issues", {"action": "opened"})
    assert other.status == 200
    assert await deployments_of(world.store) == count and await deployments_of(world.store, v3) == 0

    # auto_deploy=false (the .git form of the URL names the same service): a push no longer redeploys
    async with mcp_session(world.server, world.alice_key) as s:
        again = await deploy_live(s, repo_url=github_standin.clone_url(repo), service_type="webapp_static",
                                  auto_deploy=False)
        results.append(json.dumps(again))
    assert again["commit"] == v3  # an agent's deploy_app takes the branch's head
    v4 = github_standin.state.commit(repo, {"index.html": "<h1>v4</h1>\n"}, "v4")
    off = await github_standin.deliver(Hook(world.hook_url, SECRET), "push",
                                       github_standin.push_payload(repo, "main", v3, v4, alice))
    assert off.status == 202 and json.loads(off.response_body)["services"] == []
    assert await deployments_of(world.store, v4) == 0

    # the token is nowhere: tool results, /metrics, the server's log, the whole data dir
    metrics = httpx.get(f"http://127.0.0.1:{world.server.port}/metrics", timeout=10).text
    for t in world.tokens:
        assert not any(leaked(t, r) for r in results)
        assert not leaked(t, metrics)
        assert not leaked(t, world.server.log_path.read_bytes())  # type: ignore[union-attr]
    assert scan_dir(world.server.data_dir, world.tokens) == []


async def test_a_repo_the_account_cannot_read_is_refused_with_what_to_do(world: World,
                                                                         github_standin: StandinGitHub) -> None:
    repo = github_standin.create_repo(world.alice.login, "vault", private=True, files=SITE)
    async with mcp_session(world.server, world.bob_key) as s:
        error = await call_error(s, "deploy_app", repo_url=github_standin.clone_url(repo))
        assert f"{world.alice.login}/vault" in error and world.bob.login in error and "collaborator" in error, error
        assert (await call(s, "list_projects"))["projects"] == []  # nothing half-made
    assert not any(f"/{world.alice.login}/vault" in p for _, p, _ in github_standin.git_requests)  # never cloned
    async with mcp_session(world.server, world.carol_key) as s:
        error = await call_error(s, "deploy_app", repo_url=github_standin.html_url(repo))
        assert f"{world.alice.login}/vault" in error and "sign in with GitHub" in error, error
        with pytest.raises(ToolFailed, match="auto_deploy"):
            await call(s, "deploy_app", repo_url="https://example.com/x/y.git", auto_deploy=True)


async def test_concurrent_copies_of_one_delivery_are_handled_once(world: World,
                                                                  github_standin: StandinGitHub) -> None:
    repo = github_standin.create_repo(world.bob.login, "tool", files={"index.html": "x"})
    head = github_standin.state.head(repo)
    payload = github_standin.push_payload(repo, "main", "0" * 40, head, world.bob)
    hook, delivery = Hook(world.hook_url, SECRET), str(uuid.uuid4())
    answers = await asyncio.gather(*(github_standin.deliver(hook, "push", payload, delivery_id=delivery)
                                     for _ in range(6)))
    assert sorted(a.status for a in answers) == [200] * 5 + [202], [a.response_body for a in answers]
    async with world.store.sessionmaker() as db:
        assert (await db.execute(select(func.count()).select_from(GitHubDelivery)
                                 .where(GitHubDelivery.delivery_id == delivery))).scalar_one() == 1


async def test_operator_cli_moves_a_github_sign_in(world: World, github_standin: StandinGitHub) -> None:
    """`inkmcp accounts github-move` on the running server's data dir: the binding moves, audited (a typo creating
    nothing is tested on move_identity, which the command calls before anything else)."""
    ivy = github_standin.add_user(unique_login("ivy"))
    box = SecretBox.load(world.server.data_dir)
    await AccountService(world.store.sessionmaker).create_key(ivy.login)
    fallback = await sign_in(world.store.sessionmaker, box, GitHubUser(id=ivy.id, login=ivy.login), "gho_x" * 8)
    done = world.server.cli("accounts", "github-move", fallback, ivy.login)
    assert f"now signs in to account {ivy.login}" in " ".join(done.stdout.split())
    again = await sign_in(world.store.sessionmaker, box, GitHubUser(id=ivy.id, login=ivy.login), "gho_y" * 8)
    assert again == ivy.login
    async with world.store.sessionmaker() as db:
        moves = select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "github_move",
                                                                   AuditEntry.result == "ok")
        assert (await db.execute(moves)).scalar_one() == 1


async def test_tag_refs_follow_tag_pushes_and_commit_refs_are_never_tracked(world: World,
                                                                             github_standin: StandinGitHub) -> None:
    """Issue 11 item 3: a service deployed from a tag is redeployed when a push moves that tag (GitHub sends
    `refs/tags/<name>` push events), not by pushes to branches; a commit ref refuses auto_deploy=true and is not
    tracked when it is omitted."""
    alice = world.alice
    repo = github_standin.create_repo(alice.login, "tagged", files={"index.html": "<h1>tag one</h1>\n"})
    github_standin.add_hook(repo, world.hook_url, SECRET)
    one = github_standin.state.head(repo)
    github_standin.state.tag(repo, "v1", one)
    async with mcp_session(world.server, world.alice_key) as s:
        dep = await deploy_live(s, repo_url=github_standin.html_url(repo), service_type="webapp_static", ref="v1")
    assert dep["commit"] == one

    # a push to the branch: the tag did not move, the service is not redeployed
    two = github_standin.state.commit(repo, {"index.html": "<h1>tag two</h1>\n"}, "two")
    branch_push = await github_standin.deliver_push(repo, "main", one, two, alice)
    assert [json.loads(d.response_body)["services"] for d in branch_push] == [[]]
    # the tag moves to the new commit (GitHub's push event for refs/tags/v1): redeployed at what v1 names now
    github_standin.state.tag(repo, "v1", two)
    tag_push = await github_standin.deliver_push(repo, "refs/tags/v1", one, two, alice)
    assert [json.loads(d.response_body)["services"] for d in tag_push] == [["tagged/web"]], tag_push
    async with mcp_session(world.server, world.alice_key) as s:
        async def moved() -> bool:
            web = (await call(s, "list_services", project_name="tagged"))["services"][0]
            return web["commit"] == two[:12] and web["deployment_status"] == "live"

        await until("the moved tag to go live", moved)
        assert "tag two" in via_proxy(world.server, dep["url"]).text

        # a commit: auto_deploy=true is refused with what to pass instead, nothing made for that service
        error = await call_error(s, "deploy_app", repo_url=github_standin.html_url(repo), service_name="pinned",
                                 service_type="webapp_static", ref=one[:12], auto_deploy=True)
        assert "commit" in error and "auto_deploy" in error and "branch" in error, error
        services = (await call(s, "list_services", project_name="tagged"))["services"]
        assert [x["name"] for x in services] == ["web"]
        # omitted: deployed as it is and not tracked; a push to main never redeploys it
        pinned = await deploy_live(s, repo_url=github_standin.html_url(repo), service_name="pinned",
                                   service_type="webapp_static", ref=one[:12])
    assert pinned["commit"] == one
    three = github_standin.state.commit(repo, {"index.html": "<h1>three</h1>\n"}, "three")
    later = await github_standin.deliver_push(repo, "main", two, three, alice)
    assert [json.loads(d.response_body)["services"] for d in later] == [[]]
