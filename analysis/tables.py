"""The paper's tables, regenerated from run directories only (DESIGN.md section 7).

Which runs feed which table (every number comes from logged rollouts, through
:func:`analysis.health.analyze_runs`, at each run's last logged step of the ``eval`` split):

* Tables 2 and 6 (section 5, appendix D; Avg@k) and Table 7 (appendix D; Pass@k): runs of
  kind ``eval``. Rows are model / method (manifest ``model`` and ``method``; an eval run of a
  checkpoint inside a train run directory takes that run's model and method), grouped by
  model with the base model first; columns are the task or benchmark (the config's
  ``benchmark`` when present, else the manifest's ``task``), plus the macro average when there
  are several. Pass@k uses k = n, the samples per prompt (the paper's Pass@16 with 16).
* Table 3 (section 5; reasoning health): every analysed run; rows are the metrics grouped
  Execution / Exploration / Outcome, columns the methods; one table per task.
* Tables 1, 5 and 11-14 need probe and ablation runs (:data:`TABLES` says which); until they
  exist each gives one line, "no data for Table N (needs ...)". Tables 5 and 11-14 are
  already data-driven: :func:`variant_table` builds them from the health rows of runs whose
  kind is ``probe:ablate`` and whose config names the ``panel`` and the ``variant``; Table 1
  needs a builder for the prefix-intervention probe's output.

Formatting follows the paper: percentages with one decimal (Avg@k, Pass@k, StepAcc, CSR),
bold for the best and underline for the second-best value within each comparison (per
column within a model's block for Tables 2/6/7; per metric across methods for Table 3; per
column for the ablation tables). Ties (equal printed values) share the mark; a comparison of
one value marks nothing, of two marks only the best. Higher is better everywhere, as the
paper's arrows say. Outputs are Markdown (underline as ``<u>…</u>``), LaTeX (booktabs) and
CSV (the printed numbers, without marks); the same runs always give the same bytes (sorted
rows, no timestamps, run names rather than paths).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.health import HealthReport, RunInfo
from analysis.intervals import t_interval

__all__ = [
    "Row",
    "PaperTable",
    "TableSpec",
    "TABLES",
    "BENCHMARKS",
    "METHOD_LABELS",
    "build_tables",
    "benchmark_table",
    "health_table",
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
METHOD_LABELS: dict[str, str] = {
    "grpo": "GRPO",
    "hepo": "HEPO",
    "opsd": "OPSD",
    "sdpo": "SDPO",
    "rlsd": "RLSD",
    "srpo": "SRPO",
    "dasd": "DASD",
    "conformity": "Conformity",
    "novelty": "Novelty",
}
BASE = "base"


# --------------------------------------------------------------------------- the table model


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
    ``"column"`` (within a section), ``"row"`` (across the columns of a row) or ``"none"``."""

    name: str  # file stem, e.g. "table2"
    title: str
    corner: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    formats: tuple[str, ...]
    mark: str = "column"
    notes: tuple[str, ...] = ()

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
    def to_markdown(self) -> str:
        cells, marks = self.cells(), self.marks()
        wrap = {"best": "**{}**", "second": "<u>{}</u>", "": "{}"}
        lines = [f"### {self.title}", "",
                 "| " + " | ".join([self.corner, *self.columns]) + " |",
                 "| " + " | ".join(["---", *("---:" for _ in self.columns)]) + " |"]
        for r, row in enumerate(self.rows):
            new_section = r == 0 or row.section != self.rows[r - 1].section
            if new_section and row.section is not None and row.indent:
                lines.append("| " + " | ".join([f"*{_md(row.section)}*",
                                                *("" for _ in self.columns)]) + " |")
            label = ("&nbsp;&nbsp;" if row.indent else "") + _md(row.label)
            values = [wrap[m].format(v) + self._spread(r, c, "±")
                      for c, (v, m) in enumerate(zip(cells[r], marks[r]))]
            lines.append("| " + " | ".join([label, *values]) + " |")
        lines += [""] + [f"{note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def to_latex(self) -> str:
        cells, marks = self.cells(), self.marks()
        wrap = {"best": "\\textbf{{{}}}", "second": "\\underline{{{}}}", "": "{}"}
        n = len(self.columns)
        lines = [f"% {self.title}", "% Generated by dasd-analyze tables from run directories.",
                 "\\begin{tabular}{l" + "r" * n + "}", "\\toprule",
                 " & ".join([_tex(self.corner), *map(_tex, self.columns)]) + " \\\\",
                 "\\midrule"]
        for r, row in enumerate(self.rows):
            if r == 0 or row.section != self.rows[r - 1].section:
                if r > 0:
                    lines.append("\\midrule")
                if row.section is not None and row.indent:
                    lines.append(f"\\multicolumn{{{n + 1}}}{{l}}{{\\textit{{{_tex(row.section)}}}}}"
                                 " \\\\")
            label = ("\\quad " if row.indent else "") + _tex(row.label)
            values = [wrap[m].format(v.replace("–", "--")) + self._spread(r, c, "$\\pm$")
                      for c, (v, m) in enumerate(zip(cells[r], marks[r]))]
            lines.append(" & ".join([label, *values]) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        lines += [f"% {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["section", self.corner, *self.columns])
        for row, printed in zip(self.rows, self.cells()):
            writer.writerow([row.section or "", row.label,
                             *("" if v == "–" else v for v in printed)])
        return buffer.getvalue()


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", "|": r"\textbar{}", "<": r"\textless{}",
                ">": r"\textgreater{}", "↑": r"$\uparrow$", "–": "--"}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


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


def _keyed(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows.copy()
    out["model"] = out["model"].fillna("?").astype(str)
    out["method"] = out["method"].fillna(BASE).astype(str)
    out["task"] = out["task"].fillna("?").astype(str)
    return out


def _averaged(rows: pd.DataFrame, keys: list[str], metrics: Sequence[str]
              ) -> tuple[pd.DataFrame, list[str]]:
    """Mean of ``metrics`` over runs sharing ``keys``, and a note for each such group."""
    notes = []
    for key, group in rows.groupby(keys, sort=True):
        if len(group) > 1:
            key = key if isinstance(key, tuple) else (key,)
            notes.append(f"{' / '.join(map(str, key))}: mean of {len(group)} runs "
                         f"({', '.join(sorted(group['run']))}).")
    mean = rows.groupby(keys, sort=True)[list(metrics)].mean().reset_index()
    return mean, notes


def _runs_note(rows: pd.DataFrame) -> str:
    return "Runs: " + ", ".join(sorted(set(rows["run"]))) + "."


# --------------------------------------------------------------------------- builders


def benchmark_table(report: HealthReport, *, name: str, title: str, metric: str,
                    metric_label: str) -> PaperTable | None:
    """Tables 2/6/7 layout: rows model / method, columns tasks (+ macro average), ``metric``
    (a health column in [0, 1]) in percent."""
    rows = _last_steps(report.rows)
    rows = rows[rows["kind"] == "eval"] if not rows.empty else rows
    if rows.empty:
        return None
    rows = _keyed(rows)
    mean, notes = _averaged(rows, ["model", "method", "task"], [metric, "k"])
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
    table_rows = []
    for model in sorted(mean["model"].unique(), key=_natural):
        block = mean[mean["model"] == model]
        methods = sorted(block["method"].unique(), key=_method_key)
        if BASE not in methods:
            table_rows.append(Row(model, tuple(None for _ in columns), section=model))
        for method in methods:
            cells = block[block["method"] == method].set_index("task")[metric]
            values = [100.0 * float(cells[t]) if t in cells.index else None for t in tasks]
            if with_avg:
                values.append(float(np.mean(values)) if None not in values else None)
            label = model if method == BASE else f"+{_method_label(method)}"
            table_rows.append(Row(label, tuple(values), section=model,
                                  indent=method != BASE))
    return PaperTable(
        name=name, title=title.format(metric=f"{metric_label}@{k_text}"),
        corner="Model / method", columns=tuple(columns), rows=tuple(table_rows),
        formats=tuple(".1f" for _ in columns), mark="column",
        notes=(*notes, _runs_note(rows)),
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
    """Table 3: reasoning health at each run's last eval step; one table per task."""
    rows = _last_steps(report.rows)
    if rows.empty:
        return []
    rows = _keyed(rows)
    metrics = [m for _, _, m, _, _ in HEALTH_ROWS]
    mean, notes = _averaged(rows, ["task", "model", "method"], [*metrics, "k"])
    tasks = sorted(mean["task"].unique(), key=_task_key)
    tables = []
    for task in tasks:
        block = mean[mean["task"] == task]
        several_models = block["model"].nunique() > 1
        order = sorted(zip(block["model"], block["method"]),
                       key=lambda mm: (_method_key(mm[1]), _natural(mm[0])))
        columns = []
        for model, method in order:
            label = model if method == BASE else _method_label(method)
            columns.append(f"{label} ({model})" if several_models and method != BASE
                           else label)
        ks = sorted({int(k) for k in block["k"]})
        k_text = str(ks[0]) if len(ks) == 1 else "k"
        table_rows, formats = [], []
        for group, label, metric, scale, fmt in HEALTH_ROWS:
            values = []
            for model, method in order:
                value = block[(block["model"] == model) & (block["method"] == method)][metric]
                v = float(value.iloc[0])
                values.append(None if math.isnan(v) else scale * v)
            table_rows.append(Row(label.format(k=k_text), tuple(values), section=group,
                                  indent=True))
            formats.append(fmt)
        task_notes = [n for n in notes if n.startswith(f"{task} /")]
        if any(math.isnan(float(v)) for v in block["step_acc"]):
            task_notes.append("–: no step correctness logged and no step judge for the task.")
        suffix = "" if len(tasks) == 1 else f"-{re.sub(r'[^A-Za-z0-9_.-]+', '-', task)}"
        tables.append(PaperTable(
            name=f"table3{suffix}",
            title=f"Table 3: Reasoning health on {_task_label(task)} (last eval step of each "
                  "run). Higher is better.",
            corner="Metric", columns=tuple(columns), rows=tuple(table_rows),
            formats=tuple(formats), mark="row",
            notes=(*task_notes, _runs_note(rows[rows["task"] == task])),
        ))
    return tables


#: Task of an ablation column that stands for one column per task present (in the
#: paper's benchmark order), its header formatted with ``{task}``.
EACH_TASK = "*"


def _ablation_row(info: RunInfo) -> tuple[str, str, float] | None:
    """(panel, row label, row order) of an ablation run, or None for other runs: a
    ``probe:ablate`` run whose config names its ``panel`` (the config's ``variant``, else the
    run name, labels the row), or a train run inside a ``probe:ablate`` parent whose config
    maps it to a variant (``runs``), labelled by ``labels`` and ordered by ``variants``
    (``probes.ablate``)."""
    from dasd.runlog import RunLogError, read_manifest

    if info.kind.startswith("probe:ablate") and "panel" in info.config:
        return str(info.config["panel"]), str(info.config.get("variant", info.label)), math.inf
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
            float(order.index(variant)) if variant in order else math.inf)


def variant_table(report: HealthReport, *, name: str, title: str, panels: Sequence[str],
                  columns: Sequence[tuple[str | None, str, str, float, str]]
                  ) -> PaperTable | None:
    """An ablation table (Tables 5, 11-14): one row per variant, grouped by panel, in the
    probe's row order (else by name); each cell the mean over the variant's runs (seeds) with
    the half-width of its 95% Student-t interval when there are several.

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
    rows = _keyed(rows)
    rows["panel"] = rows["run"].map(lambda r: keys[r][0])
    rows["variant"] = rows["run"].map(lambda r: keys[r][1])
    order = {(keys[r][0], keys[r][1]): keys[r][2] for r in rows["run"]}
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
                half = t_interval(one[metric].to_numpy()).half_width
                spreads.append(None if math.isnan(half) else scale * half)
            spread_shown |= any(v is not None for v in spreads)
            table_rows.append(Row(variant, tuple(values), section=panel_name,
                                  indent=len(panels) > 1, spread=tuple(spreads)))
    if spread_shown:
        notes.append("±: half-width of the 95% Student-t interval across a row's runs "
                     "(seeds); the CSV holds the means.")
    return PaperTable(
        name=name, title=title, corner="Variant",
        columns=tuple(header for _, _, header, _, _ in columns), rows=tuple(table_rows),
        formats=tuple(fmt for *_, fmt in columns), mark="column",
        notes=(*notes, _runs_note(rows)),
    )


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
                             panels=panels, columns=columns)
    return build


#: Every table of the paper this toolkit regenerates, in the paper's order.
TABLES: tuple[TableSpec, ...] = (
    TableSpec("1", "probe:prefix-intervene runs (dasd-probe prefix-intervene --bucket "
                   "low|high|random) and a builder for their interventions output"),
    TableSpec("2", "eval runs (dasd-probe eval) of base models and trained checkpoints",
              lambda report: benchmark_table(
                  report, name="table2",
                  title="Tables 2 and 6: {metric} (%; higher is better); bold/underline mark "
                        "best/second-best within each model.",
                  metric="avg_at_k", metric_label="Avg"), aliases=("6",)),
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
                  metric="pass_at_k", metric_label="Pass")),
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
    """``out/<name>.md|.tex|.csv`` for each table and ``out/tables.md`` with all of them and
    the missing-table lines; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        for suffix, text in ((".md", table.to_markdown()), (".tex", table.to_latex()),
                             (".csv", table.to_csv())):
            path = out / f"{table.name}{suffix}"
            _write(path, text)
            written.append(path)
    index = "\n".join([*(t.to_markdown() for t in tables),
                       *(f"- {line}" for line in missing)]) + "\n"
    _write(out / "tables.md", "# Paper tables from run directories\n\n" + index)
    written.append(out / "tables.md")
    return written
