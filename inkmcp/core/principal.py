"""Who is calling. Every core operation takes a Principal and scopes all queries to its account."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict


class Principal(BaseModel):
    model_config = ConfigDict(frozen=True)

    account_id: uuid.UUID
    account_name: str
    actor: str  # key prefix, or "cli"/"stdio" for local operators
