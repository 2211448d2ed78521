"""Tokenising texts into units (a document, or one window of a long text) and batching them; readable token labels."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from attviz.corpus import token_frame
from attviz.errors import AttvizError, InputError
from attviz.models import LoadedModel


@dataclass
class Unit:
    """One document to run: a text, or one window of a long text."""

    index: int
    id: str
    text: str
    source_id: str
    source_start: int
    label: str | None
    input_ids: list[int]
    tokens: pd.DataFrame
    truncated: bool = False
    target: str | None = None
    target_ids: list[int] | None = None
    target_tokens: pd.DataFrame | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def tokenize(
    loaded: LoadedModel,
    texts: Sequence[str],
    ids: Sequence[str],
    labels: Sequence[str | None] | None,
    *,
    max_length: int,
    long_texts: str = "truncate",
    stride: int = 64,
) -> list[Unit]:
    """Tokenise texts into units (one per text, or one per window), with offsets and word ids."""
    window = long_texts == "window"
    if window and stride >= max_length - 4:
        raise AttvizError(f"stride {stride} must be well below max_length {max_length}")
    enc = loaded.tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        stride=stride if window else 0,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    rows_of: dict[int, list[int]] = {}
    for row, sample in enumerate(enc["overflow_to_sample_mapping"]):
        rows_of.setdefault(int(sample), []).append(row)
    units: list[Unit] = []
    for i, text in enumerate(texts):
        rows = rows_of.get(i, [])
        if not rows or not enc["input_ids"][rows[0]]:
            raise InputError(f"text {i} produced no tokens", field=f"texts[{i}]", expected="tokenisable text")
        use = rows if window else rows[:1]
        for k, row in enumerate(use):
            tokens = _token_table(loaded, enc, row)
            start = 0
            if window and len(rows) > 1:
                real = tokens[~tokens["special"]]
                start = int(real["start"].min()) if len(real) else 0
                end = int(real["end"].max()) if len(real) else 0
                tokens.loc[~tokens["special"], ["start", "end"]] -= start
                words = tokens.loc[~tokens["special"], "word"]
                tokens.loc[~tokens["special"], "word"] = words - (words.min() if len(words) else 0)
            multi = window and len(rows) > 1
            units.append(
                Unit(
                    index=len(units),
                    id=f"{ids[i]}#w{k}" if multi else ids[i],
                    text=text[start:end] if multi else text,
                    source_id=ids[i],
                    source_start=start,
                    label=labels[i] if labels else None,
                    input_ids=list(enc["input_ids"][row]),
                    tokens=tokens,
                    truncated=not window and len(rows) > 1,
                )
            )
    return units


def _token_table(loaded: LoadedModel, enc: Any, row: int) -> pd.DataFrame:
    ids = enc["input_ids"][row]
    special = np.asarray(enc["special_tokens_mask"][row], dtype=bool)
    offsets = np.asarray(enc["offset_mapping"][row], dtype=np.int64).reshape(-1, 2)
    words = np.array([-1 if w is None else w for w in enc.word_ids(row)], dtype=np.int64)
    words[special] = -1
    offsets[special] = 0
    return token_frame(loaded.tokenizer.convert_ids_to_tokens(ids), words, offsets[:, 0], offsets[:, 1], special)


def add_targets(
    loaded: LoadedModel,
    units: list[Unit],
    targets: Sequence[str | None] | None,
    max_length: int,
    batch_size: int,
    max_new_tokens: int,
) -> None:
    """Decoder inputs: given targets, or the model's own greedy generation, teacher-forced."""
    texts: list[str | None] = [targets[u.index] if targets else None for u in units]
    missing = [u for u, t in zip(units, texts, strict=True) if t is None]
    for batch in make_batches(missing, batch_size):
        input_ids, mask = pad_batch([u.input_ids for u in batch], loaded.tokenizer.pad_token_id, loaded.device)
        with torch.inference_mode():
            generated = loaded.model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False
            )
        for unit, sequence in zip(batch, generated, strict=True):
            texts[unit.index] = loaded.tokenizer.decode(sequence, skip_special_tokens=True).strip() or "."
    start_id = loaded.config.decoder_start_token_id
    if start_id is None:
        start_id = (
            loaded.config.bos_token_id if loaded.config.bos_token_id is not None else loaded.tokenizer.pad_token_id
        )
    enc = loaded.tokenizer(
        text_target=[t or "." for t in texts],
        truncation=True,
        max_length=max_length - 1,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    start_token = loaded.tokenizer.convert_ids_to_tokens([start_id])[0]
    for row, unit in enumerate(units):
        table = _token_table(loaded, enc, row)
        first = token_frame([start_token], [-1], [0], [0], [True])
        unit.target = texts[row]
        unit.target_ids = [start_id, *enc["input_ids"][row]]
        unit.target_tokens = pd.concat([first, table], ignore_index=True).rename_axis("position")


def make_batches(units: Sequence[Unit], batch_size: int) -> list[list[Unit]]:
    """Group units of similar length (longest first) so batches carry little padding."""
    if batch_size < 1:
        raise AttvizError("batch_size must be at least 1")
    ordered = sorted(units, key=lambda u: (-len(u.input_ids), u.index))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device):
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids.to(device), mask.to(device)


