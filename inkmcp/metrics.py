"""Prometheus metrics, served at /metrics beside /mcp. A private registry keeps tests independent."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tool_calls = Counter(
            "inkmcp_tool_calls", "MCP tool calls", ["tool", "outcome"], registry=self.registry
        )
        self.deploy_duration = Histogram(
            "inkmcp_deploy_duration_seconds",
            "Deployment duration from queued to live or failed",
            ["outcome"],
            buckets=(1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.running_services = Gauge(
            "inkmcp_running_services", "Services with a live deployment", registry=self.registry
        )
        self.http_unauthorized = Counter(
            "inkmcp_http_unauthorized", "Requests refused with 401", registry=self.registry
        )
