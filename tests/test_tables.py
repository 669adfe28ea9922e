"""analysis.tables and the dasd-analyze health / passk / tables commands, on hand-made runs."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from analysis.health import HealthReport, analyze_runs

from dasd.health import HEALTH_COLUMNS
from analysis.tables import PaperTable, Row, build_tables, write_tables
from cli import analyze_app
from dasd.runlog import create_run
from tests.test_health import BAD, GOOD

runner = CliRunner()


def rows_for(correct_per_prompt: dict[str, int], k: int = 4) -> list[dict]:
    rows = []
    for pid, n_correct in correct_per_prompt.items():
        for j in range(k):
            ok = j < n_correct
            rows.append(dict(prompt_id=pid, sample_idx=j, prompt="x", response=GOOD if ok else BAD,
                             answer="a", reward=float(ok), correct=ok, n_tokens=20,
                             step_correct=[True] * 4 if ok else [False]))
    return rows


def make_eval(root, name, *, model="tiny", method=None, task="countdown", n_correct=1,
              config=None, kind="eval", steps=(0,)):
    writer = create_run(root / name, kind=kind, config=config or {}, seed=0, model=model,
                        method=method, task=task)
    for step in steps:
        writer.write_rollouts(step, "eval", rows_for({"cd-3-7-8-29": n_correct,
                                                      "cd-2-4-6-3": 0}))
    writer.finish()
    return root / name


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    # Avg@4 on countdown: base 12.5, grpo 25.0, opsd 25.0, dasd 37.5.
    for name, method, n in (("base", None, 1), ("grpo", "grpo", 2), ("opsd", "opsd", 2),
                            ("dasd", "dasd", 3)):
        make_eval(root, f"ev-{name}", method=method, n_correct=n)
    # A second benchmark (from the config) for base and dasd only.
    make_eval(root, "ev-base-aime", config={"benchmark": "aime24"}, n_correct=2)
    make_eval(root, "ev-dasd-aime", method="dasd", config={"benchmark": "aime24"}, n_correct=4)
    return root


def table_named(tables, name) -> PaperTable:
    return next(t for t in tables if t.name == name)


# ---------------------------------------------------------------- marks


def test_marks_bold_best_underline_second_with_ties():
    table = PaperTable(name="t", title="T", corner="m", columns=("a", "b"),
                       rows=(Row("x", (1.0, 5.0)), Row("y", (3.0, 5.0)), Row("z", (2.0, None))),
                       formats=(".1f", ".1f"))
    assert table.marks() == [["", "best"], ["best", "best"], ["second", ""]]
    md = table.to_markdown()
    assert "| x | 1.0 | **5.0** |" in md and "| z | <u>2.0</u> | – |" in md
    tex = table.to_latex()
    assert "y & \\textbf{3.0} & \\textbf{5.0} \\\\" in tex and "z & \\underline{2.0} & -- \\\\" in tex
    # Two values: only the best is marked; one value: nothing.
    two = PaperTable(name="t", title="T", corner="m", columns=("a",),
                     rows=(Row("x", (1.0,)), Row("y", (2.0,))), formats=(".1f",))
    assert two.marks() == [[""], ["best"]]
    one = PaperTable(name="t", title="T", corner="m", columns=("a",), rows=(Row("x", (1.0,)),),
                     formats=(".1f",))
    assert one.marks() == [[""]]


def test_marks_compare_printed_values_within_sections():
    table = PaperTable(name="t", title="T", corner="m", columns=("a",),
                       rows=(Row("x", (1.04,), "s1"), Row("y", (1.0,), "s1"),
                             Row("z", (0.5,), "s2"), Row("w", (0.1,), "s2")),
                       formats=(".1f",))
    # 1.04 and 1.0 both print as 1.0: a tie; sections are compared separately.
    assert table.marks() == [["best"], ["best"], ["best"], [""]]


def test_latex_and_markdown_escape_labels():
    table = PaperTable(name="t", title="50% & more_x", corner="m", columns=("a_b",),
                       rows=(Row("r|1*", (1.0,)),), formats=(".1f",))
    tex = table.to_latex()
    assert "% 50% & more_x" in tex  # the title is a comment
    assert "m & a\\_b \\\\" in tex and "r\\textbar{}1* & 1.0" in tex
    assert "r\\|1\\*" in table.to_markdown()


# ---------------------------------------------------------------- builders


def test_table2_layout_and_best_marks(runs):
    tables, missing = build_tables(analyze_runs([runs], last=True))
    t2 = table_named(tables, "table2")
    assert t2.columns == ("AIME24", "Countdown", "Avg")
    assert [r.label for r in t2.rows] == ["tiny", "+GRPO", "+OPSD", "+DASD"]
    cells = t2.cells()
    assert cells[0] == ["25.0", "12.5", "18.8"]  # base: aime 2/8, countdown 1/8
    assert cells[3] == ["50.0", "37.5", "43.8"]
    assert cells[1] == ["–", "25.0", "–"]  # no aime run for grpo: no macro average
    md = t2.to_markdown()
    # AIME24 and Avg compare two values (best only); Countdown four (grpo and opsd tie 2nd).
    assert "| tiny | 25.0 | 12.5 | 18.8 |" in md
    assert "| &nbsp;&nbsp;+DASD | **50.0** | **37.5** | **43.8** |" in md
    assert "| &nbsp;&nbsp;+GRPO | – | <u>25.0</u> | – |" in md
    assert t2.title.startswith("Tables 2 and 6: Avg@4")
    t7 = table_named(tables, "table7")
    assert t7.title.startswith("Table 7: Pass@4")
    assert t7.cells()[0] == ["50.0", "50.0", "50.0"]  # pass@4: one prompt solved of two
    assert [m.split(" (")[0] for m in missing] == [
        "no data for Table 1", "no data for Table 5", "no data for Table 11",
        "no data for Table 12", "no data for Table 13", "no data for Table 14"]


def test_table3_rows_are_metrics_and_columns_methods(runs):
    tables, _ = build_tables(analyze_runs([runs], last=True))
    t3 = table_named(tables, "table3-countdown")
    assert t3.columns == ("tiny", "GRPO", "OPSD", "DASD")
    assert [r.label for r in t3.rows] == [
        "Step accuracy ↑", "First-error step ↑", "Correct-step ratio ↑", "E(y) density ↑",
        "Revision rate ↑", "Distinct-3 ↑", "Avg@4 ↑"]
    assert [r.section for r in t3.rows][::3] == ["Execution quality", "Exploration quality",
                                                 "Outcome anchor"]
    cells = t3.cells()
    assert cells[0] == ["12.5", "25.0", "25.0", "37.5"]  # step_acc: n_correct / 8
    assert cells[4] == ["0.12", "0.25", "0.25", "0.38"]  # every GOOD response revises
    md = t3.to_markdown()
    assert "| *Execution quality* |" in md
    assert "| &nbsp;&nbsp;Step accuracy ↑ | 12.5 | <u>25.0</u> | <u>25.0</u> | **37.5** |" in md
    assert table_named(tables, "table3-aime24").columns == ("tiny", "DASD")


def test_eval_of_a_checkpoint_takes_the_train_runs_method(tmp_path):
    train = create_run(tmp_path / "train-grpo", kind="train", config={}, seed=0, model="tiny",
                       method="grpo", task="countdown")
    ckpt = tmp_path / "train-grpo" / "checkpoints" / "step-2"
    ckpt.mkdir(parents=True)
    train.finish()
    make_eval(tmp_path, "ev-ckpt", model=str(ckpt), n_correct=2)
    make_eval(tmp_path, "ev-base", n_correct=1)
    tables, _ = build_tables(analyze_runs([tmp_path], last=True))
    assert [r.label for r in table_named(tables, "table2").rows] == ["tiny", "+GRPO"]


def test_ablation_tables_are_built_from_probe_ablate_runs(tmp_path):
    for variant, n in (("tanh", 3), ("hard", 2), ("plus", 1)):
        for task in ("aime24", "aime25"):
            make_eval(tmp_path, f"abl-{variant}-{task}", kind="probe:ablate", method="dasd",
                      config={"panel": "direction", "variant": variant, "benchmark": task},
                      n_correct=n)
    tables, missing = build_tables(analyze_runs([tmp_path], last=True))
    t13 = table_named(tables, "table13")
    assert [r.label for r in t13.rows] == ["hard", "plus", "tanh"]
    assert t13.cells()[2] == ["37.5", "37.5", "34.1"]  # Avg@4 per task; E(y): 3 x 1000/11 / 8
    assert "**37.5**" in t13.to_markdown()
    # Table 5 (three panels) shows the one panel present; 12 and 14 still have no data.
    assert [r.section for r in table_named(tables, "table5").rows] == ["direction"] * 3
    assert any(m.startswith("no data for Table 12 ") for m in missing)


def test_tables_regenerate_byte_identically(runs, tmp_path):
    report = analyze_runs([runs], last=True)
    first, second = tmp_path / "one", tmp_path / "two"
    write_tables(*build_tables(report), first)
    write_tables(*build_tables(analyze_runs([runs], last=True)), second)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"table2.md", "table2.tex", "table2.csv", "table7.md", "table3-countdown.tex",
            "tables.md"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    rows = list(csv.reader(io.StringIO((first / "table2.csv").read_text())))
    assert rows[0] == ["section", "Model / method", "AIME24", "Countdown", "Avg"]
    assert rows[1] == ["tiny", "tiny", "25.0", "12.5", "18.8"]
    assert "no data for Table 1 (needs" in (first / "tables.md").read_text()


def test_no_analysed_runs_give_no_tables():
    empty = HealthReport(rows=pd.DataFrame(columns=[*HEALTH_COLUMNS, "kind", "model", "method",
                                                    "task"]), runs=[], issues=[])
    tables, missing = build_tables(empty)
    assert tables == [] and len(missing) == 9


# ---------------------------------------------------------------- commands


def test_health_command_prints_the_table_and_writes_the_csv(runs, tmp_path):
    out = tmp_path / "health.csv"
    result = runner.invoke(analyze_app, ["health", str(runs), "--out", str(out)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Reasoning health" in result.output and "ev-dasd" in result.output
    frame = pd.read_csv(out)
    assert list(frame.columns) == list(HEALTH_COLUMNS)
    dasd = frame[frame["run"] == "ev-dasd"].iloc[0]
    assert (dasd["step"], dasd["split"], dasd["n_prompts"], dasd["k"]) == (0, "eval", 2, 4)
    assert dasd["avg_at_k"] == pytest.approx(3 / 8) and dasd["step_acc"] == pytest.approx(3 / 8)
    assert dasd["rev_rate"] == pytest.approx(3 / 8)
    # A narrow terminal gets one record per row instead of a squeezed table.
    narrow = runner.invoke(analyze_app, ["health", str(runs / "ev-dasd")],
                           env={"COLUMNS": "80"})
    assert "ev-dasd: step=0, split=eval" in narrow.output


def test_health_command_step_selection(tmp_path):
    make_eval(tmp_path, "multi", steps=(0, 10, 20))
    result = runner.invoke(analyze_app, ["health", str(tmp_path), "--last", "--out",
                                         str(tmp_path / "h.csv")])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "h.csv")["step"].tolist() == [20]
    result = runner.invoke(analyze_app, ["health", str(tmp_path), "--step", "10", "--out",
                                         str(tmp_path / "h.csv")])
    assert pd.read_csv(tmp_path / "h.csv")["step"].tolist() == [10]
    result = runner.invoke(analyze_app, ["health", str(tmp_path), "--step", "5"])
    assert result.exit_code == 2 and "no eval rollouts for step 5 (present: 0, 10, 20)" in \
        result.output
    result = runner.invoke(analyze_app, ["health", str(tmp_path), "--step", "0", "--last"])
    assert result.exit_code == 2 and "not both" in result.output


def test_bad_input_exit_codes(runs, tmp_path):
    file = runs / "ev-opsd" / "rollouts" / "step-000000-eval.parquet"
    pq.write_table(pq.read_table(file).drop(["correct"]), file)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(analyze_app, ["health", str(runs), str(empty)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output  # the other runs were analysed
    assert "ev-opsd/rollouts/step-000000-eval.parquet: missing column 'correct'" in result.output
    assert f"{empty}: no run directories found" in result.output
    assert "ev-dasd" in result.output
    result = runner.invoke(analyze_app, ["health", str(empty)])
    assert result.exit_code == 2
    assert "nothing could be analysed" in result.output
    result = runner.invoke(analyze_app, ["tables", str(empty), "--out", str(tmp_path / "t")])
    assert result.exit_code == 2
    result = runner.invoke(analyze_app, ["passk", str(empty)])
    assert result.exit_code == 2


def test_running_runs_are_analysed_with_a_warning(tmp_path):
    writer = create_run(tmp_path / "live", kind="eval", config={}, seed=0, model="tiny",
                        task="countdown")
    writer.write_rollouts(0, "eval", rows_for({"cd-3-7-8-29": 1}))
    result = runner.invoke(analyze_app, ["health", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "still running" in result.output and "live" in result.output


def test_tables_command_prints_markdown_with_bold_best(runs, tmp_path):
    out = tmp_path / "tables"
    result = runner.invoke(analyze_app, ["tables", str(runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "### Tables 2 and 6: Avg@4" in result.output
    assert "| &nbsp;&nbsp;+DASD | **50.0** | **37.5** | **43.8** |" in result.output
    assert (out / "table2-vs-paper.md").read_text() in result.output
    assert "no data for Table 1 (needs probe:prefix-intervene runs" in result.output
    assert (out / "table2.md").read_text() in result.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    runner.invoke(analyze_app, ["tables", str(runs), "--out", str(out)])
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}


def test_passk_command_defaults_to_powers_of_two_up_to_n(runs):
    result = runner.invoke(analyze_app, ["passk", str(runs / "ev-dasd")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Pass@4" in result.output and "Pass@8" not in result.output
    assert "countdown" in result.output
    result = runner.invoke(analyze_app, ["passk", str(runs / "ev-dasd"), "--k", "1,8"],
                           env={"COLUMNS": "200"})
    assert "Pass@8" in result.output and "–" in result.output
    assert runner.invoke(analyze_app, ["passk", str(runs), "--k", "x"]).exit_code == 2


# ---------------------------------------------------------------- variants, paper vs ours


def test_table3_keeps_method_variants_apart_and_pools_seeds(tmp_path):
    """Issue #7: two dasd runs with different method_options are two columns; two seeds of
    one config pool into one column with a Student-t interval."""
    make_eval(tmp_path, "dasd-s0", kind="train", method="dasd", n_correct=2,
              config={"method": "dasd", "seed": 0})
    make_eval(tmp_path, "dasd-s1", kind="train", method="dasd", n_correct=4,
              config={"method": "dasd", "seed": 1})
    make_eval(tmp_path, "dasd-flip", kind="train", method="dasd", n_correct=1,
              config={"method": "dasd", "method_options": {"flip": "low"}})
    make_eval(tmp_path, "dasd-pos", kind="train", method="dasd", n_correct=3,
              config={"method": "dasd", "routing": "position", "rho": 0.2})
    tables, _ = build_tables(analyze_runs([tmp_path], last=True))
    t3 = table_named(tables, "table3")
    assert t3.columns == ("DASD", "DASD (flip=low)", "DASD (routing=position)")
    avg = t3.rows[-1]
    assert avg.values == pytest.approx((37.5, 12.5, 37.5))  # (2 + 4) / 16; 1 / 8; 3 / 8
    half = 100 * 12.706204736174698 * 0.125  # t(0.975, 1) * |a - b| / 2
    assert avg.spread[0] == pytest.approx(half) and avg.spread[1:] == (None, None)
    md = t3.to_markdown()
    assert f"**37.5** ± {half:.1f}" in md and "dasd-flip" not in md.split("Runs:")[0]
    assert "countdown / tiny / dasd: mean of 2 runs (dasd-s0, dasd-s1)." in md


def test_an_eval_of_a_checkpoint_takes_the_train_runs_variant(tmp_path):
    train = create_run(tmp_path / "train-flip", kind="train", seed=0, model="tiny",
                       method="dasd", task="countdown",
                       config={"method_options": {"flip": "high"}})
    ckpt = tmp_path / "train-flip" / "checkpoints" / "step-2"
    ckpt.mkdir(parents=True)
    train.finish()
    make_eval(tmp_path, "ev-flip", model=str(ckpt), n_correct=2)
    make_eval(tmp_path, "ev-dasd", method="dasd", n_correct=3)
    tables, _ = build_tables(analyze_runs([tmp_path / "ev-flip", tmp_path / "ev-dasd"],
                                          last=True))
    assert [r.label for r in table_named(tables, "table2").rows] == [
        "tiny", "+DASD", "+DASD (flip=high)"]


def test_table2_vs_paper_puts_the_papers_numbers_beside_ours(runs):
    tables, _ = build_tables(analyze_runs([runs], last=True))
    versus = table_named(tables, "table2").versus
    assert versus.name == "table2-vs-paper"
    assert versus.columns == ("AIME24", "AIME24: paper", "Countdown", "Countdown: paper",
                              "Avg", "Avg: paper")
    md = versus.to_markdown()
    # Countdown is no paper benchmark: compared with the paper's Avg of Qwen3-1.7B.
    assert "| &nbsp;&nbsp;+GRPO | – | 32.5 | 25.0 | 33.8 | – | 33.8 |" in md
    assert "| &nbsp;&nbsp;+DASD | 50.0 | 35.0 | 37.5 | 37.7 | 43.8 | 37.7 |" in md
    # One run per cell: no interval, so every pair is undecided; the best row is DASD.
    assert "ordering (agree/disagree/undecided pairs) | undecided (0/0/1) |  | " \
        "undecided (0/0/6) |" in md
    assert "best row: ours is the paper's? | yes: +DASD |" in md
    assert "Countdown: the paper's Avg." in md
    rows = list(csv.reader(io.StringIO(versus.to_csv())))
    assert rows[0][:3] == ["section", "Model / method", "AIME24"]
    assert rows[2] == ["tiny vs the paper's Qwen3-1.7B", "+GRPO", "", "32.5", "25.0", "33.8",
                       "", "33.8"]


def test_ordering_marks_with_seeds(tmp_path):
    """Two identical seeds per method: zero-width intervals, so every pair is decided.
    Paper (Qwen3-1.7B Avg): DASD 37.7 > GRPO 33.8 > OPSD 23.6; ours: DASD 37.5 > OPSD 25.0 >
    GRPO 12.5: DASD's two pairs agree, GRPO-OPSD disagrees."""
    for method, n in (("grpo", 1), ("opsd", 2), ("dasd", 3)):
        for seed in (0, 1):
            make_eval(tmp_path, f"ev-{method}-{seed}", method=method, n_correct=n,
                      config={"seed": seed})
    tables, _ = build_tables(analyze_runs([tmp_path], last=True))
    md = table_named(tables, "table2").versus.to_markdown()
    assert "| &nbsp;&nbsp;+OPSD | 25.0 [25.0, 25.0] | 23.6 |" in md
    assert "| mixed (2/1/0) |" in md and "yes: +DASD" in md


