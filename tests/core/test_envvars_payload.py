"""`validate_env_payload`: a value that is not a string is refused with the way to pass it, and the way to remove
a variable that update_env_vars advertises (`unset=["NAME"]`, not a null value, which the tool schema no longer
shows: Gemini's function declarations refuse type lists)."""

from __future__ import annotations

import pytest

from inkmcp.core.envvars import validate_env_payload
from inkmcp.errors import InvalidArgument


def test_a_non_string_value_names_the_string_form_and_unset() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_env_payload({"WORKERS": 4}, 64 * 1024)  # type: ignore[dict-item]
    err = info.value
    assert err.argument == "env_vars" and err.message == "value of WORKERS must be a string, not int."
    assert err.fix == ('pass it as a string (e.g. "4"); to remove a variable, call update_env_vars with '
                       'unset=["WORKERS"]')
    assert "null" not in str(err)


def test_strings_and_a_legacy_null_still_pass() -> None:
    validate_env_payload({"A": "1", "OLD": None}, 64 * 1024)
