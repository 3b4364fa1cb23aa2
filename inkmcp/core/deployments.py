"""The deploy pipeline: one call from a repo to a live URL.

Steps, each recorded before the next starts (deployments.status + deployment_events):
resolve commit → (no-op if the same commit, settings and env are already live or on their way)
→ BuildPlan → ensure database → the deployment, with the service's settings and env (encrypted) written in the
same statement → provider release (build → release command → start → health check → switch traffic → stop old)
→ live. A call refused before its deployment exists (a plan error, the retry-loop breaker, the account's
concurrent-builds limit, ...) changes no setting or env var, and takes back a service or project it made.
A failure leaves the previous version serving and the deployment `failed` with a reason an agent
can act on. Deployments interrupted by a restart are resumed from their record at start-up.

The compute provider is called the same way whether it runs processes here or asks a remote API:
what it creates is recorded through `record` into the database (`provider_ref` columns) before its
next step, `release` is repeated for the same deployment after a crash or a retryable error (and
re-attaches instead of starting again), `ProviderUnavailable` is retried with backoff for a bounded
window, and env changes report what really happened (restarted, pending at the provider, or kept
for the next start).

More than one replica (issue 8 item 7, `leases.py`): a deployment's pipeline runs on the replica holding its
lease, every write of the pipeline is fenced by the lease's epoch, a heartbeat keeps the leases of running
pipelines, and a replica takes over deployments whose lease expired (at start-up and on every scan). Releases
of one service run one at a time in creation order across replicas, and creating a deployment holds the
service's advisory lock, so two replicas deploying the same thing at once make one deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.build.detect import derive_plan
from inkmcp.build.plan import BuildPlan, Mode, ServiceType, resolve_mode
from inkmcp.build.source import (
    FetchedCommit,
    SourcePolicy,
    check_repo_url,
    checkout_fetched,
    fetch_commit,
    resolve_and_checkout,
)
from inkmcp.core.checkout_slots import CheckoutSlots
from inkmcp.core.databases import NOT_SECRET, DatabaseRequest, DatabaseService
from inkmcp.core.envvars import (
    MAX_PROJECT_KEYS,
    MAX_PROJECT_STORED_BYTES,
    EnvService,
    project_totals_error,
    validate_env_payload,
)
from inkmcp.core.leases import (
    SERVICE_LOCK_CLASS,
    Lease,
    LeaseConfig,
    LeaseLost,
    Leases,
    hold_ref_switch,
    lock_service,
    service_lock_key,
)
from inkmcp.core.logs import redact, secret_values
from inkmcp.core.names import check_name, project_name_from_repo, redact_url
from inkmcp.core.principal import Principal
from inkmcp.core.projects import Prechecked, ProjectService, _refuse_more_builds
from inkmcp.core.retention import Retention
from inkmcp.core.views import TERMINAL, DeploymentSummary, DeploymentView, ServiceView
from inkmcp.errors import BuildPlanError, Conflict, InkError, InvalidArgument, NotFound, ProviderError, scrub_paths
from inkmcp.metrics import Metrics
from inkmcp.providers.compute.base import (
    ComputeProvider,
    EnvOutcome,
    ProviderRef,
    ProviderRefused,
    ProviderUnavailable,
    RefScope,
    ReleaseFailed,
    ReleaseRequest,
    ReleaseSpec,
    Resources,
    RuntimeState,
    ServiceKey,
    ServiceRuntime,
    Step,
)
from inkmcp.store.models import Deployment, EnvVar, Project, Service
from inkmcp.store.refs import check_ref, ref_of, save_ref
from inkmcp.store.statements import statement_pool

log = logging.getLogger("inkmcp.deploy")

# Fenced writes of a pipeline, each ONE autocommit statement (one round trip, no BEGIN/COMMIT): the UPDATE of the
# deployment row (or the FOR UPDATE lock of it, for a ref on another row) is conditioned on the lease's replica and
# epoch, so it is serialised with a takeover exactly like leases.fence's SELECT ... FOR UPDATE + writes in one
# transaction: either it commits before the takeover, or it finds the row changed, writes nothing and the caller
# raises LeaseLost. A deploy records ~20 steps and refs; as ORM transactions each cost ~5 round trips.
_REF_SQL = """
    WITH f AS MATERIALIZED (
        SELECT id FROM deployments WHERE id = %(dep)s AND claimed_by = %(me)s AND lease_epoch = %(epoch)s FOR UPDATE
    ), u AS (
        UPDATE {table} SET provider_ref = provider_ref || jsonb_build_object(%(provider)s::text, %(ref)s::jsonb)
        WHERE id = %(row)s AND EXISTS (SELECT 1 FROM f)
        RETURNING id
    )
    SELECT count(*) FROM f
"""
_REF_SQL_BY_SCOPE = {scope: _REF_SQL.format(table=table) for scope, table in
                     (("project", "projects"), ("service", "services"), ("deployment", "deployments"))}
# Several refs of one release (a provider's coalesced writes: the Coolify provider flushes the refs it recorded since
# its last remote change before the next one) in one fenced statement: a NULL ref leaves its row alone. The fence and
# the project/service writes are the same in both statements; they differ in what they do to the deployment row.
_REFS_FENCED = """
    WITH f AS MATERIALIZED (
        SELECT id FROM deployments WHERE id = %(dep)s AND claimed_by = %(me)s AND lease_epoch = %(epoch)s FOR UPDATE
    ), p AS (
        UPDATE projects SET provider_ref = provider_ref || jsonb_build_object(%(provider)s::text, %(project)s::jsonb)
        WHERE id = %(project_row)s AND %(project)s::jsonb IS NOT NULL AND EXISTS (SELECT 1 FROM f)
        RETURNING id
    ), s AS (
        UPDATE services SET provider_ref = provider_ref || jsonb_build_object(%(provider)s::text, %(service)s::jsonb)
        WHERE id = %(service_row)s AND %(service)s::jsonb IS NOT NULL AND EXISTS (SELECT 1 FROM f)
        RETURNING id
    )"""
_REFS_SQL = _REFS_FENCED + """, d AS (
        UPDATE deployments
        SET provider_ref = provider_ref || jsonb_build_object(%(provider)s::text, %(deployment)s::jsonb)
        WHERE id = %(dep)s AND %(deployment)s::jsonb IS NOT NULL AND EXISTS (SELECT 1 FROM f)
        RETURNING id
    )
    SELECT count(*) FROM f
"""
# The same, with pipeline steps of the deployment (the last one's status, an event each, in order) in the same
# statement: a provider's last refs of a release and its `switching` step are one write (--- overhead9: with the
# `building` step of a build Coolify had finished at the first look before them, when there is one).
_REFS_STEP_SQL = _REFS_FENCED + """, d AS (
        UPDATE deployments
        SET provider_ref = CASE WHEN %(deployment)s::jsonb IS NULL THEN provider_ref
                                ELSE provider_ref || jsonb_build_object(%(provider)s::text, %(deployment)s::jsonb) END,
            status = %(status)s, updated_at = %(now)s
        WHERE id = %(dep)s AND EXISTS (SELECT 1 FROM f)
        RETURNING id
    ), e AS (
        INSERT INTO deployment_events (deployment_id, status, detail)
        SELECT d.id, s.status, s.detail
        FROM d, unnest(%(statuses)s::text[], %(details)s::text[]) WITH ORDINALITY AS s(status, detail, n)
        ORDER BY s.n
    )
    SELECT count(*) FROM f
"""
# A provider's claim of the right to create its remote project (overhead6): the project's ref is written, fenced,
# only if the stored one records no remote project, no create of one in flight (`pending.project`) and no create
# whose answer was an error that may still have made it (`create_answered_error`). Two pipelines of one project's
# services (on one replica or two) race here, not at the remote: the winner alone creates without looking first.
_CLAIM_PROJECT_SQL = """
    WITH f AS MATERIALIZED (
        SELECT id FROM deployments WHERE id = %(dep)s AND claimed_by = %(me)s AND lease_epoch = %(epoch)s FOR UPDATE
    ), u AS (
        UPDATE projects SET provider_ref = provider_ref || jsonb_build_object(%(provider)s::text, %(ref)s::jsonb)
        WHERE id = %(row)s AND EXISTS (SELECT 1 FROM f)
          AND NOT COALESCE(provider_ref -> %(provider)s::text ? 'project_uuid', false)
          AND NOT COALESCE(provider_ref -> %(provider)s::text -> 'pending' ? 'project', false)
          AND NOT COALESCE(provider_ref -> %(provider)s::text ? 'create_answered_error', false)
        RETURNING id
    )
    SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM u)
"""
_PROJECT_REF_SQL = "SELECT provider_ref -> %s::text FROM projects WHERE id = %s"
# A pipeline step: the fenced status update and its event, one statement. `failed` also ends the lease.
_STEP_SQL = """
    WITH d AS (
        UPDATE deployments SET status = %(status)s, updated_at = %(now)s
        WHERE id = %(dep)s AND claimed_by = %(me)s AND lease_epoch = %(epoch)s
        RETURNING id
    )
    INSERT INTO deployment_events (deployment_id, status, detail) SELECT id, %(status)s, %(detail)s FROM d
    RETURNING deployment_id
"""
_FAILED_SQL = """
    WITH d AS (
        UPDATE deployments SET status = %(status)s, updated_at = %(now)s, error = %(detail)s, finished_at = %(now)s,
                               lease_until = NULL
        WHERE id = %(dep)s AND claimed_by = %(me)s AND lease_epoch = %(epoch)s
        RETURNING id
    )
    INSERT INTO deployment_events (deployment_id, status, detail) SELECT id, %(status)s, %(detail)s FROM d
    RETURNING deployment_id
"""
_REUSABLE_SQL = text("""
    SELECT s.live_deployment_id, d.id, d.status
    FROM services s LEFT JOIN LATERAL (
        SELECT id, status FROM deployments WHERE service_id = s.id AND config_hash = :hash
        ORDER BY created_at DESC LIMIT 1
    ) d ON true
    WHERE s.id = :service AND s.removing_since IS NULL
""")
_LOCK_OWNER_SQL = """
    SELECT a.id FROM accounts a JOIN projects p ON p.account_id = a.id JOIN services s ON s.project_id = p.id
    WHERE s.id = %s FOR NO KEY UPDATE OF a
"""
_NEW_DEPLOYMENT_SQL = """
    WITH svc AS (
        SELECT s.live_deployment_id, p.account_id, COALESCE(a.max_concurrent_builds, %(default_max)s) AS max_builds,
               s.name, s.removing_since, p.name AS project_name, s.project_id
        FROM services s JOIN projects p ON p.id = s.project_id JOIN accounts a ON a.id = p.account_id
        WHERE s.id = %(service)s
    ), env_total AS (
        SELECT count(e.id) + cardinality(%(set_keys)s::text[]) AS n,
               COALESCE(sum(octet_length(e.value_enc)), 0)
               + (SELECT COALESCE(sum(octet_length(v)), 0) FROM unnest(%(set_values)s::bytea[]) AS v) AS b
        FROM svc LEFT JOIN env_vars e ON e.project_id = svc.project_id
                                      AND NOT (e.scope = %(scope)s AND e.key = ANY(%(set_keys)s::text[]))
                                      AND NOT (e.scope = %(scope)s AND e.key = ANY(%(unset_keys)s::text[]))
        WHERE cardinality(%(set_keys)s::text[]) > 0  -- no key set: nothing to count (one row of 0 all the same)
    ), env_fits AS (
        SELECT cardinality(%(set_keys)s::text[]) = 0 OR (n <= %(max_env_keys)s AND b <= %(max_env_bytes)s) AS ok
        FROM env_total
    ), last AS (
        SELECT id, status FROM deployments WHERE service_id = %(service)s AND config_hash = %(hash)s
        ORDER BY created_at DESC LIMIT 1
    ), reusable AS (
        SELECT last.id FROM last, svc
        WHERE %(reuse)s AND ((last.status = 'live' AND last.id = svc.live_deployment_id)
                             OR last.status <> ALL(%(terminal)s))
    ), running AS (
        SELECT count(*) AS n FROM deployments d JOIN services s ON s.id = d.service_id
        JOIN projects p ON p.id = s.project_id
        WHERE p.account_id = (SELECT account_id FROM svc) AND d.status <> ALL(%(terminal)s)
    ), go AS (
        SELECT 1 FROM svc, running, env_fits WHERE NOT EXISTS (SELECT 1 FROM reusable) AND running.n < svc.max_builds
                                                   AND svc.removing_since IS NULL AND env_fits.ok
    ), kind AS (
        UPDATE services SET service_type = %(type)s, mode = %(mode)s,
                            repo_url = CASE WHEN %(write)s THEN %(repo_url)s ELSE repo_url END,
                            repo_url_enc = CASE WHEN %(write)s THEN %(repo_url_enc)s::bytea ELSE repo_url_enc END,
                            ref = CASE WHEN %(write)s THEN %(ref)s ELSE ref END,
                            settings = CASE WHEN %(write)s THEN %(settings)s::jsonb ELSE settings END
        WHERE id = %(service)s AND EXISTS (SELECT 1 FROM go) RETURNING id, project_id
    ), env_set AS (
        INSERT INTO env_vars (id, project_id, scope, key, value_enc)
        SELECT gen_random_uuid(), kind.project_id, %(scope)s, x.k, x.v
        FROM kind, unnest(%(set_keys)s::text[], %(set_values)s::bytea[]) AS x(k, v)
        ON CONFLICT ON CONSTRAINT uq_env_vars_scope_key DO UPDATE SET value_enc = EXCLUDED.value_enc, updated_at = now()
    ), env_unset AS (
        DELETE FROM env_vars e USING kind
        WHERE e.project_id = kind.project_id AND e.scope = %(scope)s AND e.key = ANY(%(unset_keys)s::text[])
    ), dep AS (
        INSERT INTO deployments (id, service_id, status, commit, config_hash, plan, claimed_by, lease_epoch,
                                 lease_until)
        SELECT %(dep)s, %(service)s, %(status)s, %(commit)s, %(hash)s, %(plan)s, %(me)s, 1,
               now() + make_interval(secs => %(lease_seconds)s)
        FROM go RETURNING id
    ), event AS (
        INSERT INTO deployment_events (deployment_id, status, detail) SELECT id, %(status)s, %(detail)s FROM dep
    )
    SELECT (SELECT id FROM reusable), (SELECT id FROM dep), (SELECT n FROM running), (SELECT max_builds FROM svc),
           (SELECT name FROM svc), (SELECT removing_since FROM svc), (SELECT project_name FROM svc),
           (SELECT ok FROM env_fits), (SELECT n FROM env_total), (SELECT b FROM env_total)
