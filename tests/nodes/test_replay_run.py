"""The replay runner without a box: values, script assembly, step semantics, classification, stand-ins.

Why: the matrix in issue 7's closing note is only as true as the runner that produced it. These tests pin
what the runner does with Coolify's data before any daemon is involved: every run gets fresh uuids (two
runs never collide), steps reach the shell exactly as Coolify sends them (`bash -se`, script on stdin),
the first failing step ends the operation unless the data says `ignore_errors`, a container whose start the
selector refused is reported as refused with the selector's own words, and the git/S3 stand-ins speak the
real protocols (git smart HTTP through `git http-backend`, S3 PUT with a checked SigV4 signature from the
same curl the helper's `mc` uses). The box half is tests/runtime/test_coolify_replay_box.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from inkmcp.nodes.replay import ReplayError, load_replay
from inkmcp.nodes.replay_run import (
    GVISOR_KERNEL,
    HOST_KERNEL,
    BoxFacts,
    ContainerRow,
    ShellResult,
    _Run,
    format_matrix,
    fresh_values,
    name_regex,
    parse_sets,
    run_operation,
    selector_refusal,
)
from inkmcp.nodes.replay_standins import GitHandler, S3Handler, make_repository
from tests.support import serving

FACTS = BoxFacts(home="/root", docker_version="26.1.5+dfsg1")
REFUSAL = ("docker: Error response from daemon: failed to create task for container: failed to create shim task: "
           "OCI runtime create failed: inkmcp-runtime: tenant container may not mount the Docker socket "
           "(/var/run/docker.sock -> /var/run/docker.sock): unknown.")


# --------------------------------------------------------------------------------------------------- values


def test_every_run_gets_fresh_uuids_and_consistent_derived_values() -> None:
    data = load_replay()
    ops = [op.id for op in data.operations]
    one, two = fresh_values(data, ops, FACTS), fresh_values(data, ops, FACTS)
    uuids = [n for n, p in data.placeholders.items() if p.pattern == "[a-z0-9]{24}"]
    assert {"app_uuid", "db_uuid", "deployment_uuid", "backup_execution_uuid"} <= set(uuids)
    for name in uuids:
        assert re.fullmatch(r"[a-z][a-z0-9]{23}", one[name]), (name, one[name])  # cuid2 shape, as Coolify's
        assert one[name] != two[name] and one[name] != data.placeholders[name].example, name
    assert one["container_name"].startswith(one["app_uuid"] + "-")
    assert one["old_container_name"].startswith(one["app_uuid"] + "-")
    assert one["old_container_name"] != one["container_name"]
    assert one["built_image"] == f"{one['app_uuid']}:{one['git_commit']}"
    assert one["app_id"] != two["app_id"]
    # What Coolify reads from the server first comes from the box, not from the examples.
    assert one["stop_time_option"] == "--time"  # Docker 26 < 28
    assert fresh_values(data, ["deploy_helper_start"],
                        BoxFacts(home="/home/op", docker_version="28.0.1"))["stop_time_option"] == "--timeout"
    # Every operation renders with them (render checks each value against its pattern).
    for op in ops:
        data.render(op, {k: v for k, v in one.items() if k in data.required_placeholders(op)})


def test_generated_certificates_are_a_real_ca_and_a_server_certificate_it_signed(tmp_path: Path) -> None:
    values = fresh_values(load_replay(), ["postgres_start_ssl", "mongodb_start_ssl"], FACTS)
    for name in ("ca_crt_pem", "server_crt_pem", "server_key_pem"):
        (tmp_path / name).write_text(values[name])
    verify = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ca_crt_pem", tmp_path / "server_crt_pem"],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    pub_of_cert = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", tmp_path / "server_crt_pem"],
                                 capture_output=True, text=True, check=True).stdout
    pub_of_key = subprocess.run(["openssl", "pkey", "-pubout", "-in", tmp_path / "server_key_pem"],
                                capture_output=True, text=True, check=True).stdout
    assert pub_of_cert == pub_of_key
    assert values["server_pem"] == values["server_crt_pem"] + values["server_key_pem"]


def test_set_values_are_parsed_and_malformed_ones_named() -> None:
    assert parse_sets(["network=coolify", "app_image=a:b=c"]) == {"network": "coolify", "app_image": "a:b=c"}
    with pytest.raises(ReplayError, match=r"--set 'network': write NAME=VALUE"):
        parse_sets(["network"])


# --------------------------------------------------------------------------------------------------- a fake box


@dataclass
class FakeShell:
    """Stands in for BoxShell: records what reaches the box and answers like a daemon would.

    `exit_codes[step id]` and `stderr[step id]` decide a step's outcome; `containers[name]` is what
    `docker inspect` shows for a container a step created (matched by name through the event log).
    """

    steps_by_script: dict[str, str]
    exit_codes: dict[str, int] = field(default_factory=dict)
    stderr: dict[str, str] = field(default_factory=dict)
    creates: dict[str, list[str]] = field(default_factory=dict)
    containers: dict[str, dict] = field(default_factory=dict)
    kernels: dict[str, str] = field(default_factory=dict)
    log: list[tuple[str, ...]] = field(default_factory=list)
    box: Path = Path("/nonexistent-box")
    _window: list[str] = field(default_factory=list)

    def run(self, step, timeout: float = 0) -> ShellResult:
        self.log.append(("step", step.id, " ".join(step.argv()[:2]), step.stdin() or ""))
        self._window = [*self.creates.get(step.id, [])]
        code = self.exit_codes.get(step.id, 0)
        return ShellResult(exit_code=code, stdout="", stderr=self.stderr.get(step.id, ""), seconds=0.01)

    def bash_se(self, script: str, timeout: float = 0) -> ShellResult:
        self.log.append(("bash", script))
        m = re.search(r"docker (?:exec|inspect)[^\n]*?(\S+)'?\s*$", script)
        name = next((n for n in self.containers if n in script), None)
        if name and self.containers[name]["State"].get("Running"):
            out = "26.1.5+dfsg1\n" if "docker version" in script else '"running"\n'
            return ShellResult(exit_code=0, stdout=out, stderr="", seconds=0.01)
        return ShellResult(exit_code=1, stdout="", stderr=f"Error: No such object: {m.group(1) if m else ''}",
                           seconds=0.01)

    def read_file(self, path: str) -> str | None:
        return None

    def docker(self, *args: str, timeout: float = 0, stdin: str | None = None) -> ShellResult:
        if args[0] == "events":
            lines = [json.dumps({"Type": "container", "Action": "create", "Actor": {
                "ID": f"id-{name}", "Attributes": {"name": name, "image": "img"}}}) for name in self._window]
            self._window = []
            return ShellResult(exit_code=0, stdout="\n".join(lines), stderr="", seconds=0)
        if args[0] == "inspect":
            ref = args[-1].removeprefix("id-")
            if ref in self.containers:
                info = {"Id": f"id-{ref}", "Name": "/" + ref, "HostConfig": {"Runtime": "inkmcp"},
                        **self.containers[ref]}
                return ShellResult(exit_code=0, stdout=json.dumps(info), stderr="", seconds=0)
            return ShellResult(exit_code=1, stdout="", stderr="Error: No such object", seconds=0)
        if args[0] == "exec" and args[2:] == ("uname", "-r"):
            self.log.append(("probe", args[1]))
            return ShellResult(exit_code=0, stdout=self.kernels[args[1].removeprefix("id-")] + "\n", stderr="",
                               seconds=0)
        return ShellResult(exit_code=0, stdout="", stderr="", seconds=0)

    def selector_state_dirs(self) -> list[Path]:
        return []


def _rendered(op_id: str):
    data = load_replay()
    values = fresh_values(data, [op_id], FACTS)
    return data, data.render(op_id, values)


def test_steps_reach_the_box_as_coolify_sends_them() -> None:
    """coolify_ssh: the step's commands joined with newlines on the stdin of `bash -se`; inkmcp_bash:
    `bash -euo pipefail -c SCRIPT`. The runner adds nothing to the script."""
    for op_id in ("postgres_start_ssl", "sablier_start"):
        data, r = _rendered(op_id)
        shell = FakeShell(steps_by_script={})
        _Run(shell, data, r).go()  # type: ignore[arg-type]
        sent = [entry for entry in shell.log if entry[0] == "step"]
        assert [e[1] for e in sent] == [s.id for s in r.steps]
        for (_, _, argv, stdin), step in zip(sent, r.steps, strict=True):
            if step.transport == "coolify_ssh":
                assert (argv, stdin) == ("bash -se", step.script + "\n")
            else:
                assert argv == "bash -euo" and step.argv()[-1] == step.script


def test_the_first_failing_step_ends_the_operation_and_the_refusal_is_the_selectors() -> None:
    data, r = _rendered("deploy_dockerimage")
    helper, app = r.values["deployment_uuid"], r.values["container_name"]
    shell = FakeShell(steps_by_script={}, exit_codes={"helper.stop_previous": 1, "helper.run": 125},
                      stderr={"helper.run": REFUSAL}, creates={"helper.run": [helper]})
    run = _Run(shell, data, r)  # type: ignore[arg-type]
    assert run.go() == "helper.run"
    ran = [s.id for s in run.steps]
    # helper.stop_previous failed too, but the data says ignore_errors (no helper left over is normal).
    assert "helper.stop_previous" in ran and ran[-1] == "helper.run"
    assert "start.up" not in ran and "finish.stop_helper" not in ran
    rows = {row.role: row for row in run.rows}
    assert rows["deploy_helper"].klass == "refused"
    assert rows["deploy_helper"].evidence == ("inkmcp-runtime: tenant container may not mount the Docker socket "
                                              "(/var/run/docker.sock -> /var/run/docker.sock)")
    assert rows["tenant_app"].klass == "not_reached" and rows["tenant_app"].container == app
    assert not any(e[0] == "probe" for e in shell.log)  # nothing ran, nothing to look into


def test_containers_are_classified_by_the_kernel_they_see_and_probed_while_they_exist() -> None:
    """The helper is probed (and its expectation checked) right after helper.run, before Coolify's finally
    stops it; the tenant app after start.up; platform = host kernel, sandboxed = gVisor's 4.4.0."""
    data, r = _rendered("deploy_dockerimage")
    helper, app = r.values["deployment_uuid"], r.values["container_name"]
    running = {"State": {"Running": True, "Status": "running"}}
    shell = FakeShell(steps_by_script={}, creates={"helper.run": [helper], "start.up": [app]},
                      containers={helper: running, app: running},
                      kernels={helper: HOST_KERNEL, app: GVISOR_KERNEL})
    run = _Run(shell, data, r)  # type: ignore[arg-type]
    assert run.go() is None
    rows = {row.role: row for row in run.rows}
    assert (rows["deploy_helper"].klass, rows["deploy_helper"].kernel) == ("platform", HOST_KERNEL)
    assert (rows["tenant_app"].klass, rows["tenant_app"].kernel) == ("sandboxed", GVISOR_KERNEL)
    assert "uname -r inside: 4.4.0 (gVisor)" in rows["tenant_app"].evidence
    order = [e[1] if e[0] in ("step", "probe") else "bash" for e in shell.log]
    assert order.index("helper.run") < order.index(f"id-{helper}") < order.index("helper.mkdir_basedir")
    assert order.index("start.up") < order.index(f"id-{app}") < order.index("cleanup.list_old")
    # The conditional health expectation is reported, not run against an app without a healthcheck.
    skipped = [c for c in run.expectations if c.ok is None]
    assert any("only when health_check_enabled" in c.detail for c in skipped)
    assert [c.ok for c in run.expectations if "runs with the application's labels" in c.what] == [True]


