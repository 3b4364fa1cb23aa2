"""The Stripe webhook's decisions on the real ledger (the served endpoint and the stand-in: test_e2e.py)."""

from __future__ import annotations

import json
import time

import pytest

from inkmcp.billing.ledger import Ledger
from inkmcp.billing.stripe import SignatureError, Stripe, StripeSettings, sign, verify
from tests.billing.conftest import World

SECRET = "whsec_" + "t" * 32


def event(account: str, amount: int, *, status: str = "paid", kind: str = "checkout.session.completed",
          eid: str = "evt_1") -> bytes:
    return json.dumps({"id": eid, "object": "event", "type": kind, "data": {"object": {
        "id": "cs_test_1", "object": "checkout.session", "client_reference_id": account, "amount_total": amount,
        "payment_status": status}}}).encode()


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
    assert await world.scalar("SELECT count(*) FROM credit_entries") == 1
    assert await world.scalar("SELECT sum(amount) FROM credit_entries") == 700


def test_signature_scheme_follows_stripe() -> None:
    body = b'{"id":"evt_x"}'
    good = sign(body, SECRET, 1_700_000_000)
    verify(body, good, SECRET, tolerance=300, now=1_700_000_100)
    rotated = f"{good},v1={'0' * 64}"  # Stripe may send several v1 signatures (secret rolling): any may match
    verify(body, rotated.replace("v1=", "v1=" + "f" * 64 + ",v1=", 1), SECRET, tolerance=300, now=1_700_000_100)
    for header, now in ((good, 1_700_000_301), (good.replace("v1=", "v0="), 1_700_000_000),
                        ("t=abc,v1=00", 1_700_000_000), (sign(body, "whsec_other", 1_700_000_000), 1_700_000_000)):
        with pytest.raises(SignatureError):
            verify(body, header, SECRET, tolerance=300, now=now)
