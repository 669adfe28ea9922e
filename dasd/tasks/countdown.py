"""Countdown, the built-in world's task (DESIGN.md section 5; paper section 3 and appendix F).

Numbers and a target: reach the target with + - * / using each number at most once. Every
step ``a op b = c`` is checkable, so the step metrics of appendix F (StepAcc, FES, CSR) are exact
here, with no process reward model; the reference solution r of the privileged teacher is the
shortest solution found by an exhaustive solver.

Text formats (every character is in ``dasd.models.CHARSET``)::

    student prompt x   "nums: 3 7 8\\ntarget: 29\\n"
    teacher prompt     "ref: 7*3=21 21+8=29\\nnums: 3 7 8\\ntarget: 29\\n"   (r, then x)
    response           "8*3=24\\n24+7=31\\nwait, 31 is not 29\\n7*3=21\\n21+8=29\\nanswer: (7*3)+8"

A response is a sequence of lines (blank lines are ignored):

* an *answer line* starts with ``answer:`` and holds an expression over the given numbers;
* a *text line* starts with a letter; the epistemic-marker lines the traces use start with a
  word of ``MARKERS`` ("wait, 31 is not 29", "alternatively, try 7*3");
* every other line is a *step*, correct iff it reads ``a op b=c`` (spaces allowed) and obeys
  the rules below.

Rules and choices (departures from the paper, whose task is free-form math):

1. Integer rules for steps: every intermediate result is a positive integer, so ``a-b`` only
   when a > b and ``a/b`` only when b divides a. A solution may use a subset of the numbers.
2. The reward (appendix F's verifier) reads only the LAST answer line: 1.0 iff its expression
   parses, uses only given numbers, each at most once, and equals the target exactly (it is
   evaluated with fractions, so the integer rules bind the steps, not the answer). Anything
   malformed scores 0.0 and never raises; expressions longer than 200 characters or nested
   deeper than 32 parentheses score 0.0.
3. Step judge: a pool starts as the given numbers (a multiset). A step is correct iff its
   arithmetic obeys rule 1 and a and b are two distinct elements of the pool. Every step that
   reads as ``a op b=c`` removes whichever of a and b are in the pool and adds the claimed c,
   right or wrong, so one slip is not charged again to later steps; an unreadable step leaves
   the pool alone. Every text line and every answer line starts a new attempt: the pool resets
   to the given numbers.
4. Problems are (number multiset, target) pairs: targets are the values in 1..max_target
   reachable with at least one step, other than the given numbers. The train/eval split holds
   out whole multisets (by a hash of the sorted multiset), since 3 numbers from 1..9 give only
   ~2.5k problems and a pair-level split would show eval multisets in training.
5. ``Problem.answer`` is the reference's answer expression (any expression reaching the target
   is equally right); ``Problem.meta`` holds ``numbers`` (sorted) and ``target``.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from fractions import Fraction
from itertools import combinations_with_replacement
from typing import Any, NamedTuple

from dasd.tasks.base import TASKS, Problem, Task

__all__ = [
    "MARKERS",
    "CountdownTask",
    "Step",
    "answer_expression",
    "apply_op",
    "evaluate_expression",
    "reachable_targets",
    "solve",
]

#: Epistemic-marker words the solver traces use to mark doubt and restart (paper appendix F, E(y)).
MARKERS: tuple[str, ...] = (
    "wait",
    "hmm",
    "alternatively",
    "perhaps",
    "maybe",
    "actually",
    "check",
)

#: Marker lines written after a failed chain; ``v`` its wrong value, ``t`` the target,
#: ``d`` = |v - t|, ``rel`` "big"/"small", ``nxt`` the first step of the next chain ("7*3").
_MARKER_TEMPLATES: tuple[str, ...] = (
    "wait, {v} is not {t}",
    "wait, that is {v}, not {t}",
    "hmm, that gives {v}",
    "hmm, {v} is too {rel}",
    "actually, {v} is off by {d}",
    "check: {v} is not {t}",
    "alternatively, try {nxt}",
    "maybe try {nxt}",
    "perhaps {nxt} instead",
    "wait, {v} is too {rel}. alternatively, try {nxt}",
)

#: Probabilities of 0, 1, 2 failed chains before the solution in a plain (unprivileged) trace.
_PLAIN_FAILED_CHAINS = (0.5, 0.3, 0.2)
#: Probability that a privileged trace tries one failed chain before following r.
_PRIVILEGED_DETOUR = 0.2
_MAX_EXPR_CHARS = 200
_MAX_EXPR_DEPTH = 32
_MAX_MULTISETS = 10_000
_OPS = "+-*/"
_STEP_RE = re.compile(r"^(\d{1,9}) *([-+*/]) *(\d{1,9}) *= *(-?\d{1,12})$", re.ASCII)
_TOKEN_RE = re.compile(r"\s*(?:(\d{1,9})|([-+*/()]))", re.ASCII)


class Step(NamedTuple):
    """One step ``a op b = c``; ``str(step)`` is its compact text form ``"7*3=21"``."""

    a: int
    op: str
    b: int
    c: int

    def __str__(self) -> str:
        return f"{self.a}{self.op}{self.b}={self.c}"


def apply_op(a: int, op: str, b: int) -> int | None:
    """``a op b`` under the integer rules (module docstring, rule 1); None where not allowed."""
    if a <= 0 or b <= 0:
        return None
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a > b else None
    if op == "/":
        return a // b if a % b == 0 else None
    raise ValueError(f"unknown countdown operator {op!r}; use one of {_OPS}")


def _moves(pool: Sequence[int]) -> Iterator[tuple[int, int, Step]]:
    """Every allowed step on two pool elements (indices i < j), larger operand first."""
    for i in range(len(pool)):
        for j in range(i + 1, len(pool)):
            big, small = max(pool[i], pool[j]), min(pool[i], pool[j])
            for op in _OPS:
                c = apply_op(big, op, small)
                if c is not None:
                    yield i, j, Step(big, op, small, c)


def _after(pool: Sequence[int], i: int, j: int, c: int) -> list[int]:
    return [x for k, x in enumerate(pool) if k not in (i, j)] + [c]


def solve(numbers: Sequence[int], target: int) -> list[Step] | None:
    """A shortest solution as steps (empty if the target is a given number), or None.

    Exhaustive iterative deepening over all pairs and operations (module docstring, rule 1);
    deterministic: the first solution in a fixed order, operands written larger first.
    """
    pool = [int(x) for x in numbers]
    if any(x <= 0 for x in pool):
        raise ValueError(f"countdown numbers must be positive integers, got {list(numbers)}")
    if target in pool:
        return []

    dead: set[tuple[tuple[int, ...], int]] = set()  # (sorted pool, depth) with no solution

    def search(pool: list[int], depth: int) -> list[Step] | None:
        key = (tuple(sorted(pool)), depth)
        if key in dead:
            return None
        for i, j, step in _moves(pool):
            if step.c == target:
                return [step]
            if depth > 1 and len(pool) > 2:
                rest = search(_after(pool, i, j, step.c), depth - 1)
                if rest is not None:
                    return [step, *rest]
        dead.add(key)
        return None

    for depth in range(1, len(pool)):
        found = search(pool, depth)
        if found is not None:
            return found
    return None


def reachable_targets(numbers: Sequence[int]) -> set[int]:
    """Every value reachable from ``numbers`` with at least one step (each number at most once).

    Dynamic programming over sub-multisets (bitmasks): values[m] is what the numbers in m make
    when all of them are used; a value reachable from a subset is reachable.
    """
    nums = [int(x) for x in numbers]
    n = len(nums)
    values: dict[int, set[int]] = {}
    out: set[int] = set()
    for mask in range(1, 1 << n):
        if mask & (mask - 1) == 0:
            values[mask] = {nums[mask.bit_length() - 1]}
            continue
        made: set[int] = set()
        sub = (mask - 1) & mask
        while sub:
            other = mask ^ sub
            if sub < other:
                for x in values[sub]:
                    for y in values[other]:
                        big, small = max(x, y), min(x, y)
                        for op in _OPS:
                            c = apply_op(big, op, small)
                            if c is not None:
                                made.add(c)
            sub = (sub - 1) & mask
        values[mask] = made
        out |= made
    return out


def answer_expression(numbers: Sequence[int], steps: Sequence[Step]) -> str:
    """The expression over the given numbers that ``steps`` compute, e.g. ``"(7*3)+8"``.

    Compound operands are parenthesized; the outermost operation is not. The expression is
    that of the last step's result.
    """
    if not steps:
        raise ValueError("answer_expression needs at least one step")
    pool: list[tuple[int, str]] = [(x, str(x)) for x in numbers]
    expr = ""
    for step in steps:
        parts = []
        for operand in (step.a, step.b):
            idx = next((k for k, (v, _) in enumerate(pool) if v == operand), None)
            if idx is None:
                raise ValueError(f"step {step} uses {operand}, which is not available")
            parts.append(pool.pop(idx)[1])
        expr = step.op.join(p if p.isdigit() else f"({p})" for p in parts)
        pool.append((step.c, expr))
    return expr


class _Parser:
    """Recursive descent over integers, + - * / and parentheses, evaluated with fractions."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.leaves: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            value = value + self.term(depth) if self.take() == "+" else value - self.term(depth)
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            if self.take() == "*":
                value *= self.factor(depth)
            else:
                divisor = self.factor(depth)
                if divisor == 0:
                    raise ValueError("division by zero")
                value /= divisor
        return value

    def factor(self, depth: int) -> Fraction:
        tok = self.peek()
        if tok is None:
            raise ValueError("expression ends early")
        self.take()
        if tok == "(":
            if depth >= _MAX_EXPR_DEPTH:
                raise ValueError("expression nested too deeply")
            value = self.expr(depth + 1)
            if self.peek() != ")":
                raise ValueError("unclosed parenthesis")
            self.take()
            return value
        if tok.isdigit():
            self.leaves.append(int(tok))
            return Fraction(int(tok))
        raise ValueError(f"unexpected {tok!r}")


