"""The ``Task`` protocol every task implements (built-in Countdown world, real math).

A task supplies everything a probe needs besides the model (DESIGN.md sections 5-6):
seeded prompts with stable ids, the student prompt x, the privileged-teacher prompt (the
reference solution r prepended to x, paper appendix F), a verifier reward, and a step
parser plus step judge for StepAcc / FES / CSR (paper appendix F).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Problem:
    """One prompt of a task.

    ``reference`` is the verified solution r shown only to the privileged teacher;
    ``answer`` is the gold final answer as text; ``meta`` holds task-specific fields
    (e.g. Countdown's numbers and target).
    """

    id: str
    question: str
    answer: str
    reference: str
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """What a task must provide. Implementations are registered in ``dasd.tasks.TASKS``."""

    name: str

    def sample(self, n: int, *, split: str = "train", seed: int = 0) -> list[Problem]:
        """``n`` problems of ``split`` ("train" or "eval"), deterministic in ``seed``."""
        ...

    def student_prompt(self, problem: Problem) -> str:
        """The prompt x the student sees (never contains r)."""
        ...

    def teacher_prompt(self, problem: Problem) -> str:
        """The privileged prompt: r prepended to x (paper appendix F)."""
        ...

    def reward(self, problem: Problem, response: str) -> float:
        """Verifier reward in {0, 1}; malformed or truncated responses score 0, never raise."""
        ...

    def parse_steps(self, response: str) -> list[str]:
        """The response's reasoning steps, in order (may be empty)."""
        ...

    def judge_steps(self, problem: Problem, response: str) -> list[bool]:
        """Correctness of each step of ``parse_steps(response)``, same length and order."""
        ...
