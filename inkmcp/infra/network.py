"""ComponentResources of the network plane: Robot vSwitch, Cloud Network with its subnets and routes, DNS zone.

Order matters and is encoded as dependencies (contract §4): the vSwitch with its servers first, then the
Network, then the ``vswitch`` subnet that couples them by Robot's numeric vSwitch id. On destroy Pulumi
walks that graph backwards, so the subnet is uncoupled before the vSwitch is cancelled.

DNS uses pulumi-hcloud's ``Zone`` and ``ZoneRrset`` (Hetzner's DNS now lives in the Cloud API; 1.43.3 has both).

Replacement (what a changed input does on ``pulumi up``). pulumi-hcloud 1.43.3 bridges terraform-provider-hcloud
v1.68.0, whose schema marks these inputs replace-forcing (ForceNew / RequiresReplace; file:line at tag v1.68.0):
``Network.ip_range`` (internal/network/resource.go:40), every input of ``NetworkSubnet`` that we set
(internal/network/resource_subnet.go:38,43,53,58,67) and of ``NetworkRoute`` (resource_route.go:37,42,47),
``Zone.name``/``Zone.mode`` (internal/zone/resource.go:81,88), ``ZoneRrset.zone/name/type``
(internal/zonerrset/resource.go:88,102,109). How each is handled:

- protected Network, Zone, vSwitch: their replace-forcing inputs are what the resource *is* (its range, its
  domain, which Robot). A change means a different resource, and Pulumi's protect refuses it loudly; that is
  the intent (a new network would detach every server). Nothing of theirs changes routinely.
- subnets and routes: replacement is intended (a CIDR edit), but Pulumi's default create-before-delete would
  create the new subnet next to the old one, overlapping it or coupling the same vSwitch twice, which the
  Cloud API refuses. ``delete_before_replace`` removes the old one first; they are not protected.
- RRSets: replaced create-before-delete, which works (a new name or type is a different RRSet).
``tests/stacks/test_replacement_guard.py`` fails when a protected resource gets a replace-forcing input that is
neither ignored nor listed there as identity.
"""

from __future__ import annotations

import pulumi
import pulumi_hcloud as hcloud

from inkmcp.infra.network_config import DnsConfig, NetworkConfig, txt_value
from inkmcp.infra.vswitch_provider import RobotVSwitch, VSwitchProvider


def _child(parent: pulumi.Resource, protect: bool = False, **kw: object) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, protect=protect, **kw)  # type: ignore[arg-type]


