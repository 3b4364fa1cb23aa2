"""redteam6: one tenant held the machine's ephemeral ports, and every outgoing connection on it failed.

The attack, as mallory (code in her own deployed app): every tenant shares the host's network namespace and its
ephemeral range (`ip_local_port_range`, 32768-60999: 28,232 ports). bind() to port 0 is allowed to every tenant (the
bind guard lets it: apps listen on port 0 for their workers), and so are listen() and a UDP sendto() on an unbound
socket, which take a port the same way; connect() skips every port a bound socket holds. So her app raises its soft
RLIMIT_NOFILE to the hard limit (20,000) and binds port 0 in a loop (two processes for the whole range); or, without
keeping a socket open, bind(0) + connect() to a listener of her own + close(), which leaves each port in TIME_WAIT
for 60 s, still skipped by everyone's connect().

Before (measured on this box; the range to its end in a private network namespace, where
tests/local/test_sockguard.py::test_a_tenant_cannot_take_the_whole_ephemeral_range performs it: a range of 4,000 held
in ~1 s, the default 28,232 by two loops in ~60 s at load 5): root's connect() in the namespace then failed with
EADDRNOTAVAIL and, with UDP ports held the same way, a DNS-like sendto() with EAGAIN; on the host that is nginx's
connect() to every app's upstream, InkMCP's git fetches and health checks, every resolver. On the shared server here
(the host's own range, so the attack stops at 5,000 ports to leave the machine to everyone else): her app held all
5,000 sockets it asked for, and made 1,000 bound connect()s in 0.06 s (1,000 ports in TIME_WAIT for a minute).

After (`providers/compute/local/sockguard.py`): an account's processes hold at most INKMCP_TENANT_SOCKETS open INET
sockets (the smaller of 4,096 and an eighth of the range: 3,529 here), socket() -> EPERM past it; connect()s from a
port bound beforehand are paced (10 a second, bursts of 256), connect() -> EPERM past it. Her runtime log says which.
alice meanwhile opens and connects sockets and is served through the proxy.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from inkmcp.providers.compute.local import sockguard
from tests.security.conftest import ROOT, lab_exec, lab_live, lab_repo, session, via_proxy
from tests.support import call

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: deploys two labs on the shared server

HOLD_TRIES = 5000  # above the cap, far below the range: on the old code the test must not take the machine's ports
CHURN_TRIES = 1000

# Inside mallory's app: bind(0) until the kernel (or InkMCP) says no; the sockets stay in STATE until RELEASE.
HOLD = r'''
import errno, resource, socket
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held, last = STATE.setdefault("held", []), None
for _ in range(ARGS["n"]):
    try:
        s = socket.socket()
    except OSError as e:
        last = errno.errorcode.get(e.errno, str(e.errno))
        break
    try:
        s.bind(("127.0.0.1", 0))
    except OSError as e:
        s.close()
        last = errno.errorcode.get(e.errno, str(e.errno))
        break
    held.append(s)
result = {"held": len(held), "last": last, "nofile": hard}
'''

RELEASE = r'''
for s in STATE.pop("held", []):
    s.close()
result = "released"
'''

# bind(0) + connect() to her own listener + close() first: each port left in TIME_WAIT for 60 s.
CHURN = r'''
import errno, socket, time
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(128)
ok, refused, start = 0, {}, time.monotonic()
for _ in range(ARGS["n"]):
    s = socket.socket()
    try:
        if ARGS["bind"]:
            s.bind(("127.0.0.1", 0))
        s.connect(listener.getsockname())
    except OSError as e:
        s.close()
        name = errno.errorcode.get(e.errno, str(e.errno))
        refused[name] = refused.get(name, 0) + 1
        continue
    conn, _ = listener.accept()
    s.close()
    conn.close()
    ok += 1
listener.close()
result = {"ok": ok, "refused": refused, "seconds": time.monotonic() - start}
'''

# alice's app, while mallory holds her share: new sockets, bound and connected, and a request to the outside world
# of this machine's loopback (her own listener)
VICTIM = r'''
import socket
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(256)
socks = []
try:
    for _ in range(ARGS["n"]):
        s = socket.socket()
        socks.append(s)
        s.connect(listener.getsockname())
        socks.append(listener.accept()[0])
    result = {"connected": len(socks) // 2}
finally:
    for s in socks:
        s.close()
    listener.close()
'''


@pytest.fixture(scope="module")
async def labs(server: Any, repos: Path) -> dict[str, dict[str, Any]]:
    async with session(server, "mallory") as m, session(server, "alice") as a:
        attacker, victim = await asyncio.gather(
            lab_live(m, lab_repo(repos, "rt6-ports-lab"), "mallory", project_name="rt6-ports"),
            lab_live(a, lab_repo(repos, "rt6-ports-victim"), "alice", project_name="rt6-ports-victim"))
    return {"mallory": attacker, "alice": victim}


async def _log_says(server: Any, account: str, project: str, text: str) -> list[str]:
    deadline = time.monotonic() + 20
    async with session(server, account) as s:
        while True:
            logs = await call(s, "get_logs", project_name=project, service_name="web", scope="runtime", tail=100)
            found = [line for line in logs["lines"] if text in line]
            if found or time.monotonic() > deadline:
                return found
            await asyncio.sleep(1)


async def test_a_tenant_holds_only_its_share_of_the_ephemeral_ports(server: Any, labs: dict[str, Any]) -> None:
    """mallory binds port 0 5,000 times: she stops at her account's cap with EPERM (before: all 5,000 held); alice
    connects 200 new sockets and is served through the proxy meanwhile; mallory's log says why."""
    cap = sockguard.cap()
    mallory, alice = labs["mallory"]["url"], labs["alice"]["url"]
    try:
        seen = lab_exec(server, mallory, HOLD, n=HOLD_TRIES)
        assert seen["nofile"] > HOLD_TRIES, seen  # her limit would let her hold them all
        assert seen["last"] == "EPERM" and cap - 200 <= seen["held"] < cap, (  # her other labs hold a few
            f"mallory's app held {seen['held']} ephemeral ports (cap {cap}); last error {seen['last']}")
        assert lab_exec(server, alice, VICTIM, n=200) == {"connected": 200}
        r = via_proxy(server, alice, "/")
        assert r.status_code == 200 and r.text == "alice says hi", r.text
        assert lab_exec(server, mallory, "result = 1") == 1  # her app still answers (its accepted connections)
    finally:
        assert lab_exec(server, mallory, RELEASE) == "released"
    said = await _log_says(server, "mallory", "rt6-ports", "socket() refused")
    assert said and f"hold {cap} open network sockets" in said[0], said
    again = lab_exec(server, mallory, HOLD, n=100)  # her share is back once she closed them
    assert again["held"] == 100 and again["last"] is None, again
    lab_exec(server, mallory, RELEASE)


