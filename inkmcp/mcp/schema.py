"""Keeping tools/list small and arguments strict.

Agents pay for every character of tools/list in their context window (the budget is 5,000
characters for the whole list), so generated JSON schemas are compacted: $refs inlined, no auto
titles or defaults, no `anyOf [X, null]` for optional arguments or fields. No output schemas: the structured
result is still returned (inkmcp.mcp.tools.structured), and what its fields mean is said once in the tool description.
Unknown arguments are refused with the list of valid ones.

The result stays inside what the strictest clients take: Gemini's function declarations (a subset of OpenAPI 3.0's
schema object) refuse a list as `type` ("Proto field is not repeating") and an unknown key such as
`additionalProperties`, and some clients refuse `anyOf`/`oneOf`/`allOf`; one such schema got the whole tool (or the
whole list) rejected. `input_schema` checks its own output (`strict_subset`), so a new argument that does not fit
fails when the server is built, not in someone's client.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

# Bounds and `additionalProperties: false` are still enforced (arguments are validated server-side,
# unknown ones refused with an explained error); they are left out of the schema because every tool
# would pay for them in every agent's context (and `additionalProperties` is refused by Gemini).
_DROP = {"title", "default", "format", "writeOnly", "$defs", "maximum", "minimum", "exclusiveMinimum",
         "additionalProperties"}


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, list):
        return [_inline(s, defs) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**{k: v for k, v in target.items() if k != "description"},
                  **{k: v for k, v in schema.items() if k != "$ref"}}
        return _inline(merged, defs)
    return {k: _inline(v, defs) for k, v in schema.items()}


def _compact(schema: Any, *, top: bool) -> Any:
    if isinstance(schema, list):
        return [_compact(s, top=False) for s in schema]
    if not isinstance(schema, dict):
        return schema
    any_of = schema.get("anyOf")
    if isinstance(any_of, list) and {"type": "null"} in any_of:
        rest = [s for s in any_of if s != {"type": "null"}]
        if len(rest) == 1:
            base = {k: v for k, v in schema.items() if k != "anyOf"}
            # an optional field's null is the same as leaving it out, so the schema does not say it
            return _compact({**rest[0], **base}, top=top)
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in _DROP or (k == "description" and not top):
            continue
        if k == "properties" and isinstance(v, dict):
            out[k] = {name: _compact(s, top=False) for name, s in v.items()}
        else:
            out[k] = _compact(v, top=False)
    return out


def input_schema(schema: dict[str, Any]) -> dict[str, Any]:
    inlined = _inline(schema, schema.get("$defs", {}))
    props = {name: _compact(s, top=True) for name, s in inlined.get("properties", {}).items()}
    out: dict[str, Any] = {"type": "object", "properties": props}
    if inlined.get("required"):
        out["required"] = inlined["required"]
    problems = strict_subset(out)
    if problems:
        raise ValueError(f"input schema outside the strict subset strict clients accept: {'; '.join(problems)}")
    return out


_STRICT_KEYS = {"type", "properties", "required", "items", "enum", "description"}


def strict_subset(schema: Any, at: str = "") -> list[str]:
    """Where a schema leaves the subset every client takes: each node one string `type`, and only the keys in
    _STRICT_KEYS (no type lists, no anyOf/oneOf/allOf/$ref, no additionalProperties). Empty when it fits."""
    if not isinstance(schema, dict):
        return [f"{at or '/'}: not an object"]
    problems = [f"{at or '/'}: {key!r} is not accepted" for key in sorted(set(schema) - _STRICT_KEYS)]
    kind = schema.get("type")
    if not isinstance(kind, str):
        problems.append(f"{at or '/'}: 'type' must be one string, got {kind!r}")
    for name, sub in (schema.get("properties") or {}).items():
        problems += strict_subset(sub, f"{at}/{name}")
    if "items" in schema:
        problems += strict_subset(schema["items"], f"{at}/items")
    return problems


def output_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """None: tools/list carries no outputSchema (optional in MCP; it was the same `{"type": "object"}` on every tool,
    ~450 characters that told an agent nothing). Results still carry structuredContent; tools.py registers every tool
    with structured_output=False, so this only matters for a tool registered some other way."""
    return None


def strict_model(model: type[BaseModel]) -> type[BaseModel]:
    """A subclass of the SDK's argument model that forbids unknown keys."""
    return type(model.__name__, (model,), {"model_config": ConfigDict(extra="forbid", arbitrary_types_allowed=True)})


