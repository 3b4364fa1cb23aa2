"""The platform's image registry: TLS with a private CA, bcrypt basic auth, a write user and read-only users.

Why it looks like this (review findings 3 and 4, runbooks/gvisor-decision.md §4.4):
- Coolify builds tenant images on the build server and pushes them; run servers pull them with
  `docker compose up --pull always`. Both talk to one registry on the Cloud Network. Plain HTTP would need
  `insecure-registries` on every daemon (and credentials in clear on the wire), so the registry speaks TLS
  with a certificate from a private CA that every client trusts through `/etc/docker/certs.d/<host>/ca.crt`
  — per registry, nothing system-wide, no `insecure-registries`.
- Anonymous access is refused (401). The build server holds the one write user (`push`, in its
  `~/.docker/config.json`, which Coolify requires there and binds into its helper only); run servers hold a
  read-only user (`pull`): nginx answers 403 to any method but GET/HEAD from it, so a compromised run
  server cannot overwrite another tenant's image. Tenant `RUN` steps hold no credentials at all.
- Debian's own `docker-registry` (distribution 2.8) on loopback behind Debian's nginx: both from the
  distribution's security updates, no container image to pin, nothing of Docker on the registry host.

Pieces, each pure and tested on its own:
- `make_ca` / `issue_server_cert` / `check_server_cert`: the PKI, with `cryptography`. The operator runs
  `python -m inkmcp.nodes.registry pki --host 10.0.1.12 --out DIR` once; the CA key stays with the operator
  (only needed to re-issue), the server certificate and CA certificate go into the factory stack's config,
  the server key into its secrets.
- `htpasswd`: bcrypt lines. The salt is derived (HMAC) from a per-installation secret, so the same
  password renders the same line and `pulumi up` does not see a change on every run.
- `RegistryServerParams` + `render_server_files` / `registry_host_script`: the registry host's files and
  the idempotent script that installs them (the factory stack runs it over SSH).
- `registry_client_script`: `certs.d` CA + `~/.docker/config.json` credentials on a Docker host (the build
  server with the write user, every run server with the read-only user).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import hmac
import ipaddress
import posixpath
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import bcrypt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inkmcp.nodes.render import template_env

USER_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
BCRYPT_COST = 12
CA_DAYS, SERVER_DAYS = 3650, 825

# Host paths (before the root prefix), Debian's layout.
HOST_PATHS: dict[str, str] = {
    "registry_config": "/etc/docker/registry/config.yml",
    "nginx_site": "/etc/nginx/sites-available/inkmcp-registry",
    "nginx_enabled": "/etc/nginx/sites-enabled/inkmcp-registry",
    "nginx_default": "/etc/nginx/sites-enabled/default",
    "tls_cert": "/etc/nginx/inkmcp-registry/tls.crt",
    "tls_key": "/etc/nginx/inkmcp-registry/tls.key",
    "ca_cert": "/etc/nginx/inkmcp-registry/ca.crt",
    "htpasswd": "/etc/nginx/inkmcp-registry/htpasswd",
    "registry_dropin": "/etc/systemd/system/docker-registry.service.d/50-inkmcp.conf",
    "nginx_dropin": "/etc/systemd/system/nginx.service.d/50-inkmcp-registry.conf",
    "access_log": "/var/log/nginx/inkmcp-registry.access.log",
    "error_log": "/var/log/nginx/inkmcp-registry.error.log",
}

SECRETS_PRELUDE = 'while IFS="=" read -r k v; do [ -n "$k" ] && export "$k=$v"; done\n'
"""Read `KEY=value` lines from stdin into the environment (the same contract as the factory's READ_SECRETS:
secrets travel on stdin, never in the command line or the script, which Pulumi stores and logs)."""


class RegistryError(ValueError):
    """A registry parameter, certificate or credential is unusable; the message names it and the fix."""


# --------------------------------------------------------------------------------------------------
# PKI
# --------------------------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(common_name: str = "InkMCP registry CA", days: int = CA_DAYS) -> tuple[str, str]:
    """A private CA for the registry only: (certificate PEM, key PEM). EC P-256, path length 0 (it signs
    server certificates, never another CA). Clients trust it per registry (certs.d), never system-wide."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not HOSTNAME_RE.match(host):
                raise RegistryError(f"registry host {host!r}: give an IP address or a lowercase DNS name") from None
            names.append(x509.DNSName(host))
    return names


