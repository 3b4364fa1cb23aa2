"""How many checkouts one account may have on this replica's disk before their deployments are decided.

A deploy_app call writes the commit's files (up to INKMCP_MAX_CHECKOUT_MB each) into `work/checkouts` while
its database work runs, and only then learns whether it may build at all (the account's concurrent-builds
limit, a reused deployment). Unbounded, N simultaneous calls of one account put N checkouts on the host's
disk, outside every project's disk limit (8 calls with a 60 MiB repo: 447 MiB). With these slots an account's
undecided checkouts are at most `per_account`; the ones that go on to build are bounded by the builds limit.
Further calls wait for a slot (they are not refused: a burst of one agent's deploys still succeeds).

Per replica, in memory: each replica's checkouts are on its own disk.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

CHECKOUTS_PER_ACCOUNT = 2


class CheckoutSlots:
    def __init__(self, per_account: int = CHECKOUTS_PER_ACCOUNT) -> None:
        self._per_account = per_account
        self._slots: dict[uuid.UUID, tuple[asyncio.Semaphore, list[int]]] = {}  # semaphore, [calls using it]

    async def take(self, account: uuid.UUID) -> Callable[[], None]:
        """Wait for one of the account's slots; returns the function that gives it back (safe to call twice)."""
        entry = self._slots.get(account)
        if entry is None:
            entry = self._slots[account] = (asyncio.Semaphore(self._per_account), [0])
        sem, users = entry
        users[0] += 1
        try:
            await sem.acquire()
        except BaseException:
            self._leave(account, users)
            raise
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                sem.release()
                self._leave(account, users)

        return give_back

    def _leave(self, account: uuid.UUID, users: list[int]) -> None:
        users[0] -= 1
        if users[0] == 0:  # nobody holds or waits: forget the account (the map stays as small as the traffic)
            self._slots.pop(account, None)
