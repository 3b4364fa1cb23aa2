"""The reconciler (issue 8 item 7): compares InkMCP's records with Coolify's state and reports drift, or repairs
the kinds that are safe to repair.

Why it exists: the Coolify provider records every remote id before its next remote step and re-attaches on a
retry, but some drift can only be seen from outside a pipeline: an application whose service was deleted while
Coolify's queued delete failed, a create whose answer was lost and whose deployment was then abandoned for good,
an application an operator deleted in Coolify's UI, a commit deployed from Coolify's side.

One pass (`Reconciler.run`):

1. **Coolify first, then the database.** Coolify's projects named `<prefix><InkMCP project uuid>` (prefix
   `INKMCP_COOLIFY_PROJECT_PREFIX`, `inkmcp-`; any other name, including a prefixed one that is not followed by a
   uuid, is never read further nor touched), their environments, and every application in them. Reading the
   database *after* Coolify means an application created before the Coolify read is either recorded by the time
   of the database read, or belongs to a deployment still in flight (which the provider's retry adopts by name).
2. **Classify** (`DriftKind`):
   - `orphan_application`: in an InkMCP project, but no service row has it in its ref; flagged only if no
     deployment of its service is in flight (one in flight may still adopt it: `_ensure_apps` finds
     `<service_id>-<process>` by name) — those are listed in `Report.adoptable`, not as drift. An application whose
     process is recorded under another uuid (a duplicate) can never be adopted and is flagged.
   - `orphan_project`: an InkMCP-named Coolify project with no project row, or a row whose ref names another
     Coolify project (a duplicate).
   - `missing_application` / `missing_project`: recorded in a ref, gone from Coolify (an application is confirmed
     with its own `GET` → 404, so one created after the listing is not reported).
   - `commit_drift`: a live service whose application is set to, or last finished a deployment of, another commit
     than the live one (someone deployed from Coolify's side).
   - `stuck_deployment`: in flight in InkMCP with an expired lease while Coolify says its deployments ended. Never
     repaired here: the lease takeover (`leases.py`) finishes it; reported so an operator sees no replica runs.
   - `awaiting_redeploy`: a service an earlier repair marked (below) that nobody has deployed since.
   - `interrupted_move`: an application a move (`inkmcp nodes drain`) recorded in the live deployment's ref under
     `"move"` (the copies on the target, or the old ones awaiting deletion after the switch), older than the grace
     period. Younger ones are a move in progress (`Report.moving`, not drift). Never repaired here: the move's
     record says what to finish or undo, and running the drain again does exactly that; deleting its copies from
     here would leave the move's record pointing at nothing.
3. **Repair** (`repair=True` only; each step idempotent, re-checked under locks right before it acts):
   - orphan applications older than the grace period are deleted, and their deletion waited for, under the
     service's advisory lock (`leases.lock_service`) with no deployment of the service in flight — the lock is the
     one creating a deployment takes, so no pipeline can start and adopt it in between;
   - orphan projects older than the grace period are deleted once empty (Coolify refuses a non-empty one);
   - a missing application (or project) is *marked*, not redeployed: under the same lock the process leaves the
     ref's `apps` (the provider then creates it again by name on the next release) and goes to the ref's
     `needs_redeploy`, and `services.live_deployment_id` is cleared so that `deploy_app` with the same arguments
     is a new release rather than a no-op. Fix: the service's owner calls `deploy_app` again; the next repair pass
     after that clears the mark. A missing project likewise leaves the project's ref, so the provider makes it again.
   The whole pass holds a transaction-scoped advisory lock (`RECONCILE_LOCK`): a second reconciler (another
   replica, or the CLI beside `inkmcp serve`) finds it taken and reports `skipped` instead of repairing twice.

Nothing outside the prefix is ever deleted or changed, and nothing outside InkMCP's projects is read beyond the
listing. Cost per pass: 1 + P + 1 requests (projects, each project, applications) plus one deployments listing per
recorded application of a live service (`INKMCP_RECONCILE_CHECK_COMMITS`), within the client's shared budget.

Known limits: env drift is not compared (Coolify does not say which env a running container started with; only
the commit is); a recorded application that exists but sits outside InkMCP's projects is neither missing nor an
orphan and is not reported; a project's age is its oldest environment's `created_at` (Coolify's project listing has
none); a marked service shows `not_deployed` in list_services until it is redeployed, even if another of its
processes still runs; deleting an orphan holds its service's lock for up to INKMCP_RECONCILE_DELETE_WAIT_SECONDS,
so a deploy_app of that service waits meanwhile.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import func, literal, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.coolify.client import CoolifyBadRequest, CoolifyClient, CoolifyError, CoolifyNotFound
from inkmcp.coolify.spec import SpecError
from inkmcp.core.leases import lock_service
from inkmcp.core.views import TERMINAL
from inkmcp.providers.compute.coolify.policy import PolicyViolation
from inkmcp.store.models import Deployment, Project, Service
from inkmcp.store.refs import check_ref, ref_of

log = logging.getLogger("inkmcp.reconcile")

RECONCILE_LOCK = (0x1A7D_0007, 1)
"""Advisory-lock keys of a reconcile pass (namespace of issue 8 item 7, like leases.SERVICE_LOCK_CLASS)."""


class ReconcileSettings(BaseSettings):
    """`INKMCP_RECONCILE_*`: the periodic pass of `inkmcp serve` (compute = Coolify) and `inkmcp reconcile`.
    Wired in inkmcp/app.py (`start_periodic`) and inkmcp/cli.py (`reconcile`)."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_RECONCILE_", extra="ignore")

    interval_seconds: float = Field(
        default=900.0, ge=0, description="seconds between passes in `inkmcp serve`; 0 turns the periodic pass off")
    repair: bool = Field(
        default=False, description="let the periodic pass repair (delete orphans, mark missing applications); "
        "off by default: it reports only, and an operator runs `inkmcp reconcile --repair`")
    grace_seconds: float = Field(
        default=3600.0, ge=0, description="an orphan application or project younger than this is never deleted "
        "(it may be a create whose record is on its way)")
    delete_wait_seconds: float = Field(
        default=60.0, gt=0, description="how long a repair waits for Coolify's queued delete of an orphan "
        "application to finish (holding the service's lock, so nothing adopts it meanwhile)")
    check_commits: bool = Field(
        default=True, description="read each live application's newest deployments to report commit drift (one "
        "request per application per pass)")
    poll_seconds: float = Field(default=1.0, gt=0, description="poll interval while waiting for a delete")


