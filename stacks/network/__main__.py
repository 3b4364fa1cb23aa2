"""Network plane: reads validated config and composes inkmcp.infra.network components; nothing else.

Invalid config fails here, before any resource is registered.
"""

from __future__ import annotations

import pulumi

from inkmcp.infra.network import NetworkPlane
from inkmcp.infra.network_config import NetworkConfig

config = pulumi.Config()
network_config = NetworkConfig.parse(config.get_object("network"))

plane = NetworkPlane(
    "inkmcp",
    network_config,
    # Secret inputs; when unset the provider falls back to HETZNER_ROBOT_USER/HETZNER_ROBOT_PASSWORD at call time.
    robot_user=config.get_secret("robotUser"),
    robot_password=config.get_secret("robotPassword"),
)

for key, value in plane.outputs().items():
    pulumi.export(key, value)
