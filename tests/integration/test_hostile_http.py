"""Hostile HTTP against the gateway app itself (Flask test client, real Redis): every
answer is a clear 4xx with the JSON error shape, never a 500, and nothing a refused
request carried reaches the ledger. The same requests through real gunicorn are in
tests/e2e/test_hostile_http.py."""

from __future__ import annotations

import gzip
import io
import json

import pytest

from vx11 import create_app
from vx11.gateway.api.body import MAX_DEPTH, MAX_TARGET_BYTES

LIMIT = 1 << 20
"""The body limit (VX11_MAX_BODY_BYTES, its default)."""
SPAWN = {"task_type": "python", "code": "print('MVP works')", "ttl_seconds": 30}
CHUNKED = {"Transfer-Encoding": "chunked"}
SERVER_TERMINATES_INPUT = {"wsgi.input_terminated": True}
"""What gunicorn (and any server that de-chunks a body) puts in the WSGI environ."""


@pytest.fixture
def test_config(test_config):
    return {**test_config, "max_body_bytes": LIMIT}


@pytest.fixture
def window(client, auth):
    response = client.post(
        "/vx11/window/open", json={"target": "spawner", "ttl_seconds": 600}, headers=auth
    )
    assert response.status_code == 200, response.json


def spawn_raw(client, auth, body: bytes | None, headers=None, **kwargs):
    """POST /vx11/spawn with ``body`` as it is, no content type unless one is given."""
    return client.post("/vx11/spawn", data=body, headers={**auth, **(headers or {})}, **kwargs)


def spawn_json(client, auth, **fields):
    return spawn_raw(client, auth, json.dumps({**SPAWN, **fields}).encode())


def stored_spawns(client, auth) -> list[dict]:
    response = client.get("/vx11/spawns", headers=auth)
    assert response.status_code == 200, response.json
    return response.json["spawns"]


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.json["error"] == code, response.json
    assert response.json["message"]
    return response.json


# --- oversized bodies --------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_naming_the_limit(client, auth, window):
    body = json.dumps({**SPAWN, "code": "#" * LIMIT}).encode()
    error = assert_error(spawn_raw(client, auth, body), 413, "payload_too_large")
    assert str(LIMIT) in error["message"]
    assert stored_spawns(client, auth) == []


def test_a_content_length_over_the_limit_is_413_whatever_the_body(client, auth, window):
    lying = {"CONTENT_LENGTH": str(LIMIT + 1)}
    small = json.dumps(SPAWN).encode()
    response = spawn_raw(
        client, auth, None, input_stream=io.BytesIO(small), environ_overrides=lying
    )
    assert_error(response, 413, "payload_too_large")
    assert stored_spawns(client, auth) == []


def test_a_content_length_over_the_limit_is_413_before_authentication(client):
    response = client.post(
        "/vx11/spawn", input_stream=io.BytesIO(b"{}"),
        environ_overrides={"CONTENT_LENGTH": str(1 << 40)},
    )  # fmt: skip
    assert_error(response, 413, "payload_too_large")


def test_a_chunked_body_over_the_limit_is_413_not_cut_to_the_limit(client, auth, window):
    # Valid JSON padded past the limit: read up to the limit and no further, it would
    # still parse, and be accepted.
    body = json.dumps(SPAWN).encode() + b" " * LIMIT
    response = client.post(
        "/vx11/spawn", input_stream=io.BytesIO(body), headers={**auth, **CHUNKED},
        environ_overrides=SERVER_TERMINATES_INPUT,
    )  # fmt: skip
    assert_error(response, 413, "payload_too_large")
    assert stored_spawns(client, auth) == []


def test_a_chunked_body_within_the_limit_is_read_whole(client, auth, window):
    body = json.dumps(SPAWN).encode() + b" " * (LIMIT - 1000)
    response = client.post(
        "/vx11/spawn", input_stream=io.BytesIO(body), headers={**auth, **CHUNKED},
        environ_overrides=SERVER_TERMINATES_INPUT,
    )  # fmt: skip
    assert response.status_code == 200, response.json
    assert response.json["status"] == "QUEUED"


