"""RQ3 ablation probe (probes.ablate) on a tiny random Qwen3: one train run per (variant,
seed) differing only in the ablated choice, the across-seed summary against hand-computed
intervals, resume and refusal, the paper tables read through the parent, and the CLI."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.health import analyze_runs
from analysis.intervals import t_interval
from analysis.tables import build_tables
from cli import probe_app
from dasd.runlog import create_run, read_manifest, read_metrics, read_rollouts
from probes.ablate import (
    DEFAULT_BUDGET,
    DEFAULT_SEEDS,
    PANELS,
    QUICK_BUDGET,
    AblateConfig,
    ablate_config,
    run_ablate,
)
from tests.fixtures_probes import (SMALL_CLI, Killed, assert_help_states_budgets, files_of,
                                   kill_when, option_helps)
from tests.test_tables import make_eval, table_named
from tests.hostile import assert_one_line_error

runner = CliRunner()
T975_1 = 12.706204736174698  # Student t quantile 0.975 with 1 degree of freedom
PANEL_ERROR = "unknown ablation panel 'bogus'; valid: direction, gate, quantile, routing"
RUNS = ["plus-seed0", "plus-seed1", "minus-seed0", "minus-seed1", "tanh-seed0", "tanh-seed1"]


def small_config(model_dir, **overrides):
    values = {
        "model": str(model_dir), "steps": 1, "prompts_per_step": 2, "group_size": 4,
        "mini_batch_size": 8, "micro_batch_size": 8, "max_new_tokens": 10, "eval_prompts": 2,
        "eval_k": 2, "lr": 1e-3, "beta": 1.0, "device": "cpu",
    }
    # Given out of order: the probe keeps the paper's row order.
    return ablate_config("direction", variants=["tanh", "minus", "plus"], seeds=2, quick=True,
                         **{**values, **overrides})


@pytest.fixture(scope="module")
def full(model_dir, tmp_path_factory):
    cfg = small_config(model_dir)
    return cfg, run_ablate(cfg, tmp_path_factory.mktemp("runs") / "abl")


def test_t_interval_by_hand():
    got = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n), s = 1
    assert (got.mean, got.n) == (2.0, 3)
    assert got.low == pytest.approx(2 - half) and got.high == pytest.approx(2 + half)
    assert got.half_width == pytest.approx(half)
    one = t_interval([4.0, math.nan])
    assert (one.mean, one.n) == (4.0, 1) and math.isnan(one.low) and math.isnan(one.high)
    assert math.isnan(t_interval([]).mean) and t_interval([]).n == 0
    with pytest.raises(ValueError, match="level must be in"):
        t_interval([1.0, 2.0], level=1.0)


def test_runs_differ_only_in_the_ablated_choice(full):
    cfg, result = full
    parent = read_manifest(result.run_dir)
    assert parent["kind"] == "probe:ablate" and parent["status"] == "complete"
    config = parent["config"]
    assert config["panel"] == "direction" and config["variants"] == ["plus", "minus", "tanh"]
    assert config["seeds"] == [0, 1] and list(config["runs"]) == RUNS
    assert config["runs"]["minus-seed1"] == "minus"
    assert config["labels"]["plus"] == "OPSD: const. +1"
    assert result.actions == {name: "trained" for name in RUNS}
    manifests = {name: read_manifest(result.run_dir / name) for name in RUNS}
    for name, manifest in manifests.items():
        variant, seed = name.split("-seed")
        assert manifest["kind"] == "train" and manifest["method"] == "dasd"
        assert manifest["seed"] == int(seed)
        assert manifest["config"]["method_options"] == {"direction": variant}
        shared = {k: v for k, v in manifest["config"].items()
                  if k not in ("method_options", "seed", "method")}
        assert shared == {k: v for k, v in cfg.train.items()
                          if k not in ("method_options", "seed")}
    # Same seed: same held-out prompts, same step-0 evaluation, same first training batch.
    for seed in (0, 1):
        evals = {v: read_rollouts(result.run_dir / f"{v}-seed{seed}", split="eval", step=0)
                 for v in cfg.variants}
        train = {v: read_rollouts(result.run_dir / f"{v}-seed{seed}", split="train", step=1)
                 for v in cfg.variants}
        for v in cfg.variants:
            assert evals[v]["response"].tolist() == evals["tanh"]["response"].tolist()
            assert train[v]["response"].tolist() == train["tanh"]["response"].tolist()
    # A random model earns no reward, so A_G = 0 and the advantage is beta omega delta_bar:
    # constant +1 and -1 give exactly opposite policy losses at the first (ratio-1) step.
    step1 = {name: read_metrics(result.run_dir / name).query("split == 'train'").iloc[0]
             for name in RUNS}
    assert step1["plus-seed0"]["loss/policy"] != 0
    assert step1["plus-seed0"]["loss/policy"] == pytest.approx(
        -step1["minus-seed0"]["loss/policy"], rel=1e-5)


def test_summary_is_the_mean_and_interval_across_seeds(full):
    _, result = full
    runs = pd.read_parquet(result.run_dir / "runs.parquet")
    pd.testing.assert_frame_equal(runs, result.runs)
    assert runs["run"].tolist() == RUNS and runs["seed"].tolist() == [0, 1] * 3
    for name in RUNS:
        logged = read_metrics(result.run_dir / name).query("split == 'eval' and step == 1")
        row = runs[runs["run"] == name].iloc[0]
        assert row["eval/avg_at_2"] == logged["eval/avg_at_2"].iloc[0]
        assert row["eval/length_tokens"] == logged["eval/length_tokens"].iloc[0]
    summary = result.summary.set_index(["variant", "metric"])
    assert len(summary) == 3 * len([c for c in runs.columns if c.startswith("eval/")])
    key = "eval/length_tokens"
    a, b = runs.loc[runs["run"] == "minus-seed0", key].iloc[0], runs.loc[
        runs["run"] == "minus-seed1", key].iloc[0]
    d0 = a - runs.loc[runs["run"] == "tanh-seed0", key].iloc[0]
    d1 = b - runs.loc[runs["run"] == "tanh-seed1", key].iloc[0]
    row = summary.loc[("minus", key)]
    # n = 2: s / sqrt(n) = |a - b| / 2.
    assert row["n"] == 2 and row["mean"] == pytest.approx((a + b) / 2)
    assert row["ci_high"] == pytest.approx((a + b) / 2 + T975_1 * abs(a - b) / 2)
    assert row["delta"] == pytest.approx((d0 + d1) / 2)
    assert row["delta_low"] == pytest.approx((d0 + d1) / 2 - T975_1 * abs(d0 - d1) / 2)
    assert summary.loc[("tanh", key), "delta"] == 0
    record = json.loads((result.run_dir / "summary.json").read_text())
    assert record["panel"] == "direction" and record["default"] == "tanh"
    assert record["eval_k"] == 2 and len(record["rows"]) == len(summary)


def test_rerun_skips_finished_runs_and_leaves_them_untouched(full):
    cfg, result = full
    before = {name: files_of(result.run_dir / name) for name in RUNS}
    again = run_ablate(cfg, result.run_dir)
    assert again.actions == {name: "skipped" for name in RUNS}
    assert {name: files_of(result.run_dir / name) for name in RUNS} == before
    pd.testing.assert_frame_equal(again.summary, result.summary)


def test_killed_probe_resumes(full, tmp_path):
    cfg, reference = full

    run_dir = tmp_path / "abl"
    with pytest.raises(Killed):
        run_ablate(cfg, run_dir, progress=kill_when("minus-seed1"))
    assert read_manifest(run_dir)["status"] == "failed"
    assert not (run_dir / "tanh-seed0").exists()
    result = run_ablate(cfg, run_dir)
    assert result.actions["plus-seed1"] == "skipped"
    assert result.actions["minus-seed1"] == "resumed"
    assert result.actions["tanh-seed0"] == "trained"
    pd.testing.assert_frame_equal(result.summary, reference.summary)


def test_other_settings_on_an_existing_probe_are_refused(full, model_dir):
    _, result = full
    with pytest.raises(ValueError, match=r"other settings \(.*steps: 1 there, 2 now"):
        run_ablate(small_config(model_dir, steps=2), result.run_dir)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"panel": "bogus"}, PANEL_ERROR),
        ({"panel": "gate", "variants": ("none", "sigmoidal")},
         "unknown gate variant 'sigmoidal'; valid: none, fixed, magnitude, sigmoid"),
        ({"panel": "gate", "variants": ("none", "none")}, "variants must not repeat"),
        ({"panel": "gate", "seeds": 0}, "seeds must be >= 1"),
        ({"panel": "gate", "train": {"method": "grpo"}}, "train method dasd"),
        ({"panel": "routing", "train": {"routing": "position"}},
         "the routing panel sets routing"),
        ({"panel": "direction", "train": {"method_options": {"direction": "hard"}}},
         "the direction panel sets direction"),
        ({"panel": "quantile", "train": {"rho": 0.3}}, "the quantile panel sets rho"),
        ({"panel": "gate", "train": {"stepz": 3}}, r"unknown TrainConfig fields \['stepz'\]"),
        ({"panel": "gate", "train": {"method_options": {"gait": 1}}}, "gait"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AblateConfig(**kwargs)


def test_panels_and_run_configs():
    assert PANELS.names() == ["direction", "gate", "quantile", "routing"]
    assert [len(PANELS.get(p).variants) for p in ("routing", "direction", "gate", "quantile")
            ] == [5, 5, 4, 5]
    cfg = AblateConfig(panel="gate", train={"method_options": {"c": 0.5}, "seed": 7})
    assert cfg.variants == ("none", "fixed", "magnitude", "sigmoid") and cfg.seeds == 3
    fixed = cfg.run_config("fixed", 1)
    assert fixed.method_options == {"c": 0.5, "gate": "fixed"} and fixed.seed == 8
    assert cfg.seed_list == (7, 8, 9)
    assert AblateConfig(panel="quantile").run_config("0.05", 0).rho == 0.05
    assert AblateConfig(panel="routing").run_config("grad_norm", 0).routing == "grad_norm"
    quick = ablate_config("routing", quick=True, beta=0.5)
    assert quick.train["steps"] == QUICK_BUDGET["steps"] and quick.train["beta"] == 0.5
    default = ablate_config("routing", eval_k=4)
    assert default.seeds == DEFAULT_SEEDS and default.train["steps"] == DEFAULT_BUDGET["steps"]


# ---------------------------------------------------------------- the paper tables


def test_tables_read_the_sub_runs_through_the_parent(tmp_path):
    """Hand-made probe: Avg@4 per seed 12.5 and 37.5 (plus), 25.0 and 25.0 (minus)."""
    root = tmp_path / "abl"
    runs = {"plus-seed0": "plus", "plus-seed1": "plus", "minus-seed0": "minus",
            "minus-seed1": "minus"}
    create_run(root, kind="probe:ablate", seed=0, task="countdown", config={
        "panel": "direction", "variants": ["plus", "minus"], "runs": runs,
        "labels": {"plus": "OPSD: const. +1", "minus": "Novelty: const. -1"}}).finish()
    for name, n_correct in (("plus-seed0", 1), ("plus-seed1", 3), ("minus-seed0", 2),
                            ("minus-seed1", 2)):
        make_eval(root, name, kind="train", method="dasd", n_correct=n_correct, steps=(0, 2))
    make_eval(tmp_path, "lone-train", kind="train", method="dasd", n_correct=4)
    tables, missing = build_tables(analyze_runs([tmp_path], last=True))
    t13 = table_named(tables, "table13")
    # Parent order, not alphabetical (Novelty < OPSD).
    assert [r.label for r in t13.rows] == ["OPSD: const. +1", "Novelty: const. -1"]
    assert t13.columns == ("Countdown ↑", "E(y) ↑")
    assert [c[0] for c in t13.cells()] == ["25.0", "25.0"]
    half = 100 * T975_1 * 0.125  # Avg@4 0.125 and 0.375: s / sqrt(2) = |a - b| / 2 = 0.125
    assert t13.rows[0].spread[0] == pytest.approx(half)
    assert t13.rows[1].spread[0] == 0
    md = t13.to_markdown()
    assert f"| OPSD: const. +1 | **25.0** ± {half:.1f} |" in md
    assert "±: half-width of the 95% Student-t interval" in md
    assert "$\\pm$" in t13.to_latex() and "±" not in t13.to_csv()
    assert "lone-train" not in md
    assert [r.section for r in table_named(tables, "table5").rows] == ["direction"] * 2
    assert any(m.startswith("no data for Table 11 ") for m in missing)


def test_tables_from_a_probe_run(full):
    cfg, result = full
    tables, _ = build_tables(analyze_runs([result.run_dir], last=True))
    t13 = table_named(tables, "table13")
    assert [r.label for r in t13.rows] == [PANELS.get("direction").variant(v).label
                                           for v in cfg.variants]
    means = result.summary.set_index(["variant", "metric"])
    for row, variant in zip(t13.rows, cfg.variants):
        assert row.values[0] == pytest.approx(100 * means.loc[(variant, "eval/avg_at_2"),
                                                              "mean"])
        assert row.values[1] == pytest.approx(means.loc[(variant, "eval/ey_density"), "mean"])


# ---------------------------------------------------------------- the command


def test_cli_runs_and_resumes_a_panel(model_dir, tmp_path):
    args = ["ablate", "--panel", "quantile", "--variants", "0.2,0.95", "--seeds", "2",
            "--model", str(model_dir), "--steps", "1", "--k", "2", "--eval-prompts", "2",
            *SMALL_CLI, "--runs-dir", str(tmp_path), "--name", "q"]
    result = runner.invoke(probe_app, args)
    assert result.exit_code == 0, result.output
    assert "Avg@2" in result.output and "0.95 (Conformity-biased)" in result.output
    assert "0.95-seed1: trained" in result.output
    assert sorted(p.name for p in (tmp_path / "q").iterdir() if p.is_dir()) == [
        "0.2-seed0", "0.2-seed1", "0.95-seed0", "0.95-seed1"]
    assert read_manifest(tmp_path / "q" / "0.95-seed1")["config"]["rho"] == 0.95
    assert np.isclose(read_manifest(tmp_path / "q" / "0.2-seed0")["config"]["rho"], 0.2)
    again = runner.invoke(probe_app, args)
    assert again.exit_code == 0, again.output
    assert "0.2-seed0: skipped" in again.output


def test_cli_bad_panel_gives_a_one_line_error(tmp_path):
    result = runner.invoke(probe_app, ["ablate", "--panel", "bogus", "--runs-dir",
                                       str(tmp_path), "--name", "x"])
    assert assert_one_line_error(result) == f"error: {PANEL_ERROR}"
    assert not (tmp_path / "x").exists()


def test_cli_help_states_the_budgets():
    assert_help_states_budgets(
        "ablate", {"steps": "steps", "k": "eval_k", "eval_prompts": "eval_prompts",
                   "prompts_per_step": "prompts_per_step"}, DEFAULT_BUDGET, QUICK_BUDGET)
    assert f"default {DEFAULT_SEEDS}; --quick: 2)" in option_helps("ablate")["seeds"]
