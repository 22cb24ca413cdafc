"""Staff: errors & retries (issue #13, page 2). The list (filters, sorted by next retry, keyset pages), the failed
report, one failure's detail, and the actions (retry now, switch strategy, resolve, give up) singly and in bulk,
each audited once per failure acted on and answered in place with htmx."""
from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionStatus
from portal.extensions import db
from portal.models import (
    AuditLog, ErrorStatus, Invoice, InvoiceStatus, LineKind, OperationError, Plan, RetryAttempt, RetryStrategy,
    Subscription, SubscriptionEvent, User,
)
from portal.services import invoices, retries
from portal.services.invoices import LineDraft
from portal.services.retries import views
from tests.conftest import csrf_from

HX = {"HX-Request": "true"}
ROW = re.compile(r'id="failure-row-(\d+)"')


# --- helpers ----------------------------------------------------------------------------------------------

def _user(email: str) -> User:
    return db.session.scalar(sa.select(User).where(User.email == email))


def _failure(operation_type: str = "webhook", *, code: str = "network", strategy=RetryStrategy.EXPONENTIAL,
             next_in: timedelta | None = timedelta(hours=1), user: User | None = None, subscription_id=None,
             context: dict | None = None, status: ErrorStatus | None = None, attempts: int = 1) -> OperationError:
    """An open failure as the operations record it (record_failure), due `next_in` from now (None: no retry)."""
    from portal.clock import now

    error = retries.record_failure(
        operation_type, code, f"{operation_type} failed: {code}", dedupe_key=f"test:{uuid.uuid4()}",
        strategy=strategy, context=context or {}, user_id=user.id if user else None,
        subscription_id=subscription_id, next_retry_at=now() + next_in if next_in is not None else None,
        status=status, attempts=attempts)
    db.session.commit()
    return error


def _ids(html: str) -> list[int]:
    return [int(i) for i in ROW.findall(html)]


def _token(client) -> str:
    return csrf_from(client, "/staff/failures")


def _audits(action: str | None = None) -> list[AuditLog]:
    db.session.rollback()
    query = sa.select(AuditLog).where(AuditLog.action.like("failure.%")).order_by(AuditLog.id)
    if action:
        query = query.where(AuditLog.action == action)
    return list(db.session.scalars(query))


def _reload(error: OperationError) -> OperationError:
    db.session.rollback()
    return db.session.get(OperationError, error.id, populate_existing=True)


# --- the list ---------------------------------------------------------------------------------------------

def test_the_list_shows_unresolved_failures_soonest_retry_first_and_those_without_one_last(staff_client, clock):
    later = _failure(next_in=timedelta(hours=5))
    manual = _failure("dispute", code="fraudulent", strategy=RetryStrategy.MANUAL, next_in=None)
    soon = _failure(next_in=timedelta(minutes=10))
    tie_a = _failure(next_in=timedelta(hours=2))
    tie_b = _failure(next_in=timedelta(hours=2))
    manual_2 = _failure("refund_shortfall", code="wallet_short", strategy=RetryStrategy.MANUAL, next_in=None)
    closed = _failure(next_in=timedelta(minutes=1))
    retries.resolve(closed.dedupe_key)
    db.session.commit()

    page = staff_client.get("/staff/failures")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert _ids(html) == [soon.id, tie_a.id, tie_b.id, later.id, manual.id, manual_2.id]
    # the next retry and the failed attempts, prominently, on every row
    assert "31 Jan, 09:10" in html and "in 10 min" in html
    assert "none: needs a person" in html
    assert '<strong>1</strong> <small class="muted">of 8</small>' in html  # exponential: 8 tries before a person
    # the failed report on top: by type, with its chart's data
    assert html.index('id="failure-report"') < html.index('id="failures"')
    assert 'data-testid="unresolved-count">6<' in html
    assert 'class="staff-chart failure-report-chart"' in html and "vendor/chart.umd.js" in html and "js/staff-charts.js" in html


