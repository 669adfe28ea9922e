"""Tests for dasd.entropy: hand values, naive-reference agreement, gradients, memory bound."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dasd.entropy import token_entropy_and_logprob, token_reverse_kl
from tests.naive_entropy import naive_entropy_and_logprob, naive_reverse_kl

DTYPES = [torch.float32, torch.bfloat16, torch.float64]
# (leading dims, V): 1-D, 2-D and 3-D leading dims, plus a lone distribution
SHAPES = [((7,), 13), ((3, 5), 50), ((2, 3, 4), 31), ((), 9)]


def _tol(dtype: torch.dtype) -> dict[str, float]:
    # outputs are float32; the naive reference runs in float32 (float64 for float64 input)
    return {"atol": 2e-5, "rtol": 2e-5} if dtype != torch.float64 else {"atol": 1e-6, "rtol": 1e-6}


def _logits(
    lead: tuple[int, ...], v: int, dtype: torch.dtype, *, scale: float = 3.0, seed: int = 0
):
    g = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(*lead, v, generator=g, dtype=torch.float64)).to(dtype)
    ids = torch.randint(0, v, lead, generator=g)
    return x, ids


# ---------------------------------------------------------------------------------------------
# hand values


@pytest.mark.parametrize("v", [1, 2, 1000, 151_936])
@pytest.mark.parametrize("const", [0.0, 7.5])
def test_uniform_logits_give_log_v(v, const):
    x = torch.full((3, v), const)
    ent, lp = token_entropy_and_logprob(x, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(ent, torch.full((3,), math.log(v)), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lp, torch.full((3,), -math.log(v)), atol=1e-6, rtol=1e-6)


def test_uniform_bf16_and_temperature():
    x = torch.full((2, 4, 512), -3.0, dtype=torch.bfloat16)
    ent, lp = token_entropy_and_logprob(x, torch.zeros(2, 4, dtype=torch.long), temperature=0.3)
    assert ent.dtype == torch.float32 and ent.shape == (2, 4)
    torch.testing.assert_close(ent, torch.full((2, 4), math.log(512)), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_hand_three_class(temperature):
    # softmax(logits / T) = [1, 2, 3] / 6
    x = temperature * torch.log(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64))
    probs = [1 / 6, 2 / 6, 3 / 6]
    expected_h = -sum(p * math.log(p) for p in probs)  # 1.0114042647...
    ent, lp = token_entropy_and_logprob(x, torch.tensor([1]), temperature=temperature)
    assert ent.item() == pytest.approx(expected_h, abs=1e-6)
    assert ent.item() == pytest.approx(1.0114042647, abs=1e-6)
    assert lp.item() == pytest.approx(math.log(1 / 3), abs=1e-6)


def test_hand_reverse_kl():
    p, q = torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5])
    kl = token_reverse_kl(p.log()[None], q.log()[None])
    expected = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    assert kl.item() == pytest.approx(expected, abs=1e-6)
    assert kl.item() == pytest.approx(0.1927448, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# naive-reference agreement: values


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,v", SHAPES)
@pytest.mark.parametrize("chunk_size", [1, 3, 10_000])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_matches_naive(dtype, lead, v, chunk_size, temperature):
    x, ids = _logits(lead, v, dtype, seed=len(lead) * 100 + v)
    ent, lp = token_entropy_and_logprob(x, ids, chunk_size=chunk_size, temperature=temperature)
    ent_n, lp_n = naive_entropy_and_logprob(x, ids, temperature=temperature)
    assert ent.dtype == lp.dtype == torch.float32
    assert ent.shape == lp.shape == ids.shape
    torch.testing.assert_close(ent, ent_n.float(), **_tol(dtype))
    torch.testing.assert_close(lp, lp_n.float(), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,v", SHAPES)
@pytest.mark.parametrize("chunk_size", [1, 5, 10_000])
def test_reverse_kl_matches_naive(dtype, lead, v, chunk_size):
    s, _ = _logits(lead, v, dtype, seed=1)
    t, _ = _logits(lead, v, dtype, seed=2)
    kl = token_reverse_kl(s, t, chunk_size=chunk_size)
    assert kl.dtype == torch.float32 and kl.shape == s.shape[:-1]
    torch.testing.assert_close(kl, naive_reverse_kl(s, t).float(), **_tol(dtype))


def test_non_contiguous_logits():
    base, _ = _logits((2, 7), 11, torch.float32)
    x = base[:, :-1]  # (2, 6, 11), leading dims not flattenable as a view
    assert not x.is_contiguous()
    ids = torch.randint(0, 11, (2, 6))
    for got, want in zip(
        token_entropy_and_logprob(x, ids, chunk_size=4),
        naive_entropy_and_logprob(x, ids),
        strict=True,
    ):
        torch.testing.assert_close(got, want)
    t = torch.randn(2, 11, 6).transpose(1, 2)
    torch.testing.assert_close(token_reverse_kl(x, t, chunk_size=4), naive_reverse_kl(x, t))


def test_empty_positions():
    ent, lp = token_entropy_and_logprob(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    assert ent.shape == lp.shape == (0,)
    assert token_reverse_kl(torch.zeros(2, 0, 5), torch.zeros(2, 0, 5)).shape == (2, 0)


# ---------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,v", SHAPES[:3])
@pytest.mark.parametrize("chunk_size", [1, 4, 10_000])
@pytest.mark.parametrize("which", ["both", "entropy", "logprob"])
def test_gradient_matches_naive(dtype, lead, v, chunk_size, which):
    x, ids = _logits(lead, v, dtype, seed=7)
    g = torch.Generator().manual_seed(3)
    w_ent, w_lp = torch.randn(lead, generator=g), torch.randn(lead, generator=g)

    def objective(ent, lp):
        terms = {"both": (ent * w_ent).sum() + (lp * w_lp).sum(), "entropy": (ent * w_ent).sum()}
        return terms.get(which, (lp * w_lp).sum())

    temperature = 0.8
    xa = x.clone().requires_grad_()
    (ga,) = torch.autograd.grad(
        objective(
            *token_entropy_and_logprob(xa, ids, chunk_size=chunk_size, temperature=temperature)
        ),
        xa,
    )
    xb = x.clone().requires_grad_()
    (gb,) = torch.autograd.grad(
        objective(*naive_entropy_and_logprob(xb, ids, temperature=temperature)), xb
    )
    assert ga.dtype == dtype and ga.shape == x.shape
    if dtype == torch.bfloat16:  # both are float32 gradients rounded to bf16 once
        torch.testing.assert_close(ga.float(), gb.float(), atol=1e-2, rtol=1e-2)
    else:
        torch.testing.assert_close(ga, gb, **_tol(dtype))


@pytest.mark.parametrize("chunk_size", [1, 3, 10_000])
def test_reverse_kl_gradient_matches_naive_and_teacher_gets_none(chunk_size):
    s, _ = _logits((3, 4), 17, torch.float64, seed=11)
    t, _ = _logits((3, 4), 17, torch.float64, seed=12)
    w = torch.randn(3, 4, dtype=torch.float64)
    sa, ta = s.clone().requires_grad_(), t.clone().requires_grad_()
    (token_reverse_kl(sa, ta, chunk_size=chunk_size) * w).sum().backward()
    sb = s.clone().requires_grad_()
    (naive_reverse_kl(sb, t) * w).sum().backward()
    torch.testing.assert_close(sa.grad, sb.grad, atol=1e-6, rtol=1e-6)
    assert ta.grad is None


def test_gradient_through_non_contiguous_slice():
    base = torch.randn(2, 7, 11, dtype=torch.float64)
    ids = torch.randint(0, 11, (2, 6))
    xa, xb = base.clone().requires_grad_(), base.clone().requires_grad_()
    ent, lp = token_entropy_and_logprob(xa[:, :-1], ids, chunk_size=4)
    (ent.sum() + 2 * lp.sum()).backward()
    ent, lp = naive_entropy_and_logprob(xb[:, :-1], ids)
    (ent.sum() + 2 * lp.sum()).backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-6, rtol=1e-6)
    assert (xa.grad[:, -1] == 0).all()


def test_grad_and_no_grad_paths_agree():
    x, ids = _logits((4, 6), 23, torch.float32)
    with torch.no_grad():
        a = token_entropy_and_logprob(x, ids, chunk_size=5)
    b = token_entropy_and_logprob(x.clone().requires_grad_(), ids, chunk_size=5)
    assert b[0].requires_grad and b[1].requires_grad
    for u, w in zip(a, b, strict=True):
        assert torch.equal(u, w.detach())


# ---------------------------------------------------------------------------------------------
# extremes and bad input


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_logits_finite(dtype):
    x, ids = _logits((4, 6), 64, torch.float64, scale=1e4)
    x[0, 0] = torch.linspace(-1e4, 1e4, 64, dtype=torch.float64)  # +-1e4 spread
    x[0, 1] = -1e4
    x[0, 1, 5] = 1e4  # one-hot-like: entropy ~ 0
    x = x.to(dtype).requires_grad_()
    ent, lp = token_entropy_and_logprob(x, ids, chunk_size=7, temperature=0.9)
    assert torch.isfinite(ent).all() and torch.isfinite(lp).all()
    assert (ent >= -1e-6).all()
    assert ent[0, 1].item() == pytest.approx(0.0, abs=1e-6)
    ent_n, lp_n = naive_entropy_and_logprob(x.detach(), ids, temperature=0.9)
    torch.testing.assert_close(ent, ent_n.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lp, lp_n.float(), atol=1e-2, rtol=1e-5)
    (ent.sum() + lp.sum()).backward()
    assert torch.isfinite(x.grad).all()
    kl = token_reverse_kl(x, x.detach().flip(-1), chunk_size=5)
    assert torch.isfinite(kl).all()
    kl.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_raise(bad):
    x = torch.randn(3, 4, 10)
    x[1, 2, 3] = bad
    ids = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"logits contain NaN/inf .*position 6\b"):
        token_entropy_and_logprob(x, ids)
    with pytest.raises(ValueError, match="logits contain NaN/inf"):
        token_entropy_and_logprob(x.requires_grad_(), ids, chunk_size=2)
    with pytest.raises(ValueError, match="logits contain NaN/inf"):
        token_reverse_kl(torch.zeros(3, 4, 10), x.detach())


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_bad_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_entropy_and_logprob(
            torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), temperature=temperature
        )


def test_bad_ids_and_shapes_raise():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"token_ids must lie in \[0, 3\)"):
        token_entropy_and_logprob(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="token_ids shape"):
        token_entropy_and_logprob(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        token_entropy_and_logprob(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="chunk_size"):
        token_entropy_and_logprob(x, torch.tensor([0, 1]), chunk_size=0)
    with pytest.raises(ValueError, match="same shape"):
        token_reverse_kl(x, torch.zeros(2, 4))


# ---------------------------------------------------------------------------------------------
# memory bound: no (N, V) float32 tensor is ever created, forward or backward


class _LargestF32(TorchDispatchMode):
    """Records the largest float32/float64 tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.float64):
                self.largest = max(self.largest, t.numel())
        return out


