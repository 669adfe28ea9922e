"""Tasks by name (DESIGN.md sections 2 and 5): ``TASKS`` maps a name to a task class.

``get_task("countdown", n_numbers=4)`` builds the built-in world's task; every task
implements the ``Task`` protocol of ``dasd.tasks.base``.
"""

from __future__ import annotations

from typing import Any

from dasd.registry import Registry
from dasd.tasks.base import Problem, Task
from dasd.tasks.countdown import CountdownTask

__all__ = ["TASKS", "CountdownTask", "Problem", "Task", "get_task"]

#: Task classes by name; each is called with keyword settings to build the task.
TASKS: Registry[type] = Registry("task")
TASKS.register("countdown")(CountdownTask)


def get_task(name: str, **kwargs: Any) -> Task:
    """The task registered as ``name``, built with ``kwargs``.

    An unknown name raises a ``ValueError`` that lists the valid ones.
    """
    return TASKS.get(name)(**kwargs)
