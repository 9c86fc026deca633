"""The real-data ladders: every rung that applies, climbed with the embedded model on real data.

Each task lives in ``benchmarks/<name>/task.yaml`` and reads ``../shared/datasets`` (never copied
into the repository): banking77 (77 intents), snips (slot extraction to strict JSON), squad
(questions answered from SQuAD's paragraphs as the knowledge source), gsm8k (numeric answers),
snips-intents (the same SNIPS files as a 7-label task: the classical baseline and constrained labels).
For each, this climbs every rung of its ``rungs.order`` with ``rungwise.climb`` (``all_rungs``),
then writes its table into BENCHMARKS.md (section ``ladder-<name>``): score with its 95% CI,
format-valid rate, tokens per call, examples/s, cost per 1,000 calls, the failures by kind
(behaviour / knowledge), the paired test against the rung below, the rungs that were skipped
and why, and the verdict.

Rerunnable: a climb of the same task config is resumed from the run store (``$RUNGWISE_HOME``), so
only what is missing is generated; a run whose config changed only in rung settings reuses the
stored predictions of every rung whose prompts, model and generation settings are unchanged
(``climb(..., reuse=RUN)``).

    python bench/bench_ladders.py                       # all of them (hours on 2 shared CPU cores)
    python bench/bench_ladders.py squad gsm8k           # some of them
    python bench/bench_ladders.py --skip-finetune       # every rung but those that train weights
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _md import ROOT, machine, today, write_section  # noqa: E402

from rungwise.climb import ClimbResult, climb  # noqa: E402
from rungwise.config.task import Task, load_task  # noqa: E402
from rungwise.evaluate.scores import ScoreSet  # noqa: E402
from rungwise.evaluate.stats import paired_test  # noqa: E402
from rungwise.store import Store  # noqa: E402
from rungwise.types import RungResult  # noqa: E402

LADDERS = ("banking77", "snips", "squad", "gsm8k", "snips-intents")
TITLES = {
    "banking77": "BANKING77, 77 intents",
    "snips": "SNIPS, slot extraction to strict JSON",
    "squad": "SQuAD v1.1 dev, questions answered from its paragraphs",
    "gsm8k": "GSM8K, numeric answers",
    "snips-intents": "SNIPS, seven intents (the classical baseline and constrained labels on a second label task)",
}
_BUDGET = re.compile(r"Time budget[^:]*:\s*(\d+) minutes")


def task_file(name: str) -> Path:
    return ROOT / "benchmarks" / name / "task.yaml"


def budget_minutes(name: str) -> int | None:
    """The time budget the task file states in its header comment."""
    m = _BUDGET.search(" ".join(task_file(name).read_text().split()))
    return int(m.group(1)) if m else None


def _load() -> str:
    """The 1-minute load average (the machine is shared: it explains the speed figures)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


