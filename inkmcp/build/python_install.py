"""Python builds: which installer a repo asks for, which interpreter, and what a failed Django step meant.

Pure decisions (no subprocess except the interpreter census), executed by `inkmcp.build.buildpack`.

Installer precedence, when a repo carries several dependency files (documented for users; it is
Heroku's classic buildpack order, which users of that platform already know):
  1. `Pipfile.lock`       Pipenv: the `default` section, exact versions and hashes, no resolution
  2. `requirements.txt`   pip: `uv pip install -r requirements.txt`
  3. `poetry.lock`        Poetry: the main dependencies at the locked versions (see below)
  4. `uv.lock`            uv: `uv export --frozen --no-default-groups`, installed as exported
  5. `pyproject.toml` with `[project].dependencies`, else `setup.py` / a build backend: `uv pip install`;
     a Poetry project without poetry.lock, or a Pipfile without Pipfile.lock: the manifest's constraints
     resolved anew (Poetry's `^`/`~` translated to PEP 440), with a log line saying nothing is pinned
A `requirements.txt` next to a lock file is nearly always an export of that lock kept for platforms that
read only pip, so both give the same versions; the build log names the file used and the ones ignored.

Poetry without Poetry: installing Poetry per build costs ~30 packages and seconds, and `pip install .`
fails on Poetry layouts that are not installable packages (the app is run from its directory, never
installed). Instead the root's main dependencies (`[tool.poetry.dependencies]`, or `[project]
.dependencies` for Poetry 2) are installed with every package of `poetry.lock` as a constraint
`name==version --hash=...`: uv resolves markers and extras itself, each package gets exactly its locked
version and file hash (a wrong hash fails the build), dev groups are never asked for, and lock formats
1.1 (`[metadata.files]`), 2.0 (no groups) and 2.1 read alike. Git, URL and path dependencies are taken
from the lock's `[package.source]` (the resolved commit for git).

A build_command replaces the install step when it runs an installer itself (`pip install`, `uv sync`,
`uv pip install`; `poetry install` / `pipenv sync` only when the command installs that tool first, since
neither is on this server), directly or in a repo script it runs (`./build.sh`). Poetry and Pipenv apps
get `poetry` / `pipenv` shims in the venv: `install`/`sync` are no-ops after the lock's install, `run X`
runs X (start commands like `poetry run gunicorn app:app`).

Python version: the first of `PYTHON_VERSION` in the service env (Render's variable; lets an agent
override the repo without a commit), `.python-version`, `runtime.txt` (`python-3.11.7`), `Pipfile.lock`
`_meta.requires`, `requires-python` / Poetry's `python` constraint picks one of the interpreters on this
server (the operator's default first; `python3.X` in `INKMCP_PYTHON_SEARCH_PATH`, as uv finds them).
A version with a patch number is met by another patch of the same minor version (patch releases are
compatible), preferring the exact one; nothing is ever downloaded (`--no-python-downloads`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.errors import BuildFailed


class PythonBuildSettings(BaseSettings):
    """Operator settings of Python builds (environment: INKMCP_PYTHON_*)."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_PYTHON_")

    search_path: str = Field(
        default="/usr/local/bin:/usr/bin:/bin",
        description="directories (colon-separated) searched for python3.X interpreters a repo may ask for; "
        "each must be root-owned and not writable by others to count",
    )


class Repo(Protocol):
    """Read access to the app's files (inkmcp.build.buildpack.RepoFiles)."""

    def read(self, name: str) -> bytes | None: ...

    def has(self, name: str) -> bool: ...


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _toml(repo: Repo, name: str) -> dict[str, object] | None:
    raw = repo.read(name)
    if raw is None:
        return None
    try:
        return tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BuildFailed(
            f"{name} is not valid TOML: {exc}.", argument="repo_url",
            fix=f"fix {name} (regenerate it with its tool), commit and push, then deploy again",
        ) from None  # fmt: skip


# --- which installer --------------------------------------------------------------------------


@dataclass(frozen=True)
class Installer:
    """How the dependencies get installed."""

    kind: str  # pipenv | pip | poetry | uv | pyproject | package | none
    file: str | None  # the file it installs from
    ignored: tuple[str, ...] = ()  # other dependency files present but not used

    def describe(self) -> str:
        names = {"pipenv": "Pipenv", "pip": "pip", "poetry": "Poetry", "uv": "uv",
                 "pyproject": "pyproject.toml dependencies", "package": "the project's build backend"}  # fmt: skip
        text = f"installing dependencies from {self.file} ({names.get(self.kind, self.kind)})"
        if self.ignored:
            text += f"; also found {', '.join(self.ignored)}, not used (precedence: Pipfile.lock, requirements.txt, " \
                    "poetry.lock, uv.lock)"
        return text


_LOCKS = (("Pipfile.lock", "pipenv"), ("requirements.txt", "pip"), ("poetry.lock", "poetry"), ("uv.lock", "uv"))


