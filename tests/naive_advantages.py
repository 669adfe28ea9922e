"""Naive references for ``dasd.advantages``: one group / one trajectory at a time, numpy only.

Written straight from the paper (Algorithm 1 lines 4 and 13-21, eq. 4 and 8) and DESIGN.md
section 3, sharing no code with the vectorized module, so that agreement means something.
Arrays in, arrays out; the computation keeps the inputs' numpy dtype.
"""

from __future__ import annotations

import math

import numpy as np

DIRECTION_NAMES = ("tanh", "hard", "linear", "plus", "minus")
GATE_NAMES = ("sigmoid", "none", "magnitude", "fixed")


def group_advantages(rewards, group_size, eps=1e-6):
    """A_G = (R - mean) / (std + eps) per group of ``group_size``, unbiased std; 0 if constant."""
    rewards = np.asarray(rewards, dtype=np.float64)
    out = np.zeros_like(rewards)
    for start in range(0, len(rewards), group_size):
        r = rewards[start:start + group_size]
        if group_size == 1 or np.all(r == r[0]):
            continue
        out[start:start + group_size] = (r - r.mean()) / (r.std(ddof=1) + eps)
    return out


def _direction(name, x):
    if name == "tanh":
        return np.tanh(x)
    if name == "hard":
        return np.sign(x)
    if name == "linear":
        return np.clip(x, -1.0, 1.0)
    if name == "plus":
        return np.ones_like(x)
    if name == "minus":
        return -np.ones_like(x)
    raise ValueError(name)


def _gate(name, delta, delta_bar, c):
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-(np.abs(delta_bar) - 1.0)))
    if name == "none":
        return np.ones_like(delta_bar)
    if name == "magnitude":
        return np.abs(delta_bar)
    if name == "fixed":
        return (np.abs(delta) > c).astype(delta_bar.dtype)
    raise ValueError(name)


FIELDS = ("advantages", "omega", "delta_bar", "router", "gate")


def _zeros(mask, dtype):
    return {k: np.zeros(mask.shape, dtype=dtype) for k in FIELDS}


def _row_gap(student_logp, teacher_logp, i, valid, eps, gap_scale="none"):
    """delta and delta / (median |delta| + eps) ("median") or delta itself ("none") over the
    valid tokens of row ``i``."""
    delta = teacher_logp[i, valid] - student_logp[i, valid]
    if gap_scale == "none":
        return delta, delta.copy()
    return delta, delta / (np.median(np.abs(delta)) + eps)


def _valid_rows(mask):
    """``(i, valid)`` for each row ``i`` of ``mask`` with at least one valid token."""
    return ((i, valid) for i, valid in enumerate(mask) if valid.any())


def dasd_advantages(group_adv, entropy, student_logp, teacher_logp, mask, *, beta, rho=0.2,
                    eps=1e-6, direction="tanh", gate="sigmoid", c=math.log(2.0),
                    gap_scale="median"):
    """Row loop over trajectories; returns a dict with the five ``TokenAdvantages`` fields."""
    mask = np.asarray(mask, dtype=bool)
    entropy = np.asarray(entropy)
    out = _zeros(mask, entropy.dtype)
    for i, valid in _valid_rows(mask):
        h = entropy[i, valid]
        delta, delta_bar = _row_gap(student_logp, teacher_logp, i, valid, eps, gap_scale)
        tau = np.quantile(h, rho)
        sigma_h = np.mean(np.abs(h - np.mean(h)))
        g = _gate(gate, delta, delta_bar, c)
        z = _direction(direction, (tau - h) / (sigma_h + eps))
        omega = z * g
        out["advantages"][i, valid] = group_adv[i] + beta * omega * delta_bar
        out["omega"][i, valid] = omega
        out["delta_bar"][i, valid] = delta_bar
        out["router"][i, valid] = z
        out["gate"][i, valid] = g
    return out


# --------------------------------------------------------------------------- paper baselines

def hepo_advantages(group_adv, entropy, mask, *, rho=0.2):
    """A_G on tokens at or above the batch-wide (1 - rho) entropy quantile, 0 elsewhere."""
    mask = np.asarray(mask, dtype=bool)
    entropy = np.asarray(entropy)
    out = _zeros(mask, entropy.dtype)
    if not mask.any():
        return out
    threshold = np.quantile(entropy[mask], 1 - rho)
    for i in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[i, t] and entropy[i, t] >= threshold:
                out["advantages"][i, t] = group_adv[i]
                out["router"][i, t] = 1.0
    return out


def rlsd_advantages(group_adv, student_logp, teacher_logp, mask, *, eps=1e-6, clip=0.2):
    """A_G * clip(exp(sign(A_G) delta), 1 - clip, 1 + clip); gate = the scale."""
    mask = np.asarray(mask, dtype=bool)
    out = _zeros(mask, np.asarray(student_logp).dtype)
    for i, valid in _valid_rows(mask):
        delta, delta_bar = _row_gap(student_logp, teacher_logp, i, valid, eps)
        scale = np.clip(np.exp(np.sign(group_adv[i]) * delta), 1 - clip, 1 + clip)
        out["advantages"][i, valid] = group_adv[i] * scale
        out["gate"][i, valid] = scale
        out["delta_bar"][i, valid] = delta_bar
    return out


def opsd_advantages(group_adv, student_logp, teacher_logp, mask, *, eps=1e-6):
    """A_G on every valid token; omega = router = gate = 1; delta_bar recorded."""
    mask = np.asarray(mask, dtype=bool)
    out = _zeros(mask, np.asarray(student_logp).dtype)
    for i, valid in _valid_rows(mask):
        _, delta_bar = _row_gap(student_logp, teacher_logp, i, valid, eps)
        out["advantages"][i, valid] = group_adv[i]
        out["delta_bar"][i, valid] = delta_bar
        for name in ("omega", "router", "gate"):
            out[name][i, valid] = 1.0
    return out


def sdpo_advantages(group_adv, student_logp, teacher_logp, mask, *, beta, eps=1e-6,
                    gap_scale="none"):
    """A_G + beta delta_bar; omega = router = gate = 1."""
    out = opsd_advantages(group_adv, student_logp, teacher_logp, mask, eps=eps)
    mask = np.asarray(mask, dtype=bool)
    for i, valid in _valid_rows(mask):
        _, delta_bar = _row_gap(student_logp, teacher_logp, i, valid, eps, gap_scale)
        out["delta_bar"][i, valid] = delta_bar
        out["advantages"][i, valid] += beta * delta_bar
    return out


def srpo_advantages(group_adv, entropy, student_logp, teacher_logp, mask, correct, *, beta,
                    eps=1e-6, gap_scale="none"):
    """Correct rows A_G; failed rows A_G + beta exp(-max(H, 0)) delta_bar."""
    mask = np.asarray(mask, dtype=bool)
    out = _zeros(mask, np.asarray(entropy).dtype)
    for i, valid in _valid_rows(mask):
        _, delta_bar = _row_gap(student_logp, teacher_logp, i, valid, eps, gap_scale)
        w = np.exp(-np.maximum(entropy[i, valid], 0.0))
        out["delta_bar"][i, valid] = delta_bar
        out["gate"][i, valid] = w
        if correct[i]:
            out["advantages"][i, valid] = group_adv[i]
        else:
            out["router"][i, valid] = 1.0
            out["omega"][i, valid] = w
            out["advantages"][i, valid] = group_adv[i] + beta * w * delta_bar
    return out
