"""analysis.paper: every transcribed table value against the paper's own flattened table lines
(skipped when ../shared/paper is absent), the lookup helpers, and the probes that take their
paper numbers from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analysis.paper import (
    ABLATION_ROWS,
    BENCHMARK_COLUMNS,
    PAPER_MODELS,
    PAPER_VALUES,
    TABLE1_BUCKETS,
    TABLE1_METRICS,
    TABLE1_MODES,
    TABLE3_ROWS,
    method_row,
    paper_tables,
    paper_value,
    paper_values,
)

PAPER = Path(__file__).parents[1].parent / "shared" / "paper" / "dasd-paper.txt"
needs_paper = pytest.mark.skipif(not PAPER.is_file(), reason=f"{PAPER} (the paper) absent")


def _lines() -> list[str]:
    return PAPER.read_text(encoding="utf-8").splitlines()


def _block(caption: str, n_lines: int) -> list[str]:
    """The ``n_lines`` non-empty lines after the line starting with ``caption``."""
    lines = _lines()
    start = next(i for i, line in enumerate(lines) if line.startswith(caption))
    return [line for line in lines[start + 1:] if line.strip()][:n_lines]


def _numbers(text: str) -> list[float]:
    """The cells of a flattened table line: plain numbers, the LaTeX-doubled ``17.817.8``,
    and Table 1's ``+18.3%`` / ``79.4%-79.4\\%`` / ``+5.03%+5.03\\%`` (the second, signed
    rendering wins)."""
    out = []
    patterns = (r"(\d+\.\d+)", r"(\d+\.\d+)\1", r"\+(\d+\.\d+)%",
                r"\+?\d+\.\d+%([+-]\d+\.\d+)\\%")
    for token in text.split():
        match = next((m for p in patterns if (m := re.fullmatch(p, token))), None)
        if match:
            out.append(float(match.group(1)))
    return out


def _ours(table: str) -> list[float]:
    return paper_values(table)["value"].tolist()


@needs_paper
@pytest.mark.parametrize("table", ["Table 2", "Table 6", "Table 7"])
def test_benchmark_tables_match_the_text(table):
    line = _block(f"{table}:", 1)[0]
    assert line.startswith("Method MATH500 Minerva HMMT25 Olympiad AIME24 AIME25 Avg")
    numbers = _numbers(line)
    assert len(numbers) == 3 * 8 * 7
    assert _ours(table) == numbers


@needs_paper
def test_table1_matches_the_text():
    lines = _block("Table 1:", 10)
    numbers = [x for line in lines for x in _numbers(line)]
    assert numbers == _ours("Table 1")
    assert len(numbers) == 12


@needs_paper
def test_table3_matches_the_text():
    numbers = [x for line in _block("Table 3:", 11) for x in _numbers(line)]
    assert numbers == _ours("Table 3") and len(numbers) == 21


@needs_paper
def test_table5_matches_the_text():
    lines = _block("Table 5:", 20)
    numbers = [x for line in lines for x in _numbers(line)]
    assert numbers == _ours("Table 5") and len(numbers) == 14 * 3


@needs_paper
def test_table11_matches_the_text():
    line = _block("Table 11:", 1)[0]
    numbers = _numbers(line)
    # Each row: its quantile (a number too), then six cells.
    rows = [numbers[i:i + 7] for i in range(0, len(numbers), 7)]
    assert [r[0] for r in rows] == [0.05, 0.2, 0.5, 0.75, 0.95]
    assert [x for r in rows for x in r[1:]] == _ours("Table 11")


@needs_paper
@pytest.mark.parametrize("table", ["Table 12", "Table 13", "Table 14"])
def test_design_space_panels_match_the_text(table):
    line = _block(f"{table}:", 1)[0]
    assert _numbers(line) == _ours(table)


@needs_paper
def test_figure_numbers_are_quoted_in_the_text():
    text = PAPER.read_text(encoding="utf-8")
    assert "Spearman ρs=+0.52\\rho_{s}{=}{+}0.52" in text
    assert "reaches 66.7%66.7\\% at k=16k=16" in text
    assert "83.3%83.3\\% at k=64k=64 and 90.0%90.0\\% at k=128k=128" in text
    assert "plateaus near 44%44\\% after k=16k=16" in text
    assert "(+3.9+3.7+6.0+3.9\\to+3.7\\to+6.0)" in text
    assert "(a +14.8+14.8-point absolute gain)" in text and "(+12.7+12.7)" in text
    from analysis.paper import TABLE1_CONTROL_BOUND

    b = f"{TABLE1_CONTROL_BOUND:g}"
    assert f"keeps all effects near zero (|Δ|{b}%|\\Delta|\\leq {b}\\%)" in text


def test_tables_2_and_6_agree_and_rows_are_complete():
    assert _ours("Table 2") == _ours("Table 6")
    t7 = paper_values("7")
    assert list(dict.fromkeys(t7["section"])) == list(PAPER_MODELS)
    assert list(dict.fromkeys(t7["column"])) == list(BENCHMARK_COLUMNS)
    assert list(dict.fromkeys(t7["row"])) == [
        "Qwen3-1.7B", "+GRPO", "+HEPO", "+OPSD", "+SDPO", "+RLSD", "+SRPO", "+DASD (ours)",
        "Qwen3-4B", "Qwen3-8B"]


def test_lookups_by_hand():
    assert paper_value("Table 2", "+DASD (ours)", "Avg", section="Qwen3-8B") == 52.5
    assert paper_value("7", "+HEPO", "HMMT25", section="Qwen3-1.7B") == 36.7
    assert paper_value("Table 3", "Revision rate", "OPSD") == 0.06
    assert paper_value("Table 1", "ΔStepAcc", "Novelty", section="Low-H_t scaffolding") == -79.4
    assert paper_value("Table 11", "0.95 (Conformity-biased)", "AIME25 Pass@16") == 50.1
    assert paper_value("Table 13", "Novelty: constant -1", "E(y)") == 5.6
    assert paper_value("Table 5", "Novelty: const. -1", "AIME24") == 12.0
    assert paper_value("Figure 3", "A_t vs H_t", "Spearman ρ_s") == 0.52
    plateau = paper_values("Figure 4")
    assert plateau[plateau["row"] == "OPSD"]["note"].iloc[0].startswith("approximate")
    assert method_row("dasd", "Qwen3-4B") == "+DASD (ours)"
    assert method_row(None, "Qwen3-4B") == "Qwen3-4B" and method_row("novelty", "x") is None
    assert paper_tables()[:3] == ("Table 1", "Table 2", "Table 3")
    assert all(v.higher_is_better for v in PAPER_VALUES)


def test_lookup_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="several sections .*pass section="):
        paper_value("Table 2", "+GRPO", "AIME24")
    with pytest.raises(ValueError, match="no cell 'GRPO' / 'AIME24'.*rows: Qwen3-1.7B"):
        paper_value("Table 2", "GRPO", "AIME24")
    with pytest.raises(ValueError, match="no paper values for 'Table 4'; known: Table 1"):
        paper_values("Table 4")


def test_name_maps_point_at_real_cells():
    for bucket in TABLE1_BUCKETS.values():
        for metric in TABLE1_METRICS.values():
            for mode in TABLE1_MODES.values():
                paper_value("Table 1", metric, mode, section=bucket)
    for row in TABLE3_ROWS.values():
        paper_value("Table 3", row, "DASD")
    for tables in ABLATION_ROWS.values():
        for table, rows in tables.items():
            for row in rows.values():
                paper_value(table, row, "AIME24" if table != "Table 11" else "AIME24 Avg@16")


def test_probes_take_their_numbers_from_analysis_paper():
    from probes.ablate import PANELS
    from probes.prefix_intervene import PAPER_TABLE1

    assert PAPER_TABLE1[("low", "step_acc", "novelty")] == -79.4
    assert PAPER_TABLE1[("random", "ey_density", "novelty")] == 4.47
    assert len(PAPER_TABLE1) == 12
    minus = PANELS.get("direction").variant("minus")
    assert minus.paper == (12.0, 10.6, 5.6)
    quantile = PANELS.get("quantile")
    assert quantile.paper_columns[0] == "MATH500 Avg@16"
    assert quantile.variant("0.05").paper == (67.9, 75.7, 26.1, 58.4, 22.8, 54.7)
    assert PANELS.get("routing").variant("entropy").paper == (35.0, 32.1, 4.3)
