"""Register one run server (or the build server) in Coolify and converge its Sentinel and proxy settings, idempotently.

Decision record: runbooks/gvisor-decision.md §4.5 (review findings 5, 7, 9). One call of `reconcile` does, in
this order, and writes only what differs from what Coolify reports:

1. `GET /servers`; no server with the node's IP → `POST /servers` with `instant_validate: false` (validation
   comes after Sentinel is off and the proxy configuration is stored, so nothing Coolify starts on the node
   during validation runs an unpinned or unwanted container). A server with that IP (or the uuid registered
   before) → `PATCH` ip, name, description, port or user when they differ.
2. `GET /servers/{uuid}/sentinel`; on → `PATCH {"is_sentinel_enabled": false, "is_metrics_enabled": false}`.
   Sentinel defaults on, runs `--pid host` with the Docker socket and cannot reach the master from a run server
   (review #9); the node's selector refuses it, so it must never be asked for.
3. `GET /servers/{uuid}/proxy` (needs `read:sensitive`: the DB copy is returned only then) →
   `PUT /servers/{uuid}/proxy/configuration` with the stored compose (or Coolify's default when none is stored),
   `image` = the pinned digest and the Sablier flags appended (`inkmcp.coolify.proxy`), only when that differs.
4. `POST /servers/{uuid}/validate` when the server was just created or Coolify does not consider it usable, then
   poll `GET /servers/{uuid}` until it is (Coolify validates in a queued job).
5. `POST /servers/{uuid}/proxy/restart` only when step 3 wrote, or when Coolify reports a stored configuration
   that the running proxy has not applied yet (`proxy.last_saved_settings != last_applied_settings` while
   running, `Server::hasPendingProxyConfiguration`), e.g. after a run that stopped between 3 and 5.

A second run on a converged server sends GETs only. `reconcile(..., apply=False)` computes the same list of
writes without sending any (what `pulumi preview` shows as a diff).

What the API cannot do, and is therefore not here: the wildcard domain (no API field in 4.3.11; the muscle stack
writes it on the master) and the server's private key (not readable back; set at creation).

The build server (`BuildServerRegistration`, runbooks/gvisor-decision.md §4.4, review #3) goes through the same
`reconcile` with these differences, each from Coolify 4.3.11 (379abb2):

* created with `is_build_server: true` (`ServersController::create_server` stores it in the server's settings) and
  `proxy_type: "none"`: Coolify never starts a proxy on a build server (`StartProxy.php:19`, `CheckProxy.php:22-28`
  even drops its proxy state, `ValidateAndInstallServerJob.php:183`), and "none" keeps it so should the flag ever
  be cleared in the UI;
* no proxy step at all (3 and 5): the proxy endpoints do not refuse a build server (`ServerProxyController` has no
  build-server check), but what they would store is never used, so registration neither reads nor writes it;
* Sentinel is still switched off: a new server's settings default it on (migration 2025_06_16_123532), and although
  `StartSentinel.php:15` skips build servers, a setting that says "on" would be started by the first flip of the
  flag; `ServerSentinelController.php:196` refuses only *enabling* it on a build server;
* an existing server at the address must already be a build server. One registered as a run server is an error,
  not flipped with `PATCH {"is_build_server": true}`, although the API allows that for a server without resources
  (`ServersController.php:737-748`): the flip changes the flag only, so a proxy (and Sentinel) Coolify started
  there while it was a run server keep running on the build host, and a run server at the build server's address is
  more likely a wrong address than a missing checkbox. The message says how to remove it. The converse (a build
  server where a run server is wanted) is refused the same way.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inkmcp.coolify.client import CoolifyBadRequest, CoolifyClient, CoolifyError, CoolifyNotFound
from inkmcp.coolify.models import SENTINEL_OFF, Server, ServerCreate, ServerUpdate
from inkmcp.coolify.proxy import (
    check_pinned_image,
    check_plugin_version,
    dump_compose,
    parse_compose,
    pinned_compose,
    same_compose,
)

Step = Literal["create-server", "update-server", "sentinel-off", "proxy-configuration", "validate", "proxy-restart"]


class RegistrationError(Exception):
    """Registration cannot proceed; the message says what to change (never a token)."""


class RunServerRegistration(BaseModel):
    """What one run server must look like in Coolify."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ip: str = Field(min_length=1, description="the address Coolify reaches the node at over SSH (vSwitch IP)")
    private_key_uuid: str = Field(min_length=1, description="Coolify key (Keys & Tokens) authorised on the node")
    name: str = Field(min_length=1, max_length=255)
    description: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    proxy_image: str = Field(description="traefik:<version>@sha256:<digest>")
    sablier_plugin_version: str = "v1.3.0"

    @field_validator("proxy_image")
    @classmethod
    def _pinned(cls, v: str) -> str:
        return check_pinned_image(v, "proxy_image")

    @field_validator("sablier_plugin_version")
    @classmethod
    def _plugin(cls, v: str) -> str:
        return check_plugin_version(v, "sablier_plugin_version")


