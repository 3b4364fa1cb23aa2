"""Attacks on the web UI from outside, against a real `inkmcp serve` signed into through the GitHub stand-in:
cross-site form posts, forged/expired/logged-out cookies, an OAuth state from another browser, one account
reaching for another's keys, projects and logs. Each asserts what the attacker sees and that nothing changed."""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from itsdangerous import URLSafeTimedSerializer
from itsdangerous.timed import TimestampSigner

from inkmcp.core.accounts import AccountService
from inkmcp.github.standin import StandinGitHub
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store
from inkmcp.web.sessions import signing_key
from tests.support import ServerProc, call, mcp_session
from tests.web.webclient import base, csrf, key_ids, new_key, post, sign_in

pytestmark = pytest.mark.slow  # one real server for the module (the browser test shares it)
COOKIE = "inkmcp_session"  # INKMCP_PUBLIC_URL is http here, so no __Host- prefix


def fresh(srv: ServerProc, cookie: str | None = None) -> httpx.Client:
    """Another browser: nothing but the given session cookie."""
    client = httpx.Client(base_url=base(srv), follow_redirects=True, timeout=30)
    if cookie is not None:
        client.cookies.set(COOKIE, cookie)
    return client


def is_signed_out(client: httpx.Client) -> bool:
    page = client.get("/dashboard")
    return page.url.path == "/" and 'id="signin"' in page.text and "Dashboard" not in page.text


def test_form_posts_need_the_sessions_csrf_token_and_our_origin(web_server: ServerProc,
                                                                github_standin: StandinGitHub) -> None:
    alice, _ = sign_in(web_server, github_standin, "alice")
    bob, _ = sign_in(web_server, github_standin, "bob")
    page = alice.get("/dashboard").text
    token, before = csrf(page), key_ids(page)
    attempts = {
        "no token": post(alice, "/dashboard/keys", {"label": "x"}),
        "wrong token": post(alice, "/dashboard/keys", {"label": "x", "csrf_token": "0" * 64}),
        "bob's token": post(alice, "/dashboard/keys", {"label": "x", "csrf_token": csrf(bob.get("/dashboard").text)}),
        "other origin": post(alice, "/dashboard/keys", {"label": "x", "csrf_token": token},
                             origin="https://evil.example"),
        "null origin": post(alice, "/dashboard/keys", {"label": "x", "csrf_token": token}, origin="null"),
        "no origin or referer": post(alice, "/dashboard/keys", {"label": "x", "csrf_token": token}, origin=None),
        "revoke without token": post(alice, "/dashboard/keys/revoke", {"key_id": before[0] if before else ""}),
        "logout without token": post(alice, "/auth/logout", {}),
    }
    for what, r in attempts.items():
        assert r.status_code == 403, (what, r.status_code, r.text[:300])
        assert "Request refused" in r.text and "dk_live_" not in r.text, what
    after = alice.get("/dashboard")
    assert after.url.path == "/dashboard", "a refused logout must not sign the user out"
    assert key_ids(after.text) == before, "a refused POST created or revoked a key"
    # the same form with the token and the page's origin goes through (the refusals above were the checks)
    ok = post(alice, "/dashboard/keys", {"label": "ok", "csrf_token": token})
    assert ok.status_code == 200 and new_key(ok.text).startswith("dk_live_")
    assert ok.headers["cache-control"] == "no-store"
    assert len(key_ids(ok.text)) == len(before) + 1


async def test_one_account_cannot_revoke_see_or_read_anothers(web_server: ServerProc,
                                                               github_standin: StandinGitHub) -> None:
    alice, _ = sign_in(web_server, github_standin, "alice")
    page = post(alice, "/dashboard/keys", {"label": "alice's", "csrf_token": csrf(alice.get("/dashboard").text)})
    alice_key, (alice_key_id,) = new_key(page.text), key_ids(page.text)
    project = f"secret-{os.urandom(3).hex()}"
    async with mcp_session(web_server, alice_key) as s:
        await call(s, "ensure_project", name=project)
    assert project in alice.get("/dashboard").text

    bob, _ = sign_in(web_server, github_standin, "bob")
    bob_page = bob.get("/dashboard").text
    assert project not in bob_page and alice_key[:14] not in bob_page
    stolen = post(bob, "/dashboard/keys/revoke", {"key_id": alice_key_id, "csrf_token": csrf(bob_page)})
    assert stolen.status_code == 404 and "No active key of yours" in stolen.text
    logs = bob.get("/dashboard/logs", params={"project": project, "service": "web", "scope": "build"})
    assert logs.status_code == 404 and "no project" in logs.text.lower(), logs.text[:500]
    async with mcp_session(web_server, alice_key) as s:  # alice's key still works, her project is still hers
        listed = await call(s, "list_projects")
    assert project in [p["name"] for p in listed["projects"]]
    assert alice_key_id in key_ids(alice.get("/dashboard").text)


