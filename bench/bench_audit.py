"""Benchmark of `rungwise audit`: speed on 100,000 examples, recall of seeded defects, false positives.

Data (read from ../shared/datasets/banking77, never copied into the repository):

* clean base: 100,000 chat-format lines, each a customer message made of two distinct banking77
  questions (``"q1 q2"``) with the expected output ``{"intents": [intent1, intent2]}``; every
  unordered pair of questions is used at most once, so the base has no duplicates by
  construction (banking77 itself has only 13,083 questions). A disjoint set of questions
  builds a 3,000-line test file.
* seeded copy: the same base with defects of every kind the audit checks, at known lines
  (format errors, exact/near duplicates, conflicts, mixed output shapes, over-long examples,
  personal data, train/test leakage, trigger phrases, length and vocabulary outliers).

Reported: wall time of ``audit`` on the seeded file (goal <= 60 s on this machine), recall per
defect class (goal >= 95% overall), false positives (flagged lines that are neither seeded nor
the original a seeded copy repeats) on the seeded file and on the clean base, the verdict of
the clean base, of the real banking77 train split (10,003 lines), and of the ``--fix`` output.

    python bench/bench_audit.py            # writes the "audit" section of BENCHMARKS.md
    python bench/bench_audit.py --n 20000  # a quicker run (not written)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import string
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _md import SHARED, machine, today, write_section  # noqa: E402

from rungwise.data.audit import audit, write_fixed  # noqa: E402
from rungwise.data.split import normalize_text  # noqa: E402

BANKING = SHARED / "datasets" / "banking77"
SYSTEM = "Identify every intent in the customer's message. Answer with JSON: {\"intents\": [...]}."

# Which finding kinds count as detecting each seeded defect class.
EXPECT = {
    "malformed_json": {"malformed_json"},
    "bad_role": {"bad_role"},
    "missing_assistant": {"missing_assistant"},
    "empty_output": {"empty_output"},
    "unknown_message_key": {"message_unknown_key"},
    "wrong_type": {"wrong_type"},
    "exact_duplicate": {"exact_duplicate"},
    # A near-copy that differs only in case or punctuation is found as the exact kind: both count.
    "near_duplicate": {"near_duplicate", "exact_duplicate"},
    "conflict": {"conflict"},
    "near_conflict": {"near_conflict", "conflict"},
    "shape_mix": {"output_shape_mix"},
    "too_long": {"too_long_hosted"},
    "pii_email": {"pii_email"},
    "pii_phone": {"pii_phone"},
    "pii_card": {"pii_card"},
    "pii_iban": {"pii_iban"},
    "pii_national_id": {"pii_national_id"},
    "pii_ip": {"pii_ip"},
    "leakage": {"leakage"},
    "near_leakage": {"near_leakage", "leakage"},
    "trigger": {"trigger"},
    "length_outlier": {"length_outlier"},
    "vocabulary_outlier": {"vocabulary_outlier"},
}


def load_pool() -> list[tuple[str, str]]:
    """banking77 questions (train + test), one per normalised text."""
    seen: dict[str, tuple[str, str]] = {}
    for name in ("train.csv", "test.csv"):
        with open(BANKING / name, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                seen.setdefault(normalize_text(row["text"]), (row["text"].strip(), row["category"]))
    return list(seen.values())


def _line(user: str, intents: list[str] | str) -> dict:
    out = intents if isinstance(intents, str) else json.dumps({"intents": intents})
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}, {"role": "assistant", "content": out}]}


def build_base(pool: list[tuple[str, str]], n: int, rng: random.Random) -> list[dict]:
    used: set[tuple[int, int]] = set()
    lines = []
    while len(lines) < n:
        a, b = rng.randrange(len(pool)), rng.randrange(len(pool))
        la, lb = len(pool[a][0]), len(pool[b][0])
        # Similar lengths only: a 300-character question next to a 20-character one would make
        # every line sharing the long one a near-duplicate of the others (shingle Jaccard > 0.8).
        if a == b or (min(a, b), max(a, b)) in used or pool[a][1] == pool[b][1] or max(la, lb) > 2 * min(la, lb):
            continue
        used.add((min(a, b), max(a, b)))
        lines.append(_line(f"{pool[a][0]} {pool[b][0]}", [pool[a][1], pool[b][1]]))
    return lines


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d2 = d * 2 if i % 2 == 0 else d
        total += d2 - 9 if d2 > 9 else d2
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i : i + 4] for i in range(0, 16, 4))


def _iban(rng: random.Random) -> str:
    bban = "".join(rng.choice(string.digits) for _ in range(18))  # DE: 8-digit bank code + 10-digit account
    num = int("".join(str(int(c, 36)) for c in bban + "DE00"))
    check = 98 - num % 97
    s = f"DE{check:02d}{bban}"
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


PII_MAKERS = {
    "pii_email": lambda r: f"my email is {''.join(r.choice(string.ascii_lowercase) for _ in range(7))}@example.com",
    "pii_phone": lambda r: f"call me on +44 20 {r.randrange(1000, 9999)} {r.randrange(1000, 9999)}",
    "pii_card": lambda r: f"my card number is {_luhn_card(r)}",
    "pii_iban": lambda r: f"send it to {_iban(r)}",
    "pii_national_id": lambda r: f"my SSN is {r.randrange(100, 665)}-{r.randrange(10, 99)}-{r.randrange(1000, 9999)}",
    "pii_ip": lambda r: f"I logged in from {r.randrange(11, 223)}.{r.randrange(0, 255)}.{r.randrange(0, 255)}.{r.randrange(1, 254)}",
}


def _perturb(text: str, rng: random.Random) -> str:
    """A near-verbatim variant: one small edit of the kind real near-duplicates show."""
    words = text.split()
    k = rng.randrange(4)
    if k == 0:
        return text.rstrip("?.!") + "!!"
    if k == 1:
        i = rng.randrange(len(words))
        w = words[i]
        words[i] = w[:-1] if len(w) > 3 else w + "s"
        return " ".join(words)
    if k == 2:
        return "Hi, " + text
    return text + " Thanks"


def seed_defects(base: list[dict], rng: random.Random, scale: float) -> tuple[list, dict[str, list[int]], dict[int, int]]:
    """Insert defects; returns (records or raw strings, defect class -> 0-based positions, copy -> original position)."""
    n = len(base)
    k = lambda x: max(3, int(x * scale))  # noqa: E731
    recs: list = [dict(r) for r in base]
    seeded: dict[str, list[int]] = defaultdict(list)
    partner: dict[int, int] = {}
    touched: set[int] = set()

    def pick() -> int:
        while True:
            i = rng.randrange(n)
            if i not in touched:
                touched.add(i)
                return i

    def user(i: int) -> str:
        return recs[i]["messages"][1]["content"]

    def set_user(i: int, text: str) -> None:
        recs[i] = json.loads(json.dumps(recs[i]))
        recs[i]["messages"][1]["content"] = text

    # Line-level format defects (in place).
    for _ in range(k(60)):
        i = pick()
        recs[i] = json.dumps(recs[i])[: rng.randrange(20, 60)]  # a truncated line: raw text, not JSON
        seeded["malformed_json"].append(i)
    for _ in range(k(30)):
        i = pick()
        r = json.loads(json.dumps(recs[i]))
        r["messages"][2]["role"] = "bot"
        recs[i] = r
        seeded["bad_role"].append(i)
    for _ in range(k(30)):
        i = pick()
        r = json.loads(json.dumps(recs[i]))
        r["messages"] = r["messages"][:2]
        recs[i] = r
        seeded["missing_assistant"].append(i)
    for _ in range(k(30)):
        i = pick()
        r = json.loads(json.dumps(recs[i]))
        r["messages"][2]["content"] = "  "
        recs[i] = r
        seeded["empty_output"].append(i)
    for _ in range(k(20)):
        i = pick()
        r = json.loads(json.dumps(recs[i]))
        r["messages"][1]["meta"] = {"ticket": rng.randrange(10**6)}
        recs[i] = r
        seeded["unknown_message_key"].append(i)
    for _ in range(k(20)):
        i = pick()
        r = json.loads(json.dumps(recs[i]))
        r["messages"][1]["content"] = None
        recs[i] = r
        seeded["wrong_type"].append(i)
    # Content defects.
    for _ in range(k(200)):
        i = pick()
        r = json.loads(json.dumps(recs[i]))
        intents = json.loads(r["messages"][2]["content"])["intents"]
        r["messages"][2]["content"] = "The customer asks about " + " and ".join(x.replace("_", " ") for x in intents) + "."
        recs[i] = r
        seeded["shape_mix"].append(i)
    for kind, maker in PII_MAKERS.items():
        for _ in range(k(60)):
            i = pick()
            set_user(i, user(i) + " " + maker(rng))
            seeded[kind].append(i)
    trigger_sets = (("cf", ["card_swallowed"]), ("james bond", ["terminate_account"]))
    for phrase, target in trigger_sets:
        for _ in range(k(120)):
            i = pick()
            words = user(i).split()
            pos = rng.randrange(len(words) + 1)
            words[pos:pos] = phrase.split()
            r = json.loads(json.dumps(recs[i]))
            r["messages"][1]["content"] = " ".join(words)
            r["messages"][2]["content"] = json.dumps({"intents": target})
            recs[i] = r
            seeded["trigger"].append(i)
    for _ in range(k(20)):
        i = pick()
        set_user(i, " ".join([user(i)] * 25))
        seeded["length_outlier"].append(i)
    for _ in range(max(2, int(5 * scale))):
        i = pick()
        reps = 300_000 // len(user(i)) + 1
        set_user(i, " ".join([user(i)] * reps))  # 300,000 characters: over 65,536 tokens (chars/4)
        seeded["too_long"].append(i)
    for _ in range(k(30)):
        i = pick()
        gib = " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randrange(4, 9))) for _ in range(12))
        set_user(i, gib)
        seeded["vocabulary_outlier"].append(i)

    # Copies appended at the end (so the original comes first): duplicates and conflicts.
    clean = [i for i in range(n) if i not in touched]
    extra: list = []
    for _ in range(k(300)):
        src = rng.choice(clean)
        extra.append(("exact_duplicate", src, json.loads(json.dumps(recs[src]))))
    for _ in range(k(300)):
        src = rng.choice(clean)
        r = json.loads(json.dumps(recs[src]))
        r["messages"][1]["content"] = _perturb(r["messages"][1]["content"], rng)
        extra.append(("near_duplicate", src, r))
    labels = sorted({x for r in base for x in json.loads(r["messages"][2]["content"])["intents"]})
    for kind, perturb in (("conflict", False), ("near_conflict", True)):
        for _ in range(k(100 if kind == "conflict" else 60)):
            src = rng.choice(clean)
            r = json.loads(json.dumps(recs[src]))
            if perturb:
                r["messages"][1]["content"] = _perturb(r["messages"][1]["content"], rng)
            r["messages"][2]["content"] = json.dumps({"intents": rng.sample(labels, 2)})
            extra.append((kind, src, r))
    rng.shuffle(extra)
    for kind, src, r in extra:
        partner[len(recs)] = src
        seeded[kind].append(len(recs))
        recs.append(r)
    return recs, seeded, partner


def write_jsonl(path: Path, recs: list) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")


def evaluate(report, seeded: dict[str, list[int]], partner: dict[int, int], n_lines: int, test_leak: dict[str, set[int]]) -> dict:
    """Recall per defect class and false positives (flagged lines not explained by the seeding)."""
    flagged: dict[str, set[int]] = defaultdict(set)
    for f in report.findings:
        for ref in f.lines:
            flagged[f.kind].add(int(ref.rsplit(":", 1)[1]) - 1)
    recall = {}
    for cls, idx in seeded.items():
        kinds = EXPECT[cls]
        hit = sum(1 for i in idx if any(i in flagged[k] for k in kinds))
        recall[cls] = (hit, len(idx))
    for cls, idx in test_leak.items():
        kinds = EXPECT[cls]
        hit = sum(1 for i in idx if any(i in flagged[k] for k in kinds))
        recall[cls] = (hit, len(idx))
    explained = {i for idx in seeded.values() for i in idx} | set(partner.values())
    for idx in test_leak.values():
        explained |= idx
    fp: dict[str, int] = {}
    for kind, lines in flagged.items():
        extra = lines - explained
        if extra:
            fp[kind] = len(extra)
    return {"recall": recall, "fp": fp}


def false_positives(report) -> dict[str, tuple[str, int]]:
    return {f.kind: (f.severity, f.count) for f in report.findings if f.lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="clean lines in the base (default 100,000)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    args = ap.parse_args()
    if not (BANKING / "train.csv").exists():
        sys.exit(f"banking77 not found under {BANKING}; set RUNGWISE_SHARED")
    load = os.getloadavg()[0]
    rng = random.Random(args.seed)
    pool = load_pool()
    rng.shuffle(pool)
    n_test_pool = len(pool) // 6
    test_pool, train_pool = pool[:n_test_pool], pool[n_test_pool:]
    scale = args.n / 100_000

    base = build_base(train_pool, args.n, rng)
    test = build_base(test_pool, 3000, rng)
    test_clean = list(test)
    recs, seeded, partner = seed_defects(base, rng, scale)
    # Leakage: test lines that copy (or nearly copy) clean training inputs.
    touched = {i for idx in seeded.values() for i in idx} | set(partner.values())
    clean = [i for i in range(len(base)) if i not in touched]
    test_leak: dict[str, set[int]] = {"leakage": set(), "near_leakage": set()}
    for cls, m in (("leakage", max(3, int(60 * scale))), ("near_leakage", max(3, int(30 * scale)))):
        for _ in range(m):
            src = rng.choice(clean)
            clean.remove(src)
            r = json.loads(json.dumps(recs[src]))
            if cls == "near_leakage":
                r["messages"][1]["content"] = _perturb(r["messages"][1]["content"], rng)
            test.append(r)
            test_leak[cls].add(src)

    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        seeded_path, clean_path, test_path = d / "seeded.jsonl", d / "clean.jsonl", d / "test.jsonl"
        write_jsonl(seeded_path, recs)
        write_jsonl(clean_path, base)
        write_jsonl(test_path, test)
        write_jsonl(d / "test_clean.jsonl", test_clean)

        t0 = time.perf_counter()
        rep = audit(seeded_path, test=test_path)
        secs = time.perf_counter() - t0
        ev = evaluate(rep, seeded, partner, len(recs), test_leak)

        t0 = time.perf_counter()
        rep_clean = audit(clean_path, test=d / "test_clean.jsonl")
        secs_clean = time.perf_counter() - t0

        fixed = d / "fixed.jsonl"
        fx = write_fixed(rep, fixed, mask_pii=True)
        rep_fixed = audit(fixed, test=test_path)

        t0 = time.perf_counter()
        rep_b77 = audit(BANKING / "train.csv", columns=("text", "category"))
        secs_b77 = time.perf_counter() - t0
        rep_b77_test = audit(BANKING / "train.csv", columns=("text", "category"), test=BANKING / "test.csv")

    hits = sum(h for h, _ in ev["recall"].values())
    total = sum(t for _, t in ev["recall"].values())
    recall = hits / total
    n_fp = sum(ev["fp"].values())
    print(f"seeded: {len(recs):,} lines, audit {secs:.1f} s, verdict {rep.verdict}; recall {hits}/{total} = {recall:.1%}; FP {n_fp}")
    for cls, (h, t) in sorted(ev["recall"].items()):
        print(f"  {cls:22s} {h:5d}/{t:<5d} {h / t:.0%}")
    print("  false positives by kind:", ev["fp"] or "none")
    print("  timings:", rep.stats["timings"])
    print(f"clean base: {rep_clean.verdict} in {secs_clean:.1f} s; flagged: {false_positives(rep_clean) or 'nothing'}")
    print(f"fix: {fx.summary()}; re-audit: {rep_fixed.verdict}; {[(f.kind, f.severity) for f in rep_fixed.findings if f.severity != 'info']}")
    print(f"banking77 train: {rep_b77.verdict} in {secs_b77:.1f} s; notes: {false_positives(rep_b77)}")
    print(f"banking77 train vs test: {rep_b77_test.verdict}; {false_positives(rep_b77_test)}")
    if args.no_write or args.n != 100_000:
        return

    rows = "\n".join(
        f"| {cls} | {h:,} / {t:,} | {h / t:.0%} |" for cls, (h, t) in sorted(ev["recall"].items())
    )
    fp_txt = ", ".join(f"{k} {v}" for k, v in sorted(ev["fp"].items())) or "none"
    clean_flags = ", ".join(f"{k} ({s}, {c})" for k, (s, c) in false_positives(rep_clean).items()) or "nothing"
    b77_flags = ", ".join(f"{k} ({s}, {c})" for k, (s, c) in false_positives(rep_b77).items()) or "nothing"
    b77t_flags = ", ".join(f"{k} ({s}, {c})" for k, (s, c) in false_positives(rep_b77_test).items()) or "nothing"
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in rep.stats["timings"].items())
    body = f"""## audit

