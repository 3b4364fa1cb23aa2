"""Deployments: the ApplicationDeploymentQueue, its clock, and DeployController.php at 379abb2.

Queueing is `queue_application_deployment` (bootstrap/helpers/applications.php:14-112), in its order:

1. queue full: `queued` rows of the server >= `settings.deployment_queue_limit` (default 25) -> status
   queue_full (only `queued` rows count, not `in_progress`: applications.php:33-37). `POST /deploy` answers 429
   "Deployment queue is full. Please wait for existing deployments to complete." with Retry-After: 60
   (DeployController.php:450); `/start` and `/restart` do not check and answer 200 with a deployment uuid
   that was never stored (NOTES.md §h).
2. same app + commit + PR already queued/in progress, and neither force nor no_questions_asked -> skipped
   ("Deployment already queued for this commit."). `POST /deploy` still reports the *new* uuid it generated
   (DeployController.php:539 assigns it before queueing and returns it): a uuid that GET /deployments/{uuid}
   answers 404 for. `/start` and `/restart` answer only the message.
3. a row `queued`; `in_progress` at once when `no_questions_asked` (instant deploy) or `next_queuable` (no
   in-progress deployment of the app, fewer than `concurrent_builds` in progress on the server).

The clock (`_advance`): an `in_progress` deployment ends `build_seconds` after it started (`restart_seconds`
for restart-only; `slow_builds` per app) as `finished`, or `failed` when a build fault is armed or the server is
unreachable, each with Coolify-shaped log entries; then the server's queue moves (queue_next_deployment). On
`finished`, the application's container is replaced (it starts with the env revision current at that moment)
and GetContainersStatus writes, `status_delay` later: `running:healthy` with a health check (which the
deployment already waited for: health_check() sets `running` when it passes), `running:unknown` without one
(`crash_on_start`: the health check fails the rolling update, or without one, or without a rolling update at all
(`no_rolling_update`), `running:unknown` then `degraded:unhealthy`). A failed deployment leaves the old container
and status.

Logs are stored as Coolify does: a JSON string of entries {command, output, type, timestamp, hidden, batch,
order} (order from the second entry on, ApplicationDeploymentQueue::addLogEntry:182-217), visible only with
can_read_sensitive (DeployController::removeSensitiveData:21-32).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inkmcp.coolify.standin.state import Application, Container, Database, Deployment, NodeServer, Token, new_uuid
from inkmcp.providers.compute.coolify import mapping

QUEUE_FULL = "Deployment queue is full. Please wait for existing deployments to complete."


def _bool(value: Any) -> bool:
    return value in (True, 1, "1", "true", "on", "yes")

def _runs_release(start_command: Any, env: dict[str, str]) -> bool:
    """The container's start command is InkMCP's release guard with INKMCP_RELEASE set (without the runner nothing
    runs: a successful release is modelled by the two lines the guard prints; a failing one is a test's fault)."""
    return bool(mapping.release_of(str(start_command or "")) and env.get(mapping.RELEASE_ENV))


def no_rolling_update(app: Any) -> bool:
    """ApplicationDeploymentJob::rolling_update's condition for stopping the old container first and starting the
    new one without health_check(): ports mapped to the host, a consistent container name, a custom internal
    name (pull requests and custom IPs too, which the stand-in does not model)."""
    settings = getattr(app, "settings", {}) or {}
    return bool(str(app.fields.get("ports_mappings") or "").strip()) or \
        bool(settings.get("is_consistent_container_name_enabled")) or bool(settings.get("custom_internal_name"))


PROBE_IMAGE = "inkmcp/probe"
"""The image `inkmcp doctor` deploys (hardening/probe): its container prints the kernel it runs on, which on the
stand-in is the server's `container_kernel` fact."""


class DeploymentsMixin:
    ROUTES_DEPLOYMENTS: list[tuple[str, str, str, str]] = [
        ("GET", r"/deploy", "deploy", "_deploy_get"),
        ("POST", r"/deploy", "deploy", "_deploy"),
        ("GET", r"/deployments", "read", "_list_deployments"),
        ("GET", r"/deployments/applications/(?P<uuid>[^/]+)", "read", "_app_deployments"),
        ("GET", r"/deployments/(?P<uuid>[^/]+)", "read", "_get_deployment"),
        ("POST", r"/deployments/(?P<uuid>[^/]+)/cancel", "deploy", "_cancel_deployment"),
    ]

    _lock: threading.RLock
    servers: dict[str, NodeServer]
    applications: dict[str, Application]
    databases: dict[str, Database]
    deployments: dict[str, Deployment]
    deleted_with: dict[str, dict[str, bool]]
    build_seconds: float
    restart_seconds: float
    status_delay: float
    app_build_seconds: dict[str, float]
    runner: Any = None
    """Opt-in (runner.py `AppRunner.attach`): really build and run what is deployed; None = API model only."""

    def _id(self) -> int:
        raise NotImplementedError

    def _take_build_fault(self, app_uuid: str) -> str | None:
        raise NotImplementedError

    def _take_crash_fault(self, app_uuid: str) -> str | None:
        raise NotImplementedError

    def _post_required(self) -> Response:
        raise NotImplementedError

    def _visible_app(self, token: Token, uuid: str) -> Application | None:
        raise NotImplementedError

    def _advance_databases(self, now: float) -> None:
        raise NotImplementedError

    # -- inspection for tests ---------------------------------------------------------------------------

    def deployment(self, deployment_uuid: str) -> Deployment:
        with self._lock:
            self._advance()
            return self.deployments[deployment_uuid]

    def deployments_of(self, app_uuid: str) -> list[Deployment]:
        with self._lock:
            self._advance()
            return [d for d in self.deployments.values() if d.application_uuid == app_uuid]

    def settle(self) -> None:
        """Apply every piece of queued work whose time has come (what any request does first)."""
        with self._lock:
            self._advance()

    # -- the queue --------------------------------------------------------------------------------------

    @staticmethod
    def _log(dep: Deployment, output: str, kind: str = "stdout", hidden: bool = False,
             command: str | None = None) -> None:
        entry: dict[str, Any] = {"command": command, "output": output, "type": kind,
                                 "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                                 "hidden": hidden, "batch": 1}
        if dep.log_entries:
            entry["order"] = len(dep.log_entries) + 1
        dep.log_entries.append(entry)

    def _queue_deployment(self, app: Application, *, force: bool = False, restart_only: bool = False,
                          no_questions_asked: bool = False) -> dict[str, Any]:
        server = self.servers[app.server_uuid]
        deployment_uuid = new_uuid()
        commit = app.fields.get("git_commit_sha") or "HEAD"
        limit = server.settings.get("deployment_queue_limit") or 25
        queued = sum(1 for d in self.deployments.values() if d.server_id == server.id and d.status == "queued")
        if queued >= limit:
            return {"status": "queue_full", "message": QUEUE_FULL, "deployment_uuid": deployment_uuid}
        existing = next((d for d in self.deployments.values() if d.application_id == app.id and d.commit == commit
                         and d.pull_request_id == 0 and d.status in ("queued", "in_progress")), None)
        if existing is not None and not force and not no_questions_asked:
            return {"status": "skipped", "message": "Deployment already queued for this commit.",
                    "deployment_uuid": existing.deployment_uuid}
        dep = Deployment(self._id(), deployment_uuid, app.id, app.uuid, str(app.fields.get("name")), server.id,
                         server.uuid, server.name, app.destination_id, commit, force, restart_only)
        self.deployments[deployment_uuid] = dep
        if no_questions_asked or self._next_queuable(dep):
            self._begin(dep)
        return {"status": "queued", "message": "Deployment queued.", "deployment_uuid": deployment_uuid}

    def _next_queuable(self, dep: Deployment) -> bool:
        """next_queuable (applications.php:141-166)."""
        if any(d.application_id == dep.application_id and d.status == "in_progress"
               for d in self.deployments.values()):
            return False
        server = self.servers.get(dep.server_uuid)
        builds = (server.settings.get("concurrent_builds") if server else None) or 2
        active = sum(1 for d in self.deployments.values() if d.server_id == dep.server_id
                     and d.status == "in_progress")
        return active < builds

    def _begin(self, dep: Deployment, at: float | None = None) -> None:
        dep.status = "in_progress"
        dep.started_at = time.monotonic() if at is None else at
        if dep.restart_only:
            dep.duration = self.restart_seconds
        else:
            dep.duration = self.app_build_seconds.get(dep.application_uuid, self.build_seconds)
        self._log(dep, f"Starting deployment of {dep.application_name} to {dep.server_name}.")
        app = self.applications.get(dep.application_uuid)
        if app is not None and not dep.restart_only:
            pack = app.fields.get("build_pack")
            if app.settings.get("is_build_server_enabled"):
                builder = next((s for s in self.servers.values() if s.settings.get("is_build_server")
                                and s.settings.get("is_reachable") and not s.unreachable), None)
                self._log(dep, f"Found a suitable build server ({builder.name})." if builder else
                          "No suitable build server found. Using the deployment server.")
            if app.fields.get("git_repository") and pack not in ("dockerimage", "dockerfile"):
                self._log(dep, f"Importing {app.fields['git_repository']}:{app.fields.get('git_branch')} "
                               f"(commit sha {dep.commit}) to /artifacts/{dep.deployment_uuid}.")
            self._log(dep, f"Building docker image started (build pack {pack}).")
            if app.fields.get("pre_deployment_command"):
                self._log(dep, "Executing pre-deployment command (see details below).")
                self._log(dep, str(app.fields["pre_deployment_command"]), hidden=True,
                          command=str(app.fields["pre_deployment_command"]))
        elif dep.restart_only:
            self._log(dep, "Restarting container from the existing image.")
        line = self._take_build_fault(dep.application_uuid)
        server = self.servers.get(dep.server_uuid)
        if server is not None and server.unreachable:
            line = (f"Server {server.name} is not reachable. ssh: connect to host {server.ip} port {server.port}: "
                    "Connection refused")
        dep.fail_with = line
        if self.runner is not None and app is not None and line is None:
            self.runner.begin(dep, app)

    def _advance(self) -> None:
        """Every queued piece of work whose time has come, oldest first (module docstring)."""
        now = time.monotonic()
        for _ in range(10_000):
            due = [d for d in self.deployments.values() if d.status == "in_progress" and d.started_at is not None
                   and d.started_at + d.duration <= now]
            if not due:
                break
            dep = min(due, key=lambda d: (d.started_at or 0) + d.duration)
            self._finish(dep, (dep.started_at or now) + dep.duration)
        for app in list(self.applications.values()):
            if app.stop_at is not None and app.stop_at <= now:
                app.stop_at = None
                app.container = None
                if self.runner is not None:
                    self.runner.stop_app(app.uuid)
                app.status_plan.clear()
                app.status = "exited"
            while app.status_plan and app.status_plan[0][0] <= now:
                app.status = app.status_plan.pop(0)[1]
            if app.delete_at is not None and app.delete_at <= now:
                self._remove_application(app)
        self._advance_databases(now)

    def _remove_application(self, app: Application) -> None:
        """DeleteResourceJob::handle (DeleteResourceJob.php:47-130): stop, clean up, delete the row (and its
        envs); its queued deployments are left behind, unreachable through the API (the app is gone)."""
        self.deleted_with[app.uuid] = dict(app.delete_flags)
        del self.applications[app.uuid]
        if self.runner is not None:
            self.runner.stop_app(app.uuid)
        server = self.servers.get(app.server_uuid)
        if server is not None:
            server.resources = max(0, server.resources - 1)
        for dep in self.deployments.values():
            if dep.application_id == app.id and dep.status in ("queued", "in_progress"):
                dep.status = "cancelled-by-user"

    def _finish(self, dep: Deployment, at: float) -> None:
        app = self.applications.get(dep.application_uuid)
        dep.finished_at = at
        server = self.servers.get(dep.server_uuid)
        if server is not None and server.unreachable and dep.fail_with is None:  # lost during the build
            dep.fail_with = (f"Server {server.name} is not reachable. ssh: connect to host {server.ip} port "
                             f"{server.port}: Connection refused")
        if dep.fail_with is not None or app is None:
            self._log(dep, dep.fail_with or "Application not found.", "stderr")
            self._log(dep, "Deployment failed. Removing the new version of your application.", "stderr")
            dep.status = "failed"
        else:
            crash = self._take_crash_fault(app.uuid)
            # rolling_update() skips health_check() (and stops the old container first) when the container name is
            # fixed: "Consistent container name feature enabled, rolling update is not supported."
            checked = bool(app.fields.get("health_check_enabled")) and not no_rolling_update(app)
            if not dep.restart_only:
                self._log(dep, "Building docker image completed.")
            self._log(dep, "Rolling update started.")
            self._log(dep, "New container started.")
            if crash is not None and checked:
                # the health check gates the rolling update: the new container is removed, the old one stays
                self._log(dep, crash, "stderr")
                self._log(dep, "New container is not healthy, rolling back to the old container.", "stderr")
                self._log(dep, "Deployment failed. Removing the new version of your application.", "stderr")
                dep.status = "failed"
                if self.runner is not None:
                    self.runner.finish(dep, app)
                self._next_after(dep, at)
                return
            self._log(dep, "Rolling update completed.")
            dep.status = "finished"
            env = {e.key: e.value or "" for e in app.envs if not e.is_preview and e.is_runtime}
            app.container = Container(dep.deployment_uuid, dep.commit, app.env_revision, env, at,
                                      logs=[f"container {app.uuid} started from deployment {dep.deployment_uuid} "
                                            f"(commit {dep.commit}, env revision {app.env_revision})"])
            if self.runner is None and _runs_release(app.fields.get("start_command"), env):  # what the guard prints
                app.container.logs += [mapping.RELEASE_STARTED, mapping.RELEASE_FINISHED]
            image = str(app.fields.get("docker_registry_image_name") or "")
            if server is not None and image.endswith(PROBE_IMAGE):  # what hardening/probe/Dockerfile prints
                app.container.logs.append(f"inkmcp-probe kernel={server.container_kernel}")
            if crash is not None:  # no health check: Coolify cannot tell, the container crash-loops afterwards
                app.container.logs.append(crash)
                app.status_plan = [(at + self.status_delay, "running:unknown"),
                                   (at + 2 * self.status_delay, "degraded:unhealthy")]
            elif checked:  # the deployment waited for "healthy": health_check() wrote status 'running' then
                # (ApplicationDeploymentJob.php health_check), the next GetContainersStatus "running:healthy"
                app.status_plan = [(at, "running"), (at + self.status_delay, "running:healthy")]
            else:
                app.status_plan = [(at + self.status_delay, "running:unknown")]
        if self.runner is not None:
            self.runner.finish(dep, app)
        self._next_after(dep, at)

    def _next_after(self, dep: Deployment, at: float) -> None:
        """queue_next_deployment (applications.php:125-139): start what can run now, oldest first."""
        for nxt in sorted((d for d in self.deployments.values() if d.server_id == dep.server_id
                           and d.status == "queued"), key=lambda d: d.id):
            if self._next_queuable(nxt):
                self._begin(nxt, at)

    # -- JSON -------------------------------------------------------------------------------------------

    def _deployment_json(self, dep: Deployment, sensitive: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": dep.id, "application_id": str(dep.application_id), "deployment_uuid": dep.deployment_uuid,
            "pull_request_id": dep.pull_request_id, "force_rebuild": dep.force_rebuild, "commit": dep.commit,
            "status": dep.status, "is_webhook": dep.is_webhook, "is_api": dep.is_api, "restart_only": dep.restart_only,
            "server_id": dep.server_id, "application_name": dep.application_name, "server_name": dep.server_name,
            "deployment_url": f"/project/deployment/{dep.deployment_uuid}", "destination_id": str(dep.destination_id),
            "only_this_server": False, "rollback": False, "created_at": dep.created_at, "updated_at": dep.updated_at}
        if sensitive:
            out["logs"] = json.dumps(dep.log_entries)
        return out

    # -- controllers ------------------------------------------------------------------------------------

    def _deploy_get(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        return self._post_required()

    def _deploy(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        """DeployController::deploy (:384-418) and by_uuids (:420-467); query or JSON body."""
        params: dict[str, Any] = dict(request.query_params)
        if isinstance(body, dict):
            params.update(body)
        uuids, tags = params.get("uuid"), params.get("tag")
        force = _bool(params.get("force"))
        pr_raw = params.get("pull_request_id", params.get("pr"))
        pr = max(int(pr_raw), 0) if str(pr_raw or "").lstrip("-").isdigit() else 0
        if uuids and tags:
            return JSONResponse({"message": "You can only use uuid or tag, not both."}, 400)
        if tags and pr:
            return JSONResponse({"message": "You can only use tag or pr, not both."}, 400)
        if tags:
            return self._deploy_tags(token, str(tags), force)
        if not uuids:
            return JSONResponse({"message": "You must provide uuid or tag."}, 400)
        deployments: list[dict[str, Any]] = []
        for uuid in [u for u in str(uuids).split(",") if u]:
            app = self._visible_app(token, uuid)
            if app is not None:
                if pr:
                    deployments.append({"message": f"Pull request {pr} not found for this resource.",
                                        "resource_uuid": uuid})
                    continue
                result = self._queue_deployment(app, force=force)
                if result["status"] == "queue_full":
                    return JSONResponse({"message": result["message"]}, 429, headers={"Retry-After": "60"})
                if result["status"] == "skipped":
                    # :539 the uuid generated before queueing is returned, not the existing deployment's
                    deployments.append({"message": result["message"], "resource_uuid": uuid,
                                        "deployment_uuid": new_uuid()})
                else:
                    deployments.append({"message": f"Application {app.fields.get('name')} deployment queued.",
                                        "resource_uuid": uuid, "deployment_uuid": result["deployment_uuid"]})
                continue
            db = self.databases.get(uuid)
            if db is not None and db.team_id == token.team_id:
                self._start_database(db)
                deployments.append({"message": f"Database {db.fields.get('name')} started.", "resource_uuid": uuid})
        if deployments:
            return JSONResponse({"deployments": deployments})
        return JSONResponse({"message": "No resources found."}, 404)

    def _start_database(self, db: Database) -> None:
        raise NotImplementedError

    def _deploy_tags(self, token: Token, tags: str, force: bool) -> Response:
        """by_tags (:469-519): {message:[…], details:[{resource_uuid, deployment_uuid}]} (not in the spec)."""
        messages: list[str] = []
        details: list[dict[str, str]] = []
        for tag in [t for t in tags.split(",") if t]:
            apps = [a for a in self.applications.values() if a.team_id == token.team_id and tag in a.tags]
            if not apps:
                continue
            for app in apps:
                result = self._queue_deployment(app, force=force)
                if result["status"] == "queue_full":
                    return JSONResponse({"message": result["message"]}, 429, headers={"Retry-After": "60"})
                if result["status"] == "skipped":
                    messages.append(result["message"])
                    details.append({"resource_uuid": app.uuid, "deployment_uuid": new_uuid()})
                else:
                    messages.append(f"Application {app.fields.get('name')} deployment queued.")
                    details.append({"resource_uuid": app.uuid, "deployment_uuid": result["deployment_uuid"]})
        if messages:
            return JSONResponse({"message": messages, "details": details})
        return JSONResponse({"message": "No resources found with this tag."}, 404)

    def _list_deployments(self, token: Token, sensitive: bool, request: Request, raw: bytes,
                          body: Any) -> Response:
        """deployments (:69-86): only queued/in_progress on the team's servers, by id."""
        team_servers = {s.id for s in self.servers.values() if s.team_id == token.team_id}
        rows = sorted((d for d in self.deployments.values() if d.status in ("queued", "in_progress")
                       and d.server_id in team_servers), key=lambda d: d.id)
        return JSONResponse([self._deployment_json(d, sensitive) for d in rows])

    def _get_deployment(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                        uuid: str) -> Response:
        dep = self.deployments.get(uuid)
        app = self.applications.get(dep.application_uuid) if dep else None
        if dep is None or app is None or app.team_id != token.team_id:  # :131-138
            return JSONResponse({"message": "Deployment not found."}, 404)
        return JSONResponse(self._deployment_json(dep, sensitive))

    def _app_deployments(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                         uuid: str) -> Response:
        """get_application_deployments (:696-733) -> Application::deployments(): {count, deployments} newest
        first."""
        q = request.query_params
        skip_raw, take_raw = q.get("skip", "0"), q.get("take", "10")
        if not skip_raw.isdigit() or not take_raw.isdigit() or int(take_raw) < 1:
            return JSONResponse({"message": "The given data was invalid.",
                                 "errors": {"skip": ["The skip field must be an integer."]}}, 422)
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found"}, 404)
        rows = sorted((d for d in self.deployments.values() if d.application_id == app.id),
                      key=lambda d: d.id, reverse=True)
        page = rows[int(skip_raw):int(skip_raw) + int(take_raw)]
        return JSONResponse({"count": len(rows), "deployments": [self._deployment_json(d, sensitive) for d in page]})

    def _cancel_deployment(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                           uuid: str) -> Response:
        """cancel_deployment (:211-380)."""
        dep = self.deployments.get(uuid)
        if dep is None:
            return JSONResponse({"message": "Deployment not found."}, 404)
        if dep.server_id not in {s.id for s in self.servers.values() if s.team_id == token.team_id}:
            return JSONResponse({"message": "You do not have permission to cancel this deployment."}, 403)
        if dep.status not in ("queued", "in_progress"):
            return JSONResponse({"message": f"Deployment cannot be cancelled. Current status: {dep.status}"}, 400)
        was_running = dep.status == "in_progress"
        dep.status = "cancelled-by-user"
        self._log(dep, "Deployment cancelled by user via API.", "stderr")
        self._log(dep, "Deployment container stopped." if was_running else
                  "Deployment container not yet started. Will be cancelled when job checks status.")
        self._next_after(dep, time.monotonic())
        return JSONResponse({"message": "Deployment cancelled successfully.", "deployment_uuid": dep.deployment_uuid,
                             "status": "cancelled-by-user"})
