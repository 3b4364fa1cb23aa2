"""Runs `inkmcp …` command lines inside the test's client network namespace without paying the CLI's start-up
(3-4 s on a loaded CI box) per call: one long-lived process reads a JSON request per line (argv, environment),
invokes the real typer app (`inkmcp.cli.app`) with that environment, answers with exit code, stdout and stderr.
The commands' own children (rsync, ssh, pg_restore, psql) are real processes, as with the installed entry point."""

from __future__ import annotations

import json
import os
import sys
import traceback

from typer.testing import CliRunner

from inkmcp.cli import app


def main() -> None:
    runner = CliRunner()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        env: dict[str, str | None] = {k: None for k in os.environ if k not in req["env"]}
        env.update(req["env"])
        r = runner.invoke(app, req["args"], env=env, catch_exceptions=True)
        crash = None
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            crash = "".join(traceback.format_exception(r.exception))
        print(json.dumps({"code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr + (crash or "")}), flush=True)


if __name__ == "__main__":
    main()
