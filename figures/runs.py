"""Run directories as the figures see them: the run view of :mod:`dasd.runlog` as drawn.

Figures read run directories only (DESIGN.md section 4), through :mod:`dasd.runlog`; a run is
its :class:`dasd.runlog.Run` with three fields as recorded rather than traced to a train run,
and named when missing. A run's *method* is ``manifest["method"]``, else ``config["method"]``
when that is a string (an eval of a trained checkpoint may record it there), else ``None``
(drawn as "Base"); its model and task read "unknown model" / "unknown task" when absent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dasd.runlog import Run as RunView
from dasd.runlog import find_runs, read_manifest, run_variant

from .style import METHOD_ORDER, method_label

__all__ = ["Group", "Run", "group_runs", "load_runs", "model_size"]

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMBT])(?![A-Za-z])", re.IGNORECASE)
_SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


class Run(RunView):
    """One run directory and its manifest, as drawn (module docstring): the run view with
    ``method``, ``model`` and ``task`` as recorded in the manifest."""

    @property
    def method(self) -> str | None:
        for value in (self.manifest.get("method"), self.config.get("method")):
            if isinstance(value, str) and value:
                return value
        return None

    @property
    def model(self) -> str:
        model = self.manifest.get("model")
        return str(model) if model else "unknown model"

    @property
    def model_name(self) -> str:
        """The model's last path component (``Qwen/Qwen3-1.7B`` -> ``Qwen3-1.7B``)."""
        return Path(self.model).name or self.model

    @property
    def task(self) -> str:
        """The benchmark: ``config["benchmark"]`` when present, else the manifest's task."""
        return super().task or "unknown task"


@dataclass(frozen=True)
class Group:
    """Runs drawn as one curve: same method (and model / task where those vary)."""

    label: str
    method: str | None
    runs: tuple[Run, ...]
    variant: int = 0
    """Index of the group's (model, task) among the groups' ones: a line style beside the
    method's color, so one method's curves on two models differ."""


def load_runs(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Run]:
    """Every run directory under ``paths`` (see :func:`dasd.runlog.find_runs`) with its manifest."""
    return [Run(path, read_manifest(path)) for path in find_runs(paths)]


def _method_rank(method: str | None) -> tuple[int, str]:
    if method is None:
        return (-1, "")
    if method in METHOD_ORDER:
        return (METHOD_ORDER.index(method), method)
    return (len(METHOD_ORDER), method)


def group_runs(runs: Sequence[Run], *, by_model: bool | None = None,
               by_task: bool | None = None) -> list[Group]:
    """Runs grouped into curves by method and variant (:func:`dasd.runlog.run_variant`:
    ``method_options``, a non-default ``routing`` or ``rho``, so that ablation rows and flipped
    arms are not pooled into the method's curve), in the paper's method order. The model (task)
    name is added to the key and label when ``by_model`` (``by_task``) is True, or, when left
    ``None``, when the runs span more than one model (task)."""
    if by_model is None:
        by_model = len({r.model for r in runs}) > 1
    if by_task is None:
        by_task = len({r.task for r in runs}) > 1
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        key = (_method_rank(run.method), run.method,
               run.model_name if by_model else "", run.task if by_task else "",
               run_variant(run.config))
        groups.setdefault(key, []).append(run)
    settings = sorted({(k[2], k[3]) for k in groups})
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[2], k[3], k[4])):
        _, method, model, task, variant = key
        extra = ", ".join(x for x in (variant, model, task) if x)
        label = method_label(method) + (f" ({extra})" if extra else "")
        out.append(Group(label, method, tuple(groups[key]), settings.index((model, task))))
    return out


def model_size(run: Run) -> float | None:
    """Parameter count: ``config["n_parameters"]`` when logged, else parsed from the model
    name (``Qwen3-1.7B`` -> 1.7e9); ``None`` when neither is there."""
    logged = run.config.get("n_parameters")
    if isinstance(logged, (int, float)) and not isinstance(logged, bool) and logged > 0:
        return float(logged)
    match = _SIZE_RE.search(run.model_name)
    if match:
        return float(match.group(1)) * _SCALE[match.group(2).upper()]
    return None
