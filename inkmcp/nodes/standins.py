"""Stand-in images for the run-server box: Coolify's images, built offline, served by the box's registry.

Why: Coolify pulls every image it runs on a node from docker.io (`docker compose pull`, `docker run
docker.io/coollabsio/coolify-helper:1.0.15`, ...) and a pull fails the whole operation when the registry
does not answer. The box has no network, so `inkmcp nodes sandbox up` serves these stand-ins from Debian's
`docker-registry` inside its namespace (the daemon's `registry-mirrors`), under the exact names and tags
Coolify v4.3.11 uses. A test's pull then really pulls, by tag or by digest, and a tag can be moved under
Coolify by pushing another manifest.

Each image is assembled here from files on this host and in the box's Debian packages (no Dockerfile, no
network): busybox-static for the shell and tools, plus real programs where Coolify's commands need their
behaviour — PostgreSQL 15 (initdb, psql, pg_dump, pg_dumpall, pg_isready) for `postgres:16-alpine`, Redis
7.0 (bookworm's redis-tools) for `redis:7.2`, and bash + the docker CLI + the compose and buildx plugins +
git + curl in the deploy helper. Servers that only need to be up and answer HTTP (Traefik, Sablier,
Sentinel, nginx, MongoDB) are busybox scripts. Every image carries the label `org.inkmcp.standin=true`,
`org.inkmcp.standin.for=<ref>` and the file /INKMCP-STANDIN saying what it stands in for.

Builds are deterministic (fixed mtimes and owners, sorted entries, gzip without a timestamp): the same
recipe over the same input files gives the same layer, config and manifest digest. Built images are cached
under CACHE/standins (next to the Debian packages) keyed by this file's source and the inputs' size and
mtime, so a new box only uploads blobs; `up` never rebuilds what it can reuse.

The push runs inside the box's network namespace (the registry listens on 127.0.0.1 there):

    python -m inkmcp.nodes.standins push --registry http://127.0.0.1:5000 BUILD_DIR...

prints {ref: manifest digest} as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

STANDIN_LABEL = "org.inkmcp.standin"
STANDIN_FOR_LABEL = "org.inkmcp.standin.for"
MARKER_FILE = "/INKMCP-STANDIN"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# Every entry's mtime and the config's `created`: a fixed instant, so a rebuild gives the same digests.
FIXED_MTIME = 1704067200  # 2024-01-01T00:00:00Z
FIXED_CREATED = "2024-01-01T00:00:00Z"
SOURCE = Path(__file__)
# usrmerge, as in Debian 12 and Alpine's layout for these names: the image's /bin, /sbin, /lib, /lib64 are
# links into /usr, so a host path and its /usr twin land on one file.
MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin")


class StandinError(RuntimeError):
    """A stand-in cannot be built or pushed; the message names the missing input or the registry's answer."""


# --------------------------------------------------------------------------------------------------------
# Root filesystems


@dataclass
class Entry:
    kind: str  # "dir" | "file" | "symlink"
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    src: Path | None = None
    data: bytes | None = None
    target: str = ""


def image_path(path: str) -> str:
    """Absolute, normalised, with /bin, /sbin, /lib, /lib64 mapped into /usr (the image's usrmerge)."""
    norm = posixpath.normpath("/" + path.lstrip("/"))
    head, _, rest = norm[1:].partition("/")
    if head in MERGED:
        norm = "/" + MERGED[head] + ("/" + rest if rest else "")
    return norm


