"""analysis.importers and ``dasd-analyze import``: TRL completions tables written by a real
1-step TRL run (plain GRPOTrainer and DASD's subclass; skipped without TRL) and verl rollout
dumps (verl's own writer when verl imports, else the format mirrored from verl 0.9.1's
``RayPPOTrainer._write_generations``) become run directories that health, tables and figures
read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.health import analyze_runs
from analysis.importers import import_log, import_trl, import_verl
from cli import analyze_app
from dasd.models import load_model
from dasd.runlog import (
    RunLogError,
    read_manifest,
    read_metrics,
    read_rollouts,
    validate_run,
)
from dasd.tasks import CountdownTask

GROUP = 4


def half_reward(completions: list[str], **_: object) -> list[float]:
    return [float(len(text) % 2) for text in completions]


@pytest.fixture(scope="module")
def trl_logs(model_dir, tmp_path_factory) -> dict[str, Path]:
    """Output dirs of a 1-step plain GRPOTrainer run and a 1-step DASDGRPOTrainer run."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from dasd.integrations.trl import DASDConfig, DASDGRPOTrainer

    task = CountdownTask()
    rows = [{"prompt": task.student_prompt(p), "teacher_prompt": task.teacher_prompt(p),
             "answer": p.answer, "prompt_id": p.id}
            for p in task.sample(2, split="train", seed=11)]
    common = {"per_device_train_batch_size": 2 * GROUP, "num_generations": GROUP,
              "max_completion_length": 10, "max_steps": 1, "learning_rate": 1e-3, "bf16": False,
              "gradient_checkpointing": False, "use_cpu": True, "logging_steps": 1,
              "save_strategy": "no", "report_to": "none", "log_completions": True,
              "num_completions_to_print": 0, "seed": 7}
    out = {}
    for name, trainer_cls, config_cls in (("plain", GRPOTrainer, GRPOConfig),
                                          ("dasd", DASDGRPOTrainer, DASDConfig)):
        model, tokenizer = load_model(model_dir)
        path = tmp_path_factory.mktemp(f"trl-{name}")
        trainer_cls(model=model, reward_funcs=half_reward, processing_class=tokenizer,
                    args=config_cls(output_dir=str(path), **common),
                    train_dataset=Dataset.from_list(rows)).train()
        out[name] = path
    return out


def test_plain_trl_log_round_trip(trl_logs, model_dir, tmp_path):
    """A plain GRPOTrainer log: prompt ids from the prompt text, token counts from the
    tokenizer, reward from the reward-function column, everything else as logged."""
    logged = pd.read_parquet(trl_logs["plain"] / "completions" / "completions_00001.parquet")
    imported = import_trl(trl_logs["plain"], tmp_path / "run", tokenizer=model_dir)
    assert (imported.steps, imported.rows) == ([1], 2 * GROUP)
    rows = read_rollouts(imported.path, split="train")
    tok = load_model(model_dir)[1]
    assert rows["prompt"].tolist() == logged["prompt"].tolist()
    assert rows["response"].tolist() == logged["completion"].tolist()
    assert rows["reward"].tolist() == logged["half_reward"].tolist()
    assert rows["correct"].tolist() == (logged["half_reward"] > 0.5).tolist()
    assert rows["n_tokens"].tolist() == [len(tok(t, add_special_tokens=False)["input_ids"])
                                         for t in logged["completion"]]
    digest = "p-" + hashlib.sha1(logged["prompt"][0].encode()).hexdigest()[:12]
    assert rows["prompt_id"][0] == digest
    assert rows.groupby("prompt_id")["sample_idx"].apply(sorted).tolist() == [[0, 1, 2, 3]] * 2
    assert rows["answer"].eq("").all() and "entropy" not in rows
    metrics = read_metrics(imported.path)
    assert metrics["train/reward"].tolist() == pytest.approx([logged["half_reward"].mean()])
    assert read_manifest(imported.path)["config"]["format"] == "trl"


