"""Training data: chat-template tokenization with completion-only labels, the validation slice,
and the batch plan (length-grouped or packed, identical for 1 or N processes).

Every example is rendered exactly as the backends render a prompt (the model's chat template
with ``add_generation_prompt=True``), followed by the expected answer and the template's
end-of-turn token. Only the answer tokens carry labels; the prompt is masked with -100, so the
model learns to answer, not to repeat the instructions.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rungwise import prompting
from rungwise.prompting import PromptTemplate
from rungwise.train.config import PromptShape, finetune_spec
from rungwise.types import Chat, Example

IGNORE = -100  # label value that cross-entropy skips


@dataclass(frozen=True)
class Encoded:
    """One tokenized training example. ``labels`` is -100 on every prompt token."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    source: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)

    @property
    def first_label(self) -> int:
        """Index of the first labelled token (the length when none is labelled)."""
        return next((i for i, x in enumerate(self.labels) if x != IGNORE), len(self.labels))


def _ids(tokenizer: Any, text: str) -> list[int]:
    # The chat template already wrote the special tokens (BOS, <|im_start|>...): add none.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompt(tokenizer: Any, chat: Chat) -> str:
    """The prompt text the model sees before it answers (what the local backend sends)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    # Base models without a chat template: the plain transcript the local backend uses.
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in chat) + "assistant:"


def encode_example(tokenizer: Any, chat: Chat, answer: str, max_length: int, source: str = "") -> Encoded | None:
    """Tokenize ``chat`` + ``answer``; labels only on the answer and its end-of-turn token.

    The answer tokens are taken from the full chat rendered with the answer as the assistant
    turn, so they are exactly what the template produces (whitespace, end-of-turn marker); the
    template's text after the end-of-sequence token is dropped. Returns None when the prompt
    alone does not fit in ``max_length``; a long answer is cut at the end.

    Example:
        >>> enc = encode_example(tok, [{"role": "user", "content": "hi"}], "hello", 64)  # doctest: +SKIP
        >>> enc.labels[0]
        -100
    """
    prompt_text = render_prompt(tokenizer, chat)
    prompt = _ids(tokenizer, prompt_text)
    eos = tokenizer.eos_token_id
    completion: list[int] | None = None
    if getattr(tokenizer, "chat_template", None):
        full_text = tokenizer.apply_chat_template([*chat, {"role": "assistant", "content": answer}], tokenize=False)
        if full_text.startswith(prompt_text):
            full = _ids(tokenizer, full_text)
            if full[: len(prompt)] == prompt:
                completion = full[len(prompt) :]
                if eos is not None and eos in completion:
                    completion = completion[: completion.index(eos) + 1]
    if completion is None or not completion:
        # Templates that rewrite earlier turns (e.g. strip reasoning) break the prefix property:
        # fall back to prompt + answer + EOS, which is what generation produces anyway.
        completion = _ids(tokenizer, answer) + ([eos] if eos is not None else [])
    if len(prompt) >= max_length:
        return None
    completion = completion[: max_length - len(prompt)]
    ids = prompt + completion
    labels = [IGNORE] * len(prompt) + completion
    return Encoded(tuple(ids), tuple(labels), source)


def system_prompt_for(shape: PromptShape, instructions: str, labels: Sequence[str] | None) -> str:
    """The system prompt a fine-tune is trained on, and scored with, for a prompt ``shape``.

    ``full``: the task's instructions and label list, what the prompting rungs send. ``minimal``:
    none at all (the model's chat template may still add its own default system turn), so that
    the weights, not the prompt, carry the task.

    >>> system_prompt_for("minimal", "Route the ticket.", ["billing", "bug"])
    ''
    >>> print(system_prompt_for("full", "Route the ticket.", ["billing", "bug"]))
    Route the ticket.
    <BLANKLINE>
    Answer with exactly one label from this list and nothing else: billing, bug
    """
    return prompting.system_prompt(instructions, labels) if shape == "full" else ""


def training_system_prompt(task: Any) -> str:
    """The system prompt the task's fine-tune trains on and is scored with (``rungs.finetune.prompt``).

    Example:
        >>> training_system_prompt(task)  # doctest: +SKIP
        ''
    """
    return system_prompt_for(finetune_spec(task).prompt, task.instructions, task.labels)


def example_chat(ex: Example, system_prompt: str) -> Chat:
    """The conversation a rung sends for ``ex`` (system prompt + the example's own turns)."""
    return PromptTemplate(system_prompt).for_example(ex)


def encode_examples(
    tokenizer: Any, examples: Sequence[Example], system_prompt: str, max_length: int
) -> tuple[list[Encoded], list[str]]:
    """Encode every example; returns (encoded, sources of skipped examples)."""
    out: list[Encoded] = []
    skipped: list[str] = []
    for i, ex in enumerate(examples):
        enc = encode_example(tokenizer, example_chat(ex, system_prompt), ex.output, max_length, ex.source or f"#{i}")
        if enc is None:
            skipped.append(ex.source or f"#{i}")
        else:
            out.append(enc)
    return out, skipped


def data_hash(examples: Sequence[Example], system_prompt: str) -> str:
    """SHA-256 of the training data as trained on (order-independent; system prompt included)."""
    h = hashlib.sha256(system_prompt.encode())
    for eid in sorted(ex.id for ex in examples):
        h.update(eid.encode())
    return h.hexdigest()


def validation_size(n: int, fraction: float, *, vmin: int, vmax: int) -> int:
    """How many of ``n`` train examples :func:`split_validation` holds out.

    >>> validation_size(10_003, 0.1, vmin=8, vmax=256), validation_size(417, 0.1, vmin=8, vmax=256)
    (256, 42)
    """
    if fraction <= 0 or n < 2 * vmin:
        return 0
    return min(vmax, max(vmin, round(n * fraction)))


def split_validation(
    examples: Sequence[Example], fraction: float, *, seed: int, vmin: int, vmax: int
) -> tuple[list[Example], list[Example]]:
    """Carve a seeded validation slice from the train split (stratified by label when there are
    labels). No slice (and no early stopping) when there are fewer than ``2 * vmin`` examples or
    ``fraction`` is 0."""
    n = len(examples)
    k = validation_size(n, fraction, vmin=vmin, vmax=vmax)
    if k == 0:
        return list(examples), []
    rng = random.Random(seed)
    labelled = all(ex.label is not None or ex.output for ex in examples)
    if not labelled:  # pragma: no cover - every Example has an output
        order = list(range(n))
        rng.shuffle(order)
        val_idx = set(order[:k])
    else:
        # Round-robin over shuffled label groups, so that the validation slice spreads over labels.
        groups: dict[str, list[int]] = defaultdict(list)
        for i, ex in enumerate(examples):
            groups[ex.label if ex.label is not None else ex.output].append(i)
        keys = sorted(groups)
        rng.shuffle(keys)
        for key in keys:
            rng.shuffle(groups[key])
        # A label with a single example stays in train: validating on it teaches nothing.
        pools = [groups[key][:-1] for key in keys]
        val: list[int] = []
        depth = 0
        while len(val) < k and any(depth < len(p) for p in pools):
            for p in pools:
                if depth < len(p) and len(val) < k:
                    val.append(p[depth])
            depth += 1
        if len(val) < k:  # too few repeated labels: top up at random
            rest = [i for i in range(n) if i not in set(val)]
            rng.shuffle(rest)
            val.extend(rest[: k - len(val)])
        val_idx = set(val)
    train = [ex for i, ex in enumerate(examples) if i not in val_idx]
    valid = [ex for i, ex in enumerate(examples) if i in val_idx]
    return train, valid


# -- the batch plan ---------------------------------------------------------------------------

Step = list[list[list[int]]]  # [accumulation micro-step][process rank] -> example indices


def plan_epoch(
    lengths: Sequence[int], *, batch_size: int, grad_accum: int, world: int, seed: int, epoch: int
) -> list[Step]:
    """The optimizer steps of one epoch, the same on every process and for any ``world`` size
    with the same global batch.

    Length grouping (as HF ``group_by_length``): shuffle, cut into mega-batches of 16 global
    batches, sort each by length, cut into global batches, shuffle their order. A global batch
    of ``batch_size * grad_accum * world`` examples is cut into contiguous (similar-length)
    micro-batches; micro-batch ``j`` goes to accumulation step ``j // world``, rank ``j % world``.
    A short last batch is spread evenly; it is dropped only when it has fewer examples than
    micro-batches (a process would have nothing to run).
    """
    n = len(lengths)
    g = batch_size * grad_accum * world
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(n))
    rng.shuffle(order)
    mega = g * 16
    batches: list[list[int]] = []
    for s in range(0, n, mega):
        chunk = sorted(order[s : s + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[j : j + g] for j in range(0, len(chunk), g))
    # Short batches (the tail of a mega-batch) go last, so that every earlier step is full.
    full = [b for b in batches if len(b) == g]
    short = [b for b in batches if len(b) < g]
    rng.shuffle(full)
    accum_world = grad_accum * world
    steps: list[Step] = []
    for b in full + short:
        if len(b) < accum_world:
            continue
        # contiguous, as even as possible
        q, r = divmod(len(b), accum_world)
        micro, pos = [], 0
        for j in range(accum_world):
            size = q + (1 if j < r else 0)
            micro.append(b[pos : pos + size])
            pos += size
        steps.append([[micro[a * world + rank] for rank in range(world)] for a in range(grad_accum)])
    return steps


#: How a micro-batch is laid out for the model (see :func:`collate`).
Layout = Literal["padded", "packed", "shared_prefix"]


def shared_prefix_length(batch: Sequence[Encoded]) -> int:
    """Tokens every example of ``batch`` starts with that can be computed once for all of them.

    The longest common prefix of the token ids, cut so that every labelled token is still
    predicted from a position of its own example: a prefix never reaches the position before an
    answer token (the answer starts later in every example anyway: the input differs).

    Example:
        >>> a = Encoded((1, 2, 3, 4, 5), (IGNORE, IGNORE, IGNORE, 4, 5))
        >>> b = Encoded((1, 2, 3, 9, 5), (IGNORE, IGNORE, IGNORE, IGNORE, 5))
        >>> shared_prefix_length([a, b])
        2
    """
    if not batch:
        return 0
    # commonprefix compares the lexicographically smallest and largest sequences: C-speed min/max.
    n = len(os.path.commonprefix([e.input_ids for e in batch]))  # type: ignore[type-var]
    for e in batch:
        n = min(n, e.first_label - 1)
    return max(n, 0)


def collate(batch: Sequence[Encoded], pad_id: int, layout: Layout = "padded") -> dict[str, Any]:
    """Tensors for one micro-batch, in one of three layouts that give the same loss.

    - ``padded``: a right-padded [B, L] matrix with an attention mask.
    - ``packed``: one row with the examples back to back and ``position_ids`` restarting at 0
      for each; with no attention mask, transformers derives a block-diagonal causal mask from
      the position resets, so no example attends to another (checked by a test).
    - ``shared_prefix``: one row holding the batch's common prefix (system prompt, label list)
      once, then each example's remainder. A boolean [1, 1, T, T] mask lets every remainder
      attend to the prefix and, causally, to itself only; positions continue from the prefix as
      in the example alone. Each example sees exactly the keys and values it would see alone, so
      the loss and the gradients are those of the padded layout (gradients from every example
      flow back through the one prefix computation), while the prefix is computed once per
      micro-batch instead of once per example.

    Example:
        >>> b = collate(encoded[:8], tok.pad_token_id, "shared_prefix")  # doctest: +SKIP
        >>> b["attention_mask"].shape  # doctest: +SKIP
        torch.Size([1, 1, 912, 912])
    """
    torch = __import__("torch")
    if layout == "packed":
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for e in batch:
            ids.extend(e.input_ids)
            # The first token of every example predicts nothing from the one before it.
            labels.extend((IGNORE, *e.labels[1:]))
            pos.extend(range(len(e)))
        return {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([pos]),
            "attention_mask": None,
        }
    if layout == "shared_prefix":
        p = shared_prefix_length(batch)
        ids = list(batch[0].input_ids[:p])
        labels = [IGNORE] * p
        pos = list(range(p))
        segment = [0] * p  # 0: the shared prefix; k: example k
        for k, e in enumerate(batch, 1):
            ids.extend(e.input_ids[p:])
            # labels[p] is IGNORE (p < first label), so no example predicts from the one before it.
            labels.extend(e.labels[p:])
            pos.extend(range(p, len(e)))
            segment.extend([k] * (len(e) - p))
        seg = torch.tensor(segment)
        idx = torch.arange(len(seg))
        causal = idx[None, :] <= idx[:, None]
        visible = (seg[None, :] == 0) | (seg[None, :] == seg[:, None])
        return {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([pos]),
            "attention_mask": (causal & visible)[None, None],
        }
    width = max(len(e) for e in batch)
    ids_t = torch.full((len(batch), width), pad_id, dtype=torch.long)
    lab_t = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    att_t = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e)
        ids_t[i, :n] = torch.tensor(e.input_ids)
        lab_t[i, :n] = torch.tensor(e.labels)
        att_t[i, :n] = 1
    return {"input_ids": ids_t, "labels": lab_t, "position_ids": None, "attention_mask": att_t}


def computed_tokens(batch: Sequence[Encoded], layout: Layout) -> int:
    """Tokens the model computes for ``batch`` in ``layout`` (padding included, a shared prefix once).

    Example:
        >>> computed_tokens(encoded[:8], "padded")  # doctest: +SKIP
        5120
    """
    if layout == "padded":
        return len(batch) * max(len(e) for e in batch)
    total = sum(len(e) for e in batch)
    if layout == "shared_prefix":
        total -= (len(batch) - 1) * shared_prefix_length(batch)
    return total


def label_tokens(batch: Sequence[Encoded]) -> int:
    """Tokens that carry a label (the loss is averaged over these, across the global batch)."""
    return sum(e.n_label_tokens for e in batch)


def to_jsonl_records(examples: Sequence[Example], system_prompt: str) -> list[dict[str, Any]]:
    """Chat records (system + user turns + the expected assistant answer), as trained on."""
    return [
        {"messages": [*example_chat(ex, system_prompt), {"role": "assistant", "content": ex.output}], "source": ex.source}
        for ex in examples
    ]


def write_jsonl(path: Any, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


__all__ = [
    "IGNORE",
    "Encoded",
    "Layout",
    "collate",
    "computed_tokens",
    "data_hash",
    "encode_example",
    "encode_examples",
    "example_chat",
    "label_tokens",
    "plan_epoch",
    "render_prompt",
    "shared_prefix_length",
    "split_validation",
    "system_prompt_for",
    "to_jsonl_records",
    "training_system_prompt",
]