def test_a_content_length_longer_than_the_body_is_400(client, auth, window):
    body = json.dumps(SPAWN).encode()
    response = spawn_raw(
        client, auth, None, input_stream=io.BytesIO(body),
        environ_overrides={"CONTENT_LENGTH": str(len(body) + 100)},
    )  # fmt: skip
    assert_error(response, 400, "bad_request")
    assert stored_spawns(client, auth) == []


def test_a_content_length_shorter_than_the_body_reads_that_much_only(client, auth, window):
    body = json.dumps(SPAWN).encode()
    response = spawn_raw(
        client, auth, None, input_stream=io.BytesIO(body),
        environ_overrides={"CONTENT_LENGTH": "10"},
    )  # fmt: skip
    assert_error(response, 400, "bad_json")
    assert stored_spawns(client, auth) == []


# --- deep nesting ------------------------------------------------------------------------


def nested_metadata(depth: int) -> bytes:
    """A spawn whose metadata holds ``depth`` arrays one in another."""
    head = json.dumps({**SPAWN, "metadata": {"a": None}})[: -len("null}}")]
    return (head + "[" * depth + "]" * depth + "}}").encode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000, id="100k-arrays"),
        pytest.param(b'{"a":' * 100_000, id="100k-objects"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="100k-arrays-closed"),
        *(pytest.param(nested_metadata(d), id=f"metadata-{d}") for d in (500, 980, 1000, 5000)),
        pytest.param(nested_metadata(MAX_DEPTH - 1), id="metadata-just-too-deep"),
    ],
)
def test_deep_nesting_is_400_never_a_500(client, auth, window, body):
    error = assert_error(spawn_raw(client, auth, body), 400, "bad_json")
    assert f"deeper than {MAX_DEPTH}" in error["message"]
    assert stored_spawns(client, auth) == []


def test_nesting_up_to_the_limit_is_accepted(client, auth, window):
    # The body is level 1, metadata 2, then MAX_DEPTH - 2 arrays.
    response = spawn_raw(client, auth, nested_metadata(MAX_DEPTH - 2))
    assert response.status_code == 200, response.json
    (stored,) = stored_spawns(client, auth)
    assert json.dumps(stored["metadata"]["a"]).count("[") == MAX_DEPTH - 2


# --- content types -----------------------------------------------------------------------

WINDOW = json.dumps({"target": "spawner", "ttl_seconds": 60}).encode()


@pytest.mark.parametrize(
    "content_type",
    [
        None,  # curl --data-binary with -H 'Content-Type:'
        "application/x-www-form-urlencoded",  # curl -d, as in the README
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON; charset=UTF-8",
        "application/vnd.api+json",
        "application/merge-patch+json",
        "text/plain",
        "text/plain; charset=utf8",
    ],
)
def test_json_is_read_under_the_json_text_and_form_content_types(client, auth, content_type):
    response = client.post(
        "/vx11/window/open", data=WINDOW, content_type=content_type, headers=auth
    )
    assert response.status_code == 200, response.json
    assert response.json["is_open"] is True


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary=x",
        "application/xml",
        "text/xml",
        "text/html",
        "application/octet-stream",
        "application/jsonp",
        "image/png",
        "application/json; charset=latin-1",
        "text/plain; charset=iso-8859-1",
        "application/x-www-form-urlencoded; charset=utf-16",
    ],
)
def test_other_content_types_and_charsets_are_415_saying_what_is_accepted(
    client, auth, content_type
):
    response = client.post(
        "/vx11/window/open", data=WINDOW, content_type=content_type, headers=auth
    )
    error = assert_error(response, 415, "unsupported_media_type")
    assert "application/json" in error["message"] and "UTF-8" in error["message"]
    status = client.get("/vx11/window/status/spawner", headers=auth)
    assert status.json["is_open"] is False


def test_a_compressed_body_is_415(client, auth):
    response = client.post(
        "/vx11/window/open", data=gzip.compress(WINDOW), content_type="application/json",
        headers={**auth, "Content-Encoding": "gzip"},
    )  # fmt: skip
    error = assert_error(response, 415, "unsupported_media_type")
    assert "Content-Encoding" in error["message"]


