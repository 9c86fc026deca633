"""Fine-tuning: LoRA, full and QLoRA with PEFT, in a lean training loop.

Why not HF ``Trainer`` / TRL: on a small model the loop's overheads matter. This loop

- computes the output head only on the answer tokens (the prompt is masked anyway), which skips
  most of the vocabulary projection and its gradient, the largest single matrix of a small model;
- batches by length (or packs examples into one row with position resets and no cross-example
  attention), so almost no compute goes into padding;
- keeps the frozen base in bf16 where the hardware has native bf16 and only the adapters in fp32;
- averages the loss over the answer tokens of the whole global batch, so 1 process or N
  processes (``accelerate launch``, DDP) with the same global batch give the same update.

Checkpoints (trainable weights, optimizer, scheduler step, RNG state) are written at every
validation and on Ctrl-C, so an interrupted run resumes where it stopped and ends with the same
weights as an uninterrupted one.

Example:
    >>> result = finetune(task, split.train, Path("runs/ft"), system_prompt="Route the ticket.")  # doctest: +SKIP
    >>> backend = load_tuned_backend(result, task)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rungwise import __version__ as _rw_version
from rungwise import models
from rungwise._deps import require
from rungwise.config.task import Task
from rungwise.errors import ConfigError, DataError, MissingDependency, Unsupported
from rungwise.train.config import FinetuneSpec
from rungwise.train.data import (
    Encoded,
    collate,
    data_hash,
    encode_examples,
    label_tokens,
    plan_epoch,
    split_validation,
    to_jsonl_records,
    write_jsonl,
)
from rungwise.types import Example

RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"

#: Called after every optimizer step with (step, train_loss); raising KeyboardInterrupt from it
#: stops training the way Ctrl-C does (a checkpoint is written first).
StepCallback = Callable[[int, float], None]


@dataclass
class FinetuneResult:
    """What a fine-tune produced and measured. Saved as ``result.json`` in the output directory."""

    method: str
    out_dir: str
    adapter_dir: str | None  # lora / qlora: PEFT adapter (safetensors)
    model_dir: str | None  # full: the whole model (safetensors)
    base_model_id: str
    base_path: str  # the checkpoint directory trained on
    base_sha256: str | None  # of the GGUF / weights file the base came from, when known
    system_prompt: str
    n_train: int
    n_val: int
    n_skipped: int
    train_tokens: int  # tokens processed in training (all epochs, all processes, no padding)
    epochs_run: float
    steps: int
    best_step: int | None
    best_val_loss: float | None
    final_train_loss: float | None
    train_seconds: float
    tokens_per_s: float
    peak_mem_mb: float
    peak_mem_kind: str  # "cuda_allocated" or "process_rss"
    hyperparameters: dict[str, Any]
    data_hash: str
    device: str
    compute_dtype: str
    world_size: int
    stopped_early: bool = False
    resumed_from_step: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    rungwise_version: str = _rw_version

    @property
    def artifact_dir(self) -> Path:
        return Path(self.adapter_dir or self.model_dir or self.out_dir)

    @property
    def base(self) -> models.ResolvedModel:
        """The base model, resolved again (same id as trained on)."""
        return models.ResolvedModel(self.base_model_id, self.base_path, None, self.base_sha256)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self) -> Path:
        p = Path(self.out_dir) / RESULT_FILE
        _atomic_write(p, json.dumps(self.to_dict(), indent=2))
        return p

    @classmethod
    def load(cls, out_dir: str | Path) -> FinetuneResult:
        """Read ``result.json`` from a fine-tune's output directory."""
        p = Path(out_dir) / RESULT_FILE
        if not p.exists():
            raise DataError(
                f"{out_dir}: no fine-tune result here ({RESULT_FILE} is missing)",
                hint="point at the output directory of a finished fine-tune (it holds result.json and adapter/)",
            )
        d = json.loads(p.read_text())
        d.pop("rungwise_version", None)
        known = {f for f in cls.__dataclass_fields__}
        res = cls(**{k: v for k, v in d.items() if k in known})
        # The directory may have moved since training: re-anchor the artifact paths.
        res.out_dir = str(Path(out_dir))
        if res.adapter_dir:
            res.adapter_dir = str(Path(out_dir) / "adapter")
        if res.model_dir:
            res.model_dir = str(Path(out_dir) / "model")
        return res


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def finetune_spec(task: Task) -> FinetuneSpec:
    """The task's ``rungs.finetune`` settings (defaults when the section is absent)."""
    spec: FinetuneSpec = task.rungs.section("finetune")
    return spec


