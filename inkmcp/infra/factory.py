"""The factory plane as Pulumi components: Coolify master, build server, registry, control-plane Postgres.

Shape (each a small ComponentResource with typed args, children parented to it, `register_outputs`):

    FactoryPlane                 inkmcp:factory:Plane      SSH keys, spread placement group, firewalls
      CoolifyMaster              inkmcp:factory:CoolifyMaster   server + install + API on + S3 backups
      BuildServer                inkmcp:factory:BuildServer     server + Docker address pools + build namespace
                                                                + push credentials for the registry
      RegistryHost               inkmcp:factory:Registry        server + Volume + docker-registry behind nginx (TLS)
      ControlPlanePostgres       inkmcp:factory:Postgres        server + Volume + Storage Box + backups

Why it is built this way:
- Cross-stack validation gates everything. The network stack's outputs are only known as an Output, so
  `gated_network()` validates them inside `apply` and every resource here takes `depends_on` on that
  Output: a bad address plan rejects the Output and no resource is ever sent to the engine.
- Hosts are configured over SSH with pulumi-command. Secrets go through `stdin` (marked secret) as
  `KEY=value` lines, never in `create`, because `create` is stored and shown in plain text, and because
  remote.Command's `environment` needs `AcceptEnv` on the server (pulumi-command's own docs), which
  Debian's sshd does not set for arbitrary names.
- Each script is idempotent (checks before it acts), so `pulumi up` after a change or a half-failed run
  converges instead of reinstalling.
- Hetzner Cloud Firewalls filter only public interfaces; traffic on the Cloud Network (Coolify -> build
  server, run servers -> registry, InkMCP -> Postgres) is private and not affected by the rules below.
- The build path (review #3, #4; runbooks/gvisor-decision.md §4.4): the registry is Debian's docker-registry on
  loopback behind nginx with TLS from a private CA and basic auth (`push` writes, `pull` only reads;
  `inkmcp.nodes.registry`); the build server trusts the CA through certs.d and holds the `push` user in root's
  `~/.docker/config.json` (Coolify refuses to build without it, ADJ:2169-2171), and its dockerd + containerd run
  in a network namespace that may reach only the registry's TLS port and the public internet
  (`inkmcp.nodes.buildnet`), because Coolify's `docker build --network host` puts RUN steps in the daemon's
  namespace. Once the build server is converged (`coolify-ready` checks Docker in that namespace and the push
  config), it is registered in Coolify as a build server through the API (`is_build_server: true`, Sentinel off,
  validated, no proxy; `register_build_server`, the muscle's dynamic provider), when the coolifyApiToken secret
  and the Coolify key (coolifyPrivateKeyUuid, coolifyPublicKey) are set.
- Config edits never replace a protected host (review #15). pulumi-hcloud 1.43.3 bridges
  terraform-provider-hcloud v1.68.0, whose schema makes these inputs replace-forcing (file:line at that tag):
  `Server` image, location, user_data, ssh_keys (internal/server/resource.go:58,70,90,113), `Volume.location`
  (internal/volume/resource.go:46), `StorageBox` location, ssh_keys (internal/storagebox/resource.go:105,121),
  `SshKey.public_key` (internal/sshkey/resource.go:72), `VolumeAttachment` volume_id, server_id
  (internal/volume/resource_attachment.go:34,39). Inputs that change routinely after creation are in
  `ignore_changes` of the protected resource (operator keys are then kept current on the hosts by the
  `operator-keys` step); locations are what a host *is*, so a change there stays a replacement that protect
  refuses. `tests/stacks/test_replacement_guard.py` holds the table and fails on anything unhandled.
"""

from __future__ import annotations

import base64
import io
import json
import shlex
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_hcloud as hcloud
from pulumi_command import remote

from inkmcp.dr.settings import PINNED_BOX_KNOWN_HOSTS
from inkmcp.infra.coolify_server_provider import CoolifyServer, CoolifyServerProvider
from inkmcp.infra.factory_config import (
    RUNSC_MIN_BUILD,
    BuildRuntimeSpec,
    FactoryConfig,
    FactorySecrets,
    HostSpec,
    NetworkStackOutputs,
    VolumeHostSpec,
)
from inkmcp.nodes.buildnet import BuildNetParams, build_host_script
from inkmcp.nodes.registry import (
    RegistryServerParams,
    htpasswd,
    registry_client_script,
    registry_client_stdin,
    registry_host_script,
    registry_host_stdin,
    salt_key_from,
)
from inkmcp.nodes.render import (
    AddressPool,
    GvisorParams,
    HostParams,
    HostPlan,
    PinnedImage,
    PlatformProfile,
    helper_profile,
    pin_platform_command,
    render_plan,
)

COOLIFY_INSTALL_URL = "https://cdn.coollabs.io/coolify/install.sh"
ANY_V4, ANY_V6 = "0.0.0.0/0", "::/0"

# --------------------------------------------------------------------------------------------------
# Helpers shared with the muscle stack
# --------------------------------------------------------------------------------------------------

READ_SECRETS = 'while IFS="=" read -r k v; do [ -n "$k" ] && export "$k=$v"; done\n'
"""Shell prelude: read `KEY=value` lines from stdin into the environment (stdin is a secret input)."""
BOX_KNOWN_HOSTS = str(PINNED_BOX_KNOWN_HOSTS)
"""The Storage Box's pinned host keys (`storageBox.hostKeys`); the `inkmcp dr` commands trust only them when present."""
MIRRORED = "/root/.inkmcp-pg-backup.mirrored"
"""The dumps the backup job mirrored last (root's): the box loses only names listed here and pruned since."""


def shell(script: str) -> str:
    """Run `script` under strict bash on the remote side; quoting keeps it one argument whatever it holds."""
    return "bash -euo pipefail -c " + shlex.quote(script.strip() + "\n")


def secret_stdin(values: Mapping[str, pulumi.Input[str]]) -> pulumi.Output[str]:
    """Secrets as `KEY=value` lines for `READ_SECRETS`. A newline in a value would split it, so refuse it."""

    def render(resolved: list[str]) -> str:
        lines = []
        for key, value in zip(values.keys(), resolved, strict=True):
            if "\n" in value or "\r" in value:
                raise ValueError(f"secret {key} contains a line break; store it base64-encoded instead")
            lines.append(f"{key}={value}\n")
        return "".join(lines)

    return pulumi.Output.secret(pulumi.Output.all(*values.values()).apply(render))


def gated_network(raw_outputs: pulumi.Input[Mapping[str, object]],
                  check: Callable[[NetworkStackOutputs], None] | None = None) -> pulumi.Output[NetworkStackOutputs]:
    """Validate the network stack's outputs (and `check(net)`, a config's cross-stack checks) in one Output.

    A failure rejects the Output; resources that `depends_on` it are never registered.
    """

    def parse(raw: Mapping[str, object]) -> NetworkStackOutputs:
        net = NetworkStackOutputs.parse(dict(raw))
        if check is not None:
            check(net)
        return net

    return pulumi.Output.from_input(raw_outputs).apply(parse)


