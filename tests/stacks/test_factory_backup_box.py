"""The factory's Postgres backup job (`factory.backup_script`, run unchanged) against a real sshd + rsync playing the
Storage Box on port 23: what its mirror may delete on the box, and whose host key it trusts.

The attacks are the disasters a backup exists for, and a man in the middle on first contact:
- a rebuilt host (new Volume, empty dump directory) runs its nightly job before anyone restored: the box's live
  dumps of the old host must survive it (they are what the restore needs); only dumps a host mirrored itself and
  then pruned (its 7-day retention) leave the box, and nothing else in the directory is ever deleted;
- with `storageBox.hostKeys` set, a box answering with another host key gets nothing: ssh refuses, the job fails,
  the impostor's directory stays empty; with the right key the job works and known_hosts holds only that key.

The "host" is a private mount namespace whose /root, /var/lib/postgresql, /usr/local/sbin and /etc/systemd/system
are this test's directories (systemctl is a stub that records its calls); pg_dump dumps a real PostgreSQL cluster
run by the `postgres` OS user. The box's user exists only inside its sshd's mount namespace (an overlay on /etc).
Every daemon is stopped by its PID.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inkmcp.infra.factory import BOX_KNOWN_HOSTS, backup_script, shell
from inkmcp.infra.factory_config import FactoryConfig, StorageBoxSpec
from tests.dr.conftest import Cluster, pg_bin, run, start_box_sshd
from tests.hardening.conftest import stop_pid
from tests.requirements import require, require_root

BOX_USER, BOX_UID = "u4343", 4343
BOX_IP = f"127.23.{os.getpid() % 250}.{1 + os.getpid() // 250 % 250}"  # loopback: port 23 of our own address


@dataclass
class Box:
    root: Path
    home: Path
    host_key: str  # "ssh-ed25519 AAAA..."
    backup_key: Path

    @property
    def live(self) -> Path:
        return self.home / "inkmcp-postgres"

    def names(self) -> set[str]:
        return {p.name for p in self.live.iterdir()} if self.live.exists() else set()


@dataclass
class Host:
    root: Path
    sock: Path

    def sh(self, command: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
        binds = " && ".join(f"mount --bind {self.root / name} {target}" for name, target in
                            (("root", "/root"), ("varlibpg", "/var/lib/postgresql"), ("sbin", "/usr/local/sbin"),
                             ("systemd", "/etc/systemd/system")))
        env = {"PATH": f"{self.root / 'stub'}:{pg_bin()}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
               "PGHOST": str(self.sock), "CMD": command, "LANG": "C.UTF-8"}
        return run("unshare", "--mount", "--propagation", "private", "bash", "-c", f'{binds} && exec sh -c "$CMD"',
                   input=stdin, env=env, check=check, timeout=120)

    @property
    def dumps(self) -> Path:
        return self.root / "varlibpg" / "backups"

    def backup(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        """What the timer runs; waits for the next second first (dump names carry the second)."""
        second = int(time.time())
        while int(time.time()) == second:
            time.sleep(0.02)
        return self.sh("/usr/local/sbin/inkmcp-pg-backup", check=check)


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Path, Box, Cluster]]:
    require_root("a second sshd on port 23, mount namespaces and the postgres OS user")
    require("sshd", Path("/usr/sbin/sshd").exists(), "/usr/sbin/sshd not installed")
    require("rsync", shutil.which("rsync") is not None, "rsync not installed")
    root = Path(tempfile.mkdtemp(prefix="inkmcp-boxjob-", dir="/tmp"))
    root.chmod(0o755)
    sshd_dir, keys = root / "sshd", root / "keys"
    box = Box(root, root / "home", "", keys / "backup")
    sshd: subprocess.Popen[bytes] | None = None
    cluster = Cluster(root / "pg", root / "pgsock")
    try:
        keys.mkdir()
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "inkmcp-backup", "-f", str(box.backup_key))
        box.home.mkdir()
        os.chown(box.home, BOX_UID, BOX_UID)
        sshd, box.host_key = start_box_sshd(sshd_dir, user=BOX_USER, uid=BOX_UID, home=box.home, address=BOX_IP,
                                            authorized_key=box.backup_key.with_suffix(".pub"),
                                            overlay="inkmcp-boxjob-etc")
        cluster.start()
        cluster.psql("CREATE ROLE inkmcp LOGIN")
        cluster.psql("CREATE DATABASE inkmcp OWNER inkmcp")
        cluster.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1);", db="inkmcp", user="inkmcp")
        yield root, box, cluster
    finally:
        cluster.stop()
        if sshd is not None:
            stop_pid(sshd.pid, wait=5)
        shutil.rmtree(root, ignore_errors=True)


def install(root: Path, box: Box, cluster: Cluster, name: str, host_keys: tuple[str, ...] = ()) -> Host:
    """A new host, and what pulumi's `backup-job` step runs on it (the secrets on stdin)."""
    host = Host(root / name, cluster.sock)
    for d in ("root", "varlibpg", "sbin", "systemd", "stub"):
        (host.root / d).mkdir(parents=True)
    (host.root / "root").chmod(0o700)
    shutil.chown(host.root / "varlibpg", "postgres", "postgres")
    stub = host.root / "stub" / "systemctl"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {host.root}/systemctl.log\n')
    stub.chmod(0o755)
    key = StorageBoxSpec(backup_public_key=box.backup_key.with_suffix(".pub").read_text(), host_keys=host_keys)
    conf = FactoryConfig.model_construct(storage_box=key)
    stdin = (f"BACKUP_PRIVATE_KEY_B64={base64.b64encode(box.backup_key.read_bytes()).decode()}\n"
             f"STORAGE_BOX_USER={BOX_USER}\nSTORAGE_BOX_HOST={BOX_IP}\n")
    host.sh(shell(backup_script(conf)), stdin=stdin)
    return host


