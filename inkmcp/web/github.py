"""GitHub sign-in for the web UI: the GitHub helper's client and identity code (inkmcp/github/) behind the
small interface app.py needs (`GitHubSignIn`), with its errors turned into pages a user can act on."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.errors import Conflict
from inkmcp.github.client import GitHubClient, GitHubError
from inkmcp.github.identity import identity_of, sign_in
from inkmcp.github.settings import GitHubSettings
from inkmcp.store.crypto import SecretBox
from inkmcp.web.app import SignInError


class GitHubOAuth:
    def __init__(self, settings: GitHubSettings, sessions: async_sessionmaker[AsyncSession], box: SecretBox) -> None:
        self.settings = settings
        self._sessions = sessions
        self._box = box

    @property
    def configured(self) -> bool:
        return self.settings.configured

    @property
    def missing(self) -> list[str]:
        return self.settings.missing

    @property
    def github_url(self) -> str:
        return self.settings.github_url

    async def authorize_url(self, state: str) -> str:
        async with GitHubClient(self.settings) as gh:
            return gh.authorize_url(state, self.settings.callback_url or "")

    async def complete(self, code: str) -> str:
        """code → token → /user → account (token sealed by identity.sign_in). The token never leaves here."""
        try:
            async with GitHubClient(self.settings) as gh:
                token = await gh.exchange_code(code, self.settings.callback_url or "")
                user = await gh.get_user(token)
            return await sign_in(self._sessions, self._box, user, token)
        except GitHubError as e:
            refused = "refused" in e.message or "did not accept" in e.message
            raise SignInError(f"{e.message} {e.fix or ''}".strip(), status=400 if refused else 502) from None
        except Conflict as e:
            raise SignInError(f"{e.message} {e.fix or ''}".strip(), status=409) from None

    async def login_of(self, account_id: uuid.UUID) -> str | None:
        user = await identity_of(self._sessions, account_id)
        return None if user is None else user.login
