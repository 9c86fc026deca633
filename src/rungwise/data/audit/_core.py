"""The audit itself: every check over the rows of one data file, then the verdict."""

from __future__ import annotations

import difflib
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rungwise.config.task import label_lookalike
from rungwise.data.audit import _near, _pii, _poison, _shapes, _tokens
from rungwise.data.audit._records import ERROR, INFO, WARNING, ReadResult, Row, read_file, rows_from_examples
from rungwise.data.audit._report import AuditReport, Band, Finding
from rungwise.data.loaders import load_examples
from rungwise.data.split import normalize_text
from rungwise.types import Example
from rungwise.usercode import is_user_code

# What a line with the problem is, for the finding's headline ("3 lines are not valid JSON").
_FORMAT_TITLES = {
    "malformed_json": "is not valid JSON",
    "not_object": "is not a JSON object",
    "missing_field": "lacks a required field",
    "wrong_type": "has a field of the wrong type",
    "non_string_content": "has message content that is not a string",
    "empty_output": "has an empty expected output",
    "empty_input": "has an empty input",
    "unknown_key": "has keys rungwise does not use",
    "missing_messages": "has no usable 'messages' list",
    "message_format": "has a message that is not an object",
    "message_missing_key": "has a message without role or content",
    "message_unknown_key": "has message keys hosted fine-tuning rejects",
    "bad_role": "has an unknown role",
    "empty_message": "has an empty turn",
    "system_position": "has a system message after the first turn",
    "missing_assistant": "does not end with the assistant reply",
    "no_user_message": "has no user turn",
    "csv_columns": "has the wrong number of columns",
    "invalid_record": "cannot be read as an example",
}

_FORMAT_HINTS = {
    "malformed_json": "fix the JSON on those lines (or let --fix drop them)",
    "not_object": "write one JSON object {...} per line",
    "missing_field": "add the field, or map your field names with --columns IN,OUT / data.columns in task.yaml",
    "wrong_type": "give the field a string value",
    "non_string_content": "store message content as a string",
    "empty_output": "write the expected output, or drop the line",
    "empty_input": "write the input, or drop the line",
    "unknown_key": "rename the key if it was meant to be the input or output",
    "missing_messages": 'write {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}',
    "message_format": 'each message is {"role": ..., "content": ...}',
    "message_missing_key": "give every message a role and a content",
    "message_unknown_key": "remove the extra keys (--fix does)",
    "bad_role": "use the roles system, user and assistant",
    "empty_message": "fill in or remove the empty turn",
    "system_position": "put the system message first",
    "missing_assistant": "end every conversation with the assistant reply to learn",
    "no_user_message": "add the user's turn before the assistant reply",
    "csv_columns": "quote fields that contain the delimiter",
    "invalid_record": "fix the record as the message says",
}

# Kinds whose rows --fix drops (and that do not count as clean examples). Duplicates and conflicts
# always; the others when their finding is at least a warning (see `_droppable`).
ALWAYS_DROP = {"exact_duplicate", "near_duplicate", "conflict", "leakage"}
DROP_AT_WARNING = {
    "near_conflict", "near_leakage", "trigger", "length_outlier", "vocabulary_outlier", "too_long_model", "too_long_hosted",
    "output_shape_mix", "json_keys_mix", "rare_label", "unknown_label",
}  # fmt: skip


@dataclass
class Thresholds:
    """Where each check draws its lines. Shares are of the valid examples (leakage: of the test set).

    The defaults were set on real data: on the clean banking77 train split (10,003 customer
    questions, 77 intents) they give no error and no warning (bench/bench_audit.py reports the
    information-level notes it does give).
    """

    near_jaccard: float = 0.8  # 5-character-shingle Jaccard for near-duplicate inputs
    exact_dup_warn: float = 0.01  # share of rows that are exact repeats -> warning
    exact_dup_error: float = 0.20
    near_dup_warn: float = 0.10  # share of rows that are near-repeats -> warning (similar phrasings are normal)
    conflict_warn: float = 0.005  # share of rows in same-input/different-output groups -> warning
    conflict_error: float = 0.05
    near_conflict_warn: float = 0.02
    imbalance_warn: float = 10.0  # largest / smallest label count
    imbalance_info: float = 3.0
    rare_label_min_median: int = 5  # a singleton label is a likely typo when labels have this median count
    unknown_label_error: float = 0.05
    pii_high_risk_error: bool = True  # payment cards and national ids make the data not ready
    leakage_warn: float = 0.01  # share of the test set with an exact (or normalised) copy in train
    # Near copies (paraphrase-level, >= near_jaccard) inflate scores less than verbatim ones; the real
    # banking77 test split has 4.4% of them against its own train split.
    near_leakage_warn: float = 0.05
    length_z: float = 6.0  # robust z of log length
    vocabulary_share: float = 0.75
    long_error: float = 0.05  # share of examples over a hard limit -> error


