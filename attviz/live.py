"""Live input: run a loaded model on text typed in the app, one shared model per process.

:class:`LiveModel` loads its model on first use and runs it under a lock (one forward pass at a
time), returning an in-memory :class:`~attviz.corpus.Corpus` extracted exactly as ``attviz extract``
would; the served app keeps one per process (:func:`attviz.app.live_model`) for every session.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from attviz.corpus import Corpus
from attviz.errors import AttvizError

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
        name: str | None = None,
        label_descriptions: Mapping[str, str] | None = None,
        max_length: int | None = None,
        loader: Callable[[], Any] | None = None,
    ):
        self.model = model
        self._name = name
        self.label_descriptions = dict(label_descriptions) if label_descriptions else None
        self.max_length = max_length
        self._loader = loader
        self._loaded: Any = None
        self._lock = threading.Lock()

    @classmethod
    def for_corpus(cls, corpus: Corpus, model: Any = None, **kwargs: Any) -> LiveModel:
        """A live model matching how ``corpus`` was extracted (its model, labels, max length).

        ``model`` (``--model``) wins; else a local model directory the corpus recorded
        (``attrs["model_path"]``) when it still exists, else the model name it recorded. A recorded
        directory that is gone is not replaced by a guess: loading then fails with a message naming it
        and saying how to pass ``--model``.
        """
        attrs = corpus.attrs
        settings = attrs.get("settings")
        settings = json.loads(settings) if isinstance(settings, str) else dict(settings or {})
        recorded, path = attrs.get("model") or None, attrs.get("model_path") or None
        name = None
        if model is None and path:
            model, name = path, str(recorded or "") or None  # the name the corpus (and the explorer) use
            if not os.path.isdir(path):
                kwargs.setdefault("loader", _missing(path, recorded))
        elif model is None:
            model = recorded
        return cls(
            model,
            name=name,
            label_descriptions=settings.get("label_descriptions") or None,
            max_length=settings.get("max_length") or None,
            **kwargs,
        )

    @property
    def name(self) -> str:
        """The model's name as a corpus records it (``attrs["model"]``): equal names, same model."""
        if self._name:
            return self._name
        if self.model is None or isinstance(self.model, str | os.PathLike):
            from attviz.models import model_display_name

            return model_display_name(self.model)
        return str(self.model)

    def loaded(self) -> Any:
        """The loaded model (see :func:`attviz.models.load_model`), loaded once.

        Raises :class:`~attviz.errors.AttvizError` naming the model and how to pass another when it
        cannot be loaded.
        """
        with self._lock:
            if self._loaded is None:
                self._loaded = self._loader() if self._loader is not None else self._load()
            return self._loaded

    def _load(self) -> Any:
        try:
            return _load(self.model)
        except AttvizError:
            raise
        except Exception as exc:
            shown = self.model is not None and str(self.model) != self.name
            where = f"{self.name!r}" + (f" ({self.model})" if shown else "")
            reason = str(exc).rstrip(". ")
            raise AttvizError(
                f"could not load the model {where} for live input: {reason}. Start attviz serve with "
                "--model NAME_OR_PATH (a hub name or a local model directory) to use another"
            ) from exc

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


def _missing(path: str, name: Any) -> Callable[[], Any]:
    """A loader that says a corpus's local model directory is gone, and what to do."""

    def load() -> Any:
        raise AttvizError(
            f"the corpus was extracted with the local model {str(name or path)!r} from {path}, which does "
            "not exist any more; start attviz serve with --model PATH (where that model directory is now) "
            "to use it for live input"
        )

    return load


def _load(model: Any) -> Any:
    from attviz.models import load_model

    return load_model(model, device="cpu")