"""
"""_create_with_reads's third statement: what _reusable_of decides, ProjectService.check_build_quota's count and
limit (the account's own, else the default), and the writes, all on one snapshot taken after the locks. The writes
happen only when the deployment is inserted (`kind` is empty otherwise): the service's type and mode, and with
`write` the call's settings (repo URL, ref, settings) and its env vars (pre-encrypted: `EnvService.seal`), so a call
refused here (the limit, or the project's env totals: `env_total` counts the project's variables as they would be
after this call's writes, as envvars.check_project_totals does for update_env_vars), or reusing a deployment, or
refused before it got here, changed none of them."""


def _reusable_of(live: uuid.UUID | None, dep_id: uuid.UUID | None, status: str | None) -> uuid.UUID | None:
    if dep_id is None:
        return None
    if status == "live" and dep_id == live:
        return dep_id
    if status not in TERMINAL:
        return dep_id  # the same deployment is already on its way
    return None


_OLDER_SQL = """
    SELECT o.id, o.claimed_by, (o.claimed_by IS NULL OR o.lease_until IS NULL OR o.lease_until < now()) AS abandoned
    FROM deployments d JOIN deployments o ON o.service_id = d.service_id
    WHERE d.id = %s AND o.id <> d.id AND o.status <> ALL(%s)
      AND (o.created_at, o.id) < (d.created_at, d.id)
    ORDER BY o.created_at
"""
_SERVICE_OF_DEPLOYMENT_SQL = (
    "SELECT s.project_id, s.id FROM deployments d JOIN services s ON s.id = d.service_id WHERE d.id = %s"
)
"""(project, service) of a deployment: whose secrets its failure's reason must hide (`_fail`)."""

_VIEW_SQL = """
    SELECT d.status, d.url, d.commit, d.error, s.name, p.name,
           COALESCE((SELECT json_agg(json_build_array(e.status, e.detail) ORDER BY e.id)
                     FROM deployment_events e WHERE e.deployment_id = d.id), '[]'::json)
    FROM deployments d JOIN services s ON s.id = d.service_id JOIN projects p ON p.id = s.project_id
    WHERE d.id = %s AND p.account_id = %s
"""
_LIVE_SQL = """
    WITH d AS (
        UPDATE deployments SET status = 'live', url = %(url)s, finished_at = %(now)s, updated_at = %(now)s,
                               lease_until = NULL
        WHERE id = %(dep)s AND claimed_by = %(me)s AND lease_epoch = %(epoch)s
        RETURNING id, service_id
    ), old AS (
        UPDATE deployments o SET status = 'superseded', updated_at = %(now)s
        FROM d WHERE o.service_id = d.service_id AND o.status = 'live' AND o.id <> d.id
        RETURNING o.id
    ), svc AS (
        UPDATE services SET live_deployment_id = d.id, url = %(url)s FROM d WHERE services.id = d.service_id
        RETURNING services.id
    )
    INSERT INTO deployment_events (deployment_id, status, detail) SELECT id, 'live', %(detail)s FROM d
    RETURNING deployment_id
"""

_NEW_PROJECT_SQL = """
    WITH acc AS (
        SELECT COALESCE(a.max_projects, %(max_projects)s) AS max_projects,
               COALESCE(a.max_services_per_project, %(max_services)s) AS max_services
        FROM accounts a WHERE a.id = %(account)s::uuid
    ), p AS (
        INSERT INTO projects (id, account_id, name, repo_url)
        SELECT %(project)s::uuid, %(account)s::uuid, %(name)s::text, %(shown)s::text FROM acc
        WHERE acc.max_services > 0
          AND NOT EXISTS (SELECT 1 FROM projects WHERE lower(name) = lower(%(name)s::text))
          AND (SELECT count(*) FROM projects WHERE account_id = %(account)s::uuid) < acc.max_projects
        ON CONFLICT DO NOTHING
        RETURNING id
    ), s AS (
        INSERT INTO services (id, project_id, name, service_type, mode, repo_url, repo_url_enc, ref, settings)
        SELECT %(service)s, p.id, %(service_name)s, %(type)s, %(mode)s, %(repo_url)s, %(repo_url_enc)s::bytea,
               %(ref)s, %(settings)s::jsonb
        FROM p
        RETURNING id
    )
    SELECT (SELECT id FROM s)
"""
"""`DeployService._new_project_and_service`'s second statement, run after the account row is locked (FOR NO KEY
UPDATE, as core.limits.lock_account takes it) on a snapshot taken after that lock: the project and its first service
are inserted only if the name is free, the account is below its project limit and a project may hold a service at
all. Anything else inserts nothing (the caller then takes ProjectService.ensure_with's path, which says why)."""

_LOAD_COLUMNS = [(model, [(attr.key, attr.columns[0].name) for attr in model.__mapper__.column_attrs])
                 for model in (Deployment, Service, Project)]  # fmt: skip
_LOAD_SQL = (
    "SELECT " + ", ".join(f'{alias}."{column}"' for (_, columns), alias in zip(_LOAD_COLUMNS, "dsp", strict=True)
                          for _, column in columns)
    + " FROM deployments d JOIN services s ON s.id = d.service_id JOIN projects p ON p.id = s.project_id"
    " WHERE d.id = %s"
)
"""`DeployService._load`: every column of the three rows, in the models' order (so a new column is read too)."""
_LOAD_FIRST_SQL = (
    _LOAD_SQL.split(" WHERE d.id = %s")[0]
    + " LEFT JOIN LATERAL (SELECT array_agg(o.id ORDER BY o.created_at) AS ids,"
    " array_agg(o.claimed_by IS NULL OR o.lease_until IS NULL OR o.lease_until < now() ORDER BY o.created_at) AS gone"
    " FROM deployments o WHERE o.service_id = d.service_id AND o.id <> d.id AND o.status <> ALL(%s)"
    " AND (o.created_at, o.id) < (d.created_at, d.id)) older ON true"
    " WHERE d.id = %s"
).replace(" FROM deployments d JOIN", ", older.ids, older.gone FROM deployments d JOIN", 1)
"""--- overhead8 (issue 8): a pipeline's first read, `_LOAD_SQL` and `_OLDER_SQL` in one statement (its rows and
the service's older deployments not yet terminal, as (id, claimed_by placeholder, abandoned)): one prepared statement
and one pool connection fewer per deployment. Later ticks of `_wait_turn` and later attempts read them apart."""


def _compose_env(
    injected: Mapping[str, SecretStr], values: Mapping[str, SecretStr], plan: BuildPlan | None = None
) -> dict[str, SecretStr]:
    """Lowest first: the repo's env defaults (platform files: non-secret), the add-ons' variables, the variables
    the repo links to an add-on's (render.yaml `fromDatabase`: CELERY_BROKER_URL -> REDIS_URL), the agent's."""
    env: dict[str, SecretStr] = {}
    if plan is not None:
        env.update((k, SecretStr(v)) for k, v in plan.env_defaults.items())
    env.update(injected)
    if plan is not None:
        env.update((name, injected[var]) for name, var in plan.env_links.items() if var in injected)
    env.update(values)
    return env


def _overlay(shared: Mapping[str, SecretStr], own: Mapping[str, SecretStr],
             change: Mapping[str, str | None]) -> dict[str, SecretStr]:
    """The agent's values for a service (project-wide, then the service's own) once `change` is applied to the
    service's own: a value sets, None unsets (the project-wide value of that key, if any, shows again)."""
    mine = {k: v for k, v in own.items() if k not in change}
    mine.update((k, SecretStr(v)) for k, v in change.items() if v is not None)
    return {**shared, **mine}


@dataclass(frozen=True)
class ServiceWrite:
    """What a deploy_app call sets on its service, written only with the deployment it makes (_NEW_DEPLOYMENT_SQL):
    the repo URL (shown, and whole only encrypted), ref, settings, and its env vars, already encrypted."""

    repo_url: str
    repo_url_enc: bytes | None
    ref: str | None
    settings: dict[str, Any]
    set_keys: list[str]
    set_values: list[bytes]
    unset_keys: list[str]


@dataclass
class _Made:
    """What a deploy_app call made for itself before its deployment, to take back if it is refused."""

    project_id: uuid.UUID
    created_project: bool
    service_id: uuid.UUID | None = None
    new_service: bool = False
    keyed: bool = False  # --- ghkeys (issue 11): a deploy key was (being) set up for the service


def _service_gone(name: str | None = None) -> Conflict:
    what = f"service {name!r}" if name else "the service"
    return Conflict(
        f"{what} was removed while this deploy_app was setting it up (deleted, or made by a concurrent deploy_app that "
        "was refused); nothing was deployed.", argument="service_name", fix="call deploy_app again")


def _being_removed(project: str, name: str, since: datetime) -> Conflict:
    return Conflict(
        f"service {name!r} is being deleted (since {since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC); nothing was "
        "deployed.",
        argument="service_name",
        fix="wait for the deletion to finish, then call deploy_app again to make the service anew; if the deletion "
            f"was interrupted, call delete(project_name={project!r}, service_name={name!r}, confirm={name!r}) again "
            "first")


ProgressSink = Callable[[str], Awaitable[None]]
HISTORY_SHOWN = 12  # results stay small; the full history is in deployment_events
PLAN_CACHE_SIZE = 512
"""Build plans kept per (project mirror, commit, plan arguments), for providers that need no checkout here (a
redeploy of the same commit with other env then reads no files at all)."""

# --- redteam3: the control database every account shares kept whatever size a call or a repo gave a deployment's
# settings and plan: a deploy_app with a 1 MB start_command stored it twice (the service's settings and the
# deployment's plan) and failed a second later ("Argument list too long": the kernel takes at most 128 KiB for one
# argument, so it could never have run); each retry with another comment stored another MB, and deployments are
# never pruned. tests/security/test_redteam3_plan_size.py.
ARGUMENT_CHARS = {"build_command": 8192, "start_command": 8192, "repo_url": 4096, "ref": 1024, "static_dir": 1024,
                  "app_dir": 1024}
"""The longest value deploy_app takes for each of these arguments (characters)."""
MAX_PLAN_BYTES = 64 << 10
"""The largest build plan (as JSON) a deployment records: commands, processes and platform files' settings of the
repo together (a Procfile of thousands of processes, a render.yaml of megabytes of env defaults)."""


def check_argument_sizes(req: DeployRequest) -> None:
    """Refuse a deploy_app argument longer than ARGUMENT_CHARS says, before anything is fetched or written."""
    for name, cap in ARGUMENT_CHARS.items():
        value = getattr(req, name)
        if value is not None and len(value) > cap:
            raise InvalidArgument(f"{name} is {len(value):,} characters long; at most {cap:,} are accepted.",
                                  argument=name, fix=f"pass a shorter {name} (a long command belongs in a script "
                                  "in the repository)")


def check_plan_size(plan: BuildPlan) -> None:
    """Refuse a plan (what the repo's files and the arguments made of it) larger than MAX_PLAN_BYTES."""
    size = len(plan.model_dump_json())
    if size > MAX_PLAN_BYTES:
        raise BuildPlanError(f"the build plan this repository gives is {size:,} bytes (its commands, processes and "
                             f"platform files' settings); at most {MAX_PLAN_BYTES:,} are accepted.",
                             argument="repo_url", fix="shorten the commands and settings in inkmcp.yaml, Procfile, "
                             "package.json scripts or the platform files (a long command belongs in a script)")
# --- end


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo_url: str
    project_name: str | None = None
    service_name: str = "web"
    mode: Mode | None = None
    service_type: ServiceType | None = None
    ref: str | None = None
    build_command: str | None = None
    start_command: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    static_dir: str | None = None
    app_dir: str | None = None
    resources: Resources | None = None
    env_vars: dict[str, str | None] | None = None
    database: DatabaseRequest | None = None
    # --- issue 11 (github): redeploy on a push to the tracked GitHub branch; None keeps the service's choice (on)
    auto_deploy: bool | None = None
    # --- end


class ProcessNotService(NotFound):
    """A service name that is a process of service `service` (a Procfile's `worker:` inside `web`)."""

    def __init__(self, message: str, *, argument: str, fix: str, service: str) -> None:
        super().__init__(message, argument=argument, fix=fix)
        self.service = service


class ComputeUnavailable(ProviderError):
    """The compute platform is unavailable right now; the same call can succeed later. Nothing was changed."""

    code = "unavailable"


def unavailable(e: ProviderUnavailable, what: str) -> ComputeUnavailable:
    """The agent-facing error for a `ProviderUnavailable` raised while doing `what`."""
    after = f"about {max(1, round(e.retry_after))} s" if e.retry_after else "a minute"
    return ComputeUnavailable(
        f"the compute platform is unavailable ({e.reason}); {what} did not happen.",
        fix=f"call the same tool again in {after}",
    )


@dataclass(frozen=True)
class ProviderRetry:
    """How long a deployment waits out `ProviderUnavailable` before it fails (backoff between attempts).

    The window is bounded so an agent waiting on a deployment always gets an answer; a provider's
    `retry_after` (Coolify's Retry-After) is honoured when it fits in the window.
    """

    initial: float = 2.0
    maximum: float = 60.0
    window: float = 900.0

    def backoff(self, attempt: int) -> float:
        return float(min(self.maximum, self.initial * 2**attempt))


BUILD_TIME_ENV = re.compile(r"^(?:NEXT_PUBLIC_|VITE_|REACT_APP_|VUE_APP_|GATSBY_|EXPO_PUBLIC_|PUBLIC_)")
"""newuser6: env names frontend builds inline into the files they write (Next, Vite, Create React App, Vue CLI, Gatsby,
Expo, SvelteKit/Astro): a restart keeps the built files, so a new value needs a build."""


@dataclass
class EnvApplied:
    """What pushing new env to live services did, per service name (see `EnvOutcome`)."""

    restarted: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    next_start: list[str] = field(default_factory=list)
    rebuild: list[str] = field(default_factory=list)  # newuser6: static sites, which read env only in their build
    # newuser6: restarted services whose build reads a changed frontend variable (NEXT_PUBLIC_*, VITE_*: inlined)
    built_in: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


class _FirstReads:
    """A pipeline's first reads, started before its turn is known (`DeployService._run`): the deployment's rows
    with the service's older deployments (`_load_first`), and its service's env parts when the ids were known. `drop`
    cancels what is still running and swallows what failed (the attempt then reads for itself)."""

    def __init__(self, load: Awaitable[Any], env: Awaitable[Any] | None,
                 ids: tuple[uuid.UUID, uuid.UUID] | None) -> None:  # fmt: skip
        self.load: asyncio.Future[Any] = asyncio.ensure_future(load)
        self.env: asyncio.Future[Any] | None = asyncio.ensure_future(env) if env is not None else None
        self.ids = ids

    def matches(self, svc: Any, project: Any) -> bool:
        return self.env is not None and self.ids == (project.id, svc.id)

    def drop(self) -> None:
        for task in (self.load, self.env):
            if task is None:
                continue
            if not task.done():
                task.cancel()
            task.add_done_callback(lambda t: t.cancelled() or t.exception())


@dataclass(frozen=True)
class _Preread:
    """--- overhead8 (issue 8): a new deployment's pipeline's first reads, made by the transaction that created it
    (`_create_with_reads`), after its writes: what `_load_first` and `_env_parts` would read right after its commit
    (the service's lock was held until then, so no older deployment of the service can have been made meanwhile;
    one that ends meanwhile is read again by `_wait_turn`'s next look, as after `_load_first`)."""

    load: tuple[tuple[Deployment, Service, Project], list[tuple[uuid.UUID, None, bool]]]
    ids: tuple[uuid.UUID, uuid.UUID]
    env: tuple[dict[str, SecretStr], dict[str, SecretStr]]


def _first_of(rows: list[tuple[Any, ...]]) -> tuple[tuple[Deployment, Service, Project],
                                                      list[tuple[uuid.UUID, None, bool]]]:  # fmt: skip
    """`_LOAD_FIRST_SQL`'s row: the deployment, its service and project (detached models), and the service's older
    deployments not yet terminal as (id, claimed_by placeholder, abandoned)."""
    *columns, ids, gone = rows[0]
    values = iter(columns)
    dep, svc, project = (model(**{key: next(values) for key, _ in cols}) for model, cols in _LOAD_COLUMNS)
    return (dep, svc, project), [(i, None, g) for i, g in zip(ids or [], gone or [], strict=True)]  # type: ignore


def _done(value: Any) -> asyncio.Future[Any]:
    future = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


class DeployService:
    # --- issue 11 (github): inkmcp.github.deploy.GitHubDeployHooks, set by inkmcp.github.wiring.install; None: no
    # GitHub integration (repos are fetched as before)
    github: Any = None
    # --- end
    poll_seconds = 0.2
    """How often `wait` reads a deployment's record again when no write of this process woke it (another replica
    runs the deployment)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        projects: ProjectService,
        envs: EnvService,
        databases: DatabaseService,
        compute: ComputeProvider,
        work_dir: Path,
        sources: SourcePolicy,
        mac_key: bytes,
        metrics: Metrics,
        max_env_bytes: int,
        provider_retry: ProviderRetry | None = None,
        replica: LeaseConfig | None = None,
        retention: Retention | None = None,
    ) -> None:
        self._sessions = sessions
        self._retention = retention or Retention()  # finished deployments kept (core/retention.py)
        self._projects = projects
        self._envs = envs
        self._databases = databases
        self._compute = compute
        # Checkouts are staged where only InkMCP can reach them (the provider hands them to the tenant).
        self._checkouts = work_dir / "checkouts"
        self._private_checkouts()
        self._checkout_slots = CheckoutSlots()  # an account's undecided checkouts on this disk (checkout_slots.py)
        # Mirrors now live per project, fetched as its user; the old shared cache was world-readable.
        shutil.rmtree(work_dir / "git-cache", ignore_errors=True)
        self._sources = sources
        self._mac_key = mac_key
        self._metrics = metrics
        self._max_env_bytes = max_env_bytes
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry = provider_retry or ProviderRetry()
        self._leases = Leases(sessions, replica or LeaseConfig())
        self._held: dict[uuid.UUID, tuple[Lease, asyncio.Task[None]]] = {}  # pipelines this replica runs
        self._lost: set[uuid.UUID] = set()  # pipelines cancelled because their lease was taken over
        self._scanning = False  # takeover scans: from restore_all (serve), not in a bare DeployService
        self._maintainer: asyncio.Task[None] | None = None
        self._plans: OrderedDict[tuple[Any, ...], tuple[BuildPlan, ServiceType]] = OrderedDict()
        # Waiters on a deployment this replica runs are woken by its writes (`_changed`), not by a poll tick; the
        # poll stays for deployments another replica runs.
        self._changes: dict[uuid.UUID, asyncio.Future[None]] = {}
        self._waiting: dict[uuid.UUID, int] = {}

    def _private_checkouts(self) -> None:
        """work/ and work/checkouts: root 0700, so no tenant reaches a checkout before it is handed over."""
        for d in (self._checkouts.parent, self._checkouts):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)

    # ---------------------------------------------------------------- deploy
    async def deploy(self, p: Principal, req: DeployRequest) -> DeploymentView:
        project_name = req.project_name or project_name_from_repo(req.repo_url)
        check_name(project_name, "project_name")
        check_name(req.service_name, "service_name")
        check_argument_sizes(req)  # --- redteam3
        if req.env_vars:
            validate_env_payload(req.env_vars, self._max_env_bytes)
        if not req.repo_url.strip():
            raise InvalidArgument("repo_url is empty.", argument="repo_url", fix="pass a git URL or a local path")
        if req.database is not None:
            self._databases.check_request(req.database)
        # project name held by another account, or an account limit already reached: say so before any fetch
        prechecked = await self._projects.precheck_deploy(p, project_name, req.service_name)

        check_repo_url(req.repo_url, self._sources)  # no project for a URL that can never be fetched
        # --- issue 11 (github): a GitHub repo must be readable with the account's GitHub access (checked before
        # anything is created); a private one is fetched with the account's token (git's environment only)
        gh = await self.github.prepare(p.account_id, req.repo_url, req.ref, req.auto_deploy) if self.github else None
        if gh is None and req.auto_deploy:
            raise InvalidArgument("auto_deploy needs a GitHub repository and GitHub configured on this server.",
                                  argument="auto_deploy", fix="omit auto_deploy")
        # --- ghkeys (issue 11): a provider that clones itself (Coolify) gets a private repo through the service's
        # read-only deploy key (inkmcp/github/deploy_keys.py); refused here, naming the repo, when that cannot be
        keyed = gh is not None and gh.auth is not None and not self._compute.needs_checkout
        if keyed:
            await self.github.check_deploy_key(p.account_id, project_name, req.service_name, gh)
        # --- end
        plan_args = (req.service_name, req.service_type, req.build_command, req.start_command, req.port,
                     req.static_dir, req.app_dir)  # fmt: skip
        written: list[Path] = []

        def files_for(mirror: Path, sha: str) -> Path | None:
            """A provider that needs no checkout here gets the plan's files written by the fetch's own cat-file
            process (no archive and tar), unless the plan of that commit is known already."""
            if self._compute.needs_checkout or (str(mirror), sha, *plan_args) in self._plans:
                return None
            written.append(self._checkouts / uuid.uuid4().hex)
            return written[-1]

        auth = gh.auth if gh else None  # issue 11 (github): a private repo's token
        upserted: tuple[uuid.UUID, bool] | None = None
        if not self._compute.needs_checkout and req.database is None and self.github is None:
            project, created, fetched, upserted = await self._fetch_beside_records(
                p, req, project_name, prechecked, auth, files_for, written)
        else:
            project, created = await self._projects.ensure(p, project_name, repo_url=req.repo_url)
            try:
                workspace = await self._compute.source_workspace(str(project.id))
                fetched = await fetch_commit(req.repo_url, req.ref, workspace=workspace, policy=self._sources,
                                             auth=auth, files_for=files_for)
            except BaseException:
                _remove(written)
                if created:  # a typo in repo_url must not leave an empty project (and its user) behind
                    await self._drop_if_empty(project.id)
                raise
        commit = fetched.sha
        plan_key = (str(fetched.mirror), commit, *plan_args)
        # A plan is a function of the commit's files and these arguments: a provider that needs no checkout here
        # gets a known commit's plan without one.
        cached = None if self._compute.needs_checkout else self._plans.get(plan_key)
        checkout: Path | None = fetched.files
        if cached is not None and checkout is not None:  # planned meanwhile by another call
            _remove([checkout])
            checkout = None
        reading: asyncio.Task[None] | None = None
        give_back_slot: Callable[[], None] | None = None
        made = _Made(project.id, created, *(upserted or (None, False)))
        if cached is None and checkout is None:  # runs while the database work below does; dropped on a no-op
            try:
                give_back_slot = await self._checkout_slots.take(p.account_id)  # held until the call is decided
            except BaseException:  # cancelled while waiting for a slot: as if refused
                await self._undo_refused(made)
                raise
            checkout = self._checkouts / uuid.uuid4().hex
            reading = asyncio.ensure_future(checkout_fetched(fetched, checkout, policy=self._sources))

        async def plan_of() -> tuple[BuildPlan, ServiceType, Mode]:
            """The build plan, its service type and mode; refuses what the repo or the arguments get wrong."""
            nonlocal checkout
            if cached is not None:
                self._plans.move_to_end(plan_key)
                plan, service_type = cached[0].model_copy(deep=True), cached[1]
            else:
                assert checkout is not None
                if reading is not None:
                    await reading
                plan, service_type = derive_plan(
                    checkout,
                    service_name=req.service_name,
                    service_type=req.service_type,
                    build_command=req.build_command,
                    start_command=req.start_command,
                    port=req.port,
                    static_dir=req.static_dir,
                    app_dir=req.app_dir,
                )
                check_plan_size(plan)  # --- redteam3
                self._plans[plan_key] = (plan.model_copy(deep=True), service_type)
                while len(self._plans) > PLAN_CACHE_SIZE:
                    self._plans.popitem(last=False)
                if not self._compute.needs_checkout:  # read for the plan only: the provider fetches the source
                    shutil.rmtree(checkout, ignore_errors=True)
                    checkout = None
            return plan, service_type, resolve_mode(service_type, req.mode, plan)

        # Nothing below writes the service's settings or env vars before the deployment is created: they go in
        # _create_with_reads's transaction, with it. A call refused on the way leaves them as they were, and takes
        # back the service (and project) it made for itself (`_undo_refused`).
        try:
            planned: tuple[BuildPlan, ServiceType, Mode] | None = None
            db = None
            if req.database is not None:  # the plan first: a call refused for its plan makes no database
                planned = await plan_of()
                db = await self._databases.ensure(project.id, req.database)
            if created and made.new_service and made.service_id is not None and db is None:
                # a project this call created with this service, a moment ago, in one transaction: no env vars and
                # no add-ons yet, nothing to read (one round trip less). One set meanwhile by another call is as one
                # set just after the read would be (the same race as with the read): the release reads the env it
                # runs with, and update_env_vars retires the hash of a deployment on its way (core/platform.py).
                found, injected = (made.service_id, {}, {}), {}
            else:
                # both finished before either's error is raised: `made` then says all the first one made
                found, injected = await asyncio.gather(
                    self._service_and_env(project.id, req, prechecked, made), self._databases.env_for(project.id),
                    return_exceptions=True)
                for result in (found, injected):
                    if isinstance(result, BaseException):
                        raise result
            service_id, shared, own = found  # type: ignore[misc]
            settings = self._settings_of(req)
            # the env this deployment runs with: what is stored, with this call's changes on top
            env = _compose_env(injected, _overlay(shared, own, req.env_vars or {}))
            config_hash = self._config_hash(commit, settings, env)

            # Fast path without a lock; checked again under the service's lock when the deployment is created,
            # since another call (on this replica or another) may create the same one meanwhile.
            reusable = None if made.new_service else await self._reusable(service_id, config_hash)
            if reusable is not None:
                await _drop_checkout(reading, checkout)
                checkout = None
                await self._track(service_id, gh)
                return await self.view(p, reusable, reused=True)
            # --- issue 13 (credits): the retry-loop breaker (inkmcp/billing/breaker.py; app.py sets it when
            # INKMCP_PRICES is set): the same failing deployment repeated too often is refused before it builds
            breaker = getattr(self, "breaker", None)
            if breaker is not None:
                await breaker(service_id, config_hash, project_name, req.service_name)
            # --- end
            plan, service_type, mode = planned or await plan_of()
            if keyed:  # --- ghkeys (issue 11): the service's deploy key on GitHub and in Coolify (made or found)
                made.keyed = True
                try:
                    await self.github.ensure_deploy_key(p.account_id, service_id, gh,
                                                        f"{project_name}/{req.service_name}")
                except ProviderUnavailable as e:  # Coolify's key registration: a tool error, not a bare failure
                    raise unavailable(e, "deploy_app (setting up the repository's deploy key)") from None
            # --- end
            detail = _queued_detail(commit, _plan_hints(plan, env))
            # --- issue 11 (github): a redeploy made by a push says which push (deployment_triggers keeps it too)
            if self.github is not None:
                detail = self.github.queued_detail(detail)
            # --- end
            deployment_id, lease, first = await self._create_with_reads(
                service_id, commit, config_hash, plan, service_type, mode, detail=detail,
                write=self._write_of(req), project_id=project.id)  # fmt: skip
        except BaseException:  # refused (or failed) before a deployment was made: the checkout is nobody's now
            await _drop_checkout(reading, checkout)
            await self._undo_refused(made)
            raise
        finally:  # decided: a checkout that goes on to build counts against the builds limit from here on
            if give_back_slot is not None:
                give_back_slot()
        await self._track(service_id, gh)
        if lease is None:  # the same deployment was created meanwhile (by this replica or another)
            if checkout is not None:
                shutil.rmtree(checkout, ignore_errors=True)
            return await self.view(p, deployment_id, reused=True)
        # --- issue 11 (github)
        if self.github is not None:
            await self.github.record_trigger(deployment_id)
        # --- end
        log.info(
            "deployment queued",
            extra={"deployment": str(deployment_id), "project": project_name, "service": req.service_name,
                   "repo": redact_url(req.repo_url), "commit": commit[:12], "has_db": db is not None},
        )
        # The view of what was just written (nothing ran yet: the pipeline starts at the next await), without
        # reading it back.
        view = _render_view(deployment_id, project.name, req.service_name, Step.queued.value, None, commit, None,
                            [(Step.queued.value, detail)], reused=False)
        self._start(lease, checkout, (project.id, service_id), first)
        return view

    async def _track(self, service_id: uuid.UUID, gh: Any) -> None:
        """--- issue 11 (github): the repo/branch a push redeploys this service for, and its auto-deploy flag;
        recorded once the call is accepted (a refused call leaves the service's tracking as it was)."""
        if self.github is not None:
            await self.github.track(service_id, gh)

    async def _service_and_env(
        self, project_id: uuid.UUID, req: DeployRequest, prechecked: Prechecked, made: _Made
    ) -> tuple[uuid.UUID, dict[str, SecretStr], dict[str, SecretStr]]:
        """(the service's id, the project-wide env values, the service's own), the service made here (with this
        call's settings, no env) when the project has none of that name; `made` says whether this call made it.
        An existing service is only read: its settings and env change with the deployment (_create_with_reads)."""
        found: uuid.UUID | None = None
        shared: dict[str, SecretStr] = {}
        own: dict[str, SecretStr] = {}
        if made.service_id is not None or prechecked.service_exists:  # one statement: the id and the env values
            found, shared, own = await self._envs.resolve_named(project_id, req.service_name)
        if found is None:
            async with self._sessions.begin() as s:
                sid, new = await self._upsert_service_in(s, project_id, req, update=False)
            if new:
                made.service_id, made.new_service = sid, True
            found, shared, own = await self._envs.resolve_named(project_id, req.service_name)
            if found is None:
                raise _service_gone(req.service_name)
        if found != made.service_id:  # an existing service, or the one this call made was replaced meanwhile
            made.service_id, made.new_service = found, False
        return found, shared, own

    def _write_of(self, req: DeployRequest) -> ServiceWrite:
        shown_url, url_enc = self._projects.seal_repo_url(req.repo_url)
        keys, values, unset = self._envs.seal(req.env_vars or {})
        return ServiceWrite(shown_url, url_enc, req.ref, self._settings_of(req), keys, values, unset)

    async def _undo_refused(self, made: _Made) -> None:
        """After a refusal: the service this call made (and its deploy key), then the project this call made, go
        again, unless another call got further with them meanwhile (a deployment of the service, or another service
        in the project). Best effort: a failure here is logged and the refusal is what the agent sees."""
        try:
            if made.new_service and made.service_id is not None:
                if made.keyed and not await self._has_deployment(made.service_id):  # --- ghkeys (issue 11)
                    # the key first: if its removal fails, the service stays with the key's record, and deleting
                    # the service later removes both (dropping the row would forget a key left on GitHub)
                    await self.github.deploy_keys.remove(made.service_id)
                await self._drop_new_service(made.project_id, made.service_id)
            if made.created_project and await self._drop_if_empty(made.project_id) \
                    and not self._compute.needs_checkout:  # its workspace is InkMCP's own directory
                workspace = await self._compute.source_workspace(str(made.project_id))
                _remove([workspace.mirrors_dir, workspace.locks_dir])
        except Exception:
            log.exception("could not take back what a refused deploy_app made",
                          extra={"project": str(made.project_id), "service": str(made.service_id)})

    async def _has_deployment(self, service_id: uuid.UUID) -> bool:
        async with self._sessions() as s:
            return (await s.execute(
                select(Deployment.id).where(Deployment.service_id == service_id).limit(1))).first() is not None

    async def _fetch_beside_records(
        self, p: Principal, req: DeployRequest, project_name: str, prechecked: Prechecked, auth: Any,
        files_for: Callable[[Path, str], Path | None], written: list[Path],
    ) -> tuple[Project, bool, FetchedCommit, tuple[uuid.UUID, bool] | None]:
        """The fetch (and the plan's files) while the project and a new service are recorded: deploy_app waits for
        the longer of the two instead of their sum (issue 12 item 4). For a provider whose workspace is InkMCP's own
        directory (no tenant user is made for it), so fetching into the workspace of a project that is only being
        created costs nothing to undo. A new project gets the id its workspace was named for; an existing
        service is not written here (its settings and env change with its deployment), and a new one
        this call recorded goes again if the fetch fails, with a project this call created (as before: a typo in
        repo_url leaves nothing behind). Returns (project, created, fetched, (service id, new) or None)."""
        proposed = prechecked.project_id or uuid.uuid4()
        workspace = await self._compute.source_workspace(str(proposed))
        fetching = asyncio.ensure_future(fetch_commit(req.repo_url, req.ref, workspace=workspace,
                                                      policy=self._sources, auth=auth, files_for=files_for))

        async def new_service(s: AsyncSession, project: Project) -> tuple[uuid.UUID, bool] | None:
            if project.id != proposed or prechecked.service_exists:
                return None  # an existing service is only read, once its source is fetched
            # no env, and a service made meanwhile by another call is left as it is: both go with the deployment
            return await self._upsert_service_in(s, project.id, req, update=False)

        upserted: tuple[uuid.UUID, bool] | None = None
        try:
            # a new project and its first service: one round trip when nothing stands in the way; else (name
            # taken meanwhile, a limit, the account gone) ProjectService's transaction, which says why
            fast = None if prechecked.project_id is not None else \
                await self._new_project_and_service(p, project_name, req, proposed)
            if fast is not None:
                project, created, upserted = fast
            else:
                # an id that was never a project's (never that of a project deleted meanwhile: Coolify may still
                # hold an application named after it); the project and a new service in one transaction
                project, created, upserted = await self._projects.ensure_with(
                    p, project_name, req.repo_url, proposed if prechecked.project_id is None else None, new_service)
        except BaseException:
            await _drop_fetch(fetching, written)
            if prechecked.project_id is None and not await self._project_exists(proposed):
                _remove([workspace.mirrors_dir, workspace.locks_dir])
            raise
        try:
            if project.id != proposed:  # made by another call meanwhile: fetch into that project's workspace
                await _drop_fetch(fetching, written)
                if prechecked.project_id is None:
                    _remove([workspace.mirrors_dir, workspace.locks_dir])
                workspace = await self._compute.source_workspace(str(project.id))
                fetched = await fetch_commit(req.repo_url, req.ref, workspace=workspace, policy=self._sources,
                                             auth=auth, files_for=files_for)
            else:
                fetched = await fetching
        except BaseException:
            await _drop_fetch(fetching, written)
            if upserted is not None and upserted[1]:
                await self._drop_new_service(project.id, upserted[0])
            if created:  # a typo in repo_url must not leave an empty project behind, nor its workspace
                await self._drop_if_empty(project.id)
                if not await self._project_exists(project.id):
                    _remove([workspace.mirrors_dir, workspace.locks_dir])
            raise
        return project, created, fetched, upserted

    async def _new_project_and_service(
        self, p: Principal, project_name: str, req: DeployRequest, project_id: uuid.UUID
    ) -> tuple[Project, bool, tuple[uuid.UUID, bool]] | None:
        """ProjectService.ensure_with making a new project with `new_service`'s service, as one transaction of two
        statements sent at once (issue 8 overhead: was ~11 ORM round trips beside the fetch): the account's row
        lock, then _NEW_PROJECT_SQL. None when it inserted nothing (the name is taken, by this account or another;
        a limit; the account gone): the caller then takes ensure_with's path, which decides and says why, exactly as
        before. Same locks, same limits, same rows as that path's insert of a new project and service."""
        shown_url, url_enc = self._projects.seal_repo_url(req.repo_url)  # credentials only encrypted
        limits = self._projects.limits
        service_id = uuid.uuid4()
        params = {"account": p.account_id, "max_projects": limits.max_projects,
                  "max_services": limits.max_services_per_project, "project": project_id, "name": project_name,
                  "shown": redact_url(req.repo_url), "service": service_id, "service_name": req.service_name,
                  "type": (req.service_type or ServiceType.webapp).value, "mode": (req.mode or Mode.persistent).value,
                  "repo_url": shown_url, "repo_url_enc": url_enc, "ref": req.ref,
                  "settings": Jsonb(self._settings_of(req))}  # fmt: skip
        results = await statement_pool(self._sessions).transaction([
            ("SELECT id FROM accounts WHERE id = %s FOR NO KEY UPDATE", (p.account_id,)),
            (_NEW_PROJECT_SQL, params),
        ])  # fmt: skip
        if results[1][0][0] is None:
            return None
        project = Project(id=project_id, account_id=p.account_id, name=project_name, repo_url=params["shown"])
        return project, True, (service_id, True)

    async def _project_exists(self, project_id: uuid.UUID) -> bool:
        async with self._sessions() as s:
            return (await s.execute(select(Project.id).where(Project.id == project_id))).first() is not None

    async def _drop_new_service(self, project_id: uuid.UUID, service_id: uuid.UUID) -> bool:
        """Undo a service this call recorded, unless a deployment of it exists meanwhile (another call got further
        with it). Under the service's lock, as _create_with_reads takes it: a concurrent call's deployment is either
        made first (the service stays) or finds the service gone (`_service_gone`: it says to call again)."""
        async with self._sessions.begin() as s:
            await lock_service(s, service_id)
            gone = (await s.execute(
                delete(Service).where(Service.id == service_id)
                .where(~select(Deployment.id).where(Deployment.service_id == service_id).exists())
                .returning(Service.id)
            )).first()  # fmt: skip
            if gone is not None:  # values of a service recorded by older code (with its env); none now
                await s.execute(delete(EnvVar).where(EnvVar.project_id == project_id,
                                                     EnvVar.scope == str(service_id)))
        return gone is not None

    async def _drop_if_empty(self, project_id: uuid.UUID) -> bool:
        """Undo a project this call created, unless something (another call) attached to it meanwhile. True if it
        went."""
        async with self._sessions.begin() as s:
            # The project row first, FOR UPDATE: a service another call is inserting holds FOR KEY SHARE on it (its
            # foreign key) until that call commits, so this waits for it, and the DELETE below (a statement of its
            # own: a new snapshot) sees its service. Without it the DELETE's NOT EXISTS read its older snapshot, the
            # delete went on once the insert committed, and the cascade took the other call's new service with it
            # (that call then said "the account no longer exists": CI run 63, a burst of deploys into two projects).
            await s.execute(select(Project.id).where(Project.id == project_id).with_for_update())
            gone = (
                await s.execute(
                    delete(Project)
                    .where(Project.id == project_id)
                    .where(~select(Service.id).where(Service.project_id == project_id).exists())
                    .returning(Project.id, Project.provider_ref)
                )
            ).first()
        if gone is not None:
            await self._compute.remove_project(str(project_id), ref_of(gone[1], self._compute.name))
        return gone is not None

    def _settings_of(self, req: DeployRequest) -> dict[str, Any]:
        return {
            "mode": req.mode.value if req.mode else None,
            "service_type": req.service_type.value if req.service_type else None,
            "ref": req.ref,
            "build_command": req.build_command,
            "start_command": req.start_command,
            "port": req.port,
            "resources": req.resources.model_dump() if req.resources else None,
            # only when given: settings (and so the config hash of every earlier deployment) stay as they were
            **{k: v for k, v in (("static_dir", req.static_dir), ("app_dir", req.app_dir)) if v is not None},
        }

    def env_revision(self, env: Mapping[str, SecretStr]) -> str:
        """A keyed hash of env values: providers report it back, so core can tell when a queued env change
        has reached the running processes without anyone storing or comparing the values themselves."""
        payload = json.dumps({k: v.get_secret_value() for k, v in env.items()}, sort_keys=True)
        return hmac.new(self._mac_key, b"env:" + payload.encode(), hashlib.sha256).hexdigest()[:32]

    def _config_hash(self, commit: str, settings: dict[str, Any], env: dict[str, SecretStr]) -> str:
        payload = json.dumps(
            {"commit": commit, "settings": settings, "env": {k: v.get_secret_value() for k, v in env.items()}},
            sort_keys=True,
        )
        # keyed, so the stored hash reveals nothing about env values
        return hmac.new(self._mac_key, payload.encode(), hashlib.sha256).hexdigest()

    async def _ensure_service(self, project_id: uuid.UUID, req: DeployRequest) -> uuid.UUID:
        return (await self._upsert_service(project_id, req))[0]

    async def _upsert_service(
        self, project_id: uuid.UUID, req: DeployRequest, *, with_env: bool = False
    ) -> tuple[uuid.UUID, bool]:
        """The service row (created, or updated with this request's settings) and whether it was created; with
        `with_env`, the request's env vars stored in the same transaction."""
        async with self._sessions.begin() as s:
            return await self._upsert_service_in(s, project_id, req, with_env=with_env)

    async def _upsert_service_in(
        self, s: AsyncSession, project_id: uuid.UUID, req: DeployRequest, *, with_env: bool = False,
        update: bool = True,
    ) -> tuple[uuid.UUID, bool]:
        """`_upsert_service` in the caller's transaction. `update=False`: an existing service is left as it is
        (deploy_app: its settings change only with the deployment they belong to, `_create_with_reads`)."""
        shown_url, url_enc = self._projects.seal_repo_url(req.repo_url)  # credentials only encrypted
        await self._projects.check_service_quota(s, project_id, req.service_name)
        created = (await s.execute(
            insert(Service)
            .values(
                id=uuid.uuid4(),
                project_id=project_id,
                name=req.service_name,
                service_type=(req.service_type or ServiceType.webapp).value,
                mode=(req.mode or Mode.persistent).value,
                repo_url=shown_url,
                repo_url_enc=url_enc,
                ref=req.ref,
                settings=self._settings_of(req),
            )
            .on_conflict_do_nothing(constraint="uq_services_project_name")
            .returning(Service.id)
        )).scalar()  # fmt: skip
        if created is not None:  # inserted with exactly these values
            service_id = created
        elif not update:
            service_id = (await s.execute(select(Service.id).where(
                Service.project_id == project_id, Service.name == req.service_name))).scalar_one()
        else:
            svc = (
                await s.execute(
                    select(Service).where(Service.project_id == project_id, Service.name == req.service_name)
                )
            ).scalar_one()
            svc.repo_url = shown_url
            svc.repo_url_enc = url_enc
            svc.ref = req.ref
            svc.settings = self._settings_of(req)
            service_id = svc.id
        if with_env and req.env_vars:
            await self._envs.apply(s, project_id, str(service_id), req.env_vars)
        return service_id, created is not None

    async def effective_env(self, project_id: uuid.UUID, service_id: uuid.UUID) -> dict[str, SecretStr]:
        """What the agent and the add-ons set for the service: the add-ons' variables (DATABASE_URL, ...), then
        project-wide, then service values (so a value the agent set wins over an injected one). Its keyed hash is
        the env revision; a release adds its plan's repo defaults and links on top (`_env_of`)."""
        return _compose_env(*await self._env_parts(project_id, service_id))

    async def secrets_of(self, project_id: uuid.UUID, service_id: uuid.UUID) -> list[str]:
        """The values output shown to agents hides (get_logs, a failure's reason): the service's env values that
        are not configuration words, and its add-ons' passwords and URLs (bare too: an app may print either)."""
        env = await self.effective_env(project_id, service_id)
        secrets = secret_values((k, v.get_secret_value()) for k, v in env.items() if k not in NOT_SECRET)  # PGHOST
        for db in (await self._databases.addons(project_id)).values():
            secrets += [db.password.get_secret_value(), db.url.get_secret_value()]
        return secrets

    async def _env_parts(
        self, project_id: uuid.UUID, service_id: uuid.UUID
    ) -> tuple[dict[str, SecretStr], dict[str, SecretStr]]:
        """(the add-ons' variables, the agent's values): two independent reads, side by side."""
        injected, values = await asyncio.gather(
            self._databases.env_for(project_id), self._envs.resolve(project_id, service_id)
        )
        return injected, values

    async def _env_of(
        self, project_id: uuid.UUID, service_id: uuid.UUID, plan: BuildPlan | None
    ) -> tuple[dict[str, SecretStr], str]:
        """The env a release of `plan` runs with, and its revision (that of `effective_env`: the repo's defaults
        and links are a function of the commit and of the add-ons' values, so they never make it stale)."""
        injected, values = await self._env_parts(project_id, service_id)
        return _compose_env(injected, values, plan), self.env_revision(_compose_env(injected, values))

    async def _reusable(self, service_id: uuid.UUID, config_hash: str) -> uuid.UUID | None:
        async with self._sessions() as s:
            return await self._reusable_in(s, service_id, config_hash)

    @staticmethod
    async def _reusable_in(s: AsyncSession, service_id: uuid.UUID, config_hash: str) -> uuid.UUID | None:
        """A deployment of the same commit, settings and env that is live or on its way (keyed hash: the MAC
        key is shared by every replica, so a repeat on another replica finds it too). None for a service being
        deleted (remove_service's mark): the call goes on to _create_with_reads, which says so."""
        row = (await s.execute(_REUSABLE_SQL, {"service": service_id, "hash": config_hash})).first()
        return None if row is None else _reusable_of(*row)


    async def _create_deployment(
        self,
        service_id: uuid.UUID,
        commit: str,
        config_hash: str,
        plan: BuildPlan,
        service_type: ServiceType,
        mode: Mode,
    ) -> uuid.UUID:
        """A new queued deployment claimed by this replica (no pipeline started; tests use it as a row)."""
        dep_id, _ = await self._create_or_reuse(service_id, commit, config_hash, plan, service_type, mode, reuse=False)
        return dep_id

    async def _create_or_reuse(
        self,
        service_id: uuid.UUID,
        commit: str,
        config_hash: str,
        plan: BuildPlan,
        service_type: ServiceType,
        mode: Mode,
        *,
        reuse: bool = True,
        detail: str | None = None,
        write: ServiceWrite | None = None,
    ) -> tuple[uuid.UUID, Lease | None]:
        """`_create_with_reads` without the pipeline's first reads (for callers that start no pipeline here)."""
        dep_id, lease, _ = await self._create_with_reads(service_id, commit, config_hash, plan, service_type, mode,
                                                         reuse=reuse, detail=detail, write=write)
        return dep_id, lease

    async def _create_with_reads(
        self,
        service_id: uuid.UUID,
        commit: str,
        config_hash: str,
        plan: BuildPlan,
        service_type: ServiceType,
        mode: Mode,
        *,
        reuse: bool = True,
        detail: str | None = None,
        write: ServiceWrite | None = None,
        project_id: uuid.UUID | None = None,
    ) -> tuple[uuid.UUID, Lease | None, _Preread | None]:
        """Under the service's advisory lock (every replica): the reusable deployment and no lease, or a new
        deployment claimed by this replica in the same transaction, and its lease; with `write`, the call's
        settings and env vars written in the same statement as the deployment (nothing when none is made). With
        `project_id` (the service's project), a new deployment's pipeline's first reads
        too (--- overhead8, issue 8: `_Preread`), as statements of the same transaction after the writes: no
        round trip (and no three pool connections) between deploy_app's answer and the release."""
        dep_id = uuid.uuid4()
        lease = Lease(dep_id, self._leases.me, 1)  # as Leases.new_claim: inserted claimed, epoch 1
        # One transaction of three statements sent at once with its BEGIN and COMMIT (one round trip; were five
        # statements in an ORM transaction): the service's advisory lock; the account row lock (core.limits: FOR NO
        # KEY UPDATE); then, on a snapshot taken after both were granted, the reusable deployment, the account's
        # builds in progress, and only if nothing is reusable and the limit is not reached, the service's type
        # and mode, the deployment (claimed by this replica) and its first event (_NEW_DEPLOYMENT_SQL).
        params = {"service": service_id, "hash": config_hash, "reuse": reuse, "terminal": sorted(TERMINAL),
                  "default_max": self._projects.limits.max_concurrent_builds, "type": service_type.value,
                  "mode": mode.value, "dep": dep_id, "status": Step.queued.value, "commit": commit,
                  "plan": Jsonb(plan.model_dump(mode="json")), "me": self._leases.me,
                  "lease_seconds": float(self._leases.config.lease_seconds),
                  "detail": detail or _queued_detail(commit), "write": write is not None, "scope": str(service_id),
                  "repo_url": write and write.repo_url, "repo_url_enc": write and write.repo_url_enc,
                  "ref": write and write.ref, "settings": Jsonb(write.settings) if write else None,
                  "set_keys": write.set_keys if write else [], "set_values": write.set_values if write else [],
                  "unset_keys": write.unset_keys if write else [], "max_env_keys": MAX_PROJECT_KEYS,
                  "max_env_bytes": MAX_PROJECT_STORED_BYTES}  # fmt: skip
        statements: list[tuple[str, Any]] = [
            ("SELECT pg_advisory_xact_lock(%s, %s)", (SERVICE_LOCK_CLASS, service_lock_key(service_id))),
            (_LOCK_OWNER_SQL, (service_id,)),
            (_NEW_DEPLOYMENT_SQL, params),
        ]  # fmt: skip
        if project_id is not None:  # --- overhead8: what `_run` reads first (nothing when no deployment was made)
            statements += [(_LOAD_FIRST_SQL, (sorted(TERMINAL), dep_id)),
                           self._envs.resolve_statement(project_id, service_id),
                           self._databases.env_statement(project_id)]
        results = await statement_pool(self._sessions).transaction(statements)
        reused, inserted, builds, max_builds, name, removing, project_name, env_fits, env_n, env_b = results[2][0]
        if max_builds is None:  # no service row (and so no owner row locked): removed meanwhile
            raise _service_gone()
        if removing is not None:  # remove_service's mark: nothing was written
            raise _being_removed(project_name, name, removing)
        if not results[1]:
            raise NotFound("the account no longer exists.", argument="account",
                           fix="ask the operator for a new key")  # as ProjectService.check_build_quota says
        if reused is not None:
            return reused, None, None
        if inserted is None and env_fits is False:  # the project's env totals: nothing was written
            raise project_totals_error(env_n, env_b)
        if inserted is None:  # the limit is reached: nothing was written (LimitReached, ProjectService's message)
            _refuse_more_builds(SimpleNamespace(max_concurrent_builds=max_builds), builds)  # type: ignore[arg-type]
            raise AssertionError(f"no deployment inserted with {builds} of {max_builds} builds running")
        if project_id is None or not results[3]:
            return dep_id, lease, None
        return dep_id, lease, _Preread(_first_of(results[3]), (project_id, service_id),
                                       (self._databases.env_from(results[5]), self._envs.resolved(results[4])))

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -------------------------------------------------------------- replicas
    def _start(self, lease: Lease, checkout: Path | None,
               ids: tuple[uuid.UUID, uuid.UUID] | None = None, preread: _Preread | None = None) -> None:  # fmt: skip
        """Run the pipeline of a deployment whose lease this replica holds; keep the lease alive meanwhile.
        `ids`: its (project, service), when the caller knows them (the pipeline reads their env at once);
        `preread`: its first reads, read by the transaction that created it."""
        task = self._spawn(self._run(lease, checkout, ids, preread))
        self._held[lease.deployment_id] = (lease, task)
        self._maintain()

    def _maintain(self) -> None:
        if self._maintainer is None or self._maintainer.done():
            self._maintainer = asyncio.ensure_future(self._maintenance())

    async def _maintenance(self) -> None:
        """Heartbeat (renew held leases, stop pipelines whose lease was taken) and, when scanning, takeovers.

        Runs while this replica holds a lease or scans; a failed round (database unreachable) is logged and
        retried at the next tick: the leases expire if it stays down, which is what they are for.
        """
        cfg = self._leases.config
        next_scan = 0.0
        next_prune = time.monotonic() + min(60.0, self._retention.every_seconds)  # not in start-up's rush
        while self._held or self._scanning:
            try:
                held = {dep_id: lease for dep_id, (lease, _) in self._held.items()}
                kept = await self._leases.renew(held.values())
                for dep_id, lease in held.items():
                    entry = self._held.get(dep_id)
                    if dep_id not in kept and entry is not None and entry[0] == lease and not entry[1].done():
                        log.warning("lease lost: another replica took the deployment over; stopping its pipeline",
                                    extra={"deployment": str(dep_id), "epoch": lease.epoch})  # fmt: skip
                        self._lost.add(dep_id)
                        entry[1].cancel()
                if self._scanning and time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + cfg.scan_seconds
                    await self._take_over(await self._leases.claim_abandoned())
                if self._scanning and time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self._retention.every_seconds
                    if pruned := await self._retention.prune(self._sessions):
                        log.info("old deployments pruned", extra={"deleted": pruned, "kept": self._retention.keep,
                                                                  "days": self._retention.days})  # fmt: skip
            except Exception:
                log.exception("lease maintenance failed; retrying")
            await asyncio.sleep(min(cfg.heartbeat_seconds, cfg.scan_seconds))  # a period, not a synchronisation

    async def _take_over(self, leases: list[Lease]) -> None:
        for lease in leases:
            if lease.taken_from is not None:
                detail = f"taken over by replica {lease.replica_id} (the lease of {lease.taken_from} expired)"
            else:
                detail = "resumed after restart"
            try:
                await self._record(lease, Step.queued, detail)
            except LeaseLost:
                continue
            log.info("deployment claimed", extra={"deployment": str(lease.deployment_id), "detail": detail})
            self._start(lease, None)

    async def _wait_turn(self, lease: Lease, first: _FirstReads | None = None) -> bool:
        """Releases of one service run one at a time, oldest first, whichever replica runs them: wait until
        every older deployment of this service is terminal. An older one nobody runs (unclaimed or expired
        lease) is taken over here rather than waited for. True if there was an older one. `first`: the pipeline's
        first reads, whose statement also read the older deployments (`_LOAD_FIRST_SQL`): the first look uses them
        (if that read failed, the look reads them itself, and the attempt meets the failure when it reads again)."""
        announced = False
        watched: set[uuid.UUID] = set()
        waited = False
        try:
            while True:
                older = None
                if first is not None:
                    reads, first = first, None
                    with contextlib.suppress(Exception):
                        older = (await reads.load)[1]
                if older is None:
                    # one prepared statement on the statement pool (store.statements): it runs per deployment and tick
                    older = await statement_pool(self._sessions).fetch(_OLDER_SQL,
                                                                       (lease.deployment_id, sorted(TERMINAL)))
                if not older:
                    return waited
                waited = True
                for dep_id, _, abandoned in older:
                    if abandoned and dep_id not in self._held:
                        taken = await self._leases.claim(dep_id)
                        if taken is not None:
                            await self._take_over([taken])
                if not announced:
                    announced = True
                    await self._record(lease, Step.queued, "waiting for the previous deployment of this service")
                # an older one this replica runs wakes us with its last write; another replica's is polled
                for dep_id, _, _ in older:
                    if dep_id not in watched:
                        watched.add(dep_id)
                        self._waiting[dep_id] = self._waiting.get(dep_id, 0) + 1
                await asyncio.wait([self._change_of(dep_id) for dep_id, _, _ in older], timeout=self.poll_seconds)
        finally:
            self._unwatch(watched)

    # -------------------------------------------------------------- pipeline
    async def _record(self, lease: Lease, status: Step | str, detail: str = "") -> None:
        """Record a step of the pipeline holding `lease` (fenced: raises LeaseLost if it is no longer ours).
        `failed` also stores `detail` as the error and ends the lease."""
        status = status.value if isinstance(status, Step) else status
        params = {"dep": lease.deployment_id, "me": lease.replica_id, "epoch": lease.epoch, "status": status,
                  "now": datetime.now(UTC), "detail": detail[:4000]}  # fmt: skip
        sql = _FAILED_SQL if status == Step.failed.value else _STEP_SQL
        if not await statement_pool(self._sessions).write(sql, params):
            raise LeaseLost(lease)
        self._changed(lease.deployment_id)

    async def _record_live(self, lease: Lease, url: str | None) -> None:
        """One fenced statement (_LIVE_SQL): supersede the service's previous live deployment, record this one live
        with its URL and event, point the service at it. A waiter never sees `live` before the URL is stored."""
        written = await statement_pool(self._sessions).write(_LIVE_SQL, {
            "dep": lease.deployment_id, "me": lease.replica_id, "epoch": lease.epoch, "url": url,
            "now": datetime.now(UTC), "detail": url or "running (no route)"})  # fmt: skip
        if not written:
            raise LeaseLost(lease)
        self._changed(lease.deployment_id)

    def _changed(self, dep_id: uuid.UUID) -> None:
        """A write of `dep_id` committed: wake whoever waits on it in this process."""
        change = self._changes.pop(dep_id, None)
        if change is not None and not change.done():
            change.set_result(None)

    async def _load_first(self, dep_id: uuid.UUID) -> tuple[tuple[Deployment, Service, Project],
                                                            list[tuple[uuid.UUID, None, bool]]]:
        """`_load` and the service's older deployments not yet terminal (`_wait_turn`'s rows) in one statement."""
        rows = await statement_pool(self._sessions).fetch(_LOAD_FIRST_SQL, (sorted(TERMINAL), dep_id))
        if not rows:
            raise NotFound(f"no deployment {dep_id}.", argument="deployment_id", fix="deploy again")
        return _first_of(rows)

    async def _load(self, dep_id: uuid.UUID) -> tuple[Deployment, Service, Project]:
        """The deployment, its service and project as they are now (each attempt of a release reads them again:
        the refs the previous one recorded). One prepared statement on the statement pool (every release reads
        it); the rows come back as detached model objects, read only."""
        rows = await statement_pool(self._sessions).fetch(_LOAD_SQL, (dep_id,))
        if not rows:
            raise NotFound(f"no deployment {dep_id}.", argument="deployment_id", fix="deploy again")
        values = iter(rows[0])
        dep, svc, project = (model(**{key: next(values) for key, _ in columns})
                             for model, columns in _LOAD_COLUMNS)  # fmt: skip
        return dep, svc, project  # type: ignore[return-value]

    def key_of(self, svc: Service, project: Project) -> ServiceKey:
        """The provider's view of a service: ids, names and the refs it recorded (from these rows)."""
        name = self._compute.name
        return ServiceKey(
            account_id=str(project.account_id),
            project_id=str(project.id),
            service_id=str(svc.id),
            project_name=project.name,
            service_name=svc.name,
            project_ref=ref_of(project.provider_ref, name),
            service_ref=ref_of(svc.provider_ref, name),
        )

    async def _release_spec(self, dep: Deployment, svc: Service, project: Project,
                            env_parts: tuple[dict[str, SecretStr], dict[str, SecretStr]] | None = None,
                            ) -> ReleaseSpec:  # fmt: skip
        """`env_parts`: `_env_parts` of this service, read already (the pipeline's first attempt)."""
        resources = svc.settings.get("resources") if svc.settings else None
        plan = BuildPlan.model_validate(dep.plan)
        if env_parts is not None:
            injected, values = env_parts
            env, revision = _compose_env(injected, values, plan), self.env_revision(_compose_env(injected, values))
        else:
            env, revision = await self._env_of(project.id, svc.id, plan)
        return ReleaseSpec(
            deployment_id=str(dep.id),
            key=self.key_of(svc, project),
            service_type=ServiceType(svc.service_type),
            mode=Mode(svc.mode),
            plan=plan,
            commit=dep.commit or "",
            env=env,
            env_revision=revision,
            resources=Resources.model_validate(resources) if resources else Resources(),
        )

    async def _release_request(
        self, dep: Deployment, svc: Service, project: Project, checkout: Path | None,
        env_parts: tuple[dict[str, SecretStr], dict[str, SecretStr]] | None = None,
    ) -> ReleaseRequest:
        spec = await self._release_spec(dep, svc, project, env_parts)
        return ReleaseRequest(
            **dict(spec),
            repo_url=SecretStr(self._projects.fetch_url(svc)),
            checkout_dir=checkout,
            deployment_ref=ref_of(dep.provider_ref, self._compute.name),
        )

    def _recorder(
        self, dep_id: uuid.UUID, svc_id: uuid.UUID, project_id: uuid.UUID, lease: Lease | None = None
    ) -> Any:
        """The `record` callback of one release: provider refs go to the rows of this deployment, its service
        and its project, committed before the provider's next step. Inside a pipeline (`lease`) each write is
        fenced: a replica that lost the lease stops here, before the remote step the ref guards."""
        rows = {RefScope.project: project_id, RefScope.service: svc_id, RefScope.deployment: dep_id}

        async def record(scope: RefScope, ref: ProviderRef) -> None:
            scope = RefScope(scope)
            if lease is None:
                await save_ref(self._sessions, scope.value, rows[scope], self._compute.name, ref)
                return
            # store.refs.save_ref's update, fenced, as one statement (_REF_SQL)
            params = {"dep": lease.deployment_id, "me": lease.replica_id, "epoch": lease.epoch,
                      "provider": self._compute.name, "ref": check_ref(ref), "row": rows[scope]}  # fmt: skip
            fenced = await statement_pool(self._sessions).write(_REF_SQL_BY_SCOPE[scope.value], params)
            if not fenced[0][0]:
                raise LeaseLost(lease)

        async def many(refs: Mapping[RefScope, ProviderRef],
                       step: tuple[Step, str] | list[tuple[Step, str]] | None = None) -> None:
            """Several scopes' refs, committed together (one fenced statement in a pipeline); with `step`, a
            non-terminal step of the pipeline (status and event, as `progress` records it) in the same statement, or
            several in order (--- overhead9: an event each, the last one's status)."""
            if lease is None:
                for scope, ref in refs.items():
                    await record(scope, ref)
                return
            texts = {RefScope(scope).value: check_ref(ref) for scope, ref in refs.items()}
            params: dict[str, Any] = {
                "dep": lease.deployment_id, "me": lease.replica_id, "epoch": lease.epoch,
                "provider": self._compute.name, "project": texts.get("project"), "project_row": project_id,
                "service": texts.get("service"), "service_row": svc_id, "deployment": texts.get("deployment")}
            steps = [step] if isinstance(step, tuple) else list(step or [])
            if steps:
                for status, _ in steps:
                    if Step(status) in (Step.live, Step.failed):  # core's to record, with the URL or the error
                        raise ValueError(f"a provider does not record the {Step(status).value} step")
                params.update(status=Step(steps[-1][0]).value, statuses=[Step(st).value for st, _ in steps],
                              details=[detail[:4000] for _, detail in steps], now=datetime.now(UTC))
            fenced = await statement_pool(self._sessions).write(_REFS_SQL if not steps else _REFS_STEP_SQL, params)
            if not fenced[0][0]:
                raise LeaseLost(lease)
            if steps:
                self._changed(lease.deployment_id)

        async def claim_project(ref: ProviderRef) -> tuple[bool, dict[str, Any]]:
            """(True, ref) when `ref` was written as the project's (fenced) because the stored one records no remote
            project and no create of one (_CLAIM_PROJECT_SQL); else (False, the stored ref as it is now)."""
            assert lease is not None
            params = {"dep": lease.deployment_id, "me": lease.replica_id, "epoch": lease.epoch,
                      "provider": self._compute.name, "ref": check_ref(ref), "row": project_id}  # fmt: skip
            fenced, won = (await statement_pool(self._sessions).write(_CLAIM_PROJECT_SQL, params))[0]
            if not fenced:
                raise LeaseLost(lease)
            if won:
                return True, dict(ref)
            rows = await statement_pool(self._sessions).fetch(_PROJECT_REF_SQL, (self._compute.name, project_id))
            return False, dict(rows[0][0] or {}) if rows else {}

        record.many = many  # type: ignore[attr-defined]
        record.with_steps = lease is not None  # type: ignore[attr-defined]
        if lease is not None:  # --- overhead6: a claim is fenced; outside a pipeline the provider looks first
            record.claim_project = claim_project  # type: ignore[attr-defined]
        return record

    async def _run(self, lease: Lease, checkout: Path | None, ids: tuple[uuid.UUID, uuid.UUID] | None = None,
                   preread: _Preread | None = None) -> None:  # fmt: skip
        started = time.monotonic()
        dep_id = lease.deployment_id
        outcome = "failed"
        # the first attempt's reads (its rows; its env when the ids are known) go out beside the check for an
        # older deployment of the service: three reads in one round trip's time instead of three in turn; used
        # only when there was nothing older to wait for (else read again after the wait, as every attempt does).
        # --- overhead8: read already by the transaction that created the deployment (`preread`), when it did
        if preread is not None:
            first: _FirstReads | None = _FirstReads(_done(preread.load), _done(preread.env), preread.ids)
        else:
            first = _FirstReads(self._load_first(dep_id), self._env_parts(*ids) if ids else None, ids)
        try:
            if await self._wait_turn(lease, first):  # read again after the wait, as every attempt does
                first.drop()
                first = None
            result = await self._release_with_retries(lease, checkout, first)
            await self._record_live(lease, result.url)
            outcome = "live"
        except LeaseLost:
            outcome = "lost"
        except ReleaseFailed as e:
            outcome = await self._fail(lease, f"{e.step.value}: {e.reason}")
        except ProviderRefused as e:
            outcome = await self._fail(lease, f"the compute platform refused the deployment: {e.reason}. This is not "
                                              "a problem in your app; the operator has to fix the platform, then call "
                                              "deploy_app again")  # fmt: skip
        except ProviderUnavailable as e:
            outcome = await self._fail(lease, f"the compute platform stayed unavailable for {self._retry.window:g} s "
                                              f"({e.reason}); nothing went live, the previous version keeps serving. "
                                              "Call deploy_app again later")  # fmt: skip
        except InkError as e:
            outcome = await self._fail(lease, e.render())
        except asyncio.CancelledError:
            # shutdown (leave the record non-terminal: start-up or another replica resumes it), or lease lost
            outcome = "lost" if dep_id in self._lost else "interrupted"
            if outcome == "interrupted":
                raise
        except Exception as e:  # a bug or an OS failure: record it, never leave "building" forever
            log.exception("deployment crashed", extra={"deployment": str(dep_id)})
            outcome = await self._fail(lease, f"internal error: {type(e).__name__}")
        except BaseException:
            outcome = "interrupted"  # the process is going down (or a test simulates it): resumable
            raise
        finally:
            if first is not None:
                first.drop()
            if checkout is not None:
                shutil.rmtree(checkout, ignore_errors=True)
            if self._held.get(dep_id, (None,))[0] == lease:
                del self._held[dep_id]
            self._lost.discard(dep_id)
            if outcome == "lost":
                log.warning("stopped a pipeline whose lease another replica took over; it wrote nothing after",
                            extra={"deployment": str(dep_id), "epoch": lease.epoch})  # fmt: skip
            if outcome not in ("interrupted", "lost"):
                self._metrics.deploy_duration.labels(outcome=outcome).observe(time.monotonic() - started)

    async def _release_with_retries(self, lease: Lease, checkout: Path | None,
                                    first: _FirstReads | None = None) -> Any:  # fmt: skip
        """`release` until it returns, fails for good, or `ProviderUnavailable` outlasts the retry window.

        Every attempt reloads the rows, so it passes the refs the previous attempt recorded: the
        provider re-attaches to what it started instead of starting again (`release` is idempotent
        per deployment id). A provider that builds here gets a fresh checkout when the previous
        attempt took the old one over.
        """
        deadline = time.monotonic() + self._retry.window
        attempt = 0
        dep_id = lease.deployment_id

        async def progress(step: Step, detail: str) -> None:
            # Terminal states are core's to record, together with the URL: a waiter must
            # never see `live` before the URL is stored.
            if step not in (Step.live, Step.failed):
                await self._record(lease, step, detail)

        while True:
            reads, first = first, None
            dep, svc, project = (await reads.load)[0] if reads is not None else await self._load(dep_id)
            env_parts = await reads.env if reads is not None and reads.matches(svc, project) else None
            work: Path | None = None
            if self._compute.needs_checkout:
                work = checkout if checkout is not None and checkout.exists() else None
                if work is None:
                    work = self._checkouts / uuid.uuid4().hex
                    workspace = await self._compute.source_workspace(str(project.id))
                    # --- issue 11 (github): a private GitHub repo is fetched again with the account's token
                    auth = (await self.github.auth_for(project.account_id, self._projects.fetch_url(svc))
                            if self.github is not None else None)
                    # --- end
                    await resolve_and_checkout(
                        self._projects.fetch_url(svc), dep.commit, work, workspace=workspace, policy=self._sources,
                        auth=auth,  # issue 11 (github)
                    )
            try:
                request = await self._release_request(dep, svc, project, work, env_parts)
                return await self._compute.release(
                    request, progress, self._recorder(dep_id, svc.id, project.id, lease)
                )
            except ProviderUnavailable as e:
                wait = e.retry_after if e.retry_after is not None else self._retry.backoff(attempt)
                if time.monotonic() + wait > deadline:
                    raise
                detail = f"waiting for the compute platform ({e.reason}); retrying in {wait:.0f} s"
                await self._record(lease, Step.queued, detail)
                await asyncio.sleep(wait)  # a backoff the provider asked for, not a synchronisation
                attempt += 1
            finally:
                if work is not None and work != checkout:
                    shutil.rmtree(work, ignore_errors=True)

    async def _fail(self, lease: Lease, reason: str) -> str:
        """Record the failure (fenced); the outcome for metrics: `failed`, or `lost` if the lease went first.
        Agents read the reason: the server's own paths in it are shown relative (errors.scrub_paths), and the
        service's secrets are hidden as get_logs hides them: a reason quotes the build's or the app's last output,
        which may print its env (DATABASE_URL with its password, an API token), and it is kept in the record."""
        reason = scrub_paths(reason)
        try:
            rows = await statement_pool(self._sessions).fetch(_SERVICE_OF_DEPLOYMENT_SQL, (lease.deployment_id,))
            if rows:
                reason = "\n".join(redact(reason.split("\n"), await self.secrets_of(rows[0][0], rows[0][1])))
        except Exception:  # never keep output that could not be checked; the record must still end
            log.exception("could not read the secrets to hide", extra={"deployment": str(lease.deployment_id)})
            step = reason.split(":", 1)[0]
            reason = (f"{step}: " if step in {x.value for x in Step} else "") + (
                "the deployment failed; its output is not shown here because its secrets could not be read to hide "
                "them. Call get_logs(scope='build') or get_logs(scope='runtime') for the output")
        try:
            await self._record(lease, Step.failed, reason)
        except LeaseLost:
            return "lost"
        return "failed"

    # ------------------------------------------------------- follow & views
    async def view(
        self, p: Principal, dep_id: uuid.UUID, *, reused: bool = False, history_limit: int = HISTORY_SHOWN
    ) -> DeploymentView:
        # One prepared statement on the statement pool (store.statements): `wait` reads it every step and tick.
        rows = await statement_pool(self._sessions).fetch(_VIEW_SQL, (dep_id, p.account_id))
        if not rows:
            raise NotFound(
                f"no deployment {dep_id} in this account.",
                argument="deployment_id",
                fix="use the deployment_id returned by deploy_app, or list_services to see current ones",
            )
        status, url, commit, error, service_name, project_name, events = rows[0]
        return _render_view(dep_id, project_name, service_name, status, url, commit, error,
                            [(st, d) for st, d in events], reused=reused, history_limit=history_limit)

    async def wait(
        self, p: Principal, dep_id: uuid.UUID, *, timeout: float, on_progress: ProgressSink | None = None
    ) -> DeploymentView:
        """Follow the record (works across restarts and processes), reporting each new step.

        A deployment this replica runs wakes the waiter as soon as a step is committed (`_changed`), so `live` is
        heard right after it is recorded; one another replica runs is read again every `poll_seconds`."""
        deadline = time.monotonic() + timeout
        seen = 0
        self._waiting[dep_id] = self._waiting.get(dep_id, 0) + 1
        try:
            while True:
                change = self._change_of(dep_id)  # taken before the read, so no write falls in between
                v = await self.view(p, dep_id, history_limit=10_000)
                if on_progress:
                    for line in v.history[seen:]:
                        await on_progress(line)
                    seen = len(v.history)
                left = deadline - time.monotonic()
                if v.done or left <= 0:
                    return v.model_copy(update={"history": v.history[-HISTORY_SHOWN:]})
                await asyncio.wait([change], timeout=min(self.poll_seconds, left))  # a write here, or a tick
        finally:
            self._unwatch({dep_id})

    def _change_of(self, dep_id: uuid.UUID) -> asyncio.Future[None]:
        """The future the next committed write of `dep_id` resolves (`_changed`); callers count themselves in
        `_waiting` and leave through `_unwatch`."""
        change = self._changes.get(dep_id)
        if change is None or change.done():
            change = self._changes[dep_id] = asyncio.get_running_loop().create_future()
        return change

    def _unwatch(self, dep_ids: set[uuid.UUID]) -> None:
        for dep_id in dep_ids:
            self._waiting[dep_id] -= 1
            if not self._waiting[dep_id]:
                del self._waiting[dep_id]
                self._changes.pop(dep_id, None)

    async def list_services(self, p: Principal, project_name: str) -> list[ServiceView]:
        project = await self._projects.get(p, project_name)
        async with self._sessions() as s:
            rows = (
                await s.execute(
                    select(Service, Deployment)
                    .outerjoin(Deployment, Deployment.id == Service.live_deployment_id)
                    .where(Service.project_id == project.id)
                    .order_by(Service.name)
                )
            ).all()
            latest = {
                sid: (did, st)
                for sid, did, st in (
                    await s.execute(
                        select(Deployment.service_id, Deployment.id, Deployment.status)
                        .where(Deployment.service_id.in_([r[0].id for r in rows]))
                        .ext(distinct_on(Deployment.service_id))
                        .order_by(Deployment.service_id, Deployment.created_at.desc())
                    )
                ).all()
            }
        runtimes = await asyncio.gather(*(self._runtime(project, svc) if live else _none() for svc, live in rows))
        views = []
        for (svc, live), found in zip(rows, runtimes, strict=True):
            rt, env_state = found if found is not None else (None, None)
            state = rt.state.value if rt else "not_deployed"
            health = "unknown"
            if rt and rt.state != RuntimeState.unknown:
                # asleep or suspended (its account cannot pay) is not a failing app
                healthy = (RuntimeState.running, RuntimeState.sleeping, RuntimeState.suspended)
                health = "ok" if rt.state in healthy else "failing"
            last_id, last_status = latest.get(svc.id, (None, None))
            views.append(
                ServiceView(
                    name=svc.name,
                    type=svc.service_type,
                    mode=svc.mode,
                    url=svc.url,
                    state=state,
                    health=health,
                    deployment_id=str(last_id) if last_id else None,
                    deployment_status=last_status,
                    commit=live.commit[:12] if live and live.commit else None,
                    restarts=rt.restarts if rt else 0,
                    env=env_state,
                )
            )
        return views

    async def _runtime(self, project: Project, svc: Service) -> tuple[ServiceRuntime, str | None]:
        """The provider's runtime of a live service, and whether its processes run the stored env
        (`applied`) or a queued env change has not reached them yet (`pending`)."""
        try:
            rt = await self._compute.runtime(self.key_of(svc, project))
        except ProviderUnavailable as e:
            return ServiceRuntime(state=RuntimeState.unknown, detail=f"compute platform unavailable: {e.reason}"), None
        if rt.env_revision is None:
            return rt, None
        desired = self.env_revision(await self.effective_env(project.id, svc.id))
        return rt, "applied" if rt.env_revision == desired else "pending"

    async def list_deployments(
        self, p: Principal, project_name: str, service_name: str | None, limit: int
    ) -> list[DeploymentSummary]:
        project = await self._projects.get(p, project_name)
        q = (
            select(Deployment, Service.name)
            .join(Service, Deployment.service_id == Service.id)
            .where(Service.project_id == project.id)
            .order_by(Deployment.created_at.desc())
            .limit(max(1, min(limit, 200)))
        )
        if service_name is not None:
            q = q.where(Service.name == service_name)
        async with self._sessions() as s:
            rows = (await s.execute(q)).all()
        return [
            DeploymentSummary(deployment_id=str(d.id), service=name, status=d.status, commit=d.commit,
                              created_at=d.created_at, error=d.error)
            for d, name in rows
        ]

    async def get_service(self, p: Principal, project_name: str, service_name: str | None) -> tuple[Project, Service]:
        project = await self._projects.get(p, project_name)
        async with self._sessions() as s:
            services = (
                await s.execute(select(Service).where(Service.project_id == project.id).order_by(Service.name))
            ).scalars().all()
        names = [x.name for x in services]
        if service_name is None:
            if len(services) == 1:
                return project, services[0]
            raise InvalidArgument(
                f"project {project_name!r} has {len(services)} services.",
                argument="service_name",
                fix=f"pass one of: {', '.join(names)}" if names else "deploy a service first with deploy_app",
            )
        for svc in services:
            if svc.name == service_name:
                return project, svc
        raise await self.no_such_service(project, service_name, names)

    async def no_such_service(self, project: Project, name: str, names: list[str]) -> NotFound:
        """The error for a service name the project does not have, saying what it has: a Procfile's `worker:` (or
        any process of a multi-process plan) runs inside its service (`web`), it is not a service of its own, and a
        new user's agent asked for service 'worker' and heard only "no service 'worker'". Reads each service's
        latest plan (only on this error path)."""
        async with self._sessions() as s:
            rows = (await s.execute(
                select(Service.name, Deployment.plan).join(Deployment, Deployment.service_id == Service.id)
                .where(Service.project_id == project.id)
                .ext(distinct_on(Service.name)).order_by(Service.name, Deployment.created_at.desc())
            )).all()  # fmt: skip
        processes = {svc: [str(proc.get("name")) for proc in (plan or {}).get("processes") or ()]
                     for svc, plan in rows}  # fmt: skip
        for svc, procs in processes.items():
            if name in procs and name != svc:
                return ProcessNotService(
                    f"{name!r} is a process of service {svc!r} in project {project.name!r}, not a service (service "
                    f"{svc!r} runs {', '.join(procs)}).",
                    argument="service_name",
                    fix=f"pass service_name={svc!r}: a tool acts on the whole service, every process of it",
                    service=svc,
                )
        shown = [f"{n} (processes: {', '.join(processes[n])})" if len(processes.get(n, ())) > 1 else n for n in names]
        return NotFound(
            f"no service {name!r} in project {project.name!r}"
            + (f"; it has {len(names)}: {'; '.join(shown)}." if names else "; it has no services yet."),
            argument="service_name",
            fix=f"pass one of: {', '.join(names)}" if names else "deploy it first with deploy_app",
        )

    # ------------------------------------------------------- env & lifecycle
    async def _plan_of(self, deployment_id: uuid.UUID) -> BuildPlan | None:
        async with self._sessions() as s:
            plan = (await s.execute(select(Deployment.plan).where(Deployment.id == deployment_id))).scalar()
        return BuildPlan.model_validate(plan) if plan else None

    async def apply_env(self, project: Project, services: list[Service], changed: Iterable[str] = ()) -> EnvApplied:
        """Push the effective env to each live service and say what happened to each (`EnvApplied`); `changed`: the
        names set or unset (a frontend build's variable among them puts a service with a build in `built_in`).

        A service whose new processes failed their health check keeps running with its previous env
        (`failed`); one the provider could not reach now is in `unavailable` (nothing changed there).
        """
        done = EnvApplied()
        for svc in services:
            if svc.live_deployment_id is None:
                continue
            plan = await self._plan_of(svc.live_deployment_id)
            env, revision = await self._env_of(project.id, svc.id, plan)
            # The ref is read and rewritten under the service's ref-switch lock: a drain's switch (another
            # process) waits for this change and then sees its ref, instead of being overwritten by the old one.
            async with hold_ref_switch(self._sessions, svc.id):
                async with self._sessions() as s:  # fresh refs: a release or a move may have recorded new ones
                    fresh = await s.get(Service, svc.id)
                if fresh is None:
                    continue
                record = self._recorder(svc.live_deployment_id, svc.id, project.id)
                try:
                    change = await self._compute.update_env(self.key_of(fresh, project), env, revision, record)
                except ReleaseFailed as e:
                    done.failed[svc.name] = f"{e.step.value}: {e.reason}"
                    continue
                except ProviderUnavailable as e:
                    done.unavailable[svc.name] = e.reason
                    continue
            if plan is not None and not plan.processes:
                # --- newuser6: a static site's restart serves the same files, which hold what its build read (Vite's
                # VITE_*): update_env_vars said "restarted web with the new values" while they served the old ones
                done.rebuild.append(svc.name)
                continue
            {EnvOutcome.restarted: done.restarted, EnvOutcome.pending: done.pending,
             EnvOutcome.next_start: done.next_start}[change.outcome].append(svc.name)  # fmt: skip
            if plan is not None and plan.build_command and any(BUILD_TIME_ENV.match(k) for k in changed):
                done.built_in.append(svc.name)  # newuser6
        return done

    async def remove_service(self, project: Project, svc: Service) -> None:
        """Wait for the service's deployments in progress (on any replica), then remove it.

        Under the service's advisory lock (the one creating a deployment takes): the check that no deployment is in
        progress, and the mark `removing_since`, from which on `_create_with_reads` refuses deployments of it. The
        removal at the compute platform then runs without the lock: under Coolify it includes the deploy key's
        delete, which waits up to minutes for the applications' queued deletes, and a deploy_app of the service
        used to wait all that time on the lock, holding a statement-pool connection. A removal that fails clears
        the mark (the service stays as it was); the row goes once the platform's side is gone."""
        while True:
            async with self._sessions.begin() as s:
                await lock_service(s, svc.id)
                busy = (
                    await s.execute(
                        select(func.count()).select_from(Deployment)
                        .where(Deployment.service_id == svc.id, Deployment.status.not_in(list(TERMINAL)))
                    )
                ).scalar_one()
                if not busy:
                    await s.execute(update(Service).where(Service.id == svc.id).values(removing_since=func.now()))
                    break
            # the lock went with the transaction: a pipeline (maybe on another replica) is still releasing it
            await asyncio.sleep(0.2)
        async with self._sessions() as s:
            fresh = await s.get(Service, svc.id)  # fresh refs: the last pipeline may have recorded some
        try:
            await self._compute.remove(self.key_of(fresh or svc, project))
        except BaseException as e:
            async with self._sessions.begin() as s:
                await s.execute(update(Service).where(Service.id == svc.id).values(removing_since=None))
            if isinstance(e, ProviderUnavailable):
                raise unavailable(e, f"deleting service {svc.name!r}") from None
            raise
        async with self._sessions.begin() as s:
            await s.execute(delete(Service).where(Service.id == svc.id))

    async def restore_all(self) -> tuple[int, int]:
        """At start-up: bring live services back and resume interrupted deployments."""
        # Checkouts belong to pipelines of the previous process (a crash skips their cleanup); resumed
        # deployments check out again, so whatever is left is garbage.
        await asyncio.to_thread(shutil.rmtree, self._checkouts, True)
        self._private_checkouts()
        async with self._sessions() as s:
            live = (
                await s.execute(
                    select(Deployment, Service, Project)
                    .join(Service, Service.live_deployment_id == Deployment.id)
                    .join(Project, Service.project_id == Project.id)
                )
            ).all()
        restored = 0
        for dep, svc, project in live:
            try:
                await self._compute.restore(await self._release_spec(dep, svc, project))
                restored += 1
            except Exception as exc:
                # --- issue 10 (backup): a restored data dir (inkmcp backup restore) has the records, not the builds:
                # rebuild the live deployment from its recorded commit, in the background (inkmcp/backup/rebuild.py)
                if self._compute.needs_checkout and dep.commit:
                    from inkmcp.backup.rebuild import rebuild_live

                    log.info("could not restore the service (%s); rebuilding it from its recorded commit",
                             str(exc)[:200], extra={"service": str(svc.id), "commit": dep.commit[:12]})
                    self._spawn(rebuild_live(self, dep, svc, project))
                    continue
                # --- end issue 10
                log.exception("could not restore service", extra={"service": str(svc.id)})
        # Unfinished deployments nobody runs: unclaimed (made before leases), expired (a replica died), or ours
        # (this replica's previous run: the replica id is per data dir and one serve holds a data dir).
        claimed = await self._leases.claim_abandoned(own=True, limit=100_000)
        await self._take_over(claimed)
        self._scanning = True  # from now on, take over what other replicas leave behind
        self._maintain()
        return restored, len(claimed)

    async def count_live(self) -> int:
        async with self._sessions() as s:
            return (
                await s.execute(text("SELECT count(*) FROM services WHERE live_deployment_id IS NOT NULL"))
            ).scalar_one()

    async def close(self) -> None:
        """Stop the pipelines of this process (their records stay resumable) and hand their leases back, so
        another replica resumes them at once instead of after the lease expires."""
        self._scanning = False
        held = [lease for lease, _ in self._held.values()]
        tasks = [*self._tasks, *([self._maintainer] if self._maintainer else [])]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._leases.hand_back(held)
        except Exception:  # the database is going away too: the leases expire by themselves
            log.warning("could not hand back %d leases; they expire by themselves", len(held))


async def _none() -> None:
    return None


def _remove(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


async def _drop_fetch(fetching: asyncio.Future[Any], written: list[Path]) -> None:
    """Stop a fetch still running (its git processes are killed) and remove the files it wrote."""
    try:
        if not fetching.done():
            fetching.cancel()
        await asyncio.gather(fetching, return_exceptions=True)
    finally:
        _remove(written)


async def _drop_checkout(reading: asyncio.Task[None] | None, checkout: Path | None) -> None:
    """Stop a checkout still being written (its git and tar are killed) and remove what it wrote."""
    try:
        if reading is not None:
            if not reading.done():
                reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    finally:
        if checkout is not None:
            shutil.rmtree(checkout, ignore_errors=True)


def _queued_detail(commit: str, hints: list[str] | tuple[str, ...] = ()) -> str:
    return f"commit {commit[:12]}" + "".join(f"; {hint}" for hint in hints)


HINTS_SHOWN = 8


def _plan_hints(plan: BuildPlan, env: Mapping[str, SecretStr]) -> list[str]:
    """What the repo's platform files asked for that this deploy did not take (a secret to pass in env_vars, a
    database to ask for): shown once, in the queued event, so an agent can act on it. An add-on the project
    already has, or a variable already set, is not repeated."""
    hints = []
    has = {"'type': 'postgres'": "DATABASE_URL" in env, "'type': 'redis'": "REDIS_URL" in env}
    for note in plan.notes:
        if any(asked in note and present for asked, present in has.items()):
            continue
        if any(f" {key} " in f" {note} " for key in env if len(key) > 2):
            continue
        hints.append(note)
    if len(hints) > HINTS_SHOWN:
        hints = [*hints[:HINTS_SHOWN], f"{len(hints) - HINTS_SHOWN} more notes on the platform files"]
    return hints


def _render_view(
    dep_id: uuid.UUID, project_name: str, service_name: str, status: str, url: str | None, commit: str | None,
    error: str | None, events: list[tuple[str, str]], *, reused: bool, history_limit: int = HISTORY_SHOWN,
) -> DeploymentView:
    """A deployment as agents see it, from its record (`DeployService.view`) or from what `deploy` just wrote."""
    done = status in TERMINAL
    next_step = None
    if not done:
        next_step = f"call wait_for_deployment(deployment_id='{dep_id}') to follow it to the end"
    elif status == "failed":
        # starting/health_check: the build passed and the processes crashed or answered 5xx, so the cause is in what
        # they printed; anything else (building, releasing, a plan error): the build log.
        after_build = (error or "").split(":", 1)[0] in (Step.starting.value, Step.health_check.value)
        scope = "runtime" if after_build else "build"
        logs = f"get_logs(project_name='{project_name}', service_name='{service_name}', scope='{scope}')"
        # A failure at starting may come before any process ran (a fixed port taken, a start refused): the runtime
        # log is then empty and the error itself names the cause, so the agent is sent to the error first.
        next_step = (
            f"do what the error says if it names the cause; otherwise read {logs} (what the processes printed), fix "
            "the cause, then call deploy_app again" if after_build else
            f"read {logs}, fix the cause, then call deploy_app again"
        )  # fmt: skip
    elif reused and status == "live":
        # --- newuser6: an agent that edited a local repo's files and called deploy_app again got this live deployment
        # back (the same commit), read `status: live` and kept reading the old version's answers as its change's
        next_step = (f"nothing new was deployed: this live deployment already runs commit {(commit or '')[:12]} with "
                     "these settings and env vars. deploy_app deploys commits, never uncommitted files: commit the "
                     "change (and push it, for a git URL), then call deploy_app again")
    history = [f"{st}: {d}" if d else st for st, d in events][-history_limit:]
    return DeploymentView(
        deployment_id=str(dep_id),
        project=project_name,
        service=service_name,
        status=status,
        url=url,
        commit=commit,
        error=error,
        done=done,
        reused=reused,
        history=history,
        next_step=next_step,
    )
