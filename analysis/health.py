"""Reasoning-health tables over run directories (paper section 5, Table 3; appendix F).

The metrics themselves are pure text/token functions in :mod:`dasd.health` (their definitions and
the decisions the paper leaves open are listed there). This module reads run directories: it
finds runs (:func:`discover_runs`) as the run view :class:`dasd.runlog.Run` (exported here as
:data:`RunInfo`, with :func:`run_variant`), rebuilds step correctness from a task's step judge
where a run logged none (:func:`resolve_step_correct`, ``Task.problem_from_row``) and
tabulates health and Pass@k per (run, step) (:func:`run_health`, :func:`analyze_runs`,
:func:`passk_report`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dasd.health import DEFAULT_MARKERS, HEALTH_COLUMNS, health_metrics, pass_k_values
from dasd.passk import avg_at_k, pass_at_k, per_prompt_counts
from dasd.runlog import (
    VARIANT_DEFAULTS,
    Run,
    RunLogError,
    find_runs,
    read_manifest,
    read_rollouts,
    run_variant,
)

__all__ = [
    "VARIANT_DEFAULTS",
    "HealthReport",
    "Issue",
    "RunInfo",
    "analyze_runs",
    "discover_runs",
    "passk_report",
    "resolve_step_correct",
    "run_health",
    "run_variant",
]

# Rollout columns the run-level readers load: every required scalar column (so a file that
# breaks the schema is reported) plus step_correct; never the heavy per-token lists.
_READ_COLUMNS = ("step", "split", "prompt_id", "sample_idx", "prompt", "response", "answer",
                 "reward", "correct", "n_tokens", "step_correct")

# --------------------------------------------------------------------------- step judges


def _missing_flags(values: pd.Series) -> np.ndarray:
    return np.fromiter(
        (v is None or (isinstance(v, float) and math.isnan(v)) for v in values),
        dtype=bool, count=len(values),
    )


def resolve_step_correct(rollouts: pd.DataFrame, task: str | None
                         ) -> tuple[pd.DataFrame, str | None]:
    """``rollouts`` with ``step_correct`` filled where it is missing, from ``task``'s step judge
    (when the task can rebuild the problem from the row, ``Task.problem_from_row``), and a
    note (None when nothing is missing) saying what could not be judged and why."""
    if "step_correct" in rollouts.columns:
        missing = _missing_flags(rollouts["step_correct"])
    else:
        missing = np.ones(len(rollouts), dtype=bool)
    if not missing.any():
        return rollouts, None
    what = ("rollouts have no step_correct column" if "step_correct" not in rollouts.columns
            else f"{int(missing.sum())} of {len(rollouts)} rollouts lack step_correct")
    outcome = ("step metrics are empty (NaN)" if missing.all() else
               f"step metrics cover the {int((~missing).sum())} judged rows only")
    from dasd.tasks import TASKS, get_task
    from dasd.tasks.base import rebuilds_problems

    if task is None or task not in TASKS or not rebuilds_problems(TASKS.get(task)):
        reason = ("the run names no task" if task is None else
                  f"task {task!r} has no step judge that can rebuild its problems from logged rows")
        return rollouts, f"{what} and {reason}; {outcome}"

    try:
        task_obj = get_task(task)
    except ValueError as err:
        return rollouts, f"{what} and the step judge is unavailable ({_one_line(err)}); {outcome}"
    out = rollouts.copy()
    values = list(out["step_correct"]) if "step_correct" in out.columns else [None] * len(out)
    problems: dict[str, Any] = {}
    unjudged = 0
    for i, row in enumerate(out.itertuples(index=False)):
        if not missing[i]:
            continue
        pid = str(row.prompt_id)
        if pid not in problems:
            problems[pid] = task_obj.problem_from_row(row)
        problem = problems[pid]
        if problem is None:
            unjudged += 1
            continue
        values[i] = np.asarray(task_obj.judge_steps(problem, row.response), dtype=bool)
    out["step_correct"] = pd.Series(values, index=out.index, dtype=object)
    note = None
    if unjudged:
        note = (f"{what}; {unjudged} of them could not be judged (their prompt_id does not "
                f"rebuild a {task} problem) and are left out of the step metrics")
    return out, note


# --------------------------------------------------------------------------- run directories


@dataclass(frozen=True)
class Issue:
    """A problem met while analysing runs: ``level`` is ``error`` (something could not be
    analysed), ``warning`` or ``note``; ``message`` is one line naming the file or run."""

    level: str
    message: str


#: The run view (:class:`dasd.runlog.Run`) under the name the tables import.
RunInfo = Run


@dataclass
class HealthReport:
    """Health rows (one per analysed (run, step)), the runs they come from, and the issues."""

    rows: pd.DataFrame
    runs: list[Run]
    issues: list[Issue]

    @property
    def analysed(self) -> bool:
        return len(self.rows) > 0


def _rollout_steps(run: Path, split: str) -> list[int]:
    """Steps with a rollout file of ``split`` (from the file names; a folder of files named
    otherwise is read for its step column)."""
    folder = run / "rollouts"
    if not folder.is_dir():
        return []
    pattern = re.compile(r"^step-(\d+)-" + re.escape(split) + r"\.parquet$")
    steps = sorted({int(m.group(1)) for p in folder.iterdir()
                    if (m := pattern.match(p.name)) and p.is_file()})
    if steps:
        return steps
    others = [p for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".")
              and not re.match(r"^step-\d+-[A-Za-z0-9_]+\.parquet$", p.name)]
    if not others:
        return []
    frame = read_rollouts(run, split=split, columns=["prompt_id"])
    return sorted(int(s) for s in frame["step"].unique())


def _labels(paths: Sequence[Path]) -> list[str]:
    """Run names; the path relative to the runs' common parent where names collide."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    return [name if names.count(name) == 1 else path.relative_to(common).as_posix()
            for name, path in zip(names, resolved)]


