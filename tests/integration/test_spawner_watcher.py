"""What a run writes to Redis while it runs: its events and cancel check batched into one
round trip per tick, no round trip at all for a tick just after the claim asked, and no
live snapshot (the worker's heartbeat) before the run is a second old, which the
sweeper, the only reader that takes a missing snapshot for a lost run, never misreads."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import redis

from vx11.core.events import SpawnEvents, stream_key
from vx11.core.ledger import Ledger
from vx11.core.states import SpawnStatus
from vx11.core.times import utcnow
from workers import sweeper
from workers.spawner import SpawnWatcher


class CountingRedis(redis.Redis):
    """A client that counts the round trips it makes (a pipeline is one)."""

    round_trips = 0

    def execute_command(self, *args, **options):
        CountingRedis.round_trips += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction=True, shard_hint=None):
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def counted(*args, **kwargs):
            CountingRedis.round_trips += 1
            return execute(*args, **kwargs)

        pipe.execute = counted
        return pipe


@pytest.fixture
def events(redis_url):
    client = CountingRedis.from_url(redis_url)
    CountingRedis.round_trips = 0
    yield SpawnEvents(client)
    client.close()


def kinds(events: SpawnEvents, spawn_uuid: str) -> list[tuple[str, dict]]:
    return [(event.kind, event.data) for event in events.replay(spawn_uuid)]


def test_send_batches_entries_snapshot_and_cancel_check_in_one_round_trip(events):
    events.request_cancel("s1")
    CountingRedis.round_trips = 0
    cancel = events.send(
        "s1",
        [("state", {"status": "RUNNING"}), ("stdout", {"text": "a"})],
        live={"pids": [7]},
        check_cancel=True,
    )
    assert cancel is True and CountingRedis.round_trips == 1
    assert kinds(events, "s1") == [("state", {"status": "RUNNING"}), ("stdout", {"text": "a"})]
    assert events.live(["s1"]) == {"s1": {"pids": [7]}}
    assert events.send("s2", [("stdout", {"text": "b"})], check_cancel=True) is False


def test_send_with_nothing_to_do_makes_no_round_trip(events):
    assert events.send("s1") is False
    assert CountingRedis.round_trips == 0
    assert not events.redis.exists(stream_key("s1"))


def test_a_run_younger_than_a_second_writes_no_snapshot_and_ticks_just_after_the_claim_ask_nothing(
    events,
):
    watcher = SpawnWatcher("s1", events)
    watcher.started(lambda: {"pids": [1]})
    assert watcher.should_stop() is False  # the run's first tick, right after the claim
    assert CountingRedis.round_trips == 0
    watcher.checked -= watcher.poll_interval  # a tick later
    assert watcher.should_stop() is False
    assert CountingRedis.round_trips == 1  # the cancel check, alone
    assert events.live(["s1"]) == {}  # no snapshot yet


def test_a_run_a_second_old_writes_its_snapshot_with_its_output_and_cancel_check(events):
    watcher = SpawnWatcher("s1", events)
    watcher.started(lambda: {"pids": [1, 2]})
    watcher.COALESCE = 60.0
    watcher.last_sent = time.monotonic()
    watcher.output("stdout", b"line\n")  # gathered: the stream was not quiet
    watcher.next_live = time.monotonic()  # a second has passed
    events.request_cancel("s1")
    CountingRedis.round_trips = 0
    assert watcher.should_stop() is True
    assert CountingRedis.round_trips == 1
    assert events.live(["s1"]) == {"s1": {"pids": [1, 2]}}
    assert kinds(events, "s1") == [("stdout", {"text": "line\n"})]


def test_a_cancel_the_claim_found_stops_the_run_at_its_first_tick(events):
    watcher = SpawnWatcher("s1", events, cancel_requested=True)
    assert watcher.should_stop() is True
    assert CountingRedis.round_trips == 0


def test_redis_trouble_never_stops_a_run(redis_url):
    watcher = SpawnWatcher("s1", SpawnEvents(redis.Redis(port=1, socket_connect_timeout=0.2)))
    watcher.checked -= watcher.poll_interval
    watcher.next_live = 0.0
    assert watcher.should_stop() is False


def test_the_sweeper_takes_only_a_run_older_than_lost_after_without_a_snapshot_for_lost(
    events, tmp_path
):
    store = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    store.create_schema()
    ages = {"young": 0.5, "old": sweeper.LOST_AFTER + 1, "old and beating": sweeper.LOST_AFTER + 1}
    uuids = {}
    for name, age in ages.items():
        uuid = store.add({"task_type": "shell", "code": "true", "ttl_seconds": 30})["spawn_uuid"]
        started = utcnow() - timedelta(seconds=age)
        store.transition(uuid, SpawnStatus.RUNNING, attempt=0, attempts=1, started_at=started)
        uuids[name] = uuid
    events.send(uuids["old and beating"], live={"pids": [1]})
    assert sweeper.lost_candidates(store, events) == [uuids["old"]]
    store.engine.dispose()
