"""Pydantic models of the Coolify 4.3.11 request and response bodies InkMCP uses.

Requests forbid unknown fields: real Coolify answers 422 for any key its allow-list lacks (NOTES.md §a), so a
misspelt field must fail here, before a request leaves, with the field's name. Responses ignore unknown fields:
Coolify adds fields between versions, and a new field must not break `pulumi up` or a deploy.

Field lists follow the spec (`inkmcp/coolify/openapi-4.3.11.json`) and the controllers at 379abb2
(`ServersController.php:484` create allow-list, `:662` update allow-list, `ServerSentinelController.php:14-23`,
`ServerProxyController.php` payload()). `tests/coolify/test_client_contract.py` checks every request model
against the spec's schema so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    nullable: ClassVar[frozenset[str]] = frozenset()
    """Fields the spec types as `[string, null]`: an explicit None is sent (it clears the value). For every other
    field None means "leave as is" and is not sent: the spec types them non-null, so null would break the
    contract even where the controller happens to accept it."""

    def body(self) -> dict[str, Any]:
        """The JSON body: the fields the caller set, minus None where the spec does not allow null."""
        return {k: v for k, v in self.model_dump(mode="json", exclude_unset=True).items()
                if v is not None or k in self.nullable}


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


ProxyTypeIn = Literal["traefik", "caddy", "none"]


# --- servers -----------------------------------------------------------------------------------------------


class ServerCreate(_Request):
    """`POST /servers` (create-server). `ip` and `private_key_uuid` are required by the controller."""

    ip: str = Field(min_length=1)
    private_key_uuid: str = Field(min_length=1)
    name: str | None = Field(default=None, max_length=255)
    description: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    is_build_server: bool | None = None
    instant_validate: bool | None = None
    proxy_type: ProxyTypeIn | None = None


class ServerUpdate(_Request):
    """`PATCH /servers/{uuid}` (update-server-by-uuid); answers 201 `{uuid}`."""

    name: str | None = Field(default=None, max_length=255)
    description: str | None = None
    ip: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    private_key_uuid: str | None = None
    is_build_server: bool | None = None
    instant_validate: bool | None = None
    proxy_type: ProxyTypeIn | None = None
    concurrent_builds: int | None = Field(default=None, ge=1)
    dynamic_timeout: int | None = Field(default=None, ge=1)
    deployment_queue_limit: int | None = Field(default=None, ge=1)
    server_disk_usage_notification_threshold: int | None = Field(default=None, ge=1, le=100)
    server_disk_usage_check_frequency: str | None = None
    connection_timeout: int | None = Field(default=None, ge=1, le=300)


class ServerSettings(_Response):
    """The `settings` object of a server (ServerSetting schema; the fields InkMCP reads)."""

    is_build_server: bool = False
    is_reachable: bool = False
    is_usable: bool = False
    force_disabled: bool = False
    is_sentinel_enabled: bool | None = None
    is_metrics_enabled: bool | None = None
    wildcard_domain: str | None = None
    concurrent_builds: int | None = None
    deployment_queue_limit: int | None = None


class Server(_Response):
    """An item of `GET /servers` or `GET /servers/{uuid}`."""

    uuid: str
    ip: str
    name: str | None = None
    description: str | None = None
    user: str | None = None
    port: int | None = None
    is_reachable: bool | None = None
    is_usable: bool | None = None
    validation_logs: str | None = None
    settings: ServerSettings = Field(default_factory=ServerSettings)
    proxy: dict[str, Any] | None = None
    """`GET /servers/{uuid}` only: Coolify's schemaless proxy state (`type`, `status`, `last_saved_settings`,
    `last_applied_settings`, …; the spec types it just "object")."""

    @property
    def usable(self) -> bool:
        """What Coolify checks before it runs anything there (`Server::isFunctional`, minus the IP placeholder)."""
        return self.settings.is_reachable and self.settings.is_usable and not self.settings.force_disabled


class Uuid(_Response):
    uuid: str


class Message(_Response):
    message: str


class ValidateServer(_Request):
    """`POST /servers/{uuid}/validate` body (optional). `install: true` lets Coolify install Docker and restart the
    daemon: never sent by InkMCP (the muscle stack installs and hardens Docker itself)."""

    install: bool | None = None


# --- proxy -------------------------------------------------------------------------------------------------


class ProxySettings(_Response):
    """`GET|PATCH /servers/{uuid}/proxy` and the `PUT …/proxy/configuration` answer.

    `configuration` is Coolify's database copy of the proxy compose (`last_saved_proxy_configuration`), the one
    every proxy start writes to disk. The key is absent unless the token can read sensitive data
    (`read:sensitive` or `root`, admin user; `ServerProxyController.php:66-71`) and null when nothing is stored
    yet: `has_configuration_field` tells the two apart.
    """

    proxy_type: str | None = None
    status: str | None = None
    redirect_enabled: bool = True
    redirect_url: str | None = None
    generate_exact_labels: bool = False
    configuration: str | None = None

    @property
    def has_configuration_field(self) -> bool:
        return "configuration" in self.model_fields_set


class ProxyConfiguration(_Request):
    """`PUT /servers/{uuid}/proxy/configuration`. Coolify takes base64 or raw YAML (it decodes when the text is
    valid base64, `ServerProxyController.php` saveConfiguration); InkMCP always sends base64, because Laravel's
    TrimStrings middleware would trim raw YAML and multi-line text is what the spec says to encode."""

    configuration: str = Field(min_length=1)

    @classmethod
    def from_yaml(cls, compose: str) -> ProxyConfiguration:
        if not compose.strip():
            raise ValueError("the proxy configuration is empty; Coolify refuses it (422 configuration required)")
        return cls(configuration=base64.b64encode(compose.encode()).decode())


# --- sentinel ----------------------------------------------------------------------------------------------


class SentinelSettings(_Response):
    """`GET|PATCH /servers/{uuid}/sentinel` (`ServerSentinelController::transform`)."""

    is_sentinel_enabled: bool
    is_metrics_enabled: bool = False
    is_sentinel_debug_enabled: bool = False
    sentinel_metrics_refresh_rate_seconds: int | None = None
    sentinel_metrics_history_days: int | None = None
    sentinel_push_interval_seconds: int | None = None
    sentinel_updated_at: str | None = None


class SentinelUpdate(_Request):
    """`PATCH /servers/{uuid}/sentinel`. Turning Sentinel off also clears metrics and debug
    (`ServerSentinelController.php`, "matches Livewire toggleSentinel")."""

    is_sentinel_enabled: bool | None = None
    is_metrics_enabled: bool | None = None
    is_sentinel_debug_enabled: bool | None = None
    sentinel_metrics_refresh_rate_seconds: int | None = Field(default=None, ge=1)
    sentinel_metrics_history_days: int | None = Field(default=None, ge=1)
    sentinel_push_interval_seconds: int | None = Field(default=None, ge=10)
    sentinel_custom_url: str | None = None

    nullable: ClassVar[frozenset[str]] = frozenset({"sentinel_custom_url"})


SENTINEL_OFF = SentinelUpdate(is_sentinel_enabled=False, is_metrics_enabled=False)
"""What registration sends: review #9's body. Sentinel cannot work on InkMCP run servers (runbooks/gvisor-decision.md
§4.5: it needs `--pid host` and the Docker socket, and its push URL is closed to run servers)."""


# --- shared helpers ----------------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class _EncodedRequest(_Request):
    """A request with fields Coolify wants base64-encoded (NOTES.md §b, §h: `custom_labels`, `dockerfile`,
    `postgres_conf`, …). Callers set plain text; `body()` encodes, so no caller can forget it or encode twice."""

    base64_fields: ClassVar[frozenset[str]] = frozenset()

    def body(self) -> dict[str, Any]:
        out = super().body()
        for name in self.base64_fields & out.keys():
            if out[name] is not None:
                out[name] = _b64(out[name])
        return out


NAME_PATTERN = r"^[A-Za-z0-9 \-_.@/&()#,:+]+$"
"""Coolify's `ValidationPatterns::nameRules()` for project and environment names (3 to 255 characters)."""