def test_dasd_trl_log_round_trip_feeds_health_tables_figures(trl_logs, tmp_path):
    """DASD's per-token columns survive the import one value per token, and the imported runs
    give health rows (with Countdown's exact step judge), Table 3 and Fig. 5 / 6a."""
    from analysis.tables import build_tables
    from figures import write_figures

    logged = pd.read_parquet(trl_logs["dasd"] / "completions" / "completions_00001.parquet")
    train = import_trl(trl_logs["dasd"], tmp_path / "runs" / "train", task="countdown",
                       method="dasd")
    rows = read_rollouts(train.path, split="train")
    assert rows["prompt_id"].str.startswith("cd-").all()
    assert rows["answer"].tolist() == logged["answer"].tolist()
    assert rows["n_tokens"].tolist() == [len(v) for v in logged["token_ids"]]
    for name in ("entropy", "student_logp", "teacher_logp", "omega"):
        np.testing.assert_allclose(np.concatenate(rows[name].tolist()),
                                   np.concatenate(logged[name].tolist()), rtol=1e-6)
    np.testing.assert_allclose(np.concatenate(rows["advantage"].tolist()),
                               np.concatenate(logged["token_advantage"].tolist()), rtol=1e-6)
    assert validate_run(train.path)["rollout_rows"] == 2 * GROUP

    health = analyze_runs([train.path], split="train")
    assert len(health.rows) == 1 and health.rows["step_acc"].notna().all()
    assert health.rows["n_responses"].tolist() == [2 * GROUP]

    evaluation = import_trl(trl_logs["dasd"], tmp_path / "runs" / "eval", split="eval",
                            task="countdown", method="dasd")
    assert "eval/avg_at_4" in read_metrics(evaluation.path)
    tables, _ = build_tables(analyze_runs([evaluation.path], last=True, split="eval"))
    assert any("Table 3" in t.to_markdown() for t in tables)
    outcomes = {o.spec.name: o for o in write_figures([tmp_path / "runs"], tmp_path / "figs")}
    assert outcomes["fig5_training_dynamics"].files
    assert outcomes["fig6a_entropy_distribution"].files


def write_verl_dump(folder: Path, step: int, records: list[dict]) -> None:
    """verl 0.9.1's rollout dump (``RayPPOTrainer._write_generations``): ``{step}.jsonl``, one
    object per response with input, output, gts, score, step and the reward extras; written by
    verl itself when it imports, else the same JSON mirrored here."""
    inputs = [r["input"] for r in records]
    outputs = [r["output"] for r in records]
    gts = [r["gts"] for r in records]
    scores = [r["score"] for r in records]
    extras = {key: [r[key] for r in records] for key in records[0]
              if key not in ("input", "output", "gts", "score")}
    try:
        from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    except ImportError:
        folder.mkdir(parents=True, exist_ok=True)
        base = {"input": inputs, "output": outputs, "gts": gts, "score": scores,
                "step": [step] * len(records), **extras}
        with open(folder / f"{step}.jsonl", "w") as f:
            f.writelines(json.dumps({k: v[i] for k, v in base.items()}, ensure_ascii=False) + "\n" for i in range(len(records)))
        return
    RayPPOTrainer._write_generations(inputs, outputs, gts, scores, extras, str(folder), step)


def verl_records(step: int) -> list[dict]:
    """Two prompts x 2 responses, v1-style uids ``{prompt uid}_{session}_{index}``."""
    return [{"input": f"user: q{p}", "output": f"step {step} answer {p}.{s}", "gts": [p, "x"],
             "score": float(s), "acc": bool(s), "uid": f"u{p}-{step}_{s}_0"}
            for p in range(2) for s in range(2)]


