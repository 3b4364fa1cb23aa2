"""CheckoutSlots: an account's undecided checkouts on this replica, bounded; waiters are not lost or leaked."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from inkmcp.core.checkout_slots import CheckoutSlots

pytestmark = pytest.mark.asyncio


async def test_an_account_waits_beyond_its_slots_and_others_do_not() -> None:
    slots, alice, bob = CheckoutSlots(per_account=2), uuid.uuid4(), uuid.uuid4()
    first, second = await slots.take(alice), await slots.take(alice)
    third = asyncio.ensure_future(slots.take(alice))
    await asyncio.sleep(0.05)
    assert not third.done(), "a third checkout of one account did not wait"
    give_bob = await asyncio.wait_for(slots.take(bob), 1)  # another account is not held up
    first()
    first()  # giving back twice frees one slot, not two
    give_third = await asyncio.wait_for(third, 1)
    fourth = asyncio.ensure_future(slots.take(alice))
    await asyncio.sleep(0.05)
    assert not fourth.done(), "a slot given back twice counted twice"
    second()
    (await asyncio.wait_for(fourth, 1))()
    give_third()
    give_bob()
    assert not slots._slots, "accounts nobody uses are kept"  # the map stays as small as the traffic


async def test_a_caller_cancelled_while_waiting_takes_no_slot() -> None:
    slots, alice = CheckoutSlots(per_account=1), uuid.uuid4()
    held = await slots.take(alice)
    waiting = asyncio.ensure_future(slots.take(alice))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    held()
    (await asyncio.wait_for(slots.take(alice), 1))()  # the cancelled waiter did not keep the only slot
    assert not slots._slots
