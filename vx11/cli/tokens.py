"""``vx11 token create|list|revoke|whoami``: API tokens, managed over the API (an admin
token), or with ``--local`` straight in Redis (``VX11_REDIS_URL``), which is how the
first admin token is made."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from vx11.cli.common import (
    CliError,
    Connection,
    ExitCode,
    Span,
    echo_answer,
    echo_json,
    pass_connection,
    table,
    when,
)

SCOPES = ("admin", "window", "spawn", "read")


@click.group()
def token() -> None:
    """Create, list and revoke API tokens (kept as hashes; a token is shown once)."""


def token_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A token command: ``--local`` (Redis, not the API) and ``--json``."""

    @click.option(
        "--local",
        is_flag=True,
        help="Work on the Redis of VX11_REDIS_URL directly, not through the gateway "
        "(needs no token: how the first admin token is made).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON (the API's shape).")
    @pass_connection
    @functools.wraps(fn)
    def wrapper(connection: Connection, *args: Any, **kwargs: Any) -> Any:
        return fn(connection, *args, **kwargs)

    return wrapper


@contextmanager
def local_store() -> Iterator[Any]:
    """The :class:`vx11.core.tokens.TokenStore` of ``VX11_REDIS_URL``; Redis trouble is one line."""
    import redis.exceptions

    from vx11.core.config import Settings
    from vx11.core.connections import make_redis
    from vx11.core.tokens import TokenStore

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise CliError(f"bad configuration: {exc}", ExitCode.USAGE) from None
    client = make_redis(settings)
    try:
        yield TokenStore(client)
    except redis.exceptions.RedisError as exc:
        raise CliError(
            f"redis_unavailable: cannot reach Redis at {settings.redis_url}: {exc}",
            ExitCode.UNAVAILABLE,
        ) from None
    finally:
        client.close()


@token.command("create")
@click.option("--label", required=True, help="Who or what the token is for.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(SCOPES),
    help="A scope it grants: admin, window, spawn or read; repeatable.",
)
@click.option("--expires-in", type=Span(), help="Lifetime: 3600, 90m, 12h, 30d  [default: none]")
@click.option("--rate-limit", type=float, help="Requests per second  [default: the server's]")
@click.option("--max-active", type=int, help="Spawns queued or running at once.")
@token_command
def token_create(
    connection: Connection,
    label: str,
    scopes: tuple[str, ...],
    expires_in: int | None,
    rate_limit: float | None,
    max_active: int | None,
    local: bool,
    as_json: bool,
) -> None:
    """Create a token; it is printed once (stdout) and never stored in plain."""
    if local:
        with local_store() as store:
            expires_at = datetime.now(UTC) + timedelta(seconds=expires_in) if expires_in else None
            try:
                plain, info = store.create(
                    label,
                    scopes=list(scopes),
                    expires_at=expires_at,
                    rate_limit_per_second=rate_limit,
                    max_active_spawns=max_active,
                )
            except ValueError as exc:
                raise CliError(str(exc), ExitCode.USAGE) from None
        answer = {"token": plain, **info.to_dict()}
    else:
        answer = connection.client.create_token(
            {
                "label": label,
                "scopes": list(scopes),
                "expires_in_seconds": expires_in,
                "rate_limit_per_second": rate_limit,
                "max_active_spawns": max_active,
            }
        )
    if as_json:
        echo_json(answer)
        return
    click.echo(answer["token"])
    expires = f", expires {answer['expires_at']}" if answer.get("expires_at") else ""
    click.echo(
        f"id {answer['token_id']}, label {answer['label']}, scopes "
        f"{','.join(answer['scopes'])}{expires} (shown once: keep it now)",
        err=True,
    )


@token.command("list")
@token_command
def token_list(connection: Connection, local: bool, as_json: bool) -> None:
    """Every token: id, label, scopes, limits and times; never a token itself."""
    if local:
        with local_store() as store:
            answer = {"tokens": [info.to_dict() for info in store.list()]}
    else:
        answer = connection.client.list_tokens()
    if as_json:
        echo_json(answer)
        return
    click.echo(
        table(
            ("id", "label", "scopes", "created", "expires", "last used", "rate/s", "max active"),
            (
                (
                    t.get("token_id"),
                    t.get("label"),
                    ",".join(t.get("scopes") or []),
                    when(t.get("created_at")),
                    when(t.get("expires_at")),
                    when(t.get("last_used_at")),
                    t.get("rate_limit_per_second"),
                    t.get("max_active_spawns"),
                )
                for t in answer["tokens"]
            ),
        )
    )


@token.command("revoke")
@click.argument("token_id")
@token_command
def token_revoke(connection: Connection, token_id: str, local: bool, as_json: bool) -> None:
    """Revoke the token with this id (as `vx11 token list` shows it; 8+ characters of it
    will do): its next request is refused."""
    if local:
        with local_store() as store:
            if not store.revoke(token_id):
                raise CliError(f"not_found: no single token has id {token_id}")
        answer = {"token_id": token_id, "revoked": True}
    else:
        answer = connection.client.revoke_token(token_id)
    echo_answer(answer, as_json, lambda answer: f"revoked {answer['token_id']}")


@token.command("whoami")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@pass_connection
def token_whoami(connection: Connection, as_json: bool) -> None:
    """The token this command uses: id, label, scopes, limits and times."""
    answer = connection.client.whoami()
    if as_json:
        echo_json(answer)
        return
    rows = [
        ("id", answer.get("token_id")),
        ("label", answer.get("label")),
        ("scopes", ",".join(answer.get("scopes") or [])),
        ("created", when(answer.get("created_at"))),
        ("expires", when(answer.get("expires_at")) or "never"),
        ("last used", when(answer.get("last_used_at"))),
        ("rate/s", answer.get("rate_limit_per_second") or "the server's default"),
        ("max active", answer.get("max_active_spawns") or "the server's default"),
    ]
    click.echo("\n".join(f"{name + ':':<12}{value}" for name, value in rows if value is not None))
