"""The usage page's read side: meters built from counters, history from daily totals.

A meter never scans the event log (DESIGN §3.6): rendering them costs one query for the
subscription, one for the plan's features (with their tiers) and one for the current
counters, however many events a customer has recorded. History reads usage_daily, at most
one row per feature and day.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import contains_eager

from portal import display
from portal.billing.entitlements import counter_window
from portal.billing.features import FeatureType, RateWindow
from portal.billing.money import to_minor
from portal.billing.periods import Period
from portal.billing.pricing import PricingModel, bands
from portal.clock import now
from portal.extensions import db
from portal.models import Feature, Plan, PlanFeature, PricingTier, Subscription, UsageCounter, UsageDaily
from portal.services.subscriptions import default_plan, live_subscription
from portal.services.usage import packages
from portal.services.usage import pricing_for

#: How far back the history may look (DESIGN §5: N from 1 to 90).
MIN_DAYS, MAX_DAYS = 1, 90
#: The share of an allowance from which a meter turns amber.
WARNING_PERCENT = 80

_GROUP_ORDER = {FeatureType.QUOTA: 0, FeatureType.RATE: 1, FeatureType.USAGE: 2, FeatureType.BOOLEAN: 3}


class MeterError(ValueError):
    """A bad history request; the message is fit to show."""


@dataclass(frozen=True)
class PriceLine:
    """One line of a cost breakdown, rounded to minor units for display."""

    description: str
    amount: int


@dataclass(frozen=True)
class Meter:
    """What one feature of the plan allows and how much of it is used right now."""

    feature_id: int
    code: str
    name: str
    description: str
    unit_name: str
    type: FeatureType
    enabled: bool
    currency: str
    used: int = 0
    limit: int | None = None  #: the plan's limit (QUOTA per period, RATE per window); None = unlimited
    bonus: int = 0  #: prepaid package units added to this period's allowance
    window: RateWindow | None = None
    resets_at: datetime | None = None
    resets_in: str | None = None  #: RATE: "4 min"
    overage_allowed: bool = False
    cost: int | None = None  #: USAGE: cost so far; QUOTA with priced overage: overage cost so far
    breakdown: tuple[PriceLine, ...] = ()
    price_sheet: tuple[str, ...] = ()
    offer: packages.Offer | None = None  #: a package top-up the customer can buy

    @property
    def units(self) -> str:
        """The unit name for counts other than one ("tokens", "SMS")."""
        return display.plural(self.unit_name)

    def units_for(self, count: int | None) -> str:
        """The unit name that goes with `count` ("1 use", "3 uses")."""
        return display.plural(self.unit_name, 2 if count is None else count)

    @property
    def window_phrase(self) -> str:
        """RATE: "this minute", "this hour", "today"."""
        if self.window is None:
            return "this period"
        return "today" if self.window is RateWindow.DAY else f"this {self.window.value}"

    @property
    def is_unlimited(self) -> bool:
        return self.type in (FeatureType.QUOTA, FeatureType.RATE) and self.limit is None

    @property
    def allowance(self) -> int | None:
        """The limit plus prepaid units; None when unlimited or not limited by nature."""
        if self.type not in (FeatureType.QUOTA, FeatureType.RATE) or self.limit is None:
            return None
        return self.limit + self.bonus

    @property
    def remaining(self) -> int | None:
        return None if self.allowance is None else max(self.allowance - self.used, 0)

    @property
    def overage(self) -> int:
        return 0 if self.allowance is None else max(self.used - self.allowance, 0)

    @property
    def percent(self) -> int | None:
        """Share of the allowance used, whole percent (may pass 100 with overage)."""
        if self.allowance is None:
            return None
        if self.allowance == 0:
            return 100
        return self.used * 100 // self.allowance

    @property
    def level(self) -> str:
        """ok below 80 %, warning from 80 %, danger at 100 % (or when nothing is allowed)."""
        if self.allowance is None:
            return "ok"
        if self.used >= self.allowance:
            return "danger"
        if self.used * 100 >= WARNING_PERCENT * self.allowance:
            return "warning"
        return "ok"


@dataclass(frozen=True)
class Board:
    """Every meter of the customer's current plan at one instant."""

    plan: Plan
    subscription: Subscription | None
    period: Period | None
    at: datetime
    meters: tuple[Meter, ...]

    def of_type(self, type_: FeatureType) -> list[Meter]:
        return [m for m in self.meters if m.type is type_]

    @property
    def offers(self) -> list[Meter]:
        return [m for m in self.meters if m.offer is not None]

    def meter(self, code: str) -> Meter | None:
        return next((m for m in self.meters if m.code == code), None)


