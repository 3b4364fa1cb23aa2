"""Read and edit Coolify's `/data/coolify/source/.env` the way install.sh does (KEY=value lines, first wins).

install.sh keeps existing values (`awk -F '=' '!seen[$1]++' .env .env.production`, update_env_var only fills
empty or missing keys), so a line we add survives the re-run of install.sh that follows a restore.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse_env(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m and m[1] not in values:
            values[m[1]] = m[2].strip().strip('"').strip("'")
    return values


def set_env_value(text: str, key: str, value: str) -> str:
    """`text` with `key=value`: the first `key=` line replaced (later duplicates dropped), else appended."""
    out, done = [], False
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m and m[1] == key:
            if not done:
                out.append(f"{key}={value}")
                done = True
            continue
        out.append(line)
    if not done:
        out.append(f"{key}={value}")
    return "\n".join(out) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Same mode and owner as the file it replaces (0600 root for a new one); renamed into place."""
    st = path.stat() if path.exists() else None
    tmp = path.with_name(f".{path.name}.dr-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, st.st_mode & 0o7777 if st else 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if st is not None:
        os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)
