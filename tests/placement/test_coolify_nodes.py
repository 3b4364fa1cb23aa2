"""Run servers from Coolify (the stand-in, a real HTTP server validating against the 4.3.11 spec) joined with
InkMCP's capacity settings, and placement through the adapter the Coolify provider calls."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from inkmcp.build.plan import Mode
from inkmcp.coolify.client import CoolifyClient, RetryPolicy
from inkmcp.coolify.models import Server
from inkmcp.coolify.spec import CoolifySpec
from inkmcp.placement.adapter import CoolifyPlacement
from inkmcp.placement.coolify_nodes import CoolifyNodeSource, wildcard_base
from inkmcp.placement.models import PlacedServer as PlacedServerOfPlacement
from inkmcp.placement.models import PlacementBusy, PlacementError
from inkmcp.placement.records import PlacementService
from inkmcp.placement.settings import PlacementSettings
from inkmcp.providers.compute.base import ProviderRefused, ProviderUnavailable, Resources, ServiceKey
from inkmcp.providers.compute.coolify.mapping import PlacedServer
from inkmcp.store.db import Store
from tests.coolify_standin import CoolifyStandin, NodeServer
from tests.placement.conftest import make_services
from tests.placement.support import placement_settings_for

FAST = RetryPolicy(attempts=3, backoff_initial=0.01, backoff_max=0.05, max_total_wait=5.0)


def run_servers(standin: CoolifyStandin, count: int) -> list[NodeServer]:
    """Usable run servers `run-1..N` with the wildcard domain `http://run-i.apps.test` (set as Coolify's UI does)."""
    out = []
    for i in range(1, count + 1):
        server = standin.add_server(f"10.77.0.{i}", name=f"run-{i}", usable=True)
        server.settings["wildcard_domain"] = f"http://run-{i}.apps.test"
        out.append(server)
    return out


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[CoolifyStandin]:
    with CoolifyStandin(tmp_path / "nodes", spec=CoolifySpec.load(), validation_delay=0.05) as s:
        yield s
    assert s.response_violations == [] and s.request_violations == []


@pytest.fixture
async def client(standin: CoolifyStandin) -> AsyncIterator[CoolifyClient]:
    async with CoolifyClient(standin.url, standin.add_token("read"), retry=FAST) as c:
        yield c


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INKMCP_PLACEMENT_NODES", json.dumps({
        "run-1": {"memory_mb": 14336, "cpus": 7, "labels": {"region": "fsn1"}},
        "uuid-2": {"memory_mb": 2048, "cpus": 1.5}}))
    monkeypatch.setenv("INKMCP_PLACEMENT_ON_DEMAND_OVERCOMMIT", "3")
    monkeypatch.setenv("INKMCP_PLACEMENT_STATIC_CPUS", "0.05")
    s = PlacementSettings()
    policy = s.policy()
    assert (policy.on_demand_overcommit, policy.static_millicpus, policy.static_memory_mb) == (3.0, 50, 64)
    assert s.capacity_of("whatever", "run-1").millicpus == 7000  # type: ignore[union-attr]
    assert s.capacity_of("uuid-2", "run-1").memory_mb == 2048  # type: ignore[union-attr]  # uuid wins over name
    assert s.capacity_of("uuid-3", "run-3") is None  # not configured, no default: never a target
    monkeypatch.setenv("INKMCP_PLACEMENT_NODES", json.dumps({"run-1": {"memory_mb": 10, "cpus": 1}}))
    with pytest.raises(ValidationError, match="memory_mb"):
        PlacementSettings()
    monkeypatch.setenv("INKMCP_PLACEMENT_NODES", json.dumps({"run-1": {"memory": 4096, "cpus": 1}}))
    with pytest.raises(ValidationError, match="memory"):
        PlacementSettings()
    monkeypatch.setenv("INKMCP_PLACEMENT_NODES", "{}")
    monkeypatch.setenv("INKMCP_PLACEMENT_ON_DEMAND_OVERCOMMIT", "0.5")
    with pytest.raises(ValidationError, match="on_demand_overcommit"):
        PlacementSettings()


def test_default_node_capacity_applies_to_unnamed_servers() -> None:
    s = PlacementSettings(nodes={"run-1": {"memory_mb": 1024, "cpus": 1}},
                          default_node={"memory_mb": 4096, "cpus": 2, "labels": {"tier": "std"}})
    assert s.capacity_of("u9", "run-9").labels == {"tier": "std"}  # type: ignore[union-attr]
    assert s.capacity_of("u1", "run-1").memory_mb == 1024  # type: ignore[union-attr]


async def test_the_adapter_maps_placement_errors_to_the_compute_contract() -> None:
    class Stub:
        def __init__(self, error: Exception | None) -> None:
            self.error = error
            self.calls: list[int] = []

        async def place(self, key: ServiceKey, mode: Mode, resources: Resources, *, processes: int,
                        require_node: str | None, require_why: str, pin: Any = None) -> Any:
            self.calls.append(processes)
            assert require_node is None and require_why == ""  # project "p" has no database
            assert pin is None  # "p" is no project row of a store: nothing to read
            if self.error:
                raise self.error
            return PlacedServerOfPlacement(server_uuid="u", wildcard_base=None)

    k = ServiceKey(account_id="a", project_id="p", service_id="s", project_name="p", service_name="s")
    with pytest.raises(ProviderRefused, match="nothing fits"):
        await CoolifyPlacement(Stub(PlacementError("nothing fits")))(k, Mode.persistent, Resources())  # type: ignore[arg-type]
    with pytest.raises(ProviderUnavailable) as busy:
        await CoolifyPlacement(Stub(PlacementBusy("busy")), busy_retry_after=2)(k, Mode.persistent, Resources())  # type: ignore[arg-type]
    assert busy.value.retry_after == 2 and ProviderUnavailable.retryable
    stub = Stub(None)
    with pytest.raises(ProviderRefused, match="wildcard domain"):  # never hand the provider a node without a URL
        await CoolifyPlacement(stub)(k, Mode.persistent, Resources(), processes=2)  # type: ignore[arg-type]
    assert stub.calls == [2]


