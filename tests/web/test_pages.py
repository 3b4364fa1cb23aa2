"""The web UI in-process (Starlette's test client, no server, no database): what the home page says without the
GitHub settings, and the page a user gets when GitHub cannot be reached during sign-in (a real connection to a
closed port). The rest runs against a real server in test_attacks.py and test_browser.py."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, cast

from cryptography.fernet import Fernet
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from inkmcp.github.settings import GitHubSettings
from inkmcp.store.crypto import SecretBox
from inkmcp.web.app import WebUI
from inkmcp.web.github import GitHubOAuth
from inkmcp.web.sessions import WebSessions
from tests.support import free_port

HOST = "127.0.0.1:8080"


def ui(settings: GitHubSettings) -> TestClient:
    """A WebUI whose platform and database are never reached on the paths these tests take."""
    sessions = WebSessions(cast(Any, None), os.urandom(32), timedelta(hours=1), timedelta(minutes=10))
    box = SecretBox([Fernet.generate_key()])
    web = WebUI(cast(Any, None), sessions, GitHubOAuth(settings, cast(Any, None), box), settings.public_url)
    inner = PlainTextResponse("inner app")
    app = web.mount(inner, [HOST])
    client = TestClient(app, base_url=f"http://{HOST}", raise_server_exceptions=False)
    client.web = web  # type: ignore[attr-defined]
    return client


def test_without_github_settings_the_home_page_names_what_to_set() -> None:
    client = ui(GitHubSettings(public_url=None, github_client_id=None, github_client_secret=None))
    home = client.get("/")
    assert home.status_code == 200 and "not configured" in home.text
    for name in ("INKMCP_PUBLIC_URL", "INKMCP_GITHUB_CLIENT_ID", "INKMCP_GITHUB_CLIENT_SECRET"):
        assert name in home.text
    assert 'id="signin"' not in home.text and "inkmcp keys create" in home.text
    login = client.get("/auth/github/login", follow_redirects=False)  # nothing to sign in with: back home
    assert login.status_code == 303 and login.headers["location"] == "/"
    assert client.get("/mcp").text == "inner app"  # other paths are the MCP app's, untouched
    assert client.get("/", headers={"Host": "rebound.example"}).status_code == 421


def test_github_unreachable_during_sign_in_shows_a_page_not_a_trace() -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = ui(GitHubSettings(public_url=f"http://{HOST}", github_client_id="id", github_client_secret="secret",
                               github_url=closed, github_api_url=closed))
    start = client.get("/auth/github/login", follow_redirects=False)
    assert start.status_code == 302 and start.headers["location"].startswith(closed + "/login/oauth/authorize?")
    state = start.headers["location"].split("state=")[1].split("&")[0]
    page = client.get("/auth/github/callback", params={"code": "abc", "state": state}, follow_redirects=False)
    assert page.status_code == 502, page.text
    assert "Sign-in failed" in page.text and "could not be reached" in page.text
    assert "Traceback" not in page.text and "File \"" not in page.text
    assert "secret" not in page.text and "inkmcp_session" not in page.headers.get("set-cookie", "")


def test_under_https_the_cookies_are_secure_and_host_only() -> None:
    client = ui(GitHubSettings(public_url="https://inkmcp.example.com", github_client_id="id",
                               github_client_secret="secret"))
    start = client.get("/auth/github/login", follow_redirects=False, headers={"Host": "inkmcp.example.com"})
    assert start.status_code == 302
    cookie = start.headers["set-cookie"]
    assert cookie.startswith("__Host-inkmcp_oauth_state=") and "Secure" in cookie and "HttpOnly" in cookie
    assert "Path=/" in cookie and "Domain" not in cookie and "max-age=600" in cookie.lower()
    assert "redirect_uri=https%3A%2F%2Finkmcp.example.com%2Fauth%2Fgithub%2Fcallback" in start.headers["location"]
