"""Workers on two hosts, one cut off mid-run. Each host is a network namespace of this
machine linked to the root namespace by a veth pair; Redis (policy, events, broker and
results) and a private PostgreSQL (the ledger) listen on the root namespace's end of
each link, as they would on a main host's private address. Setting a link down cuts its
host off from all of them at once, as losing a real host would (a SQLite file shared by
path would stay reachable from a host whose network is gone). So the stack is its own,
not the shared ``stack`` of conftest.py, which listens on 127.0.0.1 and keeps SQLite.

What the design promises when a host is lost (README, workers/sweeper.py): its running
spawns are ended by a live host's sweeper, ERROR ``worker_lost`` or, with
``max_retries``, run again elsewhere; its broker jobs stay unacknowledged and come back
only after the broker's ``visibility_timeout`` (over an hour), and then run nothing; the
other host goes on with what is queued and what comes after, each spawn run once."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from tests.support import (
    TOKEN,
    Process,
    broker_task_ids,
    free_port,
    http,
    service_env,
    wait_for,
    wait_terminal,
)
from vx11.cli.stack import gunicorn_argv, redis_server_argv, worker_argv
from vx11.core.callbacks import CALLBACK_QUEUE
from vx11.core.config import Settings
from vx11.core.events import LIVE_TTL, SpawnEvents
from workers.sweeper import RECHECK_AFTER, SWEEP_EVERY

pytestmark = pytest.mark.e2e

QUEUE = Settings().spawn_queue
RECEIVED = re.compile(r"Task vx11\.spawn\[([0-9a-f-]{36})\] received")
RAN = re.compile(r"spawn ([0-9a-f-]{36}) [A-Z]+ \(exit ")
"""The spawner's line after each run of code in the sandbox (workers/spawner.py)."""
NOT_RUN = re.compile(r"spawn ([0-9a-f-]{36}) not run: record is ([A-Z]+)")

LOST_BOUND = LIVE_TTL + SWEEP_EVERY + RECHECK_AFTER + 20
"""How long after the cut its running spawns may stay RUNNING: their live snapshots
lapse (LIVE_TTL), the next sweep sees them (SWEEP_EVERY), checks again (RECHECK_AFTER);
with a margin for a machine shared with other tests."""
VICTIM_SECONDS = 30
"""The spawns the cut host runs sleep until this long after they are submitted: long
enough to be running still when their host is cut (a few seconds later), short enough
that a retry, started by the sweeper after the cut, finishes at once."""
QUEUED_SPAWNS = 10
AFTER_SPAWNS = 3


# --- the test hosts ------------------------------------------------------------------


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


