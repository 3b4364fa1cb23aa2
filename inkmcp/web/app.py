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
import math
import time
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
from inkmcp.web import money
from inkmcp.web.sessions import SignedIn, WebSessions

log = logging.getLogger("inkmcp.web")

LOG_TAIL = 200  # lines of a log page (get_logs bounds and redacts them)
DEPLOYMENTS_SHOWN = 5  # per project
PROJECTS_DETAILED = 20  # projects whose services and deployments the dashboard loads
LABEL_MAX = 120  # api_keys.label
CHECKOUT_BURST = 5  # Checkout Sessions an account may start at once ...
CHECKOUT_EVERY_S = 12.0  # ... then one per this many seconds (per replica)


class _Bucket:
    """A small per-account token bucket in memory: "Add credits" costs a Stripe API call, and Stripe's rate limit is
    shared by every account, so one signed-in user pressing it in a loop must not use it up. Per replica (a restart
    refills it); the bound is loose on purpose: a person never notices it."""

    def __init__(self, burst: int, every_s: float) -> None:
        self.burst, self.every_s = burst, every_s
        self._state: dict[uuid.UUID, tuple[float, float]] = {}  # account -> (tokens, at)

    def take(self, key: uuid.UUID) -> float:
        """0 if a token was taken, else the seconds until one is there."""
        now = time.monotonic()
        tokens, at = self._state.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) / self.every_s)
        if tokens < 1:
            self._state[key] = (tokens, now)
            return (1 - tokens) * self.every_s
        self._state[key] = (tokens - 1, now)
        if len(self._state) > 10_000:  # full buckets carry no information: forget them
            self._state = {k: v for k, v in self._state.items() if v[0] + (now - v[1]) / self.every_s < self.burst}
        return 0.0


TOPUP_NOTICES = {  # where Stripe Checkout sends the browser back (success_url / cancel_url)
    "paid": "Payment received by Stripe. Your balance grows as soon as Stripe confirms it to InkMCP, usually within "
            "seconds: reload this page to see it.",
    "cancelled": "Payment cancelled: nothing was charged.",
}


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


