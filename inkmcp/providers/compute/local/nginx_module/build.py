"""Build InkMCP's nginx module for the installed nginx; standard library only, so `make install` can run it with the
system's python3 while the Python packages install (it does not import the inkmcp package):

    python3 inkmcp/providers/compute/local/nginx_module/build.py [--nginx PATH] [DIR]     # as root

See the package's docstring (__init__.py) for why and how. The build's file name is `module_name(nginx)`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "ngx_http_inkmcp_module.c", HERE / "config")
PACKAGE_BIN = HERE.parent / "_bin"  # where `make install` puts the build (git-ignored, like inkmcp-spawn)
DEBIAN_SRC = Path("/usr/share/nginx/src")  # nginx-dev's source tree, when the package is installed
BUILD_TIMEOUT = 600.0


_lock = threading.Lock()
_version_cache: dict[tuple[str, int, int], str] = {}


def nginx_version_output(nginx: Path) -> str:
    """`nginx -V` (version and configure arguments), cached per binary file (path, inode, mtime)."""
    st = nginx.stat()
    key = (str(nginx), st.st_ino, st.st_mtime_ns)
    with _lock:
        if key in _version_cache:
            return _version_cache[key]
    done = subprocess.run([str(nginx), "-V"], capture_output=True, text=True, timeout=30, check=False)
    out = done.stderr + done.stdout
    if done.returncode != 0 or "nginx version:" not in out:
        raise RuntimeError(f"`{nginx} -V` failed: {out.strip()[-300:]}")
    with _lock:
        _version_cache[key] = out
    return out


def module_name(nginx: Path) -> str:
    """The build's file name for this binary: the module's source and the binary's `nginx -V`, hashed."""
    digest = hashlib.sha256()
    for src in SOURCES:
        digest.update(src.read_bytes())
    digest.update(nginx_version_output(nginx).encode())
    return f"ngx_http_inkmcp_module-{digest.hexdigest()[:16]}.so"


def _trusted(path: Path, *, directory: bool) -> bool:
    """nginx's master loads the module as root: owned by root or by us, and writable by nobody else."""
    try:
        st = path.stat() if directory else path.lstat()
    except OSError:
        return False
    kind = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    return kind and st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022


# -- the build ----------------------------------------------------------------------------------------


def _run(argv: list[str], cwd: Path, what: str) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-1500:]
        raise RuntimeError(f"{what} failed ({shlex.join(argv[:3])}...): {tail}")
    return done.stdout


def _binary_opts(version_output: str) -> list[str]:
    """The binary's own --with-cc-opt / --with-ld-opt (hardening flags), from `nginx -V`."""
    line = next((ln for ln in version_output.splitlines() if ln.startswith("configure arguments:")), "")
    return [a for a in shlex.split(line.partition(":")[2]) if a.startswith(("--with-cc-opt=", "--with-ld-opt="))]


def _conf_flags(src: Path) -> list[str]:
    """nginx-dev's conf_flags (a bash array `NGX_CONF_FLAGS=( ... )`): the configure flags of a compatible module."""
    text = (src / "conf_flags").read_text()
    m = re.search(r"NGX_CONF_FLAGS=\((.*?)\)", text, re.S)
    if m is None:
        raise RuntimeError(f"{src / 'conf_flags'} has no NGX_CONF_FLAGS=( ... )")
    return shlex.split(m.group(1))


def _source_version(src: Path) -> str:
    m = re.search(r'#define NGINX_VERSION\s+"([^"]+)"', (src / "src/core/nginx.h").read_text())
    if m is None:
        raise RuntimeError(f"no NGINX_VERSION in {src / 'src/core/nginx.h'}")
    return m.group(1)


def _debian_package(nginx: Path) -> tuple[str, str]:
    """(package, version) that installed `nginx`, from dpkg's database."""
    real = nginx.resolve()
    for path in dict.fromkeys((str(nginx), str(real))):
        done = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            pkg = done.stdout.split(":", 1)[0].strip()
            ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True,
                                 check=True).stdout.strip()  # fmt: skip
            return pkg, ver
    raise RuntimeError(f"{nginx} is not from a Debian package (dpkg-query -S): the module is built from the "
                       "nginx-dev source of the installed package's version")  # fmt: skip


