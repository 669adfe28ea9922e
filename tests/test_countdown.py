"""Countdown task: solver, verifier, step judge, sampler and SFT traces (DESIGN.md section 5)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import replace
from fractions import Fraction
from itertools import combinations_with_replacement

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dasd.models import CHARSET
from dasd.tasks import TASKS, CountdownTask, MathTask, Task, get_task
from dasd.tasks.base import rebuilds_problems
from dasd.tasks.countdown import (
    MARKERS,
    Step,
    answer_expression,
    evaluate_expression,
    reachable_targets,
    solve,
)


@pytest.fixture(scope="module")
def task() -> CountdownTask:
    return CountdownTask()


@pytest.fixture(scope="module")
def p29(task):
    return task.make_problem([8, 3, 7], 29)


def _problem_of(task, prompt: str):
    """Rebuild the problem from a (student or teacher) prompt's ``nums:``/``target:`` lines."""
    fields = dict(line.split(": ", 1) for line in prompt.splitlines() if ": " in line)
    return task.make_problem([int(x) for x in fields["nums"].split()], int(fields["target"]))


def _marker_lines(response: str) -> list[str]:
    """Lines that start with a letter, other than the answer line."""
    return [ln for ln in response.splitlines() if ln[:1].isalpha() and not ln.startswith("answer:")]


def _final_attempt(response: str) -> list[str]:
    """Lines after the last line that starts with a letter, without the answer line."""
    lines = response.splitlines()
    text = [k for k, ln in enumerate(lines) if ln[:1].isalpha() and not ln.startswith("answer:")]
    start = text[-1] + 1 if text else 0
    return [ln for ln in lines[start:] if not ln.startswith("answer:")]


# ----------------------------------------------------------------------------- registry


def test_registry_builds_countdown_and_rejects_unknown_names():
    built = get_task("countdown", n_numbers=4, max_number=6)
    assert isinstance(built, CountdownTask) and isinstance(built, Task)
    assert (built.n_numbers, built.max_number) == (4, 6)
    assert "countdown" in TASKS
    with pytest.raises(ValueError, match="valid: countdown"):
        get_task("chess")


def test_problem_from_row_rebuilds_countdown_ids_only(task, p29):
    class Row:
        def __init__(self, prompt_id):
            self.prompt_id = prompt_id

    assert task.problem_from_row(Row("cd-3-7-8-29")) == p29
    assert task.problem_from_row(Row("cd-1-1-1-4")) is None  # unreachable target
    assert task.problem_from_row(Row("aime24-3")) is None
    assert rebuilds_problems(CountdownTask) and not rebuilds_problems(MathTask)


@pytest.mark.parametrize(
    "kwargs", [{"n_numbers": 1}, {"n_numbers": 6}, {"max_number": 0}, {"eval_fraction": 1.5},
               {"max_target": 0}, {"n_numbers": 5, "max_number": 40}]
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError, match="countdown"):
        CountdownTask(**kwargs)


# ----------------------------------------------------------------------------- solver


def test_solver_finds_the_shortest_solution_in_a_fixed_order():
    assert solve([3, 7, 8], 29) == [Step(7, "*", 3, 21), Step(21, "+", 8, 29)]
    assert solve([9, 3, 2], 6) == [Step(9, "-", 3, 6)]
    assert solve([2, 3], 6) == [Step(3, "*", 2, 6)]
    assert solve([3, 7, 8], 7) == []


def test_solver_reports_unsolvable_instances():
    assert solve([1, 1, 1], 4) is None  # 1+1+1 = 3 is the most three 1s make
    assert solve([4, 6], 3) is None  # 6/4 is not exact
    assert solve([2, 5, 9], 1000) is None


def test_solver_rejects_non_positive_numbers():
    with pytest.raises(ValueError, match="positive integers"):
        solve([0, 3], 3)


def test_reachable_targets_by_hand():
    assert reachable_targets([2, 3]) == {1, 5, 6}  # 3-2, 3+2, 3*2; 3/2 is not exact
    assert reachable_targets([1, 1, 1]) == {1, 2, 3}


