"""Tests for ``dasd.advantages``: hand values, the naive reference, invariances, edge cases."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dasd.advantages import (
    DIRECTIONS,
    GATES,
    METHOD_GAP_SCALE,
    METHODS,
    TokenAdvantages,
    _masked_median,
    _masked_quantile,
    dasd_advantages,
    get_method,
    group_advantages,
)
from tests import naive_advantages as naive

FIELDS = [f.name for f in dataclasses.fields(TokenAdvantages)]
DIRECTION_NAMES = list(naive.DIRECTION_NAMES)
GATE_NAMES = list(naive.GATE_NAMES)


# --------------------------------------------------------------------------- helpers


def random_mask(rng: np.random.Generator, B: int, T: int) -> np.ndarray:
    """Rows drawn from: empty, one valid token, full, right-padded prefix, scattered."""
    mask = np.zeros((B, T), dtype=bool)
    for i in range(B):
        kind = rng.integers(5) if T else 0
        if kind == 1:
            mask[i, rng.integers(T)] = True
        elif kind == 2:
            mask[i] = True
        elif kind == 3:
            mask[i, : rng.integers(1, T + 1)] = True
        elif kind == 4:
            mask[i] = rng.random(T) < rng.random()
    return mask


def random_batch(seed: int, B: int, T: int, *, coarse: bool = False, dtype=torch.float64):
    """Random (group_adv, entropy, student_logp, teacher_logp, mask); garbage off the mask.

    ``coarse`` rounds values to a 0.5 grid, so ties, zero gaps and zero medians occur.
    """
    rng = np.random.default_rng(seed)
    mask = random_mask(rng, B, T)
    entropy = rng.gamma(1.0, 1.0, size=(B, T))
    student = -rng.gamma(1.0, 1.0, size=(B, T))
    teacher = student + rng.normal(0.0, 1.0, size=(B, T))
    if coarse:
        entropy, student, teacher = (np.round(2 * x) / 2 for x in (entropy, student, teacher))
    garbage = rng.choice([np.nan, np.inf, -np.inf, 1e30, -7.0], size=(B, T))
    entropy, student, teacher = (np.where(mask, x, garbage) for x in (entropy, student, teacher))
    group_adv = rng.normal(size=B)
    t = lambda x: torch.tensor(x, dtype=dtype)  # noqa: E731
    return t(group_adv), t(entropy), t(student), t(teacher), torch.tensor(mask)


def as_numpy(*tensors):
    return [x.numpy() for x in tensors]


def assert_zero_off_mask_and_finite(out: TokenAdvantages, mask: torch.Tensor) -> None:
    for name in FIELDS:
        x = getattr(out, name)
        assert x.shape == mask.shape, name
        assert torch.isfinite(x).all(), name
        assert (x[~mask] == 0).all(), name


# --------------------------------------------------------------------------- group advantages


def test_group_advantages_hand_case():
    # mean 0.25, unbiased std 0.5 -> [1.5, -0.5, -0.5, -0.5]; the biased std (0.433) gives 1.73.
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, eps=1e-12)
    torch.testing.assert_close(adv, torch.tensor([1.5, -0.5, -0.5, -0.5]))
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6))


def test_group_advantages_groups_are_consecutive_and_constant_groups_are_zero():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    adv = group_advantages(rewards, 4)
    torch.testing.assert_close(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5, rtol=0)
    assert torch.equal(adv[4:8], torch.zeros(4))
    s = 1 / math.sqrt(1 / 3)  # [0,1,0,1]: mean .5, unbiased std sqrt(1/3)
    torch.testing.assert_close(adv[8:], torch.tensor([-0.5, 0.5, -0.5, 0.5]) * s, atol=1e-5, rtol=0)


def test_group_advantages_constant_group_is_exactly_zero():
    # mean([0.1] * 3) rounds to 0.10000000000000002: (R - mean) / (0 + eps) would be -1.4e-11.
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.0, 1.0, 0.0], dtype=torch.float64)
    adv = group_advantages(rewards, 3)
    assert torch.equal(adv[:3], torch.zeros(3, dtype=torch.float64))


def test_group_advantages_group_size_one_and_dtypes():
    assert torch.equal(group_advantages(torch.tensor([1.0, 0.0, 3.0]), 1), torch.zeros(3))
    assert group_advantages(torch.tensor([1, 0, 0, 0]), 2).dtype == torch.float32
    assert group_advantages(torch.tensor([True, False]), 2).dtype == torch.float32
    assert group_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2).dtype == torch.float64
    assert group_advantages(torch.zeros(0), 4).shape == (0,)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("group_size", [1, 2, 3, 8])
def test_group_advantages_match_naive(seed, group_size):
    rng = np.random.default_rng(seed)
    rewards = rng.choice([0.0, 1.0, 0.5], size=group_size * int(rng.integers(1, 9)))
    got = group_advantages(torch.tensor(rewards), group_size)
    np.testing.assert_allclose(got.numpy(), naive.group_advantages(rewards, group_size),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "rewards, group_size",
    [(torch.ones(6), 4), (torch.ones(2, 4), 4), (torch.ones(4), 0), (torch.ones(4), 2.0)],
)
def test_group_advantages_rejects_bad_input(rewards, group_size):
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size)


@settings(max_examples=200, deadline=None)
@given(
    rewards=hnp.arrays(np.float32, st.integers(0, 24),
                       elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    group_size=st.integers(1, 6),
)
def test_group_advantages_never_nan_or_inf(rewards, group_size):
    rewards = rewards[: len(rewards) - len(rewards) % group_size]
    adv = group_advantages(torch.from_numpy(rewards), group_size)
    assert torch.isfinite(adv).all()
    groups = adv.double().reshape(-1, group_size)
    assert (groups.sum(dim=1).abs() <= 1e-5 * group_size).all()  # centred within each group


# --------------------------------------------------------------------------- masked statistics


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(4))
def test_masked_median_and_quantile_are_exactly_numpy(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 9, generator=g, dtype=dtype)
    x[::3] = x[::3].round()  # ties
    mask = torch.rand(64, 9, generator=g) < torch.rand(64, 1, generator=g)
    mask[0] = False
    mask[1] = False
    mask[1, 4] = True
    n = mask.sum(-1)
    assert {int(k) % 2 for k in n[n > 0]} == {0, 1}  # both parities exercised
    medians = _masked_median(x, mask, n)
    for q in (0.0, 0.2, 0.5, 0.9, 1.0):
        quantiles = _masked_quantile(x, mask, n, q)
        for i in range(64):
            v = x[i][mask[i]].numpy()
            if len(v) == 0:
                assert medians[i] == 0 and quantiles[i] == 0
            else:
                assert medians[i].item() == np.median(v)
                assert quantiles[i].item() == np.quantile(v, q)


# --------------------------------------------------------------------------- hand-computed DASD


def test_dasd_one_row_by_hand():
    # Four valid tokens and one padded column of garbage.
    H = [0.5, 1.0, 2.0, 4.5, 99.0]
    student = [-1.0, -0.5, -2.0, -0.1, float("nan")]
    teacher = [-0.5, -0.5, -3.0, -0.4, float("inf")]
    mask = torch.tensor([[True, True, True, True, False]])
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    A_G, beta, eps = 1.5, 0.5, 1e-12
    # By hand:
    #   tau  = Quantile_0.2(H): rank 0.2 * 3 = 0.6 -> 0.5 + 0.6 (1.0 - 0.5) = 0.8
    #          (numpy "lower" would give 0.5, "nearest" 1.0)
    #   mean(H) = 2, |H - 2| = [1.5, 1, 0, 2.5] -> sigma_H = 1.25 (the std would be 1.54)
    #   delta = [0.5, 0, -1, -0.3]; |delta| sorted [0, .3, .5, 1] -> median (0.3 + 0.5) / 2 = 0.4
    #   delta_bar = [1.25, 0, -2.5, -0.75]
    tau, sigma_h, delta_tilde = 0.8, 1.25, 0.4
    delta_bar = [1.25, 0.0, -2.5, -0.75]
    router_arg = [(tau - h) / sigma_h for h in H[:4]]  # [0.24, -0.16, -0.96, -2.96]
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    gate = [sig(abs(d) - 1) for d in delta_bar]
    omega = [math.tanh(a) * g for a, g in zip(router_arg, gate)]
    adv = [A_G + beta * w * d for w, d in zip(omega, delta_bar)]

    out = dasd_advantages(torch.tensor([A_G], dtype=torch.float64), t(H), t(student), t(teacher),
                          mask, beta=beta, eps=eps)
    close = lambda got, want: np.testing.assert_allclose(  # noqa: E731
        got[0].numpy(), [*want, 0.0], rtol=1e-9, atol=1e-12)
    close(out.delta_bar, delta_bar)
    close(out.gate, gate)
    close(out.router, [math.tanh(a) for a in router_arg])
    close(out.omega, omega)
    close(out.advantages, adv)

    # The statistics themselves, read back through the linear router (identity on [-1, 1]).
    lin = dasd_advantages(torch.tensor([A_G], dtype=torch.float64), t(H), t(student), t(teacher),
                          mask, beta=beta, eps=eps, direction="linear")
    z = lin.router[0].numpy()
    recovered_sigma = (H[1] - H[0]) / (z[0] - z[1])
    assert recovered_sigma == pytest.approx(sigma_h, rel=1e-9)
    assert H[0] + z[0] * recovered_sigma == pytest.approx(tau, rel=1e-9)
    assert z[3] == -1.0  # -2.96 clipped
    assert (0.5 / out.delta_bar[0, 0]).item() == pytest.approx(delta_tilde, rel=1e-9)


# --------------------------------------------------------------------------- naive reference


@pytest.mark.parametrize("direction", DIRECTION_NAMES)
@pytest.mark.parametrize("gate", GATE_NAMES)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("gap_scale", ["median", "none"])
def test_dasd_matches_naive_reference(direction, gate, seed, gap_scale):
    rng = np.random.default_rng(1000 + seed)
    B, T = int(rng.integers(1, 12)), int(rng.integers(1, 40))
    coarse = seed == 2
    batch = random_batch(seed, B, T, coarse=coarse)
    rho = float(rng.choice([0.0, 0.2, 0.5, 0.73, 1.0]))
    kw = dict(beta=0.7, rho=rho, direction=direction, gate=gate, c=0.5, gap_scale=gap_scale)
    got = dasd_advantages(*batch, **kw)
    want = naive.dasd_advantages(*as_numpy(*batch), **kw)
    for name in FIELDS:
        np.testing.assert_allclose(getattr(got, name).numpy(), want[name], rtol=1e-10,
                                   atol=1e-10, err_msg=name)


def test_naive_agreement_covers_even_odd_empty_and_single_rows():
    """The generator used above produces every row kind the contract names."""
    counts = set()
    for seed in range(3):
        *_, mask = random_batch(seed, 64, 20)
        counts |= set(mask.sum(-1).tolist())
    assert 0 in counts and 1 in counts
    assert any(k % 2 == 0 and k > 0 for k in counts) and any(k % 2 == 1 and k > 1 for k in counts)


@pytest.mark.parametrize("direction", DIRECTION_NAMES)
@pytest.mark.parametrize("gate", GATE_NAMES)
def test_dasd_matches_naive_reference_float32(direction, gate):
    batch = random_batch(7, 16, 50, dtype=torch.float32)
    kw = dict(beta=1.3, rho=0.2, direction=direction, gate=gate)
    got = dasd_advantages(*batch, **kw)
    assert got.advantages.dtype == torch.float32
    want = naive.dasd_advantages(*as_numpy(*batch), **kw)
    for name in FIELDS:
        np.testing.assert_allclose(getattr(got, name).numpy(), want[name], rtol=2e-5,
                                   atol=2e-5, err_msg=name)


# --------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("direction", DIRECTION_NAMES)
@pytest.mark.parametrize("gate", GATE_NAMES)
def test_extra_masked_padding_changes_nothing(direction, gate):
    group_adv, H, s, q, mask = random_batch(3, 9, 17)
    kw = dict(beta=0.9, direction=direction, gate=gate)
    base = dasd_advantages(group_adv, H, s, q, mask, **kw)
    pad = lambda x, v: torch.cat([x, torch.full((9, 6), v, dtype=x.dtype)], dim=1)  # noqa: E731
    padded = dasd_advantages(group_adv, pad(H, -1e30), pad(s, float("nan")), pad(q, float("inf")),
                             pad(mask, False), **kw)
    for name in FIELDS:
        torch.testing.assert_close(getattr(padded, name)[:, :17], getattr(base, name),
                                   rtol=1e-12, atol=1e-12)
        assert (getattr(padded, name)[:, 17:] == 0).all()


@pytest.mark.parametrize("direction", ["tanh", "hard", "linear"])
def test_permuting_rows_permutes_outputs(direction):
    batch = random_batch(4, 13, 21)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(0))
    out = dasd_advantages(*batch, beta=0.5, direction=direction)
    permuted = dasd_advantages(*(x[perm] for x in batch), beta=0.5, direction=direction)
    for name in FIELDS:
        assert torch.equal(getattr(permuted, name), getattr(out, name)[perm]), name


@pytest.mark.parametrize("direction", DIRECTION_NAMES)
@pytest.mark.parametrize("gate", GATE_NAMES)
def test_beta_zero_is_grpo(direction, gate):
    group_adv, H, s, q, mask = random_batch(5, 8, 15)
    out = dasd_advantages(group_adv, H, s, q, mask, beta=0.0, direction=direction, gate=gate)
    expected = torch.where(mask, group_adv[:, None].expand_as(mask), 0.0)
    assert torch.equal(out.advantages, expected)


def test_plus_without_gate_is_uniform_attraction_and_minus_its_mirror():
    group_adv, H, s, q, mask = random_batch(6, 10, 30)
    beta = 0.37
    plus = dasd_advantages(group_adv, H, s, q, mask, beta=beta, direction="plus", gate="none")
    minus = dasd_advantages(group_adv, H, s, q, mask, beta=beta, direction="minus", gate="none")
    A = torch.where(mask, group_adv[:, None].expand_as(mask), 0.0)
    torch.testing.assert_close(plus.advantages, A + beta * plus.delta_bar, rtol=1e-14, atol=1e-14)
    assert torch.equal(plus.omega, mask.double())
    assert torch.equal(minus.omega, -plus.omega)
    torch.testing.assert_close(minus.advantages - A, -(plus.advantages - A), rtol=1e-14, atol=1e-14)
    # Without the anchor the mirror is exact to the bit.
    zero = torch.zeros_like(group_adv)
    plus0 = dasd_advantages(zero, H, s, q, mask, beta=beta, direction="plus", gate="none")
    minus0 = dasd_advantages(zero, H, s, q, mask, beta=beta, direction="minus", gate="none")
    assert torch.equal(minus0.advantages, -plus0.advantages)
    assert (plus0.advantages != 0).any()


@pytest.mark.parametrize("gate", GATE_NAMES)
def test_swapping_teacher_and_student_flips_the_correction(gate):
    group_adv, H, s, q, mask = random_batch(8, 10, 25)
    zero = torch.zeros_like(group_adv)
    out = dasd_advantages(zero, H, s, q, mask, beta=0.8, gate=gate)
    flipped = dasd_advantages(zero, H, q, s, mask, beta=0.8, gate=gate)
    assert torch.equal(flipped.delta_bar, -out.delta_bar)
    assert torch.equal(flipped.omega, out.omega)  # the gate reads |delta|, the router H
    assert torch.equal(flipped.advantages, -out.advantages)
    assert (out.advantages != 0).any()


@pytest.mark.parametrize("gate", GATE_NAMES)
def test_flipping_the_sign_twice_is_identity(gate):
    """Novelty on the swapped gap (two sign flips) is Conformity on the original, to the bit."""
    group_adv, H, s, q, mask = random_batch(15, 10, 25)
    once = dasd_advantages(group_adv, H, s, q, mask, beta=0.8, direction="plus", gate=gate)
    twice = dasd_advantages(group_adv, H, q, s, mask, beta=0.8, direction="minus", gate=gate)
    assert torch.equal(twice.advantages, once.advantages)
    assert torch.equal(twice.omega * twice.delta_bar, once.omega * once.delta_bar)


@pytest.mark.parametrize("direction", ["tanh", "hard", "linear"])
def test_mirroring_the_routing_signal_flips_the_router(direction):
    """D odd: routing on -H at quantile 1 - rho is routing on H at rho with the sign flipped."""
    group_adv, H, s, q, mask = random_batch(9, 12, 30)
    out = dasd_advantages(group_adv, H, s, q, mask, beta=1.0, rho=0.3, direction=direction)
    mirrored = dasd_advantages(group_adv, -H, s, q, mask, beta=1.0, rho=0.7, direction=direction)
    torch.testing.assert_close(mirrored.router, -out.router, rtol=1e-9, atol=1e-9)


def test_router_and_normalized_gap_are_scale_free():
    """Affine maps of the signal (a > 0) and rescaling the gap leave the shaping unchanged."""
    group_adv, H, s, q, mask = random_batch(10, 12, 30)
    kw = dict(beta=1.0, eps=1e-12)
    out = dasd_advantages(group_adv, H, s, q, mask, **kw)
    moved = dasd_advantages(group_adv, 3.0 * H + 5.0, 2.0 * s, 2.0 * q, mask, **kw)
    for name in ("router", "delta_bar", "gate", "omega", "advantages"):
        torch.testing.assert_close(getattr(moved, name), getattr(out, name), rtol=1e-8, atol=1e-8)


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("direction", DIRECTION_NAMES)
@pytest.mark.parametrize("gate", GATE_NAMES)
def test_empty_and_single_token_rows(direction, gate):
    mask = torch.tensor([[False, False, False], [False, True, False], [True, True, True]])
    H = torch.tensor([[1.0, 2.0, 3.0], [0.0, 2.5, 0.0], [1.0, 1.0, 1.0]])  # row 2: constant H
    s = torch.tensor([[-1.0, -1.0, -1.0], [0.0, -1.0, 0.0], [-1.0, -1.0, -1.0]])
    q = torch.tensor([[-2.0, -2.0, -2.0], [0.0, -1.5, 0.0], [-1.0, -1.0, -1.0]])  # row 2: delta 0
    A = torch.tensor([0.3, -0.7, 1.1])
    out = dasd_advantages(A, H, s, q, mask, beta=2.0, direction=direction, gate=gate)
    assert_zero_off_mask_and_finite(out, mask)
    assert (out.advantages[0] == 0).all()
    # One token: delta_bar = delta / (|delta| + eps); tau = H, sigma_H = 0 -> router D(0).
    torch.testing.assert_close(out.delta_bar[1, 1], torch.tensor(-0.5 / (0.5 + 1e-6)))
    # Constant signal and zero gaps: delta_bar = 0, so A_hat = A_G whatever omega is.
    assert torch.equal(out.delta_bar[2], torch.zeros(3))
    assert torch.equal(out.advantages[2], torch.full((3,), 1.1))
    if direction in ("tanh", "hard", "linear"):
        assert out.router[1, 1] == 0 and (out.router[2] == 0).all()
        assert out.advantages[1, 1] == A[1]


def test_degenerate_shapes():
    for B, T in [(0, 5), (3, 0), (0, 0)]:
        z = torch.zeros(B, T)
        out = dasd_advantages(torch.zeros(B), z, z, z, torch.zeros(B, T, dtype=torch.bool),
                              beta=1.0)
        assert all(getattr(out, name).shape == (B, T) for name in FIELDS)


def test_raw_gap_scale_by_hand():
    """gap_scale="none": delta_bar = delta (Proposition 1) and the sigmoid gate reads nats."""
    s = torch.tensor([[-1.0, -0.5, -2.0, -0.1]], dtype=torch.float64)
    q = torch.tensor([[-0.5, -0.5, -3.0, -0.4]], dtype=torch.float64)
    H = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    out = dasd_advantages(torch.tensor([1.0], dtype=torch.float64), H, s, q, mask, beta=2.0,
                          direction="plus", gate="sigmoid", gap_scale="none")
    delta = np.array([0.5, 0.0, -1.0, -0.3])
    gate = 1.0 / (1.0 + np.exp(-(np.abs(delta) - 1.0)))
    np.testing.assert_allclose(out.delta_bar.numpy()[0], delta, rtol=1e-12)
    np.testing.assert_allclose(out.gate.numpy()[0], gate, rtol=1e-12)
    np.testing.assert_allclose(out.advantages.numpy()[0], 1.0 + 2.0 * gate * delta, rtol=1e-12)
    with pytest.raises(ValueError, match="gap scale"):
        dasd_advantages(torch.tensor([1.0]), H, s, q, mask, beta=1.0, gap_scale="mean")


def test_zero_median_gap_stays_finite():
    """More than half the gaps exactly 0: delta~ = 0 and delta_bar = delta / eps (module note 6)."""
    mask = torch.ones(1, 5, dtype=torch.bool)
    s = torch.zeros(1, 5)
    q = torch.tensor([[0.0, 0.0, 0.0, 0.2, -0.1]])
    out = dasd_advantages(torch.zeros(1), torch.rand(1, 5), s, q, mask, beta=1.0, eps=1e-3)
    torch.testing.assert_close(out.delta_bar, q / 1e-3)
    assert_zero_off_mask_and_finite(out, mask)


def test_outputs_carry_no_gradient_and_low_precision_computes_in_float32():
    group_adv, H, s, q, mask = random_batch(11, 4, 9, dtype=torch.float32)
    s = s.clone().requires_grad_(True)
    out = dasd_advantages(group_adv, H, s, q, mask, beta=1.0)
    assert not out.advantages.requires_grad
    low = dasd_advantages(group_adv.bfloat16(), H.bfloat16(), s.detach().bfloat16(), q.bfloat16(),
                          mask, beta=1.0)
    assert low.advantages.dtype == torch.float32
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.advantages = out.omega  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_no_finite_input_gives_nan_or_inf(data):
    B, T = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 12))
    np_dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    values = st.floats(-1e4, 1e4, width=32)  # log-probs and entropies far beyond real ones
    anything = st.floats(width=32)  # padding: NaN and inf included
    mask = data.draw(hnp.arrays(bool, (B, T)))

    def per_token():
        valid = data.draw(hnp.arrays(np_dtype, (B, T), elements=values))
        pad = data.draw(hnp.arrays(np_dtype, (B, T), elements=anything))
        return torch.from_numpy(np.where(mask, valid, pad))

    H, s, q = per_token(), per_token(), per_token()
    group_adv = torch.from_numpy(data.draw(hnp.arrays(np_dtype, (B,), elements=values)))
    out = dasd_advantages(
        group_adv, H, s, q, torch.from_numpy(mask),
        beta=data.draw(st.floats(-100, 100)),
        rho=data.draw(st.floats(0, 1)),
        eps=data.draw(st.floats(1e-8, 1.0)),
        direction=data.draw(st.sampled_from(DIRECTION_NAMES)),
        gate=data.draw(st.sampled_from(GATE_NAMES)),
        c=data.draw(st.floats(0, 10)),
    )
    assert_zero_off_mask_and_finite(out, torch.from_numpy(mask))


# --------------------------------------------------------------------------- errors


def test_registries_hold_the_contract_names():
    assert set(DIRECTIONS.names()) == set(DIRECTION_NAMES)
    assert set(GATES.names()) == set(GATE_NAMES)
    assert {"grpo", "dasd", "conformity", "novelty"} <= set(METHODS.names())


@pytest.mark.parametrize(
    "kw, names",
    [({"direction": "cosine"}, DIRECTION_NAMES), ({"gate": "soft"}, GATE_NAMES)],
)
def test_unknown_variant_lists_valid_names(kw, names):
    batch = random_batch(0, 2, 3)
    with pytest.raises(ValueError) as err:
        dasd_advantages(*batch, beta=1.0, **kw)
    assert all(name in str(err.value) for name in names)


def test_unknown_method_and_option_list_valid_names():
    with pytest.raises(ValueError) as err:
        get_method("ppo-magic")
    assert all(name in str(err.value) for name in ("grpo", "dasd", "conformity", "novelty"))
    with pytest.raises(ValueError, match="direction"):
        get_method("dasd")(*random_batch(0, 2, 3), beta=1.0, directoin="hard")
    with pytest.raises(ValueError):
        get_method("conformity")(*random_batch(0, 2, 3), beta=1.0, gate="sigmoid")


def _bad_inputs():
    A, H, s, q, mask = random_batch(0, 3, 4)
    yield "group_adv length", (A[:2], H, s, q, mask), {}
    yield "group_adv 2-D", (A[:, None], H, s, q, mask), {}
    yield "entropy shape", (A, H[:, :3], s, q, mask), {}
    yield "student shape", (A, H, s[:2], q, mask), {}
    yield "teacher shape", (A, H, s, q.T, mask), {}
    yield "mask 1-D", (A, H[0], s[0], q[0], mask[0]), {}
    yield "mask not bool", (A, H, s, q, mask.float()), {}
    yield "rho > 1", (A, H, s, q, mask), {"rho": 1.5}
    yield "eps = 0", (A, H, s, q, mask), {"eps": 0.0}


@pytest.mark.parametrize("what, args, kw", list(_bad_inputs()), ids=[b[0] for b in _bad_inputs()])
def test_bad_inputs_raise_value_error(what, args, kw):
    with pytest.raises(ValueError):
        dasd_advantages(*args, beta=1.0, **kw)


# --------------------------------------------------------------------------- methods


def test_grpo_needs_no_teacher():
    group_adv, H, s, q, mask = random_batch(12, 6, 10)
    out = get_method("grpo")(group_adv, None, None, None, mask, beta=3.0)
    assert torch.equal(out.advantages, torch.where(mask, group_adv[:, None].expand_as(mask), 0.0))
    for name in ("omega", "delta_bar", "router", "gate"):
        assert torch.equal(getattr(out, name), torch.zeros(mask.shape, dtype=torch.float64))
    with pytest.raises(ValueError):
        get_method("grpo")(group_adv[:3], None, None, None, mask, beta=0.0)


def test_named_methods_are_the_documented_configurations():
    batch = random_batch(13, 7, 19)
    same = lambda a, b: all(torch.equal(getattr(a, n), getattr(b, n)) for n in FIELDS)  # noqa: E731
    assert METHOD_GAP_SCALE == "none"
    raw = {"gap_scale": "none"}
    assert same(get_method("dasd")(*batch, beta=0.4, rho=0.3),
                dasd_advantages(*batch, beta=0.4, rho=0.3, **raw))
    assert same(get_method("dasd")(*batch, beta=0.4, rho=0.3, gap_scale="median"),
                dasd_advantages(*batch, beta=0.4, rho=0.3))
    assert same(get_method("dasd")(*batch, beta=0.4, direction="hard", gate="fixed", c=0.1),
                dasd_advantages(*batch, beta=0.4, direction="hard", gate="fixed", c=0.1, **raw))
    assert same(get_method("conformity")(*batch, beta=0.4),
                dasd_advantages(*batch, beta=0.4, direction="plus", gate="none", **raw))
    assert same(get_method("novelty")(*batch, beta=0.4),
                dasd_advantages(*batch, beta=0.4, direction="minus", gate="none", **raw))
    for name, direction in (("conformity", "plus"), ("novelty", "minus")):
        assert same(get_method(name)(*batch, beta=0.4, gap_scale="median"),
                    dasd_advantages(*batch, beta=0.4, direction=direction, gate="none"))
    assert torch.equal(get_method("grpo")(*batch, beta=0.4).advantages,
                       dasd_advantages(*batch, beta=0.0).advantages)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_keeps_the_shared_contract(name):
    batch = random_batch(14, 9, 16)
    extra = {"correct": torch.arange(9) % 2 == 0} if get_method(name).needs_correct else {}
    out = get_method(name)(*batch, beta=0.5, rho=0.2, eps=1e-6, **extra)
    assert isinstance(out, TokenAdvantages)
    assert_zero_off_mask_and_finite(out, batch[-1])
    doc = (get_method(name).shaper.__doc__ or "").lower()
    assert "follows" in doc and "depart" in doc, f"{name} must say what it follows and departs"


# --------------------------------------------------------------------------- paper baselines

BASELINES = ["hepo", "rlsd", "opsd", "sdpo", "srpo"]


def random_correct(seed: int, B: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed + 77).random(B) < 0.5)


def run_baseline(name, batch, *, beta=0.6, rho=0.2, eps=1e-6, correct=None, **options):
    """Call method ``name``; srpo gets ``correct`` (random unless given)."""
    if name == "srpo":
        options["correct"] = random_correct(0, batch[0].shape[0]) if correct is None else correct
    return get_method(name)(*batch, beta=beta, rho=rho, eps=eps, **options)


def naive_baseline(name, batch, *, beta=0.6, rho=0.2, eps=1e-6, correct=None, clip=0.2):
    A, H, s, q, mask = as_numpy(*batch)
    if name == "hepo":
        return naive.hepo_advantages(A, H, mask, rho=rho)
    if name == "rlsd":
        return naive.rlsd_advantages(A, s, q, mask, eps=eps, clip=clip)
    if name == "opsd":
        return naive.opsd_advantages(A, s, q, mask, eps=eps)
    if name == "sdpo":
        return naive.sdpo_advantages(A, s, q, mask, beta=beta, eps=eps)
    if correct is None:
        correct = random_correct(0, len(A))
    return naive.srpo_advantages(A, H, s, q, mask, correct.numpy(), beta=beta, eps=eps)


def test_baseline_traits():
    traits = {m: (get_method(m).teacher, get_method(m).reverse_kl, get_method(m).needs_correct)
              for m in BASELINES}
    assert traits == {
        "hepo": ("none", False, False),
        "rlsd": ("reference", False, False),
        "opsd": ("reference", True, False),
        "sdpo": ("sibling", False, False),
        "srpo": ("sibling", False, True),
    }


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("seed", range(4))
def test_baselines_match_naive_reference(name, seed):
    rng = np.random.default_rng(2000 + seed)
    B, T = int(rng.integers(1, 12)), int(rng.integers(1, 40))
    batch = random_batch(100 + seed, B, T, coarse=seed == 3)  # coarse: ties, zero gaps
    kw = dict(beta=float(rng.normal()), rho=float(rng.choice([0.0, 0.2, 0.5, 0.73, 1.0])))
    correct = random_correct(seed, B)
    got = run_baseline(name, batch, correct=correct, **kw)
    want = naive_baseline(name, batch, correct=correct, **kw)
    for field in FIELDS:
        np.testing.assert_allclose(getattr(got, field).numpy(), want[field], rtol=1e-12,
                                   atol=1e-12, err_msg=field)


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_match_naive_reference_float32(name):
    batch = random_batch(21, 16, 50, dtype=torch.float32)
    got = run_baseline(name, batch, correct=random_correct(3, 16))
    assert got.advantages.dtype == torch.float32
    want = naive_baseline(name, batch, correct=random_correct(3, 16))
    for field in FIELDS:
        np.testing.assert_allclose(getattr(got, field).numpy(), want[field], rtol=2e-5,
                                   atol=2e-5, err_msg=field)


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_ignore_extra_masked_padding(name):
    group_adv, H, s, q, mask = random_batch(22, 9, 17)
    correct = random_correct(5, 9)
    base = run_baseline(name, (group_adv, H, s, q, mask), correct=correct)
    pad = lambda x, v: torch.cat([x, torch.full((9, 6), v, dtype=x.dtype)], dim=1)  # noqa: E731
    padded = run_baseline(name, (group_adv, pad(H, 1e30), pad(s, float("nan")),
                                 pad(q, float("inf")), pad(mask, False)), correct=correct)
    for field in FIELDS:
        assert torch.equal(getattr(padded, field)[:, :17], getattr(base, field)), field
        assert (getattr(padded, field)[:, 17:] == 0).all(), field
    assert_zero_off_mask_and_finite(base, mask)


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_permuting_rows_permutes_outputs(name):
    batch = random_batch(23, 13, 21)
    correct = random_correct(6, 13)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(1))
    out = run_baseline(name, batch, correct=correct)
    permuted = run_baseline(name, tuple(x[perm] for x in batch), correct=correct[perm])
    for field in FIELDS:
        assert torch.equal(getattr(permuted, field), getattr(out, field)[perm]), field


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_on_empty_and_single_token_rows(name):
    mask = torch.tensor([[False, False, False], [False, True, False]])
    H = torch.tensor([[1.0, 2.0, 3.0], [9.0, 0.7, 9.0]], dtype=torch.float64)
    s = torch.tensor([[-1.0, -1.0, -1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[-2.0, -2.0, -2.0], [0.0, -1.5, 0.0]], dtype=torch.float64)
    A = torch.tensor([0.3, -0.7], dtype=torch.float64)
    out = run_baseline(name, (A, H, s, q, mask), beta=2.0, correct=torch.tensor([True, False]))
    assert_zero_off_mask_and_finite(out, mask)
    assert (out.advantages[0] == 0).all()
    want = naive_baseline(name, (A, H, s, q, mask), beta=2.0, correct=torch.tensor([True, False]))
    for field in FIELDS:
        np.testing.assert_allclose(getattr(out, field).numpy(), want[field], rtol=1e-12,
                                   err_msg=field)
    if name != "hepo":  # the methods' raw gap (METHOD_GAP_SCALE): delta_bar = delta
        assert out.delta_bar[1, 1].item() == -0.5


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_degenerate_shapes_and_no_gradient(name):
    for B, T in [(0, 5), (3, 0), (0, 0)]:
        z = torch.zeros(B, T)
        out = run_baseline(name, (torch.zeros(B), z, z, z, torch.zeros(B, T, dtype=torch.bool)))
        assert all(getattr(out, field).shape == (B, T) for field in FIELDS)
    group_adv, H, s, q, mask = random_batch(24, 4, 9, dtype=torch.float32)
    s = s.clone().requires_grad_(True)
    out = run_baseline(name, (group_adv, H, s, q, mask))
    assert not any(getattr(out, field).requires_grad for field in FIELDS)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_baselines_no_finite_input_gives_nan_or_inf(data):
    name = data.draw(st.sampled_from(BASELINES))
    B, T = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 12))
    np_dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    values = st.floats(-1e4, 1e4, width=32)
    mask = data.draw(hnp.arrays(bool, (B, T)))

    def per_token():
        valid = data.draw(hnp.arrays(np_dtype, (B, T), elements=values))
        pad = data.draw(hnp.arrays(np_dtype, (B, T), elements=st.floats(width=32)))
        return torch.from_numpy(np.where(mask, valid, pad))

    batch = (torch.from_numpy(data.draw(hnp.arrays(np_dtype, (B,), elements=values))),
             per_token(), per_token(), per_token(), torch.from_numpy(mask))
    out = run_baseline(
        name, batch, beta=data.draw(st.floats(-100, 100)), rho=data.draw(st.floats(0, 1)),
        eps=data.draw(st.floats(1e-8, 1.0)),
        correct=torch.from_numpy(data.draw(hnp.arrays(bool, (B,)))),
    )
    assert_zero_off_mask_and_finite(out, batch[-1])


@pytest.mark.parametrize(
    "name, kw",
    [("hepo", {"clip": 0.2}), ("rlsd", {"clipp": 0.2}), ("opsd", {"direction": "plus"}),
     ("sdpo", {"gate": "none"}), ("srpo", {"correct_mask": None})],
)
def test_baselines_reject_unknown_options(name, kw):
    with pytest.raises(ValueError, match="unknown options"):
        run_baseline(name, random_batch(0, 2, 3), **kw)


@pytest.mark.parametrize(
    "name, missing",
    [("hepo", 1), ("rlsd", 2), ("rlsd", 3), ("opsd", 2), ("sdpo", 3), ("srpo", 1), ("srpo", 2)],
)
def test_baselines_name_the_missing_input(name, missing):
    batch = list(random_batch(0, 2, 3))
    field = ["group_adv", "entropy", "student_logp", "teacher_logp"][missing]
    batch[missing] = None
    with pytest.raises(ValueError, match=field):
        run_baseline(name, tuple(batch))


# --------------------------------------------------------------------------- hepo


def hepo_hand_batch():
    # Ten valid entropies, all distinct; the padded position holds garbage.
    H = torch.tensor([[0.1, 0.5, 0.9, 0.3, 0.7, 0.0],
                      [2.0, 0.2, 1.5, 0.4, 0.6, 1e30]], dtype=torch.float64)
    mask = torch.tensor([[True] * 5 + [False], [True] * 5 + [False]])
    return torch.tensor([1.5, -0.5], dtype=torch.float64), H, mask


def test_hepo_by_hand_uses_the_batch_threshold():
    A, H, mask = hepo_hand_batch()
    # Sorted: [.1 .2 .3 .4 .5 .6 .7 .9 1.5 2]; Quantile_0.8 at rank 0.8 * 9 = 7.2:
    # 0.9 + 0.2 (1.5 - 0.9) = 1.02 -> exactly the top 2 of 10 tokens, both in row 1. A per-row
    # threshold (row 0: 0.74) would also keep row 0's 0.9.
    out = get_method("hepo")(A, H, None, None, mask, beta=1.0, rho=0.2)
    assert torch.equal(out.router, torch.tensor([[0.0] * 6, [1, 0, 1, 0, 0, 0]],
                                                dtype=torch.float64))
    assert torch.equal(out.advantages, -0.5 * out.router)
    for field in ("omega", "delta_bar", "gate"):
        assert torch.equal(getattr(out, field), torch.zeros(2, 6, dtype=torch.float64))
    # rho = 0.5: rank 4.5 -> 0.5 + 0.5 (0.6 - 0.5) = 0.55: the top five tokens.
    half = get_method("hepo")(A, H, None, None, mask, beta=1.0, rho=0.5)
    assert torch.equal(half.router, torch.tensor([[0, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0]],
                                                 dtype=torch.float64))
    assert torch.equal(half.advantages[0], 1.5 * half.router[0])


def test_hepo_limiting_cases():
    A, H, mask = hepo_hand_batch()
    grpo_adv = torch.where(mask, A[:, None].expand_as(mask), 0.0)
    # rho = 1 keeps every token: GRPO.
    assert torch.equal(get_method("hepo")(A, H, None, None, mask, beta=0.0, rho=1.0).advantages,
                       grpo_adv)
    # rho = 0 keeps only the maximum-entropy token.
    top = get_method("hepo")(A, H, None, None, mask, beta=0.0, rho=0.0)
    assert top.router.sum() == 1 and top.router[1, 0] == 1
    # All entropies equal: every token sits at the quantile and is kept (documented).
    flat = get_method("hepo")(A, torch.full_like(H, 0.3), None, None, mask, beta=0.0)
    assert torch.equal(flat.advantages, grpo_adv)


@pytest.mark.parametrize(
    "n, rho, kept",
    # kept = n - ceil((n - 1)(1 - rho)): e.g. n = 10 -> rank 7.2, the top 2; n = 11 -> rank
    # exactly 8, so the order statistic at rank 8 is kept too (3 of 11).
    [(10, 0.2, 2), (5, 0.2, 1), (20, 0.25, 5), (9, 0.5, 5), (7, 1 / 3, 3), (11, 0.2, 3)],
)
def test_hepo_keeps_the_top_rho_share_of_distinct_entropies(n, rho, kept):
    g = torch.Generator().manual_seed(n)
    H = torch.randperm(n, generator=g).double().reshape(1, n) / n
    mask = torch.ones(1, n, dtype=torch.bool)
    out = get_method("hepo")(torch.ones(1), H, None, None, mask, beta=0.0, rho=rho)
    chosen = out.router.bool()
    assert int(chosen.sum()) == kept
    assert (H[chosen].min() > H[~chosen].max()).item()  # the kept ones are the highest


def test_hepo_rejects_bad_rho():
    A, H, mask = hepo_hand_batch()
    with pytest.raises(ValueError, match="rho"):
        get_method("hepo")(A, H, None, None, mask, beta=0.0, rho=1.2)


# --------------------------------------------------------------------------- rlsd


def test_rlsd_by_hand():
    s = torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0, float("nan")],
                      [-1.0, -1.0, -1.0, -1.0, -1.0, 0.0]], dtype=torch.float64)
    delta = [[0.1, -0.1, 0.5, -0.5, 0.0], [0.1, -0.1, 1.0, -1.0, 0.0]]
    q = s.clone()
    q[:, :5] += torch.tensor(delta, dtype=torch.float64)
    mask = torch.tensor([[True] * 5 + [False]] * 2)
    A = torch.tensor([1.0, -2.0], dtype=torch.float64)
    out = get_method("rlsd")(A, None, s, q, mask, beta=5.0)
    e = math.exp
    # Row 0, A > 0: exp(+delta) clipped to [0.8, 1.2].
    scale0 = [e(0.1), e(-0.1), 1.2, 0.8, 1.0]  # e^0.5 = 1.65 -> 1.2; e^-0.5 = 0.61 -> 0.8
    # Row 1, A < 0: exp(-delta): a teacher-preferred token (delta > 0) is penalized less.
    scale1 = [e(-0.1), e(0.1), 0.8, 1.2, 1.0]
    np.testing.assert_allclose(out.gate.numpy(), [scale0 + [0.0], scale1 + [0.0]], rtol=1e-12)
    np.testing.assert_allclose(out.advantages.numpy(),
                               [scale0 + [0.0], [-2.0 * x for x in scale1] + [0.0]], rtol=1e-12)
    assert out.advantages[0, 4] == 1.0 and out.advantages[1, 4] == -2.0  # delta = 0: A_G
    # delta_bar records the raw gap (METHOD_GAP_SCALE = "none").
    np.testing.assert_allclose(out.delta_bar[:, :5].numpy(), delta, rtol=1e-9)
    assert (out.omega == 0).all() and (out.router == 0).all()
    wide = get_method("rlsd")(A, None, s, q, mask, beta=5.0, clip=0.5)
    assert wide.gate[0, 2].item() == pytest.approx(1.5) and wide.gate[1, 2] == 0.5


def test_rlsd_scale_stays_in_the_clip_band_and_keeps_the_verifier_sign():
    group_adv, H, s, q, mask = random_batch(31, 12, 40)
    group_adv[0] = 0.0
    s[1] = q[1]  # delta = 0 on row 1
    out = get_method("rlsd")(group_adv, H, s, q, mask, beta=1.0)
    scale = out.gate[mask]
    assert ((scale >= 0.8) & (scale <= 1.2)).all()
    assert ((scale == 0.8) | (scale == 1.2)).any() and ((scale > 0.8) & (scale < 1.2)).any()
    A = group_adv[:, None].expand_as(mask)[mask]
    adv = out.advantages[mask]
    assert torch.equal(torch.sign(adv), torch.sign(A))
    assert ((adv.abs() >= 0.8 * A.abs() - 1e-15) & (adv.abs() <= 1.2 * A.abs() + 1e-15)).all()
    assert (out.advantages[0] == 0).all()
    assert torch.equal(out.advantages[1], torch.where(mask[1], group_adv[1], 0.0))


def test_rlsd_clip_zero_is_grpo_and_clip_is_validated():
    batch = random_batch(32, 6, 15)
    grpo = get_method("grpo")(*batch, beta=1.0)
    assert torch.equal(get_method("rlsd")(*batch, beta=1.0, clip=0.0).advantages, grpo.advantages)
    for bad in (-0.1, 1.5, "0.2", True, float("nan")):
        with pytest.raises(ValueError, match="clip"):
            get_method("rlsd")(*batch, beta=1.0, clip=bad)


# --------------------------------------------------------------------------- opsd and sdpo


def test_opsd_is_grpo_advantages_with_uniform_attraction_recorded():
    batch = random_batch(33, 8, 20)
    mask = batch[-1]
    out = get_method("opsd")(*batch, beta=0.7)
    conf = get_method("conformity")(*batch, beta=0.7)
    assert torch.equal(out.advantages, get_method("grpo")(*batch, beta=0.7).advantages)
    for field in ("omega", "router", "gate"):
        assert torch.equal(getattr(out, field), mask.double()), field
    assert torch.equal(out.delta_bar, conf.delta_bar)
    no_entropy = get_method("opsd")(batch[0], None, *batch[2:], beta=0.7)
    assert torch.equal(no_entropy.delta_bar, out.delta_bar)


def test_sdpo_by_hand():
    # The gaps of test_dasd_one_row_by_hand: delta_bar = [1.25, 0, -2.5, -0.75].
    s = torch.tensor([[-1.0, -0.5, -2.0, -0.1, float("nan")]], dtype=torch.float64)
    q = torch.tensor([[-0.5, -0.5, -3.0, -0.4, float("inf")]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False]])
    out = get_method("sdpo")(torch.tensor([1.5], dtype=torch.float64), None, s, q, mask,
                             beta=0.5, eps=1e-12, gap_scale="median")
    np.testing.assert_allclose(out.advantages.numpy(), [[2.125, 1.5, 0.25, 1.125, 0.0]],
                               rtol=1e-9)
    assert torch.equal(out.omega, mask.double())
    # The default raw gap delta = [0.5, 0, -1, -0.3]: A_G + 0.5 delta.
    raw = get_method("sdpo")(torch.tensor([1.5], dtype=torch.float64), None, s, q, mask,
                             beta=0.5, eps=1e-12)
    np.testing.assert_allclose(raw.advantages.numpy(), [[1.75, 1.5, 1.0, 1.35, 0.0]],
                               rtol=1e-9)
    np.testing.assert_allclose(raw.delta_bar.numpy(), [[0.5, 0.0, -1.0, -0.3, 0.0]], rtol=1e-9)


def test_sdpo_equals_conformity_on_the_same_inputs():
    """Only the teacher's context distinguishes them."""
    batch = random_batch(34, 9, 25)
    sd = get_method("sdpo")(*batch, beta=0.45)
    conf = get_method("conformity")(*batch, beta=0.45)
    for field in FIELDS:
        assert torch.equal(getattr(sd, field), getattr(conf, field)), field


