"""The issue 9 corpus: real public sample apps, deployed with one deploy_app call each.

Shared by tests/corpus/test_corpus.py (offered apps, asserts each goes live and serves its page) and
benchmarks/corpus.py (every app, a table of results and times). The manifest is tests/corpus/apps.toml;
the apps' code is in one-commit git bundles outside our commits (see the manifest's header for why and
where): `find_bundle()` finds them, `clone_app()` turns one into the plain git repo a user would point
deploy_app at, after checking it holds exactly the upstream tree the manifest records.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from mcp import ClientSession
from pydantic import BaseModel, ConfigDict, Field

from tests.support import ServerProc, ToolFailed, call, share_repo

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "apps.toml"
BUNDLES_ENV = "INKMCP_CORPUS_BUNDLES"
# Where the bundles are looked for, first match wins: $INKMCP_CORPUS_BUNDLES, this checkout's (gitignored)
# tests/corpus/bundles, and the machine's copy that a fresh clone (CI's) finds on the machine they were made on.
DEFAULT_BUNDLES = (HERE / "bundles", Path("/var/lib/inkmcp-corpus/bundles"))

# How long one app may take from deploy_app to a terminal status: cold builds of Next.js/CRA/NestJS on 2 shared
# cores with installs from the registries take minutes, not seconds.
DEPLOY_DEADLINE_S = 900.0
# After "live", how long the page (or the worker's log line) may take to show: an on_demand service wakes first.
PAGE_DEADLINE_S = 60.0


class PostForm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    form: dict[str, str]


class App(BaseModel):
    """One [[app]] of apps.toml (validated: a typo in the manifest is an error, not a silently ignored key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    bundle: str
    upstream: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    tree: str = Field(pattern=r"^[0-9a-f]{40}$")
    license: str
    stack: str
    args: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None
    body: str | None = None
    log: str | None = None
    # a form to POST after the page showed, before `log` must show (a web + worker app: the worker's line proves
    # the job went through the queue)
    post: PostForm | None = None
    needs: list[str]
    offered: bool
    why: str | None = None
    # the one more call an agent would make after reading the tool's error (benchmarks/corpus.py tries it):
    # arguments merged over `args`
    retry: dict[str, Any] = Field(default_factory=dict)

    def deploy_args(self, repo: Path, apps_domain: str, *, retry: bool = False) -> dict[str, Any]:
        """What the user passes: the repo plus the manifest's natural arguments ("{apps_domain}" filled in);
        with `retry`, the arguments of the one more call the tool's error led to."""

        def fill(v: Any) -> Any:
            if isinstance(v, str):
                return v.replace("{apps_domain}", "." + apps_domain)
            if isinstance(v, dict):
                return {k: fill(x) for k, x in v.items()}
            return v

        args = {"repo_url": str(repo), **fill(self.args)}
        if retry:
            for k, v in fill(self.retry).items():
                args[k] = {**args[k], **v} if isinstance(v, dict) and isinstance(args.get(k), dict) else v
        return args


def load_apps() -> list[App]:
    apps = [App.model_validate(a) for a in tomllib.loads(MANIFEST.read_text())["app"]]
    names = [a.name for a in apps]
    assert len(set(names)) == len(names), f"duplicate app names in {MANIFEST.name}"
    for a in apps:
        assert (a.path is None) == (a.body is None), f"{a.name}: path and body go together"
        assert a.body is not None or a.log is not None, f"{a.name}: give path+body, log, or both"
        assert (a.body is not None and a.log is not None) == (a.post is not None), \
            f"{a.name}: body and log together need a post (what makes the log line appear)"
        assert a.offered or a.why, f"{a.name}: offered = false needs a why"
    return apps


def bundle_dirs() -> tuple[Path, ...]:
    if os.environ.get(BUNDLES_ENV):
        return (Path(os.environ[BUNDLES_ENV]),)
    return DEFAULT_BUNDLES


def find_bundle(app: App) -> Path:
    for d in bundle_dirs():
        if (d / app.bundle).is_file():
            return d / app.bundle
    raise FileNotFoundError(
        f"corpus bundle {app.bundle} not found in {', '.join(map(str, bundle_dirs()))}: the corpus apps' code is "
        f"kept out of the repository (tests/corpus/apps.toml header says why); put the bundles in one of those "
        f"directories or set {BUNDLES_ENV} to the directory holding them")


def clone_app(app: App, parent: Path) -> Path:
    """A non-bare clone of the app's bundle at `parent/<name>`, readable by project users; checks the tree."""
    bundle = find_bundle(app)
    repo = parent / app.name
    subprocess.run(["git", "clone", "-q", "-b", "main", str(bundle), str(repo)], check=True, capture_output=True)
    tree = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD^{tree}"], check=True, capture_output=True,
                          text=True).stdout.strip()
    if tree != app.tree:
        raise AssertionError(f"{app.bundle} holds tree {tree}, the manifest records {app.tree} (upstream "
                             f"{app.upstream} at {app.commit}): rebuild the bundle from that commit")
    share_repo(repo)
    return repo


