"""Browser sessions: a signed cookie carrying a random token, backed by a `web_sessions` row.

Signing (itsdangerous, HMAC-SHA256 with a timestamp) rejects forged and expired cookies before any database
work; the row is what makes logout real (see models.py). The signing key is one random value every replica
shares: `shared_keys` row "web-session-key", sealed by the encryption keys like the MAC key
(store/crypto.py `shared_value`), so a browser signed in through one replica is signed in on all of them, and
`rotate_all` re-encrypts it with the other secrets.

CSRF: a synchronizer token derived from the session token (HMAC with the signing key under its own label), so it
is tied to the session, changes at every sign-in and needs no storage. Checked on every POST with the Origin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.core.principal import Principal
from inkmcp.store.crypto import SecretBox, shared_value
from inkmcp.store.models import Account
from inkmcp.web.models import WebSession

SIGNING_KEY_ROW = "web-session-key"
ACTOR = "web"  # audit log actor of dashboard actions
_SESSION_SALT = "inkmcp.web.session"
_STATE_SALT = "inkmcp.web.oauth-state"
_MAX_COOKIE = 512  # a signed token is ~100 characters; anything far longer is not ours


async def signing_key(sessions: async_sessionmaker[AsyncSession], box: SecretBox) -> bytes:
    """The key every replica signs cookies with (created by the first replica that needs it)."""
    return await shared_value(sessions, box, SIGNING_KEY_ROW, lambda: secrets.token_bytes(32), "web session key")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class SignedIn:
    """The account a request's cookie belongs to, and the session token (for its CSRF token and logout)."""

    principal: Principal
    token: str


class WebSessions:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], key: bytes, lifetime: timedelta,
                 state_lifetime: timedelta) -> None:
        self._db = sessions
        self._key = key
        self.lifetime = lifetime
        self.state_lifetime = state_lifetime
        self._session_signer = URLSafeTimedSerializer(key, salt=_SESSION_SALT)
        self._state_signer = URLSafeTimedSerializer(key, salt=_STATE_SALT)

    # ------------------------------------------------------------- sessions
    async def start(self, account_name: str) -> str:
        """A new session for `account_name` (which exists: identity.sign_in made it); returns the cookie value.
        Expired rows are purged here, so the table holds live sessions only (no background job)."""
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        async with self._db.begin() as s:
            account_id = (await s.execute(select(Account.id).where(Account.name == account_name))).scalar_one()
            await s.execute(delete(WebSession).where(WebSession.expires_at <= now))
            s.add(WebSession(account_id=account_id, token_hash=_hash(token), expires_at=now + self.lifetime))
        return self._session_signer.dumps(token)

    def _token(self, cookie: str | None) -> str | None:
        if not cookie or len(cookie) > _MAX_COOKIE:
            return None
        try:
            token = self._session_signer.loads(cookie, max_age=int(self.lifetime.total_seconds()))
        except BadSignature:  # includes SignatureExpired
            return None
        return token if isinstance(token, str) else None

    async def resolve(self, cookie: str | None) -> SignedIn | None:
        """The signed-in account, or None for a missing, forged, expired or logged-out cookie."""
        token = self._token(cookie)
        if token is None:
            return None
        async with self._db() as s:
            row = (await s.execute(
                select(Account.id, Account.name).join(WebSession, WebSession.account_id == Account.id)
                .where(WebSession.token_hash == _hash(token), WebSession.expires_at > datetime.now(UTC))
            )).first()
        if row is None:
            return None
        return SignedIn(Principal(account_id=row[0], account_name=row[1], actor=ACTOR), token)

    async def end(self, token: str) -> None:
        """Logout: the row goes, so this cookie (and any copy of it) stops working on every replica."""
        async with self._db.begin() as s:
            await s.execute(delete(WebSession).where(WebSession.token_hash == _hash(token)))

    # ----------------------------------------------------------------- CSRF
    def csrf_token(self, token: str) -> str:
        return hmac.new(self._key, b"csrf:" + token.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, token: str, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(self.csrf_token(token).encode(), str(submitted).encode())

    # ------------------------------------------------------ OAuth state
    def new_state(self) -> tuple[str, str]:
        """(state for the authorize URL, signed value for the browser's short-lived state cookie)."""
        state = secrets.token_urlsafe(32)
        return state, self._state_signer.dumps(state)

    def state_ok(self, cookie: str | None, returned: str | None) -> bool:
        """The state GitHub sent back is the one this browser's cookie holds (signed, not expired)."""
        if not cookie or not returned or len(cookie) > _MAX_COOKIE:
            return False
        try:
            expected = self._state_signer.loads(cookie, max_age=int(self.state_lifetime.total_seconds()))
        except BadSignature:
            return False
        return isinstance(expected, str) and hmac.compare_digest(expected.encode(), returned.encode())
