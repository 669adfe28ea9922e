"""Thinking models (issue 17, defect 6): the answer is read after ``</think>`` only, a response
cut off while reasoning has none, ``eval --thinking on|off`` reaches the chat template, and
held-out entropies are scored at the evaluation temperature."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from cli import probe_app
from dasd.evaluation import sample_rollout_rows
from dasd.models import load_model, make_char_tokenizer
from dasd.runlog import read_manifest, read_rollouts
from dasd.rollout import generate
from dasd.scoring import score_rollouts
from dasd.tasks import MathTask, build_task
from dasd.verify import after_thinking, extract_answer
from tests.fixtures_models import random_qwen3
from tests.test_math_task import DATA, QWEN3_LIKE, needs_data


@pytest.mark.parametrize(
    "text, thinking, expected",
    [
        ("<think>so \\boxed{3}</think> The answer is \\boxed{4}.", None, " The answer is \\boxed{4}."),
        ("a</think>b</think>c", True, "c"),
        ("<think>\\boxed{3} and still going", None, None),  # never closed: cut off
        ("reasoning without tags \\boxed{3}", True, None),  # template opened the block
        ("plain \\boxed{3}", None, "plain \\boxed{3}"),
        ("plain \\boxed{3}", False, "plain \\boxed{3}"),
    ],
)
def test_after_thinking(text, thinking, expected):
    assert after_thinking(text, thinking=thinking) == expected


def test_extract_answer_ignores_boxes_inside_the_reasoning():
    text = "<think>maybe \\boxed{3}? no.</think>\nSo the answer is \\boxed{4}."
    assert extract_answer(text) == "4"
    assert extract_answer("<think>try \\boxed{3}, then") is None
    assert extract_answer("The answer is 5.", thinking=True) is None
    assert extract_answer("The answer is 5.", thinking=False) == "5"


@needs_data
def test_math_reward_on_a_real_aime_row():
    thinking = MathTask(benchmark="aime24", data_dir=DATA, thinking=True)
    default = MathTask(benchmark="aime24", data_dir=DATA)
    problem = thinking.sample(1, split="eval", seed=0)[0]
    right, wrong = problem.answer, str(int(problem.answer) + 1)
    closed = f"<think>perhaps \\boxed{{{wrong}}}</think>\n\nThus \\boxed{{{right}}}."
    early = f"<think>perhaps \\boxed{{{right}}}</think>\n\nThus \\boxed{{{wrong}}}."
    cut = f"<think>I get \\boxed{{{right}}} but let me check"
    untagged = f"I get \\boxed{{{right}}}."
    for task in (thinking, default):
        assert task.reward(problem, closed) == 1.0
        assert task.reward(problem, early) == 0.0
        assert task.reward(problem, cut) == 0.0
    assert thinking.reward(problem, untagged) == 0.0
    assert default.reward(problem, untagged) == 1.0


def _model_dir(tmp_path):
    tok = make_char_tokenizer()
    tok.chat_template = QWEN3_LIKE
    random_qwen3(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@needs_data
@pytest.mark.parametrize("flag, thinking", [("on", True), ("off", False)])
def test_eval_thinking_reaches_the_chat_template(tmp_path, monkeypatch, flag, thinking):
    monkeypatch.setenv("DASD_DATA_DIR", str(DATA))
    args = ["eval", "--model", str(_model_dir(tmp_path)), "--task", "math", "--benchmark",
            "aime24", "--n-prompts", "1", "--k", "1", "--max-new-tokens", "4", "--no-teacher",
            "--thinking", flag, "--runs-dir", str(tmp_path / "runs"), "--name", "ev"]
    result = CliRunner().invoke(probe_app, args)
    assert result.exit_code == 0, result.output
    config = read_manifest(tmp_path / "runs" / "ev")["config"]
    assert config["thinking"] is thinking and config["task_config"]["thinking"] is thinking
    prompt = read_rollouts(tmp_path / "runs" / "ev")["prompt"][0]
    assert prompt.endswith("<think>\n\n</think>\n\n") is (not thinking)


def test_eval_thinking_refuses_other_values_and_tasks(model_dir, tmp_path):
    runner = CliRunner()
    base = ["eval", "--model", str(model_dir), "--runs-dir", str(tmp_path), "--n-prompts", "1",
            "--k", "1", "--max-new-tokens", "2"]
    result = runner.invoke(probe_app, [*base, "--thinking", "maybe"])
    assert result.exit_code == 2 and "--thinking takes on or off, got 'maybe'" in result.output
    result = runner.invoke(probe_app, [*base, "--thinking", "on"])
    assert result.exit_code != 0
    assert "task 'countdown' takes no option thinking" in result.output


def test_held_out_scores_are_at_the_evaluation_temperature(model_dir):
    model, tok = load_model(model_dir)
    task = build_task("countdown", tokenizer=tok)
    problems = task.sample(2, split="eval", seed=0)
    rows = sample_rollout_rows(model, tok, task, problems, k=2, step=0, split="eval",
                               max_new_tokens=6, temperature=0.5, top_p=1.0, teacher=False,
                               generator=torch.Generator().manual_seed(0))
    prompts = [task.student_prompt(p) for p in problems for _ in range(2)]
    rollouts = generate(model, tok, prompts, max_new_tokens=6, temperature=0.5,
                        generator=torch.Generator().manual_seed(0))
    at_half = score_rollouts(model, tok, rollouts, None, temperature=0.5)
    at_one = score_rollouts(model, tok, rollouts, None)
    n = int(rollouts.lengths[0])
    assert torch.allclose(torch.tensor(rows["entropy"][0]), at_half.entropy[0, :n], atol=1e-5)
    assert not torch.allclose(torch.tensor(rows["entropy"][0]), at_one.entropy[0, :n], atol=1e-3)
    # the sampler's own log-probs (softmax(logits / 0.5)) match the held-out student_logp
    assert torch.allclose(torch.tensor(rows["student_logp"][0]), rollouts.logprobs[0, :n],
                          atol=1e-4)
