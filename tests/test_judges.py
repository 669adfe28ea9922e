"""Step judges (PRM, critic, oracle, constant) and ProcessBench scoring (analysis.judges)."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import Qwen3ForTokenClassification
from typer.testing import CliRunner

from analysis.judges import (
    ConstantJudge,
    CriticJudge,
    OracleJudge,
    PRMJudge,
    ProcessBenchRow,
    evaluate_judge,
    first_error,
    load_processbench,
    processbench_score,
    verdicts_from_first_error,
)
from cli import analyze_app
from dasd.models import make_char_tokenizer
from dasd.tasks.math import MathTask
from tests.fixtures_models import random_qwen3

DATA = Path(__file__).parents[1].parent / "shared" / "data"
PROCESSBENCH = DATA / "processbench"
needs_data = pytest.mark.skipif(not PROCESSBENCH.is_dir(), reason=f"{PROCESSBENCH} absent")
CHAT = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROBLEMS = ["1+1?", "what is 2*3?", "x"]
STEPS = [["1+1=2", "so 2"], ["2*3=6", "six", "done, 6"], ["only step"]]


def prm_tokenizer():
    tok = make_char_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    return tok


def tiny_prm(tok, *, num_labels=2, seed=0):
    """A tiny Qwen3 with a two-class token head: the real PRM's interface (logits (B, T, 2))."""
    return random_qwen3(tok, seed=seed, hidden_size=32, num_hidden_layers=1,
                        head=Qwen3ForTokenClassification, num_labels=num_labels)


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("prm")
    tok = prm_tokenizer()
    tiny_prm(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# --- ProcessBench metric ----------------------------------------------------------------------


def test_processbench_score_by_hand():
    # Erroneous rows: 2->2 right, 0->1 wrong, 1->None wrong: 1/3.
    # Correct rows: -1 right, 0 wrong: 1/2.
    score = processbench_score([2, 0, -1, -1, 1], [2, 1, -1, 0, None], subset="s")
    assert (score.n, score.n_error, score.n_correct) == (5, 3, 2)
    assert score.error_acc == pytest.approx(1 / 3) and score.correct_acc == pytest.approx(0.5)
    assert score.f1 == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))  # 0.4
    assert processbench_score([0, -1], [-1, 0]).f1 == 0.0
    assert math.isnan(processbench_score([0], [0]).correct_acc)
    with pytest.raises(ValueError, match="2 labels but 1 predictions"):
        processbench_score([0, 1], [0])


def test_verdicts_and_first_error_round_trip():
    assert verdicts_from_first_error(2, 4) == [True, True, False, False]
    assert verdicts_from_first_error(-1, 3) == [True, True, True]
    assert verdicts_from_first_error(None, 2) == [False, False]
    for index in (-1, 0, 1, 3):
        assert first_error(verdicts_from_first_error(index, 4)) == index


@needs_data
def test_oracle_and_constant_judges_on_processbench():
    rows = {s: load_processbench(s) for s in ("gsm8k", "math")}
    everything = [r for subset_rows in rows.values() for r in subset_rows]
    oracle = evaluate_judge(OracleJudge(everything), rows)
    assert [s.f1 for s in oracle.scores] == [1.0, 1.0] and oracle.average_f1 == 1.0
    constant = evaluate_judge(ConstantJudge(), rows)
    gsm8k, math_ = constant.scores
    # Counts from ProcessBench's card: 193 of 400 gsm8k and 406 of 1000 math solutions are correct.
    assert (gsm8k.n_error, gsm8k.n_correct, math_.n_correct) == (207, 193, 406)
    assert (gsm8k.error_acc, gsm8k.correct_acc, gsm8k.f1) == (0.0, 1.0, 0.0)
    assert constant.predictions["gsm8k"] == [-1] * 400


@needs_data
def test_limit_spreads_over_the_file():
    rows = load_processbench("gsm8k", limit=4)
    assert [r.id for r in rows] == ["gsm8k-0", "gsm8k-100", "gsm8k-200", "gsm8k-300"]
    assert [r.label for r in rows][2:] == [-1, -1]  # the file lists correct solutions last


def test_processbench_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown ProcessBench subset 'gsm'"):
        load_processbench("gsm", directory=tmp_path)
    with pytest.raises(FileNotFoundError, match="no ProcessBench file .*math.json"):
        load_processbench("math", directory=tmp_path)
    (tmp_path / "math.json").write_text(json.dumps([{"id": "m-0", "problem": "p"}]))
    with pytest.raises(ValueError, match="row 0 lacks id/problem/steps/label"):
        load_processbench("math", directory=tmp_path)


# --- PRM judge ----------------------------------------------------------------------------------


