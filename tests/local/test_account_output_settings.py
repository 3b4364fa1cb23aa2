"""The per-account output budget's rates are operator settings (INKMCP_ACCOUNT_OUTPUT_*): the defaults are the
rates the budget had as constants, a wrong value stops `inkmcp serve` before anything starts with the variable and
what to set, and a configured value is what every account's budget gets. The pacing itself, with configured rates,
is tests/local/test_account_output_budget.py."""

from __future__ import annotations

import pytest

from inkmcp.errors import InkError, settings_from_env
from inkmcp.providers.compute.local import logs
from inkmcp.providers.compute.local.logs import AccountRates, OutputBudget
from inkmcp.settings import AccountOutputSettings
from tests.support import dispose_server, make_server

PREFIX = "INKMCP_ACCOUNT_OUTPUT_"


def read() -> AccountOutputSettings:
    return settings_from_env(AccountOutputSettings, PREFIX, "inkmcp/settings.py")


def test_the_defaults_are_the_rates_the_budget_had(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AccountOutputSettings.model_fields:
        monkeypatch.delenv(PREFIX + name.upper(), raising=False)
    assert read().rates() == AccountRates() == AccountRates(8000.0, 40000.0, 8 * 2**20, 16 * 2**20)


def test_configured_rates_are_every_accounts_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREFIX + "LINES_PER_SECOND", "1500")
    monkeypatch.setenv(PREFIX + "BURST_LINES", "3000")
    monkeypatch.setenv(PREFIX + "MIB_PER_SECOND", "0.5")
    monkeypatch.setenv(PREFIX + "BURST_MIB", "2")
    monkeypatch.setattr(logs, "_account_rates", logs.account_rates())  # restored after the test
    logs.configure_account_rates(read().rates())
    budget = OutputBudget.for_account()
    assert budget.rates == (1500.0, 0.5 * 2**20) and budget.bursts == (3000.0, 2 * 2**20)
    # 3,000 lines at once empty the burst; the next 1,500 wait a second at 1,500 lines/s
    assert budget.take(3000, 10) == 0
    assert budget.take(1500, 10) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(("field", "value"), [("LINES_PER_SECOND", "0"), ("BURST_LINES", "-5"),
                                              ("MIB_PER_SECOND", "nan"), ("BURST_MIB", "fast")])  # fmt: skip
def test_a_rate_that_is_not_positive_is_refused_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, field: str, value: str) -> None:
    monkeypatch.setenv(PREFIX + field, value)
    with pytest.raises(InkError) as err:
        read()
    text = err.value.render()
    assert f"invalid configuration {PREFIX}{field}" in text and f"Fix: set {PREFIX}{field} to a positive number" in text
    with pytest.raises(ValueError, match="must be a positive number"):  # the budget's own check, for callers in code
        AccountRates(lines_per_second=0)


def test_serve_refuses_a_zero_rate_before_it_starts_anything() -> None:
    """A zero rate would block every tenant process at its first line; `inkmcp serve` says which variable to fix
    and exits before it makes its data dir's databases."""
    srv = make_server("inkmcp-acctout-", **{PREFIX + "LINES_PER_SECOND": "0"})
    srv.initdb_template = False  # serve's own first start: the data dir must stay without clusters
    try:
        with pytest.raises(RuntimeError) as err:
            srv.start(timeout=30)
        said = str(err.value)
        assert f"{PREFIX}LINES_PER_SECOND" in said and "positive number" in said, said
        assert not (srv.data_dir / "pg").exists()  # refused before the embedded PostgreSQL was made
    finally:
        dispose_server(srv, clean_stop=False)
