"""The corpus statistics engine: one dask task per document, small results, cached in the store.

Every statistic of the corpus area starts from per-document values, so that the unit of every test is
the document (repeated tokens in one document do not inflate a sample):

- ``heads``: the head-atlas metrics of :mod:`attviz.analysis.atlas` per ``(doc, layer, head)``, plus
  each document's positional profile ``(doc, layer, head, offset)``;
- ``tokens``: per document and token type (the token's text), the mean over its occurrences of a token
  vector (by default :class:`~attviz.aggregations.vectors.AttentionReceived`, Vig & Belinkov 2019; any
  aggregation plugin that gives ``(layer, head, token)``), as entries ``(entry, layer, head)`` with the
  entry's document, type and occurrence count;
- ``similarity``: the mean over a seeded sample of documents (and over at most :data:`SIMILARITY_ROWS`
  evenly spaced query rows of each) of the Jensen–Shannon distance between every pair of heads'
  attention over the same tokens (Clark et al. 2019, §6).

:func:`corpus_statistics` runs one :func:`dask.delayed` task per document (a document's attention is
read once, in the task, and never kept): on local threads by default, or on a ``dask.distributed``
cluster (``client=`` or ``scheduler=``), whose workers open the store themselves. The results are a few
kilobytes a document; they are written to the store's ``stats/<key>`` group (``key`` hashes the settings),
so a second call, or the explorer, opens them at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from attviz.errors import AttvizError, InputError

ENGINE_VERSION = 1
STATS_GROUP = "stats"
DEFAULT_AGGREGATION = "attention_received"
SIMILARITY_DOCUMENTS = 128  # documents sampled for head similarity (each costs (L·H)² · rows · T operations)
SIMILARITY_ROWS = 32  # query rows per sampled document (evenly spaced), enough for a mean over rows


class StatisticsError(AttvizError):
    """Corpus statistics cannot be computed from what the corpus holds."""


@dataclass(frozen=True)
class Settings:
    """What the statistics depend on (their cache key)."""

    aggregation: str = DEFAULT_AGGREGATION  # an aggregation id or a JSON pipeline spec
    kind: str | None = None  # the matrix kind (default: self, else encoder)
    epsilon: float = 0.3  # attention-sink threshold (Gu et al. 2024)
    similarity_documents: int = SIMILARITY_DOCUMENTS
    seed: int = 0
    induction: bool = False  # induction scores from the corpus's own model (causal models)

    def key(self) -> str:
        blob = json.dumps({"engine": ENGINE_VERSION, **self.__dict__}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


@dataclass
class CorpusStatistics:
    """Per-document statistics of a corpus (see the module docstring) and what is derived from them."""

    heads: xr.Dataset
    tokens: xr.Dataset
    similarity: xr.DataArray | None
    documents: pd.DataFrame
    settings: Settings
    problems: list[str] = field(default_factory=list)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    # -- the head atlas -------------------------------------------------------------------------
    @property
    def metrics(self) -> list[str]:
        return [name for name in self.heads.data_vars if self.heads[name].dims == ("doc", "layer", "head")]

    def atlas(self) -> pd.DataFrame:
        """One row per (layer, head): each metric's mean over documents, the positional offset with the
        most mean weight and that weight, and the Kovaleva et al. 2019 pattern class."""
        if "atlas" in self._cache:
            return self._cache["atlas"]
        from attviz.analysis.atlas import pattern_class, positional_offset

        means = {name: _nanmean(self.heads[name].values, axis=0) for name in self.metrics}
        layers, heads = self.heads["layer"].values, self.heads["head"].values
        frame = pd.DataFrame(
            {
                "layer": np.repeat(layers, len(heads)),
                "head": np.tile(heads, len(layers)),
                **{name: values.ravel() for name, values in means.items()},
            }
        )
        if "offset_profile" in self.heads:
            offset, weight = positional_offset(_nanmean(self.heads["offset_profile"].values, axis=0))
            frame["offset"] = np.asarray(offset).ravel()
            frame["offset_weight"] = np.asarray(weight).ravel()
        frame["pattern"] = np.asarray(pattern_class(means)).ravel()
        if "induction" in self.heads:
            frame["induction"] = self.heads["induction"].values.ravel()
        self._cache["atlas"] = frame
        return frame

    def head_values(self, metric: str, layer: int, head: int) -> pd.Series:
        """One metric of one head per document (indexed by document id)."""
        values = self.heads[metric].sel(layer=layer, head=head).values
        return pd.Series(values, index=self.documents.index, name=metric)

    def top_documents(self, layer: int, head: int, metric: str, *, n: int = 10, deciles: bool = True) -> pd.DataFrame:
        """The documents where one head scores highest on ``metric`` and, with ``deciles``, one document
        at each decile of the distribution (so the view shows the typical case, not only the extremes)."""
        values = self.head_values(metric, layer, head).dropna().sort_values(ascending=False)
        rows = [("top", doc_id, value) for doc_id, value in values.head(n).items()]
        if deciles and len(values) > n:
            for q in range(9, -1, -1):
                position = min(len(values) - 1, round((1 - q / 10) * (len(values) - 1)))
                doc_id = values.index[position]
                rows.append((f"decile {q * 10}%", doc_id, values.iloc[position]))
        frame = pd.DataFrame(rows, columns=["rank", "id", metric])
        frame = frame.drop_duplicates("id", keep="first")
        table = self.documents
        frame["index"] = [int(table.index.get_loc(i)) for i in frame["id"]]
        for column in ("label", "prediction", "text"):
            if column in table:
                frame[column] = table.loc[frame["id"], column].to_numpy()
        return frame.reset_index(drop=True)

    # -- tokens ---------------------------------------------------------------------------------
    def token_values(self, layer: int | None = None, head: int | None = None) -> pd.DataFrame:
        """Per (document, token type): the type's mean value for one head, or the mean over every head
        and layer (``layer``/``head`` None), with its occurrence count and the document's id."""
        value = self.tokens["value"]
        if layer is not None:
            value = value.sel(layer=layer)
        if head is not None:
            value = value.sel(head=head)
        dims = [d for d in ("layer", "head") if d in value.dims]
        values = value.mean(dims).values if dims else value.values
        docs = self.tokens["entry_doc"].values
        return pd.DataFrame(
            {
                "doc": docs,
                "id": self.documents.index.to_numpy()[docs],
                "type": self.tokens["entry_type"].values,
                "count": self.tokens["entry_count"].values,
                "value": values,
            }
        )

    def top_tokens(self, layer: int | None = None, head: int | None = None, *, n: int = 20, min_documents: int = 2):
        """Token types by their mean over documents of the per-document value (the document is the unit;
        mean, std, max and the number of documents), for one head or the mean over heads."""
        frame = self.token_values(layer, head)
        grouped = frame.groupby("type")["value"].agg(["mean", "std", "max", "count"])
        grouped = grouped.rename(columns={"count": "documents"})
        grouped = grouped[grouped["documents"] >= min_documents]
        return grouped.sort_values("mean", ascending=False).head(n).reset_index()

    def fuji(self, *, max_entries: int = 5000, step: int | str = "exp") -> xr.DataArray:
        """Head–head AUFuji: the area under the FUJI curve of two heads' rankings of the same token
        occurrences (per document and token type, a seeded sample of ``max_entries``), as the original
        AttViz's commented-out head-similarity heatmap did (Petković et al. 2021; see
        :func:`attviz.analysis.similarity.aufuji_matrix`). 1: the same ranking; flat head indices."""
        key = ("fuji", max_entries, step)
        if key not in self._cache:
            from attviz.analysis.similarity import aufuji_matrix

            values = self.tokens["value"].values
            n = values.shape[0]
            rng = np.random.default_rng(self.settings.seed)
            chosen = np.sort(rng.choice(n, size=min(n, max_entries), replace=False))
            scores = np.clip(values[chosen].reshape(len(chosen), -1).T, 0, None)  # (heads, entries)
            flat = np.arange(scores.shape[0])
            self._cache[key] = xr.DataArray(
                aufuji_matrix(scores, step=step),
                dims=("head_a", "head_b"),
                coords={"head_a": flat, "head_b": flat},
                name="aufuji",
                attrs={"long_name": "area under the FUJI curve", "units": "1", "entries": len(chosen)},
            )
        return self._cache[key]

    def head_order(self) -> np.ndarray | None:
        """The flat head indices (layer · H + head) in the similarity clustering's leaf order."""
        if self.similarity is None:
            return None
        if "order" not in self._cache:
            from attviz.analysis.similarity import cluster_order

            self._cache["order"] = np.asarray(cluster_order(self.similarity.values))
        return self._cache["order"]


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN, NaN (without a warning) where every value is NaN."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# -- per-document work -------------------------------------------------------------------------
def _aggregation(spec: str):
    from attviz import registry
    from attviz.aggregations.base import from_spec

    if spec.lstrip().startswith("["):
        return from_spec(spec)
    return registry.get("aggregations", spec)()


