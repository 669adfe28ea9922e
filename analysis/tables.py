"""The paper's tables, regenerated from run directories only (DESIGN.md section 7), each beside
the paper's numbers (``analysis.paper``) with a mark for agreement (``analysis.agreement``).

Which runs feed which table (every number comes from logged rollouts, through
:func:`analysis.health.analyze_runs`, at each run's last logged step of the ``eval`` split):

* Table 1 (section 3, Probe 3): runs of kind ``probe:prefix-intervene``, from their
  ``summary.json`` (the % changes and bootstrap intervals the probe computed from its logged
  rollouts); one table per run.
* Tables 2 and 6 (section 5, appendix D; Avg@k) and Table 7 (appendix D; Pass@k): runs of
  kind ``eval``. Rows are model / method (manifest ``model`` and ``method``; an eval run of a
  checkpoint inside a train run directory takes that run's model, method and variant),
  grouped by model with the base model first; columns are the task or benchmark (the config's
  ``benchmark`` when present, else the manifest's ``task``), plus the macro average when there
  are several. Pass@k uses k = n, the samples per prompt (the paper's Pass@16 with 16).
* Table 3 (section 5; reasoning health): every analysed run; rows are the metrics grouped
  Execution / Exploration / Outcome, columns the methods; one table per task.
* Tables 5 and 11-14 (section 6 RQ3, appendix G): :func:`variant_table` builds them from the
  health rows of runs whose kind is ``probe:ablate`` and whose config names the ``panel`` and
  the ``variant``, or the train runs inside a ``probe:ablate`` parent.

Runs are pooled into one cell when they share model, method, task and *variant*
(:func:`analysis.health.run_variant`: ``method_options``, a non-default ``routing`` or
``rho``), i.e. when they differ only in seed: the cell is their mean, with ``±`` the
half-width of the 95% Student-t interval across them. Runs of one method with different
variants are separate rows (Tables 2, 6, 7) or columns (Table 3), labelled
``DASD (flip=low)``, ``DASD (routing=position)``.

Formatting follows the paper: percentages with one decimal (Avg@k, Pass@k, StepAcc, CSR),
bold for the best and underline for the second-best value within each comparison (per
column within a model's block for Tables 2/6/7; per metric across methods for Table 3; per
column for the ablation tables). Ties (equal printed values) share the mark; a comparison of
one value marks nothing, of two marks only the best. Higher is better everywhere, as the
paper's arrows say. Outputs are Markdown (underline as ``<u>…</u>``), LaTeX (booktabs) and
CSV (the printed numbers, without marks); the same runs always give the same bytes (sorted
rows, no timestamps, run names rather than paths).

Paper vs ours: each table with a paper counterpart gets a companion ``<name>-vs-paper`` table
(``.md``, ``.tex``, ``.csv``, and after the table in ``tables.md`` and on the terminal); the
table itself is unchanged, so its files read as the paper's. In the companion, rows are ours
that the paper also reports, and each of our columns is followed by ``<column>: paper``:

* Table 1 (signed changes): per cell our % change with its bootstrap interval ``[low,
  high]``, the paper's change, and ``<mode>: sign``, the sign agreement (agrees, disagrees,
  inconclusive, not measured); for the Random-H_t control rows, whose effects the paper bounds
  by |Δ| ≤ 5% (``TABLE1_CONTROL_BOUND``), the bound agreement instead.
* The others (orderings of methods or variants): per cell our mean with its Student-t
  interval across seeds (none for a single run), the paper's value, and, after each block of
  rows (a model; an ablation panel), two rows: whether our best row (by mean) is the paper's
  best, and the ordering verdict with the counts of agreeing / disagreeing / undecided pairs.
  Table 3 is shown transposed there (rows the methods GRPO, OPSD, DASD; columns the metrics),
  so that every comparison runs down a column.

Which paper cell a column of ours is compared with: the same benchmark when ours is one of
the paper's (AIME24, MATH500, ...); for a task the paper does not have (the built-in
Countdown), the paper's average over its benchmarks (Tables 2, 6, 7: its Avg column; Tables 5
and 12-14: the mean of AIME24 and AIME25; Table 11: the mean of MATH500, AIME24 and AIME25 for
the same metric), which the notes name. Models: a block of ours whose model is a paper model
(Qwen3-1.7B / 4B / 8B, by its last path component) is compared with that block, any other
with Qwen3-1.7B, the paper's diagnostic model. Table 3 of every task is compared with the
paper's (AIME24). Orderings compare ranks only, so units that differ from the paper's (our
E(y) is per 1,000 words) do not matter.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.agreement import (
    OrderingAgreement,
    bound_agreement,
    ordering_agreement,
    sign_agreement,
)
from analysis.health import HealthReport, RunInfo
from analysis.intervals import t_interval
from analysis.paper import (ABLATION_ROWS, BENCHMARK_COLUMNS, PAPER_MODELS, TABLE1_BUCKETS,
                            TABLE1_CONTROL_BOUND, TABLE1_METRICS, TABLE1_MODES, TABLE3_METHODS,
                            TABLE3_ROWS, method_row, paper_value)
from dasd.method_styles import METHOD_STYLES

__all__ = [
    "BENCHMARKS",
    "METHOD_LABELS",
    "TABLES",
    "PaperTable",
    "Row",
    "TableSpec",
    "TextRow",
    "Versus",
    "benchmark_table",
    "build_tables",
    "health_table",
    "prefix_table",
    "variant_table",
    "write_tables",
]

#: Paper benchmark names as logged (task or benchmark) -> column label, in the paper's order.
BENCHMARKS: dict[str, str] = {
    "math500": "MATH500",
    "minerva_math": "Minerva",
    "minerva": "Minerva",
    "hmmt_feb_2025": "HMMT25",
    "hmmt25": "HMMT25",
    "olympiadbench": "Olympiad",
    "aime24": "AIME24",
    "aime25": "AIME25",
    "countdown": "Countdown",
}
#: Method names (the method registry) -> row label, in the paper's order.
METHOD_LABELS: dict[str, str] = {name: style.label for name, style in METHOD_STYLES.items()}
BASE = "base"
_SPREAD_NOTE = ("±: half-width of the 95% Student-t interval across a cell's runs (seeds); the "
                "CSV holds the means.")


# --------------------------------------------------------------------------- the table model


@dataclass(frozen=True)
class TextRow:
    """A row ready to print: its ``label``, printed ``cells``, ``section`` (None for none)
    and whether it is indented under its section's heading."""

    label: str
    cells: tuple[str, ...]
    section: str | None = None
    indent: bool = False


