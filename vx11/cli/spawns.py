"""``vx11 spawn python|shell|bash|show|follow|cancel`` and ``vx11 spawns ls``: submitting code,
following it, reading and cancelling spawns, and the history."""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vx11.cli.client import Client
from vx11.cli.common import (
    CliError,
    ExitCode,
    Moment,
    choices_option,
    client_command,
    duration,
    echo_answer,
    echo_json,
    echo_listing,
    table,
    when,
)
from vx11.cli.follow import exit_code_of, follow, outcome_line
from vx11.core.runtimes import NAME

STDIN_READ_MAX = 64 << 20
"""Bytes of standard input read at most: past them (``yes | vx11 spawn ...``) no gateway
would take it anyway."""
STATUSES = ("QUEUED", "RUNNING", "DONE", "FAILED", "TIMEOUT", "CANCELLED", "ERROR")
LIMIT_OPTIONS = (
    ("--cpu-time", "cpu_time_limit", "CPU-time limit, seconds  [default: the ttl]"),
    ("--memory-mb", "memory_limit_mb", "Memory limit, MiB."),
    ("--max-processes", "max_processes", "Processes at once."),
    ("--max-output-bytes", "max_output_bytes", "Bytes of stdout and of stderr kept."),
    ("--max-file-size-mb", "max_file_size_mb", "Largest file it may write, MiB."),
)
"""Per-spawn limits: option, request field, help. Left out, the server's default applies;
over the server's maximum is a 422 naming the field."""


class SpawnGroup(click.Group):
    """``vx11 spawn TYPE``: besides the built-in task types' commands, the same command
    for any other task type's name (one the server declares: ``vx11 runtimes``; the
    gateway refuses one it does not know)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and re.fullmatch(NAME, cmd_name):
            return submit_command(
                cmd_name,
                f"Run {cmd_name} CODE (or -f FILE) in the sandbox, a task type the server "
                "declares (vx11 runtimes); print its spawn id.",
            )
        return command


@click.group(cls=SpawnGroup)
def spawn() -> None:
    """Run code (python, shell, bash, or TYPE: a task type the server declares, as
    vx11 runtimes lists), read a spawn (show), follow one to its end (follow), stop one
    (cancel)."""


def _read_text(path: str, what: str, hint: str = "") -> str:
    """The UTF-8 text of ``path`` (``-``: standard input), or a one-line usage error
    (``hint`` added)."""
    name = "standard input" if path == "-" else f"{what} {path}"
    try:
        if path == "-":
            data = sys.stdin.buffer.read(STDIN_READ_MAX + 1)
            if len(data) > STDIN_READ_MAX:
                problem = f"{name} goes on past {STDIN_READ_MAX >> 20} MiB"
                raise CliError(problem + hint, ExitCode.USAGE)
        else:
            with open(path, "rb") as file:
                data = file.read()
        return data.decode("utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror}{hint}", ExitCode.USAGE) from None
    except UnicodeDecodeError:
        raise CliError(f"{name} is not UTF-8 text{hint}", ExitCode.USAGE) from None


def stdin_is_data() -> bool:
    """Whether our standard input is data for the spawn: a pipe or a regular file. A
    terminal, ``/dev/null`` or another device, a socket and a closed or replaced stdin
    are never read."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, ValueError, OSError):  # None, closed, or not a file (a test's)
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def spawn_request(task_type: str, options: dict[str, Any]) -> dict[str, Any]:
    """The body of ``POST /vx11/spawn`` from the command's options."""
    code, code_file, stdin_file = options["code"], options["code_file"], options["stdin_file"]
    if code is None and code_file is None:
        raise CliError("no code: give it as an argument, or with -f FILE", ExitCode.USAGE)
    if code is not None and code_file is not None:
        raise CliError("give the code as an argument or with -f FILE, not both", ExitCode.USAGE)
    if code_file == "-" and stdin_file == "-":
        raise CliError("-f - and --stdin-file - cannot both read standard input", ExitCode.USAGE)
    if options["no_stdin"] and stdin_file is not None:
        raise CliError("--no-stdin and --stdin-file contradict each other", ExitCode.USAGE)
    body: dict[str, Any] = {
        "task_type": task_type,
        "code": code if code_file is None else _read_text(code_file, "code file"),
    }
    if stdin_file is not None:
        body["stdin"] = _read_text(stdin_file, "stdin file")
    elif code_file != "-" and not options["no_stdin"] and stdin_is_data():
        # `echo data | vx11 spawn ...`: what is piped in is the spawn's, as for any filter
        piped = _read_text("-", "standard input", " (--no-stdin leaves it unread)")
        if piped:
            body["stdin"] = piped
    if options["metadata"] is not None:
        try:
            body["metadata"] = json.loads(options["metadata"])
        except ValueError:
            raise CliError("--metadata must be a JSON object", ExitCode.USAGE) from None
    if options["args"]:
        body["args"] = list(options["args"])
    if options["files"]:
        body["files"] = [_input_file(path) for path in options["files"]]
    if options["artifacts"]:
        body["artifacts"] = list(options["artifacts"])
    if options["merge_stderr"]:
        body["merge_stderr"] = True
    if options["out_dir"] is not None and not options["wait"]:
        raise CliError(
            "--out downloads artifacts once the spawn has ended: add --wait", ExitCode.USAGE
        )
    for name, field in (
        ("ttl", "ttl_seconds"),
        ("correlation_id", "correlation_id"),
        ("max_retries", "max_retries"),
        ("callback_url", "callback_url"),
        *((field, field) for _, field, _ in LIMIT_OPTIONS),
    ):
        if options[name] is not None:
            body[field] = options[name]
    return body