def _main_kind(doc, kind: str | None) -> str:
    if kind:
        return kind
    for name in ("self", "encoder"):
        if name in doc.arrays:
            return name
    raise StatisticsError(
        f"document {doc.id!r} holds no attention matrices (it has {', '.join(doc.kinds) or 'nothing'}); "
        "corpus statistics need matrices or queries and keys"
    )


def document_statistics(doc, settings: Settings, *, similarity: bool = False) -> dict[str, Any]:
    """The per-document statistics of one document: head metrics, token entries, optional similarity."""
    from attviz.analysis.atlas import document_head_metrics, sentence_segments

    kind = _main_kind(doc, settings.kind)
    array = doc.get(kind).transpose("layer", "head", "query", "key")
    kept = doc.qk(kind)
    if kept is not None:  # rebuilt layer by layer: a 7x faster than computing the dask DataArray's 72 cells
        values = np.stack([kept.layer(layer) for layer in range(kept.shape[0])])
    else:
        values = np.asarray(array.values)
    array = array.copy(data=values)  # read once; the aggregation below reuses it
    special = array.coords.get("key_special")
    special = np.zeros(array.sizes["key"], bool) if special is None else np.asarray(special.values, bool)
    key_text = [str(t) for t in array["key_text"].values] if "key_text" in array.coords else None
    segments = sentence_segments(special, key_text)
    metrics = document_head_metrics(values, special, epsilon=settings.epsilon, segments=segments)
    vector = _aggregation(settings.aggregation)(array)
    if "token" not in vector.dims:
        raise StatisticsError(f"aggregation {settings.aggregation!r} gives {vector.dims}, not a token vector")
    vector = vector.transpose("layer", "head", "token")
    texts = vector.coords["token_text"].values if "token_text" in vector.coords else array["key_text"].values
    codes, types = pd.factorize(pd.Series(np.asarray(texts, dtype=object)), sort=False)
    counts = np.bincount(codes, minlength=len(types))
    sums = np.zeros((len(types), *vector.shape[:2]), np.float64)
    np.add.at(sums, codes, np.moveaxis(np.asarray(vector.values, np.float64), -1, 0))
    out: dict[str, Any] = {
        "metrics": metrics,
        "token_types": np.asarray(types, dtype=object),
        "token_counts": counts.astype(np.int32),
        "token_values": (sums / counts[:, None, None]).astype(np.float32),
        "layers": np.asarray(array["layer"].values),
        "heads": np.asarray(array["head"].values),
    }
    if similarity:
        from attviz.analysis.similarity import js_distance

        rows = np.unique(np.linspace(0, values.shape[2] - 1, min(values.shape[2], SIMILARITY_ROWS)).round().astype(int))
        out["similarity"] = js_distance(values[:, :, rows, :])
    return out


