"""The registry and build-namespace renderers on their own (no root): the PKI refuses what Docker would refuse
later, htpasswd lines verify and stay stable, parameters that cannot work fail naming the fix, and every
rendered script passes shellcheck."""

from __future__ import annotations

import datetime
import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from inkmcp.nodes import registry as reg
from inkmcp.nodes.buildnet import BuildNetParams, build_host_script, render_buildnet
from inkmcp.nodes.registry import (
    RegistryError,
    RegistryServerParams,
    RegistryUser,
    check_server_cert,
    htpasswd_line,
    issue_server_cert,
    make_ca,
    render_server_files,
)

CA, CA_KEY = make_ca()
CERT, KEY = issue_server_cert(CA, CA_KEY, ["10.0.1.12", "registry.internal"])


def shellcheck(tmp_path: Path, **scripts: str) -> None:
    paths = []
    for name, body in scripts.items():
        p = tmp_path / f"{name}.sh"
        p.write_text(body if body.startswith("#!") else "#!/bin/bash\n" + body)
        paths.append(str(p))
    r = subprocess.run([str(Path(sys.executable).with_name("shellcheck")), "-S", "warning", *paths],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout


# --- PKI -------------------------------------------------------------------------------------------------


def test_server_cert_chains_to_the_ca_for_every_host_and_serves_tls_only() -> None:
    cert = x509.load_pem_x509_certificate(CERT.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.1.12")]
    assert san.get_values_for_type(x509.DNSName) == ["registry.internal"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    ca = x509.load_pem_x509_certificate(CA.encode())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0  # signs server certificates, never another CA
    for host in ("10.0.1.12", "registry.internal"):
        check_server_cert(CERT, CA, host, KEY)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ca_cert_pem": make_ca()[0]}, "not signed by the given CA"),
    ({"host": "10.0.1.13"}, r"covers \['10.0.1.12', 'registry.internal'\], not '10.0.1.13'.*pki --host 10.0.1.13"),
    ({"key_pem": issue_server_cert(CA, CA_KEY, ["10.0.1.12"])[1]}, "does not belong to the server certificate"),
    ({"cert_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, "not a PEM certificate"),
])
def test_check_server_cert_refuses_what_docker_would(kwargs: dict[str, str], message: str) -> None:
    args = {"cert_pem": CERT, "ca_cert_pem": CA, "host": "10.0.1.12", "key_pem": KEY, **kwargs}
    with pytest.raises(RegistryError, match=message):
        check_server_cert(**args)


def test_an_expired_certificate_is_refused() -> None:
    ca_key = serialization.load_pem_private_key(CA_KEY.encode(), password=None)
    ca = x509.load_pem_x509_certificate(CA.encode())
    key = ec.generate_private_key(ec.SECP256R1())
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(1)
            .not_valid_before(past - datetime.timedelta(days=1)).not_valid_after(past)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("10.0.1.12"))]), False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(RegistryError, match="not now: re-issue it"):
        check_server_cert(pem, CA, "10.0.1.12")


