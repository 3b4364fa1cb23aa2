"""Issue 7 item 3: Coolify v4.3.11's run-server operations replayed against the box, as Coolify runs them.

Each operation of inkmcp/nodes/coolify_replay.yaml runs through `run_operation` against the session's box
(`run_server_box`: Docker 26 + containerd 1.7 + runsc, configured by the hardening renderer, stand-in images
under Coolify's names): every step piped to `bash -se` inside the box, stopping where Coolify would stop.
The assertions are the design's (runbooks/gvisor-decision.md §6, "Class under A"): where each container
ends up, proven from inside it (`uname -r`: the host's kernel for platform containers, gVisor's 4.4.0 for
tenants; or the selector's own refusal), and that the operation works as Coolify expects (every step that
Coolify checks exits 0, the files it writes hold what it rendered, its status and health checks answer, a
backup reaches the S3 stand-in byte for byte). Afterwards nothing the operation created is left.

The box runs whatever selector the tree renders: these expectations are the hardened selector's (§4.2-4.3).
A failure message names the selector the box ran (its config's platform entries) so a "before" run reads
as such instead of as a broken replay.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from inkmcp.nodes import sandbox
from inkmcp.nodes.replay import load_replay
from inkmcp.nodes.replay_run import GVISOR_KERNEL, HOST_KERNEL, BoxShell, ReplayResult, run_operation

pytestmark = pytest.mark.slow

INKMCP = str(Path(sys.executable).parent / "inkmcp")

# §6 "Class under A", per operation: {container role: class}. No entry = the operation starts no container.
DESIGN: dict[str, dict[str, str]] = {
    "server_validate": {},
    "status_poll": {},
    "proxy_start": {"platform_proxy": "platform"},
    "deploy_helper_start": {"deploy_helper": "platform"},
    "deploy_helper_start_no_docker_config": {"deploy_helper": "platform"},
    "deploy_helper_start_build_server": {"deploy_helper": "platform"},
    "deploy_dockerimage": {"deploy_helper": "platform", "tenant_app": "sandboxed"},
    "deploy_dockercompose": {"deploy_helper": "platform", "tenant_app": "sandboxed"},
    "deploy_restart": {"deploy_helper": "platform", "tenant_app": "sandboxed"},
    "deploy_from_build_server": {"tenant_app": "sandboxed"},
    "postgres_start": {"tenant_database": "sandboxed"},
    "postgres_start_custom_conf": {"tenant_database": "sandboxed"},
    "postgres_start_ssl": {"tenant_database": "sandboxed", "tenant_oneoff": "sandboxed"},
    "redis_start": {"tenant_database": "sandboxed"},
    "redis_start_custom_conf": {"tenant_database": "sandboxed"},
    "redis_start_ssl": {"tenant_database": "sandboxed"},
    "mongodb_start": {"tenant_database": "sandboxed"},
    "mongodb_start_custom_conf": {"tenant_database": "sandboxed"},
    "mongodb_start_ssl": {"tenant_database": "sandboxed", "tenant_oneoff": "sandboxed"},
    "backup_postgres_s3": {"backup_helper": "sandboxed"},
    "backup_postgres_dump_all": {"backup_helper": "sandboxed"},
    "sentinel_start": {"metrics_agent": "refused"},  # decided against (§4.5): no entry, --pid host refused
    "sablier_start": {"scale_to_zero": "platform", "platform_proxy": "platform"},
}
REFUSED_BY_DESIGN = {"sentinel_start": "sentinel.start"}
"""Operations the design refuses on purpose: they must stop exactly at the step that starts the container."""


def test_the_design_table_covers_every_operation_of_the_data() -> None:
    data = load_replay()
    assert set(DESIGN) == {op.id for op in data.operations}
    for op in data.operations:
        assert set(DESIGN[op.id]) == {c.role for c in op.containers}, op.id


@pytest.fixture(scope="module")
def shell(run_server_box) -> BoxShell:
    return BoxShell(run_server_box)


# --- suitecut: the operations run on BOXES boxes at once (the session's and BOXES - 1 of this module's), each box one
# operation after another as before. Most of an operation's ~15-25 s is spent waiting on Coolify's own health-check
# interval (15 s, start period 5 s) or a container's start, so three boxes take ~1/3 of the file's time (CI run 55:
# 315 s, the parallel part's longest file). Every operation still runs alone on its box, with the box's whole node
# state (the `coolify` network, ~/.docker/config.json) to itself, so what each test asserts is unchanged.
BOXES = 3


def _selected_ops(request: pytest.FixtureRequest) -> list[str]:
    """The operations of this module's selected tests (`-k`, a node id: only those run), longest first."""
    ops = [item.callspec.params["op_id"] for item in request.session.items
           if item.module is request.module and "op_id" in getattr(getattr(item, "callspec", None), "params", {})]
    slow_first = ("backup_", "mongodb_", "postgres_", "redis_", "deploy_")
    return sorted(dict.fromkeys(ops), key=lambda op: next(
        (i for i, prefix in enumerate(slow_first) if op.startswith(prefix)), len(slow_first)))


