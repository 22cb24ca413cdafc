"""Check and record feature usage against the customer's plan, atomically (DESIGN §3.6).

QUOTA and RATE records are accepted only by a conditional increment of the counter
(`used + n <= limit + bonus`), so parallel requests cannot pass a limit. Meters read the
counters, never the event log.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from portal.billing.features import FeatureType
from portal.billing.periods import IntervalUnit, Period, period_at, window_bounds
from portal.billing.pricing import Pricing, PricingModel, Tier, build_pricing
from portal.clock import now
from portal.extensions import db
from portal.models import Feature, Plan, PlanFeature, Subscription, UsageCounter, UsageDaily, UsageEvent
from portal.billing.lifecycle import LIVE_STATUSES
from portal.services.subscriptions import default_plan

_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


class UsageError(Exception):
    """Bad usage input; `code` and `field` feed the API's error body."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


@dataclass(frozen=True)
class Entitlement:
    """What the customer's current plan grants of one feature."""

    feature: Feature
    plan: Plan
    plan_feature: PlanFeature | None
    subscription: Subscription | None

    @property
    def enabled(self) -> bool:
        return self.plan_feature is not None and self.plan_feature.enabled

    @property
    def limit(self) -> int | None:
        return None if self.plan_feature is None else self.plan_feature.limit

    def window(self, at: datetime) -> Period:
        """The counter window: the billing period, or the rate window for RATE features."""
        if self.feature.type is FeatureType.RATE:
            return window_bounds(self.plan_feature.window, at)
        sub = self.subscription
        if sub is not None and sub.current_period_start <= at < sub.current_period_end:
            return Period(sub.current_period_start, sub.current_period_end)
        # No live subscription (or a stale one): calendar months, so limits still reset.
        return period_at(_EPOCH, IntervalUnit.MONTH, 1, at)[1]


@dataclass
class UsageResult:
    allowed: bool
    feature: str
    type: FeatureType
    quantity: int
    used: int | None = None
    limit: int | None = None
    remaining: int | None = None
    resets_at: datetime | None = None
    retry_after: int | None = None
    cost: int | None = None  #: USAGE: cost so far this period, minor units
    currency: str | None = None
    code: str | None = None  #: why it was refused
    message: str = ""
    event_id: int | None = None
    replayed: bool = False
    extra: dict = field(default_factory=dict)


def entitlement(user_id: int, feature_code: str) -> Entitlement:
    """Resolve a feature code against the customer's live subscription (or the default plan), in one query."""
    live = sa.and_(Subscription.user_id == user_id, Subscription.status.in_(LIVE_STATUSES))
    row = db.session.execute(
        sa.select(Feature, Subscription, PlanFeature)
        .select_from(Feature)
        .outerjoin(Subscription, live)
        .outerjoin(PlanFeature, sa.and_(PlanFeature.plan_id == Subscription.plan_id,
                                        PlanFeature.feature_id == Feature.id))
        .where(Feature.code == feature_code)
    ).first()
    if row is None:
        raise UsageError("unknown_feature", f"there is no feature called {feature_code!r}", "feature")
    feature, subscription, plan_feature = row
    if subscription is not None:
        return Entitlement(feature, subscription.plan, plan_feature, subscription)
    plan = default_plan()
    plan_feature = db.session.scalar(
        sa.select(PlanFeature).where(PlanFeature.plan_id == plan.id, PlanFeature.feature_id == feature.id)
    )
    return Entitlement(feature, plan, plan_feature, None)


def pricing_for(plan_feature: PlanFeature | None) -> Pricing | None:
    """The pricing model configured on a plan feature, or None when it is not priced."""
    if plan_feature is None or plan_feature.pricing_model is None:
        return None
    model = plan_feature.pricing_model
    if model is PricingModel.FLAT:
        return build_pricing(model, unit_price=plan_feature.unit_price, free_units=plan_feature.free_units)
    if model is PricingModel.PACKAGE:
        return build_pricing(
            model,
            package_size=plan_feature.package_size,
            package_price=plan_feature.package_price,
            free_units=plan_feature.free_units,
        )
    tiers = [Tier(t.first_unit, t.last_unit, t.unit_price, t.flat_fee) for t in plan_feature.tiers]
    return build_pricing(model, tiers=tiers)


def check_quantity(quantity: object) -> int:
    """Quantities are positive integers (booleans and floats refused)."""
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise UsageError("invalid_quantity", "quantity must be a whole number", "quantity")
    if quantity <= 0:
        raise UsageError("invalid_quantity", "quantity must be greater than zero", "quantity")
    return quantity


