"""``dispatcher serve``: run the HTTP intake and the operator console on uvicorn.

Starlette and uvicorn are imported only when the command runs, so
the rest of the CLI starts as fast as without them.
"""

from __future__ import annotations

from typing import Any

import click

from dispatcher.cli.common import CliContext, fail
from dispatcher.config import logs
from dispatcher.config.settings import Settings
from dispatcher.model.errors import BrokerUnavailable, LayoutMismatch
from dispatcher.store.backend import get_backend
from dispatcher.store.layout import ensure_layout

__all__ = ["serve_command"]


@click.command(
    "serve",
    help="""Run the HTTP intake: producer apps that are not Python (PHP, Node.js)
POST leads as JSON and get a job id back in milliseconds.

\b
Routes (every /v1 route needs Authorization: Bearer TOKEN):
  POST /v1/leads           one lead -> 202 {"job_id"}; 422 names every bad field
  POST /v1/leads:batch     {"leads": [...]} (at most 1,000) -> 200 {"results": [...]}
  GET  /v1/jobs/JOB_ID     what `dispatcher job --json` prints; 404 if unknown
  GET  /healthz            200 when Redis answers, else 503 (no token)
  GET  /metrics            Prometheus text for the whole fleet (no token)
  GET  /openapi.json       the OpenAPI document (no token)
  /ui/                     the operator console (its own login: `dispatcher users add`)

\b
Tokens come from DISPATCHER_INTAKE_TOKENS (comma-separated: list the new and the
old token while clients move over); the command refuses to start (exit 2)
without one, unless --no-intake asks for the console alone. Put TLS in front
of it (a reverse proxy) beyond localhost.""",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port."
)
@click.option(
    "--no-intake",
    is_flag=True,
    help="Serve only the operator console, /healthz and /metrics (no /v1 routes, no token).",
)
@click.pass_context
def serve_command(ctx: click.Context, host: str, port: int, no_intake: bool) -> None:
    obj = ctx.ensure_object(CliContext)
    settings = obj.settings  # exit 2 on a bad setting; configures logging with the secrets
    if not settings.intake_tokens and not no_intake:
        fail(
            "DISPATCHER_INTAKE_TOKENS is empty: set one or more bearer tokens "
            "(comma-separated), e.g. DISPATCHER_INTAKE_TOKENS=$(openssl rand -hex 32); "
            "or add --no-intake to serve only the operator console",
            code=2,
        )
    try:
        # Here, not at the top: every other command starts without Starlette and uvicorn.
        import uvicorn

        from dispatcher.intake.app import create_app
    except ImportError as exc:  # pragma: no cover - depends on the installation
        fail(f"dispatcher serve needs {exc.name or 'starlette/uvicorn'}: pip install it", code=2)
    log = logs.get_logger("dispatcher.intake")
    _check_layout(settings, log)
    short = sum(1 for t in settings.intake_tokens if len(t) < 16)
    if short:
        log.warning("intake.weak_tokens", count=short, hint="use tokens of 32+ random characters")
    app = create_app(settings, intake=not no_intake)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # Our _Guard writes the access log through structlog (no headers, no query
        # strings); uvicorn's own loggers propagate to the root handler that
        # configure_logging installed.
        access_log=False,
        log_config=None,
        server_header=False,
        lifespan="off",
    )
    log.info(
        "intake.starting",
        host=host,
        port=port,
        tokens=len(settings.intake_tokens),
        intake=not no_intake,
        console=f"http://{host}:{port}/ui/",
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        fail(f"the HTTP intake could not listen on {host}:{port}", code=1)


def _check_layout(settings: Settings, log: Any) -> None:
    """Refuse to start on a Redis layout this release cannot use (exit 1, naming both
    versions). Redis unreachable now: the intake starts anyway (``/healthz`` says 503),
    and the first enqueue checks the layout before it writes."""
    try:
        ensure_layout(get_backend(settings), role="intake")
    except LayoutMismatch as exc:
        fail(str(exc), code=1)
    except BrokerUnavailable as exc:
        log.warning("layout.unchecked", error=str(exc), hint="checked before the first enqueue")
