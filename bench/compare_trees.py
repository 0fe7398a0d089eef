"""A/B the product's worker across source trees: ``python -m bench.compare_trees``.

For trying a patch before it lands: copy ``dispatcher/`` and ``workers/`` to a
scratch directory, patch the copy, and compare it with this checkout, side by
side in rotated rounds of one run (same Redis, simulator, pool and concurrency)::

    python -m bench.compare_trees --pool threads --concurrency 8 \\
        current=. patched=/tmp/patched-tree [careful]

Each ``NAME=DIR`` starts ``celery -A workers worker`` with DIR as its working
directory and first ``PYTHONPATH`` entry, so DIR's ``workers`` and
``dispatcher`` packages are the ones imported. ``careful`` adds
bench/careful_app.py as a reference. Prints the rate of every round, the
medians and the ratios to the first tree; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import Env, cpu_seconds, median, process_tree, rotations, tree_env
from bench.throughput import celery_enqueuer, lead_fields
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.ops.producer import enqueue_leads

CAREFUL_DB = 2


@dataclass
class TreeWorker(WorkerProcess):
    """`celery -A workers worker` importing ``workers``/``dispatcher`` from ``root``."""

    root: str = "."

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> TreeWorker:
        root = str(Path(self.root).resolve())
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
        env.update(tree_env(self.settings))
        env["DISPATCHER_ENV_FILE"] = "/nonexistent"
        env["PYTHONPATH"] = root
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout)
        return self


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare_trees", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--processes", type=int, default=1, help="worker processes per tree")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="simulator latency")
    parser.add_argument("--leads", type=int, default=2000, help="leads per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("trees", nargs="+", metavar="NAME=DIR|careful")
    args = parser.parse_args(argv)

    trees: dict[str, str] = {}
    for spec in args.trees:
        name, _, root = spec.partition("=")
        if spec == "careful":
            name, root = "careful", "careful"
        elif not root or not (Path(root) / "workers").is_dir():
            parser.error(f"{spec}: expected NAME=DIR with DIR/workers")
        trees[name] = root

    with tempfile.TemporaryDirectory(prefix="compare-trees-") as tmp, Env(Path(tmp)) as env:
        workers: dict[str, list[WorkerProcess]] = {}
        enqueue: dict[str, Callable[[list[str]], None]] = {}
        for name, root in trees.items():
            if root == "careful":
                env.client(CAREFUL_DB).flushdb()
                workers[name] = [
                    env.app_worker(
                        "bench.careful_app",
                        db=CAREFUL_DB,
                        pool=args.pool,
                        concurrency=args.concurrency,
                        tag="cmp-careful",
                    )
                ]
                enqueue[name] = celery_enqueuer("bench.careful_app", CAREFUL_DB, env)
                continue
            settings = env.settings(f"cmp-{name}")
            group: list[WorkerProcess] = []
            for i in range(args.processes):
                worker = TreeWorker(
                    settings,
                    env.logdir / f"{name}-{i}.log",
                    concurrency=args.concurrency,
                    pool=args.pool,
                    name=f"cmp-{name}-{i}",
                    root=root,
                )
                env.workers.append(worker)
                group.append(worker)
            workers[name] = group

            def product(phones: list[str], settings: Settings = settings) -> None:
                enqueue_leads([lead_fields(p) for p in phones], settings=settings)

            enqueue[name] = product

        everyone = [w for group in workers.values() for w in group]
        rates: dict[str, list[float]] = {name: [] for name in trees}
        try:
            env.start_all(everyone)
            env.sim.set_latency(args.latency_ms)

            def one_round(name: str, n: int) -> tuple[float, float]:
                pids = [p for w in workers[name] if w.process for p in process_tree(w.process.pid)]
                cpu0 = cpu_seconds(pids)
                env.counter.arm(n)
                t0 = time.perf_counter()
                enqueue[name](env.phones(n))
                if not env.counter.wait(60 + n / 10):
                    raise RuntimeError(f"{name}: {env.counter.count}/{n} leads added")
                seconds = time.perf_counter() - t0
                return n / seconds, 1000 * (cpu_seconds(pids) - cpu0) / n

            for name in trees:  # warm-up
                one_round(name, 100)
            for r, name in rotations(list(trees), args.rounds):
                rate, cpu_ms = one_round(name, args.leads)
                rates[name].append(rate)
                print(
                    f"  round {r + 1}/{args.rounds} {name:<10} {rate:8.1f} leads/s"
                    f"  worker CPU {cpu_ms:.2f} ms/lead",
                    flush=True,
                )
        finally:
            env.stop_all(everyone)
        first = median(rates[next(iter(trees))])
        print(
            f"\n{args.pool} {args.concurrency} x{args.processes}, latency {args.latency_ms:g} ms, "
            f"{args.leads} leads per round, {args.rounds} rounds; "
            f"duplicates stored: {env.duplicates()}"
        )
        for name, values in rates.items():
            print(
                f"  {name:<10} median {median(values):8.1f} leads/s   x{median(values) / first:.2f}"
                f"   rounds {', '.join(f'{v:.0f}' for v in values)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