@lru_cache(maxsize=4)
def _opened(path: str, stamp: int):
    """The store at ``path`` opened once per process and version (``stamp``: its metadata's mtime, so a
    store rewritten at the same path is opened again)."""
    from attviz.store import open_store

    corpus = open_store(path)
    corpus.cache_size = 0  # a task reads its document once
    return corpus


def _store_task(path: str, index: int, settings_json: str, similarity: bool) -> dict[str, Any]:
    """A task for a worker: open the store (once per process) and compute one document."""
    settings = Settings(**json.loads(settings_json))
    stamp = os.stat(Path(path) / "zarr.json").st_mtime_ns
    return document_statistics(_opened(path, stamp)[index], settings, similarity=similarity)


# -- the corpus --------------------------------------------------------------------------------
def corpus_statistics(
    corpus,
    *,
    aggregation: str = DEFAULT_AGGREGATION,
    kind: str | None = None,
    epsilon: float = 0.3,
    similarity_documents: int = SIMILARITY_DOCUMENTS,
    seed: int = 0,
    induction: bool | None = None,
    model: Any = None,
    client: Any = None,
    scheduler: str | None = None,
    workers: int = 1,
    cache: bool = True,
    progress: bool | Callable[[int, int], None] = False,
) -> CorpusStatistics:
    """Compute (or open from the store's ``stats/`` cache) the per-document statistics of ``corpus``.

    ``client``: a ``dask.distributed.Client``; ``scheduler``: its address (``tcp://host:8786``); neither:
    ``induction``: add each head's induction score (Olsson et al. 2022: the prefix-matching score on
    repeated random tokens, :func:`attviz.analysis.atlas.induction_scores`) from ``model`` or the model the
    corpus records; None: for causal models, skipped with a note in ``problems`` when it cannot load.
    Neither: local threads (``workers`` of them; one by default: a document's work is mostly small numpy blocks
    and zarr decoding under the GIL, and two threads measured slower than one on the demo corpus — a
    cluster of processes is the way to scale). ``progress``: a tqdm bar on stderr (True) or a callback
    ``(done, total)``. Returns :class:`CorpusStatistics`.
    """
    settings = Settings(
        aggregation=aggregation,
        kind=kind,
        epsilon=float(epsilon),
        similarity_documents=int(similarity_documents),
        seed=int(seed),
        induction=bool(corpus.attrs.get("causal")) if induction is None else bool(induction),
    )
    _aggregation(aggregation)  # a wrong id fails here, before any task
    documents = corpus.table
    path = getattr(corpus, "path", None)
    if cache and path:
        cached = load_statistics(path, settings, documents)
        if cached is not None:
            return cached
    n = len(corpus)
    if n == 0:
        raise StatisticsError("the corpus has no documents")
    rng = np.random.default_rng(seed)
    sampled = set(rng.choice(n, size=min(n, similarity_documents), replace=False).tolist())
    results = _run(corpus, settings, sampled, client=client, scheduler=scheduler, workers=workers, progress=progress)
    stats = _assemble(results, settings, documents)
    if settings.induction:
        try:
            scores = _induction(corpus, model)
        except AttvizError as exc:
            if induction:  # asked for: say why not
                raise
            stats.problems.append(f"no induction scores: {exc}")
        else:
            layers, heads = stats.heads["layer"].values, stats.heads["head"].values  # a policy may keep some
            if layers.max() >= scores.shape[0] or heads.max() >= scores.shape[1]:
                stats.problems.append(f"no induction scores: the model has {scores.shape} layers × heads")
            else:
                stats.heads["induction"] = (("layer", "head"), scores[np.ix_(layers, heads)])
    if cache and path:
        try:
            save_statistics(path, stats)
        except OSError as exc:  # a read-only store still gets its statistics, just not cached
            stats.problems.append(f"statistics not cached in {path}: {exc}")
    return stats


