"""The Coolify replay data: it validates, its citations match Coolify's source, and it renders exactly.

Why: the sandbox of issue 7 proves the run-server design by replaying these commands; if the data drifted
from what Coolify v4.3.11 runs, the proof would be about a fiction. These tests are pure (no Docker):
CI has no network, so citations are checked offline through the excerpts stored with the data, which
must contain each step's key tokens; citations of this repository are checked line by line against its
own history. Against Coolify itself, whoever re-pins the data runs the maintenance command
`python -m inkmcp.nodes.replay check --coolify <git dir of coollabsio/coolify>` (the search tool's
fetch makes one); it is not a test because CI cannot fetch Coolify, and a test that skips there proves
nothing.
"""

from __future__ import annotations

import base64
import copy
import functools
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from inkmcp.coolify.proxy import dump_compose, pinned_compose
from inkmcp.infra import muscle
from inkmcp.infra.muscle_config import PlatformContainerSpec
from inkmcp.nodes.replay import (
    DATA_FILE,
    PLACEHOLDER_RE,
    MissingPlaceholderError,
    ReplayError,
    check_sources,
    load_replay,
    main,
    validate_replay,
)
from tests.stacks.test_muscle_stack import make_conf

REPO = Path(__file__).resolve().parents[2]

REQUIRED_OPERATIONS = {
    "proxy_start",
    "deploy_helper_start",
    "deploy_dockerimage",
    "deploy_dockercompose",
    "deploy_restart",
    "postgres_start",
    "postgres_start_custom_conf",
    "postgres_start_ssl",
    "redis_start",
    "redis_start_custom_conf",
    "redis_start_ssl",
    "mongodb_start",
    "mongodb_start_custom_conf",
    "mongodb_start_ssl",
    "backup_postgres_s3",
    "sentinel_start",
    "sablier_start",
}