def test_a_rebuilt_hosts_first_run_keeps_the_old_hosts_dumps_and_only_pruned_own_dumps_leave(world) -> None:  # type: ignore[no-untyped-def]
    root, box, cluster = world
    old = install(root, box, cluster, "old", host_keys=(box.host_key,))
    old.backup()
    (a,) = {p.name for p in old.dumps.iterdir()}
    assert box.names() == {a}
    (box.live / "operator-notes.txt").write_text("kept by hand\n")  # not the job's: never deleted
    os.chown(box.live / "operator-notes.txt", BOX_UID, BOX_UID)
    eight_days = time.time() - 8 * 86400
    os.utime(old.dumps / a, (eight_days, eight_days))  # past the job's 7-day local retention
    old.backup()
    (b,) = {p.name for p in old.dumps.iterdir()}
    assert box.names() == {b, "operator-notes.txt"}, "the old host's own pruned dump A leaves the box"

    # The host is lost; its replacement's job runs before anyone restored (its database: new, nearly empty).
    new = install(root, box, cluster, "new", host_keys=(box.host_key,))
    new.backup()
    (c,) = {p.name for p in new.dumps.iterdir()}
    assert box.names() == {b, c, "operator-notes.txt"}, "the rebuilt host's first run deleted the old dumps"
    os.utime(new.dumps / c, (eight_days, eight_days))
    new.backup()
    (d,) = {p.name for p in new.dumps.iterdir()}
    assert box.names() == {b, d, "operator-notes.txt"}  # its own pruned C leaves; B (not its own) stays
    for name in (b, d, "operator-notes.txt"):
        (box.live / name).unlink()