class DriftKind(enum.StrEnum):
    orphan_application = "orphan_application"
    orphan_project = "orphan_project"
    missing_application = "missing_application"
    missing_project = "missing_project"
    commit_drift = "commit_drift"
    stuck_deployment = "stuck_deployment"
    awaiting_redeploy = "awaiting_redeploy"
    interrupted_move = "interrupted_move"


class Action(enum.StrEnum):
    reported = "reported"
    """Nothing done (report-only pass, or a kind that is never repaired)."""
    deleted = "deleted"
    marked = "marked"
    kept = "kept"
    """A repair pass left it on purpose (`note` says why: too young, in flight meanwhile, not empty)."""
    failed = "failed"


FIXES = {
    DriftKind.orphan_application: "`inkmcp reconcile --repair` deletes it once older than "
                                  "INKMCP_RECONCILE_GRACE_SECONDS",
    DriftKind.orphan_project: "`inkmcp reconcile --repair` deletes it once empty and older than "
                              "INKMCP_RECONCILE_GRACE_SECONDS",
    DriftKind.missing_application: "`inkmcp reconcile --repair` marks the service; then its owner calls deploy_app "
                                   "again (the same arguments redeploy and Coolify gets the application back)",
    DriftKind.missing_project: "`inkmcp reconcile --repair` forgets the Coolify project; then deploy_app of each "
                               "service creates it again",
    DriftKind.commit_drift: "someone deployed from Coolify's side: call deploy_app again to put InkMCP's release "
                            "back, or find who changed it in Coolify",
    DriftKind.awaiting_redeploy: "its owner calls deploy_app again (the same arguments redeploy)",
    DriftKind.interrupted_move: "run `inkmcp nodes drain NODE` again for the node the move left (the drift's "
                                "detail names it): it re-attaches to the recorded move and finishes or undoes it",
    DriftKind.stuck_deployment: "a running `inkmcp serve` takes it over within INKMCP_TAKEOVER_SCAN_SECONDS; if "
                                "none runs, start one",
}


