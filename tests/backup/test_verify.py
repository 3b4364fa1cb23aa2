"""Tampered, truncated and mismatched-version backup sets are refused with the reason, and a refused restore writes
nothing. One real installation (embedded Postgres servers, no app) is backed up once per module by the real CLI;
each test attacks its own copy of the set."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from cryptography.fernet import Fernet

from inkmcp.backup.cli import _since
from inkmcp.backup.create import create_backup
from inkmcp.backup.manifest import BackupInvalid, fingerprint, sha256_file, sign, verify
from inkmcp.backup.restore import restore_backup
from inkmcp.errors import InkError
from inkmcp.settings import Settings
from inkmcp.store.crypto import KEY_FILE_RELATIVE, ensure_key_file
from inkmcp.store.embedded import EmbeddedPostgres
from tests.support import INKMCP, initdb_template, traversable_tmpdir


@dataclass
class Installation:
    base: Path
    data: Path
    env: dict[str, str]
    set_in: Path  # keys inside the set
    set_apart: Path  # keys written to keys_dir
    keys_dir: Path

    def cli(self, *args: str, data: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "INKMCP_DATA_DIR": str(data or self.data)}
        return subprocess.run([INKMCP, *args], env=env, capture_output=True, text=True, timeout=120, check=False,
                              cwd="/tmp")


@pytest.fixture(scope="module")
def inst() -> Iterator[Installation]:
    base = traversable_tmpdir("inkmcp-bk-")
    data = base / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INKMCP_")}
    i = Installation(base=base, data=data, env=env, set_in=base, set_apart=base, keys_dir=base / "keys")
    try:
        # --- suitefast: the two clusters are copies of the process's initdb template (the product's own initdb step,
        # as ServerProc's), not two initdb runs by the CLI: what this module tests is the backup set, not a first start
        data.mkdir(mode=0o711)
        (data / "pg").mkdir()
        for server in ("control", "tenants"):
            subprocess.run(["cp", "-a", "--reflink=auto", str(initdb_template()), str(data / "pg" / server)],
                           check=True)
        # --- end
        made = i.cli("keys", "create", "--account", "alice")
        assert made.returncode == 0, made.stderr
        a = i.cli("backup", "create", "--to", str(base / "sets"))  # the CLI, printing the set's path last
        assert a.returncode == 0, a.stderr
        i.set_in = Path(a.stdout.splitlines()[-1])
        # the same code in-process (the CLI's start-up costs seconds on a busy box): keys written apart
        i.set_apart = create_backup(Settings(data_dir=data), base / "sets", keys_to=i.keys_dir).path
        yield i
    finally:
        for server in ("control", "tenants"):  # the servers `keys create` started (they outlive the CLI)
            pgdata = data / "pg" / server
            if (pgdata / "PG_VERSION").exists():
                EmbeddedPostgres(pgdata).stop()
        shutil.rmtree(base, ignore_errors=True)


def copy_of(src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / src.name  # verification names the keys file after the set, so the name is kept
    shutil.copytree(src, dest)
    return dest


def refused_restore(inst: Installation, set_path: Path, tmp_path: Path, **kw: object) -> str:
    """Restore must refuse and leave nothing: no data dir, no temporary directory beside it."""
    target = tmp_path / "restored" / "data"
    with pytest.raises(InkError) as info:
        restore_backup(Settings(data_dir=target), set_path, **kw)  # type: ignore[arg-type]
    assert not target.exists()
    assert not target.parent.exists() or list(target.parent.iterdir()) == []
    return str(info.value)


def flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def truncate(p: Path) -> None:
    with p.open("r+b") as f:
        f.truncate(p.stat().st_size // 2)


def edit_manifest(root: Path, change: Callable[[dict[str, object]], None]) -> None:
    m = json.loads((root / "manifest.json").read_text())
    change(m)
    (root / "manifest.json").write_text(json.dumps(m, indent=1))


def resign_with_set_keys(root: Path) -> None:
    """What someone holding the set (and so its in-set keys) can do: re-sign an edited manifest."""
    keys = json.loads((root / "keys" / "keys.json").read_text())["encryption_keys"]
    (root / "manifest.sig").write_text(sign((root / "manifest.json").read_bytes(), keys) + "\n")


def set_field(name: str, value: object) -> Callable[[dict[str, object]], None]:
    return lambda m: m.__setitem__(name, value)


TAMPERING: dict[str, tuple[Callable[[Path], None], str]] = {
    "changed byte": (lambda r: flip_byte(r / "control.dump"), "control.dump does not match its SHA-256"),
    "truncated dump": (lambda r: truncate(r / "tenants" / "postgres.dump"), "tenants/postgres.dump is"),
    "added file": (lambda r: (r / "tenants" / "evil.dump").write_bytes(b"x"), "not in the manifest were added"),
    "removed file": (lambda r: (r / "tenants" / "globals.sql").unlink(), "listed in the manifest are missing"),
    "edited manifest": (lambda r: edit_manifest(r, set_field("created_at", "2020-01-01T00:00:00Z")), "signature"),
    "signature removed": (lambda r: (r / "manifest.sig").unlink(), "manifest.sig is missing"),
    "truncated manifest": (lambda r: truncate(r / "manifest.json"), "not valid JSON"),
    "unknown format": (lambda r: edit_manifest(r, set_field("format", 2)), "unknown backup format 2"),
    "newer schema": (lambda r: (edit_manifest(r, set_field("schema_revision", "0099")), resign_with_set_keys(r)),
                     "made by a newer version"),
}


def test_intact_set_verifies_and_says_what_it_proves(inst: Installation) -> None:
    done = inst.cli("backup", "verify", str(inst.set_in))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: ") and "authenticity not proven" in done.stdout
    manifest = json.loads((inst.set_in / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert {"control.dump", "keys/keys.json", "tenants/globals.sql", "tenants/postgres.dump",
            "tenants/tenants.port"} <= listed
    assert manifest["schema_revision"] and manifest["control_snapshot_at"] and manifest["inkmcp_version"]
    for f in manifest["files"]:
        assert sha256_file(inst.set_in / f["path"]) == (f["size"], f["sha256"])


@pytest.mark.parametrize("attack", list(TAMPERING))
def test_tampered_set_is_refused_and_restore_writes_nothing(inst: Installation, tmp_path: Path, attack: str) -> None:
    damaged = copy_of(inst.set_in, tmp_path)
    do, reason = TAMPERING[attack]
    do(damaged)
    with pytest.raises(BackupInvalid) as info:
        verify(damaged)
    assert reason in str(info.value)
    assert reason in refused_restore(inst, damaged, tmp_path)


def test_in_set_keys_authenticated_against_the_installation(inst: Installation, tmp_path: Path) -> None:
    """Someone who can rewrite a set whose keys are inside it can re-sign it with them (verify says authenticity is
    not proven); checked against the installation's own key file, the same forgery is refused."""
    forged = copy_of(inst.set_in, tmp_path)
    edit_manifest(forged, set_field("created_at", "2020-01-01T00:00:00Z"))
    theirs = [Fernet.generate_key().decode()]
    keys = json.loads((forged / "keys" / "keys.json").read_text())
    keys["encryption_keys"] = theirs  # the attacker's own keys in the set, and a manifest signed with them
    (forged / "keys" / "keys.json").write_text(json.dumps(keys))

    def resign(m: dict[str, object]) -> None:
        files = m["files"]
        assert isinstance(files, list)
        for f in files:
            if f["path"] == "keys/keys.json":
                f["size"], f["sha256"] = sha256_file(forged / "keys" / "keys.json")
        m["keys_fingerprint"] = fingerprint(theirs)

    edit_manifest(forged, resign)
    (forged / "manifest.sig").write_text(sign((forged / "manifest.json").read_bytes(), theirs) + "\n")
    assert not verify(forged).authenticated  # passes on its own keys: nothing inside a set proves it
    installation_keys = inst.data / KEY_FILE_RELATIVE
    assert verify(inst.set_in, keys_from=installation_keys).authenticated
    with pytest.raises(BackupInvalid, match="keys do not belong to this set, or the manifest was edited"):
        verify(forged, keys_from=installation_keys)


