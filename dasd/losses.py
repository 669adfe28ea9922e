"""Losses: PPO clipped surrogate, reverse-KL self-distillation, and the one loss aggregator.

Pure tensor math over padded batches ``(B, T)`` with a boolean ``mask`` of valid response
tokens. Every loss returns ``(loss, stats)``; stats are detached scalar tensors (no ``.item()``).

- ``ppo_clip_loss``: the clipped surrogate of GRPO (eq. 1) and of the DASD objective (eq. 5
  first term, and Algorithm 1 line 25 with the direction-adaptive advantage A_hat of eq. 8):
  loss = -aggregate(min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)), r = exp(logp - old_logp).
- ``reverse_kl_loss``: the OPSD term, full-vocabulary reverse KL(p || sg[q]) per token (eq. 2),
  optionally multiplied by the signed per-token coefficient omega_t (eq. 3), aggregated like
  eq. 5's second term. The coefficient beta of eq. 5 is applied by the caller.
- ``aggregate``: the single owner of token -> scalar reduction, modes in ``AGGREGATIONS``:
  ``token_mean`` (sum_{i,t} / sum mask), ``seq_mean_token_mean`` (the paper's, eq. 1 and 5:
  1/G sum_i 1/|o_i| sum_t; the default everywhere), ``seq_mean_token_sum`` (1/G sum_i sum_t).

Departures from the paper and choices it leaves open:

1. Asymmetric clip range [1 - clip_low, 1 + clip_high] (DAPO's clip-higher); the paper's single
   epsilon is ``clip_low == clip_high`` (both default to 0.2).
2. The log-ratio logp - old_logp is clamped to [-20, 20] before ``exp`` (as verl does), so the
   ratio cannot overflow; beyond that range the loss uses r = e^{+-20} and passes no gradient.
3. Rows with 0 valid tokens are not trajectories: they are left out of G in the ``seq_*`` modes
   (they neither add to the sum nor to the count), so appending all-padding rows changes nothing.
   A batch with no valid token at all aggregates to 0 (with a zero gradient), never NaN.
4. ``advantages``, ``old_logp`` and ``weight`` (omega) are treated as constants (detached), as
   appendix B treats A_G, omega_t and q.
5. Masked-out positions are replaced by 0 before any arithmetic, so whatever values they hold
   affect neither the loss nor the gradient.
6. Stats are token means over all valid tokens of the batch, whatever ``agg`` is.
   ``approx_kl`` is the k3 estimator of KL(pi_old || pi_theta) on the rollout tokens:
   mean((r - 1) - log r) (non-negative, unbiased under pi_old sampling); ``approx_kl_k1`` is
   mean(old_logp - logp).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dasd.entropy import token_reverse_kl
from dasd.registry import Registry

__all__ = ["AGGREGATIONS", "aggregate", "aggregate_denominator", "ppo_clip_loss", "reverse_kl_loss"]

#: Ratio log clamp (departure 2).
LOG_RATIO_CLAMP = 20.0

#: Aggregation modes ``(loss_mat, mask) -> (numerator, denominator)``; the aggregate is their
#: ratio. ``loss_mat`` is already 0 where ``mask`` is False and ``mask`` is boolean. Keeping the
#: denominator separate lets a caller split a mini-batch into micro-batches and still get the
#: mini-batch's aggregate exactly (``aggregate_denominator``). Use through ``aggregate``.
AGGREGATIONS: Registry[Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = Registry("aggregation")


def _row_counts(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Valid tokens per row ``(...)`` and the number of non-empty rows (at least 1)."""
    n_tok = mask.sum(dim=-1)
    n_rows = (n_tok > 0).sum().clamp(min=1)
    return n_tok, n_rows


