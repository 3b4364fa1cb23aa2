"""Neon's published API v2 contract (OpenAPI 3.0.3), the operations InkMCP uses, loaded once, used both ways.

Why it is here: the Neon client must send only requests the published contract allows, and the test stand-in
(`inkmcp.neon.standin`) must answer only what that contract allows, so that a passing provider test means
"valid for Neon's spec", not "valid for our idea of Neon". Both check against this one object, the approach of
`inkmcp.coolify.spec` (both are `inkmcp.openapi.OpenApiContract`s).

The vendored file `openapi-v2-subset.json` holds the operations in `OPERATIONS` and every component they
reference, cut from Neon's full spec by `subset()` (SOURCE.md: where the full file came from, its SHA-256, and
the command that regenerates the subset). It is hash-checked on load.

OpenAPI 3.0 schemas are not quite JSON Schema: `nullable: true` is rewritten to a `null` type before
validation (Draft 7 otherwise). Neon's spec lists every error as `default: GeneralError` (`{code, message}`), so
any status the real service answers (401, 404, 423 Locked, 429, 500, ...) must carry that body.

Request bodies are checked *closed*: an object key the schema does not list is a problem. The spec does not
say that Neon refuses unknown keys; the stand-in is stricter than Neon there on purpose, because an unknown key
is always a typo in our client that Neon would silently ignore.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.protocols import Validator

from inkmcp import openapi

SPEC_FILE = Path(__file__).with_name("openapi-v2-subset.json")
SPEC_SHA256 = "b5c156e00cf440bda493ba661d170af7452b31d35b40c9326fccbf365603e9c6"
"""sha256 of the vendored subset (SOURCE.md says how it was cut); checked on load."""

OPERATIONS: tuple[tuple[str, str], ...] = (
    ("get", "/projects"),
    ("post", "/projects"),
    ("get", "/projects/{project_id}"),
    ("delete", "/projects/{project_id}"),
    ("get", "/projects/{project_id}/operations/{operation_id}"),
    ("get", "/projects/{project_id}/connection_uri"),
    ("get", "/projects/{project_id}/branches"),
    ("get", "/projects/{project_id}/branches/{branch_id}/roles/{role_name}"),
    ("post", "/projects/{project_id}/branches/{branch_id}/roles"),
    ("post", "/projects/{project_id}/branches/{branch_id}/roles/{role_name}/reset_password"),
    ("get", "/projects/{project_id}/branches/{branch_id}/roles/{role_name}/reveal_password"),
    ("get", "/projects/{project_id}/branches/{branch_id}/databases/{database_name}"),
    ("post", "/projects/{project_id}/branches/{branch_id}/databases"),
)
"""(method, path template) of every Neon operation InkMCP calls; the subset holds exactly these."""

class SpecError(openapi.SpecError):
    """A request or response that Neon's contract does not allow. `problems` lists every mismatch found."""

    contract = "Neon's API v2 spec"


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def subset(document: Mapping[str, Any], operations: Iterable[tuple[str, str]] = OPERATIONS) -> dict[str, Any]:
    """The operations given, with every component they reference (transitively); the rest of the document
    (info, servers, security) as is. Used once to cut `openapi-v2-subset.json` from Neon's full spec."""
    paths: dict[str, Any] = {}
    for method, template in operations:
        item = document["paths"][template]
        out = paths.setdefault(template, {k: v for k, v in item.items() if k == "parameters"})
        out[method] = item[method]
    components: dict[str, dict[str, Any]] = {}
    pending = list(_refs(paths))
    while pending:
        ref = pending.pop()
        _, kind, name = ref[2:].split("/", 2)
        if name in components.get(kind, {}):
            continue
        value = document["components"][kind][name]
        components.setdefault(kind, {})[name] = value
        pending.extend(_refs(value))
    if "securitySchemes" in document.get("components", {}):
        components["securitySchemes"] = document["components"]["securitySchemes"]
    kept = {k: v for k, v in document.items() if k not in ("paths", "components", "tags", "x-tagGroups")}
    return {**kept, "paths": paths, "components": {k: dict(sorted(v.items())) for k, v in sorted(components.items())}}


