"""Fetching repositories: a cached bare mirror per repo URL, exported as plain files per deployment.

Why a mirror: redeploys are the common case, and an incremental `git fetch` into a mirror that
already holds the history costs one round trip instead of a full clone. Why export plain files
(`git archive | tar -x`) instead of a clone or a worktree: the checkout handed to the build holds
no `.git` (nothing links back to the shared mirror, tenant code cannot rewrite the mirror, and the
mirror can be garbage-collected without breaking old releases), and it measured as fast as a shared
clone on small repos.

Security notes, because repo URLs come from AI agents:
- git never prompts (GIT_TERMINAL_PROMPT=0, ssh BatchMode), never runs credential helpers or the
  host's user/system git config, and only speaks the transports we allow (GIT_ALLOW_PROTOCOL),
  which keeps `ext::` (runs commands) and friends out.
- local paths and `file://` URLs read this machine's disk, so both need `allow_local_paths`.
- credentials embedded in a URL (https://user:token@host/...) are used for the fetch but are never
  written into error messages or logs, and the mirror is keyed and configured without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from inkmcp.build.process import kill_process_group
from inkmcp.errors import SourceError

_REMOTE_SCHEMES = ("https", "http", "ssh", "git")
_SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._~-]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/\\].*)$")
_SAFE_REF = re.compile(r"^[A-Za-z0-9._/@+-]+$")
_HEX_SHA = re.compile(r"^[0-9a-fA-F]{4,40}$")
_HEAD_REF = "refs/inkmcp/HEAD"
_REPO_URL_FIX = (
    "pass a reachable git URL such as https://github.com/owner/repo.git "
    "(for a private repo, https://<token>@github.com/owner/repo.git)"
)
_REF_FIX = "pass a branch, tag or commit that exists, e.g. main, or omit ref for the default branch"

_mirror_locks: dict[str, asyncio.Lock] = {}


@dataclass(frozen=True)
class _Source:
    """A validated repo location: `fetch_url` (may hold credentials) and `display` (never does)."""

    fetch_url: str
    display: str
    local: bool


def redact_url(url: str) -> str:
    """Return `url` without userinfo (user:password@), safe for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.scheme and parts.netloc and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


def _scrub(text: str, source: _Source) -> str:
    """Remove any trace of the URL's credentials from git output before it reaches a caller."""
    text = text.replace(source.fetch_url, source.display)
    parts = urlsplit(source.fetch_url) if "://" in source.fetch_url else None
    if parts and parts.netloc and "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        for secret in {userinfo, *userinfo.split(":")}:
            if len(secret) >= 3:
                text = text.replace(secret, "***")
    return text


def _classify(repo_url: str, allow_local_paths: bool) -> _Source:
    """Validate `repo_url` and decide how git should reach it. Raises SourceError(argument=repo_url)."""
    url = repo_url.strip()
    if not url or url.startswith("-") or any(c in url for c in "\n\r\0"):
        raise SourceError(f"{redact_url(url)!r} is not a git repository URL.", argument="repo_url", fix=_REPO_URL_FIX)
    if url.startswith("/") or url.lower().startswith("file://"):
        if not allow_local_paths:
            raise SourceError(
                "local paths and file:// URLs are disabled on this server (they would read its disk).",
                argument="repo_url",
                fix=_REPO_URL_FIX + "; push your code to a git host first",
            )
        path = Path(urlsplit(url).path if url.lower().startswith("file://") else url)
        _check_local_repo(path, url)
        return _Source(fetch_url=str(path), display=str(path), local=True)
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme.lower() not in _REMOTE_SCHEMES or not parts.hostname:
            raise SourceError(
                f"{redact_url(url)!r} uses an unsupported scheme {parts.scheme!r}; "
                f"supported: {', '.join(_REMOTE_SCHEMES)} (and absolute paths/file:// when enabled).",
                argument="repo_url",
                fix=_REPO_URL_FIX,
            )
        if parts.hostname.startswith("-"):
            raise SourceError(f"{redact_url(url)!r} has an invalid host.", argument="repo_url", fix=_REPO_URL_FIX)
        return _Source(fetch_url=url, display=redact_url(url), local=False)
    if _SCP_LIKE.match(url) and "::" not in url and " " not in url:
        return _Source(fetch_url=url, display=url, local=False)  # git@github.com:owner/repo.git
    raise SourceError(f"{url!r} is neither a URL nor an absolute path.", argument="repo_url", fix=_REPO_URL_FIX)


