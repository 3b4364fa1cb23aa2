"""The vocabulary agents use, re-exported for the layers above core.

They are defined beside the provider contracts that consume them (providers sit below core and
must not import it); `inkmcp.mcp` takes them from here so that it never imports a provider module.
"""

from inkmcp.build.plan import Mode, ServiceType
from inkmcp.providers.compute.base import LogScope, Resources
from inkmcp.providers.database.base import Tier

__all__ = ["LogScope", "Mode", "Resources", "ServiceType", "Tier"]