def _input_file(path: str) -> dict[str, str]:
    """``--file path``: its bytes, at ``path`` under the spawn's working directory when
    that is a plain relative path, else at its name."""
    parts = path.split("/")
    clean = not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise CliError(f"cannot read the file {path}: {exc.strerror}", ExitCode.USAGE) from None
    content = base64.b64encode(data).decode("ascii")
    return {"path": path if clean else os.path.basename(path), "content": content,
            "encoding": "base64"}  # fmt: skip


def download_artifacts(client: Client, record: dict[str, Any], out_dir: str) -> None:
    """The spawn's artifacts, under ``out_dir`` at their paths."""
    root = Path(out_dir).resolve()
    for artifact in record.get("artifacts") or ():
        target = (root / artifact["path"]).resolve()
        if not target.is_relative_to(root):  # never outside DIR, whatever the gateway says
            raise CliError(f"refusing the artifact path {artifact['path']!r}", ExitCode.API_ERROR)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.artifact(record["spawn_id"], artifact["path"]))
    if record.get("artifacts_truncated"):
        click.echo("vx11: some artifacts were left out (max_artifact_bytes)", err=True)


def submit_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options of ``vx11 spawn python`` and ``vx11 spawn shell``."""
    decorators = [
        click.argument("code", required=False),
        click.option(
            "-f",
            "--code-file",
            "code_file",
            metavar="FILE",
            help="Read the code from FILE (-: stdin).",
        ),
        click.option(
            "--file",
            "files",
            multiple=True,
            metavar="FILE",
            help="Give the code FILE, at its relative path under its working directory "
            "(an absolute one: by its name); repeatable.",
        ),
        click.option(
            "--artifact",
            "artifacts",
            multiple=True,
            metavar="GLOB",
            help="Keep the files matching GLOB (relative to its working directory) once it "
            "has ended; repeatable.",
        ),
        click.option(
            "--out",
            "out_dir",
            metavar="DIR",
            type=click.Path(file_okay=False),
            help="With --wait: download its artifacts into DIR.",
        ),
        click.option(
            "--merge-stderr", is_flag=True, help="Send its stderr into its stdout, in order."
        ),
        click.option(
            "--ttl",
            type=click.IntRange(min=1),
            help="Wall-clock limit, s  [default: the server's, 30]",
        ),
        click.option(
            "--stdin-file",
            metavar="FILE",
            help="Feed FILE to the code's stdin (-: our stdin).  [default: our stdin when "
            "it is a pipe or a file, and -f - does not read it]",
        ),
        click.option("--no-stdin", is_flag=True, help="Feed the code no stdin; leave ours unread."),
        click.option(
            "--arg", "args", multiple=True, help="An argument ($1, sys.argv[1]); repeatable."
        ),
        click.option("--correlation-id", help="Your id for this spawn, to find it by."),
        click.option("--metadata", metavar="JSON", help="A JSON object kept with the spawn."),
        click.option(
            "--max-retries", type=click.IntRange(min=0), help="Re-runs if its worker is lost."
        ),
        *(
            click.option(flag, field, type=int, metavar="N", help=text)
            for flag, field, text in LIMIT_OPTIONS
        ),
        click.option("--callback-url", help="POST the final record there (signed)."),
        click.option("--idempotency-key", help="Retry safely: same key, same spawn."),
        click.option(
            "-w", "--wait", is_flag=True, help="Stream its output and exit with its exit code."
        ),
    ]
    return functools.reduce(lambda f, decorate: decorate(f), reversed(decorators), fn)


def run_spawn(client: Client, task_type: str, options: dict[str, Any]) -> None:
    as_json = options["as_json"]
    answer = client.spawn(spawn_request(task_type, options), options["idempotency_key"])
    if answer.get("error"):
        if as_json:
            echo_json(answer)
        reason = f": {answer['reason']}" if answer.get("reason") else ""
        raise CliError(
            f"{answer['error']}{reason}; open a window first: vx11 window open spawner",
            ExitCode.REFUSED,
        )
    if not options["wait"]:
        echo_answer(answer, as_json, lambda answer: answer["spawn_id"])
        return
    follow_to_its_end(client, answer["spawn_id"], as_json, options["out_dir"])


def follow_to_its_end(
    client: Client, spawn_id: str, as_json: bool, out_dir: str | None = None
) -> None:
    """Follow the spawn, its output live (``--json``: the final record), download its
    artifacts into ``out_dir``, then exit with the code its end stands for."""
    record = follow(client, spawn_id, live_output=not as_json)
    if out_dir is not None:
        download_artifacts(client, record, out_dir)
    if as_json:
        echo_json(record)
    else:
        click.echo(f"vx11: {outcome_line(record)}", err=True)
    click.get_current_context().exit(exit_code_of(record))


def submit_command(task_type: str, summary: str) -> click.Command:
    """``vx11 spawn TASK_TYPE``."""

    @click.command(
        task_type,
        help=f"""{summary}

        With --wait, stream its output and exit with its exit code (docs/cli.md).""",
    )
    @submit_options
    @client_command
    def command(client: Client, **options: Any) -> None:
        run_spawn(client, task_type, options)

    return command


for _task_type, _summary in (
    ("python", "Run Python CODE (or -f FILE) in the sandbox; print its spawn id."),
    ("shell", "Run shell CODE (or -f FILE) with /bin/sh in the sandbox; print its spawn id."),
    ("bash", "Run bash CODE (or -f FILE) in the sandbox, where the worker has bash; print "
             "its spawn id."),
):  # fmt: skip
    spawn.add_command(submit_command(_task_type, _summary))


def record_text(record: dict[str, Any]) -> str:
    """A spawn's record for people: the facts, then its output."""
    limits = record.get("limits") or {}
    peak_kb = record.get("peak_memory_kb")
    rows = [
        ("status", outcome_line(record)),
        ("uuid", record.get("spawn_uuid")),
        ("type", record.get("task_type")),
        ("created", when(record.get("created_at"))),
        ("started", when(record.get("started_at"))),
        ("finished", when(record.get("finished_at"))),
        ("worker", record.get("worker")),
        ("sandbox", record.get("sandbox")),
        ("ttl", f"{record['ttl_seconds']} s" if record.get("ttl_seconds") else None),
        ("limits", ", ".join(f"{k} {v}" for k, v in limits.items()) or None),
        ("args", " ".join(json.dumps(a) for a in record.get("args") or []) or None),
        ("correlation", record.get("correlation_id")),
        ("attempts", record.get("attempts")),
        ("cpu time", duration(record.get("cpu_time_ms"))),
        ("peak memory", f"{peak_kb} KiB" if peak_kb else None),
        ("window", record.get("window_id")),
    ]
    processes = record.get("processes")
    if processes:
        rows.append(("processes", f"{processes.get('count')} (rss {processes.get('rss_kb')} KiB)"))
    if record.get("metadata"):
        rows.append(("metadata", json.dumps(record["metadata"], sort_keys=True)))
    lines = [f"{name + ':':<13}{value}" for name, value in rows if value not in (None, "")]
    for name in ("stdout", "stderr"):
        text = record.get(name)
        if text:
            cut = " (truncated)" if record.get(f"{name}_truncated") else ""
            lines.append(f"--- {name}{cut} ---")
            lines.append(text.rstrip("\n"))
    return "\n".join(lines)


