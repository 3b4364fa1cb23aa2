"""Coolify's .env edits and APP_KEY parsing, the pure parts of restore-coolify."""

from __future__ import annotations

import base64
import os

import pytest

from inkmcp.dr.envfile import parse_env, set_env_value
from inkmcp.dr.laravel import LaravelDecryptError, decrypt_string, key_ring, parse_key
from tests.dr import laravel_ref


def test_env_first_value_wins_like_install_sh_and_set_replaces_in_place() -> None:
    text = "APP_KEY=base64:new\nAPP_PREVIOUS_KEYS=\nDB_PASSWORD='x=y'\nAPP_PREVIOUS_KEYS=stale\n# comment\n"
    assert parse_env(text) == {"APP_KEY": "base64:new", "APP_PREVIOUS_KEYS": "", "DB_PASSWORD": "x=y"}
    out = set_env_value(text, "APP_PREVIOUS_KEYS", "base64:old")
    assert out == "APP_KEY=base64:new\nAPP_PREVIOUS_KEYS=base64:old\nDB_PASSWORD='x=y'\n# comment\n"
    assert set_env_value("A=1\n", "B", "2") == "A=1\nB=2\n"


def test_app_key_forms_and_wrong_lengths() -> None:
    raw = os.urandom(32)
    assert parse_key("base64:" + base64.b64encode(raw).decode()) == raw
    assert parse_key('"' + "k" * 32 + '"') == b"k" * 32
    with pytest.raises(LaravelDecryptError, match="32 bytes, this one 16"):
        parse_key("base64:" + base64.b64encode(os.urandom(16)).decode())


def test_previous_keys_are_tried_in_order_and_a_tampered_value_is_refused() -> None:
    old, new = os.urandom(32), os.urandom(32)
    payload = laravel_ref.encrypt_string("secret ✓", old)
    ring = key_ring(laravel_ref.app_key(new), f"{laravel_ref.app_key(os.urandom(32))},{laravel_ref.app_key(old)}")
    assert decrypt_string(payload, ring) == "secret ✓"
    with pytest.raises(LaravelDecryptError, match="MAC is invalid"):
        decrypt_string(payload, ring[:2])
    forged = base64.b64encode(base64.b64decode(payload).replace(b'"mac":"', b'"mac":"0')).decode()
    with pytest.raises(LaravelDecryptError):
        decrypt_string(forged, ring)
    with pytest.raises(LaravelDecryptError, match="payload is invalid"):
        decrypt_string("not base64 json", ring)
