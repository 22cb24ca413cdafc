"""In Debian's chromium, as support: the revenue page's charts and CSV over a chosen range, a bad range,
and the queues page — a failed job requeued and another deleted in place (htmx), and the page without Redis.
Every page is saved under test-artifacts/screenshots/."""
from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from rq import Queue
from rq.registry import FailedJobRegistry

from portal.clock import now
from portal.extensions import db
from portal.models import AuditLog, OutboxMessage
from tests.blueprints.staff.test_queues import a_scheduler_ran_the_outbox_sweep, failing_jobs
from tests.blueprints.staff.test_revenue import book  # noqa: F401  (the hand-counted fixture)
from tests.conftest import browser_login

pytestmark = pytest.mark.browser

STAFF = ("staff@portal.test", "staff-password-1")


@pytest.fixture
def app_config(request):
    config = {"BILLING_TZ": "America/New_York"}
    if "redis_conn" in request.fixturenames:
        config["REDIS_URL"] = request.getfixturevalue("redis_server").url
    return config


def test_revenue_charts_csv_and_a_bad_range(book, live_server, browser_page, shot, tmp_path):  # noqa: F811
    page, base = browser_page, live_server
    page.set_viewport_size({"width": 1280, "height": 900})
    browser_login(page, base, *STAFF)
    page.goto(f"{base}/staff/revenue?from=2025-11&to=2026-01")
    for chart in ("plans", "revenue-USD", "revenue-EUR", "movement", "failures"):
        page.wait_for_selector(f"canvas#chart-{chart}[data-drawn]", state="attached")
        assert page.is_visible(f"canvas#chart-{chart}"), chart
    assert "$49.69" in page.inner_text("#mrr") and "€24.00" in page.inner_text("#mrr")
    assert "42.9 %" in page.inner_text("#month-2025-12")
    shot(page, "revenue")

    # The range form: month pickers; Show reloads with the range in the address.
    page.fill("#range-from", "2025-12")
    page.fill("#range-to", "2026-01")
    page.click("#revenue-range button[type=submit]")
    page.wait_for_url("**/staff/revenue?from=2025-12&to=2026-01")
    assert page.locator("#months-table tbody tr").count() == 2

    with page.expect_download() as download:
        page.click("#revenue-csv")
    saved = Path(tmp_path) / "revenue.csv"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "revenue-2025-12-to-2026-01.csv"
    rows = list(csv.reader(io.StringIO(saved.read_text())))
    assert [row[0] for row in rows] == ["month", "2025-12", "2026-01"]

    page.goto(f"{base}/staff/revenue?from=2026-01&to=2025-11")
    assert "after it ends" in page.inner_text("#range-error")
    shot(page, "revenue-bad-range")


def test_queues_requeue_and_delete_in_place(catalog, redis_conn, live_server, browser_page, shot):
    a_scheduler_ran_the_outbox_sweep(redis_conn)
    first, second = failing_jobs(redis_conn)
    page, base = browser_page, live_server
    page.set_viewport_size({"width": 1280, "height": 900})
    browser_login(page, base, *STAFF)
    page.goto(f"{base}/staff/queues")
    assert "2 failed" in page.inner_text("#queue-default")
    shot(page, "queues")

    page.click(f"#job-{first} button:has-text('Requeue')")
    page.wait_for_selector("#queue-default >> text=is back on the “default” queue")
    assert page.url.endswith("/staff/queues")  # swapped in place, no navigation
    assert "1 failed · 1 waiting" in page.inner_text("#queue-default")
    assert page.inner_text("#depth-default .queued") == "1"  # the depth table came along, out of band
    shot(page, "queues-requeued")

    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"#job-{second} button:has-text('Delete')")
    page.wait_for_selector("#queue-default >> text=is deleted; it will not run again")
    assert "No failed jobs." in page.inner_text("#queue-default")
    shot(page, "queues-deleted")

    assert first in Queue("default", connection=redis_conn).get_job_ids()
    assert FailedJobRegistry("default", connection=redis_conn).get_job_ids() == []
    db.session.rollback()
    actions = db.session.scalars(sa.select(AuditLog.action).where(AuditLog.action.like("job.%"))).all()
    assert sorted(actions) == ["job.delete", "job.requeue"]


def test_queues_without_redis(catalog, live_server, browser_page, shot):
    db.session.add(OutboxMessage(queue="emails", func="worker.emails.send_email", args=[1], job_id="waiting-1",
                                 created_at=now() - timedelta(minutes=42)))
    db.session.commit()
    page, base = browser_page, live_server
    page.set_viewport_size({"width": 1280, "height": 900})
    browser_login(page, base, *STAFF)
    page.goto(f"{base}/staff/queues")
    assert "Redis unreachable" in page.inner_text("#redis-unreachable")
    assert page.inner_text("#outbox-pending") == "1" and "42 min ago" in page.inner_text("#outbox")
    shot(page, "queues-redis-down")
