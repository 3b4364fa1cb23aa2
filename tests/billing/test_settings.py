"""INKMCP_PRICES and friends: bad values fail with the variable's name and what to set."""

from __future__ import annotations

import pytest

from inkmcp.billing.settings import load_billing_settings
from inkmcp.errors import InkError


def test_prices_setting_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INKMCP_PRICES", "{persistent: 2")
    with pytest.raises(InkError, match=r"INKMCP_PRICES.*not JSON"):
        load_billing_settings()
    monkeypatch.setenv("INKMCP_PRICES", '{"persistent": -2}')
    with pytest.raises(InkError, match=r"INKMCP_PRICES \(field persistent\).*greater than or equal to 0"):
        load_billing_settings()
    monkeypatch.setenv("INKMCP_PRICES", '{"persistant": 2}')
    with pytest.raises(InkError, match="persistant"):
        load_billing_settings()
    monkeypatch.setenv("INKMCP_PRICES", '{"on_demand": 1.5}')
    with pytest.raises(InkError, match="integer"):
        load_billing_settings()
    monkeypatch.delenv("INKMCP_PRICES")
    assert not load_billing_settings().enabled
    monkeypatch.setenv("INKMCP_PRICES", '{"persistent": 2, "on_demand": 3}')
    assert load_billing_settings().prices.on_demand == 3  # type: ignore[union-attr]


def test_each_billing_variable_gets_its_own_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read through `inkmcp.errors.settings_from_env` (one reader for every settings class): INKMCP_PRICES keeps
    its example, the other variables get their own description (they used to get the INKMCP_PRICES example)."""
    monkeypatch.setenv("INKMCP_PRICES", '{"persistent": -2}')
    with pytest.raises(InkError) as info:
        load_billing_settings()
    assert info.value.argument == "INKMCP_PRICES" and info.value.fix is not None
    assert info.value.fix.startswith("set e.g. INKMCP_PRICES='{\"persistent\": 2")
    monkeypatch.delenv("INKMCP_PRICES")
    monkeypatch.setenv("INKMCP_GRACE_S", "-1")
    with pytest.raises(InkError) as info:
        load_billing_settings()
    assert info.value.argument == "INKMCP_GRACE_S"
    assert info.value.message.startswith("invalid configuration INKMCP_GRACE_S: ")
    assert info.value.fix == ("set INKMCP_GRACE_S to how long persistent services of an account out of credits "
                              "keep running")
    assert "-1" not in str(info.value)
