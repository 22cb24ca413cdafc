"""The usage API over real HTTP: gunicorn (threads in several processes) on PostgreSQL.

100 concurrent clients race for a limit of 10; exactly 10 get through, and one key is recorded once.
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from devtools.embedded import free_port
from portal.extensions import db
from portal.models import UsageCounter, UsageEvent
from tests.conftest import START

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)


@pytest.fixture
def gunicorn(app, database_url, tmp_path):
    """gunicorn serving wsgi:app against this test's database, with the test's frozen billing time."""
    port = free_port()
    env = dict(os.environ, DATABASE_URL=database_url.replace("postgresql+psycopg://", "postgresql://"),
               PORTAL_CLOCK_FROZEN_AT=START.isoformat(), SECRET_KEY="test", PORTAL_INSTANCE_PATH=str(tmp_path),
               REDIS_URL="redis://127.0.0.1:1/0", RATELIMIT_STORAGE_URI="memory://")
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "4", "--worker-class", "gthread", "--threads", "8",
         "--bind", f"127.0.0.1:{port}", "--no-control-socket", "wsgi:app"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((tmp_path / "gunicorn.log").read_text()[-3000:])
        time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)
    log.close()


def _call_many(port: int, key: str, bodies: list[dict], headers: dict | None = None) -> list[tuple[int, bytes, dict]]:
    barrier = threading.Barrier(len(bodies))

    def one(body: dict):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        barrier.wait()
        conn.request("POST", "/api/v1/usage/record", body=json.dumps(body),
                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(one, bodies))


@pytest.mark.parametrize("feature, refused", [("reports", 403), ("pings", 429)])
def test_100_concurrent_records_over_http_pass_a_limit_of_10_exactly(gunicorn, api_key, feature, refused):
    results = _call_many(gunicorn, api_key, [{"feature": feature, "quantity": 1}] * 100)
    statuses = [status for status, _, _ in results]
    assert statuses.count(201) == 10 and statuses.count(refused) == 90, statuses
    if refused == 429:
        assert all(int(h["Retry-After"]) > 0 for s, _, h in results if s == 429)
    db.session.expire_all()
    assert db.session.scalar(sa.select(UsageCounter.used)) == 10
    assert db.session.scalar(sa.select(sa.func.count()).select_from(UsageEvent)) == 10
    used = sorted(json.loads(body)["used"] for status, body, _ in results if status == 201)
    assert used == list(range(1, 11))  # each success saw its own increment


def test_the_same_event_sent_100_times_concurrently_is_recorded_once(gunicorn, api_key):
    results = _call_many(gunicorn, api_key, [{"feature": "reports", "quantity": 1}] * 100,
                         headers={"Idempotency-Key": "evt-once"})
    assert {status for status, _, _ in results} == {201}
    assert len({body for _, body, _ in results}) == 1  # every answer is the first one, byte for byte
    db.session.expire_all()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(UsageEvent)) == 1
    assert db.session.scalar(sa.select(UsageCounter.used)) == 1
