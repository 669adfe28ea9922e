"""dasd.passk: hand cases, exact fractions, monotonicity, vectorization, bad input."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dasd.passk import avg_at_k, pass_at_k, per_prompt_counts


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    if n - c < k:
        return Fraction(1)
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


# ---------------------------------------------------------------- hand cases


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (2, 1, 1, 0.5),
        (2, 1, 2, 1.0),
        (5, 0, 1, 0.0),
        (5, 0, 5, 0.0),
        (5, 5, 1, 1.0),
        (7, 7, 7, 1.0),
        (10, 3, 2, 1 - 21 / 45),  # 1 − C(7,2)/C(10,2)
        (10, 3, 1, 0.3),
        (4, 1, 4, 1.0),  # n − c = 3 < k = 4
        (4, 1, 3, 0.75),  # 1 − C(3,3)/C(4,3) = 1 − 1/4
    ],
)
def test_hand_cases(n, c, k, expected):
    got = pass_at_k(n, c, k)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-15, abs=0)


def test_zero_is_positive_zero_and_k1_is_accuracy():
    assert math.copysign(1.0, pass_at_k(8, 0, 3)) == 1.0
    for n in (1, 2, 16, 1024):
        for c in range(0, n + 1, max(1, n // 7)):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, rel=1e-13)


def test_avg_at_k_hand():
    assert avg_at_k(4, 1) == 0.25
    assert isinstance(avg_at_k(4, 1), float)
    assert avg_at_k(3, 0) == 0.0
    np.testing.assert_allclose(avg_at_k(np.array([4, 8]), np.array([2, 2])), [0.5, 0.25])


# ---------------------------------------------------------------- exactness


def test_agrees_with_exact_fractions_random():
    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(1, 1025))
        c = int(rng.integers(0, n + 1))
        k = int(rng.integers(1, n + 1))
        exact = float(exact_pass_at_k(n, c, k))
        got = pass_at_k(n, c, k)
        if exact == 0.0:
            assert got == 0.0
        else:
            assert abs(got - exact) / exact < 1e-9, (n, c, k, got, exact)


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(1024, 1, 1), (1024, 1, 2), (1024, 2, 1), (1024, 1, 512), (1024, 512, 512),
     (1024, 1000, 24), (1024, 1, 1023), (1000, 3, 997), (1024, 24, 1000)],
)
def test_extremes_exact(n, c, k):
    """Small pass@k (where a log-gamma form loses ~1e-9 relative) and near-1 values."""
    exact = float(exact_pass_at_k(n, c, k))
    assert abs(pass_at_k(n, c, k) - exact) / exact < 1e-12


def test_large_n_is_finite_and_stable():
    # Far beyond where C(n, k) fits in a float64.
    assert pass_at_k(100_000, 1, 1) == pytest.approx(1e-5, rel=1e-12)
    exact = float(exact_pass_at_k(5000, 7, 2500))
    assert pass_at_k(5000, 7, 2500) == pytest.approx(exact, rel=1e-12)
    assert pass_at_k(10**7, 10**5, 10**5) == 1.0  # 1 − (≈0.99)^1e5


# ---------------------------------------------------------------- properties


@st.composite
def nck(draw):
    n = draw(st.integers(1, 1024))
    c = draw(st.integers(0, n))
    k = draw(st.integers(1, n))
    return n, c, k


@settings(max_examples=150, deadline=None)
@given(nck())
def test_monotone_in_k_and_c(args):
    n, c, k = args
    p = pass_at_k(n, c, k)
    assert 0.0 <= p <= 1.0
    if k < n:
        assert pass_at_k(n, c, k + 1) >= p
    if c < n:
        assert pass_at_k(n, c + 1, k) >= p
    if c > 0:
        assert p >= avg_at_k(n, c) - 1e-12  # pass@k >= pass@1 = c/n


@settings(max_examples=60, deadline=None)
@given(st.lists(nck(), min_size=1, max_size=30))
def test_vectorized_equals_scalar_loop(triples):
    n, c, k = (np.array(x) for x in zip(*triples))
    vec = pass_at_k(n, c, k)
    assert isinstance(vec, np.ndarray) and vec.dtype == np.float64 and vec.shape == n.shape
    loop = np.array([pass_at_k(int(a), int(b), int(d)) for a, b, d in triples])
    np.testing.assert_array_equal(vec, loop)
    np.testing.assert_array_equal(avg_at_k(n, c), [avg_at_k(int(a), int(b)) for a, b in zip(n, c)])


def test_broadcasting_curve():
    n = np.array([16, 16, 16])
    c = np.array([0, 4, 16])
    ks = np.array([1, 2, 4, 8, 16])
    table = pass_at_k(n[:, None], c[:, None], ks[None, :])
    assert table.shape == (3, 5)
    for i in range(3):
        for j, k in enumerate(ks):
            assert table[i, j] == pass_at_k(int(n[i]), int(c[i]), int(k))
    curve = table.mean(axis=0)
    assert np.all(np.diff(curve) >= 0)
    # 0-d arrays count as scalars; integral floats are accepted.
    assert isinstance(pass_at_k(np.array(4), 1, 1), float)
    assert pass_at_k(4.0, 1.0, 2.0) == pass_at_k(4, 1, 2)


def test_blocked_evaluation_matches(monkeypatch):
    import dasd.passk as passk

    n = np.full(50, 300)
    c = np.arange(50) * 6
    full = pass_at_k(n, c, 40)
    monkeypatch.setattr(passk, "_ROW_CHUNK", 7)
    np.testing.assert_array_equal(pass_at_k(n, c, 40), full)  # row chunks: bit-identical
    monkeypatch.setattr(passk, "_TERM_BLOCK", 3)
    np.testing.assert_allclose(pass_at_k(n, c, 40), full, rtol=1e-14, atol=0)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((4, 1, 0), "k"),
        ((4, 1, -2), "k"),
        ((4, 1, 5), "k"),
        ((4, -1, 1), "c"),
        ((4, 5, 1), "c"),
        ((0, 0, 1), "n"),
        ((4.5, 1, 1), "n"),
        ((4, 1.5, 1), "c"),
        ((4, 1, 2.5), "k"),
        ((4, 1, float("nan")), "k"),
        (("4", 1, 1), "n"),
        ((4, True, 1), "c"),
        ((np.array([4, 4]), np.array([1, 9]), 1), "c"),
        ((np.array([4, 2]), 1, np.array([3, 3])), "k"),
    ],
)
def test_bad_input_names_argument(args, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        pass_at_k(*args)


def test_avg_bad_input():
    with pytest.raises(ValueError, match="^c "):
        avg_at_k(3, 4)
    with pytest.raises(ValueError, match="^n "):
        avg_at_k(0, 0)


# ---------------------------------------------------------------- per-prompt counts


def test_per_prompt_counts():
    df = pd.DataFrame({
        "step": [0, 0, 0, 0, 10, 10],
        "prompt_id": ["b", "a", "b", "a", "a", "a"],
        "correct": [True, False, True, True, False, False],
    })
    out = per_prompt_counts(df)
    assert out["prompt_id"].tolist() == ["a", "b"]
    assert out["n"].tolist() == [4, 2] and out["c"].tolist() == [1, 2]
    assert out["n"].dtype == np.int64 and out["c"].dtype == np.int64
    by_step = per_prompt_counts(df, by=["step", "prompt_id"])
    assert by_step[["step", "prompt_id", "n", "c"]].values.tolist() == [
        [0, "a", 2, 1], [0, "b", 2, 2], [10, "a", 2, 0]]
    assert pass_at_k(by_step["n"].to_numpy(), by_step["c"].to_numpy(), 1).tolist() == [0.5, 1, 0]


def test_per_prompt_counts_errors():
    with pytest.raises(ValueError, match="prompt_id"):
        per_prompt_counts(pd.DataFrame({"correct": [True]}))
    with pytest.raises(ValueError, match="boolean"):
        per_prompt_counts(pd.DataFrame({"prompt_id": ["a"], "correct": [1]}))
