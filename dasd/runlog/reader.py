"""Reading run directories (DESIGN.md section 4): manifests, metrics, rollouts, outputs.

Holds the readers (:func:`read_manifest`, :func:`read_metrics`, :func:`read_rollouts`,
:func:`read_table`, :func:`read_json` with :func:`json_shape`), run discovery
(:func:`find_runs`) and the whole-run check (:func:`validate_run`). They accept files written
by any tool that follows the schema and reject others with a one-line :class:`RunLogError`
naming the file and the column.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dasd.runlog.schema import (
    _MANIFEST_KEYS,
    _RESERVED,
    _ROLLOUT_FILE_RE,
    CHECKPOINTS,
    MANIFEST,
    METRICS,
    REQUIRED_ROLLOUT_COLUMNS,
    ROLLOUT_KEY,
    ROLLOUT_SCHEMA,
    ROLLOUTS,
    SCHEMA_VERSION,
    RunLogError,
    RunLogWarning,
    _check_file_partition,
    _check_step,
    _check_unique,
    _child,
    _is_temp,
    _manifest_problem,
    _metrics_record_problem,
    conform_rollouts,
)

__all__ = ["find_runs", "json_shape", "read_json", "read_manifest", "read_metrics",
           "read_rollouts", "read_table", "validate_run"]

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
