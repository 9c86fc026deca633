"""Fine-tuning: LoRA, full and QLoRA with PEFT, in a lean training loop.

Why not HF ``Trainer`` / TRL: on a small model the loop's overheads matter. This loop

- computes the output head only on the answer tokens (the prompt is masked anyway), which skips
  most of the vocabulary projection and its gradient, the largest single matrix of a small model;
- computes the prompt prefix that a batch's examples share (system prompt, label list) once per
  batch, not once per example (``shared_prefix``; the same loss and gradients, see
  :func:`rungwise.train.data.collate`);
- batches by length (or packs examples into one row with position resets and no cross-example
  attention), so almost no compute goes into padding;
- keeps the frozen base in bf16 where the hardware has native bf16 and only the adapters in fp32;
- averages the loss over the answer tokens of the whole global batch, so 1 process or N
  processes (``accelerate launch``, DDP) with the same global batch give the same update.

A run reads top to bottom: :func:`plan_training` = ``_setup`` (accelerator, data, model,
optimizer, resume state) + a measured warm-up that estimates the wall time; :func:`finetune` =
the plan, its budget check, ``_train`` (the loop: one optimizer step, then validation and
checkpoints at their intervals) and ``_finish`` (best weights, artifact, ``result.json``).

Checkpoints (trainable weights, optimizer, step, RNG state) are written at every validation and
on Ctrl-C, so an interrupted run resumes where it stopped and ends with the same weights as an
uninterrupted one.

Under ``accelerate launch --use_fsdp --fsdp_version 2`` the model is sharded (FSDP2): the same
loop runs, checkpoints and the best weights are written as every process's slices, and the
artifact is gathered into the same ``adapter/`` or ``model/`` a single process writes
(:mod:`rungwise.train.sharding`).

Example:
    >>> plan = plan_training(task, split.train, Path("runs/ft"))  # doctest: +SKIP
    >>> print(plan.summary())  # doctest: +SKIP
    >>> result = finetune(task, split.train, Path("runs/ft"), plan=plan)  # doctest: +SKIP
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
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rungwise import __version__ as _rw_version
from rungwise import models
from rungwise._deps import require
from rungwise.errors import ConfigError, DataError, MissingDependency, Unsupported
from rungwise.train import sharding
from rungwise.train.config import FinetuneSpec, finetune_spec
from rungwise.train.data import (
    Encoded,
    Layout,
    Step,
    collate,
    computed_tokens,
    data_hash,
    encode_examples,
    label_tokens,
    plan_epoch,
    shared_prefix_length,
    split_validation,
    system_prompt_for,
    to_jsonl_records,
    write_jsonl,
)
from rungwise.train.plan import TrainingPlan
from rungwise.types import Example

RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"
#: Inside a checkpoint or best/ of a sharded (FSDP2) run: every process's slices (DCP's format).
SHARDED_DIR = "sharded"
#: The prefix of the model's parameter names inside the loss module (its attribute ``model``).
_WRAPPED = "model."

#: ``shared_prefix: auto`` turns on when every training example starts with this many common tokens.
SHARED_PREFIX_MIN_TOKENS = 16
#: Attention implementations that take a custom 4-D mask (the shared-prefix layout needs one).
_MASKABLE_ATTENTION = ("sdpa", "eager")

#: Called after every optimizer step with (step, train_loss); raising KeyboardInterrupt from it
#: stops training the way Ctrl-C does (a checkpoint is written first).
StepCallback = Callable[[int, float], None]

__all__ = [
    "FinetuneResult",
    "finetune",
    "finetune_spec",
    "load_adapter_backend",
    "load_tuned_backend",
    "load_tuned_model",
    "plan_training",
    "use_bf16",
]


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
    train_tokens: int  # tokens of the examples trained on (all epochs, all processes, no padding)
    epochs_run: float
    steps: int
    best_step: int | None
    best_val_loss: float | None
    final_train_loss: float | None
    train_seconds: float  # wall time, setup included, summed over the invocations of a resumed run
    tokens_per_s: float  # train_tokens / time in the training steps
    peak_mem_mb: float
    peak_mem_kind: str  # "cuda_allocated" or "process_rss"
    hyperparameters: dict[str, Any]
    data_hash: str
    device: str
    compute_dtype: str
    world_size: int
    sharded: bool = False  # FSDP2: the weights were split over the processes while training
    stopped_early: bool = False
    resumed_from_step: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    prompt: str = "custom"  # the prompt shape trained on: minimal | full | custom (a caller's own system prompt)
    layout: str = "padded"  # padded | packed | shared_prefix
    computed_tokens: int = 0  # tokens the model computed (a shared prefix once per batch, padding included)
    estimated_seconds: float | None = None  # the plan's estimate, to compare with train_seconds
    n_available: int | None = None  # train split examples before max_train_examples
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
        known = {f.name for f in fields(cls)}
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


@contextlib.contextmanager
def peft_reads_deprecated_alias() -> Iterator[None]:
    """Hide the one FutureWarning PEFT causes when it wraps a transformers 5 model.

    ``PeftModel.__init__`` (PEFT <= 0.21.2, also on its main branch) reads
    ``getattr(model, "is_gradient_checkpointing", True)``, an alias transformers 5 deprecated in
    favour of ``is_activation_checkpointing``; the read is PEFT's and its value is right, so the
    user can do nothing about the warning. Only that message, only around the wrap.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


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
        # Casts norms to fp32 and freezes the base, as PEFT's QLoRA recipe requires. Activation
        # checkpointing is turned on later, the same way for every method (_enable_checkpointing).
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
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
        with peft_reads_deprecated_alias():
            return peft.get_peft_model(model, cfg)
    except ValueError as exc:
        raise ConfigError(
            f"rungs.finetune.target_modules: {exc}",
            hint="use 'all-linear' or names of linear layers of this model (e.g. q_proj, v_proj)",
        ) from None


