"""`python -m inkmcp.providers.compute.local.wrapper_build [DIR]`: compile inkmcp-spawn (run by `make install`).

A module of its own so that `-m` does not re-execute `spawn`, which the package has already imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

from inkmcp.providers.compute.local.spawn import PACKAGE_BIN, build


def main() -> None:
    args = sys.argv[1:]
    if len(args) > 1 or (args and args[0].startswith("-")):
        sys.exit("usage: python -m inkmcp.providers.compute.local.wrapper_build [DIR]  (default: the package's _bin)")
    dest = Path(args[0]) if args else PACKAGE_BIN
    try:
        print(build(dest))
    except (OSError, RuntimeError) as exc:
        sys.exit(f"could not build inkmcp-spawn: {exc}")


if __name__ == "__main__":
    main()
