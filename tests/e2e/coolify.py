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
from pathlib import Path
from typing import Any

from inkmcp.coolify.standin import CoolifyStandin
from inkmcp.coolify.standin.runner import AppRunner
from tests.hardening.conftest import free_port, have_sshd, make_keys, sshd_config, start_sshd, stop_pid
from tests.requirements import require
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
    sshd_pid = None
    try:
        token = standin.add_token("root")
        run = standin.add_servers(1, cpus=NODE["cpus"], memory_mb=NODE["memory_mb"], wildcard_base=WILDCARD_BASE)[0]
        node_env, sshd_pid = _run_server_sshd(standin, run, root / "sshd")
        env = {**node_env, **env}
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
            # databases on our own tenant server: the runner's apps are host processes, which cannot resolve a
            # Coolify-managed database's container host (tests/coolify/test_database_provider.py covers that one)
            "INKMCP_DATABASE_PROVIDER": "postgres",
            **env,
        })
        srv = CoolifyServerProc(**{k: getattr(base, k) for k in base.__dataclass_fields__}, standin=standin,
                                token=token)
        srv.compute = "coolify"
        # health checks at a fifth of Coolify's timing: a never-listening app fails in 13 s instead of 65 s
        runner = AppRunner(srv.data_dir / "coolify-node", time_scale=0.2).attach(standin)
        srv.runner = runner
        srv.proxy_port = runner.proxy_port
        runner.node_proxy.blocking_refresh = 1.0  # Sablier re-checks a waking app every second (its default: 5 s)
        runner.node_proxy.expiration_interval = 0.5  # and sweeps expired sessions twice a second (default: 20 s)
        srv.start()
        srv.create_keys(accounts)  # after the start: made in this process (tests.support.ServerProc.create_key)
        yield srv
    finally:
        code = srv.stop() if srv is not None and srv.proc is not None else 0
        if runner is not None:
            runner.close()
        if sshd_pid is not None:
            stop_pid(sshd_pid)
        standin.stop()
        if srv is not None:
            remove_tenant_users(srv.data_dir)
            shutil.rmtree(srv.data_dir.parent, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0, f"graceful shutdown failed ({code}):\n{srv.log() if srv else ''}"
    assert standin.request_violations == [], standin.request_violations
    assert standin.response_violations == [], standin.response_violations


def _run_server_sshd(standin: Any, run: Any, tmp: Path) -> tuple[dict[str, str], int]:
    """The run server's SSH side: a real sshd on loopback accepting InkMCP's key (the run server's address in
    Coolify's record), whose user writes the proxy dynamic directory the stand-in's node proxy reads, and the
    INKMCP_NODE_* settings that make `inkmcp serve` write on_demand routers there (routes.py). Returns the
    settings and the sshd's PID (stopped by the caller)."""
    require("sshd", have_sshd(), "/usr/sbin/sshd or the sftp-server is missing (on_demand routers go over SSH)")
    tmp.mkdir(parents=True)
    host_key, client_key = make_keys(tmp)
    port = free_port()
    sshd = start_sshd(tmp, sshd_config(tmp, port, host_key), port, client_key)
    kind, blob = Path(str(host_key) + ".pub").read_text().split()[:2]
    known = tmp / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
    with standin._lock:
        run.ip, run.port, run.user = "127.0.0.1", port, "root"
    dynamic = standin.node_root(run.ip) / "data" / "coolify" / "proxy" / "dynamic"  # the node proxy's default
    dynamic.mkdir(parents=True, exist_ok=True)
    return {"INKMCP_NODE_SSH_KEY_FILE": str(client_key), "INKMCP_NODE_SSH_KNOWN_HOSTS": str(known),
            "INKMCP_NODE_PROXY_DYNAMIC_DIR": str(dynamic),
            "INKMCP_COOLIFY_SABLIER_SESSION": "3s"}, sshd.pid  # fmt: skip
