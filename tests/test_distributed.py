"""Extraction sharded over a dask.distributed cluster (two worker processes) equals a single process."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from attviz import Corpus
from attviz.errors import InputError
from attviz.extract import ExtractionInterrupted, extract
from attviz.store import PROGRESS, STAGING, group_name, partial_path
from tests.conftest import TEXTS

distributed = pytest.importorskip("distributed")

DOCS = [*TEXTS, "Two workers share the documents of one job.", "A last short one."]
VOLATILE = ("created", "model_path")  # attrs that say when and from where, not what


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_bert):
    model, tok = tiny_bert
    path = tmp_path_factory.mktemp("models") / "tiny-bert"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture
def same_threads(client):
    """This process's torch threads as the workers' (dask starts them with one): CPU kernels split their
    reductions by thread, so the last bit of a q/k (SDPA) result depends on the thread count, locally too."""
    import torch

    before = torch.get_num_threads()
    (threads,) = set(client.run(torch.get_num_threads).values())
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(before)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _root_attrs(root: Path) -> dict:
    meta = json.loads((root / "zarr.json").read_text())
    attrs = dict(meta["attributes"]["attviz"])
    for key in VOLATILE:
        attrs.pop(key, None)
    return {"attrs": attrs, "nodes": meta["consolidated_metadata"]["metadata"]}


def assert_same_store(a: Path, b: Path, *, attrs: bool = True) -> None:
    """Every chunk and metadata file byte-equal (table, tokens, every document's arrays); the root
    attrs equal apart from when and where."""
    files_a, files_b = _files(a), _files(b)
    assert files_a.keys() == files_b.keys()
    for name in files_a:
        if name != "zarr.json":
            assert files_a[name] == files_b[name], name
    if attrs:
        assert _root_attrs(a) == _root_attrs(b)
    else:
        assert _root_attrs(a)["nodes"] == _root_attrs(b)["nodes"]
    ca, cb = Corpus.open(a), Corpus.open(b)
    assert ca.ids == cb.ids and list(ca.table.columns) == list(cb.table.columns)
    assert ca.table.equals(cb.table)
    for da, db in zip(ca, cb, strict=True):
        assert da.token_table().equals(db.token_table())
        np.testing.assert_array_equal(da.attention.values, db.attention.values)


@pytest.mark.parametrize(("attention", "compression"), [("matrices", "lz4"), ("qk", "lz4"), ("matrices", "uint8")])
def test_cluster_store_equals_single_process(client, model_dir, tmp_path, attention, compression, same_threads):
    kw = dict(model=str(model_dir), batch_size=2, progress=False, device="cpu", attention=attention)
    kw.update(compression=compression, label_descriptions={"pets": "cats and dogs", "money": "banks and markets"})
    local = extract(DOCS, store=tmp_path / "local.zarr", **kw)
    seen = []
    sharded = extract(
        DOCS, store=tmp_path / "cluster.zarr", client=client, callback=lambda d, t: seen.append((d, t)), **kw
    )
    assert len(sharded) == len(DOCS) and seen[-1] == (len(DOCS), len(DOCS))
    assert sorted(d for d, _ in seen) == [d for d, _ in seen]  # advances as batches finish
    assert sharded.attrs["attention_mode"] == attention
    if attention == "qk":
        assert sharded.attrs["qk_documents"] > 0
        assert sharded.attrs["qk_check"] == local.attrs["qk_check"]
    assert not (tmp_path / "cluster.zarr" / STAGING).exists()
    assert_same_store(tmp_path / "local.zarr", tmp_path / "cluster.zarr")
    # both workers took part, and each loaded the model once
    loaded = client.run(lambda: len(__import__("attviz.distributed").distributed._MODELS))
    assert sorted(loaded.values()) == [1, 1]


def test_rerun_resumes_only_the_missing_documents(client, model_dir, tmp_path, same_threads):
    kw = dict(model=str(model_dir), batch_size=1, progress=False, device="cpu", attention="matrices")
    reference = tmp_path / "reference.zarr"
    extract(DOCS, store=reference, **kw)

    def stop(done, total):
        if done == 4:
            raise KeyboardInterrupt

    store = tmp_path / "resumed.zarr"
    with pytest.raises(ExtractionInterrupted):
        extract(DOCS, store=store, callback=stop, **kw)
    partial = partial_path(store)
    records = [json.loads(line) for line in (partial / PROGRESS).read_text().splitlines()]
    assert len(records) == 4
    # forget one finished document: its record and its directory
    dropped = records.pop(1)
    (partial / PROGRESS).write_text("".join(json.dumps(r) + "\n" for r in records))
    for path in sorted((partial / "docs" / dropped["group"]).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (partial / "docs" / dropped["group"]).rmdir()
    kept = {r["group"]: os.stat(partial / "docs" / r["group"] / "self" / "zarr.json").st_mtime_ns for r in records}

    seen = []
    extract(DOCS, store=store, client=client, callback=lambda d, t: seen.append(d), **kw)
    assert seen == list(range(len(records) + 1, len(DOCS) + 1))  # only the missing ones ran
    for group, mtime in kept.items():  # the finished ones were not written again
        assert os.stat(store / "docs" / group / "self" / "zarr.json").st_mtime_ns == mtime
    assert (store / "docs" / dropped["group"]).is_dir()
    assert {group_name(i) for i in range(len(DOCS))} == {p.name for p in (store / "docs").iterdir() if p.is_dir()}
    assert_same_store(reference, store)


def _wait_idle(client, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while any(client.processing().values()):
        assert time.monotonic() < deadline, client.processing()
        time.sleep(0.05)


def test_an_interrupted_cluster_job_resumes_on_the_cluster(client, model_dir, tmp_path, same_threads):
    kw = dict(model=str(model_dir), batch_size=2, progress=False, device="cpu", attention="qk")
    reference = tmp_path / "reference.zarr"
    extract(DOCS, store=reference, **kw)

    def stop(done, total):
        raise KeyboardInterrupt

    store = tmp_path / "cluster.zarr"
    with pytest.raises(ExtractionInterrupted, match="resume"):
        extract(DOCS, store=store, client=client, callback=stop, **kw)
    assert partial_path(store).is_dir() and not store.exists()
    _wait_idle(client)  # tasks running when it stopped finish their documents (as the docs say: let them)
    seen = []
    extract(DOCS, store=store, client=client, callback=lambda d, t: seen.append(d), **kw)
    assert seen[0] > 2 and seen[-1] == len(DOCS)  # the first batch was kept
    assert_same_store(reference, store, attrs=False)  # (the rerun checks q/k on its own first batch)


def test_cli_scheduler(client, model_dir, tmp_path, capsys, same_threads):
    from attviz.cli import main

    source = tmp_path / "in.txt"
    source.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    kw = dict(model=str(model_dir), batch_size=3, progress=False, device="cpu", attention="matrices")
    extract(DOCS, store=tmp_path / "local.zarr", **kw)
    argv = ["extract", str(source), "-o", str(tmp_path / "cli.zarr"), "--model", str(model_dir), "--device", "cpu"]
    argv += ["--batch-size", "3", "--attention", "matrices", "--quiet", "--scheduler", client.scheduler.address]
    code = main(argv)
    assert code == 0, capsys.readouterr().err
    assert_same_store(tmp_path / "local.zarr", tmp_path / "cli.zarr")


def test_scheduler_needs_a_model_path_and_a_store(client, tiny_bert, model_dir):
    model, tok = tiny_bert
    with pytest.raises(InputError, match="name or path"):
        extract(DOCS, model=model, tokenizer=tok, store="x.zarr", client=client, progress=False)
    with pytest.raises(InputError, match="store"):
        extract(DOCS, model=str(model_dir), client=client, progress=False)


@pytest.mark.slow
def test_the_readme_cluster_recipe_runs_as_written(tmp_path):
    """The README's cluster recipe as a script (its own LocalCluster, the bundled MiniLM, offline)."""
    import subprocess
    import sys

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- cluster-recipe -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    (tmp_path / "recipe.py").write_text(block, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "recipe.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["12", "sentence-transformers/all-MiniLM-L6-v2"]
    assert len(Corpus.open(tmp_path / "sharded.zarr")) == 12
