"""The Coolify server dynamic provider (the muscle stack's registration step) against the Coolify stand-in.

Pulumi's mock runtime never calls a dynamic provider, so the provider is driven directly, the way the engine
does: check → create → diff → update → read → delete.
"""

from __future__ import annotations

import base64
from typing import Any

import dill
import pulumi
import pytest
from pulumi.dynamic.dynamic import serialize_provider

from inkmcp.coolify.client import CoolifyUnavailable
from inkmcp.infra.coolify_server_provider import CoolifyServerProvider
from tests.coolify.conftest import FAST
from tests.coolify_standin import CoolifyStandin
from tests.support import free_port

PIN = "traefik:v3.6.23@sha256:" + "cd" * 32


@pytest.fixture
def provider() -> CoolifyServerProvider:
    return CoolifyServerProvider(validation_timeout=5.0, poll_interval=0.01, http_timeout=5.0, retry=FAST)


def props(standin: CoolifyStandin, token: str, key: str, **over: Any) -> dict[str, Any]:
    # Floats on purpose: that is how integers arrive over Pulumi's wire.
    base = {"api_url": standin.url, "api_token": token, "ip": "10.0.2.21", "private_key_uuid": key,
            "name": "run1", "description": "inkmcp:{}", "port": 22.0, "user": "root", "proxy_image": PIN,
            "sablier_plugin_version": "v1.3.0"}
    return {**base, **over}


def test_create_registers_and_the_same_inputs_diff_to_nothing(standin: CoolifyStandin, token: str, key_uuid: str,
                                                              provider: CoolifyServerProvider) -> None:
    created = provider.create(props(standin, token, key_uuid))
    assert created.id in standin.servers and created.outs["uuid"] == created.id
    assert created.outs["port"] == 22 and created.outs["api_token"] == token
    standin.reset_log()

    diff = provider.diff(created.id, created.outs, props(standin, token, key_uuid))

    assert diff.changes is False and diff.replaces == []
    assert standin.writes() == [] and standin.requests  # it asked Coolify, with GETs only


def test_drift_in_coolify_shows_in_diff_and_update_repairs_it(standin: CoolifyStandin, token: str, key_uuid: str,
                                                              provider: CoolifyServerProvider) -> None:
    created = provider.create(props(standin, token, key_uuid))
    standin.reset_proxy_configuration(created.id)  # "Reset proxy configuration" in Coolify's UI
    standin.set_sentinel(created.id, True)

    assert provider.diff(created.id, created.outs, props(standin, token, key_uuid)).changes is True
    provider.update(created.id, created.outs, props(standin, token, key_uuid))

    server = standin.servers[created.id]
    assert server.settings["is_sentinel_enabled"] is False
    assert server.running_proxy is not None and server.running_proxy["image"] == PIN
    assert provider.diff(created.id, created.outs, props(standin, token, key_uuid)).changes is False


def test_changed_inputs_diff_without_asking_coolify(standin: CoolifyStandin, token: str, key_uuid: str,
                                                    provider: CoolifyServerProvider) -> None:
    created = provider.create(props(standin, token, key_uuid))
    standin.reset_log()
    diff = provider.diff(created.id, created.outs, props(standin, token, key_uuid, proxy_image=PIN[:-2] + "ef"))
    assert diff.changes is True and diff.replaces == [] and standin.requests == []
    unknown = props(standin, token, key_uuid, name=pulumi.runtime.rpc.UNKNOWN)
    assert provider.diff(created.id, created.outs, unknown).changes is True


def test_a_re_addressed_node_is_patched_not_re_registered(standin: CoolifyStandin, token: str, key_uuid: str,
                                                          provider: CoolifyServerProvider) -> None:
    created = provider.create(props(standin, token, key_uuid))
    standin.reset_log()
    updated = provider.update(created.id, created.outs, props(standin, token, key_uuid, ip="10.0.2.31"))
    assert updated.outs["ip"] == "10.0.2.31" and list(standin.servers) == [created.id]
    assert standin.servers[created.id].ip == "10.0.2.31"
    assert [(r.method, r.body) for r in standin.writes()] == [("PATCH", {"ip": "10.0.2.31"})]


def test_read_follows_coolify_and_delete_converges(standin: CoolifyStandin, token: str, key_uuid: str,
                                                   provider: CoolifyServerProvider) -> None:
    created = provider.create(props(standin, token, key_uuid))
    standin.servers[created.id].name = "renamed-in-ui"
    read = provider.read(created.id, created.outs)
    assert read.id == created.id and read.outs["name"] == "renamed-in-ui"
    assert provider.diff(created.id, read.outs, props(standin, token, key_uuid)).changes is True

    provider.delete(created.id, created.outs)
    assert standin.servers == {}
    provider.delete(created.id, created.outs)  # already gone: success
    assert provider.read(created.id, created.outs).id == ""


def test_check_refuses_bad_inputs_with_the_fix(standin: CoolifyStandin, token: str, key_uuid: str,
                                               provider: CoolifyServerProvider) -> None:
    bad = provider.check({}, props(standin, token, key_uuid, api_url="http://203.0.113.5:8000",
                                   proxy_image="traefik:v3.6"))
    reasons = {f.property: f.reason for f in bad.failures}
    assert "review finding 14" in reasons["api_url"]
    assert "not pinned by digest" in reasons["proxy_image"]
    preview = props(standin, token, key_uuid, ip=pulumi.runtime.rpc.UNKNOWN)
    assert provider.check({}, preview).failures == []  # unknown until apply: not a failure


def test_unreachable_coolify_names_the_setting(standin: CoolifyStandin, token: str, key_uuid: str,
                                               provider: CoolifyServerProvider) -> None:
    with pytest.raises(CoolifyUnavailable) as caught:
        provider.create(props(standin, token, key_uuid, api_url=f"http://127.0.0.1:{free_port()}"))
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "coolifyApiUrl" in notes and "SSH tunnel" in notes


def test_provider_pickles_without_secrets(standin: CoolifyStandin, token: str, key_uuid: str,
                                          provider: CoolifyServerProvider) -> None:
    provider.create(props(standin, token, key_uuid))
    blob = base64.b64decode(serialize_provider(provider))
    assert token.encode() not in blob and token.split("|")[1].encode() not in blob
    clone = dill.loads(blob)  # noqa: S301 - our own bytes, as the engine does
    assert clone.retry == provider.retry and clone.poll_interval == provider.poll_interval