def test_an_expectation_on_the_helper_runs_before_coolify_stops_it() -> None:
    data, r = _rendered("deploy_helper_start")
    helper = r.values["deployment_uuid"]
    shell = FakeShell(steps_by_script={}, creates={"helper.run": [helper]},
                      containers={helper: {"State": {"Running": True, "Status": "running"}}},
                      kernels={helper: HOST_KERNEL})
    run = _Run(shell, data, r)  # type: ignore[arg-type]
    assert run.go() is None
    order = [e[1] if e[0] == "step" else "probe" if e[0] == "probe" else e[1] for e in shell.log]
    check = next(i for i, e in enumerate(order) if e.startswith(f"docker exec {helper} bash -c 'docker version"))
    assert order.index("helper.run") < check < order.index("finish.stop_helper")
    assert [c.ok for c in run.expectations if c.ok is not None] == [True]


def test_a_refused_compose_container_is_read_from_its_state_error() -> None:
    data, r = _rendered("mongodb_start")
    db = r.values["db_uuid"]
    error = ("failed to create task for container: failed to create shim task: OCI runtime create failed: "
             "inkmcp-runtime: tenant container may not bind-mount host path /data/coolify/databases/x -> "
             "/docker-entrypoint-initdb.d: unknown")
    shell = FakeShell(steps_by_script={}, exit_codes={"db.start": 1}, stderr={"db.start": "Error response"},
                      creates={"db.start": [db]},
                      containers={db: {"State": {"Running": False, "Status": "created", "Error": error}}})
    run = _Run(shell, data, r)  # type: ignore[arg-type]
    assert run.go() == "db.start"
    (row,) = run.rows
    assert row.klass == "refused" and row.docker_name == db
    assert row.evidence.startswith("inkmcp-runtime: tenant container may not bind-mount host path /data/coolify")


