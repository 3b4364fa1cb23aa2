"""The on_demand router on the run server: one Traefik file-provider document per service, written over SSH into
the proxy's dynamic directory of the node that hosts the service.

Why over SSH: an on_demand application sleeps (Sablier stops its container), and a stopped container leaves
Traefik's docker provider, so its router must live in the proxy's *file* provider (NOTES.md §g); Coolify has no
API that writes `/data/coolify/proxy/dynamic/` (Coolify's proxy mounts it as `/traefik/dynamic`, watched by
`--providers.file.watch=true`, bootstrap/helpers/proxy.php). InkMCP already reaches its nodes over SSH for
hardening (inkmcp/nodes/), so the router is delivered the same way, with SFTP only (no remote shell command, so
nothing is ever quoted for a shell).

What a write guarantees:
  * **atomic**: the document goes to a hidden temp file in the same directory (`.inkmcp-<id>.<random>.tmp`; Traefik
    reads only `*.yml`, `*.yaml`, `*.toml`), then `posix-rename@openssh.com` replaces the target in one step, so
    Traefik's watcher never reads half a document;
  * **idempotent**: the current file is read first; the same bytes are not written again (no rename, no reload);
  * **named by InkMCP's own ids**: `inkmcp-<service id>.yml`, the id checked against InkMCP's id grammar, so no
    project/service name (tenant text) ever reaches a path; the document's hosts and names are checked too;
  * **host key checked**: against `INKMCP_NODE_SSH_KNOWN_HOSTS` (or `~/.ssh/known_hosts`), an unknown or changed
    key refused (never AutoAddPolicy);
  * **errors that say what to fix** (`NodeRouteError` and its kinds; `retryable` tells a network problem from a
    configuration one).

Who calls it: the Coolify provider after an on_demand release is live (`after_release`, wired in `release`);
`after_move` when a drain moves a service to another node and `remove_service` when a service is deleted (both
for the provider's `move` / `remove`: not wired yet, see the report of issue 8 item 4); `list_routes` and
`remove_route` for the reconciler (inkmcp/core/reconcile.py, the coordinator's: it may compare the files with
its records and remove what no service owns). The node's
address is Coolify's server record (`ip`, `port`, `user`), the user overridable by `INKMCP_NODE_SSH_USER` (a
dedicated user with write access to the dynamic directory instead of Coolify's root).

Settings (`NodeRouteSettings`, env prefix `INKMCP_NODE_`): `SSH_KEY_FILE` (required for on_demand services),
`SSH_KNOWN_HOSTS`, `SSH_USER`, `PROXY_DYNAMIC_DIR` (Coolify's default `/data/coolify/proxy/dynamic`),
`SSH_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import posixpath
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paramiko
import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("inkmcp.coolify.routes")

DEFAULT_DYNAMIC_DIR = "/data/coolify/proxy/dynamic"
"""Coolify's proxy dynamic directory on a node (`Server::proxyPath()` + `/dynamic`, mounted as /traefik/dynamic)."""
FILE_PREFIX = "inkmcp-"
_SERVICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
"""InkMCP's service ids (uuids in core's database): lowercase letters, digits and hyphens only, so an id can name
neither another directory nor another extension."""
_FILE = re.compile(r"^inkmcp-([a-z0-9][a-z0-9-]{0,62})\.yml\Z")
_NAME = re.compile(r"^inkmcp-[a-z0-9][a-z0-9-]{0,120}(-sablier)?\Z")
_HOST = re.compile(r"^(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}\Z")
_RULE_PART = re.compile(r"^Host\(`([^`]+)`\)\Z")
HEADER = "# Written by InkMCP (inkmcp/providers/compute/coolify/routes.py) for service {service_id}; do not edit:\n" \
         "# the next release rewrites it, and a removed service's file is deleted.\n"  # fmt: skip


