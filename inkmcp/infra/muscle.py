"""The muscle plane as Pulumi components: dedicated run servers configured over SSH and registered in Coolify.

    MusclePlane          inkmcp:muscle:Plane       one RunServer per `runServers` entry
      RunServer          inkmcp:muscle:RunServer   per node, in this order:
        authorized-key   Coolify's public key for root (Coolify manages servers over SSH)
        vswitch          netplan VLAN on the vSwitch (MTU 1400) + route to the Cloud Network
        file-*           host files of the hardening plan (CopyToRemote), incl. the gVisor runtime selector
        harden           modes, then the plan's commands in order (selector install, daemon.json, DOCKER-USER, ...)
        sablier          on the node: the pin (pinned proxy and Sablier digests pulled, resolved and admitted by
                         the selector config), the `coolify` network (MTU), the Sablier server container (by digest)
        coolify          Coolify's record of the node, through Coolify's API (dynamic provider, see below)
        register         on the Coolify master: the wildcard domain (the one setting the API lacks)
        dns              `*.sN.apps.<domain>` A record -> the node's public IP (hcloud ZoneRrset)

Registration in Coolify (`coolify`, runbooks/gvisor-decision.md §4.5, review #5, #7, #9) is
`inkmcp.infra.coolify_server_provider.CoolifyServer`, a dynamic provider around
`inkmcp.coolify.registration.reconcile`: `POST /servers` (`instant_validate: false`) when Coolify has no server
with the node's vSwitch IP, else `PATCH` what differs; Sentinel off; the proxy configuration stored in Coolify
(its database copy is what every proxy start writes to the node) with the pinned Traefik digest and the Sablier
plugin flags; validation; a proxy restart only when the configuration changed. A second `pulumi up` sends no
write, and its diff asks Coolify, so drift made in Coolify's UI (e.g. "Reset proxy configuration") is shown by
`pulumi preview` and repaired by `pulumi up`. Why a dynamic provider and not a command: the provider module's
docstring. It replaces a curl script on the master (which left the API token in a file there) and a `sed` on the
node's proxy compose, which Coolify's next restart overwrote from its database (review #7).

The machine running `pulumi up` reaches Coolify's API at `coolifyApiUrl` (default: the master's private address,
`http://<master_private_ip>:8000`, for runs inside the Cloud Network; `https://<instance domain>` or an SSH tunnel
from elsewhere; http to a public address is refused, review #14). The node's labels go into the server's
description as JSON (`inkmcp:{"index": N, "labels": {...}}`), which placement can read back from `GET /servers`.

The images come from the selector's platform entries, one value each: the proxy's configuration in Coolify pins the
first image of the `proxy` entry, the Sablier container runs the first image of the `sablier` entry (the other
listed digests stay admitted by the selector while nodes move over).

Removing a node deletes its Coolify server (`DELETE /servers/{uuid}`); Coolify refuses while the server still hosts
resources, so removing a node from config cannot silently orphan tenant apps: the update fails until they move.
The `register` step keeps its name from the curl-script era on purpose: updating it in place replaces the delete
script stored with it (the old one removed the server by IP), so upgrading a stack never runs that script.

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
import re
import shlex
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_hcloud as hcloud
from pulumi_command import remote

from inkmcp.infra.coolify_server_provider import CoolifyServer, CoolifyServerProvider
from inkmcp.infra.factory import connection, gate_of, shell
from inkmcp.infra.factory_config import NetworkStackOutputs
from inkmcp.infra.muscle_config import (
    VSWITCH_MTU,
    FactoryStackOutputs,
    MuscleConfig,
    MuscleSecrets,
    RunServer,
    host_params,
)
from inkmcp.nodes.registry import registry_client_script, registry_client_stdin
from inkmcp.nodes.render import HostParams, HostPlan, pin_platform_command, render_plan

COOLIFY_TOKEN_FILE = "/root/.inkmcp/coolify-api-token"  # noqa: S105 - a path, not a password
"""Where the curl-era register step left the API token on the master; the register step now removes it."""
COOLIFY_UUID_RE = re.compile(r"^[a-z0-9]{1,64}$")
"""Coolify's uuids are 24 lowercase alphanumerics (`new_public_id()`); checked before one goes into SQL/shell."""
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


def pinned_image(conf: MuscleConfig, profile: str) -> str:
    """The image a platform entry runs: the first digest of its `platformContainers` entry (the others stay
    admitted by the selector while nodes move over). One value feeds both the selector and what runs."""
    for spec in conf.platform_containers:
        if spec.profile == profile:
            return spec.images[0]
    raise ValueError(f"platformContainers has no {profile!r} entry")


def coolify_api_url(conf: MuscleConfig, factory: FactoryStackOutputs) -> str:
    """`coolifyApiUrl`, else the master's private address (the Cloud Network; review #14)."""
    return conf.coolify_api_url or f"http://{factory.master_private_ip}:8000"


def server_description(node: RunServer) -> str:
    """What placement reads back from `GET /servers`: the node's index and labels."""
    return "inkmcp:" + json.dumps({"index": node.index, "labels": node.labels}, sort_keys=True)


