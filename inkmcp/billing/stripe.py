"""Stripe top-ups: a Checkout Session per "Add credits", and `POST /webhooks/stripe` crediting paid sessions.

Follows Stripe's published contract (https://docs.stripe.com/api/checkout/sessions/create,
https://docs.stripe.com/webhooks#verify-manually):

* `create_checkout_session` POSTs form-encoded `mode=payment`, one line item with inline `price_data` (the amount in
  minor units, INKMCP_STRIPE_CURRENCY) and `client_reference_id=<account name>` to `<INKMCP_STRIPE_API_BASE>/v1/
  checkout/sessions` with the secret key as Bearer token; the browser is sent to the answer's `url`.
* The webhook checks `Stripe-Signature: t=<unix time>,v1=<hex>[,v1=...]`: HMAC-SHA256 with the endpoint secret over
  `<t>.<raw body>`, any v1 matching (constant-time compare), `t` within INKMCP_STRIPE_TOLERANCE_S of now. Bad or stale
  signatures get 400 and change nothing. `checkout.session.completed` with `payment_status` `paid` credits
  `amount_total` to the account named by `client_reference_id`, once per event id (`source_id="stripe:<evt id>"`):
  replays and unknown event types get 200 (Stripe stops retrying), as does a session for an unknown account (logged:
  retrying cannot fix it).

Stripe's official Python library would do the same two things; it is not a dependency of InkMCP yet, so both are
done here with httpx and hmac (docs/billing.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inkmcp.billing.ledger import Ledger
from inkmcp.errors import InkError, InvalidArgument, NotFound, ProviderError

log = logging.getLogger("inkmcp.billing.stripe")
MAX_BODY = 256 * 1024


class StripeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INKMCP_STRIPE_", extra="ignore")

    api_key: SecretStr | None = Field(default=None, description="secret key (sk_...); unset = no Stripe top-ups")
    webhook_secret: SecretStr | None = Field(default=None, description="the webhook endpoint's signing secret")
    api_base: str = Field(default="https://api.stripe.com", description="Stripe's API (a stand-in's URL in tests)")
    currency: str = Field(default="eur", min_length=3, max_length=3, description="ISO currency of the credits")
    tolerance_s: int = Field(default=300, ge=1, description="oldest Stripe-Signature timestamp accepted, seconds")
    min_topup: int = Field(default=100, ge=1, description="smallest top-up, minor units")


class SignatureError(Exception):
    pass


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header Stripe sends for `payload` (used by the stand-in and the tests)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(payload: bytes, header: str | None, secret: str, *, tolerance: int, now: float | None = None) -> None:
    """Raise SignatureError unless `header` is a valid, fresh Stripe signature of `payload`."""
    if not header:
        raise SignatureError("no Stripe-Signature header")
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in parts if k.strip() == "t"]
    sigs = [v.strip() for k, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit() or not sigs:
        raise SignatureError("malformed Stripe-Signature header")
    t = int(stamps[0])
    expected = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, s) for s in sigs):
        raise SignatureError("signature does not match")
    if abs((time.time() if now is None else now) - t) > tolerance:
        raise SignatureError("timestamp outside the tolerance")


class Stripe:
    def __init__(self, settings: StripeSettings, ledger: Ledger, *, transport: httpx.AsyncBaseTransport | None = None
                 ) -> None:
        self.settings = settings
        self.ledger = ledger
        self._transport = transport

    @property
    def enabled(self) -> bool:
        return self.settings.api_key is not None

    async def create_checkout_session(self, account: str, amount: int, *, success_url: str, cancel_url: str) -> str:
        """For the dashboard's "Add credits": the Checkout URL to send the browser to."""
        if self.settings.api_key is None:
            raise InvalidArgument("Stripe is not configured on this server.", argument="INKMCP_STRIPE_API_KEY",
                                  fix="set INKMCP_STRIPE_API_KEY and INKMCP_STRIPE_WEBHOOK_SECRET")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < self.settings.min_topup:
            raise InvalidArgument(f"amount {amount!r} is below the smallest top-up.", argument="amount",
                                  fix=f"pass at least {self.settings.min_topup} (minor units)")
        await self.ledger.account_id(account)  # NotFound for a typo
        form = {
            "mode": "payment",
            "client_reference_id": account,
            "line_items[0][quantity]": "1",
            "line_items[0][price_data][currency]": self.settings.currency,
            "line_items[0][price_data][unit_amount]": str(amount),
            "line_items[0][price_data][product_data][name]": "InkMCP credits",
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        headers = {"Authorization": f"Bearer {self.settings.api_key.get_secret_value()}"}
        try:
            async with httpx.AsyncClient(base_url=self.settings.api_base, timeout=20, transport=self._transport) as c:
                r = await c.post("/v1/checkout/sessions", data=form, headers=headers)
        except httpx.HTTPError as e:
            raise ProviderError(f"Stripe is unreachable ({type(e).__name__}).", fix="retry in a minute") from None
        if r.status_code != 200:
            message = r.json().get("error", {}).get("message", r.text[:200]) if r.headers.get(
                "content-type", "").startswith("application/json") else r.text[:200]
            raise ProviderError(f"Stripe refused the Checkout Session ({r.status_code}: {message}).",
                                fix="check INKMCP_STRIPE_API_KEY and INKMCP_STRIPE_CURRENCY")
        return str(r.json()["url"])

    async def handle(self, payload: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for one webhook delivery."""
        secret = self.settings.webhook_secret
        if secret is None:
            return 404, {"error": "Stripe webhooks are not configured"}
        try:
            verify(payload, signature, secret.get_secret_value(), tolerance=self.settings.tolerance_s)
        except SignatureError as e:
            return 400, {"error": f"bad signature: {e}"}
        try:
            event = json.loads(payload)
            event_id, kind = str(event["id"]), str(event["type"])
        except (ValueError, KeyError, TypeError):
            return 400, {"error": "not a Stripe event"}
        if kind != "checkout.session.completed":
            return 200, {"ignored": kind}
        session = (event.get("data") or {}).get("object") or {}
        if session.get("payment_status") != "paid":
            return 200, {"ignored": f"payment_status {session.get('payment_status')!r}"}
        account, amount = session.get("client_reference_id"), session.get("amount_total")
        if not isinstance(account, str) or not isinstance(amount, int) or amount <= 0:
            return 200, {"ignored": "no client_reference_id or amount_total"}
        try:
            result = await self.ledger.credit(account, amount, source_id=f"stripe:{event_id}", kind="topup",
                                              reason=f"Stripe Checkout {session.get('id', '?')}")
        except NotFound:
            log.warning("Stripe event %s pays for unknown account %r; not credited", event_id, account)
            return 200, {"ignored": "unknown account"}
        except InkError as e:
            return 200, {"ignored": e.render()}
        return 200, {"credited": result.applied, "account": result.account}

    def routes(self) -> list[Route]:
        async def webhook(request: Request) -> Response:
            body = await request.body()
            if len(body) > MAX_BODY:
                return JSONResponse({"error": "too large"}, status_code=413)
            status, answer = await self.handle(body, request.headers.get("stripe-signature"))
            return JSONResponse(answer, status_code=status)

        return [Route("/webhooks/stripe", webhook, methods=["POST"])]
