"""Laravel validation as Coolify's API controllers use it, enough to refuse what real Coolify refuses.

`fields()` is customApiValidator + the allow-list check every controller does (unknown key -> "This field is not
allowed.", the whole request refused); the regexes are app/Support/ValidationPatterns.php at 379abb2.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

NAME_PATTERN = re.compile(r"^[\w\s\-.@/&()#,:+]+$", re.UNICODE)
"""ValidationPatterns::NAME_PATTERN (letters, marks, digits, space, -_.@/&()#,:+); `\\w` adds `_` which the
original allows too."""
SHELL_SAFE = re.compile(
    r"""^(?:[ \t]++|&&|\|\||"[^"$`\\\n\r]*+"|'[^'\n\r]*+'|[a-zA-Z0-9._\-/=:@,+\[\]{}#%^~*?!]++)++$"""
)
"""ValidationPatterns::SHELL_SAFE_COMMAND_PATTERN (install/build/start commands, custom_docker_run_options), with
possessive quantifiers: the alternatives begin with disjoint characters, so it accepts exactly the same strings,
without the original's exponential backtracking on one it refuses (13 s for a 50-character command was seen,
holding the stand-in's lock)."""
DIRECTORY_PATH = re.compile(r"^/([a-zA-Z0-9._\-/~@+]*)?$")
"""ValidationPatterns::DIRECTORY_PATH_PATTERN (base_directory, publish_directory)."""
DOMAIN_FORBIDDEN = re.compile(r"[`$;&|<>()\\\r\n]")
ENV_KEY = re.compile(r"\A[A-Za-z_][A-Za-z0-9_.]*\Z")
GIT_SHA = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._\-/]*$")
"""sharedDataApplications() git_commit_sha (bootstrap/helpers/api.php:153)."""
PORTS = re.compile(r"^(\d+)(,\d+)*$")
PORT_MAPPINGS = re.compile(r"^(\d+:\d+)(,\d+:\d+)*$")
BUILD_PACKS = ("nixpacks", "railpack", "static", "dockerfile", "dockercompose")
"""App\\Enums\\BuildPackTypes (the spec's enum)."""


def incoming(raw: bytes, body: Any, request: Request) -> Response | None:
    """validateIncomingRequest (bootstrap/helpers/api.php:341-364)."""
    if "json" not in request.headers.get("content-type", ""):
        return JSONResponse({"message": "Invalid request.", "error": "Content-Type must be application/json."}, 400)
    if not isinstance(body, (dict, list)) or not body:
        error = "Empty JSON." if body in ({}, []) else "Invalid JSON."
        return JSONResponse({"message": "Invalid request.", "error": error}, 400)
    return None


def invalid(errors: dict[str, Any] | list[str]) -> JSONResponse:
    return JSONResponse({"message": "Validation failed.", "errors": errors}, 422)


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and re.fullmatch(r"-?\d+", value) is not None)
    if kind == "numeric":
        if isinstance(value, bool):
            return False
        if isinstance(value, (int, float)):
            return True
        return isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value) is not None
    if kind == "boolean":
        return value in (True, False, 0, 1, "0", "1")  # Laravel's boolean rule
    if kind == "array":
        return isinstance(value, list)
    return True


def fields(body: dict[str, Any], allowed: list[str] | None, rules: dict[str, str]) -> dict[str, list[str]]:
    """customApiValidator + the allow-list check every controller does. A rule is `type|required|nullable`
    (Laravel's names); a missing or null value passes unless `required`."""
    errors: dict[str, list[str]] = {}
    for key, rule in rules.items():
        value = body.get(key)
        parts = rule.split("|")
        if key not in body or value is None:
            if "required" in parts:
                errors.setdefault(key, []).append("This field is required.")  # customApiValidator's message
            continue
        kind = parts[0]
        if not _type_ok(kind, value):
            article = "an" if kind in ("integer", "array") else "a"
            label = {"boolean": "true or false"}.get(kind)
            message = f"The {key.replace('_', ' ')} field must be " + (label or f"{article} {kind}") + "."
            errors.setdefault(key, []).append(message)
    if allowed is not None:
        for key in body:
            if key not in allowed:
                errors.setdefault(key, []).append("This field is not allowed.")
    return errors


def is_base64(value: Any) -> bool:
    """isBase64Encoded (bootstrap/helpers/shared.php): strict decode that round-trips."""
    if not isinstance(value, str):
        return False
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return base64.b64encode(decoded).decode() == value


def b64_text(value: str) -> str | None:
    """The UTF-8 text behind a base64 field, or None when it is not valid base64 of UTF-8
    (isBase64Encoded + mb_detect_encoding)."""
    if not is_base64(value):
        return None
    try:
        return base64.b64decode(value).decode("utf-8")
    except UnicodeDecodeError:
        return None


def domain_list(value: str) -> list[str]:
    return [u.strip() for u in value.strip().strip(",").split(",") if u.strip()]


def domain_errors(value: Any) -> list[str]:
    """ValidationPatterns::validateApplicationDomains (app/Support/ValidationPatterns.php:542-578)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if not isinstance(value, str):
        return ["The domains field must be a string."]
    errors = []
    for url in domain_list(value):
        if DOMAIN_FORBIDDEN.search(url):
            errors.append(f"Invalid URL: {url}")
            continue
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/:?#]+)(:\d+)?([/?#].*)?", url)
        if m is None:
            errors.append(f"Invalid URL: {url}")
            continue
        if m.group(1).lower() not in ("http", "https"):
            errors.append(f"Invalid URL scheme: {m.group(1)} for URL: {url}. Only http and https are supported.")
    return errors


def normalize_domains(value: str) -> str | None:
    """normalizeApplicationDomains: lower-case scheme and host, comma-joined; None when empty."""
    out = []
    for url in domain_list(value):
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/:?#]+)(.*)", url)
        out.append(f"{m.group(1).lower()}://{m.group(2).lower()}{m.group(3)}" if m else url)
    return ",".join(out) or None


def host_of(url: str) -> str:
    m = re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://([^/:?#]+).*", url)
    return m.group(1).lower() if m else url.lower()
