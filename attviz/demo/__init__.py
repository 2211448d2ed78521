"""The bundled demo corpus: 64 short news texts in 4 classes, written for attviz (CC0).

:func:`demo_corpus` extracts it once with the bundled MiniLM and caches the store.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from attviz.corpus import Corpus
from attviz.qk import QK_ARRAY
from attviz.store import QK_FORMAT_VERSION, is_store

HERE = Path(__file__).parent
TEXTS = HERE / "texts.jsonl"
LABELS = HERE / "labels.json"


def demo_records() -> list[dict[str, Any]]:
    """The demo texts: dicts with ``id``, ``text`` and ``label``."""
    with open(TEXTS, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def label_descriptions() -> dict[str, str]:
    """One description per demo class, for zero-shot predictions."""
    return json.loads(LABELS.read_text(encoding="utf-8"))


def cache_dir() -> Path:
    """Where built demo stores live: ``$ATTVIZ_CACHE``, else ``$XDG_CACHE_HOME/attviz``."""
    if os.environ.get("ATTVIZ_CACHE"):
        return Path(os.environ["ATTVIZ_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attviz"


def demo_store_path() -> Path:
    """The cache path of the demo store; its name changes when the texts, the format or the attention
    mode (``$ATTVIZ_ATTENTION``: auto, qk, matrices) change."""
    mode = os.environ.get("ATTVIZ_ATTENTION") or "auto"
    digest = hashlib.sha256(TEXTS.read_bytes() + LABELS.read_bytes() + f"{QK_FORMAT_VERSION}{QK_ARRAY}{mode}".encode())
    return cache_dir() / f"demo-{digest.hexdigest()[:12]}.zarr"


def demo_corpus(*, rebuild: bool = False, progress: bool = True) -> Corpus:
    """The demo corpus, extracted with the bundled all-MiniLM-L6-v2 on first use and cached (with its
    corpus statistics)."""
    path = demo_store_path()
    if rebuild or not is_store(path):
        from attviz.extract import extract

        records = demo_records()
        extract(
            [r["text"] for r in records],
            ids=[r["id"] for r in records],
            labels=[r["label"] for r in records],
            label_descriptions=label_descriptions(),
            store=path,
            overwrite=rebuild or path.exists(),
            progress=progress,
        )
        from attviz.analysis.engine import corpus_statistics

        corpus_statistics(Corpus.open(path), progress=progress)  # cached in the store: the Corpus tab opens at once
    return Corpus.open(path)