def test_wildcard_base_is_the_host_of_coolifys_setting() -> None:
    assert wildcard_base("http://run-1.apps.test") == "run-1.apps.test"
    assert wildcard_base("https://*.apps.example.com/") == "apps.example.com"
    assert wildcard_base("apps.example.com") == "apps.example.com"
    assert wildcard_base(None) is None and wildcard_base("") is None


async def test_nodes_from_coolify_with_configured_capacity(standin: CoolifyStandin, client: CoolifyClient) -> None:
    run = run_servers(standin, 4)
    build = standin.add_server("10.77.0.50", name="build", is_build_server=True, usable=True)
    down = standin.add_server("10.77.0.51", name="down", usable=False)
    down.settings["wildcard_domain"] = "http://down.apps.test"
    nourl = standin.add_server("10.77.0.52", name="nourl", usable=True)
    settings = PlacementSettings(nodes={
        "run-1": {"memory_mb": 2048, "cpus": 2}, run[1].uuid: {"memory_mb": 8192, "cpus": 4, "labels": {"t": "big"}},
        "run-3": {"memory_mb": 4096, "cpus": 2}, "build": {"memory_mb": 65536, "cpus": 32},
        "down": {"memory_mb": 4096, "cpus": 2}, "nourl": {"memory_mb": 4096, "cpus": 2}})
    now = [0.0]
    listings: list[int] = []

    class Counting:
        """The real client, counting the listings that reach Coolify."""

        async def list_servers(self) -> list[Server]:
            listings.append(1)
            return await client.list_servers()

    source = CoolifyNodeSource(Counting(), settings, clock=lambda: now[0])
    nodes = {n.name: n for n in await source()}
    assert nodes["run-2"].memory_mb == 8192 and nodes["run-2"].labels == {"t": "big"}
    assert nodes["run-1"].wildcard_base == "run-1.apps.test" and nodes["run-1"].why_not_target() is None
    assert nodes["run-4"].why_not_target() == "no capacity configured (INKMCP_PLACEMENT_NODES)"
    assert nodes["build"].why_not_target() == "build server"
    assert "not usable" in (nodes["down"].why_not_target() or "")
    assert "wildcard domain" in (nodes["nourl"].why_not_target() or "")
    assert {build.uuid, down.uuid, nourl.uuid} <= {n.uuid for n in nodes.values()}
    # listed once per node_cache_seconds: placements come in bursts and Coolify allows 200 requests a minute
    await source()
    assert len(listings) == 1
    now[0] += settings.node_cache_seconds + 0.1
    assert {n.name for n in await source()} == set(nodes)
    assert len(listings) == 2


async def test_placement_across_three_coolify_servers_of_different_capacity(
        standin: CoolifyStandin, client: CoolifyClient, pstore: Store) -> None:
    servers = run_servers(standin, 3)
    servers.append(standin.add_server("10.77.0.50", name="build", is_build_server=True, usable=True))
    for server, (mb, cpus) in zip(servers, [(2048, 2), (8192, 4), (4096, 2), (65536, 32)], strict=True):
        server.capacity = {"memory_mb": mb, "cpus": cpus}  # the stand-in's capacity facts (not in Coolify's API)
    settings = placement_settings_for(servers)
    assert set(settings.nodes) == {"run-1", "run-2", "run-3", "build"}
    service = PlacementService(pstore.sessionmaker, CoolifyNodeSource(client, settings), settings.policy())
    place = CoolifyPlacement(service)
    services = await make_services(pstore, 6)
    keys = [ServiceKey(account_id="a", project_id=pid, service_id=sid, project_name="p", service_name=f"s{i}")
            for i, (sid, pid) in enumerate(services)]
    # 6144 + 3072 + 2048 persistent: the largest server first, then best fit, never the build server
    got = [await place(keys[0], Mode.persistent, Resources(memory_mb=6144, cpus=1)),
           await place(keys[1], Mode.persistent, Resources(memory_mb=3072, cpus=1)),
           await place(keys[2], Mode.persistent, Resources(memory_mb=2048, cpus=1))]
    assert all(isinstance(g, PlacedServer) for g in got)
    assert [g.wildcard_base for g in got] == ["run-2.apps.test", "run-3.apps.test", "run-2.apps.test"]
    # on_demand at 1/4: 2048 MiB takes 512 MiB of room (run-3 has 1024) but needs 2048 free beside the persistent
    # services when it wakes: only the empty run-1 has that
    assert (await place(keys[3], Mode.on_demand, Resources(memory_mb=2048, cpus=1))).wildcard_base == \
        "run-1.apps.test"
    # redeploy: the same server
    assert await place(keys[0], Mode.persistent, Resources(memory_mb=6144, cpus=1)) == got[0]
    # nothing fits: the contract's ProviderRefused, with what was asked and what to do, no server names
    with pytest.raises(ProviderRefused) as err:
        await place(keys[4], Mode.persistent, Resources(memory_mb=4096, cpus=1))
    assert "4096 MiB" in err.value.reason and "operator" in err.value.reason
    assert not any(f"run-{i}" in err.value.reason for i in (1, 2, 3))
    assert not any(g.uuid in err.value.reason for g in got)
    await place.release(keys[0])
    assert (await place(keys[4], Mode.persistent, Resources(memory_mb=4096, cpus=1))).wildcard_base == \
        "run-2.apps.test"
