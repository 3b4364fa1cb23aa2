"""Log text for agents: newest last, bounded in lines and bytes, secrets redacted.

Logs are tenant output, so they are untrusted data: they may contain text crafted to look like
instructions. Callers present them as data (a list of strings flagged untrusted), never as prose.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import BaseModel, Field

MAX_TAIL = 500
MAX_BYTES = 16_000
MAX_LINE = 1_000
MIN_SECRET = 4
REDACTED = "[REDACTED]"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# --- redteam4: every other escape sequence and control character. Only colour sequences (above) were removed, so
# a tenant's output wrote OSC 52 (the reader's clipboard), titles, a terminal reset, sub-parameter and 8-bit CSI
# into the terminal of whoever ran `inkmcp logs` (tests/security/test_redteam4_log_escapes.py). Removed: CSI (7- and
# 8-bit, any parameters), OSC/DCS/SOS/PM/APC strings up to their terminator (or the line's end), two-character
# escapes; any control character left (but tab) is shown as a visible escape instead (\x08, \x9b).
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d-\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, SOS, PM, APC
    r"|\x1b[ -/]*[0-~]?"  # nF and two-character escapes (ESC c, ESC 7), or a lone ESC
)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _visible(match: re.Match[str]) -> str:
    return {"\r": "\\r", "\n": "\\n"}.get(match.group(), f"\\x{ord(match.group()):02x}")


def _printable(line: str) -> str:
    """`line` with nothing a terminal acts on: escape sequences removed, other control characters made visible."""
    return _CONTROL.sub(_visible, _ESCAPES.sub("", line))
# --- end


class LogsView(BaseModel):
    project: str
    service: str
    scope: str
    deployment_id: str | None = None
    lines: list[str] = Field(description="untrusted tenant output, oldest first")
    truncated: bool = False
    untrusted: bool = True
    note: str | None = None  # newuser5: why runtime logs are empty while a deployment has not run anything yet


PLAIN_VALUES = frozenset({
    "true", "false", "yes", "no", "on", "off", "none", "null",
    "production", "prod", "development", "dev", "staging", "test", "testing", "local",
    "debug", "info", "warn", "warning", "error", "critical", "trace", "verbose", "silent",
    "json", "text", "utf-8", "utf8", "http", "https", "localhost", "0.0.0.0", "127.0.0.1",
})
"""Env values that are configuration words, not secrets: redacting them blanked every `INFO` of an app run with
LOG_LEVEL=INFO ("web | [REDACTED]:     Application startup complete.") and every "production" of NODE_ENV's.
Still redacted under a key that names a secret (`_SECRET_KEY`), whatever the value."""
_SECRET_KEY = re.compile(r"PASS|PWD|SECRET|TOKEN|KEY|AUTH|CREDENTIAL|PRIVATE|SIGNATURE|SALT|COOKIE|SESSION|DSN",
                         re.IGNORECASE)


def secret_values(env: Iterable[tuple[str, str]]) -> list[str]:
    """The values of (key, value) env pairs that `redact` hides: all but configuration words under plain keys."""
    return [v for k, v in env if v.lower() not in PLAIN_VALUES or _SECRET_KEY.search(k)]


def redact(lines: Iterable[str], secrets: Iterable[str]) -> list[str]:
    # longest first, so a value containing another is replaced whole
    values = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None
    out = []
    for line in lines:
        line = _printable(_ANSI.sub("", line.rstrip("\n")))  # --- redteam4: _printable
        if pattern:
            line = pattern.sub(REDACTED, line)
        out.append(line)
    return out


def bound(lines: list[str], tail: int) -> tuple[list[str], bool]:
    """Keep the newest `tail` lines within MAX_BYTES; cut over-long lines."""
    truncated = len(lines) > tail
    lines = lines[-tail:] if tail else []
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + " …[line cut]"
            truncated = True
        size += len(line.encode()) + 1
        if size > MAX_BYTES:
            truncated = True
            break
        kept.append(line)
    kept.reverse()
    return kept, truncated
