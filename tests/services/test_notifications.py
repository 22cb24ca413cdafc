"""Emails (DESIGN §4, §3.7): every kind in both parts, queued once per business event, sent after
commit through a real SMTP server (the mail catcher of `make run`), retried while it is down, never
lost when Redis is, and at most one duplicate when a sender dies mid-send.
"""
from __future__ import annotations

import html
import re
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from devtools import mailcatcher
from devtools.embedded import EmbeddedMail, free_port
from portal.extensions import db
from portal.models import EmailLog, EmailStatus, OutboxMessage, Plan, User
from portal.services import notifications, usage
from portal.services.notifications import KINDS, delivery
from portal.services.notifications.render import render
from portal.services.subscriptions import changes as plan_changes, live_subscription
from portal.services.wallet import topups
from tests.conftest import add_card, run_outbox_jobs

TEMPLATES = Path(__file__).resolve().parents[2] / "portal" / "templates" / "emails"


# --- the templates ---------------------------------------------------------------------------------------

def test_every_kind_has_a_text_and_an_html_part_and_every_template_a_kind():
    stems = {path.stem for path in TEMPLATES.iterdir() if not path.name.startswith("_")}
    parts = {(path.stem, path.suffix) for path in TEMPLATES.iterdir() if not path.name.startswith("_")}
    assert stems == set(KINDS), "a template without a kind, or a kind without templates"
    assert {(stem, suffix) for stem in stems for suffix in (".txt", ".html")} == parts, "one part is missing"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_says_the_facts_the_customer_needs_in_both_parts(app, kind):
    rendered = render(kind, KINDS[kind].sample, name="Alice")
    text = rendered.text
    page = html.unescape(re.sub(r"<[^>]+>", " ", rendered.html))
    links = " ".join(re.findall(r'href="([^"]+)"', rendered.html))
    for fact in KINDS[kind].facts:
        assert fact in text, f"{kind}.txt does not say {fact!r}"
        assert fact in page or fact in links, f"{kind}.html does not say {fact!r}"
    assert rendered.subject and "{{" not in rendered.subject
    assert "http://127.0.0.1:5000/" in text  # links are absolute (PORTAL_BASE_URL)


def test_dates_are_shown_in_the_customers_time_zone(app):
    sample = KINDS["renewal_failed"].sample
    assert "03 Mar 2026, 09:00 UTC" in render("renewal_failed", sample).text
    assert "03 Mar 2026, 04:00 EST" in render("renewal_failed", sample, tz_name="America/New_York").text
    assert "03 Mar 2026, 09:00 UTC" in render("renewal_failed", sample, tz_name="Not/AZone").text


# --- queueing ------------------------------------------------------------------------------------------

def _emails() -> list[EmailLog]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(EmailLog).order_by(EmailLog.id)))


def _alice() -> User:
    return db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))


def test_the_same_key_twice_is_one_email(catalog):
    alice = _alice()
    first = notifications.notify(alice, "invoice_paid", KINDS["invoice_paid"].sample, key="receipt:INV-1")
    again = notifications.notify(alice, "invoice_paid", KINDS["invoice_paid"].sample, key="receipt:INV-1")
    db.session.commit()
    assert first is not None and again is None
    [email] = _emails()
    assert (email.template, email.to_address, email.status, email.subject) == (
        "invoice_paid", "demo@portal.test", EmailStatus.QUEUED, "Receipt for INV-000046")
    assert db.session.scalar(sa.select(sa.func.count(OutboxMessage.id))) == 1


def test_a_rolled_back_transaction_sends_nothing(catalog):
    notifications.notify(_alice(), "invoice_paid", KINDS["invoice_paid"].sample, key="receipt:INV-2")
    db.session.rollback()
    assert _emails() == [] and run_outbox_jobs() == []


def test_usage_emails_are_optional_and_the_others_are_not(catalog):
    alice = _alice()
    alice.usage_emails = False
    assert notifications.notify(alice, "usage_warning", KINDS["usage_warning"].sample, key="u") is None
    assert notifications.notify(alice, "invoice_paid", KINDS["invoice_paid"].sample, key="r") is not None
    with pytest.raises(ValueError):
        notifications.notify(alice, "staff_alert", KINDS["staff_alert"].sample, key="s")
    db.session.commit()
    assert [e.template for e in _emails()] == ["invoice_paid"]


# --- through a real SMTP server ---------------------------------------------------------------------------

