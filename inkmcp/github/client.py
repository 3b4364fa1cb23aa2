"""GitHub's OAuth web flow and the few REST calls InkMCP makes, over httpx (issue 11).

Contract followed (docs.github.com, "Authorizing OAuth apps" and the REST API reference):

* `GET {GITHUB_URL}/login/oauth/authorize?client_id&redirect_uri&state&scope` is where the browser goes;
* `POST {GITHUB_URL}/login/oauth/access_token` with `Accept: application/json` answers **200 even on failure**,
  with `{"error": "bad_verification_code", "error_description": …}`; on success `{"access_token", "scope",
  "token_type"}`;
* `GET {API}/user` → `{"id", "login", …}`; `GET {API}/repos/OWNER/REPO` → 200 with `private` and (for an
  authenticated caller) `permissions`, or **404 for a private repository the caller cannot read** (GitHub hides
  its existence), 401 for a bad or revoked token.

The token travels only in the Authorization header; errors never quote it.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any
from urllib.parse import urlencode

import httpx
from pydantic import BaseModel, SecretStr

from inkmcp import __version__
from inkmcp.errors import InkError
from inkmcp.github.settings import GitHubSettings

SCOPE = "repo"  # read private repositories the user can access (the OAuth app scope GitHub documents for it)
API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
               "User-Agent": f"inkmcp/{__version__}"}


class GitHubError(InkError):
    """GitHub refused or failed a call; the message says which and what to do."""

    code = "github_error"


class DeployKeyInUse(GitHubError):
    """422 "key is already in use": the public key is a deploy key of another repository (GitHub allows one)."""


class GitHubUser(BaseModel):
    id: int
    login: str


class RepoAccess(BaseModel):
    """What `{API}/repos/OWNER/REPO` says about one repository for one token."""

    owner: str
    repo: str
    readable: bool
    private: bool = False
    full_name: str | None = None
    default_branch: str | None = None
    permissions: dict[str, bool] = {}


class DeployKey(BaseModel):
    """GitHub's `deploy-key` (the fields InkMCP reads)."""

    id: int
    key: str
    title: str
    read_only: bool


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every GitHubClient. httpx builds a new one per client by default, loading the whole CA
    bundle each time: ~50 ms of CPU on the event loop (measured on the 2-core box), and a client is made per
    deploy_app of a GitHub repo (twice with a deploy key), per push webhook and per sign-in. The same defaults
    (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), built once."""
    return httpx.create_ssl_context()


class GitHubClient:
    """One httpx.AsyncClient per instance; use as `async with GitHubClient(settings) as gh:`."""

    def __init__(self, settings: GitHubSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self._http = httpx.AsyncClient(timeout=settings.github_timeout, transport=transport, verify=tls_context(),
                                       headers={"User-Agent": API_HEADERS["User-Agent"]})

    async def __aenter__(self) -> GitHubClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- OAuth -------------------------------------------------------------------------------------------------

    def authorize_url(self, state: str, redirect_uri: str) -> str:
        """Where the browser goes to sign in; `state` must be bound to the browser and checked on the callback."""
        if not self.settings.github_client_id:
            raise GitHubError("GitHub sign-in is not configured.", argument="INKMCP_GITHUB_CLIENT_ID",
                              fix="set INKMCP_GITHUB_CLIENT_ID and INKMCP_GITHUB_CLIENT_SECRET to the OAuth app's")
        query = urlencode({"client_id": self.settings.github_client_id, "redirect_uri": redirect_uri,
                           "state": state, "scope": SCOPE, "allow_signup": "true"})
        return f"{self.settings.github_url}/login/oauth/authorize?{query}"

    async def exchange_code(self, code: str, redirect_uri: str) -> SecretStr:
        """The callback's `code` → the user's access token. GitHub answers 200 with an `error` field on a bad,
        expired or reused code: that raises GitHubError, as does any non-JSON or non-200 answer."""
        s = self.settings
        if not (s.github_client_id and s.github_client_secret):
            raise GitHubError("GitHub sign-in is not configured.", argument="INKMCP_GITHUB_CLIENT_SECRET",
                              fix="set INKMCP_GITHUB_CLIENT_ID and INKMCP_GITHUB_CLIENT_SECRET to the OAuth app's")
        try:
            r = await self._http.post(
                f"{s.github_url}/login/oauth/access_token", headers={"Accept": "application/json"},
                data={"client_id": s.github_client_id, "client_secret": s.github_client_secret.get_secret_value(),
                      "code": code, "redirect_uri": redirect_uri})
        except httpx.HTTPError as e:
            raise GitHubError(f"GitHub ({s.github_url}) could not be reached to finish sign-in: "
                              f"{type(e).__name__}.", fix="try signing in again; check INKMCP_GITHUB_URL") from None
        body = _json(r)
        if r.status_code != 200 or body is None:
            raise GitHubError(f"GitHub answered {r.status_code} to the token exchange.",
                              fix="try signing in again; check INKMCP_GITHUB_URL and the OAuth app's settings")
        if "error" in body or not isinstance(body.get("access_token"), str):
            error = str(body.get("error", "no access_token"))[:80]
            fix = ("sign in again (the code expired or was already used)" if error == "bad_verification_code"
                   else "check INKMCP_GITHUB_CLIENT_ID/INKMCP_GITHUB_CLIENT_SECRET and the OAuth app's callback URL")
            raise GitHubError(f"GitHub refused the sign-in code ({error}).", fix=fix)
        return SecretStr(body["access_token"])

    # -- REST --------------------------------------------------------------------------------------------------

    def _auth(self, token: SecretStr | str | None) -> dict[str, str]:
        if token is None:  # anonymous: public data only, and GitHub limits it per address
            return dict(API_HEADERS)
        raw = token.get_secret_value() if isinstance(token, SecretStr) else token
        return {**API_HEADERS, "Authorization": f"Bearer {raw}"}

    async def _get(self, path: str, token: SecretStr | str | None) -> httpx.Response:
        return await self._send("GET", path, token)

    async def _send(self, method: str, path: str, token: SecretStr | str | None,
                    body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return await self._http.request(method, self.settings.api(path), headers=self._auth(token), json=body)
        except httpx.HTTPError as e:
            raise GitHubError(f"GitHub's API ({self.settings.github_api_url}) could not be reached: "
                              f"{type(e).__name__}.", fix="retry; check INKMCP_GITHUB_API_URL") from None

    # -- deploy keys (`/repos/{owner}/{repo}/keys`: admin of the repository only; others get 404) -------------

    def _key_error(self, r: httpx.Response, what: str, owner: str, repo: str) -> GitHubError:
        if r.status_code == 401:
            return GitHubError("GitHub did not accept your stored GitHub token (revoked or expired).",
                               fix="sign in with GitHub again on the dashboard")
        if r.status_code in (403, 404):
            return GitHubError(
                f"GitHub refused to {what} deploy keys of {owner}/{repo} ({r.status_code}): only an admin of the "
                "repository may.", fix=f"ask an admin of {owner}/{repo} to make you one, or have an admin deploy it")
        body = _json(r) or {}
        detail = "; ".join(str(e.get("message") or e.get("code")) for e in body.get("errors") or []
                           if isinstance(e, dict)) or str(body.get("message", ""))[:200]
        message = (f"GitHub answered {r.status_code} when asked to {what} a deploy key of {owner}/{repo}"
                   f"{': ' + detail if detail else ''}.")
        if r.status_code == 422 and "already in use" in detail:  # retrying cannot help: say what can
            return DeployKeyInUse(message, fix="remove that key from the repository it is on (Settings → Deploy keys)")
        return GitHubError(message, fix="retry in a minute")

    async def list_deploy_keys(self, token: SecretStr | str, owner: str, repo: str) -> list[DeployKey]:
        """Every deploy key of the repository (GitHub pages by 30: up to 100 asked for, pages followed)."""
        keys: list[DeployKey] = []
        for page in range(1, 51):
            r = await self._send("GET", f"/repos/{owner}/{repo}/keys?per_page=100&page={page}", token)
            if r.status_code != 200:
                raise self._key_error(r, "list", owner, repo)
            batch = r.json() if isinstance(r.json(), list) else []
            keys += [DeployKey.model_validate(k) for k in batch]
            if len(batch) < 100:
                break
        return keys

    async def get_deploy_key(self, token: SecretStr | str, owner: str, repo: str, key_id: int) -> DeployKey | None:
        """The key, or None when it is gone (deleted on GitHub); an error when the repo is out of reach."""
        r = await self._send("GET", f"/repos/{owner}/{repo}/keys/{key_id}", token)
        if r.status_code == 200:
            return DeployKey.model_validate(r.json())
        if r.status_code == 404:
            access = await self.repo_access(token, owner, repo)
            if access.readable and access.permissions.get("admin"):
                return None  # the repo is there and administrable: the key itself is gone
        raise self._key_error(r, "read", owner, repo)

    async def create_deploy_key(self, token: SecretStr | str, owner: str, repo: str, *, title: str,
                                public_key: str) -> DeployKey:
        """Add a **read-only** deploy key (201). 422 "key is already in use" when the same public key is on a
        repository already (GitHub allows one repository per key)."""
        r = await self._send("POST", f"/repos/{owner}/{repo}/keys", token,
                             {"title": title, "key": public_key, "read_only": True})
        if r.status_code != 201:
            raise self._key_error(r, "add", owner, repo)
        return DeployKey.model_validate(r.json())

    async def delete_deploy_key(self, token: SecretStr | str, owner: str, repo: str, key_id: int) -> bool:
        """Remove a deploy key (204). False when GitHub says 404 (already gone, or no longer ours to reach)."""
        r = await self._send("DELETE", f"/repos/{owner}/{repo}/keys/{key_id}", token)
        if r.status_code == 204:
            return True
        if r.status_code == 404:
            return False
        raise self._key_error(r, "delete", owner, repo)

    async def get_user(self, token: SecretStr | str) -> GitHubUser:
        r = await self._get("/user", token)
        body = _json(r)
        if r.status_code == 401:
            raise GitHubError("GitHub did not accept the token (revoked or expired).",
                              fix="sign in with GitHub again on the dashboard")
        if r.status_code != 200 or body is None:
            raise GitHubError(f"GitHub answered {r.status_code} to GET /user.", fix="retry in a minute")
        return GitHubUser.model_validate(body)

    async def repo_access(self, token: SecretStr | str | None, owner: str, repo: str) -> RepoAccess:
        """200 → readable (with `private` and `permissions`); 404 → not readable (missing, or private and not
        shared with this user: GitHub does not say which); 401 → the token is bad (GitHubError). `token` None:
        asked anonymously (public repositories only)."""
        r = await self._get(f"/repos/{owner}/{repo}", token)
        if r.status_code == 404:
            return RepoAccess(owner=owner, repo=repo, readable=False)
        if r.status_code == 401:
            raise GitHubError("GitHub did not accept your stored GitHub token (revoked or expired).",
                              fix="sign in with GitHub again on the dashboard")
        body = _json(r)
        if r.status_code != 200 or body is None:
            raise GitHubError(f"GitHub answered {r.status_code} to GET /repos/{owner}/{repo}.", fix="retry later")
        perms = body.get("permissions") or {}
        readable = bool(perms.get("pull", True))
        return RepoAccess(owner=owner, repo=repo, readable=readable, private=bool(body.get("private")),
                          full_name=body.get("full_name"), default_branch=body.get("default_branch"),
                          permissions={k: bool(v) for k, v in perms.items()})


def _json(r: httpx.Response) -> dict[str, Any] | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
