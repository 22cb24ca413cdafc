"""Price a plan for an expected amount of use: the plan fee plus each priced feature (pure, no DB).

The plans page's calculator and the subscription page's "next invoice" both price use the
way a renewal does: USAGE features by their pricing model, QUOTA features beyond what the
plan includes (overage, or prepaid top-up packages). Each feature's amount is rounded to
minor units once, half-up, as its invoice line would be (DESIGN §3.1).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from portal.billing.pricing import BreakdownLine, Pricing
from portal.display import units

__all__ = ["Allowance", "EstimateLine", "PlanEstimate", "PlanTerms", "estimate_plan", "price_use"]


@dataclass(frozen=True)
class Allowance:
    """What a plan grants of one feature, as far as pricing it goes."""

    code: str
    name: str
    unit: str
    #: False when the plan does not include the feature at all.
    enabled: bool = True
    #: Units the plan includes before the pricing model applies (a QUOTA's limit);
    #: None with no pricing means unlimited; USAGE features include 0 (their model has free units).
    included: int | None = 0
    pricing: Pricing | None = None
    #: "usage" (billed in arrears), "overage" (QUOTA use beyond the limit) or "package" (top-ups).
    kind: str = "usage"


@dataclass(frozen=True)
class PlanTerms:
    code: str
    name: str
    price: int  #: one billing period, minor units
    currency: str
    period: str  #: "month", "30 days": what one billing period is
    allowances: tuple[Allowance, ...] = ()

    def allowance(self, code: str) -> Allowance | None:
        return next((a for a in self.allowances if a.code == code), None)

    @property
    def priced_codes(self) -> tuple[str, ...]:
        return tuple(a.code for a in self.allowances if a.enabled and a.pricing is not None)


@dataclass(frozen=True)
class EstimateLine:
    label: str
    amount: int  #: minor units
    details: tuple[BreakdownLine, ...] = ()
    note: str = ""
    #: The feature priced (empty for the plan fee), how ("usage", "overage", "package") and the units billed.
    code: str = ""
    kind: str = ""
    units: int = 0


@dataclass(frozen=True)
class PlanEstimate:
    terms: PlanTerms
    lines: tuple[EstimateLine, ...]
    #: Why the plan does not fit the expected use (a feature it lacks, a hard limit passed).
    problems: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(line.amount for line in self.lines)

    @property
    def fits(self) -> bool:
        return not self.problems


def price_use(allowance: Allowance, quantity: int, currency: str) -> EstimateLine | None:
    """The priced line for `quantity` units of one feature, or None when nothing is priced."""
    if allowance.pricing is None or not allowance.enabled:
        return None
    included = allowance.included or 0
    billable = max(0, quantity - included)
    result = allowance.pricing.price(billable)
    if allowance.kind == "usage":
        label = f"{allowance.name}: {units(quantity, allowance.unit)}"
    elif billable:
        what = "top-up packages" if allowance.kind == "package" else "overage"
        label = f"{allowance.name}: {units(billable, allowance.unit)} beyond the {included:,} included ({what})"
    else:
        label = f"{allowance.name}: {units(quantity, allowance.unit)}, within the {included:,} included"
    return EstimateLine(label, result.amount_minor(currency), result.lines, code=allowance.code, kind=allowance.kind,
                        units=quantity if allowance.kind == "usage" else billable)


def estimate_plan(terms: PlanTerms, usage: Mapping[str, int], names: Mapping[str, str] | None = None) -> PlanEstimate:
    """The plan fee plus the cost of `usage` (feature code → units per billing period) on `terms`.

    `names` gives display names for features the plan does not have at all.
    """
    lines = [EstimateLine(f"{terms.name} plan, every {terms.period}", terms.price)]
    missing: list[str] = []
    over: list[str] = []
    for code, quantity in usage.items():
        if not quantity:
            continue
        allowance = terms.allowance(code)
        if allowance is None or not allowance.enabled:
            missing.append(allowance.name if allowance else (names or {}).get(code, code))
            continue
        line = price_use(allowance, quantity, terms.currency)
        if line is not None:
            lines.append(line)
        elif allowance.included is not None and quantity > allowance.included:
            over.append(f"{allowance.name}: {quantity:,} is over the limit of {allowance.included:,}")
    problems = ([f"Not included in {terms.name}: {', '.join(missing)}"] if missing else []) + over
    return PlanEstimate(terms, tuple(lines), tuple(problems))
