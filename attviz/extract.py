"""Run a model over texts and capture every layer × head attention matrix.

Batches by length (little padding), strips padding from the stored matrices (a document's
matrices are T×T for its own T), keeps special tokens flagged, writes each finished document to
the store from a background thread while the next batch computes, and resumes an interrupted job.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attviz.aggregations.heads import STATISTICS
from attviz.capture import Capture
from attviz.captures.base import resolve as resolve_captures
from attviz.corpus import Corpus
from attviz.errors import AttvizError, InputError
from attviz.models import (
    LoadedModel,
    ZeroShotClassifier,
    check_attentions,
    expected_layers,
    load_model,
    prepare_model,
    softmax_probabilities,
)
from attviz.policy import StoragePolicy
from attviz.qk import matrix_bytes, qk_bytes
from attviz.sinks import MemorySink, Sink, StoreSink
from attviz.store import partial_path, resume_hint
from attviz.tokenization import Unit, add_targets, make_batches, pad_batch, tokenize

LONG_TEXT_MODES = ("truncate", "window")


class ExtractionInterrupted(AttvizError):
    """Extraction stopped early; the finished documents are kept and a rerun resumes."""


def extract(
    texts: Sequence[str],
    *,
    model: Any = None,
    tokenizer: Any = None,
    labels: Sequence[str | None] | None = None,
    ids: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    label_descriptions: dict[str, str] | ZeroShotClassifier | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    long_texts: str = "truncate",
    stride: int = 64,
    store: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = True,
    device: str = "auto",
    dtype: str | None = None,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
    force: bool = False,
    max_new_tokens: int = 32,
    compression: str = "lz4",
    policy: StoragePolicy | None = None,
    captures: str | Sequence[Any] | None = None,
    attention: str | None = None,
    client: Any = None,
    scheduler: str | None = None,
    trust_remote_code: bool = False,
) -> Corpus:
    """Extract the attention of ``model`` over ``texts`` into a :class:`Corpus`.

    Parameters
    ----------
    model, tokenizer
        A model name/path (``None``: the bundled all-MiniLM-L6-v2), or loaded objects.
    labels, ids
        Gold labels and document ids, one per text (optional).
    targets
        Decoder texts for encoder-decoder models (teacher forcing); without them the model
        generates (greedy, ``max_new_tokens``) and the generated text is used.
    label_descriptions
        ``{label: description}`` for zero-shot predictions by embedding similarity, for models
        without a classification head. Models with a head predict with it.
    long_texts
        ``"truncate"`` at ``max_length`` (default: the model's limit), or ``"window"``: overlapping
        windows (``stride`` tokens of overlap), each stored as a document linked to its source.
    store
        Write a zarr store here (atomically; resumable). Without it the corpus stays in memory.
    callback
        Called as ``callback(done, total)`` after every batch (progress in apps).
    compression
        How stored matrices are encoded: ``"lz4"`` (lossless float16, blosc lz4 + bitshuffle; the
        default), ``"zstd"`` (lossless, level 1), ``"none"``, or ``"uint8"`` (per row with a float32
        scale, max abs error row max / 510). See :class:`attviz.store.StoreWriter`.
    policy
        What to keep per document (:class:`attviz.policy.StoragePolicy`): every matrix (default),
        some layers/heads, token-level aggregations and head summaries computed on the device, or
        only those (the explorer then recomputes a document's matrices on demand).
    force
        Write even when the estimated store size exceeds the free disk space.
    captures
        Capture plugins to run (:mod:`attviz.captures`), each storing per-document data it records
        from the model (e.g. ``["value_norm"]``, parameters as ``"id:name=value"``); one that cannot run
        on the model is an error. ``"auto"``: every installed one that supports the model (the others
        are listed with the reason in ``corpus.attrs["captures_skipped"]``). Default: none.
    attention
        How attention is kept: ``"qk"``, the queries and keys (float16) from which every weight is
        rebuilt exactly (:mod:`attviz.qk`), captured through transformers' attention interface while
        the model runs its fast SDPA kernel; ``"matrices"``, every float16 matrix from an eager pass;
        ``"auto"`` (default; ``$ATTVIZ_ATTENTION`` changes it): q/k per document where that is smaller
        (long documents), else matrices.
        The first batch's rebuild is checked against the eager weights; a model whose attention
        cannot be rebuilt (e.g. DeBERTa, which never calls the interface) keeps matrices under
        ``auto`` (the reason is printed and kept in ``corpus.attrs["attention_fallback"]``) and
        fails under ``qk``.
    client, scheduler
        Shard the documents over the workers of a dask.distributed cluster (:mod:`attviz.distributed`): a
        ``distributed.Client``, or the scheduler's address (``"tcp://host:8786"``). Each worker loads the
        model once (by its name or path, on ``device`` there: ``"auto"`` takes its GPU) and writes its
        documents into ``store`` (a local path every worker sees); this process tokenises, plans the
        batches, shows the progress and finalizes the store. Needs ``store`` and a model name or path.
    trust_remote_code
        Allow code from the model repository when loading ``model`` by name or path.
    """
    attention = attention or os.environ.get("ATTVIZ_ATTENTION") or "auto"
    cluster = None
    if client is not None or scheduler is not None:
        from attviz import distributed

        cluster = distributed.Cluster(client, scheduler, model, store)
        device, model_device = "cpu", device  # here only to tokenise and describe; the workers run it
    loaded = _loaded(model, tokenizer, device, dtype, trust_remote_code)
    texts = _check_texts(texts)
    ids = _check_ids(ids, len(texts))
    labels = _check_parallel(labels, len(texts), "labels")
    targets = _check_parallel(targets, len(texts), "targets")
    if long_texts not in LONG_TEXT_MODES:
        raise AttvizError(f"long_texts must be one of {LONG_TEXT_MODES}, not {long_texts!r}")
    if long_texts == "window" and loaded.encoder_decoder:
        raise AttvizError("sliding windows are not supported for encoder-decoder models; use truncate")
    max_length = _max_length(loaded, max_length)
    predictor = _predictor(label_descriptions, loaded)
    policy = policy or StoragePolicy()
    layers, heads = _shape(loaded)
    if loaded.encoder_decoder:  # a kept layer must exist in the decoder too
        layers = min(layers, expected_layers(loaded.config, "decoder") or layers)
    policy.check(layers, heads)
    plugins, skipped = resolve_captures(captures, loaded)

    units = tokenize(loaded, texts, ids, labels, max_length=max_length, long_texts=long_texts, stride=stride)
    if loaded.encoder_decoder:
        add_targets(loaded, units, targets, max_length, batch_size, max_new_tokens)
    settings = {
        "max_length": max_length,
        "long_texts": long_texts,
        "stride": stride if long_texts == "window" else 0,
        "dtype": str(dtype or _model_dtype(loaded)),
        "predictor": "zero-shot" if predictor else ("classifier" if loaded.label_names else ""),
        "label_descriptions": dict(zip(predictor.labels, predictor.descriptions, strict=True)) if predictor else {},
        "policy": policy.settings(),
        "attention": attention,
    }
    if plugins:
        settings["captures"] = [plugin.spec() for plugin in plugins.values()]
    attrs = _corpus_attrs(loaded, settings, predictor)
    attrs["storage_policy"] = policy.describe()
    if attention != "matrices" and attrs["storage_policy"].startswith("matrices"):  # q/k where smaller
        attrs["storage_policy"] = "attention" + attrs["storage_policy"][len("matrices") :]
    estimate = estimate_bytes(loaded, units, policy, attention)
    truncated = sum(u.truncated for u in units)
    if progress:
        note = f"; {truncated} truncated at {max_length} tokens" if truncated else ""
        print(
            f"attviz: {len(units)} documents{note}; keeping {attrs['storage_policy']}; estimated size "
            f"{_human(estimate)} ({_kept_as(attention)}, before compression)",
            file=sys.stderr,
        )
    if store is not None:
        _check_disk(store, estimate, force)

    sink: Sink = (
        StoreSink(store, _fingerprint(loaded, settings, units), overwrite, resume, compression, policy)
        if store
        else MemorySink(policy)
    )
    # on an accelerator, quantise before the copy (half the bytes over the bus); on the CPU the writer
    # thread does it, overlapping the next forward pass
    capture = Capture(
        policy,
        quantize_on_device=compression == "uint8" and loaded.device.type != "cpu",
        plugins=plugins,
        strict=captures != "auto",
        attention=attention,
    )
    capture.matrix_value_bytes = 1 if compression == "uint8" else 2
    label_names = predictor.labels if predictor else loaded.label_names
    sink.label_names = label_names
    sink.extra_attrs = {plugin.kind: plugin.stored_attrs() for plugin in plugins.values()}
    todo = [u for u in units if u.index not in sink.done]
    batches = make_batches(todo, batch_size)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(units), initial=len(units) - len(todo), unit="doc", desc="extracting", disable=not progress)
    if predictor is not None and cluster is None:
        predictor.prepare(loaded)
    finished = len(units) - len(todo)

    def advance(n: int) -> None:
        nonlocal finished
        bar.update(n)
        finished += n
        if callback is not None:
            callback(finished, len(units))

    try:
        if cluster is not None:
            job = cluster.job(
                loaded, model_device, dtype, trust_remote_code, sink, predictor, captures, capture, batches
            )
            cluster.run(job, batches, sink, capture, advance)
        else:
            capture.check = sink.remembered.get("qk_check")  # a resumed job reports the check of its first run
            for batch in batches:
                sink.write_batch(run_batch(loaded, batch, predictor, capture))
                if capture.check is not None and "qk_check" not in sink.remembered:
                    sink.remember("qk_check", capture.check)
                advance(len(batch))
        sink.drain()
    except BaseException as exc:
        sink.abort()
        bar.close()
        if cluster is not None:
            cluster.close()
        if isinstance(exc, OSError) and store is not None:  # e.g. a full disk: the finished documents are kept
            raise ExtractionInterrupted(f"{exc}; {resume_hint(store, len(sink.done))}") from exc
        if isinstance(exc, KeyboardInterrupt) and store is not None:
            raise ExtractionInterrupted(
                f"interrupted after {len(sink.done)} of {len(units)} documents; they are kept in "
                f"{partial_path(store)}; run the same command again to resume"
            ) from exc
        raise
    bar.close()
    if cluster is not None:
        cluster.close()
    attrs["causal"] = int(bool(capture.causal))
    attrs.update(_attention_attrs(capture))
    if progress and capture.fallback:
        print(f"attviz: kept attention matrices: {capture.fallback}", file=sys.stderr)
    if plugins or skipped:
        attrs["captures"] = list(capture.plugins)
        attrs["captures_skipped"] = {**skipped, **capture.skipped}
    corpus = sink.finish(attrs, units, label_names)
    _report_check(corpus.attrs.get("attention_check") or {}, progress)
    return corpus


def _report_check(summary: dict[str, Any], progress: bool) -> None:
    """Warn when the attention just extracted failed its self-check (:mod:`attviz.checks`): NaN/inf (a
    float16 overflow says so) or rows that do not sum to 1; print the notices where progress is shown."""
    from attviz.checks import ERRORS, summary_lines

    lines = summary_lines(summary)
    if any((summary.get(name) or {}).get("documents") for name in ERRORS):
        warnings.warn("attention check: " + "; ".join(line for line in lines if line.startswith("error")), stacklevel=3)
    elif progress and len(lines) > 1:
        print("attviz: attention check: " + "; ".join(lines[1:]), file=sys.stderr)


# -- inputs --------------------------------------------------------------------------------------
def _model_dtype(loaded: LoadedModel) -> str:
    """The float type of a loaded model's weights ("float32", "float16", "bfloat16")."""
    parameter = next(iter(loaded.model.parameters()), None)
    return "float32" if parameter is None else str(parameter.dtype).removeprefix("torch.")


def _loaded(model: Any, tokenizer: Any, device: str, dtype: str | None, trust_remote_code: bool = False) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if model is None or isinstance(model, str | os.PathLike):
        return load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if tokenizer is None:
        raise AttvizError("pass the tokenizer together with a loaded model")
    return prepare_model(model, tokenizer, device=device)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not one string", expected="a sequence of str")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InputError(f"text {i} is {type(text).__name__}", field=f"texts[{i}]", expected="str")
        if not text.strip():
            raise InputError(f"text {i} is empty", field=f"texts[{i}]", expected="non-empty text")
    if not out:
        raise InputError("no texts to extract", expected="at least one text")
    return out


def _check_ids(ids: Sequence[str] | None, n: int) -> list[str]:
    if ids is None:
        return [f"doc-{i:04d}" for i in range(n)]
    out = [str(i) for i in ids]
    if len(out) != n:
        raise InputError(f"{len(out)} ids for {n} texts", field="ids", expected="one id per text")
    seen: set[str] = set()
    for i, value in enumerate(out):
        if value in seen:
            raise InputError(f"id {value!r} repeats", field=f"ids[{i}]", expected="unique ids")
        seen.add(value)
    return out


def _check_parallel(values: Sequence[Any] | None, n: int, what: str) -> list[Any] | None:
    if values is None:
        return None
    out = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]
    if len(out) != n:
        raise InputError(f"{len(out)} {what} for {n} texts", field=what, expected=f"one of {what} per text")
    return out


def _max_length(loaded: LoadedModel, max_length: int | None) -> int:
    limits = [getattr(loaded.tokenizer, "model_max_length", None)]
    limits += [getattr(loaded.config, a, None) for a in ("max_position_embeddings", "n_positions")]
    limit = min((x for x in limits if isinstance(x, int) and 0 < x < 1_000_000), default=512)
    if max_length is None:
        return limit
    if max_length > limit:
        raise AttvizError(f"max_length {max_length} exceeds the model's limit of {limit} tokens")
    return int(max_length)


def _predictor(descriptions: Any, loaded: LoadedModel) -> ZeroShotClassifier | None:
    if descriptions is None or loaded.label_names:
        return None
    if loaded.encoder_decoder:
        raise AttvizError("zero-shot predictions need an encoder-only or decoder-only model")
    if isinstance(descriptions, ZeroShotClassifier):
        return descriptions
    return ZeroShotClassifier(descriptions)


# -- running ---------------------------------------------------------------------------------------
def _padded(sequences: Sequence[Sequence[int]]) -> bool:
    return len({len(s) for s in sequences}) > 1


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A ready ``(batch, 1, 1, keys)`` additive mask (0 or the dtype's minimum) for a 2-D padding mask.

    transformers uses a 4-D mask as given, skipping its mask builder, which on a GPU synchronises with
    the device for every batch. Only for bidirectional attention: it carries no causal part.
    """
    out = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], dtype=dtype, device=mask.device)
    return out.masked_fill_(mask[:, None, None, :] == 0, torch.finfo(dtype).min)


def run_batch(
    loaded: LoadedModel,
    batch: Sequence[Unit],
    predictor: ZeroShotClassifier | None = None,
    capture: Capture | None = None,
    check_batch: Sequence[Unit] | None = None,
):
    """Forward one batch; return ``(unit, {array name: host value}, probabilities or None)`` per unit.

    ``check_batch``: where the once-per-job q/k rebuild check runs (default: this batch; a worker of a
    distributed job passes the job's first batch, so that every worker checks what a single process would).

    The arrays are what ``capture``'s storage policy keeps (default: every float16 matrix, as
    ``"self"`` or ``"encoder"``/``"decoder"``/``"cross"``), possibly still being copied from the
    device: :func:`attviz.capture.materialize` gives numpy. A batch whose documents all have the same
    length needs no attention mask, and gets none (the mask builder is not free, and on a GPU it may
    synchronise).
    """
    capture = capture or Capture()
    kwargs, input_ids, mask = _inputs(loaded, batch, capture)
    sizes = _sizes(batch)
    streams = {"self": "tokens", "encoder": "tokens", "decoder": "target_tokens", "cross": "tokens"}
    arrays: list[dict[str, Any]] = [{} for _ in batch]
    config = loaded.config
    kinds = (
        {k: expected_layers(config, "decoder" if k == "cross" else k) for k in ("encoder", "decoder", "cross")}
        if loaded.encoder_decoder
        else {"self": expected_layers(config, "self")}
    )
    with torch.inference_mode(), capture.plugin_hooks(loaded):
        specials = {
            kind: [np.asarray(getattr(u, streams[kind])["special"], dtype=bool) for u in batch] for kind in kinds
        }
        out = None
        if capture.attention != "matrices" and not capture.fallback:
            from attviz.qk_capture import QKUnavailable

            try:
                out = _forward_qk(loaded, batch, kwargs, kinds, sizes, specials, capture, arrays, check_batch)
            except QKUnavailable as exc:
                if capture.attention == "qk":
                    raise AttvizError(f"cannot keep queries and keys of {loaded.name}: {exc}") from exc
                capture.fallback = str(exc)  # auto: matrices from here on (documents kept as q/k stay so)
                arrays = [{} for _ in batch]
        if out is None:
            with _implementation(loaded, "eager"):
                out = loaded.model(**kwargs, output_attentions=True, return_dict=True)
            if loaded.encoder_decoder:
                stacks = {
                    "encoder": out.encoder_attentions,
                    "decoder": out.decoder_attentions,
                    "cross": out.cross_attentions,
                }
            else:
                stacks = {"self": out.attentions}
            for kind, attentions in stacks.items():
                check_attentions(attentions, kind, loaded.name, kinds[kind])
                n = sizes[kind][0][0]
                if capture.causal is None and kind in ("self", "decoder") and n > 1:  # once per job
                    capture.causal = not bool(torch.triu(attentions[0][0, :, :n, :n].float(), 1).any())
                for b, kept in enumerate(capture.kind(kind, attentions, sizes[kind], specials[kind])):
                    arrays[b].update(kept)
        for b, kept in enumerate(
            capture.plugin_arrays(loaded, out, input_ids, mask, [len(u.input_ids) for u in batch])
        ):
            arrays[b].update(kept)
        probabilities = None
        if predictor is not None:
            probabilities = predictor(out.last_hidden_state, mask).cpu().numpy()
        elif loaded.label_names and getattr(out, "logits", None) is not None:
            probabilities = softmax_probabilities(out.logits).cpu().numpy()
    return [(unit, arrays[b], None if probabilities is None else probabilities[b]) for b, unit in enumerate(batch)]


def _attention_attrs(capture: Capture) -> dict[str, Any]:
    """What the corpus attrs say about how attention was captured and checked."""
    attrs: dict[str, Any] = {"attention_mode": capture.attention}
    if capture.attention != "matrices":
        attrs["attn_implementation"] = "attviz (sdpa + q/k capture)" if not capture.fallback else "eager"
    if capture.fallback:
        attrs["attention_fallback"] = capture.fallback
    if capture.check is not None:
        attrs["qk_check"] = {k: (round(v, 9) if isinstance(v, float) else v) for k, v in capture.check.items()}
    return attrs


def _inputs(loaded: LoadedModel, batch: Sequence[Unit], capture: Capture) -> tuple[dict[str, Any], Any, Any]:
    """The model's keyword arguments for a batch (right-padded), its input ids and its 2-D mask."""
    pad_id = loaded.tokenizer.pad_token_id
    input_ids, mask = pad_batch([u.input_ids for u in batch], pad_id, loaded.device)
    kwargs: dict[str, Any] = {"input_ids": input_ids}
    if _padded([u.input_ids for u in batch]):
        kwargs["attention_mask"] = additive_mask(mask, loaded.model.dtype) if capture.prepared_mask(loaded) else mask
    if loaded.encoder_decoder:
        dec_ids, dec_mask = pad_batch([u.target_ids for u in batch], pad_id, loaded.device)
        kwargs["decoder_input_ids"] = dec_ids
        if _padded([u.target_ids for u in batch]):
            kwargs["decoder_attention_mask"] = dec_mask
    return kwargs, input_ids, mask


def _sizes(batch: Sequence[Unit]) -> dict[str, list[tuple[int, int]]]:
    """Each document's (queries, keys) per kind, without padding."""
    lengths = [(len(u.input_ids), len(u.target_ids or ())) for u in batch]
    return {
        "self": [(n, n) for n, _ in lengths],
        "encoder": [(n, n) for n, _ in lengths],
        "decoder": [(m, m) for _, m in lengths],
        "cross": [(m, n) for n, m in lengths],
    }


#: Tokens of the documents the rebuild check runs on (an eager pass costs T² a head).
CHECK_TOKENS = 128


def _check_batch(batch: Sequence[Unit]) -> list[Unit]:
    """What the rebuild is checked on: the batch's first document cut to :data:`CHECK_TOKENS`, and
    again cut to half that length, so that the check sees padding."""
    import dataclasses

    first = batch[0]
    out = []
    for limit in (CHECK_TOKENS, max(1, min(CHECK_TOKENS, len(first.input_ids)) // 2)):
        targets = first.target_ids[:limit] if first.target_ids is not None else None
        out.append(dataclasses.replace(first, input_ids=first.input_ids[:limit], target_ids=targets))
    return out


def _implementation(loaded: LoadedModel, name: str):
    from attviz.qk_capture import implementation

    return implementation(loaded.model, name)


def _forward_qk(
    loaded, batch, kwargs, kinds, sizes, specials, capture: Capture, arrays: list[dict[str, Any]], check_batch=None
) -> Any:
    """The model's fast forward pass with queries and keys recorded through the attention interface;
    fills ``arrays`` per document; the first batch is checked against eager weights (QKUnavailable)."""
    from attviz.qk_capture import ATTENTION_NAME, QKUnavailable, assign, check_rebuild, recording, uses_interface

    if not uses_interface(loaded.model):
        raise QKUnavailable(f"{type(loaded.model).__name__} never calls transformers' attention interface")
    if capture.check is None:  # once per job, on a short padded batch
        check = _check_batch(check_batch or batch)
        capture.check = check_rebuild(
            loaded,
            _inputs(loaded, check, capture)[0],
            kinds,
            _sizes(check),
            lambda: _implementation(loaded, ATTENTION_NAME),
            lambda: _implementation(loaded, "eager"),
        )
    with _implementation(loaded, ATTENTION_NAME), recording() as calls:
        out = loaded.model(**kwargs, return_dict=True)
    per_kind = assign(calls, kinds)
    for kind, layer_calls in per_kind.items():
        for b, kept in enumerate(capture.kind_qk(kind, layer_calls, sizes[kind], specials[kind])):
            arrays[b].update(kept)
    return out


# -- bookkeeping ---------------------------------------------------------------------------------------
def _corpus_attrs(loaded: LoadedModel, settings: dict[str, Any], predictor: Any) -> dict[str, Any]:
    import transformers

    import attviz

    config = loaded.config
    kinds = ["encoder", "decoder", "cross"] if loaded.encoder_decoder else ["self"]
    return {
        "model": loaded.name,
        **({"model_path": loaded.path} if loaded.path else {}),  # a local directory: load it again from anywhere
        "model_type": str(getattr(config, "model_type", "")),
        "layers": expected_layers(config, "encoder" if loaded.encoder_decoder else "self") or 0,
        "heads": int(getattr(config, "num_attention_heads", 0) or getattr(config, "num_heads", 0) or 0),
        "kinds": kinds,
        "encoder_decoder": int(loaded.encoder_decoder),
        "attn_implementation": "eager",
        "settings": json.dumps(settings, sort_keys=True),
        "attviz_version": attviz.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _fingerprint(loaded: LoadedModel, settings: dict[str, Any], units: Sequence[Unit]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([loaded.name, settings], sort_keys=True).encode())
    for unit in units:
        digest.update(json.dumps([unit.id, unit.text, unit.label, unit.target]).encode())
    return digest.hexdigest()


def _shape(loaded: LoadedModel) -> tuple[int, int]:
    """(layers, heads) of the model's main attention."""
    config = loaded.config
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "num_heads", 0) or 1)
    return expected_layers(config, "encoder" if loaded.encoder_decoder else "self") or 1, heads


def _kept_as(attention: str) -> str:
    return {"qk": "queries and keys", "auto": "q/k or float16 matrices, whichever is smaller"}.get(
        attention, "float16 matrices"
    )


def _qk_shape(config: Any, heads: int) -> tuple[int, int]:
    """(key heads, head dim) of the model's attention, as the config says (for size estimates)."""
    key_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    hidden = next((getattr(config, a) for a in ("hidden_size", "n_embd", "d_model", "dim") if getattr(config, a, 0)), 0)
    dim = int(getattr(config, "head_dim", 0) or getattr(config, "d_kv", 0) or (hidden // max(heads, 1)) or 64)
    return key_heads, dim


def estimate_bytes(
    loaded: LoadedModel, units: Sequence[Unit], policy: StoragePolicy | None = None, attention: str = "matrices"
) -> int:
    """Bytes the units will store as ``policy`` says (float16 matrices before compression, or q/k where
    ``attention`` keeps them: every document under ``qk``, the smaller encoding under ``auto``; float32
    vectors and summaries)."""
    policy = policy or StoragePolicy()
    config = loaded.config
    layers, heads = _shape(loaded)
    key_heads, dim = _qk_shape(config, heads)
    share = policy.matrix_bytes_share(layers, heads)
    per_token = len(policy.vectors) * 4 + (len(STATISTICS) * 4 if policy.summary else 0)

    def kept(n_layers: int, n: int, m: int) -> float:
        matrices = share * matrix_bytes(n_layers, heads, n, m)
        if attention == "matrices":
            return matrices
        qk = share * qk_bytes(n_layers, heads, key_heads, dim, n, m)
        return qk if attention == "qk" else min(qk, matrices)

    total = 0.0
    for unit in units:
        n, m = len(unit.input_ids), len(unit.target_ids or ())
        if loaded.encoder_decoder:
            decoder_layers = expected_layers(config, "decoder") or 1
            total += kept(layers, n, n) + kept(decoder_layers, m, m) + kept(decoder_layers, m, n)
            total += per_token * heads * (layers * n + decoder_layers * m)
        else:
            total += kept(layers, n, n) + per_token * layers * heads * n
    return int(total)


def _check_disk(store: str | os.PathLike, estimate: int, force: bool) -> None:
    parent = Path(store).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if estimate > free and not force:
        raise AttvizError(
            f"the store would need about {_human(estimate)} but {parent} has {_human(free)} free; "
            "keep fewer documents or tokens, or pass force=True (--force) to try anyway"
        )


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


class _CallableModule(type(sys)):
    """``attviz.extract`` is this module and, called, :func:`extract` (``attviz.extract(texts, ...)``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Corpus:
        return extract(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
sys.modules[__name__].__wrapped__ = extract  # inspect.signature(attviz.extract) is extract's