class BuildServerRegistration(BaseModel):
    """What the build server must look like in Coolify: a server with `is_build_server`, no proxy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ip: str = Field(min_length=1, description="the address Coolify reaches the build server at over SSH (private IP)")
    private_key_uuid: str = Field(min_length=1, description="Coolify key (Keys & Tokens) authorised on the host")
    name: str = Field(min_length=1, max_length=255)
    description: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"


Registration = RunServerRegistration | BuildServerRegistration


class Write(BaseModel):
    """One write registration sent (or, in a plan, would send)."""

    model_config = ConfigDict(frozen=True)

    step: Step
    detail: str


class Outcome(BaseModel):
    """What `reconcile` found and did. `writes` is empty when the server was already converged."""

    uuid: str | None
    writes: list[Write] = Field(default_factory=list)
    applied: bool = True
    proxy_configuration: str | None = None
    """The compose Coolify now stores (what the next proxy start writes to the node)."""

    @property
    def changed(self) -> bool:
        return bool(self.writes)

    def steps(self) -> list[Step]:
        return [w.step for w in self.writes]


async def find_server(client: CoolifyClient, ip: str) -> Server | None:
    """The team's server with this IP (Coolify allows one server per IP across the instance)."""
    for server in await client.list_servers():
        if server.ip == ip:
            return server
    return None


async def reconcile(client: CoolifyClient, want: Registration, *, apply: bool = True,
                    known_uuid: str | None = None, validation_timeout: float = 180.0,
                    poll_interval: float = 2.0) -> Outcome:
    """Converge one run server or the build server (see the module docstring). Raises `RegistrationError` or
    `CoolifyError`.

    `known_uuid`: the server registered before (e.g. from Pulumi state). When Coolify still has it, it is the
    server, even if its IP differs (then the IP is patched: a re-addressed node keeps its apps); otherwise the
    server is found by IP or created."""
    writes: list[Write] = []
    build = isinstance(want, BuildServerRegistration)

    def note(step: Step, detail: str) -> None:
        writes.append(Write(step=step, detail=detail))

    # 1. The server
    server = await _known(client, known_uuid) if known_uuid else None
    if server is None:
        server = await find_server(client, want.ip)
    created = server is None
    if server is None:
        note("create-server", f"POST /servers ip={want.ip} name={want.name}" + (" is_build_server" if build else ""))
        if not apply:
            planned: list[tuple[Step, str]] = [("sentinel-off", "PATCH sentinel off")]
            if isinstance(want, RunServerRegistration):
                planned.append(("proxy-configuration", f"PUT proxy configuration image={want.proxy_image}"))
            planned.append(("validate", "POST validate"))
            if not build:
                planned.append(("proxy-restart", "POST proxy restart"))
            for step, detail in planned:
                note(step, detail)
            return Outcome(uuid=None, writes=writes, applied=False)
        try:
            uuid = await client.create_server(ServerCreate(
                ip=want.ip, private_key_uuid=want.private_key_uuid, name=want.name, description=want.description,
                port=want.port, user=want.user, is_build_server=build, instant_validate=False,
                proxy_type="none" if build else "traefik"))
        except CoolifyBadRequest as e:
            if "already in use" in e.message:
                raise RegistrationError(
                    f"Coolify has a server with IP {want.ip} that this token's team cannot see (another team): "
                    "remove it there or use this team's token") from e
            raise
    else:
        uuid = server.uuid
        if server.settings.is_build_server and not build:
            raise RegistrationError(f"Coolify server {server.name!r} ({uuid}) at {server.ip} is a build server; a run "
                                    "server cannot share its address: fix the IP or remove that server in Coolify")
        if build and not server.settings.is_build_server:
            raise RegistrationError(
                f"Coolify server {server.name!r} ({uuid}) at {server.ip} is registered as a run server, not as a build "
                "server; registration does not flip it (Coolify would keep the proxy and Sentinel it may have "
                "started there running). If it is the build server registered by hand, delete it in Coolify "
                f"(Servers > {server.name} > Danger, or DELETE /api/v1/servers/{uuid}; Coolify refuses while it "
                "hosts resources: move them to a run server first), remove any coolify-proxy container on the build "
                "server, and run `pulumi up` again; otherwise fix the build server's address (build.ipOffset)")
        update = {k: v for k, v in (("ip", want.ip), ("name", want.name), ("description", want.description),
                                    ("port", want.port), ("user", want.user))
                  if v is not None and getattr(server, k) != v}
        if update:
            note("update-server", f"PATCH /servers/{uuid} {sorted(update)}")
            if apply:
                await client.update_server(uuid, ServerUpdate(**update))

    # 2. Sentinel off, before anything can make the server functional
    sentinel = await client.get_sentinel(uuid)
    if sentinel.is_sentinel_enabled or sentinel.is_metrics_enabled:
        note("sentinel-off", f"PATCH /servers/{uuid}/sentinel {SENTINEL_OFF.body()}")
        if apply:
            after = await client.update_sentinel(uuid, SENTINEL_OFF)
            if after.is_sentinel_enabled:
                raise RegistrationError(f"Coolify kept Sentinel on for {uuid} after PATCH is_sentinel_enabled=false")

    if isinstance(want, BuildServerRegistration):
        # No proxy on a build server (module docstring); only validation: Docker must answer over SSH.
        live = await client.get_server(uuid)
        if created or not live.usable:
            note("validate", f"POST /servers/{uuid}/validate")
            if apply:
                await client.validate_server(uuid)
                await wait_until_usable(client, uuid, timeout=validation_timeout, interval=poll_interval)
        return Outcome(uuid=uuid, writes=writes, applied=apply)

    # 3. The proxy configuration Coolify stores (and writes to the node on every start)
    proxy = await client.get_proxy(uuid)
    if not proxy.has_configuration_field:
        raise RegistrationError(
            f"GET /servers/{uuid}/proxy returned no `configuration`: the token cannot read sensitive data, so "
            "registration cannot see whether the proxy is pinned and loads Sablier. Use a token with the "
            "read:sensitive ability (or root) of a team admin")
    if (proxy.proxy_type or "").upper() not in ("TRAEFIK", ""):
        raise RegistrationError(f"Coolify server {uuid} runs proxy type {proxy.proxy_type}; InkMCP run servers need "
                                "Traefik (Sablier is a Traefik plugin): switch the proxy to Traefik in Coolify")
    desired = pinned_compose(proxy.configuration, want.proxy_image, want.sablier_plugin_version)
    stored = proxy.configuration
    wrote_proxy = not same_compose(stored, desired)
    if wrote_proxy:
        text = dump_compose(desired)
        note("proxy-configuration",
             f"PUT /servers/{uuid}/proxy/configuration image={want.proxy_image}"
             + (" (none stored before)" if parse_compose(stored) is None else ""))
        if apply:
            saved = await client.save_proxy_configuration(uuid, text)
            if saved.has_configuration_field and not same_compose(saved.configuration, desired):
                raise RegistrationError(f"Coolify stored a different proxy configuration for {uuid} than was sent")
            stored = text

    # 4. Validation (after Sentinel is off and the pinned configuration is stored)
    live = await client.get_server(uuid)
    if created or not live.usable:
        note("validate", f"POST /servers/{uuid}/validate")
        if apply:
            await client.validate_server(uuid)
            live = await wait_until_usable(client, uuid, timeout=validation_timeout, interval=poll_interval)

    # 5. Restart the proxy only when what it runs is not what Coolify stores
    pending = _pending_proxy(live)
    if wrote_proxy or pending:
        note("proxy-restart", f"POST /servers/{uuid}/proxy/restart"
             + (" (stored configuration not applied yet)" if pending and not wrote_proxy else ""))
        if apply:
            await client.restart_proxy(uuid)
    return Outcome(uuid=uuid, writes=writes, applied=apply, proxy_configuration=stored)