def evaluate_expression(text: str) -> tuple[Fraction, list[int]] | None:
    """Exact value and leaf numbers of an arithmetic expression; None if it does not parse.

    Accepts non-negative integers (at most 9 digits), binary + - * /, parentheses and spaces;
    no unary minus. Longer than 200 characters, nested deeper than 32, or dividing by zero:
    None. Never raises.
    """
    if not isinstance(text, str) or len(text) > _MAX_EXPR_CHARS:
        return None
    tokens: list[str] = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        match = _TOKEN_RE.match(stripped, pos)
        if match is None:
            return None
        tokens.append(match.group(1) or match.group(2))
        pos = match.end()
    if not tokens:
        return None
    parser = _Parser(tokens)
    try:
        value = parser.expr(0)
    except ValueError:
        return None
    if parser.pos != len(tokens):
        return None
    return value, parser.leaves


def _parse_step(line: str) -> Step | None:
    match = _STEP_RE.match(line.strip())
    if match is None:
        return None
    a, op, b, c = match.groups()
    return Step(int(a), op, int(b), int(c))


def _line_kind(line: str) -> str:
    """``"blank"``, ``"answer"``, ``"text"`` (starts with a letter) or ``"step"``."""
    stripped = line.strip()
    if not stripped:
        return "blank"
    if stripped.startswith("answer:"):
        return "answer"
    if stripped[0].isascii() and stripped[0].isalpha():
        return "text"
    return "step"