def register_script(conf: MuscleConfig, node: RunServer, zone_name: str, server_uuid: str) -> str:
    """On the master: the server's wildcard domain, the one registration setting Coolify's API has no field for
    (4.3.11 `ServersController` update allow-list), written where Settings > Wildcard Domain writes it. Also
    removes the API token the curl-era register step left on the master."""
    if not COOLIFY_UUID_RE.match(server_uuid):
        raise ValueError(f"Coolify server uuid {server_uuid!r} is not lowercase alphanumerics")
    wildcard = f"https://s{node.index}.{conf.apps_subdomain}.{zone_name}"
    return f"""
rm -f {COOLIFY_TOKEN_FILE}
docker exec coolify-db psql -U coolify -d coolify -v ON_ERROR_STOP=1 -tAc \\
  "UPDATE server_settings SET wildcard_domain = '{wildcard}'
   WHERE server_id = (SELECT id FROM servers WHERE uuid = '{server_uuid}')" | grep -qx 'UPDATE 1' \\
  || {{ echo "no Coolify server {server_uuid} ({node.name}) to set the wildcard domain on" >&2; exit 1; }}
echo "{node.name}: wildcard domain {wildcard}"
"""


def sablier_script(conf: MuscleConfig, mtu: int = VSWITCH_MTU) -> str:
    """On the node, before Coolify is told about it (runbooks/gvisor-decision.md §4.5 step (3)): the pin
    (hardening/scripts/inkmcp-pin-platform, the harden step ran it already and it is idempotent) makes sure every
    platform image of the node's selector config is on the node and resolved to this node's image ID, and
    `--require` fails the step unless that config pins exactly the proxy digest Coolify is about to be given
    (the `coolify` step's `proxy_image`) and the Sablier digest run below, resolved: both come from
    `platformContainers` (`pinned_image`), and so does the selector config, so the node itself proves the pin and
    the proxy configuration did not drift. The proxy image is then on the node before Coolify's `docker compose
    pull` and restart. Then Coolify's `coolify` network with the vSwitch MTU (Coolify's own create is `|| true`,
    so it keeps this one; review #19), and the Sablier server on it by digest (its Traefik plugin reaches it as
    http://sablier:10000), recreated only when it does not run the pinned image; no `--runtime`: the selector
    decides (platform entry `sablier`), which it can only because its image is resolved."""
    sablier = pinned_image(conf, "sablier")
    proxy = pinned_image(conf, "proxy")
    q_sablier = shlex.quote(sablier)
    pin = pin_platform_command(HostParams(), require=[("proxy", proxy), ("sablier", sablier)])
    return f"""
{pin}
docker network inspect coolify >/dev/null 2>&1 \\
  || docker network create --attachable -o com.docker.network.driver.mtu={mtu} coolify >/dev/null
want=$(docker image inspect --format '{{{{.Id}}}}' {q_sablier})
have=$(docker inspect --format '{{{{.Image}}}}' sablier 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  docker rm -f sablier >/dev/null 2>&1 || true
  docker run -d --name sablier --restart unless-stopped --network coolify \\
    --label coolify.managed=false -v /var/run/docker.sock:/var/run/docker.sock {q_sablier} \\
    start --provider.name=docker >/dev/null
  echo "changed: sablier runs {sablier}"
fi
"""


def registry_pull_script(factory: FactoryStackOutputs) -> str:
    """The registry's CA in `/etc/docker/certs.d/<registry>/ca.crt` and its read-only `pull` user in root's
    `~/.docker/config.json` (review #3): Coolify pulls each build with `docker compose up --pull always` over
    SSH as root (ADJ:1947-1950, 4083), and TLS is verified, never `insecure-registries`. The credentials come
    on stdin (`registry_pull_stdin`)."""
    if not factory.registry_ca_cert:
        raise ValueError("the factory stack exports no registry_ca_cert (it predates registry TLS): run `pulumi up` "
                         "on the factory stack first, then on this one")
    host, _, port = factory.registry_endpoint.rpartition(":")
    if not host or not port.isdigit():
        host, port = factory.registry_endpoint, "443"
    return registry_client_script(host, factory.registry_ca_cert, port=int(port))


def registry_pull_stdin(secrets: MuscleSecrets) -> pulumi.Output[str]:
    if secrets.registry_pull_password is None:
        raise ValueError("run servers need the registry's read-only user: `pulumi config set --secret "
                         "registryPullPassword ...` (the factory stack's registryPullPassword)")
    return pulumi.Output.secret(secrets.registry_pull_password.apply(lambda pw: registry_client_stdin("pull", pw)))


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
    coolify_provider: CoolifyServerProvider | None = None
    """Tunables for Coolify registration (tests shorten the validation wait); None: the defaults."""

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
        self.registry_pull = cmd("registry-pull", shell(registry_pull_script(args.factory)),
                                 stdin=registry_pull_stdin(s), after=[self.harden])
        self.sablier = cmd("sablier", shell(sablier_script(conf, conf.docker_mtu)), after=[self.harden])
        self.coolify = CoolifyServer(
            f"{name}-coolify",
            api_url=coolify_api_url(conf, args.factory),
            api_token=s.coolify_api_token,
            ip=str(node.private_ip),
            private_key_uuid=conf.coolify_private_key_uuid,
            name=node.name,
            description=server_description(node),
            port=node.ssh_port,
            user="root",
            proxy_image=pinned_image(conf, "proxy"),
            sablier_plugin_version=conf.sablier_plugin_version,
            provider=args.coolify_provider,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.sablier]),
        )
        self.register = cmd(
            "register", self.coolify.id.apply(lambda uuid: shell(register_script(conf, node, args.zone, uuid))),
            on=master, after=[self.coolify])
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
                               "coolify_server": self.coolify.id})


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
