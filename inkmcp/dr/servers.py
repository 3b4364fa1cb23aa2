"""`inkmcp dr revalidate-servers`: after Coolify's database is back, make Coolify re-check every server.

The restored database still says which servers were usable when the dump was taken; what counts is whether the
restored master reaches them now (SSH with the restored key, Docker up). `POST /servers/{uuid}/validate` queues
Coolify's ValidateServer job; we poll `GET /servers/{uuid}` until `settings.is_reachable` and `is_usable` hold,
and report each server's validation log when they do not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from inkmcp.coolify.client import CoolifyClient, CoolifyError
from inkmcp.dr.errors import DrError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ServerState:
    uuid: str
    name: str
    ip: str
    usable: bool
    log: str


async def revalidate_servers(url: str, token: SecretStr, *, timeout: float = 300, poll: float = 2.0,
                             include_localhost: bool = False, progress: Progress = lambda _m: None,
                             client: CoolifyClient | None = None) -> list[ServerState]:
    own = client is None
    c = client or CoolifyClient(url, token, url_setting="--coolify-url (INKMCP_DR_COOLIFY_API_URL)",
                                token_setting="INKMCP_DR_COOLIFY_API_TOKEN")  # noqa: S106 - a setting name
    try:
        try:
            servers = [s for s in await c.list_servers()
                       if include_localhost or s.ip not in ("host.docker.internal", "127.0.0.1", "localhost")]
        except CoolifyError as e:
            raise DrError(f"listing Coolify's servers: {e}") from None
        for s in servers:
            await c.validate_server(s.uuid)
            progress(f"validation queued: {s.name or s.uuid} ({s.ip})")
        deadline = time.monotonic() + timeout
        states: dict[str, ServerState] = {}
        pending = {s.uuid for s in servers}
        while pending:
            for uuid in sorted(pending):
                s = await c.get_server(uuid)
                if s.usable:
                    states[uuid] = ServerState(uuid, s.name or uuid, s.ip, True, "")
                    pending.discard(uuid)
                    progress(f"usable: {s.name or uuid} ({s.ip})")
                else:
                    states[uuid] = ServerState(uuid, s.name or uuid, s.ip, False, s.validation_logs or "")
            if pending and time.monotonic() > deadline:
                break
            if pending:
                await asyncio.sleep(poll)
        return [states[s.uuid] for s in servers]
    finally:
        if own:
            await c.aclose()
