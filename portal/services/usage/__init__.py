"""Check and record feature usage against the customer's plan, atomically (DESIGN §3.6).

QUOTA and RATE records are accepted only by a conditional increment of the counter
(`used + n <= limit + bonus`), so parallel requests cannot pass a limit. Meters read the
counters, never the event log.

`check` and `record` are the usage API's hot path, so they run prebuilt Core statements
(usage/sql.py) on the session's connection and resolve the entitlement into the small frozen
values of portal.billing.entitlements, which also decides: statement building and ORM loading
cost several times more Python than the database work. Nothing is cached between calls.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa

from portal import display
from portal.billing.entitlements import (
    Entitlement, FeatureValues, PlanFeatureValues, PlanValues, SubscriptionValues, UsageResult, decide, plan_refusal,
    pricing_of, unbounded,
)
from portal.billing.features import FeatureType
from portal.billing.periods import Period
from portal.billing.pricing import Pricing, PricingModel
from portal.clock import now
from portal.extensions import db
from portal.models import Feature, PlanFeature, UsageCounter
from portal.services import notifications
from portal.services.statements import connection
from portal.services.subscriptions import NoDefaultPlan
from portal.services.usage import sql as usage_sql

__all__ = [
    "Entitlement", "FeatureValues", "PlanFeatureValues", "PlanValues", "SubscriptionValues", "UsageError",
    "UsageResult", "add_prepaid_units", "carry_prepaid_units", "check", "check_quantity", "entitlement",
    "may_autocommit",
    "entitlement_from_row", "pricing_for", "record", "tiers_of",
]


class UsageError(Exception):
    """Bad usage input; `code` and `field` feed the API's error body."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def entitlement(user_id: int, feature_code: str) -> Entitlement:
    """Resolve a feature code against the customer's live subscription (or the default plan).

    One Core SELECT into the entitlement's frozen values. Raises UsageError for an unknown
    feature and NoDefaultPlan when there is no plan to fall back on.
    """
    return _resolve(connection(), user_id, feature_code)


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
    values = row._mapping
    parts = [None if values[fields[0][1]] is None else cls(*(values[label] for _, label in fields))
             for cls, _, fields in usage_sql.ENTITLEMENT_PARTS]
    return Entitlement(*parts)


def tiers_of(plan_feature_id: int) -> list[sa.Row]:
    """A plan feature's tier table (first_unit, last_unit, unit_price, flat_fee), in order."""
    return list(connection().execute(usage_sql.TIERS, {"p_plan_feature": plan_feature_id}))


def pricing_for(plan_feature: PlanFeature | PlanFeatureValues | None) -> Pricing | None:
    """The pricing model configured on a plan feature, or None when it is not priced.

    A stored PlanFeature brings its tiers through its relationship; for the values of an
    entitlement the tier table is read here, only when the model prices by tiers.
    """
    if plan_feature is None or plan_feature.pricing_model is None:
        return None
    tiers: Sequence = ()
    if plan_feature.pricing_model in (PricingModel.TIERED, PricingModel.VOLUME):
        tiers = plan_feature.tiers if isinstance(plan_feature, PlanFeature) else tiers_of(plan_feature.id)
    return pricing_of(plan_feature, tiers)


def may_autocommit(*, recording: bool, keyed: bool) -> bool:
    """Whether an API call's statements may each commit by themselves (statements.connection).

    A check only reads (and notes the key's use); an unkeyed record is reads plus one writing
    statement on PostgreSQL (see `record`), so a transaction adds nothing to either. A keyed
    record claims the key, does the work and stores the answer, which must commit together.
    """
    return not (recording and keyed)


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
    conn = connection()
    if ent is None:
        ent = _resolve(conn, user_id, feature_code)
    at = now()
    refusal = plan_refusal(ent, quantity)
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
    (statements.connection). `ent`: as for `check`.
    """
    quantity = check_quantity(quantity)
    conn = connection()
    if ent is None:
        ent = _resolve(conn, user_id, feature_code)
    refusal = plan_refusal(ent, quantity)
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
    if ent.feature.type is FeatureType.QUOTA and ent.limit:
        crossed = thresholds_crossed(used - quantity, used, ent.limit + bonus)
        if crossed:  # rare: only then does the record do more than its statements
            _notify_threshold(user_id, ent, crossed, used, ent.limit + bonus, window)
    return result


#: Shares of a QUOTA's allowance that are worth an email, once per feature and period.
THRESHOLDS = (80, 100)


def thresholds_crossed(before: int, after: int, allowance: int) -> int | None:
    """The highest share of `allowance` a use from `before` to `after` units crossed, or None.

    Both at once (a big use, or an allowance so small that 80 % rounds up to all of it) is one
    email, the higher one.
    """
    crossed = [pct for pct in THRESHOLDS if before < math.ceil(allowance * pct / 100) <= after]
    return max(crossed) if crossed else None


def _notify_threshold(user_id: int, ent: Entitlement, percent: int, used: int, allowance: int,
                      window: Period) -> None:
    kind = "usage_limit_reached" if percent == 100 else "usage_warning"
    notifications.notify(user_id, kind, {
        "feature": ent.feature.name, "percent": percent, "used": used, "limit": allowance,
        "unit": display.plural(ent.feature.unit_name, allowance), "resets_at": window.end,
    }, key=f"usage_{percent}:{user_id}:{ent.feature.id}:{window.start.isoformat()}")


def _take_and_log(
    conn: sa.Connection, sql: usage_sql.DialectStatements, ent: Entitlement, params: dict, *, log_event: bool
) -> tuple[int, int, int | None] | None:
    """Take the units from the window's counter if the allowance has room; if taken, log the use.

    Logging is the event row (unless `log_event` is False: it was inserted under a client key
    already) and the day's total. Returns (used, bonus, new event id or None), or None when
    refused, in which case nothing was taken or logged. On PostgreSQL this is one statement; on
    SQLite (no data-modifying CTEs) up to three, in the same transaction.
    """
    if unbounded(ent):
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


def _decide(ent: Entitlement, quantity: int, used: int, bonus: int, window: Period, at: datetime, *,
            would_add: bool) -> UsageResult:
    pricing = pricing_for(ent.plan_feature) if ent.feature.type is FeatureType.USAGE else None
    return decide(ent, quantity, used, bonus, window, at, would_add=would_add, pricing=pricing)


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
    conn = connection()
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
    conn = connection()
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
