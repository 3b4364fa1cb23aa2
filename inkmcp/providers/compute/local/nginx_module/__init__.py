"""InkMCP's nginx module: found for the nginx that runs, or built for it (`make install`), else the fallback.

Why a module: the local provider's front proxy is Debian's nginx configured by InkMCP (nginx.py). Its rules beyond a
plain reverse proxy (the Host check, `Server: inkmcp` on nginx's own answers, TCP_NODELAY inherited from the
listening socket, the forwarded headers set from the connection) cost ~2,500 instructions a request as directives
(a regex `if`, a map, headers-more, variables), 0.99x the work of an nginx that sets the same forwarded headers;
done in C here (`$inkmcp_forwarded` is the five forwarded headers as one value) 0.88x, and 0.99x of a plain nginx
that sets none (the module also saves nginx's per-connection setsockopt). Measured with
`benchmarks/proxy_speed.py --cost`.

Why built at install: a dynamic nginx module loads only into the nginx version (and `--with-compat` build) it was
compiled against. `build` compiles it against the source of the exact nginx package that is installed: Debian's
nginx-dev of the same version (its `conf_flags` are the flags a compatible module needs), downloaded with
`apt-get download` and unpacked in a temporary directory. Installing nginx-dev instead would pull ~56 packages
(debhelper, libperl-dev, libgd-dev...) that only Debian's own module builds need; its configure needs only the
headers of pcre2, OpenSSL and zlib (scripts/system-deps.sh installs libpcre2-dev, libssl-dev, zlib1g-dev). The
compiler flags are the binary's own (`nginx -V`: -O2, the stack protector, _FORTIFY_SOURCE, relro/now).

The build's name carries a hash of the module's source and the binary's `nginx -V`, so an nginx upgraded by apt
(a new version) finds no build for itself and the proxy falls back to the headers-more config (same answers),
saying why once at start; `inkmcp doctor` says so too. The module is loaded by nginx's master, which runs as root:
only a file owned by root (or by us) that nobody else can write, in a directory nobody else can write, is used.

    python -m inkmcp.providers.compute.local.nginx_module [--nginx /usr/sbin/nginx] [DIR]   # build (root)
    python3 inkmcp/providers/compute/local/nginx_module/build.py [...]   # the same, stdlib only (make install)
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from inkmcp.providers.compute.local.nginx_module.build import (
    HERE,
    PACKAGE_BIN,
    SOURCES,
    _binary_opts,
    _trusted,
    build,
    check_loads,
    module_name,
    nginx_version_output,
)

__all__ = [
    "HERE",
    "HOW_TO_BUILD",
    "PACKAGE_BIN",
    "SOURCES",
    "Found",
    "_binary_opts",
    "build",
    "check_loads",
    "find",
    "module_name",
    "nginx_version_output",
]


@dataclass(frozen=True)
class Found:
    """The module to load (None: use the headers-more config) and, when None, why."""

    path: Path | None
    reason: str = ""


def find(nginx: Path, dirs: tuple[Path, ...] | None = None) -> Found:
    """The build for `nginx` in `dirs` (default: the package's _bin), or why there is none."""
    dirs = (PACKAGE_BIN,) if dirs is None else dirs
    try:
        name = module_name(nginx)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return Found(None, f"cannot read {nginx}'s version: {exc}")
    for d in dirs:
        candidate = d / name
        if candidate.exists():
            if _trusted(candidate, directory=False) and _trusted(d, directory=True):
                return Found(candidate)
            return Found(None, f"{candidate} is writable by others or not owned by root: not loaded into nginx")
    older = sorted(p.name for d in dirs for p in d.glob("ngx_http_inkmcp_module-*.so")) if dirs else []
    why = (f"the builds there ({', '.join(older)}) are for another nginx or an older module source"
           if older else "none built")
    return Found(None, f"no build of InkMCP's nginx module for {_version_line(nginx)} in "
                       f"{', '.join(map(str, dirs))} ({why})")  # fmt: skip


def _version_line(nginx: Path) -> str:
    try:
        m = re.search(r"nginx version: (\S+)", nginx_version_output(nginx))
    except (OSError, RuntimeError, subprocess.SubprocessError):
        m = None
    return f"{nginx} ({m.group(1)})" if m else str(nginx)


HOW_TO_BUILD = ("run `make install` as root (or `python -m inkmcp.providers.compute.local.nginx_module` as root "
                "after `bash scripts/system-deps.sh`)")
