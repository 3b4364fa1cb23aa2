"""LocalComputeProvider: build and run services as processes on this machine.

One service = one `_Service` holding the live release and its current run. Two locks per service
keep things simple: `release_lock` serialises whole pipelines (release, update_env, restore), which
may take minutes to build; `run_lock` serialises the short process-state changes (switch, sleep,
wake, remove), so a request waking an on_demand service never waits for someone else's build.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd  # --- svcports
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping  # Awaitable, Callable: issue 13 (credits) wake_gate
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from inkmcp.build import static_output
from inkmcp.build.buildpack import python_shim, run_build
from inkmcp.build.hints import runtime_hint  # --- newuser2
from inkmcp.build.plan import BuildPlan, Mode, RunAs
from inkmcp.build.process import DEFAULT_MAX_FILE_BYTES, TenantSandbox, private_tmp_conflict
from inkmcp.build.source import SourceWorkspace
from inkmcp.errors import BuildFailed, InvalidArgument, ProviderError, register_server_paths, scrub_paths
from inkmcp.providers.compute.base import (
    EnvChange,
    EnvOutcome,
    LogScope,
    ProcessRuntime,
    ProgressCallback,
    ProviderRefused,
    Record,
    ReleaseFailed,
    ReleaseRequest,
    ReleaseResult,
    ReleaseSpec,
    RuntimeState,
    ServiceKey,
    ServiceRuntime,
    Step,
)
from inkmcp.providers.compute.local import (
    bindguard,  # --- svcports: tenants bind only their own ports
    loopguard,  # --- loopback: tenants connect only to their own listeners
    sockguard,  # --- redteam6: an account holds a bounded share of the ephemeral ports
)
from inkmcp.providers.compute.local.diskquota import ProjectDisks  # --- quota: a filesystem per project
from inkmcp.providers.compute.local.egress import Denied, DeniedWatcher, converge  # --- egress: tenants' connections
from inkmcp.providers.compute.local.layout import ProjectLayout, ServiceLayout, prepare_data_dir
from inkmcp.providers.compute.local.limits import DEFAULT_PIDS_MAX, CgroupKillError, Cgroups, LimitWatch
from inkmcp.providers.compute.local.logs import OutputBudget, RotatingLog, tail_lines
from inkmcp.providers.compute.local.nginx import make_proxy
from inkmcp.providers.compute.local.ports import NoFreePort, PortAllocator, port_is_free
from inkmcp.providers.compute.local.proxy import Route, RouteConflict, WakeFailed
from inkmcp.providers.compute.local.readiness import LiveSettings
from inkmcp.providers.compute.local.release import STATIC_PROCESS, HealthFailed, ReleaseMeta, ReleaseRun, inside
from inkmcp.providers.compute.local.spawn import confinement, discard_prepared, prepare_start  # --- wake
from inkmcp.providers.compute.local.spawn import prepare as prepare_spawn
from inkmcp.providers.compute.local.supervisor import (
    Backoff,
    ProcessConfig,
    ProcState,
    Supervisor,
    reap_stale,
    run_once,
)
from inkmcp.providers.compute.local.tenant_env import tenant_env
from inkmcp.providers.compute.local.users import (
    delete_project_user,
    ensure_project_user,
    project_user_name,
    restrict_schedulers,
)
from inkmcp.safefs import chown_private_tree, ensure_owned_dir, is_dir_beneath, move_into, tree_bytes

log = logging.getLogger(__name__)

ERROR_TAIL = 15
RELOAD_WAIT = 10.0  # --- redteam2 (portguard): seconds a crashed run's port stays held for nginx's reload
DRAIN_TIMEOUT = 2.0  # seconds a blue/green switch waits for connections still on the old version
HEALTH_PROGRESS_EVERY = 10.0  # seconds between two "still waiting" lines while a release's health check runs
RUNTIME_LOGS = "get_logs(scope='runtime') shows all of it"  # where a crash after the build is explained
# How this provider's paths show to agents (errors, logs, build output): relative to what they know.
SHOWN_PATHS = (
    (r"services/[^/\s]+/releases/[^/\s]+/src", "."),  # the checkout, built in place: the repo's root
    (r"services/[^/\s]+/releases/[^/\s]+", "."),
    (r"services/[^/\s]+/venvs/[^/\s]+", ".venv"),
    (r"services/[^/\s]+/tmp", "/tmp"),  # noqa: S108 (shown, not used): the service's /tmp in its sandbox
    (r"homes/[^/\s]+", "~"),
    (r"projects/[^/\s]+/cache", "~/.cache"),
    (r"projects/[^/\s]+/mirrors/[^/\s]+", "<repository>"),
    (r"bin", "/usr/local/bin"),  # the python shims
)


@dataclass(eq=False)
class _Live:
    """The release serving a service: its metadata, its env (in memory only) and its run, if awake."""

    meta: ReleaseMeta
    env: dict[str, SecretStr] = field(repr=False)
    env_revision: str = ""
    run: ReleaseRun | None = None


@dataclass(eq=False)
class _Service:
    key: ServiceKey
    mode: Mode
    run_as: RunAs | None
    home: str
    layout: ServiceLayout
    log: RotatingLog
    output: OutputBudget  # its account's: every process's and build's own budget draws on it (logs.py)
    release_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    run_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    live: _Live | None = None
    route: Route | None = None
    wake_task: asyncio.Task[int] | None = None
    removed: bool = False
    prepared: tuple[str, ...] | None = None  # the confinement its prepared start waits under (spawn.prepare_start)
    retiring: set[asyncio.Task[None]] = field(default_factory=set)  # previous versions stopping after a switch

    @property
    def always_on(self) -> bool:
        return self.mode != Mode.on_demand


class LocalComputeProvider:
    """ComputeProvider running tenant processes on this machine behind one host-routing proxy.

    Everything it needs to find a service again lives on this machine (files under `data_dir`,
    processes), keyed by core's ids, so it records no refs: `record` is never called.
    """

    name = "local"
    needs_checkout = True  # builds from the checkout core fetched with the project's user
    rebuilds_same_commit = True  # every deployment runs its build (newuser6)

    def __init__(
        self,
        data_dir: Path,
        *,
        proxy_host: str = "127.0.0.1",
        proxy_port: int = 8080,
        domain: str = "localhost",
        idle_timeout: float = 300.0,
        health_timeout: float = 60.0,
        build_timeout: float = 900.0,
        tenant_python: str = "/usr/bin/python3",
        stop_grace: float = 10.0,
        backoff: Backoff | None = None,
        port_range: tuple[int, int] = (20000, 30000),
        pids_max: int = DEFAULT_PIDS_MAX,
        max_file_mb: int = DEFAULT_MAX_FILE_BYTES // 2**20,
        max_build_mb: int = 4096,
        max_disk_mb: int = 0,  # --- quota: per project (diskquota.py); 0 = not limited (INKMCP_MAX_DISK_MB sets it)
        disk_reserve_mb: int = 2048,  # --- quota: host space new projects' disks never promise away
        disk_overcommit: float = 1.0,  # --- quota: > 1 promises more than the disk holds (thin provisioning)
        stability_window: float | None = None,
        first_deploy_settle: float | None = None,
    ) -> None:
        """`stability_window`: seconds every process of a new release must stay up before it replaces a
        serving previous version; `first_deploy_settle`: the same when nothing serves (a first deploy),
        capped at the window (None: INKMCP_STABILITY_WINDOW, INKMCP_FIRST_DEPLOY_SETTLE, `readiness.LiveSettings`)."""
        self.data_dir = Path(data_dir)
        self._account_output: dict[str, OutputBudget] = {}  # per account: all its output together is paced
        register_server_paths(self.data_dir, SHOWN_PATHS)
        self.domain = domain.lower().strip(".")
        self.idle_timeout = idle_timeout
        self.health_timeout = health_timeout
        if stability_window is None or first_deploy_settle is None:
            settings = LiveSettings()
            stability_window = settings.stability_window if stability_window is None else stability_window
            first_deploy_settle = settings.first_deploy_settle if first_deploy_settle is None else first_deploy_settle
        window, settle = stability_window, first_deploy_settle
        if not 0 <= window < health_timeout:
            raise InvalidArgument(
                f"the stability window ({window:g}s) must be at least 0 and shorter than the health timeout "
                f"({health_timeout:g}s)", argument="INKMCP_STABILITY_WINDOW",
                fix="set INKMCP_STABILITY_WINDOW to a few seconds (default 3), below INKMCP_HEALTH_TIMEOUT",
            )  # fmt: skip
        self.stability_window = window
        if settle < 0:
            raise InvalidArgument(f"the first-deploy settle ({settle:g}s) must be at least 0",
                                  argument="INKMCP_FIRST_DEPLOY_SETTLE", fix="set INKMCP_FIRST_DEPLOY_SETTLE to 1")
        self.first_deploy_settle = min(settle, window)
        self.build_timeout = build_timeout
        self.tenant_python = tenant_python
        self.stop_grace = stop_grace
        self.backoff = backoff or Backoff()
        self.limits = Cgroups(pids_max=pids_max)
        self.max_file_bytes = max_file_mb * 2**20  # RLIMIT_FSIZE of every tenant process
        self.max_build_bytes = max_build_mb * 2**20  # what one release may keep on disk
        # --- quota: every tenant-writable leaf on a filesystem of its project's own, of max_disk_mb
        self.disks = ProjectDisks(self.data_dir, size_mb=max_disk_mb, reserve_mb=disk_reserve_mb,
                                  overcommit=disk_overcommit)
        # --- end
        self.proxy = make_proxy(proxy_host, proxy_port, wake_timeout=health_timeout + 5.0,
                                runtime_dir=self.data_dir / "proxy")  # nginx, or Python (INKMCP_PROXY_ENGINE)
        self.ports = PortAllocator(port_range)
        self._services: dict[str, _Service] = {}
        self._service_create = asyncio.Lock()
        self._idle_task: asyncio.Task[None] | None = None
        self._root = _is_root()
        self._closing = False  # set by close(): no wake may start a service any more
        self._recoveries: set[asyncio.Task[None]] = set()  # --- redteam2 (portguard): restarts on a new port
        self._started = False  # --- mender7: start() mounted the projects' filesystems (see _offline_files)
        self.shim_dir = self.data_dir / "bin"  # root 0755: `python` for apps without a venv
        # --- issue 13 (credits): asked before each wake; a text refuses it (the proxy answers 402 with it)
        self.wake_gate: Callable[[ServiceKey], Awaitable[str | None]] | None = None
        # --- end
        self._egress: DeniedWatcher | None = None  # --- egress: started by start() as root
        # --- svcports: the bind guard (bindguard.py), opened by start(); the (uid, port) each run was granted
        self._binds: bindguard.BindGuard | None = None
        self._bind_grants: dict[int, tuple[int, int]] = {}  # id(run) -> (uid, port), until _stop_run
        # --- end
        self._loop: loopguard.LoopbackGuard | None = None  # --- loopback: opened by start() beside the bind guard
        self._socks: sockguard.SocketGuard | None = None  # --- redteam6: opened by start() (sockguard.py)
        self.mcp_port: int | None = None  # --- loopback: the MCP server's port (app.py), refused to tenants

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        conflict = private_tmp_conflict(self.data_dir) if self._root else None
        if conflict is not None:  # tenants would see their private /tmp instead of their files: refuse at start
            raise InvalidArgument(conflict, argument="INKMCP_DATA_DIR", fix="set INKMCP_DATA_DIR=/var/lib/inkmcp")
        await asyncio.to_thread(prepare_data_dir, self.data_dir, root=self._root)
        # --- quota: the projects' filesystems back before anything looks into services/ or homes/
        if self.disks.enforced:
            mounted = await asyncio.to_thread(self.disks.mount_all)
            log.info("disk per project: %s MiB (INKMCP_MAX_DISK_MB); %d project filesystems mounted",
                     self.disks.size_mb, mounted)
        else:
            log.warning("tenant disk usage is NOT limited (%s): one project can fill this machine's disk; run "
                        "InkMCP as root with INKMCP_MAX_DISK_MB > 0 to give each project a filesystem of its own",
                        self.disks.reason)
        # --- end
        self._started = True
        if self._root:  # tenant users must not schedule jobs that run outside their sandbox (cron, at)
            await asyncio.to_thread(restrict_schedulers)
        if self._root:  # --- egress: what tenants may connect to (egress.py), before any tenant process starts
            self._egress = await converge(self._egress_refused)
        await asyncio.to_thread(python_shim, self.shim_dir, self.tenant_python)
        await asyncio.to_thread(prepare_spawn, self.shim_dir)  # the exec wrapper, built before the first wake
        await asyncio.to_thread(self._reap_stale)
        if self._root:  # --- svcports: before any tenant process starts (the leftovers are gone: _reap_stale)
            self._binds = await asyncio.to_thread(bindguard.open_guard)
            self._loop = await asyncio.to_thread(loopguard.open_guard, self._binds)  # --- loopback
            self._socks = await asyncio.to_thread(sockguard.open_guard)  # --- redteam6
            self._socks_limit()
        await self.proxy.start()
        if self._loop is not None:  # --- loopback: what every tenant may reach on this machine (the proxy's port known)
            self._loop.open_ports(self._open_loopback_ports())
            self._loop.open_others(loopguard.mode() != "strict")
            self._loop_closed()
        if self._root:  # --- loopback: what `inkmcp doctor` reads (the hooks live in this process only)
            await asyncio.to_thread(self._write_guards)
        self._idle_task = asyncio.create_task(self._idle_loop(), name="local-idle")

    def _egress_refused(self, denied: Denied) -> None:  # --- egress: once per refusal, in the project's logs
        for svc in list(self._services.values()):
            if svc.run_as is not None and svc.run_as.uid == denied.uid and not svc.removed:
                run = svc.live.run if svc.live else None
                svc.log.write(f"{run.supervisors[0].name if run and run.supervisors else 'web'} | [inkmcp] "
                              f"{denied.message()}")

    def _reap_stale(self) -> None:
        for run_dir in (self.data_dir / "services").glob("*/run"):
            reap_stale(run_dir)
        self._kill_leftovers()  # a crashed InkMCP ran no close(): its tenants' daemons may hold its ports

    def _kill_leftovers(self) -> None:
        """Kill whatever is left in every service's cgroups (blocking; at close and at start).

        Stopping a service's supervisors ends its process families, not a double-forked `setsid` daemon:
        one lived on after InkMCP stopped, bound the MCP server's port the moment it was free and read the
        next agent's `Authorization: Bearer` key (red team 2026-12-01). On restart InkMCP would have failed
        with "address in use", or, on another port, left the squatter to whoever trusted the old one.
        The daemon stays in its service's cgroup, so killing the groups whole (as `remove` does) ends it.
        """
        for service_dir in (self.data_dir / "services").iterdir() if (self.data_dir / "services").is_dir() else ():
            for group in (service_dir.name, _build_group(service_dir.name)):
                try:
                    self.limits.kill_all(group)
                except (CgroupKillError, OSError) as exc:
                    log.warning("could not end the processes left in cgroup %s: %s", group, exc)

    async def close(self) -> None:
        self._closing = True
        self._started = False
        if self._egress is not None:  # --- egress: the rules stay in the kernel; only the log watcher stops
            await self._egress.stop()
            self._egress = None
        if self._idle_task is not None:
            self._idle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle_task
            self._idle_task = None
        services = list(self._services.values())
        for svc in services:
            if svc.wake_task is not None and not svc.wake_task.done():
                svc.wake_task.cancel()
        for task in list(self._recoveries):  # --- redteam2 (portguard): each stops the run it was starting
            task.cancel()
        await asyncio.gather(*self._recoveries, return_exceptions=True)
        await asyncio.gather(*(self._stop_service(svc) for svc in services), return_exceptions=True)
        await self._discard_prepared(services)  # --- wake: prepared starts end too
        await asyncio.to_thread(self._kill_leftovers)
        # The proxy's port is given up last: while nginx holds it no tenant process can bind it, and by now none
        # is left that could (a daemon waiting for it got every request sent to the old URLs until the restart).
        # Meanwhile a request for a stopped on_demand service is refused (`_do_wake`), not a new start.
        await self.proxy.close()
        for svc in services:
            svc.log.close()
        self._services.clear()
        await asyncio.to_thread(self.disks.unmount_all)  # --- quota: every mount of this data dir, by exact path
        if self._loop is not None:  # --- loopback: its hooks read the bind guard's map: they go first
            self._loop.close()
            self._loop = None
        with contextlib.suppress(OSError):  # --- loopback: nothing of this process is attached any more
            (self.data_dir / self.GUARDS_FILE).unlink()
        if self._socks is not None:  # --- redteam6: no tenant process is left
            self._socks.close()
            self._socks = None
        if self._binds is not None:  # --- svcports: no tenant process is left: the hook goes (bindguard.py)
            self._binds.close()
            self._binds = None
            self._bind_grants.clear()

    async def _stop_service(self, svc: _Service) -> None:
        async with svc.run_lock:
            run = svc.live.run if svc.live else None
            if svc.live is not None:
                svc.live.run = None
            if svc.route is not None:
                svc.route.port = None
        if run is not None:
            await self._stop_run(run)
        await self._retired(svc)

    async def _stop_run(self, run: ReleaseRun) -> None:
        await run.stop(self.stop_grace)
        self.ports.release(run.port)
        granted = self._bind_grants.pop(id(run), None)  # --- svcports: its processes are gone, so is its port
        if granted is not None and self._binds is not None:
            self._binds.revoke(*granted)

    # -- naming --------------------------------------------------------------------------------

    def host_for(self, key: ServiceKey) -> str:
        return f"{key.service_name}.{key.project_name}.{self.domain}".lower()

    def url_for(self, key: ServiceKey) -> str:
        """The URL a routed service answers at (not part of the contract: core gets it from release)."""
        port = self.proxy.port
        suffix = "" if port == 80 else f":{port}"
        return f"http://{self.host_for(key)}{suffix}"

    # -- sources -------------------------------------------------------------------------------

    async def source_workspace(self, project_id: str) -> SourceWorkspace:
        """The project's own git mirrors, fetched with its user's rights (created on first use)."""
        run_as = await ensure_project_user(project_id, self.data_dir / "homes")
        self._bind_mark(run_as)  # --- svcports
        await self._project_disk(project_id, run_as)  # --- quota: the mirrors are on the project's filesystem
        layout = ProjectLayout(self.data_dir, project_id)
        await asyncio.to_thread(layout.prepare, run_as)
        return SourceWorkspace(mirrors_dir=layout.mirrors, locks_dir=layout.locks, run_as=run_as)

    # --- quota: see diskquota.py
    async def _project_disk(self, project_id: str, run_as: RunAs | None, service_root: Path | None = None) -> None:
        """Mount the project's filesystem and put its HOME (and `service_root`) on it; no-op when disks are not
        enforced. Raises ProviderError with the reason (a new disk the host cannot hold says what to do)."""
        if not self.disks.enforced:
            return
        home = self.data_dir / "homes" / project_user_name(project_id)
        try:
            await asyncio.to_thread(self.disks.bind_home, project_id, home, run_as)
            if service_root is not None:
                await asyncio.to_thread(self.disks.bind_service, project_id, service_root)
        except OSError as exc:
            raise ProviderError(f"could not mount the project's disk: {exc}") from exc
    # --- end

    # -- service registry ----------------------------------------------------------------------

    async def _service(self, request: ReleaseSpec) -> _Service:
        key = request.key
        async with self._service_create:
            svc = self._services.get(key.service_id)
            if svc is None:
                run_as = await ensure_project_user(key.project_id, self.data_dir / "homes")
                self._bind_mark(run_as)  # --- svcports
                home = run_as.home if run_as else str(self.data_dir / "homes" / project_user_name(key.project_id))
                if run_as is None:
                    Path(home).mkdir(mode=0o700, parents=True, exist_ok=True)
                layout = ServiceLayout(self.data_dir, key.service_id)
                # --- quota: the home and the service's dir on the project's filesystem before anything is made
                try:
                    await self._project_disk(key.project_id, run_as, layout.root)
                except ProviderError as exc:  # a failed deployment with the reason, never retried as transient
                    raise ReleaseFailed(Step.building, str(exc)) from None
                # --- end
                await asyncio.to_thread(layout.prepare, run_as)
                svc = _Service(key=key, mode=request.mode, run_as=run_as, home=home, layout=layout,
                               log=RotatingLog(layout.runtime_log),
                               output=self._account_output.setdefault(key.account_id,
                                                                      OutputBudget.for_account()))  # fmt: skip
                self._services[key.service_id] = svc
        self._loop_give(key.project_id, svc.run_as)  # --- loopback: its Redis, for the build and the release
        if self._socks is not None and svc.run_as is not None:  # --- redteam6: its sockets count for its account
            self._socks.assign(svc.run_as.uid, key.account_id)
        if self.host_for(svc.key) != self.host_for(key) and svc.route is not None:
            try:  # renamed: the route follows, unless another service holds the new hostname
                self.proxy.move_route(svc.route, self.host_for(key))
            except RouteConflict as exc:
                raise ReleaseFailed(Step.switching, _route_conflict(exc.host)) from None
        svc.key = key
        svc.mode = request.mode
        return svc

    # -- release -------------------------------------------------------------------------------

    async def release(self, request: ReleaseRequest, progress: ProgressCallback, record: Record) -> ReleaseResult:
        """Idempotent per deployment: a repeat for the live deployment returns its result; a repeat after
        an interrupted attempt (whose processes stopped with it) builds again from a fresh checkout."""
        if request.checkout_dir is None:
            raise ProviderRefused("the local provider builds from a checkout, and core passed none")
        svc = await self._service(request)
        async with svc.release_lock:
            did = request.deployment_id
            if svc.live is not None and svc.live.meta.deployment_id == did:
                return ReleaseResult(url=self.url_for(request.key) if svc.live.meta.routed else None)
            build_log = RotatingLog(svc.layout.build_log(did), budget=OutputBudget(parent=svc.output))
            current = Step.queued

            async def track(step: Step, detail: str) -> None:
                nonlocal current
                current = step
                build_log.write(f"[inkmcp] {step.value}: {detail}")
                await progress(step, detail)

            try:
                note = await self._apply_limits(request)  # first: the build runs in the service's cgroup
                await track(Step.building, "building")
                meta = await self._build(svc, request, build_log, on_step=lambda what: progress(Step.building, what))
                live = _Live(meta=meta, env=dict(request.env), env_revision=request.env_revision)
                if meta.plan.release_command:
                    await track(Step.releasing, "running the release command")
                    await self._release_command(svc, live, build_log)
                await self._roll(svc, live, track, note=note)
            except (ReleaseFailed, OSError) as exc:
                if isinstance(exc, OSError):  # disk full, permissions...: still a failed release, not a crash
                    exc = ReleaseFailed(current, f"{type(exc).__name__}: {exc}")
                    # --- quota: a full project disk says which limit and what to do
                    pid = request.key.project_id
                    if self.disks.explains(pid, exc.reason):
                        exc = ReleaseFailed(current, f"{self.disks.full_message(pid)} ({exc.reason})")
                    # --- end
                build_log.write(f"[inkmcp] release failed at {exc.step.value}: {exc.reason}")
                await asyncio.to_thread(shutil.rmtree, svc.layout.release_dir(did), True)
                svc.layout.meta(did).unlink(missing_ok=True)
                await self._prepare_wake(svc)  # --- wake: a failed start over a sleeping version used its start up
                raise ReleaseFailed(exc.step, scrub_paths(exc.reason)) from None
            finally:
                build_log.close()
            await progress(Step.live, "live")
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._prune, svc)
        return ReleaseResult(url=self.url_for(request.key) if meta.routed else None)

    async def _build(self, svc: _Service, request: ReleaseRequest, build_log: RotatingLog,
                     on_step: Callable[[str], Awaitable[None]] | None = None) -> ReleaseMeta:  # fmt: skip
        """Put the checkout in the release dir and build it there.

        Trust boundary: `releases/` and `releases/<did>/` are root's; only `src/` is the tenant's.
        The checkout arrives in a root-private staging dir: it is checked and given to the tenant
        there (nobody else can reach it), then renamed into place through directory fds.
        """
        layout, did, plan = svc.layout, request.deployment_id, request.plan
        assert request.checkout_dir is not None  # checked by release()
        release_dir = layout.release_dir(did)
        await asyncio.to_thread(shutil.rmtree, release_dir, True)
        await asyncio.to_thread(ensure_owned_dir, layout.releases, did, None, 0o711 if svc.run_as else 0o700)
        src = layout.src(did)
        # --- quota: near the project's disk limit, releases kept only for comparison go first
        space = self.disks.usage(svc.key.project_id)
        if space is not None and space[1] < space[2] // 2:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._prune, svc, 1)
        # --- end
        try:
            checked = inside(request.checkout_dir, plan.app_dir)  # resolved while still root-private
            if not checked.is_dir():
                raise ReleaseFailed(
                    Step.building, f"app_dir {plan.app_dir!r} is not a directory in the repository"
                )
            rel_app = os.path.relpath(checked, request.checkout_dir.resolve())
            # --- quota: on the project's own filesystem the checkout cannot be renamed in: copied to a
            # root-private staging dir on the same mount first (layout.staging), then renamed from there
            staged = await asyncio.to_thread(layout.stage, request.checkout_dir, did)
            # --- end
            await asyncio.to_thread(chown_private_tree, staged, svc.run_as)
            await asyncio.to_thread(move_into, staged, release_dir, "src")
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and self.disks.explains(svc.key.project_id, str(exc)):  # --- quota
                raise ReleaseFailed(Step.building, self.disks.full_message(svc.key.project_id)) from exc
            raise ReleaseFailed(Step.building, f"could not prepare the checkout: {exc}") from exc
        app_dir = src / rel_app
        build_started = time.time()
        build_env = await self._run_build(svc, request, app_dir, build_log, on_step)
        await self._check_build_size(svc, src, build_env, build_log)
        meta = ReleaseMeta(deployment_id=did, service_type=request.service_type, plan=plan, build_env=build_env)
        if meta.is_static:
            # Served: what the build wrote (dist/ ahead of a root source index.html), unless static_dir was given.
            served = await asyncio.to_thread(
                static_output.resolve, src, os.path.relpath(app_dir, src), plan.static_dir,
                given=plan.static_dir_given, built_since=build_started,
            )  # fmt: skip
            if served != (plan.static_dir or "."):
                build_log.write(f"[inkmcp] serving {served!r} (the build's output; planned: {plan.static_dir!r})")
                plan = plan.model_copy(update={"static_dir": served})
                meta = meta.model_copy(update={"plan": plan})
            rel = os.path.normpath(os.path.join(os.path.relpath(app_dir, src), plan.static_dir or "."))
            if not is_dir_beneath(src, rel):  # the built tree is the tenant's: no symlink is followed

                missing = plan.static_dir or "."
                # --- newuser2: name where the build did write its index.html (the agent guessed 'public')
                found = await asyncio.to_thread(static_output.resolve, src, os.path.relpath(app_dir, src), None,
                                                given=False, built_since=build_started)  # fmt: skip
                there = os.path.normpath(os.path.join(os.path.relpath(app_dir, src), found))
                wrote = (f"; the build's index.html is in {found!r}: pass static_dir={found!r}, or omit static_dir"
                         if found != missing and static_output.index_mtime(src, there) is not None else "")
                raise ReleaseFailed(Step.building, f"static_dir {missing!r} does not exist after the build{wrote}")
            if on_step is not None:  # which directory is served, in the deployment's history (newuser4: not said)
                where = "the repository's root" if rel == "." else repr(rel)
                await on_step(f"serving the static files in {where}")
        meta.write(layout.meta(did))
        build_log.write("[inkmcp] build complete")
        return meta

    async def _run_build(
        self, svc: _Service, request: ReleaseRequest, app_dir: Path, build_log: RotatingLog,
        on_step: Callable[[str], Awaitable[None]] | None = None,
    ) -> dict[str, str]:
        env = tenant_env(home=svc.home, run_as=svc.run_as, service_env=request.env, build_env={}, port=None)
        # Download caches (uv, npm) are the project's own: a cache shared with another project would let
        # its tenant plant a package that this build installs.
        project = ProjectLayout(self.data_dir, svc.key.project_id)
        await asyncio.to_thread(project.prepare, svc.run_as)
        try:
            output = await run_build(
                request.plan, app_dir, venv_root=svc.layout.venvs, env=env, log=build_log.awrite,
                run_as=svc.run_as, timeout=self.build_timeout, python=self.tenant_python,
                cache_dir=project.cache, pid_dir=svc.layout.run_dir,
                state_dir=svc.layout.run_dir, shim_dir=self.shim_dir, anchor=svc.layout.src(request.deployment_id),
                sandbox=self._sandbox(svc, build=True),
                on_step=on_step,  # --- newuser3: long steps named in the deployment's progress
            )  # fmt: skip
        except BuildFailed as exc:
            # --- quota: a build stopped by its project's full disk is told so, with the limit and the way out
            if self.disks.explains(svc.key.project_id, exc.render() + "\n".join(tail_lines(build_log.path, 40))):
                raise ReleaseFailed(Step.building, _with_tail(
                    f"{self.disks.full_message(svc.key.project_id)}. The build stopped there: {exc.message}",
                    build_log)) from exc
            # --- end
            raise ReleaseFailed(Step.building, _with_tail(exc.render(), build_log)) from exc
        except TimeoutError:
            raise ReleaseFailed(
                Step.building, _with_tail(f"the build took longer than {self.build_timeout:g}s", build_log)
            ) from None
        return dict(output.env)

    async def _check_build_size(
        self, svc: _Service, src: Path, build_env: dict[str, str], build_log: RotatingLog
    ) -> None:
        """Refuse a build that left more on disk than the cap (checkout + build output + its venv).

        RLIMIT_FSIZE bounds one file while the build runs; this bounds what a release keeps.
        """
        trees = [src]
        venv = build_env.get("VIRTUAL_ENV")
        if venv and Path(venv).parent == svc.layout.venvs:
            trees.append(Path(venv))
        used = sum([await asyncio.to_thread(tree_bytes, t) for t in trees])
        if used > self.max_build_bytes:
            raise ReleaseFailed(Step.building, _with_tail(
                f"the build left {used / 2**20:.0f} MiB on disk (checkout, build output and dependencies), over "
                f"this server's cap of {self.max_build_bytes / 2**20:.0f} MiB (INKMCP_MAX_BUILD_MB); keep build "
                "artifacts and caches out of the app directory or trim dependencies", build_log))

    async def _release_command(self, svc: _Service, live: _Live, build_log: RotatingLog) -> None:
        command = live.meta.plan.release_command
        assert command is not None
        app_dir = self._app_dir(svc, live.meta)
        env = tenant_env(home=svc.home, run_as=svc.run_as, service_env=live.env,
                         build_env=live.meta.build_env, port=None, deployment_id=live.meta.deployment_id)  # fmt: skip
        watch = self.limits.watch(_build_group(svc.key.service_id))
        before = watch.snapshot() if watch is not None else None
        try:
            code = await run_once(self._config("release", ("/bin/sh", "-c", command), app_dir, svc, env),
                                  build_log.write, timeout=self.build_timeout, account_output=svc.output)  # fmt: skip
        except TimeoutError:
            raise ReleaseFailed(
                Step.releasing, _with_tail(f"the release command ran longer than {self.build_timeout:g}s", build_log)
            ) from None
        except OSError as exc:
            raise ReleaseFailed(Step.releasing, f"could not run the release command: {exc}") from exc
        finally:
            if watch is not None:
                await self._end_release_leftovers(watch, build_log)
        hit = watch.exceeded(before, "the release command") if watch is not None and code != 0 else None
        if hit is not None:
            raise ReleaseFailed(
                Step.releasing, _with_tail(f"{hit.message}; {hit.fix}. The previous version keeps serving.", build_log)
            )
        if code != 0:
            # --- newuser2: a first deploy's failed release said "the previous version keeps serving" (there was
            # none), did not name the command, and quoted the dependency install's last lines above its output
            kept = "the previous version keeps serving" if svc.live is not None else "nothing went live"
            said = [line for line in tail_lines(build_log.path, 200, include_rotated=False)
                    if line.startswith(("release | ", "[inkmcp] releasing"))]  # fmt: skip
            raise ReleaseFailed(Step.releasing, _tail_text(
                f"the release command `{command}` exited with code {code} (it runs once per deployment, after the "
                f"build, before any process starts); {kept}", said))
            # --- end newuser2

    @staticmethod
    async def _end_release_leftovers(watch: LimitWatch, build_log: RotatingLog) -> None:
        """Empty the build cgroup once the release command is over, as every build step's end does.

        `run_once` stops the command's process group only; a daemon it started (`setsid`, a double
        fork, a migration tool's "background worker") left that group and ran on in the service's
        build cgroup, unowned and outside any run InkMCP stops, for as long as the machine lived.
        """
        try:
            killed = await asyncio.to_thread(watch.end_leftovers)
        except ProviderError as exc:  # stuck in the kernel: they stay capped by the service's limits
            build_log.write(f"!! {exc}")
            return
        if killed:
            build_log.write(
                f"!! the release command left a process running in the background ({killed} process"
                f"{'es' if killed > 1 else ''}: a daemon or server it started); InkMCP stopped it. The release "
                "command runs once per deployment and must not start servers: start them from the Procfile or the "
                "start command instead"
            )

    async def _roll(self, svc: _Service, live: _Live, progress: ProgressCallback | None, note: str = "") -> None:
        """Start `live` next to the current run, health-check it, switch the route, stop the old one."""

        async def report(step: Step, detail: str) -> None:
            if progress is not None:
                await progress(step, detail)

        plan = live.meta.plan
        await self._retired(svc)  # a version replaced just before is stopped first: at most two run side by side
        await report(Step.starting, f"starting processes ({note})" if note else "starting processes")
        # Decided before a fixed port displaces the running version: that one is brought back on failure.
        protects = _serving(svc, self.stability_window)
        port: int | None = None
        displaced = False  # the previous run was stopped to free a fixed port
        if live.meta.routed:
            if plan.port is not None:
                port = plan.port
                displaced = await self._free_fixed_port(svc, port)
            else:
                port = self.ports.allocate()
        run = self._make_run(svc, live, port)
        # --- newuser3: where each version begins in the runtime log: after update_env_vars (or a redeploy) the old
        # processes' last lines and the new ones' first lines were interleaved with nothing saying which was which
        shown_as = live.meta.plan.processes[0].name if live.meta.plan.processes else "web"
        svc.log.write(f"{shown_as} | [inkmcp] " + (
            f"starting deployment {live.meta.deployment_id}" if progress is not None else
            "restarting with the new env vars (update_env_vars)") + (
            "; the previous processes serve until these pass the health check"
            if svc.live is not None and svc.live.run is not None else ""))  # (a fixed port stopped them first)
        # --- end
        try:
            try:
                await run.start()
            except OSError as exc:
                raise ReleaseFailed(Step.starting, f"could not start the processes: {exc}") from exc
            window = self.stability_window
            if protects:
                stays = f"every process to stay up {window:g}s while the previous version keeps serving"
            elif self.first_deploy_settle >= window:  # --- newuser2: "stay up 1s (... so no 1s stability window)"
                stays = f"every process to stay up {self.first_deploy_settle:g}s"
            else:  # nothing serving to protect: waiting out the window would only delay the URL
                stays = (f"every process to stay up {self.first_deploy_settle:g}s (no previous version is serving, "
                         f"so no {window:g}s stability window; a later crash restarts with backoff)")  # fmt: skip
            await report(Step.health_check, f"waiting for port {port} to answer HTTP and {stays}" if port else
                         f"waiting for {stays}")  # fmt: skip
            try:
                await _with_heartbeat(
                    run.wait_live(self.health_timeout, window=window, host=self.host_for(svc.key),
                                  settle=None if protects else self.first_deploy_settle,
                                  path=plan.health_path),  # newuser4
                    lambda waited: report(Step.health_check, _still_waiting(waited, self.health_timeout, port, run)),
                )  # fmt: skip
            except HealthFailed as exc:
                kept = "the previous version stays live" if svc.live is not None else "nothing went live"
                built = "The build succeeded: the" if progress is not None else "The"
                raise ReleaseFailed(
                    Step.health_check, _tail_text(f"{exc.reason}{self._bind_refusal(svc, port)}; {kept}. {built} "
                                                  f"cause is in the app's runtime output ({RUNTIME_LOGS})"
                                                  f"{_django_unmigrated(plan, exc.reason)}"
                                                  f"{_health_path_hint(svc.key.service_name, plan, exc.reason)}",
                                                  run.recent)
                ) from None
            after = run.answered_after
            answered = f"the web answered {after:.2f}s after its start; " if after is not None else ""
            await report(Step.switching, f"switching traffic ({answered}every process up "
                         f"{window if protects else self.first_deploy_settle:g}s)")  # fmt: skip
            async with svc.run_lock:
                if svc.removed:
                    raise ReleaseFailed(Step.switching, "the service was removed during the release")
                old = svc.live.run if svc.live else None
                run.go_live()
                live.run = run
                svc.live = live
                self._point_route(svc, live, port)
                if old is not None:  # --- newuser3
                    svc.log.write(f"{shown_as} | [inkmcp] switched to the new processes; the previous ones stop")
        except BaseException as exc:
            await self._stop_run(run)
            if displaced and isinstance(exc, ReleaseFailed):
                await self._bring_back(svc, port)
            raise
        if old is not None:
            try:
                if old.port is not None and old.port != port:
                    # "live" means every new request reaches the new version: the proxy serves the new route and
                    # requests forwarded before the switch have their answers. Only the old one's stop is left.
                    await self.proxy.drain(old.port, DRAIN_TIMEOUT)
            except Exception as exc:  # the new version is live: a failed drain must not fail (and undo) the release
                log.warning("service %s: draining port %s failed: %s", svc.key.service_id, old.port, exc)
                # --- suitefast: ... but "live" still means new requests reach the new version. A drain that failed
                # before nginx served the new route reported "live" (and stopped the old version) while nginx's
                # workers still sent requests to the old port, which answered them: the switch alone is waited for
                await self._switched(svc)
                # --- end
            finally:  # stopped even if this release is cancelled here
                self._retire(svc, old)

    async def _switched(self, svc: _Service) -> None:
        """--- suitefast: until the proxy serves the current routes (nginx: the new config loaded and its older
        workers told to quit; the Python proxy's table is current at once), at most DRAIN_TIMEOUT. An error here
        is logged: the route is already switched in InkMCP's table, which nginx's backup (the slow path) serves."""
        switched = getattr(self.proxy, "switched", None)
        if switched is None:
            return
        try:
            if not await switched(DRAIN_TIMEOUT):
                log.warning("service %s: the proxy did not serve the new route within %gs", svc.key.service_id,
                            DRAIN_TIMEOUT)
        except Exception as exc:
            log.warning("service %s: waiting for the proxy's switch failed: %s", svc.key.service_id, exc)

    def _retire(self, svc: _Service, old: ReleaseRun) -> None:
        """Stop the version a switch replaced, in the background: no request reaches it any more, so "live" is
        not held up by its graceful stop (gunicorn: ~0.3 s after SIGTERM, up to `stop_grace`). Never
        cancelled: whatever waits for it (`_retired`: the service's next release or env restart, restore,
        remove, close) waits until its processes are stopped and reaped and its port is free."""
        task = asyncio.create_task(self._stop_retired(svc, old), name=f"retire-{svc.key.service_id}")
        svc.retiring.add(task)
        task.add_done_callback(svc.retiring.discard)

    async def _stop_retired(self, svc: _Service, old: ReleaseRun) -> None:
        name = old.supervisors[0].name if old.supervisors else "web"
        pids = old.pids
        try:
            await self._stop_run(old)
        except Exception as exc:  # the release is live already: recorded and logged, never raised into it
            message = f"could not stop the previous version ({old.meta.deployment_id}, pids {pids}): {exc}"
            svc.log.write(f"{name} | [inkmcp] {scrub_paths(message)}")
            log.warning("service %s: %s", svc.key.service_id, message)

    async def _retired(self, svc: _Service) -> None:
        """Until the versions `_retire` is stopping for `svc` are stopped."""
        while svc.retiring:
            await asyncio.wait(list(svc.retiring))

    async def _bring_back(self, svc: _Service, port: int | None) -> None:
        """After a release on a fixed port failed: the previous release runs there again, so a failed
        deploy still leaves the old version serving. The route points at it once it listens (as after
        a wake): a request refused meanwhile would make nginx shun the port for a while."""
        async with svc.run_lock:
            live = svc.live
            if live is None or live.run is not None or svc.removed or not svc.always_on:
                return  # nothing to bring back, or on_demand: the next request wakes it as before
            if port is not None:
                self.ports.reserve(port)
            run = self._make_run(svc, live, port)
            try:
                await run.start()
                await run.wait_healthy(self.health_timeout)
            except (OSError, HealthFailed) as exc:
                svc.log.write(f"web | [inkmcp] could not restart the previous release: {exc}")
                await self._stop_run(run)
                return
            run.go_live()
            live.run = run
            self._point_route(svc, live, port)

    async def _free_fixed_port(self, svc: _Service, port: int) -> bool:
        """A fixed BuildPlan.port cannot run blue/green: stop the old run first (brief downtime).
        True if a running previous release was stopped (`_bring_back` restarts it if the new one fails)."""
        old = svc.live.run if svc.live else None
        displaced = old is not None and old.port == port
        if old is not None and old.port == port:
            async with svc.run_lock:
                if svc.live is not None:
                    svc.live.run = None
                if svc.route is not None:
                    svc.route.port = None
            await self._stop_run(old)
        if not port_is_free(port, reuse=True):
            if displaced:
                await self._bring_back(svc, port)
            raise ReleaseFailed(  # --- newuser3: "omit `port`, or pick another" failed for a hard-coded port too
                Step.starting,
                f"port {port} (the service's fixed `port`, from deploy_app or inkmcp.yaml) is already in use on this "
                "machine (another service listens there). An app that hard-codes its port cannot move "
                "off it, so omitting `port` or picking another fails too: make the app listen on the PORT env var "
                "InkMCP sets (process.env.PORT in Node, int(os.environ['PORT']) in Python, `--port $PORT` in a "
                "start_command) and omit `port`; an app that takes its port from a setting can get another free "
                "one with `port` and that setting",
            )
        self.ports.reserve(port)
        return displaced

    def _point_route(self, svc: _Service, live: _Live, port: int | None) -> None:
        host = self.host_for(svc.key)
        if not live.meta.routed:
            if svc.route is not None:
                self.proxy.remove_route(svc.route.host, svc.route.owner)
                svc.route = None
            return
        route = svc.route or Route(host=host, port=port, owner=svc.key.service_id)
        try:  # first, before anything changes: refused if another service (account) holds the hostname
            self.proxy.set_route(route)
        except RouteConflict as exc:
            raise ReleaseFailed(Step.switching, _route_conflict(exc.host)) from None
        route.port = port
        route.wake = None if svc.always_on else (lambda: self._wake(svc))
        route.touch()
        svc.route = route

    def _make_run(self, svc: _Service, live: _Live, port: int | None) -> ReleaseRun:
        run = ReleaseRun(
            live.meta, app_dir=self._app_dir(svc, live.meta), service_env=live.env, run_as=svc.run_as,
            home=svc.home, port=port, sink=svc.log.write, run_dir=svc.layout.run_dir,
            tenant_python=self.tenant_python, backoff=self.backoff, sandbox=self._sandbox(svc),
            account_output=svc.output,
        )  # fmt: skip
        run.on_routed_crash = lambda: self._recover_soon(svc, run)  # --- redteam2 (portguard)
        self._loop_give(svc.key.project_id, svc.run_as)  # --- loopback: its Redis (REDIS_URL), before it starts
        if self._binds is not None and svc.run_as is not None:  # --- svcports: its $PORT, before it starts
            self._binds.take_refused(svc.run_as.uid)  # what an earlier run was refused is not this one's
            if port is not None:
                self._binds.grant(svc.run_as.uid, port)  # revoked by _stop_run
                self._bind_grants[id(run)] = (svc.run_as.uid, port)
        return run

    # --- loopback (loopguard.py): beside its own listeners, what a project's processes may connect to here
    def _open_loopback_ports(self) -> set[int]:
        """Ports every tenant may reach on this machine when no tenant listens there: the proxy's (and the public
        HTTP ports an app's own URL resolves to), DNS, the tenant PostgreSQL server apps get in DATABASE_URL, the
        operator's INKMCP_TENANT_DATABASE_URL / INKMCP_REDIS_URL when on loopback, and the loopback entries of
        INKMCP_TENANT_EGRESS_ALLOW that name a port."""
        import ipaddress
        from urllib.parse import urlsplit

        from inkmcp.providers.compute.local.egress import HOST_TCP_PORTS
        from inkmcp.settings import TenantEgressSettings

        ports = {self.proxy.port, 53, *HOST_TCP_PORTS}
        with contextlib.suppress(OSError, ValueError):
            ports.add(int((self.data_dir.parent / "pg" / "tenants.port").read_text().strip()))
        for name in ("INKMCP_TENANT_DATABASE_URL", "INKMCP_REDIS_URL"):
            with contextlib.suppress(ValueError):
                parts = urlsplit(os.environ.get(name, ""))
                if parts.hostname in ("localhost", "127.0.0.1", "::1") and parts.port:
                    ports.add(parts.port)
        try:
            allow = TenantEgressSettings().allow_entries()
        except ValueError:  # refused at start elsewhere, with its own message
            allow = []
        for entry in allow:
            if entry.port and any(ipaddress.ip_address(a) in entry.network for a in ("127.0.0.1", "::1")
                                  if ipaddress.ip_address(a).version == entry.network.version):
                ports.add(entry.port)
        ports.discard(self._mcp_port())  # the MCP server on 80, 443 or 8080: still closed (`_loop_closed`)
        return ports | {self.proxy.port}

    def _mcp_port(self) -> int:
        if self.mcp_port:
            return self.mcp_port
        try:
            return int(os.environ.get("INKMCP_PORT", "8081"))
        except ValueError:
            return 8081

    GUARDS_FILE = "guards.json"

    def _write_guards(self) -> None:
        """The bind and loopback guards' state for `inkmcp doctor` (another process: it checks the programs named
        here are still attached to the cgroup2 root). Removed at close."""
        import json

        def why(guard: object, reason: str | None) -> str:
            return "" if guard is not None else (reason or "the kernel refused it (see the server log)")

        state = {
            "bind": {"programs": list(self._binds.program_ids) if self._binds else [],
                     "why": why(self._binds, bindguard.available())},
            "loopback": {"programs": list(self._loop.program_ids) if self._loop else [], "mode": loopguard.mode(),
                         "why": why(self._loop, "the bind guard is off" if self._binds is None
                                    else loopguard.available())},
        }
        path = self.data_dir / self.GUARDS_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(state) + "\n")
        os.replace(tmp, path)

    def _redis_ports(self) -> dict[str, int]:
        """Every Redis instance's port by its ident (`ink_<project id hex>`), from the files only root reads."""
        import json

        found = {}
        for info in (self.data_dir.parent / "redis").glob("*/instance.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                found[info.parent.name] = int(json.loads(info.read_text())["port"])
        return found

    def _loop_closed(self) -> None:
        """InkMCP's own ports, refused to every tenant even where other listeners are open (the default mode): the
        MCP server's (its /metrics needs no key), the proxy's slow path (it passes forwarded headers through and
        wakes any service by Host), and every project's Redis instance, each given back to its own project (also
        one provisioned while the project's apps run: this runs every few seconds)."""
        guard = self._loop
        if guard is None:
            return
        closed = {self._mcp_port()}
        slow = getattr(self.proxy, "slow", None)
        if slow is not None and getattr(slow, "port", None):
            closed.add(int(slow.port))
        redis = self._redis_ports()
        closed.update(redis.values())
        guard.refresh_addresses()  # this machine's own addresses (an address added since: judged as loopback)
        guard.close_ports(closed - {self.proxy.port})
        for svc in list(self._services.values()):
            if svc.run_as is not None and not svc.removed:
                port = redis.get(_redis_ident(svc.key.project_id))
                guard.give(svc.run_as.uid, [port] if port else [])

    def _loop_give(self, project_id: str, run_as: RunAs | None) -> None:
        """The project's own Redis instance: the one non-tenant listener beside the open ports that this project,
        and no other, may reach (given at each build and run start, and refreshed by `_loop_closed`)."""
        if self._loop is None or run_as is None:
            return
        port = self._redis_ports().get(_redis_ident(project_id))
        self._loop.give(run_as.uid, [port] if port else [])
        self._loop_closed()  # a Redis instance provisioned since: closed to the others

    def _socks_limit(self) -> None:
        """--- redteam6: every account's connections to the tenant PostgreSQL server (InkMCP's embedded one, or the
        operator's INKMCP_TENANT_DATABASE_URL on loopback) are counted, logged in or not (sockguard.py)."""
        if self._socks is None:
            return
        from urllib.parse import urlsplit

        ports: set[int] = set()
        with contextlib.suppress(OSError, ValueError):
            ports.add(int((self.data_dir.parent / "pg" / "tenants.port").read_text().strip()))
        with contextlib.suppress(ValueError):
            parts = urlsplit(os.environ.get("INKMCP_TENANT_DATABASE_URL", ""))
            if parts.hostname in ("localhost", "127.0.0.1", "::1") and parts.port:
                ports.add(parts.port)
        self._socks.limit_ports(ports)

    # --- svcports: a project user binds only its runs' ports from before any of its code runs (bindguard.py)
    def _bind_mark(self, run_as: RunAs | None) -> None:
        if self._binds is not None and run_as is not None:
            self._binds.mark(run_as.uid)

    def _bind_refusal(self, svc: _Service, port: int | None) -> str:
        """Why an app that bound a port other than its own failed (the kernel said only EPERM), logged once too."""
        refused = self._binds.take_refused(svc.run_as.uid) if self._binds and svc.run_as else None
        if refused is None:
            return ""
        own = f"$PORT={port}" if port is not None else "no port (it is not the routed process)"
        # --- newuser6: aiohttp's `web.run_app(app)` binds 8080, the proxy's port on the defaults: "pass port=8080"
        # sent the agent to a call that failed next ("port 8080 ... is already in use on this machine")
        holder = "InkMCP's proxy" if refused == self.proxy.port else "InkMCP's MCP server" if \
            refused == self._mcp_port() else "another service" if not port_is_free(refused, reuse=True) else None
        way = (f"pass port={refused} to deploy_app, or make it bind the PORT env var" if holder is None else
               f"port {refused} is held by {holder} on this machine, so port={refused} cannot work either: make the "
               "app listen on the PORT env var (int(os.environ['PORT']) in Python, e.g. aiohttp's web.run_app(app, "
               "port=...); process.env.PORT in Node; `--port $PORT` in a start_command)")
        note = (f"; it tried to listen on port {refused}, which is not its own (a tenant's process may bind only its "
                f"service's port, here {own}, or port 0): {way}")
        # --- end
        svc.log.write(f"web | [inkmcp] bind() of port {refused} refused: a tenant's process may bind only its "
                      f"service's port ({own}) or port 0")
        return note

    def _log_bind_refusals(self) -> None:
        """A running app's refused second listener (a metrics or debug port) gets a line in its runtime log."""
        if self._binds is None:
            return
        services = list(self._services.values())
        # a project with a release under way: its failure names the port (`_bind_refusal`), so it is left to it
        busy = {svc.run_as.uid for svc in services if svc.run_as is not None and svc.release_lock.locked()}
        for svc in services:
            if svc.run_as is not None and svc.run_as.uid not in busy and svc.live is not None and svc.live.run:
                run = svc.live.run
                refused = self._binds.take_refused(svc.run_as.uid)
                if refused is not None:
                    svc.log.write(f"web | [inkmcp] bind() of port {refused} refused: a tenant's process may bind "
                                  f"only its service's port ($PORT={run.port}) or port 0")
        for svc in services if self._loop is not None else ():  # --- loopback: a refused connect() here, once
            if svc.run_as is not None and not svc.removed:
                port = self._loop.take_refused(svc.run_as.uid)  # type: ignore[union-attr]
                if port is not None:
                    svc.log.write(f"web | [inkmcp] connect() to port {port} on this machine refused: a tenant's "
                                  "process may connect here only to its own project's listeners, its database "
                                  "and Redis, and the proxy (call other apps by their public URL)")
        socks = self._socks  # --- redteam6: a refused socket() or paced connect(), once
        for svc in services if socks is not None else ():
            if socks is not None and svc.run_as is not None and not svc.removed:
                what = socks.take_refused(svc.run_as.uid)
                if what == sockguard.REFUSED_SOCKET:
                    svc.log.write(f"web | [inkmcp] socket() refused: this account's processes hold {socks.cap} open "
                                  "network sockets, their share of the machine's ephemeral ports (close or pool "
                                  "connections)")
                elif what == sockguard.REFUSED_DATABASE:
                    svc.log.write(f"web | [inkmcp] connect() to the database server refused: this account's "
                                  f"processes have {socks.database_cap} connections open to it, logged in or not "
                                  "(close idle ones, or pool them)")
                elif what == sockguard.REFUSED_CONNECT:
                    svc.log.write("web | [inkmcp] connect() refused: this account's processes connect from a port "
                                  "bound beforehand (bind() to port 0, then connect()) faster than "
                                  f"{sockguard.BOUND_CONNECTS_PER_S} a second; connect without bind()")
    # --- end

    # --- redteam2 (portguard): a crashed routed process restarts on a new port, never on its old one
    def _recover_soon(self, svc: _Service, crashed: ReleaseRun) -> None:
        if self._closing or svc.removed:
            return
        task = asyncio.create_task(self._recover(svc, crashed), name=f"recover-{svc.key.service_id}")
        self._recoveries.add(task)
        task.add_done_callback(self._recoveries.discard)

    async def _recover(self, svc: _Service, crashed: ReleaseRun) -> None:
        """The routed process of the live run `crashed` died while InkMCP held its listening socket (portguard):
        start the release again on a new port after the backoff's delay, wait until it listens, move the route,
        then stop `crashed`, which lets go of the old port only now that no route points at it. Retried while
        it fails; ends as soon as a deploy, sleep, suspend, removal or close replaced `crashed`."""
        restarts = crashed.routed.restarts if crashed.routed is not None else 0
        while True:
            delay = min(self.backoff.initial * 2 ** min(restarts, 16), self.backoff.maximum)
            await asyncio.sleep(delay)
            restarts += 1
            if crashed.routed is not None:  # what runtime() reports while the service is down
                crashed.routed.restarts = restarts
            live = svc.live
            if self._closing or svc.removed or live is None or live.run is not crashed:
                return
            try:
                port = self.ports.allocate()
            except NoFreePort as exc:
                svc.log.write(f"web | [inkmcp] could not restart on a new port: {exc.message}")
                continue
            run = self._make_run(svc, live, port)
            switched = False
            try:
                if run.routed is not None:
                    run.routed.restarts = restarts
                await run.start()
                await run.wait_healthy(self.health_timeout)
                async with svc.run_lock:
                    if svc.removed or self._closing or svc.live is not live or live.run is not crashed:
                        return
                    run.go_live()
                    live.run = run
                    self._point_route(svc, live, port)
                    switched = True
            except (OSError, HealthFailed, ReleaseFailed) as exc:
                svc.log.write(f"web | [inkmcp] could not restart on a new port: {scrub_paths(str(exc))}")
                continue
            finally:
                if not switched:
                    await self._stop_run(run)
            switched = getattr(self.proxy, "switched", None)  # nginx: the new routes served, old workers told to quit
            if switched is not None:
                await switched(RELOAD_WAIT)
            await self._stop_run(crashed)  # the route left its port: the held socket closes with it
            return
    # --- end

    def _app_dir(self, svc: _Service, meta: ReleaseMeta) -> Path:
        return inside(svc.layout.src(meta.deployment_id), meta.plan.app_dir)

    def _config(self, name: str, argv: tuple[str, ...], cwd: Path, svc: _Service, env: dict[str, str]) -> ProcessConfig:
        """A build-phase step (the release command): confined like the build."""
        if not env:
            env = tenant_env(home=svc.home, run_as=svc.run_as, service_env={}, build_env={}, port=None)
        return ProcessConfig(name=name, argv=argv, cwd=cwd, env=env, run_as=svc.run_as,
                             sandbox=self._sandbox(svc, build=True))  # fmt: skip

    def _sandbox(self, svc: _Service, *, build: bool = False) -> TenantSandbox:
        """How every process of `svc` is confined: its user, its cgroups, its private /tmp, the file-size cap.

        Build-phase steps get a cgroup of their own with the same limits as the service, so a build
        is held to the service's memory, CPU and pids limits without being able to OOM-kill the live
        release it is about to replace.
        """
        group = _build_group(svc.key.service_id) if build else svc.key.service_id
        # --- mirrorcfg: the project's git mirrors are its uid's, but only git may write them (process.py step 3). The
        # dir must exist to be covered (a start fails otherwise), and must not appear later under a running process:
        # made here if no fetch has made it yet (a fetch always has, so far: this is one stat per call)
        hidden: tuple[Path, ...] = ()
        if self._root:
            project = ProjectLayout(self.data_dir, svc.key.project_id)
            if not os.path.isdir(project.mirrors):
                project.prepare(svc.run_as)
            hidden = (project.mirrors,)
        return TenantSandbox(
            run_as=svc.run_as, cgroup_procs=self.limits.procs_files(group),
            tmp_dir=svc.layout.tmp if self._root else None, max_file_bytes=self.max_file_bytes,
            limits=self.limits.watch(group), hidden_dirs=hidden,
        )  # fmt: skip

    def _prune(self, svc: _Service, keep: int = 3, keep_logs: int = 20) -> None:
        """Keep the live release and the newest few others (for operators to compare); drop the rest."""
        live_id = svc.live.meta.deployment_id if svc.live else None
        releases = sorted(svc.layout.releases.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in [p for p in releases if p.name != live_id][keep - 1 :]:
            shutil.rmtree(old, ignore_errors=True)
            (svc.layout.meta_dir / f"{old.name}.json").unlink(missing_ok=True)
        logs = sorted(svc.layout.build_logs.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old_log in logs[keep_logs:]:
            old_log.unlink(missing_ok=True)

    # -- restore -------------------------------------------------------------------------------

    async def _apply_limits(self, request: ReleaseSpec) -> str:
        """Create or update the service's cgroup; call before anything of the service is spawned.

        Returns the note for the deployment history: the limits, or why they are not enforced.
        """
        res = request.resources
        if not self._root:
            return ("isolation and resource limits not enforced: InkMCP is not running as root, so processes run "
                    "as the current user with the shared /tmp and no memory, CPU, process or disk limits")  # fmt: skip
        conflict = private_tmp_conflict(self.data_dir)
        if conflict is not None:
            raise ReleaseFailed(Step.building, conflict)
        if not self.limits.available:
            return f"resource limits not enforced: {self.limits.reason}; {self.disks.note()}"  # --- quota: + disk
        gid = _project_gid(request.key.project_id)  # --- redteam4: only its project reads its groups
        await asyncio.to_thread(self.limits.ensure, request.key.service_id, res, gid)
        await asyncio.to_thread(self.limits.ensure, _build_group(request.key.service_id), res, gid)
        return (f"limits: {res.memory_mb} MiB memory, {res.cpus:g} CPU, {self.limits.pids_max} processes, "
                f"{self.disks.note()}")  # --- quota: + disk

    async def restore(self, spec: ReleaseSpec) -> None:
        """Start the kept release of `spec.deployment_id` again (its processes stopped with InkMCP)."""
        await self._apply_limits(spec)
        svc = await self._service(spec)
        async with svc.release_lock:
            await self._retired(svc)
            meta = ReleaseMeta.read(svc.layout.meta(spec.deployment_id))
            if meta is None or not is_dir_beneath(svc.layout.release_dir(spec.deployment_id), "src"):
                raise ReleaseFailed(
                    Step.starting,
                    f"the files of deployment {spec.deployment_id} are gone from this machine; redeploy",
                )
            live = _Live(meta=meta, env=dict(spec.env), env_revision=spec.env_revision)
            async with svc.run_lock:
                old = svc.live.run if svc.live else None
                svc.live = live
                if svc.route is not None:
                    svc.route.port = None  # restoring over a running copy: no traffic to it while it stops
            if old is not None:
                await self._stop_run(old)
            if not svc.always_on and meta.routed:
                async with svc.run_lock:
                    self._point_route(svc, live, None)  # asleep until the first request
                await self._prepare_wake(svc)  # --- wake
                return
            port = (meta.plan.port or self.ports.allocate()) if meta.routed else None
            run = self._make_run(svc, live, port)
            try:
                await run.start()
            except OSError as exc:
                await self._stop_run(run)
                raise ReleaseFailed(Step.starting, scrub_paths(f"could not start the processes: {exc}")) from exc
            run.go_live()  # no health wait: a slow or broken app restarts with backoff, proxy answers 502
            async with svc.run_lock:
                live.run = run
                self._point_route(svc, live, port)

    # -- on_demand -----------------------------------------------------------------------------

    async def _wake(self, svc: _Service) -> int:
        """Start a sleeping service; concurrent requests share one wake."""
        task = svc.wake_task
        if task is None or task.done():
            task = asyncio.create_task(self._do_wake(svc), name=f"wake-{svc.key.service_id}")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            svc.wake_task = task
        return await asyncio.shield(task)

    async def _do_wake(self, svc: _Service) -> int:
        if self._closing:
            raise WakeFailed("InkMCP is shutting down; retry in a moment", status=503, title="Service Unavailable")
        # --- issue 13 (credits): an account out of credits keeps its services asleep
        if self.wake_gate is not None:
            refusal = await self.wake_gate(svc.key)
            if refusal is not None:
                raise WakeFailed(refusal, status=402, title="Payment Required")
        # --- end
        async with svc.run_lock:
            if svc.route is not None and svc.route.port is not None:
                return svc.route.port
            live = svc.live
            if live is None or svc.removed:
                raise WakeFailed("the service has no live release")
            port = live.meta.plan.port or self.ports.allocate()
            run = self._make_run(svc, live, port)
            svc.log.write(f"{run.supervisors[0].name if run.supervisors else 'web'} | [inkmcp] waking up")
            try:
                await run.start()
                await run.wait_healthy(self.health_timeout)
            except HealthFailed as exc:
                await self._stop_run(run)
                await self._prepare_wake(svc)  # --- wake: the failed start used the prepared one up
                if exc.timed_out:
                    raise TimeoutError(exc.reason) from None
                raise WakeFailed(scrub_paths(_tail_text(exc.reason, run.recent, lines=3))) from None
            except BaseException:
                await self._stop_run(run)
                raise
            run.go_live()
            live.run = run
            self._point_route(svc, live, port)
            return port

    async def _idle_loop(self) -> None:
        interval = max(0.1, min(5.0, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(OSError):  # --- svcports
                self._log_bind_refusals()
            with contextlib.suppress(OSError):  # --- redteam6: the tenant server's port, if it moved
                self._socks_limit()
            with contextlib.suppress(OSError):  # --- loopback: a Redis instance provisioned since is closed to others
                await asyncio.to_thread(self._loop_closed)
            now = time.monotonic()
            for svc in list(self._services.values()):
                route = svc.route
                if svc.always_on or route is None or route.port is None or route.active:
                    continue
                if now - route.last_activity >= self.idle_timeout:
                    with contextlib.suppress(Exception):
                        await self._sleep(svc)

    async def _sleep(self, svc: _Service) -> None:
        async with svc.run_lock:
            route = svc.route
            live = svc.live
            if route is None or live is None or live.run is None or route.active:
                return
            if time.monotonic() - route.last_activity < self.idle_timeout:
                return
            run = live.run
            route.port = None  # new requests now go through wake
            live.run = None
            svc.log.write(f"{run.supervisors[0].name if run.supervisors else 'web'} | [inkmcp] idle, sleeping")
        await self._stop_run(run)
        await self._prepare_wake(svc)  # --- wake: the next wake's process, confined ahead of the request

    # --- wake: see spawn.prepare_start (the cgroup join's RCU wait, 4-11 ms, happens before the request)
    async def _prepare_wake(self, svc: _Service) -> None:
        """Make sure exactly one start waits for a sleeping on_demand service's next wake, confined as it would
        be now. Called when it goes to sleep and after anything changed while it slept (an env update, a
        redeploy or wake that failed and used the waiting process up). A process prepared under another
        confinement (file-size cap, uid, cgroups) is ended first, by its pid: it would never be used. Its env,
        directory and command are not part of it (they travel at the wake), and its limits are its cgroup's."""
        if svc.removed or svc.always_on or not _asleep(svc):
            return
        sandbox = self._sandbox(svc)
        key = tuple(confinement(sandbox))
        if svc.prepared is not None and svc.prepared != key:
            await discard_prepared(keys=[svc.prepared])
        svc.prepared = key
        with contextlib.suppress(OSError):
            await prepare_start(sandbox)
        if svc.removed:  # removed meanwhile: its cgroup may already have been emptied
            await self._discard_prepared([svc])

    async def _discard_prepared(self, services: list[_Service]) -> None:
        """End the starts prepared for `services`, under their current confinement and the one recorded."""
        keys = [svc.prepared for svc in services if svc.prepared is not None]
        await discard_prepared([self._sandbox(svc) for svc in services], keys=keys)
        for svc in services:
            svc.prepared = None
    # --- end

    # --- issue 13 (credits): what metering samples, and sleep/wake of persistent services at zero credits
    def awake_services(self) -> list[str]:
        """Ids of the services with processes running now (metering charges on_demand ones by awake time)."""
        return [sid for sid, svc in self._services.items() if svc.live is not None and svc.live.run is not None]

    async def suspend(self, service_id: str) -> bool:
        """Put a running service to sleep like an on_demand one: processes stopped, route kept, the next request
        goes through wake (and so through `wake_gate`). False if there was nothing running here."""
        svc = self._services.get(service_id)
        if svc is None or svc.live is None or svc.route is None:
            return False
        async with svc.run_lock:
            run = svc.live.run if svc.live else None
            if run is None or svc.route is None:
                return False
            svc.route.port = None
            svc.route.wake = lambda: self._wake(svc)
            svc.live.run = None
            name = run.supervisors[0].name if run.supervisors else "web"
            svc.log.write(f"{name} | [inkmcp] out of credits, sleeping")
        await self._stop_run(run)
        return True

    async def resume(self, service_id: str) -> bool:
        """Wake a service `suspend` put to sleep (an always-on one gets its plain route back on waking)."""
        svc = self._services.get(service_id)
        if svc is None or svc.live is None or svc.live.run is not None or not svc.always_on:
            return False
        await self._wake(svc)
        return True
    # --- end

    # -- env -----------------------------------------------------------------------------------

    async def update_env(
        self, key: ServiceKey, env: dict[str, SecretStr], revision: str, record: Record
    ) -> EnvChange:
        """Blue/green restart with the new env, health-checked before returning (`restarted`); a sleeping
        on_demand service just keeps the env for its next wake (`next_start`). A failed health check
        raises ReleaseFailed and the old processes keep serving with the old env."""
        svc = self._services.get(key.service_id)
        if svc is None or svc.live is None:
            return EnvChange(outcome=EnvOutcome.next_start, detail="not running on this machine")
        async with svc.release_lock:
            async with svc.run_lock:
                live = svc.live
                if live is None:  # removed while this call waited for the release lock
                    return EnvChange(outcome=EnvOutcome.next_start, detail="not running on this machine")
                asleep = live.run is None
                if asleep:  # sleeping on_demand: the next wake starts with the new env
                    live.env = dict(env)
                    live.env_revision = revision
            if asleep:
                await self._prepare_wake(svc)  # --- wake: still one waiting start, confined as the service is now
                return EnvChange(outcome=EnvOutcome.next_start, detail="asleep; the next wake uses the new values")
            try:
                await self._roll(svc, _Live(meta=live.meta, env=dict(env), env_revision=revision), None)
            except ReleaseFailed as exc:
                raise ReleaseFailed(exc.step, scrub_paths(exc.reason)) from None
            return EnvChange(outcome=EnvOutcome.restarted, detail="restarted and health-checked")

    # -- queries -------------------------------------------------------------------------------

    async def runtime(self, key: ServiceKey) -> ServiceRuntime:
        svc = self._services.get(key.service_id)
        if svc is None or svc.live is None:
            return ServiceRuntime(state=RuntimeState.stopped, detail="not deployed on this machine")
        live = svc.live
        did = live.meta.deployment_id
        detail = f"deployment {did}"
        common: dict[str, Any] = {"deployment_id": did, "env_revision": live.env_revision or None}
        run = live.run
        if run is None:
            waking = svc.wake_task is not None and not svc.wake_task.done()
            state = RuntimeState.starting if waking else (
                RuntimeState.stopped if svc.always_on else RuntimeState.sleeping)
            processes = [ProcessRuntime(name=name, state=state, routed=routed)
                         for name, routed in _process_names(live.meta)]  # fmt: skip
            return ServiceRuntime(state=state, processes=processes, detail=detail, **common)
        down_states = (ProcState.backoff, ProcState.exited)
        # A process restarted after a crash that has not stayed up through the window yet counts as crashed
        # too: a crash loop would otherwise show `running` (health ok) for most of each short life.
        flapping = {s.name: up for s in run.supervisors if (up := _restarted_uptime(s, self.stability_window))}
        processes = [
            ProcessRuntime(name=s.name, routed=s is run.routed, restarts=s.restarts,
                           state=RuntimeState.crashed if s.state in down_states or s.name in flapping
                           else RuntimeState.running)
            for s in run.supervisors
        ]  # fmt: skip
        if any(p.state == RuntimeState.crashed for p in processes):
            down = [f"{s.name} exited with code {s.exit_code}; restarting with backoff"
                    for s in run.supervisors if not s.alive]  # fmt: skip
            down += [f"{s.name} crashed and was restarted (restarts: {s.restarts}), up only {flapping[s.name]:.1f}s "
                     "since" for s in run.supervisors if s.name in flapping]  # fmt: skip
            return ServiceRuntime(state=RuntimeState.crashed, restarts=run.restarts, processes=processes,
                                  detail=f"{detail}: {'; '.join(down)}", **common)  # fmt: skip
        return ServiceRuntime(state=RuntimeState.running, restarts=run.restarts, processes=processes,
                              detail=f"{detail}, pids {run.pids}", **common)  # fmt: skip

    async def logs(
        self,
        key: ServiceKey,
        scope: LogScope,
        *,
        deployment_id: str | None,
        deployment_ref: Mapping[str, Any] | None = None,
        tail: int,
    ) -> list[str]:
        """Agents read these: this server's paths show relative (`errors.scrub_paths`)."""
        layout = ServiceLayout(self.data_dir, key.service_id)
        await asyncio.to_thread(self._offline_files, key)  # --- mender7: `inkmcp logs` with serve stopped

        def read() -> list[str]:
            if scope == LogScope.runtime:
                lines = tail_lines(layout.runtime_log, tail)
            elif deployment_id is not None:
                lines = tail_lines(layout.build_log(deployment_id), tail, include_rotated=False)
            else:
                logs = sorted(layout.build_logs.glob("*.log"), key=lambda p: p.stat().st_mtime)
                lines = tail_lines(logs[-1], tail, include_rotated=False) if logs else []
            return [scrub_paths(line) for line in lines]

        return await asyncio.to_thread(read)

    # -- removal -------------------------------------------------------------------------------

    def _offline_files(self, key: ServiceKey) -> None:
        """--- mender7: a provider that was not started (a CLI command while `serve` is stopped) mounts the
        service's files itself: the projects' filesystems are mounted by `start` only and unmounted at close, so
        `inkmcp logs` read an empty mount point and saw no line, and a removal deleted the empty mount point and
        left the service's files on the project's image until the project went. Blocking.

        The mounts made here stay until someone unmounts them: `inkmcp` CLI commands run in a mount namespace
        of their own (cli.private_mounts), where they vanish with the command, never seen by a `serve` (which,
        starting meanwhile, reuses the loop device already attached: diskquota._mount). A started provider has
        them mounted already; a service with no directory on its project's filesystem gets none."""
        if self._started or not self.disks.enforced or not self.disks.image(key.project_id).exists():
            return
        try:
            self.disks.ensure_project(key.project_id)
            if (self.disks.inner(key.project_id) / "services" / key.service_id).is_dir():
                self.disks.bind_service(key.project_id, ServiceLayout(self.data_dir, key.service_id).root)
        except (OSError, ProviderError) as exc:
            raise ProviderError(f"the files of service {key.service_name!r} are on its project's own filesystem, "
                                f"which could not be mounted: {exc}",
                                fix="start `inkmcp serve` (it mounts every project's filesystem) and retry"
                                ) from None

    async def remove(self, key: ServiceKey) -> None:
        await asyncio.to_thread(self._offline_files, key)  # --- mender7: its files on the image go too
        svc = self._services.pop(key.service_id, None)
        if svc is not None:
            svc.removed = True
            if svc.wake_task is not None and not svc.wake_task.done():
                svc.wake_task.cancel()
            if svc.route is not None:
                self.proxy.remove_route(svc.route.host, svc.route.owner)  # only its own route
            await self._stop_service(svc)
            await self._discard_prepared([svc])  # --- wake: its prepared start, if one waits
            svc.live = None
            svc.log.close()
        # Whatever the supervisors did not reach (double-forked setsid daemons, a build or release
        # command still running) is still in the service's cgroup: kill the whole group, then files.
        for group in (key.service_id, _build_group(key.service_id)):
            await asyncio.to_thread(self.limits.kill_all, group)
        layout = ServiceLayout(self.data_dir, key.service_id)
        await asyncio.to_thread(shutil.rmtree, layout.root, True)
        await asyncio.to_thread(self.disks.drop_service, key.project_id, layout.root)  # --- quota: its bind mount
        for group in (key.service_id, _build_group(key.service_id)):
            await asyncio.to_thread(self.limits.remove, group)

    async def remove_project(self, project_id: str, project_ref: Mapping[str, Any] | None = None) -> None:
        """After a project's last service is gone: end its user's last processes, delete the user and its home."""
        # --- svcports: its uid may go to another user next: its bind guard entries go with it
        if self._binds is not None:
            with contextlib.suppress(KeyError):
                uid = pwd.getpwnam(project_user_name(project_id)).pw_uid
                self._binds.forget(uid)
                if self._loop is not None:  # --- loopback
                    self._loop.forget(uid)
                if self._socks is not None:  # --- redteam6
                    self._socks.forget(uid)
        # --- end
        await delete_project_user(project_id, self.data_dir / "homes")
        # --- quota: its filesystem (home, services, mirrors, caches) goes with its image
        await asyncio.to_thread(self.disks.remove_project, project_id,
                                self.data_dir / "homes" / project_user_name(project_id))
        # --- end
        # Its git mirrors too: files of a deleted uid would be readable by the next user given that uid.
        await asyncio.to_thread(shutil.rmtree, ProjectLayout(self.data_dir, project_id).root, True)


def _redis_ident(project_id: str) -> str:  # --- loopback: as providers/database/redis.py names its instances
    import uuid

    from inkmcp.providers.database.postgres import database_name_for

    try:
        return database_name_for(uuid.UUID(str(project_id)).hex)
    except ValueError:
        return ""


def _asleep(svc: _Service) -> bool:
    """An on_demand service with a live release, no processes running and a route that wakes it."""
    live, route = svc.live, svc.route
    return live is not None and live.run is None and route is not None and route.wake is not None


def _serving(svc: _Service, window: float) -> bool:
    """Whether a previous version of `svc` serves now, so a new release must prove itself through the whole
    stability window before replacing it: its web process runs (workers only: any of them runs), or it sleeps
    on demand (a request wakes it). Not: no release yet, or one stopped, suspended or crash-looping (down, or
    restarted and not yet up through the window: what `runtime` reports as crashed)."""
    live = svc.live
    if live is None:
        return False
    run = live.run
    if run is None:
        return not svc.always_on and svc.route is not None and svc.route.wake is not None

    def up(sup: Supervisor) -> bool:
        return sup.alive and _restarted_uptime(sup, window) is None

    if run.routed is not None:
        return up(run.routed)
    return any(up(s) for s in run.supervisors)


def _restarted_uptime(sup: Supervisor, window: float) -> float | None:
    """Seconds the current instance of `sup` has been up, if it was restarted after a crash and is younger than
    `window` (at least 1 s); else None."""
    pid = sup.pid
    if sup.restarts == 0 or pid is None or pid <= 0 or not sup.alive:
        return None
    up = _process_age(pid)  # our own unreaped child: its pid is not reused
    return max(up, 0.01) if up is not None and up < max(window, 1.0) else None


def _process_age(pid: int) -> float | None:
    """Seconds since `pid` started, to the clock tick (psutil's create_time is wall-clock from a boot time
    rounded to the second, too coarse against a window of a few seconds)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime; the name may hold spaces
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _process_names(meta: ReleaseMeta) -> list[tuple[str, bool]]:
    """(name, routed) of the processes a release runs, as `ReleaseRun` starts them."""
    if meta.is_static:
        return [(STATIC_PROCESS, True)]
    return [(p.name, p.routed) for p in meta.plan.processes]


async def _with_heartbeat(waiting: Awaitable[None], beat: Callable[[float], Awaitable[None]]) -> None:
    """Await `waiting`, calling `beat(seconds waited)` every HEALTH_PROGRESS_EVERY seconds until it ends.

    An app may take most of the health timeout to start (a big framework, migrations at boot): without a
    line now and then the agent sees nothing between "waiting for port ..." and the outcome, and cannot
    tell a slow start from a hung call."""
    task = asyncio.ensure_future(waiting)
    started = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEALTH_PROGRESS_EVERY)
            if done:
                return task.result()
            await beat(time.monotonic() - started)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _still_waiting(waited: float, timeout: float, port: int | None, run: ReleaseRun) -> str:
    """The heartbeat's line: how long, against what limit, and what is still missing (never the app's output:
    progress lines are kept in the deployment's history, where a secret the app printed must not go)."""
    missing = (f"port {port} does not answer yet" if port is not None and run.answered_after is None
               else "the processes must stay up a little longer")  # fmt: skip
    return (f"still waiting after {waited:.0f}s of the {timeout:g}s health timeout (INKMCP_HEALTH_TIMEOUT): {missing}; "
            f"get_logs(scope='runtime') shows the app's output so far")


def _django_unmigrated(plan: BuildPlan, reason: str) -> str:
    """--- newuser3: a Django app deployed without a release command answered 500 at its start: its tables were never
    made (nothing ran `migrate`), and Django with DEBUG off prints no traceback, so the runtime log was empty of any
    cause. Said when the plan is Django's, runs no release command and the health check saw a 5xx."""
    if not plan.django or plan.release_command or not re.search(r"answered GET / with HTTP 5\d\d", reason):
        return ""
    web = plan.routed_process.command if plan.routed_process is not None else "gunicorn <project>.wsgi"
    return (". Hint: this Django app answered 5xx, and no release command ran its migrations (nothing in the repo "
            "names one), so its tables may not exist yet: commit a Procfile with the lines `release: python manage.py "
            f"migrate` and `web: {web}`, then deploy again. With DEBUG off Django prints no traceback: a LOGGING "
            "setting with a console handler puts it in get_logs")


def _health_path_hint(service: str, plan: BuildPlan, reason: str) -> str:
    """--- newuser4: an app whose `/` answers 5xx while its health endpoint is elsewhere (a login wall behind its own
    proxy, a dashboard needing data) failed every deploy, and nothing said the checked path can be named. Said when
    the check asked `/` (no path named) and saw a 5xx; a Django app without migrations gets its own hint instead."""
    if plan.health_path or _django_unmigrated(plan, reason) or not re.search(r"answered GET / with HTTP 5\d\d", reason):
        return ""
    return (". Hint: the health check asks GET / and needs a status below 500; if the app's health endpoint is another "
            f"path, name it in the repo (inkmcp.yaml `services: {{{service}: {{health_path: /healthz}}}}`, or "
            "render.yaml healthCheckPath, railway.json deploy.healthcheckPath, fly.toml [[http_service.checks]] path), "
            "commit and deploy again")


def _build_group(service_id: str) -> str:
    """The cgroup of a service's build-phase steps (sibling of the service's own)."""
    return f"{service_id}.build"


def _is_root() -> bool:

    return os.geteuid() == 0


def _project_gid(project_id: str) -> int | None:  # --- redteam4
    """The project user's group (its cgroups' group), None before the user exists."""
    import pwd

    try:
        return pwd.getpwnam(project_user_name(project_id)).pw_gid
    except KeyError:
        return None


def _route_conflict(host: str) -> str:
    return (f"the hostname {host} is routed to another service (of another account); nothing was switched. "
            "Deploy under another project name")


def _with_tail(message: str, log: RotatingLog, lines: int = ERROR_TAIL) -> str:
    return _tail_text(message, tail_lines(log.path, lines, include_rotated=False))


_NOISE = re.compile(r"^(?:[\w.-]+ \| )?npm notice\b")
"""npm's update notice (five lines after every failed `npm start`): it pushed the app's own error (the first
line of a Node stack, "Error: listen EADDRINUSE ...") out of the quoted tail. get_logs still has it."""
_PORT_TAKEN = re.compile(r"EADDRINUSE|[Aa]ddress already in use")


def _tail_text(message: str, recent: list[str], lines: int = ERROR_TAIL) -> str:
    kept = [line for line in recent if not _NOISE.match(line)]
    tail = kept[-lines:]
    if any(_PORT_TAKEN.search(line) for line in kept):
        # a port written into the app is shared by every service on this machine: name the way out
        message += (" (the app binds a port that is already in use on this server, by another service: make it "
                    "listen on the PORT env var, which is this service's alone)")
    # --- newuser2: advice read from the app's output (command not found, missing table, unset env var, the
    # error line a Node error dump pushed out of the tail): inkmcp/build/hints.py
    if (hint := runtime_hint(kept, tail)) is not None:
        message += f". Hint: {hint}"
    # --- end newuser2
    return message + ("\nlast output:\n" + "\n".join(tail) if tail else "")
