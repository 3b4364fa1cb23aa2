"""Tenant database backups (issue 10 item 2): scheduled and on-demand dumps of each project's managed Postgres,
with retention, and restores that can themselves be undone. See docs/database-backups.md."""
