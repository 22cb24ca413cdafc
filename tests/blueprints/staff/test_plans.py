"""The plan editor (issue #13, page 1): plans, the feature catalogue, a plan's feature settings and tier
tables, the live preview; admins only, one audit row per action, nothing written on bad input."""
from __future__ import annotations

import re
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from werkzeug.routing import IntegerConverter

from portal.billing.features import FeatureType
from portal.billing.pricing import PricingModel
from portal.extensions import db
from portal.models import AuditLog, Feature, Invoice, InvoiceLine, Plan, PlanFeature, PricingTier, User
from portal.services import wallet
from portal.services.subscriptions import changes as plan_changes
from portal.services.subscriptions import live_subscription
from portal.services.subscriptions.views import next_invoice
from tests.conftest import both_databases, csrf_from

HX = {"HX-Request": "true"}
EDITOR_MODULE = "portal.blueprints.staff.plans"


# --- helpers ---------------------------------------------------------------------------------------------

def _plan(code: str) -> Plan:
    db.session.expire_all()
    return db.session.scalar(sa.select(Plan).where(Plan.code == code))


def _feature(code: str) -> Feature:
    return db.session.scalar(sa.select(Feature).where(Feature.code == code))


def _tiers(plan_code: str, feature_code: str) -> list[tuple]:
    db.session.expire_all()
    return [(t.first_unit, t.last_unit, t.unit_price, t.flat_fee) for t in db.session.scalars(
        sa.select(PricingTier).join(PlanFeature).join(Plan).join(Feature)
        .where(Plan.code == plan_code, Feature.code == feature_code).order_by(PricingTier.position))]


def _audits() -> list[str]:
    """The actions audited so far, oldest first (logins are audited too; they are left out)."""
    db.session.expire_all()
    actions = db.session.scalars(sa.select(AuditLog.action).order_by(AuditLog.id))
    return [a for a in actions if not a.startswith("auth.")]


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def _card(html: str, code: str) -> str | None:
    match = re.search(rf'<article class="plan-card[^"]*" id="plan-{code}">(.*?)</article>', html, re.S)
    return match.group(1) if match else None


