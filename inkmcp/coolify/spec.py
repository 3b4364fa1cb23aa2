"""Coolify's published API contract (OpenAPI 3.1, Coolify 4.3.11), loaded once, used to validate both directions.

Why it is here: InkMCP's Coolify client must send only requests that validate against Coolify's own spec
(../shared/coolify/SOURCE.md), and the test stand-in must refuse what real Coolify refuses and answer only what
the contract allows. Both check against this one object, so a client test that passes against the stand-in means
"valid for the spec", not "valid for our idea of Coolify".

The spec ships inside the package (`openapi-4.3.11.json`, byte-for-byte the file in ../shared/coolify/, checked
by SHA-256 on load) so CI and a production `inkmcp doctor` need no checkout of ../shared. Point
`INKMCP_COOLIFY_OPENAPI` at another file to check against a newer Coolify (no hash check then).

Where the spec is wrong about the real server, the deviation is data (`DEVIATIONS`, `NOTES_RESPONSES`) with the
source line that proves it, never a silent loosening:

- `NOTES_RESPONSES`: statuses every route can answer although most operations do not document them
  (../shared/coolify/NOTES.md §a: 403 missing ability, 429 throttle with Retry-After, 422 validation, 404, 405;
  and 500 when a step on the node fails, which NOTES.md does not mention).
- `DEVIATIONS`: fields the spec types as plain strings that Coolify 4.3.11 returns as null.

Validation uses jsonschema's Draft 2020-12 (OpenAPI 3.1 schemas are 2020-12 schemas; `example` is ignored).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SPEC_FILE = Path(__file__).with_name("openapi-4.3.11.json")
SPEC_SHA256 = "94741780dcae68803a7db94f4b7140a2042069db7385a33b95f6aa7c95726b4c"
"""../shared/coolify/SOURCE.md: sha256 of openapi.json at coollabsio/coolify 379abb2 (Coolify 4.3.11)."""
ENV_SPEC = "INKMCP_COOLIFY_OPENAPI"
API_PREFIX = "/api/v1"

_METHODS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Deviation:
    """One place where Coolify's answer differs from its own spec; applied to the loaded copy."""

    pointer: str
    """JSON pointer into the spec (e.g. /components/schemas/Server/properties/description)."""
    set_type: list[str]
    source: str
    """Why: the upstream code that produces the value (file:line at 379abb2)."""


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation("/components/schemas/Server/properties/description", ["string", "null"],
              "ServersController.php:499,564 create_server accepts description 'string|nullable' and stores it "
              "as sent; GET /servers selects it (line 94), so a server created without one reads back null"),
    Deviation("/components/schemas/Server/properties/validation_logs", ["string", "null"],
              "ValidateServer.php:37-39 resets validation_logs to null at the start of every validation; it "
              "stays null when validation succeeds"),
    Deviation("/components/schemas/ServerSetting/properties/wildcard_domain", ["string", "null"],
              "server_settings.wildcard_domain is a nullable column with no default: null until an operator "
              "sets Settings > Wildcard Domain"),
)


_MESSAGE = {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}
NOTES_RESPONSES: dict[int, dict[str, Any]] = {
    400: _MESSAGE,  # NOTES §a: "Invalid token." (+docs), "Invalid request." (+error) for non-JSON bodies
    401: _MESSAGE,  # NOTES §a: "Unauthenticated." / "Invalid token."
    403: _MESSAGE,  # NOTES §a: "Missing required permissions: write", policy denial, "API is disabled."
    404: _MESSAGE,  # NOTES §a: unknown route {"message":"Not found.","docs":…}, missing resource
    405: _MESSAGE,  # NOTES §a: GET on POST-only action routes
    409: _MESSAGE,
    422: {  # NOTES §a: errors as {field: [msgs]}, {field: "msg"}, a list of strings, or absent
        "type": "object", "required": ["message"],
        "properties": {"message": {"type": "string"},
                       "errors": {"type": ["object", "array"],
                                  "additionalProperties": {"type": ["array", "string"], "items": {"type": "string"}},
                                  "items": {"type": "string"}}},
    },
    429: _MESSAGE,  # NOTES §a: Laravel throttle "Too Many Attempts." with Retry-After; /deploy queue full
    500: _MESSAGE,  # not in NOTES: an action that fails on the node over SSH throws (instant_remote_process), and
    #                 Laravel renders {"message":"Server Error"}, e.g. PUT …/proxy/configuration to an unreachable
    #                 node (SaveProxyConfiguration.php:47, after the DB copy was saved at :26)
}
"""Statuses any authenticated route can answer (NOTES.md §a), with the body shape real Coolify sends."""