def issue_server_cert(ca_cert_pem: str, ca_key_pem: str, hosts: list[str],
                      days: int = SERVER_DAYS) -> tuple[str, str]:
    """A TLS server certificate for the registry, signed by the CA: (certificate PEM, key PEM).
    `hosts` are every name clients use for the registry (IP addresses and/or DNS names), all in the SAN."""
    if not hosts:
        raise RegistryError("issue_server_cert: pass at least one host (the registry's private IP address)")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise RegistryError("the CA key must be the EC key make_ca wrote")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def _load_cert(pem: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.strip().encode())
    except ValueError as e:
        raise RegistryError(f"{what}: not a PEM certificate ({e}); paste the whole -----BEGIN CERTIFICATE----- "
                            "block `python -m inkmcp.nodes.registry pki` wrote") from None


def check_server_cert(cert_pem: str, ca_cert_pem: str, host: str | None, key_pem: str | None = None) -> None:
    """Refuse a certificate Docker would refuse later, on a node, with a less helpful message: not signed by
    the CA, expired, `host` (unless None: not known yet) not in its SAN, or (when given) a key that does not
    belong to it."""
    cert = _load_cert(cert_pem, "registry server certificate")
    ca = _load_cert(ca_cert_pem, "registry CA certificate")
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as e:
        raise RegistryError(f"registry server certificate is not signed by the given CA ({type(e).__name__}): "
                            "issue it with the same `pki --out DIR` run, or re-issue with `pki --ca-dir DIR`") from None
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise RegistryError(f"registry server certificate is valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                            f"{cert.not_valid_after_utc:%Y-%m-%d}, not now: re-issue it (`pki --ca-dir DIR`)")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise RegistryError("registry server certificate has no subjectAltName: re-issue it with `pki`") from None
    if host is None:
        covered = True
    else:
        try:
            covered = ipaddress.ip_address(host) in san.get_values_for_type(x509.IPAddress)
        except ValueError:
            covered = host in san.get_values_for_type(x509.DNSName)
    if not covered:
        have = [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)
        raise RegistryError(f"registry server certificate covers {have}, not {host!r} (the address clients use): "
                            f"re-issue it with `pki --host {host}`")
    if key_pem is not None:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
                != cert.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo):
            raise RegistryError("registry server key does not belong to the server certificate: set the key "
                                "from the same `pki` run (server.key next to server.crt)")


# --------------------------------------------------------------------------------------------------
# htpasswd
# --------------------------------------------------------------------------------------------------

_BCRYPT_ALPHABET = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_STD_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _bcrypt_salt(raw16: bytes, cost: int) -> bytes:
    """bcrypt's salt string for 16 raw bytes: its own base64 alphabet, 22 characters."""
    enc = base64.b64encode(raw16).rstrip(b"=").translate(bytes.maketrans(_STD_ALPHABET, _BCRYPT_ALPHABET))
    return b"$2b$%02d$" % cost + enc[:22]


