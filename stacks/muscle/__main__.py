"""Muscle plane: read validated config, read the network and factory stacks, compose. Nothing else lives here."""

import pulumi

from inkmcp.infra.factory import gated_network
from inkmcp.infra.muscle import MusclePlane, MusclePlaneArgs
from inkmcp.infra.muscle_config import FactoryStackOutputs, load_muscle

conf, secrets = load_muscle(pulumi.Config())
network_ref = pulumi.StackReference(conf.network_stack)
factory_ref = pulumi.StackReference(conf.factory_stack)
plane = MusclePlane(
    "muscle",
    MusclePlaneArgs(
        conf=conf,
        secrets=secrets,
        network=gated_network(network_ref.outputs, conf.check_against),
        factory=factory_ref.outputs.apply(FactoryStackOutputs.parse),
    ),
)
pulumi.export("wildcards", plane.wildcards)
