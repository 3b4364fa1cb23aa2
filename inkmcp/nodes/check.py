"""Drift check: compare a host (or a throw-away root) with the rendered hardening, changing nothing.

Reports per file (missing, content or mode differs), per daemon.json key (e.g. an address pool
rewritten by Coolify's installer), and for every chain the rules files declare, v4 and v6 (rules
missing, extra or out of order), plus the jumps into them from FORWARD/INPUT (present once and first).
With gVisor: the runc shadow and every containerd shim other than runc's where containerd would find it
(the shim guard's own `--check`, so check and converge judge shims the same way), and the platform images of the
selector config: the node fills in their image IDs itself (hardening/scripts/inkmcp-pin-platform), so those
fields are not compared with the render (`selector_config_drift`), while an image the node does not admit as
pinned is drift (`pin_drift`, the pin script's own `--check`).
All reads are batched into a few commands: over SSH each round trip costs ~0.2 s.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import shlex
from functools import cache
from types import ModuleType
from typing import Literal

from fabric import Connection
from pydantic import BaseModel

from inkmcp.nodes.render import (
    DOCKER_USER_UNIT,
    PIN_PLATFORM,
    SCRIPTS_DIR,
    SELECTOR_CONFIG,
    SELECTOR_PATH,
    HostParams,
    HostPlan,
    pin_platform_command,
    render_plan,
    shim_guard_command,
)

DEFAULT_TIMEOUT = 30.0

DriftKind = Literal["file", "daemon.json", "firewall", "service", "runtime"]


class Drift(BaseModel):
    """One difference between the host and the rendered hardening."""

    kind: DriftKind
    target: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.target}: {self.detail}"


class NodeError(RuntimeError):
    """A remote step failed; the message names the step and carries its stderr."""


@cache
def daemon_json_tool() -> ModuleType:
    """The host-side merge script, imported here so check and the host use the exact same logic."""
    return _script_module("inkmcp-daemon-json", "inkmcp_daemon_json")


@cache
def pin_tool() -> ModuleType:
    """The node-side pin script (hardening/scripts/inkmcp-pin-platform), imported so check and apply blank the
    node-resolved fields exactly as the node writes them."""
    return _script_module("inkmcp-pin-platform", "inkmcp_pin_platform")


def _script_module(script: str, name: str) -> ModuleType:
    """A script of hardening/scripts (no .py suffix: it is installed on nodes as a command) loaded as module `name`."""
    loader = importlib.machinery.SourceFileLoader(name, str(SCRIPTS_DIR / script))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def sudo_prefix(conn: Connection) -> str:
    """Non-root users converge through passwordless sudo; -n makes a missing rule fail, not hang."""
    return "" if conn.user == "root" else "sudo -n "


def run(conn: Connection, command: str, what: str, timeout: float, *, sudo: bool = True, check: bool = True) -> str:
    """Run one remote command with a hard timeout (a hung session must never hang the CLI)."""
    full = (sudo_prefix(conn) + "sh -c " + shlex.quote(command)) if sudo else command
    result = conn.run(full, hide=True, warn=True, timeout=timeout, in_stream=False)
    if check and result.exited != 0:
        detail = result.stderr.strip() or result.stdout.strip()
        raise NodeError(f"{what} failed on {conn.host} (exit {result.exited}): {detail}")
    return str(result.stdout)


def remote_file_states(conn: Connection, paths: list[str], timeout: float) -> dict[str, tuple[int, str] | None]:
    """path -> (mode, sha256) or None when missing, in one round trip."""
    script = "\n".join(
        f"if [ -f {shlex.quote(p)} ]; then printf '%s ' \"$(stat -c %a {shlex.quote(p)})\"; "
        f"sha256sum < {shlex.quote(p)} | cut -d' ' -f1; else echo MISSING; fi"
        for p in paths
    )
    lines = run(conn, script, "reading file states", timeout).splitlines()
    if len(lines) != len(paths):
        raise NodeError(f"reading file states on {conn.host}: expected {len(paths)} lines, got {len(lines)}")
    out: dict[str, tuple[int, str] | None] = {}
    for path, line in zip(paths, lines, strict=True):
        if line.strip() == "MISSING":
            out[path] = None
        else:
            mode, digest = line.split()
            out[path] = (int(mode, 8), digest)
    return out


def file_drift(plan: HostPlan, states: dict[str, tuple[int, str] | None]) -> list[Drift]:
    drift: list[Drift] = []
    for path, content in plan.files.items():
        state = states[path]
        want_mode = plan.modes[path]
        if state is None:
            drift.append(Drift(kind="file", target=path, detail="missing"))
            continue
        mode, digest = state
        if digest != hashlib.sha256(content.encode()).hexdigest():
            drift.append(Drift(kind="file", target=path, detail="content differs"))
        if mode != want_mode:
            drift.append(Drift(kind="file", target=path, detail=f"mode {mode:o} (want {want_mode:o})"))
    return drift


def selector_config_drift(drift: list[Drift], plan: HostPlan, params: HostParams, conn: Connection,
                          timeout: float) -> list[Drift]:
    """`drift` without the selector config's "content differs" when the node's file differs from the render only in
    the fields the node resolves itself (each pinned image's id, entrypoint and cmd, filled in by the pin script;
    runbooks/gvisor-decision.md §4.1). Those are this node's facts, not the renderer's: reporting them would make
    every pinned node drift, and re-uploading the render over them would leave the proxy unadmitted until the
    next pin. Whether they are RIGHT is `pin_drift`'s question. Any other difference stays drift."""
    if params.gvisor is None:
        return drift
    path = params.host_path(SELECTOR_CONFIG)
    hits = [d for d in drift if d.kind == "file" and d.target == path and d.detail == "content differs"]
    if not hits or path not in plan.files:
        return drift
    text = run(conn, f"cat {shlex.quote(path)}", "reading the selector config", timeout)
    try:
        node = json.loads(text)
    except ValueError:
        return drift
    tool = pin_tool()
    if tool.unresolved_view(node) != tool.unresolved_view(json.loads(plan.files[path])):
        return drift
    return [d for d in drift if d not in hits]


