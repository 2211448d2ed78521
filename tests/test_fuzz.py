"""Property-based tests of every reader and of the upload path (issue #14, part 2).

For any input — a structured one built from each format's own description, or a real file with byte
ranges flipped, zeroed, cut or duplicated — reading either gives a Corpus whose documents all load,
or raises one :class:`~attviz.errors.InputError`: no other exception, and no hang (netCDF files and
stores are opened in a worker process under a timeout, and a worker that hangs is killed and its file
refused; every case is timed, and one that takes longer than the timeout allows counts as a hang).

Quick mode (the normal suite) runs a few hundred cases in all; ``ATTVIZ_FUZZ_CASES=10000`` runs that
many per test, ``ATTVIZ_FUZZ_SEED`` varies them, ``-s`` prints the outcome counts and
``ATTVIZ_FUZZ_REPORT=counts.json`` keeps them in a file as the run goes.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from attviz import Corpus  # noqa: E402
from attviz.errors import InputError  # noqa: E402
from attviz.limits import Limits  # noqa: E402
from attviz.readers import read  # noqa: E402
from attviz.uploads import open_upload  # noqa: E402
from tests.corpora import LEGACY_JSON, encoder_corpus, zipped_store  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning", "ignore:invalid value:RuntimeWarning")
CASES = int(os.environ.get("ATTVIZ_FUZZ_CASES", "0"))
SEED = int(os.environ.get("ATTVIZ_FUZZ_SEED", "0"))
LIMITS = Limits(timeout_s=float(os.environ.get("ATTVIZ_FUZZ_TIMEOUT_S", "10")))
REPORT = os.environ.get("ATTVIZ_FUZZ_REPORT")  # a JSON file of the outcome counts, kept up to date
SLOW = LIMITS.timeout_s + 20  # a case slower than this (worker start and kill included) counts as a hang
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def fuzz_settings(quick: int):
    return settings(
        max_examples=CASES or quick,
        deadline=None,
        database=None,
        derandomize=CASES == 0 and SEED == 0,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.target],
    )


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for name, counts in sorted(COUNTS.items()):
        print(
            f"\nfuzz {name}: {sum(counts.values())} inputs, " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )


def touch(corpus: Corpus) -> None:
    """Read everything a user can reach: the table, every document and every array."""
    assert isinstance(corpus, Corpus)
    _ = corpus.table
    for doc in corpus:
        _ = (doc.id, doc.text, doc.label, doc.prediction, doc.probabilities, doc.meta)
        for kind in doc.kinds:
            np.asarray(doc.get(kind).values)


def outcome(kind: str, run) -> str:
    """Run one case: 'read' or 'refused'; anything else fails the test (and is counted)."""
    started = time.monotonic()
    try:
        touch(run())
        result = "read"
    except InputError as exc:  # a worker that hung was killed: the server goes on, the file is refused
        result = "refused after a worker timeout" if "timed out" in str(exc) else "refused"
        assert "Traceback" not in str(exc)
    except BaseException:
        COUNTS[kind]["unhandled"] += 1
        if REPORT:
            Path(REPORT).write_text(json.dumps({k: dict(v) for k, v in COUNTS.items()}, indent=1))
        raise
    elapsed = time.monotonic() - started
    if elapsed > SLOW:
        result = "hang"
    COUNTS[kind][result] += 1
    if REPORT:  # by-hand runs: the counts so far, rewritten after each case
        Path(REPORT).write_text(json.dumps({k: dict(v) for k, v in COUNTS.items()}, indent=1))
    assert result != "hang", f"{kind}: a case took {elapsed:.1f} s (the timeout is {LIMITS.timeout_s:g} s)"
    return result


def upload(kind: str, name: str, data: bytes) -> str:
    with tempfile.TemporaryDirectory(prefix="attviz-fuzz-") as folder:
        return outcome(kind, lambda: open_upload(name, data, folder, limits=LIMITS))


# -- byte-level mutations ---------------------------------------------------------------------------


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """``original`` with 1-3 byte ranges flipped, zeroed, randomised, duplicated, cut out or truncated."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "zero", "random", "duplicate", "delete", "truncate"]))
        start = draw(st.integers(0, len(data) - 1))
        length = draw(st.sampled_from([1, 2, 4, 8, 64, 512, 4096]))
        stop = min(len(data), start + length)
        if op == "flip":
            data[start:stop] = bytes(b ^ 0xFF for b in data[start:stop])
        elif op == "zero":
            data[start:stop] = bytes(stop - start)
        elif op == "random":
            data[start:stop] = draw(st.binary(min_size=stop - start, max_size=stop - start))
        elif op == "duplicate":
            data[stop:stop] = data[start:stop]
        elif op == "delete":
            del data[start:stop]
        else:
            del data[start:]
    return bytes(data)


