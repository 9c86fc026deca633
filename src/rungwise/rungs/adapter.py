"""``adapter``: a LoRA adapter (or a merged model) trained elsewhere, scored as a rung.

Adapters trained on a cluster (Axolotl, TRL, LLaMA-Factory) are scored on the ladder's held-out
split, priced and explained like the ``finetune`` rung: the rung checks the directory (PEFT
adapter or merged model, safetensors only), records its provenance (every file's sha256, the
base it says it was trained on, the task's model), refuses weights that do not fit the task's
model, loads base + adapter merged as a local model, and runs the forgetting check against the
base. What training cost is not measured here: ``training_usd`` (entered by the user) is what
economics charges, otherwise the training cost is unknown and the notes say so.

Several adapters climb at once as variants::

    rungs:
      order: [zero_shot, few_shot, tickets_r16, tickets_r64]
      tickets_r16: {use: adapter, path: adapters/r16, training_usd: 3.20}
      tickets_r64: {use: adapter, path: adapters/r64, prompt: full}

A stored artifact is re-opened (``rungwise serve``) only when every file still has its recorded
hash: the run's scores describe those weights and no others.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rungwise import models
from rungwise.backends.base import Backend
from rungwise.backends.local import LocalBackend, LocalSpec
from rungwise.config.base import Strict
from rungwise.config.task import Task
from rungwise.errors import ConfigError
from rungwise.prompting import PromptTemplate
from rungwise.rungs.base import Prepared, Rung, RungArtifact, RungContext, estimate_template
from rungwise.train.config import ForgettingSpec
from rungwise.train.data import system_prompt_for
from rungwise.train.external import WeightsDir, check_fits_base, inspect_weights_dir, model_name
from rungwise.train.forgetting import forgetting_record
from rungwise.types import FINETUNE, Example, TokenEstimate, TrainingRecord


class AdapterConfig(Strict):
    """A ``rungs.<name>: {use: adapter, ...}`` section: where the weights are, the prompt they
    were trained with, and what training took (for the economics)."""

    path: str = Field(
        description="A PEFT adapter directory (adapter_config.json + adapter_model.safetensors) or a merged model "
        "directory (config.json + *.safetensors + tokenizer), relative to task.yaml's folder.",
    )
    prompt: str = Field(
        "minimal",
        description="The system prompt it was trained with: minimal (none), full (the task's instructions + label "
        "list, as the prompting rungs send them), or the literal prompt text.",
    )
    check_base_name: bool = Field(
        True,
        description="Refuse an adapter whose recorded base model (base_model_name_or_path) has another name than "
        "model.id (compared by the last path part, case-insensitive). Set false when the same model has another "
        "name here; the shapes are checked either way.",
    )
    training_usd: float | None = Field(None, ge=0, description="What training cost, in USD (entered by you).")
    training_seconds: float | None = Field(None, gt=0, description="Wall time of the training run, in seconds.")
    training_devices: int | None = Field(None, gt=0, description="Accelerators the training ran on.")
    training_examples: int | None = Field(None, gt=0, description="Examples it was trained on.")
    forgetting: ForgettingSpec = Field(default_factory=ForgettingSpec)


class AdapterArtifact(RungArtifact):
    """Provenance of the external weights, the prompt they answer with, what the user said
    training took, and the forgetting check."""

    prompt: dict[str, Any] = Field(description="PromptTemplate.to_dict() of the prompt it is scored with.")
    path: str = Field(description="The weights directory (absolute).")
    form: Literal["adapter", "merged"]
    files: dict[str, str] = Field(description="sha256 of each file that decides the answers, by name.")
    adapter_base: str | None = Field(None, description="The base the adapter records (base_model_name_or_path).")
    lora: dict[str, Any] | None = Field(None, description="The adapter's shape: r, lora_alpha, target_modules, use_dora.")
    base_model: str = Field(description="The task's model it was loaded over (and the forgetting check's base).")
    base_sha256: str | None = Field(None, description="sha256 of the task model's GGUF file, when it has one.")
    base_note: str | None = None
    training_usd: float | None = None
    training_seconds: float | None = None
    training_devices: int | None = None
    training_examples: int | None = None
    forgetting: dict[str, Any] | None = None
    forgetting_summary: str | None = None

    def notes(self) -> list[str]:
        shown = [f"{name} {h[:12]}" for name, h in self.files.items() if name.endswith(".safetensors")]
        more = f" +{len(shown) - 2} more" if len(shown) > 2 else ""
        trained_on = f"trained on {self.adapter_base}" if self.adapter_base else "base not recorded"
        out = [f"external {'LoRA adapter' if self.form == 'adapter' else 'merged model'} {self.path} "
               f"(sha256 {', '.join(shown[:2])}{more}; {trained_on}), loaded over {self.base_model}"]
        if self.base_note:
            out.append(self.base_note)
        out.append(self._training_note())
        if self.forgetting_summary:
            out.append(self.forgetting_summary)
        return out

    def _training_note(self) -> str:
        known = [f"{self.training_examples} examples" if self.training_examples else "",
                 f"{self.training_seconds / 3600:.2f} h" if self.training_seconds else "",
                 f"{self.training_devices} device(s)" if self.training_devices else ""]
        facts = ", ".join(k for k in known if k)
        facts = f" ({facts})" if facts else ""
        if self.training_usd is not None:
            return f"trained elsewhere{facts}; training cost ${self.training_usd:,.2f} as you entered it"
        if self.training_seconds:
            return f"trained elsewhere{facts}; training cost priced from the training time you entered"
        return f"trained elsewhere{facts}; training cost unknown (set training_usd, or training_seconds and " \
               "training_devices, in the rung's task.yaml section)"

    def training(self) -> TrainingRecord:
        return training_record(self.training_usd, self.training_seconds, self.training_devices, self.training_examples)


def training_record(usd: float | None, seconds: float | None, devices: int | None,
                    examples: int | None) -> TrainingRecord:
    """What economics knows of a training run done elsewhere: only what the user entered.

    Tokens and epochs are unknown (0); economics then estimates tokens from the examples, and
    prices the run from ``usd``, else from ``seconds`` x ``devices`` on the priced machine, else
    calls its cost unknown.

    >>> training_record(12.5, None, None, 400).usd
    12.5
    """
    return TrainingRecord(examples=examples or 0, tokens=0, epochs=0.0, seconds=seconds, devices=devices or 1,
                          method="external", usd=usd)


def adapter_system_prompt(prompt: str, task: Task) -> str:
    """The system prompt for a ``prompt`` setting: ``minimal`` (none), ``full`` (the task's
    instructions and label list) or the literal text.

    >>> adapter_system_prompt("Classify.", task)  # doctest: +SKIP
    'Classify.'
    """
    if prompt in ("minimal", "full"):
        return system_prompt_for(prompt, task.instructions, task.labels)  # type: ignore[arg-type]
    return prompt


class Adapter(Rung):
    """A LoRA adapter or merged model trained elsewhere, over the task's model (see the module
    docstring)."""

    name = "adapter"
    summary = "a LoRA adapter (or merged model) trained elsewhere, loaded over the task model"
    kind = FINETUNE
    Config = AdapterConfig
    Artifact = AdapterArtifact
    cheap_to_prepare = False  # it loads a model and runs the forgetting check

    def prepare(self, ctx: RungContext) -> Prepared:
        cfg: AdapterConfig = ctx.config
        spec = self._local_spec(ctx.task)
        field = f"rungs.{self.name}.path"
        wd = inspect_weights_dir(ctx.task.resolve(cfg.path).resolve(), field)
        base = models.resolve(spec.id, spec.gguf_file)
        base_note = self._check_base_name(wd, spec, cfg)
        check_fits_base(wd, models.checkpoint_dir(base), field, trust_remote_code=spec.trust_remote_code)
        lora = None
        if wd.adapter_config is not None:
            lora = {k: wd.adapter_config.get(k) for k in ("r", "lora_alpha", "target_modules", "use_dora")}
        art = AdapterArtifact(
            prompt=PromptTemplate(adapter_system_prompt(cfg.prompt, ctx.task)).to_dict(), path=str(wd.path),
            form=wd.form, files=wd.hashes(), adapter_base=wd.recorded_base, lora=lora, base_model=base.display,
            base_sha256=base.sha256, base_note=base_note, training_usd=cfg.training_usd,
            training_seconds=cfg.training_seconds, training_devices=cfg.training_devices,
            training_examples=cfg.training_examples,
        )
        tuned = ctx.backends.adopt(self._open(wd, base, spec))
        art.forgetting, art.forgetting_summary = forgetting_record(
            ctx.shared_backend(), tuned, cfg.forgetting, base_dir=ctx.task.base_dir, section=self.name)
        return Prepared(art, PromptTemplate.from_dict(art.prompt), backend=tuned)

    def load(self, ctx: RungContext, artifact: RungArtifact) -> Prepared:
        """Re-open a stored artifact, refusing when the weights or the base changed since it was
        scored: its scores describe those weights, so serving others under its name would be
        wrong (climb again to score new weights)."""
        assert isinstance(artifact, AdapterArtifact)
        spec = self._local_spec(ctx.task)
        wd = inspect_weights_dir(Path(artifact.path), f"rungs.{self.name}.path")
        changed = wd.changed(artifact.files)
        if changed:
            raise ConfigError(
                f"the {self.name} weights in {artifact.path} changed since they were scored ({', '.join(changed)} "
                "differ from the recorded sha256)",
                hint=f"climb again to score the new weights (`rungwise climb task.yaml --rungs {self.name}`), or "
                "restore the files that were scored",
            )
        base = models.resolve(spec.id, spec.gguf_file)
        if artifact.base_sha256 and base.sha256 != artifact.base_sha256:
            raise ConfigError(
                f"the {self.name} rung was scored over {artifact.base_model}, but model.id now resolves to "
                f"{base.display}", hint="set model.id back to the model it was scored over, or climb again",
            )
        backend = ctx.backends.adopt(self._open(wd, base, spec))
        return Prepared(artifact, PromptTemplate.from_dict(artifact.prompt), backend=backend)

    def estimate(self, ctx: RungContext, sample: Sequence[Example]) -> TokenEstimate:
        cfg: AdapterConfig = ctx.config
        est = estimate_template(PromptTemplate(adapter_system_prompt(cfg.prompt, ctx.task)), sample)
        est.training = training_record(cfg.training_usd, cfg.training_seconds, cfg.training_devices,
                                       cfg.training_examples)
        return est

    # -- helpers ------------------------------------------------------------------------------
    def _local_spec(self, task: Task) -> LocalSpec:
        if not isinstance(task.model, LocalSpec):
            raise ConfigError(
                f"the {self.name} rung loads its weights over the task's model on this machine, but model.backend is "
                f"{task.model.backend!r}",
                hint="set model.backend: local and model.id to the base model the adapter was trained on",
            )
        return task.model

    def _check_base_name(self, wd: WeightsDir, spec: LocalSpec, cfg: AdapterConfig) -> str | None:
        """Refuse an adapter recorded on another model name (unless told not to); the note for
        the ladder when the names differ but the user vouched for the base."""
        recorded = wd.recorded_base
        if recorded is None or model_name(recorded) == model_name(spec.id):
            return None
        if cfg.check_base_name:
            raise ConfigError(
                f"task.yaml rungs.{self.name}.path: the adapter in {wd.path} was trained on {recorded!r}, but the "
                f"task's model is {spec.id!r}",
                hint=f"set model.id to {recorded} (or its local copy); if {spec.id} is that same model under another "
                f"name, set rungs.{self.name}.check_base_name: false (the shapes are still checked)",
            )
        return f"the adapter records base {recorded!r}, loaded over {spec.id!r} as you allowed (check_base_name: false)"

    @staticmethod
    def _open(wd: WeightsDir, base: models.ResolvedModel, spec: LocalSpec) -> Backend:
        """A local backend over base + adapter (merged into the weights) or the merged model."""
        if wd.form == "adapter":
            from rungwise.train.trainer import load_with_adapter

            model, tok = load_with_adapter(base, wd.path, spec)
            model_id = f"local:{base.display}+lora:{wd.path.name}"
        else:
            device = models.pick_device(spec.device)
            model, tok = models.load_causal_lm(
                models.ResolvedModel(str(wd.path), str(wd.path)), dtype=models.pick_dtype(spec.dtype, device),
                device=device, trust_remote_code=spec.trust_remote_code,
            )
            model_id = f"local:{wd.path.name}"
        return LocalBackend(model, tok, model_id=model_id, batch_size=spec.batch_size, prefix_cache=spec.prefix_cache)
