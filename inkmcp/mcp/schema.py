"""Keeping tools/list small and arguments strict.

Agents pay for every character of tools/list in their context window, so generated JSON schemas
are compacted (no auto titles, no `anyOf [..., null]` noise for optional arguments). Unknown
arguments are refused with the list of valid ones instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

_DROP = {"title", "default"}


def compact(schema: Any, *, keep_descriptions: bool = True) -> Any:
    if isinstance(schema, list):
        return [compact(s, keep_descriptions=keep_descriptions) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in _DROP or (k == "description" and not keep_descriptions):
            continue
        if k == "anyOf" and isinstance(v, list):
            non_null = [s for s in v if s != {"type": "null"}]
            if len(non_null) == 1 and len(non_null) < len(v):
                out.update(compact(non_null[0], keep_descriptions=keep_descriptions))
                continue
        if k == "properties" and isinstance(v, dict):
            out[k] = {name: compact(s, keep_descriptions=keep_descriptions) for name, s in v.items()}
            continue
        out[k] = compact(v, keep_descriptions=keep_descriptions)
    return out


def input_schema(schema: dict[str, Any]) -> dict[str, Any]:
    s = compact(schema)
    s["additionalProperties"] = False
    return s


def output_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is None:
        return None
    # clients validate structured output against it: keep the types, drop the prose
    return compact(schema, keep_descriptions=False)


def strict_model(model: type[BaseModel]) -> type[BaseModel]:
    """A subclass of the SDK's argument model that forbids unknown keys."""
    return type(model.__name__, (model,), {"model_config": ConfigDict(extra="forbid", arbitrary_types_allowed=True)})


def explain(e: ValidationError, valid: list[str]) -> str:
    """One line per problem: argument, what was wrong, what to pass instead."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "arguments"
        if err["type"] == "extra_forbidden":
            parts.append(f"Argument '{loc}' is not accepted. Fix: use only {', '.join(valid)}.")
        elif err["type"] == "missing":
            parts.append(f"Argument '{loc}' is required. Fix: pass it.")
        else:
            got = err.get("input")
            shown = repr(got)[:80] if got is not None else "null"
            parts.append(f"Argument '{loc}': {err['msg']} (got {shown}).")
    return " ".join(parts)
