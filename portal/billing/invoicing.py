"""The invoice generator: a period's lines proposed from its facts, without the database (the idea
of Kill Bill's generator). A renewal bills with it, and the subscription page's estimate of the
next invoice uses the same function: what the page promises is what the renewal charges.

A renewal invoice bills the next period's plan fee in advance and the closing period's use in
arrears: USAGE features priced by their model, QUOTA use beyond what the plan includes as overage
(prepaid package units are spent before overage starts, so they are the period's credit). Money
the customer holds is in the wallet, which pays the invoice first; it is not a line.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from portal.billing.estimate import EstimateLine, PlanTerms, price_use
from portal.billing.periods import Period
from portal.billing.pricing import BreakdownLine

__all__ = ["BilledLine", "Counted", "billed_codes", "breakdown_data", "renewal_lines", "usage_lines"]

#: Allowance kinds billed at the end of a period (packages are prepaid, never billed in arrears).
_BILLED_KINDS = ("usage", "overage")


@dataclass(frozen=True)
class Counted:
    """What a period's counter says of one feature: units used, and prepaid units (`bonus`) among them."""

    used: int
    bonus: int = 0


@dataclass(frozen=True)
class BilledLine:
    """One line of an invoice to be, in plain values (the service turns it into an invoice line)."""

    #: "plan" (a period's fee, in advance), "usage" (USAGE features, in arrears) or "overage" (QUOTA use
    #: beyond the included units, in arrears).
    kind: str
    description: str
    amount: int  #: minor units
    quantity: int = 1
    #: The feature's code for usage and overage lines.
    feature: str | None = None
    breakdown: tuple[BreakdownLine, ...] = ()
    period: Period | None = None


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


def renewal_lines(
    *,
    next_terms: PlanTerms | None,
    next_period: Period | None,
    closing_terms: PlanTerms | None,
    closing_period: Period,
    counted: Mapping[str, Counted],
) -> tuple[BilledLine, ...]:
    """The lines of the invoice that closes `closing_period` and opens `next_period`.

    `next_terms`: the plan of the next period at its price now (None when the subscription ends);
    `closing_terms`: the plan whose use is billed for the closing period (None when that use is
    free: a trial); `counted`: that period's counters by feature code. A free plan with no priced
    use gives no lines at all.
    """
    lines: list[BilledLine] = []
    if next_terms is not None and next_period is not None and next_terms.price:
        lines.append(BilledLine("plan", f"{next_terms.name} plan, {_span(next_period)}", next_terms.price,
                                period=next_period))
    if closing_terms is not None:
        for line in usage_lines(closing_terms, counted):
            lines.append(BilledLine(line.kind, line.label, line.amount, quantity=line.units, feature=line.code,
                                    breakdown=line.details, period=closing_period))
    return tuple(lines)


def breakdown_data(breakdown: tuple[BreakdownLine, ...]) -> list[dict[str, str | int]]:
    """A breakdown as an invoice line stores it (prices as decimal strings in major units)."""
    return [{"description": b.description, "units": b.units, "unit_price": str(b.unit_price),
             "flat_fee": str(b.flat_fee), "amount": str(b.amount)} for b in breakdown]


def _span(period: Period) -> str:
    return f"{_day(period.start)} – {_day(period.end)}"


def _day(at: datetime) -> str:
    return at.strftime("%d %b %Y")
