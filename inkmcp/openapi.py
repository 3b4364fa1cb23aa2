"""A published OpenAPI contract, loaded once and used both ways: our clients check what they send and what they
get back, our stand-ins check what they are sent and what they answer.

Why one module: the Coolify (`inkmcp.coolify.spec`, OpenAPI 3.1) and Neon (`inkmcp.neon.spec`, OpenAPI 3.0)
contracts differ only in their dialect and their service's quirks, not in how an operation is found for a
concrete request or how a body is checked against its schema. `OpenApiContract` holds the shared part; each
service's subclass says how its schemas become JSON Schema (`validator`), what a request must carry
(`request_problems`) and which answers the service may give (`response_problems`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator

METHODS = ("get", "put", "post", "delete", "patch")


class SpecError(ValueError):
    """A request or response that the contract does not allow. `problems` lists every mismatch found."""

    contract: ClassVar[str] = "the OpenAPI spec"

    def __init__(self, what: str, problems: list[str]) -> None:
        self.what = what
        self.problems = problems
        super().__init__(f"{what} does not match {self.contract}: " + "; ".join(problems))


@dataclass(frozen=True)
class Operation:
    """One method + path template of the spec, with its schemas resolved enough to validate against."""

    method: str
    template: str
    operation_id: str
    path_params: Mapping[str, Mapping[str, Any]]
    """Parameter name -> schema, in the template's order."""
    query_params: Mapping[str, Mapping[str, Any]]
    required_query: frozenset[str]
    request_schema: Mapping[str, Any] | None
    request_required: bool
    responses: Mapping[str, Mapping[str, Any]]
    bearer: bool
    pattern: re.Pattern[str] = field(repr=False, compare=False)

    @property
    def body_keys(self) -> frozenset[str]:
        """Top-level keys the request body schema lists."""
        props = (self.request_schema or {}).get("properties") or {}
        return frozenset(props)


class OpenApiContract:
    """Operations of one document: find the one a concrete request names, validate values against schemas."""

    error: ClassVar[type[SpecError]] = SpecError
    path_prefix: ClassVar[str] = ""
    """Stripped from a concrete path before lookup (e.g. Coolify's /api/v1)."""

    def __init__(self, document: Mapping[str, Any], source: str) -> None:
        self.source = source
        self.document = dict(document)
        self.operations: list[Operation] = []
        for template, item in self.document["paths"].items():
            shared = item.get("parameters", [])
            for method in METHODS:
                if method in item:
                    self.operations.append(self._operation(method, template, item[method], shared))
        # Literal segments win over parameters (/servers/hetzner before /servers/{uuid}).
        self.operations.sort(key=lambda op: (len(op.path_params), op.template))
        self._validators: dict[tuple[int, bool], Validator] = {}

    # -- loading ----------------------------------------------------------------------------------------

    def deref(self, obj: Mapping[str, Any]) -> Mapping[str, Any]:
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
        params = [self.deref(p) for p in [*shared, *raw.get("parameters", [])]]
        names = re.findall(r"{([^}]+)}", template)
        declared = {p["name"]: p.get("schema", {}) for p in params if p.get("in") == "path"}
        body = self.deref(raw["requestBody"]) if "requestBody" in raw else None
        schema = (body.get("content", {}).get("application/json") or {}).get("schema") if body else None
        regex = "^" + re.sub(r"\\{[^}]+\\}", "([^/]+)", re.escape(template)) + "$"
        security = raw.get("security", self.document.get("security", []))
        return Operation(
            method=method.upper(), template=template, operation_id=raw.get("operationId", f"{method} {template}"),
            path_params={n: declared.get(n, {"type": "string"}) for n in names},
            query_params={p["name"]: p.get("schema", {}) for p in params if p.get("in") == "query"},
            required_query=frozenset(p["name"] for p in params if p.get("in") == "query" and p.get("required")),
            request_schema=schema, request_required=bool(body and body.get("required")),
            responses={str(k): self.deref(v) for k, v in raw.get("responses", {}).items()},
            bearer=any("bearer" in name.lower() for s in security for name in s),
            pattern=re.compile(regex))

    # -- lookup -----------------------------------------------------------------------------------------

    def find(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        """The operation for a concrete path (with or without `path_prefix`) and its path parameters."""
        if self.path_prefix and path.startswith(self.path_prefix):
            path = path[len(self.path_prefix):] or "/"
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
            raise self.error(f"{method.upper()} {path}", [f"no operation {method.upper()} {path} in {self.source}"])
        return found

    def by_id(self, operation_id: str) -> Operation:
        for op in self.operations:
            if op.operation_id == operation_id:
                return op
        raise KeyError(f"no operationId {operation_id!r} in {self.source}")

    # -- validation -------------------------------------------------------------------------------------

    def validator(self, schema: Mapping[str, Any], closed: bool) -> Validator:
        """A JSON Schema validator for one of the document's schemas (2020-12 here: OpenAPI 3.1's dialect). Refs
        inside operation schemas are document-relative (#/components/...), so the wrapper carries the components.
        `closed` (forbid unlisted object keys) is for dialects that need rewriting; 3.1 schemas say it themselves."""
        key = (id(schema), closed)
        if key not in self._validators:
            wrapper = {"$schema": "https://json-schema.org/draft/2020-12/schema", "allOf": [schema],
                       "components": self.document.get("components", {})}
            self._validators[key] = Draft202012Validator(wrapper)
        return self._validators[key]

    def schema_problems(self, schema: Mapping[str, Any], value: Any, where: str, *, closed: bool = False) -> list[str]:
        out = []
        for err in sorted(self.validator(schema, closed).iter_errors(value), key=lambda e: list(e.absolute_path)):
            loc = "/".join(str(p) for p in err.absolute_path) or "(root)"
            out.append(f"{where} {loc}: {err.message}")
        return out

    def query_problems(self, op: Operation, query: Mapping[str, str] | None) -> list[str]:
        problems = [f"required query parameter {name!r} missing for {op.operation_id}"
                    for name in sorted(op.required_query - set(query or {}))]
        for name, value in (query or {}).items():
            if name not in op.query_params:
                problems.append(f"query parameter {name!r} is not defined for {op.operation_id}")
            else:
                problems += self.schema_problems(op.query_params[name], coerce_query(op.query_params[name], value),
                                                 f"query {name}")
        return problems

    def body_problems(self, op: Operation, body: Any, has_body: bool, *, closed: bool = False) -> list[str]:
        if not has_body:
            return [f"{op.operation_id} requires a JSON body"] if op.request_required else []
        if op.request_schema is None:
            return [f"{op.operation_id} takes no request body"]
        return self.schema_problems(op.request_schema, body, "body", closed=closed)

    def request_problems(self, method: str, path: str, **kw: Any) -> list[str]:
        raise NotImplementedError

    def response_problems(self, method: str, path: str, status: int, body: Any, **kw: Any) -> list[str]:
        raise NotImplementedError

    def check_request(self, method: str, path: str, **kw: Any) -> None:
        problems = self.request_problems(method, path, **kw)
        if problems:
            raise self.error(f"request {method.upper()} {path}", problems)

    def check_response(self, method: str, path: str, status: int, body: Any, **kw: Any) -> None:
        problems = self.response_problems(method, path, status, body, **kw)
        if problems:
            raise self.error(f"response {status} to {method.upper()} {path}", problems)


def coerce_query(schema: Mapping[str, Any], value: str) -> Any:
    """Query strings are text; the spec types them (boolean, integer)."""
    kind = schema.get("type")
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    if kind == "integer" and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value
