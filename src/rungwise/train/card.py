"""The model card of a fine-tune: README.md with YAML front matter (the Hugging Face model card
layout, so the adapter can be pushed as is) and a JSON provenance block, also written to
``provenance.json``.

It records what someone needs to trust or reproduce the artifact: the base model id and the
hash of its weights file, the hash of the training data, the hyperparameters, the held-out
metrics with their confidence intervals, the forgetting check, the date and the rungwise
version.

Example:
    >>> write_model_card(result.out_dir, result, metrics={"full prompt": mv})  # doctest: +SKIP
    PosixPath('runs/ft/README.md')
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from rungwise import __version__
from rungwise.train.trainer import FinetuneResult


def _plain(x: Any) -> Any:
    if is_dataclass(x) and not isinstance(x, type):
        return asdict(x)
    if hasattr(x, "to_dict"):
        return x.to_dict()
    return x


def weights_sha256(path: str | Path) -> str | None:
    """SHA-256 over a checkpoint directory's weight files (sorted by name), or of one file."""
    from rungwise.models import file_sha256

    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    if not p.is_dir():
        return None
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.gguf"))
    if not files:
        return None
    if len(files) == 1:
        return file_sha256(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return h.hexdigest()


def provenance(
    result: FinetuneResult,
    *,
    metrics: Mapping[str, Any] | None = None,
    forgetting: Any = None,
    task_name: str | None = None,
    date: str | None = None,
) -> dict[str, Any]:
    """The card's facts as one JSON-able dict."""
    base_hash = result.base_sha256 or weights_sha256(result.base_path)
    return {
        "task": task_name,
        "method": result.method,
        "base_model": {
            "id": result.base_model_id,
            "weights_sha256": base_hash,
            "hash_of": "GGUF file" if result.base_sha256 else "safetensors weights",
        },
        "training_data": {
            "sha256": result.data_hash,
            "n_train": result.n_train,
            "n_validation": result.n_val,
            "n_skipped_too_long": result.n_skipped,
            "prompt_shape": result.prompt,
            "system_prompt": result.system_prompt,
        },
        "hyperparameters": result.hyperparameters,
        "training": {
            "steps": result.steps,
            "epochs": result.epochs_run,
            "best_step": result.best_step,
            "best_val_loss": result.best_val_loss,
            "stopped_early": result.stopped_early,
            "train_tokens": result.train_tokens,
            "computed_tokens": result.computed_tokens,
            "batch_layout": result.layout,
            "estimated_seconds": result.estimated_seconds,
            "train_seconds": result.train_seconds,
            "tokens_per_s": result.tokens_per_s,
            "peak_mem_mb": result.peak_mem_mb,
            "device": result.device,
            "compute_dtype": result.compute_dtype,
            "processes": result.world_size,
            "sharded": result.sharded,
        },
        "metrics": {k: _plain(v) for k, v in (metrics or {}).items()},
        "forgetting": _plain(forgetting),
        "date": date or _dt.date.today().isoformat(),
        "rungwise_version": __version__,
    }


def _metric_rows(metrics: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, m in metrics.items():
        d = _plain(m)
        if isinstance(d, Mapping) and {"value", "ci_low", "ci_high"} <= d.keys():
            rows.append(
                f"| {name} | {d.get('name', '')} | {d['value']:.4f} | [{d['ci_low']:.4f}, {d['ci_high']:.4f}] | {d.get('n', '')} |"
            )
        else:
            rows.append(f"| {name} | | {d} | | |")
    return rows


def write_model_card(
    directory: str | Path,
    result: FinetuneResult,
    *,
    metrics: Mapping[str, Any] | None = None,
    forgetting: Any = None,
    task_name: str | None = None,
    date: str | None = None,
) -> Path:
    """Write ``README.md`` and ``provenance.json`` into ``directory`` (the adapter or model
    directory, usually); returns the README path.

    ``metrics`` maps a label (e.g. ``"full prompt"``, ``"minimal prompt"``) to a
    :class:`rungwise.types.MetricValue` (or its dict); ``forgetting`` is a
    :class:`rungwise.train.forgetting.ForgettingResult` (or its dict).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    prov = provenance(result, metrics=metrics, forgetting=forgetting, task_name=task_name, date=date)
    front: dict[str, Any] = {
        "library_name": "peft" if result.adapter_dir else "transformers",
        "base_model": result.base_model_id,
        "tags": ["rungwise", result.method, "fine-tuned"],
        "pipeline_tag": "text-generation",
    }
    hp = result.hyperparameters
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {task_name or 'rungwise'} fine-tune ({result.method})",
        "",
        f"Base model `{result.base_model_id}` (weights sha256 `{prov['base_model']['weights_sha256']}`), "
        f"trained by rungwise {__version__} on {prov['date']}.",
        "",
        "## Training data",
        "",
        f"- {result.n_train} training examples, {result.n_val} held out for validation (early stopping, best "
        f"checkpoint), {result.n_skipped} skipped as longer than max_length; the test split was never used.",
        f"- data sha256 `{result.data_hash}`",
        f"- prompt: {result.prompt} (system prompt {json.dumps(result.system_prompt)}); send the same prompt "
        "when you use the model: it was trained on that shape only",
        "",
        "## Hyperparameters",
        "",
        "| name | value |",
        "|---|---|",
        *[f"| {k} | {json.dumps(v)} |" for k, v in hp.items()],
        "",
        "## Training run",
        "",
        f"{result.steps} steps ({result.epochs_run:g} epochs), best validation loss "
        f"{'n/a' if result.best_val_loss is None else f'{result.best_val_loss:.4f}'} at step {result.best_step}"
        f"{' (stopped early)' if result.stopped_early else ''}; {result.train_tokens:,} tokens in "
        f"{result.train_seconds:.0f} s on {result.device} ({result.compute_dtype}, {result.world_size} process(es){', FSDP2' if result.sharded else ''}), "
        f"{result.tokens_per_s:,.0f} tokens/s, peak memory {result.peak_mem_mb:,.0f} MB.",
        "",
    ]
    if metrics:
        lines += [
            "## Held-out metrics (95% bootstrap CI)",
            "",
            "| evaluation | metric | value | 95% CI | n |",
            "|---|---|---|---|---|",
            *_metric_rows(metrics),
            "",
        ]
    fg = _plain(forgetting)
    if fg:
        head = f"Probe `{fg['probe']}` (n={fg['n']}), scored by choice log-likelihood: base {fg['base_acc']:.1%}"
        if fg.get("tuned_acc") is None:
            body = (f"{head}, not above chance ({fg['chance']:.1%}, p={fg['base_p_above_chance']:.2g}). Inconclusive: "
                    "this probe cannot show what fine-tuning cost the model, so the tuned model was not scored.")
        else:
            warn = " **Warning: general ability dropped beyond the threshold.**" if fg.get("warning") else ""
            body = (f"{head}, tuned {fg['tuned_acc']:.1%}, delta {fg['delta_points']:+.1f} points "
                    f"[{fg['ci_low']:+.1f}, {fg['ci_high']:+.1f}] (p={fg['p_value']:.2g}; warning threshold "
                    f"{fg['threshold_points']:g} points).{warn}")
        lines += ["## Forgetting check", "", body, ""]
    if result.adapter_dir:
        lines += [
            "## Use",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            "",
            f"base = AutoModelForCausalLM.from_pretrained({result.base_model_id!r}, use_safetensors=True)",
            "model = PeftModel.from_pretrained(base, 'path/to/this/adapter')",
            "```",
            "",
        ]
    lines += ["## Provenance", "", "```json", json.dumps(prov, indent=2), "```", ""]
    (d / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    readme = d / "README.md"
    readme.write_text("\n".join(lines))
    return readme
