"""The ``rungs.finetune`` section of task.yaml: every training hyperparameter, typed and documented.

Defaults follow common LoRA practice for small instruction models (r=16, alpha=32, all linear
layers, lr 2e-4, 3 epochs) and are chosen so that a run on a laptop CPU finishes; a GPU user
mostly raises ``batch_size``. LoRA dropout is off (PEFT's own default): PEFT draws a fresh mask
for the input of every adapted layer, 210 per forward pass on the 135M model, which slowed
training on a 2-core CPU by 1.15x with no measured gain in accuracy on three tasks (BENCHMARKS.md
"finetune-dropout"). The adapter is trained on the minimal prompt by default (the input alone:
the instructions and label list are baked into the weights), which the measurements in
BENCHMARKS.md ("finetune-prompt") chose over the full prompt.

Example:
    >>> spec = FinetuneSpec(method="full")
    >>> spec.lr
    2e-05
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from rungwise.config.base import Strict

if TYPE_CHECKING:  # the task imports this module for its finetune section
    from rungwise.config.task import Task

#: Learning rates used when ``learning_rate`` is left unset: adapters tolerate (and need) a much
#: larger step than updating every weight of the model.
DEFAULT_LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}

#: What the adapter is trained on and scored with (see ``FinetuneSpec.prompt``).
PromptShape = Literal["minimal", "full"]

class ForgettingSpec(Strict):
    """The automatic forgetting check after every fine-tune: base and tuned model scored on a
    general-ability multiple-choice probe by the log-likelihood of each choice."""

    enabled: bool = Field(True, description="Run the check after training.")
    probe: str = Field(
        "mmlu",
        description="'mmlu' (a seeded sample of the MMLU test set from the shared datasets folder) or a path "
        "to a JSONL file of {question, choices: [...], answer: index | letter | choice text}.",
    )
    n: int = Field(200, gt=0, description="Number of probe questions (a fixed, seeded sample).")
    seed: int = Field(0, description="Seed of the probe sample.")
    threshold_points: float = Field(
        2.0, ge=0, description="Warn when the tuned model's probe accuracy drops by more than this many points."
    )


class FinetuneSpec(Strict):
    """The fine-tuning rung: method, adapter shape, optimisation and validation settings.

    ``batch_size`` is per process (as in Hugging Face Trainer): the examples in one optimizer
    step are ``batch_size * grad_accum * number of processes``.
    """

    method: Literal["lora", "full", "qlora"] = Field(
        "lora",
        description="lora: train low-rank adapters (small artifact, base frozen); full: update every weight; "
        "qlora: LoRA over a 4-bit base model (CUDA + bitsandbytes only).",
    )
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the LoRA input (0 = none; 0.05-0.1 is common on large data)."
    )
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Modules that get adapters: 'all-linear' (every linear layer except the output head) "
        "or a list of module names such as [q_proj, v_proj].",
    )
    learning_rate: float | None = Field(
        None, gt=0, description="Peak learning rate; unset = 2e-4 for lora/qlora, 2e-5 for full."
    )
    epochs: float = Field(3, gt=0, description="Passes over the train split (a fraction is allowed).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, gt=0, description="Examples per forward pass, per process.")
    grad_accum: int = Field(1, gt=0, description="Forward passes accumulated into one optimizer step.")
    max_length: int = Field(
        512,
        gt=8,
        description="Maximum tokens per example (prompt + answer). A longer answer is cut at the end; an "
        "example whose prompt alone is too long is skipped and counted.",
    )
    batching: Literal["group_by_length", "packing"] = Field(
        "group_by_length",
        description="group_by_length: batches of similar length with little padding; packing: several "
        "examples per row with reset positions, each attending only to itself (no cross-example attention).",
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="Share of the train split held out for validation (early stopping, best checkpoint)."
    )
    val_min: int = Field(8, ge=1, description="Smallest validation slice; below 2x this many examples no slice is carved.")
    val_max: int = Field(256, ge=1, description="Largest validation slice (validation costs time every eval).")
    eval_every: int | Literal["epoch", "auto"] = Field(
        "auto",
        description="Validation (and checkpoint) interval: a number of optimizer steps, 'epoch', or 'auto' "
        "(twice per epoch).",
    )
    early_stopping_patience: int | None = Field(
        2, ge=1, description="Stop after this many validations without improvement; null = never stop early."
    )
    save_every: int | None = Field(
        None, gt=0, description="Resume checkpoint every this many optimizer steps; unset = at every validation."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the steps with linear learning-rate warmup.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate decay after warmup.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null = no clipping.")
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="bf16 compute (autocast): auto = on where the GPU or CPU supports it natively "
        "(CPUs with avx512_bf16/amx), else fp32.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large models on small GPUs).")
    seed: int = Field(0, description="Seed of the validation split, batch order, dropout and adapter init.")
    prompt: PromptShape = Field(
        "minimal",
        description="What the adapter is trained on, and scored with: minimal = the input alone (the instructions "
        "and label list are baked into the weights: the fewest tokens per call and the cheapest training); full = "
        "the task's instructions + label list, as the prompting rungs send them.",
    )
    shared_prefix: bool | Literal["auto"] = Field(
        "auto",
        description="Compute the prompt prefix all examples of a batch share (system prompt, label list) once per "
        "batch instead of once per example; the loss and gradients are the same. auto = on when the examples share "
        "at least 16 tokens and the model's attention takes a custom mask (sdpa, eager).",
    )
    max_train_examples: int | None = Field(
        None,
        gt=0,
        description="Train on at most this many examples of the train split (a seeded sample that keeps label "
        "shares; the validation slice is carved from it). `rungwise climb --limit` sets it for a quick try.",
    )
    budget_minutes: float | None = Field(
        60,
        gt=0,
        description="Refuse to start a training whose estimated wall time (measured on this machine before it "
        "starts) exceeds this many minutes; null = no limit.",
    )
    forgetting: ForgettingSpec = Field(default_factory=ForgettingSpec)

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("target_modules is empty; use 'all-linear' or name at least one module")
        return v

    @field_validator("eval_every")
    @classmethod
    def _eval_every(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v <= 0:
            raise ValueError("eval_every must be a positive number of steps, 'epoch' or 'auto'")
        return v

    @model_validator(mode="after")
    def _val_sizes(self) -> FinetuneSpec:
        if self.val_min > self.val_max:
            raise ValueError(f"val_min ({self.val_min}) is larger than val_max ({self.val_max})")
        return self

    @property
    def lr(self) -> float:
        """The learning rate in effect (the method's default when unset)."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.method]

    def hyperparameters(self) -> dict[str, object]:
        """What the model card and the run store record: every setting that shapes the weights (not the
        forgetting probe, not the time budget)."""
        d = self.model_dump(mode="json", exclude={"forgetting", "budget_minutes"})
        d["learning_rate"] = self.lr
        return d


def finetune_spec(task: Task) -> FinetuneSpec:
    """The task's ``rungs.finetune`` settings (defaults when the section is absent)."""
    spec: FinetuneSpec = task.rungs.section("finetune")
    return spec
