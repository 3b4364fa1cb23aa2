"""pg_dump / pg_restore as subprocesses, over the tenant server's admin connection.

Why subprocesses and not SQL: pg_dump's custom format (`-Fc`) is the one PostgreSQL promises to restore across
versions, with a table of contents pg_restore can check without restoring (`--list`). The binaries are the
embedded server's own (`inkmcp.store.embedded._bin_dir()`, PostgreSQL 18), so the client is never older than the
server it dumps.

The admin URL never reaches a command line (where `ps` would show it): it is split into libpq's PG* variables for
the child only, and the child gets no other PG* or INKMCP_* variable of ours. Errors quote pg_dump's own last
lines, which name databases and tables but never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from inkmcp.backup.manifest import sha256_file
from inkmcp.build.process import reap
from inkmcp.errors import ProviderError

Progress = Callable[[str], Awaitable[None]]

_ENV_OF = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
    "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT", "channel_binding": "PGCHANNELBINDING",
}  # fmt: skip
_TAIL = 8  # stderr lines kept for an error message


class PgToolError(ProviderError):
    """pg_dump or pg_restore failed; the message carries its last stderr lines."""


def bin_dir() -> Path:
    from inkmcp.store.embedded import _bin_dir

    return _bin_dir()


def child_env(admin_url: str) -> dict[str, str]:
    """The environment of a pg_dump/pg_restore child: ours without PG* and INKMCP_*, plus the admin login as PG*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "INKMCP_"))}
    for key, value in conninfo_to_dict(admin_url).items():
        if key in _ENV_OF and value is not None:
            env[_ENV_OF[key]] = str(value)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    env["PGAPPNAME"] = "inkmcp-backup"
    return env


async def _run(args: list[str], env: dict[str, str], *, timeout: float, stdout: int | None = None,
               what: str) -> list[str]:
    """Run one tool to completion; its stderr lines (the last few) on failure as a PgToolError. A timeout kills
    exactly the child this call started."""
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout if stdout is not None else asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await reap(proc)  # not a bare wait(): a killed pg_dump's unread output would keep it pending
        raise
    lines = (err or b"").decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        tail = " | ".join(line.strip() for line in lines[-_TAIL:]) or f"exit status {proc.returncode}"
        raise PgToolError(f"{what} failed: {tail}")
    return (out or b"").decode(errors="replace").splitlines()


async def dump(admin_url: str, database: str, dest: Path, *, timeout: float,
               on_progress: Progress | None = None) -> tuple[int, str]:
    """`pg_dump -Fc` of `database` into `dest` (created 0600, never readable by anyone else while being written).
    Returns (size in bytes, sha256 hex). A failure removes the partial file."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    args = [str(bin_dir() / "pg_dump"), "--format=custom", "--no-password", f"--dbname={database}"]
    ticker = asyncio.create_task(_report_size(dest, on_progress)) if on_progress else None
    try:
        await _run(args, child_env(admin_url), timeout=timeout, stdout=fd, what=f"pg_dump of {database}")
        os.fsync(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise
    finally:
        os.close(fd)
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    return await asyncio.to_thread(sha256_file, dest)


async def _report_size(path: Path, on_progress: Progress) -> None:
    """While a dump runs: its size every 2 s (a long dump shows it is moving)."""
    while True:
        await asyncio.sleep(2)
        with contextlib.suppress(FileNotFoundError):
            await on_progress(f"dumping: {path.stat().st_size / 2**20:.1f} MiB written")




async def check_archive(path: Path, *, timeout: float) -> int:
    """`pg_restore --list`: the archive's table of contents reads (header and TOC intact). Returns its entry count."""
    lines = await _run([str(bin_dir() / "pg_restore"), "--list", str(path)], dict(os.environ), timeout=timeout,
                       what="reading the backup's table of contents")
    return sum(1 for line in lines if line and not line.startswith(";"))


async def restore(admin_url: str, database: str, role: str, path: Path, *, password: SecretStr, timeout: float,
                  on_progress: Progress | None = None) -> None:
    """Restore the archive into the (empty) `database`, logged in as the tenant's `role` with its own `password`
    (host and port from `admin_url`): every object is the tenant's and the dump's SQL, and any tenant function it
    runs, has the tenant's rights only. All or nothing (one transaction, stop at the first error). `on_progress`
    hears the elapsed time every 2 s (a long restore shows it is moving).

    --- attacker2: not the superuser with `--role` (SET ROLE) as before: the dump is the tenant's own data, a CHECK
    constraint is evaluated for every restored row, and a plpgsql function it calls may run RESET ROLE, which goes
    back to the session's user. Red team dec2: mallory's constraint did that and ran ALTER ROLE <her> SUPERUSER,
    then read alice's database. Logged in as the tenant, RESET ROLE leaves her the tenant.
    """
    args = [str(bin_dir() / "pg_restore"), "--no-password", f"--dbname={database}", "--no-owner",
            "--exit-on-error", "--single-transaction", str(path)]
    env = {**child_env(admin_url), "PGUSER": role, "PGPASSWORD": password.get_secret_value()}
    ticker = asyncio.create_task(_report_elapsed(on_progress)) if on_progress else None
    try:
        await _run(args, env, timeout=timeout, what="pg_restore")
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


async def _report_elapsed(on_progress: Progress) -> None:
    started = asyncio.get_running_loop().time()
    while True:
        await asyncio.sleep(2)
        await on_progress(f"restoring: {asyncio.get_running_loop().time() - started:.0f} s")
