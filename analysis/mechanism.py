"""The mechanism statistics an eval run logged (``mechanism/`` keys of ``dasd.evaluation.
mechanism_metrics``), as two tables for `dasd-analyze health` and the HTML report.

1. ``summary``: one row per run: the teacher/student tail-mass ratio on low-entropy tokens (a
   ratio of means; the median per-token ratio; the share where the teacher is sharper) with
   the two means, the share of wrong steps whose first wrong token is below its trajectory's
   median entropy, and the entropy profile (share below 0.01 nats, median, 80th percentile)
   beside the published Qwen3-8B chain-of-thought statistics (``dasd.mechanism.REFERENCE_*``).
2. ``deciles``: one row per (run, student-entropy decile): its upper edge, median and mean
   |delta_t| and, beside them, the round-off floor (the same tokens scored again in another
   batch) and the shift floor (scored again with positions shifted by the teacher prompt's
   extra length; ``dasd.evaluation.measure_mechanism``).

Each run contributes the last eval line of its metrics.jsonl that holds ``mechanism/`` keys;
runs without one (older evals, train runs, imported logs) contribute nothing, so both tables
are empty for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from dasd.mechanism import (
    REFERENCE_CITATION,
    REFERENCE_LOW_ENTROPY_NATS,
    REFERENCE_LOW_ENTROPY_SHARE,
    REFERENCE_Q80_NATS,
)

__all__ = ["DECILE_COLUMNS", "LOW_SHARE", "SUMMARY_COLUMNS", "latest_mechanism",
           "mechanism_tables"]

#: The summary's column of the share of tokens below the reference's low-entropy threshold.
LOW_SHARE = f"share_h_below_{REFERENCE_LOW_ENTROPY_NATS:g}"
SUMMARY_COLUMNS = ("run", "tail_ratio_low", "tail_ratio_median_low", "tail_sharper_share_low",
                   "tail_student_low", "tail_teacher_low", "wrong_step_low_share",
                   "wrong_steps", LOW_SHARE, "h_q50", "h_q80")
DECILE_COLUMNS = ("run", "decile", "h_upper", "delta_abs_median", "floor_abs_median",
                  "shift_abs_median", "delta_abs_mean", "floor_abs_mean", "shift_abs_mean")


def latest_mechanism(metrics: pd.DataFrame) -> dict[str, float] | None:
    """The last eval line of a metrics frame (``dasd.runlog.read_metrics``) holding
    ``mechanism/`` keys, with its ``eval/`` keys; None if there is none."""
    keys = [c for c in metrics.columns if str(c).startswith("mechanism/")]
    if not keys or "split" not in metrics.columns:
        return None
    lines = metrics[(metrics["split"] == "eval") & metrics[keys].notna().any(axis=1)]
    if lines.empty:
        return None
    last = lines.iloc[-1]
    return {str(k): float(v) for k, v in last.items()
            if str(k).startswith(("mechanism/", "eval/")) and v is not None}


def _get(values: Mapping[str, float], key: str) -> float:
    value = values.get(key, math.nan)
    return math.nan if value is None else float(value)


def mechanism_tables(runs: Mapping[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(summary, deciles)`` (module docstring) of the runs ``{label: run directory}``, in
    the given order; a run whose metrics cannot be read or hold no mechanism line is left out.
    The summary ends with a reference row labelled :data:`dasd.mechanism.REFERENCE_CITATION`
    when any run is shown (its low-entropy share is a lower bound: "more than half")."""
    from dasd.runlog import RunLogError, read_metrics

    summary, deciles = [], []
    for label, path in runs.items():
        try:
            values = latest_mechanism(read_metrics(path))
        except (RunLogError, OSError):
            continue
        if values is None:
            continue
        summary.append({
            "run": label,
            **{c: _get(values, f"mechanism/{c}") for c in SUMMARY_COLUMNS[1:7]},
            "wrong_steps": int(_get(values, "mechanism/wrong_steps")),
            LOW_SHARE: _get(values, "mechanism/entropy_share_below_"
                                    f"{REFERENCE_LOW_ENTROPY_NATS:g}"),
            "h_q50": _get(values, "eval/entropy_q50"),
            "h_q80": _get(values, "eval/entropy_q80"),
        })
        for k in range(1, 11):
            deciles.append({
                "run": label, "decile": k,
                "h_upper": _get(values, f"mechanism/entropy_edge_d{k}") if k < 10 else math.inf,
                **{c: _get(values, f"mechanism/{c}_d{k}") for c in DECILE_COLUMNS[3:]},
            })
    if summary:
        summary.append({"run": REFERENCE_CITATION, **dict.fromkeys(SUMMARY_COLUMNS[1:], math.nan),
                        "wrong_steps": None,
                        LOW_SHARE: REFERENCE_LOW_ENTROPY_SHARE,
                        "h_q80": REFERENCE_Q80_NATS})
    return (pd.DataFrame(summary, columns=list(SUMMARY_COLUMNS)),
            pd.DataFrame(deciles, columns=list(DECILE_COLUMNS)))
