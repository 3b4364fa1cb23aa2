"""The on_demand router on a run server (inkmcp/providers/compute/coolify/routes.py) against a real sshd on
loopback, and the stand-in's model of that node's Traefik + Sablier (inkmcp/coolify/standin/node_proxy.py) reading
the very files the writer put there: a request wakes a sleeping app, idleness puts it back to sleep.

The sshd is this machine's OpenSSH with its own config, keys and authorized_keys under a temp dir (the pattern of
tests/hardening/conftest.py), stopped by PID in teardown."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from inkmcp.providers.compute.coolify import routes
from inkmcp.providers.compute.coolify.routes import NodeAddress, NodeRouteSettings, SshNodeRoutes
from tests.hardening.conftest import free_port, have_sshd, make_keys, sshd_config, start_sshd, stop_pid
from tests.requirements import requires

pytestmark = requires("sshd", have_sshd(), "/usr/sbin/sshd or the sftp-server is missing")


@dataclass
class Node:
    """A run server as InkMCP sees it: an sshd, its proxy's dynamic directory, a known_hosts file naming it."""

    address: NodeAddress
    dynamic: Path
    key: Path
    known_hosts: Path
    host_pub: str
    tmp: Path

    def settings(self, **kw: object) -> NodeRouteSettings:
        base: dict[str, object] = {"ssh_key_file": self.key, "ssh_known_hosts": self.known_hosts,
                                   "proxy_dynamic_dir": str(self.dynamic), "ssh_timeout": 5.0}
        return NodeRouteSettings(**{**base, **kw})


def start_node(tmp: Path) -> tuple[Node, int]:
    host_key, client_key = make_keys(tmp)
    port = free_port()
    server = start_sshd(tmp, sshd_config(tmp, port, host_key), port, client_key)
    host_pub = Path(str(host_key) + ".pub").read_text().split()
    known = tmp / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    dynamic = tmp / "data" / "coolify" / "proxy" / "dynamic"
    dynamic.mkdir(parents=True)
    node = Node(NodeAddress(server_uuid="run1uuid0001", host="127.0.0.1", port=port, user="root", name="run-1"),
                dynamic, client_key, known, f"{host_pub[0]} {host_pub[1]}", tmp)
    return node, server.pid


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("node")
    n, pid = start_node(tmp)
    try:
        yield n
    finally:
        stop_pid(pid)


@pytest.fixture
def clean(node: Node) -> Iterator[Node]:
    yield node
    for f in node.dynamic.iterdir():
        f.unlink()


def doc(service: str, host: str = "web-shop.run-1.apps.test") -> dict[str, object]:
    name = "inkmcp-app0uuid0001"
    return {"http": {
        "routers": {name: {"rule": f"Host(`{host}`)", "entryPoints": ["https"], "service": name,
                           "middlewares": [f"{name}-sablier"], "tls": {"certResolver": "letsencrypt"}}},
        "middlewares": {f"{name}-sablier": {"plugin": {"sablier": {
            "sablierUrl": "http://sablier:10000", "group": f"inkmcp-{service}", "sessionDuration": "1m",
            "blocking": {"timeout": "30s"}}}}},
        "services": {name: {"loadBalancer": {"servers": [{"url": "http://app0uuid0001:3000"}]}}}}}