def test_prm_probabilities_match_a_naive_forward(prm_dir):
    judge = PRMJudge.from_pretrained(prm_dir, batch_size=2)
    got = judge.step_probabilities(PROBLEMS, STEPS)
    sep = judge.tokenizer.convert_tokens_to_ids("<extra_0>")
    for problem, steps, probs in zip(PROBLEMS, STEPS, got):
        ids = torch.tensor(
            [judge.tokenizer.encode(judge.text(problem, steps), add_special_tokens=False)]
        )
        with torch.no_grad():
            logits = judge.model(input_ids=ids).logits[0]
        expected = torch.softmax(logits, -1)[ids[0] == sep, 1]
        assert len(probs) == len(steps)
        assert probs == pytest.approx(expected.tolist(), abs=1e-5)
    assert judge.step_probabilities(["p"], [[]]) == [[]]


def test_prm_threshold_on_a_fixed_head():
    tok = prm_tokenizer()
    model = tiny_prm(tok)
    with torch.no_grad():
        model.score.weight.zero_()
        model.score.bias.copy_(torch.tensor([0.0, math.log(3.0)]))  # p(correct) = 3 / (1 + 3)
    judge = PRMJudge(model, tok)
    assert judge.step_probabilities(["p"], [["a", "b"]])[0] == pytest.approx([0.75, 0.75])
    assert judge.judge("p", ["a", "b", "c"]) == [True, True, True]
    assert judge.first_errors(["p"], [["a"]]) == [-1]
    with torch.no_grad():
        model.score.bias.copy_(torch.tensor([math.log(3.0), 0.0]))
    assert judge.judge("p", ["a", "b"]) == [False, False]
    assert judge.first_errors(["p", "q"], [["a"], ["b", "c"]]) == [0, 0]


def test_prm_text_uses_the_chat_template_and_the_separator():
    tok = prm_tokenizer()
    judge = PRMJudge(tiny_prm(tok), tok)
    assert judge.text("P", ["a", "b<extra_0>"]) == (
        "Please reason step by step, and put your final answer within \\boxed{}.\n\nP\n\n"
        "a<extra_0>b<extra_0>"
    )
    tok.chat_template = CHAT
    assert judge.text("P", ["a", "b"]) == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\nP<|im_end|>\n<|im_start|>assistant\n"
        "a<extra_0>b<extra_0><|im_end|>\n"
    )
    assert len(judge.judge("P", ["a", "b"])) == 2


