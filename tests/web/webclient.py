"""Signing in to a test server over plain HTTP (httpx), as a browser would, and reading its pages."""

from __future__ import annotations

import html
import re

import httpx

from inkmcp.github.standin import StandinGitHub
from tests.github_support import unique_login
from tests.support import ServerProc


def base(srv: ServerProc) -> str:
    return f"http://127.0.0.1:{srv.port}"


def sign_in(srv: ServerProc, standin: StandinGitHub, prefix: str) -> tuple[httpx.Client, str]:
    """A new stand-in user signs in through the real OAuth redirects; returns its cookie-keeping client and login."""
    login = unique_login(prefix)
    standin.add_user(login)
    client = httpx.Client(base_url=base(srv), follow_redirects=True, timeout=30)
    client.get(f"{standin.url}/_standin/as/{login}").raise_for_status()  # the stand-in approves as this user
    page = client.get("/auth/github/login")
    assert page.status_code == 200 and page.url.path == "/dashboard", (page.status_code, page.url, page.text[:500])
    assert f'id="login">{login}<' in page.text, page.text[:1000]
    return client, login


def csrf(page: str) -> str:
    m = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page)
    assert m, page[:1000]
    return m.group(1)


def key_ids(page: str) -> list[str]:
    return re.findall(r'name="key_id" value="([0-9a-f-]{36})"', page)


def new_key(page: str) -> str:
    m = re.search(r'id="new-key" type="text" readonly value="(dk_live_[A-Za-z0-9_\-]+)"', page)
    assert m, page[:2000]
    return m.group(1)


def post(client: httpx.Client, path: str, data: dict[str, str], *, origin: str | None = "same") -> httpx.Response:
    """A form POST as the browser sends it (Origin of the page), or with `origin` as given (None: no header)."""
    headers = {}
    if origin == "same":
        headers["Origin"] = str(client.base_url).rstrip("/")
    elif origin is not None:
        headers["Origin"] = origin
    return client.post(path, data=data, headers=headers, follow_redirects=False)


def figure(page: str, element_id: str) -> str:
    """The text of the dashboard's Credits figure `element_id` (balance, cap, spent, burn)."""
    m = re.search(rf'<dd id="{element_id}">([^<]*)</dd>', page)
    assert m, page[:3000]
    return m.group(1)


def problem(page: str) -> str:
    m = re.search(r'id="problem">([^<]*)<', page)
    assert m, page[:3000]
    return html.unescape(m.group(1))
