"""Pulumi dynamic provider for a Robot vSwitch and its dedicated-server attachments.

Why a dynamic provider: pulumi-hcloud speaks only the Cloud API; vSwitches live in Robot. The
resource id is Robot's numeric vSwitch id (names and VLANs are not unique, so nothing else identifies
a vSwitch).

Design constraints from the contract (../../../shared/hetzner/ROBOT-VSWITCH.md):

* 100 writes an hour per endpoint: servers are attached in ONE ``server[]`` call and detached in one;
  nothing is written when nothing changed; credentials-only changes write nothing.
* Attachments are asynchronous: every write that touches servers waits until none is "in process",
  because Robot refuses further changes meanwhile (409 VSWITCH_IN_PROCESS).
* The provider object is pickled into the state: its constructor holds only tunables. The client (and
  the password it carries) is built inside each call from the resource's secret inputs
  ``robot_user``/``robot_password`` or, when those are absent, from the environment variables
  ``HETZNER_ROBOT_USER``/``HETZNER_ROBOT_PASSWORD``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import pulumi
import pulumi.dynamic as dyn
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from inkmcp.infra.robot import (
    DEFAULT_BASE_URL,
    VLAN_MAX,
    VLAN_MIN,
    AlreadyCancelled,
    RetryPolicy,
    RobotClient,
    RobotError,
    RobotNotFound,
    VSwitch,
)

ENV_USER = "HETZNER_ROBOT_USER"
ENV_PASSWORD = "HETZNER_ROBOT_PASSWORD"  # noqa: S105 - the variable's name, not a password

#: Inputs that, when changed, need a new vSwitch; everything else is updated in place.
REPLACE_ON = ("base_url",)
#: Inputs Robot can change in place (POST /vswitch/{id}, POST/DELETE /vswitch/{id}/server).
UPDATE_IN_PLACE = ("name", "vlan", "servers")
#: Inputs that change how we talk to Robot, not what exists there.
CREDENTIALS = ("robot_user", "robot_password")


class VSwitchInputs(BaseModel):
    """The resource's inputs, validated at every provider call (and in ``check`` before a preview)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=100)
    vlan: int = Field(ge=VLAN_MIN, le=VLAN_MAX, description="802.1Q VLAN ID; Hetzner allows 4000-4091")
    servers: list[int] = Field(default_factory=list, description="Robot server numbers to attach")
    base_url: str = DEFAULT_BASE_URL
    robot_user: str | None = None
    robot_password: SecretStr | None = None

    @field_validator("vlan", mode="before")
    @classmethod
    def _float_vlan(cls, v: Any) -> Any:
        # Pulumi's wire format turns integers into floats.
        return int(v) if isinstance(v, float) and v.is_integer() else v

    @field_validator("servers", mode="before")
    @classmethod
    def _server_numbers(cls, v: Any) -> Any:
        if v is None:
            return []
        out = [int(s) if isinstance(s, float) and s.is_integer() else s for s in v]
        dupes = sorted((s for s, n in Counter(out).items() if n > 1), key=str)
        if dupes:
            raise ValueError(f"server numbers listed more than once: {dupes}")
        if any(not isinstance(s, int) or isinstance(s, bool) or s <= 0 for s in out):
            raise ValueError(f"servers must be positive Robot server numbers, got {v!r}")
        if len(out) > 100:
            raise ValueError(f"a vSwitch holds at most 100 servers, got {len(out)}")
        return sorted(out)


def _plain(props: dict[str, Any]) -> dict[str, Any]:
    """Drop Pulumi's secret wrappers. The engine sends plain values to providers that do not accept secrets (as
    dynamic providers declare), but a wrapped value must never reach httpx as a dict."""
    return {k: pulumi.runtime.rpc.unwrap_rpc_secret(v) for k, v in props.items()}


def _validate(props: dict[str, Any]) -> VSwitchInputs:
    try:
        return VSwitchInputs.model_validate(_plain(props))
    except ValidationError as e:
        lines = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'inputs'}: {err['msg']}" for err in e.errors())
        raise ValueError(f"Robot vSwitch inputs are invalid: {lines}") from None


def _is_unknown(value: Any) -> bool:
    return value == pulumi.runtime.rpc.UNKNOWN if isinstance(value, str) else False


