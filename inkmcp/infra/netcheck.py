"""Address-plan checks shared by every stack's config validation.

Overlaps between the Cloud Network, the vSwitch subnet, Docker's address pools and operator CIDRs
break routing silently (packets go to the wrong interface), so they are refused before anything
is created, with the two clashing ranges named.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr(value: str, field: str) -> Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise ValueError(f"{field}: {value!r} is not a network CIDR ({e}); e.g. 10.0.0.0/16") from None


def first_overlap(named: Iterable[tuple[str, Network]]) -> tuple[str, str] | None:
    items = list(named)
    for i, (name_a, a) in enumerate(items):
        for name_b, b in items[i + 1 :]:
            if a.version == b.version and a.overlaps(b):
                return f"{name_a} ({a})", f"{name_b} ({b})"
    return None


def require_disjoint(named: Iterable[tuple[str, Network]]) -> None:
    clash = first_overlap(named)
    if clash:
        raise ValueError(f"{clash[0]} overlaps {clash[1]}; choose ranges that do not overlap")


def require_within(inner: Network, outer: Network, inner_name: str, outer_name: str) -> None:
    if inner.version != outer.version or not inner.subnet_of(outer):  # type: ignore[arg-type]
        raise ValueError(f"{inner_name} ({inner}) must lie inside {outer_name} ({outer})")
