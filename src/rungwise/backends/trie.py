"""Scoring every choice of a prompt in one forward pass: a token trie behind tree attention.

A prompt's choices (the labels of a classification task, the letters of a multiple-choice
question) are laid out after it as the nodes of a token trie: each node is one token, and
choices that share their first tokens (``card_arrival``, ``card_linking``) share those nodes.
Each node attends to the prompt and to its own ancestors only, at the position it would have
if its choice followed the prompt directly, so one row of ``len(prompt) + len(trie)`` tokens
gives the log-probability of every choice: exactly what scoring each choice in its own row
would give, without repeating the prompt once per choice.

Example:
    >>> trie = ChoiceTrie.build([[5, 7], [5, 9], [4]])
    >>> trie.tokens, trie.parents, trie.depths, trie.paths
    ([5, 7, 9, 4], [-1, 0, 0, -1], [0, 1, 1, 0], [[0, 1], [0, 2], [3]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rungwise._deps import require


@dataclass(frozen=True)
class ChoiceTrie:
    """The token trie of one prompt's choices. Nodes are stored parents first.

    ``parents[n]`` is -1 for a node right after the prompt; ``paths[c]`` lists the nodes of
    choice ``c``'s tokens in order (empty for an empty choice).
    """

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    paths: list[list[int]]

    @classmethod
    def build(cls, continuations: Sequence[Sequence[int]]) -> ChoiceTrie:
        """The trie of the token sequences ``continuations`` (one per choice, in order)."""
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        children: dict[tuple[int, int], int] = {}
        paths = []
        for seq in continuations:
            node, path = -1, []
            for depth, tok in enumerate(seq):
                key = (node, int(tok))
                if key not in children:
                    children[key] = len(tokens)
                    tokens.append(int(tok))
                    parents.append(node)
                    depths.append(depth)
                node = children[key]
                path.append(node)
            paths.append(path)
        return cls(tokens, parents, depths, paths)

    def scores(self, logprobs: Any, end_ids: Sequence[int] | None = None) -> list[float]:
        """Summed log-probability of each choice.

        ``logprobs`` has one row of next-token log-probabilities per position: row 0 after the
        prompt, row ``1 + n`` after node ``n``. With ``end_ids`` each choice also scores ending
        there (the log of the total probability of those end-of-turn tokens after it), so that
        ``bill`` is not rewarded for being the start of ``billing``.
        """
        torch = require("torch")
        if self.tokens:
            rows = torch.tensor([p + 1 for p in self.parents], device=logprobs.device)
            toks = torch.tensor(self.tokens, device=logprobs.device)
            node_lp = logprobs[rows, toks].tolist()
        else:
            node_lp = []
        ends: list[float] = []
        if end_ids is not None:
            ends = torch.logsumexp(logprobs[:, list(end_ids)], dim=-1).tolist()
        out = []
        for path in self.paths:
            total = sum(node_lp[n] for n in path)
            if end_ids is not None:
                total += ends[path[-1] + 1 if path else 0]
            out.append(float(total))
        return out


def tree_batch(
    suffixes: Sequence[Sequence[int]], tries: Sequence[ChoiceTrie], prefix_len: int, pad_id: int, dtype: Any
) -> tuple[Any, Any, Any]:
    """Input ids, position ids and additive 4D attention mask for rows ``[suffix][trie nodes]``.

    The rows follow a shared cached prefix of ``prefix_len`` tokens that every real token sees.
    Rows are right-padded (padding after a row's tokens cannot change them); a padding token
    sees the prefix and itself, so no attention row is empty (which would give NaNs).
    """
    torch = require("torch")
    lengths = [len(s) + len(t.tokens) for s, t in zip(suffixes, tries, strict=True)]
    width = max(lengths)
    ids = torch.full((len(suffixes), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(suffixes), width), dtype=torch.long)
    allowed = torch.zeros((len(suffixes), width, prefix_len + width), dtype=torch.bool)
    allowed[:, :, :prefix_len] = True
    for r, (suffix, trie) in enumerate(zip(suffixes, tries, strict=True)):
        s, n = len(suffix), len(trie.tokens)
        ids[r, :s] = torch.tensor(list(suffix), dtype=torch.long)
        ids[r, s : s + n] = torch.tensor(trie.tokens, dtype=torch.long)
        pos[r, :s] = torch.arange(prefix_len, prefix_len + s)
        pos[r, s : s + n] = prefix_len + s + torch.tensor(trie.depths, dtype=torch.long)
        pos[r, s + n :] = torch.arange(prefix_len + s + n, prefix_len + width)
        allowed[r, :s, prefix_len : prefix_len + s] = torch.ones(s, s, dtype=torch.bool).tril()
        allowed[r, s : s + n, prefix_len : prefix_len + s] = True
        allowed[r, s : s + n, prefix_len + s : prefix_len + s + n] = _ancestors(trie)
        pad = torch.arange(s + n, width)
        allowed[r, pad, prefix_len + pad] = True
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return ids, pos, mask.unsqueeze(1)


def _ancestors(trie: ChoiceTrie) -> Any:
    """``[n, n]`` boolean matrix: entry (i, j) when node j is node i or one of its ancestors."""
    torch = require("torch")
    n = len(trie.tokens)
    anc = torch.eye(n, dtype=torch.bool)
    for i, parent in enumerate(trie.parents):  # parents come first, so their rows are complete
        if parent >= 0:
            anc[i] |= anc[parent]
    return anc
