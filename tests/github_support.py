"""The GitHub stand-in for tests (issue 11): fixtures and helpers shared by tests/github/ and the web UI's tests.

Use:

    from tests.github_support import github_standin, github_env  # noqa: F401  (re-export the fixtures)

    def test_x(github_standin: StandinGitHub) -> None:
        alice = github_standin.add_user(unique_login("alice"))
        repo = github_standin.create_repo(alice.login, "app", private=True, files={"app.py": "..."})
        env = github_env(github_standin, public_url="http://127.0.0.1:PORT", webhook_secret="s3cret")

Every REST answer and webhook payload the stand-in makes is checked against GitHub's published OpenAPI descriptions
(`inkmcp.github.spec`); the fixture asserts at the end that none was off-spec. The stand-in is session-scoped
(one thread, one port for the whole run): tests make their own users and repos with
unique names (`unique_login`). It has one OAuth app, CLIENT_ID / CLIENT_SECRET, with no registered callback (any
redirect_uri is accepted, as tests run InkMCP on ephemeral ports).

Browser sign-in: the stand-in's /login/oauth/authorize shows an "Authorize" page (select `#login`, button
`#js-oauth-authorize-btn`) listing every stand-in user; or visit `{standin.url}/_standin/as/LOGIN` first (sets a
cookie) or set `standin.state.auto_approve = LOGIN`, and it redirects back at once.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inkmcp.github.standin import StandinGitHub
from tests.support import call

CLIENT_ID = "Iv1.standin0client"
CLIENT_SECRET = "standin-client-secret-" + "0" * 18


def unique_login(prefix: str) -> str:
    """A GitHub-shaped login no other test uses (logins become account names, which are global)."""
    return f"{prefix}-{secrets.token_hex(3)}"


def github_env(standin: StandinGitHub, *, public_url: str | None = None,
               webhook_secret: str | None = None) -> dict[str, str]:
    """INKMCP_* settings pointing an InkMCP server at the stand-in."""
    env = {"INKMCP_GITHUB_URL": standin.url, "INKMCP_GITHUB_API_URL": standin.api_url,
           "INKMCP_GITHUB_CLIENT_ID": CLIENT_ID, "INKMCP_GITHUB_CLIENT_SECRET": CLIENT_SECRET}
    if public_url:
        env["INKMCP_PUBLIC_URL"] = public_url
    if webhook_secret:
        env["INKMCP_GITHUB_WEBHOOK_SECRET"] = webhook_secret
    return env


async def deploy_live(s: Any, **args: Any) -> dict[str, Any]:
    """deploy_app over the MCP session `s`, waited for until it is done; asserts it went live."""
    dep = await call(s, "deploy_app", **args)
    while not dep["done"]:
        dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
    assert dep["status"] == "live", dep
    return dep


@pytest.fixture(scope="session")
def github_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinGitHub]:
    """A running GitHub stand-in (web + git at `.url`, REST at `.api_url` = `.url + '/api/v3'`)."""
    standin = StandinGitHub(Path(tmp_path_factory.mktemp("github-standin")))
    standin.add_app(CLIENT_ID, CLIENT_SECRET)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
    # every REST answer and webhook payload it made was valid for GitHub's published spec (inkmcp/github/spec.py)
    assert standin.response_violations == [], standin.response_violations
    assert standin.payload_violations == [], standin.payload_violations