# --- newuser5: names agents use for an argument from other platforms' APIs and CLIs (`lines` for get_logs' tail,
# `branch` for ref, `env` for env_vars, `domains`): refused with only the list of valid names, the agent guessed again
_ALIASES = {
    "tail": ("lines", "limit", "n", "count", "num_lines", "max_lines", "since_lines"),
    "ref": ("branch", "tag", "commit", "sha", "revision", "git_ref", "git_branch"),
    "repo_url": ("repo", "url", "repository", "git_url", "repository_url", "source", "git_repo"),
    "env_vars": ("env", "envs", "environment", "environment_variables", "variables", "vars", "env_variables"),
    "start_command": ("command", "cmd", "start", "run_command", "entrypoint"),
    "build_command": ("build", "build_cmd"),
    "app_dir": ("root_dir", "root_directory", "rootDir", "base_directory", "directory", "subdirectory", "workdir",
                "working_dir"),
    "project_name": ("project", "project_id", "app_name", "app", "name"),
    "name": ("project_name", "project"),  # ensure_project's
    "service_name": ("service", "service_id"),
    "deployment_id": ("deployment", "id", "deploy_id"),
    "static_dir": ("publish_directory", "output_dir", "dist_dir", "publish_dir"),
}
_NOT_HERE = {
    ("domains", "domain", "custom_domain", "custom_domains", "hostname", "fqdn"):
        "custom domains are not supported: each service answers at the URL deploy_app returns",
    ("health_path", "health_check_path", "healthcheck_path", "health_check"):
        "the health check's path is set in the repo: inkmcp.yaml `services: {web: {health_path: /healthz}}`",
    ("dockerfile", "docker_image", "image", "dockerfile_path"):
        "InkMCP builds from source and runs no Dockerfile or image: pass start_command (and build_command)",
    ("replicas", "instances", "scale", "region"): "each service runs one instance where the server places it",
}


def _meant(name: str, valid: list[str]) -> str | None:
    """What an unknown argument `name` most likely meant, for a tool taking `valid`, or None."""
    key = name.lower()
    for right, wrong in _ALIASES.items():
        if right in valid and key in {w.lower() for w in wrong}:
            return f"the argument for that is {right}"
    for wrong, said in _NOT_HERE.items():
        if key in wrong and "repo_url" in valid:  # deploy_app's
            return said
    return None
# --- end


