"""The ``dispatcher`` command: enqueue leads, inspect jobs, operate the dead-letter store.

Exit codes: 0 success, 1 the operation failed (Redis unreachable, unknown job),
2 usage or invalid input (bad flags, an invalid lead, a bad setting).
Messages go to stderr; stdout carries only results (a job id, JSON).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from dispatcher.cli.common import CliContext, fail
from dispatcher.cli.demo import demo
from dispatcher.cli.dlq import dlq
from dispatcher.cli.enqueue import enqueue
from dispatcher.cli.forget import forget
from dispatcher.cli.notify import notify
from dispatcher.cli.reconcile import reconcile
from dispatcher.cli.serve import serve_command
from dispatcher.cli.status import health, job, status
from dispatcher.cli.users import users
from dispatcher.model.errors import BrokerUnavailable, ConfigError
from dispatcher.simulator import simulate_command

__all__ = ["cli", "main"]

_HELP = """Queue-driven lead dispatcher for VICIdial's external_add_lead.

\b
Producers enqueue leads (this command, the Python API, or HTTP via
`dispatcher serve`); workers
(`celery -A workers worker`) call VICIdial, retry temporary failures and put
everything that cannot succeed into the dead-letter store, where operators
inspect it (`dispatcher dlq list`), fix the cause in VICIdial, and replay it
(`dispatcher dlq replay`).

\b
Configuration comes from DISPATCHER_* environment variables or a .env file
(DISPATCHER_REDIS_URL, DISPATCHER_VICIDIAL_URL, ...); see the README.

\b
Exit codes: 0 success, 1 operation failed, 2 usage or invalid input.
"""


@click.group(
    help=_HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="vicidial-lead-dispatcher", prog_name="dispatcher")
@click.pass_context
def cli(ctx: click.Context) -> None:
    ctx.obj = CliContext()


cli.add_command(enqueue)
cli.add_command(job)
cli.add_command(status)
cli.add_command(health)
dlq.add_command(reconcile)
cli.add_command(dlq)
cli.add_command(users)
cli.add_command(forget)
cli.add_command(notify)
cli.add_command(demo)
cli.add_command(simulate_command, name="simulate")
cli.add_command(serve_command, name="serve")


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="dispatcher", standalone_mode=True)
    except ConfigError as exc:
        fail(str(exc), code=2)
    except BrokerUnavailable as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
