"""Live input: run a loaded model on text typed in the app, one shared model per process.

:class:`LiveModel` loads its model on first use and runs it under a lock (one forward pass at a
time), returning an in-memory :class:`~attviz.corpus.Corpus` extracted exactly as ``attviz extract``
would; the served app keeps one per process (:func:`attviz.app.live_model`) for every session.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from attviz.corpus import Corpus

_LOCK = threading.Lock()


class LiveModel:
    """A model for live input: ``LiveModel(None)`` is the bundled MiniLM.

    ``label_descriptions`` make zero-shot predictions (as for the demo corpus); a model with a
    classification head predicts with its head. The model is loaded on first use.

    Live documents also get what every installed capture plugin that supports the model records
    (:attr:`captures`, ``"auto"``; e.g. attviz-valuenorm's value norms for BERT-family models): set it
    to ``None`` for none, or to a list of capture ids.
    """

    #: Capture plugins run on live input (see :func:`attviz.extract`'s ``captures``).
    captures: str | list[str] | None = "auto"

    def __init__(
        self,
        model: Any = None,
        *,
        label_descriptions: Mapping[str, str] | None = None,
        max_length: int | None = None,
        loader: Callable[[], Any] | None = None,
    ):
        self.model = model
        self.label_descriptions = dict(label_descriptions) if label_descriptions else None
        self.max_length = max_length
        self._loader = loader
        self._loaded: Any = None
        self._lock = threading.Lock()

    @classmethod
    def for_corpus(cls, corpus: Corpus, model: Any = None, **kwargs: Any) -> LiveModel:
        """A live model matching how ``corpus`` was extracted (its model, labels, max length)."""
        settings = corpus.attrs.get("settings")
        settings = json.loads(settings) if isinstance(settings, str) else dict(settings or {})
        return cls(
            model if model is not None else corpus.attrs.get("model"),
            label_descriptions=settings.get("label_descriptions") or None,
            max_length=settings.get("max_length") or None,
            **kwargs,
        )

    @property
    def name(self) -> str:
        return str(self.model or "sentence-transformers/all-MiniLM-L6-v2")

    def loaded(self) -> Any:
        """The loaded model (see :func:`attviz.models.load_model`), loaded once."""
        with self._lock:
            if self._loaded is None:
                self._loaded = self._loader() if self._loader is not None else _load(self.model)
            return self._loaded

    def __call__(self, texts: list[str], ids: list[str]) -> Corpus:
        """Extract ``texts`` into an in-memory corpus (one forward pass at a time per process)."""
        from attviz.extract import extract

        loaded = self.loaded()
        with _LOCK:
            return extract(
                texts,
                ids=ids,
                model=loaded,
                label_descriptions=self.label_descriptions,
                max_length=self.max_length,
                progress=False,
                captures=self.captures,
            )


def _load(model: Any) -> Any:
    from attviz.models import load_model

    return load_model(model, device="cpu")
