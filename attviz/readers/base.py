"""The Reader plugin kind: turn a path (or an in-memory object) into a :class:`~attviz.Corpus`."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from attviz.corpus import Corpus
from attviz.registry import check_plugin_class, register_validator


class Reader:
    """Base class of readers (entry-point group ``attviz.readers``).

    A reader is one small class: a ``description``, the file ``extensions`` it handles,
    :meth:`guess_can_open` and :meth:`read`. Readers validate their input and raise
    :class:`attviz.InputError` naming the file, the field and what was expected.
    """

    description: ClassVar[str] = ""
    extensions: ClassVar[tuple[str, ...]] = ()

    def guess_can_open(self, source: Any) -> bool:
        """Whether this reader can probably read ``source`` (cheap: extension or a peek)."""
        if isinstance(source, str | os.PathLike):
            return str(source).lower().rstrip("/").endswith(self.extensions)
        return False

    def read(self, source: Any, **kwargs: Any) -> Corpus:
        raise NotImplementedError


def _validate_reader(cls: Any) -> None:
    check_plugin_class(cls, Reader, "attviz.readers.Reader", "read", described=False)


register_validator("attviz.readers", _validate_reader)
