"""Memory budgets: how many rows a pass may take so that its largest tensor fits a byte budget.

At the paper's sizes (Qwen3-1.7B: 28 layers, 8 KV heads of dim 128, V = 151,936, responses of
8,192 tokens) a fixed row count does not fit one GPU: 128 prompts x 8.3k tokens of KV cache is
~120 GB, and 32 x 8,193 x V float32 logits ~160 GB. Each pass here is sized from the bytes one
row needs instead:

- generation: the KV cache, ``kv_cache_bytes_per_token`` = 2 (K and V) x layers x KV heads x
  head dim x dtype bytes, times prompt + max_new_tokens per row;
- passes that hold logits (the reverse-KL teacher term, the ``grad_norm`` routing signal):
  ``logits_bytes_per_row`` = copies x T x V x 4 (float32);
- the ``attention`` routing signal (eager attention): ``attention_bytes_per_row`` = heads x L^2 x
  4 per layer's probabilities, times the copies eager attention makes (scores, softmax).

``rows_within(budget, bytes_per_row, cap)`` is then at least 1 (a single row that does not fit
still runs: there is nothing smaller to do) and at most ``cap``. The budgets are what the
configs call ``*_budget_gb``; they bound the named tensor, not the process (weights, optimizer
state and activations come on top).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "ATTENTION_COPIES",
    "GIB",
    "REVERSE_KL_LOGIT_COPIES",
    "attention_bytes_per_row",
    "generation_rows",
    "kv_cache_bytes_per_token",
    "logits_bytes_per_row",
    "rows_within",
]

GIB = 2**30
#: Float32 copies of a row's (T, V) logits a reverse-KL micro-step holds: the student logits,
#: their gradient and the teacher logits.
REVERSE_KL_LOGIT_COPIES = 3
#: (heads, L, L) tensors eager attention holds at once in one layer (scores and softmax).
ATTENTION_COPIES = 2


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def kv_cache_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes: 2 x layers x KV heads x head dim x ``dtype`` bytes.

    ``config`` is a ``transformers`` decoder config (``num_hidden_layers``,
    ``num_attention_heads``, optional ``num_key_value_heads`` and ``head_dim``).
    """
    c = _text_config(config)
    heads = c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * c.num_hidden_layers * kv_heads * head_dim * itemsize


def generation_rows(config: Any, dtype: torch.dtype, tokens_per_row: int, budget_bytes: float,
                    cap: int) -> int:
    """Prompts per generation batch whose KV cache (``tokens_per_row`` = prompt +
    max_new_tokens each) fits ``budget_bytes``: in ``[1, cap]``."""
    return rows_within(budget_bytes, kv_cache_bytes_per_token(config, dtype) * tokens_per_row, cap)


def logits_bytes_per_row(tokens: int, vocab: int, copies: int = 1) -> int:
    """Bytes of ``copies`` float32 ``(tokens, vocab)`` logits tensors."""
    return copies * tokens * vocab * 4


def attention_bytes_per_row(config: Any, length: int) -> int:
    """Bytes of one layer's float32 attention probabilities ``(heads, L, L)`` of one row, times
    ``ATTENTION_COPIES``."""
    return ATTENTION_COPIES * _text_config(config).num_attention_heads * length * length * 4


def rows_within(budget_bytes: float, bytes_per_row: int, cap: int) -> int:
    """Rows whose ``bytes_per_row`` each fit ``budget_bytes``: in ``[1, cap]``."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    if bytes_per_row <= 0:
        return cap
    return max(1, min(cap, int(budget_bytes // bytes_per_row)))