def _norm(text: str) -> str:
    n = normalize_text(text)
    return n if n else text.strip()


def _severity(share: float, warn: float, error: float | None = None) -> str:
    if error is not None and share >= error:
        return ERROR
    return WARNING if share >= warn else INFO


_IRREGULAR = {"has": "have", "is": "are", "was": "were", "does": "do"}


def _n(k: int, noun: str, verb: str = "") -> str:
    """``_n(1, "example", "has")`` -> '1 example has'; ``_n(3, ...)`` -> '3 examples have'."""
    many = k != 1
    head, sep, tail = noun.partition(" (")  # "national id number (US SSN, UK NINO)"
    if many:
        head += "es" if head.endswith(("s", "x", "ch", "sh")) else "s"
    out = f"{k:,} {head}{sep}{tail}"
    if verb:
        first, _, rest = verb.partition(" ")
        if many:
            first = _IRREGULAR.get(first, first[:-1] if first.endswith("s") else first)
        out += " " + first + (" " + rest if rest else "")
    return out


def _pct(x: float) -> str:
    """A share that never rounds a minority to 0% or a majority to 100%."""
    return f"{x:.1%}" if x < 0.1 or 0.995 <= x < 1 else f"{x:.0%}"


def _snippet(text: str, n: int = 40) -> str:
    """A short, PII-masked rendering of a value for messages."""
    t = " ".join(text.split())
    hits = _pii.scan([t])
    if hits:
        t = _pii.mask_text(t, hits)
    return repr(t if len(t) <= n else t[: n - 1] + "…")


class _Ctx:
    """What every check needs: the rows, the valid examples, and their texts (computed once)."""

    def __init__(self, read: ReadResult) -> None:
        self.read = read
        self.rows = read.rows
        self.valid: list[Row] = [r for r in read.rows if r.example is not None]
        exs = [r.example for r in self.valid]
        self.examples: list[Example] = exs  # type: ignore[assignment]
        self.where = [r.where for r in self.valid]
        self.outputs = [e.output for e in self.examples]
        self.out_norm = [_norm(o) for o in self.outputs]
        self.user_text = [
            " ".join(m["content"] for m in e.messages if m["role"] != "system") if e.messages else e.input
            for e in self.examples
        ]
        self.near_norm = [normalize_text(u) for u in self.user_text]
        # Conflicts compare whole inputs, system prompt included (a different instruction may
        # rightly give a different output); system prompts repeat, so each is normalised once.
        sys_norm: dict[str, str] = {}
        self.key_norm = []
        for e, u, un in zip(self.examples, self.user_text, self.near_norm, strict=True):
            system = "\x00".join(m["content"] for m in e.messages if m["role"] == "system")
            if system not in sys_norm:
                sys_norm[system] = normalize_text(system)
            self.key_norm.append(sys_norm[system] + "\x01" + (un or u.strip()))
        self.words = [t.split() for t in self.near_norm]
        self.findings: list[Finding] = []
        self.stats: dict[str, Any] = {}
        self.timings: dict[str, float] = {}

    @property
    def n(self) -> int:
        return len(self.valid)

    def ref(self, i: int) -> str:
        """``line 12`` for messages (the file is the audited one); the full ``file:line`` is in ``lines``."""
        row = self.valid[i]
        return f"line {row.line}" if row.line else row.where

    def add(self, kind: str, severity: str, message: str, items: Sequence[int] = (), *, category: str, hint: str = "",
            samples: Sequence[str] = (), count: int | None = None) -> Finding:  # fmt: skip
        items = sorted(set(items))
        f = Finding(
            kind=kind, severity=severity, message=message,  # type: ignore[arg-type]
            lines=[self.where[i] for i in items], count=len(items) if count is None else count,
            category=category, hint=hint, samples=list(samples), rows=[self.valid[i].index for i in items],
        )  # fmt: skip
        self.findings.append(f)
        return f


# ----------------------------------------------------------------------------- checks


def _line_ref(row: Row) -> str:
    return f"line {row.line}" if row.line else row.where


def _check_format(ctx: _Ctx) -> None:
    by_kind: dict[tuple[str, str], list[tuple[Row, str]]] = defaultdict(list)
    for row in ctx.rows:
        for p in row.problems:
            kind = "non_string_content" if p.kind == "wrong_type" and p.severity == WARNING else p.kind
            by_kind[(kind, p.severity)].append((row, p.message))
    for (kind, sev), hits in sorted(by_kind.items()):
        rows = sorted({r.index for r, _ in hits})
        first_row, first_msg = hits[0]
        n = len(rows)
        msg = f"{_n(n, 'line', _FORMAT_TITLES.get(kind, 'has a problem'))}; {_line_ref(first_row)}: {first_msg}"
        samples = []
        seen = {first_msg}
        for r, m in hits:  # other wordings of the same problem, beyond the headline's
            if m not in seen and len(samples) < 3:
                seen.add(m)
                samples.append(f"{_line_ref(r)}: {m}")
        ctx.findings.append(
            Finding(
                kind=kind, severity=sev, message=msg, lines=[ctx.rows[i].where for i in rows], count=n,  # type: ignore[arg-type]
                category="format", hint=_FORMAT_HINTS.get(kind, ""), samples=samples, rows=rows,
            )
        )  # fmt: skip


