"""A pytest plugin for the module experiment: every NginxProxy the tests start renders InkMCP's config rewritten for
benchmarks/nginx_module (proxy_speed.module_config), so the proxy's behaviour tests check the module's rules:

    INKMCP_NGINX_MODULE=/tmp/ngx_http_inkmcp_module.so PYTHONPATH=benchmarks/nginx_module \\
      .venv/bin/pytest -p module_plugin tests/local/test_nginx_proxy.py tests/local/test_provider_lifecycle.py \\
      -k "not module_experiment"

(2026-12-01: 27 passed, among them the Server-header and Host-check test, TCP_NODELAY on every client socket,
wake-on-request, three redeploys under load without a failed request, WebSocket through the proxy.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import proxy_speed

from inkmcp.providers.compute.local import nginx

_MODULE = Path(os.environ.get("INKMCP_NGINX_MODULE", "")).resolve()
if not _MODULE.is_file():
    raise SystemExit("INKMCP_NGINX_MODULE must name the built module (benchmarks/nginx_module/build.sh)")
_render = nginx.NginxProxy._config


def _config_with_module(self: nginx.NginxProxy) -> str:
    return proxy_speed.module_config(_render(self), _MODULE)


nginx.NginxProxy._config = _config_with_module  # type: ignore[method-assign]