class NodeRouteSettings(BaseSettings):
    """How InkMCP reaches a run server's proxy directory over SSH."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_NODE_", extra="ignore")

    ssh_key_file: Path | None = Field(
        default=None, description="private key InkMCP logs in to run servers with (its public key in the node "
                                  "user's authorized_keys); required as soon as an on_demand service is deployed")
    ssh_known_hosts: Path | None = Field(
        default=None, description="known_hosts file with every run server's host key (`[ip]:port` lines for a "
                                  "port other than 22); default ~/.ssh/known_hosts. Unknown or changed keys are "
                                  "refused")
    ssh_user: str | None = Field(
        default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="user on the run servers; default: the user of Coolify's server record (root)")
    proxy_dynamic_dir: str = Field(
        default=DEFAULT_DYNAMIC_DIR, description="the proxy's file-provider directory on the run servers")
    ssh_timeout: float = Field(default=10.0, gt=0, le=300, description="seconds for connecting and for each step")

    @field_validator("proxy_dynamic_dir")
    @classmethod
    def _dir(cls, v: str) -> str:
        norm = posixpath.normpath(v)
        if not norm.startswith("/") or norm == "/" or ".." in norm.split("/"):
            raise ValueError(f"INKMCP_NODE_PROXY_DYNAMIC_DIR={v!r} is not an absolute directory; pass Coolify's "
                             f"{DEFAULT_DYNAMIC_DIR} (or the proxy directory of a non-default Coolify install)")
        return norm

    def key_file(self) -> Path:
        """The configured key, or the error that says how to configure it."""
        if self.ssh_key_file is None:
            raise NodeRoutesNotConfigured(
                "an on_demand service needs its router written to the run server's proxy over SSH: set "
                "INKMCP_NODE_SSH_KEY_FILE to InkMCP's private key for the run servers (and "
                "INKMCP_NODE_SSH_KNOWN_HOSTS to a known_hosts file with their host keys)")
        if not self.ssh_key_file.is_file():
            raise NodeRoutesNotConfigured(f"INKMCP_NODE_SSH_KEY_FILE={self.ssh_key_file} is not a file; pass the "
                                          "path of InkMCP's private key for the run servers")
        return self.ssh_key_file

    def known_hosts(self) -> Path:
        path = self.ssh_known_hosts or Path.home() / ".ssh" / "known_hosts"
        if not path.is_file():
            raise NodeRoutesNotConfigured(
                f"known_hosts file {path} does not exist: set INKMCP_NODE_SSH_KNOWN_HOSTS to a file holding each "
                "run server's host key (check the fingerprint, then e.g. `ssh-keyscan -p PORT IP >> FILE`)")
        return path


@dataclass(frozen=True)
class NodeAddress:
    """Where a run server's sshd is, from Coolify's server record."""

    server_uuid: str
    host: str
    port: int = 22
    user: str = "root"
    name: str | None = None

    @property
    def label(self) -> str:
        return f"run server {self.name or self.server_uuid} ({self.user}@{self.host}:{self.port})"


@dataclass(frozen=True)
class RouteFile:
    """One router document InkMCP wrote on a node."""

    service_id: str
    path: str
    size: int
    mtime: int


class NodeRouteError(RuntimeError):
    """Writing, removing or listing a node's routers failed; the message names the node and what to fix."""

    retryable = False


class NodeUnreachable(NodeRouteError):
    """No SSH session could be opened (network, sshd down): worth retrying later."""

    retryable = True


class NodeHostKeyRefused(NodeRouteError):
    """The node's host key is unknown or differs from the known_hosts file."""


class NodeAuthRefused(NodeRouteError):
    """The node refused InkMCP's key."""


class NodeDirectoryMissing(NodeRouteError):
    """The proxy's dynamic directory does not exist (or is not a directory) on the node."""


class NodePermissionDenied(NodeRouteError):
    """The SSH user may not write the proxy's dynamic directory."""


class NodeRoutesNotConfigured(NodeRouteError):
    """InkMCP has no SSH key/known_hosts for its nodes."""


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """RejectPolicy with a message that shows the key the node presented and how to trust it."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        fingerprint = key.fingerprint if hasattr(key, "fingerprint") else key.get_base64()[:24]
        raise NodeHostKeyRefused(
            f"{hostname} presented a host key not in {self.known_hosts} ({key.get_name()} {fingerprint}): verify "
            f"the fingerprint on the node (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then add it to "
            "that file (INKMCP_NODE_SSH_KNOWN_HOSTS), e.g. with `ssh-keyscan -p PORT IP >> FILE`")


def check_service_id(service_id: str) -> str:
    """InkMCP's service id: the only thing a file name is made of."""
    if not isinstance(service_id, str) or not _SERVICE_ID.fullmatch(service_id):
        raise ValueError(f"service_id {service_id!r} is not an InkMCP service id (lowercase letters, digits, '-'); "
                         "router files are named by InkMCP's ids only")
    return service_id


