"""GitHub sign-in, private repositories and push-to-deploy (issue 11).

Modules: `settings` (INKMCP_GITHUB_*), `client` (OAuth + REST over httpx), `models` (tables of migration 0008),
`identity` (GitHub user → InkMCP account, token sealed at rest), `access` (private-repo checks and git auth for
clones), `webhooks` (POST /webhooks/github), `standin` (a GitHub stand-in for tests and local development).
Importing this package imports nothing else, so the store's models can import `inkmcp.github.models` cheaply.
"""