def htpasswd_line(user: str, password: str, salt_key: bytes | None = None, cost: int = BCRYPT_COST) -> str:
    """One `user:bcrypt` line (nginx checks it with crypt(3); Debian 12's libxcrypt does bcrypt).

    `salt_key` None: a random salt. Otherwise the salt is HMAC(salt_key, user) — secret and per user, so no
    precomputed table applies, and stable, so re-rendering with the same inputs gives the same line."""
    if not USER_RE.match(user):
        raise RegistryError(f"registry user {user!r}: lowercase letters, digits, '-', '_' (start with a letter)")
    if len(password) < 16:
        raise RegistryError(f"registry user {user}: the password has {len(password)} characters, use at least 16 "
                            "(e.g. `openssl rand -base64 24`)")
    pw = password.encode()
    if len(pw) > 72:
        raise RegistryError(f"registry user {user}: bcrypt uses only the first 72 bytes; use a shorter password")
    if "\n" in password or "\r" in password:
        raise RegistryError(f"registry user {user}: the password contains a line break")
    if salt_key is None:
        salt = bcrypt.gensalt(rounds=cost)
    else:
        salt = _bcrypt_salt(hmac.new(salt_key, b"inkmcp-registry-htpasswd\0" + user.encode(),
                                     hashlib.sha256).digest()[:16], cost)
    return f"{user}:{bcrypt.hashpw(pw, salt).decode()}\n"


# --------------------------------------------------------------------------------------------------
# The registry host
# --------------------------------------------------------------------------------------------------