def test_publish_is_atomic_and_idempotent(clean: Node) -> None:
    node = clean
    writer = SshNodeRoutes(node.settings())
    sid = str(uuid.uuid4())
    target = node.dynamic / f"inkmcp-{sid}.yml"
    (node.dynamic / f".inkmcp-{sid}.yml.0badc0ffee00.tmp").write_text("http:\n  rou")  # a write cut off earlier
    assert writer.publish(node.address, sid, doc(sid)) is True
    assert yaml.safe_load(target.read_text()) == doc(sid)
    assert target.stat().st_mode & 0o777 == 0o644
    before = os.stat(target)
    assert writer.publish(node.address, sid, doc(sid)) is False  # same content: not written again
    after = os.stat(target)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # A reader polling the file (as Traefik's watcher does) while it is rewritten never sees a partial document.
    hosts = [f"h{i}.run-1.apps.test" for i in range(4)]
    seen: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.wait(0.002):  # a poll every 2 ms, leaving the GIL to the writer's SSH thread
            seen.append(target.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    inodes = [before.st_ino]
    try:
        for host in hosts:
            assert writer.publish(node.address, sid, doc(sid, host)) is True
            inodes.append(os.stat(target).st_ino)
    finally:
        stop.set()
        reader.join()
    valid = {routes.render(sid, doc(sid, h)) for h in ["web-shop.run-1.apps.test", *hosts]}
    assert len(seen) > 20 and all(s in valid for s in seen), [s for s in seen if s not in valid][:1]
    assert all(a != b for a, b in itertools.pairwise(inodes)), inodes  # renamed over, never rewritten
    assert sorted(p.name for p in node.dynamic.iterdir()) == [target.name]  # no temp file left behind



def test_list_names_only_inkmcps_files_and_remove_deletes_one(clean: Node) -> None:
    node = clean
    writer = SshNodeRoutes(node.settings())
    sid, other = str(uuid.uuid4()), str(uuid.uuid4())
    target = node.dynamic / f"inkmcp-{sid}.yml"
    target.write_text("http: {}\n")
    writer.publish(node.address, other, doc(other))
    (node.dynamic / "coolify.yaml").write_text("http: {}\n")  # Coolify's own file: never listed nor touched
    for foreign in ("inkmcp-Not_Ours.yml", "inkmcp-x.yaml", f".inkmcp-{sid}.yml.0123.tmp"):
        (node.dynamic / foreign).write_text("http: {}\n")
    assert [r.service_id for r in writer.list(node.address)] == sorted([sid, other])
    assert writer.remove(node.address, sid) is True
    assert writer.remove(node.address, sid) is False
    assert not target.exists() and (node.dynamic / f"inkmcp-{other}.yml").exists()
    assert (node.dynamic / "coolify.yaml").exists()
    assert [r.service_id for r in writer.list(node.address)] == [other]


def test_file_names_come_from_inkmcps_ids_only(clean: Node) -> None:
    writer = SshNodeRoutes(clean.settings())
    for evil in ("../../etc/cron.d/x", "x.yml", "inkmcp-a/../../b", "", "A" * 36, "-x", "a" * 64, "a\nb", "abc\n"):
        with pytest.raises(ValueError, match="not an InkMCP service id"):
            writer.publish(clean.address, evil, doc("x"))
    sid = str(uuid.uuid4())
    # tenant text cannot reach the document either: a rule or a name outside InkMCP's grammar is refused
    with pytest.raises(ValueError, match="rule part"):
        writer.publish(clean.address, sid, doc(sid, "a.test`) || PathPrefix(`/"))
    bad = doc(sid)
    bad["http"]["routers"] = {"tenant-router": {"rule": "Host(`a.test`)"}}  # type: ignore[index]
    with pytest.raises(ValueError, match="not an InkMCP name"):
        writer.publish(clean.address, sid, bad)
    assert list(clean.dynamic.iterdir()) == []
    # the name a mapped on_demand service gets depends on its id alone, whatever its project/service names
    from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
    from inkmcp.providers.compute.base import Resources, ServiceKey
    from inkmcp.providers.compute.coolify import mapping

    key = ServiceKey(account_id="a", project_id=str(uuid.uuid4()), service_id=sid,
                     project_name="../../etc", service_name="x.yml")
    spec = mapping.AppSpec(key=key, process=mapping.Process("web", None, True), service_type=ServiceType.backend,
                           mode=Mode.on_demand, plan=BuildPlan(stack=Stack.python, processes=[
                               ProcessSpec(name="web", command="python app.py", routed=True)], source="call"),
                           commit="a" * 40, resources=Resources(memory_mb=256, cpus=0.5),
                           server=mapping.PlacedServer("run1uuid0001", "run-1.apps.test"),
                           repo_url="https://example.com/r.git")  # fmt: skip
    assert writer.publish(clean.address, sid, mapping.sablier_router(spec, "app0uuid0001", mapping.MappingSettings()))
    assert [p.name for p in clean.dynamic.iterdir()] == [f"inkmcp-{sid}.yml"]


def test_a_host_key_not_in_known_hosts_is_refused_and_nothing_is_written(clean: Node, tmp_path: Path) -> None:
    sid = str(uuid.uuid4())
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True, timeout=10)
    wrong = tmp_path / "known_hosts_wrong"
    kind, blob = Path(str(stranger) + ".pub").read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{clean.address.port} {kind} {blob}\n")
    with pytest.raises(routes.NodeHostKeyRefused, match="differs from the one in") as e:
        SshNodeRoutes(clean.settings(ssh_known_hosts=wrong)).publish(clean.address, sid, doc(sid))
    assert str(wrong) in str(e.value) and not e.value.retryable
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    with pytest.raises(routes.NodeHostKeyRefused, match=r"not in .*known_hosts_empty.*ssh-keyscan"):
        SshNodeRoutes(clean.settings(ssh_known_hosts=empty)).publish(clean.address, sid, doc(sid))
    assert list(clean.dynamic.iterdir()) == []