@AGGREGATIONS.register("token_mean")
def _token_mean(loss_mat: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    return loss_mat.sum(), mask.sum().clamp(min=1)


@AGGREGATIONS.register("seq_mean_token_mean")
def _seq_mean_token_mean(loss_mat: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    n_tok, n_rows = _row_counts(mask)
    return (loss_mat.sum(dim=-1) / n_tok.clamp(min=1)).sum(), n_rows


@AGGREGATIONS.register("seq_mean_token_sum")
def _seq_mean_token_sum(loss_mat: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    _, n_rows = _row_counts(mask)
    return loss_mat.sum(), n_rows


def _check_agg_shapes(loss_mat: Tensor, mask: Tensor) -> None:
    if loss_mat.shape != mask.shape or loss_mat.dim() < 1:
        raise ValueError(
            f"loss_mat {tuple(loss_mat.shape)} and mask {tuple(mask.shape)} must have the same "
            "shape (..., T)"
        )


def aggregate(loss_mat: Tensor, mask: Tensor, mode: str = "seq_mean_token_mean") -> Tensor:
    """Reduce a per-token loss ``(B, T)`` (or ``(..., T)``) to a scalar over valid tokens.

    Args:
        loss_mat: per-token values; masked-out entries may hold anything (they are zeroed).
        mask: same shape, boolean (or 0/1) marks of valid tokens; the last dim is time.
        mode: a name in ``AGGREGATIONS`` (see the module docstring); rows with no valid token
            are left out of G, and an all-empty batch gives 0.

    Raises:
        ValueError: unknown ``mode`` (the message lists the valid ones), shape mismatch.
    """
    fn = AGGREGATIONS.get(mode)
    _check_agg_shapes(loss_mat, mask)
    mask = mask.bool()
    numerator, denominator = fn(torch.where(mask, loss_mat, 0), mask)
    return numerator / denominator


def aggregate_denominator(mask: Tensor, mode: str = "seq_mean_token_mean") -> Tensor:
    """The denominator ``aggregate`` divides by for ``mask`` under ``mode``: valid tokens for
    ``token_mean``, non-empty rows for the ``seq_*`` modes (at least 1).

    For micro-batches m of a mini-batch M, ``sum_m aggregate(l_m, mask_m) * d(mask_m) / d(mask_M)``
    equals ``aggregate(l_M, mask_M)`` exactly, with ``d = aggregate_denominator``.
    """
    mask = mask.bool()
    return AGGREGATIONS.get(mode)(torch.zeros(mask.shape, device=mask.device), mask)[1]


def _check_bt(mask: Tensor, **tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t.shape != mask.shape:
            raise ValueError(
                f"{name} shape {tuple(t.shape)} must equal mask shape {tuple(mask.shape)}"
            )


def ppo_clip_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = "seq_mean_token_mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate with an asymmetric clip (eq. 1, eq. 5 first term, Algorithm 1).

    Args:
        logp: ``(B, T)`` log pi_theta(o_t), with gradient.
        old_logp: ``(B, T)`` log pi_old(o_t) (constant).
        advantages: ``(B, T)`` per-token advantage A_hat_t (constant); A_G broadcast for GRPO.
        mask: ``(B, T)`` valid response tokens.
        clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high].
        agg: aggregation mode (``AGGREGATIONS``).

    Returns:
        ``(loss, stats)``: loss = -aggregate(min(r A, clip(r) A)); stats (detached, token means
        over valid tokens): ``clip_frac`` (clipped branch strictly active), ``clip_frac_low``
        (A < 0 and r < 1 - clip_low), ``clip_frac_high`` (A > 0 and r > 1 + clip_high),
        ``approx_kl`` (k3), ``approx_kl_k1``, ``ratio_mean``, ``ratio_max``.
    """
    _check_bt(mask, logp=logp, old_logp=old_logp, advantages=advantages)
    if not (0.0 <= clip_low < 1.0 and clip_high >= 0.0):
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    mask = mask.bool()
    log_ratio = torch.where(mask, logp - old_logp.detach(), 0)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    adv = torch.where(mask, advantages.detach(), 0)
    ratio = log_ratio.exp()
    surr = ratio * adv
    surr_clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    loss = -aggregate(torch.minimum(surr, surr_clipped), mask, agg)

    with torch.no_grad():
        n = mask.sum().clamp(min=1)

        def tmean(x: Tensor) -> Tensor:
            return torch.where(mask, x, 0).sum() / n

        lr = log_ratio.detach()
        r = ratio.detach()
        stats = {
            "clip_frac": tmean((surr_clipped < surr).float()),
            "clip_frac_low": tmean(((adv < 0) & (r < 1.0 - clip_low)).float()),
            "clip_frac_high": tmean(((adv > 0) & (r > 1.0 + clip_high)).float()),
            "approx_kl": tmean((r - 1.0) - lr),
            "approx_kl_k1": tmean(-lr),
            "ratio_mean": tmean(r),
            "ratio_max": torch.where(mask, r, 0).amax() if mask.numel() else r.new_zeros(()),
        }
    return loss, stats


def reverse_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    *,
    agg: str = "seq_mean_token_mean",
    chunk_size: int = 1024,
    temperature: float = 1.0,
    weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Full-vocabulary reverse KL to a stop-gradient teacher (eq. 2), optionally signed (eq. 3).

    Per token: D_t = omega_t * KL(p_t || sg[q_t]), p = softmax(student_logits / T) with
    gradient, q = softmax(teacher_logits / T) detached; omega_t = 1 without ``weight`` (plain OPSD). Computed
    in chunks of ``chunk_size`` positions (``dasd.entropy.token_reverse_kl``).

    Args:
        student_logits: ``(B, T, V)``.
        teacher_logits: ``(B, T, V)``; never receives a gradient.
        mask: ``(B, T)`` valid tokens. Logits at masked positions must still be finite (they
            are computed and then discarded; non-finite logits raise ``ValueError``).
        agg: aggregation mode (``AGGREGATIONS``).
        chunk_size: positions per chunk (bounds the extra memory).
        temperature: T > 0, applied chunk by chunk (no divided ``(B, T, V)`` copy is made).
        weight: optional ``(B, T)`` signed omega_t in [-1, 1] (constant, detached).

    Returns:
        ``(loss, stats)``: loss = aggregate(omega * KL); stats (detached, over valid tokens):
        ``kl_mean`` (unweighted token mean), ``kl_max``, and with ``weight`` also
        ``weighted_kl_mean`` and ``weight_mean``.
    """
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be (B, T, V), got {tuple(student_logits.shape)}")
    if student_logits.shape[:-1] != mask.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} must be (B, T, V) with (B, T) = mask "
            f"shape {tuple(mask.shape)}"
        )
    if weight is not None:
        _check_bt(mask, weight=weight)
    AGGREGATIONS.get(agg)  # fail before the expensive part on an unknown mode
    mask = mask.bool()
    kl = token_reverse_kl(student_logits, teacher_logits, chunk_size=chunk_size,
                          temperature=temperature)
    kl = torch.where(mask, kl, 0)
    per_tok = kl if weight is None else kl * torch.where(mask, weight.detach(), 0).to(kl.dtype)
    loss = aggregate(per_tok, mask, agg)

    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        kld = kl.detach()
        stats = {
            "kl_mean": kld.sum() / n,
            "kl_max": kld.amax() if kld.numel() else kld.new_zeros(()),
        }
        if weight is not None:
            stats["weighted_kl_mean"] = per_tok.detach().sum() / n
            stats["weight_mean"] = torch.where(mask, weight.detach(), 0).sum() / n
    return loss, stats
