"""Probe 1 (sign flip) on a tiny random Qwen3 saved to disk: the arms share everything but the
method, the summary has one row per (arm, eval step), re-runs skip finished arms, a killed arm
resumes exactly, bad settings are refused, and the CLI works end to end."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import probe_app
from dasd.runlog import read_manifest, read_metrics, read_rollouts
from probes.sign_flip import (
    ARMS,
    DEFAULT_BUDGET,
    QUICK_BUDGET,
    SignFlipConfig,
    headline_columns,
    run_sign_flip,
    sign_flip_config,
)
from tests.fixtures_probes import (SMALL_CLI, Killed, assert_help_states_budgets, files_of,
                                   kill_when, recorded_probe, small_train)
from tests.hostile import assert_one_line_error

runner = CliRunner()
EVAL_STEPS = [0, 1, 2]


def small_config(model_dir, **overrides):
    return sign_flip_config(quick=True, **small_train(model_dir, **overrides))


#: An uninterrupted probe of all three arms.
full = recorded_probe(run_sign_flip, small_config, "sf")


def test_arms_are_train_runs_that_differ_only_in_method(full):
    cfg, result, calls = full
    parent = read_manifest(result.run_dir)
    assert parent["kind"] == "probe:sign-flip" and parent["status"] == "complete"
    assert parent["config"]["arms"] == list(ARMS) and parent["config"]["train"]["steps"] == 2
    assert result.actions == {arm: "trained" for arm in ARMS}
    manifests = {arm: read_manifest(result.run_dir / arm) for arm in ARMS}
    for arm, manifest in manifests.items():
        assert manifest["kind"] == "train" and manifest["status"] == "complete"
        assert manifest["method"] == arm and manifest["seed"] == 0
        assert {k: v for k, v in manifest["config"].items() if k != "method"} == cfg.train
    # Same held-out prompts at every evaluation, same first training batch (data order and
    # sampling seed), same step-0 evaluation (same initial model, common random numbers).
    evals = {arm: read_rollouts(result.run_dir / arm, split="eval") for arm in ARMS}
    for arm in ARMS:
        assert sorted(evals[arm]["step"].unique()) == EVAL_STEPS
        assert evals[arm]["prompt"].tolist() == evals["grpo"]["prompt"].tolist()
        first = evals[arm][evals[arm]["step"] == 0]["response"].tolist()
        assert first == evals["grpo"][evals["grpo"]["step"] == 0]["response"].tolist()
    train1 = {arm: read_rollouts(result.run_dir / arm, split="train", step=1) for arm in ARMS}
    assert train1["conformity"]["response"].tolist() == train1["grpo"]["response"].tolist()
    assert train1["novelty"]["response"].tolist() == train1["grpo"]["response"].tolist()
    # A random model earns no reward, so A_G = 0 and the first update's advantage is
    # +beta delta_bar (Conformity) or -beta delta_bar (Novelty); with one optimizer step the PPO
    # ratio is 1 and the policy losses are exact negatives, GRPO's is 0.
    step1 = {arm: read_metrics(result.run_dir / arm).query("split == 'train' and step == 1")
             .iloc[0] for arm in ARMS}
    assert all(step1[arm]["train/reward"] == 0 for arm in ARMS)
    assert step1["grpo"]["loss/policy"] == 0
    assert step1["conformity"]["loss/policy"] != 0
    assert step1["conformity"]["loss/policy"] == pytest.approx(-step1["novelty"]["loss/policy"],
                                                               rel=1e-5)
    assert calls[:2] == [("grpo", 0, False), ("grpo", 0, True)]
    assert [c[:2] for c in calls if c[0] == "novelty" and c[2]] == [
        ("novelty", 0), ("novelty", 1), ("novelty", 2)]


def test_summary_has_one_row_per_arm_and_eval_step(full):
    _, result, _ = full
    summary = pd.read_parquet(result.run_dir / "summary.parquet")
    pd.testing.assert_frame_equal(summary, result.summary)
    assert list(zip(summary["arm"], summary["step"])) == [
        (arm, step) for arm in ARMS for step in EVAL_STEPS]
    for key in (*headline_columns(2), "eval/pass_at_1", "eval/fes", "eval/csr"):
        assert summary[key].notna().all(), key
    for arm in ARMS:
        metrics = read_metrics(result.run_dir / arm)
        logged = metrics[metrics["split"] == "eval"].set_index("step")
        rows = summary[summary["arm"] == arm].set_index("step")
        for key in headline_columns(2):
            assert rows[key].tolist() == logged.loc[EVAL_STEPS, key].tolist()
    step0 = summary[summary["step"] == 0].drop(columns="arm").reset_index(drop=True)
    assert len(step0.drop_duplicates()) == 1, "the step-0 evaluation must match in every arm"
    record = json.loads((result.run_dir / "summary.json").read_text())
    assert record["arms"] == list(ARMS) and record["eval_k"] == 2
    assert len(record["rows"]) == 9
    assert record["rows"][4]["arm"] == "conformity" and record["rows"][4]["step"] == 1
    assert record["rows"][4]["eval/avg_at_2"] == summary.loc[4, "eval/avg_at_2"]


def test_rerun_skips_finished_arms_and_leaves_them_untouched(full):
    cfg, result, _ = full
    before = {arm: files_of(result.run_dir / arm) for arm in ARMS}
    again = run_sign_flip(cfg, result.run_dir)
    assert again.actions == {arm: "skipped" for arm in ARMS}
    assert {arm: files_of(result.run_dir / arm) for arm in ARMS} == before
    pd.testing.assert_frame_equal(again.summary, result.summary)
    assert read_manifest(result.run_dir)["status"] == "complete"


def test_killed_arm_resumes_from_its_checkpoint(full, model_dir, tmp_path):
    cfg, reference, _ = full

    run_dir = tmp_path / "sf"
    with pytest.raises(Killed):
        run_sign_flip(cfg, run_dir, progress=kill_when("conformity", step=1))
    assert read_manifest(run_dir)["status"] == "failed"
    assert read_manifest(run_dir / "grpo")["status"] == "complete"
    assert read_manifest(run_dir / "conformity")["status"] == "failed"
    assert not (run_dir / "novelty").exists()
    grpo_files = files_of(run_dir / "grpo")
    starts = []
    result = run_sign_flip(cfg, run_dir,
                           progress=lambda arm, step, m: starts.append((arm, step)) if not m
                           else None)
    assert result.actions == {"grpo": "skipped", "conformity": "resumed", "novelty": "trained"}
    assert starts == [("grpo", 2), ("conformity", 1), ("novelty", 0)]
    assert files_of(run_dir / "grpo") == grpo_files
    assert read_manifest(run_dir)["status"] == "complete"
    pd.testing.assert_frame_equal(result.summary, reference.summary)


def test_other_settings_on_an_existing_probe_are_refused(full, model_dir):
    _, result, _ = full
    with pytest.raises(ValueError, match=r"other settings \(steps: 2 there, 3 now\)"):
        run_sign_flip(small_config(model_dir, steps=3), result.run_dir)


@pytest.mark.parametrize(
    ("arms", "train", "message"),
    [
        (("grpo", "bogus"), {}, "unknown arm 'bogus'; valid: grpo, conformity, novelty"),
        (("grpo", "grpo"), {}, "arms must not repeat"),
        ((), {}, "arms must name at least one"),
        (ARMS, {"method": "dasd"}, "the arms set the method"),
        (ARMS, {"stepz": 3}, r"unknown TrainConfig fields \['stepz'\]"),
        (ARMS, {"steps": 0}, "steps must be >= 1"),
    ],
)
def test_bad_config_is_refused(arms, train, message):
    with pytest.raises(ValueError, match=message):
        SignFlipConfig(arms=arms, train=train)


def test_budgets_resolve_into_the_arm_configs():
    cfg = sign_flip_config(quick=True, beta=0.5)
    assert cfg.train["steps"] == QUICK_BUDGET["steps"] and cfg.train["beta"] == 0.5
    assert cfg.train["lr"] == 1e-4, "fields outside the budget take the trainer's default"
    arm = cfg.arm_config("novelty")
    assert arm.method == "novelty" and arm.eval_k == QUICK_BUDGET["eval_k"]
    default = sign_flip_config(arms=["conformity"], eval_k=4)
    assert default.arms == ("conformity",)
    assert default.train["steps"] == DEFAULT_BUDGET["steps"] and default.train["eval_k"] == 4


def test_cli_runs_and_resumes_the_probe(model_dir, tmp_path):
    args = ["sign-flip", "--model", str(model_dir), "--arms", "grpo,novelty", "--steps", "1",
            "--eval-every", "1", "--k", "2", "--eval-prompts", "2", *SMALL_CLI,
            "--runs-dir", str(tmp_path), "--name", "sf"]
    result = runner.invoke(probe_app, args)
    assert result.exit_code == 0, result.output
    assert "Avg@2" in result.output and "Pass@2" in result.output
    assert "novelty: trained" in result.output
    assert sorted(p.name for p in (tmp_path / "sf").iterdir() if p.is_dir()) == [
        "grpo", "novelty"]
    assert read_manifest(tmp_path / "sf" / "novelty")["config"]["max_new_tokens"] == 8
    again = runner.invoke(probe_app, args)
    assert again.exit_code == 0, again.output
    assert "grpo: skipped" in again.output and "novelty: skipped" in again.output


def test_cli_bad_arms_give_a_one_line_error(tmp_path):
    result = runner.invoke(probe_app, ["sign-flip", "--arms", "grpo,bogus",
                                       "--runs-dir", str(tmp_path), "--name", "sf"])
    assert assert_one_line_error(result) == (
        "error: unknown arm 'bogus'; valid: grpo, conformity, novelty")
    assert not (tmp_path / "sf").exists()


def test_cli_help_states_the_budgets():
    assert_help_states_budgets(
        "sign-flip", {"steps": "steps", "eval_every": "eval_every", "k": "eval_k",
                      "eval_prompts": "eval_prompts", "prompts_per_step": "prompts_per_step"},
        DEFAULT_BUDGET, QUICK_BUDGET)
