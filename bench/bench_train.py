"""Benchmark: rungwise's LoRA trainer against TRL's SFTTrainer, same model, data and settings.

Both train LoRA (r=16, alpha=32, dropout 0.05, all linear layers) on the embedded
SmolLM2-135M-Instruct, on the same seeded sample of BANKING77 train examples in the same chat
format (prompt = the model's chat template with a short system prompt, loss on the answer only),
with the same batch size, learning-rate schedule, number of steps and precision (bf16 autocast
over a bf16 frozen base where the CPU has native bf16; fp32 otherwise). TRL runs with its
defaults otherwise (prompt-completion dataset -> completion-only loss), except
``gradient_checkpointing=False`` (rungwise does not checkpoint either).

Each run is a fresh subprocess (so peak RSS is its own); runs alternate rungwise / TRL so that
both see the same machine load. Reported: training tokens/s (non-padding tokens of the examples
trained on / wall time of the training loop), peak RSS, mean train loss of the last steps, and
the held-out loss of each resulting adapter on the same 64 unseen examples, computed by the same
code. Goal: rungwise >= 1.2x TRL's tokens/s at equal loss.

    python bench/bench_train.py              # writes the "train" section of BENCHMARKS.md
    python bench/bench_train.py --n 64 --repeats 1 --no-write   # quick check
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _md import SHARED, machine, today, write_section  # noqa: E402

SYSTEM = "Classify the intent of this online-banking customer message."
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}


def _rows(n: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    path = SHARED / "datasets" / "banking77" / "train.csv"
    if not path.exists():
        sys.exit(f"{path} not found: set RUNGWISE_SHARED to the folder holding datasets/banking77")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    random.Random(seed).shuffle(rows)
    return rows[:n], rows[n : n + n_eval]


def _examples(rows: list[dict]) -> list:
    from rungwise.types import Example

    return [Example(input=r["text"], output=r["category"], label=r["category"]) for r in rows]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- one run (in a subprocess) --------------------------------------------------------------------


def run_rungwise(args: argparse.Namespace, out: Path) -> dict:
    from rungwise.config.task import task_from_dict
    from rungwise.train.trainer import finetune

    rows, _ = _rows(args.n, args.n_eval)
    task = task_from_dict(
        {
            "name": "bench",
            "data": {"path": "unused.jsonl"},
            "model": {"id": "smollm2-135m-instruct"},
            "rungs": {
                "finetune": {
                    **LORA,
                    "learning_rate": args.lr,
                    "batch_size": args.batch_size,
                    "epochs": 1,
                    "max_steps": args.steps,
                    "val_fraction": 0.0,  # no validation: time only training, as TRL below
                    "warmup_ratio": 0.1,
                    "scheduler": "linear",
                    "max_length": 512,
                    "seed": 0,
                }
            },
        }
    )
    res = finetune(task, _examples(rows), out, system_prompt=SYSTEM, progress=False, resume=False)
    losses = [h["train_loss"] for h in res.history]
    return {
        "tokens": res.train_tokens,
        "seconds": res.train_tokens / res.tokens_per_s,
        "tokens_per_s": res.tokens_per_s,
        "steps": res.steps,
        "loss_last": statistics.mean(losses[-8:]),
        "adapter": res.adapter_dir,
        "dtype": res.compute_dtype,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_trl(args: argparse.Namespace, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from rungwise import models
    from rungwise.train.config import FinetuneSpec
    from rungwise.train.data import encode_examples, example_chat
    from rungwise.train.trainer import use_bf16

    rows, _ = _rows(args.n, args.n_eval)
    rm = models.resolve("smollm2-135m-instruct")
    bf16 = use_bf16(FinetuneSpec(), "cpu")
    # The same frozen base as rungwise: bf16 weights where bf16 is native; adapters stay fp32.
    model, tok = models.load_causal_lm(rm, dtype=torch.bfloat16 if bf16 else torch.float32)
    exs = _examples(rows)
    ds = Dataset.from_list(
        [{"prompt": example_chat(e, SYSTEM), "completion": [{"role": "assistant", "content": e.output}]} for e in exs]
    )
    # Tokens trained on, counted exactly as for rungwise (chat template, no padding).
    enc, _ = encode_examples(tok, exs, SYSTEM, 512)
    per_epoch = sum(len(e) for e in enc)
    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):  # noqa: ANN001
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    cfg = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=round(0.1 * args.steps),  # rungwise: warmup_ratio 0.1 of the same steps
        max_steps=args.steps,
        num_train_epochs=1,
        max_length=512,
        bf16=bf16,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=0,
        dataloader_num_workers=0,
        use_cpu=True,
    )
    peft_cfg = LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_cfg,
                         callbacks=[Losses()])
    t0 = time.perf_counter()
    trainer.train()
    secs = time.perf_counter() - t0
    steps = trainer.state.global_step
    seen = steps * args.batch_size
    tokens = round(per_epoch * seen / len(enc))  # fraction of an epoch seen, in tokens
    adapter = out / "adapter"
    trainer.model.save_pretrained(adapter)
    return {
        "tokens": tokens,
        "seconds": secs,
        "tokens_per_s": tokens / secs,
        "steps": steps,
        "loss_last": statistics.mean(losses[-8:]) if losses else float("nan"),
        "adapter": str(adapter),
        "dtype": "bfloat16" if bf16 else "float32",
        "peak_rss_mb": _peak_rss_mb(),
    }


def heldout_loss(adapter: str, n: int, n_eval: int) -> float:
    """Mean answer-token loss of base + adapter on unseen examples (fp32, the same code for both)."""
    import torch
    from peft import PeftModel

    from rungwise import models
    from rungwise.train.data import collate, encode_examples
    from rungwise.train.trainer import _make_loss_module

    _, ev = _rows(n, n_eval)
    model, tok = models.load_causal_lm(models.resolve("smollm2-135m-instruct"))
    model = PeftModel.from_pretrained(model, adapter).eval()
    enc, _ = encode_examples(tok, _examples(ev), SYSTEM, 512)
    lm = _make_loss_module(model)
    tot = n_tok = 0.0
    with torch.no_grad():
        for s in range(0, len(enc), 16):
            loss_sum, k = lm(**collate(enc[s : s + 16], tok.pad_token_id))
            tot += float(loss_sum)
            n_tok += float(k)
    return tot / n_tok


# -- driver ---------------------------------------------------------------------------------------


def _child(kind: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--out", str(out), "--n", str(args.n), "--n-eval", str(args.n_eval),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(args.threads)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{kind} run failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="training examples")
    ap.add_argument("--n-eval", type=int, default=64, help="held-out examples for the loss check")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/rungwise-bench-train"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", choices=["rungwise", "trl"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    if args.child:
        fn = run_rungwise if args.child == "rungwise" else run_trl
        print(json.dumps(fn(args, args.out)))
        return

    try:
        import trl
    except ImportError:
        sys.exit("TRL is not installed: pip install 'rungwise[bench]'")
    runs: dict[str, list[dict]] = {"rungwise": [], "trl": []}
    for r in range(args.repeats):
        for kind in ("rungwise", "trl"):
            res = _child(kind, args, args.work / f"{kind}-{r}")
            print(kind, r, {k: v for k, v in res.items() if k != "adapter"}, flush=True)
            runs[kind].append(res)
    summary = {}
    for kind, rs in runs.items():
        summary[kind] = {
            "tokens_per_s": statistics.median(x["tokens_per_s"] for x in rs),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in rs),
            "loss_last": statistics.mean(x["loss_last"] for x in rs),
            "heldout": heldout_loss(rs[-1]["adapter"], args.n, args.n_eval),
            "seconds": statistics.median(x["seconds"] for x in rs),
            "tokens": rs[-1]["tokens"],
            "dtype": rs[-1]["dtype"],
        }
    ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs["rungwise"], runs["trl"], strict=True)]
    ratio = statistics.median(ratios)
    print(json.dumps({"summary": summary, "ratios": ratios}, indent=1))
    if args.no_write:
        return
    g, t = summary["rungwise"], summary["trl"]
    body = f"""## train: LoRA training throughput, rungwise vs TRL SFTTrainer