class RegistryUser(BaseModel):
    """A registry account: `push` may write (build server), `pull` may only read (run servers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    access: Literal["pull", "push"]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not USER_RE.match(v):
            raise ValueError(f"registry user {v!r}: lowercase letters, digits, '-', '_' (start with a letter)")
        return v


DEFAULT_USERS = (RegistryUser(name="push", access="push"), RegistryUser(name="pull", access="pull"))


class RegistryServerParams(BaseModel):
    """What varies between registry hosts; secrets (server key, passwords) are not in here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str = "/"
    """Prefix for every host path: "/" on the host, a throw-away directory in tests."""
    listen: ipaddress.IPv4Address
    """The private address nginx binds (the registry host's Cloud Network address)."""
    host: str = ""
    """How clients name the registry (image references, certs.d, config.json); default: `listen`."""
    port: int = Field(default=443, ge=1, le=65535)
    upstream_port: int = Field(default=5000, ge=1, le=65535)
    storage_dir: str = "/var/lib/registry"
    delete_enabled: bool = False
    users: tuple[RegistryUser, ...] = DEFAULT_USERS
    tls_cert_pem: str
    ca_cert_pem: str

    @model_validator(mode="after")
    def _consistent(self) -> RegistryServerParams:
        if not self.host:
            object.__setattr__(self, "host", str(self.listen))
        if not self.root.startswith("/"):
            raise ValueError(f"root {self.root!r}: an absolute directory ('/' on the host)")
        if not self.storage_dir.startswith("/") or ".." in self.storage_dir.split("/"):
            raise ValueError(f"storage_dir {self.storage_dir!r}: an absolute plain path")
        names = [u.name for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError(f"registry users: duplicate names in {names}")
        if not any(u.access == "push" for u in self.users):
            raise ValueError("registry users: none may push; add one with access 'push' for the build server")
        check_server_cert(self.tls_cert_pem, self.ca_cert_pem, self.host)
        return self

    def path(self, key: str) -> str:
        """A host path (HOST_PATHS key) under the root prefix."""
        rel = HOST_PATHS[key]
        return rel if self.root == "/" else posixpath.join(self.root, rel.lstrip("/"))

    @property
    def access_log(self) -> str:
        return self.path("access_log")

    @property
    def error_log(self) -> str:
        return self.path("error_log")

    @property
    def storage_path(self) -> str:
        return self.storage_dir if self.root == "/" else posixpath.join(self.root, self.storage_dir.lstrip("/"))

    @property
    def reference(self) -> str:
        """The registry part of image references: `host` alone on 443, `host:port` otherwise."""
        return client_references(self.host, self.port)[0]


@dataclass(frozen=True)
class HostFile:
    path: str
    content: str
    mode: int
    group: str = "root"


def render_server_files(p: RegistryServerParams) -> list[HostFile]:
    """The registry host's non-secret files, in install order."""
    env = template_env()
    return [
        HostFile(p.path("registry_config"), env.get_template("registry-config.yml.j2").render(p=p), 0o644),
        HostFile(p.path("nginx_site"), env.get_template("registry-nginx.conf.j2").render(p=p), 0o644),
        HostFile(p.path("tls_cert"), p.tls_cert_pem.strip() + "\n", 0o644),
        HostFile(p.path("ca_cert"), p.ca_cert_pem.strip() + "\n", 0o644),
        HostFile(p.path("registry_dropin"),
                 env.get_template("registry-services.conf.j2").render(p=p, unit="docker-registry"), 0o644),
        HostFile(p.path("nginx_dropin"), env.get_template("registry-services.conf.j2").render(p=p, unit="nginx"),
                 0o644),
    ]


def htpasswd(p: RegistryServerParams, passwords: dict[str, str], salt_key: bytes | None = None) -> str:
    """The htpasswd file for `p.users`; every user needs a password."""
    missing = [u.name for u in p.users if not passwords.get(u.name)]
    if missing:
        raise RegistryError(f"registry users without a password: {missing} (set registryPushPassword / "
                            "registryPullPassword)")
    extra = sorted(set(passwords) - {u.name for u in p.users})
    if extra:
        raise RegistryError(f"passwords for unknown registry users {extra}: users are {[u.name for u in p.users]}")
    return "".join(htpasswd_line(u.name, passwords[u.name], salt_key) for u in p.users)


def salt_key_from(server_key_pem: str) -> bytes:
    """The htpasswd salt key: derived from the server key (a per-installation secret the host has anyway)."""
    return hashlib.sha256(b"inkmcp-registry-salt\0" + server_key_pem.strip().encode()).digest()


def registry_host_script(p: RegistryServerParams) -> str:
    """Idempotent bash for the registry host. Secrets arrive on stdin as `KEY=value` lines:
    REGISTRY_TLS_KEY_B64 (server key PEM, base64) and REGISTRY_HTPASSWD_B64 (the `htpasswd()` file, base64).

    Prints `changed: PATH` for every file it replaced. On the host (root "/") it installs Debian's
    docker-registry and nginx when missing, restarts/reloads only what changed, and ends with a self-check:
    an anonymous request over TLS, verified against the CA, must get 401. With another root it only writes
    files (tests start the daemons themselves)."""
    live = p.root == "/"
    q = shlex.quote
    lines = [SECRETS_PRELUDE.rstrip("\n"), "set -euo pipefail"]
    lines.append(': "${REGISTRY_TLS_KEY_B64:?on stdin}" "${REGISTRY_HTPASSWD_B64:?on stdin}"')
    if live:
        lines += [
            "if ! command -v docker-registry >/dev/null || ! command -v nginx >/dev/null; then",
            "  apt-get update -q",
            "  DEBIAN_FRONTEND=noninteractive apt-get install -yq docker-registry nginx curl",
            "fi",
        ]
    lines += [
        "changed_registry=0 changed_nginx=0 changed_units=0 rc=0",
        "# put PATH MODE GROUP: install stdin at PATH when content, mode or group differ.",
        "# Returns 0 (changed, reported), 10 (unchanged) or 2 (failed: the caller exits).",
        "put() {",
        "  local tmp",
        '  tmp=$(mktemp "$(dirname "$1")/.inkmcp.XXXXXX") || return 2',
        '  { cat > "$tmp" && chmod "$2" "$tmp" && chgrp "$3" "$tmp"; } || { rm -f "$tmp"; return 2; }',
        '  if [ -f "$1" ] && cmp -s "$tmp" "$1" && [ "$(stat -c %a:%G "$1")" = "$(stat -c %a:%G "$tmp")" ]; then',
        '    rm -f "$tmp"; return 10',
        "  fi",
        '  mv -f "$tmp" "$1" || return 2',
        '  echo "changed: $1"',
        "}",
        "# note VAR: after `put ... || rc=$?`, set VAR=1 when it changed something, stop when it failed.",
        'note() { case $rc in 0) printf -v "$1" 1 ;; 10) ;; *) echo "writing a registry file failed" >&2; exit 1 ;; '
        "esac; rc=0; }",
    ]
    dirs = sorted({posixpath.dirname(f.path) for f in render_server_files(p)} |
                  {posixpath.dirname(p.path("htpasswd")), posixpath.dirname(p.path("nginx_enabled")),
                   posixpath.dirname(p.access_log)})
    lines.append("install -d -m 755 " + " ".join(q(d) for d in dirs))
    web_group = "www-data"
    flag = {p.path("registry_config"): "changed_registry", p.path("registry_dropin"): "changed_units",
            p.path("nginx_dropin"): "changed_units"}
    marker = "INKMCP_EOF"
    for f in render_server_files(p):
        if marker in f.content:
            raise RegistryError(f"{f.path}: content contains the heredoc marker {marker}")
        lines.append(f"put {q(f.path)} {f.mode:o} {f.group} <<'{marker}' || rc=$?")
        lines.append(f.content.rstrip("\n"))
        lines.append(marker)
        lines.append(f"note {flag.get(f.path, 'changed_nginx')}")
    lines += [
        "# Secrets: decoded into a private temporary file (a failed decode stops the script), then installed.",
        'secret=$(mktemp); trap \'rm -f "$secret"\' EXIT',
        'printf %s "$REGISTRY_TLS_KEY_B64" | base64 -d > "$secret"',
        f'put {q(p.path("tls_key"))} 600 root < "$secret" || rc=$?',
        "note changed_nginx",
        'printf %s "$REGISTRY_HTPASSWD_B64" | base64 -d > "$secret"',
        f'put {q(p.path("htpasswd"))} 640 {web_group} < "$secret" || rc=$?',
        "note changed_nginx",
        f'if [ "$(readlink {q(p.path("nginx_enabled"))} || true)" != {q(p.path("nginx_site"))} ]; then',
        f'  ln -sfn {q(p.path("nginx_site"))} {q(p.path("nginx_enabled"))}',
        f'  echo "changed: {p.path("nginx_enabled")}"; changed_nginx=1',
        "fi",
        "# Debian's default site listens on :80 on every address: the registry host serves nothing else.",
        f'if [ -L {q(p.path("nginx_default"))} ]; then',
        f'  rm -f {q(p.path("nginx_default"))}; echo "changed: removed {p.path("nginx_default")}"; changed_nginx=1',
        "fi",
        f"install -d -m 750 {q(p.storage_path)}",
    ]
    if live:
        lines += [
            f"chown docker-registry:docker-registry {q(p.storage_path)}",
            '[ "$changed_units" = 1 ] && systemctl daemon-reload',
            "nginx -t -q",
            "systemctl enable --quiet docker-registry nginx",
            'if [ "$changed_registry" = 1 ] || [ "$changed_units" = 1 ]; then systemctl restart docker-registry; '
            "else systemctl start docker-registry; fi",
            'if [ "$changed_units" = 1 ] || ! systemctl is-active --quiet nginx; then systemctl restart nginx; '
            'elif [ "$changed_nginx" = 1 ]; then systemctl reload nginx; fi',
            "# Self-check: TLS verified against our CA, anonymous -> 401 (auth on), within 30 s of a (re)start.",
            "code=000",
            "for _ in $(seq 1 30); do",
            f"  code=$(curl -s -o /dev/null -w '%{{http_code}}' --cacert {q(p.path('ca_cert'))} "
            f"https://{p.reference}/v2/ || true)",
            '  [ "$code" = 401 ] && break; sleep 1',
            "done",
            f'[ "$code" = 401 ] || {{ echo "registry self-check: https://{p.reference}/v2/ answered $code, '
            f'expected 401 (journalctl -u nginx -u docker-registry)" >&2; exit 1; }}',
            'echo "registry ready"',
        ]
    else:
        lines.append(": \"$changed_registry\" \"$changed_nginx\" \"$changed_units\"")
    return "\n".join(lines) + "\n"


def registry_host_stdin(server_key_pem: str, htpasswd_text: str) -> str:
    """The stdin `registry_host_script` reads (one line per secret; base64 so PEM line breaks survive)."""
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return f"REGISTRY_TLS_KEY_B64={b64(server_key_pem.strip() + chr(10))}\nREGISTRY_HTPASSWD_B64={b64(htpasswd_text)}\n"


# --------------------------------------------------------------------------------------------------
# Docker hosts that use the registry (build server: push user; run servers: pull user)
# --------------------------------------------------------------------------------------------------


def client_references(host: str, port: int = 443) -> list[str]:
    """Names Docker may see for the registry. Docker keys certs.d and config.json by the exact reference
    host, and `10.0.1.12` and `10.0.1.12:443` are different keys: on 443 both are written, first the short
    one (what image names should use)."""
    if port == 443:
        return [host, f"{host}:443"]
    return [f"{host}:{port}"]


def registry_client_script(host: str, ca_cert_pem: str, port: int = 443, root: str = "/",
                           home: str = "/root") -> str:
    """Idempotent bash for a Docker host: the registry's CA as `/etc/docker/certs.d/<ref>/ca.crt` (Docker reads
    it per pull/push, no daemon restart) and the credentials from stdin (REGISTRY_USER, REGISTRY_PASSWORD)
    in `<home>/.docker/config.json`, merged: other registries' entries and settings are kept.

    Coolify runs `docker` as root over SSH, so root's config is the one it uses (and the one its helper
    binds read-only on the build server, ADJ:2162-2181). A `credsStore` would make Docker ignore `auths`, so
    the script refuses to run on such a config instead of writing credentials that are never used."""
    if not ca_cert_pem.strip().startswith("-----BEGIN CERTIFICATE-----"):
        raise RegistryError("registry CA certificate: paste the PEM block (ca.crt of `pki`)")
    _load_cert(ca_cert_pem, "registry CA certificate")

    def at(path: str) -> str:
        return path if root == "/" else posixpath.join(root, path.lstrip("/"))

    q = shlex.quote
    refs = client_references(host, port)
    config = at(posixpath.join(home, ".docker/config.json"))
    lines = [SECRETS_PRELUDE.rstrip("\n"), "set -euo pipefail",
             ': "${REGISTRY_USER:?on stdin}" "${REGISTRY_PASSWORD:?on stdin}"']
    for ref in refs:
        d = at(f"/etc/docker/certs.d/{ref}")
        lines += [
            f"install -d -m 755 {q(d)}",
            f"if ! printf '%s\\n' {q(ca_cert_pem.strip())} | cmp -s - {q(d + '/ca.crt')}; then",
            f"  printf '%s\\n' {q(ca_cert_pem.strip())} > {q(d + '/ca.crt')}; chmod 644 {q(d + '/ca.crt')}",
            f'  echo "changed: {d}/ca.crt"',
            "fi",
        ]
    merge = """
import base64, json, os, sys
path, refs = sys.argv[1], sys.argv[2:]
cur = {}
if os.path.exists(path) and os.path.getsize(path):
    with open(path) as f:
        cur = json.load(f)
helpers = cur.get("credHelpers") or {}
if cur.get("credsStore") or any(r in helpers for r in refs):
    sys.exit(f"{path} uses a credential helper (credsStore/credHelpers), so Docker would ignore the registry "
             "credentials written to auths: remove it for " + ", ".join(refs))
token = base64.b64encode(f"{os.environ['REGISTRY_USER']}:{os.environ['REGISTRY_PASSWORD']}".encode()).decode()
auths = cur.setdefault("auths", {})
if all(auths.get(r) == {"auth": token} for r in refs) and (os.stat(path).st_mode & 0o777) == 0o600:
    sys.exit(0)
for r in refs:
    auths[r] = {"auth": token}
tmp = path + ".inkmcp"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump(cur, f, indent=2, sort_keys=True)
    f.write("\\n")
os.chmod(tmp, 0o600)
os.replace(tmp, path)
print(f"changed: {path} (registry credentials for " + ", ".join(refs) + ")")
"""
    lines += [
        f"install -d -m 700 {q(posixpath.dirname(config))}",
        f"python3 -c {q(merge.strip())} {q(config)} {' '.join(q(r) for r in refs)}",
    ]
    return "\n".join(lines) + "\n"


def registry_client_stdin(user: str, password: str) -> str:
    if not USER_RE.match(user):
        raise RegistryError(f"registry user {user!r}: lowercase letters, digits, '-', '_'")
    if "\n" in password or "\r" in password:
        raise RegistryError(f"registry user {user}: the password contains a line break")
    return f"REGISTRY_USER={user}\nREGISTRY_PASSWORD={password}\n"


# --------------------------------------------------------------------------------------------------
# `python -m inkmcp.nodes.registry pki`: the operator's one-off step
# --------------------------------------------------------------------------------------------------


def write_pki(out: Path, hosts: list[str], ca_dir: Path | None = None) -> dict[str, Path]:
    """ca.crt/ca.key (new, unless `ca_dir` holds them) and server.crt/server.key for `hosts`, under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    if ca_dir is not None:
        ca_cert, ca_key = (ca_dir / "ca.crt").read_text(), (ca_dir / "ca.key").read_text()
    else:
        if (out / "ca.key").exists():
            raise RegistryError(f"{out}/ca.key exists: pass --ca-dir {out} to re-issue the server certificate with "
                                "it, or pick another --out")
        ca_cert, ca_key = make_ca()
    cert, key = issue_server_cert(ca_cert, ca_key, hosts)
    check_server_cert(cert, ca_cert, hosts[0], key)
    files = {"ca.crt": (ca_cert, 0o644), "ca.key": (ca_key, 0o600), "server.crt": (cert, 0o644),
             "server.key": (key, 0o600)}
    written = {}
    for name, (text, mode) in files.items():
        path = out / name
        if name.startswith("ca.") and ca_dir is not None and ca_dir.resolve() == out.resolve():
            written[name] = path
            continue
        path.touch(mode=mode)
        path.chmod(mode)
        path.write_text(text)
        written[name] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inkmcp.nodes.registry",
                                     description="The registry's private CA and server certificate.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    pki = sub.add_parser("pki", help="create the CA (once) and issue the registry's server certificate")
    pki.add_argument("--host", action="append", required=True,
                     help="address clients use: the registry's private IP (repeat for DNS names)")
    pki.add_argument("--out", type=Path, required=True, help="directory for ca.crt, ca.key, server.crt, server.key")
    pki.add_argument("--ca-dir", type=Path, help="re-use ca.crt/ca.key from here (re-issue the server certificate)")
    args = parser.parse_args(argv)
    try:
        files = write_pki(args.out, args.host, args.ca_dir)
    except (RegistryError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    d = args.out
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    print("keep ca.key offline (only `--ca-dir` re-issues need it); then, in stacks/factory:")
    print(f'  pulumi config set registryCaCert -- "$(cat {d}/ca.crt)"')
    print(f'  pulumi config set registryServerCert -- "$(cat {d}/server.crt)"')
    print(f'  pulumi config set --secret registryServerKey -- "$(cat {d}/server.key)"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = [
    "DEFAULT_USERS", "HostFile", "RegistryError", "RegistryServerParams", "RegistryUser", "check_server_cert",
    "client_references", "htpasswd", "htpasswd_line", "issue_server_cert", "make_ca",
    "registry_client_script", "registry_client_stdin", "registry_host_script", "registry_host_stdin",
    "render_server_files", "salt_key_from", "write_pki",
]