async def test_bound_connects_that_leave_time_wait_are_paced(server: Any, labs: dict[str, Any]) -> None:
    """mallory's bind(0) + connect() + close() loop (each port in TIME_WAIT for 60 s once closed): past a burst of
    256 and 10 a second her connect() gets EPERM (before: 1,000 of 1,000); her plain connect()s are not paced."""
    mallory = labs["mallory"]["url"]
    churn = lab_exec(server, mallory, CHURN, n=CHURN_TRIES, bind=True)
    allowed = sockguard.BOUND_CONNECT_BURST + sockguard.BOUND_CONNECTS_PER_S * (churn["seconds"] + 1)
    assert churn["ok"] <= allowed, f"{churn['ok']} bound connect()s of {CHURN_TRIES} went through: {churn}"
    assert churn["refused"].get("EPERM", 0) >= CHURN_TRIES - allowed, churn
    said = await _log_says(server, "mallory", "rt6-ports", "connect() refused: this account's processes connect "
                                                           "from a port bound beforehand")
    assert said, "mallory's log does not say why her connect()s were refused"
    plain = lab_exec(server, mallory, CHURN, n=300, bind=False)
    assert plain["ok"] == 300 and not plain["refused"], plain
    r = via_proxy(server, labs["alice"]["url"], "/")
    assert r.status_code == 200 and r.text == "alice says hi", r.text
