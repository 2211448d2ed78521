"""Capturing queries and keys through transformers' attention interface.

transformers routes every attention call of its modern models through a registry
(``AttentionInterface``; the mask through ``AttentionMaskInterface``). attviz registers the function
``"attviz"``: it records the module, the **post-RoPE** query and key, the mask and the keyword
arguments (``scaling``, ``is_causal``, ``softcap``, ``sliding_window``, ``position_bias``) and then runs
the model's fast kernel (``sdpa_attention_forward``; an exact math path where SDPA cannot, e.g.
soft-capping). The matching mask builder is ``sdpa_mask``: registering only the function would give
no mask at all, so padded documents would attend to padding.

From the recorded calls, :func:`document_qk` cuts one document out of the batch and turns the mask
into a band rule (:class:`attviz.qk.Rule`), the position bias into one value per head and offset,
and computes each row's log-sum-exp from the float16-rounded q and k that the store keeps, so the
rebuilt rows sum to 1. :func:`check_rebuild` compares the rebuild with the model's own eager weights.
Anything the rebuild cannot express raises :class:`QKUnavailable` with the reason, and extraction
keeps matrices instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attviz.errors import AttvizError
from attviz.qk import INT16_MAX, UNLIMITED, Rule

ATTENTION_NAME = "attviz"
#: Max abs error of the float32 rebuild against eager weights, by the model's dtype.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
_CALLS: contextvars.ContextVar[list[Call] | None] = contextvars.ContextVar("attviz_qk_calls", default=None)
_REGISTER_LOCK = threading.Lock()


class QKUnavailable(AttvizError):
    """The model's attention cannot be rebuilt from queries and keys; the message says why."""


@dataclass
class Call:
    """One call of the attention function: what the model passed."""

    module: Any
    query: torch.Tensor  # (batch, heads, queries, dim)
    key: torch.Tensor  # (batch, key heads, keys, dim)
    mask: torch.Tensor | None
    kwargs: dict[str, Any]
    #: ``(batch, heads, queries)`` row log-sum-exp from the kernel that ran the call (None: not given).
    lse: torch.Tensor | None = None

    @property
    def scaling(self) -> float:
        value = self.kwargs.get("scaling")
        return float(value) if value is not None else float(self.query.shape[-1]) ** -0.5

    @property
    def causal_without_mask(self) -> bool:
        return causal_without_mask(self.module, self.kwargs.get("is_causal"), self.mask, self.query.shape[2])


def causal_without_mask(module: Any, is_causal: bool | None, mask: torch.Tensor | None, n_query: int) -> bool:
    """Whether the kernel applies a causal mask itself (no mask tensor, ``is_causal``; as
    ``sdpa_attention_forward`` decides)."""
    flag = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return bool(flag) and mask is None and n_query > 1


