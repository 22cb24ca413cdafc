"""The demo data: the seed documents' plans, every feature type and every pricing model, seeded once."""
from __future__ import annotations

import sqlalchemy as sa

from portal.billing.features import FeatureType
from portal.billing.pricing import PricingModel
from portal.extensions import db
from portal.models import Feature, Plan, PlanFeature, User


def _limits(code: str) -> dict[str, int | None]:
    plan = db.session.scalar(sa.select(Plan).where(Plan.code == code))
    return {pf.feature.code: pf.limit for pf in plan.features}


def test_seed_demo_matches_the_seed_documents(runner):
    result = runner.invoke(args=["seed-demo"])
    assert result.exit_code == 0 and "demo@portal.test" in result.output and "admin@portal.test" in result.output
    free = db.session.scalar(sa.select(Plan).where(Plan.code == "free"))
    assert free.is_default and free.price_amount == 0
    limits = _limits("free")
    assert {k: limits[k] for k in ["quiz", "flashcards", "pair_quiz", "ask_question", "predicted_questions",
                                    "youtube_summarizer", "mock_test", "daily_quiz"]} == {
        "quiz": 3, "flashcards": 3, "pair_quiz": 1, "ask_question": 5, "predicted_questions": 3,
        "youtube_summarizer": 2, "mock_test": 3, "daily_quiz": None}
    premium = db.session.scalar(sa.select(Plan).where(Plan.code == "premium"))
    assert premium.price_amount == 999 and all(v is None for v in _limits("premium").values())
    basic = db.session.scalar(sa.select(Plan).where(Plan.code == "basic"))
    pro = db.session.scalar(sa.select(Plan).where(Plan.code == "pro"))
    assert (basic.price_amount, basic.interval_unit.value, basic.interval_count) == (1500, "day", 30)
    assert (_limits("basic")["tokens"], _limits("pro")["tokens"], pro.price_amount) == (1000, 5000, 4000)
    types = set(db.session.scalars(sa.select(Feature.type)))
    assert types == set(FeatureType)
    models = set(db.session.scalars(sa.select(PlanFeature.pricing_model).where(PlanFeature.pricing_model.is_not(None))))
    assert models == set(PricingModel)


def test_seed_demo_runs_once(runner):
    runner.invoke(args=["seed-demo"])
    plans = db.session.scalar(sa.select(sa.func.count()).select_from(Plan))
    again = runner.invoke(args=["seed-demo"])
    assert again.exit_code == 0 and "already present" in again.output
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Plan)) == plans
    assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 3
