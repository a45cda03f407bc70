"""A real worker process, and its pool processes, never load the gateway: the shared
stack's worker is replaced by one whose Python records every module it imports (a
finder first on ``sys.meta_path``, installed by a ``sitecustomize`` of the test's: it
sees ``importlib``'s imports too, which ``-X importtime`` and audit hooks do not), and
spawns go through it."""

from __future__ import annotations

from tests.support import ROOT, Process, service_env, wait_for, wait_terminal
from vx11.cli.stack import worker_argv

RECORD_IMPORTS = """\
import os, sys

class RecordImports:
    \"\"\"First on sys.meta_path: sees every module a process loads, however it is
    imported (importlib.import_module too), and lets the usual finders find it.\"\"\"

    @staticmethod
    def find_spec(name, path=None, target=None, prefix=os.environ["IMPORT_LOG_PREFIX"]):
        with open(f"{prefix}.{os.getpid()}", "a") as log:
            log.write(name + "\\n")

sys.meta_path.insert(0, RecordImports)
"""


def test_a_worker_that_ran_spawns_has_never_loaded_flask_or_the_gateway(stack, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RECORD_IMPORTS)
    env = service_env(stack.config)
    env.update(PYTHONPATH=f"{hook}:{ROOT}", IMPORT_LOG_PREFIX=str(tmp_path / "imports"))
    argv = worker_argv(2, stack.config.get("spawn_queue", "spawner"))
    argv[argv.index("vx11@%h")] = "traced@%h"
    stack.worker.shut_down()
    stack.worker = Process("traced-worker", argv, env, stack.log_dir).start()
    wait_for(lambda: "ready." in stack.worker.log() or not stack.worker.alive(), timeout=60)
    assert stack.worker.alive(), stack.worker.log()

    stack.open_window()
    for task_type, code in (("python", "print('traced')"), ("shell", "echo traced")):
        accepted = stack.spawn(task_type, code, ttl_seconds=30)
        record = wait_terminal(stack.base, accepted["spawn_id"])
        assert (record["status"], record["stdout"]) == ("DONE", "traced\n")
        assert record["worker"].startswith("traced@")

    # Pool processes are forked from the main one, hook included: a module any of them
    # holds was imported before the fork, or after it in a file of the child's own.
    logs = list(tmp_path.glob("imports.*"))
    everything = set().union(*(log.read_text().split() for log in logs))
    assert {"workers.celery", "workers.spawner", "workers.sandbox"} <= everything
    for name in everything:
        assert name.split(".")[0] not in {"flask", "flask_smorest", "gunicorn"}, name
        assert not name.startswith(("vx11.gateway", "vx11.cli")), name
