"""Tests for dasd.losses: hand values, aggregations, padding invariance, gradients, KL, no NaN."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dasd.losses import (
    AGGREGATIONS,
    aggregate,
    aggregate_denominator,
    ppo_clip_loss,
    reverse_kl_loss,
)
from tests.naive_entropy import naive_reverse_kl

MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]


def _naive_aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str) -> float:
    """Loop reference; rows with no valid token are not trajectories (left out of G)."""
    rows = [
        [float(v) for v, m in zip(lr, mr, strict=True) if m]
        for lr, mr in zip(loss_mat.tolist(), mask.tolist(), strict=True)
    ]
    rows = [r for r in rows if r]
    if not rows:
        return 0.0
    if mode == "token_mean":
        return sum(map(sum, rows)) / sum(map(len, rows))
    if mode == "seq_mean_token_mean":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    return sum(map(sum, rows)) / len(rows)


# ---------------------------------------------------------------------------------------------
# aggregation


def test_registry_holds_the_three_modes():
    assert AGGREGATIONS.names() == sorted(MODES)


@pytest.mark.parametrize(
    "mode,expected",
    # row 0: [1, 2, 3] (3 tokens), row 1: [10] (1 token)
    [
        ("token_mean", 16 / 4),
        ("seq_mean_token_mean", (2 + 10) / 2),
        ("seq_mean_token_sum", (6 + 10) / 2),
    ],
)
def test_aggregations_hand_two_rows(mode, expected):
    loss = torch.tensor([[1.0, 2.0, 3.0], [10.0, 1e6, -7.0]])  # masked entries are garbage
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert aggregate(loss, mask, mode).item() == pytest.approx(expected)
    # an all-padding row is not a trajectory: appending one changes nothing
    loss3 = torch.cat([loss, torch.tensor([[5.0, 5.0, 5.0]])])
    mask3 = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)])
    assert aggregate(loss3, mask3, mode).item() == pytest.approx(expected)
    # NaN/inf in masked entries neither leak into the value nor into the gradient
    junk = loss.clone().requires_grad_()
    with torch.no_grad():
        junk[1, 1:] = torch.tensor([float("nan"), float("inf")])
    out = aggregate(junk, mask, mode)
    out.backward()
    assert out.item() == pytest.approx(expected)
    assert torch.isfinite(junk.grad).all() and (junk.grad[~mask] == 0).all()
    # 0/1 float masks are accepted
    assert aggregate(loss, mask.float(), mode).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_matches_loop_reference(mode):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        b, t = torch.randint(1, 6, (2,), generator=g).tolist()
        loss = torch.randn(b, t, generator=g, dtype=torch.float64)
        mask = torch.rand(b, t, generator=g) < 0.5  # includes empty rows now and then
        assert aggregate(loss, mask, mode).item() == pytest.approx(
            _naive_aggregate(loss, mask, mode)
        )


@pytest.mark.parametrize("mode", MODES)
def test_all_empty_batch_is_zero_without_nan(mode):
    loss = torch.randn(3, 4, requires_grad=True)
    out = aggregate(loss, torch.zeros(3, 4, dtype=torch.bool), mode)
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(loss.grad, torch.zeros(3, 4))
    assert aggregate(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.bool), mode).item() == 0.0


def test_unknown_aggregation_lists_valid_names():
    loss, mask = torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)
    match = (
        r"unknown aggregation 'seq_mean'; "
        r"valid: seq_mean_token_mean, seq_mean_token_sum, token_mean"
    )
    with pytest.raises(ValueError, match=match):
        aggregate(loss, mask, "seq_mean")
    with pytest.raises(ValueError, match=match):
        ppo_clip_loss(loss, loss, loss, mask, agg="seq_mean")
    with pytest.raises(ValueError, match=match):
        reverse_kl_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), mask, agg="seq_mean")


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        aggregate(torch.zeros(2, 3), torch.ones(2, 4), "token_mean")
    with pytest.raises(ValueError, match="advantages shape"):
        ppo_clip_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        reverse_kl_loss(torch.zeros(2, 4, 5), torch.zeros(2, 4, 5), torch.ones(2, 3))


# ---------------------------------------------------------------------------------------------
# PPO clipped surrogate

# clip_low = 0.2, clip_high = 0.28: ratio range [0.8, 1.28]
# row 0, A = +2: r = 1.5 (clipped high -> 1.28), 0.5 (below range, A > 0: unclipped), 1.1 (in range)
# row 1, A = -1: r = 0.5 (clipped low -> 0.8), 1.5 (above range, A < 0: unclipped), 0.9 (in range)
RATIOS = torch.tensor([[1.5, 0.5, 1.1], [0.5, 1.5, 0.9]], dtype=torch.float64)
ADV = torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
SURR = [[2 * 1.28, 2 * 0.5, 2 * 1.1], [-0.8, -1.5, -0.9]]  # min(r A, clip(r) A) by hand
CLIPPED = torch.tensor([[True, False, False], [True, False, False]])


def _ppo_inputs():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.1, -1.2]], dtype=torch.float64)
    logp = (old + RATIOS.log()).requires_grad_()
    return logp, old


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token_mean", -(sum(SURR[0]) + sum(SURR[1])) / 6),  # -2.56 / 6
        ("seq_mean_token_mean", -(sum(SURR[0]) / 3 + sum(SURR[1]) / 3) / 2),
        ("seq_mean_token_sum", -(sum(SURR[0]) + sum(SURR[1])) / 2),
    ],
)
def test_ppo_hand_values_asymmetric_clip(mode, expected):
    logp, old = _ppo_inputs()
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss, stats = ppo_clip_loss(logp, old, ADV, mask, clip_low=0.2, clip_high=0.28, agg=mode)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["clip_frac"].item() == pytest.approx(2 / 6)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 6)
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 6)
    assert stats["ratio_mean"].item() == pytest.approx(RATIOS.mean().item())
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    k3 = (RATIOS - 1 - RATIOS.log()).mean().item()
    assert stats["approx_kl"].item() == pytest.approx(k3)
    assert stats["approx_kl_k1"].item() == pytest.approx(-RATIOS.log().mean().item())
    assert all(not s.requires_grad for s in stats.values())


def test_ppo_symmetric_default_clips_differently():
    # with the paper's single eps = 0.2, the first token clips at 1.2, not 1.28
    logp, old = _ppo_inputs()
    loss, _ = ppo_clip_loss(logp, old, ADV, torch.ones(2, 3, dtype=torch.bool), agg="token_mean")
    assert loss.item() == pytest.approx(-(2 * 1.2 + 1.0 + 2.2 - 0.8 - 1.5 - 0.9) / 6, abs=1e-12)


def test_ppo_gradient_analytic_unclipped_zero_clipped():
    logp, old = _ppo_inputs()
    loss, _ = ppo_clip_loss(
        logp,
        old,
        ADV,
        torch.ones(2, 3, dtype=torch.bool),
        clip_low=0.2,
        clip_high=0.28,
        agg="token_mean",
    )
    loss.backward()
    # d/dlogp of -(1/N) r A with r = exp(logp - old) is -(r A) / N on unclipped tokens
    expected = torch.where(CLIPPED, 0.0, -RATIOS * ADV / 6)
    torch.testing.assert_close(logp.grad, expected)
    assert (logp.grad[CLIPPED] == 0).all() and (logp.grad[~CLIPPED] != 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_ppo_ratio_one_is_minus_aggregate_of_advantages(mode):
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 5
    adv = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    logp = old.clone().requires_grad_()
    loss, stats = ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, agg=mode)
    assert loss.item() == pytest.approx(-aggregate(adv, mask, mode).item(), abs=1e-12)
    assert loss.item() == pytest.approx(-_naive_aggregate(adv, mask, mode), abs=1e-12)
    assert stats["clip_frac"].item() == 0.0 and stats["approx_kl"].item() == 0.0
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    # at r = 1 the gradient is -A times the aggregation weight of each token
    loss.backward()
    weights = torch.autograd.functional.jacobian(
        lambda m: aggregate(m, mask, mode), torch.zeros(3, 5, dtype=torch.float64)
    )
    torch.testing.assert_close(logp.grad, -adv * weights)


def _pad(x: torch.Tensor, k: int, gen: torch.Generator, scale: float) -> torch.Tensor:
    extra = scale * torch.randn(*x.shape[:1], k, *x.shape[2:], generator=gen, dtype=x.dtype)
    return torch.cat([x, extra], dim=1)


@pytest.mark.parametrize("mode", MODES)
def test_ppo_padding_invariance(mode):
    g = torch.Generator().manual_seed(2)
    b, t, k = 4, 6, 3
    old = -torch.rand(b, t, generator=g) * 4
    logp0 = old + 0.4 * torch.randn(b, t, generator=g)  # some tokens clip, some not
    adv = torch.randn(b, t, generator=g)
    mask = torch.rand(b, t, generator=g) < 0.8
    mask[:, 0] = True
    logp = logp0.clone().requires_grad_()
    loss, stats = ppo_clip_loss(logp, old, adv, mask, clip_high=0.28, agg=mode)
    loss.backward()
    # padded columns hold large finite garbage (exp(+-300) would overflow if it leaked)
    logp_p = _pad(logp0[:, :, None], k, g, 300.0)[..., 0].requires_grad_()
    old_p = _pad(old[:, :, None], k, g, 300.0)[..., 0]
    adv_p = _pad(adv[:, :, None], k, g, 1e4)[..., 0]
    mask_p = torch.cat([mask, torch.zeros(b, k, dtype=torch.bool)], dim=1)
    loss_p, stats_p = ppo_clip_loss(logp_p, old_p, adv_p, mask_p, clip_high=0.28, agg=mode)
    loss_p.backward()
    assert torch.equal(loss_p, loss)
    assert torch.equal(logp_p.grad[:, :t], logp.grad)
    assert torch.equal(logp_p.grad[:, t:], torch.zeros(b, k))
    for key in stats:
        torch.testing.assert_close(stats_p[key], stats[key])


def test_ppo_masked_positions_inside_the_sequence_are_ignored():
    logp, old = _ppo_inputs()
    mask = torch.tensor([[True, False, True], [False, True, True]])
    loss, _ = ppo_clip_loss(logp, old, ADV, mask, clip_high=0.28, agg="token_mean")
    loss.backward()
    surr = torch.tensor(SURR, dtype=torch.float64)
    assert loss.item() == pytest.approx(-surr[mask].mean().item())
    assert (logp.grad[~mask] == 0).all()


def test_ppo_nan_inf_in_masked_positions_are_ignored():
    logp, old = _ppo_inputs()
    mask = torch.tensor([[True, False, True], [False, True, True]])
    ref, _ = ppo_clip_loss(logp, old, ADV, mask, clip_high=0.28)
    ref.backward()
    nan, inf = float("nan"), float("inf")
    junk = torch.tensor([[0.0, nan, 0.0], [inf, 0.0, 0.0]], dtype=torch.float64)
    logp2 = (logp.detach() + junk).requires_grad_()
    loss, stats = ppo_clip_loss(logp2, old - junk, ADV + junk, mask, clip_high=0.28)
    loss.backward()
    assert torch.equal(loss, ref)
    assert torch.equal(logp2.grad, logp.grad)
    assert all(torch.isfinite(v) for v in stats.values())


def test_ppo_empty_batch():
    z = torch.zeros(2, 3, requires_grad=True)
    loss, stats = ppo_clip_loss(
        z, torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool)
    )
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros(2, 3))
    assert all(torch.isfinite(v) for v in stats.values())


# ---------------------------------------------------------------------------------------------
# reverse KL (eq. 2, 3)


def test_reverse_kl_hand_value():
    student = torch.tensor([0.8, 0.2]).log().view(1, 1, 2).requires_grad_()
    teacher = torch.tensor([0.5, 0.5]).log().view(1, 1, 2)
    loss, stats = reverse_kl_loss(student, teacher, torch.ones(1, 1, dtype=torch.bool))
    expected = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(0.1927448, abs=1e-6)
    assert stats["kl_mean"].item() == pytest.approx(expected, abs=1e-6)
    # dKL/dz_j = p_j (log p_j - log q_j - KL)
    loss.backward()
    p, q = torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5])
    torch.testing.assert_close(student.grad.view(2), p * ((p / q).log() - expected))


def test_reverse_kl_zero_when_student_equals_teacher():
    x = torch.randn(2, 5, 40, dtype=torch.float64, requires_grad=True)
    loss, stats = reverse_kl_loss(x, x, torch.ones(2, 5, dtype=torch.bool), chunk_size=3)
    loss.backward()
    assert abs(loss.item()) < 1e-12 and abs(stats["kl_max"].item()) < 1e-6
    assert (
        x.grad.abs().max().item() < 1e-12
    )  # teacher half gets nothing; student half is 0 at the minimum


def test_reverse_kl_teacher_gets_no_gradient():
    student = torch.randn(2, 3, 7, requires_grad=True)
    teacher = torch.randn(2, 3, 7, requires_grad=True)
    loss, _ = reverse_kl_loss(
        student, teacher, torch.ones(2, 3, dtype=torch.bool), weight=-torch.ones(2, 3)
    )
    assert loss.requires_grad
    g_teacher = torch.autograd.grad(loss, teacher, allow_unused=True)[0]
    assert g_teacher is None
    loss2, _ = reverse_kl_loss(student, teacher * 2.0, torch.ones(2, 3, dtype=torch.bool))
    loss2.backward()
    assert teacher.grad is None and student.grad is not None


def _random_kl_case(seed: int, b: int, t: int, v: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.randn(b, t, v, generator=g, dtype=dtype)
    q = 2 * torch.randn(b, t, v, generator=g, dtype=dtype)
    mask = torch.rand(b, t, generator=g) < 0.7
    w = 2 * torch.rand(b, t, generator=g, dtype=dtype) - 1
    return s, q, mask, w


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 5, 11), (3, 4, 64)])
@pytest.mark.parametrize("weighted", [False, True])
def test_reverse_kl_matches_naive(mode, shape, weighted):
    s, q, mask, w = _random_kl_case(sum(shape), *shape)
    weight = w if weighted else None
    sa = s.clone().requires_grad_()
    loss, stats = reverse_kl_loss(sa, q, mask, agg=mode, chunk_size=3, weight=weight)
    loss.backward()
    sb = s.clone().requires_grad_()
    per_tok = naive_reverse_kl(sb, q) * (w if weighted else 1.0)
    expected = aggregate(per_tok, mask, mode)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert loss.item() == pytest.approx(_naive_aggregate(per_tok.detach(), mask, mode), abs=1e-6)
    torch.testing.assert_close(sa.grad, sb.grad, atol=1e-7, rtol=1e-6)
    if mask.any():
        kl_n = naive_reverse_kl(s, q)[mask]
        assert stats["kl_mean"].item() == pytest.approx(kl_n.mean().item(), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reverse_kl_chunked_equals_unchunked(dtype):
    s, q, mask, w = _random_kl_case(5, 3, 7, 50, dtype)
    results = []
    for chunk in (1, 4, 10_000):
        sa = s.clone().requires_grad_()
        loss, _ = reverse_kl_loss(sa, q, mask, chunk_size=chunk, weight=w)
        loss.backward()
        results.append((loss.detach(), sa.grad))
    for loss, grad in results[:-1]:
        torch.testing.assert_close(loss, results[-1][0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(grad, results[-1][1], atol=1e-6, rtol=1e-6)


def test_signed_weight_flips_the_loss():
    # eq. 3: omega = -1 everywhere is exactly the negated (repulsive) OPSD loss
    s, q, mask, _ = _random_kl_case(9, 2, 6, 20)
    mask[:, 0] = True
    plain, _ = reverse_kl_loss(s, q, mask)
    flipped, _ = reverse_kl_loss(s, q, mask, weight=-torch.ones(2, 6, dtype=s.dtype))
    assert plain.item() > 0
    assert flipped.item() == pytest.approx(-plain.item())


@pytest.mark.parametrize("mode", MODES)
def test_reverse_kl_padding_invariance(mode):
    s, q, mask, w = _random_kl_case(3, 3, 5, 16)
    mask[:, 0] = True
    g = torch.Generator().manual_seed(4)
    sa = s.clone().requires_grad_()
    loss, stats = reverse_kl_loss(sa, q, mask, agg=mode, weight=w)
    loss.backward()
    sp = _pad(s, 4, g, 50.0).requires_grad_()
    qp, wp = _pad(q, 4, g, 50.0), _pad(w[:, :, None], 4, g, 1e3)[..., 0]
    mp = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    loss_p, stats_p = reverse_kl_loss(sp, qp, mp, agg=mode, weight=wp)
    loss_p.backward()
    torch.testing.assert_close(loss_p, loss)
    torch.testing.assert_close(sp.grad[:, :5], sa.grad)
    assert torch.equal(sp.grad[:, 5:], torch.zeros_like(sp.grad[:, 5:]))
    for key in stats:
        torch.testing.assert_close(stats_p[key], stats[key])


# ---------------------------------------------------------------------------------------------
# property: finite inputs never give NaN/inf (loss, stats, gradient)


def _floats(n: int, lo: float, hi: float):
    return st.lists(st.floats(lo, hi, width=32), min_size=n, max_size=n)


@st.composite
def _ppo_case(draw):
    b, t = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    logp = draw(_floats(b * t, -1e4, 1e4))
    old = draw(_floats(b * t, -1e4, 1e4))
    adv = draw(_floats(b * t, -1e6, 1e6))
    mask = draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))
    clip_low = draw(st.floats(0.0, 0.99))
    clip_high = draw(st.floats(0.0, 10.0))
    mode = draw(st.sampled_from(MODES))
    shape = (b, t)
    return (
        torch.tensor(logp).view(shape),
        torch.tensor(old).view(shape),
        torch.tensor(adv).view(shape),
        torch.tensor(mask).view(shape),
        clip_low,
        clip_high,
        mode,
    )


@settings(max_examples=200, deadline=None)
@given(_ppo_case())
def test_ppo_finite_inputs_never_give_nan_or_inf(case):
    logp, old, adv, mask, clip_low, clip_high, mode = case
    logp.requires_grad_()
    loss, stats = ppo_clip_loss(
        logp, old, adv, mask, clip_low=clip_low, clip_high=clip_high, agg=mode
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logp.grad).all()
    assert all(torch.isfinite(v) for v in stats.values())


@st.composite
def _kl_case(draw):
    b, t, v = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 8))
    s = draw(_floats(b * t * v, -1e4, 1e4))
    q = draw(_floats(b * t * v, -1e4, 1e4))
    w = draw(_floats(b * t, -1.0, 1.0))
    mask = draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))
    return (
        torch.tensor(s).view(b, t, v),
        torch.tensor(q).view(b, t, v),
        torch.tensor(mask).view(b, t),
        torch.tensor(w).view(b, t),
        draw(st.sampled_from(MODES)),
        draw(st.integers(1, 5)),
    )


@settings(max_examples=150, deadline=None)
@given(_kl_case())
def test_reverse_kl_finite_inputs_never_give_nan_or_inf(case):
    s, q, mask, w, mode, chunk = case
    s.requires_grad_()
    loss, stats = reverse_kl_loss(s, q, mask, agg=mode, chunk_size=chunk, weight=w)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(s.grad).all()
    assert all(torch.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_micro_batches_recombine_to_the_mini_batch_aggregate(mode):
    gen = torch.Generator().manual_seed(3)
    loss = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    mask = torch.rand(7, 5, generator=gen) > 0.4
    mask[2] = False
    whole = aggregate(loss, mask, mode)
    total = aggregate_denominator(mask, mode)
    parts = sum(
        aggregate(loss[s], mask[s], mode) * aggregate_denominator(mask[s], mode) / total
        for s in (slice(0, 3), slice(3, 4), slice(4, 7))
    )
    torch.testing.assert_close(parts, whole)


def test_aggregate_denominator_hand_values():
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])
    assert aggregate_denominator(mask, "token_mean") == 3
    assert aggregate_denominator(mask, "seq_mean_token_mean") == 2
    assert aggregate_denominator(mask, "seq_mean_token_sum") == 2