def use_bf16(spec: FinetuneSpec, device: str) -> bool:
    """Whether to compute in bf16: ``auto`` = where the hardware does bf16 natively."""
    if spec.bf16 != "auto":
        return bool(spec.bf16)
    torch = require("torch")
    return models.pick_dtype("auto", device) == torch.bfloat16


def _peak_mem_mb(device: str) -> tuple[float, str]:
    torch = require("torch")
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_allocated"
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / 2**20 if sys.platform == "darwin" else rss / 1024), "process_rss"


# -- model loading ------------------------------------------------------------------------------


def _load_base(task: Any, spec: FinetuneSpec, device: str, bf16: bool) -> tuple[Any, Any, models.ResolvedModel]:
    torch = require("torch")
    rm = models.resolve(task.model.id, task.model.gguf_file)
    trust = bool(task.model.trust_remote_code)
    if spec.method == "qlora":
        if not device.startswith("cuda"):
            raise Unsupported(
                "method 'qlora' trains over a 4-bit base model and needs a CUDA GPU (bitsandbytes); none is available",
                hint="set rungs.finetune.method: lora (same adapters, full-precision base) on this machine",
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise MissingDependency(
                "method 'qlora' needs the package 'bitsandbytes'", hint="pip install 'rungwise[qlora]'   (bitsandbytes; CUDA machines only)"
            ) from None
        transformers = require("transformers")
        peft = require("peft")
        compute = torch.bfloat16 if bf16 else torch.float16
        qcfg = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        tok = models.load_tokenizer(rm, trust)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            models.checkpoint_dir(rm),
            quantization_config=qcfg,
            dtype=compute,
            device_map={"": device},
            use_safetensors=True,
            trust_remote_code=trust,
        )
        # Casts norms to fp32 and enables input grads, as PEFT's QLoRA recipe requires.
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)
        return model, tok, rm
    # LoRA freezes the base: keep it in bf16 where bf16 is native (half the memory, no per-step
    # casts); the adapters stay fp32. Full fine-tuning keeps fp32 master weights under autocast.
    dtype = torch.bfloat16 if (bf16 and spec.method == "lora") else torch.float32
    model, tok = models.load_causal_lm(rm, dtype=dtype, device=device, trust_remote_code=trust)
    if getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None):
        raise ConfigError(
            f"model {task.model.id!r} is a quantized checkpoint; method {spec.method!r} needs full-precision weights",
            hint="use method: qlora on a CUDA machine, or point model.id at a full-precision checkpoint or a .gguf "
            "file (rungwise converts GGUF to plain weights)",
        )
    return model, tok, rm


def _wrap_peft(model: Any, spec: FinetuneSpec) -> Any:
    if spec.method == "full":
        model.requires_grad_(True)
        return model
    peft = require("peft")
    cfg = peft.LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return peft.get_peft_model(model, cfg)
    except ValueError as exc:
        raise ConfigError(
            f"rungs.finetune.target_modules: {exc}",
            hint="use 'all-linear' or names of linear layers of this model (e.g. q_proj, v_proj)",
        ) from None


# -- the loss -----------------------------------------------------------------------------------


