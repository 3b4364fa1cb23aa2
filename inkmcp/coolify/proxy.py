"""Coolify's Traefik proxy compose: Coolify's default, and InkMCP's pin + Sablier plugin applied to it.

Why through Coolify's proxy configuration and not the file on the node (review findings 5 and 7): Coolify 4.3.11
keeps the proxy compose in its database (`last_saved_proxy_configuration`, "Primary source: database",
`app/Actions/Proxy/GetProxyConfiguration.php:27-46`) and writes it over `/data/coolify/proxy/docker-compose.yml`
on every proxy start and restart (`SaveProxyConfiguration.php:45`, called from `StartProxy.php:33-36` and
`RestartProxyJob.php:88-91`); the disk file is read only to backfill an empty database. An edit on disk lasts
until the next restart. So InkMCP stores its version in Coolify (`PUT /servers/{uuid}/proxy/configuration`):

* `image` = the pinned digest (`traefik:v3.6.N@sha256:…`), so Coolify's `docker compose pull` on every start pulls
  the same image and the gVisor selector's allow-listed image ID keeps matching (review #5);
* the two Sablier plugin flags appended to the traefik `command` (NOTES.md §g), every other line as stored
  (operator edits survive).

When Coolify has stored nothing yet (a server that never started its proxy), InkMCP starts from the compose
Coolify itself would generate (`default_traefik_compose`, a port of `generateDefaultProxyConfiguration`,
`bootstrap/helpers/proxy.php:227-403`, standalone non-swarm Traefik, production paths).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

SABLIER_PLUGIN_MODULE = "github.com/sablierapp/sablier-traefik-plugin"
SABLIER_FLAG_PREFIX = "--experimental.plugins.sablier."
COOLIFY_TRAEFIK_IMAGE = "traefik:v3.6"
"""The moving tag Coolify 4.3.11 writes (`proxy.php:282`); what InkMCP replaces with a digest."""
PROXY_PATH = "/data/coolify/proxy"

_PINNED = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[0-9]+)?"
    r"(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?@sha256:[0-9a-f]{64}$")


def check_pinned_image(ref: str, setting: str) -> str:
    """`ref` if it names an image by digest (`name[:tag]@sha256:<64 hex>`), else a ValueError naming `setting`.

    Why a digest: a tag moves (Coolify re-pulls on every proxy start, review #5) and the node's allow-listed image
    ID would stop matching; a digest always pulls the same bytes."""
    if not _PINNED.match(ref):
        raise ValueError(
            f"{setting} {ref!r} is not pinned by digest; pass name:tag@sha256:<64 hex digits>, e.g. "
            "traefik:v3.6.23@sha256:…; get the digest with `docker pull IMAGE:TAG` then "
            "`docker image inspect --format '{{index .RepoDigests 0}}' IMAGE:TAG`")
    return ref


def check_plugin_version(version: str, setting: str = "the Sablier plugin version") -> str:
    if not re.fullmatch(r"v\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?", version):
        raise ValueError(f"{setting} {version!r} is not a release tag of {SABLIER_PLUGIN_MODULE}; pass e.g. v1.3.0")
    return version


def sablier_flags(version: str) -> list[str]:
    """The Traefik static-configuration flags that load the Sablier plugin (NOTES.md §g)."""
    return [f"{SABLIER_FLAG_PREFIX}modulename={SABLIER_PLUGIN_MODULE}", f"{SABLIER_FLAG_PREFIX}version={version}"]


class _CoolifyDumper(yaml.SafeDumper):
    """Dumps the way Symfony's Yaml::dump($config, 12, 2) lays Coolify's default out: block style, two spaces,
    keys in insertion order, list items indented under their key, strings that start with a YAML indicator or
    hold a colon single-quoted."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if value[:1] in "-?:,[]{}#&*!|>'\"%@`" or ":" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CoolifyDumper.add_representer(str, _str)


def dump_compose(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_CoolifyDumper, sort_keys=False, default_flow_style=False, indent=2, width=4096)


def default_traefik_compose(networks: tuple[str, ...] = ("coolify",), proxy_path: str = PROXY_PATH) -> str:
    """What `generateDefaultProxyConfiguration` writes for a standalone Traefik server (proxy.php:227-403 at
    379abb2; not dev, not swarm, no custom commands)."""
    return dump_compose(default_traefik_doc(networks, proxy_path))


def default_traefik_doc(networks: tuple[str, ...] = ("coolify",), proxy_path: str = PROXY_PATH) -> dict[str, Any]:
    return {
        "name": "coolify-proxy",
        "networks": {n: {"external": True} for n in networks},
        "services": {
            "traefik": {
                "container_name": "coolify-proxy",
                "image": COOLIFY_TRAEFIK_IMAGE,
                "restart": "unless-stopped",
                "extra_hosts": ["host.docker.internal:host-gateway"],
                "networks": list(networks),
                "ports": ["80:80", "443:443", "443:443/udp", "8080:8080"],
                "healthcheck": {"test": "wget -qO- http://localhost:80/ping || exit 1", "interval": "4s",
                                "timeout": "2s", "retries": 5},
                "volumes": ["/var/run/docker.sock:/var/run/docker.sock:ro", f"{proxy_path}:/traefik"],
                "command": [
                    "--ping=true",
                    "--ping.entrypoint=http",
                    "--api.dashboard=true",
                    "--entrypoints.http.address=:80",
                    "--entrypoints.https.address=:443",
                    "--entrypoints.http.http.encodequerysemicolons=true",
                    "--entryPoints.http.http2.maxConcurrentStreams=250",
                    "--entrypoints.https.http.encodequerysemicolons=true",
                    "--entryPoints.https.http2.maxConcurrentStreams=250",
                    "--entrypoints.https.http3",
                    "--providers.file.directory=/traefik/dynamic/",
                    "--providers.file.watch=true",
                    "--certificatesresolvers.letsencrypt.acme.httpchallenge=true",
                    "--certificatesresolvers.letsencrypt.acme.httpchallenge.entrypoint=http",
                    "--certificatesresolvers.letsencrypt.acme.storage=/traefik/acme.json",
                    "--api.insecure=false",
                    "--providers.docker=true",
                    "--providers.docker.exposedbydefault=false",
                ],
                "labels": [
                    "traefik.enable=true",
                    "traefik.http.routers.traefik.entrypoints=http",
                    "traefik.http.routers.traefik.service=api@internal",
                    "traefik.http.services.traefik.loadbalancer.server.port=8080",
                    "coolify.managed=true",
                    "coolify.proxy=true",
                ],
            },
        },
    }


def parse_compose(text: str | None) -> dict[str, Any] | None:
    """The compose as a mapping, or None when it is empty, not YAML, or has no `services.traefik` (Coolify then
    regenerates its default on the next start, `GetProxyConfiguration.php:33-41`)."""
    if not text or not text.strip():
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict) or not isinstance((doc.get("services") or {}).get("traefik"), dict):
        return None
    return doc


def pinned_compose(stored: str | None, image: str, plugin_version: str) -> dict[str, Any]:
    """The compose InkMCP wants stored: `stored` (or Coolify's default) with the pinned image and exactly one
    copy of the Sablier flags at the end of the traefik command (older Sablier flags are replaced)."""
    check_pinned_image(image, "the proxy image")
    check_plugin_version(plugin_version)
    doc = parse_compose(stored) or default_traefik_doc()
    traefik = doc["services"]["traefik"]
    traefik["image"] = image
    command = traefik.get("command") or []
    if isinstance(command, str):
        raise ValueError("the stored proxy configuration has services.traefik.command as one string; InkMCP appends "
                         "flags to a list: rewrite it as a YAML list in Coolify (Servers → Proxy) and re-run")
    traefik["command"] = [c for c in command if not str(c).startswith(SABLIER_FLAG_PREFIX)] + sablier_flags(
        plugin_version)
    return doc


def same_compose(a: str | None, b: dict[str, Any]) -> bool:
    """Whether stored text `a` already is `b` (compared parsed, so layout and quoting do not count)."""
    if not a:
        return False
    try:
        return bool(yaml.safe_load(a) == b)
    except yaml.YAMLError:
        return False
