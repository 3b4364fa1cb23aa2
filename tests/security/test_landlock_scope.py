"""Another tenant's abstract unix sockets are out of reach (Landlock scope, `inkmcp/build/process.py` step 4b).

Abstract socket names (`@name`) have no owner and no mode and belong to the network namespace, which every tenant
shares with the host; the loopback guard sees TCP only. So mallory's code (another project, another uid) connected to
alice's app's `@rt3-alice-admin` and read what it served. Now every tenant process (the runtime's, started through
inkspawn; a build step's, through the preexec setup) is a Landlock domain of its own scoped to abstract sockets and
signals: it connects only to abstract sockets made inside its own process tree.

Real provider, real processes, two real project users (no MCP server: the provider's release is the path every
deploy takes). alice's app listens on an abstract name and logs each accepted peer's uid (SO_PEERCRED); mallory's
build step and app connect to it. Each attempt's outcome is what mallory's own code saw (before the fix: connected,
alice's secret); alice's log shows who was accepted.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

import pytest

from inkmcp.build.plan import BuildPlan, ProcessSpec, Stack
from tests.local.conftest import (  # noqa: F401 (fixtures)
    PY,
    WEB_APP,
    Events,
    checkouts,
    data_dir,
    key_for,
    make_provider,
    no_record,
    project_ids,
    request_for,
)
from tests.requirements import requires
from tests.security.conftest import ROOT


def _landlock_abi() -> int:
    """Asked here, not through the code under test (so the test runs against older code too)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1)))


pytestmark = [
    ROOT,
    requires("landlock", _landlock_abi() >= 6, f"Landlock ABI {_landlock_abi()} < 6 on {os.uname().release}"),
]  # fmt: skip

# Connect to an abstract name and read what it serves: ["connected", data] or ["refused", errno name].
CONNECT = r'''
import errno, json, socket, sys
def attempt(name):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(b"\0" + name.encode())
    except OSError as e:
        return ["refused", errno.errorcode.get(e.errno, str(e.errno))]
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except OSError as e:
        return ["connected", data.decode(), errno.errorcode.get(e.errno, str(e.errno))]
    return ["connected", data.decode()]
print(json.dumps(attempt(sys.argv[1])), flush=True)
'''

# Listen on an abstract name, serve SECRET to whoever connects and log the peer's uid (SO_PEERCRED) to `log`; then
# connect from a child process (inside this process's own domain) and return what the child got.
LISTEN = r'''
import os, socket, struct, subprocess, sys, threading
def listen(name, log):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(b"\0" + name.encode())
    srv.listen(8)
    def serve():
        while True:
            c, _ = srv.accept()
            pid, uid, gid = struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            with open(log, "a") as f:
                f.write(f"{uid}\n")
            c.sendall(os.environ["SECRET"].encode())
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    return subprocess.run([sys.executable, "connect.py", name], capture_output=True, text=True).stdout
if __name__ == "__main__":
    print(listen(sys.argv[1], sys.argv[2]).strip(), flush=True)
'''

ALICE_APP = (
    "import os\nfrom listen import listen\n"
    "open('child.result', 'w').write(listen(os.environ['ABSTRACT'], 'accepted'))\n"
) + WEB_APP

MALLORY_APP = (
    "import json, os, subprocess, sys\n"
    "got = subprocess.run([sys.executable, 'connect.py', os.environ['TARGET']], capture_output=True, text=True)\n"
    "open('app.result', 'w').write(got.stdout)\n"
) + WEB_APP


def web(command: str = f"exec {PY} app.py") -> tuple[ProcessSpec, ...]:
    return (ProcessSpec(name="web", command=command, routed=True),)


async def wait_for(path: Path, timeout: float = 20.0) -> str:
    for _ in range(int(timeout / 0.05)):
        if path.exists() and path.read_text().strip():
            return path.read_text()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def outcome(text: str) -> list[Any]:
    return json.loads(text.strip().splitlines()[-1])


def root_connect(name: str) -> bytes:
    """InkMCP's side (root, in no domain): the listener is up and serves."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(b"\0" + name.encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data


@pytest.mark.asyncio
async def test_another_tenant_cannot_reach_an_abstract_socket(make_provider, checkouts, project_ids, data_dir) -> None:  # noqa: F811
    """alice's app listens on `@<name>` and serves her secret; a child of her app (her own domain) connects and gets
    it. mallory's build step (preexec path) and her app (inkspawn path), another project's uid, connect to the same
    name: each is refused (EPERM from the scope; before: connected, and read alice's secret), and alice's listener
    accepted nobody of mallory's uid. A build step still reaches the abstract socket it made itself (its child)."""
    token = secrets.token_hex(6)
    name, secret = f"ll-alice-{token}", f"ALICE-SECRET-{token}"
    provider = await make_provider()

    alice_key = key_for(project_ids(), project="alice")
    alice_plan = BuildPlan(stack=Stack.none, source="call", processes=web(),
                           build_command=f"{PY} listen.py ll-build-{token} build.accepted > build.self")  # fmt: skip
    alice = request_for(alice_key, checkouts({"app.py": ALICE_APP, "listen.py": LISTEN, "connect.py": CONNECT}),
                        alice_plan, env={"ABSTRACT": name, "SECRET": secret})  # fmt: skip
    await provider.release(alice, Events(), no_record)
    alice_src = data_dir / "services" / alice_key.service_id / "releases" / alice.deployment_id / "src"
    alice_uid = alice_src.stat().st_uid
    # a build step's own child reaches the socket the step made; alice's app's child reaches the app's
    assert outcome((alice_src / "build.self").read_text()) == ["connected", secret]
    assert outcome(await wait_for(alice_src / "child.result")) == ["connected", secret]

    mallory_key = key_for(project_ids(), project="mallory")
    mallory_plan = BuildPlan(stack=Stack.none, source="call", processes=web(),
                             build_command=f"{PY} connect.py {name} > build.result")  # fmt: skip
    mallory = request_for(mallory_key, checkouts({"app.py": MALLORY_APP, "connect.py": CONNECT}), mallory_plan,
                          env={"TARGET": name})  # fmt: skip
    await provider.release(mallory, Events(), no_record)
    mallory_src = data_dir / "services" / mallory_key.service_id / "releases" / mallory.deployment_id / "src"
    mallory_uid = mallory_src.stat().st_uid
    assert 0 != mallory_uid != alice_uid != 0
    build_saw = outcome((mallory_src / "build.result").read_text())
    app_saw = outcome(await wait_for(mallory_src / "app.result"))

    assert root_connect(name) == secret.encode()  # alice's listener was up all along (and root is in no domain)
    saw = {"build step": build_saw, "app": app_saw}
    reached = {what: got for what, got in saw.items() if got[0] != "refused" or got[1] not in ("EPERM", "ECONNREFUSED")}
    assert not reached, f"mallory's code reached alice's abstract socket: {reached}"
    assert secret not in json.dumps(saw)
    accepted = (alice_src / "accepted").read_text().split()
    assert str(mallory_uid) not in accepted, accepted
    assert accepted == [str(alice_uid), "0"], accepted  # her own child, then root's check


def test_doctor_says_whether_tenant_processes_get_the_scope() -> None:
    from inkmcp.doctor import DoctorReport, Status
    from inkmcp.doctor_local import check_ipc_scope

    report = DoctorReport()
    check_ipc_scope(report)
    (row,) = report.checks
    assert row.name == "tenant IPC scope" and row.status == Status.ok, row
    assert f"Landlock ABI {_landlock_abi()}" in row.detail and "abstract unix sockets" in row.detail, row
