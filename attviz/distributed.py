"""Extraction sharded over the workers of a dask.distributed cluster.

``extract(texts, model=PATH, store=STORE, scheduler="tcp://host:8786")`` (or ``client=Client(...)``,
or ``attviz extract ... --scheduler tcp://host:8786``) runs the same job as a single process, with
the forward passes and the writing spread over the cluster:

* this process (the client) tokenises, plans the batches (:func:`attviz.tokenization.make_batches`),
  creates or resumes ``STORE.partial`` and submits one task per batch (a bounded number in flight,
  earlier batches first);
* a worker loads the model once (a per-process cache keyed by name/path, device, dtype), runs
  :func:`attviz.extract.run_batch` on the batch and writes its documents with a
  :class:`attviz.sinks.PartialSink` (a :class:`attviz.store.StoreWriter` attached to the partial store):
  each document is built in the worker's own staging directory and moved into ``docs/`` in one rename,
  and nothing shared is written; the task returns the documents' progress records (table row, token
  tables: small) and what the capture learned (causal attention, the q/k rebuild check, fallbacks);
* the client appends the records to the progress file (it alone writes it), advances the progress
  bar as batches finish, and finally writes the table, the tokens and the metadata and moves the
  store into place, as locally. A rerun resumes from the progress file, on a cluster or not (the
  job's fingerprint is the same).

Where the workers have GPUs, run one worker per GPU (e.g. dask-cuda's ``LocalCUDACluster`` or
``dask cuda worker``, which give each worker its own ``CUDA_VISIBLE_DEVICES``); ``device="auto"``
then takes that GPU on each worker.

Limits: the store must be a local path that every worker sees at the same place (a shared file
system; fsspec URLs are not supported); the model must be given by name or path (a loaded model
object is not shipped to the workers: an :class:`~attviz.errors.InputError`), and the client loads it
too, on its CPU, to tokenise and to describe the job. Tasks that were running when the client stopped
(an error, Ctrl-C) may still finish writing their document directories after it returned; let them
finish (or restart the workers) before a rerun of the same job.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attviz.errors import AttvizError, InputError
from attviz.policy import StoragePolicy
from attviz.tokenization import Unit

#: Tasks in flight per worker thread (enough to keep every worker busy while results come back).
IN_FLIGHT_PER_THREAD = 2
#: Seconds to wait for a first worker of a cluster that has none (one still starting, or scaling up).
WAIT_FOR_WORKERS = 60


@dataclass
class Job:
    """What a worker needs to run batches of one extraction (small; shipped with every task)."""

    key: str
    model: str | None
    device: str
    dtype: str | None
    trust_remote_code: bool
    store: str
    compression: str
    policy: StoragePolicy
    attention: str
    captures: Any = None
    label_descriptions: dict[str, str] | None = None
    temperature: float = 0.05
    label_names: Sequence[str] = ()
    extra_attrs: Mapping[str, Any] = field(default_factory=dict)
    check_batch: list[Unit] | None = None


def model_spec(model: Any) -> str | None:
    """The name or path workers load ``model`` by; an InputError for a model object without one."""
    from attviz.models import BUNDLED_DISPLAY_NAME, LoadedModel

    if model is None or isinstance(model, str | os.PathLike):
        return None if model is None else os.fspath(model)
    if isinstance(model, LoadedModel):
        if model.path:
            return model.path
        if model.name == BUNDLED_DISPLAY_NAME:
            return None
        if model.name and getattr(model.config, "name_or_path", "") == model.name:  # a hub name
            return model.name
    raise InputError(
        "a distributed extraction loads the model on every worker: pass its name or path (model='...'), "
        "not a loaded model object",
        field="model",
        expected="a Hugging Face model name or a local directory",
    )


class Cluster:
    """One extraction's connection to a dask.distributed cluster (see the module's description)."""

    def __init__(self, client: Any, scheduler: str | None, model: Any, store: Any):
        if client is not None and scheduler is not None:
            raise InputError("pass a client or a scheduler address, not both", field="scheduler")
        if store is None:
            raise InputError(
                "a distributed extraction writes a store: pass store=... (-o/--output)",
                field="store",
                expected="a local path every worker sees",
            )
        if "://" in os.fspath(store):
            raise InputError(
                f"{store}: a distributed extraction writes to a local (shared) path, not a URL",
                field="store",
                expected="a local path every worker sees",
            )
        try:
            import distributed  # noqa: F401
        except ImportError as exc:  # pragma: no cover - a dependency of attviz
            raise AttvizError("a distributed extraction needs dask.distributed (pip install distributed)") from exc
        self.model = model_spec(model)
        self.store = str(Path(store).resolve())
        self._client = client
        self._scheduler = scheduler
        self._own = False

    @property
    def client(self) -> Any:
        if self._client is None:
            from distributed import Client

            try:
                self._client = Client(self._scheduler)
            except OSError as exc:
                raise AttvizError(f"cannot reach the dask scheduler at {self._scheduler}: {exc}") from exc
            self._own = True
        return self._client

    def close(self) -> None:
        if self._own and self._client is not None:
            self._client.close()
            self._client = None
            self._own = False

    def job(
        self,
        loaded: Any,
        device: str,
        dtype: str | None,
        trust_remote_code: bool,
        sink: Any,
        predictor: Any,
        captures: Any,
        capture: Any,
        batches: Sequence[Sequence[Unit]],
    ) -> Job:
        """The job the workers run, from extract()'s own objects."""
        return Job(
            key=uuid.uuid4().hex,
            model=self.model,
            device=str(device),
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            store=self.store,
            compression=sink.writer.compression,
            policy=sink.policy,
            attention=capture.attention,
            captures=captures,
            label_descriptions=dict(zip(predictor.labels, predictor.descriptions, strict=True)) if predictor else None,
            temperature=predictor.temperature if predictor else 0.05,
            label_names=list(sink.label_names),
            extra_attrs=dict(sink.extra_attrs),
            check_batch=list(batches[0][:1]) if batches else None,
        )

    def run(
        self,
        job: Job,
        batches: Sequence[Sequence[Unit]],
        sink: Any,
        capture: Any,
        advance: Callable[[int], None],
    ) -> None:
        """Run every batch on the workers; record finished documents in ``sink`` (the client's
        :class:`~attviz.sinks.StoreSink`) and call ``advance(documents)`` as batches finish; leave what the
        workers' captures learned in ``capture``."""
        from distributed import as_completed

        if not batches:
            return
        client = self.client
        if not client.nthreads():
            try:
                client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
            except TimeoutError as exc:
                raise AttvizError(
                    f"the dask cluster at {client.scheduler.address} has had no workers for {WAIT_FOR_WORKERS} s"
                ) from exc
        threads = sum(client.nthreads().values())
        window = max(2, IN_FLIGHT_PER_THREAD * threads)
        futures: dict[Any, int] = {}
        states: dict[int, dict[str, Any]] = {}

        def submit() -> Any:
            i = len(futures) + len(states)
            future = client.submit(
                run_task, job, list(batches[i]), key=f"attviz-batch-{job.key}-{i}", priority=-i, pure=False
            )
            futures[future] = i
            return future

        queue = as_completed([submit() for _ in range(min(window, len(batches)))])
        try:
            for future in queue:
                result = future.result()  # a worker's error is raised here
                i = futures.pop(future)
                sink.add_records(result.pop("records"))
                states[i] = result
                advance(len(batches[i]))
                if len(futures) + len(states) < len(batches):
                    queue.add(submit())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        merge_state(capture, [states[i] for i in sorted(states)])