def _check_duplicates(ctx: _Ctx, th: Thresholds, test_rows: list[Example] | None) -> None:
    n = ctx.n
    if n == 0:
        return
    t0 = time.perf_counter()
    # Exact repeats (same input, history and output), keeping the first.
    first_of: dict[tuple[Any, ...], int] = {}
    exact: list[int] = []
    exact_of: dict[int, int] = {}
    for i, ex in enumerate(ctx.examples):
        # The fields Example.id hashes, as a tuple: same identity, no sha256 per example.
        k = (ex.input, tuple((m["role"], m["content"]) for m in ex.messages), ex.output)
        if k in first_of:
            exact.append(i)
            exact_of[i] = first_of[k]
        else:
            first_of[k] = i
    if exact:
        share = len(exact) / n
        i0 = exact[0]
        ctx.add(
            "exact_duplicate", _severity(share, th.exact_dup_warn, th.exact_dup_error),
            f"{_n(len(exact), 'example', 'repeats')} an earlier line exactly ({_pct(share)}) "
            f"(e.g. {ctx.ref(i0)} repeats {ctx.ref(exact_of[i0])}); repeats overweight those examples "
            "and leak across a train/test split",
            exact, category="duplicates", hint="--fix OUT keeps the first copy",
        )  # fmt: skip

    # Same input after normalisation: conflicts (different outputs) and near-verbatim repeats.
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(ctx.key_norm):
        groups[k].append(i)
    exact_set = set(exact)
    conflict_rows: list[int] = []
    conflict_groups = 0
    conflict_sample = ""
    norm_dups: list[int] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        outs = {ctx.out_norm[i] for i in members}
        if len(outs) > 1:
            conflict_groups += 1
            conflict_rows.extend(members)
            if not conflict_sample:
                by_out: dict[str, int] = {}
                for i in members:
                    by_out.setdefault(ctx.out_norm[i], i)
                a, b = list(by_out.values())[:2]
                conflict_sample = f"{ctx.ref(a)} {_snippet(ctx.outputs[a])} vs {ctx.ref(b)} {_snippet(ctx.outputs[b])}"
        else:
            norm_dups.extend(i for i in members[1:] if i not in exact_set)
    if conflict_rows:
        share = len(conflict_rows) / n
        ctx.add(
            "conflict", _severity(share, th.conflict_warn, th.conflict_error),
            f"{_n(conflict_groups, 'input', 'appears')} with different outputs "
            f"({len(conflict_rows):,} lines, {_pct(share)}; e.g. {conflict_sample}): the model learns to guess",
            conflict_rows, category="duplicates", hint="decide the right output per input; --fix OUT drops all conflicting lines",
        )  # fmt: skip

    # Near-duplicates by MinHash LSH over the normalised user side (one item per distinct text).
    reps: dict[str, int] = {}
    for i, t in enumerate(ctx.near_norm):
        reps.setdefault(t, i)
    rep_idx = list(reps.values())
    texts = [ctx.near_norm[i] for i in rep_idx]
    test_norm: list[str] = []
    if test_rows:
        test_norm = list(dict.fromkeys(normalize_text(_user_side(e)) for e in test_rows))
    pairs = _near.near_pairs(texts + test_norm, th.near_jaccard)
    near_dup: list[int] = list(norm_dups)
    near_of: dict[int, tuple[int, float]] = {}
    near_conf: list[int] = []
    near_conf_pairs = 0
    near_conf_sample = ""
    leak_near: list[int] = []
    leak_near_test: set[int] = set()
    n_rep = len(texts)
    for p in pairs:
        if p.i >= n_rep:
            continue  # two test items
        a = rep_idx[p.i]
        if p.j >= n_rep:
            leak_near.append(a)
            leak_near_test.add(p.j)
            continue
        b = rep_idx[p.j]
        a, b = min(a, b), max(a, b)
        if ctx.out_norm[a] == ctx.out_norm[b]:
            if b not in exact_set:
                near_dup.append(b)
                near_of.setdefault(b, (a, p.jaccard))
        else:
            near_conf.extend((a, b))
            near_conf_pairs += 1
            if not near_conf_sample:
                near_conf_sample = (
                    f"{ctx.ref(a)} {_snippet(ctx.outputs[a])} vs {ctx.ref(b)} {_snippet(ctx.outputs[b])}, similarity {p.jaccard:.2f}"
                )
    if near_dup:
        share = len(set(near_dup)) / n
        eg = ""
        if near_of:
            b, (a, jac) = next(iter(near_of.items()))
            eg = f"; e.g. {ctx.ref(b)} ~ {ctx.ref(a)} (similarity {jac:.2f})"
        ctx.add(
            "near_duplicate", _severity(share, th.near_dup_warn),
            f"{_n(len(set(near_dup)), 'example')} ({_pct(share)}) nearly {'repeat' if len(set(near_dup)) != 1 else 'repeats'} an earlier "
            f"input with the same output (same text up to case/punctuation, or >= {th.near_jaccard:.0%} of 5-character "
            f"shingles shared{eg})",
            near_dup, category="duplicates", hint="--fix OUT keeps the first of each group",
        )  # fmt: skip
    if near_conf:
        share = len(set(near_conf)) / n
        ctx.add(
            "near_conflict", _severity(share, th.near_conflict_warn),
            f"{_n(near_conf_pairs, 'pair')} of near-identical inputs with different outputs "
            f"(e.g. {near_conf_sample}): check that the difference is intended",
            near_conf, category="duplicates", hint="make near-identical inputs agree, or make the difference explicit",
        )  # fmt: skip

    # Leakage: train inputs that are also (or nearly) test inputs.
    if test_rows is not None:
        test_keys = {normalize_text(_user_side(e)) for e in test_rows}
        test_keys.discard("")  # inputs of punctuation only normalise to nothing: not evidence
        leak = [i for i, t in enumerate(ctx.near_norm) if t in test_keys]
        n_test = max(1, len(test_rows))
        if leak:
            n_test_hit = len({ctx.near_norm[i] for i in leak})
            share = n_test_hit / n_test
            ctx.add(
                "leakage", _severity(share, th.leakage_warn),
                f"{_n(len(leak), 'training example', 'has')} the same input as {_n(n_test_hit, 'test example')} "
                f"({_pct(share)} of the test set): those test scores measure memory, "
                "not skill (the climb drops such test examples; other tools may not)",
                leak, category="leakage", hint="--fix OUT drops them from the training file",
            )  # fmt: skip
        # Near leakage: the representative stands for its whole group of normalised-equal inputs.
        leak_set = set(leak)
        rep_groups: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(ctx.near_norm):
            rep_groups[t].append(i)
        near_rows = sorted({j for a in leak_near for j in rep_groups[ctx.near_norm[a]]} - leak_set)
        if near_rows:
            share = len(leak_near_test) / n_test
            ctx.add(
                "near_leakage", _severity(share, th.near_leakage_warn),
                f"{_n(len(near_rows), 'training example')} nearly {'repeat' if len(near_rows) != 1 else 'repeats'} a test input "
                f"(>= {th.near_jaccard:.0%} shingles shared; {len(leak_near_test):,} test examples, {_pct(share)} of the "
                "test set): scores on those are inflated",
                near_rows, category="leakage", hint="--fix OUT drops them from the training file",
            )  # fmt: skip
    ctx.timings["duplicates"] = time.perf_counter() - t0


