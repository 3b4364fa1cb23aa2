"""Provider-owned ids ("refs"): the JSON a compute provider asks core to keep for a project, a service or a
deployment (Coolify uuids, the placed server, remote deployment uuids).

Why here and not in the provider: a provider's memory dies with the process and is not shared by replicas, so
the control-plane database is the one place every InkMCP process finds them again (migration 0003). Each
`provider_ref` column holds `{"<provider name>": ref}`; the store never looks inside a ref.

`save_ref` is one statement that replaces only that provider's entry (`provider_ref || {name: ref}`), committed
before it returns: the provider's contract is that a ref is durable before its next remote step.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, literal, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.store.models import Deployment, Project, Service

_MODELS: dict[str, type[Project] | type[Service] | type[Deployment]] = {
    "project": Project,
    "service": Service,
    "deployment": Deployment,
}

MAX_REF_BYTES = 64 * 1024
"""A ref is a handful of ids; anything near this is a provider bug (e.g. logs stored as a ref)."""


class RefNotStored(LookupError):
    """The row the ref belongs to is gone (deleted meanwhile): nothing was stored."""


def ref_of(column: Mapping[str, Any] | None, provider: str) -> dict[str, Any]:
    """The entry of `provider` in a `provider_ref` column value (a copy; `{}` if none)."""
    entry = (column or {}).get(provider)
    return dict(entry) if isinstance(entry, Mapping) else {}


def check_ref(ref: Mapping[str, Any]) -> str:
    """`ref` as JSON text, or a ValueError saying what is wrong with it."""
    if not isinstance(ref, Mapping):
        raise ValueError(f"a provider ref must be a JSON object (a dict), got {type(ref).__name__}")
    try:
        text = json.dumps(ref, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"a provider ref must be plain JSON (str, int, float, bool, None, lists, dicts): {e}") from e
    if len(text.encode()) > MAX_REF_BYTES:
        raise ValueError(f"a provider ref must stay under {MAX_REF_BYTES} bytes of JSON; keep ids only")
    return text


async def save_ref(
    sessions: async_sessionmaker[AsyncSession], scope: str, row_id: uuid.UUID, provider: str, ref: Mapping[str, Any]
) -> None:
    """Replace `provider`'s ref on the `scope` row (`project`, `service` or `deployment`) and commit."""
    model = _MODELS.get(scope)
    if model is None:
        raise ValueError(f"unknown ref scope {scope!r}; pass one of {', '.join(_MODELS)}")
    value = json.loads(check_ref(ref))  # a plain copy: nothing the caller mutates later reaches the statement
    entry = func.jsonb_build_object(provider, literal(value, JSONB))
    async with sessions.begin() as s:
        done = await s.execute(
            update(model)
            .where(model.id == row_id)
            .values(provider_ref=model.provider_ref.op("||")(entry))
            .returning(model.id)
        )
        if done.first() is None:
            raise RefNotStored(f"no {scope} {row_id}: it was deleted, so the provider's ref was not stored")
