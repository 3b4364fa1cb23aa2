"""Credits, metering and spend caps (issue 13): see docs/billing.md.

`settings` (INKMCP_PRICES and friends), `models` (the tables of migration 0010), `ledger` (append-only credit
entries, balances, caps), `metering` (charging what ran, interval by interval, set-based), `enforce` (what happens
at zero: refusals, the wake gate, persistent services put to sleep after the grace period), `cli` (operator
commands) and `usage` (the get_usage view).
"""
