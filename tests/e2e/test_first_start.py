"""What a new user sees in `inkmcp serve`'s output, first start and later ones (found following the README).

The first start prints the default account's key once. A later start printed nothing about keys, so a user whose
key had scrolled away had to find `inkmcp keys create` in the README, and run without this server's data dir it
makes a key in another installation. Each later start now prints the exact command, and the command works.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.requirements import require_root
from tests.support import INKMCP, ServerProc, call, dispose_server, make_server, mcp_session

KEY = re.compile(r"dk_live_[A-Za-z0-9_\-]+")


def _said(srv: ServerProc, since: int) -> str:
    assert srv.log_path is not None
    return srv.log_path.read_text(errors="replace")[since:]


async def test_later_start_prints_a_keys_create_command_that_works() -> None:
    srv = make_server("inkmcp-first-start-")
    srv.initdb_template = False  # the product's whole first start, initdb of both clusters included
    try:
        srv.start()
        first = _said(srv, 0)
        assert "First start: created account 'default'" in first, first
        first_key = KEY.search(first)
        assert first_key and f"http://localhost:{srv.port}/mcp" in first, first
        assert "keys create" not in first, first  # the key itself is shown: no second instruction
        # the line a Claude Code user pastes: this server's URL and the key (tests/e2e/test_lifecycle.py had this
        # on a fresh server of its own; merged here by mender7, same first and second start)
        claude = next(x.strip() for x in first.splitlines() if x.strip().startswith("claude mcp add"))
        assert claude.startswith(f"claude mcp add --transport http mcpdeploy http://localhost:{srv.port}/mcp "
                                 '--header "Authorization: Bearer dk_live_'), claude
        claude_key = claude.split("Bearer ")[1].rstrip('"')
        async with mcp_session(srv, claude_key) as s:
            assert (await call(s, "list_projects"))["total"] == 0
        assert srv.stop() == 0

        offset = len(srv.log_path.read_text(errors="replace")) if srv.log_path else 0
        srv.start()
        later = _said(srv, offset)
        assert not KEY.search(later), later  # shown once: a restart never prints a key
        assert _said(srv, 0).count("claude mcp add") == 1  # nor the claude line
        line = next((ln.strip() for ln in later.splitlines() if " keys create " in ln), None)
        assert line is not None, later
        assert f"--data-dir {srv.data_dir}" in line and f"INKMCP_PORT={srv.port}" in line, line

        # run the printed command as a user would (NAME filled in), in an environment without this server's
        # settings: the data dir and port come from the line itself
        words = shlex.split(line.replace("NAME", "carol"))
        env = {k: v for k, v in srv.env.items() if not k.startswith("INKMCP_")}
        env.update(w.split("=", 1) for w in words if re.fullmatch(r"INKMCP_[A-Z_]+=.*", w))
        argv = [w for w in words if not re.fullmatch(r"INKMCP_[A-Z_]+=.*", w)]
        argv[0] = srv.inkmcp  # the line names serve's own argv[0]; the test runs the same executable by path
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=True, cwd="/tmp").stdout
        key = KEY.search(out)
        assert key and f"http://localhost:{srv.port}/mcp" in out, out
        async with mcp_session(srv, key.group(0)) as s:
            assert (await call(s, "list_projects"))["projects"] == []
        async with mcp_session(srv, first_key.group(0)) as s:
            assert (await call(s, "list_projects"))["total"] == 0
    finally:
        dispose_server(srv)


def test_data_dir_under_var_tmp_is_refused_before_anything_is_made() -> None:
    """As root, a data dir under /var/tmp (where a new user put one) is refused, as before, but now before two
    embedded PostgreSQL clusters are initialised there (that took seconds and left them behind)."""
    require_root("the private-/tmp refusal applies to a root server, whose tenants get a private /tmp")
    base = Path(tempfile.mkdtemp(prefix="inkmcp-vartmp-", dir="/var/tmp"))
    try:
        data = base / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("INKMCP_")}
        env |= {"INKMCP_DATA_DIR": str(data), "INKMCP_PORT": "1", "INKMCP_PROXY_PORT": "2"}
        out = subprocess.run([INKMCP, "serve"], env=env, capture_output=True, text=True, timeout=60, cwd="/tmp")
        assert out.returncode == 1, out
        assert "Argument 'INKMCP_DATA_DIR'" in out.stderr and "outside /tmp and /var/tmp" in out.stderr, out.stderr
        assert "initdb" not in out.stderr and not data.exists(), (out.stderr, list(base.rglob("*"))[:5])
    finally:
        shutil.rmtree(base, ignore_errors=True)