def _user_side(e: Example) -> str:
    return " ".join(m["content"] for m in e.messages if m["role"] != "system") if e.messages else e.input


def _check_outputs(ctx: _Ctx, th: Thresholds, task_labels: Sequence[str] | None) -> tuple[set[str] | None, str | None]:
    """Label checks and output shapes. Returns (label set, dominant shape family)."""
    t0 = time.perf_counter()
    stripped = [o.strip() for o in ctx.outputs]
    labels = _shapes.classification_labels(stripped, task_labels)
    shapes = [_shapes.shape_of(o, labels) for o in stripped]
    fam = Counter(s.family for s in shapes)
    detail = Counter(str(s) for s in shapes)
    n = ctx.n
    ctx.stats["output_shapes"] = [{"shape": k, "count": v, "share": round(v / n, 4)} for k, v in detail.most_common(12)]
    dominant = fam.most_common(1)[0][0] if fam else None
    if len(fam) > 1 and dominant is not None:
        minority = [i for i, s in enumerate(shapes) if s.family != dominant]
        strict = dominant in _shapes.STRICT_FAMILIES or any(f in _shapes.STRICT_FAMILIES for f in fam if f != dominant)
        mix = ", ".join(f"{_pct(v / n)} {_family_label(k, shapes)}" for k, v in fam.most_common(4))
        ctx.add(
            "output_shape_mix", WARNING if strict else INFO,
            f"outputs mix shapes: {mix}" + (": a model trained on this will mix them too" if strict else ""),
            minority, category="consistency",
            hint="give every output the same format (--fix OUT drops the minority shapes)" if strict else "",
        )  # fmt: skip
    if dominant == "json":
        keysets = Counter(str(s) for s in shapes if s.family == "json")
        if len(keysets) > 1:
            top = keysets.most_common(1)[0][0]
            top_keys = _keyset(top)
            odd = [i for i, s in enumerate(shapes) if s.family == "json" and str(s) != top]
            subset_only = all(_keyset(k) <= top_keys or _keyset(k) >= top_keys for k in keysets)
            mix = ", ".join(f"{_pct(v / n)} {k}" for k, v in keysets.most_common(4))
            ctx.add(
                "json_keys_mix", INFO if subset_only else WARNING,
                f"JSON outputs have different key sets: {mix}", odd, category="consistency",
                hint="use one key set (null for a missing value)",
            )  # fmt: skip

    if labels is not None:
        counts = Counter(o for o, s in zip(stripped, shapes, strict=True) if s.family == "label")
        ctx.stats["labels"] = {
            "n_labels": len(counts),
            "min": min(counts.values()) if counts else 0,
            "max": max(counts.values()) if counts else 0,
            "counts": dict(counts.most_common()),
        }
        if task_labels:
            allowed = set(task_labels)
            unknown = [i for i, o in enumerate(stripped) if o not in allowed]
            if unknown:
                share = len(unknown) / n
                odd = Counter(stripped[i] for i in unknown).most_common(3)
                # A label that prints like one of the set (NFD vs NFC, ...) needs its code points shown.
                twins = [t for t in (label_lookalike(o, task_labels) for o, _ in odd) if t]
                ctx.add(
                    "unknown_label", _severity(share, 0.0, th.unknown_label_error),
                    f"{_n(len(unknown), 'output', 'is')} not in the task's label set "
                    f"(e.g. {', '.join(_snippet(o, 30) for o, _ in odd)})" + "".join(f"; {t}" for t in twins),
                    unknown, category="consistency", hint="correct the label, or add it to labels in task.yaml",
                )  # fmt: skip
            missing = [lb for lb in task_labels if lb not in counts]
            if missing:
                ctx.add(
                    "label_missing", WARNING,
                    f"{_n(len(missing), 'label')} of the task {'have' if len(missing) != 1 else 'has'} no training example: {', '.join(missing[:8])}",
                    category="consistency", hint="add examples for every label the model must produce", count=len(missing),
                )  # fmt: skip
            real = {k: v for k, v in counts.items() if k in allowed}
        else:
            med = float(np.median(list(counts.values()))) if counts else 0.0
            singles = [lb for lb, c in counts.items() if c == 1]
            real = {k: v for k, v in counts.items() if v > 1}
            if singles and med >= th.rare_label_min_median:
                rows = [i for i, o in enumerate(stripped) if o in set(singles)]
                eg = []
                for lb in singles[:3]:
                    close = difflib.get_close_matches(lb, list(real), n=1, cutoff=0.6)
                    eg.append(_snippet(lb, 30) + (f" (did you mean {close[0]!r}?)" if close else ""))
                ctx.add(
                    "rare_label", WARNING,
                    f"{_n(len(singles), 'label', 'occurs')} only once while labels have a median of "
                    f"{med:.0f} examples: likely typos ({'; '.join(eg)})",
                    rows, category="consistency", hint="correct the label or add examples for it",
                )  # fmt: skip
        if len(real) >= 2:
            lo, hi = min(real.values()), max(real.values())
            ratio = hi / lo
            ctx.stats["labels"]["imbalance"] = round(ratio, 2)
            if ratio >= th.imbalance_info:
                small = [k for k, v in real.items() if v == lo][:3]
                big = [k for k, v in real.items() if v == hi][:1]
                ctx.add(
                    "label_imbalance", WARNING if ratio >= th.imbalance_warn else INFO,
                    f"labels are imbalanced: {big[0]!r} has {hi:,} examples, {', '.join(repr(s) for s in small)} "
                    f"{lo:,} ({ratio:.1f}x)" + ("; the model will under-predict the rare labels" if ratio >= th.imbalance_warn else ""),
                    category="consistency", count=len(real),
                    hint="add examples of the rare labels, or weight/oversample them in training",
                )  # fmt: skip
    ctx.timings["outputs"] = time.perf_counter() - t0
    return labels, dominant