def check(user_id: int, feature_code: str, quantity: int = 1) -> UsageResult:
    """Would recording `quantity` now be allowed? Changes nothing."""
    quantity = check_quantity(quantity)
    ent = entitlement(user_id, feature_code)
    at = now()
    refusal = _plan_refusal(ent, quantity)
    if refusal is not None:
        return refusal
    window = ent.window(at)
    counter = _counter(user_id, ent.feature.id, window.start)
    used, bonus = (counter.used, counter.bonus) if counter is not None else (0, 0)
    return _decide(ent, quantity, used, bonus, window, at, would_add=True)


def record(
    user_id: int,
    feature_code: str,
    quantity: int = 1,
    *,
    idempotency_key: str | None = None,
    source: str = "api",
) -> UsageResult:
    """Check and record in one step; a refused record writes nothing, a replayed key records nothing new.

    The hot path is a handful of statements and no savepoint: with a key, the event is inserted
    first (ON CONFLICT DO NOTHING: a concurrent duplicate waits for the first and then finds it);
    then the counter takes the units by one conditional upsert; a refusal deletes the event again.
    """
    quantity = check_quantity(quantity)
    ent = entitlement(user_id, feature_code)
    refusal = _plan_refusal(ent, quantity)
    if refusal is not None:
        return refusal
    at = now()
    window = ent.window(at)
    events = UsageEvent.__table__
    event_id = None
    if idempotency_key is not None:
        event_id = db.session.execute(
            _insert(events).values(
                user_id=user_id, feature_id=ent.feature.id, quantity=quantity, idempotency_key=idempotency_key,
                subscription_id=ent.subscription.id if ent.subscription else None, source=source, occurred_at=at,
            ).on_conflict_do_nothing(index_elements=["user_id", "idempotency_key"]).returning(events.c.id)
        ).scalar_one_or_none()
        if event_id is None:
            return _replay(ent, _event_by_key(user_id, idempotency_key))
    row = _take(user_id, ent, window, quantity, at)
    if row is None:
        if event_id is not None:
            db.session.execute(sa.delete(events).where(events.c.id == event_id))
        counter = _counter(user_id, ent.feature.id, window.start)
        used, bonus = (counter.used, counter.bonus) if counter is not None else (0, 0)
        return _decide(ent, quantity, used, bonus, window, at, would_add=True)
    if event_id is None:
        event_id = db.session.execute(
            sa.insert(events).values(
                user_id=user_id, feature_id=ent.feature.id, quantity=quantity, idempotency_key=None,
                subscription_id=ent.subscription.id if ent.subscription else None, source=source, occurred_at=at,
            ).returning(events.c.id)
        ).scalar_one()
    _add_daily(user_id, ent.feature.id, at, quantity)
    used, bonus = row
    result = _decide(ent, quantity, used, bonus, window, at, would_add=False)
    result.event_id = event_id
    return result


def _take(user_id: int, ent: Entitlement, window: Period, quantity: int, at: datetime) -> tuple[int, int] | None:
    """Add `quantity` to the window's counter if the allowance has room; (used, bonus) or None."""
    table = UsageCounter.__table__
    bounded = not _unbounded(ent)
    if bounded and quantity > ent.limit:
        # More than the plan's limit at once: only prepaid units could make room, so take the
        # two-step path that reads the existing row's bonus.
        _ensure_counter(user_id, ent.feature.id, window)
        return _increment(user_id, ent, window, quantity, at)
    stmt = _insert(table).values(
        user_id=user_id, feature_id=ent.feature.id, window_start=window.start, window_end=window.end,
        used=quantity, bonus=0, updated_at=at,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["user_id", "feature_id", "window_start"],
        set_={"used": table.c.used + quantity, "updated_at": at},
        where=(table.c.used + quantity <= ent.limit + table.c.bonus) if bounded else None,
    ).returning(table.c.used, table.c.bonus)
    row = db.session.execute(stmt).first()
    return None if row is None else (row.used, row.bonus)


class _Refused(Exception):
    pass


def _plan_refusal(ent: Entitlement, quantity: int) -> UsageResult | None:
    if ent.enabled:
        return None
    return UsageResult(
        allowed=False,
        feature=ent.feature.code,
        type=ent.feature.type,
        quantity=quantity,
        code="feature_not_in_plan",
        message=f"{ent.feature.name} is not included in the {ent.plan.name} plan",
    )


def _unbounded(ent: Entitlement) -> bool:
    """Counted but never refused: unlimited limits, USAGE and BOOLEAN features, priced overage."""
    if ent.feature.type in (FeatureType.USAGE, FeatureType.BOOLEAN) or ent.limit is None:
        return True
    return ent.feature.type is FeatureType.QUOTA and ent.plan_feature.overage_allowed


