"""The muscle plane as Pulumi components: dedicated run servers configured over SSH and registered in Coolify.

    MusclePlane          inkmcp:muscle:Plane       one RunServer per `runServers` entry
      RunServer          inkmcp:muscle:RunServer   per node, in this order:
        authorized-key   Coolify's public key for root (Coolify manages servers over SSH)
        vswitch          netplan VLAN on the vSwitch (MTU 1400) + route to the Cloud Network
        file-*           host files of the hardening plan (CopyToRemote), incl. the gVisor runtime selector
        harden           modes, then the plan's commands in order (selector install, daemon.json, DOCKER-USER, ...)
        register         on the Coolify master: POST /servers, wildcard domain, labels (see below)
        sablier          Sablier server (runc, Docker socket) + the Sablier Traefik plugin flags in the proxy
        dns              `*.sN.apps.<domain>` A record -> the node's public IP (hcloud ZoneRrset)

Registration in Coolify is a remote.Command run **on the master** with curl against 127.0.0.1:8000:
- `POST /servers` (name, ip = the node's vSwitch address, `private_key_uuid`, `instant_validate`) when no
  server with that IP exists; otherwise nothing. Coolify's API (v4.3.x `ServersController`) accepts only
  name/description/ip/port/user/private_key_uuid/is_build_server/instant_validate: there is no field for a
  wildcard domain or labels. So the wildcard domain goes into `server_settings.wildcard_domain` through
  psql in `coolify-db` (what the UI writes), and the labels into the server's description as JSON, which
  InkMCP's placement can read back from `GET /servers`.
- delete: `DELETE /servers/{uuid}`. Coolify refuses while the server still hosts resources, so removing a
  node from config cannot silently orphan tenant apps: the update fails until they are moved.
- The API token comes on stdin (secret). The delete step runs without stdin, so create leaves the token in
  a root-only file on the master (root there already owns Coolify's database and keys).

Hardening has one source of truth, `inkmcp.nodes.render.render_plan(HostParams)`, the plan `inkmcp nodes harden`
applies over fabric too: `host_plan()` builds the node's `HostParams` (`muscle_config.host_params`: platform
CIDRs from the network stack, Docker pools/MTU, the gVisor selector with the `platformContainers` allow-list),
every file of the plan is uploaded, and `harden_script()` sets the plan's modes and runs the plan's commands,
each in its own `sh -c` and stopping at the first failure, exactly as the CLI's apply does. Each command prints
`changed: ...` only when it changed something, so a re-run on a converged node is silent.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_hcloud as hcloud
from pulumi_command import remote

from inkmcp.infra.factory import READ_SECRETS, connection, gate_of, secret_stdin, shell
from inkmcp.infra.factory_config import NetworkStackOutputs
from inkmcp.infra.muscle_config import (
    VSWITCH_MTU,
    FactoryStackOutputs,
    MuscleConfig,
    MuscleSecrets,
    RunServer,
    host_params,
)
from inkmcp.nodes.render import HostPlan, render_plan

COOLIFY_TOKEN_FILE = "/root/.inkmcp/coolify-api-token"  # noqa: S105 - a path, not a password
NETPLAN_PATH = "/etc/netplan/60-inkmcp-vswitch.yaml"


# --------------------------------------------------------------------------------------------------
# The renderer boundary
# --------------------------------------------------------------------------------------------------


def host_plan(conf: MuscleConfig, node: RunServer, net: NetworkStackOutputs) -> HostPlan:
    """The node's hardening plan: files (absolute host paths), their modes, and the ordered commands."""
    plan = render_plan(host_params(conf, node, net))
    for path in plan.files:
        if not path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"renderer returned {path!r}; host file paths must be absolute and plain")
    return plan


def harden_script(plan: HostPlan) -> str:
    """Modes (CopyToRemote does not set them) and the plan's commands, in order. Each command runs in its own
    `sh -c`, as `inkmcp nodes harden` runs it, so `a && b` inside one fails the step exactly as it fails there."""
    lines = ["set -e", "# Uploaded files: root-owned with the plan's modes (the selector refuses anything else)."]
    for path in sorted(plan.files):
        q = shlex.quote(path)
        lines.append(f"chown 0:0 {q} && chmod {plan.modes[path]:o} {q}")
    lines.append("# render_plan(params).commands, in order.")
    lines += [f"sh -c {shlex.quote(command)}" for command in plan.commands]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Pure renderers for what this module owns
