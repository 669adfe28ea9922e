"""Small random-init Qwen3 models for tests of the generation and scoring code paths."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM


def random_qwen3(
    tokenizer: PreTrainedTokenizerFast,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    intermediate_size: int | None = None,
    num_hidden_layers: int = 2,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    head: type[PreTrainedModel] = Qwen3ForCausalLM,
    **config: Any,
) -> PreTrainedModel:
    """A random Qwen3 over ``tokenizer``'s vocabulary, deterministic in ``seed``, in eval mode:
    4 attention heads, 2 key/value heads, an MLP ``intermediate_size`` wide (default
    ``2 * hidden_size``); ``head`` is the model class (``Qwen3ForTokenClassification`` for a
    PRM, with ``num_labels`` among the further ``config`` settings).

    Untied embeddings by default: a tied random model mostly repeats the prompt's last
    character under greedy decoding, an untied one produces varied text and emits EOS.
    """
    qwen3 = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size if intermediate_size is None else intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **config,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return head(qwen3).eval()
