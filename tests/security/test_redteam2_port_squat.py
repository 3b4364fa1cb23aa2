"""Red team redteam2 (2026-12-02): a tenant squats the loopback port of another tenant's crashed app.

The attack, as mallory (code in her own app): /proc/net/tcp shows every listener on the machine with its
owner's uid, so she knows alice's app port. A thread of her app spins on bind(127.0.0.1:<alice's port>) with
SO_REUSEADDR. When alice's routed process dies (a crash, an OOM kill: here alice's own app exits), the kernel
frees the port; the route still pointed at it and InkMCP restarted alice's process in place on the same port.

Before (InkMCP at ca2ce62, attacker-side proof): mallory's thread bound the port after 3,527 tries; the next
three requests for web.alice-shop.localhost were answered "mallory owns this port", and her app captured
each one whole: "GET /account ... Cookie: session=ALICE_USER_SESSION". alice's restarted process could not
bind its port any more (EADDRINUSE, restarting in a loop), so mallory kept alice's hostname.

After (portguard): InkMCP holds a duplicate of alice's listening socket from the moment her release goes
live, so the port is never free while a route points at it; a crash starts the release again on a new port
and the old socket is let go only after the route moved. Mallory's thread gets nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import ROOT, lab_exec, lab_live, lab_repo, session, via_proxy, whoami
from tests.support import ServerProc, call

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]

ALICE = "rt2-squat-alice"
MALLORY = "rt2-squat-mallory"
COOKIE = "session=ALICE_USER_SESSION_rt2"

# Inside mallory's app: alice's port as /proc/net/tcp shows it (a listener of another uid), then a thread that
# binds it the moment it is free and records every request it gets.
SQUAT = r'''
import os, socket, threading, time

port = ARGS["port"]
listed = []
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    f = line.split()
    if f[3] == "0A" and int(f[1].split(":")[1], 16) == port:
        listed.append(int(f[7]))


def squat():
    tries = 0
    while not STATE.get("stop"):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tries += 1
        try:
            s.bind(("127.0.0.1", port))
            s.listen(64)
        except OSError:
            s.close()
            time.sleep(0.0005)
            continue
        STATE["bound"] = {"tries": tries, "at": time.time()}
        s.settimeout(0.2)
        while not STATE.get("stop"):
            try:
                c, _ = s.accept()
            except socket.timeout:
                continue
            data = c.recv(65536)
            STATE.setdefault("captured", []).append(data.decode(errors="replace"))
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 22\r\nConnection: close\r\n\r\nmallory owns this port")
            c.close()
        s.close()


STATE.pop("stop", None)
threading.Thread(target=squat, daemon=True).start()
result = {"listed_uids": listed, "mine": os.getuid()}
'''

REPORT = r'''
STATE["stop"] = True
result = {"bound": STATE.get("bound"), "captured": STATE.get("captured", [])}
'''

CRASH = r'''
import os, threading, time
threading.Thread(target=lambda: (time.sleep(0.2), os._exit(3)), daemon=True).start()
result = os.getpid()
'''


@pytest.fixture(scope="module")
async def pair(server: ServerProc, repos: Path) -> dict[str, Any]:
    async with session(server, "alice") as a:
        web = await lab_live(a, lab_repo(repos, "rt2-squat-alice"), "alice", project_name=ALICE)
    async with session(server, "mallory") as m:
        lab = await lab_live(m, lab_repo(repos, "rt2-squat-mallory"), "mallory", project_name=MALLORY)
    return {"alice": web, "mallory": lab}


async def test_a_crashed_apps_port_cannot_be_squatted_by_another_tenant(server: ServerProc,
                                                                       pair: dict[str, Any]) -> None:
    alice_url, mallory_url = pair["alice"]["url"], pair["mallory"]["url"]
    before = whoami(server, alice_url)
    port = before["port"]
    armed = lab_exec(server, mallory_url, SQUAT, port=port)
    assert before["uid"] in armed["listed_uids"] and armed["mine"] != before["uid"], armed  # she can see it

    lab_exec(server, alice_url, CRASH)  # alice's app dies (as a crash or an OOM kill would)
    answers: list[str] = []
    back = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            r = via_proxy(server, alice_url, "/account", headers={"Cookie": COOKIE}, timeout=20)
            answers.append(f"{r.status_code} {r.text[:60]}")
        except Exception as exc:  # a request cut while the old socket closes: not what this test is about
            answers.append(repr(exc)[:80])
        if "mallory" in answers[-1]:
            break
        if answers[-1] == "200 alice captured /account":
            seen = via_proxy(server, alice_url, "/whoami", timeout=20)
            if seen.text.startswith("{") and seen.json()["pid"] != before["pid"]:  # not the old one in its last 0.2 s
                back = seen.json()
                break
        time.sleep(0.2)
    report = lab_exec(server, mallory_url, REPORT)

    assert not report["captured"], f"alice's visitors reached mallory: {report['captured'][:2]}"
    assert not any("mallory" in a for a in answers), answers
    assert back is not None, f"alice's app never answered again: {answers[-5:]}"
    assert back["pid"] != before["pid"] and back["port"] != port, (before, back)  # restarted on a new port
    async with session(server, "alice") as a:
        for _ in range(60):  # a restarted process counts as crashed until it stayed up through the window
            services = {s["name"]: s for s in (await call(a, "list_services", project_name=ALICE))["services"]}
            if services["web"]["state"] == "running":
                break
            time.sleep(0.5)
        logs = await call(a, "get_logs", project_name=ALICE, service_name="web", scope="runtime", tail=500)
    assert services["web"]["state"] == "running" and services["web"]["restarts"] >= 1, services["web"]
    assert any("; restarting in " in line and "on a new port" in line for line in logs["lines"]), logs["lines"][-10:]
