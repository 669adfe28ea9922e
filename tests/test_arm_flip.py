"""RQ1 arm flips on a tiny random Qwen3 saved to disk: the base trains to the flip, the arms
continue from its checkpoint with its optimizer state, only the chosen arm's omega changes
sign, the summary is on the global update axis, re-runs skip, a killed arm resumes, bad
settings are refused, and the CLI works end to end."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cli import probe_app
from dasd.runlog import read_manifest, read_metrics, read_rollouts
from figures import load_runs, make_figure
from probes.arm_flip import (
    ARMS,
    DEFAULT_BUDGET,
    QUICK_BUDGET,
    ArmFlipConfig,
    arm_flip_config,
    flip_checkpoint,
    headline_columns,
    run_arm_flip,
)
from tests.fixtures_probes import (SMALL_CLI, Killed, assert_help_states_budgets, files_of,
                                   kill_when, recorded_probe, small_train)
from tests.hostile import assert_one_line_error

runner = CliRunner()


def small_config(model_dir, **overrides):
    return arm_flip_config(quick=True, flip_at=1, **small_train(model_dir, **overrides))


#: An uninterrupted probe: base to update 1, three arms to update 2.
full = recorded_probe(run_arm_flip, small_config, "af")


def test_arms_continue_dasd_from_the_flip_checkpoint(full):
    cfg, result, calls = full
    parent = read_manifest(result.run_dir)
    assert parent["kind"] == "probe:arm-flip" and parent["status"] == "complete"
    assert parent["config"]["flip_at"] == 1 and parent["config"]["train"]["steps"] == 2
    assert result.actions == {"base": "trained", **{arm: "trained" for arm in ARMS}}
    base = read_manifest(result.run_dir / "base")
    assert base["method"] == "dasd" and base["config"]["steps"] == 1
    checkpoint = flip_checkpoint(result.run_dir, 1)
    assert checkpoint == (result.run_dir / "base" / "checkpoints" / "step-1").resolve()
    for arm in ARMS:
        manifest = read_manifest(result.run_dir / arm)
        config = manifest["config"]
        assert manifest["method"] == "dasd" and manifest["status"] == "complete"
        assert config["model"] == str(checkpoint) and config["steps"] == 1
        assert config["method_options"] == ({} if arm == "none" else {"flip": arm})
        shared = {k: v for k, v in config.items() if k not in ("model", "steps", "method",
                                                               "method_options")}
        assert shared == {k: v for k, v in cfg.train.items()
                          if k not in ("model", "steps", "method_options")}
    assert calls[:2] == [("base", 0, False), ("base", 0, True)]
    assert [c[:2] for c in calls if c[0] == "high"] == [("high", 1), ("high", 1), ("high", 2)]


def test_each_arm_starts_from_the_base_checkpoint_evaluation(full):
    _, result, _ = full
    base = read_rollouts(result.run_dir / "base", split="eval", step=1)
    for arm in ARMS:
        first = read_rollouts(result.run_dir / arm, split="eval", step=0)
        assert first["response"].tolist() == base["response"].tolist()
        np.testing.assert_array_equal(np.concatenate(first["entropy"].to_list()),
                                      np.concatenate(base["entropy"].to_list()))


def test_only_the_flipped_arm_changes_sign_in_training(full):
    _, result, _ = full
    rows = {arm: read_rollouts(result.run_dir / arm, split="train", step=1) for arm in ARMS}
    for arm in ("low", "high"):
        assert rows[arm]["response"].tolist() == rows["none"]["response"].tolist()
    omega = {arm: np.concatenate(rows[arm]["omega"].to_list()) for arm in ARMS}
    assert (omega["none"] > 0).any() and (omega["none"] < 0).any()
    np.testing.assert_array_equal(omega["low"], np.where(omega["none"] > 0, -omega["none"],
                                                         omega["none"]))
    np.testing.assert_array_equal(omega["high"], np.where(omega["none"] < 0, -omega["none"],
                                                          omega["none"]))
    advantage = {arm: np.concatenate(rows[arm]["advantage"].to_list()) for arm in ARMS}
    kept = omega["none"] <= 0
    np.testing.assert_array_equal(advantage["low"][kept], advantage["none"][kept])
    assert not np.array_equal(advantage["low"], advantage["none"])


def test_arms_carry_the_base_optimizer_state(full):
    _, result, _ = full

    def adam_steps(path: Path) -> set[float]:
        state = torch.load(path / "optimizer.pt", weights_only=True)["state"]
        return {float(s["step"]) for s in state.values()}

    # One optimizer step per update (mini-batch = the whole batch): 1 in the base, 1 + 1 in
    # an arm that continues the base's AdamW state (a fresh optimizer would be at 1).
    assert adam_steps(flip_checkpoint(result.run_dir, 1)) == {1.0}
    for arm in ARMS:
        assert adam_steps(result.run_dir / arm / "checkpoints" / "step-1") == {2.0}


def test_summary_is_on_the_global_update_axis(full):
    _, result, _ = full
    summary = pd.read_parquet(result.run_dir / "summary.parquet")
    pd.testing.assert_frame_equal(summary, result.summary)
    assert list(zip(summary["arm"], summary["step"])) == [
        ("base", 0), ("base", 1), *((arm, step) for arm in ARMS for step in (1, 2))]
    for key in headline_columns(2):
        assert summary[key].notna().all(), key
    at_flip = summary[summary["step"] == 1].drop(columns="arm")
    assert len(at_flip.drop_duplicates()) == 1, "every arm starts at the base's step-1 metrics"
    logged = read_metrics(result.run_dir / "low").query("split == 'eval'").set_index("step")
    low = summary[summary["arm"] == "low"].set_index("step")
    assert low.loc[2, "eval/step_acc"] == logged.loc[1, "eval/step_acc"]
    record = json.loads((result.run_dir / "summary.json").read_text())
    assert (record["flip_at"], record["steps"], record["eval_k"]) == (1, 2, 2)
    assert record["arms"] == list(ARMS) and len(record["rows"]) == 8
    assert record["rows"][6]["arm"] == "high" and record["rows"][6]["step"] == 1


def test_fig6bc_draws_the_probe(full):
    _, result, _ = full
    ax_b, _ = make_figure("fig6bc_arm_flip", load_runs(result.run_dir)).axes
    lines = {line.get_label(): line for line in ax_b.lines if not line.get_label().startswith("_")}
    assert list(lines) == ["unperturbed DASD", "low-$H_t$ arm flipped", "high-$H_t$ arm flipped"]
    assert lines["unperturbed DASD"].get_xdata().tolist() == [0, 1, 2]
    summary = result.summary.set_index(["arm", "step"])["eval/step_acc"]
    assert lines["low-$H_t$ arm flipped"].get_ydata().tolist() == [summary[("low", 1)],
                                                                   summary[("low", 2)]]


def test_rerun_skips_every_finished_run(full):
    cfg, result, _ = full
    before = files_of(result.run_dir / "low")
    again = run_arm_flip(cfg, result.run_dir)
    assert again.actions == {"base": "skipped", **{arm: "skipped" for arm in ARMS}}
    assert files_of(result.run_dir / "low") == before
    pd.testing.assert_frame_equal(again.summary, result.summary)


def test_arm_killed_before_its_first_checkpoint_resumes_with_the_carried_state(full, tmp_path):
    cfg, reference, _ = full

    run_dir = tmp_path / "af"
    with pytest.raises(Killed):
        run_arm_flip(cfg, run_dir, progress=kill_when("low"))
    assert read_manifest(run_dir / "low")["status"] == "failed"
    assert not (run_dir / "low" / "checkpoints").exists()
    result = run_arm_flip(cfg, run_dir)
    assert result.actions == {"base": "skipped", "none": "skipped", "low": "resumed",
                              "high": "trained"}
    pd.testing.assert_frame_equal(result.summary, reference.summary)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"flip_at": 2, "train": {"steps": 2}}, r"flip_at must be an update in 1\.\.1"),
        ({"flip_at": 0, "train": {"steps": 2}}, "flip_at must be an update"),
        ({"flip_at": 1, "arms": ("none", "left")}, "unknown arm 'left'; valid: none, low, high"),
        ({"flip_at": 1, "arms": ()}, "arms must name at least one"),
        ({"flip_at": 1, "train": {"method": "grpo"}}, "trains method dasd"),
        ({"flip_at": 1, "train": {"method_options": {"flip": "low"}}}, "the arms set"),
        ({"flip_at": 1, "train": {"method_options": {"gate": "bogus"}}}, "unknown gate 'bogus'"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArmFlipConfig(**kwargs)


def test_budgets_and_the_default_flip_point():
    quick = arm_flip_config(quick=True)
    assert quick.steps == QUICK_BUDGET["steps"] and quick.flip_at == QUICK_BUDGET["steps"] // 2
    assert quick.train["min_lr_ratio"] == 1.0, "constant lr: no schedule restart at the flip"
    default = arm_flip_config(arms=["low"], steps=10, method_options={"gate": "none"})
    assert default.flip_at == 5 and default.arms == ("low",)
    assert default.train["eval_k"] == DEFAULT_BUDGET["eval_k"]
    arm = default.arm_config("low", Path("/ckpt"))
    assert arm.steps == 5 and arm.model == "/ckpt"
    assert arm.method_options == {"gate": "none", "flip": "low"}
    assert default.base_config().steps == 5 and default.base_config().method_options == {
        "gate": "none"}


def test_cli_runs_the_probe(model_dir, tmp_path):
    args = ["arm-flip", "--model", str(model_dir), "--arms", "none,high", "--steps", "2",
            "--flip-at", "1", "--eval-every", "1", "--k", "2", "--eval-prompts", "2",
            *SMALL_CLI, "--runs-dir", str(tmp_path), "--name", "af"]
    result = runner.invoke(probe_app, args)
    assert result.exit_code == 0, result.output
    assert "StepAcc" in result.output and "E(y)" in result.output
    assert "high: trained" in result.output and "base: trained" in result.output
    assert sorted(p.name for p in (tmp_path / "af").iterdir() if p.is_dir()) == [
        "base", "high", "none"]
    again = runner.invoke(probe_app, args)
    assert again.exit_code == 0, again.output
    assert "none: skipped" in again.output


def test_cli_bad_flip_point_gives_a_one_line_error(tmp_path):
    result = runner.invoke(probe_app, ["arm-flip", "--steps", "4", "--flip-at", "4",
                                       "--runs-dir", str(tmp_path), "--name", "af"])
    assert assert_one_line_error(result) == (
        "error: flip_at must be an update in 1..3 (below steps = 4), got 4")
    assert not (tmp_path / "af").exists()


def test_cli_help_states_the_budgets():
    assert_help_states_budgets("arm-flip", {"steps": "steps", "eval_every": "eval_every",
                                            "k": "eval_k"}, DEFAULT_BUDGET, QUICK_BUDGET)