@dataclass
class Host:
    """A network namespace with a veth pair to the root namespace, on a /30 of its own:
    the root namespace's end has ``main_address`` (the main host's address on the link,
    where Redis and PostgreSQL listen), the namespace's end ``address``."""

    namespace: str
    link: str
    main_address: str
    address: str

    def create(self) -> None:
        peer = f"{self.link[:-1]}n"
        ip("netns", "add", self.namespace)
        ip("link", "add", self.link, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", self.namespace)
        ip("addr", "add", f"{self.main_address}/30", "dev", self.link)
        ip("link", "set", self.link, "up")
        inside = ("netns", "exec", self.namespace, "ip")
        ip(*inside, "addr", "add", f"{self.address}/30", "dev", peer)
        ip(*inside, "link", "set", peer, "up")
        ip(*inside, "link", "set", "lo", "up")

    def cut(self) -> None:
        """Take the link down: nothing passes between the host and the others."""
        ip("link", "set", self.link, "down")

    def remove(self) -> None:
        """Kill whatever still runs in the namespace, then delete it and its link."""
        pids = ip("netns", "pids", self.namespace, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        ip("netns", "del", self.namespace, check=False)
        ip("link", "del", self.link, check=False)  # gone with its peer, unless never moved


def free_subnet() -> int:
    """A third octet ``n`` such that nothing on this machine uses 10.251.n.0/24."""
    used = ip("-4", "addr").stdout + ip("-4", "route", "show", "table", "all").stdout
    for step in range(250):
        n = (os.getpid() + step) % 250 + 1
        if f"10.251.{n}." not in used:
            return n
    pytest.skip("no free 10.251.n.0/24 subnet for the test hosts")


def make_hosts() -> list[Host]:
    if shutil.which("ip") is None:
        pytest.skip("the ip command (iproute2) is not installed")
    probe = f"vx11-{os.getpid()}-probe"
    tried = ip("netns", "add", probe, check=False)
    if tried.returncode == 0:
        tried = ip("netns", "exec", probe, "ip", "link", "set", "lo", "up", check=False)
        ip("netns", "del", probe, check=False)
    if tried.returncode != 0:
        pytest.skip(
            "cannot create or enter network namespaces (root with CAP_NET_ADMIN and "
            f"CAP_SYS_ADMIN needed): {tried.stderr.strip()}"
        )
    n, pid = free_subnet(), os.getpid()
    return [
        Host(f"vx11-{pid}-{name}", f"vx{pid}{name}h", f"10.251.{n}.{base + 1}",
             f"10.251.{n}.{base + 2}")
        for name, base in (("a", 0), ("b", 4))
    ]  # fmt: skip


# --- the main host's services --------------------------------------------------------


def start_redis(
    port: int, addresses: list[str], data_dir: Path, log_dir: Path, cleanup: contextlib.ExitStack
) -> None:
    argv = redis_server_argv(port, data_dir)
    at = argv.index("--bind") + 1
    argv[at : at + 1] = ["127.0.0.1", *addresses]
    # Protected mode refuses every address but loopback to a Redis without a password;
    # this one listens on loopback and the test hosts' private links only.
    argv += ["--protected-mode", "no"]
    server = Process("redis", argv, dict(os.environ), log_dir).start()
    cleanup.callback(server.stop)

    def answers() -> bool:
        with redis.Redis(port=port) as client:
            return client.ping()

    wait_for(lambda: answers() if server.alive() else pytest.fail(server.log()), timeout=30)


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_version)
    if not found or shutil.which("setpriv") is None:
        pytest.skip("PostgreSQL's server (/usr/lib/postgresql/*/bin) or setpriv is missing")
    return Path(found[-1]).parent


def _version(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path))


