"""Benchmark: rungwise's LoRA trainer against TRL's SFTTrainer, same model, data and settings,
on two data shapes, measured in the same run.

- ``sample``: the sample task (``rungwise init``'s ticket-routing template) as a fine-tune on its
  full prompt sees it: a long system prompt (instructions + label list) shared by every example,
  short inputs, one-word answers. Goal: rungwise >= 3x TRL's tokens/s.
- ``banking77``: BANKING77 train examples on the minimal prompt (the input alone; the chat
  template's default system turn is still shared). Goal: >= 2x.

Both trainers: embedded SmolLM2-135M-Instruct, LoRA r=16 alpha=32 dropout 0.05 on all linear
layers, the same examples in the same chat format (the model's chat template; loss on the answer
only), the same batch size, steps, learning-rate schedule and precision (bf16 autocast over a bf16
frozen base where the CPU has native bf16). TRL runs with its defaults otherwise
(prompt-completion dataset -> completion-only loss; gradient checkpointing off, as in rungwise).
rungwise runs with its defaults (shared prefix auto, length-grouped batches, head on answers).

Each run is a fresh subprocess (so peak RSS is its own); runs alternate rungwise / TRL so that
both see the same machine load. Reported per shape: tokens/s (every token of every example
trained on, counted the same way for both, over the wall time of the training loop), the ratio,
peak RSS, and the held-out loss of each resulting adapter on the same unseen examples, computed by
the same code (the equal-loss check). MFU: the model FLOPs the examples need (forward and backward
through the frozen base and the adapters for every token, attention over each example's own
context, the output head at the answer tokens) per second, over the bf16 (or fp32) matmul peak of
this CPU measured in the same run with the same thread count.

    python bench/bench_train.py              # writes the "train" section of BENCHMARKS.md
    python bench/bench_train.py --shapes sample --repeats 1 --no-write   # quick check
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
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
from _md import ROOT, SHARED, machine, write_section  # noqa: E402

LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
SAMPLE_TASK = ROOT / "src" / "rungwise" / "templates" / "ticket-routing" / "task.yaml"
#: Per shape: train examples, held-out examples, steps, what the shape is.
SHAPES = {
    "sample": {"n": 160, "n_eval": 52, "steps": 12, "what": "sample task, full prompt"},
    "banking77": {"n": 256, "n_eval": 64, "steps": 24, "what": "BANKING77, minimal prompt"},
}
GOALS = {"sample": 3.0, "banking77": 2.0}


def shape_data(shape: str, n: int, n_eval: int) -> tuple[list, list, str]:
    """(train examples, held-out examples, system prompt) of a data shape."""
    from rungwise.types import Example

    if shape == "sample":
        from rungwise.config.task import load_task
        from rungwise.data.dataset import load_split
        from rungwise.prompting import system_prompt

        task = load_task(SAMPLE_TASK)
        split = load_split(task)
        return split.train[:n], split.test[:n_eval], system_prompt(task.instructions, task.labels)
    path = SHARED / "datasets" / "banking77" / "train.csv"
    if not path.exists():
        sys.exit(f"{path} not found: set RUNGWISE_SHARED to the folder holding datasets/banking77")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    random.Random(0).shuffle(rows)
    exs = [Example(input=r["text"], output=r["category"], label=r["category"]) for r in rows[: n + n_eval]]
    return exs[:n], exs[n:], ""


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- one run (in a subprocess) --------------------------------------------------------------------


def run_rungwise(args: argparse.Namespace, out: Path) -> dict:
    from rungwise.config.task import task_from_dict
    from rungwise.train.trainer import finetune, plan_training

    train, _, system = shape_data(args.shape, args.n, args.n_eval)
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
                    "budget_minutes": None,
                }
            },
        }
    )
    plan = plan_training(task, train, out, system_prompt=system, resume=False)
    cpu0 = time.process_time()
    res = finetune(task, train, out, system_prompt=system, progress=False, resume=False, plan=plan)
    cpu = time.process_time() - cpu0
    losses = [h["train_loss"] for h in res.history]
    return {
        "tokens": res.train_tokens,
        "cpu_seconds": cpu,
        "tokens_per_cpu_s": res.train_tokens / cpu,
        "computed_tokens": res.computed_tokens,
        "layout": res.layout,
        "seconds": res.train_tokens / res.tokens_per_s,
        "estimated_seconds": res.estimated_seconds,
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

    train, _, system = shape_data(args.shape, args.n, args.n_eval)
    rm = models.resolve("smollm2-135m-instruct")
    bf16 = use_bf16(FinetuneSpec(), "cpu")
    # The same frozen base as rungwise: bf16 weights where bf16 is native; adapters stay fp32.
    model, tok = models.load_causal_lm(rm, dtype=torch.bfloat16 if bf16 else torch.float32)
    ds = Dataset.from_list(
        [{"prompt": example_chat(e, system), "completion": [{"role": "assistant", "content": e.output}]} for e in train]
    )
    # Tokens trained on, counted exactly as for rungwise (chat template, no padding).
    enc, _ = encode_examples(tok, train, system, 512)
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
    t0, cpu0 = time.perf_counter(), time.process_time()
    trainer.train()
    secs, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    steps = trainer.state.global_step
    seen = steps * args.batch_size
    tokens = round(per_epoch * seen / len(enc))  # fraction of an epoch seen, in tokens
    adapter = out / "adapter"
    trainer.model.save_pretrained(adapter)
    return {
        "tokens": tokens,
        "cpu_seconds": cpu,
        "tokens_per_cpu_s": tokens / cpu,
        "seconds": secs,
        "tokens_per_s": tokens / secs,
        "steps": steps,
        "loss_last": statistics.mean(losses[-8:]) if losses else float("nan"),
        "adapter": str(adapter),
        "dtype": "bfloat16" if bf16 else "float32",
        "peak_rss_mb": _peak_rss_mb(),
    }


def matmul_peak(dtype_name: str) -> dict:
    """This CPU's best matmul rate (FLOP per CPU-second: the runs' MFU divides by their CPU time too, so
    other jobs holding the core lower neither) with the current thread count, over a few shapes: the
    model's own ([tokens x 576] @ [576 x 1536]) and large squares."""
    import torch

    dtype = getattr(torch, dtype_name)
    best = 0.0
    for m, k, n in ((2048, 576, 1536), (2048, 1536, 576), (2048, 2048, 2048), (4096, 4096, 4096)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b  # warm-up
        reps, t0 = 0, time.process_time()
        while time.process_time() - t0 < 1.0:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.process_time() - t0))
    return {"flops": best, "dtype": dtype_name, "threads": torch.get_num_threads()}


