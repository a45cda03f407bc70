"""The ``vx11 token`` commands against a real Redis, through click's runner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.support import free_port
from vx11 import create_app
from vx11.cli import main


@pytest.fixture
def runner(redis_url, monkeypatch) -> CliRunner:
    monkeypatch.setenv("VX11_REDIS_URL", redis_url)
    return CliRunner()


def test_a_created_token_is_shown_once_and_opens_the_api(runner, test_config):
    created = runner.invoke(main, ["token", "create", "--label", "ci-bot", "--json"])
    assert created.exit_code == 0, created.output
    token = json.loads(created.output)["token"]
    assert token.startswith("vx11_")
    client = create_app(test_config).test_client()
    response = client.get("/vx11/window/status/spawner", headers={"X-VX11-Token": token})
    assert response.status_code == 200
    listed = runner.invoke(main, ["token", "list"])
    assert "ci-bot" in listed.output
    assert token not in listed.output


def test_a_revoked_token_is_refused(runner, test_config):
    info = json.loads(runner.invoke(main, ["token", "create", "--label", "x", "--json"]).output)
    revoked = runner.invoke(main, ["token", "revoke", info["token_id"]])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    client = create_app(test_config).test_client()
    response = client.get("/vx11/window/status/spawner", headers={"X-VX11-Token": info["token"]})
    assert response.status_code == 403
    assert json.loads(runner.invoke(main, ["token", "list", "--json"]).output) == []


def test_revoking_an_unknown_id_fails_clearly(runner):
    result = runner.invoke(main, ["token", "revoke", "deadbeefdead"])
    assert result.exit_code == 1
    assert "no single token has id deadbeefdead" in result.output


def test_an_unreachable_redis_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("VX11_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    result = CliRunner().invoke(main, ["token", "list"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot reach Redis")
    assert "Traceback" not in result.output