# --- projects and environments (ProjectController.php) -----------------------------------------------------


class ProjectCreate(_Request):
    """`POST /projects` (allow-list `name`, `description`). Coolify creates a `production` environment with it."""

    name: str = Field(min_length=3, max_length=255, pattern=NAME_PATTERN)
    description: str | None = None


class EnvironmentCreate(_Request):
    """`POST /projects/{uuid}/environments` (allow-list `name`); 409 when the name exists in the project."""

    name: str = Field(min_length=3, max_length=255, pattern=NAME_PATTERN)


class Environment(_Response):
    """An item of `GET /projects/{uuid}/environments` (`{id, name, uuid}`) or `GET /projects/{uuid}/{env}`."""

    name: str
    uuid: str | None = None
    id: int | None = None
    description: str | None = None
    project_id: int | None = None


class Project(_Response):
    """`GET /projects` items (`{id, uuid, name, description}`) and `GET /projects/{uuid}` (with `environments`)."""

    uuid: str
    name: str
    id: int | None = None
    description: str | None = None
    environments: list[Environment] = Field(default_factory=list)


# --- applications (ApplicationsController.php) --------------------------------------------------------------

BuildPack = Literal["nixpacks", "railpack", "static", "dockerfile", "dockercompose"]
Redirect = Literal["www", "non-www", "both"]


