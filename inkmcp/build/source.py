"""Fetching repositories: a bare mirror per project and repo URL, exported as plain files per deployment.

Why a mirror: redeploys are the common case, and an incremental `git fetch` into a mirror that
already holds the history costs one round trip instead of a full clone. Why export plain files
(`git archive | tar -x`) instead of a clone or a worktree: the checkout handed to the build holds
no `.git` (nothing links back to the mirror, tenant code cannot rewrite the mirror through it, and
the mirror can be garbage-collected without breaking old releases).

Whose rights (docs/trust-boundary.md): every git process runs as the project's Unix user
(`SourceWorkspace.run_as`) in that project's own 0700 mirrors dir, so a fetch can read nothing the
tenant could not read itself: no other project's mirror, no root-only local path. InkMCP (root)
never opens, creates or stats anything inside the mirrors dir: its flock files live in a root-only
locks dir, and a broken mirror is removed by `rm -rf` running as the tenant. The one step root
performs is `tar -x` into a destination only root can reach (0700 dir in a 0700 parent), fed by
`git archive` running as the tenant, with umask 077 so nothing it writes is group/other readable.
GNU tar strips `..` and leading `/` from member names and defers symlinks that point outside the
tree, so even a tree crafted by the tenant (it owns the mirror's object files) cannot make root
write outside the destination. The tree's size is checked before extraction (`cat-file`, `ls-tree -l`) and the
byte stream is bounded again while it flows, because the tenant could swap objects in between.

Security notes, because repo URLs come from AI agents:
- git never prompts (GIT_TERMINAL_PROMPT=0, ssh BatchMode), never runs credential helpers or the
  host's user/system git config, and only speaks the transports we allow (GIT_ALLOW_PROTOCOL),
  which keeps `ext::` (runs commands) and friends out.
- local paths and `file://` URLs, and remote hosts on loopback, private, link-local (cloud
  metadata), CGNAT, multicast or reserved addresses, need `SourcePolicy.allow_local`
  (INKMCP_ALLOW_LOCAL_SOURCES). Otherwise the host is resolved once here and git is made to connect
  to exactly the checked address (curl's resolve pin for http(s), the IP itself for git:// and ssh),
  so DNS rebinding between the check and the connect changes nothing; redirects are never followed.
  A refused address gets one message whatever the port and whether anything listens there.
- credentials embedded in an http(s) URL (https://user:token@host/...) reach git as an Authorization header in
  its environment (GIT_CONFIG_COUNT: `http.<URL without them>.extraHeader`), never its command line, the mirror's
  config, FETCH_HEAD or any file; they never appear in errors or logs, and the mirror is keyed without them.
  Why not argv: /proc/PID/cmdline is world-readable on a normal /proc (no hidepid), so any local process of another
  uid read `git fetch http://alice:<token>@...` while alice's fetch ran (red team dec2); /proc/PID/environ is
  readable by the same uid (alice's project user) and root only.
- HTTP credentials InkMCP holds for a user (a signed-in user's GitHub token, `GitAuth`, issue 11) reach git only
  through the environment (GIT_CONFIG_COUNT/KEY/VALUE: an `http.<repo url>.extraHeader` scoped to that one
  repository URL), never argv, the mirror's config, FETCH_HEAD or an error; the environment of a process is
  readable in /proc only by its uid, the tenant, whose account's token it is.
- `SourcePolicy.trusted_origins` are hosts the operator configured (INKMCP_GITHUB_URL, e.g. a GitHub Enterprise on
  a private network, or the local GitHub stand-in): their addresses are not checked, as for allow_local.
- the mirror belongs to the tenant's uid, but the tenant's code cannot reach it: every sandboxed process of the
  project has the mirrors dir covered by an empty tmpfs (build/process.py step 3). It was writable before, and git
  runs here OUTSIDE the tenant's sandbox (in the git jail's cgroup, not the tenant's; the host's /proc without
  hidepid, the host's /tmp), reading the mirror's own config: a setting her build planted there acted in InkMCP's
  next fetch, in the host's mount namespace (red team 4: `[http] cookieFile` + `saveCookies` wrote a file into the
  host's /tmp and would send cookies read from host files; `url.insteadOf` rewrote the URL). So, besides the cover,
  a tenant mirror whose config holds anything `git init --bare` did not write (one planted before the cover
  existed, or by a way in not known yet) is removed and fetched anew (`_ensure_mirror`, `_foreign_settings`), and
  the settings we rely on are given on the command line or in the environment, which take precedence. Nothing the
  tenant wrote may make git run a command: hooks are off
  (core.hooksPath=/dev/null), so are core.fsmonitor, core.alternateRefsCommand and core.gitProxy
  (GIT_PROXY_COMMAND=""; the config's value would win over `-c`), ssh reads no config file (`-F /dev/null`: it
  reads ~/.ssh/config from the passwd home, the tenant's, whatever $HOME says; red team 4: a ProxyCommand there
  ran in the fetch), submodules are not fetched, and `git archive`,
  the one step that applies filter drivers (`.gitattributes` filter=x + the config's filter.x.smudge/process), runs
  against a neutral git dir of InkMCP's with the mirror's objects only (`_neutral_git_dir`). Red team dec2: a
  reference-transaction hook her build put in her mirror ran in InkMCP's next fetch and read alice's token from /proc.
- the repository's contents are the tenant's too (gitjail, red team dec2): every git process runs in the git jail
  (`gitjail.py`: one cgroup for all of them with a memory limit, pids.max and a CPU weight; RLIMIT_DATA, RLIMIT_CPU
  and RLIMIT_FSIZE per process), so a pack whose deltas expand to GiBs or take minutes to resolve fails its own
  fetch, naming the limit (`_limit_hit`); a fetch and a checkout each have INKMCP_GIT_TIMEOUT. What InkMCP reads
  into its own memory is checked before it is read: tree objects against INKMCP_GIT_MAX_TREES_MB, each file of a
  checkout written from memory against the size it was listed with.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from inkmcp.build import gitjail, http_fetch
from inkmcp.build.plan import RunAs
from inkmcp.build.process import TMP, kill_process_group
from inkmcp.errors import SourceError
from inkmcp.settings import git_settings

_REMOTE_SCHEMES = ("https", "http", "ssh", "git")
_DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\Z")
_NUMERIC_LABELS = re.compile(r"^(?:0[xX][0-9A-Fa-f]*|[0-9]+)(?:\.(?:0[xX][0-9A-Fa-f]*|[0-9]+))*\Z")
_USERINFO = re.compile(r"^[A-Za-z0-9._~%!$&'()*+,;=:-]*\Z")
_SSH_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._~-]*\Z")
_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/\\].*)\Z")
_SAFE_REF = re.compile(r"^[A-Za-z0-9._/@+-]+\Z")
_HEX_SHA = re.compile(r"^[0-9a-fA-F]{4,40}\Z")
_REDIRECT = re.compile(r"returned error: 30[12378]\b")
_HEAD_REF = "refs/inkmcp/HEAD"
_SETTING = "INKMCP_ALLOW_LOCAL_SOURCES"
_REPO_URL_FIX = (
    "pass a reachable git URL such as https://github.com/owner/repo.git "
    "(for a private repo, https://<token>@github.com/owner/repo.git)"
)
_BLOCKED_FIX = (
    "use a public git host, e.g. https://github.com/owner/repo.git; "
    f"or (operator) set {_SETTING}=true on a single-user machine"
)
_REF_FIX = "pass a branch, tag or commit that exists, e.g. main, or omit ref for the default branch"
# Checks a local source as the tenant: 3 = missing/unreadable (one answer), 4 = readable but no repo.
_LOCAL_CHECK = (
    'p=$1; [ -d "$p" ] && [ -r "$p" ] && [ -x "$p" ] || exit 3; '
    '[ -e "$p/.git" ] && exit 0; [ -f "$p/HEAD" ] && [ -d "$p/objects" ] && [ -d "$p/refs" ] && exit 0; exit 4'
)
# Local fetches run upload-pack in the source repo, which another uid may own; git clears `-c` config
# for that child, so the exception travels in the (constant) upload-pack command itself.
_LOCAL_UPLOAD_PACK = "git -c 'safe.directory=*' upload-pack"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

_mirror_locks: dict[str, asyncio.Lock] = {}


@dataclass(frozen=True)
class SourcePolicy:
    """What this server lets a `repo_url` reach, and how big a checkout may be."""

    allow_local: bool  # INKMCP_ALLOW_LOCAL_SOURCES: local paths, file://, non-public addresses
    max_checkout_bytes: int = 1 << 30  # refuse a commit whose files add up to more (before extracting)
    # --- attacker2: refuse a commit with more files and directories than this, found while listing its trees (red
    # team dec2: a 3-level tree of 1,000 x 1,000 x 1,000 empty files is a few KB in git and 1e9 paths; listing it
    # would fill InkMCP's memory, and 200,000 empty files already cost ~15 s of CPU and 200,000 inodes per deploy)
    # --- gitjail: INKMCP_MAX_CHECKOUT_ENTRIES (settings.GitSettings; app.py does not pass it)
    max_checkout_entries: int = field(default_factory=lambda: git_settings().max_checkout_entries)
    # bytes of tree objects (directory listings) read into InkMCP's memory for one commit: INKMCP_GIT_MAX_TREES_MB
    max_tree_bytes: int = field(default_factory=lambda: git_settings().git_max_trees_mb << 20)
    # issue 11: origins ("scheme://host:port", see `origin_of`) the operator configured as git hosts
    # (INKMCP_GITHUB_URL): reached without the public-address check, whatever they resolve to
    trusted_origins: frozenset[str] = frozenset()


def origin_of(url: str) -> str | None:
    """`scheme://host:port` of an http(s) URL (default port made explicit, host lowercased), else None."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return f"{scheme}://{parts.hostname.lower()}:{port or _DEFAULT_PORTS[scheme]}"


@dataclass(frozen=True)
class GitAuth:
    """HTTP Basic credentials for one repository URL, handed to git in its environment only (issue 11).

    GitHub accepts a user's OAuth token as the Basic password (any user name; `x-access-token` by convention).
    """

    token: str = field(repr=False)
    username: str = "x-access-token"

    @property
    def header(self) -> str:
        import base64

        return "Authorization: Basic " + base64.b64encode(f"{self.username}:{self.token}".encode()).decode()

    def env(self, fetch_url: str) -> tuple[tuple[str, str], ...]:
        """git config through the environment: the header for URLs under `fetch_url` only."""
        scope = fetch_url.rstrip("/")
        return (("GIT_CONFIG_COUNT", "1"), ("GIT_CONFIG_KEY_0", f"http.{scope}.extraHeader"),
                ("GIT_CONFIG_VALUE_0", self.header))

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.token, self.header.split(" ", 2)[2])


@dataclass(frozen=True)
class SourceWorkspace:
    """Where one project's sources are fetched, and whose rights read them."""

    mirrors_dir: Path  # per project, owned by run_as, 0700 (already exists)
    locks_dir: Path  # owned by InkMCP; the tenant cannot write it (already exists)
    run_as: RunAs | None  # every git process runs as this uid/gid, no supplementary groups (None: as InkMCP)


@dataclass(frozen=True)
class _Target:
    """A syntactically valid remote location, before its host is resolved."""

    kind: str  # https, http, git, ssh, scp
    host: str  # DNS name or IP literal, without brackets
    port: int
    url: str  # as given (may hold credentials)
    user: str | None = None  # ssh/scp user
    path: str = ""  # scp-like path


