"""Staff revenue page: every figure against a hand-counted fixture, on SQLite and PostgreSQL, and the CSV.

The billing time zone is New York, so an invoice paid at 03:00 UTC on 1 December counts in November.
The fixture (three months, Nov 2025 – Jan 2026, written directly with the models):

  Nov  new: u1 upgrades Free → Premium, u3 is created on Annual, u5 upgrades from a trial (EUR)
       paid: u1 $9.99, u3 $96.00, u4 package $8.00 (paid 03:00 UTC on 1 Dec), u5 €12.00; u1's $25 top-up
       is not revenue; $7.77 paid 03:00 UTC on 1 Nov belongs to October (outside the range)
       card: u1, u3, u5 succeeded, u7 failed, u7 pending (no answer: left out) → 1 / 4
  Dec  new: u7 upgrades Free → Weekly, u9's trial converts (paid), u11's trial conversion fails then is paid
       not counted: u6 starts a trial; u10's trial conversion fails and expires unpaid
       paid: u2's renewal $9.99 paid after its payment failed (recovered), u7 $3.00, u9 $9.99,
       u11 $9.99 (recovered), u3 package $2.00 (paid 04:30 UTC on 1 Jan)
       card: u2 failed + succeeded, u7, u9 succeeded, u10 failed, u11 failed + succeeded → 3 / 7
  Jan  churned: u9 and u11 cancel, u12 renews onto Free (a scheduled downgrade), u13 expires past due
       not counted: u14 cancels during its trial, u4 upgrades Premium → Basic (paid to paid), u1 renews
       paid: u1 $9.99, u4 $5.01, u5 €12.00
       card: u1, u4, u5 succeeded, u2, u8, u13 failed → 3 / 6

MRR now: Premium u1 active + u2 past due ($9.99 each; u6 trialing excluded), Annual $96/yr = $8.00,
Basic $15 / 30 days = $15.2083…, Weekly $3 / 2 weeks = $6.50 → USD $49.688333… = $49.69;
EUR plan €12 × (u5 active + u8 past due) = €24.00.
"""
from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from itertools import count

import pytest
import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionStatus as S
from portal.billing.periods import IntervalUnit
from portal.extensions import db
from portal.models import (
    Invoice,
    InvoiceStatus,
    Payment,
    PaymentPurpose,
    PaymentStatus,
    Plan,
    Subscription,
    SubscriptionEvent,
    User,
)
from portal.services import catalog as catalog_service
from portal.services import revenue
from tests.conftest import both_databases, csrf_from

RANGE = "?from=2025-11&to=2026-01"
_seq = count(1)


@pytest.fixture
def app_config():
    return {"BILLING_TZ": "America/New_York"}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def plan(code: str) -> Plan:
    return db.session.scalar(sa.select(Plan).where(Plan.code == code))


def customer(name: str) -> User:
    user = User(email=f"{name}@example.com", name=name, password_hash="x")
    db.session.add(user)
    db.session.flush()
    return user


def subscription(user: User, plan_code: str, status: S, at: str = "2025-10-01T12:00") -> Subscription:
    start = utc(at)
    sub = Subscription(user_id=user.id, plan_id=plan(plan_code).id, status=status, billing_anchor=start,
                       current_period_start=start, current_period_end=start + timedelta(days=30),
                       ended_at=start if status in (S.CANCELED, S.EXPIRED) else None)
    db.session.add(sub)
    db.session.flush()
    return sub


def event(sub: Subscription, transition: str, from_status: S | None, to_status: S, at: str, **data) -> None:
    db.session.add(SubscriptionEvent(subscription_id=sub.id, transition=transition, from_status=from_status,
                                     to_status=to_status, reason="test", data=data, at=utc(at)))
    db.session.flush()


def invoice(sub: Subscription, reason: str, total: int, paid_at: str | None, *, status=InvoiceStatus.PAID,
            currency: str = "USD", number: str | None = None, paid: int | None = None) -> Invoice:
    inv = Invoice(number=number or f"INV-T{next(_seq):05d}", user_id=sub.user_id, subscription_id=sub.id,
                  status=status, reason=reason, currency=currency, total=total,
                  amount_paid=total if paid is None else paid, paid_at=utc(paid_at) if paid_at else None,
                  created_at=utc(paid_at) if paid_at else utc("2025-11-01T12:00"))
    db.session.add(inv)
    db.session.flush()
    return inv