def make_prefix_run(root, cells):
    writer = create_run(root / "pi", kind="probe:prefix-intervene", config={}, seed=0,
                        model="tiny", task="countdown")
    writer.write_rollouts(0, "eval", rows_for({"cd-3-7-8-29": 1}))
    writer.write_json("summary", {"n_prompts": 1, "k": 4, "ci": {"level": 0.95},
                                  "cells": cells})
    writer.finish()


def test_table1_from_a_prefix_intervene_run_with_sign_marks(tmp_path):
    def cell(bucket, metric, mode, delta, low, high):
        return {"bucket": bucket, "metric": metric, "mode": mode, "delta_pct": delta,
                "ci_low": low, "ci_high": high}

    make_prefix_run(tmp_path, [
        cell("low", "step_acc", "conformity", 12.0, 4.0, 20.0),    # paper +18.3: agrees
        cell("low", "step_acc", "novelty", 5.0, 1.0, 9.0),         # paper -79.4: disagrees
        cell("low", "ey_density", "conformity", -1.0, -3.0, 2.0),  # paper -4.21: inconclusive
        cell("low", "ey_density", "novelty", None, None, None),    # NaN: not measured
    ])
    tables, missing = build_tables(analyze_runs([tmp_path], last=True))
    assert not any(m.startswith("no data for Table 1 ") for m in missing)
    t1 = table_named(tables, "table1")
    assert t1.columns == ("Conformity", "Novelty")
    assert [(r.section, r.label) for r in t1.rows] == [
        ("Low-H_t scaffolding", "ΔStepAcc"), ("Low-H_t scaffolding", "ΔE(y)")]
    assert t1.cells() == [["+12.0", "+5.0"], ["-1.0", "–"]]
    md = t1.versus.to_markdown()
    assert ("| &nbsp;&nbsp;ΔStepAcc | +12.0 [+4.0, +20.0] | +18.3 | agrees | "
            "+5.0 [+1.0, +9.0] | -79.4 | disagrees |") in md
    assert "| &nbsp;&nbsp;ΔE(y) | -1.0 [-3.0, +2.0] | -4.21 | inconclusive | – | +5.03 | " \
        "not measured |" in md
    assert "Sign agreement: 1 agrees, 1 disagrees, 1 inconclusive, 1 not measured." in md
    tex = t1.versus.to_latex()
    assert "\\multicolumn{7}{l}{\\textit{Low-H\\_t scaffolding}} \\\\\n" in tex
    assert "\\quad $\\Delta$StepAcc & +12.0 [+4.0, +20.0] & +18.3 & agrees &" in tex


def test_vs_paper_files_are_written_and_byte_identical(runs, tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    write_tables(*build_tables(analyze_runs([runs], last=True)), first)
    write_tables(*build_tables(analyze_runs([runs], last=True)), second)
    names = sorted(p.name for p in first.iterdir())
    assert {"table2-vs-paper.md", "table2-vs-paper.tex", "table2-vs-paper.csv",
            "table7-vs-paper.md", "table3-countdown-vs-paper.csv"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    index = (first / "tables.md").read_text()
    assert index.index("### Tables 2 and 6: Avg@4") < index.index("### Tables 2 and 6 vs") < \
        index.index("### Table 3:")