# -- readable token labels ---------------------------------------------------------------------------
#: Visible stand-ins for white space and line breaks in token labels.
SPACE_MARK, NEWLINE_MARK, TAB_MARK = "·", "↵", "⇥"
_SENTENCEPIECE_SPACE = "▁"
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte-fallback pieces (Llama: <0x0A>)


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the character that stands for each byte → the byte.

    Printable Latin-1 bytes stand for themselves; the 68 others (controls, space, NBSP, soft hyphen)
    are shifted to U+0100..U+0143 (space → ``Ġ``, newline → ``Ċ``, tab → ``ĉ``).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(shifted)}


_BYTE_OF = _byte_alphabet()


def is_byte_level(texts: Sequence[str]) -> bool:
    """Whether token strings come from a byte-level BPE tokenizer (GPT-2, RoBERTa, Llama 3, ...).

    True when some token holds the space or newline marker (``Ġ``, ``Ċ``) and every character of
    every token is in the byte-level alphabet (so a Polish or Maltese WordPiece vocabulary, whose
    tokens hold other letters, is not decoded by mistake).
    """
    texts = [str(t) for t in texts]
    return any("Ġ" in t or "Ċ" in t for t in texts) and all(c in _BYTE_OF for t in texts for c in t)


def token_string(text: str, byte_level: bool | None = None) -> str:
    """The characters a token stands for: byte-level tokens decoded (``Ġthe`` → ``" the"``, ``Ċ`` →
    ``"\\n"``, ``Ã©`` → ``é``), SentencePiece's ``▁`` as a space and its ``<0x0A>`` byte pieces as
    the character. WordPiece ``##`` prefixes and special tokens stay as they are.

    ``byte_level``: whether the tokenizer is byte-level (None: guessed from this token alone; pass
    :func:`is_byte_level` of the whole token list when you have it). A piece holding part of a
    multi-byte character keeps its bytes as ``\\xNN``.
    """
    text = str(text)
    if byte_level is None:
        byte_level = is_byte_level([text])
    if byte_level and all(c in _BYTE_OF for c in text):
        return bytes(_BYTE_OF[c] for c in text).decode("utf-8", errors="backslashreplace")
    match = _BYTE_FALLBACK.fullmatch(text)
    if match and int(match[1], 16) < 0x80:
        return chr(int(match[1], 16))
    return text.replace(_SENTENCEPIECE_SPACE, " ")


def _visible(char: str, edge: bool = True) -> str:
    if char == "\n":
        return NEWLINE_MARK
    if char == "\t":
        return TAB_MARK
    if char.isspace():
        return SPACE_MARK if edge or char != " " else char
    if unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs"):  # controls, bidi overrides, zero widths
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    return char


def display_token(text: str, byte_level: bool | None = None) -> str:
    """A readable one-line label of a token: :func:`token_string` with white space made visible.

    ``Ġthe`` and ``▁the`` → ``·the`` (a space before the word: leading and trailing spaces are
    marked, a space inside a token stays one), ``Ċ`` → ``↵``, a tab → ``⇥``; control and invisible
    format characters (e.g. a right-to-left override) → ``\\xNN`` / ``\\uNNNN``. WordPiece tokens
    (``##ing``) and special tokens (``[CLS]``, ``<s>``) are unchanged. The result is plain text:
    escape it before putting it into HTML.
    """
    string = token_string(text, byte_level)
    core = string.strip()
    if not core:
        return "".join(map(_visible, string))
    head, tail = string.index(core[0]), len(string.rstrip())
    return "".join(
        [*map(_visible, string[:head]), *(_visible(c, edge=False) for c in core), *map(_visible, string[tail:])]
    )


def display_tokens(texts: Sequence[str]) -> list[str]:
    """:func:`display_token` of every token of one document (byte-level guessed once, for the whole list)."""
    texts = [str(t) for t in texts]
    byte_level = is_byte_level(texts)
    return [display_token(t, byte_level) for t in texts]
