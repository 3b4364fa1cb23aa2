"""One real `inkmcp serve` (with the GitHub stand-in as its GitHub and the Stripe stand-in as its Stripe) for every
test of tests/web/.

Package-scoped: starting the server (embedded Postgres, migrations) is the expensive part, and the browser test
and the HTTP-level attack tests can share it because each signs in as its own stand-in user (unique logins,
hence their own accounts). Stopped by PID in teardown (tests/support.dispose_server).

Billing is on (issue 13: the dashboard's Credits section) with every price 0 and STARTER credits per account, so
balances change only by what a test pays through Stripe: exact figures to assert, and MCP calls are never refused.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest

from inkmcp.github.standin import StandinGitHub
from inkmcp.store.db import Store, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from tests.billing.stripe_standin import StripeStandIn
from tests.github_support import github_env, github_standin  # noqa: F401 (the session fixture, re-exported)
from tests.support import ServerProc, dispose_server, make_server, serving

STRIPE_KEY, STRIPE_SECRET = "sk_test_" + "w" * 24, "whsec_" + "w" * 32
STARTER = 500  # 5.00 EUR


@pytest.fixture(scope="package")
def stripe_standin() -> Iterator[StripeStandIn]:
    """Stripe for web_server: Checkout Sessions, the payment page, signed webhooks to the server (URL set there)."""
    standin = StripeStandIn(STRIPE_KEY, webhook_secret=STRIPE_SECRET)
    with serving(standin.server):
        yield standin
        standin.join()


@pytest.fixture(scope="package")
def web_server(github_standin: StandinGitHub, stripe_standin: StripeStandIn) -> Iterator[ServerProc]:  # noqa: F811
    srv = make_server("inkmcp-web-", INKMCP_PRICES=json.dumps({"persistent": 0}), INKMCP_STARTER_CREDITS=str(STARTER),
                      INKMCP_RATE_LIMIT_BURST="100", INKMCP_STRIPE_API_KEY=STRIPE_KEY,
                      INKMCP_STRIPE_WEBHOOK_SECRET=STRIPE_SECRET, INKMCP_STRIPE_API_BASE=stripe_standin.base)
    srv.env.update(github_env(github_standin, public_url=f"http://127.0.0.1:{srv.port}"))
    stripe_standin.webhook_url = f"http://127.0.0.1:{srv.port}/webhooks/stripe"
    started = False
    try:
        srv.start()
        started = True
        yield srv
    finally:
        if not started:  # a server killed while starting leaves its embedded Postgres servers behind
            if srv.proc is not None:
                srv.stop()
            for name in ("control", "tenants"):  # the servers of this data dir only (pg_ctl stop on their pgdata)
                EmbeddedPostgres(srv.data_dir / "pg" / name).stop()
        dispose_server(srv, clean_stop=started)


@pytest.fixture
async def server_store(web_server: ServerProc) -> AsyncIterator[Store]:
    """The server's own control-plane database (its embedded Postgres, reached over the socket as root)."""
    control = EmbeddedPostgres(web_server.data_dir / "pg" / "control")
    store = await open_store(control.url(database="postgres").get_secret_value())
    try:
        yield store
    finally:
        await store.close()
