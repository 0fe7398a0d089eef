"""The console's route table: which room answers which path, behind the gate.

Each room is a module of its own, named for what it holds: :mod:`.auth` (login,
logout), :mod:`.overview`, :mod:`.dead_letters` (the list, one letter),
:mod:`.actions` (replay, purge, reconcile), :mod:`.exports`, :mod:`.forget`
(erasure requests), :mod:`.jobs` (job lookup), :mod:`.notifications` (outcome
notifications: the backlog, failed ones resent). They share one
:class:`~.context.Console` (settings, stores, the page frame); :class:`~.gate.Gate`
enforces login, CSRF and headers for every route before the router sees it.
"""

from __future__ import annotations

from starlette.routing import Route, Router
from starlette.types import ASGIApp

from dispatcher.config.settings import Settings
from dispatcher.intake.console.actions import Actions
from dispatcher.intake.console.auth import Auth
from dispatcher.intake.console.context import Console
from dispatcher.intake.console.dead_letters import DeadLetters
from dispatcher.intake.console.exports import Exports
from dispatcher.intake.console.forget import Forget
from dispatcher.intake.console.gate import Gate
from dispatcher.intake.console.jobs import Jobs
from dispatcher.intake.console.notifications import Notifications
from dispatcher.intake.console.overview import Overview
from dispatcher.store.backend import Backend

__all__ = ["console_app"]


def console_app(settings: Settings, backend: Backend) -> ASGIApp:
    """The console's ASGI app, to be mounted at ``/ui``."""
    console = Console(settings, backend)
    auth = Auth(console)
    overview = Overview(console)
    letters = DeadLetters(console)
    actions = Actions(console)
    exports = Exports(console)
    forget = Forget(console)
    jobs = Jobs(console)
    notifications = Notifications(console)
    routes = [
        Route("/", overview.page, methods=["GET"]),
        Route("/login", auth.login_page, methods=["GET"]),
        Route("/login", auth.login, methods=["POST"]),
        Route("/logout", auth.logout, methods=["POST"]),
        Route("/dead-letters", letters.list_page, methods=["GET"]),
        Route("/dead-letters/export", exports.export, methods=["GET"]),
        Route("/dead-letters/replay", actions.preview, methods=["GET"]),
        Route("/dead-letters/replay", actions.act, methods=["POST"]),
        Route("/dead-letters/purge", actions.preview, methods=["GET"]),
        Route("/dead-letters/purge", actions.act, methods=["POST"]),
        Route("/dead-letters/reconcile", actions.preview, methods=["GET"]),
        Route("/dead-letters/reconcile", actions.act, methods=["POST"]),
        Route("/dead-letters/{dl_id:path}", letters.letter_page, methods=["GET"]),
        Route("/forget", forget.page, methods=["GET"]),
        Route("/forget", forget.forget, methods=["POST"]),
        Route("/notifications", notifications.page, methods=["GET"]),
        Route("/notifications/retry", notifications.retry, methods=["POST"]),
        Route("/notifications/purge", notifications.purge, methods=["POST"]),
        Route("/jobs", jobs.page, methods=["GET"]),
        Route("/jobs/{job_id:path}", jobs.page, methods=["GET"]),
    ]
    router = Router(routes=routes, default=console.not_found)
    return Gate(router, console)