# --------------------------------------------------------------------------------------------------


def netplan_vswitch(node: RunServer, net: NetworkStackOutputs) -> str:
    """A VLAN interface on the vSwitch, MTU 1400, and the Cloud Network routed via the vSwitch gateway."""
    subnet = net.vswitch_subnet
    gateway = net.vswitch_gateway_ip
    return (
        "# Managed by the InkMCP muscle stack. The vSwitch carries at most 1400-byte frames (Hetzner).\n"
        "network:\n"
        "  version: 2\n"
        "  vlans:\n"
        f"    vlan{net.vlan_id}:\n"
        f"      id: {net.vlan_id}\n"
        f"      link: {node.interface}\n"
        f"      mtu: {VSWITCH_MTU}\n"
        f"      addresses: [\"{node.private_ip}/{subnet.prefixlen}\"]\n"
        "      routes:\n"
        f"        - to: \"{net.network_cidr}\"\n"
        f"          via: \"{gateway}\"\n"
    )


def vswitch_script(content: str) -> str:
    """Install the netplan file only when it differs and only after it validated.

    The file is first generated in a staged copy of /etc/netplan (`netplan generate --root-dir`): netplan
    resolves `link:` only against NICs declared in netplan, so on a node whose NIC is configured elsewhere
    the file would be rejected, and installing it first would leave /etc/netplan broken for the next boot.
    """
    return f"""
command -v netplan >/dev/null || {{ echo "netplan not found: run servers must use netplan (Ubuntu)" >&2; exit 1; }}
tmp=$(mktemp)
cat > "$tmp" <<'NETPLAN'
{content}NETPLAN
if cmp -s "$tmp" {NETPLAN_PATH}; then rm -f "$tmp"; echo "vswitch unchanged"; exit 0; fi
stage=$(mktemp -d)
mkdir -p "$stage/etc/netplan"
cp -a /etc/netplan/. "$stage/etc/netplan/"
install -m 600 "$tmp" "$stage{NETPLAN_PATH}"
if ! netplan generate --root-dir "$stage" 2>"$stage/error"; then
  echo "vswitch netplan rejected, /etc/netplan left unchanged: $(cat "$stage/error")" >&2
  echo "declare the vSwitch NIC in the host's own netplan file first" >&2
  rm -rf "$stage" "$tmp"; exit 1
fi
rm -rf "$stage"
install -m 600 "$tmp" {NETPLAN_PATH}; rm -f "$tmp"
netplan generate
netplan apply
"""


def authorized_key_script(public_key: str) -> str:
    line = shlex.quote(public_key)
    return f"""
install -d -m 700 /root/.ssh
touch /root/.ssh/authorized_keys; chmod 600 /root/.ssh/authorized_keys
grep -qxF {line} /root/.ssh/authorized_keys || echo {line} >> /root/.ssh/authorized_keys
"""


def register_script(conf: MuscleConfig, node: RunServer, zone_name: str) -> str:
    """Idempotent registration on the master (see the module docstring)."""
    wildcard = f"https://s{node.index}.{conf.apps_subdomain}.{zone_name}"
    description = "inkmcp:" + json.dumps({"index": node.index, "labels": node.labels}, sort_keys=True)
    body = {"name": node.name, "description": description, "ip": str(node.private_ip), "port": node.ssh_port,
            "user": "root", "private_key_uuid": conf.coolify_private_key_uuid, "is_build_server": False,
            "instant_validate": True}
    ip = str(node.private_ip)
    return READ_SECRETS + f"""
install -d -m 700 /root/.inkmcp
umask 077; printf '%s' "$COOLIFY_API_TOKEN" > {COOLIFY_TOKEN_FILE}; umask 022
API=http://127.0.0.1:8000/api/v1
auth() {{ printf 'header = "Authorization: Bearer %s"\\n' "$(cat {COOLIFY_TOKEN_FILE})"; }}
uuid=$(curl -fsS -K <(auth) "$API/servers" | jq -r --arg ip {ip} '.[] | select(.ip == $ip) | .uuid' | head -n1)
if [ -z "$uuid" ]; then
  uuid=$(printf '%s' {shlex.quote(json.dumps(body, sort_keys=True))} \\
    | curl -fsS -K <(auth) -H 'Content-Type: application/json' -X POST --data-binary @- "$API/servers" \\
    | jq -r .uuid)
else
  printf '%s' {shlex.quote(json.dumps({"name": node.name, "description": description}, sort_keys=True))} \\
    | curl -fsS -K <(auth) -H 'Content-Type: application/json' -X PATCH --data-binary @- "$API/servers/$uuid" \\
    >/dev/null
fi
[ -n "$uuid" ] && [ "$uuid" != null ] || {{ echo "registration of {node.name} failed" >&2; exit 1; }}
# Not in the API: the wildcard domain is a server setting (what Settings > Wildcard Domain writes).
docker exec coolify-db psql -U coolify -d coolify -v ON_ERROR_STOP=1 -tAc \\
  "UPDATE server_settings SET wildcard_domain = '{wildcard}'
   WHERE server_id = (SELECT id FROM servers WHERE uuid = '$uuid')"
echo "$uuid"
"""


