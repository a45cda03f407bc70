"""The OpenAPI document as the docs page shows it: every field described, the limits'
defaults shown, and example requests that a server with its default settings accepts,
so that "Try it out" works the first time."""

from __future__ import annotations

import jsonschema_rs
import pytest

from vx11 import create_app
from vx11.core.config import Settings
from vx11.gateway.api.openapi import SPEC_PATH

TOKEN = {"X-VX11-Token": "vx11-test-token"}
RECORDS = ("SpawnDetail", "SpawnSummary")
"""The spawn record's schemas, whose fields are described too."""
LIMITS = {
    "memory_limit_mb": ("memory_limit_mb", "memory_limit_mb_max"),
    "max_processes": ("max_processes", "max_processes_max"),
    "max_output_bytes": ("max_output_bytes", "max_output_bytes_max"),
    "max_file_size_mb": ("max_file_size_mb", "max_file_size_mb_max"),
    "ttl_seconds": ("spawn_default_ttl", "spawn_max_ttl"),
}
"""Spawn request field → its default and maximum settings."""


@pytest.fixture
def spec(client) -> dict:
    response = client.get(SPEC_PATH)
    assert response.status_code == 200
    return response.json


def schema_of(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def operations(spec: dict):
    """``(method, path, operation, path parameters)`` of every operation."""
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield method, path, operation, item.get("parameters", [])


def request_bodies(spec: dict) -> dict[str, tuple[dict, dict]]:
    """Path → (the body's media type, its schema) of every operation with a body."""
    bodies = {}
    for method, path, operation, _ in operations(spec):
        if "requestBody" in operation:
            assert method == "post", (method, path)
            (media,) = operation["requestBody"]["content"].values()
            bodies[path] = (media, schema_of(spec, media["schema"]))
    return bodies


def test_every_request_field_and_parameter_has_a_description(spec):
    undescribed = []
    for method, path, operation, path_parameters in operations(spec):
        for parameter in [*path_parameters, *operation.get("parameters", [])]:
            if not parameter.get("description"):
                undescribed.append(f"{method} {path} {parameter['in']} {parameter['name']}")
    for path, (_, schema) in request_bodies(spec).items():
        for name, field in schema["properties"].items():
            if not field.get("description"):
                undescribed.append(f"POST {path} body {name}")
    assert undescribed == []
    assert {"/vx11/spawn", "/vx11/window/open", "/vx11/window/close", "/vx11/tokens"} <= set(
        request_bodies(spec)
    )


def test_every_field_of_the_spawn_record_has_a_description(spec):
    for name in RECORDS:
        properties = spec["components"]["schemas"][name]["properties"]
        assert [field for field, info in properties.items() if not info.get("description")] == []


def test_the_spawn_limits_show_their_defaults_minimum_and_maximum(test_config):
    config = {**test_config, "memory_limit_mb": 100, "max_processes_max": 99}
    spec = create_app(config).test_client().get(SPEC_PATH).json
    settings = Settings.from_env({}, config)
    fields = spec["components"]["schemas"]["SpawnRequest"]["properties"]
    for field, (default, maximum) in LIMITS.items():
        assert fields[field]["default"] == getattr(settings, default), field
        assert fields[field]["maximum"] == getattr(settings, maximum), field
        assert "minimum" in fields[field], field
    assert (fields["memory_limit_mb"]["default"], fields["max_processes"]["maximum"]) == (100, 99)
    assert "default" not in fields["cpu_time_limit"], "it defaults to the spawn's ttl_seconds"
    assert fields["cpu_time_limit"]["maximum"] == settings.cpu_time_limit_max
    assert "ttl_seconds" in fields["cpu_time_limit"]["description"]


def test_every_example_request_is_valid_by_the_published_schema(spec):
    for path, (media, schema) in request_bodies(spec).items():
        assert "example" in media, f"POST {path} has no example for Try it out"
        example = media["example"]
        document = {**spec, "$ref": media["schema"]["$ref"]}
        assert jsonschema_rs.Draft4Validator(document).is_valid(example), (path, example)
        assert set(example) <= set(schema["properties"]), path


def test_the_spawn_example_is_the_quick_starts_at_the_servers_defaults(spec):
    (media, _) = request_bodies(spec)["/vx11/spawn"]
    assert media["example"] == {
        "task_type": "python",
        "code": 'print("hello from VX11")',
        "ttl_seconds": 30,
    }
    window, _ = request_bodies(spec)["/vx11/window/open"]
    assert (window["example"]["target"], window["example"]["ttl_seconds"]) == ("spawner", 600)


def test_every_example_request_is_accepted_by_a_server_with_default_settings(client, spec):
    bodies = request_bodies(spec)
    # The window opens first (the spawn needs it) and closes last.
    order = sorted(bodies, key=lambda path: (path.endswith("/close"), not path.endswith("/open")))
    for path in order:
        example = bodies[path][0]["example"]
        response = client.post(path, json=example, headers=TOKEN)
        assert response.status_code in (200, 201), (path, response.json)
        assert response.json.get("error") is None, (path, response.json)
    spawns = client.get("/vx11/spawns", headers=TOKEN).json["spawns"]
    batched = len(bodies["/vx11/spawns/batch"][0]["example"]["spawns"])
    assert [(s["status"], s["task_type"]) for s in spawns] == [("QUEUED", "python")] * (1 + batched)
