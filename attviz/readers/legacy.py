"""Reader and writer for the original AttViz JSON format (per-token attention vectors).

The format (AttViz, Škrlj et al. 2020, https://arxiv.org/abs/2005.05716) is an array of instances
``{text, sets: [{tokens, attention_vectors: [{name, vectors, color?, visible?}]}],
output_activations: [{value, name?}], name?, hilight?}``; values are numbers or numeric strings. An
older variant is an object keyed ``"0"``, ``"1"``, ... instead of an array.

Each instance becomes a :class:`~attviz.Document` with one ``"vectors"`` array ``(vector, token)``.
Token offsets are found like the original does: walk the tokens in order and look each one up with
``str.find`` in the text after the previous token's end (a leading ``##`` is stripped first); a
token that is not found gets ``start == end ==`` the previous end and the walk goes on.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from attviz.atomic import write_text
from attviz.corpus import Corpus, Document, token_frame, vector_array
from attviz.errors import InputError
from attviz.readers.base import Reader

SPECIAL_TOKENS = frozenset(
    {
        "[CLS]", "[SEP]", "[PAD]", "[MASK]",
        "<s>", "</s>", "<pad>", "<mask>", "<cls>", "<sep>", "<bos>", "<eos>",
        "<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>",
    }
)  # fmt: skip
_GENERATED_ID = re.compile(r"doc-\d{4,}")
_FORMAT = "an AttViz JSON file: an array of {text, sets, output_activations} instances"


def is_special_token(token: str) -> bool:
    """Whether a token is a tokenizer's structural token ([CLS], </s>, <|endoftext|>, ...)."""
    return token in SPECIAL_TOKENS or (token.startswith("<|") and token.endswith("|>") and len(token) > 4)


def align_tokens(
    tokens: Sequence[str], text: str, *, markers: Sequence[str] = ("##",), ignore_case: bool = False
) -> tuple[list[int], list[int]]:
    """Character ``(starts, ends)`` of tokens in ``text``, found in order as in the original AttViz.

    Each token, with a leading marker (``##``) stripped, is searched with :meth:`str.find` from the
    previous token's end; one that is not found (or is empty) gets ``start == end ==`` that end.
    ``ignore_case`` matches case-insensitively (when lower-casing keeps the text's length).
    """
    haystack = text
    if ignore_case and len(text.lower()) == len(text):
        haystack = text.lower()
    else:
        ignore_case = False
    starts: list[int] = []
    ends: list[int] = []
    position = 0
    for token in tokens:
        needle = token
        for marker in markers:
            if needle.startswith(marker) and len(needle) > len(marker):
                needle = needle[len(marker) :]
                break
        if ignore_case:
            needle = needle.lower()
        found = haystack.find(needle, position) if needle else -1
        if found < 0:
            starts.append(position)
            ends.append(position)
        else:
            position = found + len(needle)
            starts.append(found)
            ends.append(position)
    return starts, ends


def wordpiece_words(tokens: Sequence[str], special: Sequence[bool]) -> list[int]:
    """Word index of each token: a new word unless the token starts with ``##``; -1 when special."""
    words: list[int] = []
    current = -1
    for token, is_special in zip(tokens, special, strict=True):
        if is_special:
            words.append(-1)
            continue
        if not (token.startswith("##") and current >= 0):
            current += 1
        words.append(current)
    return words


