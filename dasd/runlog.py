"""Run directories: the contract between compute and analysis (DESIGN.md section 4).

A run directory::

    runs/NAME/
      manifest.json    schema_version, kind (train|eval|probe:<name>), method, model, task,
                       config (resolved), seed, git_sha, git_dirty (null without git),
                       created, updated, finished, resumed (UTC ISO times), versions, argv,
                       status (running|complete|failed), error (one line, when failed)
      metrics.jsonl    one JSON object a line: {"step": int, "split": "train"|"eval",
                       "<ns>/<key>": number, ...}
      rollouts/        Parquet, one file per (step, split): step-000040-eval.parquet
      checkpoints/     step-N/ (written by the trainer, not here)
      <probe outputs>  e.g. tokens.parquet, interventions.parquet, summary.json

Writers: :func:`create_run` (new run) and :func:`open_run` (resume) give a :class:`RunWriter`;
readers: :func:`read_manifest`, :func:`read_metrics`, :func:`read_rollouts`,
:func:`read_table`, :func:`read_json`, :func:`find_runs`, :func:`validate_run`.

Guarantees and decisions:

- Every file except ``metrics.jsonl`` is written atomically: to a hidden temporary name in the
  same directory (``.NAME.tmp-…``), fsynced, then ``os.replace``\\ d. A run killed at any
  moment leaves only whole files (and at worst a hidden temporary, which readers ignore).
- ``metrics.jsonl`` is appended one whole line per call (flushed). A run killed mid-append can
  leave an unterminated last line: :func:`read_metrics` ignores it with a
  :class:`RunLogWarning`, and :func:`open_run` cuts it off before appending again.
- Non-finite floats (NaN, ±inf) are stored as JSON ``null`` everywhere (metrics, manifest,
  ``write_json``), so every file is valid JSON for any tool; :func:`read_metrics` reads them
  back as NaN. (±inf and NaN are therefore not distinguished once logged.)
- Rollout files are validated against :data:`ROLLOUT_SCHEMA` on write and on read by the same
  code. Readers accept files from any tool (pyarrow, pandas, polars …): integer widths and
  string/list encodings are cast to the declared types when lossless (integers are also
  accepted where floats are declared, e.g. a 0/1 ``reward``; float64 token values are stored
  as the declared float32); a different kind (a string where an int is required, ints where
  bools are required, floats where ints are required) is an error, as are missing values in
  required columns. Every error is a one-line :class:`RunLogError` naming file and column.
- Token-level list columns must hold one value per response token: their length must equal
  ``n_tokens`` on every row where they are not null.
- A response is logged once: rows repeating a :data:`ROLLOUT_KEY` (step, split, prompt_id,
  sample_idx) are refused by :func:`read_rollouts` and :func:`validate_run` (they would count
  twice in Pass@k and Dist-3).
- :func:`read_manifest` checks the types of the fields readers select on (``kind``,
  ``status``, ``method``, ``model``, ``task``, ``seed``, ``config``): a run never drops silently
  out of an analysis because one is malformed.
- Writes name their file in any ``OSError`` (:func:`os_error_at`), e.g. a full disk.
- A run name is one or more plain folder names under the runs directory (:func:`run_path`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import numbers
import os
import platform
import re
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "REQUIRED_ROLLOUT_COLUMNS",
    "ROLLOUT_SCHEMA",
    "SCHEMA_VERSION",
    "SPLITS",
    "STATUSES",
    "TOKEN_COLUMNS",
    "ROLLOUT_KEY",
    "RunLogError",
    "RunLogWarning",
    "RunWriter",
    "check_new_run",
    "conform_rollouts",
    "create_run",
    "find_runs",
    "json_shape",
    "open_run",
    "os_error_at",
    "read_json",
    "read_manifest",
    "read_metrics",
    "read_rollouts",
    "read_table",
    "rollout_filename",
    "run_path",
    "validate_run",
    "write_text",
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
_VERSIONED = ("torch", "transformers", "tokenizers", "dasd", "numpy", "pandas", "pyarrow",
              "scipy", "vllm", "math-verify")


class RunLogError(ValueError):
    """A run directory or one of its files does not follow the schema (one-line message)."""


class RunLogWarning(UserWarning):
    """Something was skipped while reading a run (e.g. a truncated final metrics line)."""


# --------------------------------------------------------------------------- small helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (best effort; not possible on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(binary_file)`` atomically: temp name, fsync, replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise os_error_at(exc, path) from None
        raise
    _fsync_dir(path.parent)
    return path


def os_error_at(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """``exc`` naming ``path`` (the file being written) when it names no file itself, so that
    the one-line message says where, e.g. for a full disk."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path))


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


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (a reader sees the old file or the new one,
    never a part); creates the parent folder."""
    return _atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def _is_temp(name: str) -> bool:
    return name.startswith(".")


def _jsonable(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON data; non-finite floats become None; a RunLogError naming
    ``where`` (a key path) for anything that cannot be stored."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, enum.Enum):
        return _jsonable(obj.value, where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise RunLogError(f"{where}: JSON keys must be strings, got {key!r}")
            out[str(key)] = _jsonable(value, f"{where}.{key}")
        return out
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where)
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise RunLogError(
        f"{where}: cannot store a {type(obj).__name__} as JSON; convert it to "
        "numbers, strings, lists or dicts first"
    )


def _dump_json(obj: Any, where: str) -> bytes:
    return (json.dumps(_jsonable(obj, where), indent=2, allow_nan=False) + "\n").encode()


def _git_state() -> tuple[str | None, bool | None]:
    """(sha, dirty) of the git checkout holding the dasd sources; (None, None) if none."""
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(src), *args],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return done.stdout.strip()

    try:
        # The package must be tracked there: a copy installed into a venv that happens to sit
        # inside some other checkout must not report that checkout's commit.
        git("ls-files", "--error-unmatch", "__init__.py")
        sha = git("rev-parse", "HEAD")
    except Exception:  # git absent, not a checkout, not tracked, no commit yet, timeout …
        return None, None
    try:
        dirty: bool | None = bool(git("status", "--porcelain", "--untracked-files=no"))
    except Exception:
        dirty = None
    return sha or None, dirty


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            module = sys.modules.get(dist.replace("-", "_"))
            if module is not None and isinstance(getattr(module, "__version__", None), str):
                versions[dist] = module.__version__
    return versions


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


# --------------------------------------------------------------------------- rollout schema


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


def _rows_to_table(rows: pd.DataFrame | pa.Table | Sequence[Mapping[str, Any]], where: str
                   ) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pd.DataFrame):
        if not all(isinstance(c, str) for c in rows.columns):
            raise RunLogError(f"{where}: column names must be strings, got {list(rows.columns)}")
        if rows.columns.duplicated().any():
            dup = sorted(set(rows.columns[rows.columns.duplicated()]))
            raise RunLogError(f"{where}: duplicate column(s) {dup}")
        arrays = {}
        for name in rows.columns:
            try:
                # from_pandas=False keeps a float NaN as NaN (a value), not as a missing value.
                arrays[name] = pa.array(rows[name], from_pandas=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
                raise RunLogError(
                    f"{where}: column {name!r} cannot be stored ({str(exc).splitlines()[0]})"
                ) from None
        return pa.table(arrays) if arrays else pa.table({})
    rows = list(rows)
    if not rows:
        raise RunLogError(f"{where}: no rows to write")
    if not all(isinstance(r, Mapping) for r in rows):
        raise RunLogError(f"{where}: rows must be a DataFrame or a list of dicts")
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        # Find the culprit column for a one-line message naming it.
        for name in dict.fromkeys(k for r in rows for k in r):
            try:
                pa.array([r.get(name) for r in rows])
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as col_exc:
                raise RunLogError(
                    f"{where}: column {name!r} cannot be stored "
                    f"({str(col_exc).splitlines()[0]})"
                ) from None
        raise RunLogError(f"{where}: rows cannot be stored ({exc})") from None


def _write_parquet(path: Path, table: pa.Table) -> Path:
    return _atomic_write(path, lambda f: pq.write_table(table, f))


# --------------------------------------------------------------------------- writer


class RunWriter:
    """Writes one run directory. Get one from :func:`create_run` or :func:`open_run`.

    As a context manager it finishes the run: status ``complete`` on normal exit, ``failed``
    (with the error) when an exception escapes, which is re-raised.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self._manifest = manifest
        self._finished = False

    # -- manifest
    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest as last written."""
        return json.loads(json.dumps(self._manifest))

    def _write_manifest(self) -> None:
        self._manifest["updated"] = _now()
        data = _dump_json(self._manifest, f"{self.path / MANIFEST}")
        _atomic_write(self.path / MANIFEST, lambda f: f.write(data))

    def update_manifest(self, **fields: Any) -> None:
        """Add or change manifest fields (e.g. a resolved value known only after start).
        ``schema_version``, ``kind``, ``status``, ``created`` are managed here and refused."""
        fixed = {"schema_version", "kind", "status", "created", "updated", "finished"}
        if bad := sorted(fixed & fields.keys()):
            raise RunLogError(f"manifest field(s) {bad} are managed by runlog; not settable")
        self._check_open()
        _jsonable(fields, "manifest")  # validate before touching the file
        self._manifest.update(fields)
        self._write_manifest()

    def _check_open(self) -> None:
        if self._finished:
            raise RunLogError(
                f"{self.path}: run is finished ({self._manifest['status']}); "
                "reopen it with open_run() to append"
            )

    # -- metrics
    def log_metrics(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        """Append one line ``{"step", "split", "<ns>/<key>": number, ...}`` to metrics.jsonl.

        Keys must be namespaced (``"train/loss"``, ``"dasd/omega_mean"``); values real
        numbers (Python or numpy; not bool). NaN and ±inf are written as ``null``.
        """
        self._check_open()
        step = _check_step(step)
        split = _check_split(split)
        record: dict[str, Any] = {"step": step, "split": split}
        for key, value in metrics.items():
            if not isinstance(key, str) or not _METRIC_KEY_RE.match(key):
                raise RunLogError(
                    f"metric key {key!r} must be namespaced as 'ns/key' (e.g. 'train/loss')"
                )
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise RunLogError(
                    f"metric {key!r} must be a real number, got {type(value).__name__}"
                )
            value = float(value) if not isinstance(value, numbers.Integral) else int(value)
            record[key] = value if math.isfinite(value) else None
        line = json.dumps(record, allow_nan=False) + "\n"
        try:
            with open(self.path / METRICS, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        except OSError as exc:
            raise os_error_at(exc, self.path / METRICS) from None

    # -- rollouts and other outputs
    def write_rollouts(self, step: int, split: str,
                       rows: pd.DataFrame | pa.Table | Sequence[Mapping[str, Any]]) -> Path:
        """Validate ``rows`` (one row per response) and write
        ``rollouts/step-{step:06d}-{split}.parquet`` atomically (replacing an earlier file of
        the same step and split, e.g. after a resume). ``step``/``split`` columns are added
        when absent and must match the arguments when present."""
        self._check_open()
        filename = rollout_filename(step, split)
        path = self.path / ROLLOUTS / filename
        where = f"{ROLLOUTS}/{filename}"
        table = _rows_to_table(rows, where)
        if "step" not in table.column_names:
            table = table.append_column("step", pa.array([step] * table.num_rows, pa.int64()))
        if "split" not in table.column_names:
            table = table.append_column("split", pa.array([split] * table.num_rows, pa.string()))
        table = conform_rollouts(table, where)
        _check_file_partition(table, where, int(step), split)
        return _write_parquet(path, table)

    def write_json(self, name: str | os.PathLike[str], obj: Any) -> Path:
        """Write ``obj`` as JSON to ``name`` (``.json`` appended if missing), atomically.
        Non-finite floats become ``null``; dataclasses, numpy values and paths are converted."""
        self._check_open()
        path = _child(self.path, name, ".json")
        data = _dump_json(obj, str(name))
        return _atomic_write(path, lambda f: f.write(data))

    def write_table(self, name: str | os.PathLike[str], df: pd.DataFrame | pa.Table) -> Path:
        """Write a table (e.g. ``tokens``, ``interventions``) as Parquet to ``name``
        (``.parquet`` appended if missing), atomically."""
        self._check_open()
        path = _child(self.path, name, ".parquet")
        if isinstance(df, pd.DataFrame):
            try:
                table = pa.Table.from_pandas(df, preserve_index=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise RunLogError(f"{name!s}: cannot store table ({str(exc).splitlines()[0]})"
                                  ) from None
        elif isinstance(df, pa.Table):
            table = df
        else:
            raise RunLogError(f"{name!s}: expected a pandas DataFrame or pyarrow Table")
        return _write_parquet(path, table)

    # -- lifecycle
    def finish(self, status: str = "complete", *, error: str | None = None) -> None:
        """Mark the run ``complete`` or ``failed`` (with an optional one-line ``error``)."""
        if status not in ("complete", "failed"):
            raise RunLogError(f"finish status must be 'complete' or 'failed', got {status!r}")
        self._check_open()
        metrics = self.path / METRICS
        if metrics.exists():
            with open(metrics, "ab") as f:
                os.fsync(f.fileno())
        self._manifest["status"] = status
        self._manifest["finished"] = _now()
        self._manifest["error"] = error
        self._write_manifest()
        self._finished = True

    @property
    def finished(self) -> bool:
        return self._finished

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self._finished:
            if exc_type is None:
                self.finish("complete")
            else:
                message = f"{exc_type.__name__}: {exc}".splitlines()[0] if str(exc) else \
                    exc_type.__name__
                self.finish("failed", error=message)
        return False

    def __repr__(self) -> str:
        return f"RunWriter({str(self.path)!r}, status={self._manifest.get('status')!r})"


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


def check_new_run(path: str | os.PathLike[str], *, exist_ok: bool = False) -> None:
    """Refuse ``path`` as a new run directory (see :func:`create_run`) before any work is
    done for it: an existing run, a file, a non-empty folder (unless ``exist_ok``), or a
    file among its parents."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise RunLogError(f"{path}: exists and is not a directory; choose a new run name")
        if (path / MANIFEST).exists():
            raise RunLogError(
                f"{path}: already holds a run; choose a new name (a train run continues with "
                "dasd-probe train --resume; open_run() reopens any run)"
            )
        if not exist_ok and any(path.iterdir()):
            raise RunLogError(f"{path}: directory is not empty; choose a new run name")
        return
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunLogError(f"{parent}: is a file, where a folder of runs is expected; "
                                  "move it or choose another --runs-dir")
            return


