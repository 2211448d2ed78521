"""From the model's attention tensors to what a storage policy keeps, on the model's device.

Per batch and kind (``self``, ``encoder`` ...): the kept layers and heads are stacked as float16 (or
quantised to uint8 rows on an accelerator, halving the bytes that cross the bus), token-level
aggregations and head summaries are reduced per document on the device, and the results go to the
host through pinned buffers on a side stream, so the copy overlaps the next batch's forward pass.
On the CPU the same code runs without copies. The writer thread turns the results into numpy with
:func:`materialize`, which waits for the copy of exactly what it needs.

Capture plugins (:mod:`attviz.captures`) ride along: :meth:`Capture.plugin_hooks` attaches them
around the forward pass and :meth:`Capture.plugin_arrays` collects their per-document arrays the
same way.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from attviz.policy import SUMMARY, VECTORS, StoragePolicy
from attviz.qk import QK_SUFFIXES, QKAttention, matrix_bytes, qk_bytes
from attviz.store import Quantized, quantize_rows_torch

#: How extraction keeps attention: ``auto`` (per document, the smaller of q/k and matrices), ``qk``, ``matrices``.
ATTENTION_MODES = ("auto", "qk", "matrices")

# model types whose attention mask is only padding, built by create_bidirectional_mask (checked in
# transformers 5.x): a ready 4-D mask is equivalent there
PLAIN_MASK_MODELS = frozenset({"bert", "roberta", "xlm-roberta", "electra", "camembert", "distilbert"})


class HostCopy:
    """A tensor on its way to the host: pinned buffer + CUDA event, or the CPU tensor itself."""

    def __init__(self, tensor: torch.Tensor, stream: Any = None):
        self.event = None
        if tensor.device.type == "cuda":
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            stream = stream or torch.cuda.current_stream(tensor.device)
            stream.wait_stream(torch.cuda.current_stream(tensor.device))  # the values must be computed
            with torch.cuda.stream(stream):
                buffer.copy_(tensor, non_blocking=True)
                tensor.record_stream(stream)  # its memory is not reused before the copy ends
                self.event = torch.cuda.Event()
                self.event.record(stream)
            tensor = buffer
        elif tensor.device.type != "cpu":  # mps and others: a plain synchronous copy
            tensor = tensor.cpu()
        self.tensor = tensor
        self._array: np.ndarray | None = None

    def numpy(self) -> np.ndarray:
        if self._array is None:
            if self.event is not None:
                self.event.synchronize()
            self._array = self.tensor.numpy()
        return self._array


class Slice:
    """One document's part of a batch copy: ``HostCopy.numpy()[index]``, taken when needed."""

    def __init__(self, copy: HostCopy, index: tuple):
        self.copy, self.index = copy, index

    def numpy(self) -> np.ndarray:
        return self.copy.numpy()[self.index]


def materialize(value: Any) -> Any:
    """numpy (or :class:`Quantized` of numpy, or :class:`QKAttention` of numpy) for a value
    :meth:`Capture.kind` or :meth:`Capture.kind_qk` returned."""
    if isinstance(value, QKAttention):
        for name in QK_SUFFIXES:
            setattr(value, name, materialize(getattr(value, name)))
        return value
    if isinstance(value, Quantized):
        return Quantized(materialize(value.q), materialize(value.scale))
    if isinstance(value, HostCopy | Slice):
        return value.numpy()
    return value


