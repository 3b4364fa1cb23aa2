"""`inkmcp doctor`: is this Coolify fit to be InkMCP's production compute, and if not, what to fix.

Why a command of its own: every way production can be misconfigured shows up, without it, as a failed
`deploy_app` for some agent much later (a token without `deploy` fails at the first release, a server
that does not validate at the first placement on it, a run server whose Docker lost gVisor as its
default runtime runs tenants with the host kernel and nothing fails at all). The doctor asks each of
those questions once, up front, in the order their answers depend on each other, and prints for each
failure the setting or the Coolify screen that fixes it.

The checks only read, or make requests Coolify refuses before they change anything (an ability is
probed with a body the controller rejects: the ability middleware answers 403 first if it is
missing). The one check that creates something is the gVisor probe: one small application per run
server in a Coolify project of its own (`inkmcp-doctor`), deleted again when its answer is read.
The probe is judged from inside the container (the kernel release it reports: gVisor's is 4.4.0),
never from what Coolify or Docker say about the container.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from inkmcp.coolify.client import (
    CoolifyAuthError,
    CoolifyBadRequest,
    CoolifyClient,
    CoolifyError,
    CoolifyPermissionError,
    CoolifyUnavailable,
)
from inkmcp.coolify.models import ProjectCreate, Server

SUPPORTED_VERSIONS = re.compile(r"^4\.3\.\d+")
"""The Coolify versions whose API InkMCP's client and stand-in follow (the packaged spec is 4.3.11)."""

GVISOR_KERNEL = "4.4.0"
"""`uname -r` inside a gVisor sandbox (runsc reports this fixed Linux version whatever the host runs)."""

PROBE_PROJECT = "inkmcp-doctor"
PROBE_MARKER = re.compile(r"inkmcp-probe kernel=(?P<kernel>\S+)(?: sandbox=(?P<sandbox>\S+))?")
"""The line the probe image prints at start (see hardening/probe/Dockerfile)."""


class Status(StrEnum):
    ok = "ok"
    warn = "warn"  # works, but something should be looked at
    fail = "fail"  # InkMCP cannot work (or cannot work safely) until this is fixed
    skipped = "skipped"  # not checked because an earlier check failed


class Check(BaseModel):
    name: str
    status: Status
    detail: str = ""
    fix: str = Field(default="", description="what the operator does about it (empty when ok)")


