"""Reader for attviz's own zarr stores."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from attviz.corpus import Corpus
from attviz.readers.base import Reader
from attviz.store import is_store, open_store


class ZarrStoreReader(Reader):
    """An attviz store (a zarr directory written by ``attviz extract`` or ``Corpus.save``)."""

    description: ClassVar[str] = "attviz zarr store (directory written by `attviz extract`)"
    extensions: ClassVar[tuple[str, ...]] = (".zarr",)

    def guess_can_open(self, source: Any) -> bool:
        return isinstance(source, str | os.PathLike) and (is_store(source) or super().guess_can_open(source))

    def read(self, source: Any, **kwargs: Any) -> Corpus:
        return open_store(source)