def _decide(
    ent: Entitlement, quantity: int, used: int, bonus: int, window: Period, at: datetime, *, would_add: bool
) -> UsageResult:
    limit = None if ent.feature.type in (FeatureType.USAGE, FeatureType.BOOLEAN) else ent.limit
    allowance = None if limit is None else limit + bonus
    projected = used + quantity if would_add else used
    allowed = _unbounded(ent) or projected <= allowance
    result = UsageResult(
        allowed=allowed,
        feature=ent.feature.code,
        type=ent.feature.type,
        quantity=quantity,
        used=used,
        limit=allowance,
        remaining=None if allowance is None else max(allowance - used, 0),
        resets_at=window.end,
    )
    if ent.feature.type is FeatureType.USAGE:
        pricing = pricing_for(ent.plan_feature)
        result.currency = ent.plan.currency
        result.cost = pricing.price(used).amount_minor(ent.plan.currency) if pricing else 0
    if not allowed:
        unit = ent.feature.unit_name
        if ent.feature.type is FeatureType.RATE:
            result.code = "rate_limited"
            result.retry_after = max(1, math.ceil((window.end - at) / timedelta(seconds=1)))
            result.message = (
                f"{ent.feature.name}: {allowance} {unit}s per {ent.plan_feature.window.value} used up; "
                f"try again in {result.retry_after} s"
            )
        else:
            result.code = "quota_exceeded"
            result.message = (
                f"{ent.feature.name}: {used} of {allowance} {unit}s used this period; "
                f"{quantity} more would pass the limit"
            )
    return result


def _replay(ent: Entitlement, event: UsageEvent) -> UsageResult:
    at = now()
    window = ent.window(event.occurred_at) if ent.enabled else Period(at, at + timedelta(seconds=1))
    counter = _counter(event.user_id, event.feature_id, window.start)
    used, bonus = (counter.used, counter.bonus) if counter is not None else (0, 0)
    result = _decide(ent, event.quantity, used, bonus, window, at, would_add=False)
    result.allowed, result.code, result.message = True, None, ""
    result.event_id, result.replayed = event.id, True
    return result


def _event_by_key(user_id: int, key: str) -> UsageEvent | None:
    return db.session.scalar(sa.select(UsageEvent).where(UsageEvent.user_id == user_id, UsageEvent.idempotency_key == key))


def _counter(user_id: int, feature_id: int, window_start: datetime) -> UsageCounter | None:
    return db.session.scalar(
        sa.select(UsageCounter).where(
            UsageCounter.user_id == user_id,
            UsageCounter.feature_id == feature_id,
            UsageCounter.window_start == window_start,
        ).execution_options(populate_existing=True)
    )


def _insert(table):
    dialect = db.session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _ensure_counter(user_id: int, feature_id: int, window: Period) -> None:
    db.session.execute(
        _insert(UsageCounter.__table__)
        .values(
            user_id=user_id, feature_id=feature_id, window_start=window.start, window_end=window.end,
            used=0, bonus=0, updated_at=now(),
        )
        .on_conflict_do_nothing(index_elements=["user_id", "feature_id", "window_start"])
    )


def _increment(user_id: int, ent: Entitlement, window: Period, quantity: int, at: datetime) -> tuple[int, int] | None:
    table = UsageCounter.__table__
    where = sa.and_(
        table.c.user_id == user_id, table.c.feature_id == ent.feature.id, table.c.window_start == window.start
    )
    if not _unbounded(ent):
        where = sa.and_(where, table.c.used + quantity <= ent.limit + table.c.bonus)
    row = db.session.execute(
        sa.update(table).where(where).values(used=table.c.used + quantity, updated_at=at)
        .returning(table.c.used, table.c.bonus)
    ).first()
    return None if row is None else (row.used, row.bonus)


def _add_daily(user_id: int, feature_id: int, at: datetime, quantity: int) -> None:
    table = UsageDaily.__table__
    stmt = _insert(table).values(user_id=user_id, feature_id=feature_id, day=at.date(), quantity=quantity)
    db.session.execute(
        stmt.on_conflict_do_update(
            index_elements=["user_id", "feature_id", "day"],
            set_={"quantity": table.c.quantity + stmt.excluded.quantity},
        )
    )


def add_prepaid_units(user_id: int, feature_code: str, units: int) -> UsageCounter:
    """Raise this period's allowance by prepaid units (a bought package)."""
    units = check_quantity(units)
    ent = entitlement(user_id, feature_code)
    window = ent.window(now())
    _ensure_counter(user_id, ent.feature.id, window)
    table = UsageCounter.__table__
    db.session.execute(
        sa.update(table)
        .where(table.c.user_id == user_id, table.c.feature_id == ent.feature.id, table.c.window_start == window.start)
        .values(bonus=table.c.bonus + units, updated_at=now())
    )
    return _counter(user_id, ent.feature.id, window.start)
