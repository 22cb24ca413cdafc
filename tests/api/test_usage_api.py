"""The usage API over the test client: behaviour per feature type, errors, idempotency."""
from __future__ import annotations

import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionStatus, Transition
from portal.extensions import db
from portal.models import IdempotencyRecord, Plan, UsageCounter, UsageDaily, UsageEvent
from portal.services import api_keys
from portal.services.subscriptions import live_subscription, transition
from tests.conftest import both_databases


def _events() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(UsageEvent))


def test_missing_and_revoked_keys_are_401(client, api, api_user):
    assert client.get("/api/v1/usage").status_code == 401
    assert client.get("/api/v1/usage").json["error"]["code"] == "missing_api_key"
    bad = client.get("/api/v1/usage", headers={"Authorization": "Bearer sp_live_nope"})
    assert bad.status_code == 401 and bad.json["error"]["code"] == "invalid_api_key"
    key = api_keys.list_keys(api_user.id)[0]
    api_keys.revoke(key)
    db.session.commit()
    assert api.get("/usage").status_code == 401


def test_a_revoked_key_is_refused_on_the_very_next_request(api, api_user):
    """Keys are looked up on every call, never cached: revoking stops the key at once."""
    assert api.post("/usage/record", json={"feature": "reports"}).status_code == 201
    api_keys.revoke(api_keys.list_keys(api_user.id)[0])
    db.session.commit()
    refused = api.post("/usage/record", json={"feature": "reports"})
    assert refused.status_code == 401 and refused.json["error"]["code"] == "invalid_api_key"
    assert api.post("/usage/check", json={"feature": "reports"}).status_code == 401
    assert _events() == 1


def test_a_disabled_account_is_refused_on_the_very_next_request(api, api_user):
    assert api.post("/usage/check", json={"feature": "reports"}).status_code == 200
    api_user.is_active_account = False
    db.session.commit()
    assert api.post("/usage/record", json={"feature": "reports"}).status_code == 401
    assert _events() == 0


def test_a_plan_change_applies_on_the_very_next_request(api, api_user):
    assert api.post("/usage/record", json={"feature": "reports", "quantity": 10}).status_code == 201
    assert api.post("/usage/record", json={"feature": "reports"}).status_code == 403
    assert api.post("/usage/check", json={"feature": "dark_mode"}).status_code == 403
    pro = db.session.scalar(sa.select(Plan).where(Plan.code == "pro"))
    transition(live_subscription(api_user.id), Transition.CHANGE_PLAN, reason="upgrade", plan_id=pro.id)
    db.session.commit()
    upgraded = api.post("/usage/record", json={"feature": "reports"})
    assert upgraded.status_code == 201 and upgraded.json["used"] == 11 and upgraded.json["limit"] == 1000
    assert api.post("/usage/check", json={"feature": "dark_mode"}).status_code == 200


@both_databases
def test_events_daily_totals_and_counters_stay_in_step(api):
    """Accepted records write an event, the day's total and the counter; refusals write none of them.

    On PostgreSQL the counter, event and daily total are written by one statement, on SQLite by
    several: both must give the same rows. Covers bounded, unbounded, keyed, refused and
    more-than-the-limit-at-once records.
    """
    def record(feature, quantity, key=None):
        headers = {"Idempotency-Key": key} if key else {}
        return api.post("/usage/record", json={"feature": feature, "quantity": quantity}, headers=headers)

    assert record("reports", 3).status_code == 201  # QUOTA: the conditional upsert
    usage_calls = record("api_calls", 7)  # USAGE: never refused, priced
    assert usage_calls.status_code == 201 and usage_calls.json["cost"] == 2  # 2 beyond 5 free × $0.01
    keyed = record("reports", 2, key="a")
    assert keyed.status_code == 201 and keyed.json["used"] == 5
    assert record("reports", 6, key="b").status_code == 403  # its event is inserted, then deleted
    assert record("reports", 6).status_code == 403
    assert record("reports", 11).status_code == 403  # more than the limit at once: the two-step path
    assert record("reports", 2, key="a").get_data() == keyed.get_data()
    assert record("reports", 5).json["remaining"] == 0

    def totals(model, column):
        rows = db.session.execute(sa.select(model.feature_id, sa.func.sum(column)).group_by(model.feature_id))
        return dict(rows.all())

    events = totals(UsageEvent, UsageEvent.quantity)
    assert events == totals(UsageDaily, UsageDaily.quantity) == totals(UsageCounter, UsageCounter.used)
    assert sorted(events.values()) == [7, 10]
    assert db.session.scalars(sa.select(UsageEvent.idempotency_key).where(UsageEvent.idempotency_key.is_not(None))
                              ).all() == ["a"]


