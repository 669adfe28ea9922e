"""Tests of Probe 3 (``probes.prefix_intervene`` and ``dasd-probe prefix-intervene``)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dasd.health import health_metrics
from analysis.stats import paired_relative_change, per_prompt_sums
from cli import probe_app
from dasd.runlog import (
    read_json,
    read_manifest,
    read_rollouts,
    read_table,
    validate_run,
)
from probes.prefix_intervene import (
    PrefixInterveneConfig,
    response_scores,
    run_prefix_intervene,
)

REPO = Path(__file__).resolve().parents[1]
#: A few seconds' probe on a random model: 3 prompts x 2 samples, 24 tokens.
SMALL = {"n_prompts": 3, "k": 2, "max_new_tokens": 24, "n_boot": 50, "burn_in": 4}


@pytest.fixture(scope="module")
def probe_run(model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "pi"
    summary = run_prefix_intervene(PrefixInterveneConfig(model=str(model_dir), **SMALL), run)
    return run, summary


# --------------------------------------------------------------------------- statistics


def test_paired_relative_change_by_hand():
    # prompt A: base 1/2, new 2/2; prompt B: base 2/2, new 2/2 -> metrics 3/4 and 4/4: +33.3%.
    # Resampling two prompts gives (A, A): +100%, p = 1/4; (A, B): +33.3%, p = 1/2; (B, B): 0%.
    base = (np.array([1.0, 2.0]), np.array([2.0, 2.0]))
    new = (np.array([2.0, 2.0]), np.array([2.0, 2.0]))
    got = paired_relative_change(base, new, n_boot=4000, level=0.9, seed=0)
    assert got["base"] == 0.75 and got["value"] == 1.0
    assert got["delta_pct"] == pytest.approx(100 / 3)
    assert got["ci_low"] == 0.0 and got["ci_high"] == pytest.approx(100.0)
    # one prompt: every resample is the sample itself
    one = paired_relative_change((base[0][:1], base[1][:1]), (new[0][:1], new[1][:1]), n_boot=50)
    assert one["ci_low"] == one["ci_high"] == one["delta_pct"] == pytest.approx(100.0)


def test_paired_relative_change_is_nan_where_undefined():
    zero = (np.zeros(3), np.ones(3))
    got = paired_relative_change(zero, (np.ones(3), np.ones(3)), n_boot=20)
    assert got["base"] == 0.0 and got["value"] == 1.0
    assert all(math.isnan(got[key]) for key in ("delta_pct", "ci_low", "ci_high"))
    empty = (np.zeros(3), np.zeros(3))
    assert math.isnan(paired_relative_change(empty, empty, n_boot=20)["base"])


def test_per_prompt_sums_skip_missing_values():
    sums, counts = per_prompt_sums(["a", "b", "a", "c"], np.array([1.0, np.nan, 3.0, 2.0]),
                                   ["c", "a", "b"])
    assert sums.tolist() == [2.0, 4.0, 0.0] and counts.tolist() == [1.0, 2.0, 0.0]


def _hand_rows() -> pd.DataFrame:
    return pd.DataFrame({
        "prompt_id": ["a", "a", "b", "b"],
        "response": ["wait , that is wrong", "8*3=24", "hmm 1+2=3 wait", "no steps here"],
        "correct": [True, False, False, True],
        "n_tokens": [20, 6, 14, 13],
        "step_correct": [np.array([True, False, True]), np.array([], dtype=bool),
                         np.array([True]), np.array([False, False])],
    })


def test_response_scores_by_hand():
    scores = response_scores(_hand_rows())
    assert scores["n_steps"].tolist() == [3, 0, 1, 2]
    np.testing.assert_allclose(scores["step_acc"], [2 / 3, np.nan, 1.0, 0.0])
    # markers per 1,000 whitespace words: 1/5, 0/1, 2/3, 0/3
    np.testing.assert_allclose(scores["ey_density"], [200.0, 0.0, 2000 / 3, 0.0])


def test_condition_metrics_equal_the_health_table():
    rows = _hand_rows()
    scores = response_scores(rows)
    health = health_metrics(rows)
    for metric in ("step_acc", "ey_density"):
        sums = per_prompt_sums(rows["prompt_id"], scores[metric].to_numpy(), ["a", "b"])
        got = paired_relative_change(sums, sums, n_boot=10)
        assert got["base"] == pytest.approx(health[metric])
        assert got["delta_pct"] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bucket": "middle"}, "unknown bucket 'middle'; valid: all, high, low, random"),
        ({"positions": "last"}, "unknown positions 'last'; valid: every, first"),
        ({"random_rate": 2.0}, "random_rate must be in"),
        ({"k": 0}, "k must be >= 1"),
        ({"alpha": math.nan}, "alpha"),
        ({"level": 1.0}, "level must be in"),
    ],
)
def test_bad_configs_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrefixInterveneConfig(**kwargs)


# --------------------------------------------------------------------------- the probe


def test_outputs_follow_the_schema(probe_run):
    run, summary = probe_run
    manifest = read_manifest(run)
    assert manifest["kind"] == "probe:prefix-intervene" and manifest["status"] == "complete"
    assert manifest["config"]["bucket"] == "all" and manifest["config"]["alpha"] == 0.5
    assert validate_run(run)["outputs"] == ["interventions.parquet", "summary.json"]
    base = read_rollouts(run)
    assert len(base) == 6 and base["prompt_id"].nunique() == 3
    assert all(len(e) == n for e, n in zip(base["teacher_logp"], base["n_tokens"]))
    table = read_table(run, "interventions")
    conditions = list(dict.fromkeys(zip(table["bucket"], table["mode"])))
    assert conditions == [(b, m) for b in ("low", "high", "random") for m in ("conformity", "novelty")]
    assert len(table) == 36
    for col, kind in {"sample_idx": "int32", "n_intervened": "int32", "n_eligible": "int32",
                      "step_acc": "float64", "ey_density": "float64", "correct": "bool"}.items():
        assert str(table[col].dtype) == kind, col
    assert all(isinstance(v, str) for v in table["prompt_id"]) and set(table["prompt_id"]) == set(
        base["prompt_id"])
    for row in table.itertuples():
        assert len(row.positions) == row.n_intervened == row.n_in_bucket  # positions="every"
        assert all(4 <= p < row.n_tokens for p in row.positions)
        assert row.n_eligible == max(row.n_tokens - 4, 0)
        assert len(row.entropy) == len(row.token_ids) == row.n_tokens
    assert read_json(run, "summary")["n_prompts"] == summary["n_prompts"] == 3


def test_intervened_rows_are_paired_with_the_unmodified_ones(probe_run):
    run, _ = probe_run
    base = read_rollouts(run).set_index(["prompt_id", "sample_idx"])["token_ids"]
    table = read_table(run, "interventions")
    assert table["n_intervened"].sum() > 0
    for row in table.itertuples():
        twin = base[(row.prompt_id, row.sample_idx)]
        first = row.positions[0] if len(row.positions) else row.n_tokens
        assert list(row.token_ids[:first]) == list(twin[:first])


def test_summary_recomputes_from_the_logged_rows(probe_run):
    run, summary = probe_run
    table = read_table(run, "interventions")
    entropy_rows = table[table["bucket"].isin(["low", "high"])]
    rate = entropy_rows["n_in_bucket"].sum() / entropy_rows["n_eligible"].sum()
    assert summary["random_rate"] == {"value": pytest.approx(rate),
                                      "source": "realized low/high in-bucket rate"}
    assert len(summary["cells"]) == 12
    random_rows = table[table["bucket"] == "random"]
    random_stats = [c for c in summary["conditions"] if c["bucket"] == "random"]
    assert sum(c["n_responses"] for c in random_stats) == len(random_rows)
    for stats, (_, rows) in zip(random_stats, random_rows.groupby("mode", sort=False)):
        assert stats["intervention_rate"] == pytest.approx(
            rows["n_intervened"].sum() / rows["n_eligible"].sum())
    base = read_rollouts(run)
    assert summary["unmodified"]["length_tokens"] == pytest.approx(base["n_tokens"].mean())
    paper = {(c["bucket"], c["metric"], c["mode"]): c["paper_delta_pct"] for c in summary["cells"]}
    assert paper[("low", "step_acc", "conformity")] == 18.3
    assert paper[("high", "ey_density", "novelty")] == 61.3


def test_empty_random_bucket_reproduces_the_unmodified_rollouts(model_dir, tmp_path):
    cfg = PrefixInterveneConfig(model=str(model_dir), bucket="random", random_rate=0.0, **SMALL)
    summary = run_prefix_intervene(cfg, tmp_path / "run")
    base = read_rollouts(tmp_path / "run")
    table = read_table(tmp_path / "run", "interventions")
    assert len(table) == 12 and (table["n_intervened"] == 0).all()
    for _, rows in table.groupby("mode"):
        assert rows["response"].tolist() == base["response"].tolist()
        assert [list(t) for t in rows["token_ids"]] == [list(t) for t in base["token_ids"]]
    assert summary["random_rate"] == {"value": 0.0, "source": "random_rate option"}
    for cell in summary["cells"]:
        assert cell["base"] == cell["value"] or math.isnan(cell["base"])


@pytest.mark.slow  # a fresh interpreter imports torch: ~15 s on two shared cores
def test_a_killed_probe_leaves_only_whole_files(model_dir, tmp_path):
    run = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os
        from probes.prefix_intervene import PrefixInterveneConfig, run_prefix_intervene
        calls = []
        def progress(n):
            calls.append(n)
            if len(calls) == 3:  # unmodified rollouts and one condition are done
                os._exit(9)
        cfg = PrefixInterveneConfig(model={str(model_dir)!r}, bucket="low", **{SMALL!r})
        run_prefix_intervene(cfg, {str(run)!r}, progress=progress)
    """)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], check=False, cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 9, result.stderr[-2000:]
    assert read_manifest(run)["status"] == "running"
    assert validate_run(run)["outputs"] == ["interventions.parquet"]
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == [
        "interventions.parquet", "manifest.json", "rollouts"]
    table = read_table(run, "interventions")
    assert len(table) == 6 and set(table["mode"]) == {"conformity"}
    assert len(read_rollouts(run)) == 6