def gate_of(network: pulumi.Output[NetworkStackOutputs]) -> pulumi.Output[list[pulumi.Resource]]:
    """An empty dependency list that resolves only once `network` validated: the `depends_on` of every child."""
    return network.apply(lambda _: [])


def connection(host: pulumi.Input[str], private_key: pulumi.Input[str], user: str = "root",
               port: int = 22) -> remote.ConnectionArgs:
    return remote.ConnectionArgs(host=host, user=user, port=port, private_key=private_key,
                                 dial_error_limit=30, per_dial_timeout=10)


def labels_for(base: Mapping[str, str], **extra: str) -> dict[str, str]:
    return {**base, "managed-by": "pulumi", **extra}


# --------------------------------------------------------------------------------------------------
# Firewall rules (pure, so tests compare them as data)
# --------------------------------------------------------------------------------------------------


def _rule(port: str, sources: Sequence[str], description: str) -> dict[str, object]:
    return {"direction": "in", "protocol": "tcp", "port": port, "source_ips": list(sources),
            "description": description}


def master_rules(conf: FactoryConfig) -> list[dict[str, object]]:
    """Coolify master: SSH from operators; UI/API and realtime from operators and control plane; web public."""
    admin = list(conf.operator_cidrs) + [c for c in conf.control_plane_cidrs if c not in conf.operator_cidrs]
    return [
        _rule("22", conf.operator_cidrs, "ssh: operators only"),
        _rule("8000", admin, "coolify ui/api: operators and control plane"),
        _rule("6001", admin, "coolify realtime (websockets): operators and control plane"),
        _rule("6002", admin, "coolify terminal websockets: operators and control plane"),
        _rule("80", [ANY_V4, ANY_V6], "http: public (ACME, redirects)"),
        _rule("443", [ANY_V4, ANY_V6], "https: public"),
    ]


def internal_rules(conf: FactoryConfig) -> list[dict[str, object]]:
    """Build server, registry, Postgres: nothing public but SSH from operators (their work is private)."""
    return [_rule("22", conf.operator_cidrs, "ssh: operators only")]


def _firewall_rule_args(rules: list[dict[str, object]]) -> list[hcloud.FirewallRuleArgs]:
    return [hcloud.FirewallRuleArgs(**r) for r in rules]  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Scripts (plain text, no secrets: these land in state and logs)
# --------------------------------------------------------------------------------------------------


def docker_pools_script(pools: list[dict[str, object]]) -> str:
    """Write Docker's address pools into daemon.json before Docker or Coolify arrive, merging other keys.

    Coolify's installer and its remote InstallDocker keep an existing pool (existing keys win), so setting it
    first stops the 10.0.0.0/8 default from swallowing the Cloud Network.
    """
    pools_json = json.dumps(pools, sort_keys=True)
    return f"""
mkdir -p /etc/docker
python3 - <<'PY'
import json, os
path = "/etc/docker/daemon.json"
want = json.loads({pools_json!r})
cur = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {{}}
if cur.get("default-address-pools") != want:
    cur["default-address-pools"] = want
    tmp = path + ".inkmcp"
    with open(tmp, "w") as f:
        json.dump(cur, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    print("daemon.json: address pools set")
PY
if systemctl is-active --quiet docker; then
  docker info --format '{{{{json .}}}}' >/dev/null && echo "docker running; pools apply to new networks"
fi
"""


def coolify_install_script(conf: FactoryConfig) -> str:
    """Install Coolify once; later runs see it running and do nothing (upgrades are an operator decision).

    AUTOUPDATE=false: an unattended upgrade may rewrite daemon.json and restart the stack under live apps.
    DOCKER_ADDRESS_POOL_BASE/SIZE: the installer's own default is 10.0.0.0/8 (NOTES.md §f).
    """
    pool = conf.docker_address_pools[0]
    version = f" {shlex.quote(conf.coolify_version)}" if conf.coolify_version else ""
    return READ_SECRETS + f"""
if [ -f /data/coolify/source/.env ] && docker ps --format '{{{{.Names}}}}' | grep -qx coolify; then
  echo "coolify already installed"; exit 0
fi
curl -fsSL {COOLIFY_INSTALL_URL} -o /root/coolify-install.sh
export AUTOUPDATE=false
export DOCKER_ADDRESS_POOL_BASE={shlex.quote(pool.base)} DOCKER_ADDRESS_POOL_SIZE={pool.size}
export ROOT_USERNAME={shlex.quote(conf.coolify_root_username)} ROOT_USER_EMAIL={shlex.quote(conf.coolify_root_email)}
# ROOT_USER_PASSWORD arrived on stdin (secret)
bash /root/coolify-install.sh{version}
"""


COOLIFY_ENABLE_API = """
for _ in $(seq 1 90); do
  curl -fsS http://127.0.0.1:8000/api/health >/dev/null 2>&1 && break
  sleep 5
done
curl -fsS http://127.0.0.1:8000/api/health >/dev/null
# New installs have the API off (instance_settings.is_api_enabled, NOTES.md §a). POST /enable would need a
# token, and tokens exist only after a UI login, so flip the setting in Coolify's own database instead.
docker exec coolify-db psql -U coolify -d coolify -v ON_ERROR_STOP=1 -tAc \
  "UPDATE instance_settings SET is_api_enabled = true WHERE is_api_enabled IS DISTINCT FROM true"
echo "coolify api enabled"
"""


def coolify_s3_script(conf: FactoryConfig) -> str:
    """Register the S3 bucket in Coolify once (matched by name), through the API with a token from stdin."""
    assert conf.s3_backup is not None
    s3 = conf.s3_backup
    body = {"name": s3.name, "description": "InkMCP: Coolify database backups", "endpoint": s3.endpoint,
            "bucket": s3.bucket, "region": s3.region}
    return READ_SECRETS + f"""
API=http://127.0.0.1:8000/api/v1
auth() {{ printf 'header = "Authorization: Bearer %s"\\n' "$COOLIFY_API_TOKEN"; }}
if curl -fsS -K <(auth) "$API/s3-storages" \
    | jq -e --arg n {shlex.quote(s3.name)} '.[] | select(.name == $n)' >/dev/null; then
  echo "s3 storage already registered"; exit 0
fi
jq -n --argjson b {shlex.quote(json.dumps(body, sort_keys=True))} \
  '$b + {{key: env.S3_ACCESS_KEY, secret: env.S3_SECRET_KEY}}' \
  | curl -fsS -K <(auth) -H 'Content-Type: application/json' -X POST --data-binary @- "$API/s3-storages"
echo
echo "s3 storage registered; attach it under Settings > Backup (not exposed by the API)"
"""


def coolify_key_script(public_key: str) -> str:
    """Coolify's public key in root's authorized_keys of the build server (Coolify validates and builds over SSH as
    root). Appended once; the operator-keys step keeps lines it did not install."""
    line = shlex.quote(public_key)
    return f"""
install -d -m 700 /root/.ssh
touch /root/.ssh/authorized_keys; chmod 600 /root/.ssh/authorized_keys
keys=/root/.ssh/authorized_keys
grep -qxF {line} "$keys" || {{ echo {line} >> "$keys"; echo "changed: coolify key"; }}
"""


