"""Build speed: InkMCP's Python builds (uv, per-project cache) against piku's `virtualenv` + `pip install`.

Issue 12 item 3 asks that the first deploy of a Flask + gunicorn app take at most piku's time, measured
against a comparable `virtualenv` + `pip install` baseline in the same run. A figure from another run is
meaningless on a busy 2-core machine, so every variant is measured once per round, the order rotating
round by round, and the table shows p50s and ratios from this one run.

Two levels, the same requirements (`Flask`, `gunicorn`) everywhere:

build only (environment created and filled; InkMCP's buildpack as root, no tenant user)
  inkmcp/uv cold    `run_build` with an empty download cache (a project's first build)
  inkmcp/uv warm    `run_build` into a new venv with the cache of earlier builds (a project's 2nd service)
  virtualenv+pip    `virtualenv` + `pip install -r`, empty pip cache (piku's first deploy of an app)
     ... warm       the same with a pip cache of earlier runs (piku with other apps on the machine)
  venv+pip (old)    `python3 -m venv` + `pip install -r`, empty cache: InkMCP's builds before uv

first deploy → first 200 (whole path)
  inkmcp deploy     `deploy_app` of a new project on a real `inkmcp serve` as root (tenant user, cgroup,
                    sandbox, git, build, gunicorn start, health check, proxy) until the proxy answers 200;
                    a first deploy goes live once gunicorn answers and has been up INKMCP_FIRST_DEPLOY_SETTLE
                    (1 s), not the 3 s stability window that protects a serving previous version
  inkmcp 2nd svc    a second service of that project (new venv, warm project cache)
  virtualenv+pip+gunicorn   the baseline's environment + install, then gunicorn until it answers 200
                    (cold and warm pip cache); piku also receives a git push, which this leaves out

`virtualenv` is installed from PyPI into a scratch tool venv first (not timed). All traffic to the apps
stays on loopback; the installers reach PyPI. Must run as root (the whole-path deploys make tenant users).

    .venv/bin/python benchmarks/build_speed.py                # 5 rounds
    .venv/bin/python benchmarks/build_speed.py --rounds 3 --only build
    .venv/bin/python benchmarks/build_speed.py --rounds 3 --only deploy --steps   # + where each deploy's time goes
    .venv/bin/python benchmarks/build_speed.py --rounds 3 --only deploy --settle 3   # first deploys wait the window
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run_all import first_200, pct, until_done
from inkmcp.build.buildpack import find_uv, run_build
from inkmcp.build.plan import BuildPlan, Stack
from tests.support import (
    call,
    free_port,
    git_repo,
    make_server,
    mcp_session,
    product_window,
    remove_tenant_users,
    traversable_tmpdir,
)

PYTHON = "/usr/bin/python3"
REQUIREMENTS = "Flask\ngunicorn\n"
APP = {
    "app.py": "from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.get('/')\ndef index():\n    return 'ok'\n",
    "requirements.txt": REQUIREMENTS,
}
GUNICORN = "gunicorn app:app --bind 127.0.0.1:{port}"

BUILD = {
    "inkmcp/uv cold": "build: inkmcp (uv venv + uv pip), empty project cache",
    "inkmcp/uv warm": "build: inkmcp (uv), new venv, warm project cache",
    "virtualenv+pip cold": "build: virtualenv + pip install, empty pip cache (piku)",
    "virtualenv+pip warm": "build: virtualenv + pip install, warm pip cache (piku)",
    "venv+pip cold": "build: python3 -m venv + pip install, empty cache (InkMCP before)",
}
DEPLOY = {
    "inkmcp deploy": "first deploy → first 200: inkmcp, new project (cold cache)",
    "inkmcp 2nd svc": "deploy → first 200: inkmcp, 2nd service of the project (warm cache)",
    "baseline cold": "virtualenv + pip install + gunicorn → first 200, empty pip cache",
    "baseline warm": "virtualenv + pip install + gunicorn → first 200, warm pip cache",
}
RATIOS = [  # (candidate, baseline)
    ("inkmcp/uv cold", "virtualenv+pip cold"),
    ("inkmcp/uv warm", "virtualenv+pip warm"),
    ("inkmcp/uv cold", "venv+pip cold"),
    ("inkmcp deploy", "baseline cold"),
    ("inkmcp 2nd svc", "baseline warm"),
]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.n = 0
        self.tools = work / "tools"
        self.virtualenv = self.tools / "bin" / "virtualenv"
        self.pip_warm = work / "pip-warm"
        self.uv_warm = work / "uv-warm"
        # virtualenv's seed wheels live in its app-data dir: warm, as on a piku host after its first app.
        self.env = {**os.environ, "VIRTUALENV_OVERRIDE_APP_DATA": str(work / "virtualenv-app-data"),
                    "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_PROGRESS_BAR": "off"}  # fmt: skip

    def fresh(self, name: str) -> Path:
        self.n += 1
        d = self.work / f"{self.n:03d}-{name.replace('/', '_').replace(' ', '_').replace('+', '_')}"
        d.mkdir()
        return d

    def sh(self, argv: list[str], cwd: Path, **env: str) -> None:
        done = subprocess.run(argv, cwd=cwd, env={**self.env, **env}, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")

    def setup(self) -> None:
        uv = str(find_uv())
        self.sh([uv, "venv", "-q", "--python", PYTHON, str(self.tools)], self.work)
        self.sh([uv, "pip", "install", "-q", "--python", str(self.tools / "bin" / "python"), "virtualenv"], self.work)

    def app(self, d: Path) -> Path:
        app = d / "app"
        app.mkdir()
        for name, text in APP.items():
            (app / name).write_text(text)
        return app

    # -- build level ----------------------------------------------------------------------------

    async def inkmcp_build(self, cache: Path | None) -> float:
        d = self.fresh("uv")
        app = self.app(d)
        cache = cache or d / "cache"

        async def log(_line: str) -> None:
            pass

        t0 = time.monotonic()
        out = await run_build(BuildPlan(stack=Stack.python, source="call"), app, venv_root=d / "venvs", env={},
                              log=log, run_as=None, timeout=600, python=PYTHON, cache_dir=cache)  # fmt: skip
        took = time.monotonic() - t0
        self.sh([f"{out.venv_dir}/bin/python", "-c", "import flask, gunicorn"], d)
        return took

    def pip_build(self, d: Path, *, tool: str, pip_cache: Path) -> Path:
        app = self.app(d)
        env = d / "env"
        if tool == "virtualenv":
            self.sh([str(self.virtualenv), "-q", "--python", PYTHON, str(env)], d)
        else:
            self.sh([PYTHON, "-m", "venv", str(env)], d)
        pip = [str(env / "bin" / "pip"), "install", "-q", "-r", "requirements.txt"]
        self.sh(pip, app, PIP_CACHE_DIR=str(pip_cache))
        return env

    async def baseline_build(self, tool: str, warm: bool) -> float:
        d = self.fresh(f"{tool}-{'warm' if warm else 'cold'}")
        t0 = time.monotonic()
        await asyncio.to_thread(self.pip_build, d, tool=tool, pip_cache=self.pip_warm if warm else d / "pip-cache")
        return time.monotonic() - t0

    # -- whole path -----------------------------------------------------------------------------

    async def baseline_deploy(self, warm: bool) -> float:
        d = self.fresh(f"deploy-{'warm' if warm else 'cold'}")
        t0 = time.monotonic()
        cache = self.pip_warm if warm else d / "pip-cache"
        env = await asyncio.to_thread(self.pip_build, d, tool="virtualenv", pip_cache=cache)
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            str(env / "bin" / "gunicorn"), *GUNICORN.format(port=port).split()[1:], cwd=d / "app", env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"http://127.0.0.1:{port}/")).status_code == 200:
                            return time.monotonic() - t0
                    await asyncio.sleep(0.01)
            raise TimeoutError("gunicorn never answered")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)


async def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        say("build_speed: run as root (the whole-path deploys create tenant users)")
        return 2
    work = traversable_tmpdir("inkmcp-buildspeed-")
    bench = Bench(work)
    server = None
    results: dict[str, list[float]] = {}
    try:
        say("setup: virtualenv into a tool venv; warming the warm caches")
        bench.setup()
        await bench.baseline_build("virtualenv", warm=True)  # fills pip-warm
        await bench.inkmcp_build(bench.uv_warm)  # fills uv-warm
        variants: dict[str, Callable[[int], Awaitable[float]]] = {}
        if args.only in ("all", "build"):
            variants |= {
                "inkmcp/uv cold": lambda r: bench.inkmcp_build(None),
                "inkmcp/uv warm": lambda r: bench.inkmcp_build(bench.uv_warm),
                "virtualenv+pip cold": lambda r: bench.baseline_build("virtualenv", warm=False),
                "virtualenv+pip warm": lambda r: bench.baseline_build("virtualenv", warm=True),
                "venv+pip cold": lambda r: bench.baseline_build("venv", warm=False),
            }
        if args.only in ("all", "deploy"):
            settle = {"INKMCP_FIRST_DEPLOY_SETTLE": str(args.settle)} if args.settle is not None else {}
            server = make_server("inkmcp-buildspeed-srv-", INKMCP_HEALTH_TIMEOUT="120", **product_window(), **settle)
            server.create_key("bench")
            server.start()
            repo = git_repo(work / "repos" / "flaskapp", APP)
            session_cm = mcp_session(server, server.keys["bench"])
            session = await session_cm.__aenter__()
            client = httpx.AsyncClient(timeout=10)

            async def deploy(r: int, service: str) -> float:
                t0 = time.monotonic()
                seen: list[tuple[float, str]] = []

                async def on_progress(_p: float, _total: float | None, message: str | None) -> None:
                    if message:
                        seen.append((time.monotonic() - t0, message))

                result = await session.call_tool(
                    "deploy_app", {"repo_url": str(repo), "project_name": f"flask-{r}", "service_name": service},
                    progress_callback=on_progress if args.steps else None,
                )  # fmt: skip
                assert not result.is_error, result.content
                dep = await until_done(session, result.structured_content or json.loads(result.content[0].text))
                done = time.monotonic() - t0
                took = await first_200(client, server, dep["url"], t0 + 600) - t0
                if args.steps:  # where the time went: each progress message as it arrived, then "live" and 200
                    for at, message in seen:
                        say(f"    {at:6.2f} s  {message[:110]}")
                    say(f"    {done:6.2f} s  (deploy_app answered: {dep['status']})\n    {took:6.2f} s  (first 200)")
                return took

            variants |= {
                "inkmcp deploy": lambda r: deploy(r, "web"),
                "baseline cold": lambda r: bench.baseline_deploy(warm=False),
                "inkmcp 2nd svc": lambda r: deploy(r, "second"),  # after "inkmcp deploy" in every order below
                "baseline warm": lambda r: bench.baseline_deploy(warm=True),
            }
        names = list(variants)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            if "inkmcp 2nd svc" in order:  # needs its project: keep it right after the project's first deploy
                order.remove("inkmcp 2nd svc")
                order.insert(order.index("inkmcp deploy") + 1, "inkmcp 2nd svc")
            for name in order:
                took = await variants[name](r)
                results.setdefault(name, []).append(took)
                say(f"round {r + 1}/{args.rounds}: {name}: {took:.2f} s")
            if server is not None:
                with contextlib.suppress(Exception):
                    await call(session, "delete", project_name=f"flask-{r}", confirm=f"flask-{r}")
        if server is not None:
            await client.aclose()
            await session_cm.__aexit__(None, None, None)
    finally:
        if server is not None and server.proc is not None:
            server.stop()
            remove_tenant_users(server.data_dir)
            shutil.rmtree(server.data_dir.parent, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(results, args.rounds)
    if args.json:  # p50 per variant, for benchmarks/summary.py
        args.json.write_text(json.dumps({"rounds": args.rounds, "load_average": os.getloadavg(), "settle": args.settle,
                                         "p50_s": {k: statistics.median(v) for k, v in results.items()}}, indent=2))
    return 0


def print_table(results: dict[str, list[float]], rounds: int) -> None:
    load = os.getloadavg()
    print(f"\nbuild_speed: {rounds} rounds, interleaved; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    print("| variant | what | p50 s | p90 s | min s | max s |\n| --- | --- | --- | --- | --- | --- |")
    for name, what in {**BUILD, **DEPLOY}.items():
        if name in results:
            v = results[name]
            print(f"| {name} | {what} | {statistics.median(v):.2f} | {pct(v, 90):.2f} | {min(v):.2f} | {max(v):.2f} |")
    print("\n| candidate / baseline | p50 ratio |\n| --- | --- |")
    for cand, base in RATIOS:
        if cand in results and base in results:
            ratio = statistics.median(results[cand]) / statistics.median(results[base])
            print(f"| {cand} / {base} | {ratio:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="measurements per variant (default 5)")
    parser.add_argument("--only", choices=("all", "build", "deploy"), default="all")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (venvs, caches) for inspection")
    parser.add_argument("--json", type=Path, help="also write each variant's p50 to this file")
    parser.add_argument("--settle", type=float, help="INKMCP_FIRST_DEPLOY_SETTLE for the server (default: the "
                        "product's); 3 (= the window) reproduces first deploys before issue 12 item 3")
    parser.add_argument("--steps", action="store_true",
                        help="print each InkMCP deploy's progress messages with their time since the call")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
