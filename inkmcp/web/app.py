"""The web UI's HTTP surface: GitHub sign-in (/, /auth/...), the dashboard (/dashboard...), its CSS (/static/).

It shares the port of /mcp: `WebUI.mount` puts it in front of the MCP app and sends it only its own paths, so
/mcp, /healthz and /metrics behave exactly as before (bearer keys, DNS-rebinding checks). The web paths get the
same Host check as /mcp (the MCP allowed hosts plus INKMCP_PUBLIC_URL's host), security headers on every
response, and an error page instead of a stack trace.

Why our own cookies rather than Starlette's SessionMiddleware: that middleware keeps the whole session in the
cookie, so logout cannot withdraw a copied cookie, and it would wrap /mcp too. Here the cookie is a signed
random token backed by a database row (sessions.py).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inkmcp.core.platform import Platform
from inkmcp.errors import InkError
from inkmcp.providers.compute.base import LogScope
from inkmcp.web.sessions import SignedIn, WebSessions

log = logging.getLogger("inkmcp.web")

LOG_TAIL = 200  # lines of a log page (get_logs bounds and redacts them)
DEPLOYMENTS_SHOWN = 5  # per project
PROJECTS_DETAILED = 20  # projects whose services and deployments the dashboard loads
LABEL_MAX = 120  # api_keys.label


class SignInError(Exception):
    """GitHub refused or could not be reached during sign-in; `message` is shown to the user as is."""

    def __init__(self, message: str, *, status: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class GitHubSignIn(Protocol):
    """What sign-in needs from GitHub (inkmcp/web/github.py adapts the GitHub client to it)."""

    configured: bool
    missing: list[str]
    github_url: str

    async def authorize_url(self, state: str) -> str: ...

    async def complete(self, code: str) -> str:
        """Exchange the code, read the user, store the identity; the account name. Raises SignInError."""
        ...

    async def login_of(self, account_id: uuid.UUID) -> str | None:
        """The GitHub login bound to an account (None for accounts made with the CLI)."""
        ...


def is_web_path(path: str) -> bool:
    return (path == "/" or path == "/dashboard" or path.startswith(("/dashboard/", "/auth/", "/static/")))


@dataclass(frozen=True)
class CookieSpec:
    """Cookie names and flags: Secure (and the __Host- prefix, which pins the cookie to this host and path /)
    when the public URL is https; HttpOnly and SameSite=Lax always (Lax: the session survives GitHub's redirect
    back, a top-level GET, but is not sent with another site's POSTs)."""

    secure: bool

    @property
    def session(self) -> str:
        return "__Host-inkmcp_session" if self.secure else "inkmcp_session"

    @property
    def state(self) -> str:
        return "__Host-inkmcp_oauth_state" if self.secure else "inkmcp_oauth_state"

    def set(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", secure=self.secure, httponly=True,
                            samesite="lax")

    def clear(self, response: Response, name: str) -> None:
        response.delete_cookie(name, path="/", secure=self.secure, httponly=True, samesite="lax")


def _security_headers() -> list[tuple[bytes, bytes]]:
    csp = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
           "frame-ancestors 'none'; base-uri 'none'")
    return [
        (b"content-security-policy", csp.encode()),
        (b"x-frame-options", b"DENY"),
        # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on POSTs, which the CSRF
        # check must refuse; the OAuth code in the callback URL is never sent to another site either way
        (b"referrer-policy", b"same-origin"),
        (b"x-content-type-options", b"nosniff"),
        (b"cross-origin-opener-policy", b"same-origin"),
    ]