def _make_loss_module(model: Any) -> Any:
    """An nn.Module whose forward returns (sum of answer-token losses, answer tokens).

    It wraps the model so that DDP sees one forward call (gradient hooks work), and it applies
    the output head only at positions whose next token is labelled.
    """
    torch = require("torch")
    F = torch.nn.functional

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = inner.config
    # Models that transform logits after the head (soft-capping, scaling) take the plain path.
    plain = any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    try:
        decoder = inner.get_decoder()
        head = inner.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        decoder = head = None
    if decoder is None or head is None:
        plain = True

    class CompletionLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, labels: Any, attention_mask: Any = None, position_ids: Any = None) -> Any:
            target = labels[:, 1:]
            mask = target != -100
            # use_cache=False matters beyond memory: transformers derives the block-diagonal mask of
            # packed rows from position resets only when no KV cache is passed around.
            kw = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "use_cache": False}
            if plain:
                logits = self.model(**kw).logits[:, :-1][mask]
            else:
                hidden = decoder(**kw).last_hidden_state
                logits = head(hidden[:, :-1][mask])
            loss_sum = F.cross_entropy(logits.float(), target[mask], reduction="sum")
            return loss_sum, mask.sum()

    return CompletionLoss()


# -- checkpoints --------------------------------------------------------------------------------


def _trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().cpu().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: Any, state: dict[str, Any]) -> None:
    torch = require("torch")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def _fingerprint(spec: FinetuneSpec, dhash: str, base: str, world: int) -> str:
    import hashlib

    blob = json.dumps([spec.hyperparameters(), dhash, base, world], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_checkpoint(
    ckpt: Path, model: Any, optimizer: Any, state: dict[str, Any], rng: dict[str, Any], rank: int, is_main: bool, acc: Any
) -> None:
    """Write a resume checkpoint atomically (tmp dir + rename); every rank writes its RNG state."""
    torch = require("torch")
    st = require("safetensors.torch")
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(rng, tmp / f"rng_{rank}.pt")
    if is_main:
        st.save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    acc.wait_for_everyone()
    if is_main:
        if ckpt.exists():
            shutil.rmtree(ckpt)
        os.replace(tmp, ckpt)
    acc.wait_for_everyone()


def _rng_state() -> dict[str, Any]:
    torch = require("torch")
    d: dict[str, Any] = {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate())}
    if torch.cuda.is_available():
        d["cuda"] = torch.cuda.get_rng_state_all()
    return d


def _set_rng_state(d: dict[str, Any]) -> None:
    torch = require("torch")
    torch.set_rng_state(d["torch"])
    s = json.loads(d["python"])
    random.setstate((s[0], tuple(s[1]), s[2]))
    if "cuda" in d and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(d["cuda"])


# -- progress -----------------------------------------------------------------------------------


