"""Stripe through its official library, on the real ledger: the webhook's decisions and signature check, and Checkout
Sessions created against the stand-in (async on our loop, retried safely, the key never logged). The served endpoint
end to end: test_e2e.py; the dashboard's "Add credits": tests/web/."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator

import httpx
import pytest

from inkmcp.billing.ledger import Ledger
from inkmcp.billing.stripe import SignatureError, Stripe, StripeSettings, sign, verify
from inkmcp.errors import InvalidArgument, ProviderError
from tests.billing.conftest import World
from tests.billing.stripe_standin import StripeStandIn
from tests.support import serving

SECRET = "whsec_" + "t" * 32


def event(account: str, amount: int, *, status: str = "paid", kind: str = "checkout.session.completed",
          eid: str = "evt_1", currency: str = "eur", marked: bool = True) -> bytes:
    return json.dumps({"id": eid, "object": "event", "type": kind, "data": {"object": {
        "id": "cs_test_1", "object": "checkout.session", "client_reference_id": account, "amount_total": amount,
        "currency": currency, "payment_status": status,
        "metadata": {"inkmcp_account": account} if marked else {}}}}).encode()


@pytest.mark.asyncio
async def test_webhook_credits_only_paid_sessions_of_known_accounts_once(world: World, make_ledger: object) -> None:
    _, name = await world.account()
    ledger: Ledger = make_ledger()  # type: ignore[operator]
    hook = Stripe(StripeSettings(webhook_secret=SECRET), ledger)
    now = int(time.time())

    def signed(body: bytes) -> str:
        return sign(body, SECRET, now)

    body = event(name, 700)
    assert await hook.handle(body, signed(body)) == (200, {"credited": True, "account": name})
    assert await hook.handle(body, signed(body)) == (200, {"credited": False, "account": name})  # replay
    unpaid = event(name, 700, status="unpaid", eid="evt_2")
    assert (await hook.handle(unpaid, signed(unpaid)))[1] == {"ignored": "payment_status 'unpaid'"}
    stranger = event("nobody-here", 700, eid="evt_3")
    assert (await hook.handle(stranger, signed(stranger)))[1] == {"ignored": "unknown account"}
    other = event(name, 700, kind="charge.refunded", eid="evt_4")
    assert (await hook.handle(other, signed(other)))[1] == {"ignored": "charge.refunded"}
    junk = b"not json"
    assert (await hook.handle(junk, signed(junk)))[0] == 400
    assert (await hook.handle(body, None))[0] == 400
    tampered = event(name, 70000, eid="evt_5")
    assert (await hook.handle(tampered, signed(body)))[0] == 400  # a signature of another body
    yen = event(name, 70000, eid="evt_6", currency="jpy")  # 70,000 JPY is not 700.00 EUR
    assert (await hook.handle(yen, signed(yen)))[1] == {"ignored": "currency 'jpy'"}
    # another product's Checkout of the same Stripe account whose client_reference_id happens to be this account
    stranger_sale = event(name, 70000, eid="evt_7", marked=False)
    assert (await hook.handle(stranger_sale, signed(stranger_sale)))[1] == {"ignored": "not an InkMCP top-up"}
    assert await world.scalar("SELECT count(*) FROM credit_entries") == 1
    assert await world.scalar("SELECT sum(amount) FROM credit_entries") == 700


def test_signature_scheme_follows_stripe() -> None:
    """What stripe.WebhookSignature.verify_header accepts and refuses, through our wrapper."""
    body = b'{"id":"evt_x"}'
    now = int(time.time())
    good = sign(body, SECRET, now)
    verify(body, good, SECRET, tolerance=300)
    # Stripe may send several v1 signatures (secret rolling): any may match
    verify(body, good.replace("v1=", "v1=" + "f" * 64 + ",v1=", 1) + f",v1={'0' * 64}", SECRET, tolerance=300)
    verify(body, sign(body, SECRET, now - 290), SECRET, tolerance=300)  # old, within the tolerance
    verify(body, sign(body, SECRET, now + 3600), SECRET, tolerance=300)  # ahead of our clock: the library accepts
    refused = {
        "stale": sign(body, SECRET, now - 301),
        "v0 only": good.replace("v1=", "v0="),
        "bad timestamp": "t=abc,v1=00",
        "other secret": sign(body, "whsec_other", now),
        "no timestamp": good.split(",", 1)[1],
        "empty": "",
        "garbage": "not a header",
    }
    for what, header in refused.items():
        with pytest.raises(SignatureError):
            verify(body, header, SECRET, tolerance=300)
        assert what
    with pytest.raises(SignatureError, match="UTF-8"):
        verify(b"\xff\xfe", sign(b"\xff\xfe", SECRET, now), SECRET, tolerance=300)
    with pytest.raises(SignatureError):  # a signature of another body
        verify(b'{"id":"evt_y"}', good, SECRET, tolerance=300)


KEY = "sk_test_" + "q" * 24


@pytest.fixture
def standin() -> Iterator[StripeStandIn]:
    s = StripeStandIn(KEY)
    with serving(s.server):
        yield s


@pytest.mark.asyncio
async def test_checkout_through_the_library_is_async_retried_once_and_never_logs_the_key(
        world: World, make_ledger: object, standin: StripeStandIn, caplog: pytest.LogCaptureFixture) -> None:
    _, name = await world.account()
    ledger: Ledger = make_ledger()  # type: ignore[operator]
    client = Stripe(StripeSettings(api_key=KEY, webhook_secret=SECRET, api_base=standin.base), ledger)
    caplog.set_level(logging.DEBUG)  # every logger, the library's ("stripe") and httpx's included, at its most verbose

    # a slow Stripe does not stall the event loop: a ticker keeps running while the call waits, and no step holds the
    # loop 0.3 s (a blocking HTTP client, like the library's default `requests` one, would hold it the whole 0.6 s)
    standin.delay_s = 0.6
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    url = await client.create_checkout_session(name, 1234, success_url="https://ink.example/ok",
                                               cancel_url="https://ink.example/no")
    took = time.monotonic() - started
    task.cancel()
    # the ticker ran through the whole call (its gaps add up to the call's time) and never waited 0.3 s for the loop;
    # counting its ticks instead would measure the box's load (CI run 34: 88 ticks in 1.9 s at load 10, max gap 0.13 s)
    assert took >= 0.6 and sum(gaps) >= took - 0.3 and max(gaps) < 0.3, (took, len(gaps), sum(gaps), max(gaps))
    standin.delay_s = 0.0

    sid = url.rsplit("/", 1)[-1]
    session = standin.sessions[sid]
    assert url == f"{standin.base}/c/pay/{sid}"
    assert (session["client_reference_id"], session["amount_total"], session["currency"]) == (name, 1234, "eur")
    assert session["metadata"] == {"inkmcp_account": name}  # what the webhook credits only with
    assert session["success_url"] == "https://ink.example/ok" and session["cancel_url"] == "https://ink.example/no"
    sent = standin.requests[-1]
    assert sent["User-Agent"].startswith("Stripe/v1 PythonBindings/") and sent["Idempotency-Key"]
    assert sent["Authorization"] == f"Bearer {KEY}"  # the key goes to Stripe, in this header only

    # the answer is lost once (500 after the session was made): the library retries with the same Idempotency-Key
    # and Stripe replays the first answer, so there is one session, not two
    before = len(standin.sessions)
    standin.fail_next = 1
    again = await client.create_checkout_session(name, 500, success_url="https://x/ok", cancel_url="https://x/no")
    assert len(standin.sessions) == before + 1 and again.rsplit("/", 1)[-1] in standin.sessions
    keys = [r["Idempotency-Key"] for r in standin.requests[-2:]]
    assert keys[0] == keys[1], keys

    assert caplog.records and "Request to Stripe api" in caplog.text  # the library did log, at DEBUG even
    assert KEY not in caplog.text and KEY[8:] not in caplog.text

    # refusals: a wrong key, Stripe refusing a parameter, Stripe down, amounts outside the range, unknown account
    wrong = Stripe(StripeSettings(api_key="sk_test_wrong", api_base=standin.base), ledger)
    with pytest.raises(ProviderError, match="Stripe did not accept this server's Stripe API key") as refused:
        await wrong.create_checkout_session(name, 500, success_url="https://x", cancel_url="https://x")
    # Stripe's 401 message shows the key's last characters: the dashboard user never sees it, the operator's log does
    assert "rong" not in refused.value.render() and "Invalid API Key" in caplog.text
    odd = Stripe(StripeSettings(api_key=KEY, api_base=standin.base, currency="EU1"), ledger)
    with pytest.raises(ProviderError, match=r"\(400: Invalid currency: eu1\)"):
        await odd.create_checkout_session(name, 500, success_url="https://x", cancel_url="https://x")
    down = Stripe(StripeSettings(api_key=KEY, api_base="http://127.0.0.1:9", retries=0), ledger)
    with pytest.raises(ProviderError, match="Stripe is unreachable"):
        await down.create_checkout_session(name, 500, success_url="https://x", cancel_url="https://x")
    standin.pay_base = "https://checkout.stripe.com.evil.example"  # a session URL we would not send a browser to
    with pytest.raises(ProviderError, match="unexpected host"):
        await client.create_checkout_session(name, 500, success_url="https://x", cancel_url="https://x")
    standin.pay_base = None
    before += 1  # that session exists at Stripe (unpaid; it expires), the browser just never goes there
    for amount in (99, 100_001, 0, -5, True, 12.5):
        with pytest.raises(InvalidArgument, match="outside the top-up range"):
            await client.create_checkout_session(name, amount, success_url="https://x",  # type: ignore[arg-type]
                                                 cancel_url="https://x")
    with pytest.raises(Exception, match="no account"):
        await client.create_checkout_session("nobody-here", 500, success_url="https://x", cancel_url="https://x")
    assert len(standin.sessions) == before + 1  # none of the refusals made a session


@pytest.mark.asyncio
async def test_the_library_client_is_built_once_and_reused(
        world: World, make_ledger: object, standin: StripeStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    """It was built (the CA bundle loaded: ~12 ms of CPU) for every "Add credits" and closed after it. Now one per
    Stripe object (the app's, settings-bound): concurrent first clicks build one, later ones reuse it, aclose closes
    its connections (the runtime calls it at shutdown)."""
    _, name = await world.account()
    ledger: Ledger = make_ledger()  # type: ignore[operator]
    client = Stripe(StripeSettings(api_key=KEY, webhook_secret=SECRET, api_base=standin.base), ledger)
    built: list[tuple[object, object]] = []
    real = Stripe._client

    def counting(self: Stripe, api_key: str) -> tuple[object, object]:
        built.append(real(self, api_key))
        return built[-1]

    monkeypatch.setattr(Stripe, "_client", counting)
    urls = await asyncio.gather(*(client.create_checkout_session(name, 500 + i, success_url="https://x/ok",
                                                                 cancel_url="https://x/no") for i in range(3)))
    urls.append(await client.create_checkout_session(name, 600, success_url="https://x/ok", cancel_url="https://x/no"))
    assert len(built) == 1 and len(set(urls)) == 4 and len(standin.sessions) == 4
    http = built[0][0]
    assert not http._client_async.is_closed  # type: ignore[attr-defined]
    await client.aclose()
    assert http._client_async.is_closed  # type: ignore[attr-defined]
    await client.create_checkout_session(name, 700, success_url="https://x/ok", cancel_url="https://x/no")
    assert len(built) == 2  # after a close, the next click builds a new one
    await client.aclose()


def test_checkout_origins_are_stripes_or_the_stand_ins() -> None:
    assert StripeSettings().checkout_origins == {"https://checkout.stripe.com"}
    assert StripeSettings(api_base="http://127.0.0.1:4242/").checkout_origins == {
        "https://checkout.stripe.com", "http://127.0.0.1:4242"}
    with pytest.raises(ValueError, match="must be at least INKMCP_STRIPE_MIN_TOPUP"):
        StripeSettings(min_topup=500, max_topup=100)


def test_bad_stripe_settings_stop_the_start_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from inkmcp.billing.service import load_stripe_settings
    from inkmcp.errors import InkError

    monkeypatch.setenv("INKMCP_STRIPE_MIN_TOPUP", "500")
    monkeypatch.setenv("INKMCP_STRIPE_MAX_TOPUP", "100")
    with pytest.raises(InkError, match=r"invalid configuration INKMCP_STRIPE_MAX_TOPUP: .*at least"):
        load_stripe_settings()
    monkeypatch.setenv("INKMCP_STRIPE_MAX_TOPUP", "1000")
    monkeypatch.setenv("INKMCP_STRIPE_CURRENCY", "EUR")
    assert load_stripe_settings().currency == "eur"


def test_the_stand_in_answers_stripes_published_objects_and_takes_the_librarys_parameters(
        standin: StripeStandIn) -> None:
    """Fields of the stand-in's session and event = those of Stripe's published examples (stripe/openapi fixtures),
    with the same JSON types where both are set; the parameters it accepts are ones the official library's generated
    SessionCreateParams (from Stripe's OpenAPI spec) declares."""
    from stripe.params.checkout import _session_create_params as p

    from tests.billing.stripe_standin import (
        CREATE_PARAMS,
        FIXTURES,
        LINE_ITEM_PARAMS,
        PRICE_DATA_PARAMS,
        PRODUCT_DATA_PARAMS,
    )

    def kind(v: object) -> str:
        return "number" if isinstance(v, int) and not isinstance(v, bool) else type(v).__name__

    r = httpx.post(f"{standin.base}/v1/checkout/sessions", headers={"Authorization": f"Bearer {KEY}"},
                                 data={"mode": "payment", "success_url": "https://x/ok", "line_items[0][quantity]": "2",
                                       "line_items[0][price_data][currency]": "eur",
                                       "line_items[0][price_data][unit_amount]": "150",
                                       "line_items[0][price_data][product_data][name]": "InkMCP credits"})
    assert r.status_code == 200 and r.headers["Request-Id"].startswith("req_")
    session = r.json()
    event = standin.complete(session["id"])
    for ours, theirs in ((session, FIXTURES["checkout.session"]), (event, FIXTURES["event"])):
        assert set(ours) == set(theirs), set(ours) ^ set(theirs)
        mismatched = {k: (kind(ours[k]), kind(theirs[k])) for k in ours
                      if ours[k] is not None and theirs[k] is not None and kind(ours[k]) != kind(theirs[k])}
        assert not mismatched, mismatched
    assert session["amount_total"] == 300 and event["data"]["object"]["payment_status"] == "paid"

    request_options = set(p.RequestOptions.__annotations__)
    assert CREATE_PARAMS <= set(p.SessionCreateParams.__annotations__) - request_options
    assert LINE_ITEM_PARAMS <= set(p.SessionCreateParamsLineItem.__annotations__)
    assert PRICE_DATA_PARAMS <= set(p.SessionCreateParamsLineItemPriceData.__annotations__)
    assert PRODUCT_DATA_PARAMS <= set(p.SessionCreateParamsLineItemPriceDataProductData.__annotations__)
    # what Stripe requires, the stand-in requires: price_data's currency, product_data's name
    assert p.SessionCreateParamsLineItemPriceData.__required_keys__ == {"currency"}
    assert p.SessionCreateParamsLineItemPriceDataProductData.__required_keys__ == {"name"}
    for missing in ("line_items[0][price_data][currency]", "line_items[0][price_data][product_data][name]"):
        form = {"mode": "payment", "success_url": "https://x", "line_items[0][quantity]": "1",
                "line_items[0][price_data][currency]": "eur", "line_items[0][price_data][unit_amount]": "1",
                "line_items[0][price_data][product_data][name]": "n"}
        del form[missing]
        refused = httpx.post(f"{standin.base}/v1/checkout/sessions", data=form,
                                           headers={"Authorization": f"Bearer {KEY}"})
        assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error", missing
