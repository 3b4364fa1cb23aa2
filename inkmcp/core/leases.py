"""Deployment leases: which replica runs a deployment's pipeline, and fencing so that only it writes.

Two `inkmcp serve` processes on one Postgres share the deployments (issue 8 item 7). Each deployment row
says who runs it (`claimed_by`, a replica id), until when (`lease_until`, the database's clock, so replicas'
clocks never have to agree) and a fencing token (`lease_epoch`, +1 per claim):

* **Claim.** `deploy_app` inserts a deployment already claimed by its replica (epoch 1), in the same
  transaction, so no other replica can take a deployment that is just starting. A replica takes over a
  non-terminal deployment whose lease expired or that nobody claims (a conditional UPDATE: two replicas
  racing for one row get one winner), at start-up and on every scan (`INKMCP_TAKEOVER_SCAN_SECONDS`).
  At start-up a replica also takes back its own claims at once: its id is kept per data dir, and the serve
  lock allows one `inkmcp serve` per data dir, so a claim under its own id is a pipeline of its previous run.
* **Heartbeat.** One statement per replica every `INKMCP_HEARTBEAT_SECONDS` renews the leases of the
  pipelines it runs, each conditioned on the epoch it claimed. A lease the heartbeat no longer finds (taken
  over while this replica was paused or cut off) cancels its pipeline.
* **Fencing.** Every write of a pipeline (each recorded step, each provider ref, the final live/failed
  record) is conditioned on the deployment row's `claimed_by` and `lease_epoch` being this pipeline's: one
  statement whose row-level update (or a `FOR UPDATE` of the row, where a write spans rows) a takeover's own
  update of that row is serialised with (core/deployments.py says which write takes which form). Either the
  write commits before the takeover, or it finds the row changed and raises `LeaseLost` without writing.
  The compute provider records its ids through that fenced `record` before every remote step (its
  contract), so a replica that lost its lease stops at its next step. What fencing cannot reach is a remote
  call already on its way when the lease was lost: a replica paused for longer than the lease between a
  record and the remote call it guards can make that one call late. Coolify takes no fencing token; the
  provider's re-attach rules (write-ahead intent, "already queued for this commit") are what keep that late
  call from becoming a second deployment.
* **Order per service.** Releases of one service never overlap: a pipeline waits until every older
  deployment of its service is terminal (taking an abandoned one over itself), which replaces the
  per-process asyncio lock. Creating a deployment (and the "same deploy again is a no-op" check before it)
  holds a transaction-scoped advisory lock on the service, so two replicas deploying the same service at
  once make one deployment. Neither lock outlives a connection, so a replica killed with -9 blocks nobody.

Why not a durable-jobs library (procrastinate 3.10, evaluated first; DBOS is the same shape):
procrastinate does run inside an asyncio process on psycopg 3 and, since 3.1, has worker heartbeats and
`get_stalled_jobs`, but (1) a stalled job is only *found*: retrying it is ours to schedule, and nothing
fences the stalled worker: `procrastinate_finish_job` matches on the job id and a `todo`/`doing` status,
not on the worker or an attempt, so a paused worker that wakes up finishes (or records) a job another
worker is running; we would still need the epoch on our own rows. (2) Its schema is ~40 SQL migrations
shipped inside the package, applied by its own CLI; we would have to copy them into our fixed alembic chain
(one revision, 0005) and add a revision for every procrastinate upgrade. (3) The state that makes a
deployment resumable already lives in our rows (status, events, provider refs); a job queue would be a
second state machine to keep consistent with it, plus its own connection pool. A lease on the row we
already write is smaller and fences exactly the writes that matter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import func, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.core.views import TERMINAL

log = logging.getLogger("inkmcp.leases")

REPLICA_ID_FILE = "replica.id"
SERVICE_LOCK_CLASS = 0x1A7D_0005  # advisory-lock namespace (first key) of per-service locks
REF_SWITCH_LOCK_CLASS = 0x1A7D_0006
"""Namespace of the lock an env change holds while it rewrites a live service's provider ref, and a drain's switch
takes before it rewrites it: the two would otherwise overwrite each other's server (`hold_ref_switch`)."""
_TERMINAL = tuple(sorted(TERMINAL))


