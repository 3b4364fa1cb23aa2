"""A built release and a running instance of it.

`ReleaseMeta` is what survives an InkMCP restart (written once the build succeeded, it doubles as
the build-complete marker): enough to start the release again without rebuilding. Secrets are not
in it — the caller passes env again on restore.

`ReleaseRun` is one set of running processes of a release on one port. A release can have several
runs over its life: the first start, a restart for new env, each wake of an on_demand service.
Blue/green switching is two runs side by side until the new one is healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import psutil
from pydantic import BaseModel, Field, SecretStr

from inkmcp.build import static_output
from inkmcp.build.plan import BuildPlan, RunAs, ServiceType, Stack
from inkmcp.build.process import TenantSandbox
from inkmcp.providers.compute.local import portguard
from inkmcp.providers.compute.local.command import command_argv
from inkmcp.providers.compute.local.logs import OutputBudget
from inkmcp.providers.compute.local.readiness import HttpAnswer, ListenProbe, probe_http
from inkmcp.providers.compute.local.spawn import start_settings
from inkmcp.providers.compute.local.supervisor import Backoff, ProcessConfig, Supervisor
from inkmcp.providers.compute.local.tenant_env import tenant_env

STATIC_PROCESS = "web"
WRONG_PORT_GRACE = 15.0
"""Seconds a release's processes may listen on other ports (and not on $PORT) before its start fails naming them."""
UNREACHABLE_GRACE = 2.0
"""Seconds the app may listen on $PORT only where the proxy cannot reach it (::1) before its start fails (newuser4)."""


class ReleaseMeta(BaseModel):
    """Persisted per deployment after a successful build (no secrets)."""

    deployment_id: str
    service_type: ServiceType
    plan: BuildPlan
    build_env: dict[str, str] = Field(default_factory=dict)
    built_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def is_static(self) -> bool:
        return self.plan.stack == Stack.static or self.service_type == ServiceType.webapp_static

    @property
    def routed(self) -> bool:
        return self.is_static or self.plan.routed_process is not None

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.model_dump_json(indent=2))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> ReleaseMeta | None:
        try:
            return cls.model_validate_json(path.read_text())
        except (FileNotFoundError, ValueError):
            return None


class HealthFailed(Exception):
    def __init__(self, reason: str, *, timed_out: bool) -> None:
        self.reason = reason
        self.timed_out = timed_out
        super().__init__(reason)


def inside(base: Path, sub: str | None) -> Path:
    """`base/sub`, refusing paths that escape `base` (plan paths come from the repo)."""
    target = (base / (sub or ".")).resolve()
    if target != base.resolve() and base.resolve() not in target.parents:
        raise ValueError(f"{sub!r} points outside the repository")
    return target


