"""Run the Coolify stand-in for local development: `python -m inkmcp.coolify.standin [--port N]
[--token-file F] [--servers N] [--build-seconds S] [--data-dir D] [--build-server] [--run-apps [--proxy-port P]]`.

Prints the base URL and a root token (and writes the token to --token-file, mode 0600), so InkMCP can be pointed
at it with INKMCP_COOLIFY_URL / INKMCP_COOLIFY_TOKEN and used without a real Coolify. Stops on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from inkmcp.coolify.standin import CoolifyStandin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inkmcp.coolify.standin",
                                     description="A stateful Coolify 4.3.11 stand-in on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--token-file", type=Path, help="write the root API token here (mode 0600)")
    parser.add_argument("--servers", type=int, default=1,
                        help="usable run servers to create, with wildcard domains run-N.apps.test (default 1)")
    parser.add_argument("--build-seconds", type=float, default=2.0,
                        help="how long a deployment stays in_progress (default 2.0)")
    parser.add_argument("--rate-limit", type=int, default=200, help="requests per minute per user (default 200)")
    parser.add_argument("--data-dir", type=Path, help="where node files (proxy compose) go (default: a temp dir)")
    parser.add_argument("--run-apps", action="store_true",
                        help="really build and run what is deployed (runner.py), behind a Host-routing proxy; "
                             "pair with INKMCP_COOLIFY_DEV_LOCAL_REPOS=1 to deploy local repos")
    parser.add_argument("--build-server", action="store_true",
                        help="also register a build server (InkMCP's production default builds there)")
    parser.add_argument("--proxy-port", type=int, default=0, help="the runner's proxy port (default: any free port)")
    args = parser.parse_args(argv)
    if args.port < 0 or args.port > 65535:
        parser.error(f"--port {args.port}: pass 0 (any free port) or a port number up to 65535")
    if args.servers < 0:
        parser.error(f"--servers {args.servers}: pass 0 or more")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="coolify-standin-"))
    standin = CoolifyStandin(data_dir, port=args.port, build_seconds=args.build_seconds, rate_limit=args.rate_limit,
                             status_delay=0.5, delete_delay=0.5, stop_delay=0.5, log_level="warning")
    token = standin.add_token("root")
    standin.add_servers(args.servers)
    standin.add_private_key()
    if args.build_server:
        standin.add_server("10.77.0.200", name="builder", is_build_server=True, usable=True)
    standin.start()
    runner = None
    if args.run_apps:
        from inkmcp.coolify.standin.runner import AppRunner

        runner = AppRunner(data_dir / "runner", proxy_port=args.proxy_port).attach(standin)
        print(f"apps served by the runner's proxy on 127.0.0.1:{runner.proxy_port} (send the service URL's Host)")
    if args.token_file is not None:
        fd = os.open(args.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    print(f"Coolify stand-in at {standin.url} (API under {standin.url}/api/v1), node files in {data_dir}")
    print(f"INKMCP_COOLIFY_URL={standin.url}")
    print(f"INKMCP_COOLIFY_TOKEN={token}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    if runner is not None:
        runner.close()
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
