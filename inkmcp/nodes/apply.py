"""Converge a host over SSH (fabric): upload what differs, then run the plan's idempotent commands.

A second apply on a converged host uploads nothing and every command stays silent, so the report
says "no changes". Firewall changes are never made step by step over the session: the rules file is
uploaded and loaded in one iptables-restore transaction by the host-side script.
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
    sudo_prefix,
)
from inkmcp.nodes.render import HostParams, render_plan

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

    drifted = {d.target for d in file_drift(plan, remote_file_states(conn, list(plan.files), timeout))}
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

    for command in plan.commands:
        out = run(conn, command, command.split()[0], timeout)
        changes += [line.removeprefix("changed:").strip() for line in out.splitlines() if line.startswith("changed:")]
    return ApplyReport(host=conn.host, changes=changes)


__all__ = ["ApplyReport", "Drift", "NodeError", "apply_host", "check_host", "connect"]
