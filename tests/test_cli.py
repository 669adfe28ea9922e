"""Smoke tests of the command-line entry points on a tiny random Qwen3 saved to disk."""

import numpy as np
import pytest
from typer.testing import CliRunner

from dasd.passk import pass_at_k, per_prompt_counts
from cli import analyze_app, probe_app
from dasd.runlog import read_manifest, read_metrics, read_rollouts

runner = CliRunner()


@pytest.fixture(scope="module")
def eval_run(model_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    args = ["eval", "--model", str(model_dir), "--n-prompts", "3", "--k", "4",
            "--max-new-tokens", "24", "--runs-dir", str(runs), "--name", "ev"]
    result = runner.invoke(probe_app, args)
    assert result.exit_code == 0, result.output
    return runs / "ev", result.output


def test_eval_writes_a_valid_run(eval_run):
    run, output = eval_run
    manifest = read_manifest(run)
    assert manifest["kind"] == "eval" and manifest["status"] == "complete"
    assert manifest["config"]["k"] == 4
    rows = read_rollouts(run)
    assert len(rows) == 12 and rows["prompt_id"].nunique() == 3
    assert sorted(rows["sample_idx"].unique()) == [0, 1, 2, 3]
    for col in ("entropy", "student_logp", "teacher_logp", "step_correct", "token_ids"):
        assert col in rows
    assert all(len(e) == n for e, n in zip(rows["entropy"], rows["n_tokens"]))
    # A random model over ~50 characters is close to uniform: entropy near log(V).
    entropy = np.concatenate(rows["entropy"].to_list())
    assert 3.0 < entropy.mean() < np.log(60)
    assert "eval/avg_at_4" in output


def test_eval_metrics_recompute_from_logged_rollouts(eval_run):
    run, _ = eval_run
    rows = read_rollouts(run)
    metrics = read_metrics(run).iloc[0]
    counts = per_prompt_counts(rows)
    expected = np.mean(pass_at_k(counts["n"].to_numpy(), counts["c"].to_numpy(), 2))
    assert metrics["eval/pass_at_2"] == pytest.approx(expected)
    assert metrics["eval/length_tokens"] == pytest.approx(rows["n_tokens"].mean())
    delta = np.concatenate([t - s for t, s in zip(rows["teacher_logp"], rows["student_logp"])])
    assert metrics["eval/delta_mean"] == pytest.approx(delta.mean(), rel=1e-5)


def test_passk_command_reads_the_run(eval_run):
    run, _ = eval_run
    result = runner.invoke(analyze_app, ["passk", str(run.parent), "--k", "1,4,8"])
    assert result.exit_code == 0, result.output
    assert "ev" in result.output and "Pass@4" in result.output


def test_bad_options_give_one_line_errors(model_dir, tmp_path):
    result = runner.invoke(probe_app, ["eval", "--model", str(model_dir), "--k", "0",
                                       "--runs-dir", str(tmp_path)])
    assert result.exit_code != 0 and "k (0) must be >= 1" in result.output
    result = runner.invoke(probe_app, ["eval", "--model", str(model_dir), "--task", "nope",
                                       "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown task 'nope'; valid: countdown" in result.output
    result = runner.invoke(probe_app, ["eval", "--model", str(tmp_path / "missing"),
                                       "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no model directory" in result.output


def test_passk_on_a_non_run_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(analyze_app, ["passk", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "error" in result.output


def test_help_lists_only_working_commands():
    result = runner.invoke(probe_app, ["--help"])
    assert result.exit_code == 0 and "eval" in result.output
    result = runner.invoke(analyze_app, ["--help"])
    assert result.exit_code == 0 and "passk" in result.output


def test_train_command_runs_and_resumes(model_dir, tmp_path):
    args = ["train", "--model", str(model_dir), "--method", "dasd", "--steps", "1",
            "--eval-every", "0", "--runs-dir", str(tmp_path), "--name", "t",
            "--set", "prompts_per_step=2", "--set", "group_size=2", "--set", "mini_batch_size=4",
            "--set", "micro_batch_size=4", "--set", "max_new_tokens=8", "--set", "eval_prompts=2",
            "--set", "eval_k=2", "--set", 'method_options={"direction": "hard"}']
    result = runner.invoke(probe_app, args)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "t")
    assert manifest["status"] == "complete"
    assert manifest["config"]["method_options"] == {"direction": "hard"}
    result = runner.invoke(probe_app, ["train", "--resume", str(tmp_path / "t"), "--steps", "2"])
    assert result.exit_code == 0, result.output
    steps = read_metrics(tmp_path / "t").query("split == 'train'")["step"].tolist()
    assert steps == [1, 2]


def test_train_rejects_bad_settings_in_one_line(model_dir, tmp_path):
    result = runner.invoke(probe_app, ["train", "--model", str(model_dir), "--set", "group_size=1",
                                       "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "group_size must be >= 2" in result.output
    result = runner.invoke(probe_app, ["train", "--model", str(model_dir), "--set", "nope=1",
                                       "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "nope" in result.output
    assert not any(tmp_path.iterdir()), "nothing may be written before the config is valid"
