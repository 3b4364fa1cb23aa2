"""GitHub user → InkMCP account (issue 11 item 2), and the user's GitHub token sealed at rest.

Rules, in order, when a GitHub user signs in:

1. An account already bound to this GitHub user id is theirs, whatever its name: a rename on GitHub keeps the
   account (the stored login is updated).
2. Otherwise the account is named after the login (lowercased: account names are DNS labels). If no account has
   that name it is created and bound.
3. If an account of that name exists but is not bound to this GitHub user (made by the operator's CLI, or bound
   to another GitHub user who has since renamed and left the login free), it is NOT taken over: someone else
   holds the keys and projects there. The user gets their own account `<login>-gh<id>` (the numeric id makes it
   unique and stable), and a warning is logged. If both are the same person, the operator moves the binding with
   `inkmcp accounts github-move LOGIN-gh<id> LOGIN` (`move_identity`).

Everything runs in one transaction with the account row inserted ON CONFLICT DO NOTHING, so two concurrent
sign-ins of the same user end in one account and one identity row. The token is only ever stored encrypted
(SecretBox), never logged; `token_for` is the only way back to it.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.core.names import is_name, slugify
from inkmcp.errors import Conflict, NotFound
from inkmcp.github.client import GitHubUser
from inkmcp.github.models import GitHubIdentity
from inkmcp.store.crypto import SecretBox
from inkmcp.store.models import Account

log = logging.getLogger(__name__)


def preferred_name(user: GitHubUser) -> str:
    """The account name a GitHub login maps to: the login lowercased (GitHub logins are case-insensitive,
    alphanumeric and single hyphens, at most 39 characters, so this is a valid DNS label)."""
    name = slugify(user.login)
    return name if is_name(name) else fallback_name(user)


def fallback_name(user: GitHubUser) -> str:
    base = slugify(user.login)[: 63 - len(f"-gh{user.id}")].strip("-") or "github"
    return f"{base}-gh{user.id}"


async def _lock_name(s: AsyncSession, name: str) -> None:
    """Serialise sign-ins competing for one account name (advisory, transaction-scoped)."""
    await s.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"inkmcp-github-account:{name}"))))


async def sign_in(sessions: async_sessionmaker[AsyncSession], box: SecretBox, user: GitHubUser,
                  token: SecretStr | str) -> str:
    """Create or load the account of `user`, store `token` (encrypted) and return the account name."""
    raw = token.get_secret_value() if isinstance(token, SecretStr) else token
    sealed = box.encrypt(raw)
    now = datetime.now(UTC)
    async with sessions.begin() as s:
        await s.execute(select(_advisory(user.id)))
        bound = (await s.execute(
            select(GitHubIdentity, Account.name).join(Account, Account.id == GitHubIdentity.account_id)
            .where(GitHubIdentity.github_id == user.id))).first()
        if bound is not None:
            identity, name = bound
            if identity.login != user.login:
                log.info("GitHub user %d renamed %s → %s; account %s kept", user.id, identity.login, user.login, name)
            identity.login, identity.token_enc, identity.updated_at = user.login, sealed, now
            return str(name)
        for name in dict.fromkeys((preferred_name(user), fallback_name(user))):
            await _lock_name(s, name)
            inserted = (await s.execute(
                insert(Account).values(id=uuid.uuid4(), name=name).on_conflict_do_nothing()
                .returning(Account.id))).scalar_one_or_none()
            if inserted is not None:
                s.add(GitHubIdentity(account_id=inserted, github_id=user.id, login=user.login, token_enc=sealed,
                                     updated_at=now))
                return name
            existing = (await s.execute(select(Account.id).where(Account.name == name))).scalar_one()
            owner = (await s.execute(select(GitHubIdentity.github_id)
                                     .where(GitHubIdentity.account_id == existing))).scalar_one_or_none()
            log.warning("GitHub user %s (id %d) signed in but account %r already belongs to %s; not taking it over",
                        user.login, user.id, name, "the operator (no GitHub binding)" if owner is None
                        else f"GitHub user id {owner}")
        raise Conflict(f"GitHub user {user.login!r}: the account names {preferred_name(user)!r} and "
                       f"{fallback_name(user)!r} both belong to someone else.",
                       fix="ask the operator to free one of them (inkmcp keys/accounts); nothing was changed")


def _advisory(github_id: int) -> Any:
    """One sign-in per GitHub user at a time (advisory lock, released at commit)."""
    return func.pg_advisory_xact_lock(func.hashtext("inkmcp-github-user"), github_id % 2**31)


async def token_for(sessions: async_sessionmaker[AsyncSession], box: SecretBox, account_id: uuid.UUID) -> str | None:
    """The account's GitHub token in clear, or None when it never signed in with GitHub."""
    async with sessions() as s:
        sealed = (await s.execute(select(GitHubIdentity.token_enc)
                                  .where(GitHubIdentity.account_id == account_id))).scalar_one_or_none()
    return None if sealed is None else box.decrypt(bytes(sealed)).decode()


async def identity_of(sessions: async_sessionmaker[AsyncSession], account_id: uuid.UUID) -> GitHubUser | None:
    """The GitHub user bound to an account (for the dashboard), without the token."""
    async with sessions() as s:
        row = (await s.execute(select(GitHubIdentity.github_id, GitHubIdentity.login)
                               .where(GitHubIdentity.account_id == account_id))).first()
    return None if row is None else GitHubUser(id=row[0], login=row[1])


async def move_identity(sessions: async_sessionmaker[AsyncSession], from_account: str, to_account: str) -> GitHubUser:
    """Operator only (`inkmcp accounts github-move`): bind the GitHub user of `from_account` to `to_account` instead,
    token included. For the case sign-in refused to take over: an operator-made account `alice` and the GitHub user
    alice who got `alice-gh<id>` are the same person. The next sign-in of that GitHub user lands on `to_account`;
    keys and projects stay where they are. `to_account` must exist and have no GitHub binding."""
    async with sessions.begin() as s:
        names = [from_account, to_account]
        rows = dict((await s.execute(select(Account.name, Account.id).where(Account.name.in_(names))
                                     .with_for_update())).all())
        for name in (from_account, to_account):
            if name not in rows:
                raise NotFound(f"no account named {name!r}.", argument="account",
                               fix="pass account names as `inkmcp keys list` shows them")
        identity = (await s.execute(select(GitHubIdentity).where(GitHubIdentity.account_id == rows[from_account])
                                    .with_for_update())).scalar_one_or_none()
        if identity is None:
            raise NotFound(f"account {from_account!r} has no GitHub sign-in to move.", argument="from_account",
                           fix="pass the account the GitHub user signed in to (e.g. LOGIN-gh<id>)")
        taken = (await s.execute(select(GitHubIdentity.login).where(GitHubIdentity.account_id == rows[to_account])))
        if (login := taken.scalar_one_or_none()) is not None:
            raise Conflict(f"account {to_account!r} is already bound to GitHub user {login!r}.",
                           argument="to_account", fix="pass an account without a GitHub sign-in")
        identity.account_id, identity.updated_at = rows[to_account], datetime.now(UTC)
        log.warning("GitHub user %s (id %d) moved from account %r to %r by the operator", identity.login,
                    identity.github_id, from_account, to_account)
        return GitHubUser(id=identity.github_id, login=identity.login)