def _fetch_source(nginx: Path, work: Path, want: str) -> Path:
    """nginx's source for `want` (e.g. 1.22.1): nginx-dev's tree if installed and matching, else the nginx-dev
    .deb of the installed nginx package's exact version, downloaded with apt and unpacked (not installed)."""
    if (DEBIAN_SRC / "conf_flags").is_file() and _source_version(DEBIAN_SRC) == want:
        dest = work / "src"
        shutil.copytree(DEBIAN_SRC, dest, symlinks=True)
        return dest
    _pkg, version = _debian_package(nginx)
    debs = work / "debs"
    debs.mkdir()
    # apt's download sandbox user (_apt) cannot write into our private temp dir; the file comes from apt's
    # configured, signature-checked archive either way.
    download = ["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", f"nginx-dev={version}"]
    try:
        _run(download, debs, f"downloading nginx-dev {version}")
    except RuntimeError:  # stale package lists: refresh once, as scripts/apt-install-missing.sh does
        subprocess.run(["apt-get", "-qq", "update"], capture_output=True, timeout=BUILD_TIMEOUT, check=False)
        _run(download, debs, f"downloading nginx-dev {version} (the installed nginx's version; if apt no longer "
             f"has it, upgrade nginx with `apt-get install --only-upgrade {_pkg}` and build again)")  # fmt: skip
    deb = next(debs.glob("nginx-dev_*.deb"), None)
    if deb is None:
        raise RuntimeError(f"apt-get download nginx-dev={version} left no .deb")
    root = work / "deb"
    _run(["dpkg-deb", "-x", str(deb), str(root)], work, "unpacking nginx-dev")
    src = root / DEBIAN_SRC.relative_to("/")
    got = _source_version(src)
    if got != want:
        raise RuntimeError(f"nginx-dev {version} has nginx {got}, the binary is {want}")
    return src


def build(nginx: Path = Path("/usr/sbin/nginx"), dest_dir: Path = PACKAGE_BIN) -> Path:
    """Compile the module for `nginx` into `dest_dir` (atomically; a build for this binary already there is kept),
    check that this nginx loads it, and return its path. RuntimeError says what is missing."""
    name = module_name(nginx)
    target = dest_dir / name
    if target.is_file() and _trusted(target, directory=False):
        return target
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or shutil.which("make") is None:
        raise RuntimeError("no C compiler or make: install gcc and make (scripts/system-deps.sh installs gcc)")
    out = nginx_version_output(nginx)
    m = re.search(r"nginx version: nginx/(\S+)", out)
    if m is None:
        raise RuntimeError(f"cannot read the version of {nginx}: {out.strip()[:200]}")
    with tempfile.TemporaryDirectory(prefix="inkmcp-nginx-module.") as tmp:
        work = Path(tmp)
        src = _fetch_source(nginx, work, m.group(1))
        mod = work / "module"
        mod.mkdir()
        for f in SOURCES:
            shutil.copy2(f, mod / f.name)
        _run(["./configure", *_conf_flags(src), *_binary_opts(out), f"--add-dynamic-module={mod}"], src,
             "nginx's configure (needs libpcre2-dev, libssl-dev, zlib1g-dev: scripts/system-deps.sh)")  # fmt: skip
        _run(["make", "-f", "objs/Makefile", f"-j{os.cpu_count() or 1}", "modules"], src, "compiling the module")
        built = src / "objs" / "ngx_http_inkmcp_module.so"
        check_loads(nginx, built, work)
        dest_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, part = tempfile.mkstemp(prefix=".ngx_http_inkmcp_module.", dir=dest_dir)
        os.close(fd)
        try:
            shutil.copyfile(built, part)
            os.chmod(part, 0o644)
            os.replace(part, target)
        finally:
            Path(part).unlink(missing_ok=True)
    return target


def check_loads(nginx: Path, module: Path, work: Path) -> None:
    """`nginx -t` with a config that loads `module` and uses its directives: proof this binary accepts it."""
    conf = work / "check.conf"
    conf.write_text(
        f"load_module {module};\npid {work}/check.pid;\nerror_log {work}/check.log;\nevents {{}}\n"
        f"http {{ inkmcp_server_header on; inkmcp_inherited_nodelay on; inkmcp_host_check on;\n"
        f"  proxy_set_header X-Forwarded-For $inkmcp_forwarded;\n"
        f"  server {{ listen unix:{work}/check.sock; }} }}\n"
    )
    _run([str(nginx), "-t", "-q", "-p", str(work), "-e", str(work / "check.log"), "-c", str(conf)], work,
         f"loading the module into {nginx} (nginx -t)")  # fmt: skip


def main() -> None:
    import argparse
    import sys
    import time

    ap = argparse.ArgumentParser(prog="build.py", description="Build InkMCP's nginx module for the installed nginx.")
    ap.add_argument("--nginx", type=Path, default=Path(os.environ.get("INKMCP_PROXY_NGINX") or "/usr/sbin/nginx"),
                    help="the nginx binary to build for (default: $INKMCP_PROXY_NGINX or %(default)s)")
    ap.add_argument("dir", nargs="?", type=Path, default=PACKAGE_BIN, help="where to put it (default: %(default)s)")
    args = ap.parse_args()
    started = time.monotonic()
    try:
        path = build(args.nginx, args.dir)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        sys.exit(f"could not build InkMCP's nginx module: {exc}")
    print(f"{path} ({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
