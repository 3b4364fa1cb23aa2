"""One-machine backups of a whole InkMCP (issue 10 item 1): `inkmcp backup create|verify|restore`.

What a set holds and why, what verification guarantees, and how a restore stays all-or-nothing: docs/backup.md.
"""
