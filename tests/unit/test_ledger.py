"""The spawn ledger on SQLite always, and on PostgreSQL when VX11_TEST_DATABASE_URL is set."""

from __future__ import annotations

import base64
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, Index, MetaData, Table, inspect

from vx11.core.errors import BadCursor, IllegalTransition, NotFound
from vx11.core.ledger import Ledger, SpawnFilter
from vx11.core.ledger.paging import Position
from vx11.core.ledger.schema import SUPERSEDED_INDEXES, spawns
from vx11.core.ledger.store import PAGES, page_query
from vx11.core.states import SpawnStatus


def new_spawn(ledger: Ledger, **fields):
    return ledger.add({"task_type": "shell", "code": "true", "ttl_seconds": 30, **fields})


def test_a_new_spawn_is_queued_with_a_short_id_from_its_uuid(ledger):
    record = new_spawn(ledger, correlation_id="job-1", metadata={"team": "ops"})
    assert record["status"] == "QUEUED"
    assert record["spawn_id"] == f"spawn-{record['spawn_uuid'][:8]}"
    assert record["created_at"].tzinfo is not None
    stored = ledger.get(record["spawn_id"])
    assert stored["spawn_uuid"] == record["spawn_uuid"]
    assert stored["metadata"] == {"team": "ops"}
    assert ledger.get(record["spawn_uuid"])["correlation_id"] == "job-1"


def test_an_unknown_id_is_not_found(ledger):
    with pytest.raises(NotFound):
        ledger.get("spawn-00000000")
    with pytest.raises(NotFound):
        ledger.get(str(uuid.uuid4()))


def test_a_spawn_moves_through_its_lifecycle_and_keeps_its_result(ledger):
    record = new_spawn(ledger)
    running = ledger.transition(record["spawn_uuid"], SpawnStatus.RUNNING, worker="w1")
    assert running["status"] == "RUNNING" and running["worker"] == "w1"
    done = ledger.transition(
        record["spawn_uuid"], SpawnStatus.DONE, exit_code=0, stdout="hello\n", duration_ms=5
    )
    assert done["status"] == "DONE"
    assert done["finished_at"] is not None
    assert ledger.get(record["spawn_id"])["stdout"] == "hello\n"


def test_a_terminal_spawn_refuses_every_further_transition(ledger):
    record = new_spawn(ledger)
    ledger.transition(record["spawn_uuid"], SpawnStatus.RUNNING)
    ledger.transition(record["spawn_uuid"], SpawnStatus.FAILED, exit_code=2)
    for target in (SpawnStatus.RUNNING, SpawnStatus.DONE, SpawnStatus.CANCELLED):
        with pytest.raises(IllegalTransition) as caught:
            ledger.transition(record["spawn_uuid"], target)
        assert caught.value.current is SpawnStatus.FAILED
    assert ledger.get(record["spawn_uuid"])["exit_code"] == 2


def test_only_one_of_many_racing_claims_wins(ledger):
    record = new_spawn(ledger)
    wins, losses = [], []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        try:
            ledger.transition(record["spawn_uuid"], SpawnStatus.RUNNING)
            wins.append(1)
        except IllegalTransition:
            losses.append(1)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(wins), len(losses)) == (1, 7)


def test_spawn_ids_stay_unique(ledger):
    ids = {new_spawn(ledger)["spawn_id"] for _ in range(200)}
    assert len(ids) == 200


def test_limits_and_args_round_trip(ledger):
    limits = {
        "cpu_time_limit": 3600,
        "memory_limit_mb": 16,
        "max_processes": 512,
        "max_output_bytes": 0,
        "max_file_size_mb": 256,
    }
    args = ["-v", "two words", "ünïcödé ✓", "", "$HOME"]
    record = new_spawn(ledger, limits=limits, args=args)
    assert (record["limits"], record["args"]) == (limits, args)
    stored = ledger.get(record["spawn_id"])
    assert (stored["limits"], stored["args"]) == (limits, args)
    running = ledger.transition(record["spawn_uuid"], SpawnStatus.RUNNING)
    assert (running["limits"], running["args"]) == (limits, args)


def older_table(
    table: Table, without: tuple[str, ...] = (), indexes: tuple[Index, ...] = ()
) -> Table:
    """``table`` as an older VX11 made it: its columns but those named ``without``, and of
    indexes only ``indexes``."""
    return Table(
        table.name,
        MetaData(),
        *(
            Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in table.c
            if c.name not in without
        ),
        *indexes,
    )