BUILD_NETNS = BuildNetParams.model_fields["netns"].default
BUILD_READY_SCRIPT = f"""
fail() {{ echo "build server not ready for Coolify: $*" >&2; exit 1; }}
command -v docker >/dev/null || fail "docker is not installed. Coolify's validation needs Docker Engine and the" \
  "compose plugin (registration never lets Coolify install them): the docker-runsc step installs both:" \
  "read its output, then pulumi up"
docker info >/dev/null 2>&1 || fail "dockerd does not answer on /var/run/docker.sock (systemctl status docker)"
docker compose version >/dev/null 2>&1 || fail "the docker compose plugin is missing: install it, then pulumi up"
pid=$(pidof -s dockerd) || fail "no dockerd process"
ns=$(ip netns identify "$pid")
[ "$ns" = {BUILD_NETNS} ] || fail "dockerd runs in network namespace '$ns', not {BUILD_NETNS}: tenant RUN steps would" \
  "reach the private network. systemctl restart inkmcp-build-netns docker (the build-netns step's drop-ins)"
[ -s /root/.docker/config.json ] || fail "/root/.docker/config.json is missing (the registry-push step writes it;" \
  "Coolify refuses to build without it)"
echo "build server ready: dockerd in {BUILD_NETNS}, compose $(docker compose version --short), registry config present"
"""
"""The gate before the build server is registered: what Coolify's validation checks (Docker and compose over SSH),
plus what makes it a safe build server (dockerd in the build namespace, the push credentials), each failing with the
fix, instead of Coolify's validation timing out or a build server being registered that builds unconfined."""


OPERATOR_KEYS_STATE = "inkmcp-operator-keys"
"""Beside authorized_keys: the operator keys this stack installed last time, so a removed key is removed."""


def operator_keys_script(public_keys: Sequence[str], ssh_dir: str = "/root/.ssh") -> str:
    """Keep root's authorized_keys in step with `sshKeys` on a host that already exists.

    Why: Hetzner injects `ssh_keys` only at creation, and the server ignores later changes of that input
    (replacing a protected host for a key is not an option), so adding or rotating an operator key happens
    here. Keys are matched by their base64 blob. Lines this stack did not put there (Coolify's own key on the
    master, keys an operator added by hand) are never touched; a key removed from `sshKeys` is removed if this
    stack had installed it (recorded in `OPERATOR_KEYS_STATE`; the keys Hetzner injected at creation are the
    same list, recorded on the first run). Prints `changed:` only when the file changed.
    """
    if not public_keys:
        raise ValueError("sshKeys is empty: the hosts would keep no operator key")
    for key in public_keys:
        if "\n" in key or "\r" in key or key.strip() != key or key.startswith("#"):
            raise ValueError(f"ssh key {key[:40]!r}...: one OpenSSH public key line expected")
    keys = shlex.quote("\n".join(public_keys) + "\n")
    d = shlex.quote(ssh_dir)
    state = shlex.quote(f"{ssh_dir}/{OPERATOR_KEYS_STATE}")
    return f"""
install -d -m 700 {d}
keys={d}/authorized_keys
touch "$keys" {state}
chmod 600 "$keys" {state}
want=$(mktemp)
new=$(mktemp)
trap 'rm -f "$want" "$new"' EXIT
printf '%s' {keys} > "$want"
awk -v want="$want" -v old={state} '
  function blob(line,   f, n, i) {{
    n = split(line, f, " "); for (i = 1; i <= n; i++) if (f[i] ~ /^AAAA/) return f[i]; return line
  }}
  BEGIN {{
    while ((getline line < want) > 0) {{ b = blob(line); wanted[b] = line; order[++count] = b }}
    while ((getline line < old) > 0) managed[blob(line)] = 1
  }}
  {{ b = blob($0) }}
  b in wanted {{ if (!(b in seen)) print; seen[b] = 1; next }}
  b in managed {{ next }}
  {{ print }}
  END {{ for (i = 1; i <= count; i++) if (!(order[i] in seen)) print wanted[order[i]] }}
' "$keys" > "$new"
if ! cmp -s "$new" "$keys"; then
  cat "$new" > "$keys"
  echo "changed: operator keys in $keys"
fi
cp "$want" {state}
"""


def volume_mount_script(volume_id: object, mountpoint: str) -> str:
    """Mount the Hetzner Volume by its stable by-id path (device names move between boots) via fstab."""
    dev = f"/dev/disk/by-id/scsi-0HC_Volume_{volume_id}"
    return f"""
for _ in $(seq 1 60); do [ -e {dev} ] && break; sleep 2; done
[ -e {dev} ] || {{ echo "volume {volume_id} not attached" >&2; exit 1; }}
blkid {dev} >/dev/null || mkfs.ext4 -q {dev}
mkdir -p {mountpoint}
grep -q '^{dev} ' /etc/fstab || echo '{dev} {mountpoint} ext4 discard,nofail,defaults 0 2' >> /etc/fstab
mountpoint -q {mountpoint} || mount {mountpoint}
"""


def registry_params(conf: FactoryConfig, private_ip: str) -> RegistryServerParams:
    """The registry host's parameters: nginx on the private address :443, blobs on the Volume."""
    return RegistryServerParams(listen=private_ip, tls_cert_pem=conf.registry_server_cert,
                                ca_cert_pem=conf.registry_ca_cert, storage_dir="/var/lib/registry")


def registry_stdin(params: RegistryServerParams, server_key: str, push_password: str, pull_password: str) -> str:
    """The registry script's secrets: the TLS key and the htpasswd file (bcrypt, salt keyed by the TLS key so an
    unchanged password renders the same file and `pulumi up` sees no change)."""
    lines = htpasswd(params, {"push": push_password, "pull": pull_password}, salt_key_from(server_key))
    return registry_host_stdin(server_key, lines)


def build_params(conf: FactoryConfig, net: NetworkStackOutputs, master_ipv4: str) -> BuildNetParams:
    """The build namespace: of the private ranges only the registry's TLS port; the master's public address
    (its proxy can serve Coolify's UI and API) refused like the private ones."""
    return BuildNetParams(registry=[f"{conf.private_ip('registry', net)}:443"], private_cidrs=[net.network_cidr],
                          blocked_hosts=[master_ipv4], link_cidr=conf.build_link_cidr,
                          allow=conf.build_egress_allow)  # type: ignore[arg-type] - parsed by EgressEndpoint


