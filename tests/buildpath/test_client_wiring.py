"""The Docker-host side of the registry: `registry_client_script` (certs.d + root's config.json) as the muscle
stack runs it on every run server with the read-only user, executed for real under a throw-away root, plus the
muscle step's wiring under Pulumi's mock runtime."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from inkmcp.infra import muscle
from inkmcp.infra.muscle_config import FactoryStackOutputs, MuscleSecrets
from inkmcp.nodes.registry import RegistryError, make_ca, registry_client_script, registry_client_stdin
from tests.stacks.pulumi_mocks import RecordingMonitor, install, is_secret, unwrap_secret
from tests.stacks.test_muscle_stack import FACTORY, PULL, REGISTRY_CA, build, deps

CA = make_ca()[0]


PASSWORD = "pull-secret-0123456789"


def run_client(root: Path, user: str = "pull", password: str = PASSWORD, host: str = "10.0.1.12",
               port: int = 443) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", registry_client_script(host, CA, port=port, root=str(root))],
                          input=registry_client_stdin(user, password), capture_output=True, text=True, timeout=30,
                          check=False)


def auths(root: Path) -> dict[str, str]:
    config = json.loads((root / "root/.docker/config.json").read_text())
    return {k: base64.b64decode(v["auth"]).decode() for k, v in config["auths"].items()}


def test_client_writes_ca_and_credentials_for_both_names_of_the_registry(tmp_path: Path) -> None:
    r = run_client(tmp_path)
    assert r.returncode == 0, r.stderr
    for ref in ("10.0.1.12", "10.0.1.12:443"):  # Docker keys both by the exact reference host
        assert (tmp_path / f"etc/docker/certs.d/{ref}/ca.crt").read_text() == CA.strip() + "\n"
    assert auths(tmp_path) == {"10.0.1.12": "pull:pull-secret-0123456789",
                               "10.0.1.12:443": "pull:pull-secret-0123456789"}
    config = tmp_path / "root/.docker/config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    again = run_client(tmp_path)
    assert again.returncode == 0 and again.stdout == "", again.stdout


def test_client_keeps_other_registries_and_settings_and_rotates_the_password(tmp_path: Path) -> None:
    docker = tmp_path / "root/.docker"
    docker.mkdir(parents=True)
    (docker / "config.json").write_text(json.dumps({"auths": {"ghcr.io": {"auth": "b3RoZXI6dG9rZW4="}},
                                                    "detachKeys": "ctrl-x"}))
    assert run_client(tmp_path).returncode == 0
    rotated = run_client(tmp_path, password="new-pull-secret-987654321")
    assert rotated.returncode == 0 and "changed" in rotated.stdout
    config = json.loads((docker / "config.json").read_text())
    assert config["detachKeys"] == "ctrl-x" and config["auths"]["ghcr.io"] == {"auth": "b3RoZXI6dG9rZW4="}
    assert auths(tmp_path)["10.0.1.12"] == "pull:new-pull-secret-987654321"


def test_client_refuses_a_credential_helper_that_would_hide_the_credentials(tmp_path: Path) -> None:
    docker = tmp_path / "root/.docker"
    docker.mkdir(parents=True)
    (docker / "config.json").write_text(json.dumps({"credsStore": "pass"}))
    r = run_client(tmp_path)
    assert r.returncode != 0
    assert "credential helper" in r.stderr and "10.0.1.12" in r.stderr
    assert json.loads((docker / "config.json").read_text()) == {"credsStore": "pass"}


def test_client_on_another_port_uses_host_colon_port(tmp_path: Path) -> None:
    assert run_client(tmp_path, port=5443).returncode == 0
    assert (tmp_path / "etc/docker/certs.d/10.0.1.12:5443/ca.crt").exists()
    assert not (tmp_path / "etc/docker/certs.d/10.0.1.12").exists()
    assert set(auths(tmp_path)) == {"10.0.1.12:5443"}


def test_client_keeps_the_password_out_of_argv_and_the_script() -> None:
    script = registry_client_script("10.0.1.12", CA)
    assert "pull-secret" not in script
    with pytest.raises(RegistryError, match="line break"):
        registry_client_stdin("pull", "a\nREGISTRY_USER=push")
    with pytest.raises(RegistryError, match="PEM block"):
        registry_client_script("10.0.1.12", "not a cert")


def test_client_script_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck = Path(sys.executable).with_name("shellcheck")
    path = tmp_path / "client.sh"
    path.write_text("#!/bin/bash\n" + registry_client_script("10.0.1.12", CA))
    r = subprocess.run([str(shellcheck), "-S", "warning", str(path)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stdout


# --- the muscle stack's step ---------------------------------------------------------------------------------


@pytest.fixture
def monitor() -> RecordingMonitor:
    return install()


def test_every_run_server_gets_the_pull_user_after_hardening(monitor: RecordingMonitor) -> None:
    build()
    for n in (1, 2):
        step = monitor.by_name(f"run-run{n}-registry-pull")
        assert f"run-run{n}-harden" in deps(step)
        create = step.inputs["create"]
        assert "/etc/docker/certs.d/10.0.1.12/ca.crt" in create and "/root/.docker/config.json" in create
        assert REGISTRY_CA.strip().splitlines()[1] in create
        assert PULL not in create
        assert is_secret(step.inputs["stdin"])
        assert unwrap_secret(step.inputs["stdin"]) == f"REGISTRY_USER=pull\nREGISTRY_PASSWORD={PULL}\n"


def test_a_factory_without_registry_tls_is_named() -> None:
    old = FactoryStackOutputs.parse({**FACTORY, "registry_ca_cert": None, "registry_endpoint": "10.0.1.12:5000"})
    with pytest.raises(ValueError, match=r"exports no registry_ca_cert.*factory stack first"):
        muscle.registry_pull_script(old)
    with pytest.raises(ValueError, match="registryPullPassword"):
        muscle.registry_pull_stdin(MuscleSecrets(ssh_private_key=None, coolify_api_token=None))  # type: ignore[arg-type]