class _Guard:
    """In front of the web app: Host check (DNS rebinding), security headers, no-store on every page."""

    def __init__(self, app: ASGIApp, hosts: set[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.headers = _security_headers()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        if host not in self.hosts:
            await PlainTextResponse("Invalid Host header", status_code=421)(scope, receive, send)
            return
        is_static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in self.headers:
                    headers[k.decode()] = v.decode()
                # pages can show a new API key and always show the account's data: never cache them
                headers["cache-control"] = "public, max-age=3600" if is_static else "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class WebUI:
    def __init__(self, platform: Platform, sessions: WebSessions, github: GitHubSignIn, public_url: str | None
                 ) -> None:
        self.platform = platform
        self.sessions = sessions
        self.github = github
        self.public_url = public_url
        self.cookies = CookieSpec(secure=bool(public_url and public_url.startswith("https://")))
        self.origins: set[str] = set()  # mount() fills it: the origins a POST may come from
        env = Environment(loader=PackageLoader("inkmcp.web", "templates"), autoescape=select_autoescape(default=True))
        self.templates = Jinja2Templates(env=env)
        self.app = Starlette(
            routes=[
                Route("/", self.home),
                Route("/auth/github/login", self.login),
                Route("/auth/github/callback", self.callback),
                Route("/auth/logout", self.logout, methods=["POST"]),
                Route("/dashboard", self.dashboard),
                Route("/dashboard/keys", self.create_key, methods=["POST"]),
                Route("/dashboard/keys/revoke", self.revoke_key, methods=["POST"]),
                Route("/dashboard/logs", self.logs),
                Mount("/static", app=StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
            ],
            exception_handlers={HTTPException: self._http_error, Exception: self._server_error},
        )

    # ------------------------------------------------------------- wiring
    def mount(self, inner: ASGIApp, allowed_hosts: list[str]) -> ASGIApp:
        """`inner` (the MCP app) with the web UI in front for the web paths only."""
        hosts = {h.lower() for h in allowed_hosts}
        self.origins = {f"http://{h}" for h in hosts} | {f"https://{h}" for h in hosts}
        if self.public_url:  # its host, and exactly its origin (no http:// twin of an https URL)
            public = urlsplit(self.public_url)
            hosts.add(public.netloc.lower())
            self.origins.add(f"{public.scheme}://{public.netloc}".lower())
        web = _Guard(self.app, hosts)

        async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and is_web_path(scope["path"]):
                await web(scope, receive, send)
            else:
                await inner(scope, receive, send)

        return dispatch

    # ---------------------------------------------------------- rendering
    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def error(self, request: Request, status: int, title: str, message: str, *, retry: bool = False) -> Response:
        return self.page(request, "error.html", status, title=title, message=message, retry=retry,
                         me=request.scope.get("inkmcp.web.me"))

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        titles = {404: "Not found", 405: "Method not allowed"}
        return self.error(request, status, titles.get(status, "Request refused"),
                          exc.detail if isinstance(exc, HTTPException) else "")

    async def _server_error(self, request: Request, exc: Exception) -> Response:
        log.error("web UI error on %s: %s", request.url.path, type(exc).__name__)
        return self.error(request, 500, "Something went wrong",
                          "InkMCP could not finish this request. Try again; if it keeps failing, the operator "
                          "finds the cause in the server log.", retry=True)

    # ---------------------------------------------------------- sessions
    async def me(self, request: Request) -> SignedIn | None:
        signed = await self.sessions.resolve(request.cookies.get(self.cookies.session))
        request.scope["inkmcp.web.me"] = signed
        return signed

    def _same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            referer = request.headers.get("referer")
            if not referer:
                return False
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
        return origin.lower() in self.origins

    async def _form_post(self, request: Request) -> tuple[SignedIn, Any] | Response:
        """Every POST: a signed-in session, a same-origin request and the session's CSRF token, else 403 and
        nothing done."""
        me = await self.me(request)
        if me is None:
            return self.error(request, 403, "Signed out", "Your session ended. Sign in again, then retry.")
        form = await request.form()
        if not self._same_origin(request) or not self.sessions.csrf_ok(me.token, form.get("csrf_token")):  # type: ignore[arg-type]
            log.warning("web UI: refused a POST to %s without a valid CSRF token or origin", request.url.path)
            return self.error(request, 403, "Request refused",
                              "This form was not sent by this page (missing or wrong CSRF token, or another "
                              "site's origin). Reload the dashboard and try again.")
        return me, form

    async def _ctx(self, me: SignedIn) -> dict[str, Any]:
        return {"me": me, "csrf": self.sessions.csrf_token(me.token),
                "github_login": await self.github.login_of(me.principal.account_id)}

    # ------------------------------------------------------------ sign-in
    async def home(self, request: Request) -> Response:
        if await self.me(request) is not None:
            return RedirectResponse("/dashboard", status_code=303)
        return self.page(request, "home.html", configured=self.github.configured, missing=self.github.missing)

    async def login(self, request: Request) -> Response:
        if not self.github.configured:
            return RedirectResponse("/", status_code=303)
        state, cookie = self.sessions.new_state()
        response = RedirectResponse(await self.github.authorize_url(state), status_code=302)
        self.cookies.set(response, self.cookies.state, cookie, int(self.sessions.state_lifetime.total_seconds()))
        return response

    async def callback(self, request: Request) -> Response:
        if not self.github.configured:
            return RedirectResponse("/", status_code=303)
        q = request.query_params
        if q.get("error"):
            return self._clear_state(self.error(
                request, 400, "Sign-in cancelled",
                "GitHub did not authorize InkMCP (you may have pressed Cancel). Sign in again to retry."))
        if not self.sessions.state_ok(request.cookies.get(self.cookies.state), q.get("state")):
            log.warning("web UI: refused a GitHub callback whose state does not match this browser's")
            return self._clear_state(self.error(
                request, 400, "Sign-in could not be verified",
                "This sign-in was not started in this browser, or it took too long. Start again from the "
                "home page."))
        code = q.get("code")
        if not code:
            return self._clear_state(self.error(request, 400, "Sign-in incomplete",
                                                "GitHub sent no authorization code. Start again from the home page."))
        try:
            account = await self.github.complete(code)
        except SignInError as e:
            return self._clear_state(self.error(request, e.status, "Sign-in failed", e.message, retry=True))
        old = await self.me(request)
        if old is not None:  # no session fixation: a fresh token at every sign-in, the old one ended
            await self.sessions.end(old.token)
        cookie = await self.sessions.start(account)
        log.info("web UI: %s signed in with GitHub", account)
        response = self._clear_state(RedirectResponse("/dashboard", status_code=303))
        self.cookies.set(response, self.cookies.session, cookie, int(self.sessions.lifetime.total_seconds()))
        return response

    def _clear_state(self, response: Response) -> Response:
        self.cookies.clear(response, self.cookies.state)
        return response

    async def logout(self, request: Request) -> Response:
        checked = await self._form_post(request)
        if isinstance(checked, Response):
            return checked
        me, _ = checked
        await self.sessions.end(me.token)
        response = RedirectResponse("/", status_code=303)
        self.cookies.clear(response, self.cookies.session)
        return response

    # ----------------------------------------------------------- dashboard
    async def _signed_in(self, request: Request) -> SignedIn | Response:
        me = await self.me(request)
        return RedirectResponse("/", status_code=303) if me is None else me

    async def dashboard(self, request: Request) -> Response:
        me = await self._signed_in(request)
        if isinstance(me, Response):
            return me
        return await self._render_dashboard(request, me)

    async def _render_dashboard(self, request: Request, me: SignedIn, status: int = 200, **extra: Any) -> Response:
        p = me.principal
        keys = [k for k in await self.platform.accounts.list_keys(p.account_name) if k.revoked_at is None]
        listing = await self.platform.list_projects(p)
        projects = []
        for project in listing.projects[:PROJECTS_DETAILED]:
            entry: dict[str, Any] = {"project": project, "services": [], "deployments": [], "error": None}
            try:
                entry["services"] = await self.platform.list_services(p, project.name)
                entry["deployments"] = await self.platform.list_deployments(p, project.name, None, DEPLOYMENTS_SHOWN)
            except InkError as e:  # e.g. the compute provider is unreachable: say so for this project only
                entry["error"] = e.message
            projects.append(entry)
        return self.page(request, "dashboard.html", status, keys=keys, projects=projects,
                         more_projects=max(0, listing.total - len(projects)), **await self._ctx(me),
                         **extra)

    async def create_key(self, request: Request) -> Response:
        checked = await self._form_post(request)
        if isinstance(checked, Response):
            return checked
        me, form = checked
        label = str(form.get("label") or "").strip() or None
        if label is not None and len(label) > LABEL_MAX:
            return await self._render_dashboard(request, me, 400,
                                                problem=f"The label is too long: use at most {LABEL_MAX} characters.")
        issued = await self.platform.accounts.create_key(me.principal.account_name, label or "created on the dashboard")
        await self.platform.audit.record(me.principal, "create_api_key", target=issued.prefix,
                                         arguments={"label": label})
        log.info("web UI: %s created API key %s", me.principal.account_name, issued.prefix)
        return await self._render_dashboard(request, me, new_key=issued.key)

    async def revoke_key(self, request: Request) -> Response:
        checked = await self._form_post(request)
        if isinstance(checked, Response):
            return checked
        me, form = checked
        try:
            key_id = uuid.UUID(str(form.get("key_id") or ""))
            prefix = await self.platform.accounts.revoke_account_key(me.principal.account_id, key_id)
        except (ValueError, InkError):
            return await self._render_dashboard(request, me, 404, problem="No active key of yours has that id "
                                                "(it may be revoked already): pick one from the list below.")
        await self.platform.audit.record(me.principal, "revoke_api_key", target=prefix, arguments={})
        log.info("web UI: %s revoked API key %s", me.principal.account_name, prefix)
        return await self._render_dashboard(request, me, notice=f"Revoked {prefix}…: requests with it now get 401.")

    async def logs(self, request: Request) -> Response:
        me = await self._signed_in(request)
        if isinstance(me, Response):
            return me
        q = request.query_params
        project, service = q.get("project", ""), q.get("service") or None
        try:
            scope = LogScope(q.get("scope", "build"))
        except ValueError:
            return self.error(request, 400, "Unknown log", "scope must be build or runtime.")
        try:
            view = await self.platform.get_logs(me.principal, project, scope=scope, service_name=service,
                                                tail=LOG_TAIL)
        except InkError as e:
            return self.error(request, 404, "Logs unavailable", e.message)
        return self.page(request, "logs.html", view=view, **await self._ctx(me))

