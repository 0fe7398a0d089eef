"""Configuration from ``DISPATCHER_*`` environment variables (and a ``.env`` file).

Read once per process with :func:`get_settings` (or build :class:`Settings`
explicitly in code and tests). Every value is validated at start-up; a bad value
raises :class:`~dispatcher.model.errors.ConfigError` naming the variable. Secrets (the
VICIdial password, a password inside the Redis URL) never appear in ``repr``,
in error messages or in logs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dispatcher.model.dialers import Dialer, Dialers, load_dialers
from dispatcher.model.errors import ConfigError
from dispatcher.model.notifications import notify_url_problem

__all__ = ["ENV_PREFIX", "SETTINGS_VARIABLES", "Settings", "get_settings", "redact_url"]

ENV_PREFIX = "DISPATCHER_"
_SOURCE_RE = re.compile(r"^[0-9a-zA-Z]{2,20}$")
_PREFIX_RE = re.compile(r"^[-_.:0-9a-zA-Z]{1,64}$")
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to print).

    A Sentinel URL lists several nodes separated by ``;``; each is redacted.
    """
    if ";" in url:
        return ";".join(redact_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True)
class Settings:
    """Every knob of the dispatcher. Field ``x`` is read from ``DISPATCHER_X``."""

    redis_url: str = "redis://localhost:6379/0"
    redis_sentinel_master: str | None = None
    # The longest any one Redis command may take (a socket timeout on every client:
    # the workers' broker connection, their job writes, the scheduler, producers);
    # connecting is bounded by the smaller of this and 5 s. A command that times out
    # is Redis unavailable: a worker waits and tries again.
    redis_timeout_s: float = 15.0
    vicidial_url: str | None = None
    vicidial_user: str | None = None
    vicidial_pass: str | None = field(default=None, repr=False)
    vicidial_source: str = "dispatcher"
    # VICIdial's system setting use_non_latin on the dialer: which lead rules apply
    # (dispatcher.model.lead). A client cannot see the mode: it must be told.
    vicidial_non_latin: bool = False
    # VICIdial's Non-Agent API (lead look-ups for reconciliation); None: derived from
    # vicidial_url (see nonagent_url).
    vicidial_nonagent_url: str | None = None
    phone_code: str = "1"
    dnc_check: bool = True
    campaign_dnc_check: bool = True
    max_attempts: int = 8
    retry_base_s: float = 2.0
    retry_cap_s: float = 300.0
    agent_wait_s: float = 900.0
    # How long a job whose dialer the worker that took it does not know (a rolling
    # deploy of the dialers file, a renamed dialer, non_latin flipped) waits for a
    # worker that knows it before it becomes the dead letter unknown_dialer.
    unknown_dialer_wait_s: float = 600.0
    # Our retries wait in a Redis sorted set, not as ETA messages inside a worker,
    # so an unacknowledged message is only ever held for one call (plus a rate-limit
    # wait). Ten minutes is far above that, and is how long a job held by a worker
    # that was killed waits before another worker takes it over.
    visibility_timeout_s: float = 600.0
    http_timeout_s: float = 10.0
    rate_limit: float = 0.0
    log_format: str = "auto"
    log_level: str = "INFO"
    key_prefix: str = "dispatcher"
    queue: str = "dispatcher"
    job_ttl_s: float = 7 * 86400.0
    done_ttl_s: float = 7 * 86400.0
    # Dead letters older than this are removed by the workers' maintenance (0: never).
    dead_letter_retention_days: float = 0.0
    # What a call whose answer never came becomes: reconcile (look the lead up in
    # VICIdial, then decide), dead_letter (an operator checks) or retry (call again).
    ambiguous: str = "reconcile"
    # How long an ambiguous job waits before the look-up: a request stuck in PHP can
    # still insert the lead late.
    reconcile_after_s: float = 60.0
    # The lead field that carries the job's marker when the producer left it empty.
    marker_field: str = "source_id"
    # Delete the later copies of a duplicated lead (only never-touched copies that
    # carry this job's marker).
    reconcile_delete_duplicates: bool = False
    unknown_max_attempts: int = 3
    pause_s: float = 300.0
    breaker_threshold: int = 5
    breaker_pause_s: float = 30.0
    scheduler_interval_s: float = 1.0
    intake_tokens: tuple[str, ...] = field(default=(), repr=False)
    # Several VICIdial servers: a TOML file (dispatcher/model/dialers.py). Without it, the
    # VICIDIAL_* variables above define one dialer named "default".
    dialers_file: str | None = None
    # The dialers this worker serves (default: all of them).
    worker_dialers: tuple[str, ...] = ()
    # The operator console (/ui/): a session ends after this long idle, and in any
    # case this long after login; its cookie is Secure over https ("auto"), always
    # ("true": TLS ends at a proxy that does not say so) or never ("false").
    console_idle_s: float = 1800.0
    console_session_s: float = 12 * 3600.0
    console_secure_cookie: str = "auto"
    # How a --pool threads worker runs its jobs: "asyncio" (workers/engine.py: one
    # event loop holds every call in flight) or "threads" (one Celery pool thread
    # per job, as before).
    engine: str = "asyncio"
    # Calls in flight per worker process when `celery -A workers worker` is started
    # without -c (Celery's worker_concurrency; the threads pool is its default pool).
    worker_concurrency: int = 64
    # Outcome notifications (webhooks; workers/notifier.py): the receiver of every job
    # that names none of its own, the HMAC key of the signature, the URL prefixes a
    # job's own notify_url must start with (producers check it at enqueue, workers
    # again before sending), how long an event is retried before it is kept as failed.
    notify_url: str | None = None
    notify_secret: str | None = field(default=None, repr=False)
    notify_allowed: tuple[str, ...] = ()
    notify_retry_s: float = 86400.0
    # One POST ends within this (connect, send, answer: an overall deadline).
    notify_timeout_s: float = 10.0
    # POSTs in flight per worker process, and to one receiver (scheme, host, port).
    notify_concurrency: int = 16
    notify_per_receiver: int = 8
    # Backoff of a failed POST: full jitter, exponential from BASE up to CAP.
    notify_retry_base_s: float = 1.0
    notify_retry_cap_s: float = 900.0
    # Leads first: while a worker's lead path is busy, its sender of notifications uses
    # at most this share of the CPU the leads use (0: no limit); see workers/notifier.py.
    notify_cpu_share: float = 0.2
    # Failed notifications (retried for NOTIFY_RETRY_S in vain) are kept this many
    # days for `dispatcher notify retry`, then removed (0: kept until retried or purged).
    notify_failed_retention_days: float = 30.0

    def __post_init__(self) -> None:
        problems: list[str] = []

        def check(ok: bool, name: str, why: str) -> None:
            if not ok:
                problems.append(f"{ENV_PREFIX}{name.upper()}: {why}")

        check(
            self.redis_url.startswith(("redis://", "rediss://", "sentinel://")),
            "redis_url",
            "must start with redis://, rediss:// or sentinel:// (Celery's Redis transport "
            "cannot use unix:// sockets: use TCP on loopback)",
        )
        check(
            not self.redis_url.startswith("sentinel://") or bool(self.redis_sentinel_master),
            "redis_sentinel_master",
            "is required with a sentinel:// REDIS_URL (the name of the monitored master)",
        )
        check(0.1 <= self.redis_timeout_s <= 300, "redis_timeout_s", "must be 0.1-300 seconds")
        if self.vicidial_url is not None:
            check(
                self.vicidial_url.startswith(("http://", "https://")),
                "vicidial_url",
                "must be the full http(s) URL of agc/api.php",
            )
        if self.vicidial_nonagent_url is not None:
            check(
                self.vicidial_nonagent_url.startswith(("http://", "https://")),
                "vicidial_nonagent_url",
                "must be the full http(s) URL of vicidial/non_agent_api.php",
            )
        check(
            bool(_SOURCE_RE.match(self.vicidial_source)),
            "vicidial_source",
            "must be 2-20 letters or digits",
        )
        check(
            bool(re.fullmatch(r"[0-9X]{1,10}", self.phone_code)),
            "phone_code",
            "must be 1-10 digits",
        )
        check(1 <= self.max_attempts <= 100, "max_attempts", "must be between 1 and 100")
        check(1 <= self.unknown_max_attempts <= 100, "unknown_max_attempts", "must be 1-100")
        check(self.retry_base_s > 0, "retry_base_s", "must be > 0")
        check(self.retry_cap_s >= self.retry_base_s, "retry_cap_s", "must be >= RETRY_BASE_S")
        check(self.agent_wait_s >= 0, "agent_wait_s", "must be >= 0")
        check(
            0 <= self.unknown_dialer_wait_s <= 30 * 86400,
            "unknown_dialer_wait_s",
            "must be between 0 and 2592000 seconds (30 days)",
        )
        check(0 < self.http_timeout_s <= 300, "http_timeout_s", "must be > 0 and <= 300")
        check(
            self.visibility_timeout_s > 2 * self.http_timeout_s + 5,
            "visibility_timeout_s",
            "must exceed twice HTTP_TIMEOUT_S plus 5 s, or a slow call would run twice",
        )
        check(self.rate_limit >= 0, "rate_limit", "must be >= 0 (0 means no limit)")
        check(self.log_format in ("auto", "json", "console"), "log_format", "json or console")
        check(
            self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            "log_level",
            "must be DEBUG, INFO, WARNING, ERROR or CRITICAL",
        )
        check(bool(_PREFIX_RE.match(self.key_prefix)), "key_prefix", "1-64 of [-_.:0-9a-zA-Z]")
        check(bool(_PREFIX_RE.match(self.queue)), "queue", "1-64 of [-_.:0-9a-zA-Z]")
        check(self.job_ttl_s >= 60, "job_ttl_s", "must be >= 60")
        check(self.done_ttl_s >= 60, "done_ttl_s", "must be >= 60")
        check(
            self.dead_letter_retention_days >= 0,
            "dead_letter_retention_days",
            "must be >= 0 (0 keeps dead letters forever)",
        )
        check(self.engine in ("asyncio", "threads"), "engine", "asyncio or threads")
        check(
            1 <= self.worker_concurrency <= 1000,
            "worker_concurrency",
            "must be between 1 and 1000",
        )
        check(
            self.ambiguous in ("reconcile", "dead_letter", "retry"),
            "ambiguous",
            "reconcile, dead_letter or retry",
        )
        check(
            0 <= self.reconcile_after_s <= 86400,
            "reconcile_after_s",
            "must be between 0 and 86400 seconds",
        )
        check(
            self.marker_field in ("source_id", "vendor_lead_code", "none"),
            "marker_field",
            "source_id, vendor_lead_code or none",
        )
        check(self.pause_s > 0, "pause_s", "must be > 0")
        check(self.breaker_threshold >= 1, "breaker_threshold", "must be >= 1")
        check(self.breaker_pause_s > 0, "breaker_pause_s", "must be > 0")
        check(0 < self.scheduler_interval_s <= 60, "scheduler_interval_s", "must be 0-60")
        check(60 <= self.console_idle_s <= 86400, "console_idle_s", "must be 60-86400")
        check(
            self.console_idle_s <= self.console_session_s <= 30 * 86400,
            "console_session_s",
            "must be at least CONSOLE_IDLE_S and at most 30 days",
        )
        check(
            self.console_secure_cookie in ("auto", "true", "false"),
            "console_secure_cookie",
            "auto, true or false",
        )
        if self.notify_url is not None:
            why = notify_url_problem(self.notify_url)
            check(why is None, "notify_url", why or "")
        for entry in self.notify_allowed:
            why = notify_url_problem(entry, prefix=True)
            check(why is None, "notify_allowed", f"{entry!r}: {why}")
        check(
            60 <= self.notify_retry_s <= 30 * 86400,
            "notify_retry_s",
            "must be between 60 and 2592000 seconds (30 days)",
        )
        check(0 < self.notify_timeout_s <= 120, "notify_timeout_s", "must be > 0 and <= 120")
        check(1 <= self.notify_concurrency <= 256, "notify_concurrency", "must be 1-256")
        check(
            1 <= self.notify_per_receiver <= self.notify_concurrency,
            "notify_per_receiver",
            "must be between 1 and NOTIFY_CONCURRENCY",
        )
        check(self.notify_retry_base_s > 0, "notify_retry_base_s", "must be > 0")
        check(
            0 <= self.notify_cpu_share <= 10,
            "notify_cpu_share",
            "must be between 0 (no limit) and 10",
        )
        check(
            self.notify_retry_cap_s >= self.notify_retry_base_s,
            "notify_retry_cap_s",
            "must be >= NOTIFY_RETRY_BASE_S",
        )
        check(
            self.notify_failed_retention_days >= 0,
            "notify_failed_retention_days",
            "must be >= 0 (0 keeps failed notifications until retried or purged)",
        )
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        if self.dialers_file or self.worker_dialers:
            dialers = self.dialers  # a bad file stops the process here, naming its key
            unknown = [n for n in self.worker_dialers if n not in dialers.by_name]
            if unknown:
                raise ConfigError(
                    f"invalid configuration: {ENV_PREFIX}WORKER_DIALERS: "
                    f"{', '.join(unknown)} not among the dialers ({', '.join(dialers.names)}, "
                    f"from {dialers.origin})"
                )

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "redis_url":
                value = redact_url(value)
            elif not f.repr:
                value = "***" if value else value
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never be printed (used by the log redaction processor)."""
        out = [s for s in (self.vicidial_pass,) if s]
        out.extend(self.dialers.secrets)
        for part in self.redis_url.split(";"):
            try:
                pw = urlsplit(part).password
            except ValueError:
                pw = None
            if pw:
                out.append(pw)
        out.extend(self.intake_tokens)
        if self.notify_secret:
            out.append(self.notify_secret)
        return tuple(out)

    @functools.cached_property
    def dialers(self) -> Dialers:
        """The fleet's dialers: the dialers file's, or one ("default") from VICIDIAL_*."""
        return load_dialers(self)

    def served_dialers(self) -> list[Dialer]:
        """The dialers this worker calls (DISPATCHER_WORKER_DIALERS, default all)."""
        names = self.worker_dialers or self.dialers.names
        return [self.dialers.by_name[n] for n in names]

    @property
    def nonagent_url(self) -> str | None:
        """The default dialer's Non-Agent API URL (see Dialer.lookup_url)."""
        dialer = self.dialers.resolve(None)
        return dialer.lookup_url if dialer is not None else None

    def require_vicidial(self) -> None:
        """Raise ConfigError unless the worker has what it needs to call VICIdial."""
        if not self.dialers_file:
            missing = [
                f"{ENV_PREFIX}{name.upper()}"
                for name in ("vicidial_url", "vicidial_user", "vicidial_pass")
                if not getattr(self, name)
            ]
            if missing:
                raise ConfigError("the worker needs " + ", ".join(missing) + " (not set)")
            return
        for dialer in self.served_dialers():
            missing = dialer.missing()
            if missing:  # pragma: no cover - the file's own checks come first
                raise ConfigError(f"dialer {dialer.name}: missing {', '.join(missing)}")

    @property
    def notifies(self) -> bool:
        """Whether this process may send outcome notifications (a global receiver, or
        jobs allowed to name their own)."""
        return bool(self.notify_url or self.notify_allowed)

    def require_notify(self) -> None:
        """Raise ConfigError when notifications are configured without their secret."""
        if self.notifies and not self.notify_secret:
            names = [
                f"{ENV_PREFIX}{n.upper()}"
                for n in ("notify_url", "notify_allowed")
                if getattr(self, n)
            ]
            raise ConfigError(
                f"{ENV_PREFIX}NOTIFY_SECRET is required with {' and '.join(names)}: every "
                "notification is signed with it (HMAC-SHA256; README 'Notifications')"
            )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Read ``DISPATCHER_*`` from ``environ`` (default ``os.environ``), then ``env_file``.

        Real environment variables win over the file, as with docker-compose.
        """
        values: dict[str, str] = {}
        if env_file is not None:
            path = Path(os.environ.get("DISPATCHER_ENV_FILE", env_file))
            if path.is_file():
                values.update(_read_env_file(path))
        env = os.environ if environ is None else environ
        values.update({k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Settings:
        known = {f"{ENV_PREFIX}{f.name.upper()}": f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        problems: list[str] = []
        for key, raw in values.items():
            if not key.startswith(ENV_PREFIX) or key == "DISPATCHER_ENV_FILE":
                continue
            f = known.get(key)
            if f is None:
                # A typo in a variable name silently falls back to a default otherwise.
                problems.append(f"{key}: unknown setting")
                continue
            try:
                kwargs[f.name] = _PARSERS[str(f.type)](raw.strip())
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        return cls(**kwargs)


def _parse_bool(raw: str) -> bool:
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("must be true or false")


def _parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _parse_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("must be a finite number")
    return value


def _parse_optional_str(raw: str) -> str | None:
    return raw or None


def _parse_tokens(raw: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in raw.split(",") if t.strip())


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "str | None": _parse_optional_str,
    "bool": _parse_bool,
    "int": _parse_int,
    "float": _parse_float,
    "tuple[str, ...]": _parse_tokens,
}

#: Every variable the settings know, for docs and the .env.example check.
SETTINGS_VARIABLES: tuple[str, ...] = tuple(
    f"{ENV_PREFIX}{f.name.upper()}" for f in dataclasses.fields(Settings)
)


def _read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_line in path.read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
