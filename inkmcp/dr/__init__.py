"""`inkmcp dr`: production disaster recovery for the factory plane (issue 10, item 3).

Each step is one command that runs on the host it restores or backs up (the master, the control-plane Postgres
host, the registry host), reaching the Hetzner Storage Box over SSH on port 23 and the Hetzner API over HTTPS.
The runbook is runbooks/dr/.
"""
