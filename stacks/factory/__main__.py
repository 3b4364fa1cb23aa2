"""Factory plane: read validated config, read the network stack, compose. Nothing else lives here."""

import pulumi

from inkmcp.infra.factory import FactoryPlane, FactoryPlaneArgs, gated_network
from inkmcp.infra.factory_config import load_factory

conf, secrets = load_factory(pulumi.Config())
network_ref = pulumi.StackReference(conf.network_stack)
plane = FactoryPlane(
    "factory",
    FactoryPlaneArgs(conf=conf, secrets=secrets, network=gated_network(network_ref.outputs, conf.check_against)),
)
for key, value in plane.outputs.items():
    pulumi.export(key, value)
