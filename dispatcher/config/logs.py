"""Structured logging, configured once per process.

Every entry point (the CLI, a Celery worker, the demo) calls
:func:`configure_logging` once. Events are one JSON object a line (or coloured
console lines on a terminal), with ``timestamp`` (UTC ISO 8601) and ``level``.
Job context (``job_id``, ``agent_user``...) is bound with structlog's
contextvars so that every line logged while a job runs carries it.

Two processors protect what must not leak:

* :class:`Redactor` runs every string of the event through the one redactor of
  :mod:`dispatcher.config.redaction`: VICIdial's echo lines lose their password field
  whatever it holds, and every form of every configured secret (the VICIdial
  passwords, a Redis password, the intake tokens) is replaced by ``[REDACTED]``;
  VICIdial's auth errors echo the password, so this is not hypothetical.
* phone numbers are masked to their last four digits, both in ``phone`` /
  ``phone_number`` keys and inside free-text keys such as ``error``.

Celery's own log records are routed through the same processors (see
:func:`configure_logging`), so a worker writes one format and no line twice.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from dispatcher.config.redaction import REDACTED, redact, redactor_for

__all__ = [
    "Redactor",
    "UtcStamper",
    "configure_logging",
    "flush_lines",
    "get_logger",
    "hold_lines",
    "is_configured",
    "mask_digits",
    "mask_phone",
    "redact_vicidial_line",
    "release_lines",
    "reset_logging",
]

_PHONE_KEYS = frozenset({"phone", "phone_number", "alt_phone", "value"})
_TEXT_KEYS = frozenset({"error", "line", "response", "body", "exception", "message"})
# A phone-like run of digits, not part of a job id (hex) or a decimal number.
_DIGIT_RUN = re.compile(r"(?<![\w.])\d{6,18}(?![\w.])")
# A key whose value is a password whatever it holds (a form field, a settings dump).
_SECRET_KEYS = frozenset({"pass", "password"})
# Tuples, not ``list | tuple``: a union is built anew each time it is evaluated, and
# these are tested for every value of every log line.
_SEQUENCES = (list, tuple)
_SCRUBBED = (str, dict, list, tuple)
#: An event name like these holds no digits and no password (the events of a lead).
_EVENT_NAMES = frozenset(
    {"lead.attempt", "lead.added", "lead.enqueued", "lead.retry_scheduled", "lead.delayed"}
)


def mask_phone(phone: object) -> str:
    """``7275551212`` -> ``******1212``: enough to tell leads apart, not to dial."""
    text = str(phone)
    if len(text) <= 4:
        return "*" * len(text)
    return "*" * (len(text) - 4) + text[-4:]


def mask_digits(text: str) -> str:
    """Mask every run of 6+ digits (a phone number inside an error line)."""
    return _DIGIT_RUN.sub(lambda m: mask_phone(m.group(0)), text)


def redact_vicidial_line(line: str, secrets: Iterable[str] = ()) -> str:
    """Remove passwords from text that came from VICIdial (or any server's error page).

    The one redactor (:mod:`dispatcher.config.redaction`): every echo shape of the facts by
    structure, whatever the password, and every form of the known secrets (as
    configured, URL-encoded, reduced to VICIdial's characters) wherever they stand.
    Apply it to the whole text before cutting it short: a cut can leave half a
    password behind.
    """
    return redact(line, secrets)


class Redactor:
    """structlog processor: secrets out (every form, every echo shape), phone numbers masked."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._redactor = redactor_for(secrets)
        self._needles = self._redactor.needles

    def _scrub(self, value: Any, key: str | None) -> Any:
        if isinstance(value, str):
            # Plain substring tests first: most values hold no secret and no echo line
            # (every event of every lead comes through here).
            for needle in self._needles:
                if needle in value:
                    value = self._redactor(value)
                    break
            if key in _PHONE_KEYS:
                return mask_phone(value)
            if key in _SECRET_KEYS and value:
                return REDACTED
            if key in _TEXT_KEYS or key == "event":
                if key == "event" and value in _EVENT_NAMES:
                    return value  # one of our own event names: nothing to mask
                return mask_digits(value)
            return value
        if isinstance(value, dict):
            return {k: self._scrub(v, k) for k, v in value.items()}
        if isinstance(value, _SEQUENCES):
            return [self._scrub(v, key) for v in value]
        return value

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event_dict.items()):
            if isinstance(value, _SCRUBBED):
                event_dict[key] = self._scrub(value, key)
        return event_dict


class UtcStamper:
    """structlog processor: ``timestamp``, UTC ISO 8601 as structlog's
    ``TimeStamper(fmt="iso", utc=True)`` writes it (``2026-11-30T07:33:20.337744Z``,
    no fraction on a whole second), its date and time made once a second: two
    lines per lead on a busy worker, where building a datetime each was a tenth of
    the logging's cost."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        # To the microsecond as datetime.now rounds it (the fraction, half to even).
        now = time.time()
        second = int(now)
        micros = round((now - second) * 1e6)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        cached, text = self._second  # one tuple: threads never see half an update
        if second != cached:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        event_dict["timestamp"] = f"{text}.{micros:06d}Z" if micros else text + "Z"
        return event_dict


def _orjson_dumps(obj: Any, **_: Any) -> str:
    # Two JSON lines per lead on a busy worker: orjson renders them several times
    # faster than the json module; anything it cannot encode is shown as str().
    return orjson.dumps(obj, default=str).decode()


_configured: dict[str, Any] = {}


_held = threading.local()


class _LineWriter(structlog.WriteLogger):
    """structlog's WriteLogger, whose lines a thread may hold and write together.

    A worker's event loop logs two lines per lead; written one by one they were a
    fifth of its CPU (a system call each). It holds them (:func:`hold_lines`) and
    writes what one turn of the loop logged in one call (:func:`flush_lines`),
    before the turn's requests and Redis writes leave: a line is never behind what
    it reports. Every other thread writes each line at once.
    """

    def msg(self, message: str) -> None:
        held: list[str] | None = getattr(_held, "lines", None)
        if held is None:
            with self._lock:
                self._write(message + "\n")
                self._flush()
            return
        if not held:
            _held.file = self
            _held.on_hold()
        held.append(message)

    def flush_held(self, lines: list[str]) -> None:
        with self._lock:
            self._write("\n".join(lines) + "\n")
            self._flush()

    log = debug = info = warn = warning = fatal = failure = err = error = critical = exception = msg


class _LineWriterFactory:
    def __init__(self, file: TextIO) -> None:
        self._logger = _LineWriter(file)

    def __call__(self, *args: Any) -> _LineWriter:
        return self._logger


def hold_lines(on_hold: Callable[[], None]) -> None:
    """From now on this thread's log lines wait for :func:`flush_lines`;
    ``on_hold`` is called when the first line of a batch is held (to schedule it)."""
    _held.lines = []
    _held.on_hold = on_hold


def flush_lines() -> None:
    """Write the lines this thread holds, in one call."""
    lines: list[str] | None = getattr(_held, "lines", None)
    if lines:
        writer: _LineWriter = _held.file
        _held.lines = []
        writer.flush_held(lines)


def release_lines() -> None:
    """Write what is held and stop holding (each line is written at once again)."""
    flush_lines()
    _held.lines = None


def configure_logging(
    *,
    level: str = "INFO",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    force: bool = False,
) -> None:
    """Configure structlog and the stdlib root logger (Celery's) the same way.

    Idempotent: the first call wins unless ``force`` is given (tests). A forced
    configuration does not cache loggers on first use: a cached logger keeps the
    processors it was built with, so a later ``structlog.testing.capture_logs`` in the
    same process would not see its events.
    """
    if _configured and not force:
        return
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    redactor = Redactor(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        UtcStamper(),
        redactor,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    )
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_LineWriterFactory(out),
        cache_logger_on_first_use=not force,
    )
    # Foreign (stdlib) records: Celery, kombu, httpx. Same processors, same renderer.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared[:-1], structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # httpx logs every request at INFO; a worker makes thousands a minute.
    logging.getLogger("httpx").setLevel(max(numeric, logging.WARNING))
    logging.getLogger("httpcore").setLevel(max(numeric, logging.WARNING))
    # Celery's "Task ... received/succeeded" lines repeat our lead.* events.
    logging.getLogger("celery.app.trace").setLevel(max(numeric, logging.WARNING))
    logging.getLogger("celery.worker.strategy").setLevel(max(numeric, logging.WARNING))
    _configured.update(level=level, fmt=fmt)


def reset_logging() -> None:
    """Forget the configuration (tests: the next :func:`configure_logging` applies)."""
    structlog.reset_defaults()
    _configured.clear()


def is_configured() -> bool:
    """True once an entry point of this package has configured logging."""
    return bool(_configured)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
