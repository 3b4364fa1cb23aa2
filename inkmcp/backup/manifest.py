"""The manifest of a backup set, its signature, and verification.

A set is a directory:

    manifest.json     what the set holds: format, versions, point in time, every file with size and SHA-256
    manifest.sig      HMAC-SHA256 of manifest.json's exact bytes, keyed by a key derived (HKDF) from the
                      installation's primary encryption key
    <files>           everything else, each listed in the manifest

Verification recomputes every file's size and SHA-256, refuses files the manifest does not list and listed files
that are missing, and checks the manifest's HMAC. What that proves depends on where the keys are, and is said so
(`Verified.authenticated`):

* keys written elsewhere (`create --keys-to`, verified with `--keys-from`): whoever holds only a copy of the set
  cannot make a manifest whose HMAC checks, so any change to any byte, file list or manifest field is detected;
* keys inside the set: the same checks catch corruption, truncation and edits by anyone who does not re-sign, but
  someone who can rewrite the set can also re-sign it with the keys it contains. Nothing inside a set can prove
  its own authenticity; keep the keys apart (or the set read-only) when that matters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, Field, ValidationError

from inkmcp.errors import InkError

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
KEYS_IN_SET = "keys/keys.json"
_CHUNK = 1 << 20


class FileEntry(BaseModel):
    path: str
    size: int
    sha256: str


class TenantDatabase(BaseModel):
    name: str
    file: str
    snapshot_at: datetime = Field(description="start of the transaction pg_dump read this database in")


class SourceMirror(BaseModel):
    project_id: str
    file: str
    commits: list[str] = Field(description="recorded commits of the project's live services found in the mirror")


class Manifest(BaseModel):
    format: int
    set_id: str
    inkmcp_version: str
    schema_revision: str = Field(description="alembic revision of the control-plane database in the set")
    created_at: datetime
    control_snapshot_at: datetime = Field(
        description="the point in time the control plane (accounts, keys, env vars, deployments, audit log) "
        "represents: the start of the one transaction pg_dump read it in"
    )
    point_in_time: str = Field(description="in words: which part of the set is as of when")
    control: Literal["embedded", "external"]
    control_file: str
    tenant_server: Literal["embedded", "external"]
    tenant_port: int | None
    tenant_globals: str
    tenant_databases: list[TenantDatabase]
    redis: list[str] = Field(default_factory=list, description="Redis add-on instances (directories under redis/)")
    sources: list[SourceMirror] = Field(default_factory=list)
    keys: Literal["in-set", "separate"]
    keys_fingerprint: str = Field(description="identifies the key the manifest is signed with (not the key itself)")
    mac_key_from_env: bool = Field(description="INKMCP_MAC_KEY was set: keep it, it is not in the set")
    files: list[FileEntry]


class KeysFile(BaseModel):
    """The keys of one set (in the set as keys/keys.json, or apart as `<set name>.keys.json`)."""

    set_id: str
    encryption_keys: list[str] = Field(min_length=1, description="Fernet keys, primary first")
    legacy_mac_key_b64: str | None = Field(default=None, description="<data_dir>/secrets/mac.key, if it existed")

    def write(self, path: Path) -> None:
        import os

        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.model_dump_json(indent=1))
            f.flush()
            os.fsync(f.fileno())

    @property
    def legacy_mac_key(self) -> bytes | None:
        return base64.b64decode(self.legacy_mac_key_b64) if self.legacy_mac_key_b64 else None


class BackupInvalid(InkError):
    """The set fails verification or cannot be used by this InkMCP; nothing was (or will be) written."""


def _hkdf(primary_key: str, info: bytes) -> bytes:
    raw = base64.urlsafe_b64decode(primary_key.encode())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(raw)


def signing_key(keys: list[str]) -> bytes:
    return _hkdf(keys[0], b"inkmcp backup manifest v1")


def fingerprint(keys: list[str]) -> str:
    return _hkdf(keys[0], b"inkmcp backup key fingerprint v1").hex()[:16]


def sign(manifest_bytes: bytes, keys: list[str]) -> str:
    return hmac.new(signing_key(keys), manifest_bytes, hashlib.sha256).hexdigest()


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            if progress:
                progress(len(chunk))
    return size, h.hexdigest()


def list_files(root: Path) -> list[str]:
    """Every regular file under `root` (relative, sorted) except the manifest and its signature; anything that is
    not a regular file or directory (a symlink, a fifo) is refused: a set holds nothing else."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            raise BackupInvalid(f"{p.relative_to(root)} in the set is not a regular file", argument="PATH",
                                fix="a backup set holds only regular files; use an untouched copy of the set")
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel not in (MANIFEST, SIGNATURE):
                out.append(rel)
    return out


