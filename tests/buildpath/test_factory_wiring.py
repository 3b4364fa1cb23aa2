"""The factory stack wires the build path (review #3/#4) under Pulumi's mock runtime: what the registry host,
the build server and the outputs get, that secrets only travel on stdin, that a second `pulumi up` renders the
same registry secrets (no change every run), and that a certificate or link that cannot work is refused
before anything is registered, naming the fix."""

from __future__ import annotations

import base64
from typing import Any

import bcrypt
import pulumi
import pytest
from pydantic import ValidationError

from inkmcp.infra.factory_config import DockerPool, FactorySecrets, NetworkStackOutputs
from inkmcp.nodes.registry import issue_server_cert, make_ca
from tests.stacks.pulumi_mocks import RecordingMonitor, install, is_secret, unwrap_secret
from tests.stacks.test_factory_stack import NETWORK, REGISTRY_CA, SECRET_VALUES, build, make_conf, make_secrets

COMMAND = "command:remote:Command"


@pytest.fixture(autouse=True)
def monitor() -> RecordingMonitor:
    return install()


def _secrets(stdin: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdin.splitlines())


def test_registry_host_gets_tls_and_bcrypt_users_on_stdin_only(monitor: RecordingMonitor) -> None:
    build()
    step = monitor.by_name("inkmcp-registry-registry")
    create = step.inputs["create"]
    assert "listen 10.0.1.12:443 ssl;" in create and "addr: 127.0.0.1:5000" in create
    assert REGISTRY_CA.strip().splitlines()[1] in create  # the CA (public) is written for the self-check
    assert is_secret(step.inputs["stdin"])
    secrets = _secrets(unwrap_secret(step.inputs["stdin"]))
    assert base64.b64decode(secrets["REGISTRY_TLS_KEY_B64"]).decode() == SECRET_VALUES["registry_server_key"] + "\n"
    users = dict(line.split(":", 1) for line in base64.b64decode(secrets["REGISTRY_HTPASSWD_B64"]).decode().split())
    assert set(users) == {"push", "pull"}
    assert bcrypt.checkpw(SECRET_VALUES["registry_push_password"].encode(), users["push"].encode())
    assert bcrypt.checkpw(SECRET_VALUES["registry_pull_password"].encode(), users["pull"].encode())
    assert not bcrypt.checkpw(SECRET_VALUES["registry_push_password"].encode(), users["pull"].encode())


def test_a_second_run_renders_the_same_registry_secrets() -> None:
    """bcrypt salts are random by default: the salt is keyed by the TLS key instead, so an unchanged password
    gives an unchanged stdin and `pulumi up` does not rewrite the registry on every run."""
    runs = []
    for _ in range(2):
        monitor = install()
        build()
        runs.append(unwrap_secret(monitor.by_name("inkmcp-registry-registry").inputs["stdin"]))
    assert runs[0] == runs[1]


def test_build_server_gets_the_confined_namespace_and_the_push_user(monitor: RecordingMonitor) -> None:
    build()
    master = next(r for r in monitor.of_type("hcloud:index/server:Server") if r.name == "inkmcp-master")
    master_ip = f"203.0.113.{int(master.id) % 250 + 1}"  # what the mock answers as the server's ipv4Address
    netns = monitor.by_name("inkmcp-build-build-netns").inputs["create"]
    assert "-A INKMCP-BUILD -d 10.0.1.12/32 -p tcp -m tcp --dport 443 -j ACCEPT" in netns
    assert f"-A INKMCP-BUILD -d {master_ip}/32 -p tcp -j REJECT --reject-with tcp-reset" in netns
    assert "-A INKMCP-BUILD -d 10.0.0.0/16 -p tcp -j REJECT --reject-with tcp-reset" in netns
    assert "NetworkNamespacePath=/run/netns/inkmcp-build" in netns
    assert "10.0.1.14/32 -p tcp -m tcp --dport 443 -j ACCEPT" not in netns  # nothing beyond the registry by default
    push = monitor.by_name("inkmcp-build-registry-push")
    assert "/etc/docker/certs.d/10.0.1.12/ca.crt" in push.inputs["create"]
    assert "/root/.docker/config.json" in push.inputs["create"]
    assert is_secret(push.inputs["stdin"])
    assert _secrets(unwrap_secret(push.inputs["stdin"])) == {
        "REGISTRY_USER": "push", "REGISTRY_PASSWORD": SECRET_VALUES["registry_push_password"]}
    prepare = monitor.by_name("inkmcp-build-prepare")
    for step in ("inkmcp-build-build-netns", "inkmcp-build-registry-push"):
        assert prepare.urn in monitor.by_name(step).dependencies, step


