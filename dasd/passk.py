"""Pass@k and Avg@k: the one implementation of both in the project.

``pass_at_k(n, c, k)`` is the unbiased estimator of Chen et al. (2021), "Evaluating Large
Language Models Trained on Code", eq. 1: with ``n`` samples of which ``c`` are correct, the
probability that at least one of ``k`` samples drawn without replacement is correct,

    pass@k = 1 − C(n − c, k) / C(n, k),     and 1 when n − c < k.

``avg_at_k(n, c)`` is the mean accuracy c / n (the paper's Avg@k when n = k).

Both are pure (numpy / pandas in, numbers out) and vectorized with numpy broadcasting:
scalars in give a Python ``float``; any array in gives a ``float64`` array of the broadcast
shape. A pass@k curve over prompts is one broadcast::

    n, c = counts["n"].to_numpy(), counts["c"].to_numpy()     # one entry per prompt
    curve = pass_at_k(n[:, None], c[:, None], ks[None, :]).mean(axis=0)

Numerics: never forms a binomial. With a = min(c, k) and b = max(c, k),

    C(n − c, k) / C(n, k) = Π_{j=0}^{a−1} (1 − b / (n − j)),

summed in log space with ``log1p`` (every term has the same sign, so the sum has no
cancellation) and mapped back with ``-expm1``. Relative error stays at a few ulp times a
(< 1e-12 for n ≤ 1024), also where pass@k is small, which the log-gamma form cannot give
(its absolute error grows like n·ε). Memory is bounded (the product is evaluated in blocks),
and a vectorized call returns bit for bit what a loop of scalar calls would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["pass_at_k", "avg_at_k", "per_prompt_counts"]

# The product is evaluated in (rows x terms) blocks of at most _ROW_CHUNK x _TERM_BLOCK
# float64 (~32 MB). Terms are summed strictly left to right (cumsum) within fixed-width term
# blocks, so an element's value does not depend on what else is in the batch: the vectorized
# result equals the scalar one bit for bit.
_TERM_BLOCK = 256
_ROW_CHUNK = 1 << 14


def _as_int_array(x: object, name: str) -> np.ndarray:
    """``x`` as an int64 array; a ValueError naming ``name`` if it is not integer-valued."""
    arr = np.asarray(x)
    if arr.dtype == bool or arr.dtype.kind not in "iuf":
        raise ValueError(
            f"{name} must be an integer or an array of integers, got dtype {arr.dtype}"
        )
    if arr.dtype.kind == "f":
        integral = np.isfinite(arr) & (arr == np.floor(arr))
        if not integral.all():
            bad = float(arr[~integral].ravel()[0])
            raise ValueError(f"{name} must be integer-valued, got {bad!r}")
        if arr.size and np.abs(arr).max() >= 2.0**53:
            raise ValueError(f"{name} is too large to be an exact integer in float64")
    elif arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} is too large (exceeds int64)")
    return arr.astype(np.int64)


def _first(mask: np.ndarray, *arrays: np.ndarray) -> tuple[int, ...]:
    idx = np.flatnonzero(mask.ravel())[0]
    return tuple(int(a.ravel()[idx]) for a in arrays)


def _validate_nc(n: object, c: object) -> tuple[np.ndarray, np.ndarray]:
    n_arr = _as_int_array(n, "n")
    c_arr = _as_int_array(c, "c")
    n_arr, c_arr = np.broadcast_arrays(n_arr, c_arr)
    if (bad := n_arr < 1).any():
        raise ValueError(f"n must be >= 1 (number of samples), got n={_first(bad, n_arr)[0]}")
    if (bad := c_arr < 0).any():
        raise ValueError(f"c must be >= 0 (number correct), got c={_first(bad, c_arr)[0]}")
    if (bad := c_arr > n_arr).any():
        cc, nn = _first(bad, c_arr, n_arr)
        raise ValueError(f"c must be <= n (number correct among n samples), got c={cc}, n={nn}")
    return n_arr, c_arr


def _out(values: np.ndarray, scalar: bool) -> float | np.ndarray:
    return float(values) if scalar else values


def _sum_log_terms(n: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_{j<a} log1p(−b / (n − j)) per element (a >= 1, n − a + 1 > b)."""
    n_f, b_f = n.astype(np.float64), b.astype(np.float64)
    acc = np.zeros(n.shape, dtype=np.float64)
    max_terms = int(a.max())
    for start in range(0, max_terms, _TERM_BLOCK):
        j = np.arange(start, min(start + _TERM_BLOCK, max_terms), dtype=np.float64)
        active = j[None, :] < a[:, None]
        # On active terms n − j > b >= 0, so the argument of log1p lies in (−1, 0];
        # inactive terms are exactly 0 and leave a left-to-right sum unchanged.
        ratio = np.where(active, b_f[:, None], 0.0) / np.where(active, n_f[:, None] - j, 1.0)
        acc += np.cumsum(np.log1p(-ratio), axis=1)[:, -1]
    return acc


