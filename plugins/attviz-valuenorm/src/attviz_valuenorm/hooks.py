"""Read ||f(x_j)||, the norm of each token's transformed value vector, from a BERT-family model.

Kobayashi et al. 2020 write the output of head h for query i as Σ_j α_ij f_h(x_j) with
f_h(x) = (x W_V + b_V)^h W_O^h: the head's slice of the value projection, then the head's slice of
the output projection (``attention.output.dense``; its bias is added once after the sum over heads
and keys, so it is not part of f). A forward hook on each layer's ``attention.self.value`` captures
x W_V + b_V during one forward pass; W_O^h is read from ``attention.output.dense``.

Supported: models whose base model has ``encoder.layer[i].attention.self.value`` and
``.attention.output.dense`` (BERT and its family: RoBERTa, ELECTRA, MiniLM, ... with or without a
task head). Other architectures raise :class:`UnsupportedModelError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from attviz.captures import UnsupportedModel
from attviz.corpus import attention_array, token_coords, tokens_of

if TYPE_CHECKING:  # torch (and attviz's model code) are imported where a model runs, so that loading
    import torch  # the aggregation through its entry point (e.g. by ``attviz stats``) stays light

    from attviz.models import LoadedModel

REFERENCE = (
    'Kobayashi et al. 2020, "Attention is Not Only a Weight: Analyzing Transformers with Vector Norms", '
    "EMNLP 2020, https://arxiv.org/abs/2004.10102"
)


class UnsupportedModelError(UnsupportedModel):
    """The model is not BERT-like: no ``encoder.layer[i].attention.self.value`` to hook.

    An :class:`attviz.captures.UnsupportedModel`: the ``value_norm`` capture's check raises it, so
    attviz reports the reason (an error for ``--capture value_norm``, a note for live input)."""


def bert_attention_modules(model: Any) -> list[tuple[torch.nn.Module, torch.nn.Linear]]:
    """``(attention.self.value, attention.output.dense)`` of every layer, in order."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    try:
        modules = [(layer.attention.self.value, layer.attention.output.dense) for layer in layers]
    except (AttributeError, TypeError):
        modules = []
    if not modules:
        raise UnsupportedModelError(
            f"value norms need a BERT-family model with encoder.layer[i].attention.self.value and "
            f".attention.output.dense; {type(model).__name__} has no such layers"
        )
    return modules


def transformed_norms(values: torch.Tensor, output_weight: torch.Tensor, heads: int) -> torch.Tensor:
    """||f_h(x_j)|| of shape (..., head, key) from ``values`` = x W_V + b_V (..., key, hidden) and W_O.

    ``output_weight`` is ``attention.output.dense.weight`` (out, hidden): torch computes y = v W^T,
    so head h's W_O^h is ``W[:, h*d:(h+1)*d]^T``. Leading dims (a batch) pass through.
    """
    import torch

    *lead, keys, hidden = values.shape
    per_head = values.reshape(*lead, keys, heads, hidden // heads)
    w = output_weight.reshape(output_weight.shape[0], heads, hidden // heads)
    transformed = torch.einsum("...khd,ohd->...hko", per_head.float(), w.float())
    return torch.linalg.vector_norm(transformed, dim=-1)


def _loaded(model: Any, tokenizer: Any) -> LoadedModel:
    from attviz.models import LoadedModel, prepare_model

    if isinstance(model, LoadedModel):
        return model
    return prepare_model(model, tokenizer, device=next(model.parameters()).device)


def _max_length(loaded: LoadedModel) -> int:
    limits = [getattr(loaded.tokenizer, "model_max_length", None), loaded.config.max_position_embeddings]
    return min((x for x in limits if isinstance(x, int) and 0 < x < 1_000_000), default=512)


def _forward(model: Any, tokenizer: Any, text: str, max_length: int | None) -> tuple[Any, np.ndarray, np.ndarray]:
    """One forward pass: (token table, attention (L, H, T, T), value norms (L, H, T))."""
    import torch

    from attviz.tokenization import tokenize

    loaded = _loaded(model, tokenizer)
    modules = bert_attention_modules(loaded.model)
    heads = loaded.config.num_attention_heads
    unit = tokenize(loaded, [text], ["0"], None, max_length=max_length or _max_length(loaded))[0]
    captured: dict[int, torch.Tensor] = {}
    handles = [
        value.register_forward_hook(lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out.detach()))
        for layer, (value, _) in enumerate(modules)
    ]
    try:
        with torch.inference_mode():
            ids = torch.tensor([unit.input_ids], device=loaded.device)
            out = loaded.model(input_ids=ids, output_attentions=True, return_dict=True)
            norms = torch.stack(
                [transformed_norms(captured[i][0], dense.weight, heads) for i, (_, dense) in enumerate(modules)]
            )
            attention = torch.stack([a[0].float() for a in out.attentions])
    finally:
        for handle in handles:
            handle.remove()
    return unit.tokens, attention.cpu().numpy(), norms.cpu().numpy()


def value_norms(model: Any, tokenizer: Any, text: str, *, max_length: int | None = None) -> xr.DataArray:
    """||f(x_j)|| per (layer, head, key) for ``text`` (Kobayashi et al. 2020).

    ``model`` is a BERT-family model with its fast tokenizer, or an :class:`attviz.models.LoadedModel`
    (then ``tokenizer`` may be ``None``).
    The text is tokenised as :func:`attviz.extract.extract` does, so the keys line up with the
    attention attviz extracts with the same model and ``max_length``.
    """
    tokens, _, norms = _forward(model, tokenizer, text, max_length)
    coords = {
        "layer": np.arange(norms.shape[0], dtype=np.int32),
        "head": np.arange(norms.shape[1], dtype=np.int32),
        **token_coords(tokens, "key"),
    }
    return xr.DataArray(
        norms,
        dims=("layer", "head", "key"),
        coords=coords,
        name="value_norm",
        attrs={"long_name": "norm of the transformed value vector ||f(x)||", "reference": REFERENCE},
    )


def with_value_norms(attention: xr.DataArray, norms: xr.DataArray) -> xr.DataArray:
    """``attention`` with the coordinate ``value_norm`` (layer, head, key) that ``value_norm`` uses.

    The norms are matched by layer, head and key position; their token texts must equal the
    attention's (the same model, tokenizer and truncation).
    """
    try:
        matched = norms.sel(layer=attention["layer"].values, head=attention["head"].values, key=attention["key"].values)
    except KeyError as exc:
        raise ValueError(f"the value norms do not cover the attention's layers/heads/keys: {exc}") from None
    if "key_text" in attention.coords and "key_text" in matched.coords:
        ours, theirs = tokens_of(attention, "key")["text"], tokens_of(matched, "key")["text"]
        if list(ours) != list(theirs):
            raise ValueError("the value norms were computed for other tokens than the attention's keys")
    variable = matched.transpose("layer", "head", "key").variable
    return attention.assign_coords(value_norm=(("layer", "head", "key"), variable.data))


def attention_with_value_norms(model: Any, tokenizer: Any, text: str, *, max_length: int | None = None) -> xr.DataArray:
    """Attention (layer, head, query, key) of ``text`` with its ``value_norm`` coord, from one pass."""
    tokens, attention, norms = _forward(model, tokenizer, text, max_length)
    array = attention_array(attention, tokens)
    return array.assign_coords(value_norm=(("layer", "head", "key"), norms))