def test_selector_messages_and_container_names() -> None:
    assert selector_refusal(REFUSAL) == ("tenant container may not mount the Docker socket "
                                         "(/var/run/docker.sock -> /var/run/docker.sock)")
    assert selector_refusal("Error response from daemon: pull access denied") is None
    rx = name_regex("d4g0wk0s8c8gk4so0k4ggwsk-d4g0wk0s8c8gk4so0k4ggwsk-run-<12 hex>")
    assert rx.fullmatch("d4g0wk0s8c8gk4so0k4ggwsk-d4g0wk0s8c8gk4so0k4ggwsk-run-0123456789ab")
    assert not rx.fullmatch("d4g0wk0s8c8gk4so0k4ggwsk")
    assert not name_regex("web.app").fullmatch("webXapp")  # literal parts are literal


def test_the_matrix_prints_and_serialises_with_class() -> None:
    row = ContainerRow(op="proxy_start", container="coolify-proxy", role="platform_proxy", klass="refused",
                       evidence="inkmcp-runtime: tenant container may not mount the Docker socket")
    assert row.model_dump(by_alias=True)["class"] == "refused"
    table = format_matrix([row])
    assert table.splitlines()[0].split() == ["op", "container", "class", "evidence"]
    assert "proxy_start" in table and "coolify-proxy (platform_proxy)" in table and "refused" in table


