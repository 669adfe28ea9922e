"""Tests of the dual-context lockstep decoder ``dasd.rollout.lockstep`` (Probe 3)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from dasd.rollout import generate
from dasd.rollout.lockstep import (
    Intervention,
    bucket_membership,
    conformity_logprobs,
    lockstep_generate,
    novelty_logprobs,
    prefix_median,
    running_median,
)
from tests.fixtures_models import random_qwen3

#: Student prompts of very different lengths (left padding differs across rows and contexts).
PROMPTS = ["1", "12+3=", "hello world", "9*8-7", "what is 3+4?", "x" * 40, "abc", "(1+2)*3"]
#: Teacher prompts: a privileged prefix of varying length before each student prompt.
TEACHER = [f"ref: {'7*3=21 ' * (i % 3)}\n{p}" for i, p in enumerate(PROMPTS)]


def _seeded(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- distributions


def test_novelty_three_tokens_by_hand():
    # p / sqrt(q) = [0.5/0.5, 0.3/0.5, 0.2/sqrt(0.5)] = [1, 0.6, 0.2828427]; sum 1.8828427
    p = torch.tensor([[0.5, 0.3, 0.2]])
    q = torch.tensor([[0.25, 0.25, 0.5]])
    got = novelty_logprobs(p.log(), q.log(), alpha=0.5).exp()
    torch.testing.assert_close(got, torch.tensor([[0.5311118, 0.3186671, 0.1502211]]))
    # alpha = 1: p / q = [2, 1.2, 0.4] -> [5/9, 3/9, 1/9]
    got = novelty_logprobs(p.log(), q.log(), alpha=1.0).exp()
    torch.testing.assert_close(got, torch.tensor([[5 / 9, 3 / 9, 1 / 9]]))


def test_novelty_alpha_zero_is_the_student_and_conformity_is_the_teacher():
    gen = torch.Generator().manual_seed(0)
    p = torch.log_softmax(torch.randn(4, 11, generator=gen), -1)
    q = torch.log_softmax(3 * torch.randn(4, 11, generator=gen), -1)
    torch.testing.assert_close(novelty_logprobs(p, q, alpha=0.0), p)
    assert torch.equal(conformity_logprobs(p, q, alpha=0.5), q)
    # the reweighting moves mass away from the tokens the teacher favours
    novelty = novelty_logprobs(p, q, alpha=0.5).exp()
    top = q.argmax(-1, keepdim=True)
    assert (novelty.gather(-1, top) < p.exp().gather(-1, top)).all()


def test_novelty_is_finite_where_the_teacher_has_zero_mass():
    p = torch.tensor([[0.5, 0.5, 0.0]]).log()
    q = torch.tensor([[1.0, 0.0, 0.0]]).log()
    got = novelty_logprobs(p, q, alpha=0.5).exp()
    # q(1) = 0 is floored at float32's tiny, so token 1 takes (almost) all the mass; p(2) = 0 stays 0
    assert torch.isfinite(got).all() and got[0, 2] == 0
    torch.testing.assert_close(got.sum(-1), torch.ones(1))
    assert got[0, 1] > 0.999


# --------------------------------------------------------------------------- buckets


def test_running_median_and_buckets_on_a_hand_sequence():
    entropy = torch.tensor([[1.0, 3.0, 2.0, 0.5, 4.0, 4.0]])
    # medians of [1], [1,3], [1,2,3], [0.5,1,2,3], [0.5,1,2,3,4], [0.5,1,2,3,4,4]
    median = running_median(entropy)
    torch.testing.assert_close(median, torch.tensor([[1.0, 2.0, 2.0, 1.5, 2.0, 2.5]]))
    torch.testing.assert_close(prefix_median(entropy[:, :4]), torch.tensor([1.5]))
    steps = torch.arange(6)
    low = bucket_membership(entropy, median, bucket="low", burn_in=2, step=steps)
    high = bucket_membership(entropy, median, bucket="high", burn_in=2, step=steps)
    assert low.tolist() == [[False, False, False, True, False, False]]
    assert high.tolist() == [[False, False, True, False, True, True]]
    # without burn-in the first position is always high (H_1 = tau_1)
    assert bucket_membership(entropy, median, bucket="high", burn_in=0, step=steps)[0, 0]


def test_random_bucket_ignores_entropy():
    coins = torch.tensor([0.1, 0.5, 0.29, 0.9])
    entropy = torch.tensor([9.0, 0.0, 1.0, 2.0])
    member = bucket_membership(entropy, entropy, bucket="random", burn_in=0, step=0,
                               coins=coins, rate=0.3)
    assert member.tolist() == [True, False, True, False]
    assert not bucket_membership(entropy, entropy, bucket="random", burn_in=1, step=0,
                                 coins=coins, rate=0.3).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bucket": "middle", "mode": "novelty"}, "unknown bucket 'middle'; valid: high, low, random"),
        ({"bucket": "low", "mode": "opsd"}, "unknown intervention mode 'opsd'; valid: conformity, novelty"),
        ({"bucket": "low", "mode": "novelty", "positions": "last"}, "unknown positions"),
        ({"bucket": "low", "mode": "novelty", "alpha": -1.0}, "alpha"),
        ({"bucket": "random", "mode": "novelty", "rate": 1.5}, "rate"),
        ({"bucket": "low", "mode": "novelty", "burn_in": -1}, "burn_in"),
    ],
)
def test_bad_interventions_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Intervention(**kwargs)


# --------------------------------------------------------------------------- decoder


def _lockstep(model, tok, intervention=None, **kw):
    """Decode PROMPTS in micro-batches of 3; one generator stream unless ``pairing_seed``."""
    randomness = {} if "pairing_seed" in kw else {"generator": _seeded(), "coin_generator": _seeded(11)}
    kw = {"max_new_tokens": 30, "batch_size": 3, **randomness, **kw}
    return lockstep_generate(model, tok, PROMPTS, TEACHER, intervention=intervention, **kw)


_NONE = None
_BURN_IN = Intervention("low", "novelty", burn_in=30)  # the burn-in covers every position
_RATE_0 = Intervention("random", "conformity", burn_in=0, rate=0.0)


@pytest.mark.parametrize(
    ("temperature", "top_p", "intervention"),
    [
        (1.0, 0.9, _NONE), (1.0, 0.9, _BURN_IN), (1.0, 0.9, _RATE_0),
        (1.5, 1.0, _BURN_IN), (0.0, 1.0, _RATE_0),
    ],
    ids=["none", "burn-in", "rate-0", "burn-in-hot", "rate-0-greedy"],
)
def test_empty_bucket_reproduces_generate_exactly(model, tok, temperature, top_p, intervention):
    settings = {"max_new_tokens": 30, "temperature": temperature, "top_p": top_p, "batch_size": 3}
    base = generate(model, tok, PROMPTS, generator=_seeded(), **settings)
    ours = _lockstep(model, tok, intervention, **settings)
    r = ours.rollouts
    for field in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "finished"):
        assert torch.equal(getattr(r, field), getattr(base, field)), field
    assert r.responses == base.responses
    assert not ours.intervened.any()
    # the comparison covers rows that stop at EOS, rows that run to the limit, finished-row dropping
    assert base.finished.any() and not base.finished.all()


def test_paired_empty_bucket_equals_the_paired_unmodified_decode(model, tok):
    base = _lockstep(model, tok, None, pairing_seed=7, temperature=1.2)
    empty = _lockstep(model, tok, Intervention("high", "conformity", burn_in=30),
                      pairing_seed=7, temperature=1.2)
    for field in ("response_ids", "response_mask", "logprobs", "finished"):
        assert torch.equal(getattr(empty.rollouts, field), getattr(base.rollouts, field)), field
    other = _lockstep(model, tok, None, pairing_seed=8, temperature=1.2)
    assert not torch.equal(other.rollouts.response_ids, base.rollouts.response_ids)


@pytest.mark.parametrize("positions", ["first", "every"])
def test_paired_rollouts_coincide_until_their_own_first_intervention(model, tok, positions):
    # micro-batches of 3 with rows finishing at different times: in the stream mode one
    # intervention would shift the draws of every other row
    settings = {"pairing_seed": 7, "temperature": 1.2}
    base = _lockstep(model, tok, None, **settings)
    ours = _lockstep(model, tok, Intervention("high", "novelty", burn_in=5, positions=positions),
                     **settings)
    n_hits = ours.intervened.sum(-1)
    assert (n_hits >= 1).sum() >= 6
    assert (n_hits <= 1).all() if positions == "first" else (n_hits >= 2).sum() >= 4
    changed = 0
    for i in range(len(PROMPTS)):
        hits = ours.intervened[i].nonzero().flatten()
        first = int(hits[0]) if len(hits) else int(ours.rollouts.lengths[i])
        assert not len(hits) or first >= 5
        assert torch.equal(ours.rollouts.response_ids[i, :first], base.rollouts.response_ids[i, :first])
        changed += not torch.equal(ours.rollouts.response_ids[i], base.rollouts.response_ids[i])
        if len(hits):  # the first intervened position is the first in-bucket one
            assert int(ours.in_bucket[i].nonzero()[0]) == first
    assert changed >= 4


def test_pairing_seed_excludes_generators(model, tok):
    with pytest.raises(ValueError, match="pass pairing_seed or generator/coin_generator, not both"):
        _lockstep(model, tok, None, pairing_seed=1, generator=_seeded())


def _full_forward(model, tok, prompt: str, response: torch.Tensor, temperature: float):
    ids = torch.tensor(tok(prompt)["input_ids"] + response.tolist())
    with torch.no_grad():
        logits = model(ids[None]).logits[0, len(ids) - len(response) - 1 : -1]
    return torch.log_softmax(logits / temperature, -1)


def test_both_contexts_equal_full_forward_passes(model, tok):
    temperature = 1.3
    ours = _lockstep(model, tok, Intervention("high", "novelty", burn_in=2),
                     temperature=temperature, top_p=0.95)
    r = ours.rollouts
    assert ours.intervened.any()
    for i in range(len(PROMPTS)):
        m = r.response_mask[i]
        response = r.response_ids[i][m]
        logp = _full_forward(model, tok, PROMPTS[i], response, temperature)
        t_logp = _full_forward(model, tok, TEACHER[i], response, temperature)
        picked = response[:, None]
        expected = {
            "student logp": (r.logprobs[i][m], logp.gather(-1, picked).squeeze(-1)),
            "teacher logp": (ours.teacher_logp[i][m], t_logp.gather(-1, picked).squeeze(-1)),
            "entropy": (ours.entropy[i][m], -(logp.exp() * logp).sum(-1)),
            "teacher entropy": (ours.teacher_entropy[i][m], -(t_logp.exp() * t_logp).sum(-1)),
            "kl": (ours.kl[i][m], (logp.exp() * (logp - t_logp)).sum(-1)),
            "median": (ours.median[i][m], running_median(ours.entropy[i][m][None])[0]),
        }
        for name, (got, want) in expected.items():
            torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5, msg=name)
        for name in ("entropy", "teacher_entropy", "teacher_logp", "kl", "median"):
            assert (getattr(ours, name)[i][~m] == 0).all()
    # bucket flags are exactly the online rule applied to the recorded entropies
    steps = torch.arange(r.response_ids.shape[1])
    expected = bucket_membership(ours.entropy, ours.median, bucket="high", burn_in=2, step=steps)
    assert torch.equal(ours.in_bucket, expected & r.response_mask)
    assert torch.equal(ours.intervened, ours.in_bucket)


@pytest.mark.parametrize("pairing", [False, True], ids=["stream", "paired"])
def test_random_control_rate(model, tok, pairing):
    rate, burn_in = 0.3, 4
    randomness = {"pairing_seed": 0} if pairing else {"generator": _seeded(0), "coin_generator": _seeded(1)}
    ours = lockstep_generate(
        model, tok, PROMPTS * 8, TEACHER * 8, max_new_tokens=60, temperature=2.0,
        intervention=Intervention("random", "conformity", burn_in=burn_in, rate=rate), **randomness,
    )
    mask = ours.rollouts.response_mask
    eligible = mask & (torch.arange(mask.shape[1]) >= burn_in)
    n, hits = int(eligible.sum()), int(ours.intervened.sum())
    assert n > 1500
    assert not (ours.intervened & ~eligible).any()
    assert stats.binomtest(hits, n, rate).pvalue > 1e-4
    assert torch.equal(ours.intervened, ours.in_bucket)


@pytest.mark.parametrize("mode", ["conformity", "novelty"])
def test_intervened_tokens_follow_the_interventional_distribution(model, tok, mode):
    temperature, n = 1.3, 3000
    student, teacher = "12+3=", "ref: 5*3=15\n12+3="
    ours = lockstep_generate(
        model, tok, [student] * n, [teacher] * n, max_new_tokens=1, temperature=temperature,
        batch_size=n, generator=_seeded(0), coin_generator=_seeded(1),
        intervention=Intervention("random", mode, burn_in=0, rate=1.0),
    )
    assert ours.intervened.all()
    with torch.no_grad():
        p, q = (torch.log_softmax(model(torch.tensor([tok(x)["input_ids"]])).logits[:, -1]
                                  / temperature, -1) for x in (student, teacher))
    probs = (q if mode == "conformity" else novelty_logprobs(p, q, alpha=0.5)).exp()[0].double()
    counts = torch.bincount(ours.rollouts.response_ids[:, 0], minlength=len(probs)).double()
    chi2 = float(((counts - n * probs) ** 2 / (n * probs)).sum())
    assert stats.chi2.sf(chi2, df=len(probs) - 1) > 1e-3
    # the recorded log-prob is the student's, whichever distribution drew the token
    torch.testing.assert_close(ours.rollouts.logprobs[:, 0], p[0, ours.rollouts.response_ids[:, 0]])


def test_every_policy_intervenes_at_each_bucket_position(model, tok):
    ours = _lockstep(model, tok, Intervention("low", "conformity", burn_in=3))
    assert torch.equal(ours.intervened, ours.in_bucket)
    assert (ours.intervened.sum(-1) >= 2).sum() >= 4
    assert not ours.intervened[:, :3].any()


def test_bad_arguments_are_rejected(model, tok):
    with pytest.raises(ValueError, match="teacher_prompts has 1 prompts for 2 student prompts"):
        lockstep_generate(model, tok, ["1", "2"], ["r1"], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        lockstep_generate(model, tok, ["1"], ["r1"], max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        lockstep_generate(model, tok, ["1"], ["r1"], max_new_tokens=2, top_p=0.0)


def test_nan_logits_are_rejected(tok):
    broken = random_qwen3(tok, seed=1)
    with torch.no_grad():
        broken.lm_head.weight.fill_(math.nan)
    with pytest.raises(ValueError, match="NaN/inf logits"):
        lockstep_generate(broken, tok, ["1+1="], ["r: 2\n1+1="], max_new_tokens=2)
