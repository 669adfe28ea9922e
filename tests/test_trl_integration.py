"""DASD inside TRL's GRPOTrainer (dasd.integrations.trl): one real TRL step on a tiny random
Qwen3 against our own trainer and our scorer; config checks; a two-process accelerate run (slow).
Skipped when TRL is not installed."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("trl")

from dasd.integrations.trl import DASDConfig, DASDGRPOTrainer
from dasd.models import load_model
from dasd.rollout import Rollouts
from dasd.rollout.hf import encode_prompts
from dasd.scoring import TokenScores, score_responses
from dasd.tasks import CountdownTask
from dasd.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
PROMPTS, GROUP, WIDTH = 2, 4, 12


def varied_reward(completions: list[str], **_: object) -> list[float]:
    """A reward with spread inside groups (a random model never solves Countdown)."""
    return [float(len(text) % 3) / 2 for text in completions]


def cpu_config(out: Path, **overrides: object) -> DASDConfig:
    values: dict[str, object] = {
        "output_dir": str(out), "per_device_train_batch_size": PROMPTS * GROUP,
        "num_generations": GROUP, "max_completion_length": WIDTH, "max_steps": 1,
        "learning_rate": 1e-3, "bf16": False, "gradient_checkpointing": False, "use_cpu": True,
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": 3,
        "dasd_beta": 0.5,
    }
    values.update(overrides)
    return DASDConfig(**values)


def assert_dasd_scores(model, tokenizer, batch, countdown_rows) -> None:
    """The entropies and student / privileged-teacher log-probs TRL took of ``batch``'s
    completions equal ``dasd.scoring``'s of ``model`` on them (to 1e-4)."""
    prompts = tokenizer.batch_decode(batch.prompt_ids, skip_special_tokens=True)
    teacher = {row["prompt"]: row["teacher_prompt"] for row in countdown_rows}
    teacher_ids, teacher_mask = encode_prompts(tokenizer, [teacher[p] for p in prompts])
    ours = score_responses(model, batch.completion_ids.cpu(), batch.mask.cpu(),
                           batch.prompt_ids.cpu(), batch.prompt_mask.bool().cpu(),
                           teacher_prompt_ids=teacher_ids, teacher_prompt_mask=teacher_mask)
    mask = batch.mask.cpu()
    for name in ("entropy", "student_logp", "teacher_logp"):
        diff = (getattr(ours, name) - getattr(batch, name).cpu()).abs()[mask]
        assert float(diff.max()) < 1e-4, name


@pytest.fixture(scope="module")
def countdown_rows() -> list[dict[str, str]]:
    task = CountdownTask()
    return [{"prompt": task.student_prompt(p), "teacher_prompt": task.teacher_prompt(p),
             "answer": p.answer, "prompt_id": p.id}
            for p in task.sample(PROMPTS, split="train", seed=5)]


@pytest.fixture(scope="module")
def trl_step(model_dir, countdown_rows, tmp_path_factory) -> DASDGRPOTrainer:
    """One DASD training step inside TRL (1 process, CPU), completions logged."""
    from datasets import Dataset

    model, tokenizer = load_model(model_dir)
    trainer = DASDGRPOTrainer(
        model=model, reward_funcs=varied_reward, processing_class=tokenizer,
        args=cpu_config(tmp_path_factory.mktemp("trl-dasd"), log_completions=True),
        train_dataset=Dataset.from_list(countdown_rows),
    )
    trainer.train()
    return trainer