def _to_json_schema(node: Any, *, closed: bool) -> Any:
    """OpenAPI 3.0 schema → JSON Schema draft 7: `nullable` becomes a null type; `closed` forbids unlisted keys."""
    if isinstance(node, list):
        return [_to_json_schema(v, closed=closed) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v, closed=closed) for k, v in node.items()
           if k not in ("example", "examples", "description", "deprecated", "x-tags", "nullable")}
    if node.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    if closed and isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


Operation = openapi.Operation


class NeonSpec(openapi.OpenApiContract):
    """The loaded (subset) spec: find the operation of a concrete request and validate bodies against it."""

    error = SpecError

    def __init__(self, document: Mapping[str, Any], source: str) -> None:
        super().__init__(document, source)
        self._open = _to_json_schema(copy.deepcopy(self.document.get("components", {})), closed=False)
        self._closed = _to_json_schema(copy.deepcopy(self.document.get("components", {})), closed=True)

    @classmethod
    def load(cls) -> NeonSpec:
        return _load()

    def validator(self, schema: Mapping[str, Any], closed: bool) -> Validator:
        """OpenAPI 3.0 schemas rewritten to JSON Schema draft 7 (`_to_json_schema`); `closed` forbids unlisted
        keys, in the schema and in every component it references."""
        key = (id(schema), closed)
        if key not in self._validators:
            converted = _to_json_schema(copy.deepcopy(dict(schema)), closed=closed)
            wrapper = {"allOf": [converted], "components": self._closed if closed else self._open}
            self._validators[key] = Draft7Validator(wrapper)
        return self._validators[key]

    def request_problems(self, method: str, path: str, *, query: Mapping[str, str] | None = None,  # type: ignore[override]
                         body: Any = None, has_body: bool | None = None,
                         authorization: str | None = None) -> list[str]:
        """Every way a request breaks the contract (path parameter patterns, query, body; bearer auth)."""
        found = self.find(method, path)
        if found is None:
            return [f"no operation {method.upper()} {path} in the spec"]
        op, params = found
        problems: list[str] = []
        if not (authorization or "").startswith("Bearer "):
            problems.append("no 'Authorization: Bearer <API key>' header (BearerAuth)")
        for name, value in params.items():
            problems += self.schema_problems(op.path_params[name], value, f"path {name}")
        problems += self.query_problems(op, query)
        has_body = body is not None if has_body is None else has_body
        return problems + self.body_problems(op, body, has_body, closed=True)

    def response_problems(self, method: str, path: str, status: int, body: Any) -> list[str]:  # type: ignore[override]
        """Every way a response breaks the contract: the documented status's schema, else `default`."""
        found = self.find(method, path)
        if found is None:
            return [] if status == 404 else [f"no operation {method.upper()} {path} in the spec"]
        op, _ = found
        documented = op.responses.get(str(status)) or op.responses.get("default")
        if documented is None:
            return [f"status {status} is not documented for {op.operation_id}"]
        if 200 <= status < 300 and str(status) not in op.responses:
            return [f"success status {status} is not documented for {op.operation_id} "
                    f"(documented: {', '.join(sorted(op.responses))})"]
        media = (documented.get("content") or {}).get("application/json")
        if media is None or "schema" not in media:
            return []
        return self.schema_problems(media["schema"], body, f"{status} body")


@lru_cache(maxsize=1)
def _load() -> NeonSpec:
    raw = SPEC_FILE.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SPEC_SHA256:
        raise ValueError(f"{SPEC_FILE} has sha256 {digest}, expected {SPEC_SHA256}; regenerate it as "
                         "inkmcp/neon/SOURCE.md says")
    return NeonSpec(json.loads(raw), str(SPEC_FILE))