def _plan_data(client, url: str, **overrides) -> dict:
    data = {
        "csrf_token": csrf_from(client, url), "name": "Team", "code": "team", "description": "For small teams.",
        "price": "19", "currency": "USD", "interval_count": "1", "interval_unit": "month", "trial_days": "0",
        "sort_order": "50",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _tier_fields(rows) -> dict:
    data = {}
    for i, (first, last, price, fee) in enumerate(rows):
        data.update({f"tiers-{i}-first_unit": str(first), f"tiers-{i}-last_unit": "" if last is None else str(last),
                     f"tiers-{i}-unit_price": price, f"tiers-{i}-flat_fee": fee})
    return data


def _settings_url(plan_code: str, feature_code: str) -> str:
    return f"/staff/plans/{_plan(plan_code).id}/features/{_feature(feature_code).id}"


def _settings(client, url: str, *, tiers=(), **fields) -> dict:
    data = {"csrf_token": csrf_from(client, url), "action": "save", "enabled": "y", **fields}
    data.update(_tier_fields(tiers))
    return data


GRADUATED = [(1, 1000, "0", ""), (1001, 10000, "0.002", ""), (10001, None, "0.001", "5")]


def _editor_rules(app):
    """Every URL of the plan editor, with sample ids filled in."""
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if view.__module__ != EDITOR_MODULE:
            continue
        values = {name: 1 for name, conv in rule._converters.items() if isinstance(conv, IntegerConverter)}
        yield rule, rule.build(values, append_unknown=False)[1]


# --- who may use it ----------------------------------------------------------------------------------------

def test_every_plan_editor_view_is_marked_admin_only(app):
    views = {rule.endpoint: app.view_functions[rule.endpoint] for rule, _ in _editor_rules(app)}
    assert len(views) >= 12, sorted(views)
    assert [e for e, view in views.items() if not getattr(view, "admin_only", False)] == []


@pytest.mark.parametrize("who", ["staff_client", "alice_client"])
def test_support_staff_and_customers_get_403_on_every_plan_editor_url(request, app, who):
    client = request.getfixturevalue(who)
    token = csrf_from(client, "/account/password")
    before = _audits()
    checked = 0
    for rule, url in _editor_rules(app):
        for method in sorted(rule.methods & {"GET", "POST"}):
            if method == "GET":
                response = client.get(url)
            else:
                response = client.post(url, data={"csrf_token": token, "name": "x", "code": "x", "price": "1"})
            assert response.status_code == 403, f"{who} {method} {url}: {response.status_code}"
            checked += 1
    assert checked >= 16
    assert _audits() == before


def test_anonymous_visitors_are_sent_to_the_login(app, client, catalog):
    for rule, url in _editor_rules(app):
        if "GET" in rule.methods:
            response = client.get(url)
            assert response.status_code == 302 and "/login" in response.headers["Location"], url


# --- plans: create, publish, hide, edit, archive ---------------------------------------------------------------

def test_a_new_plan_is_hidden_until_published_then_customers_see_it(admin_client, alice_client):
    response = admin_client.post("/staff/plans/new", data=_plan_data(admin_client, "/staff/plans/new", trial_days="14"))
    assert response.status_code == 302
    plan = _plan("team")
    assert response.headers["Location"].endswith(f"/staff/plans/{plan.id}")
    assert (plan.price_amount, plan.currency, plan.is_public, plan.trial_days) == (1900, "USD", False, 14)
    assert _audits() == ["plan.create"]
    assert _card(alice_client.get("/plans").get_data(as_text=True), "team") is None

    assert admin_client.post(f"/staff/plans/{plan.id}/publish",
                             data={"csrf_token": csrf_from(admin_client, "/staff/plans")}).status_code == 302
    card = _card(alice_client.get("/plans").get_data(as_text=True), "team")
    assert card is not None and "$19.00" in _text(card) and "14-day free trial" in _text(card)
    assert _audits() == ["plan.create", "plan.publish"]

    assert admin_client.post(f"/staff/plans/{plan.id}/hide",
                             data={"csrf_token": csrf_from(admin_client, "/staff/plans")}).status_code == 302
    assert _card(alice_client.get("/plans").get_data(as_text=True), "team") is None
    assert _audits() == ["plan.create", "plan.publish", "plan.hide"]


def test_a_plan_created_public_is_listed_at_once_and_in_the_staff_list(admin_client, alice_client):
    data = _plan_data(admin_client, "/staff/plans/new", is_public="y", price="1,200.5", currency="eur",
                      interval_count="3", interval_unit="month")
    assert admin_client.post("/staff/plans/new", data=data).status_code == 302
    plan = _plan("team")
    assert (plan.price_amount, plan.currency, plan.interval_count) == (120050, "EUR", 3)
    assert "€1,200.50" in _text(_card(alice_client.get("/plans").get_data(as_text=True), "team"))
    listing = admin_client.get("/staff/plans").get_data(as_text=True)
    row = re.search(r'<tr id="plan-row-team".*?</tr>', listing, re.S).group(0)
    assert "€1,200.50 / 3 months" in _text(row) and "Public" in row


@pytest.mark.parametrize("overrides, field, message", [
    ({"price": "12.345"}, "price", "too many decimals"),
    ({"price": "-5"}, "price", "cannot be negative"),
    ({"price": "ten"}, "price", "is not an amount"),
    ({"currency": "XYZ"}, "currency", "is not a currency code"),
    ({"code": "Team Plan!"}, "code", "lower-case letters"),
    ({"code": "premium"}, "code", "Another plan already has the code"),
    ({"name": ""}, "name", "Give the plan a name"),
    ({"interval_count": "0"}, "interval_count", "Enter 1 to 365"),
    ({"trial_days": "-1"}, "trial_days", "Enter 0 to 365"),
])
def test_bad_plan_input_answers_422_with_the_field_error_and_writes_nothing(admin_client, overrides, field, message):
    plans_before = db.session.scalar(sa.select(sa.func.count(Plan.id)))
    response = admin_client.post("/staff/plans/new", data=_plan_data(admin_client, "/staff/plans/new", **overrides))
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert message in html
    assert f'id="{field}"' in html and f'id="{field}-error"' in html or 'id="form-errors"' in html
    db.session.expire_all()
    assert db.session.scalar(sa.select(sa.func.count(Plan.id))) == plans_before
    assert _audits() == []


@pytest.fixture
def premium_subscriber(alice):
    """The demo customer on Premium, paid from her wallet; her upgrade invoice."""
    wallet.credit(alice.id, 5000, reason="Test credit", idempotency_key=f"test:{uuid.uuid4()}")
    db.session.commit()
    outcome = plan_changes.upgrade(alice, _plan("premium"), token=uuid.uuid4().hex)
    assert outcome.status == "paid", outcome
    db.session.commit()
    return db.session.scalar(sa.select(Invoice).where(Invoice.user_id == alice.id, Invoice.total > 0)
                             .order_by(Invoice.id.desc()))


def _lines(invoice_id: int) -> list[tuple]:
    db.session.expire_all()
    return [(line.description, line.quantity, line.unit_price, line.amount) for line in db.session.scalars(
        sa.select(InvoiceLine).where(InvoiceLine.invoice_id == invoice_id).order_by(InvoiceLine.position))]


@both_databases
def test_a_price_edit_says_how_many_subscribers_it_reaches_and_past_invoices_keep_their_lines(
        admin_client, alice, premium_subscriber):
    invoice_id, total = premium_subscriber.id, premium_subscriber.total
    lines = _lines(invoice_id)
    assert lines and total > 0
    premium = _plan("premium")
    url = f"/staff/plans/{premium.id}"

    page = admin_client.get(url).get_data(as_text=True)
    assert 'id="price-notice"' in page and "1 live subscriber: a new price" in _text(page)
    assert 'id="code"' in page and "Fixed: the plan has had subscribers." in page

    data = _plan_data(admin_client, url, name="Premium", code="premium", price="12.99", sort_order="10",
                      description=premium.description, is_public="y")
    response = admin_client.post(url, data=data, follow_redirects=True)
    assert response.status_code == 200
    assert ("Saved Premium: $12.99 / month. 1 subscriber is affected: the new price applies from their next "
            "renewal. Past invoices do not change.") in _text(response.get_data(as_text=True))

    assert _plan("premium").price_amount == 1299
    invoice = db.session.get(Invoice, invoice_id)
    assert invoice.total == total and _lines(invoice_id) == lines
    assert next_invoice(live_subscription(alice.id)).plan_amount == 1299  # charged from the next renewal
    assert _audits() == ["plan.update"]
    entry = db.session.scalar(sa.select(AuditLog).where(AuditLog.action == "plan.update"))
    assert entry.data["changes"] == {"price_amount": [999, 1299]} and entry.data["live_subscribers"] == 1
    assert entry.target_type == "plans" and entry.target_id == str(premium.id)


def test_a_subscribed_plan_keeps_its_code_and_currency(admin_client, premium_subscriber):
    premium = _plan("premium")
    url = f"/staff/plans/{premium.id}"
    response = admin_client.post(url, data=_plan_data(admin_client, url, code="premium", currency="EUR",
                                                      price="9.99", is_public="y"))
    assert response.status_code == 422
    assert "The currency cannot change once the plan has had subscribers" in response.get_data(as_text=True)
    assert _plan("premium").currency == "USD" and _audits() == []


def test_an_edit_without_subscribers_says_so_and_the_default_plan_stays_free(admin_client):
    basic = _plan("basic")
    url = f"/staff/plans/{basic.id}"
    data = _plan_data(admin_client, url, name="Basic", code="basic", price="16", interval_unit="day",
                      interval_count="30", is_public="y")
    page = admin_client.post(url, data=data, follow_redirects=True).get_data(as_text=True)
    assert "Saved Basic: $16.00 / 30 days. Nobody is subscribed to it yet." in _text(page)

    free = _plan("free")
    url = f"/staff/plans/{free.id}"
    response = admin_client.post(url, data=_plan_data(admin_client, url, name="Free", code="free", price="1"))
    assert response.status_code == 422 and "it must stay free" in response.get_data(as_text=True)
    assert _plan("free").price_amount == 0
    assert _audits() == ["plan.update"]


def test_archiving_retires_a_plan_but_never_the_default_one(admin_client, alice_client):
    pro = _plan("pro")
    token = csrf_from(admin_client, "/staff/plans")
    response = admin_client.post(f"/staff/plans/{pro.id}/archive", data={"csrf_token": token}, follow_redirects=True)
    assert "Archived Pro: no longer offered; nobody was on it." in _text(response.get_data(as_text=True))
    pro = _plan("pro")
    assert pro.is_archived and not pro.is_public
    assert _card(alice_client.get("/plans").get_data(as_text=True), "pro") is None
    row = re.search(r'<tr id="plan-row-pro".*?</tr>', admin_client.get("/staff/plans").get_data(as_text=True), re.S)
    assert "Archived" in row.group(0)
    # An archived plan is not published again.
    admin_client.post(f"/staff/plans/{pro.id}/publish", data={"csrf_token": token})
    assert not _plan("pro").is_public

    free = _plan("free")
    response = admin_client.post(f"/staff/plans/{free.id}/archive", data={"csrf_token": token}, follow_redirects=True)
    assert "The default plan cannot be archived" in response.get_data(as_text=True)
    assert not _plan("free").is_archived
    assert _audits() == ["plan.archive"]


# --- the feature catalogue -----------------------------------------------------------------------------------

def test_features_are_added_to_the_catalogue_and_renamed_but_keep_code_and_type(admin_client):
    token = csrf_from(admin_client, "/staff/features")
    response = admin_client.post("/staff/features", data={
        "csrf_token": token, "code": "reports", "name": "Reports", "type": "USAGE", "unit_name": "report"})
    assert response.status_code == 302
    feature = _feature("reports")
    assert (feature.name, feature.type, feature.unit_name) == ("Reports", FeatureType.USAGE, "report")

    response = admin_client.post("/staff/features", data={
        "csrf_token": token, "code": "reports", "name": "Again", "type": "QUOTA", "unit_name": "x"})
    assert response.status_code == 422 and "Another feature already has the code" in response.get_data(as_text=True)

    response = admin_client.post(f"/staff/features/{feature.id}", data={
        "csrf_token": token, "name": "PDF reports", "unit_name": "PDF", "code": "hacked", "type": "BOOLEAN"})
    assert response.status_code == 302
    db.session.expire_all()
    feature = _feature("reports")
    assert (feature.name, feature.unit_name, feature.type) == ("PDF reports", "PDF", FeatureType.USAGE)
    assert "PDF reports" in admin_client.get("/staff/features").get_data(as_text=True)
    assert _audits() == ["feature.create", "feature.update"]


# --- a plan's feature settings and tier tables ------------------------------------------------------------------

@both_databases
def test_a_graduated_tier_table_with_an_overlap_names_the_tier_and_writes_nothing_then_saves_once_fixed(
        admin_client, alice_client):
    before = _tiers("business", "api_calls")
    url = _settings_url("business", "api_calls")
    overlapping = [(1, 1000, "0", ""), (900, None, "0.002", "")]
    response = admin_client.post(url, data=_settings(admin_client, url, pricing_model="tiered", tiers=overlapping))
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "Tier 2: overlaps tier 1: it must start at 1001, not 900" in html
    assert 'id="tier-error"' in html and re.search(r'<tr id="tier-2" class="tier-row tier-bad">', html)
    assert _tiers("business", "api_calls") == before
    assert _audits() == []

    response = admin_client.post(url, data=_settings(admin_client, url, pricing_model="tiered", tiers=GRADUATED))
    assert response.status_code == 302
    assert _tiers("business", "api_calls") == [
        (1, 1000, Decimal("0"), Decimal("0")), (1001, 10000, Decimal("0.002"), Decimal("0")),
        (10001, None, Decimal("0.001"), Decimal("5"))]
    assert _audits() == ["plan_feature.update"]
    entry = db.session.scalar(sa.select(AuditLog).where(AuditLog.action == "plan_feature.update"))
    assert entry.target_type == "plan_features" and len(entry.data["tiers"]["from"]) == 3
    assert entry.data["tiers"]["to"][2] == {"first_unit": 10001, "last_unit": None, "unit_price": "0.001",
                                            "flat_fee": "5"}
    card = _text(_card(alice_client.get("/plans").get_data(as_text=True), "business"))
    assert "1,001–10,000 $0.002 each" in card and "10,001 and up $0.001 each $5.00" in card


@pytest.mark.parametrize("tiers, message", [
    ([(1, 100, "0", ""), (102, None, "1", "")], "Tier 2: gap after tier 1: it must start at 101, not 102"),
    ([(1, None, "0", ""), (101, None, "1", "")], "Tier 1: only the last tier may be open-ended"),
    ([(5, None, "0", "")], "Tier 1: the first tier must start at 0 or 1, not 5"),
    ([(1, 100, "0.00000000001", "")], "Tier 1: a price has at most 10 decimals"),
])
def test_every_tier_table_error_names_its_tier(admin_client, tiers, message):
    url = _settings_url("business", "seats")
    response = admin_client.post(url, data=_settings(admin_client, url, pricing_model="volume", tiers=tiers))
    assert response.status_code == 422 and message in response.get_data(as_text=True)
    assert _audits() == []


@pytest.mark.parametrize("feature, fields, message", [
    ("tokens", {"limit": "-1", "pricing_model": ""}, "Enter a whole number from 0"),
    ("tokens", {"limit": "100", "overage_allowed": "y", "pricing_model": ""},
     "Overage needs a QUOTA feature and a pricing model"),
    ("emails", {"pricing_model": "flat", "unit_price": ""}, "Enter the price per unit."),
    ("emails", {"pricing_model": "flat", "unit_price": "$1"}, "Enter a price in digits"),
    ("sms", {"pricing_model": "package", "package_size": "0", "package_price": "20"}, "Enter a whole number from 1"),
    ("sms", {"pricing_model": "package", "package_size": "500", "package_price": ""}, "Enter the price of one package."),
])
def test_bad_feature_settings_answer_422_and_write_nothing(admin_client, feature, fields, message):
    plan = "business"
    url = _settings_url(plan, feature)
    db.session.expire_all()
    pf_before = FeatureSettingsSnapshot.of(plan, feature)
    response = admin_client.post(url, data=_settings(admin_client, url, **fields))
    assert response.status_code == 422 and message in response.get_data(as_text=True)
    assert FeatureSettingsSnapshot.of(plan, feature) == pf_before
    assert _audits() == []


class FeatureSettingsSnapshot:
    @staticmethod
    def of(plan_code: str, feature_code: str) -> tuple:
        db.session.expire_all()
        pf = db.session.scalar(sa.select(PlanFeature).join(Plan).join(Feature)
                               .where(Plan.code == plan_code, Feature.code == feature_code))
        return (pf.enabled, pf.limit, pf.window, pf.overage_allowed, pf.pricing_model, pf.unit_price, pf.free_units,
                pf.package_size, pf.package_price, tuple((t.first_unit, t.last_unit, t.unit_price) for t in pf.tiers))


def test_a_feature_is_granted_on_a_plan_and_switching_models_clears_what_the_old_one_used(admin_client):
    url = _settings_url("premium", "api_calls")  # not on Premium yet
    page = admin_client.get(url).get_data(as_text=True)
    assert "not on this plan yet" in page
    response = admin_client.post(url, data=_settings(admin_client, url, pricing_model="tiered", tiers=GRADUATED))
    assert response.status_code == 302
    response = admin_client.post(url, data=_settings(admin_client, url, pricing_model="flat", unit_price="0.0005",
                                                     free_units="1000", tiers=GRADUATED))
    assert response.status_code == 302
    pf = db.session.scalar(sa.select(PlanFeature).join(Plan).join(Feature)
                           .where(Plan.code == "premium", Feature.code == "api_calls"))
    assert (pf.pricing_model, pf.unit_price, pf.free_units, pf.tiers) == (PricingModel.FLAT, Decimal("0.0005"), 1000, [])
    assert _audits() == ["plan_feature.create", "plan_feature.update"]


def test_rate_and_boolean_settings(admin_client):
    url = _settings_url("business", "exports")
    response = admin_client.post(url, data=_settings(admin_client, url, limit="25", window="hour"))
    assert response.status_code == 302
    url = _settings_url("business", "dark_mode")
    data = _settings(admin_client, url)
    del data["enabled"]  # the box unticked
    assert admin_client.post(url, data=data).status_code == 302
    db.session.expire_all()
    exports = FeatureSettingsSnapshot.of("business", "exports")
    assert exports[1] == 25 and exports[2].value == "hour"
    assert FeatureSettingsSnapshot.of("business", "dark_mode")[0] is False
    assert _audits() == ["plan_feature.update", "plan_feature.update"]


def test_tier_rows_are_added_and_removed_with_htmx_and_nothing_is_saved(admin_client):
    before = _tiers("business", "api_calls")
    base = _settings_url("business", "api_calls")
    rows = [(1, 1000, "0", ""), (1001, 5000, "0.002", "")]
    data = _settings(admin_client, base, pricing_model="tiered", tiers=rows)

    response = admin_client.post(f"{base}/tiers/add", data=data, headers=HX)
    assert response.status_code == 200 and response.headers["HX-Trigger"] == "tiers-changed"
    html = response.get_data(as_text=True)
    assert html.lstrip().startswith('<div id="tier-table"') and "<html" not in html
    assert len(re.findall(r'<tr id="tier-\d+"', html)) == 3
    assert re.search(r'name="tiers-2-first_unit"[^>]*value="5001"', html)  # starts where tier 2 ends

    response = admin_client.post(f"{base}/tiers/remove", data={**data, "index": "0"}, headers=HX)
    html = response.get_data(as_text=True)
    assert len(re.findall(r'<tr id="tier-\d+"', html)) == 1
    assert re.search(r'name="tiers-0-first_unit"[^>]*value="1001"', html)  # renumbered, as typed
    assert "Remove tier" not in html  # the last row stays

    # Without JavaScript the same buttons submit the whole form, which comes back with the row added.
    response = admin_client.post(base, data={**data, "action": "add-tier"})
    assert response.status_code == 200 and len(re.findall(r'<tr id="tier-\d+"', response.get_data(as_text=True))) == 3

    assert _tiers("business", "api_calls") == before
    assert _audits() == []


def test_the_preview_shows_the_card_and_the_sample_price_as_typed(admin_client):
    url = _settings_url("business", "api_calls") + "/preview"
    args = {"enabled": "y", "pricing_model": "tiered", "sample": "150000", **_tier_fields(GRADUATED)}
    response = admin_client.get(url, query_string=args, headers=HX)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<html" not in html and _card(html, "business") is not None
    estimate = _text(re.search(r'<article class="estimate plan-sample".*?</article>', html, re.S).group(0))
    # $49 plan fee + 9,000 × $0.002 + 140,000 × $0.001 + $5 flat fee
    assert "$49.00" in estimate and "$212.00" in estimate

    args.update(_tier_fields([(1, 1000, "0", ""), (1000, None, "0.002", "")]))
    html = admin_client.get(url, query_string=args, headers=HX).get_data(as_text=True)
    assert 'id="preview-errors"' in html and "Tier 2: overlaps tier 1" in html

    plan = _plan("premium")
    html = admin_client.get(f"/staff/plans/{plan.id}/preview", headers=HX, query_string={
        "name": "Premium Plus", "code": "premium", "price": "14.5", "currency": "USD", "interval_count": "1",
        "interval_unit": "year", "trial_days": "7", "sort_order": "10"}).get_data(as_text=True)
    card = _text(_card(html, "premium"))
    assert "Premium Plus" in card and "$14.50 / year" in card and "7-day free trial" in card
    html = admin_client.get("/staff/plans/new/preview", headers=HX, query_string={"price": "abc"}).get_data(as_text=True)
    assert 'id="preview-errors"' in html
    assert _plan("premium").name == "Premium" and _audits() == []


@both_databases
def test_the_whole_walk_writes_one_audit_row_per_action(admin_client, alice_client):
    token = lambda: csrf_from(admin_client, "/staff/plans")  # noqa: E731
    admin_client.post("/staff/features", data={"csrf_token": token(), "code": "minutes", "name": "Minutes",
                                               "type": "USAGE", "unit_name": "minute"})
    admin_client.post("/staff/plans/new", data=_plan_data(admin_client, "/staff/plans/new"))
    url = _settings_url("team", "minutes")
    admin_client.post(url, data=_settings(admin_client, url, pricing_model="tiered", tiers=GRADUATED))
    team = _plan("team")
    admin_client.post(f"/staff/plans/{team.id}/publish", data={"csrf_token": token()})
    edit = f"/staff/plans/{team.id}"
    admin_client.post(edit, data=_plan_data(admin_client, edit, price="21", is_public="y"))
    admin_client.post(f"/staff/plans/{team.id}/archive", data={"csrf_token": token()})
    assert _audits() == ["feature.create", "plan.create", "plan_feature.create", "plan.publish", "plan.update",
                         "plan.archive"]
    admin = db.session.scalar(sa.select(User).where(User.email == "admin@portal.test"))
    assert set(db.session.scalars(sa.select(AuditLog.actor_id).where(~AuditLog.action.startswith("auth.")))) == {
        admin.id}