def _judged_steps(problem: Problem, response: str) -> Iterator[tuple[int, str, Counter, bool]]:
    """(offset of the line in ``response``, the line, the pool before it, verdict) for each
    step line, under rule 3 of the module docstring."""
    numbers, _ = _problem_numbers(problem)
    pool = Counter(numbers)
    start = 0
    for line in response.splitlines(keepends=True):
        offset, start = start, start + len(line)
        line = line.splitlines()[0]
        kind = _line_kind(line)
        if kind in ("text", "answer"):
            pool = Counter(numbers)
        if kind != "step":
            continue
        step = _parse_step(line)
        if step is None:
            yield offset, line, pool, False
            continue
        need = Counter([step.a, step.b])
        available = not need - pool
        yield offset, line, pool, available and apply_op(step.a, step.op, step.b) == step.c
        pool = pool - need
        pool[step.c] += 1


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


#: A problem id of :meth:`CountdownTask.make_problem`: the sorted numbers, then the target.
_PROBLEM_ID = re.compile(r"^cd-(\d+(?:-\d+)+)$")


def _multiset_key(numbers: Sequence[int]) -> str:
    return "-".join(str(x) for x in sorted(numbers))


def _problem_numbers(problem: Problem) -> tuple[list[int], int]:
    try:
        return [int(x) for x in problem.meta["numbers"]], int(problem.meta["target"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"problem {problem.id!r} lacks countdown meta 'numbers'/'target'; "
            "build it with CountdownTask.sample or CountdownTask.make_problem"
        ) from None


@TASKS.register("countdown")
class CountdownTask(Task):
    """The Countdown task (DESIGN.md section 5): generator, solver-backed reference, verifier,
    exact step judge and solver traces for the tiny model's supervised pre-training.

    Args:
        n_numbers: how many numbers a problem gives (2..5).
        max_number: numbers are drawn from 1..max_number (at most 99).
        max_target: targets are reachable values in 1..max_target (at most 9999).
        eval_fraction: share of number multisets held out for the eval split.
    """

    name = "countdown"

    def __init__(
        self,
        *,
        n_numbers: int = 3,
        max_number: int = 9,
        max_target: int = 100,
        eval_fraction: float = 0.2,
    ) -> None:
        if not 2 <= n_numbers <= 5:
            raise ValueError(f"countdown n_numbers must be in 2..5, got {n_numbers}")
        if not 1 <= max_number <= 99:
            raise ValueError(f"countdown max_number must be in 1..99, got {max_number}")
        if not 1 <= max_target <= 9999:
            raise ValueError(f"countdown max_target must be in 1..9999, got {max_target}")
        if not 0.0 <= eval_fraction <= 1.0:
            raise ValueError(f"countdown eval_fraction must be in [0, 1], got {eval_fraction}")
        n_multisets = math.comb(max_number + n_numbers - 1, n_numbers)
        if n_multisets > _MAX_MULTISETS:
            raise ValueError(
                f"countdown with {n_numbers} numbers from 1..{max_number} has {n_multisets} "
                f"number multisets (limit {_MAX_MULTISETS}); lower max_number or n_numbers"
            )
        self.n_numbers = n_numbers
        self.max_number = max_number
        self.max_target = max_target
        self.eval_fraction = eval_fraction
        self._pools: dict[str, tuple[tuple[tuple[int, ...], int], ...]] = {}

    def __repr__(self) -> str:
        return (
            f"CountdownTask(n_numbers={self.n_numbers}, max_number={self.max_number}, "
            f"max_target={self.max_target}, eval_fraction={self.eval_fraction})"
        )

    def split_of(self, numbers: Sequence[int]) -> str:
        """``"eval"`` or ``"train"`` for a number multiset, from a hash of its sorted form."""
        digest = hashlib.sha256(_multiset_key(numbers).encode()).digest()
        return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < self.eval_fraction else "train"

    def make_problem(self, numbers: Sequence[int], target: int) -> Problem:
        """The problem for ``numbers`` and ``target``, with the solver's reference r.

        Id ``cd-<sorted numbers>-<target>`` (e.g. ``cd-3-7-8-29``). Raises ``ValueError`` if the
        target is unreachable or is one of the numbers (a problem needs at least one step).
        """
        nums = sorted(int(x) for x in numbers)
        if target in nums:
            raise ValueError(
                f"countdown target {target} is one of the numbers {nums}; pick another target"
            )
        steps = solve(nums, target)
        if steps is None:
            raise ValueError(
                f"countdown target {target} is unreachable from {' '.join(map(str, nums))}; "
                "pick a reachable target (see reachable_targets)"
            )
        return Problem(
            id=f"cd-{_multiset_key(nums)}-{target}",
            question=f"nums: {' '.join(map(str, nums))}\ntarget: {target}\n",
            answer=answer_expression(nums, steps),
            reference=" ".join(map(str, steps)),
            meta={"numbers": nums, "target": int(target)},
        )

    def problem_from_row(self, row: Any) -> Problem | None:
        """The problem a logged rollout row answers, rebuilt from its ``prompt_id``
        (``cd-<sorted numbers>-<target>``, :meth:`make_problem`); None for an id of another
        form or a problem this task cannot pose (an unreachable target)."""
        match = _PROBLEM_ID.match(str(row.prompt_id))
        if match is None:
            return None
        *numbers, target = (int(x) for x in match.group(1).split("-"))
        try:
            return self.make_problem(numbers, target)
        except ValueError:
            return None

    def pool(self, split: str) -> tuple[tuple[tuple[int, ...], int], ...]:
        """Every (sorted numbers, target) pair of ``split`` in a fixed order; built on first use."""
        if split not in ("train", "eval"):
            raise ValueError(f"countdown split must be 'train' or 'eval', got {split!r}")
        if split not in self._pools:
            pairs = []
            numbers = range(1, self.max_number + 1)
            for nums in combinations_with_replacement(numbers, self.n_numbers):
                if self.split_of(nums) != split:
                    continue
                targets = reachable_targets(nums) - set(nums)
                pairs.extend((nums, t) for t in sorted(targets) if t <= self.max_target)
            self._pools[split] = tuple(pairs)
        return self._pools[split]

    def sample(self, n: int, *, split: str = "train", seed: int = 0) -> list[Problem]:
        """``n`` problems of ``split``, uniform over its (multiset, target) pool.

        Draws without replacement; past the pool's size it reshuffles and draws again, so
        problems repeat only when ``n`` exceeds the pool. Deterministic in ``seed``; a smaller
        ``n`` gives a prefix of a larger one.
        """
        if n < 0:
            raise ValueError(f"countdown sample size must be >= 0, got {n}")
        pool = self.pool(split)
        if n and not pool:
            raise ValueError(
                f"countdown {split} split is empty for {self!r}; "
                "change eval_fraction or raise max_target"
            )
        rng = random.Random(f"countdown-sample-{split}-{seed}")
        picked: list[tuple[tuple[int, ...], int]] = []
        while len(picked) < n:
            order = list(pool)
            rng.shuffle(order)
            picked.extend(order[: n - len(picked)])
        return [self.make_problem(nums, t) for nums, t in picked]

    def student_prompt(self, problem: Problem) -> str:
        """x: ``"nums: 3 7 8\\ntarget: 29\\n"``."""
        return problem.question

    def teacher_prompt(self, problem: Problem) -> str:
        """r prepended to x (paper appendix F): ``"ref: 7*3=21 21+8=29\\n" + x``."""
        return f"ref: {problem.reference}\n{self.student_prompt(problem)}"

    def reward(self, problem: Problem, response: str) -> float:
        """1.0 iff the last answer line reaches the target (module docstring, rule 2), else 0.0."""
        numbers, target = _problem_numbers(problem)
        if not isinstance(response, str):
            return 0.0
        last = next(
            (ln for ln in reversed(response.splitlines()) if _line_kind(ln) == "answer"), None
        )
        if last is None:
            return 0.0
        parsed = evaluate_expression(last.strip()[len("answer:") :])
        if parsed is None:
            return 0.0
        value, leaves = parsed
        if Counter(leaves) - Counter(numbers) or value != target:
            return 0.0
        return 1.0

    def parse_steps(self, response: str) -> list[str]:
        """The step lines of ``response`` (stripped), in order (module docstring, line kinds)."""
        return [ln.strip() for ln in response.splitlines() if _line_kind(ln) == "step"]

    def judge_steps(self, problem: Problem, response: str) -> list[bool]:
        """Exact judgement of each step of ``parse_steps(response)`` (module docstring, rule 3)."""
        return [right for _, _, _, right in _judged_steps(problem, response)]

    def first_wrong_offsets(self, problem: Problem, response: str) -> list[int]:
        """For each wrong step of ``judge_steps`` (in order), the character offset in
        ``response`` of its first wrong character: the first character at which the step's
        text, whitespace ignored, stops being a prefix of some correct step from the pool the judge
        holds there (``a op b=c`` over two distinct pool elements, c = a op b by rule 1).

        "8*3=25" with 8 and 3 in the pool points at "5" ("8*3=2" still begins "8*3=24"); a
        step on a number not in the pool points at that number's first wrong digit. A wrong step
        whose whole text begins a correct one (it stopped early, e.g. "8*3=2") points at the
        character after its last non-space one (the newline), or at the response's last
        character when the response ends there. With no correct step left in the pool it points
        at the step's first character.
        """
        offsets = []
        for start, line, pool, right in _judged_steps(problem, response):
            if right:
                continue
            keep = [i for i, ch in enumerate(line) if not ch.isspace()]
            text = "".join(line[i] for i in keep)
            values = list(pool.elements())
            prefix = 0
            for i, a in enumerate(values):
                for j, b in enumerate(values):
                    for op in _OPS if i != j else ():
                        c = apply_op(a, op, b)
                        if c is not None:
                            prefix = max(prefix, _common_prefix(text, f"{a}{op}{b}={c}"))
            if prefix < len(text):
                offsets.append(start + keep[prefix])
            else:
                offsets.append(min(start + keep[-1] + 1, len(response) - 1))
        return offsets

    def sft_examples(
        self, n: int, *, seed: int, privileged_fraction: float = 0.4,
        privileged_detour: float = _PRIVILEGED_DETOUR,
    ) -> list[tuple[str, str]]:
        """(prompt, response) pairs of solver traces from the train split (DESIGN.md section 5).

        Plain examples (prompt x): half go straight to a solution, the rest first try one or two
        failed chains (valid steps using every number, ending off target), each followed by a
        marker line, then a random solution and the answer line. Privileged examples (a share
        ``privileged_fraction``, prompt = teacher prompt): a share ``privileged_detour`` (default
        20%) try one failed chain first, the rest write r's steps then the answer. Responses
        carry no end-of-sequence token. Deterministic in ``seed``.
        """
        if not 0.0 <= privileged_fraction <= 1.0:
            raise ValueError(
                f"privileged_fraction must be in [0, 1], got {privileged_fraction}"
            )
        if not 0.0 <= privileged_detour <= 1.0:
            raise ValueError(f"privileged_detour must be in [0, 1], got {privileged_detour}")
        problems = self.sample(n, split="train", seed=seed)
        rng = random.Random(f"countdown-sft-{seed}")
        privileged = set(rng.sample(range(n), round(n * privileged_fraction)))
        examples = []
        for k, problem in enumerate(problems):
            if k in privileged:
                prompt = self.teacher_prompt(problem)
                final = _reference_steps(problem)
                n_failed = int(rng.random() < privileged_detour)
            else:
                prompt = self.student_prompt(problem)
                numbers, target = _problem_numbers(problem)
                final = _oriented(_random_solution(numbers, target, rng), rng)
                n_failed = rng.choices(range(3), weights=_PLAIN_FAILED_CHAINS)[0]
            examples.append((prompt, _trace(problem, final, n_failed, rng)))
        return examples


def _reference_steps(problem: Problem) -> list[Step]:
    """The steps of r, as written in ``problem.reference``."""
    steps = [_parse_step(text) for text in problem.reference.split()]
    if not steps or None in steps:
        raise ValueError(
            f"problem {problem.id!r} has a malformed reference {problem.reference!r}; "
            "build it with CountdownTask.make_problem"
        )
    return [s for s in steps if s is not None]


def _random_solution(numbers: Sequence[int], target: int, rng: random.Random) -> list[Step]:
    """A solution found by depth-first search in a random order (larger operand first)."""

    dead: set[tuple[int, ...]] = set()  # sorted pools with no solution

    def search(pool: list[int]) -> list[Step] | None:
        if tuple(sorted(pool)) in dead:
            return None
        moves = list(_moves(pool))
        rng.shuffle(moves)
        for i, j, step in moves:
            if step.c == target:
                return [step]
            if len(pool) > 2:
                rest = search(_after(pool, i, j, step.c))
                if rest is not None:
                    return [step, *rest]
        dead.add(tuple(sorted(pool)))
        return None

    found = search(list(numbers))
    if found is None:
        raise ValueError(f"countdown target {target} is unreachable from {list(numbers)}")
    return found


def _failed_chain(
    numbers: Sequence[int], target: int, rng: random.Random, tries: int = 20
) -> list[Step] | None:
    """Random valid steps using every number, all of whose results miss the target.

    None if no such chain turns up in ``tries`` attempts.
    """
    for _ in range(tries):
        pool = list(numbers)
        steps: list[Step] = []
        while len(pool) > 1:
            i, j, step = rng.choice(list(_moves(pool)))
            if step.c == target:
                break
            steps.append(step)
            pool = _after(pool, i, j, step.c)
        else:
            return steps
    return None


def _oriented(steps: list[Step], rng: random.Random) -> list[Step]:
    """``steps`` with the operands of each + and * in a random order."""
    return [
        Step(s.b, s.op, s.a, s.c) if s.op in "+*" and rng.random() < 0.5 else s for s in steps
    ]


def _trace(problem: Problem, final: list[Step], n_failed: int, rng: random.Random) -> str:
    """Failed chains, each closed by a marker line, then ``final`` and the answer line."""
    numbers, target = _problem_numbers(problem)
    chains = []
    for _ in range(n_failed):
        chain = _failed_chain(numbers, target, rng)
        if chain is not None:
            chains.append(_oriented(chain, rng))
    chains.append(final)
    lines: list[str] = []
    for chain, nxt in zip(chains, chains[1:]):
        lines.extend(map(str, chain))
        value = chain[-1].c
        lines.append(
            rng.choice(_MARKER_TEMPLATES).format(
                v=value,
                t=target,
                d=abs(value - target),
                rel="big" if value > target else "small",
                nxt=f"{nxt[0].a}{nxt[0].op}{nxt[0].b}",
            )
        )
    lines.extend(map(str, final))
    lines.append(f"answer: {answer_expression(numbers, final)}")
    return "\n".join(lines)
