"""An opt-in runner for the Coolify stand-in: it really runs what the stand-in deploys, for tests and local
development, so "the deployed app serves its page at the returned URL" can be checked over the Coolify provider
too. Off by default: without it the stand-in only models Coolify's API (nothing here is imported).

What it does, for each deployment the stand-in begins (`begin`, called from deployments.py `_begin`):

1. **Fetch**: the application's `git_repository` at `git_commit_sha`. Only repos named by the dev hook's URLs
   (`local_repo_url`: `https://local-repo.invalid/<base64 path>.git`; `.invalid` is a reserved TLD, so such a
   URL can never name a real repository) are fetched, with `git clone` from the local path; anything else
   fails the deployment (the stand-in has no network).
2. **Build**, as nixpacks would for the few stacks the e2e suite uses, on this machine: a Python venv (uv, with
   `requirements.txt` installed), `npm ci`/`npm install` when there is a package.json, the app's
   `install_command` instead when set, then `build_command`. The build of one commit is kept and reused (Coolify
   finds the image of a commit and skips the build, which is what an env-change redeploy relies on).
3. **Pre-deployment command** as Coolify runs it: in the *currently running* container (old code, old env),
   skipped on a first deployment (ApplicationDeploymentJob::run_pre_deployment_command).
4. **Start** the start command (or Procfile `web`, or a static file server for `is_static`/`static` apps serving
   `publish_directory`) with the application's runtime env vars and a `TMPDIR` of its own (a container's own
   /tmp: kept while that "container" lives, new for the next deployment's). Deviation: in Coolify every
   container has its own network namespace, here processes share the host's, so PORT is a free port the runner
   picks, and the health check's port (`health_check_port` / the exposed port, 80 for static) is that port.
5. **Health check**, as ApplicationDeploymentJob::health_check with the compose healthcheck of
   generate_healthcheck_commands: with `health_check_enabled`, wait `health_check_start_period` s, then up to
   `health_check_retries` attempts `health_check_interval` s apart, each an HTTP GET of
   `health_check_path` ("/" when it does not match Coolify's sanitising pattern) that counts when it answers
   below 400 (`curl -f`); healthy → the rolling update goes on; not healthy when the attempts run out →
   "New container is not healthy, rolling back to the old container.", the container's last output in the log
   (Coolify's `query_logs`), the deployment fails and the new process is stopped. Deviation: a process that
   exits is reported unhealthy at the next attempt (Docker would restart it and its status would not turn
   healthy before Coolify's attempts ran out: the same outcome, sooner). Without a health check Coolify counts
   the new container healthy once started (`isHealthcheckDisabled` → newVersionIsHealthy): the deployment
   finishes even if the process exits; the runner only waits, for tests' sake, up to `start_timeout` for a
   routed process's port (1 s for others) and marks an application whose process died `degraded:unhealthy`.
   `time_scale` multiplies every health-check duration (1.0 = Coolify's; tests use less). With a fixed
   container name (`is_consistent_container_name_enabled`, `custom_internal_name`) or host port mappings,
   Coolify does no rolling update: it stops the old container first and starts the new one without
   health_check() (rolling_update: "… rolling update is not supported."), and so does the runner.
6. **Switch** (`finish`, from `_finish`): a finished deployment's process takes the routes of the application's
   `fqdn` hosts and the old process is stopped; a failed one's process is stopped, the old keeps serving.

A reverse proxy (node_proxy.py: asyncio, raw TCP after the request head, so websockets pass) models the run
servers' Traefik: the docker provider routes the hosts of an application's `fqdn` to its live process, the file
provider serves the routers InkMCP wrote into a node's proxy dynamic directory, with Sablier starting a sleeping
on_demand application on request and stopping it after its session; 404 for an unknown host, 502 when nothing
answers. Tests reach a service by sending its URL's Host to the proxy port.

Processes run as the stand-in's own user, each in its own session; `stop_app` and `close` stop exactly the
process groups the runner started (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import httpx

from inkmcp.coolify.standin.deployments import no_rolling_update

LOCAL_REPO_HOST = "local-repo.invalid"
_HEALTH_PATH = re.compile(r"^[a-zA-Z0-9/\-_.~%,;]+$")  # ApplicationDeploymentJob::generate_healthcheck_commands
MAX_LOG_LINES = 5000
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def local_repo_url(path: str) -> str:
    """The https URL the Coolify provider gives Coolify for a local repository (development hook only)."""
    raw = path.removeprefix("file://")
    token = base64.urlsafe_b64encode(os.path.abspath(raw).encode()).decode().rstrip("=")
    return f"https://{LOCAL_REPO_HOST}/{token}.git"


def local_repo_path(url: str) -> Path | None:
    """The local path behind a `local_repo_url`, None for any other URL."""
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.hostname != LOCAL_REPO_HOST:
        return None
    token = parts.path.strip("/").removesuffix(".git")
    return Path(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StepFailed(Exception):
    def __init__(self, message: str, output: list[str]) -> None:
        super().__init__(message)
        self.output = output


@dataclass
class Proc:
    """One started "container": a process group the runner owns."""

    popen: subprocess.Popen[bytes]
    port: int
    workdir: Path
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        elif self.popen.returncode is not None:
            with contextlib.suppress(ProcessLookupError):  # a daemonised child left in our group
                os.killpg(self.popen.pid, signal.SIGKILL)


class AppRunner:
    """See the module docstring. `attach(standin)` wires it; `close()` stops everything it started."""

    def __init__(self, root: Path, *, proxy_port: int = 0, start_timeout: float = 10.0,
                 build_timeout: float = 600.0, time_scale: float = 1.0) -> None:  # fmt: skip
        self.root = Path(root)
        self.proxy_port = proxy_port
        self.start_timeout = start_timeout
        self.build_timeout = build_timeout
        self.time_scale = time_scale
        """Multiplies the health check's start period, interval and timeout (1.0 = as Coolify waits)."""
        self.routes: dict[str, int] = {}
        """Host (lowercase, no port) -> the port of the live process serving it."""
        self.live: dict[str, Proc] = {}
        """application uuid -> its running process."""
        self.pending: dict[str, Proc] = {}
        """deployment uuid -> the process it started, until the deployment finishes or fails."""
        self._threads: list[threading.Thread] = []
        self._building: set[subprocess.Popen[bytes]] = set()
        """Build steps running now: `close` stops them (a build may wait on a test's gate)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxy_thread: threading.Thread | None = None
        self._standin: Any = None
        self._closing = False
        # --- ghkeys (issue 11)
        self.ssh_clone: Any = None
        """Coolify's clone of a deploy-key application (`git@HOST:OWNER/REPO.git` with the application's private
        key, GIT_SSH_COMMAND -i): a callable (url, private key) -> the local path of the repository that key may
        read, or None when the SSH server would refuse the key ("Permission denied (publickey)"). Tests give the
        GitHub stand-in's check; None (the default) fails such deployments, the stand-in has no network."""
        # --- end

    # -- lifecycle ------------------------------------------------------------------------------------

    def attach(self, standin: Any) -> AppRunner:
        """Make `standin` run what it deploys (the hooks in deployments.py call back here), start the proxy."""
        self._standin = standin
        standin.runner = self
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_proxy()
        return self

    def close(self) -> None:
        self._closing = True
        for popen in list(self._building):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
        for t in list(self._threads):
            t.join(timeout=30)
        for proc in [*self.pending.values(), *self.live.values()]:
            proc.stop()
        self.pending.clear()
        self.live.clear()
        self.routes.clear()
        if self._loop is not None and self._proxy_thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._proxy_thread.join(timeout=10)
        self._loop = self._proxy_thread = None

    # -- hooks (called by the stand-in under its lock) --------------------------------------------------

    def begin(self, dep: Any, app: Any) -> None:
        """Take over the deployment's clock: it stays in_progress until the work thread says how it ended."""
        dep.duration = float("inf")
        config = {"fields": dict(app.fields), "settings": dict(app.settings),
                  "env": {e.key: e.value or "" for e in app.envs if not e.is_preview},
                  "old": self.live.get(app.uuid)}
        t = threading.Thread(target=self._work, args=(dep, app.uuid, config), daemon=True,
                             name=f"standin-runner-{dep.deployment_uuid[:8]}")
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def finish(self, dep: Any, app: Any) -> None:
        proc = self.pending.pop(dep.deployment_uuid, None)
        if proc is None:
            return
        if dep.status != "finished" or app is None:
            proc.stop()
            return
        old = self.live.get(app.uuid)
        self.live[app.uuid] = proc
        if not proc.alive():  # no health check held it back: Coolify went on, the container crash-loops
            app.status_plan = [(time.monotonic(), "degraded:unhealthy")]
        self._route(app, proc.port, old.port if old is not None else None)
        if app.container is not None:
            proc.lines[:0] = app.container.logs
            app.container.logs = proc.lines  # GET /applications/{uuid}/logs reads what the process prints
        if old is not None and old is not proc:
            threading.Thread(target=old.stop, daemon=True).start()

    def stop_app(self, app_uuid: str) -> None:
        proc = self.live.pop(app_uuid, None)
        self.routes = {h: p for h, p in self.routes.items() if proc is None or p != proc.port}
        if proc is not None:
            threading.Thread(target=proc.stop, daemon=True).start()

    def _route(self, app: Any, port: int, old_port: int | None) -> None:
        """The application's hosts now go to `port` (Traefik's docker provider, node_proxy.docker_route)."""
        from inkmcp.coolify.standin.node_proxy import docker_route

        docker_route(self, app, port, old_port)

    # -- the work of one deployment (its own thread) ------------------------------------------------------

    def _work(self, dep: Any, app_uuid: str, config: dict[str, Any]) -> None:
        lines: list[str] = []
        errors: list[str] = []
        failure: str | None = None
        proc: Proc | None = None
        try:
            workdir = self._build(app_uuid, dep.commit, config, lines, restart_only=bool(dep.restart_only))
            self._pre_deployment(config, lines)
            proc = self._start(workdir, config, lines, dep.deployment_uuid)
        except StepFailed as e:
            failure = str(e)
            errors = e.output[-100:]  # Coolify logs a failed step's output (and query_logs) as stderr
        except Exception as e:  # a bug here must fail the deployment, not hang it
            failure = f"stand-in runner error: {e!r}"
        standin = self._standin
        with standin._lock:
            for line in lines[-200:]:
                standin._log(dep, line)
            for line in errors:
                standin._log(dep, line, "stderr")
            if proc is not None:
                if dep.status == "in_progress" and not self._closing:
                    self.pending[dep.deployment_uuid] = proc
                else:
                    proc.stop(0.5)
            dep.fail_with = dep.fail_with or failure
            if dep.started_at is not None:
                dep.duration = max(0.0, time.monotonic() - dep.started_at)

    def _run(self, argv: list[str], cwd: Path, env: dict[str, str], what: str, lines: list[str]) -> None:
        lines.append(f"$ {what}")
        if self._closing:
            raise StepFailed("the runner is shutting down", [])
        popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self._building.add(popen)
        try:
            stdout, _ = popen.communicate(timeout=self.build_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.communicate()
            raise StepFailed(f"{what} timed out after {self.build_timeout:g} s", lines) from None
        finally:
            self._building.discard(popen)
        out = stdout.decode(errors="replace").splitlines()
        lines += out[-100:]
        if popen.returncode != 0:
            raise StepFailed(f"Building docker image failed: {what} exited with code {popen.returncode}", out[-20:])

    def _base_env(self, extra: dict[str, str], venv: Path | None) -> dict[str, str]:
        path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        env = {"PATH": f"{venv / 'bin'}:{path}" if venv else path, "HOME": str(self.root),
               "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "CI": "1", "npm_config_update_notifier": "false",
               "npm_config_fund": "false", "npm_config_audit": "false",
               # installers trust the machine's CA store (as InkMCP's own buildpack does: a TLS-inspecting proxy)
               "UV_SYSTEM_CERTS": "1"}
        if os.path.isfile(CA_BUNDLE):
            env["NODE_EXTRA_CA_CERTS"] = CA_BUNDLE
        if venv is not None:
            env["VIRTUAL_ENV"] = str(venv)
        return {**env, **extra}

    def _build(self, app_uuid: str, commit: str, config: dict[str, Any], lines: list[str], *,
               restart_only: bool) -> Path:  # fmt: skip
        fields = config["fields"]
        recipe = "\n".join(str(fields.get(k) or "") for k in ("git_repository", "base_directory", "install_command",
                                                                "build_command", "build_pack"))
        key = hashlib.sha256(f"{commit}\n{recipe}".encode()).hexdigest()[:16]
        src = self.root / "apps" / app_uuid / key
        workdir = src / str(fields.get("base_directory") or "/").strip("/")
        if (src / ".inkmcp-built").exists():
            lines.append(f"Found a built image of commit {commit}; skipping the build.")
            return workdir
        if restart_only:
            raise StepFailed("No image of this commit to restart from.", lines)
        repo = local_repo_path(str(fields.get("git_repository") or ""))
        if repo is None and str(fields.get("git_repository") or "").startswith("git@"):  # --- ghkeys (issue 11)
            repo = self._deploy_key_repo(fields, lines)
        if repo is None:
            raise StepFailed(f"the stand-in's runner fetches only local repositories named by the dev hook "
                             f"(https://{LOCAL_REPO_HOST}/…), not {fields.get('git_repository')!r}", lines)
        shutil.rmtree(src, ignore_errors=True)
        src.parent.mkdir(parents=True, exist_ok=True)
        git = self._base_env({"GIT_TERMINAL_PROMPT": "0"}, None)
        self._run(["git", "-c", "safe.directory=*", "clone", "-q", "--no-checkout", str(repo), str(src)],
                  self.root, git, f"git clone {repo}", lines)
        self._run(["git", "-c", "safe.directory=*", "-C", str(src), "checkout", "-q", commit], self.root, git,
                  f"git checkout {commit}", lines)
        if not workdir.is_dir():
            raise StepFailed(f"base_directory {fields.get('base_directory')!r} is not in the repository", lines)
        venv = workdir / ".venv"
        env = self._base_env(config["env"], venv)
        uv = str(Path(sys.executable).with_name("uv"))
        uv_env = {**env, "UV_CACHE_DIR": str(self.root / "cache" / "uv")}
        static_pack = fields.get("build_pack") == "static"
        if not static_pack:
            self._run([uv, "venv", "-q", "--python", sys.executable, str(venv)], workdir, uv_env, "uv venv", lines)
        if fields.get("install_command"):
            self._run(["sh", "-c", str(fields["install_command"])], workdir, env, "install command", lines)
        elif not static_pack:
            if (workdir / "requirements.txt").exists():
                self._run([uv, "pip", "install", "--python", str(venv / "bin" / "python"), "-r", "requirements.txt"],
                          workdir, uv_env, "pip install -r requirements.txt", lines)
            if (workdir / "package.json").exists():
                npm = ["npm", "ci"] if (workdir / "package-lock.json").exists() else ["npm", "install"]
                self._run(npm, workdir, {**env, "npm_config_cache": str(self.root / "cache" / "npm")},
                          " ".join(npm), lines)
        if fields.get("build_command"):
            self._run(["sh", "-c", str(fields["build_command"])], workdir, env, "build command", lines)
        (src / ".inkmcp-built").touch()
        lines.append("Building docker image completed.")
        return workdir

    # --- ghkeys (issue 11)
    def _deploy_key_repo(self, fields: dict[str, Any], lines: list[str]) -> Path:
        """The repository a deploy-key application's key reads (`ssh_clone`), as Coolify clones it."""
        url = str(fields["git_repository"])
        with self._standin._lock:
            record = next((r for r in self._standin._key_records().values()
                           if r["id"] == fields.get("private_key_id")), None)
        lines.append(f"Importing {url} (commit sha {fields.get('git_commit_sha')}) to /artifacts with a deploy key.")
        if record is None or self.ssh_clone is None:
            raise StepFailed(f"git@: Permission denied (publickey). fatal: Could not read from remote repository "
                             f"{url}", lines)
        path = self.ssh_clone(url, record["private_key"])
        if path is None:
            raise StepFailed(f"git@: Permission denied (publickey). fatal: Could not read from remote repository "
                             f"{url}", lines)
        return Path(path)
    # --- end

    def _pre_deployment(self, config: dict[str, Any], lines: list[str]) -> None:
        command = config["fields"].get("pre_deployment_command")
        if not command:
            return
        old: Proc | None = config["old"]
        if old is None or not old.alive():  # Coolify runs it in the running container, none on a first deploy
            lines.append("Pre-deployment command skipped: no running container to execute it in.")
            return
        try:
            self._run(["sh", "-c", str(command)], old.workdir, old.env, "pre-deployment command", lines)
        except StepFailed as e:
            raise StepFailed(f"Pre-deployment command failed: {e}", e.output) from None

    def _command(self, workdir: Path, config: dict[str, Any], port: int) -> str:
        fields, settings = config["fields"], config["settings"]
        if fields.get("build_pack") == "static" or settings.get("is_static"):
            directory = workdir / str(fields.get("publish_directory") or "/").strip("/")
            return f"exec python -m http.server --bind 127.0.0.1 {port} --directory '{directory}'"
        if fields.get("start_command"):
            return str(fields["start_command"])
        procfile = workdir / "Procfile"
        if procfile.exists():
            for line in procfile.read_text().splitlines():
                if line.startswith("web:"):
                    return line[4:].strip()
        for name in ("main.py", "app.py"):
            if (workdir / name).exists():
                return f"python {name}"
        raise StepFailed("nixpacks: no start command could be found", [])

    def _start(self, workdir: Path, config: dict[str, Any], lines: list[str], deployment_uuid: str) -> Proc:
        old: Proc | None = config["old"]
        if old is not None and no_rolling_update(SimpleNamespace(fields=config["fields"],
                                                                  settings=config["settings"])):
            old.stop()  # stop_running_container(force: true) before start_by_compose_file
        port = _free_port()
        tmp = self.root / "containers" / deployment_uuid / "tmp"  # this container's own /tmp
        tmp.mkdir(parents=True, exist_ok=True)
        env = self._base_env({**config["env"], "PORT": str(port), "TMPDIR": str(tmp)}, workdir / ".venv")
        command = self._command(workdir, config, port)
        lines.append("----------------------------------------")
        lines.append("Rolling update started.")
        popen = subprocess.Popen(["sh", "-c", command], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(popen, port, workdir, env)
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()
        fields = config["fields"]
        if no_rolling_update(SimpleNamespace(fields=fields, settings=config["settings"])):
            # the old container was stopped before this one started, and no health check gates it
            lines.insert(-1, "Consistent container name feature enabled, rolling update is not supported.")
        elif fields.get("health_check_enabled") in (True, 1, "1", "true"):
            try:
                self._health_check(proc, config, lines)
            except StepFailed:
                proc.stop(1.0)  # graceful_shutdown_container of the new one; the old keeps serving
                raise
            return proc
        routed = bool(fields.get("fqdn"))
        deadline = time.monotonic() + (self.start_timeout if routed else 1.0)
        while time.monotonic() < deadline and proc.alive():  # a test convenience only: Coolify does not wait
            if routed and _listening(port):
                break
            time.sleep(0.05)
        return proc

    def _health_check(self, proc: Proc, config: dict[str, Any], lines: list[str]) -> None:
        """ApplicationDeploymentJob::health_check over generate_healthcheck_commands (module docstring, 5)."""
        fields, settings = config["fields"], config["settings"]

        def seconds(key: str, default: int) -> float:
            raw = fields.get(key)
            return float(raw) if isinstance(raw, int | float) or str(raw or "").isdigit() else float(default)

        path = str(fields.get("health_check_path") or "")
        path = path if _HEALTH_PATH.match(path) else "/"
        exposed = str(fields.get("health_check_port") or str(fields.get("ports_exposes") or "").split(",")[0])
        if settings.get("is_static") or fields.get("build_pack") == "static":
            exposed = "80"
        start, interval = seconds("health_check_start_period", 5), seconds("health_check_interval", 5)
        timeout, retries = seconds("health_check_timeout", 5), int(seconds("health_check_retries", 10))
        lines.append("Waiting for healthcheck to pass on the new container.")
        lines.append(f"Healthcheck URL (inside the container): GET: http://localhost:{exposed}{path}")
        lines.append(f"Waiting for the start period ({start:g} seconds) before starting healthcheck.")
        self._pause(start * self.time_scale)
        status = "starting"
        for attempt in range(1, max(retries, 1) + 1):
            if not proc.alive():
                status = "unhealthy"
            else:
                try:
                    answer = httpx.get(f"http://127.0.0.1:{proc.port}{path}", headers={"Host": "localhost"},
                                       timeout=max(timeout * self.time_scale, 0.5))
                    status = "healthy" if answer.status_code < 400 else "starting"
                except httpx.HTTPError:
                    status = "starting"
            lines.append(f'Attempt {attempt} of {retries} | Healthcheck status: "{status}"')
            if status == "healthy":
                lines.append("New container is healthy.")
                return
            if status == "unhealthy":
                lines.append("New container is unhealthy.")
                break
            if attempt < retries:
                self._pause(interval * self.time_scale)
        output = ["----------------------------------------", "Container logs:", *proc.lines[-100:],
                  "----------------------------------------"]  # query_logs: docker logs -n 100
        if not proc.alive():
            output.append(f"(the container exited with code {proc.popen.returncode})")
        raise StepFailed("New container is not healthy, rolling back to the old container.", output)

    def _pause(self, seconds: float) -> None:
        """Coolify's Sleep::for between attempts (cut short when the runner closes)."""
        deadline = time.monotonic() + seconds
        while not self._closing and time.monotonic() < deadline:
            time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))

    @staticmethod
    def _pump(proc: Proc) -> None:
        assert proc.popen.stdout is not None
        for raw in proc.popen.stdout:
            proc.lines.append(raw.decode(errors="replace").rstrip("\n"))
            if len(proc.lines) > MAX_LOG_LINES:
                del proc.lines[: len(proc.lines) - MAX_LOG_LINES]

    # -- the proxy: node_proxy.py models Traefik (docker + file providers) and Sablier on a Coolify node ----------

    def _start_proxy(self) -> None:
        from inkmcp.coolify.standin.node_proxy import NodeProxy

        self.node_proxy = NodeProxy(self, port=self.proxy_port).start()
        self.proxy_port = self.node_proxy.port
        self._loop, self._proxy_thread = self.node_proxy.loop, self.node_proxy.thread  # close() stops them


def _listening(port: int) -> bool:
    from inkmcp.coolify.standin.node_proxy import listening

    return listening(port)
