"""Per-document head metrics for a corpus-level "head atlas" (issue #13).

:func:`document_head_metrics` turns one document's attention ``(layer, head, query, key)`` into one
float32 ``(layer, head)`` value per metric of :data:`HEAD_METRICS` (plus the positional
``offset_profile``); the corpus engine averages them over documents. :func:`pattern_class` names each
head's Kovaleva et al. (2019) pattern from those corpus means, :func:`positional_offset` its preferred
relative position, and :func:`induction_scores` runs repeated random sequences through a causal LM for
Olsson et al.'s (2022) prefix-matching (induction) score.

Positions are array indices (query ``i``, key ``j``); a causal head's row ``i`` can attend to the
``i + 1`` keys ``0..i``, any other row to all ``K`` keys. Shares use the weights as given; only the
entropy re-normalises rows first. A metric that cannot be defined for a document is NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attviz.aggregations.heads import head_statistics
from attviz.aggregations.reductions import CLARK
from attviz.aggregations.vectors import VIG
from attviz.errors import AttentionUnavailableError
from attviz.quantize import as_float32

GU = (
    'Gu et al. 2024, "When Attention Sink Emerges in Language Models: An Empirical View", '
    "https://arxiv.org/abs/2410.10781"
)
VOITA = (
    'Voita et al. 2019, "Analyzing Multi-Head Self-Attention: Specialized Heads Do the Heavy Lifting, '
    'the Rest Can Be Pruned", https://arxiv.org/abs/1905.09418'
)
KOVALEVA = 'Kovaleva et al. 2019, "Revealing the Dark Secrets of BERT", https://arxiv.org/abs/1908.08593'
OLSSON = 'Olsson et al. 2022, "In-context Learning and Induction Heads", https://arxiv.org/abs/2209.11895'


@dataclass(frozen=True)
class Metric:
    """What a head metric is: ``higher`` says in a few words what a high value means."""

    name: str
    long_name: str
    units: str
    reference: str
    higher: str


def _metric(name: str, long_name: str, units: str, reference: str, higher: str) -> tuple[str, Metric]:
    return name, Metric(name, long_name, units, reference, higher)


#: The metrics of :func:`document_head_metrics`, in display order (see its docstring for definitions).
HEAD_METRICS: dict[str, Metric] = dict(
    [
        _metric("entropy", "normalised attention entropy", "1", CLARK, "broad attention"),
        _metric("distance", "mean attention distance", "token", VIG, "attends far away"),
        _metric("special", "share of attention on special tokens", "1", CLARK, "attends to special tokens"),
        _metric("first", "mean weight on the first token", "1", GU, "attends to the first token"),
        _metric("sink", "share of queries sinking on the first token", "1", GU, "attention sink"),
        _metric("previous", "mean weight on the previous token", "1", CLARK, "previous-token head"),
        _metric("next", "mean weight on the next token", "1", CLARK, "next-token head"),
        _metric("self", "mean weight on the token itself", "1", CLARK, "attends to itself"),
        _metric("confidence", "mean maximum weight of a query", "1", VOITA, "confident, peaked attention"),
        _metric("column_max", "share of attention on the most-attended token", "1", KOVALEVA, "vertical pattern"),
        _metric("band", "mean weight within one token of the query", "1", KOVALEVA, "diagonal pattern"),
        _metric("block", "excess weight within the query's own segment", "1", KOVALEVA, "block pattern"),
    ]
)

OFFSETS: int = 8  # the positional profile covers key offsets -OFFSETS..OFFSETS from the query
PATTERNS = ("vertical", "diagonal", "block", "heterogeneous")
THRESHOLDS: dict[str, float] = {"vertical": 0.5, "diagonal": 0.5, "block": 0.3}
SENTENCE_END = frozenset({".", "!", "?", "。", "！", "？", "…"})  # sentence-final punctuation tokens
BLOCK = 1 << 18  # float32 values per block of query rows (all heads of one layer): 1 MB


def sentence_segments(special: Any, tokens: Sequence[str] | None = None) -> np.ndarray:
    """A ``(key,)`` int segment id per token for :func:`document_head_metrics`' ``block`` metric.

    Special tokens belong to no segment (``-1``) and end the segment before them; a token whose text
    (stripped of whitespace and sub-word markers ``Ġ``/``▁``/``##``) is sentence-final punctuation ends
    its own segment. Without ``tokens`` only special tokens split the document.
    """
    special = np.asarray(special, dtype=bool)
    out = np.full(special.shape, -1, dtype=np.int64)
    current, open_ = 0, False
    for i, is_special in enumerate(special):
        if is_special:
            current += open_
            open_ = False
            continue
        out[i], open_ = current, True
        if tokens is not None and tokens[i].strip().lstrip("Ġ▁#") in SENTENCE_END:
            current += 1
            open_ = False
    return out


def document_head_metrics(
    a: Any,
    special: Any,
    *,
    causal: bool | None = None,
    epsilon: float = 0.3,
    segments: Any = None,
) -> dict[str, np.ndarray]:
    """Every metric of :data:`HEAD_METRICS` for one document, float32 ``(layer, head)`` arrays, and
    ``"offset_profile"`` ``(layer, head, 2 * OFFSETS + 1)``.

    ``a``: ``(layer, head, query, key)`` float16 or float32, read one layer and a block of query rows
    at a time (converted to float32 block by block). ``special``: ``(key,)`` bool. ``causal``: whether
    row ``i`` sees keys ``0..i`` only; ``None`` infers it (``query == key`` and every weight above the
    diagonal is 0). ``segments``: ``(key,)`` int segment ids for ``block`` (``-1``: no segment), default
    :func:`sentence_segments` of ``special``. With ``a[i, j]`` the weight of query ``i`` on key ``j``,
    ``n_i`` the keys row ``i`` can attend to and every mean over query rows:

    - ``entropy``: mean of H_i / ln n_i, H_i = −Σ_j p_ij ln p_ij of the re-normalised row p_i (Clark et
      al. 2019 use the entropy H_i; dividing by its maximum ln n_i makes documents — and a causal head's
      rows — of different lengths comparable: 1 is uniform). Rows with n_i = 1 are left out.
    - ``distance``: mean of Σ_j a_ij·|i − j| (Vig & Belinkov 2019).
    - ``special``: mean of Σ_j a_ij·special_j (Clark et al. 2019).
    - ``first``: mean of a_i0 — Gu et al.'s (2024) α(1), the mean weight on the first token.
    - ``sink``: share of rows with a_i0 > ``epsilon`` (0.3 as in Gu et al. 2024). Gu et al. call a head a
      sink when α(1) > ε, i.e. ``first`` > ε; this is the row-level variant (how often, not how much).
    - ``previous`` / ``next`` / ``self``: mean of a_i,i−1 / a_i,i+1 / a_ii over the rows that have that
      key (Clark et al. 2019).
    - ``confidence``: mean of max_j a_ij (Voita et al. 2019).
    - ``column_max``: max_j (1/Q)·Σ_i a_ij, the share of all attention on the single most-attended key
      (Kovaleva et al.'s 2019 "vertical" pattern).
    - ``band``: mean of Σ_{|j−i|≤1} a_ij (Kovaleva et al.'s "diagonal" pattern).
    - ``block``: mean over rows in a segment of Σ_{s_j = s_i} a_ij − u_i, u_i = |{j visible to row i : s_j
      = s_i}| / n_i the share uniform attention over the row's keys would give its own segment (Kovaleva et
      al.'s "block" pattern: attention within the own sentence). NaN with fewer than 2 segments.
    - ``offset_profile[..., OFFSETS + d]``: mean of a_i,i+d over rows with 0 ≤ i + d < K (NaN if none).

    ``previous``/``next``/``self``/``band``/``block``/``offset_profile`` need self-attention
    (``query == key``) and are NaN otherwise; ``distance``, ``special`` and the neighbours come from
    :func:`attviz.aggregations.heads.head_statistics`.
    """
    a = a if hasattr(a, "shape") and hasattr(a, "dtype") else np.asarray(a)
    if a.ndim != 4:
        raise ValueError(f"attention must be (layer, head, query, key), got shape {tuple(a.shape)}")
    n_layer, n_head, n_query, n_key = (int(n) for n in a.shape)
    special = np.asarray(special, dtype=bool)
    if special.shape != (n_key,):
        raise ValueError(f"special must be ({n_key},) bool, got shape {special.shape}")
    square = n_query == n_key
    if causal and not square:
        raise ValueError(f"causal attention needs as many queries as keys, got {n_query} and {n_key}")
    if segments is None:
        segments = sentence_segments(special)
    segments = np.asarray(segments, dtype=np.int64)
    if segments.shape != (n_key,):
        raise ValueError(f"segments must be ({n_key},) int, got shape {segments.shape}")
    blocky = square and len(np.unique(segments[segments >= 0])) >= 2

    stats = head_statistics(a, np.arange(n_query), np.arange(n_key), special)
    lead = (n_layer, n_head)
    entropy_rows = np.empty((*lead, n_query), np.float32)  # H_i in nats, divided by ln n_i at the end
    first = np.zeros(lead)
    sink = np.zeros(lead)
    confidence = np.zeros(lead)
    columns = np.zeros((*lead, n_key))
    offsets = np.zeros((*lead, 2 * OFFSETS + 1))
    offset_rows = np.zeros(2 * OFFSETS + 1)
    own = np.zeros(lead)  # Σ over rows in a segment of the weight on their own segment
    upper_zero = square and causal is None  # still possibly causal (checked while reading)
    step = max(1, BLOCK // max(n_head * n_key, 1))
    for layer in range(n_layer):
        for start in range(0, n_query, step):
            stop = min(start + step, n_query)
            x = as_float32(np.asarray(a[layer, :, start:stop]))  # (head, rows, key)
            if upper_zero:
                above = np.arange(n_key)[None, :] > np.arange(start, stop)[:, None]
                upper_zero = not np.any(x[:, above])
            first[layer] += x[..., 0].sum(-1, dtype=np.float64)
            sink[layer] += (x[..., 0] > epsilon).sum(-1)
            confidence[layer] += x.max(-1).sum(-1, dtype=np.float64)
            columns[layer] += x.sum(1, dtype=np.float64)
            if square:
                for d in range(-OFFSETS, OFFSETS + 1):  # row i's weight on key i + d
                    # diagonal start + d of the block: exactly its rows that have a key i + d
                    values = np.diagonal(x, offset=start + d, axis1=1, axis2=2)
                    offsets[layer, :, OFFSETS + d] += values.sum(-1, dtype=np.float64)
                    if layer == 0:
                        offset_rows[OFFSETS + d] += values.shape[-1]
            if blocky:
                rows = segments[start:stop]
                same = (rows[:, None] == segments[None, :]) & (rows[:, None] >= 0)
                own[layer] += np.einsum("hqk,qk->h", x, same.astype(np.float32), dtype=np.float64)
            total = x.sum(-1, keepdims=True)
            x /= np.where(total > 0, total, 1)  # x is now p, the re-normalised rows
            logp = np.where(x > 0, x, 1)  # 0 ln 0 = 0
            np.log(logp, out=logp)
            entropy_rows[layer, :, start:stop] = -np.einsum("hqk,hqk->hq", x, logp)

    causal = bool(upper_zero) if causal is None else bool(causal)
    n_rows = np.arange(1, n_query + 1) if causal else np.full(n_query, n_key)  # n_i
    keep = n_rows > 1
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = entropy_rows[..., keep] / np.log(n_rows[keep]).astype(np.float32)
        out["entropy"] = normalised.mean(-1) if keep.any() else np.full(lead, np.nan)
        out["distance"] = stats["distance"]
        out["special"] = stats["special"]
        out["first"] = first / n_query
        out["sink"] = sink / n_query
        for name in ("previous", "next", "self"):
            out[name] = stats[name]
        out["confidence"] = confidence / n_query
        out["column_max"] = columns.max(-1) / n_query if n_key else np.full(lead, np.nan)
        band = offsets[..., OFFSETS - 1 : OFFSETS + 2].sum(-1) / n_query
        out["band"] = band if square else np.full(lead, np.nan)
        if blocky:
            rows = segments >= 0
            same = segments[:, None] == segments[None, :]
            if causal:
                same = np.tril(same)
            uniform = same[rows].sum(-1) / n_rows[rows]  # u_i of the rows in a segment
            out["block"] = (own - uniform.sum()) / rows.sum()
        else:
            out["block"] = np.full(lead, np.nan)
        profile = np.where(offset_rows > 0, offsets / np.where(offset_rows > 0, offset_rows, 1), np.nan)
    out = {name: np.asarray(out[name], dtype=np.float32) for name in HEAD_METRICS}
    out["offset_profile"] = (profile if square else np.full((*lead, 2 * OFFSETS + 1), np.nan)).astype(np.float32)
    return out


def pattern_class(metrics: Mapping[str, np.ndarray], *, thresholds: Mapping[str, float] | None = None) -> np.ndarray:
    """Kovaleva et al.'s (2019) pattern of each head, an object array of names from :data:`PATTERNS`.

    ``metrics``: corpus means of :data:`HEAD_METRICS` (any shape, typically ``(layer, head)``). Kovaleva
    et al. classified attention-map images with a CNN trained on hand labels; these are explicit rules on
    the metrics instead, tried in this order (defaults :data:`THRESHOLDS`, overridable per key):

    1. ``vertical`` if ``column_max`` ≥ t_vertical or ``special`` ≥ t_vertical (0.5): half of the
       attention on one key, or on the special tokens ([CLS]/[SEP], BOS) together;
    2. ``diagonal`` if ``band`` ≥ t_diagonal (0.5): half of the attention within one token of the query;
    3. ``block`` if ``block`` ≥ t_block (0.3): 30 points more within the own segment than uniform;
    4. ``heterogeneous`` otherwise (also where every metric needed is NaN or missing).
    """
    limits = dict(THRESHOLDS)
    if thresholds:
        unknown = set(thresholds) - set(THRESHOLDS)
        if unknown:
            raise ValueError(f"unknown thresholds {sorted(unknown)}; known: {sorted(THRESHOLDS)}")
        limits.update(thresholds)
    used = ("column_max", "special", "band", "block")
    present = [np.asarray(metrics[name]) for name in used if name in metrics]
    shape = np.broadcast_shapes(*(v.shape for v in present)) if present else ()

    def value(name: str) -> np.ndarray:
        return np.broadcast_to(np.asarray(metrics.get(name, np.nan), dtype=np.float64), shape)

    with np.errstate(invalid="ignore"):
        rules = [
            ("vertical", (value("column_max") >= limits["vertical"]) | (value("special") >= limits["vertical"])),
            ("diagonal", value("band") >= limits["diagonal"]),
            ("block", value("block") >= limits["block"]),
        ]
    out = np.full(shape, "heterogeneous", dtype=object)
    decided = np.zeros(shape, bool)
    for name, rule in rules:
        out[rule & ~decided] = name
        decided |= rule
    return out


def positional_offset(profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(offset, weight)`` of a corpus-mean ``offset_profile`` ``(..., 2 * OFFSETS + 1)``: the key offset
    d ∈ −OFFSETS..OFFSETS with the most mean weight (the most negative on ties) and that weight; float32,
    NaN for both where the whole profile is NaN. A previous-token head gives (−1, ~1) (Clark et al. 2019's
    positional heads)."""
    profile = np.asarray(profile, dtype=np.float32)
    span = profile.shape[-1] // 2
    missing = np.isnan(profile).all(-1)
    index = np.argmax(np.where(np.isnan(profile), -np.inf, profile), axis=-1)
    weight = np.take_along_axis(profile, index[..., None], axis=-1)[..., 0]
    offset = (index - span).astype(np.float32)
    return np.where(missing, np.nan, offset).astype(np.float32), np.where(missing, np.nan, weight).astype(np.float32)


def prefix_matching_score(a: Any, length: int, *, offset: int = 0) -> np.ndarray:
    """Olsson et al.'s (2022) prefix-matching score per head, float32 ``(layer, head)``.

    ``a``: ``(layer, head, T, T)`` attention over a sequence made of one block of ``length`` random tokens
    repeated (twice or more) from position ``offset`` on (``offset = 1`` after a BOS at 0). For each query
    ``i`` ≥ ``offset + length`` (the repeats), the weight on the token right after each earlier occurrence
    of its token, Σ_{m ≥ 1, i − m·length ≥ offset} a[i, i − m·length + 1] (with two copies: a[i, i −
    length + 1]), averaged over those queries. An induction head scores ~1, a previous-token head ~0.
    """
    a = a if hasattr(a, "shape") and hasattr(a, "dtype") else np.asarray(a)
    n_layer, n_head, n_query, n_key = (int(n) for n in a.shape)
    if n_query != n_key:
        raise ValueError(f"prefix matching needs self-attention, got {n_query} queries and {n_key} keys")
    if length < 1 or offset < 0 or n_query < offset + length + 1:
        raise ValueError(f"a sequence of {n_query} tokens has no repeat of {length} tokens after {offset}")
    first = offset + length  # the first query of the repeats
    out = np.empty((n_layer, n_head), np.float32)
    for layer in range(n_layer):
        rows = np.zeros((n_head, n_query - first), np.float64)
        x = np.asarray(a[layer])
        for m in range(1, (n_query - 1 - offset) // length + 1):
            # diagonal 1 - m·length holds a[i, i - m·length + 1] for i = m·length - 1, m·length, ...
            values = np.diagonal(x, offset=1 - m * length, axis1=1, axis2=2)
            start = offset + m * length  # first query whose m-th earlier occurrence exists
            values = values[:, start - (m * length - 1) :]
            rows[:, start - first :] += as_float32(values)
        out[layer] = rows.mean(-1)
    return out


def repeated_sequences(
    vocab_size: int, *, length: int = 25, n_sequences: int = 8, seed: int = 0, bos_token_id: int | None = None
) -> np.ndarray:
    """``(n_sequences, [1 +] 2·length)`` int64 token ids: a block of ``length`` tokens drawn uniformly
    from ``0..vocab_size-1`` (BOS excluded) twice, after ``bos_token_id`` when given; seeded. Olsson et
    al.'s (2022) probe: on repeated random tokens only in-context copying predicts the second half."""
    rng = np.random.default_rng(seed)
    choices = np.arange(vocab_size, dtype=np.int64)
    if bos_token_id is not None:
        choices = choices[choices != bos_token_id]
    block = rng.choice(choices, size=(n_sequences, length))
    ids = np.concatenate([block, block], axis=1)
    if bos_token_id is not None:
        ids = np.concatenate([np.full((n_sequences, 1), bos_token_id, dtype=np.int64), ids], axis=1)
    return ids


def induction_scores(
    model: Any, *, length: int = 25, n_sequences: int = 8, seed: int = 0, bos_token_id: int | None = None
) -> np.ndarray:
    """Induction score per head of a causal LM, float32 ``(layer, head)`` (Olsson et al. 2022).

    Runs :func:`repeated_sequences` (token ids below ``model.config.vocab_size``) through ``model`` in
    eval mode with eager attention (switched for the call and restored) and ``output_attentions=True``,
    and averages :func:`prefix_matching_score` over the sequences. Raises
    :class:`~attviz.errors.AttentionUnavailableError` unless one attention matrix per layer comes back.
    """
    import torch

    from attviz.qk_capture import implementation

    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab_size = int(text.vocab_size)
    ids = repeated_sequences(vocab_size, length=length, n_sequences=n_sequences, seed=seed, bos_token_id=bos_token_id)
    device = next(model.parameters()).device
    training = model.training
    with implementation(model, "eager"), torch.no_grad():
        model.eval()
        try:
            out = model(input_ids=torch.as_tensor(ids, device=device), output_attentions=True, return_dict=True)
        finally:
            model.train(training)
    attentions = getattr(out, "attentions", None)
    n_layer = getattr(text, "num_hidden_layers", None)
    if not attentions or any(x is None for x in attentions) or (n_layer is not None and len(attentions) != n_layer):
        got = 0 if not attentions else sum(x is not None for x in attentions)
        raise AttentionUnavailableError(
            f"{type(model).__name__} returned {got} attention matrices for {n_layer} layers with eager attention"
        )
    a = torch.stack([x.detach().float().cpu() for x in attentions], dim=1).numpy()  # (sequence, layer, head, T, T)
    if a.shape[-1] != ids.shape[1] or a.shape[-2] != ids.shape[1]:
        raise AttentionUnavailableError(f"attention over {a.shape[-2:]} tokens for sequences of {ids.shape[1]}")
    offset = 0 if bos_token_id is None else 1
    scores = [prefix_matching_score(seq, length, offset=offset) for seq in a]
    return np.mean(scores, axis=0).astype(np.float32)


__all__ = [
    "HEAD_METRICS",
    "OFFSETS",
    "PATTERNS",
    "THRESHOLDS",
    "Metric",
    "document_head_metrics",
    "induction_scores",
    "pattern_class",
    "positional_offset",
    "prefix_matching_score",
    "repeated_sequences",
    "sentence_segments",
]
