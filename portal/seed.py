"""Demo data for `flask seed-demo`: the plans of the seed documents plus priced-usage examples."""
from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa

from portal.billing.features import FeatureType, RateWindow
from portal.billing.periods import IntervalUnit
from portal.billing.pricing import PricingModel, Tier
from portal.extensions import db
from portal.models import Plan, Role, User
from portal.services import auth, catalog

DEMO_CUSTOMER = ("demo@portal.test", "demo-password-1")
DEMO_STAFF = ("staff@portal.test", "staff-password-1")
DEMO_ADMIN = ("admin@portal.test", "admin-password-1")

#: The Free plan's monthly quotas from the usage-tracking spec (None = unlimited).
STUDY_FEATURES = [
    ("quiz", "Quiz", 3),
    ("flashcards", "Flashcards", 3),
    ("pair_quiz", "Pair quiz", 1),
    ("ask_question", "Ask a question", 5),
    ("predicted_questions", "Predicted questions", 3),
    ("youtube_summarizer", "YouTube summarizer", 2),
    ("mock_test", "Mock test", 3),
    ("daily_quiz", "Daily quiz", None),
]


def seed_demo() -> bool:
    """Create the demo catalogue and accounts once; returns False when they already exist."""
    if db.session.scalar(sa.select(Plan.id).where(Plan.code == "free")) is not None:
        return False
    f = catalog.get_or_create_feature
    study = {code: f(code, name, FeatureType.QUOTA, "use") for code, name, _ in STUDY_FEATURES}
    tokens = f("tokens", "AI tokens", FeatureType.QUOTA, "token", "Tokens consumed by AI requests")
    exports = f("exports", "Exports", FeatureType.RATE, "export")
    dark_mode = f("dark_mode", "Dark mode", FeatureType.BOOLEAN, "")
    api_calls = f("api_calls", "API calls", FeatureType.USAGE, "call")
    sms = f("sms", "SMS", FeatureType.USAGE, "SMS")
    seats = f("seats", "Seats", FeatureType.USAGE, "seat")
    emails = f("emails", "Emails sent", FeatureType.USAGE, "email")

    free = catalog.create_plan("free", "Free", price_amount=0, is_default=True, sort_order=0,
                               description="Try every study tool with monthly limits.")
    for code, _, limit in STUDY_FEATURES:
        catalog.grant(free, study[code], limit=limit)
    catalog.grant(free, exports, limit=10, window=RateWindow.DAY)
    catalog.grant(free, dark_mode, enabled=False)

    premium = catalog.create_plan("premium", "Premium", price_amount=999, sort_order=10,
                                  description="Everything unlimited.")
    for code, _, _ in STUDY_FEATURES:
        catalog.grant(premium, study[code], limit=None)
    catalog.grant(premium, exports, limit=None, window=RateWindow.DAY)
    catalog.grant(premium, dark_mode)

    # Token bundles: a QUOTA per period with PACKAGE top-ups (seed: Basic $15 / 1,000, Pro $40 / 5,000).
    basic = catalog.create_plan("basic", "Basic", price_amount=1500, interval_unit=IntervalUnit.DAY,
                                interval_count=30, sort_order=20, description="1,000 AI tokens every 30 days.")
    catalog.grant(basic, tokens, limit=1000, pricing_model=PricingModel.PACKAGE,
                  package_size=500, package_price=Decimal("8.00"))
    catalog.grant(basic, dark_mode)
    pro = catalog.create_plan("pro", "Pro", price_amount=4000, interval_unit=IntervalUnit.DAY,
                              interval_count=30, sort_order=30, description="5,000 AI tokens every 30 days.")
    catalog.grant(pro, tokens, limit=5000, pricing_model=PricingModel.PACKAGE,
                  package_size=1000, package_price=Decimal("7.00"))
    catalog.grant(pro, dark_mode)

    # Usage-priced examples, one per pricing model.
    business = catalog.create_plan("business", "Business", price_amount=4900, sort_order=40,
                                   description="Pay for what your team uses.")
    catalog.grant(business, api_calls, pricing_model=PricingModel.TIERED, tiers=[
        Tier(1, 10_000, Decimal("0")),
        Tier(10_001, 100_000, Decimal("0.001")),
        Tier(100_001, None, Decimal("0.0005")),
    ])
    catalog.grant(business, sms, pricing_model=PricingModel.PACKAGE, package_size=500, package_price=Decimal("20"))
    catalog.grant(business, seats, pricing_model=PricingModel.VOLUME, tiers=[
        Tier(1, 100, Decimal("10")),
        Tier(101, 500, Decimal("8")),
        Tier(501, None, Decimal("6")),
    ])
    catalog.grant(business, emails, pricing_model=PricingModel.FLAT, unit_price=Decimal("0.0005"), free_units=1000)
    catalog.grant(business, exports, limit=10, window=RateWindow.DAY)
    catalog.grant(business, dark_mode)
    catalog.grant(business, tokens, limit=2000, overage_allowed=True, pricing_model=PricingModel.FLAT,
                  unit_price=Decimal("0.01"))

    auth.register(*DEMO_CUSTOMER, name="Alice Demo")
    auth.register(*DEMO_STAFF, name="Sam Support", role=Role.SUPPORT)
    auth.register(*DEMO_ADMIN, name="Ada Admin", role=Role.ADMIN)
    return True


def demo_logins() -> list[tuple[str, str, str]]:
    present = set(db.session.scalars(sa.select(User.email)))
    rows = [("customer", *DEMO_CUSTOMER), ("support", *DEMO_STAFF), ("admin", *DEMO_ADMIN)]
    return [row for row in rows if row[1] in present]
