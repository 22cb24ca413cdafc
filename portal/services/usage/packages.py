"""Buying prepaid packages (token bundles): invoice them, pay wallet first then card, raise the allowance.

Only QUOTA features priced in PACKAGEs can be bought in advance. USAGE features with package
pricing (SMS on Business) are billed in arrears by consumption, so there is nothing to buy.
The prepaid units are added by the PackagePurchase effect when the invoice is paid, exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

from portal import display
from portal.billing.entitlements import FeatureValues, PlanFeatureValues
from portal.billing.features import FeatureType
from portal.billing.pricing import PricingModel, build_pricing
from portal.clock import now
from portal.models import Feature, Invoice, LineKind, Payment, PlanFeature, User
from portal.services import purchases, usage
from portal.services.invoices import LineDraft
from portal.services.purchases import Outcome
from portal.services.subscriptions import live_subscription

MIN_PACKAGES, MAX_PACKAGES = 1, 100


class PackageError(ValueError):
    """A purchase that cannot be made as asked; the message is fit to show next to the field."""


@dataclass(frozen=True)
class Offer:
    """A package of a feature's units the customer's plan lets them buy."""

    feature_code: str
    feature_name: str
    unit_name: str
    package_size: int
    package_price: Decimal  #: major units, as configured
    price: int  #: one package, minor units
    currency: str

    @property
    def units_label(self) -> str:
        return display.units(self.package_size, self.unit_name)


@dataclass(frozen=True)
class Quote:
    """What buying `packages` packages costs; pure data for the invoice line."""

    offer: Offer
    packages: int
    units: int
    amount: int  #: minor units
    description: str  #: "2 × 500 tokens"
    breakdown: tuple[dict, ...]


def offer_for(feature: Feature | FeatureValues, plan_feature: PlanFeature | PlanFeatureValues | None,
              currency: str) -> Offer | None:
    """The package a plan's grant of a feature sells in advance, or None (not a QUOTA priced in packages)."""
    if (
        plan_feature is None
        or not plan_feature.enabled
        or feature.type is not FeatureType.QUOTA
        or plan_feature.pricing_model is not PricingModel.PACKAGE
        or not plan_feature.package_size
        or plan_feature.package_price is None
    ):
        return None
    one = build_pricing(PricingModel.PACKAGE, package_size=plan_feature.package_size,
                        package_price=plan_feature.package_price)
    return Offer(feature.code, feature.name, feature.unit_name, plan_feature.package_size,
                 plan_feature.package_price, one.price(plan_feature.package_size).amount_minor(currency), currency)


def check_packages(packages: object) -> int:
    if isinstance(packages, bool) or not isinstance(packages, int):
        raise PackageError("enter a whole number of packages")
    if not MIN_PACKAGES <= packages <= MAX_PACKAGES:
        raise PackageError(f"buy from {MIN_PACKAGES} to {MAX_PACKAGES} packages at a time")
    return packages


def quote(offer: Offer, packages: int) -> Quote:
    """The price of `packages` packages: packages × package price, rounded once to minor units."""
    packages = check_packages(packages)
    pricing = build_pricing(PricingModel.PACKAGE, package_size=offer.package_size, package_price=offer.package_price)
    units = packages * offer.package_size
    result = pricing.price(units)
    breakdown = tuple(
        {"description": line.description, "units": line.units, "unit_price": str(line.unit_price),
         "amount": str(line.amount)}
        for line in result.lines
    )
    description = f"{packages:,} × {display.units(offer.package_size, offer.unit_name)}"
    return Quote(offer, packages, units, result.amount_minor(offer.currency), description, breakdown)


def buy(user: User, feature_code: str, packages: int, token: str) -> Outcome:
    """Invoice and pay for prepaid packages; `token` comes from the form, so a double submit buys once.

    Raises PackageError when the plan sells no packages of the feature. Commits (the purchase path
    commits the pending payment before the card is charged).
    """
    try:
        ent = usage.entitlement(user.id, feature_code)
    except usage.UsageError as error:
        raise PackageError(error.message) from None
    offer = offer_for(ent.feature, ent.plan_feature, ent.plan.currency)
    if offer is None:
        raise PackageError(f"{ent.feature.name} cannot be bought in packages on the {ent.plan.name} plan")
    priced = quote(offer, packages)
    period = ent.window(now())
    line = LineDraft(
        LineKind.PACKAGE, priced.description, priced.amount, quantity=priced.packages,
        unit_price=offer.package_price, feature_id=ent.feature.id, breakdown=list(priced.breakdown),
        period_start=period.start, period_end=period.end,
    )
    subscription_id = ent.subscription.id if ent.subscription else None
    effect = PackagePurchase(feature=ent.feature.code, units=priced.units, plan_id=ent.plan.id,
                             subscription_id=subscription_id)
    return purchases.buy(user, effect, [line], key=f"package:{user.id}:{token}", currency=offer.currency,
                         subscription_id=subscription_id, period_start=period.start, period_end=period.end)


@purchases.register
@dataclass(frozen=True)
class PackagePurchase(purchases.Effect):
    """Prepaid units of a QUOTA feature: they raise this period's allowance once paid."""

    kind: ClassVar[str] = "package"
    reason: ClassVar[str] = "package"

    feature: str
    units: int
    #: The plan the package was priced on (absent on older invoices).
    plan_id: int | None = None
    subscription_id: int | None = None

    def describe(self) -> str:
        return "your package"

    def check(self, invoice: Invoice) -> None:
        if self.plan_id is None:
            return
        sub = live_subscription(invoice.user_id)
        if sub is None or sub.plan_id != self.plan_id:
            raise purchases.Stale("the plan this package was priced on is no longer yours")

    def apply(self, invoice: Invoice, payment: Payment | None) -> None:
        usage.add_prepaid_units(invoice.user_id, self.feature, int(self.units))
