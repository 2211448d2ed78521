"""Where extracted documents go: memory, or a store written from a background thread."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attviz.capture import array_attrs, materialize
from attviz.checks import check_arrays, compute_dtype, summarize
from attviz.corpus import Corpus, Document, build_table, kind_role
from attviz.errors import StoreError
from attviz.policy import StoragePolicy
from attviz.store import StoreWriter, resume_hint, stored_array
from attviz.tokenization import Unit


def _row(unit: Unit, probabilities: np.ndarray | None, label_names: Sequence[str]) -> dict[str, Any]:
    probs = {} if probabilities is None else {n: float(p) for n, p in zip(label_names, probabilities, strict=True)}
    return {
        "doc_id": unit.id,
        "text": unit.text,
        "n_tokens": len(unit.input_ids),
        "label": unit.label or "",
        "prediction": max(probs, key=probs.__getitem__) if probs else "",
        "probabilities": probs,
        "target": unit.target or "",
        "source_id": unit.source_id,
        "source_start": unit.source_start,
        "split": "",
    }


def _unit_tokens(unit: Unit) -> dict[str, pd.DataFrame]:
    tokens = {"source": unit.tokens}
    if unit.target_tokens is not None:
        tokens["target"] = unit.target_tokens
    return tokens


class Sink:
    done: set[int]
    label_names: Sequence[str] = ()
    policy: StoragePolicy = StoragePolicy()
    #: Store attrs of the arrays capture plugins add, by kind (``capture_<id>``; set by extract).
    extra_attrs: Mapping[str, Mapping[str, Any]] = {}

    def host_arrays(self, arrays: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """A document's arrays as numpy (waiting for their device copies) and their store attrs."""
        cache = self.__dict__.setdefault("_attrs", {})  # the same for every document of a job
        attrs: dict[str, dict[str, Any]] = {}
        for base in {kind_role(kind)[1] for kind in arrays if kind_role(kind)[0] != "capture"}:
            if base not in cache:
                cache[base] = array_attrs(self.policy, base)
            attrs.update(cache[base])
        attrs.update(self.extra_attrs)
        return {k: materialize(v) for k, v in arrays.items()}, {k: attrs.get(k, {}) for k in arrays}

    #: What the job remembered in an earlier, interrupted run (:meth:`remember`).
    remembered: Mapping[str, Any] = {}

    def remember(self, key: str, value: Any) -> None:
        """Keep ``value`` for a rerun that resumes this job (a store's sink only)."""

    def write_batch(self, results: list) -> None: ...
    def drain(self) -> None: ...
    def abort(self) -> None: ...
    def finish(self, attrs: dict[str, Any], units: Sequence[Unit], label_names: Sequence[str]) -> Corpus: ...


class MemorySink(Sink):
    def __init__(self, policy: StoragePolicy | None = None) -> None:
        self.policy = policy or StoragePolicy()
        self.done = set()
        self.results: dict[int, tuple] = {}

    def write_batch(self, results: list) -> None:
        for unit, arrays, probs in results:
            self.results[unit.index] = (unit, *self.host_arrays(arrays), probs)
            self.done.add(unit.index)

    def finish(self, attrs, units, label_names) -> Corpus:
        documents = []
        for index in sorted(self.results):
            unit, arrays, array_attrs, probs = self.results[index]
            row = _row(unit, probs, label_names)
            tokens = _unit_tokens(unit)
            data = {}
            for kind, values in arrays.items():
                data[kind] = stored_array(kind, values, array_attrs[kind], tokens.__getitem__)
            check = check_arrays(arrays)
            documents.append(
                Document(
                    id=unit.id,
                    text=unit.text,
                    arrays=data,
                    label=unit.label,
                    prediction=row["prediction"] or None,
                    probabilities=row["probabilities"] or None,
                    target=unit.target,
                    source_id=unit.source_id,
                    source_start=unit.source_start,
                    meta={"attention_check": check},
                )
            )
        checks = [(doc.id, doc.meta["attention_check"]) for doc in documents]
        attrs = {**attrs, "attention_check": summarize(checks, compute_dtype(attrs))}
        return Corpus(documents, attrs=attrs, table=build_table(documents, label_names))


