"""Prebuilt SQL for the usage API's hot path: the entitlement, counters, events, daily totals.

Building a SQLAlchemy statement costs far more Python than executing it: every `select()`,
`insert().on_conflict_do_update()` or `.excluded` walks coercions and creates new objects, and
SQLAlchemy must then compute the statement's cache key before it finds the compiled SQL in its
cache. These statements are therefore built once, with `sa.bindparam` placeholders, and
executed with a parameter dict on the session's connection (Core, no ORM entity loading). A
prebuilt statement also memoizes its cache key, so each execution goes straight to the
compiled form.

Nothing here caches *data*: every call still reads the database, so a revoked key, a plan
change or an upgrade applies on the very next request.

The ON CONFLICT inserts are dialect specific (`postgresql.insert` vs `sqlite.insert`), so they
are built lazily per dialect name by `for_dialect`; on PostgreSQL an accepted record's counter,
event and daily total are also written by one statement (`take_and_log`), since each round trip
costs the app and the server more than the work itself. Bind names never equal a column name:
SQLAlchemy reserves those for the automatic VALUES/SET parameters of inserts and updates.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from portal.billing.entitlements import FeatureValues, PlanFeatureValues, PlanValues, SubscriptionValues
from portal.billing.lifecycle import LIVE_STATUSES
from portal.models import (
    ApiKey,
    Feature,
    Plan,
    PlanFeature,
    PricingTier,
    Subscription,
    UsageCounter,
    UsageDaily,
    UsageEvent,
    User,
)
from portal.services.statements import dialect_insert, param

_features = Feature.__table__
_plans = Plan.__table__
_plan_features = PlanFeature.__table__
_tiers = PricingTier.__table__
_subscriptions = Subscription.__table__
_counters = UsageCounter.__table__
_events = UsageEvent.__table__
_daily = UsageDaily.__table__
_keys = ApiKey.__table__
_users = User.__table__


# --- Entitlement ---------------------------------------------------------------------------

#: The plan every customer falls back to: the default, unarchived plan (at most one exists).
_DEFAULT_PLAN_ID = (
    sa.select(_plans.c.id)
    .where(_plans.c.is_default.is_(True), _plans.c.is_archived.is_(False))
    .order_by(_plans.c.id)
    .limit(1)
    .scalar_subquery()
)

def _part(cls: type, table: sa.Table, prefix: str) -> tuple[type, sa.Table, tuple[tuple[str, str], ...]]:
    return cls, table, tuple((f.name, prefix + f.name) for f in dataclasses.fields(cls))


#: The entitlement's parts, each a value class read from one table: (class, table, ((column,
#: label), ...)). The SELECT list below is built from these fields, and entitlement_from_row
#: reads the row back by the same labels: a new column is a new field of the value class.
ENTITLEMENT_PARTS = (
    _part(FeatureValues, _features, "feature_"),
    _part(PlanValues, _plans, "plan_"),
    _part(PlanFeatureValues, _plan_features, "plan_feature_"),
    _part(SubscriptionValues, _subscriptions, "subscription_"),
)


def _entitlement(base: sa.FromClause, user_id: sa.ColumnElement, *extra: sa.ColumnElement) -> sa.Select:
    """Feature, live subscription (if any), its plan or else the default plan, and that plan's
    grant of the feature, outer-joined onto `base` for the customer `user_id`.

    The live statuses are spelled as ORs of plain parameters rather than IN (...), which
    SQLAlchemy would re-expand into the SQL text on every execution.
    """
    return (
        sa.select(*extra, *(table.c[name].label(label) for _, table, fields in ENTITLEMENT_PARTS
                            for name, label in fields))
        .select_from(
            base
            .outerjoin(_subscriptions, sa.and_(
                _subscriptions.c.user_id == user_id,
                sa.or_(*(_subscriptions.c.status == status
                         for status in sorted(LIVE_STATUSES, key=lambda s: s.value))),
            ))
            .outerjoin(_plans, _plans.c.id == sa.func.coalesce(_subscriptions.c.plan_id, _DEFAULT_PLAN_ID))
            .outerjoin(_plan_features, sa.and_(
                _plan_features.c.plan_id == _plans.c.id, _plan_features.c.feature_id == _features.c.id,
            ))
        )
    )


#: The entitlement of customer p_user to feature p_code, in one round trip. No row: unknown
#: feature. plan_id NULL: no live subscription and no default plan.
ENTITLEMENT = _entitlement(_features, param("p_user", _subscriptions.c.user_id)).where(
    _features.c.code == param("p_code", _features.c.code)
)

#: API_KEY_BY_HASH and ENTITLEMENT in one round trip, for the usage API's check and record. No
#: row: the key is unknown or inactive. feature_id NULL: the key is good, the feature unknown.
KEY_AND_ENTITLEMENT = _entitlement(
    _keys.join(_users, _users.c.id == _keys.c.user_id)
    .outerjoin(_features, _features.c.code == param("p_code", _features.c.code)),
    _keys.c.user_id,
    _keys.c.id.label("key_id"), _keys.c.user_id.label("key_user_id"), _keys.c.last_used_at,
).where(
    _keys.c.key_hash == param("p_hash", _keys.c.key_hash),
    _keys.c.revoked_at.is_(None),
    _users.c.is_active_account.is_(True),
)

#: A plan feature's tier table, in order (only priced features with tiers need it).
TIERS = (
    sa.select(_tiers.c.first_unit, _tiers.c.last_unit, _tiers.c.unit_price, _tiers.c.flat_fee)
    .where(_tiers.c.plan_feature_id == param("p_plan_feature", _tiers.c.plan_feature_id))
    .order_by(_tiers.c.position)
)

# --- Counters, events, daily totals ----------------------------------------------------------

_COUNTER_KEY = sa.and_(
    _counters.c.user_id == param("p_user", _counters.c.user_id),
    _counters.c.feature_id == param("p_feature", _counters.c.feature_id),
    _counters.c.window_start == param("p_window_start", _counters.c.window_start),
)

#: (used, bonus) of one window's counter.
COUNTER = sa.select(_counters.c.used, _counters.c.bonus).where(_COUNTER_KEY)

_QUANTITY = param("p_quantity", _counters.c.used)
_ALLOWANCE_HAS_ROOM = _counters.c.used + _QUANTITY <= param("p_limit", _plan_features.c.limit) + _counters.c.bonus

#: TAKE_EXISTING (more than the limit at once): add to an existing counter if the allowance has room.
INCREMENT_BOUNDED = (
    sa.update(_counters).where(_COUNTER_KEY, _ALLOWANCE_HAS_ROOM)
    .values(used=_counters.c.used + _QUANTITY, updated_at=param("p_at", _counters.c.updated_at))
    .returning(_counters.c.used, _counters.c.bonus)
)

ADD_BONUS = (
    sa.update(_counters).where(_COUNTER_KEY)
    .values(
        bonus=_counters.c.bonus + param("p_units", _counters.c.bonus),
        updated_at=param("p_at", _counters.c.updated_at),
    )
)

#: An accepted use without a client key (no conflict is possible).
INSERT_EVENT = (
    sa.insert(_events)
    .values(
        user_id=param("p_user", _events.c.user_id), feature_id=param("p_feature", _events.c.feature_id),
        quantity=param("p_quantity", _events.c.quantity), idempotency_key=None,
        subscription_id=param("p_subscription", _events.c.subscription_id), source=param("p_source", _events.c.source),
        occurred_at=param("p_at", _events.c.occurred_at),
    )
    .returning(_events.c.id)
)

DELETE_EVENT = sa.delete(_events).where(_events.c.id == param("p_event", _events.c.id))

#: The event recorded under a client key: (id, user_id, feature_id, quantity, occurred_at).
EVENT_BY_KEY = sa.select(
    _events.c.id, _events.c.user_id, _events.c.feature_id, _events.c.quantity, _events.c.occurred_at,
).where(
    _events.c.user_id == param("p_user", _events.c.user_id),
    _events.c.idempotency_key == param("p_key", _events.c.idempotency_key),
)


@dataclass(frozen=True)
class DialectStatements:
    """The ON CONFLICT statements, built with one dialect's `insert`."""

    #: Event under a client key; returns its id, or no row when the key was recorded before.
    insert_keyed_event: sa.Insert
    #: Take units in one statement, keyed by how (a TAKE_* constant): insert the window's counter
    #: or add to it, or only add to an existing one; returns (used, bonus), or no row when refused.
    take: dict[str, sa.Insert | sa.Update]
    #: Make sure the window's counter exists (used 0), leaving an existing one alone.
    ensure_counter: sa.Insert
    #: Add to the day's total.
    add_daily: sa.Insert
    #: PostgreSQL only (None elsewhere), keyed by (how, with_event): take, then log the event
    #: (unless it was inserted under a client key already) and add to the day's total, all in one
    #: statement (see _take_and_log). `how` is a TAKE_* constant.
    take_and_log: dict[tuple[str, bool], sa.Select] | None


