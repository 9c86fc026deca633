"""Which prompt should the finetune rung train on? ``minimal`` (the input alone) against ``full``
(the task's instructions + label list), measured on three classification tasks.

For each task and prompt shape: train LoRA with ``rungs.finetune.prompt`` set to the shape
(everything else as the task configures it), then score the tuned model on the task's test split
with the prompt it was trained on and, to show why a rung is only scored with its own shape, with
the other one. Reported: accuracy with a bootstrap 95% CI, the share of answers that are valid
labels, prompt tokens per call, the training plan's time estimate and the measured training time,
and the tokens trained on. Writes the ``finetune-prompt`` section of BENCHMARKS.md.

Tasks (the data stays in ../shared/datasets; nothing is copied into the repository):

- ``sample``: the sample task (``rungwise init``'s ticket-routing template: 212 examples, 4 labels,
  25% test), with its own fine-tune settings (3 epochs, batch 8, lr 4e-4).
- ``banking77``: ``benchmarks/banking77/task.yaml`` (77 labels; the task file's fixed 100-example test slice),
  trained on a stratified subset of the train split (``--banking77-train``; CPU time) for 3
  epochs; ``max_length`` 1024, since the full prompt alone is about 600 tokens.
- ``snips``: SNIPS intent classification (7 intents): ``--snips-train`` examples of the train files
  (a seeded sample that keeps intent shares), scored on 210 of the validate files (30 per intent).

Each (task, shape) result is cached in ``--work``; a re-run adds only what is missing.

    nohup nice -n 10 python bench/finetune_prompt.py > /tmp/ft-prompt.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _md import ROOT, SHARED, machine, today, write_section  # noqa: E402
from banking77_ladder import evaluate  # noqa: E402  (accuracy with CI, valid rate, prompt tokens)

from rungwise.config.task import load_task, task_from_dict  # noqa: E402
from rungwise.data.dataset import load_split  # noqa: E402
from rungwise.data.split import stratified_sample  # noqa: E402
from rungwise.prompting import PromptTemplate  # noqa: E402
from rungwise.train.data import system_prompt_for  # noqa: E402
from rungwise.train.trainer import finetune, load_tuned_backend, plan_training  # noqa: E402

SAMPLE_TASK = ROOT / "src" / "rungwise" / "templates" / "ticket-routing" / "task.yaml"
BANKING77_TASK = ROOT / "benchmarks" / "banking77" / "task.yaml"
SNIPS = SHARED / "datasets" / "snips_nlu_benchmark"
SNIPS_INTENTS = ["AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook", "SearchCreativeWork",
                 "SearchScreeningEvent"]
SHAPES = ("minimal", "full")
TASK_NOTES = {
    "sample": "the sample task (212 examples, 25% test, its own settings: 3 epochs, batch 8, lr 4e-4)",
    "banking77": "BANKING77 (`benchmarks/banking77/task.yaml`, a {args.banking77_train}-example stratified subset of the "
    "train split, 3 epochs, lr 4e-4, max_length 1024; the task file's fixed 100 test examples)",
    "snips": "SNIPS intents (a {args.snips_train}-example stratified sample of the train files, 3 epochs, lr 4e-4; 30 "
    "validate examples per intent)",
}


def _with_finetune(task, overrides: dict):  # noqa: ANN001, ANN202
    raw = task.model_dump(mode="json")
    raw.setdefault("rungs", {})
    raw["rungs"]["finetune"] = {**raw["rungs"].get("finetune", {}), **overrides}
    out = task_from_dict(raw, base_dir=task.base_dir, source=str(task.source_path) if task.source_path else None)
    out.source_path = task.source_path
    return out


def _snips_rows(kind: str) -> list[dict]:
    rows = []
    for intent in SNIPS_INTENTS:
        name = f"train_{intent}_full.json" if kind == "train" else f"validate_{intent}.json"
        # train_PlayMusic_full.json is Latin-1; the others are UTF-8.
        enc = "latin-1" if name == "train_PlayMusic_full.json" else "utf-8"
        data = json.loads((SNIPS / name).read_text(encoding=enc))[intent]
        for i, utt in enumerate(data):
            rows.append({"input": "".join(c["text"] for c in utt["data"]).strip(), "output": intent,
                         "source": f"{name}:{i + 1}"})
    return rows


def task_for(name: str, work: Path, args: argparse.Namespace):  # noqa: ANN201
    """(task, train examples, test examples) of one of the three tasks."""
    if name == "sample":
        task = load_task(SAMPLE_TASK)
        split = load_split(task)
        return task, split.train, split.test
    if name == "banking77":
        task = _with_finetune(load_task(BANKING77_TASK), {"epochs": 3, "learning_rate": 4e-4, "max_length": 1024})
        split = load_split(task)
        return task, stratified_sample(split.train, args.banking77_train, task.data.seed, True), split.test
    # snips: write the two files once into the work folder (outside the repository)
    d = work / "snips-data"
    d.mkdir(parents=True, exist_ok=True)
    for kind in ("train", "test"):
        p = d / f"{kind}.jsonl"
        if not p.exists():
            rows = _snips_rows(kind)
            if kind == "test":  # 30 per intent, seeded
                rng = random.Random(0)
                rows = [r for intent in SNIPS_INTENTS for r in rng.sample([r for r in rows if r["output"] == intent], 30)]
            p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    task = task_from_dict(
        {
            "name": "snips-intents",
            "data": {"train": str(d / "train.jsonl"), "test": str(d / "test.jsonl")},
            "instructions": "You are the intent classifier of a voice assistant. Read the user's request and reply "
            "with the single intent label that describes what the user wants.",
            "labels": SNIPS_INTENTS,
            "metric": "accuracy",
            "model": {"id": "smollm2-135m-instruct", "params": {"max_tokens": 12, "stop": ["\n"]}},
            "rungs": {"finetune": {"epochs": 3, "learning_rate": 4e-4}},
        },
        base_dir=d,
    )
    split = load_split(task)
    return task, stratified_sample(split.train, args.snips_train, 0, True), split.test


def run_one(name: str, shape: str, args: argparse.Namespace, cache: dict) -> dict:
    key = f"{name}/{shape}"
    if key in cache:
        return cache[key]
    task, train, test = task_for(name, args.work, args)
    task = _with_finetune(task, {"prompt": shape, "budget_minutes": None})
    out = args.work / f"ft-{name}-{shape}"
    plan = plan_training(task, train, out)
    print(key, plan.summary(), flush=True)
    res = finetune(task, train, out, progress=False, plan=plan)
    backend = load_tuned_backend(res, task)
    scored = {}
    for s in SHAPES:
        scored[s] = evaluate(backend, task, test, PromptTemplate(system_prompt_for(s, task.instructions, task.labels)))
        print(key, "scored with", s, scored[s], flush=True)
    cache[key] = {
        "task": task.name, "labels": len(task.labels or []), "n_test": len(test), "shape": shape,
        "n_train": res.n_train, "n_val": res.n_val, "epochs": res.epochs_run, "steps": res.steps,
        "train_tokens": res.train_tokens, "computed_tokens": res.computed_tokens, "layout": res.layout,
        "train_seconds": res.train_seconds, "estimated_seconds": plan.estimated_seconds,
        "tokens_per_s": res.tokens_per_s, "best_val_loss": res.best_val_loss, "scored": scored,
        "hyperparameters": res.hyperparameters,
    }
    return cache[key]


def add_run_arguments(ap: argparse.ArgumentParser, work: str) -> None:
    """The options this script shares with bench/finetune_dropout.py: task sizes, work folder, threads."""
    ap.add_argument("--banking77-train", type=int, default=385, help="stratified train subset (5 per label)")
    ap.add_argument("--snips-train", type=int, default=350, help="stratified train subset (50 per intent)")
    ap.add_argument("--work", type=Path, default=Path(work))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared machine a second thread mostly waits for a busy core)")
    ap.add_argument("--no-write", action="store_true")


def open_results(args: argparse.Namespace) -> tuple[Path, dict]:
    """Set torch's threads and read the work folder's results cache (new: with the date, machine and load)."""
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    cache_file = args.work / "results.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    cache.setdefault("_meta", {"date": today(), "machine": machine(), "started": time.time(),
                               "load_start": f"{os.getloadavg()[0]:.1f}"})
    return cache_file, cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", choices=["sample", "banking77", "snips"], default=["sample", "snips", "banking77"])
    add_run_arguments(ap, "/tmp/rungwise-ft-prompt")
    args = ap.parse_args()
    cache_file, cache = open_results(args)
    for name in args.tasks:
        for shape in SHAPES:
            run_one(name, shape, args, cache)
            cache_file.write_text(json.dumps(cache, indent=1))
    cache["_meta"]["load_end"] = f"{os.getloadavg()[0]:.1f}"
    cache_file.write_text(json.dumps(cache, indent=1))
    if not args.no_write:
        write_section("finetune-prompt", _section(cache, args))


def _section(cache: dict, args: argparse.Namespace) -> str:
    meta = cache["_meta"]
    tasks = [n for n in ("sample", "banking77", "snips") if any(f"{n}/{s}" in cache for s in SHAPES)]
    command = "python bench/finetune_prompt.py --tasks " + " ".join(tasks) + (
        f" --banking77-train {args.banking77_train}" if "banking77" in tasks else "") + (
        f" --snips-train {args.snips_train}" if "snips" in tasks else "") + f" --threads {args.threads}"
    rows = []
    for name in ("sample", "banking77", "snips"):
        for shape in SHAPES:
            r = cache.get(f"{name}/{shape}")
            if not r:
                continue
            for s in SHAPES:
                sc = r["scored"][s]
                own = s == shape
                acc = f"{sc['accuracy']:.1%}"
                rows.append(
                    f"| {r['task']} ({r['labels']} labels) | {shape} | {s}{'' if own else ' (not trained on)'} | "
                    f"{'**' + acc + '**' if own else acc} | {sc['ci_low']:.1%} - {sc['ci_high']:.1%} | "
                    f"{sc['format_valid']:.0%} | {sc['mean_prompt_tokens']:.0f} | "
                    + (f"{r['n_train']} x {r['epochs']:g} ep | {r['train_tokens']:,} ({r['computed_tokens']:,}) | "
                       f"{r['estimated_seconds'] / 60:.1f} / {r['train_seconds'] / 60:.1f}" if own else "| | ")
                    + " |"
                )
    return f"""## finetune-prompt: what the finetune rung trains on (minimal vs full prompt)

Measured {meta['date']} on {meta['machine']} (no GPU; 2 cores shared with other jobs, so times are this machine's
under load: load average {meta.get('load_start', '?')} at the start, {meta.get('load_end', '?')} at the end). `{command}`

LoRA (r=16, all linear layers) on the embedded SmolLM2-135M-Instruct, trained with `rungs.finetune.prompt` = minimal
(the input alone: the chat template's default system turn, no instructions, no label list) or full (the task's
instructions + label list, what the prompting rungs send), everything else as the task sets it; scored by generation
on the task's test split, with the prompt it was trained on (bold) and with the other one. Accuracy with a bootstrap
95% CI; "valid" = answers that are one of the labels. Tokens: every token of every example trained on (in brackets:
what the trainer computed, with the shared prompt prefix once per batch). Time: the plan's estimate before training /
the measured wall time of the training, in minutes.

| task | trained on | scored with | accuracy | 95% CI | valid | prompt tokens / call | examples x epochs | tokens trained (computed) | est. / actual min |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Tasks: {"; ".join(TASK_NOTES[n].format(args=args) for n in tasks)}.
"""


if __name__ == "__main__":
    main()
