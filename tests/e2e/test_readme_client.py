"""The README's Python client example runs as written against a real `inkmcp serve`.

Client authors copy it; the installed MCP SDK's client API differs from older examples (no `streamablehttp_client`,
an httpx2 client, snake_case result fields), so a drift between the README and the SDK would hand them code that
fails at import. The test reads the example out of README.md and runs it in a fresh interpreter.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import local_only
from tests.support import ServerProc

pytestmark = local_only("the example talks to the MCP endpoint, the same whatever the compute provider")

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    section = README.read_text().split("### Your own client (Python)", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "README's client section has no python block"
    return found.group(1)


def test_the_readme_client_example_runs(server: ServerProc, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(example() + "\nimport asyncio, sys\nasyncio.run(main(sys.argv[1], sys.argv[2]))\n")
    done = subprocess.run([sys.executable, str(script), server.mcp_url, server.keys["alice"]],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("False {'projects': ["), done.stdout
    # a wrong key: the SDK raises at initialize (MCPError; the server's 401), no result is printed
    bad = subprocess.run([sys.executable, str(script), server.mcp_url, "dk_live_wrong"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode != 0 and "MCPError" in bad.stderr and not bad.stdout, bad.stderr[-2000:]
