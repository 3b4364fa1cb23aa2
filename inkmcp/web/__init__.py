"""The web UI (issue 11): "Sign in with GitHub" and a small dashboard (API keys, projects, deployments, logs),
server-rendered on the same port as /mcp. See docs/web.md.

Entry point: `inkmcp.web.build.build_web` (called by `inkmcp serve`). This package module imports nothing, so
`inkmcp.store.models` can import `inkmcp.web.models` (its table) without a cycle.
"""
