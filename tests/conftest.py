"""Shared fixtures. Every test gets its own RUNGWISE_HOME, so the run store never leaks between
tests; converted model checkpoints are cached once per machine (RUNGWISE_MODEL_CACHE) because
converting the embedded GGUF takes ~25 s."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
os.environ.setdefault("RUNGWISE_MODEL_CACHE", str(REPO / ".rungwise" / "test-models"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def rungwise_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "rw-home"
    monkeypatch.setenv("RUNGWISE_HOME", str(home))
    return home


#: Fixtures that convert or load the embedded model: only tests marked ``model`` may use them
#: (the session fixtures themselves cannot see which test asked first).
MODEL_FIXTURES = {"embedded_checkpoint", "tiny_llama_dir"}


@pytest.fixture(autouse=True)
def model_loads_only_when_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test loads real model weights only when marked ``@pytest.mark.model`` (rungwise.models
    refuses otherwise, in this process and in the CLI subprocesses it starts)."""
    allowed = request.node.get_closest_marker("model") is not None
    uses = MODEL_FIXTURES & set(request.fixturenames)
    if uses and not allowed:
        pytest.fail(f"{request.node.name} uses {', '.join(sorted(uses))} (a real model) without @pytest.mark.model")
    monkeypatch.setenv("RUNGWISE_ALLOW_MODEL_LOADS", "1" if allowed else "0")


@pytest.fixture(scope="session")
def embedded_checkpoint() -> str:
    """The embedded model converted to plain safetensors (once per machine)."""
    from rungwise import models

    return models.checkpoint_dir(models.resolve("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, embedded_checkpoint: str) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with the embedded model's tokenizer, built from a
    config inside the test: never downloaded. For fast real-model tests of plumbing."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(embedded_checkpoint)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d