def build(user_id: int) -> Board:
    """The customer's meters, read from the current counters (never from the event log)."""
    at = now()
    subscription = live_subscription(user_id)
    plan = subscription.plan if subscription is not None else default_plan()
    plan_features = _plan_features(plan.id)
    period = None if subscription is None else (subscription.current_period_start, subscription.current_period_end)
    windows = {
        pf.feature_id: counter_window(pf.feature.type, pf.window, period, at)
        for pf in plan_features
        if pf.enabled and pf.feature.type is not FeatureType.BOOLEAN
    }
    counters = _current_counters(user_id, windows)
    meters = [
        _meter(pf, plan, windows.get(pf.feature_id), counters.get(pf.feature_id), at)
        for pf in sorted(plan_features, key=lambda pf: (_GROUP_ORDER[pf.feature.type], pf.id))
    ]
    return Board(plan, subscription, _billing_period(subscription, plan_features, windows, at), at, tuple(meters))


def _plan_features(plan_id: int) -> list[PlanFeature]:
    """The plan's features with their feature rows and tier tables, in one query."""
    stmt = (
        sa.select(PlanFeature)
        .join(PlanFeature.feature)
        .outerjoin(PlanFeature.tiers)
        .options(contains_eager(PlanFeature.feature), contains_eager(PlanFeature.tiers))
        .where(PlanFeature.plan_id == plan_id)
        .order_by(PlanFeature.id, PricingTier.position)
        .execution_options(populate_existing=True)
    )
    return list(db.session.scalars(stmt).unique())


def _current_counters(user_id: int, windows: dict[int, Period]) -> dict[int, UsageCounter]:
    """The counter of each feature's current window, in one query."""
    if not windows:
        return {}
    starts = {window.start for window in windows.values()}
    rows = db.session.scalars(
        sa.select(UsageCounter)
        .where(UsageCounter.user_id == user_id, UsageCounter.window_start.in_(starts))
        .execution_options(populate_existing=True)
    )
    found: dict[int, UsageCounter] = {}
    for counter in rows:
        window = windows.get(counter.feature_id)
        # Another feature's window may start at the same instant (a day window and the period).
        if window is not None and counter.window_start == window.start:
            found[counter.feature_id] = counter
    return found


def _billing_period(
    subscription: Subscription | None, plan_features: list[PlanFeature], windows: dict[int, Period], at: datetime
) -> Period | None:
    for pf in plan_features:
        if pf.feature.type in (FeatureType.QUOTA, FeatureType.USAGE) and pf.feature_id in windows:
            return windows[pf.feature_id]
    if subscription is not None and subscription.current_period_start <= at < subscription.current_period_end:
        return Period(subscription.current_period_start, subscription.current_period_end)
    return None


def _meter(pf: PlanFeature, plan: Plan, window: Period | None, counter: UsageCounter | None, at: datetime) -> Meter:
    feature = pf.feature
    used, bonus = (counter.used, counter.bonus) if counter is not None else (0, 0)
    base = dict(
        feature_id=feature.id, code=feature.code, name=feature.name, description=feature.description, unit_name=feature.unit_name,
        type=feature.type, enabled=pf.enabled, currency=plan.currency,
    )
    if feature.type is FeatureType.BOOLEAN or not pf.enabled:
        return Meter(**base)
    base.update(used=used, resets_at=window.end if window else None, price_sheet=tuple(price_sheet(pf, plan.currency)))
    if feature.type is FeatureType.RATE:
        return Meter(**base, limit=pf.limit, window=pf.window, resets_in=display.time_until(window.end - at))
    if feature.type is FeatureType.USAGE:
        result = _price(pf, used)
        return Meter(**base, cost=_cost(result, plan.currency), breakdown=_lines(result, plan.currency))
    meter = Meter(**base, limit=pf.limit, bonus=bonus, overage_allowed=pf.overage_allowed,
                  offer=packages.offer_for(pf.feature, pf, plan.currency))
    if pf.overage_allowed and pf.pricing_model is not None and pf.pricing_model is not PricingModel.PACKAGE:
        result = _price(pf, meter.overage)
        meter = replace(meter, cost=_cost(result, plan.currency), breakdown=_lines(result, plan.currency))
    return meter


def _price(pf: PlanFeature, quantity: int):
    pricing = pricing_for(pf)
    return None if pricing is None else pricing.price(quantity)