def test_solver_agrees_with_reachable_set_and_its_solutions_verify(task):
    for nums in combinations_with_replacement(range(1, 6), 3):
        reach = reachable_targets(nums)
        for target in range(1, 61):
            steps = solve(nums, target)
            assert (steps is not None) == (target in reach or target in nums), (nums, target)
            if steps and target not in nums:
                problem = task.make_problem(nums, target)
                trace = "\n".join(map(str, steps)) + f"\nanswer: {answer_expression(nums, steps)}"
                assert task.judge_steps(problem, trace) == [True] * len(steps)
                assert task.reward(problem, trace) == 1.0


def test_answer_expression_parenthesizes_compound_operands():
    steps = [Step(7, "*", 3, 21), Step(8, "-", 2, 6), Step(21, "+", 6, 27)]
    assert answer_expression([2, 3, 7, 8], steps) == "(7*3)+(8-2)"
    with pytest.raises(ValueError, match="not available"):
        answer_expression([2, 3], [Step(7, "*", 3, 21)])


def test_evaluate_expression_is_exact_and_lists_leaves():
    assert evaluate_expression("6/(1-3/4)") == (Fraction(24), [6, 1, 3, 4])
    assert evaluate_expression(" 7 * 3 + 8 ") == (Fraction(29), [7, 3, 8])
    assert evaluate_expression("8-3*2-1") == (Fraction(1), [8, 3, 2, 1])
    for bad in ["", "(7*3", "7*3)", "-3+4", "7**3", "8/(3-3)", "7 3", "1" * 10, "\u0663*7"]:
        assert evaluate_expression(bad) is None, bad


# ----------------------------------------------------------------------------- problems, prompts


def test_problem_fields_and_prompts(task, p29):
    assert p29.id == "cd-3-7-8-29"
    assert p29.meta == {"numbers": [3, 7, 8], "target": 29}
    assert p29.reference == "7*3=21 21+8=29"
    assert p29.answer == "(7*3)+8"
    assert task.student_prompt(p29) == "nums: 3 7 8\ntarget: 29\n"
    assert task.teacher_prompt(p29) == "ref: 7*3=21 21+8=29\nnums: 3 7 8\ntarget: 29\n"


def test_make_problem_rejects_unreachable_and_trivial_targets(task):
    with pytest.raises(ValueError, match="unreachable"):
        task.make_problem([1, 1, 1], 4)
    with pytest.raises(ValueError, match="one of the numbers"):
        task.make_problem([3, 7, 8], 7)


# ----------------------------------------------------------------------------- verifier


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("7*3=21\n21+8=29\nanswer: (7*3)+8", 1.0),
        ("answer: 7*3+8", 1.0),
        ("answer:  8 + 3 * 7 ", 1.0),
        ("answer: " + "(" * 20 + "7*3+8" + ")" * 20, 1.0),
        ("answer: 7*8-3", 0.0),  # arithmetic misses: 53
        ("answer: 7+7+7+8", 0.0),  # 7 used three times
        ("answer: 7*4+1", 0.0),  # 4 and 1 not given
        ("answer: 29", 0.0),
        ("answer: (7*3", 0.0),  # truncated
        ("answer: 7*3+8\nanswer: 7*8", 0.0),  # only the last answer counts
        ("answer: 7*8\nanswer: 7*3+8", 1.0),
        ("7*3=21\n21+8=29", 0.0),  # no answer line
        ("", 0.0),
        ("answer:", 0.0),
        ("answer: 8/(3-3)", 0.0),
        ("answer: -3+32", 0.0),
        ("\x00\xff\ufffd\ud800answer:\x7f", 0.0),
        ("answer: " + "(" * 40 + "7*3+8" + ")" * 40, 0.0),  # deeper than 32
        ("answer: " + "(" * 5000 + "7" + ")" * 5000, 0.0),
        ("answer: " + "9" * 10000, 0.0),
    ],
)
def test_reward_on_hand_responses(task, p29, response, expected):
    assert task.reward(p29, response) == expected


def test_reward_uses_exact_fractions(task):
    problem = task.make_problem([1, 3, 4, 6], 24)
    assert task.reward(problem, "answer: 6/(1-3/4)") == 1.0
    assert task.reward(problem, "answer: 6/(1-3/4)+1") == 0.0


