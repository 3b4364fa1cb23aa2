"""`inkmcp dr backup-registry`: the registry's storage copied to the Storage Box, then a box snapshot.

Hetzner Cloud Volumes have no snapshots: the Cloud API's volume actions are attach, detach, resize and
change_protection only (docs.hetzner.cloud "Volume Actions"; hcloud-python 2.27 VolumesClient; the
terraform provider has no volume-snapshot resource), and server images (`POST /servers/{id}/actions/create_image`)
never include attached Volumes. So the registry Volume is backed up by file copy: `rsync -a --delete` of the
registry's storage directory (distribution's filesystem driver, content-addressed: blobs are immutable, a tag is
a small link file) to the box, twice (the second pass picks up blobs pushed during the first), then a Storage Box
snapshot through the Hetzner API (`POST /storage_boxes/{id}/snapshots`) freezes that copy next to the nightly
ones. Images can also be rebuilt from git; this copy saves the rebuild time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from inkmcp.dr.errors import DrError
from inkmcp.dr.settings import DrSettings
from inkmcp.dr.storagebox import BoxApi, BoxFiles, Snapshot

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RegistryBackup:
    files: int
    bytes: int
    snapshot: Snapshot | None
    seconds: dict[str, float]


def _stat(stats: str, label: str) -> int:
    m = re.search(rf"^{label}: ([\d,.]+)", stats, re.M)
    return int(re.sub(r"[,.]", "", m[1])) if m else 0


def backup_registry(settings: DrSettings, *, snapshot: bool = True,
                    progress: Progress = lambda _m: None) -> RegistryBackup:
    src = settings.registry_storage
    if not (src / "docker" / "registry" / "v2").is_dir():
        raise DrError(f"{src} holds no registry data (no docker/registry/v2): pass --storage, the registry's "
                      "storage directory (the factory's registry host: /var/lib/registry)")
    api = BoxApi(settings) if snapshot else None
    files = BoxFiles(settings, timeout=6 * 3600)
    if api is not None:
        api.box()  # token and box ID work before hours of copying, not after
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    progress(f"copying {src} to {settings.registry_dir}/ (pass 1)")
    files.mirror(src, settings.registry_dir)
    progress("pass 2 (blobs pushed meanwhile)")
    stats = files.mirror(src, settings.registry_dir)
    seconds["copy"] = time.monotonic() - t0
    made = None
    if api is not None:
        t1 = time.monotonic()
        now = datetime.now(UTC)
        made = api.create_snapshot(f"inkmcp registry copy {now:%Y-%m-%dT%H:%M:%SZ}",
                                   {"inkmcp": "registry"})
        seconds["snapshot"] = time.monotonic() - t1
        progress(f"snapshot {made.name} (id {made.id})")
    return RegistryBackup(_stat(stats, "Number of files"), _stat(stats, "Total file size"), made, seconds)
