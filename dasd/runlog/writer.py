"""Writing run directories (DESIGN.md section 4): atomic files, the manifest, the writer.

Holds the atomic writes (:func:`write_text` and the temp-name / fsync / rename they share,
:func:`os_error_at` naming the file of a failed write), the JSON encoding of manifests and
outputs (non-finite floats as ``null``), the manifest's provenance (git state, library
versions), and the lifecycle of a run: :func:`check_new_run`, :func:`create_run`,
:func:`open_run` (resume, with the metrics repair and rewind) and :class:`RunWriter`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import numbers
import os
import platform
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dasd.runlog.reader import _iter_metrics, _rollout_files, read_manifest
from dasd.runlog.schema import (
    _KIND_RE,
    _METRIC_KEY_RE,
    _ROLLOUT_FILE_RE,
    MANIFEST,
    METRICS,
    ROLLOUTS,
    SCHEMA_VERSION,
    RunLogError,
    RunLogWarning,
    _check_file_partition,
    _check_split,
    _check_step,
    _child,
    conform_rollouts,
    rollout_filename,
)

__all__ = ["RunWriter", "check_new_run", "create_run", "open_run", "os_error_at", "write_text"]

_VERSIONED = ("torch", "transformers", "tokenizers", "dasd", "numpy", "pandas", "pyarrow",
              "scipy", "vllm", "math-verify")


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


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (a reader sees the old file or the new one,
    never a part); creates the parent folder."""
    return _atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


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
    """(sha, dirty) of the git checkout holding the dasd sources (the folder of this
    package's ``__file__``, ``dasd.runlog.__file__``); (None, None) if none."""
    src = Path(sys.modules[__package__].__file__).resolve().parent

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
