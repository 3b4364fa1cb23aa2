"""A GitHub stand-in for tests and local development (issue 11 item 6): one real HTTP server (starlette on
uvicorn, 127.0.0.1) playing github.com and its REST API, following GitHub's published contract:

* OAuth web flow (docs.github.com "Authorizing OAuth apps"): `GET /login/oauth/authorize` renders an
  "Authorize" page (or approves at once for `auto_approve` / the `standin_login` cookie / `?login=`), then
  redirects to `redirect_uri?code=…&state=…`; `POST /login/oauth/access_token` answers **200** with either
  `{"access_token","token_type":"bearer","scope"}` or `{"error": "bad_verification_code" |
  "incorrect_client_credentials" | "redirect_uri_mismatch", "error_description", "error_uri"}`, as JSON when
  `Accept: application/json`, else form-encoded (GitHub's default). Codes are single use and expire in 10 min.
* REST under `/api/v3` (GitHub Enterprise's layout, so clients must append to a base URL with a path):
  `GET /user`, `GET /repos/{owner}/{repo}` — 401 `{"message":"Bad credentials"}` for an unknown token, 404
  `{"message":"Not Found"}` for a private repository the caller cannot read (GitHub hides it), 200 with
  `private`, `visibility`, `default_branch`, `permissions` otherwise.
* Deploy keys: `GET|POST /repos/{owner}/{repo}/keys`, `GET|DELETE /repos/{owner}/{repo}/keys/{key_id}`, for admins
  of the repository (the owner and `admins` collaborators); anyone else 404 (GitHub hides it), no token 401; 422
  "key is already in use" (one repository per key) or "key is invalid…". `ssh_clone` is GitHub's SSH side for a
  deploy key (the Coolify stand-in's runner clones through it).
* git smart HTTP at `/{owner}/{repo}(.git)/…` through `git http-backend` (CGI): public repositories clone
  anonymously; private ones need HTTP Basic auth whose password is a token of a user with access (GitHub accepts
  any username with a token as password), else 401 with `WWW-Authenticate: Basic realm="GitHub"` (git then
  fails without a prompt). Pushes need a token with write access. A push through HTTP sends a `push` webhook.
* Webhooks (docs "Webhook events and payloads", "Validating webhook deliveries"): POST with `X-GitHub-Event`,
  `X-GitHub-Delivery` (a GUID), `X-GitHub-Hook-ID`, `X-Hub-Signature-256: sha256=HMAC-SHA256(secret, body)`,
  `X-Hub-Signature` (SHA-1), `User-Agent: GitHub-Hookshot/…`, `Content-Type: application/json`, and the push
  payload's `ref`, `before`, `after`, `repository{full_name,clone_url,html_url,private,…}`, `pusher{name,email}`,
  `sender{login,id}`, `head_commit{id,message}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from inkmcp.github.spec import request_problems, response_problems, webhook_problems
from inkmcp.github.standin.payloads import full_repository, now, private_user, push_event
from inkmcp.github.standin.state import DeployKeyRecord, Hook, Repo, State, User, key_blob

API = "/api/v3"
DOCS = "https://docs.github.com/rest"
GIT_BACKEND = "/usr/lib/git-core/git-http-backend"


@dataclass
class Delivery:
    """One webhook POST the stand-in made, and what the receiver answered."""

    id: str
    event: str
    url: str
    status: int
    body: bytes
    headers: dict[str, str]
    response_body: bytes = b""


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _not_found() -> JSONResponse:
    return JSONResponse({"message": "Not Found", "documentation_url": DOCS, "status": "404"}, status_code=404)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() in ("bearer", "token") and value.strip() else None


class StandinGitHub:
    """Start with `start()` (a thread, an ephemeral port) and stop with `stop()`; `url` is the web/git base
    (INKMCP_GITHUB_URL), `api_url` the API base (INKMCP_GITHUB_API_URL)."""

    def __init__(self, root: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = State(root)
        self.host, self.port = host, port
        self.url = ""
        self.api_url = ""
        self.deliveries: list[Delivery] = []
        self.git_requests: list[tuple[str, str, int]] = []  # (method, path, status) of git HTTP requests
        self.response_violations: list[str] = []  # REST answers GitHub's spec would not allow (inkmcp.github.spec)
        self.payload_violations: list[str] = []  # webhook payloads GitHub's spec would not allow
        self.request_violations: list[str] = []  # request bodies clients sent that GitHub's spec would not allow
        self.ssh_clones: list[tuple[str, str]] = []  # (url, repo) of clones a deploy key was accepted for
        self.git_latency = 0.0  # seconds added before each git answer (a slow network: lets tests watch a clone)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[
            Route("/login/oauth/authorize", self._authorize, methods=["GET", "POST"]),
            Route("/login/oauth/access_token", self._access_token, methods=["POST"]),
            Route("/_standin/as/{login}", self._sign_in_as),
            Route(f"{API}/user", self._user),
            Route(API + "/repos/{owner}/{repo}", self._repo),
            Route(API + "/repos/{owner}/{repo}/keys", self._keys, methods=["GET", "POST"]),
            Route(API + "/repos/{owner}/{repo}/keys/{key_id}", self._key, methods=["GET", "DELETE"]),
            Route("/{owner}/{repo}/{rest:path}", self._git, methods=["GET", "POST"]),
        ])

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", access_log=False,
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="github-standin", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the GitHub stand-in did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        self.api_url = self.url + API

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                raise RuntimeError("the GitHub stand-in thread did not stop")
        self._server = self._thread = None

    # -- test controls -------------------------------------------------------------------------------------

    def add_user(self, login: str, user_id: int | None = None) -> User:
        return self.state.add_user(login, user_id)

    def add_app(self, client_id: str, client_secret: str, callback_url: str | None = None) -> None:
        self.state.add_app(client_id, client_secret, callback_url)

    def create_repo(self, owner: str, name: str, *, private: bool = False, files: dict[str, str] | None = None,
                    branch: str = "main", collaborators: list[str] = (),  # type: ignore[assignment]
                    admins: list[str] = ()) -> Repo:  # type: ignore[assignment]
        return self.state.create_repo(owner, name, private=private, files=files, branch=branch,
                                      collaborators=collaborators, admins=admins)

    def add_hook(self, repo: Repo, url: str, secret: str | None, events: tuple[str, ...] = ("push",)) -> None:
        with self.state.lock:
            repo.hooks.append(Hook(url, secret, events))

    def ssh_clone(self, url: str, private_key: str) -> Path | None:
        """What GitHub's SSH server decides for `git clone git@HOST:OWNER/REPO.git` with `private_key`: the bare
        repository when that key is a deploy key of exactly that repository, else None ("Permission denied
        (publickey)" / "Repository not found"). For the Coolify stand-in's runner (`AppRunner.ssh_clone`)."""
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_ssh_private_key(private_key.encode(), password=None)
        except (ValueError, TypeError):
            return None
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,  # type: ignore[union-attr]
                                               serialization.PublicFormat.OpenSSH).decode()
        found = self.state.deploy_key_repo(public)
        if found is None:
            return None
        repo, _record = found
        _, _, path = url.partition(":")
        if path.removesuffix(".git").lower() != repo.full_name.lower():
            return None
        self.ssh_clones.append((url, repo.full_name))
        return repo.path

    def clone_url(self, repo: Repo) -> str:
        return f"{self.url}/{repo.owner}/{repo.name}.git"

    def html_url(self, repo: Repo) -> str:
        return f"{self.url}/{repo.owner}/{repo.name}"

    async def push(self, repo: Repo, files: dict[str, str], message: str, *, pusher: User,
                   branch: str | None = None) -> tuple[str, list[Delivery]]:
        """Commit `files` on `branch` as `pusher` and deliver the `push` webhook to the repo's hooks, as GitHub
        does after a push. Returns the new commit and the deliveries."""
        branch = branch or repo.default_branch
        before = self.state.refs(repo).get(f"refs/heads/{branch}", "0" * 40)
        after = await asyncio.to_thread(self.state.commit, repo, files, message, branch=branch)
        return after, await self.deliver_push(repo, branch, before, after, pusher, message=message)

    def push_payload(self, repo: Repo, branch: str, before: str, after: str, pusher: User,
                     message: str = "") -> dict[str, Any]:
        """GitHub's push payload (checked against the published webhook schema; problems → payload_violations)."""
        payload = push_event(repo, self.state.user_by_login(repo.owner), pusher, self.url, self.api_url,
                             branch=branch, before=before, after=after, message=message)
        self.payload_violations += webhook_problems("push", payload)
        return payload

    async def deliver_push(self, repo: Repo, branch: str, before: str, after: str, pusher: User,
                           *, message: str = "") -> list[Delivery]:
        payload = self.push_payload(repo, branch, before, after, pusher, message)
        return [await self.deliver(hook, "push", payload) for hook in list(repo.hooks) if "push" in hook.events]

    async def deliver(self, hook: Hook, event: str, payload: dict[str, Any], *, delivery_id: str | None = None,
                      signature: str | None = None) -> Delivery:
        """POST one webhook as GitHub does. `delivery_id` (replays reuse one) and `signature` (a forged one)
        override what GitHub would send."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        delivery_id = delivery_id or str(uuid.uuid4())
        headers = {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/standin",
                   "X-GitHub-Event": event, "X-GitHub-Delivery": delivery_id, "X-GitHub-Hook-ID": "1",
                   "X-GitHub-Hook-Installation-Target-Type": "repository"}
        if hook.secret is not None:
            headers["X-Hub-Signature-256"] = sign(hook.secret, body)
            headers["X-Hub-Signature"] = "sha1=" + hmac.new(hook.secret.encode(), body, hashlib.sha1).hexdigest()
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(hook.url, content=body, headers=headers)
        delivery = Delivery(delivery_id, event, hook.url, r.status_code, body, headers, r.content)
        self.deliveries.append(delivery)
        return delivery

    # -- OAuth ---------------------------------------------------------------------------------------------

    async def _authorize(self, request: Request) -> Response:
        params = dict(request.query_params)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.form()).items()})
        app = self.state.apps.get(params.get("client_id", ""))
        if app is None:
            return HTMLResponse("<h1>404</h1><p>The OAuth application (client_id) was not found.</p>", 404)
        redirect_uri = params.get("redirect_uri") or app.callback_url
        if not redirect_uri or (app.callback_url and not redirect_uri.startswith(app.callback_url)):
            return HTMLResponse("<h1>Redirect URI mismatch</h1><p>The redirect_uri MUST match the registered "
                                "callback URL for this application.</p>", 400)
        login = (params.get("login") if request.method == "POST" else None) or params.get("login") \
            or request.cookies.get("standin_login") or self.state.auto_approve
        user = self.state.user_by_login(login) if login else None
        if user is None:
            return self._authorize_page(params, app.client_id, redirect_uri)
        code = self.state.grant(user.id, app.client_id, params.get("redirect_uri"))
        query = {"code": code, **({"state": params["state"]} if "state" in params else {})}
        sep = "&" if "?" in redirect_uri else "?"
        return RedirectResponse(f"{redirect_uri}{sep}{urlencode(query)}", status_code=302)

    def _authorize_page(self, params: dict[str, str], client_id: str, redirect_uri: str) -> HTMLResponse:
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in params.items() if k in ("client_id", "redirect_uri", "state", "scope"))
        options = "".join(f'<option value="{html.escape(u.login)}">{html.escape(u.login)}</option>'
                          for u in self.state.users.values())
        page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Authorize application</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head><body>
<h1>Authorize application</h1><p>Application <code>{html.escape(client_id)}</code> wants access to your
repositories (scope <code>{html.escape(params.get('scope', ''))}</code>) and will redirect to
<code>{html.escape(redirect_uri)}</code>.</p>
<form method="post" action="/login/oauth/authorize" id="authorize">{hidden}
<label for="login">Sign in as</label> <select name="login" id="login">{options}</select>
<button type="submit" id="js-oauth-authorize-btn" name="authorize" value="1">Authorize</button></form>
</body></html>"""
        return HTMLResponse(page)

    async def _sign_in_as(self, request: Request) -> Response:
        """Browser helper: sets the `standin_login` cookie, so the authorize page approves as that user."""
        login = request.path_params["login"]
        if self.state.user_by_login(login) is None:
            return PlainTextResponse(f"no stand-in user {login!r}", status_code=404)
        response = PlainTextResponse(f"signed in to the GitHub stand-in as {login}")
        response.set_cookie("standin_login", login, httponly=True, samesite="lax")
        return response

    async def _access_token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not form and request.headers.get("content-type", "").startswith("application/json"):
            form = {k: str(v) for k, v in json.loads(await request.body() or b"{}").items()}
        as_json = "application/json" in request.headers.get("accept", "")

        def answer(body: dict[str, str]) -> Response:  # always 200, as GitHub does
            if as_json:
                return JSONResponse(body)
            return Response(urlencode(body), media_type="application/x-www-form-urlencoded")

        def error(code: str, description: str) -> Response:
            return answer({"error": code, "error_description": description,
                           "error_uri": "https://docs.github.com/apps/managing-oauth-apps/"
                                        "troubleshooting-oauth-app-access-token-request-errors"})

        with self.state.lock:
            app = self.state.apps.get(form.get("client_id", ""))
            if app is None or not hmac.compare_digest(app.client_secret, form.get("client_secret", "")):
                return error("incorrect_client_credentials",
                             "The client_id and/or client_secret passed are incorrect.")
            grant = self.state.grants.pop(form.get("code", ""), None)
            if grant is None or grant.client_id != app.client_id or grant.expires < time.monotonic():
                return error("bad_verification_code", "The code passed is incorrect or expired.")
            if grant.redirect_uri and form.get("redirect_uri") and form["redirect_uri"] != grant.redirect_uri:
                return error("redirect_uri_mismatch", "The redirect_uri MUST match the registered callback URL "
                                                      "for this application.")
            token = self.state.issue_token(grant.user_id)
        return answer({"access_token": token, "token_type": "bearer", "scope": "repo"})

    # -- REST ----------------------------------------------------------------------------------------------

    def _answer(self, template: str, status: int, body: Any, method: str = "get") -> Response:
        """A REST answer, checked against GitHub's published spec (problems → response_violations)."""
        self.response_violations += response_problems(method, template, status, body)
        headers = {"X-GitHub-Media-Type": "github.v3; format=json"}
        if body is None:
            return Response(status_code=status, headers=headers)
        return JSONResponse(body, status_code=status, headers=headers)

    def _caller(self, request: Request, template: str) -> tuple[User | None, Response | None]:
        token = _bearer(request)
        if token is None:
            return None, None
        user = self.state.user_by_token(token)
        if user is None:
            return None, self._answer(template, 401, {"message": "Bad credentials", "documentation_url": DOCS,
                                                      "status": "401"})
        return user, None

    async def _user(self, request: Request) -> Response:
        user, failed = self._caller(request, "/user")
        if failed:
            return failed
        if user is None:
            return self._answer("/user", 401, {"message": "Requires authentication", "documentation_url": DOCS,
                                               "status": "401"})
        return self._answer("/user", 200, private_user(user, self.url, self.api_url))

    async def _repo(self, request: Request) -> Response:
        template = "/repos/{owner}/{repo}"
        user, failed = self._caller(request, template)
        if failed:
            return failed
        repo = self.state.repo(request.path_params["owner"], request.path_params["repo"])
        if repo is None or not self.state.can_read(repo, user):
            return self._answer(template, 404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"})
        permissions = None
        if user is not None:
            write = self.state.can_write(repo, user)
            admin = self.state.can_admin(repo, user)
            permissions = {"admin": admin, "maintain": admin, "push": write, "triage": write, "pull": True}
        owner = self.state.user_by_login(repo.owner)
        return self._answer(template, 200, full_repository(repo, owner, self.url, self.api_url, permissions))

    # -- deploy keys (docs "REST API endpoints for deploy keys": admin of the repository only) -----------------

    def _admin_repo(self, request: Request, template: str, method: str) -> tuple[Repo | None, Response | None]:
        """The repository when the caller administers it; else GitHub's answer: 401 without a (valid) token, 404
        for a repository the caller cannot see *or* does not administer (GitHub hides it rather than 403)."""
        user, failed = self._caller(request, template)
        if failed:
            return None, failed
        if user is None:
            return None, self._answer(template, 401, {"message": "Requires authentication",
                                                      "documentation_url": DOCS, "status": "401"}, method)
        repo = self.state.repo(request.path_params["owner"], request.path_params["repo"])
        if repo is None or not self.state.can_admin(repo, user):
            return None, self._answer(template, 404, {"message": "Not Found", "documentation_url": DOCS,
                                                      "status": "404"}, method)
        return repo, None

    def _key_json(self, repo: Repo, record: DeployKeyRecord) -> dict[str, Any]:
        return {"id": record.id, "key": record.key, "url": f"{self.api_url}/repos/{repo.full_name}/keys/{record.id}",
                "title": record.title, "verified": True, "created_at": record.created_at,
                "read_only": record.read_only, "added_by": record.added_by, "last_used": None, "enabled": True}

    async def _keys(self, request: Request) -> Response:
        template = "/repos/{owner}/{repo}/keys"
        method = request.method.lower()
        body: Any = None
        if method == "post":
            try:
                body = json.loads(await request.body() or b"null")
            except ValueError:  # GitHub's answer to a body that is not JSON, on any endpoint (not per operation)
                return JSONResponse({"message": "Problems parsing JSON", "documentation_url": DOCS,
                                     "status": "400"}, 400)
            self.request_violations += request_problems(method, template, body)
        repo, failed = self._admin_repo(request, template, method)
        if failed:
            return failed
        assert repo is not None
        if method == "get":  # GitHub pages lists: per_page (default 30, at most 100) and page (from 1)
            try:
                per_page = min(100, max(1, int(request.query_params.get("per_page", "30"))))
                number = max(1, int(request.query_params.get("page", "1")))
            except ValueError:
                per_page, number = 30, 1
            with self.state.lock:
                keys = repo.deploy_keys[(number - 1) * per_page:number * per_page]
                page = [self._key_json(repo, k) for k in keys]
            return self._answer(template, 200, page, method)
        user = self.state.user_by_token(_bearer(request) or "")
        blob = key_blob(str(body.get("key", ""))) if isinstance(body, dict) else None

        def invalid(message: str) -> Response:
            return self._answer(template, 422, {
                "message": "Validation Failed", "documentation_url": DOCS, "status": "422",
                "errors": [{"resource": "PublicKey", "code": "custom", "field": "key", "message": message}]}, method)

        if blob is None:
            return invalid("key is invalid. You must supply a key in OpenSSH public key format")
        with self.state.lock:
            if self.state.deploy_key_repo(blob) is not None:
                return invalid("key is already in use")
            record = DeployKeyRecord(self.state._id(), blob, str(body.get("title") or ""),
                                     body.get("read_only") is not False, user.login if user else "", now())
            repo.deploy_keys.append(record)
        return self._answer(template, 201, self._key_json(repo, record), method)

    async def _key(self, request: Request) -> Response:
        template = "/repos/{owner}/{repo}/keys/{key_id}"
        method = request.method.lower()
        repo, failed = self._admin_repo(request, template, method)
        if failed:
            return failed
        assert repo is not None
        key_id = request.path_params["key_id"]
        with self.state.lock:
            record = next((k for k in repo.deploy_keys if str(k.id) == key_id), None)
            if record is None:
                return self._answer(template, 404, {"message": "Not Found", "documentation_url": DOCS,
                                                    "status": "404"}, method)
            if method == "delete":
                repo.deploy_keys.remove(record)
                return self._answer(template, 204, None, method)
        return self._answer(template, 200, self._key_json(repo, record), method)

    # -- git smart HTTP ------------------------------------------------------------------------------------

    def _basic_user(self, request: Request) -> User | None:
        """The user whose token the Basic credentials carry. GitHub takes the token as the Basic password (any
        username), or as the username with an empty or x-oauth-basic password."""
        import base64
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except ValueError:
            return None
        for candidate in (password, name):
            user = self.state.user_by_token(candidate) if candidate else None
            if user is not None:
                return user
        return None

    async def _git(self, request: Request) -> Response:
        owner, name, rest = (request.path_params[k] for k in ("owner", "repo", "rest"))
        service = request.query_params.get("service", "")
        if rest not in ("info/refs", "git-upload-pack", "git-receive-pack"):
            return _not_found()
        write = rest == "git-receive-pack" or service == "git-receive-pack"
        repo = self.state.repo(owner, name)
        user = self._basic_user(request)
        challenge = Response("Authentication required\n", status_code=401,
                             headers={"WWW-Authenticate": 'Basic realm="GitHub"'})
        if repo is None or not self.state.can_read(repo, user) or (write and not self.state.can_write(repo, user)):
            if user is None:  # anonymous or a bad token: GitHub asks for credentials (git fails, no prompt)
                status = 401
                response = challenge
            else:  # a known user without access, or no such repo: GitHub answers "Repository not found"
                status = 404
                response = PlainTextResponse("Repository not found.\n", status_code=404)
            self.git_requests.append((request.method, request.url.path, status))
            return response
        body = await request.body()
        if self.git_latency:
            await asyncio.sleep(self.git_latency)
        before = self.state.refs(repo) if rest == "git-receive-pack" else {}
        status, headers, out = await _http_backend(request, repo, f"/{repo.path.parent.name}/{repo.path.name}/{rest}",
                                                   body, user)
        self.git_requests.append((request.method, request.url.path, status))
        if rest == "git-receive-pack" and status == 200 and user is not None:
            after = self.state.refs(repo)
            for ref, sha in after.items():
                if before.get(ref) != sha:
                    asyncio.get_running_loop().create_task(self.deliver_push(
                        repo, ref.removeprefix("refs/heads/"), before.get(ref, "0" * 40), sha, user))
        return Response(out, status_code=status, headers=headers)


async def _http_backend(request: Request, repo: Repo, path_info: str, body: bytes,
                        user: User | None) -> tuple[int, dict[str, str], bytes]:
    """Run `git http-backend` as a CGI for one request; returns (status, headers, body)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(repo.path.parent.parent),
        "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path_info, "REQUEST_METHOD": request.method,
        "QUERY_STRING": request.url.query, "CONTENT_TYPE": request.headers.get("content-type", ""),
        "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": request.client.host if request.client else "127.0.0.1",
        "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1", "HOME": str(repo.path.parent.parent),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    if user is not None:
        env["REMOTE_USER"] = user.login
    if "content-encoding" in request.headers:
        env["HTTP_CONTENT_ENCODING"] = request.headers["content-encoding"]
    if "git-protocol" in request.headers:
        env["GIT_PROTOCOL"] = request.headers["git-protocol"]
    proc = await asyncio.create_subprocess_exec(GIT_BACKEND, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=env)
    out, _err = await proc.communicate(body)
    head, _, payload = out.partition(b"\r\n\r\n")
    if not _:
        head, _, payload = out.partition(b"\n\n")
    status, headers = 200, {}
    for line in head.decode("latin-1").splitlines():
        key, _, value = line.partition(":")
        if key.lower() == "status":
            status = int(value.strip().split()[0])
        elif key:
            headers[key.strip()] = value.strip()
    return status, headers, payload
