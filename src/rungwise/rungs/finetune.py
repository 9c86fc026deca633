"""The fine-tuning rungs: ``finetune`` (a LoRA/full/QLoRA fine-tune, scored with the prompt
shape it was trained on) and ``finetune_min`` (a full-prompt fine-tune asked with no prompt).

``rungs.finetune.prompt`` says what the adapter is trained on and scored with: ``minimal`` (no
instructions, no label list: the weights carry the task; the default, chosen by the measurements
in BENCHMARKS.md "finetune-prompt") or ``full`` (what the prompting rungs send). Both shapes as
two rungs: a variant, ``finetune_full: {use: finetune, prompt: full}``.

Before training, the data audit runs on the train split and the training plan is printed: its
examples, tokens, steps and the wall time measured by a short warm-up; a plan over
``budget_minutes`` skips the rung (the rest of the ladder and its verdict stand) with the ways
to fit. A quick climb (``--limit``) also caps what it trains on, and says so. After training, the
forgetting check scores the base and the tuned model on a general-ability probe. The model is trained once per (model, prompt, settings, train data)
and loaded once per climb; an interrupted training resumes from its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from rungwise.config.base import Strict
from rungwise.prompting import PromptTemplate, chat_tokens_estimate, count_tokens_estimate
from rungwise.rungs.base import (
    Prepared,
    Rung,
    RungArtifact,
    RungContext,
    RungSkipped,
    Scored,
    estimate_template,
)
from rungwise.train.config import FinetuneSpec
from rungwise.train.data import system_prompt_for
from rungwise.types import FINETUNE, Example, RungResult, TokenEstimate, TrainingRecord


class AuditSummary(Strict):
    verdict: str
    summary: str
    reasons: list[str] = Field(default_factory=list)


class FinetuneArtifact(RungArtifact):
    """Where the tuned model is, what training took, and the checks around it."""

    prompt: dict[str, Any] = Field(description="PromptTemplate.to_dict() of the prompt it is scored with.")
    out_dir: str = Field(description="The fine-tune's output directory (result.json, adapter/ or model/).")
    method: str
    adapter_dir: str | None = None
    model_dir: str | None = None
    base_model: str
    base_sha256: str | None = None
    train_examples: int
    val_examples: int
    train_tokens: int = Field(description="Training tokens processed, all epochs.")
    epochs: float
    train_seconds: float
    tokens_per_s: float
    best_val_loss: float | None = None
    device: str
    world_size: int = 1
    training_data_hash: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    audit: AuditSummary | None = None
    forgetting: dict[str, Any] | None = None
    forgetting_summary: str | None = None
    model_card: str | None = None
    quick_note: str | None = Field(None, description="Set when a quick climb (--limit) capped the training data.")

    def notes(self) -> list[str]:
        out = [self.quick_note] if self.quick_note else []
        if self.audit is not None:
            out.append(f"audit of the train split before fine-tuning: {self.audit.summary}")
        out.append(
            f"{self.method} on {self.train_examples} examples, {self.epochs:.3g} epoch(s), {self.train_tokens:,} "
            f"tokens in {self.train_seconds:.0f} s on {self.device}; {'adapter' if self.adapter_dir else 'model'} "
            f"{self.adapter_dir or self.model_dir}"
        )
        if self.forgetting_summary:
            out.append(self.forgetting_summary)
        return out

    def training(self) -> TrainingRecord:
        epochs = self.epochs or 1.0
        return TrainingRecord(
            examples=self.train_examples, tokens=round(self.train_tokens / epochs), epochs=self.epochs,
            seconds=self.train_seconds, devices=self.world_size, device=self.device, method=self.method,
        )


def _audit(task: Any, train: Sequence[Example]) -> AuditSummary:
    from rungwise.data.audit import audit

    rep = audit(list(train), task=task)
    return AuditSummary(verdict=rep.verdict, summary=rep.summary(), reasons=list(rep.reasons))


def _training_estimate(spec: FinetuneSpec, tpl: PromptTemplate, train: Sequence[Example]) -> TrainingRecord:
    used = train[: spec.max_train_examples] if spec.max_train_examples else train
    per_example = [chat_tokens_estimate(tpl.for_example(e)) + count_tokens_estimate(e.output) + 1 for e in used]
    return TrainingRecord(examples=len(used), tokens=sum(per_example), epochs=spec.epochs, method=spec.method)


def trained_system(task: Any, spec: FinetuneSpec) -> str:
    """The system prompt the rung trains on and is scored with (its ``prompt`` shape)."""
    return system_prompt_for(spec.prompt, task.instructions, task.labels)


#: A quick climb (``--limit N``) trains on at most this many examples per scored example, and
#: never fewer than QUICK_TRAIN_MIN: enough to see the rung work, not to judge it.
QUICK_TRAIN_PER_EXAMPLE = 4
QUICK_TRAIN_MIN = 32


def quick_spec(spec: FinetuneSpec, ctx: RungContext) -> tuple[FinetuneSpec, str | None]:
    """The settings of a quick climb: ``max_train_examples`` capped by ``--limit``, with the note
    that says so (None when the climb is not quick or the cap changes nothing)."""
    if ctx.quick_limit is None:
        return spec, None
    cap = max(QUICK_TRAIN_MIN, QUICK_TRAIN_PER_EXAMPLE * ctx.quick_limit)
    if cap >= min(len(ctx.train), spec.max_train_examples or len(ctx.train)):
        return spec, None
    note = (f"a quick climb (--limit {ctx.quick_limit}) trains on {cap} of the {len(ctx.train)} train examples; "
            "climb without --limit to measure the real rung")
    return spec.model_copy(update={"max_train_examples": cap}), note


class Finetune(Rung):
    """LoRA (default), full or QLoRA fine-tune of the task's model on the train split, scored
    with the prompt shape it was trained on (``rungs.finetune.prompt``)."""

    name = "finetune"
    summary = "LoRA/full/QLoRA fine-tune of the task model on the train split"
    kind = FINETUNE
    Config = FinetuneSpec
    Artifact = FinetuneArtifact
    cheap_to_prepare = False

    def prepare(self, ctx: RungContext) -> Prepared:
        from rungwise.train.plan import TrainingBudgetExceeded
        from rungwise.train.trainer import finetune, plan_training

        task = ctx.task
        spec, quick_note = quick_spec(ctx.config, ctx)
        work_dir = ctx.work_dir / f"quick-{spec.max_train_examples}" if quick_note else ctx.work_dir
        system = trained_system(task, spec)
        audit = _audit(task, ctx.train)
        if quick_note:
            ctx.say(quick_note)
        plan = plan_training(task, ctx.train, work_dir, system_prompt=system, resume=True, spec=spec,
                             usd_per_hour=task.economics.self_host_usd_per_hour)
        if not plan.finished:
            ctx.say(plan.summary())
        try:
            plan.check_budget()
        except TrainingBudgetExceeded as exc:
            # The rest of the ladder and its verdict still stand; the skip says how to fit.
            raise RungSkipped(f"{exc.message}; to fit: {exc.hint}") from None
        res = finetune(task, ctx.train, work_dir, system_prompt=system, progress=True, plan=plan, spec=spec)
        art = FinetuneArtifact(
            prompt=PromptTemplate(system).to_dict(), out_dir=res.out_dir, method=res.method,
            adapter_dir=res.adapter_dir, model_dir=res.model_dir, base_model=res.base_model_id,
            base_sha256=res.base_sha256, train_examples=res.n_train, val_examples=res.n_val,
            train_tokens=res.train_tokens, epochs=res.epochs_run, train_seconds=res.train_seconds,
            tokens_per_s=res.tokens_per_s, best_val_loss=res.best_val_loss, device=res.device,
            world_size=res.world_size, training_data_hash=res.data_hash, hyperparameters=res.hyperparameters,
            audit=audit, quick_note=quick_note,
        )
        prepared = self.load(ctx, art)
        self._forgetting(ctx, spec, prepared)
        return prepared

    def work_key(self, config: Any) -> Any:
        # The weights depend on the training settings only: a new forgetting probe or time budget
        # must find the adapter already trained, not train another.
        assert isinstance(config, FinetuneSpec)
        return config.hyperparameters()

    def load(self, ctx: RungContext, artifact: RungArtifact) -> Prepared:
        from rungwise.train.trainer import load_tuned_backend

        assert isinstance(artifact, FinetuneArtifact)
        tuned = ctx.backends.adopt(load_tuned_backend(artifact.out_dir, ctx.task))
        return Prepared(artifact, PromptTemplate.from_dict(artifact.prompt), backend=tuned)

    def estimate(self, ctx: RungContext, sample: Sequence[Example]) -> TokenEstimate:
        tpl = PromptTemplate(trained_system(ctx.task, ctx.config))
        est = estimate_template(tpl, sample)
        est.training = _training_estimate(ctx.config, tpl, ctx.train)
        return est

    def _forgetting(self, ctx: RungContext, spec: FinetuneSpec, prepared: Prepared) -> None:
        from rungwise.train.forgetting import forgetting_record

        art = prepared.artifact
        assert isinstance(art, FinetuneArtifact) and prepared.backend is not None
        art.forgetting, art.forgetting_summary = forgetting_record(
            ctx.shared_backend(), prepared.backend, spec.forgetting, base_dir=ctx.task.base_dir, section=self.name,
        )

    def finalize(self, ctx: RungContext, prepared: Prepared, result: RungResult, previous: Sequence[RungResult],
                 scored: Scored) -> None:
        _write_model_card(ctx, prepared, result, previous)


def _write_model_card(ctx: RungContext, prepared: Prepared, result: RungResult, previous: Sequence[RungResult]) -> None:
    """(Re)write the tuned model's card once its metrics (with CIs) are known: after every rung
    that answers with this model, so the card holds its score under each prompt it was asked with."""
    from rungwise.train.card import write_model_card
    from rungwise.train.trainer import FinetuneResult

    art = prepared.artifact
    assert isinstance(art, FinetuneArtifact)
    res = FinetuneResult.load(art.out_dir)
    metrics: dict[str, Any] = {}
    forgetting = art.forgetting
    for r in [*previous, result]:
        if r.artifact.get("out_dir") != art.out_dir:
            continue
        shape = "full prompt" if (r.artifact.get("prompt") or {}).get("system") else "minimal prompt"
        metrics[shape] = r.metric
        forgetting = forgetting or r.artifact.get("forgetting")
    card = write_model_card(res.artifact_dir, res, metrics=metrics, forgetting=forgetting, task_name=ctx.task.name)
    art.model_card = str(card)


class FinetuneMinimal(Rung):
    """The model of the ``finetune`` rung with no instructions and no demos: for a fine-tune
    trained on the full prompt (``prompt: full``), how much of the behaviour training baked in,
    and the prompt tokens that saves. A rung is otherwise scored only with the prompt it was
    trained on; this one is the explicit exception, and is skipped when ``finetune`` already
    trains on the minimal prompt (it would measure the same thing twice)."""

    name = "finetune_min"
    summary = "the fine-tuned model with a minimal prompt (no instructions, no demos)"
    kind = FINETUNE
    Artifact = FinetuneArtifact
    cheap_to_prepare = False

    def prepare(self, ctx: RungContext) -> Prepared:
        if ctx.task.rungs.section(Finetune.name).prompt == "minimal":
            raise RungSkipped(
                "finetune already trains on and answers with the minimal prompt (rungs.finetune.prompt: minimal); "
                "finetune_min measures a full-prompt fine-tune asked without its prompt"
            )
        tuned = ctx.resolve(Finetune.name)
        assert isinstance(tuned.artifact, FinetuneArtifact)
        art = tuned.artifact.model_copy(update={"prompt": PromptTemplate("").to_dict(), "audit": None,
                                                "forgetting": None, "forgetting_summary": None})
        return Prepared(art, PromptTemplate(""), backend=tuned.backend)

    def load(self, ctx: RungContext, artifact: RungArtifact) -> Prepared:
        return Finetune().load(ctx, artifact)

    def finalize(self, ctx: RungContext, prepared: Prepared, result: RungResult, previous: Sequence[RungResult],
                 scored: Scored) -> None:
        _write_model_card(ctx, prepared, result, previous)

    def estimate(self, ctx: RungContext, sample: Sequence[Example]) -> TokenEstimate:
        # It sends no system prompt: the estimate counts the bare input (issue: the old estimate
        # charged it the full prompt it never sends).
        tpl = PromptTemplate("")
        est = estimate_template(tpl, sample)
        finetune_cfg = ctx.task.rungs.section(Finetune.name)
        est.training = _training_estimate(finetune_cfg, PromptTemplate(trained_system(ctx.task, finetune_cfg)), ctx.train)
        return est
