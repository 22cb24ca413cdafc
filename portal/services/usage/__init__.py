"""Check and record feature usage against the customer's plan, atomically (DESIGN §3.6).

QUOTA and RATE records are accepted only by a conditional increment of the counter
(`used + n <= limit + bonus`), so parallel requests cannot pass a limit. Meters read the
counters, never the event log.

`check` and `record` are the usage API's hot path, so they run prebuilt Core statements
(services.usage_sql) on the session's connection and resolve the entitlement into small frozen
values instead of ORM objects: statement building and ORM loading cost several times more
Python than the database work. Nothing is cached between calls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import cached_property

import sqlalchemy as sa

from portal.billing.features import FeatureType, RateWindow
from portal.billing.periods import IntervalUnit, Period, period_at, window_bounds
from portal.billing.pricing import Pricing, PricingModel, Tier, build_pricing
from portal.clock import now
from portal.extensions import db
from portal.models import Feature, Plan, PlanFeature, Subscription, UsageCounter
from portal.services.usage import sql as usage_sql
from portal.services.subscriptions import NoDefaultPlan

_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


class UsageError(Exception):
    """Bad usage input; `code` and `field` feed the API's error body."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


# The entitlement as plain values: the columns check/record need, read by one Core SELECT.
# They offer the same attribute names as the ORM models, so Entitlement, pricing_for and the
# API routes take either.

@dataclass(frozen=True)
class FeatureValues:
    id: int
    code: str
    name: str
    type: FeatureType
    unit_name: str


@dataclass(frozen=True)
class PlanValues:
    id: int
    code: str
    name: str
    currency: str


@dataclass(frozen=True)
class SubscriptionValues:
    id: int
    current_period_start: datetime
    current_period_end: datetime


@dataclass(frozen=True)
class PlanFeatureValues:
    id: int
    enabled: bool
    limit: int | None
    window: RateWindow | None
    overage_allowed: bool
    pricing_model: PricingModel | None
    unit_price: Decimal | None
    free_units: int
    package_size: int | None
    package_price: Decimal | None

    @cached_property
    def tiers(self) -> list[sa.Row]:
        """The tier table (first_unit, last_unit, unit_price, flat_fee), read only if a pricing needs it."""
        return list(usage_sql.connection().execute(usage_sql.TIERS, {"p_plan_feature": self.id}))


@dataclass(frozen=True)
class Entitlement:
    """What the customer's current plan grants of one feature.

    Duck-typed: the parts are ORM objects (meters, packages) or the *Values above (check, record).
    """

    feature: Feature | FeatureValues
    plan: Plan | PlanValues
    plan_feature: PlanFeature | PlanFeatureValues | None
    subscription: Subscription | SubscriptionValues | None

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


def light_entitlement(user_id: int, feature_code: str) -> Entitlement:
    """Resolve a feature code against the customer's live subscription (or the default plan).

    One Core SELECT into frozen values; the tier table is read later only if a pricing needs it.
    Raises UsageError for an unknown feature and NoDefaultPlan when there is no plan to fall back on.
    """
    return _resolve(usage_sql.connection(), user_id, feature_code)


def _resolve(conn: sa.Connection, user_id: int, feature_code: str) -> Entitlement:
    return entitlement_from_row(conn.execute(usage_sql.ENTITLEMENT, {"p_user": user_id, "p_code": feature_code})
                                .first(), feature_code)


def entitlement_from_row(row: sa.Row | None, feature_code: str) -> Entitlement:
    """The Entitlement from a row of usage_sql.ENTITLEMENT (or KEY_AND_ENTITLEMENT, which has its columns).

    Raises UsageError when the row names no feature and NoDefaultPlan when there is no plan.
    """
    if row is None or row.feature_id is None:
        raise UsageError("unknown_feature", f"there is no feature called {feature_code!r}", "feature")
    if row.plan_id is None:  # no live subscription and no default plan
        raise NoDefaultPlan("no default plan: mark one plan as the default (Free) plan")
    return Entitlement(
        FeatureValues(row.feature_id, row.feature_code, row.feature_name, row.feature_type, row.unit_name),
        PlanValues(row.plan_id, row.plan_code, row.plan_name, row.currency),
        None if row.plan_feature_id is None else PlanFeatureValues(
            row.plan_feature_id, row.enabled, row.limit, row.window, row.overage_allowed, row.pricing_model,
            row.unit_price, row.free_units, row.package_size, row.package_price,
        ),
        None if row.subscription_id is None else SubscriptionValues(
            row.subscription_id, row.current_period_start, row.current_period_end,
        ),
    )


