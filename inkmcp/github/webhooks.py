"""`POST /webhooks/github`: push-to-deploy (issue 11 item 5).

GitHub's contract (docs.github.com "Validating webhook deliveries", "Webhook events and payloads"):
`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body keyed with the webhook secret>`, `X-GitHub-Event`,
`X-GitHub-Delivery` (a GUID, the same on a redelivery), JSON body (content type application/json).

Order of checks, so that nothing an unauthenticated caller sends changes state: size bound → signature
(constant-time compare; missing or wrong → 401, nothing recorded) → delivery id recorded once (a replay → 200,
ignored) → event: `ping` → 200, anything but `push` → 200 ignored, a push to a branch → every service tracking
that repo and branch with auto-deploy on is redeployed through `Platform.deploy_app` with its account's principal
(actor `github-push`), so limits, audit and the GitHub access check apply as for an agent's call. Redeploys run in
the background (GitHub gives a delivery 10 s); the answer (202) lists the services queued.

A redeploy fetches the branch's head from GitHub with the service's own settings and its account's access; the
payload only says which repo and branch. So anyone holding the (server-wide) webhook secret can at most cause an
extra redeploy of a service at the code its owner already pushed, never deploy other code.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inkmcp.core.principal import Principal
from inkmcp.errors import InkError
from inkmcp.github.deploy import PUSH, PushTrigger
from inkmcp.github.models import GitHubDelivery, GitHubTracking
from inkmcp.store.models import Account, Project, Service

if TYPE_CHECKING:
    from inkmcp.core.deployments import DeployRequest
    from inkmcp.core.platform import Platform
    from inkmcp.github.settings import GitHubSettings

log = logging.getLogger(__name__)

MAX_BODY = 25 * 2**20  # GitHub caps webhook payloads at 25 MB
ACTOR = "github-push"


class _Repository(BaseModel):
    full_name: str


class _Pusher(BaseModel):
    name: str | None = None


class _Commit(BaseModel):
    id: str


class PushEvent(BaseModel):
    """The fields of GitHub's push payload InkMCP reads (others are ignored)."""

    ref: str
    after: str
    deleted: bool = False
    repository: _Repository
    pusher: _Pusher | None = None
    head_commit: _Commit | None = None


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    if not header or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().encode())


def _json_payload(raw: bytes, content_type: str) -> bytes:
    """The JSON of a delivery: the body, or its `payload` field for a hook set to application/x-www-form-urlencoded
    (GitHub signs the raw body either way)."""
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        from urllib.parse import parse_qs

        return parse_qs(raw.decode(), strict_parsing=True).get("payload", [""])[0].encode()
    return raw


def _answer(http_status: int, /, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=http_status)


