"""Probes: /healthz says the process is up; /readyz checks the database and Redis for real."""


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_readyz_reports_unreachable_redis(client):
    # The test config points REDIS_URL at a closed port: not ready, and it says why.
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["database"] == "ok"
    assert response.json["checks"]["redis"].startswith("error")


def test_unknown_page_is_a_404_page(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404 and "404" in response.get_data(as_text=True)