@pytest.fixture(scope="module")
def seeds(tiny_bert_classifier, tmp_path_factory) -> dict[str, bytes]:
    """Real files of every uploadable format, written by attviz (and the original's own JSON)."""
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    corpus = encoder_corpus(*tiny_bert_classifier)
    corpus.to_netcdf(folder / "seed.nc")
    instances = json.loads(LEGACY_JSON.read_text())[:2]  # the real file, two instances (its own style)
    buffer = io.BytesIO()
    first = corpus[0]
    np.savez(
        buffer,
        attention=np.asarray(first.get("self").values),
        tokens=np.array([str(t) for t in first.get("self")["query_text"].values], dtype=np.str_),
    )
    return {
        "nc": (folder / "seed.nc").read_bytes(),
        "zip": zipped_store(corpus, folder),
        "json": json.dumps(instances).encode(),
        "npz": buffer.getvalue(),
    }


def _mutation_test(fmt: str, name: str, quick: int):
    @fuzz_settings(quick)
    @seed(SEED)
    @given(data=st.data())
    def run(seeds, data):
        upload(f"mutated {fmt}", name, data.draw(mutated(seeds[fmt])))

    return run


test_mutated_legacy_json = _mutation_test("json", "example.json", 120)
test_mutated_netcdf = _mutation_test("nc", "corpus.nc", 20)
test_mutated_zipped_store = _mutation_test("zip", "store.zip", 20)
test_mutated_npz = _mutation_test("npz", "tensors.npz", 60)


@fuzz_settings(15)
@seed(SEED)
@given(data=st.data())
def test_mutated_files_inside_a_zipped_store(seeds, data):
    """One file of a store mutated, then zipped again (valid CRCs): what zarr and its codecs see."""
    with zipfile.ZipFile(io.BytesIO(seeds["zip"])) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    names = sorted(members)
    target = data.draw(st.sampled_from(names))
    members[target] = data.draw(mutated(members[target])) if members[target] else b"\x00"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in names:
            zf.writestr(name, members[name])
    upload("mutated store member", "store.zip", buffer.getvalue())


def test_seeds_read(seeds):
    for fmt, name in [("json", "a.json"), ("nc", "a.nc"), ("zip", "a.zip"), ("npz", "a.npz")]:
        assert upload(f"seed {fmt}", name, seeds[fmt]) in ("read", "refused")
    assert upload("seed nc", "a.nc", seeds["nc"]) == "read"
    assert upload("seed zip", "a.zip", seeds["zip"]) == "read"
    assert upload("seed json", "a.json", seeds["json"]) == "read"


# -- structured inputs: legacy JSON (attviz-original.md §1) -----------------------------------------

hostile_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "\ud800", "a\udfffb", "\x00", "[CLS]", "##", "<|endoftext|>", "\u202e", "🙂" * 3]),
)
valid_number = st.one_of(st.floats(0, 1), st.floats(0, 1).map(repr), st.just("NaN"))
numbers = st.one_of(
    valid_number,
    valid_number,
    valid_number,
    valid_number,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**400), 10**400),
    st.sampled_from(["NaN", "nan", "inf", "-Infinity", "1e999", "0.5", "1_0", "", " 0.1", "0x10"]),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), hostile_text)
