"""The invoice generator: a period's lines proposed from its facts, without the database (the idea
of Kill Bill's generator). The subscription page's estimate of the next invoice uses it now, and
renewals will bill with it: what the page promises is what the renewal charges.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from portal.billing.estimate import EstimateLine, PlanTerms, price_use

__all__ = ["Counted", "billed_codes", "usage_lines"]

#: Allowance kinds billed at the end of a period (packages are prepaid, never billed in arrears).
_BILLED_KINDS = ("usage", "overage")


@dataclass(frozen=True)
class Counted:
    """What a period's counter says of one feature: units used, and prepaid units (`bonus`) among them."""

    used: int
    bonus: int = 0


def billed_codes(terms: PlanTerms) -> tuple[str, ...]:
    """The features whose use in a period is billed at its end (their counters are needed)."""
    return tuple(a.code for a in terms.allowances if a.pricing is not None and a.kind in _BILLED_KINDS)


def usage_lines(terms: PlanTerms, counted: Mapping[str, Counted]) -> tuple[EstimateLine, ...]:
    """The period's priced use: USAGE features by their model, QUOTA use beyond the included
    units as overage. Prepaid units are spent before overage starts. Features with no use and
    nothing to pay give no line."""
    lines = []
    for code in billed_codes(terms):
        count = counted.get(code)
        used = 0 if count is None else max(count.used - count.bonus, 0)
        line = price_use(terms.allowance(code), used, terms.currency)
        if line is not None and (used or line.amount):
            lines.append(line)
    return tuple(lines)
