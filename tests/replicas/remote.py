"""`FakeRemote` shared by several InkMCP processes: a tiny server process and the client each replica uses.

Why: two replicas must see one remote (as two InkMCP processes see one Coolify), and the in-process FakeRemote
lives in one process. The server runs one FakeRemote in its own process behind a Unix socket; `RemoteClient` has
FakeRemote's API (the part `FakeComputeProvider` calls) and turns each call into one request: a JSON line in, a
JSON line out, dataclasses rebuilt on the client, `RemoteError` raised again with its status. The remote's own
background progress (queued → in_progress → finished) runs in the server process, as Coolify's queue does.

Run: `python -m tests.replicas.remote SOCKET` (prints "ready" on stdout once it listens).
The Coolify-backed cluster (`conftest.coolify_cluster`) runs the Coolify stand-in process instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sys
from pathlib import Path
from typing import Any

from inkmcp.providers.compute.fake import (
    OPERATIONS,
    Container,
    FakeRemote,
    Faults,
    RemoteApp,
    RemoteDeployment,
    RemoteError,
    Server,
)

QUERIES = ("apps_named", "deployments_of", "servers", "settle")  # test-side reads, not provider operations


def _encode(value: Any) -> Any:
    if isinstance(value, RemoteDeployment):
        return {"$type": "deployment", **dataclasses.asdict(value)}
    if isinstance(value, RemoteApp):
        return {"$type": "app", **dataclasses.asdict(value)}
    if isinstance(value, Server):
        return {"$type": "server", **dataclasses.asdict(value)}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict) and "$type" in value:
        kind = value.pop("$type")
        if kind == "deployment":
            return RemoteDeployment(**value)
        if kind == "app":
            container = value.pop("container")
            return RemoteApp(**value, container=Container(**container) if container else None)
        if kind == "server":
            return Server(**value)
    return value


async def _handle(remote: FakeRemote, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = json.loads(await reader.readline())
        op, args = request["op"], request.get("args", [])
        if op not in OPERATIONS and op not in QUERIES:
            answer: dict[str, Any] = {"error": {"status": 400, "message": f"unknown operation {op!r}"}}
        else:
            try:
                if op == "servers":
                    result: Any = remote.servers
                elif op == "settle":
                    await remote.settle(*args)
                    result = None
                else:
                    result = getattr(remote, op)(*args, **request.get("kwargs", {}))
                    if asyncio.iscoroutine(result):
                        result = await result
                answer = {"result": _encode(result)}
            except RemoteError as e:
                answer = {"error": {"status": e.status, "message": e.message, "retry_after": e.retry_after}}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
    finally:
        writer.close()


async def serve(path: Path) -> None:
    remote = FakeRemote(tick=0.01, build_ticks=5)
    server = await asyncio.start_unix_server(lambda r, w: _handle(remote, r, w), path=str(path))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


class RemoteClient:
    """FakeRemote's API over the socket, for `FakeComputeProvider(remote=RemoteClient(...))`.

    `faults` is this process's own (crash points fire in the replica that armed them); remote-side faults are
    not injected through it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.faults = Faults()
        self.servers: list[Server] = self._sync("servers")

    async def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        reader, writer = await asyncio.open_unix_connection(str(self.path))
        try:
            writer.write(json.dumps({"op": op, "args": list(args), "kwargs": kwargs}).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        return self._answer(json.loads(line))

    def _sync(self, op: str, *args: Any) -> Any:
        """Blocking call, for the provider's synchronous reads (`apps_named`) and set-up."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.path))
            s.sendall(json.dumps({"op": op, "args": list(args)}).encode() + b"\n")
            with s.makefile("rb") as f:
                return self._answer(json.loads(f.readline()))

    @staticmethod
    def _answer(answer: dict[str, Any]) -> Any:
        if "error" in answer:
            e = answer["error"]
            raise RemoteError(e["status"], e["message"], retry_after=e.get("retry_after"))
        return _decode(answer["result"])

    def apps_named(self, prefix: str) -> list[RemoteApp]:
        return self._sync("apps_named", prefix)  # type: ignore[no-any-return]

    def deployments_of(self, app_uuid: str, kind: str | None = None) -> list[RemoteDeployment]:
        return self._sync("deployments_of", app_uuid, kind)  # type: ignore[no-any-return]

    def __getattr__(self, op: str) -> Any:
        if op not in OPERATIONS:
            raise AttributeError(op)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._call(op, *args, **kwargs)

        return call


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
