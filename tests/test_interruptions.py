"""Every interruption resumes (issue #14): SIGKILL and a full disk at each stage of extraction and
conversion, then a rerun that finishes with a store identical to an uninterrupted one, with no finished
document lost or computed again, and a failed run that leaves nothing under the target's name.

Faults come from ``$ATTVIZ_FAULT`` (:mod:`attviz.faults`): ``STAGE[@N]`` kills the process with SIGKILL
the N-th time it reaches STAGE, ``STAGE[@N]:enospc`` raises ENOSPC there. The quick mode runs in the
normal suite (SIGKILL in a forked child of this process, a full disk in-process, one real ``attviz``
subprocess of each kind); ``ATTVIZ_FAULT_SWEEP=1`` adds the full sweep of every stage, SIGKILL and a
full disk, plain and ``--overwrite``, through ``attviz extract`` and ``attviz convert`` subprocesses
(about 10 s each here), and prints the faults injected and the documents lost.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attviz import Corpus, StoreError, faults
from attviz.cli import main
from attviz.errors import AttvizError
from attviz.extract import extract
from attviz.store import PROGRESS, StoreWriter, partial_path

TEXTS = [f"document {i} about the {'quick ' * (i % 4)}cat and the dog number {i}." for i in range(12)]
OTHER_TEXTS = ["an older store", "with other texts"]
BATCH = 2
SWEEP = bool(os.environ.get("ATTVIZ_FAULT_SWEEP"))
#: Where a store is written, in order (the stages of :func:`attviz.faults.fault_point` in attviz.store).
STORE_STAGES = ["document@3", "progress@2", "document@12", "table", "tokens", "consolidate", "rename", "renamed"]
NETCDF_STAGES = ["netcdf-document@2", "netcdf-table", "netcdf-rename"]
REPORT: dict[str, int] = {"faults": 0, "lost": 0}


# -- helpers -------------------------------------------------------------------------------------------
def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _without_timestamps(text: bytes) -> dict:
    root = json.loads(text)
    for attrs in (root["attributes"]["attviz"],):
        attrs.pop("created", None)
    return root


def assert_same_store(path: Path, reference: Path) -> None:
    """The two stores are the same file for file, byte for byte (every array, the table, the tokens),
    apart from the creation time in the root attributes; nothing else lies beside ``path``."""
    assert path.is_dir() and not partial_path(path).exists()
    assert not list(path.parent.glob(path.name + ".old-*"))
    ours, theirs = _files(path), _files(reference)
    assert sorted(ours) == sorted(theirs)
    for name, data in theirs.items():
        if name == "zarr.json":
            assert _without_timestamps(ours[name]) == _without_timestamps(data)
        else:
            assert ours[name] == data, name
    Corpus.open(path)  # and it opens


def _recorded(store: Path) -> int:
    """Documents a rerun must not compute again: those in the progress file (all of them once the
    documents are finished and the store is being finalized)."""
    for where in (partial_path(store), store):
        if (where / PROGRESS).exists():
            lines = (where / PROGRESS).read_text(encoding="utf-8").splitlines()
            return sum(1 for line in lines if line.endswith("}"))
    return 0


def _kept_groups(store: Path) -> tuple[set[str], int]:
    """The documents (their groups) a rerun must not write again, and the time that was so."""
    groups: set[str] = set()
    for where in (partial_path(store), store):
        if (where / PROGRESS).exists():
            for line in (where / PROGRESS).read_text(encoding="utf-8").splitlines():
                if line.endswith("}"):
                    groups.add(json.loads(line)["group"])
            break
    return groups, time.time_ns()


def _rewritten(store: Path, groups: set[str], since: int) -> int:
    """How many of ``groups`` the rerun wrote again (finished documents lost)."""
    return sum(
        any(f.stat().st_mtime_ns > since for f in (store / "docs" / g).rglob("*") if f.is_file()) for g in groups
    )


def _counting(monkeypatch) -> list[int]:
    """Count the documents the model runs on from now on."""
    module = sys.modules["attviz.extract"]
    computed: list[int] = []
    run_batch = module.run_batch

    def counted(loaded, batch, *args, **kwargs):
        computed.append(len(batch))
        return run_batch(loaded, batch, *args, **kwargs)

    monkeypatch.setattr(module, "run_batch", counted)
    return computed


def _extract(model, store: Path, **kwargs):
    model_, tok = model
    return extract(
        TEXTS, model=model_, tokenizer=tok, batch_size=BATCH, store=store, progress=False, device="cpu", **kwargs
    )


def _killed_child(fault: str, job, timeout: float = 120) -> int:
    """Run ``job()`` in a forked child with ``$ATTVIZ_FAULT=fault``; its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            import torch

            torch.set_num_threads(1)
            os.environ[faults.VARIABLE] = fault
            faults.reset()
            job()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the child with fault {fault} hung")