async def test_forged_expired_and_logged_out_cookies_are_refused(web_server: ServerProc,
                                                                 github_standin: StandinGitHub,
                                                                 server_store: Store) -> None:
    client, _ = sign_in(web_server, github_standin, "carol")
    cookie = client.cookies[COOKIE]
    key = await signing_key(server_store.sessionmaker, SecretBox.load(web_server.data_dir))
    token = URLSafeTimedSerializer(key, salt="inkmcp.web.session").loads(cookie)

    class OldSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return super().get_timestamp() - 13 * 3600  # older than the 12-hour default lifetime

    resigned_now = URLSafeTimedSerializer(key, salt="inkmcp.web.session").dumps(token)
    assert not is_signed_out(fresh(web_server, resigned_now)), "control: a cookie made with the key works"
    forged = {
        "tampered": cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"),
        "other key": URLSafeTimedSerializer(os.urandom(32), salt="inkmcp.web.session").dumps(token),
        "expired signature": URLSafeTimedSerializer(key, salt="inkmcp.web.session", signer=OldSigner).dumps(token),
        "unsigned token": token,
    }
    for what, value in forged.items():
        assert is_signed_out(fresh(web_server, value)), what

    # expiry is also enforced by the database row (a cookie signed recently for an expired row is refused)
    async with server_store.sessionmaker.begin() as s:
        from sqlalchemy import text
        await s.execute(text("UPDATE web_sessions SET expires_at = now() - interval '1 second' "
                             "WHERE token_hash = :h"), {"h": hashlib.sha256(token.encode()).hexdigest()})
    assert is_signed_out(fresh(web_server, cookie))

    # logout ends the session server-side: a copy of the cookie taken before logout stops working
    dave, _ = sign_in(web_server, github_standin, "dave")
    stolen = dave.cookies[COOKIE]
    assert not is_signed_out(fresh(web_server, stolen))
    out = post(dave, "/auth/logout", {"csrf_token": csrf(dave.get("/dashboard").text)})
    assert out.status_code == 303 and out.headers["location"] == "/"
    assert is_signed_out(fresh(web_server, stolen))
    async with server_store.sessionmaker() as s:
        from sqlalchemy import text
        left = (await s.execute(text("SELECT count(*) FROM web_sessions WHERE token_hash = :h"), {
            "h": hashlib.sha256(URLSafeTimedSerializer(key, salt="inkmcp.web.session").loads(stolen).encode())
            .hexdigest()})).scalar()
    assert left == 0


