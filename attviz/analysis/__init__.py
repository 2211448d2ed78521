"""Corpus statistics (issue #13): the head atlas, head similarity, contrasts and the query–key space.

- :mod:`attviz.analysis.engine`: per-document statistics over a corpus, one dask task per document,
  locally or on a ``dask.distributed`` cluster, cached in the store (:func:`corpus_statistics`);
- :mod:`attviz.analysis.atlas`: the head metrics (entropy, distance, sink, previous/next/self, ...);
- :mod:`attviz.analysis.similarity`: Jensen–Shannon distance between heads, FUJI ranking similarity;
- :mod:`attviz.analysis.contrasts`: the tests (Mann–Whitney, KS, Cliff's δ, bootstrap, BH, log-odds);
- :mod:`attviz.analysis.differences`: class vs class, correct vs wrong and store A vs store B tables;
- :mod:`attviz.analysis.qkspace`: one head's queries and keys in a joint 2-D projection (AttentionViz).
"""

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
from attviz.analysis.engine import CorpusStatistics, StatisticsError, corpus_statistics

__all__ = [
    "CorpusStatistics",
    "StatisticsError",
    "benjamini_hochberg",
    "bootstrap_delta",
    "cliffs_delta",
    "corpus_statistics",
    "ks_statistic",
    "ks_test",
    "mann_whitney",
    "weighted_log_odds",
    "wilcoxon_paired",
]