@dataclass(frozen=True)
class _Source:
    """A validated repo location: `fetch_url` (may hold credentials) and `display` (never does)."""

    fetch_url: str
    display: str
    local: bool
    config: tuple[str, ...] = ()  # extra `-c` settings (the curl resolve pin)
    ssh_alias: str | None = None  # the host name ssh checks the key of, when it connects to an IP
    secrets: tuple[str, ...] = field(default=(), repr=False)
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # extra git environment (GitAuth)
    grant: str | None = field(default=None, repr=False)  # the fetch proxy's secret base URL (GitAuth), revoked after


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


def _secrets_of(url: str) -> tuple[str, ...]:
    parts = urlsplit(url) if "://" in url else None
    if parts and parts.netloc and "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        return tuple(s for s in {userinfo, *userinfo.split(":")} if len(s) >= 3)
    return ()


def _scrub(text: str, source: _Source) -> str:
    """Remove any trace of the URL's credentials from git output before it reaches a caller."""
    text = text.replace(source.fetch_url, source.display)
    for secret in sorted(source.secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


# ------------------------------------------------------------------------------------ classification
def _bad_url(url: str, why: str) -> SourceError:
    return SourceError(f"{redact_url(url)!r} {why}", argument="repo_url", fix=_REPO_URL_FIX)


def _local_path(url: str, policy: SourcePolicy) -> Path | None:
    """The path of a local source (absolute path or file:// URL), or None for anything else."""
    if not (url.startswith("/") or url.lower().startswith("file:")):
        return None
    if not policy.allow_local:
        raise SourceError(
            f"local paths and file:// URLs are disabled on this server ({_SETTING} is off: they would read "
            "the server's own disk).",
            argument="repo_url",
            fix="push the code to a git host and pass its URL, e.g. https://github.com/owner/repo.git; "
            f"or (operator) set {_SETTING}=true on a single-user machine",
        )
    if url.startswith("/"):
        return Path(url)
    parts = urlsplit(url)
    if not url.lower().startswith("file://") or parts.netloc not in ("", "localhost"):
        raise _bad_url(url, "is not a local file URL; write it as file:///absolute/path")
    return Path(parts.path)


def _host_of(raw: str, url: str) -> str:
    """Validate a URL's host: a DNS name, a canonical dotted-quad IPv4 or a bracketed IPv6 literal."""
    if raw.startswith("[") and raw.endswith("]"):
        if "%" in raw:
            raise _bad_url(url, "has an IPv6 zone id; pass a global address or a host name.")
        try:
            return str(ipaddress.IPv6Address(raw[1:-1]))
        except ValueError:
            raise _bad_url(url, "has an invalid IPv6 address (zone ids are not supported).") from None
    if _NUMERIC_LABELS.match(raw):
        try:
            if str(ipaddress.IPv4Address(raw)) == raw:
                return raw
        except ValueError:
            pass
        # 2130706433, 0x7f.1, 0177.0.0.1, 127.1: forms resolvers read as IPv4 but people cannot check.
        raise _bad_url(url, "writes its IP address in a non-standard form; use dotted decimal (e.g. 203.0.113.7).")
    if len(raw) > 253 or not _DNS_NAME.match(raw):
        raise _bad_url(url, "has an invalid host name (letters, digits, '-' and '.', no trailing dot).")
    return raw.lower()


def _parse_remote(url: str) -> _Target:
    """Check a remote URL strictly, so that what we resolve is exactly what git and curl will connect to."""
    if any(c in url for c in "\\") or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise _bad_url(url, "contains spaces, control characters or backslashes.")
    if "://" not in url:
        m = _SCP_LIKE.match(url)
        if not m or "::" in url:
            # --- newuser6: `github.com/owner/repo` (as people write a repository) was told to pass "a reachable git
            # URL such as https://github.com/owner/repo.git", not that its own https form is one
            host = url.split("/", 1)[0]
            fix = _REPO_URL_FIX
            if "/" in url and "." in host and _DNS_NAME.match(host):
                try:
                    page = _web_page(f"https://{url}", _parse_remote(f"https://{url}"))
                    fix = f"pass the https URL https://{url}"
                except SourceError:  # its https form is no URL either
                    page = None
                if page is not None:
                    raise page  # github.com/owner/repo/tree/main/api: what deploys that folder
            raise SourceError(f"{url!r} is neither a URL nor an absolute path.", argument="repo_url", fix=fix)
        user = m.group("user")
        if user is not None and not _SSH_USER.match(user):
            raise _bad_url(url, "has an invalid ssh user name.")
        return _Target(kind="scp", host=_host_of(m.group("host"), url), port=22, url=url, user=user,
                       path=m.group("path"))
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _bad_url(url, "is not a valid URL.") from None
    scheme = parts.scheme.lower()
    if scheme not in _REMOTE_SCHEMES:
        raise SourceError(
            f"{redact_url(url)!r} uses an unsupported scheme {parts.scheme!r}; "
            f"supported: {', '.join(_REMOTE_SCHEMES)} (and absolute paths/file:// when {_SETTING} is on).",
            argument="repo_url",
            fix=_REPO_URL_FIX,
        )
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if "@" in userinfo or not _USERINFO.match(userinfo):
        raise _bad_url(url, "has an invalid user/password part (percent-encode '@', '/' and ':' in tokens).")
    user = userinfo.split(":", 1)[0] if userinfo else None
    if scheme == "ssh" and user is not None and not _SSH_USER.match(user):
        raise _bad_url(url, "has an invalid ssh user name.")
    m = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]*)(?::([0-9]{1,5}))?", hostport)
    if not m or not m.group(1):
        raise _bad_url(url, "has no valid host.")
    port = int(m.group(2)) if m.group(2) else _DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise _bad_url(url, "has an invalid port.")
    return _Target(kind=scheme, host=_host_of(m.group(1), url), port=port, url=url, user=user)


# --- newuser6: a git host's web page for a directory, file or commit of a repository (what a browser's address bar
# shows: https://github.com/owner/repo/tree/main/api) is not the repository's git URL: git asked github.com for a
# repository at that whole path, and the agent read "not found ... if it is private, pass a URL with a token"
_WEB_PAGES = {
    "github.com": re.compile(r"^/(?P<repo>[^/]+/[^/]+?)(?:\.git)?/(?P<kind>tree|blob|commit)/(?P<rest>.+)$"),
    "gitlab.com": re.compile(
        r"^/(?P<repo>[^/-][^/]*(?:/[^/-][^/]*)+?)(?:\.git)?/-/(?P<kind>tree|blob|commit)/(?P<rest>.+)$"),
    "bitbucket.org": re.compile(r"^/(?P<repo>[^/]+/[^/]+?)(?:\.git)?/(?P<kind>src|commits)/(?P<rest>.+)$"),
}
_WEB_PAGE_OF = {
    "tree": "a directory", "src": "a directory", "blob": "a file", "commit": "a commit", "commits": "a commit",
}  # fmt: skip


def _web_page(url: str, target: _Target) -> SourceError | None:
    """The refusal of a git host's web page of a directory, file or commit (github.com, gitlab.com, bitbucket.org),
    naming the repo_url, ref and app_dir that deploy it; None for any other URL."""
    pattern = _WEB_PAGES.get(target.host.removeprefix("www."))
    if target.kind not in ("http", "https") or pattern is None:
        return None
    m = pattern.match(urlsplit(url).path.rstrip("/"))
    parts = [unquote(p) for p in m["rest"].split("/") if p] if m else []
    if m is None or not parts:
        return None
    kind, ref, below = m["kind"], parts[0], parts[1:]
    if kind == "blob":
        below = below[:-1]  # the file's directory
    elif kind in ("commit", "commits"):
        below = []
    host = target.host.removeprefix("www.")
    repo = f"https://{'<token>@' if target.user else ''}{host}/{m['repo']}.git"
    args = [f"repo_url={repo!r}", f"ref={ref!r}"] + ([f"app_dir={'/'.join(below)!r}"] if below else [])
    return SourceError(
        f"{redact_url(url)!r} is the web page of {_WEB_PAGE_OF[kind]} in a repository on {host}, not the "
        "repository's git URL (git would ask for a repository at that whole path).",
        argument="repo_url",
        fix=f"pass {', '.join(args)}" + ("" if kind in ("commit", "commits") or not below else
                                         " (if the branch name holds a '/', ref is the path's first parts and "
                                         "app_dir the rest)"),
    )
# --- end


def check_repo_url(repo_url: str, policy: SourcePolicy) -> None:
    """Refuse a `repo_url` that can never be fetched here (syntax, local sources when disabled), without I/O.

    Lets callers fail fast before creating anything; `resolve_commit` repeats these checks and adds
    the ones that need the network (address of the host) or the tenant's rights (local paths).
    """
    url = repo_url.strip()
    if not url or url.startswith("-") or any(c in url for c in "\n\r\0"):
        raise _bad_url(url, "is not a git repository URL.")
    if _local_path(url, policy) is None:
        target = _parse_remote(url)
        if (page := _web_page(url, target)) is not None:  # newuser6
            raise page


def _getaddrinfo(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (a seam for tests: they pin names to chosen addresses)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address on the public internet: not loopback, private (RFC 1918, CGNAT, ULA),
    link-local (metadata), unspecified, multicast or reserved, nor an IPv6 form embedding one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not _public_address(embedded):
            return False
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
        or ip.is_unspecified
    )


def _blocked(target: _Target) -> SourceError:
    """One message for every refused address: it never says what answered, or whether the name resolved."""
    return SourceError(
        f"{redact_url(target.url)!r} does not point at a public internet host: this server refuses hosts "
        "that resolve to loopback, private, link-local (cloud metadata) or other non-public addresses, "
        "and names it cannot resolve.",
        argument="repo_url",
        fix=_BLOCKED_FIX,
    )


async def _checked_addresses(target: _Target, deadline: _Deadline) -> list[str]:
    """Resolve the host once and refuse it unless every address is public."""
    try:
        literal = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = await asyncio.wait_for(
                asyncio.to_thread(_getaddrinfo, target.host, target.port), timeout=max(deadline.left(), 0.01)
            )
        except (OSError, UnicodeError, TimeoutError):
            raise _blocked(target) from None
    if not addresses or not all(_public_address(ipaddress.ip_address(a)) for a in addresses):
        raise _blocked(target)
    return addresses


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _pinned(target: _Target, addresses: list[str]) -> _Source:
    """A source whose connection goes to the checked address, whatever DNS says by then."""
    display = redact_url(target.url)
    secrets = _secrets_of(target.url)
    if target.host == addresses[0]:  # an IP literal: nothing to resolve, nothing to rebind
        return _Source(fetch_url=target.url, display=display, local=False, secrets=secrets)
    if target.kind in ("http", "https"):
        # The URL keeps the name (Host header, TLS SNI and certificate check); curl connects to the pin.
        pin = f"http.curloptResolve={target.host}:{target.port}:{','.join(_bracketed(a) for a in addresses)}"
        return _Source(fetch_url=target.url, display=display, local=False, config=(pin,), secrets=secrets)
    ip = _bracketed(addresses[0])
    if target.kind == "scp":
        url = f"{target.user + '@' if target.user else ''}{ip}:{target.path}"
        return _Source(fetch_url=url, display=target.url, local=False, ssh_alias=target.host, secrets=secrets)
    parts = urlsplit(target.url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo + '@' if userinfo else ''}{ip}:{target.port}"
    url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    # git:// sends the host in its request line; most daemons ignore it, and ssh checks the key by alias.
    return _Source(fetch_url=url, display=display, local=False,
                   ssh_alias=target.host if target.kind == "ssh" else None, secrets=secrets)


