"""dasd.runlog: the run directory contract (DESIGN.md section 4)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dasd import runlog
from dasd.runlog import (
    REQUIRED_ROLLOUT_COLUMNS,
    SCHEMA_VERSION,
    RunLogError,
    RunLogWarning,
    create_run,
    find_runs,
    open_run,
    read_json,
    read_manifest,
    read_metrics,
    read_rollouts,
    read_table,
    validate_run,
)


def make_rows(step: int = 40, split: str = "eval", n_prompts: int = 2, group: int = 3,
              with_tokens: bool = True) -> pd.DataFrame:
    rows = []
    for p in range(n_prompts):
        for i in range(group):
            n_tok = 2 + i
            row = {
                "step": step,
                "split": split,
                "prompt_id": f"p{p}",
                "sample_idx": i,
                "prompt": f"reach {p}",
                "response": "1+2=3" + "!" * i,
                "answer": str(p),
                "reward": float(i % 2),
                "correct": bool(i % 2),
                "n_tokens": n_tok,
            }
            if with_tokens:
                row["token_ids"] = list(range(n_tok))
                row["entropy"] = [0.5 * t for t in range(n_tok)]
                row["omega"] = [-1.0] * n_tok
                row["step_correct"] = [True, False]
            rows.append(row)
    return pd.DataFrame(rows)


def new_run(tmp_path: Path, name: str = "run", **kw) -> runlog.RunWriter:
    args = dict(kind="train", config={"lr": 1e-6, "beta": 0.5}, seed=0, method="dasd",
                model="tiny", task="countdown")
    args.update(kw)
    return create_run(tmp_path / name, **args)


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".tmp-" in p.name]


# ---------------------------------------------------------------- manifest and lifecycle


def test_manifest_fields(tmp_path):
    w = new_run(tmp_path)
    m = read_manifest(w.path)
    assert m["schema_version"] == SCHEMA_VERSION == 1
    assert m["kind"] == "train" and m["method"] == "dasd"
    assert m["model"] == "tiny" and m["task"] == "countdown"
    assert m["config"] == {"lr": 1e-6, "beta": 0.5} and m["seed"] == 0
    assert m["status"] == "running"
    assert "git_sha" in m  # a sha or None: never fails without git
    assert m["git_sha"] is None or len(m["git_sha"]) == 40
    assert m["created"].endswith("+00:00")
    assert {"python", "numpy", "pandas", "pyarrow"} <= m["versions"].keys()


def test_manifest_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no git executable
    w = new_run(tmp_path)
    assert read_manifest(w.path)["git_sha"] is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_manifest_git_sha_of_the_dasd_checkout(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    pkg = repo / "dasd"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], check=True, env=env,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    monkeypatch.setattr(runlog, "__file__", str(pkg / "runlog.py"))
    assert runlog._git_state() == (None, None)  # not committed yet: no sha, no error
    git("add", ".")
    git("commit", "-q", "-m", "x")
    sha = git("rev-parse", "HEAD")
    m = read_manifest(new_run(tmp_path).path)
    assert m["git_sha"] == sha and m["git_dirty"] is False
    (pkg / "__init__.py").write_text("x = 1\n")
    assert runlog._git_state() == (sha, True)


def test_config_dataclass_and_nonfinite(tmp_path):
    @dataclass
    class Cfg:
        lr: float = 1e-6
        clip: float = math.inf
        path: Path = Path("/x")
        ks: tuple = (1, 2)

    w = new_run(tmp_path, config=Cfg(), seed=np.int64(3))
    m = read_manifest(w.path)
    assert m["config"] == {"lr": 1e-6, "clip": None, "path": "/x", "ks": [1, 2]}
    assert m["seed"] == 3
    with pytest.raises(RunLogError, match=r"config\.obj"):
        new_run(tmp_path, "other", config={"obj": object()})


@pytest.mark.parametrize("kind", ["probe:sign-flip", "eval", "probe:entropy_tv"])
def test_kinds_ok(tmp_path, kind):
    assert read_manifest(new_run(tmp_path, kind=kind).path)["kind"] == kind


@pytest.mark.parametrize("kind", ["probe", "Train", "probe:", "other"])
def test_bad_kind(tmp_path, kind):
    with pytest.raises(RunLogError, match="kind"):
        new_run(tmp_path, kind=kind)


def test_existing_run_is_never_overwritten(tmp_path):
    new_run(tmp_path).finish()
    with pytest.raises(RunLogError, match="open_run"):
        new_run(tmp_path)
    with pytest.raises(RunLogError, match="open_run"):
        new_run(tmp_path, exist_ok=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunLogError, match="not empty"):
        new_run(tmp_path, "other")
    new_run(tmp_path, "other", exist_ok=True)
    assert (other / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    new_run(tmp_path, "empty")  # an empty directory is fine


def test_context_manager_complete(tmp_path):
    with new_run(tmp_path) as w:
        assert read_manifest(w.path)["status"] == "running"
        w.log_metrics(0, "train", {"train/loss": 1.0})
    m = read_manifest(w.path)
    assert m["status"] == "complete" and m["finished"] and m["error"] is None
    with pytest.raises(RunLogError, match="finished"):
        w.log_metrics(1, "train", {"train/loss": 1.0})


def test_context_manager_failed_reraises(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with new_run(tmp_path) as w:
            w.log_metrics(0, "train", {"train/loss": 1.0})
            1 / 0  # noqa: B018
    m = read_manifest(w.path)
    assert m["status"] == "failed"
    assert m["error"].startswith("ZeroDivisionError")
    assert len(read_metrics(w.path)) == 1  # nothing already logged is lost


def test_context_manager_keyboard_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with new_run(tmp_path) as w:
            raise KeyboardInterrupt
    assert read_manifest(w.path)["status"] == "failed"


def test_explicit_finish_inside_context(tmp_path):
    with new_run(tmp_path) as w:
        w.finish("failed", error="diverged")
    m = read_manifest(w.path)
    assert m["status"] == "failed" and m["error"] == "diverged"


def test_open_run_resume(tmp_path):
    with new_run(tmp_path) as w:
        w.log_metrics(0, "train", {"train/loss": 1.0})
    r = open_run(w.path)
    m = read_manifest(w.path)
    assert m["status"] == "running" and m["finished"] is None and len(m["resumed"]) == 1
    assert m["created"] == read_manifest(w.path)["created"]
    with r:
        r.log_metrics(1, "train", {"train/loss": 0.5})
    assert read_metrics(w.path)["step"].tolist() == [0, 1]
    assert read_manifest(w.path)["status"] == "complete"


def test_open_run_rewind(tmp_path):
    w = new_run(tmp_path)
    for step in range(5):
        w.log_metrics(step, "train", {"train/loss": float(step)})
        w.write_rollouts(step, "train", make_rows(step, "train", with_tokens=False))
    # killed here (no finish); resume from the checkpoint of step 2
    r = open_run(w.path, rewind_to=2)
    assert read_metrics(r.path)["step"].tolist() == [0, 1, 2]
    assert sorted(read_rollouts(r.path)["step"].unique().tolist()) == [0, 1, 2]
    r.log_metrics(3, "train", {"train/loss": 3.5})
    assert read_metrics(r.path)["train/loss"].tolist() == [0, 1, 2, 3.5]


def test_open_run_repairs_truncated_metrics(tmp_path):
    w = new_run(tmp_path)
    w.log_metrics(0, "train", {"train/loss": 1.0})
    with open(w.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 1, "split": "tr')  # killed mid-append
    with pytest.warns(RunLogWarning, match="truncated"):
        r = open_run(w.path)
    r.log_metrics(1, "train", {"train/loss": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_metrics(w.path)["train/loss"].tolist() == [1.0, 0.5]


def test_open_run_not_a_run(tmp_path):
    with pytest.raises(RunLogError, match="not a run directory"):
        open_run(tmp_path)
    with pytest.raises(RunLogError, match="does not exist"):
        open_run(tmp_path / "missing")


def test_newer_schema_rejected(tmp_path):
    w = new_run(tmp_path)
    m = read_manifest(w.path)
    m["schema_version"] = SCHEMA_VERSION + 1
    (w.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RunLogError, match="schema_version"):
        read_manifest(w.path)


def test_update_manifest(tmp_path):
    w = new_run(tmp_path)
    w.update_manifest(resolved_model_path="/cache/tiny", n_params=123)
    m = read_manifest(w.path)
    assert m["resolved_model_path"] == "/cache/tiny" and m["n_params"] == 123
    with pytest.raises(RunLogError, match="status"):
        w.update_manifest(status="complete")


# ---------------------------------------------------------------- metrics


def test_metrics_round_trip(tmp_path):
    w = new_run(tmp_path)
    w.log_metrics(0, "train", {"train/loss": 1.5, "train/n": 3, "dasd/omega": np.float32(0.25)})
    w.log_metrics(10, "eval", {"eval/avg@16": 0.5, "eval/nan": float("nan"),
                               "eval/inf": -math.inf})
    lines = (w.path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[1])  # strictly valid JSON: NaN/inf stored as null
    assert rec == {"step": 10, "split": "eval", "eval/avg@16": 0.5, "eval/nan": None,
                   "eval/inf": None}
    df = read_metrics(w.path)
    assert df["step"].dtype == np.int64 and df["step"].tolist() == [0, 10]
    assert df["split"].tolist() == ["train", "eval"]
    assert df["train/loss"].dtype == np.float64
    assert df["train/loss"].iloc[0] == 1.5 and math.isnan(df["train/loss"].iloc[1])
    assert df["dasd/omega"].iloc[0] == 0.25
    assert math.isnan(df["eval/nan"].iloc[1]) and math.isnan(df["eval/inf"].iloc[1])


@pytest.mark.parametrize(
    ("step", "split", "metrics", "match"),
    [
        (0, "train", {"loss": 1.0}, "namespaced"),
        (0, "train", {"train/": 1.0}, "namespaced"),
        (0, "train", {"step": 1.0}, "namespaced"),
        (0, "train", {"train/loss": "1.0"}, "real number"),
        (0, "train", {"train/ok": True}, "real number"),
        (0, "valid", {"train/loss": 1.0}, "split"),
        (-1, "train", {"train/loss": 1.0}, "step"),
        (1.0, "train", {"train/loss": 1.0}, "step"),
    ],
)
def test_metrics_bad_input(tmp_path, step, split, metrics, match):
    w = new_run(tmp_path)
    with pytest.raises(RunLogError, match=match):
        w.log_metrics(step, split, metrics)
    assert not (w.path / "metrics.jsonl").exists()  # nothing half-written


def test_metrics_truncated_last_line_tolerated(tmp_path):
    w = new_run(tmp_path)
    w.log_metrics(0, "train", {"train/loss": 1.0})
    w.log_metrics(1, "train", {"train/loss": 0.5})
    with open(w.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "split": "train", "train/lo')
    with pytest.warns(RunLogWarning, match=r"metrics\.jsonl:3"):
        df = read_metrics(w.path)
    assert df["step"].tolist() == [0, 1]


def test_metrics_malformed_middle_line_is_error(tmp_path):
    w = new_run(tmp_path)
    w.log_metrics(0, "train", {"train/loss": 1.0})
    with open(w.path / "metrics.jsonl", "a") as f:
        f.write("{not json}\n")
    w.log_metrics(2, "train", {"train/loss": 0.5})
    with pytest.raises(RunLogError, match=r"metrics\.jsonl:2: not valid JSON"):
        read_metrics(w.path)
    with open(w.path / "metrics.jsonl", "w") as f:
        f.write('{"step": 0, "split": "train"}\n{"split": "train"}\n')
    with pytest.raises(RunLogError, match=r"metrics\.jsonl:2: 'step'"):
        read_metrics(w.path)


def test_metrics_absent(tmp_path):
    w = new_run(tmp_path)
    df = read_metrics(w.path)
    assert df.empty and list(df.columns) == ["step", "split"]
    with pytest.raises(RunLogError, match="not a run directory"):
        read_metrics(tmp_path)


# ---------------------------------------------------------------- rollouts


def test_rollouts_round_trip_values_and_dtypes(tmp_path):
    w = new_run(tmp_path)
    rows = make_rows()
    rows["extra_note"] = ["x"] * len(rows)  # extra columns are kept
    path = w.write_rollouts(40, "eval", rows)
    assert path == w.path / "rollouts" / "step-000040-eval.parquet"
    df = read_rollouts(w.path)
    assert list(df.columns[: len(REQUIRED_ROLLOUT_COLUMNS)]) == list(REQUIRED_ROLLOUT_COLUMNS)
    assert df["step"].dtype == np.int64
    assert df["sample_idx"].dtype == np.int32 and df["n_tokens"].dtype == np.int32
    assert df["reward"].dtype == np.float64 and df["correct"].dtype == bool
    for col in ("split", "prompt_id", "prompt", "response", "answer", "extra_note"):
        assert pd.api.types.is_string_dtype(df[col]), col
    for col in ("step", "sample_idx", "n_tokens", "reward", "correct", "prompt_id", "response"):
        assert df[col].tolist() == rows[col].tolist(), col
    assert df["entropy"].iloc[2].dtype == np.float32
    assert df["token_ids"].iloc[2].dtype == np.int32
    np.testing.assert_allclose(df["entropy"].iloc[2], rows["entropy"].iloc[2])
    assert df["step_correct"].iloc[0].tolist() == [True, False]
    assert df["extra_note"].tolist() == ["x"] * len(rows)


def test_rollouts_list_of_dicts_and_fill_step_split(tmp_path):
    w = new_run(tmp_path)
    rows = make_rows(with_tokens=False).drop(columns=["step", "split"]).to_dict("records")
    rows[0]["entropy"] = np.array([0.1, 0.2], dtype=np.float64)  # numpy arrays are fine
    rows[0]["n_tokens"] = 2
    w.write_rollouts(7, "train", rows)
    df = read_rollouts(w.path)
    assert set(df["step"]) == {7} and set(df["split"]) == {"train"}
    assert df["entropy"].iloc[1] is None
    np.testing.assert_allclose(df["entropy"].iloc[0], [0.1, 0.2], rtol=1e-6)


def test_rollouts_nan_reward_is_a_value(tmp_path):
    w = new_run(tmp_path)
    rows = make_rows(with_tokens=False)
    rows.loc[0, "reward"] = np.nan
    w.write_rollouts(40, "eval", rows)
    assert math.isnan(read_rollouts(w.path)["reward"].iloc[0])


def test_rollouts_select_step_split_columns(tmp_path):
    w = new_run(tmp_path)
    for step in (0, 10, 20):
        w.write_rollouts(step, "train", make_rows(step, "train"))
        w.write_rollouts(step, "eval", make_rows(step, "eval", n_prompts=1))
    assert len(read_rollouts(w.path)) == 3 * (6 + 3)
    df = read_rollouts(w.path, step=10, split="eval")
    assert set(df["step"]) == {10} and set(df["split"]) == {"eval"} and len(df) == 3
    df = read_rollouts(w.path, step=[0, 20], split="train", columns=["prompt_id", "correct"])
    assert list(df.columns) == ["step", "split", "prompt_id", "correct"]
    assert sorted(set(df["step"])) == [0, 20] and len(df) == 12
    assert df["step"].tolist() == sorted(df["step"].tolist())  # files in step order
    with pytest.raises(RunLogError, match=r"no rollouts for step=30.*step 20 eval"):
        read_rollouts(w.path, step=30)


def test_rollouts_optional_columns_in_some_files_only(tmp_path):
    w = new_run(tmp_path)
    w.write_rollouts(0, "train", make_rows(0, "train", with_tokens=False))
    w.write_rollouts(1, "train", make_rows(1, "train").assign(judge="ok"))
    df = read_rollouts(w.path)
    assert list(df.columns[-1:]) == ["judge"]  # declared columns first, extras after
    assert df["entropy"].iloc[0] is None and df["entropy"].iloc[6].dtype == np.float32
    assert pd.isna(df["judge"].iloc[0]) and df["judge"].iloc[6] == "ok"
    sel = read_rollouts(w.path, columns=["correct", "entropy", "judge"])
    assert list(sel.columns) == ["step", "split", "correct", "entropy", "judge"]
    assert sel["entropy"].isna().tolist() == [True] * 6 + [False] * 6
    make_rows(2, "train").drop(columns=["correct"]).to_parquet(
        w.path / "rollouts" / "step-000002-train.parquet")
    with pytest.raises(RunLogError, match=r"step-000002-train\.parquet: missing column 'correct'"):
        read_rollouts(w.path, columns=["correct"])


def test_rollouts_rewrite_same_step_replaces(tmp_path):
    w = new_run(tmp_path)
    w.write_rollouts(5, "train", make_rows(5, "train", n_prompts=1))
    w.write_rollouts(5, "train", make_rows(5, "train", n_prompts=2))
    assert len(read_rollouts(w.path)) == 6
    assert no_temp_files(w.path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.drop(columns=["reward"]), r"missing required rollout column 'reward'"),
        (lambda d: d.assign(n_tokens=d["n_tokens"].astype(str)), r"'n_tokens' has type string"),
        (lambda d: d.assign(correct=d["correct"].astype(int)), r"'correct' has type int64"),
        (lambda d: d.assign(reward="1"), r"'reward' has type string"),
        (lambda d: d.assign(prompt_id=range(len(d))), r"'prompt_id' has type int64"),
        (lambda d: d.assign(sample_idx=2**40), r"'sample_idx' cannot be cast losslessly"),
        (lambda d: d.assign(step=41), r"rows have step \[41\]"),
        (lambda d: d.assign(split="train"), r"rows have split"),
        (lambda d: d.assign(answer=[None] + ["1"] * (len(d) - 1)), r"'answer' has 1 missing"),
        (lambda d: d.assign(entropy=[[0.1]] * len(d)), r"'entropy' row 0 has 1 values but "
                                                       r"n_tokens is 2"),
        (lambda d: d.assign(entropy=["a"] * len(d)), r"'entropy' has type string"),
        (lambda d: d.assign(token_ids=[[0.5, 1.5]] * len(d)), r"'token_ids' has type"),
    ],
)
def test_write_rollouts_validation(tmp_path, mutate, match):
    w = new_run(tmp_path)
    with pytest.raises(RunLogError, match=match) as info:
        w.write_rollouts(40, "eval", mutate(make_rows(with_tokens=False)))
    assert "step-000040-eval.parquet" in str(info.value)
    assert "\n" not in str(info.value)
    assert not (w.path / "rollouts" / "step-000040-eval.parquet").exists()
    assert no_temp_files(w.path)


def test_write_rollouts_bad_split_and_rows(tmp_path):
    w = new_run(tmp_path)
    with pytest.raises(RunLogError, match="split"):
        w.write_rollouts(0, "test", make_rows(0, "test"))
    with pytest.raises(RunLogError, match="no rows"):
        w.write_rollouts(0, "eval", [])
    with pytest.raises(RunLogError, match="'prompt'"):
        w.write_rollouts(0, "eval", make_rows(0).assign(prompt=[{"a": 1}, 2, "x", 1, 1, 1]))


# ------------------------------------------------------------- foreign files, bad files


def rollouts_dir(tmp_path: Path) -> Path:
    run = new_run(tmp_path, "foreign").path
    folder = run / "rollouts"
    folder.mkdir()
    return folder


def test_file_from_another_tool_is_read(tmp_path):
    """int32 steps, uint8 sample_idx, int64 n_tokens, large strings, dictionary-encoded
    split, large_list<double> entropy, int reward: widths and encodings are cast."""
    folder = rollouts_dir(tmp_path)
    n = 4
    table = pa.table({
        "step": pa.array([3] * n, pa.int32()),
        "split": pa.array(["eval"] * n).dictionary_encode(),
        "prompt_id": pa.array([f"q{i // 2}" for i in range(n)], pa.large_string()),
        "sample_idx": pa.array([0, 1, 0, 1], pa.uint8()),
        "prompt": pa.array(["p"] * n, pa.large_string()),
        "response": pa.array(["r"] * n),
        "answer": pa.array(["7"] * n),
        "reward": pa.array([1, 0, 0, 1], pa.int64()),
        "correct": pa.array([True, False, False, True]),
        "n_tokens": pa.array([2, 1, 3, 2], pa.int64()),
        "entropy": pa.array([[0.1, 0.2], [0.3], None, [0.4, 0.5]], pa.large_list(pa.float64())),
        "judge_score": pa.array([0.9, 0.1, 0.2, 0.8], pa.float16()),
    })
    pq.write_table(table, folder / "step-000003-eval.parquet")
    df = read_rollouts(folder.parent)
    assert df["step"].dtype == np.int64 and df["sample_idx"].dtype == np.int32
    assert df["n_tokens"].dtype == np.int32 and df["reward"].dtype == np.float64
    assert df["reward"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert df["split"].tolist() == ["eval"] * n
    assert df["entropy"].iloc[0].dtype == np.float32 and df["entropy"].iloc[2] is None
    assert "judge_score" in df.columns
    validate_run(folder.parent)


def test_pandas_written_file_with_free_name(tmp_path):
    """A single file of many steps (any name) written by pandas; step/split from columns."""
    folder = rollouts_dir(tmp_path)
    df = pd.concat([make_rows(0, "train"), make_rows(10, "eval")], ignore_index=True)
    df.to_parquet(folder / "all_rollouts.parquet", index=False)
    got = read_rollouts(folder.parent, split="eval")
    assert set(got["step"]) == {10} and len(got) == 6
    assert len(read_rollouts(folder.parent)) == 12
    # A bare folder of rollout files, or one file, is readable too.
    assert len(read_rollouts(folder)) == 12
    assert len(read_rollouts(folder / "all_rollouts.parquet", step=0)) == 6


def test_read_missing_column_names_file_and_column(tmp_path):
    folder = rollouts_dir(tmp_path)
    make_rows().drop(columns=["correct"]).to_parquet(folder / "step-000040-eval.parquet")
    with pytest.raises(RunLogError) as info:
        read_rollouts(folder.parent)
    msg = str(info.value)
    assert "step-000040-eval.parquet" in msg and "'correct'" in msg and "\n" not in msg
    assert isinstance(info.value, ValueError)


def test_read_mistyped_column_names_file_and_column(tmp_path):
    folder = rollouts_dir(tmp_path)
    make_rows().assign(step="40").to_parquet(folder / "step-000040-eval.parquet")
    with pytest.raises(RunLogError, match=r"step-000040-eval\.parquet: column 'step' has type"):
        read_rollouts(folder.parent)


def test_read_non_parquet_file(tmp_path):
    folder = rollouts_dir(tmp_path)
    (folder / "step-000001-train.parquet").write_text("this is not parquet")
    with pytest.raises(RunLogError, match=r"step-000001-train\.parquet: not a readable Parquet"):
        read_rollouts(folder.parent)
    with pytest.raises(RunLogError, match=r"1 problem\(s\).*step-000001-train\.parquet"):
        validate_run(folder.parent)


def test_read_content_disagrees_with_file_name(tmp_path):
    folder = rollouts_dir(tmp_path)
    make_rows(41, "eval").to_parquet(folder / "step-000040-eval.parquet")
    with pytest.raises(RunLogError, match=r"step-000040-eval\.parquet: rows have step \[41\]"):
        read_rollouts(folder.parent)


def test_read_no_rollouts(tmp_path):
    run = new_run(tmp_path).path
    with pytest.raises(RunLogError, match="no rollouts/ folder"):
        read_rollouts(run)
    (run / "rollouts").mkdir()
    with pytest.raises(RunLogError, match="no rollout Parquet files"):
        read_rollouts(run)


# ---------------------------------------------------------------- atomicity


def test_crash_mid_write_keeps_old_file(tmp_path, monkeypatch):
    w = new_run(tmp_path)
    w.write_rollouts(40, "eval", make_rows(n_prompts=1))
    target = w.path / "rollouts" / "step-000040-eval.parquet"
    before = target.read_bytes()

    def exploding_write(table, where, **kw):
        where.write(b"PAR1 partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(runlog.pq, "write_table", exploding_write)
    with pytest.raises(OSError, match="disk full"):
        w.write_rollouts(40, "eval", make_rows(n_prompts=2))
    with pytest.raises(OSError, match="disk full"):
        w.write_table("tokens", pd.DataFrame({"a": [1]}))
    assert target.read_bytes() == before
    assert not (w.path / "tokens.parquet").exists()
    assert no_temp_files(w.path)
    monkeypatch.undo()
    assert len(read_rollouts(w.path)) == 3


def test_crash_before_rename_keeps_old_manifest(tmp_path, monkeypatch):
    w = new_run(tmp_path)
    before = (w.path / "manifest.json").read_bytes()

    def no_replace(src, dst):
        raise KeyboardInterrupt  # killed between the write and the rename

    monkeypatch.setattr(runlog.os, "replace", no_replace)
    with pytest.raises(KeyboardInterrupt):
        w.finish()
    monkeypatch.undo()
    assert (w.path / "manifest.json").read_bytes() == before
    assert no_temp_files(w.path)


def test_hard_kill_leftover_temp_is_ignored(tmp_path):
    """A process killed mid-write leaves at worst a hidden temp file; readers skip it."""
    w = new_run(tmp_path)
    w.write_rollouts(40, "eval", make_rows())
    (w.path / "rollouts" / ".step-000050-eval.parquet.tmp-123-abcd").write_bytes(b"PAR1 half")
    (w.path / ".summary.json.tmp-123-abcd").write_text("{")
    assert len(read_rollouts(w.path)) == 6
    validate_run(w.path)


def test_no_temp_files_after_normal_writes(tmp_path):
    with new_run(tmp_path) as w:
        w.write_rollouts(0, "train", make_rows(0, "train"))
        w.write_json("summary", {"a": 1})
        w.write_table("tokens.parquet", pd.DataFrame({"x": [1.0]}))
    assert no_temp_files(w.path)
    assert sorted(p.name for p in w.path.iterdir()) == [
        "manifest.json", "rollouts", "summary.json", "tokens.parquet"]


# ---------------------------------------------------------------- other outputs


def test_write_json_and_table(tmp_path):
    w = new_run(tmp_path, kind="probe:entropy-tv")
    w.write_json("summary.json", {"rho": np.float64(0.52), "nan": float("nan"),
                                  "ks": np.array([1, 2])})
    tokens = pd.DataFrame({"entropy": np.array([0.1, 0.2], np.float32), "pos": [0, 1]})
    w.write_table("tokens", tokens)
    w.write_table("sub/interventions", pd.DataFrame({"bucket": ["low"]}))
    assert read_json(w.path, "summary") == {"rho": 0.52, "nan": None, "ks": [1, 2]}
    pd.testing.assert_frame_equal(read_table(w.path, "tokens"), tokens)
    assert read_table(w.path, "sub/interventions.parquet")["bucket"].tolist() == ["low"]
    w.write_json("probe.v2", [1])
    assert (w.path / "probe.v2.json").exists() and read_json(w.path, "probe.v2") == [1]
    for bad in ("manifest.json", "metrics.jsonl", "rollouts/x", "../escape", "/abs"):
        with pytest.raises(RunLogError):
            w.write_json(bad, {})
    with pytest.raises(RunLogError, match="does not exist"):
        read_table(w.path, "missing")


# ---------------------------------------------------------------- find_runs, validate_run


def test_find_runs_nested(tmp_path):
    a = new_run(tmp_path, "runs/a").path
    b = new_run(tmp_path, "runs/group/b").path
    parent = new_run(tmp_path, "runs/reproduce", kind="probe:reproduce").path
    child = new_run(parent, "sign-flip", kind="probe:sign-flip").path
    # Nothing inside rollouts/ or checkpoints/ is looked at.
    (a / "checkpoints" / "step-1").mkdir(parents=True)
    (a / "checkpoints" / "step-1" / "manifest.json").write_text("{}")
    (tmp_path / "runs" / "not-a-run").mkdir()
    found = find_runs(tmp_path / "runs")
    assert found == sorted([a, b, parent, child])
    assert find_runs([a, tmp_path / "runs" / "group", a]) == [a, b]
    assert find_runs(str(parent)) == [parent, child]
    with pytest.raises(RunLogError, match="not-a-run.*no run directories"):
        find_runs(tmp_path / "runs" / "not-a-run")
    with pytest.raises(RunLogError, match="does not exist"):
        find_runs(tmp_path / "nope")


def test_validate_run(tmp_path):
    with new_run(tmp_path) as w:
        w.log_metrics(0, "train", {"train/loss": 1.0})
        w.write_rollouts(0, "train", make_rows(0, "train"))
        w.write_json("summary", {"x": 1})
    summary = validate_run(w.path)
    assert summary["status"] == "complete" and summary["metrics_lines"] == 1
    assert summary["rollout_files"] == 1 and summary["rollout_rows"] == 6
    assert summary["outputs"] == ["summary.json"]
    (w.path / "summary.json").write_text("{broken")
    make_rows(0, "train").drop(columns=["answer"]).to_parquet(
        w.path / "rollouts" / "step-000001-train.parquet")
    with pytest.raises(RunLogError, match=r"2 problem\(s\).*'answer'.*summary\.json") as info:
        validate_run(w.path)
    assert "\n" not in str(info.value)


def test_run_view_traces_an_eval_of_a_checkpoint_to_its_train_run(tmp_path):
    train = new_run(tmp_path, "train-dasd", config={"method_options": {"gate": "none"}})
    ckpt = train.path / "checkpoints" / "step-2"
    ckpt.mkdir(parents=True)
    train.finish()
    ev = create_run(tmp_path / "ev", kind="eval", config={"benchmark": "aime24"}, seed=0,
                    model=str(ckpt), task="math")
    ev.finish()
    run = runlog.Run(ev.path, read_manifest(ev.path))
    assert (run.label, run.kind, run.status, run.task) == ("ev", "eval", "complete", "aime24")
    assert (run.model, run.method, run.variant) == ("tiny", "dasd", "gate=none")
    plain = runlog.Run(train.path, read_manifest(train.path), "x/train-dasd")
    assert (plain.label, plain.name, plain.method, plain.variant) == (
        "x/train-dasd", "train-dasd", "dasd", "gate=none")


def test_run_killed_without_finish_reads_as_running(tmp_path):
    w = new_run(tmp_path)
    w.log_metrics(0, "train", {"train/loss": 1.0})
    del w  # process dies: no finish, no context manager
    run = tmp_path / "run"
    assert read_manifest(run)["status"] == "running"
    assert validate_run(run)["metrics_lines"] == 1
    assert sorted(os.listdir(run)) == ["manifest.json", "metrics.jsonl"]


@pytest.mark.skipif(not hasattr(os, "kill") or os.name == "nt", reason="needs SIGKILL")
def test_sigkill_mid_run_leaves_only_whole_files(tmp_path):
    """A writer process killed at an arbitrary moment: every file left reads cleanly."""
    import signal
    import sys
    import time

    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
import numpy as np, pandas as pd
from dasd.runlog import create_run
w = create_run({str(tmp_path / "killed")!r}, kind="train", config={{}}, seed=0)
rows = pd.DataFrame({{
    "prompt_id": [f"p{{i}}" for i in range(2000)], "sample_idx": 0, "prompt": "q" * 200,
    "response": "r" * 500, "answer": "1", "reward": 1.0, "correct": True, "n_tokens": 64,
    "entropy": [np.ones(64, np.float32)] * 2000}})
step = 0
while True:
    w.log_metrics(step, "train", {{"train/loss": float(step), "train/x": 1.0}})
    w.write_rollouts(step % 3, "train", rows.assign(step=step % 3))
    w.write_json("summary", {{"step": step, "blob": list(range(5000))}})
    if step == 0:
        print("ready", flush=True)  # one whole iteration is on disk
    step += 1
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    run = tmp_path / "killed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunLogWarning)  # a cut metrics line is allowed
        summary = validate_run(run)
        metrics = read_metrics(run)
    assert summary["status"] == "running" and len(metrics) >= 1
    assert summary["rollout_rows"] == 2000 * summary["rollout_files"] > 0
    assert isinstance(read_json(run, "summary")["blob"], list)
    open_run(run).finish()  # resumable after the kill