# --------------------------------------------------------------------------- srpo


def test_srpo_by_hand():
    s = torch.tensor([[-1.0, -0.5, -2.0, -0.1, float("nan")]] * 2, dtype=torch.float64)
    q = torch.tensor([[-0.5, -0.5, -3.0, -0.4, float("inf")]] * 2, dtype=torch.float64)
    H = torch.tensor([[0.0, math.log(2), math.log(4), 1.0, float("nan")]] * 2,
                     dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False]] * 2)
    A = torch.tensor([1.5, -0.5], dtype=torch.float64)
    out = get_method("srpo")(A, H, s, q, mask, beta=0.5, eps=1e-12, gap_scale="median",
                             correct=torch.tensor([True, False]))
    w = [1.0, 0.5, 0.25, math.exp(-1.0)]  # exp(-H): inverse perplexity
    delta_bar = [1.25, 0.0, -2.5, -0.75]
    assert torch.equal(out.advantages[0], torch.tensor([1.5] * 4 + [0.0], dtype=torch.float64))
    np.testing.assert_allclose(out.advantages[1].numpy(),
                               [0.125, -0.5, -0.8125, -0.5 - 0.375 * math.exp(-1.0), 0.0],
                               rtol=1e-9)
    np.testing.assert_allclose(out.gate.numpy(), [w + [0.0]] * 2, rtol=1e-12)
    np.testing.assert_allclose(out.omega.numpy(), [[0.0] * 5, w + [0.0]], rtol=1e-12)
    np.testing.assert_allclose(out.delta_bar.numpy(), [delta_bar + [0.0]] * 2, rtol=1e-9)
    assert torch.equal(out.router, torch.tensor([[0.0] * 5, [1.0] * 4 + [0.0]],
                                                dtype=torch.float64))


