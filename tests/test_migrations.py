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


def test_0004_moves_purchases_onto_their_invoices_and_balances_negative_ones(empty_database, tmp_path):
    """Data written before the one purchase path: the purchase travels from the payment to the invoice,
    and an upgrade whose credit exceeded its charge gets the line that says where the rest went."""
    from flask_migrate import upgrade

    app = create_app(base_config(empty_database, tmp_path))
    with app.app_context():
        upgrade(revision="0003")
        now = "2026-01-31 09:00:00+00:00"
        with db.engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO users (id, email, name, password_hash, role, session_token, is_active_account, "
                f"currency, created_at) VALUES (1, 'a@example.com', 'A', 'x', 'customer', 't', true, 'USD', '{now}')"))
            for number, total, paid, status in (("INV-000001", 999, 999, "paid"), ("INV-000002", -450, 0, "paid")):
                conn.execute(sa.text(
                    "INSERT INTO invoices (number, user_id, status, reason, currency, total, amount_paid, created_at) "
                    f"VALUES ('{number}', 1, '{status}', 'upgrade', 'USD', {total}, {paid}, '{now}')"))
            conn.execute(sa.text(
                "INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, amount, breakdown) "
                "VALUES (2, 1, 'proration', 'Unused time', 1, -1449, '[]'), (2, 2, 'plan', 'Monthly', 1, 999, '[]')"))
            conn.execute(sa.text(
                "INSERT INTO payments (user_id, invoice_id, purpose, amount, currency, status, provider, "
                "idempotency_key, amount_refunded, description, data, created_at, updated_at) VALUES (1, 1, 'invoice', "
                f"999, 'USD', 'succeeded', 'stripe', 'invoice:INV-000001:card', 0, '', "
                f"'{{\"type\": \"plan_change\", \"plan_id\": 2}}', '{now}', '{now}')"))
        upgrade()
        with db.engine.connect() as conn:
            purchases = dict(conn.execute(sa.text("SELECT number, purchase FROM invoices")).all())
            totals = dict(conn.execute(sa.text("SELECT number, total FROM invoices")).all())
            lines = conn.execute(sa.text("SELECT kind, amount FROM invoice_lines WHERE invoice_id = 2 "
                                         "ORDER BY position")).all()
        db.engine.dispose()
    as_dict = {k: v if isinstance(v, dict) else __import__("json").loads(v) for k, v in purchases.items()}
    assert as_dict == {"INV-000001": {"type": "plan_change", "plan_id": 2}, "INV-000002": {}}
    assert totals == {"INV-000001": 999, "INV-000002": 0}
    assert [tuple(line) for line in lines] == [("proration", -1449), ("plan", 999), ("credit", 450)]


def test_every_migration_downgrades_and_upgrades_again(empty_database, tmp_path):
    from flask_migrate import downgrade, upgrade

    app = create_app(base_config(empty_database, tmp_path))
    with app.app_context():
        upgrade()
        downgrade(revision="0003")
        upgrade()
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
        db.engine.dispose()
    assert diff == []
