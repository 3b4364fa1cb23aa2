"""Applications and their environment variables: app/Http/Controllers/Api/ApplicationsController.php at 379abb2
(NOTES.md §b Applications, Env vars; §h pitfalls).

Create (`create_application`, :1181-2360), in the controller's order: JSON body (400), the allow-list and the
common rules (422, every unknown key "This field is not allowed."), environment_name or _uuid (422 message
only), project / environment / server (404), a build server cannot host resources (422 `server_uuid`), then the
type's rules (`sharedDataApplications()`, bootstrap/helpers/api.php:113-200), `validateDataApplications`
(:4429: ports_mappings unique, custom_labels base64, domains valid and not used by another resource of the team
-> 409 unless force_domain_override). Answer 201 {uuid, domains} (the spec documents only uuid).
Facts a client must know, as the controller has them:

* `domains` blank + `autogenerate_domain` (default true) -> `http://<app uuid>.<wildcard host>` from the
  server's `wildcard_domain`, else `<ip>.sslip.io` (generateUrl, bootstrap/helpers/shared.php:1262).
* `custom_labels` sent at create are replaced by Coolify's generated labels (`is_container_label_readonly_enabled`
  defaults true and is not settable by API, :1518-1521); a PATCH of `custom_labels` is stored as sent and kept
  unless the same PATCH changes domains/basic auth (:3127-3129).
* `POST /applications/dockerfile`: the EXPOSE parser gets the still-base64 text (:2090), so `ports_exposes`
  is 80 whatever is sent; `git_repository` coollabsio/coolify, branch main (:2105-2106).
* `ports_exposes` is optional: the column is nullable since migration 2026_03_26_000000 (an app created without
  it has no exposed port; the generated labels then carry no port).
* `health_check_enabled` defaults to false (migration 2024_07_19_132617), so a deployed app without a health
  check reads `running:unknown`, with one `running` (written when the deployment's health check passed) then
  `running:healthy`.
* `instant_deploy` queues a deployment but the answer carries no deployment uuid (:1527-1539).
* `git_commit_sha` defaults to HEAD; the deployment's `commit` is that sha (queue_application_deployment).

Delete is queued (DeleteResourceJob): 200 "Application deletion request queued.", the application is gone
`delete_delay` seconds later; `delete_configurations|delete_volumes|docker_cleanup|delete_connected_networks`
(default true) are recorded in `deleted_with[uuid]`. Stop is queued (StopApplication::dispatch); start ==
deploy; restart is a restart-only deployment. Env vars: a non-preview create also creates its preview twin
(EnvironmentVariable.php:95-118), lists hold both; `value`/`real_value` only for `read:sensitive` (and never
for `is_shown_once`); PATCH matches by key (+is_preview) and 404s when absent; bulk upserts by key, drops
unknown item keys silently and stops at the first invalid item, keeping the ones before it (:3534-3700).
Env changes bump `env_revision`; a running container keeps the env of the deployment that started it.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inkmcp.coolify.standin import rules
from inkmcp.coolify.standin.state import Application, EnvVar, NodeServer, Project, Token, new_uuid, now_iso

SETTING_FIELDS = ["is_git_submodules_enabled", "is_git_lfs_enabled", "is_git_shallow_clone_enabled",
                  "disable_build_cache", "inject_build_args_to_dockerfile", "include_source_commit_in_build",
                  "is_env_sorting_enabled", "is_pr_deployments_public_enabled", "stop_grace_period",
                  "docker_images_to_keep", "is_gzip_enabled", "is_stripprefix_enabled",
                  "is_raw_compose_deployment_enabled", "is_log_drain_enabled", "is_gpu_enabled", "gpu_driver",
                  "gpu_count", "gpu_device_ids", "gpu_options", "is_consistent_container_name_enabled",
                  "custom_internal_name"]
"""ApplicationsController::APPLICATION_SETTING_FIELDS (:40-62)."""

CREATE_ALLOWED = [
    "project_uuid", "environment_name", "environment_uuid", "server_uuid", "destination_uuid", "type", "name",
    "description", "is_static", "is_spa", "is_auto_deploy_enabled", "is_force_https_enabled",
    "is_preview_deployments_enabled", "domains", "noindex_domains", "git_repository", "git_branch", "git_commit_sha",
    "private_key_uuid", "docker_registry_image_name", "docker_registry_image_tag", "build_pack", "install_command",
    "build_command", "start_command", "ports_exposes", "ports_mappings", "custom_network_aliases", "base_directory",
    "publish_directory", "health_check_enabled", "health_check_type", "health_check_command", "health_check_path",
    "health_check_port", "health_check_host", "health_check_method", "health_check_return_code",
    "health_check_scheme", "health_check_response_text", "health_check_interval", "health_check_timeout",
    "health_check_retries", "health_check_start_period", "limits_memory", "limits_memory_swap",
    "limits_memory_swappiness", "limits_memory_reservation", "limits_cpus", "limits_cpuset", "limits_cpu_shares",
    "custom_labels", "custom_docker_run_options", "post_deployment_command", "post_deployment_command_container",
    "pre_deployment_command", "pre_deployment_command_container", "manual_webhook_secret_github",
    "manual_webhook_secret_gitlab", "manual_webhook_secret_bitbucket", "manual_webhook_secret_gitea", "redirect",
    "github_app_uuid", "instant_deploy", "dockerfile", "dockerfile_location", "docker_compose_location",
    "docker_compose_raw", "docker_compose_custom_start_command", "docker_compose_custom_build_command",
    "docker_compose_domains", "watch_paths", "use_build_server", "use_build_secrets", "static_image",
    "custom_nginx_configuration", "is_http_basic_auth_enabled", "http_basic_auth_username",
    "http_basic_auth_password", "connect_to_docker_network", "force_domain_override", "autogenerate_domain",
    "is_container_label_escape_enabled", "tags", "is_preserve_repository_enabled", "preview_url_template",
    "max_restart_count", *SETTING_FIELDS]
"""create_application $allowedFields (:1193)."""

UPDATE_ALLOWED = [
    "name", "description", "is_static", "is_spa", "is_auto_deploy_enabled", "is_force_https_enabled",
    "is_preview_deployments_enabled", "domains", "noindex_domains", "git_repository", "git_branch", "git_commit_sha",
    "docker_registry_image_name", "docker_registry_image_tag", "build_pack", "static_image", "install_command",
    "build_command", "start_command", "ports_exposes", "ports_mappings", "custom_network_aliases", "base_directory",
    "publish_directory", "health_check_enabled", "health_check_type", "health_check_command", "health_check_path",
    "health_check_port", "health_check_host", "health_check_method", "health_check_return_code",
    "health_check_scheme", "health_check_response_text", "health_check_interval", "health_check_timeout",
    "health_check_retries", "health_check_start_period", "limits_memory", "limits_memory_swap",
    "limits_memory_swappiness", "limits_memory_reservation", "limits_cpus", "limits_cpuset", "limits_cpu_shares",
    "custom_labels", "custom_docker_run_options", "post_deployment_command", "post_deployment_command_container",
    "pre_deployment_command", "pre_deployment_command_container", "watch_paths", "manual_webhook_secret_github",
    "manual_webhook_secret_gitlab", "manual_webhook_secret_bitbucket", "manual_webhook_secret_gitea",
    "dockerfile_location", "dockerfile_target_build", "docker_compose_location", "docker_compose_custom_start_command",
    "docker_compose_custom_build_command", "docker_compose_domains", "redirect", "instant_deploy", "use_build_server",
    "use_build_secrets", "custom_nginx_configuration", "is_http_basic_auth_enabled", "http_basic_auth_username",
    "http_basic_auth_password", "connect_to_docker_network", "force_domain_override",
    "is_container_label_escape_enabled", "is_preserve_repository_enabled", "preview_url_template",
    "max_restart_count", *SETTING_FIELDS]
"""update_by_uuid $allowedFields (:2798)."""

SHARED_RULES: dict[str, str] = {
    "git_repository": "string", "git_branch": "string", "is_static": "boolean", "is_spa": "boolean",
    "is_auto_deploy_enabled": "boolean", "is_force_https_enabled": "boolean",
    "is_preview_deployments_enabled": "boolean", "use_build_secrets": "boolean",
    **{k: "boolean" for k in SETTING_FIELDS if k.startswith(("is_", "disable_", "inject_", "include_"))},
    "gpu_driver": "string|nullable", "gpu_count": "string|nullable", "gpu_device_ids": "string|nullable",
    "gpu_options": "string|nullable", "custom_internal_name": "string|nullable", "preview_url_template": "string",
    "max_restart_count": "integer", "stop_grace_period": "integer|nullable", "docker_images_to_keep": "integer",
    "noindex_domains": "array|nullable", "git_commit_sha": "string", "ports_exposes": "string",
    "ports_mappings": "string|nullable", "custom_network_aliases": "string|nullable",
    "health_check_enabled": "boolean", "health_check_type": "string", "health_check_command": "string|nullable",
    "health_check_path": "string", "health_check_port": "integer|nullable", "health_check_host": "string",
    "health_check_method": "string", "health_check_return_code": "numeric", "health_check_scheme": "string",
    "health_check_response_text": "string|nullable", "health_check_interval": "numeric",
    "health_check_timeout": "numeric", "health_check_retries": "numeric", "health_check_start_period": "numeric",
    "limits_memory": "string", "limits_memory_swap": "string", "limits_memory_swappiness": "numeric",
    "limits_memory_reservation": "string", "limits_cpus": "string", "limits_cpuset": "string|nullable",
    "limits_cpu_shares": "numeric", "custom_labels": "string|nullable", "post_deployment_command": "string|nullable",
    "pre_deployment_command": "string|nullable", "install_command": "string|nullable",
    "build_command": "string|nullable", "start_command": "string|nullable",
    "custom_docker_run_options": "string|nullable", "base_directory": "string|nullable",
    "publish_directory": "string|nullable", "docker_registry_image_name": "string|nullable",
    "docker_registry_image_tag": "string|nullable", "redirect": "string", "static_image": "string",
}
"""sharedDataApplications() (bootstrap/helpers/api.php:113-200), the type parts."""

DEFAULTS: dict[str, Any] = {
    # create_applications_table.php and later migrations: column defaults
    "git_commit_sha": "HEAD", "static_image": "nginx:alpine", "base_directory": "/", "health_check_enabled": False,
    "health_check_path": "/", "health_check_host": "localhost", "health_check_method": "GET",
    "health_check_return_code": 200, "health_check_scheme": "http", "health_check_interval": 5,
    "health_check_timeout": 5, "health_check_retries": 10, "health_check_start_period": 5,
    "health_check_type": "http", "limits_memory": "0", "limits_memory_swap": "0", "limits_memory_swappiness": 60,
    "limits_memory_reservation": "0", "limits_cpus": "0", "limits_cpuset": "0", "limits_cpu_shares": 1024,
    "max_restart_count": 10, "is_http_basic_auth_enabled": False, "dockerfile_location": "/Dockerfile",
    "docker_compose_location": "/docker-compose.yaml", "custom_healthcheck_found": False,
}

SETTING_DEFAULTS: dict[str, Any] = {
    "is_static": False, "is_spa": False, "is_git_submodules_enabled": True, "is_git_lfs_enabled": True,
    "is_git_shallow_clone_enabled": True, "is_auto_deploy_enabled": True, "is_force_https_enabled": True,
    "is_debug_enabled": False, "is_preview_deployments_enabled": False, "is_log_drain_enabled": False,
    "is_gpu_enabled": False, "is_include_timestamps": False, "is_swarm_only_worker_nodes": True,
    "is_raw_compose_deployment_enabled": False, "is_build_server_enabled": False,
    "is_consistent_container_name_enabled": False, "is_gzip_enabled": True, "is_stripprefix_enabled": True,
    "connect_to_docker_network": False, "is_container_label_escape_enabled": True, "is_env_sorting_enabled": False,
    "is_container_label_readonly_enabled": True, "is_preserve_repository_enabled": False,
    "disable_build_cache": False, "is_pr_deployments_public_enabled": False, "use_build_secrets": False,
    "inject_build_args_to_dockerfile": True, "include_source_commit_in_build": False, "docker_images_to_keep": 2,
}

REQUEST_ONLY = {"project_uuid", "environment_name", "environment_uuid", "destination_uuid", "server_uuid", "type",
                "domains", "instant_deploy", "github_app_uuid", "private_key_uuid", "use_build_server",
                "use_build_secrets", "is_static", "is_spa", "is_auto_deploy_enabled", "is_force_https_enabled",
                "is_preview_deployments_enabled", "connect_to_docker_network", "force_domain_override",
                "autogenerate_domain", "is_container_label_escape_enabled", "is_preserve_repository_enabled",
                "docker_compose_raw", "tags", "noindex_domains", *SETTING_FIELDS}
"""removeUnnecessaryFieldsFromRequest (bootstrap/helpers/api.php:366-413): not columns of `applications`."""

SENSITIVE_APP = {"custom_labels", "dockerfile", "docker_compose", "docker_compose_raw",
                 "manual_webhook_secret_bitbucket", "manual_webhook_secret_gitea", "manual_webhook_secret_github",
                 "manual_webhook_secret_gitlab",
                 "http_basic_auth_password"}
"""removeSensitiveData (:100-138): visible only with can_read_sensitive."""

# --- mender6: the nullable columns the spec types `nullable: true` that _app_json shows as null when unset
NULL_WHEN_UNSET = ("pre_deployment_command", "pre_deployment_command_container", "post_deployment_command",
                   "post_deployment_command_container")
# --- end

ENV_ITEM_KEYS = ("key", "value", "is_preview", "is_literal", "is_multiline", "is_shown_once", "is_runtime",
                 "is_buildtime", "comment")
ENV_RULES = {"key": "string|required", "value": "string|nullable", "is_preview": "boolean", "is_literal": "boolean",
             "is_multiline": "boolean", "is_shown_once": "boolean", "is_runtime": "boolean",
             "is_buildtime": "boolean", "comment": "string|nullable"}


def _bool(value: Any) -> bool:
    """Laravel's $request->boolean()."""
    return value in (True, 1, "1", "true", "on", "yes")