def choose_installer(repo: Repo) -> Installer:
    """The installer for this repo (precedence in the module doc)."""
    found = [(name, kind) for name, kind in _LOCKS if repo.has(name)]
    if found:
        (name, kind), rest = found[0], tuple(n for n, _ in found[1:])
        return Installer(kind=kind, file=name, ignored=rest)
    if repo.has("pyproject.toml"):
        data = _toml(repo, "pyproject.toml") or {}
        project = data.get("project")
        if isinstance(project, dict) and "dependencies" in project:
            return Installer(kind="pyproject", file="pyproject.toml")
        tool = data.get("tool")
        if isinstance(tool, dict) and isinstance(tool.get("poetry"), dict):
            return Installer(kind="poetry-unlocked", file="pyproject.toml")
        return Installer(kind="package", file="pyproject.toml")
    if repo.has("setup.py"):
        return Installer(kind="package", file="setup.py")
    if repo.has("Pipfile"):
        return Installer(kind="pipenv-unlocked", file="Pipfile")
    return Installer(kind="none", file=None)


def has_python_deps(repo: Repo) -> bool:
    return choose_installer(repo).kind != "none"


def unlocked_note(installer: Installer) -> str:
    """The log line for a Poetry or Pipenv project installed without its lock file."""
    tool, lock, cmd, table = (("Poetry", "poetry.lock", "poetry lock", "[tool.poetry.dependencies]")
                              if installer.kind == "poetry-unlocked"
                              else ("Pipenv", "Pipfile.lock", "pipenv lock", "[packages] of the Pipfile"))  # fmt: skip
    return (f"{installer.file} describes a {tool} project without {lock}: installing {table} resolved anew "
            f"(versions are not pinned: run `{cmd}` and commit {lock} to pin them)")


# --- Poetry -----------------------------------------------------------------------------------


@dataclass
class LockedInstall:
    """What to hand uv: requirement lines, constraint lines, extra flags."""

    requirements: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


def _poetry_source_url(pkg: dict[str, object]) -> str | None:
    """A direct reference (git/url/path) for a locked package, or None for an index package."""
    source = pkg.get("source")
    if not isinstance(source, dict):
        return None
    kind, url = source.get("type"), str(source.get("url", ""))
    if kind == "git":
        ref = source.get("resolved_reference") or source.get("reference") or ""
        sub = f"#subdirectory={source['subdirectory']}" if source.get("subdirectory") else ""
        return f"git+{url}@{ref}{sub}" if ref else f"git+{url}{sub}"
    if kind == "url":
        return url
    if kind in ("directory", "file"):
        # A path relative to the project root; uv reads the requirements from the app dir's point of view.
        return url if url.startswith(("/", "./", "../")) else f"./{url}"
    return None


def _direct(name: str, extras: str, url: str, develop: bool) -> str:
    """A requirement line for a git/URL (`name @ url`) or a local path (`./path`, `-e ./path`) dependency."""
    if url.startswith(("git+", "http://", "https://", "file:")):
        return f"{name}{extras} @ {url}"
    return f"{'-e ' if develop else ''}{url}{extras}"


def _poetry_python_marker(constraint: str) -> str | None:
    """`python = "^3.8"` on a dependency, as a PEP 508 marker."""
    alts = parse_poetry_constraint(constraint)
    if alts is None:
        return None
    def clause(op: str, v: str) -> str:
        if op == "!=*":  # `!=3.0.*`, kept as a half-open range [low, high)
            low, high = v.split(":")
            return f"(python_full_version < '{low}' or python_full_version >= '{high}')"
        return f"python_full_version {op} '{v}'"

    parts = [" and ".join(clause(op, v) for op, v in alt) or "python_full_version >= '0'" for alt in alts]
    return " or ".join(f"({p})" for p in parts)


def _pep440(constraint: str) -> str:
    """A Poetry constraint (`^1.2`, `~2.0`, `>=1,<2`) as a PEP 440 specifier; "" when it has alternatives."""
    alts = parse_poetry_constraint(constraint)
    if alts is None or len(alts) != 1:
        return ""
    parts = []
    for op, v in alts[0]:
        if op == "!=*":
            parts.append(f"!={v.split(':')[0]}.*")
        else:
            parts.append(f"{op}{v}")
    return ",".join(parts)


def _unlocked_line(name: str, extras: str, spec: object) -> str:
    """A requirement line from a manifest entry (Poetry or Pipfile style): version, git, or path."""
    if isinstance(spec, str):
        version = spec
    elif isinstance(spec, dict):
        if spec.get("git"):
            git = str(spec["git"])
            ref = spec.get("rev") or spec.get("ref") or spec.get("tag") or spec.get("branch")
            return f"{name}{extras} @ {git if git.startswith('git+') else 'git+' + git}{f'@{ref}' if ref else ''}"
        if spec.get("path"):
            path = str(spec["path"])
            path = path if path.startswith(("/", "./", "../")) else f"./{path}"
            return _direct(name, extras, path, bool(spec.get("develop") or spec.get("editable")))
        version = str(spec.get("version", "*"))
    else:
        return f"{name}{extras}"
    version = version.strip()
    if version in ("", "*"):
        return f"{name}{extras}"
    return f"{name}{extras}{_pep440(version)}"  # Pipfile's "==1.2" stays itself; Poetry's "^1.2" is translated