def file_name(service_id: str) -> str:
    return f"{FILE_PREFIX}{check_service_id(service_id)}.yml"


def check_document(doc: Mapping[str, Any]) -> None:
    """A router document as `mapping.sablier_router` renders it: InkMCP-named routers, middlewares and services,
    Host rules over plain host names only. A second wall against a mapping bug putting tenant text in the file."""
    http = doc.get("http") if isinstance(doc, Mapping) else None
    if set(doc) != {"http"} or not isinstance(http, Mapping) or not set(http) <= {"routers", "middlewares",
                                                                                    "services"}:
        raise ValueError("a router document holds http.routers/middlewares/services only")
    for section in ("routers", "middlewares", "services"):
        for name in http.get(section) or {}:
            if not _NAME.fullmatch(str(name)):
                raise ValueError(f"http.{section}: {name!r} is not an InkMCP name (inkmcp-<id>)")
    for name, router in (http.get("routers") or {}).items():
        for part in str(router.get("rule", "")).split(" || "):
            m = _RULE_PART.fullmatch(part.strip())
            if not m or not _HOST.fullmatch(m.group(1)):
                raise ValueError(f"router {name}: rule part {part!r} is not Host(`<host name>`)")


def render(service_id: str, doc: Mapping[str, Any]) -> bytes:
    """The file's exact bytes (stable: same document, same bytes, so a repeat writes nothing)."""
    check_service_id(service_id)
    check_document(doc)
    body = yaml.safe_dump(_plain(doc), sort_keys=True, default_flow_style=False, allow_unicode=False)
    return (HEADER.format(service_id=service_id) + body).encode()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class SshNodeRoutes:
    """The SSH/SFTP writer. Blocking methods (`publish`, `remove`, `list`); the `a*` variants run them in a thread
    for async callers."""

    def __init__(self, settings: NodeRouteSettings | None = None) -> None:
        self.settings = settings or NodeRouteSettings()

    @classmethod
    def from_env(cls) -> SshNodeRoutes:
        return cls(NodeRouteSettings())

    # -- session --------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _sftp(self, node: NodeAddress) -> Iterator[paramiko.SFTPClient]:
        key_file = self.settings.key_file()
        known = self.settings.known_hosts()
        user = self.settings.ssh_user or node.user or "root"
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(known))
        except (OSError, paramiko.SSHException) as e:
            raise NodeRoutesNotConfigured(f"INKMCP_NODE_SSH_KNOWN_HOSTS={known} cannot be read ({e}); pass a "
                                          "known_hosts file (one `[ip]:port type key` line per node)") from None
        client.set_missing_host_key_policy(_RejectUnknown(known))
        timeout = self.settings.ssh_timeout
        try:
            try:
                client.connect(node.host, port=node.port, username=user, key_filename=str(key_file),
                               look_for_keys=False, allow_agent=False, timeout=timeout, banner_timeout=timeout,
                               auth_timeout=timeout, channel_timeout=timeout)  # fmt: skip
            except NodeHostKeyRefused as e:
                raise NodeHostKeyRefused(f"{node.label}: {e}") from None
            except paramiko.BadHostKeyException as e:
                raise NodeHostKeyRefused(
                    f"{node.label} presented a host key ({e.key.get_name()}) that differs from the one in {known}: "
                    "if the node was reinstalled, verify its new fingerprint and replace its line there "
                    "(INKMCP_NODE_SSH_KNOWN_HOSTS); otherwise something is intercepting the connection") from None
            except paramiko.AuthenticationException:
                raise NodeAuthRefused(
                    f"{node.label} refused InkMCP's key {key_file} for user {user!r}: add {key_file}.pub to "
                    f"~{user}/.ssh/authorized_keys on the node, or set INKMCP_NODE_SSH_USER / "
                    "INKMCP_NODE_SSH_KEY_FILE to the user and key that may log in") from None
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise NodeUnreachable(
                    f"cannot open an SSH session to {node.label}: {e or type(e).__name__}. Check that the node is "
                    f"up, that sshd listens on port {node.port} and that this InkMCP host may connect to it (the "
                    "address is Coolify's server record); InkMCP retries") from None
            try:
                sftp = client.open_sftp()
            except (OSError, paramiko.SSHException) as e:
                raise NodeUnreachable(f"{node.label}: the SFTP subsystem is not available ({e}); enable "
                                      "`Subsystem sftp` in the node's sshd_config") from None
            sftp.get_channel().settimeout(timeout)  # type: ignore[union-attr]
            try:
                with sftp:
                    yield sftp
            except (EOFError, TimeoutError, ConnectionError, paramiko.SSHException) as e:
                raise NodeUnreachable(f"the SSH session to {node.label} broke off: {e or type(e).__name__}; "
                                      "InkMCP retries") from None
        finally:
            client.close()

    def _check_dir(self, sftp: paramiko.SFTPClient, node: NodeAddress) -> str:
        directory = self.settings.proxy_dynamic_dir
        try:
            attrs = sftp.stat(directory)
        except FileNotFoundError:
            raise NodeDirectoryMissing(
                f"{directory} does not exist on {node.label}: is Coolify's proxy (Traefik) set up on this server "
                "(Servers → Proxy → Start)? If Coolify's data directory is elsewhere, set "
                "INKMCP_NODE_PROXY_DYNAMIC_DIR to its proxy/dynamic directory") from None
        except PermissionError:
            raise NodePermissionDenied(self._denied(directory, node)) from None
        if attrs.st_mode is None or not stat.S_ISDIR(attrs.st_mode):
            raise NodeDirectoryMissing(f"{directory} on {node.label} is not a directory; set "
                                       "INKMCP_NODE_PROXY_DYNAMIC_DIR to the proxy's dynamic directory")
        return directory

    def _denied(self, directory: str, node: NodeAddress) -> str:
        user = self.settings.ssh_user or node.user
        return (f"user {user!r} may not write {directory} on {node.label}: give it write access to that directory "
                "(e.g. `setfacl -m u:USER:rwx DIR`) or set INKMCP_NODE_SSH_USER to a user who has it")

    # -- operations -----------------------------------------------------------------------------------------

    def publish(self, node: NodeAddress, service_id: str, doc: Mapping[str, Any]) -> bool:
        """Make the service's router file on `node` hold `doc`. True when written, False when it already did."""
        data = render(service_id, doc)
        with self._sftp(node) as sftp:
            directory = self._check_dir(sftp, node)
            path = posixpath.join(directory, file_name(service_id))
            if _read(sftp, path) == data:
                return False
            tmp = posixpath.join(directory, f".{file_name(service_id)}.{secrets.token_hex(6)}.tmp")
            try:
                with sftp.open(tmp, "wb") as f:
                    f.write(data)
                sftp.chmod(tmp, 0o644)
                sftp.posix_rename(tmp, path)  # atomic replace (posix-rename@openssh.com)
            except PermissionError:
                raise NodePermissionDenied(self._denied(directory, node)) from None
            except OSError as e:
                raise NodeUnreachable(f"writing {path} on {node.label} failed: {e}; InkMCP retries") from None
            finally:
                with contextlib.suppress(OSError):
                    sftp.remove(tmp)
            stale = f".{file_name(service_id)}."
            for name in sftp.listdir(directory):  # temp files of writes whose session broke off (Traefik skips them)
                if name.startswith(stale) and name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        sftp.remove(posixpath.join(directory, name))
            log.info("router of service %s written to %s on %s (sha256 %s)", service_id, path, node.label,
                     hashlib.sha256(data).hexdigest()[:12])
            return True

    def remove(self, node: NodeAddress, service_id: str) -> bool:
        """Delete the service's router file on `node`. True when one was there."""
        name = file_name(service_id)
        with self._sftp(node) as sftp:
            path = posixpath.join(self._check_dir(sftp, node), name)
            try:
                sftp.remove(path)
            except FileNotFoundError:
                return False
            except PermissionError:
                raise NodePermissionDenied(self._denied(self.settings.proxy_dynamic_dir, node)) from None
            log.info("router of service %s removed from %s", service_id, node.label)
            return True

    def list(self, node: NodeAddress) -> list[RouteFile]:
        """Every router file InkMCP wrote on `node` (by name: `inkmcp-<service id>.yml`; anything else in the
        directory is Coolify's or an operator's and never listed)."""
        with self._sftp(node) as sftp:
            directory = self._check_dir(sftp, node)
            try:
                entries = sftp.listdir_attr(directory)
            except PermissionError:
                raise NodePermissionDenied(self._denied(directory, node)) from None
        out = []
        for e in entries:
            m = _FILE.fullmatch(e.filename)
            if m and e.st_mode is not None and stat.S_ISREG(e.st_mode):
                out.append(RouteFile(m.group(1), posixpath.join(directory, e.filename), int(e.st_size or 0),
                                     int(e.st_mtime or 0)))
        return sorted(out, key=lambda r: r.service_id)

    # --- billcore (issue 13): the suspension of an on_demand service keeps the router it replaces, to put it back
    def read(self, node: NodeAddress, service_id: str) -> bytes | None:
        """The service's router file on `node` as it is now (None: there is none)."""
        with self._sftp(node) as sftp:
            try:
                return _read(sftp, posixpath.join(self._check_dir(sftp, node), file_name(service_id)))
            except PermissionError:
                raise NodePermissionDenied(self._denied(self.settings.proxy_dynamic_dir, node)) from None

    async def aread(self, node: NodeAddress, service_id: str) -> bytes | None:
        return await asyncio.to_thread(self.read, node, service_id)
    # --- end billcore

    async def apublish(self, node: NodeAddress, service_id: str, doc: Mapping[str, Any]) -> bool:
        return await asyncio.to_thread(self.publish, node, service_id, doc)

    async def aremove(self, node: NodeAddress, service_id: str) -> bool:
        return await asyncio.to_thread(self.remove, node, service_id)

    async def alist(self, node: NodeAddress) -> list[RouteFile]:
        return await asyncio.to_thread(self.list, node)