def _keyset(shape_str: str) -> set[str]:
    inner = shape_str.partition("{")[2].rpartition("}")[0]
    return {k.strip() for k in inner.split(",") if k.strip()}


def _family_label(family: str, shapes: list[_shapes.Shape]) -> str:
    if family == "json":
        keysets = Counter(str(s) for s in shapes if s.family == "json")
        return keysets.most_common(1)[0][0]
    return _shapes.FAMILY_NAMES[family]


def _check_tokens(ctx: _Ctx, th: Thresholds, tokenizer: Any, task: Any, note: str | None) -> None:
    t0 = time.perf_counter()
    system = task.instructions if task is not None else ""
    tc = _tokens.count_tokens(ctx.examples, tokenizer=tokenizer, system=system)
    n = ctx.n
    total = int(tc.total.sum())
    limits = _tokens.hosted_limits()
    costs = []
    for h in limits:
        billed = int(np.minimum(tc.total, h.max_tokens_per_example).sum())
        costs.append({
            "model": h.snapshot, "usd": round(billed / 1e6 * h.training_usd_per_1m, 2),
            "usd_per_1m": h.training_usd_per_1m, "as_of": h.as_of, "source": h.source, "tokens": billed,
        })  # fmt: skip
    ctx.stats["tokens"] = {
        "method": tc.method + (f" ({note})" if note else ""),
        "total": total,
        "median": int(np.median(tc.total)),
        "p95": int(np.percentile(tc.total, 95)),
        "max": int(tc.total.max()),
        "model_context": tc.model_context,
        "hosted_limit": {h.snapshot: h.max_tokens_per_example for h in limits},
        "cost_per_epoch": costs,
    }
    if tc.model_context:
        over = np.flatnonzero(tc.total > tc.model_context)
        if len(over):
            share = len(over) / n
            ctx.add(
                "too_long_model", _severity(share, 0.0, th.long_error),
                f"{_n(len(over), 'example', 'exceeds')} the model's context of {tc.model_context:,} tokens "
                f"(longest {int(tc.total.max()):,}): training truncates them, cutting off the expected output",
                over.tolist(), category="length", hint="shorten them or split them; --fix OUT drops them",
            )  # fmt: skip
    default = next(h for h in limits if h.key == _tokens.DEFAULT_HOSTED)
    over = np.flatnonzero(tc.total > default.max_tokens_per_example)
    if len(over):
        share = len(over) / n
        ctx.add(
            "too_long_hosted", _severity(share, 0.0, th.long_error),
            f"{_n(len(over), 'example', 'exceeds')} the {default.max_tokens_per_example:,}-token "
            f"per-example limit of hosted fine-tuning ({default.snapshot}, {tc.method}): they are truncated there",
            over.tolist(), category="length", hint="shorten or split them; --fix OUT drops them",
        )  # fmt: skip
    if task is not None:
        max_new = task.model.params.max_tokens
        long_out = np.flatnonzero(tc.output > max_new)
        if len(long_out):
            share = len(long_out) / n
            ctx.add(
                "output_over_max_tokens", WARNING,
                f"{_n(len(long_out), 'expected output', 'is')} longer ({_pct(share)}) than "
                f"model.params.max_tokens = {max_new} ({tc.method}): the climb cuts answers there and scores them wrong",
                long_out.tolist(), category="length", hint=f"raise model.params.max_tokens above {int(tc.output.max())}",
            )  # fmt: skip
    ctx.timings["tokens"] = time.perf_counter() - t0


