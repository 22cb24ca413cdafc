"""`flask db upgrade` builds the schema on an empty SQLite and an empty PostgreSQL, matching the models."""
from __future__ import annotations


import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from portal import create_app
from portal.extensions import db
from tests.conftest import base_config, fresh_pg_database


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return fresh_pg_database(request, "empty")


def test_upgrade_on_an_empty_database_matches_the_models(empty_database, tmp_path):
    app = create_app(base_config(empty_database, tmp_path))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
            tables = set(sa.inspect(conn).get_table_names())
        db.engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
    assert {"users", "plans", "plan_features", "pricing_tiers", "subscriptions", "subscription_events", "wallets",
            "wallet_entries", "invoices", "invoice_lines", "payments", "refunds", "payment_methods", "usage_counters",
            "usage_events", "usage_daily", "operation_errors", "retry_attempts", "email_log", "audit_log", "api_keys",
            "idempotency_records", "webhook_events", "outbox"} <= tables


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"], indirect=True)
def test_exact_decimals_come_back_plain_on_both_backends(app):
    """NUMERIC(24,10) must not show up as 8.0000000000 (nor 100 as 1E+2) on the pages."""
    from decimal import Decimal

    from portal.billing.features import FeatureType
    from portal.billing.pricing import PricingModel
    from portal.models import PlanFeature
    from portal.services import catalog

    plan = catalog.create_plan("p", "P", price_amount=0)
    feature = catalog.get_or_create_feature("f", "F", FeatureType.USAGE)
    pf = catalog.grant(plan, feature, pricing_model=PricingModel.PACKAGE, package_size=500,
                       package_price=Decimal("100"), unit_price=Decimal("0.0005"))
    db.session.commit()
    db.session.expire_all()
    pf = db.session.get(PlanFeature, pf.id)
    assert str(pf.package_price) == "100" and str(pf.unit_price) == "0.0005"