def card(inv: Invoice, status: PaymentStatus, at: str, *, provider: str = "stripe") -> None:
    db.session.add(Payment(user_id=inv.user_id, invoice_id=inv.id, purpose=PaymentPurpose.INVOICE,
                           amount=inv.total or 1,
                           currency=inv.currency, status=status, provider=provider,
                           idempotency_key=f"test:{next(_seq)}", created_at=utc(at)))
    db.session.flush()


@pytest.fixture
def book(catalog):
    """The hand-counted fixture of the module docstring, committed."""
    catalog_plans = [
        ("annual", "Annual", 9600, "USD", IntervalUnit.YEAR, 1),
        ("weekly", "Weekly", 300, "USD", IntervalUnit.WEEK, 2),
        ("euro", "Euro", 1200, "EUR", IntervalUnit.MONTH, 1),
    ]
    for code, name, price, currency, unit, n in catalog_plans:
        catalog_service.create_plan(code, name, price_amount=price, currency=currency, interval_unit=unit,
                                    interval_count=n)
    db.session.flush()
    free, premium = plan("free"), plan("premium")
    u = {i: customer(f"u{i}") for i in range(1, 15)}

    # November
    s1 = subscription(u[1], "premium", S.ACTIVE)
    event(s1, "change_plan", S.ACTIVE, S.ACTIVE, "2025-11-05T12:00", from_plan_id=free.id, plan_id=premium.id)
    card(invoice(s1, "upgrade", 999, "2025-11-05T12:00"), PaymentStatus.SUCCEEDED, "2025-11-05T12:00")
    invoice(s1, "topup", 2500, "2025-11-12T12:00")
    invoice(s1, "upgrade", 777, "2025-11-01T03:00")  # 31 Oct, 23:00 in New York: October
    s3 = subscription(u[3], "annual", S.ACTIVE)
    event(s3, "activate", None, S.ACTIVE, "2025-11-10T12:00", plan="annual")
    card(invoice(s3, "upgrade", 9600, "2025-11-10T12:00"), PaymentStatus.SUCCEEDED, "2025-11-10T12:00")
    s4 = subscription(u[4], "basic", S.ACTIVE)
    invoice(s4, "package", 800, "2025-12-01T03:00")  # 30 Nov, 22:00 in New York
    s5 = subscription(u[5], "euro", S.ACTIVE)
    euro = plan("euro")
    event(s5, "change_plan", S.TRIALING, S.ACTIVE, "2025-11-15T12:00", from_plan_id=euro.id, plan_id=euro.id)
    card(invoice(s5, "upgrade", 1200, "2025-11-15T12:00", currency="EUR"), PaymentStatus.SUCCEEDED, "2025-11-15T12:00")
    s7 = subscription(u[7], "weekly", S.ACTIVE)
    refused = invoice(s7, "upgrade", 300, None, status=InvoiceStatus.VOID, paid=0)
    card(refused, PaymentStatus.FAILED, "2025-11-20T12:00")
    card(refused, PaymentStatus.PENDING, "2025-11-21T12:00")
    invoice(s7, "renewal", 999, None, status=InvoiceStatus.OPEN, paid=500)  # part-paid: not revenue

    # December
    s2 = subscription(u[2], "premium", S.PAST_DUE)
    event(s2, "payment_failed", S.ACTIVE, S.PAST_DUE, "2025-12-03T12:00", invoice="INV-R2")
    event(s2, "recover", S.PAST_DUE, S.ACTIVE, "2025-12-05T12:00", invoice="INV-R2")
    r2 = invoice(s2, "renewal", 999, "2025-12-05T12:00", number="INV-R2")
    card(r2, PaymentStatus.FAILED, "2025-12-03T12:00")
    card(r2, PaymentStatus.SUCCEEDED, "2025-12-05T12:00")
    event(s7, "change_plan", S.ACTIVE, S.ACTIVE, "2025-12-10T12:00", from_plan_id=free.id, plan_id=plan("weekly").id)
    card(invoice(s7, "upgrade", 300, "2025-12-10T12:00"), PaymentStatus.SUCCEEDED, "2025-12-10T12:00")
    s6 = subscription(u[6], "premium", S.TRIALING)
    event(s6, "try_plan", S.ACTIVE, S.TRIALING, "2025-12-20T12:00", from_plan_id=free.id, plan_id=premium.id)
    s9 = subscription(u[9], "premium", S.CANCELED)
    event(s9, "activate", S.TRIALING, S.ACTIVE, "2025-12-02T12:00", invoice="INV-R9")
    card(invoice(s9, "renewal", 999, "2025-12-02T12:00", number="INV-R9"), PaymentStatus.SUCCEEDED, "2025-12-02T12:00")
    s10 = subscription(u[10], "premium", S.EXPIRED)
    event(s10, "payment_failed", S.TRIALING, S.PAST_DUE, "2025-12-12T12:00", invoice="INV-R10")
    event(s10, "expire", S.PAST_DUE, S.EXPIRED, "2025-12-15T12:00")
    card(invoice(s10, "renewal", 999, None, status=InvoiceStatus.VOID, paid=0, number="INV-R10"),
         PaymentStatus.FAILED, "2025-12-12T12:00")
    s11 = subscription(u[11], "premium", S.CANCELED)
    event(s11, "payment_failed", S.TRIALING, S.PAST_DUE, "2025-12-14T12:00", invoice="INV-R11")
    event(s11, "recover", S.PAST_DUE, S.ACTIVE, "2025-12-16T12:00", invoice="INV-R11")
    r11 = invoice(s11, "renewal", 999, "2025-12-16T12:00", number="INV-R11")
    card(r11, PaymentStatus.FAILED, "2025-12-14T12:00")
    card(r11, PaymentStatus.SUCCEEDED, "2025-12-16T12:00")
    invoice(s3, "package", 200, "2026-01-01T04:30")  # 31 Dec, 23:30 in New York

    # January
    event(s9, "cancel", S.ACTIVE, S.CANCELED, "2026-01-15T12:00")
    s9_free = subscription(u[9], "free", S.ACTIVE, "2026-01-15T12:00")
    event(s9_free, "activate", None, S.ACTIVE, "2026-01-15T12:00", plan="free")
    event(s11, "cancel", S.ACTIVE, S.CANCELED, "2026-01-25T12:00")
    s12 = subscription(u[12], "free", S.ACTIVE)
    event(s12, "renew", S.ACTIVE, S.ACTIVE, "2026-01-08T12:00", from_plan_id=premium.id, plan_id=free.id)
    s13 = subscription(u[13], "basic", S.EXPIRED)
    event(s13, "payment_failed", S.ACTIVE, S.PAST_DUE, "2026-01-02T12:00", invoice="INV-R13")
    event(s13, "expire", S.PAST_DUE, S.EXPIRED, "2026-01-06T12:00")
    card(invoice(s13, "renewal", 1500, None, status=InvoiceStatus.UNCOLLECTIBLE, paid=0, number="INV-R13"),
         PaymentStatus.FAILED, "2026-01-02T12:00")
    s14 = subscription(u[14], "premium", S.CANCELED)
    event(s14, "cancel", S.TRIALING, S.CANCELED, "2026-01-10T12:00")
    event(s4, "change_plan", S.ACTIVE, S.ACTIVE, "2026-01-12T12:00", from_plan_id=premium.id, plan_id=plan("basic").id)
    card(invoice(s4, "upgrade", 501, "2026-01-12T12:00"), PaymentStatus.SUCCEEDED, "2026-01-12T12:00")
    event(s1, "renew", S.ACTIVE, S.ACTIVE, "2026-01-05T12:00", invoice="INV-R1")
    card(invoice(s1, "renewal", 999, "2026-01-05T12:00"), PaymentStatus.SUCCEEDED, "2026-01-05T12:00")
    card(invoice(s5, "renewal", 1200, "2026-01-15T12:00", currency="EUR"), PaymentStatus.SUCCEEDED,
         "2026-01-15T12:00")
    s8 = subscription(u[8], "euro", S.PAST_DUE)
    card(invoice(s8, "renewal", 1200, None, status=InvoiceStatus.OPEN, paid=0, currency="EUR"),
         PaymentStatus.FAILED, "2026-01-18T12:00")
    event(s2, "payment_failed", S.ACTIVE, S.PAST_DUE, "2026-01-20T12:00", invoice="INV-R2b")
    card(invoice(s2, "renewal", 999, None, status=InvoiceStatus.OPEN, paid=0), PaymentStatus.FAILED,
         "2026-01-20T12:00")
    # A wallet payment never fails and is not a card payment.
    card(invoice(s1, "package", 100, "2026-01-20T12:00"), PaymentStatus.SUCCEEDED, "2026-01-20T12:00",
         provider="wallet")
    db.session.commit()


