"""compose.yaml checked against the code. No Docker engine runs here, so each service's
command is resolved to the project's real entry points, its settings, secrets and
healthchecks are checked, and the commands themselves are run locally where a local
program stands in for the container (redis-server, gunicorn, Celery, Flower)."""

from __future__ import annotations

import ast
import configparser
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
SECURITY_DOC = ROOT / "docs" / "security.md"
SETUP_CFG = ROOT / "setup.cfg"
VENV_BIN = Path(sys.executable).parent

SERVICES = {"redis", "postgres", "gateway", "worker", "flower"}
VX11_SERVICES = ("gateway", "worker", "flower")
SAMPLE_SECRETS = {
    "REDIS_PASSWORD": "redis-secret",
    "POSTGRES_PASSWORD": "postgres-secret",
    "VX11_FLOWER_PASSWORD": "flower-secret",
}

# Compose interpolation: $$ (a literal $), ${VAR}, ${VAR:-default}, ${VAR:?error},
# ${VAR-default}, ${VAR?error}, $VAR.
INTERPOLATION = re.compile(
    r"\$\$"
    r"|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


# --- reading compose.yaml the way docker compose does --------------------------------


def interpolate(value: str, env: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg")
        current = env.get(name)
        missing = current is None or (current == "" and op is not None and op.startswith(":"))
        if missing and op and op.endswith("?"):
            raise AssertionError(f"compose would refuse to start: {name}: {arg}")
        if missing and op and op.endswith("-"):
            return arg
        return current or ""

    return INTERPOLATION.sub(replace, value)


def variables_in(value: str) -> list[tuple[str, str | None]]:
    """``(name, operator)`` of every variable ``value`` interpolates."""
    return [
        (m.group("braced") or m.group("bare"), m.group("op"))
        for m in INTERPOLATION.finditer(value)
        if m.group(0) != "$$"
    ]


def strings_in(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings_in(key)
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)


def resolved(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: resolved(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolved(item, env) for item in node]
    return node


def command_of(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(p) for p in command]


def environment_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def healthcheck_argv(service: dict) -> list[str]:
    """The healthcheck as the container would exec it."""
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *rest = test
    if kind == "CMD":
        return rest
    assert kind == "CMD-SHELL", f"unexpected healthcheck form {kind}"
    return ["sh", "-c", " ".join(rest)]


def option(argv: list[str], name: str) -> str:
    """The value of ``name`` in ``argv`` (``--name value`` or ``--name=value``)."""
    for i, token in enumerate(argv):
        if token == name:
            return argv[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def env_example() -> tuple[dict[str, str], set[str]]:
    """``.env.example``'s assignments, and the names it documents in comments."""
    assigned, commented = {}, set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line):
            assigned[m.group(1)] = m.group(2)
        elif m := re.match(r"^#\s*([A-Z_][A-Z0-9_]*)=", line):
            commented.add(m.group(1))
    return assigned, commented


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def deployed(services) -> dict[str, dict]:
    """The services as compose runs them with ``.env`` holding the sample secrets."""
    return {name: resolved(service, SAMPLE_SECRETS) for name, service in services.items()}


def celery_app_of(argv: list[str]):
    from celery.app.utils import find_app

    assert argv[0] == "celery", argv
    return find_app(option(argv, "-A"))


def cli_context(app):
    from celery.bin.base import CLIContext

    return CLIContext(app=app, no_color=True, workdir=None, quiet=True)


def worker_params(argv: list[str]) -> dict[str, Any]:
    """``celery ... worker`` options, parsed by Celery's own worker command."""
    from celery.bin.worker import worker

    app = celery_app_of(argv)
    args = argv[argv.index("worker") + 1 :]
    return worker.make_context("worker", args, obj=cli_context(app)).params


def gunicorn_options(argv: list[str]) -> dict[str, Any]:
    """Everything on a gunicorn command line, parsed by gunicorn's own parser."""
    from gunicorn.config import Config

    return vars(Config().parser().parse_args(argv))


def settings_fields() -> set[str]:
    from vx11.core.config import Settings

    return {f"VX11_{f.name.upper()}" for f in dataclasses.fields(Settings)}


# --- the file as a whole -------------------------------------------------------------


def test_compose_declares_exactly_the_five_services(services):
    assert set(services) == SERVICES


def test_every_service_has_a_healthcheck(services):
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        assert check.get("test") and check["test"] != ["NONE"], name


def test_vx11_services_run_the_project_image_and_restart(services):
    for name in VX11_SERVICES:
        service = services[name]
        assert service["build"] == ".", name
        assert (ROOT / service["build"] / "Dockerfile").is_file()
        assert service["restart"] == "unless-stopped", name
    assert len({services[n]["image"] for n in VX11_SERVICES}) == 1


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
            assert services[dependency].get("healthcheck"), dependency


def test_worker_can_be_scaled(services):
    worker = services["worker"]
    for key in ("container_name", "hostname", "ports"):
        assert key not in worker, f"worker sets {key}: --scale worker=N would clash"
    assert "%h" in option(command_of(worker), "--hostname"), "replicas need distinct node names"


# --- the gateway ---------------------------------------------------------------------


def test_gateway_runs_gunicorn_on_the_project_app_factory(services):
    import vx11

    argv = command_of(services["gateway"])
    assert argv[0] == "gunicorn"
    assert importlib.util.find_spec("gunicorn") is not None
    (spec,) = gunicorn_options(argv[1:])["args"]
    module_name, _, expression = spec.partition(":")
    call = ast.parse(expression, mode="eval").body
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name), spec
    assert not call.args and not call.keywords, "gunicorn calls the factory with no arguments"
    factory = getattr(importlib.import_module(module_name), call.func.id)
    assert factory is vx11.create_app and callable(factory)
    inspect.signature(factory).bind()  # callable exactly as gunicorn calls it


def test_gateway_command_is_the_stack_command_bound_to_every_interface(services):
    from vx11.cli.stack import StackOptions, gunicorn_argv

    defaults = StackOptions()
    expected = gunicorn_argv("0.0.0.0", 8000, defaults.gunicorn_workers, defaults.gunicorn_threads)
    assert expected[1:3] == ["-m", "gunicorn"]
    compose_options = gunicorn_options(command_of(services["gateway"])[1:])
    assert compose_options == gunicorn_options(expected[3:])
    assert compose_options["worker_class"] == "gthread"


def test_the_images_default_command_is_the_gateways(services):
    (cmd,) = [args for kind, args in dockerfile_instructions() if kind == "CMD"]
    assert json.loads(cmd) == command_of(services["gateway"])


def test_gateway_publishes_the_port_it_binds(services):
    gateway = services["gateway"]
    port = option(command_of(gateway), "--bind").rsplit(":", 1)[1]
    assert f"{port}:{port}" in [str(p) for p in gateway["ports"]]


def test_gateway_counts_metrics_across_its_workers_in_a_directory_new_at_each_start(deployed):
    from vx11.cli.stack import METRICS_DIR_VARIABLE, gateway_env

    gateway = deployed["gateway"]
    directory = environment_of(gateway)[METRICS_DIR_VARIABLE]
    assert gateway_env({}, directory) == {METRICS_DIR_VARIABLE: directory}  # as vx11 up does
    mounts = [str(m).split(":", 1)[0] for m in gateway.get("tmpfs", [])]
    assert any(Path(directory).is_relative_to(m) for m in mounts), "it must start empty"
    for name in ("worker", "flower"):
        assert METRICS_DIR_VARIABLE not in environment_of(deployed[name]), name


def test_gateway_healthcheck_asks_its_own_health_endpoint(services):
    from flask import Flask

    from vx11.core.config import Settings
    from vx11.gateway import api

    gateway = services["gateway"]
    argv = healthcheck_argv(gateway)
    assert argv[:2] == ["python", "-c"]
    (url,) = re.findall(r"http://[^'\"\s]+", argv[2])
    port = option(command_of(gateway), "--bind").rsplit(":", 1)[1]
    assert url == f"http://127.0.0.1:{port}/health"
    app = Flask("routes")
    api.init_app(app, Settings.from_env(environ={}))
    endpoint, _ = app.url_map.bind("localhost").match("/health", method="GET")
    assert endpoint == "health.health"


# --- Celery: the worker and its healthcheck ---------------------------------------------


def test_celery_commands_load_the_real_celery_app(services):
    from workers.celery import app as workers_app

    celery_commands = [command_of(services["worker"]), command_of(services["flower"])]
    celery_commands.append(shlex.split(interpolate(healthcheck_argv(services["worker"])[2], {})))
    for argv in celery_commands:
        app = celery_app_of(argv)
        assert app is workers_app
        app.loader.import_default_modules()
        assert "vx11.spawn" in app.tasks


def test_worker_consumes_the_queue_the_gateway_publishes_to(services, deployed):
    import celeryconfig
    from vx11.core.callbacks import CALLBACK_QUEUE
    from vx11.core.config import Settings

    params = worker_params(command_of(services["worker"]))
    declared = {queue.name for queue in celeryconfig.task_queues}
    assert params["queues"], "the worker must name its queue"
    assert set(params["queues"]) <= declared
    gateway_settings = Settings.from_env(environment_of(deployed["gateway"]))
    assert params["queues"] == [gateway_settings.spawn_queue, CALLBACK_QUEUE]


def test_worker_command_is_the_stack_worker_command(services):
    from vx11.cli.stack import StackOptions, worker_argv
    from vx11.core.config import Settings

    expected = worker_argv(StackOptions().worker_concurrency, Settings().spawn_queue)
    assert expected[1:6] == ["-m", "celery", "-A", "workers", "worker"]
    argv = command_of(services["worker"])
    assert worker_params(argv) == worker_params(["celery", *expected[3:]])


def test_worker_healthcheck_pings_its_own_node(services):
    from celery.bin.control import inspect as inspect_command

    worker = services["worker"]
    argv = healthcheck_argv(worker)
    assert argv[:2] == ["sh", "-c"], "the node name needs the shell's $HOSTNAME"
    check = shlex.split(interpolate(argv[2], {}))  # $$HOSTNAME reaches the shell as $HOSTNAME
    app = celery_app_of(check)
    args = check[check.index("inspect") + 1 :]
    params = inspect_command.make_context("inspect", args, obj=cli_context(app)).params
    assert params["command"] == "ping"
    node = worker_params(command_of(worker))["hostname"]  # %h already expanded here
    nodename = option(command_of(worker), "--hostname")
    assert params["destination"] == [nodename.replace("%h", "$HOSTNAME")]
    assert node == nodename.replace("%h", socket.gethostname())


# --- Flower ------------------------------------------------------------------------------


def test_flower_is_installed_and_its_command_runs(services):
    argv = command_of(services["flower"])
    assert argv[:4] == ["celery", "-A", "workers", "flower"]
    assert importlib.util.find_spec("flower") is not None
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "flower", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "flower" in result.stdout.lower()


def test_flower_options_and_variables_are_flower_options(services, deployed):
    from flower.options import options

    known = options._options  # tornado's registry, names with dashes
    for token in command_of(services["flower"])[4:]:
        name, _, value = token.removeprefix("--").partition("=")
        assert name.replace("_", "-") in known, f"Flower has no option --{name}"
        known[name.replace("_", "-")].type(value)
    # Flower turns every FLOWER_* variable into an option and dies on an unknown one.
    assigned, commented = env_example()
    names = set(environment_of(deployed["flower"])) | set(assigned) | commented
    for name in names:
        if name.startswith("FLOWER_"):
            option_name = name.removeprefix("FLOWER_").lower().replace("_", "-")
            assert option_name in known, f"{name} is not a Flower option"
    assert environment_of(deployed["flower"])["FLOWER_BASIC_AUTH"], "Flower needs basic auth"


def test_flower_publishes_its_port_and_checks_its_healthcheck_page(services):
    from flower.urls import handlers

    flower = services["flower"]
    port = option(command_of(flower), "--port")
    assert f"{port}:{port}" in [str(p) for p in flower["ports"]]
    argv = healthcheck_argv(flower)
    (url,) = re.findall(r"http://[^'\"\s]+", argv[2])
    assert url == f"http://127.0.0.1:{port}/healthcheck"
    patterns = [h.regex.pattern if hasattr(h, "regex") else h[0] for h in handlers]
    assert any(re.match(pattern, "/healthcheck") for pattern in patterns)


# --- settings, secrets and the image ---------------------------------------------------


def test_every_vx11_variable_compose_sets_is_a_real_setting(compose, services, deployed):
    from vx11.core.config import Settings

    known = settings_fields()
    blocks = [compose["x-vx11"], *services.values()]
    for block in blocks:
        for name in environment_of(block):
            if name.startswith("VX11_"):
                assert name in known, f"{name} is not a VX11 setting"
    assigned, commented = env_example()
    for name in set(assigned) | commented:
        if name.startswith("VX11_"):
            assert name in known, f".env.example documents {name}, which is not a setting"
    for name in VX11_SERVICES:
        settings = Settings.from_env(environment_of(deployed[name]))  # every value parses
        assert settings.production, f"{name} must run in production mode"


def test_vx11_services_share_one_redis_and_one_ledger(deployed):
    urls = {
        (env["VX11_REDIS_URL"], env["VX11_DATABASE_URL"])
        for env in (environment_of(deployed[name]) for name in VX11_SERVICES)
    }
    assert len(urls) == 1
    ((redis_url, database_url),) = urls
    assert redis_url == f"redis://:{SAMPLE_SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    assert database_url.startswith("postgresql+psycopg://vx11:")


def test_every_redis_url_a_vx11_service_uses_carries_the_password(deployed):
    """Windows and tokens, the broker and Celery's results: each URL, as the service's
    settings resolve it, authenticates."""
    from urllib.parse import urlsplit

    from vx11.core.config import Settings

    for name in VX11_SERVICES:
        settings = Settings.from_env(environment_of(deployed[name]))
        broker, results = settings.effective_broker_url, settings.effective_result_backend
        for url in (settings.redis_url, broker, results):
            assert urlsplit(url).password == SAMPLE_SECRETS["REDIS_PASSWORD"], (name, url)


def test_ledger_url_names_a_driver_the_image_installs(deployed):
    from sqlalchemy.engine import make_url

    url = make_url(environment_of(deployed["gateway"])["VX11_DATABASE_URL"])
    assert url.get_dialect().driver == "psycopg"
    assert (url.username, url.host, url.database) == ("vx11", "postgres", "vx11")
    postgres = environment_of(deployed["postgres"])
    assert url.password == postgres["POSTGRES_PASSWORD"] == SAMPLE_SECRETS["POSTGRES_PASSWORD"]
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]) == ("vx11", "vx11")
    setup = configparser.ConfigParser()
    setup.read(SETUP_CFG)
    assert "psycopg" in setup["options.extras_require"]["postgres"]
    assert re.search(r"pip install [\"']?\.\[postgres\]", DOCKERFILE.read_text())