class DoctorReport(BaseModel):
    checks: list[Check] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed (a skip follows a failure, or the operator's --no-probe)."""
        return not any(c.status == Status.fail for c in self.checks)

    def add(self, name: str, status: Status, detail: str = "", fix: str = "") -> Check:
        check = Check(name=name, status=status, detail=detail, fix=fix)
        self.checks.append(check)
        return check


class ProbeSettings(BaseModel):
    """How the gVisor probe runs. `image` must be pullable by every run server (our registry in
    production); it prints `PROBE_MARKER` with `uname -r` and then serves HTTP on `port`."""

    image: str = "registry.inkmcp.internal/inkmcp/probe"
    tag: str = "1"
    port: int = 8080
    timeout: float = Field(default=300.0, gt=0, description="seconds to wait for one server's probe answer")
    poll_initial: float = 1.0
    poll_max: float = 10.0


Sleep = Callable[[float], Awaitable[Any]]

REQUIRED_ABILITIES = ("read", "read:sensitive", "write", "deploy")
ABILITY_FIX = (
    "create a token with the abilities read, read:sensitive, write and deploy (or root) for a team admin in "
    "Coolify (Keys & Tokens → API tokens) and set it as INKMCP_COOLIFY_TOKEN"
)


async def check_reachable(client: CoolifyClient, report: DoctorReport) -> bool:
    try:
        await client.request("GET", "/health")
    except CoolifyUnavailable as e:
        report.add("coolify reachable", Status.fail, e.message,
                   f"check INKMCP_COOLIFY_URL ({client.base_url}) and that Coolify is up and reachable from here")
        return False
    except CoolifyError as e:
        report.add("coolify reachable", Status.fail, str(e),
                   "INKMCP_COOLIFY_URL must be Coolify's base URL (the API lives under /api/v1)")
        return False
    report.add("coolify reachable", Status.ok, client.base_url)
    return True


async def check_version(client: CoolifyClient, report: DoctorReport) -> bool:
    """Also the token check: /version needs a valid token with `read`."""
    try:
        response = await client.request("GET", "/version")
    except (CoolifyAuthError, CoolifyPermissionError) as e:
        report.add("token accepted", Status.fail, e.message, e.hint or ABILITY_FIX)
        return False
    except CoolifyError as e:
        report.add("coolify version", Status.fail, str(e), "see the message; the API may be disabled")
        return False
    version = response.text.strip().strip('"')
    report.add("token accepted", Status.ok)
    if SUPPORTED_VERSIONS.match(version):
        report.add("coolify version", Status.ok, version)
    else:
        report.add("coolify version", Status.warn, f"{version}; InkMCP follows Coolify 4.3.x's API",
                   "check the changelog for API changes, or run Coolify 4.3.x")
    return True


async def _probe_ability(client: CoolifyClient, method: str, path: str, body: Any) -> bool | None:
    """True if the ability middleware let the request through (the controller then refused the body),
    False on 403 "Missing required permissions", None if the answer says nothing either way."""
    try:
        await client.request(method, path, json=body, idempotent=False)
    except CoolifyPermissionError as e:
        return False if "permission" in e.message.lower() or "role" in e.message.lower() else None
    except CoolifyError as e:
        return True if e.status in (400, 404, 422) else None
    return True


async def check_abilities(client: CoolifyClient, report: DoctorReport) -> bool:
    missing: list[str] = []
    unknown: list[str] = []
    # write: POST /projects with no name → 422 (or 400 "Empty JSON") after the ability check; nothing created.
    # deploy: POST /deploy with neither uuid nor tag → 400 "You must provide uuid or tag." after the check.
    for ability, method, path, body in (("write", "POST", "/projects", {}), ("deploy", "POST", "/deploy", None)):
        passed = await _probe_ability(client, method, path, body)
        if passed is False:
            missing.append(ability)
        elif passed is None:
            unknown.append(ability)
    # read:sensitive: without it (or without an admin role) Coolify hides private_key in key listings,
    # and equally env values and deployment logs, which InkMCP must read.
    try:
        keys = (await client.request("GET", "/security/keys")).json()
    except CoolifyError:
        keys = None
    if isinstance(keys, list) and keys:
        if not any(isinstance(k, dict) and "private_key" in k for k in keys):
            missing.append("read:sensitive")
    else:
        unknown.append("read:sensitive")
    if missing:
        report.add("token abilities", Status.fail, f"missing: {', '.join(missing)}", ABILITY_FIX)
        return False
    if unknown:
        report.add("token abilities", Status.warn, f"could not tell: {', '.join(unknown)}",
                   "make sure the token has them; deployments fail at the first step needing one otherwise")
        return True
    report.add("token abilities", Status.ok, ", ".join(REQUIRED_ABILITIES))
    return True


async def check_servers(client: CoolifyClient, report: DoctorReport) -> list[Server]:
    """Every server validates; the run servers (not the build server) are returned for the probe."""
    try:
        servers = await client.list_servers()
    except CoolifyError as e:
        report.add("servers", Status.fail, str(e), "see the message")
        return []
    run = [s for s in servers if not s.settings.is_build_server]
    if not run:
        report.add("servers", Status.fail, "Coolify has no run server",
                   "register the run servers (the muscle stack does it: `pulumi up` in stacks/muscle)")
        return []
    usable: list[Server] = []
    for server in servers:
        role = "build server" if server.settings.is_build_server else "run server"
        name = f"{role} {server.name or server.uuid} ({server.ip})"
        if server.usable:
            report.add(name, Status.ok, "validated (reachable, usable)")
            if not server.settings.is_build_server:
                usable.append(server)
            continue
        why = "force-disabled" if server.settings.force_disabled else (
            "not reachable over SSH" if not server.settings.is_reachable else "not usable (Docker missing?)")
        logs = (server.validation_logs or "").strip()
        report.add(name, Status.fail, why + (f": {logs[:300]}" if logs else ""),
                   f"fix the node, then validate it in Coolify (Servers → {server.name or server.uuid} → Validate) "
                   "or run `inkmcp nodes check` against it")
    return usable


class GvisorProbe:
    """One probe application per run server; judged from the kernel release the container reports."""

    def __init__(self, client: CoolifyClient, settings: ProbeSettings | None = None, *,
                 sleep: Sleep = asyncio.sleep) -> None:
        self._client = client
        self._settings = settings or ProbeSettings()
        self._sleep = sleep

    async def _project(self) -> tuple[str, str]:
        """The doctor's own Coolify project and its `production` environment (uuid), made on first use."""
        project = next((p for p in await self._client.list_projects() if p.name == PROBE_PROJECT), None)
        uuid = project.uuid if project else await self._client.create_project(
            ProjectCreate(name=PROBE_PROJECT, description="InkMCP doctor's gVisor probes"))
        env = await self._client.get_environment(uuid, "production")
        return uuid, env.uuid or ""

    async def run(self, server: Server) -> tuple[Status, str]:
        s = self._settings
        project, environment = await self._project()
        # The spec lists environment_name and environment_uuid as required (NOTES.md: send both). No typed
        # method: InkMCP creates dockerimage applications only here, so the body is written out.
        body = {
            "project_uuid": project, "server_uuid": server.uuid, "environment_name": "production",
            "environment_uuid": environment, "docker_registry_image_name": s.image,
            "docker_registry_image_tag": s.tag, "ports_exposes": str(s.port),
            "name": f"inkmcp-probe-{server.uuid[:8]}", "instant_deploy": True,
        }
        app = (await self._client.request("POST", "/applications/dockerimage", json=body, idempotent=False)).json()
        app_uuid = str(app["uuid"])
        try:
            deadline = time.monotonic() + s.timeout
            wait = s.poll_initial
            while True:
                for line in await self._logs(app_uuid):
                    m = PROBE_MARKER.search(line)
                    if m:
                        kernel = m.group("kernel")
                        if kernel == GVISOR_KERNEL:
                            return Status.ok, f"probe ran under gVisor (kernel {kernel} inside the container)"
                        return Status.fail, (f"probe ran with the HOST kernel {kernel}: tenants on this server are "
                                             "not sandboxed")
                if time.monotonic() + wait > deadline:
                    return Status.fail, f"the probe printed nothing within {s.timeout:.0f} s"
                await self._sleep(wait)  # polling a remote job with backoff, not a synchronisation
                wait = min(s.poll_max, wait * 2)
        finally:
            await self._client.delete_application(app_uuid, missing_ok=True)

    async def _logs(self, app: str) -> list[str]:
        try:
            return (await self._client.application_logs(app, lines=50)).splitlines()
        except CoolifyBadRequest:
            return []  # "Application is not running." yet


async def check_gvisor(probe: GvisorProbe, servers: list[Server], report: DoctorReport) -> None:
    results = await asyncio.gather(*(probe.run(s) for s in servers), return_exceptions=True)
    for server, result in zip(servers, results, strict=True):
        name = f"gVisor on {server.name or server.uuid} ({server.ip})"
        if isinstance(result, BaseException):
            report.add(name, Status.fail, f"the probe could not run: {result}",
                       f"check that the server pulls {probe._settings.image}:{probe._settings.tag} "
                       "(the probe image must be in the registry the run servers use)")
            continue
        status, detail = result
        fix = "" if status == Status.ok else (
            "harden the node again (`inkmcp nodes harden`, or `pulumi up` in stacks/muscle) and check "
            "`inkmcp nodes check`: Docker's default runtime must be InkMCP's selector")
        report.add(name, status, detail, fix)


async def run_doctor(client: CoolifyClient, *, probe: GvisorProbe | None = None) -> DoctorReport:
    """All checks, in dependency order; a check whose premise failed is reported as skipped."""
    report = DoctorReport()
    if not await check_reachable(client, report):
        return _skip(report, "token accepted", "token abilities", "servers", "gVisor")
    if not await check_version(client, report):
        return _skip(report, "token abilities", "servers", "gVisor")
    abilities_ok = await check_abilities(client, report)
    servers = await check_servers(client, report)
    if probe is None:
        report.add("gVisor", Status.skipped, "not asked for (--no-probe)")
    elif not abilities_ok:
        report.add("gVisor", Status.skipped, "the token cannot create the probe (see token abilities)")
    elif servers:
        await check_gvisor(probe, servers, report)
    return report


def _skip(report: DoctorReport, *names: str) -> DoctorReport:
    for name in names:
        report.add(name, Status.skipped, "an earlier check failed")
    return report


# --- proxy6: the local provider's front proxy (issue 12): is InkMCP's nginx module built for the nginx that runs
def check_local_proxy(report: DoctorReport, *, required: bool = False) -> Check:
    """What the local provider's proxy will run: nginx with InkMCP's module (ok), or the headers-more config and
    why (warn: same answers, ~1,500 instructions a request more), or nothing it can start (warn beside Coolify,
    which does not need it; fail when `required`, the local provider's own doctor: `serve` cannot start)."""
    import os

    from inkmcp.providers.compute.local import nginx_module
    from inkmcp.providers.compute.local.nginx import ProxySettings

    name = "local proxy (nginx module)"
    cannot = Status.fail if required else Status.warn  # --- mender8: the local provider needs a proxy it can start
    settings = ProxySettings()
    if settings.engine == "python":
        return report.add(name, Status.skipped, "INKMCP_PROXY_ENGINE=python: InkMCP's asyncio proxy, no nginx")
    if not os.access(settings.nginx, os.X_OK):
        return report.add(name, cannot, f"no nginx at {settings.nginx}: the local provider cannot start its "
                          "proxy", "run `make install` as root, or point INKMCP_PROXY_NGINX at nginx")  # fmt: skip
    if settings.module == "off":
        return report.add(name, Status.ok, "INKMCP_PROXY_MODULE=off: the headers-more config (same answers)")
    found = nginx_module.find(settings.nginx)
    if found.path is not None:
        return report.add(name, Status.ok, f"InkMCP's nginx module loaded: {found.path}")
    more = "" if settings.headers_more.is_file() else (
        f"; headers-more is missing too ({settings.headers_more}): the proxy cannot start")
    status = cannot if more else Status.warn
    return report.add(name, status, f"the proxy runs the headers-more config (same answers, ~1,500 instructions "
                      f"a request more): {found.reason}{more}", nginx_module.HOW_TO_BUILD)  # fmt: skip
# --- end