def build_server_host_params(conf: FactoryConfig, net: NetworkStackOutputs,
                             platform: Sequence[PlatformProfile] = ()) -> HostParams:
    """The hardening renderer's parameters for the build server (runbooks/gvisor-decision.md §4.4): the gVisor
    selector in build mode, so BuildKit's RUN steps run under runsc and a `docker build --network host` step is
    admitted only while dockerd runs inside the build namespace (`build_params`). The one place build mode is
    switched on: run servers' parameters (`inkmcp.infra.muscle_config.host_params`) never set it, so a build that
    lands on a run server fails closed. `platform`: the helper profile (Coolify runs its deploy helper here, without
    `--network`, ADJ:2173), pinned by digest. No DOCKER-USER rules (firewall off): this dockerd and its bridges live
    in the build namespace, whose link rules are the egress boundary for RUN steps and containers alike; rules in
    the root namespace would filter nothing of theirs. `runscPath`/`runscFlags` come from `buildRuntime`. Applied by
    the BuildServer's `harden` step (`build_server_plan`)."""
    rt = conf.build_runtime
    return HostParams(firewall=False, private_cidrs=[net.network],
                      address_pools=[AddressPool(base=p.base, size=p.size) for p in conf.docker_address_pools],
                      gvisor=GvisorParams(build_mode=True, platform=list(platform), runsc_path=rt.runsc_path,
                                          runsc_flags=list(rt.runsc_flags)))


def build_server_platform(conf: FactoryConfig) -> list[PlatformProfile]:
    """The build server's platform entries: Coolify's helper by `buildRuntime.helperImages` (by digest only; the
    plan's pin resolves each on the node, like the muscle's platform images), or none."""
    images = conf.build_runtime.helper_images
    return [helper_profile([PinnedImage(ref=ref) for ref in images])] if images else []


def build_server_plan(conf: FactoryConfig, net: NetworkStackOutputs) -> HostPlan:
    """The build server's hardening plan: `render_plan(build_server_host_params(...))`, the selector in build mode
    with the helper profile; its paths checked like the muscle's `host_plan` (they are written as root)."""
    plan = render_plan(build_server_host_params(conf, net, build_server_platform(conf)))
    for path in plan.files:
        if not path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"renderer returned {path!r}; host file paths must be absolute and plain")
    return plan


def plan_archive(plan: HostPlan) -> str:
    """The plan's files as a base64 gzip tar on one line, for the `harden` step's stdin (`HARDEN_UNPACK`).

    Why not CopyToRemote per file, as the muscle does: the plan depends on the network stack's outputs, which are
    an Output here, and resources created inside `apply` are invisible to `pulumi preview` and to the steps that
    must wait for them; and not inside `create` either: ~140 KB of files exceed Linux's 128 KiB limit for one
    argument (MAX_ARG_STRLEN; `bash -c <script>`). Deterministic (sorted, mtime 0, root-owned, the plan's modes), so an
    unchanged plan gives the same stdin and no diff. harden_script sets owner and modes again either way."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=9) as tar:
        for path in sorted(plan.files):
            data = plan.files[path].encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime, info.uid, info.gid = len(data), plan.modes[path], 0, 0, 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    raw = bytearray(buf.getvalue())
    raw[4:8] = b"\0\0\0\0"  # gzip header mtime: 0, so the archive depends on the plan alone
    return base64.b64encode(bytes(raw)).decode() + "\n"


HARDEN_UNPACK = """
# The plan's files arrive on stdin (plan_archive): unpacked in place, root-owned, before the plan's commands run.
base64 -d | tar -xz -C / --no-same-owner --no-overwrite-dir
"""


DOCKER_REPO = "https://download.docker.com/linux"
GVISOR_REPO = "https://storage.googleapis.com/gvisor/releases"
GVISOR_KEY = "https://gvisor.dev/archive.key"


def docker_runsc_script(spec: BuildRuntimeSpec) -> str:
    """Docker Engine, the compose and buildx plugins, and runsc on the build server, after `build-netns` (its
    drop-ins start dockerd and containerd in the build namespace from their first start).

    Docker: Docker's own apt repository (docker-ce, containerd.io, docker-compose-plugin, docker-buildx-plugin), the
    Engine Coolify itself installs on its servers (get.docker.com): Debian 12's docker.io 20.10 has no compose v2
    plugin, which Coolify's validation requires. A host whose dockerd came from elsewhere (Debian's docker.io, a
    hand install) keeps it; the compose plugin is then checked, not installed. runsc: `buildRuntime.runscSource`
    (gVisor's release channel, or the image's archive), then required >= RUNSC_MIN_BUILD at `runscPath`: Debian 12's
    20221219 breaks TLS in RUN steps (runbooks/gvisor-decision.md §4.4), and an older runsc installed earlier is
    upgraded from the configured source. The release channel's containerd-shim-runsc-v1 is diverted by the plan's
    shim guard (`harden`), its `runsc install` runtime entry removed by the plan. Prints `changed:` only on change."""
    runsc = shlex.quote(spec.runsc_path)
    release = spec.runsc_source == "gvisor-release"
    gvisor = f"""
gvisor_list="deb [arch=$arch signed-by=$keyrings/gvisor.asc] {GVISOR_REPO} release main"
if [ "$(cat /etc/apt/sources.list.d/gvisor.list 2>/dev/null)" != "$gvisor_list" ]; then
  curl -fsSL {GVISOR_KEY} -o "$keyrings/gvisor.asc"
  echo "$gvisor_list" > /etc/apt/sources.list.d/gvisor.list
  echo "changed: gVisor release channel added"
fi
""" if release else ""
    source = "gvisor-release" if release else "distro"
    fix = ("apt-get install runsc from gVisor's release channel failed to give one: check /etc/apt/sources.list.d/"
           "gvisor.list" if release else
           "the image's archive has no fit runsc: set buildRuntime.runscSource: gvisor-release")
    return f"""
fail() {{ echo "build server (docker-runsc step): $*" >&2; exit 1; }}
. /etc/os-release
arch=$(dpkg --print-architecture)
keyrings=/etc/apt/keyrings
install -d -m 755 "$keyrings"
want=()
if ! command -v dockerd >/dev/null; then
  docker_list="deb [arch=$arch signed-by=$keyrings/docker.asc] {DOCKER_REPO}/$ID $VERSION_CODENAME stable"
  if [ "$(cat /etc/apt/sources.list.d/docker.list 2>/dev/null)" != "$docker_list" ]; then
    curl -fsSL "{DOCKER_REPO}/$ID/gpg" -o "$keyrings/docker.asc"
    echo "$docker_list" > /etc/apt/sources.list.d/docker.list
    echo "changed: Docker's apt repository added"
  fi
  want+=(docker-ce docker-ce-cli containerd.io docker-compose-plugin docker-buildx-plugin)
fi
{gvisor}
runsc_date() {{ "$1" --version 2>/dev/null | grep -oE '20[0-9]{{6}}' | head -n 1 || true; }}
have=$(runsc_date {runsc})
if [ -z "$have" ] || [ "$have" -lt {RUNSC_MIN_BUILD} ]; then want+=(runsc); fi
if [ "${{#want[@]}}" -gt 0 ]; then
  apt-get -q update
  DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=120 install -y "${{want[@]}}"
  echo "changed: installed ${{want[*]}} (runsc from {source})"
fi
[ -x {runsc} ] || fail "runsc is not at {spec.runsc_path} (found: $(command -v runsc || echo none)):" \
  "set buildRuntime.runscPath to where it is"
