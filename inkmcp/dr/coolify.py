"""`inkmcp dr backup-coolify` and `inkmcp dr restore-coolify`, run as root on the Coolify master.

Restore follows Coolify's own procedure (docs knowledge-base/how-to/backup-restore-coolify.md, shared/coolify
NOTES §f) on a fresh install of the *same* version: `pg_restore --clean --no-acl --no-owner -U coolify -d coolify`
inside `coolify-db`, the old APP_KEY added to `APP_PREVIOUS_KEYS` in source/.env, then install.sh re-run. What
we add: the version is checked before anything is written, the dump is restored in one transaction, every
encrypted value in the restored database is decrypted with the resulting key set *before* .env changes (the
check Coolify would otherwise fail with HTTP 500), and the old SSH keys come back with their public halves in
root's authorized_keys (Coolify reaches its own host over SSH with the restored key).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from inkmcp.dr.bundle import Bundle, bundle_name, bundle_time, collect, open_bundle, seal
from inkmcp.dr.envfile import parse_env, set_env_value, write_atomic
from inkmcp.dr.errors import DrError
from inkmcp.dr.laravel import LaravelDecryptError, decrypt_string, key_ring
from inkmcp.dr.settings import DrSettings
from inkmcp.dr.storagebox import BoxFiles

Progress = Callable[[str], None]
COOLIFY_UID = 9999
"""install.sh: `chown -R 9999:root /data/coolify` (the coolify container's www-data)."""
DEFAULT_DB_EXEC = ("docker", "exec", "-i", "coolify-db")
ENCRYPTED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("private_keys", "private_key"),            # app/Models/PrivateKey.php:50
    ("environment_variables", "value"),         # app/Models/EnvironmentVariable.php:71
    ("s3_storages", "key"),                     # app/Models/S3Storage.php:43
    ("s3_storages", "secret"),                  # app/Models/S3Storage.php:44
)


def detect_version() -> str:
    """The running Coolify image's tag (`docker inspect coolify`), e.g. 4.3.11."""
    r = subprocess.run(["docker", "inspect", "--format", "{{.Config.Image}}", "coolify"], capture_output=True,
                       text=True, timeout=30, check=False)
    image = r.stdout.strip()
    if r.returncode != 0 or ":" not in image:
        raise DrError("cannot read Coolify's version from `docker inspect coolify`: pass --coolify-version "
                      "(Settings shows it, e.g. 4.3.11)")
    return image.rsplit(":", 1)[1].lstrip("v")