async def _classify(repo_url: str, ws: SourceWorkspace, policy: SourcePolicy, deadline: _Deadline,
                    auth: GitAuth | None = None) -> _Source:
    """Validate `repo_url` and decide how git reaches it (with `auth`'s credentials for an http(s) URL). Raises
    SourceError(argument=repo_url)."""
    source = await _classify_target(repo_url, ws, policy, deadline)
    if auth is None:
        return _userinfo_to_header(source)
    if source.local or not source.fetch_url.lower().startswith(("https://", "http://")) \
            or has_userinfo(source.fetch_url):
        raise SourceError(f"{source.display!r} cannot use the stored GitHub credentials (not a plain http(s) URL).",
                          argument="repo_url", fix="pass the repository's https URL without a token in it")
    # --- ghkeys (issue 11): the token stays in InkMCP's process: git (the tenant's uid) reads through a loopback
    # proxy that adds it (inkmcp/github/git_proxy.py), so /proc/PID/{environ,cmdline,mem} of git never hold it
    from inkmcp.github.git_proxy import git_env

    env, base = await git_env(source.fetch_url, auth.header, ttl=max(deadline.left(), 1.0) + 30.0)
    return replace(source, env=env, secrets=(*source.secrets, *auth.secrets, base), grant=base)
    # --- end


def _userinfo_to_header(source: _Source) -> _Source:
    """An http(s) source whose URL holds `user:token@`: the same fetch with the credentials moved from the URL (git's
    argv, world-readable in /proc) into an Authorization header in git's environment (see the module docstring)."""
    parts = urlsplit(source.fetch_url)
    if source.local or parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return source
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    bare = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    auth = GitAuth(token=unquote(password), username=unquote(user))
    return replace(source, fetch_url=bare, env=(*source.env, *auth.env(bare)),
                   secrets=(*source.secrets, *(s for s in auth.secrets if len(s) >= 3)))


def _revoke_grant(source: _Source) -> None:
    """The proxy's secret URL dies with the fetch that needed it, not at its deadline (git is done with it)."""
    if source.grant is not None:
        from inkmcp.github.git_proxy import proxy

        proxy().revoke(source.grant)


def has_userinfo(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return False


async def _classify_target(repo_url: str, ws: SourceWorkspace, policy: SourcePolicy, deadline: _Deadline) -> _Source:
    check_repo_url(repo_url, policy)
    url = repo_url.strip()
    path = _local_path(url, policy)
    if path is not None:
        await _check_local_repo(path, url, ws, deadline)
        return _Source(fetch_url=str(path), display=str(path), local=True)
    target = _parse_remote(url)
    if policy.allow_local or (policy.trusted_origins and origin_of(url) in policy.trusted_origins):
        # One person's machine: git reaches what that person can reach, as plain git would. A trusted origin: the
        # operator named this host (INKMCP_GITHUB_URL) as the git host, wherever it lives.
        return _Source(fetch_url=url, display=redact_url(url), local=False, secrets=_secrets_of(url))
    return _pinned(target, await _checked_addresses(target, deadline))


async def _check_local_repo(path: Path, shown: str, ws: SourceWorkspace, deadline: _Deadline) -> None:
    """A local source must be a git repository the tenant can read, checked with the tenant's rights.

    "Missing" and "not readable by this project's user" get the same answer, so the check tells a
    caller nothing about paths only root can see.
    """
    if not path.is_absolute():
        raise SourceError(f"{shown!r} is a relative path.", argument="repo_url",
                          fix="pass an absolute path, e.g. /srv/app")
    if _as_inkmcp(ws):  # the same test as _LOCAL_CHECK, with InkMCP's own rights: no child process needed
        rc = _local_check(path)
    else:
        proc = await _spawn(["/bin/sh", "-c", _LOCAL_CHECK, "sh", str(path)], ws, {"PATH": "/usr/bin:/bin"})
        rc, _, _ = await _wait(proc, deadline, f"checking {shown}")
    who = f"this project's Unix user ({ws.run_as.user})" if ws.run_as else "the InkMCP server"
    if rc == 3:
        raise SourceError(
            f"{shown!r} does not exist, is not a directory, or cannot be read by {who}.",
            argument="repo_url",
            fix="pass the absolute path of a git repository that user can read (its directory and parents "
            "readable and searchable by others, e.g. chmod -R o+rX), or push it to a git host and pass that URL",
        )
    if rc != 0:
        raise SourceError(
            f"{shown!r} is a directory but not a git repository (InkMCP deploys commits, not loose files).",
            argument="repo_url",
            fix=f"run `cd {shown} && git init && git add -A && git commit -m deploy`, then pass that path",
        )


def _local_check(path: Path) -> int:
    """`_LOCAL_CHECK` in this process (its exit codes), for sources read with InkMCP's own rights."""
    p = str(path)
    if not (os.path.isdir(p) and os.access(p, os.R_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)):
        return 3
    if os.path.exists(os.path.join(p, ".git")):
        return 0
    bare = (os.path.isfile(os.path.join(p, "HEAD")) and os.path.isdir(os.path.join(p, "objects"))
            and os.path.isdir(os.path.join(p, "refs")))  # fmt: skip
    return 0 if bare else 4


def _as_inkmcp(ws: SourceWorkspace) -> bool:
    """True when the workspace's git processes run with InkMCP's own ids (no tenant: e.g. the Coolify provider,
    which only reads the repo here). Then the mirrors dir is InkMCP's own, and checks that otherwise run as the
    tenant (to look at nothing root could see and the tenant could not) can run in this process instead."""
    run_as = ws.run_as
    return run_as is None or (run_as.uid == os.geteuid() and run_as.gid == os.getegid())


# ------------------------------------------------------------------------------------------ processes
def _timeout(timeout: float | None) -> float:
    """A call's time budget: as given, else INKMCP_GIT_TIMEOUT (120 s)."""
    return timeout if timeout is not None else git_settings().git_timeout


class _Deadline:
    """One time budget shared by every git call of a request, so `timeout` bounds the whole call."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# Certificate authorities for https fetches: the distribution's bundle file, and no CA directory. Why: Debian's and
# Ubuntu's git runs libcurl built on GnuTLS, which reads and parses every file of its default CA directory
# (/etc/ssl/certs: 432 files on Debian 12) at each fetch, besides the bundle that holds the same authorities
# (`update-ca-certificates` writes both): 36 ms of a first deploy's ~70 ms `git fetch` over https
# (benchmarks/coolify_deploy.py --git https). GIT_SSL_CAPATH=/dev/null is no directory: GnuTLS reads nothing from
# it and OpenSSL finds nothing there; the peer is still verified, against the bundle. A CA copied into the directory
# alone (not into the bundle: no `update-ca-certificates` run) is not trusted by fetches. Without a known bundle,
# libcurl's defaults stay.
_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem",
               "/etc/ssl/cert.pem")  # Debian/Ubuntu/Alpine/Arch, Fedora/RHEL, openSUSE, others
CA_BUNDLE: str | None = next((path for path in _CA_BUNDLES if os.path.isfile(path)), None)


def _ca_env() -> dict[str, str]:
    return {"GIT_SSL_CAINFO": CA_BUNDLE, "GIT_SSL_CAPATH": "/dev/null"} if CA_BUNDLE else {}


def _git_env(source: _Source) -> dict[str, str]:
    """A minimal, prompt-free environment: nothing from InkMCP's own environment (it holds secrets)."""
    protocols = "https:http:ssh:git" + (":file" if source.local else "")
    # --- redteam4: -F /dev/null: ssh reads ~/.ssh/config from the passwd home (not $HOME), the tenant's own, so a
    # ProxyCommand / Match exec / LocalCommand there ran in this fetch, outside the tenant's sandbox
    # (tests/security/test_redteam4_git_ssh.py); no config file is read now, the user's or the system's
    ssh = "ssh -F /dev/null -o BatchMode=yes -o ConnectTimeout=15 -o StrictHostKeyChecking=accept-new"
    # --- end
    # No key is offered: InkMCP fetches with no ssh key of its own (README: an ssh URL needs a key the server does not
    # have), and run as InkMCP's own user (the Coolify provider, a non-root server) ssh offered that user's default
    # keys (~/.ssh/id_*) to any host an account named, which learns them (redteam4, noticed)
    ssh += " -o IdentitiesOnly=yes -o IdentityFile=none -o IdentityAgent=none"
    if source.ssh_alias:
        # ssh connects to the checked IP; the key is still checked (and remembered) under the name.
        ssh += f" -o HostKeyAlias={source.ssh_alias} -o CheckHostIP=no"
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
        "GIT_SSH_COMMAND": ssh,
        "GIT_PROXY_COMMAND": "",  # set (even empty), it wins over a core.gitProxy the tenant put in the mirror's config
        **_ca_env(),
        **dict(source.env),
    }


def _git_base(source: _Source) -> list[str]:
    base = [
        "git",
        "-c", "credential.helper=",
        "-c", "core.askPass=/bin/false",
        "-c", "gc.autoDetach=false",
        "-c", "http.followRedirects=false",  # a redirect could lead anywhere, after our address check
        "-c", "http.proxy=",
        # Nothing the tenant wrote into the mirror may run a command outside its sandbox (module docstring).
        "-c", "core.hooksPath=/dev/null",
        "-c", "core.fsmonitor=false",
        "-c", "core.alternateRefsCommand=true",
        "-c", "fetch.recurseSubmodules=false",
        # fetch.unpackLimit stays git's (100 objects): a fetch of fewer objects (a redeploy, a small repo) is
        # written as loose objects, which git does not fsync, not as a pack and index it fsyncs (core.fsync's
        # default). With `fetch.unpackLimit=1` (gitjail, so that unpack-objects never deflated a bomb again) every
        # deploy's fetch paid two fsyncs: `git fetch` 21.6 -> 36.2 ms p50 on a quiet box (overhead8). A bomb costs
        # no more than before: one over INKMCP_GIT_PROCESS_MEMORY_MB fails at its allocation either way (0.1 s),
        # one under it costs unpack-objects up to ~2.5x index-pack's time (900 MiB: 26 s vs 11 s), and any fetch
        # stops at INKMCP_GIT_TIMEOUT and RLIMIT_CPU, which a delta chain reaches with index-pack too.
    ]
    if source.local:
        # Only local sources need the file transport (also for repos that use local submodules).
        base += ["-c", "protocol.file.allow=always"]
    for setting in source.config:
        base += ["-c", setting]
    return base


_SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin")


