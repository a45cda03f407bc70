"""The ``vx11`` command: run the stack, manage API tokens, purge old records."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import click
import redis.exceptions
import sqlalchemy.exc

from vx11.api.fields import iso_z
from vx11.audit import AuditLog
from vx11.config import Settings
from vx11.connections import make_redis
from vx11.ledger import Ledger, utcnow
from vx11.retention import purge_spawns
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


@main.command()
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(min=0),
    help="Age in days beyond which records go  [default: VX11_RETENTION_DAYS]",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def purge(days: int | None, dry_run: bool, as_json: bool) -> None:
    """Delete terminal spawn records and audit entries older than the retention.

    A queued or running spawn is kept whatever its age. Run it from cron: nothing
    else deletes them."""
    settings = Settings.from_env()
    days = settings.retention_days if days is None else days
    if days < 0:
        raise click.ClickException(f"VX11_RETENTION_DAYS must not be negative, not {days}")
    before = utcnow() - timedelta(days=days)
    ledger = Ledger.from_url(settings.effective_database_url)
    try:
        ledger.create_schema()  # as the gateway does: an older database gains the audit table
        spawn_count = purge_spawns(ledger.engine, before, dry_run=dry_run)
        audit_count = AuditLog(ledger.engine).purge(before, dry_run=dry_run)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise click.ClickException(f"cannot purge the database: {exc}") from None
    finally:
        ledger.engine.dispose()
    if as_json:
        summary = {"older_than_days": days, "before": iso_z(before), "dry_run": dry_run}
        click.echo(json.dumps({**summary, "spawns": spawn_count, "audit_entries": audit_count}))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {spawn_count} spawn records and {audit_count} audit entries "
        f"from before {iso_z(before)} (older than {days} days)"
    )


if __name__ == "__main__":
    main()