EXPECTED = {
    # month: (USD revenue, USD recovered, EUR revenue, paid invoices, new, churned, card payments, failed)
    "2025-11": (11399, 0, 1200, 4, 3, 0, 4, 1),
    "2025-12": (3497, 1998, 0, 5, 3, 0, 7, 3),
    "2026-01": (1600, 0, 1200, 4, 0, 4, 6, 3),
}


@both_databases
def test_every_figure_matches_the_hand_count(app, book):
    months = revenue.month_range("2025-11", "2026-01")
    result = revenue.report(months)
    assert result.currencies == ["EUR", "USD"]
    got = {row.month.key: (row.revenue["USD"], row.recovered["USD"], row.revenue["EUR"], row.invoices, row.new,
                           row.churned, row.card_payments, row.failed_payments) for row in result.rows}
    assert got == EXPECTED
    assert [revenue.percent(row.failure_rate) for row in result.rows] == ["25.0", "42.9", "50.0"]
    t = result.total
    assert (t.revenue, t.recovered, t.new, t.churned, t.card_payments, t.failed_payments) == (
        {"USD": 16496, "EUR": 2400}, {"USD": 1998, "EUR": 0}, 6, 4, 17, 7)

    mrr = result.mrr
    assert mrr.by_currency == {"EUR": 2400, "USD": 4969}
    assert mrr.paying == {"EUR": 2, "USD": 5}
    lines = {line.plan.code: (line.active, line.past_due, line.trialing, line.mrr) for line in mrr.plans}
    assert lines["premium"] == (1, 1, 1, 1998)
    assert lines["annual"] == (1, 0, 0, 800)
    assert lines["basic"] == (1, 0, 0, 1521)
    assert lines["weekly"] == (1, 0, 0, 650)
    assert lines["euro"] == (1, 1, 0, 2400)
    assert lines["free"][3] == 0 and "pro" not in lines


