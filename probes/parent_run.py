"""A probe's parent run directory holding one train run per arm (paper section 3 Probe 1,
section 6 RQ1-RQ3: every training probe compares arms trained from the same model).

Shared by the training probes (``probes.sign_flip``, ``probes.ablate``): the parent is a run
directory of kind ``probe:<name>`` whose manifest config holds the probe's settings (a
``train`` mapping of shared ``TrainConfig`` fields plus the probe's own keys); each arm is an
ordinary run of the core trainer in a sub-directory. Re-running a probe on the same directory
with the same settings resumes it: finished arms are skipped untouched, an unfinished arm
continues from its newest checkpoint (``Trainer.resume``), a missing one is trained.

Departures: none from the paper (it describes no run layout); this is bookkeeping only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dasd.config_checks import as_tuple, check_fields, check_known
from dasd.runlog import RunWriter, create_run, open_run, read_manifest
from dasd.trainer import TrainConfig, Trainer
from figures.terminal import SECTION, Terminal, cell

__all__ = ["PROBE_BATCH", "SUMMARY", "Progress", "TrainFieldOptions", "TrainingProbeOptions",
           "check_arms", "differences", "open_parent", "parse_overrides", "plain_config",
           "resolve_arms", "run_child", "show_arms"]

Report = Callable[[int, Mapping[str, float]], None]
#: A multi-run probe's progress callback: ``(sub-run name, step, logged metrics)``.
Progress = Callable[[str, int, Mapping[str, float]], None]
#: Stem of a training probe's parent summary files (``summary.parquet``, ``summary.json``).
SUMMARY = "summary"
#: The batch shape the training probes' budgets share: G = 8 rollouts per prompt (the paper's)
#: and 64 responses per optimizer step.
PROBE_BATCH: dict[str, int] = {"group_size": 8, "mini_batch_size": 64}


def plain_config(config: TrainConfig) -> dict[str, Any]:
    """``config`` as stored in a train run's manifest (plain JSON data)."""
    return json.loads(json.dumps(asdict(config)))


def differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """``key: old there, new now`` for every key whose value differs, sorted by key."""
    keys = sorted(set(stored) | set(wanted))
    return ", ".join(f"{key}: {stored.get(key)!r} there, {wanted.get(key)!r} now"
                     for key in keys if stored.get(key) != wanted.get(key))


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
    """The probe's own keys and its ``train`` fields in one mapping (for messages)."""
    return {**{k: v for k, v in config.items() if k != "train"}, **(config.get("train") or {})}


def open_parent(run_dir: Path, *, kind: str, config: dict[str, Any]) -> RunWriter:
    """A new parent run of ``kind`` at ``run_dir``, or the existing one when it holds this
    probe with the same ``config`` (which must have a ``train`` mapping with ``seed``,
    ``model`` and ``task``); other settings are refused with a one-line message."""
    probe = kind.removeprefix("probe:")
    if not (run_dir / "manifest.json").exists():
        train = config["train"]
        return create_run(run_dir, kind=kind, config=config, seed=train["seed"],
                          model=train["model"], task=train["task"])
    manifest = read_manifest(run_dir)
    if manifest["kind"] != kind:
        raise ValueError(f"{run_dir} holds a {manifest['kind']} run, not a {probe} probe; "
                         "choose another --name")
    stored = manifest.get("config") or {}
    if stored != config:
        raise ValueError(f"{run_dir} holds a {probe} probe with other settings "
                         f"({differences(_flat(stored), _flat(config))}); re-run with those "
                         "settings to resume it, or choose another --name")
    return open_run(run_dir)


def run_child(config: TrainConfig, run_dir: Path, report: Report | None, *, label: str,
              prepare: Callable[[Trainer], None] | None = None) -> str:
    """Train, resume or skip the train run of one arm (called ``label`` in messages); returns
    ``trained``, ``resumed`` or ``skipped``. ``report(step, metrics)`` is called when the arm
    starts (its first step, no metrics; a finished arm: its last step) and after every step
    it logs. ``prepare(trainer)``, when given, is called on a new or resumed trainer before it
    trains (e.g. to load an optimizer state carried over from another run)."""
    if not (run_dir / "manifest.json").exists():
        trainer, action = Trainer.start(config, run_dir), "trained"
    else:
        manifest = read_manifest(run_dir)
        if manifest["kind"] != "train" or manifest.get("config") != plain_config(config):
            raise ValueError(f"{run_dir} holds a run with other settings than this probe's "
                             f"{label} arm; move it away or choose another --name")
        if manifest["status"] == "complete":
            if report is not None:
                report(config.steps, {})
            return "skipped"
        trainer, action = Trainer.resume(run_dir), "resumed"
    # The arm's run is open from here: an error before training marks it failed too (``run``
    # finishes it itself; the outer ``with`` then has nothing left to do).
    with trainer.run_writer:
        if prepare is not None:
            prepare(trainer)
        if report is not None:
            report(trainer.start_step, {})
        trainer.run(report)
    return action


