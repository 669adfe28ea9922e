"""`dasd-probe prefix-intervene`: Probe 3, inference-time prefix interventions (paper section 3
"Probe 3", Table 1; appendix A.3).

For each held-out problem, ``k`` unmodified student rollouts and, for each bucket (low-H_t,
high-H_t, random) and each interventional distribution (Conformity: the privileged teacher q_t;
Novelty: ∝ p_t / q_t^α), ``k`` rollouts of the lockstep decoder (``dasd.rollout.lockstep``)
that draw o_t from that distribution at the bucket's positions and from the student elsewhere. Table 1 reports, per cell, the % change of StepAcc and E(y) against
the unmodified rollouts of the same prompts, with bootstrap confidence intervals.

Departures and choices:

1. The default model and task are the built-in world (tiny model, Countdown, exact step judge),
   not Qwen3-1.7B on AIME24 with a ProcessBench-scored judge.
2. Bucketing uses the online running median of the entropies seen so far, after a burn-in; by
   default every in-bucket position is intervened (``positions="every"``; ``"first"`` gives
   appendix A.3's single token). See ``dasd.rollout.lockstep``, departures 1-2.
3. Random control: each position after the burn-in is intervened with probability ``rate``,
   where ``rate`` is the realized in-bucket rate of the low and high runs of the same call
   (in-bucket positions / positions after the burn-in, pooled over both buckets and both modes),
   or ``random_rate`` when given, or 0.5 when the random bucket runs alone.
4. Pairing: every condition, the unmodified one included, runs through the lockstep decoder
   with the same prompts, micro-batches and ``pairing_seed = seed``
   (``dasd.rollout.lockstep``, departure 4), so an intervened rollout equals the unmodified
   rollout of the same (prompt, sample) up to its first intervened position, and the random
   bucket's coins are shared by its Conformity and Novelty runs. The unmodified condition is
   the decoder without intervention (tests show it reproduces ``dasd.rollout.generate`` when
   both draw from one generator stream).
5. Metrics as ``dasd-analyze health`` computes them (``analysis.health``): StepAcc is the mean
   over responses with at least one step of (correct steps / steps); E(y) is the mean marker
   density per 1,000 words. Δ = 100 (metric_intervened / metric_unmodified − 1); its CI is the
   percentile interval of a paired bootstrap over prompts (the same resampled prompts for both
   conditions, all their samples), ``n_boot`` resamples.
6. Token columns (``entropy``, ``student_logp``, ``teacher_logp``) of every condition are the
   decoder's, at the sampling temperature (``dasd-probe eval`` scores at temperature 1).

Outputs (run directory, kind ``probe:prefix-intervene``): ``rollouts/step-000000-eval.parquet``
(the unmodified rollouts), ``interventions.parquet`` (one row per intervened response, rewritten
atomically after each condition so a killed run keeps its finished conditions) and
``summary.json`` (Table 1 cells with CIs, per-condition statistics, the random rate used).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dasd.health import response_health
from analysis.paper import TABLE1_BUCKETS, TABLE1_METRICS, TABLE1_MODES, paper_value
from analysis.stats import paired_relative_change, per_prompt_sums
from dasd.config_checks import check_fields
from dasd.models import load_model, resolve_device
from dasd.records import rollout_frame
from dasd.rollout.lockstep import (
    BUCKETS,
    POSITIONS,
    Intervention,
    LockstepRollouts,
    lockstep_generate,
)
from dasd.runlog import create_run
from dasd.tasks import build_task
from figures.terminal import SECTION, Terminal, cell
from probes.config_bases import BootstrapConfig, SamplingConfig
from probes.registry import register_probe

__all__ = ["BUCKET_ORDER", "METRICS", "MODES", "PAPER_TABLE1", "PrefixInterveneConfig",
           "eligible_positions", "response_scores", "run_prefix_intervene"]

#: Table 1's rows (buckets), columns (modes) and metrics, in the paper's order.
BUCKET_ORDER = ("low", "high", "random")
MODES = ("conformity", "novelty")
METRICS = ("step_acc", "ey_density")

#: The paper's Table 1 (% change vs unmodified rollouts; Qwen3-1.7B, AIME24), keyed
#: (bucket, metric, mode), from ``analysis.paper``.
PAPER_TABLE1: dict[tuple[str, str, str], float] = {
    (bucket, metric, mode): paper_value("Table 1", TABLE1_METRICS[metric], TABLE1_MODES[mode],
                                        section=TABLE1_BUCKETS[bucket])
    for bucket in BUCKET_ORDER for metric in METRICS for mode in MODES
}


@dataclass(frozen=True)
class PrefixInterveneConfig(BootstrapConfig, SamplingConfig):
    """Settings of one prefix-intervention probe; written into the run's manifest."""

    model: str = "tiny"
    """``tiny``, a local checkpoint directory, or a hub name."""
    task: str = "countdown"
    """A registered task name."""
    benchmark: str = ""
    """The task's benchmark where it has several; empty: the task's default."""
    bucket: str = "all"
    """``low``, ``high``, ``random``, or ``all`` (the three)."""
    alpha: float = 0.5
    """Novelty exponent α (paper: 0.5)."""
    burn_in: int = 8
    """Response positions never intervened at the start (their entropies seed the median)."""
    positions: str = "every"
    """``every`` in-bucket position, or only the ``first`` one (appendix A.3's single token)."""
    random_rate: float | None = None
    """The random control's per-position rate; None: the realized low/high rate (or 0.5)."""
    n_prompts: int = 64
    """Held-out problems."""
    k: int = 4
    """Samples per problem in every condition."""
    seed: int = 0
    """Seed of the problems, sampling (shared by all conditions) and bootstrap."""
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu`` or ``cuda``: where the model runs."""

    def __post_init__(self) -> None:
        check_fields(self)
        resolve_device(self.device)
        if self.bucket != "all" and self.bucket not in BUCKETS:
            raise ValueError(f"unknown bucket {self.bucket!r}; valid: all, {', '.join(BUCKETS)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; valid: {', '.join(POSITIONS)}")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if self.random_rate is not None and not 0 <= self.random_rate <= 1:
            raise ValueError(f"random_rate must be in [0, 1], got {self.random_rate}")
        for name in ("n_prompts", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {self.burn_in}")
        self.check_sampling()
        self.check_bootstrap()

    @property
    def buckets(self) -> tuple[str, ...]:
        """The buckets to run, in Table 1's order."""
        return BUCKET_ORDER if self.bucket == "all" else (self.bucket,)


