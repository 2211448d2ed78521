"""attviz: explore the self-attention of transformer language models."""

from attviz.corpus import Corpus, Document, attention_array, token_frame, vector_array
from attviz.errors import AttentionUnavailableError, AttvizError, InputError, StoreError
from attviz.notebook import extension
from attviz.policy import StoragePolicy
from attviz.qk import QKAttention
from attviz.readers import read
from attviz.readers.tensors import from_tensors

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``attviz.extract`` loads torch and transformers (~1.5 s), so it is imported on first use: commands
    # that never extract (``attviz stats``, ``info``, ``serve``) start without them. The submodule is
    # callable (it calls :func:`attviz.extract.extract`), so ``attviz.extract(...)`` works whichever way
    # the submodule was imported first.
    if name == "extract":
        import importlib

        return importlib.import_module("attviz.extract")
    raise AttributeError(f"module 'attviz' has no attribute {name!r}")


def open_corpus(path: str) -> Corpus:
    """Open any readable input (store, netCDF, legacy AttViz JSON, .npz) as a Corpus."""
    return read(path)


def explore(corpus=None, **params):
    """An explorer on a Corpus, a path, several of them, or (None) the demo corpus; see
    :func:`attviz.explorer.explore`. In Jupyter, run :func:`attviz.extension` first (works offline)."""
    from attviz.explorer import explore as _explore

    return _explore(corpus, **params)


def corpus_statistics(corpus, **kwargs):
    """The corpus's head atlas, token values and head similarity, computed with dask and cached in the
    store; see :func:`attviz.analysis.engine.corpus_statistics`."""
    from attviz.analysis.engine import corpus_statistics as _statistics

    return _statistics(corpus, **kwargs)


def load_model(*args, **kwargs):
    """Load a model with eager attention; see :func:`attviz.models.load_model`."""
    from attviz.models import load_model as _load_model

    return _load_model(*args, **kwargs)


__all__ = [
    "AttentionUnavailableError",
    "AttvizError",
    "Corpus",
    "Document",
    "InputError",
    "QKAttention",
    "StoragePolicy",
    "StoreError",
    "__version__",
    "attention_array",
    "corpus_statistics",
    "explore",
    "extension",
    "extract",
    "from_tensors",
    "load_model",
    "open_corpus",
    "read",
    "token_frame",
    "vector_array",
]
