"""The real-math task: loaders on the shared benchmark files and on in-repo quirk fixtures,
prompts, rewards, steps, and `dasd-probe eval --task math` end to end."""

import json
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import probe_app
from dasd.models import make_char_tokenizer
from dasd.runlog import read_manifest, read_rollouts
from dasd.tasks import MathTask, build_task, get_task
from dasd.tasks.base import Problem, Task
from dasd.tasks.math import (
    BENCHMARKS,
    default_data_dir,
    load_benchmark,
    problem_from_row,
    read_rows,
    repair_latex_controls,
    split_steps,
)
from tests.fixtures_models import random_qwen3

DATA = Path(__file__).parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (real benchmark copies) absent")

#: A Qwen3-style chat template (the thinking switch as Qwen3's: an empty think block when off).
QWEN3_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DAPO_WRAPPED = (
    "Solve the following math problem step by step. The last line of your response should be of "
    "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
    'What is 1+1?\n\nRemember to put your answer on its own line after "Answer:".'
)
QUIRK_ROWS = [
    {
        "id": 7,
        "question": "Half is \x0crac{1}{2}",
        "final_answer": ["$69$,$84$"],
        "solution": ["first solution", "second solution"],
        "unit": None,
    },
    {"id": "7b", "problem": "AMC style", "answer": 27.0},
    {
        "prompt": [{"role": "user", "content": DAPO_WRAPPED}],
        "reward_model": {"ground_truth": "2", "style": "rule"},
        "extra_info": {"index": 5},
    },
    {"idx": 3, "problem": "Minerva style", "solution": "so $x = \\boxed{\\frac{3}{4}}$."},
]


@pytest.fixture(scope="module")
def quirk_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "quirks.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in QUIRK_ROWS))
    return path


@pytest.fixture(scope="module")
def chat_tokenizer():
    tok = make_char_tokenizer()
    tok.chat_template = QWEN3_LIKE
    return tok


@pytest.fixture(scope="module")
def plain_task(quirk_file):
    return MathTask(benchmark=str(quirk_file), train=str(quirk_file))


# --- loaders: in-repo quirk fixtures -------------------------------------------------------


def test_quirk_rows_normalize(plain_task):
    olymp, amc, dapo, minerva = plain_task.pool("eval")
    assert olymp == Problem(
        "quirks-7",
        "Half is \\frac{1}{2}",
        "69,84",
        "first solution",
        {"benchmark": "quirks", "row": 0, "reference_kind": "solution"},
    )
    assert (amc.id, amc.answer, amc.meta["reference_kind"]) == ("quirks-7b", "27", "answer")
    assert amc.reference == "The final answer is $\\boxed{27}$."
    assert (dapo.id, dapo.question, dapo.answer) == ("quirks-5", "What is 1+1?", "2")
    assert (minerva.id, minerva.answer) == ("quirks-3", "\\frac{3}{4}")
    assert minerva.reference == "so $x = \\boxed{\\frac{3}{4}}$."


def test_json_array_and_parquet_read_like_jsonl(tmp_path, plain_task):
    (tmp_path / "quirks.json").write_text(json.dumps(QUIRK_ROWS))
    rows = [
        {k: v for k, v in r.items() if k in ("id", "problem", "answer")} for r in QUIRK_ROWS[1:2]
    ]
    pd.DataFrame(rows * 2).to_parquet(tmp_path / "quirks.parquet")
    assert load_benchmark(str(tmp_path / "quirks.json")) == plain_task.pool("eval")
    from_parquet = load_benchmark(str(tmp_path / "quirks.parquet"))
    # Two rows share id "7b": ids fall back to row numbers so that they stay unique.
    assert [p.id for p in from_parquet] == ["quirks-0", "quirks-1"]
    assert [p.answer for p in from_parquet] == ["27", "27"]


def test_repair_latex_controls():
    assert (
        repair_latex_controls("$\x0crac{m}{n}$ and $\triangle ABC$")
        == "$\\frac{m}{n}$ and $\\triangle ABC$"
    )
    assert repair_latex_controls("\x08inom{5}{2}\r\nnext") == "\\binom{5}{2}\nnext"
    # A real TAB before ordinary words, and other control characters, are left or blanked.
    assert repair_latex_controls("a\tequal\x0cb\x01c") == "a\tequal b c"


@pytest.mark.parametrize(
    "row, message",
    [
        ({"answer": "3"}, "row 4 has no problem text"),
        ({"problem": "P", "solution": "no box"}, "row 4 has no answer"),
    ],
)
def test_rows_without_problem_or_answer_are_named(row, message):
    with pytest.raises(ValueError, match=message):
        problem_from_row(row, benchmark="b", index=4)