def start_postgres(
    port: int, hosts: list[Host], data_dir: Path, log_dir: Path, cleanup: contextlib.ExitStack
) -> str:
    """A private PostgreSQL cluster listening on 127.0.0.1 and on the main host's end of
    each link, run by the ``postgres`` user (it refuses root) and trusting the hosts'
    addresses; the ledger's URL, with ``{address}`` to fill in."""
    bindir, as_postgres = postgres_bin(), ["setpriv", "--reuid=postgres", "--regid=postgres",
                                           "--clear-groups"]  # fmt: skip
    shutil.chown(data_dir, "postgres", "postgres")
    subprocess.run(
        [*as_postgres, bindir / "initdb", "-D", data_dir / "db", "-U", "postgres",
         "--auth=trust", "--no-sync", "--no-instructions"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with open(data_dir / "db" / "pg_hba.conf", "a") as hba:
        for host in hosts:
            hba.write(f"host all postgres {host.address}/32 trust\n")
    addresses = ",".join(["127.0.0.1", *(host.main_address for host in hosts)])
    argv = [
        *as_postgres, str(bindir / "postgres"), "-D", str(data_dir / "db"), "-p", str(port),
        "-c", f"listen_addresses={addresses}", "-c", "unix_socket_directories=",
        "-c", "fsync=off", "-c", "max_connections=60",
    ]  # fmt: skip
    server = Process("postgres", argv, dict(os.environ), log_dir).start()
    cleanup.callback(server.stop, sig=signal.SIGINT)  # fast shutdown: drops every session

    def answers() -> bool:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres") as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    wait_for(lambda: answers() if server.alive() else pytest.fail(server.log()), timeout=60)
    return f"postgresql+psycopg://postgres@{{address}}:{port}/postgres"


# --- the cluster ---------------------------------------------------------------------


@dataclass
class Cluster:
    base: str
    hosts: dict[str, Host]
    redis_url: str
    """Redis from the main host: policy, events, broker and results."""
    workers: dict[str, Process] = field(default_factory=dict)

    def spawn(self, task_type: str, code: str, **fields: Any) -> dict:
        body = {"task_type": task_type, "code": code, "correlation_id": "multihost", **fields}
        status, accepted = http("POST", f"{self.base}/vx11/spawn", body, TOKEN)
        assert status == 200 and accepted["status"] == "QUEUED", accepted
        return accepted

    def record(self, spawn_id: str) -> dict:
        status, record = http("GET", f"{self.base}/vx11/spawn/{spawn_id}", headers=TOKEN)
        assert status == 200, record
        return record

    def live_workers(self) -> dict[str, str]:
        """The hosts whose worker answered the gateway's status probe, with the sandbox
        level each reports."""
        status, body = http("GET", f"{self.base}/vx11/status", headers=TOKEN)
        assert status == 200, body
        return {name.split("@")[0]: level for name, level in body["sandbox"]["levels"].items()}


def start_worker(host: Host, node: str, queues: str, config: dict[str, str], log_dir: Path):
    """A Celery worker (2 processes) in ``host``'s namespace, node ``<node>@<hostname>``."""
    argv = worker_argv(2, QUEUE)
    argv[argv.index("vx11@%h")] = f"{node}@%h"
    argv[argv.index("--queues") + 1] = queues
    netns = ["ip", "netns", "exec", host.namespace]
    return Process(node, [*netns, *argv], service_env(config), log_dir).start()


def ready(process: Process, line: str) -> bool:
    """Whether ``line`` is in the process's log; fails at once if it has exited or its
    log says it cannot reach the broker."""
    log = process.log()
    if not process.alive():
        pytest.fail(f"{process.name} exited:\n{log[-5000:]}")
    if "Cannot connect to" in log:
        pytest.fail(f"{process.name} cannot reach the broker:\n{log[-5000:]}")
    return line in log


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Hosts ``a`` and ``b``, each with a Celery worker; on the main host Redis,
    PostgreSQL and the gateway. Host b's worker consumes only callbacks until the test
    gives it the spawner queue. Everything is removed after the test, whatever
    happened: processes (a worker with SIGKILL: a cut host cannot finish anything),
    then the namespaces and their links."""
    hosts = dict(zip("ab", make_hosts(), strict=True))
    with contextlib.ExitStack() as cleanup:
        pg_dir = Path(tempfile.mkdtemp(prefix="vx11-multihost-pg-"))
        cleanup.callback(shutil.rmtree, pg_dir, ignore_errors=True)
        # Sandboxed code runs as nobody, who cannot traverse pytest's private temp dir.
        sandbox_root = tempfile.mkdtemp(prefix="vx11-multihost-sandbox-")
        cleanup.callback(shutil.rmtree, sandbox_root, ignore_errors=True)
        os.chmod(sandbox_root, 0o711)
        for host in hosts.values():
            cleanup.callback(host.remove)
            host.create()
        redis_port, pg_port = free_port(), free_port()
        addresses = [host.main_address for host in hosts.values()]
        start_redis(redis_port, addresses, tmp_path / "redis", tmp_path, cleanup)
        ledger_url = start_postgres(pg_port, list(hosts.values()), pg_dir, tmp_path, cleanup)

        def config(address: str) -> dict[str, str]:
            return {
                "redis_url": f"redis://{address}:{redis_port}/0",
                "database_url": ledger_url.format(address=address),
                "data_dir": str(tmp_path / "data"),
                "sandbox_root": sandbox_root,
            }

        port = free_port()
        gateway = Process(
            "gateway", gunicorn_argv("127.0.0.1", port, 2, 8), service_env(config("127.0.0.1")),
            tmp_path,
        ).start()  # fmt: skip
        cleanup.callback(gateway.stop)
        cluster = Cluster(f"http://127.0.0.1:{port}", hosts, f"redis://127.0.0.1:{redis_port}/0")
        for name, queues in (("a", f"{QUEUE},{CALLBACK_QUEUE}"), ("b", CALLBACK_QUEUE)):
            worker = start_worker(
                hosts[name], f"host{name}", queues, config(hosts[name].main_address), tmp_path
            )  # fmt: skip
            cleanup.callback(worker.stop, sig=signal.SIGKILL)
            cluster.workers[name] = worker
        wait_for(
            lambda: (
                (gateway.alive() or pytest.fail(f"the gateway exited:\n{gateway.log()}"))
                and http("GET", f"{cluster.base}/health", timeout=5)[0] == 200
                and all(ready(worker, "ready.") for worker in cluster.workers.values())
            ),
            timeout=180,
            interval=0.2,
        )
        yield cluster


# --- the test ------------------------------------------------------------------------


def test_a_host_cut_off_mid_run_ends_its_spawns_and_the_other_host_runs_the_rest_once(
    cluster, capsys
):
    """Host a runs two spawns (one with ``max_retries: 1``) and host b works through a
    queue when host a's link goes down. Host b's sweeper ends the first ERROR
    ``worker_lost`` and runs the second again; host b runs everything queued before
    and submitted after the cut, each once; host a's two jobs stay unacknowledged in the
    broker, and when Redis hands them out again they run nothing."""
    begun = time.monotonic()
    host_a, host_b = cluster.workers["a"], cluster.workers["b"]
    status, window = http(
        "POST", f"{cluster.base}/vx11/window/open", {"target": "spawner", "ttl_seconds": 600},
        TOKEN,
    )  # fmt: skip
    assert status == 200, window
    levels = wait_for(lambda: len(live := cluster.live_workers()) == 2 and live, timeout=60)
    assert set(levels) == {"hosta", "hostb"}, levels

    # Host b consumes only callbacks for now: the two spawns submitted first are host
    # a's, one for each of its two processes.
    until = time.time() + VICTIM_SECONDS
    code = f"import time\ntime.sleep(max(0, {until} - time.time()))\nprint('victim')"
    victims = {
        retries: cluster.spawn("python", code, ttl_seconds=120, max_retries=retries)
        for retries in (0, 1)
    }
    victim_ids = [victim["spawn_id"] for victim in victims.values()]

    def running(spawn_ids) -> list[dict]:
        records = [cluster.record(spawn_id) for spawn_id in spawn_ids]
        return [record for record in records if record["status"] == "RUNNING"]

    wait_for(lambda: len(running(victim_ids)) == 2, timeout=60)
    assert {r["worker"].split("@")[0] for r in running(victim_ids)} == {"hosta"}

    # Host b takes the spawner queue too. What is queued from now on can only go to
    # it: each of host a's processes holds only the job it runs (prefetch 1).
    with control_app(cluster.redis_url) as app:
        replies = app.control.add_consumer(
            QUEUE, destination=[f"hostb@{socket.gethostname()}"], reply=True, timeout=10
        )
    assert replies, "host b did not answer add_consumer"
    queued = [
        cluster.spawn("shell", f"sleep {1 + n % 2}; echo queued-{n}") for n in range(QUEUED_SPAWNS)
    ]
    wait_for(lambda: running(q["spawn_id"] for q in queued), timeout=60)

    cluster.hosts["a"].cut()
    cut_at = time.monotonic()
    assert len(running(victim_ids)) == 2, (
        f"host a's spawns ended before the cut: the machine was too slow for "
        f"VICTIM_SECONDS={VICTIM_SECONDS}"
    )
    still_queued = sum(cluster.record(q["spawn_id"])["status"] == "QUEUED" for q in queued)
    assert still_queued, "nothing was left queued at the cut"
    after = [cluster.spawn("shell", f"echo after-{n}") for n in range(AFTER_SPAWNS)]
    assert set(cluster.live_workers()) <= {"hostb"}  # host a can no longer answer

    # Every spawn reaches a terminal state, host a's within the sweeper's bound.
    lost = wait_terminal(cluster.base, victims[0]["spawn_id"], timeout=LOST_BOUND)
    lost_after = time.monotonic() - cut_at
    retried = wait_terminal(
        cluster.base, victims[1]["spawn_id"], timeout=LOST_BOUND + VICTIM_SECONDS
    )
    retried_after = time.monotonic() - cut_at
    others = {
        spawn["spawn_uuid"]: wait_terminal(cluster.base, spawn["spawn_id"], timeout=60)
        for spawn in (*queued, *after)
    }
    all_ended = time.monotonic() - begun

    assert (lost["status"], lost["reason"], lost["attempts"], lost["stdout"]) == (
        "ERROR", "worker_lost", 1, None,
    ), lost  # fmt: skip
    assert lost["worker"].startswith("hosta@"), lost
    assert (retried["status"], retried["stdout"], retried["attempts"]) == (
        "DONE", "victim\n", 2,
    ), retried  # fmt: skip
    assert retried["worker"].startswith("hostb@"), retried
    expected = {q["spawn_uuid"]: f"queued-{n}\n" for n, q in enumerate(queued)}
    expected |= {a["spawn_uuid"]: f"after-{n}\n" for n, a in enumerate(after)}
    outcome = {
        u: (r["status"], r["stdout"], r["attempts"], r["worker"].split("@")[0])
        for u, r in others.items()
    }
    assert outcome == {u: ("DONE", stdout, 1, "hostb") for u, stdout in expected.items()}

    # Each start is in the spawn's event stream: one per attempt, none more.
    with redis.Redis.from_url(cluster.redis_url) as client:
        events = SpawnEvents(client)
        starts = {
            u: sum(e.kind == "state" and e.data.get("status") == "RUNNING" for e in events.read(u))
            for u in [*expected, *uuids(victims)]
        }
    assert starts == {
        **dict.fromkeys(expected, 1),
        **dict(zip(uuids(victims), (1, 2), strict=True)),
    }
    # And in the workers' logs: host a received its two jobs and ended none (the ledger
    # was out of its reach); host b received and ran each of the others once.
    received_a, ran_a = log_counts(host_a)
    received_b, ran_b = log_counts(host_b)
    assert (received_a, ran_a) == (Counter(uuids(victims)), Counter())
    assert received_b == ran_b == Counter([*expected, victims[1]["spawn_uuid"]])

    # In the broker, host a's two jobs wait unacknowledged for the visibility timeout;
    # nothing else is left.
    wait_for(
        lambda: sorted(broker_task_ids(cluster.redis_url, QUEUE)) == sorted(uuids(victims)),
        timeout=30,
    )
    # When the timeout has passed, Redis hands them out again (kombu's own restore, run
    # now with the timeout at 0): host b takes both, runs neither, changes nothing.
    with Connection(cluster.redis_url, transport_options={"visibility_timeout": 0}) as conn:
        conn.default_channel.qos.restore_visible(num=100, interval=1)
    wait_for(lambda: not broker_task_ids(cluster.redis_url, QUEUE), timeout=60)
    wait_for(lambda: len(NOT_RUN.findall(host_b.log())) == 2, timeout=30)
    assert dict(NOT_RUN.findall(host_b.log())) == dict(
        zip(uuids(victims), ("ERROR", "DONE"), strict=True)
    )
    assert log_counts(host_b) == (received_b + Counter(uuids(victims)), ran_b)
    assert cluster.record(victims[0]["spawn_id"]) == lost
    assert cluster.record(victims[1]["spawn_id"]) == retried

    with capsys.disabled():
        print(
            f"\n[multihost] host a cut off with 2 spawns running and {still_queued} of "
            f"{QUEUED_SPAWNS} waiting: ERROR worker_lost {lost_after:.1f} s after the cut, "
            f"the retried one DONE on host b {retried_after:.1f} s after it; all "
            f"{len(victims) + len(expected)} spawns terminal {all_ended:.1f} s after the "
            f"test began; sandbox levels {levels}"
        )


def uuids(accepted: dict[int, dict]) -> list[str]:
    return [spawn["spawn_uuid"] for spawn in accepted.values()]


def log_counts(worker: Process) -> tuple[Counter, Counter]:
    """``(received, ran)`` per spawn uuid, from a worker's log."""
    text = worker.log()
    return Counter(RECEIVED.findall(text)), Counter(RAN.findall(text))


def control_app(broker_url: str) -> Celery:
    """A Celery client of the broker, for remote control only."""
    return Celery("vx11-multihost-control", broker=broker_url)
