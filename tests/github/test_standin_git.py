"""The stand-in's git smart HTTP and webhooks behave as GitHub's do (what the e2e tests rely on), and the pieces
of the integration that need no server: repo URL parsing, the webhook signature check, key rotation coverage."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from inkmcp.github.deploy import parse_repo
from inkmcp.github.settings import GitHubSettings
from inkmcp.github.standin import StandinGitHub
from inkmcp.github.webhooks import signature_ok
from inkmcp.store.crypto import encrypted_columns
from tests.github_support import unique_login
from tests.support import serving

GIT_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, timeout=60)


def with_token(url: str, token: str) -> str:
    return url.replace("http://", f"http://x-access-token:{token}@")


class Receiver(BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_private_clone_needs_a_token_with_access_and_an_http_push_sends_a_signed_webhook(
        github_standin: StandinGitHub, tmp_path: Path) -> None:
    owner, other = github_standin.add_user(unique_login("owner")), github_standin.add_user(unique_login("other"))
    repo = github_standin.create_repo(owner.login, "code", private=True, files={"a.txt": "1\n"})
    url = github_standin.clone_url(repo)
    anonymous = git("clone", "-q", url, str(tmp_path / "anon"))
    assert anonymous.returncode != 0 and "could not read Username" in anonymous.stderr, anonymous.stderr  # a 401
    foreign = git("clone", "-q", with_token(url, other.token), str(tmp_path / "other"))
    assert foreign.returncode != 0 and "not found" in foreign.stderr.lower(), foreign.stderr
    assert not (tmp_path / "other" / "a.txt").exists()
    mine = git("clone", "-q", with_token(url, owner.token), str(tmp_path / "mine"))
    assert mine.returncode == 0, mine.stderr
    assert (tmp_path / "mine" / "a.txt").read_text() == "1\n"

    Receiver.got = []
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Receiver)) as port:
        github_standin.add_hook(repo, f"http://127.0.0.1:{port}/hook", "s3cret")
        work = tmp_path / "mine"
        (work / "a.txt").write_text("2\n")
        assert git("commit", "-qam", "two", cwd=work).returncode == 0
        denied = git("push", "-q", with_token(url, other.token), "HEAD:main", cwd=work)
        assert denied.returncode != 0  # no write access
        pushed = git("push", "-q", with_token(url, owner.token), "HEAD:main", cwd=work)
        assert pushed.returncode == 0, pushed.stderr
        head = git("rev-parse", "HEAD", cwd=work).stdout.strip()
        deadline = time.monotonic() + 10
        while not Receiver.got and time.monotonic() < deadline:
            time.sleep(0.02)
    headers, body = Receiver.got[0]
    assert headers["X-GitHub-Event"] == "push" and re.fullmatch(r"[0-9a-f-]{36}", headers["X-GitHub-Delivery"])
    assert headers["X-Hub-Signature-256"] == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    payload = json.loads(body)
    assert (payload["ref"], payload["after"], payload["repository"]["full_name"], payload["pusher"]["name"]) == (
        "refs/heads/main", head, f"{owner.login}/code", owner.login)


def test_standin_runs_as_a_module_for_local_development() -> None:
    root = tempfile.mkdtemp(prefix="gh-standin-cli-")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "inkmcp.github.standin", "--root", root, "--port", str(port),
                             "--user", "dev", "--repo", "dev/app:private"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        deadline = time.monotonic() + 20
        token = None
        while token is None and time.monotonic() < deadline:
            token = next((m.group(1) for line in list(lines) if (m := re.search(r"token (gho_\w+)", line))), None)
            time.sleep(0.05)
        assert token, lines
        base = f"http://127.0.0.1:{port}"
        assert f"export INKMCP_GITHUB_API_URL={base}/api/v3\n" in lines
        r = httpx.get(f"{base}/api/v3/repos/dev/app", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["private"] is True
        assert httpx.get(f"{base}/api/v3/repos/dev/app").status_code == 404  # hidden from anonymous callers
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("url", "expected"), [
    ("https://github.com/Owner/Repo", ("Owner", "Repo")),
    ("https://github.com/owner/repo.git", ("owner", "repo")),
    ("https://github.com/owner/repo/", ("owner", "repo")),
    ("https://github.com:443/owner/repo.git", ("owner", "repo")),
    ("https://tok@github.com/owner/repo.git", None),  # the caller's own credentials: used as given
    ("https://github.com/owner/repo/tree/main", None),
    ("https://gitlab.com/owner/repo.git", None),
    ("http://github.com/owner/repo.git", None),  # another origin
    ("git@github.com:owner/repo.git", None),
])
def test_parse_repo(url: str, expected: tuple[str, str] | None) -> None:
    assert parse_repo(GitHubSettings(), url) == expected


def test_parse_repo_under_an_enterprise_path() -> None:
    ghe = GitHubSettings(github_url="https://ghe.example.com/git")
    assert parse_repo(ghe, "https://ghe.example.com/git/team/app.git") == ("team", "app")
    assert parse_repo(ghe, "https://ghe.example.com/team/app.git") is None


def test_signature_check() -> None:
    body = b'{"ref":"refs/heads/main"}'
    good = "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert signature_ok("k", body, good)
    assert not signature_ok("k", body + b" ", good)
    assert not signature_ok("other", body, good)
    assert not signature_ok("k", body, None)
    assert not signature_ok("k", body, good.replace("sha256=", "sha1="))


def test_the_stored_github_token_is_rotated_with_the_other_secrets() -> None:
    assert ("github_identities", "account_id", "token_enc") in encrypted_columns()


def test_a_form_encoded_delivery_carries_its_json_in_payload() -> None:
    from urllib.parse import urlencode

    from inkmcp.github.webhooks import PushEvent, _json_payload

    body = json.dumps({"ref": "refs/heads/main", "after": "a" * 40, "repository": {"full_name": "o/r"}})
    form = urlencode({"payload": body}).encode()
    assert PushEvent.model_validate_json(_json_payload(form, "application/x-www-form-urlencoded")).ref == \
        "refs/heads/main"
    assert _json_payload(body.encode(), "application/json; charset=utf-8") == body.encode()


def test_the_contract_check_is_not_vacuous(github_standin: StandinGitHub) -> None:
    """The published schemas catch a body GitHub would never send (so an empty violations list means something)."""
    from inkmcp.github import spec
    from inkmcp.github.standin.payloads import full_repository, private_user, push_event

    user = github_standin.add_user(unique_login("spec"))
    repo = github_standin.create_repo(user.login, "r", files={"a": "a"})
    good = full_repository(repo, user, github_standin.url, github_standin.api_url, None)
    assert spec.response_problems("get", "/repos/{owner}/{repo}", 200, good) == []
    assert spec.response_problems("get", "/repos/{owner}/{repo}", 200, {**good, "private": "no"})
    assert spec.response_problems("get", "/repos/{owner}/{repo}", 200,
                                  {k: v for k, v in good.items() if k != "default_branch"})
    assert spec.response_problems("get", "/repos/{owner}/{repo}", 418, {"message": "teapot"})
    me = private_user(user, github_standin.url, github_standin.api_url)
    assert spec.response_problems("get", "/user", 200, me) == []
    assert spec.response_problems("get", "/user", 200, {**me, "id": "1"})
    push = push_event(repo, user, user, github_standin.url, github_standin.api_url, branch="main", before="0" * 40,
                      after="a" * 40, message="m")
    assert spec.webhook_problems("push", push) == []
    assert spec.webhook_problems("push", {k: v for k, v in push.items() if k != "pusher"})