def write_manifest(root: Path, manifest: Manifest, keys: list[str]) -> None:
    data = manifest.model_dump_json(indent=1).encode()
    (root / MANIFEST).write_bytes(data)
    (root / SIGNATURE).write_text(sign(data, keys) + "\n")


def _invalid(reason: str, fix: str = "use another backup set (or an intact copy of this one)") -> BackupInvalid:
    return BackupInvalid(f"backup set refused: {reason}", argument="PATH", fix=fix)


def read_manifest(root: Path) -> tuple[Manifest, bytes]:
    """The manifest, parsed; refused when missing, truncated or of an unknown format."""
    if not root.is_dir():
        raise BackupInvalid(f"{root} is not a backup set directory", argument="PATH",
                            fix="pass the directory `inkmcp backup create` printed on its last line")
    path = root / MANIFEST
    if not path.is_file():
        raise _invalid(f"{MANIFEST} is missing from {root}")
    data = path.read_bytes()
    try:
        raw = json.loads(data)
    except ValueError:
        raise _invalid(f"{MANIFEST} is not valid JSON (truncated or edited)") from None
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt != FORMAT:
        raise _invalid(f"unknown backup format {fmt!r}; this InkMCP reads format {FORMAT}",
                       fix="restore it with the InkMCP version that made it (see inkmcp_version in its manifest)")
    try:
        return Manifest.model_validate(raw), data
    except ValidationError as e:
        raise _invalid(f"{MANIFEST} does not have the expected fields ({e.errors()[0]['loc']}: "
                       f"{e.errors()[0]['msg']})") from None


