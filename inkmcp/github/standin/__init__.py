"""GitHub stand-in (issue 11 item 6): see `app.py` for the contract it follows; `python -m inkmcp.github.standin`
runs it for local development."""

from inkmcp.github.standin.app import Delivery, StandinGitHub, sign
from inkmcp.github.standin.state import Repo, User

__all__ = ["Delivery", "Repo", "StandinGitHub", "User", "sign"]
