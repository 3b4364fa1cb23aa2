"""InkMCP's cost per deploy over Coolify (issue 8, "How we will know"), against the Coolify stand-in.

1. Overhead per deploy: N sequential first deploys (web + worker, one new service each) through DeployService /
   Platform.deploy_app wired as `inkmcp serve` wires it for Coolify (`CoolifyComputeProvider.from_settings` with
   CoolifySettings' production poll schedule, the shared DbBudget on the control-plane Postgres, placement with its
   reservations in the control plane and the node list cached as configured by default). The stand-in runs
   in a process of its own (benchmarks/standin_process.py: its clocks at 0, every request and answer checked
   against Coolify's spec), so none of its work shares this process's GIL.
   Per deploy, **InkMCP's overhead** = wall time from the `deploy_app` call until the pipeline recorded `live`
   minus exactly:
     - the stand-in's own time answering each of this deploy's requests, taken inside the stand-in's process at
       its ASGI boundary (body read, auth, throttle, controller, both spec checks, JSON, writing the answer), and
     - the stand-in's simulated build time: 0 here (build, restart and status clocks at 0; a deployment is
       `finished` at the first look).
   Nothing else is subtracted: HTTP both ways over loopback (httpx, h11, InkMCP's PolicyTransport wire check, and
   uvicorn's parsing in the stand-in's process), JSON decoding and pydantic models of the answers, the database,
   git, and any poll sleep (InkMCP waiting before it looks at a build again) are all InkMCP's. For comparison the
   table also gives the time inside httpx's `AsyncClient.request` ("HTTP as InkMCP saw it") and end to end minus
   that (the definition used before the stand-in had its own process), and the CPU time of InkMCP's process
   per deploy, which a busy machine inflates less than wall time. `--steps` times each step of deploy_app
   and of the pipeline (wall, and the HTTP inside it), for a per-step table of two versions side by side.
   Also per deploy: InkMCP's child processes (git by subcommand), control-plane transactions, autocommit statements
   and connection checkouts, and the request budget's database round trips (`--origins` splits the transactions by
   the function that opened them; `--profile FILE` writes a cProfile of the timed deploys).
1b. The "live" answer as an agent hears it: `deploy_app(wait_seconds=60)` returning `live`, after the moment InkMCP
   read Coolify's last deployment of the release as finished (Coolify's health checks passed); issue 12 item 4 asks
   for 20 ms.
1c. With a simulated build time (`--build-lag`, default 3 s): how long after the stand-in's build ended InkMCP's
   polling (production schedule) read it finished, measured and as the schedule computes it. This lag is InkMCP's
   overhead too (it is not in part 1, where builds take 0 s and the first poll finds them done).
2. Requests per deploy sent to Coolify, from the stand-in's log: first deploy (web + worker; web only), the same
   deploy again (a no-op), a redeploy of a new commit, a redeploy with changed env, `update_env_vars` on a live
   service.
3. 100 concurrent deploy calls from 10 accounts over two replica processes (tests/replicas infrastructure, the
   stand-in unthrottled): wall time, requests, 429s, and every deployment live with its records matching the
   stand-in (one application per process, live commit).
4. With the stand-in at Coolify's real limit (200 requests per 60 s) and the replicas' shared DbBudget at the
   same: 30 concurrent deploys over two replicas: wall time, requests, peak requests in any 60 s, 429s.
   (~4 minutes; `--skip-rate` leaves it out.)

    .venv/bin/python benchmarks/coolify_deploy.py
    .venv/bin/python benchmarks/coolify_deploy.py --deploys 50 --concurrent 100 --skip-rate
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg
from pydantic import SecretStr

from benchmarks.git_standin_process import GitStandinProcess
from benchmarks.standin_process import StandinProcess
from inkmcp.build import source as smod
from inkmcp.build.source import SourcePolicy
from inkmcp.coolify.budget import BudgetSettings, make_budget
from inkmcp.core.accounts import AccountService
from inkmcp.core.audit import AuditLog
from inkmcp.core.databases import DatabaseService
from inkmcp.core.deployments import DeployRequest, DeployService
from inkmcp.core.envvars import EnvService
from inkmcp.core.leases import LeaseConfig
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.platform import Platform
from inkmcp.core.projects import ProjectService
from inkmcp.metrics import Metrics
from inkmcp.placement.adapter import CoolifyPlacement
from inkmcp.placement.coolify_nodes import CoolifyNodeSource
from inkmcp.placement.records import PlacementService
from inkmcp.placement.settings import NodeCapacity, PlacementSettings
from inkmcp.providers.compute.coolify import policy as policy_module
from inkmcp.providers.compute.coolify import provider as provider_module
from inkmcp.providers.compute.coolify.provider import CoolifyComputeProvider
from inkmcp.providers.compute.coolify.settings import CoolifySettings
from inkmcp.providers.database.postgres import PostgresDatabaseProvider
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import migrate, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from tests.contract.conftest import APP_FILES, PROCFILE
from tests.replicas.coolify_load import assert_matches_standin, coolified, finished, raise_limits
from tests.support import git_repo

GIT = ["git", "-c", "user.email=b@example.com", "-c", "user.name=b"]


def overhead(sample: dict[str, float]) -> float:
    """InkMCP's overhead of one timed deploy: end to end minus both stand-ins' own time (Coolify's, the git host's)."""
    return sample["total"] - sample["asgi"] - sample["git_server"]


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def schedule_lag(build: float, first: float, most: float) -> tuple[float, int]:
    """The provider's poll schedule (`_poll`: a read right after /deploy, then sleeps of `first` s growing x1.5 to
    `most`): how long after a build of `build` s ends the first read that finds it done comes, and the reads made."""
    t, interval, polls = 0.0, first, 1
    while t < build:
        t, interval, polls = t + interval, min(most, interval * 1.5), polls + 1
    return t - build, polls


class GcClock:
    """Seconds Python's cyclic garbage collector ran (gc.callbacks), per deploy: a full collection walks every object
    the process holds, so its cost grows with what the process keeps (spec, models, modules)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.full = 0
        self._started = 0.0
        gc.callbacks.append(self._on)

    def _on(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started
            self.full += info.get("generation") == 2

    def take(self) -> float:
        total, self.total = self.total, 0.0
        return total


gc_clock = GcClock()


class Timed:
    """Accumulates seconds spent inside wrapped awaitables (per deploy: reset, run, read)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def wrap(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*a, **kw)
            finally:
                self.total += time.perf_counter() - t
                self.count += 1

        return timed

    def wrap_sync(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.total += time.perf_counter() - t

        return timed

    def take(self) -> float:
        total, self.total, self.count = self.total, 0.0, 0
        return total


class Counted:
    """Per-deploy counts of what InkMCP itself does: child processes (git by subcommand), control-plane
    transactions and statements, connection checkouts, and the request budget's database round trips."""

    def __init__(self, origins: bool = False) -> None:
        self.counts: dict[str, int] = {}
        self.origins = origins

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def take(self) -> dict[str, int]:
        counts, self.counts = self.counts, {}
        return counts

    def watch_processes(self) -> Callable[[], None]:
        """Count every child started through asyncio (git, tar, sh, setpriv) while a deploy runs."""
        real = asyncio.create_subprocess_exec

        async def counted(program: Any, *args: Any, **kw: Any) -> Any:
            argv = [str(program), *map(str, args)]
            if "--" in argv and "setpriv" in argv[0]:
                argv = argv[argv.index("--") + 1:]
            name = Path(argv[0]).name
            if name == "git":
                sub = next((a for a in argv[1:] if not a.startswith("-") and argv[argv.index(a) - 1] != "-c"), "?")
                self.add("git")
                self.add(f"git {sub}")
            else:
                self.add(f"other: {name}")
            return await real(program, *args, **kw)

        asyncio.create_subprocess_exec = counted  # type: ignore[assignment]

        def undo() -> None:
            asyncio.create_subprocess_exec = real  # type: ignore[assignment]

        return undo

    def watch_engine(self, engine: Any) -> None:
        from sqlalchemy import event

        sync = engine.sync_engine

        def begin(conn: Any) -> None:
            if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                self.add("autocommit connections (one statement each, no BEGIN/COMMIT)")
                return
            self.add("transactions (BEGIN ... COMMIT/ROLLBACK)")
            if self.origins:  # the innermost inkmcp function that opened it (the asyncio task's coroutine stack)
                import greenlet  # SQLAlchemy runs this in a child greenlet; the awaiting coroutines are its parent's

                here = greenlet.getcurrent()
                frame = here.parent.gr_frame if here.parent is not None else sys._getframe(1)
                while frame is not None and not (
                    "/inkmcp/" in frame.f_code.co_filename and "/inkmcp/store/" not in frame.f_code.co_filename
                ):
                    frame = frame.f_back
                where = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}" if frame else "?"
                self.add(f"  transaction from {where}")

        event.listen(sync, "begin", begin)
        event.listen(sync, "before_cursor_execute",
                     lambda conn, cur, stmt, params, ctx, many: self.add("statements"))
        event.listen(sync.pool, "checkout", lambda *a: self.add("connection checkouts (no ping round trip)"))
        self._watch_statement_pool()

    def _watch_statement_pool(self) -> None:
        """Statements on store.statements' psycopg pool bypass the engine: counted here, as statements too."""
        from inkmcp.store.statements import StatementPool

        for name, label in (("fetch", "reads"), ("write", "writes")):
            real = getattr(StatementPool, name)

            async def counted(pool: Any, query: str, params: Any = (), _real: Any = real, _label: str = label) -> Any:
                self.add("statements")
                self.add(f"statement pool {_label} (prepared, autocommit)")
                return await _real(pool, query, params)

            setattr(StatementPool, name, counted)
        real_tx = getattr(StatementPool, "transaction", None)
        if real_tx is not None:  # several statements with BEGIN and COMMIT in one round trip (pipeline mode)
            async def transaction(pool: Any, statements: Any, _real: Any = real_tx) -> Any:
                self.add("statements", len(statements))
                self.add("statement pool pipelined transactions (one round trip each)")
                return await _real(pool, statements)

            StatementPool.transaction = transaction  # type: ignore[method-assign]
        real_conn = getattr(StatementPool, "connection", None)
        if real_conn is not None:  # an interactive transaction (placement's reserve: a few pipelined round trips)
            add = self.add

            class Counted:
                """The connection, counting its statements (as statements too)."""

                def __init__(self, conn: Any) -> None:
                    self._conn = conn

                def __getattr__(self, name: str) -> Any:
                    return getattr(self._conn, name)

                async def execute(self, *args: Any, **kw: Any) -> Any:
                    add("statements")
                    add("statement pool statements in interactive transactions (pipelined)")
                    return await self._conn.execute(*args, **kw)

            @contextlib.asynccontextmanager
            async def connection(pool: Any, _real: Any = real_conn) -> Any:
                add("statement pool interactive transactions (placement reserve)")
                async with _real(pool) as conn:
                    yield Counted(conn)

            StatementPool.connection = connection  # type: ignore[method-assign]