def test_a_failing_probe_is_marked_failed_and_keeps_its_finished_conditions(model_dir, tmp_path):
    calls = []

    def progress(n: int) -> None:
        calls.append(n)
        if len(calls) == 3:
            raise RuntimeError("stopped by the test")

    cfg = PrefixInterveneConfig(model=str(model_dir), bucket="high", **SMALL)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        run_prefix_intervene(cfg, tmp_path / "run", progress=progress)
    manifest = read_manifest(tmp_path / "run")
    assert manifest["status"] == "failed" and manifest["error"] == "RuntimeError: stopped by the test"
    assert len(read_table(tmp_path / "run", "interventions")) == 6


# --------------------------------------------------------------------------- command line


def test_cli_prints_table_1(model_dir, tmp_path):
    args = ["prefix-intervene", "--model", str(model_dir), "--bucket", "low", "--n-prompts", "2",
            "--k", "2", "--max-new-tokens", "16", "--n-boot", "20", "--burn-in", "3",
            "--positions", "first", "--runs-dir", str(tmp_path), "--name", "cli"]
    result = CliRunner().invoke(probe_app, args)
    assert result.exit_code == 0, result.output
    for text in ("Table 1", "Low-H_t scaffolding", "ΔStepAcc", "ΔE(y)", "+18.3%", "run directory"):
        assert text in result.output
    assert "High-H_t" not in result.output
    table = read_table(tmp_path / "cli", "interventions")
    assert (table["n_intervened"] <= 1).all()
    assert read_manifest(tmp_path / "cli")["config"]["positions"] == "first"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--bucket", "middle"], "unknown bucket 'middle'; valid: all, high, low, random"),
        (["--alpha", "-1"], "alpha must be a finite number >= 0"),
        (["--model", "/no/such/model"], "no model directory at /no/such/model"),
    ],
)
def test_cli_bad_input_gives_one_line(tmp_path, option, message):
    result = CliRunner().invoke(probe_app, ["prefix-intervene", *option, "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
