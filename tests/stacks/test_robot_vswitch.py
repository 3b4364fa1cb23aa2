"""The Robot client and the vSwitch dynamic provider against a real HTTP stand-in of Robot.

The provider class is exercised directly (Pulumi's mock runtime never calls a dynamic provider's
create), the way the engine would: create → read → diff → update → delete.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import dill
import httpx
import pulumi
import pytest
from pulumi.dynamic.dynamic import serialize_provider

from inkmcp.infra.robot import (
    RetryPolicy,
    RobotAuthError,
    RobotClient,
    RobotInvalidInput,
    RobotNotFound,
    RobotRateLimited,
    RobotUnavailable,
    RobotWaitTimeout,
    ServerNotFound,
    VlanNotUnique,
    VSwitchInProcess,
    VSwitchServerFailed,
)
from inkmcp.infra.vswitch_provider import ENV_PASSWORD, ENV_USER, VSwitchProvider
from tests.stacks.robot_standin import RobotStandin

S1, S2, S3 = 100001, 100002, 100003
FAST_RETRY = RetryPolicy(initial_delay=0.02, max_delay=0.1, max_total_wait=2.0)


@pytest.fixture
def robot() -> Iterator[RobotStandin]:
    with RobotStandin(in_process_reads=2) as standin:
        yield standin


def make_provider(**kw: Any) -> VSwitchProvider:
    defaults: dict[str, Any] = {"wait_timeout": 3.0, "poll_interval": 0.002, "retry": FAST_RETRY, "http_timeout": 5.0}
    return VSwitchProvider(**{**defaults, **kw})


@pytest.fixture
def provider() -> VSwitchProvider:
    return make_provider()


def props(robot: RobotStandin, **over: Any) -> dict[str, Any]:
    # Floats on purpose: that is how integers arrive over Pulumi's wire.
    base = {"name": "inkmcp", "vlan": 4000.0, "servers": [float(S2), float(S1)], "base_url": robot.url,
            "robot_user": robot.user, "robot_password": robot.password}
    return {**base, **over}


def client(robot: RobotStandin, **kw: Any) -> RobotClient:
    return RobotClient(robot.user, robot.password, robot.url, retry=kw.pop("retry", FAST_RETRY), **kw)


# --- create ---------------------------------------------------------------------------------------


def test_create_attaches_all_servers_in_one_form_encoded_call_and_waits_until_ready(robot, provider):
    result = provider.create(props(robot))

    assert result.id.isdigit() and int(result.id) in robot.vswitches
    assert result.outs["vswitch_id"] == int(result.id)
    assert result.outs["servers"] == [S1, S2] and result.outs["vlan"] == 4000
    attach = robot.writes("POST /vswitch/{id}/server")
    assert len(attach) == 1, "servers must be attached in ONE write (100 writes/hour)"
    assert attach[0].form == {"server[]": [str(S1), str(S2)]}
    assert attach[0].content_type.startswith("application/x-www-form-urlencoded")
    assert {a.status for a in robot.vswitches[int(result.id)].servers.values()} == {"ready"}
    assert [s.endpoint for s in robot.writes()] == ["POST /vswitch", "POST /vswitch/{id}/server"]


def test_create_without_servers_makes_a_single_write(robot, provider):
    result = provider.create(props(robot, servers=[]))
    assert result.outs["servers"] == []
    assert [s.endpoint for s in robot.writes()] == ["POST /vswitch"]


def test_create_accepts_the_processing_status_alias():
    with RobotStandin(in_process_reads=3, status_alias=True) as robot:
        result = make_provider().create(props(robot))
        assert result.outs["servers"] == [S1, S2]
        gets = [s for s in robot.log if s.method == "GET"]
        assert len(gets) == 4, "3 reads 'processing', the 4th ready"


def test_create_with_unknown_server_says_which_and_cancels_the_half_created_vswitch(robot, provider):
    with pytest.raises(ServerNotFound) as err:
        provider.create(props(robot, servers=[S1, 999999]))
    assert "999999" in str(err.value) and "SERVER_NOT_FOUND" in str(err.value)
    assert any("cancelled" in note for note in err.value.__notes__)
    (vs,) = robot.vswitches.values()
    assert vs.cancelled


def test_create_with_a_vlan_already_in_use_fails_clearly(robot, provider):
    provider.create(props(robot, servers=[S1]))
    with pytest.raises(VlanNotUnique) as err:
        provider.create(props(robot, name="second", servers=[S1, S3]))
    text = str(err.value)
    assert "VSWITCH_VLAN_NOT_UNIQUE" in text and "choose another VLAN" in text
    assert [v.cancelled for v in robot.vswitches.values()] == [False, True]


def test_create_reports_a_failed_attachment(robot, provider):
    robot.fail_servers.add(S2)
    with pytest.raises(VSwitchServerFailed, match=str(S2)):
        provider.create(props(robot))


def test_create_gives_up_waiting_after_the_timeout():
    with RobotStandin(in_process_reads=10_000) as robot:
        started = time.monotonic()
        with pytest.raises(RobotWaitTimeout, match="still in process"):
            make_provider(wait_timeout=0.1, poll_interval=0.01).create(props(robot))
        assert time.monotonic() - started < 2


def test_invalid_inputs_fail_before_any_request(robot, provider):
    with pytest.raises(ValueError, match="vlan"):
        provider.create(props(robot, vlan=3999))
    with pytest.raises(ValueError, match="more than once"):
        provider.create(props(robot, servers=[S1, S1]))
    assert robot.log == []
    failures = provider.check({}, props(robot, vlan=4092))
    assert [f.property for f in failures.failures] == ["vlan"]
    assert provider.check({}, props(robot)).failures == []


# --- credentials ----------------------------------------------------------------------------------


def test_bad_credentials_raise_auth_error_and_are_never_retried(robot, provider):
    with pytest.raises(RobotAuthError, match="10 minutes"):
        provider.create(props(robot, robot_password="wrong"))
    assert robot.failed_logins == 1 and len(robot.log) == 1


def test_credentials_come_from_env_when_not_inputs(robot, provider, monkeypatch):
    bare = props(robot)
    del bare["robot_user"], bare["robot_password"]
    monkeypatch.delenv(ENV_USER, raising=False)
    monkeypatch.delenv(ENV_PASSWORD, raising=False)
    with pytest.raises(ValueError, match=ENV_USER):
        provider.create(bare)
    monkeypatch.setenv(ENV_USER, robot.user)
    monkeypatch.setenv(ENV_PASSWORD, robot.password)
    result = provider.create(bare)
    assert "robot_password" not in result.outs and "robot_user" not in result.outs


def test_secret_wrapped_inputs_are_unwrapped(robot, provider):
    wrapped = props(robot, robot_password=pulumi.runtime.rpc.wrap_rpc_secret(robot.password),
                    servers=pulumi.runtime.rpc.wrap_rpc_secret([S1]))
    result = provider.create(wrapped)
    assert result.outs["servers"] == [S1] and result.outs["robot_password"] == robot.password
    assert provider.diff(result.id, result.outs, wrapped).changes is False


def test_provider_pickles_without_clients_or_secrets(robot):
    provider = make_provider()
    provider.create(props(robot))  # a used provider must still hold nothing live
    blob = serialize_provider(provider)
    assert robot.password.encode() not in base64.b64decode(blob)
    clone = dill.loads(base64.b64decode(blob))  # noqa: S301 - our own bytes, as the engine does
    assert clone.poll_interval == provider.poll_interval and clone.retry == provider.retry


# --- read -----------------------------------------------------------------------------------------


def test_read_reports_remote_state_and_drift(robot, provider):
    created = provider.create(props(robot))
    vs = robot.vswitches[int(created.id)]
    del vs.servers[S2]  # someone detached a server in Robot
    read = provider.read(created.id, created.outs)
    assert read.id == created.id and read.outs["servers"] == [S1]
    assert provider.diff(created.id, read.outs, props(robot)).changes is True


def test_read_of_cancelled_or_unknown_vswitch_reports_it_gone(robot, provider):
    created = provider.create(props(robot, servers=[]))
    robot.vswitches[int(created.id)].cancelled = True
    assert provider.read(created.id, created.outs).id == ""
    assert provider.read("424242", created.outs).id == ""


# --- diff -----------------------------------------------------------------------------------------


def test_diff_separates_in_place_updates_from_replacement(robot, provider):
    olds = provider.create(props(robot)).outs

    def diff(**news: Any) -> pulumi.dynamic.DiffResult:
        return provider.diff("1", olds, props(robot, **news))

    same = diff(servers=[S2, S1])  # order does not matter
    assert same.changes is False and same.replaces == []
    for change in ({"name": "renamed"}, {"vlan": 4001}, {"servers": [S1]}, {"robot_password": "rotated"}):
        d = diff(**change)
        assert d.changes is True and d.replaces == [], change
    moved = diff(base_url="https://robot.example.invalid")
    assert moved.changes is True and moved.replaces == ["base_url"] and moved.delete_before_replace is True
    preview = diff(servers=pulumi.runtime.rpc.UNKNOWN)
    assert preview.changes is True and preview.replaces == []


# --- update ---------------------------------------------------------------------------------------


def test_update_attaches_and_detaches_in_one_call_each(robot, provider):
    created = provider.create(props(robot, servers=[S1, S2]))
    before = len(robot.writes())
    result = provider.update(created.id, created.outs, props(robot, servers=[S2, S3]))

    assert result.outs["servers"] == [S2, S3]
    new_writes = robot.writes()[before:]
    assert [(s.endpoint, s.form) for s in new_writes] == [
        ("DELETE /vswitch/{id}/server", {"server[]": [str(S1)]}),
        ("POST /vswitch/{id}/server", {"server[]": [str(S3)]}),
    ]
    assert set(robot.vswitches[int(created.id)].servers) == {S2, S3}


def test_update_waits_for_in_process_servers_before_writing(robot, provider):
    created = provider.create(props(robot, servers=[]))
    vs_id = int(created.id)
    with client(robot) as c:
        c.add_servers(vs_id, [S1])  # out of band: still in process
        with pytest.raises(VSwitchInProcess, match="wait until every server is ready"):
            c.add_servers(vs_id, [S2])
    result = provider.update(created.id, created.outs, props(robot, servers=[S1, S2]))
    assert result.outs["servers"] == [S1, S2]
    assert all(s.status != 409 for s in robot.writes()[-1:])


def test_update_name_and_vlan_in_place_with_one_write(robot, provider):
    created = provider.create(props(robot))
    before = len(robot.writes())
    result = provider.update(created.id, created.outs, props(robot, name="renamed", vlan=4091))
    assert [s.endpoint for s in robot.writes()[before:]] == ["POST /vswitch/{id}"]
    assert robot.writes()[-1].form == {"name": ["renamed"], "vlan": ["4091"]}
    assert (result.outs["name"], result.outs["vlan"], result.outs["vswitch_id"]) == ("renamed", 4091, int(created.id))


def test_update_to_a_vlan_in_use_by_a_server_fails_clearly(robot, provider):
    provider.create(props(robot, name="other", vlan=4002, servers=[S1]))
    created = provider.create(props(robot, servers=[S1, S2]))
    with pytest.raises(VlanNotUnique, match="VLAN 4002"):
        provider.update(created.id, created.outs, props(robot, vlan=4002, servers=[S1, S2]))
    assert robot.vswitches[int(created.id)].vlan == 4000


def test_maintenance_is_a_typed_error_not_retried(robot):
    robot.maintenance = True
    with client(robot) as c, pytest.raises(RobotUnavailable, match="maintenance"):
        c.list_vswitches()
    assert len(robot.log) == 1


def test_update_of_credentials_only_writes_nothing(robot, provider):
    created = provider.create(props(robot))
    before = len(robot.writes())
    provider.update(created.id, created.outs, props(robot))
    assert len(robot.writes()) == before


# --- delete ---------------------------------------------------------------------------------------


def test_delete_cancels_now_and_is_idempotent(robot, provider):
    created = provider.create(props(robot))
    provider.delete(created.id, created.outs)
    assert robot.vswitches[int(created.id)].cancelled
    assert robot.writes()[-1].form == {"cancellation_date": ["now"]}
    provider.delete(created.id, created.outs)  # 409 CONFLICT "already cancelled" counts as done
    provider.delete("424242", created.outs)  # 404 NOT_FOUND counts as done
    assert [s.status for s in robot.writes("DELETE /vswitch/{id}")] == [200, 409, 404]


# --- rate limit -----------------------------------------------------------------------------------


class FakeClock:
    """Shared by the stand-in's rate window and the client's sleep: back-off becomes exact and instant."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limited_write_backs_off_exponentially_until_the_window_passes():
    clock = FakeClock()
    with RobotStandin(write_limit=1, window=1.0, clock=clock) as robot:
        policy = RetryPolicy(initial_delay=0.1, max_delay=0.4, max_total_wait=10)
        with client(robot, retry=policy, sleep=clock.sleep) as c:
            c.create_vswitch("a", 4000)
            c.create_vswitch("b", 4000)
        assert clock.slept == [0.1, 0.2, 0.4, 0.4]  # 1.1 s > the 1 s window
        assert [s.status for s in robot.writes("POST /vswitch")] == [201, 403, 403, 403, 403, 201]


