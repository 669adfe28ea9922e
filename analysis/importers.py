"""Rollout logs of other trainers -> run directories (DESIGN.md section 4), so that
``dasd-analyze health``, ``tables`` and ``figures`` read runs made with TRL or verl.

Formats read, as the libraries write them:

* **TRL** (``GRPOTrainer(args=GRPOConfig(log_completions=True))``, trl 1.16):
  ``OUTPUT_DIR/completions/completions_NNNNN.parquet``, one file per logging step, columns
  ``step``, ``prompt``, ``completion``, one float column per reward function, the columns reward
  functions add through ``log_extra``, and ``advantage``. ``dasd.integrations.trl`` adds
  ``token_ids, entropy, student_logp, teacher_logp, omega, token_advantage``, ``prompt_id`` and
  ``answer``.
* **verl** (``trainer.rollout_data_dir`` or ``trainer.validation_data_dir``, verl 0.9):
  ``DIR/N.jsonl``, one file per step, one JSON object per response with ``input`` (decoded
  prompt), ``output`` (decoded response), ``gts`` (ground truth), ``score``, ``step``, the reward
  function's extra fields (e.g. ``acc``), ``uid`` (the v1 trainer's ``{prompt uid}_{session}_
  {index}``) or ``request_id``. ``dasd.integrations.verl`` adds the per-token columns above.

Mapping onto the rollout schema, and the choices the foreign logs force:

1. ``prompt_id``: a logged ``prompt_id`` column; else verl's prompt uid (the ``uid`` key without
   its session and output suffixes); else ``p-`` and 12 hex digits of the SHA-1 of the prompt
   text, so the same prompt text is one prompt.
2. ``sample_idx``: the order of a prompt's responses within a step.
3. ``reward``: TRL: the sum of the reward-function columns (TRL does not log its
   ``reward_weights``; ``reward_columns`` names them when the automatic choice, every float
   column that is not one of the known ones, is wrong). verl: ``score``. A missing reward is 0.
4. ``correct``: a logged ``correct`` or (verl) ``acc`` field; else ``reward > correct_threshold``
   (0.5: a 0/1 verifier).
5. ``answer``: a logged ``answer`` (TRL) or ``gts`` (verl, JSON text unless a string); else "".
6. ``n_tokens``: the length of a logged ``token_ids``; else the response re-tokenized with
   ``tokenizer`` (no special tokens, so an EOS the model emitted is not counted, unlike in
   dasd's own runs); with neither, an error says to pass one.
7. Per-token columns keep their names; ``token_advantage`` becomes ``advantage``.
8. Conversational prompts and completions (lists of messages) become ``role: content`` lines.
9. ``metrics.jsonl`` is derived from the imported rows, one line a step, with the names dasd's
   trainer uses: ``train/reward``, ``train/accuracy``, ``train/length_tokens`` and, with
   per-token entropies, ``train/entropy_mean`` (token-weighted); eval imports get
   ``dasd.evaluation.eval_metrics``. TRL logs only the latest generation batch at each logging
   step, so these are means over the logged rows, not over every rollout of the run.
10. The split is the caller's (``split``): neither log says whether it holds training or
    validation rollouts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dasd.runlog import TOKEN_COLUMNS, RunLogError, create_run

__all__ = ["FORMATS", "Imported", "import_log", "import_trl", "import_verl"]

_TRL_FILE = re.compile(r"^completions_(\d+)\.parquet$")
_VERL_FILE = re.compile(r"^(\d+)\.jsonl$")
_UID_SUFFIX = re.compile(r"^(.+)_\d+_\d+$")
#: TRL completions columns that are never a reward function's.
_TRL_KNOWN = {"step", "prompt", "completion", "advantage", "image", "images", "prompt_id",
              "answer", "correct", "token_advantage", *TOKEN_COLUMNS}


@dataclass(frozen=True)
class Imported:
    """What an import wrote: the run directory, its steps and its number of rollout rows."""

    path: Path
    steps: list[int]
    rows: int


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _text(value: Any) -> str:
    """A prompt or completion as text: a string as is, messages as ``role: content`` lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(m, dict) for m in value):
        return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in value)
    return "" if value is None else str(value)


def _prompt_ids(frame: pd.DataFrame) -> list[str]:
    if "prompt_id" in frame:
        return [str(v) for v in frame["prompt_id"]]
    if "uid" in frame:
        ids = []
        for uid in frame["uid"].astype(str):
            match = _UID_SUFFIX.match(uid)
            ids.append(match.group(1) if match else uid)
        return ids
    return ["p-" + hashlib.sha1(p.encode("utf-8")).hexdigest()[:12] for p in frame["prompt"]]