def pipfile_install(repo: Repo) -> LockedInstall:
    """A Pipfile without its lock: `[packages]` resolved anew (Heroku did this too, before requiring the lock)."""
    data = _toml(repo, "Pipfile") or {}
    out = LockedInstall()
    packages = data.get("packages")
    for name, spec in (packages.items() if isinstance(packages, dict) else []):
        extras = f"[{','.join(spec['extras'])}]" if isinstance(spec, dict) and spec.get("extras") else ""
        marker = f" ; {spec['markers']}" if isinstance(spec, dict) and spec.get("markers") else ""
        out.requirements.append(_unlocked_line(name, extras, spec) + marker)
    sources = data.get("source")
    urls = [str(s["url"]) for s in sources if isinstance(s, dict) and s.get("url")] if isinstance(sources, list) else []
    if urls and not urls[0].rstrip("/").endswith(("pypi.org/simple", "pypi.python.org/simple")):
        out.flags += ["--index-url", urls[0]]
    for url in urls[1:]:
        out.flags += ["--extra-index-url", url]
    return out


def poetry_install(repo: Repo) -> LockedInstall:
    """Requirements (the root's main dependencies) and constraints (every locked package, with hashes)."""
    lock = _toml(repo, "poetry.lock") or {}
    pyproject = _toml(repo, "pyproject.toml") or {}
    packages = [p for p in lock.get("package", []) if isinstance(p, dict)]  # type: ignore[attr-defined]
    meta_files = lock.get("metadata", {}).get("files", {}) if isinstance(lock.get("metadata"), dict) else {}  # type: ignore[union-attr]
    by_name: dict[str, dict[str, object]] = {_norm(str(p.get("name", ""))): p for p in packages}
    out = LockedInstall()
    indexes: list[str] = []
    for pkg in packages:
        name, version = str(pkg.get("name", "")), str(pkg.get("version", ""))
        if not name or not version or _poetry_source_url(pkg) is not None:
            continue
        files = pkg.get("files") or (meta_files.get(name) if isinstance(meta_files, dict) else None) or []
        hashes = [f"--hash={f['hash']}" for f in files if isinstance(f, dict) and f.get("hash")]  # type: ignore[union-attr]
        out.constraints.append(" ".join([f"{name}=={version}", *hashes]))
        source = pkg.get("source")
        if isinstance(source, dict) and source.get("type") == "legacy" and source.get("url"):
            indexes.append(str(source["url"]))
    out.flags = [f for url in dict.fromkeys(indexes) for f in ("--extra-index-url", url)]

    def requirement(name: str, spec: object) -> list[str]:
        specs = spec if isinstance(spec, list) else [spec]
        lines = []
        for one in specs:
            extras, markers = "", []
            if isinstance(one, dict):
                if one.get("optional"):
                    continue  # only installed through an extra of the root, which a deploy never asks for
                if one.get("extras"):
                    extras = f"[{','.join(map(str, one['extras']))}]"  # type: ignore[call-overload]
                if one.get("markers"):
                    markers.append(f"({one['markers']})")
                if one.get("python") and (marker := _poetry_python_marker(str(one["python"]))):
                    markers.append(f"({marker})")
            locked = by_name.get(_norm(name))
            url = _poetry_source_url(locked) if locked else None
            develop = bool(locked and locked.get("develop") is True)
            line = _direct(name, extras, url, develop) if url else f"{name}{extras}"
            if not packages:  # no poetry.lock: the constraint as written, resolved anew
                line = _unlocked_line(name, extras, one)
            lines.append(line + (f" ; {' and '.join(markers)}" if markers else ""))
        return lines

    project = pyproject.get("project")
    seen: set[str] = set()
    if isinstance(project, dict):
        for dep in project.get("dependencies", []) or []:
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", str(dep))
            if not match:
                continue
            seen.add(_norm(match[1]))
            locked = by_name.get(_norm(match[1]))
            url = _poetry_source_url(locked) if locked else None
            if url and "@" not in str(dep):
                rest = str(dep)[match.end():]
                extras = rest[: rest.index("]") + 1] if rest.lstrip().startswith("[") else ""
                marker = rest.split(";", 1)[1].strip() if ";" in rest else ""
                develop = bool(locked and locked.get("develop") is True)
                line = _direct(match[1], extras.strip(), url, develop)
                out.requirements.append(line + (f" ; {marker}" if marker else ""))
            else:
                out.requirements.append(str(dep))
    tool = pyproject.get("tool", {})
    poetry = tool.get("poetry", {}) if isinstance(tool, dict) else {}
    deps = poetry.get("dependencies", {}) if isinstance(poetry, dict) else {}
    for name, spec in (deps.items() if isinstance(deps, dict) else []):
        if name.lower() == "python" or _norm(name) in seen:
            continue
        out.requirements.extend(requirement(name, spec))
    return out


# --- Pipenv -----------------------------------------------------------------------------------


