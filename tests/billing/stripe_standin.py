"""A Stripe stand-in for tests, from Stripe's published API: Checkout Sessions, the hosted payment page, and the
signed `checkout.session.completed` event Stripe sends to a webhook endpoint when the customer pays.

Its objects are Stripe's published examples (`stripe-fixtures.json`: the `checkout.session` and `event` resources of
https://github.com/stripe/openapi openapi/fixtures3.json, which stripe-mock answers) with this stand-in's values, so
they have every field Stripe's have and no other; the parameters it takes are checked against the official library's
generated `SessionCreateParams` (tests/billing/test_stripe.py).

* `POST /v1/checkout/sessions` (https://docs.stripe.com/api/checkout/sessions/create): form-encoded with Stripe's
  bracket notation (`line_items[0][price_data][unit_amount]`), the secret key as Bearer token (401 with Stripe's
  error object otherwise). Parameters Stripe does not know get 400 `Received unknown parameter: X`, missing or
  malformed required ones 400 `invalid_request_error` naming the `param`, as Stripe answers. `Idempotency-Key`
  (https://docs.stripe.com/api/idempotent_requests): the same key with the same parameters replays the first answer
  (header `Idempotent-Replayed: true`, no second session); with other parameters it is a 400 `idempotency_error`.
  The answer is a `checkout.session` object (https://docs.stripe.com/api/checkout/sessions/object) with `id`
  `cs_test_...`, `url` (this stand-in's payment page), `amount_total`, `currency`, `client_reference_id`,
  `payment_status` `unpaid`, `status` `open`; every answer has a `Request-Id` header.
* `GET /v1/checkout/sessions/{id}` (Bearer key).
* `GET /c/pay/{id}`: the hosted payment page a browser is sent to (no key: it is public, as Stripe's is), with a
  "Pay" button (`POST /c/pay/{id}`) and a cancel link to `cancel_url`. Paying marks the session `complete`/`paid`,
  redirects the browser to `success_url` (`{CHECKOUT_SESSION_ID}` replaced, as Stripe does), and, when the stand-in
  was given a webhook URL and secret, delivers the `checkout.session.completed` event
  (https://docs.stripe.com/api/events/object) signed the way Stripe signs webhooks (`Stripe-Signature: t=...,v1=...`)
  from a thread, so the order of redirect and delivery is not fixed, as with Stripe. `deliveries` records each
  delivery's (event id, HTTP status).
* `complete(id)`: the same payment without a browser; returns the event for the test to deliver itself.
"""

from __future__ import annotations

import copy
import html
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx

from inkmcp.billing.stripe import sign

API_VERSION = "2026-02-25.clover"  # the version the pinned library sends (stripe._api_version)
CREATE_PARAMS = {  # top-level parameters of "Create a Checkout Session" (a subset of Stripe's list; others: 400)
    "mode", "line_items", "success_url", "cancel_url", "client_reference_id", "customer", "customer_email",
    "currency", "expires_at", "locale", "metadata", "payment_method_types", "submit_type", "ui_mode",
    "allow_promotion_codes", "billing_address_collection", "payment_intent_data",
}
LINE_ITEM_PARAMS = {"quantity", "price", "price_data"}
PRICE_DATA_PARAMS = {"currency", "unit_amount", "unit_amount_decimal", "product", "product_data", "tax_behavior"}
PRODUCT_DATA_PARAMS = {"name", "description", "images", "metadata", "tax_code"}


FIXTURES: dict[str, Any] = json.loads((Path(__file__).parent / "stripe-fixtures.json").read_text())
"""Stripe's published example objects (stripe/openapi fixtures3.json): every session and event this stand-in answers
has exactly their fields (tests/billing/test_stripe.py checks it), with this stand-in's values."""


