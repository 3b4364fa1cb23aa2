"""Replicas as real OS processes over one real PostgreSQL: a `Cluster` per test.

A cluster is a fresh migrated control-plane database (on the session's embedded server), one shared remote in
its own process (the fake remote's server, `remote.py`, or the Coolify stand-in) and any number of replicas
(`replica.py`, one process each, each with its own data dir, all with the same INKMCP_ENCRYPTION_KEYS and nothing
else shared but the database and the remote).
Teardown stops exactly the processes the cluster started, by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from inkmcp.store.db import Store, migrate, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.models import Deployment, DeploymentEvent
from tests.contract.conftest import APP_FILES, PROCFILE
from tests.replicas.remote import RemoteClient
from tests.store import conftest as _store_fixtures
from tests.support import git_repo
from tests.support import wait_for as wait_for  # every caller here passes its own timeout

embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg

ROOT = Path(__file__).resolve().parents[2]
LEASE = 2.0  # seconds; heartbeat and scans every 0.3 s: a dead replica's work moves within ~2.5 s


async def coolify_census(url: str, token: str, prefix: str = "") -> dict[str, Any]:
    """Coolify's applications whose name starts with `prefix` (InkMCP names them `<service id>-<process>`), counted
    per process, and the deployments Coolify lists for each (restarts excluded), read through Coolify's API."""
    from inkmcp.coolify.client import CoolifyClient

    async with CoolifyClient(url, token) as client:
        apps = [a for a in await client.list_applications() if (a.name or "").startswith(prefix)]
        counts: dict[str, int] = {}
        deployments: dict[str, int] = {}
        for app in apps:
            process = (app.name or "").rsplit("-", 1)[-1]
            counts[process] = counts.get(process, 0) + 1
            page = await client.list_deployments(app.uuid, take=100)
            deployments[process] = sum(not d.restart_only for d in page.deployments)
    return {"apps": counts, "deployments": deployments}


