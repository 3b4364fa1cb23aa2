"""redteam3: requests anyone can send grew the proxy's error log without bound, on the control plane's disk.

nginx wrote one `error`-level line per request its upstream failed ("upstream prematurely closed connection
while reading response header from upstream, ... request: "GET /<the whole path>" ...", up to 2 KiB each) to
`compute/proxy/error.log`, which nothing rotates or caps, on the data dir's filesystem: the one the control
plane's PostgreSQL writes to, outside every project's disk limit. mallory's app closes each connection without
answering and she (or a botnet: no key is needed to send requests to her public URL) sends requests with long
paths: ~2 KiB of the host's disk per request, 1,000 requests/s is 7 GB an hour. InkMCP also read the whole file
into memory to quote its tail when nginx failed to start.

Fix (`nginx.py`): the error log keeps only nginx's own `crit` and worse (start-up, configuration, resources);
an app's failures are its own business (its visitors get a 502, its runtime log says why), and the tail is
read from the end of the file.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.conftest import ROOT, deploy_live, host_of, session, via_proxy
from tests.support import ServerProc, git_repo

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: deploys on the shared server

PROJECT = "rt3-logflood"
REQUESTS = 400
PATH_BYTES = 3000

# Answers "/" (the deploy's health check), closes every other connection without a word.
CLOSER = r'''
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(128)
print("closer up", flush=True)
while True:
    c, _ = s.accept()
    try:
        head = c.recv(65536)
        if head.startswith(b"GET / ") or head.startswith(b"HEAD / "):
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
    except OSError:
        pass
    c.close()
'''


def error_log(server: ServerProc) -> Path:
    proxy = server.data_dir / "compute" / "proxy"  # layout.prepare_proxy_dir
    assert (proxy / "nginx.conf").is_file(), f"no nginx proxy at {proxy}"
    return proxy / "error.log"


@pytest.fixture(scope="module")
async def closer(server: ServerProc, repos: Path) -> dict[str, Any]:
    repo = git_repo(repos / "rt3-closer", {"closer.py": CLOSER})
    async with session(server, "mallory") as m:
        return await deploy_live(m, repo_url=str(repo), project_name=PROJECT, start_command="python3 closer.py",
                                 mode="persistent")


async def test_requests_to_a_failing_app_never_grow_the_proxy_log(server: ServerProc,
                                                                  closer: dict[str, Any]) -> None:
    """REQUESTS requests with a PATH_BYTES-long path to mallory's closing app, no key needed: each gets an
    answer from the proxy (a 502), and the proxy's error log on the host's disk grows by less than a line a
    request (before the fix: ~2 KiB a request, the path and all)."""
    assert via_proxy(server, closer["url"]).text == "ok\n"
    log = error_log(server)
    before = log.stat().st_size if log.exists() else 0
    path = "/" + "x" * PATH_BYTES
    headers = {"Host": host_of(closer["url"])}

    def send(n: int) -> int:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.proxy_port}", headers=headers, timeout=30) as c:
            return sum(c.get(f"{path}?{n}-{i}").status_code >= 500 for i in range(REQUESTS // 8))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        failed = sum(pool.map(send, range(8)))
    assert failed == REQUESTS, f"only {failed} of {REQUESTS} requests failed: the app did not close on them"
    grown = (log.stat().st_size if log.exists() else 0) - before
    assert grown < 200 * REQUESTS // 100, (
        f"the proxy's error log grew {grown} bytes for {REQUESTS} requests ({grown // REQUESTS} a request), "
        f"on {os.path.dirname(log)}'s filesystem")