def pipenv_install(repo: Repo) -> LockedInstall:
    """Pipfile.lock's `default` section as hash-pinned requirement lines, installed without resolution."""
    raw = repo.read("Pipfile.lock") or b"{}"
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise BuildFailed(
            f"Pipfile.lock is not valid JSON ({exc}).", argument="repo_url",
            fix="run `pipenv lock` to regenerate Pipfile.lock, commit and push, then deploy again",
        ) from None  # fmt: skip
    out = LockedInstall(flags=["--no-deps"])
    sources = (data.get("_meta") or {}).get("sources") or []
    urls = [str(s["url"]) for s in sources if isinstance(s, dict) and s.get("url")]
    if urls and not urls[0].rstrip("/").endswith(("pypi.org/simple", "pypi.python.org/simple")):
        out.flags += ["--index-url", urls[0]]
    for url in urls[1:]:
        out.flags += ["--extra-index-url", url]
    for name, entry in (data.get("default") or {}).items():
        if not isinstance(entry, dict):
            continue
        extras = f"[{','.join(entry['extras'])}]" if entry.get("extras") else ""
        marker = f" ; {entry['markers']}" if entry.get("markers") else ""
        if entry.get("path") is not None:
            path = str(entry["path"])
            if path in (".", "./"):
                continue  # the project itself: the app runs from its directory
            line = f"{'-e ' if entry.get('editable') else ''}{path if path.startswith(('.', '/')) else './' + path}"
        elif entry.get("git"):
            ref = f"@{entry['ref']}" if entry.get("ref") else ""
            sub = f"#subdirectory={entry['subdirectory']}" if entry.get("subdirectory") else ""
            git = str(entry["git"])
            line = f"{name}{extras} @ {git if git.startswith('git+') else 'git+' + git}{ref}{sub}{marker}"
        elif entry.get("file"):
            line = f"{name}{extras} @ {entry['file']}{marker}"
        else:
            version = str(entry.get("version", ""))
            hashes = " ".join(f"--hash={h}" for h in entry.get("hashes") or [])
            line = f"{name}{extras}{version}{marker} {hashes}".rstrip()
        out.requirements.append(line)
    return out


# --- a build_command that installs ---------------------------------------------------------------

_INSTALLER_RE = re.compile(
    r"(?<![\w-])(?:(?:python3?(?:\.\d+)?\s+-m\s+)?pip3?\s+install|uv\s+pip\s+install|uv\s+sync|"
    r"poetry\s+(?:install|sync)|pipenv\s+(?:install|sync))\b"
)


_SCRIPT_RE = re.compile(r"^\s*(?:(?:ba|da)?sh\s+)?(\./)?([\w./-]+\.sh|bin/[\w.-]+|scripts?/[\w./-]+)\b")


def _command_text(command: str, read: Callable[[str], bytes | None] | None) -> tuple[str, str | None]:
    """The build_command, plus the repo script it runs (`./build.sh`, `bash bin/build`) without comments."""
    script = _SCRIPT_RE.match(command)
    if script and read is not None and ".." not in script[2]:
        body = read(script[2])
        if body is not None:
            lines = body.decode(errors="replace").splitlines()
            return "\n".join(ln.split("#", 1)[0] for ln in lines), script[2]
    return command, None


def _gets_tool(text: str, tool: str) -> bool:
    """True when the command installs `tool` itself before using it (`pip install poetry`, pipx, uv tool)."""
    return bool(re.search(rf"(?:pip3?|pipx|uv\s+tool|uv\s+pip)\s+install\b[^;&|\n]*\b{tool}\b", text)
                or (tool == "poetry" and "install.python-poetry.org" in text))  # fmt: skip


def build_command_installs(command: str | None, read: Callable[[str], bytes | None] | None = None) -> str | None:
    """The installer call inside a build_command (`pip install ...`, `poetry install`...), or None.

    Rule (documented on deploy_app's build_command): a build_command that runs a Python package
    installer replaces the default dependency step — like Render's build command, it is the whole build.
    Any other build_command runs after the default install. A build_command that runs a script of the
    repo (`./build.sh`, `bash bin/build`: Render's examples do) counts by what the script runs.
    `poetry install` / `pipenv install` count only when the command installs that tool first: this server
    has neither, so otherwise the default install does the job from the lock file and `tool_shims` make
    those calls (and `poetry run` / `pipenv run` in start commands) work.
    """
    if not command:
        return None
    text, script = _command_text(command, read)
    for match in _INSTALLER_RE.finditer(text):
        found = " ".join(match[0].split())
        tool = found.split()[0]
        if tool in ("poetry", "pipenv") and not _gets_tool(text, tool):
            continue
        return f"`{found}`" + (f" (in {script})" if script else "")
    return None


def tool_shims(kind: str) -> dict[str, str]:
    """Shell scripts put in the venv's bin for a Poetry or Pipenv app, as neither tool is on this server.

    `poetry install|sync` / `pipenv install|sync` in a build command say the lock was installed already
    and succeed; `poetry run X` / `pipenv run X` (common in start commands) run X in the venv; any other
    use fails saying why.
    """
    tool, lock = {"poetry": ("poetry", "poetry.lock"), "pipenv": ("pipenv", "Pipfile.lock")}.get(kind, ("", ""))
    if not tool:
        return {}
    script = f"""#!/bin/sh
# InkMCP: {tool} is not installed on this server; the dependencies came from {lock}.
case "$1" in
  install|sync) echo "{tool} $*: nothing to do, InkMCP installed the dependencies from {lock}"; exit 0 ;;
  run) shift; exec "$@" ;;
esac
echo "{tool} is not installed on this server (InkMCP installs {lock} itself): '{tool} $*' cannot run; \
install it in the build_command (pip install {tool}) or drop this call" >&2
exit 127
"""
    return {tool: script}


# --- Python version ----------------------------------------------------------------------------

Version = tuple[int, ...]
Alternatives = list[list[tuple[str, str]]]  # OR of ANDs of (operator, version)


