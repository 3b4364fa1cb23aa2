"""Session fixtures' teardowns run together at the session's end (suitecut).

The session's shared servers and box (tests/conftest.py `local_server`, `run_server_box`; tests/e2e/conftest.py
`coolify_server_`) are stopped when no test runs any more: each in a thread of its own, together, instead of one after
another (CI run 55: the last test of each worker carried 29-41 s of them). tests/conftest.py `_session_end_joined`, set
up before any of them and so torn down after all, waits for every one and raises the first error: a failed graceful
shutdown still fails the run, as a teardown error of the worker's last test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_PENDING: list[tuple[threading.Thread, list[BaseException]]] = []


def at_session_end(teardown: Callable[[], object]) -> None:
    """Run `teardown` now in a thread of its own; `join_all` waits for it. Only for a session fixture's teardown:
    no test runs after it, so none can meet the half-stopped thing."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            teardown()
        except BaseException as e:  # raised again by join_all
            errors.append(e)

    thread = threading.Thread(target=run, name=f"session-end-{len(_PENDING)}")
    thread.start()
    _PENDING.append((thread, errors))


def join_all() -> None:
    """Wait for every teardown handed to `at_session_end`; raise the first error any of them raised."""
    errors: list[BaseException] = []
    while _PENDING:
        thread, raised = _PENDING.pop(0)
        thread.join()
        errors += raised
    if errors:
        raise errors[0]