def _induction(corpus, model: Any) -> np.ndarray:
    """Induction scores ``(layer, head)`` of every head of the corpus's model (``model``: a loaded model, a
    name or path, or None: the model the corpus records)."""
    from attviz.analysis.atlas import induction_scores
    from attviz.analysis.qkspace import _loaded_model, _recorded_model

    if model is None:
        loaded = _recorded_model(corpus, "induction scores need the model")
    else:
        loaded = model if hasattr(model, "config") else _loaded_model(model, None)
    return induction_scores(getattr(loaded, "model", loaded))


def _run(corpus, settings: Settings, sampled: set[int], *, client, scheduler, workers, progress) -> list[dict]:
    import dask

    n = len(corpus)
    path = getattr(corpus, "path", None)
    blob = settings.to_json()
    if path:
        tasks = [dask.delayed(_store_task, pure=False)(str(path), i, blob, i in sampled) for i in range(n)]
    else:
        tasks = [
            dask.delayed(document_statistics, pure=False)(corpus[i], settings, similarity=i in sampled)
            for i in range(n)
        ]
    report = _progress(progress, n)
    if client is None and scheduler:
        from distributed import Client

        with Client(scheduler) as own:
            return _distributed(own, tasks, report)
    if client is not None:
        return _distributed(client, tasks, report)
    results: list[dict] = []
    step = max(1, 4 * workers)
    for start in range(0, n, step):  # in steps, so the progress advances and memory stays a step's worth
        results.extend(dask.compute(*tasks[start : start + step], scheduler="threads", num_workers=workers))
        report(len(results))
    report(None)
    return results


