"""Training data: completion-only labels, the validation slice, the batch plan, config validation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rungwise.config.task import task_from_dict
from rungwise.errors import ConfigError
from rungwise.train.config import FinetuneSpec
from rungwise.train.data import (
    IGNORE,
    collate,
    computed_tokens,
    data_hash,
    encode_example,
    encode_examples,
    example_chat,
    plan_epoch,
    render_prompt,
    shared_prefix_length,
    split_validation,
    system_prompt_for,
)
from rungwise.types import Example


@pytest.fixture(scope="module")
def tok(embedded_checkpoint: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_checkpoint)


def _examples(n: int, labels: int = 4) -> list[Example]:
    return [
        Example(input=f"ticket number {i} " + "word " * (i % 7), output=f"label{i % labels}", label=f"label{i % labels}", source=f"d.jsonl:{i + 1}")
        for i in range(n)
    ]


@pytest.mark.model  # the embedded model's tokenizer (converting its GGUF on first use)
def test_prompt_tokens_are_masked(tok) -> None:
    chat = [{"role": "system", "content": "Route the ticket."}, {"role": "user", "content": "I was charged twice"}]
    enc = encode_example(tok, chat, "billing", 128)
    assert enc is not None
    prompt_ids = tok(render_prompt(tok, chat), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    # Every prompt token is masked, every answer token is labelled with itself.
    assert list(enc.input_ids[:n]) == prompt_ids
    assert all(x == IGNORE for x in enc.labels[:n])
    assert list(enc.labels[n:]) == list(enc.input_ids[n:])
    assert tok.decode(enc.input_ids[n:]) == "billing<|im_end|>"
    assert enc.n_label_tokens == len(enc) - n


@pytest.mark.model  # the embedded model's tokenizer (converting its GGUF on first use)
def test_training_prompt_is_what_the_local_backend_sends(tok) -> None:
    """The model is trained on exactly the token ids the backend feeds it at inference."""
    from rungwise.backends.local import LocalBackend

    class _NoModel:  # LocalBackend's constructor reads generation_config and forward's signature only
        generation_config = None

        def forward(self, input_ids: object = None, cache: object = None) -> None: ...

    b = LocalBackend(_NoModel(), tok)
    chat = example_chat(Example(input="where is my card?", output="card_arrival"), "Classify the intent.")
    enc = encode_example(tok, chat, "card_arrival", 128)
    sent = b._encode(b._render(chat))
    assert list(enc.input_ids[: len(sent)]) == sent
    assert all(x == IGNORE for x in enc.labels[: len(sent)])


@pytest.mark.model  # the embedded model's tokenizer (converting its GGUF on first use)
def test_long_answer_is_cut_and_long_prompt_skipped(tok) -> None:
    chat = [{"role": "user", "content": "hi"}]
    prompt_len = len(tok(render_prompt(tok, chat), add_special_tokens=False)["input_ids"])
    enc = encode_example(tok, chat, "word " * 200, prompt_len + 5)
    assert enc is not None and len(enc) == prompt_len + 5 and enc.n_label_tokens == 5
    assert encode_example(tok, [{"role": "user", "content": "x " * 300}], "a", 64) is None
    encoded, skipped = encode_examples(
        tok, [Example(input="x " * 300, output="a", source="d.jsonl:7"), Example(input="ok", output="b")], "", 64
    )
    assert skipped == ["d.jsonl:7"] and len(encoded) == 1


def test_validation_slice_is_seeded_disjoint_and_spread_over_labels() -> None:
    ex = _examples(200)
    tr, val = split_validation(ex, 0.1, seed=3, vmin=8, vmax=256)
    assert len(val) == 20 and len(tr) == 180
    assert {e.id for e in tr}.isdisjoint({e.id for e in val})
    assert Counter(e.label for e in val) == {f"label{i}": 5 for i in range(4)}
    assert split_validation(ex, 0.1, seed=3, vmin=8, vmax=256) == (tr, val)
    assert split_validation(ex, 0.1, seed=4, vmin=8, vmax=256)[1] != val
    # bounds: at most vmax, and no slice at all for tiny data or fraction 0
    assert len(split_validation(ex, 0.4, seed=0, vmin=8, vmax=30)[1]) == 30
    assert split_validation(ex[:15], 0.1, seed=0, vmin=8, vmax=256) == (ex[:15], [])
    assert split_validation(ex, 0.0, seed=0, vmin=8, vmax=256) == (ex, [])


@pytest.mark.parametrize("world,accum", [(1, 1), (2, 1), (1, 2), (2, 3)])
def test_plan_covers_every_example_once_and_matches_across_world_sizes(world: int, accum: int) -> None:
    lengths = [(i * 37) % 23 + 5 for i in range(101)]
    bs = 4
    steps = plan_epoch(lengths, batch_size=bs, grad_accum=accum, world=world, seed=7, epoch=0)
    seen = [i for s in steps for a in s for part in a for i in part]
    assert len(seen) == len(set(seen))  # no example repeated
    # Nothing dropped, except a last batch too short to give every micro-batch an example.
    rest = 101 % (bs * accum * world)
    assert len(seen) == 101 - (rest if rest < accum * world else 0)
    for s in steps:
        assert len(s) == accum and all(len(a) == world for a in s)
        assert all(part for a in s for part in a)  # no process ever runs an empty micro-batch
    # The same global batches for 1 process x (bs * world) as for `world` processes x bs.
    single = plan_epoch(lengths, batch_size=bs * world, grad_accum=accum, world=1, seed=7, epoch=0)
    as_sets = [sorted(i for a in s for part in a for i in part) for s in steps]
    single_sets = [sorted(i for a in s for part in a for i in part) for s in single]
    # (a short last batch may be dropped for `world` processes and kept for one: fewer micro-batches)
    assert as_sets == single_sets[: len(as_sets)] and len(single_sets) - len(as_sets) <= 1
    # Seeded: same epoch same plan, another epoch another order.
    assert plan_epoch(lengths, batch_size=bs, grad_accum=accum, world=world, seed=7, epoch=0) == steps
    assert plan_epoch(lengths, batch_size=bs, grad_accum=accum, world=world, seed=7, epoch=1) != steps


def test_length_grouping_cuts_padding() -> None:
    import random

    rng = random.Random(0)
    lengths = [rng.randint(10, 200) for _ in range(512)]
    steps = plan_epoch(lengths, batch_size=8, grad_accum=1, world=1, seed=0, epoch=0)
    padded = sum(max(lengths[i] for i in s[0][0]) * len(s[0][0]) for s in steps)
    order = list(range(512))
    rng.shuffle(order)
    random_padded = sum(max(lengths[i] for i in order[j : j + 8]) * 8 for j in range(0, 512, 8))
    assert padded < 0.75 * random_padded
    assert sum(lengths) / padded > 0.9  # under 10% of the compute goes to padding


@pytest.mark.model  # the embedded model's tokenizer (converting its GGUF on first use)
def test_collate_padded_and_packed(tok) -> None:
    encs, _ = encode_examples(tok, _examples(3), "sys", 128)
    padded = collate(encs, tok.pad_token_id)
    assert padded["input_ids"].shape == (3, max(map(len, encs)))
    assert padded["attention_mask"].sum().item() == sum(map(len, encs))
    packed = collate(encs, tok.pad_token_id, "packed")
    assert packed["input_ids"].shape == (1, sum(map(len, encs)))
    assert packed["attention_mask"] is None
    pos = packed["position_ids"][0].tolist()
    assert [i for i, p in enumerate(pos) if p == 0] == [0, len(encs[0]), len(encs[0]) + len(encs[1])]
    # Labels carry the same answer tokens in both layouts.
    assert (padded["labels"] != IGNORE).sum() == (packed["labels"] != IGNORE).sum()


@pytest.mark.model  # the embedded model's tokenizer (converting its GGUF on first use)
def test_collate_shared_prefix_holds_the_prefix_once(tok) -> None:
    encs, _ = encode_examples(tok, _examples(3), "Route every ticket to one team. " * 4, 256)
    p = shared_prefix_length(encs)
    # The system prompt and the user turn's opening are shared; the labelled answer never is.
    assert p > 30 and all(e.first_label > p for e in encs)
    assert all(e.input_ids[:p] == encs[0].input_ids[:p] for e in encs)
    b = collate(encs, tok.pad_token_id, "shared_prefix")
    n = sum(map(len, encs)) - 2 * p
    assert b["input_ids"].shape == (1, n) and computed_tokens(encs, "shared_prefix") == n
    assert computed_tokens(encs, "padded") == 3 * max(map(len, encs))
    # Each remainder continues the positions of the prefix, as in its example alone.
    pos = b["position_ids"][0].tolist()
    assert pos[:p] == list(range(p)) and pos[p : p + len(encs[0]) - p] == list(range(p, len(encs[0])))
    mask = b["attention_mask"][0, 0]
    second = p + len(encs[0]) - p  # first token of the second example's remainder
    assert mask[second, :p].all() and not mask[second, p:second].any() and mask[second, second]
    assert not mask[: p, p:].any()  # the prefix sees nothing after it
    assert (b["labels"] != IGNORE).sum() == sum(e.n_label_tokens for e in encs)


def test_system_prompt_for_each_shape() -> None:
    assert system_prompt_for("minimal", "Route it.", ["a", "b"]) == ""
    full = system_prompt_for("full", "Route it.", ["a", "b"])
    assert full.startswith("Route it.") and "a, b" in full
    assert FinetuneSpec().prompt == "minimal"


def test_data_hash_ignores_order_but_not_content() -> None:
    ex = _examples(10)
    assert data_hash(ex, "s") == data_hash(list(reversed(ex)), "s")
    assert data_hash(ex, "s") != data_hash(ex, "other system prompt")
    assert data_hash(ex, "s") != data_hash(ex[:-1], "s")


def test_finetune_spec_defaults_and_validation() -> None:
    assert FinetuneSpec().lr == 2e-4 and FinetuneSpec(method="full").lr == 2e-5
    assert FinetuneSpec(learning_rate=1e-3).lr == 1e-3
    assert FinetuneSpec().target_modules == "all-linear"
    task = task_from_dict({"name": "t", "data": {"path": "d.jsonl"}})
    assert task.rungs.section("finetune") == FinetuneSpec()
    text = "name: t\ndata:\n  path: d.jsonl\nrungs:\n  finetune:\n    method: lora\n    rank: 8\n"
    import yaml

    with pytest.raises(ConfigError) as e:
        task_from_dict(yaml.safe_load(text), source="task.yaml", text=text)
    assert "task.yaml:7" in str(e.value) and "rungs.finetune.rank" in str(e.value) and "unknown field" in str(e.value)
    for bad in ({"method": "dora"}, {"eval_every": 0}, {"target_modules": []}, {"val_min": 50, "val_max": 10},
                {"prompt": "short"}, {"budget_minutes": 0}, {"max_train_examples": 0}):
        with pytest.raises(ConfigError):
            task_from_dict({"name": "t", "data": {"path": "d.jsonl"}, "rungs": {"finetune": bad}})


def test_every_shipped_task_yaml_accepts_the_finetune_section() -> None:
    from rungwise.config.task import load_task

    root = Path(__file__).resolve().parents[1]
    for p in list((root / "benchmarks").glob("*/task.yaml")) + list((root / "src/rungwise/templates").rglob("task.yaml")):
        assert isinstance(load_task(p).rungs.section("finetune"), FinetuneSpec)