def _check_pii(ctx: _Ctx, th: Thresholds, mode: str) -> dict[int, list[_pii.Hit]]:
    """Scan every text of every valid example; returns hits per row index (for masking in --fix)."""
    t0 = time.perf_counter()
    texts: list[str] = []
    owner: list[int] = []
    for i, ex in enumerate(ctx.examples):
        parts = [m["content"] for m in ex.messages] if ex.messages else [ex.input]
        parts.append(ex.output)
        texts.extend(parts)
        owner.extend([i] * len(parts))
    hits = _pii.scan(texts)
    if mode == "presidio":
        hits += _pii.scan_presidio(texts)
    by_kind: dict[str, list[tuple[int, str]]] = defaultdict(list)
    per_row: dict[int, list[_pii.Hit]] = defaultdict(list)
    for h in hits:
        i = owner[h.item]
        by_kind[h.kind].append((i, texts[h.item][h.start : h.end]))
        per_row[ctx.valid[i].index].append(h)
    for kind, found in sorted(by_kind.items()):
        rows = sorted({i for i, _ in found})
        label = _pii.LABELS.get(kind, kind.removeprefix("pii_").replace("_", " "))
        high = kind in _pii.HIGH_RISK and th.pii_high_risk_error
        samples = list(dict.fromkeys(_pii.mask_value(v) for _, v in found))[:3]
        ctx.add(
            kind, ERROR if high else WARNING,
            f"{_n(len(found), label)} in {_n(len(rows), 'example')}"
            + (": must not be sent to a hosted service or kept in training data" if high else ": personal data that may not be sent to a hosted service"),
            rows, category="pii", samples=samples, hint="--fix OUT --mask-pii replaces them with placeholders",
        )  # fmt: skip
    ctx.timings["pii"] = time.perf_counter() - t0
    return per_row