INT_COLUMNS = {"health_check_return_code", "health_check_interval", "health_check_timeout", "health_check_retries",
               "health_check_start_period", "limits_memory_swappiness", "limits_cpu_shares", "max_restart_count",
               "stop_grace_period", "docker_images_to_keep"}
BOOL_COLUMNS = {"health_check_enabled", "is_http_basic_auth_enabled"}


def _column(key: str, value: Any) -> Any:
    """What Eloquent's casts and Postgres' column types make of a validated value ("200" -> 200, "1" -> true),
    and docker_compose_domains as the JSON text the controller stores (:1446-1458)."""
    if value is None:
        return None
    if key in INT_COLUMNS and not isinstance(value, bool):
        return int(float(value))
    if key in BOOL_COLUMNS:
        return _bool(value)
    if key == "docker_compose_domains" and isinstance(value, list):
        text = json.dumps({d.get("name"): {"domain": d.get("domain")} for d in value if isinstance(d, dict)},
                          separators=(",", ":"))
        return text.replace("/", "\\/")  # PHP's json_encode escapes slashes
    return value


class ApplicationsMixin:
    ROUTES_APPLICATIONS: list[tuple[str, str, str, str]] = [
        ("GET", r"/applications", "read", "_list_applications"),
        ("POST", r"/applications/public", "write", "_create_public"),
        ("POST", r"/applications/private-deploy-key", "write", "_create_deploy_key"),  # --- ghkeys (issue 11)
        ("POST", r"/applications/dockerfile", "write", "_create_dockerfile"),
        ("POST", r"/applications/dockerimage", "write", "_create_dockerimage"),
        ("GET", r"/applications/(?P<uuid>[^/]+)", "read", "_get_application"),
        ("PATCH", r"/applications/(?P<uuid>[^/]+)", "write", "_update_application"),
        ("DELETE", r"/applications/(?P<uuid>[^/]+)", "write", "_delete_application"),
        ("GET", r"/applications/(?P<uuid>[^/]+)/envs", "read", "_list_envs"),
        ("POST", r"/applications/(?P<uuid>[^/]+)/envs", "write", "_create_env"),
        ("PATCH", r"/applications/(?P<uuid>[^/]+)/envs/bulk", "write", "_bulk_envs"),
        ("PATCH", r"/applications/(?P<uuid>[^/]+)/envs", "write", "_update_env"),
        ("DELETE", r"/applications/(?P<uuid>[^/]+)/envs/(?P<env_uuid>[^/]+)", "write", "_delete_env"),
        ("GET", r"/applications/(?P<uuid>[^/]+)/logs", "read", "_app_logs"),
        ("GET", r"/applications/(?P<uuid>[^/]+)/(?:start|stop|restart)", "deploy", "_action_get"),
        ("POST", r"/applications/(?P<uuid>[^/]+)/start", "deploy", "_action_start"),
        ("POST", r"/applications/(?P<uuid>[^/]+)/stop", "deploy", "_action_stop"),
        ("POST", r"/applications/(?P<uuid>[^/]+)/restart", "deploy", "_action_restart"),
    ]

    _lock: threading.RLock
    servers: dict[str, NodeServer]
    projects: dict[str, Project]
    applications: dict[str, Application]
    deleted_with: dict[str, dict[str, bool]]
    stop_delay: float

    def _id(self) -> int:
        raise NotImplementedError

    def _queue_deployment(self, app: Application, *, force: bool = False, restart_only: bool = False,
                          no_questions_asked: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def _post_required(self) -> Response:
        raise NotImplementedError

    @staticmethod
    def _environment(project: Project, name: str | None, uuid: str | None = None) -> Any:
        raise NotImplementedError

    # -- inspection for tests ---------------------------------------------------------------------------

    def application(self, uuid: str) -> Application:
        with self._lock:
            self._advance()
            return self.applications[uuid]

    def running_env(self, uuid: str) -> dict[str, str] | None:
        """The env the application's running container started with (None when nothing runs)."""
        with self._lock:
            self._advance()
            container = self.applications[uuid].container
            return dict(container.env) if container else None

    def add_runtime_log(self, uuid: str, *lines: str) -> None:
        """What the running container prints (read back by GET /applications/{uuid}/logs)."""
        with self._lock:
            container = self.applications[uuid].container
            if container is None:
                raise ValueError(f"application {uuid} runs no container: deploy it before adding runtime logs")
            container.logs += list(lines)

    def _advance(self) -> None:
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------------------

    def _visible_app(self, token: Token, uuid: str) -> Application | None:
        app = self.applications.get(uuid)
        return app if app is not None and app.team_id == token.team_id else None

    def _domains_in_use(self, team_id: int, urls: list[str], except_uuid: str | None) -> list[dict[str, Any]]:
        """checkIfDomainIsAlreadyUsedViaAPI (bootstrap/helpers/domains.php): hosts already used by another
        application of the team."""
        conflicts = []
        wanted = {rules.host_of(u): u for u in urls}
        for other in self.applications.values():
            if other.team_id != team_id or other.uuid == except_uuid or not other.fields.get("fqdn"):
                continue
            for url in rules.domain_list(other.fields["fqdn"]):
                host = rules.host_of(url)
                if host in wanted:
                    name = other.fields.get("name")
                    conflicts.append({"domain": host, "resource_name": name, "resource_uuid": other.uuid,
                                      "resource_type": "application",
                                      "message": f"Domain {host} is already in use by application '{name}'"})
        return conflicts

    @staticmethod
    def _generate_url(server: NodeServer, app_uuid: str) -> str:
        """generateUrl (bootstrap/helpers/shared.php:1262-1277): wildcard domain, else sslip."""
        wildcard = server.settings.get("wildcard_domain") or f"http://{server.ip}.sslip.io"
        m = re.fullmatch(r"([a-z]+)://([^/]+)(/.*)?", wildcard)
        scheme, host, path = (m.group(1), m.group(2), m.group(3) or "") if m else ("http", wildcard, "")
        return f"{scheme}://{app_uuid}.{host}{'' if path == '/' else path}"

    @staticmethod
    def _generated_labels(app: Application) -> str:
        """generateLabelsApplication (bootstrap/helpers/docker.php:866), the Traefik part, as stored on create:
        one label a line, not base64."""
        port = "80" if app.settings.get("is_static") else str(app.fields.get("ports_exposes") or "").split(",")[0]
        labels = ["traefik.enable=true", "traefik.http.middlewares.gzip.compress=true",
                  "traefik.http.middlewares.redirect-to-https.redirectscheme.scheme=https"]
        for i, url in enumerate(rules.domain_list(app.fields.get("fqdn") or "")):
            router = f"http-{i}-{app.uuid}"
            labels += [f"traefik.http.routers.{router}.entryPoints=http",
                       f"traefik.http.routers.{router}.middlewares=gzip",
                       f"traefik.http.routers.{router}.rule=Host(`{rules.host_of(url)}`) && PathPrefix(`/`)",
                       f"traefik.http.routers.{router}.service={router}"]
            if port:
                labels.append(f"traefik.http.services.{router}.loadbalancer.server.port={port}")
        return "\n".join(labels)

    def _app_json(self, app: Application, sensitive: bool) -> dict[str, Any]:
        """The Application model as the API serialises it: `id` hidden, sensitive columns only with
        can_read_sensitive, settings without id/application_id/timestamps. Null columns are left out (the spec
        types them as non-null strings; real Coolify sends null)."""
        out: dict[str, Any] = {"uuid": app.uuid, "status": app.status, "environment_id": app.environment_id,
                               "destination_id": app.destination_id,
                               "destination_type": "App\\Models\\StandaloneDocker",
                               "created_at": app.created_at, "updated_at": app.updated_at}
        for key, value in app.fields.items():
            if value is None or (key in SENSITIVE_APP and not sensitive):
                continue
            out[key] = value
        # --- mender6: real Coolify serialises these nullable columns as null when unset (an app created without
        # a pre_deployment_command reads back `"pre_deployment_command": null`), not absent
        for key in NULL_WHEN_UNSET:
            out.setdefault(key, None)
        # --- end
        if isinstance(out.get("health_check_port"), int):
            out["health_check_port"] = str(out["health_check_port"])
        out["settings"] = dict(app.settings)
        return dict(sorted(out.items()))

    def _env_json(self, env: EnvVar, sensitive: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"uuid": env.uuid, "key": env.key, "is_preview": env.is_preview,
                               "is_literal": env.is_literal, "is_multiline": env.is_multiline,
                               "is_shown_once": env.is_shown_once, "is_runtime": env.is_runtime,
                               "is_buildtime": env.is_buildtime, "is_shared": False, "is_really_required": False,
                               "is_buildpack_control": False, "is_coolify": False, "version": "4.3.11",
                               "created_at": env.created_at, "updated_at": env.updated_at}
        if env.comment is not None:
            out["comment"] = env.comment
        if sensitive and not env.is_shown_once and env.value is not None:
            out["value"] = env.value
            # EnvironmentVariable::realValue: literal/multiline values quoted, JSON left as is
            literal = env.is_literal or env.is_multiline
            is_json = env.value.startswith(("{", "[")) and _is_json(env.value)
            out["real_value"] = env.value if is_json or not literal else f"'{env.value}'"
        return dict(sorted(out.items()))

    # -- create -----------------------------------------------------------------------------------------

    def _create_public(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        return self._create(token, request, raw, body, "public")

    # --- ghkeys (issue 11): create_application type `private-deploy-key`: a git app cloned over SSH with a team key
    def _create_deploy_key(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        return self._create(token, request, raw, body, "deploy_key")
    # --- end

    def _create_dockerfile(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any) -> Response:
        return self._create(token, request, raw, body, "dockerfile")

    def _create_dockerimage(self, token: Token, sensitive: bool, request: Request, raw: bytes,
                            body: Any) -> Response:
        return self._create(token, request, raw, body, "dockerimage")

    def _create(self, token: Token, request: Request, raw: bytes, body: Any, kind: str) -> Response:
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        if not isinstance(body, dict):
            return JSONResponse({"message": "Invalid request.", "error": "Invalid JSON."}, 400)
        errors = rules.fields(body, CREATE_ALLOWED, {
            "name": "string", "description": "string|nullable", "project_uuid": "string|required",
            "environment_name": "string|nullable", "environment_uuid": "string|nullable",
            "server_uuid": "string|required", "destination_uuid": "string", "is_http_basic_auth_enabled": "boolean",
            "http_basic_auth_username": "string|nullable", "http_basic_auth_password": "string|nullable",
            "autogenerate_domain": "boolean", "tags": "array|nullable"})
        for tag in body.get("tags") or []:
            if not isinstance(tag, str) or len(tag) < 2:
                errors.setdefault("tags", []).append("Each tag must be a string of at least 2 characters.")
        if errors:
            return rules.invalid(errors)
        if not body.get("environment_uuid") and not body.get("environment_name"):
            return JSONResponse({"message": "You need to provide at least one of environment_name or "
                                            "environment_uuid."}, 422)
        project = self.projects.get(body["project_uuid"])
        if project is None or project.team_id != token.team_id:
            return JSONResponse({"message": "Project not found."}, 404)
        environment = self._environment(project, body.get("environment_name"), body.get("environment_uuid"))
        if environment is None:
            return JSONResponse({"message": "Environment not found."}, 404)
        server = self.servers.get(body["server_uuid"])
        if server is None or server.team_id != token.team_id:
            return JSONResponse({"message": "Server not found."}, 404)
        if server.settings.get("is_build_server"):
            return rules.invalid({"server_uuid": [
                "The specified server is configured as a build server and cannot host resources."]})
        # one destination per server: destination_uuid is optional and not checked (:1330-1345)
        type_rules = dict(SHARED_RULES)
        if kind in ("public", "deploy_key"):  # --- ghkeys (issue 11): deploy_key's rules add private_key_uuid
            type_rules.update(git_repository="string|required", git_branch="string|required",
                              build_pack="string|required")
            if kind == "deploy_key":
                type_rules["private_key_uuid"] = "string|required"
        elif kind == "dockerfile":
            type_rules["dockerfile"] = "string|required"
        else:
            type_rules["docker_registry_image_name"] = "string|required"
        errors = rules.fields(body, None, type_rules)
        errors.update(self._shape_errors(body, "public" if kind == "deploy_key" else kind))  # --- ghkeys
        if errors:
            return rules.invalid(errors)
        # --- ghkeys (issue 11): the team's private key (404 "Private Key not found." otherwise)
        deploy_key = None
        if kind == "deploy_key":
            key_team = getattr(self, "private_keys", {}).get(body["private_key_uuid"])
            record = self._key_records().get(body["private_key_uuid"])  # type: ignore[attr-defined]
            if key_team != token.team_id or record is None:
                return JSONResponse({"message": "Private Key not found."}, 404)
            deploy_key = record["id"]
        # --- end
        if kind == "public" and body["build_pack"] == "dockercompose" and "domains" in body:
            return rules.invalid({"domains": "The domains field cannot be used for dockercompose applications. "
                                             "Use docker_compose_domains instead to set domains for individual "
                                             "services."})
        data_problem = self._validate_data(token, body, server, None)
        if data_problem is not None:
            return data_problem
        dockerfile_text = None
        if kind == "dockerfile":
            dockerfile_text = rules.b64_text(body["dockerfile"])
            if dockerfile_text is None:
                return rules.invalid({"dockerfile": "The dockerfile should be base64 encoded."})

        app = Application(self._id(), new_uuid(), token.team_id, environment.id, server.uuid,
                          server.destination_id, fields=dict(DEFAULTS), settings=dict(SETTING_DEFAULTS))
        for key, value in body.items():
            if key in CREATE_ALLOWED and key not in REQUEST_ONLY:
                app.fields[key] = _column(key, value)
        app.fields["git_commit_sha"] = body.get("git_commit_sha") or "HEAD"
        if kind == "deploy_key":  # --- ghkeys (issue 11): the SSH URL as sent, and the key's id
            name = body.get("name") or _app_name(body["git_repository"], body["git_branch"])
            app.fields["private_key_id"] = deploy_key
        elif kind == "public":
            name = body.get("name") or _app_name(body["git_repository"], body["git_branch"])
            repo = body["git_repository"]
            m = re.fullmatch(r"https?://github\.com/([^/]+)/([^/]+?)/?", repo)
            if m:  # :1474-1480 github.com repositories are stored as owner/repo
                app.fields["git_repository"] = f"{m.group(1)}/{m.group(2)}"
        elif kind == "dockerfile":
            name = body.get("name") or f"dockerfile-{new_uuid()}"
            app.fields.update(ports_exposes="80", build_pack="dockerfile", dockerfile=dockerfile_text,
                              git_repository="coollabsio/coolify", git_branch="main")
        else:
            name = body.get("name") or f"docker-image-{new_uuid()}"
            image = body["docker_registry_image_name"]
            tag = body.get("docker_registry_image_tag")
            if tag is None and ":" in image.rsplit("/", 1)[-1]:
                image, tag = image.rsplit(":", 1)
            app.fields.update(docker_registry_image_name=image, docker_registry_image_tag=tag or "latest",
                              build_pack="dockerimage", git_repository="coollabsio/coolify", git_branch="main")
        app.fields["name"] = name
        for key in SETTING_FIELDS:
            if key in body:
                app.settings[key] = _bool(body[key]) if key.startswith(("is_", "disable_", "inject_",
                                                                         "include_")) else _column(key, body[key])
        for key, setting in (("is_static", "is_static"), ("is_spa", "is_spa"),
                             ("is_auto_deploy_enabled", "is_auto_deploy_enabled"),
                             ("is_force_https_enabled", "is_force_https_enabled"),
                             ("is_preview_deployments_enabled", "is_preview_deployments_enabled"),
                             ("connect_to_docker_network", "connect_to_docker_network"),
                             ("use_build_server", "is_build_server_enabled"),
                             ("use_build_secrets", "use_build_secrets"),
                             ("is_container_label_escape_enabled", "is_container_label_escape_enabled"),
                             ("is_preserve_repository_enabled", "is_preserve_repository_enabled")):
            if body.get(key) is not None:
                app.settings[setting] = _bool(body[key])
        domains = body.get("domains")
        fqdn = rules.normalize_domains(domains) if isinstance(domains, str) else None
        app.fields["fqdn"] = fqdn
        if _bool(body.get("autogenerate_domain", True)) and not fqdn:
            app.fields["fqdn"] = self._generate_url(server, app.uuid)
        if app.settings["is_container_label_readonly_enabled"]:
            app.fields["custom_labels"] = self._generated_labels(app)  # :1517-1520, replaces what was sent
        app.tags = list(body.get("tags") or [])
        self.applications[app.uuid] = app
        server.resources += 1
        if _bool(body.get("instant_deploy")):
            result = self._queue_deployment(app, no_questions_asked=True)
            if result["status"] == "skipped":
                return JSONResponse({"message": result["message"]}, 200)
        return JSONResponse({"uuid": app.uuid, "domains": app.fields["fqdn"]}, 201)

    @staticmethod
    def _shape_errors(body: dict[str, Any], kind: str | None) -> dict[str, list[str]]:
        """The regex and enum rules of sharedDataApplications() and the type's own rules."""
        errors: dict[str, list[str]] = {}

        def check(key: str, ok: bool, message: str) -> None:
            if key in body and body[key] is not None and isinstance(body[key], str) and not ok:
                errors.setdefault(key, []).append(message)

        get = body.get
        if kind == "public" and isinstance(get("build_pack"), str) and get("build_pack") not in rules.BUILD_PACKS:
            errors.setdefault("build_pack", []).append("The selected build pack is invalid.")
        if kind == "public" and isinstance(get("git_repository"), str) and not re.fullmatch(
                r"(https?://|git@)[^\s;|&`$]+", get("git_repository")):
            errors.setdefault("git_repository", []).append("The git repository URL is not valid.")
        if isinstance(get("git_branch"), str) and not re.fullmatch(r"[A-Za-z0-9._/\-]+", get("git_branch")):
            errors.setdefault("git_branch", []).append("The git branch contains invalid characters.")
        check("git_commit_sha", bool(rules.GIT_SHA.fullmatch(str(get("git_commit_sha")))),
              "The git commit sha field format is invalid.")
        check("ports_exposes", bool(rules.PORTS.fullmatch(str(get("ports_exposes")))),
              "The ports exposes field format is invalid.")
        check("ports_mappings", bool(rules.PORT_MAPPINGS.fullmatch(str(get("ports_mappings")))),
              "The ports mappings field format is invalid.")
        for key in ("install_command", "build_command", "start_command"):
            check(key, bool(rules.SHELL_SAFE.fullmatch(str(get(key)))) and len(str(get(key))) <= 1000,
                  f"The {key.replace('_', ' ')} contains characters that are not allowed.")
        check("custom_docker_run_options", bool(rules.SHELL_SAFE.fullmatch(str(get("custom_docker_run_options"))))
              and len(str(get("custom_docker_run_options"))) <= 2000,
              "The custom docker run options contains characters that are not allowed.")
        for key in ("base_directory", "publish_directory"):
            check(key, bool(rules.DIRECTORY_PATH.fullmatch(str(get(key)))),
                  f"The {key.replace('_', ' ')} must be a valid directory path starting with /.")
        check("redirect", get("redirect") in ("www", "non-www", "both"), "The selected redirect is invalid.")
        check("static_image", get("static_image") in ("nginx:alpine",), "The selected static image is invalid.")
        check("health_check_type", get("health_check_type") in ("http", "cmd"),
              "The selected health check type is invalid.")
        check("health_check_method", get("health_check_method") in ("GET", "HEAD", "POST", "OPTIONS"),
              "The selected health check method is invalid.")
        check("health_check_scheme", get("health_check_scheme") in ("http", "https"),
              "The selected health check scheme is invalid.")
        if "domains" in body and (problems := rules.domain_errors(get("domains"))) and kind is not None:
            errors.setdefault("domains", []).extend(problems)
        return errors

    def _validate_data(self, token: Token, body: dict[str, Any], server: NodeServer,
                       uuid: str | None) -> Response | None:
        """validateDataApplications (:4429-4490)."""
        if isinstance(body.get("ports_mappings"), str):
            seen: set[str] = set()
            for mapping in body["ports_mappings"].split(","):
                first = mapping.split(":")[0]
                if first in seen:
                    return rules.invalid({"ports_mappings": "The first number before : should be unique between "
                                                            "mappings."})
                seen.add(first)
        if "custom_labels" in body and body["custom_labels"] is not None:
            if rules.b64_text(body["custom_labels"]) is None:
                return rules.invalid({"custom_labels": "The custom_labels should be base64 encoded."})
        if "domains" in body and self._proxy_should_run(server):
            problems = rules.domain_errors(body["domains"])
            if problems:
                return rules.invalid(problems)  # errors as a JSON list (NOTES.md §a)
            normalized = rules.normalize_domains(body["domains"]) if isinstance(body["domains"], str) else None
            conflicts = self._domains_in_use(token.team_id, rules.domain_list(normalized or ""), uuid)
            if conflicts and not _bool(body.get("force_domain_override")):
                return JSONResponse({"message": "Domain conflicts detected. Use force_domain_override=true to "
                                                "proceed.", "conflicts": conflicts,
                                     "warning": "Using the same domain for multiple resources can cause routing "
                                                "conflicts and unpredictable behavior."}, 409)
        return None

    @staticmethod
    def _proxy_should_run(server: NodeServer) -> bool:
        """Server::isProxyShouldRun: a proxy type other than NONE and not a build server."""
        return str(server.proxy.get("type") or "").upper() != "NONE" and not server.settings.get("is_build_server")

    # -- read, update, delete ---------------------------------------------------------------------------

    def _list_applications(self, token: Token, sensitive: bool, request: Request, raw: bytes,
                           body: Any) -> Response:
        tag = request.query_params.get("tag")
        return JSONResponse([self._app_json(a, sensitive) for a in self.applications.values()
                             if a.team_id == token.team_id and (tag is None or tag in a.tags)])

    def _get_application(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                         uuid: str) -> Response:
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found."}, 404)
        return JSONResponse(self._app_json(app, sensitive))

    def _update_application(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                            uuid: str) -> Response:
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found"}, 404)
        if not isinstance(body, dict):
            return JSONResponse({"message": "Invalid request.", "error": "Invalid JSON."}, 400)
        server = self.servers[app.server_uuid]
        # :2826-2840 ports_exposes checked before the validator runs
        if isinstance(body.get("ports_exposes"), str):
            if not all(p.isdigit() for p in body["ports_exposes"].split(",")):
                return rules.invalid({"ports_exposes": "The ports_exposes should be a comma separated list of "
                                                       "numbers."})
        data_problem = self._validate_data(token, body, server, app.uuid)
        if data_problem is not None:
            return data_problem
        type_rules = dict(SHARED_RULES, name="string", description="string|nullable", watch_paths="string|nullable",
                          is_http_basic_auth_enabled="boolean|nullable", http_basic_auth_username="string",
                          http_basic_auth_password="string", build_pack="string")  # noqa: S106 - a rule
        errors = rules.fields(body, UPDATE_ALLOWED, type_rules)
        shape = self._shape_errors(body, None)
        if isinstance(body.get("build_pack"), str) and body["build_pack"] not in rules.BUILD_PACKS:
            shape.setdefault("build_pack", []).append("The selected build pack is invalid.")
        for key, messages in shape.items():
            errors.setdefault(key, []).extend(messages)
        if errors:
            return rules.invalid(errors)
        if app.fields.get("build_pack") == "dockercompose" and "domains" in body:
            return rules.invalid({"domains": "The domains field cannot be used for dockercompose applications. "
                                             "Use docker_compose_domains instead to set domains for individual "
                                             "services."})
        for key in SETTING_FIELDS:
            if key in body:
                app.settings[key] = _bool(body[key]) if key.startswith(("is_", "disable_", "inject_",
                                                                         "include_")) else _column(key, body[key])
        for key, setting in (("is_static", "is_static"), ("is_spa", "is_spa"),
                             ("is_auto_deploy_enabled", "is_auto_deploy_enabled"),
                             ("is_force_https_enabled", "is_force_https_enabled"),
                             ("is_preview_deployments_enabled", "is_preview_deployments_enabled"),
                             ("connect_to_docker_network", "connect_to_docker_network"),
                             ("use_build_server", "is_build_server_enabled"),
                             ("use_build_secrets", "use_build_secrets"),
                             ("is_container_label_escape_enabled", "is_container_label_escape_enabled"),
                             ("is_preserve_repository_enabled", "is_preserve_repository_enabled")):
            if key in body and body[key] is not None:
                app.settings[setting] = _bool(body[key])
        for key, value in body.items():
            if key not in REQUEST_ONLY:
                app.fields[key] = _column(key, value)
        relabel = False
        if "domains" in body and self._proxy_should_run(server):  # :3113-3115, silently dropped otherwise
            domains = body["domains"]
            app.fields["fqdn"] = rules.normalize_domains(domains) if isinstance(domains, str) else None
            relabel = True
        if any(k in body for k in ("is_http_basic_auth_enabled", "http_basic_auth_username",
                                   "http_basic_auth_password")):
            relabel = True
        if relabel and app.settings["is_container_label_readonly_enabled"] and self._proxy_should_run(server):
            app.fields["custom_labels"] = self._generated_labels(app)  # :3127-3129
        app.updated_at = now_iso()
        if _bool(body.get("instant_deploy")):
            result = self._queue_deployment(app)
            if result["status"] == "skipped":
                return JSONResponse({"message": result["message"]}, 200)
        return JSONResponse({"uuid": app.uuid})

    def _delete_application(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                            uuid: str) -> Response:
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found"}, 404)
        q = request.query_params
        flags = {k: _bool(q.get(k, "true")) for k in ("delete_configurations", "delete_volumes", "docker_cleanup",
                                                      "delete_connected_networks")}
        if app.delete_at is None:
            app.delete_at = time.monotonic() + self.delete_delay
            app.delete_flags = flags
        return JSONResponse({"message": "Application deletion request queued."})

    # -- actions ----------------------------------------------------------------------------------------

    def _action_get(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                    uuid: str) -> Response:
        return self._post_required()

    def _action_start(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                      uuid: str) -> Response:
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found."}, 404)
        q = request.query_params
        result = self._queue_deployment(app, force=_bool(q.get("force", "false")),
                                        no_questions_asked=_bool(q.get("instant_deploy", "false")))
        if result["status"] == "skipped":
            return JSONResponse({"message": result["message"]})
        # :4063-4093: queue_full is not checked here, so the answer names a deployment that was never stored
        return JSONResponse({"message": "Deployment request queued.", "deployment_uuid": result["deployment_uuid"]})

    def _action_restart(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                        uuid: str) -> Response:
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found."}, 404)
        result = self._queue_deployment(app, restart_only=True)
        if result["status"] == "skipped":
            return JSONResponse({"message": result["message"]})
        return JSONResponse({"message": "Restart request queued.", "deployment_uuid": result["deployment_uuid"]})

    def _action_stop(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                     uuid: str) -> Response:
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found."}, 404)
        app.stop_at = time.monotonic() + self.stop_delay  # StopApplication::dispatch
        return JSONResponse({"message": "Application stopping request queued."})

    def _app_logs(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                  uuid: str) -> Response:
        """logs_by_uuid (:2449-2480): the first container's `docker logs -n <lines>`; 400 when nothing runs."""
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found."}, 404)
        server = self.servers.get(app.server_uuid)
        if app.container is None or server is None or server.unreachable:
            return JSONResponse({"message": "Application is not running."}, 400)
        raw_lines = request.query_params.get("lines", "100")
        lines = int(raw_lines) if raw_lines.isdigit() else 100
        lines = min(max(lines, 1), 10000)  # normalizeLogLines
        return JSONResponse({"logs": "\n".join(app.container.logs[-lines:])})

    # -- envs -------------------------------------------------------------------------------------------

    def _list_envs(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                   uuid: str) -> Response:
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found"}, 404)
        # :3221 non-preview (by id), then preview (by id)
        ordered = sorted(app.envs, key=lambda e: (e.is_preview, e.id))
        return JSONResponse([self._env_json(e, sensitive) for e in ordered])

    def _find_env(self, app: Application, key: str, preview: bool) -> EnvVar | None:
        return next((e for e in app.envs if e.key == key and e.is_preview == preview), None)

    def _new_env(self, app: Application, item: dict[str, Any]) -> EnvVar:
        env = EnvVar(self._id(), new_uuid(), item["key"], item.get("value"),
                     is_preview=_bool(item.get("is_preview", False)), is_literal=_bool(item.get("is_literal", False)),
                     is_multiline=_bool(item.get("is_multiline", False)),
                     is_shown_once=_bool(item.get("is_shown_once", False)),
                     is_runtime=_bool(item.get("is_runtime", True)), is_buildtime=_bool(item.get("is_buildtime", True)),
                     comment=item.get("comment"))
        app.envs.append(env)
        if not env.is_preview and self._find_env(app, env.key, True) is None:
            # EnvironmentVariable.php:95-118: the preview twin
            app.envs.append(EnvVar(self._id(), new_uuid(), env.key, env.value, is_preview=True,
                                   is_literal=env.is_literal, is_multiline=env.is_multiline,
                                   is_shown_once=env.is_shown_once, is_runtime=env.is_runtime,
                                   is_buildtime=env.is_buildtime, comment=env.comment))
        app.env_revision += 1
        return env

    @staticmethod
    def _env_errors(item: dict[str, Any]) -> dict[str, list[str]]:
        errors = rules.fields(item, None, ENV_RULES)
        key = item.get("key")
        if isinstance(key, str) and not rules.ENV_KEY.fullmatch(key.strip()):
            errors.setdefault("key", []).append("The key may only contain letters, numbers, underscores and dots, "
                                                "and must start with a letter or underscore.")
        comment = item.get("comment")
        if isinstance(comment, str) and len(comment) > 256:
            errors.setdefault("comment", []).append("The comment may not be greater than 256 characters.")
        return errors

    def _update_env_fields(self, app: Application, env: EnvVar, item: dict[str, Any]) -> None:
        env.value = item.get("value")
        env.is_literal = _bool(item.get("is_literal", False))
        env.is_multiline = _bool(item.get("is_multiline", False))
        env.is_shown_once = _bool(item.get("is_shown_once", False))
        if "is_runtime" in item:
            env.is_runtime = _bool(item["is_runtime"])
        if "is_buildtime" in item:
            env.is_buildtime = _bool(item["is_buildtime"])
        if "comment" in item:
            env.comment = item["comment"]
        env.updated_at = now_iso()
        app.env_revision += 1

    def _create_env(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                    uuid: str) -> Response:
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found"}, 404)
        if isinstance(body.get("key"), str):
            body["key"] = body["key"].strip()
        errors = self._env_errors(body)
        for key in body:
            if key not in ENV_ITEM_KEYS:
                errors.setdefault(key, []).append("This field is not allowed.")
        if errors:
            return rules.invalid(errors)
        body["key"] = body["key"].replace(" ", "_")
        if self._find_env(app, body["key"], _bool(body.get("is_preview", False))) is not None:
            return JSONResponse({"message": "Environment variable already exists. Use PATCH request to update it."},
                                409)
        env = self._new_env(app, body)
        return JSONResponse({"uuid": env.uuid}, 201)

    def _update_env(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                    uuid: str) -> Response:
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found"}, 404)
        if isinstance(body.get("key"), str):
            body["key"] = body["key"].strip()
        errors = self._env_errors(body)
        for key in body:
            if key not in ENV_ITEM_KEYS:
                errors.setdefault(key, []).append("This field is not allowed.")
        if errors:
            return rules.invalid(errors)
        env = self._find_env(app, body["key"].replace(" ", "_"), _bool(body.get("is_preview", False)))
        if env is None:
            return JSONResponse({"message": "Environment variable not found."}, 404)
        self._update_env_fields(app, env, body)
        return JSONResponse(self._env_json(env, sensitive), 201)

    def _bulk_envs(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                   uuid: str) -> Response:
        bad = rules.incoming(raw, body, request)
        if bad is not None:
            return bad
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found"}, 404)
        data = body.get("data") if isinstance(body, dict) else None
        if not data:
            return JSONResponse({"message": "Bulk data is required."}, 400)
        out = []
        for raw_item in data:
            item = {k: v for k, v in (raw_item or {}).items() if k in ENV_ITEM_KEYS}  # collect()->only(), silent
            if isinstance(item.get("key"), str):
                item["key"] = item["key"].strip()
            errors = self._env_errors(item)
            if errors:
                return rules.invalid(errors)  # items before this one stay saved (no transaction)
            key = item["key"].replace(" ", "_")
            env = self._find_env(app, key, _bool(item.get("is_preview", False)))
            if env is None:
                env = self._new_env(app, {**item, "key": key})
            else:
                self._update_env_fields(app, env, item)
            out.append(self._env_json(env, sensitive))
        return JSONResponse(out, 201)

    def _delete_env(self, token: Token, sensitive: bool, request: Request, raw: bytes, body: Any,
                    uuid: str, env_uuid: str) -> Response:
        app = self._visible_app(token, uuid)
        if app is None:
            return JSONResponse({"message": "Application not found."}, 404)
        env = next((e for e in app.envs if e.uuid == env_uuid), None)
        if env is None:
            return JSONResponse({"message": "Environment variable not found."}, 404)
        app.envs.remove(env)
        app.env_revision += 1
        return JSONResponse({"message": "Environment variable deleted."})


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _app_name(repository: str, branch: str) -> str:
    """generate_application_name (bootstrap/helpers/applications.php): `<repo>:<branch>-<random>`."""
    repo = repository.rstrip("/").removesuffix(".git").rsplit("/", 1)[-1]
    return f"{repo}:{branch}-{new_uuid()}"


def labels_b64(text: str) -> str:
    """custom_labels as the API takes them (base64 of one label a line)."""
    return base64.b64encode(text.encode()).decode()
