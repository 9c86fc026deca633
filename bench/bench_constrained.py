"""The cheap rungs of issue 10: constrained decoding and the classical baseline, measured.

Writes the ``constrained`` section of BENCHMARKS.md, three tables:

1. **Grammar libraries** on the embedded SmolLM2-135M-Instruct (bf16, batch 8, greedy): xgrammar,
   llguidance (through rungwise's own processor, the shipped path) and lm-format-enforcer, each
   masking ``model.generate`` for a date regex and a JSON schema: tokenizer setup, grammar
   compile time, mask time per row and step, share of the generate time, valid answers.
2. **Classical baseline** (TF-IDF + logistic regression, :mod:`rungwise.classic`) trained on the
   train split, scored on the test split: the sample task and BANKING77 (the task file's
   200-example test split, and the full test set): accuracy with a bootstrap 95% CI, fit time,
   prediction examples/s.
3. **Prompted rungs, generated vs constrained** on the embedded model: zero-shot and few-shot
   prompts (as the rungs build them) answered by free generation, by the choice constraint
   (every label scored by likelihood; with contextual calibration; and greedy through the
   labels' grammar): accuracy with CI, valid labels, examples/s and the speed against free
   generation of the same prompt, in the same run (configurations take turns round by round,
   so load from other jobs falls on all of them alike).

Data: ``src/rungwise/templates/ticket-routing`` (split as ``load_split`` does) and
``../shared/datasets/banking77`` through ``benchmarks/banking77/task.yaml`` (never copied).

    nice -n 10 python bench/bench_constrained.py                     # everything (about an hour on 2 shared cores)
    python bench/bench_constrained.py --parts classic --no-write     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _md import ROOT, machine, today, write_section  # noqa: E402

SAMPLE = ROOT / "src" / "rungwise" / "templates" / "ticket-routing" / "task.yaml"
BANKING77 = ROOT / "benchmarks" / "banking77" / "task.yaml"
PARTS = ("libraries", "classic", "prompted")

# -- 1. grammar libraries ------------------------------------------------------------------------

DATE = r"\d{4}-\d{2}-\d{2}"
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
LIB_PROMPTS = {
    "regex": ["When did World War II end in Europe? Answer with the date as YYYY-MM-DD.",
              "What is the date of the first Moon landing? Answer with a date.", "Give today's date.",
              "When was the Eiffel Tower opened?", "Date of the fall of the Berlin Wall?",
              "When was Python 3.0 released?", "Write a date in 2024.", "When is Christmas 2025?"],
    "json": ["Extract the person as JSON with name and age: John Smith is 31 years old.",
             "Return JSON for: Mary, aged 45.", "Person: Alice (age 7). Give JSON.", "JSON please: Bob is twenty.",
             "Extract: the patient, Ana Lopez, 62.", "Name and age of: Li Wei, 28, engineer.",
             "Give a JSON object describing a 3 year old named Tom.", "Describe yourself as JSON with name and age."],
}


class Timed:
    """Wraps a logits processor and adds up the time spent in it."""

    def __init__(self, inner: Callable[[Any, Any], Any]) -> None:
        self.inner, self.seconds = inner, 0.0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        t0 = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - t0
        return out


class RowMasks:
    """A processor over per-row matchers, for the libraries that have no transformers processor
    fit for a left-padded batch: each row's matcher consumes the row's last token, then fills
    its row of the allowed-token mask (the same shape as rungwise's llguidance processor)."""

    def __init__(self, lib: Any, grammar: Any, rows: int) -> None:
        self.lib, self.started = lib, False
        self.states = [lib.matcher(grammar) for _ in range(rows)]
        self.live = [True] * rows

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.started:
            for r, tok in enumerate(input_ids[:, -1].tolist()):
                if self.live[r]:
                    self.live[r] = self.lib.accept(self.states[r], tok)
        self.started = True
        return self.lib.mask(self.states, self.live, scores, input_ids)


class Xgrammar:
    name = "xgrammar"
    batching = "BatchGrammarMatcher fills rows in parallel threads"

    def __init__(self, backend: Any, vocab: int) -> None:
        import xgrammar as xgr

        self.xgr, self.vocab, self.eos = xgr, vocab, set(backend.eos_ids)
        t0 = time.perf_counter()
        info = xgr.TokenizerInfo.from_huggingface(backend.tokenizer, vocab_size=vocab, stop_token_ids=backend.eos_ids)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.setup_s = time.perf_counter() - t0

    def compile(self, kind: str, src: Any) -> Any:
        if kind == "regex":
            return self.compiler.compile_regex(src)
        return self.compiler.compile_json_schema(json.dumps(src), any_whitespace=False)

    def processor(self, grammar: Any, rows: int) -> Any:
        return RowMasks(self, grammar, rows)

    def matcher(self, grammar: Any) -> Any:
        return self.xgr.GrammarMatcher(grammar)

    def accept(self, m: Any, tok: int) -> bool:
        return tok not in self.eos and m.accept_token(tok)

    def mask(self, states: Sequence[Any], live: Sequence[bool], scores: Any, input_ids: Any) -> Any:
        bitmask = self.xgr.allocate_token_bitmask(len(states), self.vocab)
        for r, m in enumerate(states):
            if live[r]:
                m.fill_next_token_bitmask(bitmask, r)
        self.xgr.apply_token_bitmask_inplace(scores, bitmask)
        return scores


class Llguidance:
    name = "llguidance (rungwise's processor)"
    batching = "LLExecutor fills rows in parallel threads (rungwise fills them in turn)"

    def __init__(self, backend: Any, vocab: int) -> None:
        from rungwise.backends.grammar import GrammarMasks

        t0 = time.perf_counter()
        self.masks = GrammarMasks(backend.tokenizer, vocab_size=vocab, eos_ids=backend.eos_ids)
        self.setup_s = time.perf_counter() - t0

    def compile(self, kind: str, src: Any) -> Any:
        from rungwise.types import Constraint

        c = Constraint("regex", pattern=src) if kind == "regex" else Constraint("json", json_schema=json.dumps(src))
        self.masks.check(c)  # builds and validates the grammar, as the backend does before decoding
        return c

    def processor(self, grammar: Any, rows: int) -> Any:
        return self.masks.processor(grammar, rows)


class FormatEnforcer:
    name = "lm-format-enforcer"
    batching = "one Python call per row and step"

    def __init__(self, backend: Any, vocab: int) -> None:
        from lmformatenforcer.tokenenforcer import TokenEnforcerTokenizerData

        tok, self.eos = backend.tokenizer, list(backend.eos_ids)
        t0 = time.perf_counter()
        # Its transformers integration does not import under transformers 5
        # (transformers.tokenization_utils.PreTrainedTokenizerBase is gone), so its
        # build_token_enforcer_tokenizer_data is redone here the way it does it.
        zero, special = tok.encode("0")[-1], set(tok.all_special_ids)
        regular = []
        for i in range(vocab):
            if i not in special:
                after_zero, alone = tok.decode([zero, i])[1:], tok.decode([i])
                regular.append((i, after_zero, len(after_zero) > len(alone)))
        self.data = TokenEnforcerTokenizerData(regular, lambda ids: tok.decode(ids).rstrip("\ufffd"), self.eos, False, vocab)
        self.setup_s = time.perf_counter() - t0

    def compile(self, kind: str, src: Any) -> Any:
        return kind, src  # parsers are built per row; there is no separate compile step

    def processor(self, grammar: Any, rows: int) -> Any:
        return RowMasks(self, grammar, rows)

    def matcher(self, grammar: Any) -> Any:
        from lmformatenforcer import JsonSchemaParser, RegexParser, TokenEnforcer

        kind, src = grammar
        return TokenEnforcer(self.data, RegexParser(src) if kind == "regex" else JsonSchemaParser(src))

    def accept(self, m: Any, tok: int) -> bool:
        return tok not in self.eos  # the enforcer reads the whole sequence each step

    def mask(self, states: Sequence[Any], live: Sequence[bool], scores: Any, input_ids: Any) -> Any:
        import torch

        seqs = input_ids.tolist()
        for r, m in enumerate(states):
            if live[r]:
                keep = torch.full((scores.shape[1],), float("-inf"))
                keep[m.get_allowed_tokens(seqs[r]).allowed_tokens] = 0.0
                scores[r] += keep
        return scores


def _valid(kind: str, text: str) -> bool:
    if kind == "regex":
        return re.fullmatch(DATE, text) is not None
    from jsonschema import Draft202012Validator

    try:
        return Draft202012Validator(PERSON).is_valid(json.loads(text))
    except ValueError:
        return False


def part_libraries(backend: Any, max_tokens: int) -> str:
    import transformers

    vocab = int(backend.model.config.vocab_size)
    rows = []
    for lib_cls in (Xgrammar, Llguidance, FormatEnforcer):
        lib = lib_cls(backend, vocab)
        for kind, src in (("regex", DATE), ("json", PERSON)):
            t0 = time.perf_counter()
            grammar = lib.compile(kind, src)
            compile_s = time.perf_counter() - t0
            chats = [[{"role": "user", "content": p}] for p in LIB_PROMPTS[kind]]
            ids = [backend._encode(backend._render(c)) for c in chats]
            input_ids, mask = backend._layout(ids, 0)
            proc = Timed(lib.processor(grammar, len(ids)))
            cfg = transformers.GenerationConfig(max_new_tokens=max_tokens, do_sample=False, pad_token_id=backend.pad_id,
                                                eos_token_id=backend.eos_ids)
            t0 = time.perf_counter()
            with backend._compute():
                out = backend.model.generate(
                    input_ids=input_ids, attention_mask=mask, generation_config=cfg,
                    past_key_values=backend._batch_cache(None, len(ids), input_ids.shape[1] + max_tokens),
                    logits_processor=transformers.LogitsProcessorList([proc]))
            wall = time.perf_counter() - t0
            new = out[:, input_ids.shape[1]:].tolist()
            texts = [backend.tokenizer.decode([t for t in row if t not in backend.eos_ids]) for row in new]
            steps = len(new[0])
            rows.append((lib.name, kind, lib.setup_s, compile_s, 1000 * proc.seconds / steps / len(ids),
                         proc.seconds / wall, sum(_valid(kind, t) for t in texts), len(texts), lib.batching,
                         texts[0]))
            print(f"  {lib.name} {kind}: {rows[-1][2:8]} {texts[:2]!r}", flush=True)
    lines = [
        "| library | constraint | tokenizer setup | compile | mask per row and step | share of generate time | "
        "valid answers | first answer | batching |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, kind, setup, comp, per, share, ok, n, batching, first in rows:
        what = f"regex `{DATE}`" if kind == "regex" else "JSON schema {name: string, age: integer}"
        lines.append(f"| {name} | {what} | {setup:.2f} s | {1000 * comp:.1f} ms | {per:.2f} ms | {100 * share:.1f}% | "
                     f"{ok}/{n} | `{first[:40].replace(chr(10), '⏎')}` | {batching} |")
    return "\n".join(lines)


# -- 2. the classical baseline ---------------------------------------------------------------------


def _score(task: Any, predictions: Sequence[str], test: Sequence[Any]) -> Any:
    from rungwise.evaluate.registry import get_metric
    from rungwise.evaluate.stats import bootstrap_ci

    scores = get_metric(task.metric, task.labels, task.base_dir).score(list(predictions), list(test))
    return scores, bootstrap_ci(scores, seed=0)


def part_classic(tasks: dict[str, Any]) -> str:
    from rungwise.classic import ClassicSpec, train_classifier
    from rungwise.data.dataset import load_split
    from rungwise.data.loaders import load_examples

    lines = ["| task | train | test | accuracy | 95% CI | fit | predict examples/s |", "|---|---:|---:|---:|---|---:|---:|"]
    for name, task in tasks.items():
        split = load_split(task)
        model = train_classifier(split.train, ClassicSpec())
        tests = {f"{name}": split.test}
        if name == "banking77":  # the ladder's 200-example test split, and the whole official test set
            d = task.data
            tests["banking77 (full test set)"] = load_examples(task.resolve(d.test), d.format, d.columns.input,
                                                               d.columns.output)
        for label, test in tests.items():
            texts = [e.input for e in test]
            _, ci = _score(task, model.predict(texts), test)
            per_s = model.examples_per_s(texts, min_seconds=1.0)
            lines.append(f"| {label} | {len(split.train)} | {len(test)} | {100 * ci.value:.1f}% | "
                         f"{100 * ci.ci_low:.1f}% - {100 * ci.ci_high:.1f}% | {model.fit_seconds:.1f} s | {per_s:,.0f} |")
            print("  " + lines[-1], flush=True)
    return "\n".join(lines)


# -- 3. prompted rungs: generated vs constrained ---------------------------------------------------


@dataclass
class Config:
    name: str
    params: Any  # GenParams
    seconds: float = 0.0
    texts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


def part_prompted(backend: Any, tasks: dict[str, Any], limits: dict[str, int], rounds: int) -> str:
    from rungwise.backends.calibration import ChoiceCalibration, content_free_prompts
    from rungwise.data.dataset import load_split
    from rungwise.prompting import PromptTemplate, system_prompt
    from rungwise.rungs.prompt_rungs import stratified_demos
    from rungwise.types import Constraint, GenParams

    lines = [
        "| task | prompt | answered by | n | accuracy | 95% CI | valid labels | examples/s | speed vs generate | "
        "completion tokens |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for tname, task in tasks.items():
        split = load_split(task)
        test = split.test[: limits.get(tname, len(split.test))]
        system = system_prompt(task.instructions, task.labels)
        demos = stratified_demos(split.train, task.rungs.few_shot.k, task.data.seed, True)
        templates = {"zero_shot": PromptTemplate(system),
                     f"few_shot (k={task.rungs.few_shot.k})": PromptTemplate(system, tuple((d.input, d.output) for d in demos))}
        gen_params = task.model.params.to_params()
        choice = Constraint("choice", choices=tuple(task.labels))
        greedy = Constraint("choice", choices=tuple(task.labels), choice_method="greedy")
        backend.grammar_masks()  # built once per backend (about a second): not any row's cost
        for pname, tpl in templates.items():
            # The shared prefix (system prompt + demos) is computed once and reused by every
            # configuration: compute it before the clock starts, so no row is charged for it.
            backend.generate([tpl.for_example(test[0])], GenParams(max_tokens=1))
            t0 = time.perf_counter()
            cal = ChoiceCalibration.measure(backend, content_free_prompts(tpl.render), choice)
            cal_s = time.perf_counter() - t0
            configs = [
                Config("free generation", gen_params),
                Config("choice, likelihood", GenParams(constraint=choice)),
                Config("choice, greedy grammar", GenParams(max_tokens=4, constraint=greedy)),
            ]
            likelihood, calibrated_texts = configs[1], []
            for r in range(rounds):
                chunk = test[r::rounds]
                prompts = [tpl.for_example(e) for e in chunk]
                for cfg in configs:
                    t0 = time.perf_counter()
                    out = backend.generate(prompts, cfg.params)
                    cfg.seconds += time.perf_counter() - t0
                    cfg.texts += [c.text for c in out]
                    cfg.prompt_tokens += sum(c.prompt_tokens for c in out)
                    cfg.completion_tokens += sum(c.completion_tokens for c in out)
                    if cfg is likelihood:
                        calibrated_texts += [c.text for c in cal.apply(out)]
                print(f"  {tname} {pname} round {r + 1}/{rounds}: "
                      + ", ".join(f"{c.name} {c.seconds:.0f} s" for c in configs), flush=True)
            order = [e for r in range(rounds) for e in test[r::rounds]]
            calibrated = Config("choice, likelihood + calibration", likelihood.params, likelihood.seconds + cal_s,
                                calibrated_texts, likelihood.prompt_tokens, likelihood.completion_tokens)
            base = configs[0].seconds
            for cfg in [*configs[:2], calibrated, configs[2]]:
                scores, ci = _score(task, cfg.texts, order)
                speed = base / cfg.seconds
                lines.append(f"| {tname} | {pname} | {cfg.name} | {len(order)} | {100 * ci.value:.1f}% | "
                             f"{100 * ci.ci_low:.1f}% - {100 * ci.ci_high:.1f}% | {100 * scores.valid_rate:.0f}% | "
                             f"{len(order) / cfg.seconds:.2f} | {speed:.2f}x | {cfg.completion_tokens / len(order):.1f} |")
                print("  " + lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--banking77-n", type=int, default=100, help="test examples of banking77 in the prompted part")
    ap.add_argument("--sample-n", type=int, default=None, help="test examples of the sample task (default: all)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds in which the configurations take turns")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: see the inference section)")
    ap.add_argument("--lib-max-tokens", type=int, default=40)
    ap.add_argument("--no-write", action="store_true", help="print the tables, leave BENCHMARKS.md alone")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from rungwise.config.task import load_task

    torch.set_num_threads(args.threads)
    command = " ".join(["python bench/bench_constrained.py", *(argv if argv is not None else sys.argv[1:])])
    tasks = {"sample (ticket-routing)": load_task(SAMPLE), "banking77": load_task(BANKING77)}
    t_start = time.perf_counter()
    sections: dict[str, str] = {}
    backend = None
    if "libraries" in args.parts or "prompted" in args.parts:
        from rungwise.backends.local import LocalBackend

        backend = LocalBackend.load("smollm2-135m-instruct")
    if "libraries" in args.parts:
        print("== grammar libraries", flush=True)
        sections["libraries"] = part_libraries(backend, args.lib_max_tokens)
    if "classic" in args.parts:
        print("== classical baseline", flush=True)
        sections["classic"] = part_classic({"sample": tasks["sample (ticket-routing)"], "banking77": tasks["banking77"]})
    if "prompted" in args.parts:
        print("== prompted rungs: generated vs constrained", flush=True)
        limits = {"banking77": args.banking77_n, **({"sample (ticket-routing)": args.sample_n} if args.sample_n else {})}
        sections["prompted"] = part_prompted(backend, tasks, limits, args.rounds)
    minutes = (time.perf_counter() - t_start) / 60
    md = render(sections, command, minutes)
    print(md)
    if not args.no_write:
        write_section("constrained", md)
    return 0


CHOSEN_NOTE = (
    "Chosen: **llguidance**. Its regexes follow Python's `re` (the engine the regex metric scores with): inline "
    "flags such as `(?i)`, which an `ignore_case` constraint needs, and Unicode classes; xgrammar rejects `(?i)` "
    '("Group modifier flag is not supported yet"), so case-insensitive patterns would need a hand-written rewrite. '
    "Grammars compile in milliseconds and its masks take about 1% of the generate time or less; its tokenizer setup "
    "(a second or two, once per backend) is the only place xgrammar is clearly ahead. lm-format-enforcer's "
    "transformers integration does not import under transformers 5, its tokenizer setup takes several seconds, its "
    "JSON masks cost an order of magnitude more per step than the others', and its JSON grammar lets a small model "
    "pad with newlines until max_tokens."
)
PROMPTED_NOTE = (
    "What the rows show by construction: *choice, likelihood* runs every label's tokens through the model (the "
    "token trie: 6 nodes for the sample task's 4 labels, 382 for BANKING77's 77, against the 3-25 tokens a "
    "generated answer takes), so it is cheaper than generating on a small label set and several times dearer on a "
    "large one; *greedy grammar* costs one answer's tokens whatever the label set. Every constrained row is 100% "
    'valid labels by construction; calibration needs the likelihood scores (`trace["choice_logprobs"]`).'
)


def render(sections: dict[str, str], command: str, minutes: float) -> str:
    out = [
        "## constrained: constrained decoding and the classical baseline (issue 10)",
        "",
        f"Machine: {machine()}; torch threads 1; 2 cores shared with other jobs. Date: {today()}. `{command}` "
        f"({minutes:.0f} min).",
    ]
    if "libraries" in sections:
        out += ["", "### Grammar libraries on the embedded model", "",
                "SmolLM2-135M-Instruct in bf16, 8 prompts per constraint in one left-padded batch, greedy, up to 40 new "
                "tokens. *Mask per row and step*: time in the logits processor (matchers consume the last tokens, fill "
                "and apply the allowed-token mask) per row and decoding step. *Valid*: Python `re.fullmatch` / "
                "jsonschema on the decoded answer (an answer cut at 40 tokens is invalid).",
                "", sections["libraries"], "",
                CHOSEN_NOTE]
    if "classic" in sections:
        out += ["", "### Classical baseline: TF-IDF + logistic regression (`rungwise.classic`)", "",
                "Word 1-2-grams and character 2-5-grams (within word boundaries), sublinear TF-IDF, logistic regression "
                "C=10 (lbfgs), BLAS/OpenMP limited to 1 thread; trained on the train split only. Accuracy with a "
                "bootstrap 95% CI (1000 resamples). Examples/s: batched `predict_proba` on the test texts.",
                "", sections["classic"]]
    if "prompted" in sections:
        out += ["", "### Prompted rungs: generated vs constrained (embedded model)", "",
                "The zero_shot and few_shot prompts as the rungs build them (instructions + the label list; stratified "
                "demos from train). *free generation*: the task's generation parameters, label parsed from the text. "
                "*choice, likelihood*: every label plus the end-of-turn token scored after the prompt (one row per "
                "example through a token trie, shared prefix cached), the most likely label answers. *+ calibration*: "
                "contextual calibration (three content-free inputs scored once per prompt, their mean label "
                "probabilities divided out; its one-time cost is included in the time). *choice, greedy grammar*: "
                "greedy decoding through the labels' alternation with the llguidance mask (what vLLM's choice does). "
                "*Speed vs generate*: examples/s against free generation of the same prompt, same run. BANKING77: the "
                "first 100 examples of the task's 200-example test split (`--banking77-n`).",
                "", sections["prompted"], "",
                PROMPTED_NOTE]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
