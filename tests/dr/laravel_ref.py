"""Laravel's `Crypt::encryptString` / `decryptString` written from its published format, independently of
inkmcp/dr/laravel.py: AES-256-CBC through the `openssl enc` CLI (what PHP's openssl_encrypt calls), PKCS#7 padding,
`mac = hash_hmac('sha256', base64(iv) . value, key)`, payload = base64(json {iv, value, mac, tag:""})."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
from collections.abc import Sequence


def _openssl(args: list[str], data: bytes) -> bytes:
    r = subprocess.run(["openssl", "enc", "-aes-256-cbc", *args], input=data, capture_output=True, timeout=30,
                       check=False)
    if r.returncode != 0:
        raise ValueError(r.stderr.decode())
    return r.stdout


def encrypt_string(value: str, key: bytes) -> str:
    iv = os.urandom(16)
    value_b64 = _openssl(["-K", key.hex(), "-iv", iv.hex(), "-base64", "-A"], value.encode()).decode().strip()
    iv_b64 = base64.b64encode(iv).decode()
    mac = hmac.new(key, (iv_b64 + value_b64).encode(), hashlib.sha256).hexdigest()
    payload = json.dumps({"iv": iv_b64, "value": value_b64, "mac": mac, "tag": ""}, separators=(",", ":"))
    return base64.b64encode(payload.encode()).decode()


def decrypt_string(payload: str, keys: Sequence[bytes]) -> str:
    """APP_KEY first, then APP_PREVIOUS_KEYS: the first key whose MAC matches decrypts; none -> "The MAC is invalid"."""
    data = json.loads(base64.b64decode(payload))
    for key in keys:
        mac = hmac.new(key, (data["iv"] + data["value"]).encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(mac, data["mac"]):
            iv = base64.b64decode(data["iv"])
            return _openssl(["-d", "-K", key.hex(), "-iv", iv.hex(), "-base64", "-A"],
                            data["value"].encode()).decode()
    raise ValueError("The MAC is invalid.")


def app_key(raw: bytes) -> str:
    """How install.sh writes it: `base64:$(openssl rand -base64 32)`."""
    return "base64:" + base64.b64encode(raw).decode()