def test_reward_on_a_very_long_response_reads_the_last_answer(task, p29):
    assert task.reward(p29, "7*3=21\n" * 100_000 + "answer: (7*3)+8") == 1.0


def test_reward_rejects_a_problem_without_countdown_meta(task, p29):
    with pytest.raises(ValueError, match="lacks countdown meta"):
        task.reward(replace(p29, meta={}), "answer: 7*3+8")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(CHARSET + "\x00\ud7ff\u00e9"), max_size=300))
def test_reward_and_judge_never_raise_on_arbitrary_text(task, p29, text):
    assert task.reward(p29, text) in (0.0, 1.0)
    assert task.reward(p29, "answer: " + text) in (0.0, 1.0)
    assert len(task.judge_steps(p29, text)) == len(task.parse_steps(text))


# ----------------------------------------------------------------------------- steps


def test_parse_steps_on_mixed_text(task):
    response = (
        "nums? \n7*3=21\n\nwait, 21 is not 29\n 21 + 8 = 29 \n7*3=\n?!\nanswer: (7*3)+8\n"
    )
    assert task.parse_steps(response) == ["7*3=21", "21 + 8 = 29", "7*3=", "?!"]
    assert task.parse_steps("") == []


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("7*3=21\n21+8=29\nanswer: (7*3)+8", [True, True]),
        ("3*7=21\n8+21=29", [True, True]),
        ("7*3=22\n22+8=30", [False, True]),  # the claimed 22 enters the pool
        ("7*7=49", [False]),  # only one 7
        ("7*4=28", [False]),  # 4 not given
        ("21+8=29", [False]),  # 21 not yet made
        ("7*3=21\n21+8=29\n21+3=24", [True, True, False]),  # 21 and 3 were used
        ("7*3=21\nwait, try again\n21+8=29", [True, False]),  # the marker line resets
        ("7*3=21\n21-8=13\nhmm, that gives 13\n7*3=21\n21+8=29", [True] * 4),
        ("7*3=21\nanswer: 21\n21+8=29", [True, False]),  # so does an answer line
        ("3-7=-4", [False]),  # negative subtraction
        ("7-3=4\n8/4=2", [True, True]),
        ("8/3=2", [False]),  # not exact
        ("7*3=\n7*3=21", [False, True]),  # an unreadable step leaves the pool alone
        ("7 * 3 = 21\n\n21 + 8 = 29", [True, True]),
    ],
)
def test_judge_steps_on_hand_traces(task, p29, response, expected):
    assert task.judge_steps(p29, response) == expected


def test_judge_steps_zero_result_and_duplicate_numbers(task):
    problem = task.make_problem([3, 3, 5], 14)
    assert task.judge_steps(problem, "3-3=0") == [False]
    assert task.judge_steps(problem, "3*3=9\n9+5=14") == [True, True]
    assert task.judge_steps(problem, "3/3=1\n5-1=4\n4+3=7") == [True, True, False]


# ----------------------------------------------------------------------------- sampling


def test_sample_is_deterministic_and_prefix_stable(task):
    a = task.sample(30, seed=1)
    assert a == task.sample(30, seed=1)
    assert a[:10] == task.sample(10, seed=1)
    assert [p.id for p in a] != [p.id for p in task.sample(30, seed=2)]
    assert task.sample(0) == []


def test_train_and_eval_share_no_number_multiset(task):
    n_eval = len(task.pool("eval"))
    n_train = len(task.pool("train"))
    assert 300 < n_eval < n_train
    ev = task.sample(n_eval, split="eval", seed=0)
    tr = task.sample(n_train, split="train", seed=0)
    assert len({p.id for p in ev}) == n_eval  # distinct while the pool lasts
    assert len({p.id for p in tr}) == n_train
    eval_sets = {tuple(p.meta["numbers"]) for p in ev}
    train_sets = {tuple(p.meta["numbers"]) for p in tr}
    assert eval_sets.isdisjoint(train_sets)
    assert len(eval_sets) + len(train_sets) == 165  # all multisets of 3 from 1..9
    assert all(task.split_of(s) == "eval" for s in eval_sets)