def test_errors_say_what_to_fix(clean: Node, tmp_path: Path) -> None:
    sid = str(uuid.uuid4())
    closed = NodeAddress("run2uuid0002", "127.0.0.1", free_port(), "root", "run-2")
    with pytest.raises(routes.NodeUnreachable, match=r"run-2 \(root@127.0.0.1:\d+\).*sshd listens on port") as e:
        SshNodeRoutes(clean.settings()).publish(closed, sid, doc(sid))
    assert e.value.retryable

    other_key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True, timeout=10)
    with pytest.raises(routes.NodeAuthRefused, match=r"refused InkMCP's key .*other for user 'root'.*authorized_keys"):
        SshNodeRoutes(clean.settings(ssh_key_file=other_key)).publish(clean.address, sid, doc(sid))

    with pytest.raises(routes.NodeDirectoryMissing, match="INKMCP_NODE_PROXY_DYNAMIC_DIR"):
        SshNodeRoutes(clean.settings(proxy_dynamic_dir=str(clean.tmp / "no" / "such"))).publish(
            clean.address, sid, doc(sid))

    with pytest.raises(routes.NodeRoutesNotConfigured, match="INKMCP_NODE_SSH_KEY_FILE"):
        SshNodeRoutes(NodeRouteSettings(ssh_known_hosts=clean.known_hosts)).publish(clean.address, sid, doc(sid))
    with pytest.raises(ValueError, match="INKMCP_NODE_PROXY_DYNAMIC_DIR"):
        NodeRouteSettings(proxy_dynamic_dir="data/../dynamic")
    assert list(clean.dynamic.iterdir()) == []


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, clean: Node) -> None:
    monkeypatch.setenv("INKMCP_NODE_SSH_KEY_FILE", str(clean.key))
    monkeypatch.setenv("INKMCP_NODE_SSH_KNOWN_HOSTS", str(clean.known_hosts))
    monkeypatch.setenv("INKMCP_NODE_SSH_USER", "root")
    monkeypatch.setenv("INKMCP_NODE_PROXY_DYNAMIC_DIR", str(clean.dynamic))
    s = NodeRouteSettings()
    assert (s.ssh_key_file, s.ssh_known_hosts, s.ssh_user, s.proxy_dynamic_dir) == \
           (clean.key, clean.known_hosts, "root", str(clean.dynamic))
    assert NodeRouteSettings.model_fields["proxy_dynamic_dir"].default == "/data/coolify/proxy/dynamic"
    shutil.rmtree(clean.tmp / "unused", ignore_errors=True)