def _cost(result, currency: str) -> int:
    return 0 if result is None else result.amount_minor(currency)


def _lines(result, currency: str) -> tuple[PriceLine, ...]:
    if result is None:
        return ()
    return tuple(PriceLine(line.description, to_minor(line.amount, currency)) for line in result.lines)


def price_sheet(pf: PlanFeature, currency: str) -> list[str]:
    """How the plan prices a feature, in words, for the meter card."""
    unit = pf.feature.unit_name or "unit"
    many = display.plural(unit)
    model = pf.pricing_model
    if model is None:
        return []
    if model is PricingModel.FLAT:
        beyond = f" beyond {pf.free_units:,} free" if pf.free_units else ""
        if pf.feature.type is FeatureType.QUOTA:
            return [f"Beyond your allowance: {display.unit_money(pf.unit_price, currency)} per {unit}"]
        return [f"{display.unit_money(pf.unit_price, currency)} per {unit}{beyond}"]
    if model is PricingModel.PACKAGE:
        price = display.unit_money(pf.package_price, currency)
        if pf.feature.type is FeatureType.QUOTA:
            return [f"Top up any time: {pf.package_size:,} {many} for {price}, added to this period's allowance"]
        free = f" after {pf.free_units:,} free" if pf.free_units else ""
        return [
            f"{price} per {pf.package_size:,} {many}{free}, billed at the end of the period for what you used",
            "A started package counts as a whole one, so nothing needs buying in advance.",
        ]
    sheet = []
    for band in bands(pf.tiers):
        fee = f" + {display.unit_money(band.flat_fee, currency)} flat" if band.flat_fee else ""
        price = display.unit_money(band.unit_price, currency)
        sheet.append(f"{display.tier_span(band)} {many}: {price} per {unit}{fee}")
    if model is PricingModel.VOLUME:
        sheet.append(f"Every {unit} is priced at the tier your total reaches.")
    else:
        sheet.append("Each tier's units at that tier's price.")
    return sheet


# History ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayTotal:
    day: date
    quantity: int


@dataclass(frozen=True)
class History:
    """Daily totals of one feature over the last `days` days, oldest first, with empty days as 0."""

    code: str
    name: str
    unit_name: str
    days: int
    totals: tuple[DayTotal, ...] = field(default_factory=tuple)

    @property
    def units(self) -> str:
        return display.plural(self.unit_name)

    @property
    def total(self) -> int:
        return sum(t.quantity for t in self.totals)

    @property
    def peak(self) -> int:
        return max((t.quantity for t in self.totals), default=0)


def check_days(days: object) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not MIN_DAYS <= days <= MAX_DAYS:
        raise MeterError(f"days must be a whole number from {MIN_DAYS} to {MAX_DAYS}")
    return days


def history(user_id: int, feature_code: str, days: int = 30) -> History:
    """One feature's daily totals; MeterError for an unknown feature or a bad number of days."""
    days = check_days(days)
    feature = db.session.scalar(sa.select(Feature).where(Feature.code == feature_code))
    if feature is None:
        raise MeterError(f"there is no feature called {feature_code!r}")
    return _histories(user_id, [(feature.id, feature.code, feature.name, feature.unit_name)], days)[feature.code]


def histories(user_id: int, board: Board, days: int = 30) -> dict[str, History]:
    """Daily totals of every countable feature on the board, in one query, keyed by feature code."""
    days = check_days(days)
    wanted = [(m.feature_id, m.code, m.name, m.unit_name) for m in board.meters
              if m.enabled and m.type is not FeatureType.BOOLEAN]
    return _histories(user_id, wanted, days)


def _histories(user_id: int, features: list[tuple[int, str, str, str]], days: int) -> dict[str, History]:
    last = now().date()
    first = last - timedelta(days=days - 1)
    found: dict[tuple[int, date], int] = {}
    if features:
        rows = db.session.execute(
            sa.select(UsageDaily.feature_id, UsageDaily.day, UsageDaily.quantity).where(
                UsageDaily.user_id == user_id,
                UsageDaily.day >= first,
                UsageDaily.day <= last,
                UsageDaily.feature_id.in_([f[0] for f in features]),
            )
        )
        found = {(row.feature_id, row.day): int(row.quantity) for row in rows}
    span = [first + timedelta(days=n) for n in range(days)]
    return {
        code: History(code, name, unit, days, tuple(DayTotal(d, found.get((fid, d), 0)) for d in span))
        for fid, code, name, unit in features
    }
