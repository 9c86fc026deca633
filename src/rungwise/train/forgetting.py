"""The forgetting check: did fine-tuning cost the model general ability?

After every fine-tune, the base and the tuned model answer the same multiple-choice probe,
scored by the log-likelihood of each choice (no generation, no parsing: the most likely choice
is the answer). The report is the accuracy delta in points with a paired-bootstrap 95% CI and
an exact McNemar p-value, and a warning when the drop exceeds a threshold (default 2 points).

A probe can only show forgetting where the base model knows something: the base model is scored
first, and when it does not answer significantly above chance (exact one-sided test, 5% level)
the check says it is inconclusive and does not score the tuned model. The embedded 135M model
is such a case on MMLU (19.5% with letters, 24% scored as cloze, on 200 questions; chance 25%):
there a delta would be noise read as a finding.

Probes:

- ``"mmlu"`` (default): a fixed, seeded sample of the MMLU test set (57 subjects, 4 choices),
  read from ``$RUNGWISE_SHARED/datasets/mmlu`` or ``../shared/datasets/mmlu`` next to the
  repository (headerless CSVs: question, A, B, C, D, answer letter).
- a path to your own JSONL file, one question per line::

      {"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": 1}

  ``answer`` is the index of the right choice, its letter (``"B"``), or its exact text.

Example:
    >>> res = forgetting_check(base_backend, tuned_backend)  # doctest: +SKIP
    >>> print(res.summary())  # doctest: +SKIP
    forgetting (mmlu, n=200): base 31.0%, tuned 30.0%, delta -1.0 points [-4.5, +2.5], p=0.77
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rungwise.backends.base import Backend
from rungwise.config.task import Task
from rungwise.errors import DataError
from rungwise.evaluate.scores import ScoreSet
from rungwise.evaluate.stats import paired_test
from rungwise.train.config import ForgettingSpec
from rungwise.types import Chat

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class ProbeQuestion:
    """One multiple-choice question; ``answer`` is the index of the right choice."""

    question: str
    choices: tuple[str, ...]
    answer: int
    source: str = ""

    def chat(self) -> Chat:
        """The prompt: the question, lettered options, and the rule to answer with a letter."""
        opts = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(self.choices))
        return [
            {
                "role": "user",
                "content": f"{self.question.strip()}\n\n{opts}\n\nAnswer with the letter of the correct option.",
            }
        ]

    @property
    def letters(self) -> list[str]:
        return list(LETTERS[: len(self.choices)])


#: The base model must beat chance on the probe at this significance level for the check to count.
CHANCE_ALPHA = 0.05


@dataclass
class ForgettingResult:
    """Base vs tuned accuracy on the probe; ``delta_points`` = tuned - base, in points.

    ``chance`` is the accuracy of guessing (the mean of 1 / choices) and ``base_p_above_chance``
    the one-sided p-value of the base model's score against it. When that is not significant the
    check is ``inconclusive``: the tuned model is not scored and its fields are None.
    """

    probe: str
    n: int
    base_acc: float
    tuned_acc: float | None
    delta_points: float | None
    ci_low: float | None  # points
    ci_high: float | None  # points
    p_value: float | None
    threshold_points: float
    warning: bool
    chance: float
    base_p_above_chance: float

    @property
    def inconclusive(self) -> bool:
        return self.tuned_acc is None

    def summary(self) -> str:
        if self.delta_points is None or self.ci_low is None or self.ci_high is None or self.p_value is None:
            return (
                f"forgetting ({self.probe}, n={self.n}): inconclusive: the base model scores {self.base_acc:.1%}, not "
                f"above chance ({self.chance:.1%}, p={self.base_p_above_chance:.2g}), so this probe cannot show what "
                "fine-tuning costs it; the tuned model was not scored (point forgetting.probe at a JSONL of "
                "questions this model answers above chance)"
            )
        s = (
            f"forgetting ({self.probe}, n={self.n}): base {self.base_acc:.1%}, tuned {self.tuned_acc:.1%}, "
            f"delta {self.delta_points:+.1f} points [{self.ci_low:+.1f}, {self.ci_high:+.1f}], p={self.p_value:.2g}"
        )
        if self.warning:
            s += f"  WARNING: the tuned model lost more than {self.threshold_points:g} points of general ability"
        return s

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def shared_dir() -> Path:
    """The shared datasets folder: ``$RUNGWISE_SHARED`` or ``../shared`` beside the repository."""
    env = os.environ.get("RUNGWISE_SHARED")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve()
    for cand in (here.parents[3] / "shared", Path.cwd().parent / "shared", Path.cwd() / "shared"):
        if (cand / "datasets").is_dir():
            return cand
    return here.parents[3] / "shared"


def mmlu_dir() -> Path:
    return shared_dir() / "datasets" / "mmlu"


def _mmlu_questions() -> list[ProbeQuestion]:
    root = mmlu_dir() / "data" / "test"
    files = sorted(root.glob("*_test.csv")) if root.is_dir() else []
    if not files:
        raise DataError(
            f"the MMLU probe is not available: no data/test/*_test.csv under {mmlu_dir()}",
            hint="set RUNGWISE_SHARED to the folder holding datasets/mmlu, or set rungs.finetune.forgetting.probe "
            "to your own JSONL file of {question, choices, answer}",
        )
    out = []
    for f in files:
        with open(f, encoding="utf-8", newline="") as fh:
            for i, row in enumerate(csv.reader(fh), 1):
                if len(row) != 6 or row[5].strip() not in ("A", "B", "C", "D"):
                    raise DataError(f"{f}:{i}: expected question, A, B, C, D, answer letter", hint="restore the MMLU CSV")
                out.append(ProbeQuestion(row[0], tuple(row[1:5]), "ABCD".index(row[5].strip()), f"{f.name}:{i}"))
    return out


def _answer_index(value: object, choices: list[str], where: str) -> int:
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        if 0 <= value < len(choices):
            return value
        raise DataError(f"{where}: answer index {value} is out of range (0..{len(choices) - 1})", hint="use a 0-based index")
    if isinstance(value, str):
        v = value.strip()
        if len(v) == 1 and v.upper() in LETTERS[: len(choices)]:
            return LETTERS.index(v.upper())
        if v in choices:
            return choices.index(v)
    raise DataError(
        f"{where}: answer {value!r} is not an index, a letter or one of the choices",
        hint='write "answer": 1, "answer": "B", or the exact text of the right choice',
    )


def _file_questions(path: Path) -> list[ProbeQuestion]:
    if not path.exists():
        raise DataError(
            f"{path}: forgetting probe file not found",
            hint="set rungs.finetune.forgetting.probe to 'mmlu' or to a JSONL file of {question, choices, answer}",
        )
    out = []
    text = path.read_text(encoding="utf-8")
    for i, line in enumerate(io.StringIO(text), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})", hint="one JSON object per line") from None
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object", hint='{"question": ..., "choices": [...], "answer": 0}')
        q, choices = rec.get("question"), rec.get("choices")
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{where}: missing or empty 'question'", hint="give the question text")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{where}: 'choices' must be a list of at least two strings", hint='"choices": ["3", "4"]')
        if len(choices) > len(LETTERS):
            raise DataError(f"{where}: at most {len(LETTERS)} choices", hint="split the question")
        if "answer" not in rec:
            raise DataError(f"{where}: missing 'answer'", hint="give the index, letter or text of the right choice")
        out.append(ProbeQuestion(q, tuple(choices), _answer_index(rec["answer"], choices, where), where))
    if not out:
        raise DataError(f"{path}: the probe file has no questions", hint="add one JSON object per line")
    return out


def load_probe(probe: str = "mmlu", n: int = 200, seed: int = 0, base_dir: Path | None = None) -> list[ProbeQuestion]:
    """A fixed, seeded sample of ``n`` probe questions (all of them when there are fewer).

    ``probe`` is ``"mmlu"`` or a JSONL path (relative to ``base_dir``, e.g. the task's folder).
    The same ``probe``, ``n`` and ``seed`` give the same questions on any machine.
    """
    if n <= 0:
        raise DataError(f"forgetting probe size must be positive, got {n}", hint="set forgetting.n: 200")
    if probe == "mmlu":
        pool = _mmlu_questions()
    else:
        p = Path(probe).expanduser()
        pool = _file_questions(p if p.is_absolute() or base_dir is None else base_dir / p)
    if len(pool) <= n:
        return pool
    idx = sorted(random.Random(seed).sample(range(len(pool)), n))
    return [pool[i] for i in idx]


def probe_scores(backend: Backend, questions: list[ProbeQuestion]) -> list[float]:
    """1.0 where the backend's most likely choice letter is the right one, else 0.0."""
    lls = backend.loglikelihood([q.chat() for q in questions], [q.letters for q in questions])
    out = []
    for q, ll in zip(questions, lls, strict=True):
        best = max(range(len(ll)), key=lambda i: ll[i])
        out.append(1.0 if best == q.answer else 0.0)
    return out


def p_above_chance(scores: list[float], questions: list[ProbeQuestion]) -> float:
    """Exact one-sided p-value of scoring at least ``sum(scores)`` by guessing uniformly among
    each question's choices (a Poisson-binomial tail: questions may have different numbers of
    choices)."""
    dist = np.zeros(len(questions) + 1)
    dist[0] = 1.0
    for q in questions:
        p = 1.0 / len(q.choices)
        dist[1:] = dist[1:] * (1 - p) + dist[:-1] * p
        dist[0] *= 1 - p
    return float(min(1.0, dist[int(round(sum(scores))):].sum()))


def forgetting_check(
    base: Backend,
    tuned: Backend,
    *,
    probe: str = "mmlu",
    n: int = 200,
    seed: int = 0,
    threshold_points: float = 2.0,
    base_dir: Path | None = None,
) -> ForgettingResult:
    """Score ``base`` and ``tuned`` on the same probe sample; warn when the tuned model drops more
    than ``threshold_points`` accuracy points.

    The CI is a paired bootstrap over questions (both models answered the same ones) and the
    p-value an exact McNemar test, from :func:`rungwise.evaluate.stats.paired_test`. A base model
    that does not beat chance on the probe makes the result inconclusive (``tuned`` unscored).
    """
    questions = load_probe(probe, n, seed, base_dir)
    b = probe_scores(base, questions)
    chance = sum(1.0 / len(q.choices) for q in questions) / len(questions)
    p_chance = p_above_chance(b, questions)
    if p_chance > CHANCE_ALPHA:
        return ForgettingResult(probe=probe, n=len(questions), base_acc=sum(b) / len(b), tuned_acc=None,
                                delta_points=None, ci_low=None, ci_high=None, p_value=None,
                                threshold_points=threshold_points, warning=False, chance=chance,
                                base_p_above_chance=p_chance)
    t = probe_scores(tuned, questions)
    valid = [True] * len(questions)
    sb = ScoreSet("accuracy", b, valid, [""] * len(b))
    st = ScoreSet("accuracy", t, valid, [""] * len(t))
    cmp = paired_test(st, sb, a_name="tuned", b_name="base", seed=seed)
    delta = 100 * (st.value - sb.value)
    return ForgettingResult(
        probe=probe,
        n=len(questions),
        base_acc=sb.value,
        tuned_acc=st.value,
        delta_points=delta,
        ci_low=100 * cmp.ci_low,
        ci_high=100 * cmp.ci_high,
        p_value=cmp.p_value,
        threshold_points=threshold_points,
        warning=delta < -threshold_points,
        chance=chance,
        base_p_above_chance=p_chance,
    )


def forgetting_for_task(task: Task, base: Backend, tuned: Backend) -> ForgettingResult | None:
    """Run the check with the task's ``rungs.finetune.forgetting`` settings (None when disabled).

    A relative probe path is read from the task file's folder.
    """
    spec = task.rungs.section("finetune").forgetting
    return check_with(spec, base, tuned, task.base_dir) if spec.enabled else None


def check_with(spec: ForgettingSpec, base: Backend, tuned: Backend, base_dir: Path | None) -> ForgettingResult:
    """:func:`forgetting_check` with the settings of a ``forgetting:`` section."""
    return forgetting_check(base, tuned, probe=spec.probe, n=spec.n, seed=spec.seed,
                            threshold_points=spec.threshold_points, base_dir=base_dir)


def forgetting_record(
    base: Backend, tuned: Backend, spec: ForgettingSpec, *, base_dir: Path, section: str
) -> tuple[dict[str, Any] | None, str | None]:
    """What a tuned rung records of the check: (the result as a dict, its one-line summary), or
    (None, why it was skipped) when the default MMLU probe is not on this machine, or (None, None)
    when ``spec`` disables it. ``section`` names the rung's task.yaml section in that note.

    A user's own probe file that is broken raises (the user must fix it); only the default probe
    may be missing, because it reads the shared datasets folder that a machine may lack.

    Example:
        >>> fg, summary = forgetting_record(base, tuned, spec, base_dir=task.base_dir, section="finetune")  # doctest: +SKIP
    """
    if not spec.enabled:
        return None, None
    try:
        fg = check_with(spec, base, tuned, base_dir)
    except DataError as exc:
        if spec.probe != "mmlu":
            raise
        return None, (f"forgetting check skipped: {exc.message} (set RUNGWISE_SHARED to a folder with datasets/mmlu, "
                      f"or rungs.{section}.forgetting.probe to your own JSONL probe)")
    return fg.to_dict(), fg.summary()