class SpecError(ValueError):
    """A request or response that the contract does not allow. `problems` lists every mismatch found."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.what = what
        self.problems = problems
        super().__init__(f"{what} does not match Coolify's OpenAPI spec: " + "; ".join(problems))


@dataclass(frozen=True)
class Operation:
    """One method + path template of the spec, with its schemas resolved enough to validate against."""

    method: str
    template: str
    operation_id: str
    path_params: tuple[str, ...]
    query_params: Mapping[str, Mapping[str, Any]]
    request_schema: Mapping[str, Any] | None
    request_required: bool
    responses: Mapping[str, Mapping[str, Any]]
    bearer: bool
    pattern: re.Pattern[str] = field(repr=False, compare=False)

    @property
    def body_keys(self) -> frozenset[str]:
        """Top-level keys the request body schema lists: what real Coolify's allow-lists accept (NOTES.md §a:
        any other key answers 422 "This field is not allowed.")."""
        props = (self.request_schema or {}).get("properties") or {}
        return frozenset(props)


class CoolifySpec:
    """The loaded spec: find an operation for a concrete request and validate bodies against it."""

    def __init__(self, document: Mapping[str, Any], source: str) -> None:
        self.source = source
        self.document = self._apply_deviations(document)
        self._components = self.document.get("components", {})
        self.operations: list[Operation] = []
        for template, item in self.document["paths"].items():
            shared = item.get("parameters", [])
            for method in _METHODS:
                if method in item:
                    self.operations.append(self._operation(method, template, item[method], shared))
        # Literal segments win over parameters (/servers/hetzner before /servers/{uuid}).
        self.operations.sort(key=lambda op: (len(op.path_params), op.template))
        self._validators: dict[int, Draft202012Validator] = {}

    # -- loading ----------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str | None = None) -> CoolifySpec:
        """The packaged 4.3.11 spec (hash-checked), or `path` / $INKMCP_COOLIFY_OPENAPI when given."""
        chosen = path or os.environ.get(ENV_SPEC)
        return _load(str(chosen) if chosen else None)

    @staticmethod
    def _apply_deviations(document: Mapping[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(dict(document))
        for dev in DEVIATIONS:
            node: Any = doc
            for part in dev.pointer.strip("/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            node["type"] = list(dev.set_type)
        return doc

    def _deref(self, obj: Mapping[str, Any]) -> Mapping[str, Any]:
        """Resolve a top-level `$ref` to components (responses, parameters, requestBodies)."""
        while "$ref" in obj:
            ref = obj["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"external $ref {ref!r} in {self.source}")
            node: Any = self.document
            for part in ref[2:].split("/"):
                node = node[part]
            obj = node
        return obj

    def _operation(self, method: str, template: str, raw: Mapping[str, Any],
                   shared: list[Mapping[str, Any]]) -> Operation:
        params = [self._deref(p) for p in [*shared, *raw.get("parameters", [])]]
        path_params = tuple(re.findall(r"{([^}]+)}", template))
        query = {p["name"]: p.get("schema", {}) for p in params if p.get("in") == "query"}
        body = self._deref(raw["requestBody"]) if "requestBody" in raw else None
        request_schema = None
        if body is not None:
            request_schema = (body.get("content", {}).get("application/json") or {}).get("schema")
        regex = "^" + re.sub(r"\\{[^}]+\\}", "([^/]+)", re.escape(template)) + "$"
        return Operation(
            method=method.upper(), template=template, operation_id=raw.get("operationId", f"{method} {template}"),
            path_params=path_params, query_params=query, request_schema=request_schema,
            request_required=bool(body and body.get("required")),
            responses={str(k): self._deref(v) for k, v in raw.get("responses", {}).items()},
            bearer=any("bearerAuth" in s for s in raw.get("security", self.document.get("security", []))),
            pattern=re.compile(regex))

    # -- lookup -----------------------------------------------------------------------------------------

    def find(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        """The operation for a concrete path (with or without the /api/v1 prefix) and its path parameters."""
        if path.startswith(API_PREFIX):
            path = path[len(API_PREFIX):] or "/"
        for op in self.operations:
            if op.method != method.upper():
                continue
            m = op.pattern.match(path)
            if m:
                return op, dict(zip(op.path_params, m.groups(), strict=True))
        return None

    def operation(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        found = self.find(method, path)
        if found is None:
            raise SpecError(f"{method.upper()} {path}", [f"no operation {method.upper()} {path} in {self.source}"])
        return found

    def by_id(self, operation_id: str) -> Operation:
        for op in self.operations:
            if op.operation_id == operation_id:
                return op
        raise KeyError(f"no operationId {operation_id!r} in {self.source}")

    # -- validation -------------------------------------------------------------------------------------

    def _validator(self, schema: Mapping[str, Any]) -> Draft202012Validator:
        key = id(schema)
        if key not in self._validators:
            # Refs inside operation schemas are document-relative (#/components/...): give the wrapper the
            # components so the pointer resolves against it.
            wrapper = {"$schema": "https://json-schema.org/draft/2020-12/schema", "allOf": [schema],
                       "components": self._components}
            self._validators[key] = Draft202012Validator(wrapper)
        return self._validators[key]

    def _schema_problems(self, schema: Mapping[str, Any], value: Any, where: str) -> list[str]:
        out = []
        for err in sorted(self._validator(schema).iter_errors(value), key=lambda e: list(e.absolute_path)):
            loc = "/".join(str(p) for p in err.absolute_path) or "(root)"
            out.append(f"{where} {loc}: {err.message}")
        return out

    def request_problems(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                         body: Any = None, has_body: bool | None = None, strict_keys: bool = True,
                         authorization: str | None = None) -> list[str]:
        """Every way a request breaks the contract. `strict_keys`: a top-level body key the schema does not list
        is a problem (real Coolify answers 422 for it)."""
        found = self.find(method, path)
        if found is None:
            return [f"no operation {method.upper()} {path} in the spec"]
        op, _params = found
        problems: list[str] = []
        has_body = body is not None if has_body is None else has_body
        if op.bearer and not (authorization or "").startswith("Bearer "):
            problems.append("no 'Authorization: Bearer <token>' header (the operation requires bearerAuth)")
        for name, value in (query or {}).items():
            if name not in op.query_params:
                problems.append(f"query parameter {name!r} is not defined for {op.operation_id}")
            else:
                problems += self._schema_problems(op.query_params[name], _coerce_query(op.query_params[name], value),
                                                  f"query {name}")
        if not has_body:
            if op.request_required:
                problems.append(f"{op.operation_id} requires a JSON body")
            return problems
        if op.request_schema is None:
            problems.append(f"{op.operation_id} takes no request body")
            return problems
        problems += self._schema_problems(op.request_schema, body, "body")
        if strict_keys and isinstance(body, dict) and op.body_keys:
            for key in sorted(set(body) - op.body_keys):
                problems.append(f"body key {key!r} is not in the spec's schema for {op.operation_id} "
                                "(Coolify answers 422 'This field is not allowed.')")
        return problems

    def response_problems(self, method: str, path: str, status: int, body: Any,
                          headers: Mapping[str, str] | None = None) -> list[str]:
        """Every way a response breaks the contract (the operation's documented responses, else NOTES.md §a's
        generic ones)."""
        found = self.find(method, path)
        if found is None:
            return [f"no operation {method.upper()} {path} in the spec"] if status != 404 else []
        op, _params = found
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        problems: list[str] = []
        documented = op.responses.get(str(status)) or op.responses.get(f"{str(status)[0]}XX")
        if status == 429 and "retry-after" not in headers:
            problems.append("429 without a Retry-After header (Laravel's throttle always sends one)")
        if documented is None:
            schema = NOTES_RESPONSES.get(status)
            if schema is None:
                return [*problems, f"status {status} is neither documented for {op.operation_id} nor a generic "
                                   "answer in NOTES.md §a"]
            return problems + self._schema_problems(schema, body, f"{status} body")
        content = documented.get("content") or {}
        media = content.get("application/json")
        if media is None or "schema" not in media:
            return problems  # documented without a body schema (e.g. PATCH /servers/{uuid}/sentinel 200)
        return problems + self._schema_problems(media["schema"], body, f"{status} body")

    def check_request(self, method: str, path: str, **kw: Any) -> None:
        problems = self.request_problems(method, path, **kw)
        if problems:
            raise SpecError(f"request {method.upper()} {path}", problems)

    def check_response(self, method: str, path: str, status: int, body: Any,
                       headers: Mapping[str, str] | None = None) -> None:
        problems = self.response_problems(method, path, status, body, headers)
        if problems:
            raise SpecError(f"response {status} to {method.upper()} {path}", problems)


def _coerce_query(schema: Mapping[str, Any], value: str) -> Any:
    """Query strings are text; the spec types them (boolean, integer)."""
    kind = schema.get("type")
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    if kind == "integer" and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


@lru_cache(maxsize=4)
def _load(path: str | None) -> CoolifySpec:
    file = Path(path) if path else SPEC_FILE
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise FileNotFoundError(
            f"Coolify OpenAPI spec not readable at {file}: {e}; unset {ENV_SPEC} to use the packaged "
            f"4.3.11 spec, or point it at Coolify's openapi.json") from e
    if path is None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != SPEC_SHA256:
            raise ValueError(f"{file} has sha256 {digest}, expected {SPEC_SHA256} (Coolify 4.3.11's openapi.json, "
                             "../shared/coolify/SOURCE.md); restore it from ../shared/coolify/openapi.json")
    return CoolifySpec(json.loads(raw), str(file))