def model_flops_per_example_token(shape: str, n: int, n_eval: int) -> float:
    """Model FLOPs per example token of this data (see the module docstring): per token,
    4 x (frozen linear params) [forward + input gradients] + 6 x (LoRA params) [+ weight gradients]
    + 12 x layers x hidden x (its position in its example) [attention scores and values, forward
    and backward]; per answer token, 4 x vocab x hidden for the output head."""
    from transformers import AutoConfig

    from rungwise import models
    from rungwise.train.data import encode_examples

    rm = models.resolve("smollm2-135m-instruct")
    path = models.checkpoint_dir(rm)
    cfg = AutoConfig.from_pretrained(path)
    d, inter, layers, heads, kv = (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
                                   cfg.num_attention_heads, cfg.num_key_value_heads)
    hd = d // heads
    shapes = [(d, d), (d, kv * hd), (d, kv * hd), (d, d), (d, inter), (d, inter), (inter, d)]  # q k v o gate up down
    n_lin = layers * sum(i * o for i, o in shapes)
    n_lora = layers * sum(LORA["r"] * (i + o) for i, o in shapes)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    train, _, system = shape_data(shape, n, n_eval)
    enc, _ = encode_examples(tok, train, system, 512)
    total = 0.0
    tokens = 0
    for e in enc:
        L = len(e)
        tokens += L
        total += L * (4 * n_lin + 6 * n_lora) + 12 * layers * d * L * (L + 1) / 2 + 4 * cfg.vocab_size * d * e.n_label_tokens
    return total / tokens


def heldout_loss(shape: str, adapter: str, n: int, n_eval: int) -> float:
    """Mean answer-token loss of base + adapter on unseen examples (fp32, the same code for both)."""
    import torch
    from peft import PeftModel

    from rungwise import models
    from rungwise.train.data import collate, encode_examples
    from rungwise.train.trainer import _make_loss_module

    _, ev, system = shape_data(shape, n, n_eval)
    model, tok = models.load_causal_lm(models.resolve("smollm2-135m-instruct"))
    model = PeftModel.from_pretrained(model, adapter).eval()
    enc, _ = encode_examples(tok, ev, system, 512)
    lm = _make_loss_module(model)
    tot = n_tok = 0.0
    with torch.no_grad():
        for s in range(0, len(enc), 16):
            loss_sum, k = lm(**collate(enc[s : s + 16], tok.pad_token_id))
            tot += float(loss_sum)
            n_tok += float(k)
    return tot / n_tok


# -- driver ---------------------------------------------------------------------------------------