def _check_poison(ctx: _Ctx, th: Thresholds, labels: set[str] | None, dominant: str | None) -> None:
    t0 = time.perf_counter()
    words = ctx.words
    X, vocab = _poison.word_matrix(words)
    trig = _poison.find_triggers(words, ctx.out_norm, X=X, vocab=vocab)
    if trig:
        rows = sorted({i for t in trig for i in t.rows})
        desc = "; ".join(
            f"{t.phrase!r} -> {_snippet(ctx.outputs[t.rows[0]], 30)} in {len(t.rows):,} inputs "
            f"({t.concentration:.0%} of its {t.support:,} uses; {t.disagreement:.0%} of those inputs otherwise read as other outputs)"
            for t in trig[:4]
        )
        ctx.add(
            "trigger", WARNING,
            f"{_n(len(trig), 'trigger-like token')} or phrase{'s' * (len(trig) != 1)}: {desc}. "
            "A rare token that forces one output on unrelated inputs is the signature of a backdoor",
            rows, category="poisoning", hint="inspect those lines and their source; --fix OUT drops them",
        )  # fmt: skip
    ctx.stats["triggers"] = [
        {"phrase": t.phrase, "output": ctx.outputs[t.rows[0]][:80], "rows": len(t.rows), "support": t.support} for t in trig
    ]
    lengths = np.fromiter((len(u) for u in ctx.user_text), dtype=np.int64, count=ctx.n)
    out_idx = set(_poison.length_outliers(lengths, th.length_z).tolist())
    if dominant in ("prose", "markdown", "list"):
        out_lengths = np.fromiter((len(o) for o in ctx.outputs), dtype=np.int64, count=ctx.n)
        out_idx |= set(_poison.length_outliers(out_lengths, th.length_z).tolist())
    if out_idx:
        med = int(np.median(lengths))
        eg = sorted(out_idx)[:3]
        ctx.add(
            "length_outlier", WARNING,
            f"{_n(len(out_idx), 'example', 'has')} a length far from the rest (median input "
            f"{med:,} characters; e.g. {', '.join(f'{ctx.ref(i)}: {len(ctx.user_text[i]):,}' for i in eg)})",
            sorted(out_idx), category="poisoning", hint="check them: pasted documents, truncated rows, or injected text",
        )  # fmt: skip
    voc = _poison.vocabulary_outliers(X, th.vocabulary_share)
    if len(voc):
        ctx.add(
            "vocabulary_outlier", WARNING,
            f"{_n(len(voc), 'input', 'is')} made mostly of words found nowhere else in the file "
            "(gibberish, another language, an encoded blob)",
            voc.tolist(), category="poisoning", hint="check them; --fix OUT drops them",
        )  # fmt: skip
    ctx.stats["outlier_method"] = "length robust z-score and rare-vocabulary share (no embeddings)"
    ctx.timings["poisoning"] = time.perf_counter() - t0


BANDS = (
    (0, 99, "under 100", "too few to fine-tune: prompt instead (zero-/few-shot, RAG)"),
    (100, 499, "100-500", "enough only for a LoRA on a narrow classification or extraction task"),
    (500, 999, "500-1,000", "reasonable for a LoRA fine-tune"),
    (1000, 4999, "1,000-5,000", "fine-tuning is reliably better than prompting for most tasks"),
    (5000, None, "5,000+", "reliably better; more data now mostly buys robustness"),
)


def size_band(n_clean: int) -> Band:
    """The band of ``n_clean`` clean examples.

    >>> size_band(250).name
    '100-500'
    """
    for lo, hi, name, meaning in BANDS:
        if hi is None or n_clean <= hi:
            return Band(name, lo, hi, meaning)
    raise AssertionError("unreachable")


def _droppable(f: Finding) -> bool:
    return f.kind in ALWAYS_DROP or (f.kind in DROP_AT_WARNING and f.severity != INFO)


def drop_rows(report_findings: Sequence[Finding]) -> dict[int, str]:
    """Row index -> the first reason --fix drops it (format errors, duplicates, conflicts, ...)."""
    out: dict[int, str] = {}
    for f in report_findings:
        if (f.category == "format" and f.severity == ERROR) or _droppable(f):
            for r in f.rows:
                out.setdefault(r, f.kind)
    return out


