"""The spawn request: what ``POST /vx11/spawn`` and each item of a batch take, with
this deployment's limits and task types, and the spawn it becomes (:func:`decoded`)."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from typing import Any, ClassVar

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

from vx11.core import runtimes
from vx11.core.callbacks import callback_url_validator
from vx11.core.config import Settings
from vx11.gateway.api.blueprint import RELATIVE_PATH
from vx11.gateway.api.fields import FullMatch, Utf8Length

ENCODINGS = ("utf8", "base64")
"""How a request gives code and stdin, and how a read answers stdout and stderr."""


def encoding_field(description: str) -> fields.String:
    """An ``encoding`` of :data:`ENCODINGS`, ``utf8`` when left out."""
    return fields.String(
        load_default="utf8",
        validate=validate.OneOf(ENCODINGS),
        metadata={"description": description},
    )


MAX_RETRIES = 10
"""Most re-runs a spawn may ask for after losing its worker (the MVP's ``max_retries``)."""
CORRELATION_ID = FullMatch(
    r"^[A-Za-z0-9._:@/+=-]{1,128}$",
    error="1 to 128 characters of letters, digits and ._:@/+=-",
)
MAX_ARG_BYTES = 4096
"""Longest single entry of a spawn's ``args``, bytes of UTF-8."""


def _valid_arg(value: str) -> None:
    # An argument becomes an execve() string: NUL would cut it short, and a lone
    # surrogate has no UTF-8 form at all.
    if "\0" in value:
        raise ValidationError("an argument may not contain a NUL character")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError("an argument must be valid Unicode text") from None
    if size > MAX_ARG_BYTES:
        raise ValidationError(f"an argument is longer than {MAX_ARG_BYTES} bytes")


def _limit(low: int, high: int, default: int | None, meaning: str, setting: str) -> fields.Integer:
    """An optional per-spawn limit; ``high`` is the server's maximum. Left out, it takes
    the server's default (:func:`vx11.gateway.submit.resolve_limits`), published as the
    field's default (``None``: the default depends on the request, as ``meaning`` says)."""
    error = f"must be between {low} and {high} (the server's maximum)"
    description = f"{meaning} At most the server's maximum (VX11_{setting}_MAX)"
    metadata: dict[str, Any] = {"description": f"{description}."}
    if default is not None:
        metadata = {
            "description": f"{description}; left out, the server's default (VX11_{setting}).",
            "default": default,
        }
    return fields.Integer(
        strict=True, validate=validate.Range(low, high, error=error), metadata=metadata
    )


def _json_max(limit: int):
    def check(value: dict) -> None:
        if len(json.dumps(value, separators=(",", ":"))) > limit:
            raise ValidationError(f"metadata is larger than {limit} bytes of JSON")

    return check


class EncodedLength(Utf8Length):
    """A text of at most ``max`` bytes of UTF-8, or their base64 (``encoding: base64``):
    bounded here by the longer form, and exactly by :class:`SpawnRequestSchema`, which
    knows the request's encoding; one message, the same from both."""

    def __init__(self, max: int, *, min: int = 0) -> None:
        super().__init__(base64_length(max), min=min)
        self.shown = max

    def _format_error(self, value: Any, message: str) -> str:
        return message.format(input=value, min=self.min, max=self.shown)


MAX_PATH_BYTES = 1024
"""Longest path of a spawn's file, bytes of UTF-8."""


def _valid_path(path: str) -> None:
    """A file's path or an artifact pattern: it must stay in /work."""
    if not re.match(RELATIVE_PATH, path):
        raise ValidationError(
            "must be a relative path without empty, . or .. parts: it must stay in /work"
        )
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ValidationError(f"must be at most {MAX_PATH_BYTES} bytes of UTF-8")


MAX_ARTIFACT_PATTERNS = 32
"""Most artifact patterns one spawn may give."""


class InputFile(Schema):
    """One of a spawn's files."""

    path = fields.String(
        required=True,
        validate=_valid_path,
        metadata={"description": "Where, relative to the working directory: a/b.txt."},
    )
    content = fields.String(required=True, metadata={"description": "Its content."})
    encoding = encoding_field("utf8 (text) or base64 (its exact bytes).")


class SpawnRequestSchema(Schema):
    """What only the whole request can check: ``code``, ``stdin`` and the files in
    their encoding, their size once decoded, and files whose paths collide."""

    limits: ClassVar[dict[str, int]] = {}
    file_limits: ClassVar[tuple[int, int]] = (0, 0)
    """Bytes of one file, and of all the files, at most."""
    mains: ClassVar[dict[str, str]] = {}
    """Each task type's file of its code (python's ``main.py``), which no file may be."""
    own_limits: ClassVar[dict[str, dict[str, int]]] = {}
    """The default limits a declared task type gives its spawns (:mod:`vx11.core.runtimes`)."""

    @pre_load
    def _task_type_limits(self, data: Any, **kwargs: Any) -> Any:
        """A declared task type's default limits, where the request gives none."""
        if isinstance(data, dict) and isinstance(data.get("task_type"), str):
            own = self.own_limits.get(data["task_type"])
            if own:
                return {**own, **data}
        return data

    @validates_schema(skip_on_field_errors=False)
    def _files(self, data: dict[str, Any], **kwargs: Any) -> None:
        each, total = self.file_limits
        problems: list[str] = []
        size, files, directories = 0, set[str](), set[str]()
        main = self.mains.get(data.get("task_type", ""))
        items = data.get("files") or []
        if not all({"path", "content", "encoding"} <= item.keys() for item in items):
            return  # a file's own fields are wrong: their errors say so
        for index, item in enumerate(items):
            path, content = item["path"], item["content"]
            where = f"files[{index}] ({path})"
            if item["encoding"] == "base64":
                try:
                    length = len(base64.b64decode(content, validate=True))
                except (binascii.Error, ValueError):
                    problems.append(f"{where}: content is not base64")
                    continue
            else:
                length = len(content.encode("utf-8", "surrogatepass"))
            if length > each:
                problems.append(f"{where}: more than {each} bytes (VX11_MAX_INPUT_FILE_BYTES)")
            size += length
            parts = path.split("/")
            parents = {"/".join(parts[:n]) for n in range(1, len(parts))}
            if main is not None and (main == path or main.startswith(path + "/")
                                     or main in parents):  # fmt: skip
                problems.append(f"{where}: collides with the code's own {main}")
            elif path in files or path in directories or parents & files:
                problems.append(f"{where}: collides with another file's path")
            files.add(path)
            directories |= parents
        if size > total:
            problems.append(f"more than {total} bytes in all (VX11_MAX_INPUT_FILES_BYTES)")
        if problems:
            raise ValidationError({"files": problems})

    @validates_schema(skip_on_field_errors=False)
    def _encoded(self, data: dict[str, Any], **kwargs: Any) -> None:
        problems: dict[str, list[str]] = {}
        for name, limit in self.limits.items():
            value = data.get(name)
            if not isinstance(value, str):
                continue
            bounds = "1 to" if name == "code" else "at most"
            if data.get("encoding") != "base64":
                if len(value.encode("utf-8", "surrogatepass")) > limit:
                    problems[name] = [f"must be {bounds} {limit} bytes of UTF-8"]
                continue
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                problems[name] = ["must be base64 (RFC 4648, with padding): encoding is base64"]
                continue
            if len(raw) > limit:
                problems[name] = [f"must be {bounds} {limit} bytes once decoded"]
            elif name == "code" and not _is_text(raw):
                problems[name] = ["must be base64 of UTF-8 text without NUL (bytes go in stdin)"]
        if problems:
            raise ValidationError(problems)


def _is_text(raw: bytes) -> bool:
    try:
        return b"\0" not in raw and bool(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return False


@functools.cache
def request_schema(settings: Settings) -> Schema:
    """The spawn request schema, with this deployment's limits and task types."""
    task_types = runtimes.load(settings)

    class Limited(SpawnRequestSchema):
        limits = {"code": settings.max_code_bytes, "stdin": settings.max_stdin_bytes}
        file_limits = (settings.max_input_file_bytes, settings.max_input_files_bytes)
        mains = {r.name: r.main for r in task_types if r.main}
        own_limits = {r.name: dict(r.limits) for r in task_types if r.limits}

    declared = [r.name for r in task_types if not r.builtin]
    return Limited.from_dict(
        {
            "task_type": fields.String(
                required=True,
                validate=validate.OneOf([r.name for r in task_types]),
                metadata={
                    "description": "What runs the code: python (python3 -I), shell (/bin/sh, "
                    "POSIX) or bash (/bin/bash, where the worker has it)"
                    + (f", or one this server declares ({', '.join(declared)})" if declared else "")
                    + ": GET /vx11/runtimes lists them. bash and a declared one are accepted "
                    "only while a live worker offers them (else 503 task_type_unavailable)."
                },
            ),
            "code": fields.String(
                required=True,
                validate=EncodedLength(settings.max_code_bytes, min=1),
                metadata={
                    "description": "The program: python source, or a sh or bash script. "
                    f"At most {settings.max_code_bytes} bytes of UTF-8 "
                    "(VX11_MAX_CODE_BYTES); with encoding base64, those bytes in base64, "
                    "still UTF-8 text without NUL."
                },
            ),
            "ttl_seconds": fields.Integer(
                strict=True,
                load_default=settings.spawn_default_ttl,
                validate=validate.Range(1, settings.spawn_max_ttl),
                metadata={
                    "description": "Wall-clock limit, seconds: past it the spawn is killed "
                    "and ends TIMEOUT. Default and maximum: the server's "
                    "(VX11_SPAWN_DEFAULT_TTL, VX11_SPAWN_MAX_TTL)."
                },
            ),
            "stdin": fields.String(
                load_default=None,
                allow_none=True,
                validate=EncodedLength(settings.max_stdin_bytes),
                metadata={
                    "description": "Text for the program's standard input (none when left "
                    f"out). At most {settings.max_stdin_bytes} bytes of UTF-8 "
                    "(VX11_MAX_STDIN_BYTES); with encoding base64, any bytes, in base64."
                },
            ),
            "encoding": encoding_field(
                "How code and stdin are given: utf8 (text, the default) or base64 (of their "
                "exact bytes)."
            ),
            "merge_stderr": fields.Boolean(
                load_default=False,
                metadata={
                    "description": "Send standard error into standard output, in the order "
                    "written (stderr is then empty)."
                },
            ),
            "artifacts": fields.List(
                fields.String(validate=_valid_path),
                load_default=list,
                validate=validate.Length(
                    max=MAX_ARTIFACT_PATTERNS,
                    error=f"at most {MAX_ARTIFACT_PATTERNS} patterns",
                ),
                metadata={
                    "description": "Glob patterns, relative to /work, of the files kept once "
                    "the spawn has ended (* and ? within a path part, ** across parts): "
                    "regular files only, no link followed, up to max_artifact_bytes in all; "
                    "read back at GET /vx11/spawn/<id>/artifacts/<path>."
                },
            ),
            "max_artifact_bytes": fields.Integer(
                strict=True,
                load_default=settings.max_artifact_bytes,
                validate=validate.Range(
                    0,
                    settings.max_artifact_bytes_max,
                    error="must be between {min} and {max} (the server's maximum)",
                ),
                metadata={
                    "description": "Bytes of artifacts kept, at most; left out, the server's "
                    "default (VX11_MAX_ARTIFACT_BYTES), at most VX11_MAX_ARTIFACT_BYTES_MAX."
                },
            ),
            "files": fields.List(
                fields.Nested(InputFile),
                load_default=list,
                validate=validate.Length(
                    max=settings.max_input_files,
                    error=f"at most {settings.max_input_files} files (VX11_MAX_INPUT_FILES)",
                ),
                metadata={
                    "description": "Files written in the working directory (/work) before "
                    "the code runs: a relative path (no .. or empty part; directories made), "
                    "content, encoding (utf8 or base64); directories 0700, files 0600. At most "
                    f"{settings.max_input_files} files (VX11_MAX_INPUT_FILES), each at most "
                    f"{settings.max_input_file_bytes} bytes (VX11_MAX_INPUT_FILE_BYTES), "
                    f"{settings.max_input_files_bytes} in all (VX11_MAX_INPUT_FILES_BYTES)."
                },
            ),
            "correlation_id": fields.String(
                load_default=None,
                allow_none=True,
                validate=CORRELATION_ID,
                metadata={
                    "description": "Your own id for the spawn: in its record and the logs, "
                    "and a filter of GET /vx11/spawns."
                },
            ),
            "metadata": fields.Dict(
                keys=fields.String(),
                load_default=None,
                allow_none=True,
                validate=_json_max(settings.max_metadata_bytes),
                metadata={
                    "description": "Any JSON object, kept with the spawn and returned in its "
                    f"record. At most {settings.max_metadata_bytes} bytes as compact JSON "
                    "(VX11_MAX_METADATA_BYTES)."
                },
            ),
            "cpu_time_limit": _limit(
                1,
                settings.cpu_time_limit_max,
                None,
                "CPU seconds the spawn's processes may use; left out, its ttl_seconds.",
                "CPU_TIME_LIMIT",
            ),
            "memory_limit_mb": _limit(
                16,
                settings.memory_limit_mb_max,
                settings.memory_limit_mb,
                "Memory the spawn may use, MiB.",
                "MEMORY_LIMIT_MB",
            ),
            "max_processes": _limit(
                1,
                settings.max_processes_max,
                settings.max_processes,
                "Processes the spawn may run at once.",
                "MAX_PROCESSES",
            ),
            "max_output_bytes": _limit(
                0,
                settings.max_output_bytes_max,
                settings.max_output_bytes,
                "Bytes of stdout, and of stderr, kept; the rest is read and dropped "
                "(stdout_truncated, stderr_truncated).",
                "MAX_OUTPUT_BYTES",
            ),
            "max_file_size_mb": _limit(
                1,
                settings.max_file_size_mb_max,
                settings.max_file_size_mb,
                "Largest file the spawn may write, MiB.",
                "MAX_FILE_SIZE_MB",
            ),
            "callback_url": fields.String(
                allow_none=True,
                validate=callback_url_validator(settings),
                metadata={
                    "description": "Where the spawn's record is POSTed, signed, when it ends. "
                    "Refused (422 callbacks_disabled) unless the server has "
                    "VX11_CALLBACK_SECRET; its host must be on VX11_CALLBACK_ALLOWED_HOSTS."
                },
            ),
            "max_retries": fields.Integer(
                strict=True,
                load_default=0,
                validate=validate.Range(0, MAX_RETRIES, error="must be between {min} and {max}"),
                metadata={
                    "description": "Times the spawn is run again if its worker is lost "
                    "while running it; never when its own code fails."
                },
            ),
            "args": fields.List(
                fields.String(validate=_valid_arg),
                load_default=list,
                validate=validate.Length(
                    max=settings.max_args,
                    error=f"at most {settings.max_args} arguments (the server's maximum)",
                ),
                metadata={
                    "description": "Arguments for the program: python's sys.argv[1:], the "
                    f"shell's $1 and on. At most {settings.max_args} (VX11_MAX_ARGS), each at "
                    f"most {MAX_ARG_BYTES} bytes of UTF-8 without NUL."
                },
            ),
        },
        name="SpawnRequest",
    )()


def base64_length(size: int) -> int:
    """The length of ``size`` bytes in base64: a field's bound that holds either form."""
    return 4 * math.ceil(size / 3)


def decoded(spawn_request: dict[str, Any]) -> dict[str, Any]:
    """The request (validated) as the spawn keeps it: ``code`` as text, ``stdin`` as
    text or, when its bytes are not text, as ``stdin_raw``."""
    spawn = {k: v for k, v in spawn_request.items() if k not in ("encoding", "artifacts")}
    spawn["files"] = [_stored(item) for item in spawn_request["files"]] or None
    spawn["artifact_patterns"] = spawn_request["artifacts"] or None
    if not spawn["artifact_patterns"]:
        del spawn["max_artifact_bytes"]  # kept only for a spawn that keeps artifacts
    if spawn_request["encoding"] != "base64":
        return spawn
    spawn["code"] = base64.b64decode(spawn["code"]).decode("utf-8")
    if spawn.get("stdin") is not None:
        stdin = base64.b64decode(spawn["stdin"])
        if _is_text(stdin) or not stdin:
            spawn["stdin"] = stdin.decode("utf-8")
        else:
            spawn["stdin"], spawn["stdin_raw"] = None, stdin
    return spawn


def _stored(item: dict[str, str]) -> dict[str, Any]:
    """A file as the ledger and the job keep it: its path, size and bytes in base64."""
    if item["encoding"] == "base64":
        content = item["content"]
        size = len(base64.b64decode(content))
    else:
        raw = item["content"].encode("utf-8")
        content, size = base64.b64encode(raw).decode("ascii"), len(raw)
    return {"path": item["path"], "size": size, "base64": content}


def spawn_example(settings: Settings) -> dict[str, Any]:
    """The request the docs page's "Try it out" sends: the quick start's, which a
    server with its default settings accepts while the spawner window is open."""
    return {
        "task_type": "python",
        "code": 'print("hello from VX11")',
        "ttl_seconds": settings.spawn_default_ttl,
    }
