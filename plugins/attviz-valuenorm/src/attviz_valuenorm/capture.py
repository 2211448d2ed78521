"""The ``value_norm`` capture: ||f(x_j)|| per (layer, head, key), recorded while attviz extracts.

Registered in the entry-point group ``attviz.captures``, so ``attviz extract --capture value_norm``
(or ``attviz.extract(..., captures=["value_norm"])``) stores the norms with every document, and the
explorer's live input records them for BERT-family models. A stored document's attention then
carries them as its ``value_norm`` coordinate (dims ``(layer, head, key)``), which the
``value_norm`` aggregation and the ``value_norm_bars`` view use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attviz.captures import CaptureBatch, ModelCapture
from attviz_valuenorm.hooks import REFERENCE, bert_attention_modules, transformed_norms

if TYPE_CHECKING:
    import torch


class ValueNormCapture(ModelCapture):
    """||f(x_j)|| = ||(x_j W_V + b_V)^h W_O^h|| of every key token, per layer and head.

    Reference: Kobayashi et al. 2020 (EMNLP), https://arxiv.org/abs/2004.10102. A forward hook on
    each layer's ``attention.self.value`` keeps x W_V + b_V for the batch; :meth:`collect` multiplies
    each head's slice by its slice of ``attention.output.dense`` and takes the norm. BERT-family
    models only (BERT, RoBERTa, ELECTRA, MiniLM, ...); :meth:`check` says so for others.
    """

    description = "Value-vector norms ||f(x)|| per layer, head and key token (Kobayashi et al. 2020; BERT family)"
    reference = REFERENCE
    dims = ("layer", "head", "key")
    long_name = "norm of the transformed value vector ||f(x)||"
    units = "hidden-state norm"
    attach_to = ("self",)

    def check(self, model) -> None:
        bert_attention_modules(model.model)  # raises UnsupportedModelError, which says what it needs

    def attach(self, model) -> None:
        self._modules = bert_attention_modules(model.model)
        self._values: dict[int, torch.Tensor] = {}
        for layer, (value, _) in enumerate(self._modules):
            self.hook(value, lambda _module, _inputs, out, layer=layer: self._values.__setitem__(layer, out))

    def collect(self, batch: CaptureBatch) -> torch.Tensor:
        import torch

        heads = batch.model.config.num_attention_heads
        norms = [transformed_norms(self._values[i], dense.weight, heads) for i, (_, dense) in enumerate(self._modules)]
        return torch.stack(norms, dim=1)  # (batch, layer, head, key)

    def detach(self) -> None:
        super().detach()
        self._values = {}