def _markdown(title: str, corner: str, columns: Sequence[str], rows: Sequence[TextRow],
              notes: Sequence[str]) -> str:
    """A Markdown table (cells as given; labels and sections escaped), an italic heading
    line where an indented row opens a section, then the notes."""
    lines = [f"### {title}", "",
             "| " + " | ".join([corner, *columns]) + " |",
             "| " + " | ".join(["---", *("---:" for _ in columns)]) + " |"]
    for r, row in enumerate(rows):
        new_section = r == 0 or row.section != rows[r - 1].section
        if new_section and row.section is not None and row.indent:
            lines.append("| " + " | ".join([f"*{_md(row.section)}*", *("" for _ in columns)])
                         + " |")
        label = ("&nbsp;&nbsp;" if row.indent else "") + _md(row.label)
        lines.append("| " + " | ".join([label, *row.cells]) + " |")
    lines += ["", *notes]
    return "\n".join(lines).rstrip() + "\n"


def _latex(title: str, corner: str, columns: Sequence[str], rows: Sequence[TextRow],
           notes: Sequence[str]) -> str:
    """A booktabs LaTeX table (cells as given; labels and sections escaped), a rule between
    sections, the notes as comments."""
    n = len(columns)
    lines = [f"% {title}", "% Generated by dasd-analyze tables from run directories.",
             "\\begin{tabular}{l" + "r" * n + "}", "\\toprule",
             " & ".join([_tex(corner), *map(_tex, columns)]) + " \\\\",
             "\\midrule"]
    for r, row in enumerate(rows):
        if r == 0 or row.section != rows[r - 1].section:
            if r > 0:
                lines.append("\\midrule")
            if row.section is not None and row.indent:
                lines.append(f"\\multicolumn{{{n + 1}}}{{l}}{{\\textit{{{_tex(row.section)}}}}}"
                             " \\\\")
        label = ("\\quad " if row.indent else "") + _tex(row.label)
        lines.append(" & ".join([label, *row.cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", *(f"% {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _csv(corner: str, columns: Sequence[str], rows: Sequence[TextRow]) -> str:
    """CSV: section, label, then the cells ("–" left empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", corner, *columns])
    for row in rows:
        writer.writerow([row.section or "", row.label, *("" if c == "–" else c for c in row.cells)])
    return buffer.getvalue()


@dataclass(frozen=True)
class Versus:
    """A table's "paper vs ours" companion (module docstring), cells already printed."""

    name: str  # file stem, e.g. "table2-vs-paper"
    title: str
    corner: str
    columns: tuple[str, ...]
    rows: tuple[TextRow, ...]
    notes: tuple[str, ...] = ()

    def to_markdown(self) -> str:
        rows = [TextRow(r.label, tuple(map(_md, r.cells)), r.section, r.indent)
                for r in self.rows]
        return _markdown(self.title, self.corner, self.columns, rows, self.notes)

    def to_latex(self) -> str:
        rows = [TextRow(r.label, tuple(map(_tex, r.cells)), r.section, r.indent)
                for r in self.rows]
        return _latex(self.title, self.corner, self.columns, rows, self.notes)

    def to_csv(self) -> str:
        return _csv(self.corner, self.columns, self.rows)


@dataclass(frozen=True)
class Row:
    """One table row: ``label``, one value per column (None where missing), the ``section``
    it belongs to (a model block, a metric group, an ablation panel; None for none)."""

    label: str
    values: tuple[float | None, ...]
    section: str | None = None
    indent: bool = False
    spread: tuple[float | None, ...] | None = None
    """Optional +- half-width per value (same scale and format), shown after the value in
    Markdown and LaTeX (not in the CSV, which holds the values)."""


@dataclass(frozen=True)
class PaperTable:
    """A table as the paper lays it out. ``formats`` gives each column's (or, with
    ``mark="row"``, each row's) number format; ``mark`` says what a best value is best among:
    ``"column"`` (within a section), ``"row"`` (across the columns of a row) or ``"none"``.
    ``versus`` is its "paper vs ours" companion, when the paper has the table."""

    name: str  # file stem, e.g. "table2"
    title: str
    corner: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    formats: tuple[str, ...]
    mark: str = "column"
    notes: tuple[str, ...] = ()
    versus: Versus | None = None

    # -- cells
    def _fmt(self, r: int, c: int) -> str:
        value = self.rows[r].values[c]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        spec = self.formats[r] if self.mark == "row" else self.formats[c]
        return format(value, spec)

    def cells(self) -> list[list[str]]:
        """Printed values, row by row."""
        return [[self._fmt(r, c) for c in range(len(self.columns))]
                for r in range(len(self.rows))]

    def _spread(self, r: int, c: int, pm: str) -> str:
        """`` ± half-width`` of a cell with a spread (``pm`` the plus-minus sign), else ""."""
        spread = self.rows[r].spread
        value = None if spread is None else spread[c]
        if value is None or math.isnan(value) or self._fmt(r, c) == "–":
            return ""
        spec = self.formats[r] if self.mark == "row" else self.formats[c]
        return f" {pm} {format(value, spec)}"

    def marks(self) -> list[list[str]]:
        """``"best"``, ``"second"`` or ``""`` per cell (module docstring)."""
        cells = self.cells()
        out = [["" for _ in self.columns] for _ in self.rows]
        if self.mark == "none":
            return out
        comparisons: list[list[tuple[int, int]]] = []
        if self.mark == "row":
            comparisons = [[(r, c) for c in range(len(self.columns))]
                           for r in range(len(self.rows))]
        else:
            sections: dict[str | None, list[int]] = {}
            for r, row in enumerate(self.rows):
                sections.setdefault(row.section, []).append(r)
            for members in sections.values():
                comparisons += [[(r, c) for r in members] for c in range(len(self.columns))]
        for group in comparisons:
            printed = {rc: float(cells[rc[0]][rc[1]]) for rc in group
                       if cells[rc[0]][rc[1]] != "–"}
            distinct = sorted(set(printed.values()), reverse=True)
            if len(printed) < 2:
                continue
            for (r, c), value in printed.items():
                if value == distinct[0]:
                    out[r][c] = "best"
                elif len(printed) >= 3 and len(distinct) > 1 and value == distinct[1]:
                    out[r][c] = "second"
        return out

    # -- renderings
    def _text_rows(self, wrap: Mapping[str, str], pm: str, dash: str) -> list[TextRow]:
        """Rows with their marks (``wrap`` per mark), spreads (``pm``) and ``dash`` for a
        missing value."""
        cells, marks = self.cells(), self.marks()
        return [TextRow(row.label, tuple(wrap[m].format(v.replace("–", dash))
                                         + self._spread(r, c, pm)
                                         for c, (v, m) in enumerate(zip(cells[r], marks[r]))),
                        row.section, row.indent)
                for r, row in enumerate(self.rows)]

    def to_markdown(self) -> str:
        wrap = {"best": "**{}**", "second": "<u>{}</u>", "": "{}"}
        return _markdown(self.title, self.corner, self.columns,
                         self._text_rows(wrap, "±", "–"), self.notes)

    def to_latex(self) -> str:
        wrap = {"best": "\\textbf{{{}}}", "second": "\\underline{{{}}}", "": "{}"}
        return _latex(self.title, self.corner, self.columns,
                      self._text_rows(wrap, "$\\pm$", "--"), self.notes)

    def to_csv(self) -> str:
        return _csv(self.corner, self.columns,
                    [TextRow(row.label, tuple(printed), row.section)
                     for row, printed in zip(self.rows, self.cells())])


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", "|": r"\textbar{}", "<": r"\textless{}",
                ">": r"\textgreater{}", "↑": r"$\uparrow$", "–": "--", "Δ": r"$\Delta$",
                "ρ": r"$\rho$"}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


# --------------------------------------------------------------------------- paper vs ours


def _nan(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _estimate(value: float | None, low: float | None, high: float | None, fmt: str) -> str:
    """``value [low, high]``, ``value`` without an interval, ``–`` without a value."""
    if _nan(value):
        return "–"
    if _nan(low) or _nan(high):
        return format(value, fmt)
    return f"{format(value, fmt)} [{format(low, fmt)}, {format(high, fmt)}]"


def _around(value: float | None, half: float | None) -> tuple[float, float, float]:
    """(value, low, high) of a mean and its interval half-width (NaN where missing)."""
    v = math.nan if value is None else float(value)
    h = math.nan if half is None else float(half)
    return v, v - h, v + h


@dataclass(frozen=True)
class _Reference:
    """A column of ours in a "vs paper" table: its header, number format, and the paper
    columns whose mean is its reference (one: the same column)."""

    header: str
    fmt: str
    paper_columns: tuple[str, ...]


@dataclass(frozen=True)
class _Block:
    """Rows of ours compared with one another: their labels, their rows in the paper table
    (in ``paper_section``), and per row per reference our (mean, half-width)."""

    section: str | None
    labels: tuple[str, ...]
    paper_rows: tuple[str, ...]
    ours: tuple[tuple[tuple[float | None, float | None], ...], ...]
    paper_section: str | None = None


def _reference_note(ref: _Reference) -> str:
    """Which paper cells a column of ours is compared with."""
    if len(ref.paper_columns) == 1:
        return f"{ref.header}: the paper's {ref.paper_columns[0]}."
    return f"{ref.header}: the mean of the paper's {', '.join(ref.paper_columns)}."


def _best_text(agreement: OrderingAgreement, labels: Mapping[str, str]) -> str:
    if agreement.best_agrees is None:
        return "–"
    ours = ", ".join(labels[r] for r in agreement.our_best)
    if agreement.best_agrees:
        return f"yes: {ours}"
    return f"no: ours {ours}, paper {', '.join(labels[r] for r in agreement.paper_best)}"


def _ordering_versus(name: str, title: str, corner: str, paper_table: str,
                     refs: Sequence[_Reference], blocks: Sequence[_Block], *,
                     transposed: bool = False, notes: Sequence[str] = ()) -> Versus | None:
    """The "vs paper" table of an ordering comparison (module docstring): per block, its rows
    with ours and the paper's value per reference, then the best-row and ordering rows.
    ``transposed``: the paper has our rows as its columns and our references as its rows
    (Table 3). None when no block has a row."""
    blocks = [b for b in blocks if b.labels]
    if not blocks or not refs:
        return None
    columns = [text for ref in refs for text in (ref.header, f"{ref.header}: paper")]
    rows: list[TextRow] = []
    for block in blocks:
        paper = [[float(np.mean([
            paper_value(paper_table, column, row, section=block.paper_section) if transposed
            else paper_value(paper_table, row, column, section=block.paper_section)
            for column in ref.paper_columns])) for ref in refs] for row in block.paper_rows]
        for i, label in enumerate(block.labels):
            cells: list[str] = []
            for j, ref in enumerate(refs):
                cells += [_estimate(*_around(*block.ours[i][j]), ref.fmt),
                          format(paper[i][j], ref.fmt)]
            rows.append(TextRow(label, tuple(cells), block.section, block.section is not None))
        labels = dict(zip(block.paper_rows, block.labels))
        best: list[str] = []
        order: list[str] = []
        for j in range(len(refs)):
            agreement = ordering_agreement(
                {row: paper[i][j] for i, row in enumerate(block.paper_rows)},
                {row: _around(*block.ours[i][j]) for i, row in enumerate(block.paper_rows)})
            best += [_best_text(agreement, labels), ""]
            order += [(f"{agreement.verdict} ({agreement.concordant}/{agreement.discordant}/"
                      f"{agreement.undecided})"), ""]
        indent = block.section is not None
        rows += [TextRow("best row: ours is the paper's?", tuple(best), block.section, indent),
                 TextRow("ordering (agree/disagree/undecided pairs)", tuple(order),
                         block.section, indent)]
    rule = ("Ours: mean [95% Student-t interval across runs; none for one run]. Best row: by "
            "our means. Ordering: a pair the paper orders agrees when our intervals separate "
            "the same way, disagrees when the other way, else is undecided (analysis.agreement).")
    return Versus(name=name, title=title, corner=corner, columns=tuple(columns),
                  rows=tuple(rows),
                  notes=(rule, *notes, *(_reference_note(ref) for ref in refs)))


# --------------------------------------------------------------------------- selecting rows


def _natural(text: str) -> list[Any]:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", text)]


def _task_key(task: str) -> tuple[int, list[Any]]:
    order = list(dict.fromkeys(BENCHMARKS.values()))
    label = BENCHMARKS.get(task.lower())
    return (order.index(label), []) if label else (len(order), _natural(task))


def _task_label(task: str) -> str:
    return BENCHMARKS.get(task.lower(), task)


def _method_key(method: str) -> tuple[int, list[Any]]:
    order = [BASE, *METHOD_LABELS]
    return (order.index(method), []) if method in order else (len(order), _natural(method))


def _method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _last_steps(rows: pd.DataFrame) -> pd.DataFrame:
    """Each run's row at its last analysed step."""
    if rows.empty:
        return rows
    last = rows.groupby("run", sort=True)["step"].transform("max")
    return rows[rows["step"] == last]


def _keyed(rows: pd.DataFrame, report: HealthReport) -> pd.DataFrame:
    """``rows`` with model, method and task filled in and each run's ``run_variant``
    (:attr:`analysis.health.RunInfo.variant`)."""
    out = rows.copy()
    out["model"] = out["model"].fillna("?").astype(str)
    out["method"] = out["method"].fillna(BASE).astype(str)
    out["task"] = out["task"].fillna("?").astype(str)
    variants = {info.label: info.variant for info in report.runs}
    out["run_variant"] = out["run"].map(variants).fillna("").astype(str)
    return out


def _averaged(rows: pd.DataFrame, keys: list[str], metrics: Sequence[str]
              ) -> tuple[pd.DataFrame, list[str]]:
    """Per group of runs sharing ``keys``: the mean of each of ``metrics`` and, as
    ``<metric>±``, the half-width of its 95% Student-t interval across the runs (NaN for one
    run); and a note for each group of several runs."""
    notes, records = [], []
    for key, group in rows.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        if len(group) > 1:
            notes.append(f"{' / '.join(str(k) for k in key if k != '')}: mean of {len(group)} "
                         f"runs ({', '.join(sorted(group['run']))}).")
        record: dict[str, Any] = dict(zip(keys, key))
        for metric in metrics:
            interval = t_interval(group[metric].to_numpy(dtype=np.float64))
            record[metric], record[f"{metric}±"] = interval.mean, interval.half_width
        records.append(record)
    return pd.DataFrame(records, columns=[*keys, *metrics, *(f"{m}±" for m in metrics)]), notes


def _half(value: float, scale: float) -> float | None:
    return None if math.isnan(value) else scale * value


def _with_variant(label: str, *extras: str) -> str:
    """``label (extra, ...)`` for the non-empty extras, else ``label``."""
    shown = [x for x in extras if x]
    return f"{label} ({', '.join(shown)})" if shown else label


def _runs_note(rows: pd.DataFrame) -> str:
    return "Runs: " + ", ".join(sorted(set(rows["run"]))) + "."


def _paper_model(model: str) -> str:
    """The paper's model block for one of ours: the same model by its last path component
    (case-insensitive), else Qwen3-1.7B."""
    name = Path(model).name.lower()
    return next((m for m in PAPER_MODELS if m.lower() == name), PAPER_MODELS[0])


# --------------------------------------------------------------------------- builders


def benchmark_table(report: HealthReport, *, name: str, title: str, metric: str,
                    metric_label: str, paper_table: str | None = None) -> PaperTable | None:
    """Tables 2/6/7 layout: rows model / method (and variant), columns tasks (+ macro
    average), ``metric`` (a health column in [0, 1]) in percent, compared with the paper's
    ``paper_table`` (``"Table 2"`` or ``"Table 7"``) when given."""
    rows = _last_steps(report.rows)
    rows = rows[rows["kind"] == "eval"] if not rows.empty else rows
    if rows.empty:
        return None
    rows = _keyed(rows, report)
    mean, notes = _averaged(rows, ["model", "method", "run_variant", "task"], [metric, "k"])
    tasks = sorted(mean["task"].unique(), key=_task_key)
    ks = sorted({int(k) for k in rows["k"]})
    k_text = str(ks[0]) if len(ks) == 1 else "k"
    if len(ks) > 1:
        notes.append(f"k differs between runs ({', '.join(map(str, ks))}); each cell uses "
                     "its run's samples per prompt.")
    columns = [_task_label(t) for t in tasks]
    with_avg = len(tasks) > 1
    if with_avg:
        columns.append("Avg")
        notes.append("Avg: macro average over the task columns (only for rows with all of "
                     "them).")
    table_rows, blocks = [], []
    for model in sorted(mean["model"].unique(), key=_natural):
        block = mean[mean["model"] == model]
        settings = sorted({(m, v) for m, v in zip(block["method"], block["run_variant"])},
                          key=lambda mv: (_method_key(mv[0]), _natural(mv[1])))
        if BASE not in {m for m, _ in settings}:
            table_rows.append(Row(model, tuple(None for _ in columns), section=model))
        paper_model = _paper_model(model)
        compared: list[tuple[str, str, list[tuple[float | None, float | None]]]] = []
        for method, variant in settings:
            cells = block[(block["method"] == method) & (block["run_variant"] == variant)
                          ].set_index("task")
            values = [100.0 * float(cells.at[t, metric]) if t in cells.index else None
                      for t in tasks]
            spreads = [_half(float(cells.at[t, f"{metric}±"]), 100.0) if t in cells.index
                       else None for t in tasks]
            if with_avg:
                values.append(float(np.mean(values)) if None not in values else None)
                spreads.append(None)
            label = _with_variant(model if method == BASE else f"+{_method_label(method)}",
                                  variant)
            table_rows.append(Row(label, tuple(values), section=model, indent=method != BASE,
                                  spread=tuple(spreads)))
            row = None if variant else method_row(None if method == BASE else method,
                                                  paper_model)
            if row is not None:
                compared.append((label, row, list(zip(values, spreads))))
        blocks.append(_Block(
            section=f"{model} vs the paper's {paper_model}", labels=tuple(c[0] for c in compared),
            paper_rows=tuple(c[1] for c in compared),
            ours=tuple(tuple(c[2]) for c in compared), paper_section=paper_model))
    if any(s is not None for r in table_rows for s in (r.spread or ())):
        notes.append(_SPREAD_NOTE)
    refs = [_Reference(c, ".1f", (c,) if c in BENCHMARK_COLUMNS else ("Avg",)) for c in columns]
    title = title.format(metric=f"{metric_label}@{k_text}")
    versus = None if paper_table is None else _ordering_versus(
        f"{name}-vs-paper", f"{title.split(':')[0]} vs the paper's {paper_table}",
        "Model / method", paper_table, refs, blocks,
        notes=("Rows the paper does not report (other methods, variants) are left out.",))
    return PaperTable(
        name=name, title=title, corner="Model / method", columns=tuple(columns),
        rows=tuple(table_rows), formats=tuple(".1f" for _ in columns), mark="column",
        notes=(*notes, _runs_note(rows)), versus=versus,
    )


#: Table 3's rows: (group, label, health column, scale, format).
HEALTH_ROWS: tuple[tuple[str, str, str, float, str], ...] = (
    ("Execution quality", "Step accuracy ↑", "step_acc", 100.0, ".1f"),
    ("Execution quality", "First-error step ↑", "fes", 1.0, ".1f"),
    ("Execution quality", "Correct-step ratio ↑", "csr", 100.0, ".1f"),
    ("Exploration quality", "E(y) density ↑", "ey_density", 1.0, ".1f"),
    ("Exploration quality", "Revision rate ↑", "rev_rate", 1.0, ".2f"),
    ("Exploration quality", "Distinct-3 ↑", "dist3", 1.0, ".2f"),
    ("Outcome anchor", "Avg@{k} ↑", "avg_at_k", 100.0, ".1f"),
)


def health_table(report: HealthReport) -> list[PaperTable]:
    """Table 3: reasoning health at each run's last eval step; one table per task, one
    column per (model, method, variant), runs differing only in seed pooled."""
    rows = _last_steps(report.rows)
    if rows.empty:
        return []
    rows = _keyed(rows, report)
    metrics = [m for _, _, m, _, _ in HEALTH_ROWS]
    mean, notes = _averaged(rows, ["task", "model", "method", "run_variant"], [*metrics, "k"])
    tasks = sorted(mean["task"].unique(), key=_task_key)
    tables = []
    for task in tasks:
        block = mean[mean["task"] == task]
        several_models = block["model"].nunique() > 1
        order = sorted(zip(block["model"], block["method"], block["run_variant"]),
                       key=lambda mmv: (_method_key(mmv[1]), _natural(mmv[2]),
                                        _natural(mmv[0])))
        columns = [_with_variant(model if method == BASE else _method_label(method), variant,
                                 model if several_models and method != BASE else "")
                   for model, method, variant in order]
        cells = block.set_index(["model", "method", "run_variant"])
        ks = sorted({int(k) for k in block["k"]})
        k_text = str(ks[0]) if len(ks) == 1 else "k"
        table_rows, formats = [], []
        for group, label, metric, scale, fmt in HEALTH_ROWS:
            values = [float(cells.at[key, metric]) for key in order]
            spreads = [_half(float(cells.at[key, f"{metric}±"]), scale) for key in order]
            table_rows.append(Row(label.format(k=k_text),
                                  tuple(None if math.isnan(v) else scale * v for v in values),
                                  section=group, indent=True, spread=tuple(spreads)))
            formats.append(fmt)
        task_notes = [n for n in notes if n.startswith(f"{task} /")]
        if any(math.isnan(float(v)) for v in block["step_acc"]):
            task_notes.append("–: no step correctness logged and no step judge for the task.")
        if any(s is not None for r in table_rows for s in (r.spread or ())):
            task_notes.append(_SPREAD_NOTE)
        suffix = "" if len(tasks) == 1 else f"-{re.sub(r'[^A-Za-z0-9_.-]+', '-', task)}"
        table = PaperTable(
            name=f"table3{suffix}",
            title=f"Table 3: Reasoning health on {_task_label(task)} (last eval step of each "
                  "run). Higher is better.",
            corner="Metric", columns=tuple(columns), rows=tuple(table_rows),
            formats=tuple(formats), mark="row",
            notes=(*task_notes, _runs_note(rows[rows["task"] == task])),
        )
        tables.append(_with_health_versus(table, order, task))
    return tables


def _with_health_versus(table: PaperTable, order: Sequence[tuple[str, str, str]], task: str
                        ) -> PaperTable:
    """``table`` (Table 3 of one task, columns ``order``) with its "vs paper" companion:
    per model, its GRPO / OPSD / DASD columns without a variant against the paper's."""
    refs = [_Reference(row.label, fmt, (TABLE3_ROWS[metric],))
            for row, (_, _, metric, _, fmt) in zip(table.rows, HEALTH_ROWS)]
    blocks = []
    models = sorted({model for model, _, _ in order}, key=_natural)
    for model in models:
        picked = [c for c, (m, method, variant) in enumerate(order)
                  if m == model and method in TABLE3_METHODS and not variant]
        blocks.append(_Block(
            section=model if len(models) > 1 else None,
            labels=tuple(table.columns[c] for c in picked),
            paper_rows=tuple(TABLE3_METHODS[order[c][1]] for c in picked),
            ours=tuple(tuple((row.values[c], (row.spread or ())[c] if row.spread else None)
                             for row in table.rows) for c in picked)))
    note = "" if _task_label(task) == "AIME24" else (
        f" (the paper's is on AIME24; ours on {_task_label(task)})")
    versus = _ordering_versus(
        f"{table.name}-vs-paper", f"Table 3 vs the paper's Table 3{note}", "Method",
        "Table 3", refs, blocks, transposed=True)
    return replace(table, versus=versus)


#: Task of an ablation column that stands for one column per task present (in the
#: paper's benchmark order), its header formatted with ``{task}``.
EACH_TASK = "*"


def _ablation_row(info: RunInfo) -> tuple[str, str, float, str] | None:
    """(panel, row label, row order, variant name) of an ablation run, or None for other
    runs: a ``probe:ablate`` run whose config names its ``panel`` (the config's ``variant``,
    else the run name, names and labels the row), or a train run inside a ``probe:ablate``
    parent whose config maps it to a variant (``runs``), labelled by ``labels`` and ordered
    by ``variants`` (``probes.ablate``)."""
    from dasd.runlog import RunLogError, read_manifest

    if info.kind.startswith("probe:ablate") and "panel" in info.config:
        variant = str(info.config.get("variant", info.label))
        return str(info.config["panel"]), variant, math.inf, variant
    parent = info.path.parent
    if info.kind != "train" or not (parent / "manifest.json").is_file():
        return None
    try:
        manifest = read_manifest(parent)
    except (RunLogError, OSError):
        return None
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    variant = (config.get("runs") or {}).get(info.path.name)
    if not str(manifest.get("kind")).startswith("probe:ablate") or variant is None:
        return None
    order = list(config.get("variants") or [])
    label = (config.get("labels") or {}).get(variant, variant)
    return (str(config.get("panel")), str(label),
            float(order.index(variant)) if variant in order else math.inf, str(variant))


def _ablation_reference(paper_table: str, task: str | None, metric: str
                        ) -> tuple[str, ...] | None:
    """The paper columns an ablation column of ours is compared with (module docstring);
    None for a metric the paper's table does not report."""
    if metric == "ey_density":
        return None if paper_table == "Table 11" else ("E(y)",)
    if paper_table == "Table 11":
        kinds = {"avg_at_k": "Avg@16", "pass_at_k": "Pass@16"}
        if metric not in kinds:
            return None
        benchmarks, pattern = ("MATH500", "AIME24", "AIME25"), "{b} " + kinds[metric]
    elif metric == "avg_at_k":
        benchmarks, pattern = ("AIME24", "AIME25"), "{b}"
    else:
        return None
    label = None if task is None else _task_label(task)
    chosen = (label,) if label in benchmarks else benchmarks
    return tuple(pattern.format(b=b) for b in chosen)


def variant_table(report: HealthReport, *, name: str, title: str, panels: Sequence[str],
                  columns: Sequence[tuple[str | None, str, str, float, str]],
                  paper_table: str | None = None) -> PaperTable | None:
    """An ablation table (Tables 5, 11-14): one row per variant, grouped by panel, in the
    probe's row order (else by name); each cell the mean over the variant's runs (seeds) with
    the half-width of its 95% Student-t interval when there are several; compared with the
    paper's ``paper_table`` when given.

    Runs: see :func:`_ablation_row`. ``columns``: (task, health metric, header, scale,
    format), task None for the mean over the run's tasks and :data:`EACH_TASK` for one column
    per task present (all such specs per task, tasks in the paper's order, before the
    others)."""
    rows = _last_steps(report.rows)
    if rows.empty:
        return None
    keys = {info.label: _ablation_row(info) for info in report.runs}
    rows = rows[rows["run"].map(lambda r: keys.get(r) is not None and keys[r][0] in panels)]
    if rows.empty:
        return None
    rows = _keyed(rows, report)
    rows["panel"] = rows["run"].map(lambda r: keys[r][0])
    rows["variant"] = rows["run"].map(lambda r: keys[r][1])
    order = {(keys[r][0], keys[r][1]): keys[r][2] for r in rows["run"]}
    names = {(keys[r][0], keys[r][1]): keys[r][3] for r in rows["run"]}
    tasks = sorted(rows["task"].unique(), key=_task_key)
    columns = [*((t, m, h.format(task=_task_label(t)), sc, f) for t in tasks
                 for task, m, h, sc, f in columns if task == EACH_TASK),
               *(c for c in columns if c[0] != EACH_TASK)]
    metrics = sorted({m for _, m, _, _, _ in columns})
    mean, notes = _averaged(rows, ["panel", "variant", "task"], metrics)
    table_rows = []
    spread_shown = False
    for panel_name in [p for p in panels if p in set(mean["panel"])]:
        block = mean[mean["panel"] == panel_name]
        runs = rows[rows["panel"] == panel_name]
        variants = sorted(block["variant"].unique(),
                          key=lambda v: (order[(panel_name, v)], _natural(v)))
        for variant in variants:
            mine = block[block["variant"] == variant]
            seeds = runs[runs["variant"] == variant]
            values, spreads = [], []
            for task, metric, _, scale, _ in columns:
                pick = mine if task is None else mine[mine["task"] == task]
                values.append(scale * float(pick[metric].mean()) if len(pick) else None)
                one = seeds if task is None and seeds["task"].nunique() == 1 else (
                    seeds[seeds["task"] == task])
                spreads.append(_half(t_interval(one[metric].to_numpy()).half_width, scale))
            spread_shown |= any(v is not None for v in spreads)
            table_rows.append(Row(variant, tuple(values), section=panel_name,
                                  indent=len(panels) > 1, spread=tuple(spreads)))
    if spread_shown:
        notes.append(_SPREAD_NOTE)
    table = PaperTable(
        name=name, title=title, corner="Variant",
        columns=tuple(header for _, _, header, _, _ in columns), rows=tuple(table_rows),
        formats=tuple(fmt for *_, fmt in columns), mark="column",
        notes=(*notes, _runs_note(rows)),
    )
    if paper_table is None:
        return table
    return replace(table, versus=_ablation_versus(table, columns, names, paper_table))


def _ablation_versus(table: PaperTable, columns: Sequence[tuple[str | None, str, str, float, str]],
                     names: Mapping[tuple[str, str], str], paper_table: str) -> Versus | None:
    """The "vs paper" companion of an ablation table: per panel, the variants the paper's
    ``paper_table`` has (``analysis.paper.ABLATION_ROWS``)."""
    picked = [(c, ref) for c, (task, metric, header, _, fmt) in enumerate(columns)
              if (ref := _ablation_reference(paper_table, task, metric)) is not None]
    refs = [_Reference(columns[c][2], columns[c][4], ref) for c, ref in picked]
    blocks = []
    for panel in dict.fromkeys(str(r.section) for r in table.rows):
        paper_rows = ABLATION_ROWS.get(panel, {}).get(paper_table, {})
        members = [(r, paper_rows[names[(panel, r.label)]]) for r in table.rows
                   if r.section == panel and names[(panel, r.label)] in paper_rows]
        blocks.append(_Block(
            section=panel if len({r.section for r in table.rows}) > 1 else None,
            labels=tuple(r.label for r, _ in members),
            paper_rows=tuple(row for _, row in members),
            ours=tuple(tuple((r.values[c], (r.spread or ())[c] if r.spread else None)
                             for c, _ in picked) for r, _ in members)))
    return _ordering_versus(f"{table.name}-vs-paper",
                            f"{table.title.split(':')[0]} vs the paper's {paper_table}",
                            "Variant", paper_table, refs, blocks)


def prefix_table(report: HealthReport) -> list[PaperTable]:
    """Table 1 from each ``probe:prefix-intervene`` run's ``summary.json``: rows the buckets'
    ΔStepAcc and ΔE(y), columns Conformity and Novelty (% change vs unmodified rollouts),
    with a "vs paper" companion giving each cell's interval and sign agreement."""
    from dasd.runlog import json_shape, read_json

    runs = sorted((info for info in report.runs if info.kind == "probe:prefix-intervene"),
                  key=lambda info: _natural(info.label))
    tables = []
    for info in runs:
        summary = read_json(info.path, "summary", expect=dict)
        with json_shape(info.path / "summary.json"):
            cells = {(c["bucket"], c["metric"], c["mode"]):
                     {x: c[x] for x in ("delta_pct", "ci_low", "ci_high")}
                     for c in summary.get("cells", [])}
            level = (summary.get("ci") or {}).get("level", 0.95)
        buckets = [b for b in TABLE1_BUCKETS if any(key[0] == b for key in cells)]
        if not buckets:
            continue
        suffix = "" if len(runs) == 1 else f"-{re.sub(r'[^A-Za-z0-9_.-]+', '-', info.label)}"
        rows, text_rows, verdicts = [], [], []
        for bucket in buckets:
            section = TABLE1_BUCKETS[bucket]
            for metric, metric_name in TABLE1_METRICS.items():
                ours = [cells.get((bucket, metric, mode)) for mode in TABLE1_MODES]
                rows.append(Row(metric_name, tuple(
                    None if c is None else _finite(c["delta_pct"]) for c in ours),
                    section=section, indent=True))
                texts: list[str] = []
                for mode, cell in zip(TABLE1_MODES.values(), ours):
                    paper = paper_value("Table 1", metric_name, mode, section=section)
                    value, low, high = (math.nan, math.nan, math.nan) if cell is None else (
                        _float(cell["delta_pct"]), _float(cell["ci_low"]),
                        _float(cell["ci_high"]))
                    verdict = (bound_agreement(TABLE1_CONTROL_BOUND, value, low, high)
                               if bucket == "random" else sign_agreement(paper, value, low, high))
                    verdicts.append(verdict)
                    texts += [_estimate(value, low, high, "+.1f"), f"{paper:+g}", verdict]
                text_rows.append(TextRow(metric_name, tuple(texts), section, indent=True))
        run_note = (f"Run {info.label}: {summary.get('n_prompts')} prompts x "
                    f"{summary.get('k')} samples per condition.")
        title = "Table 1: Prefix interventions (% change vs unmodified rollouts)"
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(
            ("agrees", "disagrees", "inconclusive", "not measured")))
        columns = [text for mode in TABLE1_MODES.values()
                   for text in (mode, f"{mode}: paper", f"{mode}: sign")]
        versus = Versus(
            name=f"table1{suffix}-vs-paper", title="Table 1 vs the paper's Table 1",
            corner="Bucket / metric", columns=tuple(columns), rows=tuple(text_rows),
            notes=((f"Ours: % change [{level:.0%} paired bootstrap interval over prompts]. "
                   "Sign: agrees when our interval excludes 0 on the paper's side, disagrees "
                   "when it excludes 0 on the other, inconclusive when it contains 0; for the "
                   f"Random-H_t control, whose effects the paper bounds by |Δ| ≤ "
                   f"{TABLE1_CONTROL_BOUND:g}%, agrees when our interval lies inside that band, "
                   "disagrees when wholly outside (analysis.agreement)."), f"Sign agreement: {counts}.", run_note))
        tables.append(PaperTable(
            name=f"table1{suffix}", title=title, corner="Bucket / metric",
            columns=tuple(TABLE1_MODES.values()), rows=tuple(rows),
            formats=("+.1f", "+.1f"), mark="none", notes=(run_note,), versus=versus))
    return tables


def _float(value: Any) -> float:
    """A logged number; None (JSON's NaN) as NaN."""
    return math.nan if value is None else float(value)


def _finite(value: Any) -> float | None:
    number = _float(value)
    return None if math.isnan(number) else number


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class TableSpec:
    """A paper table: its number, what runs it needs, and its builder (None: not buildable
    yet). A builder returns the table(s), or None / [] when the runs hold no data for it."""

    number: str
    needs: str
    build: Callable[[HealthReport], PaperTable | list[PaperTable] | None] | None = None
    aliases: tuple[str, ...] = field(default=())


_ABLATION_COLUMNS = (
    (EACH_TASK, "avg_at_k", "{task} ↑", 100.0, ".1f"),
    (None, "ey_density", "E(y) ↑", 1.0, ".1f"),
)
_QUANTILE_COLUMNS = (
    (EACH_TASK, "avg_at_k", "{task} Avg@k", 100.0, ".1f"),
    (EACH_TASK, "pass_at_k", "{task} Pass@k", 100.0, ".1f"),
)


def _ablation(number: str, title: str, panels: tuple[str, ...],
              columns: Sequence[tuple[str | None, str, str, float, str]] = _ABLATION_COLUMNS
              ) -> Callable[[HealthReport], PaperTable | None]:
    def build(report: HealthReport) -> PaperTable | None:
        return variant_table(report, name=f"table{number}", title=f"Table {number}: {title}",
                             panels=panels, columns=columns, paper_table=f"Table {number}")
    return build


#: Every table of the paper this toolkit regenerates, in the paper's order.
TABLES: tuple[TableSpec, ...] = (
    TableSpec("1", "probe:prefix-intervene runs (dasd-probe prefix-intervene --bucket "
                   "low|high|random|all)", prefix_table),
    TableSpec("2", "eval runs (dasd-probe eval) of base models and trained checkpoints",
              lambda report: benchmark_table(
                  report, name="table2",
                  title="Tables 2 and 6: {metric} (%; higher is better); bold/underline mark "
                        "best/second-best within each model.",
                  metric="avg_at_k", metric_label="Avg", paper_table="Table 2"),
              aliases=("6",)),
    TableSpec("3", "runs with eval rollouts (dasd-probe train logs them every N steps)",
              health_table),
    TableSpec("5", "probe:ablate runs of panels routing, direction and gate "
                   "(dasd-probe ablate --panel routing|direction|gate)",
              _ablation("5", "DASD design-space ablation; task columns Avg@k, E(y) density.",
                        ("routing", "direction", "gate"))),
    TableSpec("7", "eval runs (dasd-probe eval) of base models and trained checkpoints",
              lambda report: benchmark_table(
                  report, name="table7",
                  title="Table 7: {metric} (%; higher is better); bold/underline mark "
                        "best/second-best within each model.",
                  metric="pass_at_k", metric_label="Pass", paper_table="Table 7")),
    TableSpec("11", "probe:ablate runs of panel quantile (dasd-probe ablate --panel quantile)",
              _ablation("11", "Sensitivity of DASD to the router quantile rho.",
                        ("quantile",), _QUANTILE_COLUMNS)),
    TableSpec("12", "probe:ablate runs of panel routing (dasd-probe ablate --panel routing)",
              _ablation("12", "Design space, panel A: routing variable.", ("routing",))),
    TableSpec("13", "probe:ablate runs of panel direction (dasd-probe ablate --panel direction)",
              _ablation("13", "Design space, panel B: direction map.", ("direction",))),
    TableSpec("14", "probe:ablate runs of panel gate (dasd-probe ablate --panel gate)",
              _ablation("14", "Design space, panel C: reliability gate.", ("gate",))),
)


def build_tables(report: HealthReport) -> tuple[list[PaperTable], list[str]]:
    """Every table the report's runs support, and one "no data for Table N (needs …)" line
    for each of the others."""
    tables: list[PaperTable] = []
    missing: list[str] = []
    for spec in TABLES:
        built = spec.build(report) if spec.build is not None else None
        built = [built] if isinstance(built, PaperTable) else list(built or [])
        built = [t for t in built if t.rows]
        if built:
            tables.extend(built)
        else:
            names = " and ".join([spec.number, *spec.aliases])
            plural = "s" if spec.aliases else ""
            missing.append(f"no data for Table{plural} {names} (needs {spec.needs})")
    return tables, missing


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_tables(tables: Sequence[PaperTable], missing: Sequence[str], out: Path
                 ) -> list[Path]:
    """``out/<name>.md|.tex|.csv`` for each table and ``out/<name>-vs-paper.md|.tex|.csv`` for
    its paper comparison, and ``out/tables.md`` with all of them (each comparison after its
    table) and the missing-table lines; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        for part in (table, table.versus):
            if part is None:
                continue
            for suffix, text in ((".md", part.to_markdown()), (".tex", part.to_latex()),
                                 (".csv", part.to_csv())):
                path = out / f"{part.name}{suffix}"
                _write(path, text)
                written.append(path)
    index = "\n".join([*(part.to_markdown() for t in tables for part in (t, t.versus)
                         if part is not None),
                       *(f"- {line}" for line in missing)]) + "\n"
    _write(out / "tables.md", "# Paper tables from run directories\n\n" + index)
    written.append(out / "tables.md")
    return written