class Steps:
    """`--steps`: per deploy, the wall time spent inside named steps of deploy_app and its pipeline (inclusive: a
    step inside another counts in both), and the part of it spent in Coolify HTTP calls (`http`). Steps a version
    of InkMCP does not have are left out, so the same table can be printed for two versions side by side."""

    def __init__(self, http: Timed) -> None:
        self.http = http
        self.per: dict[str, list[float]] = {}  # name -> [wall, http, calls, first start, last end] of the deploy
        self.started = 0.0  # when the running deploy started (perf_counter): starts and ends are offsets from it
        self.samples: list[dict[str, list[float]]] = []
        self.order: list[str] = []
        self._undo: list[tuple[Any, str, Any, bool]] = []

    def wrap(self, name: str, owner: Any, attr: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            return
        self.order.append(name)
        own = attr in getattr(owner, "__dict__", {})
        steps = self

        def add(t: float, h: float) -> None:
            now = time.perf_counter()
            entry = steps.per.setdefault(name, [0.0, 0.0, 0.0, t - steps.started, 0.0])
            entry[0] += now - t
            entry[1] += steps.http.total - h
            entry[2] += 1
            entry[4] = now - steps.started

        if asyncio.iscoroutinefunction(fn):
            async def timed(*a: Any, **kw: Any) -> Any:
                t, h = time.perf_counter(), steps.http.total
                try:
                    return await fn(*a, **kw)
                finally:
                    add(t, h)
        else:
            def timed(*a: Any, **kw: Any) -> Any:  # type: ignore[misc]
                t, h = time.perf_counter(), steps.http.total
                try:
                    return fn(*a, **kw)
                finally:
                    add(t, h)

        self._undo.append((owner, attr, getattr(owner, "__dict__", {}).get(attr), own))
        setattr(owner, attr, timed)

    def take(self) -> None:
        self.samples.append(self.per)
        self.per = {}

    def undo(self) -> None:
        for owner, attr, old, own in reversed(self._undo):
            if own:
                setattr(owner, attr, old)
            else:
                delattr(owner, attr)

    def print(self) -> None:
        print("\n| step (inclusive; indented = inside the one above) | calls | wall p50 ms | of which HTTP p50 ms | "
              "not HTTP p50 ms | first start p50 ms | last end p50 ms |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name in self.order:
            vals = [s.get(name, [0.0, 0.0, 0.0, 0.0, 0.0]) for s in self.samples]
            if not any(v[2] for v in vals):
                continue
            print(f"| {name} | {pct([v[2] for v in vals], 50):.0f} | {pct([v[0] for v in vals], 50) * 1000:.1f} | "
                  f"{pct([v[1] for v in vals], 50) * 1000:.1f} | {pct([v[0] - v[1] for v in vals], 50) * 1000:.1f} | "
                  f"{pct([v[3] for v in vals], 50) * 1000:.1f} | {pct([v[4] for v in vals], 50) * 1000:.1f} |")


def watch_steps(steps: Steps, platform: Any, deploys: Any, projects: Any, compute: Any, budget: Any) -> None:
    """The steps `--steps` times (whichever of them this version of InkMCP has)."""
    from inkmcp.build import source as smod
    from inkmcp.core import deployments as dmod
    from inkmcp.store.statements import StatementPool

    for name, owner, attr in (
        ("deploy_app (until it answers)", platform, "deploy_app"),
        ("  precheck_deploy", projects, "precheck_deploy"),
        ("  projects.ensure", projects, "ensure"),
        ("  projects.ensure_with (the project and a new service, one transaction)", projects, "ensure_with"),
        ("    _upsert_service_in", deploys, "_upsert_service_in"),
        ("  _new_project_and_service (a new project and its service: one round trip)", deploys,
         "_new_project_and_service"),
        ("  fetch_commit (git fetch, resolve, size)", dmod, "fetch_commit"),
        ("    git fetch", smod, "_fetch"),
        ("    git cat-file: resolve the ref", smod, "_resolve"),
        ("    git cat-file: list the commit's files", smod._CatFile, "listing"),
        ("    git cat-file: write the plan's files", smod._CatFile, "write_files"),
        ("  checkout_fetched (runs beside the database work)", dmod, "checkout_fetched"),
        ("  _service_and_env (the service's id and env; a new one made)", deploys, "_service_and_env"),
        ("    EnvService.resolve_named", deploys._envs, "resolve_named"),
        ("  databases.env_for", deploys._databases, "env_for"),
        ("  _reusable", deploys, "_reusable"),
        ("  derive_plan", dmod, "derive_plan"),
        ("  _create_or_reuse", deploys, "_create_or_reuse"),
        ("  _create_with_reads (with the pipeline's first reads)", deploys, "_create_with_reads"),
        ("  source_workspace", compute, "source_workspace"),
        ("  audit record (after the call)", platform.audit, "record"),
        ("pipeline: _wait_turn", deploys, "_wait_turn"),
        ("pipeline: _load", deploys, "_load"),
        ("pipeline: _load_first (the rows and the service's older deployments, one statement)", deploys,
         "_load_first"),
        ("pipeline: _release_request", deploys, "_release_request"),
        ("pipeline: compute.release", compute, "release"),
        ("  _ensure_server (placement)", compute, "_ensure_server"),
        ("  _ensure_project", compute, "_ensure_project"),
        ("    _after_lost_claim (another pipeline creates the project)", compute, "_after_lost_claim"),
        ("  _ensure_apps", compute, "_ensure_apps"),
        ("  _patch (configure)", compute, "_patch"),
        ("  _set_env", compute, "_set_env"),
        ("  _start_deployments (write-ahead marks, the /deploys side by side)", compute, "_start_deployments"),
        ("  _premark_apps (the applications' marks, beside the project's read)", compute, "_premark_apps"),
        ("  _mark_deployments (the deployments' marks; a first deploy's beside its env PATCHes)", compute,
         "_mark_deployments"),
        ("  _send_deployments (the /deploys side by side)", compute, "_send_deployments"),
        ("  _wait (poll until finished)", compute, "_wait"),
        ("  _until_reported", compute, "_until_reported"),
        ("pipeline: _record (progress steps)", deploys, "_record"),
        ("pipeline: _record_live", deploys, "_record_live"),
        ("any: statement pool write (fenced steps, refs)", StatementPool, "write"),
        ("any: statement pool read", StatementPool, "fetch"),
        ("any: request budget reserve", budget, "reserve"),
        ("pipeline: _run (the whole pipeline task)", deploys, "_run"),
    ):
        steps.wrap(name, owner, attr)
    for attr in ("list_servers", "list_projects", "create_project", "get_project", "create_public_application",
                 "list_applications", "update_application", "list_envs", "update_envs", "list_deployments", "deploy",
                 "get_deployment", "get_application"):  # each Coolify call (its HTTP, JSON and model)
        steps.wrap(f"client.{attr}", compute.client, attr)


_FAST_FETCH = list(smod._FAST_FETCH)
_KEEP, _FOLDS = provider_module._RefBatch.keep, provider_module._RefBatch._folds


def set_overhead9(on: bool) -> None:
    """overhead9's three changes on or off (`--ab-overhead9`): a new mirror's first fetch as one pack without fsync
    (source._FAST_FETCH), a first deploy's env PATCHes before its applications' uuids are written (_RefBatch.keep),
    a `building` step of a build done at the first look held for the batch's next write (_RefBatch._folds)."""
    smod._FAST_FETCH[:] = _FAST_FETCH if on else []
    provider_module._RefBatch.keep = _KEEP if on else (lambda self: contextlib.nullcontext())  # type: ignore
    provider_module._RefBatch._folds = _FOLDS if on else (lambda self: False)  # type: ignore


_OVERHEAD8 = {"on": True, "switched": False}


def set_overhead8(on: bool) -> None:
    """overhead8's changes (this session) on or off (`--ab-overhead8`): a new deployment's pipeline's first reads
    made by the transaction that creates it (DeployService._create_with_reads with the project's id; the switch is
    put in on the first call, before `--steps` wraps the instance's methods), and a first release's write-ahead marks
    written beside what precedes them (CoolifyComputeProvider.early_marks: its applications' marks beside the read of
    its new Coolify project, its deployments' marks beside its env PATCHes)."""
    _OVERHEAD8["on"] = on
    CoolifyComputeProvider.early_marks = on  # a first release's marks beside the project read and the env PATCHes
    real = getattr(DeployService, "_create_with_reads", None)
    if real is not None and not _OVERHEAD8["switched"]:
        _OVERHEAD8["switched"] = True

        async def switched(self: Any, *a: Any, project_id: Any = None, **kw: Any) -> Any:
            return await real(self, *a, project_id=project_id if _OVERHEAD8["on"] else None, **kw)

        DeployService._create_with_reads = switched  # type: ignore[method-assign]


class _AsyncioWithTimedSleep:
    """The provider module's `asyncio`, with `sleep` timed (its poll waits for Coolify's builds)."""

    def __init__(self, timer: Timed) -> None:
        self._sleep = timer.wrap(asyncio.sleep)

    def __getattr__(self, name: str) -> Any:
        return self._sleep if name == "sleep" else getattr(asyncio, name)


def repo(root: Path, procfile: str = PROCFILE) -> Path:
    return git_repo(root / uuid.uuid4().hex[:8], {**APP_FILES, "Procfile": procfile})


def new_commit(path: Path, text: str) -> None:
    (path / "VERSION").write_text(text)
    subprocess.run([*GIT, "-C", str(path), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(path), "commit", "-q", "-m", text], check=True)


async def in_process(db_url: str, root: Path, deploys_n: int, profile: str | None = None,
                     origins: bool = False, json_out: str | None = None, steps_wanted: bool = False,
                     build_lag: list[float] | None = None, build_lag_deploys: int = 2,
                     ab_async_commit: bool = False, ab_overhead9: bool = False, ab_overhead8: bool = False,
                     git_over: str = "https", ab_ca_dir: bool = False, ab_fetch: bool = False) -> None:
    """Parts 1 and 2: one DeployService in this process, the stand-in in a process of its own (clocks at 0)."""
    standin = StandinProcess(root / "nodes", servers=1)
    githost = GitStandinProcess(root / "githost") if git_over in ("https", "both") else None
    real_bundle, real_ca_env = smod.CA_BUNDLE, smod._ca_env
    if githost is not None:  # InkMCP's git trusts the system's authorities and the git stand-in's
        smod.CA_BUNDLE = str(githost.bundle)
    token = standin.token
    store = await open_store(db_url, pool_size=5, max_overflow=5)
    sessions = store.sessionmaker
    box = SecretBox.load(root / "data")
    # InkMCP's production poll schedule (CoolifySettings' defaults): a poll that finds a build still running waits
    # as long as it would in production, and that wait is InkMCP's overhead
    settings = CoolifySettings(url=standin.url, token=SecretStr(token), dev_local_repos=True, use_build_server=False)
    budget = make_budget(token, db_url, settings=BudgetSettings(limit=10_000_000))
    compute = CoolifyComputeProvider.from_settings(settings, root / "compute", budget=budget)
    # placement as `inkmcp serve` wires it (app._compute): reservations in the control plane, the node list cached
    placement = PlacementSettings(default_node=NodeCapacity(memory_mb=10_000_000, cpus=1000))
    compute.place = CoolifyPlacement(PlacementService(sessions, CoolifyNodeSource(compute.client, placement),
                                                      placement.policy()))
    http, sleeps = Timed(), Timed()
    if hasattr(compute.client, "_send"):  # each attempt's HTTP exchange (the client's direct transport path)
        compute.client._send = http.wrap(compute.client._send)  # type: ignore[method-assign]
    else:  # an older InkMCP (A/B runs against an earlier commit): httpx's client
        compute.client._http.request = http.wrap(compute.client._http.request)  # type: ignore[method-assign]
    counted = Counted(origins=origins)
    counted.watch_engine(store.engine)
    unwatch = counted.watch_processes()
    finished_at: list[float] = []  # when InkMCP read a Coolify deployment as finished (Coolify's health check passed)
    first_finished: dict[str, float] = {}  # Coolify deployment uuid -> when InkMCP first read it finished (monotonic)
    real_get_deployment = compute.client.get_deployment

    async def get_deployment(uuid_: str) -> Any:
        dep = await real_get_deployment(uuid_)
        if dep.status == "finished":
            finished_at.append(time.perf_counter())
            first_finished.setdefault(uuid_, time.monotonic())
        return dep

    compute.client.get_deployment = get_deployment  # type: ignore[method-assign]
    provider_module.asyncio = _AsyncioWithTimedSleep(sleeps)  # type: ignore[attr-defined]
    limits = LimitDefaults(max_projects=1000, max_concurrent_builds=100)
    postgres = PostgresDatabaseProvider(SecretStr("postgresql://unused@127.0.0.1:1/unused"), public_host="127.0.0.1",
                                        public_port=1)  # fmt: skip
    projects, envs = ProjectService(sessions, box, limits), EnvService(sessions, box)
    databases = DatabaseService(sessions, box, postgres, None, limits)
    deploys = DeployService(sessions, projects=projects, envs=envs, databases=databases, compute=compute,
                            work_dir=root / "work", sources=SourcePolicy(allow_local=True), mac_key=b"k" * 32,
                            metrics=Metrics(), max_env_bytes=65536,
                            replica=LeaseConfig(replica_id="bench"))  # fmt: skip
    accounts = AccountService(sessions, limits)
    platform = Platform(sessions, accounts=accounts, audit=AuditLog(sessions), projects=projects, envs=envs,
                        databases=databases, deploys=deploys, compute=compute, max_env_bytes=65536)  # fmt: skip
    await deploys.restore_all()  # as `inkmcp serve` starts: heartbeat and takeover scans
    p = await accounts.principal_for("bench", "bench")
    steps = Steps(http)
    if ab_overhead8:
        set_overhead8(on=True)
    if steps_wanted:
        watch_steps(steps, platform, deploys, projects, compute, budget)

    accepted: list[float] = []

    def timed_repo(i: int) -> str:
        """Part 1's repository for deploy i: served by the git stand-in (its own time subtracted, as a git host's in
        production) or a local path (the git server's side runs here, as InkMCP's child processes)."""
        if githost is not None and (git_over == "https" or i % 2 == 0):
            return githost.repo({**APP_FILES, "Procfile": PROCFILE})
        return str(repo(root))

    async def deploy(req: DeployRequest) -> dict[str, Any]:
        t = time.perf_counter()
        view = await platform.deploy_app(p, req, wait_seconds=0)
        accepted.append(time.perf_counter() - t)
        held = deploys._held.get(uuid.UUID(view.deployment_id))
        if held is not None:
            await asyncio.wait_for(asyncio.shield(held[1]), 60)  # the pipeline task: ends right after `live`
        done = await deploys.wait(p, uuid.UUID(view.deployment_id), timeout=30)
        assert done.status == "live", (done, standin.log()[-10:])
        return {"id": view.deployment_id, "reused": view.reused}

    try:
        # warm-up (imports, connection pools, spec caches), not counted
        for i in range(4):
            await deploy(DeployRequest(repo_url=timed_repo(i), project_name=f"warm-{i}"))
        samples: list[dict[str, float]] = []
        kinds_seen: list[list[str]] = []
        work: list[dict[str, int]] = []
        budget_trips = getattr(budget, "round_trips", 0)
        profiler = cProfile.Profile() if profile else None
        for i in range(deploys_n):
            r = timed_repo(i)
            if ab_overhead9:  # odd deploys without overhead9's three changes (A), even ones with them (B)
                set_overhead9(on=i % 2 == 0)
            if ab_overhead8:  # odd deploys without overhead8's changes (A), even ones with them (B)
                set_overhead8(on=i % 2 == 0)
            if ab_ca_dir:  # odd deploys with git reading the CA directory too (libcurl's default), even ones without
                smod._ca_env = real_ca_env if i % 2 == 0 else (  # type: ignore[method-assign]
                    lambda: {"GIT_SSL_CAINFO": str(smod.CA_BUNDLE)})
            if ab_fetch:  # odd deploys' first fetch by `git fetch` (A), even ones' in InkMCP's process (B)
                smod.IN_PROCESS_FETCH = i % 2 == 0
            if ab_async_commit:  # odd deploys with every commit of the control plane asynchronous (no WAL flush)
                with psycopg.connect(db_url.replace("+psycopg", ""), autocommit=True) as admin:
                    admin.execute(f"ALTER SYSTEM SET synchronous_commit = {'off' if i % 2 else 'on'}")
                    admin.execute("SELECT pg_reload_conf()")
                await asyncio.sleep(0.05)  # the backends take the reloaded setting at their next statement
            http.take(), sleeps.take(), counted.take()
            steps.per.clear()
            steps.started = time.perf_counter()
            before = standin.count()
            git_before = githost.count() if githost is not None else 0
            if profiler is not None:
                profiler.enable()
            gc_clock.take()
            t, cpu, ru = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
            await deploy(DeployRequest(repo_url=str(r), project_name=f"bench-{i}", env_vars={"MESSAGE": str(i)}))
            total, cpu = time.perf_counter() - t, time.process_time() - cpu
            ru_end = resource.getrusage(resource.RUSAGE_SELF)
            kernel = ru_end.ru_stime - ru.ru_stime
            gc_seconds = gc_clock.take()
            if profiler is not None:
                profiler.disable()
            steps.take()
            seen = standin.requests_since(before, token)  # after the timed window: the admin route is not timed
            git_seen = githost.since(git_before) if githost is not None else []
            samples.append({"total": total, "http": http.take(), "sleep": sleeps.take(),
                            "asgi": sum(r.asgi for r in seen), "accept": accepted[-1], "requests": len(seen),
                            "cpu": cpu, "kernel": kernel, "gc": gc_seconds, "over_http": r.startswith("https://"),
                            "git_server": sum(g["seconds"] for g in git_seen), "git_requests": len(git_seen)})
            kinds_seen.append([f"{r.method} {r.operation or r.path} {r.status}" for r in seen])
            work.append(counted.take())
            trips = getattr(budget, "round_trips", 0)
            work[-1]["request budget round trips"] = trips - budget_trips
            budget_trips = trips
        def ab_rows(cpu: bool = True, a_odd: bool = True) -> None:
            """A same-run A/B's rows: p50 of A's deploys (the odd ones, or the even with `a_odd=False`) and of B's,
            and B - A."""
            rows = [("InkMCP overhead", None), ("end to end", "total"), ("deploy_app until it answers", "accept")]
            for name, key in rows + ([("CPU time of InkMCP's process", "cpu")] if cpu else []):
                vals = [overhead(s) if key is None else s[key] for s in samples]
                even, odd = pct(vals[0::2], 50) * 1000, pct(vals[1::2], 50) * 1000
                a, b = (odd, even) if a_odd else (even, odd)
                print(f"| {name} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")

        if ab_overhead8:
            set_overhead8(on=True)
            print("\n## --ab-overhead8: A (odd deploys) without, B (even deploys) with overhead8's changes (the "
                  "pipeline's first reads in the transaction that creates the deployment, the write-ahead marks "
                  "beside the project read and the env PATCHes)\n\n"
                  "| p50 ms | A: without | B: with | B - A |\n| --- | ---: | ---: | ---: |")
            ab_rows()
        if ab_ca_dir:
            smod._ca_env = real_ca_env  # type: ignore[method-assign]
            print("\n## --ab-ca-dir: A (odd deploys) git reads the CA directory besides the bundle (libcurl's "
                  "default), B (even deploys) the bundle only (inkmcp.build.source.CA_BUNDLE)\n\n"
                  "| p50 ms | A: bundle + directory | B: bundle only | B - A |\n| --- | ---: | ---: | ---: |")
            ab_rows(cpu=False)
        if ab_fetch:
            smod.IN_PROCESS_FETCH = True
            print("\n## --ab-fetch: A (odd deploys) a new mirror's first fetch by `git fetch`, B (even deploys) in "
                  "InkMCP's process (inkmcp/build/http_fetch.py)\n\n"
                  "| p50 ms | A: git fetch | B: in process | B - A |\n| --- | ---: | ---: | ---: |")
            ab_rows()
        if ab_overhead9:
            set_overhead9(on=True)
            print("\n## --ab-overhead9: A (odd deploys) without, B (even deploys) with overhead9's changes (a new "
                  "mirror's fetch as one unsynced pack, a first deploy's env PATCHes before its apps' uuids are "
                  "written, a building step held for the next write)\n\n| p50 ms | A: without | B: with | B - A |\n"
                  "| --- | ---: | ---: | ---: |")
            ab_rows()
        if ab_async_commit:
            with psycopg.connect(db_url.replace("+psycopg", ""), autocommit=True) as admin:
                admin.execute("ALTER SYSTEM RESET synchronous_commit")
                admin.execute("SELECT pg_reload_conf()")
            print("\n## --ab-async-commit: every commit a WAL flush (A, even deploys) or none (B, odd; "
                  "synchronous_commit = off for the whole control plane, an upper bound of what the marks alone "
                  "could save)\n\n| p50 ms | A: synchronous | B: asynchronous | B - A |\n| --- | ---: | ---: | ---: |")
            ab_rows(cpu=False, a_odd=False)
        groups = [("over http", [s for s in samples if s["over_http"]]), ("local path", [s for s in samples
                                                                             if not s["over_http"]])]
        rows: dict[str, list[float]] = {}
        for _where, group in groups:
            if not group:
                continue
            where = ("the repository fetched over https from the git stand-in (a process of its own, its time "
                     "subtracted as a git host's)" if group[0]["over_http"] else
                     "the repository a local path (the git server's side runs here, in InkMCP's column)")
            print(f"\n## 1. InkMCP overhead per deploy over the stand-ins ({len(group)} first deploys, web + worker, "
                  f"stand-in clocks at 0, DbBudget on Postgres; {where})\n")
            print("| per deploy | p50 ms | p90 ms | p99 ms |\n| --- | ---: | ---: | ---: |")
            table = {
                "end to end (deploy_app → live recorded)": [s["total"] for s in group],
                "  of which deploy_app until it answers (resolve commit, plan, record; no Coolify call)":
                    [s["accept"] for s in group],
                "the Coolify stand-in's own time answering them (its ASGI boundary, in its process)":
                    [s["asgi"] for s in group],
                "the git stand-in's own time answering the fetch (its ASGI boundary, in its process)":
                    [s["git_server"] for s in group],
                "Coolify HTTP calls as InkMCP saw them (the above + HTTP both ways + httpx)":
                    [s["http"] for s in group],
                "poll sleeps (InkMCP waiting to look at Coolify's build again)": [s["sleep"] for s in group],
                "**InkMCP overhead** (end to end - both stand-ins' own time - simulated build time (0))":
                    [overhead(s) for s in group],
                "overhead without HTTP transport (end to end - Coolify HTTP as InkMCP saw it - git host's time)":
                    [s["total"] - s["http"] - s["git_server"] for s in group],
                "CPU time of InkMCP's process (all threads; not git, not PostgreSQL)": [s["cpu"] for s in group],
                "  of which in the kernel (system calls: sockets, fork/exec, files)": [s["kernel"] for s in group],
                "Python's garbage collector (wall, inside the deploy)": [s["gc"] for s in group],
            }
            if not group[0]["over_http"]:
                del table["the git stand-in's own time answering the fetch (its ASGI boundary, in its process)"]
            for name, vals in table.items():
                print(f"| {name} | {pct(vals, 50) * 1000:.1f} | {pct(vals, 90) * 1000:.1f} | "
                      f"{pct(vals, 99) * 1000:.1f} |")
            if group[0]["over_http"]:
                print(f"\ngit requests per deploy: {sorted({int(s['git_requests']) for s in group})}")
            rows = rows or table  # the JSON figures: the first group's (over HTTP when it ran)
        print(f"\nrequests per deploy: {sorted({int(s['requests']) for s in samples})}")
        medians_requests = sorted(int(s["requests"]) for s in samples)[len(samples) // 2]
        for kinds in kinds_seen:  # a deploy that sent more or fewer requests than most: which ones
            if len(kinds) != medians_requests:
                print(f"  a deploy with {len(kinds)} requests: {', '.join(kinds)}")
        print("\n| InkMCP's own work per deploy | median | max |\n| --- | ---: | ---: |")
        medians: dict[str, int] = {"requests to Coolify": medians_requests}
        for key in sorted({k for c in work for k in c}):
            vals = sorted(c.get(key, 0) for c in work)
            medians[key] = vals[len(vals) // 2]
            print(f"| {key} | {vals[len(vals) // 2]} | {vals[-1]} |")
        if steps_wanted:
            steps.print()
            steps.undo()
        if profiler is not None:
            profiler.dump_stats(profile)
            print(f"\ncProfile of the timed deploys written to {profile} (python -m pstats {profile})")

        # 1b. the "live" answer as an agent hears it (deploy_app waiting), against Coolify's health check
        lags: list[float] = []
        for i in range(max(5, deploys_n // 2)):
            finished_at.clear()
            view = await platform.deploy_app(p, DeployRequest(repo_url=str(repo(root)), project_name=f"lag-{i}"),
                                             wait_seconds=60)
            heard = time.perf_counter()
            assert view.status == "live", view
            lags.append(heard - finished_at[-1])
        print(f"\n## 1b. \"live\" heard by deploy_app(wait_seconds=60) after InkMCP read Coolify's deployment as "
              f"finished (its health check passed), {len(lags)} deploys (issue 12 item 4: within 20 ms)\n")
        print(f"| p50 ms | p99 ms |\n| ---: | ---: |\n| {pct(lags, 50) * 1000:.1f} | {pct(lags, 99) * 1000:.1f} |")
        if json_out:
            figures = {name.strip(" *"): {"p50_ms": round(pct(v, 50) * 1000, 1), "p90_ms": round(pct(v, 90) * 1000, 1),
                                          "p99_ms": round(pct(v, 99) * 1000, 1)}
                       for name, v in rows.items()}
            figures["InkMCP overhead"] = figures[next(k for k in figures if k.startswith("InkMCP overhead**"))]
            figures["live heard after Coolify's health check"] = {"p50_ms": round(pct(lags, 50) * 1000, 1),
                                                                  "p99_ms": round(pct(lags, 99) * 1000, 1)}
            Path(json_out).write_text(json.dumps({
                "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "deploys": deploys_n,
                "load_average": Path("/proc/loadavg").read_text().split()[:3], "figures": figures,
                "per_deploy_median": medians}, indent=2) + "\n")  # fmt: skip

        # 1c. how late InkMCP's polling (production schedule) notices the end of a build that takes time
        if build_lag:
            print(f"\n## 1c. Build end noticed by InkMCP's polling (CoolifySettings' schedule: "
                  f"{settings.poll_interval:g} s, x1.5, up to {settings.poll_max_interval:g} s), after the stand-in's "
                  "simulated build ended\n")
            print("| simulated build | deploys | lag p50 s | lag max s | schedule's lag (computed) s | polls per "
                  "deployment |\n| ---: | ---: | ---: | ---: | ---: | ---: |")
            for seconds in build_lag:
                standin.set_build_seconds(seconds)
                late: list[float] = []
                for i in range(build_lag_deploys):
                    first_finished.clear()
                    await deploy(DeployRequest(repo_url=str(repo(root)), project_name=f"slow-{seconds:g}-{i}"))
                    ends = standin.build_ends()
                    late += [seen - ends[dep_uuid] for dep_uuid, seen in first_finished.items()]
                lag, polls = schedule_lag(seconds, settings.poll_interval, settings.poll_max_interval)
                print(f"| {seconds:g} s | {build_lag_deploys} | {pct(late, 50):.2f} | {max(late):.2f} | {lag:.2f} | "
                      f"{polls} |")
            standin.set_build_seconds(0.0)
            print("\n| build (computed from the schedule, not run) | lag s | polls per deployment |\n"
                  "| ---: | ---: | ---: |")
            for seconds in (10, 30, 60, 120, 180, 300, 600):
                lag, polls = schedule_lag(seconds, settings.poll_interval, settings.poll_max_interval)
                print(f"| {seconds} s | {lag:.2f} | {polls} |")

        # 2. requests per deploy, by kind
        counts: list[tuple[str, int, str]] = []

        async def count(name: str, action: Callable[[], Awaitable[Any]]) -> None:
            before = standin.count()
            await action()
            seen = standin.requests_since(before, token)
            kinds: dict[str, int] = {}
            for s in seen:
                key = f"{s.method} {s.operation or s.path}"
                kinds[key] = kinds.get(key, 0) + 1
            counts.append((name, len(seen), ", ".join(f"{k} {v}" for k, v in kinds.items())))

        r = repo(root)
        req = DeployRequest(repo_url=str(r), project_name="kinds", env_vars={"MESSAGE": "one"})
        await count("first deploy (web + worker)", lambda: deploy(req))
        await count("same deploy again (no-op)", lambda: deploy(req))
        new_commit(r, "v2")
        await count("redeploy, new commit", lambda: deploy(req))
        req2 = DeployRequest(repo_url=str(r), project_name="kinds", env_vars={"MESSAGE": "two"})
        await count("redeploy, changed env (deploy_app)", lambda: deploy(req2))

        async def env_change() -> None:
            result = await platform.update_env_vars(p, "kinds", {"EXTRA": "1"}, None)
            assert not getattr(result, "failed", None), result

        await count("update_env_vars on the live service", env_change)
        web_only = repo(root, PROCFILE.splitlines()[0] + "\n")
        await count("first deploy (web only)", lambda: deploy(DeployRequest(repo_url=str(web_only),
                                                                            project_name="webonly")))
        print("\n## 2. Requests sent to Coolify per deploy\n")
        print("| deploy | requests | by operation |\n| --- | ---: | --- |")
        for name, n, detail in counts:
            print(f"| {name} | {n} | {detail} |")
        assert standin.throttled() == [] and not standin.request_violations, standin.request_violations[:3]
    finally:
        unwatch()
        provider_module.asyncio = asyncio  # type: ignore[attr-defined]
        await deploys.close()
        await postgres.close()
        await store.close()
        standin.stop()
        if githost is not None:
            smod.CA_BUNDLE, smod._ca_env = real_bundle, real_ca_env  # type: ignore[method-assign]
            githost.stop()


async def concurrent(pg: EmbeddedPostgres, n: int) -> None:
    """Part 3: n concurrent deploys from 10 accounts over two replica processes."""
    async with coolified(pg) as cf:
        r = cf.cluster.repo()
        calls = [(f"acct-{i % 10}", f"conc-{i}") for i in range(n)]
        await raise_limits(cf, {a for a, _ in calls}, n)
        started = time.monotonic()
        ids = await asyncio.gather(*(cf.deploy(k % 2, acct, project, acct, r) for k, (acct, project)
                                     in enumerate(calls)))  # fmt: skip
        deps = [await finished(cf.cluster, d, 600) for d in ids]
        took = time.monotonic() - started
        for dep in deps:
            assert dep.status == "live", dep.error
            await assert_matches_standin(cf, dep)
        s = cf.standin
        print(f"\n## 3. {n} concurrent deploy calls from 10 accounts over two replicas (stand-in unthrottled)\n")
        queue_full = [r for r in s.throttled() if r.method == "POST" and r.path.endswith("/deploy")]
        print("| wall time | deployments live | requests | requests per deploy | 429 rate limit | 429 deploy queue "
              "full (handled) | duplicate apps |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print(f"| {took:.1f} s | {sum(d.status == 'live' for d in deps)}/{n} | {s.request_count(cf.token)} | "
              f"{s.request_count(cf.token) / n:.1f} | {len(s.throttled()) - len(queue_full)} | {len(queue_full)} | "
              "0 (checked per service) |")


async def rate_limited(pg: EmbeddedPostgres, n: int) -> None:
    """Part 4: Coolify's real 200 requests per 60 s, the replicas' DbBudget at the same."""
    budget = {"INKMCP_COOLIFY_RATE_LIMIT": "200", "INKMCP_COOLIFY_RATE_WINDOW": "60",
              "REPLICA_COOLIFY_RETRY": "production", "REPLICA_RETRY_WINDOW": "900"}  # DeployService's default
    async with coolified(pg, standin_kw={"rate_limit": 200, "rate_window": 60.0},
                         replica_env=lambda url: {**budget, "REPLICA_COOLIFY_BUDGET_URL": url}) as cf:
        r = cf.cluster.repo()
        calls = [(f"acct-{i % 10}", f"rate-{i}") for i in range(n)]
        await raise_limits(cf, {a for a, _ in calls}, n)
        started = time.monotonic()
        ids = await asyncio.gather(*(cf.deploy(k % 2, acct, project, acct, r) for k, (acct, project)
                                     in enumerate(calls)))  # fmt: skip
        deps = [await finished(cf.cluster, d, 1200) for d in ids]
        took = time.monotonic() - started
        for dep in deps:
            assert dep.status == "live", dep.error
            await assert_matches_standin(cf, dep)
        s = cf.standin
        print(f"\n## 4. {n} concurrent deploys over two replicas, stand-in at 200 requests / 60 s, shared DbBudget\n")
        waits = sum(r.log.read_text().count("request budget spent, waiting") for r in cf.cluster.replicas)
        queue_full = [r for r in s.throttled() if r.method == "POST" and r.path.endswith("/deploy")]
        print("| wall time | live | requests | peak in any 60 s | 429 rate limit | 429 deploy queue full (handled) | "
              "budget waits in the clients |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print(f"| {took:.1f} s | {sum(d.status == 'live' for d in deps)}/{n} | {s.request_count(cf.token)} | "
              f"{s.peak_rate(cf.token, 60.0)} | {len(s.throttled()) - len(queue_full)} | {len(queue_full)} | {waits} |")


def use_transport(name: str) -> None:
    """The transport the provider's PolicyTransport wraps (issue 8: LeanTransport against the libraries)."""
    if name == "httpx":
        policy_module.LeanTransport = httpx.AsyncHTTPTransport  # type: ignore[attr-defined,misc]
    elif name == "aiohttp":
        from httpx_aiohttp import AiohttpTransport  # not in the lock file: a scratch venv with httpx-aiohttp

        policy_module.LeanTransport = AiohttpTransport  # type: ignore[attr-defined,misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deploys", type=int, default=30, help="sequential deploys timed in part 1 (default 30)")
    parser.add_argument("--concurrent", type=int, default=100, help="concurrent deploys in part 3 (default 100)")
    parser.add_argument("--rate-deploys", type=int, default=30, help="concurrent deploys in part 4 (default 30)")
    parser.add_argument("--skip-rate", action="store_true", help="leave out part 4 (~4 min at 200/min)")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of part 1's timed deploys to FILE")
    parser.add_argument("--origins", action="store_true", help="count part 1's transactions by the function that "
                        "opened them")
    parser.add_argument("--steps", action="store_true", help="time part 1's deploys by step (deploy_app's and the "
                        "pipeline's, with the HTTP inside each)")
    parser.add_argument("--json", metavar="FILE", help="also write part 1's figures to FILE (benchmarks/baselines/)")
    parser.add_argument("--build-lag", default="3", metavar="SECONDS[,SECONDS]",
                        help="part 1c: simulated build times whose end InkMCP's polling must notice (default 3; '' "
                             "leaves 1c out; two deploys each)")
    parser.add_argument("--transport", choices=("lean", "httpx", "aiohttp"), default="lean",
                        help="part 1/2: the HTTP transport under the Coolify client's policy check: InkMCP's "
                             "LeanTransport (default), httpx's own (httpcore), or httpx-aiohttp's (if installed)")
    parser.add_argument("--ab-async-commit", action="store_true",
                        help="part 1: even deploys as configured, odd ones with the control plane's synchronous_commit "
                             "off (no WAL flush per commit): a same-run A/B of what the fenced writes' flushes cost")
    parser.add_argument("--ab-overhead9", action="store_true",
                        help="part 1: a same-run A/B of overhead9's changes (odd deploys without them, even with)")
    parser.add_argument("--ab-overhead8", action="store_true",
                        help="part 1: a same-run A/B of overhead8's changes (odd deploys without them, even with)")
    parser.add_argument("--git", choices=("https", "local", "both"), default="https",
                        help="part 1: the timed deploys' repositories served over git's smart HTTP and TLS by the git "
                             "stand-in in a process of its own, as a git host serves them in production (default; "
                             "its own time subtracted like the Coolify stand-in's), as local paths (the server's "
                             "side of the fetch then runs here: upload-pack and pack-objects in InkMCP's column), or "
                             "both alternately (a table for each)")
    parser.add_argument("--ab-ca-dir", action="store_true",
                        help="part 1: odd deploys' git fetches read the CA directory too (libcurl's default before "
                             "inkmcp.build.source.CA_BUNDLE), even ones the bundle only: a same-run A/B")
    parser.add_argument("--ab-fetch", action="store_true",
                        help="part 1: odd deploys' first fetch by `git fetch`, even ones' in InkMCP's process "
                             "(inkmcp.build.source.IN_PROCESS_FETCH): a same-run A/B")
    parser.add_argument("--parts", default="1,2,3,4", help="which parts to run, e.g. 4 or 1,3 (1 and 2 run together)")
    args = parser.parse_args()
    use_transport(args.transport)
    if args.deploys < 1 or args.concurrent < 1 or args.rate_deploys < 1:
        parser.error("--deploys, --concurrent and --rate-deploys take a positive number")
    base = Path(tempfile.mkdtemp(prefix="inkmcp-bench-coolify-deploy-"))
    pg = EmbeddedPostgres(base / "pg")
    pg.start()
    try:
        with psycopg.connect(pg.url(driver=None).get_secret_value(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        url = pg.url("bench").get_secret_value()
        migrate(url)

        parts = set(args.parts.split(","))

        async def run() -> None:
            if parts & {"1", "2"}:
                lag = [float(x) for x in args.build_lag.split(",") if x] if args.build_lag else []
                await in_process(url, base, args.deploys, args.profile, args.origins, args.json, args.steps, lag,
                                 ab_async_commit=args.ab_async_commit, ab_overhead9=args.ab_overhead9,
                                 ab_overhead8=args.ab_overhead8, git_over=args.git,
                                 ab_ca_dir=args.ab_ca_dir, ab_fetch=args.ab_fetch)
            if "3" in parts:
                await concurrent(pg, args.concurrent)
            if "4" in parts and not args.skip_rate:
                await rate_limited(pg, args.rate_deploys)

        asyncio.run(run())
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