def test_a_pinned_host_key_refuses_an_impostor_and_accepts_the_box(world) -> None:  # type: ignore[no-untyped-def]
    root, box, cluster = world
    other = root / "keys" / "impostor"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other))
    impostor_key = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    # The box answers with its own key, not the pinned one: as a man in the middle on first contact would.
    pinned_wrong = install(root, box, cluster, "pinned-wrong", host_keys=(impostor_key,))
    before = box.names()
    r = pinned_wrong.backup(check=False)
    assert r.returncode != 0 and "Host key verification failed" in r.stderr, r.stderr
    assert box.names() == before  # nothing reached the box
    known = (pinned_wrong.root / "root" / Path(BOX_KNOWN_HOSTS).relative_to("/root")).read_text()
    assert known == f"[{BOX_IP}]:23 {impostor_key}\n"
    assert not (pinned_wrong.root / "root" / ".ssh" / "known_hosts").exists()  # nothing learnt on the side

    pinned = install(root, box, cluster, "pinned", host_keys=(f"{box.host_key} box@hetzner",))
    pinned.backup()
    (dump,) = {p.name for p in pinned.dumps.iterdir()}
    assert dump in box.names()
    known = (pinned.root / "root" / Path(BOX_KNOWN_HOSTS).relative_to("/root")).read_text()
    assert known == f"[{BOX_IP}]:23 {box.host_key}\n"  # the comment is not written as a field
    (box.live / dump).unlink()

    # Unpinned (no hostKeys): first use is trusted, as before, into root's own known_hosts.
    first_use = install(root, box, cluster, "first-use")
    first_use.backup()
    assert box.host_key in (first_use.root / "root" / ".ssh" / "known_hosts").read_text()
    for p in first_use.dumps.iterdir():
        (box.live / p.name).unlink()


def test_host_keys_config_keeps_type_and_key_and_refuses_a_keyscan_line() -> None:
    pub = "AAAAC3NzaC1lZDI1NTE5AAAAIHn0d3Z3cmVqZWN0c29tZWtleWZvcnRlc3RpbmdvbmU="
    spec = StorageBoxSpec(backup_public_key=f"ssh-ed25519 {pub} b", hostKeys=[f"ssh-ed25519 {pub} comment"])  # type: ignore[call-arg]
    assert spec.host_keys == (f"ssh-ed25519 {pub}",)
    with pytest.raises(ValueError, match="drop the host name"):
        StorageBoxSpec(backup_public_key=f"ssh-ed25519 {pub} b",
                       host_keys=(f"[u1.your-storagebox.de]:23 ssh-ed25519 {pub}",))


def test_dr_commands_on_a_pinned_host_trust_only_the_pinned_keys(world, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """`inkmcp dr` on the Postgres host reads the box through the same pinned keys the backup job uses: a box
    answering with another key gets no connection (and no new known_hosts entry); with no pinned file, ssh's own
    first-use trust stays as before."""
    from inkmcp.dr import settings as dr_settings
    from inkmcp.dr.errors import DrError
    from inkmcp.dr.storagebox import BoxFiles

    root, box, _ = world
    other = root / "keys" / "impostor-dr"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other))
    impostor_key = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    pinned = root / "dr-pinned" / "known_hosts"
    pinned.parent.mkdir()
    monkeypatch.setattr(dr_settings, "PINNED_BOX_KNOWN_HOSTS", pinned)

    def settings() -> dr_settings.DrSettings:
        return dr_settings.DrSettings(box_host=BOX_IP, box_user=BOX_USER, box_key=box.backup_key)

    assert settings().box_known_hosts is None and not settings().box_keys_pinned  # no pinned file: as before

    pinned.write_text(f"[{BOX_IP}]:23 {impostor_key}\n")  # pinned, but the box answers with its own key
    s = settings()
    assert s.box_known_hosts == pinned and s.box_keys_pinned
    with pytest.raises(DrError, match="Host key verification failed"):
        BoxFiles(s).list("inkmcp-postgres")
    assert pinned.read_text() == f"[{BOX_IP}]:23 {impostor_key}\n"  # nothing learnt

    pinned.write_text(f"[{BOX_IP}]:23 {box.host_key}\n")
    if not box.live.exists():  # as the job would make it: the box user's
        box.live.mkdir()
        os.chown(box.live, BOX_UID, BOX_UID)
    (box.live / "probe.dump").write_text("x")
    try:
        assert "probe.dump" in {f.name for f in BoxFiles(settings()).list("inkmcp-postgres")}
    finally:
        (box.live / "probe.dump").unlink()
