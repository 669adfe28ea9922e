"""Mechanism statistics: is the mechanism the paper posits present in a model at all?

The paper's direction-adaptive shaper (section 4, eq. 4-8) attracts the student to the privileged
teacher on low-entropy tokens and repels it on high-entropy ones. That can only move a model
where (a) the gap delta_t = log q_t(o_t) - log p_t(o_t) at low-entropy tokens is larger than
numerical noise, (b) the teacher is sharper than the student there (less mass outside the top
token), and (c) errors sit at low-entropy tokens, where attraction acts. These pure functions
measure each from per-token arrays, so a "not reproduced" verdict comes with the measured reason;
and (d) compare the entropy profile with a real reasoning model's.

Arrays are ``(B, T)`` with a boolean ``mask`` of valid response tokens; positions outside the
mask are ignored (their values can be anything, NaN included). Numpy in, floats out; no I/O.

Choices (none is fixed by the paper):

1. Deciles of the student entropy are global (over every valid token given), with numpy's
   linear-interpolation quantiles as edges; decile k holds e_{k-1} < H <= e_k (e_0 = -inf,
   e_10 = +inf), so tied entropies share the lowest decile holding them and a decile can be
   empty (its statistics are NaN). Each decile is summarised by the median and the mean of the
   absolute values: the median is robust to the heavy tail of |delta|, the mean shows a floor
   whose median is exactly 0 (most tokens bit-identical on re-scoring).
2. "Low entropy" for the tail ratio and the wrong-step share is per trajectory: H_t strictly
   below the median of its own response's valid tokens (numpy's median): the paper's low
   bucket of Probe 3 (section 3, H_t < tau_0.5, the trajectory-local median) and the frame of
   DASD's router (its threshold is a per-trajectory quantile, eq. 4).
3. The tail-mass ratio is a ratio of means, sum of teacher tails / sum of student tails over
   the low-entropy tokens: per-token ratios are undefined where the student's tail is 0 and a
   mean of them is dominated by the few tokens with the smallest student tail. It is NaN (not
   inf) when the student's summed tail is 0 (a deterministic student) or no token is low. A
   ratio of means is itself dominated by the largest tails (on the built-in world the top 1% of
   the teacher's low-token tails hold most of its sum), so two robust companions go with it:
   the median of the per-token ratios q/p (tokens with p > 0) and the share of low tokens on
   which the teacher is strictly sharper (q < p).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "REFERENCE_CITATION",
    "REFERENCE_LOW_ENTROPY_NATS",
    "REFERENCE_LOW_ENTROPY_SHARE",
    "REFERENCE_Q80_NATS",
    "TailStats",
    "below_trajectory_median",
    "by_entropy_decile",
    "decile_edges",
    "low_entropy_error_share",
    "share_below",
    "tail_mass_ratio",
]

#: Published token-entropy statistics of a real reasoning model's chain of thought: Qwen3-8B,
#: "more than half of tokens" have entropy below 0.01 nats and the 80th percentile is 0.672
#: nats (Wang et al. 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive
#: Effective Reinforcement Learning for LLM Reasoning", arXiv:2506.01939; the paper's [24]).
REFERENCE_LOW_ENTROPY_NATS = 0.01
#: The share of tokens below :data:`REFERENCE_LOW_ENTROPY_NATS` there; a lower bound ("more
#: than half").
REFERENCE_LOW_ENTROPY_SHARE = 0.5
#: The 80th percentile of the token entropy there, in nats.
REFERENCE_Q80_NATS = 0.672
REFERENCE_CITATION = "Qwen3-8B CoT, Wang et al. 2025 (arXiv:2506.01939)"


def _valid(values: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
    """``values[mask]`` as float64, after checking shapes and finiteness of the valid part."""
    values, mask = np.asarray(values), np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be boolean, got {mask.dtype}")
    if values.shape != mask.shape:
        raise ValueError(f"{name} {values.shape} and mask {mask.shape} must have the same shape")
    out = values[mask].astype(np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} has NaN/inf at valid positions; check the scoring pass")
    return out


def decile_edges(entropy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The nine inner decile edges ``(9,)`` of the valid entropies (numpy's linear
    quantiles at 0.1, ..., 0.9); NaN when no token is valid."""
    h = _valid(entropy, mask, "entropy")
    if h.size == 0:
        return np.full(9, np.nan)
    return np.quantile(h, np.arange(1, 10) / 10)