#: How units are taken from a counter: insert or add, unconditionally (unlimited, USAGE, BOOLEAN,
#: priced overage) or only when the allowance has room; or, for more than the plan's limit at
#: once, only by adding to an existing counter whose prepaid bonus makes room (a new counter has
#: no bonus, so it could never take them).
TAKE_UNBOUNDED, TAKE_BOUNDED, TAKE_EXISTING = "unbounded", "bounded", "existing"


def _column_value(name: str, column: sa.Column) -> sa.Cast:
    """A typed placeholder for an INSERT ... SELECT list, cast so the server needs no type inference."""
    return sa.cast(param(name, column), column.type)


def _take_and_log(take: sa.Insert | sa.Update, with_event: bool) -> sa.Select:
    """One round trip instead of three, with data-modifying CTEs (PostgreSQL):

        WITH taken AS (INSERT INTO usage_counters ... ON CONFLICT DO UPDATE ... WHERE <room>
                       RETURNING used, bonus),
             event AS (INSERT INTO usage_events ... SELECT ... FROM taken RETURNING id),
             daily AS (INSERT INTO usage_daily ... SELECT ... FROM taken ON CONFLICT DO UPDATE ...)
        SELECT taken.used, taken.bonus, event.id FROM taken JOIN event ON true

    The event and the daily total select FROM taken, so when the counter refuses (no row
    returned) they insert nothing, and the statement returns no row; PostgreSQL runs every
    data-modifying CTE exactly once, whether or not the outer SELECT reads it.
    """
    taken = take.cte("taken")
    daily_rows = sa.select(
        _column_value("p_user", _daily.c.user_id), _column_value("p_feature", _daily.c.feature_id),
        _column_value("p_day", _daily.c.day), _column_value("p_quantity", _daily.c.quantity),
    ).select_from(taken)
    daily = postgresql.insert(_daily).from_select(["user_id", "feature_id", "day", "quantity"], daily_rows)
    daily = daily.on_conflict_do_update(
        index_elements=["user_id", "feature_id", "day"], set_={"quantity": _daily.c.quantity + daily.excluded.quantity},
    ).cte("daily")
    if not with_event:
        return sa.select(taken.c.used, taken.c.bonus).add_cte(daily)
    event_rows = sa.select(
        _column_value("p_user", _events.c.user_id), _column_value("p_feature", _events.c.feature_id),
        _column_value("p_quantity", _events.c.quantity), _column_value("p_subscription", _events.c.subscription_id),
        _column_value("p_source", _events.c.source), _column_value("p_at", _events.c.occurred_at),
    ).select_from(taken)
    event = (
        sa.insert(_events)
        .from_select(["user_id", "feature_id", "quantity", "subscription_id", "source", "occurred_at"], event_rows)
        .returning(_events.c.id)
        .cte("event")
    )
    return (
        sa.select(taken.c.used, taken.c.bonus, event.c.id.label("event_id"))
        .select_from(taken.join(event, sa.true()))
        .add_cte(daily)
    )