class ReplicaSettings(BaseSettings):
    """Settings of one replica; wired in inkmcp/app.py (`ReplicaSettings().config(data_dir)`)."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_", extra="ignore")

    replica_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:@-]+$",
        description="this replica's name in deployments.claimed_by; unique per running `inkmcp serve`. Unset: "
        "made once per data dir (<data_dir>/replica.id), so a restart takes its own deployments back at once",
    )
    lease_seconds: float = Field(
        default=30.0, ge=1, le=3600, description="how long a deployment stays claimed without a heartbeat; "
        "a replica that dies has its deployments taken over this long after its last heartbeat",
    )  # fmt: skip
    heartbeat_seconds: float = Field(default=5.0, gt=0, description="how often a replica renews its leases")
    takeover_scan_seconds: float = Field(
        default=10.0, gt=0, description="how often a replica looks for deployments whose lease expired"
    )

    @model_validator(mode="after")
    def _heartbeat_fits(self) -> ReplicaSettings:
        if self.heartbeat_seconds * 3 > self.lease_seconds:
            raise ValueError(
                f"INKMCP_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}) must be at most a third of "
                f"INKMCP_LEASE_SECONDS ({self.lease_seconds:g}), so one late heartbeat does not lose a lease; "
                "lower the heartbeat or raise the lease"
            )
        return self

    def config(self, data_dir: Path) -> LeaseConfig:
        return LeaseConfig(
            replica_id=self.replica_id or replica_id_of(data_dir),
            lease_seconds=self.lease_seconds,
            heartbeat_seconds=self.heartbeat_seconds,
            scan_seconds=self.takeover_scan_seconds,
        )


def replica_id_of(data_dir: Path) -> str:
    """The data dir's replica id (created once: host name and a random suffix)."""
    path = data_dir / REPLICA_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    made = f"{socket.gethostname()[:80]}-{secrets.token_hex(4)}"
    tmp = path.with_name(f".{REPLICA_ID_FILE}.{os.getpid()}")
    tmp.write_text(made + "\n")
    try:
        os.link(tmp, path)  # create-if-absent: two first starts agree on one id
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


@dataclass(frozen=True)
class LeaseConfig:
    """What `Leases` runs with. The defaults are the one-machine ones (one replica, named `local`)."""

    replica_id: str = "local"
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    scan_seconds: float = 10.0


@dataclass(frozen=True)
class Lease:
    """A pipeline's right to write its deployment: the fencing token is `epoch`."""

    deployment_id: uuid.UUID
    replica_id: str
    epoch: int
    taken_from: str | None = None  # the replica whose lease expired, when this claim was a takeover


class LeaseLost(BaseException):
    """This replica no longer holds the deployment's lease: it must stop without writing anything.

    A BaseException, like CancelledError, so that neither core's `except Exception` nor a provider's turns it
    into a recorded failure (a recorded failure is exactly the write that is no longer ours)."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        super().__init__(f"deployment {lease.deployment_id}: the lease of epoch {lease.epoch} is no longer held by "
                         f"replica {lease.replica_id}")  # fmt: skip


def service_lock_key(service_id: uuid.UUID) -> int:
    """Second key of the service's advisory lock: 32 bits of its uuid (a collision only serialises two services)."""
    return int.from_bytes(service_id.bytes[:4], "big", signed=True)


@contextlib.asynccontextmanager
async def hold_ref_switch(sessions: async_sessionmaker[AsyncSession], service_id: uuid.UUID) -> AsyncIterator[None]:
    """Hold the service's ref-switch lock for a whole env change (session-level, on a connection of its own, across
    the provider's remote calls): a drain's switch (`lock_ref_switch`, in its transaction) waits for it, then sees the
    ref the env change wrote and refuses the switch (the move is undone and retried); an env change that starts
    after a switch reads the new ref. Not the service lock: a deploy_app of the service must not wait for an env
    change's remote work."""
    params = {"ns": REF_SWITCH_LOCK_CLASS, "key": service_lock_key(service_id)}
    # A connection checked out for the whole hold (not a session, which hands its connection back to the pool at
    # commit: the lock would then travel with it, and be re-entered by whoever got that connection next).
    async with sessions.kw["bind"].connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:ns, :key)"), params)
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), params)
            await conn.commit()


async def lock_ref_switch(s: AsyncSession, service_id: uuid.UUID) -> None:
    """Until the end of `s`'s transaction, no env change of the service is running (`hold_ref_switch`)."""
    await s.execute(text("SELECT pg_advisory_xact_lock(:ns, :key)"),
                    {"ns": REF_SWITCH_LOCK_CLASS, "key": service_lock_key(service_id)})


async def lock_service(s: AsyncSession, service_id: uuid.UUID) -> None:
    """Until the end of `s`'s transaction, no other transaction (of any replica) holds this service's lock."""
    await s.execute(
        text("SELECT pg_advisory_xact_lock(:ns, :key)"),
        {"ns": SERVICE_LOCK_CLASS, "key": service_lock_key(service_id)},
    )