class Rootfs:
    """An image's file tree as entries (nothing copied until the layer is written).

    `host()` adds a file from this machine or from the box's unpacked packages (`pkg_root`) and, for an ELF
    binary, every shared library `ldd` resolves for it (with the packages' library dir searched first), at
    the library's own path; symlinks are kept as symlinks and their targets added too.
    """

    def __init__(self, pkg_root: Path) -> None:
        self.pkg_root = pkg_root
        self.entries: dict[str, Entry] = {}
        self.inputs: list[tuple[str, int, int]] = []  # (image path, size, mtime_ns): the cache key's part
        self._ldd: dict[str, list[str]] = {}
        self._pending: list[Path] = []
        for link, target in MERGED.items():
            self.entries["/" + link] = Entry("symlink", target=target)
        tmp_dirs = ("/tmp", "/var/tmp")  # noqa: S108 - paths inside the image, world-writable + sticky as usual
        for d, mode in (("/etc", 0o755), ("/root", 0o700), ("/run", 0o755), ("/proc", 0o755), ("/sys", 0o755),
                        ("/dev", 0o755), ("/var", 0o755), ("/usr/local/bin", 0o755), ("/usr/local/sbin", 0o755),
                        *((t, 0o1777) for t in tmp_dirs)):
            self.entries[d] = Entry("dir", mode=mode)
        self.entries["/var/run"] = Entry("symlink", target="../run")

    # -- primitives
    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self.entries[image_path(path)] = Entry("dir", mode=mode, uid=uid, gid=gid)

    def text(self, path: str, content: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        self.entries[image_path(path)] = Entry("file", mode=mode, uid=uid, gid=gid, data=content.encode())

    def script(self, path: str, content: str) -> None:
        self.text(path, content, mode=0o755)
        self._drop_applets(image_path(path))

    def _drop_applets(self, where: str) -> None:
        """A real program replaces busybox's applet of that name in every bin dir (one earlier on PATH,
        e.g. /usr/sbin/setpriv, would otherwise shadow it)."""
        directory, name = posixpath.split(where)
        if directory not in BIN_DIRS:
            return
        for d in BIN_DIRS:
            link = self.entries.get(f"{d}/{name}")
            if link is not None and link.kind == "symlink" and link.target == "/usr/bin/busybox":
                del self.entries[f"{d}/{name}"]

    def symlink(self, path: str, target: str) -> None:
        self.entries[image_path(path)] = Entry("symlink", target=target)
        self._drop_applets(image_path(path))

    def pkg(self, path: str) -> Path:
        """A file of the box's unpacked Debian packages (scripts/test-docker-trixie.sh)."""
        return self.pkg_root / path.lstrip("/")

    def _dest_for(self, src: Path) -> str:
        s = str(src)
        root = str(self.pkg_root).rstrip("/")
        if s.startswith(root + "/"):
            return s[len(root):]
        return s

    def host(self, src: Path | str, dest: str | None = None, libs: bool = True) -> None:
        src = Path(src)
        if not os.path.lexists(src):
            raise StandinError(f"stand-in input {src} is missing: install its package or re-run "
                               "scripts/test-docker-trixie.sh")
        where = image_path(dest or self._dest_for(src))
        if src.is_symlink():
            target = os.readlink(src)
            self.entries[where] = Entry("symlink", target=target)
            resolved = Path(posixpath.normpath(posixpath.join(str(src.parent), target)))
            self.host(resolved, None if dest is None else posixpath.join(posixpath.dirname(where), target), libs)
            return
        st = src.stat()
        if stat.S_ISDIR(st.st_mode):
            self.entries[where] = Entry("dir", mode=stat.S_IMODE(st.st_mode))
            return
        self.entries[where] = Entry("file", mode=stat.S_IMODE(st.st_mode) & 0o7755, src=src)
        self.inputs.append((where, st.st_size, st.st_mtime_ns))
        self._drop_applets(where)
        if libs and st.st_mode & 0o111:
            self._pending.append(src)

    def resolve_libs(self) -> None:
        """Add the shared libraries of every ELF program added with libs=True (`ldd`, ~10 ms each: done
        only when the image is really built, not to compute its cache key)."""
        while self._pending:
            src = self._pending.pop()
            if not _is_elf(src):
                continue
            for lib in self._libs(src):
                if image_path(self._dest_for(Path(lib))) not in self.entries:
                    self.host(lib, libs=False)

    def tree(self, src: Path | str, dest: str | None = None, libs: bool = True) -> None:
        """A whole directory (symlinks kept), e.g. PostgreSQL's lib and share dirs."""
        src = Path(src)
        if not src.is_dir():
            raise StandinError(f"stand-in input directory {src} is missing: install its package")
        base = image_path(dest or self._dest_for(src))
        self.dir(base, mode=stat.S_IMODE(src.stat().st_mode))
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel = os.path.relpath(dirpath, src)
            for name in sorted(dirnames + filenames):
                path = Path(dirpath) / name
                self.host(path, posixpath.join(base, rel, name), libs=libs)

    def busybox(self) -> None:
        """busybox-static and a link per applet (real programs added later replace their applet)."""
        self.host("/bin/busybox", "/usr/bin/busybox", libs=False)
        listing = subprocess.run(["/bin/busybox", "--list-full"], capture_output=True, text=True, check=True).stdout
        for applet in listing.split():
            where = image_path(applet)
            if where != "/usr/bin/busybox" and where not in self.entries:
                self.entries[where] = Entry("symlink", target="/usr/bin/busybox")

    def users(self, extra: Iterable[tuple[str, int, int, str]] = ()) -> None:
        """/etc/passwd and /etc/group: root, nobody and the image's service users (name, uid, gid, home)."""
        users = [("root", 0, 0, "/root"), *extra, ("nobody", 65534, 65534, "/nonexistent")]
        self.text("/etc/passwd", "".join(
            f"{n}:x:{u}:{g}:{n}:{h}:{'/bin/sh' if u == 0 else '/sbin/nologin'}\n" for n, u, g, h in users))
        groups = {g: n for n, _u, g, _h in reversed(users)}
        self.text("/etc/group", "".join(f"{n}:x:{g}:\n" for g, n in sorted(groups.items())))

    def _libs(self, binary: Path) -> list[str]:
        key = str(binary)
        if key not in self._ldd:
            env = dict(os.environ, LD_LIBRARY_PATH=str(self.pkg("/usr/lib/x86_64-linux-gnu")))
            out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env, check=False)
            found: list[str] = []
            for line in out.stdout.splitlines():
                line = line.strip()
                if "=> not found" in line:
                    raise StandinError(f"{binary}: shared library {line.split()[0]} not found on this host")
                if "=>" in line:
                    path = line.split("=>", 1)[1].split("(")[0].strip()
                    if path:
                        found.append(path)
                elif line.startswith("/"):
                    found.append(line.split()[0])  # the dynamic loader
            self._ldd[key] = found
        return self._ldd[key]

    # -- the layer
    def all_entries(self) -> list[tuple[str, Entry]]:
        """Every entry plus the parent directories nobody declared, sorted (parents before children)."""
        out = dict(self.entries)
        for path in list(self.entries):
            parent = posixpath.dirname(path)
            while parent not in ("/", "") and parent not in out:
                out[parent] = Entry("dir")
                parent = posixpath.dirname(parent)
        return sorted(out.items())


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to `sink`."""

    def __init__(self, sink: IO[bytes] | Any) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)


def write_layer(fs: Rootfs, out: Path) -> tuple[str, str, int]:
    """The gzipped layer tar at `out`; returns (blob digest, diff_id, blob size)."""
    with open(out, "wb") as raw_file:
        blob = _Hashing(raw_file)
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=6)  # type: ignore[arg-type]
        diff = _Hashing(gz)
        with tarfile.open(fileobj=diff, mode="w|", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
            for path, e in fs.all_entries():
                ti = tarfile.TarInfo(path.lstrip("/"))
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = FIXED_MTIME, e.uid, e.gid, "", ""
                ti.mode = e.mode
                if e.kind == "dir":
                    ti.type = tarfile.DIRTYPE
                    tar.addfile(ti)
                elif e.kind == "symlink":
                    ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, e.target, 0o777
                    tar.addfile(ti)
                elif e.data is not None:
                    ti.size = len(e.data)
                    tar.addfile(ti, io.BytesIO(e.data))
                else:
                    assert e.src is not None
                    with open(e.src, "rb") as f:
                        ti.size = os.fstat(f.fileno()).st_size
                        tar.addfile(ti, f)
        gz.close()
    return f"sha256:{blob.sha.hexdigest()}", f"sha256:{diff.sha.hexdigest()}", blob.size


# --------------------------------------------------------------------------------------------------------
# Recipes (what each container must do: inkmcp/nodes/coolify_replay.yaml, sandbox_needs)


@dataclass
class ImageConfig:
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    stop_signal: str = ""
    note: str = ""


@dataclass(frozen=True)
class Recipe:
    ref: str  # the familiar name Coolify writes (docker.io/ is implied)
    repo: str  # the registry path (library/ for official images)
    tag: str
    build: Callable[[Rootfs], ImageConfig]

    @property
    def slug(self) -> str:
        return f"{self.repo.replace('/', '_')}-{self.tag}"


# A `serve` library for the busybox stand-ins: busybox httpd per port, PID 1 (this shell) traps TERM/INT
# so `docker stop` ends the container at once instead of after its 10 s grace (a shell that is PID 1 with
# no handler ignores SIGTERM).
SERVE_LIB = r"""# InkMCP stand-in helpers (inkmcp/nodes/standins.py)
serve() {  # serve DOCROOT PORT...: answer HTTP on every PORT until TERM/INT
  docroot=$1; shift
  pids=
  for port in "$@"; do
    httpd -f -p "$port" -h "$docroot" &
    pids="$pids $!"
  done
  trap 'kill $pids 2>/dev/null; exit 0' TERM INT
  wait
}
"""


def _base(fs: Rootfs, ref: str, users: Iterable[tuple[str, int, int, str]] = ()) -> None:
    """busybox, users, the stand-in marker. Note: Debian's busybox-static runs its own applet for a bare
    command name inside `sh` scripts whatever PATH says, so scripts call real programs that share an
    applet's name (setpriv) by absolute path."""
    fs.busybox()
    fs.users(users)
    fs.text("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
    fs.text(MARKER_FILE, f"InkMCP stand-in for docker.io/{ref} (inkmcp/nodes/standins.py); not the real image.\n")
    fs.text("/usr/local/lib/inkmcp-standin.sh", SERVE_LIB)


def traefik(fs: Rootfs) -> ImageConfig:
    """Coolify's proxy: stays up, answers HTTP on every entrypoint address its flags name (:80, :443 and
    the API's :8080 in Coolify's compose) and on /ping (the compose healthcheck: `wget -qO- http://localhost:80/ping`).
    TLS, routing and the Docker provider are not modelled; the flags are kept in /run/traefik-args."""
    _base(fs, "traefik:v3.6")
    fs.text("/srv/traefik/ping", "OK")
    fs.text("/srv/traefik/index.html", "InkMCP stand-in for traefik:v3.6\n")
    fs.script("/entrypoint.sh", """#!/bin/sh
# Traefik's image entrypoint: flags alone mean `traefik <flags>`.
if [ "${1#-}" != "$1" ]; then set -- traefik "$@"; fi
exec "$@"
""")
    fs.script("/usr/local/bin/traefik", r"""#!/bin/sh
. /usr/local/lib/inkmcp-standin.sh
printf '%s\n' "$@" > /run/traefik-args
ports=
for arg in "$@"; do
  case "$arg" in
    --entrypoints.*.address=*|--entryPoints.*.address=*) p=${arg##*:}; p=${p%%/*}; ports="$ports $p" ;;
    --api.dashboard=true|--api.insecure=true|--api=true) api=1 ;;
  esac
done
[ -n "$ports" ] || ports=80
# With the API on and no entrypoint named traefik, Traefik adds one on :8080 (Coolify maps 8080:8080).
case "$*" in *--entrypoints.traefik.*|*--entryPoints.traefik.*) ;; *) [ -z "${api:-}" ] || ports="$ports 8080" ;; esac
echo "traefik stand-in: answering HTTP on$ports"
serve /srv/traefik $ports
""")
    return ImageConfig(entrypoint=["/entrypoint.sh"], cmd=["traefik"], ports=["80/tcp"],
                       env={"PATH": BASE_PATH})


def coolify_helper(fs: Rootfs) -> ImageConfig:
    """The deploy/backup helper: tini + `tail -f /dev/null`, bash, the docker CLI with the compose and
    buildx plugins in /root/.docker/cli-plugins (as Coolify's image), git (+ http(s) remote helper; git-lfs
    a no-op), ssh, curl, gzip, and `mc` (a curl-based stand-in: `alias set` and `cp` with SigV4 signing)."""
    _base(fs, "coollabsio/coolify-helper:1.0.15")
    fs.host("/usr/bin/tini-static", "/sbin/tini")
    fs.host("/usr/bin/bash")
    fs.host(fs.pkg("/usr/bin/docker"), "/usr/bin/docker")
    fs.host(fs.pkg("/usr/libexec/docker/cli-plugins/docker-compose"), "/root/.docker/cli-plugins/docker-compose")
    fs.host(fs.pkg("/usr/libexec/docker/cli-plugins/docker-buildx"), "/root/.docker/cli-plugins/docker-buildx")
    fs.dir("/root/.docker", mode=0o755)
    fs.host("/usr/bin/git")
    fs.tree("/usr/lib/git-core")
    fs.tree("/usr/share/git-core/templates")
    fs.host("/usr/bin/ssh")
    fs.host("/usr/bin/curl")
    fs.host("/etc/ssl/certs/ca-certificates.crt")
    fs.dir("/artifacts")
    fs.script("/usr/bin/mc", MC_SCRIPT)
    # git-lfs is not in this host's package set: `git lfs ...` succeeds and fetches nothing.
    fs.script("/usr/bin/git-lfs", """#!/bin/sh
case "${1:-}" in
  version|--version) echo "git-lfs/3.6.1 (InkMCP stand-in: LFS objects are not fetched)" ;;
  *) echo "git-lfs (InkMCP stand-in): '$*' does nothing" >&2 ;;
esac
""")
    return ImageConfig(entrypoint=["/sbin/tini", "--"], cmd=["tail", "-f", "/dev/null"], workdir="/artifacts",
                       env={"PATH": BASE_PATH})


MC_SCRIPT = r"""#!/usr/bin/bash
# InkMCP stand-in for MinIO's `mc` in coollabsio/coolify-helper: the two calls Coolify's DatabaseBackupJob
# makes, as real S3 requests (curl --aws-sigv4):
#   mc alias set [--resolve HOST:PORT=IP] NAME URL ACCESS_KEY SECRET_KEY
#   mc cp FILE NAME/BUCKET/PREFIX/
set -euo pipefail
conf=${MC_CONFIG_DIR:-$HOME/.mc}/inkmcp-aliases
die() { echo "mc (InkMCP stand-in): $*" >&2; exit 1; }
case "${1:-}" in
  --version|-v) echo "mc version InkMCP-stand-in"; exit 0 ;;
  alias)
    [ "${2:-}" = set ] || die "only 'alias set' is modelled"
    shift 2
    resolve=
    args=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --resolve) resolve=$2; shift 2 ;;
        --resolve=*) resolve=${1#--resolve=}; shift ;;
        --api|--path) shift 2 ;;
        --*) shift ;;
        *) args+=("$1"); shift ;;
      esac
    done
    [ ${#args[@]} -eq 4 ] || die "alias set NAME URL ACCESS_KEY SECRET_KEY"
    mkdir -p "$conf"
    printf '%s\n' "${args[1]}" "${args[2]}" "${args[3]}" "$resolve" > "$conf/${args[0]}"
    echo "Added \`${args[0]}\` successfully."
    ;;
  cp)
    shift
    while [ "${1:-}" != "${1#--}" ]; do shift; done
    [ $# -eq 2 ] || die "cp FILE ALIAS/BUCKET/PATH"
    src=$1 dest=$2
    name=${dest%%/*}
    path=${dest#*/}
    [ -f "$conf/$name" ] || die "alias $name not set"
    { read -r url; read -r key; read -r secret; read -r resolve; } < "$conf/$name"
    case "$path" in */) path="$path$(basename "$src")" ;; esac
    opts=()
    if [ -n "$resolve" ]; then opts+=(--resolve "${resolve/=/:}"); fi
    curl -fsS "${opts[@]}" --aws-sigv4 "aws:amz:us-east-1:s3" --user "$key:$secret" -T "$src" \
      "${url%/}/$path" >/dev/null
    echo "\`$src\` -> \`$dest\`"
    ;;
  *) die "only 'alias set' and 'cp' are modelled (got: $*)" ;;
esac
"""


def sablier(fs: Rootfs) -> ImageConfig:
    """Sablier: `start --provider.name=docker` stays up and answers /health on :10000; like the real one it
    exits when the Docker provider has no socket at /var/run/docker.sock."""
    _base(fs, "sablierapp/sablier:1.16.2")
    fs.text("/srv/sablier/health", "OK")
    fs.script("/usr/local/bin/sablier", r"""#!/bin/sh
. /usr/local/lib/inkmcp-standin.sh
provider=docker
cmd=
for arg in "$@"; do
  case "$arg" in
    --provider.name=*) provider=${arg#*=} ;;
    start|version|health) cmd=$arg ;;
  esac
done
case "$cmd" in
  version) echo "sablier 1.16.2 (InkMCP stand-in)"; exit 0 ;;
  health) wget -qO- http://127.0.0.1:10000/health; exit $? ;;
  start) ;;
  *) echo "usage: sablier start [--provider.name=docker]" >&2; exit 1 ;;
esac
if [ "$provider" = docker ] && [ ! -S /var/run/docker.sock ]; then
  echo "level=error msg=\"cannot create docker provider: Cannot connect to the Docker daemon at" \
    "unix:///var/run/docker.sock\"" >&2
  exit 1
fi
echo "sablier stand-in: provider $provider, listening on :10000"
serve /srv/sablier 10000
""")
    return ImageConfig(entrypoint=["/usr/local/bin/sablier"], cmd=["start"], ports=["10000/tcp"],
                       env={"PATH": BASE_PATH})


def sentinel(fs: Rootfs) -> ImageConfig:
    """Coolify's Sentinel: answers /api/health and /api/version on :8888; has curl for its healthcheck."""
    _base(fs, "coollabsio/sentinel:0.0.22")
    fs.host("/usr/bin/curl")
    fs.text("/srv/sentinel/api/health", "ok")
    fs.text("/srv/sentinel/api/version", "0.0.22")
    fs.script("/app/sentinel", """#!/bin/sh
. /usr/local/lib/inkmcp-standin.sh
echo "sentinel stand-in: listening on :8888"
serve /srv/sentinel 8888
""")
    return ImageConfig(cmd=["/app/sentinel"], workdir="/app", ports=["8888/tcp"], env={"PATH": BASE_PATH})


def nginx(fs: Rootfs) -> ImageConfig:
    """A tenant web app (the replay's app image): answers HTTP on :80."""
    _base(fs, "nginx:1.27-alpine", [("nginx", 101, 101, "/var/cache/nginx")])
    fs.text("/usr/share/nginx/html/index.html",
            "<h1>Welcome to nginx!</h1><p>InkMCP stand-in for nginx:1.27-alpine</p>\n")
    fs.script("/docker-entrypoint.sh", '#!/bin/sh\nexec "$@"\n')
    fs.script("/usr/sbin/nginx", """#!/bin/sh
. /usr/local/lib/inkmcp-standin.sh
serve /usr/share/nginx/html 80
""")
    return ImageConfig(entrypoint=["/docker-entrypoint.sh"], cmd=["nginx", "-g", "daemon off;"], ports=["80/tcp"],
                       stop_signal="SIGQUIT", env={"PATH": BASE_PATH})


PG_BIN = "/usr/lib/postgresql/15/bin"
PG_TOOLS = ("postgres", "initdb", "pg_ctl", "psql", "pg_dump", "pg_dumpall", "pg_restore", "pg_isready",
            "createdb", "createuser")

POSTGRES_ENTRYPOINT = r"""#!/bin/sh
# The postgres image's entrypoint contract (docker-library/postgres docker-entrypoint.sh), in busybox sh:
# flags alone mean `postgres <flags>`; as root, own $PGDATA and re-exec as postgres; on an empty $PGDATA,
# initdb with POSTGRES_USER/POSTGRES_PASSWORD, allow password logins from the network, start a temporary
# server on a private socket with the same arguments (so a custom config_file applies), create POSTGRES_DB, run
# /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz in order, stop it; then exec the server.
set -e
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chmod 00700 "$PGDATA"
  find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
  chown postgres:postgres /var/run/postgresql
  chmod 03775 /var/run/postgresql
  exec /usr/bin/setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
quote() { printf "'%s' " "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
  if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
    echo "Error: Database is uninitialized and superuser password is not specified." >&2
    echo "       You must specify POSTGRES_PASSWORD to a non-empty value for the superuser." >&2
    exit 1
  fi
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  # shellcheck disable=SC2086
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --no-locale $POSTGRES_INITDB_ARGS -D "$PGDATA"
  rm -f "$pwfile"
  printf '\nhost all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >> "$PGDATA/pg_hba.conf"
  shift
  opts=
  for a in "$@"; do opts="$opts$(quote "$a")"; done
  # Unlike the official script, the temporary server's socket is private: a healthcheck (psql or
  # pg_isready on the default socket) cannot report healthy before the real server is up.
  init_sock=$(mktemp -d)
  PGUSER=$POSTGRES_USER pg_ctl -D "$PGDATA" -o "$opts -c listen_addresses='' -p 5432 -k $init_sock" -w start
  psql="psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc"
  export PGUSER="$POSTGRES_USER" PGPASSWORD="$POSTGRES_PASSWORD" PGHOST="$init_sock"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo 'CREATE DATABASE :"db" ;' | $psql --dbname postgres --set db="$POSTGRES_DB"
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) if [ -x "$f" ]; then echo "running $f"; "$f"; else echo "sourcing $f"; . "$f"; fi ;;
      *.sql) echo "running $f"; $psql --dbname "$POSTGRES_DB" -f "$f" ;;
      *.sql.gz) echo "running $f"; gunzip -c "$f" | $psql --dbname "$POSTGRES_DB" ;;
      */\*) ;;
      *) echo "ignoring $f" ;;
    esac
  done
  unset PGPASSWORD
  PGUSER=$POSTGRES_USER pg_ctl -D "$PGDATA" -m fast -w stop
  unset PGHOST
  rmdir "$init_sock"
  echo "PostgreSQL init process complete; ready for start up."
  set -- postgres "$@"
fi
exec "$@"
"""


def postgres(fs: Rootfs) -> ImageConfig:
    """postgres:16-alpine, Coolify's default standalone PostgreSQL, as Debian 12's PostgreSQL 15 with the
    image's entrypoint contract (initdb, initdb.d scripts, custom config_file, ssl flags) and its tools on
    PATH; the server and pg_dump are real. The postgres user is uid/gid 70 as in the -alpine images (Coolify
    chowns the SSL key to postgres:postgres through the image)."""
    _base(fs, "postgres:16-alpine", [("postgres", 70, 70, "/var/lib/postgresql")])
    fs.tree("/usr/lib/postgresql/15")
    fs.tree("/usr/share/postgresql/15")
    fs.tree("/usr/share/zoneinfo", libs=False)
    fs.host("/usr/bin/setpriv")
    for tool in PG_TOOLS:
        fs.symlink(f"/usr/local/bin/{tool}", f"{PG_BIN}/{tool}")
    fs.dir("/var/lib/postgresql", mode=0o755, uid=70, gid=70)
    fs.dir("/var/lib/postgresql/data", mode=0o777, uid=70, gid=70)
    fs.dir("/var/run/postgresql", mode=0o3775, uid=70, gid=70)
    fs.dir("/docker-entrypoint-initdb.d")
    fs.script("/usr/local/bin/docker-entrypoint.sh", POSTGRES_ENTRYPOINT)
    return ImageConfig(entrypoint=["docker-entrypoint.sh"], cmd=["postgres"], ports=["5432/tcp"],
                       volumes=["/var/lib/postgresql/data"], stop_signal="SIGINT",
                       env={"PATH": BASE_PATH, "PGDATA": "/var/lib/postgresql/data", "PG_MAJOR": "16"},
                       note="PostgreSQL 15 (Debian 12) under the postgres:16-alpine name")


REDIS_ENTRYPOINT = r"""#!/bin/sh
# The redis image's entrypoint contract (docker-library/redis docker-entrypoint.sh): flags or a .conf file
# alone mean `redis-server ...`; as root, own the working dir and re-exec as redis; protected mode off
# unless a config file decides it; umask 0077.
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec /usr/bin/setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
if [ "$1" = redis-server ]; then
  protected=1
  if [ -f "${2:-}" ] && grep -q '^protected-mode' "$2"; then protected=; fi
  if [ -n "$protected" ]; then set -- "$@" --protected-mode no; fi
fi
umask 0077
exec "$@"
"""


def redis(fs: Rootfs) -> ImageConfig:
    """redis:7.2, Coolify's default standalone Redis, as Debian 12's Redis 7.0 (real server with TLS, and
    redis-cli for the `redis-cli ping` healthcheck); user redis is 999:999 as in the official image."""
    _base(fs, "redis:7.2", [("redis", 999, 999, "/data")])
    fs.host(fs.pkg("/usr/bin/redis-check-aof"), "/usr/local/bin/redis-server")  # one binary, named by argv[0]
    fs.host(fs.pkg("/usr/bin/redis-cli"), "/usr/local/bin/redis-cli")
    fs.host("/usr/bin/setpriv")
    fs.dir("/data", mode=0o755, uid=999, gid=999)
    fs.script("/usr/local/bin/docker-entrypoint.sh", REDIS_ENTRYPOINT)
    return ImageConfig(entrypoint=["docker-entrypoint.sh"], cmd=["redis-server"], workdir="/data",
                       ports=["6379/tcp"], volumes=["/data"], env={"PATH": BASE_PATH},
                       note="Redis 7.0 (Debian 12) under the redis:7.2 name")


MONGO_ENTRYPOINT = r"""#!/bin/sh
# The mongo image's entrypoint contract as far as Coolify's commands reach it (there is no MongoDB in
# Debian, so the server is a stand-in): flags alone mean `mongod ...`; `--config FILE` must exist and its
# net.port is honoured (else --port, else 27017); on a fresh /data/db the /docker-entrypoint-initdb.d
# scripts run once (*.sh executed or sourced, *.js handed to the mongosh stand-in, which records them in
# /data/db/inkmcp-initdb.log); then the port answers like mongod does to HTTP.
set -e
if [ "${1#-}" != "$1" ]; then set -- mongod "$@"; fi
[ "$1" = mongod ] || exec "$@"
shift
port=27017
conf=
while [ $# -gt 0 ]; do
  case "$1" in
    --config|-f) conf=$2; shift 2 ;;
    --config=*) conf=${1#*=}; shift ;;
    --port) port=$2; shift 2 ;;
    --port=*) port=${1#*=}; shift ;;
    *) shift ;;
  esac
done
if [ -n "$conf" ]; then
  if [ ! -r "$conf" ]; then
    echo "Error reading config file: No such file or directory ($conf)" >&2
    exit 1
  fi
  p=$(awk '/^[^ #]/ {sec=$1} sec=="net:" && $1=="port:" {print $2}' "$conf")
  [ -z "$p" ] || port=$p
fi
mkdir -p /data/db /data/configdb
if [ ! -f /data/db/inkmcp-initialized ]; then
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) if [ -x "$f" ]; then "$f"; else . "$f"; fi; echo "ran $f" >> /data/db/inkmcp-initdb.log ;;
      *.js) mongosh --file "$f" ;;
      */\*) ;;
      *) echo "ignoring $f" ;;
    esac
  done
  : > /data/db/inkmcp-initialized
fi
echo "$port" > /run/mongod.port
. /usr/local/lib/inkmcp-standin.sh
echo "mongod stand-in: listening on :$port"
serve /srv/mongod "$port"
"""

MONGOSH = r"""#!/bin/sh
# mongosh stand-in: a ping/hello (from --eval, or on stdin as in Coolify's newer healthcheck
# `echo 'db.runCommand("ping").ok' | mongosh ... --quiet`) answers when the server stand-in is up: `1` for
# an expression ending in .ok, else { ok: 1 }. `--file F` records F as run (initdb). Anything else fails.
file= eval= seen_eval=
while [ $# -gt 0 ]; do
  case "$1" in
    --file|-f) file=$2; shift 2 ;;
    --eval) eval=$2; seen_eval=1; shift 2 ;;
    *) shift ;;
  esac
done
if [ -n "$file" ]; then echo "ran $file" >> /data/db/inkmcp-initdb.log; exit 0; fi
[ -n "$seen_eval" ] || [ -t 0 ] || eval=$(cat)
case "$eval" in
  *ping*|*hello*|*isMaster*)
    port=$(cat /run/mongod.port 2>/dev/null || echo 27017)
    if ! wget -qO /dev/null "http://127.0.0.1:$port/"; then
      echo "MongoNetworkError: connect ECONNREFUSED 127.0.0.1:$port" >&2; exit 1
    fi
    case "$eval" in *.ok|*.ok\;|*.ok\)) echo 1 ;; *) echo "{ ok: 1 }" ;; esac
    exit 0 ;;
esac
echo "mongosh (InkMCP stand-in): only ping/hello and --file are modelled" >&2
exit 2
"""

MONGODUMP = r"""#!/bin/sh
# mongodump stand-in: --archive[=FILE] [--gzip] writes a tar of /data/db (stdout without FILE).
out=/dev/stdout gz=
for a in "$@"; do
  case "$a" in
    --archive=*) out=${a#--archive=} ;;
    --gzip) gz=1 ;;
  esac
done
if [ -n "$gz" ]; then tar -C /data -c db | gzip > "$out"; else tar -C /data -c db > "$out"; fi
echo "done dumping (InkMCP stand-in)" >&2
"""


def mongo(fs: Rootfs) -> ImageConfig:
    """mongo:7 (Coolify's default standalone MongoDB): a process stand-in, see MONGO_ENTRYPOINT."""
    _base(fs, "mongo:7", [("mongodb", 999, 999, "/data/db")])
    fs.text("/srv/mongod/index.html",
            "It looks like you are trying to access MongoDB over HTTP on the native driver port.\n")
    fs.script("/usr/local/bin/docker-entrypoint.sh", MONGO_ENTRYPOINT)
    fs.script("/usr/bin/mongosh", MONGOSH)
    fs.script("/usr/bin/mongodump", MONGODUMP)
    fs.dir("/data/db", mode=0o755, uid=999, gid=999)
    fs.dir("/data/configdb", mode=0o755, uid=999, gid=999)
    fs.dir("/docker-entrypoint-initdb.d")
    return ImageConfig(entrypoint=["docker-entrypoint.sh"], cmd=["mongod"], ports=["27017/tcp"],
                       volumes=["/data/db", "/data/configdb"], env={"PATH": BASE_PATH},
                       note="process stand-in: no MongoDB server")


RECIPES: tuple[Recipe, ...] = (
    Recipe("traefik:v3.6", "library/traefik", "v3.6", traefik),
    Recipe("coollabsio/coolify-helper:1.0.15", "coollabsio/coolify-helper", "1.0.15", coolify_helper),
    Recipe("sablierapp/sablier:1.16.2", "sablierapp/sablier", "1.16.2", sablier),
    Recipe("coollabsio/sentinel:0.0.22", "coollabsio/sentinel", "0.0.22", sentinel),
    Recipe("postgres:16-alpine", "library/postgres", "16-alpine", postgres),
    Recipe("redis:7.2", "library/redis", "7.2", redis),
    Recipe("mongo:7", "library/mongo", "7", mongo),
    Recipe("nginx:1.27-alpine", "library/nginx", "1.27-alpine", nginx),
)


# --------------------------------------------------------------------------------------------------------
# Build (cached) and push


@dataclass(frozen=True)
class Built:
    """One built image in the cache: its directory holds manifest.json, config.json and layer.tar.gz."""

    ref: str
    repo: str
    tag: str
    dir: Path
    digest: str  # manifest digest = the repo digest `docker pull` reports
    image_id: str  # config digest = `docker image inspect --format '{{.Id}}'` on the classic store

    def as_json(self) -> dict[str, str]:
        return {"ref": self.ref, "repo": self.repo, "tag": self.tag, "dir": str(self.dir), "digest": self.digest,
                "image_id": self.image_id}


def _config_json(recipe: Recipe, cfg: ImageConfig, diff_id: str) -> bytes:
    labels = {STANDIN_LABEL: "true", STANDIN_FOR_LABEL: f"docker.io/{recipe.ref}",
              "org.opencontainers.image.description": f"InkMCP stand-in for {recipe.ref}"
              + (f" ({cfg.note})" if cfg.note else "")}
    conf: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in cfg.env.items()], "Labels": labels}
    if cfg.entrypoint is not None:
        conf["Entrypoint"] = cfg.entrypoint
    if cfg.cmd is not None:
        conf["Cmd"] = cfg.cmd
    if cfg.workdir:
        conf["WorkingDir"] = cfg.workdir
    if cfg.ports:
        conf["ExposedPorts"] = {p: {} for p in cfg.ports}
    if cfg.volumes:
        conf["Volumes"] = {v: {} for v in cfg.volumes}
    if cfg.stop_signal:
        conf["StopSignal"] = cfg.stop_signal
    doc = {
        "architecture": "amd64", "os": "linux", "created": FIXED_CREATED, "config": conf,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": FIXED_CREATED, "created_by": f"inkmcp/nodes/standins.py {recipe.build.__name__}"}],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _key(recipe: Recipe, fs: Rootfs) -> str:
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(recipe.ref.encode())
    for item in sorted(set(fs.inputs)):
        h.update(repr(item).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(recipe: Recipe, pkg_root: Path, cache: Path) -> Built:
    """The recipe's image in CACHE/standins (built now unless an identical build is there)."""
    fs = Rootfs(pkg_root)
    cfg = recipe.build(fs)
    key = _key(recipe, fs)
    base = cache / "standins"
    out = base / f"{recipe.slug}-{key}"
    with _locked(base / f".{recipe.slug}.lock"):
        if not (out / "meta.json").exists():
            tmp = base / f".{recipe.slug}-{key}.{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            fs.resolve_libs()
            layer_digest, diff_id, layer_size = write_layer(fs, tmp / "layer.tar.gz")
            config = _config_json(recipe, cfg, diff_id)
            (tmp / "config.json").write_bytes(config)
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                "config": {"mediaType": CONFIG_TYPE, "size": len(config),
                           "digest": f"sha256:{hashlib.sha256(config).hexdigest()}"},
                "layers": [{"mediaType": LAYER_TYPE, "size": layer_size, "digest": layer_digest}],
            }, indent=3).encode()
            (tmp / "manifest.json").write_bytes(manifest)
            meta = {"ref": recipe.ref, "digest": f"sha256:{hashlib.sha256(manifest).hexdigest()}",
                    "image_id": f"sha256:{hashlib.sha256(config).hexdigest()}", "layer": layer_digest}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            tmp.rename(out)
            for old in base.glob(f"{recipe.slug}-*"):  # earlier builds of this recipe
                if old != out and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
    meta = json.loads((out / "meta.json").read_text())
    return Built(recipe.ref, recipe.repo, recipe.tag, out, meta["digest"], meta["image_id"])


