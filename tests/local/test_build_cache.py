"""The local provider builds Python services with uv into the project's own download cache.

A release of a real service (tenant user, cgroup, sandbox, proxy) whose requirements come from a PEP 503
index on loopback: the cache lands in `projects/<pid>/cache` owned 0700 by that project's user, not in
its home or anywhere shared, the tenant ran root's copy of uv, and the live app serves the package.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inkmcp.build.plan import BuildPlan, ProcessSpec, Stack
from inkmcp.providers.compute.local.users import project_user_name
from tests.build.test_build_installers import MODULE, PKG, package_index
from tests.requirements import requires

from .conftest import Events, get, key_for, no_record, request_for

APP = f"""
import os, http.server, {MODULE} as pkg
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (pkg.WHO + " " + pkg.VERSION).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


@requires("root", os.geteuid() == 0, "per-project users and caches exist only when InkMCP runs as root")
async def test_release_installs_through_the_projects_own_cache(
    make_provider: Callable[..., Any], checkouts: Callable[[dict[str, str]], Path],
    project_ids: Callable[[], str], data_dir: Path,
) -> None:  # fmt: skip
    provider = await make_provider(health_timeout=30.0)
    plan = BuildPlan(stack=Stack.python, source="call",
                     processes=(ProcessSpec(name="web", command="exec python app.py", routed=True),))  # fmt: skip
    with package_index(data_dir / "index") as index:
        keys = []
        for i in range(2):
            key = key_for(project_ids(), project=f"cached{i}")
            checkout = checkouts({"app.py": APP, "requirements.txt": f"{PKG}==1.0\n"})
            request = request_for(key, checkout, plan, env={"PIP_INDEX_URL": index.url})
            await provider.release(request, Events(), no_record)
            keys.append(key)
    for key in keys:
        response = await get(provider, key)
        assert response.status_code == 200 and response.text == "genuine 1.0", response.text
        user = project_user_name(key.project_id)
        cache = data_dir / "projects" / key.project_id / "cache"
        st = cache.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pwd.getpwnam(user).pw_uid, 0o700)
        assert (cache / "uv").is_dir() and (cache / "uv").stat().st_uid == st.st_uid
        assert not (data_dir / "homes" / user / ".cache" / "uv").exists()  # not the home: the project's cache
        assert stat.S_IMODE((data_dir / "projects" / key.project_id).stat().st_mode) == 0o711
        assert (data_dir / "projects" / key.project_id).stat().st_uid == 0
    uv = (data_dir / "bin" / "uv").stat()
    assert (uv.st_uid, stat.S_IMODE(uv.st_mode)) == (0, 0o755)
    log = (data_dir / "services" / keys[0].service_id / "logs" / "builds").glob("*.log")
    assert any(f"$ {data_dir / 'bin' / 'uv'} venv" in p.read_text() for p in log)
