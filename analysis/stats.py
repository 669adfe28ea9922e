"""Statistics for the token-level probes (paper section 3 "Probe 2", Fig. 3; appendix A.2).

Pure functions: arrays or tensors in, numbers, arrays or tensors out; no I/O, no model.

- ``spearman``: Spearman's rank correlation with average ranks for ties (as
  ``scipy.stats.spearmanr``), optionally with integer frequency weights (a weight w counts a row
  w times), which is what a bootstrap resample is.
- ``spearman_ci``, ``spearman_cis``: the cluster (prompt-level) percentile bootstrap interval of
  ``spearman`` (the latter for several variables against one, on common resamples).
- ``quantile_bins``, ``binned_means``: equal-count bins of a variable (entropy deciles in Fig. 3)
  and per-bin means of other columns.
- ``per_prompt_sums``, ``paired_difference``, ``paired_relative_change``: a ratio-of-sums rate
  (accuracy, step accuracy, marker density) per prompt, and the difference (or % change) of two
  conditions' rates on the same prompts with a paired percentile bootstrap over prompts
  (Table 1, Fig. 7, the findings summary).
- ``tv_from_logits``: total-variation distance ½ Σ_v |p(v) − p'(v)| between the softmax
  distributions of two logits tensors, per position (eq. 7), in chunks.

Departures and choices (the paper gives none of these details):

1. The confidence interval resamples prompts, not tokens: tokens of one prompt (and of its k
   rollouts) are dependent, so a token-level bootstrap would be too narrow. It is the
   percentile interval of ``n_boot`` resamples; resamples whose statistic is undefined (a
   constant variable) are left out and counted.
2. Bins are right-closed quantile bins with tied edges merged, as ``pandas.qcut(duplicates=
   "drop")`` and ``figures.paper.binned_means`` (Fig. 3) form them; empty bins are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from torch import Tensor

__all__ = [
    "BootstrapCI",
    "binned_means",
    "paired_difference",
    "paired_relative_change",
    "per_prompt_sums",
    "quantile_bins",
    "spearman",
    "spearman_ci",
    "spearman_cis",
    "tv_from_logits",
]


# --------------------------------------------------------------------------- Spearman


class _Ranker:
    """Average ranks of ``x`` under frequency weights, with the sort done once.

    For weights w, a tie group g (values equal to x_g, groups in increasing order) whose
    predecessors weigh S_g and which weighs W_g gets rank S_g + (W_g + 1) / 2: the average of
    the positions S_g + 1 .. S_g + W_g its copies occupy in the expanded, sorted sample.
    """

    def __init__(self, x: np.ndarray) -> None:
        self.order = np.argsort(x, kind="stable")
        xs = x[self.order]
        new_group = np.r_[True, xs[1:] != xs[:-1]] if x.size else np.zeros(0, dtype=bool)
        self.starts = np.flatnonzero(new_group)
        self.group = np.empty(x.size, dtype=np.int64)
        self.group[self.order] = np.cumsum(new_group) - 1

    def ranks(self, weights: np.ndarray) -> np.ndarray:
        """``(B, N)`` ranks for ``(B, N)`` weights (one row per resample)."""
        group_w = np.add.reduceat(weights[:, self.order], self.starts, axis=1)
        before = np.cumsum(group_w, axis=1) - group_w
        group_rank = before + (group_w + 1.0) / 2.0
        return group_rank[:, self.group]


def _weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` and ``b`` ``(B, N)`` under weights ``w``;
    NaN where either row is constant over its weighted rows."""
    total = w.sum(axis=1, keepdims=True)
    da = a - (w * a).sum(axis=1, keepdims=True) / total
    db = b - (w * b).sum(axis=1, keepdims=True) / total
    cov = (w * da * db).sum(axis=1)
    var_a = (w * da * da).sum(axis=1)
    var_b = (w * db * db).sum(axis=1)
    denom = np.sqrt(var_a * var_b)
    # Ranks are multiples of 1/2, so a constant variable has exactly zero variance.
    ok = (var_a > 0) & (var_b > 0)
    out = np.full(a.shape[0], np.nan)
    out[ok] = np.clip(cov[ok] / denom[ok], -1.0, 1.0)
    return out


def _check_pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x {x.shape} and y {y.shape} must be 1-D arrays of equal length")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite (drop NaN/inf rows first)")
    return x, y