def merge_state(capture: Any, states: Sequence[Mapping[str, Any]]) -> None:
    """What the workers' captures learned, in batch order, as one capture would have learned it."""
    capture.causal = next((s["causal"] for s in states if s["causal"] is not None), None)
    capture.check = next((s["check"] for s in states if s["check"] is not None), None)
    capture.fallback = next((s["fallback"] for s in states if s["fallback"]), "")
    for state in states:
        capture.skipped.update(state["skipped"])
    kept = [set(s["plugins"]) for s in states]
    if kept:
        capture.plugins = {k: v for k, v in capture.plugins.items() if all(k in s for s in kept)}


# -- on the workers -------------------------------------------------------------------------------
_LOCK = threading.Lock()
_MODELS: dict[tuple, Any] = {}
_JOBS: OrderedDict[str, _JobState] = OrderedDict()
#: Jobs a worker keeps set up (their captures and writers); the models stay loaded regardless.
KEEP_JOBS = 4


@dataclass
class _JobState:
    loaded: Any
    capture: Any
    predictor: Any
    sink: Any
    lock: threading.Lock


def worker_model(name: str | None, device: str, dtype: str | None, trust_remote_code: bool = False) -> Any:
    """The model, loaded once per worker process (and per name/path, device, dtype)."""
    from attviz.models import load_model

    key = (name, device, dtype, trust_remote_code)
    with _LOCK:
        if key not in _MODELS:
            try:
                _MODELS[key] = load_model(name, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
            except AttvizError:
                raise
            except Exception as exc:
                raise AttvizError(f"a dask worker could not load the model {name!r}: {exc}") from exc
        return _MODELS[key]


def _job_state(job: Job) -> _JobState:
    from attviz.capture import Capture
    from attviz.captures.base import resolve as resolve_captures
    from attviz.models import ZeroShotClassifier
    from attviz.sinks import PartialSink

    loaded = worker_model(job.model, job.device, job.dtype, job.trust_remote_code)
    with _LOCK:
        state = _JOBS.get(job.key)
        if state is not None:
            _JOBS.move_to_end(job.key)
            return state
        plugins, _ = resolve_captures(job.captures, loaded)
        capture = Capture(
            job.policy,
            quantize_on_device=job.compression == "uint8" and loaded.device.type != "cpu",
            plugins=plugins,
            strict=job.captures != "auto",
            attention=job.attention,
        )
        capture.matrix_value_bytes = 1 if job.compression == "uint8" else 2
        predictor = None
        if job.label_descriptions:
            predictor = ZeroShotClassifier(job.label_descriptions, job.temperature)
            predictor.prepare(loaded)
        sink = PartialSink(
            job.store, job.compression, job.policy, job.label_names, job.extra_attrs, name=f"job-{job.key[:12]}"
        )
        state = _JOBS[job.key] = _JobState(loaded, capture, predictor, sink, threading.Lock())
        while len(_JOBS) > KEEP_JOBS:
            _JOBS.popitem(last=False)
        return state


def run_task(job: Job, batch: list[Unit]) -> dict[str, Any]:
    """One batch on a worker: run the model, write the documents; their records and the capture's state."""
    from attviz.extract import run_batch

    state = _job_state(job)
    capture = state.capture
    with state.lock:  # one forward pass at a time on a worker's model (it switches attention implementations)
        results = run_batch(state.loaded, batch, state.predictor, capture, check_batch=job.check_batch)
        learned = {
            "causal": capture.causal,
            "check": capture.check,
            "fallback": capture.fallback,
            "skipped": dict(capture.skipped),
            "plugins": list(capture.plugins),
        }
    return {"records": state.sink.write_batch(results), **learned}  # writing overlaps another thread's pass