def pin_drift(conn: Connection, params: HostParams, timeout: float, plan: HostPlan | None = None) -> list[Drift]:
    """Platform images of the node's selector config that the node does not admit as pinned: not resolved (the
    entry admits nothing), not on the node, or an image ID/entrypoint/cmd other than what the pinned digest
    resolves to on this node's Docker. Read by the installed pin script's `--check` (no pull, no write), only
    where the plan runs the pin (a live node: `render_plan` decides, so check and converge agree)."""
    if pin_platform_command(params) not in (plan or render_plan(params)).commands:
        return []
    command = pin_platform_command(params, check=True)
    script_path = shlex.quote(params.host_path(PIN_PLATFORM))
    script = f"if [ -f {script_path} ]; then {command} 2>&1; echo \"__rc=$?\"; else echo __missing; fi"
    out = run(conn, script, "checking the pinned platform images", timeout)
    return parse_pin_check(out, params.host_path(PIN_PLATFORM))


def parse_pin_check(out: str, script_path: str = PIN_PLATFORM) -> list[Drift]:
    """Drift from the output of `inkmcp-pin-platform --check ...; echo __rc=$?` (`__missing`: no script)."""
    if "__missing" in out.split():
        return [Drift(kind="runtime", target=script_path,
                      detail="pin script missing: the platform images' IDs on this node are not checked")]
    drift = []
    for line in out.splitlines():
        if line.startswith("drift: "):
            head, _, why = line.removeprefix("drift: ").partition(": ")
            drift.append(Drift(kind="runtime", target=f"platform {head}", detail=why))
    rc = next((line.removeprefix("__rc=") for line in out.splitlines() if line.startswith("__rc=")), "?")
    if rc not in ("0", "2"):
        drift.append(Drift(kind="runtime", target=script_path,
                           detail=f"pin check failed (exit {rc}): {out.strip()[-300:]}"))
    return drift


def daemon_json_drift(plan: HostPlan, params: HostParams, conn: Connection, timeout: float) -> list[Drift]:
    target = plan.daemon_json
    text = run(conn, f"cat {shlex.quote(target)} 2>/dev/null || echo __MISSING__", "reading daemon.json", timeout)
    if text.strip() == "__MISSING__":
        return [Drift(kind="daemon.json", target=target, detail="missing")]
    try:
        current = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        return [Drift(kind="daemon.json", target=target, detail=f"not valid JSON ({e})")]
    if not isinstance(current, dict):
        return [Drift(kind="daemon.json", target=target, detail="top level is not a JSON object")]
    managed = json.loads(plan.files[plan.managed_daemon_json])
    drift = [Drift(kind="daemon.json", target=target, detail=d) for d in daemon_json_tool().drift(current, managed)]
    if params.gvisor is not None:
        # Any runtime besides the selector lets a tenant ask for it by name and skip the selector's checks.
        foreign = sorted(set(current.get("runtimes") or {}) - set(managed.get("runtimes") or {}))
        if foreign:
            detail = f"extra runtimes {foreign}: a tenant could select them and bypass the gVisor selector"
            drift.append(Drift(kind="daemon.json", target=target, detail=detail))
    return drift


