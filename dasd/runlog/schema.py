"""The run directory's schema (DESIGN.md section 4): names, rules and checks, no I/O.

Holds the layout's constants (:data:`SCHEMA_VERSION`, the reserved file and folder names,
:data:`ROLLOUT_SCHEMA` and the columns derived from it), the errors (:class:`RunLogError`,
:class:`RunLogWarning`), the naming rules (:func:`run_path`, :func:`rollout_filename`, the
checks of steps, splits and output names), and the validation shared by writers and readers:
:func:`conform_rollouts` (rollout columns cast to the declared types), the per-file partition
and uniqueness checks, and the type checks of manifest fields and metrics records.
"""

from __future__ import annotations

import numbers
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "REQUIRED_ROLLOUT_COLUMNS",
    "ROLLOUT_KEY",
    "ROLLOUT_SCHEMA",
    "SCHEMA_VERSION",
    "SPLITS",
    "STATUSES",
    "TOKEN_COLUMNS",
    "RunLogError",
    "RunLogWarning",
    "conform_rollouts",
    "rollout_filename",
    "run_path",
]

#: Version of this on-disk layout; bumped on any incompatible change.
SCHEMA_VERSION = 1
SPLITS = ("train", "eval")
STATUSES = ("running", "complete", "failed")

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
ROLLOUTS = "rollouts"
CHECKPOINTS = "checkpoints"
_RESERVED = {MANIFEST, METRICS, ROLLOUTS, CHECKPOINTS}
_MANIFEST_KEYS = ("schema_version", "kind", "status")

#: Rollout columns (one row = one response): name -> (arrow type, required).
ROLLOUT_SCHEMA: dict[str, tuple[pa.DataType, bool]] = {
    "step": (pa.int64(), True),
    "split": (pa.string(), True),
    "prompt_id": (pa.string(), True),
    "sample_idx": (pa.int32(), True),
    "prompt": (pa.string(), True),
    "response": (pa.string(), True),
    "answer": (pa.string(), True),
    "reward": (pa.float64(), True),
    "correct": (pa.bool_(), True),
    "n_tokens": (pa.int32(), True),
    "truncated": (pa.bool_(), False),
    "token_ids": (pa.list_(pa.int32()), False),
    "entropy": (pa.list_(pa.float32()), False),
    "student_logp": (pa.list_(pa.float32()), False),
    "teacher_logp": (pa.list_(pa.float32()), False),
    "omega": (pa.list_(pa.float32()), False),
    "advantage": (pa.list_(pa.float32()), False),
    "step_correct": (pa.list_(pa.bool_()), False),
}
#: The columns that identify one response: a run logs each key once.
ROLLOUT_KEY = ("step", "split", "prompt_id", "sample_idx")
REQUIRED_ROLLOUT_COLUMNS = tuple(name for name, (_, req) in ROLLOUT_SCHEMA.items() if req)
#: List columns with one value per response token (length must equal ``n_tokens``).
TOKEN_COLUMNS = ("token_ids", "entropy", "student_logp", "teacher_logp", "omega", "advantage")

_KIND_RE = re.compile(r"^(train|eval|probe:[a-z0-9][a-z0-9_.\-]*)$")
_METRIC_KEY_RE = re.compile(r"^[^/\s]+/\S+$")
_ROLLOUT_FILE_RE = re.compile(r"^step-(\d+)-([A-Za-z0-9_]+)\.parquet$")


class RunLogError(ValueError):
    """A run directory or one of its files does not follow the schema (one-line message)."""


class RunLogWarning(UserWarning):
    """Something was skipped while reading a run (e.g. a truncated final metrics line)."""


def run_path(runs_dir: str | os.PathLike[str], name: str) -> Path:
    """``runs_dir/name``, where ``name`` is one or more plain path components (``a`` or
    ``a/b``; not empty, absolute, ``.``, ``..`` or hidden), so a run stays under ``runs_dir``."""
    parts = name.split("/") if isinstance(name, str) else []
    if (not parts or Path(name).is_absolute() or "\\" in name or "\0" in name
            or any(not p or p != p.strip() or p.startswith(".") for p in parts)):
        raise RunLogError(
            f"run name {name!r}: give one or more plain folder names joined by '/', to stay "
            f"under {os.fspath(runs_dir)} (no empty, '.', '..', hidden or absolute names)"
        )
    return Path(runs_dir, *parts)