def run_health(
    run: Run,
    *,
    step: int | None = None,
    last: bool = False,
    split: str = "eval",
    markers: Sequence[str] = DEFAULT_MARKERS,
) -> tuple[list[dict[str, Any]], list[Issue]]:
    """Health rows of one run, one per selected step of ``split`` (all steps; ``step`` only;
    or the last with ``last``), and the issues met. Never raises for bad input: a file that
    cannot be read becomes an ``error`` issue and its step is skipped."""
    issues: list[Issue] = []
    try:
        steps = _rollout_steps(run.path, split)
    except (RunLogError, OSError) as err:
        return [], [Issue("error", _one_line(err))]
    if not steps:
        return [], [Issue("error", f"{run.path}: no {split} rollouts to analyse")]
    if step is not None:
        if step not in steps:
            return [], [Issue("error", f"{run.path}: no {split} rollouts for step {step} "
                                       f"(present: {', '.join(map(str, steps))})")]
        steps = [step]
    elif last:
        steps = steps[-1:]
    rows = []
    for s in steps:
        try:
            frame = read_rollouts(run.path, step=s, split=split, columns=list(_READ_COLUMNS))
        except (RunLogError, OSError) as err:
            issues.append(Issue("error", _one_line(err)))
            continue
        if len(frame) == 0:
            issues.append(Issue("error", f"{run.path}: step {s} {split} rollouts are empty"))
            continue
        frame, note = resolve_step_correct(frame, run.task)
        if note:
            issues.append(Issue("note", f"{run.path}: step {s}: {note}"))
        try:
            metrics = health_metrics(frame, markers=markers)
        except ValueError as err:
            issues.append(Issue("error", f"{run.path}: step {s}: {_one_line(err)}"))
            continue
        rows.append({"run": run.label, "step": s, "split": split, **metrics})
    return rows, issues


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())


def discover_runs(
    paths: Iterable[str | os.PathLike[str]],
    *,
    kinds: Callable[[Run], bool] | None = None,
) -> tuple[list[Run], list[Issue]]:
    """The runs under ``paths`` (run directories or their parents), each once, labelled by
    name (by path where names collide), and the issues met: a path holding no run and an
    unreadable manifest are ``error`` issues naming it (the other runs are still returned);
    a run still ``running``, or ``failed``, is returned with a ``warning``. ``kinds``
    optionally selects runs by their :class:`Run`."""
    issues: list[Issue] = []
    found: list[Path] = []
    seen: set[Path] = set()
    for given in paths:
        try:
            runs = find_runs(given)
        except (RunLogError, OSError) as err:
            issues.append(Issue("error", _one_line(err)))
            continue
        for run in runs:
            if run.resolve() not in seen:
                seen.add(run.resolve())
                found.append(run)
    manifests = []
    for run in found:
        try:
            manifests.append((run, read_manifest(run)))
        except (RunLogError, OSError) as err:
            issues.append(Issue("error", _one_line(err)))
    infos = []
    for (run, manifest), label in zip(manifests, _labels([run for run, _ in manifests])):
        info = Run(run, manifest, label)
        if kinds is not None and not kinds(info):
            continue
        if info.status == "running":
            issues.append(Issue("warning", f"{run}: still running (status 'running'); "
                                           "analysing what is logged so far"))
        elif info.status == "failed":
            error = _one_line(Exception(manifest.get("error") or "no error recorded"))
            issues.append(Issue("warning", f"{run}: run failed ({error}); "
                                           "analysing what was logged"))
        infos.append(info)
    return infos, issues


