"""Corpus statistics (issue #13): contrasts between groups of documents."""

from attviz.analysis.contrasts import (
    benjamini_hochberg,
    bootstrap_delta,
    cliffs_delta,
    ks_statistic,
    mann_whitney,
)

__all__ = ["benjamini_hochberg", "bootstrap_delta", "cliffs_delta", "ks_statistic", "mann_whitney"]