def explain(e: ValidationError, valid: list[str], schema: dict[str, Any] | None = None) -> str:
    """One line per argument: what was wrong, and a `Fix:` saying what to pass instead, as InkMCP's own errors do.

    `schema` is the tool's full argument schema (`arguments_schema`: bounds and enums included, unlike tools/list's
    compacted one); the fix is built from the failed checks (an enum's choices, a bound, the expected type) and
    from it, so "Input should be less than or equal to 65535" comes with "Fix: pass a whole number from 1 to 65535".

    A union argument (deploy_app's `database.type`: one type or a list of them) fails once per member, each at a
    loc ending in pydantic's tag for the member ("literal['postgres','byo','redis']", "list[...]"): an agent saw
    "Argument 'database.type.literal['postgres','byo','redis']'" and a second line for the list. A list's bad
    item came back as a second argument too (`database.type=["x"]`: "Argument 'database.type'" for the scalar
    member and "Argument 'database.type.0'" for the item). The argument is the loc up to the first union tag or
    list index, named as the agent spells it; what lies below (the item) is said inside its one line.
    """
    parts: list[str] = []
    wrong: dict[str, list[tuple[str, str, Any, dict[str, Any]]]] = {}  # argument -> (where inside, msg, input, err)
    inputs: dict[str, Any] = {}
    slot: dict[str, int] = {}
    heads: dict[str, list[str]] = {}
    for err in e.errors():
        if err["type"] in ("extra_forbidden", "missing"):
            loc = ".".join(str(x) for x in err["loc"] if not _is_union_tag(x)) or "arguments"
            if err["type"] == "extra_forbidden":
                path = [str(x) for x in err["loc"] if not _is_union_tag(x)]
                inner = _node(schema, path[:-1]) if len(path) > 1 else None
                if inner is not None and inner.get("properties"):  # a key inside an object argument (resources.gpu)
                    keys = ", ".join(inner["properties"])
                    parts.append(f"Argument '{loc}' is not accepted. Fix: use only {keys} in {'.'.join(path[:-1])}.")
                elif (meant := _meant(loc, valid)) is not None:  # --- newuser5
                    parts.append(f"Argument '{loc}' is not accepted: {meant}. Fix: use only {', '.join(valid)}.")
                else:
                    parts.append(f"Argument '{loc}' is not accepted. Fix: use only {', '.join(valid)}.")
            else:
                node = _node(schema, [str(x) for x in err["loc"] if not _is_union_tag(x)])
                what = _kind(node) if node is not None else None
                parts.append(f"Argument '{loc}' is required. Fix: pass {loc}" + (f" ({what})." if what else "."))
            continue
        head, inner = _split_loc(err["loc"])
        loc = ".".join(head) or "arguments"
        if loc not in wrong:
            slot[loc] = len(parts)
            parts.append("")  # filled below, once every member's message is known
            wrong[loc] = []
            heads[loc] = head
        wrong[loc].append((inner, err["msg"], err.get("input"), dict(err)))
        if not inner:
            inputs.setdefault(loc, err.get("input"))
    for loc, found in wrong.items():
        # A problem inside the value (an item of a list) means the value had the member's shape: the other
        # members' "should be a string" about the whole list would only mislead.
        inside = [f for f in found if f[0]]
        node = _node(schema, heads[loc])
        if inside:
            by_msg: dict[str, list[str]] = {}
            for where, msg, got, _ in inside:
                by_msg.setdefault(msg, []).append(f"{where} ({_shown(got)})")
            said = "; ".join(f"{', '.join(wheres)}: {msg[:1].lower()}{msg[1:]}" for msg, wheres in by_msg.items())
            items = _wanted([err for *_, err in inside], None)
            parts[slot[loc]] = f"Argument '{loc}': {said}. Fix: make each item {items or 'of the listed kind'}."
            continue
        # "Input should be a valid dictionary or instance of DatabaseRequest": the class name is ours, not the agent's
        msgs = list(dict.fromkeys(re.sub(r" or instance of \w+", "", msg) for _, msg, _, _ in found))
        msg = msgs[0] + "".join(f"; or {m[:1].lower()}{m[1:]}" for m in msgs[1:])
        fix = _wanted([err for *_, err in found], node) or (_kind(node) if node is not None else None)
        fix_text = f"pass {fix}" if fix else f"pass a value of the type tools/list shows for {loc}"
        if len(heads[loc]) == 1 and schema is not None and heads[loc][0] not in schema.get("required", ()):
            fix_text += ", or leave it out"
        parts[slot[loc]] = f"Argument '{loc}': {msg} (got {_shown(inputs.get(loc))}). Fix: {fix_text}."
    return " ".join(parts)


def arguments_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A tool's argument model as one JSON schema with its $refs inlined: what `explain` reads the fixes from."""
    full = model.model_json_schema()
    return dict(_inline(full, full.get("$defs", {})))


def _node(schema: dict[str, Any] | None, path: list[str]) -> dict[str, Any] | None:
    """The schema of the argument at `path` (through optional wrappers and maps' values), None if unknown."""
    node: Any = schema
    for part in path:
        node = _present(node)
        if not isinstance(node, dict):
            return None
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        node = props.get(part) if part in props else extra if isinstance(extra, dict) else None
    node = _present(node)
    return node if isinstance(node, dict) else None


def _present(node: Any) -> Any:
    """An optional argument's schema without its null member (null is the same as leaving it out)."""
    if isinstance(node, dict) and isinstance(node.get("anyOf"), list):
        rest = [s for s in node["anyOf"] if s != {"type": "null"}]
        if len(rest) == 1:
            return {**{k: v for k, v in node.items() if k != "anyOf"}, **rest[0]}
        return {**node, "anyOf": rest}
    return node


_KINDS = {"string": "a string", "integer": "a whole number", "number": "a number", "boolean": "true or false",
          "array": "a list", "object": "an object"}
_TYPE_ERRORS = {
    "string_type": "string", "int_type": "integer", "int_parsing": "integer", "int_from_float": "integer",
    "float_type": "number", "float_parsing": "number", "bool_type": "boolean", "bool_parsing": "boolean",
    "list_type": "array", "dict_type": "object", "model_type": "object", "model_attributes_type": "object",
}
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _wanted(errors: list[dict[str, Any]], node: dict[str, Any] | None) -> str | None:
    """What to pass, from the checks that failed: the choices of a literal or enum, the bounds of a number, the
    length of a string, the expected type; members of a union joined with "or"."""
    said: list[str] = []
    choices = next((err["ctx"]["expected"] for err in errors if err["type"] in ("literal_error", "enum")
                    and err.get("ctx", {}).get("expected")), None)  # fmt: skip
    if choices:
        said.append(f"one of {choices}")
    for err in errors:
        kind, ctx = err["type"], err.get("ctx") or {}
        if kind in _BOUND_ERRORS:
            said.append(_bounded(node, kind, ctx))
        elif kind in ("string_too_long", "too_long"):
            said.append(f"at most {ctx.get('max_length')} " + ("characters" if kind.startswith("string") else "items"))
        elif kind in ("string_too_short", "too_short"):
            said.append(f"at least {ctx.get('min_length')} " + ("characters" if kind.startswith("string") else "items"))
        elif kind in _TYPE_ERRORS:
            wanted = _TYPE_ERRORS[kind]
            if wanted == "array" and choices:
                said.append("a list of them")
            elif node is not None and node.get("type") == wanted:
                said.append(_kind(node))  # "a list of strings", "an object with the keys memory_mb, cpus"
            else:
                said.append(_KINDS[wanted])
    said = list(dict.fromkeys(said))
    return ", or ".join(said) if said else None


