"""Shared fixtures: tiny random models built from configs, and the bundled MiniLM."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")

TEXTS = [
    "The cat sat on the mat.",
    "Markets rally as the central bank cuts interest rates by half a point.",
    "Unbelievable photosynthesis results!",
    "A much longer sentence about football, tennis and the weather in the north of the country today.",
    "Hi.",
]


@pytest.fixture(scope="session")
def bert_tokenizer():
    from transformers import AutoTokenizer

    from attviz.models import bundled_model_path

    return AutoTokenizer.from_pretrained(bundled_model_path())


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


@pytest.fixture(scope="session")
def tiny_bert(bert_tokenizer):
    """A 2-layer, 3-head random BERT with the MiniLM WordPiece vocabulary."""
    from transformers import BertConfig, BertModel

    _seeded(0)
    config = BertConfig(
        vocab_size=bert_tokenizer.vocab_size,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=32,
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    return BertModel(config).eval(), bert_tokenizer


@pytest.fixture(scope="session")
def tiny_bert_classifier(bert_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    _seeded(1)
    config = BertConfig(
        vocab_size=bert_tokenizer.vocab_size,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        num_labels=3,
        id2label={0: "neg", 1: "neutral", 2: "pos"},
        label2id={"neg": 0, "neutral": 1, "pos": 2},
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config).eval(), bert_tokenizer


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style) trained in memory on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXTS * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", model_max_length=96
    )


@pytest.fixture(scope="session")
def tiny_gpt2(bpe_tokenizer):
    from transformers import GPT2Config, GPT2Model

    _seeded(2)
    config = GPT2Config(
        vocab_size=len(bpe_tokenizer),
        n_embd=24,
        n_layer=2,
        n_head=3,
        n_positions=96,
        attn_implementation="eager",
    )
    return GPT2Model(config).eval(), bpe_tokenizer


@pytest.fixture(scope="session")
def tiny_t5(bert_tokenizer):
    """A random 2+2-layer T5 using the WordPiece vocabulary (pad 0 doubles as decoder start)."""
    from transformers import T5Config, T5ForConditionalGeneration

    _seeded(3)
    config = T5Config(
        vocab_size=bert_tokenizer.vocab_size,
        d_model=24,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=3,
        decoder_start_token_id=bert_tokenizer.pad_token_id,
        pad_token_id=bert_tokenizer.pad_token_id,
        eos_token_id=bert_tokenizer.sep_token_id,
        attn_implementation="eager",
    )
    return T5ForConditionalGeneration(config).eval(), bert_tokenizer


@pytest.fixture(scope="session")
def minilm():
    """The real bundled all-MiniLM-L6-v2, loaded once."""
    from attviz.models import load_model

    return load_model(None, device="cpu")