# -- the node's Traefik + Sablier (stand-in) serving what the writer put there ------------------------------------

APP = {"app.py": "import os, time\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n"
                 "started = time.time()\n"
                 "class H(BaseHTTPRequestHandler):\n"
                 "    def do_GET(self):\n"
                 "        b = f'awake since {started}'.encode()\n"
                 "        self.send_response(200); self.send_header('Content-Length', str(len(b)))\n"
                 "        self.end_headers(); self.wfile.write(b)\n"
                 "HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"}


@dataclass
class Deployed:
    standin: Any
    runner: Any
    provider: Any
    writer: SshNodeRoutes
    key: Any
    app_uuid: str
    url: str
    book: Any


@pytest.fixture
async def deployed(clean: Node) -> AsyncIterator[Deployed]:
    """An on_demand service released by CoolifyComputeProvider on the stand-in, whose run server's address is the
    sshd above: the provider writes its router there over SSH, the runner runs it, the node proxy serves it."""
    from pydantic import SecretStr

    from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
    from inkmcp.coolify.client import CoolifyClient
    from inkmcp.coolify.standin import CoolifyStandin
    from inkmcp.coolify.standin.runner import AppRunner, local_repo_url
    from inkmcp.providers.compute.base import ReleaseRequest, Resources, ServiceKey
    from inkmcp.providers.compute.coolify import mapping, policy
    from inkmcp.providers.compute.coolify.provider import CoolifyComputeProvider
    from tests.contract.conftest import Events, RefBook
    from tests.support import git_repo, traversable_tmpdir

    root = traversable_tmpdir("inkmcp-routes-")
    standin = CoolifyStandin(root / "nodes", status_delay=0.05, validation_delay=0.01)
    standin.start()
    runner = provider = None
    try:
        token = standin.add_token("root")
        run = standin.add_servers(1, wildcard_base="apps.test")[0]
        with standin._lock:  # the run server's SSH address is the sshd of this test
            run.ip, run.port = clean.address.host, clean.address.port
        standin.add_server("10.77.0.200", name="builder", is_build_server=True, usable=True)
        runner = AppRunner(root / "runner").attach(standin)
        runner.node_proxy.dynamic_dirs[run.uuid] = clean.dynamic
        runner.node_proxy.blocking_refresh = 0.5
        runner.node_proxy.expiration_interval = 0.1
        client = CoolifyClient(standin.url, token, transport=policy.PolicyTransport())
        provider = CoolifyComputeProvider(client, root / "work", settings=mapping.MappingSettings(sablier_session="2s"),
                                          local_repo_url=local_repo_url, poll_interval=0.1, poll_max_interval=0.3)
        writer = SshNodeRoutes(clean.settings())
        provider.node_routes = writer  # type: ignore[attr-defined]
        repo = git_repo(root / "repos" / "sleepy", APP)
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        key = ServiceKey(account_id="acct", project_id=str(uuid.uuid4()), service_id=str(uuid.uuid4()),
                         project_name="shop", service_name="sleepy")
        plan = BuildPlan(stack=Stack.python, source="call",
                         processes=(ProcessSpec(name="web", command="python app.py", routed=True),))
        # a webapp: Coolify's HTTP health check tells Sablier when the woken app answers. A backend has none, so
        # Sablier calls it ready once its process runs and Traefik forwards at its next check (0.5 s here, 5 s in
        # Sablier): an app still importing then was a 502 (CI run 56 at load ~9; a 1 s start delay: 502 every time)
        request = ReleaseRequest(deployment_id=uuid.uuid4().hex, key=key, service_type=ServiceType.webapp,
                                 mode=Mode.on_demand, plan=plan, commit=commit, resources=Resources(memory_mb=256,
                                 cpus=0.5), repo_url=SecretStr(str(repo)), env={}, checkout_dir=None)  # fmt: skip
        book = RefBook()
        result = await provider.release(book.request(request), Events(), book.recorder(key, request.deployment_id))
        ref = book.refs[(routes_scope(), key.service_id)]
        assert result.url is not None
        yield Deployed(standin, runner, provider, writer, book.key(key), ref["apps"]["web"], result.url, book)
    finally:
        if provider is not None:
            await provider.close()
        if runner is not None:
            runner.close()
        standin.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert standin.request_violations == [] and standin.response_violations == []


