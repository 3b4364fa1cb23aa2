"""Run-server registration against the Coolify stand-in (runbooks/gvisor-decision.md §4.5, review #5, #7, #9).

The stand-in keeps the proxy compose the way Coolify 4.3.11 does (database copy, rewritten to the node's file on
every start and restart), so the decisive property is observable: what InkMCP puts into Coolify survives a
restart, an edit of the file on the node does not.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import yaml

from inkmcp.coolify.client import CoolifyClient, CoolifyUnavailable
from inkmcp.coolify.proxy import COOLIFY_TRAEFIK_IMAGE, SABLIER_PLUGIN_MODULE, dump_compose, sablier_flags
from inkmcp.coolify.registration import RegistrationError, RunServerRegistration, reconcile, unregister
from inkmcp.coolify.spec import CoolifySpec
from tests.coolify.conftest import FAST
from tests.coolify_standin import CoolifyStandin

IP = "10.0.2.21"
PIN = "traefik:v3.6.23@sha256:" + "ab" * 32
FLAGS = sablier_flags("v1.3.0")
FAST_POLL = {"poll_interval": 0.01, "validation_timeout": 5.0}

# The muscle stack's proxy edit before this change (inkmcp/infra/muscle.py:223-227 at 2830189, sablier_script
# rendered with sablierPluginVersion v1.3.0; the same text is recorded in inkmcp/nodes/coolify_replay.yaml,
# operation sablier_start): grep for each flag, else sed it in after --providers.file.watch=true.
OLD_SED_EDIT = r"""
compose=/data/coolify/proxy/docker-compose.yml
changed=0
grep -qF -- '--experimental.plugins.sablier.modulename=github.com/sablierapp/sablier-traefik-plugin' "$compose" || { sed -i "s|^\(\s*\)- '\?--providers.file.watch=true'\?$|&\n\1- '--experimental.plugins.sablier.modulename=github.com/sablierapp/sablier-traefik-plugin'|" "$compose"; changed=1; }
grep -qF -- '--experimental.plugins.sablier.version=v1.3.0' "$compose" || { sed -i "s|^\(\s*\)- '\?--providers.file.watch=true'\?$|&\n\1- '--experimental.plugins.sablier.version=v1.3.0'|" "$compose"; changed=1; }
grep -qF -- 'sablier.version=v1.3.0' "$compose" || { echo "could not add the sablier plugin to $compose" >&2; exit 1; }
"""  # noqa: E501


def want(key_uuid: str, **over: object) -> RunServerRegistration:
    base: dict[str, object] = {"ip": IP, "private_key_uuid": key_uuid, "name": "run1",
                               "description": 'inkmcp:{"index": 1, "labels": {"tier": "standard"}}',
                               "proxy_image": PIN}
    return RunServerRegistration(**{**base, **over})  # type: ignore[arg-type]


def traefik(text: str) -> dict[str, object]:
    return yaml.safe_load(text)["services"]["traefik"]  # type: ignore[no-any-return]


def writes(standin: CoolifyStandin) -> list[str]:
    uuid_free = []
    for r in standin.writes():
        parts = r.path.split("/")
        uuid_free.append(f"{r.method} " + "/".join("{uuid}" if len(p) == 24 else p for p in parts))
    return uuid_free


def old_sed(standin: CoolifyStandin, ip: str) -> None:
    """Run the old edit for real (bash + sed) against the node's file."""
    script = OLD_SED_EDIT.replace("compose=/data/coolify/proxy/docker-compose.yml",
                                  f"compose={standin.proxy_file(ip)}")
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True, timeout=10)