def by_entropy_decile(values: np.ndarray, entropy: np.ndarray, mask: np.ndarray,
                      edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and mean of ``|values|`` and the token count in each entropy decile (choice 1).

    Args:
        values: ``(B, T)``, e.g. delta_t, or the difference of two scorings of the same tokens.
        entropy: ``(B, T)`` student entropy H_t, placing each token in a decile.
        mask: ``(B, T)`` bool, True on the tokens to count.
        edges: ``(9,)`` inner edges, e.g. :func:`decile_edges` of a larger set of tokens.

    Returns:
        ``(median, mean, count)``, each ``(10,)``; median and mean NaN where count is 0.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.shape != (9,) or np.any(np.diff(edges) < 0):
        raise ValueError(f"edges must be 9 non-decreasing decile edges, got {edges}")
    v = np.abs(_valid(values, mask, "values"))
    h = _valid(entropy, mask, "entropy")
    index = np.searchsorted(edges, h, side="left")
    count = np.bincount(index, minlength=10)
    median = np.full(10, np.nan)
    mean = np.full(10, np.nan)
    for k in np.flatnonzero(count):
        part = v[index == k]
        median[k], mean[k] = np.median(part), part.mean()
    return median, mean, count


def below_trajectory_median(entropy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(B, T)`` bool: valid tokens whose entropy is strictly below the median of their own
    row's valid entropies (choice 2); False outside ``mask``."""
    _valid(entropy, mask, "entropy")
    h = np.where(mask, np.asarray(entropy, dtype=np.float64), np.nan)
    low = np.zeros(h.shape, dtype=bool)
    rows = mask.any(axis=-1)
    if rows.any():
        median = np.nanmedian(h[rows], axis=-1, keepdims=True)
        low[rows] = mask[rows] & (h[rows] < median)
    return low


class TailStats(NamedTuple):
    """Teacher/student tail masses on the low-entropy tokens (:func:`tail_mass_ratio`)."""

    ratio: float
    """Ratio of means: summed teacher tails / summed student tails (choice 3)."""
    median_ratio: float
    """Median of the per-token ratios q/p over the low tokens with p > 0."""
    sharper_share: float
    """Share of the low tokens where the teacher's tail is strictly smaller."""
    student_mean: float
    teacher_mean: float


def tail_mass_ratio(student_tail: np.ndarray, teacher_tail: np.ndarray, entropy: np.ndarray,
                    mask: np.ndarray) -> TailStats:
    """Teacher/student tail-mass ratio on low-entropy tokens (choices 2 and 3).

    Args:
        student_tail, teacher_tail: ``(B, T)`` tail masses 1 - max_v p_t(v), 1 - max_v q_t(v)
            (``dasd.entropy.token_entropy_logprob_and_tail``), in [0, 1].
        entropy: ``(B, T)`` student entropy H_t.
        mask: ``(B, T)`` bool valid tokens.

    Returns:
        :class:`TailStats` over the tokens below their trajectory's median entropy. A ratio
        below 1, a sharper share above 0.5: the teacher is sharper there. ``ratio`` is NaN
        where the student's tails sum to 0, ``median_ratio`` where no low token has p > 0;
        everything is NaN where no token is low.
    """
    p = _valid(student_tail, mask, "student_tail")
    q = _valid(teacher_tail, mask, "teacher_tail")
    for name, tail in (("student_tail", p), ("teacher_tail", q)):
        if tail.size and (tail.min() < 0 or tail.max() > 1):
            raise ValueError(f"{name} must lie in [0, 1] (a probability mass)")
    low = below_trajectory_median(entropy, mask)[np.asarray(mask)]
    if not low.any():
        return TailStats(*(np.nan,) * 5)
    p, q = p[low], q[low]
    positive = p > 0
    return TailStats(
        ratio=float(q.sum() / p.sum()) if p.sum() > 0 else np.nan,
        median_ratio=float(np.median(q[positive] / p[positive])) if positive.any() else np.nan,
        sharper_share=float((q < p).mean()),
        student_mean=float(p.mean()),
        teacher_mean=float(q.mean()),
    )


def low_entropy_error_share(entropy: np.ndarray, mask: np.ndarray, rows: np.ndarray,
                            cols: np.ndarray) -> tuple[float, int]:
    """Share of wrong steps whose first wrong token sits below its trajectory's median entropy.

    Args:
        entropy: ``(B, T)`` student entropy H_t.
        mask: ``(B, T)`` bool valid tokens.
        rows, cols: ``(W,)`` int, the position of each wrong step's first wrong token (e.g.
            ``dasd.tasks.countdown.CountdownTask.first_wrong_offsets`` mapped to tokens); each
            must be a valid position.

    Returns:
        ``(share, W)``; share is NaN when W = 0 (no wrong step, or no step judge).
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    if rows.shape != cols.shape or rows.ndim != 1:
        raise ValueError(f"rows {rows.shape} and cols {cols.shape} must be equal 1-d arrays")
    low = below_trajectory_median(entropy, mask)
    if rows.size == 0:
        return np.nan, 0
    b, t = low.shape
    inside = (rows >= 0) & (rows < b) & (cols >= 0) & (cols < t)
    if not inside.all() or not np.asarray(mask)[rows, cols].all():
        raise ValueError("every wrong-step position (rows, cols) must be a valid token of mask")
    return float(low[rows, cols].mean()), int(rows.size)


def share_below(entropy: np.ndarray, mask: np.ndarray,
                threshold: float = REFERENCE_LOW_ENTROPY_NATS) -> float:
    """Share of valid tokens with entropy strictly below ``threshold`` nats (the reference's
    0.01 by default); NaN when no token is valid."""
    h = _valid(entropy, mask, "entropy")
    return float((h < threshold).mean()) if h.size else np.nan
