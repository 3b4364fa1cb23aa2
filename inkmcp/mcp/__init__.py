"""The agent contract: tool signatures, annotations, and domain errors mapped to actionable tool errors.

Never imports a provider: everything goes through `inkmcp.core.platform.Platform`.
"""
