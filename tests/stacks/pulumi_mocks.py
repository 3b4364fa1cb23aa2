"""Pulumi mock runtime helpers shared by the stack tests.

Pulumi's `MockResourceArgs` carries neither `protect`, `depends_on`, the parent nor the replacement options
(`ignore_changes`, `delete_before_replace`, `replace_on_changes`), so `RecordingMonitor` records them from the
raw RegisterResource request (fields `protect`, `parent`, `dependencies`, `ignoreChanges`, `deleteBeforeReplace`,
`replaceOnChanges` of pulumi's `RegisterResourceRequest`, proto/pulumi/resource.proto). Mocks are
process-global: call `install()` from an autouse fixture and build components inside the test (see
../../../shared/TESTING-INFRA.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as pmocks

STACK_REFERENCE = "pulumi:pulumi:StackReference"


@dataclass
class Registered:
    """One RegisterResource call as the engine would have seen it."""

    type: str
    name: str
    urn: str
    inputs: dict[str, Any]
    custom: bool
    id: str = ""
    protect: bool = False
    read: bool = False
    parent: str = ""
    dependencies: list[str] = field(default_factory=list)
    ignore_changes: list[str] = field(default_factory=list)
    """Property paths as the engine gets them (the SDK translates snake_case names to the schema's camelCase)."""
    delete_before_replace: bool = False
    replace_on_changes: list[str] = field(default_factory=list)
    """What the program or the SDK itself (e.g. pulumi-command's `triggers[*]`) declared replace-forcing."""


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers every resource with its inputs plus an id; StackReferences with canned outputs."""

    def __init__(self, stack_outputs: Mapping[str, Mapping[str, Any]] | None = None,
                 extra_state: Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]] | None = None) -> None:
        self.stack_outputs = dict(stack_outputs or {})
        self.extra_state = extra_state
        self.inputs_by_name: dict[tuple[str, str], dict[str, Any]] = {}
        self._next_id = 1000

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.inputs_by_name[(args.typ, args.name)] = dict(args.inputs)
        if args.typ == STACK_REFERENCE:
            ref = args.inputs.get("name") or args.name
            return f"{args.name}_id", {"name": ref, "outputs": dict(self.stack_outputs.get(ref, {}))}
        # Hetzner ids are numbers; components convert them with int(), so the mock hands out numeric ids.
        self._next_id += 1
        state = dict(args.inputs)
        state.setdefault("ipv4Address", f"203.0.113.{self._next_id % 250 + 1}")
        if args.typ == "hcloud:index/storageBox:StorageBox":
            state.update(username="u1000", server="u1000.your-storagebox.de")
        if self.extra_state:
            state.update(self.extra_state(args))
        return str(self._next_id), state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


class RecordingMonitor(pmocks.MockMonitor):
    """MockMonitor that keeps protect, parent, dependencies and the replacement options of every registration."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.registered: list[Registered] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            mocks: RecordingMocks = self.mocks  # type: ignore[assignment]
            self.registered.append(Registered(
                type=request.type,
                name=request.name,
                urn=response.urn,
                inputs=mocks.inputs_by_name.get((request.type, request.name), {}),
                custom=bool(request.custom),
                id=response.id,
                protect=bool(request.protect),
                parent=request.parent,
                dependencies=list(request.dependencies),
                ignore_changes=list(request.ignoreChanges),
                delete_before_replace=bool(request.deleteBeforeReplace),
                replace_on_changes=list(request.replaceOnChanges),
            ))
        return response

    def ReadResource(self, request: Any) -> Any:
        """Reads (StackReference is one) are recorded too, as non-custom-created entries with `read=True`."""
        response = super().ReadResource(request)
        mocks: RecordingMocks = self.mocks  # type: ignore[assignment]
        self.registered.append(Registered(
            type=request.type, name=request.name, urn=response.urn,
            inputs=mocks.inputs_by_name.get((request.type, request.name), {}), custom=False, read=True,
            parent=request.parent, dependencies=list(request.dependencies)))
        return response

    # Query helpers used by the tests.
    def of_type(self, type_: str) -> list[Registered]:
        return [r for r in self.registered if r.type == type_]

    def by_name(self, name: str) -> Registered:
        found = [r for r in self.registered if r.name == name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources named {name!r}; have {[r.name for r in self.registered]}")
        return found[0]

    def types(self) -> list[str]:
        return [r.type for r in self.registered]


def install(stack_outputs: Mapping[str, Mapping[str, Any]] | None = None,
            extra_state: Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]] | None = None,
            ) -> RecordingMonitor:
    """Install fresh mocks (process-global) and return the monitor that records registrations.

    Pulumi's mocks make futures on the thread's current event loop. A pytest-asyncio test that ran before in the
    same process leaves none set (`set_event_loop(None)` at its loop's teardown), and asyncio then refuses to make
    one (CI run 50, where the file order put async tests first on that worker): a loop is set here if none is."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = RecordingMocks(stack_outputs, extra_state)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="inkmcp", stack="test", preview=False, monitor=monitor)
    return monitor


def unwrap_secret(value: Any) -> Any:
    """Inputs marked secret arrive as {<sig key>: <secret sig>, 'value': ...}; return the value either way."""
    if isinstance(value, dict) and pulumi.runtime.rpc._special_sig_key in value:
        return value.get("value")
    return value


def is_secret(value: Any) -> bool:
    rpc = pulumi.runtime.rpc
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def run(program: Callable[[], Any]) -> None:
    """Run a program under the mocks; returns once every registration has finished (or raises)."""

    @pulumi.runtime.test
    def _program() -> Any:
        return program()

    with _bcrypt_once_per_input():
        _program()


# --- suitefast: the factory's registry step hashes each registry user's password with bcrypt at the production cost
# (~0.5 s of CPU each, half of a whole mocked factory build). Its salt is keyed (nodes/registry.htpasswd_line), so
# the hash of one password and salt is always the same: a program run here computes each once per process, with the
# real bcrypt. Only inside `run` (tests/buildpath/test_render.py calls htpasswd_line itself, uncached).
_HASHES: dict[bytes, bytes] = {}


@contextlib.contextmanager
def _bcrypt_once_per_input() -> Iterator[None]:
    import bcrypt

    real = bcrypt.hashpw

    def hashpw(password: bytes, salt: bytes) -> bytes:
        key = hashlib.sha256(salt + b"\0" + password).digest()
        if key not in _HASHES:
            _HASHES[key] = real(password, salt)
        return _HASHES[key]

    bcrypt.hashpw = hashpw
    try:
        yield
    finally:
        bcrypt.hashpw = real
# --- end
