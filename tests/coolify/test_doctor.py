"""`inkmcp doctor` against the stateful Coolify stand-in: each misconfiguration an operator can have is set up on
the stand-in and the doctor must name it and say what fixes it; a fit Coolify passes every check. The probe's
verdict comes from what the probe container reports (the stand-in's per-node kernel fact, i.e. what
hardening/probe prints), never from Coolify's own view of the container."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from inkmcp.coolify.client import CoolifyClient
from inkmcp.coolify.spec import CoolifySpec
from inkmcp.doctor import DoctorReport, GvisorProbe, ProbeSettings, Status, run_doctor
from tests.coolify.conftest import FAST
from tests.coolify_standin import CoolifyStandin

PROBE = ProbeSettings(image="registry.test/inkmcp/probe", tag="1", timeout=10.0, poll_initial=0.02, poll_max=0.1)
ALL = ("read", "read:sensitive", "write", "deploy")


@pytest.fixture
def fleet(standin: CoolifyStandin) -> CoolifyStandin:
    """Two usable run servers and a build server, with the SSH key Coolify holds for them."""
    standin.add_private_key()
    standin.add_servers(2)
    standin.add_server("10.77.9.1", name="build", is_build_server=True, usable=True)
    return standin


async def _doctor(standin: CoolifyStandin, token: str, *, probe: bool = True) -> DoctorReport:
    async with CoolifyClient(standin.url, token, retry=FAST, validate_with=CoolifySpec.load()) as client:
        return await run_doctor(client, probe=GvisorProbe(client, PROBE) if probe else None)


def _by_name(report: DoctorReport) -> dict[str, Status]:
    return {c.name: c.status for c in report.checks}


async def test_a_fit_coolify_passes_and_the_probes_are_cleaned_up(fleet: CoolifyStandin) -> None:
    report = await _doctor(fleet, fleet.add_token(*ALL))
    statuses = _by_name(report)
    assert report.ok, report.checks
    gvisor = [c for c in report.checks if c.name.startswith("gVisor on ")]
    assert len(gvisor) == 2 and all(c.status == Status.ok and "4.4.0" in c.detail for c in gvisor)
    assert statuses["token abilities"] == Status.ok
    assert not any("build" in c.name and c.name.startswith("gVisor") for c in report.checks)  # build server: no probe
    assert _gone(fleet), fleet.applications  # every probe application deleted again (Coolify's queued delete)
    assert fleet.request_violations == []


async def test_a_run_server_without_gvisor_fails_with_the_fix(fleet: CoolifyStandin) -> None:
    runc_node = next(s for s in fleet.servers.values() if s.name == "run-2")
    runc_node.container_kernel = "6.1.0-28-amd64"  # Docker on this node starts tenants under runc
    report = await _doctor(fleet, fleet.add_token(*ALL))
    assert not report.ok
    bad = next(c for c in report.checks if c.name.startswith("gVisor on run-2"))
    assert bad.status == Status.fail and "HOST kernel 6.1.0-28-amd64" in bad.detail
    assert "nodes harden" in bad.fix
    good = next(c for c in report.checks if c.name.startswith("gVisor on run-1"))
    assert good.status == Status.ok


@pytest.mark.parametrize(("abilities", "missing"), [
    (("read", "read:sensitive", "write"), "deploy"),
    (("read", "read:sensitive", "deploy"), "write"),
    (("read", "write", "deploy"), "read:sensitive"),
])
async def test_missing_abilities_are_named_and_nothing_is_created(fleet: CoolifyStandin, abilities: tuple[str, ...],
                                                                  missing: str) -> None:
    report = await _doctor(fleet, fleet.add_token(*abilities))
    check = next(c for c in report.checks if c.name == "token abilities")
    assert check.status == Status.fail and check.detail == f"missing: {missing}"
    assert "INKMCP_COOLIFY_TOKEN" in check.fix and "deploy" in check.fix
    assert _by_name(report)["gVisor"] == Status.skipped
    assert fleet.projects == {} and fleet.applications == {}  # the probes of abilities changed nothing


async def test_root_token_passes_the_ability_checks(fleet: CoolifyStandin) -> None:
    report = await _doctor(fleet, fleet.add_token("root"), probe=False)
    assert _by_name(report)["token abilities"] == Status.ok and report.ok


async def test_an_unusable_server_is_named(fleet: CoolifyStandin) -> None:
    fleet.add_server("10.77.5.5", name="broken")  # registered, never validated
    report = await _doctor(fleet, fleet.add_token(*ALL), probe=False)
    check = next(c for c in report.checks if "broken" in c.name)
    assert check.status == Status.fail and "Validate" in check.fix and not report.ok


async def test_unreachable_coolify_and_a_refused_token(fleet: CoolifyStandin) -> None:
    down = f"http://127.0.0.1:{_closed_port()}"
    async with CoolifyClient(down, fleet.add_token(*ALL), retry=FAST) as client:
        report = await run_doctor(client, probe=None)
    first = report.checks[0]
    assert first.status == Status.fail and "INKMCP_COOLIFY_URL" in first.fix
    assert all(c.status == Status.skipped for c in report.checks[1:])

    report = await _doctor(fleet, "999|" + "0" * 40, probe=False)
    token = next(c for c in report.checks if c.name == "token accepted")
    assert token.status == Status.fail and "INKMCP_COOLIFY_TOKEN" in token.fix


def _gone(standin: CoolifyStandin, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        standin.settle()
        if not standin.applications:
            return True
        time.sleep(0.01)  # polling the stand-in's clock with a deadline
    return False


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_exit_codes_and_table(fleet: CoolifyStandin) -> None:
    """The command an operator runs: settings from INKMCP_COOLIFY_URL/TOKEN, exit 0 when fit, 1 with the fix."""
    env = {**os.environ, "INKMCP_COOLIFY_URL": fleet.url, "INKMCP_COOLIFY_TOKEN": fleet.add_token(*ALL),
           "INKMCP_DOCTOR_PROBE_IMAGE": PROBE.image, "INKMCP_DOCTOR_PROBE_TAG": PROBE.tag, "COLUMNS": "250"}
    cmd = [sys.executable, "-m", "inkmcp.cli", "doctor", "--probe-timeout", "10"]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "gVisor on run-1" in ok.stdout and "fail" not in ok.stdout
    assert env["INKMCP_COOLIFY_TOKEN"].split("|")[1] not in ok.stdout + ok.stderr

    env["INKMCP_COOLIFY_TOKEN"] = fleet.add_token("read")
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "missing: write, deploy, read:sensitive" in bad.stdout, bad.stdout + bad.stderr
