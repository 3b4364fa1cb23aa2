"""Red team redteam2 (2026-12-02): a visitor's X-Forwarded-* headers reached an app as if the proxy set them.

The attack, as mallory (an anonymous visitor of alice's site, as anyone on the internet is): a request for
alice's hostname carrying `X-Forwarded-Host: evil.example`, `X-Forwarded-Proto: https`, `X-Forwarded-For: 6.6.6.6`,
`X-Real-IP` and `Forwarded`. An app behind one proxy trusts that proxy's X-Forwarded-* (Django's
USE_X_FORWARDED_HOST, Werkzeug's ProxyFix(x_for=1, x_host=1), Express's `trust proxy 1`): on the Coolify path
Traefik overwrites them for untrusted clients, so alice's app is configured to trust them.

Before (InkMCP at a82ba92, what alice's app received, from her runtime log): every header exactly as mallory sent it
(`'X-Forwarded-For': '6.6.6.6', 'X-Forwarded-Proto': 'https', 'X-Forwarded-Host': 'evil.example', 'X-Real-IP':
'6.6.6.6'`), and nothing added by the proxy: a password-reset link built from X-Forwarded-Host points at mallory's
host, an IP allow-list or rate limit keyed on the forwarded address takes hers.

After: nginx sets them from the connection (X-Forwarded-For / X-Real-IP = the client's address, X-Forwarded-Host =
the routed Host, -Proto = the scheme, -Port = the proxy's port) and drops `Forwarded`.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import ROOT, host_of, lab_live, lab_repo, session, via_proxy
from tests.support import ServerProc, call

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]

ALICE = "rt2-fwd-alice"
OWNER = "fwdlab"  # the lab's LAB_OWNER: an env value, so get_logs redacts it (not "alice": her hostname holds it)


@pytest.fixture(scope="module")
async def alice_site(server: ServerProc, repos: Path) -> dict[str, Any]:
    async with session(server, "alice") as a:
        return await lab_live(a, lab_repo(repos, "rt2-fwd-alice"), OWNER, project_name=ALICE)


async def captured(server: ServerProc, marker: str) -> dict[str, str]:
    """The headers alice's app printed for the request whose path holds `marker` (her lab logs every request)."""
    deadline = time.monotonic() + 30
    async with session(server, "alice") as a:
        while True:
            logs = await call(a, "get_logs", project_name=ALICE, service_name="web", scope="runtime", tail=100)
            line = next((x for x in logs["lines"] if "CAPTURED" in x and marker in x), None)
            if line is not None:
                start = line.index("{")
                return eval(line[start:line.rindex("}") + 1])  # noqa: S307 - the lab prints dict(self.headers)
            assert time.monotonic() < deadline, logs["lines"][-5:]
            time.sleep(0.3)


async def test_a_visitors_forwarded_headers_never_reach_the_app_as_the_proxys(server: ServerProc,
                                                                              alice_site: dict[str, Any]) -> None:
    marker = f"/reset-{secrets.token_hex(4)}"
    spoofed = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-For": "6.6.6.6",
               "X-Real-IP": "6.6.6.6", "X-Forwarded-Port": "443", "Forwarded": "for=6.6.6.6;host=evil.example"}
    r = via_proxy(server, alice_site["url"], marker, headers=spoofed)
    assert r.status_code == 200 and r.text == f"{OWNER} captured {marker}", r.text
    got = {k.lower(): v for k, v in (await captured(server, marker)).items()}

    host = host_of(alice_site["url"])
    assert got.get("x-forwarded-host") == host, got
    assert got.get("x-forwarded-for") == "127.0.0.1" and got.get("x-real-ip") == "127.0.0.1", got
    assert got.get("x-forwarded-proto") == "http" and got.get("x-forwarded-port") == str(server.proxy_port), got
    assert "forwarded" not in got, got
    assert not [v for v in got.values() if "evil.example" in v or "6.6.6.6" in v], got


async def test_duplicates_odd_casing_and_underscore_spellings_never_reach_the_app(server: ServerProc,
                                                                                 alice_site: dict[str, Any]) -> None:
    """proxy12 (2026-12-02): the same attack in the forms a header filter can miss, sent raw (httpx would merge
    them): each forwarded header twice in different casings, `X_Forwarded_Host` (a WSGI server reads it as
    HTTP_X_FORWARDED_HOST; nginx passes underscores here), `Forwarded` twice, X-Forwarded-Prefix/-Ssl/-Server.
    Alice's app sees the proxy's five headers once each and not one forged value."""
    import socket

    from tests.local.test_proxy_forwarded import FORGED, forwarded_view

    marker = f"/reset-{secrets.token_hex(4)}"
    host = host_of(alice_site["url"])
    raw = (f"GET {marker} HTTP/1.1\r\nHost: {host}\r\n".encode() + FORGED + b"Connection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.proxy_port), timeout=30) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(f"{OWNER} captured {marker}".encode()), answer
    got = await captured(server, marker)
    view = forwarded_view(b"X\r\n" + "\r\n".join(f"{k}: {v}" for k, v in got.items()).encode())
    assert sorted(view) == sorted([(b"x-forwarded-for", b"127.0.0.1"), (b"x-real-ip", b"127.0.0.1"),
                                   (b"x-forwarded-host", host.encode()), (b"x-forwarded-proto", b"http"),
                                   (b"x-forwarded-port", str(server.proxy_port).encode())]), got  # fmt: skip
    assert not [v for v in got.values() if "evil" in v or "6.6.6" in v], got