def routes_scope() -> Any:
    from inkmcp.providers.compute.base import RefScope

    return RefScope.service


def get(d: Deployed, url: str) -> httpx.Response:
    host = urlsplit(url).hostname
    return httpx.get(f"http://127.0.0.1:{d.runner.proxy_port}/", headers={"Host": str(host)}, timeout=30)


def until(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout:g} s")


@pytest.mark.slow  # a release through the stand-in's runner (a real build and process)
async def test_the_node_proxy_wakes_a_sleeping_app_on_request_and_stops_it_when_idle(deployed: Deployed,
                                                                                      clean: Node) -> None:
    from inkmcp.providers.compute.base import RuntimeState

    d = deployed
    proxy = d.runner.node_proxy
    path = clean.dynamic / f"inkmcp-{d.key.service_id}.yml"
    assert path.exists()  # the provider wrote the router over SSH after the release went live
    first = get(d, d.url)
    assert first.status_code == 200 and first.text.startswith("awake since"), first.text
    pid = d.runner.live[d.app_uuid].popen.pid

    # 2 s without a request: Sablier's session expires and it stops the container; Coolify shows it exited
    until(lambda: ("stop", d.app_uuid) in proxy.events, 15, "the idle app stopped")
    until(lambda: not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2], 10,
          "its process gone")
    deadline = time.monotonic() + 10
    while (await d.provider.runtime(d.key)).state != RuntimeState.sleeping:
        assert time.monotonic() < deadline, (await d.provider.runtime(d.key), d.standin.applications[d.app_uuid].status)
        await asyncio.sleep(0.1)

    woke = time.monotonic()
    again = await asyncio.to_thread(get, d, d.url)  # the request wakes it and is answered by the app itself
    assert again.status_code == 200 and again.text.startswith("awake since") and again.text != first.text, \
        (again.status_code, again.text, proxy.events, proxy.errors)
    assert time.monotonic() - woke < 10 and ("start", d.app_uuid) in proxy.events
    assert proxy.errors == []
    assert get(d, "https://nothing-here.run-1.apps.test").status_code == 404