def _enable_checkpointing(model: Any) -> None:
    """Activation checkpointing, non-reentrant (no input-grad hooks needed for correctness, but
    harmless), through transformers 5's name for it where it exists."""
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers < 5.x: the older name
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def _attention_implementation(model: Any) -> str | None:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner.config, "_attn_implementation", None)


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
    except (AttributeError, NotImplementedError):  # an architecture without them: the plain path below
        decoder = head = None
    if decoder is None or head is None:
        plain = True
    # Eager attention adds the mask to the scores: a boolean mask must become 0 / -inf first.
    additive_mask = _attention_implementation(model) == "eager"

    class CompletionLoss(torch.nn.Module):
        # What Accelerate's FSDP2 preparation reads from the module it shards: the decoder-layer
        # classes to shard one by one (fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP), and a way
        # to tie the embeddings again after it moved the weights to the meta device.
        _no_split_modules = getattr(inner, "_no_split_modules", None)

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def tie_weights(self) -> None:
            if hasattr(inner, "tie_weights"):
                inner.tie_weights()

        def forward(self, input_ids: Any, labels: Any, attention_mask: Any = None, position_ids: Any = None) -> Any:
            target = labels[:, 1:]
            mask = target != -100
            if additive_mask and attention_mask is not None and attention_mask.dim() == 4:
                blocked = torch.finfo(torch.float32).min
                attention_mask = torch.zeros(attention_mask.shape, device=attention_mask.device).masked_fill(~attention_mask, blocked)
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


# -- the learning rate --------------------------------------------------------------------------


def _lr_factor(spec: FinetuneSpec, total: int, step: int) -> float:
    """The schedule: linear warmup, then cosine / linear decay or constant. A pure function of the
    step, so a resumed run needs no scheduler state (as nanoGPT's ``get_lr``)."""
    warm = int(round(spec.warmup_ratio * total))
    if step < warm:
        return (step + 1) / (warm + 1)
    if spec.scheduler == "constant" or total <= warm:
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    if spec.scheduler == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _make_optimizer(params: list[Any], spec: FinetuneSpec) -> Any:
    torch = require("torch")
    # Fused AdamW (one kernel for all parameters) exists for CUDA and, since torch 2.4, CPU.
    for kw in ({"fused": True}, {"foreach": True}, {}):
        try:
            return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.999), **kw)
        except (RuntimeError, TypeError, ValueError):
            continue
    raise RuntimeError("cannot build AdamW")  # pragma: no cover


# -- checkpoints --------------------------------------------------------------------------------


def _trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().cpu().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: Any, state: dict[str, Any]) -> None:
    torch = require("torch")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def _save_trainable(d: Path, model: Any) -> None:
    st = require("safetensors.torch")
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "trainable.safetensors.tmp"
    st.save_file(_trainable_state(model), str(tmp))
    os.replace(tmp, d / "trainable.safetensors")


def _fingerprint(spec: FinetuneSpec, dhash: str, base: str, world: int, sharded: bool = False) -> str:
    import hashlib

    # A sharded checkpoint has another format: only a sharded run of the same size resumes it.
    parts: list[Any] = [spec.hyperparameters(), dhash, base, world] + (["fsdp2"] if sharded else [])
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