def runc_shadow_drift(params: HostParams, conn: Connection, timeout: float) -> list[Drift]:
    """Docker resolves the reserved runtime name `runc` through PATH: /usr/local/sbin/runc must be the selector,
    or `--runtime runc` runs a tenant on the host kernel (runbooks/gvisor-decision.md)."""
    link, want = params.host_path("/usr/local/sbin/runc"), params.host_path(SELECTOR_PATH)
    have = run(conn, f"test -L {shlex.quote(link)} && readlink -f {shlex.quote(link)} || true", "reading the runc link",
               timeout).strip()
    if have != want:
        return [Drift(kind="file", target=link, detail=f"resolves to {have or 'nothing'} (want {want})")]
    return []


def shim_drift(params: HostParams, conn: Connection, timeout: float) -> list[Drift]:
    """Every containerd shim other than runc's that containerd would run for a runtime name (cwd, PATH, next to
    its binary; review #1): each one lets a tenant bypass the gVisor selector. Read by the installed guard's
    `--check`; a missing guard is file drift already, reported here too since nothing then looks for shims."""
    command = shim_guard_command(params, check=True)
    guard = command.split()[1]
    script = f"if [ -f {guard} ]; then {command}; echo \"__rc=$?\"; else echo __missing; fi"
    out = run(conn, script, "checking containerd shims", timeout)
    if "__missing" in out.split():
        return [Drift(kind="runtime", target=guard, detail="shim guard missing: containerd shims are not checked")]
    drift = []
    for line in out.splitlines():
        if line.startswith("drift: "):
            path, _, why = line.removeprefix("drift: ").partition(" ")
            drift.append(Drift(kind="runtime", target=path, detail=f"non-runc containerd shim {why.strip('()')}"))
    rc = next((line.removeprefix("__rc=") for line in out.splitlines() if line.startswith("__rc=")), "?")
    if rc not in ("0", "2"):
        drift.append(Drift(kind="runtime", target=guard, detail=f"shim guard failed (exit {rc}): {out.strip()[-300:]}"))
    return drift


# Which parent chain jumps to which of our chains, per tool. The apply script keeps INPUT's and the v6
# jumps first in their parent; FORWARD -> DOCKER-USER is Docker's own hook, which it also puts first.
# A rule ahead of any of them sees container traffic before our rules do (an ACCEPT there bypasses them).
JUMPS: dict[str, list[tuple[str, str]]] = {
    "iptables": [("FORWARD", "DOCKER-USER"), ("INPUT", "INKMCP-INPUT")],
    "ip6tables": [("FORWARD", "INKMCP-FORWARD"), ("INPUT", "INKMCP-INPUT")],
}
_MISSING = "__NOCHAIN__"


class RulesFile(BaseModel):
    """One rendered restore file: the chains it declares and, per chain, the `-S` lines it produces
    (the templates are written in the canonical form `iptables -S` prints)."""

    tool: Literal["iptables", "ip6tables"]
    chains: dict[str, list[str]]

    def label(self, chain: str) -> str:
        """Drift target: v4 chains by name (as before), v6 ones marked so INKMCP-INPUT is unambiguous."""
        return chain if self.tool == "iptables" else f"{chain} (IPv6)"


def rules_files(plan: HostPlan) -> list[RulesFile]:
    """Every rules file in the plan (v4 and, when rendered, v6 = the same path + "6")."""
    out: list[RulesFile] = []
    for tool, path in (("iptables", plan.rules_file), ("ip6tables", plan.rules_file + "6")):
        text = plan.files.get(path)
        if text is None:
            continue
        lines = text.splitlines()
        names = [ln[1:].split()[0] for ln in lines if ln.startswith(":")]
        chains = {c: [ln for ln in lines if ln.startswith(f"-A {c} ")] for c in names}
        out.append(RulesFile.model_validate({"tool": tool, "chains": chains}))
    return out


Chains = dict[tuple[str, str], list[str] | None]


def _read_chains(conn: Connection, wanted: list[tuple[str, str]], timeout: float) -> Chains:
    """(tool, chain) -> its `-S` rule lines, or None when the chain does not exist; one round trip."""
    script = "; ".join(
        f"echo '@@ {tool} {chain}'; {tool} -w 5 -S {shlex.quote(chain)} 2>/dev/null || echo {_MISSING}"
        for tool, chain in wanted
    )
    out: Chains = {}
    rules: list[str] = []
    for line in run(conn, script, "reading the firewall chains", timeout).splitlines():
        if line.startswith("@@ "):
            tool, chain = line[3:].split()
            rules = []
            out[(tool, chain)] = rules
        elif out and line.strip() == _MISSING:
            out[next(reversed(out))] = None
        elif line.startswith("-A "):
            rules.append(line)
    missing = [w for w in wanted if w not in out]
    if missing:
        raise NodeError(f"reading the firewall chains on {conn.host}: no answer for {missing}")
    return out


