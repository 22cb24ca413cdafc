"""Staff: the audit log (issue #13, page 5): who did what to which object, when, from where; filtered by
who, action, target and days, keyset-paged newest first. That each staff action writes exactly one row is
checked with the actions (test_customers.py)."""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import AuditLog, Plan, User
from portal.services.audit import audit
from tests.conftest import csrf_from


def _user(email: str) -> User:
    return db.session.scalar(sa.select(User).where(User.email == email))


def _rows(html: str) -> list[str]:
    """The actions listed, top to bottom."""
    return re.findall(r"<code>([a-z_.]+)</code></a></td>", html)


@pytest.fixture
def trail(catalog, clock):
    """A small trail: a customer's logins, two support actions, a plan edit, a job's row, on three days."""
    alice, staff, admin = _user("demo@portal.test"), _user("staff@portal.test"), _user("admin@portal.test")
    clock.set(datetime(2026, 3, 1, 10, tzinfo=timezone.utc))
    audit("auth.login", alice, actor_id=alice.id)
    audit("support.credit", alice, actor_id=staff.id, data={"amount": 500, "currency": "USD", "reason": "Outage"})
    clock.set(datetime(2026, 3, 2, 10, tzinfo=timezone.utc))
    audit("support.refund", alice, actor_id=staff.id, data={"amount": 999, "currency": "USD", "to": "card",
                                                            "reason": "Mistake", "payment_id": 7})
    audit("plan.update", db.session.scalar(sa.select(Plan).where(Plan.code == "premium")), actor_id=admin.id,
          data={"code": "premium"})
    clock.set(datetime(2026, 3, 3, 10, tzinfo=timezone.utc))
    audit("renewal.swept", None, data={"due": 3})
    db.session.commit()
    return alice, staff, admin


def test_the_log_shows_who_did_what_to_which_object_when_and_from_where(staff_client, trail):
    alice, staff, _ = trail
    html = staff_client.get("/staff/audit").get_data(as_text=True)
    # newest first; the oldest is the staff member's own login (the fixture's client, on 31 January)
    assert _rows(html) == ["renewal.swept", "plan.update", "support.refund", "support.credit", "auth.login",
                           "auth.login"]
    assert "staff@portal.test" in html and "system" in html
    assert f"users #{alice.id}" in html and f'href="/staff/customers/{alice.id}"' in html  # the customer's page
    assert "$9.99</strong> to the card" in html and "“Mistake”" in html and "payment_id: 7" in html
    assert "02 Mar 2026<br>10:00 UTC" in html
    assert "127.0.0.1" in html  # the login came through a request; the fixture's rows did not


@pytest.mark.parametrize("query, expected", [
    ({"actor": "staff@portal.test"}, ["support.refund", "support.credit", "auth.login"]),
    ({"actor": "STAFF@portal.test "}, ["support.refund", "support.credit", "auth.login"]),
    ({"actor": "system"}, ["renewal.swept"]),
    ({"action": "support."}, ["support.refund", "support.credit"]),
    ({"action": "support.refund"}, ["support.refund"]),
    ({"action": "plan"}, ["plan.update"]),
    ({"action": "%"}, []),  # a wildcard is a plain character
    ({"target_type": "users", "action": "support"}, ["support.refund", "support.credit"]),
    ({"target_type": "plans"}, ["plan.update"]),
    ({"from": "2026-03-02", "to": "2026-03-02"}, ["plan.update", "support.refund"]),
    ({"from": "2026-03-03"}, ["renewal.swept"]),
    ({"to": "2026-03-01"}, ["support.credit", "auth.login", "auth.login"]),
    ({"from": "2026-03-02", "actor": "staff@portal.test"}, ["support.refund"]),
    ({"from": "2027-01-01"}, []),
])
def test_filters(staff_client, trail, query, expected):
    response = staff_client.get("/staff/audit", query_string=query)
    assert response.status_code == 200
    assert _rows(response.get_data(as_text=True)) == expected


def test_a_customers_rows_by_target(staff_client, trail):
    alice = trail[0]
    html = staff_client.get(f"/staff/audit?target_type=users&target_id={alice.id}").get_data(as_text=True)
    assert _rows(html) == ["support.refund", "support.credit", "auth.login"]


@pytest.mark.parametrize("query, message", [
    ({"actor": "nobody@example.com"}, "No user has this email."),
    ({"from": "yesterday"}, "Not a valid date value."),
    ({"from": "2026-03-05", "to": "2026-03-01"}, "The end is before the start."),
])
def test_bad_filters_are_400_with_the_message(staff_client, trail, query, message):
    response = staff_client.get("/staff/audit", query_string=query)
    assert response.status_code == 400 and message in response.get_data(as_text=True)
    assert "audit-log" not in response.get_data(as_text=True)


def test_pages_by_keyset(staff_client, catalog, clock):
    staff = _user("staff@portal.test")
    for n in range(120):
        audit("support.credit", staff, actor_id=staff.id, data={"n": n})
    db.session.commit()
    first = staff_client.get("/staff/audit?action=support.credit").get_data(as_text=True)
    numbers = [int(n) for n in re.findall(r"n: (\d+)", first)]
    assert numbers == list(range(119, 69, -1))
    older = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    assert "action=support.credit" in older and "before=" in older
    second = staff_client.get(older).get_data(as_text=True)
    assert [int(n) for n in re.findall(r"n: (\d+)", second)] == list(range(69, 19, -1))
    assert "« Newest" in second
    third = staff_client.get(re.search(r'href="([^"]+)" rel="next"', second).group(1).replace("&amp;", "&"))
    html = third.get_data(as_text=True)
    assert [int(n) for n in re.findall(r"n: (\d+)", html)] == list(range(19, -1, -1)) and 'rel="next"' not in html


def test_a_support_action_lands_in_the_log_with_its_address(staff_client, catalog):
    alice = _user("demo@portal.test")
    token = csrf_from(staff_client, f"/staff/customers/{alice.id}")
    response = staff_client.post(f"/staff/customers/{alice.id}/credit", data={
        "csrf_token": token, "amount": "2.00", "reason": "Late answer", "token": uuid.uuid4().hex})
    assert response.status_code == 303, response.get_data(as_text=True)
    html = staff_client.get("/staff/audit?action=support.").get_data(as_text=True)
    assert _rows(html) == ["support.credit"] and "127.0.0.1" in html and "“Late answer”" in html
    [row] = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "support.credit")).all()
    assert row.ip == "127.0.0.1" and row.target_type == "users" and row.target_id == str(alice.id)


def test_customers_may_not_see_the_log(alice_client):
    assert alice_client.get("/staff/audit").status_code == 403