anything = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def legacy_instance(draw):
    """One instance per attviz-original.md §1: well formed half the time, else with hostile values."""
    clean = draw(st.booleans())
    text_s = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8) if clean else hostile_text
    tokens = draw(st.lists(st.one_of(st.text(max_size=8), text_s), min_size=0, max_size=6))
    n = len(tokens) + (0 if clean else draw(st.sampled_from([0, 0, 0, 1, -1])))
    values = valid_number if clean else numbers
    vectors = [
        {
            "name": draw(st.integers(0, 3) if clean else st.one_of(st.integers(0, 3), hostile_text, anything)),
            "vectors": draw(st.lists(values, min_size=max(n, 0), max_size=max(n, 0))),
            **({"color": draw(text_s)} if draw(st.booleans()) else {}),
            **(
                {"visible": draw(st.booleans() if clean else st.one_of(st.booleans(), anything))}
                if draw(st.booleans())
                else {}
            ),
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    probability = st.floats(0, 1).map(repr) if clean else numbers
    classes = st.sampled_from(["pos", "neg", "sports"]) if clean else st.one_of(hostile_text, st.integers())
    instance = {
        "text": " ".join(tokens) if clean else draw(st.one_of(st.just(" ".join(tokens)), hostile_text, anything)),
        "sets": [{"tokens": tokens, "attention_vectors": vectors}],
        "output_activations": draw(
            st.lists(
                st.fixed_dictionaries({"value": probability, "name": classes}),
                max_size=3,
                unique_by=lambda a: a["name"],
            )
            if clean
            else st.lists(st.fixed_dictionaries({"value": probability, "name": classes}), max_size=3)
        ),
    }
    if not clean:
        for key in ("sets", "output_activations", "text"):
            if draw(st.integers(0, 9)) == 0:
                instance[key] = draw(anything)  # a field of the wrong type, or missing
            if draw(st.integers(0, 19)) == 0:
                del instance[key]
    if draw(st.booleans()):
        instance["name"] = draw(text_s if clean else st.one_of(hostile_text, st.integers(), anything))
    if draw(st.integers(0, 4)) == 0:
        instance["hilight"] = draw(anything)
    return instance


@st.composite
def legacy_file(draw) -> bytes:
    instances = draw(st.lists(legacy_instance(), min_size=0, max_size=3))
    top = draw(st.sampled_from(["array", "array", "dict", "other"]))
    data = (
        instances
        if top == "array"
        else {str(i): v for i, v in enumerate(instances)}
        if top == "dict"
        else draw(anything)
    )
    text = json.dumps(data, ensure_ascii=draw(st.booleans()), allow_nan=True)
    depth = draw(st.sampled_from([0, 0, 0, 0, 0, 0, 70, 5000]))
    if depth:
        text = text.replace("[", "[" * depth + "[", 1).replace("]", "]" + "]" * depth, 1)
    return text.encode("utf-8", "surrogatepass")


@fuzz_settings(150)
@seed(SEED)
@given(data=legacy_file())
def test_structured_legacy_json(data):
    upload("structured json", "example.json", data)


@fuzz_settings(60)
@seed(SEED)
@given(data=st.lists(legacy_instance(), max_size=2))
def test_structured_legacy_objects(data):
    outcome("structured json objects", lambda: read(data, reader="attviz-json"))


# -- structured inputs: tensors (.npz) ------------------------------------------------------------


@st.composite
def npz_file(draw) -> bytes:
    n = draw(st.integers(0, 5))
    shape = draw(
        st.sampled_from([(1, 1, n, n), (2, 2, n, n), (1, n, n), (n, n), (1, 1, n, n + 1), (0,), (1, 1, 1, 1, n, n)])
    )
    dtype = draw(st.sampled_from([np.float32, np.float16, np.float64, np.int32, np.bool_, np.complex64]))
    values = draw(st.sampled_from(["softmax", "nan", "inf", "negative", "zeros"]))
    array = np.random.default_rng(draw(st.integers(0, 99))).random(shape)
    array = {"nan": array * np.nan, "inf": array * np.inf, "negative": -array, "zeros": array * 0}.get(values, array)
    arrays = {"attention": array.astype(dtype)}
    tokens = draw(st.lists(hostile_text.filter(lambda t: "\x00" not in t), min_size=0, max_size=n + 1))
    arrays["tokens"] = np.array(tokens, dtype=np.str_)
    if draw(st.booleans()):
        arrays["text"] = np.array(draw(hostile_text.filter(lambda t: "\x00" not in t)), dtype=np.str_)
    if draw(st.booleans()):
        arrays["offsets"] = np.array(
            draw(st.lists(st.integers(-3, 30), min_size=0, max_size=2 * n + 2)), dtype=np.int64
        )
    for name in list(arrays):
        if draw(st.integers(0, 9)) == 0:
            del arrays[name]
    buffer = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buffer, **arrays)
    return buffer.getvalue()


@fuzz_settings(60)
@seed(SEED)
@given(data=npz_file())
def test_structured_npz(data):
    upload("structured npz", "tensors.npz", data)


# -- structured inputs: corpora written by attviz (netCDF, zarr, zipped zarr) ------------------------


@st.composite
def small_corpus(draw) -> Corpus:
    from tests.test_export import make_doc

    docs = []
    for i in range(draw(st.integers(1, 3))):
        n = draw(st.integers(3, 9))
        probabilities = draw(
            st.dictionaries(st.sampled_from(["pos", "neg", "sports"]), st.floats(0, 1) | st.just(math.nan), max_size=3)
        )
        words = draw(
            st.lists(
                st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=5),
                min_size=n - 2,
                max_size=n - 2,
            )
        )
        docs.append(
            make_doc(
                f"d{i}",
                n,
                layers=draw(st.integers(1, 2)),
                heads=draw(st.integers(1, 3)),
                seed=i,
                words=words,
                label=draw(st.sampled_from([None, "pos", "sports"])),
                probabilities=probabilities or None,
            )
        )
    return Corpus(docs)


