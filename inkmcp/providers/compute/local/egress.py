"""What local tenants' processes may connect to: an nftables table the local provider converges at every start.

Why: on the local provider every app, Procfile worker, release command, build step and wake ran with the host's
full network. On a cloud VM that meant the metadata service (169.254.169.254, fd00:ec2::254: the VM's credentials),
the provider's private networks (RFC 1918, CGNAT, IPv6 ULA), link-local neighbours and any service listening on the
host's own non-loopback addresses. The Coolify run servers refuse the same destinations through hardening/
(docker-user.rules); this is that policy for tenants that are Unix users on this machine.

How, and why this way (rather than a cgroup match or a cgroup BPF connect hook):
- Tenants are matched by the socket's owner: `meta skuid @tenants`, a set holding the uid of every per-project user
  (`ink-<hex>`, users.py). The uid is the one thing every tenant process has wherever it runs: in its service's
  cgroup, in a build, in a git fetch, on a cgroup v1 host (this test box is one; `socket cgroupv2` and BPF cgroup
  hooks see only the unified hierarchy, where v1 hosts put nobody). useradd --system hands out uids downwards
  between the packages' own system users, so they are not contiguous: the set is rebuilt from /etc/passwd at every
  start and kept current by `track_uid`/`untrack_uid`, called where users.py creates and deletes the users.
  Root's and InkMCP's own connections, the tenant PostgreSQL server's, Redis's and nginx's are not in the set.
- nftables rather than a BPF connect hook: interval sets of CIDRs, IPv4 and IPv6 in one `inet` table, reject with
  a reset, noting refusals in a set, and an operator can read it all with `nft list table inet inkmcp_egress`; a
  BPF program would be hand-written bytecode with LPM tries for the same (svcports' bind hook, which needs the
  uid and port only, is BPF; both key on the uid).
- Kernel rules live on after InkMCP stops: a restart (or a crash) leaves running tenants covered, and processes
  started before the rules are covered at their next connection (a TCP connection already established before the
  rules first went in is not cut). A start whose policy differs replaces the table whole in one `nft -f`
  transaction (never a moment without it, never a duplicate rule); one whose policy is already there (a hash in a
  rule comment) only syncs the uid set, keeping the refusals noted so far. Applies are serialised by a lock file.
- Only a TCP SYN (and every UDP/other datagram) is looked at: the rest of a TCP stream cannot reach a destination
  its handshake could not (tenants have no CAP_NET_RAW to forge a segment; any socket they do get, an ICMP one
  included, is owned by their uid and checked), and skipping it keeps bulk transfers at one set lookup per packet.
  No conntrack: the host pays nothing for it where nothing else loads it.
- Refused connects fail at once: a TCP SYN gets a reset (connect() -> ECONNREFUSED), a datagram is refused in the
  output path (sendmsg() -> EPERM). Each refusal is noted in a per-table timeout set (uid, address, protocol,
  port); `DeniedWatcher` reads it and the provider writes one line to that project's services' logs saying what
  was refused and which setting opens it.

Allowed, in order: loopback (the control plane, tenant PostgreSQL, Redis, the proxy and the apps themselves), DNS
(port 53) to the resolvers /etc/resolv.conf names at start, the operator's INKMCP_TENANT_EGRESS_ALLOW, the host and
port of the apps' database and Redis when InkMCP hands out a private one, and TCP 80, 443 and 8080 on
this host's own public (non-special) addresses (an app calling its own public URL); then refused:
the special-purpose ranges below, the host's own local/broadcast/multicast addresses, SMTP ports anywhere; the rest
(the public internet) is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from inkmcp.settings import EgressAllow, TenantEgressSettings

log = logging.getLogger(__name__)

TABLE = "inkmcp_egress"
USER_PREFIX = "ink-"  # users.USER_PREFIX (not imported: users.py imports this module)
NFT_TIMEOUT = 15.0
DENIED_TTL = 3600  # seconds a refused (uid, address, protocol, port) stays noted: one log line per hour at most
DENIED_SIZE = 4096
POLICY_TAG = "inkmcp-egress policy "
LOCK_FILE = Path("/run/inkmcp-egress.lock")
POLL_SECONDS = 3.0  # two nft runs (~6 ms of CPU each) per round

# Refused on the run servers too (nodes/render.py BLOCKED_RANGES; tests assert this list covers it): RFC 1918, CGNAT
# (RFC 6598, Alibaba's metadata 100.100.100.200), link-local (AWS/GCP/Azure metadata), this-network, IETF protocol
# assignments (Oracle's metadata 192.0.0.192), benchmarking, multicast, reserved, broadcast. 127.0.0.0/8 is there as
# well but loopback is accepted before this set is consulted.
BLOCKED_V4 = tuple(ipaddress.IPv4Network(c) for c in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
))
# IPv6: unspecified, IPv4-mapped (sent as IPv4, refused there too), local-use NAT64 (RFC 8215: may map private
# IPv4), discard-only, unique-local (fd00:ec2::254 is AWS's metadata, fd20:ce::254 GCP's), link-local, the old
# site-local, multicast.
BLOCKED_V6 = tuple(ipaddress.IPv6Network(c) for c in (
    "::/128", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))

RULESET = jinja2.Template("""\
# Managed by InkMCP (inkmcp/providers/compute/local/egress.py): what local tenants' processes may connect to.
# Replaced whole at every start of the local provider; INKMCP_TENANT_EGRESS=off removes it.
table inet {{ table }}
delete table inet {{ table }}
table inet {{ table }} {
  set tenants {
    type uid
{%- if uids %}
    elements = { {{ uids | join(", ") }} }
{%- endif %}
  }
  set blocked4 {
    type ipv4_addr; flags interval
    elements = { {{ blocked4 | join(", ") }} }
  }
  set blocked6 {
    type ipv6_addr; flags interval
    elements = { {{ blocked6 | join(", ") }} }
  }
  set denied4 {
    type uid . ipv4_addr . inet_proto . inet_service
    size {{ size }}; flags dynamic, timeout; timeout {{ ttl }}s
  }
  set denied6 {
    type uid . ipv6_addr . inet_proto . inet_service
    size {{ size }}; flags dynamic, timeout; timeout {{ ttl }}s
  }
  chain output {
    type filter hook output priority filter; policy accept;
    meta skuid @tenants jump tenant comment "{{ policy }}"
  }
  chain tenant {
    meta l4proto tcp tcp flags & (syn | ack) != syn accept
    ip daddr 127.0.0.0/8 accept
    ip6 daddr ::1 accept
{%- for r in resolvers %}
    {{ "ip" if r.version == 4 else "ip6" }} daddr {{ r }} meta l4proto { tcp, udp } th dport 53 accept
{%- endfor %}
{%- for a in allow %}
    {{ "ip" if a.network.version == 4 else "ip6" }} daddr {{ a.network }}
    {%- if a.port %} meta l4proto { tcp, udp } th dport {{ a.port }}{% endif %} accept
{%- endfor %}
    fib daddr type local ip daddr != @blocked4 tcp dport { {{ proxy_ports | join(", ") }} } accept
    fib daddr type local ip6 daddr != @blocked6 tcp dport { {{ proxy_ports | join(", ") }} } accept
    ip daddr @blocked4 goto deny
    ip6 daddr @blocked6 goto deny
    fib daddr type { local, broadcast, multicast, anycast } goto deny
{%- if smtp_ports %}
    tcp dport { {{ smtp_ports | join(", ") }} } goto deny
{%- endif %}
  }
  chain deny {
    meta nfproto ipv4 add @denied4 { meta skuid . ip daddr . meta l4proto . th dport }
    meta nfproto ipv6 add @denied6 { meta skuid . ip6 daddr . meta l4proto . th dport }
    meta l4proto tcp reject with tcp reset
    reject with icmpx type admin-prohibited
  }
}
""")


class EgressError(RuntimeError):
    """The rules could not be applied or read (nft missing, a kernel without nf_tables, ...)."""


@dataclass(frozen=True)
class EgressState:
    """What the kernel holds now, for `inkmcp doctor`, the provider's start log and tests."""

    active: bool
    tenants: int = 0
    detail: str = ""


