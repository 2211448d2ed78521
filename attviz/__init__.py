"""attviz: explore the self-attention of transformer language models."""

from attviz.corpus import Corpus, Document, attention_array, token_frame, vector_array
from attviz.errors import AttentionUnavailableError, AttvizError, InputError, StoreError

__version__ = "0.1.0"

__all__ = [
    "AttentionUnavailableError",
    "AttvizError",
    "Corpus",
    "Document",
    "InputError",
    "StoreError",
    "__version__",
    "attention_array",
    "token_frame",
    "vector_array",
]
