"""The stand-in runner's model of what answers HTTP on a Coolify run server: Coolify's Traefik (`coolify-proxy`,
bootstrap/helpers/proxy.php) with its two providers, plus Sablier on the `coolify` network.

Why a model, and how faithful: tests must reach what the Coolify provider deploys the way the Internet would, and
an on_demand service is reachable *only* through what InkMCP wrote into the node's proxy directory over SSH
(inkmcp/providers/compute/coolify/routes.py). So this proxy reads exactly those files and serves exactly what
they say; a wrong file (an unknown middleware, a strategy Sablier refuses, a service URL no container answers,
a group no container carries) fails the request as Traefik or Sablier would, and the problem is recorded in
`NodeProxy.errors`.

* **Docker provider** (`--providers.docker`, exposedbydefault=false): the hosts of a running application's `fqdn`
  go to its live process (Coolify generates the Traefik labels from `domains`); `docker_route` keeps that table
  (`AppRunner.routes`, host → port). A stopped container leaves it.
* **File provider** (`--providers.file.directory=/traefik/dynamic/`, watched): every `*.yml`/`*.yaml` of the
  node's dynamic directory (`<nodes_root>/<ip>/data/coolify/proxy/dynamic`, or `dynamic_dirs[server uuid]`),
  re-read on every request (the watcher's effect without its delay). Modelled: `http.routers` with
  `Host(...)` rules joined by `||`, entry points `http`/`https`, `tls.certResolver` `letsencrypt` (Coolify's
  resolver); `http.middlewares` of type `plugin.sablier` only (sablier-traefik-plugin config.go validation:
  `sablierUrl`, `group` or `names`, exactly one of `dynamic`/`blocking`, Go durations); `http.services` with a
  `loadBalancer.servers[0].url` of `http://<name>:<port>`. A `plugin.sablier` middleware exists only when the
  node's proxy loads the plugin (`--experimental.plugins.sablier.*` in the running compose's command, which
  InkMCP's server registration adds; a proxy the stand-in never started is taken as registered). `<name>`
  resolves on the `coolify` network as Docker's
  DNS would: to a *running* container whose network alias it is — Coolify names containers `<uuid>-<time>`
  unless `is_consistent_container_name_enabled` makes the name (and alias) the uuid (ApplicationDeploymentJob
  `generate_compose_file`, docker.php `generateApplicationContainerName`). `<port>` must be the port the app
  listens on inside its container (its `PORT` env, else `ports_exposes`), else the connection is refused (502).
  DNS decides which node a host reaches: the node whose wildcard domain the host is under, else the first node
  with a router for it.
* **Sablier** (sablierapp/sablier: pkg/sablier/instance_request.go, session_request.go, docker provider
  container_inspect.go): the instances of a group are the node's containers labelled `sablier.enable=true` and
  `sablier.group=<group>` (stopped ones included; a container Coolify removed is no instance). A request for an
  instance without a session starts it (`docker start`, here: its process again, same workdir, env and port)
  and reports it *starting*; later checks inspect it (running without a health check = ready, Sablier's
  behaviour; with Coolify's HTTP health check, ready once it answers below 400). Blocking strategy: re-check
  every `blocking_refresh` seconds (Sablier's 5 s default) until ready,
  or answer 504 after the timeout (default 1 m). Dynamic strategy: a self-refreshing waiting page (200,
  `X-Sablier-Session-Status: not-ready`) until ready. Every request sets the instances' session to expire after
  `sessionDuration` (default 5 m); an expired session stops the instance (`docker stop`), checked every
  `expiration_interval` seconds (Sablier's 20 s default). Coolify then shows the application `exited`.

Deviations (the runner's, see runner.py): processes share this machine's network namespace, so a container's
port is the free port the runner chose; the URL port is checked against the port the app was told to use.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import html
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

SABLIER_HOST = "sablier"
SABLIER_PORT = 10000
ENTRY_POINTS = frozenset({"http", "https"})
CERT_RESOLVERS = frozenset({"letsencrypt"})
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_HOST_PART = re.compile(r"""^Host\(\s*(?:`([^`]*)`|"([^"]*)")\s*\)$""")


def go_duration(text: Any, where: str) -> float:
    """A Go `time.ParseDuration` string in seconds ("1m30s", "500ms", "0"); ValueError naming `where` otherwise."""
    raw = str(text).strip()
    if raw == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(raw):
        m = _DURATION_PART.match(raw, pos)
        if not m:
            raise ValueError(f"{where}: {text!r} is not a Go duration (e.g. 30s, 5m, 1h30m)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not raw:
        raise ValueError(f"{where}: empty duration")
    return total


@dataclass
class Sablier:
    """One `plugin.sablier` middleware, validated as the plugin's config.go does."""

    name: str
    url: str
    group: str | None
    names: list[str]
    session: float | None
    strategy: str
    timeout: float | None
    display_name: str


# --- billcore (issue 13): Traefik's `replacePath` middleware and a service outside the coolify network (InkMCP's
# public URL, `passHostHeader: false`): the router of a service whose account cannot pay sends it to InkMCP's 402 page
@dataclass
class ReplacePath:
    """One `replacePath` middleware (Traefik: the request's path becomes `path`, the query is kept)."""

    name: str
    path: str


def _middleware(name: str, spec: Any, source: str) -> Sablier | ReplacePath:
    if isinstance(spec, dict) and set(spec) == {"replacePath"}:
        conf = spec["replacePath"]
        if not isinstance(conf, dict) or set(conf) != {"path"} or not str(conf["path"]).startswith("/"):
            raise ValueError(f"{source}: middleware {name}: replacePath needs exactly `path` (an absolute path)")
        return ReplacePath(name, str(conf["path"]))
    return _sablier(name, spec, source)
# --- end billcore


@dataclass
class Router:
    name: str
    hosts: list[str]
    middlewares: list[str]
    service: str
    source: str


@dataclass
class FileConfig:
    """The merged file-provider configuration of one node."""

    routers: dict[str, Router] = field(default_factory=dict)
    middlewares: dict[str, Sablier | ReplacePath] = field(default_factory=dict)  # billcore: | ReplacePath
    services: dict[str, str] = field(default_factory=dict)
    """name -> the first server URL of its loadBalancer."""
    own_host: set[str] = field(default_factory=set)  # --- billcore: services with passHostHeader false
    errors: list[str] = field(default_factory=list)


def _sablier(name: str, spec: Any, source: str) -> Sablier:
    if not isinstance(spec, dict) or set(spec) != {"plugin"} or not isinstance(spec["plugin"], dict) \
            or set(spec["plugin"]) != {"sablier"}:
        raise ValueError(f"{source}: middleware {name}: only plugin.sablier is modelled by the stand-in")
    conf = spec["plugin"]["sablier"]
    if not isinstance(conf, dict):
        raise ValueError(f"{source}: middleware {name}: plugin.sablier must be a mapping")
    known = {"sablierUrl", "group", "names", "sessionDuration", "dynamic", "blocking", "keepAliveInterval",
             "failOpen", "ignoreUserAgent"}  # fmt: skip
    if set(conf) - known:
        raise ValueError(f"{source}: middleware {name}: unknown plugin option(s) {sorted(set(conf) - known)}")
    url = str(conf.get("sablierUrl") or "")
    if not url:
        raise ValueError(f"{source}: middleware {name}: sablierUrl cannot be empty")
    names = [n.strip() for n in str(conf.get("names") or "").split(",") if n.strip()]
    group = str(conf["group"]) if conf.get("group") else None
    if not names and not group:
        raise ValueError(f"{source}: middleware {name}: you must specify at least one name or a group")
    strategies = [s for s in ("dynamic", "blocking") if conf.get(s) is not None]
    if len(strategies) != 1:
        raise ValueError(f"{source}: middleware {name}: " + ("only supply one strategy: dynamic or blocking"
                                                             if strategies else "no strategy configured"))
    strategy = strategies[0]
    options = conf[strategy] if isinstance(conf[strategy], dict) else {}
    session = go_duration(conf["sessionDuration"], f"{name}.sessionDuration") if conf.get("sessionDuration") else None
    timeout = None
    if strategy == "blocking" and options.get("timeout"):
        timeout = go_duration(options["timeout"], f"{name}.blocking.timeout")
    if strategy == "dynamic" and options.get("refreshFrequency"):
        go_duration(options["refreshFrequency"], f"{name}.dynamic.refreshFrequency")
    return Sablier(name, url, group, names, session, strategy, timeout,
                   str(options.get("displayName") or name) if strategy == "dynamic" else name)


def _router(name: str, spec: Any, source: str) -> Router:
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: router {name} must be a mapping")
    hosts: list[str] = []
    for part in str(spec.get("rule") or "").split("||"):
        m = _HOST_PART.match(part.strip())
        if not m:
            raise ValueError(f"{source}: router {name}: rule part {part.strip()!r} is not Host(`...`) (the only "
                             "matcher the stand-in models)")
        hosts.append((m.group(1) or m.group(2) or "").lower())
    entry = spec.get("entryPoints")
    if entry is not None and (not isinstance(entry, list) or not entry or set(entry) - ENTRY_POINTS):
        raise ValueError(f"{source}: router {name}: entryPoints {entry!r}: Coolify's proxy has only http, https")
    tls = spec.get("tls")
    if tls is not None:
        resolver = tls.get("certResolver") if isinstance(tls, dict) else None
        if resolver is not None and resolver not in CERT_RESOLVERS:
            raise ValueError(f"{source}: router {name}: certResolver {resolver!r} does not exist on Coolify's "
                             "proxy (letsencrypt)")
    middlewares = spec.get("middlewares") or []
    if not isinstance(middlewares, list):
        raise ValueError(f"{source}: router {name}: middlewares must be a list")
    service = spec.get("service")
    if not service:
        raise ValueError(f"{source}: router {name}: no service")
    return Router(name, hosts, [str(m).removesuffix("@file") for m in middlewares],
                  str(service).removesuffix("@file"), source)


def load_dynamic_dir(directory: Path) -> FileConfig:
    """The file provider's view of `directory` (Traefik reads `.yml`, `.yaml` and `.toml`; TOML is not used by
    InkMCP and reported). A file that does not parse contributes nothing; names defined twice keep the first."""
    conf = FileConfig()
    if not directory.is_dir():
        return conf
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".yml", ".yaml", ".toml") or not path.is_file():
            continue
        source = path.name
        if path.suffix == ".toml":
            conf.errors.append(f"{source}: TOML is not modelled by the stand-in")
            continue
        try:
            doc = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
            conf.errors.append(f"{source}: cannot parse: {e}")
            continue
        http = (doc or {}).get("http") if isinstance(doc, dict) else None
        if http is None:
            continue
        if not isinstance(http, dict):
            conf.errors.append(f"{source}: http must be a mapping")
            continue
        for section, build, into in (("middlewares", _middleware, conf.middlewares),  # billcore: _middleware
                                     ("routers", _router, conf.routers)):
            for name, spec in (http.get(section) or {}).items():
                if name in into:
                    conf.errors.append(f"{source}: {section[:-1]} {name} defined more than once; the first is kept")
                    continue
                try:
                    into[name] = build(str(name), spec, source)  # type: ignore[operator]
                except (ValueError, TypeError, AttributeError) as e:
                    conf.errors.append(str(e))
        for name, spec in (http.get("services") or {}).items():
            try:
                url = spec["loadBalancer"]["servers"][0]["url"]
            except (KeyError, IndexError, TypeError):
                conf.errors.append(f"{source}: service {name}: needs loadBalancer.servers[0].url")
                continue
            if name in conf.services:
                conf.errors.append(f"{source}: service {name} defined more than once; the first is kept")
                continue
            conf.services[str(name)] = str(url)
            if spec["loadBalancer"].get("passHostHeader") is False:  # --- billcore
                conf.own_host.add(str(name))
    for router in list(conf.routers.values()):  # a router whose parts are missing is in error: not served
        missing = [m for m in router.middlewares if m not in conf.middlewares]
        if missing or router.service not in conf.services:
            what = f"middleware {missing[0]}" if missing else f"service {router.service}"
            conf.errors.append(f"{router.source}: router {router.name}: {what} does not exist")
            del conf.routers[router.name]
    return conf


def plugin_loaded(server: Any) -> bool | None:
    """Whether the node's running Traefik loads the Sablier plugin (static configuration, the proxy compose's
    command); None when the stand-in never started that proxy (then it is taken as registered by InkMCP)."""
    running = getattr(server, "running_proxy", None)
    if running is None:
        return None
    return any(str(c).lower().startswith("--experimental.plugins.sablier.modulename=github.com/sablierapp/"
                                         "sablier-traefik-plugin") for c in running.get("command") or [])


def labels_of(app: Any) -> dict[str, str]:
    """An application's container labels from `custom_labels` (base64 of `key=value` lines, as Coolify stores them)."""
    raw = str(app.fields.get("custom_labels") or "")
    try:
        text = base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = raw
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def docker_route(runner: Any, app: Any, port: int, old_port: int | None) -> None:
    """Docker provider: the application's `fqdn` hosts now go to `port`; whatever went to its old process is
    dropped (one assignment, so a request never sees a half-updated table)."""
    hosts = {h.lower() for u in str(app.fields.get("fqdn") or "").split(",") if u.strip()
             if (h := urlsplit(u.strip()).hostname)}
    routes = {h: p for h, p in runner.routes.items() if h not in hosts and p != old_port}
    runner.routes = {**routes, **{h: port for h in hosts}}


def _healthy(port: int, path: str) -> bool:
    """Docker's health status of a container with Coolify's HTTP check (`curl -f` of the path inside it), taken
    now instead of every interval: healthy when it answers below 400."""
    path = path if re.fullmatch(r"[a-zA-Z0-9/\-_.~%,;]+", path) and path.startswith("/") else "/"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            status = s.recv(64).split(b" ", 2)
        return len(status) > 1 and status[1].isdigit() and int(status[1]) < 400
    except OSError:
        return False


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Refused(Exception):
    """An HTTP answer instead of forwarding (status, text, extra headers)."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or {}


class NodeProxy:
    """See the module docstring. Started by `AppRunner.attach`; its loop and thread are the runner's `_loop` and
    `_proxy_thread`, so `AppRunner.close` stops it."""

    def __init__(self, runner: Any, *, port: int = 0, blocking_refresh: float = 5.0,
                 expiration_interval: float = 20.0, default_session: float = 300.0,
                 default_blocking_timeout: float = 60.0) -> None:  # fmt: skip
        self.runner = runner
        self.port = port
        self.blocking_refresh = blocking_refresh
        self.expiration_interval = expiration_interval
        self.default_session = default_session
        self.default_blocking_timeout = default_blocking_timeout
        self.dynamic_dirs: dict[str, Path] = {}
        """server uuid -> its proxy's dynamic directory, where it is not `<nodes_root>/<ip>/data/coolify/proxy/
        dynamic` (e.g. a run server whose sshd is this machine's, in the e2e suite)."""
        self.sessions: dict[str, tuple[str, float]] = {}
        """Sablier's session store: instance (application uuid) -> (status, expires at)."""
        self.asleep: dict[str, Any] = {}
        """Stopped instances (the runner's Proc of each), kept so Sablier can start them again."""
        self.events: list[tuple[str, str]] = []
        """("start" | "stop", application uuid), in order: what Sablier did."""
        self.errors: list[str] = []
        """Configuration errors Traefik or Sablier reported (each once)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> NodeProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
                self.port = server.sockets[0].getsockname()[1]
            except BaseException as e:  # reported to start()
                failure.append(e)
                ready.set()
                loop.close()
                return
            self.loop = loop
            expiry = loop.create_task(self._expire_sessions())
            ready.set()
            loop.run_forever()
            server.close()
            expiry.cancel()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self.thread = threading.Thread(target=run, name="standin-node-proxy", daemon=True)
        self.thread.start()
        ready.wait(10)
        if failure:
            raise RuntimeError(f"the stand-in's node proxy could not listen on port {self.port}: {failure[0]}")
        return self

    def close(self) -> None:
        if self.loop is not None and self.thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        self.loop = self.thread = None
        for proc in self.asleep.values():
            proc.stop(0.5)
        self.asleep.clear()

    # -- where a host goes ------------------------------------------------------------------------------------

    @property
    def _standin(self) -> Any:
        return self.runner._standin

    def dynamic_dir(self, server: Any) -> Path:
        return self.dynamic_dirs.get(server.uuid) or \
            Path(self._standin.node_root(server.ip)) / "data" / "coolify" / "proxy" / "dynamic"

    def _servers(self, host: str) -> list[Any]:
        """The nodes in the order DNS would send `host` to them: the node whose wildcard domain covers it first."""
        servers = list(getattr(self._standin, "servers", {}).values())

        def covers(server: Any) -> bool:
            base = urlsplit(str(server.settings.get("wildcard_domain") or "")).hostname or ""
            return bool(base) and (host == base or host.endswith("." + base.lstrip("*.")))

        return sorted(servers, key=lambda s: (not covers(s), s.name))

    def file_route(self, host: str) -> tuple[Any, Router, FileConfig] | None:
        for server in self._servers(host):
            conf = load_dynamic_dir(self.dynamic_dir(server))
            self._note(conf.errors)
            for router in conf.routers.values():
                if host in router.hosts:
                    return server, router, conf
        return None

    def _note(self, errors: Iterable[str]) -> None:
        for e in errors:
            if e not in self.errors:
                self.errors.append(e)

    # -- Sablier ------------------------------------------------------------------------------------------------

    def _members(self, server: Any, mw: Sablier) -> list[str]:
        """Sablier's group registry on `server`: containers (deployed applications) with its labels."""
        with self._standin._lock:
            apps = [a for a in self._standin.applications.values()
                    if a.server_uuid == server.uuid and a.container is not None]  # fmt: skip
            found = []
            for app in apps:
                labels = labels_of(app)
                if labels.get("sablier.enable") != "true":
                    continue
                groups = {g.strip() for g in labels.get("sablier.group", "default").split(",")}
                if (mw.group and mw.group in groups) or app.uuid in mw.names:
                    found.append(app.uuid)
            return sorted(found)

    def _inspect(self, uuid: str) -> str:
        """Sablier's docker provider InstanceInspect: ready | starting | stopped | error: <why> | missing."""
        proc = self.runner.live.get(uuid)
        if proc is not None and proc.alive():
            with self._standin._lock:
                app = self._standin.applications.get(uuid)
                fields = dict(app.fields) if app is not None else {}
            if fields.get("health_check_enabled") not in (True, 1, "1", "true"):
                return "ready"  # running without a health check counts as ready (container_inspect.go)
            return "ready" if _healthy(proc.port, str(fields.get("health_check_path") or "/")) else "starting"
        if proc is not None and proc.popen.returncode not in (None, 0):
            return f"error: container exited with code \"{proc.popen.returncode}\""
        if proc is not None or uuid in self.asleep:
            return "stopped"
        return "missing"

    async def _request(self, members: list[str], duration: float) -> list[str]:
        """instanceRequest for each member; returns their statuses."""
        out = []
        now = time.monotonic()
        for uuid in members:
            entry = self.sessions.get(uuid)
            if entry is None:
                await asyncio.to_thread(self.start_instance, uuid)
                status = "starting"
            elif entry[0] != "ready":
                status = await asyncio.to_thread(self._inspect, uuid)
            else:
                status = "ready"
            if status.startswith("error") or status == "missing":
                self.sessions.pop(uuid, None)
            else:
                self.sessions[uuid] = (status, now + duration)
            out.append(status)
        return out

    async def _wake(self, server: Any, mw: Sablier) -> None:
        """The middleware's call to Sablier; returns when the request may go on, raises Refused otherwise."""
        url = urlsplit(mw.url)
        if url.scheme != "http" or url.hostname != SABLIER_HOST or (url.port or 80) != SABLIER_PORT:
            self._note([f"middleware {mw.name}: sablierUrl {mw.url} does not reach the node's Sablier "
                        f"(http://{SABLIER_HOST}:{SABLIER_PORT} on the coolify network)"])
            raise Refused(500, f"sablier: {mw.url} unreachable\n")
        members = self._members(server, mw)
        if not members:
            raise Refused(404, f"sablier: group {mw.group or mw.names!r} not found: no container on this node "
                               "carries its labels\n")
        duration = mw.session if mw.session is not None else self.default_session
        statuses = await self._request(members, duration)
        if mw.strategy == "dynamic":
            if all(s == "ready" for s in statuses):
                return
            page = (f"<html><head><meta http-equiv=\"refresh\" content=\"5\"><title>{html.escape(mw.display_name)}"
                    f"</title></head><body>{html.escape(mw.display_name)} is starting…</body></html>\n")
            raise Refused(200, page, {"X-Sablier-Session-Status": "not-ready",
                                      "Content-Type": "text/html; charset=utf-8"})
        timeout = mw.timeout if mw.timeout is not None else self.default_blocking_timeout
        deadline = time.monotonic() + timeout
        while True:
            errors = [s for s in statuses if s.startswith("error") or s == "missing"]
            if errors:
                raise Refused(500, f"sablier: {errors[0]}\n")
            if all(s == "ready" for s in statuses):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise Refused(504, f"sablier: session was not ready after {timeout:g}s\n")
            await asyncio.sleep(min(self.blocking_refresh, left))  # Sablier's ticker
            if time.monotonic() >= deadline:
                raise Refused(504, f"sablier: session was not ready after {timeout:g}s\n")
            statuses = await self._request(members, duration)

    async def _expire_sessions(self) -> None:
        """Sablier's expiration sweep, every `expiration_interval` s (read each time: a test may shorten it)."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(self.expiration_interval, 0.1))
            now = time.monotonic()
            if now - last < self.expiration_interval:
                continue
            last = now
            for uuid, (_, expires) in list(self.sessions.items()):
                if expires <= now:
                    del self.sessions[uuid]
                    await asyncio.to_thread(self.stop_instance, uuid)

    def start_instance(self, uuid: str) -> None:
        """`docker start` of an application's container: its process again (same command, workdir, env, port)."""
        from inkmcp.coolify.standin.runner import Proc

        standin, runner = self._standin, self.runner
        with standin._lock:
            live = runner.live.get(uuid)
            asleep = self.asleep.pop(uuid, None)
            if live is not None and live.alive():  # running (e.g. redeployed while asleep): nothing to start
                return
            old = asleep or live
        if old is None or getattr(runner, "_closing", False):  # nothing to start, or the runner is shutting down
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            old.popen.wait(30)  # still stopping: docker start waits for the stop
        popen = subprocess.Popen(old.popen.args, cwd=old.workdir, env=old.env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(popen, old.port, old.workdir, old.env, lines=old.lines)
        threading.Thread(target=runner._pump, args=(proc,), daemon=True).start()
        with standin._lock:
            app = standin.applications.get(uuid)
            if app is None or runner.live.get(uuid) not in (None, live) or getattr(runner, "_closing", False):
                proc.stop(0.5)  # deleted or redeployed meanwhile, or the runner closed: this start is void
                return
            runner.live[uuid] = proc
            docker_route(runner, app, proc.port, old.port)
            app.status_plan = [(time.monotonic() + getattr(standin, "status_delay", 0.0), "running:unknown")]
            self.events.append(("start", uuid))

    def stop_instance(self, uuid: str) -> None:
        """`docker stop` of an application's container: its process stops, the docker provider drops its hosts,
        Coolify shows it `exited`; the container stays (Sablier can start it again)."""
        standin, runner = self._standin, self.runner
        with standin._lock:
            proc = runner.live.pop(uuid, None)
            if proc is None:
                return
            runner.routes = {h: p for h, p in runner.routes.items() if p != proc.port}
            self.asleep[uuid] = proc
            app = standin.applications.get(uuid)
            if app is not None:
                app.status_plan = [(time.monotonic() + getattr(standin, "status_delay", 0.0), "exited")]
            self.events.append(("stop", uuid))
        proc.stop()

    # -- the service's address -------------------------------------------------------------------------------

    def resolve(self, server: Any, url: str) -> int:
        """The local port behind a file-provider service URL (Docker DNS on the coolify network + the container's
        port); Refused(502) when no running container answers there."""
        parts = urlsplit(url)
        name, port = (parts.hostname or "").lower(), parts.port or 80
        # --- billcore: an address outside the coolify network (InkMCP's public URL in tests: 127.0.0.1:<port>)
        if re.fullmatch(r"[0-9.]+", name):
            return port
        # --- end billcore
        with self._standin._lock:
            for app in self._standin.applications.values():
                proc = self.runner.live.get(app.uuid)
                if app.server_uuid != server.uuid or proc is None or not proc.alive():
                    continue
                aliases = {a.strip().lower() for a in str(app.fields.get("custom_network_aliases") or "").split(",")
                           if a.strip()}  # fmt: skip
                if app.settings.get("is_consistent_container_name_enabled"):
                    aliases.add(app.uuid.lower())
                if name not in aliases:
                    continue
                env = app.container.env if app.container is not None else {}
                inside = str(env.get("PORT") or str(app.fields.get("ports_exposes") or "").split(",")[0])
                if str(port) != inside:
                    self._note([f"service URL {url}: container {name} listens on {inside}, not {port}"])
                    raise Refused(502, "Bad Gateway\n")
                return int(proc.port)
        self._note([f"service URL {url}: {name!r} is not the name of a running container on the coolify network "
                    f"of {server.name} (Coolify names containers <uuid>-<time> unless "
                    "is_consistent_container_name_enabled)"])
        raise Refused(502, "Bad Gateway\n")

    # -- HTTP -------------------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        host = ""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"host":
                text = value.strip().decode(errors="replace").lower()
                host = text if "]" in text else text.rsplit(":", 1)[0]
                break
        try:
            port = self.runner.routes.get(host)
            if port is None:
                port = await self._file_port(host)
                head = self._rewritten(host, head)  # --- billcore: replacePath / passHostHeader false
        except Refused as r:
            await _answer(writer, r.status, r.text, r.headers)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await _answer(writer, 502, "Bad Gateway\n")
            return
        up_writer.write(head)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    # --- billcore (issue 13): what Traefik changes in a request on a router with replacePath / passHostHeader false
    def _rewritten(self, host: str, head: bytes) -> bytes:
        found = self.file_route(host)
        if found is None:
            return head
        _, router, conf = found
        lines = head.split(b"\r\n")
        method, target, version = lines[0].split(b" ", 2)
        for name in router.middlewares:
            mw = conf.middlewares.get(name)
            if isinstance(mw, ReplacePath):
                query = target.partition(b"?")[2]
                target = mw.path.encode() + (b"?" + query if query else b"")
        if router.service in conf.own_host:
            netloc = urlsplit(conf.services[router.service]).netloc.encode()
            lines = [b"Host: " + netloc if ln.lower().startswith(b"host:") else ln for ln in lines]
        return b"\r\n".join([b" ".join([method, target, version]), *lines[1:]])
    # --- end billcore

    async def _file_port(self, host: str) -> int:
        found = await asyncio.to_thread(self.file_route, host)
        if found is None:
            raise Refused(404, "404 page not found\n")
        server, router, conf = found
        if router.middlewares and plugin_loaded(server) is False:
            self._note([f"{router.source}: router {router.name}: middleware {router.middlewares[0]}: plugin "
                        f"sablier is not loaded by {server.name}'s proxy (its traefik command lacks "
                        "--experimental.plugins.sablier.modulename; InkMCP's server registration adds it)"])
            raise Refused(404, "404 page not found\n")
        for name in router.middlewares:
            mw = conf.middlewares[name]
            if isinstance(mw, Sablier):  # --- billcore: replacePath changes the request only (_rewritten)
                await self._wake(server, mw)
        return self.resolve(server, conf.services[router.service])


_REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 502: "Bad Gateway", 504: "Gateway Timeout"}


async def _answer(writer: asyncio.StreamWriter, status: int, text: str, headers: dict[str, str] | None = None) -> None:
    body = text.encode()
    extra = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
    lines = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
    writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n{lines}Content-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
