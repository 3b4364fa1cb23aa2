"""Run-server hardening: one renderer (used by the muscle stack and the CLI), fabric apply and drift check.

The files themselves live in the repository's `hardening/` directory (jinja2 templates and scripts);
this package turns validated parameters into host files and converges a host over SSH.
"""

from inkmcp.nodes.render import HostParams, render_host_files, render_plan

__all__ = ["HostParams", "render_host_files", "render_plan"]