@dataclass
class Replica:
    """One replica process and its command channel."""

    name: str
    proc: asyncio.subprocess.Process
    data_dir: Path
    log: Path
    ready: dict[str, Any] = field(default_factory=dict)
    _replies: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None

    async def start_reading(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise AssertionError(f"replica {self.name} died at start-up:\n{self.log.read_text()[-3000:]}")
        self.ready = json.loads(line)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            reply = json.loads(line)
            fut = self._replies.pop(reply["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(reply)
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(AssertionError(f"replica {self.name} exited"))

    def send(self, op: str, **kw: Any) -> asyncio.Future[dict[str, Any]]:
        assert self.proc.stdin is not None
        cmd_id = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[cmd_id] = fut
        self.proc.stdin.write(json.dumps({"id": cmd_id, "op": op, **kw}).encode() + b"\n")
        return fut

    async def call(self, op: str, *, reply_within: float = 90.0, **kw: Any) -> dict[str, Any]:
        reply = await asyncio.wait_for(self.send(op, **kw), reply_within)
        assert "error" not in reply, f"replica {self.name}: {reply['error']}\n{self.log.read_text()[-3000:]}"
        return reply["view"]  # type: ignore[no-any-return]

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()  # EOF: the replica closes its DeployService and exits
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                os.kill(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class Cluster:
    def __init__(self, root: Path, db_url: str, store: Store) -> None:
        self.root = root
        self.db_url = db_url
        self.store = store
        self.socket = root / "remote.sock"
        self.env = {**os.environ, "INKMCP_ENCRYPTION_KEYS": Fernet.generate_key().decode(), "PYTHONPATH": str(ROOT)}
        for var in ("INKMCP_MAC_KEY", "INKMCP_REPLICA_ID"):
            self.env.pop(var, None)
        self.remote_proc: asyncio.subprocess.Process | None = None
        self.replicas: list[Replica] = []
        self.remote: RemoteClient | None = None
        self.coolify_url: str | None = None
        self.coolify_token: str | None = None

    async def start_remote(self) -> None:
        self.remote_proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.replicas.remote", str(self.socket), cwd=ROOT, env=self.env,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.remote_proc.stdout is not None
        assert (await asyncio.wait_for(self.remote_proc.stdout.readline(), 30)).strip() == b"ready"
        self.remote = RemoteClient(self.socket)

    async def start_coolify(self) -> None:
        """The Coolify stand-in (`python -m inkmcp.coolify.standin`, a real HTTP server validating every request
        against Coolify's spec) instead of the fake remote; replicas then use the real Coolify provider."""
        token_file = self.root / "coolify.token"
        self.remote_proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "inkmcp.coolify.standin", "--servers", "1", "--build-seconds", "0.3",
            "--rate-limit", "100000", "--token-file", str(token_file), "--data-dir", str(self.root / "standin"),
            cwd=ROOT, env=self.env, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.remote_proc.stdout is not None
        while self.coolify_url is None:
            line = (await asyncio.wait_for(self.remote_proc.stdout.readline(), 30)).decode()
            assert line, "the Coolify stand-in exited at start-up"
            if line.startswith("INKMCP_COOLIFY_URL="):
                self.coolify_url = line.split("=", 1)[1].strip()
        await wait_for(lambda: asyncio.sleep(0, token_file.exists() and token_file.read_text().strip()), 10,
                       "the stand-in's token file")  # fmt: skip
        self.coolify_token = token_file.read_text().strip()
        self.env["REPLICA_COOLIFY_TOKEN"] = self.coolify_token

    async def replica(self, name: str, **env: str) -> Replica:
        data = self.root / f"data-{name}"
        data.mkdir()
        log = self.root / f"{name}.log"
        with log.open("wb") as errors:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.replicas.replica", "--database-url", self.db_url,
                *(["--coolify-url", self.coolify_url] if self.coolify_url else ["--remote", str(self.socket)]),
                "--data-dir", str(data), "--replica-id", name,
                "--lease", str(LEASE), "--heartbeat", "0.3", "--scan", "0.3",
                cwd=ROOT, env={**self.env, **env}, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=errors,
            )  # fmt: skip
        r = Replica(name=name, proc=proc, data_dir=data, log=log)
        self.replicas.append(r)
        await r.start_reading()
        return r

    def repo(self, message_file: str = "") -> str:
        files = {**APP_FILES, "Procfile": PROCFILE}
        if message_file:
            files["VERSION"] = message_file
        return str(git_repo(self.root / "repos" / uuid.uuid4().hex[:8], files))

    # -- ground truth: the database and the remote, never a replica's answer -------------------------------

    async def deployment(self, dep_id: str) -> Deployment:
        async with self.store.sessionmaker() as s:
            return (await s.execute(select(Deployment).where(Deployment.id == uuid.UUID(dep_id)))).scalar_one()

    async def events(self, dep_id: str) -> list[tuple[int, str, str]]:
        async with self.store.sessionmaker() as s:
            rows = await s.execute(select(DeploymentEvent.id, DeploymentEvent.status, DeploymentEvent.detail)
                                   .where(DeploymentEvent.deployment_id == uuid.UUID(dep_id))
                                   .order_by(DeploymentEvent.id))  # fmt: skip
            return [tuple(r) for r in rows.all()]  # type: ignore[misc]

    async def deployments_of_service(self, service_id: uuid.UUID) -> list[Deployment]:
        async with self.store.sessionmaker() as s:
            return list((await s.execute(select(Deployment).where(Deployment.service_id == service_id))).scalars())

    def census(self, service_id: uuid.UUID) -> dict[str, Any]:
        """Remote apps of the service per process, and remote `deploy` deployments per InkMCP deployment."""
        assert self.remote is not None
        apps = [a for a in self.remote.apps_named(f"{service_id}-") if not a.deleting]
        counts: dict[str, int] = {}
        deployments: dict[str, dict[str, int]] = {}
        for app in apps:
            counts[app.process] = counts.get(app.process, 0) + 1
            for dep in self.remote.deployments_of(app.uuid, "deploy"):
                per = deployments.setdefault(dep.env.get("INKMCP_DEPLOYMENT", "?"), {})
                per[app.process] = per.get(app.process, 0) + 1
        return {"apps": counts, "deployments": deployments}

    async def coolify_census(self, service_id: uuid.UUID) -> dict[str, Any]:
        """The same census, read from the stand-in through Coolify's API (`coolify_census`)."""
        assert self.coolify_url is not None and self.coolify_token is not None
        return await coolify_census(self.coolify_url, self.coolify_token, f"{service_id}-")

    async def close(self) -> None:
        for r in self.replicas:
            await r.stop()
        if self.remote_proc is not None and self.remote_proc.returncode is None:
            self.remote_proc.terminate()
            try:
                await asyncio.wait_for(self.remote_proc.wait(), 10)
            except TimeoutError:
                self.remote_proc.kill()
                await self.remote_proc.wait()


@pytest.fixture
async def db_url(control_pg: EmbeddedPostgres) -> str:
    """A fresh migrated database: replicas resume every unfinished deployment they find, so no other test's."""
    url = _store_fixtures.create_database(control_pg, "replicas")
    await asyncio.to_thread(migrate, url)
    return url


@pytest.fixture
async def cluster(db_url: str) -> AsyncIterator[Cluster]:
    """Replicas over the fake remote's server process."""
    async with _cluster(db_url, coolify=False) as c:
        yield c


@pytest.fixture
async def coolify_cluster(db_url: str) -> AsyncIterator[Cluster]:
    """Replicas over the Coolify stand-in, through the real Coolify provider."""
    async with _cluster(db_url, coolify=True) as c:
        yield c


@contextlib.asynccontextmanager
async def _cluster(db_url: str, *, coolify: bool) -> AsyncIterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="inkmcp-replicas-"))
    store = await open_store(db_url, pool_size=2, max_overflow=2)
    c = Cluster(root, db_url, store)
    try:
        await (c.start_coolify() if coolify else c.start_remote())
        yield c
    finally:
        with contextlib.suppress(Exception):
            await c.close()
        await store.close()
        shutil.rmtree(root, ignore_errors=True)
