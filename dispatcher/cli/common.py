"""Helpers shared by the CLI commands: settings, output, durations."""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from datetime import datetime
from typing import Any, NoReturn

import click

from dispatcher.config.logs import configure_logging
from dispatcher.config.settings import Settings, get_settings
from dispatcher.model.errors import BrokerUnavailable, ConfigError
from dispatcher.store.backend import Backend, get_backend
from dispatcher.store.layout import ensure_layout

__all__ = [
    "CliContext",
    "Duration",
    "SinceType",
    "echo_json",
    "fail",
    "guarded",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def fail(message: str, *, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class CliContext:
    """Lazily built settings and backend, so that --help works with no Redis and no env."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._backend: Backend | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = get_settings()
            except ConfigError as exc:
                fail(str(exc), code=2)
            configure_logging(
                level=self._settings.log_level,
                fmt=self._settings.log_format,
                secrets=self._settings.secrets,
            )
        return self._settings

    @property
    def backend(self) -> Backend:
        """The Redis backend, its layout checked on first use: a layout this release
        cannot use is a LayoutMismatch (a BrokerUnavailable: exit 1, naming both
        versions)."""
        if self._backend is None:
            backend = get_backend(self.settings)
            ensure_layout(backend, role="CLI")
            self._backend = backend
        return self._backend


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, sort_keys=False))


class Duration(click.ParamType):  # type: ignore[type-arg]
    """``90s``, ``15m``, ``2h``, ``30d``, ``1w`` -> seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        match = _DURATION.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a duration like 90s, 15m, 2h or 30d", param, ctx)
        return float(match.group(1)) * _UNITS[match.group(2)]


class SinceType(click.ParamType):  # type: ignore[type-arg]
    """A moment in the past: a duration ago (``2h``) or an ISO 8601 time -> epoch."""

    name = "since"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        match = _DURATION.match(str(value))
        if match:
            return time.time() - float(match.group(1)) * _UNITS[match.group(2)]
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            self.fail(
                f"{value!r} is neither a duration (2h, 30d) nor an ISO time (2026-11-27T10:00:00Z)",
                param,
                ctx,
            )
        if moment.tzinfo is None:
            self.fail(f"{value!r} has no time zone; add Z or +00:00", param, ctx)
        return moment.timestamp()


def guarded(func: Any) -> Any:
    """Turn BrokerUnavailable into a one-line error and exit code 1 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BrokerUnavailable as exc:
            fail(str(exc), code=1)

    return wrapper
