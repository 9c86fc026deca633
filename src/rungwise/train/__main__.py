"""``python -m rungwise.train TASK --out DIR``: fine-tune a task's model on its train split.

This is the entry point for several processes::

    accelerate launch --multi_gpu --num_processes 2 -m rungwise.train task.yaml --out runs/ft  # DDP
    accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 -m rungwise.train task.yaml --out runs/ft  # FSDP2
    accelerate launch --config_file fsdp.yaml -m rungwise.train task.yaml --out runs/ft  # see docs/multi-gpu.md

Every process loads the same split; the trainer shards the batches itself and only the main
process writes the artifact. ``rungwise train`` runs the same code in one process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(
    task_path: str, out: Path, *, resume: bool = True, progress: bool = True, max_steps: int | None = None,
    plan_only: bool = False,
) -> int:
    """Load the task, split it, print the training plan, fine-tune on the train split (on the prompt
    shape of ``rungs.finetune.prompt``); print a one-line summary. Returns 0. ``plan_only`` stops
    after the plan (and its budget check): what a training would take, known in seconds."""
    from rungwise.config.task import load_task
    from rungwise.data.dataset import load_split
    from rungwise.train.trainer import finetune, plan_training

    task = load_task(task_path)
    if max_steps is not None:
        task.rungs.section("finetune").max_steps = max_steps
    split = load_split(task)
    plan = plan_training(task, split.train, out, resume=resume)
    if plan.world_size == 1 or _is_main():
        print(plan.summary(), flush=True)
    if plan_only:
        plan.check_budget()
        return 0
    res = finetune(task, split.train, out, progress=progress, resume=resume, plan=plan)
    if res.world_size == 1 or _is_main():
        best = f", best val loss {res.best_val_loss:.4f} at step {res.best_step}" if res.best_val_loss is not None else ""
        print(
            f"fine-tuned {res.base_model_id} ({res.method}) on {res.n_train} examples: {res.steps} steps, "
            f"{res.tokens_per_s:,.0f} tokens/s{best} -> {res.artifact_dir}"
        )
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    from rungwise.errors import RungwiseError

    ap = argparse.ArgumentParser(prog="python -m rungwise.train", description=__doc__.split("\n")[0])
    ap.add_argument("task", help="task.yaml (or its directory)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (adapter, checkpoints, result.json)")
    ap.add_argument("--no-resume", action="store_true", help="start over instead of resuming a checkpoint in --out")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--max-steps", type=int, default=None, help="override rungs.finetune.max_steps")
    ap.add_argument("--plan", action="store_true", help="print the training plan (measured estimate) and stop")
    args = ap.parse_args(argv)
    try:
        return run(args.task, args.out, resume=not args.no_resume, progress=not args.no_progress, max_steps=args.max_steps,
                   plan_only=args.plan)
    except RungwiseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