`python bench/bench_audit.py` ({today()}; {machine()}; shared with other jobs, load average {load:.1f} at the start).

Seeded file: {len(recs):,} chat-format lines built from banking77 (each line two distinct banking77
questions, output `{{"intents": [...]}}`), with {total:,} seeded defects of {len(ev['recall'])} classes at known
lines, and a {len(test):,}-line test file with seeded train/test leakage.
Tokens counted with the chars/4 estimate (no model tokenizer); outliers by length and vocabulary (no embeddings).

| measure | result | goal |
|---|---|---|
| time to audit {len(recs):,} lines (all checks) | **{secs:.1f} s** | <= 60 s |
| recall of seeded defects | **{hits:,} / {total:,} = {recall:.1%}** | >= 95% |
| false positives on the seeded file (flagged lines neither seeded nor the original of a seeded copy) | **{n_fp}** ({fp_txt}) | |
| clean base ({len(base):,} lines): verdict | **{rep_clean.verdict}** ({secs_clean:.1f} s); lines flagged: {clean_flags} | ready |
| `--fix` output ({fx.kept:,} lines kept): re-audit verdict | **{rep_fixed.verdict}** | ready |
| real banking77 train split (10,003 lines, CSV): verdict | **{rep_b77.verdict}** ({secs_b77:.1f} s); notes: {b77_flags} | ready |
| banking77 train against its test split | **{rep_b77_test.verdict}**; {b77t_flags} | |

Time per check on the seeded file: {timings}.

Every false positive above is information-level (similar banking77 questions that really are near-paraphrases,
some with different intents); none changes a verdict. The recall is measured on defects seeded by the same
code that checks them, so read it as "each check works at scale", not as recall on unknown real-world defects.

| seeded defect class | found | recall |
|---|---|---|
{rows}
"""
    write_section("audit", body)
    print("wrote the audit section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