def test_srpo_leaves_correct_rows_at_grpo_exactly_and_limits():
    batch = random_batch(35, 12, 30)
    group_adv, H, s, q, mask = batch
    correct = random_correct(8, 12)
    assert correct.any() and (~correct).any()
    out = get_method("srpo")(*batch, beta=3.0, correct=correct)
    grpo = get_method("grpo")(*batch, beta=3.0).advantages
    assert torch.equal(out.advantages[correct], grpo[correct])
    assert (out.advantages[~correct] != grpo[~correct]).any()
    assert ((out.omega >= 0) & (out.omega <= 1)).all()
    all_correct = get_method("srpo")(*batch, beta=3.0, correct=torch.ones(12, dtype=torch.bool))
    assert torch.equal(all_correct.advantages, grpo)
    # Every row failed and the student certain (H = 0, w = 1): SDPO.
    certain = (group_adv, torch.zeros_like(H), s, q, mask)
    failed = get_method("srpo")(*certain, beta=3.0, correct=torch.zeros(12, dtype=torch.bool))
    assert torch.equal(failed.advantages, get_method("sdpo")(*certain, beta=3.0).advantages)


def test_srpo_weight_is_in_unit_interval_even_for_rounded_negative_entropy():
    mask = torch.ones(1, 3, dtype=torch.bool)
    H = torch.tensor([[-1e-7, -1e4, 1e4]])
    s = torch.zeros(1, 3)
    q = torch.tensor([[0.5, -0.5, 1.0]])
    out = get_method("srpo")(torch.zeros(1), H, s, q, mask, beta=1.0,
                             correct=torch.tensor([False]))
    assert torch.equal(out.gate, torch.tensor([[1.0, 1.0, 0.0]]))
    assert_zero_off_mask_and_finite(out, mask)