def backup_coolify(settings: DrSettings, *, coolify_version: str, operator_key: str, with_db_backup: bool = True,
                   now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    token = seal(collect(settings.coolify_dir, with_db_backup=with_db_backup), coolify_version=coolify_version,
                 operator_key=operator_key, now=now)
    name = bundle_name(now)
    with tempfile.TemporaryDirectory(prefix="inkmcp-dr-") as tmp:
        path = Path(tmp, name)
        path.write_bytes(token)
        BoxFiles(settings).push_file(path, settings.coolify_secrets_dir, name)
    return f"{settings.coolify_secrets_dir}/{name}"


def fetch_bundle(settings: DrSettings, at: datetime, work_dir: Path) -> tuple[str, bytes]:
    files = BoxFiles(settings)
    found = [(t, f.name) for f in files.list(settings.coolify_secrets_dir)
             if not f.is_dir and (t := bundle_time(f.name)) is not None and t <= at]
    if not found:
        raise DrError(f"no Coolify secrets bundle at or before {at:%Y-%m-%dT%H:%M:%SZ} in "
                      f"{settings.coolify_secrets_dir}/ on the box: pass --bundle FILE (a copy from your secret "
                      "store) or a later --at")
    _, name = max(found)
    local = files.pull(f"{settings.coolify_secrets_dir}/{name}", work_dir / name)
    return name, local.read_bytes()


@dataclass
class CoolifyDb:
    """psql/pg_restore against Coolify's database, through `docker exec -i coolify-db` by default."""

    exec_prefix: Sequence[str] = DEFAULT_DB_EXEC
    user: str = "coolify"
    database: str = "coolify"
    pg_bin: Path | None = None

    def _argv(self, tool: str, *args: str) -> list[str]:
        exe = str(self.pg_bin / tool) if self.pg_bin else tool
        return [*self.exec_prefix, exe, "-U", self.user, *args]

    def run(self, tool: str, *args: str, stdin: Path | None = None, timeout: float = 3600) -> str:
        with open(stdin, "rb") if stdin else open(os.devnull, "rb") as f:
            r = subprocess.run(self._argv(tool, *args), stdin=f, capture_output=True, timeout=timeout, check=False)
        if r.returncode != 0:
            raise DrError(f"{tool} in Coolify's database failed (exit {r.returncode}): "
                          f"{r.stderr.decode(errors='replace').strip()[-800:]}")
        return r.stdout.decode()

    def encrypted_values(self) -> list[tuple[str, str, str]]:
        """(table.column, id, payload) for every non-empty encrypted column that exists."""
        parts = [f"SELECT '{t}.{c}', id::text, {c} FROM {t} WHERE {c} IS NOT NULL AND {c} <> ''"
                 for t, c in ENCRYPTED_COLUMNS]
        out: list[tuple[str, str, str]] = []
        for sql in parts:
            table = sql.split(" FROM ")[1].split()[0]
            exists = self.run("psql", "-X", "-tA", "-d", self.database, "-c",
                              f"SELECT to_regclass('public.{table}') IS NOT NULL").strip()
            if exists != "t":
                continue
            for line in self.run("psql", "-X", "-tA", "-F", "\t", "-d", self.database, "-c", sql).splitlines():
                if line.strip():
                    col, row_id, payload = line.split("\t", 2)
                    out.append((col, row_id, payload))
        return out


@dataclass
class CoolifyRestore:
    bundle: str
    coolify_version: str
    previous_keys: int
    values_checked: int
    keys_restored: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def restore_coolify(settings: DrSettings, *, dump: Path | None, bundle_bytes: bytes, bundle_label: str,
                    operator_key: str, installed_version: str, db: CoolifyDb, work_dir: Path,
                    authorized_keys: Path = Path("/root/.ssh/authorized_keys"),
                    progress: Progress = lambda _m: None) -> CoolifyRestore:
    """`dump` None: the Coolify database backup inside the bundle."""
    t0 = time.monotonic()
    seconds: dict[str, float] = {}
    # 1. Everything that can refuse, before anything is written.
    bundle = open_bundle(bundle_bytes, operator_key)
    if bundle.coolify_version != installed_version:
        raise DrError(f"the bundle was made on Coolify {bundle.coolify_version}, this install is "
                      f"{installed_version}: install the same version first "
                      f"(`curl -fsSL https://cdn.coollabs.io/coolify/install.sh | bash -s {bundle.coolify_version}`)")
    if dump is None:
        inside = bundle.db_dump()
        if inside is None:
            raise DrError(f"the bundle {bundle_label} holds no Coolify database backup: pass --dump FILE (Coolify's "
                          "pg_dump from its S3 backup storage)")
        work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        dump = work_dir / inside[0]
        dump.write_bytes(inside[1])
        progress(f"database backup from the bundle: {inside[0]}")
    if not dump.is_file():
        raise DrError(f"--dump {dump}: no such file (Coolify's backups are pg_dump custom-format files, "
                      "/data/coolify/backups/coolify/coolify-db-<ip>/ or its S3 copy)")
    env_path = settings.coolify_dir / "source" / ".env"
    if not env_path.is_file():
        raise DrError(f"{env_path} not found: run Coolify's install.sh on this host first")
    current_env_text = env_path.read_text()
    current = parse_env(current_env_text)
    old = parse_env(bundle.env_text)
    if not current.get("APP_KEY") or not old.get("APP_KEY"):
        raise DrError("APP_KEY missing from " + ("this install's .env" if not current.get("APP_KEY") else
                                                 "the bundle's .env"))
    previous = _previous_keys(current, old)
    ring = key_ring(current["APP_KEY"], ",".join(previous))
    with open(dump, "rb") as f:
        if f.read(5) != b"PGDMP":
            raise DrError(f"--dump {dump} is not a pg_dump custom-format archive (Coolify's backup format)")
    db.run("pg_restore", "--list", stdin=dump, timeout=300)
    seconds["checks"] = time.monotonic() - t0
    # 2. The database, in one transaction (a failure leaves the fresh install's database as it was).
    t1 = time.monotonic()
    progress(f"restoring {dump.name} into Coolify's database")
    db.run("pg_restore", "--clean", "--if-exists", "--no-acl", "--no-owner", "--single-transaction",
           "--exit-on-error", "-d", db.database, stdin=dump)
    seconds["pg_restore"] = time.monotonic() - t1
    # 3. Every encrypted value must open with APP_KEY or APP_PREVIOUS_KEYS, or Coolify would answer 500.
    t2 = time.monotonic()
    values = db.encrypted_values()
    bad = []
    for col, row_id, payload in values:
        try:
            decrypt_string(payload, ring)
        except LaravelDecryptError as e:
            bad.append(f"{col} id {row_id}: {e}")
    if bad:
        raise DrError(f"{len(bad)} of {len(values)} encrypted value(s) do not decrypt with this APP_KEY nor the "
                      f"bundle's ({', '.join(bad[:5])}): the bundle {bundle_label} is not from the instance that "
                      "made this dump; pass the matching --bundle/--at (.env was not changed)")
    seconds["verify"] = time.monotonic() - t2
    # 4. .env and SSH keys.
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    if previous:
        (env_path.with_name(f".env-before-dr-{stamp}")).write_text(current_env_text)
        write_atomic(env_path, set_env_value(current_env_text, "APP_PREVIOUS_KEYS", ",".join(previous)))
    restored = _restore_ssh_keys(bundle, settings.coolify_dir / "ssh" / "keys", authorized_keys, stamp)
    seconds["total"] = time.monotonic() - t0
    return CoolifyRestore(bundle_label, bundle.coolify_version, len(previous), len(values), restored, seconds)


def _previous_keys(current: dict[str, str], old: dict[str, str]) -> list[str]:
    """Old APP_KEY, then the old instance's own previous keys, then any this install already lists."""
    keys: list[str] = []
    for k in [old["APP_KEY"], *old.get("APP_PREVIOUS_KEYS", "").split(","),
              *current.get("APP_PREVIOUS_KEYS", "").split(",")]:
        k = k.strip()
        if k and k != current["APP_KEY"] and k not in keys:
            keys.append(k)
    return keys


def _restore_ssh_keys(bundle: Bundle, keys_dir: Path, authorized_keys: Path, stamp: str) -> list[str]:
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    restored = []
    for name, data in bundle.ssh_keys().items():
        target = keys_dir / name
        if target.exists() and target.read_bytes() == data:
            continue
        if target.exists():
            target.rename(target.with_name(f"{name}.fresh-{stamp}"))
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _chown_coolify(target)
        restored.append(name)
        _authorize(target, authorized_keys)
    return restored


def _chown_coolify(path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(path, COOLIFY_UID, 0)


def _authorize(private_key: Path, authorized_keys: Path) -> None:
    """Append the key's public half to root's authorized_keys (Coolify SSHes into its own host with it)."""
    r = subprocess.run(["ssh-keygen", "-y", "-f", str(private_key)], capture_output=True, text=True, timeout=30,
                       check=False)
    if r.returncode != 0:
        return  # not a private key (Coolify keeps only private keys here); nothing to authorise
    line = r.stdout.strip()
    existing = authorized_keys.read_text() if authorized_keys.exists() else ""
    if any(existing_line.split()[:2] == line.split()[:2] for existing_line in existing.splitlines()
           if len(existing_line.split()) >= 2):
        return
    authorized_keys.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(authorized_keys, "a") as f:
        f.write(("" if not existing or existing.endswith("\n") else "\n") + f"{line} coolify-restored\n")
    os.chmod(authorized_keys, 0o600)


def parse_exec(text: str | None) -> tuple[str, ...]:
    return DEFAULT_DB_EXEC if text is None else tuple(shlex.split(text))
