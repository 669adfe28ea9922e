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

The package, by module (every public name is re-exported here):

- :mod:`dasd.runlog.schema`: the layout's names and rules, :data:`ROLLOUT_SCHEMA`, the
  errors, and the validation shared by writers and readers (:func:`conform_rollouts`);
- :mod:`dasd.runlog.writer`: atomic writes; :func:`create_run` (new run) and
  :func:`open_run` (resume) give a :class:`RunWriter`;
- :mod:`dasd.runlog.reader`: :func:`read_manifest`, :func:`read_metrics`,
  :func:`read_rollouts`, :func:`read_table`, :func:`read_json`, :func:`find_runs`,
  :func:`validate_run`.
- :mod:`dasd.runlog.view`: :class:`Run`, the one view of a run directory that analysis and
  figures read (what it ran, traced through a trained checkpoint; its metrics and rollouts).

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

# Reachable here beside the public names, for tests: ``os`` and ``pq``, the modules the
# writers call (``os.replace``, ``pq.write_table``), which tests simulating a crash mid-write
# patch as ``dasd.runlog.os`` / ``dasd.runlog.pq``; and ``_git_state``, which reads the git
# state of the checkout holding ``dasd.runlog.__file__``.
import os
import pyarrow.parquet as pq

from dasd.runlog.reader import (
    find_runs, json_shape, read_json, read_manifest, read_metrics, read_rollouts, read_table,
    validate_run,
)
from dasd.runlog.schema import (
    REQUIRED_ROLLOUT_COLUMNS,
    ROLLOUT_KEY,
    ROLLOUT_SCHEMA,
    SCHEMA_VERSION,
    SPLITS,
    STATUSES,
    TOKEN_COLUMNS,
    RunLogError,
    RunLogWarning,
    conform_rollouts,
    rollout_filename,
    run_path,
)
from dasd.runlog.view import VARIANT_DEFAULTS, Run, run_variant
from dasd.runlog.writer import (
    RunWriter,
    _git_state,
    check_new_run,
    create_run,
    open_run,
    os_error_at,
    write_text,
)

__all__ = [
    "REQUIRED_ROLLOUT_COLUMNS",
    "ROLLOUT_SCHEMA",
    "SCHEMA_VERSION",
    "SPLITS",
    "STATUSES",
    "TOKEN_COLUMNS",
    "ROLLOUT_KEY",
    "VARIANT_DEFAULTS",
    "Run",
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
    "run_variant",
    "validate_run",
    "write_text",
]
