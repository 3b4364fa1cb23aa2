"""One real `inkmcp serve` (with the GitHub stand-in as its GitHub) for every test of tests/web/.

Package-scoped: starting the server (embedded Postgres, migrations) is the expensive part, and the browser test
and the HTTP-level attack tests can share it because each signs in as its own stand-in user (unique logins,
hence their own accounts). Stopped by PID in teardown (tests/support.dispose_server).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inkmcp.github.standin import StandinGitHub
from inkmcp.store.embedded import EmbeddedPostgres
from tests.github_support import github_env, github_standin  # noqa: F401 (the session fixture, re-exported)
from tests.support import ServerProc, dispose_server, make_server


@pytest.fixture(scope="package")
def web_server(github_standin: StandinGitHub) -> Iterator[ServerProc]:  # noqa: F811
    srv = make_server("inkmcp-web-")
    srv.env.update(github_env(github_standin, public_url=f"http://127.0.0.1:{srv.port}"))
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
