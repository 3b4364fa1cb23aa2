"""Removing the cgroups a test's local provider made, by their exact paths.

The local provider keeps a service's cgroups (`<service id>` and `<service id>.build` under the `inkmcp` parent,
in every controller on cgroup v1) for as long as the service exists, as production must: a restart re-adopts
them. Tests never delete most of their services, they delete the data dir, so every test that released
something as root left its groups behind (about 500 an hour on this box, ~7,600 by 2026-12-01). The services
of a data dir are exactly the directories under `<data dir>/services`, so those names are what a test made.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from inkmcp.providers.compute.local.limits import CGROUP_ROOT, V1_OPTIONAL, V1_REQUIRED

PARENT = "inkmcp"  # the local provider's parent group (limits.Cgroups' default)


def service_cgroups(data_dir: Path, root: Path = CGROUP_ROOT) -> list[Path]:
    """The cgroup directories of the services under `data_dir` (a provider's data dir) that exist now."""
    services = data_dir / "services"
    if not services.is_dir():
        return []
    # v2's one parent and v1's per-controller ones: only those that exist are looked in (Cgroups picks one)
    parents = [root / PARENT, *(root / c / PARENT for c in (*V1_REQUIRED, *V1_OPTIONAL))]
    names = [n for d in services.iterdir() if d.is_dir() for n in (d.name, f"{d.name}.build")]
    return [p / n for p in parents for n in names if (p / n).is_dir()]


def remove_service_cgroups(data_dir: Path, root: Path = CGROUP_ROOT) -> list[Path]:
    """rmdir the cgroups of `data_dir`'s services; call after the provider closed (its processes are gone) and
    before the data dir is deleted. Returns the ones still busy (a process left in them): rmdir refuses those,
    so nothing alive is ever removed, and nothing that is not one of this data dir's services is touched."""
    if os.geteuid() != 0:
        return []
    busy = []
    for d in service_cgroups(data_dir, root):
        try:
            d.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            busy.append(d)
    return busy