async def _known(client: CoolifyClient, uuid: str) -> Server | None:
    try:
        return await client.get_server(uuid)
    except CoolifyNotFound:
        return None


def _pending_proxy(server: Server) -> bool:
    """Coolify's `hasPendingProxyConfiguration` from the server's `proxy` object (`Server.php:861-870`): running,
    and the stored configuration's hash differs from the one last applied."""
    state = server.proxy or {}
    if state.get("status") != "running":
        return False
    saved, applied = state.get("last_saved_settings"), state.get("last_applied_settings")
    return bool(saved) and bool(applied) and saved != applied


async def wait_until_usable(client: CoolifyClient, uuid: str, *, timeout: float, interval: float) -> Server:
    """Poll `GET /servers/{uuid}` until Coolify's validation made the server usable, or fail with Coolify's own
    validation log after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        server = await client.get_server(uuid)
        if server.usable:
            return server
        if time.monotonic() >= deadline:
            logs = _plain(server.validation_logs) or "no validation log yet (is Coolify's queue worker running?)"
            raise RegistrationError(
                f"Coolify did not validate server {uuid} ({server.ip}) within {timeout:.0f} s: {logs}. Check that "
                "Coolify reaches the node over SSH with the registered key, and that Docker runs there")
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _plain(text: str | None) -> str:
    """Coolify's validation_logs are HTML (ValidateServer.php); a readable line for an error message."""
    if not text:
        return ""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text))).strip()


async def unregister(client: CoolifyClient, uuid: str | None, ip: str) -> bool:
    """Remove the server from Coolify. Gone already → False. Coolify refuses while it hosts resources (400
    "Server has resources."): that error is raised, so removing a node never orphans tenant apps."""
    target = uuid
    if target is None:
        found = await find_server(client, ip)
        target = found.uuid if found else None
    if target is None:
        return False
    try:
        await client.delete_server(target)
    except CoolifyError as e:
        if e.status == 404:
            return False
        raise
    return True
