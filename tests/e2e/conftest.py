from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.support import ServerProc, make_server, remove_tenant_users


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProc]:
    """One real `inkmcp serve` for the e2e suite, with two accounts."""
    srv = make_server()
    srv.create_key("alice")
    srv.create_key("bob")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None:
            code = srv.stop()
            assert code == 0, f"graceful shutdown failed ({code}):\n{srv.log()}"
        remove_tenant_users(srv.data_dir)
        shutil.rmtree(srv.data_dir.parent, ignore_errors=True)
