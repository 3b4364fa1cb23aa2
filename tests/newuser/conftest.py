"""Fixtures the newuser3 modules share: the session's local server with the module's own account, and a repos dir.

Each module names its account in a module-level `ACCOUNT` (an account of its own on the shared server, so its
projects and limits never meet another module's).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProc, traversable_tmpdir


@pytest.fixture(scope="module")
def server(local_server: ServerProc, request: pytest.FixtureRequest) -> ServerProc:
    account = request.module.ACCOUNT
    if account not in local_server.keys:
        local_server.create_key(account)
    return local_server


@pytest.fixture(scope="module")
def repos(request: pytest.FixtureRequest) -> Iterator[Path]:
    d = traversable_tmpdir(f"inkmcp-{request.module.__name__.rsplit('.', 1)[-1].removeprefix('test_')}-")
    yield d
    shutil.rmtree(d, ignore_errors=True)
