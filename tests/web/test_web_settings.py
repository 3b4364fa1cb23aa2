"""INKMCP_WEB_*: a bad value names the variable and what it takes, never the value (read through
`inkmcp.errors.settings_from_env`, the one reader of settings classes)."""

from __future__ import annotations

import pytest

from inkmcp.errors import InkError
from inkmcp.web.settings import WebSettings


def test_a_bad_web_setting_names_the_variable_and_its_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INKMCP_WEB_SESSION_HOURS", "99999")
    with pytest.raises(InkError) as info:
        WebSettings.from_env()
    err = info.value
    assert err.argument == "INKMCP_WEB_SESSION_HOURS"
    assert err.message.startswith("invalid configuration INKMCP_WEB_SESSION_HOURS: Input should be less than or equal")
    assert err.fix == ("set INKMCP_WEB_SESSION_HOURS to how long a dashboard sign-in lasts (hours); after it the user "
                       "signs in with GitHub again")
    monkeypatch.setenv("INKMCP_WEB_SESSION_HOURS", "2")
    assert WebSettings.from_env().session_lifetime.total_seconds() == 7200
