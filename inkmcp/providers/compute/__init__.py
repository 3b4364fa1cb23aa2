"""Compute providers: where services are built and run (local processes, Coolify)."""
