"""Suspending a service under Coolify because its account cannot pay (issue 13 item 4), and undoing it.

What a suspension does (nothing is deleted, nothing is rebuilt):

* **on_demand**: the service's Traefik file-provider router (routes.py, `inkmcp-<service id>.yml` on its run server)
  is rewritten to send the service's hosts to InkMCP's own public URL, path `/_inkmcp/suspended/<token>` (Traefik's
  `replacePath` middleware; `passHostHeader: false`, so InkMCP sees its own host), where `inkmcp serve` answers
  `402 Payment Required` with the same text the local provider's proxy shows. The Sablier middleware is gone from
  the router, so no request starts the container any more; a container that was awake stops when its Sablier
  session ends (sessionDuration), as after any idle period. The router it replaced is kept (`detail.original`) and
  written back on resume: the next request wakes the service through Sablier as before.
* **persistent** (past INKMCP_GRACE_S): each application of the service is stopped (`POST /applications/{uuid}/stop`,
  `docker_cleanup=false`: Coolify's cleanup prunes, and nothing may be removed), then, for a routed service, a
  router for its hosts is written to the same file-provider directory pointing at the 402 page (a stopped container
  has left Traefik's docker provider, so the file router is the only one for those hosts; written after the stop so
  the two never compete). Resume removes that router first, then deploys each stopped application again with
  `POST /deploy?uuid=` (not forced: Coolify finds the image of the live commit and re-creates the container from it;
  InkMCP's policy refuses `/start`, which is the same deployment in Coolify, review finding 2). An application
  already running is left alone.

Crash safety: the enforcer records the suspension (`billing_suspensions`) before calling `suspend`, and every step
saves what it is about to change in `detail` before changing it (`save`), so a repeat after a crash or on another
replica redoes exactly the unfinished part: stops and router writes are idempotent, the original router is read
only once, and resume deploys only what was stopped and is not running.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import yaml

from inkmcp.coolify.client import CoolifyError, CoolifyNotFound
from inkmcp.providers.compute.base import ProviderRefused, ServiceKey
from inkmcp.providers.compute.coolify import routes

log = logging.getLogger("inkmcp.coolify.suspend")

PAGE_PATH = "/_inkmcp/suspended/"
"""InkMCP's route for the 402 page; the token after it names one suspension (billing_suspensions.token)."""
Save = Callable[[dict[str, Any]], Awaitable[None]]


def page_url(public_url: str, token: str) -> str:
    return public_url.rstrip("/") + PAGE_PATH + token


def suspended_document(original: Mapping[str, Any] | None, router_name: str, hosts: list[str], public_url: str,
                       token: str) -> dict[str, Any]:
    """A router document sending the hosts of `original`'s routers (or `hosts` when there is none) to the 402 page.
    Router names, entry points and TLS are kept, so the swap changes only where requests go."""
    http = (original or {}).get("http") or {}
    routers = dict(http.get("routers") or {})
    if not routers:
        rule = " || ".join(f"Host(`{h}`)" for h in hosts)
        routers = {router_name: {"rule": rule, "entryPoints": ["https"], "tls": {"certResolver": "letsencrypt"}}}
    out: dict[str, Any] = {"routers": {}, "middlewares": {}, "services": {}}
    for name, router in routers.items():
        mw, svc = f"{name}-suspended", f"{name}-suspended"
        kept = {k: v for k, v in dict(router).items() if k in ("rule", "entryPoints", "tls")}
        out["routers"][name] = {**kept, "service": svc, "middlewares": [mw]}
        out["middlewares"][mw] = {"replacePath": {"path": PAGE_PATH + token}}
        out["services"][svc] = {"loadBalancer": {"servers": [{"url": public_url.rstrip("/")}],
                                                 "passHostHeader": False}}
    return {"http": out}


def hosts_of(key: ServiceKey) -> list[str]:
    """The service's own host (from its URL) and its custom domains (their DNS records)."""
    ref = key.service_ref
    hosts = []
    if ref.get("url"):
        hosts.append(str(urlsplit(str(ref["url"])).hostname))
    hosts += [str(r["name"]) for r in ref.get("dns_records") or [] if r.get("name")]
    return [h for h in hosts if h]