def test_a_post_without_a_body_is_not_refused_for_its_content_type(client, auth):
    response = client.post("/vx11/spawn", content_type="text/html", headers=auth)
    error = assert_error(response, 422, "validation_error")
    assert set(error["fields"]) == {"task_type", "code"}


# --- text that is not UTF-8, or not storable ---------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            '{"task_type":"python","code":"print(\'é\')"}'.encode("latin-1"), id="latin-1"
        ),
        pytest.param(b'{"task_type":"python","code":"print(\'\xc0\xaf\')"}', id="overlong"),
        pytest.param(b'{"task_type":"python","code":"print(\'\xed\xa0\x80\')"}', id="surrogate"),
        pytest.param(json.dumps(SPAWN).encode("utf-16"), id="utf-16"),
        pytest.param(json.dumps(SPAWN).encode("utf-32"), id="utf-32"),
        pytest.param(b'{"task_type":"python","code":"\xff"}', id="ff-byte"),
    ],
)
def test_a_body_that_is_not_utf8_is_400(client, auth, window, body):
    error = assert_error(spawn_raw(client, auth, body), 400, "bad_json")
    assert "UTF-8" in error["message"]
    assert stored_spawns(client, auth) == []


UNSTORABLE = {"lone-high-surrogate": "\ud800", "lone-low-surrogate": "\udfff", "nul": "\x00"}


@pytest.mark.parametrize("text", UNSTORABLE.values(), ids=UNSTORABLE.keys())
@pytest.mark.parametrize(
    ("field", "place"),
    [
        pytest.param("code", lambda t: {"code": f"print(1) # {t}"}, id="code"),
        pytest.param("stdin", lambda t: {"stdin": f"line{t}"}, id="stdin"),
        pytest.param("metadata", lambda t: {"metadata": {f"key{t}": "v"}}, id="metadata-key"),
        pytest.param("metadata", lambda t: {"metadata": {"k": f"value{t}"}}, id="metadata-value"),
        pytest.param(
            "metadata", lambda t: {"metadata": {"k": [{"deeper": t}]}}, id="metadata-deep"
        ),
        pytest.param(
            "correlation_id", lambda t: {"correlation_id": f"job-{t}"}, id="correlation_id"
        ),
        pytest.param("args", lambda t: {"args": ["ok", t]}, id="args"),
    ],
)
def test_unstorable_text_in_any_field_is_422_naming_it_and_never_stored(
    client, auth, window, text, field, place
):
    # json.dumps writes a lone surrogate as the \ud800 escape a client would send.
    error = assert_error(spawn_json(client, auth, **place(text)), 422, "validation_error")
    assert list(error["fields"]) == [field]
    assert stored_spawns(client, auth) == []


def test_an_unstorable_field_name_is_echoed_escaped(client, auth, window):
    error = assert_error(spawn_json(client, auth, **{"x\ud800": 1}), 422, "validation_error")
    assert list(error["fields"]) == ["x\\ud800"]


def test_unstorable_text_in_a_window_reason_is_422_and_opens_nothing(client, auth):
    body = {"target": "spawner", "ttl_seconds": 60, "reason": "deploy \ud800"}
    response = client.post("/vx11/window/open", data=json.dumps(body), headers=auth)
    assert_error(response, 422, "validation_error")
    assert client.get("/vx11/window/status/spawner", headers=auth).json["is_open"] is False


def test_a_surrogate_pair_is_ordinary_text_and_read_back_intact(client, auth, window):
    smile = "\U0001f600"
    body = json.dumps({**SPAWN, "code": f"print('{smile}')", "metadata": {smile: smile}})
    assert "\\ud83d\\ude00" in body  # sent as the escaped pair
    response = spawn_raw(client, auth, body.encode())
    assert response.status_code == 200, response.json
    record = client.get(f"/vx11/spawn/{response.json['spawn_id']}", headers=auth).json
    assert record["metadata"] == {smile: smile}


# --- correlation_id and response headers -------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "abc\r\nSet-Cookie: session=evil",
        "abc\rdef",
        "abc\ndef",
        "\nabc",
        "abc\x00",
        "abc\u2028",
        "abc\u2029",
        "abc\u0085",
        "abc\x0b",
        "abc def",
        "abc\n",
    ],
)
def test_a_correlation_id_with_line_breaks_or_control_characters_is_422(
    client, auth, window, value
):
    error = assert_error(spawn_json(client, auth, correlation_id=value), 422, "validation_error")
    assert "correlation_id" in error["fields"]
    assert stored_spawns(client, auth) == []