def test_bad_files_and_names_give_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "p", "answer": "1"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl: line 2 is not JSON"):
        read_rows(bad)
    (tmp_path / "x.csv").write_text("id,answer\n")
    with pytest.raises(ValueError, match="unsupported benchmark file type '.csv'"):
        load_benchmark(str(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match="unknown benchmark 'aime2024'.*aime24, aime25"):
        load_benchmark("aime2024", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="'aime24' has no local file.*DASD_DATA_DIR"):
        load_benchmark("aime24", data_dir=tmp_path)


def test_data_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DASD_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    (tmp_path / "amc23").mkdir()
    (tmp_path / "amc23" / "test.jsonl").write_text(json.dumps(QUIRK_ROWS[1]) + "\n")
    assert [p.id for p in load_benchmark("amc23")] == ["amc23-7b"]


def test_hub_loading_goes_through_datasets(monkeypatch):
    calls = []

    def load_dataset(name, config, *, split):
        calls.append((name, config, split))
        return [{"question": "Q", "final_answer": ["$5$"], "id": 1}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    problems = load_benchmark("hub:olympiadbench")
    assert calls == [("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train")]
    assert [(p.id, p.answer) for p in problems] == [("olympiadbench-1", "5")]
    load_benchmark("hub:someone/my-set@validation")
    assert calls[-1] == ("someone/my-set", None, "validation")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match="pip install dasd\\[hub\\]"):
        load_benchmark("hub:aime25")


# --- loaders: the real files in ../shared/data -------------------------------------------


REAL = {
    # name: (rows, first id, first answer, reference kind)
    "aime24": (30, "aime24-60", "204", "solution"),
    "aime25": (30, "aime25-0", "70", "answer"),
    "hmmt25": (30, "hmmt25-1", "103", "answer"),
    "math500": (
        500,
        "math500-test/precalculus/807.json",
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        "solution",
    ),
    "minerva": (272, "minerva-0", "1.6", "solution"),
    "olympiadbench": (675, "olympiadbench-1606", "2", "solution"),
    "amc23": (40, "amc23-0", "27", "answer"),
}


@needs_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_benchmarks_load(name):
    n, first_id, first_answer, kind = REAL[name]
    problems = load_benchmark(name, data_dir=DATA)
    assert len(problems) == n and len({p.id for p in problems}) == n
    assert (problems[0].id, problems[0].answer) == (first_id, first_answer)
    assert all(p.meta["reference_kind"] == kind for p in problems)
    assert all(p.question.strip() and p.answer.strip() and p.reference.strip() for p in problems)
    assert not any(c in p.question for p in problems for c in "\x08\x0c\r")


@needs_data
def test_real_benchmark_quirks():
    aime24 = {p.id: p for p in load_benchmark("aime24", data_dir=DATA)}
    assert aime24["aime24-67"].answer == "025"  # leading zeros kept; the verifier equates 25
    aime25 = load_benchmark("aime25", data_dir=DATA)
    assert (
        aime25[18].question.count("\\frac{\\log") == 5 and "\\triangle DEF" in aime25[19].question
    )
    assert "\\frac{m}{n}" in aime25[27].question
    hmmt = {p.id: p.answer for p in load_benchmark("hmmt_feb_2025", data_dir=DATA)}
    assert hmmt["hmmt25-17"] == "2^{25} \\cdot 26!"
    assert hmmt["hmmt25-10"] == "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}"
    olymp = {p.id: p for p in load_benchmark("olympiadbench", data_dir=DATA)}
    assert olymp["olympiadbench-1664"].answer == "69,84"


@needs_data
def test_dapo_parquet_and_jsonl_agree():
    from_parquet = load_benchmark("dapo-math-17k", data_dir=DATA)
    from_jsonl = load_benchmark(str(DATA / "dapo_math_17k" / "dapo_math_17k.jsonl"))
    assert len(from_parquet) == len(from_jsonl) == 17_917
    assert [(p.question, p.answer) for p in from_parquet] == [
        (p.question, p.answer) for p in from_jsonl
    ]
    assert from_parquet[0].id == "dapo-math-17k-0" and from_parquet[0].answer == "34"
    assert all(p.meta["reference_kind"] == "answer" for p in from_parquet)


@needs_data
def test_step_splitter_recovers_processbench_steps():
    rows = json.loads((DATA / "processbench" / "gsm8k.json").read_text())
    assert all(
        split_steps("\n\n".join(r["steps"])) == [s.strip() for s in r["steps"]] for r in rows
    )


# --- sampling -------------------------------------------------------------------------------


@needs_data
def test_eval_sampling_is_a_seeded_subset_or_everything():
    task = MathTask(benchmark="aime24", data_dir=DATA)
    everything = task.sample(100, split="eval")
    assert [p.id for p in everything] == [p.id for p in task.pool("eval")]
    five, seven = task.sample(5, split="eval", seed=3), task.sample(7, split="eval", seed=3)
    assert five == seven[:5] and len({p.id for p in seven}) == 7
    assert task.sample(5, split="eval", seed=3) == five
    assert task.sample(5, split="eval", seed=4) != five


@needs_data
def test_train_sampling_draws_dapo_without_replacement_then_reshuffles():
    task = MathTask(benchmark="aime24", data_dir=DATA)
    drawn = task.sample(6, split="train", seed=1)
    assert all(p.id.startswith("dapo-math-17k-") for p in drawn) and len({p.id for p in drawn}) == 6
    small = MathTask(benchmark="aime25", train="aime25", data_dir=DATA)
    ids = [p.id for p in small.sample(45, split="train", seed=0)]
    assert len(set(ids[:30])) == 30 and set(ids[30:]) <= set(ids[:30])


def test_sampling_rejects_bad_arguments(plain_task):
    with pytest.raises(ValueError, match="sample size must be >= 0"):
        plain_task.sample(-1)
    with pytest.raises(ValueError, match="split must be 'train' or 'eval'"):
        plain_task.sample(1, split="test")


# --- prompts ---------------------------------------------------------------------------------


def test_plain_prompts(plain_task):
    _, amc, _, minerva = plain_task.pool("eval")
    assert plain_task.student_prompt(minerva) == f"Minerva style\n\n{INSTRUCTION}\n\nSolution:\n"
    assert plain_task.teacher_prompt(minerva) == (
        "Reference solution:\nso $x = \\boxed{\\frac{3}{4}}$.\n\nProblem:\n"
        f"Minerva style\n\n{INSTRUCTION}\n\nSolution:\n"
    )
    assert plain_task.teacher_prompt(amc).startswith(
        "Reference solution:\nThe final answer is $\\boxed{27}$.\n\nProblem:\nAMC style"
    )


@pytest.mark.parametrize(
    "thinking, tail",
    [(None, ""), (True, ""), (False, "<think>\n\n</think>\n\n")],
)
def test_chat_template_prompts(quirk_file, chat_tokenizer, thinking, tail):
    task = get_task("math", benchmark=str(quirk_file), tokenizer=chat_tokenizer, thinking=thinking)
    problem = task.pool("eval")[1]
    assert task.student_prompt(problem) == (
        f"<|im_start|>user\nAMC style\n\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n{tail}"
    )
    assert task.teacher_prompt(problem) == (
        "<|im_start|>user\nReference solution:\nThe final answer is $\\boxed{27}$.\n\nProblem:\n"
        f"AMC style\n\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n{tail}"
    )


def test_system_message_and_custom_templates(quirk_file, chat_tokenizer):
    task = MathTask(
        benchmark=str(quirk_file),
        tokenizer=chat_tokenizer,
        system="Be brief.",
        user_template="Q: {question}",
        reference_template="Hint: {reference}\n",
    )
    problem = task.pool("eval")[1]
    assert task.teacher_prompt(problem) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
        "Hint: The final answer is $\\boxed{27}$.\nQ: AMC style<|im_end|>\n<|im_start|>assistant\n"
    )
    off = MathTask(benchmark=str(quirk_file), tokenizer=chat_tokenizer, chat_template=False)
    assert off.student_prompt(problem) == f"AMC style\n\n{INSTRUCTION}\n\nSolution:\n"