def _read(sftp: paramiko.SFTPClient, path: str) -> bytes | None:
    try:
        with sftp.open(path, "rb") as f:
            buf = io.BytesIO()
            while chunk := f.read(65536):
                buf.write(chunk)
            return buf.getvalue()
    except FileNotFoundError:
        return None


class NodeRoutes(Protocol):
    """What the provider needs of a writer (SshNodeRoutes; a test may record instead)."""

    async def apublish(self, node: NodeAddress, service_id: str, doc: Mapping[str, Any]) -> bool: ...

    async def aremove(self, node: NodeAddress, service_id: str) -> bool: ...

    async def alist(self, node: NodeAddress) -> list[RouteFile]: ...


# -- the provider's side ------------------------------------------------------------------------------------


def writer_of(provider: Any) -> NodeRoutes:
    """The provider's writer: `provider.node_routes` when set (tests, the composition root), else one from the
    environment (INKMCP_NODE_*), kept on the provider."""
    routes = getattr(provider, "node_routes", None)
    if routes is None:
        routes = SshNodeRoutes.from_env()
        provider.node_routes = routes
    return routes  # type: ignore[no-any-return]


async def node_address(client: Any, server_uuid: str) -> NodeAddress:
    """The node's SSH address from Coolify's server record (`GET /servers/{uuid}`: ip, port, user)."""
    server = await client.get_server(server_uuid)
    return NodeAddress(server_uuid=server.uuid, host=server.ip, port=int(server.port or 22),
                       user=server.user or "root", name=server.name)


