"""Each probe's power and false positives, measured on control worlds (issue 16).

A control world is built so that each claim's sign is known before any run: the **positive
control** has the paper's mechanisms planted, the **negative control** has a teacher that knows
nothing about the answer. Running a probe there measures the probe, not the paper: the rows
are labelled as controls everywhere (``label``), never as reproductions.

One row per (probe claim, world): the claim (``analysis.findings``' text), the sign the world
predicts for it (+1, -1, or 0 for "no effect"), the measured difference and its 95% interval,
and a verdict by one rule (``calibration_verdict``):

* a claim predicted +1 or -1 on the positive control: **detected** when the interval excludes 0
  on the predicted side; **missed** otherwise (it contains 0, excludes 0 on the other side, or
  the estimate has no interval);
* on the negative control, and for a claim predicted 0 on any world: **false positive** when
  the interval excludes 0 on a side the prediction does not name (either side for 0); **clean**
  otherwise;
* **not measured** when the claim has no estimate (the probe's run is missing).

The sign rule is ``analysis.agreement.sign_agreement``'s (an interval end at exactly 0 counts
as containing 0).

Departures: none from the paper, which has no control worlds; this is the discipline of
control tasks (Hewitt & Liang 2019) applied to its probes.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.agreement import sign_agreement
from dasd.runlog import write_text

__all__ = [
    "COLUMNS",
    "ROLES",
    "VERDICTS",
    "Row",
    "calibration_verdict",
    "estimate_text",
    "label",
    "read_calibration",
    "summary_lines",
    "to_markdown",
    "write_calibration",
]

#: The columns of ``calibration.csv``, in order.
COLUMNS = ("probe", "claim", "world", "predicted_sign", "value", "low", "high", "verdict")
#: A control world's role; the world label names it (``label``).
ROLES = ("positive", "negative")
VERDICTS = ("detected", "missed", "clean", "false positive", "not measured")
_LABEL = re.compile(r"^(?P<world>.*) \((?P<role>positive|negative) control\)$")


def label(world: str, role: str) -> str:
    """``world`` as written in every calibration output, e.g. ``tiny-planted (positive
    control)``."""
    if role not in ROLES:
        raise ValueError(f"unknown control role {role!r}; valid: {', '.join(ROLES)}")
    return f"{world} ({role} control)"


def calibration_verdict(role: str, predicted: int, value: float, low: float, high: float
                        ) -> str:
    """The module docstring's rule for one claim measured on a world of ``role`` that predicts
    ``predicted`` (+1, -1 or 0)."""
    if role not in ROLES:
        raise ValueError(f"unknown control role {role!r}; valid: {', '.join(ROLES)}")
    if predicted not in (-1, 0, 1):
        raise ValueError(f"predicted sign must be -1, 0 or +1, got {predicted!r}")
    if predicted == 0:
        seen = sign_agreement(1.0, value, low, high)
        if seen == "not measured":
            return seen
        return "false positive" if seen in ("agrees", "disagrees") else "clean"
    seen = sign_agreement(float(predicted), value, low, high)
    if seen == "not measured":
        return seen
    if role == "positive":
        return "detected" if seen == "agrees" else "missed"
    return "false positive" if seen == "disagrees" else "clean"


def estimate_text(value: float, low: float, high: float) -> str:
    """``+0.4 [+0.3, +0.5]``; ``–`` without an estimate (the findings tables' format)."""
    if math.isnan(value):
        return "–"
    return f"{value:+.3g}" + ("" if math.isnan(low) else f" [{low:+.3g}, {high:+.3g}]")


@dataclass(frozen=True)
class Row:
    """One claim measured by one probe on one control world."""

    probe: str
    claim: str
    world: str
    role: str
    predicted_sign: int
    value: float = math.nan
    low: float = math.nan
    high: float = math.nan

    @property
    def verdict(self) -> str:
        return calibration_verdict(self.role, self.predicted_sign, self.value, self.low,
                                   self.high)

    @property
    def label(self) -> str:
        return label(self.world, self.role)

    def cell(self) -> str:
        """``verdict: estimate`` for a findings table's power column."""
        if self.verdict == "not measured":
            return self.verdict
        return f"{self.verdict}: {estimate_text(self.value, self.low, self.high)}"

    def record(self) -> dict[str, object]:
        """The row as written to ``calibration.csv`` (``COLUMNS``)."""
        return {"probe": self.probe, "claim": self.claim, "world": self.label,
                "predicted_sign": self.predicted_sign, "value": self.value, "low": self.low,
                "high": self.high, "verdict": self.verdict}


def _signed(sign: int) -> str:
    """``+1``, ``-1`` or ``0``."""
    return f"{sign:+d}" if sign else "0"


def _counts(rows: Sequence[Row]) -> str:
    verdicts = [r.verdict for r in rows]
    wanted = "detected" if rows[0].role == "positive" else "clean"
    others = ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS
                       if v != wanted and verdicts.count(v))
    return f"{verdicts.count(wanted)}/{len(rows)} {wanted}" + (f" ({others})" if others else "")