def test_cli_verify_exits_1_with_the_reason(inst: Installation, tmp_path: Path) -> None:
    damaged = copy_of(inst.set_in, tmp_path)
    truncate(damaged / "control.dump")
    done = inst.cli("backup", "verify", str(damaged))
    assert done.returncode == 1
    assert "control.dump is" in done.stderr and "truncated or changed" in done.stderr
    target = tmp_path / "new-data"
    done = inst.cli("backup", "restore", "--from", str(damaged), data=target)
    assert done.returncode == 1 and "control.dump" in done.stderr and not target.exists()


def test_restore_with_keys_kept_apart(inst: Installation, tmp_path: Path) -> None:
    """The happy path of --keys-to/--keys-from: the restored data dir gets the installation's keys, its servers and
    the tenant server's port; no temporary directory is left beside it."""
    target = tmp_path / "data"
    done = restore_backup(Settings(data_dir=target), inst.set_apart, keys_from=inst.keys_dir)
    assert done.keys_written and done.verified.authenticated
    assert ensure_key_file(target / KEY_FILE_RELATIVE) == ensure_key_file(inst.data / KEY_FILE_RELATIVE)
    assert (target / "secrets").stat().st_mode & 0o077 == 0
    assert (target / "pg" / "tenants.port").read_text() == (inst.data / "pg" / "tenants.port").read_text()
    for server in ("control", "tenants"):
        pg = EmbeddedPostgres(target / "pg" / server)
        assert (pg.pgdata / "PG_VERSION").is_file() and pg.pid is None  # filled, and stopped again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_keys_kept_apart(inst: Installation, tmp_path: Path) -> None:
    """With --keys-to the set holds no key: without them verify and restore say what is missing; with them the
    manifest is authenticated, so an attacker holding only the set cannot re-sign a change."""
    assert not (inst.set_apart / "keys").exists()
    assert (inst.keys_dir / f"{inst.set_apart.name}.keys.json").is_file()
    with pytest.raises(BackupInvalid, match="--keys-from") as info:
        verify(inst.set_apart)
    assert "env vars, database passwords" in str(info.value)
    assert "--keys-from" in refused_restore(inst, inst.set_apart, tmp_path)
    assert verify(inst.set_apart, keys_from=inst.keys_dir).authenticated

    # the attacker swaps in a dump of their own and re-signs with a key of their own: refused with the real keys
    forged = copy_of(inst.set_apart, tmp_path)
    (forged / "control.dump").write_bytes(b"attacker's control plane")
    mine = [Fernet.generate_key().decode()]

    def rewrite(m: dict[str, object]) -> None:
        files = m["files"]
        assert isinstance(files, list)
        for f in files:
            if f["path"] == "control.dump":
                f["size"], f["sha256"] = sha256_file(forged / "control.dump")
        m["keys_fingerprint"] = fingerprint(mine)

    edit_manifest(forged, rewrite)
    (forged / "manifest.sig").write_text(sign((forged / "manifest.json").read_bytes(), mine) + "\n")
    with pytest.raises(BackupInvalid, match="keys do not belong to this set, or the manifest was edited"):
        verify(forged, keys_from=inst.keys_dir)
    # ... and the same forgery re-signed with the real fingerprint but not the real key fails the signature
    edit_manifest(forged, set_field("keys_fingerprint", json.loads(
        (inst.set_apart / "manifest.json").read_text())["keys_fingerprint"]))
    (forged / "manifest.sig").write_text(sign((forged / "manifest.json").read_bytes(), mine) + "\n")
    with pytest.raises(BackupInvalid, match="signature does not match"):
        verify(forged, keys_from=inst.keys_dir)
    # keys of another set are not accepted for this one
    other = inst.keys_dir / f"{inst.set_apart.name}.keys.json"
    wrong = tmp_path / "wrong.keys.json"
    wrong.write_text(other.read_text().replace(json.loads(other.read_text())["set_id"], "0" * 32))
    with pytest.raises(BackupInvalid, match="keys do not belong"):
        verify(inst.set_apart, keys_from=wrong)


