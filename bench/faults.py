"""Benchmark 11: the fault schedule over many seeds (issue 23): figures, not speed.

    python -m bench --only faults                 # 3 seeds of the suite's size
    python -m bench --only faults --quick         # 1 seed
    python -m bench --only faults --long          # 20 seeds of 1,000 leads, 60 s of faults
    python -m bench --only faults --long --seeds 50
    DISPATCHER_FAULT_SEED=123 python -m bench --only faults --seeds 1   # replay one

Each seed is one run of :mod:`dispatcher.devtools.fault_schedule` (its own Redis with
the AOF on, its own simulator, two real workers: the default engine and
``DISPATCHER_ENGINE=threads``), judged by :mod:`dispatcher.devtools.history_check`
from the final history alone. One summary line per seed as it ends, then the table
and the totals. The seeds run one after another (the machine is shared). A seed that
fails prints its whole report, and its worker logs are kept in
``bench/results/faults/seed-N/``.
"""

from __future__ import annotations

import os
import shutil
import time

from bench.common import ROOT, Env, Goal, Section
from dispatcher.devtools.fault_schedule import (
    FAULT_ORDER,
    FAULT_SEED_ENV,
    LONG,
    SUITE,
    FaultRun,
    fault_seed,
    make_schedule,
)
from dispatcher.devtools.history_check import Verdict, check

NAME = "faults"
KEPT = ROOT / "bench" / "results" / "faults"


def run(env: Env, *, quick: bool = False, long: bool = False, seeds: int | None = None) -> Section:
    sizes = LONG if long else SUITE
    count = seeds if seeds is not None else (20 if long else 1 if quick else 3)
    first = fault_seed() if os.environ.get(FAULT_SEED_ENV) else None
    verdicts: list[Verdict] = []
    for n in range(count):
        # A replayed seed first; the others fresh (each printed: each can be replayed).
        seed = first if (first is not None and n == 0) else fault_seed({})
        workdir = env.workdir / f"faults-{seed}"
        history = FaultRun(make_schedule(seed, sizes), workdir).run()
        verdict = check(history)
        verdicts.append(verdict)
        print(f"  {verdict.summary()}", flush=True)
        if not verdict.ok:
            kept = KEPT / f"seed-{seed}"
            shutil.rmtree(kept, ignore_errors=True)
            kept.mkdir(parents=True)
            for path in history.logs.values():
                shutil.copy(path, kept / path.name)
            (kept / "report.txt").write_text(verdict.report() + "\n")
            print(verdict.report(), flush=True)
            print(f"  logs and report kept in {kept}", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return _section(verdicts, long=long)


def _section(verdicts: list[Verdict], *, long: bool) -> Section:
    header = [
        "seed",
        "leads",
        *FAULT_ORDER,
        "lost",
        "duplicated",
        "ambiguous left",
        "fence refusals",
        "look-ups",
        "wall s",
    ]
    rows = []
    totals = dict.fromkeys(["leads", *FAULT_ORDER, "lost", "duplicated", "ambiguous"], 0)
    lapsed = reconciled = 0
    wall = 0.0
    for v in verdicts:
        h = v.history
        events = h.events
        rows.append(
            [
                str(h.seed),
                str(len(h.jobs)),
                *(str(h.faults.get(kind, 0)) for kind in FAULT_ORDER),
                str(v.lost),
                str(v.duplicated),
                str(v.ambiguous_left),
                str(events.get("lead.claim_lapsed", 0)),
                str(events.get("lead.reconciled", 0)),
                f"{h.wall_s:.0f}",
            ]
        )
        totals["leads"] += len(h.jobs)
        for kind in FAULT_ORDER:
            totals[kind] += h.faults.get(kind, 0)
        totals["lost"] += v.lost
        totals["duplicated"] += v.duplicated
        totals["ambiguous"] += v.ambiguous_left
        lapsed += events.get("lead.claim_lapsed", 0)
        reconciled += events.get("lead.reconciled", 0)
        wall += h.wall_s
    rows.append(
        [
            f"total ({len(verdicts)} seeds)",
            str(totals["leads"]),
            *(str(totals[kind]) for kind in FAULT_ORDER),
            str(totals["lost"]),
            str(totals["duplicated"]),
            str(totals["ambiguous"]),
            str(lapsed),
            str(reconciled),
            f"{wall:.0f}",
        ]
    )
    failed = [v for v in verdicts if not v.ok]
    notes = [
        "each row: one seed's run, judged from its final history (job states, dead letters, "
        "the simulator's leads); answer_lost counts leads whose first answer was lost; "
        "fence refusals and look-ups (lead.reconciled) are counted in the workers' logs",
        f"problems: {sum(len(v.problems) for v in failed)} in {len(failed)} seeds"
        + (f" ({', '.join(str(v.history.seed) for v in failed)})" if failed else ""),
    ]
    return Section(
        name=NAME,
        title=f"Fault schedule ({'long' if long else 'suite'} size), {len(verdicts)} seeds",
        header=header,
        rows=rows,
        goals=[
            Goal("leads lost", float(totals["lost"]), 1.0, higher_is_better=False, unit=""),
            Goal("leads added twice", float(totals["duplicated"]), 1.0, False, unit=""),
            Goal("seeds with a problem", float(len(failed)), 1.0, False, unit=""),
        ],
        notes=notes,
        data={
            "seeds": [
                {
                    "seed": v.history.seed,
                    "summary": v.summary(),
                    "leads": len(v.history.jobs),
                    "faults": dict(v.history.faults),
                    "states": dict(v.states),
                    "dead_reasons": dict(v.dead_reasons),
                    "lost": v.lost,
                    "duplicated": v.duplicated,
                    "ambiguous_left": v.ambiguous_left,
                    "ambiguous_in_vicidial": v.ambiguous_in_vicidial,
                    "problems": [p.line() for p in v.problems],
                    "events": dict(v.history.events),
                    "wall_s": round(v.history.wall_s, 1),
                }
                for v in verdicts
            ],
            "finished_at": time.time(),
        },
    )