class WebhookHandler:
    def __init__(self, platform: Platform, settings: GitHubSettings) -> None:
        self.platform = platform
        self.settings = settings
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, request: Request) -> Response:
        if self.settings.github_webhook_secret is None:
            return _answer(503, error="not_configured", message="GitHub webhooks are not configured on this server "
                           "(the operator sets INKMCP_GITHUB_WEBHOOK_SECRET to the webhook's secret).")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return _answer(413, error="too_large", message="payload over 25 MB")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return _answer(413, error="too_large", message="payload over 25 MB")
        raw = bytes(body)
        secret = self.settings.github_webhook_secret.get_secret_value()
        if not signature_ok(secret, raw, request.headers.get("x-hub-signature-256")):
            return _answer(401, error="bad_signature", message="X-Hub-Signature-256 is missing or does not match "
                           "the body: set the webhook's secret to INKMCP_GITHUB_WEBHOOK_SECRET.")
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        if not delivery or len(delivery) > 64:
            return _answer(400, error="no_delivery", message="X-GitHub-Delivery header missing or too long")
        if event == "ping":
            return _answer(200, status="pong")
        if event != "push":
            return _answer(200, status="ignored", reason=f"event {event!r} is not handled")
        try:
            push = PushEvent.model_validate_json(_json_payload(raw, request.headers.get("content-type", "")))
        except (ValidationError, ValueError):
            return _answer(400, error="bad_payload", message="not a push event payload")
        repo = push.repository.full_name.lower()
        if not await self._first_delivery(delivery, event, repo):
            return _answer(200, status="duplicate", delivery=delivery)
        if not push.ref.startswith(("refs/heads/", "refs/tags/")) or push.deleted:
            return _answer(200, status="ignored", reason="not a push of a branch or tag")
        # a branch or a tag: services track the plain name, which deploy_app resolves as branch first, then tag
        # (inkmcp/github/deploy.py `tracked_name`), so a push to either may move what a service's ref names
        branch = push.ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
        trigger = PushTrigger(delivery, repo, branch, push.head_commit.id if push.head_commit else push.after,
                              push.pusher.name if push.pusher else None)
        targets = await self._targets(repo, branch)
        for target in targets:
            task = asyncio.get_running_loop().create_task(self._redeploy(target, trigger))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        log.info("GitHub push %s to %s@%s: %d service(s) to redeploy", trigger.commit and trigger.commit[:12],
                 repo, branch, len(targets))
        return _answer(202, status="queued", delivery=delivery,
                       services=[f"{t['project']}/{t['service']}" for t in targets])

    async def _first_delivery(self, delivery: str, event: str, repo: str | None) -> bool:
        async with self.platform.sessions.begin() as s:
            inserted = (await s.execute(insert(GitHubDelivery).values(delivery_id=delivery, event=event, repo=repo)
                                        .on_conflict_do_nothing().returning(GitHubDelivery.delivery_id))).first()
        return inserted is not None

    async def _targets(self, repo: str, branch: str) -> list[dict[str, Any]]:
        q = (select(Service, Project.name, Account.id, Account.name)
             .join(GitHubTracking, GitHubTracking.service_id == Service.id)
             .join(Project, Project.id == Service.project_id).join(Account, Account.id == Project.account_id)
             .where(GitHubTracking.repo == repo, GitHubTracking.branch == branch, GitHubTracking.auto_deploy))
        async with self.platform.sessions() as s:
            rows = (await s.execute(q)).all()
        return [{"service": svc.name, "project": project, "principal": Principal(
                    account_id=account_id, account_name=account, actor=ACTOR), "request": self._request(svc, project)}
                for svc, project, account_id, account in rows]

    def _request(self, svc: Service, project: str) -> DeployRequest:
        """The service's last deploy_app arguments (its stored settings), so only the commit changes."""
        from inkmcp.core.deployments import DeployRequest

        st = dict(svc.settings or {})
        keys = ("mode", "service_type", "build_command", "start_command", "port", "resources", "static_dir",
                "app_dir")
        return DeployRequest(repo_url=self.platform.projects.fetch_url(svc), project_name=project,
                             service_name=svc.name, ref=svc.ref,
                             **{k: st[k] for k in keys if st.get(k) is not None})

    async def _redeploy(self, target: dict[str, Any], trigger: PushTrigger) -> None:
        PUSH.set(trigger)  # this task's context only
        where = f"{target['project']}/{target['service']}"
        try:
            view = await self.platform.deploy_app(target["principal"], target["request"], wait_seconds=0)
            log.info("push %s: %s deployment %s (%s)", trigger.delivery_id, where, view.deployment_id,
                     "reused" if view.reused else "new")
        except InkError as e:
            log.warning("push %s: redeploy of %s refused: %s", trigger.delivery_id, where, e.render())
        except Exception:
            log.exception("push %s: redeploy of %s failed", trigger.delivery_id, where)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def webhook_routes(platform: Platform) -> list[Route]:
    """The route(s) to mount on the HTTP app; none when the GitHub integration is not installed."""
    integration = getattr(platform, "github", None)
    if integration is None:
        return []
    # a bound method: Starlette treats other callables as raw ASGI apps
    return [Route("/webhooks/github", integration.webhooks.handle, methods=["POST"])]