def known_revisions() -> set[str]:
    """The alembic revisions this InkMCP ships, read from the migration files' `revision = "..."` lines (loading
    them through alembic imports every migration: seconds, for a string each)."""
    import re

    import inkmcp.store

    versions = Path(inkmcp.store.__file__).parent / "migrations" / "versions"  # = store.db.MIGRATIONS_DIR
    pattern = re.compile(r"^revision(?:\s*:\s*[\w\[\], |]+)?\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
    found = set()
    for path in versions.glob("*.py"):
        found.update(pattern.findall(path.read_text()))
    return found


def check_compatible(manifest: Manifest) -> None:
    """A set whose control-plane schema this InkMCP does not know (made by a newer one) is refused: migrations
    only go forward, and code older than its data would misread it."""
    if manifest.schema_revision not in known_revisions():
        import inkmcp

        raise _invalid(
            f"its control-plane schema revision {manifest.schema_revision!r} (InkMCP {manifest.inkmcp_version}) is "
            f"unknown to this InkMCP {inkmcp.__version__}: the set was made by a newer version",
            fix=f"restore it with InkMCP {manifest.inkmcp_version} or newer",
        )


class Verified(BaseModel):
    manifest: Manifest
    keys: KeysFile | None
    authenticated: bool = Field(description="manifest signed by keys kept outside the set")
    note: str


def load_keys(path: Path, set_name: str, set_id: str) -> KeysFile:
    """Keys given with --keys-from: the `.keys.json` file itself, the directory --keys-to wrote it into, or an
    installation's own key file (`<data_dir>/secrets/encryption.keys`: authenticates a set whose keys are inside it
    against the installation that made it, as long as its primary key has not been rotated since)."""
    file = path / f"{set_name}.keys.json" if path.is_dir() else path
    if not file.is_file():
        raise BackupInvalid(f"no keys for set {set_name} at {path} (looked for {file.name})", argument="--keys-from",
                            fix="pass the directory given to --keys-to when the set was made, or the .keys.json file")
    raw = file.read_bytes()
    if not raw.lstrip().startswith(b"{"):
        from inkmcp.store.crypto import _read_keys

        keys = _read_keys(file)
        if keys:
            return KeysFile(set_id=set_id, encryption_keys=keys)
    try:
        return KeysFile.model_validate_json(raw)
    except ValidationError:
        raise BackupInvalid(f"{file} is not a keys file of a backup set (truncated or edited)",
                            argument="--keys-from", fix="pass the intact .keys.json file --keys-to wrote") from None


def verify(root: Path, *, keys_from: Path | None = None, env_keys: list[str] | None = None,
           progress: Callable[[int], None] | None = None, total: Callable[[int], None] | None = None) -> Verified:
    """Everything short of restoring: see the module docstring for what a pass proves."""
    root = root.absolute()
    manifest, data = read_manifest(root)
    keys: KeysFile | None = None
    if keys_from is not None:
        keys = load_keys(keys_from, root.name, manifest.set_id)
        authenticated = True
    elif manifest.keys == "in-set":
        path = root / KEYS_IN_SET
        try:
            keys = KeysFile.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            raise _invalid(f"{KEYS_IN_SET} is missing or damaged") from None
        authenticated = False
    elif env_keys:
        keys = KeysFile(set_id=manifest.set_id, encryption_keys=env_keys)
        authenticated = True
    else:
        raise BackupInvalid(
            f"the keys of set {root.name} were written apart from it (create --keys-to), and none were given: the "
            "manifest cannot be authenticated, and without the keys a restore could not read env vars, database "
            "passwords or repository credentials",
            argument="--keys-from", fix=f"pass --keys-from DIR (the directory holding {root.name}.keys.json)")
    if fingerprint(keys.encryption_keys) != manifest.keys_fingerprint or keys.set_id != manifest.set_id:
        raise _invalid("the keys do not belong to this set, or the manifest was edited (key fingerprint or set id "
                       "differs)", fix="pass the keys written with this set (--keys-from), or use an intact set")
    sig_path = root / SIGNATURE
    if not sig_path.is_file():
        raise _invalid(f"{SIGNATURE} is missing")
    if not hmac.compare_digest(sig_path.read_text().strip(), sign(data, keys.encryption_keys)):
        raise _invalid("the manifest's signature does not match: manifest.json or manifest.sig was changed")
    check_compatible(manifest)

    listed = {f.path: f for f in manifest.files}
    present = list_files(root)
    extra = sorted(set(present) - set(listed))
    if extra:
        raise _invalid(f"files not in the manifest were added: {', '.join(extra[:5])}")
    missing = sorted(set(listed) - set(present))
    if missing:
        raise _invalid(f"files listed in the manifest are missing: {', '.join(missing[:5])}")
    if total:
        total(sum(f.size for f in manifest.files))
    for entry in manifest.files:
        size, digest = sha256_file(root / entry.path, progress)
        if size != entry.size:
            raise _invalid(f"{entry.path} is {size} bytes, the manifest says {entry.size} (truncated or changed)")
        if digest != entry.sha256:
            raise _invalid(f"{entry.path} does not match its SHA-256 in the manifest (changed)")
    note = ("authenticated: signed by keys kept apart from the set" if authenticated else
            "integrity checked; authenticity not proven: the keys are inside the set, so whoever can rewrite the set "
            "can re-sign it (keep keys apart with --keys-to)")
    return Verified(manifest=manifest, keys=keys, authenticated=authenticated, note=note)
