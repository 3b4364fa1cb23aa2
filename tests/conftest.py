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
import time
from collections.abc import Iterator
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
    # --- suitefast: single tests of 5 s or more on a quiet box (12-56 s in `-m "not slow"` runs at load 6-10) whose
    # package's core stays in the fast subset through its other tests: CLI subprocess runs, pytester runs, real
    # bcrypt at the production cost, several processes at once, edge cases of a path tested beside them
    "tests/coolify/test_doctor.py::test_cli_exit_codes_and_table",  # the in-process doctor tests stay
    "tests/test_doctor_local.py::test_a_sandbox_that_cannot_make_its_mount_namespace_fails",
    "tests/test_doctor_local.py::test_a_data_dir_tenants_cannot_reach_fails_first",
    "tests/test_requirements.py::test_a_bad_switch_value_is_refused_with_what_to_pass",
    "tests/test_requirements.py::test_require_names_only_some_components",  # require_all's test stays
    "tests/backup/test_verify.py::test_audit_cli_refuses_an_unknown_account_and_a_bad_since",
    "tests/local/test_disk_quota_mounts.py::test_concurrent_admissions_from_several_processes_never_promise_more_",
    "tests/core/test_database_backups.py::test_damaged_dumps_are_refused_and_the_database_is_untouched",
    "tests/core/test_database_backups.py::test_concurrent_restores_run_one_after_the_other_and_sessions_are_cut",
    "tests/buildpath/test_render.py::test_htpasswd_lines_verify_and_a_keyed_salt_is_stable_per_user",  # factory wiring
    # --- end
    # --- flakehunt: over 5 s alone at load 2-3 (7.5-9 s; the fast subset took 4 min 59 s, its limit is 5 min)
    "tests/local/test_live_means_live.py::test_an_app_bound_to_another_port_fails_after_the_grace_not_the_health_",
    "tests/test_doctor_local.py::test_a_fit_machine_passes_and_the_embedded_server_is_stopped_again",
    "tests/local/test_account_output_budget.py::test_one_accounts_floods_are_paced_together_and_another_accounts_",
    "tests/local/test_redeploy_retire.py::test_live_does_not_wait_for_the_old_versions_stop_and_the_stop_still_",
    # --- end
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
    # --- egress: switches the machine-wide tenant egress table (allow-list, off); another worker's provider start
    # would put the default back in the middle
    "tests/local/test_tenant_egress.py",
    # --- end
)


# --- suitetime: the order in which pytest-xdist hands out whole files (scripts/pytest-parts.sh: `--dist loadfile
# --no-loadscope-reorder`). xdist's own order (files with the most tests first) put the files of one or two tests
# last, and those are this suite's heaviest (a server of their own, minutes each), so one worker ran alone at the end;
# and it scattered the files of a package whose server is package-scoped (tests/security, tests/web) among other
# packages' files, so each worker stopped and started that server again at every switch (CI run 48: ~10 starts of
# ~20-30 s plus their teardowns, the `setup` lines of tests/security/* in its slowest 40).
# Now the heaviest go first (longest first: the tail is the cheap files), and a shared package's files are handed
# out together (one server start per worker). Seconds per file, measured: CI runs 47/48's slowest 40 (setup + call +
# teardown) and a `-m "not slow"` run (suitetime, 2026-12-02); a file not listed counts per test
# (_DEFAULT_TEST_SECONDS). Refresh from a CI log's "slowest files" section (`--file-durations`, printed by
# scripts/pytest-parts.sh) when the suite changes much: a wrong figure costs only balance at the end, never a test.
SHARED_SERVER_PACKAGES: tuple[str, ...] = ("tests/security/", "tests/web/")
"""Packages whose tests share a package-scoped server: their files are handed out one after another."""