class Capture:
    """Turns one batch's attention into host arrays per document, as ``policy`` says."""

    def __init__(
        self,
        policy: StoragePolicy | None = None,
        quantize_on_device: bool = False,
        four_d_mask: bool | None = None,
        plugins: Mapping[str, Any] | None = None,
        strict: bool = True,
        attention: str = "matrices",
    ):
        """``plugins``: ``{id: ModelCapture}`` to run (see :func:`attviz.captures.resolve`); ``strict``:
        a failing plugin stops the extraction (else it is left out for the rest of the job, with its
        error in :attr:`skipped`); ``attention``: one of :data:`ATTENTION_MODES` (``auto`` and ``qk``
        capture queries and keys through the attention interface: :meth:`kind_qk`)."""
        if attention not in ATTENTION_MODES:
            from attviz.errors import AttvizError

            raise AttvizError(f"attention must be one of {ATTENTION_MODES}, not {attention!r}")
        self.attention = attention
        #: Bytes a stored matrix value takes (2: float16; 1: uint8 rows), what ``auto`` compares q/k with.
        self.matrix_value_bytes = 2
        #: Why queries and keys are not captured (set when ``auto``/``qk`` fell back to matrices).
        self.fallback: str = ""
        #: The first batch's rebuild check (:func:`attviz.qk_capture.check_rebuild`), once done.
        self.check: dict[str, Any] | None = None
        self.policy = policy or StoragePolicy()
        self.plugins: dict[str, Any] = dict(plugins or {})
        self.strict = strict
        self.skipped: dict[str, str] = {}
        self.quantize_on_device = quantize_on_device
        self.four_d_mask = four_d_mask
        self.causal: bool | None = None  # whether the first multi-token document's attention is causal
        self._stream: Any = None

    def prepared_mask(self, loaded: Any) -> bool:
        """Whether padded batches get a ready 4-D additive mask instead of the 2-D one.

        ``four_d_mask=None`` (auto): on an accelerator, for the BERT family (whose mask is plain
        padding: a 4-D mask is used as given, so it must not replace a causal or sliding-window one)
        once the first batch showed bidirectional attention. The CPU keeps the 2-D mask.
        """
        if self.four_d_mask is not None:
            return self.four_d_mask
        model_type = str(getattr(getattr(loaded, "config", None), "model_type", ""))
        return (
            loaded.device.type != "cpu"
            and not loaded.encoder_decoder
            and model_type in PLAIN_MASK_MODELS
            and self.causal is False
        )

    # -- capture plugins ---------------------------------------------------------------------------
    def _failed(self, name: str, step: str, exc: BaseException) -> None:
        from attviz.errors import AttvizError
        from attviz.registry import PluginWarning

        reason = f"{step} failed: {type(exc).__name__}: {exc}"
        if self.strict:
            raise AttvizError(f"capture {name!r}: {reason}") from exc
        self.plugins.pop(name, None)
        self.skipped[name] = reason
        warnings.warn(f"attviz capture {name!r} left out: {reason}", PluginWarning, stacklevel=3)

    @contextlib.contextmanager
    def plugin_hooks(self, loaded: Any) -> Iterator[None]:
        """Every capture plugin attached (its forward hooks registered) for one forward pass."""
        tried = []
        try:
            for name, plugin in list(self.plugins.items()):
                tried.append((name, plugin))
                try:
                    plugin.attach(loaded)
                except Exception as exc:
                    self._failed(name, "attach", exc)
            yield
        finally:
            failed = []
            for name, plugin in tried:
                try:
                    plugin.detach()
                except Exception as exc:  # detach the others first: never leave the model hooked
                    failed.append((name, exc))
            for name, exc in failed:
                self._failed(name, "detach", exc)

    def plugin_arrays(
        self, loaded: Any, outputs: Any, input_ids: torch.Tensor, mask: torch.Tensor, lengths: Sequence[int]
    ) -> list[dict[str, Any]]:
        """``[{capture_<id>: host value}]`` per document: each plugin's ``collect`` for the batch, cut
        to each document's tokens and copied to the host like the attention."""
        from attviz.captures.base import CaptureBatch, token_axes

        out: list[dict[str, Any]] = [{} for _ in lengths]
        if not self.plugins:
            return out
        batch = CaptureBatch(loaded, outputs, input_ids, mask, list(lengths))
        stream = self.stream(input_ids.device)
        for name, plugin in list(self.plugins.items()):
            kind = plugin.kind  # capture_<id>: the id is looked up in the plugin registry
            try:
                values = torch.as_tensor(plugin.collect(batch)).detach()
                dims = tuple(plugin.dims)
                if values.ndim != len(dims) + 1 or values.shape[0] != len(lengths):
                    raise ValueError(
                        f"collect() gave shape {tuple(values.shape)}; expected (batch={len(lengths)}, *{dims})"
                    )
                axes = [a + 1 for a in token_axes(dims)]
                width = max(lengths)
                short = [a for a in axes if values.shape[a] < width]
                if short:
                    raise ValueError(f"collect() gave {values.shape[short[0]]} tokens on a token axis; need {width}")
                copy = HostCopy(values.float(), stream)
                for b, n in enumerate(lengths):
                    index = tuple(
                        b if a == 0 else slice(0, n) if a in axes else slice(None) for a in range(values.ndim)
                    )
                    out[b][kind] = Slice(copy, index)
            except Exception as exc:
                self._failed(name, "collect", exc)
                for kept in out:
                    kept.pop(kind, None)
        return out

    def stream(self, device: torch.device) -> Any:
        if device.type != "cuda":
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        return self._stream

    def kind(
        self,
        kind: str,
        attentions: Sequence[torch.Tensor],
        sizes: Sequence[tuple[int, int]],
        special: Sequence[np.ndarray] | None = None,
    ) -> list[dict[str, Any]]:
        """``[{array name: host value}]`` per document for one kind's per-layer ``(B, H, Q, K)`` tensors.

        ``sizes`` gives each document's (queries, keys) without padding; ``special`` its key
        tokens' special flags (for the head summary).
        """
        policy = self.policy
        device = attentions[0].device
        stream = self.stream(device)
        out: list[dict[str, Any]] = [{} for _ in sizes]
        if policy.matrices:
            layers = [attentions[i] for i in policy.layers] if policy.layers is not None else list(attentions)
            heads = list(policy.heads) if policy.heads is not None else None
            batch, n_heads, queries, keys = layers[0].shape
            shape = (batch, len(layers), n_heads if heads is None else len(heads), queries, keys)
            stacked = torch.empty(shape, dtype=torch.float16, device=device)
            for i, a in enumerate(layers):  # cast while copying: one pass, half the memory of stack + cast
                stacked[:, i].copy_(a if heads is None else a[:, heads])
            copy = None if self.quantize_on_device else HostCopy(stacked, stream)
            for b, (n, m) in enumerate(sizes):
                if copy is not None:
                    out[b][kind] = Slice(copy, (b, slice(None), slice(None), slice(0, n), slice(0, m)))
                    continue
                # per document: a padded key must not set a row's scale
                q = quantize_rows_torch(stacked[b, :, :, :n, :m], host=False)
                out[b][kind] = Quantized(HostCopy(q.q, stream), HostCopy(q.scale, stream))
        self._reductions(kind, out, sizes, special, lambda b, n, m: torch.stack([a[b, :, :n, :m] for a in attentions]))
        return out

    def _reductions(self, kind: str, out: list[dict[str, Any]], sizes, special, document: Any) -> None:
        """The policy's token-level aggregations and head summary per document, on the device;
        ``document(b, n, m)`` gives one document's ``(layer, head, query, key)`` weights."""
        policy = self.policy
        square = kind != "cross"
        reducers = policy.aggregations() if square else {}
        if not (reducers or (policy.summary and square)):
            return
        device = None
        flags_batch = None
        for b, (n, m) in enumerate(sizes):
            weights = document(b, n, m)
            if device is None:
                device = weights.device
                if special is not None:  # every document's flags in one host-to-device copy
                    padded = np.zeros((len(sizes), max(m for _, m in sizes)), dtype=bool)
                    for i, (_, width) in enumerate(sizes):
                        padded[i, :width] = np.asarray(special[i], dtype=bool)[:width]
                    flags_batch = torch.from_numpy(padded).to(device)
            stream = self.stream(device)
            flags = None if flags_batch is None else flags_batch[b, :m]
            if reducers:
                values = torch.stack([_reduce(agg, weights, flags) for agg in reducers.values()])
                out[b][kind + VECTORS] = HostCopy(values, stream)
            if policy.summary and square:
                summary = _reduce(policy.summary_aggregation(), weights, flags)
                out[b][kind + SUMMARY] = HostCopy(summary, stream)

    def _qk_document(self, layers: Sequence[Any]) -> Any:
        """One document's weights for the policy's reductions: the whole ``(layer, head, query, key)``
        tensor, or, above :data:`REDUCE_BYTES`, a :class:`_PerMatrix` that rebuilds one matrix at a time
        (a token-level aggregation or the head summary reads one ``(query, key)`` matrix per output)."""
        from attviz.qk_capture import weights

        n_heads, n, _ = layers[0].query.shape
        m = layers[0].key.shape[1]
        if len(layers) * n_heads * n * m * 4 <= REDUCE_BYTES:
            return torch.stack([weights(x.query, x.key, x.rule, x.bias) for x in layers])
        return _PerMatrix(layers)

    def kind_qk(
        self,
        kind: str,
        calls: Sequence[Any],
        sizes: Sequence[tuple[int, int]],
        special: Sequence[np.ndarray] | None = None,
    ) -> list[dict[str, Any]]:
        """Like :meth:`kind`, from the recorded attention calls of one kind (one per layer): each
        document's kept layers and heads as a :class:`QKAttention` (float16 q and k, float32 row
        log-sum-exp) where that is the smaller (``auto``) or asked for (``qk``), else float16
        matrices rebuilt from the float32 q and k (equal to the eager weights within 1e-6)."""
        from attviz.qk_capture import document_qk, log_sum_exp, weights

        policy = self.policy
        cache: dict = {}
        documents = [document_qk(calls, b, n, m, cache) for b, (n, m) in enumerate(sizes)]
        out: list[dict[str, Any]] = [{} for _ in sizes]
        if not calls:
            return out
        device = calls[0].query.device
        stream = self.stream(device)
        n_layers, n_heads = len(calls), calls[0].query.shape[1]
        layer_ids = list(policy.layers) if policy.layers is not None else list(range(n_layers))
        head_ids = list(policy.heads) if policy.heads is not None else None
        kept_heads = len(head_ids) if head_ids is not None else n_heads
        heads = head_ids if head_ids is not None else slice(None)
        batch: _BatchQK | None = None  # the kept layers of the whole batch, quantised once
        for b, (n, m) in enumerate(sizes):
            if self.causal is None and kind in ("self", "decoder") and n > 1:
                self.causal = documents[b][0].rule.causal
            layers = [documents[b][i] for i in layer_ids]
            if not policy.matrices or not layers:
                continue
            key_heads, dim = layers[0].key.shape[0], layers[0].query.shape[-1]
            small = qk_bytes(len(layers), kept_heads, key_heads, dim, n, m) < matrix_bytes(
                len(layers), kept_heads, n, m, layers[0].rule.causal, self.matrix_value_bytes
            )
            if self.attention == "qk" or small:
                batch = batch or _BatchQK([calls[i] for i in layer_ids], heads, stream)
                if batch.finite(b, n, m):  # else this document keeps matrices
                    lse = batch.lse(b, n)
                    if lse is None:  # no kernel log-sum-exp (e.g. CUDA, soft-capping): computed here
                        keys_of = _key_heads(head_ids, n_heads // key_heads)
                        q, k = batch.dequantized(b, n, m)
                        lse = HostCopy(
                            torch.stack(
                                [
                                    log_sum_exp(
                                        q[i], keys_of(k[i]), x.rule, x.bias if x.bias is None else x.bias[heads]
                                    )
                                    for i, x in enumerate(layers)
                                ]
                            ),
                            stream,
                        )
                    bias = None
                    if any(x.bias is not None for x in layers):
                        zero = torch.zeros(n_heads, n + m - 1, device=device)
                        bias = torch.stack([(zero if x.bias is None else x.bias.float()) for x in layers])
                        bias = HostCopy(bias[:, heads].contiguous(), stream)
                    out[b][kind] = QKAttention(
                        **batch.document(b, n, m),
                        lse=lse,
                        bias=bias,
                        rules=[x.rule for x in layers],
                        layers=list(policy.layers) if policy.layers is not None else None,
                        heads=head_ids,
                        groups=n_heads // key_heads,
                    )
                    continue
            keys_of = _key_heads(head_ids, n_heads // key_heads)
            stacked = torch.stack(
                [
                    weights(
                        x.query if head_ids is None else x.query[head_ids],
                        keys_of(x.key),
                        x.rule,
                        x.bias if x.bias is None or head_ids is None else x.bias[head_ids],
                    )
                    for x in layers
                ]
            )
            if self.quantize_on_device:
                q = quantize_rows_torch(stacked, host=False)
                out[b][kind] = Quantized(HostCopy(q.q, stream), HostCopy(q.scale, stream))
            else:
                out[b][kind] = HostCopy(stacked.to(torch.float16), stream)
        self._reductions(
            kind,
            out,
            sizes,
            special,
            lambda b, n, m: self._qk_document(documents[b]),
        )
        return out


class _BatchQK:
    """One kind's kept layers of a whole batch: q and k quantised to int16 with a scale per vector in
    one pass (a vector's scale is its own, so a document's slice equals quantising it alone), copied to
    the host once, and sliced per document."""

    def __init__(self, calls: Sequence[Any], heads: Any, stream: Any):
        from attviz.qk_capture import to_int16

        query = torch.stack([c.query[:, heads] for c in calls], dim=1)  # (batch, layer, head, query, dim)
        key = torch.stack([c.key for c in calls], dim=1)
        (self.query, self.query_scale), (self.key, self.key_scale) = to_int16(query), to_int16(key)
        self._finite = torch.isfinite(self.query_scale).flatten(1).all(1) & torch.isfinite(self.key_scale).flatten(
            1
        ).all(1)  # per document of the batch, padding included
        self._lse = (
            torch.stack([c.lse[:, heads] for c in calls], dim=1) if all(c.lse is not None for c in calls) else None
        )
        self.stream = stream
        self._copies = {
            name: HostCopy(getattr(self, name), stream) for name in ("query", "query_scale", "key", "key_scale")
        }
        self._lse_copy = None if self._lse is None else HostCopy(self._lse.float(), stream)

    def finite(self, b: int, n: int, m: int) -> bool:
        if bool(self._finite[b]):
            return True
        return bool(
            torch.isfinite(self.query_scale[b, :, :, :n]).all() and torch.isfinite(self.key_scale[b, :, :, :m]).all()
        )

    def document(self, b: int, n: int, m: int) -> dict[str, Any]:
        index = {"query": (b, slice(None), slice(None), slice(0, n)), "key": (b, slice(None), slice(None), slice(0, m))}
        return {name: Slice(copy, index[name.split("_")[0]]) for name, copy in self._copies.items()}

    def lse(self, b: int, n: int) -> Slice | None:
        return None if self._lse_copy is None else Slice(self._lse_copy, (b, slice(None), slice(None), slice(0, n)))

    def dequantized(self, b: int, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Document ``b``'s q and k as stored, float32 ``(layer, head, tokens, dim)``."""
        q = self.query[b, :, :, :n].float() * self.query_scale[b, :, :, :n, None]
        k = self.key[b, :, :, :m].float() * self.key_scale[b, :, :, :m, None]
        return q, k


def _key_heads(heads: Sequence[int] | None, groups: int) -> Any:
    """``keys -> keys`` for the kept query ``heads``: each kept head's key head (all keys when every
    head is kept; the rebuild repeats them for grouped queries)."""
    if heads is None:
        return lambda keys: keys
    index = [h // groups for h in heads]
    return lambda keys: keys[index]


#: Bytes of a document's float32 weights above which q/k reductions rebuild one matrix at a time.
REDUCE_BYTES = 1 << 30


class _PerMatrix:
    """A long document's weights for the reductions, rebuilt one ``(query, key)`` matrix at a time."""

    def __init__(self, layers: Sequence[Any]):
        self.layers = layers
        self.device = layers[0].query.device

    @property
    def heads(self) -> int:
        return int(self.layers[0].query.shape[0])

    def matrix(self, layer: int, head: int) -> torch.Tensor:
        from attviz.qk_capture import weights

        x = self.layers[layer]
        groups = x.query.shape[0] // x.key.shape[0]
        bias = None if x.bias is None else x.bias[head : head + 1]
        key = x.key[head // groups : head // groups + 1]
        return weights(x.query[head : head + 1], key, x.rule, bias)[None]  # (1, 1, query, key)


def _reduce(agg: Any, document: Any, special: torch.Tensor | None) -> torch.Tensor:
    """``agg`` on one document's ``(layer, head, query, key)`` tensor (or :class:`_PerMatrix`: one matrix
    at a time, which an aggregation of ``(query, key)`` matrices allows): on its device when the
    aggregation has a torch version, else on the host with its xarray version."""
    if isinstance(document, _PerMatrix):
        rows = [
            torch.cat([_reduce(agg, document.matrix(layer, head), special) for head in range(document.heads)], dim=1)
            for layer in range(len(document.layers))
        ]
        return torch.cat(rows, dim=0)
    if agg.supports_torch:
        return agg.apply_torch(document, special=special).float()
    from attviz.corpus import attention_array, token_frame

    values = document.float().cpu().numpy()
    n, m = values.shape[-2:]
    flags = special.cpu().numpy() if special is not None else None
    keys = token_frame([""] * m, special=flags)
    array = attention_array(values, token_frame([""] * n), keys)
    return torch.from_numpy(np.asarray(agg(array).transpose("layer", "head", ...).values, dtype=np.float32))


def array_attrs(policy: StoragePolicy, kind: str) -> dict[str, dict[str, Any]]:
    """The attrs the store keeps with each array :meth:`Capture.kind` makes for ``kind``."""
    from attviz.aggregations.heads import STATISTICS

    out: dict[str, dict[str, Any]] = {}
    if policy.matrices:
        out[kind] = {k: list(v) for k, v in (("layer", policy.layers), ("head", policy.heads)) if v is not None}
    if kind != "cross" and policy.vectors:
        aggs = policy.aggregations()
        out[kind + VECTORS] = {
            "vector": list(aggs),
            "vector_long_name": [a.long_name or a.description for a in aggs.values()],
            "vector_units": [a.units for a in aggs.values()],
        }
    if kind != "cross" and policy.summary:
        out[kind + SUMMARY] = {"statistic": list(STATISTICS), "statistic_units": [u for _, u in STATISTICS.values()]}
    return out