class CoolifySuspender:
    """`suspend`/`resume` of one service for the enforcer (inkmcp/billing/enforce.py), over the provider's client
    (every request policed as the provider's own) and its node-route writer."""

    name = "coolify"

    def __init__(self, provider: Any, public_url: str | None) -> None:
        self.provider = provider
        self.public_url = public_url

    async def _node(self, key: ServiceKey) -> routes.NodeAddress | None:
        server_uuid = key.service_ref.get("server_uuid")
        if not server_uuid:
            return None
        try:
            return await routes.node_address(self.provider.client, str(server_uuid))
        except CoolifyNotFound:
            return None

    def _writer(self) -> Any:
        return routes.writer_of(self.provider)

    async def suspend(self, key: ServiceKey, mode: str, token: str, detail: dict[str, Any], save: Save) -> None:
        if mode == "on_demand":
            await self._reroute(key, token, detail, save)
            return
        detail.pop("reread", None)  # a new release went live: its applications are the ones to stop
        apps = sorted(set((key.service_ref.get("apps") or {}).values()))
        if detail.get("stopped") != apps:
            detail["stopped"] = apps
            await save(detail)
        for uuid in apps:
            try:
                await self.provider.client.stop_application(uuid, docker_cleanup=False)
            except CoolifyNotFound:
                continue  # gone from Coolify: nothing runs there
        if key.service_ref.get("routed") and self.public_url and hosts_of(key):
            node = await self._node(key)
            if node is not None:
                if not detail.get("page"):
                    detail["page"] = True
                    await save(detail)
                doc = suspended_document(None, f"inkmcp-{key.service_id}", hosts_of(key), self.public_url, token)
                await self._writer().apublish(node, key.service_id, doc)

    async def _reroute(self, key: ServiceKey, token: str, detail: dict[str, Any], save: Save) -> None:
        if not self.public_url:
            raise ProviderRefused("an on_demand service of an account that cannot pay is sent to InkMCP's 402 page "
                                  "at INKMCP_PUBLIC_URL: set it to the URL the run servers reach `inkmcp serve` at")
        node = await self._node(key)
        if node is None:
            return
        writer = self._writer()
        if "original" not in detail or detail.get("reread"):
            reader = getattr(writer, "aread", None)
            if reader is None:
                raise ProviderRefused("the node-route writer cannot read routers back; use routes.SshNodeRoutes")
            data = await reader(node, key.service_id)
            current = yaml.safe_load(data) if data else None
            if current is not None and _is_suspended(current):
                current = detail.get("original")  # our own page: keep the router it replaced (None if unknown)
            detail["original"] = current
            detail.pop("reread", None)
            await save(detail)
        doc = suspended_document(detail["original"], f"inkmcp-{key.service_id}", hosts_of(key), self.public_url,
                                 token)
        await writer.apublish(node, key.service_id, doc)

    async def resume(self, key: ServiceKey, mode: str, detail: dict[str, Any], save: Save) -> None:
        node = await self._node(key)
        writer = self._writer()
        if mode == "on_demand":
            original = detail.get("original")
            if node is not None and original is not None:
                await writer.apublish(node, key.service_id, original)
            elif node is not None and "original" in detail:
                await writer.aremove(node, key.service_id)  # there was no router before: none after
            return
        if detail.get("page") and node is not None:
            await writer.aremove(node, key.service_id)
            detail["page"] = False
            await save(detail)
        for uuid in list(detail.get("stopped") or []):
            try:
                app = await self.provider.client.get_application(uuid)
            except CoolifyNotFound:
                continue
            status = app.status or ""
            if not status.startswith(("running", "starting", "restarting")):
                try:
                    await self.provider.client.deploy(uuid)
                except CoolifyError as e:
                    log.warning("resuming application %s of service %s: %s", uuid, key.service_id, e)
                    raise


def _is_suspended(doc: Mapping[str, Any]) -> bool:
    middlewares = ((doc.get("http") or {}).get("middlewares") or {}) if isinstance(doc, Mapping) else {}
    return any("replacePath" in (m or {}) for m in middlewares.values())