class Leases:
    """The lease statements of one replica."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], config: LeaseConfig) -> None:
        self._sessions = sessions
        self.config = config

    @property
    def me(self) -> str:
        return self.config.replica_id

    def new_claim(self, dep_id: uuid.UUID) -> tuple[dict[str, Any], Lease]:
        """Column values of a deployment inserted already claimed by this replica, and its lease."""
        until = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, float(self.config.lease_seconds))
        return {"claimed_by": self.me, "lease_epoch": 1, "lease_until": until}, Lease(dep_id, self.me, 1)

    async def claim(self, dep_id: uuid.UUID, *, own: bool = False) -> Lease | None:
        """Take `dep_id` if it is unfinished and unclaimed, its lease expired, or (`own`) it is ours."""
        found = await self._claim("d.id = :id", {"id": dep_id}, own=own, limit=1)
        return found[0] if found else None

    async def claim_abandoned(self, *, own: bool = False, limit: int = 50) -> list[Lease]:
        """Take unfinished deployments nobody runs: unclaimed, expired, or (`own`, at start-up) ours."""
        return await self._claim("TRUE", {}, own=own, limit=limit)

    async def _claim(self, where: str, params: Mapping[str, object], *, own: bool, limit: int) -> list[Lease]:
        mine = "OR d.claimed_by = :me" if own else ""
        sql = text(f"""
            WITH cand AS (
                SELECT d.id, d.claimed_by FROM deployments d
                WHERE {where} AND d.status <> ALL(:terminal)
                  AND (d.claimed_by IS NULL OR d.lease_until IS NULL OR d.lease_until < now() {mine})
                ORDER BY d.created_at
                LIMIT :limit
                FOR UPDATE SKIP LOCKED
            )
            UPDATE deployments d
            SET claimed_by = :me, lease_epoch = d.lease_epoch + 1,
                lease_until = now() + make_interval(secs => :ttl)
            FROM cand WHERE d.id = cand.id
            RETURNING d.id, d.lease_epoch, cand.claimed_by
        """)  # `where` and `mine` are constants of this module; values are bound
        async with self._sessions.begin() as s:
            rows = (await s.execute(sql, {**params, "terminal": list(_TERMINAL), "me": self.me, "limit": limit,
                                          "ttl": float(self.config.lease_seconds)})).all()  # fmt: skip
        return [Lease(deployment_id=r[0], replica_id=self.me, epoch=int(r[1]),
                      taken_from=r[2] if r[2] not in (None, self.me) else None) for r in rows]  # fmt: skip

    async def renew(self, held: Iterable[Lease]) -> set[uuid.UUID]:
        """Extend the leases still ours (same replica, same epoch); returns their deployment ids."""
        held = list(held)
        if not held:
            return set()
        sql = text("""
            UPDATE deployments d SET lease_until = now() + make_interval(secs => :ttl)
            FROM unnest(CAST(:ids AS uuid[]), CAST(:epochs AS bigint[])) AS h(id, epoch)
            WHERE d.id = h.id AND d.lease_epoch = h.epoch AND d.claimed_by = :me
            RETURNING d.id
        """)
        async with self._sessions.begin() as s:
            rows = (await s.execute(sql, {"ids": [str(x.deployment_id) for x in held],
                                          "epochs": [x.epoch for x in held], "me": self.me,
                                          "ttl": float(self.config.lease_seconds)})).scalars().all()  # fmt: skip
        return set(rows)

    @staticmethod
    async def fence(s: AsyncSession, lease: Lease) -> None:
        """In `s`'s transaction: lock the deployment row if the lease is still ours, else raise `LeaseLost`."""
        row = (await s.execute(
            text("SELECT 1 FROM deployments WHERE id = :id AND claimed_by = :me AND lease_epoch = :epoch FOR UPDATE"),
            {"id": lease.deployment_id, "me": lease.replica_id, "epoch": lease.epoch},
        )).first()  # fmt: skip
        if row is None:
            raise LeaseLost(lease)

    async def hand_back(self, leases: Iterable[Lease]) -> None:
        """On shutdown: expire our leases now, so any replica takes the deployments over without waiting."""
        leases = list(leases)
        if not leases:
            return
        async with self._sessions.begin() as s:
            await s.execute(
                text("""
                    UPDATE deployments d SET lease_until = now()
                    FROM unnest(CAST(:ids AS uuid[]), CAST(:epochs AS bigint[])) AS h(id, epoch)
                    WHERE d.id = h.id AND d.lease_epoch = h.epoch AND d.claimed_by = :me
                """),
                {"ids": [str(x.deployment_id) for x in leases], "epochs": [x.epoch for x in leases], "me": self.me},
            )
