"""Names agents choose: DNS labels, because they become hostnames (`<service>.<project>.<domain>`)."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from inkmcp.errors import InvalidArgument

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
NAME_RULE = "1-63 characters, lowercase letters a-z, digits and '-', starting and ending with a letter or digit"
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
RESERVED_ENV = frozenset({"PORT", "HOME", "PATH", "VIRTUAL_ENV", "INKMCP_DEPLOYMENT"})


# --- attacker: fullmatch, not match: `$` also matches before a trailing newline, so "shop\n" passed as a
# name (stored, made a Unix user's project, put into a hostname) and "PATH\n" slipped past RESERVED_ENV.
def check_name(value: str, argument: str) -> str:
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        suggestion = slugify(value) if isinstance(value, str) else ""
        fix = f"use a DNS label ({NAME_RULE})" + (f", e.g. '{suggestion}'" if suggestion else "")
        raise InvalidArgument(f"{value!r} is not a valid name.", argument=argument, fix=fix)
    if _reserved_label(value):
        raise InvalidArgument(
            f"{value!r} is not a valid name: '--' as its third and fourth characters marks an internationalized "
            "DNS label ('xn--' is punycode), which browsers show as other letters or refuse.",
            argument=argument, fix=f"use a name without '--' there, e.g. '{slugify(value)}'",
        )  # fmt: skip
    return value


def is_name(value: str) -> bool:
    return bool(_LABEL.fullmatch(value)) and not _reserved_label(value)


def _reserved_label(value: str) -> bool:
    """A "reserved LDH label" (RFC 5890 2.3.1): '--' in the third and fourth positions, the form of IDNA's
    A-labels ('xn--…', punycode). A name becomes a DNS label (`<service>.<project>.<domain>`), and
    `xn--80ak6aa92e` shows in a browser's address bar as Cyrillic letters that read "apple", so a tenant could
    name a project after another brand's look-alike; `xn--abc` is not even valid punycode. slugify() never
    makes one (it folds '--' into '-')."""
    return value[2:4] == "--"


def slugify(value: str) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")
    s = re.sub(r"-{2,}", "-", s)[:63].strip("-")
    return s


def project_name_from_repo(repo_url: str) -> str:
    """The repo is the project's identity: `github.com/user/my-saas(.git)` → `my-saas`."""
    path = urlparse(repo_url).path if "://" in repo_url else repo_url
    if ":" in path and "://" not in repo_url and not path.startswith("/"):  # scp-like git@host:user/repo
        path = path.split(":", 1)[1]
    last = path.rstrip("/").rsplit("/", 1)[-1]
    last = last.removesuffix(".git")
    name = slugify(last)
    if not name:
        raise InvalidArgument(
            f"cannot derive a project name from {redact_url(repo_url)!r}.",
            argument="project_name",
            fix=f"pass project_name explicitly ({NAME_RULE})",
        )
    return name


_USERINFO = re.compile(r"(?<=://)[^/?#]*@")
"""Between '://' and the last '@' of the authority: greedy, so a password holding a raw '@' goes whole."""


def redact_url(url: str) -> str:
    """Drop userinfo (tokens in https://token@host/...) before a URL reaches a log, an error or the store."""
    return _USERINFO.sub("***@", url, count=1)


def has_credentials(url: str) -> bool:
    """True when `url` carries userinfo (a token, user:password, or an ssh user) that must not be shown."""
    return _USERINFO.search(url) is not None


def check_env_key(key: str) -> str:
    if not ENV_KEY.fullmatch(key):
        raise InvalidArgument(
            f"{key!r} is not a valid environment variable name.",
            argument="env_vars",
            fix="use names made of letters, digits and '_' that do not start with a digit, e.g. API_TOKEN",
        )
    if key in RESERVED_ENV:
        raise InvalidArgument(
            f"{key} is set by the platform and cannot be overridden.",
            argument="env_vars",
            fix=f"remove {key}; the platform sets it ({', '.join(sorted(RESERVED_ENV))} are reserved)",
        )
    return key