def test_peak_buffers_bounded_by_chunk():
    n, v, chunk = 64, 1000, 8  # bf16 logits: any float32 (N, V) tensor would be 64,000 elements
    x, ids = _logits((4, 16), v, torch.bfloat16)
    x.requires_grad_()
    with _LargestF32() as mode:
        ent, lp = token_entropy_and_logprob(x, ids, chunk_size=chunk)
        (ent.sum() + lp.sum()).backward()
        kl = token_reverse_kl(x, x.detach() * 0.5, chunk_size=chunk)
        kl.sum().backward()
    assert mode.largest <= chunk * v < n * v


def test_empty_positions_with_grad_and_inplace_edit_of_outputs():
    x = torch.zeros(0, 5, requires_grad=True)
    ent, lp = token_entropy_and_logprob(x, torch.zeros(0, dtype=torch.long))
    (ent.sum() + lp.sum()).backward()
    assert x.grad.shape == (0, 5)
    # the returned entropy may be edited in place (e.g. masked) without breaking backward
    y = torch.randn(3, 4, requires_grad=True)
    ent, lp = token_entropy_and_logprob(y, torch.zeros(3, dtype=torch.long))
    ent.mul_(2.0)
    (ent.sum() + lp.sum()).backward()
    assert torch.isfinite(y.grad).all()
