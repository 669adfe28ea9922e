"""Memory at real scale, checked structurally on small shapes: the reverse KL applies the
temperature chunk by chunk (no divided ``(B, T, V)`` copy; equal to the naive formula, whatever
the chunk boundaries), and every trainer forward pass over whole responses holds at most
``micro_batch_size`` rows of logits."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from dasd.entropy import token_reverse_kl
from dasd.losses import reverse_kl_loss
from dasd.trainer import TrainConfig, Trainer
from tests.naive_entropy import naive_reverse_kl


def _logits(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def test_hand_reverse_kl_with_temperature():
    # p = softmax(log[0.8, 0.2] / 2) = [2/3, 1/3] (sqrt(0.8) = 2 sqrt(0.2)); q stays uniform
    p, q = torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5])
    kl = token_reverse_kl(p.log()[None], q.log()[None], temperature=2.0)
    expected = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert kl.item() == pytest.approx(expected, abs=1e-6)
    assert kl.item() == pytest.approx(0.0566330, abs=1e-6)  # 0.1927 if T were ignored


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.7])
def test_reverse_kl_temperature_matches_naive_at_every_chunk_size(dtype, temperature):
    s, t = _logits((3, 5, 37), dtype, 1), _logits((3, 5, 37), dtype, 2)
    naive = naive_reverse_kl(s.double() / temperature, t.double() / temperature).float()
    tol = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 2e-5}
    results = [token_reverse_kl(s, t, chunk_size=c, temperature=temperature)
               for c in (1, 4, 7, 15, 10_000)]  # 4 and 7 do not divide the 15 positions
    for kl in results:
        torch.testing.assert_close(kl, naive, **tol)
        torch.testing.assert_close(kl, results[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 4, 10_000])
@pytest.mark.parametrize("temperature", [0.6, 1.7])
def test_reverse_kl_temperature_gradient_matches_naive(chunk_size, temperature):
    s, t = _logits((3, 5, 19), torch.float64, 3), _logits((3, 5, 19), torch.float64, 4)
    w = torch.randn(3, 5, dtype=torch.float64)
    sa = s.clone().requires_grad_()
    (token_reverse_kl(sa, t, chunk_size=chunk_size, temperature=temperature) * w).sum().backward()
    sb = s.clone().requires_grad_()
    (naive_reverse_kl(sb / temperature, t / temperature) * w).sum().backward()
    torch.testing.assert_close(sa.grad, sb.grad, atol=1e-6, rtol=1e-6)


def test_reverse_kl_rejects_bad_temperature():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_reverse_kl(x, x, temperature=0.0)


class _FullSize(TorchDispatchMode):
    """Counts new tensors (op outputs that are not views of an input) with at least ``full``
    elements, of any dtype, and the largest new float32 one."""

    def __init__(self, full: int) -> None:
        super().__init__()
        self.full, self.count, self.largest_f32 = full, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.count += t.numel() >= self.full
                if t.dtype == torch.float32:
                    self.largest_f32 = max(self.largest_f32, t.numel())
        return out


def test_loss_with_temperature_makes_no_full_copy_and_equals_dividing_first():
    b, t, v, chunk = 4, 16, 1000, 8
    student = _logits((b, t, v), torch.bfloat16, 5).requires_grad_()
    teacher = _logits((b, t, v), torch.bfloat16, 6)
    mask = torch.arange(t)[None, :] < torch.tensor([16, 9, 3, 12])[:, None]
    with _FullSize(b * t * v) as fwd:
        loss, _ = reverse_kl_loss(student, teacher, mask, chunk_size=chunk, temperature=0.7)
    assert fwd.count == 0, "the forward pass must not copy (B, T, V) logits"
    assert fwd.largest_f32 <= 3 * chunk * v < b * t * v
    with _FullSize(b * t * v) as bwd:
        loss.backward()
    assert bwd.count == 1, "the backward pass allocates only the (B, T, V) gradient"
    assert bwd.largest_f32 <= chunk * v
    with _FullSize(b * t * v) as divided, torch.no_grad():
        reverse_kl_loss(student / 0.7, teacher / 0.7, mask, chunk_size=chunk)
    assert divided.count == 2, "the detector sees the two divided copies of the old call"
    # the old call also rounded the divided logits to bf16; the reference divides in float64
    ref, _ = reverse_kl_loss(student.detach().double() / 0.7, teacher.double() / 0.7, mask)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("method", ["dasd", "opsd"])
def test_every_forward_pass_over_responses_holds_at_most_a_micro_batch(model_dir, tmp_path,
                                                                        method):
    cfg = TrainConfig(model=str(model_dir), method=method, steps=1, prompts_per_step=2,
                      group_size=4, mini_batch_size=8, micro_batch_size=2, max_new_tokens=12,
                      eval_prompts=2, eval_k=4, eval_every=1, eval_teacher=True, device="cpu")
    trainer = Trainer.start(cfg, tmp_path / "run")
    shapes = []
    # every pass over whole responses runs the decoder without a KV cache (scoring and the PPO
    # forward apply the output layer themselves, ``dasd.scoring.response_hidden``)

    def record(module, args, kwargs, out):
        if kwargs.get("use_cache") is False:
            shapes.append(out.last_hidden_state.shape)

    trainer.model.get_decoder().register_forward_hook(record, with_kwargs=True)
    trainer.update(1)
    trainer.evaluate(1)
    # scoring (student and teacher), the PPO micro-batches and held-out scoring all ran
    assert len(shapes) >= 4 + 4 + 4
    assert max(s[0] for s in shapes) == cfg.micro_batch_size