# -- the run ------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What a run has done so far; written to ``checkpoint/state.json`` and restored on resume."""

    fingerprint: str
    step: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    train_tokens: int = 0
    computed_tokens: int = 0
    train_time: float = 0.0  # seconds in the training steps
    # Wall seconds from the start of each invocation to this state's checkpoint, summed over the
    # invocations of a resumed run: what the training cost (work lost to an interruption is not in it).
    wall_time: float = 0.0
    stopped_early: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class _Run:
    """Everything ``_setup`` builds for one fine-tune. Fixed for the whole run, except ``state``
    (and ``rng``, the random state as of the last finished step, which checkpoints store)."""

    spec: FinetuneSpec
    out_dir: Path
    system_prompt: str
    prompt: str
    acc: Any
    sharded: bool  # FSDP2: parameters are DTensor slices; whole weights are gathered (see sharding)
    rm: models.ResolvedModel
    model: Any
    tok: Any
    loss_mod: Any
    ddp_mod: Any  # loss_mod as accelerate prepared it (DDP under `accelerate launch`)
    optimizer: Any
    params: list[Any]
    train: list[Example]
    val: list[Example]
    n_available: int
    enc_train: list[Encoded]
    enc_val: list[Encoded]
    skipped: list[str]
    data_hash: str
    bf16: bool
    layout: Layout
    prefix_tokens: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    save_every: int
    state: TrainState
    resumed_from: int | None
    # perf_counter() at the start; a resumed run's start is moved back by its earlier invocations' wall time.
    t_start: float
    rng: dict[str, Any] = field(default_factory=dict)
    _epochs: dict[int, list[Step]] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return str(self.acc.device)

    @property
    def world(self) -> int:
        return int(self.acc.num_processes)

    @property
    def rank(self) -> int:
        return int(self.acc.process_index)

    @property
    def is_main(self) -> bool:
        return bool(self.acc.is_main_process)

    def step_plan(self, step: int) -> Step:
        """The micro-batches of optimizer step ``step`` ([accumulation][rank] -> example indices).
        The same on every process: it depends on the data, seed and sizes only."""
        epoch = step // self.steps_per_epoch
        if epoch not in self._epochs:
            self._epochs[epoch] = plan_epoch(
                [len(e) for e in self.enc_train], batch_size=self.spec.batch_size, grad_accum=self.spec.grad_accum,
                world=self.world, seed=self.spec.seed, epoch=epoch,
            )
        return self._epochs[epoch][step % self.steps_per_epoch]

    def tensors(self, batch: Sequence[Encoded]) -> dict[str, Any]:
        pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.tok.eos_token_id or 0)
        return {k: (v.to(self.device) if v is not None else None) for k, v in collate(batch, pad_id, self.layout).items()}

    def autocast(self) -> Any:
        # QLoRA included: bitsandbytes computes in its compute dtype, autocast keeps the rest in
        # bf16 (what HF Trainer's bf16=True does over a 4-bit model).
        torch = require("torch")
        return torch.autocast("cuda" if self.device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=self.bf16)


def _accelerator() -> tuple[Any, bool]:
    """(accelerator, whether the model is sharded: FSDP2). DeepSpeed / Megatron-LM stop here."""
    torch = require("torch")
    accelerate = require("accelerate")
    sharding.refuse_unsupported()
    # cpu=True without CUDA: under `accelerate launch --multi_gpu` / torchrun the processes then
    # form a gloo process group (accelerate's MULTI_CPU) instead of each training alone.
    acc = accelerate.Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())
    return acc, sharding.configure(acc)


def _system_prompt(task: Any, spec: FinetuneSpec, given: str | None) -> tuple[str, str]:
    """(system prompt, prompt shape): the spec's shape unless the caller passed its own prompt."""
    if given is None:
        return system_prompt_for(spec.prompt, task.instructions, task.labels), spec.prompt
    for shape in ("minimal", "full"):
        if given == system_prompt_for(shape, task.instructions, task.labels):  # type: ignore[arg-type]
            return given, shape
    return given, "custom"


def _examples_used(train: Sequence[Example], spec: FinetuneSpec) -> list[Example]:
    """The train split, or a seeded sample of it that keeps label shares (``max_train_examples``)."""
    from rungwise.data.split import stratified_sample

    if spec.max_train_examples is None or spec.max_train_examples >= len(train):
        return list(train)
    return stratified_sample(train, spec.max_train_examples, spec.seed, True)


def _finished_run(out_dir: Path, dhash: str, spec: FinetuneSpec, task: Any, world: int) -> FinetuneResult | None:
    """A finished run in ``out_dir`` with the same data, settings and base (a re-run climb is cheap)."""
    if not (out_dir / RESULT_FILE).exists():
        return None
    prev = FinetuneResult.load(out_dir)
    same = (prev.data_hash, prev.hyperparameters, prev.base_model_id, prev.world_size) == (
        dhash, spec.hyperparameters(), task.model.id, world,
    )
    return prev if same else None


def _choose_layout(spec: FinetuneSpec, model: Any, enc: Sequence[Encoded]) -> tuple[Layout, int]:
    """(layout, tokens every training example shares)."""
    prefix = shared_prefix_length(enc)
    maskable = _attention_implementation(model) in _MASKABLE_ATTENTION
    if spec.shared_prefix is True and not maskable:
        raise Unsupported(
            f"rungs.finetune.shared_prefix needs an attention implementation that takes a custom mask "
            f"({', '.join(_MASKABLE_ATTENTION)}); this model uses {_attention_implementation(model)!r}",
            hint="set rungs.finetune.shared_prefix: auto (or false)",
        )
    if spec.shared_prefix is True or (spec.shared_prefix == "auto" and maskable and prefix >= SHARED_PREFIX_MIN_TOKENS):
        return "shared_prefix", prefix
    return ("packed" if spec.batching == "packing" else "padded"), prefix


def _resume(run: _Run, ckpt: Path) -> dict[str, Any] | None:
    """Load an interrupted run's checkpoint into ``run``; returns this process's saved RNG state."""
    torch = require("torch")
    st = require("safetensors.torch")
    saved = json.loads((ckpt / "state.json").read_text())
    if saved.get("fingerprint") != run.state.fingerprint:
        raise ConfigError(
            f"{ckpt}: a checkpoint from a run with other settings or data is in the way",
            hint="resume with the same task settings, pass --no-resume to start over, or use another output directory",
        )
    if run.sharded:
        sharding.load_sharded(ckpt / SHARDED_DIR, run.ddp_mod, run.optimizer)
    else:
        _load_trainable(run.model, st.load_file(str(ckpt / "trainable.safetensors")))
        run.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=run.device, weights_only=True))
    run.state = TrainState.from_dict(saved)
    run.resumed_from = run.state.step
    # A checkpoint written before wall_time was recorded counts its time in the steps, a lower bound.
    run.t_start -= run.state.wall_time or run.state.train_time
    rng_file = ckpt / f"rng_{run.rank}.pt"
    return torch.load(rng_file, weights_only=True) if rng_file.exists() else None