def _vt(text: str) -> Version:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def parse_poetry_constraint(text: str) -> Alternatives | None:
    """Poetry/PEP 440 version constraints (`^3.9`, `~3.10`, `>=3.8,<3.13`, `3.11.*`, `>=3.8 || ^2.7`)."""
    alts: Alternatives = []
    for alt in re.split(r"\|\|?", text):
        clauses: list[tuple[str, str]] = []
        joined = re.sub(r"(\^|~=|~|===|==|!=|>=|<=|>|<)\s+", r"\1", alt.strip())  # `>= 3.8` -> `>=3.8`
        for raw in re.split(r"[,\s]+", joined) if joined else []:
            part = raw.strip()
            if not part or part == "*":
                continue
            m = re.fullmatch(r"(\^|~=|~|===|==|!=|>=|<=|>|<)?\s*v?(\d+(?:\.\d+)*)(\.\*)?", part)
            if not m:
                return None
            op, ver, star = m[1] or "", m[2], bool(m[3])
            nums = [int(x) for x in ver.split(".")]
            if op == "^":
                first = next((i for i, n in enumerate(nums) if n != 0), len(nums) - 1)
                upper = [*nums[:first], nums[first] + 1]
                clauses += [(">=", ver), ("<", ".".join(map(str, upper)))]
            elif op == "~":
                upper = [nums[0] + 1] if len(nums) == 1 else [nums[0], nums[1] + 1]
                clauses += [(">=", ver), ("<", ".".join(map(str, upper)))]
            elif op == "~=":
                upper = [*nums[:-2], nums[-2] + 1] if len(nums) > 1 else [nums[0] + 1]
                clauses += [(">=", ver), ("<", ".".join(map(str, upper)))]
            elif op in ("", "==", "===") and (star or (op == "" and len(nums) < 3)):
                upper = [*nums[:-1], nums[-1] + 1]
                clauses += [(">=", ver), ("<", ".".join(map(str, upper)))]
            elif op == "!=" and star:
                upper = [*nums[:-1], nums[-1] + 1]
                clauses.append(("!=*", f"{ver}:{'.'.join(map(str, upper))}"))
            else:
                clauses.append((op or "==", ver))
        alts.append(clauses)
    return alts or [[]]


def satisfies(version: Version, alts: Alternatives) -> bool:
    def pad(v: Version, n: int = 3) -> Version:
        return (*v, *([0] * (n - len(v))))

    def ok(op: str, ver: str) -> bool:
        if op == "!=*":
            low, high = ver.split(":")
            return not pad(_vt(low)) <= pad(version) < pad(_vt(high))
        want = _vt(ver)
        mine = pad(version)
        target = pad(want)
        return {">=": mine >= target, "<=": mine <= target, ">": mine > target, "<": mine < target,
                "==": mine[: len(want)] == want if op == "==" else False, "!=": mine != target,
                "===": mine == target}.get(op, False)  # fmt: skip

    return any(all(ok(op, v) for op, v in alt) for alt in alts)


@dataclass(frozen=True)
class PythonRequest:
    """The Python version a repo (or the service env) asks for."""

    origin: str  # file or variable it came from
    text: str  # as written there
    version: Version | None = None  # exact X.Y or X.Y.Z; None for a range
    spec: Alternatives | None = None  # a range (requires-python)

    def matches(self, have: Version) -> bool:
        if self.version is not None:
            return have[:2] == self.version[:2]
        return self.spec is not None and satisfies(have, self.spec)


_VERSION_RE = re.compile(r"(?:cpython-|python-?)?(\d+\.\d+(?:\.\d+)?)(?:[-+.\w]*)?")


def _exact(origin: str, text: str, *, fix: str) -> PythonRequest:
    value = text.strip()
    m = _VERSION_RE.fullmatch(value)
    if not m:
        raise BuildFailed(
            f"{origin} asks for Python {value!r}, which is not a version like 3.11 or 3.11.7.",
            argument="env_vars" if origin == "PYTHON_VERSION" else "repo_url", fix=fix,
        )  # fmt: skip
    return PythonRequest(origin=origin, text=value, version=_vt(m[1]))