def build_all(pkg_root: Path, cache: Path) -> list[Built]:
    return [build(r, pkg_root, cache) for r in RECIPES]


def push(images: list[Built], registry: str, timeout: float = 30.0) -> dict[str, str]:
    """Upload each image's blobs (unless the registry has them) and put its manifest under its tag.

    Returns {ref: digest}, checked against the registry's Docker-Content-Digest. Waits up to `timeout`
    for the registry to answer first (it is started just before).
    """
    import httpx

    out: dict[str, str] = {}
    with httpx.Client(base_url=registry, timeout=60.0) as client:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.get("/v2/").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise StandinError(f"registry {registry} did not answer /v2/ within {timeout:.0f} s")
            time.sleep(0.1)
        for img in images:
            manifest = (img.dir / "manifest.json").read_bytes()
            doc = json.loads(manifest)
            for desc, name in ((doc["config"], "config.json"), (doc["layers"][0], "layer.tar.gz")):
                digest = desc["digest"]
                if client.head(f"/v2/{img.repo}/blobs/{digest}").status_code == 200:
                    continue
                start = client.post(f"/v2/{img.repo}/blobs/uploads/")
                if start.status_code != 202:
                    raise StandinError(f"registry refused an upload to {img.repo}: {start.status_code} {start.text}")
                location = start.headers["Location"]
                # The upload URL carries the registry's own state in its query: append, never replace it.
                url = f"{location}{'&' if '?' in location else '?'}digest={digest}"
                with open(img.dir / name, "rb") as f:
                    put = client.put(url, content=f.read(), headers={"Content-Type": "application/octet-stream"})
                if put.status_code != 201:
                    raise StandinError(f"upload of {img.ref} {name} failed: {put.status_code} {put.text}")
            put = client.put(f"/v2/{img.repo}/manifests/{img.tag}", content=manifest,
                             headers={"Content-Type": MANIFEST_TYPE})
            if put.status_code != 201:
                raise StandinError(f"manifest of {img.ref} refused: {put.status_code} {put.text}")
            got = put.headers.get("Docker-Content-Digest", "")
            if got != img.digest:
                raise StandinError(f"{img.ref}: registry stored manifest {got}, built {img.digest}")
            out[img.ref] = got
    return out


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m inkmcp.nodes.standins")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("push", help="push built stand-ins (cache dirs) to a registry; prints {ref: digest}")
    p.add_argument("--registry", required=True, help="e.g. http://127.0.0.1:5000")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("builds", nargs="+", type=Path)
    args = parser.parse_args(argv)
    images = []
    for d in args.builds:
        meta = json.loads((d / "meta.json").read_text())
        repo, _, tag = next((r.repo, "", r.tag) for r in RECIPES if r.ref == meta["ref"])
        images.append(Built(meta["ref"], repo, tag, d, meta["digest"], meta["image_id"]))
    try:
        print(json.dumps(push(images, args.registry, args.timeout)))
    except StandinError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