class _ApplicationSettable(_EncodedRequest):
    """Fields both `POST /applications/{public,dockerfile}` and `PATCH /applications/{uuid}` accept: each is in
    the spec's request schema of all three operations AND in the controller's allow-lists at 379abb2
    (ApplicationsController.php:1194 create, :2801 update, plus APPLICATION_SETTING_FIELDS :40). Fields only the
    controller knows (`custom_network_aliases`, `health_check_type`, `health_check_command`,
    `custom_nginx_configuration`) are left out: the spec, which the stand-in and `validate_with` enforce, would
    refuse them. Rules follow `sharedDataApplications()` (bootstrap/helpers/api.php:113)."""

    base64_fields: ClassVar[frozenset[str]] = frozenset({"custom_labels"})

    name: str | None = Field(default=None, max_length=255)
    description: str | None = None
    domains: str | None = None
    """Comma-separated full URLs (`https://a.example.com,https://b.example.com`); `:port` picks the container port.
    An empty string clears them."""
    ports_exposes: str | None = Field(default=None, pattern=r"^\d+(,\d+)*$")
    ports_mappings: str | None = Field(default=None, pattern=r"^\d+:\d+(,\d+:\d+)*$")
    base_directory: str | None = None
    docker_registry_image_name: str | None = None
    docker_registry_image_tag: str | None = None
    is_force_https_enabled: bool | None = None
    is_preview_deployments_enabled: bool | None = None
    health_check_enabled: bool | None = None
    health_check_path: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9/\-_.~%,;]+$")
    health_check_port: str | None = Field(default=None, pattern=r"^\d{1,5}$")
    """The spec types it string, the controller integer: a numeric string satisfies both (NOTES.md §b)."""
    health_check_host: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9.\-_]+$")
    health_check_method: Literal["GET", "HEAD", "POST", "OPTIONS"] | None = None
    health_check_return_code: int | None = None
    health_check_scheme: Literal["http", "https"] | None = None
    health_check_response_text: str | None = None
    health_check_interval: int | None = Field(default=None, ge=1)
    health_check_timeout: int | None = Field(default=None, ge=1)
    health_check_retries: int | None = Field(default=None, ge=0)
    health_check_start_period: int | None = Field(default=None, ge=0)
    limits_memory: str | None = Field(default=None, pattern=r"^\d+[bkmg]?$")
    """Docker's memory syntax, e.g. `"512m"`; `"0"` means unlimited."""
    limits_memory_swap: str | None = Field(default=None, pattern=r"^\d+[bkmg]?$")
    limits_memory_swappiness: int | None = Field(default=None, ge=0, le=100)
    limits_memory_reservation: str | None = Field(default=None, pattern=r"^\d+[bkmg]?$")
    limits_cpus: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?$")
    limits_cpuset: str | None = None
    limits_cpu_shares: int | None = Field(default=None, ge=0)
    custom_labels: str | None = None
    """Plain text, one `key=value` label per line; sent base64-encoded."""
    custom_docker_run_options: str | None = Field(default=None, max_length=2000)
    pre_deployment_command: str | None = None
    pre_deployment_command_container: str | None = None
    post_deployment_command: str | None = None
    post_deployment_command_container: str | None = None
    redirect: Redirect | None = None
    instant_deploy: bool | None = None
    use_build_server: bool | None = None
    use_build_secrets: bool | None = None
    connect_to_docker_network: bool | None = None
    force_domain_override: bool | None = None
    is_container_label_escape_enabled: bool | None = None
    is_git_submodules_enabled: bool | None = None
    is_git_lfs_enabled: bool | None = None
    is_git_shallow_clone_enabled: bool | None = None
    disable_build_cache: bool | None = None
    inject_build_args_to_dockerfile: bool | None = None
    include_source_commit_in_build: bool | None = None
    is_env_sorting_enabled: bool | None = None
    stop_grace_period: int | None = Field(default=None, ge=1, le=3600)
    docker_images_to_keep: int | None = Field(default=None, ge=0, le=100)
    is_gzip_enabled: bool | None = None
    is_stripprefix_enabled: bool | None = None
    is_log_drain_enabled: bool | None = None
    is_consistent_container_name_enabled: bool | None = None
    custom_internal_name: str | None = None
    max_restart_count: int | None = Field(default=None, ge=0)