@pytest.mark.slow  # a release through the stand-in's runner (a real build and process)
async def test_a_wrong_router_file_breaks_the_route(deployed: Deployed, clean: Node) -> None:
    d = deployed
    from inkmcp.providers.compute.coolify import mapping

    proxy = d.runner.node_proxy
    node = NodeAddress("x", clean.address.host, clean.address.port, "root")
    sid = d.key.service_id
    good = yaml.safe_load((clean.dynamic / f"inkmcp-{sid}.yml").read_text())
    name = f"inkmcp-{d.app_uuid}"
    assert get(d, d.url).status_code == 200

    wrong_port = json_copy(good)
    wrong_port["http"]["services"][name]["loadBalancer"]["servers"][0]["url"] = f"http://{d.app_uuid}:9"
    d.writer.publish(node, sid, wrong_port)
    assert get(d, d.url).status_code == 502
    assert any("listens on" in e for e in proxy.errors), proxy.errors

    # the name Coolify gives a container without a consistent name never resolves
    wrong_name = json_copy(good)
    wrong_name["http"]["services"][name]["loadBalancer"]["servers"][0]["url"] = \
        f"http://{d.app_uuid}-120000123456:{mapping.DEFAULT_PORT}"
    d.writer.publish(node, sid, wrong_name)
    assert get(d, d.url).status_code == 502
    assert any("not the name of a running container" in e for e in proxy.errors), proxy.errors

    other_group = json_copy(good)
    other_group["http"]["middlewares"][f"{name}-sablier"]["plugin"]["sablier"]["group"] = "inkmcp-someone-else"
    d.writer.publish(node, sid, other_group)
    assert get(d, d.url).status_code == 404  # Sablier: no container carries that group

    both = json_copy(good)
    both["http"]["middlewares"][f"{name}-sablier"]["plugin"]["sablier"]["dynamic"] = {"displayName": "x"}
    d.writer.publish(node, sid, both)
    assert get(d, d.url).status_code == 404  # the plugin refuses the middleware: the router is not served
    assert any("only supply one strategy" in e for e in proxy.errors), proxy.errors

    d.writer.publish(node, sid, good)
    assert get(d, d.url).text.startswith("awake since")

    run = next(iter(s for s in d.standin.servers.values() if s.ip == clean.address.host))
    d.standin.start_proxy(run.uuid)  # Coolify's default proxy: Traefik without the Sablier plugin
    assert get(d, d.url).status_code == 404
    assert any("plugin sablier is not loaded" in e for e in proxy.errors), proxy.errors
    from inkmcp.coolify.proxy import sablier_flags

    with d.standin._lock:
        run.running_proxy = {**run.running_proxy, "command": [*run.running_proxy["command"],
                                                              *sablier_flags("v1.3.0")]}  # fmt: skip
    assert get(d, d.url).text.startswith("awake since")  # registration's flags: served again


def json_copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


