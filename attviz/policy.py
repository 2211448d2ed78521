"""What an extraction keeps: the storage policy.

Full float16 matrices cost layers × heads × T² × 2 bytes per document (38 MB for MiniLM at 512
tokens), and at scale the disk, not the model, limits extraction. A :class:`StoragePolicy` keeps

- the matrices (default), optionally only some layers and heads;
- named token-level aggregations (attention received, one query's row, entropy, ...), computed on
  the model's device from the full matrices before anything is copied to the host, stored per
  document as ``{kind}_vectors`` with dims ``(vector, layer, head, token)``;
- per-head summaries (``head_summary``: entropy, distance, share on special tokens, ...) as
  ``{kind}_summary`` with dims ``(layer, head, statistic)``.

A store without matrices still opens everywhere: the explorer colours tokens from the stored vectors
and recomputes one document's matrices with the model on demand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from attviz.corpus import SUMMARY, VECTORS
from attviz.errors import AttvizError

__all__ = ["SUMMARY", "VECTORS", "StoragePolicy", "parse_aggregation", "parse_indices"]
_ATTENTION_DIMS = ("layer", "head", "query", "key")


def parse_indices(text: str | Sequence[int] | None, what: str = "indices") -> tuple[int, ...] | None:
    """``"0,2-4"`` → ``(0, 2, 3, 4)`` (positions are non-negative); a sequence of ints passes through."""
    if text is None:
        return None
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if "-" in part:
                start, stop = part.split("-", 1)
                out.extend(range(int(start), int(stop) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise AttvizError(f"{what} takes comma-separated integers or ranges like 0,2-4, not {text!r}") from None
    return tuple(out)


def parse_aggregation(spec: str) -> tuple[str, dict[str, Any]]:
    """``"attention_from:query=-1"`` → ``("attention_from", {"query": -1})`` (values parsed as JSON)."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in (p.strip() for p in rest.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise AttvizError(f"aggregation {spec!r}: parameters are written name=value, not {item!r}")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return name.strip(), params


@dataclass(frozen=True)
class StoragePolicy:
    """What :func:`attviz.extract` keeps per document.

    Parameters
    ----------
    matrices
        Keep attention matrices (float16, or as the store's compression says).
    layers, heads
        Keep the matrices of only these layer / head positions (None: all). Vectors and summaries
        are always computed over every layer and head.
    vectors
        Token-level aggregations to store, by entry-point id with optional parameters:
        ``"attention_received"``, ``"attention_from:query=0"``, ``"entropy:normalised=true"``. Each must
        map ``(layer, head, query, key)`` to ``(layer, head, token)``.
    summary
        Store the ``head_summary`` statistics per layer and head.
    """

    matrices: bool = True
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    vectors: tuple[str, ...] = ()
    summary: bool = False
    _built: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", parse_indices(self.layers, "layers"))
        object.__setattr__(self, "heads", parse_indices(self.heads, "heads"))
        vectors = (self.vectors,) if isinstance(self.vectors, str) else tuple(self.vectors)
        object.__setattr__(self, "vectors", tuple(dict.fromkeys(v.strip() for v in vectors if v.strip())))
        if not (self.matrices or self.vectors or self.summary):
            raise AttvizError("the storage policy keeps nothing: keep matrices, vectors or a head summary")
        if not self.matrices and (self.layers is not None or self.heads is not None):
            raise AttvizError("layers/heads choose which matrices to keep, but the policy keeps no matrices")
        for what, values in (("layers", self.layers), ("heads", self.heads)):
            if values is not None and (not values or len(set(values)) != len(values) or min(values) < 0):
                raise AttvizError(f"{what} must be distinct non-negative positions, not {list(values)}")
        self.aggregations()  # unknown names and bad parameters fail now, not after the first batch

    def aggregations(self) -> dict[str, Any]:
        """``{spec: Aggregation}`` for :attr:`vectors`, checked to give ``(layer, head, token)``."""
        if "vectors" not in self._built:
            from attviz import aggregations

            built = {}
            for spec in self.vectors:
                name, params = parse_aggregation(spec)
                try:
                    agg = aggregations.get(name, **params)
                except KeyError:
                    known = ", ".join(sorted(aggregations.available()))
                    raise AttvizError(f"no aggregation {name!r} to store (installed: {known})") from None
                except Exception as exc:
                    raise AttvizError(f"aggregation {spec!r}: {exc}") from None
                out = tuple(agg.output_dims(_ATTENTION_DIMS))
                if out != ("layer", "head", "token"):
                    raise AttvizError(
                        f"{spec!r} gives dims {out}; a stored vector must give (layer, head, token) "
                        "(e.g. attention_received, attention_from, diagonal, entropy)"
                    )
                built[spec] = agg
            self._built["vectors"] = built
        return self._built["vectors"]

    def summary_aggregation(self) -> Any:
        if "summary" not in self._built:
            from attviz import aggregations

            self._built["summary"] = aggregations.get("head_summary")
        return self._built["summary"]

    def check(self, n_layers: int, n_heads: int) -> None:
        """Refuse layer/head positions the model does not have."""
        for what, values, n in (("layer", self.layers, n_layers), ("head", self.heads, n_heads)):
            if values is not None and max(values) >= n:
                raise AttvizError(f"{what} {max(values)} does not exist: the model has {n} {what}s (0..{n - 1})")

    def settings(self) -> dict[str, Any]:
        """JSON-safe description (part of the job fingerprint and of the store attrs)."""
        return {
            "matrices": self.matrices,
            "layers": list(self.layers) if self.layers is not None else None,
            "heads": list(self.heads) if self.heads is not None else None,
            "vectors": list(self.vectors),
            "summary": self.summary,
        }

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> StoragePolicy:
        settings = settings or {}
        return cls(
            matrices=bool(settings.get("matrices", True)),
            layers=settings.get("layers"),
            heads=settings.get("heads"),
            vectors=tuple(settings.get("vectors") or ()),
            summary=bool(settings.get("summary", False)),
        )

    def matrix_bytes_share(self, n_layers: int, n_heads: int) -> float:
        """The share of the full matrices' bytes this policy keeps."""
        if not self.matrices:
            return 0.0
        layers = len(self.layers) if self.layers is not None else n_layers
        heads = len(self.heads) if self.heads is not None else n_heads
        return layers * heads / max(n_layers * n_heads, 1)

    def describe(self) -> str:
        parts = []
        if self.matrices:
            which = []
            if self.layers is not None:
                which.append(f"layers {','.join(map(str, self.layers))}")
            if self.heads is not None:
                which.append(f"heads {','.join(map(str, self.heads))}")
            parts.append("matrices" + (f" ({'; '.join(which)})" if which else ""))
        if self.vectors:
            parts.append("vectors " + ", ".join(self.vectors))
        if self.summary:
            parts.append("head summary")
        return " + ".join(parts)
