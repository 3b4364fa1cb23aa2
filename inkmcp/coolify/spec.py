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

Validation uses jsonschema's Draft 2020-12 (OpenAPI 3.1 schemas are 2020-12 schemas; `example` is ignored); the
lookup and schema checks are `inkmcp.openapi`'s, shared with Neon's contract.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from inkmcp import openapi

SPEC_FILE = Path(__file__).with_name("openapi-4.3.11.json")
SPEC_SHA256 = "94741780dcae68803a7db94f4b7140a2042069db7385a33b95f6aa7c95726b4c"
"""../shared/coolify/SOURCE.md: sha256 of openapi.json at coollabsio/coolify 379abb2 (Coolify 4.3.11)."""
ENV_SPEC = "INKMCP_COOLIFY_OPENAPI"
API_PREFIX = "/api/v1"

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
    # --- mender6: the Coolify stand-in reads these back as null when unset, as Coolify does
    *(Deviation(f"/components/schemas/Application/properties/{column}", ["string", "null"],
                "the applications migration that adds post_deployment_command(_container) and "
                "pre_deployment_command(_container) makes them ->nullable() string columns without a default, and "
                "GET /applications/{uuid} serialises the model: an app created without one reads back null (the "
                "spec says `nullable: true`, which OpenAPI 3.1 ignores)")
      for column in ("pre_deployment_command", "pre_deployment_command_container", "post_deployment_command",
                     "post_deployment_command_container")),
    # --- end
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


class SpecError(openapi.SpecError):
    """A request or response that Coolify's contract does not allow. `problems` lists every mismatch found."""

    contract = "Coolify's OpenAPI spec"


Operation = openapi.Operation


class CoolifySpec(openapi.OpenApiContract):
    """The loaded spec: find an operation for a concrete request and validate bodies against it."""

    error = SpecError
    path_prefix = API_PREFIX

    def __init__(self, document: Mapping[str, Any], source: str) -> None:
        super().__init__(self._apply_deviations(document), source)

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

    def request_problems(self, method: str, path: str, *, query: Mapping[str, str] | None = None,  # type: ignore[override]
                         body: Any = None, has_body: bool | None = None, strict_keys: bool = True,
                         authorization: str | None = None) -> list[str]:
        """Every way a request breaks the contract. `strict_keys`: a top-level body key the schema does not list
        is a problem (real Coolify answers 422 "This field is not allowed." for it, NOTES.md §a)."""
        found = self.find(method, path)
        if found is None:
            return [f"no operation {method.upper()} {path} in the spec"]
        op, _params = found
        problems: list[str] = []
        has_body = body is not None if has_body is None else has_body
        if op.bearer and not (authorization or "").startswith("Bearer "):
            problems.append("no 'Authorization: Bearer <token>' header (the operation requires bearerAuth)")
        problems += self.query_problems(op, query)
        problems += self.body_problems(op, body, has_body)
        if has_body and strict_keys and isinstance(body, dict) and op.body_keys:
            for key in sorted(set(body) - op.body_keys):
                problems.append(f"body key {key!r} is not in the spec's schema for {op.operation_id} "
                                "(Coolify answers 422 'This field is not allowed.')")
        return problems

    def response_problems(self, method: str, path: str, status: int, body: Any,  # type: ignore[override]
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
            return problems + self.schema_problems(schema, body, f"{status} body")
        content = documented.get("content") or {}
        media = content.get("application/json")
        if media is None or "schema" not in media:
            return problems  # documented without a body schema (e.g. PATCH /servers/{uuid}/sentinel 200)
        return problems + self.schema_problems(media["schema"], body, f"{status} body")

    def check_response(self, method: str, path: str, status: int, body: Any,  # type: ignore[override]
                       headers: Mapping[str, str] | None = None) -> None:
        super().check_response(method, path, status, body, headers=headers)


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