def test_bad_templates_are_rejected(quirk_file):
    with pytest.raises(ValueError, match="user_template must use exactly \\{question\\}"):
        MathTask(benchmark=str(quirk_file), user_template="{problem}")
    with pytest.raises(ValueError, match="reference_template must use exactly \\{reference\\}"):
        MathTask(benchmark=str(quirk_file), reference_template="r: {reference} {answer}\n")
    with pytest.raises(ValueError, match="tokenizer has no chat template"):
        MathTask(benchmark=str(quirk_file), tokenizer=make_char_tokenizer(), chat_template=True)


def test_describe_records_the_rendered_formats(quirk_file, chat_tokenizer):
    task = MathTask(benchmark=str(quirk_file), tokenizer=chat_tokenizer, thinking=False)
    described = task.describe()
    json.dumps(described)
    assert described["benchmark_source"] == str(quirk_file)
    assert described["student_prompt_format"] == (
        f"<|im_start|>user\n{{question}}\n\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
        "<think>\n\n</think>\n\n"
    )
    assert "Reference solution:\n{reference}" in described["teacher_prompt_format"]
    assert described["plain_template"] is None and len(described["chat_template_sha256"]) == 16
    assert described["thinking"] is False and described["verify_timeout_s"] == 5.0


# --- reward, steps, registry -------------------------------------------------------------------


