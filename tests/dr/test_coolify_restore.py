"""Coolify's database restore mechanics on a synthetic instance: a PostgreSQL database shaped like Coolify's tables
that hold `encrypted`-cast values (private_keys, environment_variables, s3_storages), encrypted with the old
APP_KEY by an independent Laravel implementation (tests/dr/laravel_ref.py, openssl CLI).

The old master's secrets go off-host with `inkmcp dr backup-coolify` (Fernet bundle on the Storage Box stand-in);
the master is lost; a fresh install (same version, new APP_KEY, its own database rows) gets
`inkmcp dr restore-coolify`: the restored database equals the old one, `.env` keeps the new APP_KEY and gains
APP_PREVIOUS_KEYS=<old key>, every restored secret decrypts with that key ring and fails without the saved key,
and the old SSH keys come back (their public halves authorised for Coolify's SSH into its own host).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inkmcp.dr.bundle import new_operator_key
from inkmcp.dr.laravel import decrypt_string as product_decrypt
from inkmcp.dr.laravel import key_ring
from tests.dr import laravel_ref
from tests.dr.conftest import Cluster, World, pg_bin, run

pytestmark = pytest.mark.slow

SCHEMA = """
CREATE TABLE private_keys (id bigserial PRIMARY KEY, uuid varchar(255) NOT NULL UNIQUE, name varchar(255) NOT NULL,
  private_key text NOT NULL, team_id bigint NOT NULL, is_git_related boolean NOT NULL DEFAULT false);
CREATE TABLE servers (id bigserial PRIMARY KEY, uuid varchar(255) NOT NULL UNIQUE, name varchar(255) NOT NULL,
  ip varchar(255) NOT NULL, "user" varchar(255) NOT NULL DEFAULT 'root', port integer NOT NULL DEFAULT 22,
  private_key_id bigint REFERENCES private_keys(id));
CREATE TABLE environment_variables (id bigserial PRIMARY KEY, key varchar(255) NOT NULL, value text,
  resourceable_type varchar(255), resourceable_id bigint);
CREATE TABLE s3_storages (id bigserial PRIMARY KEY, uuid varchar(255) NOT NULL, name varchar(255) NOT NULL,
  key text NOT NULL, secret text NOT NULL, endpoint varchar(255), bucket varchar(255));
