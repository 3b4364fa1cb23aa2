"""State of the GitHub stand-in: users, their tokens, OAuth apps and codes, hosted repositories, webhooks.

Everything is in memory except the repositories, which are real bare git repositories under `root` (served by
`git http-backend`, so clones and pushes speak the real smart-HTTP protocol).
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def new_token() -> str:
    """A token of GitHub's OAuth shape: `gho_` + 36 base62 characters."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "gho_" + "".join(secrets.choice(alphabet) for _ in range(36))


@dataclass
class User:
    id: int
    login: str
    token: str  # a personal token of this user (tests may use it directly, as a PAT)


@dataclass
class OAuthApp:
    client_id: str
    client_secret: str
    callback_url: str | None  # registered callback: redirect_uri must start with it (None: any)


@dataclass
class Grant:
    code: str
    user_id: int
    client_id: str
    redirect_uri: str | None
    expires: float


@dataclass
class Hook:
    url: str
    secret: str | None
    events: tuple[str, ...] = ("push",)


@dataclass
class DeployKeyRecord:
    """A deploy key on a repository (GitHub: an SSH public key granting access to that one repository)."""

    id: int
    key: str  # "<type> <base64 blob>", without the comment (as GitHub shows it)
    title: str
    read_only: bool
    added_by: str
    created_at: str


def key_blob(public_key: str) -> str | None:
    """`<type> <base64>` of an OpenSSH public key line (comment dropped), None when it is not one."""
    import base64
    import binascii

    parts = public_key.strip().split()
    if len(parts) < 2 or parts[0] not in ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                                          "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com"):
        return None
    try:
        raw = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not raw.startswith(len(parts[0]).to_bytes(4, "big") + parts[0].encode()):
        return None
    return f"{parts[0]} {parts[1]}"


@dataclass
class Repo:
    id: int
    owner: str
    name: str
    private: bool
    path: Path
    default_branch: str = "main"
    collaborators: set[int] = field(default_factory=set)  # user ids with read+write besides the owner
    hooks: list[Hook] = field(default_factory=list)
    deploy_keys: list[DeployKeyRecord] = field(default_factory=list)
    admins: set[int] = field(default_factory=set)  # collaborators with admin besides the owner

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    import os
    full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "HOME": tempfile.gettempdir(),
                "GIT_AUTHOR_NAME": "Stand-in", "GIT_AUTHOR_EMAIL": "standin@example.invalid",
                "GIT_COMMITTER_NAME": "Stand-in", "GIT_COMMITTER_EMAIL": "standin@example.invalid", **(env or {})}
    return subprocess.run(["git", *args], cwd=cwd, env=full_env, check=True, capture_output=True,
                          text=True).stdout.strip()