FILE_SECONDS: dict[str, float] = {
    # CI seconds (2 workers on 2 cores, setup + call + teardown): CI run 55's slowest 40 files (quiet box, 7c62ce7;
    # suitecut refreshed these, 2026-12-02): a file not among them took under 26 s there, so 25 for those listed
    # before; the rest from older runs (CI run 48, `-m "not slow"` runs at load ~6, halved)
    "tests/runtime/test_coolify_replay_box.py": 190,  # suitecut: three boxes at once (325 s -> 232 s alone at load 6-9)
    "tests/e2e/test_deploy.py": 175,
    "tests/e2e/test_lifecycle.py": 114,
    "tests/security/test_tenant_disk.py": 92,
    "tests/runtime/test_node_sandbox.py": 65,
    "tests/billing/test_e2e.py": 65,
    "tests/runtime/test_box_pin.py": 63,
    "tests/e2e/test_new_user_dec2c.py": 58,
    "tests/billing/test_e2e_coolify.py": 56,
    "tests/runtime/test_node_attacks.py": 56,
    "tests/backup/test_drill.py": 56,
    "tests/test_make_install.py": 53,
    "tests/security/test_disk_quota.py": 52,
    "tests/github/test_e2e.py": 51,
    "tests/local/test_live_means_live.py": 50,
    "tests/security/test_attacks_dec1.py": 48,
    "tests/buildpath/test_build_docker.py": 42,
    "tests/runtime/test_box_standins.py": 42,
    "tests/buildpath/test_build_sandboxed.py": 41,
    "tests/contract/test_core_contract.py": 39,
    "tests/security/test_git_limits.py": 37,
    "tests/neon/test_provider.py": 36,
    "tests/security/test_attacks_dec2.py": 36,
    "tests/e2e/test_nonroot.py": 32,
    "tests/core/test_refused_deploy_leaves_nothing.py": 31,
    "tests/security/test_dr_restore_as_owner.py": 30,
    "tests/local/test_tenant_crash_recovery.py": 30,
    "tests/e2e/test_coolify.py": 30,
    "tests/placement/test_drain.py": 29,
    "tests/e2e/test_keys_create_url.py": 29,
    "tests/test_doctor_local.py": 29,
    "tests/e2e/test_first_start.py": 29,
    "tests/contract/test_compute_contract.py": 28,
    "tests/github/test_deploy_keys_e2e.py": 28,
    "tests/hardening/test_ssh_apply.py": 27,
    "tests/runtime/test_gvisor_node.py": 27,
    "tests/coolify/test_provider.py": 26,
    "tests/e2e/test_contract.py": 25,
    "tests/security/test_redteam2_port_squat.py": 25,
    "tests/security/test_tenant_postgres_limits.py": 25,
    "tests/dbbackup/test_database_backup_tools.py": 25,
    "tests/security/test_redteam2_service_port_squat.py": 25,
    "tests/hardening/test_pin_platform.py": 25,
    "tests/hardening/test_selector_rules.py": 25,
    "tests/e2e/test_checkout_space.py": 25,
    "tests/stacks/test_factory_stack.py": 25,
    "tests/backup/test_verify.py": 25,
    "tests/test_requirements.py": 24,
    "tests/placement/test_migration.py": 23,
    "tests/store/test_embedded.py": 19,
    "tests/local/test_account_output_settings.py": 18,
    "tests/web/test_web_settings.py": 17,
    "tests/hardening/test_render.py": 10,
    "tests/local/test_prepared_start_lifecycle.py": 25,  # CI run 44: a 47.8 s teardown; under 26 s in CI run 55
    "tests/runtime/test_box_sablier.py": 25,  # one test, but the session's box (~10-30 s) if its worker has none yet
    # new this session, measured in a `-m "not slow"` run at load 4-5 (suitetime)
    "tests/local/test_health_progress.py": 38,
    "tests/local/test_redis_disk.py": 33,
    # --- redteam3: measured alone at load ~4 (setup + call + teardown)
    "tests/security/test_redteam3_backup_disk.py": 34,  # a server of its own, 2 x 65 MiB dumped (CI run 55: 34 s)
    "tests/security/test_redteam3_ipc.py": 50,  # three labs deployed
    # --- end
    # --- redteam4: alone at load ~2.5, the shared security server's start included (~5 s of it)
    "tests/security/test_redteam4_git_ssh.py": 15,  # a lab, a failing ssh deploy
    "tests/security/test_redteam4_socket_memory.py": 15,  # a lab
    "tests/security/test_redteam4_log_escapes.py": 22,  # a lab with a build step, an `inkmcp logs` process
    "tests/security/test_redteam4_notify_queue.py": 50,  # a database, ~100 MiB of NOTIFY, a 10 s stall
    "tests/security/test_redteam4_cgroup_peek.py": 40,  # two labs
    # --- end
    # --- suitefast: a `-m "not slow"` run at load 8.5 (two suites at once), quartered (far from the per-test default)
    "tests/core/test_database_backups.py": 30,
    "tests/local/test_provider_lifecycle.py": 21,
    "tests/github/test_deploy_keys.py": 15,
    "tests/stacks/test_muscle_stack.py": 15,
    "tests/billing/test_ledger.py": 13,
    # --- end
}
"""Seconds per test file (all its tests, set-up and teardown included); see above."""