def test_each_filter_narrows_the_list(staff_client, clock, catalog):
    from portal.services.auth import register

    alice = _user("demo@portal.test")
    bob = register("bob@example.com", "bob's long password", "Bob")
    db.session.commit()
    old = _failure("renewal_payment", code="card_declined", strategy=RetryStrategy.FIXED_INTERVAL, user=alice)
    clock.advance(days=2)
    webhook = _failure("webhook", user=bob)
    dispute = _failure("dispute", code="fraudulent", strategy=RetryStrategy.MANUAL, next_in=None, user=bob)
    gone = _failure("refund", code="card_declined", strategy=RetryStrategy.IMMEDIATE, user=alice)
    retries.give_up(gone.dedupe_key)
    db.session.commit()

    def ids(query: str) -> set[int]:
        response = staff_client.get(f"/staff/failures?{query}")
        assert response.status_code == 200, query
        return set(_ids(response.get_data(as_text=True)))

    assert ids("") == {old.id, webhook.id, dispute.id}
    assert ids("type=webhook") == {webhook.id}
    assert ids("strategy=fixed_interval") == {old.id}
    assert ids("status=manual") == {dispute.id}
    assert ids("status=gave_up") == {gone.id}
    assert ids("status=any") == {old.id, webhook.id, dispute.id, gone.id}
    assert ids("age=1d") == {old.id}
    assert ids("age=3d") == set()
    assert ids("customer=BOB@") == {webhook.id, dispute.id}
    assert ids("customer=demo&type=renewal_payment") == {old.id}
    assert ids("customer=nobody") == set()
    assert ids("customer=portal.test") == set()  # the start of the email (an index range), not any part of it
    for bad in ("status=bogus", "strategy=sometimes", "age=soon", "type=DROP%20TABLE", "after=x"):
        assert staff_client.get(f"/staff/failures?{bad}").status_code == 400, bad


def test_pages_follow_the_order_across_ties_and_into_failures_without_a_retry(app, clock):
    timed = [_failure(next_in=timedelta(minutes=m)) for m in (30, 10, 10, 20, 10)]
    untimed = [_failure("dispute", strategy=RetryStrategy.MANUAL, next_in=None) for _ in range(4)]
    expected = [e.id for e in sorted(timed, key=lambda e: (e.next_retry_at, e.id))] + [e.id for e in untimed]
    for size in (1, 2, 3, 4, 5, 6, 9, 10):
        seen, cursor = [], None
        while True:
            page = views.failures_page(views.Filters(), after=cursor, size=size)
            seen += [row.error.id for row in page.rows]
            cursor = page.next
            if cursor is None:
                break
        assert seen == expected, size


def test_the_list_pages_by_next_retry_through_links(staff_client, clock):
    made = [_failure(next_in=timedelta(minutes=i + 1)) for i in range(views.PAGE_SIZE + 3)]
    first = staff_client.get("/staff/failures?type=webhook").get_data(as_text=True)
    assert _ids(first) == [e.id for e in made[:views.PAGE_SIZE]]
    link = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    assert "type=webhook" in link and "after=" in link
    second = staff_client.get(link).get_data(as_text=True)
    assert _ids(second) == [e.id for e in made[views.PAGE_SIZE:]]
    assert 'rel="next"' not in second and "First page" in second


def test_listing_issues_the_same_statements_for_few_or_many_failures(app, clock):
    """No N+1: the page's reads do not grow with the rows shown."""
    from sqlalchemy import event

    def statements() -> int:
        count = 0

        def seen(*_):
            nonlocal count
            count += 1
        event.listen(db.engine, "before_cursor_execute", seen)
        try:
            views.failures_page(views.Filters())
        finally:
            event.remove(db.engine, "before_cursor_execute", seen)
        return count

    _failure(next_in=timedelta(minutes=5))
    _failure("dispute", strategy=RetryStrategy.MANUAL, next_in=None)
    few = statements()
    for _ in range(20):
        _failure(next_in=timedelta(minutes=5))
        _failure("dispute", strategy=RetryStrategy.MANUAL, next_in=None)
    assert statements() == few


# --- the detail -------------------------------------------------------------------------------------------