def resolve_arms(config: Any, valid: Sequence[str], method: str | None, method_error: str
                 ) -> dict[str, Any]:
    """The check every multi-arm training probe's config runs on construction: ``config.arms``
    becomes a tuple (set on the frozen ``config``), every field's type is checked, the arms are
    valid (``check_arms``), ``config.train`` does not set ``method`` (else ``method_error``) and
    names only ``TrainConfig`` fields. Returns ``config.train`` resolved: every ``TrainConfig``
    field but ``method``, at its value with ``method`` (None: the first arm), checked by
    constructing it."""
    arms = as_tuple(config.arms)
    object.__setattr__(config, "arms", arms)
    check_fields(config)
    check_arms(arms, valid)
    if "method" in config.train:
        raise ValueError(method_error)
    check_known(TrainConfig, config.train, exclude={"method"})
    resolved = asdict(TrainConfig(method=method or arms[0], **config.train))
    del resolved["method"]
    return resolved


def check_arms(arms: Sequence[str], valid: Sequence[str]) -> None:
    """Refuse an empty, unknown or repeated arm of a multi-arm probe (one-line errors)."""
    if not arms:
        raise ValueError(f"arms must name at least one of {', '.join(valid)}")
    for arm in arms:
        if arm not in valid:
            raise ValueError(f"unknown arm {arm!r}; valid: {', '.join(valid)}")
    if len(set(arms)) != len(arms):
        raise ValueError(f"arms must not repeat, got {', '.join(arms)}")


def parse_overrides(pairs: Sequence[str]) -> dict[str, object]:
    """``KEY=VALUE`` pairs (``--set``); VALUE is read as JSON when it parses (numbers,
    booleans, objects), else kept as a string."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (VALUE as JSON), got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


#: Options of the training probes that set a ``TrainConfig`` field of another name.
_TRAIN_FIELD = {"k": "eval_k"}


@dataclass(frozen=True, kw_only=True)
class TrainFieldOptions:
    """The command-line options that set a ``TrainConfig`` field of the same name, shared by
    ``dasd-probe train`` and the training probes; an option left None is not set here."""

    model: str = "tiny"
    """``tiny`` (built-in), a local checkpoint directory, or a hub name."""
    task: str = "countdown"
    """A registered task."""
    steps: int | None = None
    """Policy updates per run."""
    eval_every: int | None = None
    """Held-out evaluation every N updates (0: first and last only)."""
    beta: float | None = None
    """Weight of the teacher term (eq. 5/8)."""
    seed: int = 0
    """Seed of data order, sampling and evaluation (the first seed where a probe repeats over
    seeds)."""

    def set_fields(self, *names: str) -> dict[str, Any]:
        """The ``TrainConfig`` fields these options set: ``model``, ``task``, ``seed``, and
        ``steps``, ``eval_every``, ``beta`` and the options ``names`` where not None (an option
        named as ``_TRAIN_FIELD`` says under its ``TrainConfig`` name)."""
        values = {"model": self.model, "task": self.task, "seed": self.seed}
        for name in ("steps", "eval_every", "beta", *names):
            if getattr(self, name) is not None:
                values[_TRAIN_FIELD.get(name, name)] = getattr(self, name)
        return values


@dataclass(frozen=True, kw_only=True)
class TrainingProbeOptions(TrainFieldOptions):
    """The command-line options every training probe shares (``probes.registry``); an option
    left None takes the probe's budget (``default_budget``, or ``quick_budget`` with
    ``quick``), then the trainer's default."""

    k: int | None = None
    """Samples per held-out prompt, for Avg@k and Pass@k."""
    eval_prompts: int | None = None
    """Held-out prompts, the same for every run."""
    prompts_per_step: int | None = None
    """Training prompts per update."""
    quick: bool = False
    """A smoke version (the probe's smaller budget)."""
    overrides: tuple[str, ...] = field(default=(), metadata={"flag": "--set",
                                                             "repeatable": True})
    """Any other TrainConfig field shared by the runs as KEY=VALUE (JSON values), e.g. --set
    lr=3e-4."""

    default_budget: ClassVar[Mapping[str, Any]] = {}
    quick_budget: ClassVar[Mapping[str, Any]] = {}

    def train_values(self) -> dict[str, Any]:
        """The ``TrainConfig`` fields these options set (budget sizes not included)."""
        return {**self.set_fields("k", "eval_prompts", "prompts_per_step"),
                **parse_overrides(self.overrides)}

    @classmethod
    def option_default(cls, name: str) -> str | None:
        """The default of option ``name`` as its help states it (the budgets' sizes)."""
        if name == "beta":
            return f"default: the trainer's, {TrainConfig.beta}"
        key = _TRAIN_FIELD.get(name, name)
        if key in cls.default_budget and key in cls.quick_budget:
            return f"default {cls.default_budget[key]}; --quick: {cls.quick_budget[key]}"
        return None


def show_arms(terminal: Terminal, title: str, caption: str, labels: Mapping[str, str],
              result: Any, run_dir: Path) -> None:
    """A training probe's result: one table row per (arm, evaluation step) with the
    ``labels`` columns of ``result.summary``, then what was done to each arm and the probe
    directory."""
    formats = {"eval/ey_density": ".2f", "eval/length_tokens": ".1f"}
    rows: list[Sequence[str]] = []
    for arm, frame in result.summary.groupby("arm", sort=False):
        rows += [[arm, str(row["step"]),
                  *(cell(float(row.get(key, math.nan)), formats.get(key, ".3f"))
                    for key in labels)] for row in frame.to_dict("records")]
        rows.append(SECTION)
    terminal.table(title, ["arm", "step", *labels.values()], rows, caption=caption)
    for arm, action in result.actions.items():
        terminal.line(f"{arm}: {action}")
    terminal.line(f"probe directory: {run_dir}")