def _check_local_repo(path: Path, shown: str) -> None:
    """A local source must be an existing git repository; say exactly how to make one if it is not."""
    if not path.is_absolute():
        raise SourceError(
            f"{shown!r} is a relative path.", argument="repo_url", fix="pass an absolute path, e.g. /srv/app"
        )
    if not path.is_dir():
        raise SourceError(
            f"{shown!r} does not exist or is not a directory.",
            argument="repo_url",
            fix="pass the absolute path of an existing git repository",
        )
    is_worktree = (path / ".git").exists()
    is_bare = (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()
    if not (is_worktree or is_bare):
        raise SourceError(
            f"{shown!r} is a directory but not a git repository (InkMCP deploys commits, not loose files).",
            argument="repo_url",
            fix=f"run `cd {shown} && git init && git add -A && git commit -m deploy`, then pass that path",
        )


def _git_env(source: _Source) -> dict[str, str]:
    """A minimal, prompt-free environment: nothing from InkMCP's own environment (it holds secrets)."""
    protocols = "https:http:ssh:git" + (":file" if source.local else "")
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ALLOW_PROTOCOL": protocols,
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=15 -o StrictHostKeyChecking=accept-new",
    }


def _git_base(source: _Source) -> list[str]:
    base = ["git", "-c", "credential.helper=", "-c", "core.askPass=/bin/false", "-c", "gc.autoDetach=false"]
    if source.local:
        # Only local sources need the file transport (also for repos that use local submodules).
        base += ["-c", "protocol.file.allow=always"]
    return base