def test_provider_rides_out_a_rate_limit_in_real_time():
    with RobotStandin(write_limit=1, window=0.4, in_process_reads=0) as robot:
        provider = make_provider()
        provider.create(props(robot, servers=[]))
        started = time.monotonic()
        second = provider.create(props(robot, name="second", servers=[]))
        assert int(second.id) in robot.vswitches
        assert [s.status for s in robot.writes("POST /vswitch")][-1] == 201
        assert time.monotonic() - started < 3.0


def test_rate_limit_gives_up_after_the_bounded_wait_with_robot_details():
    with RobotStandin(write_limit=1, in_process_reads=0) as robot:
        with client(robot, retry=RetryPolicy(initial_delay=0.01, max_delay=0.02, max_total_wait=0.05)) as c:
            c.create_vswitch("a", 4000)
            with pytest.raises(RobotRateLimited) as err:
                c.create_vswitch("b", 4000)
        assert err.value.status == 403 and err.value.max_request == 1 and err.value.interval == 3600
        assert "100 writes per hour" in str(err.value)
        # one success, then the refused write and its 3 retries (0.01 + 0.02 + 0.02 = the 0.05 s bound)
        assert [s.status for s in robot.writes("POST /vswitch")] == [201, 403, 403, 403, 403]


def test_retry_policy_doubles_caps_and_bounds():
    delays = list(RetryPolicy(initial_delay=5, max_delay=60, max_total_wait=300).delays(interval=3600))
    assert delays[:5] == [5, 10, 20, 40, 60] and sum(delays) <= 300
    assert list(RetryPolicy(initial_delay=5, max_delay=60, max_total_wait=30).delays(interval=8)) == [5, 8, 8, 8]
    assert list(RetryPolicy(max_total_wait=0).delays(None)) == []


