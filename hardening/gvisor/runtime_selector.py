#!/usr/bin/python3 -IS
"""InkMCP runtime selector: Docker's default OCI runtime on a run server (runbooks/gvisor-decision.md §4.2-4.3).

Installed as /usr/local/lib/inkmcp/inkmcp-runtime (and reached as /usr/local/sbin/runc, which shadows the
real runc on containerd's PATH). The rules live in inkmcp_selector.py next to it, loaded from the bytecode
install.sh compiles: Python compiles the file it runs on every start, and compiling the whole selector cost
more than its decision (benchmarks/selector_cost.py). -I: no environment, no user site, no cwd on sys.path;
only this file's own (root-owned) directory is added.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from inkmcp_selector import main  # importable through the path added above

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
