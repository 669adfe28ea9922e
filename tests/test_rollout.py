"""Tests of the KV-cache sampling engine ``dasd.rollout.hf``."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from dasd.rollout import generate, sample_from_logits
from dasd.rollout.hf import eval_mode
from tests.fixtures_models import random_qwen3

#: Prompts of very different lengths (1 to 60 characters, one token each).
PROMPTS = ["1", "12+3=", "hello world", "9*8-7", "what is 3+4?", "x" * 60, "abc", "(1+2)*3"]


def _greedy(model, tok, prompts, **kw):
    return generate(model, tok, prompts, max_new_tokens=30, temperature=0.0, **kw)


def test_greedy_equals_hf_generate(model, tok):
    r = _greedy(model, tok, PROMPTS, batch_size=3)
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    out = model.generate(**enc, do_sample=False, max_new_tokens=30, pad_token_id=tok.pad_token_id)
    assert torch.equal(r.response_ids, out[:, enc["input_ids"].shape[1] :])
    # the comparison covers rows that stop at EOS and rows that run to max_new_tokens
    assert r.finished.any() and not r.finished.all()


def test_temperature_to_zero_equals_greedy(model, tok):
    greedy = _greedy(model, tok, PROMPTS)
    cold = generate(
        model, tok, PROMPTS, max_new_tokens=30, temperature=1e-4, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(cold.response_ids, greedy.response_ids)


def test_tiny_top_p_equals_greedy(model, tok):
    greedy = _greedy(model, tok, PROMPTS)
    nucleus = generate(
        model, tok, PROMPTS, max_new_tokens=30, top_p=1e-6, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(nucleus.response_ids, greedy.response_ids)
    # greedy log-probs are taken at temperature 1, as are these (no top-p truncation in either)
    torch.testing.assert_close(nucleus.logprobs, greedy.logprobs)


def test_logprobs_equal_full_forward(model, tok):
    temperature = 1.3
    r = generate(
        model,
        tok,
        PROMPTS,
        max_new_tokens=25,
        temperature=temperature,
        top_p=0.9,
        batch_size=3,
        generator=torch.Generator().manual_seed(1),
    )
    for i, prompt in enumerate(PROMPTS):
        prompt_ids = r.prompt_ids[i][r.prompt_mask[i]]
        assert prompt_ids.tolist() == tok(prompt)["input_ids"]
        response = r.response_ids[i][r.response_mask[i]]
        logits = model(torch.cat([prompt_ids, response])[None]).logits[0].detach()
        expected = torch.log_softmax(logits[len(prompt_ids) - 1 : -1] / temperature, -1)
        expected = expected.gather(-1, response[:, None]).squeeze(-1)
        torch.testing.assert_close(r.logprobs[i][r.response_mask[i]], expected, atol=1e-5, rtol=1e-5)
        assert (r.logprobs[i][~r.response_mask[i]] == 0).all()


def test_masks_eos_and_padding(model, tok):
    prompts = PROMPTS * 2
    r = generate(
        model, tok, prompts, max_new_tokens=40, temperature=2.0, generator=torch.Generator().manual_seed(0)
    )
    eos, pad = tok.eos_token_id, tok.pad_token_id
    n_finished = int(r.finished.sum())
    assert 0 < n_finished < len(prompts)
    assert r.response_ids.shape == r.response_mask.shape == r.logprobs.shape == (len(prompts), 40)
    assert r.prompt_ids.shape == r.prompt_mask.shape == (len(prompts), 60)
    for i in range(len(prompts)):
        n = int(r.lengths[i])
        valid = r.response_ids[i, :n].tolist()
        assert r.response_mask[i, :n].all() and not r.response_mask[i, n:].any()
        assert (r.response_ids[i, n:] == pad).all()
        assert (r.logprobs[i, n:] == 0).all() and (r.logprobs[i, :n] < 0).all()
        assert eos not in valid[:-1]
        if r.finished[i]:
            assert valid[-1] == eos
            assert r.responses[i] == tok.decode(valid[:-1])
        else:
            assert n == 40 and valid[-1] != eos
            assert r.responses[i] == tok.decode(valid)


def test_padding_and_batch_size_invariance(model, tok):
    alone = [_greedy(model, tok, [p]) for p in PROMPTS]
    batched = _greedy(model, tok, PROMPTS + ["y" * 90], batch_size=64)
    small = _greedy(model, tok, PROMPTS, batch_size=2)
    for i, a in enumerate(alone):
        n = int(a.lengths[0])
        for other in (batched, small):
            assert int(other.lengths[i]) == n
            assert torch.equal(other.response_ids[i, :n], a.response_ids[0, :n])
            torch.testing.assert_close(other.logprobs[i, :n], a.logprobs[0, :n], atol=1e-5, rtol=1e-5)


def test_seeded_generator_is_deterministic(model, tok):
    def run(seed: int):
        generator = torch.Generator().manual_seed(seed)
        return generate(model, tok, PROMPTS, max_new_tokens=20, top_p=0.9, generator=generator)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert a.responses == b.responses
    assert not torch.equal(a.response_ids, c.response_ids)


def test_first_token_frequencies_match_softmax(model, tok):
    temperature, n = 1.5, 4000
    prompt = "12+3="
    r = generate(
        model, tok, [prompt] * n, max_new_tokens=1, temperature=temperature, batch_size=n,
        generator=torch.Generator().manual_seed(0),
    )
    logits = model(torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1].detach()
    probs = torch.softmax(logits / temperature, -1).double()
    counts = torch.bincount(r.response_ids[:, 0], minlength=len(probs)).double()
    chi2 = float(((counts - n * probs) ** 2 / (n * probs)).sum())
    assert stats.chi2.sf(chi2, df=len(probs) - 1) > 1e-3
    # the recorded log-probs are those of the untruncated softmax
    expected = probs.log().float()[r.response_ids[:, 0]]
    torch.testing.assert_close(r.logprobs[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_top_p_keeps_the_smallest_nucleus():
    # p = [0.5, 0.3, 0.15, 0.05]; top_p 0.75 keeps {0, 1}, sampled as 0.625 / 0.375
    p = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = p.log().expand(20000, 4)
    tokens, logp = sample_from_logits(logits, top_p=0.75, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=4)
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[1] / 20000 - 0.625) < 0.015
    torch.testing.assert_close(logp, p.log()[tokens])
    # top_p = 0.45 keeps only the top token; top_p = 1 keeps all four
    assert (sample_from_logits(logits[:50], top_p=0.45)[0] == 1).all()
    all_tokens, _ = sample_from_logits(logits, generator=torch.Generator().manual_seed(0))
    assert set(all_tokens.tolist()) == {0, 1, 2, 3}


def test_greedy_logprob_uses_temperature_one():
    logits = torch.tensor([[2.0, 0.0, math.log(3.0)]])
    tokens, logp = sample_from_logits(logits, temperature=0.0)
    assert tokens.tolist() == [0]
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[:, 0])


def test_model_mode_is_restored(tok):
    model = random_qwen3(tok, seed=1)
    model.train()
    model.model.layers[0].eval()
    r = generate(model, tok, ["1+1="], max_new_tokens=3, temperature=0.0)
    assert r.response_ids.shape == (1, 3)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training and not model.model.layers[0].training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 4, "temperature": -1.0}, "temperature"),
        ({"max_new_tokens": 4, "top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 4, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_rejected(model, tok, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(model, tok, ["1"], **kwargs)


def test_empty_prompts_are_rejected(model, tok):
    with pytest.raises(ValueError, match="prompts is empty"):
        generate(model, tok, [], max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 1 encodes to no tokens"):
        generate(model, tok, ["1", ""], max_new_tokens=2)


def test_nan_logits_are_rejected(tok):
    model = random_qwen3(tok, seed=1)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match="NaN/inf logits"):
            generate(model, tok, ["1+1="], max_new_tokens=2, temperature=temperature)


def test_progress_reports_every_micro_batch(model, tok):
    calls: list[int] = []
    generate(model, tok, ["nums: 1 2 3\n"] * 5, max_new_tokens=3, batch_size=2,
             progress=calls.append)
    assert calls == [2, 2, 1]
