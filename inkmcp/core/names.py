"""Names agents choose: DNS labels, because they become hostnames (`<service>.<project>.<domain>`)."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from inkmcp.errors import InvalidArgument

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
NAME_RULE = "1-63 characters, lowercase letters a-z, digits and '-', starting and ending with a letter or digit"
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
RESERVED_ENV = frozenset({"PORT", "HOME", "PATH", "VIRTUAL_ENV", "INKMCP_DEPLOYMENT"})


def check_name(value: str, argument: str) -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        suggestion = slugify(value) if isinstance(value, str) else ""
        fix = f"use a DNS label ({NAME_RULE})" + (f", e.g. '{suggestion}'" if suggestion else "")
        raise InvalidArgument(f"{value!r} is not a valid name.", argument=argument, fix=fix)
    return value


def is_name(value: str) -> bool:
    return bool(_LABEL.match(value))


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
    if not ENV_KEY.match(key):
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
