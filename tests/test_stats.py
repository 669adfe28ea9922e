"""analysis.stats: Spearman with ties, the prompt-level bootstrap, quantile bins, TV distance."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from analysis.stats import (
    binned_means,
    quantile_bins,
    spearman,
    spearman_ci,
    spearman_cis,
    tv_from_logits,
)

# --------------------------------------------------------------------------- Spearman


def test_spearman_with_ties_by_hand():
    # Average ranks x: [1, 2.5, 2.5, 4, 5], y: [2, 1, 3.5, 3.5, 5]; centred at 3:
    # cov = 2 + 1 - .25 + .5 + 4 = 7.25, var_x = var_y = 9.5, rho = 29/38.
    x, y = [1, 2, 2, 3, 4], [2, 1, 3, 3, 5]
    assert spearman(x, y) == pytest.approx(29 / 38, abs=1e-15)
    assert sps.spearmanr(x, y).statistic == pytest.approx(29 / 38, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [3, 20, None])
def test_spearman_equals_scipy(seed, levels):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    x, y = rng.normal(size=n), rng.normal(size=n) + 0.5 * rng.normal(size=n)
    if levels is not None:  # many ties
        x, y = np.round(x * levels / 4), np.round(y * levels / 4)
    expected = sps.spearmanr(x, y).statistic
    if np.isnan(expected):
        assert math.isnan(spearman(x, y))
    else:
        assert spearman(x, y) == pytest.approx(expected, abs=1e-12)


def test_weighted_spearman_is_the_expanded_sample():
    rng = np.random.default_rng(3)
    x, y = np.round(rng.normal(size=30), 1), np.round(rng.normal(size=30), 1)
    w = rng.integers(0, 4, size=30)
    expected = sps.spearmanr(np.repeat(x, w), np.repeat(y, w)).statistic
    assert spearman(x, y, weights=w) == pytest.approx(expected, abs=1e-12)


def test_spearman_degenerate_and_bad_input():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([], []))
    assert math.isnan(spearman([1, 2], [3, 4], weights=[1, 0]))
    assert spearman([1, 2, 3], [3, 2, 1]) == -1.0
    with pytest.raises(ValueError, match="finite"):
        spearman([1, np.nan], [1, 2])
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="weights"):
        spearman([1, 2], [1, 2], weights=[1, -1])


# --------------------------------------------------------------------------- bootstrap


def _clustered(seed: int = 0, n_clusters: int = 12):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, size=n_clusters)
    clusters = np.repeat([f"p{i}" for i in range(n_clusters)], sizes)
    x = rng.normal(size=clusters.size)
    y = 0.5 * x + np.repeat(rng.normal(size=n_clusters), sizes) + 0.5 * rng.normal(size=x.size)
    return np.round(x, 1), np.round(y, 1), clusters


def test_bootstrap_ci_contains_the_estimate_and_is_deterministic():
    x, y, clusters = _clustered()
    ci = spearman_ci(x, y, clusters, n_boot=400, seed=7)
    assert ci.estimate == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    assert ci.low < ci.estimate < ci.high
    assert ci.n_boot == 400 and ci.n_undefined == 0 and ci.level == 0.95
    assert spearman_ci(x, y, clusters, n_boot=400, seed=7) == ci
    assert spearman_ci(x, y, clusters, n_boot=400, seed=8) != ci
    # How resamples are chunked changes nothing.
    assert spearman_ci(x, y, clusters, n_boot=400, seed=7, chunk=1) == ci
    narrow = spearman_ci(x, y, clusters, n_boot=400, seed=7, level=0.5)
    assert ci.low < narrow.low < narrow.high < ci.high


def test_bootstrap_matches_a_naive_resampling_loop():
    x, y, clusters = _clustered(seed=1, n_clusters=6)
    n_boot, seed = 50, 3
    labels, inverse = np.unique(clusters, return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(labels), size=(n_boot, len(labels)))
    values = []
    for draw in draws:
        rows = np.concatenate([np.flatnonzero(inverse == c) for c in draw])
        values.append(sps.spearmanr(x[rows], y[rows]).statistic)
    low, high = np.quantile(values, [0.025, 0.975])
    ci = spearman_ci(x, y, clusters, n_boot=n_boot, seed=seed)
    assert ci.low == pytest.approx(low, abs=1e-12)
    assert ci.high == pytest.approx(high, abs=1e-12)


def test_several_columns_share_resamples_and_equal_separate_calls():
    x, y, clusters = _clustered(seed=2)
    both = spearman_cis({"x": x, "neg": -x}, y, clusters, n_boot=100, seed=5)
    assert both["x"] == spearman_ci(x, y, clusters, n_boot=100, seed=5)
    assert both["neg"].estimate == pytest.approx(-both["x"].estimate)
    assert both["neg"].low == pytest.approx(-both["x"].high)


def test_bootstrap_with_one_cluster_is_the_estimate():
    x, y, _ = _clustered()
    ci = spearman_ci(x, y, np.zeros(x.size), n_boot=20)
    assert ci.low == pytest.approx(ci.estimate) and ci.high == pytest.approx(ci.estimate)


def test_bootstrap_counts_undefined_resamples_and_checks_input():
    # Cluster "a" is constant in x: a resample drawing only "a" has no defined rho.
    x, y, clusters = [0, 0, 1, 2], [1, 2, 3, 5], ["a", "a", "b", "b"]
    ci = spearman_ci(x, y, clusters, n_boot=200, seed=0)
    assert 0 < ci.n_undefined < 200
    assert ci.as_dict()["n_undefined"] == ci.n_undefined
    assert math.isnan(spearman_ci(x, y, clusters, n_boot=0).low)
    with pytest.raises(ValueError, match="one label per row"):
        spearman_ci(x, y, ["a"], n_boot=5)
    with pytest.raises(ValueError, match="level"):
        spearman_ci(x, y, clusters, level=1.0)


# --------------------------------------------------------------------------- bins


def test_quantile_bins_by_hand():
    bins, edges = quantile_bins(np.arange(1, 11), n_bins=5)
    np.testing.assert_allclose(edges, [1, 2.8, 4.6, 6.4, 8.2, 10])
    assert bins.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # Ties: quantiles 0, 0, 0.5, 2.25, 4 -> edges [0, 0.5, 2.25, 4]; three bins of 4, 2, 2.
    h = np.array([0, 0, 0, 0, 1, 2, 3, 4], dtype=float)
    bins, edges = quantile_bins(h, n_bins=4)
    np.testing.assert_allclose(edges, [0, 0.5, 2.25, 4])
    assert bins.tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert bins.tolist() == pd.qcut(h, 4, labels=False, duplicates="drop").tolist()


@pytest.mark.parametrize("seed", range(3))
def test_quantile_bins_equal_pandas_qcut(seed):
    h = np.round(np.random.default_rng(seed).exponential(size=301), 1)
    bins, _ = quantile_bins(h, n_bins=10)
    assert bins.tolist() == pd.qcut(h, 10, labels=False, duplicates="drop").tolist()


def test_binned_means_by_hand_and_as_figure_3_bins_them():
    frame = binned_means([1, 2, 3, 4], {"A": [10, 20, 30, 40]}, n_bins=2)
    assert frame["bin"].tolist() == [0, 1] and frame["n"].tolist() == [2, 2]
    assert frame["H_low"].tolist() == [1, 2.5] and frame["H_high"].tolist() == [2.5, 4]
    assert frame["H_mean"].tolist() == [1.5, 3.5] and frame["A"].tolist() == [15, 35]
    assert binned_means([2, 2, 2], {"A": [1, 2, 6]})[["n", "A"]].values.tolist() == [[3, 3]]
    assert len(binned_means([], {"A": []})) == 0

    from figures.paper import binned_means as figure_bins

    rng = np.random.default_rng(0)
    h, a = np.round(rng.exponential(size=500), 1), rng.normal(size=500)
    ours, theirs = binned_means(h, {"A": a}), figure_bins(h, a)
    np.testing.assert_allclose(ours["A"], theirs["mean"])
    np.testing.assert_allclose(ours["H_mean"], theirs["x"])


# --------------------------------------------------------------------------- TV


def test_tv_by_hand():
    p = torch.tensor([0.5, 0.5]).log()
    q = torch.tensor([0.9, 0.1]).log()
    assert float(tv_from_logits(p, q)) == pytest.approx(0.4, abs=1e-6)
    assert float(tv_from_logits(q, p)) == pytest.approx(0.4, abs=1e-6)
    assert float(tv_from_logits(p, p + 3.0)) == 0.0  # softmax is shift invariant
    far = tv_from_logits(torch.tensor([30.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 30.0]))
    assert float(far) == pytest.approx(1.0, abs=1e-6)


def test_tv_shapes_chunks_and_naive_reference():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    naive = 0.5 * (a.softmax(-1) - b.softmax(-1)).abs().sum(-1)
    out = tv_from_logits(a, b, chunk_size=4)
    assert out.shape == (3, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, naive)
    torch.testing.assert_close(tv_from_logits(a, b, chunk_size=1000), out)
    with pytest.raises(ValueError, match="non-finite"):
        tv_from_logits(a.masked_fill(a > 2, float("nan")), b)
    with pytest.raises(ValueError, match="equal shape"):
        tv_from_logits(a, b[..., :3])