class _ApplicationCreate(_ApplicationSettable):
    """Where a new application goes. The spec requires both environment fields (the controller needs one): InkMCP
    sends both (NOTES.md §b)."""

    project_uuid: str = Field(min_length=1)
    server_uuid: str = Field(min_length=1)
    environment_name: str = Field(min_length=1)
    environment_uuid: str = Field(min_length=1)
    destination_uuid: str | None = None
    """Needed only when the server has more than one destination (400 otherwise)."""
    autogenerate_domain: bool | None = None
    tags: list[str] | None = None


class PublicApplicationCreate(_ApplicationCreate):
    """`POST /applications/public`: an app built from a public git repository at a pinned commit."""

    git_repository: str = Field(min_length=1)
    git_branch: str = Field(min_length=1)
    build_pack: BuildPack
    git_commit_sha: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._\-/]*$")
    install_command: str | None = None
    build_command: str | None = None
    start_command: str | None = None
    publish_directory: str | None = None
    is_static: bool | None = None
    is_spa: bool | None = None
    is_auto_deploy_enabled: bool | None = None
    static_image: Literal["nginx:alpine"] | None = None
    dockerfile_location: str | None = None
    watch_paths: str | None = None


class DockerfileApplicationCreate(_ApplicationCreate):
    """`POST /applications/dockerfile`: an app built from a Dockerfile given inline (plain text here, base64 on
    the wire). Coolify then sets `ports_exposes` to 80 whatever is sent (NOTES.md §b): PATCH it after create."""

    base64_fields: ClassVar[frozenset[str]] = frozenset({"custom_labels", "dockerfile"})

    dockerfile: str = Field(min_length=1)


class ApplicationUpdate(_ApplicationSettable):
    """`PATCH /applications/{uuid}`: the spec's fields that the controller's update allow-list also has (not the
    project/server/environment/destination, which the spec lists but Coolify refuses with 422)."""

    git_repository: str | None = None
    git_branch: str | None = None
    git_commit_sha: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._\-/]*$")
    build_pack: BuildPack | None = None
    install_command: str | None = None
    build_command: str | None = None
    start_command: str | None = None
    publish_directory: str | None = None
    is_static: bool | None = None
    is_spa: bool | None = None
    is_auto_deploy_enabled: bool | None = None
    dockerfile_location: str | None = None
    watch_paths: str | None = None
    is_consistent_container_name_enabled: bool | None = None
    """An application setting: the container is named after the application uuid (no rolling update then)."""


class ApplicationCreated(_Response):
    """201 of the create operations: `{uuid, domains}` (the spec documents only `uuid`)."""

    uuid: str
    domains: str | None = None