def _renewal_like_failure(alice: User, clock) -> OperationError:
    """A failed renewal's error as it looks after two automatic retries: its subscription, invoice, attempts."""
    from portal.clock import now

    sub = db.session.scalar(sa.select(Subscription).where(Subscription.user_id == alice.id))
    db.session.add(SubscriptionEvent(subscription_id=sub.id, transition="payment_failed", from_status=sub.status,
                                     to_status=SubscriptionStatus.PAST_DUE, reason="Your card was declined.",
                                     data={"invoice": "INV-x"}, at=now()))
    invoice = invoices.create_invoice(
        alice.id, "USD", [LineDraft(LineKind.PLAN, "Premium plan, 28 Feb – 31 Mar", 999)], reason="renewal",
        subscription_id=sub.id, idempotency_key=f"renewal:{sub.id}:test")
    db.session.commit()
    error = _failure("renewal_payment", code="card_declined", strategy=RetryStrategy.FIXED_INTERVAL, user=alice,
                     subscription_id=sub.id, next_in=timedelta(days=1),
                     context={"invoice": invoice.number, "invoice_id": invoice.id, "amount": 999, "currency": "USD",
                              "decline_code": "generic_decline"})
    staff = _user("staff@portal.test")
    first = now() + timedelta(days=1)
    db.session.add_all([
        RetryAttempt(operation_error_id=error.id, attempt_number=2, succeeded=False, outcome="failed",
                     strategy="fixed_interval", error_code="card_declined", message="Your card was declined.",
                     started_at=first - timedelta(seconds=2), at=first, next_retry_at=first + timedelta(days=1)),
        RetryAttempt(operation_error_id=error.id, attempt_number=3, succeeded=False, outcome="waiting",
                     strategy="fixed_interval", message="The bank has not answered.",
                     started_at=first + timedelta(days=1), at=first + timedelta(days=1, seconds=1),
                     next_retry_at=None, actor_id=staff.id),
    ])
    error.attempts, error.next_retry_at = 3, first + timedelta(days=2)
    db.session.commit()
    return error


