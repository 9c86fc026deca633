"""Training, using and storing the classical baseline (scikit-learn).

Saved as data, never pickle: the arrays (IDF weights, coefficients, intercepts) in
``classifier.safetensors`` and the rest (labels, vocabularies, the spec, the fit time, the
arrays' hash) in ``classic.json``. Loading rebuilds scikit-learn's own objects from the spec and
sets their fitted attributes, so the transform and the prediction are still the library's, and a
saved file can hold no code. skops was measured first: it stores every vocabulary entry as its
own JSON node, 9 MB and 7.9 s to save the sample task's 11k n-grams (banking77 has 10x more),
against a fraction of a second here.

Example:
    >>> model = train_classifier(split.train, ClassicSpec())  # doctest: +SKIP
    >>> model.predict(["I was charged twice"])  # doctest: +SKIP
    ['billing']
    >>> ClassicModel.load(model.save("out/classic")).predict(["I was charged twice"])  # doctest: +SKIP
    ['billing']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rungwise._deps import require
from rungwise.classic.config import ClassicSpec
from rungwise.classic.features import FEATURIZERS
from rungwise.errors import BackendError, DataError
from rungwise.types import Example

MODEL_FILE = "classifier.safetensors"
META_FILE = "classic.json"
FORMAT_VERSION = 1


def example_text(ex: Example) -> str:
    """What the classifier reads of an example: the input (the last user turn of chat data)."""
    return ex.input


def example_label(ex: Example) -> str:
    """The example's label: its ``label`` field, else its expected output (stripped)."""
    return str(ex.label if ex.label is not None else ex.output).strip()


@dataclass
class ClassicModel:
    """A fitted classical classifier. ``labels`` are in the order of :meth:`predict_proba`'s columns."""

    pipeline: Any
    labels: tuple[str, ...]
    spec: ClassicSpec
    fit_seconds: float
    n_train: int

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable label of each text."""
        with thread_limit(self.spec.threads):
            return [str(x) for x in self.pipeline.predict(list(texts))]

    def predict_proba(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Each text's probability per label."""
        with thread_limit(self.spec.threads):
            probs = self.pipeline.predict_proba(list(texts))
        return [dict(zip(self.labels, (float(p) for p in row), strict=True)) for row in probs]

    def examples_per_s(self, texts: Sequence[str], *, min_seconds: float = 0.2) -> float:
        """Measured prediction throughput on ``texts`` (repeated until ``min_seconds`` have passed):
        what prices it as self-hosted CPU inference."""
        if not texts:
            raise DataError("examples_per_s needs at least one text")
        done, t0 = 0, time.perf_counter()
        while True:
            self.predict_proba(texts)
            done += len(texts)
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                return done / elapsed

    # -- storage --------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``classifier.safetensors`` and ``classic.json`` into ``directory``; returns the directory."""
        st = require("safetensors.numpy")
        sklearn = require("sklearn")
        np = require("numpy")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays, features = FEATURIZERS[self.spec.variant].state(self.pipeline.named_steps["features"])
        clf = self.pipeline.named_steps["clf"]
        arrays = {f"features.{k}": v for k, v in arrays.items()}
        arrays["clf.coef"], arrays["clf.intercept"] = clf.coef_, clf.intercept_
        st.save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(d / MODEL_FILE))
        meta = {
            "format": FORMAT_VERSION,
            "labels": list(self.labels),
            "spec": self.spec.model_dump(mode="json"),
            "features": features,
            "fit_seconds": self.fit_seconds,
            "n_train": self.n_train,
            "sklearn": sklearn.__version__,
            "sha256": _sha256(d / MODEL_FILE),
        }
        (d / META_FILE).write_text(json.dumps(meta, ensure_ascii=False) + "\n", encoding="utf-8")
        return d

    @classmethod
    def load(cls, directory: str | Path) -> ClassicModel:
        """Rebuild a saved classifier (no training). Raises :class:`BackendError` for a missing,
        altered or unreadable one."""
        st = require("safetensors.numpy")
        np = require("numpy")
        d = Path(directory)
        try:
            meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
            spec = ClassicSpec.model_validate(meta["spec"])
            labels = tuple(str(x) for x in meta["labels"])
        except (OSError, ValueError, KeyError) as exc:
            raise BackendError(f"{d / META_FILE}: cannot read the classifier's metadata ({exc})",
                               hint="point at a directory written by ClassicModel.save (the classic rung's artifact)") from None
        path = d / MODEL_FILE
        if not path.is_file() or _sha256(path) != meta.get("sha256"):
            raise BackendError(f"{path}: missing, or not the file that was saved (its hash differs)",
                               hint="re-run the classic rung to rebuild the classifier")
        arrays = st.load_file(str(path))
        features = FEATURIZERS[spec.variant].restore(
            spec, {k.removeprefix("features."): v for k, v in arrays.items() if k.startswith("features.")},
            meta["features"])
        clf = _logistic_regression(spec)
        clf.classes_ = np.array(labels)
        clf.coef_, clf.intercept_ = arrays["clf.coef"], arrays["clf.intercept"]
        clf.n_features_in_ = clf.coef_.shape[1]
        pipeline = require("sklearn.pipeline").Pipeline([("features", features), ("clf", clf)])
        return cls(pipeline, labels, spec, float(meta["fit_seconds"]), int(meta["n_train"]))


@contextlib.contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Cap the BLAS and OpenMP thread pools (None: leave them as they are)."""
    if threads is None:
        yield
        return
    threadpoolctl = require("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=threads):
        yield


def _logistic_regression(spec: ClassicSpec) -> Any:
    linear = require("sklearn.linear_model")
    return linear.LogisticRegression(C=spec.C, class_weight=spec.class_weight, max_iter=spec.max_iter,
                                     random_state=spec.seed)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_classifier(examples: Sequence[Example], spec: ClassicSpec | None = None) -> ClassicModel:
    """Fit the spec's featurizer + logistic regression on ``examples`` (the train split only).

    Example:
        >>> train_classifier([Example("refund please", "billing"), Example("app crashes", "bug")]).labels  # doctest: +SKIP
        ('billing', 'bug')
    """
    spec = spec or ClassicSpec()
    pipeline_mod = require("sklearn.pipeline")
    texts = [example_text(ex) for ex in examples]
    labels = [example_label(ex) for ex in examples]
    counts = Counter(labels)
    if len(counts) < 2:
        raise DataError(
            f"the classical baseline needs examples of at least two labels in the train split, got {len(counts)}",
            hint="check the data's labels (or the split: test_fraction, max_train)",
        )
    blank = [ex.source or str(i) for i, (ex, t) in enumerate(zip(examples, texts, strict=True)) if not t.strip()]
    if blank:
        raise DataError(f"{blank[0]}: empty input ({len(blank)} examples)", hint="remove or fill examples without text")
    pipeline = pipeline_mod.Pipeline([("features", FEATURIZERS[spec.variant].build(spec)),
                                      ("clf", _logistic_regression(spec))])
    t0 = time.perf_counter()
    with thread_limit(spec.threads):
        pipeline.fit(texts, labels)
    seconds = time.perf_counter() - t0
    classes = tuple(str(c) for c in pipeline.classes_)
    return ClassicModel(pipeline, classes, spec, seconds, len(texts))