def _attention(module, query, key, value, attention_mask, **kwargs):
    calls = _CALLS.get()
    if calls is not None:
        call = Call(module, query, key, attention_mask, dict(kwargs))
        calls.append(call)
        if query.device.type == "cpu" and kwargs.get("softcap") is None and not kwargs.get("dropout"):
            try:  # the fused kernel's row log-sum-exp comes for free
                output, call.lse = _flash_cpu(call, value)
                return output, None
            except RuntimeError:
                call.lse = None
    if kwargs.get("softcap") is not None:  # SDPA refuses soft-capping
        return _math_attention(module, query, key, value, attention_mask, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _flash_cpu(call: Call, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The call on torch's fused CPU kernel, which also returns each row's log-sum-exp (what a store
    keeps so a tile is normalised without the rest of its row): (output as transformers expects, lse)."""
    query, key = call.query, call.key
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    causal = call.causal_without_mask
    mask, bias = call.mask, call.kwargs.get("position_bias")
    lowest = torch.finfo(query.dtype).min  # not -inf: a row masked whole stays finite, as in eager
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill_(~mask, lowest)
    if bias is not None:
        mask = bias.to(query.dtype) if mask is None else mask + bias.to(query.dtype)
        if causal:
            n, m = query.shape[2], key.shape[2]
            upper = torch.ones(n, m, dtype=torch.bool, device=query.device).triu(1)
            mask = mask.masked_fill(upper, lowest)
            causal = False
    if mask is not None:
        mask = mask.to(query.dtype).expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    output, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, causal, attn_mask=mask, scale=call.scaling
    )
    return output.transpose(1, 2).contiguous(), lse


def _math_attention(module, query, key, value, attention_mask, scaling=None, softcap=None, **kwargs):
    """softmax(softcap(q kᵀ s) + bias + mask) v, for what the SDPA kernel does not do."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if kwargs.get("position_bias") is not None:
        scores = scores + kwargs["position_bias"]
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    elif causal_without_mask(module, kwargs.get("is_causal"), None, query.shape[2]):
        n, m = scores.shape[-2:]
        upper = torch.ones(n, m, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(upper, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def register() -> None:
    """Register the ``"attviz"`` attention function and its mask builder with transformers (once)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    with _REGISTER_LOCK:
        if AttentionInterface._global_mapping.get(ATTENTION_NAME) is not _attention:
            AttentionInterface.register(ATTENTION_NAME, _attention)
            AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()


def model_lock(model: Any) -> threading.RLock:
    """One lock per model object: a forward pass runs under the implementation it set (the explorer's
    sessions share one model and may extract at the same time)."""
    with _REGISTER_LOCK:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def implementation(model: Any, name: str) -> Iterator[None]:
    """``model`` runs with attention implementation ``name`` inside the block (restored after), which
    holds the model's lock, so another thread cannot switch it in the middle of a forward pass."""
    if name == ATTENTION_NAME:
        register()
    with model_lock(model):
        previous = getattr(model.config, "_attn_implementation", None) or "eager"
        if previous == name:
            yield
            return
        model.set_attn_implementation(name)
        try:
            yield
        finally:
            model.set_attn_implementation(previous)


def uses_interface(model: Any) -> bool:
    """Whether the model's implementation can be switched to attviz's (it calls the attention interface)."""
    try:
        return bool(model._can_set_attn_implementation())
    except Exception:
        return False


@contextlib.contextmanager
def recording() -> Iterator[list[Call]]:
    """Record every call of the ``"attviz"`` attention function made in this thread inside the block."""
    calls: list[Call] = []
    token = _CALLS.set(calls)
    try:
        yield calls
    finally:
        _CALLS.reset(token)


def assign(calls: Sequence[Call], kinds: dict[str, int]) -> dict[str, list[Call]]:
    """The calls of one forward pass per kind and layer, in call order: ``self``; or the encoder's
    layers, then the decoder's, each a self-attention call followed by a cross-attention call."""
    if "self" in kinds:
        expected = {"self": kinds["self"] or len(calls)}
    else:
        expected = {"encoder": kinds["encoder"], "decoder": kinds["decoder"], "cross": kinds["cross"]}
    total = sum(expected.values())
    if len(calls) != total:
        what = "never called" if not calls else f"called {len(calls)} times, not {total},"
        raise QKUnavailable(f"the model {what} the attention interface in one forward pass")
    if "self" in expected:
        return {"self": list(calls)}
    n_encoder = expected["encoder"]
    decoder = list(calls[n_encoder:])
    return {"encoder": list(calls[:n_encoder]), "decoder": decoder[0::2], "cross": decoder[1::2]}


# -- one document out of a batch ---------------------------------------------------------------------
def _band(allowed: torch.Tensor) -> tuple[int, int]:
    """The band ``(left, right)`` that ``allowed`` (queries × keys) is, or QKUnavailable."""
    n, m = allowed.shape
    if bool(allowed.all()):
        return UNLIMITED, UNLIMITED
    if not bool(allowed.any(dim=1).all()):
        raise QKUnavailable("a query attends to no key at all")
    rows = torch.arange(n, device=allowed.device)[:, None]
    cols = torch.arange(m, device=allowed.device)[None, :]
    offset = (cols - rows).expand(n, m)[allowed]
    right, left = int(offset.max()), int((-offset).max())
    right = UNLIMITED if right >= m - 1 else right
    left = UNLIMITED if left >= n - 1 else left
    band = torch.ones(n, m, dtype=torch.bool, device=allowed.device)
    if left >= 0:
        band &= rows - cols <= left
    if right >= 0:
        band &= cols - rows <= right
    if not torch.equal(band, allowed):
        raise QKUnavailable("the attention mask is not a band (causal, sliding window or full)")
    return left, right


def _rule(call: Call, b: int, n: int, m: int, cache: dict) -> Rule:
    mask = call.mask
    if mask is None:
        window = call.kwargs.get("sliding_window")
        if window is not None and max(n, m) > int(window):
            raise QKUnavailable("a sliding window without a mask tensor")
        left, right = (UNLIMITED, 0) if call.causal_without_mask else (UNLIMITED, UNLIMITED)
    else:
        key = (id(mask), b if mask.shape[0] > 1 else 0, n, m)
        if key not in cache:
            part = mask[b if mask.shape[0] > 1 else 0]
            if part.shape[0] > 1 and not bool((part == part[:1]).all()):
                raise QKUnavailable("a mask that differs between heads")
            part = part[0, :n, :m]
            if part.dtype != torch.bool:
                allowed = part > torch.finfo(part.dtype).min / 2
                if bool(torch.where(allowed, part, torch.zeros_like(part)).any()):
                    raise QKUnavailable("an additive mask with values other than 0 and -inf")
                part = allowed
            cache[key] = _band(part)
        left, right = cache[key]
    softcap = call.kwargs.get("softcap")
    return Rule(call.scaling, left, right, None if softcap is None else float(softcap))


def _bias(call: Call, b: int, n: int, m: int) -> torch.Tensor | None:
    """``(head, n + m - 1)`` relative bias by offset ``j - i + n - 1``, None when there is none."""
    bias = call.kwargs.get("position_bias")
    if bias is None:
        return None
    part = bias[b if bias.shape[0] > 1 else 0, :, :n, :m].float()
    if not bool(part.any()):
        return None
    relative = torch.cat([part[:, :, 0].flip(-1), part[:, 0, 1:]], dim=-1)
    offsets = torch.arange(m, device=part.device)[None, :] - torch.arange(n, device=part.device)[:, None] + n - 1
    if not torch.equal(relative[:, offsets], part):
        raise QKUnavailable("a position bias that is not a function of the offset j - i")
    return relative


def logits(q: torch.Tensor, k: torch.Tensor, rule: Rule, bias: torch.Tensor | None, rows: slice) -> torch.Tensor:
    """Masked float32 logits ``(head, rows, keys)`` of one layer of one document (torch twin of
    :meth:`attviz.qk.QKAttention.logits`); ``k`` has the key heads, repeated here for grouped queries."""
    n, m = q.shape[1], k.shape[1]
    groups = q.shape[0] // k.shape[0]
    qb = q[:, rows].float()
    scores = torch.matmul(qb, k.float().repeat_interleave(groups, dim=0).transpose(1, 2)) * rule.scaling
    if rule.softcap:
        scores = torch.tanh(scores / rule.softcap) * rule.softcap
    i = torch.arange(n, device=q.device)[rows][:, None]
    j = torch.arange(m, device=q.device)[None, :]
    if bias is not None:
        scores = scores + bias.float()[:, j - i + n - 1]
    if rule.left >= 0 or rule.right >= 0:
        allowed = torch.ones(i.shape[0], m, dtype=torch.bool, device=q.device)
        if rule.left >= 0:
            allowed &= i - j <= rule.left
        if rule.right >= 0:
            allowed &= j - i <= rule.right
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores


def _row_step(q: torch.Tensor, m: int) -> int:
    return max(1, (1 << 26) // max(1, q.shape[0] * m))


def log_sum_exp(q: torch.Tensor, k: torch.Tensor, rule: Rule, bias: torch.Tensor | None) -> torch.Tensor:
    """``(head, query)`` float32 row log-sum-exp, block by block of rows."""
    n, m = q.shape[1], k.shape[1]
    step = _row_step(q, m)
    return torch.cat([torch.logsumexp(logits(q, k, rule, bias, slice(s, s + step)), -1) for s in range(0, n, step)], 1)


def weights(q: torch.Tensor, k: torch.Tensor, rule: Rule, bias: torch.Tensor | None) -> torch.Tensor:
    """One layer's ``(head, query, key)`` float32 attention weights from q and k."""
    return torch.softmax(logits(q, k, rule, bias, slice(None)), dim=-1)


@dataclass
class LayerQK:
    """One layer of one document: q ``(head, n, d)``, k ``(key head, m, d)``, its rule and bias."""

    query: torch.Tensor
    key: torch.Tensor
    rule: Rule
    bias: torch.Tensor | None
    #: ``(head, n)`` row log-sum-exp from the kernel, or None.
    lse: torch.Tensor | None = None


def document_qk(calls: Sequence[Call], b: int, n: int, m: int, cache: dict | None = None) -> list[LayerQK]:
    """Document ``b``'s ``n`` queries and ``m`` keys of every layer (views into the batch tensors)."""
    cache = {} if cache is None else cache
    out = []
    for call in calls:
        if call.query.shape[1] % call.key.shape[1]:
            raise QKUnavailable(
                f"{call.query.shape[1]} query heads are not a multiple of {call.key.shape[1]} key heads"
            )
        unknown = {k for k, v in call.kwargs.items() if v is not None} - _UNDERSTOOD
        if unknown:
            raise QKUnavailable(f"the attention function was passed {sorted(unknown)}, which attviz cannot rebuild")
        lse = None if call.lse is None else call.lse[b, :, :n]
        rule, bias = _rule(call, b, n, m, cache), _bias(call, b, n, m)
        out.append(LayerQK(call.query[b, :, :n], call.key[b, :, :m], rule, bias, lse))
    return out


#: Keyword arguments whose effect the rebuild knows (the rest: an unknown model feature -> matrices).
_UNDERSTOOD = {
    "scaling", "is_causal", "softcap", "sliding_window", "position_bias", "dropout", "output_attentions",
    "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "use_cache",
    "cache_position", "past_key_values", "past_key_value", "head_mask", "layer_idx", "attention_type", "deterministic",
}  # fmt: skip


def check_rebuild(
    loaded: Any,
    kwargs: dict[str, Any],
    kinds: dict[str, int | None],
    sizes: dict[str, Sequence[tuple[int, int]]],
    qk: Callable[[], Any],
    eager: Callable[[], Any],
) -> dict[str, Any]:
    """Run a batch with the attention function recording (``qk()``: a context in which the model runs
    attviz's attention) and with eager attention (``eager()``), rebuild every document from the
    recorded queries and keys and compare with the model's own eager weights.

    Returns ``{"error": max abs error of the float32 rebuild, "stored_error": of the rows rebuilt from
    the stored int16 q/k (what ``doc.attention`` gives), "tile_error": of tiles normalised by the stored
    row log-sum-exp (the matrix view of a long document), "tolerance", "documents"}``;
    raises :class:`QKUnavailable` when the float32 rebuild is off by more than :data:`TOLERANCE`.
    """
    with torch.inference_mode():
        with qk(), recording() as calls:
            loaded.model(**kwargs, return_dict=True)
        with eager():
            out = loaded.model(**kwargs, output_attentions=True, return_dict=True)
    per_kind = assign(calls, kinds)
    if "self" in per_kind:
        references = {"self": out.attentions}
    else:
        references = {
            "encoder": out.encoder_attentions,
            "decoder": out.decoder_attentions,
            "cross": out.cross_attentions,
        }
    tolerance = TOLERANCE.get(loaded.model.dtype, 1e-4)
    error = stored = tiles = 0.0
    for kind, calls in per_kind.items():
        reference = references[kind]
        if not reference or len(reference) != len(calls) or any(r is None for r in reference):
            raise QKUnavailable(f"the eager pass returned no {kind} weights to check the rebuild against")
        cache: dict = {}
        for b, (n, m) in enumerate(sizes[kind]):
            for layer, x in enumerate(document_qk(calls, b, n, m, cache)):
                expected = reference[layer][b, :, :n, :m].float()
                error = max(error, float((weights(x.query, x.key, x.rule, x.bias) - expected).abs().max()))
                q16, k16 = rounded(x.query), rounded(x.key)
                scores = logits(q16, k16, x.rule, x.bias, slice(None))
                stored = max(stored, float((torch.softmax(scores, -1) - expected).abs().max()))
                lse = x.lse.float() if x.lse is not None else torch.logsumexp(scores, -1)
                tiles = max(tiles, float((torch.exp(scores - lse[..., None]) - expected).abs().max()))
    if not error <= tolerance:  # NaN fails too
        raise QKUnavailable(
            f"weights rebuilt from queries and keys differ from the eager weights by {error:.3g} (> {tolerance:g})"
        )
    return {
        "error": error,
        "stored_error": stored,
        "tile_error": tiles,
        "tolerance": tolerance,
        "documents": len(sizes[next(iter(per_kind))]),
    }


def to_int16(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int16 values, float32 scale per vector)`` with values ≈ q × scale[..., None] (the store's
    encoding, :data:`attviz.qk.QK_ENCODING`). A vector that is not finite gets a non-finite scale (the
    caller checks the scales of what it keeps)."""
    values = values.float()
    scale = values.abs().amax(-1).clamp_(min=torch.finfo(torch.float32).tiny).div_(INT16_MAX)
    q = values * scale.reciprocal()[..., None]  # |q| ≤ 32767 + a few ulps: rounds to at most 32767
    return q.round_().to(torch.int16), scale


def rounded(values: torch.Tensor) -> torch.Tensor:
    """``values`` as the store gives them back (:func:`to_int16`), float32; QKUnavailable when not finite."""
    q, scale = to_int16(values)
    if not bool(torch.isfinite(scale).all()):
        raise QKUnavailable("queries or keys that are not finite")
    return q.float() * scale[..., None]