def test_redis_keeps_its_data_never_evicts_and_requires_a_password(services, deployed):
    redis_service = services["redis"]
    assert str(redis_service["image"]).startswith("redis:7")
    argv = command_of(redis_service)
    assert argv[0] == "redis-server"
    assert option(argv, "--appendonly") == "yes"
    assert option(argv, "--maxmemory-policy") == "noeviction"
    # noeviction acts only at maxmemory: without it Redis grows until the kernel kills it
    assert variables_in(option(argv, "--maxmemory")) == [("REDIS_MAXMEMORY", ":-")]
    assert re.fullmatch(r"\d+(gb|mb)", interpolate(option(argv, "--maxmemory"), {}))
    assert variables_in(option(argv, "--requirepass")) == [("REDIS_PASSWORD", ":?")]
    assert any(str(v).endswith(":/data") for v in redis_service["volumes"])
    # the healthcheck authenticates with the same password
    assert environment_of(deployed["redis"])["REDISCLI_AUTH"] == SAMPLE_SECRETS["REDIS_PASSWORD"]
    assert "redis-cli" in " ".join(healthcheck_argv(redis_service))


def test_postgres_keeps_its_data_and_reports_readiness(services):
    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(healthcheck_argv(postgres))


def test_every_interpolated_variable_is_documented_in_env_example(compose):
    assigned, commented = env_example()
    for text in strings_in(compose):
        for name, op in variables_in(text):
            if op and op.endswith("-"):
                assert name in assigned or name in commented, f"{name} not in .env.example"
            else:
                assert name in assigned, f"{name} is required: .env.example must assign it"


