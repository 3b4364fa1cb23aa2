"""The Coolify secrets bundle: `/data/coolify/source/.env` (APP_KEY, DB and Redis passwords) and
`/data/coolify/ssh/keys/*`, as one encrypted file on the Storage Box.

Encryption: Fernet (AES-128-CBC + HMAC-SHA256, the `cryptography` package InkMCP already uses for its own
secrets, inkmcp/store/crypto.py SecretBox) under an operator key that lives only in the operator's secret store
(`inkmcp dr keygen`). Why not age/openssl: age is one more binary on the master, `openssl enc` has no integrity
check; Fernet is authenticated, so a tampered or truncated bundle is refused rather than half-restored, and a
copy of the box alone (or of the master's disk) is not enough to read APP_KEY.

Inside (a gzip tar): `manifest.json` (format, Coolify version, host, time, sha256 of every file), `source/.env`,
`ssh/keys/<name>`, and the newest of Coolify's own database backups when there is one (`db/pg-dump-coolify-<unix
time>.dmp` from backups/coolify/coolify-db-<ip>/, app/Jobs/DatabaseBackupJob.php:292,313): otherwise that dump lives
only on the lost master and in S3, and the restore would need both S3 credentials and the bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import socket
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet

from inkmcp.dr.errors import DrError
from inkmcp.store.crypto import DecryptionError, SecretBox

FORMAT = "inkmcp-coolify-secrets/1"
PREFIX = "coolify-secrets-"


@dataclass(frozen=True)
class Bundle:
    coolify_version: str
    host: str
    created_at: datetime
    files: dict[str, bytes]
    """Relative paths (`source/.env`, `ssh/keys/<name>`) to contents."""

    @property
    def env_text(self) -> str:
        return self.files["source/.env"].decode()

    def db_dump(self) -> tuple[str, bytes] | None:
        found = sorted((p, b) for p, b in self.files.items() if p.startswith("db/"))
        return (found[-1][0].split("/", 1)[1], found[-1][1]) if found else None

    def ssh_keys(self) -> dict[str, bytes]:
        return {p.split("/", 2)[2]: b for p, b in self.files.items() if p.startswith("ssh/keys/")}


def new_operator_key() -> str:
    return Fernet.generate_key().decode()


def _box(operator_key: str) -> SecretBox:
    try:
        return SecretBox([operator_key])
    except ValueError:
        raise DrError("the operator key is not a Fernet key: pass the 44-character key `inkmcp dr keygen` printed "
                      "(INKMCP_DR_OPERATOR_KEY)") from None


def collect(coolify_dir: Path, *, with_db_backup: bool = True) -> dict[str, bytes]:
    env = coolify_dir / "source" / ".env"
    if not env.is_file():
        raise DrError(f"{env} not found: pass --coolify-dir, the directory holding source/.env (default /data/coolify)")
    files = {"source/.env": env.read_bytes()}
    keys = coolify_dir / "ssh" / "keys"
    if keys.is_dir():
        for p in sorted(keys.iterdir()):
            if p.is_file():
                files[f"ssh/keys/{p.name}"] = p.read_bytes()
    if with_db_backup:
        dumps = sorted(coolify_dir.glob("backups/coolify/coolify-db-*/pg-dump-coolify-*.dmp"),
                       key=lambda p: int(p.stem.rsplit("-", 1)[1]) if p.stem.rsplit("-", 1)[1].isdigit() else 0)
        if dumps:
            files[f"db/{dumps[-1].name}"] = dumps[-1].read_bytes()
    return files


def seal(files: dict[str, bytes], *, coolify_version: str, operator_key: str, now: datetime | None = None) -> bytes:
    now = now or datetime.now(UTC)
    manifest = {"format": FORMAT, "coolify_version": coolify_version, "host": socket.gethostname(),
                "created_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "sha256": {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in [("manifest.json", json.dumps(manifest, indent=1).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(now.timestamp())
            tar.addfile(info, io.BytesIO(data))
    return _box(operator_key).encrypt(buf.getvalue())


def open_bundle(token: bytes, operator_key: str) -> Bundle:
    try:
        raw = _box(operator_key).decrypt(token)
    except DecryptionError:
        raise DrError("the operator key does not open this bundle (wrong key, or the file was altered or cut "
                      "short): pass the key that was set when the bundle was made") from None
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member) if member.isfile() else None
            if f is None or member.name.startswith("/") or ".." in member.name.split("/"):
                raise DrError(f"bundle entry {member.name!r} is not a plain relative file")
            files[member.name] = f.read()
    manifest = json.loads(files.pop("manifest.json", b"{}"))
    if manifest.get("format") != FORMAT:
        raise DrError(f"not a Coolify secrets bundle (format {manifest.get('format')!r}, expected {FORMAT})")
    sums = {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
    if sums != manifest["sha256"]:
        raise DrError("the bundle's files do not match its manifest")
    if "source/.env" not in files:
        raise DrError("the bundle holds no source/.env")
    created = datetime.strptime(manifest["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return Bundle(str(manifest["coolify_version"]), str(manifest["host"]), created, files)


def bundle_name(now: datetime) -> str:
    """`coolify-secrets-<UTC second>-<random>.bundle`: the random part keeps two bundles made in the same second
    (two masters, or a retry) from replacing one another on the box."""
    return f"{PREFIX}{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}.bundle"


def bundle_time(name: str) -> datetime | None:
    """The time in a bundle's name (with or without the random part), or None for any other file."""
    if not (name.startswith(PREFIX) and name.endswith(".bundle")):
        return None
    stamp = name[len(PREFIX):-len(".bundle")].split("-", 1)[0]
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
