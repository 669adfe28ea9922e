"""Hostile input to the commands (issue 15, classes 1, 3 and 5): bad config values, malformed
model directories, run names that leave the runs directory, and a failing file system each
end in one line on stderr naming the field or path and what to do, with exit 2, no
traceback, and no run directory left behind or at status "running"."""

from __future__ import annotations

import dataclasses
import errno
import math
import shutil
import typing
from pathlib import Path

import pytest

from cli import analyze_app, probe_app
from dasd.config_checks import check_known
from dasd.runlog import RunLogError, run_path
from dasd.trainer import TrainConfig
from probes.ablate import AblateConfig
from probes.arm_flip import ArmFlipConfig
from probes.causal import CausalConfig
from probes.entropy_tv import EntropyTVConfig
from probes.evaluate import EvalConfig
from probes.prefix_intervene import PrefixInterveneConfig
from probes.reproduce import ReproduceConfig
from probes.sign_flip import SignFlipConfig
from probes.validate import ValidateConfig
from tests.hostile import (
    assert_no_run_left_running,
    assert_one_line_error,
    eval_run,
    runner,
)

# ------------------------------------------------------------ class 3: config values


def _bad_values(hint: object) -> list[object]:
    """Values of the wrong type, or not finite, for a field annotated ``hint``."""
    optional = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) \
        if optional else hint
    origin = typing.get_origin(base)
    if base is int:
        return [1.5, True, "3"]
    if base is float:
        return [math.nan, math.inf, -math.inf, True, "0.5"]
    if base is str:
        return [5, None] if not optional else [5]
    if base is bool:
        return [1, "yes"]
    if origin is tuple:
        return [("ok", 3), 7]
    if origin in (dict, typing.Mapping) or "Mapping" in str(base):
        return [[1, 2], {1: "x"}]
    return []


#: Every config dataclass, with the arguments it needs besides the field under test.
CONFIGS = {
    TrainConfig: {}, EvalConfig: {}, EntropyTVConfig: {}, PrefixInterveneConfig: {},
    CausalConfig: {}, ReproduceConfig: {}, SignFlipConfig: {},
    ArmFlipConfig: {"flip_at": 1, "train": {"steps": 2}}, AblateConfig: {"panel": "gate"},
    ValidateConfig: {"worlds": ("tiny", "tiny")},
}


@pytest.mark.parametrize("cls", list(CONFIGS), ids=lambda c: c.__name__)
def test_every_field_of_every_config_checks_its_type_and_finiteness(cls):
    hints = typing.get_type_hints(cls)
    checked = 0
    for field in dataclasses.fields(cls):
        for value in _bad_values(hints[field.name]):
            with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field.name} must be"):
                cls(**{**CONFIGS[cls], field.name: value})
            checked += 1
    assert checked >= len(dataclasses.fields(cls)), "every field gets at least one bad value"


def test_unknown_fields_are_one_check():
    check_known(TrainConfig, {"lr": 1.0})
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['nope'\]"):
        check_known(TrainConfig, {"nope": 1})
    with pytest.raises(ValueError, match=r"\['method'\]"):
        check_known(TrainConfig, {"method": "dasd"}, exclude={"method"})


@pytest.mark.parametrize("args, needles", [
    (["--set", "group_size=4.0"], ["group_size", "integer", "4.0"]),
    (["--set", 'group_size="four"'], ["group_size", "integer", "four"]),
    (["--set", "method_options=[1,2]"], ["method_options", "mapping"]),
    (["--set", "task_options=5"], ["task_options", "mapping"]),
    (["--lr", "nan"], ["TrainConfig.lr", "finite"]),
    (["--set", "lr=Infinity"], ["TrainConfig.lr", "finite"]),
    (["--set", "temperature=NaN"], ["temperature", "finite"]),
    (["--beta", "inf"], ["beta", "finite"]),
    (["--set", "steps=true"], ["steps", "integer"]),
    (["--set", "eval_teacher=1"], ["eval_teacher", "true or false"]),
    (["--set", "nope=1"], ["unknown TrainConfig field", "nope"]),
    (["--set", "group_size"], ["--set takes KEY=VALUE"]),
    (["--task", "nope"], ["unknown task 'nope'"]),
], ids=lambda a: " ".join(a) if isinstance(a, list) and a and a[0].startswith("-") else None)
def test_train_refuses_bad_values_before_writing(args, needles, model_dir, tmp_path):
    result = runner.invoke(probe_app, ["train", "--model", str(model_dir), "--runs-dir",
                                       str(tmp_path / "runs"), *args])
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "runs").exists(), "nothing may be written for a bad config"