@pytest.fixture
def catcher(tmp_path):
    """The mail catcher `make run` uses (aiosmtpd in its own process), on a port of its own."""
    server = EmbeddedMail(tmp_path / "mail", port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def app_config(request):
    if "catcher" not in request.fixturenames:
        return {}
    server = request.getfixturevalue("catcher")
    return {"MAIL_SERVER": server.host, "MAIL_PORT": server.port, "MAIL_SUPPRESS_SEND": False, "MAIL_TIMEOUT": 5}


def _mail(catcher) -> list:
    return mailcatcher.read_messages(catcher.maildir)


def _subjects(catcher) -> list[tuple[str, str]]:
    return [(m["Subject"], m["To"]) for m in _mail(catcher)]


def _plan(code: str) -> Plan:
    return db.session.scalar(sa.select(Plan).where(Plan.code == code))


def test_an_upgrade_a_top_up_and_a_quota_crossing_each_send_exactly_one_message(catalog, stripe_server, catcher,
                                                                                 clock):
    alice = _alice()
    add_card(alice)
    assert plan_changes.upgrade(alice, _plan("premium"), token="t").status == "paid"
    db.session.commit()
    run_outbox_jobs()
    assert _subjects(catcher) == [("Your Premium plan is active", "demo@portal.test")]
    [activated] = _mail(catcher)
    body = activated.get_body(("plain",)).get_content()
    assert "$9.99" in body and "http://127.0.0.1:5000/invoices/INV-" in body
    assert activated.get_body(("html",)) is not None

    mailcatcher.clear(catcher.maildir)
    assert topups.buy(alice, 2500, "USD", "t2", card_label="Visa •••• 4242").status == "paid"
    db.session.commit()
    run_outbox_jobs()
    assert _subjects(catcher) == [("Receipt: $25.00 added to your wallet", "demo@portal.test")]

    # Basic grants 1,000 tokens a period: 800 is 80 %, 1,000 all of them; each once per period.
    sub = live_subscription(alice.id)
    sub.plan_id = _plan("basic").id
    db.session.commit()
    for quantity, expected in ((700, []), (100, ["You have used 80 % of your AI tokens"]), (50, []),
                               (150, ["You have used all your AI tokens for this period"])):
        mailcatcher.clear(catcher.maildir)
        assert usage.record(alice.id, "tokens", quantity).allowed
        db.session.commit()
        run_outbox_jobs()
        assert [subject for subject, _ in _subjects(catcher)] == expected, quantity
    assert [e.template for e in _emails() if e.template.startswith("usage")] == [
        "usage_warning", "usage_limit_reached"]


def test_with_smtp_down_emails_are_retried_and_each_arrives_once_when_it_is_back(catalog, catcher, clock):
    alice = _alice()
    for n in range(3):
        notifications.notify(alice, "invoice_paid", {**KINDS["invoice_paid"].sample, "invoice": f"INV-00010{n}"},
                             key=f"receipt:{n}")
    db.session.commit()
    catcher.stop()  # the SMTP server goes away
    run_outbox_jobs()
    emails = _emails()
    assert [(e.status, e.attempts) for e in emails] == [(EmailStatus.FAILED, 1)] * 3
    assert all("Connection refused" in e.last_error for e in emails)
    assert emails[0].next_attempt_at == clock.now() + timedelta(minutes=1)
    assert delivery.deliver_due() == {}  # not due yet
    clock.advance(minutes=1)
    assert delivery.deliver_due() == {"failed": 3}
    catcher.start()  # back, on the same port
    clock.advance(minutes=5)
    assert delivery.deliver_due() == {"sent": 3}
    clock.advance(minutes=60)
    assert delivery.deliver_due() == {}
    assert sorted(m["Subject"] for m in _mail(catcher)) == [f"Receipt for INV-00010{n}" for n in range(3)]
    assert [(e.status, e.attempts) for e in _emails()] == [(EmailStatus.SENT, 3)] * 3


def test_after_the_last_try_an_email_stays_failed_and_visible(catalog, catcher, clock):
    notifications.notify(_alice(), "invoice_paid", KINDS["invoice_paid"].sample, key="receipt:x")
    db.session.commit()
    catcher.stop()
    run_outbox_jobs()
    for minutes in (1, 5, 15, 60):
        clock.advance(minutes=minutes)
        assert delivery.deliver_due() == {"failed": 1}
    clock.advance(days=1)
    assert delivery.deliver_due() == {}
    [email] = _emails()
    assert (email.status, email.attempts, email.next_attempt_at) == (EmailStatus.FAILED, 5, None)


def test_a_sender_that_dies_after_smtp_accepted_costs_at_most_one_duplicate(catalog, catcher, clock, monkeypatch):
    """Fault injection: a process cannot be made to die between the SMTP server's "250 OK" and our
    update here, so the send raises right after the real SMTP exchange."""
    email_id = notifications.notify(_alice(), "invoice_paid", KINDS["invoice_paid"].sample, key="receipt:y")
    db.session.commit()
    real_send = delivery._TimedConnection.send

    def send_then_die(self, message, *args, **kwargs):
        real_send(self, message, *args, **kwargs)
        raise SystemExit("the worker was killed")

    monkeypatch.setattr(delivery._TimedConnection, "send", send_then_die)
    for _ in range(2):
        with pytest.raises(SystemExit):
            delivery.deliver(email_id)
        db.session.rollback()
        clock.advance(seconds=601)  # the claim lapses
    assert delivery.deliver_due() == {"skipped": 1}  # a second lapse is not sent a third time
    db.session.commit()
    [email] = _emails()
    assert email.status is EmailStatus.FAILED and "not sent again" in email.last_error
    sent = _mail(catcher)
    assert len(sent) == 2 and sent[0]["Message-ID"] == sent[1]["Message-ID"] == email.message_id


def test_with_redis_down_the_email_goes_once_redis_is_back(catalog, catcher, redis_server, redis_conn, app):
    from tests.worker.test_worker import work_burst

    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens: the enqueue after commit fails
    app.extensions["redis"] = None
    notifications.notify(_alice(), "invoice_paid", KINDS["invoice_paid"].sample, key="receipt:z")
    db.session.commit()
    assert _mail(catcher) == []
    app.config["REDIS_URL"] = redis_server.url
    app.extensions["redis"] = None
    from portal.services import outbox

    assert outbox.dispatch_pending() == 1
    work_burst(app, redis_conn)  # a real RQ worker, in this process
    assert [m["Subject"] for m in _mail(catcher)] == ["Receipt for INV-000046"]
    assert outbox.dispatch_pending() == 0
    work_burst(app, redis_conn)
    assert len(_mail(catcher)) == 1
