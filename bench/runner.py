"""``python -m bench``: run the benchmarks, print a table, write bench/results/latest.json.

    python -m bench                  # full run (a few minutes)
    python -m bench --quick          # small sizes, about 3 minutes
    python -m bench --only enqueue   # one benchmark (repeat --only for several)
    python -m bench --only faults --long   # the fault schedule over 20 seeds (bench/faults.py)

Everything runs on this machine: a private redis-server, the VICIdial simulator
in this process, and real ``celery`` worker processes. Every process started is
killed on the way out, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from bench import (
    clients,
    console,
    cost,
    dialers,
    enqueue,
    faults,
    latency,
    login_flood,
    notify,
    reconcile,
    replay,
    targets,
    throughput,
)
from bench.common import ROOT, Env, Section, machine_info

BENCHMARKS: dict[str, ModuleType] = {
    m.NAME: m
    for m in (
        throughput,
        latency,
        enqueue,
        replay,
        cost,
        console,
        dialers,
        reconcile,
        login_flood,
        clients,
        targets,
        faults,
        notify,
    )
}
RESULTS = ROOT / "bench" / "results"


def _git() -> dict[str, Any]:
    """The commit measured and the files changed on top of it (read-only git calls)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if line]
    return {"commit": git("rev-parse", "HEAD"), "changed_files": dirty}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, about 3 minutes")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help="the long variant of benchmarks that have one (faults: 20 seeds of 1,000 leads)",
    )
    parser.add_argument(
        "--seeds",
        type=_positive,
        metavar="N",
        help="how many seeds the seeded benchmarks run (faults)",
    )
    parser.add_argument(
        "--appendfsync",
        choices=("always", "everysec", "no"),
        help="run Redis with the AOF on and this fsync policy (default: no persistence)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS / "latest.json",
        help="where to write the JSON figures (default bench/results/latest.json)",
    )
    parser.add_argument(
        "--markdown", type=Path, help="also write the tables as Markdown to this file"
    )
    return parser.parse_args(argv)


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _options(run: Callable[..., Section], args: argparse.Namespace) -> dict[str, Any]:
    """``quick``, and ``long``/``seeds`` for the benchmarks whose ``run`` takes them."""
    accepted = inspect.signature(run).parameters
    options: dict[str, Any] = {"quick": args.quick}
    if "long" in accepted:
        options["long"] = args.long
    if "seeds" in accepted and args.seeds is not None:
        options["seeds"] = args.seeds
    return options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(BENCHMARKS)
    # Ctrl-C and SIGTERM both unwind through the finally blocks that stop every process
    # (SIGINT explicitly: a shell starting us in the background may have ignored it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    machine = machine_info()
    mode = "quick" if args.quick else "long" if args.long else "full"
    print(
        f"machine: {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['cpu_model']}, {machine['memory_gb']} GB; Python {machine['python']}, "
        f"Celery {machine['celery']}; load average {machine['load_average_at_start']}",
        flush=True,
    )
    print(f"mode: {mode}; benchmarks: {', '.join(names)}", flush=True)
    sections: list[Section] = []
    failures: dict[str, str] = {}
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-"))
    env = Env(workdir, appendfsync=args.appendfsync)
    interrupted = False
    try:
        env.start()
        for name in names:
            print(f"\n[{name}]", flush=True)
            t0 = time.perf_counter()
            run: Callable[..., Section] = BENCHMARKS[name].run
            try:
                section = run(env, **_options(run, args))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # report it, keep the other benchmarks' figures
                failures[name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
                print(f"  FAILED: {failures[name]}", flush=True)
                continue
            finally:
                for worker in env.workers:  # whatever the benchmark left running
                    with contextlib.suppress(Exception):
                        worker.kill()
            section.seconds = time.perf_counter() - t0
            sections.append(section)
            print(section.render(), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping workers and Redis", file=sys.stderr, flush=True)
    finally:
        # A second Ctrl-C must not cut the clean-up short and orphan a worker.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        env.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if failures:
            print(f"worker logs kept in {workdir / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - started

    print("\n" + "=" * 100)
    print(f"SUMMARY ({mode} run, {total:.0f} s)")
    for section in sections:
        for goal in section.goals:
            print(f"  [{section.name}] {goal.text()}")
    for name, why in failures.items():
        print(f"  [{name}] FAILED: {why}")
    result = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "seconds": round(total, 1),
        "interrupted": interrupted,
        "machine": machine,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "git": _git(),
        "redis": {"appendfsync": args.appendfsync or "off (no persistence)"},
        "benchmarks": {s.name: s.to_dict() for s in sections},
        "failures": failures,
    }
    output = args.output
    if interrupted:  # keep the last complete run's figures where they were
        output = output.with_name(f"{output.stem}.interrupted{output.suffix}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nJSON: {output.resolve()}")
    if args.markdown:
        args.markdown.write_text(render_markdown(sections, machine, mode) + "\n")
        print(f"Markdown: {args.markdown.resolve()}")
    if interrupted:
        return 130
    return 1 if failures else 0


def render_markdown(sections: list[Section], machine: dict[str, Any], mode: str) -> str:
    head = (
        f"Machine: {machine['cores']} cores ({machine['cpu_model']}), "
        f"{machine['memory_gb']} GB RAM, {machine['os']}, Python {machine['python']}, "
        f"Celery {machine['celery']}, httpx {machine['httpx']}; {mode} run; "
        f"load average at start {machine['load_average_at_start']}."
    )
    return "\n\n".join([head, *(s.markdown() for s in sections)])


if __name__ == "__main__":
    sys.exit(main())