class _Progress:
    """A rich progress bar with loss, tokens/s and ETA (main process only; a no-op otherwise)."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]fine-tune[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.bar.start()
        self.tid = self.bar.add_task("train", total=total, completed=start, loss="-", val="-", tps="-")

    def update(self, step: int, loss: float | None = None, val: float | None = None, tps: float | None = None) -> None:
        if self.bar is None:
            return
        kw: dict[str, Any] = {"completed": step}
        if loss is not None:
            kw["loss"] = f"{loss:.4f}"
        if val is not None:
            kw["val"] = f"{val:.4f}"
        if tps is not None:
            kw["tps"] = f"{tps:,.0f}"
        self.bar.update(self.tid, **kw)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# -- the loop -----------------------------------------------------------------------------------


def _lr_lambda(spec: FinetuneSpec, total: int) -> Callable[[int], float]:
    warm = int(round(spec.warmup_ratio * total))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if spec.scheduler == "constant" or total <= warm:
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        if spec.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def _make_optimizer(params: list[Any], spec: FinetuneSpec, device: str) -> Any:
    torch = require("torch")
    # Fused AdamW (one kernel for all parameters) exists for CUDA and, since torch 2.4, CPU.
    for kw in ({"fused": True}, {"foreach": True}, {}):
        try:
            return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.999), **kw)
        except (RuntimeError, TypeError, ValueError):
            continue
    raise RuntimeError("cannot build AdamW")  # pragma: no cover


def finetune(
    task: Any,
    train: Sequence[Example],
    out_dir: Path,
    *,
    system_prompt: str,
    progress: bool = True,
    resume: bool = True,
    on_step: StepCallback | None = None,
) -> FinetuneResult:
    """Fine-tune ``task.model`` on ``train`` (the train split only) and save the artifact.

    The settings come from ``task.rungs.finetune`` (:class:`FinetuneSpec`). A validation slice
    carved from ``train`` drives early stopping and picks the best checkpoint. With ``resume``,
    a finished run in ``out_dir`` with the same settings and data is returned as is, and an
    interrupted one continues from its last checkpoint. Runs the same under
    ``accelerate launch --num_processes N`` (DDP); only the main process writes.

    Example:
        >>> res = finetune(task, train, Path("ft"), system_prompt=system_prompt(task.instructions, task.labels))  # doctest: +SKIP
        >>> res.adapter_dir  # doctest: +SKIP
        'ft/adapter'
    """
    torch = require("torch")
    accelerate = require("accelerate")
    spec = finetune_spec(task)
    if not train:
        raise DataError("the train split is empty: nothing to fine-tune on", hint="add training examples")

    t_start = time.perf_counter()
    # cpu=True without CUDA: under `accelerate launch --multi_gpu` / torchrun the processes then
    # form a gloo process group (accelerate's MULTI_CPU) instead of each training alone.
    acc = accelerate.Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())
    device = str(acc.device)
    world, rank, is_main = acc.num_processes, acc.process_index, acc.is_main_process
    dist = str(acc.distributed_type).rsplit(".", 1)[-1]
    if dist in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        # Checkpoints, best-weights selection and the artifact read whole parameters per process;
        # sharded training (FSDP / ZeRO-3) would need gathering at each of those points.
        raise Unsupported(
            f"rungwise's trainer runs data-parallel (DDP) only; the accelerate config asks for {dist}",
            hint="launch with `accelerate launch --multi_gpu` (DDP: LoRA syncs only the small adapters), use "
            "method: qlora to fit a large base on one GPU, or export the data (rungwise export --format sharegpt) "
            "for Axolotl / LLaMA-Factory with FSDP or DeepSpeed (docs/multi-gpu.md)",
        )
    out_dir = Path(out_dir)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    tr, val = split_validation(train, spec.val_fraction, seed=spec.seed, vmin=spec.val_min, vmax=spec.val_max)
    dhash = data_hash(train, system_prompt)
    if resume and (out_dir / RESULT_FILE).exists():
        # Same data, settings and base: the finished run is the answer (a re-run climb is cheap).
        prev = FinetuneResult.load(out_dir)
        same = (prev.data_hash, prev.hyperparameters, prev.base_model_id, prev.world_size) == (
            dhash,
            spec.hyperparameters(),
            task.model.id,
            world,
        )
        if same:
            return prev

    # Fully seeded: adapter init, dropout and batch order depend only on spec.seed (and rank
    # for dropout under DDP, as every DDP setup).
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    bf16 = use_bf16(spec, device)
    base_model, tok, rm = _load_base(task, spec, device, bf16)
    base_path = models.checkpoint_dir(rm)
    fp = _fingerprint(spec, dhash, f"{rm.model_id}@{rm.sha256 or base_path}", world)

    if not resume and is_main:
        for name in (CHECKPOINT_DIR, BEST_DIR, RESULT_FILE, "adapter", "model"):
            p = out_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    acc.wait_for_everyone()

    torch.manual_seed(spec.seed)  # adapter init independent of what loading consumed
    model = _wrap_peft(base_model, spec)
    if spec.gradient_checkpointing and spec.method != "qlora":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.train()

    enc_tr, skipped = encode_examples(tok, tr, system_prompt, spec.max_length)
    enc_val, skipped_val = encode_examples(tok, val, system_prompt, spec.max_length)
    skipped += skipped_val
    if not enc_tr:
        raise DataError(
            f"every training example is longer than max_length={spec.max_length} tokens (prompt alone)",
            hint="raise rungs.finetune.max_length or shorten the instructions",
        )
    lengths = [len(e) for e in enc_tr]
    # The plan must be identical on every process: it depends on the data, seed and sizes only.
    plans: dict[int, list[Any]] = {}

    def plan(epoch: int) -> list[Any]:
        if epoch not in plans:
            plans[epoch] = plan_epoch(
                lengths, batch_size=spec.batch_size, grad_accum=spec.grad_accum, world=world, seed=spec.seed, epoch=epoch
            )
        return plans[epoch]

    spe = len(plan(0))
    if spe == 0:
        raise DataError(
            f"{len(enc_tr)} training examples are fewer than the {spec.grad_accum * world} micro-batches of one step",
            hint="lower grad_accum or the number of processes, or add examples",
        )
    total = spec.max_steps or max(1, math.ceil(spec.epochs * spe))
    if spec.eval_every == "epoch":
        eval_every = spe
    elif spec.eval_every == "auto":
        eval_every = max(1, math.ceil(spe / 2))
    else:
        eval_every = int(spec.eval_every)
    save_every = spec.save_every or eval_every

    loss_mod = _make_loss_module(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(params, spec, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(spec, total))
    # prepare() wraps in DDP under `accelerate launch` (and only moves to the device otherwise).
    # The optimizer is prepared so that its state follows the device; batches are sharded by
    # our own plan, so no dataloader goes through accelerate.
    ddp_mod, optimizer = acc.prepare(loss_mod, optimizer)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    packing = spec.batching == "packing"
    amp_device = "cuda" if device.startswith("cuda") else "cpu"

    def autocast() -> Any:
        # QLoRA included: bitsandbytes computes in its compute dtype, autocast keeps the rest in
        # bf16 (what HF Trainer's bf16=True does over a 4-bit model).
        return torch.autocast(amp_device, dtype=torch.bfloat16, enabled=bf16)

    def to_dev(b: dict[str, Any]) -> dict[str, Any]:
        return {k: (v.to(device) if v is not None else None) for k, v in b.items()}

    def validate() -> float | None:
        if not enc_val:
            return None
        ddp_mod.eval()
        order = sorted(range(len(enc_val)), key=lambda i: len(enc_val[i]))
        mine = order[rank::world]
        tot = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad(), autocast():
            for s in range(0, len(mine), spec.batch_size):
                b = [enc_val[i] for i in mine[s : s + spec.batch_size]]
                loss_sum, n = loss_mod(**to_dev(collate(b, pad_id, packing)))
                tot[0] += loss_sum.double()
                tot[1] += n
        ddp_mod.train()
        tot = acc.reduce(tot, reduction="sum") if world > 1 else tot
        return float(tot[0] / tot[1]) if tot[1] > 0 else None

    ckpt = out_dir / CHECKPOINT_DIR
    state: dict[str, Any] = {
        "fingerprint": fp,
        "step": 0,
        "best_val_loss": None,
        "best_step": None,
        "bad_evals": 0,
        "history": [],
        "train_tokens": 0,
        "train_time": 0.0,
        "stopped_early": False,
    }
    start_rng: dict[str, Any] | None = None
    resumed_from: int | None = None
    if resume and (ckpt / "state.json").exists():
        saved = json.loads((ckpt / "state.json").read_text())
        if saved.get("fingerprint") != fp:
            raise ConfigError(
                f"{ckpt}: a checkpoint from a run with other settings or data is in the way",
                hint="resume with the same task settings, pass --no-resume to start over, or use another output directory",
            )
        st = require("safetensors.torch")
        _load_trainable(model, st.load_file(str(ckpt / "trainable.safetensors")))
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True))
        rng_file = ckpt / f"rng_{rank}.pt"
        start_rng = torch.load(rng_file, weights_only=True) if rng_file.exists() else None
        state = saved
        resumed_from = state["step"]
        # LambdaLR resumes from the step count alone (it is a pure function of it).
        scheduler.last_epoch = state["step"] - 1
        scheduler.step()
    if start_rng is not None:
        _set_rng_state(start_rng)

    bar = _Progress(progress and is_main, total, state["step"])
    step_rng = _rng_state()
    last_loss: float | None = state["history"][-1]["train_loss"] if state["history"] else None

    def checkpoint() -> None:
        _save_checkpoint(ckpt, model, optimizer, state, step_rng, rank, is_main, acc)

    try:
        while state["step"] < total:
            step = state["step"]
            # RNG as of the start of the step: a resumed run replays the step exactly.
            step_rng = _rng_state()
            micro = plan(step // spe)[step % spe]
            flat = [i for acc_step in micro for r_part in acc_step for i in r_part]
            global_labels = label_tokens([enc_tr[i] for i in flat])
            step_tokens = sum(lengths[i] for i in flat)
            t0 = time.perf_counter()
            loss_acc = torch.zeros((), dtype=torch.float64, device=device)
            for a, parts in enumerate(micro):
                batch: list[Encoded] = [enc_tr[i] for i in parts[rank]]
                last = a == len(micro) - 1
                ctx = acc.no_sync(ddp_mod) if (world > 1 and not last) else contextlib.nullcontext()
                with ctx:
                    with autocast():
                        loss_sum, _ = ddp_mod(**to_dev(collate(batch, pad_id, packing)))
                    # Sum over this micro-batch / answer tokens of the whole global batch; DDP
                    # averages gradients over processes, hence the factor `world`.
                    (loss_sum * (world / global_labels)).backward()
                loss_acc += loss_sum.detach().double()
            if spec.max_grad_norm:
                acc.clip_grad_norm_(params, spec.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if world > 1:
                loss_acc = acc.reduce(loss_acc, reduction="sum")
            train_loss = float(loss_acc) / global_labels
            dt = time.perf_counter() - t0
            state["train_time"] += dt
            state["train_tokens"] += step_tokens
            state["step"] = step + 1
            last_loss = train_loss
            entry: dict[str, float] = {"step": step + 1, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0]}
            val_loss = None
            done = state["step"] >= total
            if state["step"] % eval_every == 0 or done:
                val_loss = validate()
                if val_loss is not None:
                    entry["val_loss"] = val_loss
                    best = state["best_val_loss"]
                    if best is None or val_loss < best - 1e-6:
                        state["best_val_loss"], state["best_step"], state["bad_evals"] = val_loss, state["step"], 0
                        if is_main:
                            _save_best(out_dir / BEST_DIR, model)
                    else:
                        state["bad_evals"] += 1
                        if spec.early_stopping_patience and state["bad_evals"] >= spec.early_stopping_patience:
                            state["stopped_early"] = True
            state["history"].append(entry)
            step_rng = _rng_state()
            if (state["step"] % save_every == 0) and not done and not state["stopped_early"]:
                checkpoint()
            bar.update(state["step"], train_loss, val_loss, state["train_tokens"] / max(state["train_time"], 1e-9))
            if on_step is not None:
                on_step(state["step"], train_loss)
            if state["stopped_early"]:
                break
    except KeyboardInterrupt:
        # Save where we are (the last finished step), so that `resume` continues from here.
        checkpoint()
        bar.close()
        raise
    bar.close()

    # The artifact: the best validated weights (the last ones when there was no validation).
    if state["best_step"] is not None and state["best_step"] != state["step"]:
        st = require("safetensors.torch")
        _load_trainable(model, st.load_file(str(out_dir / BEST_DIR / "trainable.safetensors")))
    acc.wait_for_everyone()
    adapter_dir = model_dir = None
    if is_main:
        if spec.method == "full":
            model_dir = out_dir / "model"
            model.save_pretrained(model_dir, safe_serialization=True)
            tok.save_pretrained(model_dir)
        else:
            adapter_dir = out_dir / "adapter"
            model.save_pretrained(adapter_dir, safe_serialization=True)
            tok.save_pretrained(adapter_dir)
        write_jsonl(out_dir / "train.jsonl", to_jsonl_records(tr, system_prompt))
        if val:
            write_jsonl(out_dir / "val.jsonl", to_jsonl_records(val, system_prompt))
    else:
        adapter_dir = None if spec.method == "full" else out_dir / "adapter"
        model_dir = out_dir / "model" if spec.method == "full" else None
    peak, kind = _peak_mem_mb(device)
    result = FinetuneResult(
        method=spec.method,
        out_dir=str(out_dir),
        adapter_dir=str(adapter_dir) if adapter_dir else None,
        model_dir=str(model_dir) if model_dir else None,
        base_model_id=rm.model_id,
        base_path=base_path,
        base_sha256=rm.sha256,
        system_prompt=system_prompt,
        n_train=len(enc_tr),
        n_val=len(enc_val),
        n_skipped=len(skipped),
        train_tokens=state["train_tokens"],
        epochs_run=round(state["step"] / spe, 4),
        steps=state["step"],
        best_step=state["best_step"],
        best_val_loss=state["best_val_loss"],
        final_train_loss=last_loss,
        train_seconds=round(time.perf_counter() - t_start, 3),
        tokens_per_s=round(state["train_tokens"] / max(state["train_time"], 1e-9), 2),
        peak_mem_mb=round(peak, 1),
        peak_mem_kind=kind,
        hyperparameters=spec.hyperparameters(),
        data_hash=dhash,
        device=device,
        compute_dtype="bfloat16" if bf16 else "float32",
        world_size=world,
        stopped_early=state["stopped_early"],
        resumed_from_step=resumed_from,
        history=state["history"],
    )
    if is_main:
        result.save()
        # Training finished: the resume state is no longer needed (the optimizer state of a full
        # fine-tune is twice the model).
        for name in (CHECKPOINT_DIR, BEST_DIR):
            if (out_dir / name).exists():
                shutil.rmtree(out_dir / name)
    acc.wait_for_everyone()
    return result


def _save_best(d: Path, model: Any) -> None:
    st = require("safetensors.torch")
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "trainable.safetensors.tmp"
    st.save_file(_trainable_state(model), str(tmp))
    os.replace(tmp, d / "trainable.safetensors")


# -- using the result ---------------------------------------------------------------------------


def load_tuned_model(result_or_dir: FinetuneResult | str | Path, task: Any, *, merge: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) of a fine-tune, ready for inference: base + adapter (merged into the
    weights by default, so generation costs what the base costs), or the full model.
    Safetensors only; ``trust_remote_code`` only where the task allows it."""
    res = result_or_dir if isinstance(result_or_dir, FinetuneResult) else FinetuneResult.load(result_or_dir)
    if res.model_dir:
        spec = task.model
        device = models.pick_device(spec.device)
        rm = models.ResolvedModel(res.model_dir, res.model_dir)
        return models.load_causal_lm(
            rm, dtype=models.pick_dtype(spec.dtype, device), device=device, trust_remote_code=bool(spec.trust_remote_code)
        )
    return _with_adapter(_base_for(res, task.model), res.adapter_dir, task.model, merge=merge)