OLD_ROW = {
    "spawn_uuid": "0badc0de-0000-4000-8000-000000000000",
    "spawn_id": "spawn-0badc0de",
    "status": "DONE",
    "task_type": "shell",
    "code": "true",
    "ttl_seconds": 30,
    "stdout_truncated": False,
    "stderr_truncated": False,
    "created_at": datetime(2026, 1, 1, tzinfo=UTC),
}


def test_a_ledger_made_before_limits_existed_gains_the_new_columns(empty_ledger):
    old = older_table(spawns, without=("limits", "args"))
    old.create(empty_ledger.engine)
    with empty_ledger.engine.begin() as conn:
        conn.execute(old.insert(), OLD_ROW)
    empty_ledger.create_schema()
    empty_ledger.create_schema()  # the next start finds nothing to add
    before = empty_ledger.get(OLD_ROW["spawn_id"])
    assert (before["status"], before["limits"], before["args"]) == ("DONE", None, None)
    after = new_spawn(empty_ledger, limits={"max_processes": 8}, args=["a"])
    stored = empty_ledger.get(after["spawn_id"])
    assert (stored["limits"], stored["args"]) == ({"max_processes": 8}, ["a"])


# --- history pages ----------------------------------------------------------------------------

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def insert_at(ledger: Ledger, created_at: datetime, **fields) -> str:
    """A record created at ``created_at``, written as the table holds it; its uuid."""
    spawn_uuid = fields.pop("spawn_uuid", None) or str(uuid.uuid4())
    row = {
        "spawn_uuid": spawn_uuid,
        "spawn_id": f"spawn-{spawn_uuid[:8]}",
        "status": "QUEUED",
        "task_type": "shell",
        "code": "true",
        "stdin": "in",
        "stdout": "out",
        "stderr": "err",
        "ttl_seconds": 30,
        "stdout_truncated": False,
        "stderr_truncated": False,
        "created_at": created_at,
        **fields,
    }
    with ledger.engine.begin() as conn:
        conn.execute(spawns.insert(), row)
    return spawn_uuid


def walk(ledger: Ledger, filters=None, limit: int = 2, between=None) -> list[str]:
    """The uuids of every page, following cursors; ``between()`` runs after each page."""
    seen, cursor = [], None
    while True:
        page = ledger.page(filters, limit, cursor)
        assert len(page.rows) <= limit
        seen += [r["spawn_uuid"] for r in page.rows]
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor
        if between:
            between()


def test_a_page_lists_the_newest_first_without_the_heavy_fields(ledger):
    older = insert_at(ledger, T0)
    newer = insert_at(ledger, T0 + timedelta(seconds=1))
    page = ledger.page()
    assert [r["spawn_uuid"] for r in page.rows] == [newer, older]
    assert page.next_cursor is None
    record = page.rows[0]
    assert not {"code", "stdin", "stdout", "stderr"} & set(record)
    assert record["created_at"] == T0 + timedelta(seconds=1)
    assert record["task_type"] == "shell" and record["status"] == "QUEUED"


def test_following_cursors_repeats_and_skips_nothing_while_spawns_arrive(ledger):
    first = [new_spawn(ledger)["spawn_uuid"] for _ in range(7)]
    arrived = []

    def more_arrive():
        arrived.extend(new_spawn(ledger)["spawn_uuid"] for _ in range(3))

    assert walk(ledger, limit=2, between=more_arrive) == first[::-1]
    assert len(arrived) == 9  # three more after each of the three pages that had a next
    assert walk(ledger, limit=5) == (first + arrived)[::-1]


def test_records_created_in_the_same_microsecond_page_by_their_uuid(ledger):
    uuids = sorted(insert_at(ledger, T0) for _ in range(5))
    insert_at(ledger, T0 - timedelta(microseconds=1), spawn_uuid="f" * 8 + uuids[0][8:])
    assert walk(ledger, limit=1)[:5] == uuids[::-1]
    assert len(walk(ledger, limit=1)) == 6


def test_a_page_holds_at_most_limit_records_and_says_when_more_follow(ledger):
    for index in range(5):
        insert_at(ledger, T0 + timedelta(seconds=index))
    assert len(ledger.page(limit=5).rows) == 5
    assert ledger.page(limit=5).next_cursor is None
    assert ledger.page(limit=4).next_cursor is not None
    with pytest.raises(ValueError):
        ledger.page(limit=0)


