"""``rungwise export``: the training data and the tuned model in the formats other tools take.

- ``openai``: chat-format JSONL for hosted fine-tuning, validated against the service's rules
  (one JSON object per line with a ``messages`` list; roles system/user/assistant/tool; string
  content; at least one non-empty assistant message; a token limit per example; at least 10
  examples), with a token count and a training-cost estimate.
- ``alpaca``: ``{instruction, input, output[, history]}`` (Axolotl ``type: alpaca``, LLaMA-Factory
  ``formatting: alpaca``). ``instruction`` holds the system prompt, ``input`` the user's text.
- ``sharegpt``: ``{conversations: [{from: system|human|gpt, value}]}`` (Axolotl / LLaMA-Factory
  ``formatting: sharegpt``; both read a leading ``system`` turn as the system prompt).
- ``merged``: the base model with the adapter merged in, as safetensors (a full fine-tune is
  saved as is), loadable by any transformers-based server.

Sources: a fine-tune output directory (it keeps the exact examples it trained on), a task.yaml
(its train split), a run id from the run store, or a chat JSONL file (validate with ``check``).

Example:
    >>> report = export("runs/ft", "openai", Path("train.jsonl"))  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rungwise.data.loaders import jsonl_lines
from rungwise.errors import ConfigError, DataError, RungwiseError
from rungwise.train.trainer import RESULT_FILE, FinetuneResult

FORMATS = ("openai", "alpaca", "sharegpt", "merged")

#: Per-example token limit of hosted fine-tuning (gpt-4o-mini / gpt-4o / gpt-4.1 family: 65,536
#: tokens per training example; older gpt-3.5-turbo models: 16,385). Override with token_limit.
DEFAULT_TOKEN_LIMIT = 65_536
DEFAULT_PRICE_MODEL = "openai/gpt-4o-mini"
MIN_EXAMPLES = 10
ROLES = {"system", "user", "assistant", "tool", "function"}
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"}


@dataclass
class ExportReport:
    """What an export wrote and what the validation found (errors name the output line)."""

    format: str
    out: Path | None
    n_examples: int = 0
    total_tokens: int = 0
    max_example_tokens: int = 0
    token_counter: str = ""
    n_epochs: int | None = None
    billed_tokens: int | None = None
    price_model: str | None = None
    price_per_1m: float | None = None
    est_cost_usd: float | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        parts = [f"{self.format}: {self.n_examples} examples" + (f" -> {self.out}" if self.out else "")]
        if self.total_tokens:
            parts.append(
                f"{self.total_tokens:,} tokens ({self.token_counter}), longest example {self.max_example_tokens:,}"
            )
        if self.est_cost_usd is not None:
            parts.append(
                f"training cost estimate on {self.price_model}: {self.n_epochs} epochs x {self.total_tokens:,} tokens "
                f"= {self.billed_tokens:,} billed tokens x ${self.price_per_1m:g}/1M = ${self.est_cost_usd:,.2f}"
            )
        parts += [f"warning: {w}" for w in self.warnings]
        parts += [f"error: {e}" for e in self.errors[:20]]
        if len(self.errors) > 20:
            parts.append(f"... and {len(self.errors) - 20} more errors")
        return "\n".join(parts)


# -- token counting -------------------------------------------------------------------------------


def _token_counter() -> tuple[Callable[[str], int], str]:
    """tiktoken's o200k_base where it is installed and its tables are cached; else ~4 chars/token
    (OpenAI's own rule of thumb for English), labelled as an estimate."""
    try:
        import tiktoken

        enc = tiktoken.get_encoding("o200k_base")
        return (lambda s: len(enc.encode(s, disallowed_special=()))), "tiktoken o200k_base"
    except Exception:  # not installed, or no network to fetch the BPE tables
        return (lambda s: math.ceil(len(s) / 4)), "estimate: 4 characters per token"


def chat_tokens(messages: Sequence[dict[str, Any]], count: Callable[[str], int]) -> int:
    """Tokens of one chat example as OpenAI's cookbook counts them: 3 per message, the content,
    1 per name, 3 for the reply priming."""
    n = 3
    for m in messages:
        n += 3
        for k, v in m.items():
            if isinstance(v, str) and k in ("content", "name", "role"):
                n += count(v) + (1 if k == "name" else 0)
    return n


def openai_epochs(n_examples: int) -> int:
    """The hosted default for ``n_epochs: auto`` (OpenAI cookbook): 3, raised for small sets so
    that at least 100 examples are seen, lowered for large ones (at most 25,000)."""
    target, lo, hi, max_default = 3, 100, 25_000, 25
    if n_examples * target < lo:
        return min(max_default, math.ceil(lo / max(n_examples, 1)))
    if n_examples * target > hi:
        return max(1, hi // n_examples)
    return target


def _price(model: str) -> tuple[float | None, str | None]:
    """The catalog's training price per 1M tokens of ``model``, and a warning when new customers
    cannot buy that fine-tuning today (the export is still valid; the offer is not)."""
    try:
        from rungwise.prices.catalog import load_catalog

        ft = load_catalog().model(model).finetune
    except (ImportError, RungwiseError):
        return None, None
    if ft is None:
        return None, None
    today = dt.date.today()
    closed = None
    if not ft.availability.open_to_new(today):
        closed = (f"{model} fine-tuning is {ft.availability.describe(today)} ({ft.availability.source}): "
                  "a new account cannot start this job; `rungwise prices` lists the offers still open")
    return ft.training_per_1m, closed


# -- validation -----------------------------------------------------------------------------------


def _validate_record(rec: Any, where: str) -> list[str]:
    if not isinstance(rec, dict):
        return [f"{where}: expected a JSON object"]
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return [f"{where}: missing or empty 'messages' list"]
    errs = []
    has_assistant = False
    for j, m in enumerate(msgs):
        w = f"{where}: messages[{j}]"
        if not isinstance(m, dict):
            errs.append(f"{w}: expected an object with 'role' and 'content'")
            continue
        if "role" not in m or "content" not in m and "tool_calls" not in m and "function_call" not in m:
            errs.append(f"{w}: missing 'role' or 'content'")
            continue
        extra = set(m) - MESSAGE_KEYS
        if extra:
            errs.append(f"{w}: unrecognized key(s) {sorted(extra)}")
        if m["role"] not in ROLES:
            errs.append(f"{w}: unrecognized role {m['role']!r} (use system, user, assistant or tool)")
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            errs.append(f"{w}: 'content' must be a string")
        if "weight" in m and (m["role"] != "assistant" or m["weight"] not in (0, 1)):
            errs.append(f"{w}: 'weight' must be 0 or 1, on assistant messages only")
        if m["role"] == "assistant":
            if isinstance(content, str) and content.strip() or m.get("tool_calls") or m.get("function_call"):
                has_assistant = True
            else:
                errs.append(f"{w}: the assistant message is empty")
    if not has_assistant and not any("assistant message is empty" in e for e in errs):
        errs.append(f"{where}: no assistant message (nothing to learn)")
    return errs


def validate_openai_jsonl(
    path: str | Path,
    *,
    token_limit: int = DEFAULT_TOKEN_LIMIT,
    price_model: str = DEFAULT_PRICE_MODEL,
    n_epochs: int | None = None,
) -> ExportReport:
    """Check a chat JSONL file against hosted fine-tuning's rules; count tokens; estimate cost.

    Every problem is reported as ``file:line: ...``; the report's ``ok`` is False when any
    example would be rejected.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file", hint="give the path of a chat-format JSONL file")
    count, counter = _token_counter()
    rep = ExportReport("openai", p, token_counter=counter)
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                rep.errors.append(f"{p}:{i}: empty line")
                continue
            where = f"{p}:{i}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                rep.errors.append(f"{where}: invalid JSON ({exc.msg})")
                continue
            errs = _validate_record(rec, where)
            rep.errors.extend(errs)
            if errs:
                continue
            rep.n_examples += 1
            n = chat_tokens(rec["messages"], count)
            rep.total_tokens += n
            rep.max_example_tokens = max(rep.max_example_tokens, n)
            if n > token_limit:
                rep.errors.append(f"{where}: {n:,} tokens, over the {token_limit:,}-token limit per example")
    if rep.n_examples < MIN_EXAMPLES:
        rep.errors.append(f"{p}: {rep.n_examples} valid examples; hosted fine-tuning needs at least {MIN_EXAMPLES}")
    elif rep.n_examples < 50:
        rep.warnings.append(f"{rep.n_examples} examples: the providers recommend at least 50")
    rep.n_epochs = n_epochs or openai_epochs(rep.n_examples)
    rep.price_model = price_model
    rep.price_per_1m, closed = _price(price_model)
    if closed:
        rep.warnings.append(closed)
    rep.billed_tokens = rep.n_epochs * rep.total_tokens
    if rep.price_per_1m is not None:
        rep.est_cost_usd = rep.billed_tokens / 1e6 * rep.price_per_1m
    else:
        rep.warnings.append(f"no training price for {price_model!r} in the price catalog: no cost estimate")
    return rep


# -- sources --------------------------------------------------------------------------------------


def _records_from_dir(d: Path) -> list[dict[str, Any]]:
    recs = []
    for name in ("train.jsonl", "val.jsonl"):
        f = d / name
        if f.exists():
            recs.extend(json.loads(line) for _, line in jsonl_lines(f.read_text(encoding="utf-8")))
    if not recs:
        raise DataError(f"{d}: the fine-tune directory has no train.jsonl", hint="re-run the fine-tune with this rungwise version")
    return recs


def _run_dir(run_id: int) -> Path:
    from rungwise.store import Store

    store = Store()
    try:
        rows = store.rungs(run_id)
    finally:
        store.close()
    for row in rows:
        art = json.loads(row["artifact_json"] or "{}")
        for key in ("out_dir", "finetune_dir", "adapter_dir", "model_dir"):
            if art.get(key):
                d = Path(art[key])
                d = d if (d / RESULT_FILE).exists() else d.parent
                if (d / RESULT_FILE).exists():
                    return d
    raise DataError(
        f"run {run_id} has no fine-tune artifact",
        hint="climb with the finetune rung first (rungs.order: [..., finetune]), or pass a fine-tune directory or task.yaml",
    )


def resolve_source(source: str | Path) -> tuple[list[dict[str, Any]], FinetuneResult | None]:
    """Chat records to export and, when the source is a fine-tune, its result."""
    s = str(source)
    if s.isdigit() and not Path(s).exists():
        d = _run_dir(int(s))
        return _records_from_dir(d), FinetuneResult.load(d)
    p = Path(s).expanduser()
    if p.is_dir() and (p / RESULT_FILE).exists():
        return _records_from_dir(p), FinetuneResult.load(p)
    if p.is_dir() and (p / "task.yaml").exists() or p.suffix in (".yaml", ".yml"):
        from rungwise.config.task import load_task
        from rungwise.data.dataset import load_split
        from rungwise.train.data import to_jsonl_records, training_system_prompt

        task = load_task(p)
        # The records a fine-tune of this task trains on: its prompt shape (rungs.finetune.prompt).
        return to_jsonl_records(load_split(task).train, training_system_prompt(task)), None
    if p.is_file() and p.suffix == ".jsonl":
        recs = []
        for i, line in jsonl_lines(p.read_text(encoding="utf-8")):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{i}: invalid JSON ({exc.msg})", hint="one chat record per line") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
                raise DataError(f"{p}:{i}: expected {{\"messages\": [...]}}", hint="export from a chat-format file")
            recs.append(rec)
        return recs, None
    raise DataError(
        f"{source}: not a run id, fine-tune directory, task.yaml or chat JSONL file",
        hint="pass a run id (rungwise runs), the fine-tune's output directory, or task.yaml",
    )


# -- writers --------------------------------------------------------------------------------------


def _split_turns(msgs: Sequence[dict[str, Any]]) -> tuple[str, list[tuple[str, str]], str, str]:
    """(system, earlier (user, assistant) pairs, last user text, last assistant text)."""
    system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else ""
    rest = [m for m in msgs if m["role"] != "system"]
    answer = rest[-1]["content"] if rest and rest[-1]["role"] == "assistant" else ""
    turns = rest[:-1] if answer else rest
    last_user = turns[-1]["content"] if turns and turns[-1]["role"] == "user" else ""
    history, prev_user = [], None
    for m in turns[:-1]:
        if m["role"] == "user":
            prev_user = m["content"]
        elif m["role"] == "assistant" and prev_user is not None:
            history.append((prev_user, m["content"]))
            prev_user = None
    return system, history, last_user, answer


def to_format(rec: dict[str, Any], fmt: str) -> dict[str, Any]:
    """One chat record in ``fmt`` (openai, alpaca or sharegpt)."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
    if fmt == "openai":
        return {"messages": msgs}
    system, history, user, answer = _split_turns(msgs)
    if fmt == "alpaca":
        out: dict[str, Any] = (
            {"instruction": system, "input": user, "output": answer} if system else {"instruction": user, "input": "", "output": answer}
        )
        if history:
            out["history"] = [list(h) for h in history]
        return out
    if fmt == "sharegpt":
        names = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
        return {"conversations": [{"from": names.get(m["role"], m["role"]), "value": m["content"]} for m in msgs]}
    raise ConfigError(f"unknown export format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")


def _check_out(out: Path, force: bool, is_dir: bool) -> None:
    if out.exists() and not force:
        if not (is_dir and out.is_dir() and not any(out.iterdir())):
            raise DataError(f"{out} already exists; rungwise never overwrites it", hint="choose another --out, or pass --force")


def export(
    source: str | Path,
    fmt: str,
    out: str | Path,
    *,
    force: bool = False,
    token_limit: int = DEFAULT_TOKEN_LIMIT,
    price_model: str = DEFAULT_PRICE_MODEL,
    task: Any = None,
) -> ExportReport:
    """Export ``source`` as ``fmt`` into ``out`` (a file; a directory for ``merged``).

    ``task`` (optional) supplies device/dtype settings for ``merged``; the adapter's own record
    names the base model.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    records, result = resolve_source(source)
    if fmt == "merged":
        if result is None:
            raise DataError(
                f"{source}: 'merged' needs a fine-tune (run id or its output directory), not training data",
                hint="fine-tune first, then export its directory",
            )
        _check_out(out, force, is_dir=True)
        return _export_merged(result, out, task)
    _check_out(out, force, is_dir=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(to_format(rec, fmt), ensure_ascii=False) + "\n")
    tmp.replace(out)
    if fmt == "openai":
        return validate_openai_jsonl(out, token_limit=token_limit, price_model=price_model)
    count, counter = _token_counter()
    rep = ExportReport(fmt, out, n_examples=len(records), token_counter=counter)
    sizes = [chat_tokens(r["messages"], count) for r in records]
    rep.total_tokens, rep.max_example_tokens = sum(sizes), max(sizes, default=0)
    return rep


def _export_merged(result: FinetuneResult, out: Path, task: Any) -> ExportReport:
    from rungwise._deps import require

    torch = require("torch")
    if result.model_dir:  # a full fine-tune is already a complete model
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(result.model_dir, out)
    else:
        from rungwise import models
        from rungwise.train.trainer import base_model_for, peft_reads_deprecated_alias

        peft = require("peft")
        trust = bool(getattr(getattr(task, "model", None), "trust_remote_code", False))
        rm = base_model_for(result, task.model) if task is not None else models.resolve(result.base_model_id)
        base, tok = models.load_causal_lm(rm, dtype=torch.float32, device="cpu", trust_remote_code=trust)
        with peft_reads_deprecated_alias():
            merged = peft.PeftModel.from_pretrained(base, result.adapter_dir).merge_and_unload()
        out.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        # The adapter's provenance (base hash, data hash, metrics) travels with the merged weights.
        prov = Path(result.adapter_dir) / "provenance.json"
        if prov.exists():
            shutil.copy(prov, out / "provenance.json")
    files = sorted(p.name for p in out.iterdir())
    rep = ExportReport("merged", out, n_examples=result.n_train)
    if not any(f.endswith(".safetensors") for f in files):
        rep.errors.append(f"{out}: no safetensors weights were written")
    return rep
