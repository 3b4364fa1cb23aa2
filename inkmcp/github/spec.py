"""GitHub's published contract for what InkMCP reads from GitHub: the REST answers of `GET /user` and
`GET /repos/{owner}/{repo}` (GitHub's OpenAPI 3.0 description) and the `push` webhook payload (GitHub's webhooks
OpenAPI 3.1 description), vendored as one subset file and hash-checked on load.

Why: the GitHub stand-in (`inkmcp.github.standin`) checks every answer and every push payload it makes against
this, so a passing test means "valid for GitHub's spec", not "valid for our idea of GitHub" (as the Neon and Coolify
stand-ins do with theirs). SOURCE.md says where the full descriptions came from and how the subset is cut.

OpenAPI 3.0 schemas are turned into JSON Schema draft 7 (`nullable` → a null type; a `oneOf` with a
`discriminator` is checked as `anyOf`, since the discriminator, not exclusivity, picks the branch). The webhook
schemas are OpenAPI 3.1, i.e. JSON Schema 2020-12, used as they are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator, Draft202012Validator

SPEC_FILE = Path(__file__).with_name("github-contract-subset.json")
SPEC_SHA256 = "63d171312907ea4e1b82d7f3c212cab081499161717b7631eba4c0ede81c4dc2"
"""sha256 of the vendored subset (SOURCE.md says how it was cut); checked on load."""
REST_OPERATIONS: tuple[tuple[str, str], ...] = (
    ("get", "/user"), ("get", "/repos/{owner}/{repo}"),
    # deploy keys (issue 11, private repos under Coolify compute: inkmcp/github/deploy_keys.py)
    ("get", "/repos/{owner}/{repo}/keys"), ("post", "/repos/{owner}/{repo}/keys"),
    ("get", "/repos/{owner}/{repo}/keys/{key_id}"), ("delete", "/repos/{owner}/{repo}/keys/{key_id}"),
)
WEBHOOKS: tuple[str, ...] = ("push",)


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _strip(node: Any, names: bool = False) -> Any:
    """Drop examples and prose: they are large and validate nothing. `names`: the keys of `node` are property
    names (a property may be called "description"), so nothing is dropped at this level."""
    if isinstance(node, list):
        return [_strip(v) for v in node]
    if not isinstance(node, dict):
        return node
    return {k: _strip(v, names=not names and k in ("properties", "patternProperties")) for k, v in node.items()
            if names or k not in ("examples", "example", "description", "summary")}


def _closure(document: Mapping[str, Any], roots: Any) -> dict[str, dict[str, Any]]:
    components: dict[str, dict[str, Any]] = {}
    pending = list(_refs(roots))
    while pending:
        _, kind, name = pending.pop()[2:].split("/", 2)
        if kind == "examples" or name in components.get(kind, {}):
            continue
        value = _strip(document["components"][kind][name])
        components.setdefault(kind, {})[name] = value
        pending.extend(_refs(value))
    return {k: dict(sorted(v.items())) for k, v in sorted(components.items())}


def subset(rest: Mapping[str, Any], webhooks: Mapping[str, Any]) -> dict[str, Any]:
    """Cut the vendored file from the two full descriptions (see SOURCE.md)."""
    paths: dict[str, Any] = {}
    for method, template in REST_OPERATIONS:
        operation = rest["paths"][template][method]
        paths.setdefault(template, {})[method] = {"responses": _strip(operation["responses"])}
        if "requestBody" in operation:
            paths[template][method]["requestBody"] = _strip(operation["requestBody"])
    hooks = {name: _strip(webhooks["webhooks"][name]["post"]["requestBody"]) for name in WEBHOOKS}
    return {
        "rest": {"openapi": rest["openapi"], "info": {"version": rest["info"]["version"]}, "paths": paths,
                 "components": _closure(rest, paths)},
        "webhooks": {"openapi": webhooks["openapi"], "info": {"version": webhooks["info"]["version"]},
                     "webhooks": hooks, "components": _closure(webhooks, hooks)},
    }


def _draft7(node: Any) -> Any:
    if isinstance(node, list):
        return [_draft7(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _draft7(v) for k, v in node.items() if k not in ("nullable", "discriminator", "deprecated")}
    if "discriminator" in node and "oneOf" in out:
        out["anyOf"] = out.pop("oneOf")
    if node.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@lru_cache(maxsize=1)
def load() -> dict[str, Any]:
    raw = SPEC_FILE.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SPEC_SHA256:
        raise RuntimeError(f"{SPEC_FILE.name} changed (sha256 {digest}); regenerate it as SOURCE.md says")
    return dict(json.loads(raw))


def _resolve(components: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        _, kind, name = node["$ref"][2:].split("/", 2)
        node = components[kind][name]
    return node


def response_problems(method: str, template: str, status: int, body: Any) -> list[str]:
    """What is wrong with answering `body` with `status` to `method template` (empty: allowed)."""
    rest = load()["rest"]
    responses = rest["paths"][template][method]["responses"]
    documented = responses.get(str(status))
    # "Bad credentials" (401) on any endpoint; "Not Found" (404) on any repository endpoint the caller may not see
    # or administer (GitHub hides what a token cannot reach rather than answering 403; the deploy-key operations
    # document only their success codes): both `basic-error`, as GitHub's docs describe
    if documented is None and (status == 401 or (status == 404 and template.startswith("/repos/"))):
        documented = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/basic-error"}}}}
        rest = {**rest, "components": {**rest["components"], "schemas": {
            **rest["components"]["schemas"], "basic-error": _basic_error()}}}
    if documented is None:
        return [f"{method.upper()} {template}: status {status} is not documented (documented: {sorted(responses)})"]
    documented = _resolve(rest["components"], documented)
    schema = documented.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return []
    root = {**_draft7(schema), "components": _draft7(rest["components"])}
    return [f"{method.upper()} {template} {status}: {'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
            for e in Draft7Validator(root).iter_errors(body)]


def request_problems(method: str, template: str, body: Any) -> list[str]:
    """What is wrong with sending `body` as the JSON request body of `method template` (empty: allowed)."""
    rest = load()["rest"]
    operation = rest["paths"][template][method]
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return [] if body is None else [f"{method.upper()} {template}: takes no JSON body"]
    root = {**_draft7(schema), "components": _draft7(rest["components"])}
    return [f"{method.upper()} {template} request: {'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
            for e in Draft7Validator(root).iter_errors(body)]


def _basic_error() -> dict[str, Any]:
    return {"type": "object", "properties": {"message": {"type": "string"}, "documentation_url": {"type": "string"},
                                             "url": {"type": "string"}, "status": {"type": "string"}}}


def webhook_problems(event: str, payload: Any) -> list[str]:
    """What is wrong with `payload` as the body of a `event` webhook delivery (empty: valid)."""
    hooks = load()["webhooks"]
    schema = hooks["webhooks"][event]["content"]["application/json"]["schema"]
    root = {**schema, "components": hooks["components"]}
    return [f"{event} payload: {'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
            for e in Draft202012Validator(root).iter_errors(payload)]
