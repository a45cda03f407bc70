"""The ``vx11`` command: run the stack and manage API tokens."""

from __future__ import annotations

import json
import sys

import click
import redis.exceptions

from vx11.config import Settings
from vx11.connections import make_redis
from vx11.stack import StackError, StackOptions, run_stack
from vx11.tokens import TokenStore


@click.group()
def main() -> None:
    """VX11: a policy-gated remote-execution gateway."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Gateway bind address.")
@click.option("--port", default=8000, show_default=True, help="Gateway port.")
@click.option("--flower-port", default=5555, show_default=True, help="Flower port.")
@click.option("--concurrency", default=2, show_default=True, help="Celery worker processes.")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
def up(host: str, port: int, flower_port: int, concurrency: int, no_flower: bool) -> None:
    """Start Redis, the gateway, a worker and Flower in the foreground (Ctrl-C stops)."""
    options = StackOptions(
        host=host,
        port=port,
        flower_port=flower_port,
        worker_concurrency=concurrency,
        flower=not no_flower,
    )
    try:
        sys.exit(run_stack(options))
    except StackError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def token() -> None:
    """Create, list and revoke API tokens (kept as hashes in Redis)."""


def _store() -> TokenStore:
    return TokenStore(make_redis(Settings.from_env()))


def _redis_errors(fn):
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.exceptions.RedisError as exc:
            raise click.ClickException(f"cannot reach Redis: {exc}") from None

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


@token.command("create")
@click.option("--label", required=True, help="Who or what the token is for.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_redis_errors
def token_create(label: str, as_json: bool) -> None:
    """Create a token; it is printed once and never stored in plain."""
    plain, info = _store().create(label)
    if as_json:
        click.echo(json.dumps({"token": plain, **info.__dict__}))
    else:
        click.echo(plain)
        click.echo(f"id {info.token_id}  label {info.label}  (shown once: keep it now)", err=True)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_redis_errors
def token_list(as_json: bool) -> None:
    """List tokens (ids and labels; never the tokens)."""
    infos = _store().list()
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in infos]))
        return
    for info in infos:
        click.echo(f"{info.token_id}  {info.created_at}  {info.label}")


@token.command("revoke")
@click.argument("token_id")
@_redis_errors
def token_revoke(token_id: str) -> None:
    """Revoke the token with this id (as `vx11 token list` shows it)."""
    if not _store().revoke(token_id):
        raise click.ClickException(f"no single token has id {token_id}")
    click.echo(f"revoked {token_id}")


if __name__ == "__main__":
    main()