def test_a_correlation_id_filter_with_line_breaks_is_422(client, auth):
    response = client.get("/vx11/spawns?correlation_id=abc%0D%0ASet-Cookie:%20x", headers=auth)
    assert_error(response, 422, "validation_error")


def test_no_response_header_echoes_what_the_client_sent(client, auth, window):
    marker = "m4rk3r"
    sent = {
        **auth,
        "Idempotency-Key": f"key-{marker}",
        "X-Request-Id": marker,
        "X-Forwarded-Host": marker,
        "Origin": f"https://{marker}.example",
        "Referer": f"https://{marker}.example/",
    }
    body = json.dumps({**SPAWN, "correlation_id": f"cid-{marker}", "metadata": {marker: marker}})
    responses = [
        client.post("/vx11/spawn", data=body, headers=sent),
        client.post("/vx11/spawn", data=body, headers=sent),  # the replay
        client.get(f"/vx11/spawns?correlation_id=cid-{marker}", headers=sent),
        client.get(f"/vx11/spawn/{marker}", headers=sent),
        client.get(f"/vx11/{marker}/", headers=sent),
        client.get(f"/vx11/spawns/?x={marker}", headers=sent),
        client.post("/vx11/spawn", data=body, headers={**sent, "X-VX11-Token": marker}),
        client.post("/vx11/spawn", data=body, headers={**sent, "Content-Type": marker + "/x"}),
    ]
    assert responses[1].headers.get("Idempotent-Replayed") == "true"
    for response in responses:
        for name, value in response.headers.items():
            assert marker not in name.lower() and marker not in value.lower(), (name, value)


# --- request targets ---------------------------------------------------------------------


def test_a_huge_query_string_is_414_before_authentication(client):
    response = client.get("/vx11/spawns?limit=" + "1" * 100_000)
    error = assert_error(response, 414, "uri_too_long")
    assert str(MAX_TARGET_BYTES) in error["message"]


def test_a_huge_path_is_414(client, auth):
    assert_error(client.get("/vx11/spawn/" + "a" * 10_000, headers=auth), 414, "uri_too_long")


def test_a_query_string_within_the_cap_is_handled_as_usual(client, auth):
    response = client.get("/vx11/spawns?limit=" + "1" * (MAX_TARGET_BYTES - 100), headers=auth)
    error = assert_error(response, 422, "validation_error")
    assert "limit" in error["fields"]


def test_the_gateway_itself_caps_the_request_target(test_config):
    client = create_app(test_config).test_client()
    assert client.get("/vx11/spawns?limit=" + "1" * 100_000).status_code == 414


# --- JSON that only some parsers accept --------------------------------------------------


SPAWN_HEAD = '{"task_type":"python","code":"print(1)"'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(SPAWN_HEAD + ',"code":"print(2)"}', "duplicate key", id="duplicate-key"),
        pytest.param(SPAWN_HEAD + ',"metadata":{"a":NaN}}', "NaN", id="NaN"),
        pytest.param(SPAWN_HEAD + ',"metadata":{"a":Infinity}}', "Infinity", id="Infinity"),
        pytest.param(SPAWN_HEAD + ',"metadata":{"a":-Infinity}}', "-Infinity", id="-Infinity"),
        pytest.param(SPAWN_HEAD + ',"metadata":{"a":1e999}}', "out of range", id="1e999"),
        pytest.param(SPAWN_HEAD + ',"metadata":{"a":' + "9" * 5000 + "}}", "digits", id="bigint"),
        pytest.param('["task_type","python"]', "JSON object", id="array"),
        pytest.param('"just a string"', "JSON object", id="string"),
        pytest.param(SPAWN_HEAD + '} {"code":"x"}', "Extra data", id="two-documents"),
    ],
)
def test_json_that_parsers_disagree_on_is_400(client, auth, window, body, reason):
    error = assert_error(spawn_raw(client, auth, body.encode()), 400, "bad_json")
    assert reason in error["message"]
    assert stored_spawns(client, auth) == []
