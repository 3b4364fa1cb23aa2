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


def explain(e: ValidationError, valid: list[str]) -> str:
    """One line per argument: what was wrong, what to pass instead.

    A union argument (deploy_app's `database.type`: one type or a list of them) fails once per member, each at a
    loc ending in pydantic's tag for the member ("literal['postgres','byo','redis']", "list[...]"): an agent saw
    "Argument 'database.type.literal['postgres','byo','redis']'" and a second line for the list. A list's bad
    item came back as a second argument too (`database.type=["x"]`: "Argument 'database.type'" for the scalar
    member and "Argument 'database.type.0'" for the item). The argument is the loc up to the first union tag or
    list index, named as the agent spells it; what lies below (the item) is said inside its one line.
    """
    parts: list[str] = []
    wrong: dict[str, list[tuple[str, str, Any]]] = {}  # argument -> (where inside it, message, input there)
    inputs: dict[str, Any] = {}
    slot: dict[str, int] = {}
    for err in e.errors():
        if err["type"] in ("extra_forbidden", "missing"):
            loc = ".".join(str(x) for x in err["loc"] if not _is_union_tag(x)) or "arguments"
            if err["type"] == "extra_forbidden":
                parts.append(f"Argument '{loc}' is not accepted. Fix: use only {', '.join(valid)}.")
            else:
                parts.append(f"Argument '{loc}' is required. Fix: pass it.")
            continue
        head, inner = _split_loc(err["loc"])
        loc = ".".join(head) or "arguments"
        if loc not in wrong:
            slot[loc] = len(parts)
            parts.append("")  # filled below, once every member's message is known
            wrong[loc] = []
        wrong[loc].append((inner, err["msg"], err.get("input")))
        if not inner:
            inputs.setdefault(loc, err.get("input"))
    for loc, found in wrong.items():
        # A problem inside the value (an item of a list) means the value had the member's shape: the other
        # members' "should be a string" about the whole list would only mislead.
        inside = [f for f in found if f[0]]
        if inside:
            by_msg: dict[str, list[str]] = {}
            for where, msg, got in inside:
                by_msg.setdefault(msg, []).append(f"{where} ({_shown(got)})")
            said = "; ".join(f"{', '.join(wheres)}: {msg[:1].lower()}{msg[1:]}" for msg, wheres in by_msg.items())
            parts[slot[loc]] = f"Argument '{loc}': {said}."
            continue
        msgs = list(dict.fromkeys(msg for _, msg, _ in found))
        msg = msgs[0] + "".join(f"; or {m[:1].lower()}{m[1:]}" for m in msgs[1:])
        parts[slot[loc]] = f"Argument '{loc}': {msg} (got {_shown(inputs.get(loc))})."
    return " ".join(parts)


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