def test_each_filter_selects_only_its_spawns(ledger):
    done_shell = insert_at(ledger, T0, status="DONE", correlation_id="job-1")
    done_python = insert_at(ledger, T0 + timedelta(seconds=1), status="DONE", task_type="python")
    failed = insert_at(ledger, T0 + timedelta(seconds=2), status="FAILED", correlation_id="job-1")
    queued = insert_at(ledger, T0 + timedelta(seconds=3))
    done = (SpawnStatus.DONE,)
    cases = [
        (SpawnFilter(statuses=done), [done_python, done_shell]),
        (SpawnFilter(statuses=(SpawnStatus.DONE, SpawnStatus.FAILED)),
         [failed, done_python, done_shell]),
        (SpawnFilter(statuses=(SpawnStatus.RUNNING,)), []),
        (SpawnFilter(task_type="python"), [done_python]),
        (SpawnFilter(task_type="shell"), [queued, failed, done_shell]),
        (SpawnFilter(correlation_id="job-1"), [failed, done_shell]),
        (SpawnFilter(statuses=done, task_type="shell"), [done_shell]),
        (SpawnFilter(statuses=done, correlation_id="job-1", task_type="python"), []),
    ]  # fmt: skip
    for filters, expected in cases:
        assert walk(ledger, filters, limit=1) == expected, filters


def test_since_is_inclusive_and_until_exclusive_in_any_time_zone(ledger):
    stamps = [T0 + timedelta(minutes=m) for m in range(4)]
    uuids = [insert_at(ledger, stamp) for stamp in stamps]
    since = SpawnFilter(since=stamps[1])
    assert walk(ledger, since) == uuids[:0:-1]
    until = SpawnFilter(until=stamps[2])
    assert walk(ledger, until) == uuids[1::-1]
    both = SpawnFilter(since=stamps[1], until=stamps[3])
    assert walk(ledger, both, limit=1) == [uuids[2], uuids[1]]
    paris = timezone(timedelta(hours=1))
    assert walk(ledger, SpawnFilter(since=stamps[1].astimezone(paris))) == uuids[:0:-1]
    naive = stamps[3].replace(tzinfo=None)  # naive means UTC
    assert walk(ledger, SpawnFilter(until=naive)) == uuids[2::-1]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


A_UUID = "3f1c0000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not a cursor",
        "!!!!",
        b64(b"{}"),
        b64(b"[]"),
        b64(b'["yesterday","%s"]' % A_UUID.encode()),
        b64(b'["2026-03-01T12:00:00","%s"]' % A_UUID.encode()),  # no time zone
        b64(b'["2026-03-01T12:00:00+00:00","%s"]' % A_UUID.replace("-", "").encode()),
        b64(b'["2026-03-01T12:00:00+00:00",7]'),
        b64(b'["2026-03-01T12:00:00+00:00","%s","extra"]' % A_UUID.encode()),
        b64(b"\xff\xfe"),
        "A" * 4000,
    ],
)
def test_a_cursor_the_ledger_did_not_make_is_refused(ledger, cursor):
    with pytest.raises(BadCursor):
        ledger.page(cursor=cursor)


def test_a_tampered_cursor_is_refused(ledger):
    for index in range(3):
        insert_at(ledger, T0 + timedelta(seconds=index))
    cursor = ledger.page(limit=1).next_cursor
    assert len(ledger.page(limit=5, cursor=cursor).rows) == 2
    for position in range(len(cursor)):
        for replacement in "*~.":
            tampered = cursor[:position] + replacement + cursor[position + 1 :]
            with pytest.raises(BadCursor):
                ledger.page(cursor=tampered)
    with pytest.raises(BadCursor):
        ledger.page(cursor=cursor[:-3])


def test_a_cursor_round_trips_its_position_to_the_microsecond():
    position = Position(T0 + timedelta(microseconds=7), str(uuid.uuid4()))
    assert PAGES.decode(position.encode()) == position