def _security_headers(form_targets: set[str] | None = None) -> list[tuple[bytes, bytes]]:
    # form-action also governs where a form's POST may redirect: "Add credits" answers 303 to Stripe Checkout
    targets = "".join(f" {t}" for t in sorted(form_targets or ()))
    csp = (f"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'{targets}; "
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

    def __init__(self, app: ASGIApp, hosts: set[str], form_targets: set[str] | None = None) -> None:
        self.app = app
        self.hosts = hosts
        self.headers = _security_headers(form_targets)

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
        self.checkouts = _Bucket(CHECKOUT_BURST, CHECKOUT_EVERY_S)
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
                Route("/dashboard/credits", self.add_credits, methods=["POST"]),
                Route("/dashboard/cap", self.set_cap, methods=["POST"]),
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
        billing = self.billing
        checkout = billing.stripe.settings.checkout_origins if billing is not None and billing.stripe.enabled else None
        web = _Guard(self.app, hosts, checkout)

        async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and is_web_path(scope["path"]):
                await web(scope, receive, send)
            else:
                await inner(scope, receive, send)

        return dispatch

    @property
    def billing(self) -> Any:
        """inkmcp.billing.service.Billing, or None when billing is off (INKMCP_PRICES unset)."""
        return getattr(self.platform, "billing", None)

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
        which = request.query_params.get("topup", "")
        topup = TOPUP_NOTICES.get(which)  # fixed texts: nothing from the URL is shown
        return await self._render_dashboard(request, me, **({"notice": topup, "reload_link": which == "paid"}
                                                            if topup else {}))

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
        extra.setdefault("credits", await self._credits(me))
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


    # ------------------------------------------------------- credits and cap (issue 13)
    async def _credits(self, me: SignedIn, **form: Any) -> dict[str, Any]:
        """What the dashboard's Credits section shows: {"on": False} with billing off; else the account's usage
        (balance, cap, spend this month: the get_usage view), the currency, and whether card top-ups are set up."""
        billing = self.billing
        if billing is None:
            return {"on": False}
        try:
            view = await billing.usage(me.principal)
        except Exception as e:  # the rest of the dashboard (keys, projects) still works; the log says why
            log.error("web UI: the usage of %s could not be read: %s", me.principal.account_name, type(e).__name__)
            return {"on": True, "unavailable": True}
        stripe = billing.stripe.settings
        currency = stripe.currency

        def show(minor: int | None) -> str:
            return money.show(minor, currency)

        reason = None
        if view.blocked:
            reason = "no credits left" if (view.balance or 0) <= 0 else "the monthly spend cap is reached"
        default_cap = billing.settings.monthly_cap
        return {
            "on": True, "view": view, "show": show, "currency": currency.upper(), "reason": reason,
            "topups": billing.stripe.enabled, "min": show(stripe.min_topup), "max": show(stripe.max_topup),
            "default_cap": "no cap" if default_cap is None else show(default_cap),
            "amount_value": form.get("amount_value", money.plain(max(stripe.min_topup, min(
                stripe.max_topup, 10 ** money.decimals(currency) * 10)), currency)),
            "cap_value": form.get("cap_value", "" if view.monthly_cap is None else money.plain(view.monthly_cap,
                                                                                               currency)),
        }

    def _base_url(self, request: Request) -> str:
        """Where Stripe sends the browser back: INKMCP_PUBLIC_URL, else the Host this request came to (checked)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"{request.url.scheme}://{request.headers.get('host', '')}"

    async def add_credits(self, request: Request) -> Response:
        """"Add credits": a Stripe Checkout Session for the signed-in account (never an account named in the form),
        then 303 to Stripe's payment page. The webhook credits the payment (inkmcp/billing/stripe.py)."""
        checked = await self._form_post(request)
        if isinstance(checked, Response):
            return checked
        me, form = checked
        billing = self.billing
        if billing is None or not billing.stripe.enabled:
            return await self._render_dashboard(request, me, 409, problem=(
                "Card top-ups are not set up on this server. Ask the operator to add credits "
                f"(`inkmcp credits grant --account {me.principal.account_name} --amount N --reason TEXT`)."))
        st = billing.stripe.settings
        typed = str(form.get("amount") or "")[:64]
        try:
            amount = money.parse(typed, st.currency)
            if not st.min_topup <= amount <= st.max_topup:
                raise ValueError(f"Top-ups are between {money.show(st.min_topup, st.currency)} and "
                                 f"{money.show(st.max_topup, st.currency)}.")
        except ValueError as e:
            return await self._render_dashboard(request, me, 400, problem=f"Add credits: {e}",
                                                credits=await self._credits(me, amount_value=typed))
        wait = self.checkouts.take(me.principal.account_id)
        if wait:
            return await self._render_dashboard(request, me, 429, problem=(
                f"You started {CHECKOUT_BURST} payments in a short time: wait {math.ceil(wait)} s, then press Add "
                "credits again. Payments you completed are credited anyway."),
                credits=await self._credits(me, amount_value=typed))
        base = self._base_url(request)
        try:
            url = await billing.checkout_url(me.principal.account_name, amount,
                                             success_url=f"{base}/dashboard?topup=paid",
                                             cancel_url=f"{base}/dashboard?topup=cancelled")
        except InkError as e:
            log.warning("web UI: Stripe Checkout for %s failed: %s", me.principal.account_name, e.message)
            return await self._render_dashboard(request, me, 502, problem=(
                f"Stripe could not start the payment: {e.message} Nothing was charged; try again in a minute."),
                credits=await self._credits(me, amount_value=typed))
        await self.platform.audit.record(me.principal, "start_topup", target=me.principal.account_name,
                                         arguments={"amount": amount})
        log.info("web UI: %s started a Stripe Checkout of %d", me.principal.account_name, amount)
        return RedirectResponse(url, status_code=303)

    async def set_cap(self, request: Request) -> Response:
        """The signed-in account's monthly spend cap: set (an amount >= 0) or cleared (back to the server default)."""
        checked = await self._form_post(request)
        if isinstance(checked, Response):
            return checked
        me, form = checked
        billing = self.billing
        if billing is None:
            return await self._render_dashboard(request, me, 409, problem=(
                "This server does not charge (billing is off), so there is no spend cap to set."))
        currency = billing.stripe.settings.currency
        typed = str(form.get("cap") or "")[:64]
        cap: int | None = None
        if form.get("action") != "clear":
            try:
                cap = money.parse(typed, currency)
            except ValueError as e:
                return await self._render_dashboard(request, me, 400, problem=(
                    f"Monthly cap: {e} 0 stops every changing call; Remove my cap goes back to the server's "
                    "default."), credits=await self._credits(me, cap_value=typed))
        await billing.set_cap(me.principal.account_id, cap)  # by the session's account id, nothing from the form
        await self.platform.audit.record(me.principal, "set_monthly_cap", target=me.principal.account_name,
                                         arguments={"cap": cap})
        log.info("web UI: %s set its monthly cap to %s", me.principal.account_name, cap)
        if cap is None:
            default = billing.settings.monthly_cap
            notice = ("Your own cap is removed: the server's default applies ("
                      f"{'no cap' if default is None else money.show(default, currency)}).")
        else:
            notice = f"Monthly spend cap set to {money.show(cap, currency)}."
        return await self._render_dashboard(request, me, notice=notice)
