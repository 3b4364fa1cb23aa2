"""One InkMCP replica as its own OS process: core wired as `inkmcp serve` wires it (inkmcp/app.py), over the
shared control-plane database and the shared remote, on its own data dir: the fake remote's server process
(`tests/replicas/remote.py`), or the Coolify stand-in through the real Coolify provider (`--coolify-url`).

Keys come the way app.py gets them (`SecretBox.load(data_dir)` with INKMCP_ENCRYPTION_KEYS from the test,
`check_shared_keys`, `shared_mac_key` from the database); leases from the command line. At start-up it runs
`restore_all` (which claims abandoned deployments and starts the takeover scans), prints one JSON line
`{"ready": ...}`, then answers commands, one JSON line each on stdin → one JSON line on stdout:

  {"op": "deploy", "account": NAME, "repo": PATH, "project": NAME, "message": TEXT, "wait": SECONDS}
  {"op": "wait", "account": NAME, "deployment_id": ID, "timeout": SECONDS}

Test hooks, from the environment (never set outside these tests):
  REPLICA_PAUSE_AT=<crash point>  at that point of FakeComputeProvider (fake.CRASH_POINTS) the process freezes:
                                  `REPLICA_PAUSE_MARK` is written, then the whole event loop blocks (no heartbeat
                                  either, as in a stopped or partitioned process) until `REPLICA_RESUME` exists
                                  (or for good if that is unset: the test kills it with -9).
  REPLICA_HOLD=<file>             every `release` waits (asynchronously: the process keeps answering) until <file>
                                  exists. A pause freezes the whole process, and a pipeline can reach its crash
                                  point before its own deploy call has written its reply (the call still awaits
                                  its audit row when the pipeline first runs); a test holds the pipelines until it
                                  has every reply it needs, then lets them go.
  REPLICA_BARRIER=<dir>           `deploy` waits before creating its deployment until every replica has reached
                                  that point (files in <dir>, REPLICA_BARRIER_COUNT of them), so concurrent
                                  deploys really race for the service's lock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from inkmcp.build.source import SourcePolicy
from inkmcp.core.accounts import AccountService
from inkmcp.core.audit import AuditLog
from inkmcp.core.databases import DatabaseService
from inkmcp.core.deployments import DeployRequest, DeployService, ProviderRetry
from inkmcp.core.envvars import EnvService
from inkmcp.core.leases import LeaseConfig
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.platform import Platform
from inkmcp.core.projects import ProjectService
from inkmcp.metrics import Metrics
from inkmcp.providers.compute.fake import FakeComputeProvider
from inkmcp.providers.database.postgres import PostgresDatabaseProvider
from inkmcp.store.crypto import MAC_KEY_RELATIVE, SecretBox, check_shared_keys, shared_mac_key
from inkmcp.store.db import open_store
from tests.replicas.remote import RemoteClient

PAUSE_DEADLINE = 300.0  # a paused replica nobody resumes or kills ends by itself


_PAUSED: list[str] = []


def pause_at(point: str) -> None:
    """REPLICA_PAUSE_AT: freeze the whole process here once (pipelines and heartbeat alike), until resumed."""
    if point != os.environ.get("REPLICA_PAUSE_AT") or _PAUSED:
        return
    _PAUSED.append(point)
    Path(os.environ["REPLICA_PAUSE_MARK"]).write_text(point)
    resume = os.environ.get("REPLICA_RESUME")
    deadline = time.monotonic() + PAUSE_DEADLINE
    while not (resume and Path(resume).exists()):  # blocking on purpose: nothing of this process runs
        if time.monotonic() > deadline:
            os._exit(3)
        time.sleep(0.05)


async def held() -> None:
    """REPLICA_HOLD: wait, without blocking the process, until the test lets pipelines go."""
    hold = os.environ.get("REPLICA_HOLD")
    deadline = time.monotonic() + PAUSE_DEADLINE
    while hold and not Path(hold).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"REPLICA_HOLD {hold} never appeared")
        await asyncio.sleep(0.02)


class PausingProvider(FakeComputeProvider):
    """FakeComputeProvider whose crash point REPLICA_PAUSE_AT freezes the process instead of raising."""

    def _crash(self, point: str) -> None:
        pause_at(point)
        super()._crash(point)

    async def release(self, *args: Any, **kwargs: Any) -> Any:
        await held()
        return await super().release(*args, **kwargs)


def coolify_provider(url: str, token: str, work_dir: Path) -> Any:
    """The real CoolifyComputeProvider over the stand-in (through the real client, spec-validated, policy on the
    wire), as the contract suite's CoolifyHarness builds it; its crash points pause like the fake's."""
    import hashlib

    from inkmcp.coolify.budget import BudgetSettings, LocalBudget, make_budget
    from inkmcp.coolify.client import CoolifyClient, RetryPolicy
    from inkmcp.coolify.spec import CoolifySpec
    from inkmcp.providers.compute.coolify import policy
    from inkmcp.providers.compute.coolify.provider import CoolifyComputeProvider

    class PausingCoolify(CoolifyComputeProvider):
        def _crash(self, point: str) -> None:
            pause_at(point)
            super()._crash(point)

        async def release(self, *args: Any, **kwargs: Any) -> Any:
            await held()
            return await super().release(*args, **kwargs)

    limits = policy.Limits()
    # REPLICA_COOLIFY_BUDGET_URL: the request budget shared through that database (DbBudget, as `inkmcp serve`
    # builds it; limit/window from INKMCP_COOLIFY_RATE_*); REPLICA_COOLIFY_TIMEOUT: seconds one attempt may take
    budget_url = os.environ.get("REPLICA_COOLIFY_BUDGET_URL")
    budget = make_budget(token, budget_url) if budget_url else LocalBudget(BudgetSettings(limit=100_000))
    timeout = os.environ.get("REPLICA_COOLIFY_TIMEOUT")
    # REPLICA_COOLIFY_RETRY=production: the client's default RetryPolicy (waits for budget slots in the call, up to
    # 90 s) instead of the short one that hands every wait to DeployService's retry
    retry = (RetryPolicy() if os.environ.get("REPLICA_COOLIFY_RETRY") == "production" else
             RetryPolicy(attempts=3, backoff_initial=0.01, backoff_max=0.05, max_total_wait=0.5))
    timeouts: dict[str, Any] = {"timeout": float(timeout), "attempt_timeout": float(timeout)} if timeout else {}
    client = CoolifyClient(url, token, validate_with=CoolifySpec.load(),
                           retry=retry, transport=policy.PolicyTransport(limits=limits), budget=budget,
                           **timeouts)  # fmt: skip
    # the stand-in does not fetch: a local test repo gets an https name, as in the contract suite
    return PausingCoolify(client, work_dir, poll_interval=0.02, poll_max_interval=0.1, wait_timeout=60.0,
                          limits=limits, queue_full_retry_after=0.05,
                          local_repo_url=lambda path: f"https://git.standin.test/"
                                                      f"{hashlib.sha256(path.encode()).hexdigest()[:16]}.git")


class BarrierDeployService(DeployService):
    # deploy_app creates through `_create_with_reads` (8da9180), `_create_or_reuse` only wraps it: the barrier sits
    # where every create passes
    async def _create_with_reads(self, *args: Any, **kwargs: Any) -> Any:
        barrier = os.environ.get("REPLICA_BARRIER")
        if barrier and kwargs.get("reuse", True):
            here = Path(barrier)
            (here / f"{os.getpid()}-{uuid.uuid4().hex[:6]}").touch()
            count = int(os.environ.get("REPLICA_BARRIER_COUNT", "2"))
            deadline = time.monotonic() + 30
            while len(list(here.iterdir())) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        return await super()._create_with_reads(*args, **kwargs)


async def main(args: argparse.Namespace) -> None:
    data = Path(args.data_dir)
    store = await open_store(args.database_url, pool_size=5, max_overflow=5)
    sessions = store.sessionmaker
    box = SecretBox.load(data)
    await check_shared_keys(sessions, box)
    mac_key = await shared_mac_key(sessions, box, legacy_file=data / MAC_KEY_RELATIVE)
    limits = LimitDefaults()
    postgres = PostgresDatabaseProvider(SecretStr("postgresql://unused@127.0.0.1:1/unused"), public_host="127.0.0.1",
                                        public_port=1)  # no test here provisions a database  # fmt: skip
    if args.coolify_url:
        compute = coolify_provider(args.coolify_url, os.environ["REPLICA_COOLIFY_TOKEN"], data / "compute")
    else:
        compute = PausingProvider(RemoteClient(Path(args.remote)), data / "compute", poll_interval=0.02)
    projects = ProjectService(sessions, box, limits)
    envs = EnvService(sessions, box)
    databases = DatabaseService(sessions, box, postgres, None, limits)
    deploys = BarrierDeployService(
        sessions, projects=projects, envs=envs, databases=databases, compute=compute, work_dir=data / "work",
        sources=SourcePolicy(allow_local=True), mac_key=mac_key, metrics=Metrics(), max_env_bytes=65536,
        provider_retry=ProviderRetry(initial=0.05, maximum=0.2,
                                     window=float(os.environ.get("REPLICA_RETRY_WINDOW", "30"))),
        replica=LeaseConfig(replica_id=args.replica_id, lease_seconds=args.lease, heartbeat_seconds=args.heartbeat,
                            scan_seconds=args.scan),
    )  # fmt: skip
    accounts = AccountService(sessions, limits)
    platform = Platform(sessions, accounts=accounts, audit=AuditLog(sessions), projects=projects, envs=envs,
                        databases=databases, deploys=deploys, compute=compute, max_env_bytes=65536)  # fmt: skip
    _, resumed = await deploys.restore_all()
    out = sys.stdout
    out.write(json.dumps({"ready": True, "replica": args.replica_id, "resumed": resumed}) + "\n")
    out.flush()

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def answer(line: bytes) -> None:
        cmd = json.loads(line)
        try:
            p = await accounts.principal_for(cmd["account"], "test")
            if cmd["op"] == "deploy":
                req = DeployRequest(repo_url=cmd["repo"], project_name=cmd["project"],
                                    env_vars={"MESSAGE": cmd["message"]})  # fmt: skip
                view = await platform.deploy_app(p, req, wait_seconds=cmd.get("wait", 0))
            elif cmd["op"] == "wait":
                view = await deploys.wait(p, uuid.UUID(cmd["deployment_id"]), timeout=cmd["timeout"])
            else:
                raise ValueError(f"unknown op {cmd['op']!r}")
            reply: dict[str, Any] = {"id": cmd.get("id"), "view": view.model_dump(mode="json")}
        except Exception as e:  # the test reads it
            reply = {"id": cmd.get("id"), "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()

    pending: set[asyncio.Task[None]] = set()
    try:
        while line := await reader.readline():
            task = asyncio.ensure_future(answer(line))
            pending.add(task)
            task.add_done_callback(pending.discard)
    finally:
        await deploys.close()
        await postgres.close()
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--remote", help="the fake remote's socket (tests/replicas/remote.py)")
    parser.add_argument("--coolify-url", help="use the Coolify provider against this stand-in instead "
                        "(token in REPLICA_COOLIFY_TOKEN)")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--heartbeat", type=float, default=0.3)
    parser.add_argument("--scan", type=float, default=0.3)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(parser.parse_args()))
