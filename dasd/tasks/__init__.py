"""Tasks by name (DESIGN.md sections 2, 5 and 6): ``TASKS`` maps a name to a task class.

Each task module registers its own class in ``TASKS`` (defined in ``dasd.tasks.base``);
importing this package imports them all.

``get_task("countdown", n_numbers=4)`` builds the built-in world's task,
``get_task("math", benchmark="aime24", tokenizer=tok)`` the real-math one; every task
implements the ``Task`` protocol of ``dasd.tasks.base``. ``build_task`` builds a task for a
model, passing the model's tokenizer to tasks that take one.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from dasd.config_checks import check_value
from dasd.tasks.base import TASKS, Problem, Task
from dasd.tasks.countdown import CountdownTask
from dasd.tasks.math import MathTask

__all__ = ["TASKS", "CountdownTask", "MathTask", "Problem", "Task", "build_task", "get_task"]


def get_task(name: str, **kwargs: Any) -> Task:
    """The task registered as ``name``, built with ``kwargs``.

    An unknown name raises a ``ValueError`` that lists the valid ones.
    """
    return TASKS.get(name)(**kwargs)


def build_task(name: str, *, tokenizer: Any = None, **options: Any) -> Task:
    """The task ``name`` for a model: built with ``options``, plus the model's ``tokenizer``
    when the task's constructor takes one (its prompts then use the chat template).

    An unknown name, or an option the task does not take, raises a ``ValueError`` that lists
    the valid ones.
    """
    cls = TASKS.get(name)
    params = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = ", ".join(p for p in params if p != "tokenizer") or "none"
        raise ValueError(f"task {name!r} takes no option {', '.join(unknown)}; its options: {valid}")
    hints = typing.get_type_hints(cls.__init__)
    for key, value in options.items():
        check_value(value, hints.get(key, Any), f"task {name!r} option {key}")
    if "tokenizer" in params:
        options["tokenizer"] = tokenizer
    return cls(**options)