def test_unknown_values_are_refused_before_anything_runs() -> None:
    shell = FakeShell(steps_by_script={})
    with pytest.raises(ReplayError, match=r"--set db_uuidd: no such placeholder; this data declares: .*db_uuid"):
        run_operation(shell, "postgres_start", {"db_uuidd": "x"})  # type: ignore[arg-type]
    assert shell.log == []


# --------------------------------------------------------------------------------------------------- stand-ins


def _s3_server(root: Path) -> ThreadingHTTPServer:
    handler = type("S3", (S3Handler,), {"root": root, "access_key": "AKEXAMPLEKEY123",
                                        "secret": "examplesecretvalue123", "bucket": "coolify-backups"})
    return ThreadingHTTPServer(("127.0.0.1", 0), handler)


def _curl_put(port: int, secret: str, src: Path, path: str) -> subprocess.CompletedProcess[str]:
    """What the helper's `mc cp` does (its stand-in is curl --aws-sigv4, like here)."""
    return subprocess.run(
        ["curl", "-sS", "-o", "/dev/stderr", "-w", "%{http_code}", "--resolve", f"objects.replay.test:{port}:127.0.0.1",
         "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"AKEXAMPLEKEY123:{secret}", "-T", str(src),
         f"http://objects.replay.test:{port}/{path}"], capture_output=True, text=True, timeout=30, check=False)


def test_s3_stand_in_stores_only_correctly_signed_uploads(tmp_path: Path) -> None:
    dump = tmp_path / "pg-dump-postgres-1764504000.dmp"
    dump.write_bytes(b"PGDMP\x00\x01" * 1000)
    with serving(_s3_server(tmp_path / "s3")) as port:
        good = _curl_put(port, "examplesecretvalue123", dump, "coolify-backups/data/coolify/backups/x/")
        forged = _curl_put(port, "not-the-secret", dump, "coolify-backups/forged/")
        other = _curl_put(port, "examplesecretvalue123", dump, "someone-elses-bucket/x/")
    assert good.stdout == "200", good.stderr
    assert forged.stdout == "403" and "<Code>SignatureDoesNotMatch</Code>" in forged.stderr
    assert other.stdout == "404" and "<Code>NoSuchBucket</Code>" in other.stderr
    stored = {str(p.relative_to(tmp_path / "s3")): p.read_bytes() for p in (tmp_path / "s3").rglob("*") if p.is_file()}
    assert stored == {"coolify-backups/data/coolify/backups/x/pg-dump-postgres-1764504000.dmp": dump.read_bytes()}


def test_git_stand_in_serves_coolifys_shallow_clone_by_commit(tmp_path: Path) -> None:
    compose = "services:\n  web:\n    image: 'nginx:1.27-alpine'\n"
    sha = make_repository(tmp_path / "git", "tenant-1/my-app.git", {"docker-compose.yaml": compose})
    handler = type("Git", (GitHandler,), {"root": tmp_path / "git"})
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as port:
        url = f"http://127.0.0.1:{port}/tenant-1/my-app.git"
        ls = subprocess.run(["git", "ls-remote", url, "refs/heads/main"], capture_output=True, text=True,
                            timeout=30, check=False)
        work = Path(tempfile.mkdtemp(dir=tmp_path))
        # Coolify's clone: --depth=1 of the branch, then fetch --depth=1 of the exact commit, checkout.
        clone = subprocess.run(["bash", "-c",
            f"git -c http.version=HTTP/1.1 clone --depth=1 --recurse-submodules --shallow-submodules -b main "
            f"'{url}' '{work}/a' && cd '{work}/a' && git -c http.version=HTTP/1.1 fetch --depth=1 origin '{sha}' "
            f"&& git -c advice.detachedHead=false checkout '{sha}' >/dev/null 2>&1 && cat docker-compose.yaml"],
            capture_output=True, text=True, timeout=60, check=False)
    assert ls.stdout == f"{sha}\trefs/heads/main\n", ls.stderr
    assert clone.returncode == 0, clone.stderr
    assert clone.stdout == compose
