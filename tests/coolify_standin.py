"""The Coolify 4.3.11 stand-in, re-exported for the tests that import it from here.

The implementation moved into the package (`inkmcp/coolify/standin/`) so developers can run it without a real
Coolify (`python -m inkmcp.coolify.standin`); see its docstring for what it covers and how to inject faults.
"""

from __future__ import annotations

from inkmcp.coolify.standin import (
    Application,
    BuildFault,
    Container,
    CoolifyStandin,
    Database,
    Deployment,
    EnvVar,
    Fault,
    NodeServer,
    Project,
    Seen,
    Token,
)

__all__ = ["Application", "BuildFault", "Container", "CoolifyStandin", "Database", "Deployment", "EnvVar", "Fault",
           "NodeServer", "Project", "Seen", "Token"]