# --------------------------------------------------------------------------- pure statistics


def response_scores(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-response ``n_steps``, ``step_acc`` (correct / steps; NaN without steps) and
    ``ey_density`` (``analysis.health``) of rollout rows with ``response`` and
    ``step_correct``, in row order."""
    n_steps = np.array([len(s) for s in rows["step_correct"]], dtype=np.int64)
    n_right = np.array([int(np.sum(s)) for s in rows["step_correct"]], dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        step_acc = np.where(n_steps > 0, n_right / np.maximum(n_steps, 1), np.nan)
    return pd.DataFrame({
        "n_steps": n_steps.astype(np.int32),
        "step_acc": step_acc,
        "ey_density": response_health(rows["response"].tolist())["ey_density"].to_numpy(),
    })


def eligible_positions(n_tokens: np.ndarray, burn_in: int) -> np.ndarray:
    """Positions of each response that could be intervened: ``max(n_tokens − burn_in, 0)``."""
    return np.maximum(np.asarray(n_tokens, dtype=np.int64) - burn_in, 0)


# --------------------------------------------------------------------------- orchestration


def _rows(task: Any, problems: Sequence[Any], decoded: LockstepRollouts) -> pd.DataFrame:
    """Rollout rows (run-directory schema) of a lockstep decode, with its token columns."""
    return rollout_frame(
        task, problems, decoded.rollouts, step=0, split="eval",
        token_columns={
            "entropy": decoded.entropy,
            "student_logp": decoded.rollouts.logprobs,
            "teacher_logp": decoded.teacher_logp,
        },
    )


def _intervention_rows(task: Any, problems: Sequence[Any], decoded: LockstepRollouts, *,
                       bucket: str, mode: str, burn_in: int) -> pd.DataFrame:
    """Rows of ``interventions.parquet`` for one condition's lockstep decode."""
    frame = _rows(task, problems, decoded)
    frame.insert(0, "mode", mode)
    frame.insert(0, "bucket", bucket)
    frame["positions"] = [row.nonzero().flatten().numpy().astype(np.int32)
                          for row in decoded.intervened]
    frame["n_intervened"] = decoded.intervened.sum(-1).numpy().astype(np.int32)
    frame["n_in_bucket"] = decoded.in_bucket.sum(-1).numpy().astype(np.int32)
    frame["n_eligible"] = eligible_positions(frame["n_tokens"].to_numpy(), burn_in).astype(np.int32)
    return pd.concat([frame, response_scores(frame)], axis=1)


def _outcome_stats(rows: pd.DataFrame) -> dict[str, float]:
    """Absolute metrics of one condition's rows (with ``response_scores`` columns)."""
    has_steps = rows["step_acc"].notna()
    return {
        "n_responses": len(rows),
        "avg_correct": float(rows["correct"].mean()),
        "step_acc": float(rows["step_acc"][has_steps].mean()) if has_steps.any() else math.nan,
        "ey_density": float(rows["ey_density"].mean()),
        "length_tokens": float(rows["n_tokens"].mean()),
    }


def _intervention_stats(rows: pd.DataFrame) -> dict[str, float]:
    """How much one condition intervened: per response and per eligible position."""
    eligible = int(rows["n_eligible"].sum())
    return {
        "intervened_per_response": float(rows["n_intervened"].mean()),
        "intervention_rate": float(rows["n_intervened"].sum() / eligible) if eligible else math.nan,
        "in_bucket_rate": float(rows["n_in_bucket"].sum() / eligible) if eligible else math.nan,
    }


def _random_rate(cfg: PrefixInterveneConfig, done: list[pd.DataFrame]) -> tuple[float, str]:
    """The random control's rate and where it came from (module docstring, departure 3)."""
    if cfg.random_rate is not None:
        return cfg.random_rate, "random_rate option"
    entropy_rows = [r for r in done if r["bucket"].iloc[0] in ("low", "high")]
    if entropy_rows:
        both = pd.concat(entropy_rows)
        eligible = int(both["n_eligible"].sum())
        if eligible:
            return float(both["n_in_bucket"].sum() / eligible), "realized low/high in-bucket rate"
    return 0.5, "default (no low/high run to match)"


def run_prefix_intervene(
    cfg: PrefixInterveneConfig,
    run_dir: Path,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run Probe 3 with ``cfg`` and log everything to ``run_dir`` (module docstring).

    ``progress`` is called with the number of responses sampled after each generation batch
    (``n_prompts * k * (1 + 2 * len(cfg.buckets))`` in all). Returns the summary written to
    ``summary.json``.
    """
    model, tokenizer = load_model(cfg.model, device=resolve_device(cfg.device))
    options = {"benchmark": cfg.benchmark} if cfg.benchmark else {}
    task = build_task(cfg.task, tokenizer=tokenizer, **options)
    problems = task.sample(cfg.n_prompts, split="eval", seed=cfg.seed)
    prompts = [task.student_prompt(p) for p in problems for _ in range(cfg.k)]
    teacher_prompts = [task.teacher_prompt(p) for p in problems for _ in range(cfg.k)]
    order = [p.id for p in problems]
    task_config = task.describe() if hasattr(task, "describe") else {"repr": repr(task)}
    sampling = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                "top_p": cfg.top_p, "batch_size": cfg.generation_batch_size}
    config = {**asdict(cfg), "task_config": task_config}
    with create_run(run_dir, kind="probe:prefix-intervene", config=config, seed=cfg.seed,
                    model=cfg.model, task=cfg.task) as run:
        unmodified = lockstep_generate(model, tokenizer, prompts, teacher_prompts,
                                       pairing_seed=cfg.seed, progress=progress, **sampling)
        base = _rows(task, problems, unmodified)
        run.write_rollouts(0, "eval", base)
        base = pd.concat([base, response_scores(base)], axis=1)
        conditions: list[pd.DataFrame] = []
        rate = None
        for bucket in cfg.buckets:
            if bucket == "random":
                rate, rate_source = _random_rate(cfg, conditions)
            for mode in MODES:
                intervention = Intervention(
                    bucket=bucket, mode=mode, alpha=cfg.alpha, burn_in=cfg.burn_in,
                    positions=cfg.positions, **({"rate": rate} if bucket == "random" else {}),
                )
                decoded = lockstep_generate(
                    model, tokenizer, prompts, teacher_prompts, intervention=intervention,
                    pairing_seed=cfg.seed, progress=progress, **sampling,
                )
                conditions.append(_intervention_rows(task, problems, decoded, bucket=bucket,
                                                     mode=mode, burn_in=cfg.burn_in))
                run.write_table("interventions", pd.concat(conditions, ignore_index=True))
        cells = []
        for rows in conditions:
            bucket, mode = rows["bucket"].iloc[0], rows["mode"].iloc[0]
            for metric in METRICS:
                change = paired_relative_change(
                    per_prompt_sums(base["prompt_id"], base[metric].to_numpy(), order),
                    per_prompt_sums(rows["prompt_id"], rows[metric].to_numpy(), order),
                    n_boot=cfg.n_boot, level=cfg.level, seed=cfg.seed,
                )
                cells.append({"bucket": bucket, "metric": metric, "mode": mode, **change,
                              "paper_delta_pct": PAPER_TABLE1[(bucket, metric, mode)]})
        summary = {
            "table": "Table 1: prefix interventions (% change vs unmodified rollouts)",
            "n_prompts": len(problems),
            "k": cfg.k,
            "ci": {"level": cfg.level, "n_boot": cfg.n_boot, "resampled": "prompts (paired)"},
            "random_rate": None if rate is None else {"value": rate, "source": rate_source},
            "unmodified": _outcome_stats(base),
            "conditions": [{"bucket": r["bucket"].iloc[0], "mode": r["mode"].iloc[0],
                            **_outcome_stats(r), **_intervention_stats(r)} for r in conditions],
            "cells": cells,
        }
        run.write_json("summary", summary)
    return summary


def _run(cfg: PrefixInterveneConfig, run_dir: Path, terminal: Terminal) -> dict[str, Any]:
    """Probe 3 (Table 1): inference-time prefix interventions. The student and the privileged
    teacher are decoded in lockstep; in the chosen entropy bucket the token comes from the
    teacher (Conformity) or from p / q^alpha (Novelty), elsewhere from the student. Reports
    the % change of StepAcc and E(y) vs unmodified rollouts of the same prompts and seeds."""
    total = cfg.n_prompts * cfg.k * (1 + 2 * len(cfg.buckets))
    with terminal.bar(f"sampling {total} responses", total) as step:
        return run_prefix_intervene(cfg, run_dir, progress=step)


def _show(cfg: PrefixInterveneConfig, summary: dict[str, Any], run_dir: Path,
          terminal: Terminal) -> None:
    """Table 1 with the paper's numbers beside ours, then the unmodified rollouts' metrics."""
    labels = {**TABLE1_BUCKETS, **TABLE1_METRICS}
    cells = {(c["bucket"], c["metric"], c["mode"]): c for c in summary["cells"]}
    rows: list[Sequence[str]] = []
    for bucket in cfg.buckets:
        rows.append([labels[bucket], "", "", "", ""])
        for metric in ("step_acc", "ey_density"):
            ours = [cells[(bucket, metric, mode)] for mode in ("conformity", "novelty")]
            rows.append([
                f"  {labels[metric]}",
                *(f"{c['delta_pct']:+.1f}% [{c['ci_low']:+.1f}, {c['ci_high']:+.1f}]"
                  if c["delta_pct"] == c["delta_pct"] else "–" for c in ours),
                *(f"{c['paper_delta_pct']:+.1f}%" for c in ours),
            ])
        rows.append(SECTION)
    terminal.table(f"Table 1: prefix interventions, % change vs unmodified rollouts "
                   f"[{summary['ci']['level']:.0%} CI], {cfg.n_prompts} prompts x {cfg.k}",
                   ["bucket / metric", "Conformity", "Novelty", "paper C", "paper N"], rows)
    base = summary["unmodified"]
    terminal.line(f"unmodified: StepAcc {cell(base['step_acc'])}, E(y) "
                  f"{cell(base['ey_density'], '.2f')} per 1k words, accuracy "
                  f"{cell(base['avg_correct'])}")
    if summary["random_rate"] is not None:
        terminal.line(f"random control rate: {summary['random_rate']['value']:.3f} "
                      f"({summary['random_rate']['source']})")
    terminal.line(f"run directory: {run_dir}")


register_probe("prefix-intervene", options=PrefixInterveneConfig, run=_run, show=_show)
