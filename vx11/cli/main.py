"""The ``vx11`` command group: run the stack (``up``), purge old records (``purge``),
and the client commands of a running gateway (``status``, ``window``, ``spawn``,
``spawns``, ``audit``, ``token``), each in a module of its own beside this one."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import click

from vx11.cli.audit import audit
from vx11.cli.client import DEFAULT_URL, READ_TIMEOUT
from vx11.cli.common import Connection, Vx11Group
from vx11.cli.runtimes import runtimes
from vx11.cli.spawns import spawn, spawns
from vx11.cli.status import status, window
from vx11.cli.tokens import token

# `up` and `purge` import the stack, the ledger and SQLAlchemy when they run: a client
# command starts in a fraction of the time without them.


@click.group(cls=Vx11Group)
@click.option(
    "--url",
    envvar="VX11_URL",
    default=DEFAULT_URL,
    show_default=True,
    show_envvar=True,
    help="The gateway's base URL.",
)
@click.option(
    "--token",
    envvar="VX11_TOKEN",
    show_envvar=True,
    help="API token  [default: in development, the development token]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=READ_TIMEOUT,
    show_default=True,
    help="Seconds to wait for an answer.",
)
@click.version_option(package_name="vx11", prog_name="vx11")
@click.pass_context
def main(ctx: click.Context, url: str, token: str | None, timeout: float) -> None:
    """VX11: a policy-gated remote-execution gateway.

    The client commands (status, window, spawn, spawns, audit, token) talk to the gateway at
    --url with --token; exit codes and examples: docs/cli.md."""
    connection = ctx.ensure_object(Connection)
    connection.url, connection.token, connection.timeout = url, token or None, timeout
    ctx.call_on_close(connection.close)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Gateway bind address.")
@click.option("--port", default=8000, show_default=True, help="Gateway port.")
@click.option("--flower-port", default=5555, show_default=True, help="Flower port.")
@click.option("--concurrency", default=2, show_default=True, help="Celery worker processes.")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
def up(host: str, port: int, flower_port: int, concurrency: int, no_flower: bool) -> None:
    """Start Redis, the gateway, a worker and Flower in the foreground (Ctrl-C stops)."""
    from vx11.cli.stack import StackError, StackOptions, run_stack

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
    except ValueError as exc:  # a VX11_* setting the stack could not take
        raise click.ClickException(f"bad configuration: {exc}") from None


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
    import sqlalchemy.exc

    from vx11.core.audit import AuditLog
    from vx11.core.config import Settings
    from vx11.core.ledger import Ledger
    from vx11.core.times import iso_z, utcnow

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None
    days = settings.retention_days if days is None else days
    if days < 0:
        raise click.ClickException(f"VX11_RETENTION_DAYS must not be negative, not {days}")
    before = utcnow() - timedelta(days=days)
    ledger = Ledger.from_url(settings.effective_database_url)
    try:
        ledger.create_schema()  # as the gateway does: an older database gains the audit table
        spawn_count = ledger.purge(before, dry_run=dry_run)
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


for _command in (status, runtimes, window, spawn, spawns, audit, token):
    main.add_command(_command)