_DEFAULT_TEST_SECONDS = {True: 3.5, False: 0.4}
"""A file not in FILE_SECONDS: seconds per test, by whether it is `slow` (CI run 48: ~2,500 s over 712 slow tests)..."""
_SERVER_SECONDS = 30.0
"""... plus this for each place its source starts an `inkmcp serve` of its own (a new file with a server of its own
is not last in line just because it has one test: CI run 48's tail was such files)."""
_SERVER_STARTS = ("make_server(", "running_server(", "security_server(", "coolify_server(")


def _servers_started_in(path: str) -> int:
    try:
        source = (ROOT / path).read_text(errors="replace")
    except OSError:
        return 0
    return sum(source.count(call) for call in _SERVER_STARTS)


def _file_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


def _schedule_key(path: str) -> str:
    return next((p for p in SHARED_SERVER_PACKAGES if path.startswith(p)), path)


def heaviest_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """`items` reordered for `--dist loadfile`: units (a file, or a whole shared-server package) by their measured
    cost, longest first; within a unit, collection order (a module's and a package's fixtures stay shared)."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(_schedule_key(_file_of(item.nodeid)), []).append(item)

    def cost(unit: list[pytest.Item]) -> float:
        files: dict[str, float] = {}
        for item in unit:
            path = _file_of(item.nodeid)
            files[path] = files.get(path, 0.0) + _DEFAULT_TEST_SECONDS[_is_slow(item.nodeid)]
        return sum(FILE_SECONDS.get(path, seconds + _SERVER_SECONDS * _servers_started_in(path))
                   for path, seconds in files.items())

    ordered = sorted(units.values(), key=cost, reverse=True)  # stable: equal costs keep collection order
    return [item for unit in ordered for item in unit]
# --- end suitetime


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--part", choices=("all", "parallel", "serial"), default="all",
        help="all tests (default); those that may share the machine (parallel); or those run alone (serial, "
        "tests/conftest.py SERIAL)",
    )
    parser.addoption(  # --- suitetime
        "--file-durations", type=int, default=0, metavar="N",
        help="list the N slowest test files (setup + call + teardown of all their tests) and each xdist worker's "
        "busy time and finish time: the data behind tests/conftest.py FILE_SECONDS",
    )


def pytest_configure(config: pytest.Config) -> None:
    try:
        required_components()
    except RequirementSettingError as e:
        raise pytest.UsageError(str(e)) from None
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_MissingFromWorkers(), "inkmcp-missing-from-workers")
    count = config.getoption("--file-durations", 0)
    if count and not hasattr(config, "workerinput"):  # --- suitetime: in the process that prints the summary
        config.pluginmanager.register(_FileDurations(count), "inkmcp-file-durations")


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
    if hasattr(config, "workerinput"):  # --- suitetime: an xdist worker (each one orders alike; xdist checks)
        items[:] = heaviest_first(items)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """--- suitetime: `--part=serial` does not import what it would deselect anyway: collecting the whole suite to
    keep its 92 tests cost that part ~25-30 s (every test module and what it imports), for nothing."""
    if config.getoption("--part", "all") != "serial" or config.rootpath != ROOT:
        return None
    try:
        rel = collection_path.relative_to(ROOT).as_posix()
    except ValueError:
        return None
    if collection_path.is_dir():
        wanted = any(p.startswith(rel + "/") or rel.startswith(p.rstrip("/") + "/") or p.rstrip("/") == rel
                     for p in SERIAL)
    else:
        wanted = not collection_path.name.startswith("test_") or _in(SERIAL, rel)
    return None if wanted else True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply `@requires(...)` markers before any fixture runs, as `skipif` would."""
    for mark in item.iter_markers("requires"):
        require(*mark.args)