def test_secrets_are_required_never_defaulted_or_committed(compose):
    secrets = set(SAMPLE_SECRETS)
    for text in strings_in(compose):
        for name, op in variables_in(text):
            if name in secrets:
                assert op == ":?", f"{name} must use ${{{name}:?...}} so compose refuses without it"
    assigned, _ = env_example()
    for name in secrets:
        assert assigned.get(name) == "", f".env.example must leave {name} empty"
    with pytest.raises(AssertionError, match="refuse to start"):
        resolved(compose, {})


def test_only_the_worker_runs_as_root(services):
    dockerfile = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image's default user must not be root"
    assert services["worker"]["user"] in ("root", "0")
    for name in ("gateway", "flower"):
        assert "user" not in services[name], f"{name} must keep the image's unprivileged user"


# --- the worker's sandbox -----------------------------------------------------------------

BWRAP_SECURITY_OPTS = {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"}
"""What bubblewrap needs from Docker, one per layer that refuses it (docs/security.md)."""


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


@functools.cache
def bwrap_works_here() -> bool:
    """Whether a real run through bubblewrap works on this machine (the worker's probe)."""
    from vx11.core.config import Settings
    from workers.sandbox.levels import base_config, bwrap_problem

    config = base_config(Settings.from_env({}))
    try:
        return bwrap_problem(config) is None
    finally:
        if config.cgroups:
            config.cgroups.close()


def test_the_worker_requires_the_bwrap_sandbox_level(deployed):
    from vx11.core.config import Settings

    settings = Settings.from_env(environment_of(deployed["worker"]))
    assert settings.sandbox_require == "bwrap"
    assert settings.sandbox in ("auto", "bwrap")
    assert settings.production, "the worker's own environment keeps the shared settings"
    # the relaxation compose.yaml documents (an empty value in an override) is valid
    assert Settings.from_env({"VX11_SANDBOX_REQUIRE": ""}).sandbox_require == ""


def test_only_the_worker_is_loosened_and_only_as_far_as_bubblewrap_needs(services):
    worker = services["worker"]
    assert set(worker["security_opt"]) == BWRAP_SECURITY_OPTS
    for key in ("privileged", "cap_add", "devices", "pid", "ipc", "network_mode", "userns_mode"):
        assert key not in worker, f"bubblewrap does not need {key}"
    volumes = [str(v) for v in worker.get("volumes", [])]
    for path in ("/sys/fs/cgroup", "docker.sock"):
        assert not any(path in v for v in volumes), f"the worker must not get {path}"
    assert worker["cgroup"] == "private", "the worker must not see the host's cgroups"
    assert worker["init"] is True, "tini reaps what killed spawns leave"
    for name in ("gateway", "flower"):
        assert "security_opt" not in services[name], f"{name} keeps Docker's defaults"


def test_every_security_option_is_explained_in_the_security_doc():
    doc = SECURITY_DOC.read_text()
    for option in BWRAP_SECURITY_OPTS:
        assert f"`{option}`" in doc, f"docs/security.md does not explain {option}"
    assert "VX11_SANDBOX_REQUIRE" in doc


def test_the_image_installs_bubblewrap_as_root():
    instructions = dockerfile_instructions()
    runs = [(i, args) for i, (kind, args) in enumerate(instructions) if kind == "RUN"]
    installs = [
        (i, args)
        for i, args in runs
        for command in args.split("&&")
        if shlex.split(command)[:2] == ["apt-get", "install"]
        and "bubblewrap" in shlex.split(command)
    ]
    assert len(installs) == 1, "the image must install bubblewrap once"
    ((index, run),) = installs
    (install,) = [c for c in run.split("&&") if "bubblewrap" in shlex.split(c)]
    assert {"-y", "--no-install-recommends"} <= set(shlex.split(install)), "bubblewrap alone"
    assert "apt-get update" in run, "install from fresh package lists"
    assert "rm -rf /var/lib/apt/lists/*" in run, "do not keep the package lists in the image"
    users = [i for i, (kind, _) in enumerate(instructions) if kind == "USER"]
    assert all(index < i for i in users), "apt-get must run before the image drops root"


# --- RabbitMQ as the broker: docs/deploy.md's compose.override.yaml ------------------------

RABBITMQ_SECRETS = {**SAMPLE_SECRETS, "RABBITMQ_PASSWORD": "rabbitmq-secret"}


def merge_override(base: dict, override: dict) -> dict:
    """``override`` merged into ``base`` the way compose merges an override file's
    mappings (the services, their environment, depends_on), key by key; anything else is
    replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_override(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture(scope="module")
def rabbitmq_override() -> dict:
    """The override in docs/deploy.md that makes RabbitMQ the broker."""
    blocks = re.findall(r"```yaml\n(.*?)```", DEPLOY_DOC.read_text(), re.DOTALL)
    found = [
        document
        for document in map(yaml.safe_load, blocks)
        if "rabbitmq" in (document.get("services") or {})
    ]
    assert len(found) == 1, "docs/deploy.md must show one compose override adding rabbitmq"
    return found[0]


@pytest.fixture(scope="module")
def with_rabbitmq(compose, rabbitmq_override) -> dict[str, dict]:
    """The services as compose runs them with that override and the sample secrets."""
    services = merge_override(compose, rabbitmq_override)["services"]
    return {name: resolved(service, RABBITMQ_SECRETS) for name, service in services.items()}


def test_the_rabbitmq_override_makes_it_every_services_broker_redis_keeps_the_rest(
    with_rabbitmq,
):
    from urllib.parse import unquote, urlsplit

    from vx11.core.config import Settings

    rabbitmq = environment_of(with_rabbitmq["rabbitmq"])
    assert rabbitmq["RABBITMQ_DEFAULT_PASS"] == RABBITMQ_SECRETS["RABBITMQ_PASSWORD"]
    redis_url = f"redis://:{SAMPLE_SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    for name in VX11_SERVICES:
        service = with_rabbitmq[name]
        settings = Settings.from_env(environment_of(service))
        broker = urlsplit(settings.effective_broker_url)
        assert (broker.scheme, broker.hostname, broker.port) == ("amqp", "rabbitmq", 5672)
        login = (rabbitmq["RABBITMQ_DEFAULT_USER"], rabbitmq["RABBITMQ_DEFAULT_PASS"])
        assert (broker.username, broker.password) == login, name
        assert unquote(broker.path[1:]) == rabbitmq["RABBITMQ_DEFAULT_VHOST"], name
        # windows, tokens and Celery's results stay in Redis, with its password
        assert settings.redis_url == settings.effective_result_backend == redis_url, name
        assert settings.production, name
        depends = service["depends_on"]
        assert depends["rabbitmq"]["condition"] == "service_healthy", name
        assert "redis" in depends, f"{name} must still wait for Redis"
    worker = Settings.from_env(environment_of(with_rabbitmq["worker"]))
    assert worker.sandbox_require == "bwrap", "the override must keep the worker's own settings"


def test_the_rabbitmq_service_keeps_its_data_restarts_and_reports_its_health(rabbitmq_override):
    service = rabbitmq_override["services"]["rabbitmq"]
    assert re.fullmatch(r"rabbitmq:3\.(1[2-9]|[2-9]\d)(-management)?", service["image"]), (
        "RabbitMQ 3.12 or later honours the workers' consumer timeout"
    )
    assert service["restart"] == "unless-stopped"
    assert service["hostname"], "a fixed node name keeps the same data directory"
    (volume,) = [str(v) for v in service["volumes"] if str(v).endswith(":/var/lib/rabbitmq")]
    assert volume.split(":")[0] in rabbitmq_override["volumes"]
    assert healthcheck_argv(service)[0] == "rabbitmq-diagnostics"
    assigned, commented = env_example()
    for text in strings_in(rabbitmq_override):
        for name, op in variables_in(text):
            assert name in assigned or name in commented, f"{name} not in .env.example"
            if name == "RABBITMQ_PASSWORD":
                assert op == ":?", "the password must be required, never defaulted"


def test_rabbitmq_lets_the_longest_spawn_finish_within_its_consumer_timeout(with_rabbitmq):
    """A delivery unacknowledged past RabbitMQ's consumer timeout closes the worker's
    channel, and the worker stops. Both the timeout the worker asks for and the server's
    own must outlast the longest time a spawn job stays unacknowledged."""
    from vx11.core.config import Settings
    from vx11.core.dispatch import TIME_LIMIT_MARGIN

    worker_env = environment_of(with_rabbitmq["worker"])
    probe = (
        "import celeryconfig, json; q = celeryconfig.task_queues[0]; "
        "print(json.dumps([q.name, q.consumer_arguments, celeryconfig.broker_transport_options]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=local_env(worker_env, PYTHONPATH=str(ROOT)),
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    queue, arguments, transport = json.loads(done.stdout)
    settings = Settings.from_env(worker_env)
    longest_ms = (settings.spawn_max_ttl + TIME_LIMIT_MARGIN) * 1000
    assert queue == settings.spawn_queue
    assert arguments["x-consumer-timeout"] > longest_ms
    assert "visibility_timeout" not in transport, "a Redis-transport option"
    rabbitmq = environment_of(with_rabbitmq["rabbitmq"])
    erl_args = shlex.split(rabbitmq["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"])
    at = erl_args.index("consumer_timeout")
    assert erl_args[at - 1] == "-rabbit"
    assert int(erl_args[at + 1]) >= arguments["x-consumer-timeout"]


def rabbitmq_runs_here() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5672), 2):
        return True
    return False


@pytest.mark.skipif(
    shutil.which("rabbitmq-diagnostics") is None or os.geteuid() != 0 or not rabbitmq_runs_here(),
    reason="needs root and a RabbitMQ node running here",
)
def test_the_rabbitmq_healthcheck_passes_against_a_running_node(rabbitmq_override):
    argv = healthcheck_argv(rabbitmq_override["services"]["rabbitmq"])
    assert run_healthcheck(argv, local_env({}), timeout=60) == 0


# --- the commands, run locally ------------------------------------------------------------


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected one {old!r} in {text!r}"
    return text.replace(old, new)


def retarget(check: list[str], old: str, port: int) -> list[str]:
    """A healthcheck whose script (its last argument) asks ``port`` instead."""
    return [*check[:-1], replace_once(check[-1], old, f":{port}/")]


def replace_token(argv: list[str], old: str, new: str) -> list[str]:
    assert argv.count(old) == 1, f"expected one {old!r} in {argv}"
    return [new if token == old else token for token in argv]


class LocalService:
    """A compose service's command run on this machine in its own session."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name, self.argv, self.env, self.workdir = name, argv, env, workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> LocalService:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.workdir, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        with contextlib.suppress(ProcessLookupError):  # leftovers of its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def local_env(service_env: dict[str, str], **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VX11_", "FLOWER_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(service_env)
    env.update(overrides)
    return env


def run_healthcheck(argv: list[str], env: dict[str, str], timeout: float = 30) -> int:
    return subprocess.run(argv, env=env, capture_output=True, timeout=timeout).returncode


def http(url: str, headers: dict[str, str] | None = None, body: bytes | None = None):
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_command_and_healthcheck_work_on_a_real_redis_server(deployed, tmp_path):
    import redis

    port = free_port()
    argv = [*command_of(deployed["redis"]), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--dir", str(tmp_path), "--save", "", "--daemonize", "no"]
    server = LocalService("redis", argv, local_env({}), tmp_path).start()
    password = SAMPLE_SECRETS["REDIS_PASSWORD"]
    try:
        client = redis.Redis(port=port, password=password)
        wait_for(client.ping, timeout=15)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("maxmemory") == {"maxmemory": str(1 << 30)}  # the default
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port).ping()
        check = healthcheck_argv(deployed["redis"])
        check[-1] = replace_once(check[-1], "redis-cli", f"redis-cli -p {port}")
        service_env = environment_of(deployed["redis"])
        assert run_healthcheck(check, local_env(service_env)) == 0
        wrong = {**service_env, "REDISCLI_AUTH": "wrong-password"}
        assert run_healthcheck(check, local_env(wrong)) != 0, "the healthcheck must check auth"
        client.close()
    finally:
        server.stop()


@pytest.mark.e2e
def test_compose_commands_run_a_working_vx11_and_pass_their_healthchecks(
    deployed, redis_url, tmp_path
):
    """gateway, worker and Flower from their compose commands (only addresses swapped for
    this machine's), in production mode, against a private Redis and an SQLite ledger."""
    import redis

    from vx11.core.tokens import TokenStore

    gateway_port, flower_port = free_port(), free_port()
    store = TokenStore(redis.Redis.from_url(redis_url))
    token, _ = store.create("compose-test", ["admin", "window", "spawn"])
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    envs = {
        name: local_env(
            environment_of(deployed[name]),
            VX11_REDIS_URL=redis_url,
            VX11_DATABASE_URL=ledger,
            VX11_DATA_DIR=str(tmp_path / "data"),
            HOSTNAME=socket.gethostname(),
        )
        for name in VX11_SERVICES
    }
    # In the container that directory is on a tmpfs, new at each start; here, a new one.
    envs["gateway"]["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    if not bwrap_works_here():
        # The worker container gives bubblewrap what it needs; a machine where it cannot
        # work runs the worker's command as compose.yaml's documented override would.
        envs["worker"]["VX11_SANDBOX_REQUIRE"] = ""
    gateway_argv = replace_token(
        command_of(deployed["gateway"]), "0.0.0.0:8000", f"127.0.0.1:{gateway_port}"
    )
    flower_argv = replace_token(
        command_of(deployed["flower"]), "--port=5555", f"--port={flower_port}"
    )
    flower_argv = replace_token(flower_argv, "--address=0.0.0.0", "--address=127.0.0.1")
    running = [
        LocalService("gateway", gateway_argv, envs["gateway"], tmp_path),
        LocalService("worker", command_of(deployed["worker"]), envs["worker"], tmp_path),
        LocalService("flower", flower_argv, envs["flower"], tmp_path),
    ]
    try:
        for service in running:
            service.start()
        checks = {
            "gateway": retarget(healthcheck_argv(deployed["gateway"]), ":8000/", gateway_port),
            "worker": healthcheck_argv(deployed["worker"]),
            "flower": retarget(healthcheck_argv(deployed["flower"]), ":5555/", flower_port),
        }
        for service in running:
            try:
                wait_for(
                    lambda s=service: run_healthcheck(checks[s.name], envs[s.name]) == 0,
                    timeout=90,
                    interval=1,
                )
            except AssertionError:
                pytest.fail(f"{service.name} healthcheck never passed:\n{service.log()}")

        base = f"http://127.0.0.1:{gateway_port}"
        dev = {"X-VX11-Token": "vx11-test-token"}
        assert http(f"{base}/vx11/status", dev)[0] == 401, "production refuses the test token"
        auth = {"X-VX11-Token": token}
        body = b'{"target":"spawner","ttl_seconds":60}'
        assert http(f"{base}/vx11/window/open", auth, body)[0] == 200
        status, raw = http(
            f"{base}/vx11/spawn", auth, b'{"task_type":"shell","code":"echo compose works"}'
        )
        assert status == 200, raw
        spawn_id = json.loads(raw)["spawn_id"]

        def finished():
            record = json.loads(http(f"{base}/vx11/spawn/{spawn_id}", auth)[1])
            return record if record["status"] not in ("QUEUED", "RUNNING") else None

        record = wait_for(finished, timeout=60)
        assert (record["status"], record["stdout"]) == ("DONE", "compose works\n"), record
        assert record["sandbox"] == ("bwrap" if bwrap_works_here() else "basic"), record

        flower_url = f"http://127.0.0.1:{flower_port}/"
        assert http(flower_url)[0] == 401, "Flower must ask for a login"
        login = b64encode(b"admin:flower-secret").decode()
        assert http(flower_url, {"Authorization": f"Basic {login}"})[0] == 200
    finally:
        for service in reversed(running):
            service.stop()
