"""Task types: what runs a spawn's code.

Three are built in: ``python``, ``shell`` (POSIX ``sh``) and ``bash``. An operator
declares more in a TOML file, ``VX11_TASK_TYPES_FILE``, one table per task type::

    [perl]
    interpreter = ["/usr/bin/perl"]       # argv; then the code's file, then the args
    main = "main.pl"                      # the file in /work the code is written to
    version = ["/usr/bin/perl", "-e", "print $^V"]   # prints the version (optional)
    binds = ["/opt/perl"]                 # read-only in the sandbox, under /usr or /opt
    description = "Perl 5"
    limits = { ttl_seconds = 10, memory_limit_mb = 128 }   # defaults of its spawns

The gateway and the workers read the same file when they start and refuse to start on
a bad one (:class:`TaskTypeFileError`, naming the file, the task type and the field).
What the file may say is checked here; what only the worker's host can tell (that the
interpreter is there, where a bind really leads) is checked by the worker
(:mod:`workers.sandbox.runtimes`).
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from vx11.core.config import Settings

BUILTIN = ("python", "shell", "bash")
RESERVED = ("show", "follow", "cancel")
"""Names no task type may take: ``vx11 spawn``'s other commands, which would hide a
task type of that name from the CLI."""
QUEUED_WITHOUT_WORKER = ("python", "shell")
"""Accepted whether or not a worker is live (the spawn waits in the queue): every
worker runs them. Any other task type only while a live worker offers it
(:mod:`vx11.core.offers`): bash, where a worker has it, and the declared ones."""
BIND_ROOTS = ("/usr", "/opt")
"""The host trees a declared task type may bind into the sandbox (read-only)."""
LIMITS = {
    # limit: (least value, the setting of its default, the setting of its maximum)
    "ttl_seconds": (1, "spawn_default_ttl", "spawn_max_ttl"),
    "cpu_time_limit": (1, None, "cpu_time_limit_max"),
    "memory_limit_mb": (16, "memory_limit_mb", "memory_limit_mb_max"),
    "max_processes": (1, "max_processes", "max_processes_max"),
    "max_output_bytes": (0, "max_output_bytes", "max_output_bytes_max"),
    "max_file_size_mb": (1, "max_file_size_mb", "max_file_size_mb_max"),
}
"""A spawn's limits, as its request names them: what a task type may give a default."""
NAME = r"[a-z][a-z0-9_-]{0,15}"


class TaskTypeFileError(ValueError):
    """``VX11_TASK_TYPES_FILE`` cannot be read, or says something VX11 does not run."""


@dataclass(frozen=True)
class Runtime:
    """A task type: how its code runs."""

    name: str
    interpreter: tuple[str, ...]
    """The command line before the code's file (a built-in shell: before the code)."""
    main: str | None
    """The file in the working directory the code is written to; None: the code is an
    argument (``sh -c``)."""
    binds: tuple[str, ...] = ()
    version: tuple[str, ...] = ()
    """A command that prints the interpreter's version (its first line is kept)."""
    limits: tuple[tuple[str, int], ...] = ()
    """Defaults of its spawns' limits, over the server's."""
    description: str = ""
    builtin: bool = False

    def argv(self, args: Sequence[str]) -> list[str]:
        """The command line of a run of a declared task type."""
        return [*self.interpreter, str(self.main), *args]


def builtins(settings: Settings) -> tuple[Runtime, ...]:
    return (
        Runtime(
            "python", (settings.sandbox_python, "-I", "-u"), "main.py",
            version=(settings.sandbox_python, "--version"),
            description="Python 3, isolated mode (-I), unbuffered (-u).", builtin=True,
        ),
        Runtime("shell", ("/bin/sh", "-c"), None, description="POSIX sh.", builtin=True),
        Runtime(
            "bash", ("bash", "-c"), None, version=("bash", "--version"),
            description="GNU bash, where the worker has it.", builtin=True,
        ),
    )  # fmt: skip