@pytest.fixture(scope="module")
def replays(request: pytest.FixtureRequest, shell: BoxShell) -> Iterator[dict[str, Future]]:
    """{op id: Future of (the box's shell, its ReplayResult)} for the selected operations, run in the background
    on the session's box at once and on up to BOXES - 1 boxes of this module's as soon as each is up (brought up
    here, down at the module's end; a box that failed to come up fails the module's last test at its teardown)."""
    ops = _selected_ops(request)
    futures: dict[str, Future] = {op: Future() for op in ops}
    extra = [Path(tempfile.mkdtemp(prefix="inkbox-replay-")) for _ in range(min(BOXES, max(1, len(ops) // 3)) - 1)]
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for op in ops:
        todo.put(op)
    errors: list[BaseException] = []

    def worker(box: Path | None) -> None:
        if box is None:
            box_shell = shell
        else:
            try:
                sandbox.up(box)
                box_shell = BoxShell(box)
            except BaseException as e:  # raised at the fixture's teardown; the other boxes take its share
                errors.append(e)
                return
        while True:
            try:
                op = todo.get_nowait()
            except queue.Empty:
                return
            try:
                futures[op].set_result((box_shell, run_operation(box_shell, op)))
            except BaseException as e:  # the test of that operation raises it
                futures[op].set_exception(e)

    threads = [threading.Thread(target=worker, args=(box,), daemon=True) for box in [None, *extra]]
    try:
        for t in threads:
            t.start()
        yield futures
    finally:
        for t in threads:
            t.join()
        downs = [threading.Thread(target=_down, args=(box, errors)) for box in extra]  # together, as they came up
        for t in downs:
            t.start()
        for t in downs:
            t.join()
    if errors:
        raise errors[0]


def _down(box: Path, errors: list[BaseException]) -> None:
    """One of `replays`' boxes down; then whatever still names its directory (only if down failed), by PID."""
    from tests.runtime.conftest import _pids_under, _stop

    try:
        sandbox.down(box)
    except BaseException as e:  # raised by `replays` once every box is down
        errors.append(e)
    finally:
        for pid in _pids_under(box):
            _stop(pid, wait=5)
        shutil.rmtree(box, ignore_errors=True)
# --- end


def _selector(shell: BoxShell) -> str:
    """What the box's selector admits as platform, for failure messages."""
    cfg = json.loads((shell.box / "root/etc/inkmcp/runtime-selector.json").read_text())
    entries = cfg.get("platform") or []
    kinds = ["profile " + str(e.get("entry") or e.get("name")) + (" (image unresolved)" if not all(
        i.get("id") for i in e.get("images", [])) else "") if "images" in e else f"name+id {e.get('name')}"
        for e in entries]
    return f"selector sha256 {shell.selector_digest()[:12]}, platform entries: {kinds or 'none'}"


def _report(result: ReplayResult) -> str:
    lines = [f"{result.op}: ok={result.ok} failed_step={result.failed_step} ({result.seconds} s)"]
    lines += [f"  {row.container} ({row.role}): {row.klass}: {row.evidence}" for row in result.containers]
    for check in [*result.files, *result.expectations]:
        if check.ok is False:
            lines.append(f"  FAILED {check.what}: {check.detail}")
    if result.failed_step:
        step = next(s for s in result.steps if s.id == result.failed_step)
        lines.append(f"  step {step.id} exit {step.exit_code}: {step.stderr[-800:]}")
    return "\n".join(lines)


@pytest.mark.parametrize("op_id", list(DESIGN))
def test_operation_runs_as_coolify_expects_with_the_designs_classes(replays: dict[str, Future], shell: BoxShell,
                                                                    op_id: str) -> None:
    if op_id in replays:
        shell, result = replays[op_id].result()
    else:  # not among the selected ones `replays` saw (a run that selects tests otherwise): on the session's box
        result = run_operation(shell, op_id)
    report = _report(result)
    print("\n" + report)
    context = f"{report}\n({_selector(shell)})"
    got = {row.role: row for row in result.containers if row.role != "-"}
    assert {role: row.klass for role, row in got.items()} == DESIGN[op_id], context
    for row in got.values():
        if row.klass == "platform":
            assert row.kernel == HOST_KERNEL, context  # seen from inside: the node's kernel (runc)
        elif row.klass == "sandboxed" and row.role in ("tenant_oneoff", "backup_helper") and row.kernel is None:
            # --rm one-offs are gone before a probe: the selector's own record of the runtime it started.
            assert "selector recorded runsc" in row.evidence, context
        elif row.klass == "sandboxed":
            assert row.kernel == GVISOR_KERNEL != HOST_KERNEL, context
        elif row.klass == "refused":
            assert row.evidence.startswith("inkmcp-runtime: "), context
    if op_id in REFUSED_BY_DESIGN:
        assert result.failed_step == REFUSED_BY_DESIGN[op_id], context
    else:
        assert result.ok, context
        assert result.failed_step is None, context
        assert all(p.ok for p in result.prerequisites), context
    if op_id == "backup_postgres_s3":
        # The upload is what the backup is for: the S3 stand-in checked the SigV4 signature and holds the dump.
        upload = [c for c in result.expectations if c.what.startswith("the S3 stand-in holds the uploaded dump")]
        assert len(upload) == 1 and upload[0].ok, context
        assert "same as /data/coolify/backups/databases/" in upload[0].detail, context
    if op_id == "sablier_start":
        # The muscle's step as on a fresh node: the network with the vSwitch MTU, Sablier and the proxy on the box's
        # pinned digests, the proxy's command ending in the Sablier flags: each checked by a command, none skipped.
        checked = [c for c in result.expectations if c.ok is not None]
        assert len(checked) == 4 and all(c.ok for c in checked), context
        assert any("mtu" in c.detail and "\n1400" in c.detail for c in checked), context
        assert result.values["sablier_image"] == shell.state.platform["sablier"], context
        assert result.values["proxy_image"] == shell.state.platform["proxy"], context
    # Independent operations: nothing the run created is left in the box.
    for row in [*result.containers, *(r for p in result.prerequisites for r in p.containers)]:
        if row.docker_name:
            assert not shell.docker("inspect", row.docker_name, timeout=30).ok, f"{row.docker_name} left behind"


def test_cli_prints_the_matrix_as_json(shell: BoxShell) -> None:
    proc = subprocess.run([INKMCP, "nodes", "replay", "run", "--box", str(shell.box), "--json",
                           "server_validate", "sentinel_start"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 1, proc.stderr  # sentinel_start is refused by design: not "as Coolify expects"
    out = json.loads(proc.stdout)
    assert out["selector_sha256"] == shell.selector_digest()
    rows = {(r["op"], r["container"]): r for r in out["matrix"]}
    assert rows[("server_validate", "-")]["class"] == "no_container"
    assert rows[("sentinel_start", "coolify-sentinel")]["class"] == "refused"
    assert rows[("sentinel_start", "coolify-sentinel")]["evidence"].startswith("inkmcp-runtime: ")
    assert [r["op"] for r in out["results"]] == ["server_validate", "sentinel_start"]
    assert "sentinel_start: NOT OK (stopped at sentinel.start)" in proc.stderr
