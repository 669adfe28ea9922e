"""Device placement (issue 17, defect 1): no tensor path makes a tensor on the default device
where it should follow its inputs' device.

On a GPU such a tensor lands on the CPU and the first op that meets a CUDA tensor fails (as
``aggregate_denominator``'s ``torch.zeros(mask.shape)`` did). CPU CI catches the same mistake by
making the *default* device ``meta`` (``stray_tensors_on_meta``): the inputs stay real CPU
tensors, so every value and every data-dependent check is computed as usual, but a tensor
created without ``device=`` becomes a shape-only meta tensor, and any op mixing it with a CPU
tensor raises. Each path is also checked to return what it returns outside the trap, so the
trap cannot pass by computing nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from dasd.advantages import GAP_SCALES, GATES, METHODS, dasd_advantages, group_advantages
from dasd.entropy import head_entropy_and_logprob, token_entropy_and_logprob, token_reverse_kl
from dasd.losses import (AGGREGATIONS, aggregate, aggregate_denominator, ppo_clip_loss,
                         reverse_kl_loss)
from dasd.routing import (RoutingBatch, attention_entropy, build_routing_signal, corpus_counts,
                          output_grad_norm, relative_position, token_rarity)


@contextmanager
def stray_tensors_on_meta() -> Iterator[None]:
    with torch.device("meta"):
        yield


def _equal(a, b) -> None:
    """Same nested structure of equal tensors / floats."""
    if isinstance(a, torch.Tensor):
        assert a.device.type == "cpu", "a result escaped onto the meta device"
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _equal(a[key], b[key])
    elif isinstance(a, (tuple, list)):
        for x, y in zip(a, b, strict=True):
            _equal(x, y)
    else:
        assert a == b


def _same_inside_and_outside(fn) -> None:
    expected = fn()
    with stray_tensors_on_meta():
        got = fn()
    _equal(got, expected)


def _batch(seed: int = 0, b: int = 4, t: int = 7):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(t)[None, :] < torch.tensor([7, 3, 0, 5])[:b, None]
    return (torch.randn(b, generator=g), torch.rand(b, t, generator=g) * 3,
            -torch.rand(b, t, generator=g) * 2, -torch.rand(b, t, generator=g) * 2, mask)


def test_the_trap_catches_a_tensor_made_without_a_device():
    mask = torch.ones(2, 3, dtype=torch.bool)
    with stray_tensors_on_meta(), pytest.raises(RuntimeError, match="device"):
        mask.sum(-1) / torch.zeros(mask.shape).sum(-1)  # the old aggregate_denominator


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
def test_aggregations(mode):
    _, _, loss, _, mask = _batch()
    _same_inside_and_outside(lambda: (aggregate(loss, mask, mode),
                                      aggregate_denominator(mask, mode)))


def test_ppo_clip_loss_forward_and_backward():
    _, _, old, new, mask = _batch()
    adv = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))

    def run():
        logp = new.clone().requires_grad_()
        loss, stats = ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
        loss.backward()
        return loss.detach(), stats, logp.grad

    _same_inside_and_outside(run)


def test_reverse_kl_loss_and_token_stats_forward_and_backward():
    g = torch.Generator().manual_seed(2)
    _, _, _, _, mask = _batch()
    student = torch.randn(*mask.shape, 11, generator=g)
    teacher = torch.randn(*mask.shape, 11, generator=g)
    ids = torch.randint(0, 11, mask.shape, generator=g)
    weight = torch.rand(mask.shape, generator=g) * 2 - 1

    def run():
        s = student.clone().requires_grad_()
        loss, stats = reverse_kl_loss(s, teacher, mask, weight=weight, chunk_size=5,
                                      temperature=0.7)
        ent, lp = token_entropy_and_logprob(s, ids, chunk_size=3)
        (loss + ent.sum() + lp.sum()).backward()
        return loss.detach(), stats, s.grad, token_reverse_kl(student, teacher)

    _same_inside_and_outside(run)


def test_head_entropy_and_logprob_forward_and_backward():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 5, 8, generator=g)
    weight = torch.randn(13, 8, generator=g)
    bias = torch.randn(13, generator=g)
    ids = torch.randint(0, 13, (3, 5), generator=g)

    def run():
        h, w, b = (x.clone().requires_grad_() for x in (hidden, weight, bias))
        ent, lp = head_entropy_and_logprob(h, w, ids, bias=b, chunk_size=4, temperature=1.3)
        (ent.sum() - 2 * lp.sum()).backward()
        return ent.detach(), lp.detach(), h.grad, w.grad, b.grad

    _same_inside_and_outside(run)


def test_group_advantages_and_every_method():
    group_adv, entropy, student, teacher, mask = _batch()
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    correct = rewards > 0.5
    _same_inside_and_outside(lambda: group_advantages(rewards, 2))
    for name in METHODS.names():
        method = METHODS.get(name)
        options = {"correct": correct} if method.needs_correct else {}
        _same_inside_and_outside(lambda: vars(method(group_adv, entropy, student, teacher, mask,
                                                     beta=0.5, rho=0.2, **options)))
    for gate in GATES.names():
        for scale in GAP_SCALES.names():
            _same_inside_and_outside(lambda: vars(dasd_advantages(
                group_adv, entropy, student, teacher, mask, beta=0.5, gate=gate,
                gap_scale=scale, flip="low")))


def test_routing_math():
    g = torch.Generator().manual_seed(4)
    _, _, _, _, mask = _batch()
    ids = torch.randint(0, 9, mask.shape, generator=g)
    counts = corpus_counts([[1, 2, 2, 5], [8, 8]], 9)
    logits = torch.randn(*mask.shape, 9, generator=g)
    hidden = torch.randn(*mask.shape, 6, generator=g)
    attn = torch.softmax(torch.randn(2, 3, 4, 5, generator=g), -1)
    _same_inside_and_outside(lambda: (
        relative_position(mask), token_rarity(ids, mask, counts),
        output_grad_norm(logits, hidden, ids, temperature=0.8, chunk_size=4),
        attention_entropy(attn),
    ))


@pytest.fixture(scope="module")
def small_model():
    from dasd.models import make_char_tokenizer
    from tests.fixtures_models import random_qwen3

    tok = make_char_tokenizer()
    return random_qwen3(tok, seed=3), tok


@pytest.mark.parametrize("signal", ["grad_norm", "attention"])
def test_routing_signals_with_forward_passes(small_model, signal):
    from dasd.rollout import generate

    model, tok = small_model
    rollouts = generate(model, tok, ["nums: 1 2\ntarget: 3\n", "nums: 4\n"], max_new_tokens=6,
                        generator=torch.Generator().manual_seed(0))
    batch = RoutingBatch.from_rollouts(rollouts, torch.zeros(rollouts.response_mask.shape))
    fn = build_routing_signal(signal, task=None, tokenizer=tok)
    _same_inside_and_outside(lambda: fn(model, batch, temperature=1.0, memory_budget=1))


@pytest.mark.parametrize("method", ["dasd", "opsd"])
def test_a_trainer_ppo_update(model_dir, method):
    """The PPO path of an update (model forward with the fused output layer or full logits,
    losses, backward, gradient clipping, AdamW) on a prepared CPU batch. AdamW's state is
    created by a first update outside the trap (its ``step`` counter is made on the default
    device by ``torch.optim`` itself)."""
    from dasd.trainer import TrainConfig, Trainer
    from tests.test_trainer import ppo_batch

    cfg = TrainConfig(model=str(model_dir), method=method, steps=2, prompts_per_step=1,
                      group_size=4, mini_batch_size=4, micro_batch_size=2, max_new_tokens=8,
                      eval_prompts=1, eval_k=2, device="cpu")
    trainer = Trainer.start(cfg, Path(tempfile.mkdtemp()) / "run")
    _, batch = ppo_batch(trainer, [1.0, -1.0, 0.5, -0.5], teacher=True)
    trainer._ppo(batch, 1)
    with stray_tensors_on_meta():
        stats = trainer._ppo(batch, 2)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    params = list(trainer.model.parameters())
    assert all(p.device.type == "cpu" and p.grad is not None and p.grad.device.type == "cpu"
               for p in params)
