from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import ServerProc, running_server


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProc]:
    """One real `inkmcp serve` for the e2e suite, with two accounts."""
    with running_server("inkmcp-e2e-", ("alice", "bob")) as srv:
        yield srv