def _contract_error(e: Exception, what: str) -> Exception:
    from inkmcp.providers.compute.base import ProviderRefused, ProviderUnavailable

    if isinstance(e, NodeRouteError) and e.retryable:
        return ProviderUnavailable(f"{what}: {e}")
    if isinstance(e, NodeRouteError):
        return ProviderRefused(f"{what}: {e} (an operator must fix this; the release is live in Coolify but not "
                               "reachable until then)")
    return e


async def after_release(provider: Any, request: Any, server: Any, apps: Mapping[str, str],
                        specs: Mapping[str, Any]) -> None:  # fmt: skip
    """Called by the provider once every process's deployment finished, before the release is recorded live: an
    on_demand service's router is written to its node (a failure raises the contract's error, so the release is
    retried and writes it then); a service that was on_demand and no longer is has its file removed."""
    from inkmcp.build.plan import Mode
    from inkmcp.coolify.client import CoolifyError
    from inkmcp.providers.compute.coolify import mapping

    key = request.key
    routed = next((name for name, s in specs.items() if s.process.routed), None)
    was_on_demand = bool(key.service_ref.get("live_labels"))
    if request.mode != Mode.on_demand and not was_on_demand:
        return
    what = "writing the on_demand router to the run server's proxy"
    try:
        writer = writer_of(provider)
        node = await node_address(provider.client, server.uuid)
        if request.mode == Mode.on_demand and routed is not None:
            doc = mapping.sablier_router(specs[routed], apps[routed], provider.settings)
            await writer.apublish(node, key.service_id, doc)
        else:
            await writer.aremove(node, key.service_id)
    except CoolifyError as e:
        from inkmcp.providers.compute.coolify.provider import _error

        raise _error(e, "reading the run server's address") from None
    except NodeRouteError as e:
        raise _contract_error(e, what) from None