def spearman(x: ArrayLike, y: ArrayLike, *, weights: ArrayLike | None = None) -> float:
    """Spearman's ρ_s of ``x`` and ``y`` (1-D, finite): the Pearson correlation of their average
    ranks, ties sharing the mean of their positions (equal to ``scipy.stats.spearmanr``).

    ``weights``: non-negative integer frequency weights (a row of weight w counts w times, 0
    leaves it out); the result equals ``spearman`` of the expanded sample. NaN when fewer than
    two rows carry weight or either variable is constant.
    """
    x, y = _check_pair(x, y)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != x.shape or (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"weights {w.shape} must be finite, >= 0 and match x {x.shape}")
    if x.size == 0:
        return float("nan")
    w = w[None]
    return float(_weighted_pearson(_Ranker(x).ranks(w), _Ranker(y).ranks(w), w)[0])


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with its percentile bootstrap interval."""

    estimate: float
    """The statistic on the full sample."""
    low: float
    """Lower end of the interval (the (1 − level)/2 quantile of the resampled statistics)."""
    high: float
    """Upper end (the (1 + level)/2 quantile)."""
    level: float
    """Coverage, e.g. 0.95."""
    n_boot: int
    """Resamples drawn."""
    n_undefined: int
    """Resamples whose statistic was undefined (left out of the quantiles)."""

    def as_dict(self) -> dict[str, float | int]:
        return {"rho": self.estimate, "low": self.low, "high": self.high, "level": self.level,
                "n_boot": self.n_boot, "n_undefined": self.n_undefined}


def spearman_ci(x: ArrayLike, y: ArrayLike, clusters: ArrayLike, *, n_boot: int = 1000,
                level: float = 0.95, seed: int = 0, chunk: int = 64) -> BootstrapCI:
    """Spearman's ρ_s(x, y) with a cluster bootstrap percentile interval.

    Each resample draws as many clusters as there are, uniformly with replacement (one draw of
    a cluster brings all its rows), and recomputes ρ_s on the resampled rows (weighted ranks,
    so tied copies are handled exactly as ``spearman`` of the expanded sample).

    Args:
        x, y: 1-D finite arrays of equal length (e.g. A_t and H_t per token).
        clusters: a label per row (e.g. the prompt id); any sortable values.
        n_boot: resamples (0: the interval is NaN).
        level: interval coverage in (0, 1).
        seed: the resamples are a function of ``seed`` and the number of clusters only.
        chunk: resamples computed at once (memory: a few ``(chunk, len(x))`` float64 arrays).
    """
    return spearman_cis({"x": x}, y, clusters, n_boot=n_boot, level=level, seed=seed,
                        chunk=chunk)["x"]


def spearman_cis(columns: Mapping[str, ArrayLike], y: ArrayLike, clusters: ArrayLike, *,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 chunk: int = 64) -> dict[str, BootstrapCI]:
    """``spearman_ci(column, y, clusters)`` for each of ``columns``, on common resamples (the
    same ``seed`` gives the same resampled clusters for every column, as separate calls would)
    with the ranks of ``y`` computed once per resample."""
    labels = np.asarray(clusters)
    pairs = {name: _check_pair(values, y) for name, values in columns.items()}
    y = np.asarray(y, dtype=np.float64)
    if labels.shape != y.shape:
        raise ValueError(f"clusters {labels.shape} must give one label per row ({y.shape})")
    if n_boot < 0 or chunk < 1:
        raise ValueError(f"n_boot must be >= 0 and chunk >= 1, got {n_boot}, {chunk}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    estimates = {name: spearman(x, y) for name, (x, _) in pairs.items()}
    if y.size == 0 or n_boot == 0:
        nan = float("nan")
        return {name: BootstrapCI(est, nan, nan, level, n_boot, n_boot)
                for name, est in estimates.items()}
    _, cluster_of_row = np.unique(labels, return_inverse=True)
    n_clusters = int(cluster_of_row.max()) + 1
    rank_y = _Ranker(y)
    rankers = {name: _Ranker(x) for name, (x, _) in pairs.items()}
    rng = np.random.default_rng(seed)
    stats: dict[str, list[np.ndarray]] = {name: [] for name in pairs}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, n_clusters, size=(b, n_clusters))
        counts = np.zeros((b, n_clusters))
        np.add.at(counts, (np.arange(b)[:, None], draws), 1.0)
        w = counts[:, cluster_of_row]
        ry = rank_y.ranks(w)
        for name, ranker in rankers.items():
            stats[name].append(_weighted_pearson(ranker.ranks(w), ry, w))
    out = {}
    quantiles = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    for name, parts in stats.items():
        values = np.concatenate(parts)
        defined = values[np.isfinite(values)]
        n_undefined = int(values.size - defined.size)
        low, high = np.quantile(defined, quantiles) if defined.size else (np.nan, np.nan)
        out[name] = BootstrapCI(estimates[name], float(low), float(high), level, n_boot,
                                n_undefined)
    return out


# --------------------------------------------------------------------------- binning


def quantile_bins(h: ArrayLike, *, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Equal-count bins of ``h`` (1-D, finite): ``(bin index per value, edges)``.

    Edges are the quantiles 0, 1/n, …, 1 of ``h`` (linear interpolation) with duplicates merged;
    bins are right-closed, (e_{i−1}, e_i], the first one also holding the minimum — as
    ``pandas.qcut(h, n_bins, duplicates="drop")``. Fewer bins come out when ``h`` has ties
    across edges or fewer than ``n_bins`` values.
    """
    h = np.asarray(h, dtype=np.float64)
    if h.ndim != 1 or not np.isfinite(h).all():
        raise ValueError(f"h must be a 1-D finite array, got shape {h.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if h.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    edges = np.unique(np.quantile(h, np.linspace(0.0, 1.0, min(n_bins, h.size) + 1)))
    return np.searchsorted(edges[1:-1], h, side="left").astype(np.int64), edges


def binned_means(
    h: ArrayLike, columns: Mapping[str, ArrayLike], *, n_bins: int = 10
) -> pd.DataFrame:
    """Means of ``columns`` within the ``quantile_bins`` of ``h``.

    Returns one row per non-empty bin, in increasing ``h``: ``bin`` (0-based), ``H_low`` and
    ``H_high`` (the bin's edges), ``H_mean``, ``n`` (rows), then the mean of each column.
    """
    h = np.asarray(h, dtype=np.float64)
    bins, edges = quantile_bins(h, n_bins=n_bins)
    lows, highs = (edges[:-1], edges[1:]) if len(edges) > 1 else (edges, edges)
    n_edges = len(lows)
    counts = np.bincount(bins, minlength=n_edges)
    keep = counts > 0
    frame = {
        "bin": np.flatnonzero(keep),
        "H_low": lows[keep],
        "H_high": highs[keep],
        "H_mean": np.bincount(bins, weights=h, minlength=n_edges)[keep] / counts[keep],
        "n": counts[keep],
    }
    for name, values in columns.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != h.shape:
            raise ValueError(f"column {name!r} has shape {values.shape}, h has {h.shape}")
        frame[name] = np.bincount(bins, weights=values, minlength=n_edges)[keep] / counts[keep]
    return pd.DataFrame(frame)


# --------------------------------------------------------------------------- TV distance


def tv_from_logits(logits_a: Tensor, logits_b: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """Total-variation distance TV(p, p') = ½ Σ_v |p(v) − p'(v)| per position (eq. 7), with
    p = softmax(logits_a) and p' = softmax(logits_b).

    Args:
        logits_a, logits_b: ``(..., V)`` float tensors of equal shape; finite.
        chunk_size: positions per chunk (float32 work of ``~3 * chunk_size * V`` values).

    Returns:
        float32 ``(...)`` tensor in [0, 1], no gradient.
    """
    if logits_a.shape != logits_b.shape or logits_a.dim() < 1:
        raise ValueError(
            f"logits {tuple(logits_a.shape)} and {tuple(logits_b.shape)} must have equal "
            "shape (..., V)"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    vocab = logits_a.shape[-1]
    a = logits_a.detach().reshape(-1, vocab)
    b = logits_b.detach().reshape(-1, vocab)
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    out = torch.empty(a.shape[0], dtype=dtype, device=a.device)
    for s in range(0, a.shape[0], chunk_size):
        pa = torch.softmax(a[s : s + chunk_size].to(dtype), dim=-1)
        pb = torch.softmax(b[s : s + chunk_size].to(dtype), dim=-1)
        out[s : s + chunk_size] = 0.5 * (pa - pb).abs().sum(dim=-1)
    if not bool(torch.isfinite(out).all()):
        raise ValueError("tv_from_logits: non-finite logits (NaN or inf); check the model outputs")
    return out.clamp_(0.0, 1.0).reshape(logits_a.shape[:-1]).float()


# --------------------------------------------------------------------------- paired rates


def per_prompt_sums(prompt_ids: Sequence[str], values: np.ndarray, order: Sequence[str]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt of ``order``: the sum of the finite ``values`` of its rows and their count.

    Args:
        prompt_ids: ``(N,)`` the prompt of each row.
        values: ``(N,)`` float, NaN where a row has no value (e.g. no step to judge).
        order: the P prompt ids, in output order.

    Returns:
        ``sums (P,)`` float64 and ``counts (P,)`` float64.
    """
    index = {pid: i for i, pid in enumerate(order)}
    groups = np.array([index[pid] for pid in prompt_ids], dtype=np.int64)
    finite = np.isfinite(values)
    sums = np.bincount(groups[finite], weights=values[finite], minlength=len(order))
    counts = np.bincount(groups[finite], minlength=len(order)).astype(np.float64)
    return sums, counts


def _paired_bootstrap(base: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray],
                      contrast: Callable[[np.ndarray, np.ndarray], np.ndarray], name: str, *,
                      n_boot: int, level: float, seed: int) -> dict[str, float]:
    """``contrast(rate_base, rate_new)`` of two ratio-of-sums rates over the same P prompts,
    at the point (key ``name``) and over ``n_boot`` paired resamples of the prompts (each
    resample weights both conditions by the same multinomial draw); the percentile interval
    leaves out resamples whose contrast is undefined (NaN) and counts them."""
    (b_sum, b_cnt), (n_sum, n_cnt) = base, new
    weights = np.random.default_rng(seed).multinomial(
        len(b_sum), np.full(len(b_sum), 1.0 / len(b_sum)), size=n_boot).astype(np.float64)

    def rate(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    b_point, v_point = rate(b_sum.sum(), b_cnt.sum()), rate(n_sum.sum(), n_cnt.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = contrast(rate(weights @ b_sum, weights @ b_cnt),
                        rate(weights @ n_sum, weights @ n_cnt))
        point = contrast(b_point, v_point)
    defined = boot[np.isfinite(boot)]
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(defined, [tail, 100.0 - tail]) if defined.size else (np.nan, np.nan)
    return {"base": float(b_point), "value": float(v_point), name: float(point),
            "ci_low": float(low), "ci_high": float(high),
            "n_boot_undefined": int(boot.size - defined.size)}


def paired_difference(base: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray],
                      *, n_boot: int, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Difference of two ratio-of-sums rates with a paired percentile bootstrap over prompts.

    A condition's rate is sum_p sums_p / sum_p counts_p; the difference is new - base. Each
    resample draws the P prompts with replacement and weights both conditions by the same
    draw.

    Args:
        base: ``(sums (P,), counts (P,))`` of the reference condition.
        new: ``(sums (P,), counts (P,))`` of the intervened condition, same prompt order.
        n_boot: resamples.
        level: confidence level of the interval.
        seed: seed of the resampling.

    Returns:
        ``base``, ``value`` (the two rates), ``diff``, ``ci_low``, ``ci_high``; NaN where a
        condition has no counts (the interval leaves out resamples without counts).
    """
    out = _paired_bootstrap(base, new, lambda b, v: v - b, "diff", n_boot=n_boot, level=level,
                            seed=seed)
    del out["n_boot_undefined"]
    return out


def paired_relative_change(
    base: tuple[np.ndarray, np.ndarray],
    new: tuple[np.ndarray, np.ndarray],
    *,
    n_boot: int,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """% change of a ratio-of-sums metric, with a paired percentile bootstrap over prompts.

    The metric of a condition is Σ_p sums_p / Σ_p counts_p; Δ = 100 (metric_new / metric_base
    − 1). Each resample draws P prompts with replacement and weights both conditions by the
    same draw. The arguments are those of ``paired_difference``.

    Returns:
        ``base``, ``value`` (the two metrics), ``delta_pct``, ``ci_low``, ``ci_high`` (NaN
        where undefined: no counts, or a base metric of 0) and ``n_boot_undefined``, the
        resamples left out of the interval because their Δ was undefined.
    """

    def relative(b: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.where(b != 0, 100.0 * (v / np.where(b != 0, b, 1.0) - 1.0), np.nan)

    return _paired_bootstrap(base, new, relative, "delta_pct", n_boot=n_boot, level=level,
                             seed=seed)
