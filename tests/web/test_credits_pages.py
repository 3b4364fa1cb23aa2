"""The Credits section as each server configuration renders it (in-process WebUI on a real migrated database, no
server): billing off says so and offers no form; billing on without working Stripe top-ups (no key, or a key but no
webhook secret, so a payment would never be credited) shows balance and cap but no Add credits button, and says how
to get credits instead; the CSP lets forms lead to Stripe Checkout only when top-ups are on."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from inkmcp.billing.ledger import Ledger
from inkmcp.billing.service import Billing
from inkmcp.billing.stripe import Stripe, StripeSettings
from inkmcp.core.principal import Principal
from inkmcp.web.app import WebUI
from inkmcp.web.sessions import SignedIn, WebSessions
from tests.billing import conftest as _billing_fixtures
from tests.billing.conftest import World

embedded_pg_factory = _billing_fixtures.embedded_pg_factory
control_pg = _billing_fixtures.control_pg
billing_template = _billing_fixtures.billing_template
world = _billing_fixtures.world
make_ledger = _billing_fixtures.make_ledger
HOST = "127.0.0.1:8080"


def web_ui(billing: Billing | None) -> WebUI:
    sessions = WebSessions(cast(Any, None), os.urandom(32), timedelta(hours=1), timedelta(minutes=10))
    github = SimpleNamespace(configured=False, missing=[], github_url="")
    return WebUI(cast(Any, SimpleNamespace(billing=billing)), sessions, cast(Any, github), None)


async def credits_html(web: WebUI, me: SignedIn) -> str:
    context = {"credits": await web._credits(me), "me": me, "csrf": "t" * 64, "keys": [], "projects": [],
               "more_projects": 0, "github_login": None}
    return web.templates.env.get_template("dashboard.html").render(context)


def form_action(web: WebUI) -> str:
    client = TestClient(web.mount(PlainTextResponse("mcp"), [HOST]), base_url=f"http://{HOST}")
    return client.get("/").headers["content-security-policy"].split("form-action ")[1].split(";")[0]


def billing_with(ledger: Ledger, stripe: StripeSettings) -> Billing:
    return Billing(settings=ledger.settings, ledger=ledger, meter=cast(Any, None), enforcer=cast(Any, None),
                   breaker=cast(Any, None), stripe=Stripe(stripe, ledger))


async def test_billing_off_says_so_and_offers_no_form() -> None:
    web = web_ui(None)
    me = SignedIn(Principal(account_id=uuid.uuid4(), account_name="ann", actor="web"), "tok")
    page = await credits_html(web, me)
    assert 'id="billing-off"' in page and "does not charge" in page
    for absent in ('action="/dashboard/credits"', 'action="/dashboard/cap"', 'id="balance"'):
        assert absent not in page
    assert form_action(web) == "'self'"


@pytest.mark.parametrize("stripe", [StripeSettings(), StripeSettings(api_key="sk_test_x"),
                                    StripeSettings(webhook_secret="whsec_x")],
                         ids=["nothing", "key only", "secret only"])
async def test_without_working_top_ups_no_add_credits_button_but_balance_and_cap(
        world: World, make_ledger: Callable[..., Ledger], stripe: StripeSettings) -> None:
    account_id, name = await world.account()
    ledger = make_ledger(monthly_cap=3000)
    await ledger.credit(name, 250, source_id=f"t:{name}")
    web = web_ui(billing_with(ledger, stripe))
    me = SignedIn(Principal(account_id=account_id, account_name=name, actor="web"), "tok")
    page = await credits_html(web, me)
    assert '<dd id="balance">2.50 EUR</dd>' in page and '<dd id="cap">30.00 EUR</dd>' in page
    assert '<dd id="spent">0.00 EUR</dd>' in page and 'id="blocked"' not in page
    assert 'action="/dashboard/credits"' not in page and 'id="add-credits"' not in page
    assert 'id="topups-off"' in page and f"inkmcp credits grant --account {name} --amount N" in page
    assert 'action="/dashboard/cap"' in page and "server's default applies (30.00 EUR)" in page
    assert form_action(web) == "'self'"


async def test_with_top_ups_the_button_and_a_blocked_account_says_why(world: World,
                                                                      make_ledger: Callable[..., Ledger]) -> None:
    account_id, name = await world.account()
    web = web_ui(billing_with(make_ledger(), StripeSettings(api_key="sk_test_x", webhook_secret="whsec_x",
                                                            currency="jpy", min_topup=50, max_topup=90000)))
    me = SignedIn(Principal(account_id=account_id, account_name=name, actor="web"), "tok")
    page = await credits_html(web, me)  # no starter credits: balance 0, blocked
    assert '<dd id="balance">0 JPY</dd>' in page and 'id="blocked"' in page and "no credits left" in page
    assert 'id="add-credits"' in page and "From 50 JPY to 90,000 JPY" in page and 'value="50"' in page
    assert form_action(web) == "'self' https://checkout.stripe.com"
