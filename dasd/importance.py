"""Sampler/scorer mismatch: truncated importance sampling between the rollout engine and the
HF scorer (paper section 2's PPO ratio assumes the tokens were sampled from π_θold itself).

With ``rollout_engine="vllm"`` the tokens come from vLLM's kernels (bf16, its own attention and
sampler), while π_old of the PPO ratio is rescored by the HF model (``dasd.trainer``, departure
3). The two distributions differ; the policy-gradient estimate is then biased unless each
token's loss is reweighted by π_old(y_t) / π_sampler(y_t). Following TRL's
``vllm_importance_sampling_correction`` (mode ``token_truncate``) and "truncated importance
sampling" (Yao et al., 2025, *Your efficient RL framework secretly brings you off-policy RL
training*), the weight is truncated from above:

    w_t = min(exp(log π_old(y_t) − log π_sampler(y_t)), C).

Multiplying the PPO per-token loss ``−min(r Â, clip(r) Â)`` by ``w_t ≥ 0`` equals using the
advantage ``w_t Â_t`` in it (the min and the clip commute with a non-negative scale), so the
trainer applies ``w`` to the advantages and ``dasd.losses`` stays unchanged.

Pure tensor math over padded ``(B, T)`` batches with a boolean ``mask``; positions outside
``mask`` are 1 in the weights and excluded from the gap; no ``.item()``.

Departures and choices:

1. Token-level truncation only (TRL also offers sequence-level and masking variants).
2. The sampler's log-probs must be vLLM's ``processed_logprobs`` (after temperature and top-p),
   so that top-p truncation is part of π_sampler and corrected for; with ``raw_logprobs`` the
   weight would ignore the truncation.
3. A token whose sampler log-prob is ``-inf`` or NaN (none was returned) gets weight 1 and is
   left out of the gap, as TRL treats a missing vLLM log-prob.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["logprob_gap", "truncated_is_weights"]


def _check(scorer_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> None:
    if scorer_logp.shape != sampler_logp.shape or scorer_logp.shape != mask.shape:
        raise ValueError(
            f"scorer_logp {tuple(scorer_logp.shape)}, sampler_logp {tuple(sampler_logp.shape)} "
            f"and mask {tuple(mask.shape)} must have one shape (B, T)"
        )


def _valid_diff(scorer_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``log π_old − log π_sampler`` in float32, 0 where not usable, and where it is usable."""
    diff = scorer_logp.float() - sampler_logp.float()
    usable = mask.bool() & torch.isfinite(diff)
    return torch.where(usable, diff, torch.zeros_like(diff)), usable


def truncated_is_weights(
    scorer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, *, cap: float
) -> Tensor:
    """Per-token truncated importance weights ``min(exp(log π_old − log π_sampler), cap)``.

    Args:
        scorer_logp: ``(B, T)`` log π_old of each response token from the HF scorer.
        sampler_logp: ``(B, T)`` log-prob of the same token under the distribution the sampler
            drew it from (vLLM's processed log-probs).
        mask: ``(B, T)`` bool, True on valid response tokens.
        cap: the truncation C > 0 (TRL's ``vllm_importance_sampling_clip_max``, default 3.0).

    Returns:
        ``(B, T)`` float32 weights, in ``[0, cap]`` on valid tokens, 1 elsewhere (departure 3).
    """
    _check(scorer_logp, sampler_logp, mask)
    if not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"importance-sampling cap must be a finite number > 0, got {cap}")
    diff, usable = _valid_diff(scorer_logp, sampler_logp, mask)
    weights = torch.exp(diff.clamp(max=math.log(cap)))
    return torch.where(usable, weights, torch.ones_like(weights))


def logprob_gap(scorer_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> Tensor:
    """Mean ``|log π_old − log π_sampler|`` over the valid tokens with a finite gap (a 0-d
    float32 tensor; 0 when there is none): the sampler/scorer mismatch, logged as
    ``train/sampler_logp_gap`` (TRL logs the same as ``sampling_logp_difference/mean``)."""
    _check(scorer_logp, sampler_logp, mask)
    diff, usable = _valid_diff(scorer_logp, sampler_logp, mask)
    return diff.abs().sum() / usable.sum().clamp(min=1)
