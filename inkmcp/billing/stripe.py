"""Stripe top-ups: a Checkout Session per "Add credits", and `POST /webhooks/stripe` crediting paid sessions.

Both go through Stripe's official Python library (`stripe`, pinned in requirements.lock), as its published contract
describes (https://docs.stripe.com/api/checkout/sessions/create, https://docs.stripe.com/webhooks#verify-events):

* `create_checkout_session`: `StripeClient(api_key, base_addresses={"api": INKMCP_STRIPE_API_BASE},
  http_client=HTTPXClient(...)).v1.checkout.sessions.create_async(...)` with `mode=payment`, one line item with
  inline `price_data` (the amount in minor units, INKMCP_STRIPE_CURRENCY) and `client_reference_id=<account name>`;
  the browser is sent to the answer's `url`. Why `create_async` over HTTPXClient: the library's default client is
  `requests` (blocking); its httpx client with the `*_async` methods runs on our event loop, so a slow Stripe never
  stalls the server's other requests. The library adds an `Idempotency-Key` to every POST, so its network retry
  (INKMCP_STRIPE_RETRIES) never makes a second session. It sends the key only in the Authorization header and logs
  (logger "stripe", and stderr only with STRIPE_LOG set) method, URL, status and at debug level bodies, never the key.
* The webhook: `stripe.WebhookSignature.verify_header` checks `Stripe-Signature: t=<unix time>,v1=<hex>[,v1=...]`:
  HMAC-SHA256 with the endpoint secret over `<t>.<raw body>`, any v1 matching (constant-time compare), refused when
  `t` is older than INKMCP_STRIPE_TOLERANCE_S (a timestamp ahead of our clock is accepted, as the library does: only
  the secret's holder can sign one, and the ledger credits an event id once anyway). Bad or stale signatures get 400
  and change nothing. `checkout.session.completed` with `payment_status` `paid` credits `amount_total` to the account
  named by `client_reference_id`, once per event id (`source_id="stripe:<evt id>"`), when the session is one InkMCP
  made (its `metadata.inkmcp_account` is that account: the endpoint gets every Checkout of the Stripe account, and
  another product's `client_reference_id` may happen to equal an account name) and its `currency` is
  INKMCP_STRIPE_CURRENCY (`amount_total` counts the session's own minor units; another currency is logged, not
  credited): replays and unknown event types
  get 200 (Stripe stops retrying), as does a session for an unknown account (logged: retrying cannot fix it). The
  check is a few microseconds of CPU (one HMAC over at most MAX_BODY bytes), so it runs on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import platform
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inkmcp.billing.ledger import Ledger
from inkmcp.errors import InkError, InvalidArgument, NotFound, ProviderError

if TYPE_CHECKING:
    import stripe

log = logging.getLogger("inkmcp.billing.stripe")
MAX_BODY = 256 * 1024
METADATA_ACCOUNT = "inkmcp_account"
"""The Checkout Session metadata key InkMCP sets to the account it credits (and the webhook requires)."""
STRIPE_API = "https://api.stripe.com"
STRIPE_CHECKOUT = "https://checkout.stripe.com"
"""Where Stripe's hosted Checkout pages are: the only origin (besides a non-default API base's own, for a stand-in)
the dashboard redirects a browser to, and the one its CSP `form-action` allows."""


class StripeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INKMCP_STRIPE_", extra="ignore")

    api_key: SecretStr | None = Field(default=None, description="secret key (sk_...); unset = no Stripe top-ups")
    webhook_secret: SecretStr | None = Field(default=None, description="the webhook endpoint's signing secret")
    api_base: str = Field(default=STRIPE_API, description="Stripe's API (a stand-in's URL in tests)")
    currency: str = Field(default="eur", min_length=3, max_length=3, description="ISO currency of the credits")
    tolerance_s: int = Field(default=300, ge=1, description="oldest Stripe-Signature timestamp accepted, seconds")
    min_topup: int = Field(default=100, ge=1, description="smallest top-up, minor units")
    max_topup: int = Field(default=100_000, ge=1, le=99_999_999,
                           description="largest top-up, minor units (Stripe's own limit is 99,999,999)")
    timeout_s: float = Field(default=20.0, gt=0, le=120, description="timeout of one request to Stripe's API, s")
    retries: int = Field(default=1, ge=0, le=5, description="network retries of a request to Stripe's API "
                                                             "(safe: each carries an Idempotency-Key)")

    @field_validator("currency")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @field_validator("max_topup")
    @classmethod
    def _bounds(cls, value: int, info: ValidationInfo) -> int:
        """A field error (not a model one), so the start-up message names INKMCP_STRIPE_MAX_TOPUP."""
        low = info.data.get("min_topup")
        if low is not None and value < low:
            raise ValueError(f"must be at least INKMCP_STRIPE_MIN_TOPUP ({low})")
        return value

    @property
    def checkout_origins(self) -> set[str]:
        """Origins a Checkout Session's `url` may have: Stripe's, or the API base's own when it is not Stripe's
        (a stand-in serves its payment page itself)."""
        origins = {STRIPE_CHECKOUT}
        base = urlsplit(self.api_base)
        if self.api_base.rstrip("/") != STRIPE_API and base.scheme in ("http", "https") and base.netloc:
            origins.add(f"{base.scheme}://{base.netloc}".lower())
        return origins


class SignatureError(Exception):
    pass


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header Stripe sends for `payload` (used by the stand-in and the tests; the library
    verifies but does not make signatures)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(payload: bytes, header: str | None, secret: str, *, tolerance: int) -> None:
    """Raise SignatureError unless `header` is a valid Stripe signature of `payload`, not older than `tolerance`
    seconds (Stripe's library does the check)."""
    if not header:
        raise SignatureError("no Stripe-Signature header")
    try:
        text = payload.decode("utf-8")  # what the library signs over; Stripe's bodies are UTF-8 JSON
    except UnicodeDecodeError:
        raise SignatureError("the body is not UTF-8") from None
    import stripe  # loaded at start by Stripe() when configured (see there); cached afterwards

    try:
        stripe.WebhookSignature.verify_header(text, header, secret, tolerance)
    except stripe.SignatureVerificationError as e:  # its message names the problem, never the secret
        raise SignatureError(str(e.user_message or "signature does not verify")) from None


class Stripe:
    def __init__(self, settings: StripeSettings, ledger: Ledger) -> None:
        self.settings = settings
        self.ledger = ledger
        # the library's client, built at the first "Add credits" and reused (see _stripe_client)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._built: tuple[stripe.HTTPXClient, stripe.StripeClient] | None = None
        if settings.api_key is not None or settings.webhook_secret is not None:
            # the library takes ~40 ms to import: at start, when Stripe is configured, rather than on the event loop
            # at the first webhook; never, when it is not (every `inkmcp serve` builds this object)
            import stripe  # noqa: F401

    @property
    def enabled(self) -> bool:
        """Top-ups work end to end: a key to create sessions and a webhook secret to be told they were paid."""
        return self.settings.api_key is not None and self.settings.webhook_secret is not None

    async def create_checkout_session(self, account: str, amount: int, *, success_url: str, cancel_url: str) -> str:
        """For the dashboard's "Add credits": the Checkout URL to send the browser to."""
        s = self.settings
        if s.api_key is None:
            raise InvalidArgument("Stripe is not configured on this server.", argument="INKMCP_STRIPE_API_KEY",
                                  fix="set INKMCP_STRIPE_API_KEY and INKMCP_STRIPE_WEBHOOK_SECRET")
        if isinstance(amount, bool) or not isinstance(amount, int) or not s.min_topup <= amount <= s.max_topup:
            raise InvalidArgument(f"amount {amount!r} is outside the top-up range.", argument="amount",
                                  fix=f"pass {s.min_topup}..{s.max_topup} (minor units)")
        await self.ledger.account_id(account)  # NotFound for a typo
        params: dict[str, Any] = {
            "mode": "payment",
            "client_reference_id": account,
            "metadata": {METADATA_ACCOUNT: account},  # marks the session as an InkMCP top-up (the webhook checks it)
            "line_items": [{"quantity": 1, "price_data": {
                "currency": s.currency, "unit_amount": amount, "product_data": {"name": "InkMCP credits"}}}],
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        import stripe

        client = await self._stripe_client(s.api_key)
        try:
            session = await client.v1.checkout.sessions.create_async(params)  # type: ignore[arg-type]
        except stripe.APIConnectionError:
            raise ProviderError("Stripe is unreachable.", fix="retry in a minute") from None
        except stripe.AuthenticationError as e:  # Stripe's message shows the key's last characters: log, not show
            log.error("Stripe did not accept INKMCP_STRIPE_API_KEY (%s: %s)", e.http_status, e.user_message)
            raise ProviderError("Stripe did not accept this server's Stripe API key.",
                                fix="ask the operator to check INKMCP_STRIPE_API_KEY (the server log says more)"
                                ) from None
        except stripe.StripeError as e:
            raise ProviderError(f"Stripe refused the Checkout Session ({e.http_status}: {e.user_message}).",
                                fix="check INKMCP_STRIPE_API_KEY and INKMCP_STRIPE_CURRENCY") from None
        url = str(session.get("url") or "")
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}".lower() not in s.checkout_origins:
            log.error("Stripe answered Checkout Session %s with a URL outside %s", session.get("id"),
                      sorted(s.checkout_origins))
            raise ProviderError("Stripe answered a payment page on an unexpected host.",
                                fix="check INKMCP_STRIPE_API_BASE")
        return url

    async def _stripe_client(self, api_key: SecretStr) -> stripe.StripeClient:
        """The library's client for these settings, built once (it was built, and its CA bundle loaded, per "Add
        credits": ~12 ms of CPU each) and reused, with its kept-alive connection to Stripe. Bound to the event loop
        it was first used on (httpx's connection pool is): a use from another loop (tests run one loop a test) builds
        a new one. The lock keeps concurrent first clicks from building two."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._lock, self._built = loop, asyncio.Lock(), None
        async with self._lock:
            if self._built is None:
                self._built = await asyncio.to_thread(self._client, api_key.get_secret_value())
        return self._built[1]

    async def aclose(self) -> None:
        """Close the kept connections (when the runtime closes; a later "Add credits" would build a new client)."""
        built, self._built = self._built, None
        if built is not None and self._loop is asyncio.get_running_loop():
            await built[0].close_async()

    def _client(self, api_key: str) -> tuple[stripe.HTTPXClient, stripe.StripeClient]:
        """Built in a worker thread, because both steps block: the httpx client loads Stripe's CA bundle (~12 ms),
        and the first one imports the library's lazily loaded modules (~0.6 s; measured on the event loop as a
        0.54 s stall before this moved here). The request itself then runs on the loop (`create_async`)."""
        import stripe

        http = stripe.HTTPXClient(timeout=self.settings.timeout_s)  # async only: a sync call would raise, not block
        client = stripe.StripeClient(api_key, base_addresses={"api": self.settings.api_base}, http_client=http,
                                     max_network_retries=self.settings.retries)
        _ = client.v1.checkout.sessions  # loads the service modules now, in this thread
        platform.platform(), platform.uname()  # the library's client header has both; the first platform() reads
        # the Python binary to find the libc version (cached afterwards)
        from stripe.checkout import Session  # noqa: F401 (the class the answer is parsed into, loaded now too)

        return http, client

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
        metadata = session.get("metadata")
        if not isinstance(metadata, dict) or metadata.get(METADATA_ACCOUNT) != account:
            # another Checkout of the same Stripe account (logged: a session made before the marker existed is
            # found here, to credit by hand)
            log.info("Stripe event %s (session %s) is not an InkMCP top-up; not credited", event_id,
                     session.get("id", "?"))
            return 200, {"ignored": "not an InkMCP top-up"}
        if not isinstance(account, str) or not isinstance(amount, int) or amount <= 0:
            return 200, {"ignored": "no client_reference_id or amount_total"}
        currency = str(session.get("currency") or "").lower()
        if currency != self.settings.currency:  # 500 JPY is not 5.00 EUR: amount_total is in the session's currency
            log.warning("Stripe event %s pays %d in %r, not %s; not credited (refund it or credit it by hand)",
                        event_id, amount, currency, self.settings.currency)
            return 200, {"ignored": f"currency {currency!r}"}
        try:
            result = await self.ledger.credit(account, amount, source_id=f"stripe:{event_id}", kind="topup",
                                              reason=f"Stripe Checkout {session.get('id', '?')}")
        except NotFound:
            log.warning("Stripe event %s pays for unknown account %r; not credited", event_id, account)
            return 200, {"ignored": "unknown account"}
        except InkError as e:
            return 200, {"ignored": e.render()}
        if result.applied:
            log.info("Stripe event %s: credited %d to %s", event_id, amount, result.account)
        return 200, {"credited": result.applied, "account": result.account}

    def routes(self) -> list[Route]:
        async def webhook(request: Request) -> Response:
            body = bytearray()
            async for chunk in request.stream():  # stop reading at the bound, not after a huge body is in memory
                body += chunk
                if len(body) > MAX_BODY:
                    return JSONResponse({"error": "too large"}, status_code=413)
            status, answer = await self.handle(bytes(body), request.headers.get("stripe-signature"))
            return JSONResponse(answer, status_code=status)

        return [Route("/webhooks/stripe", webhook, methods=["POST"])]