def unregister_script(node: RunServer) -> str:
    ip = str(node.private_ip)
    return f"""
API=http://127.0.0.1:8000/api/v1
[ -r {COOLIFY_TOKEN_FILE} ] || {{ echo "no token at {COOLIFY_TOKEN_FILE}; remove {node.name} in Coolify" >&2; exit 1; }}
auth() {{ printf 'header = "Authorization: Bearer %s"\\n' "$(cat {COOLIFY_TOKEN_FILE})"; }}
uuid=$(curl -fsS -K <(auth) "$API/servers" | jq -r --arg ip {ip} '.[] | select(.ip == $ip) | .uuid' | head -n1)
[ -z "$uuid" ] && {{ echo "{node.name} not registered"; exit 0; }}
curl -fsS -K <(auth) -X DELETE "$API/servers/$uuid"
"""


def sablier_script(conf: MuscleConfig) -> str:
    """Sablier server on the `coolify` network (runc: it needs the Docker socket, which runsc refuses) and the
    plugin flags in Coolify's proxy compose (custom flags survive Coolify's regeneration, NOTES.md §g)."""
    image = shlex.quote(conf.sablier_image)
    v = conf.sablier_plugin_version
    flags = [
        "--experimental.plugins.sablier.modulename=github.com/sablierapp/sablier-traefik-plugin",
        f"--experimental.plugins.sablier.version={v}",
    ]
    # Insert each flag after the file-provider watch flag, with that line's indentation and quoting.
    anchor = r"^\(\s*\)- '\?--providers.file.watch=true'\?$"
    add_flags = "\n".join(
        f"grep -qF -- '{f}' \"$compose\" || {{ sed -i \"s|{anchor}|&\\n\\1- '{f}'|\" \"$compose\"; changed=1; }}"
        for f in flags
    )
    return f"""
# Coolify creates the `coolify` network and its proxy after validating the server; wait for both.
for _ in $(seq 1 120); do
  docker network inspect coolify >/dev/null 2>&1 && [ -f /data/coolify/proxy/docker-compose.yml ] && break
  sleep 5
done
docker network inspect coolify >/dev/null
have=$(docker inspect sablier --format '{{{{.Config.Image}}}}|{{{{.HostConfig.Runtime}}}}' 2>/dev/null || true)
if [ "$have" != {shlex.quote(conf.sablier_image + "|runc")} ]; then
  docker rm -f sablier >/dev/null 2>&1 || true
  docker run -d --name sablier --restart unless-stopped --runtime runc --network coolify \\
    --label coolify.managed=false -v /var/run/docker.sock:/var/run/docker.sock {image} \\
    start --provider.name=docker
fi
compose=/data/coolify/proxy/docker-compose.yml
changed=0
{add_flags}
grep -qF -- 'sablier.version={v}' "$compose" || {{ echo "could not add the sablier plugin to $compose" >&2; exit 1; }}
if [ "$changed" = 1 ]; then docker compose -f "$compose" up -d --force-recreate; fi
"""