def test_trl_step_matches_our_trainer_advantages(trl_step, model_dir, tmp_path, monkeypatch):
    """Same completions, rewards, entropies and teacher log-probs into dasd.trainer.Trainer give
    the per-token advantages TRL trained on, bit for bit."""
    import dasd.trainer as core

    batch = trl_step.dasd_last
    assert batch is not None and batch.teacher_logp is not None
    assert batch.rewards.unique().numel() > 1  # a nonzero A_G somewhere
    tokenizer = trl_step.processing_class
    n = batch.completion_ids.shape[0]
    mask = batch.mask.cpu()
    responses = tokenizer.batch_decode(batch.completion_ids.masked_fill(~batch.mask, 0),
                                       skip_special_tokens=True)
    rollouts = Rollouts(
        prompts=tokenizer.batch_decode(batch.prompt_ids, skip_special_tokens=True),
        prompt_ids=batch.prompt_ids.cpu(), prompt_mask=batch.prompt_mask.bool().cpu(),
        response_ids=batch.completion_ids.cpu(), response_mask=mask,
        logprobs=batch.student_logp.cpu(), finished=torch.ones(n, dtype=torch.bool),
        responses=responses,
    )
    scores = TokenScores(entropy=batch.entropy.cpu(), student_logp=batch.student_logp.cpu(),
                         teacher_logp=batch.teacher_logp.cpu())
    cfg = TrainConfig(method="dasd", model=str(model_dir), prompts_per_step=PROMPTS,
                      group_size=GROUP, mini_batch_size=n, micro_batch_size=n, beta=0.5,
                      max_new_tokens=WIDTH, eval_prompts=1, eval_k=1, device="cpu")
    ours = Trainer.start(cfg, tmp_path / "run")
    rewards = itertools.cycle(batch.rewards.tolist())
    monkeypatch.setattr(ours, "generate", lambda *a, **k: rollouts)
    monkeypatch.setattr(core, "score_rollouts", lambda *a, **k: scores)
    monkeypatch.setattr(ours.task, "reward", lambda problem, response: next(rewards))
    seen = {}

    def capture(update_batch, step: int) -> dict[str, float]:
        seen["advantages"] = update_batch.advantages
        return {}

    monkeypatch.setattr(ours, "_ppo", capture)
    ours.update(1)

    expected = seen["advantages"]
    got = batch.shaped.advantages.cpu()
    assert got.shape == expected.shape == (PROMPTS * GROUP, batch.completion_ids.shape[1])
    assert torch.equal(got, expected)
    assert bool((got[~mask] == 0).all()) and bool((got[mask] != 0).any())
    # TRL trained on exactly these advantages, not on its own per-sequence ones.
    group_adv = batch.group_adv.cpu()
    assert not torch.allclose(got, torch.where(mask, group_adv[:, None], 0.0))


def test_trl_scores_match_dasd_scoring(trl_step, model_dir, countdown_rows):
    """TRL's fused-head entropies and log-probs (student and privileged teacher), taken before the
    update, equal dasd.scoring's on the same completions with the initial weights."""
    batch = trl_step.dasd_last
    model, tokenizer = load_model(model_dir)
    assert_dasd_scores(model, tokenizer, batch, countdown_rows)
    # The privileged context changes the scores: the teacher pass really saw r.
    assert float((batch.teacher_logp - batch.student_logp).abs()[batch.mask].max()) > 1e-3