def test_verl_dump_round_trip(tmp_path):
    dumps = tmp_path / "rollout_data"
    for step in (3, 1):
        write_verl_dump(dumps, step, verl_records(step))
    with pytest.raises(RunLogError, match="pass a tokenizer"):
        import_verl(dumps, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # a failed import leaves no run behind
    imported = import_verl(dumps, tmp_path / "run", tokenizer=str(_char_tokenizer(tmp_path)))
    assert (imported.steps, imported.rows) == ([1, 3], 8)
    rows = read_rollouts(imported.path, step=3)
    assert rows["prompt_id"].tolist() == ["u0-3", "u0-3", "u1-3", "u1-3"]
    assert rows["sample_idx"].tolist() == [0, 1, 0, 1]
    assert rows["answer"].tolist() == ['[0, "x"]', '[0, "x"]', '[1, "x"]', '[1, "x"]']
    assert rows["reward"].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert rows["correct"].tolist() == [False, True, False, True]
    assert rows["n_tokens"].tolist() == [len(t) for t in rows["response"]]  # one char, one token
    health = analyze_runs([imported.path], split="train")
    assert health.rows["avg_at_k"].tolist() == [0.5, 0.5]


def test_verl_dump_with_dasd_token_columns(tmp_path):
    records = verl_records(2)
    for i, r in enumerate(records):
        r |= {"token_ids": [5] * (i + 1), "entropy": [0.5] * (i + 1),
              "token_advantage": [float(i)] * (i + 1), "prompt_id": f"cd-1-2-3-{i // 2}"}
    write_verl_dump(tmp_path / "dumps", 2, records)
    rows = read_rollouts(import_verl(tmp_path / "dumps", tmp_path / "run").path)
    assert rows["n_tokens"].tolist() == [1, 2, 3, 4]
    assert rows["prompt_id"].tolist() == ["cd-1-2-3-0"] * 2 + ["cd-1-2-3-1"] * 2
    assert rows["advantage"][2].tolist() == [2.0, 2.0, 2.0]
    assert read_metrics(tmp_path / "run")["train/entropy_mean"].tolist() == [0.5]


def _char_tokenizer(tmp_path: Path) -> Path:
    from dasd.models import make_char_tokenizer

    path = tmp_path / "tok"
    make_char_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("fmt", "setup", "message"),
    [
        ("trl", lambda d: None, "no TRL completions tables"),
        ("verl", lambda d: None, "no verl rollout dumps"),
        ("verl", lambda d: (d / "1.jsonl").write_text('{"input": "a"}\n'), "missing verl field 'output'"),
        ("verl", lambda d: (d / "1.jsonl").write_text("{oops\n"), "not valid JSON"),
        ("trl", lambda d: pd.DataFrame({"step": [1], "prompt": ["a"]}).to_parquet(
            d / "completions_00001.parquet"), "missing TRL column 'completion'"),
        ("csv", lambda d: None, "unknown log format 'csv'"),
    ],
)
def test_bad_logs_give_one_line_errors(tmp_path, fmt, setup, message):
    source = tmp_path / "log"
    source.mkdir()
    setup(source)
    with pytest.raises(ValueError, match=message) as err:
        import_log(fmt, source, tmp_path / "run")
    assert "\n" not in str(err.value)


def test_cli_import_smoke(tmp_path):
    write_verl_dump(tmp_path / "dumps", 1, [
        {**r, "token_ids": [1] * len(r["output"])} for r in verl_records(1)])
    runner = CliRunner()
    result = runner.invoke(analyze_app, ["import", "verl", str(tmp_path / "dumps"),
                                         "--runs-dir", str(tmp_path / "runs"), "--task", "math"])
    assert result.exit_code == 0, result.output
    assert "imported 4 rollouts at 1 steps" in result.output
    assert read_manifest(tmp_path / "runs" / "verl-dumps")["task"] == "math"
    again = runner.invoke(analyze_app, ["import", "verl", str(tmp_path / "dumps"),
                                        "--runs-dir", str(tmp_path / "runs")])
    assert again.exit_code == 2 and "already holds a run" in again.output
    bad = runner.invoke(analyze_app, ["import", "verl", str(tmp_path / "dumps"),
                                      "--reward-column", "x"])
    assert bad.exit_code == 2 and "--reward-column applies to trl logs only" in bad.output
