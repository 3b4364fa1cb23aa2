"""services.removing_since: a service whose deletion is under way (delete_service / delete_project).

Owned by: envfix (inkmcp/core/deployments.py `DeployService.remove_service`).

`remove_service` used to hold the service's advisory lock (the one creating a deployment takes) for the whole
removal at the compute platform; under Coolify that includes the deploy key's delete, which waits up to 300 s for
the applications' queued deletes. Meanwhile a deploy_app of the same service waited on that lock, holding one of the
statement pool's few connections. Now the lock covers only the check that no deployment is in progress and this
mark; deployments of a marked service are refused (`_NEW_DEPLOYMENT_SQL`), and the removal runs without the lock.
A removal that fails clears the mark (the service stays usable, as before); one interrupted by a crash leaves it
set, and deploy_app says to call delete again to finish it. Nullable, no default: existing rows are unaffected.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 19:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMENT = "set while the service is being deleted; deploy_app refuses it meanwhile"


def upgrade() -> None:
    op.add_column("services", sa.Column("removing_since", sa.DateTime(timezone=True), nullable=True, comment=COMMENT))


def downgrade() -> None:
    op.drop_column("services", "removing_since")
