"""Weights trained elsewhere (Axolotl, TRL, LLaMA-Factory, a notebook): what a directory holds,
the content hash of every file that decides the answers, and whether it fits the task's base
model, all without loading the base model's weights.

Two forms are accepted, safetensors only (a pickle can run code when it is loaded, so ``.bin``
weights are refused, never opened):

- a PEFT LoRA adapter (DoRA included): ``adapter_config.json`` + ``adapter_model.safetensors``;
- a merged full model: ``config.json`` + ``*.safetensors`` (sharded with its index) + its tokenizer.

The fit is checked the way PEFT checks it when it loads an adapter, on an empty copy of the base
built from its ``config.json`` on the ``meta`` device (no memory, no weights read): PEFT injects
the adapter's layers and loads its tensors, and raises when a target module is missing or a
shape differs. A merged model fits when its parameters have the base's names and shapes.

Example:
    >>> wd = inspect_weights_dir(Path("adapters/tickets"), "rungs.adapter.path")  # doctest: +SKIP
    >>> wd.form, wd.recorded_base  # doctest: +SKIP
    ('adapter', 'HuggingFaceTB/SmolLM2-135M-Instruct')
    >>> check_fits_base(wd, "/models/smollm2", "rungs.adapter.path")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rungwise import models
from rungwise._deps import require
from rungwise.errors import ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"

#: Files of a merged model besides config and weights that change its answers (the tokenizer and
#: chat template, the generation defaults).
_MODEL_EXTRAS = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json",
                 "merges.txt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

#: What a user does with each form (every error's hint ends with it).
_FORMS = ("a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) or a merged model directory "
          "(config.json + *.safetensors + tokenizer)")


@dataclass(frozen=True)
class WeightsDir:
    """A checked directory of weights trained elsewhere: its form, the files that decide its
    answers (hashed) and, for an adapter, its PEFT config."""

    path: Path
    form: Literal["adapter", "merged"]
    files: tuple[str, ...]
    adapter_config: dict[str, Any] | None = None

    @property
    def recorded_base(self) -> str | None:
        """The base model the adapter says it was trained on (``base_model_name_or_path``)."""
        value = (self.adapter_config or {}).get("base_model_name_or_path")
        return str(value) if value else None

    def hashes(self) -> dict[str, str]:
        """sha256 of each file that decides the answers, by file name."""
        return {name: models.file_sha256(self.path / name) for name in self.files}

    def changed(self, recorded: dict[str, str]) -> list[str]:
        """Files whose content differs from ``recorded`` (an earlier :meth:`hashes`): edited,
        added or gone, by name."""
        now = self.hashes()
        return sorted(n for n in set(now) | set(recorded) if now.get(n) != recorded.get(n))


def inspect_weights_dir(path: Path, field: str) -> WeightsDir:
    """Check that ``path`` is a PEFT adapter or a merged model in safetensors; ``field`` names the
    task.yaml setting in messages. Reads only small JSON files.

    Raises:
        ConfigError: missing, not a directory, pickle-only weights, not a LoRA adapter for a
            causal LM, or a merged model without weights or tokenizer.
    """
    if not path.exists():
        raise ConfigError(f"task.yaml {field}: {path} does not exist",
                          hint=f"set {field} to {_FORMS}, relative to task.yaml's folder")
    if not path.is_dir():
        raise ConfigError(f"task.yaml {field}: {path} is a file, not a directory",
                          hint=f"point {field} at the folder that holds it: {_FORMS}")
    if (path / ADAPTER_CONFIG).exists():
        return _adapter(path, field)
    if (path / MODEL_CONFIG).exists():
        return _merged(path, field)
    present = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
    raise ConfigError(f"task.yaml {field}: {path} is neither a PEFT adapter nor a model directory (it holds {present})",
                      hint=f"point {field} at {_FORMS}; a trainer's output folder may keep them in a subfolder "
                      "such as checkpoint-*/ or adapter/")


def _refuse_pickle(path: Path, field: str, pickles: list[str], what: str) -> ConfigError:
    return ConfigError(
        f"task.yaml {field}: {path} has {what} only as pickle files ({', '.join(pickles[:3])}); rungwise never loads "
        "pickles (loading one can run any code)",
        hint="convert them where you trained, e.g. `model.save_pretrained(dir, safe_serialization=True)` (PEFT and "
        "transformers write safetensors by default), and point the path at the new folder",
    )


def _adapter(path: Path, field: str) -> WeightsDir:
    if not (path / ADAPTER_WEIGHTS).exists():
        pickles = sorted(p.name for p in path.glob("adapter_model*.bin"))
        if pickles:
            raise _refuse_pickle(path, field, pickles, "the adapter weights")
        raise ConfigError(f"task.yaml {field}: {path} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}",
                          hint="copy the adapter's weights file next to its config (PEFT saves both together)")
    try:
        cfg = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path / ADAPTER_CONFIG}: not valid JSON ({exc})",
                          hint="restore the file PEFT wrote with the adapter") from None
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ConfigError(
            f"task.yaml {field}: {path} is a PEFT {peft_type or 'unknown-type'} adapter; the adapter rung scores "
            "LoRA adapters (DoRA included)",
            hint="merge it into the base where you trained it (`model.merge_and_unload().save_pretrained(dir)`) and "
            "point the path at the merged model",
        )
    task_type = cfg.get("task_type")
    if task_type not in (None, "CAUSAL_LM"):
        raise ConfigError(f"task.yaml {field}: {path} adapts a {task_type} model; rungwise generates with causal LMs",
                          hint="train the adapter with task_type CAUSAL_LM (what SFT trainers do)")
    return WeightsDir(path, "adapter", (ADAPTER_CONFIG, ADAPTER_WEIGHTS), cfg)


def _merged(path: Path, field: str) -> WeightsDir:
    weights = sorted(p.name for p in path.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in path.glob("pytorch_model*.bin"))
        if pickles:
            raise _refuse_pickle(path, field, pickles, "the model weights")
        raise ConfigError(f"task.yaml {field}: {path} has {MODEL_CONFIG} but no *.safetensors weights",
                          hint=f"point {field} at {_FORMS}")
    if not any((path / t).exists() for t in _TOKENIZER_FILES):
        raise ConfigError(f"task.yaml {field}: the merged model in {path} has no tokenizer",
                          hint="save the tokenizer next to it where you trained (`tokenizer.save_pretrained(dir)`)")
    extras = [name for name in _MODEL_EXTRAS if (path / name).exists()]
    index = sorted(p.name for p in path.glob("*.safetensors.index.json"))
    return WeightsDir(path, "merged", (MODEL_CONFIG, *weights, *index, *extras))


def model_name(ref: str) -> str:
    """The comparable name of a model reference: its last path part (the repository name of a
    hub id or a hub-cache folder), lowercased, without ``.gguf``; the embedded default's aliases
    all name it.

    >>> model_name("/scratch/me/models/Llama-3.2-1B-Instruct/")
    'llama-3.2-1b-instruct'
    >>> model_name("HuggingFaceTB/SmolLM2-135M-Instruct") == model_name("smollm2")
    True
    >>> model_name("~/.cache/huggingface/hub/models--Qwen--Qwen2.5-0.5B/snapshots/4f1e2a")
    'qwen2.5-0.5b'
    """
    if ref.lower() in models.EMBEDDED_IDS:
        return "smollm2-135m-instruct"
    parts = [p for p in re.split(r"[/\\]", ref) if p]
    cached = [p for p in parts if p.startswith("models--")]
    name = cached[-1].split("--")[-1] if cached else (parts[-1] if parts else ref)
    name = name.lower()
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


def _meta_model(config_dir: str, trust_remote_code: bool) -> Any:
    """An empty copy of a causal LM built from its config on the meta device (no weights)."""
    torch = require("torch")
    transformers = require("transformers")
    config = transformers.AutoConfig.from_pretrained(config_dir, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def check_fits_base(wd: WeightsDir, base_dir: str, field: str, *, trust_remote_code: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``wd``'s weights fit the base model whose checkpoint
    (``config.json``) is in ``base_dir``: PEFT's own loading on an empty copy of the base for an
    adapter, the same parameter names and shapes for a merged model."""
    base = _meta_model(base_dir, trust_remote_code)
    if wd.form == "merged":
        _check_same_shapes(wd, base, _meta_model(str(wd.path), trust_remote_code), field)
        return
    peft = require("peft")
    from rungwise.train.trainer import peft_reads_deprecated_alias

    try:
        with peft_reads_deprecated_alias():
            peft.PeftModel.from_pretrained(base, str(wd.path), is_trainable=False, low_cpu_mem_usage=True)
    except (RuntimeError, ValueError) as exc:  # torch's size mismatch; PEFT's missing target modules
        raise ConfigError(
            f"task.yaml {field}: the adapter in {wd.path} does not fit the task's model ({_peft_finding(exc)})",
            hint="set model.id to the base model the adapter was trained on"
            + (f" (the adapter records {wd.recorded_base})" if wd.recorded_base else ""),
        ) from None


def _peft_finding(exc: Exception) -> str:
    """PEFT's complaint in one line: the first two size mismatches (of often hundreds), else its
    first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    mismatches = [ln for ln in lines if ln.startswith("size mismatch")]
    if not mismatches:
        return lines[0] if lines else type(exc).__name__
    more = f" (and {len(mismatches) - 2} more)" if len(mismatches) > 2 else ""
    return "; ".join(mismatches[:2]) + more


def _check_same_shapes(wd: WeightsDir, base: Any, merged: Any, field: str) -> None:
    want = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in merged.state_dict().items()}
    diffs = [f"{k}: base {want.get(k)}, merged {got.get(k)}" for k in sorted(set(want) | set(got))
             if want.get(k) != got.get(k)]
    if diffs:
        raise ConfigError(
            f"task.yaml {field}: the merged model in {wd.path} is not the task's model with other weights "
            f"({len(diffs)} parameter(s) differ: {'; '.join(diffs[:2])})",
            hint="set model.id to the base model it was fine-tuned from (the forgetting check compares the two)",
        )
