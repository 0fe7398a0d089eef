"""The operator console: dead letters, the fleet and job lookup in a browser, at ``/ui/``.

Served by ``dispatcher serve`` beside the HTTP intake (mounted by
:func:`dispatcher.intake.app.create_app`): Starlette routes, Jinja2 templates,
plain HTML forms, its style and one small script inline, nothing fetched from
anywhere (it must work on a call center's closed network), no build step.

* :mod:`.app`: the routes and the gate that enforces login, CSRF and headers;
* :mod:`.sessions`: server-side sessions and login throttling in Redis;
* :mod:`.chart`: the overview's last-hour chart, as inline SVG.

Users and roles live in :mod:`dispatcher.store.users` (``dispatcher users ...``).
"""

from dispatcher.intake.console.app import SESSION_COOKIE, console_app

__all__ = ["SESSION_COOKIE", "console_app"]