@fuzz_settings(6)
@seed(SEED)
@given(corpus=small_corpus(), fmt=st.sampled_from(["nc", "zip"]))
def test_stores_written_by_attviz_read_back(corpus, fmt):
    with tempfile.TemporaryDirectory(prefix="attviz-fuzz-") as folder:
        if fmt == "nc":
            corpus.to_netcdf(Path(folder) / "c.nc")
            data = (Path(folder) / "c.nc").read_bytes()
        else:
            data = zipped_store(corpus, Path(folder))
    assert upload(f"structured {fmt}", f"corpus.{fmt}", data) == "read"


# -- upload names and archives ------------------------------------------------------------------------


@fuzz_settings(100)
@seed(SEED)
@given(
    name=st.one_of(st.text(max_size=300), st.sampled_from(["..", ".", "/", "a/../b", "C:\\x", "x" * 300, "\x00"])),
    suffix=st.sampled_from(["", ".json"]),
)
def test_upload_names(name, suffix):
    data = b'[{"text": "a", "sets": [{"tokens": ["a"], "attention_vectors": []}]}]'
    with tempfile.TemporaryDirectory(prefix="attviz-fuzz-") as folder:
        inner = Path(folder) / "uploads"
        outcome("upload names", lambda: open_upload(name + suffix, data, inner, limits=LIMITS))
        assert {p.name for p in Path(folder).iterdir()} <= {"uploads"}  # nothing written beside the upload folder


@st.composite
def archive(draw) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as zf:
        for _ in range(draw(st.integers(0, 4))):
            name = draw(
                st.one_of(
                    st.sampled_from(["store.zarr/zarr.json", "zarr.json", "a/../../x", "/abs", "table/x"]),
                    st.text(min_size=1, max_size=30),
                )
            )
            info = zipfile.ZipInfo(name)
            if draw(st.integers(0, 4)) == 0:
                info.external_attr = 0o120777 << 16
            zf.writestr(info, draw(st.binary(max_size=64)))
    return buffer.getvalue()


@fuzz_settings(60)
@seed(SEED)
@given(data=archive())
def test_structured_archives(data):
    upload("structured zip", "store.zip", data)