async def test_first_run_registers_in_order_and_pins_the_proxy(standin: CoolifyStandin, client: CoolifyClient,
                                                               key_uuid: str) -> None:
    outcome = await reconcile(client, want(key_uuid), **FAST_POLL)

    assert outcome.steps() == ["create-server", "sentinel-off", "proxy-configuration", "validate", "proxy-restart"]
    assert writes(standin) == [
        "POST /api/v1/servers",
        "PATCH /api/v1/servers/{uuid}/sentinel",
        "PUT /api/v1/servers/{uuid}/proxy/configuration",
        "POST /api/v1/servers/{uuid}/validate",
        "POST /api/v1/servers/{uuid}/proxy/restart",
    ]
    create = standin.writes()[0].body
    assert create["instant_validate"] is False and create["ip"] == IP and create["private_key_uuid"] == key_uuid
    sentinel = next(r for r in standin.writes() if r.path.endswith("/sentinel"))
    assert sentinel.body == {"is_sentinel_enabled": False, "is_metrics_enabled": False}
    server = standin.server_by_ip(IP)
    assert server.settings["is_sentinel_enabled"] is False and server.settings["is_usable"] is True
    # What Coolify stores is what the node's file and the running proxy have: pinned, with Sablier.
    stored = server.proxy["last_saved_proxy_configuration"]
    assert outcome.proxy_configuration == stored == standin.proxy_file(IP).read_text()
    assert traefik(stored)["image"] == PIN
    assert traefik(stored)["command"][-2:] == FLAGS  # type: ignore[index]
    assert server.running_proxy == {"image": PIN, "command": traefik(stored)["command"]}
    assert server.proxy["last_applied_settings"] == server.proxy["last_saved_settings"]
    assert standin.request_violations == []


async def test_sentinel_is_off_before_coolify_validates(standin: CoolifyStandin, client: CoolifyClient,
                                                        key_uuid: str) -> None:
    """Validation makes a server functional, and Coolify starts Sentinel on functional servers: the PATCH must
    come first, and the server must not be validated at creation (instant_validate false)."""
    await reconcile(client, want(key_uuid), **FAST_POLL)
    log = [f"{r.method} {r.path.rsplit('/', 1)[-1]}" for r in standin.requests]
    assert log.index("PATCH sentinel") < log.index("POST validate")
    assert log.index("PUT configuration") < log.index("POST validate")
    patched = next(r for r in standin.requests if r.method == "PATCH" and r.path.endswith("/sentinel"))
    validated = next(r for r in standin.requests if r.path.endswith("/validate"))
    assert patched.at < validated.at


async def test_second_run_sends_no_write(standin: CoolifyStandin, client: CoolifyClient, key_uuid: str) -> None:
    await reconcile(client, want(key_uuid), **FAST_POLL)
    standin.reset_log()

    again = await reconcile(client, want(key_uuid), **FAST_POLL)

    assert again.writes == [] and not again.changed
    assert standin.writes() == []
    assert [r.method for r in standin.requests] == ["GET"] * len(standin.requests)
    assert standin.log() == [f"GET /api/v1/servers{s} 200" for s in
                             ("", f"/{again.uuid}/sentinel", f"/{again.uuid}/proxy", f"/{again.uuid}")]
    # The plan (what a pulumi preview asks) agrees, and sends nothing either.
    plan = await reconcile(client, want(key_uuid), apply=False)
    assert plan.writes == [] and standin.writes() == []


async def test_plan_of_a_new_server_lists_every_write_and_sends_none(standin: CoolifyStandin,
                                                                     client: CoolifyClient, key_uuid: str) -> None:
    plan = await reconcile(client, want(key_uuid), apply=False)
    assert plan.steps() == ["create-server", "sentinel-off", "proxy-configuration", "validate", "proxy-restart"]
    assert not plan.applied and standin.writes() == [] and standin.servers == {}


async def test_sed_on_disk_loses_the_flags_on_restart_the_api_keeps_them(standin: CoolifyStandin,
                                                                         client: CoolifyClient,
                                                                         key_uuid: str) -> None:
    """Review #7. Old: Coolify registered and started the proxy (its default compose in the DB), the muscle
    sed-edited the node's file and recreated the proxy from it. Coolify's next restart rewrites the file from the
    DB: the flags are gone from the file and from the running proxy. New: the same restart keeps them."""
    # --- old approach
    old = standin.add_server(IP, name="run1", usable=True)
    standin.start_proxy(old.uuid)  # Coolify's first start: default compose, DB copy + file
    old_sed(standin, IP)
    standin.compose_up_from_disk(IP)  # the old script's `docker compose up -d --force-recreate`
    assert all(f in standin.proxy_file(IP).read_text() for f in FLAGS)
    assert old.running_proxy is not None and old.running_proxy["command"][-2:] != FLAGS
    assert set(FLAGS) <= set(old.running_proxy["command"])  # running with the plugin, for now

    await client.restart_proxy(old.uuid)  # any restart: UI, API, Traefik update notice

    assert not any(f in standin.proxy_file(IP).read_text() for f in FLAGS)
    assert not set(FLAGS) & set(old.running_proxy["command"])
    assert old.running_proxy["image"] == COOLIFY_TRAEFIK_IMAGE  # and the moving tag is back (review #5)

    # --- new approach, same server, same kind of restart
    await reconcile(client, want(key_uuid), **FAST_POLL)
    await client.restart_proxy(old.uuid)
    standin.start_proxy(old.uuid)  # and Coolify's own start (validation in the UI, ServerCheckJob healing)

    text = standin.proxy_file(IP).read_text()
    assert traefik(text)["command"][-2:] == FLAGS and traefik(text)["image"] == PIN  # type: ignore[index]
    assert old.running_proxy["command"][-2:] == FLAGS and old.running_proxy["image"] == PIN
    assert standin.request_violations == []