def _normalise(key: str, value: Any) -> Any:
    """Comparable form of an input; unknowns (preview) stay as the sentinel so they read as a change."""
    if _is_unknown(value) or value is None:
        return value
    if key == "servers":
        try:
            return sorted(int(s) for s in value)
        except (TypeError, ValueError):
            return value
    if key == "vlan" and isinstance(value, float):
        return int(value)
    return value


class VSwitchProvider(dyn.ResourceProvider):
    """create/read/diff/update/delete of one Robot vSwitch with its server attachments.

    Constructor arguments are tunables only (pickled into state): how long to wait for servers that are
    "in process", how often to poll, and the back-off for 403 RATE_LIMIT_EXCEEDED.
    """

    serialize_as_secret_always: ClassVar[bool] = False  # nothing secret is captured by the constructor

    def __init__(self, *, wait_timeout: float = 600.0, poll_interval: float = 10.0,
                 retry: RetryPolicy | None = None, http_timeout: float = 30.0) -> None:
        super().__init__()
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval
        # Stored as plain data so unpickling never depends on pydantic internals.
        self.retry = (retry or RetryPolicy()).model_dump()
        self.http_timeout = http_timeout

    # -- helpers -------------------------------------------------------------------------------------

    @contextmanager
    def _client(self, inputs: VSwitchInputs) -> Iterator[RobotClient]:
        user = inputs.robot_user or os.environ.get(ENV_USER)
        password = inputs.robot_password.get_secret_value() if inputs.robot_password else os.environ.get(ENV_PASSWORD)
        if not user or not password:
            raise ValueError(f"Robot credentials missing: set the secret inputs robot_user/robot_password "
                             f"(stack config) or the environment variables {ENV_USER}/{ENV_PASSWORD}")
        client = RobotClient(user, password, inputs.base_url, retry=RetryPolicy(**self.retry),
                             timeout=self.http_timeout)
        try:
            yield client
        finally:
            client.close()

    def _settle(self, client: RobotClient, vswitch_id: int) -> VSwitch:
        return client.wait_until_settled(vswitch_id, timeout=self.wait_timeout, poll_interval=self.poll_interval)

    def _attach_detach(self, client: RobotClient, vswitch_id: int, current: Sequence[int],
                       desired: Sequence[int]) -> VSwitch:
        """Converge the attachments with at most two writes (one detach, one attach)."""
        to_remove = sorted(set(current) - set(desired))
        to_add = sorted(set(desired) - set(current))
        vswitch = self._settle(client, vswitch_id)
        if to_remove:
            client.remove_servers(vswitch_id, to_remove)
            vswitch = self._settle(client, vswitch_id)
        if to_add:
            client.add_servers(vswitch_id, to_add)
            vswitch = self._settle(client, vswitch_id)
        return vswitch

    @staticmethod
    def _outs(inputs: VSwitchInputs, vswitch: VSwitch) -> dict[str, Any]:
        """Outputs = inputs (so later calls find the credentials) + what Robot reports."""
        outs: dict[str, Any] = {
            "name": vswitch.name,
            "vlan": vswitch.vlan,
            "servers": vswitch.server_numbers,
            "base_url": inputs.base_url,
            "vswitch_id": vswitch.id,
            "cloud_networks": [c.id for c in vswitch.cloud_network],
        }
        if inputs.robot_user is not None:
            outs["robot_user"] = inputs.robot_user
        if inputs.robot_password is not None:
            outs["robot_password"] = inputs.robot_password.get_secret_value()
        return outs

    # -- ResourceProvider ----------------------------------------------------------------------------

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> dyn.CheckResult:
        known = {k: v for k, v in _plain(news).items() if not _is_unknown(v)}
        try:
            VSwitchInputs.model_validate(known)
        except ValidationError as e:
            failures = [dyn.CheckFailure(str(err["loc"][0]) if err["loc"] else "inputs", err["msg"])
                        for err in e.errors()]
            return dyn.CheckResult(news, failures)
        return dyn.CheckResult(news, [])

    def create(self, props: dict[str, Any]) -> dyn.CreateResult:
        inputs = _validate(props)
        with self._client(inputs) as client:
            vswitch = client.create_vswitch(inputs.name, inputs.vlan)
            try:
                if inputs.servers:
                    client.add_servers(vswitch.id, inputs.servers)
                    vswitch = self._settle(client, vswitch.id)
            except Exception as e:
                # Pulumi records nothing when create raises, so an orphan would leak (and keep its VLAN).
                try:
                    client.cancel_vswitch(vswitch.id, "now")
                except RobotError as cancel_error:
                    e.add_note(f"cancelling the half-created vSwitch {vswitch.id} failed too: {cancel_error}")
                else:
                    e.add_note(f"the half-created vSwitch {vswitch.id} was cancelled")
                raise
            return dyn.CreateResult(str(vswitch.id), self._outs(inputs, vswitch))

    def read(self, id_: str, props: dict[str, Any]) -> dyn.ReadResult:
        inputs = _validate(props)
        with self._client(inputs) as client:
            try:
                vswitch = client.get_vswitch(int(id_))
            except RobotNotFound:
                return dyn.ReadResult("", {})
        if vswitch.cancelled:
            # A cancelled vSwitch stays listed but is gone for our purposes; an empty id tells Pulumi so.
            return dyn.ReadResult("", {})
        return dyn.ReadResult(str(vswitch.id), self._outs(inputs, vswitch))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        olds, news = _plain(olds), _plain(news)

        def changed(key: str) -> bool:
            default = [] if key == "servers" else (DEFAULT_BASE_URL if key == "base_url" else None)
            old = _normalise(key, olds.get(key, default))
            new = _normalise(key, news.get(key, default))
            return _is_unknown(new) or old != new

        replaces = [k for k in REPLACE_ON if changed(k)]
        changes = replaces or [k for k in (*UPDATE_IN_PLACE, *CREDENTIALS) if changed(k)]
        # Replacing means the same servers would join a second vSwitch with the same VLAN, which Robot refuses
        # (VSWITCH_VLAN_NOT_UNIQUE): delete the old one first.
        return dyn.DiffResult(changes=bool(changes), replaces=replaces, stables=["vswitch_id"],
                              delete_before_replace=bool(replaces))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.UpdateResult:
        inputs = _validate(news)
        vswitch_id = int(id_)
        with self._client(inputs) as client:
            vswitch = self._settle(client, vswitch_id)
            if (vswitch.name, vswitch.vlan) != (inputs.name, inputs.vlan):
                client.update_vswitch(vswitch_id, inputs.name, inputs.vlan)
            # Diff against what Robot reports, not the old state, so drift is repaired too.
            if vswitch.server_numbers != inputs.servers:
                vswitch = self._attach_detach(client, vswitch_id, vswitch.server_numbers, inputs.servers)
            vswitch = vswitch.model_copy(update={"name": inputs.name, "vlan": inputs.vlan})
            return dyn.UpdateResult(self._outs(inputs, vswitch))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Cancel now. Already gone or already cancelled counts as success, so a retried destroy converges."""
        inputs = _validate(props)
        with self._client(inputs) as client:
            try:
                client.cancel_vswitch(int(id_), "now")
            except (RobotNotFound, AlreadyCancelled):
                return


class RobotVSwitch(dyn.Resource, module="robot", name="VSwitch"):
    """A Robot vSwitch as a Pulumi resource; ``vswitch_id`` is the numeric id the Cloud subnet couples to."""

    vswitch_id: pulumi.Output[int]
    name: pulumi.Output[str]
    vlan: pulumi.Output[int]
    servers: pulumi.Output[list[int]]
    cloud_networks: pulumi.Output[list[int]]

    def __init__(
        self,
        resource_name: str,
        *,
        name: pulumi.Input[str],
        vlan: pulumi.Input[int],
        servers: pulumi.Input[Sequence[int]],
        robot_user: pulumi.Input[str] | None = None,
        robot_password: pulumi.Input[str] | None = None,
        base_url: pulumi.Input[str] = DEFAULT_BASE_URL,
        provider: VSwitchProvider | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "name": name,
            "vlan": vlan,
            "servers": servers,
            "base_url": base_url,
            "vswitch_id": None,
            "cloud_networks": None,
        }
        secret_keys = []
        for key, value in (("robot_user", robot_user), ("robot_password", robot_password)):
            if value is not None:
                props[key] = pulumi.Output.secret(value)
                secret_keys.append(key)
        # The engine stores outputs in state; keep the credentials encrypted there too.
        secret_opts = pulumi.ResourceOptions(additional_secret_outputs=secret_keys)
        super().__init__(provider or VSwitchProvider(), resource_name, props,
                         pulumi.ResourceOptions.merge(secret_opts, opts))
