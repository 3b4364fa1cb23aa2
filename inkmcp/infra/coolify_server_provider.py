"""Pulumi dynamic provider: one run server, or the build server, registered in Coolify through its API
(`inkmcp.coolify.registration`). The muscle stack registers run servers with it, the factory stack the build
server (`is_build_server: true`, no proxy inputs: Coolify runs no proxy there).

Why a dynamic provider, and not the remote command on the master it replaces (curl + jq, then `sed` on the
node's proxy compose) nor a local command running the same Python:

* The node's registration, Sentinel switch and proxy configuration are one idempotent `reconcile`, written once in
  typed Python against a client that is checked against Coolify's spec and tested against the Coolify stand-in
  (tests/coolify/). A shell copy of it could be neither, and the old one left the API token in a file on the
  master so that its delete step could read it.
* `diff` asks Coolify what would change (GETs only: `reconcile(apply=False)`), so `pulumi preview` shows drift
  that happened in Coolify, e.g. "Reset proxy configuration" dropping the Sablier flags and the digest pin, and
  `pulumi up` repairs it. A command re-runs only when its own inputs change (review #17), and a `sed` on the
  node lasts only until Coolify's next proxy restart rewrites the file from its database (review #7).
* The state keeps the server's uuid: delete removes exactly that server, and Coolify refuses while the server
  hosts resources (the update fails loudly instead of orphaning tenant apps); a re-addressed node is patched,
  not re-created.

The price: the machine running `pulumi up` talks to Coolify's API itself. `api_url` must keep the token off the
internet in clear text (review #14, `check_api_url`): `https://<Coolify's instance domain>`, the master's private
address from inside the Cloud Network, or an SSH tunnel (`ssh -L 8000:127.0.0.1:8000 root@<master>` and
`http://127.0.0.1:8000`). If Coolify is unreachable, preview and up fail with that message instead of guessing.

As with the vSwitch provider, the provider object is pickled into the state: its constructor holds tunables
only; the token is a secret input (and secret output, so later calls can authenticate), never a log line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import pulumi
import pulumi.dynamic as dyn
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from inkmcp.coolify.client import CoolifyClient, CoolifyError, RetryPolicy, check_api_url
from inkmcp.coolify.proxy import check_pinned_image, check_plugin_version
from inkmcp.coolify.registration import (
    BuildServerRegistration,
    Registration,
    RegistrationError,
    RunServerRegistration,
    reconcile,
    unregister,
)

T = TypeVar("T")

#: Inputs that say how the server must look in Coolify (all updated in place).
DESIRED = ("ip", "private_key_uuid", "name", "description", "port", "user", "proxy_image", "sablier_plugin_version")
#: Inputs that change how we talk to Coolify, not what it holds.
CREDENTIALS = ("api_url", "api_token")
#: A new IP is patched (apps stay on the server), another Coolify is talked to; only the role replaces: a run
#: server is never flipped into a build server or back (`inkmcp.coolify.registration`), so the old one goes first
#: (Coolify allows one server per IP).
REPLACE_ON: tuple[str, ...] = ("is_build_server",)


class CoolifyServerInputs(BaseModel):
    """The resource's inputs, validated at every provider call (and in `check` before a preview)."""

    model_config = ConfigDict(extra="ignore")

    api_url: str
    api_token: SecretStr
    ip: str
    private_key_uuid: str
    name: str
    description: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    is_build_server: bool = False
    proxy_image: str | None = None
    """Run servers only (required there)."""
    sablier_plugin_version: str | None = None
    """Run servers only (required there)."""

    @field_validator("api_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_api_url(v, "coolifyApiUrl")

    @field_validator("proxy_image")
    @classmethod
    def _pinned(cls, v: str | None) -> str | None:
        return None if v is None else check_pinned_image(v, "proxyImage")

    @field_validator("sablier_plugin_version")
    @classmethod
    def _plugin(cls, v: str | None) -> str | None:
        return None if v is None else check_plugin_version(v, "sablierPluginVersion")

    @model_validator(mode="after")
    def _no_proxy_on_a_build_server(self) -> CoolifyServerInputs:
        if self.is_build_server and (self.proxy_image is not None or self.sablier_plugin_version is not None):
            raise ValueError("is_build_server: Coolify runs no proxy on a build server; pass neither proxy_image nor "
                             "sablier_plugin_version for it")
        return self

    @field_validator("port", mode="before")
    @classmethod
    def _float_port(cls, v: Any) -> Any:
        return int(v) if isinstance(v, float) and v.is_integer() else v  # Pulumi's wire turns ints into floats

    def registration(self) -> Registration:
        """What `reconcile` converges; a run server without proxy inputs fails here, naming the field."""
        common = {"ip": self.ip, "private_key_uuid": self.private_key_uuid, "name": self.name,
                  "description": self.description, "port": self.port, "user": self.user}
        if self.is_build_server:
            return BuildServerRegistration(**common)  # type: ignore[arg-type]
        return RunServerRegistration(**common, proxy_image=self.proxy_image,  # type: ignore[arg-type]
                                     sablier_plugin_version=self.sablier_plugin_version)


def _plain(props: dict[str, Any]) -> dict[str, Any]:
    return {k: pulumi.runtime.rpc.unwrap_rpc_secret(v) for k, v in props.items()}


def _is_unknown(value: Any) -> bool:
    return isinstance(value, str) and value == pulumi.runtime.rpc.UNKNOWN


def _validate(props: dict[str, Any]) -> CoolifyServerInputs:
    try:
        return CoolifyServerInputs.model_validate(_plain(props))
    except ValidationError as e:
        lines = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'inputs'}: {err['msg']}" for err in e.errors())
        raise ValueError(f"Coolify server inputs are invalid: {lines}") from None