class Printer:
    """Progress on stdout: one line per rung, and every note the climb makes."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def rung_start(self, name: str, total: int, done: int) -> None:
        self.t0 = time.perf_counter()
        print(f"  {name}: {total - done} of {total} to answer (load {_load()})", flush=True)

    def advance(self, n: int) -> None: ...

    def rung_end(self, result: RungResult) -> None:
        m = result.metric
        print(f"  {result.rung}: {m.name} {m.value:.3f} [{m.ci_low:.3f}, {m.ci_high:.3f}] in "
              f"{time.perf_counter() - self.t0:.0f} s", flush=True)

    def note(self, message: str) -> None:
        print(f"  note: {message}", flush=True)


def _runs_of(store: Store, task: Task) -> tuple[int | None, int | None]:
    """The run to resume (same config) and, failing that, the latest run of the task to reuse from."""
    same = other = None
    for row in store.list_climbs(limit=100_000):
        if row["task_name"] != task.name or str(row["task_path"]) != str(task.source_path):
            continue
        if row["config_hash"] == task.config_hash() and same is None:
            same = int(row["id"])
        elif other is None and row["status"] == "done":
            other = int(row["id"])
    return same, other


def climb_ladder(name: str, skip_finetune: bool) -> tuple[Task, ClimbResult, float, list[str]]:
    """Climb (or resume) one ladder; returns the task, the result, the wall seconds and the rungs left out."""
    task = load_task(task_file(name))
    order = list(task.rungs.order)
    left_out = [n for n in order if skip_finetune and task.rungs.rung_class(n).kind.trains_weights]
    rungs = [n for n in order if n not in left_out]
    store = Store()
    same, other = _runs_of(store, task)
    print(f"== {name}: {', '.join(rungs)}" + (f" (resuming run {same})" if same else "")
          + (f" (reusing run {other}'s predictions where unchanged)" if other and not same else ""), flush=True)
    t0 = time.perf_counter()
    result = climb(task, rungs=rungs, all_rungs=True, resume=same or False, reuse=None if same else other,
                   store=store, reporter=Printer())
    return task, result, time.perf_counter() - t0, left_out


def _cost(result: ClimbResult, rung: str) -> str:
    c = next((x for x in result.costs if x.rung == rung), None)
    d = c.best() if c else None
    if c is None or d is None:
        return "—"
    return f"${1000 * d.per_call(c.daily_volume):,.4f} ({d.mode.replace('_', '-')})"


def _p(r: RungResult) -> str:
    c = r.comparison
    if c is None:
        return "—"
    return f"{c.delta:+.3f}, p={c.p_value:.2g}{' *' if c.significant else ''}"


def _scoreset(r: RungResult) -> ScoreSet:
    return ScoreSet(r.metric.name, list(r.scores), list(r.valid), [""] * len(r.scores))


def retrieval_against_prompting(result: ClimbResult, seed: int) -> list[str]:
    """Each retrieving rung against the best prompting rung, paired on the same test examples."""
    prompts = [r for r in result.rungs if r.kind.uses_llm and not (r.kind.retrieves or r.kind.trains_weights)]
    if not prompts:
        return []
    best = max(prompts, key=lambda r: r.metric.value)
    lines = []
    for r in result.rungs:
        if r.kind.retrieves:
            c = paired_test(_scoreset(r), _scoreset(best), a_name=r.rung, b_name=best.rung, seed=seed)
            lines.append(f"| {r.rung} vs {best.rung} | {c.delta:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] | "
                         f"{c.p_value:.2g} ({c.test}) | {'yes' if c.significant else 'no'} |")
    if not lines:
        return []
    return ["Retrieval against the best prompting rung (paired on the same test questions):", "",
            "| comparison | difference [95% CI] | p | significant |", "|---|---|---|---|", *lines, ""]


def render(name: str, task: Task, result: ClimbResult, wall_s: float, left_out: list[str], load: str,
           flags: str = "") -> str:
    """The BENCHMARKS.md section of one ladder."""
    store = Store()
    gen_min = sum(float(store.rung(r.id)["gen_seconds"] or 0) for r in result.rungs if r.id) / 60
    budget = budget_minutes(name)
    metric = result.rungs[0].metric.name if result.rungs else task.metric.name
    out = [
        f"## ladder-{name}: {TITLES[name]}",
        "",
        f"Measured {today()} on {machine()}; torch threads 1; the machine's 2 cores were shared with other jobs "
        f"(load average {load} when this run started). Embedded model `{task.model.describe()}`; run "
        f"{result.run_id} in the run store. `python bench/bench_ladders.py {name}{flags}` (`make bench`).",
        "",
        f"Task `benchmarks/{name}/task.yaml`: {task.description} {result.n_test} test examples"
        + (f" ({result.leakage_dropped} that duplicated train inputs dropped)" if result.leakage_dropped else "")
        + f"; target `{result.target or 'none'}`; metric `{task.metric.name}` with a bootstrap 95% CI; "
        f"{task.economics.daily_volume or 'default'} requests/day for the cost column. Time budget "
        f"{budget if budget is not None else '?'} min (stated in the task file); generation took {gen_min:.0f} min "
        f"over all rungs, this invocation {wall_s / 60:.0f} min (a resumed run only adds what was missing).",
        "",
        f"| rung | kind | {metric} [95% CI] | format-valid | tokens/call in (cached) + out | examples/s | "
        "$ per 1k calls (best deployment) | failures behaviour / knowledge | vs rung below | meets target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rungs:
        m, f = r.metric, r.failures or {}
        out.append(
            f"| {r.rung} | {r.kind.name} | {m.value:.3f} [{m.ci_low:.3f}, {m.ci_high:.3f}] | {r.format_valid_rate:.1%} | "
            f"{r.mean_prompt_tokens:,.0f} ({r.mean_cached_tokens:,.0f}) + {r.mean_completion_tokens:.1f} | "
            f"{r.examples_per_s:.2f} | {_cost(result, r.rung)} | {f.get('behaviour', '—')} / {f.get('knowledge', '—')} | "
            f"{_p(r)} | {'yes' if r.meets_target else 'no'} |"
        )
    out.append("")
    skipped = [n for n in result.notes if " skipped: " in n]
    if skipped or left_out:
        out.append("Not measured:")
        out.append("")
        out += [f"- {n}" for n in skipped]
        out += [f"- {n}: not climbed in this run (`--skip-finetune`)" for n in left_out]
        out.append("")
    notes = [f"- {r.rung}: {n}" for r in result.rungs for n in r.notes]
    if notes:
        out += ["Notes:", "", *notes, ""]
    out += retrieval_against_prompting(result, task.data.seed)
    v = result.verdict
    if v is not None:
        out += [f"**Verdict: {v.headline}**", ""]
        if v.gap:
            out += [f"Gap: {v.gap}", ""]
        reasons = [x for x in v.reasons if not x.startswith(("costs ", "factor:", "the factors alone"))]
        out += ["Reasons:", "", *[f"- {x}" for x in reasons], ""]
        if v.next_steps:
            out += ["Next steps:", "", *[f"- {x}" for x in v.next_steps], ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"ladders to climb: {', '.join(LADDERS)} (default: all)")
    ap.add_argument("--skip-finetune", action="store_true", help="leave out the rungs that train weights")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared machine a second thread mostly waits; see the inference section)")
    ap.add_argument("--no-write", action="store_true", help="print the tables instead of writing BENCHMARKS.md")
    args = ap.parse_args()
    unknown = sorted(set(args.names) - set(LADDERS))
    if unknown:
        ap.error(f"unknown ladder(s) {', '.join(unknown)}; choose from {', '.join(LADDERS)}")
    import torch

    torch.set_num_threads(args.threads)
    for name in args.names or LADDERS:
        load = _load()
        task, result, wall, left_out = climb_ladder(name, args.skip_finetune)
        md = render(name, task, result, wall, left_out, load, " --skip-finetune" if args.skip_finetune else "")
        if args.no_write:
            print(md)
        else:
            write_section(f"ladder-{name}", md)
            print(f"wrote the ladder-{name} section of BENCHMARKS.md", flush=True)


if __name__ == "__main__":
    main()