@pytest.fixture(scope="module")
def reference(tiny_bert, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reference") / "ref.zarr"
    _extract(tiny_bert, path)
    return path


@pytest.fixture(scope="module")
def old_store(tiny_bert, tmp_path_factory) -> Path:
    """A store of other texts, that an --overwrite job replaces."""
    model, tok = tiny_bert
    path = tmp_path_factory.mktemp("old") / "old.zarr"
    extract(OTHER_TEXTS, model=model, tokenizer=tok, store=path, progress=False, device="cpu")
    return path


def _copy_old(old_store: Path, store: Path) -> None:
    import shutil

    shutil.copytree(old_store, store)


# -- the failures of issue #14, as regression tests -----------------------------------------------------
def test_a_full_disk_while_finalizing_resumes(tiny_bert, reference, tmp_path, monkeypatch):
    """Was: every rerun failed with ``[Errno 17] File exists: …partial/table``."""
    store = tmp_path / "s.zarr"
    monkeypatch.setenv(faults.VARIABLE, "tokens:enospc")  # the table is written, the tokens are not
    faults.reset()
    with pytest.raises(StoreError, match=r"No space left on device.*run the same command again to resume"):
        _extract(tiny_bert, store)
    assert not store.exists() and (partial_path(store) / "table").is_dir()
    monkeypatch.delenv(faults.VARIABLE)
    computed = _counting(monkeypatch)
    _extract(tiny_bert, store)
    assert sum(computed) == 0  # every document was kept
    assert_same_store(store, reference)


def test_b_an_interrupted_overwrite_resumes(tiny_bert, reference, old_store, tmp_path, monkeypatch):
    """Was: rerunning an interrupted ``--overwrite`` job started again from zero."""
    store = tmp_path / "s.zarr"
    _copy_old(old_store, store)

    def crash(done, total):
        if done >= 6:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _extract(tiny_bert, store, overwrite=True, callback=crash)
    assert Corpus.open(store).ids == ["doc-0000", "doc-0001"]  # the old store stays readable meanwhile
    computed = _counting(monkeypatch)
    _extract(tiny_bert, store, overwrite=True)
    assert sum(computed) == len(TEXTS) - 6  # it went on from the 6 documents done, not from zero
    assert_same_store(store, reference)


def test_overwrite_with_other_settings_starts_afresh(tiny_bert, tmp_path):
    store = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError):
        _extract(tiny_bert, store, callback=lambda done, total: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(StoreError, match="different settings"):
        extract(OTHER_TEXTS, model=tiny_bert[0], tokenizer=tiny_bert[1], store=store, progress=False, device="cpu")
    corpus = extract(
        OTHER_TEXTS,
        model=tiny_bert[0],
        tokenizer=tiny_bert[1],
        store=store,
        progress=False,
        device="cpu",
        overwrite=True,
    )
    assert corpus.ids == ["doc-0000", "doc-0001"]


def _run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory) -> Path:
    """``attviz convert`` of the reference store, uninterrupted."""
    out = tmp_path_factory.mktemp("converted") / "x.zarr"
    assert main(["convert", str(reference), "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("stage", ["document@2", "consolidate"])
def test_c_a_failed_convert_to_a_store_leaves_nothing(reference, converted, tmp_path, monkeypatch, capsys, stage):
    """Was: a failed ``attviz convert -o X.zarr`` left ``X.zarr.partial/``."""
    out = tmp_path / "x.zarr"
    monkeypatch.setenv(faults.VARIABLE, f"{stage}:enospc")
    faults.reset()
    code, err = _run(capsys, "convert", reference, "-o", out)
    assert code == 1 and "No space left on device" in err and "nothing was written" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.delenv(faults.VARIABLE)
    assert _run(capsys, "convert", reference, "-o", out)[0] == 0
    assert_same_store(out, converted)


def _limited(limit: int):
    def preexec() -> None:  # a real failure of the OS: writes beyond `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return preexec


def _attviz(*argv, fault: str | None = None, limit: int | None = None, timeout: float = 300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(faults.VARIABLE, None)
    if fault:
        env[faults.VARIABLE] = fault
    return subprocess.run(
        [sys.executable, "-m", "attviz.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        preexec_fn=_limited(limit) if limit else None,
    )


def test_d_convert_to_netcdf_on_a_full_disk_is_a_clean_error(reference, tmp_path):
    """Was: a segmentation fault inside h5py (h5netcdf's cleanup after a failed write) and a temporary
    file left behind. Files over 20 kB fail to grow, as on a full disk."""
    out = tmp_path / "x.nc"
    result = _attviz("convert", reference, "-o", out, limit=20_000)
    assert result.returncode == 1, result.stderr
    assert "could not write" in result.stderr and "nothing was written" in result.stderr
    assert "Traceback" not in result.stderr and "Segmentation" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_in_process_netcdf_on_a_full_disk_is_a_clean_error(reference, tmp_path):
    """Was: ``Corpus.to_netcdf`` in the calling process (the explorer's download, a notebook) crashed it
    inside h5py on a full disk. A corpus of this size is built in memory and written by Python."""
    out = tmp_path / "x.nc"
    code = (
        "import sys\nfrom attviz import Corpus\nfrom attviz.errors import StoreError\n"
        f"try:\n    Corpus.open({str(reference)!r}).to_netcdf({str(out)!r})\n"
        "except StoreError as exc:\n    print('refused:', exc)\n    sys.exit(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=_limited(20_000), timeout=300
    )
    assert result.returncode == 3, result.stderr[-2000:]  # not -11 (SIGSEGV)
    assert "File too large" in result.stdout and "nothing was written" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("stage", NETCDF_STAGES)
def test_netcdf_write_failure_leaves_nothing(reference, tmp_path, monkeypatch, stage):
    from attviz.readers.netcdf import write_netcdf

    out = tmp_path / "x.nc"
    write_netcdf(Corpus.open(reference), out)
    before = out.read_bytes()
    monkeypatch.setenv(faults.VARIABLE, f"{stage}:enospc")
    faults.reset()
    with pytest.raises(StoreError, match=r"No space left on device.*nothing was written"):
        write_netcdf(Corpus.open(reference), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nc"] and out.read_bytes() == before


# -- the quick mode: SIGKILL and a full disk at each stage, then a rerun ----------------------------------
@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
@pytest.mark.parametrize("stage", STORE_STAGES)
def test_sigkill_at_each_stage_of_extraction(tiny_bert, reference, old_store, tmp_path, monkeypatch, stage, overwrite):
    if not overwrite and stage == "rename":
        pytest.skip("without a store to replace, the rename is one os.replace")
    if overwrite and not SWEEP and stage not in ("document@3", "rename", "renamed"):
        pytest.skip("in the sweep (ATTVIZ_FAULT_SWEEP=1)")
    store = tmp_path / "s.zarr"
    if overwrite:
        _copy_old(old_store, store)
    status = _killed_child(stage, lambda: _extract(tiny_bert, store, overwrite=overwrite))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"the fault {stage} never fired"
    REPORT["faults"] += 1
    if overwrite and stage not in ("rename", "renamed"):  # the old store stays readable until the new one is done
        assert Corpus.open(store).ids == ["doc-0000", "doc-0001"]
    recorded = _recorded(store)
    computed = _counting(monkeypatch)
    _extract(tiny_bert, store, overwrite=overwrite)
    lost = sum(computed) - (len(TEXTS) - recorded)
    REPORT["lost"] += lost
    assert lost == 0, f"{lost} finished documents were computed again"
    assert_same_store(store, reference)


@pytest.mark.parametrize("stage", ["document@3", "progress@2", "table", "tokens", "consolidate", "rename", "renamed"])
def test_full_disk_at_each_stage_of_extraction(tiny_bert, reference, old_store, tmp_path, monkeypatch, stage):
    store = tmp_path / "s.zarr"
    _copy_old(old_store, store)
    monkeypatch.setenv(faults.VARIABLE, f"{stage}:enospc")
    faults.reset()
    if stage == "renamed":  # the new store is in place: failing to tidy up after it is no error
        with pytest.warns(UserWarning, match="complete, but its job files are left"):
            _extract(tiny_bert, store, overwrite=True)
    else:
        with pytest.raises(AttvizError, match="No space left on device"):
            _extract(tiny_bert, store, overwrite=True)
    REPORT["faults"] += 1
    if stage != "renamed":  # (after the rename the new store is in place; a rerun removes the job files)
        assert Corpus.open(store).ids == ["doc-0000", "doc-0001"]  # the old store is untouched
        assert not list(tmp_path.glob("s.zarr.old-*"))
    monkeypatch.delenv(faults.VARIABLE)
    recorded = _recorded(store)
    computed = _counting(monkeypatch)
    _extract(tiny_bert, store, overwrite=True)
    lost = sum(computed) - (len(TEXTS) - recorded)
    REPORT["lost"] += lost
    assert lost == 0
    assert_same_store(store, reference)


def test_killed_while_tidying_up_after_the_rename(tiny_bert, reference, tmp_path, monkeypatch):
    """The store took its place and lost its progress file; its settings say whose it is: the rerun
    computes nothing and removes what is left."""
    store = tmp_path / "s.zarr"
    monkeypatch.setenv(faults.VARIABLE, "renamed:enospc")
    faults.reset()
    with pytest.warns(UserWarning):
        _extract(tiny_bert, store)
    (store / PROGRESS).unlink()
    monkeypatch.delenv(faults.VARIABLE)
    computed = _counting(monkeypatch)
    _extract(tiny_bert, store)
    assert sum(computed) == 0
    assert_same_store(store, reference)


def test_truncated_progress_line_does_not_swallow_the_next_record(tmp_path):
    """A full disk can cut the last progress line short; the next record must start a line of its own."""
    store = tmp_path / "s.zarr"
    writer = StoreWriter(store, fingerprint="job")
    writer.close()
    with open(partial_path(store) / PROGRESS, "a") as handle:
        handle.write('{"index": 0, "group": "d0000')
    writer = StoreWriter(store, fingerprint="job")
    writer.add_record({"index": 0, "group": "d000000", "row": {}, "kinds": [], "tokens": {}})
    writer.close()
    assert StoreWriter(store, fingerprint="job").done == {0}


def test_sigkill_of_attviz_convert_resumes(reference, converted, tmp_path, capsys):
    """A real ``attviz convert`` process killed after writing the table; the same command finishes it."""
    out = tmp_path / "x.zarr"
    result = _attviz("convert", reference, "-o", out, fault="table")
    assert result.returncode == -signal.SIGKILL, result.stderr
    REPORT["faults"] += 1
    assert not out.exists() and partial_path(out).is_dir()
    assert _run(capsys, "convert", reference, "-o", out)[0] == 0
    assert_same_store(out, converted)


# -- the full sweep (by hand: ATTVIZ_FAULT_SWEEP=1) ------------------------------------------------------
sweep = pytest.mark.skipif(not SWEEP, reason="the full fault sweep runs with ATTVIZ_FAULT_SWEEP=1")


@pytest.fixture(scope="module")
def model_dir(tiny_bert, tmp_path_factory) -> Path:
    model, tok = tiny_bert
    path = tmp_path_factory.mktemp("models") / "tiny-bert"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cli_reference(model_dir, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cli")
    source = folder / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = folder / "ref.zarr"
    result = _attviz(*_extract_args(source, out, model_dir))
    assert result.returncode == 0, result.stderr
    return source, out


def _extract_args(source: Path, out: Path, model_dir: Path) -> list:
    return ["extract", source, "-o", out, "--model", model_dir, "--device", "cpu", "--quiet", "--batch-size", BATCH]


@sweep
@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
@pytest.mark.parametrize("action", ["kill", "enospc"])
@pytest.mark.parametrize("stage", STORE_STAGES)
def test_sweep_attviz_extract(model_dir, cli_reference, old_store, tmp_path, stage, action, overwrite):
    source, reference = cli_reference
    out = tmp_path / "s.zarr"
    args = _extract_args(source, out, model_dir) + (["--overwrite"] if overwrite else [])
    if overwrite:
        _copy_old(old_store, out)
    result = _attviz(*args, fault=stage if action == "kill" else f"{stage}:enospc")
    REPORT["faults"] += 1
    if action == "kill":
        assert result.returncode == -signal.SIGKILL, result.stderr
    elif stage == "renamed":  # the store is in place; the job files are left (with a warning) for the rerun
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1 and "No space left on device" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "run the same command again" in result.stderr
    if stage != "renamed" and not (stage == "rename" and action == "kill" and overwrite):
        if overwrite:  # the old store stays readable until the new one is complete
            assert Corpus.open(out).ids == ["doc-0000", "doc-0001"]
        else:  # nothing under the target's name
            assert not out.exists()
    kept, since = _kept_groups(out)
    result = _attviz(*args)
    assert result.returncode == 0, result.stderr
    assert_same_store(out, reference)
    lost = _rewritten(out, kept, since)
    REPORT["lost"] += lost
    assert lost == 0


@sweep
@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
@pytest.mark.parametrize("action", ["kill", "enospc"])
@pytest.mark.parametrize("stage", STORE_STAGES + NETCDF_STAGES)
def test_sweep_attviz_convert(reference, converted, netcdf_reference, tmp_path, stage, action, overwrite):
    import shutil

    netcdf = stage.startswith("netcdf")
    out = tmp_path / ("x.nc" if netcdf else "x.zarr")
    expected = netcdf_reference if netcdf else converted
    if overwrite:  # an older output to replace
        (shutil.copyfile if netcdf else shutil.copytree)(expected, out)
        before = out.read_bytes() if netcdf else _files(out)
    args = ["convert", reference, "-o", out] + (["--overwrite"] if overwrite else [])
    result = _attviz(*args, fault=stage if action == "kill" else f"{stage}:enospc")
    REPORT["faults"] += 1
    if netcdf and stage != "netcdf-rename":  # the writer is a child process: its death is a clean error
        assert result.returncode == 1 and "nothing was written" in result.stderr, result.stderr
    elif action == "kill":
        assert result.returncode == -signal.SIGKILL, result.stderr
    elif stage == "renamed":
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1 and "No space left on device" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    if overwrite and stage != "renamed" and not (stage == "rename" and action == "kill"):
        assert (out.read_bytes() if netcdf else _files(out)) == before  # the old output is untouched
    if not overwrite and action == "enospc" and stage != "renamed":
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing under the target's name
    kept, since = _kept_groups(out)
    result = _attviz(*args)
    assert result.returncode == 0, result.stderr
    if not netcdf:
        lost = _rewritten(out, kept, since)
        REPORT["lost"] += lost
        assert lost == 0
    if netcdf:
        from attviz.readers import read

        assert not partial_path(out).exists()
        assert read(out).ids == read(expected).ids == Corpus.open(reference).ids
    else:
        assert_same_store(out, expected)


@pytest.fixture(scope="module")
def netcdf_reference(reference, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("netcdf") / "x.nc"
    assert main(["convert", str(reference), "-o", str(out)]) == 0
    return out


def test_zz_report():
    """The figures for the closing note of issue #14 (run last in this module)."""
    print(f"\nfault injection: {REPORT['faults']} faults injected, {REPORT['lost']} finished documents lost")
    assert REPORT["lost"] == 0