class _Deadline:
    """One time budget shared by every git call of a request, so `timeout` bounds the whole call."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()



async def _git(
    args: list[str], source: _Source, deadline: _Deadline, *, git_dir: Path | None = None
) -> tuple[int, str, str]:
    """Run git; return (returncode, stdout, scrubbed stderr). Raises SourceError on timeout."""
    argv = _git_base(source) + ([f"--git-dir={git_dir}"] if git_dir else []) + args
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_git_env(source),
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=max(deadline.left(), 0.01))
    except (TimeoutError, asyncio.CancelledError) as exc:
        await kill_process_group(proc)
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise SourceError(
            f"fetching {source.display} did not finish within {deadline.seconds:.0f}s.",
            argument="repo_url",
            fix="check that the repository is reachable and not huge, or retry; "
            + "private repos need a token in the URL",
        ) from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), _scrub(err.decode(errors="replace"), source)


def _mirror_dir(cache_dir: Path, source: _Source) -> Path:
    """Key the mirror by the credential-free URL, so a rotated token still reuses the same mirror.

    Safe to share between callers with different credentials because every call fetches first and
    fails when the remote refuses, so a mirror never serves a caller the remote would not.
    """
    key = hashlib.sha256(source.display.encode()).hexdigest()[:32]
    return cache_dir / "mirrors" / key


@contextlib.asynccontextmanager
async def _locked(mirror: Path) -> AsyncIterator[None]:
    """Serialize work on one mirror: an asyncio lock within this process, flock across processes."""
    lock = _mirror_locks.setdefault(str(mirror), asyncio.Lock())
    async with lock:
        mirror.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{mirror}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def _fetch_error(source: _Source, stderr: str) -> SourceError:
    tail = " ".join(line.strip() for line in stderr.strip().splitlines()[-3:])
    lowered = stderr.lower()
    if "couldn't find remote ref head" in lowered:
        return SourceError(
            f"{source.display} has no commits on its default branch.",
            argument="repo_url",
            fix="push at least one commit, or pass ref naming a branch that has commits",
        )
    if any(s in lowered for s in ("authentication failed", "could not read username", "permission denied")):
        hint = "for a private repo pass a URL with a token, e.g. https://<token>@github.com/owner/repo.git"
    elif any(s in lowered for s in ("not found", "does not appear to be a git repository", "does not exist")):
        hint = "check the owner/repository name and that the repository exists"
    elif any(s in lowered for s in ("could not resolve host", "refused", "timed out", "unable to access")):
        hint = "check the host name; the repository must be reachable from the InkMCP server"
    else:
        hint = "check the URL"
    return SourceError(
        f"could not fetch {source.display}: {tail or 'git fetch failed'}",
        argument="repo_url",
        fix=f"{hint}; {_REPO_URL_FIX}",
    )


def _mirror_ok(mirror: Path) -> bool:
    """True if `mirror` looks like a bare repo; otherwise clear any half-made leftover."""
    if (mirror / "HEAD").is_file() and (mirror / "objects").is_dir():
        return True
    if mirror.exists():
        shutil.rmtree(mirror)
    return False


def _prepare_dest(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"checkout destination {dest} is not empty")


async def _ensure_mirror(mirror: Path, source: _Source, deadline: _Deadline) -> None:
    """Create the bare mirror if missing or broken (e.g. an earlier run died during `git init`)."""
    if _mirror_ok(mirror):
        return
    rc, _, err = await _git(["init", "--bare", "--quiet", str(mirror)], source, deadline)
    if rc != 0:
        raise SourceError(f"could not create the repository cache: {err.strip()}", argument="repo_url")


async def _fetch(mirror: Path, source: _Source, deadline: _Deadline) -> None:
    """Fetch all branches, tags and the remote HEAD (the default branch) in one round trip."""
    refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*", f"+HEAD:{_HEAD_REF}"]
    args = ["fetch", "--quiet", "--prune", "--no-write-fetch-head", "--", source.fetch_url, *refspecs]
    rc, _, err = await _git(args, source, deadline, git_dir=mirror)
    if rc != 0 and "couldn't find remote ref head" in err.lower():
        # A remote whose HEAD points at a missing branch still has usable branches/tags.
        rc, _, err2 = await _git(args[:-1], source, deadline, git_dir=mirror)
        if rc == 0:
            return
        err = err2 or err
    if rc != 0:
        raise _fetch_error(source, err)


async def _rev_parse(mirror: Path, source: _Source, deadline: _Deadline, rev: str) -> str | None:
    rc, out, _ = await _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], source, deadline, git_dir=mirror)
    return out.strip() if rc == 0 and out.strip() else None


async def _resolve(mirror: Path, source: _Source, ref: str | None, deadline: _Deadline) -> str:
    """Turn `ref` into a full commit sha: default branch, branch, tag, (abbreviated) sha or refs/..."""
    if ref is None or not ref.strip():
        sha = await _rev_parse(mirror, source, deadline, _HEAD_REF)
        if sha is None:
            raise SourceError(
                f"{source.display} has no default branch (its HEAD points nowhere).",
                argument="ref",
                fix=_REF_FIX,
            )
        return sha
    ref = ref.strip()
    if ref.startswith("-") or ".." in ref or not _SAFE_REF.match(ref):
        raise SourceError(f"{ref!r} is not a valid git ref name.", argument="ref", fix=_REF_FIX)
    candidates = [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    if ref.startswith("refs/"):
        candidates.insert(0, ref)
    for candidate in candidates:
        sha = await _rev_parse(mirror, source, deadline, candidate)
        if sha:
            return sha
    if _HEX_SHA.match(ref):
        sha = await _rev_parse(mirror, source, deadline, ref)
        if sha:
            return sha.lower()
    # Not a branch/tag/known commit: a full sha not on any branch or a special ref (refs/pull/1/head)
    # may still be fetchable by name.
    if ref.startswith("refs/") or re.fullmatch(r"[0-9a-fA-F]{40}", ref):
        target = f"+{ref}:refs/inkmcp/extra" if ref.startswith("refs/") else ref
        rc, _, _ = await _git(
            ["fetch", "--quiet", "--no-write-fetch-head", "--", source.fetch_url, target],
            source,
            deadline,
            git_dir=mirror,
        )
        if rc == 0:
            sha = await _rev_parse(mirror, source, deadline, "refs/inkmcp/extra" if ref.startswith("refs/") else ref)
            if sha:
                return sha
    raise SourceError(f"{ref!r} is not a branch, tag or commit of {source.display}.", argument="ref", fix=_REF_FIX)


async def _fetch_and_resolve(
    repo_url: str, ref: str | None, cache_dir: Path, allow_local_paths: bool, deadline: _Deadline
) -> tuple[_Source, Path, str]:
    source = _classify(repo_url, allow_local_paths)
    mirror = _mirror_dir(cache_dir, source)
    async with _locked(mirror):
        await _ensure_mirror(mirror, source, deadline)
        await _fetch(mirror, source, deadline)
        sha = await _resolve(mirror, source, ref, deadline)
    return source, mirror, sha


async def resolve_commit(
    repo_url: str,
    ref: str | None,
    *,
    cache_dir: Path,
    allow_local_paths: bool,
    timeout: float = 120,
) -> str:
    """Fetch `repo_url` into its cached mirror and return the full sha `ref` points at.

    `ref` may be None (the remote's default branch), a branch, a tag, a full or abbreviated sha,
    or a full ref name such as refs/pull/1/head. Used for "same commit, nothing to do" checks;
    it leaves the mirror updated, so a following `resolve_and_checkout` only pays a no-op fetch.
    """
    _, _, sha = await _fetch_and_resolve(repo_url, ref, cache_dir, allow_local_paths, _Deadline(timeout))
    return sha


async def resolve_and_checkout(
    repo_url: str,
    ref: str | None,
    dest: Path,
    *,
    cache_dir: Path,
    allow_local_paths: bool,
    timeout: float = 120,
) -> str:
    """Fetch, resolve `ref` and write the files of that commit into `dest`; return the full sha.

    `dest` must be missing or empty; it receives plain files only (no `.git`), owned by the
    calling user; chown it afterwards when the build runs as a tenant user. Submodules and
    Git LFS objects are not included (git archive exports the tree as committed).
    """
    deadline = _Deadline(timeout)
    source, mirror, sha = await _fetch_and_resolve(repo_url, ref, cache_dir, allow_local_paths, deadline)
    _prepare_dest(dest)
    await _export(mirror, source, sha, dest, deadline)
    return sha


async def _export(mirror: Path, source: _Source, sha: str, dest: Path, deadline: _Deadline) -> None:
    """Stream `git archive` into `tar -x`: no index, no .git, no lock needed on the mirror."""
    read_fd, write_fd = os.pipe()
    try:
        git = await asyncio.create_subprocess_exec(
            *_git_base(source),
            f"--git-dir={mirror}",
            "archive",
            "--format=tar",
            sha,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=asyncio.subprocess.PIPE,
            env=_git_env(source),
            start_new_session=True,
        )
        tar = await asyncio.create_subprocess_exec(
            "tar",
            "-x",
            "--no-same-owner",
            "--no-same-permissions",
            "-C",
            str(dest),
            stdin=read_fd,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=_git_env(source),
            start_new_session=True,
        )
    finally:
        os.close(read_fd)
        os.close(write_fd)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(git.communicate(), tar.communicate()), timeout=max(deadline.left(), 0.01)
        )
    except (TimeoutError, asyncio.CancelledError) as exc:
        await kill_process_group(git)
        await kill_process_group(tar)
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise SourceError(
            f"checking out {source.display} did not finish within {deadline.seconds:.0f}s.",
            argument="repo_url",
            fix="retry; if the repository is very large, remove big files from it",
        ) from None
    (_, git_err), (_, tar_err) = results
    if git.returncode != 0 or tar.returncode != 0:
        detail = _scrub((git_err or tar_err).decode(errors="replace").strip(), source)
        raise SourceError(f"could not check out {sha[:12]} of {source.display}: {detail}", argument="repo_url")