def apps_domain(server: ServerProc) -> str:
    return server.env.get("INKMCP_APPS_DOMAIN", "localhost")


def via_proxy(server: ServerProc, url: str, path: str) -> httpx.Response:
    """GET a deployed service: connect to the proxy on loopback, route by the Host of its URL."""
    host = urlsplit(url).netloc
    return httpx.get(f"http://127.0.0.1:{server.proxy_port}{path}", headers={"Host": host}, timeout=30)


@dataclass
class Outcome:
    """What one deploy_app call of one app came to, as the benchmark's table and the test's assertion need it."""

    app: str
    project: str | None = None  # the project InkMCP made (named after the repo), for the cleanup
    status: str = "not run"  # live | failed | superseded | tool error | timeout | page
    page_ok: bool = False
    cause: str | None = None  # a category: build, start, health, database, page, tool, timeout
    error: str | None = None
    next_step: str | None = None
    history: list[str] = field(default_factory=list)
    deploy_s: float | None = None
    redeploy_s: float | None = None
    redeploy_reused: bool | None = None
    detail: str | None = None  # what the page check saw
    log_tail: list[str] = field(default_factory=list)  # the last build/runtime log lines of a failure
    retry: Outcome | None = None  # the one more call (apps.toml `retry`), when the first did not work

    @property
    def ok(self) -> bool:
        return self.status == "live" and self.page_ok


STEP_CAUSE = {"queued": "queue", "provisioning": "database", "database": "database", "building": "build",
              "starting": "start", "health_check": "health", "switching": "switch"}


def cause_of(dep: dict[str, Any]) -> str:
    """The step a failed deployment stopped at (a category for the report): the history's last entry reads
    "failed: <step>: <detail>"; an error naming the database or Redis add-on is `database` whatever the step."""
    error = (dep.get("error") or "").lower()
    if "add-on" in error or "database" in error.split(":", 2)[0]:
        return "database"
    for entry in reversed(dep.get("history", [])):
        status, _, rest = entry.partition(": ")
        if status == "failed":
            return STEP_CAUSE.get(rest.partition(":")[0].strip(), "other")
    return STEP_CAUSE.get(error.partition(":")[0].strip(), "other")


async def deploy_until_done(s: ClientSession, args: dict[str, Any], deadline_s: float) -> dict[str, Any]:
    dep = await call(s, "deploy_app", **args)
    deadline = time.monotonic() + deadline_s
    while not dep["done"] and time.monotonic() < deadline:
        dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"],
                         timeout_seconds=min(40.0, max(1.0, deadline - time.monotonic())))
    return dep


async def check_page(server: ServerProc, s: ClientSession, app: App, dep: dict[str, Any]) -> tuple[bool, str]:
    """Poll (deadline) until the app serves its expected page, then (with `post`) posts the form, and until its
    log shows the expected line."""
    shown = ""
    if app.body is not None:
        ok, shown = await _poll(server, s, app, dep, page=True)
        if not ok or app.log is None:
            return ok, shown
    if app.post is not None:
        host = urlsplit(dep["url"]).netloc
        r = await asyncio.to_thread(httpx.post, f"http://127.0.0.1:{server.proxy_port}{app.post.path}",
                                    data=app.post.form, headers={"Host": host}, timeout=30)
        if r.status_code >= 400:
            return False, f"{shown}; POST {app.post.path}: {r.status_code} {r.text[:300]!r}"
        shown += f"; POST {app.post.path}: {r.status_code}"
    ok, logged = await _poll(server, s, app, dep, page=False)
    return ok, f"{shown}; {logged}".lstrip("; ")


async def _poll(server: ServerProc, s: ClientSession, app: App, dep: dict[str, Any], *,
                page: bool) -> tuple[bool, str]:
    deadline = time.monotonic() + PAGE_DEADLINE_S
    seen = ""
    while True:
        if not page:
            assert app.log is not None
            logs = await call(s, "get_logs", project_name=dep["project"], service_name=dep["service"],
                              scope="runtime", tail=200)
            lines = logs["lines"]
            if any(app.log in line for line in lines):
                return True, f"log shows {app.log!r}"
            seen = "log: " + " | ".join(lines[-5:])[-400:]
        elif not dep.get("url"):
            return False, "live without a URL (the expected page cannot be served)"
        else:
            assert app.path is not None and app.body is not None
            try:
                r = await asyncio.to_thread(via_proxy, server, dep["url"], app.path)
                if r.status_code == 200 and app.body in r.text:
                    return True, f"GET {app.path}: 200 with {app.body!r}"
                seen = f"GET {app.path}: {r.status_code} {r.text[:300]!r}"
            except httpx.HTTPError as e:
                seen = f"GET {app.path}: {type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            return False, seen
        await asyncio.sleep(0.5)


