"""Meters read from counters (never the event log) and history from daily totals."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
import sqlalchemy as sa

from portal.billing.features import FeatureType
from portal.billing.lifecycle import Transition
from portal.extensions import db
from portal.models import Plan
from portal.services import usage
from portal.services.subscriptions import live_subscription, transition
from portal.services.usage import meters
from portal.services.usage.meters import Meter
from tests.conftest import both_databases


def switch_plan(user, code: str) -> None:
    plan = db.session.scalar(sa.select(Plan).where(Plan.code == code))
    transition(live_subscription(user.id), Transition.CHANGE_PLAN, reason="test", plan_id=plan.id)
    db.session.commit()


def record(user, code: str, quantity: int) -> None:
    result = usage.record(user.id, code, quantity)
    assert result.allowed, result.message
    db.session.commit()


@both_databases
def test_free_plan_meters_follow_the_counters(alice):
    board = meters.build(alice.id)
    assert board.plan.code == "free"
    quiz = board.meter("quiz")
    assert (quiz.type, quiz.used, quiz.limit, quiz.allowance, quiz.remaining) == (FeatureType.QUOTA, 0, 3, 3, 3)
    assert quiz.level == "ok" and quiz.resets_at == board.period.end

    record(alice, "quiz", 3)
    quiz = meters.build(alice.id).meter("quiz")
    assert (quiz.used, quiz.remaining, quiz.percent, quiz.level) == (3, 0, 100, "danger")


def test_unlimited_rate_and_boolean_meters(alice, clock):
    board = meters.build(alice.id)
    daily = board.meter("daily_quiz")
    assert daily.is_unlimited and daily.allowance is None and daily.remaining is None and daily.level == "ok"
    exports = board.meter("exports")
    assert exports.type is FeatureType.RATE and exports.limit == 10 and exports.window.value == "day"
    # 31 Jan 09:00 UTC: the day window ends at midnight, 15 hours away.
    assert exports.resets_in == "15 h" and exports.window_phrase == "today"
    assert exports.resets_at == clock.now().replace(hour=0) + timedelta(days=1)
    dark = board.meter("dark_mode")
    assert dark.type is FeatureType.BOOLEAN and not dark.enabled
    # Groups in reading order: allowances, rate limits, usage, on/off features.
    order = [m.type for m in board.meters]
    assert order == sorted(order, key=lambda t: ["QUOTA", "RATE", "USAGE", "BOOLEAN"].index(t.value))


def test_rate_meter_counts_the_current_window_only(alice, clock):
    record(alice, "exports", 4)
    assert meters.build(alice.id).meter("exports").used == 4
    clock.advance(hours=15)  # the next day's window
    exports = meters.build(alice.id).meter("exports")
    assert exports.used == 0 and exports.resets_in == "24 h"


@pytest.mark.parametrize("used, allowance, level", [
    (0, 10, "ok"), (7, 10, "ok"), (8, 10, "warning"), (9, 10, "warning"), (10, 10, "danger"), (0, 0, "danger"),
    (79, 100, "ok"), (80, 100, "warning"), (99, 100, "warning"), (100, 100, "danger"), (150, 100, "danger"),
])
def test_levels(used, allowance, level):
    meter = Meter(1, "x", "X", "", "unit", FeatureType.QUOTA, True, "USD", used=used, limit=allowance)
    assert meter.level == level


def test_prepaid_units_raise_the_allowance():
    meter = Meter(1, "tokens", "AI tokens", "", "token", FeatureType.QUOTA, True, "USD", used=1200, limit=1000, bonus=500)
    assert (meter.allowance, meter.remaining, meter.level, meter.overage) == (1500, 300, "warning", 0)




@both_databases
def test_usage_cost_so_far_on_business(alice):
    switch_plan(alice, "business")
    record(alice, "api_calls", 10_500)
    record(alice, "seats", 150)
    record(alice, "sms", 501)
    board = meters.build(alice.id)
    calls = board.meter("api_calls")
    # Graduated: the first 10,000 are free, the next 500 at $0.001.
    assert calls.used == 10_500 and calls.cost == 50
    assert [line.amount for line in calls.breakdown] == [0, 50]
    assert "Units 10,001–10,500" in calls.breakdown[1].description
    seats = board.meter("seats")
    # Volume: all 150 seats at the 101–500 tier price, $8.
    assert seats.cost == 120_000 and len(seats.breakdown) == 1 and "101–500" in seats.breakdown[0].description
    sms = board.meter("sms")
    assert sms.cost == 4000  # 501 SMS → 2 started packages of 500 at $20
    assert sms.offer is None  # billed in arrears: nothing to buy in advance
    assert any("billed at the end of the period" in line for line in sms.price_sheet)
    emails = board.meter("emails")
    assert emails.cost == 0 and emails.price_sheet == ("$0.0005 per email beyond 1,000 free",)


def test_priced_quota_overage_shows_its_cost(alice):
    switch_plan(alice, "business")
    record(alice, "tokens", 2100)  # limit 2,000, overage at $0.01 a token
    tokens = meters.build(alice.id).meter("tokens")
    assert tokens.overage == 100 and tokens.cost == 100 and tokens.level == "danger"


def test_token_plan_offers_packages(alice):
    switch_plan(alice, "basic")
    tokens = meters.build(alice.id).meter("tokens")
    assert tokens.offer is not None and tokens.offer.package_size == 500 and tokens.offer.price == 800
    assert tokens.price_sheet == ("Top up any time: 500 tokens for $8.00, added to this period's allowance",)


def test_build_reads_three_rows_sets_whatever_the_event_count(alice, app):
    """Subscription, plan features (with tiers), current counters: the event log is never read."""
    switch_plan(alice, "business")  # tiered features: tiers come in the same query
    record(alice, "api_calls", 5)
    user_id = alice.id
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", seen)
    try:
        meters.build(user_id)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", seen)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 3, selects
    assert not any("usage_events" in s for s in statements)


def test_history_fills_empty_days_and_keeps_to_the_range(alice, clock):
    today = clock.now().date()  # 31 Jan 2026
    clock.advance(days=-10)
    record(alice, "quiz", 1)  # 21 Jan: outside a 7-day range
    clock.advance(days=7)
    record(alice, "quiz", 1)  # 28 Jan
    clock.advance(days=3)
    record(alice, "quiz", 1)  # 31 Jan
    week = meters.history(alice.id, "quiz", 7)
    assert [t.day for t in week.totals] == [today - timedelta(days=n) for n in range(6, -1, -1)]
    assert {t.day: t.quantity for t in week.totals if t.quantity} == {date(2026, 1, 28): 1, date(2026, 1, 31): 1}
    assert week.total == 2 and week.peak == 1
    month = meters.history(alice.id, "quiz", 30)
    assert month.total == 3 and len(month.totals) == 30


def test_histories_cover_every_counted_feature(alice):
    record(alice, "exports", 2)
    found = meters.histories(alice.id, meters.build(alice.id), 7)
    assert "dark_mode" not in found and {"quiz", "daily_quiz", "exports"} <= set(found)
    assert found["exports"].totals[-1].quantity == 2


@pytest.mark.parametrize("days", [0, 91, -1, True, "7"])
def test_history_refuses_bad_ranges(alice, days):
    with pytest.raises(meters.MeterError, match="from 1 to 90"):
        meters.history(alice.id, "quiz", days)


def test_history_refuses_unknown_features(alice):
    with pytest.raises(meters.MeterError, match="no feature called"):
        meters.history(alice.id, "nope", 7)