def entitlement(user_id: int, feature_code: str) -> Entitlement:
    """The entitlement with ORM objects, for callers that follow relationships (e.g. plan_feature.feature).

    Resolved by the same query as light_entitlement, so the rule for which plan applies lives in one place.
    """
    light = light_entitlement(user_id, feature_code)
    get = db.session.get
    return Entitlement(
        get(Feature, light.feature.id),
        get(Plan, light.plan.id),
        None if light.plan_feature is None else get(PlanFeature, light.plan_feature.id),
        None if light.subscription is None else get(Subscription, light.subscription.id),
    )


def pricing_for(plan_feature: PlanFeature | PlanFeatureValues | None) -> Pricing | None:
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


def check(user_id: int, feature_code: str, quantity: int = 1, *, ent: Entitlement | None = None) -> UsageResult:
    """Would recording `quantity` now be allowed? Changes nothing.

    `ent`: the entitlement when the caller has resolved it already (the API reads it together
    with the key); otherwise it is read here.
    """
    quantity = check_quantity(quantity)
    conn = usage_sql.connection()
    if ent is None:
        ent = _resolve(conn, user_id, feature_code)
    at = now()
    refusal = _plan_refusal(ent, quantity)
    if refusal is not None:
        return refusal
    window = ent.window(at)
    used, bonus = _counter_values(conn, user_id, ent.feature.id, window.start)
    return _decide(ent, quantity, used, bonus, window, at, would_add=True)


def record(
    user_id: int,
    feature_code: str,
    quantity: int = 1,
    *,
    idempotency_key: str | None = None,
    source: str = "api",
    ent: Entitlement | None = None,
) -> UsageResult:
    """Check and record in one step; a refused record writes nothing, a replayed key records nothing new.

    The hot path is a handful of statements and no savepoint: with a key, the event is inserted
    first (ON CONFLICT DO NOTHING: a concurrent duplicate waits for the first and then finds it);
    then the counter takes the units by one conditional upsert, which on PostgreSQL also logs the
    event and the daily total (see _take_and_log); a refusal deletes the keyed event again.

    Without a key, on PostgreSQL, the record writes with exactly one statement (and otherwise
    only reads), which is what lets the API run it on an autocommit connection
    (usage_sql.connection). `ent`: as for `check`.
    """
    quantity = check_quantity(quantity)
    conn = usage_sql.connection()
    if ent is None:
        ent = _resolve(conn, user_id, feature_code)
    refusal = _plan_refusal(ent, quantity)
    if refusal is not None:
        return refusal
    at = now()
    window = ent.window(at)
    sql = usage_sql.for_dialect(conn.dialect.name)
    params = {
        "p_user": user_id, "p_feature": ent.feature.id, "p_quantity": quantity, "p_source": source, "p_at": at,
        "p_subscription": ent.subscription.id if ent.subscription else None, "p_day": at.date(),
        "p_window_start": window.start, "p_window_end": window.end, "p_limit": ent.limit,
    }
    event_id = None
    if idempotency_key is not None:
        event_id = conn.execute(sql.insert_keyed_event, {**params, "p_key": idempotency_key}).scalar_one_or_none()
        if event_id is None:
            return _replay(conn, ent, _event_by_key(conn, user_id, idempotency_key))
    taken = _take_and_log(conn, sql, ent, params, log_event=event_id is None)
    if taken is None:
        if event_id is not None:
            conn.execute(usage_sql.DELETE_EVENT, {"p_event": event_id})
        used, bonus = _counter_values(conn, user_id, ent.feature.id, window.start)
        return _decide(ent, quantity, used, bonus, window, at, would_add=True)
    used, bonus, logged_id = taken
    result = _decide(ent, quantity, used, bonus, window, at, would_add=False)
    result.event_id = event_id if event_id is not None else logged_id
    return result