@functools.cache
def _raw() -> dict:
    return yaml.load(DATA_FILE.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506


def raw_data() -> dict:
    """A private copy of the data file as plain YAML data, for tests that corrupt it."""
    return copy.deepcopy(_raw())


def has_commit(repo: Path, commit: str) -> bool:
    if not repo.exists():
        return False
    proc = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    return proc.returncode == 0


# --------------------------------------------------------------------------------------------------- validation


def test_data_file_validates_and_covers_issue_7_item_3() -> None:
    data = load_replay()
    ids = {op.id for op in data.operations}
    assert REQUIRED_OPERATIONS <= ids, f"missing operations: {sorted(REQUIRED_OPERATIONS - ids)}"
    assert data.upstreams["coolify"].repo == "coollabsio/coolify"
    assert data.upstreams["coolify"].commit == "379abb252621f34b318190bd49b614aed9818716"
    assert data.upstreams["coolify"].version == "4.3.11"
    sablier = data.operation("sablier_start")
    assert sablier.origin == "inkmcp", "Coolify has no Sablier: the operation must say it is ours"
    assert all(op.origin == "coolify" for op in data.operations if op.id != "sablier_start")


def test_citations_of_our_own_files_match_this_repository() -> None:
    data = load_replay()
    commit = data.upstreams["inkmcp"].commit
    assert has_commit(REPO, commit), f"this checkout lacks commit {commit[:12]} (shallow clone?): git fetch --unshallow"
    assert check_sources(data, {"inkmcp": REPO}) == []


def test_check_sources_reports_a_drifted_excerpt() -> None:
    """The snapshot checker catches a citation that no longer matches (run against this repository)."""
    data = load_replay()
    commit = data.upstreams["inkmcp"].commit
    assert has_commit(REPO, commit), f"this checkout lacks commit {commit[:12]} (shallow clone?): git fetch --unshallow"
    raw = raw_data()
    key = next(k for k in raw["excerpts"] if k.startswith("inkmcp:inkmcp/infra/muscle.py:"))
    raw["excerpts"][key] = raw["excerpts"][key].replace("docker rm -f sablier", "docker rm -f sablier2")
    # keep the key tokens consistent so only the snapshot comparison can notice
    for op in raw["operations"]:
        if op["id"] == "sablier_start":
            op["steps"][0]["key_tokens"].remove("docker rm -f sablier")
    drifted = validate_replay(raw)
    problems = check_sources(drifted, {"inkmcp": REPO})
    assert problems and all("excerpt differs from inkmcp:inkmcp/infra/muscle.py:" in p for p in problems)


def test_a_key_token_missing_from_the_excerpt_is_refused_offline() -> None:
    """Offline drift check: if the cited source stopped saying `--rm`, the helper step could not claim it."""
    raw = raw_data()
    key = "coolify:app/Jobs/ApplicationDeploymentJob.php:2164-2182"
    assert "--rm" in raw["excerpts"][key]
    raw["excerpts"][key] = raw["excerpts"][key].replace("--rm", "--detach-keys")
    with pytest.raises(ReplayError) as err:
        validate_replay(raw)
    msg = str(err.value)
    assert "key token '--rm' is not in the upstream excerpt" in msg
    assert "app/Jobs/ApplicationDeploymentJob.php:2164-2182" in msg


def test_a_key_token_missing_from_the_command_is_refused() -> None:
    raw = raw_data()
    step = next(s for s in raw["fragments"]["helper_run_on_run_server"] if s["id"] == "helper.run")
    step["commands"] = [step["commands"][0].replace(" --rm", "")]
    with pytest.raises(ReplayError, match=r"helper\.run: key token '--rm' is not in its commands"):
        validate_replay(raw)


def test_an_excerpt_must_have_exactly_the_cited_lines() -> None:
    raw = raw_data()
    key = "coolify:app/Actions/Proxy/StartProxy.php:56-86"
    raw["excerpts"][key] = raw["excerpts"][key] + "extra line\n"
    with pytest.raises(ReplayError, match=r"StartProxy\.php:56-86 cites 31 lines but the excerpt has 32"):
        validate_replay(raw)


def test_uncited_or_missing_excerpts_are_refused() -> None:
    raw = raw_data()
    raw["excerpts"]["coolify:app/Nowhere.php:1-1"] = "x\n"
    with pytest.raises(ReplayError, match=r"excerpt coolify:app/Nowhere\.php:1-1 is not cited"):
        validate_replay(raw)
    raw = raw_data()
    del raw["excerpts"]["coolify:app/Actions/Proxy/StartProxy.php:56-86"]
    with pytest.raises(ReplayError, match=r"no excerpt for coolify:app/Actions/Proxy/StartProxy\.php:56-86"):
        validate_replay(raw)


def test_an_undeclared_placeholder_in_the_data_is_refused() -> None:
    raw = raw_data()
    op = next(o for o in raw["operations"] if o["id"] == "postgres_start")
    op["steps"][-1]["commands"].append("docker rm -f {db_uuidd}")
    with pytest.raises(ReplayError, match=r"postgres_start: step db\.start uses undeclared placeholder \{db_uuidd\}"):
        validate_replay(raw)


def test_containers_with_host_socket_are_exactly_the_known_ones() -> None:
    """Which containers Coolify (and our muscle stack) give the Docker socket: the design must name each one."""
    data = load_replay()
    socket = {(op.id, c.name, c.role) for op in data.operations for c in op.containers if c.docker_socket}
    roles = {role for _, _, role in socket}
    assert roles == {"platform_proxy", "deploy_helper", "metrics_agent", "scale_to_zero"}
    names = {name for _, name, _ in socket}
    assert names == {"coolify-proxy", "{deployment_uuid}", "coolify-sentinel", "sablier"}
    tenants = [c for op in data.operations for c in op.containers if c.role.startswith("tenant")]
    assert tenants and not any(c.docker_socket or c.pid_host or c.privileged or c.cap_add for c in tenants)
    # host binds that tenant databases need (finding 8): Mongo always binds its init dir
    mongo = data.operation("mongodb_start").containers[0]
    assert [b.source for b in mongo.binds] == ["/data/coolify/databases/{db_uuid}/docker-entrypoint-initdb.d"]


# --------------------------------------------------------------------------------------------------- rendering


def test_every_operation_renders_with_example_values_into_valid_bash() -> None:
    data = load_replay()
    for op in data.operations:
        rendered = data.render(op.id, data.example_values(op.id))
        assert rendered.steps, op.id
        for step in rendered.steps:
            assert not PLACEHOLDER_RE.search(step.script), f"{op.id}/{step.id} left a placeholder: {step.script}"
            proc = subprocess.run(["bash", "-n"], input=step.script + "\n", capture_output=True, text=True)
            assert proc.returncode == 0, f"{op.id}/{step.id}: {proc.stderr}"
        for f in rendered.files:
            assert not PLACEHOLDER_RE.search(f.path + f.content), f"{op.id} {f.path}"
            if f.path.endswith((".yml", ".yaml")):
                assert isinstance(yaml.safe_load(f.content), dict), f"{op.id} {f.path} is not a YAML mapping"
        for c in rendered.containers:
            fields = [
                c.name,
                c.image,
                *c.networks,
                *c.named_volumes,
                *(x for b in c.binds for x in (b.source, b.target)),
            ]
            assert not PLACEHOLDER_RE.search(" ".join(fields)), f"{op.id} container {c.name}"
        for e in rendered.expect:
            assert not PLACEHOLDER_RE.search(e.command or ""), f"{op.id} expect {e.command}"


def test_render_gives_coolifys_exact_helper_command() -> None:
    """The helper `docker run` exactly as ApplicationDeploymentJob.php:2177 builds it (empty $env_flags included)."""
    data = load_replay()
    values = {
        **data.example_values("deploy_helper_start"),
        "deployment_uuid": "abcdefghijklmnopqrstuvwx",
        "home": "/root",
        "network": "coolify",
    }
    run = next(s for s in data.render("deploy_helper_start", values).steps if s.id == "helper.run")
    assert run.script == (
        "docker run -d --network 'coolify' --name abcdefghijklmnopqrstuvwx  --rm "
        "-v /root/.docker/config.json:/root/.docker/config.json:ro -v /root/.docker/buildx:/root/.docker/buildx "
        "-v /var/run/docker.sock:/var/run/docker.sock docker.io/coollabsio/coolify-helper:1.0.15"
    )
    assert run.argv() == ["bash", "-se"] and run.stdin() == run.script + "\n"
    assert not run.ignore_errors


def test_derived_base64_is_the_rendered_file() -> None:
    """`echo <base64> | base64 -d | tee <compose file>`: the base64 is the rendered file, byte for byte."""
    data = load_replay()
    values = {
        **data.example_values("postgres_start"),
        "db_uuid": "zzzzzzzzzzzzzzzzzzzzzzzz",
        "postgres_image": "postgres:15",
    }
    rendered = data.render("postgres_start", values)
    compose = next(f for f in rendered.files if f.path.endswith("/docker-compose.yml"))
    script = rendered.steps[-1].script
    target = "/data/coolify/databases/zzzzzzzzzzzzzzzzzzzzzzzz/docker-compose.yml"
    b64 = re.search(r"echo '([A-Za-z0-9+/=]+)' \| base64 -d \| tee " + re.escape(target), script)
    assert b64, script
    assert base64.b64decode(b64.group(1)).decode() == compose.content
    svc = yaml.safe_load(compose.content)["services"]["zzzzzzzzzzzzzzzzzzzzzzzz"]
    assert svc["image"] == "postgres:15" and svc["container_name"] == "zzzzzzzzzzzzzzzzzzzzzzzz"
    assert "docker compose -f /data/coolify/databases/zzzzzzzzzzzzzzzzzzzzzzzz/docker-compose.yml up -d" in script
    (db,) = rendered.containers
    assert (db.name, db.image, db.role) == ("zzzzzzzzzzzzzzzzzzzzzzzz", "postgres:15", "tenant_database")
    assert db.named_volumes == ["postgres-data-zzzzzzzzzzzzzzzzzzzzzzzz:/var/lib/postgresql/data"]


def test_go_templates_and_shell_braces_stay_literal() -> None:
    data = load_replay()
    script = "\n".join(s.script for s in data.render("proxy_start", data.example_values("proxy_start")).steps)
    for literal in ('--format "{{.Names}}"', "for i in {1..10}; do", "{{println $network}}{{end}}", "'{{.Name}}'"):
        assert literal in script


def test_a_missing_placeholder_is_refused_with_its_name_and_an_example() -> None:
    data = load_replay()
    values = data.example_values("postgres_start")
    del values["db_uuid"]
    with pytest.raises(MissingPlaceholderError) as err:
        data.render("postgres_start", values)
    msg = str(err.value)
    assert "render postgres_start: missing value for placeholder(s) ['db_uuid']" in msg
    assert data.placeholders["db_uuid"].example in msg


def test_unknown_and_malformed_values_are_refused() -> None:
    data = load_replay()
    values = data.example_values("postgres_start")
    with pytest.raises(ReplayError, match=r"unknown placeholder\(s\) \['db_uuidd'\]"):
        data.render("postgres_start", {**values, "db_uuidd": "x"})
    with pytest.raises(ReplayError, match=r"value '\.\./\.\./etc' for placeholder db_uuid does not match"):
        data.render("postgres_start", {**values, "db_uuid": "../../etc"})
    with pytest.raises(ReplayError, match=r"unknown operation 'postgres'; choose one of: .*postgres_start"):
        data.render("postgres", values)


def test_cli_lists_every_operation_with_its_citation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "deploy_helper_start" in out and "coolify:app/Jobs/ApplicationDeploymentJob.php:2173-2181" in out
    assert "sablier_start" in out and "inkmcp:inkmcp/infra/muscle.py:" in out


def test_sablier_start_replays_the_muscles_sablier_step_verbatim() -> None:
    """The replay runs exactly what the muscle's `sablier` step runs (muscle.sablier_script with the stack's MTU),
    for the example digests: a change to the step that is not copied here fails, and the old approach (an explicit
    `--runtime runc`, a sed on the node's proxy compose) cannot come back unnoticed."""
    data = load_replay()
    values = data.example_values("sablier_start")
    conf = make_conf(platform_containers=[
        PlatformContainerSpec(profile="proxy", images=[values["proxy_image"]]),
        PlatformContainerSpec(profile="sablier", images=[values["sablier_image"]])])
    rendered = data.render("sablier_start", values)
    assert [s.id for s in rendered.steps] == ["sablier.script", "proxy.save_config", "proxy.start"]
    step = rendered.steps[0]
    assert step.transport == "inkmcp_bash"
    assert step.script == muscle.sablier_script(conf, conf.docker_mtu).strip("\n")
    assert "--runtime" not in step.script and "sed " not in step.script
    assert f"--require proxy={values['proxy_image']} --require sablier={values['sablier_image']}" in step.script


def test_sablier_start_starts_the_proxy_with_the_compose_inkmcp_stores_in_coolify() -> None:
    """Coolify's StartProxy (the same steps as proxy_start) writes the compose registration PUTs into Coolify: its
    default with the pinned digest and the Sablier flags appended (pinned_compose), byte for byte as dumped."""
    data = load_replay()
    values = data.example_values("sablier_start")
    rendered = data.render("sablier_start", values)
    (compose,) = rendered.files
    assert compose.written_by == "proxy.save_config"
    assert compose.content == dump_compose(pinned_compose(None, values["proxy_image"], "v1.3.0"))
    b64 = base64.b64encode(compose.content.encode()).decode()
    assert f"echo '{b64}' | base64 -d | tee /data/coolify/proxy//docker-compose.yml" in rendered.steps[1].script
    proxy_start = data.render("proxy_start", data.example_values("proxy_start"))
    assert [s.script for s in proxy_start.steps][1] == rendered.steps[2].script  # the same StartProxy commands
    images = {c.name: c.image for c in rendered.containers}
    assert images == {"sablier": values["sablier_image"], "coolify-proxy": values["proxy_image"]}
    assert not any(c.runtime for c in rendered.containers)
