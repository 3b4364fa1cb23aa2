"""The Redis add-on: `database={"type":"redis"}` gives a project its own Redis, reached through REDIS_URL.

Isolation design: one `redis-server` process per project, not one shared server with an ACL user per project.
A shared server can confine a user only to key patterns (`~<prefix>:*`): Redis has no per-user namespace and no
per-database ACL (a user who may SELECT one logical db may SELECT all, and MOVE/COPY/SWAPDB/FLUSHALL cross
them). Real apps do not prefix their keys: Celery/kombu (`celery`, `_kombu.binding.*`), RQ (`rq:queue:*`),
Sidekiq, Django's cache and a hit counter's `INCR hits` would all get `NOPERM` on every command, so the
add-on would again crash-loop exactly the apps issue 9 names. A process per project lets each app use any key,
FLUSHDB and KEYS on its own data only, and gives each project its own memory cap (`maxmemory`), which a shared
server cannot (one tenant could fill it for everyone). The cost is one small process per project (a few MiB).

Each instance, `<data_dir>/redis/<ident>/` (0700, owned by the system user `inkmcp-redis` when InkMCP runs as
root; `<ident>` = `ink_<project id hex>`, as the Postgres database is named):

    redis.conf        rewritten on every start: bind/port, persistence (AOF), memory cap, the ACL file
    users.acl         the project's user and its password's SHA-256 (never the password); `default` is off
    instance.json     {"port": N}: the instance's port, kept across restarts (REDIS_URL must not change)
    redis.pid         written by redis-server (daemonized, so it outlives the InkMCP process that started it)
    server.log        redis-server's log
    appendonlydir/    the data (AOF, fsync every second)

The project's ACL user may run every command except the categories @admin and @dangerous (CONFIG, ACL,
DEBUG, MODULE, SHUTDOWN, REPLICAOF/SLAVEOF, MIGRATE, MONITOR, SAVE, SYNC ...: CONFIG SET dir/dbfilename is the
classic way from Redis access to writing files on the host; REPLICAOF and MIGRATE would open connections out of
it), with the few @dangerous commands apps use on their own data allowed back: INFO (Sidekiq, kombu read the
version), KEYS, FLUSHDB, FLUSHALL, SORT, SORT_RO, SWAPDB. The password is only in InkMCP's database (encrypted
like Postgres credentials, see core.databases); the instance keeps its hash.

Production alternative, `INKMCP_REDIS_URL`: an external Redis (7+) that InkMCP administers with an admin ACL user
(ExternalRedisProvider). There a process per project is not possible, so each project gets an ACL user confined to
keys and channels `ink_<project id hex>:*` (EXTERNAL_ACL_RULES, which also removes every command that would list,
scan or watch other projects' keys or reach other dbs), and services get REDIS_KEY_PREFIX beside REDIS_URL: only
apps that prefix their keys with it work there (most frameworks have a setting for it). Users are persisted with
ACL SAVE (the server needs an `aclfile`) or else CONFIG REWRITE.

Disk (tenantdisk): `maxmemory` bounds the data set, but not its files: the AOF grows with every write (a tenant SETs
and DELs one big value in a loop: memory stays flat, the file grows until the next rewrite, and a rewrite that fails
leaves it growing), and all of it was on the data dir's filesystem, shared with every tenant and the control plane.
Each instance directory is now an ext4 image of its own (`compute/disks/redis/<ident>.img`, INKMCP_REDIS_DISK_MB,
the projects' disk machinery: `diskquota.NamedDisks`), mounted on `<data_dir>/redis/<ident>/` before the instance
starts and unmounted after it stopped (an instance outlives InkMCP when it was adopted: its mount stays with it). A
full one makes Redis refuse writes ("MISCONF Errors writing to the AOF file: No space left on device") for that
project only. Memory beside `maxmemory`: client buffers (a 1 GiB query buffer per connection by default) are capped
together by `maxmemory-clients` (Redis disconnects the largest clients past it).

Port (svcports): an instance keeps its port for life (REDIS_URL carries it), so while it is down (a crash, an OOM
kill, the watchdog's restart) the port is free. Tenants cannot take it: the local provider's bind guard
(`compute/local/bindguard.py`) refuses a project user's bind() of any port but its own service's, and a port inside
the kernel's ephemeral range (only if INKMCP_REDIS_PORT_MIN/MAX put it there) is also reserved from the kernel's own
choice (`reserve_port`), which listen() without bind() would use. Before, another tenant's app spinning on bind()
took it and read the next client's `AUTH` (redteam2).

Lifecycle: `provision` creates and starts an instance (a second provision of the same project gives it a new
password, which is how a crash between creating and recording is recovered, as for Postgres); `start()` (at
InkMCP start, before apps are restored) starts or adopts every instance on disk; `close()` stops those this
process started; `drop` stops the instance and deletes its directory (its data).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.errors import InvalidArgument, ProviderError
from inkmcp.providers.compute.local.diskquota import NamedDisks, is_mounted, unmount_patiently
from inkmcp.providers.database.base import DatabaseCredentials, DatabaseHandle, Tier
from inkmcp.providers.database.postgres import database_name_for

log = logging.getLogger(__name__)

SYSTEM_USER = "inkmcp-redis"
ACL_RULES = (
    "~* &* +@all -@admin -@dangerous "
    "+info +keys +flushdb +flushall +sort +sort_ro +swapdb"
)
"""The project user's permissions inside its own instance (see the module docstring for why each part)."""