async def remove_service(provider: Any, key: Any, server_uuid: str | None = None) -> bool:
    """Delete the service's router file from a node (`server_uuid`, default the service's recorded server): for
    `remove`, and after a `move` (the old server once switched, the target when the move is undone). No-op for a
    service whose live release is not on_demand (it never had a file), or a server Coolify no longer has."""
    from inkmcp.coolify.client import CoolifyError, CoolifyNotFound

    server_uuid = server_uuid or key.service_ref.get("server_uuid")
    if not server_uuid or not key.service_ref.get("live_labels"):
        return False
    try:
        node = await node_address(provider.client, str(server_uuid))
        return await writer_of(provider).aremove(node, key.service_id)
    except CoolifyNotFound:
        return False  # the server is gone from Coolify, and its proxy with it
    except CoolifyError as e:
        from inkmcp.providers.compute.coolify.provider import _error

        raise _error(e, "reading the run server's address") from None
    except NodeRouteError as e:
        raise _contract_error(e, "removing the on_demand router from the run server's proxy") from None


async def after_move(provider: Any, key: Any, spec: Any, target: Any, apps: Mapping[str, str]) -> None:
    """For `move` (inkmcp nodes drain), once the copy on `target` is healthy and before the service's record is
    switched: an on_demand service's router is written on the target node (the document a release there would
    write, custom domains from the live record). A failure raises the contract's error, so the move undoes
    itself or is retried; a service that is not on_demand is left alone. The old node's file goes after the
    switch (`remove_service(provider, key, old server uuid)`, so an undone move keeps its router), and an undone
    move removes the target's (`remove_service(provider, key, target.uuid)`)."""
    from inkmcp.build.plan import Mode
    from inkmcp.coolify.client import CoolifyError
    from inkmcp.providers.compute.coolify import mapping

    routed = key.service_ref.get("routed")
    if spec.mode != Mode.on_demand or not routed or routed not in apps:
        return
    process = next((p for p in mapping.processes(spec.service_type, spec.plan) if p.name == routed),
                   mapping.Process(str(routed), None, True))
    custom = tuple(spec.domains) or tuple(r["name"] for r in key.service_ref.get("dns_records") or [])
    app_spec = mapping.AppSpec(key=key, process=process, service_type=spec.service_type, mode=spec.mode,
                               plan=spec.plan, commit=str(key.service_ref.get("live_commit") or spec.commit),
                               resources=spec.resources, server=target, repo_url="", domains=custom)
    what = "moving the on_demand router to the new run server's proxy"
    try:
        writer = writer_of(provider)
        doc = mapping.sablier_router(app_spec, apps[routed], provider.settings)
        await writer.apublish(await node_address(provider.client, target.uuid), key.service_id, doc)
    except CoolifyError as e:
        from inkmcp.providers.compute.coolify.provider import _error

        raise _error(e, "reading a run server's address") from None
    except NodeRouteError as e:
        raise _contract_error(e, what) from None


async def list_routes(provider: Any, server_uuid: str) -> list[RouteFile]:
    """For the reconciler: the router files InkMCP wrote on one run server (each names its service id)."""
    node = await node_address(provider.client, server_uuid)
    return await writer_of(provider).alist(node)


async def remove_route(provider: Any, server_uuid: str, service_id: str) -> bool:
    """For the reconciler: delete one service's router file on one run server (an orphan)."""
    node = await node_address(provider.client, server_uuid)
    return await writer_of(provider).aremove(node, service_id)
