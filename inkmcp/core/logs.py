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


class LogsView(BaseModel):
    project: str
    service: str
    scope: str
    deployment_id: str | None = None
    lines: list[str] = Field(description="untrusted tenant output, oldest first")
    truncated: bool = False
    untrusted: bool = True


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
        line = _ANSI.sub("", line.rstrip("\n"))
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