def _distributed(client, tasks: Sequence[Any], report) -> list[dict]:
    from distributed import as_completed

    futures = client.compute(list(tasks))
    index = {future.key: i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    for done, future in enumerate(as_completed(futures), start=1):
        results[index[future.key]] = future.result()
        future.release()
        report(done)
    report(None)
    return results


def _progress(progress, total: int) -> Callable[[int | None], None]:
    if callable(progress):
        return lambda done: progress(total if done is None else done, total)
    if not progress:
        return lambda done: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="doc", desc="statistics")

    def report(done: int | None) -> None:
        if done is None:
            bar.close()
        else:
            bar.update(done - bar.n)

    return report


def _assemble(results: Sequence[Mapping[str, Any]], settings: Settings, documents: pd.DataFrame) -> CorpusStatistics:
    first = results[0]
    layers, heads = first["layers"], first["heads"]
    for i, result in enumerate(results):
        if result["token_values"].shape[1:] != (len(layers), len(heads)):
            raise StatisticsError(
                f"document {documents.index[i]!r} has {result['token_values'].shape[1:]} (layer, head), the first "
                f"{(len(layers), len(heads))}: corpus statistics need the same heads in every document"
            )
    names = list(first["metrics"])
    data: dict[str, Any] = {}
    for name in names:
        stacked = np.stack([r["metrics"][name] for r in results]).astype(np.float32)
        dims = ("doc", "layer", "head") if stacked.ndim == 3 else ("doc", "layer", "head", "offset")
        data[name] = (dims, stacked)
    coords: dict[str, Any] = {"doc": np.arange(len(results)), "layer": layers, "head": heads}
    if "offset_profile" in data:
        width = data["offset_profile"][1].shape[-1] // 2
        coords["offset"] = np.arange(-width, width + 1)
    heads_ds = xr.Dataset(data, coords=coords, attrs={"settings": settings.to_json()})
    counts = [len(r["token_types"]) for r in results]
    tokens = xr.Dataset(
        {
            "value": (("entry", "layer", "head"), np.concatenate([r["token_values"] for r in results])),
            "entry_doc": ("entry", np.repeat(np.arange(len(results), dtype=np.int32), counts)),
            "entry_type": ("entry", np.concatenate([r["token_types"] for r in results]).astype(object)),
            "entry_count": ("entry", np.concatenate([r["token_counts"] for r in results])),
        },
        coords={"layer": layers, "head": heads},
    )
    similar = [r["similarity"] for r in results if "similarity" in r]
    similarity = None
    if similar:
        flat = np.arange(len(layers) * len(heads))  # layer position · H + head position
        similarity = xr.DataArray(
            np.mean(np.stack(similar), axis=0),
            dims=("head_a", "head_b"),
            coords={"head_a": flat, "head_b": flat},
            name="js_distance",
            attrs={"long_name": "Jensen-Shannon distance", "units": "1", "documents": len(similar)},
        )
    return CorpusStatistics(heads_ds, tokens, similarity, documents, settings)