def test_quota_record_then_refuse_with_upgrade_options(api):
    ok = api.post("/usage/record", json={"feature": "reports", "quantity": 7})
    assert ok.status_code == 201
    assert ok.json.items() >= {"allowed": True, "feature": "reports", "type": "QUOTA", "used": 7, "limit": 10,
                              "remaining": 3}.items()
    refused = api.post("/usage/record", json={"feature": "reports", "quantity": 4})
    assert refused.status_code == 403
    body = refused.json
    assert body["allowed"] is False and body["error"]["code"] == "quota_exceeded"
    assert [p["code"] for p in body["plans"]] == ["pro"] and body["upgrade_url"].endswith("/plans")
    assert _events() == 1
    assert api.post("/usage/check", json={"feature": "reports", "quantity": 3}).status_code == 200
    assert api.post("/usage/check", json={"feature": "reports", "quantity": 4}).status_code == 403
    assert db.session.scalar(sa.select(UsageCounter.used)) == 7  # check changed nothing


def test_rate_window_full_is_429_with_retry_after(api, clock):
    for _ in range(10):
        assert api.post("/usage/record", json={"feature": "pings"}).status_code == 201
    clock.advance(minutes=30)  # 09:30 → the hour window ends at 10:00
    full = api.post("/usage/record", json={"feature": "pings"})
    assert full.status_code == 429 and full.headers["Retry-After"] == "1800"
    assert full.json["error"]["code"] == "rate_limited" and full.json["retry_after"] == 1800
    assert api.post("/usage/check", json={"feature": "pings"}).status_code == 429
    clock.advance(minutes=30)
    assert api.post("/usage/record", json={"feature": "pings"}).status_code == 201


def test_boolean_off_is_403_with_the_plans_that_include_it(api):
    response = api.post("/usage/check", json={"feature": "dark_mode"})
    assert response.status_code == 403
    assert response.json["error"]["code"] == "feature_not_in_plan"
    assert [p["code"] for p in response.json["plans"]] == ["pro"]


def test_usage_features_always_allowed_and_report_cost(api):
    response = api.post("/usage/record", json={"feature": "api_calls", "quantity": 105})
    assert response.status_code == 201
    assert response.json["cost"] == 100 and response.json["currency"] == "USD"  # 100 beyond 5 free × $0.01


