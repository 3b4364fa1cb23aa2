"""`inkmcp dr revalidate-servers`: after Coolify's database is back, make Coolify re-check every server.

The restored database still says which servers were usable when the dump was taken; what counts is whether the
restored master reaches them now (SSH with the restored key, Docker up). `POST /servers/{uuid}/validate` queues
Coolify's ValidateServer job (app/Actions/Server/ValidateServer.php), which leaves `is_reachable`/`is_usable` as
they were until it finishes, and the API shows no "validating" flag: a read right after the POST may still show the
dump's stale "usable". So a server counts as usable only when it reads usable `settle` seconds or more after its
validation was queued (long enough for the job and its SSH timeout); until `timeout` we keep polling the others and
report each one's validation log.
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
                             settle: float = 30.0, include_localhost: bool = False,
                             progress: Progress = lambda _m: None) -> list[ServerState]:
    try:
        c = CoolifyClient(url, token, url_setting="--coolify-url (INKMCP_DR_COOLIFY_API_URL)",
                          token_setting="INKMCP_DR_COOLIFY_API_TOKEN")  # noqa: S106 - a setting name
    except ValueError as e:
        raise DrError(str(e)) from None
    try:
        return await _revalidate(c, timeout, poll, settle, include_localhost, progress)
    except CoolifyError as e:
        raise DrError(f"Coolify API: {e}") from None
    finally:
        await c.aclose()


async def _revalidate(c: CoolifyClient, timeout: float, poll: float, settle: float, include_localhost: bool,
                      progress: Progress) -> list[ServerState]:
    servers = [s for s in await c.list_servers()
               if include_localhost or s.ip not in ("host.docker.internal", "127.0.0.1", "localhost")]
    for s in servers:
        await c.validate_server(s.uuid)
        progress(f"validation queued: {s.name or s.uuid} ({s.ip})")
    settled_at = time.monotonic() + settle
    deadline = max(time.monotonic() + timeout, settled_at)
    states: dict[str, ServerState] = {}
    pending = {s.uuid for s in servers}
    while pending:
        for uuid in sorted(pending):
            s = await c.get_server(uuid)
            if s.usable and time.monotonic() >= settled_at:
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