# --- client details the contract pins down ----------------------------------------------------------


def test_invalid_input_exposes_missing_and_invalid(robot):
    with client(robot) as c:
        with pytest.raises(RobotInvalidInput) as err:
            c.create_vswitch("x", 5000)
        assert err.value.invalid == ["vlan"] and err.value.missing == []
        vs = c.create_vswitch("x", 4000)
        with pytest.raises(RobotInvalidInput, match="cancellation_date"):
            c.cancel_vswitch(vs.id, "25-11-26")  # community.hrobot's 2-digit year is wrong
        with pytest.raises(RobotNotFound, match="404 NOT_FOUND"):
            c.get_vswitch(1)
        assert [v.id for v in c.list_vswitches()] == [vs.id]


def test_standin_accepts_indexed_server_keys_and_main_ips(robot):
    with client(robot) as c:
        vs = c.create_vswitch("x", 4000)
    auth = (robot.user, robot.password)
    form = {"server[0]": str(S1), "server[1]": robot.known_servers[S2]}
    response = httpx.post(f"{robot.url}/vswitch/{vs.id}/server", data=form, auth=auth)
    assert response.status_code == 201 and response.content == b""
    robot.settle()
    with client(robot) as c:
        assert c.get_vswitch(vs.id).server_numbers == [S1, S2]
