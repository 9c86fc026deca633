"""LoRA dropout 0.05 or none? Training speed and accuracy of the finetune rung, both ways.

PEFT applies LoRA dropout as a separate module in front of every adapted layer, so each forward
pass draws a fresh random mask for the input of each of them: 7 linear layers x 30 blocks = 210
masks per pass on the embedded 135M model. This script measures what that costs and buys:

- **speed**: short training runs (``--speed-steps`` optimizer steps of the sample task) with dropout
  0.05 and 0, alternating, ``--repeats`` each, in this process; tokens per CPU-second (the time
  the process computed, whatever else shares the machine) and per wall-second, medians.
- **accuracy**: the finetune rung's training on the three tasks of ``bench/finetune_prompt.py``
  (the sample task, a BANKING77 subset, a SNIPS subset; minimal prompt, each task's settings),
  once per dropout, scored on each task's test split with a bootstrap 95% CI.

Each (task, dropout) result is cached in ``--work``; a re-run adds only what is missing. Writes
the ``finetune-dropout`` section of BENCHMARKS.md.

    nohup python bench/finetune_dropout.py > /tmp/ft-dropout.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _md import write_section  # noqa: E402
from banking77_ladder import evaluate  # noqa: E402  (accuracy with CI, valid rate, prompt tokens)
from finetune_prompt import TASK_NOTES, _with_finetune, add_run_arguments, open_results, task_for  # noqa: E402

from rungwise.prompting import PromptTemplate  # noqa: E402
from rungwise.train.data import system_prompt_for  # noqa: E402
from rungwise.train.trainer import finetune, load_tuned_backend, plan_training  # noqa: E402

DROPOUTS = (0.05, 0.0)
TASKS = ("sample", "banking77", "snips")


def speed(args: argparse.Namespace) -> dict:
    """Median tokens per CPU-second and per wall-second of short training runs, per dropout."""
    task, train, _ = task_for("sample", args.work, args)
    runs: dict[str, list[tuple[float, float]]] = {str(d): [] for d in DROPOUTS}
    for _ in range(args.repeats):
        for d in DROPOUTS:
            spec_task = _with_finetune(task, {"dropout": d, "max_steps": args.speed_steps, "val_fraction": 0.0,
                                              "budget_minutes": None})
            with tempfile.TemporaryDirectory() as tmp:
                plan = plan_training(spec_task, train, Path(tmp), resume=False)
                cpu, wall = time.process_time(), time.perf_counter()
                res = finetune(spec_task, train, Path(tmp), progress=False, plan=plan)
                runs[str(d)].append((res.computed_tokens / (time.process_time() - cpu),
                                     res.computed_tokens / (time.perf_counter() - wall)))
            print("speed", d, [round(x) for x in runs[str(d)][-1]], flush=True)
    return {d: {"tokens_per_cpu_s": statistics.median(r[0] for r in v), "tokens_per_s": statistics.median(r[1] for r in v),
                "runs": v} for d, v in runs.items()}


def accuracy(name: str, dropout: float, args: argparse.Namespace) -> dict:
    task, train, test = task_for(name, args.work, args)
    task = _with_finetune(task, {"dropout": dropout, "prompt": "minimal", "budget_minutes": None})
    out = args.work / f"ft-{name}-{dropout}"
    plan = plan_training(task, train, out)
    print(name, dropout, plan.summary(), flush=True)
    res = finetune(task, train, out, progress=False, plan=plan)
    scored = evaluate(load_tuned_backend(res, task), task, test,
                      PromptTemplate(system_prompt_for("minimal", task.instructions, task.labels)))
    print(name, dropout, scored, flush=True)
    return {"task": task.name, "labels": len(task.labels or []), "n_test": len(test), "n_train": res.n_train,
            "epochs": res.epochs_run, "computed_tokens": res.computed_tokens, "train_seconds": res.train_seconds,
            "best_val_loss": res.best_val_loss, "scored": scored}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", choices=TASKS, default=list(TASKS))
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--speed-steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    add_run_arguments(ap, "/tmp/rungwise-ft-dropout")
    args = ap.parse_args()
    cache_file, cache = open_results(args)
    todo = [(n, d) for n in args.tasks for d in DROPOUTS if f"{n}/{d}" not in cache]
    if not args.skip_speed and "speed" not in cache:
        cache["speed"] = speed(args)
        cache_file.write_text(json.dumps(cache, indent=1))
    for name, d in todo:
        cache[f"{name}/{d}"] = accuracy(name, d, args)
        cache_file.write_text(json.dumps(cache, indent=1))
    if todo:
        cache["_meta"]["load_end"] = f"{os.getloadavg()[0]:.1f}"
        cache_file.write_text(json.dumps(cache, indent=1))
    if not args.no_write:
        write_section("finetune-dropout", _section(cache, args))


def _section(cache: dict, args: argparse.Namespace) -> str:
    meta = cache["_meta"]
    tasks = [n for n in TASKS if all(f"{n}/{d}" in cache for d in DROPOUTS)]
    rows = []
    for name in tasks:
        for d in DROPOUTS:
            r = cache[f"{name}/{d}"]
            sc = r["scored"]
            rows.append(f"| {r['task']} ({r['labels']} labels) | {d:g} | {r['n_test']} | **{sc['accuracy']:.1%}** | "
                        f"{sc['ci_low']:.1%} - {sc['ci_high']:.1%} | {sc['format_valid']:.0%} | {r['best_val_loss']:.3f} | "
                        f"{r['n_train']} x {r['epochs']:g} | {r['train_seconds'] / 60:.1f} |")
    speed_lines = ""
    if "speed" in cache:
        s, off = cache["speed"]["0.05"], cache["speed"]["0.0"]
        speed_lines = (
            f"Speed ({args.repeats} alternating runs of {args.speed_steps} optimizer steps each on the sample task, "
            f"medians): dropout 0.05 {s['tokens_per_cpu_s']:.0f} computed tokens per CPU-second, none "
            f"{off['tokens_per_cpu_s']:.0f}: **{off['tokens_per_cpu_s'] / s['tokens_per_cpu_s']:.2f}x** "
            f"({off['tokens_per_s'] / s['tokens_per_s']:.2f}x in wall time).\n\n")
    return f"""## finetune-dropout: LoRA dropout 0.05 or none (the finetune rung's default)

Measured {meta['date']} on {meta['machine']} (no GPU; 2 cores shared with other jobs: load average
{meta.get('load_start', '?')} at the start, {meta.get('load_end', '?')} at the end); torch threads {args.threads}.
`python bench/finetune_dropout.py --threads {args.threads}`

PEFT puts a dropout module in front of every adapted layer: 210 random masks per forward pass on the embedded
135M model (7 linear layers x 30 blocks), drawn on the CPU between the matmuls.

{speed_lines}| task | LoRA dropout | test n | accuracy | 95% CI | valid | best val loss | examples x epochs | training min |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Tasks: {"; ".join(TASK_NOTES[n].format(args=args) for n in tasks)}; trained on the minimal prompt and scored with it.
LoRA r=16, alpha 32, all linear layers.
Training minutes are wall time with another benchmark process on the machine's other core.
"""


if __name__ == "__main__":
    main()