have=$(runsc_date {runsc})
[ -n "$have" ] && [ "$have" -ge {RUNSC_MIN_BUILD} ] || fail "runsc {spec.runsc_path} is ${{have:-of unknown date}}," \
  "older than {RUNSC_MIN_BUILD}: it breaks TLS in RUN steps (runbooks/gvisor-decision.md 4.4). {fix}"
docker compose version >/dev/null 2>&1 || fail "the docker compose plugin is missing (Coolify validates it):" \
  "install docker-compose-plugin (Docker's repository) or Debian's docker-compose v2"
echo "build server runtime: dockerd $(dockerd --version | cut -d, -f1), runsc $have"
"""


def helper_pin_script(conf: FactoryConfig) -> str | None:
    """`inkmcp-pin-platform --require helper=<ref>` for each configured helper image: after `harden` (which pins
    already; idempotent), the step fails unless the installed selector config lists each digest resolved to this
    node's image, as the muscle's Sablier step proves its pins. None without `helperImages`."""
    images = conf.build_runtime.helper_images
    if not images:
        return None
    return pin_platform_command(HostParams(), require=[("helper", ref) for ref in images]) + "\n"


def postgres_script(conf: FactoryConfig, private_ip: str, network_cidr: str) -> str:
    """PostgreSQL from Debian on the Volume, listening on localhost and the private address only."""
    v, db, user = conf.postgres_version, conf.postgres_database, conf.postgres_user
    return READ_SECRETS + f"""
if ! command -v pg_lsclusters >/dev/null || ! pg_lsclusters -h | grep -q '^{v} main'; then
  apt-get update -q
  # The server ignores `image` edits after creation (never replaced for it): a new postgres.image with a new
  # postgresVersion reaches only a rebuilt host. Say so instead of apt's "Unable to locate package".
  if ! apt-cache show postgresql-{v} >/dev/null 2>&1; then
    echo "postgresql-{v} is not in this host's archive ($(. /etc/os-release && echo "$PRETTY_NAME")):" \
      "postgres.image applies to new hosts only; rebuild this one or set postgresVersion to what it ships" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -yq postgresql-{v} rsync openssh-client
fi
CONF=/etc/postgresql/{v}/main
want_listen="listen_addresses = 'localhost,{private_ip}'"
grep -qxF "$want_listen" $CONF/conf.d/inkmcp.conf 2>/dev/null || {{
  echo "$want_listen" > $CONF/conf.d/inkmcp.conf; systemctl restart postgresql@{v}-main; }}
hba="host {db} {user} {network_cidr} scram-sha-256"
grep -qxF "$hba" $CONF/pg_hba.conf || {{ echo "$hba" >> $CONF/pg_hba.conf; systemctl reload postgresql@{v}-main; }}
# The password is read by psql from the environment (\\getenv), never from argv or this script.
runuser -u postgres -- psql -v ON_ERROR_STOP=1 -q <<'SQL'
\\getenv pw POSTGRES_PASSWORD
SELECT format('CREATE ROLE {user} LOGIN PASSWORD %L', :'pw')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{user}') \\gexec
SELECT format('ALTER ROLE {user} PASSWORD %L', :'pw') \\gexec
SELECT 'CREATE DATABASE {db} OWNER {user}' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{db}') \\gexec
SQL
echo "postgres ready"
"""


def backup_script(conf: FactoryConfig) -> str:
    """Nightly pg_dump to the Volume, mirrored to the Storage Box with rsync over SSH (port 23).

    Local dumps are kept 7 days; history beyond that comes from the Storage Box's snapshot plan, so a compromised
    host cannot erase the snapshots.

    What the mirror deletes on the box: only dumps **this host** mirrored before and has pruned since (its 7-day
    retention), as listed in `MIRRORED`. It used to be `rsync --delete` of the whole directory, which deleted
    whatever the host did not hold: a rebuilt host (a new Volume, or one that did not mount) holds one dump of a
    new, empty database, and its first nightly run replaced the box's live dumps with it, the copies a restore
    needs (those since the last snapshot were gone for good). Now a new host adds its dumps beside the old ones.

    The box's host key: pinned when `storageBox.hostKeys` is set (a known_hosts file of its own, rewritten by
    this step, StrictHostKeyChecking=yes); else trusted on first use (accept-new). Neither the Hetzner API nor the
    pulumi provider reports a Storage Box's host key, so the stack cannot pin it without the operator.
    """
    db = conf.postgres_database
    box = getattr(conf, "storage_box", None)  # (the DR drill renders the script from a config without one)
    keys = box.host_keys if box is not None else ()
    known_hosts = ""
    trust = "-o StrictHostKeyChecking=accept-new"
    if keys:
        lines = "".join(f"  printf '[%s]:23 %s\\n' \"$STORAGE_BOX_HOST\" {shlex.quote(k)}\n" for k in keys)
        known_hosts = f"{{\n{lines}}} > {BOX_KNOWN_HOSTS}.new\nmv {BOX_KNOWN_HOSTS}.new {BOX_KNOWN_HOSTS}\n"
        trust = f"-o UserKnownHostsFile={BOX_KNOWN_HOSTS} -o StrictHostKeyChecking=yes"
    return READ_SECRETS + f"""
install -d -m 700 /root/.ssh /var/lib/postgresql/backups
chown postgres /var/lib/postgresql/backups
umask 077
printf '%s\\n' "$BACKUP_PRIVATE_KEY_B64" | base64 -d > /root/.ssh/inkmcp-storagebox.new
mv /root/.ssh/inkmcp-storagebox.new /root/.ssh/inkmcp-storagebox
{known_hosts}umask 022
cat > /usr/local/sbin/inkmcp-pg-backup <<EOF
#!/bin/bash
set -euo pipefail
dir=/var/lib/postgresql/backups
mirrored={MIRRORED}
runuser -u postgres -- pg_dump -Fc -f "\\$dir/{db}-\\$(date -u +%Y%m%dT%H%M%SZ).dump" {db}
find "\\$dir" -name '*.dump' -mtime +7 -delete
# The box gets every local dump and loses only what this host mirrored before and has pruned since.
rules=\\$(mktemp)
trap 'rm -f "\\$rules"' EXIT
find "\\$dir" -maxdepth 1 -name '*.dump' -printf '+ /%f\\n' > "\\$rules"
if [ -f "\\$mirrored" ]; then
  while read -r name; do [ -e "\\$dir/\\$name" ] || printf '+ /%s\\n' "\\$name"; done < "\\$mirrored" >> "\\$rules"
fi
echo '- *' >> "\\$rules"
rsync -a --delete --filter="merge \\$rules" -e "ssh -p 23 -i /root/.ssh/inkmcp-storagebox {trust}" \\
  "\\$dir/" "$STORAGE_BOX_USER@$STORAGE_BOX_HOST:inkmcp-postgres/"
