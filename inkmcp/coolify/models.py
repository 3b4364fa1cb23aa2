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
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


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
