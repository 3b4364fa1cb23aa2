"""The dashboard's Credits section over HTTP against the real server (billing on, Stripe = the stand-in): Add credits
goes to a Stripe Checkout Session for the signed-in account and the paid session's signed webhook raises the balance
shown; the monthly cap form sets, validates and clears the account's cap. Attacks: cross-site and token-less posts,
another account's form token, an account named in the form, bad amounts; each asserts nothing changed (no Checkout
Session at the stand-in, the cap in the database as before). The browser does the same flow in test_browser.py."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import text

from inkmcp.github.standin import StandinGitHub
from inkmcp.store.db import Store
from tests.billing.stripe_standin import StripeStandIn
from tests.support import ServerProc, call, call_error, mcp_session
from tests.web.conftest import STRIPE_KEY
from tests.web.webclient import base, csrf, figure, new_key, post, problem, sign_in

pytestmark = pytest.mark.slow  # the package's one real server


def balance_becomes(client: httpx.Client, expected: str, timeout: float = 15) -> str:
    """Reload the dashboard until the balance shows `expected` (the webhook comes from another thread)."""
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        shown = figure(client.get("/dashboard").text, "balance")
        if shown == expected:
            return shown
        time.sleep(0.2)
    raise AssertionError(f"balance still {shown!r}, expected {expected!r}")


def test_add_credits_checkout_for_the_signed_in_account_then_the_webhook_raises_the_balance(
        web_server: ServerProc, github_standin: StandinGitHub, stripe_standin: StripeStandIn) -> None:
    alice, login = sign_in(web_server, github_standin, "alice")
    page = alice.get("/dashboard")
    assert (figure(page.text, "balance"), figure(page.text, "cap"), figure(page.text, "spent")) == (
        "5.00 EUR", "no cap", "0.00 EUR")
    form_action = page.headers["content-security-policy"].split("form-action ")[1].split(";")[0]
    assert form_action.split() == ["'self'", "http://127.0.0.1:" + stripe_standin.base.rsplit(":", 1)[1],
                                   "https://checkout.stripe.com"], form_action  # where the 303 may lead

    before = set(stripe_standin.sessions)
    # an account named in the form is ignored: the session is for the cookie's account
    r = post(alice, "/dashboard/credits", {"amount": "12.34", "csrf_token": csrf(page.text),
                                           "client_reference_id": "someone-else", "account": "someone-else"})
    assert r.status_code == 303, r.text[:500]
    (sid,) = set(stripe_standin.sessions) - before
    assert r.headers["location"] == f"{stripe_standin.base}/c/pay/{sid}"
    session = stripe_standin.sessions[sid]
    assert (session["client_reference_id"], session["amount_total"], session["currency"]) == (login, 1234, "eur")
    assert session["success_url"] == f"{base(web_server)}/dashboard?topup=paid"
    assert session["cancel_url"] == f"{base(web_server)}/dashboard?topup=cancelled"
    assert stripe_standin.requests[-1]["User-Agent"].startswith("Stripe/v1 PythonBindings/")  # the official client

    # the customer pays on Stripe's page; Stripe sends the browser back and the signed event to /webhooks/stripe
    paid = alice.post(r.headers["location"])  # follows the redirect to success_url with alice's cookie
    assert paid.url == f"{base(web_server)}/dashboard?topup=paid" and "Payment received by Stripe" in paid.text
    assert balance_becomes(alice, "17.34 EUR")
    stripe_standin.join()
    delivered = [status for _, status in stripe_standin.deliveries[-1:]]
    assert delivered == [200]
    # Stripe retrying the same event adds nothing
    event = stripe_standin.complete(sid)
    event["id"] = next(e for e, _ in reversed(stripe_standin.deliveries))
    assert stripe_standin.deliver(event) == 200
    assert figure(alice.get("/dashboard").text, "balance") == "17.34 EUR"
    cancelled = alice.get("/dashboard", params={"topup": "cancelled"})
    assert "Payment cancelled: nothing was charged." in cancelled.text
    odd = alice.get("/dashboard", params={"topup": "<script>alert(1)</script>"})
    assert "<script>" not in odd.text and 'id="notice"' not in odd.text  # only fixed texts, nothing reflected
    assert STRIPE_KEY not in web_server.log_path.read_text(errors="replace")
    # the webhook endpoint stops reading an oversized body (256 KiB bound) and changes nothing
    big = httpx.post(f"{base(web_server)}/webhooks/stripe", content=b"{" + b" " * 300_000 + b"}", timeout=30)
    assert big.status_code == 413


async def test_add_credits_refuses_bad_amounts_forged_posts_and_never_pays_for_another_account(
        web_server: ServerProc, github_standin: StandinGitHub, stripe_standin: StripeStandIn) -> None:
    alice, alice_login = sign_in(web_server, github_standin, "alice")
    bob, bob_login = sign_in(web_server, github_standin, "bob")
    token, bob_token = csrf(alice.get("/dashboard").text), csrf(bob.get("/dashboard").text)
    before = dict(stripe_standin.sessions)

    bad = {"": "Enter an amount in EUR", "abc": "is not an amount", "-5": "is not an amount",
           "1e3": "is not an amount", "12.345": "at most 2 decimals", "0.99": "between 1.00 EUR and 1,000.00 EUR",
           "1000.01": "between 1.00 EUR and 1,000.00 EUR", "99999999999": "far too large",
           "\uff11\uff12": "is not an amount"}  # fullwidth digits
    for typed, says in bad.items():
        r = post(alice, "/dashboard/credits", {"amount": typed, "csrf_token": token})
        assert r.status_code == 400 and says in problem(r.text), (typed, r.status_code, r.text[:300])
    forged = {
        "no token": post(alice, "/dashboard/credits", {"amount": "50"}),
        "bob's token with alice's cookie": post(alice, "/dashboard/credits", {"amount": "50", "csrf_token": bob_token}),
        "other origin": post(alice, "/dashboard/credits", {"amount": "50", "csrf_token": token},
                             origin="https://evil.example"),
        "no origin": post(alice, "/dashboard/credits", {"amount": "50", "csrf_token": token}, origin=None),
        "alice's token, no cookie": post(httpx.Client(base_url=base(web_server)), "/dashboard/credits",
                                         {"amount": "50", "csrf_token": token}),
    }
    for what, r in forged.items():
        assert r.status_code == 403, (what, r.status_code)
        assert "location" not in r.headers, what
    assert stripe_standin.sessions == before, "a refused form made a Checkout Session"

    # bob naming alice in the form pays for bob; nothing of alice's changes
    r = post(bob, "/dashboard/credits", {"amount": "2", "csrf_token": bob_token, "client_reference_id": alice_login,
                                         "account": alice_login})
    assert r.status_code == 303
    (sid,) = set(stripe_standin.sessions) - set(before)
    assert stripe_standin.sessions[sid]["client_reference_id"] == bob_login
    bob.post(r.headers["location"])
    assert balance_becomes(bob, "7.00 EUR") and figure(alice.get("/dashboard").text, "balance") == "5.00 EUR"

    # a paid session's URL opened by someone else pays nothing twice: the page is gone once complete
    again = httpx.get(r.headers["location"], timeout=10)
    assert again.status_code == 410

    # pressing Add credits in a loop: 5 payment pages, then a wait (Stripe's rate limit is shared by all accounts)
    started = len(stripe_standin.sessions)
    codes = [post(alice, "/dashboard/credits", {"amount": "3", "csrf_token": token}) for _ in range(6)]
    assert [c.status_code for c in codes] == [303] * 5 + [429]
    assert problem(codes[-1].text).startswith("You started 5 payments in a short time: wait ")
    assert len(stripe_standin.sessions) == started + 5
    stripe_standin.join()


async def test_cap_form_sets_validates_clears_and_only_ever_touches_the_signed_in_account(
        web_server: ServerProc, github_standin: StandinGitHub, server_store: Store) -> None:
    alice, alice_login = sign_in(web_server, github_standin, "alice")
    bob, bob_login = sign_in(web_server, github_standin, "bob")
    token, bob_token = csrf(alice.get("/dashboard").text), csrf(bob.get("/dashboard").text)

    async def cap_of(login: str) -> int | None:
        async with server_store.sessionmaker() as s:
            return (await s.execute(text(
                "SELECT b.monthly_cap FROM billing_accounts b JOIN accounts a ON a.id = b.account_id "
                "WHERE a.name = :n"), {"n": login})).scalar_one()

    ok = post(alice, "/dashboard/cap", {"cap": "20", "action": "set", "csrf_token": token})
    assert ok.status_code == 200 and "Monthly spend cap set to 20.00 EUR." in ok.text
    assert figure(ok.text, "cap") == "20.00 EUR" and 'value="20.00"' in ok.text
    assert await cap_of(alice_login) == 2000

    for typed, says in {"-1": "is not an amount", "abc": "is not an amount", "20.001": "at most 2 decimals",
                        "": "Enter an amount in EUR", "2,000": "is not an amount"}.items():
        r = post(alice, "/dashboard/cap", {"cap": typed, "action": "set", "csrf_token": token})
        assert r.status_code == 400 and says in problem(r.text) and "0 stops every changing call" in problem(r.text)
    assert await cap_of(alice_login) == 2000

    # bob: alice's form token with his own cookie, or none, or a cross-site post with alice's cookie: refused
    attacks = {
        "bob's cookie, alice's token": post(bob, "/dashboard/cap", {"cap": "0", "csrf_token": token}),
        "bob's cookie, alice's token, clear": post(bob, "/dashboard/cap", {"action": "clear", "csrf_token": token}),
        "no cookie, alice's token": post(httpx.Client(base_url=base(web_server)), "/dashboard/cap",
                                         {"cap": "0", "csrf_token": token}),
        "alice's cookie and token from another site": post(alice, "/dashboard/cap", {"cap": "0", "csrf_token": token},
                                                           origin="https://evil.example"),
        "alice's cookie, no token": post(alice, "/dashboard/cap", {"cap": "0"}),
    }
    for what, r in attacks.items():
        assert r.status_code == 403 and ("Request refused" in r.text or "Signed out" in r.text), (what, r.status_code)
    # bob naming alice in the form sets bob's cap only
    r = post(bob, "/dashboard/cap", {"cap": "1", "action": "set", "csrf_token": bob_token, "account": alice_login,
                                     "account_id": alice_login})
    assert r.status_code == 200 and figure(r.text, "cap") == "1.00 EUR"
    assert (await cap_of(alice_login), await cap_of(bob_login)) == (2000, 100)

    # a cap of 0 stops changing calls at once: the dashboard says so, and MCP refuses with the same reason
    zero = post(alice, "/dashboard/cap", {"cap": "0", "action": "set", "csrf_token": token})
    assert figure(zero.text, "cap") == "0.00 EUR" and "the monthly spend cap is reached" in zero.text
    key = new_key(post(alice, "/dashboard/keys", {"label": "cap", "csrf_token": token}).text)
    async with mcp_session(web_server, key) as s:
        usage = await call(s, "get_usage")
        assert (usage["monthly_cap"], usage["blocked"]) == (0, True)
        refused = await call_error(s, "update_env_vars", project_name="none", env_vars={"A": "1"})
        assert "update_env_vars refused" in refused and "monthly spend cap is reached" in refused, refused

    cleared = post(alice, "/dashboard/cap", {"cap": "999", "action": "clear", "csrf_token": token})
    assert cleared.status_code == 200 and "Your own cap is removed: the server's default applies (no cap)." in \
        cleared.text.replace("&#39;", "'")
    assert figure(cleared.text, "cap") == "no cap" and 'id="blocked"' not in cleared.text
    assert await cap_of(alice_login) is None and await cap_of(bob_login) == 100
    async with server_store.sessionmaker() as s:
        audited = (await s.execute(text(
            "SELECT count(*) FROM audit_log l JOIN accounts a ON a.id = l.account_id "
            "WHERE l.action = 'set_monthly_cap' AND a.name = :n"),
            {"n": alice_login})).scalar_one()
    assert audited == 3  # 20, 0, cleared; none of the refused posts