def python_request(repo: Repo, env: dict[str, str], installer: Installer | None = None,
                   notes: list[str] | None = None) -> PythonRequest | None:  # fmt: skip
    """What the repo asks for (precedence in the module doc), or None when it does not say.

    A `.python-version` naming no CPython version (`system`, a pyenv virtualenv name, `pypy3.10`) is
    a developer's local setting: it is skipped with a note in `notes` rather than failing the deploy.
    """
    if env.get("PYTHON_VERSION", "").strip():
        return _exact("PYTHON_VERSION", env["PYTHON_VERSION"],
                      fix="pass env_vars PYTHON_VERSION as a version like '3.11', or unset it (null)")  # fmt: skip
    raw = repo.read(".python-version")
    if raw is not None:
        lines = [ln.strip() for ln in raw.decode(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if lines and _VERSION_RE.fullmatch(lines[0]):
            return _exact(".python-version", lines[0], fix="")
        if lines and notes is not None:
            notes.append(f".python-version says {lines[0][:40]!r}, not a CPython version: not used")
    raw = repo.read("runtime.txt")
    if raw is not None and raw.strip():
        return _exact("runtime.txt", raw.decode(errors="replace").strip(),
                      fix="write a version like python-3.11 into runtime.txt (or delete the file), commit and push")
    if installer is not None and installer.kind == "pipenv":
        with contextlib.suppress(ValueError, AttributeError):
            req = (json.loads(repo.read("Pipfile.lock") or b"{}").get("_meta") or {}).get("requires") or {}
            value = req.get("python_full_version") or req.get("python_version")
            if isinstance(value, str) and value.strip():
                return _exact("Pipfile.lock", value,
                              fix="set python_version in the Pipfile, run `pipenv lock`, commit and push")
    if repo.has("pyproject.toml"):
        data = _toml(repo, "pyproject.toml") or {}
        project, tool = data.get("project"), data.get("tool")
        text = project.get("requires-python") if isinstance(project, dict) else None
        origin = "requires-python in pyproject.toml"
        if not isinstance(text, str) and isinstance(tool, dict) and isinstance(tool.get("poetry"), dict):
            deps = tool["poetry"].get("dependencies")  # type: ignore[union-attr]
            text = deps.get("python") if isinstance(deps, dict) else None
            origin = "[tool.poetry.dependencies] python in pyproject.toml"
        if isinstance(text, str) and text.strip():
            spec = parse_poetry_constraint(text)
            if spec is not None:
                return PythonRequest(origin=origin, text=text.strip(), spec=spec)
    return None


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: Version

    @property
    def shown(self) -> str:
        return ".".join(map(str, self.version))


def _trusted(path: str) -> bool:
    """Root-owned and writable by root only (the file and its directory): a tenant cannot swap it."""
    try:
        real = os.path.realpath(path)
        for p in (real, os.path.dirname(real)):
            st = os.stat(p)
            if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return False
        return os.access(real, os.X_OK)
    except OSError:
        return False


_census: dict[tuple[str, str, tuple[float, ...]], list[Interpreter]] = {}


def _query(python: str) -> Version | None:
    try:
        done = subprocess.run([python, "-I", "-c", "import sys; print(*sys.version_info[:3])"], capture_output=True,
                              text=True, timeout=20, env={"PATH": "/usr/bin:/bin"}, cwd="/")  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = done.stdout.split()
    return tuple(int(x) for x in parts) if done.returncode == 0 and len(parts) == 3 else None


def interpreters(default: str, search_path: str) -> list[Interpreter]:
    """The operator's default interpreter, then every trusted python3.X in `search_path` (one per version).

    The census (one `python -c` per candidate) is cached until a search directory changes.
    """
    dirs = [d for d in search_path.split(":") if d]
    stamp = tuple(os.stat(d).st_mtime if os.path.isdir(d) else 0.0 for d in dirs)
    key = (default, search_path, stamp)
    if key in _census:
        return _census[key]
    found: list[Interpreter] = []
    seen: set[str] = set()
    candidates = [default]
    for d in dirs:
        with contextlib.suppress(OSError):
            candidates += sorted(os.path.join(d, n) for n in os.listdir(d) if re.fullmatch(r"python3(\.\d+)?", n))
    for path in candidates:
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real) or (path != default and not _trusted(path)):
            continue
        seen.add(real)
        version = _query(path)
        if version is not None and all(i.version != version for i in found):
            found.append(Interpreter(path=path, version=version))
    _census[key] = found
    return found


def choose_interpreter(request: PythonRequest, available: Sequence[Interpreter]) -> Interpreter | None:
    """The interpreter for `request`: the exact version, else the default if it matches, else the newest match."""
    if not available:
        return None
    default = available[0]
    matching = [i for i in available if request.matches(i.version)]
    if not matching:
        return None
    if request.version is not None and len(request.version) == 3:
        exact = [i for i in matching if i.version == request.version]
        if exact:
            return exact[0]
    if default in matching:
        return default
    return max(matching, key=lambda i: i.version)


def version_unavailable(request: PythonRequest, available: Iterable[Interpreter],
                        installer: Installer | None = None) -> BuildFailed:  # fmt: skip
    """The error for a version this server does not have, naming the file, the ask and what there is."""
    have = sorted({i.version[:2] for i in available}, reverse=True)
    shown = ", ".join(".".join(map(str, v)) for v in have) or "none"
    best = ".".join(map(str, have[0])) if have else "3"
    # A uv.lock made for a newer Python may have no wheels for this one (its native packages then need a
    # compiler toolchain): resolving anew from pyproject.toml for this Python is the one call that works.
    relock = (f" (and, since uv.lock was made for Python {request.text}, build_command 'uv pip install -r "
              f"pyproject.toml' to resolve the dependencies anew for {best})"
              if installer is not None and installer.kind == "uv" else "")  # fmt: skip
    if request.origin == "PYTHON_VERSION":
        return BuildFailed(
            f"env var PYTHON_VERSION asks for Python {request.text}, which this server does not have "
            f"(available: {shown}).",
            argument="env_vars",
            fix=f"pass env_vars {{'PYTHON_VERSION': '{best}'}}, or unset it (null) to use what the repo asks for",
        )
    edit = {
        ".python-version": f"change .python-version to {best}",
        "runtime.txt": f"change runtime.txt to python-{best}",
        "Pipfile.lock": f"set python_version = \"{best}\" in the Pipfile and run `pipenv lock`",
    }.get(request.origin)
    edit = f"{edit} (or remove that file)" if edit else f"widen {request.origin} to include {best}"
    return BuildFailed(
        f"{request.origin} asks for Python {request.text}, which this server does not have "
        f"(available: {shown}; nothing is downloaded).",
        argument="repo_url",
        fix=f"{edit}, commit and push; or deploy with env_vars {{'PYTHON_VERSION': '{best}'}}{relock} to use Python "
        f"{best} without changing the repo",
    )


# --- Django collectstatic -------------------------------------------------------------------------

_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Configured|Exit|Interrupt|Warning|NotFound|"
                       r"DoesNotExist|Invalid\w*|Missing\w*)|KeyError|CommandError)(?::\s?(.*))?$")