def _with_adapter(base_rm: models.ResolvedModel, adapter_dir: Any, spec: Any, *, merge: bool = True) -> tuple[Any, Any]:
    torch = require("torch")
    peft = require("peft")
    device = models.pick_device(spec.device)
    dtype = models.pick_dtype(spec.dtype, device)
    # Merge in fp32, then cast: merging into bf16 weights would round the small LoRA delta.
    model, tok = models.load_causal_lm(
        base_rm, dtype=torch.float32, device=device, trust_remote_code=bool(spec.trust_remote_code)
    )
    model = peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    if merge:
        model = model.merge_and_unload()
    model.to(dtype=dtype)
    model.eval()
    return model, tok


def _base_for(res: FinetuneResult, spec: Any) -> models.ResolvedModel:
    """Resolve the base model again, checking that it is the one the adapter was trained on."""
    rm = models.resolve(res.base_model_id, getattr(spec, "gguf_file", None))
    if res.base_sha256 and rm.sha256 and rm.sha256 != res.base_sha256:
        raise ConfigError(
            f"the adapter in {res.out_dir} was trained on {res.base_model_id}@{res.base_sha256[:12]}, "
            f"but that model now resolves to @{rm.sha256[:12]}",
            hint="load the adapter over the base model it was trained on",
        )
    return rm