def _is_temp(name: str) -> bool:
    return name.startswith(".")


def _check_split(split: object) -> str:
    if split not in SPLITS:
        raise RunLogError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return str(split)


def _check_step(step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise RunLogError(f"step must be a non-negative integer, got {step!r}")
    return int(step)


def rollout_filename(step: int, split: str) -> str:
    """``step-000040-eval.parquet``: the file of one (step, split) under ``rollouts/``."""
    return f"step-{_check_step(step):06d}-{_check_split(split)}.parquet"


def _child(run: Path, name: str | os.PathLike[str], suffix: str) -> Path:
    """``run/name`` (``suffix`` appended unless ``name`` ends with it), refusing reserved names
    and anything outside the run directory."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise RunLogError(f"{name!s}: give a file name relative to the run directory")
    if rel.parts[0] in _RESERVED or _is_temp(rel.name):
        raise RunLogError(
            f"{name!s}: reserved name in a run directory ({', '.join(sorted(_RESERVED))}); "
            "choose another"
        )
    if rel.suffix != suffix:
        rel = rel.with_name(rel.name + suffix)
    return run / rel


def _type_name(t: pa.DataType) -> str:
    """Arrow type as written in messages; every string encoding reads ``string``."""
    if _string_like(t):
        return "string"
    value = _list_value_type(t)
    if value is not None:
        return f"list<{_type_name(value)}>"
    return str(t)


def _string_like(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _string_like(t.value_type)
    return (pa.types.is_string(t) or pa.types.is_large_string(t)
            or getattr(pa.types, "is_string_view", lambda _: False)(t))


def _list_value_type(t: pa.DataType) -> pa.DataType | None:
    if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            or getattr(pa.types, "is_list_view", lambda _: False)(t)
            or getattr(pa.types, "is_large_list_view", lambda _: False)(t)):
        return t.value_type
    return None


def _scalar_kind_ok(actual: pa.DataType, target: pa.DataType) -> bool:
    """Same kind of value (widths may differ): int<-int, float<-float|int, bool, string."""
    if pa.types.is_null(actual):
        return True
    if pa.types.is_integer(target):
        return pa.types.is_integer(actual)
    if pa.types.is_floating(target):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    if pa.types.is_boolean(target):
        return pa.types.is_boolean(actual)
    if pa.types.is_string(target):
        return _string_like(actual)
    return False  # pragma: no cover - every declared type is covered above


def _kind_ok(actual: pa.DataType, target: pa.DataType) -> bool:
    target_value = _list_value_type(target)
    if target_value is None:
        return _scalar_kind_ok(actual, target)
    if pa.types.is_null(actual):
        return True
    actual_value = _list_value_type(actual)
    return actual_value is not None and _scalar_kind_ok(actual_value, target_value)


def _cast_column(col: pa.ChunkedArray, target: pa.DataType, where: str, name: str
                 ) -> pa.ChunkedArray:
    if col.type == target:
        return col
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    try:
        return col.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunLogError(
            f"{where}: column {name!r} cannot be cast losslessly from "
            f"{_type_name(col.type)} to {_type_name(target)} ({detail})"
        ) from None


def conform_rollouts(table: pa.Table, where: str, *, require: bool = True) -> pa.Table:
    """Check ``table`` against :data:`ROLLOUT_SCHEMA` and cast it to the declared types.

    ``where`` names the source (a file) in every error. With ``require`` every required
    column must be present (False when only a subset of columns was read). Returns the
    table with declared columns first (schema order), then extra columns as they came.
    """
    names = table.column_names
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise RunLogError(f"{where}: duplicate column(s) {dup}")
    if require:
        missing = [c for c in REQUIRED_ROLLOUT_COLUMNS if c not in names]
        if missing:
            raise RunLogError(
                f"{where}: missing required rollout column {missing[0]!r}"
                + (f" (also missing: {missing[1:]})" if missing[1:] else "")
                + f"; required columns are {list(REQUIRED_ROLLOUT_COLUMNS)}"
            )
    columns: dict[str, pa.ChunkedArray] = {}
    for name, (target, required) in ROLLOUT_SCHEMA.items():
        if name not in names:
            continue
        col = table.column(name)
        if not _kind_ok(col.type, target):
            raise RunLogError(
                f"{where}: column {name!r} has type {_type_name(col.type)}, "
                f"expected {_type_name(target)}"
            )
        col = _cast_column(col, target, where, name)
        if required and col.null_count:
            raise RunLogError(
                f"{where}: required column {name!r} has {col.null_count} missing value(s)"
            )
        columns[name] = col
    if "n_tokens" in columns:
        n_tokens = columns["n_tokens"]
        if len(n_tokens) and pc.min(n_tokens).as_py() < 0:
            raise RunLogError(f"{where}: column 'n_tokens' has negative values")
        for name in TOKEN_COLUMNS:
            if name not in columns:
                continue
            lengths = pc.list_value_length(columns[name])
            bad = pc.fill_null(pc.not_equal(lengths, pc.cast(n_tokens, pa.int32())), False)
            if pc.any(bad).as_py():
                row = pc.index(bad, True).as_py()
                raise RunLogError(
                    f"{where}: column {name!r} row {row} has {lengths[row].as_py()} values but "
                    f"n_tokens is {n_tokens[row].as_py()} (one value per response token)"
                )
    extras = [n for n in names if n not in ROLLOUT_SCHEMA]
    out = {**columns, **{n: table.column(n) for n in extras}}
    return pa.table(out)


def _check_file_partition(table: pa.Table, where: str, step: int, split: str) -> None:
    """All rows of a rollout file named for (step, split) must carry that step and split."""
    if table.num_rows == 0:
        return
    steps = pc.unique(table.column("step")).to_pylist()
    splits = pc.unique(table.column("split")).to_pylist()
    if steps != [step]:
        raise RunLogError(f"{where}: rows have step {sorted(steps)}, file is for step {step}")
    if splits != [split]:
        raise RunLogError(f"{where}: rows have split {sorted(splits)}, file is for split {split!r}")


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the types of a manifest's fields, or None."""
    kind, status = manifest["kind"], manifest["status"]
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        return f"field 'kind' must be 'train', 'eval' or 'probe:<name>', got {kind!r}"
    if not isinstance(status, str) or status not in STATUSES:
        return f"field 'status' must be one of {list(STATUSES)}, got {status!r}"
    for key in ("method", "model", "task", "error", "created", "updated", "finished"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            return f"field {key!r} must be a string or null, got {manifest[key]!r}"
    seed = manifest.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return f"field 'seed' must be an integer or null, got {seed!r}"
    if manifest.get("config") is not None and not isinstance(manifest["config"], dict):
        return f"field 'config' must be a JSON object, got {manifest['config']!r}"
    return None


def _metrics_record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "expected a JSON object"
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"'step' must be a non-negative integer, got {step!r}"
    if not isinstance(record.get("split"), str):
        return f"'split' must be a string, got {record.get('split')!r}"
    for key, value in record.items():
        if key in ("step", "split"):
            continue
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"metric {key!r} must be a number or null, got {value!r}"
    return None


def _check_unique(table: pa.Table, where: str | os.PathLike[str]) -> None:
    """Refuse rollouts logging one response twice (the same :data:`ROLLOUT_KEY`): Pass@k and
    Dist-3 would count it twice."""
    if table.num_rows == 0:
        return
    counts = table.group_by(list(ROLLOUT_KEY)).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts.column("count_all"), 1))
    if repeated.num_rows:
        first = repeated.slice(0, 1).to_pylist()[0]
        key = ", ".join(f"{k}={first[k]!r}" for k in ROLLOUT_KEY)
        raise RunLogError(
            f"{where}: {repeated.num_rows} response(s) logged more than once (e.g. {key}, "
            f"{first['count_all']} rows); each (step, split, prompt_id, sample_idx) must appear "
            "once: remove the repeated rows or the extra file"
        )