def analyze_runs(
    paths: Iterable[str | os.PathLike[str]],
    *,
    step: int | None = None,
    last: bool = False,
    split: str = "eval",
    markers: Sequence[str] = DEFAULT_MARKERS,
    kinds: Callable[[Run], bool] | None = None,
) -> HealthReport:
    """Health rows (:func:`run_health`) of the runs under ``paths`` (:func:`discover_runs`).
    Bad input never stops the others: a path without runs, an unreadable manifest, a bad
    rollout file each become an ``error`` issue naming it; a run still ``running`` (or
    ``failed``) is analysed with a ``warning``. Rows carry the run's model, method, task and
    kind beside :data:`HEALTH_COLUMNS`; ``runs`` lists the runs that gave at least one row."""
    found, issues = discover_runs(paths, kinds=kinds)
    infos: list[Run] = []
    rows: list[dict[str, Any]] = []
    for info in found:
        run_rows, run_issues = run_health(info, step=step, last=last, split=split,
                                          markers=markers)
        issues.extend(run_issues)
        if run_rows:
            infos.append(info)
        for row in run_rows:
            rows.append({**row, "kind": info.kind, "model": info.model, "method": info.method,
                         "task": info.task})
    extra = ["kind", "model", "method", "task"]
    frame = pd.DataFrame(rows, columns=[*HEALTH_COLUMNS, *extra])
    if len(frame):
        frame = frame.astype({"step": np.int64, "n_prompts": np.int64,
                              "n_responses": np.int64, "k": np.int64})
    return HealthReport(rows=frame, runs=infos, issues=issues)


def passk_report(
    paths: Iterable[str | os.PathLike[str]],
    *,
    ks: Sequence[int] | None = None,
    split: str = "eval",
) -> tuple[pd.DataFrame, list[Issue]]:
    """Unbiased Pass@k per (run, step) of ``split`` from logged rollouts
    (:func:`dasd.passk.per_prompt_counts`): columns ``run``, ``task`` (the config's
    benchmark, else the manifest's task), ``step``, ``n_prompts``, ``n`` (the fewest samples
    of any prompt), ``avg_at_n``, then ``pass@k`` for k in ``ks`` (default 1, 2, 4, ... up to
    n, :func:`pass_k_values`); NaN where k > n. Bad input is reported as for
    :func:`analyze_runs`."""
    infos, issues = discover_runs(paths)
    rows: list[dict[str, Any]] = []
    for info in infos:
        try:
            frame = read_rollouts(info.path, split=split, columns=["prompt_id", "correct"])
        except (RunLogError, OSError) as err:
            message = _one_line(err)
            if "no rollout Parquet files" in message or "no rollouts/ folder" in message or \
                    "no rollouts for" in message:
                message = f"{info.path}: no {split} rollouts to analyse"
            issues.append(Issue("error", message))
            continue
        for step, group in frame.groupby("step", sort=True):
            counts = per_prompt_counts(group)
            n, c = counts["n"].to_numpy(), counts["c"].to_numpy()
            n_min = int(n.min())
            row: dict[str, Any] = {"run": info.label, "task": info.task, "step": int(step),
                                   "n_prompts": len(counts), "n": n_min,
                                   "avg_at_n": float(np.mean(avg_at_k(n, c)))}
            for k in (ks or pass_k_values(n_min)):
                row[f"pass@{k}"] = float(np.mean(pass_at_k(n, c, k))) if k <= n_min \
                    else math.nan
            rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        passes = sorted((c for c in frame.columns if c.startswith("pass@")),
                        key=lambda c: int(c[5:]))
        frame = frame[["run", "task", "step", "n_prompts", "n", "avg_at_n", *passes]]
    return frame, issues