class StoreSink(Sink):
    """Writes finished documents from one background thread, overlapping the next forward pass."""

    def __init__(
        self,
        store: str | os.PathLike,
        fingerprint: str,
        overwrite: bool,
        resume: bool,
        compression: str,
        policy: StoragePolicy | None = None,
    ):
        self.store = Path(store)
        self.policy = policy or StoragePolicy()
        self.writer = StoreWriter(
            store, fingerprint=fingerprint, overwrite=overwrite, resume=resume, compression=compression
        )
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attviz-writer")
        self.pending: list[Future] = []
        self.label_names: Sequence[str] = ()

    @property
    def done(self) -> set[int]:
        return self.writer.done

    @property
    def remembered(self) -> Mapping[str, Any]:  # type: ignore[override]
        return self.writer.remembered

    def remember(self, key: str, value: Any) -> None:
        self.writer.remember(key, value)

    def _write(self, results: list) -> None:
        _write_documents(self, self.writer, results)
        self.writer.flush()

    def add_records(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Count documents that writers in other processes (:class:`PartialSink`) wrote as finished."""
        for record in records:
            self.writer.add_record(record)
        self.writer.flush()

    def write_batch(self, results: list) -> None:
        while len(self.pending) >= 2:  # bound the memory held by queued batches
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self._write, results))

    def drain(self) -> None:
        for future in self.pending:
            future.result()
        self.pending.clear()

    def abort(self) -> None:
        for future in self.pending:
            with contextlib.suppress(Exception):  # the error being raised already is the one to report
                future.result()
        self.pending.clear()
        self.pool.shutdown(wait=True)
        self.writer.close()

    def finish(self, attrs, units, label_names) -> Corpus:
        self.pool.shutdown(wait=True)
        try:
            self.writer.finalize(attrs, label_names)
        except OSError as exc:  # a full disk while finishing: every document is kept, a rerun finishes it
            hint = resume_hint(self.store, len(self.done))
            raise StoreError(f"could not finish {self.store}: {exc}; {hint}") from exc
        return Corpus.open(self.store)


class PartialSink(Sink):
    """Writes documents into the unfinished store of a :class:`StoreSink` in another process (a worker of a
    distributed extraction, :mod:`attviz.distributed`): each document is moved into ``docs/`` whole, and
    nothing shared is written; :meth:`write_batch` returns the progress records, for the owner's
    :meth:`StoreSink.add_records`. Writes in the calling thread."""

    def __init__(
        self,
        store: str | os.PathLike,
        compression: str,
        policy: StoragePolicy | None = None,
        label_names: Sequence[str] = (),
        extra_attrs: Mapping[str, Mapping[str, Any]] | None = None,
        name: str = "",
    ):
        self.policy = policy or StoragePolicy()
        self.writer = StoreWriter.attach(store, compression=compression, name=name)
        self.label_names = label_names
        self.extra_attrs = dict(extra_attrs or {})
        self.done = set()

    def write_batch(self, results: list) -> list[dict[str, Any]]:  # type: ignore[override]
        records = _write_documents(self, self.writer, results)
        self.done.update(int(r["index"]) for r in records)
        return records

    def abort(self) -> None:
        self.writer.close()


def _write_documents(sink: Sink, writer: StoreWriter, results: list) -> list[dict[str, Any]]:
    """Write ``run_batch``'s results with ``writer``; their progress records."""
    records = []
    for unit, arrays, probs in results:
        values, attrs = sink.host_arrays(arrays)
        records.append(writer.write(unit.index, _row(unit, probs, sink.label_names), _unit_tokens(unit), values, attrs))
    return records