def summary_lines(rows: Sequence[Row]) -> list[str]:
    """One line per probe: its verdict counts on each world, e.g. ``entropy-tv: 1/3 detected
    (2 missed) on tiny-planted (positive control); 3/3 clean on tiny-null (negative
    control)``."""
    worlds = list(dict.fromkeys(r.label for r in rows))
    lines = []
    for probe in dict.fromkeys(r.probe for r in rows):
        parts = [f"{_counts(sel)} on {world}" for world in worlds
                 if (sel := [r for r in rows if r.probe == probe and r.label == world])]
        lines.append(f"{probe}: " + "; ".join(parts))
    return lines


def to_markdown(rows: Sequence[Row]) -> str:
    """The summary lines (``summary_lines``), then one table per world."""
    lines = ["# Calibration of the probes on control worlds", "",
             "These worlds are controls, not reproductions of the paper: each has its claims' "
             "signs fixed by construction, and the rows measure whether each probe sees a "
             "planted effect (positive control) and stays silent where there is none "
             "(negative control).", "",
             "Rule: on the positive control a claim is *detected* when its 95% interval "
             "excludes 0 on the predicted side, else *missed*; on the negative control (and "
             "wherever 0 is predicted) it is *clean* unless the interval excludes 0 on a side "
             "the prediction does not name (*false positive*); *not measured* without data.",
             ""]
    lines += [f"- {line}" for line in summary_lines(rows)]
    for world in dict.fromkeys(r.label for r in rows):
        lines += ["", f"## {world}", "", "| probe | claim | predicted | ours [95% CI] | "
                  "verdict |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r.probe} | {r.claim} | {_signed(r.predicted_sign)} | "
                  f"{estimate_text(r.value, r.low, r.high)} | {r.verdict} |"
                  for r in rows if r.label == world]
    return "\n".join(lines) + "\n"


def write_calibration(rows: Iterable[Row], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """``calibration.csv`` (``COLUMNS``, NaN as an empty field) and ``calibration.md`` in
    ``out_dir``."""
    rows = list(rows)
    out_dir = Path(out_dir)
    frame = pd.DataFrame([r.record() for r in rows], columns=list(COLUMNS))
    paths = {"calibration": out_dir / "calibration.csv",
             "calibration_md": out_dir / "calibration.md"}
    write_text(paths["calibration"], frame.to_csv(index=False))
    write_text(paths["calibration_md"], to_markdown(rows))
    return paths


def read_calibration(path: str | os.PathLike[str]) -> list[Row]:
    """The rows of a ``calibration.csv``; a one-line error for a file that is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no calibration file; run dasd-probe validate first "
                                "or give its calibration.csv")
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if list(frame.columns) != list(COLUMNS):
        raise ValueError(f"{path}: not a calibration table (columns {list(frame.columns)}, "
                         f"expected {list(COLUMNS)})")
    rows = []
    for record in frame.to_dict("records"):
        match = _LABEL.match(str(record["world"]))
        if match is None:
            raise ValueError(f"{path}: world {record['world']!r} names no control role")
        rows.append(Row(str(record["probe"]), str(record["claim"]), match["world"],
                        match["role"], int(record["predicted_sign"]), float(record["value"]),
                        float(record["low"]), float(record["high"])))
    return rows
