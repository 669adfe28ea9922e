"""Sample k responses per problem and log them as rollout rows (paper section 5, appendix F).

Shared by ``dasd-probe eval`` and the trainer's held-out evaluation: generation, verifier
rewards, the task's step judge, per-token student entropy / log-prob and, optionally, the
privileged teacher's log-prob of the same tokens (r prepended, same weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from dasd.health import health_metrics, pass_k_values
from dasd.markers import count_markers
from dasd.passk import pass_at_k, per_prompt_counts
from dasd.records import rollout_frame
from dasd.rollout import Rollouts, generate
from dasd.scoring import score_rollouts
from dasd.tasks.base import Problem, Task


def sample_rollout_rows(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: Sequence[Problem],
    *,
    k: int,
    step: int,
    split: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 0.9,
    batch_size: int = 128,
    teacher: bool = True,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
    engine: Callable[..., Rollouts] = generate,
    score_batch_size: int = 32,
    truncated_reward: float | None = 0.0,
) -> pd.DataFrame:
    """``k`` samples for each problem (grouped: rows ``[i k, (i + 1) k)`` answer problem i) as
    rollout rows of the run-directory schema, with ``entropy``, ``student_logp`` and, when
    ``teacher``, ``teacher_logp`` per token. Defaults are the paper's evaluation protocol
    (temperature 1.0, top-p 0.9). ``engine`` samples (``dasd.rollout.generate`` or a
    ``dasd.rollout.build_rollout_engine`` result); ``score_batch_size`` responses go through
    each scoring forward pass (it bounds the ``(score_batch_size, T, V)`` logits). Entropies and
    log-probs are scored at the sampling ``temperature`` (1 when greedy), so they describe the
    distribution the responses were drawn from; ``truncated_reward`` is the reward of a response
    without EOS (``dasd.records.verifier_rewards``; None: the verifier decides)."""
    prompts = [task.student_prompt(p) for p in problems for _ in range(k)]
    rollouts = engine(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size,
        generator=generator,
        progress=progress,
    )
    teacher_prompts = [task.teacher_prompt(p) for p in problems for _ in range(k)] if teacher else None
    scores = score_rollouts(model, tokenizer, rollouts, teacher_prompts,
                            batch_size=score_batch_size,
                            temperature=temperature if temperature > 0 else 1.0)
    return rollout_frame(task, problems, rollouts, step=step, split=split, scores=scores,
                         truncated_reward=truncated_reward)


#: Reasoning-health keys of ``dasd.health.health_metrics`` logged as ``eval/<key>``.
HEALTH_KEYS = ("step_acc", "fes", "csr", "ey_density", "rev_rate", "dist3", "length_tokens")


def eval_metrics(rows: pd.DataFrame) -> dict[str, float]:
    """``eval/...`` metrics of one evaluation's rollout rows (k per prompt): Avg@k, Pass@k for
    k = 1, 2, 4, ..., the reasoning-health metrics (``dasd.health``), the share of responses
    with an epistemic marker, the share of truncated responses (no EOS), token-entropy mean and
    quantiles, and, when the teacher was scored,
    the mean gap delta = teacher_logp - student_logp over all tokens and over correct responses."""
    health = health_metrics(rows)
    k = health["k"]
    counts = per_prompt_counts(rows)
    n, c = counts["n"].to_numpy(), counts["c"].to_numpy()
    metrics = {f"eval/avg_at_{k}": health["avg_at_k"]}
    metrics |= {f"eval/pass_at_{j}": float(np.mean(pass_at_k(n, c, j))) for j in pass_k_values(k)}
    metrics |= {f"eval/{key}": health[key] for key in HEALTH_KEYS}
    metrics["eval/marker_rate"] = float(np.mean([count_markers(t) > 0 for t in rows["response"]]))
    if "truncated" in rows:
        metrics["eval/truncated_frac"] = float(rows["truncated"].mean())
    if "entropy" in rows:
        entropy = np.concatenate(rows["entropy"].to_list())
        metrics["eval/entropy_mean"] = float(entropy.mean())
        for q in (10, 50, 80, 90, 99):
            metrics[f"eval/entropy_q{q}"] = float(np.quantile(entropy, q / 100))
    if "teacher_logp" in rows:
        for name, part in (("delta_mean", rows), ("delta_mean_correct", rows[rows["correct"]])):
            if len(part):
                gaps = [t - s for t, s in zip(part["teacher_logp"], part["student_logp"])]
                metrics[f"eval/{name}"] = float(np.concatenate(gaps).mean())
    return metrics