def _kind(value: Any) -> str:
    """The JSON type name of a parsed value (for error messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _fast_floats(data: list) -> list[float] | None:
    """Numbers and numeric strings as floats, or None when a value needs a closer look."""
    if not all(type(v) in (str, float, int) for v in data):
        return None
    try:
        row = [float(v) for v in data]
    except (ValueError, OverflowError):
        return None
    if any(math.isinf(v) for v in row) or any(type(v) is str and "_" in v for v in data):
        return None
    return row


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "boolean": lambda v: isinstance(v, bool),
    "name": lambda v: isinstance(v, str | int) and not isinstance(v, bool),
    "any": lambda v: True,
}
_REQUIRED = object()
_NUMBER = 'a number or a numeric string ("NaN" for a missing value)'


class _Parser:
    """Validate and convert one parsed file; every error names the file and the field path."""

    def __init__(self, file: str | None, set_index: int):
        self.file, self.set_index = file, set_index
        self.other_sets: list[str] = []

    def error(self, message: str, field: str | None, expected: str | None = None) -> InputError:
        return InputError(message, file=self.file, field=field, expected=expected)

    def check(self, value: Any, at: str, check: str, expected: str, what: str) -> Any:
        if not _CHECKS[check](value):
            raise self.error(f"{what} is {_kind(value)}", at, expected)
        return value

    def get(self, obj: dict, key: str, where: str, check: str, expected: str, default=_REQUIRED):
        """``obj[key]`` checked to be of one JSON type (``default`` when absent, else an error)."""
        if key not in obj:
            if default is _REQUIRED:
                raise self.error("required field is missing", f"{where}.{key}", expected)
            return default
        return self.check(obj[key], f"{where}.{key}", check, expected, key)

    def number(self, value: Any, at: str, *, allow_nan: bool) -> float:
        result = None
        if isinstance(value, str) and "_" not in value:
            with contextlib.suppress(ValueError):
                result = float(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                result = float(value)
            except OverflowError:
                result = math.inf  # an integer too large for a float: not finite
        elif isinstance(value, float):
            result = value
        expected = _NUMBER if allow_nan else "a finite number"
        if result is None:
            what = f"{value!r} is" if isinstance(value, str) else f"is {_kind(value)},"
            raise self.error(f"value {what} not a number", at, expected)
        if math.isinf(result) or (math.isnan(result) and not allow_nan):
            raise self.error(f"value {value!r} is not finite", at, expected)
        return result

    def instance(self, raw: Any, where: str, index: int) -> tuple[Document, str | None]:
        self.check(raw, where, "object", "an object {text, sets, output_activations}", "instance")
        text = self.get(raw, "text", where, "string", "a string")
        sets = self.get(raw, "sets", where, "array", "an array of {tokens, attention_vectors}")
        if len(sets) <= self.set_index:
            raise self.error(
                f"has {len(sets)} set(s); cannot import set {self.set_index}",
                f"{where}.sets",
                f"at least {self.set_index + 1} set(s)",
            )
        if len(sets) > 1:
            self.other_sets.append(where)
        meta: dict[str, Any] = {}
        at = f"{where}.sets[{self.set_index}]"
        values, tokens, names = self.set(sets[self.set_index], at, meta)
        special = [is_special_token(t) for t in tokens]
        starts, ends = align_tokens(tokens, text)
        frame = token_frame(tokens, wordpiece_words(tokens, special), starts, ends, special)
        probabilities = self.activations(raw, where)
        name = self.get(raw, "name", where, "name", "a string", None)
        if name is not None:
            meta["name"] = name = str(name)
        if "hilight" in raw:
            meta["hilight"] = self.get(raw, "hilight", where, "object", "an object {block, vectors}")
        doc = Document(
            id=f"doc-{index:04d}",
            text=text,
            arrays={"vectors": vector_array(values, frame, names)},
            prediction=max(probabilities, key=probabilities.__getitem__) if probabilities else None,
            probabilities=probabilities or None,
            meta=meta,
        )
        return doc, name

    def set(self, raw: Any, where: str, meta: dict) -> tuple[np.ndarray, list[str], list[str]]:
        self.check(raw, where, "object", "an object {tokens, attention_vectors}", "set")
        tokens = self.get(raw, "tokens", where, "array", "an array of token strings")
        for i, token in enumerate(tokens):
            self.check(token, f"{where}.tokens[{i}]", "string", "a string", "token")
        vectors = self.get(raw, "attention_vectors", where, "array", "an array of {name, vectors}")
        for key in ("name", "visible"):
            if key in raw:
                meta[f"set_{key}"] = raw[key]
        values = np.empty((len(vectors), len(tokens)), dtype=np.float32)
        names: list[str] = []
        colors: dict[str, str] = {}
        visible: dict[str, bool] = {}
        for j, vector in enumerate(vectors):
            at = f"{where}.attention_vectors[{j}]"
            self.check(vector, at, "object", "an object {name, vectors}", "vector")
            name = str(self.get(vector, "name", at, "name", "a string", f"attention_vectors_{j}"))
            name = f"{name}#{j}" if name in names else name
            names.append(name)
            if "color" in vector:
                colors[name] = self.get(vector, "color", at, "string", 'a colour like "#1f77b4"')
            if "visible" in vector:
                visible[name] = self.get(vector, "visible", at, "boolean", "true or false")
            data = self.get(vector, "vectors", at, "array", "an array of numbers, one per token")
            if len(data) != len(tokens):
                raise self.error(
                    f"vector has {len(data)} values but the set has {len(tokens)} tokens",
                    f"{at}.vectors",
                    f"{len(tokens)} values, one per token",
                )
            row = _fast_floats(data)
            if row is None:  # find the bad value and say which
                at += ".vectors"
                row = [self.number(v, f"{at}[{i}]", allow_nan=True) for i, v in enumerate(data)]
            values[j] = row
        if colors:
            meta["vector_colors"] = colors
        if visible:
            meta["vector_visible"] = visible
        return values, list(tokens), names

    def activations(self, raw: dict, where: str) -> dict[str, float]:
        items = self.get(raw, "output_activations", where, "array", "an array of {value, name}", [])
        probabilities: dict[str, float] = {}
        for i, item in enumerate(items):
            at = f"{where}.output_activations[{i}]"
            self.check(item, at, "object", "an object {value, name}", "activation")
            value = self.number(self.get(item, "value", at, "any", "a probability"), f"{at}.value", allow_nan=False)
            if not 0.0 <= value <= 1.0 + 1e-6:
                raise self.error(
                    f"probability {value} is outside [0, 1]",
                    f"{at}.value",
                    "a probability in [0, 1]",
                )
            name = str(self.get(item, "name", at, "name", "a class name string", f"Class {i}"))
            if name in probabilities:
                raise self.error(f"class {name!r} appears twice", f"{at}.name", "distinct class names")
            probabilities[name] = value
        return probabilities


def parse_attviz_json(data: Any, *, file: str | None = None, set_index: int = 0) -> Corpus:
    """Convert already-parsed AttViz JSON (a list, or a dict keyed "0", "1", ...) into a Corpus."""
    parser = _Parser(file, set_index)
    if isinstance(data, dict):
        if "sets" in data or "text" in data:
            raise parser.error("the top level is a single instance", None, "an array of instances: wrap it in [ ]")
        entries = []
        for key in data:
            if not (isinstance(key, str) and key.isdigit()):
                raise parser.error("key is not an instance number", f'["{key}"]', 'keys "0", "1", ...')
            entries.append((int(key), f'["{key}"]', data[key]))
        entries.sort(key=lambda entry: entry[0])
    elif isinstance(data, list):
        entries = [(i, f"[{i}]", item) for i, item in enumerate(data)]
    else:
        raise parser.error(f"the top level is {_kind(data)}", None, _FORMAT)
    parsed = [parser.instance(raw, where, i) for i, (_, where, raw) in enumerate(entries)]
    names = [name for _, name in parsed if name is not None]
    unique = {name for name in names if names.count(name) == 1}
    used: set[str] = set(unique)
    documents = []
    for doc, name in parsed:
        if name in unique:
            doc.id = name
        else:
            base, k = doc.id, 1
            while doc.id in used:
                doc.id, k = f"{base}-{k}", k + 1
            used.add(doc.id)
        documents.append(doc)
    notes = []
    if parser.other_sets:
        listed = ", ".join(parser.other_sets[:10]) + (" ..." if len(parser.other_sets) > 10 else "")
        notes.append(
            f"{len(parser.other_sets)} instance(s) have more than one set ({listed}); only set "
            f"{set_index} was imported as 'vectors' (read again with set_index=N for another)"
        )
    attrs = {"source_format": "attviz-json", "set_index": set_index, "notes": notes}
    if file:
        attrs["source_file"] = os.path.basename(file)
    return Corpus(documents, attrs=attrs)


class AttVizJSONReader(Reader):
    """The original AttViz JSON format: per-token attention vectors and class probabilities."""

    description: ClassVar[str] = "original AttViz JSON (instances with per-token attention vectors)"
    extensions: ClassVar[tuple[str, ...]] = (".json",)
    peek_bytes: ClassVar[int] = 1 << 20
    accepts_limits: ClassVar[bool] = True

    def guess_can_open(self, source: Any) -> bool:
        if not super().guess_can_open(source) or not os.path.isfile(source):
            return False
        with open(source, "rb") as handle:
            head = handle.read(self.peek_bytes)
        start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        return start in (b"[", b"{") and b'"sets"' in head

    def read(self, source: Any, *, set_index: int = 0, limits: Any = None, **kwargs: Any) -> Corpus:
        """Read a file (or already-parsed JSON data); ``set_index`` picks the set to import.

        ``limits`` (:class:`~attviz.limits.Limits`) bounds the nesting depth, documents and tokens.
        """
        from attviz.limits import default_limits

        limits = limits or default_limits()
        if not isinstance(source, str | os.PathLike):
            check_json(source, None, limits)
            return parse_attviz_json(source, set_index=set_index)
        file = os.fspath(source)
        try:
            raw = Path(file).read_bytes().decode("utf-8-sig")
        except FileNotFoundError as exc:
            raise InputError("no such file", file=file) from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8 text (byte {exc.start})", file=file, expected=_FORMAT) from exc
        depth = _bracket_depth(raw)
        if depth > limits.max_depth:
            raise InputError(
                f"JSON is nested {depth} levels deep, over the limit of {limits.max_depth}", file=file, expected=_FORMAT
            )
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                file=file,
                expected=_FORMAT,
            ) from exc
        except RecursionError as exc:
            raise InputError("JSON is nested too deeply to read", file=file, expected=_FORMAT) from exc
        except ValueError as exc:  # e.g. an integer over Python's digit limit
            raise InputError(f"not valid JSON: {exc}", file=file, expected=_FORMAT) from exc
        check_json(data, file, limits, strings=_SURROGATE_ESCAPE.search(raw) is not None)
        return parse_attviz_json(data, file=file, set_index=set_index)


def _bracket_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON text, outside strings (an upper bound is fine)."""
    # strings may hold brackets: drop them first (escaped quotes included)
    stripped = _STRINGS.sub("", text)
    depth = deepest = 0
    for match in _BRACKETS.finditer(stripped):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def check_json(data: Any, file: str | None, limits: Any, *, strings: bool = True) -> None:
    """Refuse parsed JSON that is nested too deeply, holds lone surrogates or is over the limits.

    ``strings=False`` skips the look for lone surrogates (the text had no ``\\uD800``-style escape).
    """
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    documents = len(data) if isinstance(data, list | dict) else 0
    if documents > limits.max_documents:
        raise InputError(f"has {documents:,} instances, over the limit of {limits.max_documents:,}", file=file)
    while stack:
        value, where, depth = stack.pop()
        if depth > limits.max_depth:
            raise InputError(
                f"nested {depth} levels deep, over the limit of {limits.max_depth}", file=file, field=where or None
            )
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            if len(value) > limits.max_tokens and where.endswith((".tokens", ".vectors")):
                raise InputError(
                    f"has {len(value):,} entries, over the limit of {limits.max_tokens:,} tokens",
                    file=file,
                    field=where,
                )
            items = enumerate(value)
        else:
            continue
        for key, item in items:
            if strings and isinstance(key, str) and _has_surrogate(key):
                raise InputError("a key holds a lone surrogate (invalid Unicode)", file=file, field=where or None)
            if isinstance(item, list | dict):
                at = f"{where}[{key}]" if isinstance(key, int) else (f"{where}.{key}" if where else f'["{key}"]')
                stack.append((item, at, depth + 1))
            elif strings and isinstance(item, str) and _has_surrogate(item):
                at = f"{where}[{key}]" if isinstance(key, int) else (f"{where}.{key}" if where else f'["{key}"]')
                raise InputError(
                    "holds a lone surrogate escape (\\ud800-\\udfff), which is not valid Unicode",
                    file=file,
                    field=at,
                    expected="text that is valid UTF-8",
                )


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _format_value(value: float) -> str:
    """A float32 as the original writes it: a string that parses back to the same float32."""
    return "NaN" if math.isnan(value) else repr(float(value))


