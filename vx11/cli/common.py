"""What every client command shares: the exit codes, the connection to the gateway
(``--url``/``--token``), ``--json``, the one-line errors, and small text formatting."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

import click

from vx11.cli.client import DEFAULT_URL, ApiError, Client


class ExitCode(IntEnum):
    """How ``vx11`` exits, besides a waited spawn's own exit code (docs/cli.md)."""

    OK = 0
    API_ERROR = 1
    """The gateway refused the request (400, 404, 409, 422...) or answered nonsense."""
    USAGE = 2
    """A bad option or argument (click's own code)."""
    UNAVAILABLE = 69
    """EX_UNAVAILABLE: the gateway cannot be reached, timed out, or answered 503."""
    SPAWN_ERROR = 70
    """EX_SOFTWARE: VX11 itself failed the spawn (state ERROR)."""
    TRY_LATER = 75
    """EX_TEMPFAIL: 429, rate limited or over the token's quota; retry later."""
    REFUSED = 77
    """EX_NOPERM: refused by policy (no open spawner window), or a missing, invalid or
    insufficient token (401, 403)."""
    TIMEOUT = 124
    """The spawn hit its time limit (state TIMEOUT), as coreutils' ``timeout`` exits."""
    CANCELLED = 130
    """The spawn was cancelled (state CANCELLED), or ``vx11`` was interrupted (Ctrl-C)."""


class CliError(click.ClickException):
    """Raised to end a command with one line on stderr and a chosen exit code."""

    def __init__(self, message: str, exit_code: int = ExitCode.API_ERROR) -> None:
        super().__init__(message)
        # click annotates exit_code as a ClassVar, but reads it from the instance
        self.exit_code = int(exit_code)  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"vx11: error: {self.message}", err=True)


def exit_code_for(error: ApiError) -> ExitCode:
    if error.transport:
        return ExitCode.USAGE if error.code == "bad_url" else ExitCode.UNAVAILABLE
    if error.status in (401, 403):
        return ExitCode.REFUSED
    if error.status == 429:
        return ExitCode.TRY_LATER
    if error.status in (502, 503, 504):
        return ExitCode.UNAVAILABLE
    return ExitCode.API_ERROR


def _flatten(fields: Any, prefix: str = "") -> Iterable[str]:
    """``{"args": {"0": ["bad"]}}`` as ``args.0: bad``."""
    if isinstance(fields, dict):
        for name, value in fields.items():
            yield from _flatten(value, f"{prefix}.{name}" if prefix else str(name))
    elif isinstance(fields, list) and all(isinstance(item, str) for item in fields):
        yield f"{prefix}: {' '.join(fields)}"
    else:
        yield f"{prefix}: {fields}"


def describe(error: ApiError, connection: Connection | None = None) -> str:
    """The one line that tells a person what went wrong, with the details that help."""
    line = f"{error.code}: {error.message}"
    details = []
    if error.body.get("fields"):
        details.append("; ".join(_flatten(error.body["fields"])))
    if error.body.get("targets"):
        details.append("targets: " + ", ".join(map(str, error.body["targets"])))
    if error.code == "already_finished" and error.body.get("status"):
        details.append(f"status {error.body['status']}")
    if error.retry_after is not None:
        details.append(f"retry after {error.retry_after:g} s")
    if details:
        line += f" ({'; '.join(details)})"
    if error.status == 401 and connection is not None and connection.development_token:
        line += "; VX11_TOKEN is not set, so the development token was sent"
    return line