async def run_app(server: ServerProc, s: ClientSession, app: App, repo: Path, *, redeploy: bool = False,
                  deadline_s: float = DEPLOY_DEADLINE_S, retry: bool = False) -> Outcome:
    """One deploy_app call (then waits), the page check, and with `redeploy` the same call again (timed).

    With `retry`, when the call did not work and the manifest names the one more call its error leads to,
    that call is made too and its outcome kept in `.retry`.
    """
    out = await _run_once(server, s, app, repo, redeploy=redeploy, deadline_s=deadline_s, retry=False)
    if retry and not out.ok and app.retry:
        out.retry = await _run_once(server, s, app, repo, redeploy=False, deadline_s=deadline_s, retry=True)
    return out


async def _run_once(server: ServerProc, s: ClientSession, app: App, repo: Path, *, redeploy: bool,
                    deadline_s: float, retry: bool) -> Outcome:
    out = Outcome(app.name)
    args = app.deploy_args(repo, apps_domain(server), retry=retry)
    started = time.monotonic()
    try:
        dep = await deploy_until_done(s, args, deadline_s)
    except ToolFailed as e:
        out.status, out.cause, out.error = "tool error", "tool", str(e)
        out.deploy_s = time.monotonic() - started
        return out
    out.deploy_s = time.monotonic() - started
    out.project = dep.get("project")
    out.error, out.next_step, out.history = dep.get("error"), dep.get("next_step"), dep.get("history", [])
    if not dep["done"]:
        out.status, out.cause = "timeout", "timeout"
        return out
    out.status = dep["status"]
    if out.status != "live":
        out.cause = cause_of(dep)
        out.log_tail = await log_tail(s, dep)
        return out
    out.page_ok, out.detail = await check_page(server, s, app, dep)
    if not out.page_ok:
        out.cause = "page"
        out.log_tail = await log_tail(s, dep)
    if redeploy:
        again_started = time.monotonic()
        try:
            again = await deploy_until_done(s, args, deadline_s)
            out.redeploy_reused = bool(again.get("reused"))
        except ToolFailed as e:
            out.redeploy_reused = False
            out.detail = f"{out.detail}; redeploy: tool error {e}"
        out.redeploy_s = time.monotonic() - again_started
    return out


async def delete_project(s: ClientSession, project: str | None) -> None:
    """Delete an app's project and its database: the corpus has more apps than an account's default project limit,
    and each live app holds processes on a 2-core machine."""
    if project is None:
        return
    try:
        await call(s, "delete", project_name=project, confirm=project, delete_database=True)
    except ToolFailed as e:
        if "no project named" not in str(e):
            raise


async def log_tail(s: ClientSession, dep: dict[str, Any], n: int = 12) -> list[str]:
    """The last lines of the build and runtime logs of a deployment that did not work (for the report)."""
    lines: list[str] = []
    for scope in ("build", "runtime"):
        try:
            logs = await call(s, "get_logs", project_name=dep["project"], service_name=dep["service"], scope=scope,
                              tail=n)
        except ToolFailed as e:
            lines.append(f"[{scope}] get_logs failed: {e}")
            continue
        lines += [f"[{scope}] {line}" for line in logs["lines"]]
    return lines


def describe(out: Outcome) -> str:
    """A failure, as the test's assertion message and the status notes show it."""
    parts = [f"{out.app}: {out.status}"]
    if out.cause:
        parts.append(f"cause={out.cause}")
    if out.error:
        parts.append(f"error={out.error!r}")
    if out.next_step:
        parts.append(f"next_step={out.next_step!r}")
    if out.detail:
        parts.append(f"page={out.detail}")
    if out.history:
        parts.append("history=" + " / ".join(out.history[-6:]))
    if out.retry is not None:
        parts.append(f"one more call: {'live' if out.retry.ok else out.retry.status} "
                     f"({out.retry.error or out.retry.detail or ''})"[:400])
    text = "; ".join(parts)
    if out.log_tail:
        text += "\n  " + "\n  ".join(line[:300] for line in out.log_tail)
    return text
