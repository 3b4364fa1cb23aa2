"""Build-server registration against the Coolify stand-in (issue 7 item 6; runbooks/gvisor-decision.md §4.4,
review #3): `POST /servers` with `is_build_server: true`, Sentinel off, validation, and never a proxy call.

The stand-in checks every request and answer against Coolify 4.3.11's spec (the fixtures fail a test that left a
violation) and keeps Coolify's build-server rules: the flag stored at create and by PATCH (refused for a server
with resources), Sentinel never switched on for a build server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inkmcp.coolify.client import CoolifyClient
from inkmcp.coolify.registration import BuildServerRegistration, RegistrationError, RunServerRegistration, reconcile
from inkmcp.coolify.spec import CoolifySpec
from inkmcp.infra.coolify_server_provider import CoolifyServerProvider
from tests.coolify.conftest import FAST
from tests.coolify_standin import CoolifyStandin

BUILD_IP = "10.0.1.11"
FAST_POLL = {"poll_interval": 0.01, "validation_timeout": 5.0}
PIN = "traefik:v3.6.23@sha256:" + "ab" * 32


def want(key_uuid: str, **over: Any) -> BuildServerRegistration:
    base: dict[str, Any] = {"ip": BUILD_IP, "private_key_uuid": key_uuid, "name": "inkmcp-build",
                            "description": "inkmcp: build server (factory stack)"}
    return BuildServerRegistration(**{**base, **over})


def shape(standin: CoolifyStandin, *, writes_only: bool = True) -> list[str]:
    """`METHOD path` with uuids replaced, in order."""
    seen = standin.writes() if writes_only else standin.requests
    return [f"{r.method} " + "/".join("{uuid}" if len(p) == 24 else p for p in r.path.split("/")) for r in seen]


def proxy_calls(standin: CoolifyStandin) -> list[str]:
    return [line for line in shape(standin, writes_only=False) if "/proxy" in line]


async def test_first_run_creates_a_build_server_without_any_proxy_call(standin: CoolifyStandin,
                                                                       client: CoolifyClient, key_uuid: str) -> None:
    outcome = await reconcile(client, want(key_uuid), **FAST_POLL)

    assert outcome.steps() == ["create-server", "sentinel-off", "validate"]
    assert shape(standin) == ["POST /api/v1/servers", "PATCH /api/v1/servers/{uuid}/sentinel",
                              "POST /api/v1/servers/{uuid}/validate"]
    create = standin.writes()[0].body
    assert create["is_build_server"] is True and create["instant_validate"] is False
    assert create["proxy_type"] == "none" and create["ip"] == BUILD_IP and create["private_key_uuid"] == key_uuid
    assert standin.writes()[0].operation == "create-server"
    assert proxy_calls(standin) == []  # not even a GET of the proxy
    server = standin.servers[outcome.uuid or ""]
    assert server.settings["is_build_server"] is True
    assert server.settings["is_sentinel_enabled"] is False and server.settings["is_metrics_enabled"] is False
    assert server.settings["is_usable"] is True and server.settings["is_reachable"] is True
    assert server.proxy["type"] == "NONE" and server.running_proxy is None
    assert not standin.proxy_file(BUILD_IP).exists()  # Coolify wrote no proxy compose to the build host


async def test_sentinel_is_off_before_coolify_validates(standin: CoolifyStandin, client: CoolifyClient,
                                                        key_uuid: str) -> None:
    await reconcile(client, want(key_uuid), **FAST_POLL)
    order = shape(standin)
    assert order.index("PATCH /api/v1/servers/{uuid}/sentinel") < order.index("POST /api/v1/servers/{uuid}/validate")
    assert standin.writes()[1].body == {"is_sentinel_enabled": False, "is_metrics_enabled": False}


async def test_second_run_sends_no_write(standin: CoolifyStandin, client: CoolifyClient, key_uuid: str) -> None:
    first = await reconcile(client, want(key_uuid), **FAST_POLL)
    standin.reset_log()

    again = await reconcile(client, want(key_uuid), known_uuid=first.uuid, **FAST_POLL)

    assert again.uuid == first.uuid and again.writes == []
    assert standin.writes() == [] and standin.requests  # asked Coolify, GETs only
    assert proxy_calls(standin) == []
    assert len(standin.servers) == 1


async def test_plan_of_a_new_build_server_lists_its_writes_and_sends_none(standin: CoolifyStandin,
                                                                          client: CoolifyClient,
                                                                          key_uuid: str) -> None:
    plan = await reconcile(client, want(key_uuid), apply=False, **FAST_POLL)
    assert plan.steps() == ["create-server", "sentinel-off", "validate"] and plan.applied is False
    assert standin.writes() == [] and standin.servers == {}


async def test_a_run_server_at_the_address_is_refused_not_flipped(standin: CoolifyStandin, client: CoolifyClient,
                                                                   key_uuid: str) -> None:
    """Coolify's PATCH would flip an empty server's flag, leaving what it started there as a run server
    running: registration refuses with the way out, and writes nothing."""
    existing = standin.add_server(BUILD_IP, name="build-by-hand", usable=True)
    standin.start_proxy(existing.uuid)  # Coolify started its proxy there while it was a run server

    with pytest.raises(RegistrationError) as caught:
        await reconcile(client, want(key_uuid), **FAST_POLL)

    msg = str(caught.value)
    assert "registered as a run server" in msg and existing.uuid in msg and BUILD_IP in msg
    assert "delete it in Coolify" in msg and "pulumi up" in msg and "build.ipOffset" in msg
    assert standin.writes() == []
    assert existing.settings["is_build_server"] is False and existing.running_proxy is not None


async def test_the_same_run_server_known_by_uuid_is_refused_too(standin: CoolifyStandin, client: CoolifyClient,
                                                                key_uuid: str) -> None:
    """A build server flipped to a run server in Coolify's UI (state still holds its uuid) is drift that
    registration reports, not repairs: preview and up fail with the message."""
    first = await reconcile(client, want(key_uuid), **FAST_POLL)
    standin.servers[first.uuid or ""].settings["is_build_server"] = False  # the UI's checkbox
    standin.reset_log()
    for apply in (False, True):
        with pytest.raises(RegistrationError, match="registered as a run server"):
            await reconcile(client, want(key_uuid), known_uuid=first.uuid, apply=apply, **FAST_POLL)
    assert standin.writes() == []


async def test_a_run_server_is_still_refused_at_the_build_servers_address(standin: CoolifyStandin,
                                                                          client: CoolifyClient,
                                                                          key_uuid: str) -> None:
    await reconcile(client, want(key_uuid), **FAST_POLL)
    standin.reset_log()
    run = RunServerRegistration(ip=BUILD_IP, private_key_uuid=key_uuid, name="run1", proxy_image=PIN)
    with pytest.raises(RegistrationError, match="is a build server"):
        await reconcile(client, run, **FAST_POLL)
    assert standin.writes() == []


async def test_a_build_server_registered_by_hand_is_adopted(standin: CoolifyStandin, client: CoolifyClient,
                                                            key_uuid: str) -> None:
    """Created in the UI with "Use it as a build server": patched to the stack's name, Sentinel off, validated;
    no second server, no proxy call."""
    existing = standin.add_server(BUILD_IP, name="ui-build", is_build_server=True)

    outcome = await reconcile(client, want(key_uuid), **FAST_POLL)

    assert outcome.uuid == existing.uuid and list(standin.servers) == [existing.uuid]
    assert outcome.steps() == ["update-server", "sentinel-off", "validate"]
    assert standin.writes()[0].body == {"description": "inkmcp: build server (factory stack)",
                                        "name": "inkmcp-build"}
    assert existing.settings["is_sentinel_enabled"] is False and existing.settings["is_usable"] is True
    assert proxy_calls(standin) == []


async def test_sentinel_switched_back_on_is_switched_off_again(standin: CoolifyStandin, client: CoolifyClient,
                                                               key_uuid: str) -> None:
    first = await reconcile(client, want(key_uuid), **FAST_POLL)
    standin.set_sentinel(first.uuid or "", True)  # e.g. a restored database from before registration
    standin.reset_log()
    again = await reconcile(client, want(key_uuid), known_uuid=first.uuid, **FAST_POLL)
    assert again.steps() == ["sentinel-off"]


async def test_validation_failure_names_docker(tmp_path: Path, spec: CoolifySpec) -> None:
    """Coolify's validation checks Docker over SSH: a build server without it fails with Coolify's own log."""
    with CoolifyStandin(tmp_path, spec=spec, validation_delay=0.01, docker_missing=True) as standin:
        token = standin.add_token("read", "read:sensitive", "write")
        key = standin.add_private_key()
        async with CoolifyClient(standin.url, token, retry=FAST, validate_with=spec) as c:
            with pytest.raises(RegistrationError) as caught:
                await reconcile(c, want(key), poll_interval=0.01, validation_timeout=0.3)
        assert "Docker Engine is not installed" in str(caught.value) and "<a" not in str(caught.value)
        assert shape(standin)[-1] == "POST /api/v1/servers/{uuid}/validate"
        assert standin.request_violations == [] and standin.response_violations == []


async def test_the_stand_in_keeps_coolifys_build_server_rules(standin: CoolifyStandin, client: CoolifyClient,
                                                              key_uuid: str) -> None:
    """What the refusal above avoids is real: Coolify flips an empty server's flag (and only the flag), refuses
    one with resources, and never lets Sentinel on for a build server."""
    from inkmcp.coolify.client import CoolifyError
    from inkmcp.coolify.models import SentinelUpdate, ServerUpdate

    empty = standin.add_server("10.0.1.50", usable=True)
    standin.start_proxy(empty.uuid)
    await client.update_server(empty.uuid, ServerUpdate(is_build_server=True))
    assert empty.settings["is_build_server"] is True and empty.running_proxy is not None  # proxy left running

    busy = standin.add_server("10.0.1.51", resources=1)
    with pytest.raises(CoolifyError) as caught:
        await client.update_server(busy.uuid, ServerUpdate(is_build_server=True))
    assert caught.value.status == 422 and busy.settings["is_build_server"] is False

    done = await reconcile(client, want(key_uuid), **FAST_POLL)
    with pytest.raises(CoolifyError) as caught:
        await client.update_sentinel(done.uuid or "", SentinelUpdate(is_sentinel_enabled=True))
    assert caught.value.status == 422 and standin.servers[done.uuid or ""].settings["is_sentinel_enabled"] is False


# -- the dynamic provider (the factory stack's `coolify` step) -------------------------------------------------


@pytest.fixture
def provider() -> CoolifyServerProvider:
    return CoolifyServerProvider(validation_timeout=5.0, poll_interval=0.01, http_timeout=5.0, retry=FAST)


def props(standin: CoolifyStandin, token: str, key: str, **over: Any) -> dict[str, Any]:
    base = {"api_url": standin.url, "api_token": token, "ip": BUILD_IP, "private_key_uuid": key,
            "name": "inkmcp-build", "description": "inkmcp: build server (factory stack)", "port": 22.0,
            "user": "root", "is_build_server": True, "proxy_image": None, "sablier_plugin_version": None}
    return {**base, **over}


def test_provider_registers_the_build_server_and_then_diffs_to_nothing(standin: CoolifyStandin, token: str,
                                                                       key_uuid: str,
                                                                       provider: CoolifyServerProvider) -> None:
    assert provider.check({}, props(standin, token, key_uuid)).failures == []
    created = provider.create(props(standin, token, key_uuid))
    assert created.outs["is_build_server"] is True and created.outs["proxy_image"] is None
    assert standin.servers[created.id].settings["is_build_server"] is True
    standin.reset_log()

    diff = provider.diff(created.id, created.outs, props(standin, token, key_uuid))
    assert diff.changes is False and standin.writes() == [] and proxy_calls(standin) == []
    provider.update(created.id, created.outs, props(standin, token, key_uuid))
    assert standin.writes() == []


def test_provider_check_refuses_proxy_inputs_for_a_build_server(standin: CoolifyStandin, token: str,
                                                                key_uuid: str,
                                                                provider: CoolifyServerProvider) -> None:
    bad = provider.check({}, props(standin, token, key_uuid, proxy_image=PIN))
    assert [f.reason for f in bad.failures if "runs no proxy" in f.reason]
    run_without_proxy = provider.check({}, props(standin, token, key_uuid, is_build_server=False))
    assert {f.property for f in run_without_proxy.failures} >= {"proxy_image"}


def test_a_role_change_replaces_and_old_run_server_state_does_not(standin: CoolifyStandin, token: str,
                                                                  key_uuid: str,
                                                                  provider: CoolifyServerProvider) -> None:
    created = provider.create(props(standin, token, key_uuid))
    flipped = provider.diff(created.id, created.outs,
                            props(standin, token, key_uuid, is_build_server=False, proxy_image=PIN,
                                  sablier_plugin_version="v1.3.0"))
    assert flipped.replaces == ["is_build_server"] and flipped.delete_before_replace is True

    # A run server's state from before this input existed: no `is_build_server` at all. Not a role change.
    run = {**props(standin, token, key_uuid, ip="10.0.2.21", name="run1", is_build_server=False,
                   proxy_image=PIN, sablier_plugin_version="v1.3.0")}
    old_state = {k: v for k, v in run.items() if k != "is_build_server"}
    run_created = provider.create(run)
    old_state["uuid"] = run_created.id
    diff = provider.diff(run_created.id, old_state, run)
    assert diff.replaces == [] and diff.changes is False