find "\\$dir" -maxdepth 1 -name '*.dump' -printf '%f\\n' > "\\$mirrored.new"
mv "\\$mirrored.new" "\\$mirrored"
EOF
chmod 700 /usr/local/sbin/inkmcp-pg-backup
cat > /etc/systemd/system/inkmcp-pg-backup.service <<'EOF'
[Unit]
Description=InkMCP control-plane Postgres dump to the Storage Box
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/inkmcp-pg-backup
EOF
cat > /etc/systemd/system/inkmcp-pg-backup.timer <<'EOF'
[Unit]
Description=Nightly InkMCP Postgres backup
[Timer]
OnCalendar=*-*-* 02:30:00
RandomizedDelaySec=15m
Persistent=true
[Install]
WantedBy=timers.target
EOF
systemctl daemon-reload
systemctl enable --now inkmcp-pg-backup.timer
"""


# --------------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------------


@dataclass
class HostArgs:
    """What every factory host needs from the plane; built by `FactoryPlane`."""

    name: str
    spec: HostSpec
    conf: FactoryConfig
    secrets: FactorySecrets
    network: pulumi.Output[NetworkStackOutputs]
    private_ip: pulumi.Output[str]
    ssh_key_ids: list[pulumi.Output[str]]
    placement_group_id: pulumi.Output[int]
    firewall_ids: list[pulumi.Output[int]]
    role: str
    labels: dict[str, str] = field(default_factory=dict)


SERVER_IGNORE_CHANGES = ("sshKeys", "image", "userData")
"""Replace-forcing `hcloud.Server` inputs (terraform-provider-hcloud v1.68.0 internal/server/resource.go:58,90,113)
that legitimately change after creation; `location` (:70) is deliberately absent (moving a host is a rebuild).
`userData` is unset today; ignoring an absent top-level property is a no-op for the engine (pulumi
sdk/go/common/resource/property_path.go, `PropertyPath.Reset`: missing in old -> dropped from new, no error)."""
STORAGE_BOX_IGNORE_CHANGES = ("sshKeys",)
"""`StorageBox.ssh_keys` is replace-forcing (internal/storagebox/resource.go:121: "not possible to update the SSH
Keys through the API"); a backup key rotation must not replace the box and its snapshots."""


class _Host(pulumi.ComponentResource):
    """Common part of every factory host: a protected Cloud server on the Cloud Network, Docker pools set."""

    server: hcloud.Server
    prepare: remote.Command

    def _make_server(self, args: HostArgs, gate: pulumi.Output[list[pulumi.Resource]]) -> None:
        self._args = args
        self._gate = gate
        self.private_ip = args.private_ip
        protect = args.conf.protect
        self.server = hcloud.Server(
            args.name,
            name=args.name,
            server_type=args.spec.server_type,
            image=args.spec.image,
            location=args.conf.location,
            ssh_keys=args.ssh_key_ids,
            placement_group_id=args.placement_group_id,
            firewall_ids=args.firewall_ids,
            networks=[hcloud.ServerNetworkArgs(
                network_id=args.network.apply(lambda n: n.network_id), ip=args.private_ip)],
            public_nets=[hcloud.ServerPublicNetArgs(ipv4_enabled=True, ipv6_enabled=True)],
            delete_protection=protect,
            rebuild_protection=protect,
            labels=labels_for(args.conf.labels, role=args.role, **args.labels),
            # Replace-forcing inputs that change routinely must not replace a (protected) host: ssh_keys when an
            # operator key is added or rotated (the operator-keys step below installs it), image when the default
            # image moves on for new hosts (an existing host is rebuilt by an operator, not by a config edit),
            # user_data should it ever be set (cloud-init runs once, at creation, anyway).
            opts=self._child(protect=protect, ignore_changes=SERVER_IGNORE_CHANGES),
        )
        self.operator_keys = self._command(
            "operator-keys", shell(operator_keys_script([k.public_key for k in args.conf.ssh_keys])))
        pools = [p.model_dump() for p in args.conf.docker_address_pools]
        self.prepare = self._command("prepare", shell(docker_pools_script(pools)))

    def _child(self, *, protect: bool = False, depends_on: Sequence[pulumi.Resource] = (),
               ignore_changes: Sequence[str] | None = None) -> pulumi.ResourceOptions:
        deps: pulumi.Input[Sequence[pulumi.Input[pulumi.Resource]]] = (
            self._gate.apply(lambda g: [*g, *depends_on]) if depends_on else self._gate
        )
        return pulumi.ResourceOptions(parent=self, protect=protect, depends_on=deps,
                                      ignore_changes=list(ignore_changes) if ignore_changes else None)

    @property
    def connection(self) -> remote.ConnectionArgs:
        return connection(self.server.ipv4_address, self._args.secrets.ssh_private_key)

    def _command(self, step: str, create: pulumi.Input[str], *, stdin: pulumi.Input[str] | None = None,
                 after: Sequence[pulumi.Resource] = ()) -> remote.Command:
        """A remote step on this host; it runs after the server exists and after `after`."""
        return remote.Command(
            f"{self._args.name}-{step}",
            connection=self.connection,
            create=create,
            stdin=stdin,
            add_previous_output_in_env=False,
            opts=self._child(depends_on=[self.server, *after]),
        )

    def _volume(self, spec: VolumeHostSpec, mountpoint: str) -> remote.Command:
        protect = self._args.conf.protect
        self.volume = hcloud.Volume(
            f"{self._args.name}-data",
            name=f"{self._args.name}-data",
            size=spec.volume_size_gb,
            location=self._args.conf.location,
            format="ext4",
            delete_protection=protect,
            labels=labels_for(self._args.conf.labels, role=self._args.role),
            # `location` is its only replace-forcing input and is what the volume is: protect refuses a move.
            opts=self._child(protect=protect),
        )
        self.attachment = hcloud.VolumeAttachment(
            f"{self._args.name}-data",
            volume_id=self.volume.id.apply(int),
            server_id=self.server.id.apply(int),
            automount=False,
            opts=self._child(depends_on=[self.server, self.volume]),
        )
        return self._command("mount", self.volume.id.apply(lambda i: shell(volume_mount_script(i, mountpoint))),
                             after=[self.attachment, self.prepare])


class CoolifyMaster(_Host):
    """The Coolify master: installed once, API switched on, S3 backups registered when a token is set."""

    def __init__(self, name: str, args: HostArgs, gate: pulumi.Output[list[pulumi.Resource]],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("inkmcp:factory:CoolifyMaster", name, None, opts)
        self._make_server(args, gate)
        s = args.secrets
        self.install = self._command(
            "install-coolify", shell(coolify_install_script(args.conf)),
            stdin=secret_stdin({"ROOT_USER_PASSWORD": s.coolify_root_password}), after=[self.prepare])
        self.enable_api = self._command("enable-api", shell(COOLIFY_ENABLE_API), after=[self.install])
        self.s3_backup: remote.Command | None = None
        if args.conf.s3_backup is not None and s.coolify_api_token is not None:
            assert s.s3_access_key is not None and s.s3_secret_key is not None
            self.s3_backup = self._command(
                "s3-backup", shell(coolify_s3_script(args.conf)),
                stdin=secret_stdin({"COOLIFY_API_TOKEN": s.coolify_api_token, "S3_ACCESS_KEY": s.s3_access_key,
                                    "S3_SECRET_KEY": s.s3_secret_key}),
                after=[self.enable_api])
        self.url = self.server.ipv4_address.apply(lambda ip: f"http://{ip}:8000")
        self.register_outputs({"ipv4": self.server.ipv4_address, "private_ip": args.private_ip, "url": self.url})


class BuildServer(_Host):
    """Separate build server so image builds never starve the master or live apps (NOTES.md §e).

    `build-netns`: dockerd and containerd run in a confined network namespace (`inkmcp.nodes.buildnet`), set up
    before Docker is installed so they start there; `docker-runsc`: Docker Engine + compose, runsc >= 20240729
    (`docker_runsc_script`); `harden`: the hardening plan with the gVisor selector in build mode
    (`build_server_plan`, applied as the muscle applies a run server's: `harden_script`); `pin-helper` (with
    `buildRuntime.helperImages`): the helper's digest pinned and resolved, proven by `--require`; `registry-push`:
    the registry's CA in certs.d and the `push` user in root's config.json (what Coolify's helper binds,
    ADJ:2162-2181)."""

    def _harden(self, plan: pulumi.Output[HostPlan], after: Sequence[pulumi.Resource]) -> remote.Command:
        """The plan's files from stdin, then `harden_script(plan)`: the muscle's harden step, same script, same
        trigger (`plan_digest`: any file, mode or command change re-runs it)."""
        from inkmcp.infra.muscle import harden_script, plan_digest  # muscle imports this module: import late

        return remote.Command(
            f"{self._args.name}-harden",
            connection=self.connection,
            create=plan.apply(lambda p: shell(HARDEN_UNPACK + harden_script(p))),
            # No secret in it, but stdin is always secret in this stack (the invariant the tests hold every step
            # to), and a 100 KB base64 blob in every diff helps nobody: `triggers` shows that the plan changed.
            stdin=pulumi.Output.secret(plan.apply(plan_archive)),
            triggers=[plan.apply(plan_digest)],
            add_previous_output_in_env=False,
            opts=self._child(depends_on=[self.server, *after]),
        )

    def __init__(self, name: str, args: HostArgs, gate: pulumi.Output[list[pulumi.Resource]],
                 master_ipv4: pulumi.Output[str], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("inkmcp:factory:BuildServer", name, None, opts)
        self._make_server(args, gate)
        conf, s = args.conf, args.secrets
        if s.registry_push_password is None:
            raise ValueError("the build server needs registryPushPassword: `pulumi config set --secret "
                             "registryPushPassword ...` (the same value the registry's htpasswd gets)")
        script = pulumi.Output.all(args.network, master_ipv4).apply(
            lambda v: shell(build_host_script(build_params(conf, v[0], v[1]))))
        self.build_netns = self._command("build-netns", script, after=[self.prepare])
        self.docker_runsc = self._command("docker-runsc", shell(docker_runsc_script(conf.build_runtime)),
                                          after=[self.build_netns])
        self.plan = args.network.apply(lambda n: build_server_plan(conf, n))
        self.harden = self._harden(self.plan, after=[self.docker_runsc])
        pin = helper_pin_script(conf)
        self.pin_helper = None if pin is None else self._command("pin-helper", shell(pin), after=[self.harden])
        registry = args.network.apply(lambda n: conf.private_ip("registry", n))
        self.registry_push = self._command(
            "registry-push", registry.apply(lambda ip: shell(registry_client_script(ip, conf.registry_ca_cert))),
            stdin=pulumi.Output.secret(s.registry_push_password.apply(lambda pw: registry_client_stdin("push", pw))),
            after=[self.prepare])
        self.register_outputs({"ipv4": self.server.ipv4_address, "private_ip": args.private_ip})


class RegistryHost(_Host):
    """Private registry whose blobs live on a Hetzner Volume (block storage): a rebuild keeps the images.
    TLS (private CA) and basic auth in nginx; run servers read with `pull`, the build server writes with `push`."""

    def __init__(self, name: str, args: HostArgs, gate: pulumi.Output[list[pulumi.Resource]],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("inkmcp:factory:Registry", name, None, opts)
        self._make_server(args, gate)
        s = args.secrets
        if s.registry_server_key is None or s.registry_push_password is None or s.registry_pull_password is None:
            raise ValueError("the registry needs registryServerKey, registryPushPassword and registryPullPassword: "
                             "`pulumi config set --secret KEY ...` (server.key of `python -m inkmcp.nodes.registry "
                             "pki`; two passwords of 16+ characters)")
        self.mount = self._volume(args.conf.registry, "/var/lib/registry")
        params = args.private_ip.apply(lambda ip: registry_params(args.conf, ip))
        stdin = pulumi.Output.secret(pulumi.Output.all(params, s.registry_server_key, s.registry_push_password,
                                                       s.registry_pull_password).apply(lambda v: registry_stdin(*v)))
        self.run = self._command("registry", params.apply(lambda p: shell(registry_host_script(p))), stdin=stdin,
                                 after=[self.mount])
        self.endpoint = params.apply(lambda p: p.reference)
        self.register_outputs({"endpoint": self.endpoint, "volume_id": self.volume.id})


class ControlPlanePostgres(_Host):
    """InkMCP's own Postgres next to Coolify, data on a Volume, nightly dumps to a Hetzner Storage Box."""

    def __init__(self, name: str, args: HostArgs, gate: pulumi.Output[list[pulumi.Resource]],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("inkmcp:factory:Postgres", name, None, opts)
        self._make_server(args, gate)
        conf, s = args.conf, args.secrets
        self.mount = self._volume(conf.postgres, "/var/lib/postgresql")
        self.setup = self._command(
            "postgres",
            pulumi.Output.all(args.private_ip, args.network).apply(
                lambda v: shell(postgres_script(conf, v[0], v[1].network_cidr))),
            stdin=secret_stdin({"POSTGRES_PASSWORD": s.postgres_password}),
            after=[self.mount])
        box = conf.storage_box
        self.storage_box = hcloud.StorageBox(
            f"{args.name}-backups",
            name=f"{args.name}-backups",
            location=box.location,
            storage_box_type=box.storage_box_type,
            password=s.storage_box_password,
            ssh_keys=[box.backup_public_key],
            access_settings=hcloud.StorageBoxAccessSettingsArgs(
                ssh_enabled=True, reachable_externally=False, samba_enabled=False, webdav_enabled=False,
                zfs_enabled=False),
            snapshot_plan=hcloud.StorageBoxSnapshotPlanArgs(hour=4, minute=0, max_snapshots=box.keep_snapshots),
            delete_protection=conf.protect,
            labels=labels_for(conf.labels, role="backups"),
            # A new backupPublicKey is installed on the box by hand (runbooks/factory: rotate the backup key);
            # replacing the box would drop every snapshot. `location` stays replace-forcing: protect refuses it.
            opts=self._child(protect=conf.protect, ignore_changes=STORAGE_BOX_IGNORE_CHANGES),
        )
        key_b64 = s.backup_private_key.apply(_b64)
        self.backups = self._command(
            "backup-job", shell(backup_script(conf)),
            stdin=secret_stdin({"BACKUP_PRIVATE_KEY_B64": key_b64,
                                "STORAGE_BOX_USER": self.storage_box.username,
                                "STORAGE_BOX_HOST": self.storage_box.server}),
            after=[self.setup, self.storage_box])
        self.url = args.private_ip.apply(lambda ip: f"postgresql://{conf.postgres_user}@{ip}:5432/{conf.postgres_database}")
        self.register_outputs({"url": self.url, "storage_box_host": self.storage_box.server})


@dataclass(frozen=True)
class BuildRegistration:
    """What `register_build_server` adds under the BuildServer component."""

    key: remote.Command
    ready: remote.Command
    server: CoolifyServer


def register_build_server(build: BuildServer, master: CoolifyMaster, conf: FactoryConfig, secrets: FactorySecrets,
                          net: pulumi.Output[NetworkStackOutputs],
                          provider: CoolifyServerProvider | None = None) -> BuildRegistration | None:
    """The build server in Coolify as a build server (review #3; runbooks/gvisor-decision.md §4.4), after every step
    that converges it, through `inkmcp.coolify.registration` (the muscle's dynamic provider): `POST /servers` with
    `is_build_server: true`, Sentinel off, validation; no proxy. Children of the BuildServer component:
    `coolify-key` (Coolify's public key for root), `coolify-ready` (`BUILD_READY_SCRIPT`), `coolify`.

    Needs the coolifyApiToken secret (created in Coolify's UI after pass 1) and the Coolify key; without them the
    build server stays unregistered (a warning says what to set once the token exists)."""
    if secrets.coolify_api_token is None or conf.coolify_private_key_uuid is None or conf.coolify_public_key is None:
        if secrets.coolify_api_token is not None:
            pulumi.log.warn("the build server is not registered in Coolify: set coolifyPrivateKeyUuid and "
                            "coolifyPublicKey (Keys & Tokens > Private keys; the muscle stack uses the same) and run "
                            "pulumi up again", build)
        return None
    converged = [v for v in vars(build).values() if isinstance(v, remote.Command)]  # every step of the host so far
    key = build._command("coolify-key", shell(coolify_key_script(conf.coolify_public_key)), after=[build.prepare])
    ready = build._command("coolify-ready", shell(BUILD_READY_SCRIPT), after=[*converged, key])
    name = build._args.name
    server = CoolifyServer(
        f"{name}-coolify",
        api_url=net.apply(conf.coolify_api_base),
        api_token=secrets.coolify_api_token,
        ip=build.private_ip,
        private_key_uuid=conf.coolify_private_key_uuid,
        name=name,
        description="inkmcp: build server (factory stack); builds only, no proxy",
        port=22,
        user="root",
        is_build_server=True,
        provider=provider,
        opts=pulumi.ResourceOptions(parent=build, depends_on=[ready, master.enable_api]),
    )
    return BuildRegistration(key=key, ready=ready, server=server)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


@dataclass
class FactoryPlaneArgs:
    conf: FactoryConfig
    secrets: FactorySecrets
    network: pulumi.Output[NetworkStackOutputs]
    """Validated network outputs, e.g. from `gated_network(ref.outputs, conf.check_against)`."""
    coolify_provider: CoolifyServerProvider | None = None
    """Tunables for the build server's Coolify registration (tests shorten the waits); None: the defaults."""


class FactoryPlane(pulumi.ComponentResource):
    """The whole factory plane; `stacks/factory/__main__.py` builds exactly one."""

    def __init__(self, name: str, args: FactoryPlaneArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("inkmcp:factory:Plane", name, None, opts)
        conf, net = args.conf, args.network
        gate = gate_of(net)
        prefix = conf.name_prefix
        child = pulumi.ResourceOptions(parent=self, depends_on=gate)

        # `public_key` is replace-forcing (internal/sshkey/resource.go:72) and Hetzner refuses a second key with
        # the same name or fingerprint, so the old key goes first. Servers ignore their sshKeys, so this never
        # cascades to a host (the engine diffs dependents with their ignore_changes).
        self.ssh_keys = [
            hcloud.SshKey(f"{prefix}-{k.name}", name=f"{prefix}-{k.name}", public_key=k.public_key,
                          labels=labels_for(conf.labels),
                          opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=True)))
            for k in conf.ssh_keys
        ]
        # Spread: master, build, registry and Postgres never share a physical host, so one hardware failure
        # takes out at most one of them.
        self.placement_group = hcloud.PlacementGroup(
            f"{prefix}-factory", name=f"{prefix}-factory", type="spread", labels=labels_for(conf.labels),
            opts=pulumi.ResourceOptions(parent=self, depends_on=gate, protect=conf.protect))
        self.master_firewall = hcloud.Firewall(
            f"{prefix}-master", name=f"{prefix}-master", rules=_firewall_rule_args(master_rules(conf)),
            labels=labels_for(conf.labels), opts=child)
        self.internal_firewall = hcloud.Firewall(
            f"{prefix}-internal", name=f"{prefix}-internal", rules=_firewall_rule_args(internal_rules(conf)),
            labels=labels_for(conf.labels), opts=child)

        def host_args(host: str, firewall: hcloud.Firewall) -> HostArgs:
            return HostArgs(
                name=f"{prefix}-{host}",
                spec=getattr(conf, host),
                conf=conf,
                secrets=args.secrets,
                network=net,
                private_ip=net.apply(lambda n, h=host: conf.private_ip(h, n)),
                ssh_key_ids=[k.id for k in self.ssh_keys],
                placement_group_id=self.placement_group.id.apply(int),
                firewall_ids=[firewall.id.apply(int)],
                role=host,
            )

        sub = pulumi.ResourceOptions(parent=self)
        self.master = CoolifyMaster(f"{prefix}-master", host_args("master", self.master_firewall), gate, sub)
        self.build = BuildServer(f"{prefix}-build", host_args("build", self.internal_firewall), gate,
                                 self.master.server.ipv4_address, sub)
        self.registry = RegistryHost(f"{prefix}-registry", host_args("registry", self.internal_firewall), gate, sub)
        self.postgres = ControlPlanePostgres(
            f"{prefix}-postgres", host_args("postgres", self.internal_firewall), gate, sub)
        self.coolify_build = register_build_server(self.build, self.master, conf, args.secrets, net,
                                                   args.coolify_provider)
        # The URL the API is called at: never http to the public address (review #14). Nothing in the repository
        # reads this output; an operator or the control plane's config may, so it is the address that is safe.
        coolify_url = net.apply(conf.coolify_api_base)

        self.outputs: dict[str, pulumi.Input[object]] = {
            "master_ipv4": self.master.server.ipv4_address,
            "master_private_ip": self.master.private_ip,
            "coolify_url": coolify_url,
            "build_private_ip": self.build.private_ip,
            "registry_endpoint": self.registry.endpoint,
            "registry_ca_cert": conf.registry_ca_cert,
            "postgres_url": self.postgres.url,
            "storage_box_host": self.postgres.storage_box.server,
            "docker_address_pools": [p.base for p in conf.docker_address_pools],
        }
        self.register_outputs(self.outputs)