def _as_tenant(argv: list[str], ws: SourceWorkspace | None) -> tuple[list[str], dict[str, Any]]:
    """argv and Popen arguments that make a child run as the project's user, with no supplementary groups.

    util-linux's `setpriv` (Essential on Debian) switches real, effective, saved and fs ids, clears
    the groups and sets no_new_privs (no setuid binary, e.g. one a hook runs, gives the tenant more), then
    execs. Going through it instead of Popen(user=, group=, extra_groups=) keeps CPython on its vfork path: a
    full fork of the ~130 MB server costs 25-35 ms per child, and a deploy runs several git steps (measured in
    benchmarks/isolation_cost.py).
    """
    run_as = ws.run_as if ws is not None else None
    if run_as is None or (run_as.uid == os.geteuid() and run_as.gid == os.getegid()):
        return argv, {}
    if _SETPRIV is not None and os.geteuid() == 0:
        return [_SETPRIV, f"--reuid={run_as.uid}", f"--regid={run_as.gid}", "--clear-groups", "--no-new-privs", "--",
                *argv], {}  # fmt: skip
    return argv, {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


async def _spawn(
    argv: list[str], ws: SourceWorkspace | None, env: dict[str, str], **kw: Any
) -> Any:
    """Start a child in its own session, umask 077, cwd /, as the workspace's user (None: as InkMCP).

    --- gitjail: through the git jail (build/gitjail.py: a cgroup and resource limits every child inherits, set
    once on a small starter process), unless INKMCP_GIT_JAIL=false or the uid switch needs Popen(user=) (no
    setpriv). Returns an asyncio subprocess or a `gitjail.JailedProcess` (the same use)."""
    kw.setdefault("stdin", asyncio.subprocess.DEVNULL)
    kw.setdefault("stdout", asyncio.subprocess.PIPE)
    kw.setdefault("stderr", asyncio.subprocess.PIPE)
    argv, identity = _as_tenant(argv, ws)
    if not identity and gitjail.enabled():
        try:
            return await gitjail.spawn(argv, env, stdin=kw["stdin"], stdout=kw["stdout"], stderr=kw["stderr"])
        except OSError as e:
            if e.errno == errno.EAGAIN:  # the git group's pids.max: every git process of this server at once
                raise _too_many_processes() from None
            raise
    return await asyncio.create_subprocess_exec(
        *argv, env=env, cwd="/", umask=0o077, start_new_session=True, **identity, **kw
    )


async def _wait(proc: asyncio.subprocess.Process, deadline: _Deadline, doing: str) -> tuple[int, str, str]:
    """Collect a child's output within the deadline; on timeout kill its whole session."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=max(deadline.left(), 0.01))
    except (TimeoutError, asyncio.CancelledError) as exc:
        await kill_process_group(proc)
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise SourceError(
            f"{doing} did not finish within {deadline.seconds:.0f}s.",
            argument="repo_url",
            fix="check that the repository is reachable and not huge, or retry; "
            + "private repos need a token in the URL",
        ) from None
    assert proc.returncode is not None
    return proc.returncode, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")


async def _git(
    args: list[str], source: _Source, ws: SourceWorkspace, deadline: _Deadline, *, git_dir: Path | None = None
) -> tuple[int, str, str]:
    """Run git as the tenant; return (returncode, stdout, scrubbed stderr). Raises SourceError on timeout."""
    argv = _git_base(source) + ([f"--git-dir={git_dir}"] if git_dir else []) + args
    proc = await _spawn(argv, ws, _git_env(source))
    rc, out, err = await _wait(proc, deadline, f"fetching {source.display}")
    return rc, out, _scrub(err, source)


# ------------------------------------------------------------------------------------------- mirrors
def _mirror_key(source: _Source) -> str:
    """Key the mirror by the credential-free URL, so a rotated token still reuses the same mirror.

    Safe to share between callers of one project with different credentials because every call
    fetches first and fails when the remote refuses, so a mirror never serves a caller the remote
    would not.
    """
    return hashlib.sha256(source.display.encode()).hexdigest()[:32]


@contextlib.asynccontextmanager
async def _locked(ws: SourceWorkspace, key: str) -> AsyncIterator[None]:
    """Serialize work on one mirror: an asyncio lock within this process, flock across processes.

    The lock file lives in the root-only locks dir: root never creates files where the tenant writes.
    """
    path = ws.locks_dir / f"{key}.lock"
    lock = _mirror_locks.setdefault(str(path), asyncio.Lock())
    async with lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
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


async def _ensure_mirror(mirror: Path, source: _Source, ws: SourceWorkspace, deadline: _Deadline) -> None:
    """Create the bare mirror if missing or broken (e.g. an earlier run died during `git init`).

    Both the check and the cleanup run as the tenant: root does not look inside the tenant's dir. A workspace
    without a tenant (`_as_inkmcp`) is InkMCP's own: a missing mirror is created at once and a complete one used as
    it is, without a git process for the check (one per deploy).
    """
    if _as_inkmcp(ws):
        if not os.path.lexists(mirror):
            await _init_mirror(mirror, source, ws, deadline)
            return
        if _complete_bare(mirror):
            return
    # --- mirrorcfg: one git process answers both "is it a complete bare repository" (as `rev-parse
    # --is-bare-repository` did) and "does its config hold only what `git init --bare` writes"
    rc, out, _ = await _git(["config", "--local", "--list"], source, ws, deadline, git_dir=mirror)
    foreign = _foreign_settings(out) if rc == 0 else None
    if foreign == []:
        return
    if foreign:
        logging.getLogger(__name__).warning(
            "the repository cache of %s held settings InkMCP never writes (%s): removed, fetching it anew",
            source.display, ", ".join(foreign[:8]))
    rm = await _spawn(["rm", "-rf", "--", str(mirror)], ws, {"PATH": "/usr/bin:/bin"})
    await _wait(rm, deadline, "clearing a broken repository cache")
    await _init_mirror(mirror, source, ws, deadline)


async def _init_mirror(mirror: Path, source: _Source, ws: SourceWorkspace, deadline: _Deadline) -> None:
    if _as_inkmcp(ws) and not os.path.lexists(mirror):
        _write_bare(mirror)
        return
    rc, _, err = await _git(["init", "--bare", "--quiet", str(mirror)], source, ws, deadline)
    if rc != 0:
        raise SourceError(f"could not create the repository cache: {err.strip()}", argument="repo_url")


_BARE_CONFIG = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
# --- mirrorcfg: what `git init --bare` writes in a mirror's config (the values git detects for the filesystem may vary,
# the two that change how git reads the repository may not); InkMCP's fetches add nothing
_INIT_SETTINGS: dict[str, str | None] = {
    "core.repositoryformatversion": "0", "core.bare": "true", "core.filemode": None, "core.symlinks": None,
    "core.ignorecase": None, "core.precomposeunicode": None, "core.logallrefupdates": None}


def _foreign_settings(listing: str) -> list[str] | None:
    """The names of the settings in `git config --local --list` output that `git init --bare` does not write ([]
    when there is none), or None when it is not a bare repository's config. Includes are not followed (--local
    names one file), so an `include.path` is itself a foreign setting."""
    foreign: list[str] = []
    bare = False
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        name = name.lower()  # section and key are case-insensitive (a subsection is not, but none is allowed)
        if name not in _INIT_SETTINGS or (_INIT_SETTINGS[name] is not None and value != _INIT_SETTINGS[name]):
            foreign.append(_printable(name))
        bare = bare or (name == "core.bare" and value == "true")
    return foreign if bare or foreign else None


def _printable(name: str) -> str:
    """A setting's name for the log: a tenant wrote it, so no control character and no more than 80 characters."""
    return "".join(c if c.isprintable() else "?" for c in name)[:80]


def _write_bare(mirror: Path) -> None:
    """What `git init --bare` writes (gitrepository-layout: HEAD, config, objects/, refs/; no templates), for an
    InkMCP-owned mirror, without a git process. Built under a temporary name and renamed into place, so a crash
    leaves no half-made mirror under the real name."""
    tmp = mirror.with_name(f".{mirror.name}.{os.getpid()}.{time.monotonic_ns()}.init")
    try:
        for d in ("", "objects", "objects/info", "objects/pack", "refs", "refs/heads", "refs/tags"):
            (tmp / d).mkdir(mode=0o700)
        for name, content in (("HEAD", "ref: refs/heads/master\n"), ("config", _BARE_CONFIG)):
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(content)
        os.rename(tmp, mirror)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SourceError(f"could not create the repository cache: {e.strerror}", argument="repo_url") from None


def _complete_bare(mirror: Path) -> bool:
    """A bare repository `git init --bare` finished writing (its config says so, and HEAD, objects and refs are
    there): what `rev-parse --is-bare-repository` answers `true` for. Only for InkMCP's own mirrors."""
    try:
        if not stat.S_ISDIR(os.lstat(mirror).st_mode):
            return False
        if not ((mirror / "HEAD").is_file() and (mirror / "objects").is_dir() and (mirror / "refs").is_dir()):
            return False
        config = (mirror / "config").read_text(errors="replace")
    except OSError:
        return False
    return re.search(r"^\s*bare\s*=\s*true\s*$", config, re.MULTILINE | re.IGNORECASE) is not None


# git's closing words after any failed SSH (or other) transport: the cause is on the lines before them. Taking the
# last three lines of stderr kept only these and "" (a new user's `git@github.com:...` gave "could not fetch
# git@github.com:owner/repo.git:  Please make sure you have the correct access rights and the repository exists.").
_GIT_BOILERPLATE = re.compile(
    r"^(please make sure you have the correct access rights|and the repository exists\.?)$", re.IGNORECASE
)


def _https_equivalent(display: str) -> str | None:
    """The https URL of an SSH remote (`git@host:owner/repo.git`, `ssh://git@host[:port]/owner/repo.git`), for the
    fix: InkMCP holds no SSH key of the caller's, so a public repo is fetched over https, a private one with a token."""
    if display.lower().startswith("ssh://"):
        parts = urlsplit(display)
        host, path = parts.hostname, parts.path.lstrip("/")
    elif "://" not in display and (m := _SCP_LIKE.match(display)):
        host, path = m.group("host"), m.group("path").lstrip("/")
    else:
        return None
    if not host or not path:
        return None
    return f"https://{_bracketed(host) if ':' in host else host}/{path}"


_SIGNALLED = re.compile(r"died of signal (\d+)")
_OOM = ("out of memory", "cannot allocate memory", "malloc failed")


def _limit_hit(source: _Source, doing: str, returncode: int | None, stderr: str, oom_before: int | None = None,
               ) -> SourceError | None:
    """--- gitjail: the error for a git process stopped by one of the git jail's limits (build/gitjail.py), naming
    the limit and its setting; None when the failure was something else. git reports its helpers' deaths
    ("index-pack died of signal 9"); a process of ours that died shows as a negative return code."""
    lowered = stderr.lower()
    signals = {int(n) for n in _SIGNALLED.findall(lowered)}
    if returncode is not None and returncode < 0:
        signals.add(-returncode)
    s = git_settings()
    repo_fix = "remove huge files from the repository's history (git filter-repo), or deploy a smaller repository"
    if any(word in lowered for word in _OOM):
        return SourceError(
            f"{doing} needed more memory than one git process may use on this server "
            f"({s.git_process_memory_mb} MiB, INKMCP_GIT_PROCESS_MEMORY_MB): the repository holds an object that "
            "expands to more than that (a huge file, or a crafted pack).",
            argument="repo_url", fix=f"{repo_fix}; or (operator) raise INKMCP_GIT_PROCESS_MEMORY_MB")
    if signal.SIGXCPU in signals:
        return SourceError(
            f"{doing} used more CPU time than one git process may on this server ({int(s.git_timeout * 2)} s, twice "
            "INKMCP_GIT_TIMEOUT): a repository that is very expensive to unpack (e.g. very long delta chains).",
            argument="repo_url", fix=f"repack it with normal settings (git gc --aggressive) or {repo_fix}; or "
            "(operator) raise INKMCP_GIT_TIMEOUT")
    if signal.SIGXFSZ in signals or "file size limit exceeded" in lowered:
        return SourceError(
            f"{doing} wrote a file bigger than git may write on this server ({s.git_max_file_mb} MiB, "
            "INKMCP_GIT_MAX_FILE_MB).", argument="repo_url", fix=f"{repo_fix}; or (operator) raise "
            "INKMCP_GIT_MAX_FILE_MB")
    if any(word in lowered for word in ("cannot fork", "unable to fork", "resource temporarily unavailable")):
        return _too_many_processes()
    if signal.SIGKILL in signals or (oom_before is not None and gitjail.oom_kills() > oom_before):
        return SourceError(
            f"{doing} was stopped: git was killed, most likely because all git processes together reached this "
            f"server's memory limit for them ({s.git_memory_mb} MiB, INKMCP_GIT_MEMORY_MB), e.g. while several "
            "large repositories were fetched at once.",
            argument="repo_url", fix=f"retry in a minute; if it fails again, {repo_fix}; or (operator) raise "
            "INKMCP_GIT_MEMORY_MB")
    said = [line.strip() for line in lowered.splitlines() if line.strip().startswith(("fatal:", "error:"))]
    if "invalid index-pack output" in lowered and not signals and len(said) == 1:  # index-pack killed without a
        # word (a failure of its own says why first); the memory group's kills are counted above, a failed
        # allocation says "out of memory": CPU time or file size is left
        return SourceError(
            f"{doing} was stopped while git unpacked the repository: it reached one of this server's limits for git, "
            f"its CPU time ({int(s.git_timeout * 2)} s per process, twice INKMCP_GIT_TIMEOUT) or the largest file "
            f"it may write ({s.git_max_file_mb} MiB, INKMCP_GIT_MAX_FILE_MB): a repository very expensive to unpack "
            "(e.g. very long delta chains) or a huge one.",
            argument="repo_url", fix=f"repack it with normal settings (git gc --aggressive) or {repo_fix}; or "
            "(operator) raise INKMCP_GIT_TIMEOUT or INKMCP_GIT_MAX_FILE_MB")
    return None