CREATE TABLE instance_settings (id bigserial PRIMARY KEY, fqdn varchar(255), is_api_enabled boolean DEFAULT true);
"""
VERSION = "4.3.11"
LOCALHOST_KEY = "id.root@host.docker.internal"


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class Instance:
    app_key: str
    raw_key: bytes
    dir: Path
    private_keys: dict[str, str]
    """uuid -> OpenSSH private key text."""
    secrets: dict[str, str]
    """'table.column id' -> plaintext of every encrypted value."""


def _make_instance(root: Path, name: str, cluster: Cluster, db: str, n_servers: int) -> Instance:
    """Coolify's data dir and database as a running instance leaves them (install.sh's .env, ssh/keys, rows)."""
    raw = os.urandom(32)
    key = laravel_ref.app_key(raw)
    d = root / name
    (d / "source").mkdir(parents=True)
    (d / "ssh" / "keys").mkdir(parents=True)
    (d / "source" / ".env").write_text(
        f"APP_ID={os.urandom(16).hex()}\nAPP_NAME=Coolify\nAPP_KEY={key}\nDB_USERNAME=coolify\n"
        f"DB_PASSWORD={os.urandom(8).hex()}\nREDIS_PASSWORD={os.urandom(8).hex()}\nAUTOUPDATE=false\n")
    (d / "source" / ".env").chmod(0o600)
    cluster.psql(SCHEMA, db=db, user="coolify")
    keys, secrets, rows = {}, {}, []
    for i in range(1, n_servers + 1):
        uuid = f"{name}key{i}"
        kf = root / f"{name}-k{i}"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"coolify-{name}-{i}", "-f", str(kf))
        keys[uuid] = kf.read_text()
        file_name = LOCALHOST_KEY if i == 1 else f"ssh_key@{uuid}"
        shutil.copy(kf, d / "ssh" / "keys" / file_name)
        rows.append(f"INSERT INTO private_keys (uuid, name, private_key, team_id) VALUES ({_sql_str(uuid)}, "
                    f"'key {i}', {_sql_str(laravel_ref.encrypt_string(keys[uuid], raw))}, 0);")
        rows.append(f"INSERT INTO servers (uuid, name, ip, private_key_id) VALUES ('{name}srv{i}', 'node-{i}', "
                    f"'10.0.2.{10 + i}', {i});")
        secrets[f"private_keys.private_key {i}"] = keys[uuid]
    for i in range(1, 4):
        plain = f"postgres://app:pässwörd-{name}-{i}@db/app"
        sealed = _sql_str(laravel_ref.encrypt_string(plain, raw))
        rows.append(f"INSERT INTO environment_variables (key, value, resourceable_type, resourceable_id) VALUES "
                    f"('DATABASE_URL', {sealed}, 'App\\Models\\Application', {i});")
        secrets[f"environment_variables.value {i}"] = plain
    rows.append(f"INSERT INTO s3_storages (uuid, name, key, secret, endpoint, bucket) VALUES ('s3{name}', 'backups', "
                f"{_sql_str(laravel_ref.encrypt_string('AKIA' + name, raw))}, "
                f"{_sql_str(laravel_ref.encrypt_string('s3cr3t-' + name, raw))}, 'https://fsn1.example', 'b');")
    rows.append(f"INSERT INTO instance_settings (fqdn) VALUES ('https://coolify-{name}.example.com');")
    cluster.psql("\n".join(rows), db=db, user="coolify")
    return Instance(key, raw, d, keys, secrets)


@dataclass
class Scene:
    world: World
    cluster: Cluster
    old: Instance
    new: Instance
    dump: Path
    old_plain: str
    operator_key: str
    authorized_keys: Path
    backup_out: str

    def restore(self, *args: str, operator_key: str | None = None, check: bool = True) -> object:
        env = self.world.env(INKMCP_DR_OPERATOR_KEY=operator_key or self.operator_key, PGHOST=str(self.cluster.sock))
        return self.world.inkmcp("restore-coolify", "--coolify-dir", str(self.new.dir),
                                 "--db-exec", "", "--pg-bin", str(pg_bin()), "--authorized-keys",
                                 str(self.authorized_keys), "--work-dir", str(self.world.root / "coolify-work"),
                                 *args, env=env, check=check)

    def state(self) -> tuple[bytes, str]:
        return (self.new.dir / "source" / ".env").read_bytes(), self.cluster.dump_text("coolify")


@pytest.fixture(scope="module")
def scene(world: World, fresh_cluster: Cluster) -> Iterator[Scene]:
    c = fresh_cluster
    c.psql("CREATE ROLE coolify SUPERUSER LOGIN")  # the coolify-db container's POSTGRES_USER
    c.psql("CREATE DATABASE coolify OWNER coolify")
    root = world.root / "coolify"
    root.mkdir()
    old = _make_instance(root, "old", c, "coolify", n_servers=3)
    old_plain = c.dump_text("coolify")
    dump = old.dir / "backups" / "coolify" / "coolify-db-10.0.1.10" / "pg-dump-coolify-1764547200.dmp"
    dump.parent.mkdir(parents=True)
    # Coolify's own scheduled backup: command app/Jobs/DatabaseBackupJob.php:620, path :292 and :313.
    run(str(pg_bin() / "pg_dump"), "--format=custom", "--no-acl", "--no-owner", "--username", "coolify", "-h",
        str(c.sock), "-f", str(dump), "coolify")
    operator_key = new_operator_key()
    r = world.inkmcp("backup-coolify", "--coolify-dir", str(old.dir), "--coolify-version", VERSION,
                     env=world.env(INKMCP_DR_BOX_KEY=str(world.backup_key), INKMCP_DR_OPERATOR_KEY=operator_key))
    # The master is lost; a fresh install of the same version has its own key, database rows and SSH key.
    c.psql("DROP DATABASE coolify")
    c.psql("CREATE DATABASE coolify OWNER coolify")
    new = _make_instance(root, "new", c, "coolify", n_servers=1)
    ak = root / "authorized_keys"
    new_pub = run("ssh-keygen", "-y", "-f", str(new.dir / "ssh" / "keys" / LOCALHOST_KEY)).stdout
    ak.write_text(new_pub.strip() + " coolify\n")
    yield Scene(world, c, old, new, dump, old_plain, operator_key, ak, r.stdout)


def test_bundle_on_the_box_is_encrypted(scene: Scene) -> None:
    (name,) = os.listdir(scene.world.box_home / "coolify-secrets")
    assert scene.backup_out.strip().splitlines()[-1] == f"coolify-secrets/{name}"
    blob = (scene.world.box_home / "coolify-secrets" / name).read_bytes()
    assert scene.old.app_key.encode() not in blob and scene.old.app_key[7:].encode() not in blob
    assert b"PRIVATE KEY" not in blob and b"APP_KEY" not in blob and b"coolify-old.example.com" not in blob


def test_wrong_operator_key_changes_nothing(scene: Scene) -> None:
    before = scene.state()
    r = scene.restore("--coolify-version", VERSION, operator_key=new_operator_key(), check=False)
    assert r.returncode == 1 and "operator key does not open this bundle" in r.stderr, r.stderr  # type: ignore[attr-defined]
    assert scene.state() == before


def test_other_coolify_version_changes_nothing(scene: Scene) -> None:
    before = scene.state()
    r = scene.restore("--coolify-version", "4.3.12", check=False)
    assert r.returncode == 1, r.stderr  # type: ignore[attr-defined]
    assert "made on Coolify 4.3.11, this install is 4.3.12" in r.stderr and "bash -s 4.3.11" in r.stderr  # type: ignore[attr-defined]
    assert scene.state() == before


def test_a_bundle_from_another_instance_is_caught_before_env_changes(scene: Scene, tmp_path: Path) -> None:
    """The keys do not match the dump: Coolify would answer 500 on every secret. Refused, .env untouched."""
    stranger = tmp_path / "stranger"
    (stranger / "source").mkdir(parents=True)
    (stranger / "source" / ".env").write_text(f"APP_KEY={laravel_ref.app_key(os.urandom(32))}\n")
    env_before = (scene.new.dir / "source" / ".env").read_bytes()
    made = scene.world.inkmcp("backup-coolify", "--coolify-dir", str(stranger), "--coolify-version", VERSION,
                              "--box-user", "u4242", env=scene.world.env(
                                  INKMCP_DR_BOX_KEY=str(scene.world.backup_key),
                                  INKMCP_DR_OPERATOR_KEY=scene.operator_key))
    remote = made.stdout.strip().splitlines()[-1]  # type: ignore[attr-defined]
    local = scene.world.box_home / remote
    r = scene.restore("--coolify-version", VERSION, "--bundle", str(local), "--dump", str(scene.dump), check=False)
    local.unlink()
    assert r.returncode == 1, r.stdout  # type: ignore[attr-defined]
    assert "do not decrypt" in r.stderr and ".env was not changed" in r.stderr  # type: ignore[attr-defined]
    assert (scene.new.dir / "source" / ".env").read_bytes() == env_before


def test_restore_brings_the_database_keys_and_ssh_keys_back(scene: Scene) -> None:
    r = scene.restore("--coolify-version", VERSION)
    out = r.stdout  # type: ignore[attr-defined]
    assert "8 encrypted value(s) decrypt" in out and "1 key(s) in APP_PREVIOUS_KEYS" in out, out
    assert f"database backup from the bundle: {scene.dump.name}" in out
    assert f"bash -s {VERSION}" in out
    # The database is the old instance's, row for row.
    assert scene.cluster.dump_text("coolify") == scene.old_plain
    # .env: the fresh install's APP_KEY stays, the old one is a previous key; nothing else changed.
    env_text = (scene.new.dir / "source" / ".env").read_text()
    before = next(scene.new.dir.glob("source/.env-before-dr-*")).read_text()
    assert env_text == before + f"APP_PREVIOUS_KEYS={scene.old.app_key}\n"
    assert oct((scene.new.dir / "source" / ".env").stat().st_mode & 0o777) == "0o600"
    # Every restored secret decrypts with APP_KEY + APP_PREVIOUS_KEYS (reference implementation) ...
    ring_ref = [scene.new.raw_key, scene.old.raw_key]
    rows = scene.cluster.psql("SELECT id, private_key FROM private_keys ORDER BY id", db="coolify").split()
    for line in rows:
        row_id, payload = line.split("|", 1)
        plain = laravel_ref.decrypt_string(payload, ring_ref)
        assert plain == scene.old.secrets[f"private_keys.private_key {row_id}"]
        assert product_decrypt(payload, key_ring(scene.new.app_key, scene.old.app_key)) == plain
        # ... and fails without the saved key (the fresh APP_KEY alone: "The MAC is invalid.").
        with pytest.raises(ValueError, match="MAC is invalid"):
            laravel_ref.decrypt_string(payload, [scene.new.raw_key])
    envs = scene.cluster.psql("SELECT id, value FROM environment_variables ORDER BY id", db="coolify").split()
    assert [laravel_ref.decrypt_string(v.split("|", 1)[1], ring_ref) for v in envs] == [
        scene.old.secrets[f"environment_variables.value {i}"] for i in (1, 2, 3)]
    # SSH keys: the old ones are back (0600), the fresh install's localhost key is kept aside, and the old
    # localhost key's public half is authorised (Coolify SSHes into its own host with it).
    keys = scene.new.dir / "ssh" / "keys"
    assert (keys / LOCALHOST_KEY).read_text() == scene.old.private_keys["oldkey1"]
    assert (keys / "ssh_key@oldkey2").read_text() == scene.old.private_keys["oldkey2"]
    assert oct((keys / "ssh_key@oldkey3").stat().st_mode & 0o777) == "0o600"
    assert len(list(keys.glob(f"{LOCALHOST_KEY}.fresh-*"))) == 1
    old_pub = run("ssh-keygen", "-y", "-f", str(keys / LOCALHOST_KEY)).stdout.split()[:2]
    authorized = [line.split()[:2] for line in scene.authorized_keys.read_text().splitlines()]
    assert old_pub in authorized and len(authorized) == 4  # the fresh key + the three restored ones


def test_restore_is_repeatable(scene: Scene) -> None:
    """A second run (e.g. after a dropped SSH session) converges: same database, no second previous key."""
    scene.restore("--coolify-version", VERSION)  # a first run when this test runs alone, else a repeat
    env_before = (scene.new.dir / "source" / ".env").read_text()
    scene.restore("--coolify-version", VERSION)
    assert scene.cluster.dump_text("coolify") == scene.old_plain
    assert (scene.new.dir / "source" / ".env").read_text() == env_before
    assert len(scene.authorized_keys.read_text().splitlines()) == 4