@spawn.command("show")
@click.argument("spawn_id")
@click.option("-w", "--wait", is_flag=True, help="Follow it to its end, as vx11 spawn follow does.")
@client_command
def spawn_show(client: Client, spawn_id: str, wait: bool, as_json: bool) -> None:
    """A spawn's record and output, by spawn id or uuid.

    With --wait, follow it as `vx11 spawn follow` does."""
    if wait:
        follow_to_its_end(client, spawn_id, as_json)
        return
    record = client.get_spawn(spawn_id)
    echo_answer(record, as_json, record_text)


@spawn.command("follow")
@click.argument("spawn_id")
@client_command
def spawn_follow(client: Client, spawn_id: str, as_json: bool) -> None:
    """Follow a spawn to its end, as --wait does, and exit with its exit code.

    SPAWN_ID is the spawn id or uuid. Its output so far is printed, then the rest as it
    comes: what a Ctrl-C on --wait left running is followed again this way. A finished
    spawn's output and exit code come at once (docs/cli.md)."""
    follow_to_its_end(client, spawn_id, as_json)


@spawn.command("cancel")
@click.argument("spawn_id")
@client_command
def spawn_cancel(client: Client, spawn_id: str, as_json: bool) -> None:
    """Cancel a queued or running spawn (a running one is killed within a second)."""
    record = client.cancel_spawn(spawn_id)
    echo_answer(record, as_json, outcome_line)