def test_the_page_shows_mrr_plans_months_and_definitions(staff_client, book):
    response = staff_client.get(f"/staff/revenue{RANGE}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    # MRR per currency, never added together
    assert "$49.69" in page and "€24.00" in page and "MRR · USD" in page and "MRR · EUR" in page
    plans = page.split('id="plans-table"')[1].split("</table>")[0]
    premium = plans.split('id="plan-premium"')[1].split("</tr>")[0]
    assert "$9.99 / month" in premium and "$19.98" in premium
    basic = plans.split('id="plan-basic"')[1].split("</tr>")[0]
    assert "$15.00 / 30 days" in basic and "$15.21" in basic
    # The months, newest first, with the totals
    table = page.split('id="months-table"')[1].split("</table>")[0]
    december = table.split('id="month-2025-12"')[1].split("</tr>")[0]
    for cell in ("$34.97", "$19.98", '<td class="amount new">3</td>', '<td class="amount churned">0</td>',
                 '<td class="amount attempts">7</td>', '<td class="amount failed">3</td>', "42.9 %"):
        assert cell in december, cell
    january = table.split('id="month-2026-01"')[1].split("</tr>")[0]
    assert "€12.00" in january and "$16.00" in january and '<td class="amount net">-4</td>' in january
    total = table.split('id="month-total"')[1].split("</tr>")[0]
    assert "$164.96" in total and "€24.00" in total and "41.2 %" in total
    assert table.index('id="month-2026-01"') < table.index('id="month-2025-11"')
    # Charts draw from JSON in the page; the definitions are stated
    assert 'id="chart-revenue-USD"' in page and 'id="chart-revenue-EUR"' in page and 'id="chart-movement"' in page
    assert 'id="chart-failures"' in page and "js/staff-charts.js" in page and "<script>" not in page
    assert "Wallet top-ups are not revenue" in page and "America/New_York" in page
    assert 'href="/staff/revenue.csv?from=2025-11&amp;to=2026-01"' in page


def test_the_csv_has_a_header_and_one_row_per_month(staff_client, book):
    response = staff_client.get(f"/staff/revenue.csv{RANGE}")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == 'attachment; filename="revenue-2025-11-to-2026-01.csv"'
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows == [
        ["month", "revenue_EUR", "recovered_EUR", "revenue_USD", "recovered_USD", "paid_invoices", "new", "churned",
         "net", "card_payments", "failed_payments", "failed_rate_percent"],
        ["2025-11", "12.00", "0.00", "113.99", "0.00", "4", "3", "0", "3", "4", "1", "25.0"],
        ["2025-12", "0.00", "0.00", "34.97", "19.98", "5", "3", "0", "3", "7", "3", "42.9"],
        ["2026-01", "12.00", "0.00", "16.00", "0.00", "4", "0", "4", "-4", "6", "3", "50.0"],
    ]


def test_by_default_the_last_12_months_by_the_billing_clock(staff_client, book):
    # The clock says 31 Jan 2026, 09:00 UTC (04:00 in New York): February 2025 to January 2026.
    page = staff_client.get("/staff/revenue").get_data(as_text=True)
    assert 'id="month-2026-01"' in page and 'id="month-2025-02"' in page
    assert 'id="month-2025-01"' not in page and 'id="month-2026-02"' not in page
    assert 'value="2025-02"' in page and 'value="2026-01"' in page
    rows = list(csv.reader(io.StringIO(staff_client.get("/staff/revenue.csv").get_data(as_text=True))))
    assert len(rows) == 13 and rows[1][0] == "2025-02" and rows[-1][0] == "2026-01"


def test_a_month_with_nothing_shows_zeros(staff_client, catalog):
    page = staff_client.get("/staff/revenue?from=2024-01&to=2024-02").get_data(as_text=True)
    row = page.split('id="month-2024-01"')[1].split("</tr>")[0]
    assert "$0.00" in row and '<td class="amount new">0</td>' in row and "—" in row


@pytest.mark.parametrize("query, message", [
    ("?from=2026-01&to=2025-11", "starts (Jan 2026) after it ends (Nov 2025)"),
    ("?from=2025-13&to=2026-01", "is not a month"),
    ("?from=last+year", "is not a month"),
    ("?to=2026-1", "is not a month"),
    ("?from=2021-01&to=2026-01", "is 61 months; choose at most 60"),
])
def test_a_bad_range_is_a_clear_400(staff_client, query, message):
    response = staff_client.get(f"/staff/revenue{query}")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert message in page and 'id="range-error"' in page and 'id="revenue-range"' in page
    csv_response = staff_client.get(f"/staff/revenue.csv{query}")
    assert csv_response.status_code == 400 and message in csv_response.get_data(as_text=True)


def test_sixty_months_is_fine(staff_client):
    assert staff_client.get("/staff/revenue?from=2021-02&to=2026-01").status_code == 200


def test_customers_get_403_and_visitors_the_login(app, alice_client):
    for url in ("/staff/revenue", f"/staff/revenue{RANGE}", "/staff/revenue.csv", f"/staff/revenue.csv{RANGE}"):
        assert alice_client.get(url).status_code == 403, url
        anonymous = app.test_client().get(url)
        assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"], url
    assert csrf_from(alice_client, "/plans")  # a logged-in customer: the 403 above is the guard, not the login


def test_month_of_is_exact_across_daylight_saving(app):
    months = revenue.month_range("2025-10", "2025-11")
    # New York leaves daylight time on 2 Nov 2025: November starts at 04:00 UTC, December at 05:00 UTC.
    assert [(key, start.isoformat(), end.isoformat()) for key, start, end in months.bounds()] == [
        ("2025-10", "2025-10-01T04:00:00+00:00", "2025-11-01T04:00:00+00:00"),
        ("2025-11", "2025-11-01T04:00:00+00:00", "2025-12-01T05:00:00+00:00"),
    ]