# -- the cache ---------------------------------------------------------------------------------
_write_lock = threading.Lock()


def statistics_path(store: str | os.PathLike, settings: Settings) -> Path:
    return Path(store) / STATS_GROUP / settings.key()


def save_statistics(store: str | os.PathLike, stats: CorpusStatistics) -> Path:
    """Write ``stats`` to ``<store>/stats/<key>`` atomically (a temporary folder, then a rename)."""
    from attviz.zarr3 import write_dataset

    target = statistics_path(store, stats.settings)
    target.parent.mkdir(exist_ok=True)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    temporary.mkdir()
    try:
        write_dataset(temporary / "heads", stats.heads)
        write_dataset(temporary / "tokens", stats.tokens)
        if stats.similarity is not None:
            write_dataset(temporary / "similarity", stats.similarity.to_dataset())
        meta = {
            "settings": json.loads(stats.settings.to_json()),
            "engine": ENGINE_VERSION,
            "documents": list(map(str, stats.documents.index)),
        }
        (temporary / "stats.json").write_text(json.dumps(meta), encoding="utf-8")
        with _write_lock:
            if target.exists():
                if _cached_documents(target) == meta["documents"]:  # the same statistics, written meanwhile
                    shutil.rmtree(temporary)
                    return target
                stale = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.stale"  # of other documents
                os.replace(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


def _cached_documents(target: Path) -> list[str] | None:
    try:
        return json.loads((target / "stats.json").read_text(encoding="utf-8")).get("documents")
    except (OSError, ValueError):
        return None


def load_statistics(store: str | os.PathLike, settings: Settings, documents: pd.DataFrame) -> CorpusStatistics | None:
    """The cached statistics of ``settings``, or None (also when the store's documents changed)."""
    from attviz.zarr3 import read_dataset

    target = statistics_path(store, settings)
    meta_file = target / "stats.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if meta.get("engine") != ENGINE_VERSION or meta.get("documents") != list(map(str, documents.index)):
        return None
    heads, tokens = read_dataset(target / "heads"), read_dataset(target / "tokens")
    if heads is None or tokens is None:
        return None
    similarity = None
    if (target / "similarity").is_dir():
        ds = read_dataset(target / "similarity")
        similarity = None if ds is None else ds["js_distance"]
    for name in tokens.variables:
        if tokens[name].dtype.kind in "OUT":
            tokens[name] = tokens[name].astype(object)
    return CorpusStatistics(heads, tokens, similarity, documents, settings)


def cached_settings(store: str | os.PathLike) -> list[Settings]:
    """The settings of every statistics cached in a store."""
    out = []
    for meta_file in sorted((Path(store) / STATS_GROUP).glob("*/stats.json")):
        try:
            out.append(Settings(**json.loads(meta_file.read_text(encoding="utf-8"))["settings"]))
        except (ValueError, TypeError, KeyError):
            continue
    return out


def group_of(documents: pd.DataFrame, by: str) -> pd.Series:
    """The group of each document for ``by`` (``label``/``gold``, ``prediction``/``predicted``, ``correct``)."""
    column = {"gold": "label", "predicted": "prediction"}.get(by, by)
    if column not in documents:
        raise InputError(f"the corpus has no {column!r} column to group by (it has {', '.join(documents.columns)})")
    values = documents[column]
    if column == "correct":
        values = values.map({True: "correct", False: "wrong"})
    return values.astype(object).where(values.notna(), None)