async def test_existing_server_from_the_old_script_is_adopted(standin: CoolifyStandin, client: CoolifyClient,
                                                               key_uuid: str) -> None:
    """A node the old curl script registered (instant_validate true, Sentinel left on, Coolify's default proxy):
    no second server, the differing name/description patched, no validation needed, restart for the pin."""
    old = standin.add_server(IP, name="old-name", description="inkmcp:{}", usable=True)
    standin.start_proxy(old.uuid)
    outcome = await reconcile(client, want(key_uuid), **FAST_POLL)

    assert outcome.uuid == old.uuid and len(standin.servers) == 1
    assert outcome.steps() == ["update-server", "sentinel-off", "proxy-configuration", "proxy-restart"]
    patch = standin.writes()[0]
    assert patch.method == "PATCH" and patch.body == {"name": "run1", "description": want(key_uuid).description}
    assert old.running_proxy is not None and old.running_proxy["image"] == PIN


async def test_ui_reset_is_drift_that_the_next_run_repairs(standin: CoolifyStandin, client: CoolifyClient,
                                                            key_uuid: str) -> None:
    """"Reset proxy configuration" in Coolify's UI stores the default again (traefik:v3.6, no flags); the next
    reconcile (pulumi up) stores the pinned one and restarts, then is quiet again."""
    first = await reconcile(client, want(key_uuid), **FAST_POLL)
    assert first.uuid is not None
    standin.reset_proxy_configuration(first.uuid)
    standin.reset_log()
    plan = await reconcile(client, want(key_uuid), apply=False)
    assert plan.steps() == ["proxy-configuration", "proxy-restart"] and standin.writes() == []

    repaired = await reconcile(client, want(key_uuid), **FAST_POLL)

    assert repaired.steps() == ["proxy-configuration", "proxy-restart"]
    assert traefik(standin.proxy_file(IP).read_text())["image"] == PIN
    standin.reset_log()
    assert (await reconcile(client, want(key_uuid), **FAST_POLL)).writes == []


async def test_operator_edits_survive_and_an_old_plugin_version_is_replaced(standin: CoolifyStandin,
                                                                            client: CoolifyClient,
                                                                            key_uuid: str) -> None:
    first = await reconcile(client, want(key_uuid, sablier_plugin_version="v1.2.0"), **FAST_POLL)
    assert first.uuid is not None and first.proxy_configuration is not None
    doc = yaml.safe_load(first.proxy_configuration)
    doc["services"]["traefik"]["command"].insert(3, "--entrypoints.https.forwardedHeaders.trustedIPs=10.0.0.0/8")
    await client.save_proxy_configuration(first.uuid, dump_compose(doc))  # an operator's edit in Coolify

    upgraded = await reconcile(client, want(key_uuid), **FAST_POLL)

    assert upgraded.steps() == ["proxy-configuration", "proxy-restart"]
    command = traefik(standin.proxy_file(IP).read_text())["command"]
    assert "--entrypoints.https.forwardedHeaders.trustedIPs=10.0.0.0/8" in command  # type: ignore[operator]
    assert [c for c in command if "sablier" in c] == FLAGS  # type: ignore[union-attr]


async def test_a_stored_configuration_the_proxy_never_applied_gets_the_restart(standin: CoolifyStandin,
                                                                               client: CoolifyClient,
                                                                               key_uuid: str) -> None:
    """A run that stored the pinned compose but never reached the restart (e.g. interrupted): the next run sends
    no PUT, but Coolify reports saved != applied while running, so it restarts."""
    first = await reconcile(client, want(key_uuid), **FAST_POLL)
    assert first.uuid is not None
    server = standin.servers[first.uuid]
    server.proxy["last_applied_settings"] = "0" * 32  # what the proxy last started with differs
    standin.reset_log()

    resumed = await reconcile(client, want(key_uuid), **FAST_POLL)

    assert resumed.steps() == ["proxy-restart"]
    assert writes(standin) == ["POST /api/v1/servers/{uuid}/proxy/restart"]


