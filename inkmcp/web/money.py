"""Amounts on the dashboard: integer minor units (what the ledger and Stripe count) shown and typed as currency.

Why not floats: 0.1 + 0.2 is not 0.3, and a top-up of "19.99" must be exactly 1999 cents. Parsing goes through
Decimal and refuses more decimals than the currency has, so what the user typed is exactly what is charged. The
decimals per currency follow Stripe's list (https://docs.stripe.com/currencies#zero-decimal): zero-decimal
currencies are counted in whole units, three-decimal ones in thousandths.
"""

from __future__ import annotations

import re
from decimal import Decimal

ZERO_DECIMAL = {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf",
                "xof", "xpf"}
THREE_DECIMAL = {"bhd", "jod", "kwd", "omr", "tnd"}
MAX_DIGITS = 10  # whole units typed: far above any top-up or cap, far below bigint


def decimals(currency: str) -> int:
    c = currency.lower()
    return 0 if c in ZERO_DECIMAL else 3 if c in THREE_DECIMAL else 2


def show(minor: int | None, currency: str) -> str:
    """1999, "eur" -> "19.99 EUR"; thousands separated by commas ("1,000.00 EUR"); None -> "none"."""
    if minor is None:
        return "none"
    d = decimals(currency)
    value = Decimal(minor).scaleb(-d)
    return f"{value:,.{d}f} {currency.upper()}"


def plain(minor: int, currency: str) -> str:
    """1999, "eur" -> "19.99": what an input field is pre-filled with (no separators, no currency)."""
    d = decimals(currency)
    return f"{Decimal(minor).scaleb(-d):.{d}f}"


def parse(text: object, currency: str) -> int:
    """"19.99" -> 1999 for "eur". Raises ValueError with a message to show the user as is."""
    d = decimals(currency)
    example = "20" if d == 0 else "20 or 20." + "0" * d
    raw = str(text or "").strip().replace(" ", "")
    if not raw:
        raise ValueError(f"Enter an amount in {currency.upper()}, such as {example}.")
    pattern = r"([0-9]+)" + (rf"(?:\.([0-9]{{0,{d}}}))?" if d else "")  # ASCII digits only
    m = re.fullmatch(pattern, raw)
    if m is not None and len(m.group(1).lstrip("0")) > MAX_DIGITS:
        raise ValueError(f"{raw[:40]!r} is far too large.")
    if m is None:
        if d and re.fullmatch(r"[0-9]+\.[0-9]+", raw) and len(raw.split(".")[1]) > d:
            raise ValueError(f"{currency.upper()} amounts have at most {d} decimals: {raw!r} has more.")
        raise ValueError(f"{raw[:40]!r} is not an amount: type digits{' with an optional decimal point' if d else ''}"
                         f", such as {example} (no signs, no thousands separators).")
    whole, frac = m.group(1), (m.group(2) or "") if d else ""
    return int(whole) * 10**d + (int(frac.ljust(d, "0")) if d else 0)
