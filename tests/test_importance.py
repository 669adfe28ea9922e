"""Truncated importance sampling between the sampler and the scorer (``dasd.importance``):
hand values, a naive loop reference, and masking invariance."""

from __future__ import annotations

import math

import pytest
import torch

from dasd.importance import logprob_gap, truncated_is_weights


def test_hand_values():
    scorer = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    sampler = torch.tensor([[-1.0, -1.0, -2.0, -1.0]])
    mask = torch.tensor([[True, True, True, False]])
    w = truncated_is_weights(scorer, sampler, mask, cap=3.0)
    # diffs 0, -1, +1.5 (capped at 3 < e^1.5 = 4.48), padding -> 1
    assert w[0].tolist() == pytest.approx([1.0, math.exp(-1.0), 3.0, 1.0])
    # |gaps| 0, 1, 1.5 over 3 valid tokens; the padded -2 is not counted
    assert float(logprob_gap(scorer, sampler, mask)) == pytest.approx(2.5 / 3)


def test_missing_sampler_logprob_gets_weight_one_and_no_gap():
    scorer = torch.tensor([[-1.0, -2.0]])
    sampler = torch.tensor([[float("nan"), -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert truncated_is_weights(scorer, sampler, mask, cap=2.0)[0].tolist() == \
        pytest.approx([1.0, math.exp(-1.0)])
    assert float(logprob_gap(scorer, sampler, mask)) == pytest.approx(1.0)
    assert float(logprob_gap(scorer, sampler, torch.zeros(1, 2, dtype=torch.bool))) == 0.0


def _naive(scorer, sampler, mask, cap):
    w = torch.ones_like(scorer)
    total, count = 0.0, 0
    for i in range(scorer.shape[0]):
        for t in range(scorer.shape[1]):
            if mask[i, t]:
                d = float(scorer[i, t]) - float(sampler[i, t])
                w[i, t] = min(math.exp(d), cap)
                total += abs(d)
                count += 1
    return w, total / max(count, 1)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    b, t = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
    scorer = -torch.rand(b, t, generator=g) * 4
    sampler = scorer + torch.randn(b, t, generator=g)
    mask = torch.rand(b, t, generator=g) < 0.7
    cap = float(torch.rand(1, generator=g)) * 3 + 0.5
    w_ref, gap_ref = _naive(scorer, sampler, mask, cap)
    assert torch.allclose(truncated_is_weights(scorer, sampler, mask, cap=cap), w_ref, rtol=1e-5, atol=1e-6)
    assert float(logprob_gap(scorer, sampler, mask)) == pytest.approx(gap_ref, abs=1e-6)


def test_values_under_the_mask_change_nothing_and_padding_columns_append_ones():
    g = torch.Generator().manual_seed(0)
    scorer, sampler = -torch.rand(3, 5, generator=g), -torch.rand(3, 5, generator=g)
    mask = torch.rand(3, 5, generator=g) < 0.6
    w, gap = truncated_is_weights(scorer, sampler, mask, cap=2.0), logprob_gap(scorer, sampler, mask)
    junk = torch.where(mask, sampler, torch.full_like(sampler, 123.0))
    assert torch.equal(truncated_is_weights(scorer, junk, mask, cap=2.0), w)
    assert torch.equal(logprob_gap(scorer, junk, mask), gap)
    pad = torch.zeros(3, 4)
    wide = truncated_is_weights(torch.cat([scorer, pad - 7], 1), torch.cat([sampler, pad], 1),
                                torch.cat([mask, pad.bool()], 1), cap=2.0)
    assert torch.equal(wide[:, :5], w) and torch.equal(wide[:, 5:], torch.ones(3, 4))


def test_identical_distributions_give_unit_weights_and_zero_gap():
    lp = -torch.rand(2, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    assert torch.equal(truncated_is_weights(lp, lp, mask, cap=3.0), torch.ones(2, 6))
    assert float(logprob_gap(lp, lp, mask)) == 0.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="must have one shape"):
        truncated_is_weights(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1, 2).bool(), cap=2.0)
    with pytest.raises(ValueError, match="cap must be a finite number > 0"):
        truncated_is_weights(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2).bool(), cap=0.0)