Measured {today()} on {machine()}; no GPU (so no MFU). Both: embedded SmolLM2-135M-Instruct, LoRA r={LORA['r']}
alpha={LORA['alpha']} dropout={LORA['dropout']} on all linear layers, {args.n} BANKING77 train examples (seeded sample;
chat template + a one-line system prompt; loss on the answer only), batch {args.batch_size}, {args.steps} steps, lr {args.lr:g}
linear with 10% warmup, {g['dtype']} compute, TRL {trl.__version__} with its defaults otherwise (gradient
checkpointing off, as in rungwise). {args.repeats} alternating runs each, {args.threads} threads, each in a fresh process;
median shown. `python bench/bench_train.py`

| trainer | tokens/s | time (s) | peak RSS (MB) | train loss (last 8 steps) | held-out loss (64 unseen) |
|---|---|---|---|---|---|
| rungwise | {g['tokens_per_s']:.0f} | {g['seconds']:.0f} | {g['peak_rss_mb']:.0f} | {g['loss_last']:.3f} | {g['heldout']:.3f} |
| TRL SFTTrainer | {t['tokens_per_s']:.0f} | {t['seconds']:.0f} | {t['peak_rss_mb']:.0f} | {t['loss_last']:.3f} | {t['heldout']:.3f} |

Throughput ratio rungwise / TRL: **{ratio:.2f}x** (per pair: {', '.join(f'{x:.2f}' for x in ratios)}); goal >= 1.2x at equal loss.
Tokens are the non-padding tokens of the examples trained on ({g['tokens']:,} per run). Where the time goes in rungwise:
the output head (49,152 x 576) is applied only at answer positions, batches are length-grouped, the frozen base
stays in bf16. The train-loss column averages different batches (length-grouped vs random order); the held-out
loss compares the resulting adapters on the same unseen examples. The machine is shared with other jobs (absolute
tokens/s vary with its load); the pairs alternate so both trainers see the same load.
"""
    write_section("train", body)


if __name__ == "__main__":
    main()