def _fill(example: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of Stripe's example object with `values` put in; a field Stripe's object does not have is a bug here."""
    unknown = set(values) - set(example)
    assert not unknown, f"not fields of Stripe's object: {sorted(unknown)}"
    return {**copy.deepcopy(example), **values}


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (`a[b][0][c]=v`) back into objects; list indexes become dict keys "0", "1", ..."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"^[^\[]+|(?<=\[)[^\]]*(?=\])", key)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(key)
        node[parts[-1]] = value
    return out


class StripeError(Exception):
    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.status = status
        self.error = error


def _invalid(message: str, param: str | None = None, status: int = 400) -> StripeError:
    error: dict[str, Any] = {"type": "invalid_request_error", "message": message}
    if param:
        error["param"] = param
    return StripeError(status, error)


def _int(value: Any, param: str, minimum: int) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise _invalid(f"Invalid integer: {value}", param)
    if int(value) < minimum:
        raise _invalid(f"This value must be greater than or equal to {minimum}.", param)
    return int(value)


def _line_item(i: str, item: Any) -> int:
    """Validates one line item; its amount in minor units."""
    p = f"line_items[{i}]"
    if not isinstance(item, dict):
        raise _invalid("Invalid object", p)
    for k in item:
        if k not in LINE_ITEM_PARAMS:
            raise _invalid(f"Received unknown parameter: {p}[{k}]", f"{p}[{k}]")
    quantity = _int(item.get("quantity", ""), f"{p}[quantity]", 1)
    data = item.get("price_data")
    if not isinstance(data, dict):
        raise _invalid("You must specify either `price` or `price_data`.", f"{p}[price_data]")
    for k in data:
        if k not in PRICE_DATA_PARAMS:
            raise _invalid(f"Received unknown parameter: {p}[price_data][{k}]", f"{p}[price_data][{k}]")
    currency = data.get("currency", "")
    if not re.fullmatch(r"[a-z]{3}", currency):
        raise _invalid(f"Invalid currency: {currency}", f"{p}[price_data][currency]")
    unit = _int(data.get("unit_amount", ""), f"{p}[price_data][unit_amount]", 0)
    product = data.get("product_data")
    if not isinstance(product, dict) or not product.get("name"):
        raise _invalid("Missing required param: product_data[name].", f"{p}[price_data][product_data][name]")
    for k in product:
        if k not in PRODUCT_DATA_PARAMS:
            raise _invalid(f"Received unknown parameter: {p}[price_data][product_data][{k}]")
    return unit * quantity


class StripeStandIn:
    def __init__(self, api_key: str, *, webhook_url: str | None = None, webhook_secret: str | None = None) -> None:
        self.api_key = api_key
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.sessions: dict[str, dict[str, Any]] = {}
        self.idempotent: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (request body, session)
        self.deliveries: list[tuple[str, int]] = []
        self.requests: list[dict[str, str]] = []  # headers of every API request (the tests look for secrets)
        self.delay_s = 0.0  # answer API requests this late (a slow Stripe)
        self.pay_base: str | None = None  # where sessions' `url` points (None: here); a test points it elsewhere
        self.fail_next = 0  # make the session, then answer 500 this many times (a lost answer; Stripe's client retries)
        self.lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict[str, Any], extra: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", "req_" + secrets.token_hex(7))
                self.send_header("Stripe-Version", self.headers.get("Stripe-Version") or API_VERSION)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _page(self, status: int, body: str) -> None:
                data = f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Stripe Checkout (stand-in)" \
                       f"</title></head><body>{body}</body></html>".encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                with standin.lock:
                    standin.requests.append(dict(self.headers.items()))
                if self.headers.get("Authorization") == f"Bearer {standin.api_key}":
                    return True
                sent = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                shown = sent[:8] + "*" * max(0, len(sent) - 12) + sent[-4:]  # Stripe shows the key's last 4
                self._send(401, {"error": {"type": "invalid_request_error",
                                           "message": f"Invalid API Key provided: {shown}"}})
                return False

            def _body(self) -> str:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()

            def do_POST(self) -> None:
                if self.path.startswith("/c/pay/"):
                    return self._pay(self.path.removeprefix("/c/pay/"))
                if self.path != "/v1/checkout/sessions":
                    return self._send(404, {"error": {"type": "invalid_request_error",
                                                      "message": f"Unrecognized request URL (POST: {self.path})."}})
                if not self._authorized():
                    return None
                raw = self._body()
                key = self.headers.get("Idempotency-Key")
                with standin.lock:
                    seen = standin.idempotent.get(key) if key else None
                if seen is not None:
                    if seen[0] != raw:
                        return self._send(400, {"error": {"type": "idempotency_error", "message": (
                            "Keys for idempotent requests can only be used with the same parameters they were "
                            "first used with.")}})
                    return self._send(200, seen[1], {"Idempotent-Replayed": "true"})
                try:
                    session = standin._create(raw)
                except StripeError as e:
                    return self._send(e.status, {"error": e.error})
                with standin.lock:
                    standin.sessions[session["id"]] = session
                    if key:
                        standin.idempotent[key] = (raw, session)
                    fail = standin.fail_next > 0
                    standin.fail_next -= fail
                time.sleep(standin.delay_s)
                if fail:
                    return self._send(500, {"error": {"type": "api_error", "message": "An unknown error occurred"}})
                return self._send(200, session)

            def do_GET(self) -> None:
                if self.path.startswith("/c/pay/"):
                    return self._checkout_page(self.path.removeprefix("/c/pay/"))
                if not self._authorized():
                    return None
                sid = self.path.rsplit("/", 1)[-1]
                with standin.lock:
                    session = standin.sessions.get(sid)
                if session is None or not self.path.startswith("/v1/checkout/sessions/"):
                    return self._send(404, {"error": {"type": "invalid_request_error", "param": "session",
                                                      "message": f"No such checkout.session: '{sid}'"}})
                return self._send(200, session)

            def _checkout_page(self, sid: str) -> None:
                with standin.lock:
                    session = dict(standin.sessions.get(sid) or {})
                if not session:
                    return self._page(404, "<h1>Something went wrong</h1><p>The page you were looking for could "
                                           "not be found.</p>")
                if session["status"] != "open":
                    return self._page(410, "<h1>This Checkout Session is no longer active</h1>")
                major = f"{session['amount_total'] / 100:.2f} {session['currency'].upper()}"
                cancel = html.escape(session.get("cancel_url") or session["success_url"])
                return self._page(200, (
                    f"<h1>Pay InkMCP credits</h1><p id=amount>{major}</p>"
                    f"<form method=post action=/c/pay/{html.escape(sid)}><button id=pay type=submit>Pay</button>"
                    f"</form><p><a id=cancel href=\"{cancel}\">Cancel</a></p>"))

            def _pay(self, sid: str) -> None:
                self._body()
                try:
                    event = standin.complete(sid)
                except KeyError:
                    return self._page(404, "<h1>No such session</h1>")
                standin._deliver_later(event)
                target = event["data"]["object"]["success_url"].replace("{CHECKOUT_SESSION_ID}", sid)
                self.send_response(303)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _create(self, raw: str) -> dict[str, Any]:
        try:
            form = _nest(parse_qsl(raw, keep_blank_values=True, strict_parsing=bool(raw)))
        except ValueError:
            raise _invalid("Invalid request body.") from None
        for k in form:
            if k not in CREATE_PARAMS:
                raise _invalid(f"Received unknown parameter: {k}", k)
        mode = form.get("mode")
        if mode not in ("payment", "setup", "subscription"):
            raise _invalid("Invalid mode: must be one of payment, setup, or subscription", "mode")
        if not form.get("success_url"):
            raise _invalid("Missing required param: success_url.", "success_url")
        items = form.get("line_items")
        if not isinstance(items, dict) or not items:  # this stand-in does payment mode only
            raise _invalid("`line_items` is required in `payment` mode.", "line_items")
        total = sum(_line_item(i, item) for i, item in items.items())
        currencies = {item["price_data"]["currency"] for item in items.values()}
        if len(currencies) != 1:
            raise _invalid("All line items must use the same currency.", "line_items")
        reference = form.get("client_reference_id")
        if reference is not None and not 1 <= len(reference) <= 200:
            raise _invalid("client_reference_id must be at most 200 characters.", "client_reference_id")
        sid = "cs_test_" + secrets.token_hex(16)
        created = int(time.time())
        return _fill(FIXTURES["checkout.session"], {
            "id": sid, "adaptive_pricing": {"enabled": False}, "after_expiration": None, "allow_promotion_codes": None,
            "amount_subtotal": total, "amount_total": total,
            "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
            "billing_address_collection": None, "cancel_url": form.get("cancel_url"), "client_reference_id": reference,
            "client_secret": None, "collected_information": None, "consent": None, "consent_collection": None,
            "created": created, "currency": currencies.pop(), "custom_fields": [], "custom_text": {
                "after_submit": None, "shipping_address": None, "submit": None, "terms_of_service_acceptance": None},
            "customer": None, "customer_creation": "if_required", "customer_details": None, "customer_email": None,
            "discounts": [], "expires_at": created + 86400, "invoice": None,
            "invoice_creation": {"enabled": False, "invoice_data": {
                "account_tax_ids": None, "custom_fields": None, "description": None, "footer": None, "issuer": None,
                "metadata": {}, "rendering_options": None}},
            "livemode": False, "locale": None, "metadata": form.get("metadata") or {}, "mode": mode,
            "payment_intent": None, "payment_link": None, "payment_method_collection": "if_required",
            "payment_method_configuration_details": None, "payment_method_options": {},
            "payment_method_types": ["card"], "payment_status": "unpaid", "phone_number_collection": {"enabled": False},
            "recovered_from": None, "saved_payment_method_options": None, "setup_intent": None,
            "shipping_address_collection": None, "shipping_cost": None, "shipping_options": [], "status": "open",
            "submit_type": None, "subscription": None, "success_url": form["success_url"],
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}, "ui_mode": "hosted",
            "url": f"{self.pay_base or self.base}/c/pay/{sid}",
        })

    def complete(self, sid: str) -> dict[str, Any]:
        """The customer paid: the event Stripe sends to the webhook endpoint."""
        with self.lock:
            session = self.sessions[sid]
            session.update(payment_status="paid", status="complete", payment_intent="pi_" + secrets.token_hex(12),
                           customer_details={"email": "buyer@example.com", "name": None})
            obj = dict(session)
        return _fill(FIXTURES["event"], {
            "id": "evt_" + secrets.token_hex(12), "object": "event", "type": "checkout.session.completed",
            "api_version": API_VERSION, "created": int(time.time()), "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "data": {"object": obj}})

    def deliver(self, event: dict[str, Any]) -> int:
        """POST the event to the webhook endpoint, signed with its secret, as Stripe does; the HTTP status."""
        assert self.webhook_url and self.webhook_secret, "the stand-in was made without a webhook endpoint"
        body = json.dumps(event).encode()
        status = 0
        for attempt in range(3):  # Stripe retries failed deliveries (for days; here briefly)
            try:
                status = httpx.post(self.webhook_url, content=body, timeout=30, headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                    "Stripe-Signature": sign(body, self.webhook_secret, int(time.time()))}).status_code
            except httpx.HTTPError:
                status = 0
            if 200 <= status < 300:
                break
            time.sleep(0.5 * (attempt + 1))
        with self.lock:
            self.deliveries.append((event["id"], status))
        return status

    def _deliver_later(self, event: dict[str, Any]) -> None:
        if not self.webhook_url:
            return
        thread = threading.Thread(target=self.deliver, args=(event,), daemon=True)
        with self.lock:
            self._threads.append(thread)
        thread.start()

    def join(self, timeout: float = 30) -> None:
        """Wait for the webhook deliveries under way (a test's teardown calls it before the server stops)."""
        with self.lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)
