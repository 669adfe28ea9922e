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


def verifier_rewards(
    task: Task,
    problems: Sequence[Problem],
    rollouts: Rollouts,
    *,
    truncated_reward: float | None = None,
) -> np.ndarray:
    """``(N,)`` float64 verifier rewards of ``rollouts`` (row ``i`` answers
    ``problems[i // k]``, ``k = N // len(problems)``).

    ``truncated_reward``: the reward of a truncated response (no EOS within the token limit,
    ``~rollouts.finished``), given without asking the verifier; the trainer's and the
    evaluation's default is 0, since the paper's verifier never sees an answer in a response
    cut off mid-reasoning (a thinking model's answer comes after ``</think>``). None: the
    verifier scores truncated responses like any other.
    """
    n = len(rollouts.responses)
    if not problems or n % len(problems):
        raise ValueError(
            f"{n} responses cannot be split evenly over {len(problems)} problems; "
            "pass the problems in the order their prompts were repeated"
        )
    k = n // len(problems)
    finished = rollouts.finished.tolist()
    return np.asarray([
        float(truncated_reward) if truncated_reward is not None and not finished[i]
        else float(task.reward(problems[i // k], response))
        for i, response in enumerate(rollouts.responses)
    ], dtype=np.float64)


def rollout_frame(
    task: Task,
    problems: Sequence[Problem],
    rollouts: Rollouts,
    *,
    step: int,
    split: str,
    scores: TokenScores | None = None,
    token_columns: Mapping[str, torch.Tensor] | None = None,
    truncated_reward: float | None = None,
) -> pd.DataFrame:
    """Rows for ``rollouts``, whose responses are grouped by problem: row ``i`` answers
    ``problems[i // k]`` as sample ``i % k`` with ``k = len(rollouts.responses) // len(problems)``.

    ``scores`` adds ``entropy``, ``student_logp``, ``teacher_logp`` (and ``student_tail``,
    ``teacher_tail`` when scored with ``tail=True``); ``token_columns`` adds further
    ``(N, T)`` per-token columns (e.g. ``omega``, ``advantage``). ``step_correct`` comes from the
    task's step judge; ``truncated`` marks responses without EOS, rewarded as
    ``verifier_rewards`` says with ``truncated_reward``.
    """
    rewards = verifier_rewards(task, problems, rollouts, truncated_reward=truncated_reward)
    n = len(rollouts.responses)
    k = n // len(problems)
    lengths = rollouts.response_mask.sum(dim=1).cpu().numpy()
    step_correct = [np.asarray(task.judge_steps(problems[i // k], response), dtype=bool)
                    for i, response in enumerate(rollouts.responses)]
    frame = pd.DataFrame(
        {
            "step": np.full(n, step, dtype=np.int64),
            "split": [split] * n,
            "prompt_id": [problems[i // k].id for i in range(n)],
            "sample_idx": np.arange(n, dtype=np.int32) % k,
            "prompt": list(rollouts.prompts),
            "response": list(rollouts.responses),
            "answer": [problems[i // k].answer for i in range(n)],
            "reward": rewards,
            "correct": rewards > 0.5,
            "truncated": ~rollouts.finished.cpu().numpy(),
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
