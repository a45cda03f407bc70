"""``/metrics`` on a real gateway, the shared stack's: gunicorn with two worker processes
sharing a prometheus-client multiprocess directory, as ``vx11 up`` starts it. Spawns
accepted by both processes add up in one scrape; while no worker runs (the stack's is
shut down), the queue's depth is the number of jobs queued; once a real worker has run
them, the ledger's figures by state show how each ended, and the worker shows with its
sandbox level.

Runs with a Redis broker, and with RabbitMQ when ``VX11_TEST_BROKER_URL`` is set."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support import TOKEN, child_pids, http, start_worker, wait_for

pytestmark = pytest.mark.e2e

DONE_CODE = "print('counted')"
FAILED_CODE = "exit 3"
BATCH = 8
"""Spawn requests sent at once: enough that both gunicorn processes take some."""


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = http("GET", f"{base}/metrics", headers=TOKEN)
    assert status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def accepted_by(metrics_dir: Path, pid: int) -> float:
    """The spawns one gunicorn process counted as accepted, read from its own file."""
    path = metrics_dir / f"counter_{pid}.db"
    if not path.exists():
        return 0
    for metric in MultiProcessCollector.merge([str(path)]):
        for sample in metric.samples:
            if sample.name == "vx11_spawns_accepted_total":
                return sample.value
    return 0


def spawn(stack, task_type: str, code: str) -> str:
    answer = stack.spawn(task_type, code, ttl_seconds=30)
    assert answer["error"] is None, answer
    return answer["spawn_id"]


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, str]:
    return {
        "metrics_cache_seconds": "0",  # every scrape reads the ledger and the broker anew
        "probe_timeout": "1.5",  # how long a scrape waits for the worker's reply
        "metrics_timeout": "5",
    }


@pytest.fixture(scope="module")
def queued(stack) -> dict[str, list[str]]:
    """Spawns queued while no worker runs (the stack's is shut down first), in batches
    until both gunicorn processes have accepted some: ``{"DONE": [ids], "FAILED": [ids]}``,
    as each will end."""
    stack.worker.shut_down()
    status, window = http("POST", f"{stack.base}/vx11/window/open", {"target": "spawner"}, TOKEN)
    assert status == 200, window
    ids = {"DONE": [], "FAILED": [spawn(stack, "shell", FAILED_CODE)]}
    processes = child_pids(stack.gateway.proc.pid)
    assert len(processes) == 2, processes
    with ThreadPoolExecutor(BATCH) as pool:
        for _ in range(20):
            batch = [pool.submit(spawn, stack, "python", DONE_CODE) for _ in range(BATCH)]
            ids["DONE"] += [future.result() for future in batch]
            if all(accepted_by(stack.metrics_dir, pid) for pid in processes):
                break
    assert all(accepted_by(stack.metrics_dir, pid) for pid in processes), "one process took all"
    return ids


def test_spawns_accepted_by_both_gateway_processes_add_up_in_one_scrape(stack, queued):
    queued_count = len(queued["DONE"]) + len(queued["FAILED"])
    processes = child_pids(stack.gateway.proc.pid)
    shares = [accepted_by(stack.metrics_dir, pid) for pid in processes]
    assert all(shares) and sum(shares) == queued_count

    samples = scrape(stack.base)

    assert value(samples, "vx11_spawns_accepted_total") == queued_count
    assert value(samples, "vx11_spawn_request_seconds_count", outcome="accepted") == queued_count
    assert value(samples, "vx11_spawns", status="QUEUED") == queued_count
    assert value(samples, "vx11_queue_messages", queue="spawner") == queued_count
    assert value(samples, "vx11_workers") == 0
    assert value(samples, "vx11_window_open", target="spawner") == 1
    assert {value(samples, "vx11_up", dependency=d) for d in ("redis", "database", "broker")} == {1}


def test_a_real_worker_runs_them_and_the_figures_by_state_show_how_each_ended(stack, queued):
    worker = start_worker(stack.config, stack.log_dir, name="metrics")
    try:
        expected = {state: len(ids) for state, ids in queued.items()}

        def finished():
            samples = scrape(stack.base)
            ended = {state: value(samples, "vx11_spawns", status=state) for state in expected}
            # a loaded machine may answer the scrape's broadcast late: scrape again
            return samples if ended == expected and value(samples, "vx11_workers") else None

        samples = wait_for(finished, timeout=90, interval=0.5)
    finally:
        worker.shut_down()
    status, record = http("GET", f"{stack.base}/vx11/spawn/{queued['DONE'][0]}", headers=TOKEN)
    assert status == 200, record
    level = record["sandbox"]  # the level the worker ran it at

    assert value(samples, "vx11_spawns", status="QUEUED") == 0
    assert value(samples, "vx11_spawns", status="RUNNING") == 0
    assert value(samples, "vx11_queue_messages", queue="spawner") == 0
    assert value(samples, "vx11_workers") == 1
    (info,) = [labels for name, labels in samples if name == "vx11_worker_info"]
    labels = dict(info)
    assert labels["worker"].startswith("metrics@") and labels["sandbox"] == level
    assert level in ("bwrap", "basic")
