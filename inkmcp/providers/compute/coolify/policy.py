"""What InkMCP may ever send to Coolify: an allow-list of operations and application fields, checked on every
outgoing request, everything else refused.

Why: Coolify's application API accepts fields that, set by a tenant, give the tenant the run server (review
infra-2026-11-30 findings 2 and 6): `custom_docker_run_options` (`--privileged`, `--cap-add`, `--device` reach
the compose file), `custom_internal_name` (a container named like a platform container, trusted by the gVisor
selector; `is_consistent_container_name_enabled`, which names the container after the application's own uuid,
is allowed as a boolean, see UPDATE_FIELDS), host-path or file storages (the Docker socket), labels
(Traefik routers onto other tenants' hosts, Sablier groups of other tenants), `dockerimage` / `dockercompose`
build packs and `/restart` (Coolify's helper container with the Docker socket on the *run* server). InkMCP
builds every body itself from the build plan, so a tenant never names a Coolify field; this module is the
second wall: even if a mapping bug or a new code path let a tenant value through, the request is refused here,
before it leaves, naming the field and why.

The check runs twice: `CoolifyComputeProvider` calls `check_request` before each write, and `PolicyTransport`
wraps the httpx transport of the provider's client so a request that bypassed the provider's helpers (a new
client method) is still checked on the wire.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from inkmcp.coolify.spec import API_PREFIX
from inkmcp.coolify.transport import LeanTransport

# -- labels ---------------------------------------------------------------------------------------------------

LABEL_KEYS = frozenset({"sablier.enable", "sablier.group", "inkmcp.managed", "inkmcp.service", "inkmcp.process",
                        "inkmcp.project"})  # fmt: skip
"""The only container labels InkMCP sets (through `custom_labels`). Sablier's two select what it may stop and
start; the `inkmcp.*` ones let an operator (and the reconciler) tell InkMCP's containers apart. No `traefik.*`:
on_demand routers live in the proxy's file provider, persistent ones are Coolify's own generated labels."""
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")

# -- fields -------------------------------------------------------------------------------------------------

CREATE_FIELDS = frozenset({
    "project_uuid", "server_uuid", "environment_name", "environment_uuid", "name", "description",
    "git_repository", "git_branch", "git_commit_sha", "build_pack", "ports_exposes", "domains",
    "autogenerate_domain", "instant_deploy", "use_build_server", "is_auto_deploy_enabled",
    "is_preview_deployments_enabled", "is_force_https_enabled", "base_directory", "publish_directory",
    "is_static", "is_spa", "static_image", "install_command", "build_command", "start_command",
    "pre_deployment_command", "dockerfile_location", "limits_memory", "limits_memory_swap",
    "limits_memory_reservation", "limits_cpus", "health_check_enabled", "health_check_path", "health_check_port",
    "health_check_interval", "health_check_timeout", "health_check_retries", "health_check_start_period",
    "custom_labels", "is_consistent_container_name_enabled",
})  # fmt: skip
"""Fields `POST /applications/public` may carry (`is_consistent_container_name_enabled`: a release creates an
on_demand routed application with it, as its PATCH would set it; see UPDATE_FIELDS)."""

UPDATE_FIELDS = (CREATE_FIELDS - {"project_uuid", "server_uuid", "environment_name", "environment_uuid",
                                  "autogenerate_domain", "static_image"}) | {"is_consistent_container_name_enabled"}
"""Fields `PATCH /applications/{uuid}` may carry (Coolify refuses the placement fields there anyway).
`is_consistent_container_name_enabled` (true on on_demand's routed process): the container is then named
after the application's own uuid, which no platform container is, and Coolify ignores `custom_internal_name`
(ApplicationDeploymentJob.php:265, generateApplicationContainerName); that name is the on_demand router's
address (routes.py)."""

FORBIDDEN_FIELDS: Mapping[str, str] = {
    "custom_docker_run_options": "docker run options reach the container's compose (privileged, cap_add, devices)",
    "custom_internal_name": "a chosen container name can impersonate a platform container (review finding 6)",
    "custom_network_aliases": "network aliases can capture another container's name on the coolify network",
    "ports_mappings": "host port mappings bypass the proxy and the node firewall",
    "connect_to_docker_network": "joins the tenant to the predefined network of every other app",
    "docker_compose_raw": "compose can mount host paths and pick runtimes (review finding 1)",
    "docker_compose_location": "compose can mount host paths and pick runtimes (review finding 1)",
    "docker_compose_domains": "compose only", "docker_compose_custom_start_command": "compose only",
    "docker_compose_custom_build_command": "compose only",
    "dockerfile": "an inline Dockerfile is not the repo InkMCP read and pinned",
    "docker_registry_image_name": "pushes/pulls an image InkMCP did not build from the pinned commit",
    "docker_registry_image_tag": "pulls an image InkMCP did not build from the pinned commit",
    "pre_deployment_command_container": "a container name outside the application",
    "post_deployment_command_container": "a container name outside the application",
    "post_deployment_command": "runs after traffic switched; InkMCP runs the release in the new container",
    "custom_nginx_configuration": "nginx directives can proxy to the host or other containers",
    "is_gpu_enabled": "GPU devices are host devices", "gpu_driver": "GPU devices are host devices",
    "gpu_count": "GPU devices are host devices", "gpu_device_ids": "GPU devices are host devices",
    "gpu_options": "GPU devices are host devices",
    "limits_cpuset": "pins CPUs other tenants share", "limits_cpu_shares": "InkMCP sets limits_cpus only",
    "is_http_basic_auth_enabled": "regenerates labels", "http_basic_auth_username": "regenerates labels",
    "http_basic_auth_password": "regenerates labels", "watch_paths": "git-push auto-deploy is off",
    "manual_webhook_secret_github": "webhooks are off", "manual_webhook_secret_gitlab": "webhooks are off",
    "manual_webhook_secret_bitbucket": "webhooks are off", "manual_webhook_secret_gitea": "webhooks are off",
    "github_app_uuid": "InkMCP sends the fetch URL itself", "private_key_uuid": "InkMCP sends the fetch URL itself",
    "destination_uuid": "the placed server's only destination is used",
    "tags": "tags deploy other resources through /deploy?tag=", "force_domain_override": "takes another app's domain",
    "is_container_label_escape_enabled": "label escaping stays on", "redirect": "InkMCP serves the hosts it names",
}  # fmt: skip
"""Fields known to be dangerous or not InkMCP's, with why (used in the refusal message)."""

BUILD_PACKS = frozenset({"nixpacks", "static", "dockerfile"})
"""Only packs that build on the build server with `use_build_server` (review finding 2): dockerimage and
dockercompose deploy through Coolify's helper on the run server."""

ENV_ITEM_FIELDS = frozenset({"key", "value", "is_preview", "is_literal", "is_multiline", "is_shown_once"})
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
RESERVED_ENV_PREFIXES = ("COOLIFY_", "SERVICE_FQDN_", "SERVICE_URL_", "SOURCE_COMMIT", "INKMCP_")
"""Env keys Coolify or InkMCP set themselves: a tenant value there would spoof them."""

_HOST = re.compile(r"^(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\Z")
_DIR = re.compile(r"^/([A-Za-z0-9._\-/~@+]*)?\Z")  # Coolify's DIRECTORY_PATH_PATTERN
_COMMIT = re.compile(r"^[0-9a-f]{7,64}\Z")
_UUID = r"[a-z0-9]{8,64}"
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}\Z")
_SIZE = re.compile(r"^([0-9]+)m\Z")
_CPUS = re.compile(r"^[0-9]+(\.[0-9]+)?\Z")
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}\Z")

OPERATIONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((m, re.compile(p + r"\Z")) for m, p in (
    ("GET", r"/version"), ("GET", r"/servers"), ("GET", rf"/servers/{_UUID}"),
    ("GET", r"/projects"), ("GET", rf"/projects/{_UUID}"), ("POST", r"/projects"),
    ("DELETE", rf"/projects/{_UUID}"),
    ("GET", r"/applications"), ("GET", rf"/applications/{_UUID}"), ("POST", r"/applications/public"),
    ("PATCH", rf"/applications/{_UUID}"),
    ("DELETE", rf"/applications/{_UUID}"), ("POST", rf"/applications/{_UUID}/stop"),
    ("GET", rf"/applications/{_UUID}/logs"), ("GET", rf"/applications/{_UUID}/envs"),
    ("PATCH", rf"/applications/{_UUID}/envs/bulk"), ("DELETE", rf"/applications/{_UUID}/envs/{_UUID}"),
    ("POST", r"/deploy"), ("GET", rf"/deployments/{_UUID}"), ("GET", rf"/deployments/applications/{_UUID}"),
    ("POST", rf"/deployments/{_UUID}/cancel"),
    # --- ghkeys (issue 11): private GitHub repos through a deploy key (DEPLOY_KEYS below)
    ("POST", r"/applications/private-deploy-key"), ("GET", r"/security/keys"), ("POST", r"/security/keys"),
    ("DELETE", rf"/security/keys/{_UUID}"),
    # --- end
))  # fmt: skip
"""Every request InkMCP's compute provider may make. Not here, hence refused: storages (host paths, files),
`/restart` and `/start` and rollback (Coolify's helper on the run server, review finding 2), dockerimage /
dockerfile-inline / compose creation, services, scheduled tasks (commands in any container), clone/move."""


