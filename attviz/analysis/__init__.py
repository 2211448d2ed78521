"""Corpus statistics (issue #13): the head atlas, head similarity, contrasts and the query–key space.

- :mod:`attviz.analysis.engine`: per-document statistics over a corpus, one dask task per document,
  locally or on a ``dask.distributed`` cluster, cached in the store (:func:`corpus_statistics`);
- :mod:`attviz.analysis.atlas`: the head metrics (entropy, distance, sink, previous/next/self, ...);
- :mod:`attviz.analysis.similarity`: Jensen–Shannon distance between heads, FUJI ranking similarity;
- :mod:`attviz.analysis.contrasts`: the tests (Mann–Whitney, KS, Cliff's δ, bootstrap, BH, log-odds);
- :mod:`attviz.analysis.differences`: class vs class, correct vs wrong and store A vs store B tables;
- :mod:`attviz.analysis.qkspace`: one head's queries and keys in a joint 2-D projection (AttentionViz).
"""

from attviz.analysis.atlas import HEAD_METRICS, document_head_metrics, induction_scores, pattern_class
from attviz.analysis.contrasts import (
    benjamini_hochberg,
    bootstrap_delta,
    cliffs_delta,
    ks_statistic,
    ks_test,
    mann_whitney,
    weighted_log_odds,
    wilcoxon_paired,
)
from attviz.analysis.differences import class_ranking, compare_stores, contrast, log_values, qq_data, token_log_odds
from attviz.analysis.engine import CorpusStatistics, StatisticsError, corpus_statistics
from attviz.analysis.qkspace import QKSpace, normalise_qk, qk_space, qk_vectors
from attviz.analysis.similarity import aufuji, aufuji_matrix, cluster_order, fuji_curve, js_distance

__all__ = [
    "HEAD_METRICS",
    "CorpusStatistics",
    "QKSpace",
    "StatisticsError",
    "aufuji",
    "aufuji_matrix",
    "benjamini_hochberg",
    "bootstrap_delta",
    "class_ranking",
    "cliffs_delta",
    "cluster_order",
    "compare_stores",
    "contrast",
    "corpus_statistics",
    "document_head_metrics",
    "fuji_curve",
    "induction_scores",
    "js_distance",
    "ks_statistic",
    "ks_test",
    "log_values",
    "mann_whitney",
    "normalise_qk",
    "pattern_class",
    "qk_space",
    "qk_vectors",
    "qq_data",
    "token_log_odds",
    "weighted_log_odds",
    "wilcoxon_paired",
]
