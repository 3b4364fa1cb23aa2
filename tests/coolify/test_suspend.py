"""CoolifySuspender over the Coolify stand-in (every request checked against the spec and InkMCP's policy): what a
suspension changes in Coolify and on the run server's proxy directory, that repeats change nothing more, that a
resume puts back exactly what was there and deploys only what it stopped and is not running."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from inkmcp.build.plan import Mode
from inkmcp.providers.compute.base import RefScope
from inkmcp.providers.compute.coolify import routes
from inkmcp.providers.compute.coolify.suspend import PAGE_PATH, CoolifySuspender
from tests.contract.conftest import CoolifyHarness, RefBook, release, wait_for

pytestmark = pytest.mark.asyncio

PUBLIC = "https://ink.example"


class DirRoutes:
    """The SSH writer's place (tests/coolify/test_routes.py runs the real one against sshd): the same rendered
    bytes, into one directory per node, reads counted."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.reads = 0
        self.writes = 0

    def _path(self, node: routes.NodeAddress, service_id: str) -> Path:
        d = self.root / node.server_uuid
        d.mkdir(parents=True, exist_ok=True)
        return d / routes.file_name(service_id)

    async def apublish(self, node: routes.NodeAddress, service_id: str, doc: Mapping[str, Any]) -> bool:
        data = routes.render(service_id, doc)
        path = self._path(node, service_id)
        if path.exists() and path.read_bytes() == data:
            return False
        self.writes += 1
        path.write_bytes(data)
        return True

    async def aremove(self, node: routes.NodeAddress, service_id: str) -> bool:
        path = self._path(node, service_id)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    async def aread(self, node: routes.NodeAddress, service_id: str) -> bytes | None:
        self.reads += 1
        path = self._path(node, service_id)
        return path.read_bytes() if path.exists() else None

    async def alist(self, node: routes.NodeAddress) -> list[routes.RouteFile]:
        return []

    def doc(self, service_id: str) -> dict[str, Any] | None:
        found = list(self.root.glob(f"*/{routes.file_name(service_id)}"))
        return yaml.safe_load(found[0].read_text()) if found else None


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[CoolifyHarness]:
    harness = CoolifyHarness()
    await harness.setup()
    harness.provider.node_routes = DirRoutes(tmp_path / "nodes")  # type: ignore[attr-defined]
    try:
        yield harness
    finally:
        await harness.teardown()


class Saved:
    def __init__(self) -> None:
        self.detail: dict[str, Any] = {}
        self.saves = 0

    async def __call__(self, detail: dict[str, Any]) -> None:
        self.detail = dict(detail)
        self.saves += 1


def posts(h: CoolifyHarness, since: int, suffix: str) -> list[Any]:
    return [r for r in h.standin.requests[since:] if r.method == "POST" and r.path.endswith(suffix)]


async def test_on_demand_router_goes_to_the_402_page_and_comes_back_byte_for_byte(h: CoolifyHarness) -> None:
    book = RefBook()
    key = h.key()
    await release(h, book, h.request(key, message="one").model_copy(update={"mode": Mode.on_demand}))
    writer: DirRoutes = h.provider.node_routes  # type: ignore[attr-defined]
    before = writer.doc(key.service_id)
    assert before is not None and "sablier" in str(before)
    s = CoolifySuspender(h.provider, PUBLIC)
    saved = Saved()
    since = len(h.standin.requests)
    for _ in range(2):  # a repeat (another pass, a crash before the row said "suspended") changes nothing more
        await s.suspend(book.key(key), "on_demand", "tok123", saved.detail, saved)
    assert writer.reads == 1 and writer.writes == 2  # the release's router, then the page's, once
    page = writer.doc(key.service_id)
    assert page is not None and "sablier" not in str(page)
    (name, router), = page["http"]["routers"].items()
    assert router["rule"] == before["http"]["routers"][name]["rule"]  # the same hosts
    assert page["http"]["middlewares"][f"{name}-suspended"] == {"replacePath": {"path": PAGE_PATH + "tok123"}}
    assert page["http"]["services"][f"{name}-suspended"]["loadBalancer"] == {
        "servers": [{"url": PUBLIC}], "passHostHeader": False}
    assert not [r for r in h.standin.requests[since:] if r.method != "GET"]  # nothing changed in Coolify
    await s.resume(book.key(key), "on_demand", saved.detail, saved)
    assert writer.doc(key.service_id) == before


async def test_persistent_is_stopped_then_deployed_from_its_image_without_a_new_release(h: CoolifyHarness) -> None:
    book = RefBook()
    key = h.key()
    await release(h, book, h.request(key, message="one", worker=True))
    apps = book.refs[(RefScope.service, key.service_id)]["apps"]
    writer: DirRoutes = h.provider.node_routes  # type: ignore[attr-defined]
    s = CoolifySuspender(h.provider, PUBLIC)
    saved = Saved()
    since = len(h.standin.requests)
    await s.suspend(book.key(key), "persistent", "tok456", saved.detail, saved)
    await s.suspend(book.key(key), "persistent", "tok456", saved.detail, saved)
    stops = posts(h, since, "/stop")
    assert sorted(r.path for r in stops) == sorted([f"/api/v1/applications/{u}/stop" for u in apps.values()] * 2)
    assert all(r.query.get("docker_cleanup") == "false" for r in stops)
    assert saved.detail["stopped"] == sorted(apps.values()) and saved.detail["page"] is True
    page = writer.doc(key.service_id)
    assert page is not None and f"Host(`web-{key.project_name}.run-1.apps.test`)" in str(page)

    async def all_stopped() -> bool:
        return all([str((await h.provider.client.get_application(u)).status).startswith("exited")
                    for u in apps.values()])

    await wait_for(all_stopped, what="Coolify to report every application stopped")
    since = len(h.standin.requests)
    await s.resume(book.key(key), "persistent", saved.detail, saved)
    assert writer.doc(key.service_id) is None  # the page's router is gone before the apps come back
    deploys = posts(h, since, "/deploy")
    assert sorted(r.query["uuid"] for r in deploys) == sorted(apps.values())
    assert all(r.query.get("force") == "false" for r in deploys)  # the live commit's image, not a rebuild
    assert not posts(h, since, "/applications/public") and not posts(h, since, "/start")
    await wait_for(lambda: h.serve(key), what="the service to answer again")
    assert await h.serve(key) == "one"

    async def all_running() -> bool:  # as Coolify reports it (the stand-in's status job runs on requests)
        return all([str((await h.provider.client.get_application(u)).status).startswith("running")
                    for u in apps.values()])

    await wait_for(all_running, what="Coolify to report every application running")
    since = len(h.standin.requests)
    await s.resume(book.key(key), "persistent", saved.detail, saved)  # a repeat: everything runs already
    assert not posts(h, since, "/deploy")