async def test_a_token_without_read_sensitive_is_refused_with_the_fix(standin: CoolifyStandin,
                                                                      key_uuid: str, token: str) -> None:
    weak = standin.add_token("read", "write")
    async with CoolifyClient(standin.url, weak, retry=FAST) as c:
        with pytest.raises(RegistrationError, match="read:sensitive ability"):
            await reconcile(c, want(key_uuid), **FAST_POLL)
    assert "PUT" not in [r.method for r in standin.requests]
    async with CoolifyClient(standin.url, token, retry=FAST) as c:  # the right token continues from there
        done = await reconcile(c, want(key_uuid), **FAST_POLL)
    assert done.steps() == ["proxy-configuration", "validate", "proxy-restart"]


async def test_validation_failure_stops_before_the_restart(tmp_path: Path, spec: CoolifySpec) -> None:
    """Coolify reaches the node but validation fails (no Docker): Coolify's own log, as text, and no restart."""
    with CoolifyStandin(tmp_path, spec=spec, validation_delay=0.01, docker_missing=True) as standin:
        token = standin.add_token("read", "read:sensitive", "write")
        key = standin.add_private_key()
        async with CoolifyClient(standin.url, token, retry=FAST) as c:
            with pytest.raises(RegistrationError) as caught:
                await reconcile(c, want(key), poll_interval=0.01, validation_timeout=0.3)
        msg = str(caught.value)
        assert "did not validate" in msg and "Docker Engine is not installed" in msg and "<a" not in msg
        assert "Docker runs there" in msg
        assert writes(standin)[-1] == "POST /api/v1/servers/{uuid}/validate"  # nothing after it
        assert standin.response_violations == []


async def test_an_unreachable_node_fails_the_put_loudly(tmp_path: Path, spec: CoolifySpec) -> None:
    """Coolify writes the proxy file over SSH inside the PUT: an unreachable node is a 500 (retryable), and the
    run stops before validation and restart."""
    with CoolifyStandin(tmp_path, spec=spec, nodes_reachable=False) as standin:
        token = standin.add_token("read", "read:sensitive", "write")
        key = standin.add_private_key()
        async with CoolifyClient(standin.url, token, retry=FAST) as c:
            with pytest.raises(CoolifyUnavailable) as caught:
                await reconcile(c, want(key), **FAST_POLL)
        assert caught.value.retryable and caught.value.status == 500
        assert writes(standin)[-1] == "PUT /api/v1/servers/{uuid}/proxy/configuration"
        assert standin.response_violations == []


async def test_build_server_or_another_teams_ip_is_refused(standin: CoolifyStandin, client: CoolifyClient,
                                                           key_uuid: str) -> None:
    standin.add_server(IP, is_build_server=True)
    with pytest.raises(RegistrationError, match="is a build server"):
        await reconcile(client, want(key_uuid), **FAST_POLL)
    standin.add_server("10.0.2.22", team_id=9)
    with pytest.raises(RegistrationError, match="another team"):
        await reconcile(client, want(key_uuid, ip="10.0.2.22"), **FAST_POLL)
    assert standin.writes()[-1].status == 400


async def test_unregister_removes_once(standin: CoolifyStandin, client: CoolifyClient, key_uuid: str) -> None:
    done = await reconcile(client, want(key_uuid), **FAST_POLL)
    assert await unregister(client, done.uuid, IP) is True
    assert standin.servers == {}
    assert await unregister(client, done.uuid, IP) is False
    assert await unregister(client, None, IP) is False


def test_registration_refuses_an_unpinned_proxy_image() -> None:
    with pytest.raises(ValueError, match=r"proxy_image 'traefik:v3\.6' is not pinned by digest"):
        want("k", proxy_image="traefik:v3.6")
    with pytest.raises(ValueError, match="sablier_plugin_version 'latest'"):
        want("k", sablier_plugin_version="latest")


def test_the_put_body_is_base64_of_the_compose() -> None:
    from inkmcp.coolify.models import ProxyConfiguration

    body = ProxyConfiguration.from_yaml("services:\n  traefik: {}\n").body()
    assert base64.b64decode(body["configuration"]).decode() == "services:\n  traefik: {}\n"
    assert SABLIER_PLUGIN_MODULE in FLAGS[0]
