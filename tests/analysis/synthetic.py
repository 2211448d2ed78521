"""A corpus whose statistics are known by construction (2 layers × 3 heads, two classes).

- head (0, 0) attends to the previous token (row 0 to itself);
- head (0, 1) is a sink: every row puts all its weight on token 0;
- head (1, 2) spreads each row uniformly, except that in "pos" documents the one "good" token weighs
  twice as much: it receives 2/(T+1) there and 1/T in "neg" documents (T tokens, 8 ≤ T ≤ 12);
- the other heads have seeded Dirichlet rows.
"""

from __future__ import annotations

import numpy as np

from attviz.corpus import Corpus, Document, attention_array, token_frame

WORDS = ["the", "cat", "sat", "on", "mat", "and", "dog", "ran", "far", "home"]
LAYERS, HEADS = 2, 3


def synthetic_document(i: int, label: str, rng: np.random.Generator) -> Document:
    n_words = int(rng.integers(5, 10))  # + [CLS], "good", [SEP]: 8 <= T <= 12
    words = list(rng.choice(WORDS, n_words))
    words.insert(int(rng.integers(0, n_words + 1)), "good")
    texts = ["[CLS]", *words, "[SEP]"]
    t = len(texts)
    a = rng.dirichlet(np.ones(t), size=(LAYERS, HEADS, t)).astype(np.float32)
    a[0, 0] = 0
    a[0, 0, 0, 0] = 1
    a[0, 0, np.arange(1, t), np.arange(t - 1)] = 1  # previous token
    a[0, 1] = 0
    a[0, 1, :, 0] = 1  # sink
    weights = np.ones(t, np.float32)
    if label == "pos":
        weights[texts.index("good")] = 2
    a[1, 2] = weights / weights.sum()
    tokens = token_frame(texts, word=[-1, *range(len(words)), -1], special=[True, *[False] * len(words), True])
    return Document(
        id=f"d{i}",
        text=" ".join(words),
        arrays={"self": attention_array(a, tokens)},
        label=label,
        prediction=label if i % 5 else ("neg" if label == "pos" else "pos"),  # every 5th document wrong
    )


def synthetic_corpus(n: int = 24, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    return Corpus([synthetic_document(i, "pos" if i % 2 == 0 else "neg", rng) for i in range(n)])
