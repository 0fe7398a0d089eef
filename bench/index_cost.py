"""What the phone index costs a job: ``python -m bench.index_cost [--leads N] [--rounds R]``.

Issue 25's erasure (``dispatcher forget``) needs every job listed under a keyed hash
of its phone (dispatcher/store/phone_index.py). Measured side by side against the release
before it (commit 1c0038d, extracted with ``git archive`` and imported from a scratch
directory), in rotated rounds on one Redis, each tree in a subprocess of its own:

* enqueue speed: ``enqueue_lead`` in a loop and ``enqueue_leads`` in batches of 1000
  (leads/s; distinct phones, no idempotency key, then with one);
* Redis memory per lead (``used_memory`` after minus before, the batch run's leads);
* Redis commands per lead (every command Redis ran, the scripts' own included, from
  ``INFO commandstats``).

Prints the medians and the ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from bench.common import ROOT, Env, median, rotations
from bench.login_flood import BEFORE, _extract

_CHILD = r"""
import json, sys, time
from dispatcher.config.settings import Settings
from dispatcher.ops.producer import enqueue_lead, enqueue_leads
settings = Settings(redis_url=sys.argv[1], key_prefix="idx", queue="idx")
n, mode = int(sys.argv[2]), sys.argv[3]
def lead(i):
    d = {"agent_user": "1000", "phone_number": f"72{i:08d}", "first_name": "Bench"}
    if mode.endswith("idem"):
        d["idempotency_key"] = f"form-{i}"
    return d
enqueue_lead(settings=settings, **lead(n + 1))  # connect, load the script, make the key
started = time.perf_counter()
if mode.startswith("loop"):
    for i in range(n):
        enqueue_lead(settings=settings, **lead(i))
else:
    for s in range(0, n, 1000):
        enqueue_leads([lead(i) for i in range(s, min(n, s + 1000))], settings=settings)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def _run(tree: Path, url: str, n: int, mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(PYTHONPATH=str(tree), DISPATCHER_ENV_FILE="/nonexistent")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, url, str(n), mode],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def _calls(client: redis.Redis) -> tuple[int, int]:
    """(commands, microseconds of Redis CPU) since the last CONFIG RESETSTAT."""
    stats: dict[str, Any] = client.info("commandstats")
    # A script's own commands are counted twice in time (inside EVALSHA, and as each
    # command): the CPU is the scripts' time plus what ran outside them.
    outside = [v for k, v in stats.items() if k not in ("cmdstat_info",)]
    calls = sum(int(v["calls"]) for v in outside)
    scripts = sum(
        int(v["usec"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )
    return calls, scripts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.index_cost")
    parser.add_argument("--leads", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="index-cost-"))
    trees = {"before": _extract(BEFORE, workdir / "before"), "after": ROOT}
    modes = ("loop", "loop-idem", "batch", "batch-idem")
    rates: dict[tuple[str, str], list[float]] = {}
    memory: dict[str, list[float]] = {name: [] for name in trees}
    commands: dict[str, list[float]] = {name: [] for name in trees}
    cpu: dict[str, list[float]] = {name: [] for name in trees}
    with Env(workdir) as env:
        client = env.client(0)
        for _, (name, mode) in rotations([(t, m) for t in trees for m in modes], args.rounds):
            client.flushdb()
            client.config_resetstat()
            used = int(client.info("memory")["used_memory"])
            seconds = _run(trees[name], env.url(0), args.leads, mode)
            rates.setdefault((name, mode), []).append(args.leads / seconds)
            if mode == "batch":
                after = int(client.info("memory")["used_memory"])
                memory[name].append((after - used) / args.leads)
                calls, usec = _calls(client)
                commands[name].append(calls / (args.leads + 1))
                cpu[name].append(usec / (args.leads + 1))
            print(f"  {name:<6} {mode:<10} {args.leads / seconds:8.0f} leads/s", flush=True)
    print(f"\n{args.leads} leads a run, {args.rounds} rounds, medians:")
    print(f"  {'':<12}{'before':>10}{'after':>10}{'after/before':>14}")
    for mode in modes:
        b, a = median(rates[("before", mode)]), median(rates[("after", mode)])
        print(f"  {mode + ' /s':<12}{b:>10.0f}{a:>10.0f}{a / b:>14.2f}")
    b, a = median(memory["before"]), median(memory["after"])
    print(f"  {'bytes/lead':<12}{b:>10.0f}{a:>10.0f}{a / b:>14.2f}   (+{a - b:.0f} bytes)")
    b, a = median(commands["before"]), median(commands["after"])
    print(f"  {'cmds/lead':<12}{b:>10.1f}{a:>10.1f}{a / b:>14.2f}   (+{a - b:.1f} commands)")
    b, a = median(cpu["before"]), median(cpu["after"])
    print(f"  {'script us':<12}{b:>10.1f}{a:>10.1f}{a / b:>14.2f}   (Redis CPU per lead, batches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
