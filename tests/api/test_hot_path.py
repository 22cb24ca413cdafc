"""The usage API's hot path: one query for the key and the entitlement, one atomic writing statement.

`record` without a key is the call client products make on every use, so on PostgreSQL it is
two round trips: the key with the customer's entitlement, then one statement that takes the
units and logs the event and the day's total, each committing by itself (no BEGIN/COMMIT
round trips). That is only safe while the write is a single statement; these tests fail if a
second writing statement, or a separate key lookup, creeps back into the path.
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from portal.extensions import db
from portal.models import UsageEvent
from portal.services import usage
from tests.conftest import both_databases

postgres_only = pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)
_WRITES = ("INSERT", "UPDATE", "DELETE", "WITH")


@pytest.fixture
def statements(app):
    """Every statement the app runs, with whether its connection was in autocommit mode."""
    seen: list[tuple[str, bool]] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, bool(getattr(conn.connection.dbapi_connection, "autocommit", False))))

    event.listen(db.engine, "before_cursor_execute", before)
    yield seen
    event.remove(db.engine, "before_cursor_execute", before)


def _writes(seen: list[tuple[str, bool]]) -> list[str]:
    return [sql for sql, _ in seen if sql.lstrip().upper().startswith(_WRITES)]


@postgres_only
def test_an_unkeyed_record_is_one_query_and_one_autocommitted_write(api, api_user, statements):
    assert api.post("/usage/record", json={"feature": "reports"}).status_code == 201  # notes the key's use
    usage.add_prepaid_units(api_user.id, "reports", 20)
    db.session.commit()
    cases = [
        ({"feature": "reports", "quantity": 2}, 201),  # QUOTA with room
        ({"feature": "reports", "quantity": 15}, 201),  # more than the limit at once: prepaid units
        ({"feature": "pings"}, 201),  # RATE
        ({"feature": "api_calls", "quantity": 3}, 201),  # USAGE, priced
    ]
    for body, status in cases:
        statements.clear()
        response = api.post("/usage/record", json=body)
        assert response.status_code == status, (body, response.json)
        assert len(statements) == 2, (body, [sql[:60] for sql, _ in statements])
        assert len(_writes(statements)) == 1, body
        assert all(autocommit for _, autocommit in statements), body
    statements.clear()
    refused = api.post("/usage/record", json={"feature": "reports", "quantity": 50})
    assert refused.status_code == 403
    assert len(_writes(statements)) == 1 and all(autocommit for _, autocommit in statements)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(UsageEvent)) == 5


@postgres_only
def test_a_keyed_record_runs_in_one_transaction(api, statements):
    """With a key the claim, the event and the stored answer must commit together."""
    assert api.post("/usage/record", json={"feature": "reports"}).status_code == 201
    statements.clear()
    first = api.post("/usage/record", json={"feature": "reports"}, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    assert len(_writes(statements)) >= 3  # claim, event, take-and-log, stored answer
    assert not any(autocommit for _, autocommit in statements)
    again = api.post("/usage/record", json={"feature": "reports"}, headers={"Idempotency-Key": "k-1"})
    assert again.get_data() == first.get_data()


@postgres_only
def test_check_reads_without_a_transaction_and_writes_nothing(api, statements):
    assert api.post("/usage/check", json={"feature": "reports"}).status_code == 200  # notes the key's use
    statements.clear()
    assert api.post("/usage/check", json={"feature": "reports", "quantity": 3}).status_code == 200
    assert _writes(statements) == [] and all(autocommit for _, autocommit in statements)


@both_databases
def test_a_bad_key_is_401_before_a_bad_body_is_400(client, api, api_key):
    bodies = [b"{not json", b'{"quantity": 0}', b'{"feature": "nope"}', b'{"feature": "reports", "pad": "'
              + b"x" * 20_000 + b'"}']
    for path in ("/api/v1/usage/record", "/api/v1/usage/check"):
        for body in bodies:
            for headers, code in ((None, "missing_api_key"), ({"Authorization": "Bearer sp_live_nope"},
                                                               "invalid_api_key")):
                response = client.post(path, data=body, content_type="application/json", headers=headers)
                assert response.status_code == 401 and response.json["error"]["code"] == code, (path, body)
            good_key = client.post(path, data=body, content_type="application/json", headers=api.headers)
            assert good_key.status_code in (400, 413), (path, body, good_key.json)


def test_the_api_ignores_the_browser_session(client, auth, api_user, api):
    """A signed-in browser cookie is no API credential, and API answers never set a cookie."""
    auth.login("client@example.com", "a long password")
    assert client.get("/usage").status_code == 200  # the cookie session works for pages
    no_key = client.post("/api/v1/usage/record", json={"feature": "reports"})
    assert no_key.status_code == 401 and no_key.json["error"]["code"] == "missing_api_key"
    keyed = client.post("/api/v1/usage/record", json={"feature": "reports"}, headers=api.headers)
    assert keyed.status_code == 201
    for response in (no_key, keyed):
        assert "Set-Cookie" not in response.headers and "Cookie" not in response.headers.get("Vary", "")