def nft_path() -> str | None:
    return shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)


def _nft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    nft = nft_path()
    if nft is None:
        raise EgressError("the nft command is missing (Debian package nftables: apt-get install nftables)")
    return subprocess.run([nft, *args], input=stdin, capture_output=True, text=True, timeout=NFT_TIMEOUT,
                          check=False)  # fmt: skip


def tenant_uids() -> list[int]:
    """Every per-project user's uid on this machine (all data dirs share /etc/passwd and the `ink-` names)."""
    return sorted({e.pw_uid for e in pwd.getpwall() if e.pw_name.startswith(USER_PREFIX) and e.pw_uid != 0})


def host_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The `nameserver` addresses tenants resolve names through (they read the host's /etc/resolv.conf)."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                addr = ipaddress.ip_address(parts[1].split("%", 1)[0])
                if addr not in found:
                    found.append(addr)
    return found


def platform_endpoints() -> list[EgressAllow]:
    """Where InkMCP itself points tenants' apps (their DATABASE_URL's and REDIS_URL's host and port) when that is a
    private, non-loopback address: opened like an allow-list entry, or every app of an operator whose tenant
    PostgreSQL or Redis lives on another machine of the private network would lose its database."""
    from urllib.parse import urlsplit

    from inkmcp.settings import default_data_dir

    env = os.environ  # as Settings and RedisSettings read them (not built here: RedisSettings' module is heavy)
    public_host = env.get("INKMCP_TENANT_DATABASE_PUBLIC_HOST", "127.0.0.1")
    wanted: list[tuple[str, int]] = []
    try:
        if env.get("INKMCP_TENANT_DATABASE_URL"):
            parts = urlsplit(env["INKMCP_TENANT_DATABASE_URL"])
            wanted.append((parts.hostname or public_host, parts.port or 5432))
        else:
            data = Path(env["INKMCP_DATA_DIR"]) if env.get("INKMCP_DATA_DIR") else default_data_dir()
            with contextlib.suppress(OSError, ValueError):
                wanted.append((public_host, int((data / "pg" / "tenants.port").read_text().strip())))
        if env.get("INKMCP_REDIS_URL"):
            parts = urlsplit(env["INKMCP_REDIS_URL"])
            wanted.append((parts.hostname or "", parts.port or 6379))
    except ValueError as e:  # a bad URL fails the start elsewhere, with its own message
        log.debug("tenant egress: platform endpoints not read: %s", e)
        return []
    found: list[EgressAllow] = []
    for name, port in wanted:
        try:
            infos = socket.getaddrinfo(name, port, proto=socket.IPPROTO_TCP) if name else []
        except OSError:
            log.warning("tenant egress: %s (apps' database or Redis) does not resolve; if it is private, open it "
                        "with INKMCP_TENANT_EGRESS_ALLOW", name)
            continue
        for info in infos:
            addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if addr.is_loopback or not (any(addr in n for n in (*BLOCKED_V4, *BLOCKED_V6)) or _is_local(addr)):
                continue
            entry = EgressAllow(ipaddress.ip_network(addr), port)
            if entry not in found:
                found.append(entry)
    return found


def _is_local(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """One of this host's own addresses (refused by the fib rule)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6 if addr.version == 6 else socket.AF_INET,
                                                     socket.SOCK_DGRAM) as s:
        s.bind((str(addr), 0))
        return True
    return False


HOST_TCP_PORTS = (80, 443, 8080)
"""TCP ports of this host's own public (non-special) addresses tenants may reach: HTTP, HTTPS and the proxy's default
port, so an app calling its own (or another app's) public URL, which resolves to this host, still works (the run
servers open 80 and 443 to containers alike: hardening's host_input_tcp_ports). Fixed, not read from
INKMCP_PROXY_PORT: the policy must be the same for every InkMCP on the machine, or each start would replace the table
(and the refusals noted in it) of the others."""


def render(settings: TenantEgressSettings, uids: Iterable[int], *, table: str = TABLE,
           resolvers: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address] | None = None,
           endpoints: Iterable[EgressAllow] | None = None) -> str:
    """The whole ruleset as `nft -f` takes it (one transaction: the old table goes, the new one comes)."""
    values = dict(
        table=table, blocked4=BLOCKED_V4, blocked6=BLOCKED_V6, size=DENIED_SIZE, ttl=DENIED_TTL,
        resolvers=list(host_resolvers() if resolvers is None else resolvers),
        allow=[*settings.allow_entries(), *(platform_endpoints() if endpoints is None else endpoints)],
        smtp_ports=sorted(set(settings.tenant_egress_smtp_ports)), proxy_ports=HOST_TCP_PORTS,
    )
    # The policy without its uids, hashed into a rule comment: a start whose policy is the one in the kernel only
    # brings the uid set up to date, and keeps the refusals noted so far (another InkMCP on this machine starting,
    # or a restart, does not wipe what the running one has yet to report).
    digest = hashlib.sha256(RULESET.render(uids=[], policy="", **values).encode()).hexdigest()[:32]
    return RULESET.render(uids=sorted(set(uids)), policy=f"{POLICY_TAG}{digest}", **values)


def _policy_of(text: str) -> str:
    start = text.index(POLICY_TAG)
    return text[start:text.index('"', start)]


_lock_guard = threading.Lock()
_lock_depth = 0
_lock_fd: int | None = None


@contextlib.contextmanager
def exclusive(lock_file: Path = LOCK_FILE) -> Iterator[None]:
    """The machine's tenant egress lock, held across processes (flock): two InkMCP processes starting at once apply
    one after the other, never one's snapshot and the other's replacement interleaved. Re-entrant within a process
    (a test holds it while its providers start, to keep a policy other than the default in place while it checks
    it; other processes' starts wait)."""
    global _lock_depth, _lock_fd
    with _lock_guard:
        if _lock_depth == 0:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            _lock_fd = fd
        _lock_depth += 1
    try:
        yield
    finally:
        with _lock_guard:
            _lock_depth -= 1
            if _lock_depth == 0 and _lock_fd is not None:
                os.close(_lock_fd)  # releases the flock
                _lock_fd = None


def apply(settings: TenantEgressSettings | None = None, *, table: str = TABLE) -> EgressState:
    """Converge the kernel to `settings` (read from the environment when None): the table replaced whole when its
    policy differs (or is missing), else only its uid set brought up to date; removed when INKMCP_TENANT_EGRESS=off.
    Idempotent, under the machine's lock (`exclusive`); raises EgressError when nft refuses."""
    with exclusive():
        return _apply(settings, table=table)


def _apply(settings: TenantEgressSettings | None, *, table: str) -> EgressState:
    settings = settings or TenantEgressSettings()
    if settings.tenant_egress == "off":
        remove(table=table)
        return EgressState(active=False, detail="INKMCP_TENANT_EGRESS=off: tenants' connections are not restricted")
    uids = tenant_uids()
    text = render(settings, uids, table=table)
    now = _snapshot(table)
    if now.state.active and now.policy == _policy_of(text):  # the same policy: only the users may have changed
        sync_uids(table=table, covered=now.uids)
        return _snapshot(table).state if set(uids) != now.uids else now.state
    r = _nft("-f", "-", stdin=text)
    if r.returncode != 0:
        raise EgressError(f"nft refused the tenant egress rules: {r.stderr.strip()[-600:]}")
    # A user another InkMCP process created while this one read /etc/passwd is in neither list: add it now.
    late = sorted(set(tenant_uids()) - set(uids))
    if late:
        _element("add", ",".join(map(str, late)), table)
    return state(table=table)


def sync_uids(*, table: str = TABLE, covered: Iterable[int] | None = None) -> None:
    """The tenant set made equal to the project users in /etc/passwd: new ones added, deleted ones (whose uid a
    package's system user may get next) removed."""
    want = set(tenant_uids())
    have = set(covered_uids(table=table) if covered is None else covered)
    if want - have:
        _element("add", ",".join(map(str, sorted(want - have))), table)
    for uid in sorted(have - want):
        untrack_uid(uid, table=table)


def remove(*, table: str = TABLE) -> bool:
    """Delete the table (True when there was one)."""
    r = _nft("delete", "table", "inet", table)
    if r.returncode == 0:
        return True
    if "No such file or directory" in r.stderr:
        return False
    raise EgressError(f"nft could not delete table inet {table}: {r.stderr.strip()[-600:]}")


@dataclass(frozen=True)
class _Snapshot:
    state: EgressState
    policy: str | None = None
    uids: frozenset[int] = frozenset()


def _snapshot(table: str) -> _Snapshot:
    """The table as the kernel holds it, read with one `nft` run."""
    try:
        r = _nft("-j", "list", "table", "inet", table)
    except EgressError as e:
        return _Snapshot(EgressState(active=False, detail=str(e)))
    if r.returncode != 0:
        return _Snapshot(EgressState(active=False, detail=f"no table inet {table} in the kernel"))
    items = json.loads(r.stdout).get("nftables", [])
    sets = {i["set"]["name"]: i["set"] for i in items if "set" in i}
    chains = {i["chain"]["name"] for i in items if "chain" in i}
    hooked = any(i["chain"].get("hook") == "output" for i in items if "chain" in i)
    if not ({"tenants", "blocked4", "blocked6"} <= sets.keys() and {"tenant", "deny"} <= chains and hooked):
        return _Snapshot(EgressState(active=False, detail=f"table inet {table} is incomplete (edited by hand?)"))
    uids = frozenset(e for e in sets["tenants"].get("elem", []) if isinstance(e, int))
    policy = next((str(i["rule"]["comment"]) for i in items
                   if "rule" in i and str(i["rule"].get("comment", "")).startswith(POLICY_TAG)), None)
    detail = f"table inet {table}: {len(uids)} tenant users covered"
    return _Snapshot(EgressState(active=True, tenants=len(uids), detail=detail), policy, uids)


def state(*, table: str = TABLE) -> EgressState:
    """Whether the table is in the kernel with its tenant chain, and how many tenant uids it covers."""
    return _snapshot(table).state


def covered_uids(*, table: str = TABLE) -> list[int]:
    """The uids the kernel restricts now (empty without the table)."""
    r = _nft("-j", "list", "set", "inet", table, "tenants")
    if r.returncode != 0:
        return []
    items = json.loads(r.stdout).get("nftables", [])
    return [int(e) for i in items if "set" in i for e in i["set"].get("elem", []) if isinstance(e, int)]


def _element(verb: str, uid: int | str, table: str) -> None:
    r = _nft(verb, "element", "inet", table, "tenants", f"{{ {uid} }}")
    if r.returncode != 0 and "No such file or directory" not in r.stderr:
        raise EgressError(f"nft could not {verb} uid {uid} in the tenant set: {r.stderr.strip()[-300:]}")


def track_uid(uid: int, *, table: str = TABLE) -> None:
    """A new per-project user: its connections are restricted from now on (no-op when the table is absent)."""
    if nft_path() is not None:
        _element("add", uid, table)


def untrack_uid(uid: int, *, table: str = TABLE) -> None:
    """A deleted per-project user: its uid may be handed to a package's system user next, which must not be
    restricted. Best effort (the next start rebuilds the set from /etc/passwd anyway)."""
    if nft_path() is None:
        return
    try:
        _element("delete", uid, table)
    except EgressError as e:
        log.warning("%s", e)


@dataclass(frozen=True)
class Denied:
    """One refused destination of one tenant user."""

    uid: int
    address: str
    protocol: str
    port: int

    def message(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        opens = f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"
        return (f"egress to {host}:{self.port}/{self.protocol} is blocked by the platform (private networks, the "
                f"cloud metadata service, this host's own addresses and mail ports are closed to apps); if this app "
                f"must reach it, the operator allows it with INKMCP_TENANT_EGRESS_ALLOW={opens} and restarts InkMCP")


def read_denied(*, table: str = TABLE) -> list[Denied] | None:
    """The refusals the kernel noted (each at most once per DENIED_TTL); None when the table is gone."""
    found = []
    for name in ("denied4", "denied6"):
        r = _nft("-j", "list", "set", "inet", table, name)
        if r.returncode != 0:
            if "No such file or directory" in r.stderr:
                return None
            continue
        for item in json.loads(r.stdout).get("nftables", []):
            for elem in item.get("set", {}).get("elem", []):
                value = elem.get("elem", {}).get("val", elem) if isinstance(elem, dict) else elem
                parts = value.get("concat") if isinstance(value, dict) else None
                if isinstance(parts, list) and len(parts) == 4:
                    uid, addr, proto, port = parts
                    found.append(Denied(int(uid), str(addr), str(proto), int(port)))
    return found


@dataclass
class DeniedWatcher:
    """Polls the noted refusals and hands each new one to `sink` once (per DENIED_TTL). Finding the table gone (an
    `nft flush ruleset`, a firewall tool reloading its rules) it applies the policy again at once, so tenants are
    unrestricted for at most one round, not until InkMCP's next start."""

    sink: Callable[[Denied], None]
    table: str = TABLE
    interval: float = POLL_SECONDS
    settings: TenantEgressSettings | None = None
    _seen: dict[Denied, float] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def poll(self) -> list[Denied]:
        """One round (blocking): the refusals not reported yet."""
        now = time.monotonic()
        self._seen = {d: t for d, t in self._seen.items() if now - t < DENIED_TTL}
        noted = read_denied(table=self.table)
        if noted is None:
            done = apply(self.settings, table=self.table)
            log.warning("the tenant egress table was gone from the kernel (flushed by another tool?): applied again "
                        "(%s)", done.detail)
            return []
        fresh = [d for d in noted if d not in self._seen]
        for d in fresh:
            self._seen[d] = now
        return fresh

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="tenant-egress-denied")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            try:
                for d in await asyncio.to_thread(self.poll):
                    self.sink(d)
            except Exception:  # a failed round must not end the watcher: the next one may work
                log.warning("reading the tenant egress refusals failed", exc_info=True)
            await asyncio.sleep(self.interval)


async def converge(sink: Callable[[Denied], None], *, table: str = TABLE,
                   settings: TenantEgressSettings | None = None) -> DeniedWatcher | None:
    """The local provider's start (as root): apply the environment's policy and watch for refusals.

    A failure is logged loudly and start goes on (as a missing disk quota is): `inkmcp doctor` shows the row red.
    Refusing to start would take every running app down on a host that merely lacks the nft command."""
    try:
        done = await asyncio.to_thread(apply, settings, table=table)
    except (EgressError, OSError, subprocess.SubprocessError) as e:
        log.error("tenant egress is NOT restricted: apps can reach the cloud metadata service and private networks "
                  "(%s); install nftables (apt-get install nftables) and restart InkMCP", e)
        return None
    if not done.active:
        log.warning("tenant egress is not restricted: %s", done.detail)
        return None
    log.info("tenant egress restricted (%s)", done.detail)
    watcher = DeniedWatcher(sink, table=table, settings=settings)
    watcher.start()
    return watcher
