"""Tiny corpora of every kind a user can open, for the state-space and browser tests.

Each is extracted by a tiny random model (tests/conftest.py) or read from a real file, so its
arrays, coords and attrs are exactly what attviz writes: an encoder (BERT, with labels and
zero-shot-free class probabilities from a classification head), a decoder (byte-level GPT-2), an
encoder-decoder (T5: encoder, decoder and cross attention), the original AttViz JSON (legacy
vectors), a store that keeps token vectors and head statistics only, and one kept as queries and keys.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from attviz.corpus import Corpus

HERE = Path(__file__).parent
LEGACY_JSON = HERE.parent.parent / "shared" / "reference" / "original-examples" / "public-example1.json"
TEXTS = ["The cat sat on the mat.", "Markets rally as rates fall.", "Hello, unbelievable world!"]


def encoder_corpus(model, tokenizer) -> Corpus:
    from attviz.extract import extract

    return extract(TEXTS, model=model, tokenizer=tokenizer, labels=["pos", "neg", "pos"], progress=False)


def decoder_corpus(model, tokenizer) -> Corpus:
    from attviz.extract import extract

    return extract(TEXTS, model=model, tokenizer=tokenizer, progress=False)


def encoder_decoder_corpus(model, tokenizer) -> Corpus:
    from attviz.extract import extract

    targets = ["Le chat.", "Les marchés montent.", "Bonjour le monde."]
    return extract(TEXTS, model=model, tokenizer=tokenizer, targets=targets, progress=False)


def qk_corpus(model, tokenizer) -> Corpus:
    """Every document kept as queries and keys (the same GPT-2 texts as :func:`decoder_corpus`, plus a
    longer one: with ``Explorer(layer_memory=LONG)`` it is explored a head and a tile at a time)."""
    from attviz.extract import extract

    return extract([*TEXTS, " ".join(TEXTS * 3)], model=model, tokenizer=tokenizer, attention="qk", progress=False)


#: ``Explorer(layer_memory=...)`` under which the longest :func:`qk_corpus` document counts as long.
LONG = 1 << 14


def vectors_only_corpus(model, tokenizer) -> Corpus:
    from attviz.extract import extract
    from attviz.policy import StoragePolicy

    policy = StoragePolicy(matrices=False, vectors=("attention_received", "entropy"), summary=True)
    return extract(TEXTS[:2], model=model, tokenizer=tokenizer, policy=policy, progress=False)


def legacy_corpus() -> Corpus:
    from attviz.readers import read

    return read(LEGACY_JSON)


def legacy_bytes() -> bytes:
    """The real file in the original AttViz format, as a user uploads it."""
    return LEGACY_JSON.read_bytes()


def zipped_store(corpus: Corpus, folder: Path, name: str = "store.zarr") -> bytes:
    """``corpus`` saved as a zarr store and zipped, as a user uploads a store."""
    corpus.save(folder / name)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted((folder / name).rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder))
    return buffer.getvalue()
