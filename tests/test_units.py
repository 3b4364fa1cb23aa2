"""Pure-function checks of the contract pieces that need no server."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from inkmcp.core.logs import REDACTED, bound, redact
from inkmcp.core.names import check_name, project_name_from_repo, redact_url
from inkmcp.errors import InvalidArgument
from inkmcp.providers.database.base import DatabaseCredentials
from inkmcp.providers.database.byo import parse_database_url


@pytest.mark.parametrize(("url", "name"), [
    ("https://github.com/user/My-SaaS.git", "my-saas"),
    ("git@github.com:user/shop_app.git", "shop-app"),
    ("/srv/repos/api/", "api"),
    ("https://token@github.com/org/x.y", "x-y"),
])
def test_project_name_from_repo(url: str, name: str) -> None:
    assert project_name_from_repo(url) == name


def test_name_errors_say_the_rule_and_a_fix() -> None:
    with pytest.raises(InvalidArgument) as e:
        check_name("-Bad_", "service_name")
    assert "service_name" in str(e.value) and "lowercase" in str(e.value) and "'bad'" in str(e.value)
    with pytest.raises(InvalidArgument):
        check_name("a" * 64, "project_name")


def test_redact_url_hides_credentials() -> None:
    assert redact_url("https://user:ghp_secret@github.com/a/b") == "https://***@github.com/a/b"


def test_logs_are_redacted_before_bounding() -> None:
    secret = "s3cr3t-" + "x" * 2000
    lines = redact([f"token={secret}", "\x1b[31mred\x1b[0m", "short ab"], [secret, "ab"])
    assert lines[0] == f"token={REDACTED}" and lines[1] == "red" and lines[2] == "short ab"
    kept, truncated = bound([f"line {i}" for i in range(1000)], 10)
    assert kept == [f"line {i}" for i in range(990, 1000)] and truncated
    kept, truncated = bound(["y" * 5000] * 10, 10)
    assert truncated and all(len(k) < 1100 for k in kept) and sum(len(k) for k in kept) <= 16_000


def test_byo_url_keeps_options_and_quotes_credentials() -> None:
    creds = parse_database_url(SecretStr("postgresql://u%40x:p%2Fw@db.example.com/app?sslmode=require"))
    assert creds.user == "u@x" and creds.password.get_secret_value() == "p/w"
    assert creds.url().get_secret_value() == "postgresql://u%40x:p%2Fw@db.example.com:5432/app?sslmode=require"
    assert "p/w" not in repr(creds)
    plain = DatabaseCredentials(host="h", port=1, database="d", user="u", password=SecretStr("pw"))
    assert plain.url().get_secret_value() == "postgresql://u:pw@h:1/d"


def test_audit_arguments_never_hold_secret_values() -> None:
    from inkmcp.core.audit import redact_arguments

    out = redact_arguments({
        "repo_url": "https://ghp_token@github.com/a/b.git",
        "env_vars": {"API_KEY": "value", "OLD": None},
        "database": {"type": "byo", "url": "postgresql://u:pw@h/d"},
        "service_name": "web",
    })
    assert out == {
        "repo_url": "https://***@github.com/a/b.git",
        "env_vars": {"API_KEY": "<redacted>", "OLD": "<unset>"},
        "database": {"type": "byo", "url": "<redacted>"},
        "service_name": "web",
    }


def test_follow_prints_only_new_lines() -> None:
    from inkmcp.cli import _new_lines

    assert _new_lines([], ["a", "b"]) == ["a", "b"]
    assert _new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert _new_lines(["a", "b"], ["a", "b"]) == []
    assert _new_lines(["x"], ["y"]) == ["y"]
