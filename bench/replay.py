"""Benchmark 4: dead-letter replay rate, and the CLI's peak memory on a big store.

Dead letters are built with ``DeadLetterStore.letter`` (each job a valid job
message, as ``prepare_job(...).to_message()`` builds it) and written with the
``dead`` command of execution.lua, as ``DeadLetterStore.write`` does, sent in
pipelines of 1000 so that 100,000 take seconds, not minutes. Then:

* replay rate: ``dispatcher dlq replay --all --yes`` as a subprocess (wall time,
  interpreter start-up included), and ``DeadLetterStore.replay`` over
  ``DeadLetterStore.iter`` in this process, in rotated rounds;
* peak RSS (``os.wait4``) of ``dispatcher dlq export > /dev/null`` and
  ``dispatcher dlq replay --all --yes --dry-run > /dev/null`` with an empty
  store, 10,000 and 100,000 letters: flat means streaming.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from bench.common import AGENT, Env, Goal, Section, child_env, median, rotations, run_measured
from dispatcher.config.settings import Settings
from dispatcher.model.jobs import new_job_id
from dispatcher.ops.producer import prepare_job
from dispatcher.store.backend import get_backend
from dispatcher.store.deadletter import DeadLetterStore
from dispatcher.store.keys import Keys

NAME = "replay"
DB = 5
REASON = "manual_list_undefined"
ERROR = "ERROR: campaign manual dial list undefined - 1003|GHOST"


def make_letters(settings: Settings, n: int, *, first: int = 0) -> float:
    """Write ``n`` dead letters as DeadLetterStore.write does; return the seconds it took."""
    backend = get_backend(settings)
    pipe = backend.redis.pipeline(transaction=False)
    store = DeadLetterStore(backend)
    base = prepare_job(
        {
            "agent_user": AGENT,
            "phone_number": "8200000000",
            "first_name": "Bench",
            "last_name": "Mark",
            "email": "bench@example.com",
        },
        settings=settings,
    ).to_message()
    started = time.perf_counter()
    now = time.time()
    for i in range(first, first + n):
        job = {
            **base,
            "job_id": new_job_id(),
            "lead": {**base["lead"], "phone_number": f"82{i:08d}"},
        }
        letter = store.letter(
            job=job,
            reason=REASON,
            error=ERROR,
            http_status=200,
            attempts=1,
            first_failed_at=now - 60,
            now=now - i * 0.001,  # distinct failure times, as real letters have
        )
        backend.execution.call(
            "dead",
            letter.job_id,
            "",
            0,
            json.dumps(letter.to_dict(), separators=(",", ":")),
            f"{letter.score:.6f}",
            REASON,
            1,
            ERROR,
            200,
            int(settings.job_ttl_s),
            "",
            client=pipe,
        )
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - started


def dispatcher_command() -> list[str]:
    exe = Path(sys.executable).parent / "dispatcher"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("dispatcher")
    return [found] if found else [sys.executable, "-m", "dispatcher.cli"]


def run(env: Env, *, quick: bool) -> Section:
    settings = env.settings("dlq", redis_url=env.url(DB))
    db = env.client(DB)
    cmd = dispatcher_command()
    child = child_env(settings)
    n, rounds = (2000, 1) if quick else (10_000, 2)
    sizes = (2_000, 20_000) if quick else (10_000, 100_000)
    logfile = env.logdir / "dlq-replay.log"

    # -- replay rate: CLI subprocess vs in process, rotated --------------------------------
    rates: dict[str, list[float]] = {"cli": [], "in_process": []}
    cli_rss: list[int] = []
    create_s: list[float] = []
    for r, system in rotations(["cli", "in_process"], rounds):
        db.flushdb()
        create_s.append(make_letters(settings, n))
        if system == "cli":
            with logfile.open("ab") as log:
                done = run_measured(
                    [*cmd, "dlq", "replay", "--all", "--yes"],
                    env=child,
                    stderr=log,
                    registry=env.children,
                )
            if done.returncode != 0:
                raise RuntimeError(f"dlq replay exited {done.returncode}: see {logfile}")
            seconds = done.seconds
            cli_rss.append(done.max_rss_kb)
        else:
            store = DeadLetterStore(settings=settings)
            started = time.perf_counter()
            for letter in store.iter():
                store.replay(letter)
            seconds = time.perf_counter() - started
        left = int(db.zcard(Keys.of(settings).dead_letters))
        # Replayed jobs go back to their dialer's lane ({queue}.{dialer}.{lane}).
        queued = sum(
            int(db.llen(k))
            for k in db.scan_iter(match=f"{settings.queue}*", _type="list")
            if not str(k).endswith(".wake")
        )
        if left or queued != n:
            raise RuntimeError(f"{system}: {left} letters left, {queued}/{n} jobs queued")
        rates[system].append(n / seconds)
        print(
            f"    round {r + 1}/{rounds} replay {system:<10} {n / seconds:8.0f} letters/s",
            flush=True,
        )

    # -- peak memory at growing store sizes ----------------------------------------------
    db.flushdb()
    memory: dict[str, dict[int, dict[str, float]]] = {"export": {}, "replay --dry-run": {}}
    have = 0
    for size in (0, *sizes):
        if size > have:
            make_letters(settings, size - have, first=have)
            have = size
        for label, args in (
            ("export", ["dlq", "export"]),
            ("replay --dry-run", ["dlq", "replay", "--all", "--yes", "--dry-run"]),
        ):
            done = run_measured([*cmd, *args], env=child, registry=env.children)
            if done.returncode != 0:
                raise RuntimeError(f"dispatcher {' '.join(args)} exited {done.returncode}")
            memory[label][size] = {
                "max_rss_mb": done.max_rss_kb / 1024,
                "seconds": done.seconds,
                "letters_per_s": size / done.seconds if size else 0.0,
            }
            print(
                f"    {label:<17} {size:>7} letters: {done.max_rss_kb / 1024:6.1f} MB, "
                f"{done.seconds:5.1f} s",
                flush=True,
            )
    db.flushdb()

    section = Section(
        NAME,
        "4. Dead letters: replay rate and CLI peak memory",
        ["measure", *[f"{s:,} letters" if s else "empty store" for s in (0, *sizes)]],
    )
    cli_rate, inproc_rate = median(rates["cli"]), median(rates["in_process"])
    columns = (0, *sizes)

    def at(size: int, text: str) -> list[str]:
        """A row with ``text`` in the column of ``size`` letters, blank elsewhere."""
        return [text if s == size else "" for s in columns]

    section.rows.append(
        ["replay rate, `dlq replay --all --yes` (letters/s)", *at(n, f"{cli_rate:,.0f}")]
    )
    section.rows.append(
        ["replay rate, DeadLetterStore.replay in process", *at(n, f"{inproc_rate:,.0f}")]
    )
    for label in memory:
        section.rows.append(
            [f"peak RSS MB, `dlq {label}`"]
            + [f"{memory[label][s]['max_rss_mb']:.1f}" for s in (0, *sizes)]
        )
        section.rows.append(
            [f"letters/s, `dlq {label}`", "-"]
            + [f"{memory[label][s]['letters_per_s']:,.0f}" for s in sizes]
        )
    big, small = sizes[-1], sizes[0]
    section.goals.append(Goal(f"CLI replay of {n:,} letters", cli_rate, 2000.0, unit=" /s"))
    for label in memory:
        section.goals.append(
            Goal(
                f"`dlq {label}` peak RSS at {big:,} letters",
                memory[label][big]["max_rss_mb"],
                150.0,
                higher_is_better=False,
                unit=" MB",
            )
        )
        section.goals.append(
            Goal(
                f"`dlq {label}` flatness: RSS at {big:,} / at {small:,}",
                memory[label][big]["max_rss_mb"] / memory[label][small]["max_rss_mb"],
                1.10,
                higher_is_better=False,
                unit="x",
            )
        )
    section.notes.append(
        f"replay: {n:,} letters per round ({REASON}), {rounds} rotated round(s) per way; the "
        "CLI's time includes interpreter start-up and its per-letter `dlq.replayed` log line; "
        f"creating {n:,} letters with DeadLetterStore.record (pipelined) took "
        f"{median(create_s):.1f} s"
    )
    section.notes.append("flatness goal (ours): < 1.10x the RSS at 10x fewer letters")
    section.data = {
        "letters_per_round": n,
        "rounds": rounds,
        "replay_rates": rates,
        "cli_replay_max_rss_mb": [x / 1024 for x in cli_rss],
        "memory": {k: {str(s): v for s, v in m.items()} for k, m in memory.items()},
        "create_seconds": create_s,
    }
    return section