def create_run(
    path: str | os.PathLike[str],
    *,
    kind: str,
    config: Mapping[str, Any] | Any,
    seed: int | None,
    method: str | None = None,
    model: str | None = None,
    task: str | None = None,
    exist_ok: bool = False,
) -> RunWriter:
    """Start a run directory at ``path`` and write its manifest with status ``running``.

    ``kind``: ``train``, ``eval`` or ``probe:<name>``. ``config``: the resolved configuration
    (a dict or a dataclass; JSON-storable). ``path`` must not exist or be an empty directory;
    with ``exist_ok`` a non-empty directory is accepted as long as it holds no run yet (an
    existing run is never overwritten: resume it with :func:`open_run` or delete it).
    """
    path = Path(path)
    check_new_run(path, exist_ok=exist_ok)
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise RunLogError(f"kind must be 'train', 'eval' or 'probe:<name>', got {kind!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise RunLogError(f"seed must be an integer or None, got {seed!r}")
    for label, value in (("method", method), ("model", model), ("task", task)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise RunLogError(f"{label} must be a string or None, got {type(value).__name__}")
    manifest_config = _jsonable(config, "config")
    if not isinstance(manifest_config, dict):
        raise RunLogError(f"config must be a mapping or a dataclass, got {type(config).__name__}")
    sha, dirty = _git_state()
    now = _now()
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "method": method,
        "model": os.fspath(model) if model is not None else None,
        "task": os.fspath(task) if task is not None else None,
        "config": manifest_config,
        "seed": None if seed is None else int(seed),
        "git_sha": sha,
        "git_dirty": dirty,
        "created": now,
        "updated": now,
        "finished": None,
        "resumed": [],
        "versions": _versions(),
        "argv": list(sys.argv),
        "status": "running",
        "error": None,
    }
    path.mkdir(parents=True, exist_ok=True)
    writer = RunWriter(path, manifest)
    writer._write_manifest()
    return writer


def open_run(path: str | os.PathLike[str], *, rewind_to: int | None = None) -> RunWriter:
    """Reopen an existing run to append to it (resume); its status goes back to ``running``.

    An unterminated last line in metrics.jsonl (a run killed mid-append) is cut off first.
    With ``rewind_to=N`` (the step of the checkpoint being resumed), metrics lines and
    rollout files of steps after N are removed, so re-run steps are not logged twice.
    """
    path = Path(path)
    manifest = read_manifest(path)
    _repair_metrics(path / METRICS)
    if rewind_to is not None:
        _rewind(path, _check_step(rewind_to))
    manifest["status"] = "running"
    manifest["finished"] = None
    manifest["error"] = None
    manifest.setdefault("resumed", []).append(_now())
    writer = RunWriter(path, manifest)
    writer._write_manifest()
    return writer


def _repair_metrics(metrics: Path) -> None:
    if not metrics.exists():
        return
    data = metrics.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    warnings.warn(
        f"{metrics}: removing a truncated last line ({len(data) - cut} bytes) "
        "left by an interrupted run",
        RunLogWarning,
        stacklevel=3,
    )
    _atomic_write(metrics, lambda f: f.write(data[:cut]))


def _rewind(path: Path, step: int) -> None:
    metrics = path / METRICS
    if metrics.exists():
        kept = [line for _, line, rec in _iter_metrics(metrics) if rec["step"] <= step]
        data = "".join(line + "\n" for line in kept).encode()
        _atomic_write(metrics, lambda f: f.write(data))
    for file in _rollout_files(path / ROLLOUTS):
        match = _ROLLOUT_FILE_RE.match(file.name)
        if match and int(match.group(1)) > step:
            file.unlink()


# --------------------------------------------------------------------------- readers


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the run at ``path`` (a run directory)."""
    path = Path(path)
    file = path / MANIFEST
    if not path.exists():
        raise RunLogError(f"{path}: does not exist")
    if not file.is_file():
        raise RunLogError(
            f"{path}: not a run directory (no {MANIFEST}); pass a directory written by dasd"
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunLogError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise RunLogError(f"{file}: must hold a JSON object")
    if missing := [k for k in _MANIFEST_KEYS if k not in manifest]:
        raise RunLogError(f"{file}: missing field {missing[0]!r}")
    version = manifest["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise RunLogError(
            f"{file}: schema_version {version!r} is not supported (this dasd reads up to "
            f"{SCHEMA_VERSION}); upgrade dasd"
        )
    if problem := _manifest_problem(manifest):
        raise RunLogError(f"{file}: {problem}; fix or remove this run directory")
    return manifest


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


def _iter_metrics(file: Path) -> Iterable[tuple[int, str, dict[str, Any]]]:
    """(line number, raw line, record) for each metrics line; a RunLogError naming file and
    line for a malformed one, except an unterminated last line (skipped with a warning)."""
    data = file.read_bytes()
    lines = data.split(b"\n")
    terminated = data.endswith(b"\n") or not data
    if terminated:
        lines = lines[:-1]
    last = len(lines)
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and not text.strip():
            continue
        problem = None
        record = None
        if text is None:
            problem = "not UTF-8 text"
        else:
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                problem = f"not valid JSON ({exc.msg})"
        if problem is None:
            problem = _metrics_record_problem(record)
        if problem is not None:
            if number == last and not terminated:
                warnings.warn(
                    f"{file}:{number}: ignoring a truncated last line (run interrupted?)",
                    RunLogWarning,
                    stacklevel=3,
                )
                continue
            raise RunLogError(f"{file}:{number}: {problem}")
        yield number, text, record  # type: ignore[misc]


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


def read_metrics(path: str | os.PathLike[str]) -> pd.DataFrame:
    """metrics.jsonl of a run as a DataFrame: one row per line, columns ``step`` (int64),
    ``split``, then one float64 column per metric key (NaN where a line lacks it or logged a
    non-finite value). A run without metrics gives an empty frame with step and split."""
    path = Path(path)
    file = path / METRICS if path.is_dir() else path
    if path.is_dir() and not file.exists():
        read_manifest(path)  # a clear error when this is not a run directory at all
        return pd.DataFrame({"step": pd.Series([], dtype=np.int64),
                             "split": pd.Series([], dtype=str)})
    if not file.exists():
        raise RunLogError(f"{file}: does not exist")
    records = [rec for _, _, rec in _iter_metrics(file)]
    keys = list(dict.fromkeys(k for rec in records for k in rec if k not in ("step", "split")))
    columns: dict[str, Any] = {
        "step": np.array([rec["step"] for rec in records], dtype=np.int64),
        "split": pd.Series([rec["split"] for rec in records], dtype=str),
    }
    for key in keys:
        values = [rec.get(key) for rec in records]
        columns[key] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return pd.DataFrame(columns)  # built at once: an eval logs ~100 keys


def _rollout_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix == ".parquet" and not _is_temp(p.name))


def _read_parquet(file: Path, columns: Sequence[str] | None, where: str,
                  optional: Sequence[str] = ()) -> pa.Table:
    """Read ``columns`` (all if None) of a Parquet file; requested columns named in
    ``optional`` that the file lacks come back as all-null columns (declared type when the
    rollout schema declares one)."""
    try:
        schema = pq.read_schema(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise RunLogError(f"{where}: not a readable Parquet file ({str(exc).splitlines()[0]})"
                          ) from None
    absent: list[str] = []
    if columns is not None:
        absent = [c for c in columns if c not in schema.names]
        if required := [c for c in absent if c not in optional]:
            raise RunLogError(f"{where}: missing column {required[0]!r}")
    try:
        table = pq.read_table(file, columns=None if columns is None else
                              [c for c in columns if c not in absent])
    except (pa.ArrowInvalid, OSError) as exc:
        raise RunLogError(f"{where}: not a readable Parquet file ({str(exc).splitlines()[0]})"
                          ) from None
    for name in absent:
        kind = ROLLOUT_SCHEMA[name][0] if name in ROLLOUT_SCHEMA else pa.null()
        table = table.append_column(name, pa.nulls(table.num_rows, kind))
    if columns is not None:
        table = table.select(list(columns))
    return table


def _rollout_source(path: Path) -> tuple[Path, list[Path]]:
    """(folder, files) of rollouts for ``path``: a run dir, a rollouts folder or one file."""
    if not path.exists():
        raise RunLogError(f"{path}: does not exist")
    if path.is_file():
        return path.parent, [path]
    if (path / ROLLOUTS).is_dir():
        folder = path / ROLLOUTS
    elif not (path / MANIFEST).exists():
        folder = path  # a bare folder of rollout files
    else:
        raise RunLogError(f"{path}: run has no {ROLLOUTS}/ folder (no rollouts were logged)")
    files = _rollout_files(folder)
    if not files:
        raise RunLogError(f"{folder}: no rollout Parquet files (step-NNNNNN-SPLIT.parquet)")
    return folder, files


def read_rollouts(
    path: str | os.PathLike[str],
    *,
    step: int | Iterable[int] | None = None,
    split: str | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rollouts of a run as one DataFrame (files in step order, rows in file order).

    ``path``: a run directory, a folder of rollout files or one Parquet file, written by
    dasd or any tool following :data:`ROLLOUT_SCHEMA`. ``step`` (one or several) and
    ``split`` select rows; ``columns`` reads only those (plus ``step`` and ``split``), which
    skips the heavy token-level lists; a requested column that is not required and that a
    file lacks reads as missing values for that file's rows (so does an optional column
    present in only some files when all columns are read). Columns come back with the declared dtypes: int64
    ``step``, int32 ``sample_idx``/``n_tokens``, float64 ``reward``, bool ``correct``,
    strings; list columns hold numpy arrays. A bad file raises a one-line
    :class:`RunLogError` naming it and the column.
    """
    path = Path(path)
    folder, files = _rollout_source(path)
    steps = None if step is None else (
        {_check_step(step)} if isinstance(step, numbers.Integral) else
        {_check_step(s) for s in step}
    )
    wanted = None
    if columns is not None:
        wanted = list(dict.fromkeys([*ROLLOUT_KEY, *columns]))
    # Requested columns a file may lack (they read as missing values there): all but the
    # required ones; with ``columns=None`` files missing optional columns are padded alike.
    optional = [c for c in wanted or () if c not in REQUIRED_ROLLOUT_COLUMNS]
    tables = []
    seen: set[tuple[int, str]] = set()
    for file in files:
        where = str(file)
        match = _ROLLOUT_FILE_RE.match(file.name)
        if match:
            file_step, file_split = int(match.group(1)), match.group(2)
            seen.add((file_step, file_split))
            if (steps is not None and file_step not in steps) or (
                    split is not None and file_split != split):
                continue
        table = conform_rollouts(_read_parquet(file, wanted, where, optional=optional), where,
                                 require=wanted is None)
        if match:
            _check_file_partition(table, where, file_step, file_split)
        else:
            pairs = table.group_by(["step", "split"]).aggregate([])
            seen.update(zip(pairs.column("step").to_pylist(), pairs.column("split").to_pylist()))
            mask = None
            if steps is not None:
                mask = pc.is_in(table.column("step"), pa.array(sorted(steps), pa.int64()))
            if split is not None:
                by_split = pc.equal(table.column("split"), split)
                mask = by_split if mask is None else pc.and_(mask, by_split)
            if mask is not None:
                table = table.filter(mask)
        tables.append(table)
    selecting = steps is not None or split is not None
    if selecting and sum(t.num_rows for t in tables) == 0:
        have = ", ".join(f"step {s} {p}" for s, p in sorted(seen)) or "none"
        raise RunLogError(
            f"{folder}: no rollouts for step={step!r} split={split!r} (present: {have})"
        )
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise RunLogError(
            f"{folder}: rollout files disagree on an extra column's type "
            f"({str(exc).splitlines()[0]})"
        ) from None
    _check_unique(table, folder)
    names = table.column_names
    order = (list(dict.fromkeys(["step", "split", *columns])) if columns is not None else
             [*(c for c in ROLLOUT_SCHEMA if c in names),
              *(c for c in names if c not in ROLLOUT_SCHEMA)])
    return table.select(order).to_pandas()


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


def read_table(path: str | os.PathLike[str], name: str) -> pd.DataFrame:
    """A probe output table (``write_table``) of the run at ``path``."""
    file = _child(Path(path), name, ".parquet")
    if not file.exists():
        raise RunLogError(f"{file}: does not exist")
    return _read_parquet(file, None, str(file)).to_pandas()


def read_json(path: str | os.PathLike[str], name: str, *, expect: type | None = None) -> Any:
    """A JSON output (``write_json``) of the run at ``path``; with ``expect`` (``dict`` or
    ``list``) its top level must be of that type."""
    file = _child(Path(path), name, ".json")
    if not file.exists():
        raise RunLogError(f"{file}: does not exist")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunLogError(f"{file}: not valid JSON ({exc})") from None
    if expect is not None and not isinstance(data, expect):
        raise RunLogError(f"{file}: must hold a JSON {_JSON_NAMES.get(expect, expect.__name__)}"
                          f", got a {type(data).__name__}; rerun the probe that wrote it")
    return data


_JSON_NAMES = {dict: "object", list: "array"}


@contextlib.contextmanager
def json_shape(file: str | os.PathLike[str]) -> Iterator[None]:
    """Reading fields out of a JSON output: a missing key or a value of the wrong type
    (``KeyError``, ``TypeError``, ``AttributeError``, ``IndexError`` in the block) becomes a
    one-line :class:`RunLogError` naming ``file``. Wrap only the reading, not computation."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise RunLogError(f"{os.fspath(file)}: unexpected content ({type(exc).__name__}: "
                          f"{exc}); rerun the probe that wrote it") from None


_NO_DESCEND = {ROLLOUTS, CHECKPOINTS}


def find_runs(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run directories under ``paths``: each path is a run directory or a folder holding run
    directories at any depth (a run directory's own sub-runs included). Returns them sorted
    per given path, without duplicates; a RunLogError naming a path that holds none."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    seen: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise RunLogError(f"{root}: does not exist")
        if not root.is_dir():
            raise RunLogError(f"{root}: not a directory (give a run directory or its parent)")
        runs = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames
                                 if d not in _NO_DESCEND and not d.startswith("."))
            if MANIFEST in filenames:
                runs.append(Path(dirpath))
        if not runs:
            raise RunLogError(
                f"{root}: no run directories found (none holds a {MANIFEST}); "
                "run a dasd-probe command first or pass another path"
            )
        for run in sorted(runs):
            key = run.resolve()
            if key not in seen:
                seen.add(key)
                found.append(run)
    return found


def validate_run(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a whole run directory: manifest, every metrics line, every rollout file and every
    other top-level JSON/Parquet output. Returns a summary (kind, status, counts); raises one
    RunLogError listing every problem found."""
    path = Path(path)
    manifest = read_manifest(path)
    problems: list[str] = []
    summary: dict[str, Any] = {
        "path": str(path), "kind": manifest["kind"], "status": manifest["status"],
        "metrics_lines": 0, "rollout_files": 0, "rollout_rows": 0, "outputs": [],
    }
    if (path / METRICS).exists():
        try:
            summary["metrics_lines"] = sum(1 for _ in _iter_metrics(path / METRICS))
        except RunLogError as exc:
            problems.append(str(exc))
    for file in _rollout_files(path / ROLLOUTS):
        where = str(file)
        try:
            table = conform_rollouts(_read_parquet(file, None, where), where)
            match = _ROLLOUT_FILE_RE.match(file.name)
            if match:
                _check_file_partition(table, where, int(match.group(1)), match.group(2))
            _check_unique(table, where)
            summary["rollout_files"] += 1
            summary["rollout_rows"] += table.num_rows
        except RunLogError as exc:
            problems.append(str(exc))
    for file in sorted(path.iterdir()):
        if not file.is_file() or _is_temp(file.name) or file.name in _RESERVED:
            continue
        try:
            if file.suffix == ".parquet":
                _read_parquet(file, None, str(file))
            elif file.suffix == ".json":
                read_json(path, file.name)
            else:
                continue
            summary["outputs"].append(file.name)
        except RunLogError as exc:
            problems.append(str(exc))
    if problems:
        raise RunLogError(f"{len(problems)} problem(s) in {path}: " + "; ".join(problems))
    return summary