@functools.cache  # read once per process, when it starts; a miss raises, and is not kept
def load(settings: Settings) -> tuple[Runtime, ...]:
    """Every task type: the built-in ones, then those of ``VX11_TASK_TYPES_FILE``, whose
    default limits are checked against ``settings``' maximums."""
    path = settings.task_types_file
    if not path:
        return builtins(settings)
    try:
        with open(path, "rb") as file:
            tables = tomllib.load(file)
    except OSError as exc:
        raise TaskTypeFileError(f"VX11_TASK_TYPES_FILE {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TaskTypeFileError(f"VX11_TASK_TYPES_FILE {path}: not TOML: {exc}") from None
    declared = []
    for name, table in tables.items():
        where = f"VX11_TASK_TYPES_FILE {path}: task type {name!r}"
        if not re.fullmatch(NAME, name) or name in BUILTIN or name in RESERVED:
            raise TaskTypeFileError(
                f"{where}: a name is a lowercase letter, then up to 15 of a-z 0-9 _ -, "
                f"neither a built-in one ({', '.join(BUILTIN)}) nor one of the CLI's "
                f"`vx11 spawn` commands ({', '.join(RESERVED)})"
            )
        if not isinstance(table, dict):
            raise TaskTypeFileError(f"{where}: must be a table ([{name}])")
        try:
            data = _RuntimeSchema().load(table)
        except ValidationError as exc:
            raise TaskTypeFileError(f"{where}: {_first(exc.messages)}") from None
        for limit, value in data["limits"].items():
            least, _, maximum = LIMITS[limit]
            most = getattr(settings, maximum)
            if not least <= value <= most:
                raise TaskTypeFileError(
                    f"{where}: limits.{limit} must be between {least} and {most} "
                    f"(VX11_{maximum.upper()}), not {value}"
                )
        declared.append(
            Runtime(
                name, tuple(data["interpreter"]), data["main"], tuple(data["binds"]),
                tuple(data["version"]), tuple(sorted(data["limits"].items())),
                data["description"],
            )
        )  # fmt: skip
    return builtins(settings) + tuple(declared)


def server_defaults(settings: Settings) -> dict[str, int | None]:
    """Each limit's default when neither the request nor its task type gives one
    (None: the CPU time, whose default is the spawn's ttl)."""
    return {
        limit: getattr(settings, default) if default else None
        for limit, (_, default, _) in LIMITS.items()
    }


def defaults(runtime: Runtime, settings: Settings) -> dict[str, int | None]:
    """The limits a spawn of ``runtime`` gets when it gives none."""
    return {**server_defaults(settings), **dict(runtime.limits)}


def maximums(settings: Settings) -> dict[str, int]:
    return {limit: getattr(settings, maximum) for limit, (_, _, maximum) in LIMITS.items()}


def is_relative(path: str) -> bool:
    """Whether ``path`` names a place inside a directory: relative, without empty, ``.``
    or ``..`` parts, and without NUL."""
    return (
        bool(path)
        and "\0" not in path
        and not path.startswith("/")
        and all(part not in ("", ".", "..") for part in path.split("/"))
    )


def is_bindable(path: str) -> bool:
    """Whether ``path`` is, as written, an absolute normal path under :data:`BIND_ROOTS`."""
    return (
        "\0" not in path
        and os.path.normpath(path) == path
        and not path.startswith("//")
        and any(path == root or path.startswith(root + "/") for root in BIND_ROOTS)
    )


def _first(messages: Any) -> str:
    """A marshmallow error as one line: the first field's first message, with its path."""
    if isinstance(messages, Mapping):
        key, value = next(iter(messages.items()))
        inner = _first(value)
        return f"{key}.{inner}" if isinstance(value, Mapping) else f"{key}: {inner}"
    if isinstance(messages, list) and messages:
        return _first(messages[0])
    return str(messages)


def _arguments(least: int, **options: Any) -> fields.List[str]:
    """A command line: up to 64 non-empty arguments without NUL."""
    return fields.List(
        fields.String(
            validate=validate.And(
                validate.Length(min=1),
                validate.Predicate("isprintable", error="must be printable text"),
            )
        ),
        validate=validate.Length(min=least, max=64),
        **options,
    )


class _RuntimeSchema(Schema):
    class Meta:
        unknown = RAISE

    interpreter = _arguments(1, required=True)
    main = fields.String(required=True, validate=validate.Length(max=255))
    version = _arguments(0, load_default=list)
    binds = fields.List(fields.String(), load_default=list, validate=validate.Length(max=32))
    description = fields.String(load_default="", validate=validate.Length(max=200))
    limits = fields.Dict(
        keys=fields.String(validate=validate.OneOf(tuple(LIMITS))),
        values=fields.Integer(strict=True),
        load_default=dict,
    )

    @validates("interpreter")
    def _interpreter(self, argv: list[str], **_: Any) -> None:
        program = argv[0]
        if "/" in program and not program.startswith("/"):
            raise ValidationError(
                f"{program!r}: the program is a name looked up on the sandbox's PATH, "
                "or an absolute path"
            )

    @validates("main")
    def _main(self, main: str, **_: Any) -> None:
        if not is_relative(main):
            raise ValidationError(f"{main!r} is not a relative path without . or .. parts")

    @validates("binds")
    def _binds(self, binds: list[str], **_: Any) -> None:
        for path in binds:
            if not is_bindable(path):
                raise ValidationError(
                    f"{path!r}: a bind is an absolute path without . or .. parts under "
                    f"{' or '.join(BIND_ROOTS)}"
                )