@pytest.mark.parametrize("command, args, needles", [
    ("eval", ["--temperature", "nan"], ["EvalConfig.temperature", "finite"]),
    ("eval", ["--top-p", "nan"], ["EvalConfig.top_p", "finite"]),
    ("entropy-tv", ["--lr", "inf"], ["EntropyTVConfig.lr", "finite"]),
    ("prefix-intervene", ["--alpha", "inf"], ["PrefixInterveneConfig.alpha", "finite"]),
    ("prefix-intervene", ["--random-rate", "nan"], ["random_rate", "finite"]),
    ("causal", ["--temperature", "nan"], ["CausalConfig.temperature", "finite"]),
    ("sign-flip", ["--set", "group_size=4.0"], ["TrainConfig.group_size", "integer"]),
    ("arm-flip", ["--set", "lr=NaN"], ["TrainConfig.lr", "finite"]),
    ("ablate", ["--panel", "gate", "--set", "method_options=[1]"], ["method_options"]),
])
def test_probes_refuse_bad_values_before_writing(command, args, needles, tmp_path):
    result = runner.invoke(probe_app, [command, "--runs-dir", str(tmp_path / "runs"), *args])
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------ class 1: malformed models


@pytest.fixture(scope="module")
def broken_models(model_dir, tmp_path_factory) -> dict[str, Path]:
    """Copies of the random checkpoint with one thing wrong each."""
    root = tmp_path_factory.mktemp("broken-models")
    out = {}
    for kind in ("config-not-json", "no-config", "garbage-weights", "truncated-weights"):
        out[kind] = shutil.copytree(model_dir, root / kind)
    (out["config-not-json"] / "config.json").write_text("{not json")
    (out["no-config"] / "config.json").unlink()
    (out["garbage-weights"] / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    weights = out["truncated-weights"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return out


#: Each model-loading command with its smallest settings (they should fail at the load).
MODEL_COMMANDS = {
    "eval": ["eval", "--n-prompts", "1", "--k", "1"],
    "train": ["train", "--steps", "1"],
    "entropy-tv": ["entropy-tv", "--n-prompts", "1", "--k", "1"],
    "prefix-intervene": ["prefix-intervene", "--n-prompts", "1", "--k", "1"],
    "sign-flip": ["sign-flip", "--quick", "--arms", "grpo"],
    "arm-flip": ["arm-flip", "--quick", "--arms", "none"],
    "ablate": ["ablate", "--panel", "gate", "--quick", "--variants", "sigmoid", "--seeds", "1"],
}


@pytest.mark.parametrize("broken", ["config-not-json", "no-config", "garbage-weights"])
@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
def test_malformed_model_directory_is_one_line(command, broken, broken_models, tmp_path):
    model = broken_models[broken]
    result = runner.invoke(probe_app, [*MODEL_COMMANDS[command], "--model", str(model),
                                       "--runs-dir", str(tmp_path)])
    assert_one_line_error(result, f"model {model}", "cannot be loaded", "save_pretrained")
    assert_no_run_left_running(tmp_path)
    if command in ("eval", "train", "entropy-tv", "prefix-intervene"):
        assert not any(tmp_path.iterdir()), "no run directory for a model that does not load"


@pytest.mark.parametrize("broken", ["truncated-weights", "no-config"])
def test_causal_with_a_malformed_checkpoint_marks_its_run_failed(broken, broken_models,
                                                                  tmp_path):
    model = broken_models[broken]
    result = runner.invoke(probe_app, ["causal", "--checkpoints", str(model), "--n-prompts",
                                       "1", "--k", "1", "--runs-dir", str(tmp_path)])
    assert_one_line_error(result, f"model {model}", "cannot be loaded")
    assert_no_run_left_running(tmp_path)


def test_empty_model_directory_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(probe_app, ["eval", "--model", str(tmp_path / "empty"),
                                       "--runs-dir", str(tmp_path / "runs")])
    assert_one_line_error(result, f"model {tmp_path / 'empty'}", "cannot be loaded")
    assert not (tmp_path / "runs").exists()


def test_model_path_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    result = runner.invoke(probe_app, ["eval", "--model", str(tmp_path / "weights.bin"),
                                       "--runs-dir", str(tmp_path / "runs")])
    assert_one_line_error(result, "weights.bin", "is a file")


# ------------------------------------------------------------ class 5: run names


@pytest.mark.parametrize("name", ["../../x", "/abs/path", "a/../../b", ".", "..", "a//b",
                                  ".hidden", "a/./b", " padded"])
def test_names_outside_the_runs_directory_are_refused(name, tmp_path):
    runs = tmp_path / "deep" / "runs"
    result = runner.invoke(probe_app, ["train", "--runs-dir", str(runs), "--name", name])
    assert_one_line_error(result, "run name", "plain folder names")
    assert not any(tmp_path.iterdir()), "nothing is written for a refused name"


@pytest.mark.parametrize("command", [["eval"], ["sign-flip"], ["entropy-tv"],
                                     ["prefix-intervene"], ["causal"], ["reproduce"],
                                     ["ablate", "--panel", "gate"], ["arm-flip"]])
def test_every_command_checks_its_name(command, tmp_path):
    result = runner.invoke(probe_app, [*command, "--runs-dir", str(tmp_path / "runs"),
                                       "--name", "../escape"])
    assert_one_line_error(result, "run name '../escape'")
    assert not (tmp_path / "escape").exists()


def test_import_checks_its_name(tmp_path):
    (tmp_path / "log").mkdir()
    result = runner.invoke(analyze_app, ["import", "trl", str(tmp_path / "log"), "--runs-dir",
                                         str(tmp_path / "runs"), "--name", "/abs/x"])
    assert_one_line_error(result, "run name '/abs/x'")


@pytest.mark.parametrize("existing, needle", [("run", "already holds a run"),
                                               ("folder", "directory is not empty"),
                                               ("file", "exists and is not a directory")])
def test_a_name_already_taken_is_refused_before_any_work(existing, needle, model_dir, tmp_path):
    target = tmp_path / "taken"
    if existing == "run":
        eval_run(tmp_path, "taken")
    elif existing == "folder":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    else:
        target.write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = runner.invoke(probe_app, ["train", "--model", str(model_dir), "--runs-dir",
                                       str(tmp_path), "--name", "taken"])
    assert_one_line_error(result, str(target), needle)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_name_too_long_for_the_file_system(model_dir, tmp_path):
    result = runner.invoke(probe_app, ["eval", "--model", str(model_dir), "--n-prompts", "1",
                                       "--k", "1", "--max-new-tokens", "4", "--runs-dir",
                                       str(tmp_path), "--name", "n" * 300])
    assert_one_line_error(result, "File name too long", "shorter name")


@pytest.mark.parametrize("args, needle", [
    (["passk", "--k", "1,x"], "--k must be comma-separated integers"),
    (["passk", "--k", "0"], "--k values must be >= 1"),
    (["health", "--step", "1", "--last"], "give --step S or --last, not both"),
])
def test_analysis_options_are_checked_in_one_line(args, needle, analysed_run):
    result = runner.invoke(analyze_app, [*args, str(analysed_run)])
    assert_one_line_error(result, needle)


def test_plain_nested_names_are_accepted(tmp_path):
    assert run_path(tmp_path, "a/b-1.x") == tmp_path / "a" / "b-1.x"
    with pytest.raises(RunLogError, match="plain folder names"):
        run_path(tmp_path, "")


# ------------------------------------------------------------ class 1: the file system


def test_runs_dir_that_is_a_file(model_dir, tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    result = runner.invoke(probe_app, ["train", "--model", str(model_dir), "--runs-dir",
                                       str(tmp_path / "runs"), "--name", "t"])
    assert_one_line_error(result, str(tmp_path / "runs"), "is a file", "--runs-dir")


def test_read_only_runs_dir(model_dir, tmp_path, monkeypatch):
    """Simulated (the tests may run as root, whom permissions do not stop)."""
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    result = runner.invoke(probe_app, ["eval", "--model", str(model_dir), "--n-prompts", "1",
                                       "--k", "1", "--max-new-tokens", "4", "--runs-dir",
                                       str(tmp_path / "ro"), "--name", "e"])
    assert_one_line_error(result, str(tmp_path / "ro"), "Read-only file system", "writable")


def test_disk_full_while_writing_rollouts(model_dir, tmp_path, monkeypatch):
    import dasd.runlog

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dasd.runlog.pq, "write_table", full)
    result = runner.invoke(probe_app, ["eval", "--model", str(model_dir), "--n-prompts", "1",
                                       "--k", "1", "--max-new-tokens", "4", "--runs-dir",
                                       str(tmp_path), "--name", "e"])
    assert_one_line_error(result, "step-000000-eval.parquet", "No space left", "free space")
    assert_no_run_left_running(tmp_path)


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory) -> Path:
    return eval_run(tmp_path_factory.mktemp("analysed"))


@pytest.mark.parametrize("command, out_kind", [
    ("health", "dir"), ("health", "under-file"), ("tables", "file"), ("tables", "under-file"),
    ("figures", "file"), ("report", "dir"), ("report", "under-file"),
])
def test_out_that_cannot_be_written(command, out_kind, analysed_run, tmp_path):
    blocker = tmp_path / "blocker"
    if out_kind == "dir":
        blocker.mkdir()
        out = blocker
    else:
        blocker.write_text("a file")
        out = blocker if out_kind == "file" else blocker / "inside" / "out.html"
    result = runner.invoke(analyze_app, [command, str(analysed_run), "--out", str(out)])
    line = assert_one_line_error(result, str(blocker))
    assert any(word in line for word in ("folder", "file")), line


def test_a_genuine_bug_keeps_its_traceback(model_dir, tmp_path, monkeypatch):
    """The wrapper turns bad input and a failing environment into one line, nothing else."""
    import probes.evaluate

    def bug(*args, **kwargs):
        raise KeyError("a bug in the sampler")

    monkeypatch.setattr(probes.evaluate, "sample_rollout_rows", bug)
    result = runner.invoke(probe_app, ["eval", "--model", str(model_dir), "--n-prompts", "1",
                                       "--k", "1", "--runs-dir", str(tmp_path), "--name", "e"])
    assert isinstance(result.exception, KeyError)
    assert_no_run_left_running(tmp_path)