def test_trl_logs_dasd_columns_and_metrics(trl_step, countdown_rows):
    """The completions table holds A_G and the per-token columns, one value per token."""
    out = Path(trl_step.args.output_dir) / "completions"
    frame = pd.read_parquet(next(out.glob("completions_*.parquet")))
    batch = trl_step.dasd_last
    lengths = batch.mask.sum(1).tolist()
    assert [len(v) for v in frame["token_ids"]] == lengths
    for name in ("entropy", "student_logp", "teacher_logp", "omega", "token_advantage"):
        assert [len(v) for v in frame[name]] == lengths, name
    assert frame["advantage"].tolist() == pytest.approx(batch.group_adv.tolist())
    assert frame["token_advantage"][0].tolist() == pytest.approx(
        batch.shaped.advantages[0][batch.mask[0]].tolist(), abs=1e-6)
    assert frame["prompt_id"].value_counts().to_dict() == {
        row["prompt_id"]: GROUP for row in countdown_rows}
    logged = trl_step.state.log_history[0]
    assert 0.0 <= logged["dasd/omega_pos_frac"] <= 1.0
    assert logged["dasd/entropy_mean"] == pytest.approx(
        float(batch.entropy[batch.mask].mean()), rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dasd_method": "opsd"}, "cannot run inside TRL or verl"),
        ({"dasd_method": "nope"}, "unknown method 'nope'"),
        ({"dasd_direction": "sideways"}, "unknown direction 'sideways'"),
        ({"dasd_method": "conformity", "dasd_gate": "none"}, "unknown options ['gate']"),
        ({"scale_rewards": "batch"}, "keep scale_rewards='group'"),
        ({"dasd_rho": 1.5}, "rho in [0, 1]"),
    ],
)
def test_config_rejects_bad_settings_in_one_line(tmp_path, overrides, message):
    with pytest.raises(ValueError) as err:
        cpu_config(tmp_path, **overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_teacher_column_is_a_one_line_error(model_dir, tmp_path):
    from datasets import Dataset

    model, tokenizer = load_model(model_dir)
    trainer = DASDGRPOTrainer(
        model=model, reward_funcs=varied_reward, processing_class=tokenizer,
        args=cpu_config(tmp_path), train_dataset=Dataset.from_list([{"prompt": "nums: 1 2 3\n"}] * 2),
    )
    with pytest.raises(ValueError, match="lack the teacher-prompt column 'teacher_prompt'") as err:
        trainer.train()
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_accelerate_two_process_cpu_run(model_dir, tmp_path):
    """The example under ``accelerate launch --num_processes 2 --cpu`` (gloo) for 2 steps, then
    its completions log converted into a run directory."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "examples" / "trl_dasd.py"), "--model", str(model_dir), "--steps", "2",
           "--prompts", "2", "--group-size", "4", "--max-completion-length", "16",
           "--output-dir", str(out), "--runs-dir", str(runs)]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    frames = [pd.read_parquet(f) for f in sorted((out / "completions").glob("*.parquet"))]
    assert [len(f) for f in frames] == [8, 8]  # both processes' completions, gathered
    assert all(f["prompt_id"].value_counts().eq(GROUP).all() for f in frames)
    from dasd.runlog import read_rollouts

    rows = read_rollouts(next(runs.iterdir()), split="train")
    assert sorted(rows["step"].unique()) == [1, 2] and len(rows) == 16


def test_trl_old_logprob_pass_is_reused_not_repeated(model_dir, countdown_rows, tmp_path,
                                                     monkeypatch):
    """With num_iterations=2 TRL takes its own old-log-prob pass; the trainer takes the entropies
    from that pass (no second student pass), and they are dasd.scoring's."""
    from datasets import Dataset
    from trl import GRPOTrainer

    calls = []
    original = GRPOTrainer._get_per_token_logps_and_entropies

    def counting(self, model, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return original(self, model, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counting)
    model, tokenizer = load_model(model_dir)
    trainer = DASDGRPOTrainer(
        model=model, reward_funcs=varied_reward, processing_class=tokenizer,
        args=cpu_config(tmp_path, num_iterations=2), train_dataset=Dataset.from_list(countdown_rows),
    )
    assert trainer.args.cast_lm_head_to_fp32, "float32 logits by default"
    trainer.train()
    assert calls.count(False) == 2, "one no-grad student pass (TRL's) and one teacher pass"
    batch = trainer.dasd_last
    initial, _ = load_model(model_dir)
    assert_dasd_scores(initial, tokenizer, batch, countdown_rows)


def test_bf16_model_gets_a_float32_lm_head(model_dir, countdown_rows, tmp_path):
    from datasets import Dataset

    model, tokenizer = load_model(model_dir, dtype=torch.bfloat16)
    trainer = DASDGRPOTrainer(
        model=model, reward_funcs=varied_reward, processing_class=tokenizer,
        args=cpu_config(tmp_path), train_dataset=Dataset.from_list(countdown_rows),
    )
    assert trainer.model.lm_head.weight.dtype == torch.float32
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert trainer.model(input_ids=ids).logits.dtype == torch.float32