@click.group()
def spawns() -> None:
    """The spawn history."""


@spawns.command("ls")
@choices_option(
    "--status",
    "statuses",
    STATUSES,
    help="Only spawns in these states: any case, comma-separated or repeated.",
)
@click.option("--type", "task_type", help="Only this task type (vx11 runtimes lists them).")
@click.option("--correlation-id", help="Only spawns with this correlation id.")
@click.option("--since", type=Moment(), help="Created at or after: ISO 8601 or a time ago (2h).")
@click.option("--until", type=Moment(), help="Created before: ISO 8601 or a time ago.")
@click.option("--limit", type=click.IntRange(1, 200), help="Spawns per page  [default: 50]")
@click.option("--all", "all_pages", is_flag=True, help="Follow next_cursor to the last page.")
@client_command
def spawns_ls(
    client: Client,
    statuses: tuple[str, ...],
    task_type: str | None,
    correlation_id: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    all_pages: bool,
    as_json: bool,
) -> None:
    """Spawns, newest first: one page (--limit), or all of them (--all)."""
    params = {
        "status": list(statuses) or None,
        "task_type": task_type,
        "correlation_id": correlation_id,
        "since": since,
        "until": until,
        "limit": limit,
    }
    echo_listing(
        client, "/vx11/spawns", "spawns", params,
        all_pages=all_pages, as_json=as_json, render=spawns_table,
    )  # fmt: skip


def spawns_table(records: list[dict[str, Any]]) -> str:
    return table(
        ("id", "status", "type", "exit", "created (UTC)", "duration", "correlation"),
        (
            (
                r.get("spawn_id"),
                r.get("status"),
                r.get("task_type"),
                r.get("exit_code"),
                when(r.get("created_at")),
                duration(r.get("duration_ms")),
                r.get("correlation_id"),
            )
            for r in records
        ),
    )
