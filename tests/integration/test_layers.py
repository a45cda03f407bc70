"""What each layer loads, in a fresh interpreter: the import contracts (setup.cfg
[importlinter]) read the code; these run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT

WEB = ("flask", "flask_smorest", "flask_swagger_ui", "gunicorn", "werkzeug")
CORE_MODULES = (
    "vx11.core.audit",
    "vx11.core.callbacks",
    "vx11.core.config",
    "vx11.core.connections",
    "vx11.core.dispatch",
    "vx11.core.errors",
    "vx11.core.events",
    "vx11.core.ledger",
    "vx11.core.logs",
    "vx11.core.policy",
    "vx11.core.record",
    "vx11.core.states",
    "vx11.core.times",
    "vx11.core.tokens",
)


def loaded_after(code: str) -> set[str]:
    """The modules in ``sys.modules``, and their top-level packages, once ``code`` has run
    in a new Python."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    modules = set(json.loads(result.stdout.splitlines()[-1]))
    return modules | {name.split(".")[0] for name in modules}


def test_importing_the_sandbox_loads_no_celery_flask_sqlalchemy_or_redis():
    loaded = loaded_after("import workers.sandbox, workers.sandbox.levels")
    assert "workers.sandbox.levels" in loaded  # the probe did import it
    for package in ("celery", "kombu", "sqlalchemy", "redis", *WEB):
        assert package not in loaded, f"importing the sandbox loads {package}"
    assert "workers.celery" not in loaded, "importing the sandbox builds the Celery app"


def test_the_core_loads_no_web_framework_and_no_celery():
    loaded = loaded_after("\n".join(f"import {module}" for module in CORE_MODULES))
    assert set(CORE_MODULES) <= loaded
    for package in ("celery", "click", *WEB):
        assert package not in loaded, f"the core loads {package}"
    assert not {name for name in loaded if name.startswith(("vx11.gateway", "vx11.cli"))}
    assert not {name for name in loaded if name.startswith("workers")}


def test_what_a_worker_loads_holds_nothing_of_the_gateway():
    """What ``celery -A workers worker`` imports before its pool forks: the app Celery
    finds, its task modules (``include``), its steps and remote-control command."""
    loaded = loaded_after(
        "from celery.app.utils import find_app\n"
        "app = find_app('workers')\n"
        "app.loader.import_default_modules()\n"
        "assert 'vx11.spawn' in app.tasks and 'vx11.callback' in app.tasks"
    )
    assert {"workers.spawner", "workers.callbacks", "workers.steps", "workers.control"} <= loaded
    for package in WEB:
        assert package not in loaded, f"a worker loads {package}"
    assert not {name for name in loaded if name.startswith(("vx11.gateway", "vx11.cli"))}


def test_the_cli_loads_neither_the_gateway_nor_the_workers():
    loaded = loaded_after("import vx11.cli")
    assert "click" in loaded
    for package in ("celery", "sqlalchemy", *WEB):
        assert package not in loaded, f"the vx11 command loads {package} before it runs"
    assert not {name for name in loaded if name.startswith(("vx11.gateway", "workers"))}


@pytest.mark.parametrize("entry", ["vx11:create_app", "vx11.cli:main"])
def test_the_public_entry_points_still_resolve(entry):
    module, _, name = entry.partition(":")
    loaded = loaded_after(f"import {module}\nassert callable({module}.{name})")
    assert module in loaded
