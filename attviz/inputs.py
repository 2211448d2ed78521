"""Reading texts to extract from .txt, .csv/.tsv and .jsonl files."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from attviz.errors import InputError

TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".ndjson")


@dataclass
class TextInput:
    texts: list[str]
    ids: list[str] | None = None
    labels: list[str | None] | None = None
    targets: list[str] | None = None


def read_texts(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str | None = None,
    id_column: str | None = None,
    target_column: str | None = None,
) -> TextInput:
    """Read documents: ``.txt`` has one document per line (blank lines skipped); ``.csv``/``.tsv``
    and ``.jsonl`` have a text column and optional label, id and target columns (``label`` and
    ``id`` are used when present unless other columns are named)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError("no such file", file=path)
    if suffix == ".txt":
        with open(path, encoding="utf-8") as handle:
            texts = [line.rstrip("\n\r") for line in handle]
        return TextInput([t for t in texts if t.strip()])
    if suffix in (".csv", ".tsv"):
        rows, where = _read_table(path, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".ndjson"):
        rows, where = _read_jsonl(path)
    else:
        raise InputError(f"unknown input type {suffix!r}", file=path, expected=", ".join(TEXT_SUFFIXES))
    if not rows:
        raise InputError("no documents", file=path, expected="at least one row")
    columns = set().union(*(row.keys() for row in rows))

    def pick(name: str | None, default: str, required: bool) -> str | None:
        wanted = name if name is not None else (default if required else None)
        if wanted is not None and wanted not in columns:
            option = f" (use --{default}-column)"
            raise InputError(f"no column {wanted!r}", file=path, expected=f"one of {sorted(columns)}{option}")
        return name if name is not None else (default if default in columns else None)

    text_key = pick(text_column, "text", True)
    label_key = pick(label_column, "label", False)
    id_key = pick(id_column, "id", False)
    target_key = pick(target_column, "target", False)
    texts: list[str] = []
    for row, line in zip(rows, where, strict=True):
        value = row.get(text_key)
        if not isinstance(value, str) or not value.strip():
            raise InputError(
                "empty or missing text", file=path, field=f"{line}, column {text_key!r}", expected="non-empty text"
            )
        texts.append(value)

    def column(key: str | None) -> list | None:
        if key is None:
            return None
        return [None if row.get(key) in (None, "") else str(row.get(key)) for row in rows]

    ids = column(id_key)
    if ids is not None and any(i is None for i in ids):
        line = where[ids.index(None)]
        raise InputError("missing id", file=path, field=f"{line}, column {id_key!r}", expected="an id on every row")
    return TextInput(texts, ids, column(label_key), column(target_key))


def _read_table(path: Path, delimiter: str) -> tuple[list[dict], list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        rows, where = [], []
        for row in reader:
            rows.append(row)
            where.append(f"line {reader.line_num}")
    return rows, where


def _read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    rows, where = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"invalid JSON ({exc.msg} at column {exc.colno})", file=path, field=f"line {number}"
                ) from exc
            if not isinstance(row, dict):
                raise InputError("not a JSON object", file=path, field=f"line {number}", expected='{"text": ...}')
            rows.append(row)
            where.append(f"line {number}")
    return rows, where
