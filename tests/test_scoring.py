"""Tests of student / privileged-teacher scoring ``dasd.scoring``."""

from __future__ import annotations

import pytest
import torch

from dasd.rollout import generate
from dasd.rollout.hf import encode_prompts
from dasd.scoring import score_responses, score_rollouts
from tests.fixtures_models import random_qwen3

STUDENT = ["1+2=", "what is 9*8-7?", "x", "(4+4)*2=", "abc"]
#: Teacher prompts: the student prompt with a reference of varying length in front (or none).
TEACHER = [
    "ref: 1+2=3. " + STUDENT[0],
    "ref: 9*8=72 72-7=65. " + STUDENT[1],
    "r " + STUDENT[2],
    "ref: (4+4)*2=16 " + STUDENT[3],
    STUDENT[4],
]
RESPONSES = ["3", "9*8=72-7", "", "16<eos>", "de f<eos>"]


@pytest.fixture(scope="module")
def batch(tok):
    """Left-padded student / teacher prompts and right-padded responses of ragged lengths."""
    s_ids, s_mask = encode_prompts(tok, STUDENT)
    t_ids, t_mask = encode_prompts(tok, TEACHER)
    rows = [tok(r)["input_ids"] for r in RESPONSES]
    width = max(len(r) for r in rows)
    r_ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    r_mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    return r_ids, r_mask, s_ids, s_mask, t_ids, t_mask


def _naive(model, prompt_ids, response_ids, temperature):
    """Entropy and log-prob of each response token from its own unpadded prefix, one at a time."""
    ent, logp = [], []
    for t in range(len(response_ids)):
        prefix = torch.cat([prompt_ids, response_ids[:t]])
        logits = model(prefix[None]).logits[0, -1].detach().double() / temperature
        lp = torch.log_softmax(logits, -1)
        ent.append(float(-(lp.exp() * lp).sum()))
        logp.append(float(lp[response_ids[t]]))
    return torch.tensor(ent), torch.tensor(logp)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_naive_per_token_loop(model, batch, temperature):
    r_ids, r_mask, s_ids, s_mask, t_ids, t_mask = batch
    scores = score_responses(
        model, r_ids, r_mask, s_ids, s_mask, teacher_prompt_ids=t_ids, teacher_prompt_mask=t_mask,
        batch_size=2, temperature=temperature,
    )
    for i in range(len(RESPONSES)):
        response = r_ids[i][r_mask[i]]
        ent, lp = _naive(model, s_ids[i][s_mask[i]], response, temperature)
        _, t_lp = _naive(model, t_ids[i][t_mask[i]], response, temperature)
        n = len(response)
        torch.testing.assert_close(scores.entropy[i, :n], ent.float(), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(scores.student_logp[i, :n], lp.float(), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(scores.teacher_logp[i, :n], t_lp.float(), atol=2e-5, rtol=1e-5)
    # the teacher context changes the scores (a wrong offset or ignored prompt would not)
    assert (scores.teacher_logp[0, :1] - scores.student_logp[0, :1]).abs().min() > 1e-4


def test_zeros_off_mask_and_teacher_none(model, batch):
    r_ids, r_mask, s_ids, s_mask, _, _ = batch
    scores = score_responses(model, r_ids, r_mask, s_ids, s_mask)
    assert scores.teacher_logp is None
    assert scores.entropy.shape == scores.student_logp.shape == r_ids.shape
    assert scores.entropy.dtype == scores.student_logp.dtype == torch.float32
    assert (scores.entropy[~r_mask] == 0).all() and (scores.student_logp[~r_mask] == 0).all()
    assert (scores.entropy[r_mask] > 0).all() and (scores.student_logp[r_mask] < 0).all()
    assert (scores.entropy[2] == 0).all()  # the empty response


def test_batch_size_chunk_size_and_padding_invariance(model, batch):
    r_ids, r_mask, s_ids, s_mask, t_ids, t_mask = batch
    teacher = {"teacher_prompt_ids": t_ids, "teacher_prompt_mask": t_mask}
    base = score_responses(model, r_ids, r_mask, s_ids, s_mask, **teacher)
    small = score_responses(model, r_ids, r_mask, s_ids, s_mask, **teacher, batch_size=1, chunk_size=3)
    # seven more pad columns left of every prompt, four more right of every response (with junk ids)
    lpad = torch.full((len(STUDENT), 7), 0)
    padded = score_responses(
        model,
        torch.cat([r_ids, torch.full((len(STUDENT), 4), 17)], 1),
        torch.cat([r_mask, torch.zeros(len(STUDENT), 4, dtype=torch.bool)], 1),
        torch.cat([lpad, s_ids], 1),
        torch.cat([lpad.bool(), s_mask], 1),
        teacher_prompt_ids=torch.cat([lpad, t_ids], 1),
        teacher_prompt_mask=torch.cat([lpad.bool(), t_mask], 1),
    )
    width = r_ids.shape[1]
    for other in (small, padded):
        for name in ("entropy", "student_logp", "teacher_logp"):
            got, expected = getattr(other, name)[:, :width], getattr(base, name)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (padded.entropy[:, width:] == 0).all()


def test_student_logp_equals_rollout_logprobs(model, tok):
    generator = torch.Generator().manual_seed(0)
    rollouts = generate(model, tok, STUDENT, max_new_tokens=20, top_p=0.9, batch_size=2, generator=generator)
    scores = score_rollouts(model, tok, rollouts, TEACHER, batch_size=3)
    torch.testing.assert_close(scores.student_logp, rollouts.logprobs, atol=1e-5, rtol=1e-5)
    assert scores.teacher_logp.shape == rollouts.logprobs.shape
    assert (scores.teacher_logp[~rollouts.response_mask] == 0).all()
    assert score_rollouts(model, tok, rollouts, None).teacher_logp is None


def test_model_mode_is_restored(tok, batch):
    model = random_qwen3(tok, seed=2)
    model.train()
    r_ids, r_mask, s_ids, s_mask, _, _ = batch
    score_responses(model, r_ids, r_mask, s_ids, s_mask)
    assert model.training and all(m.training for m in model.modules())


def test_bad_inputs_are_rejected(model, tok, batch):
    r_ids, r_mask, s_ids, s_mask, t_ids, t_mask = batch
    with pytest.raises(ValueError, match="teacher_prompt_ids and teacher_prompt_mask"):
        score_responses(model, r_ids, r_mask, s_ids, s_mask, teacher_prompt_ids=t_ids)
    with pytest.raises(ValueError, match="student_prompt_ids has 4 rows for 5 responses"):
        score_responses(model, r_ids, r_mask, s_ids[:4], s_mask[:4])
    with pytest.raises(ValueError, match="right-padded"):
        score_responses(model, r_ids, r_mask.flip(1), s_ids, s_mask)
    with pytest.raises(ValueError, match="response_ids .* response_mask"):
        score_responses(model, r_ids, r_mask[:, 1:], s_ids, s_mask)
    rollouts = generate(model, tok, STUDENT[:2], max_new_tokens=2)
    with pytest.raises(ValueError, match="one teacher prompt per rollout"):
        score_rollouts(model, tok, rollouts, TEACHER)
