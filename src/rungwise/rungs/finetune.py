"""The fine-tuning rungs: ``finetune`` (the tuned model with the full prompt) and
``finetune_min`` (the same tuned model with a minimal prompt: no instructions, no demos).

Both are scored on the same held-out split as the prompting rungs. Before training, the data
audit runs on the train split and its verdict is recorded with the rung; after training, the
forgetting check scores the base and the tuned model on a general-ability probe. The adapter is
trained once per (task config, train data) and shared by both rungs, so ``finetune_min`` costs
only its evaluation; an interrupted training resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rungwise import paths
from rungwise.config.task import Task
from rungwise.prompting import PromptTemplate
from rungwise.rungs.base import Prepared, Rung, RungContext, base_system
from rungwise.types import Example, RungResult


def finetune_dir(task: Task, train: Sequence[Example]) -> Path:
    """Where the adapter for this task config and train split lives (stable across re-runs)."""
    from rungwise.data.dataset import data_hash

    key = hashlib.sha256(f"{task.config_hash()}:{data_hash(train)}".encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in task.name)[:40]
    return paths.sub("finetunes") / f"{safe}-{key}"


def _audit_summary(task: Task, train: Sequence[Example]) -> dict[str, Any]:
    from rungwise.data.audit import audit

    rep = audit(list(train), task=task)
    return {"verdict": rep.verdict, "summary": rep.summary(), "reasons": list(rep.reasons)}


class Finetune(Rung):
    """LoRA (default), full or QLoRA fine-tune of the task's model on the train split, scored
    with the task's system prompt (the prompt it was trained with)."""

    name = "finetune"
    summary = "LoRA/full/QLoRA fine-tune of the task model on the train split"
    minimal = False

    def prepare(self, ctx: RungContext) -> Prepared:
        from rungwise.train.trainer import finetune, load_tuned_backend

        task = ctx.task
        system = base_system(task)
        out_dir = finetune_dir(task, ctx.train)
        art: dict[str, Any] = {"kind": "finetune", "out_dir": str(out_dir)}
        if not self.minimal:
            art["audit"] = _audit_summary(task, ctx.train)
        res = finetune(task, ctx.train, out_dir, system_prompt=system, progress=True, resume=True)
        tuned = load_tuned_backend(res, task)
        art.update(
            method=res.method,
            adapter_dir=res.adapter_dir,
            model_dir=res.model_dir,
            base_model=res.base_model_id,
            base_sha256=res.base_sha256,
            train_examples=res.n_train,
            val_examples=res.n_val,
            train_tokens=res.train_tokens,
            epochs=res.epochs_run,
            train_seconds=res.train_seconds,
            tokens_per_s=res.tokens_per_s,
            best_val_loss=res.best_val_loss,
            device=res.device,
            data_hash=res.data_hash,
            hyperparameters=res.hyperparameters,
        )
        spec = task.rungs.finetune.forgetting
        if spec.enabled and not self.minimal:
            from rungwise.errors import DataError
            from rungwise.train.forgetting import forgetting_check

            try:
                fg = forgetting_check(
                    ctx.backend_factory(), tuned, probe=spec.probe, n=spec.n, seed=spec.seed,
                    threshold_points=spec.threshold_points, base_dir=task.base_dir,
                )
            except DataError as exc:
                if spec.probe != "mmlu":
                    raise  # the user's own probe file is broken: say so
                # The default probe reads MMLU from the shared datasets folder, which a machine
                # without it lacks; the rung is still measured, and the note says how to enable it.
                art["forgetting_summary"] = (
                    f"forgetting check skipped: {exc.message} (set RUNGWISE_SHARED to a folder with datasets/mmlu, "
                    "or rungs.finetune.forgetting.probe to your own JSONL probe)"
                )
            else:
                art["forgetting"] = fg.to_dict()
                art["forgetting_summary"] = fg.summary()
        tpl = PromptTemplate("") if self.minimal else PromptTemplate(system)
        art["prompt"] = tpl.to_dict()
        return Prepared(tpl, backend=tuned, artifact=art)

    def finalize(self, ctx: RungContext, prepared: Prepared, result: RungResult, previous: Sequence[RungResult]) -> None:
        """Write the model card once the tuned model's metrics (with CIs) are known."""
        from rungwise.train.card import write_model_card
        from rungwise.train.trainer import FinetuneResult

        art = prepared.artifact
        res = FinetuneResult.load(art["out_dir"])
        metrics: dict[str, Any] = {}
        forgetting = art.get("forgetting")
        for r in [*previous, result]:
            if r.rung == "finetune":
                metrics["full prompt"] = r.metric
                forgetting = forgetting or r.artifact.get("forgetting")
            elif r.rung == "finetune_min":
                metrics["minimal prompt"] = r.metric
        card = write_model_card(res.artifact_dir, res, metrics=metrics, forgetting=forgetting, task_name=ctx.task.name)
        art["model_card"] = str(card)
        result.artifact["model_card"] = str(card)


class FinetuneMinimal(Finetune):
    """The same tuned model with no instructions and no demos: how much behaviour is baked in."""

    name = "finetune_min"
    summary = "the fine-tuned model with a minimal prompt (no instructions, no demos)"
    minimal = True