def plan_digest(plan: HostPlan) -> str:
    """Changes whenever a file, a mode or a command changes: the `harden` step's trigger."""
    h = hashlib.sha256()
    for path in sorted(plan.files):
        h.update(f"{path}\0{plan.modes[path]:o}\0".encode() + plan.files[path].encode() + b"\0")
    h.update(harden_script(plan).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------------


@dataclass
class RunServerArgs:
    node: RunServer
    conf: MuscleConfig
    secrets: MuscleSecrets
    network: NetworkStackOutputs
    factory: FactoryStackOutputs
    plan: HostPlan

    @property
    def zone(self) -> str:
        assert self.network.zone_name, "checked by MuscleConfig.check_against"
        return self.network.zone_name


class RunServerNode(pulumi.ComponentResource):
    """One dedicated run server: SSH steps in order, Coolify registration, wildcard DNS."""

    def __init__(self, name: str, args: RunServerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("inkmcp:muscle:RunServer", name, None, opts)
        node, conf, s = args.node, args.conf, args.secrets
        conn = connection(str(node.public_ip), s.ssh_private_key, port=node.ssh_port)
        master = connection(args.factory.master_ipv4, s.ssh_private_key)

        def cmd(step: str, create: str, *, after: list[pulumi.Resource], on: remote.ConnectionArgs = conn,
                **kw: Any) -> remote.Command:
            return remote.Command(f"{name}-{step}", connection=on, create=create, add_previous_output_in_env=False,
                                  opts=pulumi.ResourceOptions(parent=self, depends_on=after), **kw)

        self.authorized_key = cmd("authorized-key", shell(authorized_key_script(conf.coolify_public_key)), after=[])
        self.vswitch = cmd("vswitch", shell(vswitch_script(netplan_vswitch(node, args.network))),
                           after=[self.authorized_key])
        self.files = [
            remote.CopyToRemote(
                f"{name}-file{path.replace('/', '-')}",
                connection=conn,
                source=pulumi.StringAsset(content),
                remote_path=path,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.vswitch]),
            )
            for path, content in sorted(args.plan.files.items())
        ]
        self.harden = cmd("harden", shell(harden_script(args.plan)), after=[self.vswitch, *self.files],
                          triggers=[plan_digest(args.plan)])
        self.register = cmd(
            "register", shell(register_script(conf, node, args.zone)),
            delete=shell(unregister_script(node)),
            stdin=secret_stdin({"COOLIFY_API_TOKEN": s.coolify_api_token}),
            on=master, after=[self.harden])
        self.sablier = cmd("sablier", shell(sablier_script(conf)), after=[self.register])
        self.dns = hcloud.ZoneRrset(
            f"{name}-wildcard",
            zone=args.zone,
            name=node.wildcard(conf.apps_subdomain),
            type="A",
            ttl=conf.dns_ttl,
            records=[hcloud.ZoneRrsetRecordArgs(value=str(node.public_ip), comment=f"run server {node.name}")],
            labels={"managed-by": "pulumi", "run-server": node.name},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.fqdn = f"{node.wildcard(conf.apps_subdomain)}.{args.zone}"
        self.register_outputs({"wildcard": self.fqdn, "public_ip": str(node.public_ip),
                               "coolify_server": self.register.stdout})


@dataclass
class MusclePlaneArgs:
    conf: MuscleConfig
    secrets: MuscleSecrets
    network: pulumi.Output[NetworkStackOutputs]
    """Validated, e.g. `gated_network(ref.outputs, conf.check_against)`; gates every resource."""
    factory: pulumi.Output[FactoryStackOutputs]


class MusclePlane(pulumi.ComponentResource):
    """All run servers. Nodes are created inside one `apply` over the validated stack outputs: their SSH
    scripts need plain values (addresses, VLAN id), and nothing is registered if validation fails."""

    def __init__(self, name: str, args: MusclePlaneArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("inkmcp:muscle:Plane", name, None, opts)
        conf = args.conf
        gate = gate_of(args.network)

        def build(values: list[Any]) -> dict[str, str]:
            net, factory = values[0], values[1]
            nodes = {}
            for node in conf.run_servers:
                nodes[node.name] = RunServerNode(
                    f"run-{node.name}",
                    RunServerArgs(node=node, conf=conf, secrets=args.secrets, network=net, factory=factory,
                                  plan=host_plan(conf, node, net)),
                    pulumi.ResourceOptions(parent=self, depends_on=[]),
                )
            self.nodes = nodes
            return {n: r.fqdn for n, r in nodes.items()}

        self.nodes: dict[str, RunServerNode] = {}
        self.wildcards = pulumi.Output.all(args.network, args.factory, gate).apply(build)
        self.register_outputs({"wildcards": self.wildcards})