class State:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()
        self.users: dict[int, User] = {}
        self.tokens: dict[str, int] = {}  # every token ever issued and not revoked → user id
        self.apps: dict[str, OAuthApp] = {}
        self.grants: dict[str, Grant] = {}
        self.repos: dict[str, Repo] = {}  # lowercase full name → repo
        self._next_id = 1000
        self.auto_approve: str | None = None  # login the authorize page approves as without asking

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- users and tokens -----------------------------------------------------------------------------------

    def add_user(self, login: str, user_id: int | None = None) -> User:
        with self.lock:
            user = User(id=user_id or self._id(), login=login, token=new_token())
            self.users[user.id] = user
            self.tokens[user.token] = user.id
            return user

    def user_by_login(self, login: str) -> User | None:
        with self.lock:
            return next((u for u in self.users.values() if u.login.lower() == login.lower()), None)

    def user_by_token(self, token: str) -> User | None:
        with self.lock:
            uid = self.tokens.get(token)
            return self.users.get(uid) if uid is not None else None

    def rename(self, login: str, new_login: str) -> User:
        with self.lock:
            user = self.user_by_login(login)
            assert user is not None, login
            for repo in self.repos.values():
                if repo.owner.lower() == login.lower():
                    repo.owner = new_login
            self.repos = {r.full_name.lower(): r for r in self.repos.values()}
            user.login = new_login
            return user

    def revoke(self, token: str) -> None:
        with self.lock:
            self.tokens.pop(token, None)

    def issue_token(self, user_id: int) -> str:
        with self.lock:
            token = new_token()
            self.tokens[token] = user_id
            return token

    # -- OAuth ---------------------------------------------------------------------------------------------

    def add_app(self, client_id: str, client_secret: str, callback_url: str | None = None) -> OAuthApp:
        with self.lock:
            app = OAuthApp(client_id, client_secret, callback_url)
            self.apps[client_id] = app
            return app

    def grant(self, user_id: int, client_id: str, redirect_uri: str | None) -> str:
        with self.lock:
            code = secrets.token_hex(10)  # GitHub's codes are 20 hex characters
            self.grants[code] = Grant(code, user_id, client_id, redirect_uri, time.monotonic() + 600)
            return code

    # -- repositories --------------------------------------------------------------------------------------

    def repo(self, owner: str, name: str) -> Repo | None:
        with self.lock:
            return self.repos.get(f"{owner}/{name.removesuffix('.git')}".lower())

    def can_read(self, repo: Repo, user: User | None) -> bool:
        if not repo.private:
            return True
        return user is not None and (user.login.lower() == repo.owner.lower() or user.id in repo.collaborators)

    def can_admin(self, repo: Repo, user: User | None) -> bool:
        return user is not None and (user.login.lower() == repo.owner.lower() or user.id in repo.admins)

    def deploy_key_repo(self, public_key: str) -> tuple[Repo, DeployKeyRecord] | None:
        """The repository (and key record) a public key is a deploy key of: what GitHub's SSH server checks when
        a client authenticates with that key (one repository per key)."""
        blob = key_blob(public_key)
        with self.lock:
            for repo in self.repos.values():
                for record in repo.deploy_keys:
                    if record.key == blob:
                        return repo, record
        return None

    def can_write(self, repo: Repo, user: User | None) -> bool:
        return user is not None and (user.login.lower() == repo.owner.lower() or user.id in repo.collaborators)

    def create_repo(self, owner: str, name: str, *, private: bool = False, files: dict[str, str] | None = None,
                    branch: str = "main", collaborators: list[str] = (),  # type: ignore[assignment]
                    admins: list[str] = ()) -> Repo:  # type: ignore[assignment]
        """A bare repository `owner/name` with one commit of `files` on `branch` (none: an empty repository).
        `collaborators` read and write; `admins` are collaborators with admin (may manage deploy keys)."""
        with self.lock:
            assert self.user_by_login(owner) is not None, f"create the user {owner!r} first"
            path = self.root / owner.lower() / f"{name.lower()}.git"
            path.parent.mkdir(parents=True, exist_ok=True)
            git("init", "--bare", "-q", "-b", branch, str(path))
            git("config", "http.receivepack", "true", cwd=path)
            repo = Repo(self._id(), owner, name, private, path, branch)
            for login in [*collaborators, *admins]:
                collaborator = self.user_by_login(login)
                assert collaborator is not None, login
                repo.collaborators.add(collaborator.id)
                if login in admins:
                    repo.admins.add(collaborator.id)
            self.repos[repo.full_name.lower()] = repo
        if files:
            self.commit(repo, files, "initial commit", branch=branch)
        return repo

    def commit(self, repo: Repo, files: dict[str, str], message: str, *, branch: str | None = None) -> str:
        """Commit `files` (path → content; other files kept) on `branch` straight into the bare repository;
        returns the new commit sha. Sends no webhook (see StandinGitHub.push)."""
        branch = branch or repo.default_branch
        with tempfile.TemporaryDirectory(prefix="gh-standin-") as tmp:
            work = Path(tmp) / "w"
            git("clone", "-q", str(repo.path), str(work))
            if git("ls-remote", "--heads", "origin", branch, cwd=work):
                git("checkout", "-q", branch, cwd=work)
            else:
                git("checkout", "-q", "--orphan", branch, cwd=work)
            for rel, content in files.items():
                target = work / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
            git("add", "-A", cwd=work)
            git("commit", "-q", "-m", message, cwd=work)
            git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
            return git("rev-parse", "HEAD", cwd=work)

    def tag(self, repo: Repo, name: str, commit: str) -> None:
        """Create or move the lightweight tag `name` to `commit` (no webhook: StandinGitHub.deliver_push with
        branch=`refs/tags/<name>` sends GitHub's push event for it)."""
        git("tag", "-f", name, commit, cwd=repo.path)

    def head(self, repo: Repo, branch: str | None = None) -> str:
        return git("rev-parse", f"refs/heads/{branch or repo.default_branch}", cwd=repo.path)

    def refs(self, repo: Repo) -> dict[str, str]:
        out = git("for-each-ref", "--format=%(refname) %(objectname)", "refs/heads", cwd=repo.path)
        return dict(line.split(" ", 1) for line in out.splitlines() if line)  # type: ignore[misc]