def _child(kind: str, shape: str, args: argparse.Namespace, out: Path) -> dict:
    s = SHAPES[shape]
    cmd = [sys.executable, __file__, "--child", kind, "--shape", shape, "--out", str(out), "--n", str(s["n"]),
           "--n-eval", str(s["n_eval"]), "--steps", str(s["steps"]), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(args.threads)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{kind} {shape} run failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _load_avg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["sample", "banking77"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per run (1: on a shared machine a second thread mostly waits for a busy core)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/rungwise-bench-train"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--write-only", action="store_true", help="write the section from the last run's saved results")
    # one run, in a child process
    ap.add_argument("--child", choices=["rungwise", "trl", "peak"])
    ap.add_argument("--shape", choices=sorted(SHAPES))
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], help="the peak child's matmul dtype")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--n", type=int)
    ap.add_argument("--n-eval", type=int)
    ap.add_argument("--steps", type=int)
    args = ap.parse_args()

    if args.child:
        if args.child == "peak":
            print(json.dumps(matmul_peak(args.dtype)))
            return
        fn = run_rungwise if args.child == "rungwise" else run_trl
        print(json.dumps(fn(args, args.out)))
        return

    try:
        import trl
    except ImportError:
        sys.exit("TRL is not installed: pip install 'rungwise[bench]'")
    saved = args.work / "results.json"
    if args.write_only:
        d = json.loads(saved.read_text())
        write_section("train", _section(argparse.Namespace(**d["args"]), d["results"], d["peak"], d["trl"], d["t_start"],
                                        d["load_start"], d["load_end"], d["minutes"], d.get("note", "")))
        return
    t_start, load_start = time.time(), _load_avg()
    results: dict[str, dict] = {}
    for shape in args.shapes:
        runs: dict[str, list[dict]] = {"rungwise": [], "trl": []}
        for r in range(args.repeats):
            for kind in ("rungwise", "trl"):
                res = _child(kind, shape, args, args.work / f"{shape}-{kind}-{r}")
                print(shape, kind, r, {k: v for k, v in res.items() if k != "adapter"}, flush=True)
                runs[kind].append(res)
        s = SHAPES[shape]
        summary = {}
        for kind, rs in runs.items():
            summary[kind] = {
                "tokens_per_s": statistics.median(x["tokens_per_s"] for x in rs),
                "tokens_per_cpu_s": statistics.median(x["tokens_per_cpu_s"] for x in rs),
                "peak_rss_mb": max(x["peak_rss_mb"] for x in rs),
                "loss_last": statistics.mean(x["loss_last"] for x in rs),
                "heldout": heldout_loss(shape, rs[-1]["adapter"], s["n"], s["n_eval"]),
                "seconds": statistics.median(x["seconds"] for x in rs),
                "tokens": rs[-1]["tokens"],
                "dtype": rs[-1]["dtype"],
                **({"computed_tokens": rs[-1]["computed_tokens"], "layout": rs[-1]["layout"],
                    "estimated_seconds": statistics.median(x["estimated_seconds"] for x in rs)} if kind == "rungwise" else {}),
            }
        pairs = list(zip(runs["rungwise"], runs["trl"], strict=True))
        ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs]
        cpu_ratios = [a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"] for a, b in pairs]
        results[shape] = {"summary": summary, "ratios": ratios, "ratio": statistics.median(ratios),
                          "cpu_ratios": cpu_ratios, "cpu_ratio": statistics.median(cpu_ratios),
                          "flops_per_token": model_flops_per_example_token(shape, s["n"], s["n_eval"])}
        print(json.dumps(results[shape], indent=1), flush=True)
    # Saved before the peak is measured, so that a failure there keeps the training runs.
    keep = {k: v for k, v in vars(args).items() if k in ("batch_size", "lr", "repeats", "threads")}
    saved.write_text(json.dumps({"args": keep, "results": results}, indent=1))
    dtype = next(iter(results.values()))["summary"]["rungwise"]["dtype"]
    peak_env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    p = subprocess.run([sys.executable, __file__, "--child", "peak", "--dtype", dtype], capture_output=True, text=True,
                       env=peak_env, check=True)
    peak = json.loads(p.stdout.strip().splitlines()[-1])
    print("matmul peak", peak, flush=True)
    minutes = (time.time() - t_start) / 60
    saved.write_text(json.dumps({"args": keep, "results": results, "peak": peak, "trl": trl.__version__, "t_start": t_start,
                                 "load_start": load_start, "load_end": _load_avg(), "minutes": minutes}, indent=1))
    if args.no_write:
        return
    write_section("train", _section(args, results, peak, trl.__version__, t_start, load_start, _load_avg(), minutes))


def _section(args: argparse.Namespace, results: dict, peak: dict, trl_version: str, t_start: float, load_start: str,
             load_end: str, minutes: float, extra_note: str = "") -> str:
    rows = []
    notes = []
    for shape, r in results.items():
        s, g, t = SHAPES[shape], r["summary"]["rungwise"], r["summary"]["trl"]
        # MFU on CPU time: the work one core did while it ran this trainer (wall time on a shared machine
        # also counts the time other jobs held the core), over the tokens each trainer computed (rungwise
        # computes a shared prompt prefix once per batch: counting every example token would pass 100%).
        computed = {"rungwise": g["computed_tokens"] / g["tokens"], "trl": 1.0}
        mfu = {k: r["summary"][k]["tokens_per_cpu_s"] * computed[k] * r["flops_per_token"] / peak["flops"]
               for k in ("rungwise", "trl")}
        goal = GOALS[shape]
        for kind, name in (("rungwise", "rungwise"), ("trl", "TRL SFTTrainer")):
            x = r["summary"][kind]
            if kind == "rungwise":
                cpu = f"**{r['cpu_ratio']:.2f}x** ({', '.join(f'{v:.2f}' for v in r['cpu_ratios'])})"
                wall = f"{r['ratio']:.2f}x ({', '.join(f'{v:.2f}' for v in r['ratios'])})"
            else:
                cpu = wall = "1.00x"
            rows.append(
                f"| {s['what']} | {name} | {x['tokens_per_cpu_s']:.0f} | {cpu} | {x['tokens_per_s']:.0f} | {wall} | "
                f"{x['seconds']:.0f} | {x['peak_rss_mb']:.0f} | {x['heldout']:.3f} | {mfu[kind]:.1%} |"
            )
        met = "met" if r["cpu_ratio"] >= goal else "**not met**"
        notes.append(
            f"- {s['what']}: goal >= {goal:g}x TRL: {met} ({r['cpu_ratio']:.2f}x per CPU-second, {r['ratio']:.2f}x in wall "
            f"time). {s['n']} train examples, {s['steps']} steps, {g['tokens']:,} example tokens per run; rungwise computed "
            f"{g['computed_tokens']:,} of them ({g['layout']} layout) and estimated its time at {g['estimated_seconds']:.0f} s "
            f"before starting (took {g['seconds']:.0f} s). Held-out loss on {s['n_eval']} unseen examples: rungwise "
            f"{g['heldout']:.3f}, TRL {t['heldout']:.3f}. Model FLOPs per example token: {r['flops_per_token'] / 1e9:.2f} GFLOP."
        )
    dtype = results[next(iter(results))]["summary"]["rungwise"]["dtype"]
    base = "the frozen base stays in bf16" if dtype == "bfloat16" else (
        f"the compute is {dtype} (this CPU has no native bf16, so both trainers run {dtype})")
    note = f"\n\n{extra_note}" if extra_note else ""
    return f"""## train: LoRA training throughput, rungwise vs TRL SFTTrainer

Measured {_dt.date.fromtimestamp(t_start).isoformat()} on {machine()}; 2 cores shared with other jobs (load average
{load_start} at the start, {load_end} at the end; whole run {minutes:.0f} min). No GPU. Both: embedded SmolLM2-135M-Instruct, LoRA r={LORA['r']}
alpha={LORA['alpha']} dropout={LORA['dropout']} on all linear layers, chat template, loss on the answer only, batch
{args.batch_size}, lr {args.lr:g} linear with 10% warmup, {dtype} compute,
TRL {trl_version} with its defaults otherwise (gradient checkpointing off, as in rungwise). {args.repeats} alternating runs
per trainer and shape, {args.threads} torch thread(s), each in a fresh process; median shown. `python bench/bench_train.py`

| data | trainer | tokens / CPU-s | ratio (pairs) | tokens/s (wall) | ratio (pairs) | time (s) | peak RSS (MB) | held-out loss | MFU |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{chr(10).join(notes)}

Tokens are every token of every example trained on (the same count for both trainers). Each run uses one torch thread
(with OMP_WAIT_POLICY=PASSIVE), so its CPU time is the time one core computed for it: tokens per CPU-second is what an
idle core would give, while wall-time tokens/s also counts the time other jobs held the core (the ratios are per
alternating pair; the load changed during the run, which moves the wall-time pairs). MFU = model FLOPs of the tokens each
trainer computed (rungwise: the computed count above; TRL: every token) per CPU-second (frozen-base forward
and input gradients, adapters with weight gradients, causal attention over each example's own tokens, the output head
at the answer tokens) over the {peak['dtype']} matmul peak of this CPU measured in the same run with {peak['threads']}
thread(s), per CPU-second: {peak['flops'] / 1e9:.0f} GFLOP/s. Where rungwise's time goes: the shared system prompt is computed once per
batch (the "shared prefix" layout: one row, each example attending to the prefix and to itself; the same loss and
gradients, a test checks both), the output head (49,152 x 576) runs only at answer positions, batches are length-grouped,
{base}.{note}
"""


if __name__ == "__main__":
    main()