def test_the_detail_shows_attempts_next_retry_context_subscription_history_and_invoice(staff_client, clock, catalog):
    alice = _user("demo@portal.test")
    error = _renewal_like_failure(alice, clock)
    page = staff_client.get(f"/staff/failures/{error.id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    timeline = html[html.index('id="failure-timeline"'):html.index('id="failure-context"')]
    # the original failure, two retries, the next try
    assert re.findall(r"<strong>#(\d+)</strong>", timeline) == ["1", "2", "3", "4"]
    assert 'id="attempt-2"' in timeline and "Failed" in timeline and "01 Feb 2026, 09:00 UTC" in timeline
    assert "No answer yet" in timeline and "02 Feb 2026, 09:00 UTC" in timeline
    assert "Retry now by staff@portal.test" in timeline and "By the retry processor" in timeline
    assert "Scheduled the next try for 02 Feb 2026, 09:00 UTC" in timeline and "took 2.0 s" in timeline
    assert "due <time" in timeline and "03 Feb 2026, 09:00 UTC" in timeline
    facts = html[html.index('id="failure-key-facts"'):html.index('id="failure-actions"')]
    assert 'data-testid="failed-attempts"><strong>3</strong>' in facts
    assert "03 Feb, 09:00" in facts and "in 3 d" in facts
    assert "$9.99" in facts and "demo@portal.test" in facts
    context = html[html.index('id="failure-context"'):html.index('id="failure-subscription"')]
    assert "decline code" in context and "generic_decline" in context
    history = html[html.index('id="failure-subscription"'):html.index('id="failure-invoice"')]
    assert "payment_failed" in history and "Your card was declined." in history and "Past due" in history
    invoice = html[html.index('id="failure-invoice"'):]
    assert "INV-" in invoice and "Premium plan, 28 Feb – 31 Mar" in invoice and "Amount due" in invoice
    for form in ("retry-form", "strategy-form", "resolve-form", "give-up-form"):
        assert f'id="{form}"' in html
    assert staff_client.get("/staff/failures/999999").status_code == 404


def test_the_detail_of_a_failure_without_customer_subscription_or_invoice(staff_client):
    error = _failure("webhook", context={"webhook_event_id": 7, "type": "invoice.paid"})
    html = staff_client.get(f"/staff/failures/{error.id}").get_data(as_text=True)
    assert "concerns no subscription" in html and "No invoice is at stake" in html and "invoice.paid" in html


# --- single actions ---------------------------------------------------------------------------------------

def test_retry_now_with_htmx_answers_the_detail_with_the_new_attempt_and_one_audit_row(staff_client):
    # a webhook failure whose stored event is gone: the retry finds nothing left to do, so it is resolved
    error = _failure("webhook", context={"webhook_event_id": 424242})
    response = staff_client.post(f"/staff/failures/{error.id}/retry", data={"csrf_token": _token(staff_client)},
                                 headers=HX)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.lstrip().startswith('<div id="failure-detail"') and "<html" not in html
    assert "it went through (nothing was left to do). Resolved." in html
    assert 'id="attempt-2"' in html and "Nothing to do" in html and "Retry now by staff@portal.test" in html
    error = _reload(error)
    assert error.status is ErrorStatus.RESOLVED
    [row] = _audits()
    staff = _user("staff@portal.test")
    assert (row.action, row.target_type, row.target_id, row.actor_id, row.data) == (
        "failure.retry", "operation_errors", str(error.id), staff.id, {"outcome": "moot"})


def test_retry_now_that_fails_again_says_so_and_the_failure_waits_for_a_person(staff_client):
    error = _failure("dispute", code="fraudulent", strategy=RetryStrategy.MANUAL, next_in=None)
    html = staff_client.post(f"/staff/failures/{error.id}/retry", data={"csrf_token": _token(staff_client)},
                             headers=HX).get_data(as_text=True)
    assert "it failed again (no_handler" in html and "it waits for a person" in html
    error = _reload(error)
    assert (error.status, error.attempts) == (ErrorStatus.MANUAL, 2)
    assert [a.data for a in _audits("failure.retry")] == [{"outcome": "failed"}]


def test_retry_from_a_row_answers_the_row_and_the_report(staff_client):
    error = _failure("webhook", context={"webhook_event_id": 424242})
    other = _failure("dispute", strategy=RetryStrategy.MANUAL, next_in=None)
    response = staff_client.post(f"/staff/failures/{error.id}/retry", headers=HX,
                                 data={"csrf_token": _token(staff_client), "view": "row"})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert html.lstrip().startswith(f'<tr id="failure-row-{error.id}"') and "Resolved" in html
    assert re.search(r'<template>\s*<section id="failure-report"[^>]* hx-swap-oob="true"', html)
    assert 'data-testid="unresolved-count">1<' in html  # only the other one is left
    assert _ids(html) == [error.id] and _reload(other).status is ErrorStatus.MANUAL


def test_switch_strategy_with_htmx(staff_client, clock):
    error = _failure("dispute", strategy=RetryStrategy.MANUAL, next_in=None)
    response = staff_client.post(f"/staff/failures/{error.id}/strategy", headers=HX,
                                 data={"csrf_token": _token(staff_client), "strategy": "exponential"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "now retries by exponential backoff; next try on" in html
    error = _reload(error)
    assert (error.strategy, error.status) == (RetryStrategy.EXPONENTIAL, ErrorStatus.PENDING)
    assert error.next_retry_at is not None
    [row] = _audits()
    assert (row.action, row.data) == ("failure.strategy", {"from": "manual", "to": "exponential"})
    bad = staff_client.post(f"/staff/failures/{error.id}/strategy", headers=HX,
                            data={"csrf_token": _token(staff_client), "strategy": "sometimes"})
    assert bad.status_code == 422 and "Not a valid choice" in bad.get_data(as_text=True)
    assert len(_audits()) == 1


@pytest.mark.parametrize("action, status", [("resolve", ErrorStatus.RESOLVED), ("give-up", ErrorStatus.GAVE_UP)])
def test_resolve_and_give_up_need_a_note_and_keep_it(staff_client, action, status):
    error = _failure()
    missing = staff_client.post(f"/staff/failures/{error.id}/{action}", headers=HX,
                                data={"csrf_token": _token(staff_client), "note": "   "})
    assert missing.status_code == 422
    assert "Say why in a note" in missing.get_data(as_text=True)
    assert _reload(error).status is ErrorStatus.PENDING and _audits() == []
    without_htmx = staff_client.post(f"/staff/failures/{error.id}/{action}", data={"csrf_token": _token(staff_client)})
    assert without_htmx.status_code == 422 and "Say why in a note" in without_htmx.get_data(as_text=True)
    assert "<html" in without_htmx.get_data(as_text=True)
    assert _reload(error).status is ErrorStatus.PENDING and _audits() == []

    done = staff_client.post(f"/staff/failures/{error.id}/{action}", headers=HX,
                             data={"csrf_token": _token(staff_client), "note": " Paid by bank transfer. "})
    assert done.status_code == 200
    html = done.get_data(as_text=True)
    assert "Nothing will retry it." in html and "Paid by bank transfer." in html
    error = _reload(error)
    staff = _user("staff@portal.test")
    assert (error.status, error.resolved_by_id, error.next_retry_at) == (status, staff.id, None)
    assert error.context["staff_note"] == "Paid by bank transfer."
    [row] = _audits()
    assert (row.action, row.data, row.target_id) == (
        f"failure.{action}", {"note": "Paid by bank transfer."}, str(error.id))


@pytest.mark.parametrize("action, data", [("retry", {}), ("strategy", {"strategy": "immediate"}),
                                          ("resolve", {"note": "again"}), ("give-up", {"note": "again"})])
def test_every_action_refuses_a_closed_failure_cleanly(staff_client, action, data):
    error = _failure()
    retries.resolve(error.dedupe_key)
    db.session.commit()
    response = staff_client.post(f"/staff/failures/{error.id}/{action}", headers=HX,
                                 data={"csrf_token": _token(staff_client), **data})
    assert response.status_code == 409
    assert f"Failure #{error.id} is already resolved: nothing was done." in response.get_data(as_text=True)
    assert _audits() == [] and _reload(error).status is ErrorStatus.RESOLVED
    assert db.session.scalar(sa.select(sa.func.count(RetryAttempt.id))) == 0


def test_an_action_on_a_failure_being_retried_is_refused(staff_client, clock):
    from portal.clock import now

    error = _failure()
    db.session.execute(sa.update(OperationError).where(OperationError.id == error.id)
                       .values(status=ErrorStatus.RETRYING, claimed_until=now() + timedelta(minutes=10)))
    db.session.commit()
    response = staff_client.post(f"/staff/failures/{error.id}/resolve", headers=HX,
                                 data={"csrf_token": _token(staff_client), "note": "done"})
    assert response.status_code == 409 and "is being retried right now" in response.get_data(as_text=True)
    assert _audits() == []


def test_without_htmx_an_action_redirects_back_with_a_flash_message(staff_client):
    error = _failure()
    token = _token(staff_client)
    response = staff_client.post(f"/staff/failures/{error.id}/resolve",
                                 data={"csrf_token": token, "note": "fixed by hand",
                                       "next": "/staff/failures?type=webhook"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/staff/failures?type=webhook")
    assert f"#{error.id} is resolved" in staff_client.get(response.headers["Location"]).get_data(as_text=True)
    # a `next` elsewhere is ignored: back to the failure
    other = _failure()
    response = staff_client.post(f"/staff/failures/{other.id}/give-up",
                                 data={"csrf_token": token, "note": "x", "next": "https://evil.example/"})
    assert response.headers["Location"].endswith(f"/staff/failures/{other.id}")
    closed = staff_client.post(f"/staff/failures/{error.id}/retry", data={"csrf_token": token})
    assert closed.status_code == 303
    assert "already resolved" in staff_client.get(closed.headers["Location"]).get_data(as_text=True)
    assert len(_audits()) == 2


# --- bulk -------------------------------------------------------------------------------------------------

def _bulk(client, ids, action, **extra):
    return client.post("/staff/failures/bulk", headers=HX,
                       data={"csrf_token": _token(client), "ids": [str(i) for i in ids], "action": action, **extra})


def test_bulk_resolve_reports_each_failure_and_audits_each_one_acted_on(staff_client, clock):
    from portal.clock import now

    open_ = [_failure() for _ in range(3)]
    closed = _failure()
    retries.resolve(closed.dedupe_key)
    busy = _failure()
    db.session.execute(sa.update(OperationError).where(OperationError.id == busy.id)
                       .values(status=ErrorStatus.RETRYING, claimed_until=now() + timedelta(minutes=10)))
    db.session.commit()
    response = _bulk(staff_client, [e.id for e in open_] + [closed.id, busy.id, 987654], "resolve",
                     note="Settled with the customer")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert ("Resolve: 3 resolved, 1 skipped: already closed, 1 skipped: being retried, 1 not found." in html)
    # each row acted on is swapped in place (out of band), and the report too
    assert sorted(_ids(html)) == sorted([e.id for e in open_] + [closed.id, busy.id])
    assert html.count('hx-swap-oob="true"') == 6
    rows = _audits("failure.resolve")
    assert sorted(int(r.target_id) for r in rows) == sorted(e.id for e in open_)
    assert all(r.data == {"note": "Settled with the customer", "bulk": True} for r in rows)
    assert all(_reload(e).status is ErrorStatus.RESOLVED for e in open_)
    assert _reload(busy).status is ErrorStatus.RETRYING


def test_bulk_give_up_strategy_and_retry(staff_client, clock):
    a, b = _failure(), _failure()
    html = _bulk(staff_client, [a.id, b.id], "give-up", note="Customer left").get_data(as_text=True)
    assert "Give up: 2 given up." in html
    assert {_reload(a).status, _reload(b).status} == {ErrorStatus.GAVE_UP}

    c, d = _failure("dispute", strategy=RetryStrategy.MANUAL, next_in=None), _failure()
    html = _bulk(staff_client, [c.id, d.id], "strategy", strategy="fixed_interval").get_data(as_text=True)
    assert "Switch strategy: 2 switched to fixed interval." in html
    assert {_reload(c).strategy, _reload(d).strategy} == {RetryStrategy.FIXED_INTERVAL}

    gone = _failure("webhook", context={"webhook_event_id": 424242})
    person = _failure("dispute", strategy=RetryStrategy.MANUAL, next_in=None)
    html = _bulk(staff_client, [gone.id, person.id, a.id], "retry").get_data(as_text=True)
    assert "Retry now: 1 resolved, 1 failed again, 1 skipped: already closed." in html
    counts = {action: len(_audits(action)) for action in
              ("failure.give-up", "failure.strategy", "failure.retry", "failure.resolve")}
    assert counts == {"failure.give-up": 2, "failure.strategy": 2, "failure.retry": 2, "failure.resolve": 0}


def test_bulk_form_errors_write_nothing(staff_client):
    error = _failure()
    for ids, action, extra, message in (
        ([error.id], "resolve", {}, "Say why in a note"),
        ([error.id], "give-up", {"note": " "}, "Say why in a note"),
        ([error.id], "strategy", {}, "Choose the strategy to switch to."),
        ([], "resolve", {"note": "x"}, "Select at least one failure."),
        ([error.id], "explode", {}, "Not a valid choice"),
    ):
        response = _bulk(staff_client, ids, action, **extra)
        assert response.status_code == 422, action
        assert message in response.get_data(as_text=True), action
    assert _audits() == [] and _reload(error).status is ErrorStatus.PENDING
    page = staff_client.post("/staff/failures/bulk?type=webhook",
                             data={"csrf_token": _token(staff_client), "ids": [str(error.id)], "action": "resolve"})
    assert page.status_code == 422
    assert "<html" in page.get_data(as_text=True) and "Say why in a note" in page.get_data(as_text=True)


def test_bulk_without_htmx_redirects_back_to_the_same_list(staff_client):
    error = _failure()
    response = staff_client.post("/staff/failures/bulk?type=webhook&status=any",
                                 data={"csrf_token": _token(staff_client), "ids": [str(error.id)], "action": "resolve",
                                       "note": "done"})
    assert response.status_code == 303
    location = response.headers["Location"]
    assert "/staff/failures?" in location and "type=webhook" in location and "status=any" in location
    assert "Resolve: 1 resolved." in staff_client.get(location).get_data(as_text=True)


# --- who may ----------------------------------------------------------------------------------------------

def _routes(error_id: int) -> list[tuple[str, str]]:
    return [("get", "/staff/failures"), ("get", f"/staff/failures/{error_id}"),
            *[("post", f"/staff/failures/{error_id}/{a}") for a in ("retry", "strategy", "resolve", "give-up")],
            ("post", "/staff/failures/bulk")]


def test_customers_get_403_and_anonymous_visitors_the_login(app, alice_client):
    error = _failure()
    token = csrf_from(alice_client, "/home")
    for method, url in _routes(error.id):
        kwargs = {"data": {"csrf_token": token, "note": "x", "ids": [str(error.id)], "action": "resolve"}} \
            if method == "post" else {}
        assert getattr(alice_client, method)(url, **kwargs).status_code == 403, url
    anonymous = app.test_client()
    for method, url in _routes(error.id):
        if method == "get":
            response = anonymous.get(url)
            assert response.status_code == 302 and "/login" in response.headers["Location"], url
    assert _audits() == [] and _reload(error).status is ErrorStatus.PENDING


def test_admins_may_act_too(admin_client):
    error = _failure()
    response = admin_client.post(f"/staff/failures/{error.id}/resolve", headers=HX,
                                 data={"csrf_token": csrf_from(admin_client, "/staff/failures"), "note": "ok"})
    assert response.status_code == 200 and _audits()[0].actor_id == _user("admin@portal.test").id


def test_posts_without_a_csrf_token_are_refused(staff_client):
    error = _failure()
    for _, url in [r for r in _routes(error.id) if r[0] == "post"]:
        assert staff_client.post(url, data={"note": "x", "ids": [str(error.id)], "action": "resolve",
                                            "strategy": "manual"}).status_code == 400, url
        assert staff_client.post(url, headers=HX, data={"note": "x"}).status_code == 400, url
    assert _audits() == [] and _reload(error).status is ErrorStatus.PENDING


# --- a real renewal failure, retried after the card is fixed ----------------------------------------------

def test_support_retries_a_failed_renewal_after_the_customer_fixes_the_card(catalog, stripe_server, clock,
                                                                            staff_client):
    """The renewal is declined by localstripe (4000000000000341 attaches, then declines); a good card is added;
    staff retry from the page: resolved, the invoice paid, the subscription active again."""
    from datetime import datetime, timezone

    from portal.services.payments import cards
    from portal.services.subscriptions import changes as plan_changes
    from portal.services.subscriptions import live_subscription
    from tests.conftest import add_card, run_outbox_jobs
    from worker import billing

    alice = _user("demo@portal.test")
    add_card(alice)
    plan = db.session.scalar(sa.select(Plan).where(Plan.code == "premium"))
    assert plan_changes.upgrade(alice, plan, token=uuid.uuid4().hex).status == "paid"
    db.session.commit()
    run_outbox_jobs()
    cards.set_default(add_card(alice, "4000000000000341"))
    db.session.commit()
    clock.set(datetime(2026, 2, 28, 9, 0, tzinfo=timezone.utc))
    billing.renew_due()
    run_outbox_jobs()
    db.session.expire_all()
    sub = live_subscription(alice.id)
    assert sub.status is SubscriptionStatus.PAST_DUE
    error = db.session.scalar(sa.select(OperationError).where(OperationError.subscription_id == sub.id))
    assert (error.operation_type, error.status) == ("renewal_payment", ErrorStatus.PENDING)
    db.session.commit()

    listing = staff_client.get("/staff/failures?customer=demo@portal").get_data(as_text=True)
    assert _ids(listing) == [error.id] and "card_declined" in listing and "01 Mar, 09:00" in listing
    detail = staff_client.get(f"/staff/failures/{error.id}").get_data(as_text=True)
    assert "payment_failed" in detail and "Past due" in detail and "grace ends" in detail

    cards.set_default(add_card(alice, "5555555555554444"))
    db.session.commit()
    html = staff_client.post(f"/staff/failures/{error.id}/retry", headers=HX,
                             data={"csrf_token": _token(staff_client)}).get_data(as_text=True)
    assert "it went through. Resolved." in html
    assert 'id="attempt-2"' in html and "Succeeded" in html
    history = html[html.index('id="failure-subscription"'):html.index('id="failure-invoice"')]
    assert "recover" in history and "Active" in history
    db.session.expire_all()
    assert _reload(error).status is ErrorStatus.RESOLVED
    assert live_subscription(alice.id).status is SubscriptionStatus.ACTIVE
    invoice = db.session.get(Invoice, error.context["invoice_id"])
    assert invoice.status is InvoiceStatus.PAID
    assert [a.data for a in _audits()] == [{"outcome": "succeeded"}]
