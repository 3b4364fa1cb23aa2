"""`python -m inkmcp.providers.compute.local.nginx_module [--nginx PATH] [DIR]`: build InkMCP's nginx module for
the installed nginx (run by `make install` as root). Prints the module's path; exits 1 with the reason otherwise
(the proxy then runs the headers-more config, see the package's docstring)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from inkmcp.providers.compute.local.nginx import ProxySettings
from inkmcp.providers.compute.local.nginx_module import PACKAGE_BIN, build


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m inkmcp.providers.compute.local.nginx_module")
    ap.add_argument("--nginx", type=Path, default=ProxySettings().nginx,
                    help="the nginx binary to build for (default: INKMCP_PROXY_NGINX's, %(default)s)")
    ap.add_argument("dir", nargs="?", type=Path, default=PACKAGE_BIN, help="where to put it (default: %(default)s)")
    args = ap.parse_args()
    started = time.monotonic()
    try:
        path = build(args.nginx, args.dir)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        sys.exit(f"could not build InkMCP's nginx module: {exc}")
    print(f"{path} ({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