def last_exception(lines: Sequence[str]) -> str | None:
    """The exception a Python process died with: the line after the last traceback's frames.

    `Traceback (most recent call last):` is followed by indented frames and then `pkg.Error: message`.
    Management commands that raise CommandError print only `CommandError: message`.
    """
    start = max((i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")), default=None)
    candidates = lines[start + 1:] if start is not None else lines[-15:]  # no traceback: only the very end
    for line in candidates if start is not None else reversed(candidates):
        if start is not None and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        if _EXC_LINE.match(line.strip()):
            return line.strip()
        if start is not None:
            return line.strip()
    return None


_ENV_NAME = r"""['"]([A-Z][A-Z0-9_]{2,})['"]"""


def _guards_of(text: str, setting: str) -> list[str]:
    """Environment variables that an `if` around `setting = ...` tests (e.g. `if 'RENDER' in os.environ:`)."""
    lines = text.splitlines()
    names: list[str] = []
    for i, line in enumerate(lines):
        if not re.match(rf"\s+{setting}\s*=", line):
            continue
        indent = len(line) - len(line.lstrip())
        for prev in reversed(lines[:i]):
            p_indent = len(prev) - len(prev.lstrip())
            if prev.strip() and p_indent < indent:
                if re.match(r"\s*(if|elif)\b", prev):
                    if "environ" in prev or "getenv" in prev:
                        names += re.findall(_ENV_NAME, prev)
                    # One step of indirection: `DEBUG = 'RENDER' not in os.environ` ... `if not DEBUG:`.
                    for var in re.findall(r"\b([A-Z][A-Z0-9_]+)\b", prev):
                        for assign in re.findall(rf"^{var}\s*=(.*)$", text, re.M):
                            if "environ" in assign or "getenv" in assign:
                                names += re.findall(_ENV_NAME, assign)
                break
    return list(dict.fromkeys(names))


def _env_advice(var: str) -> str:
    """How to give the build an env var it lacks: an add-on for the database variables, env_vars otherwise."""
    if var == "DATABASE_URL" or var in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"):
        return (f"pass database={{'type': 'postgres'}}: it sets DATABASE_URL and the PG* variables ({var} "
                "included) for the build and the app")
    if var == "REDIS_URL":
        return "pass database={'type': 'redis'}: it sets REDIS_URL for the build and the app"
    return f"pass env_vars {{'{var}': '...'}}, or give it a default in the settings"


def collectstatic_fix(exception: str | None, settings_text: str, *, in_build_command: bool = False) -> str:
    """Advice that addresses the exception collectstatic (ours, or the build command's) died with."""
    exc = exception or ""
    skip = ("or pass a build_command without collectstatic" if in_build_command
            else "or pass env_vars {'DISABLE_COLLECTSTATIC': '1'} to skip collectstatic")  # fmt: skip
    if "STATIC_ROOT" in exc:
        guards = _guards_of(settings_text, "STATIC_ROOT")
        advice = ("set STATIC_ROOT unconditionally in the Django settings (e.g. STATIC_ROOT = BASE_DIR / "
                  "'staticfiles')")
        if guards:
            var = guards[0]
            related = [n for n in dict.fromkeys(re.findall(_ENV_NAME, settings_text)) if n.startswith(f"{var}_")]
            also = (f"; the settings also read {', '.join(related[:3])}: pass {'them' if len(related) > 1 else 'it'}"
                    " too (e.g. the app's host name)") if related else ""  # fmt: skip
            advice = (f"the settings set STATIC_ROOT only when the env var {var} is set: set STATIC_ROOT "
                      f"unconditionally (e.g. STATIC_ROOT = BASE_DIR / 'staticfiles'), or pass env_vars "
                      f"{{'{var}': 'true'}} (that also turns on whatever else the settings do under {var}{also})")
        return f"{advice}; {skip}"
    if m := re.search(r"No module named '([\w.]+)'", exc):
        return (f"the settings import {m[1]!r}, which is not installed: add its package to the dependency file "
                f"(requirements.txt / pyproject.toml / lock file), commit and push; {skip}")
    m = re.match(r"KeyError: '([A-Z][A-Z0-9_]*)'", exc) or re.search(r"\b([A-Z][A-Z0-9_]{2,}) (?:setting|env)", exc)
    if m:
        return f"the settings need {m[1]} at build time: {_env_advice(m[1])}; {skip}"
    if exception is None:
        return ("set STATIC_ROOT in the Django settings (collectstatic needs it) and make sure the settings import "
                f"without errors (the build log shows collectstatic's error); {skip}")
    return f"fix the exception quoted above in the Django settings or the static files setup; {skip}"


def build_exception_fix(exception: str) -> str | None:
    """Advice for a build_command that died with `exception`, when the exception says what is missing."""
    if re.search(r"OperationalError|could not connect|Connection refused|DATABASE_URL", exception):
        return ("the build connects to a database (e.g. `manage.py migrate` in the build command): pass "
                "database={'type': 'postgres'} so DATABASE_URL is set for the build, or run migrations as a release "
                "command (Procfile `release:` line) instead of in the build_command")
    if m := re.search(r"No module named '([\w.]+)'", exception):
        return (f"the build imports {m[1]!r}, which is not installed: add its package to the dependency file "
                "(requirements.txt / pyproject.toml / lock file), or install it in the build_command")
    if m := re.match(r"KeyError: '([A-Z][A-Z0-9_]*)'", exception):
        return f"the build reads the env var {m[1]}: {_env_advice(m[1])}"
    return None


def installer_error(lines: Sequence[str]) -> str | None:
    """uv's (or pip's) own error from an install's output: its last `error:` line and the first cause after it."""
    # Column 0 only: uv's own lines, not the `error:` a compiler prints inside a source build's output.
    start = max((i for i, ln in enumerate(lines) if ln.startswith(("error:", "ERROR:"))), default=None)
    if start is None:
        return None
    said = [lines[start].strip().removeprefix("error:").removeprefix("ERROR:").strip()]
    cause = next((ln.strip() for ln in lines[start + 1:] if ln.strip().startswith(("cause:", "Caused by:"))), None)
    if cause:
        said.append(cause.split(":", 1)[1].strip())
    text = ": ".join(s for s in said if s)
    return text[:500] + ("..." if len(text) > 500 else "") if text else None


# What a source build prints when a system library or its headers are missing (InkMCP installs none).
_MISSING_SYSTEM_LIBRARY = (
    re.compile(r"Can ?not find valid pkg-config name"),
    re.compile(r"Package '?(?P<what>[\w.+-]+)'?,? (?:was not found in the pkg-config search path|not found)"),
    re.compile(r"(?P<what>pg_config|mysql_config|xml2-config|xslt-config|curl-config|krb5-config)\b.*not found"),
    re.compile(r"fatal error: (?P<what>[\w/.+-]+\.h): No such file or directory"),
    re.compile(r"cannot find -l(?P<what>[\w.+-]+)"),
)
# Packages that need a system library, and what installs from a wheel or is pure Python instead.
_WHEEL_INSTEAD = {
    "mysqlclient": "PyMySQL (pure Python; Django: `import pymysql; pymysql.install_as_MySQLdb()` in settings)",
    "mysql-python": "PyMySQL (pure Python; Django: `import pymysql; pymysql.install_as_MySQLdb()` in settings)",
    "psycopg2": "psycopg2-binary, or psycopg[binary] (psycopg 3)",
    "python-ldap": "ldap3 (pure Python)",
    "pycairo": "a release with a wheel for this Python, or drop it",
}


def _missing_system_library(output: Sequence[str]) -> str | None:
    """What a failed source build said is missing from the system (a header, a library, a *-config tool)."""
    for line in reversed(output[-200:]):
        for pattern in _MISSING_SYSTEM_LIBRARY:
            if m := pattern.search(line):
                return (m.groupdict().get("what") or "a library pkg-config could not find").strip()
    return None


def installer_fix(error: str, python: str, output: Sequence[str] = ()) -> str | None:
    """Advice for the install failures that say what to change: a Python too old, a failed compile (a missing
    system library named as such: a new user's mysqlclient was told to "pin a version that publishes a wheel",
    and mysqlclient publishes none for Linux)."""
    if m := re.search(r"does not satisfy Python\s*([<>=!~]=?\s*[\d.]+)", error):
        return (f"a dependency needs Python {m[1]}, which this build's Python {python} is not: pin an older version "
                "of it that supports this Python in the dependency file (or ask for another Python only if this "
                "server has it), commit and push")
    if re.search(r"Failed to build `[^`]* @ (?:\./|file:)", error):
        return ("a package of the repo itself failed to build (the build log shows why): fix its packaging, commit "
                "and push")
    missing = _missing_system_library(output) if "Failed to build" in error else None
    if missing is not None:
        m = re.search(r"Failed to build `([A-Za-z0-9._-]+)", error)
        package = m[1] if m else "a dependency"
        name = re.split(r"[=<>!~ ]", package, maxsplit=1)[0].lower().replace("_", "-")
        instead = _WHEEL_INSTEAD.get(name)
        other = f"a newer release with a wheel for Python {python}, a -binary variant, or another library"
        return (f"{package} compiles against a system library this server does not have ({missing}) and InkMCP "
                "installs no system packages: replace it in the dependency file with a package that installs from "
                f"a wheel or is pure Python ({instead or other}), "
                "commit and push")
    if "Failed to build" in error:
        return ("a dependency had to be compiled from source here and failed (the build log shows the compiler's "
                f"error): pin a version that publishes a wheel for Python {python} (e.g. a newer release, or "
                "psycopg2-binary for psycopg2), commit and push")
    return None
