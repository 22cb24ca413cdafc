"""A floor for bench/usage_api.py: the least any durable, per-request `record` can cost here.

Not the portal. A bare Flask app that does, with raw psycopg on one autocommit connection per
thread, the same two round trips the portal's hot path does on PostgreSQL: the API key with the
customer's entitlement, then one statement that takes the units by the conditional upsert and
logs the event and the day's total, committed (and flushed to the WAL) before answering. No
ORM, no SQLAlchemy, no validation, no error handling, no messages: whatever the portal costs
beyond this is the price of its framework and its checks; whatever this costs beyond
hello-world is the price of the database work itself.

Served by gunicorn exactly as the portal and hello-world are (`--reference` in usage_api.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import datetime, timedelta, timezone

import psycopg
from flask import Flask, Response, request

app = Flask(__name__)
_local = threading.local()

KEY_AND_ENTITLEMENT = """
SELECT k.user_id, f.id, s.id, s.current_period_start, s.current_period_end, pf."limit"
FROM api_keys k JOIN users u ON u.id = k.user_id
JOIN features f ON f.code = %(code)s
LEFT JOIN subscriptions s ON s.user_id = k.user_id AND s.status IN ('active', 'trialing', 'past_due')
LEFT JOIN plans p ON p.id = coalesce(s.plan_id, (SELECT id FROM plans WHERE is_default AND NOT is_archived
                                                 ORDER BY id LIMIT 1))
LEFT JOIN plan_features pf ON pf.plan_id = p.id AND pf.feature_id = f.id
WHERE k.key_hash = %(hash)s AND k.revoked_at IS NULL AND u.is_active_account
"""

TAKE_AND_LOG = """
WITH taken AS (
    INSERT INTO usage_counters (user_id, feature_id, window_start, window_end, used, bonus, updated_at)
    VALUES (%(u)s, %(f)s, %(ws)s, %(we)s, %(q)s, 0, %(at)s)
    ON CONFLICT (user_id, feature_id, window_start) DO UPDATE
        SET used = usage_counters.used + %(q)s, updated_at = %(at)s
        WHERE usage_counters.used + %(q)s <= %(lim)s + usage_counters.bonus
    RETURNING used, bonus),
daily AS (
    INSERT INTO usage_daily (user_id, feature_id, day, quantity) SELECT %(u)s, %(f)s, %(day)s, %(q)s FROM taken
    ON CONFLICT (user_id, feature_id, day) DO UPDATE SET quantity = usage_daily.quantity + excluded.quantity),
event AS (
    INSERT INTO usage_events (user_id, feature_id, quantity, subscription_id, source, occurred_at)
    SELECT %(u)s, %(f)s, %(q)s, %(s)s, 'api', %(at)s FROM taken RETURNING id)
SELECT taken.used, taken.bonus, event.id FROM taken JOIN event ON true
"""


def _connection() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    return conn


@app.post("/api/v1/usage/record")
def record():
    body = json.loads(request.get_data())
    raw_key = request.headers["Authorization"].partition(" ")[2]
    conn = _connection()
    user_id, feature_id, sub_id, period_start, period_end, limit = conn.execute(
        KEY_AND_ENTITLEMENT, {"code": body["feature"], "hash": hashlib.sha256(raw_key.encode()).hexdigest()}
    ).fetchone()
    at = datetime.now(timezone.utc)
    if sub_id is None:
        period_start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        period_end = period_start + timedelta(days=31)
    row = conn.execute(TAKE_AND_LOG, {
        "u": user_id, "f": feature_id, "ws": period_start, "we": period_end, "q": body["quantity"], "at": at,
        "lim": limit, "s": sub_id, "day": at.date(),
    }).fetchone()
    if row is None:
        return Response(json.dumps({"allowed": False}), 403, mimetype="application/json")
    used, bonus, event_id = row
    return Response(json.dumps({"allowed": True, "used": used, "limit": limit + bonus, "event_id": event_id}),
                    201, mimetype="application/json")