def test_every_filtered_page_walks_an_index_and_sorts_nothing(ledger):
    """Plans on the empty table: SQLite's does not depend on statistics; PostgreSQL is
    told to avoid what suits a tiny table (scanning it, sorting), so its plan shows
    whether an index gives the page in order."""
    after = Position(T0, str(uuid.uuid4()))
    filters = [
        SpawnFilter(),
        SpawnFilter(statuses=(SpawnStatus.DONE,)),
        SpawnFilter(task_type="shell"),
        SpawnFilter(correlation_id="job-1"),
        SpawnFilter(statuses=(SpawnStatus.DONE,), task_type="shell", since=T0 - timedelta(days=1)),
    ]
    for spawn_filter in filters:
        for position in (None, after):
            plan = query_plan(ledger, page_query(spawn_filter, 51, position))
            assert "ix_spawns_" in plan, (spawn_filter, plan)
            assert "TEMP B-TREE" not in plan and not sorts(plan), (spawn_filter, plan)


def test_several_statuses_merge_one_bounded_index_walk_per_status(ledger):
    statuses = (SpawnStatus.QUEUED, SpawnStatus.DONE, SpawnStatus.FAILED)
    spawn_filter = SpawnFilter(statuses=statuses, task_type="python")
    for position in (None, Position(T0, str(uuid.uuid4()))):
        plan = query_plan(ledger, page_query(spawn_filter, 51, position))
        walks = re.findall(r"(?:USING INDEX|Index Scan Backward using) ix_spawns_", plan)
        assert len(walks) == 3, plan
        assert "SCAN spawns" not in plan and not sorts(plan), plan  # merged, not sorted
    for index, status in enumerate(["QUEUED", "DONE", "FAILED", "RUNNING"] * 3):
        insert_at(ledger, T0 + timedelta(seconds=index), status=status, task_type="python")
    expected = [r["spawn_uuid"] for r in ledger.page(limit=20).rows if r["status"] != "RUNNING"]
    assert walk(ledger, spawn_filter, limit=2) == expected


def sorts(plan: str) -> bool:
    """Whether a PostgreSQL plan sorts (a Merge Append's "Sort Key" merges)."""
    return re.search(r"(^|->  )(Incremental )?Sort ", plan, re.MULTILINE) is not None


def query_plan(ledger: Ledger, stmt) -> str:
    with ledger.engine.connect() as conn:
        sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
            return "\n".join(row[-1] for row in rows)
        schema = conn.schema_for_object(spawns)
        conn.exec_driver_sql(f"SET LOCAL search_path TO {schema}")
        for method in ("seqscan", "bitmapscan", "sort"):  # an ordered index path, if any
            conn.exec_driver_sql(f"SET LOCAL enable_{method} TO off")
        return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}").all())


def test_an_older_ledger_gains_the_history_indexes_and_drops_the_ones_they_replace(
    empty_ledger,
):
    old = older_table(
        spawns,
        indexes=(
            Index("ix_spawns_created_at", "created_at"),
            Index("ix_spawns_status_created_at", "status", "created_at"),
            Index("ix_spawns_correlation_id", "correlation_id"),
            Index("ix_spawns_kept_by_someone", "worker"),
        ),
    )
    old.create(empty_ledger.engine)
    empty_ledger.create_schema()
    empty_ledger.create_schema()  # the next start finds nothing to do

    with empty_ledger.engine.connect() as conn:
        schema = conn.schema_for_object(spawns)
        names = {ix["name"] for ix in inspect(conn).get_indexes("spawns", schema)}
    assert names >= {index.name for index in spawns.indexes}
    assert not names & SUPERSEDED_INDEXES
    assert "ix_spawns_kept_by_someone" in names


def test_an_audit_log_made_before_token_ids_gains_the_column(empty_ledger):
    from vx11.core.audit import AuditEntry, AuditEvent, AuditLog, audit

    old = older_table(audit, without=("token_id",))
    old.create(empty_ledger.engine)
    empty_ledger.create_schema()
    log = AuditLog(empty_ledger.engine)
    log.record(AuditEntry(AuditEvent.WINDOW_OPENED, token_label="ops", token_id="0123456789ab"))
    (entry,) = log.page().rows
    assert (entry["token_label"], entry["token_id"]) == ("ops", "0123456789ab")


def test_a_database_error_never_shows_a_spawns_code(empty_ledger):
    from sqlalchemy.exc import IntegrityError

    secret = "print('the secret code')"
    empty_ledger.create_schema()
    record = new_spawn(empty_ledger, code=secret)
    with pytest.raises(IntegrityError) as caught, empty_ledger.engine.begin() as conn:
        conn.execute(spawns.insert(), {**record, "code": secret})  # the same primary key
    assert secret not in str(caught.value)