def _too_many_processes() -> SourceError:
    return SourceError(
        f"git could not start another process: all git processes of this server together are at their limit "
        f"({git_settings().git_pids_max} processes and threads, INKMCP_GIT_PIDS_MAX), e.g. many deploys fetching "
        "at once.", argument="repo_url", fix="retry in a minute; or (operator) raise INKMCP_GIT_PIDS_MAX")


def _fetch_error(source: _Source, stderr: str) -> SourceError:
    said = [line.strip() for line in stderr.strip().splitlines()]
    tail = " ".join([line for line in said if line and not _GIT_BOILERPLATE.match(line)][-3:])
    lowered = stderr.lower()
    if "couldn't find remote ref head" in lowered:
        return SourceError(
            f"{source.display} has no commits on its default branch.",
            argument="repo_url",
            fix="push at least one commit, or pass ref naming a branch that has commits",
        )
    if _REDIRECT.search(lowered):
        return SourceError(
            f"{source.display} answered with a redirect, and InkMCP does not follow redirects "
            "(they could lead to an address it refuses).",
            argument="repo_url",
            fix="pass the repository's final URL (e.g. its new address after a rename)",
        )
    if any(s in lowered for s in ("authentication failed", "could not read username", "permission denied")):
        hint = "for a private repo pass a URL with a token, e.g. https://<token>@github.com/owner/repo.git"
    elif any(s in lowered for s in ("not found", "does not appear to be a git repository", "does not exist")):
        hint = "check the owner/repository name and that the repository exists"
        # a git host answers a private repository it was asked for without credentials as "not found" (GitHub,
        # GitLab: they do not tell that it exists), so a new user's private repo read as a typo (newuser4)
        if source.display.lower().startswith(("https://", "http://")) and not source.secrets and not source.env:
            private = source.display.replace("://", "://<token>@", 1)
            hint += f"; if it is private, pass a URL with a token that can read it, e.g. {private}"
    elif any(s in lowered for s in ("could not resolve host", "refused", "timed out", "unable to access")):
        hint = "check the host name; the repository must be reachable from the InkMCP server"
    else:
        hint = "check the URL"
    if https := _https_equivalent(source.display):
        return SourceError(
            f"could not fetch {source.display}: {tail or 'git fetch failed'}",
            argument="repo_url",
            fix=f"pass the https URL {https}: InkMCP has no SSH key of yours (for a private repo, "
            f"{https.replace('https://', 'https://<token>@', 1)}); {hint}",
        )
    return SourceError(
        f"could not fetch {source.display}: {tail or 'git fetch failed'}",
        argument="repo_url",
        fix=f"{hint}; {_REPO_URL_FIX}",
    )


def _fetch_args(source: _Source, *targets: str) -> list[str]:
    args = ["fetch", "--quiet", "--no-write-fetch-head"]
    if source.local:
        args.append(f"--upload-pack={_LOCAL_UPLOAD_PACK}")
    return [*args, "--", source.fetch_url, *targets]


_GC_AUTO_LOOSE = 6700 // 256 + 1
_GC_AUTO_PACKS = 50


def _needs_maintenance(mirror: Path) -> bool:
    """Whether `git maintenance run --auto` (what a fetch starts at its end) would do anything in an InkMCP-owned
    mirror: its only default task is `gc --auto`, which acts past gc.auto loose objects (git samples
    objects/17: more than 6700/256 there) or gc.autoPackLimit packs (50). The same test here, without the process."""
    try:
        loose = len(os.listdir(mirror / "objects" / "17"))
    except OSError:
        loose = 0
    if loose >= _GC_AUTO_LOOSE:
        return True
    try:
        return sum(name.endswith(".pack") for name in os.listdir(mirror / "objects" / "pack")) > _GC_AUTO_PACKS
    except OSError:
        return False


# --- overhead9 (issue 8): how an InkMCP-owned mirror's fetch stores what it receives. `fetch.unpackLimit=1`: always one
# pack, indexed by `index-pack` (one pass; the jail's choice for bombs: a 600 MiB delta costs index-pack 6.9 s and
# unpack-objects 13.5 s), instead of `unpack-objects` writing each object of a small fetch as a loose file and deflating
# it again. `core.fsync=-pack,-pack-metadata`: that pack and its index are not fsynced, exactly as git never fsyncs
# loose objects or refs (core.fsync's default is `committed,-loose-object`; refs are not in it), so a mirror is as
# durable as with git's own setting for every fetch of fewer than 100 objects. Together, a deploy's git work into a new
# mirror: git CPU 34.8 -> 26.0 and 33.8 -> 27.5 ms in two same-run A/Bs, wall -5.4 / -16 ms at load 1.6 / 2.3
# (benchmarks/git_jail_cost.py --fresh-mirror --ab-fast-fetch). Only with `--no-auto-maintenance`: `-c` reaches every
# git child, and a gc (repack, then old objects deleted) must keep its pack fsynced. Only for a new mirror's first fetch
# (`_empty`): the project's first deploy, the one that brings the whole history; a redeploy's few objects stay loose, as
# git writes them. A mirror an unclean shutdown broke (an empty or truncated object file or pack) is not trusted: the
# fetch that finds it so removes it and fetches again into a new one (`_BrokenMirror`).
_FAST_FETCH = ["-c", "fetch.unpackLimit=1", "-c", "core.fsync=-pack,-pack-metadata"]
_BROKEN = re.compile(
    r"did not send all necessary objects|is corrupt|object file \S+ is empty|too short to be a packfile"
    r"|index file \S+ is too small|does not match index|does not point to a valid object|bad object"
    r"|unable to read|inflate: data stream error|missing (?:commit|tree|blob|tag) object")


def _empty(mirror: Path) -> bool:
    """An InkMCP-owned mirror that holds no object yet (`objects/` has only `info` and `pack`, and `pack` nothing):
    its first fetch. Later fetches keep git's own storage: a redeploy's few objects loose, as before (each pack
    one more index every lookup opens, until gc --auto repacks at 50; a same-run A/B of every fetch as a pack read
    +9.6 ms wall per redeploy at load 4, git CPU -1.5 ms)."""
    try:
        return set(os.listdir(mirror / "objects")) <= {"info", "pack"} and not os.listdir(mirror / "objects" / "pack")
    except OSError:
        return False


class _BrokenMirror(SourceError):
    """The fetch failed on what the mirror holds (git named a corrupt, empty or missing object or pack of it)."""


async def _fetch(mirror: Path, source: _Source, ws: SourceWorkspace, deadline: _Deadline) -> None:
    """Fetch all branches, tags and the remote HEAD (the default branch) in one round trip."""
    if await _fetch_in_process(mirror, source, ws, deadline):
        return
    refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
    args = _fetch_args(source, *refspecs, f"+HEAD:{_HEAD_REF}")
    args.insert(2, "--prune")
    if _as_inkmcp(ws) and not _needs_maintenance(mirror):
        args.insert(2, "--no-auto-maintenance")  # one git process fewer per deploy; it would have found nothing
        if _empty(mirror):
            args[:0] = _FAST_FETCH  # --- overhead9: a new mirror's first fetch: one pack, not fsynced (above)
    oom_before = gitjail.oom_kills()  # --- gitjail: git's helpers killed for the group's memory say nothing of it
    rc, _, err = await _git(args, source, ws, deadline, git_dir=mirror)
    if rc != 0 and "couldn't find remote ref head" in err.lower():
        # A remote whose HEAD points at a missing branch still has usable branches/tags.
        rc, _, err2 = await _git(args[:-1], source, ws, deadline, git_dir=mirror)
        if rc == 0:
            return
        err = err2 or err
    if rc != 0:
        limit = _limit_hit(source, f"fetching {source.display}", rc, err, oom_before)
        if limit is not None:
            raise limit
        error = _fetch_error(source, err)
        if _BROKEN.search(err.lower()):  # --- overhead9
            raise _BrokenMirror(error.message, argument=error.argument, fix=error.fix)
        raise error


IN_PROCESS_FETCH = True
"""--- overhead10 (issue 8): a new InkMCP-owned mirror's first fetch over http(s) is spoken by InkMCP's process
(`build/http_fetch.py`); False: always `git fetch` (the A/B of benchmarks/fetch_inprocess.py, and tests)."""


async def _fetch_in_process(mirror: Path, source: _Source, ws: SourceWorkspace, deadline: _Deadline) -> bool:
    """--- overhead10: True if `http_fetch` fetched into the new mirror; else the mirror is empty again (git's turn).

    Only for a mirror of InkMCP's own (no tenant uid: the Coolify provider's), still empty (a project's first deploy),
    from an http(s) URL with no credentials, no auth proxy and no setting but the address pin."""
    if not IN_PROCESS_FETCH or source.local or source.env or source.grant or not _as_inkmcp(ws) \
            or not _empty(mirror):
        return False
    target = http_fetch.target_of(source.fetch_url, source.config)
    if target is None:
        return False

    async def index_pack() -> Any:
        argv = [*_git_base(source), *_FAST_FETCH[2:], f"--git-dir={mirror}", "index-pack", "--stdin", "--fix-thin"]
        return await _spawn(argv, ws, _git_env(source), stdin=asyncio.subprocess.PIPE)

    return await http_fetch.first_fetch(target, mirror, index_pack, ca_bundle=CA_BUNDLE, seconds=deadline.left(),
                                        head_ref=_HEAD_REF)  # False: the mirror is empty again, git fetches


async def _fetch_anew(mirror: Path, source: _Source, ws: SourceWorkspace, deadline: _Deadline) -> None:
    """--- overhead9: after `_fetch` found the mirror broken: remove it (as its owner, as `_ensure_mirror` does) and
    fetch once more into a new one. A second failure is raised as it is (then it is the remote that is broken)."""
    logging.getLogger(__name__).warning("the repository cache of %s is broken (an unclean shutdown?): fetching it "
                                        "again", source.display)
    if _as_inkmcp(ws):
        shutil.rmtree(mirror, ignore_errors=True)
    else:
        rm = await _spawn(["rm", "-rf", "--", str(mirror)], ws, {"PATH": "/usr/bin:/bin"})
        await _wait(rm, deadline, "clearing a broken repository cache")
    await _init_mirror(mirror, source, ws, deadline)
    await _fetch(mirror, source, ws, deadline)


async def _rev_parse(mirror: Path, source: _Source, ws: SourceWorkspace, deadline: _Deadline, rev: str,
                     cat: _CatFile | None = None) -> str | None:
    if cat is not None:
        (answer,) = await cat.ask([f"info {rev}^{{commit}}"])
        return answer[0] if answer is not None else None
    rc, out, _ = await _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], source, ws, deadline,
                            git_dir=mirror)
    return out.strip() if rc == 0 and out.strip() else None


