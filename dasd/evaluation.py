"""Sample k responses per problem and log them as rollout rows (paper section 5, appendix F).

Shared by ``dasd-probe eval`` and the trainer's held-out evaluation: generation, verifier
rewards, the task's step judge, per-token student entropy / log-prob and, optionally, the
privileged teacher's log-prob of the same tokens (r prepended, same weights). ``eval`` also
measures the mechanism statistics of ``dasd.mechanism`` (``mechanism_metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from dasd import mechanism
from dasd.health import health_metrics, pass_k_values
from dasd.markers import count_markers
from dasd.passk import pass_at_k, per_prompt_counts
from dasd.records import rollout_frame
from dasd.rollout import Rollouts, generate
from dasd.rollout.hf import encode_prompts
from dasd.scoring import score_responses, score_rollouts
from dasd.tasks.base import Problem, Task


def sample_rollout_rows(model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: Task,
                        problems: Sequence[Problem], *, k: int, step: int, split: str,
                        max_new_tokens: int, temperature: float = 1.0, top_p: float = 0.9,
                        batch_size: int = 128, teacher: bool = True,
                        generator: torch.Generator | None = None,
                        progress: Callable[[int], None] | None = None,
                        engine: Callable[..., Rollouts] = generate, score_batch_size: int = 32,
                        tail: bool = False, truncated_reward: float | None = 0.0
                        ) -> pd.DataFrame:
    """``k`` samples for each problem (grouped: rows ``[i k, (i + 1) k)`` answer problem i) as
    rollout rows of the run-directory schema, with ``entropy``, ``student_logp`` and, when
    ``teacher``, ``teacher_logp`` per token. Defaults are the paper's evaluation protocol
    (temperature 1.0, top-p 0.9). ``engine`` samples (``dasd.rollout.generate`` or a
    ``dasd.rollout.build_rollout_engine`` result); ``score_batch_size`` responses go through
    each scoring forward pass (it bounds the ``(score_batch_size, T, V)`` logits). Entropies and
    log-probs are scored at the sampling ``temperature`` (1 when greedy), so they describe the
    distribution the responses were drawn from; ``tail`` adds the per-token tail masses
    ``student_tail`` and ``teacher_tail`` (1 - max_v p); ``truncated_reward`` is the reward of a
    response without EOS (``dasd.records.verifier_rewards``; None: the verifier decides)."""
    prompts = [task.student_prompt(p) for p in problems for _ in range(k)]
    rollouts = engine(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                      temperature=temperature, top_p=top_p, batch_size=batch_size,
                      generator=generator, progress=progress)
    teacher_prompts = [task.teacher_prompt(p) for p in problems for _ in range(k)] if teacher else None
    scores = score_rollouts(model, tokenizer, rollouts, teacher_prompts,
                            batch_size=score_batch_size, tail=tail,
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


def _padded(values: Sequence[np.ndarray], width: int, dtype: type = np.float64) -> np.ndarray:
    """Per-row arrays as one ``(B, width)`` array, 0 after each row's end."""
    out = np.zeros((len(values), width), dtype=dtype)
    for i, v in enumerate(values):
        out[i, : len(v)] = v
    return out


