"""Root conftest: required components, the fast subset, and what the run could not check.

Required components (tests/requirements.py)
-------------------------------------------
Tests that need something from the machine declare it instead of skipping on their own:

    from tests.requirements import require, requires, require_root

    require("runsc", shutil.which("runsc") is not None, "runsc is not on PATH")   # in a test or fixture
    pytestmark = requires("cgroups", cg.available, f"cgroups unavailable: {cg.reason}")  # marker form
    require_root("creates a system user")                                        # shorthand for "root"

Components: root, dockerd, runsc, sshd, netns, cgroups, npm, netplan. `require(component, ok, reason)`
returns when `ok`; otherwise it skips with the reason (and how to get the component), or fails the
test when the component is required:

    INKMCP_REQUIRE_ALL=1          every component is required (`.ci/run` exports it: CI never passes by skipping)
    INKMCP_REQUIRE=runsc,sshd     only these are required
    (neither)                     missing components skip, with the reason listed by `-ra` and summed up
                                  at the end of the run

`make test` as root installs the system packages first and passes the variables through unchanged:
a developer's root container without CAP_NET_ADMIN still gets a readable list of skips, while CI
(`.ci/run`) fails. Do not guard an assertion with `if os.geteuid() == 0:`; require the component.

Fast subset
-----------
`slow` marks the tests that start whole servers or daemons (the e2e and red-team suites, real
dockerd + runsc); `SLOW` below lists them by path, measured with `--durations`. The developer's loop,
under 5 minutes on 2 cores (measured at the end of each session: see the session notes):

    make test PYTEST_ARGS='-m "not slow"'        (or .venv/bin/pytest -q -ra -m "not slow")

The whole suite (`make test`) remains what CI runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.requirements import (
    MISSING,
    REQUIRE_ALL_ENV,
    RequirementSettingError,
    require,
    required_components,
)

# Local providers built in-process (tests/core, tests/contract, benchmarks' helpers) read the stability window from
# the env: the suites' apps fail at once or not at all, so 0.3 s instead of the 3 s default keeps every deploy fast
# (tests/local/test_live_means_live.py sets its own; make_server sets it for served ones).
os.environ.setdefault("INKMCP_STABILITY_WINDOW", "0.3")

ROOT = Path(__file__).resolve().parent.parent

# Test files (or directories, ending in "/") whose tests are `slow`: each starts whole `inkmcp serve`
# processes or a private dockerd (tens of seconds of setup each). Relative to the repository root.
SLOW: tuple[str, ...] = (
    "tests/e2e/",
    "tests/security/",  # the red-team regression suite: real servers with attacker and victim accounts
    "tests/runtime/test_gvisor_node.py",
    "tests/runtime/test_node_egress.py",
    "tests/test_requirements.py::test_gvisor_tests_fail_when_runsc_is_missing_and_required",
    # issue 8's production path: replica processes, Postgres per test, stand-in deployments on a clock
    "tests/replicas/",
    "tests/neon/",
    "tests/placement/test_records.py",
    "tests/placement/test_drain.py",
    "tests/coolify/test_budget.py",
    "tests/coolify/test_reconcile.py",
    "tests/coolify/test_database_provider.py",  # a Coolify database per test, started on the stand-in's clock
    "tests/coolify/test_routes.py",  # a real sshd per test
    "tests/store/test_tenant_server.py",  # a second embedded Postgres
    "tests/hardening/",  # sshd, iptables and network namespaces per test
    "tests/local/test_sandbox.py",  # tenant users, cgroups and a 4 GiB build cap filled per test
)


# Test files (or directories) that measure time against a clock of their own: rate limits over 60-s windows, leases
# taken over when a heartbeat is late, stand-in deployments that must finish within a deadline. `make test` runs
# them in a part of their own (`--part=serial`, one process) after the rest has run on two workers
# (`--part=parallel`), so a neighbour's build cannot push them past their deadlines.
SERIAL: tuple[str, ...] = (
    "tests/replicas/",
    "tests/coolify/test_budget.py",
    "tests/coolify/test_database_provider.py",
    # --- issue 13 (credits): measures the server time of the metering statement (a bound that load would break)
    "tests/billing/test_metering_speed.py",
    # --- end
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--part", choices=("all", "parallel", "serial"), default="all",
        help="all tests (default); those that may share the machine (parallel); or those run alone (serial, "
        "tests/conftest.py SERIAL)",
    )


def pytest_configure(config: pytest.Config) -> None:
    try:
        required_components()
    except RequirementSettingError as e:
        raise pytest.UsageError(str(e)) from None
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_MissingFromWorkers(), "inkmcp-missing-from-workers")


class _MissingFromWorkers:
    """Under pytest-xdist the tests (and so `require`) run in worker processes, while the summary below is printed by
    the controller: each worker hands its MISSING over when it finishes, and the controller merges them. A class
    registered only when xdist is loaded, because `pytest_testnodedown` is xdist's hook (`-p no:xdist` would
    otherwise reject it as unknown)."""

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:  # in a worker
            workeroutput["inkmcp_missing"] = dict(MISSING)

    @pytest.hookimpl
    def pytest_testnodedown(self, node: object, error: object) -> None:
        for component, reason in (getattr(node, "workeroutput", None) or {}).get("inkmcp_missing", {}).items():
            MISSING.setdefault(component, reason)


def pytest_report_header(config: pytest.Config) -> str:
    required = required_components()
    if not required:
        return f"required components: none (missing ones skip; {REQUIRE_ALL_ENV}=1 makes them fail)"
    return f"required components (missing ones fail the run): {', '.join(sorted(required))}"


def _in(paths: tuple[str, ...], nodeid: str) -> bool:
    """`nodeid` is relative to the repository root (the rootdir, where pyproject.toml is)."""
    path = nodeid.split("::")[0]
    return any(nodeid.startswith(p) if p.endswith("/") or "::" in p else path == p for p in paths)


def _is_slow(nodeid: str) -> bool:
    return _in(SLOW, nodeid)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.rootpath != ROOT:  # a pytester run of a scratch project
        return
    for item in items:
        if _is_slow(item.nodeid):
            item.add_marker(pytest.mark.slow)
    part = config.getoption("--part")
    if part == "all":
        return
    keep, drop = [], []
    for item in items:
        (keep if _in(SERIAL, item.nodeid) == (part == "serial") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply `@requires(...)` markers before any fixture runs, as `skipif` would."""
    for mark in item.iter_markers("requires"):
        require(*mark.args)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not MISSING:
        return
    terminalreporter.section("components missing on this machine")
    for component, reason in sorted(MISSING.items()):
        terminalreporter.write_line(f"{component}: {reason}")
    if required_components():
        terminalreporter.write_line("(required here: the tests that need them failed)")
    else:
        terminalreporter.write_line(f"(their tests were skipped; {REQUIRE_ALL_ENV}=1 makes them fail, as CI does)")


@pytest.fixture(scope="session")
def run_server_box():
    """The session's run-server box (tests/runtime/shared_box.py), brought up on first use, down at the end."""
    from tests.runtime import shared_box

    try:
        yield shared_box.box_dir()
    finally:
        shared_box.teardown()