class _FileDurations:
    """`--file-durations=N` (suitetime): time per test file and per xdist worker, from the reports the controller
    receives (under xdist each report carries its worker as `node`)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.start = time.monotonic()
        self.files: dict[str, float] = {}
        self.busy: dict[str, float] = {}
        self.finished: dict[str, float] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        path = _file_of(report.nodeid)
        self.files[path] = self.files.get(path, 0.0) + report.duration
        node = getattr(report, "node", None)
        worker = getattr(getattr(node, "gateway", None), "id", "main")
        self.busy[worker] = self.busy.get(worker, 0.0) + report.duration
        self.finished[worker] = time.monotonic() - self.start

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.section(f"slowest {self.count} files (setup + call + teardown)")
        for path, seconds in sorted(self.files.items(), key=lambda kv: -kv[1])[: self.count]:
            terminalreporter.write_line(f"{seconds:8.1f}s {path}")
        for worker in sorted(self.busy):
            terminalreporter.write_line(f"worker {worker}: busy {self.busy[worker]:.0f} s, last report at "
                                        f"{self.finished[worker]:.0f} s")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """--- suitetime: the test servers' initdb template (tests.support.initdb_template) goes with this process's
    session; an xdist worker ends without running atexit handlers, which left one 39 MB cluster per worker."""
    import sys

    support = sys.modules.get("tests.support")
    if support is not None:
        support.remove_initdb_template()


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


@pytest.fixture(scope="session", autouse=True)
def _session_end_joined() -> Iterator[None]:
    """--- suitecut: set up before the session's shared servers and box, so torn down after all of them: waits for
    their teardowns, which run together (tests/session_end.py)."""
    from tests.session_end import join_all

    yield
    join_all()


@pytest.fixture(scope="session")
def local_server():
    """One real `inkmcp serve` (local provider, accounts alice and bob, tests.support.SHARED_SERVER_LIMITS) per worker
    for the whole session: tests/e2e's `server` (with its Coolify twin) and any test that needs a served server with
    no setting of its own, using an account of its own (suitetime: a server costs ~20 s of CI time). Stopped at the
    session's end beside the other shared ones (`at_session_end`)."""
    from tests.session_end import at_session_end
    from tests.support import SHARED_SERVER_LIMITS, running_server

    server = running_server("inkmcp-e2e-", ("alice", "bob"), **SHARED_SERVER_LIMITS)
    srv = server.__enter__()
    try:
        yield srv
    except BaseException:
        server.__exit__(None, None, None)
        raise
    at_session_end(lambda: server.__exit__(None, None, None))


@pytest.fixture(scope="session")
def run_server_box():
    """The session's run-server box (tests/runtime/shared_box.py), brought up on first use, down at the end (beside
    the session's servers, `at_session_end`)."""
    from tests.runtime import shared_box
    from tests.session_end import at_session_end

    try:
        yield shared_box.box_dir()
    except BaseException:
        shared_box.teardown()
        raise
    at_session_end(shared_box.teardown)
