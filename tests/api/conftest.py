"""API fixtures: a customer with an API key, and a small catalogue with every kind of limit."""
from __future__ import annotations

import pytest

from portal.billing.features import FeatureType, RateWindow
from portal.billing.pricing import PricingModel
from portal.extensions import db
from portal.services import api_keys, catalog
from portal.services.auth import register


@pytest.fixture
def api_catalog(app):
    """Free (default) with a QUOTA of 10, a RATE of 10 per hour, a BOOLEAN off; Pro with more."""
    free = catalog.create_plan("free", "Free", price_amount=0, is_default=True)
    pro = catalog.create_plan("pro", "Pro", price_amount=2000, sort_order=1)
    reports = catalog.get_or_create_feature("reports", "Reports", FeatureType.QUOTA, "report")
    pings = catalog.get_or_create_feature("pings", "Pings", FeatureType.RATE, "ping")
    dark = catalog.get_or_create_feature("dark_mode", "Dark mode", FeatureType.BOOLEAN)
    calls = catalog.get_or_create_feature("api_calls", "API calls", FeatureType.USAGE, "call")
    catalog.grant(free, reports, limit=10)
    catalog.grant(free, pings, limit=10, window=RateWindow.HOUR)
    catalog.grant(free, dark, enabled=False)
    from decimal import Decimal

    catalog.grant(free, calls, pricing_model=PricingModel.FLAT, unit_price=Decimal("0.01"), free_units=5)
    catalog.grant(pro, reports, limit=1000)
    catalog.grant(pro, pings, limit=None, window=RateWindow.HOUR)
    catalog.grant(pro, dark)
    db.session.commit()


@pytest.fixture
def api_user(api_catalog):
    user = register("client@example.com", "a long password", "Client")
    db.session.commit()
    return user


@pytest.fixture
def api_key(api_user) -> str:
    _, raw = api_keys.create(api_user, "tests")
    db.session.commit()
    return raw


@pytest.fixture
def api(client, api_key):
    """Call the API as the customer: api.post(path, json=...), api.get(path)."""

    class Caller:
        headers = {"Authorization": f"Bearer {api_key}"}

        def get(self, path, **kw):
            return client.get(f"/api/v1{path}", headers={**self.headers, **kw.pop("headers", {})}, **kw)

        def post(self, path, **kw):
            return client.post(f"/api/v1{path}", headers={**self.headers, **kw.pop("headers", {})}, **kw)

    return Caller()