def load_tuned_backend(result_or_dir: FinetuneResult | str | Path, task: Any) -> Any:
    """A local backend over the fine-tuned model (same generation path as the other rungs).

    Example:
        >>> backend = load_tuned_backend("runs/ft", task)  # doctest: +SKIP
        >>> backend.generate([[{"role": "user", "content": "hi"}]], task.model.params.to_params())  # doctest: +SKIP
    """
    from rungwise.backends.local import LocalBackend

    res = result_or_dir if isinstance(result_or_dir, FinetuneResult) else FinetuneResult.load(result_or_dir)
    model, tok = load_tuned_model(res, task)
    model_id = f"local:{res.base_model_id}+{res.method}:{Path(res.out_dir).name}"
    return LocalBackend(
        model, tok, model_id=model_id, batch_size=task.model.batch_size, prefix_cache=task.model.prefix_cache
    )


def load_adapter_backend(spec: Any, adapter: str | Path) -> Any:
    """A local backend serving ``spec``'s base model plus a LoRA adapter (for ``rungwise serve
    --adapter``). ``adapter`` is a PEFT adapter directory or a fine-tune's output directory; when
    the fine-tune's record is there, the base model's hash is checked against it.

    Example:
        >>> backend = load_adapter_backend(task.model, "runs/ft/adapter")  # doctest: +SKIP
    """
    from rungwise.backends.local import LocalBackend
    from rungwise.errors import BackendError

    p = Path(adapter).expanduser()
    out_dir = p if (p / RESULT_FILE).exists() else p.parent if (p.parent / RESULT_FILE).exists() else None
    if out_dir is not None:
        res = FinetuneResult.load(out_dir)
        if res.model_dir:
            raise BackendError(
                f"{adapter}: this is a full fine-tune, not an adapter", hint=f"serve it with --model {res.model_dir}"
            )
        base_rm = _base_for(res, spec)
        adapter_dir: Path = Path(res.adapter_dir or p)
    else:
        if not (p / "adapter_config.json").exists():
            raise BackendError(
                f"{adapter}: not a LoRA adapter directory (no adapter_config.json)",
                hint="pass the adapter/ directory of a fine-tune (or the fine-tune's output directory)",
            )
        base_rm = models.resolve(spec.id, spec.gguf_file)
        adapter_dir = p
    model, tok = _with_adapter(base_rm, adapter_dir, spec)
    return LocalBackend(
        model,
        tok,
        model_id=f"local:{base_rm.display}+lora:{adapter_dir.resolve().parent.name}",
        batch_size=spec.batch_size,
        prefix_cache=spec.prefix_cache,
    )
