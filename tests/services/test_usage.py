"""Usage enforcement: QUOTA, RATE, USAGE and BOOLEAN, atomic under concurrency."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from portal.billing.features import FeatureType, RateWindow
from portal.extensions import db
from portal.models import UsageCounter, UsageDaily, UsageEvent, User
from portal.services import catalog as catalog_service
from portal.services import usage
from portal.services.auth import register
from tests.conftest import both_databases


@pytest.fixture
def limited(app):
    """A default plan with a QUOTA of 10 per period and a RATE of 10 per minute, and one customer on it."""
    plan = catalog_service.create_plan("free", "Free", price_amount=0, is_default=True)
    quota = catalog_service.get_or_create_feature("reports", "Reports", FeatureType.QUOTA, "report")
    rate = catalog_service.get_or_create_feature("pings", "Pings", FeatureType.RATE, "ping")
    flag = catalog_service.get_or_create_feature("dark_mode", "Dark mode", FeatureType.BOOLEAN)
    catalog_service.get_or_create_feature("beta", "Beta", FeatureType.BOOLEAN)  # not in the plan
    catalog_service.grant(plan, quota, limit=10)
    catalog_service.grant(plan, rate, limit=10, window=RateWindow.MINUTE)
    catalog_service.grant(plan, flag, enabled=False)
    user = register("quota@example.com", "long enough password")
    db.session.commit()
    user_id = user.id
    db.session.rollback()
    return user_id


def _events() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(UsageEvent))


@both_databases
def test_quota_refuses_what_would_pass_the_limit_and_writes_nothing(limited):
    assert usage.record(limited, "reports", 7).allowed
    refused = usage.record(limited, "reports", 4)
    db.session.commit()
    assert not refused.allowed and refused.code == "quota_exceeded"
    assert refused.used == 7 and refused.remaining == 3
    assert _events() == 1
    ok = usage.record(limited, "reports", 3)
    db.session.commit()
    assert ok.allowed and ok.used == 10 and ok.remaining == 0


def test_check_changes_nothing(limited):
    result = usage.check(limited, "reports", 5)
    db.session.commit()
    assert result.allowed and result.used == 0 and result.remaining == 10
    assert db.session.scalar(sa.select(sa.func.count()).select_from(UsageCounter)) == 0
    assert not usage.check(limited, "reports", 11).allowed


def test_quota_resets_with_the_next_period(limited, clock):
    from portal.services.subscriptions import live_subscription

    usage.record(limited, "reports", 10)
    db.session.commit()
    assert not usage.check(limited, "reports", 1).allowed
    sub = live_subscription(limited)
    sub.current_period_start, sub.current_period_end = sub.current_period_end, sub.current_period_end.replace(month=3)
    db.session.commit()
    clock.set(sub.current_period_start)
    assert usage.record(limited, "reports", 1).used == 1


def test_rate_window_refuses_with_retry_after_then_resets(limited, clock):
    for _ in range(10):
        assert usage.record(limited, "pings").allowed
    clock.advance(seconds=20)  # 09:00:20 → the minute ends in 40 s
    refused = usage.record(limited, "pings")
    assert not refused.allowed and refused.code == "rate_limited" and refused.retry_after == 40
    clock.advance(seconds=40)
    assert usage.record(limited, "pings").allowed


def test_boolean_off_and_missing_features_are_refused(limited):
    off = usage.check(limited, "dark_mode")
    assert not off.allowed and off.code == "feature_not_in_plan"
    assert not usage.record(limited, "beta").allowed
    assert _events() == 0


def test_unknown_feature_and_bad_quantities(limited):
    with pytest.raises(usage.UsageError) as unknown:
        usage.record(limited, "nope")
    assert unknown.value.code == "unknown_feature" and unknown.value.field == "feature"
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(usage.UsageError) as err:
            usage.record(limited, "reports", bad)
        assert err.value.field == "quantity"


@both_databases
def test_same_idempotency_key_records_once(limited):
    first = usage.record(limited, "reports", 2, idempotency_key="evt-1")
    db.session.commit()
    again = usage.record(limited, "reports", 2, idempotency_key="evt-1")
    db.session.commit()
    assert again.replayed and again.event_id == first.event_id and again.used == 2
    assert _events() == 1
    daily = db.session.scalar(sa.select(UsageDaily.quantity))
    assert daily == 2


def test_prepaid_packages_raise_the_allowance(limited):
    usage.record(limited, "reports", 10)
    usage.add_prepaid_units(limited, "reports", 5)
    db.session.commit()
    result = usage.record(limited, "reports", 5)
    assert result.allowed and result.limit == 15 and result.remaining == 0


@both_databases
def test_more_than_the_limit_at_once_needs_prepaid_units(limited):
    """25 at once against a limit of 10: refused (writing nothing) until a package adds 20."""
    refused = usage.record(limited, "reports", 25)
    db.session.commit()
    assert not refused.allowed and refused.code == "quota_exceeded" and refused.used == 0
    assert _events() == 0 and db.session.scalar(sa.select(sa.func.count()).select_from(UsageCounter)) == 0
    usage.add_prepaid_units(limited, "reports", 20)
    db.session.commit()
    taken = usage.record(limited, "reports", 25)
    db.session.commit()
    assert taken.allowed and taken.used == 25 and taken.limit == 30 and taken.remaining == 5
    again = usage.record(limited, "reports", 11)
    db.session.commit()
    assert not again.allowed and again.used == 25
    assert _events() == 1 and db.session.scalar(sa.select(UsageDaily.quantity)) == 25


def test_usage_features_report_their_cost(catalog):
    """Business plan: the first 10,000 API calls are free, then $0.001 each."""
    from portal.services.subscriptions import live_subscription, transition
    from portal.billing.lifecycle import Transition
    from portal.models import Plan

    user = db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))
    business = db.session.scalar(sa.select(Plan).where(Plan.code == "business"))
    transition(live_subscription(user.id), Transition.CHANGE_PLAN, reason="test", plan_id=business.id)
    db.session.commit()
    result = usage.record(user.id, "api_calls", 10_500)
    assert result.allowed and result.type is FeatureType.USAGE
    assert result.cost == 50  # 500 × $0.001 = $0.50
    emails = usage.record(user.id, "emails", 3000)
    assert emails.cost == 100  # 2,000 beyond the free 1,000 × $0.0005 = $1.00


@both_databases
@pytest.mark.parametrize("app_config", [{"SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 50, "max_overflow": 0}}])
@pytest.mark.parametrize("feature", ["reports", "pings"])
def test_100_concurrent_records_pass_a_limit_of_10_exactly(app, limited, feature):
    barrier = threading.Barrier(50)

    def one(i: int) -> bool:
        with app.app_context():
            if i < 50:
                barrier.wait()
            try:
                result = usage.record(limited, feature, 1)
                db.session.commit()
                return result.allowed
            finally:
                db.session.remove()

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(100)))
    db.session.expire_all()
    assert results.count(True) == 10 and results.count(False) == 90
    assert db.session.scalar(sa.select(UsageCounter.used)) == 10
    assert _events() == 10