def test_eval_repeats_only_after_the_pool_is_exhausted(task):
    n_eval = len(task.pool("eval"))
    ids = [p.id for p in task.sample(n_eval + 5, split="eval", seed=3)]
    assert len(set(ids[:n_eval])) == n_eval
    assert len(set(ids)) == n_eval


def test_sampled_problems_have_verified_references(task):
    for problem in task.sample(200, split="eval", seed=0) + task.sample(200, seed=0):
        numbers, target = problem.meta["numbers"], problem.meta["target"]
        assert 1 <= target <= 100 and target not in numbers
        ref_trace = problem.reference.replace(" ", "\n")
        assert all(task.judge_steps(problem, ref_trace))
        assert task.reward(problem, f"answer: {problem.answer}") == 1.0


def test_sample_bad_input(task):
    with pytest.raises(ValueError, match="'train' or 'eval'"):
        task.sample(3, split="test")
    with pytest.raises(ValueError, match=">= 0"):
        task.sample(-1)
    with pytest.raises(ValueError, match="eval split is empty"):
        CountdownTask(eval_fraction=0.0).sample(3, split="eval")


# ----------------------------------------------------------------------------- SFT traces


@pytest.fixture(scope="module")
def sft(task):
    return task.sft_examples(400, seed=0)


def test_sft_examples_are_deterministic(task, sft):
    assert task.sft_examples(400, seed=0) == sft
    assert task.sft_examples(400, seed=1) != sft


def test_sft_examples_use_only_charset_and_stay_short(sft):
    allowed = set(CHARSET)
    for prompt, response in sft:
        assert set(prompt + response) <= allowed
        assert len(prompt) + len(response) < 200
        assert not response.endswith("\n")


def test_sft_examples_verify_and_their_final_attempt_judges_correct(task, sft):
    eval_sets = {tuple(nums) for nums, _ in task.pool("eval")}
    for prompt, response in sft:
        problem = _problem_of(task, prompt)
        assert tuple(problem.meta["numbers"]) not in eval_sets
        assert task.reward(problem, response) == 1.0
        final = _final_attempt(response)
        assert final and task.judge_steps(problem, "\n".join(final)) == [True] * len(final)


def test_sft_privileged_examples_follow_the_teacher_format(task, sft):
    privileged = [(p, r) for p, r in sft if p.startswith("ref: ")]
    assert len(privileged) == 160  # round(400 * 0.4)
    follows_exactly = 0
    for prompt, response in privileged:
        problem = _problem_of(task, prompt)
        assert prompt == task.teacher_prompt(problem)
        assert _final_attempt(response) == problem.reference.split()
        follows_exactly += response.count("\n") == len(problem.reference.split())
    assert 0.7 < follows_exactly / len(privileged) < 0.9


def test_sft_plain_examples_mark_doubt_with_varied_markers(sft):
    plain = [r for p, r in sft if p.startswith("nums: ")]
    assert len(plain) == 240
    markers = [ln for r in plain for ln in _marker_lines(r)]
    first_words = Counter(re.match(r"[a-z]+", ln).group() for ln in markers)
    assert set(first_words) == set(MARKERS)
    with_markers = sum(bool(_marker_lines(r)) for r in plain)
    assert 0.35 < with_markers / len(plain) < 0.65


def test_sft_plain_traces_fork_on_the_first_step(task):
    firsts: dict[str, list[str]] = defaultdict(list)
    for prompt, response in task.sft_examples(3000, seed=5, privileged_fraction=0.0):
        firsts[prompt].append(response.splitlines()[0])
    repeated = [set(v) for v in firsts.values() if len(v) > 1]
    assert len(repeated) > 300
    assert sum(len(v) > 1 for v in repeated) / len(repeated) > 0.3


def test_sft_privileged_fraction_extremes_and_bad_value(task):
    plain = task.sft_examples(50, seed=0, privileged_fraction=0.0)
    privileged = task.sft_examples(50, seed=0, privileged_fraction=1.0)
    assert all(p.startswith("nums: ") for p, _ in plain)
    assert all(p.startswith("ref: ") for p, _ in privileged)
    with pytest.raises(ValueError, match="privileged_fraction"):
        task.sft_examples(5, seed=0, privileged_fraction=1.2)
