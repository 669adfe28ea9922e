"""The ``Task`` protocol every task implements (built-in Countdown world, real math).

A task supplies everything a probe needs besides the model (DESIGN.md sections 5-6):
seeded prompts with stable ids, the student prompt x, the privileged-teacher prompt (the
reference solution r prepended to x, paper appendix F), a verifier reward, and a step
parser plus step judge for StepAcc / FES / CSR (paper appendix F).

``TASKS`` lives here, beside the protocol, so that each task module registers its class
(``@TASKS.register("countdown")``) without importing the package that lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from dasd.registry import Registry


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


#: Task classes by name; each is called with keyword settings to build the task.
TASKS: Registry[type] = Registry("task")


@runtime_checkable
class Task(Protocol):
    """What a task must provide. Implementations register themselves in :data:`TASKS`; one
    that subclasses ``Task`` inherits the default :meth:`problem_from_row`."""

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

    def problem_from_row(self, row: Any) -> Problem | None:
        """The problem a logged rollout row (DESIGN.md section 4; read by attribute, e.g. from
        ``DataFrame.itertuples``) answers, so that ``judge_steps`` can score rows logged
        without ``step_correct`` (paper appendix F); None when it cannot be rebuilt. This
        default rebuilds nothing: a task that can overrides it (:func:`rebuilds_problems`)."""
        return None


def rebuilds_problems(task_cls: type) -> bool:
    """Whether ``task_cls`` can rebuild problems from logged rows: it defines its own
    ``problem_from_row`` rather than inheriting :meth:`Task.problem_from_row`."""
    method = getattr(task_cls, "problem_from_row", None)
    return method is not None and method is not Task.problem_from_row
