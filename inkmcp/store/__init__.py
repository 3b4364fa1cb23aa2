"""The control-plane store: PostgreSQL schema, migrations, encryption of secret columns.

Knows no provider and no tool.
"""