def _take_and_log(
    conn: sa.Connection, sql: usage_sql.DialectStatements, ent: Entitlement, params: dict, *, log_event: bool
) -> tuple[int, int, int | None] | None:
    """Take the units from the window's counter if the allowance has room; if taken, log the use.

    Logging is the event row (unless `log_event` is False: it was inserted under a client key
    already) and the day's total. Returns (used, bonus, new event id or None), or None when
    refused, in which case nothing was taken or logged. On PostgreSQL this is one statement; on
    SQLite (no data-modifying CTEs) up to three, in the same transaction.
    """
    if _unbounded(ent):
        how = usage_sql.TAKE_UNBOUNDED
    elif params["p_quantity"] > ent.limit:
        # More than the plan's limit at once: only prepaid units (the bonus of an existing
        # counter) could make room, so the units can only be added to an existing counter.
        how = usage_sql.TAKE_EXISTING
    else:
        how = usage_sql.TAKE_BOUNDED
    if sql.take_and_log is not None:
        row = conn.execute(sql.take_and_log[how, log_event], params).first()
        if row is None:
            return None
        return row.used, row.bonus, row.event_id if log_event else None
    row = conn.execute(sql.take[how], params).first()
    if row is None:
        return None
    event_id = conn.execute(usage_sql.INSERT_EVENT, params).scalar_one() if log_event else None
    conn.execute(sql.add_daily, params)
    return row.used, row.bonus, event_id


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


def _replay(conn: sa.Connection, ent: Entitlement, event: sa.Row) -> UsageResult:
    at = now()
    window = ent.window(event.occurred_at) if ent.enabled else Period(at, at + timedelta(seconds=1))
    used, bonus = _counter_values(conn, event.user_id, event.feature_id, window.start)
    result = _decide(ent, event.quantity, used, bonus, window, at, would_add=False)
    result.allowed, result.code, result.message = True, None, ""
    result.event_id, result.replayed = event.id, True
    return result


def _event_by_key(conn: sa.Connection, user_id: int, key: str) -> sa.Row | None:
    """The event recorded under a client key: id, user_id, feature_id, quantity, occurred_at."""
    return conn.execute(usage_sql.EVENT_BY_KEY, {"p_user": user_id, "p_key": key}).first()


def _counter_values(conn: sa.Connection, user_id: int, feature_id: int, window_start: datetime) -> tuple[int, int]:
    """(used, bonus) of the window's counter, (0, 0) when it has none yet; always read fresh."""
    row = conn.execute(
        usage_sql.COUNTER, {"p_user": user_id, "p_feature": feature_id, "p_window_start": window_start}
    ).first()
    return (0, 0) if row is None else (row.used, row.bonus)


def add_prepaid_units(user_id: int, feature_code: str, units: int) -> UsageCounter:
    """Raise this period's allowance by prepaid units (a bought package)."""
    units = check_quantity(units)
    conn = usage_sql.connection()
    ent = _resolve(conn, user_id, feature_code)
    at = now()
    window = ent.window(at)
    key = {"p_user": user_id, "p_feature": ent.feature.id, "p_window_start": window.start}
    sql = usage_sql.for_dialect(conn.dialect.name)
    conn.execute(sql.ensure_counter, {**key, "p_window_end": window.end, "p_at": at})
    conn.execute(usage_sql.ADD_BONUS, {**key, "p_units": units, "p_at": at})
    return db.session.scalar(
        sa.select(UsageCounter).where(
            UsageCounter.user_id == user_id,
            UsageCounter.feature_id == ent.feature.id,
            UsageCounter.window_start == window.start,
        ).execution_options(populate_existing=True)
    )


def carry_prepaid_units(user_id: int, old_window_start: datetime, new_window: Period,
                        limits: dict[int, int | None]) -> dict[int, int]:
    """Move the prepaid units a period did not use into a period that replaces it early (an upgrade).

    Units beyond a feature's limit (`limits`: the old plan's QUOTA limits by feature id) came out
    of the prepaid ones, so what is left is `bonus - max(0, used - limit)`. Returns the units
    moved per feature id.
    """
    rows = db.session.execute(
        sa.select(UsageCounter.feature_id, UsageCounter.used, UsageCounter.bonus)
        .join(Feature, Feature.id == UsageCounter.feature_id)
        .where(UsageCounter.user_id == user_id, UsageCounter.window_start == old_window_start,
               UsageCounter.bonus > 0, Feature.type == FeatureType.QUOTA)
    ).all()
    conn = usage_sql.connection()
    sql = usage_sql.for_dialect(conn.dialect.name)
    at = now()
    moved: dict[int, int] = {}
    for row in rows:
        limit = limits.get(row.feature_id)
        unused = row.bonus - (max(0, row.used - limit) if limit is not None else 0)
        if unused <= 0:
            continue
        key = {"p_user": user_id, "p_feature": row.feature_id, "p_window_start": new_window.start}
        conn.execute(sql.ensure_counter, {**key, "p_window_end": new_window.end, "p_at": at})
        conn.execute(usage_sql.ADD_BONUS, {**key, "p_units": unused, "p_at": at})
        moved[row.feature_id] = unused
    return moved