def _bounded(node: dict[str, Any] | None, kind: str, ctx: dict[str, Any]) -> str:
    """"a whole number from 1 to 65535": both bounds from the schema when it has them, else the one that failed."""
    node = node or {}
    noun = "a whole number" if node.get("type") == "integer" else "a number"
    low = ("from", node["minimum"]) if "minimum" in node else ("above", node["exclusiveMinimum"]) \
        if "exclusiveMinimum" in node else None
    high = ("to", node["maximum"]) if "maximum" in node else ("below", node["exclusiveMaximum"]) \
        if "exclusiveMaximum" in node else None
    if low is None and high is None:
        word = {"greater_than": "above", "greater_than_equal": "at least", "less_than": "below",
                "less_than_equal": "at most"}[kind]
        value = next(iter(ctx.values()), "?")
        return f"{noun} {word} {_num(value)}"
    if low and high:
        joint = " " if low[0] == "from" and high[0] == "to" else " and "
        high_word = "at most" if high[0] == "to" and low[0] != "from" else high[0]
        return f"{noun} {low[0]} {_num(low[1])}{joint}{high_word} {_num(high[1])}"
    word, value = low or high  # type: ignore[misc]
    word = {"from": "of at least", "to": "of at most"}.get(word, word)
    return f"{noun} {word} {_num(value)}"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _kind(node: dict[str, Any]) -> str:
    """What an argument's schema asks for, in words ("one of 'build', 'runtime'", "an object with keys ...")."""
    if "enum" in node:
        return "one of " + ", ".join(repr(v) for v in node["enum"])
    if isinstance(node.get("anyOf"), list):
        return " or ".join(_kind(s) for s in node["anyOf"] if isinstance(s, dict))
    kind = node.get("type")
    if kind in ("integer", "number") and any(k in node for k in ("minimum", "maximum", "exclusiveMinimum")):
        return _bounded(node, "", {})
    if kind == "object" and node.get("properties"):
        return "an object with the keys " + ", ".join(node["properties"])
    if kind == "object":  # a name -> value map (env_vars)
        return 'an object of names to string values, e.g. {"NAME": "value"}'
    if kind == "array" and isinstance(node.get("items"), dict):
        items = node["items"]
        plain = _PLURALS.get(items.get("type")) if set(items) <= {"type", "description"} else None
        return f"a list of {plain}" if plain else f"a list whose items are each {_kind(items)}"
    return _KINDS.get(kind, "a value") if isinstance(kind, str) else "a value"


_PLURALS = {"string": "strings", "integer": "whole numbers", "number": "numbers", "boolean": "true/false values",
            "object": "objects"}


def _shown(value: Any) -> str:
    return repr(value)[:80] if value is not None else "null"


def _split_loc(loc: tuple[int | str, ...]) -> tuple[list[str], str]:
    """(the argument's path, where inside its value): the argument ends at the first union tag or list index;
    what follows reads "item 0", "item 0.name"."""
    head: list[str] = []
    rest = list(loc)
    while rest and not (_is_union_tag(rest[0]) or isinstance(rest[0], int)):
        head.append(str(rest.pop(0)))
    inner = [x for x in rest if not _is_union_tag(x)]
    where = ""
    for x in inner:
        where += f"item {x}" if isinstance(x, int) and not where else f"[{x}]" if isinstance(x, int) else f".{x}"
    return head, where


_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "tuple", "set"}


def _is_union_tag(part: object) -> bool:
    """pydantic's name for a union member in an error's loc (never an argument name: those are DNS-label-like
    identifiers without brackets or quotes)."""
    return isinstance(part, str) and ("[" in part or "'" in part or part in _UNION_TAGS)
