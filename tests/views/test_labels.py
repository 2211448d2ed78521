"""Shared labels of the views: readable tokens, stable class colours, plain-text titles."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from attviz.corpus import attention_array, token_frame
from attviz.tokenization import display_token, display_tokens, is_byte_level, token_string
from attviz.views.common import CLASS_PALETTE, class_colour, describe, hover_labels, plain_text, token_labels


def gpt2_bytes(text: str) -> str:
    """``text`` as GPT-2's byte-level alphabet writes it (the tokenizer's ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = {b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in printable)}
    return "".join(chr(b) if b in printable else shifted[b] for b in text.encode("utf-8"))


@pytest.mark.parametrize(
    ("token", "readable"),
    [
        ("Ġthe", "·the"),  # GPT-2/RoBERTa: a space before the word
        ("Ċ", "↵"),  # newline
        ("ĊĊ", "↵↵"),
        ("ĠĠ", "··"),
        ("▁the", "·the"),  # SentencePiece (T5, Llama)
        ("▁", "·"),
        ("<0x0A>", "↵"),  # SentencePiece byte fallback (Llama)
        ("##ing", "##ing"),  # WordPiece as before
        ("[CLS]", "[CLS]"),
        ("<s>", "<s>"),
        ("a\u202eb", "a\\u202eb"),  # a right-to-left override is shown, not obeyed
        ("<img src=x>", "<img src=x>"),  # plain text, a space inside a token stays a space
    ],
)
def test_display_token(token, readable):
    assert display_token(token) == readable


def test_byte_level_decoding_by_hand():
    assert gpt2_bytes(" café\n") == "ĠcafÃ©Ċ"
    assert token_string("ĠcafÃ©Ċ") == " café\n"
    tokens = ["<|endoftext|>", gpt2_bytes(" café"), gpt2_bytes("é")]
    assert is_byte_level(tokens) and display_tokens(tokens) == ["<|endoftext|>", "·café", "é"]
    assert display_tokens(["ĉ", "Ġa"]) == ["⇥", "·a"] and display_token("ĉ", byte_level=True) == "⇥"  # tab
    assert display_tokens(["ðŁ", "ĺ", "Ġa"]) == ["\\xf0\\x9f", "\\x98", "·a"]  # half a character: its bytes
    # A WordPiece vocabulary with letters outside the byte alphabet is never byte-decoded.
    assert not is_byte_level(["Ġużeppi", "łódź"]) and display_tokens(["łódź"]) == ["łódź"]
    assert display_tokens(["Ã©"]) == ["Ã©"]  # alone, without a space marker: not guessed byte-level


def test_token_and_hover_labels_of_an_array():
    array = attention_array(np.zeros((1, 1, 3, 3), np.float32), token_frame(["<s>", "ĠHi", "Ċ"]))
    assert token_labels(array, "query") == ["<s>", "·Hi", "↵"]
    assert hover_labels(array, "key") == ["<s>", "·Hi (raw: ĠHi)", "↵ (raw: Ċ)"]
    dropped = array.isel(query=[1, 2])
    assert token_labels(dropped, "query") == ["·Hi (1)", "↵ (2)"]


def test_class_colour_is_a_function_of_the_label():
    # CRC-32 of the UTF-8 label modulo the 249 colours, worked out once: the same in every process and
    # corpus (Python's own hash of a str is salted per process).
    assert zlib.crc32(b"positive") % 249 == 121 and class_colour("positive") == CLASS_PALETTE[121] == "#5b7466"
    assert zlib.crc32(b"negative") % 249 == 98 and class_colour("negative") == CLASS_PALETTE[98] == "#d1499e"
    for label in ("sport", "Ελλάδα", ""):
        assert class_colour(label) == CLASS_PALETTE[zlib.crc32(label.encode("utf-8")) % len(CLASS_PALETTE)]
    assert len(set(CLASS_PALETTE)) == len(CLASS_PALETTE) == 249
    assert all(min(int(c[i : i + 2], 16) for i in (1, 3, 5)) <= 200 for c in CLASS_PALETTE)  # none near white


def test_titles_are_plain_text():
    assert plain_text("a $$x$$ \\[y\\] \\(z\\)") == "a $\u200b$x$\u200b$ \\\u200b[y\\] \\\u200b(z\\)"
    array = attention_array(np.zeros((2, 3, 1, 1), np.float32), token_frame(["a"]))
    assert describe(array.isel(layer=1, head=2)) == "attention weight · layer 1 · head 2"
    assert describe(array.isel(layer=1).mean("head", keep_attrs=True)) == "attention weight · layer 1"
    assert describe(None, "nothing") == "nothing"