class CoolifyServerProvider(dyn.ResourceProvider):
    """create/read/diff/update/delete of one run server in Coolify. Constructor arguments are tunables only."""

    serialize_as_secret_always: ClassVar[bool] = False  # the constructor captures nothing secret

    def __init__(self, *, validation_timeout: float = 300.0, poll_interval: float = 3.0, http_timeout: float = 30.0,
                 retry: RetryPolicy | None = None) -> None:
        super().__init__()
        self.validation_timeout = validation_timeout
        self.poll_interval = poll_interval
        self.http_timeout = http_timeout
        self.retry = (retry or RetryPolicy()).model_dump()  # plain data: unpickling never depends on pydantic

    # -- helpers -------------------------------------------------------------------------------------------

    def _run(self, inputs: CoolifyServerInputs, work: Callable[[CoolifyClient], Awaitable[T]]) -> T:
        """Run `work` with a client for `inputs` on a fresh event loop (the provider host calls us from a gRPC
        worker thread, where no loop runs)."""

        async def go() -> T:
            async with CoolifyClient(inputs.api_url, inputs.api_token, timeout=self.http_timeout,
                                     retry=RetryPolicy(**self.retry), url_setting="coolifyApiUrl",
                                     token_setting="coolifyApiToken") as client:  # noqa: S106 - a setting name
                return await work(client)

        try:
            return asyncio.run(go())
        except CoolifyError as e:
            if e.status is None:
                e.add_note("the machine running `pulumi up` must reach Coolify's API at coolifyApiUrl "
                           f"({inputs.api_url}): https://<instance domain>, the private address from inside the "
                           "Cloud Network, or an SSH tunnel to the master (http://127.0.0.1:8000)")
            raise

    def _reconcile(self, inputs: CoolifyServerInputs, *, apply: bool, known_uuid: str | None) -> Any:
        return self._run(inputs, lambda c: reconcile(
            c, inputs.registration(), apply=apply, known_uuid=known_uuid,
            validation_timeout=self.validation_timeout, poll_interval=self.poll_interval))

    @staticmethod
    def _outs(inputs: CoolifyServerInputs, uuid: str) -> dict[str, Any]:
        outs = inputs.model_dump(mode="json", exclude={"api_token"})
        outs["api_token"] = inputs.api_token.get_secret_value()  # marked secret by the resource
        outs["uuid"] = uuid
        return outs

    # -- ResourceProvider ----------------------------------------------------------------------------------

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> dyn.CheckResult:
        plain = _plain(news)
        unknown = {k for k, v in plain.items() if _is_unknown(v)}  # not known before apply (preview)
        failures = []
        try:
            CoolifyServerInputs.model_validate({k: v for k, v in plain.items() if k not in unknown}).registration()
        except ValidationError as e:
            failures = [dyn.CheckFailure(str(err["loc"][0]) if err["loc"] else "inputs", err["msg"])
                        for err in e.errors()
                        # a value unknown until apply cannot be judged (missing, or None where a run server
                        # needs its proxy inputs)
                        if not (err["loc"] and str(err["loc"][0]) in unknown)]
        return dyn.CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> dyn.CreateResult:
        inputs = _validate(props)
        outcome = self._reconcile(inputs, apply=True, known_uuid=None)
        return dyn.CreateResult(outcome.uuid, self._outs(inputs, outcome.uuid))

    def read(self, id_: str, props: dict[str, Any]) -> dyn.ReadResult:
        inputs = _validate(props)

        async def fetch(client: CoolifyClient) -> Any:
            try:
                return await client.get_server(id_)
            except CoolifyError as e:
                if e.status == 404:
                    return None
                raise

        server = self._run(inputs, fetch)
        if server is None:
            return dyn.ReadResult("", {})  # removed in Coolify: Pulumi will create it again
        outs = self._outs(inputs, id_)
        outs.update(ip=server.ip, name=server.name, description=server.description, port=server.port,
                    user=server.user)
        return dyn.ReadResult(id_, outs)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        olds, news = _plain(olds), _plain(news)
        # State written before the build-server role existed has no `is_build_server`: that is a run server, and
        # must not read as a role change (a replacement would delete the run server in Coolify).
        olds.setdefault("is_build_server", False)
        news.setdefault("is_build_server", False)
        changed = [k for k in (*DESIRED, *REPLACE_ON, *CREDENTIALS)
                   if _is_unknown(news.get(k)) or _norm(olds.get(k)) != _norm(news.get(k))]
        if changed:
            replaces = [k for k in REPLACE_ON if k in changed]
            return dyn.DiffResult(changes=True, replaces=replaces, stables=["uuid"],
                                  delete_before_replace=bool(replaces))
        # Inputs unchanged: has Coolify drifted (Sentinel back on, proxy configuration reset, server renamed)?
        plan = self._reconcile(_validate(news), apply=False, known_uuid=id_)
        return dyn.DiffResult(changes=bool(plan.writes), replaces=[], stables=["uuid"], delete_before_replace=False)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.UpdateResult:
        inputs = _validate(news)
        outcome = self._reconcile(inputs, apply=True, known_uuid=id_)
        if outcome.uuid != id_:
            raise RegistrationError(
                f"Coolify server {id_} is gone (deleted in Coolify?) and {outcome.uuid} was registered for "
                f"{inputs.ip} instead; run `pulumi refresh` so the state follows")
        return dyn.UpdateResult(self._outs(inputs, id_))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Remove the server from Coolify; already gone counts as success, so a retried destroy converges."""
        inputs = _validate(props)
        self._run(inputs, lambda c: unregister(c, id_, inputs.ip))


def _norm(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


class CoolifyServer(dyn.Resource, module="coolify", name="Server"):
    """A run server (or, with `is_build_server=True` and no proxy inputs, the build server) as Coolify knows it;
    `uuid` is Coolify's id (also the resource id)."""

    uuid: pulumi.Output[str]

    def __init__(self, resource_name: str, *, api_url: pulumi.Input[str], api_token: pulumi.Input[str],
                 ip: pulumi.Input[str], private_key_uuid: pulumi.Input[str], name: pulumi.Input[str],
                 description: pulumi.Input[str] | None, port: pulumi.Input[int], user: pulumi.Input[str],
                 proxy_image: pulumi.Input[str] | None = None, sablier_plugin_version: pulumi.Input[str] | None = None,
                 is_build_server: bool = False, provider: CoolifyServerProvider | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        props: dict[str, Any] = {
            "api_url": api_url, "api_token": pulumi.Output.secret(api_token), "ip": ip,
            "private_key_uuid": private_key_uuid, "name": name, "description": description, "port": port,
            "user": user, "proxy_image": proxy_image, "sablier_plugin_version": sablier_plugin_version,
            "is_build_server": is_build_server, "uuid": None,
        }
        secret_opts = pulumi.ResourceOptions(additional_secret_outputs=["api_token"])
        super().__init__(provider or CoolifyServerProvider(), resource_name, props,
                         pulumi.ResourceOptions.merge(secret_opts, opts))