def test_oauth_state_is_bound_to_the_browser_that_started(web_server: ServerProc,
                                                          github_standin: StandinGitHub) -> None:
    from tests.github_support import unique_login

    login = unique_login("mallory")
    github_standin.add_user(login)
    mallory = httpx.Client(base_url=base(web_server), timeout=30)
    start = mallory.get("/auth/github/login")
    assert start.status_code == 302
    authorize = start.headers["location"]
    q = parse_qs(urlsplit(authorize).query)
    assert authorize.startswith(f"{github_standin.url}/login/oauth/authorize?")
    assert q["redirect_uri"] == [f"{base(web_server)}/auth/github/callback"] and q["client_id"]
    state = q["state"][0]
    assert len(state) >= 32
    set_cookie = start.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie.replace("Lax", "lax")

    # GitHub redirects back with a code for mallory's GitHub user
    back = httpx.get(authorize + f"&login={login}", timeout=30)
    assert back.status_code == 302
    callback = back.headers["location"]
    assert callback.startswith(f"{base(web_server)}/auth/github/callback?") and "code=" in callback

    # a victim's browser fed mallory's callback URL (login CSRF) is not signed in: no state cookie of its own
    victim = fresh(web_server)
    r = victim.get(callback)
    assert r.status_code == 400 and "could not be verified" in r.text and COOKIE not in victim.cookies
    assert is_signed_out(victim)
    # a state that is not the cookie's is refused too, even in the right browser
    wrong = mallory.get(callback.replace(f"state={state}", "state=" + "x" * 43))
    assert wrong.status_code == 400 and "could not be verified" in wrong.text and COOKIE not in mallory.cookies
    # GitHub's "access denied"
    denied = mallory.get("/auth/github/callback", params={"error": "access_denied", "state": state})
    assert denied.status_code == 400 and "cancelled" in denied.text
    # the browser that started it completes with the same URL (the refusals above did not consume the code)
    mallory = httpx.Client(base_url=base(web_server), timeout=30, follow_redirects=True)
    start = mallory.get("/auth/github/login", follow_redirects=False)
    back = httpx.get(start.headers["location"] + f"&login={login}", timeout=30)
    done = mallory.get(back.headers["location"])
    assert done.url.path == "/dashboard" and f'id="login">{login}<' in done.text
    session_cookie = next(h for h in done.history[0].headers.get_list("set-cookie") if h.startswith(COOKIE))
    assert "HttpOnly" in session_cookie and re.search(r"(?i)samesite=lax", session_cookie)
    assert "Max-Age=43200" in session_cookie
    # replaying the callback (state cookie used up) does not sign in again
    assert mallory.get(back.headers["location"]).status_code == 400
    # nor does a used code under a fresh state: GitHub refuses it and the page says to sign in again
    restart = mallory.get("/auth/github/login", follow_redirects=False)
    fresh_state = parse_qs(urlsplit(restart.headers["location"]).query)["state"][0]
    used_code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
    reused = mallory.get("/auth/github/callback", params={"code": used_code, "state": fresh_state})
    assert reused.status_code == 400 and "Sign-in failed" in reused.text and "bad_verification_code" in reused.text


def test_web_paths_have_security_headers_and_the_mcp_checks_stay(web_server: ServerProc) -> None:
    home = httpx.get(base(web_server) + "/", timeout=10)
    assert home.status_code == 200
    csp = home.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src" not in csp and "default-src 'none'" in csp
    assert home.headers["x-frame-options"] == "DENY" and home.headers["referrer-policy"] == "same-origin"
    assert home.headers["cache-control"] == "no-store" and home.headers["x-content-type-options"] == "nosniff"
    assert "<script" not in home.text and 'name="viewport"' in home.text
    # DNS rebinding: a page reached under another host name is refused, as /mcp is
    for path in ("/", "/dashboard", "/auth/github/login", "/static/web.css"):
        r = httpx.get(base(web_server) + path, headers={"Host": "evil.example"}, timeout=10)
        assert r.status_code == 421, (path, r.status_code)
    rebound = httpx.post(base(web_server) + "/mcp", headers={"Host": "evil.example", "Authorization": "Bearer x"},
                         timeout=10)
    assert rebound.status_code == 401  # no key: refused before anything else
    assert httpx.post(base(web_server) + "/mcp", json={}, timeout=10).status_code == 401
    assert httpx.get(base(web_server) + "/healthz", timeout=10).json()["status"] == "ok"
    assert httpx.get(base(web_server) + "/nope", timeout=10).status_code == 404


async def test_github_user_does_not_take_over_an_operator_account_of_the_same_name(
        web_server: ServerProc, github_standin: StandinGitHub, server_store: Store) -> None:
    """An account the operator made with the CLI is not handed to whoever registers that login on GitHub: the
    GitHub user gets an account of their own and never sees the operator's keys."""
    from tests.github_support import unique_login

    login = unique_login("ops")
    accounts = AccountService(server_store.sessionmaker)  # what `inkmcp keys create --account LOGIN` runs
    operator_key = (await accounts.create_key(login)).key
    github_standin.add_user(login)
    client = httpx.Client(base_url=base(web_server), follow_redirects=True, timeout=30)
    client.get(f"{github_standin.url}/_standin/as/{login}").raise_for_status()
    page = client.get("/auth/github/login")
    assert page.url.path == "/dashboard" and f'id="login">{login}<' in page.text
    account = re.search(r'id="account">([^<]+)<', page.text)
    assert account and account.group(1).startswith(f"{login}-gh"), page.text[:800]
    assert operator_key[:14] not in page.text and key_ids(page.text) == []
    assert [k.prefix for k in await accounts.list_keys(login)] == [operator_key[:14]]