def test_prm_rejects_bad_checkpoints(tmp_path):
    tok = make_char_tokenizer()
    with pytest.raises(ValueError, match="separator '<extra_0>' as 9 tokens"):
        PRMJudge(tiny_prm(tok), tok)
    tok = prm_tokenizer()
    tiny_prm(tok, num_labels=3).save_pretrained(tmp_path / "three")
    tok.save_pretrained(tmp_path / "three")
    with pytest.raises(ValueError, match="has 3 labels"):
        PRMJudge.from_pretrained(tmp_path / "three")
    model = tiny_prm(tok)
    model.config.architectures = ["Qwen2ForProcessRewardModel"]
    model.config.auto_map = {"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
    model.config.save_pretrained(tmp_path / "remote")
    with pytest.raises(ValueError, match="needs its own modeling code; pass --trust-remote-code"):
        PRMJudge.from_pretrained(tmp_path / "remote")


def test_math_task_takes_a_prm_as_step_judge(prm_dir, tmp_path):
    judge = PRMJudge.from_pretrained(prm_dir)
    bench = tmp_path / "one.jsonl"
    bench.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    task = MathTask(benchmark=str(bench), step_judge=judge.judge)
    problem = task.pool("eval")[0]
    verdicts = task.judge_steps(problem, "1+1=2\n\nso the answer is \\boxed{2}")
    steps = ["1+1=2", "so the answer is \\boxed{2}"]
    probs = judge.step_probabilities([problem.question], [steps])[0]
    assert verdicts == [p > 0.5 for p in probs] and len(verdicts) == 2


# --- critic judge -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def critic():
    tok = make_char_tokenizer()
    return CriticJudge(random_qwen3(tok), tok, max_new_tokens=12, batch_size=2)


def test_critic_prompt_is_processbench_style(critic):
    prompt = critic.prompt("P", ["a", "b"])
    assert prompt.startswith(
        "The following is a math problem and a solution (split into paragraphs, enclosed with "
        "tags and indexed from 0):\n\n[Math Problem]\n\nP\n\n[Solution]\n\n"
        "<paragraph_0>\na\n</paragraph_0>\n\n<paragraph_1>\nb\n</paragraph_1>\n\nYour task is"
    )
    assert prompt.endswith("Please put your final answer (i.e., the index) in \\boxed{}.")


@pytest.mark.parametrize(
    "critique, index",
    [
        ("paragraph 2 is wrong: \\boxed{2}", 2),
        ("all fine, \\boxed{-1}", -1),
        ("\\boxed{1} hmm no \\boxed{0}", 0),
        ("\\boxed{3}", None),
        ("\\boxed{-2}", None),
        ("\\boxed{two}", None),
        ("no verdict", None),
    ],
)
def test_critic_parses_the_boxed_index(critique, index):
    assert CriticJudge.parse_first_error(critique, 3) == index


def test_critic_generates_greedy_critiques(critic):
    first = critic.critique(PROBLEMS, STEPS)
    assert first == critic.critique(PROBLEMS, STEPS) and len(first) == 3
    assert all(len(critic.tokenizer.encode(c, add_special_tokens=False)) <= 12 for c in first)
    expected = [CriticJudge.parse_first_error(c, len(s)) for c, s in zip(first, STEPS)]
    assert critic.first_errors(PROBLEMS, STEPS) == expected


def test_critic_verdicts_and_score(critic, monkeypatch):
    replies = iter([["found it: \\boxed{1}"], ["\\boxed{-1}"], ["???"]])
    monkeypatch.setattr(critic, "critique", lambda problems, steps: next(replies))
    assert critic.judge("p", ["a", "b", "c"]) == [True, False, False]
    assert critic.judge("p", ["a", "b"]) == [True, True]
    assert critic.judge("p", ["a", "b"]) == [False, False]
    rows = [
        ProcessBenchRow(f"t-{i}", "t", "p", ("a", "b"), label, True, "g")
        for i, label in enumerate([1, -1, 0])
    ]
    monkeypatch.setattr(
        critic, "critique", lambda problems, steps: ["\\boxed{1}", "nothing", "\\boxed{0}"]
    )
    evaluation = evaluate_judge(critic, {"t": rows})
    assert evaluation.predictions == {"t": [1, None, 0]}
    assert (evaluation.scores[0].error_acc, evaluation.scores[0].correct_acc) == (1.0, 0.0)


# --- `dasd-analyze judge-eval` -----------------------------------------------------------------


@needs_data
def test_judge_eval_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "oracle.json"
    result = runner.invoke(
        analyze_app, ["judge-eval", "--judge", "oracle", "--limit", "40", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "omnimath" in result.output and "average" in result.output
    record = json.loads(out.read_text())
    assert [s["subset"] for s in record["scores"]] == ["gsm8k", "math", "olympiadbench", "omnimath"]
    assert (
        all(s["n"] == 40 and s["f1"] == 1.0 for s in record["scores"])
        and record["average_f1"] == 1.0
    )
    out = tmp_path / "constant.json"
    result = runner.invoke(
        analyze_app,
        ["judge-eval", "--judge", "constant-correct", "--subset", "gsm8k", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["scores"] == [
        {
            "subset": "gsm8k",
            "n": 400,
            "n_error": 207,
            "n_correct": 193,
            "error_acc": 0.0,
            "correct_acc": 1.0,
            "f1": 0.0,
        }
    ]
    assert record["predictions"]["gsm8k"][0] == {"id": "gsm8k-0", "label": 1, "predicted": -1}


def test_judge_eval_cli_on_a_tiny_prm(prm_dir, tmp_path):
    rows = [
        {
            "id": f"m-{i}",
            "generator": "g",
            "problem": "1+1?",
            "steps": ["1+1=2", "so 2"],
            "final_answer_correct": True,
            "label": label,
        }
        for i, label in enumerate([-1, 0, 1])
    ]
    (tmp_path / "math.json").write_text(json.dumps(rows))
    result = CliRunner().invoke(
        analyze_app,
        [
            "judge-eval",
            "--judge",
            "prm",
            "--model",
            str(prm_dir),
            "--subset",
            "math",
            "--processbench",
            str(tmp_path),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    judge = PRMJudge.from_pretrained(prm_dir)
    expected = judge.first_errors(["1+1?"] * 3, [["1+1=2", "so 2"]] * 3)
    predicted = [
        p["predicted"] for p in json.loads((tmp_path / "r.json").read_text())["predictions"]["math"]
    ]
    assert predicted == expected


def test_judge_eval_cli_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        analyze_app, ["judge-eval", "--judge", "prm", "--processbench", str(tmp_path)]
    )
    assert result.exit_code == 2 and "no ProcessBench file" in result.output
    (tmp_path / "gsm8k.json").write_text("[]")
    result = runner.invoke(
        analyze_app,
        ["judge-eval", "--judge", "prm", "--subset", "gsm8k", "--processbench", str(tmp_path)],
    )
    assert result.exit_code == 2 and "judge 'prm' needs --model" in result.output
    result = runner.invoke(
        analyze_app,
        ["judge-eval", "--judge", "nope", "--subset", "gsm8k", "--processbench", str(tmp_path)],
    )
    assert "unknown judge 'nope'; valid: constant-correct, critic, oracle, prm" in result.output
