"""Where the `inkmcp serve` running on a data dir listens (`serve.json`), readable without importing the server.

Why a module of its own (suitefast): `inkmcp keys create` prints the running server's URL, and reading it from
`inkmcp.serve` imported uvicorn, the MCP SDK's server and InkMCP's tool definitions (~3.7 s of CPU under load) into
every such command, only to print one line. Only the standard library and `Settings` are needed here;
`inkmcp.serve` writes the file through these same functions.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from inkmcp.settings import Settings

ADDRESS_FILE = "serve.json"
"""In the data dir while `inkmcp serve` runs: its pid and MCP URL, so `inkmcp keys create` run without the server's
environment prints the URL the server really listens at (it printed the default port 8081 whatever the server's)."""


def mcp_url(settings: Settings) -> str:
    """The URL a client on this machine reaches the MCP endpoint at (a wildcard listen address as localhost)."""
    host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0") else settings.host
    return f"http://{host}:{settings.port}/mcp"


@contextlib.contextmanager
def address_recorded(settings: Settings) -> Iterator[None]:
    """`serve.json` in the data dir for as long as this server serves (written atomically, removed at exit unless
    another process's has replaced it). Held under the data dir's serve lock, so one server writes it."""
    path = settings.data_dir / ADDRESS_FILE
    tmp = path.with_name(f".{ADDRESS_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), "mcp_url": mcp_url(settings)}))
    os.replace(tmp, path)
    try:
        yield
    finally:
        if running_address(settings.data_dir, pid=os.getpid()) is not None:
            path.unlink(missing_ok=True)


def running_address(data_dir: Path, *, pid: int | None = None) -> tuple[int, str] | None:
    """(pid, MCP URL) of the `inkmcp serve` running on `data_dir`, or None when none is (no file, or its process is
    gone: a server killed with SIGKILL leaves the file behind). With `pid`, only that process's record counts."""
    try:
        record = json.loads((data_dir / ADDRESS_FILE).read_text())
        holder, url = int(record["pid"]), str(record["mcp_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid is not None and holder != pid:
        return None
    with contextlib.suppress(OSError):  # the serve lock names its holder (inkmcp.app): a reused pid is not it
        if (data_dir / "serve.lock").read_text().strip() not in ("", str(holder)):
            return None
    try:
        os.kill(holder, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return holder, url