def test_reward_uses_math_verify(plain_task):
    _, amc, _, minerva = plain_task.pool("eval")
    assert plain_task.reward(minerva, "x is \\boxed{0.75}") == 1.0
    assert plain_task.reward(minerva, "x is \\boxed{0.7}") == 0.0
    assert plain_task.reward(amc, "The answer is 27.") == 1.0
    assert plain_task.reward(amc, None) == 0.0
    assert plain_task.reward(amc, "") == 0.0


@pytest.mark.parametrize(
    "text, steps",
    [
        ("First.\n\nSecond.\n\n\nThird.", ["First.", "Second.", "Third."]),
        ("One line only", ["One line only"]),
        ("a = 1\nb = 2\nso 3", ["a = 1", "b = 2", "so 3"]),
        (
            "Intro\nStep 1: do x\nstill x\n## Step 2: do y",
            ["Intro", "Step 1: do x\nstill x", "## Step 2: do y"],
        ),
        ("<think>hmm\n\nok</think>Final: \\boxed{2}", ["hmm", "ok", "Final: \\boxed{2}"]),
        ("We get\n$$\nx = 1\n\ny = 2\n$$\n\nDone.", ["We get\n$$\nx = 1\n\ny = 2\n$$", "Done."]),
        ("", []),
    ],
)
def test_split_steps(text, steps):
    assert split_steps(text) == steps


def test_judge_steps_needs_a_judge(quirk_file, plain_task):
    problem = plain_task.pool("eval")[0]
    response = "a\n\nb\n\nc"
    assert plain_task.judge_steps(problem, response) == []
    seen = []

    def judge(text, steps):
        seen.append((text, steps))
        return [i != 1 for i in range(len(steps))]

    judged = MathTask(benchmark=str(quirk_file), step_judge=judge)
    assert judged.judge_steps(problem, response) == [True, False, True]
    assert seen == [("Half is \\frac{1}{2}", ["a", "b", "c"])]
    broken = MathTask(benchmark=str(quirk_file), step_judge=lambda text, steps: [True])
    with pytest.raises(ValueError, match="1 verdicts for 3 steps"):
        broken.judge_steps(problem, response)


def test_registry_and_build_task(quirk_file, chat_tokenizer):
    task = build_task("math", tokenizer=chat_tokenizer, benchmark=str(quirk_file))
    assert isinstance(task, Task) and task.tokenizer is chat_tokenizer
    assert build_task("countdown", tokenizer=chat_tokenizer).name == "countdown"
    with pytest.raises(
        ValueError, match="task 'countdown' takes no option benchmark; its options: n_numbers"
    ):
        build_task("countdown", benchmark="aime24")
    assert "aime24" in BENCHMARKS and "dapo-math-17k" in BENCHMARKS


# --- `dasd-probe eval --task math` on real AIME rows ------------------------------------------


@needs_data
def test_eval_cli_on_aime24(tmp_path, monkeypatch):
    monkeypatch.setenv("DASD_DATA_DIR", str(DATA))
    tok = make_char_tokenizer()
    random_qwen3(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    args = [
        "eval",
        "--model",
        str(tmp_path / "model"),
        "--task",
        "math",
        "--benchmark",
        "aime24",
        "--n-prompts",
        "2",
        "--k",
        "2",
        "--max-new-tokens",
        "8",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--name",
        "ev",
    ]
    result = CliRunner().invoke(probe_app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "ev"
    rows = read_rollouts(run)
    task = MathTask(benchmark="aime24", data_dir=DATA)
    problems = task.sample(2, split="eval", seed=0)
    assert rows["prompt_id"].tolist() == [p.id for p in problems for _ in range(2)]
    assert rows["answer"].tolist() == [p.answer for p in problems for _ in range(2)]
    assert rows["prompt"].tolist() == [task.student_prompt(p) for p in problems for _ in range(2)]
    assert (rows["n_tokens"] <= 8).all() and rows["reward"].isin([0.0, 1.0]).all()
    assert all(len(v) == 0 for v in rows["step_correct"])
    config = read_manifest(run)["config"]
    assert config["benchmark"] == "aime24"
    assert config["task_config"]["benchmark_source"] == str(DATA / "aime24" / "test.jsonl")