class Application(_Response):
    """`GET /applications/{uuid}` and list items: the fields InkMCP reads."""

    uuid: str
    name: str | None = None
    description: str | None = None
    status: str | None = None
    """`running:healthy`, `running:unhealthy`, `running:unknown`, `starting:unknown`, `degraded:unhealthy`,
    `exited`, … refreshed by Coolify asynchronously (NOTES.md §d)."""
    fqdn: str | None = None
    build_pack: str | None = None
    git_repository: str | None = None
    git_branch: str | None = None
    git_commit_sha: str | None = None
    ports_exposes: str | None = None
    limits_memory: str | None = None
    limits_memory_reservation: str | None = None
    limits_cpus: str | None = None
    custom_labels: str | None = Field(default=None, repr=False)
    """Plain `key=value` lines: Coolify stores and returns them base64-encoded (as requests send them), decoded
    here so a label can be looked for by text (a base64 substring depends on the label's offset)."""
    environment_id: int | None = None
    destination_id: int | None = None
    destination: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None

    @field_validator("custom_labels")
    @classmethod
    def _decoded_labels(cls, v: str | None) -> str | None:
        if not v:
            return v
        try:
            return base64.b64decode(v, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return v  # already text (an older Coolify, or labels set in its UI)

    @property
    def running(self) -> bool:
        return (self.status or "").startswith("running")

    @property
    def healthy(self) -> bool:
        return self.status == "running:healthy"


class ApplicationLogs(_Response):
    logs: str = ""


class ActionQueued(_Response):
    """`POST /applications/{uuid}/start|restart`: `{message, deployment_uuid}`; the uuid is absent when Coolify
    skipped the request (a deployment of the same commit is already queued)."""

    message: str
    deployment_uuid: str | None = None


# --- environment variables ---------------------------------------------------------------------------------

ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*$"


class EnvVarSet(_Request):
    """One variable for `POST|PATCH /applications/{uuid}/envs` and an item of `PATCH …/envs/bulk` (matched by
    `key` + `is_preview`). `is_runtime`, `is_buildtime`, `comment` are in the controller's allow-list (:3755) but
    not in the spec (NOTES.md §b): on the single-variable routes the client lets them through as documented
    deviations; in bulk items the spec does not restrict keys."""

    key: str = Field(pattern=ENV_KEY_PATTERN)
    value: str = Field(repr=False)
    is_preview: bool | None = None
    is_literal: bool | None = None
    is_multiline: bool | None = None
    is_shown_once: bool | None = None
    is_runtime: bool | None = None
    is_buildtime: bool | None = None
    comment: str | None = Field(default=None, max_length=256)


class EnvVarBulk(_Request):
    """`PATCH /applications/{uuid}/envs/bulk`: upsert by key; returns every upserted variable."""

    data: list[EnvVarSet] = Field(min_length=1)


class EnvVar(_Response):
    """An EnvironmentVariable. `value`/`real_value` are absent unless the token can read sensitive data."""

    uuid: str
    key: str
    value: str | None = Field(default=None, repr=False)
    real_value: str | None = Field(default=None, repr=False)
    is_preview: bool = False
    is_literal: bool = False
    is_multiline: bool = False
    is_shown_once: bool = False
    is_runtime: bool | None = None
    is_buildtime: bool | None = None
    is_shared: bool | None = None
    comment: str | None = None


# --- deploy and deployments (DeployController.php) ---------------------------------------------------------

DEPLOYMENT_FINAL = frozenset({"finished", "failed", "cancelled-by-user"})
"""`ApplicationDeploymentStatus`: queued → in_progress → one of these (NOTES.md §d)."""

SKIPPED_MESSAGE = "Deployment already queued for this commit."


class DeployItem(_Response):
    """One item of `POST /deploy`'s `deployments`."""

    message: str | None = None
    resource_uuid: str | None = None
    deployment_uuid: str | None = None


class DeployAnswer(_Response):
    deployments: list[DeployItem] = Field(default_factory=list)


class DeployResult(_Response):
    """What `CoolifyClient.deploy` returns for one application.

    `skipped`: Coolify did not queue a new deployment because one for the same commit is queued or running
    (`queue_application_deployment` status `skipped`). DeployController::deploy_resource (379abb2, line ~548)
    still returns the fresh uuid it generated before queueing, which names no deployment: the client drops it
    (`deployment_uuid` None) and the caller finds the running one with `list_deployments`."""

    resource_uuid: str
    message: str
    deployment_uuid: str | None = None
    skipped: bool = False


class DeploymentLogLine(_Response):
    """One entry of a deployment's `logs` (a JSON-encoded string holding a list of these)."""

    output: str = ""
    type: str = "stdout"
    command: str | None = None
    timestamp: str | None = None
    hidden: bool = False
    batch: int | None = None
    order: int | None = None


class Deployment(_Response):
    """ApplicationDeploymentQueue (`GET /deployments/{uuid}` and items of the per-application list)."""

    deployment_uuid: str
    status: str
    commit: str | None = None
    commit_message: str | None = None
    application_id: str | int | None = None
    application_name: str | None = None
    server_name: str | None = None
    server_id: int | None = None
    deployment_url: str | None = None
    force_rebuild: bool | None = None
    restart_only: bool | None = None
    pull_request_id: int | None = None
    created_at: str | None = None
    updated_at: str | None = None
    logs: str | None = Field(default=None, repr=False)
    """JSON text; absent without `read:sensitive` (NOTES.md §b). Read it with `log_lines()`."""

    @property
    def finished(self) -> bool:
        return self.status in DEPLOYMENT_FINAL

    def log_lines(self, *, include_hidden: bool = False) -> list[DeploymentLogLine]:
        """The build log, in order, without Coolify's hidden bookkeeping entries unless asked."""
        if not self.logs:
            return []
        try:
            raw = json.loads(self.logs)
        except ValueError:
            return [DeploymentLogLine(output=self.logs)]
        lines = [DeploymentLogLine.model_validate(x) for x in raw if isinstance(x, dict)]
        # ApplicationDeploymentQueue::addLogEntry (:205-210) gives every entry but the first `order` = its position
        # (count + 1), so an entry without one is at its position in the array (the first: 1).
        position = {id(x): x.order if x.order is not None else i + 1 for i, x in enumerate(lines)}
        lines.sort(key=lambda x: position[id(x)])
        return [x for x in lines if include_hidden or not x.hidden]


class DeploymentPage(_Response):
    """`GET /deployments/applications/{uuid}?skip&take`: `{count, deployments}` (the spec says an array)."""

    count: int = 0
    deployments: list[Deployment] = Field(default_factory=list)


# --- databases (DatabasesController.php) -------------------------------------------------------------------


class PostgresCreate(_EncodedRequest):
    """`POST /databases/postgresql` (allow-list DatabasesController.php:489 + the common create fields)."""

    base64_fields: ClassVar[frozenset[str]] = frozenset({"postgres_conf"})

    project_uuid: str = Field(min_length=1)
    server_uuid: str = Field(min_length=1)
    environment_name: str = Field(min_length=1)
    environment_uuid: str = Field(min_length=1)
    destination_uuid: str | None = None
    name: str | None = Field(default=None, max_length=255)
    description: str | None = None
    image: str | None = None
    postgres_user: str | None = None
    postgres_password: str | None = Field(default=None, repr=False)
    postgres_db: str | None = None
    postgres_initdb_args: str | None = None
    postgres_host_auth_method: str | None = None
    postgres_conf: str | None = None
    """Plain text (postgresql.conf lines); sent base64-encoded."""
    is_public: bool | None = None
    public_port: int | None = Field(default=None, ge=1024, le=65535)
    public_port_timeout: int | None = Field(default=None, ge=1)
    limits_memory: str | None = Field(default=None, pattern=r"^\d+[bkmg]?$")
    limits_memory_swap: str | None = Field(default=None, pattern=r"^\d+[bkmg]?$")
    limits_memory_swappiness: int | None = Field(default=None, ge=0, le=100)
    limits_memory_reservation: str | None = Field(default=None, pattern=r"^\d+[bkmg]?$")
    limits_cpus: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?$")
    limits_cpuset: str | None = None
    limits_cpu_shares: int | None = Field(default=None, ge=0)
    instant_deploy: bool | None = None
    tags: list[str] | None = None


class DatabaseCreated(_Response):
    """201 `{uuid, internal_db_url, external_db_url?}` (the spec says 200 without a schema). The URLs carry the
    password: SecretStr, never in a repr or log."""

    uuid: str
    internal_db_url: SecretStr | None = None
    external_db_url: SecretStr | None = None


class Database(_Response):
    """`GET /databases/{uuid}` (the spec's schema is a placeholder string; these are the columns InkMCP reads).
    Passwords and URLs are present only for `read:sensitive` tokens."""

    uuid: str
    name: str | None = None
    status: str | None = None
    image: str | None = None
    postgres_user: str | None = None
    postgres_db: str | None = None
    postgres_password: SecretStr | None = None
    internal_db_url: SecretStr | None = None
    external_db_url: SecretStr | None = None
    is_public: bool | None = None
    public_port: int | None = None
    destination: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return (self.status or "").startswith("running")
