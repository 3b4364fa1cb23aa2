"""What the deploy pipeline asks the GitHub integration (issue 11 items 4 and 5).

`DeployService.github` (set by `install`) is a `GitHubDeployHooks`; the pipeline calls it at three points, each
in a marked block of inkmcp/core/deployments.py:

* `prepare(account_id, repo_url, ref, auto_deploy)` before anything is created: for a repo on INKMCP_GITHUB_URL
  (`{GITHUB_URL}/OWNER/REPO`, with or without `.git`), checks through `{API}/repos/OWNER/REPO` that the account's
  GitHub token (stored at sign-in) can read it and returns the `GitAuth` git fetches a private repo with; a repo it
  cannot read is a tool error naming it and what to do. Accounts without a GitHub identity deploy public repos as
  before (checked anonymously when GitHub answers; a private one gets the "sign in with GitHub" error).
* `track(service_id, prepared)` after the service row exists: the repo/branch a push redeploys it for, and its
  auto-deploy flag (on by default for GitHub repos, `deploy_app(auto_deploy=false)` turns it off).
* `queued_detail` / `record_trigger` when a deployment is created by a push (webhooks.py sets `PUSH` around the
  redeploy): the queued event says which push, and `deployment_triggers` keeps delivery, commit and pusher.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.build.source import GitAuth, origin_of
from inkmcp.errors import InvalidArgument, SourceError
from inkmcp.github.client import GitHubClient, GitHubError
from inkmcp.github.deploy_keys import DeployKeys
from inkmcp.github.identity import identity_of, token_for
from inkmcp.github.models import DeploymentTrigger, GitHubDeployKey, GitHubTracking
from inkmcp.github.settings import GitHubSettings
from inkmcp.store.crypto import SecretBox
from inkmcp.store.models import Deployment, Project, Service

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,99})$")


@dataclass(frozen=True)
class PushTrigger:
    """The push a redeploy runs for (set by the webhook handler around its deploy_app calls)."""

    delivery_id: str
    repo: str
    branch: str
    commit: str | None
    pusher: str | None

    def describe(self) -> str:
        who = f" by {self.pusher}" if self.pusher else ""
        commit = f" {self.commit[:12]}" if self.commit else ""
        return f"GitHub push{commit} to {self.repo}@{self.branch}{who} (delivery {self.delivery_id})"


PUSH: contextvars.ContextVar[PushTrigger | None] = contextvars.ContextVar("inkmcp_github_push", default=None)


@dataclass(frozen=True)
class Prepared:
    """A GitHub repo_url, checked: what to fetch it with and what to track."""

    repo: str  # owner/name, lowercase
    branch: str | None  # the branch or tag name a push redeploys for (`tracked_name`); None: not tracked
    auth: GitAuth | None
    auto_deploy: bool | None
    admin: bool = False  # the account's GitHub user administers the repo (may add deploy keys)


def parse_repo(settings: GitHubSettings, repo_url: str) -> tuple[str, str] | None:
    """(owner, repo) when `repo_url` is `{GITHUB_URL}/OWNER/REPO[.git][/]` without credentials, else None."""
    url = repo_url.strip()
    if origin_of(url) is None or origin_of(url) != origin_of(settings.github_url):
        return None
    parts = urlsplit(url)
    if "@" in parts.netloc or parts.query or parts.fragment:
        return None
    base = urlsplit(settings.github_url).path.rstrip("/")  # GitHub Enterprise may live under a path
    path = parts.path
    if base and not path.startswith(base + "/"):
        return None
    segments = path[len(base):].strip("/").split("/")
    if len(segments) != 2:
        return None
    owner, repo = segments[0], segments[1].removesuffix(".git")
    if not (_NAME.match(owner) and _NAME.match(repo)) or repo in (".", ".."):
        return None
    return owner, repo


_HEX = re.compile(r"^[0-9a-fA-F]{7,40}$")


def tracked_name(ref: str | None) -> str | None:
    """The name a push must carry to (possibly) move what `ref` names, or None when no push can (issue 11 item 3).

    deploy_app resolves a ref as git does (inkmcp/build/source.py `_resolve`): `refs/...` as given, else
    `refs/heads/<ref>`, then `refs/tags/<ref>`, then a commit sha. So the service tracks the plain name, and the
    webhook redeploys it for a push to `refs/heads/<name>` *or* `refs/tags/<name>` (GitHub sends push events for
    tags too: a tag created, moved or re-created): either may change what the name resolves to, and the redeploy
    resolves it again the same way (an unchanged commit is a no-op reuse). A ref of 7 to 40 hex digits is taken for a
    commit, and a full ref outside heads/tags (refs/pull/1/head) is not pushed to: None, never tracked. (deploy_app
    would still resolve a *branch* named like a commit, `cafe123`, as the branch: to track one, pass
    `refs/heads/cafe123`, which the auto_deploy refusal says.)"""
    if ref is None or not ref.strip():
        return None
    ref = ref.strip()
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref.removeprefix(prefix) or None
    if ref.startswith("refs/") or _HEX.match(ref):
        return None
    return ref


class GitHubDeployHooks:
    def __init__(self, settings: GitHubSettings, sessions: async_sessionmaker[AsyncSession], box: SecretBox) -> None:
        self.settings = settings
        self._sessions = sessions
        self._box = box
        self.deploy_keys: DeployKeys | None = None  # set by wiring.install under Coolify compute

    def _sign_in_hint(self) -> str:
        where = f"{self.settings.public_url}/" if self.settings.public_url else "the InkMCP dashboard"
        return f"sign in with GitHub at {where}"

    async def prepare(self, account_id: uuid.UUID, repo_url: str, ref: str | None,
                      auto_deploy: bool | None) -> Prepared | None:
        parsed = parse_repo(self.settings, repo_url)
        if parsed is None:
            if auto_deploy:
                raise InvalidArgument(
                    "auto_deploy needs a GitHub repository.", argument="auto_deploy",
                    fix=f"pass repo_url={self.settings.github_url}/OWNER/REPO, or omit auto_deploy")
            return None
        owner, name = parsed
        shown = f"{owner}/{name}"
        tracked = tracked_name(ref)
        if ref and ref.strip() and tracked is None and auto_deploy:
            raise InvalidArgument(
                f"ref {ref.strip()!r} names a commit (or a ref other than a branch or tag), which a push never moves: "
                "auto_deploy could never redeploy it.", argument="auto_deploy",
                fix="pass a branch (or tag) as ref to redeploy on pushes to it (a branch whose name is 7-40 hex "
                    f"digits: ref='refs/heads/{ref.strip()}'), or omit auto_deploy to deploy this commit as it is")
        token = await token_for(self._sessions, self._box, account_id)
        try:
            async with GitHubClient(self.settings) as gh:
                access = await gh.repo_access(token, owner, name)
        except GitHubError as e:
            if token is None:  # anonymous checks are best effort (GitHub limits them per address)
                log.info("anonymous GitHub check of %s failed (%s); fetching as before", shown, e.message)
                return Prepared(shown.lower(), tracked if ref and ref.strip() else None, None, auto_deploy)
            raise SourceError(f"could not check access to GitHub repository {shown}: {e.message}",
                              argument="repo_url", fix=e.fix or "retry in a minute") from None
        if not access.readable:
            if token is None:
                raise SourceError(
                    f"GitHub repository {shown} was not found: it does not exist, or it is private and this "
                    "account has not signed in with GitHub.", argument="repo_url",
                    fix=f"check the owner/name; for a private repo {self._sign_in_hint()} (as a user who can read "
                        "it) and deploy again")
            who = await identity_of(self._sessions, account_id)
            login = who.login if who else "your GitHub user"
            raise SourceError(
                f"GitHub repository {shown} is not readable by {login}, the GitHub user this account signed in "
                "as: it does not exist, or it is private and not shared with that user.", argument="repo_url",
                fix=f"check the owner/name; ask the repository's owner to add {login} as a collaborator (or grant "
                    f"the InkMCP OAuth app access to the organization), or {self._sign_in_hint()} as a user who can "
                    "read it, then deploy again")
        auth = GitAuth(token) if token is not None and access.private else None
        branch = tracked if ref and ref.strip() else access.default_branch
        return Prepared(shown.lower(), branch, auth, auto_deploy,
                        admin=bool(access.permissions.get("admin")))

    # -- deploy keys (private repos under a compute platform that clones itself: Coolify) ----------------------

    async def check_deploy_key(self, account_id: uuid.UUID, project_name: str, service_name: str,
                               prepared: Prepared) -> None:
        """Before anything is created: can this private repo be given to the compute platform through a deploy
        key? A tool error naming the repo and what to do when not (no deploy-key support wired, the GitHub user is
        not an admin of the repo, or an existing service whose applications were made for a public repo)."""
        if self.deploy_keys is None:
            raise SourceError(
                f"GitHub repository {prepared.repo} is private, and this server's compute platform fetches sources "
                "itself, without your GitHub token.", argument="repo_url",
                fix="deploy a public repository, or ask the operator (private repos need the local compute provider "
                    "or Coolify compute with GitHub configured)")
        if not prepared.admin:
            who = await identity_of(self._sessions, account_id)
            login = who.login if who else "your GitHub user"
            raise SourceError(
                f"GitHub repository {prepared.repo} is private, and {login} is not an admin of it: the build server "
                "clones it with a read-only deploy key, and GitHub lets only a repository's admins add one.",
                argument="repo_url",
                fix=f"ask an admin of {prepared.repo} to give {login} the admin role (Settings → Collaborators), or "
                    "have an admin deploy it, or deploy a public repository")
        async with self._sessions() as s:
            existing = (await s.execute(
                select(Service.id, GitHubDeployKey.service_id)
                .join(Project, Project.id == Service.project_id)
                .outerjoin(GitHubDeployKey, GitHubDeployKey.service_id == Service.id)
                .where(Project.account_id == account_id, Project.name == project_name,
                       Service.name == service_name))).first()
        if existing is not None and existing[1] is None and existing[0] is not None:
            async with self._sessions() as s:
                deployed = (await s.execute(select(Deployment.id).where(Deployment.service_id == existing[0])
                                            .limit(1))).first()
            if deployed is not None:
                raise SourceError(
                    f"service {project_name}/{service_name} was built from a public repository; its Coolify "
                    f"applications cannot be switched to the deploy key GitHub repository {prepared.repo} (private) "
                    "needs.", argument="service_name",
                    fix=f"deploy it under another service_name, or first delete(project_name='{project_name}', "
                        f"service_name='{service_name}', confirm='{service_name}')")

    async def ensure_deploy_key(self, account_id: uuid.UUID, service_id: uuid.UUID, prepared: Prepared,
                                slug: str) -> None:
        """After the service row exists: its deploy key on GitHub and in Coolify (made, or found again)."""
        assert self.deploy_keys is not None and prepared.auth is not None
        await self.deploy_keys.ensure(service_id, account_id, prepared.repo, prepared.auth.token, slug)

    async def track(self, service_id: uuid.UUID, prepared: Prepared | None) -> None:
        """Record (or forget, for a non-GitHub repo) what a push redeploys this service for."""
        async with self._sessions.begin() as s:
            if prepared is None or prepared.branch is None:
                await s.execute(delete(GitHubTracking).where(GitHubTracking.service_id == service_id))
                return
            values = {"repo": prepared.repo, "branch": prepared.branch, "updated_at": datetime.now(UTC)}
            stmt = insert(GitHubTracking).values(service_id=service_id, auto_deploy=prepared.auto_deploy is not False,
                                                 **values)
            if prepared.auto_deploy is not None:
                values["auto_deploy"] = prepared.auto_deploy  # given: set; omitted: keep the service's choice
            await s.execute(stmt.on_conflict_do_update(index_elements=[GitHubTracking.service_id], set_=values))

    @staticmethod
    def queued_detail(detail: str) -> str:
        push = PUSH.get()
        return detail if push is None else f"{detail}; {push.describe()}"

    async def record_trigger(self, deployment_id: uuid.UUID) -> None:
        push = PUSH.get()
        if push is None:
            return
        async with self._sessions.begin() as s:
            await s.execute(insert(DeploymentTrigger).values(
                deployment_id=deployment_id, delivery_id=push.delivery_id, repo=push.repo, branch=push.branch,
                commit=push.commit, pusher=push.pusher).on_conflict_do_nothing())

    async def auth_for(self, account_id: uuid.UUID, repo_url: str) -> GitAuth | None:
        """Credentials to fetch an already-deployed repo again (a resumed or retried release): the account's
        token for a GitHub repo, without a new access check (the fetch itself fails if access was withdrawn)."""
        if parse_repo(self.settings, repo_url) is None:
            return None
        token = await token_for(self._sessions, self._box, account_id)
        return GitAuth(token) if token is not None else None


async def trigger_of(sessions: async_sessionmaker[AsyncSession], deployment_id: uuid.UUID) -> PushTrigger | None:
    """Which push started a deployment (None: an agent's deploy_app)."""
    async with sessions() as s:
        row = (await s.execute(select(DeploymentTrigger)
                               .where(DeploymentTrigger.deployment_id == deployment_id))).scalar_one_or_none()
    return None if row is None else PushTrigger(row.delivery_id, row.repo, row.branch, row.commit, row.pusher)
