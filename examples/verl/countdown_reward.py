"""verl reward function for the Countdown recipe (``reward.custom_reward_function``): the built-in
world's exact verifier (``dasd.tasks.CountdownTask.reward``), the problem rebuilt from the row's
``extra_info`` numbers and target (examples/verl/prepare_data.py). Returns verl's dict form:
``score`` (1.0 iff the last ``answer:`` line reaches the target) and ``acc`` (a bool), which
verl's rollout dump logs and ``dasd-analyze import verl`` reads as ``correct``."""

from __future__ import annotations

from typing import Any

from dasd.tasks import CountdownTask

TASK = CountdownTask()


def compute_score(data_source: str, solution_str: str, ground_truth: str,
                  extra_info: dict[str, Any] | None = None, **_: Any) -> dict[str, float | bool]:
    """Score one response; ``extra_info`` must hold ``numbers`` and ``target``."""
    if not extra_info or "numbers" not in extra_info or "target" not in extra_info:
        raise ValueError("countdown rows need extra_info.numbers and extra_info.target; "
                         "build the data with examples/verl/prepare_data.py")
    problem = TASK.make_problem([int(x) for x in extra_info["numbers"]], int(extra_info["target"]))
    score = TASK.reward(problem, solution_str)
    return {"score": score, "acc": score > 0.5}
