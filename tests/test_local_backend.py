"""The local transformers backend: batching, left padding, prefix cache, stops, scoring, errors.

Plumbing runs on a tiny random Llama built in conftest (fp32, so greedy token ids must match
exactly); one short test loads the real embedded model offline.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rungwise.backends import make_backend  # noqa: E402
from rungwise.backends.local import LocalBackend  # noqa: E402
from rungwise.config.model import model_spec_from  # noqa: E402
from rungwise.errors import BackendError  # noqa: E402
from rungwise.prompting import PromptTemplate  # noqa: E402
from rungwise.types import GenParams  # noqa: E402

pytestmark = pytest.mark.model

SYSTEM = "You sort customer messages into intents. Answer with the intent name only, nothing else."
DEMOS = (("my card has not arrived yet", "card_arrival"), ("how do I change my PIN", "change_pin"))
INPUTS = [
    "where is my card",
    "I want to know the exchange rate for euros to dollars today please",
    "pin blocked",
    "My top up did not go through and I was still charged, what is going on with my account?",
    "hello",
]


def load_tiny(path: Path) -> tuple[object, object]:
    """The tiny Llama with its weights redrawn at std 0.2 (seeded): at the default init (0.02)
    it answers every prompt with the same token, which could not show that answers stay with
    their prompts."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2, generator=gen)
    return model, transformers.AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    # Tiny matrices gain nothing from a second thread, and on a shared machine waiting for a busy
    # core made each call up to 10x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path) -> tuple[object, object]:
    return load_tiny(tiny_llama_dir)


def backend(tiny: tuple[object, object], **kw: object) -> LocalBackend:
    model, tok = tiny
    return LocalBackend(model, tok, model_id="local:tiny", **kw)  # type: ignore[arg-type]


def chats(template: PromptTemplate | None = None) -> list[list[dict[str, str]]]:
    t = template or PromptTemplate(SYSTEM, DEMOS)
    return [t.render([{"role": "user", "content": x}]) for x in INPUTS]


def texts(completions: list) -> list[str]:
    return [c.text for c in completions]


P = GenParams(max_tokens=12, stop=())


def test_batched_left_padding_matches_batch_of_one_in_order(tiny: tuple[object, object]) -> None:
    prompts = chats()
    one_by_one = [backend(tiny, batch_size=1, prefix_cache=False).generate([p], P)[0] for p in prompts]
    batched = backend(tiny, batch_size=3, prefix_cache=False).generate(prompts, P)
    assert len(set(texts(one_by_one))) > 1  # different prompts give different answers, so order is checked
    assert texts(batched) == texts(one_by_one)
    assert [c.completion_tokens for c in batched] == [c.completion_tokens for c in one_by_one]


def test_prefix_cache_gives_identical_greedy_output(tiny: tuple[object, object]) -> None:
    prompts = chats()
    plain = backend(tiny, batch_size=2, prefix_cache=False).generate(prompts, P)
    b = backend(tiny, batch_size=2, prefix_cache=True)
    cached = b.generate(prompts, P)
    assert texts(cached) == texts(plain)
    assert [c.prompt_tokens for c in cached] == [c.prompt_tokens for c in plain]
    assert all(c.cached_tokens == 0 for c in plain)
    # The cached prefix ends exactly after the demo block (a message boundary), not inside an input.
    _, tok = tiny
    demo_block = PromptTemplate(SYSTEM, DEMOS).prefix()
    expect = len(tok(tok.apply_chat_template(demo_block, tokenize=False), add_special_tokens=False)["input_ids"])
    assert {c.cached_tokens for c in cached} == {expect}
    # A later call with the same demos reuses the prefix instead of recomputing it.
    (entry,) = b._prefixes.values()
    again = b.generate(prompts[:2], P)
    assert texts(again) == texts(plain)[:2]
    assert list(b._prefixes.values()) == [entry]