class ReleaseRun:
    """The processes of one release on one port; keeps the last lines they printed for errors."""

    def __init__(
        self,
        meta: ReleaseMeta,
        *,
        app_dir: Path,
        service_env: dict[str, SecretStr],
        run_as: RunAs | None,
        home: str,
        port: int | None,
        sink: Callable[[str], None],
        run_dir: Path,
        tenant_python: str,
        backoff: Backoff,
        cgroup_procs: tuple[str, ...] = (),
        sandbox: TenantSandbox | None = None,
        account_output: OutputBudget | None = None,
    ) -> None:
        self.meta = meta
        self.port = port
        self._started = 0.0
        self._uptime_needed = 0.0  # what the running wait_live asks of every process (for its error)
        self._health_path = "/"  # what the running wait_live GETs (plan.health_path); newuser4
        self.answered_after: float | None = None  # seconds from the start to the web's first answer below 500
        self._recent: deque[str] = deque(maxlen=30)

        def capture(line: str) -> None:
            self._recent.append(line)
            sink(line)

        self.supervisors: list[Supervisor] = []
        self.routed: Supervisor | None = None
        # --- redteam2 (portguard): the routed process's listening socket, held while this run is live
        self.guard: socket.socket | None = None
        self.on_routed_crash: Callable[[], None] | None = None  # set by the provider: restart on a new port
        self._guarded = run_as is not None and port is not None and meta.plan.port is None
        self._stopped = False
        # --- end
        self._uid = run_as.uid if run_as is not None else os.geteuid()  # whose listener counts as the app's
        # Its own pid files: two runs of one release side by side (an env restart of a worker-only service, no
        # port to tell them apart) would otherwise share a name, and the old run's stop deleted the new one's file.
        run_id = os.urandom(3).hex()
        for name, command, routed in self._commands(app_dir, tenant_python):
            env = tenant_env(
                home=home, run_as=run_as, service_env=service_env, build_env=meta.build_env,
                port=port if routed else None, deployment_id=meta.deployment_id,
            )  # fmt: skip
            argv = command if isinstance(command, tuple) else command_argv(command, env)
            config = ProcessConfig(
                name=name, argv=argv, cwd=app_dir, env=env, run_as=run_as,
                pid_file=run_dir / f"{meta.deployment_id}-{name}-{port or 0}-{run_id}.pid", cgroup_procs=cgroup_procs,
                sandbox=sandbox,
            )  # fmt: skip
            sup = Supervisor(config, capture, backoff=backoff, account_output=account_output)
            self.supervisors.append(sup)
            if routed:
                self.routed = sup

    def _commands(self, app_dir: Path, tenant_python: str) -> list[tuple[str, tuple[str, ...] | str, bool]]:
        """(name, argv or Procfile command line, routed) per process; a command line becomes an argv
        with the process's env (`command_argv`: exec'd directly unless it needs a shell)."""
        if self.meta.is_static:
            # The tenant's Python serves the build output (static_output: SPA fallback, the build's 404.html).
            directory = inside(app_dir, self.meta.plan.static_dir)
            fallback = static_output.fallback_page(app_dir, self.meta.plan.static_dir)
            return [(STATIC_PROCESS, static_output.server_argv(tenant_python, directory, self.port, fallback), True)]
        return [(p.name, p.command, p.routed) for p in self.meta.plan.processes]

    @property
    def recent(self) -> list[str]:
        return list(self._recent)

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.supervisors if s.pid is not None and s.pid > 0]

    async def start(self) -> None:
        self._started = asyncio.get_running_loop().time()
        for sup in self.supervisors:
            await sup.start()

    def go_live(self) -> None:
        """From now on crashed processes restart with backoff.

        A tenant's routed process on a port InkMCP chose: its listening socket is held from now on
        (portguard), so the port cannot be taken by another tenant when the process dies, and a crash of
        it calls `on_routed_crash` (the provider starts the release again on a new port) instead of a
        restart in place."""
        if self._guarded and self.guard is None and self.routed is not None and self.port is not None:
            # On the loop's next turn: a wake's request is forwarded first (reading /proc costs ~1 ms).
            asyncio.get_running_loop().call_soon(self._hold_port)
        for sup in self.supervisors:
            sup.enable_restarts()

    def _hold_port(self) -> None:
        routed = self.routed
        if self.guard is not None or routed is None or self.port is None or not routed.alive or self._stopped:
            return
        self.guard = portguard.hold(self.port, self._uid, [routed.pid] if routed.pid else [])
        if self.guard is not None and self.on_routed_crash is not None:
            routed.on_crash = self.on_routed_crash

    async def wait_healthy(self, timeout: float, *, worker_grace: float = 1.0) -> None:
        """What a wake waits for: routed, the port accepts TCP; workers only, still alive after
        `worker_grace` seconds. A request is waiting on it, so nothing more (see `wait_live`)."""
        await self._wait_routed(timeout, worker_grace)

    async def wait_live(self, timeout: float, *, window: float, host: str | None, settle: float | None = None,
                        path: str | None = None) -> None:
        """What a release (a deploy or an env restart) waits for before it goes live.

        Every process (web and workers) must still run `window` seconds after it started (`settle` seconds
        instead, when given: a first deploy, which has no previous version to protect), and the routed process
        must listen on its port and answer `GET /` (`path` when the plan names its health path; Host: `host`)
        with a status below 500 (`readiness.probe_http`). An app answering 5xx is asked again (0.1 s apart,
        doubling to 1 s) until `window` seconds after the start, settle or not (it may be warming up), then
        fails with the status and the start of the body. A process exiting fails it at once (once its last
        output is read, so the error can quote it); a web that never listens or never answers fails `timeout`
        seconds after the start. Raises HealthFailed. Restarts stay off throughout: a crash counts instead of
        being hidden by a restart.
        """
        loop = asyncio.get_running_loop()
        self._health_path = path or "/"  # newuser4
        self._uptime_needed = window if settle is None else min(settle, window)
        exits = {asyncio.create_task(s.wait_exit(), name=f"exit-{s.name}"): s for s in self.supervisors}
        try:
            if self.routed is not None:
                try:
                    await self._wait_routed(timeout, 0.0)
                except HealthFailed as exc:
                    if exc.timed_out:
                        raise
                    await self._raise_exited(exits)
            up_until = self._started + self._uptime_needed  # every process up this long: live
            patience_end = self._started + window  # 5xx answers asked again until then
            deadline = self._started + timeout
            answered = self.routed is None
            pause = 0.1  # between GETs answered 5xx: doubling, so a failing app logs a handful of errors, not dozens
            while True:
                now = loop.time()
                if not answered:
                    assert self.port is not None
                    if now >= deadline:
                        raise HealthFailed(self._no_answer(f"no answer within {timeout:g}s"), timed_out=True)
                    probe = asyncio.create_task(probe_http(self.port, host, deadline - now, self._health_path))
                    await self._watch(exits, probe)
                    answer = probe.result()
                    answered = answer.healthy
                    if answered:
                        self.answered_after = loop.time() - self._started
                    if not answered:
                        if loop.time() >= patience_end:
                            raise HealthFailed(self._bad_answer(answer, window), timed_out=False)
                        await self._watch(exits, asyncio.create_task(asyncio.sleep(min(pause, patience_end - now))))
                        pause = min(pause * 2, 1.0)
                    continue
                if now >= up_until:
                    if any(not s.alive for s in self.supervisors):
                        await self._raise_exited(exits)
                    return
                await self._watch(exits, asyncio.create_task(asyncio.sleep(up_until - now)))  # the window itself
        finally:
            for task in exits:
                task.cancel()
            await asyncio.gather(*exits, return_exceptions=True)

    async def _watch(self, exits: dict[asyncio.Task[None], Supervisor], task: asyncio.Task[Any]) -> None:
        """Until `task` finishes; a process exiting first cancels it and raises HealthFailed."""
        try:
            await asyncio.wait({task, *exits}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if any(t.done() for t in exits):
            await self._raise_exited(exits)

    async def _raise_exited(self, exits: dict[asyncio.Task[None], Supervisor]) -> NoReturn:
        """HealthFailed naming the process that exited, after its last output was read (bounded)."""
        gone = next((s for t, s in exits.items() if t.done()), None)
        if gone is None:
            gone = next(s for s in self.supervisors if not s.alive)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait_exit(), 2.0)
        uptime = asyncio.get_running_loop().time() - self._started
        raise HealthFailed(
            f"process '{gone.name}' exited with code {gone.last_exit_code} about {uptime:.1f}s after it started; "
            f"every process must keep running for {self._uptime_needed:g}s after its start before a deployment "
            "goes live",
            timed_out=False,
        )

    def _no_answer(self, detail: str) -> str:
        name = self.routed.name if self.routed is not None else STATIC_PROCESS
        return (f"process '{name}' listens on $PORT={self.port} but did not answer an HTTP GET {self._health_path} "
                f"({detail}); it must serve HTTP/1.1 on $PORT")  # fmt: skip

    def _bad_answer(self, answer: HttpAnswer, window: float) -> str:
        if answer.status is None:
            return self._no_answer(answer.detail)
        name = self.routed.name if self.routed is not None else STATIC_PROCESS
        until = f" for {window:g}s after it started" if window > 0 else ""
        body = f"; the response began: {answer.detail}" if answer.detail else " with an empty body"
        return f"process '{name}' answered GET {self._health_path} with HTTP {answer.status}{until}{body}"

    async def _wait_routed(self, timeout: float, worker_grace: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.routed is None:
            await asyncio.sleep(min(worker_grace, timeout))
            self._check_alive()
            return
        assert self.port is not None
        if start_settings().tenant_readiness == "sock_diag":
            probe = ListenProbe.open()
            if probe is not None:
                with probe:
                    await self._wait_listening(probe, deadline, timeout)
                return
        pause = 0.005  # poll fast at first: on_demand wakes wait on this loop
        while True:
            self._check_alive()
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1.0)
            except (TimeoutError, OSError):
                if loop.time() >= deadline:
                    raise HealthFailed(
                        f"the app never listened on $PORT={self.port} within {timeout:g}s; make sure it binds "
                        "0.0.0.0 or 127.0.0.1 on the PORT env var" + _slow_start(timeout),
                        timed_out=True,
                    ) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def _wait_listening(self, probe: ListenProbe, deadline: float, timeout: float) -> None:
        """Until the app's own socket listens on the port (asked of the kernel, `readiness`); a listener on
        an address other than 0.0.0.0/127.0.0.1 is confirmed with one connect, as the proxy will.

        A poll, because nothing tells a process when another one starts listening: sock_diag's multicast
        groups announce only destroyed sockets, and the alternatives (an eBPF program on the
        `inet_sock_set_state` tracepoint, a seccomp user-notification or audit rule on `listen`) would
        put a kernel hook on every tenant process for its whole life to save a few ms of a start. The
        lookup itself is ~6 us; what a poll costs is the loop's wake-up (~110 us of CPU per 1 ms timer
        turn on this VM), so the pause grows with the wait: 1 ms for the first 50 ms (a wake of a small
        app listens after ~60 ms), then 2 % of the time waited, at most 20 ms. So a start is noticed at
        most ~2 % late (~1 % on average) and a wait of 1 s costs ~200 turns instead of ~1,000.
        """
        assert self.port is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        next_look, elsewhere_since, hidden_since = started + 1.0, None, None
        # apps run as a tenant's own uid: only then are other ports named (as InkMCP's uid, its own would be too)
        tenant = self._uid is not None and self._uid != os.getuid()
        while True:
            self._check_alive()
            mine, certain = probe.ready(self.port, self._uid)
            if certain or (mine and await _accepts(self.port)):
                return
            now = loop.time()
            if now >= next_look and tenant:
                # An app hard-wired to another port (3000, 5000, 8080: a common first-deploy mistake) was reported
                # only at the health timeout (60 s by default), though it listened there within a second. Once this
                # release's own processes have listened elsewhere, and not on $PORT, for WRONG_PORT_GRACE, say so.
                # Their own sockets only: the project's other services and the version being replaced listen as
                # the same uid. An app that opens a side port (metrics, admin) first has that long to bind $PORT.
                next_look = now + 1.0
                # --- newuser4: listening on $PORT, but only where 127.0.0.1 does not reach (a Node app's
                # listen(port, '::1'), a server bound to the host's own address): it waited out the whole health timeout
                # (60 s) and then said "never listened on $PORT ... make sure it binds 0.0.0.0", which it had done
                hidden = self._unreachable(probe)
                hidden_since = (now if hidden_since is None else hidden_since) if hidden else None
                if hidden_since is not None and now - hidden_since >= min(UNREACHABLE_GRACE, timeout):
                    raise HealthFailed(self._unreachable_reason(hidden), timed_out=True)
                # --- end
                ports = self._ports_elsewhere()
                elsewhere_since = (now if elsewhere_since is None else elsewhere_since) if ports else None
                if elsewhere_since is not None and now - elsewhere_since >= min(WRONG_PORT_GRACE, timeout):
                    raise HealthFailed(
                        f"the app listened on {', '.join(map(str, ports[:5]))} and not on $PORT={self.port} for "
                        f"{now - elsewhere_since:.0f}s: pass port={ports[0]} to deploy_app, or make it bind the PORT "
                        "env var",
                        timed_out=True,
                    )
            if now >= deadline:
                if hidden := self._unreachable(probe) if tenant else []:  # newuser4
                    raise HealthFailed(self._unreachable_reason(hidden), timed_out=True)
                elsewhere = self._ports_elsewhere() if tenant else []
                if elsewhere:  # e.g. a gunicorn config that binds 0.0.0.0:8080, the port another platform uses
                    listed = ", ".join(map(str, elsewhere[:5]))
                    raise HealthFailed(
                        f"the app never listened on $PORT={self.port} within {timeout:g}s; it listens on {listed} "
                        f"instead: pass port={elsewhere[0]} to deploy_app, or make it bind the PORT env var",
                        timed_out=True,
                    )
                raise HealthFailed(
                    f"the app never listened on $PORT={self.port} within {timeout:g}s; make sure it binds "
                    "0.0.0.0 or 127.0.0.1 on the PORT env var" + _slow_start(timeout),
                    timed_out=True,
                )
            await asyncio.sleep(listen_poll_pause(now - started))

    def _unreachable(self, probe: ListenProbe) -> list[str]:
        """The addresses this release's uid listens on at $PORT when none of them is reachable at 127.0.0.1 (which
        `ready` already said): `::1`, `127.0.0.2`, the host's own address (newuser4)."""
        assert self.port is not None
        try:
            mine = [x for x in probe.listeners(self.port) if x.uid == self._uid]
        except OSError:
            return []
        return sorted({socket.inet_ntop(x.family, x.address) for x in mine})

    def _unreachable_reason(self, addresses: list[str]) -> str:
        shown = ", ".join(f"[{a}]" if ":" in a else a for a in addresses[:4])
        return (f"the app listens on $PORT={self.port} only on {shown}, which the proxy cannot reach (it connects to "
                f"127.0.0.1:{self.port}): make it bind all addresses, 0.0.0.0 (or :: for IPv4 and IPv6), e.g. Node "
                "server.listen(process.env.PORT) with no host, uvicorn/gunicorn --host 0.0.0.0 / --bind 0.0.0.0:$PORT")

    def _ports_elsewhere(self) -> list[int]:
        """Ports this release's own processes listen on other than $PORT (not the version being replaced nor the
        project's other services, which run as the same uid): for telling an app that bound the wrong port."""
        return [p for p in _listening_ports(self.pids) if p != self.port]

    def _check_alive(self) -> None:
        for sup in self.supervisors:
            if not sup.alive:
                raise HealthFailed(f"process '{sup.name}' exited with code {sup.last_exit_code}", timed_out=False)

    async def stop(self, grace: float) -> None:
        self._stopped = True
        try:
            await asyncio.gather(*(s.stop(grace) for s in self.supervisors))
        finally:
            if self.guard is not None:  # --- redteam2 (portguard): the route left this port before the stop
                self.guard.close()
                self.guard = None

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.supervisors)


def listen_poll_pause(waited: float) -> float:
    """Seconds to the next listening check after `waited` seconds (see `ReleaseRun._wait_listening`)."""
    return min(0.02, max(0.001, waited / 50))


async def _accepts(port: int) -> bool:
    """One TCP connect to 127.0.0.1:port (what the proxy will do) succeeds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _listening_ports(pids: list[int]) -> list[int]:
    """TCP ports the processes `pids` and their descendants listen on (their own sockets, from /proc as root)."""
    ports: set[int] = set()
    for pid in pids:
        try:
            leader = psutil.Process(pid)
            family = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in family:
            with contextlib.suppress(psutil.Error, OSError):
                ports.update(c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN)
    return sorted(ports)


def _slow_start(timeout: float) -> str:
    """--- newuser2: an app still running at the health timeout may bind $PORT and only start slowly (a model
    load, a cache warm-up): "make sure it binds ... $PORT" alone sent the agent checking a bind that was right."""
    return (f"; its processes were still running, so if it does bind $PORT it starts slower than this server allows "
            f"({timeout:g}s, INKMCP_HEALTH_TIMEOUT): make it listen first and do slow start-up work after (or in a "
            "release command)")
