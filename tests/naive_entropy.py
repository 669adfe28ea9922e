"""Naive references for ``dasd.entropy``: the textbook formulas on the full ``(..., V)`` tensor.

These materialise the whole log-softmax (in float32, or float64 for float64 input); they are the
ground truth for tests and the "naive" variant of ``benchmarks/bench_entropy.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _upcast(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def naive_entropy_and_logprob(
    logits: Tensor, token_ids: Tensor, *, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """H = -sum p log p of softmax(logits / T) and log p(token_ids), via one full log_softmax."""
    logp = F.log_softmax(_upcast(logits) / temperature, dim=-1)
    ent = -(logp.exp() * logp).sum(dim=-1)
    lp = logp.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)
    return ent, lp


def naive_reverse_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(softmax(student) || sg[softmax(teacher)]) per position, via full log_softmax."""
    logp = F.log_softmax(_upcast(student_logits), dim=-1)
    logq = F.log_softmax(_upcast(teacher_logits.detach()), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1)
