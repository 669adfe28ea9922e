"""Hostile runs (issue 15, classes 2 and 4): nothing is created for a run that cannot start, a
failing run is marked failed, a full disk leaves no temporary, a resume refuses what it would
ignore, checks the whole checkpoint before it rewinds anything, adds no record, and a run
killed with SIGKILL resumes to the same records as an uninterrupted one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli import probe_app
from dasd import trainer
from dasd.runlog import read_manifest, read_metrics, read_rollouts, validate_run
from tests.hostile import (
    assert_no_run_left_running,
    assert_one_line_error,
    edit_manifest,
    eval_run,
    runner,
)

REPO = Path(__file__).resolve().parents[1]


def train_args(model_dir: Path, runs: Path, name: str, steps: int = 3) -> list[str]:
    """The smallest train run: 2 prompts x 2 samples, a checkpoint and rollouts every step,
    held-out evaluation at the first and last step only."""
    sets = {"prompts_per_step": 2, "group_size": 2, "mini_batch_size": 4,
            "micro_batch_size": 4, "max_new_tokens": 6, "eval_prompts": 2, "eval_k": 2,
            "checkpoint_every": 1, "keep_checkpoints": 5, "log_rollouts_every": 1,
            "device": '"cpu"'}
    return ["train", "--model", str(model_dir), "--steps", str(steps), "--eval-every", "0",
            "--runs-dir", str(runs), "--name", name,
            *(arg for key, value in sets.items() for arg in ("--set", f"{key}={value}"))]


def snapshot(run: Path) -> dict[str, bytes]:
    """Every logged record of ``run`` (metrics and rollouts), byte for byte."""
    files = [run / "metrics.jsonl", *sorted((run / "rollouts").glob("*.parquet"))]
    return {str(f.relative_to(run)): f.read_bytes() for f in files}


def train_steps(run: Path, split: str) -> list[int]:
    return read_metrics(run).query(f"split == '{split}'")["step"].tolist()


@pytest.fixture(scope="module")
def trained(model_dir, tmp_path_factory) -> Path:
    """A complete 3-step train run with a checkpoint at every step."""
    runs = tmp_path_factory.mktemp("trained")
    result = runner.invoke(probe_app, train_args(model_dir, runs, "t"))
    assert result.exit_code == 0, result.output
    return runs / "t"


@pytest.fixture()
def run_copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "t"))


# ------------------------------------------------------------ class 2: half-made runs


@pytest.mark.parametrize("sets, needles", [
    ('task_options={"nope": 1}', ["takes no option nope"]),
    ('task_options={"n_numbers": "four"}', ["option n_numbers", "integer"]),
    ('method_options={"c": "x", "gate": "fixed"}', ["option c", "finite number"]),
])
def test_a_run_that_cannot_start_leaves_nothing(sets, needles, model_dir, tmp_path):
    args = train_args(model_dir, tmp_path / "runs", "t")
    result = runner.invoke(probe_app, [*args, "--set", sets])
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "runs" / "t").exists()


def test_a_failing_probe_marks_its_parent_failed(tmp_path):
    result = runner.invoke(probe_app, ["sign-flip", "--quick", "--arms", "grpo", "--model",
                                       str(tmp_path / "absent"), "--runs-dir", str(tmp_path),
                                       "--name", "sf"])
    assert_one_line_error(result, "no model directory")
    assert read_manifest(tmp_path / "sf")["status"] == "failed"
    assert not (tmp_path / "sf" / "grpo").exists(), "the arm's run is never created"


def test_disk_full_during_a_checkpoint_leaves_no_temporary(model_dir, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer.torch, "save", full)
    result = runner.invoke(probe_app, train_args(model_dir, tmp_path, "t", steps=1))
    assert_one_line_error(result, ".tmp-step-1", "No space left on device", "free space")
    assert_no_run_left_running(tmp_path)
    assert read_manifest(tmp_path / "t")["status"] == "failed"
    monkeypatch.undo()
    result = runner.invoke(probe_app, ["train", "--resume", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert train_steps(tmp_path / "t", "train") == [1]
    assert train_steps(tmp_path / "t", "eval") == [0, 1]


def test_ctrl_c_says_how_to_resume_and_the_resume_completes(model_dir, tmp_path, monkeypatch):
    update = trainer.Trainer.update

    def interrupted(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return update(self, step)

    monkeypatch.setattr(trainer.Trainer, "update", interrupted)
    result = runner.invoke(probe_app, train_args(model_dir, tmp_path, "t"))
    line = assert_one_line_error(result, "dasd-probe train --resume", str(tmp_path / "t"),
                                 code=130)
    assert "Trainer" not in line and "resume(" not in line
    assert_no_run_left_running(tmp_path)
    monkeypatch.undo()
    result = runner.invoke(probe_app, ["train", "--resume", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "t")["status"] == "complete"
    assert train_steps(tmp_path / "t", "train") == [1, 2, 3]
    assert train_steps(tmp_path / "t", "eval") == [0, 3]


# ------------------------------------------------------------ class 4: resume


@pytest.mark.parametrize("extra, listed", [
    (["--lr", "0.5"], "--lr"),
    (["--set", "group_size=4"], "--set"),
    (["--name", "other"], "--name"),
    (["--method", "grpo", "--seed", "3"], "--seed, --method"),
    (["--model", "tiny"], "--model"),
])
def test_resume_refuses_options_it_would_ignore(extra, listed, run_copy):
    before = (run_copy / "manifest.json").read_bytes()
    result = runner.invoke(probe_app, ["train", "--resume", str(run_copy), *extra])
    assert_one_line_error(result, "--resume", "takes only --steps", f"drop {listed}")
    assert (run_copy / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("steps", ["2", "0"])
def test_resume_below_the_logged_progress_is_refused(steps, run_copy):
    before = (run_copy / "manifest.json").read_bytes(), snapshot(run_copy)
    result = runner.invoke(probe_app, ["train", "--resume", str(run_copy), "--steps", steps])
    assert_one_line_error(result, f"--steps {steps}", "has logged (step 3)", "--steps 3 or more")
    assert ((run_copy / "manifest.json").read_bytes(), snapshot(run_copy)) == before
    assert read_manifest(run_copy)["config"]["steps"] == 3


def test_resuming_a_complete_run_adds_no_record(run_copy):
    before = snapshot(run_copy)
    result = runner.invoke(probe_app, ["train", "--resume", str(run_copy), "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert snapshot(run_copy) == before
    assert read_manifest(run_copy)["status"] == "complete"


def test_resume_after_a_lost_checkpoint_adds_no_eval_at_the_resume_step(run_copy):
    """As if killed after step 3 was logged but before its checkpoint was renamed in place."""
    shutil.rmtree(run_copy / "checkpoints" / "step-3")
    result = runner.invoke(probe_app, ["train", "--resume", str(run_copy)])
    assert result.exit_code == 0, result.output
    assert train_steps(run_copy, "train") == [1, 2, 3]
    assert train_steps(run_copy, "eval") == [0, 3], "no extra evaluation at step 2"
    rows = read_rollouts(run_copy, split="eval", columns=["prompt_id"])
    assert sorted(rows["step"].unique()) == [0, 3]


@pytest.mark.parametrize("damage, needles", [
    ("no-weights", ["step-3", "no config.json or model weights", "remove"]),
    ("no-config", ["step-3", "no config.json or model weights"]),
    ("optimizer", ["optimizer.pt", "unreadable optimizer state", "remove"]),
    ("trainer-state", ["trainer_state.json", "does not record step 3"]),
    ("garbage-weights", ["step-3", "cannot be loaded"]),
])
def test_a_broken_checkpoint_loses_no_record(damage, needles, run_copy):
    checkpoint = run_copy / "checkpoints" / "step-3"
    {"no-weights": lambda: (checkpoint / "model.safetensors").unlink(),
     "no-config": lambda: (checkpoint / "config.json").unlink(),
     "optimizer": lambda: (checkpoint / "optimizer.pt").write_bytes(b"not a torch file"),
     "trainer-state": lambda: (checkpoint / "trainer_state.json").write_text('{"step": 9}'),
     "garbage-weights": lambda: (checkpoint / "model.safetensors").write_bytes(b"\0" * 64),
     }[damage]()
    before = (run_copy / "manifest.json").read_bytes(), snapshot(run_copy)
    result = runner.invoke(probe_app, ["train", "--resume", str(run_copy), "--steps", "4"])
    assert_one_line_error(result, *needles)
    assert ((run_copy / "manifest.json").read_bytes(), snapshot(run_copy)) == before


@pytest.mark.parametrize("config, needles", [
    ({"lr": "fast"}, ["manifest.json: config: TrainConfig.lr must be a finite number"]),
    ({"nope": 1}, ["manifest.json: config: unknown TrainConfig fields ['nope']"]),
    (None, ["manifest.json: holds no config to resume from"]),
])
def test_resume_of_a_run_whose_logged_config_is_bad(config, needles, run_copy):
    stored = json.loads((run_copy / "manifest.json").read_text())["config"]
    edit_manifest(run_copy, config=None if config is None else {**stored, **config})
    before = snapshot(run_copy)
    result = runner.invoke(probe_app, ["train", "--resume", str(run_copy)])
    assert_one_line_error(result, *needles)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("resume", ["absent", "a-file"])
def test_resume_of_something_that_is_not_a_run(resume, tmp_path):
    target = tmp_path / resume
    if resume == "a-file":
        target.write_text("x")
    result = runner.invoke(probe_app, ["train", "--resume", str(target)])
    assert_one_line_error(result, str(target))


def test_resume_of_a_run_that_is_not_a_train_run(tmp_path):
    run = eval_run(tmp_path)
    result = runner.invoke(probe_app, ["train", "--resume", str(run)])
    assert_one_line_error(result, "is a eval run, not a train run")


# ------------------------------------------------------------ kill -9 and resume


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_then_resume_gives_the_records_of_an_uninterrupted_run(model_dir, trained,
                                                                      tmp_path):
    args = train_args(model_dir, tmp_path, "killed")
    code = "import sys, cli; sys.argv[0] = 'dasd-probe'; cli.probe_app()"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            if any(json.loads(line).get("step") == 2 for line in lines if line.strip()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert read_manifest(tmp_path / "killed")["status"] == "running"
    result = runner.invoke(probe_app, ["train", "--resume", str(tmp_path / "killed")])
    assert result.exit_code == 0, result.output
    assert_no_run_left_running(tmp_path)
    validate_run(tmp_path / "killed")
    assert train_steps(tmp_path / "killed", "train") == [1, 2, 3]
    assert train_steps(tmp_path / "killed", "eval") == [0, 3]
    for split in ("train", "eval"):
        ours = read_rollouts(tmp_path / "killed", split=split, columns=["response"])
        uninterrupted = read_rollouts(trained, split=split, columns=["response"])
        assert ours.equals(uninterrupted), split
