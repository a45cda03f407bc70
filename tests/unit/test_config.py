"""Settings: defaults, then VX11_* variables, then the test mapping; bad values refused."""

from pathlib import Path

import pytest

from vx11.core.config import Settings, describe


def test_defaults_need_no_environment():
    settings = Settings.from_env({})
    assert settings.env == "development"
    assert settings.spawn_default_ttl == 30
    assert settings.window_max_ttl == 3600
    assert settings.window_targets == ("spawner", "switch", "hermes")
    assert settings.effective_broker_url == settings.redis_url
    assert settings.effective_database_url.startswith("sqlite:///")


def test_environment_variables_are_parsed_by_type():
    settings = Settings.from_env(
        {
            "VX11_SPAWN_MAX_TTL": "120",
            "VX11_PROBE_TIMEOUT": "0.25",
            "VX11_WINDOW_TARGETS": "spawner, switch ,extra",
            "VX11_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
        }
    )
    assert settings.spawn_max_ttl == 120
    assert settings.probe_timeout == 0.25
    assert settings.window_targets == ("spawner", "switch", "extra")
    assert settings.effective_broker_url.startswith("amqp://")


def test_overrides_win_over_the_environment():
    settings = Settings.from_env({"VX11_SPAWN_MAX_TTL": "120"}, overrides={"spawn_max_ttl": 60})
    assert settings.spawn_max_ttl == 60


def test_a_non_number_is_a_clear_error():
    with pytest.raises(ValueError, match="VX11_SPAWN_MAX_TTL must be a int"):
        Settings.from_env({"VX11_SPAWN_MAX_TTL": "lots"})


def test_an_unknown_environment_mode_is_refused():
    with pytest.raises(ValueError, match="VX11_ENV"):
        Settings.from_env({"VX11_ENV": "staging"})


def test_the_spawner_target_cannot_be_configured_away():
    with pytest.raises(ValueError, match="spawner"):
        Settings.from_env({"VX11_WINDOW_TARGETS": "switch,hermes"})


def test_every_setting_is_documented():
    rows = describe()
    assert len(rows) == len(Settings.__dataclass_fields__)
    assert all(name.startswith("VX11_") and doc for name, _default, doc in rows)


def test_the_configuration_reference_lists_every_setting_with_its_default():
    reference = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for variable, default, _doc in describe():
        shown = f"`{default}`" if default else "(empty)"
        assert f"| `{variable}` | {shown} |" in reference, f"{variable} missing or stale"


def test_a_default_above_its_maximum_is_refused():
    with pytest.raises(
        ValueError, match=r"VX11_MEMORY_LIMIT_MB \(4096\) is above VX11_MEMORY_LIMIT_MB_MAX"
    ):
        Settings.from_env({"VX11_MEMORY_LIMIT_MB": "4096"})


def test_the_sandbox_uids_are_a_range_from_1000_up():
    assert Settings().sandbox_uid_range == range(60000, 61000)
    one = Settings.from_env({"VX11_SANDBOX_UIDS": "61000"})
    assert one.sandbox_uid_range == range(61000, 61001)
    for bad in ("", "x", "60999-60000", "0-100", "999-2000", "1000-99999999999", "1-2-3"):
        with pytest.raises(ValueError, match="VX11_SANDBOX_UIDS must be FIRST-LAST"):
            Settings.from_env({"VX11_SANDBOX_UIDS": bad})


def test_an_unknown_sandbox_level_is_refused():
    with pytest.raises(ValueError, match="VX11_SANDBOX must be"):
        Settings.from_env({"VX11_SANDBOX": "docker"})
