"""schemathesis against the live OpenAPI document: no 5xx, every answer matches the schema.

The operations come from the document the running app serves; schemathesis generates requests
from it (bounded: a fixed number of examples per operation, derandomized) and checks every answer.
"""
from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


def test_api_conforms_to_its_schema(app, api_key, api_catalog):
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    headers = {"Authorization": f"Bearer {api_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    exercised = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def run(case):
            case.call_and_validate(headers=headers, checks=CHECKS)

        run()
        exercised.append(f"{operation.method.upper()} {operation.path}")
    assert "POST /usage/record" in exercised and "GET /usage/history" in exercised