def test_create_refuses_targets_that_would_be_lost_or_stolen_together(inst: Installation, tmp_path: Path) -> None:
    with pytest.raises(InkError, match="inside the data dir"):
        create_backup(Settings(data_dir=inst.data), inst.data / "sets")
    assert not (inst.data / "sets").exists()
    with pytest.raises(InkError, match="--keys-to is the directory the set goes to"):
        create_backup(Settings(data_dir=inst.data), tmp_path / "sets", keys_to=tmp_path / "sets")
    assert list(tmp_path.iterdir()) == []


def test_restore_refuses_a_non_empty_data_dir_and_a_running_server(inst: Installation, tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    (target / "something").write_text("kept")
    with pytest.raises(InkError, match="is not empty"):
        restore_backup(Settings(data_dir=target), inst.set_in)
    assert sorted(p.name for p in target.iterdir()) == ["something"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary directory left beside it

    # a running `inkmcp serve` holds serve.lock (an flock): refused with its pid, even before looking further
    busy = tmp_path / "busy"
    busy.mkdir()
    fd = os.open(busy / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242")
        with pytest.raises(InkError, match=r"\(pid 4242\) is running"):
            restore_backup(Settings(data_dir=busy), inst.set_in)
    finally:
        os.close(fd)
    assert sorted(p.name for p in busy.iterdir()) == ["serve.lock"]

    # an external tenant server: refused, and the fix says how to restore it safely (each tenant database as its
    # owner), never "pg_restore" alone, which done as the superuser runs the tenants' code as the superuser
    external = tmp_path / "external"
    with pytest.raises(InkError) as refused:
        restore_backup(Settings(data_dir=external, tenant_database_url="postgresql://postgres@db.internal/postgres"),
                       inst.set_in)
    assert "pgtools.restore_database" in refused.value.render() and "as its owner" in refused.value.render()
    assert not external.exists()


def test_audit_cli_refuses_an_unknown_account_and_a_bad_since(inst: Installation) -> None:
    done = inst.cli("audit", "--account", "nobody")
    assert done.returncode == 1 and "no account 'nobody'" in done.stderr
    with pytest.raises(typer.Exit) as info:
        _since("yesterday")
    assert info.value.exit_code == 2
    assert _since("2h") is not None and _since("2026-12-01T05:00") == datetime(2026, 12, 1, 5, 0, tzinfo=UTC)