@dataclass
class Connection:
    """Where the gateway is and how to call it: the group's ``--url``, ``--token``,
    ``--timeout``. The client is made on first use: ``up``, ``purge`` and the ``--local``
    token commands never need one."""

    url: str = DEFAULT_URL
    token: str | None = None
    timeout: float = 30.0
    development_token: bool = False
    """True when no token was given and the development one stands in for it."""
    _client: Client | None = field(default=None, repr=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            if not self.token:
                self._resolve_development_token()
            self._client = Client(self.url, self.token, timeout=self.timeout)
        return self._client

    def _resolve_development_token(self) -> None:
        # As the gateway does: in development (the default VX11_ENV), its test token is
        # valid; in production there is no default token at all.
        from vx11.core.config import Settings

        try:
            settings = Settings.from_env()
        except ValueError as exc:
            raise CliError(f"bad configuration: {exc}", ExitCode.USAGE) from None
        if settings.production:
            raise CliError(
                "auth_required: no token: set VX11_TOKEN or pass --token", ExitCode.REFUSED
            )
        self.token, self.development_token = settings.dev_token, True

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class Vx11Group(click.Group):
    """The ``vx11`` group: an API error or Ctrl-C anywhere below ends in one line on
    stderr and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            connection = ctx.find_object(Connection)
            raise CliError(describe(exc, connection), exit_code_for(exc)) from None
        except KeyboardInterrupt:
            raise CliError("interrupted", ExitCode.CANCELLED) from None


pass_connection = click.make_pass_decorator(Connection, ensure=True)


def client_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A command that calls the gateway: it gets the :class:`vx11.cli.client.Client` as its
    first argument and a ``--json`` flag."""

    @click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
    @pass_connection
    @functools.wraps(fn)
    def wrapper(connection: Connection, *args: Any, **kwargs: Any) -> Any:
        return fn(connection.client, *args, **kwargs)

    return wrapper


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def echo_answer(answer: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    """``answer`` as JSON with ``--json``, else as ``text`` writes it for a person."""
    if as_json:
        echo_json(answer)
    else:
        click.echo(text(answer))


# --- formatting ----------------------------------------------------------------------------


def echo_listing(
    client: Client,
    path: str,
    key: str,
    params: dict[str, Any],
    *,
    all_pages: bool,
    as_json: bool,
    render: Callable[[list[dict[str, Any]]], str],
) -> None:
    """A listing (``/vx11/spawns``, ``/vx11/audit``): one page, or every page with
    ``all_pages``; as JSON, or as ``render`` draws its rows (under ``key``), with a hint
    on stderr when more pages follow. Parameters left None are not sent."""
    params = {name: value for name, value in params.items() if value is not None}
    if all_pages:
        rows = [row for page in client.pages(path, params) for row in page[key]]
        page: dict[str, Any] = {key: rows, "next_cursor": None}
    else:
        page = client.page(path, params)
    if as_json:
        echo_json(page)
        return
    click.echo(render(page[key]))
    if page.get("next_cursor"):
        click.echo(f"vx11: more {key} follow: --all lists every page", err=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows as aligned columns under upper-case headers; None shows as ``-``."""
    cells = [[str(h).upper() for h in headers]]
    cells += [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def when(iso: str | None) -> str | None:
    """``2026-11-25T19:21:50.330Z`` as ``2026-11-25 19:21:50`` (UTC)."""
    if not iso:
        return None
    return iso.replace("T", " ")[:19]


def duration(ms: float | None) -> str | None:
    """Milliseconds for people: ``48ms``, ``1.2s``, ``2m05s``, ``1h02m``."""
    if ms is None:
        return None
    if ms < 1000:
        return f"{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


SPAN_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SPAN = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


class Span(click.ParamType):
    """A length of time: ``90`` (seconds), ``90s``, ``15m``, ``12h``, ``30d``, ``2w``;
    the value is whole seconds."""

    name = "span"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        match = SPAN.match(str(value).lower())
        if not match or int(match[1]) == 0:
            self.fail(f"{value!r} is not a length of time such as 90s, 15m, 12h or 30d", param, ctx)
        return int(match[1]) * SPAN_UNITS[match[2] or "s"]


class Choices(click.ParamType):
    """One or more of ``choices`` in any case, separated by commas (``done,FAILED``); the
    value is a tuple of them as ``choices`` spells them."""

    name = "choices"

    def __init__(self, choices: Sequence[str]) -> None:
        self.choices = tuple(choices)
        self.by_folded = {choice.casefold(): choice for choice in self.choices}

    def get_metavar(self, param: Any, ctx: Any = None) -> str:
        return f"[{'|'.join(self.choices)}],..."

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        parts = [part.strip() for part in str(value).split(",")]
        unknown = [part for part in parts if part.casefold() not in self.by_folded]
        if unknown:
            self.fail(
                f"{', '.join(map(repr, unknown))} is not one of {', '.join(self.choices)}",
                param,
                ctx,
            )
        return tuple(self.by_folded[part.casefold()] for part in parts)


def choices_option(
    flag: str, dest: str, choices: Sequence[str], help: str, metavar: str | None = None
) -> Any:
    """A repeatable ``flag`` of :class:`Choices`: ``--status done,failed --status timeout``
    gives ``dest`` every one named, once each, in order."""

    def flatten(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[str, ...]:
        return tuple(dict.fromkeys(choice for group in value for choice in group))

    return click.option(
        flag,
        dest,
        type=Choices(choices),
        multiple=True,
        callback=flatten,
        metavar=metavar,
        help=help,
    )


class Moment(click.ParamType):
    """A time for the history's filters: ISO 8601 (naive is UTC), or a length of time
    ago (``15m``, ``2h``, ``7d``)."""

    name = "time"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        text = str(value).strip()
        if SPAN.match(text.lower()) and not text.isdigit():
            seconds = Span().convert(text, param, ctx)
            moment = datetime.now(UTC) - timedelta(seconds=seconds)
            return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
        try:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is neither ISO 8601 nor a time ago such as 2h", param, ctx)
        return text


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
