"""The HTTP intake: enqueue leads over HTTP, Prometheus metrics, the operator console.

:func:`create_app` builds the ASGI app (Starlette) for a :class:`~dispatcher.Settings`,
with the console (:mod:`.console`) mounted at ``/ui/``. ``dispatcher serve``
(:mod:`dispatcher.cli.serve`) runs it on uvicorn.
"""

from __future__ import annotations

from dispatcher.intake.app import create_app

__all__ = ["create_app"]
