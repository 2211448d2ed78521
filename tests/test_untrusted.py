"""Untrusted files (issue #14, parts 1 and 6): each failure found by hand or by the fuzzer is a test here.

A bad upload or a bad file given to ``attviz info`` is refused with one InputError naming the file;
a netCDF file that hangs HDF5 costs a worker process, not the server; archives are checked before
anything is unpacked; export survives NaN probabilities.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from attviz import Corpus
from attviz.errors import InputError
from attviz.limits import Limits
from attviz.readers import read
from attviz.uploads import open_upload
from tests.test_export import make_doc

FUZZ = Path(__file__).parent / "data" / "fuzz"
HANG_NC = FUZZ / "netcdf-zeroed-hang.nc.gz"  # fuzzed copies of an attviz .nc (netcdf-*hang.nc.gz) hang h5py
QUICK = Limits(timeout_s=8)


def small_corpus(n_docs: int = 3) -> Corpus:
    docs = [
        make_doc(f"d{i}", 8 + i, seed=i, label="pos", prediction="pos", probabilities={"pos": 0.7, "neg": 0.3})
        for i in range(n_docs)
    ]
    return Corpus(docs)


def legacy_instance(text: str = "a b", tokens=("a", "b"), vectors=("0.5", "0.5"), **extra) -> dict:
    return {
        "text": text,
        "sets": [{"tokens": list(tokens), "attention_vectors": [{"name": 0, "vectors": list(vectors)}]}],
        "output_activations": [{"value": "0.9", "name": "pos"}],
        **extra,
    }


def zipped(files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def zipped_store(corpus: Corpus, folder: Path, compression: int = zipfile.ZIP_STORED) -> bytes:
    corpus.save(folder / "store.zarr")
    files = {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted((folder / "store.zarr").rglob("*")) if p.is_file()
    }
    return zipped(files, compression)


# -- 1. a netCDF file that hangs h5py costs a worker, not the server -------------------------------


@pytest.mark.parametrize("fuzzed", sorted(FUZZ.glob("netcdf-*hang.nc.gz")), ids=lambda p: p.name)
def test_netcdf_that_hangs_h5py_times_out_in_a_worker(tmp_path, fuzzed):
    data = gzip.decompress(fuzzed.read_bytes())
    started = time.monotonic()
    with pytest.raises(InputError, match=r"hang\.nc: timed out after 8 s while reading") as info:
        open_upload("hang.nc", data, tmp_path, limits=QUICK)
    assert time.monotonic() - started < 60
    assert info.value.file == "hang.nc"


def test_attviz_info_on_a_hanging_netcdf_prints_one_line(tmp_path, monkeypatch, capsys):
    from attviz.cli import main

    path = tmp_path / "hang.nc"
    path.write_bytes(gzip.decompress(HANG_NC.read_bytes()))
    monkeypatch.setenv("ATTVIZ_TIMEOUT_S", "8")
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "timed out after 8 s" in err and "Traceback" not in err


def test_a_good_netcdf_is_validated_then_opened(tmp_path):
    small_corpus().to_netcdf(tmp_path / "ok.nc")
    corpus = read(tmp_path / "ok.nc", limits=QUICK)
    assert len(corpus) == 3 and corpus[2].get("self").shape == (2, 3, 10, 10)


# -- 2. unhandled exceptions from readers become one InputError -----------------------------------


def test_deeply_nested_json_is_refused(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    text = json.dumps([legacy_instance(hilight={"block": 0})]).replace('{"block": 0}', deep)
    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(InputError, match="nested 100002 levels deep, over the limit of 64") as info:
        read(path)
    assert info.value.file == str(path)
    with pytest.raises(InputError, match="nested"):
        open_upload("deep.json", text.encode(), tmp_path / "up")


def test_huge_integer_in_a_vector_is_refused(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps([legacy_instance(vectors=["0.5", "0.5"])]).replace('"0.5", "0.5"', "0.5, 1" + "0" * 400))
    with pytest.raises(InputError, match=r"not finite") as info:
        read(path)
    assert info.value.field == "[0].sets[0].attention_vectors[0].vectors[1]"


def test_lone_surrogate_is_refused(tmp_path):
    path = tmp_path / "surrogate.json"
    path.write_text(json.dumps([legacy_instance(text="a \ud800 b", tokens=("a", "b"))], ensure_ascii=True))
    with pytest.raises(InputError, match="lone surrogate") as info:
        read(path)
    assert info.value.field == "[0].text"


def test_corrupt_member_of_a_zipped_store_is_refused(tmp_path):
    data = bytearray(zipped_store(small_corpus(), tmp_path / "src"))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # a CRC error (BadZipFile) while unpacking
    with pytest.raises(InputError) as info:
        open_upload("store.zip", bytes(data), tmp_path / "up")
    assert info.value.file == "store.zip"


def test_corrupt_deflate_stream_is_refused(tmp_path):
    data = bytearray(zipped_store(small_corpus(), tmp_path / "src", zipfile.ZIP_DEFLATED))
    for offset in range(40, len(data) // 2, 997):  # scramble compressed data: zlib.error or a CRC error
        data[offset] ^= 0x5A
    with pytest.raises(InputError, match=r"store\.zip"):
        open_upload("store.zip", bytes(data), tmp_path / "up")


def test_corrupt_chunk_of_a_store_is_refused_not_a_codec_message(tmp_path):
    small_corpus().save(tmp_path / "bad.zarr")
    target = tmp_path / "bad.zarr" / "docs" / "d000001" / "self" / "c.0.0.0.0"  # a document's matrix chunk
    target.write_bytes(b"\x00" * target.stat().st_size)
    with pytest.raises(InputError, match=r"bad.zarr: document 1 \(d1\), array 'self': could not be read") as info:
        read(tmp_path / "bad.zarr", limits=QUICK)
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize("name", ["..", "../../etc/passwd", "x" * 300 + ".json", "a\x00b.json", "/abs/x.json"])
def test_unsafe_upload_names_are_refused(tmp_path, name):
    with pytest.raises(InputError, match="file name"):
        open_upload(name, b'[{"text": "a", "sets": []}]', tmp_path)
    assert not any(tmp_path.rglob("*.json"))


def test_plain_upload_name_with_a_folder_keeps_the_base_name(tmp_path):
    from tests.corpora import legacy_bytes

    corpus = open_upload("some/folder/example.json", legacy_bytes(), tmp_path)
    assert len(corpus) > 0


# -- limits checked before unpacking finishes ------------------------------------------------------


def _claim_size(data: bytes, size: int) -> bytes:
    """A zip whose central directory claims each member unpacks to ``size`` bytes."""
    data = bytearray(data)
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        data[at + 24 : at + 28] = struct.pack("<I", size)
        at = data.find(b"PK\x01\x02", at + 4)
    return bytes(data)


def test_zip_claiming_39_gib_is_refused_before_unpacking(tmp_path):
    data = _claim_size(zipped({"store.zarr/zarr.json": b"{}" * 1000}, zipfile.ZIP_DEFLATED), int(3.9 * 2**30))
    started = time.monotonic()
    with pytest.raises(InputError, match=r"unpacks to 3\.9 GiB, over the limit of 2\.0 GiB"):
        open_upload("bomb.zip", data, tmp_path)
    assert time.monotonic() - started < 5
    assert not list(tmp_path.rglob("zarr.json"))


def test_zip_bomb_over_the_expanded_limit_is_refused(tmp_path):
    data = zipped({"store.zarr/zarr.json": b"\x00" * (8 << 20)}, zipfile.ZIP_DEFLATED)
    assert len(data) < 64 << 10
    with pytest.raises(InputError, match=r"over the limit of 1\.0 MiB"):
        open_upload("bomb.zip", data, tmp_path, limits=Limits(max_expanded_bytes=1 << 20))


def test_member_unpacking_past_its_declared_size_stops(tmp_path):
    data = _claim_size(zipped({"store.zarr/zarr.json": b"\x00" * (4 << 20)}, zipfile.ZIP_DEFLATED), 100)
    with pytest.raises(InputError, match=r"bomb\.zip"):
        open_upload("bomb.zip", data, tmp_path)
    assert all(p.stat().st_size <= 1 << 20 for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".zip")


def test_zip_with_too_many_files_is_refused_from_its_directory(tmp_path):
    data = zipped({f"store.zarr/f{i}": b"" for i in range(2_001)})
    started = time.monotonic()
    with pytest.raises(InputError, match="holds 2,001 files, over the limit of 2,000"):
        open_upload("many.zip", data, tmp_path, limits=Limits(max_archive_files=2_000))
    assert time.monotonic() - started < 5
    assert not list(tmp_path.rglob("f1"))


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("../evil", "outside its folder"),
        ("/etc/evil", "absolute path"),
        ("a/" + "x" * 300, "over 255 bytes"),
        ("a\x01b", "control character"),
    ],
)
def test_unsafe_archive_member_names_are_refused(tmp_path, member, message):
    with pytest.raises(InputError, match=message):
        open_upload("evil.zip", _zip_with_raw_name(member.encode()), tmp_path / "up")
    assert not (tmp_path / "evil").exists()


def _zip_with_raw_name(name: bytes) -> bytes:
    """A one-member stored zip with exactly ``name`` (bytes) in both headers."""
    import zlib

    body = b"x"
    crc = zlib.crc32(body)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, 1, 1, len(name), 0) + name + body
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, crc, 1, 1, len(name), 0, 0, 0, 0, 0o100644 << 16, 0
    )
    central += name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + end


def test_symlink_in_an_archive_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        info = zipfile.ZipInfo("store.zarr/link")
        info.external_attr = (0o120777 << 16) | 0
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"):
        open_upload("link.zip", buffer.getvalue(), tmp_path)


def test_upload_over_max_bytes_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"over the upload limit of 1\.0 KiB"):
        open_upload("big.json", b" " * 2048, tmp_path, limits=Limits(max_bytes=1024))


def test_limits_from_the_environment():
    limits = Limits.from_env({"ATTVIZ_MAX_BYTES": "2e6", "ATTVIZ_TIMEOUT_S": "2.5"}, max_depth=10)
    assert (limits.max_bytes, limits.timeout_s, limits.max_depth) == (2_000_000, 2.5, 10)
    with pytest.raises(InputError, match="ATTVIZ_MAX_DEPTH"):
        Limits.from_env({"ATTVIZ_MAX_DEPTH": "deep"})


def test_zipped_store_upload_still_opens(tmp_path):
    corpus = open_upload("store.zip", zipped_store(small_corpus(), tmp_path / "src"), tmp_path / "up", limits=QUICK)
    assert len(corpus) == 3 and corpus[0].get("self").shape == (2, 3, 8, 8)


# -- 6. export and stats survive NaN probabilities and labels outside the model's label set ---------


def test_export_with_a_gold_label_outside_the_zero_shot_labels(tmp_path):
    from attviz.export import export_html
    from tests.test_export import parse_page

    docs = [
        make_doc("a", 6, label="sports", prediction="pos", probabilities={"pos": 0.7, "neg": 0.3}),
        make_doc("b", 6, seed=1, label="pos", prediction="pos", probabilities={"pos": float("nan"), "neg": 0.3}),
    ]
    Corpus(docs).save(tmp_path / "zs.zarr")
    corpus = read(tmp_path / "zs.zarr")
    assert np.isnan(corpus[0].probabilities["sports"])
    for source in (Corpus(docs), corpus):
        export_html(source, tmp_path / "page.html")
        manifest, _ = parse_page((tmp_path / "page.html").read_text())
        probabilities = dict(map(tuple, manifest["docs"][0]["probabilities"]))
        assert probabilities["pos"] == pytest.approx(0.7) and probabilities.get("sports") is None
    app = (Path(__file__).parents[1] / "attviz" / "export" / "app.js").read_text()
    assert 'p == null ? "–" : p.toFixed(3)' in app


def test_stats_with_a_gold_label_outside_the_labels(tmp_path):
    from attviz.cli import main

    docs = [
        make_doc(f"d{i}", 6, seed=i, label=["sports", "pos"][i % 2], prediction="pos", probabilities={"pos": 0.7})
        for i in range(6)
    ]
    Corpus(docs).save(tmp_path / "zs.zarr")
    assert main(["stats", str(tmp_path / "zs.zarr"), "-o", str(tmp_path / "report.html"), "--quiet"]) == 0
    assert (tmp_path / "report.html").stat().st_size > 0