def _legacy_name(name: str) -> str | int:
    """Vector names that are integers were written as JSON integers by the original."""
    return int(name) if name.isdigit() and str(int(name)) == name else name


def to_attviz_json(corpus: Corpus) -> list[dict[str, Any]]:
    """The corpus's ``"vectors"`` arrays as AttViz JSON instances (a list for ``json.dump``)."""
    instances = []
    for doc in corpus:
        if "vectors" not in doc.kinds:
            raise ValueError(
                f"document {doc.id!r} has no 'vectors' array (it has {doc.kinds}); only per-token "
                "vectors can be written in the AttViz format"
            )
        array = doc.vectors
        values = np.asarray(array.values, dtype=np.float32)
        meta = doc.meta
        colors, visible = meta.get("vector_colors", {}), meta.get("vector_visible", {})
        vectors = []
        for name, row in zip((str(v) for v in array["vector"].values), values, strict=True):
            vector: dict[str, Any] = {
                "name": _legacy_name(name),
                "vectors": [_format_value(v) for v in row.tolist()],
            }
            if name in colors:
                vector["color"] = colors[name]
            if name in visible:
                vector["visible"] = visible[name]
            vectors.append(vector)
        set_: dict[str, Any] = {
            "tokens": [str(t) for t in array["token_text"].values],
            "attention_vectors": vectors,
        }
        for key in ("name", "visible"):
            if f"set_{key}" in meta:
                set_[key] = meta[f"set_{key}"]
        instance: dict[str, Any] = {"text": doc.text, "sets": [set_]}
        instance["output_activations"] = [
            {"value": _format_value(p), "name": c} for c, p in (doc.probabilities or {}).items() if not math.isnan(p)
        ]
        if "name" in meta:
            instance["name"] = meta["name"]
        elif not _GENERATED_ID.fullmatch(doc.id):
            instance["name"] = doc.id
        if "hilight" in meta:
            instance["hilight"] = meta["hilight"]
        instances.append(instance)
    return instances


def write_attviz_json(corpus: Corpus, path: str | os.PathLike) -> None:
    """Write a vectors corpus as original AttViz JSON, atomically (numbers as strings)."""
    instances = to_attviz_json(corpus)
    write_text(path, json.dumps(instances, ensure_ascii=False))
