"""The run view (DESIGN.md section 4): one run directory as analysis and figures read it.

Holds :class:`Run` (a run's path, manifest and label; what it ran: kind, status, config,
model, method, task and variant; its metrics and rollouts, read on demand), :func:`run_variant`
with :data:`VARIANT_DEFAULTS`, and the lineage of a run that evaluated a checkpoint of a train
run (its model, method and variant are the train run's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from dasd.runlog.reader import read_manifest, read_metrics, read_rollouts
from dasd.runlog.schema import RunLogError

__all__ = ["VARIANT_DEFAULTS", "Run", "run_variant"]

#: Run settings that make a method variant when they leave the paper's default (section 5:
#: entropy routing, router quantile rho = 0.20); ``method_options`` always do.
VARIANT_DEFAULTS: dict[str, Any] = {"routing": "entropy", "rho": 0.2}


def run_variant(config: Mapping[str, Any]) -> str:
    """What sets a run apart from its method's defaults, from its manifest config:
    ``key=value`` for each ``method_options`` entry (sorted), then ``routing=...`` and
    ``rho=...`` where they differ from :data:`VARIANT_DEFAULTS`; "" for none. Runs of one
    method with different variants are different rows and curves (Table 3, the ablations'
    flipped arms and panels); runs differing only in seed share a variant and pool."""
    options = config.get("method_options")
    parts = [f"{k}={v}" for k, v in sorted((options if isinstance(options, dict) else {}
                                             ).items())]
    for key, default in VARIANT_DEFAULTS.items():
        value = config.get(key)
        numeric = isinstance(value, (int, float)) and isinstance(default, float)
        if value is None or value == default or (numeric and math.isclose(value, default)):
            continue
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def _trained_from(model: str) -> tuple[str | None, str | None, str] | None:
    """(model, method, variant) of the train run whose directory holds the checkpoint
    ``model`` (e.g. ``runs/train-dasd/checkpoints/step-200``); None if it is not such a
    path."""
    path = Path(model)
    if "checkpoints" not in path.parts or not path.exists():
        return None
    for parent in path.parents:
        if (parent / "manifest.json").is_file():
            try:
                manifest = read_manifest(parent)
            except (RunLogError, OSError):
                return None
            if manifest.get("method") is None:
                return None
            config = manifest.get("config")
            return (manifest.get("model"), str(manifest["method"]),
                    run_variant(config if isinstance(config, dict) else {}))
    return None


@dataclass(frozen=True)
class Run:
    """One run directory and its manifest, as the tables and figures read it.

    The task is the config's ``benchmark`` when present, else the manifest's ``task``. A run
    without a method whose model is a checkpoint inside a train run directory takes that
    run's model, method and variant (an eval of a trained checkpoint is a row of its method).
    """

    path: Path
    manifest: dict[str, Any] = field(repr=False, compare=False, hash=False)
    label: str = ""
    """The run's name in tables: its folder name unless given (``discover_runs`` of
    ``analysis.health`` gives the path relative to the runs' common parent where names
    collide)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "label", self.label or self.path.name)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind"))

    @property
    def status(self) -> str:
        return str(self.manifest.get("status"))

    @property
    def config(self) -> dict[str, Any]:
        config = self.manifest.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def task(self) -> str | None:
        task = self.config.get("benchmark") or self.manifest.get("task")
        return None if task is None else str(task)

    @cached_property
    def _lineage(self) -> tuple[Any, Any, str]:
        """(model, method, variant): the manifest's, or the train run's for an eval of one of
        its checkpoints."""
        model, method = self.manifest.get("model"), self.manifest.get("method")
        if method is None and isinstance(model, str) and (lineage := _trained_from(model)):
            return lineage
        return model, method, run_variant(self.config)

    @property
    def model(self) -> str | None:
        model = self._lineage[0]
        return None if model is None else str(model)

    @property
    def method(self) -> str | None:
        method = self._lineage[1]
        return None if method is None else str(method)

    @property
    def variant(self) -> str:
        """:func:`run_variant` of the run's config (of the train run's, for an eval of one of
        its checkpoints)."""
        return self._lineage[2]

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """``metrics.jsonl`` as :func:`dasd.runlog.read_metrics` gives it, plus
        ``eval/avg_at_{k}`` / ``eval/pass_at_{k}`` columns for lines that log the sample count
        apart (``eval/avg_at_k`` with ``eval/k``, as ``analysis.health`` names them), so figures
        read one naming; a value logged under the numbered name wins."""
        frame = read_metrics(self.path)
        if "eval/k" not in frame.columns:
            return frame
        for kind in ("avg", "pass"):
            generic = f"eval/{kind}_at_k"
            if generic not in frame.columns:
                continue
            for k in sorted(frame["eval/k"].dropna().unique()):
                if k < 1 or k != int(k):
                    continue
                named = f"eval/{kind}_at_{int(k)}"
                alias = frame[generic].where(frame["eval/k"] == k)
                frame[named] = frame[named].fillna(alias) if named in frame.columns else alias
        return frame

    def series(self, split: str, key: str) -> pd.Series:
        """Metric ``key`` of ``split`` over steps (float, indexed by step, NaNs dropped; the
        last line wins when a step was logged twice, e.g. after a resume)."""
        frame = self.metrics
        if key not in frame.columns:
            return pd.Series(dtype=float)
        rows = frame[(frame["split"] == split)][["step", key]].dropna()
        return rows.groupby("step")[key].last().astype(float)

    def has_rollouts(self) -> bool:
        folder = self.path / "rollouts"
        return folder.is_dir() and any(p.suffix == ".parquet" and not p.name.startswith(".")
                                       for p in folder.iterdir())

    def rollout_steps(self) -> pd.DataFrame:
        """The (step, split) pairs of the logged rollouts, sorted; empty without rollouts."""
        if not self.has_rollouts():
            return pd.DataFrame({"step": pd.Series([], dtype="int64"),
                                 "split": pd.Series([], dtype=str)})
        rows = read_rollouts(self.path, columns=["step"])
        return rows.drop_duplicates().sort_values(["step", "split"]).reset_index(drop=True)

    def last_rollouts(self, columns: Sequence[str], *, splits: Sequence[str] = ("eval", "train")
                      ) -> pd.DataFrame | None:
        """``columns`` of the rollouts at the last logged step of the first split in ``splits``
        that has rollouts; ``None`` when none of them has any."""
        steps = self.rollout_steps()
        for split in splits:
            logged = steps.loc[steps["split"] == split, "step"]
            if len(logged):
                return read_rollouts(self.path, step=int(logged.max()), split=split,
                                     columns=list(columns))
        return None