@pytest.mark.parametrize(
    "correct, match",
    [(None, "needs option correct"), (torch.tensor([1, 0, 1]), "bool"),
     ([True, False, True], "bool"), (torch.tensor([True, False]), r"\(B,\)"),
     (torch.ones(3, 1, dtype=torch.bool), r"\(B,\)")],
)
def test_srpo_validates_correct(correct, match):
    batch = random_batch(0, 3, 4)
    kw = {} if correct is None else {"correct": correct}
    with pytest.raises(ValueError, match=match):
        get_method("srpo")(*batch, beta=1.0, **kw)


# --------------------------------------------------------------------------- arm flips (RQ1)


def _flip_case(flip):
    # H = 0..4: tau = Quantile_0.2 = 0.8, sigma_H = 1.2, so the hard router is [1, -1, -1, -1, -1];
    # |delta| = [2, 1, 1, 2, 1] has median 1, so delta_bar = delta.
    h = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    student = torch.zeros_like(h)
    teacher = torch.tensor([[2.0, -1.0, 1.0, -2.0, 1.0]], dtype=torch.float64)
    return dasd_advantages(torch.tensor([0.25], dtype=torch.float64), h, student, teacher,
                           torch.ones(1, 5, dtype=torch.bool), beta=0.5, eps=1e-12,
                           direction="hard", gate="none", flip=flip)