class Recording:
    """A writer that records what the provider asks of it (the SSH path itself is tested above, against sshd)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}

    async def apublish(self, node: NodeAddress, service_id: str, doc: dict[str, Any]) -> bool:
        self.calls.append(("publish", node.host, service_id))
        self.docs[(node.host, service_id)] = doc
        return True

    async def aremove(self, node: NodeAddress, service_id: str) -> bool:
        self.calls.append(("remove", node.host, service_id))
        return True

    async def alist(self, node: NodeAddress) -> list[routes.RouteFile]:
        return []


async def test_the_provider_side_publishes_on_the_hosting_node_and_cleans_up_on_mode_change_move_and_delete() -> None:
    from types import SimpleNamespace

    from pydantic import SecretStr

    from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
    from inkmcp.coolify import models as m
    from inkmcp.coolify.client import CoolifyNotFound
    from inkmcp.providers.compute.base import ProviderRefused, ProviderUnavailable, ReleaseRequest, ServiceKey
    from inkmcp.providers.compute.coolify import mapping

    servers = {"run1uuid0001": m.Server(uuid="run1uuid0001", ip="192.0.2.10", port=2222, user="root", name="run-1"),
               "run2uuid0002": m.Server(uuid="run2uuid0002", ip="192.0.2.20", port=22, user="root", name="run-2")}

    class Client:
        async def get_server(self, uuid: str) -> m.Server:
            if uuid not in servers:
                raise CoolifyNotFound("Server not found.", method="GET", path=f"/servers/{uuid}", status=404)
            return servers[uuid]

    writer = Recording()
    provider = SimpleNamespace(client=Client(), settings=mapping.MappingSettings(), node_routes=writer)
    plan = BuildPlan(stack=Stack.python, source="call",
                     processes=(ProcessSpec(name="web", command="python app.py", routed=True),
                                ProcessSpec(name="worker", command="python w.py", routed=False)))
    key = ServiceKey(account_id="a", project_id=str(uuid.uuid4()), service_id=str(uuid.uuid4()), project_name="shop",
                     service_name="api")

    def request(mode: Mode, ref: dict[str, Any]) -> ReleaseRequest:
        return ReleaseRequest(deployment_id="d1", key=key.model_copy(update={"service_ref": ref}),
                              service_type=ServiceType.backend, mode=mode, plan=plan, commit="a" * 40,
                              repo_url=SecretStr("https://example.com/r.git"), checkout_dir=None)  # fmt: skip

    one = mapping.PlacedServer("run1uuid0001", "run-1.apps.test")
    two = mapping.PlacedServer("run2uuid0002", "run-2.apps.test")

    def specs(req: ReleaseRequest, server: mapping.PlacedServer) -> dict[str, mapping.AppSpec]:
        return {p.name: mapping.AppSpec(key=req.key, process=p, service_type=req.service_type, mode=req.mode,
                                        plan=req.plan, commit=req.commit, resources=req.resources, server=server,
                                        repo_url="https://example.com/r.git")
                for p in mapping.processes(req.service_type, req.plan)}  # fmt: skip

    apps = {"web": "appweb000001", "worker": "appwrk000001"}
    persistent = request(Mode.persistent, {})
    await routes.after_release(provider, persistent, one, apps, specs(persistent, one))
    assert writer.calls == []  # never on_demand: no SSH at all

    on_demand = request(Mode.on_demand, {})
    await routes.after_release(provider, on_demand, one, apps, specs(on_demand, one))
    assert writer.calls == [("publish", "192.0.2.10", key.service_id)]  # the node that hosts it, once
    doc = writer.docs[("192.0.2.10", key.service_id)]
    assert list(doc["http"]["routers"]) == ["inkmcp-appweb000001"]  # the routed process only, never the worker
    live = {"server_uuid": one.uuid, "routed": "web", "live_labels": {"web": "sablier.enable=true"},
            "dns_records": [{"name": "www.example.org", "type": "CNAME", "value": "x"}]}

    back = request(Mode.persistent, live)  # on_demand -> persistent: Coolify's label router takes over
    await routes.after_release(provider, back, one, apps, specs(back, one))
    assert writer.calls[-1] == ("remove", "192.0.2.10", key.service_id)

    moved = request(Mode.on_demand, live)
    new_apps = {"web": "appweb000002", "worker": "appwrk000002"}
    await routes.after_move(provider, moved.key, moved, two, new_apps)
    assert writer.calls[-1] == ("publish", "192.0.2.20", key.service_id)  # before the switch; the old one stays
    assert await routes.remove_service(provider, moved.key, one.uuid) is True  # after the switch
    assert writer.calls[-1] == ("remove", "192.0.2.10", key.service_id)
    rule = writer.docs[("192.0.2.20", key.service_id)]["http"]["routers"]["inkmcp-appweb000002"]["rule"]
    assert rule == "Host(`api-shop.run-2.apps.test`) || Host(`www.example.org`)"  # custom domain kept

    assert await routes.remove_service(provider, moved.key.model_copy(
        update={"service_ref": {**live, "server_uuid": two.uuid}})) is True
    assert writer.calls[-1] == ("remove", "192.0.2.20", key.service_id)

    class Down(Recording):
        async def apublish(self, node: NodeAddress, service_id: str, doc: dict[str, Any]) -> bool:
            raise routes.NodeUnreachable("cannot open an SSH session")

    gone = mapping.PlacedServer("gone0uuid0003", "run-3.apps.test")  # a server deleted in Coolify meanwhile
    assert await routes.remove_service(provider, moved.key, gone.uuid) is False  # nothing left to clean there
    with pytest.raises(ProviderRefused, match="Server not found"):
        await routes.after_release(provider, on_demand, gone, apps, specs(on_demand, gone))

    provider.node_routes = Down()
    with pytest.raises(ProviderUnavailable, match="cannot open an SSH session"):  # retried by core
        await routes.after_release(provider, on_demand, one, apps, specs(on_demand, one))
    provider.node_routes = None  # not configured (INKMCP_NODE_SSH_KEY_FILE unset): the release is refused, saying so
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("INKMCP_NODE_SSH_KEY_FILE", raising=False)
        with pytest.raises(ProviderRefused, match="INKMCP_NODE_SSH_KEY_FILE"):
            await routes.after_release(provider, on_demand, one, apps, specs(on_demand, one))