def pass_at_k(n: object, c: object, k: object) -> float | np.ndarray:
    """Unbiased pass@k estimate 1 − C(n−c, k) / C(n, k) (Chen et al. 2021); 1 when n − c < k.

    ``n`` samples, ``c`` of them correct, ``k`` drawn. Integers or integer arrays (integral
    floats accepted), broadcast against each other. Scalars in -> ``float``; arrays in ->
    ``float64`` array. A ``ValueError`` naming the argument for k < 1, k > n, c < 0, c > n,
    n < 1 or a non-integer value.

    >>> pass_at_k(2, 1, 1), pass_at_k(2, 1, 2), pass_at_k(5, 0, 3)
    (0.5, 1.0, 0.0)
    """
    scalar = all(np.ndim(x) == 0 for x in (n, c, k))
    n_arr, c_arr = _validate_nc(n, c)
    k_arr = _as_int_array(k, "k")
    n_arr, c_arr, k_arr = np.broadcast_arrays(n_arr, c_arr, k_arr)
    if (bad := k_arr < 1).any():
        raise ValueError(f"k must be >= 1, got k={_first(bad, k_arr)[0]}")
    if (bad := k_arr > n_arr).any():
        kk, nn = _first(bad, k_arr, n_arr)
        raise ValueError(f"k must be <= n (cannot draw k of n samples), got k={kk}, n={nn}")

    shape = n_arr.shape
    n_f, c_f, k_f = (a.ravel() for a in (n_arr, c_arr, k_arr))
    certain = (n_f - c_f) < k_f  # every draw of k contains a correct sample
    a = np.where(certain, 0, np.minimum(c_f, k_f))  # number of product terms
    b = np.maximum(c_f, k_f)
    log_ratio = np.zeros(n_f.shape, dtype=np.float64)

    todo = np.flatnonzero(a > 0)
    for lo in range(0, todo.size, _ROW_CHUNK):
        rows = todo[lo : lo + _ROW_CHUNK]
        log_ratio[rows] = _sum_log_terms(n_f[rows], a[rows], b[rows])

    result = -np.expm1(log_ratio) + 0.0  # + 0.0 turns -0.0 into 0.0
    result[certain] = 1.0
    return _out(result.reshape(shape), scalar)


def avg_at_k(n: object, c: object) -> float | np.ndarray:
    """Mean accuracy c / n (the paper's Avg@k when n = k samples per prompt).

    Vectorized like :func:`pass_at_k`; ValueError naming the argument for n < 1, c < 0,
    c > n or non-integer values.

    >>> avg_at_k(4, 1)
    0.25
    """
    scalar = np.ndim(n) == 0 and np.ndim(c) == 0
    n_arr, c_arr = _validate_nc(n, c)
    return _out(c_arr / n_arr, scalar)


def per_prompt_counts(
    rollouts: pd.DataFrame,
    *,
    by: str | Sequence[str] = "prompt_id",
    correct: str = "correct",
) -> pd.DataFrame:
    """Samples ``n`` and correct ``c`` per group of rollouts (one row = one response).

    ``by``: the grouping column(s), e.g. ``["step", "split", "prompt_id"]`` when the frame
    holds several steps. Returns a frame with the ``by`` columns, ``n`` and ``c`` (int64),
    sorted by the keys. ``correct`` must be a boolean column without missing values.
    """
    keys = [by] if isinstance(by, str) else list(by)
    missing = [col for col in [*keys, correct] if col not in rollouts.columns]
    if missing:
        raise ValueError(
            f"rollouts lack column(s) {missing}; have {list(rollouts.columns)}"
        )
    flags = rollouts[correct]
    if flags.isna().any():
        raise ValueError(f"column {correct!r} has missing values; it must be boolean")
    if not pd.api.types.is_bool_dtype(flags):
        raise ValueError(f"column {correct!r} must be boolean, got dtype {flags.dtype}")
    frame = pd.DataFrame({k: rollouts[k] for k in keys})
    frame["c"] = flags.astype(np.int64).to_numpy()
    grouped = frame.groupby(keys, sort=True, observed=True, dropna=False)["c"]
    out = grouped.agg(n="size", c="sum").reset_index()
    return out.astype({"n": np.int64, "c": np.int64})
