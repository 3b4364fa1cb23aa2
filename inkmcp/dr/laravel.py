"""Laravel's encrypter as Coolify 4.3.11 uses it, to check a restored database before Coolify starts.

Coolify stores SSH private keys, env values, S3 secrets and tokens with Eloquent's `encrypted` cast
(app/Models/PrivateKey.php:50 `'private_key' => 'encrypted'`, EnvironmentVariable.php:71, S3Storage.php:43-44),
i.e. `Crypt::encryptString`: AES-256-CBC (config/app.php:180 `'cipher' => 'AES-256-CBC'`), the payload
base64(JSON {"iv", "value", "mac", "tag"}) with `mac = HMAC-SHA256(key, base64(iv) . value)`. Decryption tries
APP_KEY, then each of APP_PREVIOUS_KEYS (comma-separated; Laravel >= 11 `config('app.previous_keys')`, merged
from the framework's default config/app.php, which Coolify's own file does not override) and fails with
"The MAC is invalid." when none matches: after a restore with a wrong key set, Coolify answers 500.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class LaravelDecryptError(ValueError):
    pass


def parse_key(text: str) -> bytes:
    """An APP_KEY value: `base64:<32 bytes>` (what install.sh writes) or a raw 32-character string."""
    text = text.strip().strip('"').strip("'")
    raw = base64.b64decode(text[7:], validate=True) if text.startswith("base64:") else text.encode()
    if len(raw) != 32:
        raise LaravelDecryptError(f"an AES-256-CBC key has 32 bytes, this one {len(raw)}")
    return raw


def key_ring(app_key: str, previous_keys: str = "") -> list[bytes]:
    """APP_KEY first, then APP_PREVIOUS_KEYS in order, as Laravel's Encrypter::getAllKeys does."""
    return [parse_key(app_key), *(parse_key(k) for k in previous_keys.split(",") if k.strip())]


def decrypt_string(payload: str, keys: Sequence[bytes]) -> str:
    try:
        data = json.loads(base64.b64decode(payload, validate=True))
        iv, value, mac = base64.b64decode(data["iv"]), data["value"], data["mac"]
        ciphertext = base64.b64decode(value)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise LaravelDecryptError("The payload is invalid.") from None
    if len(iv) != 16:
        raise LaravelDecryptError("The payload is invalid.")
    for key in keys:
        want = hmac.new(key, (data["iv"] + value).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, str(mac)):
            continue
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            return (unpadder.update(padded) + unpadder.finalize()).decode()
        except ValueError:
            raise LaravelDecryptError("Could not decrypt the data.") from None
    raise LaravelDecryptError("The MAC is invalid.")