def rescore_student_logp(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                         rows: pd.DataFrame, *, batch_size: int, position_offset: int = 0,
                         temperature: float = 1.0) -> list[np.ndarray]:
    """The student log-prob of each row's ``token_ids`` after its ``prompt``, scored again with
    ``batch_size`` responses per forward pass, ``position_offset`` added to the position ids
    (``dasd.scoring.response_logits``) and at ``temperature`` (the first scoring's); float32,
    one array per row."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, list(rows["prompt"]))
    lengths = np.array(rows["n_tokens"], dtype=np.int64)
    width = max(int(lengths.max()), 1)
    ids = torch.from_numpy(_padded(list(rows["token_ids"]), width, np.int64))
    mask = torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]
    scores = score_responses(model, ids, mask, prompt_ids, prompt_mask, batch_size=batch_size,
                             position_offset=position_offset, temperature=temperature)
    logp = scores.student_logp.numpy()
    return [logp[i, :n] for i, n in enumerate(lengths)]


def wrong_step_tokens(task: Task, problems: Sequence[Problem], rows: pd.DataFrame,
                      tokenizer: PreTrainedTokenizerBase) -> tuple[np.ndarray, np.ndarray] | None:
    """(row, token) positions of the first wrong token of every wrong step of ``rows``, or None
    when ``task`` has no ``first_wrong_offsets`` (its step judge does not locate errors).

    A character offset is mapped to the token whose decoded piece holds it: each token id is
    decoded alone and the pieces are laid end to end. Rows whose pieces do not spell the
    response (a tokenizer whose pieces split characters, e.g. byte-level BPE on non-ASCII text)
    are skipped.
    """
    locate = getattr(task, "first_wrong_offsets", None)
    if locate is None:
        return None
    by_id = {p.id: p for p in problems}
    pieces: dict[int, str] = {}
    found_rows, found_cols = [], []
    for i, row in enumerate(rows.itertuples(index=False)):
        offsets = locate(by_id[row.prompt_id], row.response)
        if not offsets:
            continue
        ids = [int(t) for t in row.token_ids]
        new = sorted(set(ids) - pieces.keys())
        pieces.update(zip(new, tokenizer.batch_decode([[t] for t in new],
                                                      skip_special_tokens=False)))
        ends = np.cumsum([len(pieces[t]) for t in ids])
        if not "".join(pieces[t] for t in ids).startswith(row.response):
            continue
        found_rows.extend([i] * len(offsets))
        found_cols.extend(np.searchsorted(ends, offsets, side="right"))
    return np.asarray(found_rows, dtype=np.int64), np.asarray(found_cols, dtype=np.int64)


def mechanism_metrics(rows: pd.DataFrame, *, floor_rows: Sequence[int] = (),
                      floor_logp: Sequence[np.ndarray] = (),
                      shift_logp: Sequence[np.ndarray] = (),
                      wrong: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """``mechanism/...`` metrics (``dasd.mechanism``) of one evaluation's rollout rows.

    Args:
        rows: rollout rows with ``entropy`` and ``student_logp``; ``teacher_logp`` gives the
            |delta| deciles, ``student_tail`` and ``teacher_tail`` the tail ratio.
        floor_rows: positions in ``rows`` scored again (:func:`measure_mechanism`).
        floor_logp: their student log-probs from a second scoring with another batch
            composition and padding: the round-off floor is its difference to ``student_logp``.
        shift_logp: their student log-probs from a third scoring as the second but with the
            positions shifted: the shift floor is its difference to ``floor_logp``.
        wrong: ``wrong_step_tokens`` positions; None (no step locator) gives NaN.

    Keys: ``entropy_edge_d1..9`` (inner decile edges, nats); ``{delta,floor,shift}_abs_
    {median,mean}_d1..10`` (|delta_t| and the two floors' |Delta log p| per decile, NaN where
    not measured); ``floor_tokens``; ``tail_{ratio,ratio_median,sharper_share,student,
    teacher}_low`` (``dasd.mechanism.TailStats``); ``wrong_step_low_share`` and ``wrong_steps``;
    ``entropy_share_below_0.01``.
    """
    lengths = np.array(rows["n_tokens"], dtype=np.int64)
    width = max(int(lengths.max()), 1) if len(rows) else 1
    mask = np.arange(width)[None, :] < lengths[:, None]
    entropy = _padded(list(rows["entropy"]), width)
    edges = mechanism.decile_edges(entropy, mask)
    out = {f"mechanism/entropy_edge_d{k + 1}": float(e) for k, e in enumerate(edges)}
    student = _padded(list(rows["student_logp"]), width)
    gaps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "teacher_logp" in rows:
        gaps["delta"] = (_padded(list(rows["teacher_logp"]), width) - student, mask)
    floor_rows = np.asarray(floor_rows, dtype=np.int64)
    scored = np.zeros_like(mask)
    scored[floor_rows] = mask[floor_rows]
    if len(floor_logp):
        again = student.copy()
        again[floor_rows] = _padded(list(floor_logp), width)
        gaps["floor"] = (again - student, scored)
        if len(shift_logp):
            shifted = again.copy()
            shifted[floor_rows] = _padded(list(shift_logp), width)
            gaps["shift"] = (shifted - again, scored)
    out["mechanism/floor_tokens"] = int(scored.sum())
    for name in ("delta", "floor", "shift"):
        median = mean = np.full(10, np.nan)
        if name in gaps:
            median, mean, _ = mechanism.by_entropy_decile(gaps[name][0], entropy, gaps[name][1],
                                                          edges)
        for k in range(10):
            out[f"mechanism/{name}_abs_median_d{k + 1}"] = float(median[k])
            out[f"mechanism/{name}_abs_mean_d{k + 1}"] = float(mean[k])
    tails = mechanism.TailStats(*(np.nan,) * 5)
    if {"student_tail", "teacher_tail"} <= set(rows.columns):
        tails = mechanism.tail_mass_ratio(_padded(list(rows["student_tail"]), width),
                                          _padded(list(rows["teacher_tail"]), width),
                                          entropy, mask)
    for key, value in zip(("ratio", "ratio_median", "sharper_share", "student", "teacher"),
                          tails):
        out[f"mechanism/tail_{key}_low"] = float(value)
    share, n_wrong = np.nan, 0
    if wrong is not None:
        share, n_wrong = mechanism.low_entropy_error_share(entropy, mask, *wrong)
    out["mechanism/wrong_step_low_share"] = float(share)
    out["mechanism/wrong_steps"] = n_wrong
    threshold = mechanism.REFERENCE_LOW_ENTROPY_NATS
    out[f"mechanism/entropy_share_below_{threshold:g}"] = mechanism.share_below(entropy, mask,
                                                                                threshold)
    return out


def measure_mechanism(model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: Task,
                      problems: Sequence[Problem], rows: pd.DataFrame, *,
                      floor_responses: int, score_batch_size: int, temperature: float = 1.0
                      ) -> dict[str, float]:
    """:func:`mechanism_metrics` of ``rows`` (sampled by :func:`sample_rollout_rows` with
    ``tail=True`` at ``temperature``), with ``floor_responses`` rows, evenly spaced, scored twice
    more at the same temperature.

    1. The round-off floor: the same tokens at the same positions, scored with another batch
       composition and padding: each response alone (no padding at all) where the first pass
       put ``score_batch_size > 1`` responses in a micro-batch (left-padded to its longest
       prompt, right-padded to its longest response), else all of them in one micro-batch.
    2. The shift floor: as 1, with every position id shifted by the teacher prompt's extra
       length (median over the rows, in tokens), where the teacher scores the response. With
       rotary positions this changes nothing in exact arithmetic, so it is the part of
       delta_t that the teacher's longer context causes through rounding alone.
    """
    picked = np.unique(np.linspace(0, len(rows) - 1, min(floor_responses, len(rows))).round()
                       .astype(np.int64))
    floor_logp = shift_logp = []
    if len(picked):
        part = rows.iloc[picked]
        batch = 1 if score_batch_size > 1 else len(picked)
        scale = temperature if temperature > 0 else 1.0
        floor_logp = rescore_student_logp(model, tokenizer, part, batch_size=batch,
                                          temperature=scale)
        by_id = {p.id: p for p in problems}
        extra = [len(tokenizer(task.teacher_prompt(by_id[i]))["input_ids"])
                 - len(tokenizer(task.student_prompt(by_id[i]))["input_ids"])
                 for i in part["prompt_id"]]
        shift_logp = rescore_student_logp(model, tokenizer, part, batch_size=batch,
                                          position_offset=int(np.median(extra)),
                                          temperature=scale)
    return mechanism_metrics(rows, floor_rows=picked, floor_logp=floor_logp,
                             shift_logp=shift_logp,
                             wrong=wrong_step_tokens(task, problems, rows, tokenizer))