def _build(dialect: str) -> DialectStatements:
    insert = dialect_insert(dialect)
    keyed_event = (
        insert(_events)
        .values(
            user_id=param("p_user", _events.c.user_id), feature_id=param("p_feature", _events.c.feature_id),
            quantity=param("p_quantity", _events.c.quantity), idempotency_key=param("p_key", _events.c.idempotency_key),
            subscription_id=param("p_subscription", _events.c.subscription_id),
            source=param("p_source", _events.c.source),
            occurred_at=param("p_at", _events.c.occurred_at),
        )
        .on_conflict_do_nothing(index_elements=["user_id", "idempotency_key"])
        .returning(_events.c.id)
    )
    new_counter = {
        "user_id": param("p_user", _counters.c.user_id), "feature_id": param("p_feature", _counters.c.feature_id),
        "window_start": param("p_window_start", _counters.c.window_start),
        "window_end": param("p_window_end", _counters.c.window_end),
        "bonus": 0, "updated_at": param("p_at", _counters.c.updated_at),
    }
    counter_key = ["user_id", "feature_id", "window_start"]
    add = {"used": _counters.c.used + _QUANTITY, "updated_at": param("p_at", _counters.c.updated_at)}

    def take(where):
        return (
            insert(_counters).values(used=_QUANTITY, **new_counter)
            .on_conflict_do_update(index_elements=counter_key, set_=add, where=where)
            .returning(_counters.c.used, _counters.c.bonus)
        )

    daily = insert(_daily).values(
        user_id=param("p_user", _daily.c.user_id), feature_id=param("p_feature", _daily.c.feature_id),
        day=param("p_day", _daily.c.day), quantity=param("p_quantity", _daily.c.quantity),
    )
    takes = {TAKE_UNBOUNDED: take(None), TAKE_BOUNDED: take(_ALLOWANCE_HAS_ROOM), TAKE_EXISTING: INCREMENT_BOUNDED}
    return DialectStatements(
        insert_keyed_event=keyed_event,
        take=takes,
        ensure_counter=(
            insert(_counters).values(used=0, **new_counter).on_conflict_do_nothing(index_elements=counter_key)
        ),
        add_daily=daily.on_conflict_do_update(
            index_elements=["user_id", "feature_id", "day"],
            set_={"quantity": _daily.c.quantity + daily.excluded.quantity},
        ),
        take_and_log={
            (how, with_event): _take_and_log(statement, with_event)
            for how, statement in takes.items() for with_event in (True, False)
        } if dialect == "postgresql" else None,
    )


_by_dialect: dict[str, DialectStatements] = {}


def for_dialect(name: str) -> DialectStatements:
    """The ON CONFLICT statements for a dialect ("postgresql" or "sqlite"), built on first use."""
    found = _by_dialect.get(name)
    if found is None:
        found = _by_dialect[name] = _build(name)
    return found
