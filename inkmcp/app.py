"""Composition root: settings → store → providers → core services → MCP server and HTTP routes.

Swapping the local compute provider for Coolify is a settings change here and nowhere else.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from inkmcp.build.source import SourcePolicy
from inkmcp.core.accounts import AccountService
from inkmcp.core.audit import AuditLog
from inkmcp.core.databases import DatabaseService
from inkmcp.core.deployments import DeployService
from inkmcp.core.envvars import EnvService
from inkmcp.core.leases import ReplicaSettings
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.platform import Platform
from inkmcp.core.projects import ProjectService
from inkmcp.core.retention import Retention
from inkmcp.errors import InkError, InvalidArgument, register_server_paths, settings_from_env
from inkmcp.metrics import Metrics
from inkmcp.providers.compute.base import ComputeProvider
from inkmcp.providers.database.base import DatabaseProvider
from inkmcp.providers.database.byo import BringYourOwnDatabase
from inkmcp.providers.database.postgres import PostgresDatabaseProvider, libpq_url
from inkmcp.providers.database.redis import ExternalRedisProvider, RedisProvider, RedisSettings, build_redis_provider
from inkmcp.settings import Settings
from inkmcp.store.crypto import MAC_KEY_RELATIVE, SecretBox, check_shared_keys, shared_mac_key
from inkmcp.store.db import Store, migrate, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.tenant_server import check_tenant_server

log = logging.getLogger("inkmcp")


def _stable_port(path: Path) -> int:
    """Tenant DATABASE_URLs embed the port, so it is chosen once and kept."""
    if path.exists():
        return int(path.read_text().strip())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path.write_text(str(port))
    return port


@dataclass
class Runtime:
    settings: Settings
    store: Store
    platform: Platform
    metrics: Metrics
    compute: ComputeProvider
    box: SecretBox = field(repr=False)  # the encryption keys this runtime was opened with (the web UI's session key)
    _stack: AsyncExitStack = field(repr=False)

    async def close(self) -> None:
        await self._stack.aclose()


async def _embedded(stack: AsyncExitStack, server: EmbeddedPostgres) -> None:
    """Start (or adopt) an embedded server; stop it at exit only if this process started it."""
    already = server.pid is not None
    await asyncio.to_thread(server.start)
    if not already:
        stack.push_async_callback(asyncio.to_thread, server.stop)


async def open_runtime(settings: Settings, *, serve: bool) -> Runtime:
    """Everything InkMCP needs. `serve=False` (CLI commands) opens the store without starting apps."""
    stack = AsyncExitStack()
    try:
        return await _open(settings, stack, serve=serve)
    except BaseException:
        await stack.aclose()
        raise


def _hold_serve_lock(stack: AsyncExitStack, data: Path) -> None:
    """One serving InkMCP per data dir: two would both supervise (and restart) the same apps."""
    fd = os.open(data / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode().strip() or "?"
        os.close(fd)
        raise InkError(
            f"another `inkmcp serve` (pid {holder}) is already serving {data}.",
            argument="INKMCP_DATA_DIR",
            fix="stop it first, or give this instance its own --data-dir",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    stack.callback(os.close, fd)


@dataclass
class _CoolifyParts:
    """What the Coolify database provider shares with Coolify compute: the settings (URL, token, build server),
    the request budget of the token (one limit for both), and placement (where a project's database goes)."""

    settings: Any
    budget: Any
    placement: Any


def _database_providers(
    stack: AsyncExitStack, settings: Settings, own: PostgresDatabaseProvider, coolify: _CoolifyParts | None,
    sessions: Any,
) -> tuple[DatabaseProvider, dict[str, DatabaseProvider]]:
    """The provider behind `database={"type":"postgres"}` and every configured one by name (a database is
    dropped by the provider that made it). Setting INKMCP_NEON_API_KEY is enough to make Neon the default; with
    Coolify compute, Coolify-managed Postgres is configured too (the default when Neon is not)."""
    from inkmcp.neon.settings import NeonSettings
    from inkmcp.providers.database.neon import build_neon_provider
    from inkmcp.providers.database.select import choose_default

    neon_settings = NeonSettings.from_env()
    neon = build_neon_provider(neon_settings) if neon_settings.enabled else None
    if neon is not None:
        stack.push_async_callback(neon.close)
    coolify_db = None
    if coolify is not None:
        from inkmcp.coolify.client import CoolifyClient
        from inkmcp.providers.database.coolify import CoolifyDatabaseSettings, build_coolify_database_provider

        client = CoolifyClient(coolify.settings.url, coolify.settings.token, budget=coolify.budget,
                               url_setting="INKMCP_COOLIFY_URL", token_setting="INKMCP_COOLIFY_TOKEN")  # noqa: S106
        coolify_db = build_coolify_database_provider(
            client, sessions=sessions, placement=coolify.placement,
            build_server_uuid=coolify.settings.build_server_uuid,
            settings=settings_from_env(CoolifyDatabaseSettings, "INKMCP_COOLIFY_DB_",
                                       "inkmcp/providers/database/coolify.py"))
        stack.push_async_callback(coolify_db.close)
    return choose_default(own, neon=neon, coolify=coolify_db, choice=settings.database_provider)


async def _compute(
    stack: AsyncExitStack, settings: Settings, data: Path, store: Store, control_url: str
) -> tuple[ComputeProvider, _CoolifyParts | None]:
    """The compute provider `settings.compute` names. Coolify's pieces share the control-plane database: the
    request budget (every replica keeps to one token's rate limit together) and placement's reservations."""
    if settings.compute == "coolify":
        from inkmcp.coolify.budget import DbBudget, budget_key
        from inkmcp.placement.adapter import CoolifyPlacement
        from inkmcp.placement.coolify_nodes import CoolifyNodeSource
        from inkmcp.placement.records import PlacementService
        from inkmcp.placement.settings import PlacementSettings
        from inkmcp.providers.compute.coolify.provider import CoolifyComputeProvider
        from inkmcp.providers.compute.coolify.settings import CoolifySettings

        coolify = settings_from_env(CoolifySettings, "INKMCP_COOLIFY_", "inkmcp/providers/compute/coolify/settings.py")
        placement = settings_from_env(PlacementSettings, "INKMCP_PLACEMENT_", "inkmcp/placement/settings.py")
        budget = DbBudget.from_url(control_url, key=budget_key(coolify.token.get_secret_value()))
        stack.push_async_callback(budget.aclose)
        provider = CoolifyComputeProvider.from_settings(coolify, data / "coolify", budget=budget)
        stack.push_async_callback(provider.close)
        nodes = CoolifyNodeSource(provider.client, placement)
        service = PlacementService(store.sessionmaker, nodes, placement.policy())
        provider.place = CoolifyPlacement(service)
        return provider, _CoolifyParts(settings=coolify, budget=budget, placement=service)

    from inkmcp.providers.compute.local.provider import LocalComputeProvider

    local = LocalComputeProvider(
        data / "compute",
        proxy_host=settings.proxy_host,
        proxy_port=settings.proxy_port,
        domain=settings.apps_domain,
        idle_timeout=settings.idle_timeout,
        health_timeout=settings.health_timeout,
        build_timeout=settings.build_timeout,
        tenant_python=settings.tenant_python,
        pids_max=settings.pids_max,
        max_file_mb=settings.max_file_mb,
        max_build_mb=settings.max_build_mb,
        max_disk_mb=settings.max_disk_mb,  # --- quota: a filesystem per project (diskquota.py)
        disk_reserve_mb=settings.disk_reserve_mb,  # --- quota
        disk_overcommit=settings.disk_overcommit,  # --- quota
    )
    local.mcp_port = settings.port  # --- loopback: closed to tenants (also when set by `serve --port`)
    return local, None


def _redis_provider(stack: AsyncExitStack, data: Path, compute: str,
                    host: Settings) -> RedisProvider | ExternalRedisProvider | None:
    """The Redis add-on: the operator's shared server (INKMCP_REDIS_URL), else one redis-server per project under
    the data dir, which only apps on this machine can reach: with Coolify compute (apps on other servers) the
    add-on is offered only with INKMCP_REDIS_URL, and `database={"type":"redis"}` says so otherwise."""
    settings = settings_from_env(RedisSettings, "INKMCP_REDIS_", "inkmcp/providers/database/redis.py")
    if settings.url is None and compute != "local":
        return None
    redis = build_redis_provider(data / "redis", settings, reserve_mb=host.disk_reserve_mb,  # --- tenantdisk2
                                 overcommit=host.disk_overcommit)
    stack.push_async_callback(redis.close)  # stops the instances this process started
    return redis


# --- issue 11 (github)
def _github_trusted_origins() -> frozenset[str]:
    from inkmcp.github.wiring import trusted_origins

    return trusted_origins()
# --- end


async def _open(settings: Settings, stack: AsyncExitStack, *, serve: bool) -> Runtime:
    data = settings.data_dir
    # --- mender6: the per-account output budget's rates (INKMCP_ACCOUNT_OUTPUT_*), checked before anything starts
    if settings.compute != "coolify":
        from inkmcp.providers.compute.local.logs import configure_account_rates
        from inkmcp.settings import AccountOutputSettings

        configure_account_rates(
            settings_from_env(AccountOutputSettings, "INKMCP_ACCOUNT_OUTPUT_", "inkmcp/settings.py").rates())
    # --- end mender6
    if serve and settings.compute != "coolify" and os.geteuid() == 0:
        # The local provider refuses such a data dir when it starts (its tenants would see their private /tmp
        # there); say so before two embedded PostgreSQL clusters are made in it (a new user's first `make serve`
        # with INKMCP_DATA_DIR=/var/tmp/... spent ~3 s on initdb and left them behind before this error).
        from inkmcp.build.process import private_tmp_conflict

        if conflict := private_tmp_conflict(data / "compute"):
            raise InvalidArgument(conflict, argument="INKMCP_DATA_DIR", fix="set INKMCP_DATA_DIR=/var/lib/inkmcp")
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o711)  # noqa: S103 - tenant users traverse to their own (0700) directories, nothing more
    # Core's checkouts (plan errors name files there) show as `./...` to agents, anything else under the data dir
    # as `<server>/...` (errors.scrub_paths; the local provider registers its own release dirs).
    register_server_paths(data, [(r"work/checkouts/[0-9a-f]+", ".")])
    if serve:
        _hold_serve_lock(stack, data)
        if settings.compute != "coolify" and os.geteuid() == 0:
            # Unmounts (a deleted project's image, a tenant database's) must reach the tenants' mount namespaces,
            # or the images stay attached to their loop devices (providers/compute/local/propagation.py).
            from inkmcp.providers.compute.local import propagation

            propagation.share(data)
            stack.callback(propagation.release, data)  # last out: after every image of the data dir is unmounted

    if settings.database_url is not None:
        control_url = settings.database_url.get_secret_value()
    else:
        control = EmbeddedPostgres(data / "pg" / "control")
        await _embedded(stack, control)
        control_url = control.url(database="postgres").get_secret_value()
    await asyncio.to_thread(migrate, control_url)
    store = await open_store(control_url)
    stack.push_async_callback(store.close)

    # --- Issue 8 item 7 (replicas): keys every replica must agree on come from settings or the database.
    # Encryption keys: INKMCP_ENCRYPTION_KEYS (the data-dir key file stays the one-machine default), checked
    # against the database so a replica with other keys refuses to start. MAC key: INKMCP_MAC_KEY, else the
    # database's (shared_keys), adopting this data dir's secrets/mac.key on the first start. Leases:
    # INKMCP_REPLICA_ID / INKMCP_LEASE_SECONDS / INKMCP_HEARTBEAT_SECONDS / INKMCP_TAKEOVER_SCAN_SECONDS.
    box = SecretBox.load(data)
    await check_shared_keys(store.sessionmaker, box)
    mac_key = await shared_mac_key(store.sessionmaker, box, legacy_file=data / MAC_KEY_RELATIVE)
    replica = ReplicaSettings().config(data)
    # --- end issue 8 item 7

    if settings.tenant_database_url is not None:
        admin = settings.tenant_database_url
        from urllib.parse import urlsplit

        parts = urlsplit(admin.get_secret_value())
        public_host, public_port = parts.hostname or settings.tenant_database_public_host, parts.port or 5432
    else:
        (data / "pg").mkdir(exist_ok=True)
        port = _stable_port(data / "pg" / "tenants.port")
        tenants = EmbeddedPostgres(data / "pg" / "tenants", port=port)
        await _embedded(stack, tenants)
        # --- tenantdisk2: a tenant server that went down (its own crash recovery failed, or it was killed) is
        # started again, its tablespaces' headroom released for that start (store/tenant_disks.py)
        if serve:
            import contextlib

            from inkmcp.store.tenant_disks import supervise

            watcher = asyncio.create_task(supervise(tenants), name="tenant-pg-supervisor")

            async def _stop_supervising() -> None:  # before the server's own stop (the stack unwinds backwards)
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

            stack.push_async_callback(_stop_supervising)
        # --- end tenantdisk2
        admin = SecretStr(tenants.socket_url(driver=None).get_secret_value())
        public_host, public_port = settings.tenant_database_public_host, port
    # --- tenantdisk: each database on the embedded tenant server gets a tablespace on an image of its own
    from inkmcp.store.tenant_disks import tablespace_disks

    postgres = PostgresDatabaseProvider(admin, public_host=public_host, public_port=public_port,
                                        tablespaces=tablespace_disks(data, reserve_mb=settings.disk_reserve_mb,
                                                                     overcommit=settings.disk_overcommit)
                                        if settings.tenant_database_url is None else None)  # fmt: skip
    # --- end tenantdisk
    stack.push_async_callback(postgres.close)
    byo = BringYourOwnDatabase()
    compute, coolify_parts = await _compute(stack, settings, data, store, control_url)
    default_db, db_providers = _database_providers(stack, settings, postgres, coolify_parts, store.sessionmaker)
    redis = _redis_provider(stack, data, compute.name, settings)  # --- tenantdisk2: the host's disk admission
    # Replicas share one tenant server (a replica falling back to its own embedded one is refused).
    if serve:  # CLI commands never create tenant databases (and may run where the tenant server is unreachable)
        await check_tenant_server(store.sessionmaker, box, libpq_url(admin.get_secret_value()),
                                  embedded=settings.tenant_database_url is None, own_is_default=default_db is postgres)

    metrics = Metrics()
    sessions = store.sessionmaker
    limits = LimitDefaults.from_settings(settings)
    projects = ProjectService(sessions, box, limits)
    envs = EnvService(sessions, box)
    databases = DatabaseService(sessions, box, default_db, byo, limits, providers=db_providers, redis=redis)
    deploys = DeployService(
        sessions,
        projects=projects,
        envs=envs,
        databases=databases,
        compute=compute,
        work_dir=data / "work",
        sources=SourcePolicy(allow_local=bool(settings.allow_local_sources),
                             max_checkout_bytes=settings.max_checkout_mb * 2**20,
                             # --- issue 11 (github): INKMCP_GITHUB_URL's host is a git host the operator chose
                             trusted_origins=_github_trusted_origins()),
                             # --- end
        mac_key=mac_key,
        metrics=metrics,
        max_env_bytes=settings.max_env_bytes,
        replica=replica,  # issue 8 item 7
        retention=Retention(keep=settings.deployments_kept, days=settings.deployments_kept_days),
    )
    platform = Platform(
        sessions,
        accounts=AccountService(sessions, limits),
        audit=AuditLog(sessions),
        projects=projects,
        envs=envs,
        databases=databases,
        deploys=deploys,
        compute=compute,
        max_env_bytes=settings.max_env_bytes,
    )
    # --- issue 10 (dbbackup): tenant database backups (inkmcp/dbbackup), reached by the MCP tools as
    # platform.database_backups; dumps of the databases on our own tenant server, over its admin URL.
    from inkmcp.dbbackup.service import build_database_backups

    platform.database_backups = build_database_backups(platform, admin, data)
    # --- end
    # --- issue 11 (github): private GitHub repos with the account's token, push-to-deploy (inkmcp/github/wiring.py);
    # nothing changes unless INKMCP_GITHUB_CLIENT_ID/SECRET or INKMCP_GITHUB_WEBHOOK_SECRET are set
    from inkmcp.github.wiring import install as install_github

    github = install_github(platform, box)
    if github is not None:  # redeploys a push started still running at shutdown are cancelled first
        stack.push_async_callback(github.webhooks.close)
    # --- end
    # --- issue 13 (credits): billing, off unless INKMCP_PRICES is set (inkmcp/billing/service.py); the metering loop
    # starts below, after the services are restored, and stops first when the runtime closes.
    from inkmcp.billing.service import build_billing

    platform.billing = build_billing(store.engine, sessions, compute, replica=replica.replica_id,
                                     tenant_admin_url=libpq_url(admin.get_secret_value()))
    if platform.billing is not None:
        deploys.breaker = platform.billing.breaker  # type: ignore[attr-defined]
    # --- end
    if serve:
        await compute.start()
        stack.push_async_callback(compute.close)
        stack.push_async_callback(deploys.close)  # runs first: stop pipelines, then processes
        await databases.reconcile_connection_limits()  # roles made under older per-tier limits
        if redis is not None:  # before restore_all: apps that read REDIS_URL need their Redis up
            failed = await redis.start()
            if failed:
                log.warning("Redis instances that did not start (see their server.log): %s", failed)
        restored, resumed = await deploys.restore_all()
        log.info("restored %d services, resumed %d deployments", restored, resumed)
        if platform.billing is not None:  # --- issue 13 (credits): the metering loop --- end
            platform.billing.start(stack)
        # --- issue 10 (dbbackup): scheduled dumps of the tenant databases (INKMCP_DB_BACKUP_INTERVAL_S; 0 = off),
        # cancelled when the runtime closes.
        from inkmcp.dbbackup.service import start_scheduler

        start_scheduler(stack, platform.database_backups)
        # --- end
        # --- Issue 8 item 7 (reconciler, inkmcp/core/reconcile.py): with Coolify compute, a periodic pass comparing
        # InkMCP's records with Coolify's; report-only unless INKMCP_RECONCILE_REPAIR=true, every
        # INKMCP_RECONCILE_INTERVAL_SECONDS (0 = off). Cancelled first when the runtime closes.
        if compute.name == "coolify":
            from inkmcp.core.reconcile import ReconcileSettings, start_periodic

            start_periodic(stack, sessions, compute, settings_from_env(ReconcileSettings, "INKMCP_RECONCILE_",
                                                                       "inkmcp/core/reconcile.py"))
        # --- end reconciler
        # --- issue 10 (backup): scheduled backup sets (INKMCP_BACKUP_DIR / _INTERVAL_S / _KEEP), in /metrics
        from inkmcp.backup.schedule import start_scheduled
        from inkmcp.backup.settings import BackupSettings

        start_scheduled(stack, settings, metrics, settings_from_env(BackupSettings, "INKMCP_BACKUP_",
                                                                     "inkmcp/backup/settings.py"))
        # --- end issue 10
    return Runtime(settings=settings, store=store, platform=platform, metrics=metrics, compute=compute, box=box,
                   _stack=stack)
