"""Every state-changing form route refuses a POST without a CSRF token (400), whatever it is."""
from __future__ import annotations

from werkzeug.routing import IntegerConverter

#: Machine-to-machine endpoints authenticate otherwise (API keys, Stripe signatures).
EXEMPT_BLUEPRINTS = {"api", "webhooks", "health"}


def _post_routes(app):
    for rule in app.url_map.iter_rules():
        if "POST" not in rule.methods or rule.endpoint.split(".")[0] in EXEMPT_BLUEPRINTS:
            continue
        values = {}
        for name, converter in rule._converters.items():
            values[name] = 1 if isinstance(converter, IntegerConverter) else "x1"
        yield rule.endpoint, rule.build(values, append_unknown=False)[1]


def test_every_post_without_csrf_token_is_400(app, alice_client):
    routes = list(_post_routes(app))
    assert len(routes) >= 4, routes  # login, register, logout, password at least
    for endpoint, url in routes:
        response = alice_client.post(url, data={"anything": "1"})
        assert response.status_code == 400, f"{endpoint} {url} answered {response.status_code}"


def test_every_htmx_post_without_csrf_header_is_400(app, alice_client):
    for endpoint, url in _post_routes(app):
        response = alice_client.post(url, headers={"HX-Request": "true"})
        assert response.status_code == 400, f"{endpoint} {url} answered {response.status_code}"
