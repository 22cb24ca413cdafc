"""Invoices: the list (newest first, keyset pages), the detail with payments, the printable copy, and privacy."""
from __future__ import annotations

import re
from decimal import Decimal

import pytest

from portal.billing.pricing import Tier, TieredPricing
from portal.extensions import db
from portal.models import EntryKind, Invoice, LineKind
from portal.services import invoices, purchases, wallet
from portal.services.invoices import LineDraft
from tests.conftest import AuthActions, both_databases


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def _renewal_invoice(user, clock) -> Invoice:
    """A renewal with a plan fee, a tiered usage line (with its breakdown) and a credit."""
    priced = TieredPricing([Tier(1, 10_000, Decimal("0")), Tier(10_001, None, Decimal("0.001"))]).price(12_000)
    breakdown = [{"description": b.description, "units": b.units, "unit_price": str(b.unit_price),
                  "amount": str(b.amount)} for b in priced.lines]
    lines = [
        LineDraft(LineKind.PLAN, "Business plan, 28 Feb – 31 Mar", 4900),
        LineDraft(LineKind.USAGE, "API calls: 12,000 calls", priced.amount_minor("USD"), quantity=12_000,
                  breakdown=breakdown),
        LineDraft(LineKind.CREDIT, "Goodwill credit", -200),
    ]
    return invoices.create_invoice(user.id, "USD", lines, reason="renewal",
                                   period_start=clock.now(), period_end=clock.now())


@pytest.fixture
def paid_invoice(alice, clock) -> Invoice:
    """Alice's renewal, paid from her wallet through the real payment service."""
    invoice = _renewal_invoice(alice, clock)
    wallet.credit(alice.id, 10_000, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw")
    assert purchases.resume(invoice).status == "paid"
    db.session.commit()
    return invoice


@pytest.fixture
def bob_invoice(bob, clock) -> Invoice:
    invoice = invoices.create_invoice(bob.id, "USD", [LineDraft(LineKind.PLAN, "Premium", 999)], reason="upgrade")
    db.session.commit()
    return invoice


def test_empty_state_when_there_are_no_invoices(alice_client):
    response = alice_client.get("/invoices")
    assert response.status_code == 200
    text = _text(response.get_data(as_text=True))
    assert "No invoices yet" in text and "When you upgrade" in text


def test_list_shows_number_date_reason_status_and_total_newest_first(alice_client, alice, paid_invoice, clock):
    clock.advance(days=2)
    newer = invoices.create_invoice(alice.id, "USD", [LineDraft(LineKind.PLAN, "Premium", 999)], reason="upgrade")
    db.session.commit()
    html = alice_client.get("/invoices").get_data(as_text=True)
    rows = [_text(r) for r in re.findall(r"<tr>(.*?)</tr>", html.split("<tbody>")[1], re.S)]
    assert rows == [
        f"{newer.number} 02 Feb 2026 Plan upgrade Open $9.99",
        f"{paid_invoice.number} 31 Jan 2026 Renewal Paid $49.00",
    ]
    assert f'href="/invoices/{newer.number}"' in html
    assert "Older invoices" not in html  # one page only


@both_databases
def test_list_pages_by_keyset_on_id(alice_client, alice):
    made = [invoices.create_invoice(alice.id, "USD", [LineDraft(LineKind.PLAN, "Premium", 999)], reason="upgrade")
            for _ in range(25)]
    db.session.commit()
    first = alice_client.get("/invoices").get_data(as_text=True)
    numbers = re.findall(r'href="/invoices/(INV-\d+)"', first)
    assert numbers == [i.number for i in reversed(made)][:20]
    older = re.search(r'href="/invoices\?before=(\d+)"', first)
    assert older and int(older.group(1)) == made[5].id
    second = alice_client.get(f"/invoices?before={older.group(1)}").get_data(as_text=True)
    assert re.findall(r'href="/invoices/(INV-\d+)"', second) == [i.number for i in reversed(made[:5])]
    assert "Older invoices" not in second and "Newest" in second
    assert "There are no older invoices" in alice_client.get(f"/invoices?before={made[0].id}").get_data(as_text=True)
    assert alice_client.get("/invoices?before=abc").status_code == 200  # ignored, not a 500


def test_detail_shows_lines_breakdown_credits_and_payments(alice_client, paid_invoice):
    html = alice_client.get(f"/invoices/{paid_invoice.number}").get_data(as_text=True)
    text = _text(html)
    assert f"Invoice {paid_invoice.number} Paid" in text
    assert "Business plan, 28 Feb – 31 Mar 1 $49.00" in text
    assert "API calls: 12,000 calls" in text and "12,000 $2.00" in text
    assert "Units 10,001–12,000 × 0.001 = $2.00" in text  # the pricing breakdown of the usage line
    assert "Goodwill credit 1 −$2.00 credit" in text
    assert "Total $49.00" in text and "Paid $49.00" in text
    payments_section = _text(html.split('id="payments"')[1])
    assert "Wallet Succeeded $49.00" in payments_section
    assert f'href="/invoices/{paid_invoice.number}/print"' in html


def test_printable_copy_is_a_clean_page_with_the_essentials(alice_client, alice, paid_invoice):
    html = alice_client.get(f"/invoices/{paid_invoice.number}/print").get_data(as_text=True)
    text = _text(html)
    assert "<nav" not in html and "Payment methods" not in html  # no site navigation
    assert alice.email in text and paid_invoice.number in text
    assert "Issued 31 Jan 2026" in text and "Paid on 31 Jan 2026" in text
    assert "Goodwill credit" in text and "Total $49.00" in text
    assert 'onclick="window.print()"' in html


def test_another_customers_invoice_is_404_on_every_route(alice_client, bob_invoice):
    for url in (f"/invoices/{bob_invoice.number}", f"/invoices/{bob_invoice.number}/print"):
        assert alice_client.get(url).status_code == 404, url
    assert bob_invoice.number not in alice_client.get("/invoices").get_data(as_text=True)
    assert alice_client.get("/invoices/INV-999999").status_code == 404


def test_the_owner_sees_their_own_invoice(app, bob_invoice):
    client = app.test_client()
    assert AuthActions(client).login("bob@example.com", "bob's long password").status_code == 302
    for url in ("/invoices", f"/invoices/{bob_invoice.number}", f"/invoices/{bob_invoice.number}/print"):
        response = client.get(url)
        assert response.status_code == 200 and bob_invoice.number in response.get_data(as_text=True), url


@pytest.mark.parametrize("url", ["/invoices", "/invoices/INV-000001", "/invoices/INV-000001/print"])
def test_invoice_pages_need_a_login(client, catalog, url):
    response = client.get(url)
    assert response.status_code == 302 and "/login" in response.headers["Location"]
