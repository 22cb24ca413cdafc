"""Who may reach every /staff route, generated from the URL map (issue #13): anonymous visitors are sent to
the login, customers get 403, support staff get 403 on the plan editor only, admins everywhere. Each route
must have its rule below: a new /staff route without one fails `test_every_staff_route_has_a_rule`.
"""
from __future__ import annotations

import pytest

from tests.conftest import AuthActions, csrf_from

#: endpoint -> who may use it
ACCESS = {
    "staff.index": "support",
    "staff.audit": "support",
    "staff.customers": "support",
    "staff.customer": "support",
    "staff.customer_section": "support",
    "staff.customer_credit": "support",
    "staff.customer_refund": "support",
    "staff.customer_plan": "support",
    "staff.customer_grace": "support",
    "staff.customer_cancel": "support",
    "staff.emails": "support",
    "staff.email_preview": "support",
    "staff.failures": "support",
    "staff.failure": "support",
    "staff.failure_retry": "support",
    "staff.failure_strategy": "support",
    "staff.failure_resolve": "support",
    "staff.failure_give_up": "support",
    "staff.failures_bulk": "support",
    "staff.revenue": "support",
    "staff.revenue_csv": "support",
    "staff.queues": "support",
    "staff.requeue_job": "support",
    "staff.delete_job": "support",
    "staff.plans": "admin",
    "staff.plan_new": "admin",
    "staff.plan_edit": "admin",
    "staff.plan_preview": "admin",
    "staff.plan_archive": "admin",
    "staff.plan_publish": "admin",
    "staff.plan_hide": "admin",
    "staff.plan_feature": "admin",
    "staff.plan_feature_preview": "admin",
    "staff.plan_feature_tier_add": "admin",
    "staff.plan_feature_tier_remove": "admin",
    "staff.features": "admin",
    "staff.feature_edit": "admin",
}


def _staff_routes(app) -> list[tuple[str, str, str]]:
    """(endpoint, method, a URL for it) for every /staff rule and method."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/staff"):
            continue
        values = {arg: 1 if "int" in type(rule._converters[arg]).__name__.lower() else "x" for arg in rule.arguments}
        with app.test_request_context():
            url = rule.build(values, append_unknown=False)[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((rule.endpoint, method, url))
    return routes


def test_every_staff_route_has_a_rule(app):
    endpoints = {endpoint for endpoint, _, _ in _staff_routes(app)}
    assert endpoints - set(ACCESS) == set(), "add the new /staff routes to ACCESS"
    assert set(ACCESS) - endpoints == set(), "ACCESS names routes that no longer exist"


def test_the_admin_only_views_are_marked_so_and_only_they(app):
    marked = {endpoint for endpoint in ACCESS if getattr(app.view_functions[endpoint], "admin_only", False)}
    assert marked == {endpoint for endpoint, who in ACCESS.items() if who == "admin"}


def _request(client, method: str, url: str, token: str):
    if method == "GET":
        return client.get(url)
    return client.open(url, method=method, data={"csrf_token": token})


@pytest.mark.parametrize("who", ["anonymous", "customer", "support", "admin"])
def test_who_gets_past_the_door_of_every_staff_route(app, catalog, who):
    client = app.test_client()
    logins = {"customer": ("demo@portal.test", "demo-password-1"), "support": ("staff@portal.test", "staff-password-1"),
              "admin": ("admin@portal.test", "admin-password-1")}
    if who in logins:
        assert AuthActions(client).login(*logins[who]).status_code == 302
    token = csrf_from(client, "/login" if who == "anonymous" else "/account")
    wrong = []
    for endpoint, method, url in _staff_routes(app):
        response = _request(client, method, url, token)
        status = response.status_code
        if who == "anonymous":
            ok = status == 302 and "/login" in response.headers.get("Location", "")
        elif who == "customer":
            ok = status == 403
        elif who == "support" and ACCESS[endpoint] == "admin":
            ok = status == 403
        else:  # let in: whatever the page answers to placeholder ids, it is not "forbidden" or "log in"
            ok = status not in (401, 403) and not (status == 302 and "/login" in response.headers.get("Location", ""))
        if not ok:
            wrong.append(f"{method} {url} ({endpoint}): {status}")
    assert wrong == []
