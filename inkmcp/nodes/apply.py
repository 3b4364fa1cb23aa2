"""Converge a host over SSH (fabric): upload what differs, then run the plan's idempotent commands.

A second apply on a converged host uploads nothing and every command stays silent, so the report
says "no changes". Firewall changes are never made step by step over the session: the rules file is
uploaded and loaded in one iptables-restore transaction by the host-side script.

The gVisor selector config is the one file the node itself completes: the plan's pin command
(hardening/scripts/inkmcp-pin-platform) fills in each platform image's ID on the node. A node file that
differs from the render only there is left alone (`check.selector_config_drift`), so a converged node is not
re-uploaded an unresolved config (whose reserved names would be refused until the pin ran again). When the
render did change, the new config is uploaded and the pin, later in the same plan, resolves it.
"""

from __future__ import annotations

import io
import posixpath
import shlex
from pathlib import Path

from fabric import Connection
from pydantic import BaseModel

from inkmcp.nodes.check import (
    DEFAULT_TIMEOUT,
    Drift,
    NodeError,
    check_host,
    file_drift,
    remote_file_states,
    run,
    selector_config_drift,
    sudo_prefix,
)
from inkmcp.nodes.render import HostParams, pin_platform_command, render_plan

PULL_TIMEOUT = 600.0
"""Per platform image for the pin command (the script's own per-pull limit): pulling a several-hundred-MB
image takes minutes, and the per-command timeout is there for hung sessions, not for downloads."""

SSHD_DROPIN_SUFFIX = "/etc/ssh/sshd_config.d/50-inkmcp-hardening.conf"


class ApplyReport(BaseModel):
    """What an apply changed (`changed:` lines in order); empty means the host was already converged."""

    host: str
    changes: list[str]

    def summary(self) -> str:
        return "no changes" if not self.changes else "\n".join(f"changed: {c}" for c in self.changes)


def connect(
    host: str,
    user: str = "root",
    port: int = 22,
    key_filename: str | Path | None = None,
    connect_timeout: float = 10.0,
) -> Connection:
    """A fabric connection that only uses the given key (no agent, no ~/.ssh guessing), so what works in
    a test works the same in CI and on an operator laptop."""
    kwargs: dict[str, object] = {"look_for_keys": key_filename is None, "allow_agent": key_filename is None}
    if key_filename is not None:
        kwargs["key_filename"] = str(key_filename)
    return Connection(host=host, user=user, port=port, connect_timeout=connect_timeout, connect_kwargs=kwargs)


def _upload(conn: Connection, files: dict[str, tuple[str, int]], timeout: float) -> None:
    """Stage files in a private temp dir, then move each into place with an atomic rename.
    A sshd drop-in is validated with `sshd -t` after the move and rolled back if sshd rejects it."""
    staging = run(conn, "mktemp -d /tmp/inkmcp-harden.XXXXXX", "mktemp", timeout, sudo=False).strip()
    try:
        script: list[str] = []
        for i, (path, (content, mode)) in enumerate(files.items()):
            staged = f"{staging}/{i}"
            conn.put(io.BytesIO(content.encode()), remote=staged)
            q, tmp = shlex.quote(path), shlex.quote(path + ".inkmcp-new")
            script.append(f"mkdir -p {shlex.quote(posixpath.dirname(path))}")
            script.append(f"install -m {mode:o} {shlex.quote(staged)} {tmp} && mv -f {tmp} {q}")
        run(conn, "set -e\n" + "\n".join(script), "installing files", timeout)
    finally:
        run(conn, f"rm -rf {shlex.quote(staging)}", "cleanup", timeout, sudo=False, check=False)


def _validate_sshd(conn: Connection, dropin: str, previous: str | None, timeout: float) -> None:
    """Never leave a drop-in that sshd rejects: the next sshd restart would lock everyone out."""
    result = conn.run(sudo_prefix(conn) + "sshd -t", hide=True, warn=True, timeout=timeout, in_stream=False)
    if result.exited == 0:
        return
    if previous is None:
        run(conn, f"rm -f {shlex.quote(dropin)}", "sshd rollback", timeout)
    else:
        _upload(conn, {dropin: (previous, 0o644)}, timeout)
    raise NodeError(f"sshd -t rejected the hardened config on {conn.host}, rolled back: {result.stderr.strip()}")


def apply_host(conn: Connection, params: HostParams, timeout: float = DEFAULT_TIMEOUT) -> ApplyReport:
    """Converge the host to the rendered hardening and report what changed."""
    plan = render_plan(params)
    changes: list[str] = []

    drift = file_drift(plan, remote_file_states(conn, list(plan.files), timeout))
    drifted = {d.target for d in selector_config_drift(drift, plan, params, conn, timeout)}
    if drifted:
        dropin = next((p for p in drifted if p.endswith(SSHD_DROPIN_SUFFIX)), None)
        previous = None
        if dropin and params.manage_services:
            text = run(conn, f"cat {shlex.quote(dropin)} 2>/dev/null || echo __MISSING__", "reading sshd", timeout)
            previous = None if text.strip() == "__MISSING__" else text
        _upload(conn, {p: (plan.files[p], plan.modes[p]) for p in plan.files if p in drifted}, timeout)
        changes += sorted(drifted)
        if dropin and params.manage_services:
            _validate_sshd(conn, dropin, previous, timeout)

    pin = pin_platform_command(params)
    for command in plan.commands:
        out = run(conn, command, command.split()[0], _pin_timeout(params, timeout) if command == pin else timeout)
        changes += [line.removeprefix("changed:").strip() for line in out.splitlines() if line.startswith("changed:")]
    return ApplyReport(host=conn.host, changes=changes)


def _pin_timeout(params: HostParams, timeout: float) -> float:
    """The pin command may pull every platform image once (a new node, a new digest)."""
    refs = {i.ref for p in (params.gvisor.platform if params.gvisor else []) for i in p.images if i.ref}
    return max(timeout, 60.0 + PULL_TIMEOUT * len(refs))


__all__ = ["ApplyReport", "Drift", "NodeError", "apply_host", "check_host", "connect"]
