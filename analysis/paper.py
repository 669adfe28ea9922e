"""The paper's reported numbers, as reference data for the comparisons (``analysis.agreement``,
``analysis.tables``) and the probes' printed summaries.

Every value is transcribed from the paper's text (``../shared/paper/dasd-paper.txt``) with the
paper's table, section (a table's row group), row and column names; ``tests/test_paper.py``
re-reads the flattened table lines of that text and checks every table value against them.

What is here:

* Table 1 (section 3, Probe 3): prefix interventions, % change vs unmodified rollouts.
* Tables 2 and 6 (section 5, appendix D): Avg@16; Table 6 restates Table 2 and both are kept
  under their own names. Table 7 (appendix D): Pass@16. Sections are the model blocks
  (``Qwen3-1.7B``, ``Qwen3-4B``, ``Qwen3-8B``); the base model's row is named by the model,
  the others ``+GRPO`` ... ``+DASD (ours)`` (citation numbers dropped).
* Table 3 (section 5): reasoning health at AIME24 convergence, Qwen3-1.7B.
* Table 5 (section 6, RQ3) and its full panels, Tables 12-14 (appendix G): AIME24 / AIME25
  Avg@16 and E(y); Table 11 (appendix G.1): the router-quantile sweep. The text columns of
  Tables 12-14 ("Replacement being tested", "Takeaway") are not numbers and are left out.
* Numbers the text quotes for figures: Figure 3 (Spearman ρ_s(A_t, H_t) = +0.52), Figure 4
  (AIME24 Pass@k of DASD at k = 16, 64, 128; OPSD's plateau "near 44%"), Figure 8 (macro
  Avg@16 per scale, its gains and the DASD - GRPO gaps).

Left out, with the reason:

1. Tables 4 and 8-10 (cross-domain and cross-family): no probe or analysis of this toolkit
   produces them.
2. Figures 2, 5, 6, 7, 9 and 10: the text states no numbers for them, only directions (e.g.
   Figure 6a's 80th-percentile ordering OPSD < GRPO < DASD), and Table 1's "|Δ| ≤ 5%" for the
   random control is a bound, not a cell. Figure 4's Pass@1 ("close to GRPO") has no number.
3. Figure 4's OPSD plateau is approximate in the text ("near 44%"); its ``note`` says so.

Names: "E(y)" for the paper's E(y); "H_t" for its H_t; "ρ" where the paper writes ρ; the minus
sign of Table 5 / 13's "const. −1" is written "-1". Higher is better for every table here (the
paper's arrows); for signed changes (Table 1) and correlations (Figure 3) ``higher_is_better``
only says which direction of the underlying metric is good.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from dasd.method_styles import METHOD_STYLES

__all__ = [
    "ABLATION_ROWS",
    "BENCHMARK_COLUMNS",
    "METHOD_ROWS",
    "PAPER_MODELS",
    "PAPER_VALUES",
    "TABLE1_BUCKETS",
    "TABLE1_CONTROL_BOUND",
    "TABLE1_METRICS",
    "TABLE1_MODES",
    "TABLE3_METHODS",
    "TABLE3_ROWS",
    "PaperValue",
    "method_row",
    "paper_tables",
    "paper_value",
    "paper_values",
]


@dataclass(frozen=True)
class PaperValue:
    """One number of the paper: where it is (``table``, ``section``, ``row``, ``column``, in
    the paper's names), its ``value`` as printed, whether higher is better, and a ``note``
    where the text qualifies the number."""

    table: str
    """``"Table 2"``, ``"Figure 3"``, ..."""
    row: str
    column: str
    value: float
    higher_is_better: bool = True
    section: str = ""
    """The row group (a model block, a metric group, an ablation panel); "" for none."""
    note: str = ""


#: Table 1's sections, rows and columns by the prefix-intervention probe's names
#: (``probes.prefix_intervene``: buckets, metrics, modes), in the paper's order.
TABLE1_BUCKETS: dict[str, str] = {"low": "Low-H_t scaffolding", "high": "High-H_t forks",
                                  "random": "Random-H_t control"}
#: Section 3 (Finding 3): "The Random-H_t control keeps all effects near zero (|Δ| ≤ 5%)", a
#: bound on every cell of Table 1's control rows, in %.
TABLE1_CONTROL_BOUND = 5.0
TABLE1_METRICS: dict[str, str] = {"step_acc": "ΔStepAcc", "ey_density": "ΔE(y)"}
TABLE1_MODES: dict[str, str] = {"conformity": "Conformity", "novelty": "Novelty"}
#: Table 3's rows by health column (``analysis.health``) and its columns by method name.
TABLE3_ROWS: dict[str, str] = {
    "step_acc": "Step accuracy", "fes": "First-error step", "csr": "Correct-step ratio",
    "ey_density": "E(y) density", "rev_rate": "Revision rate", "dist3": "Distinct-3",
    "avg_at_k": "Avg@16",
}
TABLE3_METHODS: dict[str, str] = {"grpo": "GRPO", "opsd": "OPSD", "dasd": "DASD"}
#: Benchmark columns of Tables 2, 6 and 7, in the paper's order (``Avg``: their macro mean).
BENCHMARK_COLUMNS = ("MATH500", "Minerva", "HMMT25", "Olympiad", "AIME24", "AIME25", "Avg")
#: The model blocks of Tables 2, 6 and 7.
PAPER_MODELS = ("Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B")
#: Method registry name -> row of Tables 2, 6 and 7 (the base model's row is the model name).
METHOD_ROWS: dict[str, str] = {name: style.paper_row for name, style in METHOD_STYLES.items()
                               if style.paper_row is not None}

_METHOD_ORDER = tuple(METHOD_ROWS.values())
_AVG16 = {  # Tables 2 and 6 (Avg@16, %), model block -> base row then _METHOD_ORDER
    "Qwen3-1.7B": (
        (58.4, 17.5, 7.9, 33.4, 13.1, 10.6, 23.5),
        (68.2, 22.6, 11.5, 40.8, 32.5, 27.5, 33.8),
        (68.4, 22.8, 15.6, 42.8, 32.5, 29.2, 35.2),
        (59.2, 17.5, 8.5, 32.5, 15.0, 9.2, 23.6),
        (58.8, 17.8, 8.1, 32.8, 14.2, 9.8, 23.6),
        (68.7, 25.1, 15.2, 39.6, 35.4, 26.7, 35.1),
        (62.8, 20.1, 10.2, 36.6, 23.3, 17.1, 28.4),
        (70.4, 25.3, 17.7, 45.4, 35.0, 32.1, 37.7),
    ),
    "Qwen3-4B": (
        (67.0, 24.6, 15.2, 43.1, 23.1, 18.5, 31.9),
        (72.6, 28.2, 22.1, 47.0, 55.0, 49.8, 45.8),
        (72.7, 27.1, 21.2, 50.4, 53.3, 45.2, 45.0),
        (66.4, 24.8, 12.9, 43.2, 24.2, 20.0, 31.9),
        (66.9, 24.4, 13.3, 43.0, 25.0, 19.4, 32.0),
        (73.0, 28.5, 20.4, 44.9, 56.5, 47.7, 45.2),
        (69.6, 26.1, 17.7, 45.0, 40.0, 34.4, 38.8),
        (75.0, 31.0, 25.0, 57.5, 58.3, 50.0, 49.5),
    ),
    "Qwen3-8B": (
        (67.2, 24.7, 13.1, 44.3, 27.9, 21.0, 33.0),
        (73.0, 27.7, 20.8, 49.4, 59.4, 48.8, 46.5),
        (73.0, 28.7, 20.4, 50.3, 66.7, 49.0, 48.0),
        (67.5, 23.8, 15.0, 43.6, 27.5, 19.6, 32.8),
        (67.0, 24.1, 14.4, 43.9, 27.9, 20.4, 33.0),
        (73.0, 29.7, 20.8, 49.4, 62.3, 49.8, 47.5),
        (70.0, 25.9, 17.5, 46.8, 43.8, 34.6, 39.7),
        (76.0, 33.0, 25.0, 55.8, 71.7, 53.3, 52.5),
    ),
}
_PASS16 = {  # Table 7 (Pass@16, %), same layout
    "Qwen3-1.7B": (
        (73.4, 32.0, 33.3, 53.4, 26.7, 30.0, 41.5),
        (75.6, 37.5, 23.3, 54.3, 53.3, 56.7, 50.1),
        (76.2, 36.8, 36.7, 56.4, 60.0, 60.0, 54.3),
        (74.2, 32.7, 36.7, 53.1, 43.3, 23.3, 43.9),
        (73.8, 33.5, 33.3, 53.4, 40.0, 26.7, 43.4),
        (75.6, 39.3, 33.3, 52.8, 60.0, 46.7, 51.3),
        (74.8, 35.7, 30.0, 53.9, 50.0, 43.3, 47.9),
        (77.8, 40.4, 40.0, 59.0, 66.7, 63.3, 57.9),
    ),
    "Qwen3-4B": (
        (76.2, 36.0, 36.7, 58.6, 56.7, 43.3, 51.2),
        (76.6, 38.2, 50.0, 57.0, 80.0, 86.7, 64.8),
        (76.6, 36.8, 43.3, 61.6, 80.0, 76.7, 62.5),
        (75.8, 36.4, 40.0, 58.2, 50.0, 40.0, 50.1),
        (76.2, 35.7, 36.7, 58.5, 53.3, 36.7, 49.5),
        (75.8, 37.1, 40.0, 54.0, 76.7, 76.7, 60.0),
        (76.4, 36.8, 43.3, 57.9, 66.7, 60.0, 56.8),
        (78.4, 41.2, 53.3, 65.0, 86.7, 83.3, 68.0),
    ),
    "Qwen3-8B": (
        (75.6, 34.6, 33.3, 59.8, 53.3, 40.0, 49.4),
        (75.6, 37.5, 46.7, 60.7, 80.0, 80.0, 63.4),
        (76.2, 37.1, 43.3, 60.5, 86.7, 76.7, 63.4),
        (75.2, 33.8, 43.3, 59.0, 53.3, 40.0, 50.8),
        (75.6, 34.2, 40.0, 58.8, 56.7, 43.3, 51.4),
        (76.2, 39.7, 43.3, 59.2, 83.3, 76.7, 63.1),
        (76.0, 36.0, 43.3, 59.8, 66.7, 60.0, 57.0),
        (78.8, 42.6, 53.3, 65.6, 90.0, 83.3, 69.0),
    ),
}
_TABLE1 = {  # section -> row -> (Conformity, Novelty), % change; names: TABLE1_*
    "Low-H_t scaffolding": {"ΔStepAcc": (18.3, -79.4), "ΔE(y)": (-4.21, 5.03)},
    "High-H_t forks": {"ΔStepAcc": (-2.17, -6.18), "ΔE(y)": (-86.2, 61.3)},
    "Random-H_t control": {"ΔStepAcc": (1.84, -2.09), "ΔE(y)": (-3.56, 4.47)},
}
_TABLE3 = {  # section -> row -> (GRPO, OPSD, DASD)
    "Execution quality": {"Step accuracy": (58.4, 59.1, 63.7),
                          "First-error step": (4.2, 4.4, 5.1),
                          "Correct-step ratio": (61.3, 62.0, 66.8)},
    "Exploration quality": {"E(y) density": (3.8, 0.7, 4.3),
                            "Revision rate": (0.41, 0.06, 0.47),
                            "Distinct-3": (0.72, 0.51, 0.81)},
    "Outcome anchor": {"Avg@16": (32.5, 15.0, 35.0)},
}
_DESIGN_SPACE = {  # Table 5 section -> rows (AIME24, AIME25, E(y)); Tables 12-14 name rows apart
    "A. Routing signal": {
        "Position proxy": (17.8, 15.9, 1.6),
        "Token frequency": (20.4, 17.7, 2.1),
        "Gradient norm": (25.1, 22.8, 2.8),
        "Attention entropy": (30.9, 27.9, 3.9),
        "Student entropy H_t": (35.0, 32.1, 4.3),
    },
    "B. Direction map": {
        "OPSD: const. +1": (15.0, 9.2, 0.7),
        "Novelty: const. -1": (12.0, 10.6, 5.6),
        "Hard threshold": (31.5, 28.4, 4.0),
        "Linear ramp": (33.6, 30.6, 4.1),
        "tanh direction": (35.0, 32.1, 4.3),
    },
    "C. Reliability gate": {
        "No gate": (29.4, 26.3, 3.8),
        "Fixed threshold": (28.6, 25.6, 3.7),
        "Magnitude-only": (30.8, 27.7, 4.0),
        "Gap-reliability gate": (35.0, 32.1, 4.3),
    },
}
_FULL_PANELS = {  # Tables 12-14: rows (AIME24, AIME25, E(y))
    "Table 12": {
        "Position proxy": (17.8, 15.9, 1.6),
        "Token frequency": (20.4, 17.7, 2.1),
        "Gradient norm": (25.1, 22.8, 2.8),
        "Attention entropy": (30.9, 27.9, 3.9),
        "Student entropy H_t": (35.0, 32.1, 4.3),
    },
    "Table 13": {
        "OPSD: constant +1": (15.0, 9.2, 0.7),
        "Novelty: constant -1": (12.0, 10.6, 5.6),
        "Hard threshold": (31.5, 28.4, 4.0),
        "Linear ramp": (33.6, 30.6, 4.1),
        "tanh direction": (35.0, 32.1, 4.3),
    },
    "Table 14": {
        "No gate": (29.4, 26.3, 3.8),
        "Fixed threshold": (28.6, 25.6, 3.7),
        "Magnitude-only": (30.8, 27.7, 4.0),
        "Gap-reliability gate": (35.0, 32.1, 4.3),
    },
}
_TABLE11_COLUMNS = ("MATH500 Avg@16", "MATH500 Pass@16", "AIME24 Avg@16", "AIME24 Pass@16",
                    "AIME25 Avg@16", "AIME25 Pass@16")
_TABLE11 = {
    "0.05 (Novelty-biased)": (67.9, 75.7, 26.1, 58.4, 22.8, 54.7),
    "0.20 (default)": (70.4, 77.8, 35.0, 66.7, 32.1, 63.3),
    "0.50": (69.9, 77.4, 33.5, 65.0, 30.4, 61.2),
    "0.75": (69.1, 76.7, 29.8, 61.9, 26.7, 57.9),
    "0.95 (Conformity-biased)": (67.7, 75.3, 21.5, 54.5, 18.9, 50.1),
}
_AIME_EY = ("AIME24", "AIME25", "E(y)")


def _grid(table: str, rows: dict[str, tuple[float, ...]], columns: Iterable[str],
          section: str = "") -> list[PaperValue]:
    columns = tuple(columns)
    return [PaperValue(table, row, column, value, section=section)
            for row, values in rows.items() for column, value in zip(columns, values, strict=True)]


def _benchmark_values(table: str, blocks: dict[str, tuple[tuple[float, ...], ...]]
                      ) -> list[PaperValue]:
    out = []
    for model, rows in blocks.items():
        named = dict(zip((model, *_METHOD_ORDER), rows, strict=True))
        out += _grid(table, named, BENCHMARK_COLUMNS, section=model)
    return out


def _figures() -> list[PaperValue]:
    """Numbers the text quotes for figures (module docstring)."""
    out = [PaperValue("Figure 3", "A_t vs H_t", "Spearman ρ_s", 0.52, section="(a)")]
    out += [PaperValue("Figure 4", "DASD", f"Pass@{k}", v, section="AIME24")
            for k, v in ((16, 66.7), (64, 83.3), (128, 90.0))]
    out.append(PaperValue("Figure 4", "OPSD", "Pass@k plateau (k >= 16)", 44.0,
                          section="AIME24",
                          note="approximate: the text says OPSD 'plateaus near 44% after "
                               "k=16'"))
    scales = PAPER_MODELS
    macro = {"DASD": (37.7, 49.5, 52.5), "GRPO": (33.8, 45.8, 46.5), "Base": (23.5, 31.9, 33.0)}
    out += _grid("Figure 8", macro, scales, section="Macro Avg@16")
    out += _grid("Figure 8", {"DASD - GRPO": (3.9, 3.7, 6.0)}, scales, section="Gap")
    gains = {"DASD": (14.8,), "GRPO": (12.7,), "Base": (9.5,)}
    out += _grid("Figure 8", gains, ("Gain 1.7B -> 8B",), section="Gain")
    return out


def _all_values() -> tuple[PaperValue, ...]:
    out: list[PaperValue] = []
    for section, rows in _TABLE1.items():
        out += _grid("Table 1", rows, ("Conformity", "Novelty"), section=section)
    out += _benchmark_values("Table 2", _AVG16)
    for section, rows in _TABLE3.items():
        out += _grid("Table 3", rows, ("GRPO", "OPSD", "DASD"), section=section)
    for section, rows in _DESIGN_SPACE.items():
        out += _grid("Table 5", rows, _AIME_EY, section=section)
    out += _benchmark_values("Table 6", _AVG16)
    out += _benchmark_values("Table 7", _PASS16)
    out += _grid("Table 11", _TABLE11, _TABLE11_COLUMNS)
    for table, rows in _FULL_PANELS.items():
        out += _grid(table, rows, _AIME_EY)
    return tuple(out + _figures())


#: Every transcribed number, tables in the paper's order, then the figures' numbers.
PAPER_VALUES: tuple[PaperValue, ...] = _all_values()

#: The ablation probe's variants (``probes.ablate``: panel -> variant name) as rows of the
#: paper's tables: panel -> table -> variant -> row. Each panel maps to its full table
#: (Tables 11-14) and, for routing, direction and gate, to its section of Table 5.
ABLATION_ROWS: dict[str, dict[str, dict[str, str]]] = {
    "routing": {
        "Table 12": {"position": "Position proxy", "frequency": "Token frequency",
                     "grad_norm": "Gradient norm", "attention": "Attention entropy",
                     "entropy": "Student entropy H_t"},
        "Table 5": {"position": "Position proxy", "frequency": "Token frequency",
                    "grad_norm": "Gradient norm", "attention": "Attention entropy",
                    "entropy": "Student entropy H_t"},
    },
    "direction": {
        "Table 13": {"plus": "OPSD: constant +1", "minus": "Novelty: constant -1",
                     "hard": "Hard threshold", "linear": "Linear ramp", "tanh": "tanh direction"},
        "Table 5": {"plus": "OPSD: const. +1", "minus": "Novelty: const. -1",
                    "hard": "Hard threshold", "linear": "Linear ramp", "tanh": "tanh direction"},
    },
    "gate": {
        "Table 14": {"none": "No gate", "fixed": "Fixed threshold", "magnitude": "Magnitude-only",
                     "sigmoid": "Gap-reliability gate"},
        "Table 5": {"none": "No gate", "fixed": "Fixed threshold", "magnitude": "Magnitude-only",
                    "sigmoid": "Gap-reliability gate"},
    },
    "quantile": {
        "Table 11": {"0.05": "0.05 (Novelty-biased)", "0.2": "0.20 (default)", "0.5": "0.50",
                     "0.75": "0.75", "0.95": "0.95 (Conformity-biased)"},
    },
}


def _table_name(table: str) -> str:
    """``"2"`` -> ``"Table 2"``; a name with a word (``"Figure 3"``) is kept."""
    return f"Table {table}" if table.strip().isdigit() else table


def paper_tables() -> tuple[str, ...]:
    """The tables and figures with transcribed values, in the paper's order."""
    return tuple(dict.fromkeys(v.table for v in PAPER_VALUES))


def paper_values(table: str) -> pd.DataFrame:
    """The values of ``table`` (``"Table 2"`` or ``"2"``, ``"Figure 3"``): one row per number,
    columns ``section``, ``row``, ``column``, ``value``, ``higher_is_better``, ``note``, in
    the paper's order. An unknown table raises a ``ValueError`` listing the known ones."""
    name = _table_name(table)
    picked = [v for v in PAPER_VALUES if v.table == name]
    if not picked:
        raise ValueError(f"no paper values for {table!r}; known: {', '.join(paper_tables())}")
    return pd.DataFrame([{"section": v.section, "row": v.row, "column": v.column,
                          "value": v.value, "higher_is_better": v.higher_is_better,
                          "note": v.note} for v in picked])


def paper_value(table: str, row: str, column: str, *, section: str | None = None) -> float:
    """The paper's number at (``row``, ``column``) of ``table``; ``section`` is needed only
    where the row name repeats across sections (Tables 1, 2, 6, 7). Raises a ``ValueError``
    naming what is missing or ambiguous."""
    frame = paper_values(table)
    hits = frame[(frame["row"] == row) & (frame["column"] == column)]
    if section is not None:
        hits = hits[hits["section"] == section]
    if len(hits) == 1:
        return float(hits["value"].iloc[0])
    name = _table_name(table)
    if len(hits) > 1:
        raise ValueError(f"{name} has {row!r} / {column!r} in several sections "
                         f"({', '.join(hits['section'])}); pass section=")
    rows = ", ".join(dict.fromkeys(frame["row"]))
    columns = ", ".join(dict.fromkeys(frame["column"]))
    where = "" if section is None else f" in section {section!r}"
    raise ValueError(f"{name} has no cell {row!r} / {column!r}{where}; rows: {rows}; "
                     f"columns: {columns}")


def method_row(method: str | None, model: str) -> str | None:
    """The row of Tables 2, 6 and 7 for a method registry name (None: the base model, whose
    row is named by ``model``); None for a method the paper does not report."""
    if method is None:
        return model
    return METHOD_ROWS.get(method)