def _n_tokens(frame: pd.DataFrame, tokenizer: Callable[[str], int] | None, where: str) -> np.ndarray:
    if "token_ids" in frame:
        return np.array([len(v) for v in frame["token_ids"]], dtype=np.int32)
    if tokenizer is None:
        raise RunLogError(
            f"{where}: no token_ids column to count response tokens; pass a tokenizer "
            "(--tokenizer MODEL, the model's name or directory)"
        )
    return np.array([tokenizer(r) for r in frame["response"]], dtype=np.int32)


def _schema_rows(frame: pd.DataFrame, *, rewards: np.ndarray, correct_threshold: float,
                 tokenizer: Callable[[str], int] | None, where: str) -> pd.DataFrame:
    """The rollout-schema rows of one step's log (``frame`` has ``prompt`` and ``response``)."""
    out = pd.DataFrame({"prompt": frame["prompt"].map(_text), "response": frame["response"].map(_text)})
    out.insert(0, "prompt_id", _prompt_ids(frame.assign(prompt=out["prompt"])))
    out.insert(1, "sample_idx", out.groupby("prompt_id", sort=False).cumcount().astype(np.int32))
    out["answer"] = frame["answer"].map(_answer_text) if "answer" in frame else ""
    out["reward"] = np.nan_to_num(rewards.astype(np.float64), nan=0.0)
    if "correct" in frame:
        out["correct"] = frame["correct"].astype(bool).to_numpy()
    else:
        out["correct"] = out["reward"].to_numpy() > correct_threshold
    out["n_tokens"] = _n_tokens(frame.assign(response=out["response"]), tokenizer, where)
    for name in TOKEN_COLUMNS:
        source = "token_advantage" if name == "advantage" else name
        if source in frame:
            dtype = np.int32 if name == "token_ids" else np.float32
            out[name] = [np.asarray(v, dtype=dtype) for v in frame[source]]
    return out


def _answer_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return "" if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _step_metrics(rows: pd.DataFrame, split: str) -> dict[str, float]:
    if split == "eval":
        from dasd.evaluation import eval_metrics

        return eval_metrics(rows)
    metrics = {
        "train/reward": float(rows["reward"].mean()),
        "train/accuracy": float(rows["correct"].mean()),
        "train/length_tokens": float(rows["n_tokens"].mean()),
    }
    if "entropy" in rows:
        values = np.concatenate([np.asarray(v, dtype=np.float64) for v in rows["entropy"]])
        if values.size:
            metrics["train/entropy_mean"] = float(values.mean())
    return metrics


def _load_tokenizer(name: str | os.PathLike[str] | None) -> Callable[[str], int] | None:
    if name is None:
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(name))
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def _write_run(dest: Path, steps: Iterable[tuple[int, pd.DataFrame]], *, fmt: str,
               source: Path, split: str, options: dict[str, Any], method: str | None,
               model: str | None, task: str | None) -> Imported:
    """Convert every step first (a bad file leaves no run directory behind), then write."""
    converted = list(steps)
    config = {"imported_from": str(source), "format": fmt, "split": split, **options}
    with create_run(dest, kind="train", config=config, seed=None, method=method, model=model,
                    task=task) as run:
        for step, rows in converted:
            run.write_rollouts(step, split, rows)
            run.log_metrics(step, split, _step_metrics(rows, split))
    return Imported(path=dest, steps=[step for step, _ in converted],
                    rows=sum(len(rows) for _, rows in converted))


def _trl_files(source: Path) -> list[tuple[int, Path]]:
    folder = source / "completions" if (source / "completions").is_dir() else source
    if not folder.is_dir():
        raise RunLogError(f"{source}: not a directory; pass TRL's output_dir (it holds completions/)")
    files = sorted((int(m.group(1)), folder / m.group(0))
                   for m in map(_TRL_FILE.match, os.listdir(folder)) if m)
    if not files:
        raise RunLogError(
            f"{folder}: no TRL completions tables (completions_NNNNN.parquet); train with "
            "GRPOConfig(log_completions=True) and pass its output_dir"
        )
    return files