def _setup(
    task: Any, train: Sequence[Example], out_dir: Path, system_prompt: str | None, resume: bool, spec: FinetuneSpec
) -> _Run | FinetuneResult:
    """Everything before the first step; a finished run with the same data and settings instead, when
    ``resume`` finds one."""
    torch = require("torch")
    if not train:
        raise DataError("the train split is empty: nothing to fine-tune on", hint="add training examples")
    t_start = time.perf_counter()
    acc, sharded = _accelerator()
    device, world, is_main = str(acc.device), acc.num_processes, acc.is_main_process

    system, prompt = _system_prompt(task, spec, system_prompt)
    used = _examples_used(train, spec)
    tr, val = split_validation(used, spec.val_fraction, seed=spec.seed, vmin=spec.val_min, vmax=spec.val_max)
    dhash = data_hash(used, system)
    if resume and (prev := _finished_run(out_dir, dhash, spec, task, world)) is not None:
        return prev
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    # Fully seeded: adapter init, dropout and batch order depend only on spec.seed (and rank
    # for dropout under DDP, as every DDP setup).
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    bf16 = use_bf16(spec, device)
    if sharded and spec.method == "qlora":
        raise Unsupported(
            "method 'qlora' is not supported under FSDP: rungwise shards full-precision weights only",
            hint="use method: lora under FSDP (the sharded base need not be 4-bit), or method: qlora on one GPU "
            "without --use_fsdp",
        )
    # Sharded: load on the CPU (transformers loads the weights on the main process only under
    # FSDP's cpu_ram_efficient_loading); prepare() then moves each process's shards to its device,
    # so no device ever holds the whole model.
    base_model, tok, rm = _load_base(task, spec, "cpu" if sharded else device, bf16)
    fp = _fingerprint(spec, dhash, f"{rm.model_id}@{rm.sha256 or models.checkpoint_dir(rm)}", world, sharded)
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
    if spec.gradient_checkpointing:
        _enable_checkpointing(model)
    model.train()

    enc_tr, skipped = encode_examples(tok, tr, system, spec.max_length)
    enc_val, skipped_val = encode_examples(tok, val, system, spec.max_length)
    if not enc_tr:
        raise DataError(
            f"every training example is longer than max_length={spec.max_length} tokens (prompt alone)",
            hint="raise rungs.finetune.max_length, shorten the instructions, or train on the minimal prompt "
            "(rungs.finetune.prompt: minimal)",
        )
    layout, prefix = _choose_layout(spec, model, enc_tr)
    spe = len(plan_epoch([len(e) for e in enc_tr], batch_size=spec.batch_size, grad_accum=spec.grad_accum, world=world,
                         seed=spec.seed, epoch=0))
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

    loss_mod = _make_loss_module(model)
    # prepare() wraps in DDP under `accelerate launch` (and only moves to the device otherwise), or
    # shards the model in place under FSDP2 (and points the optimizer at the shards). The optimizer
    # is prepared so that its state follows the device; batches are sharded by our own plan, so no
    # dataloader goes through accelerate.
    ddp_mod, optimizer = acc.prepare(loss_mod, _make_optimizer([p for p in model.parameters() if p.requires_grad], spec))
    params = [p for p in model.parameters() if p.requires_grad]  # after prepare: FSDP2 replaced them
    run = _Run(
        spec=spec, out_dir=out_dir, system_prompt=system, prompt=prompt, acc=acc, sharded=sharded, rm=rm,
        model=model, tok=tok, loss_mod=loss_mod, ddp_mod=ddp_mod, optimizer=optimizer, params=params, train=tr, val=val,
        n_available=len(train), enc_train=enc_tr, enc_val=enc_val, skipped=skipped + skipped_val, data_hash=dhash,
        bf16=bf16, layout=layout, prefix_tokens=prefix, steps_per_epoch=spe, total_steps=total,
        eval_every=eval_every, save_every=spec.save_every or eval_every, state=TrainState(fingerprint=fp),
        resumed_from=None, t_start=t_start,
    )
    ckpt = out_dir / CHECKPOINT_DIR
    start_rng = _resume(run, ckpt) if resume and (ckpt / "state.json").exists() else None
    if start_rng is not None:
        _set_rng_state(start_rng)
    run.rng = _rng_state()
    return run


# -- the plan -----------------------------------------------------------------------------------


#: The timed warm-up pass covers about this many computed tokens (a few seconds on a laptop CPU).
_WARMUP_TOKENS = 512