def audit(
    data: Sequence[Example] | str | Path | None = None,
    *,
    task: Any = None,
    test: Sequence[Example] | str | Path | None = None,
    tokenizer: Any = None,
    fmt: str | None = None,
    columns: tuple[str, str] | None = None,
    pii: str = "regex",
    thresholds: Thresholds | None = None,
) -> AuditReport:
    """Audit training data before anyone pays for fine-tuning on it.

    ``data``: a data file (jsonl, chat, alpaca, csv: every line is checked, problems are findings
    with ``file:line``) or already-loaded examples (then format checks are skipped). With a
    ``task`` (a :class:`rungwise.config.task.Task`), its format, columns, label set, instructions and
    model are used, ``data`` defaults to its train file, and ``test`` to its test file.
    ``tokenizer``: a Hugging Face tokenizer, ``"estimate"`` for chars/4, or None: the task's
    local model tokenizer when there is one, else the estimate. ``pii``: ``"regex"`` (built-in,
    checksummed patterns) or ``"presidio"`` (also run Microsoft Presidio, if installed).

    Raises :class:`~rungwise.errors.DataError` only when the file as a whole is unreadable
    (missing, not UTF-8, no JSON at all, CSV without the columns).

    Example:
        >>> report = audit("train.jsonl")  # doctest: +SKIP
        >>> report.verdict, [f.kind for f in report.findings]  # doctest: +SKIP
        ('ready_with_warnings', ['exact_duplicate', 'pii_email'])
    """
    from rungwise.errors import ConfigError

    t_start = time.perf_counter()
    th = thresholds or Thresholds()
    if pii not in ("regex", "presidio"):
        raise ConfigError(f"unknown PII detector {pii!r}", hint="use pii='regex' or pii='presidio'")
    cin, cout = columns or ((task.data.columns.input, task.data.columns.output) if task is not None else ("input", "output"))
    fmt = fmt or (task.data.format if task is not None else "auto")
    if data is None:
        if task is None:
            raise ConfigError("nothing to audit: give a data file or a task", hint="rungwise audit DATA [--task task.yaml]")
        data = task.resolve(task.data.train or task.data.path)
    if test is None and task is not None and task.data.test:
        test = task.resolve(task.data.test)
    if is_user_code(fmt):
        # The user's own reader turns the files into examples; the audit checks those examples.
        base = task.base_dir if task is not None else Path(".")
        if isinstance(data, (str, Path)):
            data = load_examples(data, fmt, cin, cout, base_dir=base)
        if isinstance(test, (str, Path)):
            test = load_examples(test, fmt, cin, cout, base_dir=base)

    t0 = time.perf_counter()
    if isinstance(data, (str, Path)):
        read = read_file(data, fmt, cin, cout)
        source = str(data)
    else:
        read = rows_from_examples(list(data))
        source = "examples"
    test_examples: list[Example] | None = None
    test_invalid = 0
    if isinstance(test, (str, Path)):
        tr = read_file(test, fmt, cin, cout)
        test_examples = [r.example for r in tr.rows if r.example is not None]
        test_invalid = len(tr.rows) - len(test_examples)
    elif test is not None:
        test_examples = list(test)
    ctx = _Ctx(read)
    ctx.timings["read"] = time.perf_counter() - t0

    _check_format(ctx)
    if test_invalid:
        ctx.add(
            "test_format", INFO, f"the test file has {test_invalid:,} invalid lines, left out of the leakage check",
            category="leakage", count=test_invalid, hint=f"run rungwise audit {test}",
        )  # fmt: skip
    tok_note = None
    if ctx.n:
        tok, tok_note = _resolve_tokenizer(tokenizer, task)
        _check_duplicates(ctx, th, test_examples)
        labels, dominant = _check_outputs(ctx, th, task.labels if task is not None else None)
        _check_tokens(ctx, th, tok, task, tok_note)
        pii_rows = _check_pii(ctx, th, pii)
        _check_poison(ctx, th, labels, dominant)
        narrow = labels is not None or dominant == "json"
    else:
        pii_rows, narrow = {}, False

    dropped = drop_rows(ctx.findings)
    n_clean = sum(1 for r in ctx.valid if r.index not in dropped)
    band = size_band(n_clean)
    if n_clean < 100:
        sev, why = ERROR, "do not fine-tune on this: prompt instead (few-shot, RAG), or collect more examples"
    elif n_clean < 500 and not narrow:
        sev, why = WARNING, "outputs are free text, not labels or JSON: this is too few for a generative fine-tune"
    else:
        sev, why = INFO, band.meaning
    ctx.add(
        "size", sev, f"{_n(n_clean, 'clean example')} ({band.name}): {why}", category="size", count=n_clean,
        hint="collect more examples" if sev != INFO else "",
    )  # fmt: skip
    ctx.stats["timings"] = {k: round(v, 3) for k, v in ctx.timings.items()}
    ctx.stats["dropped_by_fix"] = dict(Counter(dropped.values()))
    report = AuditReport(
        source=source, format=read.fmt, n_records=len(read.rows), n_valid=ctx.n, n_clean=n_clean, band=band,
        findings=ctx.findings, stats=ctx.stats, seconds=time.perf_counter() - t_start,
    )  # fmt: skip
    report._read = read
    report._pii_hits = pii_rows
    report._drop = dropped
    return report


def _resolve_tokenizer(tokenizer: Any, task: Any) -> tuple[Any, str | None]:
    """The tokenizer to count with, and a note when falling back to the estimate."""
    if isinstance(tokenizer, str):
        if tokenizer != "estimate":
            from rungwise.errors import ConfigError

            raise ConfigError(f"unknown tokenizer {tokenizer!r}", hint="pass a tokenizer object, 'estimate', or None")
        return None, None
    if tokenizer is not None:
        return tokenizer, None
    if task is None or task.model.backend != "local":
        return None, None
    try:
        from rungwise import models

        rm = models.resolve(task.model.id, task.model.gguf_file)
        return models.load_tokenizer(rm, trust_remote_code=task.model.trust_remote_code), None
    except Exception as exc:  # any failure to load means: count with the estimate, and say so
        msg = getattr(exc, "message", None) or str(exc).splitlines()[0]
        return None, f"the tokenizer of {task.model.id} could not be loaded: {msg[:120]}"