class _CatFile:
    """One `git cat-file --batch-command --buffer` (as the tenant) answering every question about a mirror's
    objects a deploy has before its checkout: which commit a ref names (all candidates at once) and how big that
    commit's tree is (the size check). One process instead of a `rev-parse` per candidate plus an `ls-tree`."""

    def __init__(self, proc: asyncio.subprocess.Process, source: _Source, deadline: _Deadline) -> None:
        self._proc = proc
        self._source = source
        self._deadline = deadline

    @classmethod
    async def open(cls, mirror: Path, source: _Source, ws: SourceWorkspace, deadline: _Deadline) -> _CatFile:
        argv = [*_git_base(source), f"--git-dir={mirror}", "cat-file", "--batch-command", "--buffer"]
        proc = await _spawn(argv, ws, _git_env(source), stdin=asyncio.subprocess.PIPE,
                            stderr=asyncio.subprocess.DEVNULL)
        return cls(proc, source, deadline)

    async def ask(self, commands: list[str], *, max_bytes: int | None = None, sizes: list[int] | None = None,
                  too_big: Callable[[], SourceError] | None = None) -> list[tuple[str, str, int, bytes | None] | None]:
        """Answers in order: (oid, type, size, contents for `contents`/None for `info`), None for a missing or
        ambiguous name.

        --- gitjail: an object's contents are read into InkMCP's memory only after its size (cat-file's header) is
        checked: `max_bytes` bounds the contents of all answers together (`too_big()` is raised past it), `sizes`
        gives each `contents` answer's expected size (as listed: the tenant owns the objects and could swap one for
        a bigger one in between). Past either, cat-file is killed with its output unread."""
        if not commands:
            return []
        try:
            return await asyncio.wait_for(self._ask(commands, max_bytes, sizes, too_big),
                                          timeout=max(self._deadline.left(), 0.01))
        except TimeoutError:
            await kill_process_group(self._proc)
            raise SourceError(f"reading {self._source.display} did not finish within {self._deadline.seconds:.0f}s.",
                              argument="repo_url", fix="retry; if the repository is very large, remove big files "
                              "from it") from None

    async def _ask(self, commands: list[str], max_bytes: int | None, sizes: list[int] | None,
                   too_big: Callable[[], SourceError] | None) -> list[tuple[str, str, int, bytes | None] | None]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write("".join(f"{c}\n" for c in commands).encode() + b"flush\n")
        await self._proc.stdin.drain()
        answers: list[tuple[str, str, int, bytes | None] | None] = []
        left = max_bytes
        for i, command in enumerate(commands):
            header = (await self._proc.stdout.readline()).decode(errors="replace").rstrip("\n")
            parts = header.split(" ")
            if not header or len(parts) != 3 or not parts[2].isdigit():
                if not header or parts[-1] not in ("missing", "ambiguous"):
                    raise await self._broken(header)
                answers.append(None)
                continue
            oid, kind, size = parts[0], parts[1], int(parts[2])
            body = None
            if command.startswith("contents "):
                if sizes is not None and size != sizes[i]:
                    await kill_process_group(self._proc)
                    raise SourceError(f"the objects of {self._source.display} changed while they were read (one is "
                                      f"{size:,} bytes, listed as {sizes[i]:,})", argument="repo_url",
                                      fix="deploy again, and do not change the repository cache during a deploy")
                if left is not None:
                    left -= size
                    if left < 0:
                        await kill_process_group(self._proc)
                        raise too_big() if too_big is not None else SourceError(
                            f"an object of {self._source.display} is too big to read", argument="repo_url")
                body = (await self._proc.stdout.readexactly(size + 1))[:-1]
            answers.append((oid, kind, size, body))
        return answers

    async def _broken(self, header: str) -> SourceError:
        """cat-file answered nothing or nonsense: if it died of one of the git limits, an error naming the limit."""
        if not header:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), timeout=min(2.0, max(self._deadline.left(), 0.01)))
            rc = self._proc.returncode
            hit = _limit_hit(self._source, f"reading {self._source.display}", rc, "")
            if hit is not None:
                return hit
            if rc:  # its stderr is not read (git says "Out of memory" there): the likely causes, with the settings
                s = git_settings()
                return SourceError(
                    f"reading {self._source.display}'s objects failed: git stopped (exit status {rc}). An object in "
                    "the repository may need more memory to unpack than one git process may use here "
                    f"({s.git_process_memory_mb} MiB, INKMCP_GIT_PROCESS_MEMORY_MB), or its cache is damaged.",
                    argument="repo_url", fix="remove huge files from the repository's history, or deploy a smaller "
                    "repository; or (operator) raise INKMCP_GIT_PROCESS_MEMORY_MB")
        return SourceError(f"could not read {self._source.display}'s objects (git cat-file said "
                           f"{_scrub(header, self._source)!r})", argument="repo_url")

    async def close(self) -> None:
        """cat-file ends at the end of its input; killed if it does not within the deadline or the wait is
        cancelled (nothing of it outlives the call)."""
        if self._proc.returncode is None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                await asyncio.wait_for(self._proc.wait(), timeout=max(self._deadline.left(), 0.01))
            except TimeoutError:
                await kill_process_group(self._proc)
            except BaseException:
                await kill_process_group(self._proc)
                raise

    async def measure(self, sha: str, limit: int | None = None, max_tree_bytes: int | None = None,
                      ) -> tuple[int, int]:
        """(bytes of all files, entries) of commit `sha`'s tree, counted like `ls-tree -r -l` (a submodule is an
        entry without bytes). `limit`, `max_tree_bytes`: see `listing`."""
        listing = await self.listing(sha, limit, max_tree_bytes)
        return sum(size for _, _, _, size in listing), len(listing)

    async def listing(self, sha: str, limit: int | None = None, max_tree_bytes: int | None = None,
                      ) -> list[tuple[tuple[bytes, ...], str, str, int]]:
        """Every entry of commit `sha`'s tree but directories: (path parts, mode, oid, bytes), read level by level
        (one question per level for the trees, one for the sizes of their files); a submodule has no bytes.

        `limit`: raise (`_too_many`) as soon as more files and directories than this are seen. Trees are asked for
        in batches, so a tree that names one subtree many times (a few KB in git, 1e9 paths) stops within a batch
        of the limit instead of after expanding a whole level in memory.
        """
        out: list[tuple[tuple[bytes, ...], str, str, int]] = []
        trees: list[tuple[tuple[bytes, ...], str]] = [((), f"{sha}^{{tree}}")]
        seen = depth = 0
        depth_cap = _MEAN_DEPTH * (limit if limit is not None else git_settings().max_checkout_entries)
        tree_bytes = max_tree_bytes if max_tree_bytes is not None else git_settings().git_max_trees_mb << 20
        while trees:
            blobs: list[tuple[tuple[bytes, ...], str, str]] = []
            subtrees: list[tuple[tuple[bytes, ...], str]] = []
            for start in range(0, len(trees), _TREES_PER_ASK):
                batch = trees[start:start + _TREES_PER_ASK]
                # --- gitjail: a tree object is read whole, so its size is checked first (a 1 GB tree is one object)
                answers = await self.ask([f"contents {t}" for _, t in batch], max_bytes=tree_bytes,
                                         too_big=lambda: _trees_too_big(self._source, sha, max_tree_bytes
                                                                        or git_settings().git_max_trees_mb << 20))
                for (where, _), answer in zip(batch, answers, strict=True):
                    if answer is None or answer[1] != "tree" or answer[3] is None:
                        raise SourceError(f"could not list {sha[:12]} of {self._source.display}: a tree is missing",
                                          argument="repo_url")
                    tree_bytes -= answer[2]
                    entries = _named_tree_entries(answer[3], None if limit is None else limit - seen + 1)
                    seen += len(entries)
                    if limit is not None and seen > limit:
                        raise _too_many(self._source, sha, limit)
                    # --- gitjail: each entry keeps its whole path (a tuple of its directories): a chain of 1,000
                    # directories with 100,000 files at its end is 1e8 tuple slots. Bounded on average per entry.
                    depth += len(entries) * (len(where) + 1)
                    if depth > depth_cap:
                        raise _too_deep(self._source, sha, _MEAN_DEPTH)
                    for mode, name, oid in entries:
                        if mode == "40000":
                            subtrees.append(((*where, name), oid))
                        elif mode == "160000":  # a submodule's commit is not in this repository
                            out.append(((*where, name), mode, oid, 0))
                        else:
                            blobs.append(((*where, name), mode, oid))
            for (path, mode, oid), answer in zip(blobs, await self.ask([f"info {b}" for _, _, b in blobs]),
                                                 strict=True):
                if answer is None:
                    raise SourceError(f"could not list {sha[:12]} of {self._source.display}: a file is missing",
                                      argument="repo_url")
                out.append((path, mode, oid, answer[2]))
            trees = subtrees
        return out

    async def write_files(self, sha: str, listing: list[tuple[tuple[bytes, ...], str, str, int]], dest: Path,
                          cap: int) -> None:
        """Write the files of `listing` (commit `sha`) into `dest`, a private empty directory (`_prepare_dest`), as
        `git archive | tar -x` would (files, symlinks as links, a submodule as an empty directory), read through
        this process. Every directory is opened beneath `dest` with O_NOFOLLOW and every entry created with
        O_EXCL/O_NOFOLLOW relative to its directory's fd, so nothing is written outside `dest` whatever the tree
        names; a name git itself refuses to check out (`.`, `..`, `.git`, a slash) fails the call. `cap` bounds
        the bytes read: the objects are the tenant's and may change between the size check and this read."""
        root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        dirs: dict[tuple[bytes, ...], int] = {(): root}

        def forget_dirs() -> None:
            """--- attacker2: keep at most _OPEN_DIRS directory fds (a re-open walks down from `dest` again, with
            O_NOFOLLOW). Every directory's fd stayed open to the end: a commit of 4,900 directories of one file each
            held 4,900 fds, and under systemd's default soft limit (1,024) that ran the whole server out of fds
            (EMFILE for every account's connections, the deploy failing with a bare OSError). Red team dec2."""
            if len(dirs) > _OPEN_DIRS:
                for parts, fd in list(dirs.items()):
                    if parts:
                        os.close(fd)
                        del dirs[parts]

        def dir_of(parts: tuple[bytes, ...]) -> int:
            fd = dirs.get(parts)
            if fd is None:
                parent = dir_of(parts[:-1])
                with contextlib.suppress(FileExistsError):
                    os.mkdir(parts[-1], 0o700, dir_fd=parent)
                fd = dirs[parts] = os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                           dir_fd=parent)
            return fd

        try:
            for path, _, _, _ in listing:
                if any(not _checkout_name(part) for part in path):
                    raise SourceError(f"commit {sha[:12]} of {self._source.display} names a path git refuses to "
                                      f"check out ({b'/'.join(path).decode(errors='replace')[:200]!r})",
                                      argument="repo_url", fix="fix the repository's tree, then deploy again")
            read = 0
            for start in range(0, len(listing), 256):
                chunk = listing[start:start + 256]
                wanted = [e for e in chunk if e[1] != "160000"]
                # --- gitjail: each file's size is checked against the listing before it is read into memory
                answers = iter(await self.ask([f"contents {oid}" for _, _, oid, _ in wanted],
                                              sizes=[n for _, _, _, n in wanted]))
                for path, mode, _, _ in chunk:
                    forget_dirs()
                    answer = next(answers) if mode != "160000" else None
                    if mode != "160000" and (answer is None or answer[1] != "blob" or answer[3] is None):
                        raise SourceError(f"could not read {sha[:12]} of {self._source.display}: a file is missing",
                                          argument="repo_url")
                    if answer is not None and answer[3] is not None:
                        read += len(answer[3])
                        if read > cap:
                            raise _too_big(self._source, sha, None, cap)
                    try:
                        parent = dir_of(path[:-1])
                        if mode == "160000":
                            dir_of(path)
                        elif answer is not None and answer[3] is not None:
                            _write_entry(parent, path[-1], mode, answer[3])
                    except OSError as e:  # --- gitjail: a clear refusal naming the path, not a bare OSError
                        raise _unwritable(self._source, sha, path, e) from None
        finally:
            for fd in dirs.values():
                os.close(fd)