_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 15.0
_INSTANCE_FILE = "instance.json"


class RedisSettings(BaseSettings):
    """INKMCP_REDIS_*: the Redis add-on's server processes (one per project that asks for Redis)."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_REDIS_", extra="ignore")

    server_bin: str = Field(
        default="redis-server",
        description="redis-server executable: a path or a name on PATH (Debian's redis-server package; "
        "scripts/system-deps.sh installs it)",
    )
    host: str = Field(
        default="127.0.0.1",
        description="address every instance binds to (apps of the local provider run on this machine, so loopback "
        "keeps Redis off the network)",
    )
    public_host: str | None = Field(
        default=None, description="host in REDIS_URL when apps reach the instances by another name; default: host"
    )
    url: SecretStr | None = Field(
        default=None,
        description="redis:// (or rediss://) URL of an external Redis 7+ with an admin user, for production: "
        "projects then get an ACL user confined to keys `<REDIS_KEY_PREFIX>*` on it instead of their own "
        "redis-server (see the module docstring: apps must prefix their keys)",
    )
    port_min: int = Field(default=16400, ge=1024, le=65535, description="first port an instance may get")
    port_max: int = Field(default=16999, ge=1024, le=65535, description="last port an instance may get")
    maxmemory_mb: int = Field(
        default=64, ge=1, description="memory cap of each project's instance (redis `maxmemory`), MiB"
    )
    maxmemory_policy: str = Field(
        default="noeviction",
        description="what a full instance does (redis `maxmemory-policy`): noeviction refuses writes rather than "
        "silently dropping data; allkeys-lru suits pure caches",
    )
    maxclients: int = Field(default=128, ge=1, description="connections per instance (redis `maxclients`)")
    disk_mb: int = Field(
        default=256, ge=0,
        description="disk of each project's instance (its append-only files, on an ext4 image of this size; root "
        "only), MiB; keep it above 3 x maxmemory_mb (the AOF's base, its growth until a rewrite, a rewrite's new "
        "base). 0: not limited",
    )  # fmt: skip
    client_memory_mb: int = Field(
        default=64, ge=1,
        description="memory all connections' buffers of one instance may hold together (redis `maxmemory-clients`); "
        "past it Redis disconnects the largest",
    )  # fmt: skip
    watch_seconds: float = Field(
        default=5.0, ge=0, description="how often a serving InkMCP restarts instances that died (0 = never)"
    )

    @field_validator("maxmemory_policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        policies = ("noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu",
                    "volatile-random", "volatile-ttl")  # fmt: skip
        if v not in policies:
            raise ValueError(f"must be one of {', '.join(policies)}")
        return v

    @model_validator(mode="after")
    def _port_range(self) -> RedisSettings:
        if self.port_min > self.port_max:
            raise ValueError("INKMCP_REDIS_PORT_MIN must not exceed INKMCP_REDIS_PORT_MAX")
        return self


# --------------------------------------------------------------------------------------------- RESP client


class RedisReplyError(Exception):
    """An error reply (`-ERR ...`, `-NOPERM ...`, `-WRONGPASS ...`) from the server; str() is its text."""


Reply = bytes | int | None | list["Reply"] | str


class RespConnection:
    """A minimal RESP2 client over asyncio streams: enough for InkMCP's own probes and the isolation tests,
    so InkMCP needs no Redis client library. Simple strings come back as `str`, bulk strings as `bytes`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int, *, timeout: float = 5.0) -> RespConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer)

    async def execute(self, *args: str | bytes | int, timeout: float = 10.0) -> Reply:
        """Send one command, return its reply; an error reply raises RedisReplyError."""
        out = bytearray(b"*%d\r\n" % len(args))
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(b), b)
        self._writer.write(bytes(out))
        await self._writer.drain()
        reply = await asyncio.wait_for(self._read(), timeout)
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    async def _read(self) -> Reply | RedisReplyError:
        line = await self._reader.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            return RedisReplyError(body.decode())
        if kind == b":":
            return int(body)
        if kind == b"$":
            n = int(body)
            if n < 0:
                return None
            data = await self._reader.readexactly(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(body)
            if n < 0:
                return None
            items: list[Reply] = []
            for _ in range(n):
                item = await self._read()
                if isinstance(item, RedisReplyError):
                    raise item
                items.append(item)
            return items
        raise ConnectionError(f"unexpected RESP reply type {kind!r}")

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()


# ---------------------------------------------------------------------------------------------- instances


def _ensure_user() -> pwd.struct_passwd | None:
    """The system user instances run as when we are root (Redis warns against root, and a Redis RCE would
    then be root); None when InkMCP itself is unprivileged."""
    if os.geteuid() != 0:
        return None
    from inkmcp.store.embedded import _ensure_system_user

    return _ensure_system_user(SYSTEM_USER)


class RedisInstance:
    """One project's redis-server on one directory. `start`/`stop` are synchronous (run them in a thread)."""

    def __init__(self, directory: Path, *, settings: RedisSettings, user: pwd.struct_passwd | None) -> None:
        self.dir = directory
        self.settings = settings
        self._user = user

    @property
    def ident(self) -> str:
        return self.dir.name

    @property
    def port(self) -> int | None:
        try:
            return int(json.loads((self.dir / _INSTANCE_FILE).read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def binary(self) -> str:
        found = shutil.which(self.settings.server_bin)
        if found is None:
            raise ProviderError(
                f"the Redis add-on needs redis-server, and {self.settings.server_bin!r} is not installed here.",
                fix="install Debian's redis-server package (scripts/system-deps.sh does) or set "
                "INKMCP_REDIS_SERVER_BIN to its path",
            )
        return found

    # -- files

    def _write(self, name: str, text: str) -> None:
        path = self.dir / name
        tmp = path.with_name(name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if self._user is not None:
            os.chown(tmp, self._user.pw_uid, self._user.pw_gid)
        os.replace(tmp, path)

    def configure(self, *, port: int, password: str | None) -> None:
        """Create the directory and write redis.conf (and users.acl when `password` is given)."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        os.chmod(self.dir, 0o700)
        self._write(_INSTANCE_FILE, json.dumps({"port": port}) + "\n")
        if password is not None:
            digest = hashlib.sha256(password.encode()).hexdigest()
            self._write("users.acl", f"user default off resetpass resetchannels -@all\n"
                                     f"user {self.ident} on #{digest} {ACL_RULES}\n")  # fmt: skip
        s = self.settings
        self._write("redis.conf", "\n".join((
            "# Written by InkMCP on every start; edits are overwritten.",
            f"bind {s.host}",
            f"port {port}",
            "protected-mode yes",
            "daemonize yes",
            f"pidfile {self.dir / 'redis.pid'}",
            f"logfile {self.dir / 'server.log'}",
            f"dir {self.dir}",
            f"aclfile {self.dir / 'users.acl'}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"maxmemory {s.maxmemory_mb}mb",
            f"maxmemory-policy {s.maxmemory_policy}",
            f"maxclients {s.maxclients}",
            f"maxmemory-clients {s.client_memory_mb}mb",  # --- tenantdisk: every client's buffers, together
            "auto-aof-rewrite-percentage 100",
            "auto-aof-rewrite-min-size 32mb",
            "enable-debug-command no",
            "enable-module-command no",
            "enable-protected-configs no",
            "always-show-logo no",
            "",
        )))  # fmt: skip

    # -- processes

    def running_pid(self) -> int | None:
        """PID from redis.pid if that process is alive and is this instance's redis-server (its working directory
        is the instance directory): after a reboot the PID may belong to an unrelated process."""
        try:
            pid = int((self.dir / "redis.pid").read_text().strip())
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            exe, cwd = Path(proc.exe()).resolve(), Path(proc.cwd()).resolve()
        except (OSError, ValueError, psutil.Error):
            return None
        if exe != Path(self.binary()).resolve() or cwd != self.dir.resolve():
            return None
        return pid

    def start(self) -> bool:
        """Start the instance, or adopt it when it already runs; True when this call started it."""
        if self.running_pid() is not None:
            return False
        port = self.port
        if port is None or not (self.dir / "users.acl").exists():
            raise ProviderError(f"Redis instance {self.ident} has no configuration; provision it again")
        self.configure(port=port, password=None)
        if os.geteuid() == 0:  # svcports: a port inside the ephemeral range (INKMCP_REDIS_PORT_MIN/MAX) kept off it
            from inkmcp.providers.compute.local.bindguard import reserve_port

            reserve_port(port, owner=str(self.dir))
        (self.dir / "redis.pid").unlink(missing_ok=True)
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        server_log = self.dir / "server.log"
        try:
            offset = server_log.stat().st_size
        except OSError:
            offset = 0
        t0 = time.monotonic()
        proc = subprocess.run(
            [self.binary(), str(self.dir / "redis.conf")], cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=_START_TIMEOUT_S, check=False,
            start_new_session=True, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        if proc.returncode != 0:
            raise self._failed(f"redis-server exited with {proc.returncode}: {proc.stdout.strip()[-500:]}")
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            # answering is not ready: the port is open while the AOF loads, and every command but AUTH gets
            # "-LOADING" until Redis logs that it is ready (CI run 44: a restarted instance's first GET did)
            if self.running_pid() is not None and _answers(self.settings.host, port) and _ready(server_log, offset):
                if os.geteuid() == 0:  # --- suitefast: its reservation (if any) held while redis-server lives
                    from inkmcp.providers.compute.local.bindguard import hold_port

                    if (pid := self.running_pid()) is not None:
                        hold_port(port, pid)
                log.info("redis instance %s started on port %d in %.2fs", self.ident, port, time.monotonic() - t0)
                return True
            time.sleep(0.02)
        raise self._failed("it did not answer on its port in time")

    def _failed(self, why: str) -> ProviderError:
        log.error("redis instance %s failed to start: %s\n%s", self.ident, why, self.log_tail())
        return ProviderError(f"the project's Redis did not start: {why.replace(str(self.dir), '<redis dir>')}",
                             fix="retry; if it persists the operator finds the cause in the instance's server.log")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (redis-server flushes the AOF and exits), SIGKILL if it is still there at the deadline."""
        pid = self.running_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _gone(pid, _STOP_TIMEOUT_S):
                log.warning("redis instance %s did not stop in %.0fs; killing pid %d", self.ident, _STOP_TIMEOUT_S,
                            pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _gone(pid, 5)
        if os.geteuid() == 0:  # --- suitefast: the reservation `start` made (bindguard.reserve_port), if any
            from inkmcp.providers.compute.local.bindguard import release_port

            release_port(owner=str(self.dir))


def _gone(pid: int, timeout: float) -> bool:
    """Poll until `pid` has exited (a zombie counts: the daemon is not our child, its reaper may be slow)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


def _answers(host: str, port: int) -> bool:
    """The server accepts a connection and answers a PING (with NOAUTH: the default user is off)."""
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


def _ready(server_log: Path, offset: int) -> bool:
    """redis-server logged, after `offset`, that it loaded its data and accepts commands."""
    try:
        with server_log.open("rb") as f:
            f.seek(offset)
            return b"Ready to accept connections" in f.read(1 << 20)
    except OSError:
        return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class RedisProvider:
    """DatabaseProvider (name "redis") of per-project redis-server instances under `base`."""

    name = "redis"

    def __init__(self, base: Path, settings: RedisSettings | None = None, *, disks: NamedDisks | None = None) -> None:
        self.base = Path(base).absolute()
        self.settings = settings or RedisSettings()
        self.disks = disks  # --- tenantdisk: each instance directory on an image of its own; None: not limited
        self._user: pwd.struct_passwd | None = None
        self._user_checked = False
        self._started: set[str] = set()
        self._watch: asyncio.Task[None] | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"RedisProvider(base={str(self.base)!r})"

    def _system_user(self) -> pwd.struct_passwd | None:
        if not self._user_checked:
            self._user = _ensure_user()
            self._user_checked = True
        return self._user

    def instance(self, ident: str) -> RedisInstance:
        return RedisInstance(self.base / ident, settings=self.settings, user=self._system_user())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One flock for the whole base: port allocation and start/stop must not race between processes."""
        self.base.mkdir(parents=True, exist_ok=True)
        if self._system_user() is not None:
            from inkmcp.store.embedded import _ensure_traversable

            os.chmod(self.base, 0o711)  # noqa: S103 - the system user traverses to its instance dirs; nobody lists them
            _ensure_traversable(self.base)
        fd = os.open(self.base / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def idents(self) -> list[str]:
        """Every instance: a directory with its instance file, or an image (whose directory is mounted on start)."""
        imaged = set(self.disks.names()) if self.disks is not None and self.disks.enforced else set()
        if not self.base.is_dir():
            return sorted(imaged)
        return sorted(imaged | {d.name for d in self.base.iterdir() if (d / _INSTANCE_FILE).exists()})

    def _mount(self, ident: str) -> None:
        """--- tenantdisk: the instance's directory on its own filesystem, before anything reads or starts it.

        An instance from before (its directory on the host's filesystem) that is running is stopped first (SIGTERM:
        it flushes its AOF), so its files are copied while nothing writes them; the caller starts it again."""
        if self.disks is None or not self.disks.enforced:
            return
        inst = self.instance(ident)
        if not is_mounted(self.disks.mount_point(ident)) and inst.running_pid() is not None:
            log.info("redis instance %s moves onto its own disk: stopping it for the copy", ident)
            inst.stop()
        self.disks.ensure(ident)

    def _unmount(self, ident: str) -> None:
        """--- tenantdisk: after the instance stopped (never under a running one)."""
        if self.disks is not None and self.disks.enforced and self.instance(ident).running_pid() is None:
            unmount_patiently(self.disks.mount_point(ident))

    def _allocate_port(self) -> int:
        used = {p for p in (self.instance(i).port for i in self.idents()) if p is not None}
        for port in range(self.settings.port_min, self.settings.port_max + 1):
            if port not in used and _port_free(self.settings.host, port):
                return port
        raise ProviderError(
            f"no free port for another Redis instance in {self.settings.port_min}-{self.settings.port_max} "
            f"({len(used)} instances exist).",
            fix="the operator widens INKMCP_REDIS_PORT_MIN/INKMCP_REDIS_PORT_MAX, or a project's Redis is deleted",
        )

    def _provision(self, ident: str) -> tuple[int, str]:
        with self._locked():
            inst = self.instance(ident)
            imaged = self.disks is not None and self.disks.image(ident).exists()
            self._mount(ident)  # refused here (nothing made) when the host cannot hold another image
            existed = inst.port is not None
            try:
                port = inst.port or self._allocate_port()
            except ProviderError:
                if not existed and not imaged and self.disks is not None:
                    self.disks.remove(ident)
                raise
            password = secrets.token_urlsafe(32)
            inst.stop()  # a re-provision (crash before it was recorded) changes the password: restart with it
            try:
                inst.configure(port=port, password=password)
                if inst.start():
                    self._started.add(ident)
            except BaseException:
                if not existed:  # nothing recorded it: leave no half-made instance for start() to retry forever
                    inst.stop()
                    shutil.rmtree(inst.dir, ignore_errors=True)
                    if self.disks is not None:
                        self.disks.remove(ident)
                raise
            return port, password

    async def provision(self, *, owner_slug: str, tier: Tier) -> DatabaseHandle:
        tier = Tier(tier)
        ident = database_name_for(owner_slug)
        port, password = await asyncio.to_thread(self._provision, ident)
        return DatabaseHandle(
            provider=self.name,
            tier=tier,
            external_id=ident,
            credentials=DatabaseCredentials(host=self.settings.public_host or self.settings.host, port=port,
                                            database="0", user=ident, password=SecretStr(password), scheme="redis"),
        )  # fmt: skip

    def _check_ours(self, external_id: str) -> str:
        if not external_id.startswith("ink_") or "/" in external_id or external_id in (".", ".."):
            raise InvalidArgument(f"{external_id!r} is not a Redis instance this provider created",
                                  argument="external_id", fix="pass the external_id returned by provision")
        return external_id

    def _drop(self, ident: str) -> None:
        with self._locked():
            inst = self.instance(ident)
            inst.stop()
            self._started.discard(ident)
            if self.disks is not None:  # --- tenantdisk: its filesystem and image go with it
                self.disks.remove(ident)
            shutil.rmtree(inst.dir, ignore_errors=True)

    async def drop(self, external_id: str) -> None:
        """Stop the project's instance and delete its data. Idempotent."""
        await asyncio.to_thread(self._drop, self._check_ours(external_id))

    def _start_all(self) -> list[str]:
        failed: list[str] = []
        with self._locked():
            for ident in self.idents():
                try:
                    self._mount(ident)
                    if self.instance(ident).start():
                        self._started.add(ident)
                except (ProviderError, OSError):
                    failed.append(ident)  # logged by the instance; the other projects' Redis still start
        return failed

    async def start(self) -> list[str]:
        """Start (or adopt) every instance on disk, e.g. after a reboot, and from then on restart any that dies
        (every `watch_seconds`: apps whose Redis crashed would otherwise crash-loop until InkMCP restarts).
        Returns the idents that failed to start."""
        self._closing = False
        failed = await asyncio.to_thread(self._start_all)
        if self.settings.watch_seconds > 0 and self._watch is None:
            self._watch = asyncio.create_task(self._watchdog(), name="redis-watchdog")
        return failed

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_seconds)  # a period, not a synchronisation
            try:
                await asyncio.to_thread(self._restart_dead)
            except Exception:
                log.exception("redis watchdog round failed")

    def _restart_dead(self) -> list[str]:
        restarted: list[str] = []
        with self._locked():
            # --- tenantdisk: a round already in its thread when close() cancelled the watchdog must not start (and
            # mount) an instance after close() stopped them: it would outlive InkMCP with its image mounted
            if self._closing:
                return restarted
            for ident in self.idents():
                inst = self.instance(ident)
                if inst.running_pid() is not None:
                    continue
                log.warning("redis instance %s is not running; restarting it", ident)
                try:
                    self._mount(ident)
                    if inst.start():
                        self._started.add(ident)
                        restarted.append(ident)
                except (ProviderError, OSError):
                    pass  # logged by the instance; retried next round
        return restarted

    def _stop(self, idents: Sequence[str] | None = None) -> None:
        """Stop `idents`, or (None) every instance this process started, read under the lock."""
        with self._locked():
            for ident in sorted(self._started) if idents is None else idents:
                self.instance(ident).stop()
                self._started.discard(ident)
                self._unmount(ident)

    async def close(self) -> None:
        """Stop the watchdog, then the instances this process started (adopted ones belong to whoever started
        them)."""
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._started or (self.base / ".lock").exists():  # read again under the lock (a round in flight)
            await asyncio.to_thread(self._stop)


# ---------------------------------------------------------------------------------------- external server

EXTERNAL_PROVIDER = "redis-external"
EXTERNAL_ACL_RULES = (
    "+@all -@admin -@dangerous "
    # key names of other projects: SCAN/RANDOMKEY ignore key patterns, CLIENT TRACKING BCAST reports every change,
    # PUBSUB CHANNELS lists everyone's channels; SELECT would reach dbs InkMCP does not clean up
    "-scan -randomkey -dbsize -client|tracking -pubsub -select -move -copy "
    # shared server state: functions and the script cache are global, SCRIPT/FUNCTION KILL stop others' scripts
    "-function|load -function|delete -function|flush -function|restore -function|kill -script|flush -script|kill"
)
"""What a project's user may run on a shared server, beside its key and channel patterns."""


def key_prefix(ident: str) -> str:
    return f"{ident}:"


class ExternalRedisProvider:
    """DatabaseProvider (name "redis-external") of ACL users on one Redis InkMCP administers (INKMCP_REDIS_URL)."""

    name = EXTERNAL_PROVIDER

    def __init__(self, admin_url: SecretStr, *, public_host: str | None = None, connect_timeout_s: float = 5) -> None:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(admin_url.get_secret_value())
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise InvalidArgument("is not a redis:// or rediss:// URL with a host", argument="INKMCP_REDIS_URL",
                                  fix="set it to redis://ADMIN_USER:PASSWORD@HOST:6379/0, or unset it to run one "
                                      "redis-server per project here")  # fmt: skip
        self._host, self._port = parts.hostname, parts.port or 6379
        self._tls = parts.scheme == "rediss"
        self._user = unquote(parts.username) if parts.username else None
        self._password = SecretStr(unquote(parts.password or ""))
        self._db = int(parts.path.lstrip("/") or 0)
        self.public_host = public_host or self._host
        self.connect_timeout_s = connect_timeout_s
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ExternalRedisProvider({self._host}:{self._port})"

    async def _admin(self) -> RespConnection:
        import ssl

        try:
            tls = ssl.create_default_context() if self._tls else None
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, ssl=tls), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as e:
            raise ProviderError(f"cannot reach the Redis server (INKMCP_REDIS_URL): {e}") from None
        conn = RespConnection(reader, writer)
        try:
            password = self._password.get_secret_value()
            auth = (self._user, password) if self._user else (password,)
            if any(auth):
                await conn.execute("AUTH", *auth)
            await conn.execute("SELECT", self._db)
        except RedisReplyError as e:
            await conn.close()
            raise ProviderError(f"the Redis server (INKMCP_REDIS_URL) refused InkMCP's admin login: {e}",
                                fix="give INKMCP_REDIS_URL a user that may run ACL, SCAN and UNLINK") from None
        return conn

    async def _persist(self, conn: RespConnection) -> None:
        """ACL SAVE when the server has an aclfile, else CONFIG REWRITE: users must outlive a server restart."""
        try:
            await conn.execute("ACL", "SAVE")
        except RedisReplyError:
            try:
                await conn.execute("CONFIG", "REWRITE")
            except RedisReplyError as e:
                log.warning("external redis: project users are not persisted (no aclfile, CONFIG REWRITE: %s)", e)

    async def provision(self, *, owner_slug: str, tier: Tier) -> DatabaseHandle:
        tier = Tier(tier)
        ident = database_name_for(owner_slug)
        prefix = key_prefix(ident)
        password = secrets.token_urlsafe(32)
        async with self._lock:
            conn = await self._admin()
            try:
                await conn.execute("ACL", "SETUSER", ident, "reset", "on", f">{password}", f"~{prefix}*",
                                   f"&{prefix}*", *EXTERNAL_ACL_RULES.split(),
                                   f"+select|{self._db}")  # clients that SELECT the URL's db explicitly  # fmt: skip
                await self._persist(conn)
            except RedisReplyError as e:
                raise ProviderError(f"creating the Redis user {ident} failed: {e}") from None
            finally:
                await conn.close()
        return DatabaseHandle(
            provider=self.name,
            tier=tier,
            external_id=ident,
            credentials=DatabaseCredentials(host=self.public_host, port=self._port, database=str(self._db),
                                            user=ident, password=SecretStr(password),
                                            scheme="rediss" if self._tls else "redis"),
        )  # fmt: skip

    async def drop(self, external_id: str) -> None:
        """Delete the user (its connections are closed by the server) and every key under its prefix. Idempotent."""
        if not external_id.startswith("ink_") or ":" in external_id or "*" in external_id:
            raise InvalidArgument(f"{external_id!r} is not a Redis user this provider created",
                                  argument="external_id", fix="pass the external_id returned by provision")
        async with self._lock:
            conn = await self._admin()
            try:
                await conn.execute("ACL", "DELUSER", external_id)
                await self._persist(conn)
                cursor: bytes = b"0"
                while True:
                    reply = await conn.execute("SCAN", cursor, "MATCH", f"{key_prefix(external_id)}*", "COUNT", 1000)
                    cursor, keys = reply  # type: ignore[misc]
                    if keys:
                        await conn.execute("UNLINK", *keys)
                    if cursor == b"0":
                        break
            except RedisReplyError as e:
                raise ProviderError(f"deleting the Redis user {external_id} failed: {e}") from None
            finally:
                await conn.close()

    async def start(self) -> list[str]:
        """Nothing to start: the server is someone else's."""
        return []

    async def close(self) -> None:
        """Nothing held: connections are opened per operation."""


def redis_disks(base: Path, settings: RedisSettings, *, reserve_mb: int = 2048, overcommit: float = 1.0) -> NamedDisks:
    """--- tenantdisk: the instances' images of `base` (`<data_dir>/redis`), beside the projects'
    (INKMCP_REDIS_DISK_MB). `reserve_mb`/`overcommit`: INKMCP_DISK_RESERVE_MB / _OVERCOMMIT (inkmcp.settings.Settings,
    passed by app.py), for new images; mounting existing ones needs neither."""
    user = _ensure_user()
    base = Path(base).absolute()
    return NamedDisks(base.parent / "compute", "redis", base, size_mb=settings.disk_mb, setting="INKMCP_REDIS_DISK_MB",
                      what="Redis instance", owner=None if user is None else (user.pw_uid, user.pw_gid),
                      reserve_mb=reserve_mb, overcommit=overcommit, inner=None)  # fmt: skip


@contextlib.contextmanager
def redis_files_mounted(base: Path) -> Iterator[None]:
    """--- tenantdisk: for a reader of the instance directories while InkMCP may be stopped (`inkmcp backup create`):
    every instance's image mounted meanwhile; those mounted here are unmounted again after (their instance is not
    running: a running one's image is mounted already)."""
    disks = redis_disks(base, RedisSettings())
    if not disks.enforced:
        yield
        return
    here = [n for n in disks.names() if not is_mounted(disks.mount_point(n))]
    for name in here:
        try:
            disks.ensure(name)
        except (OSError, ProviderError) as exc:
            log.warning("could not mount the Redis files of %s: %s", name, exc)
    try:
        yield
    finally:
        for name in here:
            unmount_patiently(disks.mount_point(name))


def build_redis_provider(base: Path, settings: RedisSettings, *, reserve_mb: int = 2048,
                         overcommit: float = 1.0) -> RedisProvider | ExternalRedisProvider:
    """The external server when INKMCP_REDIS_URL is set, else one redis-server per project under `base`
    (`reserve_mb`/`overcommit`: the host's disk admission, `redis_disks`)."""
    if settings.url is not None:
        return ExternalRedisProvider(settings.url, public_host=settings.public_host)
    return RedisProvider(base, settings, disks=redis_disks(base, settings, reserve_mb=reserve_mb,  # --- tenantdisk
                                                           overcommit=overcommit))
