"""The published contract: the OpenAPI document describes every endpoint, and a
property-based fuzzer (schemathesis) finds no answer outside it.

The fuzz runs against the real app (its Redis and ledger), with the development token
and without one. It checks: no 5xx; every status code, content type and body is the
documented one; schema-invalid input is refused; a secured operation refuses a
request without its token. Not checked: that every schema-valid input is accepted,
because some rules cannot be written in JSON Schema (a cursor must be one the server
handed out; a callback URL must pass the SSRF policy; text must be storable).
"""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from vx11 import create_app
from vx11.gateway.api.openapi import DOCS_PATH, SPEC_PATH, error_codes

CASES = {"authenticated": 0, "anonymous": 0}
"""Cases run, reported at the end of the test session (tests/conftest.py)."""
PUBLIC = {"/health"}
TOKEN = {"X-VX11-Token": "vx11-test-token"}


@pytest.fixture(scope="module")
def fuzz_app(redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    task_types = tmp / "task-types.toml"  # a declared task type is fuzzed too
    task_types.write_text('[perl]\ninterpreter = ["perl"]\nmain = "main.pl"\n')
    return create_app(
        {
            "task_types_file": str(task_types),
            "redis_url": redis_server.url,
            "data_dir": str(tmp / "data"),
            "sandbox_root": str(tmp / "sandbox"),
            "database_url": f"sqlite:///{tmp / 'ledger.db'}",
            "probe_timeout": 0.2,  # /vx11/status waits for no worker that long
            "rate_limit_per_second": 0,  # fuzz the endpoints, not the limiter
        }
    )


@pytest.fixture(scope="module")
def contract_schema(fuzz_app):
    return schemathesis.openapi.from_wsgi(SPEC_PATH, fuzz_app)


FUZZ = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: a failure reproduces
    database=None,
)
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def fuzz(contract_schema, kind: str, run) -> None:
    """``run(case)`` for each operation's generated cases, valid and invalid."""
    for result in contract_schema.get_all_operations():
        operation = result.ok()
        for mode in MODES:

            @given(case=operation.as_strategy(generation_mode=mode))
            @FUZZ
            def one(case):
                CASES[kind] += 1
                run(case)

            try:
                one()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label


def headers_made_invalid(case) -> bool:
    components = case.meta.components if case.meta else {}
    return any(
        getattr(location, "value", location) == "header" and info.mode is GenerationMode.NEGATIVE
        for location, info in components.items()
    )


def test_authenticated_requests_get_only_documented_answers(contract_schema):
    def run(case):
        if not headers_made_invalid(case):  # else the case is about a bad header
            case.headers = {**(case.headers or {}), **TOKEN}
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    fuzz(contract_schema, "authenticated", run)


def test_requests_without_a_valid_token_are_refused_except_health(contract_schema):
    def run(case):
        response = case.call()
        if case.path in PUBLIC:
            assert response.status_code in (200, 405), response.text
            return
        assert response.status_code == 401, (case.method, case.path, response.text)
        assert response.json()["error"] in ("auth_required", "invalid_token")
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    fuzz(contract_schema, "anonymous", run)


# --- the document itself ---------------------------------------------------------------------


@pytest.fixture
def spec(client) -> dict:
    response = client.get(SPEC_PATH)
    assert response.status_code == 200
    return response.json


def test_every_route_is_documented(app, spec):
    documented = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static",) or rule.rule.startswith((DOCS_PATH, SPEC_PATH)):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?(\w+)>", r"{\1}", rule.rule)  # <path:path>: {path}
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, f"{method} {rule.rule} is not in the spec"


def test_every_secured_operation_names_its_scope_and_auth_errors(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if path in PUBLIC:
                assert "security" not in operation
                continue
            assert operation["security"] == [{"token": []}], (method, path)
            assert operation["x-vx11-scope"] in ("admin", "window", "spawn", "read")
            assert {"401", "403", "503"} <= set(operation["responses"]), (method, path)
    assert spec["components"]["securitySchemes"]["token"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-VX11-Token",
    }


def test_fields_carry_this_deployments_limits(test_config):
    app = create_app({**test_config, "spawn_max_ttl": 77, "memory_limit_mb_max": 333})
    spec = app.test_client().get(SPEC_PATH).json
    request = spec["components"]["schemas"]["SpawnRequest"]["properties"]
    assert request["ttl_seconds"]["maximum"] == 77
    assert request["memory_limit_mb"]["maximum"] == 333
    assert request["task_type"]["enum"] == ["python", "shell", "bash"]
    window = spec["components"]["schemas"]["WindowOpenRequest"]["properties"]
    assert window["target"]["enum"] == list(app.extensions["vx11"].settings.window_targets)


def test_every_error_code_is_documented(spec):
    error = spec["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["enum"] == error_codes()
    for code in ("insufficient_scope", "invalid_token", "rate_limited", "quota_exceeded"):
        assert code in error["enum"]


def test_the_docs_page_is_served_without_a_cdn(client):
    page = client.get(DOCS_PATH + "/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert SPEC_PATH in html
    assert "https://" not in html.replace("https://github.com", "")
    bundle = client.get(DOCS_PATH + "/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.data) > 100_000


def test_real_records_conform_to_their_schemas(fuzz_app, contract_schema):
    """The fuzz mostly meets unknown ids; these answers carry real records."""
    client = fuzz_app.test_client()

    def check(label: str, response):
        operation = contract_schema.find_operation_by_label(label)
        assert response.status_code < 300, (label, response.json)
        operation.validate_response(response)

    window = {"target": "spawner", "ttl_seconds": 60}
    check("POST /vx11/window/open", client.post("/vx11/window/open", json=window, headers=TOKEN))
    spawn = {"task_type": "shell", "code": "echo hi", "correlation_id": "c-1", "metadata": {}}
    accepted = client.post("/vx11/spawn", json=spawn, headers=TOKEN)
    check("POST /vx11/spawn", accepted)
    spawn_id = accepted.json["spawn_id"]
    check("GET /vx11/spawn/{ident}", client.get(f"/vx11/spawn/{spawn_id}", headers=TOKEN))
    check(
        "POST /vx11/spawn/{ident}/cancel",
        client.post(f"/vx11/spawn/{spawn_id}/cancel", headers=TOKEN),
    )
    check("GET /vx11/result/{ident}", client.get(f"/vx11/result/{spawn_id}", headers=TOKEN))
    check("GET /vx11/spawns", client.get("/vx11/spawns?limit=1", headers=TOKEN))
    check("GET /vx11/audit", client.get("/vx11/audit", headers=TOKEN))
    token = client.post("/vx11/tokens", json={"label": "c", "scopes": ["read"]}, headers=TOKEN)
    check("POST /vx11/tokens", token)
    check("GET /vx11/tokens", client.get("/vx11/tokens", headers=TOKEN))
    check(
        "GET /vx11/token", client.get("/vx11/token", headers={"X-VX11-Token": token.json["token"]})
    )
    check("GET /vx11/status", client.get("/vx11/status", headers=TOKEN))
    closing = {"target": "spawner", "cancel_running": True}
    check("POST /vx11/window/close", client.post("/vx11/window/close", json=closing, headers=TOKEN))
    refused = client.post("/vx11/spawn", json=spawn, headers=TOKEN)
    assert refused.json["error"] == "off_by_policy"
    check("POST /vx11/spawn", refused)
