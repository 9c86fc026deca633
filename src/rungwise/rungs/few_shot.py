"""``few_shot``: k demonstrations from the train split, as earlier chat turns.

``stratified`` uses one seeded demo set for every input, so the system prompt and demo block
form a shared prefix whose KV cache is computed once. ``nearest`` picks the k train examples
most similar to each input (TF-IDF cosine), most similar last (closest to the question).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from rungwise.config.base import Strict
from rungwise.errors import ConfigError
from rungwise.prompting import PromptTemplate
from rungwise.rungs.base import (
    Prepared,
    PromptArtifact,
    PromptPlan,
    Rung,
    RungArtifact,
    RungContext,
    base_system,
)
from rungwise.types import Example


class FewShotConfig(Strict):
    """The ``rungs.few_shot`` section."""

    k: int = Field(5, gt=0, description="Number of demonstrations from the train split.")
    strategy: Literal["stratified", "nearest"] = Field(
        "stratified",
        description="stratified: a seeded sample spread over labels, the same demos for every input (its prefix "
        "is cached); nearest: the k train examples most similar to each input.",
    )


class FewShotArtifact(PromptArtifact):
    """The fixed prompt (with its demos, for ``stratified``), and how the demos were chosen."""

    strategy: Literal["stratified", "nearest"]
    k: int
    demo_sources: list[str] = Field(default_factory=list, description="file:line of each fixed demo.")
    demo_pool: int | None = Field(None, description="nearest: how many train examples the demos come from.")
    n_train: int | None = Field(None, description="Train examples the demos were chosen from.")

    def notes(self) -> list[str]:
        if self.n_train is not None and self.k > self.n_train:
            return [f"rungs.few_shot.k is {self.k} but the train split has {self.n_train} examples: every one of them "
                    "is a demo"]
        return []


def stratified_demos(train: Sequence[Example], k: int, seed: int, by_label: bool) -> list[Example]:
    """k demos spread over the output labels (round-robin over a seeded label order), seeded.

    With fewer slots than labels, k distinct labels are picked at random; demos are then
    shuffled so the last demo's label does not bias the answer.
    """
    rng = random.Random(seed)
    if not by_label:
        return rng.sample(list(train), min(k, len(train)))
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in train:
        groups[ex.output].append(ex)
    labels = sorted(groups)
    rng.shuffle(labels)
    pools = {lab: rng.sample(groups[lab], len(groups[lab])) for lab in labels}
    demos: list[Example] = []
    while len(demos) < min(k, len(train)):
        for lab in labels:
            if pools[lab] and len(demos) < k:
                demos.append(pools[lab].pop())
    rng.shuffle(demos)
    return demos


class _Similarity:
    """TF-IDF cosine nearest neighbours over the train inputs (scipy sparse; no model needed)."""

    def __init__(self, texts: Sequence[str]) -> None:
        import numpy as np
        from scipy import sparse

        from rungwise.data.split import normalize_text

        self._norm = normalize_text
        vocab: dict[str, int] = {}
        rows, cols = [], []
        for i, t in enumerate(texts):
            for tok in self._tokens(t):
                rows.append(i)
                cols.append(vocab.setdefault(tok, len(vocab)))
        self.vocab = vocab
        tf = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), max(1, len(vocab))))
        tf.data = 1 + np.log(tf.data)  # duplicates were summed: sublinear tf
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        self.idf = np.log((1 + len(texts)) / (1 + df)) + 1
        self.matrix = self._l2(tf.multiply(self.idf).tocsr())

    def _tokens(self, text: str) -> list[str]:
        words = self._norm(text).split()
        return words + [a + " " + b for a, b in zip(words, words[1:], strict=False)]

    @staticmethod
    def _l2(m):  # type: ignore[no-untyped-def]
        import numpy as np
        from scipy import sparse

        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        norms[norms == 0] = 1
        return sparse.diags(1 / norms) @ m

    def top_k(self, text: str, k: int) -> list[int]:
        import numpy as np
        from scipy import sparse

        cols = [self.vocab[t] for t in self._tokens(text) if t in self.vocab]
        if not cols:
            return list(range(min(k, self.matrix.shape[0])))
        q = sparse.csr_matrix((np.ones(len(cols)), ([0] * len(cols), cols)), shape=(1, self.matrix.shape[1]))
        q.sum_duplicates()
        q.data = 1 + np.log(q.data)
        q = self._l2(q.multiply(self.idf).tocsr())
        sims = (self.matrix @ q.T).toarray().ravel()
        k = min(k, len(sims))
        idx = np.argpartition(-sims, k - 1)[:k]
        return [int(i) for i in idx[np.lexsort((idx, -sims[idx]))]]


class FewShot(Rung):
    """k demonstrations from the train split, as earlier chat turns (see the module docstring)."""

    name = "few_shot"
    summary = "k demos from train (stratified or nearest-neighbour)"
    Config = FewShotConfig
    Artifact = FewShotArtifact

    def prepare(self, ctx: RungContext) -> Prepared:
        cfg: FewShotConfig = ctx.config
        system = base_system(ctx.task)
        if cfg.strategy == "nearest":
            tpl = PromptTemplate(system)
            art = FewShotArtifact(prompt=tpl.to_dict(), strategy="nearest", k=cfg.k, demo_pool=len(ctx.train),
                                  n_train=len(ctx.train))
            return self._nearest(art, tpl, ctx.train)
        demos = stratified_demos(ctx.train, cfg.k, ctx.task.data.seed, by_label=bool(ctx.task.labels))
        tpl = PromptTemplate(system, tuple((d.input, d.output) for d in demos))
        art = FewShotArtifact(prompt=tpl.to_dict(), strategy="stratified", k=cfg.k, demo_sources=[d.source for d in demos],
                              n_train=len(ctx.train))
        return Prepared(art, tpl)

    def load(self, ctx: RungContext, artifact: RungArtifact) -> Prepared:
        assert isinstance(artifact, FewShotArtifact)
        tpl = PromptTemplate.from_dict(artifact.prompt)
        if artifact.strategy == "stratified":
            return Prepared(artifact, tpl)
        # Nearest-neighbour demos are rebuilt over the same (seeded, deterministic) train split.
        if artifact.demo_pool is not None and artifact.demo_pool != len(ctx.train):
            raise ConfigError(
                f"few_shot was climbed with {artifact.demo_pool} train examples to pick demos from; the task now "
                f"has {len(ctx.train)}",
                hint="serve with the data the run used, or climb again",
            )
        return self._nearest(artifact, tpl, ctx.train)

    @staticmethod
    def _nearest(art: FewShotArtifact, tpl: PromptTemplate, train: Sequence[Example]) -> Prepared:
        pool = list(train)
        index = _Similarity([ex.input for ex in pool])

        def per_example(ex: Example) -> PromptPlan:
            nn = index.top_k(ex.input, art.k)
            demos = tuple((pool[i].input, pool[i].output) for i in reversed(nn))
            return PromptPlan(PromptTemplate(tpl.system, demos), trace={"demos": [pool[i].source for i in reversed(nn)]})

        return Prepared(art, tpl, per_example=per_example)