def test_replay_returns_the_first_answer_byte_for_byte(api):
    first = api.post("/usage/record", json={"feature": "reports", "quantity": 2}, headers={"Idempotency-Key": "k-1"})
    api.post("/usage/record", json={"feature": "reports", "quantity": 1})
    again = api.post("/usage/record", json={"quantity": 2, "feature": "reports"}, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == first.status_code == 201
    assert again.get_data() == first.get_data()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _events() == 2
    conflict = api.post("/usage/record", json={"feature": "reports", "quantity": 3}, headers={"Idempotency-Key": "k-1"})
    assert conflict.status_code == 409 and conflict.json["error"]["code"] == "idempotency_key_reused"


def test_event_id_is_an_idempotency_key_too(api):
    first = api.post("/usage/record", json={"feature": "reports", "event_id": "evt_1"})
    again = api.post("/usage/record", json={"feature": "reports", "event_id": "evt_1"})
    assert first.get_data() == again.get_data() and _events() == 1


def test_a_refusal_is_replayed_but_a_full_rate_window_is_not(api, clock):
    api.post("/usage/record", json={"feature": "reports", "quantity": 10})
    refused = api.post("/usage/record", json={"feature": "reports"}, headers={"Idempotency-Key": "r"})
    assert refused.status_code == 403
    assert api.post("/usage/record", json={"feature": "reports"},
                    headers={"Idempotency-Key": "r"}).get_data() == refused.get_data()
    for _ in range(10):
        api.post("/usage/record", json={"feature": "pings"})
    assert api.post("/usage/record", json={"feature": "pings"}, headers={"Idempotency-Key": "p"}).status_code == 429
    clock.advance(hours=1)
    assert api.post("/usage/record", json={"feature": "pings"}, headers={"Idempotency-Key": "p"}).status_code == 201


def test_bad_input_is_400_with_a_code_and_field_and_writes_nothing(api):
    cases = [
        (b"{not json", "malformed_json", None),
        (b"[1, 2]", "malformed_json", None),
        (b'{"quantity": 1}', "missing_field", "feature"),
        (b'{"feature": "reports", "quantity": "3"}', "invalid_quantity", "quantity"),
        (b'{"feature": "reports", "quantity": 1.5}', "invalid_quantity", "quantity"),
        (b'{"feature": "reports", "quantity": 0}', "invalid_quantity", "quantity"),
        (b'{"feature": "reports", "quantity": -2}', "invalid_quantity", "quantity"),
        (b'{"feature": "reports", "quantity": true}', "invalid_quantity", "quantity"),
        (b'{"feature": "nope", "quantity": 1}', "unknown_feature", "feature"),
        (b'{"feature": "reports", "colour": "red"}', "unknown_field", "colour"),
    ]
    for body, code, field in cases:
        for path in ("/usage/record", "/usage/check"):
            response = api.post(path, data=body, content_type="application/json")
            assert response.status_code == 400, (body, response.json)
            assert response.json["error"]["code"] == code, (body, response.json)
            assert response.json["error"].get("field") == field
            assert response.json["error"]["message"]
    assert _events() == 0
    assert db.session.scalar(sa.select(sa.func.count()).select_from(UsageCounter)) == 0
    assert db.session.scalar(sa.select(sa.func.count()).select_from(IdempotencyRecord)) == 0


def test_oversized_body_is_413(api):
    huge = b'{"feature": "reports", "pad": "' + b"x" * 20_000 + b'"}'
    response = api.post("/usage/record", data=huge, content_type="application/json")
    assert response.status_code == 413 and response.json["error"]["code"] == "payload_too_large"
    assert _events() == 0


def test_usage_summary_lists_every_feature_of_the_plan(api):
    api.post("/usage/record", json={"feature": "reports", "quantity": 4})
    body = api.get("/usage").json
    assert body["plan"] == "free" and body["status"] == "active"
    by_code = {f["feature"]: f for f in body["features"]}
    assert set(by_code) == {"reports", "pings", "dark_mode", "api_calls"}
    assert by_code["reports"].items() >= {"type": "QUOTA", "used": 4, "limit": 10, "remaining": 6, "enabled": True}.items()
    assert by_code["dark_mode"]["enabled"] is False
    assert by_code["pings"]["window"] == "hour" and by_code["pings"]["period_end"].startswith("2026-01-31T10:00")


def test_history_daily_totals_and_bounds(api, clock):
    api.post("/usage/record", json={"feature": "reports", "quantity": 2})
    clock.advance(days=1)
    api.post("/usage/record", json={"feature": "reports", "quantity": 3})
    body = api.get("/usage/history?days=2&feature=reports").json
    assert [d["quantity"] for d in body["features"][0]["days"]] == [2, 3]
    for bad in ("0", "91", "x", "-1"):
        response = api.get(f"/usage/history?days={bad}")
        assert response.status_code == 400 and response.json["error"]["field"] == "days"
    assert api.get("/usage/history?feature=nope").status_code == 400


def test_restrictions_explain_how_to_lift_a_limit(api):
    assert api.get("/usage/restrictions/reports").json["restricted"] is False
    api.post("/usage/record", json={"feature": "reports", "quantity": 10})
    body = api.get("/usage/restrictions/reports").json
    assert body["restricted"] is True and body["reason"]["code"] == "quota_exceeded"
    assert any("upgrade" in step for step in body["how_to_lift"]) and body["plans"][0]["code"] == "pro"
    assert api.get("/usage/restrictions/nope").status_code == 404


def test_past_due_keeps_working_and_expired_falls_back_to_free(api, api_user):
    from portal.models import Plan
    from portal.services.subscriptions import start_subscription

    sub = live_subscription(api_user.id)
    pro = db.session.scalar(sa.select(Plan).where(Plan.code == "pro"))
    transition(sub, Transition.CHANGE_PLAN, reason="test", plan_id=pro.id)
    transition(sub, Transition.PAYMENT_FAILED, reason="card declined")
    db.session.commit()
    response = api.post("/usage/record", json={"feature": "reports", "quantity": 50})
    assert response.status_code == 201 and response.json["limit"] == 1000  # grace: Pro limits still apply
    assert api.get("/subscription").json["status"] == "past_due"
    transition(sub, Transition.EXPIRE, reason="grace ended")
    start_subscription(api_user, db.session.get(Plan, 1), reason="back to Free")
    db.session.commit()
    assert live_subscription(api_user.id).status is SubscriptionStatus.ACTIVE
    assert api.post("/usage/check", json={"feature": "dark_mode"}).status_code == 403
    assert api.get("/subscription").json["plan"] == "free"


def test_plans_and_subscription(api):
    plans = api.get("/plans").json["plans"]
    assert [p["code"] for p in plans] == ["free", "pro"]
    assert {f["feature"]: f["limit"] for f in plans[0]["features"]}["reports"] == 10
    sub = api.get("/subscription").json
    assert sub["plan"] == "free" and sub["interval"] == "1 month"


def test_openapi_document_is_public_and_valid(client):
    from openapi_spec_validator import validate

    spec = client.get("/api/v1/openapi.json").json
    validate(spec)
    assert set(spec["paths"]) >= {"/usage", "/usage/check", "/usage/record", "/usage/history",
                                  "/usage/restrictions/{feature}", "/subscription", "/plans"}
    record = spec["paths"]["/usage/record"]["post"]
    assert set(record["responses"]) == {"201", "400", "401", "403", "409", "413", "429"}
    assert record["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RecordRequest")


def test_keys_are_honoured_for_at_least_24_hours_and_never_record_twice(api, clock):
    """The stored answer outlives 24 h; after the purge job drops it, the event's own key still holds."""
    from worker.maintenance import purge_expired

    first = api.post("/usage/record", json={"feature": "reports"}, headers={"Idempotency-Key": "day-old"})
    clock.advance(hours=25)
    purge_expired()
    db.session.commit()
    again = api.post("/usage/record", json={"feature": "reports"}, headers={"Idempotency-Key": "day-old"})
    assert again.get_data() == first.get_data()  # byte for byte, a day later
    clock.advance(days=3)
    assert purge_expired()["idempotency_records"] == 1
    db.session.commit()
    late = api.post("/usage/record", json={"feature": "reports"}, headers={"Idempotency-Key": "day-old"})
    assert late.status_code == 201 and late.json["replayed"] is True
    assert _events() == 1