def import_trl(source: str | os.PathLike[str], dest: str | os.PathLike[str], *,
               split: str = "train", reward_columns: Sequence[str] | None = None,
               correct_threshold: float = 0.5, tokenizer: str | os.PathLike[str] | None = None,
               method: str | None = None, model: str | None = None,
               task: str | None = None) -> Imported:
    """Convert TRL's completions tables under ``source`` (its ``output_dir`` or the
    ``completions`` folder) into a new run directory ``dest`` (module docstring for the mapping).

    ``reward_columns`` names the reward-function columns (default: every float column that is
    not a known one); ``tokenizer`` (a name or directory) counts tokens when no ``token_ids``
    column was logged; ``method``, ``model`` and ``task`` go into the manifest (``task``
    "countdown" lets ``health`` judge Countdown steps from ``cd-...`` prompt ids).
    """
    source, dest = Path(source), Path(dest)
    files = _trl_files(source)
    count = _load_tokenizer(tokenizer)

    def steps() -> Iterable[tuple[int, pd.DataFrame]]:
        for step, file in files:
            where = str(file)
            try:
                frame = pd.read_parquet(file)
            except (OSError, ValueError) as exc:
                raise RunLogError(f"{where}: not a readable Parquet file ({_one_line(exc)})") from None
            for name in ("prompt", "completion"):
                if name not in frame:
                    raise RunLogError(f"{where}: missing TRL column {name!r}; is this a "
                                      "GRPOTrainer completions table?")
            names = list(reward_columns) if reward_columns is not None else [
                c for c in frame.columns
                if c not in _TRL_KNOWN and pd.api.types.is_float_dtype(frame[c])]
            missing = [c for c in names if c not in frame]
            if missing:
                raise RunLogError(f"{where}: no reward column {missing[0]!r}; columns are "
                                  f"{list(frame.columns)}")
            rewards = np.nansum(frame[names].to_numpy(np.float64), axis=1) if names else np.zeros(len(frame))
            file_steps = set(frame["step"].tolist()) if "step" in frame else {step}
            if file_steps != {step}:
                raise RunLogError(f"{where}: rows have step {sorted(file_steps)}, file is for step {step}")
            rows = _schema_rows(frame.rename(columns={"completion": "response"}), rewards=rewards,
                                correct_threshold=correct_threshold, tokenizer=count, where=where)
            yield step, rows

    options = {"reward_columns": None if reward_columns is None else list(reward_columns),
               "correct_threshold": correct_threshold,
               "tokenizer": None if tokenizer is None else str(tokenizer)}
    return _write_run(dest, steps(), fmt="trl", source=source, split=split, options=options,
                      method=method, model=model, task=task)


def _read_jsonl(file: Path) -> pd.DataFrame:
    records = []
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RunLogError(f"{file}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise RunLogError(f"{file}:{number}: expected a JSON object per line")
            records.append(record)
    if not records:
        raise RunLogError(f"{file}: no rollouts (empty file)")
    return pd.DataFrame.from_records(records)


def import_verl(source: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                split: str = "train", correct_threshold: float = 0.5,
                tokenizer: str | os.PathLike[str] | None = None, method: str | None = None,
                model: str | None = None, task: str | None = None) -> Imported:
    """Convert verl's rollout dumps ``source/N.jsonl`` (``trainer.rollout_data_dir``, or
    ``validation_data_dir`` with ``split="eval"``) into a new run directory ``dest`` (module
    docstring for the mapping); the options as :func:`import_trl`."""
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise RunLogError(f"{source}: not a directory; pass verl's trainer.rollout_data_dir")
    files = sorted((int(m.group(1)), source / m.group(0))
                   for m in map(_VERL_FILE.match, os.listdir(source)) if m)
    if not files:
        raise RunLogError(f"{source}: no verl rollout dumps (N.jsonl); set "
                          "trainer.rollout_data_dir in the verl config")
    count = _load_tokenizer(tokenizer)

    def steps() -> Iterable[tuple[int, pd.DataFrame]]:
        for step, file in files:
            where = str(file)
            frame = _read_jsonl(file)
            for name in ("input", "output", "score"):
                if name not in frame:
                    raise RunLogError(f"{where}: missing verl field {name!r}; is this a rollout dump?")
            if "step" in frame and set(frame["step"].tolist()) != {step}:
                raise RunLogError(f"{where}: rows have step {sorted(set(frame['step']))}, "
                                  f"file is for step {step}")
            frame = frame.rename(columns={"input": "prompt", "output": "response"})
            if "gts" in frame and "answer" not in frame:
                frame = frame.rename(columns={"gts": "answer"})
            if "acc" in frame and "correct" not in frame:
                frame = frame.rename(columns={"acc": "correct"})
            rewards = pd.to_numeric(frame["score"], errors="coerce").to_numpy(np.float64)
            yield step, _schema_rows(frame, rewards=rewards, correct_threshold=correct_threshold,
                                     tokenizer=count, where=where)

    options = {"correct_threshold": correct_threshold,
               "tokenizer": None if tokenizer is None else str(tokenizer)}
    return _write_run(dest, steps(), fmt="verl", source=source, split=split, options=options,
                      method=method, model=model, task=task)


#: Importers by format name (``dasd-analyze import FORMAT DIR``).
FORMATS: dict[str, Callable[..., Imported]] = {"trl": import_trl, "verl": import_verl}


def import_log(fmt: str, source: str | os.PathLike[str], dest: str | os.PathLike[str],
               **options: Any) -> Imported:
    """``import_trl`` or ``import_verl`` by name; an unknown name lists the valid ones."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; valid: {', '.join(sorted(FORMATS))}")
    return FORMATS[fmt](source, dest, **options)
