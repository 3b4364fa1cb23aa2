"""Looking at a running test server from outside: its store, its key file, its metrics, and build gates.

Build gates replace `sleep N` builds raced against the answer window: the build creates a file in its
own working directory and waits until the test removes it, so "still building" is a fact, not a bet on
timing, and the test decides when the build may finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ServerProc


def service_host(server: ServerProc, service: str, project: str) -> str:
    """The host of a service's URL: `<service>.<project>.localhost` on the local provider (INKMCP_APPS_DOMAIN's
    default), `<service>-<project>.<run server's wildcard base>` on Coolify (tests/e2e/coolify.py: one run server)."""
    if server.compute == "coolify":
        return f"{service}-{project}.run-1.apps.test"
    return f"{service}.{project}.localhost"


async def wait_env_applied(session: Any, project: str, timeout: float = 60) -> None:
    """Poll list_services until every service of `project` runs the stored env (env == 'applied')."""
    from tests.support import call

    deadline = time.monotonic() + timeout
    services: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        services = (await call(session, "list_services", project_name=project))["services"]
        if all(x.get("env") == "applied" for x in services):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"env of {project} not applied within {timeout} s: {services}")


def store_query(server: ServerProc, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the control-plane store directly, as an attacker with a copy of the database would."""
    from inkmcp.store.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(server.data_dir / "pg" / "control")
    with psycopg.connect(pg.url(driver=None).get_secret_value()) as c:
        return c.execute(sql, params).fetchall()  # type: ignore[arg-type]


def encryption_keys(server: ServerProc) -> list[bytes]:
    """The server's Fernet keys from its key file, primary first (crypto.KEY_FILE_RELATIVE)."""
    from inkmcp.store.crypto import KEY_FILE_RELATIVE, ensure_key_file

    key_file = server.data_dir / KEY_FILE_RELATIVE
    assert key_file.exists(), f"{key_file} is missing"  # ensure_key_file would create one
    return [k.encode() for k in ensure_key_file(key_file)]


def decrypts_with(key: bytes, token: bytes) -> bytes | None:
    """The plaintext when `token` is a Fernet token made with `key`, else None (wrong key or not a token)."""
    try:
        return Fernet(key).decrypt(token)
    except Exception:
        return None


def metric_value(server: ServerProc, name: str, **labels: str) -> float:
    """One sample of /metrics (0.0 when the labelled sample does not exist yet)."""
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# ------------------------------------------------------------------------------------------ build gates

# Directories a build's working copy never lives in: skipping them keeps the scan cheap.
_PRUNE = {"venvs", "homes", "mirrors", "node_modules", "logs", "locks", ".git", "__pycache__"}


@dataclass
class Gate:
    """A build step that waits for the test: `build_command` blocks while its gate file exists."""

    root: Path  # the server's data dir: the gate file appears somewhere below it
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    opened: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f".inkmcp-test-gate-{self.token}"

    def build_command(self, before: str = "echo compiling") -> str:
        # 30 minutes at most, so a test that dies before opening the gate does not leave a build forever.
        return (f"{before}; touch {self.name}; n=0; while [ -e {self.name} ] && [ $n -lt 18000 ]; "
                f"do sleep 0.1; n=$((n+1)); done")

    def find(self) -> list[Path]:
        found = []
        for top, dirs, files in os.walk(self.root):  # never follows symlinks into other trees
            dirs[:] = [d for d in dirs if d not in _PRUNE and not (top == str(self.root) and d == "pg")]
            if self.name in files:
                found.append(Path(top) / self.name)
        return found

    def wait_closed(self, timeout: float = 120) -> Path:
        """Block until a build is waiting at this gate; return its gate file."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find()
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no build reached gate {self.name} under {self.root} within {timeout} s")

    def open_once(self) -> int:
        n = 0
        for path in self.find():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                self.opened.append(path)
                n += 1
        return n

    @contextlib.contextmanager
    def kept_open(self, interval: float = 0.2) -> Iterator[Gate]:
        """While the block runs, open every build that reaches this gate (a resumed build reaches it again)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                self.open_once()
                stop.wait(interval)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join(10)
