"""attviz-valuenorm: norm-based attention analysis for attviz (Kobayashi et al. 2020).

Attention weights alone ignore how much each attended token actually contributes: Kobayashi et al.
weight α_ij by the norm of the transformed value vector f(x_j) = (x_j W_V + b_V) W_O^h. This
plugin adds

- :func:`value_norms` / :func:`attention_with_value_norms`: ||f(x_j)|| per (layer, head, key),
  read from a BERT-family model with forward hooks;
- the aggregation ``value_norm`` (:class:`~attviz_valuenorm.aggregation.ValueNorm`): ||α_ij f(x_j)||;
- the view ``value_norm_bars`` (:class:`~attviz_valuenorm.view.ValueNormBars`): α vs ||αf(x)|| for
  one query token;
- the capture ``value_norm`` (:class:`~attviz_valuenorm.capture.ValueNormCapture`): records
  ||f(x_j)|| with every document attviz extracts (``attviz extract --capture value_norm``, and the
  explorer's live input), so stored documents' attention carries its ``value_norm`` coordinate.

attviz finds the aggregation, the view and the capture through their entry points; nothing in attviz
imports this package.
"""

from attviz_valuenorm.aggregation import ValueNorm
from attviz_valuenorm.capture import ValueNormCapture
from attviz_valuenorm.hooks import (
    REFERENCE,
    UnsupportedModelError,
    attention_with_value_norms,
    value_norms,
    with_value_norms,
)

__version__ = "0.1.0"

__all__ = [
    "REFERENCE",
    "UnsupportedModelError",
    "ValueNorm",
    "ValueNormCapture",
    "__version__",
    "attention_with_value_norms",
    "value_norms",
    "with_value_norms",
]
