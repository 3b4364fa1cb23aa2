"""A Stripe stand-in for tests, from Stripe's published API: Checkout Sessions and the events Stripe sends.

* `POST /v1/checkout/sessions` (https://docs.stripe.com/api/checkout/sessions/create): form-encoded, Bearer secret key
  (401 with Stripe's error object otherwise), `mode`, `success_url` and one `line_items[0]` with inline `price_data`
  required (400 `invalid_request_error` naming the `param` otherwise); answers a `checkout.session` object with
  `id` `cs_test_...`, `url`, `amount_total`, `currency`, `client_reference_id`, `payment_status` `unpaid`.
* `GET /v1/checkout/sessions/{id}`.
* `complete(id)`: what happens when the customer pays: the session becomes `complete`/`paid` and the
  `checkout.session.completed` event (https://docs.stripe.com/api/events/object) is returned, for the test to
  deliver signed the way Stripe signs webhooks (`inkmcp.billing.stripe.sign`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


class StripeStandIn:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.sessions: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.base = ""
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {standin.api_key}":
                    return True
                self._send(401, {"error": {"type": "invalid_request_error",
                                           "message": "Invalid API Key provided: ****"}})
                return False

            def do_POST(self) -> None:
                if self.path != "/v1/checkout/sessions":
                    return self._send(404, {"error": {"type": "invalid_request_error", "message": "Unrecognized"}})
                if not self._authorized():
                    return None
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()
                                                      ).items()}
                for param in ("mode", "success_url", "line_items[0][price_data][currency]",
                              "line_items[0][price_data][unit_amount]", "line_items[0][quantity]"):
                    if param not in form:
                        return self._send(400, {"error": {"type": "invalid_request_error", "param": param,
                                                          "message": f"Missing required param: {param}."}})
                sid = "cs_test_" + secrets.token_hex(12)
                amount = int(form["line_items[0][price_data][unit_amount]"]) * int(form["line_items[0][quantity]"])
                session = {"id": sid, "object": "checkout.session", "mode": form["mode"], "amount_total": amount,
                           "currency": form["line_items[0][price_data][currency]"],
                           "client_reference_id": form.get("client_reference_id"), "payment_status": "unpaid",
                           "status": "open", "success_url": form["success_url"],
                           "url": f"{standin.base}/c/pay/{sid}", "created": int(time.time())}
                with standin.lock:
                    standin.sessions[sid] = session
                return self._send(200, session)

            def do_GET(self) -> None:
                if not self._authorized():
                    return None
                sid = self.path.rsplit("/", 1)[-1]
                with standin.lock:
                    session = standin.sessions.get(sid)
                if session is None or not self.path.startswith("/v1/checkout/sessions/"):
                    return self._send(404, {"error": {"type": "invalid_request_error",
                                                      "message": f"No such checkout.session: '{sid}'"}})
                return self._send(200, session)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def complete(self, sid: str) -> dict[str, Any]:
        """The customer paid: the event Stripe sends to the webhook endpoint."""
        with self.lock:
            session = self.sessions[sid]
            session.update(payment_status="paid", status="complete")
            obj = dict(session)
        return {"id": "evt_" + secrets.token_hex(12), "object": "event", "type": "checkout.session.completed",
                "api_version": "2024-06-20", "created": int(time.time()), "livemode": False,
                "data": {"object": obj}}
