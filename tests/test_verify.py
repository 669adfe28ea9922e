"""Answer extraction and math-verify equivalence under a time limit (dasd.verify)."""

import time

import pytest

from dasd.verify import MathVerifier, clean_answer, extract_answer, last_boxed


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(timeout_s=5.0) as v:
        yield v


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("$\\boxed{\\sqrt{\\frac{95}{24}}}$", "\\sqrt{\\frac{95}{24}}"),
        ("first \\boxed{1}, then wait, \\boxed{2}", "2"),
        ("thus \\boxed 5$ done", "5"),
        ("\\fbox{7}", "7"),
        ("\\boxed{ 2^{25} \\cdot 26! }", "2^{25} \\cdot 26!"),
        ("The final answer is $\\frac{1}{2}$. Done.", "\\frac{1}{2}"),
        ("Therefore, the answer is 42.", "42"),
        ("the answer is 5, since 2+3=5", "5"),
        ("work...\nAnswer: 34", "34"),
        ("**Final Answer:** \\(x = 3\\)", "x = 3"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["no answer here", "\\boxed{}", "\\boxed{3", "", None, 17])
def test_extract_answer_none(text):
    assert extract_answer(text) is None


def test_last_boxed_balances_braces_and_takes_the_last():
    assert last_boxed("\\boxed{a{b}c} and \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert last_boxed("nothing") is None
    assert clean_answer("  $\\dfrac{1}{2}$. ") == "\\dfrac{1}{2}"
    assert clean_answer("\\(42\\)") == "42"


@pytest.mark.parametrize(
    "gold, answer",
    [
        ("\\frac{1}{2}", "0.5"),
        ("025", "25"),
        ("27", "27.0"),
        ("2^{25} \\cdot 26!", "26! \\cdot 2^{25}"),
        ("2^{25} \\cdot 26!", "33554432 \\times 26!"),
        ("1-\\frac{2}{\\pi}", "\\frac{\\pi-2}{\\pi}"),
        ("\\sqrt{\\frac{95}{24}}", "\\frac{\\sqrt{570}}{12}"),
        (
            "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}",
            "\\frac{-1-\\sqrt{17}}{2}, \\frac{-1+\\sqrt{17}}{2}",
        ),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
        ("\\$18.90", "18.90"),
    ],
)
def test_equivalent_answers(verifier, gold, answer):
    assert verifier.equivalent(gold, answer) is True


@pytest.mark.parametrize(
    "gold, answer",
    [
        ("\\frac{1}{2}", "0.3"),
        ("025", "26"),
        ("2^{25} \\cdot 26!", "2^{24} \\cdot 26!"),
        ("\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}", "\\frac{-1+\\sqrt{17}}{2}"),
        ("\\sqrt{2}", "1.41"),
        ("x=3", "y=3"),
        ("5", ""),
        ("5", "5" * 1001),
    ],
)
def test_different_answers(verifier, gold, answer):
    assert verifier.equivalent(gold, answer) is False


def test_plain_numbers_never_reach_the_worker():
    with MathVerifier() as v:
        assert v.equivalent("025", "25") and v.equivalent("27", "27.0")
        assert not v.equivalent("204", "205")
        assert v._worker is None


def test_score_reads_the_final_answer(verifier):
    assert verifier.score("\\frac{1}{2}", "so x = \\boxed{0.5}") == 1.0
    assert verifier.score("\\frac{1}{2}", "\\boxed{0.5} no wait \\boxed{0.25}") == 0.0
    assert verifier.score("\\frac{1}{2}", "I give up") == 0.0


def _times_out(hostile: str) -> None:
    """``hostile`` would hang sympy (a power tower, a huge expansion): 0 within the limit."""
    with MathVerifier(timeout_s=1.0) as v:
        assert v.equivalent("\\frac{1}{2}", "0.5")  # worker started and warm
        start = time.perf_counter()
        assert v.equivalent("5", hostile) is False
        assert time.perf_counter() - start < 2.0
        assert v.n_timeouts == 1
        assert v.equivalent("2^{25} \\cdot 26!", "33554432 \\times 26!")


def test_hostile_latex_times_out_and_the_worker_recovers():
    _times_out("9^{9^{9^{9}}}")


@pytest.mark.slow
def test_hostile_expansion_times_out():
    _times_out("(x+1)^{100000}")


def test_a_dead_worker_is_replaced():
    with MathVerifier() as v:
        assert v.equivalent("\\frac{1}{2}", "0.5")
        v._worker.process.kill()
        v._worker.process.wait()
        assert v.equivalent("1-\\frac{2}{\\pi}", "\\frac{\\pi-2}{\\pi}")
        assert v.n_timeouts == 0


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        MathVerifier(timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb must be >= 256"):
        MathVerifier(memory_mb=10)