@pytest.mark.parametrize("prefix", [False, True])
def test_fast_attention_and_dynamic_cache_paths_answer_like_stock_sdpa(tiny: tuple[object, object], prefix: bool) -> None:
    model, _ = tiny
    prompts = chats()
    stock = backend(tiny, batch_size=3, prefix_cache=prefix, fast_attention=False).generate(prompts, P)
    fast = backend(tiny, batch_size=3, prefix_cache=prefix)
    assert fast._fast_attention  # the tiny model has grouped-query heads (4 query, 2 key/value)
    assert texts(fast.generate(prompts, P)) == texts(stock)
    assert model.config._attn_implementation == "sdpa"  # restored after the call
    # The DynamicCache path, as for a model whose layers a StaticCache cannot describe.
    dynamic = backend(tiny, batch_size=3, prefix_cache=prefix, static_cache=False)
    assert texts(dynamic.generate(prompts, P)) == texts(stock)
    choices = [["card_arrival", "x"]] * len(prompts)
    a = fast.loglikelihood(prompts, choices)
    b = backend(tiny, prefix_cache=prefix, fast_attention=False).loglikelihood(prompts, choices)
    assert [x for row in a for x in row] == pytest.approx([x for row in b for x in row], abs=1e-4)


def test_generation_and_scoring_raise_no_deprecation_noise(tiny: tuple[object, object]) -> None:
    """Issue 12 item 15: every climb printed transformers' "`past_key_values` is deprecated"
    FutureWarning (and its logger's once-per-process variant for ``out.past_key_values``)."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.warning_once.cache_clear()  # a once-only message shown earlier in this process shows again
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    hf_root = logging.getLogger("transformers")
    hf_root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prompts = chats()[:3]
            for kw in ({}, {"static_cache": False}):  # the static and the dynamic prefix-cache paths
                b = backend(tiny, batch_size=2, **kw)
                b.generate(prompts, P)
                b.loglikelihood(prompts, [["card_arrival", "change_pin"]] * 3)
    finally:
        hf_root.removeHandler(handler)
    noise = [f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert noise == []
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []


def test_prefix_cache_is_recomputed_after_weights_change(tiny_llama_dir: Path) -> None:
    # Own copy of the model: this test edits its weights in place, as an optimizer step would.
    model, tok = load_tiny(tiny_llama_dir)
    b = LocalBackend(model, tok, batch_size=4)
    prompts = chats()
    b.generate(prompts, P)
    with torch.no_grad():
        for p in model.model.layers[0].parameters():
            p.mul_(3.0)
    after = b.generate(prompts, P)
    fresh = LocalBackend(model, tok, batch_size=4, prefix_cache=False).generate(prompts, P)
    assert texts(after) == texts(fresh)


def test_zero_shot_prompts_share_only_the_system_turn(tiny: tuple[object, object]) -> None:
    prompts = chats(PromptTemplate(SYSTEM * 2))
    b = backend(tiny, batch_size=4)
    out = b.generate(prompts, P)
    assert texts(out) == texts(backend(tiny, batch_size=4, prefix_cache=False).generate(prompts, P))
    _, tok = tiny
    sys_len = len(tok(tok.apply_chat_template(prompts[0][:1], tokenize=False), add_special_tokens=False)["input_ids"])
    assert {c.cached_tokens for c in out} == {sys_len}


def test_stop_sequences_cut_the_text_and_end_generation_early(tiny: tuple[object, object]) -> None:
    b = backend(tiny, batch_size=5)
    prompts = chats()
    full = b.generate(prompts, GenParams(max_tokens=16))
    # A stop string taken from the middle of the first answer.
    first = full[0].text
    stop = first[len(first) // 2 : len(first) // 2 + 2]
    assert stop.strip(), first
    cut = b.generate(prompts, GenParams(max_tokens=16, stop=(stop,)))
    for f, c in zip(full, cut, strict=True):
        expect = f.text[: f.text.index(stop)] if stop in f.text else f.text
        assert c.text == expect
    assert cut[0].finish_reason == "stop" and full[0].finish_reason == "length"
    assert cut[0].completion_tokens < full[0].completion_tokens
    # Generation ends at the stop: one forward pass per generated token, none after it.
    model, _ = tiny
    calls: list[int] = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        (one,) = backend(tiny, prefix_cache=False).generate(prompts[:1], GenParams(max_tokens=16, stop=(stop,)))
    finally:
        hook.remove()
    assert one.text == cut[0].text
    assert len(calls) == one.completion_tokens < 16


def test_token_counts_and_latency(tiny: tuple[object, object]) -> None:
    _, tok = tiny
    b = backend(tiny, batch_size=2)
    prompts = chats()
    out = b.generate(prompts, GenParams(max_tokens=7))
    for chat, c in zip(prompts, out, strict=True):
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert c.prompt_tokens == len(tok(text, add_special_tokens=False)["input_ids"])
        assert 1 <= c.completion_tokens <= 7
        assert c.latency_s > 0
    assert b.count_tokens("hello world") == len(tok("hello world", add_special_tokens=False)["input_ids"])
    seen: list[int] = []
    b.generate(prompts, GenParams(max_tokens=2), progress=seen.append)
    assert sum(seen) == len(prompts) and len(seen) == 3  # one call per batch of 2


def _manual_logprob(tiny: tuple[object, object], chat: list[dict[str, str]], choice: str) -> float:
    """The reference: one plain forward pass over prompt + choice, no batching or cache."""
    model, tok = tiny
    ctx_text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ctx = tok(ctx_text, add_special_tokens=False)["input_ids"]
    full = tok(ctx_text + choice, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
    return float(sum(logp[i - 1, full[i]] for i in range(len(ctx), len(full))))


def test_loglikelihood_matches_a_plain_forward_and_ranks_like_greedy(tiny: tuple[object, object]) -> None:
    model, tok = tiny
    prompts = chats()[:3]
    b = backend(tiny, batch_size=2)
    greedy = b.generate(prompts, GenParams(max_tokens=4))
    choices = [[g.text, "card_arrival", "zzz", ""] for g in greedy]
    got = b.loglikelihood(prompts, choices)
    no_cache = backend(tiny, batch_size=3, prefix_cache=False).loglikelihood(prompts, choices)
    for p, cs, row, row2 in zip(prompts, choices, got, no_cache, strict=True):
        assert row[-1] == 0.0  # the empty choice
        for c, v, v2 in zip(cs, row, row2, strict=True):
            assert v == pytest.approx(_manual_logprob(tiny, p, c), abs=1e-3)
            assert v == pytest.approx(v2, abs=1e-3)
    # Single-token choices (scored from one row per prompt) rank like the model's next-token
    # logits, and the best of them is what greedy generation answers first.
    for p in prompts:
        ctx_text = tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        ctx = tok(ctx_text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            top = model(torch.tensor([ctx])).logits[0, -1].topk(20).indices.tolist()
        # Tokens whose text re-tokenizes to the same single token after the prompt.
        cands = [t for t in top if tok(ctx_text + tok.decode([t]), add_special_tokens=False)["input_ids"] == ctx + [t]][:4]
        assert len(cands) >= 2
        scores = b.loglikelihood([p], [[tok.decode([t]) for t in cands]])[0]
        assert scores == sorted(scores, reverse=True)
        if cands[0] == top[0]:
            assert b.generate([p], GenParams(max_tokens=1))[0].text == tok.decode([cands[0]])
    assert b.loglikelihood([], []) == []
    with pytest.raises(BackendError):
        b.loglikelihood(prompts, choices[:1])


def test_bad_prompts_and_context_overflow_raise_backend_errors(tiny: tuple[object, object]) -> None:
    b = backend(tiny)
    assert b.generate([], P) == []
    with pytest.raises(BackendError, match="prompt 0"):
        b.generate([[{"content": "no role"}]], P)  # type: ignore[list-item]
    with pytest.raises(BackendError, match="context") as exc:
        b.generate([[{"role": "user", "content": "word " * 2100}]], P)
    assert exc.value.hint and "shorten" in exc.value.hint


def test_missing_models_raise_backend_error_with_hint(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as exc:
        LocalBackend.load(str(tmp_path / "no-such-model"))
    assert exc.value.hint
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BackendError, match="not a model directory") as exc:
        make_backend(model_spec_from(dict(id=str(empty))))
    assert exc.value.hint
    # A hub id cannot be fetched here (HF_HUB_OFFLINE=1, no network): a clear error, not a traceback.
    with pytest.raises(BackendError, match="cannot load model") as exc:
        LocalBackend.load("nobody-here/no-such-model-xyz")
    assert "local directory" in (exc.value.hint or "")


def test_embedded_model_loads_offline_and_answers() -> None:
    spec = model_spec_from(dict(params={"max_tokens": 12}))
    b = make_backend(spec)
    assert isinstance(b, LocalBackend)
    assert b.model_id.startswith("local:smollm2-135m-instruct@")
    (c,) = b.generate([[{"role": "user", "content": "What is the capital of France?"}]], spec.params.to_params())
    assert "Paris" in c.text
    assert c.finish_reason in ("stop", "length") and c.completion_tokens <= 12
