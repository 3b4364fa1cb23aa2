"""The Hetzner Storage Box as DR sees it: files over rsync/SSH on port 23, snapshots over the Hetzner API.

Files: the box speaks rsync, scp and sftp on port 23 (not a shell); we only use rsync, exactly as the factory's
nightly job does (`rsync -e "ssh -p 23 -i /root/.ssh/inkmcp-storagebox"`), so the key that writes the dumps is
the key that reads them back.

Snapshots: `GET/POST /storage_boxes/{id}/snapshots` on api.hetzner.com (hcloud-python's StorageBoxesClient).
A snapshot's files are readable under `.zfs/snapshot/<name>/` only while the box's `zfs_enabled` access setting
is on; the factory leaves it off, so `snapshot_files_visible()` switches it on for the read and back off after.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import requests
from hcloud import APIException, Client, HCloudException
from hcloud.actions import BoundAction
from hcloud.storage_boxes import BoundStorageBox, BoundStorageBoxSnapshot, StorageBoxAccessSettings

from inkmcp.dr.errors import DrError
from inkmcp.dr.settings import DrSettings

# rsync --list-only: "-rw-r--r--      1,234,567 2026/12/01 02:30:12 name"
_LIST_LINE = re.compile(r"^(?P<mode>[-dl][rwxsStT-]{9})\s+(?P<size>[\d,.]+)\s+(?P<date>\d{4}/\d\d/\d\d)\s+"
                        r"(?P<time>\d\d:\d\d:\d\d)\s+(?P<name>.+)$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    is_dir: bool


class BoxFiles:
    """rsync over SSH to one Storage Box account (user@host, port 23, one key)."""

    def __init__(self, settings: DrSettings, *, timeout: float = 600) -> None:
        if not settings.box_host or not settings.box_user:
            raise DrError("the Storage Box is not set: pass --box-host and --box-user (or INKMCP_DR_BOX_HOST and "
                          "INKMCP_DR_BOX_USER; the factory stack's storage_box_host output and the box's username)")
        if not settings.box_key.is_file():
            raise DrError(f"--box-key {settings.box_key}: no such key file; pass the private key the box accepts "
                          "(on the Postgres host the factory installs /root/.ssh/inkmcp-storagebox)")
        self.target = f"{settings.box_user}@{settings.box_host}"
        ssh = ["ssh", "-p", str(settings.box_port), "-i", str(settings.box_key), "-o", "IdentitiesOnly=yes",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
               "-o", f"StrictHostKeyChecking={'yes' if settings.box_keys_pinned else 'accept-new'}"]
        if settings.box_known_hosts is not None:
            ssh += ["-o", f"UserKnownHostsFile={settings.box_known_hosts}"]
        self._ssh = " ".join(shlex.quote(a) for a in ssh)
        self._timeout = timeout

    def _rsync(self, *args: str) -> str:
        argv = ["rsync", "-e", self._ssh, *args]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=self._timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DrError(f"rsync to {self.target} timed out after {self._timeout:.0f} s") from None
        if r.returncode != 0:
            raise DrError(f"rsync {' '.join(args[-2:])} failed (exit {r.returncode}): {r.stderr.strip()[-600:]}")
        return r.stdout

    def list(self, directory: str) -> list[RemoteFile]:
        """Entries of `directory` (relative to the account's home); [] when it does not exist."""
        try:
            out = self._rsync("--list-only", f"{self.target}:{directory.rstrip('/')}/")
        except DrError as e:
            if "No such file or directory" in str(e) or "change_dir" in str(e):
                return []
            raise
        files = []
        for line in out.splitlines():
            m = _LIST_LINE.match(line.strip())
            if m is None or m["name"] in (".", ".."):
                continue
            files.append(RemoteFile(m["name"], int(re.sub(r"[,.]", "", m["size"])), m["mode"][0] == "d"))
        return files

    def pull(self, remote_path: str, local: Path) -> Path:
        """Copy one remote file to `local` (a file path); rsync writes to a temp name and renames at the end."""
        local.parent.mkdir(parents=True, exist_ok=True)
        self._rsync("-t", f"{self.target}:{remote_path}", str(local))
        return local

    def push_file(self, local: Path, directory: str, name: str) -> None:
        """Upload `local` as `directory/name`, creating `directory` (rsync renames into place when complete)."""
        _check_name(name)
        with tempfile.TemporaryDirectory(prefix="inkmcp-dr-") as stage:
            dest = Path(stage, directory, name)
            dest.parent.mkdir(parents=True)
            dest.hardlink_to(local) if _same_fs(local, Path(stage)) else dest.write_bytes(local.read_bytes())
            self._rsync("-rt", "-O", f"{stage}/", f"{self.target}:")

    def mirror(self, local_dir: Path, directory: str) -> str:
        """`local_dir/` onto `directory/` with --delete (the box keeps history in its snapshots); rsync's stats."""
        return self._rsync("-a", "--delete", "--stats", f"{local_dir}/", f"{self.target}:{directory.rstrip('/')}/")


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def _check_name(name: str) -> None:
    if not _SAFE_NAME.match(name):
        raise DrError(f"unsafe file name {name!r} on the box: use letters, digits and ._+-")


@dataclass(frozen=True)
class Snapshot:
    id: int
    name: str
    created: datetime
    is_automatic: bool


class BoxApi:
    """The Storage Box's Hetzner API: snapshots and the `zfs_enabled` access setting (hcloud-python)."""

    def __init__(self, settings: DrSettings) -> None:
        if settings.hetzner_token is None or settings.box_id is None:
            raise DrError("the Hetzner API is not set: pass --box-id and INKMCP_DR_HETZNER_TOKEN (a token of the "
                          "project holding the Storage Box; `hcloud storage-box list` shows the ID)")
        self._client = Client(token=settings.hetzner_token.get_secret_value(),
                              api_endpoint_hetzner=settings.hetzner_api_url, poll_interval=0.5,
                              application_name="inkmcp-dr")
        self._box_id = settings.box_id
        self._url = settings.hetzner_api_url

    def box(self) -> BoundStorageBox:
        try:
            return self._client.storage_boxes.get_by_id(self._box_id)
        except APIException as e:
            raise DrError(f"Storage Box {self._box_id}: {e.code}: {e.message}") from None
        except requests.RequestException as e:
            raise DrError(f"cannot reach the Hetzner API ({self._url}): {e}") from None

    def snapshots(self) -> list[Snapshot]:
        try:
            found = self._client.storage_boxes.get_snapshot_all(self.box())
        except APIException as e:
            raise DrError(f"listing snapshots of Storage Box {self._box_id}: {e.code}: {e.message}") from None
        return sorted((_snapshot(s) for s in found), key=lambda s: s.created)

    def create_snapshot(self, description: str, labels: dict[str, str]) -> Snapshot:
        """A manual snapshot (counts against the box type's snapshot limit); waits until the action succeeds."""
        try:
            made = self._client.storage_boxes.create_snapshot(self.box(), description=description, labels=labels)
            self._wait(made.action, "create_snapshot")
            return _snapshot(self._client.storage_boxes.get_snapshot_by_id(self.box(), made.snapshot.id))
        except APIException as e:
            raise DrError(f"creating a snapshot of Storage Box {self._box_id}: {e.code}: {e.message}") from None
        except (HCloudException, requests.RequestException) as e:
            raise DrError(f"creating a snapshot of Storage Box {self._box_id}: {e}") from None

    def _set_zfs(self, enabled: bool) -> None:
        action = self._client.storage_boxes.update_access_settings(
            self.box(), StorageBoxAccessSettings(zfs_enabled=enabled))
        self._wait(action, "update_access_settings")

    def _wait(self, action: BoundAction, what: str, timeout: float = 600) -> None:
        """Poll `GET /storage_boxes/actions/{id}` on the Hetzner API. (hcloud-python 2.27's
        `BoundAction.wait_until_finished` polls the Cloud API's `/actions/{id}` at api.hetzner.cloud instead.)"""
        deadline = time.monotonic() + timeout
        while True:
            current = self._client.storage_boxes.actions.get_by_id(action.id)
            if current.status == "success":
                return
            if current.status == "error":
                raise DrError(f"Storage Box action {what} failed: {current.error}")
            if time.monotonic() > deadline:
                raise DrError(f"Storage Box action {what} still running after {timeout:.0f} s")
            time.sleep(0.5)

    @contextmanager
    def snapshot_files_visible(self) -> Iterator[None]:
        """`.zfs/snapshot/<name>/` readable for the duration; the previous setting is put back after."""
        try:
            was = bool(self.box().access_settings.zfs_enabled)
            if not was:
                self._set_zfs(True)
        except (HCloudException, requests.RequestException) as e:
            raise DrError(f"switching on snapshot access (zfs_enabled) of Storage Box {self._box_id}: {e}") from None
        try:
            yield
        finally:
            if not was:
                self._set_zfs(False)


def _snapshot(s: BoundStorageBoxSnapshot) -> Snapshot:
    assert s.id is not None and s.name is not None and s.created is not None
    return Snapshot(s.id, s.name, s.created, bool(s.is_automatic))
