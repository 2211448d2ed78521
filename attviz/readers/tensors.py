"""Raw attention tensors, as BertViz takes them: ``model(..., output_attentions=True).attentions``.

:func:`from_tensors` turns a tuple of per-layer tensors (torch or numpy, ``(1, H, T, T)`` or
``(H, T, T)``) plus the token strings into a one-document :class:`~attviz.Corpus` with a ``"self"``
array. :class:`TensorsReader` reads the same from a ``(attentions, tokens)`` pair, a dict, an
``.npz`` file (arrays ``attention`` ``(L, H, T, T)`` and ``tokens``) or a ``.safetensors`` file
(tensor ``attention``, tokens as a JSON list in the metadata key ``tokens``).
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from attviz.corpus import Corpus, Document, attention_array, token_frame
from attviz.errors import InputError
from attviz.readers.base import Reader
from attviz.readers.legacy import align_tokens, is_special_token, wordpiece_words

# Word-start markers of byte-level BPE (GPT-2, RoBERTa) and SentencePiece (T5, XLM-R, Llama 2).
WORD_MARKERS = ("Ġ", "▁")
_LAYOUT = "a sequence of L arrays of shape (1, H, T, T) or (H, T, T), or one (L, H, T, T) array"


def _numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device or dtype) or array-like as a numpy array."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if not value.is_floating_point() or value.dtype.itemsize < 4:  # bfloat16 has no numpy dtype
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _stack(attentions: Any, n_tokens: int, file: str | None) -> np.ndarray:
    """Validate per-layer attentions and stack them as one float32 ``(L, H, T, T)`` array."""
    if hasattr(attentions, "shape") and len(attentions.shape) in (4, 5):
        attentions = list(attentions)  # one stacked (L, H, T, T) or (L, 1, H, T, T) array
    if not isinstance(attentions, Sequence) or isinstance(attentions, str) or not attentions:
        got = "an empty sequence" if isinstance(attentions, Sequence) else type(attentions).__name__
        raise InputError(f"attentions is {got}", file=file, field="attentions", expected=_LAYOUT)
    layers = []
    for i, layer in enumerate(attentions):
        where = f"attentions[{i}]"
        values = _numpy(layer)
        if values.ndim == 4:
            if values.shape[0] != 1:
                raise InputError(
                    f"batch size is {values.shape[0]}",
                    file=file,
                    field=where,
                    expected="batch size 1: pass one sequence at a time",
                )
            values = values[0]
        if values.ndim != 3 or values.shape[1] != values.shape[2]:
            raise InputError(
                f"has shape {values.shape}",
                file=file,
                field=where,
                expected="(1, H, T, T) or (H, T, T)",
            )
        if values.dtype.kind not in "fiu":
            raise InputError(f"has dtype {values.dtype}", file=file, field=where, expected="numbers")
        if layers and values.shape != layers[0].shape:
            raise InputError(
                f"has (heads, tokens, tokens) = {values.shape} but layer 0 has {layers[0].shape}",
                file=file,
                field=where,
                expected="the same number of heads and tokens in every layer",
            )
        if not np.isfinite(values).all():
            bad = tuple(int(k) for k in np.argwhere(~np.isfinite(values))[0])
            raise InputError(
                f"value at (head, query, key) = {bad} is {values[bad]}",
                file=file,
                field=where,
                expected="finite attention weights",
            )
        layers.append(values.astype(np.float32, copy=False))
    if layers[0].shape[1] != n_tokens:
        raise InputError(
            f"attention covers {layers[0].shape[1]} tokens but {n_tokens} tokens were given",
            file=file,
            field="tokens",
            expected=f"{layers[0].shape[1]} tokens, one per attention row",
        )
    return np.stack(layers)


def join_tokens(tokens: Sequence[str], special: Sequence[bool]) -> tuple[str, list[int], list[int]]:
    """Text shown for tokens (``##`` merged, ``Ġ``/``▁`` as spaces) and each token's offsets.

    Special tokens are left out of the text (their offsets are empty, at the current position).
    """
    marked = any(t.startswith(WORD_MARKERS) for t in tokens)
    text = ""
    starts: list[int] = []
    ends: list[int] = []
    for token, is_special in zip(tokens, special, strict=True):
        piece = token
        if not is_special:
            if piece.startswith("##") and len(piece) > 2:
                piece = piece[2:]
            elif piece.startswith(WORD_MARKERS):
                piece = piece[1:]
                text += " " if text else ""
            elif text and not marked:
                text += " "
        start = len(text)
        if not is_special:
            text += piece
        starts.append(start)
        ends.append(len(text))
    return text, starts, ends


def word_indices(tokens: Sequence[str], special: Sequence[bool]) -> list[int]:
    """Word index per token: WordPiece ``##`` continues a word; with ``Ġ``/``▁`` markers a
    token without a marker continues one. Special tokens get -1."""
    if not any(t.startswith(WORD_MARKERS) for t in tokens):
        return wordpiece_words(tokens, special)
    words: list[int] = []
    current, previous_special = -1, True
    for token, is_special in zip(tokens, special, strict=True):
        if is_special:
            words.append(-1)
        else:
            if token.startswith(WORD_MARKERS) or previous_special:
                current += 1
            words.append(current)
        previous_special = is_special
    return words


def from_tensors(
    attentions: Any,
    tokens: Sequence[str],
    *,
    text: str | None = None,
    id: str = "doc-0",
    offsets: Sequence[tuple[int, int]] | None = None,
    special: Sequence[bool] | None = None,
    file: str | None = None,
) -> Corpus:
    """A one-document corpus from ``model(..., output_attentions=True).attentions`` and its tokens.

    ``text`` defaults to the tokens joined as BertViz shows them (see :func:`join_tokens`);
    ``offsets`` (``(start, end)`` per token) default to aligning the tokens to ``text``;
    ``special`` defaults to recognising ``[CLS]``, ``</s>``, ``<|endoftext|>``, ...; ``file`` is
    only named in error messages.
    """
    tokens = tokens.tolist() if isinstance(tokens, np.ndarray) else list(tokens)
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise InputError(
                f"token is {type(token).__name__}",
                file=file,
                field=f"tokens[{i}]",
                expected="a string",
            )
    values = _stack(attentions, len(tokens), file)
    if special is None:
        special = [is_special_token(t) for t in tokens]
    elif len(special) != len(tokens):
        raise InputError(f"has {len(special)} entries for {len(tokens)} tokens", file=file, field="special")
    special = [bool(s) for s in special]
    if text is None:
        text, starts, ends = join_tokens(tokens, special)
    else:
        starts, ends = align_tokens(tokens, text, markers=("##", *WORD_MARKERS), ignore_case=True)
    if offsets is not None:
        starts, ends = _check_offsets(offsets, len(tokens), len(text), file)
    frame = token_frame(tokens, word_indices(tokens, special), starts, ends, special)
    doc = Document(id=str(id), text=text, arrays={"self": attention_array(values, frame)})
    attrs = {"source_format": "tensors"}
    if file:
        attrs["source_file"] = os.path.basename(file)
    return Corpus([doc], attrs=attrs)


def _check_offsets(offsets: Any, n_tokens: int, n_chars: int, file: str | None):
    pairs = np.asarray(offsets)
    if pairs.shape != (n_tokens, 2) or pairs.dtype.kind not in "iu":
        raise InputError(
            f"has shape {pairs.shape} and dtype {pairs.dtype}",
            file=file,
            field="offsets",
            expected=f"{n_tokens} (start, end) integer pairs, one per token",
        )
    for i, (start, end) in enumerate(pairs.tolist()):
        if not 0 <= start <= end <= n_chars:
            raise InputError(
                f"({start}, {end}) is not a span of the text",
                file=file,
                field=f"offsets[{i}]",
                expected=f"0 <= start <= end <= {n_chars}",
            )
    return pairs[:, 0].tolist(), pairs[:, 1].tolist()


def _load_npz(path: str, limits: Any = None) -> dict[str, Any]:
    from attviz.limits import default_limits
    from attviz.uploads import check_zip_directory

    if not zipfile.is_zipfile(path):
        raise InputError("not an .npz file (not a zip archive)", file=path, expected="a file written by np.savez")
    data: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(path) as zf:  # refuse a zip bomb from its central directory, before loading
            check_zip_directory(zf, limits or default_limits(), path)
        with np.load(path, allow_pickle=False) as npz:
            for name in npz.files:
                try:
                    data[name] = npz[name]
                except ValueError as exc:  # object arrays need pickle, which we refuse
                    raise InputError(
                        "array holds Python objects, which cannot be loaded without pickle",
                        file=path,
                        field=name,
                        expected="numeric or unicode (np.str_) arrays",
                    ) from exc
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
        if isinstance(exc, InputError):
            raise
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise InputError(f"not a readable .npz file ({reason})", file=path) from exc
    if "attention" not in data and "attentions" in data:
        data["attention"] = data.pop("attentions")
    for name in ("text", "id"):
        if name in data:
            if data[name].size != 1:
                raise InputError(f"has shape {data[name].shape}", file=path, field=name, expected="one string")
            data[name] = str(data[name].ravel()[0])
    return data


def _load_safetensors(path: str) -> dict[str, Any]:
    try:
        from safetensors import safe_open
    except ImportError as exc:  # pragma: no cover - safetensors comes with transformers
        raise InputError("reading .safetensors needs the safetensors package", file=path) from exc
    try:
        with safe_open(path, framework="np") as handle:
            data: dict[str, Any] = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            meta = dict(handle.metadata() or {})
    except Exception as exc:
        raise InputError(f"not a readable .safetensors file ({exc})", file=path) from exc
    try:
        data["tokens"] = json.loads(meta["tokens"])
    except (KeyError, ValueError) as exc:
        raise InputError(
            "metadata has no JSON list 'tokens'",
            file=path,
            field="tokens",
            expected="a JSON list of strings",
        ) from exc
    for name in ("text", "id"):
        if name in meta:
            data[name] = meta[name]
    return data


class TensorsReader(Reader):
    """Attention tensors + tokens (BertViz's input), in memory or in an .npz/.safetensors file."""

    description: ClassVar[str] = "attention tensors and tokens: (attentions, tokens), .npz, .safetensors"
    extensions: ClassVar[tuple[str, ...]] = (".npz", ".safetensors")
    accepts_limits: ClassVar[bool] = True

    def guess_can_open(self, source: Any) -> bool:
        if isinstance(source, str | os.PathLike):
            return super().guess_can_open(source)
        if isinstance(source, Mapping):
            return "attentions" in source and "tokens" in source
        if isinstance(source, tuple | list) and len(source) == 2:
            attentions, tokens = source
            layers = attentions if isinstance(attentions, tuple | list) else [attentions]
            return (
                bool(layers)
                and all(hasattr(layer, "shape") for layer in layers)
                and isinstance(tokens, Sequence | np.ndarray)
                and not isinstance(tokens, str)
                and all(isinstance(t, str) for t in list(tokens))
            )
        return False

    def read(self, source: Any, **kwargs: Any) -> Corpus:
        """Read ``(attentions, tokens)``, a dict or a file; kwargs go to :func:`from_tensors`."""
        file = None
        limits = kwargs.pop("limits", None)
        if isinstance(source, str | os.PathLike):
            file = os.fspath(source)
            if not os.path.isfile(file):
                raise InputError("no such file", file=file)
            load = _load_safetensors if file.lower().endswith(".safetensors") else _load_npz
            data = load(file, limits) if load is _load_npz else load(file)
            data.setdefault("id", Path(file).stem)
            for name in ("attention", "tokens"):
                if name not in data:
                    raise InputError(f"array {name!r} is missing", file=file, field=name)
            if limits is not None and np.size(data["tokens"]) > limits.max_tokens:
                raise InputError(
                    f"has {np.size(data['tokens']):,} tokens, over the limit of {limits.max_tokens:,}",
                    file=file,
                    field="tokens",
                )
            source = {**data, "attentions": data.pop("attention")}
        if isinstance(source, Mapping):
            options = {k: source[k] for k in ("text", "id", "offsets", "special") if k in source}
            options.update(kwargs)
            return from_tensors(source["attentions"], source["tokens"], file=file, **options)
        if isinstance(source, tuple | list) and len(source) == 2:
            return from_tensors(source[0], source[1], **kwargs)
        raise InputError(
            f"cannot read a {type(source).__name__}",
            expected="(attentions, tokens), a dict with 'attentions' and 'tokens', or an .npz file",
        )
