"""The e2e server with compute = Coolify: a real `inkmcp serve` switched to Coolify by its production settings
(INKMCP_COOLIFY_URL + INKMCP_COOLIFY_TOKEN), against the stateful Coolify stand-in, whose opt-in runner
(inkmcp/coolify/standin/runner.py) really builds and runs what InkMCP deploys behind a Host-routing proxy.

The stand-in runs in this (pytest) process, so tests can read every request InkMCP sent it; the runner's
directory lies inside the server's data dir, so build gates (probes.Gate) find its builds like the local
provider's. `proxy_port` is the runner's proxy: `via_proxy` reaches a Coolify-deployed service exactly as it
reaches a local one, by sending the Host of the service's URL.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from inkmcp.coolify.standin import CoolifyStandin
from inkmcp.coolify.standin.runner import AppRunner
from tests.support import ServerProc, make_server, remove_tenant_users, traversable_tmpdir

NODE = {"memory_mb": 65536, "cpus": 64}
"""One run server big enough for every service the suite deploys (placement's capacity, and the stand-in's
facts for it)."""
WILDCARD_BASE = "apps.test"


@dataclass
class CoolifyServerProc(ServerProc):
    standin: Any = None
    runner: Any = None
    token: str = ""


@contextlib.contextmanager
def coolify_server(prefix: str, accounts: tuple[str, ...], **env: str) -> Iterator[CoolifyServerProc]:
    """A started `inkmcp serve` on Coolify (the stand-in with one run server and a build server, production
    defaults otherwise: builds on the build server); stopped by PID, the runner's processes and the stand-in
    stopped, and the stand-in's spec checks asserted clean."""
    root = traversable_tmpdir(f"{prefix}standin-")
    standin = CoolifyStandin(root / "nodes", rate_limit=100_000, status_delay=0.05, delete_delay=0.1,
                             stop_delay=0.05, validation_delay=0.01)
    standin.start()
    runner = None
    srv = None
    try:
        token = standin.add_token("root")
        standin.add_servers(1, cpus=NODE["cpus"], memory_mb=NODE["memory_mb"], wildcard_base=WILDCARD_BASE)
        standin.add_server("10.77.0.200", name="builder", is_build_server=True, usable=True)
        standin.add_private_key()
        base = make_server(prefix, **{
            "INKMCP_COOLIFY_URL": standin.url,
            "INKMCP_COOLIFY_TOKEN": token,
            "INKMCP_COOLIFY_DEV_LOCAL_REPOS": "1",  # the suite deploys local git repos (loopback URL only)
            "INKMCP_COOLIFY_POLL_INTERVAL": "0.2",
            "INKMCP_COOLIFY_POLL_MAX_INTERVAL": "1",
            "INKMCP_COOLIFY_RATE_LIMIT": "100000",  # the stand-in's too: the 200/min budget is tests/coolify's subject
            "INKMCP_PLACEMENT_DEFAULT_NODE": json.dumps(NODE),
            **env,
        })
        srv = CoolifyServerProc(**{k: getattr(base, k) for k in base.__dataclass_fields__}, standin=standin,
                                token=token)
        srv.compute = "coolify"
        runner = AppRunner(srv.data_dir / "coolify-node").attach(standin)
        srv.runner = runner
        srv.proxy_port = runner.proxy_port
        for account in accounts:
            srv.create_key(account)
        srv.start()
        yield srv
    finally:
        code = srv.stop() if srv is not None and srv.proc is not None else 0
        if runner is not None:
            runner.close()
        standin.stop()
        if srv is not None:
            remove_tenant_users(srv.data_dir)
            shutil.rmtree(srv.data_dir.parent, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0, f"graceful shutdown failed ({code}):\n{srv.log() if srv else ''}"
    assert standin.request_violations == [], standin.request_violations
    assert standin.response_violations == [], standin.response_violations