class Drift(BaseModel):
    """One difference between InkMCP's records and Coolify."""

    kind: DriftKind
    detail: str
    project_id: str | None = None
    service_id: str | None = None
    process: str | None = None
    coolify_project: str | None = None
    application: str | None = None
    deployment_id: str | None = None
    age_seconds: float | None = None
    action: Action = Action.reported
    note: str = ""

    @property
    def fix(self) -> str:
        return FIXES[self.kind]

    @property
    def resolved(self) -> bool:
        return self.action in (Action.deleted, Action.marked)


class Report(BaseModel):
    """What one pass found and did."""

    repair: bool
    started_at: datetime
    seconds: float = 0.0
    skipped: str | None = None
    """Set when the pass did nothing: another reconciler holds the lock."""
    drift: list[Drift] = Field(default_factory=list)
    adoptable: list[str] = Field(default_factory=list)
    """Unrecorded applications a deployment in flight may still adopt (uuids): not drift."""
    redeployed: list[str] = Field(default_factory=list)
    moving: list[str] = Field(default_factory=list)
    """Applications of a move in progress (younger than the grace period), recorded under a live deployment's
    `"move"`: not drift (uuids)."""
    """Services marked `needs_redeploy` that were redeployed since: a repair pass clears the mark (ids)."""
    errors: list[str] = Field(default_factory=list)

    @property
    def remaining(self) -> list[Drift]:
        return [d for d in self.drift if not d.resolved]

    def of(self, kind: DriftKind) -> list[Drift]:
        return [d for d in self.drift if d.kind == kind]


# --- Coolify's side: raw reads parsed by our own models (created_at is not in the client's models) -----------


class _App(BaseModel):
    model_config = ConfigDict(extra="ignore")

    uuid: str
    name: str | None = None
    environment_id: int | None = None
    git_commit_sha: str | None = None
    status: str | None = None
    created_at: str | None = None