def chain_drift(target: str, live: list[str], want: list[str]) -> list[Drift]:
    """Rules missing or extra, or (same rules) out of order: order is what makes the rejects work."""
    if live == want:
        return []
    drift = [Drift(kind="firewall", target=target, detail=f"rule missing: {r}") for r in want if r not in live]
    drift += [Drift(kind="firewall", target=target, detail=f"unexpected rule: {r}") for r in live if r not in want]
    if not drift:
        drift.append(Drift(kind="firewall", target=target, detail="rules out of order"))
    return drift


def jump_drift(target: str, parent: str, chain: str, live: list[str]) -> list[Drift]:
    """The parent's first rule must be the jump. A further copy below it is harmless (our chain already ran)
    and the apply script leaves it, so it is not drift."""
    jump = f"-A {parent} -j {chain}"
    if jump not in live:
        return [Drift(kind="firewall", target=target, detail=f"jump missing: {jump} (our rules are never reached)")]
    if live[0] != jump:
        return [Drift(kind="firewall", target=target,
                      detail=f"jump not first: {live[0]} comes before {jump} and sees container traffic first")]
    return []


def firewall_drift(plan: HostPlan, conn: Connection, timeout: float) -> list[Drift]:
    """Every chain the rules files declare (v4 and v6), rule by rule, and the jumps into them from
    FORWARD/INPUT (first, once): drift in any of them reopens a path the rules close."""
    files = rules_files(plan)
    wanted: list[tuple[str, str]] = []
    for f in files:
        wanted += [(f.tool, c) for c in f.chains]
        wanted += [(f.tool, parent) for parent, chain in JUMPS[f.tool] if chain in f.chains]
    live = _read_chains(conn, list(dict.fromkeys(wanted)), timeout)
    drift: list[Drift] = []
    for f in files:
        for chain, want in f.chains.items():
            have = live[(f.tool, chain)]
            if have is None:
                hint = " (Docker not started?)" if chain == "DOCKER-USER" else ""
                drift.append(Drift(kind="firewall", target=f.label(chain), detail=f"chain missing{hint}"))
                continue
            drift += chain_drift(f.label(chain), have, want)
        for parent, chain in JUMPS[f.tool]:
            if chain not in f.chains:
                continue
            have = live[(f.tool, parent)]
            drift += jump_drift(f.label(parent), parent, chain, have or [])
    return drift


def service_drift(plan: HostPlan, conn: Connection, timeout: float) -> list[Drift]:
    """Live-host state that files alone do not show: unit enabled, sysctl values in force."""
    drift: list[Drift] = []
    enabled = run(conn, f"systemctl is-enabled {DOCKER_USER_UNIT} 2>/dev/null || true", "systemctl", timeout).strip()
    if enabled != "enabled":
        drift.append(Drift(kind="service", target=DOCKER_USER_UNIT, detail=f"not enabled ({enabled or 'unknown'})"))
    sysctl_file = next(p for p in plan.files if p.endswith("/60-inkmcp-hardening.conf"))
    wanted = {}
    for line in plan.files[sysctl_file].splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = (s.strip() for s in line.split("=", 1))
            wanted[key] = value
    cmd = "; ".join(f"printf '%s\\n' \"$(sysctl -n {shlex.quote(k)} 2>/dev/null)\"" for k in wanted)
    values = run(conn, cmd, "reading sysctl", timeout).splitlines()
    for (key, want), have in zip(wanted.items(), values, strict=False):
        if have.strip() != want:
            detail = f"is {have.strip() or 'unset'} (want {want})"
            drift.append(Drift(kind="service", target=f"sysctl {key}", detail=detail))
    return drift


def check_host(conn: Connection, params: HostParams, timeout: float = DEFAULT_TIMEOUT) -> list[Drift]:
    """Everything that differs from the rendered hardening; an empty list means the host is converged."""
    plan = render_plan(params)
    drift = file_drift(plan, remote_file_states(conn, list(plan.files), timeout))
    drift = selector_config_drift(drift, plan, params, conn, timeout)
    drift += daemon_json_drift(plan, params, conn, timeout)
    if params.gvisor is not None:
        drift += runc_shadow_drift(params, conn, timeout)
        drift += shim_drift(params, conn, timeout)
        drift += pin_drift(conn, params, timeout, plan)
    if params.apply_firewall:
        drift += firewall_drift(plan, conn, timeout)
    if params.manage_services:
        drift += service_drift(plan, conn, timeout)
    return drift