def _write_entry(parent: int, name: bytes, mode: str, data: bytes) -> None:
    """One file or symlink of a checkout, created (never replaced, never followed) in the directory `parent`."""
    if mode == "120000":
        os.symlink(data, name, dir_fd=parent)
        return
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o700 if mode == "100755" else 0o600, dir_fd=parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


_CLASHES = (errno.EEXIST, errno.ENOTDIR, errno.ELOOP, errno.EISDIR)


def _unwritable(source: _Source, sha: str, path: tuple[bytes, ...], e: OSError) -> SourceError:
    """--- gitjail: why an entry of a checkout could not be written. A crafted tree names a path twice (duplicate
    entries) or as a link and then as a directory: the second one clashes with the first (git itself refuses such
    trees: `git fsck` reports duplicateEntries)."""
    shown = b"/".join(path).decode(errors="replace")[:200]
    if e.errno in _CLASHES:
        return SourceError(
            f"commit {sha[:12]} of {source.display} names {shown!r} twice, or a path inside a file or symlink "
            f"({e.strerror}): a malformed tree git itself cannot check out.",
            argument="repo_url",
            fix="fix the repository (`git fsck` names the bad tree; recreate the commit from a normal checkout), "
            "then deploy again",
        )
    return SourceError(f"could not write {shown!r} of commit {sha[:12]} of {source.display}: {e.strerror}",
                       argument="repo_url", fix="retry; if it persists, tell the operator (the server's disk)")


def _named_tree_entries(data: bytes, most: int | None = None) -> list[tuple[str, bytes, str]]:
    """(mode, name, hex oid) of each entry of a raw tree object ("<mode> <name>\\0<20-byte oid>" repeated); at most
    `most` of them (the caller's entry cap is passed once that many are seen)."""
    out: list[tuple[str, bytes, str]] = []
    i = 0
    while i < len(data) and (most is None or len(out) < most):
        space = data.index(b" ", i)
        nul = data.index(b"\0", space)
        out.append((data[i:space].decode(), data[space + 1:nul], data[nul + 1:nul + 21].hex()))
        i = nul + 21
    return out


def _checkout_name(name: bytes) -> bool:
    """A path component git would check out (its verify_path: no empty, `.`, `..` or `.git` in any case, no
    slash or NUL)."""
    return bool(name) and name not in (b".", b"..") and name.lower() != b".git" and b"/" not in name \
        and b"\0" not in name