def _measure_speed(run: _Run) -> tuple[float, float]:
    """Seconds per computed token of a forward + backward pass and of a forward pass, timed on the
    loaded model with examples of a typical micro-batch of this run (the median by size, cut to
    about ``_WARMUP_TOKENS`` computed tokens so that measuring stays cheap).

    A one-example pass goes first, untimed (memory allocation, kernel selection). Nothing
    changes: the gradients are dropped, the random state is restored, no optimizer step is
    taken; the passes go through the unwrapped module, so no DDP gradient sync happens either
    (under FSDP2 the module is sharded in place: every process makes the same passes, which
    gather weights and reduce gradients as training does).
    """
    torch = require("torch")
    rng = _rng_state()
    micro = sorted(
        ([run.enc_train[i] for i in run.step_plan(s)[0][run.rank]] for s in range(min(run.total_steps, run.steps_per_epoch))),
        key=lambda b: computed_tokens(b, run.layout),
    )
    batch = micro[len(micro) // 2]
    while len(batch) > 1 and computed_tokens(batch, run.layout) > _WARMUP_TOKENS:
        batch = batch[:-1]
    n = computed_tokens(batch, run.layout)

    def forward_backward(examples: list[Encoded]) -> float:
        t0 = time.perf_counter()
        with run.autocast():
            loss_sum, _ = run.loss_mod(**run.tensors(examples))
        loss_sum.backward()
        return time.perf_counter() - t0

    forward_backward(batch[:1])
    train_s = forward_backward(batch) / n
    run.optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    with torch.no_grad(), run.autocast():
        run.loss_mod(**run.tensors(batch))
    eval_s = (time.perf_counter() - t0) / n
    _set_rng_state(rng)
    return train_s, eval_s


def plan_training(
    task: Any,
    train: Sequence[Example],
    out_dir: Path,
    *,
    system_prompt: str | None = None,
    resume: bool = True,
    usd_per_hour: float | None = None,
    spec: FinetuneSpec | None = None,
) -> TrainingPlan:
    """Set up a fine-tune and measure what it will take, before it starts.

    Loads the model and the data (the work :func:`finetune` then reuses when given the plan),
    counts the examples, tokens and steps of the whole run, and times a forward + backward pass
    of a typical batch on this machine (a few seconds) to estimate the wall time; ``usd_per_hour``
    prices it. ``spec`` defaults to the task's ``rungs.finetune`` section (a rung variant passes its
    own); ``system_prompt`` defaults to the one of its ``prompt`` shape. A finished
    run with the same data and settings in ``out_dir`` gives a plan with ``finished=True``.

    Example:
        >>> plan = plan_training(task, split.train, Path("ft"), usd_per_hour=0.10)  # doctest: +SKIP
        >>> print(plan.summary())  # doctest: +SKIP
        >>> plan.check_budget()  # raises TrainingBudgetExceeded with the ways to fit  # doctest: +SKIP
    """
    spec = spec or finetune_spec(task)
    t0 = time.perf_counter()
    run = _setup(task, train, Path(out_dir), system_prompt, resume, spec)
    if isinstance(run, FinetuneResult):
        return _reuse_plan(run, spec, usd_per_hour, time.perf_counter() - t0)
    train_s, eval_s = _measure_speed(run)
    t = _count_tokens(run)
    evals = sum(1 for s in range(run.state.step + 1, run.total_steps + 1) if s % run.eval_every == 0 or s == run.total_steps)
    evals = evals if run.enc_val else 0
    estimate = t["remaining"] * train_s + evals * t["validation"] * eval_s
    if run.world > 1:
        # Every process must take the same budget decision: the slowest one's estimate.
        torch = require("torch")
        estimate = float(run.acc.gather(torch.tensor([estimate], dtype=torch.float64, device=run.device)).max())
    return TrainingPlan(
        prompt=run.prompt, n_available=run.n_available, n_train=len(run.enc_train), n_val=len(run.enc_val),
        n_skipped=len(run.skipped), epochs=round(run.total_steps / run.steps_per_epoch, 4), steps=run.total_steps,
        start_step=run.state.step, steps_per_epoch=run.steps_per_epoch, evaluations=evals,
        example_tokens_per_epoch=t["epoch"], computed_tokens_per_epoch=t["epoch_computed"], computed_tokens=t["remaining"],
        layout=run.layout, prefix_tokens=run.prefix_tokens, device=run.device, world_size=run.world,
        train_s_per_token=train_s, eval_s_per_token=eval_s, warmup_seconds=time.perf_counter() - t0,
        estimated_seconds=estimate,
        budget_minutes=spec.budget_minutes, usd_per_hour=usd_per_hour, max_train_examples=spec.max_train_examples,
        validation_tokens=t["validation"], validation_rule=(spec.val_fraction, spec.val_min, spec.val_max), _run=run,
    )


def _count_tokens(run: _Run) -> dict[str, int]:
    """Tokens of the run, from its (deterministic) batch plan: ``epoch`` (every token of the first
    epoch's examples, all processes), ``epoch_computed`` (what the model computes for them),
    ``remaining`` (computed by this process in the steps still to run), ``validation`` (computed by
    this process in one validation pass)."""
    enc, layout = run.enc_train, run.layout
    out = {"epoch": 0, "epoch_computed": 0, "remaining": 0, "validation": 0}
    for s in range(max(run.steps_per_epoch, run.total_steps)):
        step = run.step_plan(s)
        if s < run.steps_per_epoch:
            out["epoch"] += sum(len(enc[i]) for parts in step for part in parts for i in part)
            out["epoch_computed"] += sum(computed_tokens([enc[i] for i in part], layout) for parts in step for part in parts)
        if run.state.step <= s < run.total_steps:
            out["remaining"] += sum(computed_tokens([enc[i] for i in parts[run.rank]], layout) for parts in step)
    mine = sorted(range(len(run.enc_val)), key=lambda i: len(run.enc_val[i]))[run.rank :: run.world]
    bs = run.spec.batch_size
    out["validation"] = sum(computed_tokens([run.enc_val[i] for i in mine[k : k + bs]], layout) for k in range(0, len(mine), bs))
    return out


def _reuse_plan(prev: FinetuneResult, spec: FinetuneSpec, usd_per_hour: float | None, seconds: float) -> TrainingPlan:
    """The plan of a finished run that is reused as is: nothing left to train."""
    return TrainingPlan(
        prompt=prev.prompt, n_available=prev.n_available or prev.n_train + prev.n_val, n_train=prev.n_train,
        n_val=prev.n_val, n_skipped=prev.n_skipped, epochs=prev.epochs_run, steps=prev.steps, start_step=prev.steps,
        steps_per_epoch=0, evaluations=0, example_tokens_per_epoch=0, computed_tokens_per_epoch=0, computed_tokens=0,
        layout=prev.layout, prefix_tokens=0, device=prev.device, world_size=prev.world_size, train_s_per_token=0.0,
        eval_s_per_token=0.0, warmup_seconds=seconds, estimated_seconds=0.0, budget_minutes=spec.budget_minutes,
        usd_per_hour=usd_per_hour, max_train_examples=spec.max_train_examples, finished=True, _run=prev,
    )


# -- the loop -----------------------------------------------------------------------------------


def finetune(
    task: Any,
    train: Sequence[Example],
    out_dir: Path,
    *,
    system_prompt: str | None = None,
    progress: bool = True,
    resume: bool = True,
    on_step: StepCallback | None = None,
    plan: TrainingPlan | None = None,
    spec: FinetuneSpec | None = None,
) -> FinetuneResult:
    """Fine-tune ``task.model`` on ``train`` (the train split only) and save the artifact.

    The settings are ``spec`` or the task's ``rungs.finetune`` (:class:`FinetuneSpec`); the system prompt
    trained on is the one of its ``prompt`` shape unless ``system_prompt`` is given. A
    validation slice carved from ``train`` drives early stopping and picks the best checkpoint.
    ``plan`` is :func:`plan_training`'s result for the same arguments (its loaded model is
    reused); without one, the plan is made here. A plan over ``budget_minutes`` raises
    :class:`rungwise.train.plan.TrainingBudgetExceeded` before the first step. With ``resume``,
    a finished run in ``out_dir`` with the same settings and data is returned as is, and an
    interrupted one continues from its last checkpoint. Runs the same under
    ``accelerate launch --num_processes N`` (DDP; only the main process writes) and with
    ``--use_fsdp --fsdp_version 2`` (FSDP2; every process writes its slices of a checkpoint, the
    main process the gathered artifact).

    Example:
        >>> res = finetune(task, train, Path("ft"))  # doctest: +SKIP
        >>> res.adapter_dir  # doctest: +SKIP
        'ft/adapter'
    """
    if plan is None:
        plan = plan_training(task, train, Path(out_dir), system_prompt=system_prompt, resume=resume, spec=spec)
    run = plan._run
    if run is None:
        raise ValueError("this training plan was already used: make a new one with plan_training()")
    plan._run = None
    if isinstance(run, FinetuneResult):
        return run
    if run.out_dir != Path(out_dir):
        raise ValueError(f"the plan was made for {run.out_dir}, not {out_dir}")
    plan.check_budget()
    _train(run, progress=progress, on_step=on_step)
    return _finish(run, plan)


def _train(run: _Run, *, progress: bool, on_step: StepCallback | None) -> None:
    """The loop: an optimizer step; validation, early stopping and a checkpoint at their intervals."""
    state = run.state
    bar = _Progress(progress and run.is_main, run.total_steps, state.step)
    try:
        while state.step < run.total_steps and not state.stopped_early:
            train_loss, lr = _optimizer_step(run)
            state.step += 1
            entry: dict[str, float] = {"step": state.step, "train_loss": train_loss, "lr": lr}
            done = state.step >= run.total_steps
            val_loss = None
            if state.step % run.eval_every == 0 or done:
                val_loss = _validate(run)
                if val_loss is not None:
                    entry["val_loss"] = val_loss
                    _keep_best(run, val_loss)
            state.history.append(entry)
            run.rng = _rng_state()  # a checkpoint written now resumes at the next step exactly
            if state.step % run.save_every == 0 and not done and not state.stopped_early:
                _save_checkpoint(run)
            bar.update(state.step, train_loss, val_loss, state.train_tokens / max(state.train_time, 1e-9))
            if on_step is not None:
                on_step(state.step, train_loss)
    except KeyboardInterrupt:
        # Save where we are (the last finished step), so that `resume` continues from here.
        _save_checkpoint(run)
        raise
    finally:
        bar.close()


def _optimizer_step(run: _Run) -> tuple[float, float]:
    """One optimizer step over the global batch of step ``run.state.step``: (train loss, lr)."""
    torch = require("torch")
    state, spec = run.state, run.spec
    micro = run.step_plan(state.step)
    every = [run.enc_train[i] for parts in micro for part in parts for i in part]
    global_labels = label_tokens(every)
    lr = spec.lr * _lr_factor(spec, run.total_steps, state.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    t0 = time.perf_counter()
    loss_sum_all = torch.zeros((), dtype=torch.float64, device=run.device)
    for a, parts in enumerate(micro):
        batch = [run.enc_train[i] for i in parts[run.rank]]
        last = a == len(micro) - 1
        sync = run.acc.no_sync(run.ddp_mod) if (run.world > 1 and not last) else contextlib.nullcontext()
        with sync:
            with run.autocast():
                loss_sum, _ = run.ddp_mod(**run.tensors(batch))
            # Sum over this micro-batch / answer tokens of the whole global batch; DDP averages
            # gradients over processes, hence the factor `world`.
            (loss_sum * (run.world / global_labels)).backward()
        loss_sum_all += loss_sum.detach().double()
    if spec.max_grad_norm:
        run.acc.clip_grad_norm_(run.params, spec.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.world > 1:
        loss_sum_all = run.acc.reduce(loss_sum_all, reduction="sum")
    state.train_time += time.perf_counter() - t0
    state.train_tokens += sum(len(e) for e in every)
    state.computed_tokens += sum(
        computed_tokens([run.enc_train[i] for i in part], run.layout) for parts in micro for part in parts
    )
    return float(loss_sum_all) / global_labels, lr


def _validate(run: _Run) -> float | None:
    """Mean answer-token loss on the validation slice (shared out over the processes)."""
    if not run.enc_val:
        return None
    torch = require("torch")
    run.ddp_mod.eval()
    order = sorted(range(len(run.enc_val)), key=lambda i: len(run.enc_val[i]))
    mine = order[run.rank :: run.world]
    tot = torch.zeros(2, dtype=torch.float64, device=run.device)
    bs = run.spec.batch_size
    # Under FSDP2 every pass gathers weights from all processes, so all make as many passes as the
    # process with the most examples (rank 0); a process out of examples passes one, uncounted.
    passes = math.ceil(math.ceil(len(order) / run.world) / bs) if run.sharded else math.ceil(len(mine) / bs)
    with torch.no_grad(), run.autocast():
        for k in range(passes):
            batch = mine[k * bs : (k + 1) * bs]
            loss_sum, n = run.loss_mod(**run.tensors([run.enc_val[i] for i in batch or order[:1]]))
            if batch:
                tot[0] += loss_sum.double()
                tot[1] += n
    run.ddp_mod.train()
    tot = run.acc.reduce(tot, reduction="sum") if run.world > 1 else tot
    return float(tot[0] / tot[1]) if tot[1] > 0 else None


def _keep_best(run: _Run, val_loss: float) -> None:
    """Remember the best validated weights; count validations without improvement (early stopping)."""
    state = run.state
    if state.best_val_loss is None or val_loss < state.best_val_loss - 1e-6:
        state.best_val_loss, state.best_step, state.bad_evals = val_loss, state.step, 0
        if run.sharded:
            _write_dir(run, run.out_dir / BEST_DIR, lambda d: sharding.save_sharded(d / SHARDED_DIR, run.ddp_mod))
        elif run.is_main:
            _save_trainable(run.out_dir / BEST_DIR, run.model)
        return
    state.bad_evals += 1
    patience = run.spec.early_stopping_patience
    state.stopped_early = bool(patience and state.bad_evals >= patience)


def _save_checkpoint(run: _Run) -> None:
    """Write a resume checkpoint; every rank writes its RNG state (and under FSDP2 its slices of
    the trainable weights and optimizer state)."""
    torch = require("torch")
    st = require("safetensors.torch")

    def write(tmp: Path) -> None:
        torch.save(run.rng, tmp / f"rng_{run.rank}.pt")
        if run.sharded:
            sharding.save_sharded(tmp / SHARDED_DIR, run.ddp_mod, run.optimizer)
        elif run.is_main:
            st.save_file(_trainable_state(run.model), str(tmp / "trainable.safetensors"))
            torch.save(run.optimizer.state_dict(), tmp / "optimizer.pt")
        if run.is_main:
            run.state.wall_time = time.perf_counter() - run.t_start
            (tmp / "state.json").write_text(json.dumps(asdict(run.state), indent=2))

    _write_dir(run, run.out_dir / CHECKPOINT_DIR, write)


def _write_dir(run: _Run, target: Path, write: Callable[[Path], None]) -> None:
    """Replace the directory ``target`` atomically: every process runs ``write(tmp)``, then the
    main process renames ``tmp`` to ``target``."""
    tmp = target.with_name(target.name + ".tmp")
    if run.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    run.acc.wait_for_everyone()
    write(tmp)
    run.acc.wait_for_everyone()
    if run.is_main:
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    run.acc.wait_for_everyone()


# -- the end ------------------------------------------------------------------------------------


def _finish(run: _Run, plan: TrainingPlan) -> FinetuneResult:
    """Keep the best validated weights (the last ones without validation), write the artifact,
    the data trained on and ``result.json``; drop the resume state."""
    state, spec, out_dir = run.state, run.spec, run.out_dir
    if state.best_step is not None and state.best_step != state.step:
        if run.sharded:
            sharding.load_sharded(out_dir / BEST_DIR / SHARDED_DIR, run.ddp_mod)
        else:
            st = require("safetensors.torch")
            _load_trainable(run.model, st.load_file(str(out_dir / BEST_DIR / "trainable.safetensors")))
    run.acc.wait_for_everyone()
    full = spec.method == "full"
    artifact = out_dir / ("model" if full else "adapter")
    # Sharded: gather the whole weights onto the main process first (every process takes part),
    # so that the artifact is the one a single process writes.
    gathered = sharding.full_state(run.ddp_mod, trainable_only=not full, prefix=_WRAPPED) if run.sharded else None
    if run.is_main:
        run.model.save_pretrained(artifact, safe_serialization=True, **({"state_dict": gathered} if run.sharded else {}))
        run.tok.save_pretrained(artifact)
        write_jsonl(out_dir / "train.jsonl", to_jsonl_records(run.train, run.system_prompt))
        if run.val:
            write_jsonl(out_dir / "val.jsonl", to_jsonl_records(run.val, run.system_prompt))
    peak, kind = _peak_mem_mb(run.device)
    result = FinetuneResult(
        method=spec.method,
        out_dir=str(out_dir),
        adapter_dir=None if full else str(artifact),
        model_dir=str(artifact) if full else None,
        base_model_id=run.rm.model_id,
        base_path=models.checkpoint_dir(run.rm),
        base_sha256=run.rm.sha256,
        system_prompt=run.system_prompt,
        n_train=len(run.enc_train),
        n_val=len(run.enc_val),
        n_skipped=len(run.skipped),
        train_tokens=state.train_tokens,
        epochs_run=round(state.step / run.steps_per_epoch, 4),
        steps=state.step,
        best_step=state.best_step,
        best_val_loss=state.best_val_loss,
        final_train_loss=state.history[-1]["train_loss"] if state.history else None,
        train_seconds=round(time.perf_counter() - run.t_start, 3),
        tokens_per_s=round(state.train_tokens / max(state.train_time, 1e-9), 2),
        peak_mem_mb=round(peak, 1),
        peak_mem_kind=kind,
        hyperparameters=spec.hyperparameters(),
        data_hash=run.data_hash,
        device=run.device,
        compute_dtype="bfloat16" if run.bf16 else "float32",
        world_size=run.world,
        sharded=run.sharded,
        stopped_early=state.stopped_early,
        resumed_from_step=run.resumed_from,
        history=state.history,
        prompt=run.prompt,
        layout=run.layout,
        computed_tokens=state.computed_tokens,
        estimated_seconds=round(plan.estimated_seconds, 1),
        n_available=run.n_available,
    )
    if run.is_main:
        result.save()
        # Training finished: the resume state is no longer needed (the optimizer state of a full
        # fine-tune is twice the model).
        for name in (CHECKPOINT_DIR, BEST_DIR):
            if (out_dir / name).exists():
                shutil.rmtree(out_dir / name)
    run.acc.wait_for_everyone()
    return result


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
    return load_with_adapter(base_model_for(res, task.model), res.adapter_dir, task.model, merge=merge)


def load_with_adapter(base_rm: models.ResolvedModel, adapter_dir: Any, spec: Any, *, merge: bool = True) -> tuple[Any, Any]:
    """The base model with a PEFT adapter loaded over it (merged unless ``merge`` is False), in the
    dtype and on the device ``spec`` (a task's ``model`` section) asks for; (model, tokenizer)."""
    torch = require("torch")
    peft = require("peft")
    device = models.pick_device(spec.device)
    dtype = models.pick_dtype(spec.dtype, device)
    # Merge in fp32, then cast: merging into bf16 weights would round the small LoRA delta.
    model, tok = models.load_causal_lm(
        base_rm, dtype=torch.float32, device=device, trust_remote_code=bool(spec.trust_remote_code)
    )
    with peft_reads_deprecated_alias():
        model = peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    if merge:
        model = model.merge_and_unload()
    model.to(dtype=dtype)
    model.eval()
    return model, tok


def base_model_for(res: FinetuneResult, spec: Any) -> models.ResolvedModel:
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
        base_rm = base_model_for(res, spec)
        adapter_dir: Path = Path(res.adapter_dir or p)
    else:
        if not (p / "adapter_config.json").exists():
            raise BackendError(
                f"{adapter}: not a LoRA adapter directory (no adapter_config.json)",
                hint="pass the adapter/ directory of a fine-tune (or the fine-tune's output directory)",
            )
        base_rm = models.resolve(spec.id, spec.gguf_file)
        adapter_dir = p
    model, tok = load_with_adapter(base_rm, adapter_dir, spec)
    return LocalBackend(
        model,
        tok,
        model_id=f"local:{base_rm.display}+lora:{adapter_dir.resolve().parent.name}",
        batch_size=spec.batch_size,
        prefix_cache=spec.prefix_cache,
    )
