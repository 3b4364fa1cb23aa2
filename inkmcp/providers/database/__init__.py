"""Database providers: Postgres we create ourselves, bring-your-own (Neon later)."""