class _Env(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: int | None = None
    uuid: str | None = None
    name: str = ""
    created_at: str | None = None


class _Project(BaseModel):
    model_config = ConfigDict(extra="ignore")

    uuid: str
    name: str
    environments: list[_Env] = Field(default_factory=list)


_APPS = TypeAdapter(list[_App])


def _age(created_at: str | None, now: float) -> float | None:
    if not created_at:
        return None
    try:
        return max(0.0, now - datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


class _Coolify(BaseModel):
    """Coolify's state as one pass read it."""

    projects: dict[str, tuple[uuid.UUID, _Project, float | None]] = Field(default_factory=dict)
    """Coolify project uuid -> (InkMCP project id its name says, project, age in seconds)."""
    apps: dict[str, tuple[str, _App]] = Field(default_factory=dict)
    """Application uuid -> (Coolify project uuid, app), for applications in InkMCP's projects only."""


class _Records(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    projects: dict[uuid.UUID, dict[str, Any]]
    services: dict[uuid.UUID, tuple[uuid.UUID, dict[str, Any], uuid.UUID | None]]
    """service id -> (project id, coolify service ref, live deployment id)."""
    in_flight: dict[uuid.UUID, list[tuple[uuid.UUID, bool, dict[str, Any]]]]
    """service id -> [(deployment id, lease expired, coolify deployment ref)] of non-terminal deployments."""
    moving: dict[str, tuple[uuid.UUID, dict[str, Any]]] = Field(default_factory=dict)
    """Application uuid -> (service id, the move's state) for every application a live deployment's `"move"`
    names (copies on the target and the old applications awaiting deletion)."""


class Reconciler:
    """One reconciler over a Coolify client and the control-plane database (module docstring)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], client: CoolifyClient, *,
                 settings: ReconcileSettings | None = None, project_prefix: str = "inkmcp-",
                 provider_name: str = "coolify") -> None:  # fmt: skip
        if not project_prefix:
            raise ValueError("project_prefix must not be empty: the reconciler only touches Coolify projects named "
                             "<prefix><InkMCP project id>; pass InkMCP's prefix (INKMCP_COOLIFY_PROJECT_PREFIX)")
        self.sessions = sessions
        self.client = client
        self.settings = settings or ReconcileSettings()
        self.prefix = project_prefix
        self.provider = provider_name

    @classmethod
    def for_provider(cls, sessions: async_sessionmaker[AsyncSession], provider: Any,
                     settings: ReconcileSettings | None = None) -> Reconciler:  # fmt: skip
        """Over a `CoolifyComputeProvider`'s own client (its request budget and wire policy included)."""
        return cls(sessions, provider.client, settings=settings, project_prefix=provider.project_prefix,
                   provider_name=provider.name)

    # -- the pass ------------------------------------------------------------------------------------------

    async def run(self, *, repair: bool = False) -> Report:
        report = Report(repair=repair, started_at=datetime.now(UTC))
        started = time.monotonic()
        async with self.sessions() as guard, guard.begin():
            got = (await guard.execute(text("SELECT pg_try_advisory_xact_lock(:a, :b)"),
                                       {"a": RECONCILE_LOCK[0], "b": RECONCILE_LOCK[1]})).scalar_one()  # fmt: skip
            if not got:
                report.skipped = "another reconciler (replica or CLI) is running a pass; nothing done"
                return report
            try:
                coolify = await self._read_coolify()
                records = await self._read_records()
                await self._classify(coolify, records, report)
                if repair:
                    await self._repair(coolify, report)
            except CoolifyError as e:
                report.errors.append(f"Coolify: {e}")
            except (SpecError, PolicyViolation) as e:  # a request InkMCP must not send: nothing was sent
                report.errors.append(f"refused before sending: {e}")
            except ValidationError as e:
                report.errors.append(f"Coolify answered outside what InkMCP expects: {e}")
        report.seconds = time.monotonic() - started
        return report

    async def _read_coolify(self) -> _Coolify:
        now = time.time()
        out = _Coolify()
        env_project: dict[int, str] = {}
        for listed in await self.client.list_projects():
            if not listed.name.startswith(self.prefix):
                continue  # not InkMCP's: never read further, never touched
            project_id = _uuid(listed.name[len(self.prefix):])
            if project_id is None or f"{self.prefix}{project_id}" != listed.name:
                continue  # a name InkMCP never makes
            try:
                raw = await self.client.request("GET", f"/projects/{listed.uuid}")
            except CoolifyNotFound:
                continue  # deleted meanwhile
            project = _Project.model_validate(raw.json())
            ages = [a for a in (_age(e.created_at, now) for e in project.environments) if a is not None]
            out.projects[project.uuid] = (project_id, project, max(ages) if ages else None)
            for env in project.environments:
                if env.id is not None:
                    env_project[env.id] = project.uuid
        listed_apps = _APPS.validate_python((await self.client.request("GET", "/applications")).json())
        for app in listed_apps:
            if app.environment_id is not None and app.environment_id in env_project:
                out.apps[app.uuid] = (env_project[app.environment_id], app)
        return out

    async def _read_records(self) -> _Records:
        async with self.sessions() as s:
            projects = {pid: ref_of(ref, self.provider)
                        for pid, ref in (await s.execute(select(Project.id, Project.provider_ref))).all()}
            services = {sid: (pid, ref_of(ref, self.provider), live) for sid, pid, ref, live in (await s.execute(
                select(Service.id, Service.project_id, Service.provider_ref, Service.live_deployment_id))).all()}
            rows = (await s.execute(
                select(Deployment.id, Deployment.service_id, Deployment.provider_ref,
                       (Deployment.claimed_by.is_(None) | Deployment.lease_until.is_(None)
                        | (Deployment.lease_until < func.now())).label("expired"))
                .where(Deployment.status.not_in(list(TERMINAL))))).all()  # fmt: skip
            live_refs = (await s.execute(
                select(Deployment.service_id, Deployment.provider_ref)
                .join(Service, Service.live_deployment_id == Deployment.id))).all()  # fmt: skip
        in_flight: dict[uuid.UUID, list[tuple[uuid.UUID, bool, dict[str, Any]]]] = {}
        for dep_id, sid, ref, expired in rows:
            in_flight.setdefault(sid, []).append((dep_id, bool(expired), ref_of(ref, self.provider)))
        moving: dict[str, tuple[uuid.UUID, dict[str, Any]]] = {}
        for sid, ref in live_refs:
            move = ref_of(ref, self.provider).get("move")
            if isinstance(move, dict):
                for app_uuid in [*(move.get("apps") or {}).values(), *(move.get("old_apps") or {}).values()]:
                    moving[str(app_uuid)] = (sid, move)
        return _Records(projects=projects, services=services, in_flight=in_flight, moving=moving)

    async def _classify(self, coolify: _Coolify, records: _Records, report: Report) -> None:
        now = time.time()
        # projects
        for cp_uuid, (project_id, project, age) in coolify.projects.items():
            ref = records.projects.get(project_id)
            if ref is None:
                why = "no InkMCP project has this id"
            elif ref.get("project_uuid") and ref["project_uuid"] != cp_uuid:
                why = f"InkMCP's project records Coolify project {ref['project_uuid']} instead (a duplicate)"
            else:
                continue  # recorded, or not recorded yet and adoptable by name
            report.drift.append(Drift(kind=DriftKind.orphan_project, detail=f"{project.name}: {why}",
                                      project_id=str(project_id), coolify_project=cp_uuid, age_seconds=age))
        for project_id, ref in records.projects.items():
            cp = ref.get("project_uuid")
            if cp and cp not in coolify.projects and not await self._exists(f"/projects/{cp}"):
                report.drift.append(Drift(kind=DriftKind.missing_project, project_id=str(project_id),
                                          coolify_project=str(cp),
                                          detail=f"Coolify project {cp} recorded for {project_id} is gone"))
        # applications in InkMCP's projects
        recorded: dict[str, tuple[uuid.UUID, str]] = {}
        for sid, (_, ref, _) in records.services.items():
            for process, app_uuid in (ref.get("apps") or {}).items():
                recorded[str(app_uuid)] = (sid, str(process))
        for app_uuid, (cp_uuid, app) in coolify.apps.items():
            if app_uuid in recorded:
                continue
            if app_uuid in records.moving:
                msid, move = records.moving[app_uuid]
                age = _age(app.created_at, now)
                if age is not None and age < self.settings.grace_seconds:
                    report.moving.append(app_uuid)
                    continue
                report.drift.append(Drift(
                    kind=DriftKind.interrupted_move, coolify_project=cp_uuid, application=app_uuid,
                    service_id=str(msid), project_id=str(coolify.projects[cp_uuid][0]), age_seconds=age,
                    detail=f"{app.name}: part of a move of service {msid} from server {move.get('from')} to "
                           f"{move.get('to')} that has not finished"))
                continue
            name = app.name or ""
            sid = _uuid(name[:36]) if len(name) > 37 and name[36] == "-" else None
            process = name[37:] if sid is not None else None
            owner = records.services.get(sid) if sid is not None else None
            if owner is None:
                why = f"{name or '(no name)'}: no InkMCP service has this id"
            elif (owner[1].get("apps") or {}).get(process):
                why = f"{name}: the service records {owner[1]['apps'][process]} for {process} (a duplicate)"
            elif records.in_flight.get(sid):  # type: ignore[arg-type]
                report.adoptable.append(app_uuid)  # the provider's retry finds it by name
                continue
            else:
                why = f"{name}: not in the service's record and no deployment of it is in flight"
            report.drift.append(Drift(kind=DriftKind.orphan_application, detail=why, coolify_project=cp_uuid,
                                      application=app_uuid, service_id=str(sid) if sid else None, process=process,
                                      project_id=str(coolify.projects[cp_uuid][0]),
                                      age_seconds=_age(app.created_at, now)))  # fmt: skip
        # recorded applications: missing, commit drift
        for sid, (pid, ref, live) in records.services.items():
            if records.in_flight.get(sid):
                continue  # a pipeline is changing it: its state is not drift
            marks = ref.get("needs_redeploy")
            if marks and live is None:
                lost = ", ".join(sorted(marks.get("missing", {})))
                report.drift.append(Drift(
                    kind=DriftKind.awaiting_redeploy, project_id=str(pid), service_id=str(sid),
                    detail=f"service {sid} lost the Coolify application of {lost} (marked {marks.get('since', '?')}) "
                           "and was not deployed since"))
            elif marks:
                report.redeployed.append(str(sid))
            for process, app_uuid in (ref.get("apps") or {}).items():
                found = coolify.apps.get(str(app_uuid))
                if found is None:
                    if not await self._exists(f"/applications/{app_uuid}"):
                        report.drift.append(Drift(
                            kind=DriftKind.missing_application, project_id=str(pid), service_id=str(sid),
                            process=str(process), application=str(app_uuid),
                            detail=f"process {process}: application {app_uuid} is gone from Coolify"))
                    continue
                commit = ref.get("live_commit")
                if live is None or not commit or process not in (ref.get("live_deployments") or {}):
                    continue  # not part of the live release (e.g. a process a failed release added, then stopped)
                app = found[1]
                if app.git_commit_sha and app.git_commit_sha != commit:
                    try:  # the listing predates the database read: a release may have finished in between
                        fresh = await self.client.request("GET", f"/applications/{app_uuid}")
                        app = _App.model_validate(fresh.json())
                    except CoolifyNotFound:
                        continue
                if app.git_commit_sha and app.git_commit_sha != commit:
                    report.drift.append(Drift(
                        kind=DriftKind.commit_drift, project_id=str(pid), service_id=str(sid), process=str(process),
                        application=str(app_uuid),
                        detail=f"process {process} is set to commit {app.git_commit_sha[:12]}, live is {commit[:12]}"))
                    continue
                if self.settings.check_commits:
                    page = await self.client.list_deployments(str(app_uuid), take=5)
                    done = next((d for d in page.deployments if d.status == "finished"), None)  # newest first
                    if done is not None and done.commit and done.commit != commit:
                        report.drift.append(Drift(
                            kind=DriftKind.commit_drift, project_id=str(pid), service_id=str(sid),
                            process=str(process), application=str(app_uuid),
                            detail=f"process {process} runs commit {done.commit[:12]} (Coolify deployment "
                                   f"{done.deployment_uuid}), live is {commit[:12]}"))
        # deployments InkMCP thinks are running, nobody runs, and Coolify finished
        for sid, deps in records.in_flight.items():
            for dep_id, expired, dep_ref in deps:
                remote = dep_ref.get("deployments") or {}
                if not expired or not remote:
                    continue
                ended = []
                for uuid_ in remote.values():
                    try:
                        ended.append((await self.client.get_deployment(str(uuid_))).status)
                    except CoolifyNotFound:
                        ended.append("gone")
                if all(s not in ("queued", "in_progress") for s in ended):
                    report.drift.append(Drift(
                        kind=DriftKind.stuck_deployment, service_id=str(sid), deployment_id=str(dep_id),
                        detail=f"deployment {dep_id}: lease expired, Coolify's deployments ended ({', '.join(ended)})"))

    async def _exists(self, path: str) -> bool:
        try:
            await self.client.request("GET", path)
        except CoolifyNotFound:
            return False
        return True

    # -- repairs -------------------------------------------------------------------------------------------

    async def _repair(self, coolify: _Coolify, report: Report) -> None:
        for d in report.of(DriftKind.orphan_application):
            if not self._old_enough(d):
                continue
            await self._guarded(d, self._delete_orphan_app)
        for d in report.of(DriftKind.missing_application):
            await self._guarded(d, self._mark_missing_app)
        for d in report.of(DriftKind.missing_project):
            await self._guarded(d, self._forget_missing_project)
        for sid in report.redeployed:
            await self._clear_mark(uuid.UUID(sid))
        for d in report.of(DriftKind.orphan_project):
            if not self._old_enough(d):
                continue
            await self._guarded(d, self._delete_orphan_project)

    def _old_enough(self, d: Drift) -> bool:
        grace = self.settings.grace_seconds
        if d.age_seconds is None:
            d.action, d.note = Action.kept, "Coolify gave no creation time; an operator deletes it by hand"
            return False
        if d.age_seconds < grace:
            d.action, d.note = Action.kept, f"younger than the grace period ({grace:g} s)"
            return False
        return True

    async def _guarded(self, d: Drift, repair: Any) -> None:
        try:
            await repair(d)
        except CoolifyError as e:
            d.action, d.note = Action.failed, str(e)
            log.warning("reconcile: repairing %s %s failed: %s", d.kind.value, d.application or d.coolify_project, e)

    async def _locked_idle(self, s: AsyncSession, service_id: uuid.UUID) -> bool:
        """In `s`'s transaction: hold the service's lock (the one creating a deployment takes) and say whether no
        deployment of it is in flight."""
        await lock_service(s, service_id)
        busy = (await s.execute(select(func.count()).select_from(Deployment).where(
            Deployment.service_id == service_id, Deployment.status.not_in(list(TERMINAL))))).scalar_one()
        return not busy

    async def _delete_orphan_app(self, d: Drift) -> None:
        assert d.application is not None
        sid = _uuid(d.service_id) if d.service_id else None
        async with self.sessions() as s, s.begin():
            if sid is not None:
                if not await self._locked_idle(s, sid):
                    d.action, d.note = Action.kept, "a deployment of its service started meanwhile (it may adopt it)"
                    return
                svc = await s.get(Service, sid)
                apps = (ref_of(svc.provider_ref, self.provider).get("apps") or {}) if svc is not None else {}
                if d.application in {str(u) for u in apps.values()}:
                    d.action, d.note = Action.kept, "recorded meanwhile"
                    return
            await self.client.delete_application(d.application, missing_ok=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.delete_wait_seconds
            while await self._exists(f"/applications/{d.application}"):  # keep the lock until it is really gone
                if loop.time() > deadline:
                    d.action, d.note = Action.kept, "delete queued in Coolify, not done yet; the next pass checks"
                    return
                await asyncio.sleep(self.settings.poll_seconds)
        d.action = Action.deleted
        log.info("reconcile: deleted orphan application %s (%s)", d.application, d.detail)

    async def _mark_missing_app(self, d: Drift) -> None:
        assert d.service_id and d.process and d.application
        sid = uuid.UUID(d.service_id)
        async with self.sessions() as s, s.begin():
            if not await self._locked_idle(s, sid):
                d.action, d.note = Action.kept, "a deployment of the service started meanwhile"
                return
            svc = await s.get(Service, sid, with_for_update=True)
            ref = ref_of(svc.provider_ref, self.provider) if svc is not None else {}
            if (ref.get("apps") or {}).get(d.process) != d.application:
                d.action, d.note = Action.kept, "the record changed meanwhile"
                return
            if await self._exists(f"/applications/{d.application}"):
                d.action, d.note = Action.kept, "the application is back"
                return
            ref = copy.deepcopy(ref)
            ref["apps"].pop(d.process)
            marks = ref.setdefault("needs_redeploy", {})
            marks.setdefault("missing", {})[d.process] = d.application
            marks["since"] = datetime.now(UTC).isoformat()
            await self._save(s, Service, sid, ref)
            await s.execute(update(Service).where(Service.id == sid).values(live_deployment_id=None))
        d.action, d.note = Action.marked, "service needs a redeploy: its owner calls deploy_app again"
        log.warning("reconcile: service %s process %s lost its Coolify application %s; marked for redeploy",
                    d.service_id, d.process, d.application)

    async def _clear_mark(self, sid: uuid.UUID) -> None:
        """A marked service deployed again: its `needs_redeploy` mark goes (the provider keeps unknown ref keys)."""
        async with self.sessions() as s, s.begin():
            if not await self._locked_idle(s, sid):
                return
            svc = await s.get(Service, sid, with_for_update=True)
            if svc is None or svc.live_deployment_id is None:
                return
            ref = ref_of(svc.provider_ref, self.provider)
            if ref.pop("needs_redeploy", None) is not None:
                await self._save(s, Service, sid, ref)
                log.info("reconcile: service %s was redeployed; its needs_redeploy mark is cleared", sid)

    async def _forget_missing_project(self, d: Drift) -> None:
        assert d.project_id and d.coolify_project
        pid = uuid.UUID(d.project_id)
        async with self.sessions() as s, s.begin():
            sids = (await s.execute(select(Service.id).where(Service.project_id == pid).order_by(Service.id))
                    ).scalars().all()  # fmt: skip
            for sid in sids:  # in id order: two passes never wait on each other crosswise
                if not await self._locked_idle(s, sid):
                    d.action, d.note = Action.kept, "a deployment in the project is in flight"
                    return
            project = await s.get(Project, pid, with_for_update=True)
            ref = ref_of(project.provider_ref, self.provider) if project is not None else {}
            if ref.get("project_uuid") != d.coolify_project or await self._exists(f"/projects/{d.coolify_project}"):
                d.action, d.note = Action.kept, "the record or Coolify changed meanwhile"
                return
            ref.pop("project_uuid", None)
            ref.pop("environment_uuid", None)
            await self._save(s, Project, pid, ref)
        d.action, d.note = Action.marked, "project forgotten: deploy_app of each service creates it again"

    async def _delete_orphan_project(self, d: Drift) -> None:
        assert d.coolify_project and d.project_id
        async with self.sessions() as s:
            project = await s.get(Project, uuid.UUID(d.project_id))
            ref = ref_of(project.provider_ref, self.provider) if project is not None else {}
        if project is not None and ref.get("project_uuid") in (None, d.coolify_project):
            d.action, d.note = Action.kept, "InkMCP's project adopted it meanwhile"
            return
        try:
            await self.client.delete_project(d.coolify_project)
        except CoolifyNotFound:
            pass
        except CoolifyBadRequest:  # Coolify refuses while resources are in it (queued deletes included)
            d.action, d.note = Action.kept, "not empty yet (its applications are being deleted); the next pass retries"
            return
        d.action = Action.deleted
        log.info("reconcile: deleted orphan project %s (%s)", d.coolify_project, d.detail)

    async def _save(self, s: AsyncSession, model: Any, row_id: uuid.UUID, ref: Mapping[str, Any]) -> None:
        """store.refs.save_ref's statement, inside the caller's locked transaction."""
        import json

        entry = func.jsonb_build_object(self.provider, literal(json.loads(check_ref(ref)), JSONB))
        await s.execute(update(model).where(model.id == row_id)
                        .values(provider_ref=model.provider_ref.op("||")(entry)))  # fmt: skip


# --- the periodic pass of `inkmcp serve` --------------------------------------------------------------------


async def run_periodically(reconciler: Reconciler, settings: ReconcileSettings) -> None:
    """Every `interval_seconds`: one pass (repairing only with INKMCP_RECONCILE_REPAIR=true); drift is logged as
    warnings. Errors of a pass are logged and the loop goes on."""
    while True:
        await asyncio.sleep(settings.interval_seconds)
        try:
            report = await reconciler.run(repair=settings.repair)
        except Exception:
            log.exception("reconcile pass failed")
            continue
        if report.skipped:
            continue
        for d in report.drift:
            log.warning("reconcile: %s %s: %s (%s) — %s", d.kind.value,
                        d.application or d.coolify_project or d.deployment_id or d.service_id, d.detail,
                        d.action.value, d.note or d.fix)  # fmt: skip
        for e in report.errors:
            log.warning("reconcile: %s", e)


def start_periodic(stack: Any, sessions: async_sessionmaker[AsyncSession], provider: Any,
                   settings: ReconcileSettings | None = None) -> asyncio.Task[None] | None:  # fmt: skip
    """Start the periodic pass over `provider` (a CoolifyComputeProvider) and cancel it when `stack` (an
    AsyncExitStack) closes. None when INKMCP_RECONCILE_INTERVAL_SECONDS=0."""
    settings = settings or ReconcileSettings()
    if settings.interval_seconds <= 0:
        return None
    task = asyncio.ensure_future(run_periodically(Reconciler.for_provider(sessions, provider, settings), settings))

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(stop)
    return task


def table(report: Report) -> Any:
    """The report as a rich Table (`inkmcp reconcile`)."""
    from rich.table import Table

    out = Table("drift", "what", "action", "fix", title="dry run: nothing changed" if not report.repair else None)
    for d in report.drift:
        colour = "green" if d.resolved else ("yellow" if d.action != Action.failed else "red")
        out.add_row(d.kind.value, d.detail, f"[{colour}]{d.action.value}[/]" + (f": {d.note}" if d.note else ""),
                    "" if d.resolved else d.fix)
    for e in report.errors:
        out.add_row("error", e, "[red]pass incomplete[/]", "check INKMCP_COOLIFY_URL / the token, run again")
    return out