def test_pki_command_writes_private_keys_privately_and_reissues_with_the_same_ca(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    assert reg.main(["pki", "--host", "10.0.1.12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f'pulumi config set --secret registryServerKey -- "$(cat {out}/server.key)"' in printed
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"ca.crt": 0o644, "ca.key": 0o600, "server.crt": 0o644, "server.key": 0o600}
    ca_before = (out / "ca.crt").read_text()
    assert reg.main(["pki", "--host", "10.0.1.12", "--out", str(out)]) == 2  # never overwrite a CA key
    assert "pass --ca-dir" in capsys.readouterr().err
    again = tmp_path / "again"
    assert reg.main(["pki", "--host", "10.0.1.12", "--out", str(again), "--ca-dir", str(out)]) == 0
    check_server_cert((again / "server.crt").read_text(), ca_before, "10.0.1.12", (again / "server.key").read_text())


# --- htpasswd ---------------------------------------------------------------------------------------------


def test_htpasswd_lines_verify_and_a_keyed_salt_is_stable_per_user() -> None:
    a1 = htpasswd_line("push", "push-password-0123456789", b"key")
    a2 = htpasswd_line("push", "push-password-0123456789", b"key")
    b = htpasswd_line("pull", "push-password-0123456789", b"key")  # same password, other user
    other_key = htpasswd_line("push", "push-password-0123456789", b"other")
    random1, random2 = (htpasswd_line("push", "push-password-0123456789") for _ in range(2))
    assert a1 == a2 and a1 != other_key and random1 != random2
    assert a1.split(":", 1)[1][:29] != b.split(":", 1)[1][:29]  # per-user salts
    for line in (a1, b, other_key, random1):
        _user, hashed = line.rstrip("\n").split(":", 1)
        assert hashed.startswith("$2b$12$")
        assert bcrypt.checkpw(b"push-password-0123456789", hashed.encode())
        assert not bcrypt.checkpw(b"push-password-012345678X", hashed.encode())


@pytest.mark.parametrize(("user", "password", "message"), [
    ("push", "short", "use at least 16"),
    ("push", "x" * 80, "first 72 bytes"),
    ("Push", "x" * 20, "lowercase letters"),
    ("pu:sh", "x" * 20, "lowercase letters"),
])
def test_htpasswd_refuses_bad_users_and_passwords(user: str, password: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        htpasswd_line(user, password)


# --- the registry host -----------------------------------------------------------------------------------


def params(**kw: object) -> RegistryServerParams:
    base: dict[str, object] = {"listen": "10.0.1.12", "tls_cert_pem": CERT, "ca_cert_pem": CA}
    return RegistryServerParams(**{**base, **kw})  # type: ignore[arg-type]


def test_nginx_site_lets_read_only_users_read_only() -> None:
    p = params(users=(RegistryUser(name="push", access="push"), RegistryUser(name="pull", access="pull"),
                      RegistryUser(name="ci-read", access="pull")))
    site = next(f.content for f in render_server_files(p) if f.path.endswith("sites-available/inkmcp-registry"))
    for user in ("pull", "ci-read"):
        assert f'"{user}:GET" 0;\n    "{user}:HEAD" 0;\n    "~^{user}:" 1;' in site
    assert "push:" not in site  # the write user has no method rule
    assert "listen 10.0.1.12:443 ssl;" in site and 'proxy_set_header Authorization "";' in site
    assert site.index("return 403") < site.index("auth_basic ")


@pytest.mark.parametrize(("kw", "message"), [
    ({"users": (RegistryUser(name="pull", access="pull"),)}, "none may push"),
    ({"users": (RegistryUser(name="push", access="push"), RegistryUser(name="push", access="pull"))}, "duplicate"),
    ({"listen": "10.0.1.99"}, "not '10.0.1.99'"),
    ({"root": "relative"}, "absolute directory"),
    ({"storage_dir": "/var/lib/../etc"}, "absolute plain path"),
])
def test_registry_params_refuse_what_cannot_work(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        params(**kw)


def test_registry_backend_listens_on_loopback_and_stores_on_the_volume() -> None:
    config = next(f.content for f in render_server_files(params()) if f.path.endswith("config.yml"))
    assert "addr: 127.0.0.1:5000" in config and "rootdirectory: /var/lib/registry" in config
    assert "enabled: false" in config.split("delete:")[1].split("\n")[1]  # no deletes unless asked
    dropin = next(f.content for f in render_server_files(params()) if "docker-registry.service.d" in f.path)
    assert "RequiresMountsFor=/var/lib/registry" in dropin  # never an empty store on the root disk


def test_registry_host_script_installs_checks_and_passes_shellcheck(tmp_path: Path) -> None:
    live = reg.registry_host_script(params())
    assert "apt-get install -yq docker-registry nginx curl" in live
    assert "https://10.0.1.12/v2/" in live and '[ "$code" = 401 ]' in live  # the self-check
    assert KEY not in live and "BEGIN PRIVATE KEY" not in live
    shellcheck(tmp_path, live=live, staged=reg.registry_host_script(params(root=str(tmp_path / "root"))))


# --- the build namespace ---------------------------------------------------------------------------------


def bparams(**kw: object) -> BuildNetParams:
    return BuildNetParams(**{"registry": ["10.0.1.12:443"], **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "message"), [
    ({"registry": []}, "at least 1 item"),
    ({"registry": ["203.0.113.9:443"]}, "not a private address"),
    ({"registry": ["169.254.169.254:80"]}, "link-local"),
    ({"link_cidr": "10.0.3.0/30", "private_cidrs": ["10.0.0.0/16"]}, "overlaps private_cidrs"),
    ({"link_cidr": "192.168.254.0/31"}, "use a /30"),
    ({"blocked_hosts": ["10.0.1.12"]}, "also in blocked_hosts"),
    ({"host_if": "a-very-long-interface-name"}, "15 characters"),
    ({"host_if": "uplink0"}, "must differ"),
])
def test_build_params_refuse_what_cannot_work(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        bparams(**kw)


def test_daemons_join_the_namespace_and_require_it() -> None:
    files = {f.path: f.content for f in render_buildnet(bparams())}
    for unit in ("docker", "containerd"):
        dropin = files[f"/etc/systemd/system/{unit}.service.d/50-inkmcp-build-netns.conf"]
        assert "NetworkNamespacePath=/run/netns/inkmcp-build" in dropin
        assert "Requires=inkmcp-build-netns.service" in dropin  # no namespace, no daemon: fail closed
    service = files["/etc/systemd/system/inkmcp-build-netns.service"]
    assert "ExecStart=/usr/local/sbin/inkmcp-build-netns up" in service
    assert "Before=containerd.service docker.service" in service


def test_build_scripts_pass_shellcheck(tmp_path: Path) -> None:
    script = next(f.content for f in render_buildnet(bparams()) if f.path.endswith("inkmcp-build-netns"))
    shellcheck(tmp_path, netns=script, host=build_host_script(bparams()))
    with pytest.raises(ValueError, match="for the host itself"):
        build_host_script(bparams(root=str(tmp_path)))
