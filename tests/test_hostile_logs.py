"""Hostile run directories (issue 15, class 6, and the cases that already passed): repeated
rollout rows, manifest fields of the wrong type, corrupt or truncated Parquet, bad JSON,
wrong-shaped probe summaries, symbolic-link loops — each read as one line naming the file and
what is wrong, exit 2 — and hostile text in labels and rollouts, which the LaTeX tables and
the HTML report escape."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli import analyze_app
from dasd.runlog import RunLogError, create_run, read_rollouts, validate_run
from tests.hostile import (
    assert_one_line_error,
    edit_manifest,
    eval_run,
    rollout_rows,
    runner,
)

ROLLOUT = Path("rollouts") / "step-000000-eval.parquet"


def rewrite_rollouts(run: Path, frame: pd.DataFrame) -> None:
    """Overwrite the run's step-0 eval rollouts without the writer's checks."""
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), run / ROLLOUT)


# ------------------------------------------------------------ repeated rollouts


@pytest.mark.parametrize("command", ["passk", "health", "tables"])
def test_repeated_rollout_rows_are_refused(command, tmp_path):
    run = eval_run(tmp_path)
    rows = rollout_rows()
    rewrite_rollouts(run, pd.concat([rows, rows.iloc[:3]], ignore_index=True))
    args = [command, str(run)] + (["--out", str(tmp_path / "out")] if command == "tables" else [])
    result = runner.invoke(analyze_app, args)
    assert_one_line_error(result, str(run / "rollouts"), "3 response(s) logged more than once",
                          "prompt_id='cd-3-4-0-7'")


def test_repeated_rows_across_files_are_refused(tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    for name in ("a.parquet", "b.parquet"):
        pq.write_table(pa.Table.from_pandas(rollout_rows(), preserve_index=False), folder / name)
    with pytest.raises(RunLogError, match="8 response.s. logged more than once"):
        read_rollouts(folder)
    with pytest.raises(RunLogError, match="logged more than once"):
        read_rollouts(folder, columns=["response"])


def test_validate_run_lists_repeated_rows(tmp_path):
    run = eval_run(tmp_path)
    rows = rollout_rows()
    rewrite_rollouts(run, pd.concat([rows, rows.iloc[:1]], ignore_index=True))
    with pytest.raises(RunLogError, match="step-000000-eval.parquet: 1 response"):
        validate_run(run)


def test_distinct_samples_of_one_prompt_are_not_repeats(tmp_path):
    run = eval_run(tmp_path, rows=rollout_rows(prompts=1, k=8))
    assert len(read_rollouts(run)) == 8


# ------------------------------------------------------------ manifest fields


@pytest.mark.parametrize("field, value", [
    ("kind", 5), ("kind", "probe:"), ("task", 7), ("status", ["x"]), ("status", "done"),
    ("method", [1]), ("model", {"a": 1}), ("seed", "0"), ("seed", True), ("config", [1]),
])
def test_manifest_fields_of_the_wrong_type_are_refused(field, value, tmp_path):
    run = eval_run(tmp_path)
    edit_manifest(run, **{field: value})
    result = runner.invoke(analyze_app, ["health", str(run)])
    assert_one_line_error(result, str(run / "manifest.json"), f"field {field!r}")


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"), ("[1, 2]", "must hold a JSON object"),
    ('{"schema_version": 99, "kind": "eval", "status": "complete"}', "schema_version 99"),
    ('{"schema_version": 1, "kind": "eval"}', "missing field 'status'"),
])
def test_manifest_that_is_not_a_manifest(content, needle, tmp_path):
    run = eval_run(tmp_path)
    (run / "manifest.json").write_text(content)
    result = runner.invoke(analyze_app, ["passk", str(run)])
    assert_one_line_error(result, str(run / "manifest.json"), needle)


def test_one_bad_run_among_good_ones_is_reported_and_the_rest_analysed(tmp_path):
    eval_run(tmp_path, "good")
    bad = eval_run(tmp_path, "bad")
    edit_manifest(bad, kind=5)
    result = runner.invoke(analyze_app, ["passk", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "good" in result.stdout
    assert [line for line in result.stderr.splitlines() if "manifest.json" in line]


# ------------------------------------------------------------ Parquet and JSON files


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "missing-column",
                                    "string-step"])
def test_corrupt_or_truncated_parquet(damage, tmp_path):
    run = eval_run(tmp_path)
    file = run / ROLLOUT
    data = file.read_bytes()
    if damage == "garbage":
        file.write_bytes(b"PAR1 not really" * 20)
    elif damage == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        file.write_bytes(b"")
    elif damage == "missing-column":
        rewrite_rollouts(run, rollout_rows().drop(columns=["correct"]))
    else:
        rewrite_rollouts(run, rollout_rows().assign(step="zero"))
    result = runner.invoke(analyze_app, ["passk", str(run)])
    assert_one_line_error(result, str(file))


@pytest.mark.parametrize("line", ["{broken", '{"step": -1, "split": "eval"}',
                                  '{"step": 1, "split": "eval", "eval/x": "high"}'])
def test_bad_metrics_line_names_file_and_line(line, tmp_path):
    run = eval_run(tmp_path)
    (run / "metrics.jsonl").write_text(f'{{"step": 0, "split": "eval"}}\n{line}\n'
                                       '{"step": 2, "split": "eval"}\n')
    with pytest.raises(RunLogError, match=r"metrics.jsonl:2: "):
        validate_run(run)


@pytest.mark.parametrize("command", ["figures", "report"])
def test_a_folder_where_a_file_is_expected(command, tmp_path):
    with create_run(tmp_path / "runs" / "tr", kind="train", config={}, seed=0, method="dasd",
                    model="tiny", task="countdown") as run:
        run.log_metrics(1, "train", {"train/reward": 0.5})
    metrics = tmp_path / "runs" / "tr" / "metrics.jsonl"
    metrics.unlink()
    metrics.mkdir()
    result = runner.invoke(analyze_app, [command, str(tmp_path / "runs"), "--out",
                                         str(tmp_path / "out.html")])
    assert_one_line_error(result, str(metrics), "a folder stands where a file is expected")


# ------------------------------------------------------------ probe summaries


def probe_run(root: Path, kind: str, summary: str) -> Path:
    """A complete ``probe:<kind>`` run whose summary.json holds the text ``summary``."""
    with create_run(root / kind, kind=f"probe:{kind}", config={}, seed=0, model="tiny",
                    task="countdown") as run:
        run.write_rollouts(0, "eval", rollout_rows())
    (root / kind / "summary.json").write_text(summary)
    return root / kind


#: (probe, summary.json text, what the error says), and the commands that read that summary.
SUMMARIES = [
    ("prefix-intervene", "[1, 2]", "must hold a JSON object, got a list"),
    ("prefix-intervene", "{oops", "not valid JSON"),
    ("prefix-intervene", '{"cells": "all"}', "unexpected content"),
    ("prefix-intervene", '{"cells": [{"bucket": "low"}]}', "unexpected content"),
    ("causal", "[]", "must hold a JSON object, got a list"),
    ("causal", '{"checkpoints": 3}', "unexpected content"),
    ("causal", '{"checkpoints": [{"label": "x", "forks": {"contrasts": [{"cut": "high"}]}}]}',
     "unexpected content"),
    ("entropy-tv", '"text"', "must hold a JSON object, got a str"),
    ("entropy-tv", '{"spearman": {"A": [1]}}', "unexpected content"),
]
READERS = {"prefix-intervene": ("tables", "report"), "causal": ("figures", "report"),
           "entropy-tv": ("report",)}


@pytest.mark.parametrize("probe, command, summary, needle", [
    (probe, command, summary, needle) for probe, summary, needle in SUMMARIES
    for command in READERS[probe]])
def test_wrong_shaped_probe_summary(probe, command, summary, needle, tmp_path):
    run = probe_run(tmp_path / "runs", probe, summary)
    out = tmp_path / ("report.html" if command == "report" else "out")
    result = runner.invoke(analyze_app, [command, str(tmp_path / "runs"), "--out", str(out)])
    assert_one_line_error(result, str(run / "summary.json"), needle)


def test_wrong_shaped_field_that_only_the_tables_read(tmp_path):
    run = probe_run(tmp_path / "runs", "prefix-intervene", '{"cells": [], "ci": [0.95]}')
    result = runner.invoke(analyze_app, ["tables", str(tmp_path / "runs"), "--out",
                                         str(tmp_path / "out")])
    assert_one_line_error(result, str(run / "summary.json"), "unexpected content")


# ------------------------------------------------------------ symbolic links


def test_a_link_loop_inside_the_runs_directory_is_not_followed(tmp_path):
    eval_run(tmp_path / "runs", "ev")
    os.symlink(tmp_path / "runs", tmp_path / "runs" / "loop")
    result = runner.invoke(analyze_app, ["passk", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("ev ") + result.stdout.count("ev:") >= 1


def test_a_run_path_that_loops_is_one_line(tmp_path):
    os.symlink(tmp_path / "self", tmp_path / "self")
    result = runner.invoke(analyze_app, ["passk", str(tmp_path / "self")])
    assert_one_line_error(result, str(tmp_path / "self"))


def test_a_rollout_file_that_loops_is_one_line(tmp_path):
    run = eval_run(tmp_path)
    (run / ROLLOUT).unlink()
    os.symlink(run / ROLLOUT, run / ROLLOUT)
    result = runner.invoke(analyze_app, ["passk", str(run)])
    assert_one_line_error(result, str(run))


# ------------------------------------------------------------ hostile text


HOSTILE = r"\input{/etc/passwd}_&%$#^~<script>alert(1)</script>"


def test_hostile_labels_are_escaped_in_latex(tmp_path):
    eval_run(tmp_path / "runs", "ev", method=HOSTILE, model=HOSTILE)
    result = runner.invoke(analyze_app, ["tables", str(tmp_path / "runs"), "--out",
                                         str(tmp_path / "tables")])
    assert result.exit_code == 0, result.output
    tex = "".join(p.read_text() for p in (tmp_path / "tables").glob("*.tex"))
    assert tex and "input" in tex, "the hostile label reaches a LaTeX table"
    assert r"\input{" not in tex and "_&" not in tex and "$#" not in tex


def test_hostile_text_is_escaped_in_the_report(tmp_path):
    rows = rollout_rows(text='</pre><script>alert(1)</script><img src=x onerror=alert(2)>')
    eval_run(tmp_path / "runs", "ev<script>", rows=rows, method=HOSTILE)
    result = runner.invoke(analyze_app, ["report", str(tmp_path / "runs"), "--out",
                                         str(tmp_path / "report.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert "&lt;script&gt;" in page
    assert "<script>alert" not in page and "<img src=x" not in page
    assert json.dumps(HOSTILE) not in page