@pytest.mark.parametrize(("flip", "omega", "adv"), [
    (None, [1, -1, -1, -1, -1], [1.25, 0.75, -0.25, 1.25, -0.25]),
    ("low", [-1, -1, -1, -1, -1], [-0.75, 0.75, -0.25, 1.25, -0.25]),
    ("high", [1, 1, 1, 1, 1], [1.25, -0.25, 0.75, -0.75, 0.75]),
])
def test_arm_flip_by_hand(flip, omega, adv):
    out = _flip_case(flip)
    torch.testing.assert_close(out.omega[0], torch.tensor(omega, dtype=torch.float64))
    torch.testing.assert_close(out.advantages[0], torch.tensor(adv, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("direction", DIRECTION_NAMES)
@pytest.mark.parametrize("gate", GATE_NAMES)
def test_arm_flip_changes_only_the_chosen_arms_sign(seed, direction, gate):
    group_adv, entropy, student, teacher, mask = random_batch(seed, 6, 9)
    kw = dict(beta=0.7, direction=direction, gate=gate)
    base = dasd_advantages(group_adv, entropy, student, teacher, mask, **kw)
    for flip, arm in (("low", base.omega > 0), ("high", base.omega < 0)):
        out = dasd_advantages(group_adv, entropy, student, teacher, mask, flip=flip, **kw)
        assert_zero_off_mask_and_finite(out, mask)
        torch.testing.assert_close(out.omega, torch.where(arm, -base.omega, base.omega))
        torch.testing.assert_close(out.delta_bar, base.delta_bar)
        torch.testing.assert_close(out.gate, base.gate)
        assert torch.equal(out.advantages[~arm], base.advantages[~arm])
        expected = group_adv[:, None] + 0.7 * out.omega * out.delta_bar
        torch.testing.assert_close(out.advantages[mask], expected[mask])


def test_arm_flip_is_a_dasd_option_and_is_validated():
    from dasd.trainer import TrainConfig

    group_adv, entropy, student, teacher, mask = random_batch(7, 3, 5)
    via_method = get_method("dasd")(group_adv, entropy, student, teacher, mask, beta=0.3,
                                    flip="high")
    direct = dasd_advantages(group_adv, entropy, student, teacher, mask, beta=0.3, flip="high",
                             gap_scale=METHOD_GAP_SCALE)
    torch.testing.assert_close(via_method.advantages, direct.advantages)
    with pytest.raises(ValueError, match="unknown arm flip 'sideways'; valid: high, low"):
        get_method("dasd")(group_adv, entropy, student, teacher, mask, beta=0.3, flip="sideways")
    with pytest.raises(ValueError, match="unknown arm flip 'both'"):
        TrainConfig(method="dasd", method_options={"flip": "both"})
    with pytest.raises(ValueError, match="method 'conformity' got unknown options"):
        TrainConfig(method="conformity", method_options={"flip": "low"})