# --- ghkeys (issue 11): deploy keys of private GitHub repositories ------------------------------------------

_SSH_REPO = re.compile(r"^git@[A-Za-z0-9.-]{1,253}:[A-Za-z0-9][A-Za-z0-9._-]{0,99}/[A-Za-z0-9._-]{1,100}\.git\Z")
_DEPLOY_KEY_NAME = re.compile(r"^inkmcp-deploy-key-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


class DeployKeyAllowList:
    """The Coolify keys InkMCP made for private GitHub repositories (inkmcp/github/deploy_keys.py), each with the
    one `git@HOST:OWNER/REPO.git` it reads. Filled by the provider from InkMCP's own records before it sends a
    request naming one (inkmcp/providers/compute/coolify/deploy_keys.py), so a `private_key_uuid` or SSH
    `git_repository` reaches Coolify only as a pair InkMCP made: never the operator's server keys (which would let
    a build clone with the key that logs into the servers), never a key with another repository, and only
    InkMCP's own keys can be deleted."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}

    def allow(self, key_uuid: str, git_repository: str) -> None:
        if not _SSH_REPO.match(git_repository):
            raise PolicyViolation("deploy key", "git_repository", f"{git_repository!r} is not git@HOST:OWNER/REPO.git")
        self._keys[key_uuid] = git_repository

    def forget(self, key_uuid: str) -> None:
        self._keys.pop(key_uuid, None)

    def repository_of(self, key_uuid: str) -> str | None:
        return self._keys.get(key_uuid)

    def knows_url(self, git_repository: str) -> bool:
        return git_repository in self._keys.values()


DEPLOY_KEYS = DeployKeyAllowList()


def _check_security_key(where: str, body: Any) -> None:
    """`POST /security/keys`: only an InkMCP deploy key (its name, an OpenSSH private key)."""
    if not isinstance(body, Mapping) or set(body) - {"name", "description", "private_key"}:
        raise PolicyViolation(where, "body", "only name, description and private_key")
    if not _DEPLOY_KEY_NAME.match(str(body.get("name", ""))):
        raise PolicyViolation(where, "name", "only InkMCP's deploy keys (inkmcp-deploy-key-<service id>)")
    key = str(body.get("private_key", "")).strip()
    if not (key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
            and key.endswith("-----END OPENSSH PRIVATE KEY-----")):
        raise PolicyViolation(where, "private_key", "an OpenSSH private key")
# --- end


class PolicyViolation(ValueError):
    """A request InkMCP must never send. `field` names the offending field (or the operation)."""

    def __init__(self, where: str, field: str, reason: str) -> None:
        self.where = where
        self.field = field
        self.reason = reason
        super().__init__(f"{where}: {field}: {reason} (refused by InkMCP's Coolify policy before sending)")


@dataclass(frozen=True)
class Limits:
    """The ceilings a body may ask for, and whether builds must use the build server."""

    max_memory_mb: int = 16384
    max_cpus: float = 16.0
    require_build_server: bool = True


def labels_text(labels: Mapping[str, str]) -> str:
    """`custom_labels` as Coolify takes it: base64 of `key=value` lines."""
    return base64.b64encode("\n".join(f"{k}={v}" for k, v in labels.items()).encode()).decode()


def parse_labels(encoded: str) -> dict[str, str]:
    """The labels of a `custom_labels` value; PolicyViolation for one outside InkMCP's set."""
    try:
        text = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise PolicyViolation("custom_labels", "custom_labels", "not base64 of UTF-8 text") from None
    labels: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or key not in LABEL_KEYS:
            raise PolicyViolation("custom_labels", key or line,
                                  f"not one of InkMCP's labels ({', '.join(sorted(LABEL_KEYS))})")
        if not _LABEL_VALUE.match(value.strip()):
            raise PolicyViolation("custom_labels", key, f"value {value!r} is not a plain token")
        labels[key] = value.strip()
    return labels


def check_domain(url: str, where: str = "domains") -> str:
    """An `https://<host>` URL without port, path or credentials; the host in lower case."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or parts.port is not None or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username or parts.password or not _HOST.match(host):
        raise PolicyViolation(where, "domains", f"{url!r} is not https://<host name> (no port, path or user)")
    return host


def _check_application(where: str, body: Mapping[str, Any], allowed: frozenset[str], limits: Limits) -> None:
    for key in body:
        if key in FORBIDDEN_FIELDS:
            raise PolicyViolation(where, key, FORBIDDEN_FIELDS[key])
        if key not in allowed:
            raise PolicyViolation(where, key, "not a field InkMCP sends")
    if "build_pack" in body and body["build_pack"] not in BUILD_PACKS:
        raise PolicyViolation(where, "build_pack", f"{body['build_pack']!r} deploys through Coolify's helper on "
                                                   f"the run server; only {sorted(BUILD_PACKS)} (review finding 2)")
    if limits.require_build_server and body.get("use_build_server", True) is not True:
        raise PolicyViolation(where, "use_build_server", "builds run on the build server only (review finding 2)")
    for flag in ("instant_deploy", "autogenerate_domain", "is_auto_deploy_enabled", "is_preview_deployments_enabled"):
        if body.get(flag, False) is not False:
            raise PolicyViolation(where, flag, "InkMCP deploys and names hosts itself; must be false")
    if "static_image" in body and body["static_image"] != "nginx:alpine":
        raise PolicyViolation(where, "static_image", "only nginx:alpine")
    if "git_repository" in body:
        repo = urlsplit(str(body["git_repository"]))
        # --- ghkeys (issue 11): or the SSH URL of a deploy key InkMCP made (never on a public create: an SSH URL
        # there would be cloned with whatever key Coolify picks)
        if DEPLOY_KEYS.knows_url(str(body["git_repository"])) and where != "POST /applications/public":
            pass
        # --- end
        elif repo.scheme != "https" or not repo.hostname:
            raise PolicyViolation(where, "git_repository", "only an https:// fetch URL")
    if "git_branch" in body and not _BRANCH.match(str(body["git_branch"])):
        raise PolicyViolation(where, "git_branch", f"{body['git_branch']!r} is not a plain branch name")
    if "git_commit_sha" in body and not _COMMIT.match(str(body["git_commit_sha"])):
        raise PolicyViolation(where, "git_commit_sha", "only the exact commit InkMCP pinned (hex sha)")
    for key in ("base_directory", "publish_directory", "dockerfile_location"):
        if key in body and (not _DIR.match(str(body[key])) or ".." in str(body[key]).split("/")):
            raise PolicyViolation(where, key, f"{body[key]!r} is not a path inside the repository")
    if body.get("domains"):
        for url in str(body["domains"]).split(","):
            check_domain(url.strip(), where)
    if "ports_exposes" in body and not re.fullmatch(r"[1-9][0-9]{0,4}", str(body["ports_exposes"])):
        raise PolicyViolation(where, "ports_exposes", "one port number")
    for key in ("limits_memory", "limits_memory_swap", "limits_memory_reservation"):
        if key in body:
            m = _SIZE.match(str(body[key]))
            if not m or not 0 < int(m.group(1)) <= limits.max_memory_mb:
                raise PolicyViolation(where, key, f"{body[key]!r}: <MiB>m, 1..{limits.max_memory_mb} (0 = unlimited "
                                                  "is never sent)")
    if "limits_cpus" in body:
        value = str(body["limits_cpus"])
        if not _CPUS.match(value) or not 0 < float(value) <= limits.max_cpus:
            raise PolicyViolation(where, "limits_cpus", f"{value!r}: 0 < cpus <= {limits.max_cpus:g}")
    if "custom_labels" in body:
        parse_labels(str(body["custom_labels"]))
    if "is_consistent_container_name_enabled" in body and not isinstance(body["is_consistent_container_name_enabled"],
                                                                        bool):
        raise PolicyViolation(where, "is_consistent_container_name_enabled", "true or false")
    if body.get("pre_deployment_command"):
        raise PolicyViolation(where, "pre_deployment_command", "runs in the old container (docker exec); InkMCP only "
                                                               "clears it (the release runs in the new container)")
    _check_health(where, body)
    for key in ("install_command", "build_command", "start_command", "pre_deployment_command"):
        if key in body and body[key] is not None and ("\n" in str(body[key]) or "\r" in str(body[key])):
            raise PolicyViolation(where, key, "one line (Coolify joins lines with spaces, changing the command)")


_HEALTH_PATH = re.compile(r"^/[a-zA-Z0-9/\-_.~%,;]*\Z")  # Coolify's rule (api.php), anchored at "/"
HEALTH_LIMITS = {"health_check_interval": (1, 60), "health_check_timeout": (1, 60), "health_check_retries": (1, 100),
                 "health_check_start_period": (0, 600)}  # fmt: skip
"""Bounds InkMCP keeps its health check timing in (Coolify accepts any number; a huge one would hold a
deployment, and the server's queue, for hours)."""


def _check_health(where: str, body: Mapping[str, Any]) -> None:
    """The health check fields InkMCP sends: an HTTP check of a path on one port, with bounded timing."""
    if "health_check_enabled" in body and not isinstance(body["health_check_enabled"], bool):
        raise PolicyViolation(where, "health_check_enabled", "true or false")
    if "health_check_path" in body and not _HEALTH_PATH.match(str(body["health_check_path"])):
        raise PolicyViolation(where, "health_check_path", f"{body['health_check_path']!r} is not a plain URL path")
    if "health_check_port" in body and not re.fullmatch(r"[1-9][0-9]{0,4}", str(body["health_check_port"])):
        raise PolicyViolation(where, "health_check_port", "one port number")
    for key, (low, high) in HEALTH_LIMITS.items():
        if key in body:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise PolicyViolation(where, key, f"{value!r}: whole seconds (or a count), {low}..{high}")


def check_env(where: str, body: Mapping[str, Any]) -> None:
    """A bulk env body: only `data`, each item a plain runtime variable with a tenant-safe key."""
    if set(body) != {"data"} or not isinstance(body["data"], list):
        raise PolicyViolation(where, ",".join(sorted(set(body) - {"data"})) or "data", "only {'data': [...]}")
    for item in body["data"]:
        extra = set(item) - ENV_ITEM_FIELDS
        if extra:
            raise PolicyViolation(where, sorted(extra)[0], "not a field of an env variable InkMCP sends")
        key = str(item.get("key", ""))
        if not ENV_KEY.match(key):
            raise PolicyViolation(where, key or "key", "env names are letters, digits and _, not starting with a "
                                                       "digit")
        if item.get("is_preview", False) is not False:
            raise PolicyViolation(where, key, "preview variables are never set")
        if not isinstance(item.get("value", ""), str):
            raise PolicyViolation(where, key, "value must be a string")


def check_env_key(key: str, *, internal: bool = False) -> None:
    """A tenant env key InkMCP may forward (internal keys, InkMCP's own, may use the INKMCP_ prefix)."""
    if not ENV_KEY.match(key):
        raise PolicyViolation("env", key, "env names are letters, digits and _, not starting with a digit")
    if not internal and key.upper().startswith(RESERVED_ENV_PREFIXES):
        raise PolicyViolation("env", key, f"names starting with {', '.join(RESERVED_ENV_PREFIXES)} are set by "
                                          "Coolify or InkMCP; rename the variable")


def check_request(method: str, path: str, body: Any = None, query: Mapping[str, str] | None = None, *,
                  limits: Limits = Limits()) -> None:  # fmt: skip
    """Raise PolicyViolation unless this request is one InkMCP may send. `path` is relative to /api/v1 (a full
    /api/v1/... path is accepted too)."""
    method = method.upper()
    if path.startswith(API_PREFIX):
        path = path[len(API_PREFIX):]
    where = f"{method} {path}"
    if not any(m == method and p.match(path) for m, p in OPERATIONS):
        raise PolicyViolation(where, "operation", "not an operation InkMCP's compute provider may call (storages, "
                                                  "restart/start/rollback, compose, services and images are refused)")
    query = dict(query or {})
    if method == "GET" and path == "/applications":
        if query:
            raise PolicyViolation(where, "query", "InkMCP lists applications without tag filters")
        return
    if path == "/deploy":
        if set(query) - {"uuid", "force"} or not query.get("uuid") or "," in query["uuid"] or body:
            raise PolicyViolation(where, "query", "deploy one application by uuid only (no tag, pr or docker_tag)")
        return
    if method == "POST" and path == "/projects":
        if not isinstance(body, Mapping) or set(body) - {"name", "description"} \
                or not _PROJECT_NAME.match(str(body.get("name", ""))):
            raise PolicyViolation(where, "name", "a project is created with InkMCP's name only")
        return
    if method == "POST" and path == "/applications/public":
        if not isinstance(body, Mapping):
            raise PolicyViolation(where, "body", "a JSON object")
        _check_application(where, body, CREATE_FIELDS, limits)
        return
    # --- ghkeys (issue 11): deploy keys
    if method == "POST" and path == "/applications/private-deploy-key":
        if not isinstance(body, Mapping):
            raise PolicyViolation(where, "body", "a JSON object")
        key_uuid = str(body.get("private_key_uuid", ""))
        if DEPLOY_KEYS.repository_of(key_uuid) is None:
            raise PolicyViolation(where, "private_key_uuid", "only a deploy key InkMCP made for this repository")
        if DEPLOY_KEYS.repository_of(key_uuid) != body.get("git_repository"):
            raise PolicyViolation(where, "git_repository", "only the repository InkMCP added this deploy key to")
        _check_application(where, {k: v for k, v in body.items() if k != "private_key_uuid"}, CREATE_FIELDS, limits)
        return
    if method == "POST" and path == "/security/keys":
        _check_security_key(where, body)
        return
    if method == "DELETE" and path.startswith("/security/keys/") \
            and DEPLOY_KEYS.repository_of(path.rsplit("/", 1)[1]) is None:
        raise PolicyViolation(where, "uuid", "InkMCP deletes only the deploy keys it made")
    # --- end
    if method == "PATCH" and path.endswith("/envs/bulk"):
        if not isinstance(body, Mapping):
            raise PolicyViolation(where, "body", "a JSON object")
        check_env(where, body)
        return
    if method == "PATCH":
        if not isinstance(body, Mapping):
            raise PolicyViolation(where, "body", "a JSON object")
        _check_application(where, body, UPDATE_FIELDS, limits)
        return
    if body not in (None, {}, b"", ""):
        raise PolicyViolation(where, "body", "this operation takes no body from InkMCP")


class PolicyTransport(httpx.AsyncBaseTransport):
    """An httpx transport that checks every request against `check_request` before passing it on: the policy on
    the wire, whatever code path built the request."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, limits: Limits = Limits()) -> None:
        self.inner = inner or LeanTransport()  # keep-alive HTTP/1.1 at a fraction of httpcore's CPU per request
        self.limits = limits

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = request.content if request.content else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            raise PolicyViolation(f"{request.method} {request.url.path}", "body", "not JSON") from None
        check_request(request.method, request.url.path, body, dict(parse_qsl(request.url.query.decode())),
                      limits=self.limits)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
