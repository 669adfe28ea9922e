"""Rollouts + scores + verifier rewards -> rollout rows of the run-directory schema (DESIGN.md s.4).

One row per response. Per-token list columns are trimmed to the response's valid tokens, so a
reader never sees padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from dasd.rollout import Rollouts
from dasd.scoring import TokenScores
from dasd.tasks.base import Problem, Task


def _rows_as_lists(values: torch.Tensor, lengths: np.ndarray, dtype: type) -> list[np.ndarray]:
    arr = values.detach().cpu().numpy()
    return [arr[i, :n].astype(dtype) for i, n in enumerate(lengths)]


def rollout_frame(
    task: Task,
    problems: Sequence[Problem],
    rollouts: Rollouts,
    *,
    step: int,
    split: str,
    scores: TokenScores | None = None,
    token_columns: Mapping[str, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Rows for ``rollouts``, whose responses are grouped by problem: row ``i`` answers
    ``problems[i // k]`` as sample ``i % k`` with ``k = len(rollouts.responses) // len(problems)``.

    ``scores`` adds ``entropy``, ``student_logp``, ``teacher_logp`` (and ``student_tail``,
    ``teacher_tail`` when scored with ``tail=True``); ``token_columns`` adds further
    ``(N, T)`` per-token columns (e.g. ``omega``, ``advantage``). ``step_correct`` comes from the
    task's step judge.
    """
    n = len(rollouts.responses)
    if not problems or n % len(problems):
        raise ValueError(
            f"{n} responses cannot be split evenly over {len(problems)} problems; "
            "pass the problems in the order their prompts were repeated"
        )
    k = n // len(problems)
    lengths = rollouts.response_mask.sum(dim=1).cpu().numpy()
    rewards = []
    step_correct = []
    for i, response in enumerate(rollouts.responses):
        problem = problems[i // k]
        rewards.append(float(task.reward(problem, response)))
        step_correct.append(np.asarray(task.judge_steps(problem, response), dtype=bool))
    frame = pd.DataFrame(
        {
            "step": np.full(n, step, dtype=np.int64),
            "split": [split] * n,
            "prompt_id": [problems[i // k].id for i in range(n)],
            "sample_idx": np.arange(n, dtype=np.int32) % k,
            "prompt": list(rollouts.prompts),
            "response": list(rollouts.responses),
            "answer": [problems[i // k].answer for i in range(n)],
            "reward": np.asarray(rewards, dtype=np.float64),
            "correct": np.asarray(rewards) > 0.5,
            "n_tokens": lengths.astype(np.int32),
            "token_ids": _rows_as_lists(rollouts.response_ids, lengths, np.int32),
            "step_correct": step_correct,
        }
    )
    columns: dict[str, torch.Tensor] = {}
    if scores is not None:
        columns["entropy"] = scores.entropy
        columns["student_logp"] = scores.student_logp
        if scores.teacher_logp is not None:
            columns["teacher_logp"] = scores.teacher_logp
        for name in ("student_tail", "teacher_tail"):
            if getattr(scores, name) is not None:
                columns[name] = getattr(scores, name)
    columns.update(token_columns or {})
    for name, values in columns.items():
        frame[name] = _rows_as_lists(values, lengths, np.float32)
    return frame