def test_outputs_name_the_registry_and_its_ca(monitor: RecordingMonitor) -> None:
    plane = build()
    assert plane.outputs["registry_ca_cert"] == REGISTRY_CA
    assert "registry_endpoint" in plane.outputs


def test_a_certificate_for_another_address_is_refused_before_anything_exists(monitor: RecordingMonitor) -> None:
    ca, ca_key = make_ca()
    cert, _ = issue_server_cert(ca, ca_key, ["10.0.1.99"])
    conf = make_conf(registry_ca_cert=ca, registry_server_cert=cert)
    with pytest.raises(Exception):  # noqa: B017 - the engine wraps the ValueError; the message is checked below
        build(conf)
    assert [r for r in monitor.registered if r.custom] == []
    with pytest.raises(ValueError, match=r"covers \['10.0.1.99'\], not '10.0.1.12'.*pki --host 10.0.1.12"):
        conf.check_against(NetworkStackOutputs.parse(NETWORK))


@pytest.mark.parametrize(("over", "message"), [
    ({"registry_ca_cert": make_ca()[0]}, "not signed by the given CA"),
    ({"registry_server_cert": "not a certificate"}, "not a PEM certificate"),
    ({"build_link_cidr": "172.30.5.0/30"}, "overlaps docker_address_pools"),
    ({"build_link_cidr": "192.168.254.0/29", "docker_address_pools": [DockerPool(base="172.30.0.0/16")]}, None),
    ({"build_link_cidr": "192.168.254.0/31"}, "a /30"),
    ({"build_egress_allow": ["10.0.1.14"]}, r"buildEgressAllow\[0\]: .*write one host and one TCP port"),
    ({"build_egress_allow": ["203.0.113.9:443"]}, "not a private address"),
])
def test_bad_registry_or_link_config_fails_in_the_schema(over: dict[str, Any], message: str | None) -> None:
    if message is None:
        make_conf(**over)
        return
    with pytest.raises(ValidationError, match=message):
        make_conf(**over)


def test_build_egress_allow_reaches_the_rules(monitor: RecordingMonitor) -> None:
    build(make_conf(build_egress_allow=["10.0.1.14:443"]))
    netns = monitor.by_name("inkmcp-build-build-netns").inputs["create"]
    allow = "-A INKMCP-BUILD -d 10.0.1.14/32 -p tcp -m tcp --dport 443 -j ACCEPT"
    assert allow in netns and netns.index(allow) < netns.index("-A INKMCP-BUILD -d 10.0.0.0/16 -p tcp -j REJECT")


def test_a_link_inside_the_cloud_network_is_refused() -> None:
    conf = make_conf(build_link_cidr="10.0.9.0/30")
    with pytest.raises(ValueError, match="overlaps network_cidr"):
        conf.check_against(NetworkStackOutputs.parse(NETWORK))


def test_missing_registry_secrets_are_named(monitor: RecordingMonitor) -> None:
    full = make_secrets()
    partial = FactorySecrets(**{**full.__dict__, "registry_server_key": None})
    with pytest.raises(Exception, match="registryServerKey"):
        build(secrets=partial)
    assert isinstance(full.registry_pull_password, pulumi.Output)