class PrivateNetwork(pulumi.ComponentResource):
    """The Cloud Network, its cloud subnet, the vswitch subnet coupled to ``vswitch_id``, and its routes."""

    network: hcloud.Network
    network_id: pulumi.Output[int]
    cloud_subnet: hcloud.NetworkSubnet
    vswitch_subnet: hcloud.NetworkSubnet
    routes: list[hcloud.NetworkRoute]

    def __init__(self, name: str, config: NetworkConfig, vswitch: RobotVSwitch,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("inkmcp:network:PrivateNetwork", name, None, opts)
        self.network = hcloud.Network(
            f"{name}-network",
            name=config.name,
            ip_range=config.ip_range,
            expose_routes_to_vswitch=config.expose_routes_to_vswitch,
            delete_protection=config.protect,
            labels=config.labels,
            opts=_child(self, protect=config.protect),
        )
        # hcloud ids are strings in Pulumi; subnets and routes want the integer.
        self.network_id = self.network.id.apply(int)
        # Every subnet input is replace-forcing; a CIDR edit must delete the old subnet before creating the
        # new one, or the API refuses the overlapping range (review #15).
        self.cloud_subnet = hcloud.NetworkSubnet(
            f"{name}-cloud",
            network_id=self.network_id,
            type="cloud",
            network_zone=config.network_zone,
            ip_range=config.cloud_subnet,
            opts=_child(self, delete_before_replace=True),
        )
        self.vswitch_subnet = hcloud.NetworkSubnet(
            f"{name}-vswitch",
            network_id=self.network_id,
            type="vswitch",
            network_zone=config.network_zone,
            ip_range=config.vswitch_subnet,
            vswitch_id=vswitch.vswitch_id,
            # Explicit so the coupling waits for every server attachment, not just the id. Delete first: a
            # vSwitch couples to one subnet only, and the new range would overlap the old one.
            opts=_child(self, depends_on=[vswitch], delete_before_replace=True),
        )
        # Hetzner checks a route against existing subnets; create routes after both. Every route input is
        # replace-forcing: delete the old route first, or the new destination overlaps it and is refused.
        self.routes = [
            hcloud.NetworkRoute(
                f"{name}-route-{i}",
                network_id=self.network_id,
                destination=route.destination,
                gateway=str(route.gateway),
                opts=_child(self, depends_on=[self.cloud_subnet, self.vswitch_subnet], delete_before_replace=True),
            )
            for i, route in enumerate(config.routes)
        ]
        self.register_outputs({
            "network_id": self.network_id,
            "cloud_subnet_cidr": config.cloud_subnet,
            "vswitch_subnet_cidr": config.vswitch_subnet,
        })


class DnsZone(pulumi.ComponentResource):
    """The platform's primary DNS zone and one RRSet per configured name+type."""

    zone: hcloud.Zone
    rrsets: list[hcloud.ZoneRrset]

    def __init__(self, name: str, dns: DnsConfig, *, protect: bool, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("inkmcp:network:DnsZone", name, None, opts)
        self.zone = hcloud.Zone(
            f"{name}-zone",
            name=dns.zone,
            mode="primary",
            ttl=dns.ttl,
            delete_protection=protect,
            labels=labels,
            opts=_child(self, protect=protect),
        )
        self.rrsets = [
            hcloud.ZoneRrset(
                f"{name}-{record.type.lower()}-{record.name.replace('*', 'wildcard').replace('.', '-')}",
                zone=self.zone.name,
                name=record.name,
                type=record.type,
                ttl=record.ttl,
                records=[{"value": txt_value(v) if record.type == "TXT" else v} for v in record.values],
                opts=_child(self),
            )
            for record in dns.records
        ]
        self.register_outputs({"zone_id": self.zone.id, "zone_name": self.zone.name})


class NetworkPlane(pulumi.ComponentResource):
    """The whole network plane; its attributes are what ``stacks/network`` exports."""

    vswitch: RobotVSwitch
    private_network: PrivateNetwork
    dns: DnsZone | None

    def __init__(
        self,
        name: str,
        config: NetworkConfig,
        *,
        robot_user: pulumi.Input[str] | None = None,
        robot_password: pulumi.Input[str] | None = None,
        vswitch_provider: VSwitchProvider | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("inkmcp:network:NetworkPlane", name, None, opts)
        self.config = config
        self.vswitch = RobotVSwitch(
            f"{name}-robot-vswitch",
            name=config.vswitch.name,
            vlan=config.vswitch.vlan,
            servers=[s.number for s in config.vswitch.servers],
            robot_user=robot_user,
            robot_password=robot_password,
            base_url=config.robot_base_url,
            provider=vswitch_provider,
            opts=_child(self, protect=config.protect),
        )
        self.private_network = PrivateNetwork(name, config, self.vswitch, opts=_child(self))
        self.dns = (DnsZone(name, config.dns, protect=config.protect, labels=config.labels, opts=_child(self))
                    if config.dns else None)
        self.register_outputs(self.outputs())

    def outputs(self) -> dict[str, pulumi.Input[object]]:
        """What other stacks read through a StackReference. Nothing secret.

        Names follow the consumers' contract, ``inkmcp.infra.factory_config.NetworkStackOutputs``.
        """
        c = self.config
        out: dict[str, pulumi.Input[object]] = {
            "network_id": self.private_network.network_id,
            "network_name": c.name,
            "network_zone": c.network_zone,
            "network_cidr": c.ip_range,
            "cloud_subnet_cidr": c.cloud_subnet,
            "cloud_gateway": c.cloud_gateway,
            "vswitch_subnet_cidr": c.vswitch_subnet,
            "vswitch_gateway": c.vswitch_gateway,
            "vswitch_id": self.vswitch.vswitch_id,
            "vlan_id": self.vswitch.vlan,
            "routes": [{"destination": r.destination, "gateway": str(r.gateway)} for r in c.routes],
            "dedicated_servers": [
                {"number": s.number, "name": s.name, "vswitch_ip": str(s.vswitch_ip) if s.vswitch_ip else None}
                for s in c.vswitch.servers
            ],
            "zone_id": self.dns.zone.id if self.dns else None,
            "zone_name": self.dns.zone.name if self.dns else None,
            # Delegate the domain to these at the registrar (runbooks/network); nothing resolves before that.
            "zone_nameservers": (self.dns.zone.authoritative_nameservers.apply(
                lambda ns: list(ns.assigneds or []) if ns else []) if self.dns else None),
        }
        return out
