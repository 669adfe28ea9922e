"""What every hostile-input case checks (tests/test_hostile_*.py), and small run builders.

A hostile case passes when the command exits with the expected code, prints its error as one
line on stderr naming what is wrong, prints no traceback, and leaves no run at status
"running" and no hidden temporary behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from dasd.runlog import create_run

runner = CliRunner()


def assert_one_line_error(result, *needles: str, code: int = 2) -> str:
    """``result`` (a CliRunner result) failed with ``code`` and one stderr line holding every
    one of ``needles``; returns that line."""
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}")
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_no_run_left_running(root: Path) -> None:
    """No manifest under ``root`` says "running", and no hidden temporary (``.tmp-``) is
    left."""
    for manifest in Path(root).rglob("manifest.json"):
        assert json.loads(manifest.read_text())["status"] != "running", manifest
    leftovers = [p for p in Path(root).rglob("*") if ".tmp-" in p.name]
    assert not leftovers, leftovers


def rollout_rows(*, step: int = 0, split: str = "eval", prompts: int = 2, k: int = 4,
                 text: str = "3+4=7") -> pd.DataFrame:
    """``prompts`` x ``k`` valid rollout rows, half of them correct."""
    rows = [dict(step=step, split=split, prompt_id=f"cd-3-4-{p}-7", sample_idx=j,
                 prompt="reach 7", response=text, answer="3+4", reward=float(j % 2),
                 correct=bool(j % 2), n_tokens=len(text))
            for p in range(prompts) for j in range(k)]
    return pd.DataFrame(rows)


def eval_run(root: Path, name: str = "ev", *, rows: pd.DataFrame | None = None,
             method: str | None = "dasd", model: str = "tiny") -> Path:
    """A complete eval run holding ``rows`` (default: ``rollout_rows()``) at step 0."""
    with create_run(root / name, kind="eval", config={}, seed=0, method=method, model=model,
                    task="countdown") as run:
        run.write_rollouts(0, "eval", rollout_rows() if rows is None else rows)
    return root / name


def edit_manifest(run: Path, **fields: object) -> None:
    """Overwrite fields of ``run``'s manifest (as a hostile edit would)."""
    path = run / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(fields)
    path.write_text(json.dumps(manifest))
