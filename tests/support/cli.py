"""The installed ``dispatcher`` command as an operator runs it, and what its tests compare.

``run_cli`` / ``start_cli`` / ``run_many`` start the console script next to this
interpreter with the ``DISPATCHER_*`` environment of some settings (``cli_env``: no
``.env`` file, wide tables); ``check`` asserts the exit code and that no traceback
was printed. ``record_letter`` writes a dead letter through the store's own API (what
a worker calls), ``snapshot`` proves that a command changed nothing in Redis, and the
``*_KEYS`` sets are the JSON shapes DESIGN.md gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import settings_env
from dispatcher.ops.producer import prepare_job
from dispatcher.store.deadletter import DeadLetter, DeadLetterStore

__all__ = [
    "DISPATCHER",
    "JOB_KEYS",
    "LETTER_KEYS",
    "STATUS_KEYS",
    "check",
    "cli_env",
    "json_lines",
    "record_letter",
    "run_cli",
    "run_many",
    "snapshot",
    "start_cli",
]

#: The console script installed with the package, next to this interpreter.
DISPATCHER = str(Path(sys.executable).with_name("dispatcher"))

#: DESIGN.md, "Dead letter record".
LETTER_KEYS = {
    "id",
    "job_id",
    "reason",
    "error",
    "http_status",
    "attempts",
    "first_failed_at",
    "last_failed_at",
    "enqueued_at",
    "replays",
    "job",
    # Added with leads for a list (issue 27): where the job's lead goes.
    "target",
    "target_list_id",
}
#: DESIGN.md, `dispatcher job ID --json`.
JOB_KEYS = {
    "job_id",
    "state",
    "attempts",
    "reason",
    "error",
    "lead_id",
    "list_id",
    "campaign",
    "enqueued_at",
    "updated_at",
    "next_attempt_at",
}
#: DESIGN.md, `dispatcher status --json`.
STATUS_KEYS = {
    "queued",
    "retrying",
    "dead_letters",
    "oldest_dead_letter_age_s",
    "workers",
    "paused",
}


def cli_env(settings: Settings | None, **extra: str) -> dict[str, str]:
    """The environment of an operator's shell for ``settings`` (no .env file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    if settings is not None:
        env.update(settings_env(settings))
    env["DISPATCHER_ENV_FILE"] = "/nonexistent"
    env["COLUMNS"] = "250"  # wide tables: ids are not folded
    env.update(extra)
    return env


def start_cli(
    settings: Settings | None,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [DISPATCHER, *args],
        env=env if env is not None else cli_env(settings),
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(
    settings: Settings | None,
    *args: str,
    input: str = "",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``dispatcher ARGS`` to the end (stdin is ``input``, never the terminal)."""
    return subprocess.run(
        [DISPATCHER, *args],
        env=env if env is not None else cli_env(settings),
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_many(
    settings: Settings | None, commands: Sequence[Sequence[str]], **kwargs: Any
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands side by side (they must not depend on each other)."""
    procs = [(list(args), start_cli(settings, *args, **kwargs)) for args in commands]
    done = []
    for args, proc in procs:
        out, err = proc.communicate("", timeout=60)
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def check(result: subprocess.CompletedProcess[str], code: int = 0) -> None:
    """Exit code as expected, and never a traceback."""
    assert result.returncode == code, (
        f"dispatcher {' '.join(result.args)} -> {result.returncode}, wanted {code}\n"
        f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
    )
    assert "Traceback" not in result.stdout + result.stderr


#: Worker liveness, rewritten every beat: not state that a command could change.
_HEARTBEATS = ("workers", "lookups")


def snapshot(settings: Settings) -> dict[str, bytes | None]:
    """Every key with its value (DUMP), heartbeats aside: to prove that nothing changed."""
    ignored = {f"{settings.key_prefix}:{name}" for name in _HEARTBEATS}
    with redis.Redis.from_url(settings.redis_url) as r:
        keys = sorted(k.decode() for k in r.scan_iter(match=f"{settings.key_prefix}:*"))
        keys += sorted(k.decode() for k in r.scan_iter(match=f"{settings.queue}*"))
        # Written by a running worker on its own (heartbeats, its look-up check, the
        # once-a-minute activity sample when a minute turns during the test).
        beats = (
            f"{settings.key_prefix}:worker:",
            f"{settings.key_prefix}:consumer:",
            f"{settings.key_prefix}:lookup:",
            f"{settings.key_prefix}:activity",
        )
        return {k: r.dump(k) for k in keys if k not in ignored and not k.startswith(beats)}


def record_letter(
    store: DeadLetterStore,
    settings: Settings,
    *,
    agent: str = "1003",
    phone: str = "7275551000",
    reason: str = "manual_list_undefined",
    age_s: float = 60.0,
    **fields: Any,
) -> DeadLetter:
    """A dead letter as a worker writes it, ``age_s`` seconds after its last failure."""
    now = time.time()
    job = prepare_job(
        {"agent_user": agent, "phone_number": phone, **fields},
        settings=settings,
        now=now - age_s - 1,
    ).to_message()
    return store.record(
        job=job,
        reason=reason,
        error=f"ERROR: {reason} - {phone}|{agent}",
        http_status=200,
        attempts=1,
        first_failed_at=now - age_s,
        now=now - age_s,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
