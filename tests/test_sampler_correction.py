"""The trainer's sampler/scorer hooks (issue 17, defects 5 and 6): truncated importance weights
on the advantages with the vLLM engine (a stand-in engine here), the log-prob gap and the
truncation rate in the metrics, top-p refused in training unless corrected, truncated responses
rewarded as configured."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import dasd.rollout.vllm as vllm_module
import dasd.trainer as trainer_module
from dasd.records import verifier_rewards
from dasd.rollout import generate
from dasd.rollout.hf import Rollouts
from dasd.tasks.base import Problem
from dasd.trainer import TrainConfig, Trainer
from tests.test_trainer import ParityTask, small_config

SHIFT = 0.5


def _shifted_engine(model, tokenizer, prompts, **kwargs):
    """The HF engine whose reported sampler log-probs are SHIFT nats above its own: a sampler
    more confident than the scorer, so every weight is exp(-SHIFT) (below any cap)."""
    kwargs.pop("progress", None)
    r = generate(model, tokenizer, prompts, **kwargs)
    return replace(r, logprobs=torch.where(r.response_mask, r.logprobs + SHIFT, r.logprobs))


def _advantages_seen_by_ppo(cfg, run_dir, monkeypatch):
    monkeypatch.setattr(trainer_module, "build_rollout_engine",
                        lambda *a, **k: _shifted_engine)
    trainer = Trainer.start(cfg, run_dir)
    trainer.task = ParityTask(trainer.task)
    seen = {}

    def ppo(batch, step):
        seen["advantages"], seen["mask"] = batch.advantages, batch.response_mask
        return {}

    monkeypatch.setattr(trainer, "_ppo", ppo)
    metrics = trainer.update(1)
    return seen["advantages"], seen["mask"], metrics


def test_vllm_engine_weights_the_advantages_by_the_truncated_ratio(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_module, "check_vllm_available", lambda device="auto": None)
    base = small_config(model_dir, method="grpo", rollout_engine="vllm", device="cpu")
    plain, mask, _ = _advantages_seen_by_ppo(replace(base, vllm_is_cap=0.0), tmp_path / "a",
                                             monkeypatch)
    corrected, mask2, metrics = _advantages_seen_by_ppo(base, tmp_path / "b", monkeypatch)
    assert torch.equal(mask, mask2) and plain[mask].abs().sum() > 0
    assert torch.allclose(corrected[mask], plain[mask] * math.exp(-SHIFT), atol=1e-6)
    # the gap is the shift up to the HF engine's decode-vs-scorer numerics
    assert metrics["train/sampler_logp_gap"] == pytest.approx(SHIFT, abs=1e-3)


def test_hf_engine_logs_a_small_gap_and_the_truncation_rate(model_dir, tmp_path):
    trainer = Trainer.start(small_config(model_dir, method="grpo"), tmp_path / "run")
    trainer.task = ParityTask(trainer.task)
    metrics = trainer.update(1)
    assert 0 <= metrics["train/sampler_logp_gap"] < 1e-3
    assert 0 <= metrics["train/truncated_frac"] <= 1


def test_top_p_below_one_is_refused_unless_corrected(model_dir, monkeypatch):
    with pytest.raises(ValueError, match=r"top_p=0.9 < 1 makes the PPO ratio off-policy"):
        TrainConfig(top_p=0.9, device="cpu")
    monkeypatch.setattr(vllm_module, "check_vllm_available", lambda device="auto": None)
    with pytest.raises(ValueError, match="rollout_engine=vllm with vllm_is_cap > 0"):
        TrainConfig(top_p=0.9, rollout_engine="vllm", vllm_is_cap=0.0)
    assert TrainConfig(top_p=0.9, rollout_engine="vllm").vllm_is_cap == 3.0
    with pytest.raises(ValueError, match="need vllm_is_cap >= 0"):
        TrainConfig(vllm_is_cap=-1.0)


class _CountingTask:
    """Reward 1 for every response; counts the verifier's calls."""

    def __init__(self):
        self.calls = 0

    def reward(self, problem, response):
        self.calls += 1
        return 1.0


def _rollouts(finished):
    n = len(finished)
    ids = torch.ones(n, 2, dtype=torch.long)
    return Rollouts(prompts=["p"] * n, prompt_ids=ids, prompt_mask=ids.bool(), response_ids=ids,
                    response_mask=ids.bool(), logprobs=torch.zeros(n, 2),
                    finished=torch.tensor(finished), responses=["x"] * n)


def test_truncated_responses_get_the_configured_reward_without_the_verifier():
    problems = [Problem("a", "q", "1", "r"), Problem("b", "q", "1", "r")]
    task = _CountingTask()
    rewards = verifier_rewards(task, problems, _rollouts([True, False, False, True]),
                               truncated_reward=0.0)
    assert rewards.tolist() == [1.0, 0.0, 0.0, 1.0] and task.calls == 2
    rewards = verifier_rewards(task, problems, _rollouts([True, False, False, True]),
                               truncated_reward=None)
    assert rewards.tolist() == [1.0] * 4 and task.calls == 6
    assert rewards.dtype == np.float64
    with pytest.raises(ValueError, match="3 responses cannot be split evenly over 2 problems"):
        verifier_rewards(task, problems, _rollouts([True] * 3))