def _tree_entries(data: bytes) -> list[tuple[str, str]]:
    """(mode, hex oid) of each entry of a raw tree object ("<mode> <name>\\0<20-byte oid>" repeated)."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(data):
        space = data.index(b" ", i)
        nul = data.index(b"\0", space)
        out.append((data[i:space].decode(), data[nul + 1:nul + 21].hex()))
        i = nul + 21
    return out


async def _resolve(mirror: Path, source: _Source, ws: SourceWorkspace, ref: str | None, deadline: _Deadline,
                   cat: _CatFile | None = None) -> str:
    """Turn `ref` into a full commit sha: default branch, branch, tag, (abbreviated) sha or refs/..."""
    if ref is None or not ref.strip():
        sha = await _rev_parse(mirror, source, ws, deadline, _HEAD_REF, cat)
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
    if _HEX_SHA.match(ref):
        candidates.append(ref)
    if cat is not None:  # every candidate in one question; the first that names a commit wins, as below
        found = [a for a in await cat.ask([f"info {c}^{{commit}}" for c in candidates]) if a is not None]
        if found:
            return found[0][0].lower()
    else:
        for candidate in candidates:
            sha = await _rev_parse(mirror, source, ws, deadline, candidate)
            if sha:
                return sha.lower()
    # Not a branch/tag/known commit: a full sha not on any branch or a special ref (refs/pull/1/head)
    # may still be fetchable by name.
    if ref.startswith("refs/") or re.fullmatch(r"[0-9a-fA-F]{40}", ref):
        target = f"+{ref}:refs/inkmcp/extra" if ref.startswith("refs/") else ref
        rc, _, _ = await _git(_fetch_args(source, target), source, ws, deadline, git_dir=mirror)
        if rc == 0:
            fetched = "refs/inkmcp/extra" if ref.startswith("refs/") else ref
            sha = await _rev_parse(mirror, source, ws, deadline, fetched)
            if sha:
                return sha
    raise SourceError(f"{ref!r} is not a branch, tag or commit of {source.display}.", argument="ref",
                      fix=await _ref_fix(mirror, source, ws, deadline))


_REF_FIX_BRANCHES = 8


async def _ref_fix(mirror: Path, source: _Source, ws: SourceWorkspace, deadline: _Deadline) -> str:
    """The unknown-ref fix with the repository's own branches: "e.g. main" sent agents whose repository's
    default is `master` (or `trunk`) into a second failure. Only on this error path, so one more git process."""
    try:
        rc, out, _ = await _git(
            ["for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/", _HEAD_REF], source, ws, deadline,
            git_dir=mirror,
        )
    except SourceError:
        return _REF_FIX
    refs = [line.split(" ", 1) for line in out.splitlines() if " " in line] if rc == 0 else []
    head = next((sha for sha, name in refs if name == _HEAD_REF), None)
    branches = [(sha, name.removeprefix("refs/heads/")) for sha, name in refs if name.startswith("refs/heads/")]
    if not branches:
        return _REF_FIX
    at_head = [name for sha, name in branches if sha == head]  # the fetch keeps HEAD's commit, not its name
    default = next((name for name in ("main", "master", "trunk") if name in at_head), min(at_head, default=None))
    named = [default] if default else []
    named += sorted(name for _, name in branches if name != default)[: _REF_FIX_BRANCHES - len(named)]
    listed = ", ".join(f"{name} (the default)" if name == default else name for name in named)
    more = f" and {len(branches) - len(named)} more" if len(branches) > len(named) else ""
    return f"pass a branch, tag or commit that exists (this repository's branches: {listed}{more}), or omit ref for " \
        "the default branch"


FILES_MAX_BYTES = 16 << 20
FILES_MAX_ENTRIES = 5000
"""Up to this size, `fetch_commit(files_for=...)` writes a commit's files through the `cat-file` process it already
has open (no `git archive` and `tar`); a bigger commit is left to `checkout_fetched`."""


async def _fetch_and_resolve(
    repo_url: str, ref: str | None, ws: SourceWorkspace, policy: SourcePolicy, deadline: _Deadline, *,
    measure: bool = False, auth: GitAuth | None = None, files_for: FilesFor | None = None,
) -> tuple[_Source, Path, str, tuple[int, int] | None, Path | None]:
    """Fetch and resolve; with `measure`, also the commit's (bytes, entries) for the size check, read by the same
    `cat-file` process that resolved the ref (`_CatFile`), and with `files_for` the commit's files written where it
    says (the last item: None if it said nowhere, or the commit is too big for this path)."""
    source = await _classify(repo_url, ws, policy, deadline, auth)
    try:
        return await _fetch_and_resolve_from(source, ref, ws, policy, deadline, measure=measure, files_for=files_for)
    finally:
        _revoke_grant(source)  # git is done with the remote (resolving may fetch a sha or refs/... by name)


async def _fetch_and_resolve_from(
    source: _Source, ref: str | None, ws: SourceWorkspace, policy: SourcePolicy, deadline: _Deadline, *,
    measure: bool, files_for: FilesFor | None,
) -> tuple[_Source, Path, str, tuple[int, int] | None, Path | None]:
    key = _mirror_key(source)
    mirror = ws.mirrors_dir / key
    async with _locked(ws, key):
        await _ensure_mirror(mirror, source, ws, deadline)
        # the cat-file process starts while git fetches (its start is off the deploy's path): it is asked nothing
        # before the fetch is done, and git looks objects and refs up when asked (a pack it has not seen yet is
        # found by the rescan git does on a miss), as when `_resolve` fetches a sha into a mirror it has open
        opening = asyncio.ensure_future(_CatFile.open(mirror, source, ws, deadline)) if measure else None
        try:
            await _fetch(mirror, source, ws, deadline)
        except _BrokenMirror:  # --- overhead9: a new mirror, and a cat-file process of it
            if opening is not None:
                await _close_opening(opening)
                opening = None
            await _fetch_anew(mirror, source, ws, deadline)
            if measure:
                opening = asyncio.ensure_future(_CatFile.open(mirror, source, ws, deadline))
        except BaseException:
            if opening is not None:
                await _close_opening(opening)
            raise
        if opening is None:
            return source, mirror, await _resolve(mirror, source, ws, ref, deadline), None, None
        cat = await opening
        written = None
        try:
            sha = await _resolve(mirror, source, ws, ref, deadline, cat)
            listing = await cat.listing(sha, policy.max_checkout_entries, policy.max_tree_bytes)
            size = (sum(n for _, _, _, n in listing), len(listing))
            dest = files_for(mirror, sha) if files_for is not None else None
            if dest is not None and size[0] <= min(FILES_MAX_BYTES, policy.max_checkout_bytes) \
                    and size[1] <= FILES_MAX_ENTRIES:
                _prepare_dest(dest)
                await cat.write_files(sha, listing, dest, policy.max_checkout_bytes)
                written = dest
        finally:
            await cat.close()
    return source, mirror, sha, size, written


async def _close_opening(opening: asyncio.Future[_CatFile]) -> None:
    """End a cat-file process whose start is in flight (or failed): awaited, never cancelled mid-spawn (a child
    started as the cancel lands would be nobody's), then closed."""
    try:
        cat = await asyncio.shield(opening)
    except Exception:  # it never started: nothing to close
        return
    except asyncio.CancelledError:
        opening.add_done_callback(_close_later)
        raise
    await cat.close()


def _close_later(opening: asyncio.Future[_CatFile]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        _background.add(task := asyncio.ensure_future(opening.result().close()))
        task.add_done_callback(_background.discard)


_background: set[asyncio.Future[None]] = set()


FilesFor = Callable[[Path, str], Path | None]
"""Given (mirror, resolved sha), where `fetch_commit` should write that commit's files (None: nowhere)."""


@dataclass(frozen=True)
class FetchedCommit:
    """A commit already in the project's mirror: `checkout_fetched` exports it without contacting the remote."""

    sha: str
    source: _Source = field(repr=False)
    mirror: Path
    workspace: SourceWorkspace
    size: tuple[int, int] | None = None  # (bytes, entries) of its files, measured when it was resolved
    files: Path | None = None  # where fetch_commit(files_for=...) wrote its files, if it did


async def fetch_commit(
    repo_url: str, ref: str | None, *, workspace: SourceWorkspace, policy: SourcePolicy, timeout: float | None = None,
    auth: GitAuth | None = None, files_for: FilesFor | None = None,
) -> FetchedCommit:
    """`resolve_commit`, keeping what a following checkout of the same commit needs.

    deploy_app resolves the commit first (for its no-op check) and checks out right after: going
    through this handle saves the second validation, fetch and resolve (four tenant processes). The ref is
    resolved and the commit's size measured by one `git cat-file` process (no `rev-parse` + `ls-tree`).
    `files_for`: where to write the commit's files right away, through that same process (a checkout read for a
    build plan; see `_CatFile.write_files` and FILES_MAX_BYTES): `FetchedCommit.files` says if it did. Unlike
    `git archive`, this ignores `export-ignore`/`export-subst` attributes: the files are the commit's as a clone
    has them.
    """
    source, mirror, sha, size, files = await _fetch_and_resolve(
        repo_url, ref, workspace, policy, _Deadline(_timeout(timeout)), measure=True, auth=auth,
        files_for=files_for)
    return FetchedCommit(sha=sha, source=source, mirror=mirror, workspace=workspace, size=size, files=files)


async def checkout_fetched(fetched: FetchedCommit, dest: Path, *, policy: SourcePolicy,
                           timeout: float | None = None) -> None:
    """Write the files of `fetched` into `dest` (see `resolve_and_checkout` for what `dest` must be)."""
    deadline = _Deadline(_timeout(timeout))
    _prepare_dest(dest)
    src, ws = fetched.source, fetched.workspace
    if fetched.size is not None:  # measured when it was resolved (objects of a commit never change)
        total, entries = fetched.size
        if total > policy.max_checkout_bytes:
            raise _too_big(src, fetched.sha, total, policy.max_checkout_bytes)
        if entries > policy.max_checkout_entries:
            raise _too_many(src, fetched.sha, policy.max_checkout_entries)
    else:
        entries = await _check_size(fetched.mirror, src, ws, fetched.sha, policy, deadline)
    await _export(fetched.mirror, src, ws, fetched.sha, dest, deadline, policy.max_checkout_bytes, entries)


async def resolve_commit(
    repo_url: str,
    ref: str | None,
    *,
    workspace: SourceWorkspace,
    policy: SourcePolicy,
    timeout: float | None = None,
    auth: GitAuth | None = None,
) -> str:
    """Fetch `repo_url` into the project's mirror (as the project's user) and return the full sha `ref` names.

    `ref` may be None (the remote's default branch), a branch, a tag, a full or abbreviated sha,
    or a full ref name such as refs/pull/1/head. Used for "same commit, nothing to do" checks;
    it leaves the mirror updated, so a following `resolve_and_checkout` only pays a no-op fetch.
    """
    deadline = _Deadline(_timeout(timeout))
    _, _, sha, _, _ = await _fetch_and_resolve(repo_url, ref, workspace, policy, deadline, auth=auth)
    return sha


async def resolve_and_checkout(
    repo_url: str,
    ref: str | None,
    dest: Path,
    *,
    workspace: SourceWorkspace,
    policy: SourcePolicy,
    timeout: float | None = None,
    auth: GitAuth | None = None,
) -> str:
    """Fetch, resolve `ref` and write the files of that commit into `dest`; return the full sha.

    `dest` is created 0700 if missing (or must be an empty directory) and its parent must be
    writable only by InkMCP: the files are written there by InkMCP's own `tar`, owned by InkMCP,
    with no group/other permissions; hand them to the tenant while they are still out of its
    reach. A commit whose files add up to more than `policy.max_checkout_bytes` is refused before
    anything is written. Submodules and Git LFS objects are not included (git archive exports the
    tree as committed).
    """
    fetched = await fetch_commit(repo_url, ref, workspace=workspace, policy=policy, timeout=timeout, auth=auth)
    await checkout_fetched(fetched, dest, policy=policy, timeout=timeout)
    return fetched.sha


# ------------------------------------------------------------------------------------------- export
def _prepare_dest(dest: Path) -> None:
    """Make `dest` a private, empty directory (never following a link), in a parent no tenant can write."""
    parent = os.lstat(dest.parent)
    if not stat.S_ISDIR(parent.st_mode) or parent.st_uid != os.geteuid() or parent.st_mode & 0o022:
        raise ValueError(f"checkout parent {dest.parent} must be a directory only InkMCP can write")
    try:
        os.mkdir(dest, 0o700)
    except FileExistsError:
        st = os.lstat(dest)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ValueError(f"checkout destination {dest} is not a directory of ours") from None
        if os.listdir(dest):
            raise ValueError(f"checkout destination {dest} is not empty") from None
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o700)  # exact, whatever the umask was
    finally:
        os.close(fd)


_NEUTRAL: Path | None = None


def _neutral_git_dir() -> Path:
    """An empty bare repository of InkMCP's (root-owned, world-readable, nobody else may write it) for `git archive`.

    Why: `git archive` applies the filter drivers the tree's .gitattributes name, with the commands of the
    repository's config (`filter.<name>.smudge` / `.process`), and the mirror's config is the tenant's to write.
    Run with this git dir and GIT_OBJECT_DIRECTORY=<mirror>/objects, git reads the commit's objects from the mirror
    but config, attributes and hooks from here, where no driver is defined (the names are the tenant's, so they
    cannot be switched off one by one with `-c`). Made once per process, in a fresh mkdtemp dir under /tmp (InkMCP's
    own: git runs in InkMCP's mount namespace, not the tenant's sandbox).
    """
    global _NEUTRAL
    if _NEUTRAL is None or not all((_NEUTRAL / name).exists() for name in ("HEAD", "config", "objects", "refs")):
        # (first use, or a /tmp cleaner removed part of it: a fresh one)
        import atexit
        import tempfile

        base = Path(tempfile.mkdtemp(prefix="inkmcp-neutral-git-", dir=TMP))  # TMPDIR might not be traversable
        git_dir = base / "git"
        (git_dir / "objects").mkdir(parents=True)
        (git_dir / "refs").mkdir()
        (git_dir / "HEAD").write_text("ref: refs/heads/none\n")
        (git_dir / "config").write_text("[core]\n\trepositoryformatversion = 0\n\tbare = true\n")
        for path in (base, git_dir, git_dir / "objects", git_dir / "refs"):
            path.chmod(0o755)
        for path in (git_dir / "HEAD", git_dir / "config"):
            path.chmod(0o644)
        atexit.register(shutil.rmtree, base, True)
        _NEUTRAL = git_dir
    return _NEUTRAL


def _human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


_OPEN_DIRS = 64  # directory fds `write_files` keeps open at most (beyond: closed, re-opened when needed)
_TREES_PER_ASK = 256  # trees asked for at once while listing: the entry limit is checked between batches


def _too_many(source: _Source, sha: str, cap: int) -> SourceError:
    return SourceError(
        f"commit {sha[:12]} of {source.display} has more than {cap:,} files and directories, over this server's "
        "cap on files per checkout (INKMCP_MAX_CHECKOUT_ENTRIES).",
        argument="repo_url",
        fix="keep generated and vendored files out of the repository (node_modules, build outputs, data sets: "
        ".gitignore them and install or fetch them at build time), or deploy a smaller repository; or (operator) "
        "raise INKMCP_MAX_CHECKOUT_ENTRIES",
    )


_MEAN_DEPTH = 32  # directory levels per entry on average, at most (a listing's memory grows with its paths' depth)


def _too_deep(source: _Source, sha: str, mean: int) -> SourceError:
    """--- gitjail: paths nested so deep that listing them would take InkMCP's memory (see `listing`)."""
    return SourceError(
        f"commit {sha[:12]} of {source.display} nests its files too deeply (more than {mean} directory levels per "
        "file on average, over this server's cap): a crafted or generated tree.",
        argument="repo_url", fix="flatten the directory structure, or deploy a smaller repository",
    )


def _trees_too_big(source: _Source, sha: str, cap: int) -> SourceError:
    """--- gitjail: a commit whose directory listings (tree objects) are bigger than InkMCP reads into memory."""
    return SourceError(
        f"commit {sha[:12]} of {source.display} has directory listings (git tree objects) of more than "
        f"{_human(cap)}, over this server's cap (INKMCP_GIT_MAX_TREES_MB): a single directory with a huge number "
        "of entries, or a crafted tree.",
        argument="repo_url",
        fix="split huge directories and keep generated files out of the repository, or deploy a smaller "
        "repository; or (operator) raise INKMCP_GIT_MAX_TREES_MB",
    )


def _too_big(source: _Source, sha: str, size: int | None, cap: int) -> SourceError:
    held = f"holds {_human(size)} of files" if size is not None else "expands to more"
    return SourceError(
        f"commit {sha[:12]} of {source.display} {held}, over this server's checkout size cap of {_human(cap)}.",
        argument="repo_url",
        fix="keep large files out of the repository (data, build outputs, media: .gitignore them or fetch them at "
        "build time), or deploy a smaller repository",
    )


async def _check_size(
    mirror: Path, source: _Source, ws: SourceWorkspace, sha: str, policy: SourcePolicy, deadline: _Deadline
) -> int:
    """Refuse a tree whose files add up to more than the cap, or that has more entries than the entry cap, before
    writing anything; return its entry count. Listed through cat-file with the entry cap checked while listing
    (`ls-tree -r` would print every path of a tree bomb into InkMCP's memory first)."""
    cat = await _CatFile.open(mirror, source, ws, deadline)
    try:
        total, entries = await cat.measure(sha, policy.max_checkout_entries, policy.max_tree_bytes)
    finally:
        await cat.close()
    if total > policy.max_checkout_bytes:
        raise _too_big(source, sha, total, policy.max_checkout_bytes)
    return entries


async def _export(
    mirror: Path, source: _Source, ws: SourceWorkspace, sha: str, dest: Path, deadline: _Deadline, cap: int,
    entries: int,
) -> None:
    """Stream `git archive` (as the tenant) into `tar -x` (as InkMCP), counting bytes on the way.

    The count is a backstop to the size check: the tenant owns the mirror's object files and could
    swap them between the check and the archive.
    """
    # The neutral git dir's config (no filter drivers) and attributes, the mirror's objects: see _neutral_git_dir.
    env = {**_git_env(source), "GIT_OBJECT_DIRECTORY": str(mirror / "objects")}
    git = await _spawn([*_git_base(source), "-c", "safe.directory=*", f"--git-dir={_neutral_git_dir()}", "archive",
                        "--format=tar", sha], ws, env)
    tar = await _spawn(
        ["tar", "-x", "--no-same-owner", "--no-same-permissions", "-C", str(dest)],
        None,
        {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    budget = cap + 4096 * (entries + 1)  # the files plus tar's headers and padding
    over = False

    async def pump() -> None:
        nonlocal over
        assert git.stdout is not None and tar.stdin is not None
        sent = 0
        try:
            while chunk := await git.stdout.read(1 << 20):
                sent += len(chunk)
                if sent > budget:
                    over = True
                    await kill_process_group(git)
                    await kill_process_group(tar)
                    return
                tar.stdin.write(chunk)
                await tar.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return  # tar stopped early; its exit status says why
        finally:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                tar.stdin.close()

    async def stderr(proc: asyncio.subprocess.Process) -> bytes:
        assert proc.stderr is not None
        data = await proc.stderr.read()
        await proc.wait()
        return data

    streams = asyncio.gather(pump(), stderr(git), stderr(tar))
    # cut off by a timeout or a cancel (a deploy that turned out a no-op), it ends in an error nobody reads
    streams.add_done_callback(lambda f: f.cancelled() or f.exception())
    try:
        _, git_err, tar_err = await asyncio.wait_for(streams, timeout=max(deadline.left(), 0.01))
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
    if over:
        raise _too_big(source, sha, None, cap)
    if git.returncode != 0 or tar.returncode != 0:
        detail = _scrub((git_err or tar_err).decode(errors="replace").strip(), source)
        hit = _limit_hit(source, f"checking out {sha[:12]} of {source.display}", git.returncode or tar.returncode,
                         detail)
        if hit is not None:
            raise hit
        raise SourceError(f"could not check out {sha[:12]} of {source.display}: {detail}", argument="repo_url")
