"""What compose.yaml promises that a started stack cannot show.

tests/compose/test_compose_up.py starts the deployment for real (./scripts/test-compose)
and shows that its commands, healthchecks, ports, volumes and sandbox work, with its own
images and ports. This file checks the rest, with no engine: the defaults no test run
uses, the secrets compose refuses to start without, what .env.example promises, that the
commands are those of `vx11 up`, that only the worker is loosened, and the RabbitMQ
override of docs/deploy.md, which the real start does not use.

Docker Compose itself resolves the file (`docker compose config`), in a project made as
compose.yaml's header tells a user to make one: compose.yaml, and a .env copied from
.env.example with its secrets filled in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compose.engine import compose_binary
from tests.compose.project import make_project

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {"redis", "postgres", "gateway", "worker", "flower"}
VX11_SERVICES = ("gateway", "worker", "flower")
SECRETS = {
    "REDIS_PASSWORD": "redis-secret",
    "POSTGRES_PASSWORD": "postgres-secret",
    "VX11_FLOWER_PASSWORD": "flower-secret",
}
RABBITMQ_SECRETS = {**SECRETS, "RABBITMQ_PASSWORD": "rabbitmq-secret"}
BWRAP_SECURITY_OPTS = {
    "seccomp=./worker-seccomp.json",
    "apparmor=unconfined",
    "systempaths=unconfined",
}
"""What bubblewrap needs from Docker, one per layer that refuses it (docs/security.md)."""


def compose_config(directory: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``docker compose config`` in ``directory``, which reads compose.yaml and
    compose.override.yaml as ``up`` does. Its environment is empty: a variable of the
    shell running the tests would take precedence over .env."""
    return subprocess.run(
        [compose_binary(), "config", "--format", "json", *options],
        cwd=directory, env={}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def resolve(directory: Path, *options: str) -> dict[str, Any]:
    done = compose_config(directory, *options)
    assert done.returncode == 0, done.stderr
    assert not done.stderr, f"compose warns: {done.stderr}"
    return json.loads(done.stdout)


def option(argv: list[str], name: str) -> str:
    """The value of ``name`` in ``argv`` (``--name value`` or ``--name=value``)."""
    for i, token in enumerate(argv):
        if token == name:
            return argv[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def env_example() -> tuple[dict[str, str], set[str]]:
    """.env.example's assignments, and the names it shows in comments (``# NAME=``)."""
    text = ENV_EXAMPLE.read_text()
    assigned = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", text, re.MULTILINE))
    return assigned, set(re.findall(r"^#\s*([A-Z_][A-Z0-9_]*)=", text, re.MULTILINE))


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> dict[str, dict]:
    """The services as compose resolves them with the secrets and no other setting."""
    return resolve(make_project(tmp_path_factory.mktemp("defaults"), SECRETS))["services"]


@pytest.fixture(scope="module")
def rabbitmq_override() -> str:
    """The compose.override.yaml of docs/deploy.md that makes RabbitMQ the broker."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs/deploy.md").read_text(), re.DOTALL)
    found = [b for b in blocks if "rabbitmq" in (yaml.safe_load(b).get("services") or {})]
    assert len(found) == 1, "docs/deploy.md must show one compose override adding rabbitmq"
    return found[0]


@pytest.fixture(scope="module")
def rabbitmq_project(tmp_path_factory, rabbitmq_override) -> Path:
    return make_project(tmp_path_factory.mktemp("rabbitmq"), RABBITMQ_SECRETS, rabbitmq_override)


@pytest.fixture(scope="module")
def with_rabbitmq(rabbitmq_project) -> dict[str, Any]:
    """The whole model, services and volumes, with that override and its password."""
    return resolve(rabbitmq_project)


@pytest.fixture(scope="module")
def variables(rabbitmq_project) -> dict[str, dict]:
    """Every variable compose.yaml and the RabbitMQ override interpolate, by name:
    ``Required``, ``DefaultValue``."""
    return resolve(rabbitmq_project, "--variables")


# --- the services ------------------------------------------------------------------


def test_compose_declares_exactly_the_five_services(services):
    assert set(services) == SERVICES


def test_every_service_has_a_healthcheck(services):
    """``up --wait`` waits for a service without one only until it runs, not until it
    works; so does ``depends_on: service_healthy``."""
    for name, service in services.items():
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_every_service_comes_back_after_a_crash_or_a_reboot(services):
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name


def test_services_wait_for_healthy_dependencies(services):
    needs = {"gateway": {"redis", "postgres"}, "worker": {"redis", "postgres"}, "flower": {"redis"}}
    for name, wanted in needs.items():
        depends = services[name]["depends_on"]
        assert set(depends) >= wanted, name
        for dependency, rule in depends.items():
            assert rule["condition"] == "service_healthy", (name, dependency)


# --- images and ports: settings with defaults ---------------------------------------


def test_without_settings_the_images_are_vx11_latest_and_the_official_ones(services):
    for name in VX11_SERVICES:
        assert services[name]["image"] == "vx11:latest", name
        assert services[name]["build"]["args"] == {"BASE_IMAGE": "python:3.11-slim"}, name
    assert (services["redis"]["image"], services["postgres"]["image"]) == ("redis:7", "postgres:16")
    # and `docker build .` alone builds on the same base
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", DOCKERFILE.read_text(), re.MULTILINE)


def test_without_settings_the_gateway_and_flower_are_published_on_every_interface(services):
    for name, port in (("gateway", 8000), ("flower", 5555)):
        (published,) = services[name]["ports"]
        assert (published["target"], published["published"]) == (port, str(port)), name
        assert "host_ip" not in published, name


def test_the_images_and_published_ports_follow_their_settings(tmp_path):
    settings = {
        "VX11_IMAGE": "registry.example/vx11:1.2",
        "VX11_BASE_IMAGE": "debian-python:3.11",
        "VX11_REDIS_IMAGE": "registry.example/redis:7",
        "VX11_POSTGRES_IMAGE": "registry.example/postgres:16",
        "VX11_GATEWAY_PORT": "127.0.0.1:18000",
        "VX11_FLOWER_PORT": "127.0.0.1:15555",
    }
    resolved = resolve(make_project(tmp_path, {**SECRETS, **settings}))["services"]
    for name in VX11_SERVICES:
        assert resolved[name]["image"] == settings["VX11_IMAGE"], name
        assert resolved[name]["build"]["args"]["BASE_IMAGE"] == settings["VX11_BASE_IMAGE"]
    assert resolved["redis"]["image"] == settings["VX11_REDIS_IMAGE"]
    assert resolved["postgres"]["image"] == settings["VX11_POSTGRES_IMAGE"]
    for name, port in (("gateway", 8000), ("flower", 5555)):
        (published,) = resolved[name]["ports"]
        address = f"{published['host_ip']}:{published['published']}"
        assert address == settings[f"VX11_{name.upper()}_PORT"], name
        assert published["target"] == port, name


# --- the commands: those of `vx11 up` ----------------------------------------------


def test_gateway_command_is_the_stack_command_bound_to_every_interface(services):
    from vx11.cli.stack import StackOptions, gunicorn_argv

    defaults = StackOptions()
    expected = gunicorn_argv("0.0.0.0", 8000, defaults.gunicorn_workers, defaults.gunicorn_threads)
    assert expected[1:3] == ["-m", "gunicorn"]
    assert services["gateway"]["command"] == ["gunicorn", *expected[3:]]


def test_the_images_default_command_is_the_gateways(services):
    dockerfile = DOCKERFILE.read_text().replace("\\\n", "")
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert json.loads(cmd) == services["gateway"]["command"]


def test_gateway_counts_metrics_across_its_workers_in_a_directory_new_at_each_start(services):
    """prometheus-client's multiprocess directory, as `vx11 up` sets it: the gateway's
    alone, and on a tmpfs, so that each start begins with it empty."""
    from vx11.cli.stack import METRICS_DIR_VARIABLE

    gateway = services["gateway"]
    directory = Path(gateway["environment"][METRICS_DIR_VARIABLE])
    mounts = [mount.split(":", 1)[0] for mount in gateway["tmpfs"]]
    assert any(directory.is_relative_to(mount) for mount in mounts), "it must start empty"
    for name in ("worker", "flower"):
        assert METRICS_DIR_VARIABLE not in services[name]["environment"], name


def test_worker_command_is_the_stack_worker_command(services):
    from vx11.cli.stack import StackOptions, worker_argv
    from vx11.core.config import Settings

    expected = worker_argv(StackOptions().worker_concurrency, Settings().spawn_queue)
    assert expected[1:3] == ["-m", "celery"]
    assert services["worker"]["command"] == ["celery", *expected[3:]]


def test_worker_consumes_the_queues_the_gateway_publishes_to(services, tmp_path):
    """Also with VX11_SPAWN_QUEUE set in .env, which reaches the gateway."""
    import celeryconfig
    from vx11.core.callbacks import CALLBACK_QUEUE
    from vx11.core.config import Settings

    renamed = resolve(make_project(tmp_path, {**SECRETS, "VX11_SPAWN_QUEUE": "elsewhere"}))
    for model in (services, renamed["services"]):
        queues = option(model["worker"]["command"], "--queues").split(",")
        gateway = Settings.from_env(model["gateway"]["environment"])
        assert queues == [gateway.spawn_queue, CALLBACK_QUEUE]
    assert gateway.spawn_queue == "elsewhere"
    assert set(option(services["worker"]["command"], "--queues").split(",")) <= {
        queue.name for queue in celeryconfig.task_queues
    }


def test_worker_healthcheck_pings_its_own_node(services):
    """Not any node: with several workers, one whose node stopped answering must turn
    unhealthy while the others answer."""
    worker = services["worker"]
    kind, script = worker["healthcheck"]["test"]
    assert kind == "CMD-SHELL", "the node name needs the shell's $HOSTNAME"
    node = option(worker["command"], "--hostname")  # vx11@%h, %h: Celery's for the hostname
    # compose's output writes a literal $ as $$, as compose.yaml does
    assert f"--destination {node.replace('%h', '$$HOSTNAME')} " in script


# --- settings and secrets -------------------------------------------------------------


def test_every_vx11_variable_is_a_setting_or_compose_yamls_own(services, variables):
    """VX11 ignores a VX11_* variable it has no setting for: a misspelt one would
    change nothing, silently. Those compose.yaml interpolates (images, ports) are its
    own."""
    from vx11.core.config import Settings

    known = {f"VX11_{field.name.upper()}" for field in dataclasses.fields(Settings)}
    for name in VX11_SERVICES:
        environment = services[name]["environment"]
        unknown = {v for v in environment if v.startswith("VX11_")} - known
        assert not unknown, f"{name} gets {unknown}, which are not VX11 settings"
        Settings.from_env(environment)  # every value parses
    assigned, commented = env_example()
    unknown = {v for v in {*assigned, *commented} if v.startswith("VX11_")} - known
    assert unknown <= set(variables), f".env.example shows {unknown - set(variables)}"


def test_every_interpolated_variable_is_documented_in_env_example(variables):
    """In compose.yaml and the RabbitMQ override of docs/deploy.md; the secrets
    compose.yaml requires are assigned, empty, so that a copy shows each one to fill."""
    assigned, commented = env_example()
    undocumented = set(variables) - set(assigned) - commented
    assert not undocumented, f"not in .env.example: {undocumented}"
    assert set(SECRETS) <= set(assigned)


def test_compose_refuses_to_start_without_each_secret(variables, rabbitmq_override, tmp_path):
    """The secrets are required (``${NAME:?...}``), never defaulted nor committed: with
    one left empty in .env, as .env.example leaves it, compose stops and names it."""
    required = {name for name, variable in variables.items() if variable["Required"]}
    assert required == set(RABBITMQ_SECRETS)
    assigned, _ = env_example()
    for name in required:
        assert assigned.get(name, "") == "", f".env.example must leave {name} empty"
        others = {key: value for key, value in RABBITMQ_SECRETS.items() if key != name}
        done = compose_config(make_project(tmp_path / name, others, rabbitmq_override))
        assert done.returncode != 0, f"compose starts without {name}"
        assert name in done.stderr, done.stderr


def test_redis_keeps_every_write_never_evicts_and_requires_the_password(services):
    """noeviction: a full Redis refuses writes rather than drop windows, tokens or queued
    jobs; full means maxmemory, without which Redis would grow until the kernel killed
    it."""
    argv = services["redis"]["command"]
    assert option(argv, "--appendonly") == "yes"
    assert option(argv, "--maxmemory-policy") == "noeviction"
    assert option(argv, "--maxmemory") == "1gb"
    assert option(argv, "--requirepass") == SECRETS["REDIS_PASSWORD"]


# --- only the worker is loosened ----------------------------------------------------


def test_only_the_worker_runs_as_root(services):
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image's default user must not be root"
    assert services["worker"]["user"] in ("root", "0")
    for name in ("gateway", "flower"):
        assert "user" not in services[name], f"{name} must keep the image's unprivileged user"


def test_the_worker_requires_the_bwrap_sandbox_level(services):
    """Fail closed: a worker where bubblewrap does not work refuses to start rather than
    run spawns at the basic level. An empty value, compose.yaml's documented relaxation,
    is valid."""
    from vx11.core.config import Settings

    settings = Settings.from_env(services["worker"]["environment"])
    assert (settings.sandbox_require, settings.sandbox) == ("bwrap", "auto")
    assert Settings.from_env({"VX11_SANDBOX_REQUIRE": ""}).sandbox_require == ""


def test_only_the_worker_is_loosened_and_only_as_far_as_bubblewrap_needs(services):
    worker = services["worker"]
    assert set(worker["security_opt"]) == BWRAP_SECURITY_OPTS
    for key in ("privileged", "cap_add", "devices", "pid", "ipc", "network_mode", "userns_mode"):
        assert key not in worker, f"bubblewrap does not need {key}"
    mounts = [volume["source"] for volume in worker.get("volumes", [])]
    for path in ("/sys/fs/cgroup", "docker.sock"):
        assert not any(path in mount for mount in mounts), f"the worker must not get {path}"
    assert worker["cgroup"] == "private", "the worker must not see the host's cgroups"
    # no tini: it would stay root; the process the worker forks from, as PID 1 and as
    # the service user, reaps what killed spawns leave (workers.service)
    assert not worker.get("init"), "an init runs as the container's user: root"
    assert worker["environment"]["VX11_SERVICE_USER"] == "vx11"
    for name in ("gateway", "flower"):
        assert "security_opt" not in services[name], f"{name} keeps Docker's defaults"


def test_every_security_option_is_explained_in_the_security_doc(services):
    doc = (ROOT / "docs/security.md").read_text()
    for security_option in services["worker"]["security_opt"]:
        assert f"`{security_option}`" in doc, f"docs/security.md does not explain {security_option}"
    assert "VX11_SANDBOX_REQUIRE" in doc


# --- RabbitMQ as the broker: docs/deploy.md's compose.override.yaml ------------------


def test_the_rabbitmq_override_makes_it_every_services_broker_redis_keeps_the_rest(
    with_rabbitmq,
):
    from urllib.parse import unquote, urlsplit

    from vx11.core.config import Settings

    services = with_rabbitmq["services"]
    rabbitmq = services["rabbitmq"]["environment"]
    assert rabbitmq["RABBITMQ_DEFAULT_PASS"] == RABBITMQ_SECRETS["RABBITMQ_PASSWORD"]
    login = (rabbitmq["RABBITMQ_DEFAULT_USER"], rabbitmq["RABBITMQ_DEFAULT_PASS"])
    redis_url = f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    for name in VX11_SERVICES:
        settings = Settings.from_env(services[name]["environment"])
        broker = urlsplit(settings.effective_broker_url)
        assert (broker.scheme, broker.hostname, broker.port) == ("amqp", "rabbitmq", 5672)
        assert (broker.username, broker.password) == login, name
        assert unquote(broker.path[1:]) == rabbitmq["RABBITMQ_DEFAULT_VHOST"], name
        # windows, tokens and Celery's results stay in Redis, with its password
        assert settings.redis_url == settings.effective_result_backend == redis_url, name
        depends = services[name]["depends_on"]
        assert depends["rabbitmq"]["condition"] == "service_healthy", name
        assert "redis" in depends, f"{name} must still wait for Redis"
    worker = services["worker"]["environment"]
    assert worker["VX11_SANDBOX_REQUIRE"] == "bwrap", "the override keeps the worker's own"


def test_the_rabbitmq_service_keeps_its_data_restarts_and_reports_its_health(with_rabbitmq):
    service = with_rabbitmq["services"]["rabbitmq"]
    assert re.fullmatch(r"rabbitmq:3\.(1[2-9]|[2-9]\d)(-management)?", service["image"]), (
        "RabbitMQ 3.12 or later honours the workers' consumer timeout"
    )
    assert service["restart"] == "unless-stopped"
    assert service["hostname"], "a fixed node name keeps the same data directory"
    (volume,) = [v for v in service["volumes"] if v["target"] == "/var/lib/rabbitmq"]
    assert volume["type"] == "volume" and volume["source"] in with_rabbitmq["volumes"]
    assert service["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]


def test_rabbitmq_lets_the_longest_spawn_finish_within_its_consumer_timeout(with_rabbitmq):
    """A delivery unacknowledged past RabbitMQ's consumer timeout closes the worker's
    channel, and the worker stops. Both the timeout the worker asks for and the server's
    own must outlast the longest time a spawn job stays unacknowledged."""
    from vx11.core.config import Settings
    from vx11.core.dispatch import TIME_LIMIT_MARGIN

    worker_env = with_rabbitmq["services"]["worker"]["environment"]
    rabbitmq_env = with_rabbitmq["services"]["rabbitmq"]["environment"]
    probe = (
        "import celeryconfig, json; q = celeryconfig.task_queues[0]; "
        "print(json.dumps([q.name, q.consumer_arguments, celeryconfig.broker_transport_options]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VX11_")} | worker_env
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    queue, arguments, transport = json.loads(done.stdout)
    settings = Settings.from_env(worker_env)
    assert queue == settings.spawn_queue
    assert arguments["x-consumer-timeout"] > (settings.spawn_max_ttl + TIME_LIMIT_MARGIN) * 1000
    assert "visibility_timeout" not in transport, "a Redis-transport option"
    assert transport["confirm_publish"] is True, "a 202 only for a job the broker holds"
    erl_args = shlex.split(rabbitmq_env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"])
    at = erl_args.index("consumer_timeout")
    assert erl_args[at - 1] == "-rabbit"
    assert int(erl_args[at + 1]) >= arguments["x-consumer-timeout"]
