"""The local compute provider: builds and runs services as processes on this machine."""

from inkmcp.providers.compute.local.provider import LocalComputeProvider

__all__ = ["LocalComputeProvider"]
