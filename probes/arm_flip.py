"""`dasd-probe arm-flip`: RQ1's selective routing flips (paper section 6 "RQ1", Fig. 6b/6c).

DASD is trained from the model to update S (``flip_at``) in ``base/``. From the base's step-S
checkpoint three arms continue to update T (``steps``), each an ordinary train run of method
``dasd`` whose model is that checkpoint:

* ``none``: unperturbed DASD;
* ``low``: the low-entropy routing arm flipped (``flip="low"``: tokens with omega_t > 0, pulled
  toward the privileged teacher, are pushed away from it instead);
* ``high``: the high-entropy routing arm flipped (``flip="high"``: tokens with omega_t < 0
  become attractive).

Only the sign of one arm changes (``dasd.advantages.ARM_FLIPS``); everything else is the
same in every arm. The trainer evaluates every run on the same held-out prompts every
``eval_every`` updates (StepAcc, E(y) density, Avg@k, ...). The parent directory (kind
``probe:arm-flip``) holds ``base/``, one sub-directory per arm, and a summary with one row per
(arm, evaluation step) on the global update axis (``summary.parquet``, ``summary.json``).
Re-running on the same directory with the same settings resumes (``probes.parent_run``).

Departures from the paper (which gives no protocol beyond "selective flips of either routing
arm"):

1. The default world is the built-in one (the tiny model on Countdown, StepAcc from
   Countdown's exact step judge), not Qwen3-1.7B on DAPO-Math-17k; sizes are scaled to a
   2-core CPU (``DEFAULT_BUDGET``: 80 updates in all, two thirds of sign-flip's default;
   ``QUICK_BUDGET``: a smoke run, 25 s with a random model of the tiny architecture).
2. The arms are new train runs started from the base's step-S checkpoint. The checkpoint's
   AdamW state is loaded into each arm's optimizer before its first update, so the optimizer
   continues; the update counter restarts at 1, and with it the trainer's per-update seeds:
   an arm's update u draws the prompts of the base's update u again (with new samples from
   the moved policy). Every arm draws the same ones, so the arms still differ only in the flip.
3. Constant learning rate by default (``min_lr_ratio = 1``): the trainer's cosine schedule is a
   function of a run's own update index, so a decaying schedule would restart at its peak in
   every arm; with a constant rate the flip is the only change at update S. Setting
   ``min_lr_ratio`` below 1 gives the base and the arms a cosine each.
4. An arm's step-0 evaluation is the checkpoint's, identical to the base's step-S evaluation
   (same model, prompts and sampling seed); the summary puts an arm's update u at global step
   S + u and keeps the base's rows (arm ``base``, steps 0..S).
5. The paper gives no beta; the trainer's default is used unless set.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch

from dasd.trainer import CHECKPOINTS, OPTIMIZER_STATE, TrainConfig, Trainer
from figures.terminal import Terminal
from probes.parent_run import (PROBE_BATCH, SUMMARY, Progress, TrainingProbeOptions,
                               open_parent, resolve_arms, run_child, show_arms)
from probes.registry import register_probe
from probes.sign_flip import summarize as summarize_arms

__all__ = [
    "ARMS",
    "ARM_LABELS",
    "BASE",
    "DEFAULT_BUDGET",
    "KIND",
    "PAPER_FINDING",
    "QUICK_BUDGET",
    "SUMMARY",
    "ArmFlipConfig",
    "ArmFlipOptions",
    "ArmFlipResult",
    "arm_flip_config",
    "flip_checkpoint",
    "headline_columns",
    "run_arm_flip",
    "summarize",
]

#: The arms continued from the flip checkpoint: unperturbed, then the two selective flips.
ARMS = ("none", "low", "high")
#: The run trained up to the flip, a sub-directory of the parent like the arms.
BASE = "base"
ARM_LABELS = {BASE: "DASD up to the flip", "none": "unperturbed DASD",
              "low": "low-H_t arm flipped", "high": "high-H_t arm flipped"}
#: Fig. 6b/6c's finding (Qwen3-1.7B), to read beside the built-in world's numbers.
PAPER_FINDING = ("paper (Fig. 6b/6c): flipping the low-H_t arm hurts StepAcc while E(y) only "
                 "fluctuates; flipping the high-H_t arm suppresses E(y) while StepAcc only "
                 "fluctuates")
KIND = "probe:arm-flip"

#: TrainConfig sizes of the default probe (20 base updates plus 3 arms x 20, the flip
#: defaulting to half of ``steps``: two thirds of sign-flip's default budget) and of
#: ``--quick`` (a smoke run).
DEFAULT_BUDGET: dict[str, Any] = {**PROBE_BATCH, "steps": 40, "prompts_per_step": 16,
                                  "eval_every": 5, "eval_prompts": 32, "eval_k": 16,
                                  "checkpoint_every": 5, "min_lr_ratio": 1.0}
QUICK_BUDGET: dict[str, Any] = {**PROBE_BATCH, "steps": 4, "prompts_per_step": 8,
                                "eval_every": 1, "eval_prompts": 16, "eval_k": 8,
                                "checkpoint_every": 2, "min_lr_ratio": 1.0}


@dataclass(frozen=True)
class ArmFlipConfig:
    """Settings of one arm-flip probe; checked on construction, written into the parent's
    manifest (with ``train`` fully resolved)."""

    flip_at: int
    """S: the base trains updates 1..S, the arms continue from its step-S checkpoint."""
    arms: tuple[str, ...] = ARMS
    """Arms to continue, a non-empty subset of ``ARMS`` without repeats."""
    train: Mapping[str, Any] = field(default_factory=dict)
    """``TrainConfig`` fields shared by the base and every arm; ``steps`` is the total T > S.
    The method is ``dasd``; ``method_options`` other than ``flip`` are shared too."""

    def __post_init__(self) -> None:
        resolved = resolve_arms(self, ARMS, "dasd",
                                "the arm-flip probe trains method dasd; do not set train.method")
        if "flip" in resolved["method_options"]:
            raise ValueError("the arms set method_options.flip; choose them with arms")
        if isinstance(self.flip_at, bool) or not isinstance(self.flip_at, int) \
                or not 1 <= self.flip_at < resolved["steps"]:
            raise ValueError(f"flip_at must be an update in 1..{resolved['steps'] - 1} "
                             f"(below steps = {resolved['steps']}), got {self.flip_at!r}")
        object.__setattr__(self, "train", resolved)
        for arm in self.arms:
            self.arm_config(arm, Path("checkpoint"))

    @property
    def steps(self) -> int:
        """T, the last global update."""
        return int(self.train["steps"])

    def base_config(self) -> TrainConfig:
        """The base run: DASD from the model for updates 1..S."""
        return TrainConfig(method="dasd", **{**self.train, "steps": self.flip_at})

    def arm_config(self, arm: str, checkpoint: Path) -> TrainConfig:
        """The run of ``arm``: DASD (flipped as the arm says) from ``checkpoint`` for the
        remaining T - S updates."""
        options = dict(self.train["method_options"])
        if arm != "none":
            options["flip"] = arm
        return TrainConfig(method="dasd", **{**self.train, "model": str(checkpoint),
                                             "steps": self.steps - self.flip_at,
                                             "method_options": options})

    def to_dict(self) -> dict[str, Any]:
        """The config as stored in the parent's manifest (plain JSON data)."""
        return json.loads(json.dumps({"arms": list(self.arms), "flip_at": self.flip_at,
                                      "train": dict(self.train)}))


def arm_flip_config(*, arms: Sequence[str] = ARMS, flip_at: int | None = None,
                    quick: bool = False, **train: Any) -> ArmFlipConfig:
    """An ``ArmFlipConfig`` on the default budget (``quick``: the smoke budget); ``train``
    fields override the budget's sizes and the trainer's defaults; ``flip_at`` defaults to half
    of ``steps``."""
    values = {**(QUICK_BUDGET if quick else DEFAULT_BUDGET), **train}
    at = flip_at if flip_at is not None else max(int(values.get("steps", 0)) // 2, 1)
    return ArmFlipConfig(flip_at=at, arms=tuple(arms), train=values)


@dataclass(frozen=True)
class ArmFlipResult:
    """What ``run_arm_flip`` did and found."""

    run_dir: Path
    """The parent run directory."""
    run_dirs: dict[str, Path]
    """The train run directory of the base and of each arm."""
    actions: dict[str, str]
    """Per run (base and arms): ``trained``, ``resumed`` or ``skipped`` (finished)."""
    summary: pd.DataFrame
    """One row per (arm, evaluation step); see ``summarize``."""


def flip_checkpoint(run_dir: Path, flip_at: int) -> Path:
    """The base's step-S checkpoint under the parent ``run_dir`` (absolute)."""
    return (Path(run_dir) / BASE / CHECKPOINTS / f"step-{flip_at}").resolve()


def _carry_optimizer(checkpoint: Path, trainer: Trainer) -> None:
    """Load the checkpoint's AdamW state into an arm that has not trained yet (departure 2);
    a resumed arm already has its own from its checkpoint."""
    if trainer.start_step == 0:
        state = torch.load(checkpoint / OPTIMIZER_STATE, weights_only=True)
        trainer.optimizer.load_state_dict(state)


def summarize(run_dir: Path, cfg: ArmFlipConfig) -> pd.DataFrame:
    """The held-out metrics of the base and every arm on the global update axis: one row per
    (arm, evaluation step), arm ``base`` for steps 0..S, then each arm's steps S..T; columns
    ``arm``, ``step`` and every ``eval/...`` metric the trainer logged."""
    summary = summarize_arms(Path(run_dir), [BASE, *cfg.arms])
    summary.loc[summary["arm"] != BASE, "step"] += cfg.flip_at
    return summary


def headline_columns(k: int) -> dict[str, str]:
    """The summary columns of the probe's final table (Fig. 6b/6c's metrics first)."""
    return {"eval/step_acc": "StepAcc", "eval/ey_density": "E(y)",
            f"eval/avg_at_{k}": f"Avg@{k}", "eval/length_tokens": "length"}


def _offset(progress: Progress | None, name: str, offset: int
            ) -> Callable[[int, Mapping[str, float]], None] | None:
    if progress is None:
        return None
    return lambda step, metrics: progress(name, offset + step, metrics)


def run_arm_flip(cfg: ArmFlipConfig, run_dir: Path, *,
                 progress: Progress | None = None) -> ArmFlipResult:
    """Run (or resume) the probe into ``run_dir``: the base in ``run_dir/base``, one train run
    per arm in ``run_dir/<arm>``, then ``summary.parquet`` / ``summary.json`` in ``run_dir``.

    ``progress(name, step, metrics)`` (``name``: ``base`` or an arm; ``step`` on the global
    axis) is called when a run starts (no metrics; a finished run with its last step) and
    after every step it logs.
    """
    run_dir = Path(run_dir)
    actions: dict[str, str] = {}
    with open_parent(run_dir, kind=KIND, config=cfg.to_dict()) as parent:
        actions[BASE] = run_child(cfg.base_config(), run_dir / BASE,
                                  _offset(progress, BASE, 0), label=BASE)
        checkpoint = flip_checkpoint(run_dir, cfg.flip_at)
        if not (checkpoint / OPTIMIZER_STATE).is_file():
            raise FileNotFoundError(f"{checkpoint} is missing; the base run must keep its "
                                    f"step-{cfg.flip_at} checkpoint (choose another --name)")
        for arm in cfg.arms:
            actions[arm] = run_child(
                cfg.arm_config(arm, checkpoint), run_dir / arm,
                _offset(progress, arm, cfg.flip_at), label=arm,
                prepare=lambda trainer: _carry_optimizer(checkpoint, trainer),
            )
        summary = summarize(run_dir, cfg)
        parent.write_table(SUMMARY, summary)
        parent.write_json(SUMMARY, {"arms": list(cfg.arms), "flip_at": cfg.flip_at,
                                    "steps": cfg.steps, "eval_k": cfg.train["eval_k"],
                                    "rows": summary.to_dict("records")})
    return ArmFlipResult(run_dir=run_dir,
                         run_dirs={name: run_dir / name for name in (BASE, *cfg.arms)},
                         actions=actions, summary=summary)


@dataclass(frozen=True, kw_only=True)
class ArmFlipOptions(TrainingProbeOptions):
    """The options of ``dasd-probe arm-flip`` (``steps`` is the total T, base plus arm)."""

    arms: tuple[str, ...] = ARMS
    """Arms continued from the flip: none (unperturbed DASD), low (omega > 0 tokens become
    repulsive), high (omega < 0 tokens become attractive)."""
    flip_at: int | None = None
    """Update S at which the arms branch off the DASD run (default: half of --steps)."""

    default_budget: ClassVar[Mapping[str, Any]] = DEFAULT_BUDGET
    quick_budget: ClassVar[Mapping[str, Any]] = QUICK_BUDGET

    def config(self) -> ArmFlipConfig:
        """The probe's config: the budget, then these options."""
        return arm_flip_config(arms=self.arms, flip_at=self.flip_at, quick=self.quick,
                               **self.train_values())


def _progress_info(metrics: Mapping[str, float]) -> str | None:
    if "eval/step_acc" not in metrics:
        return None
    return (f"StepAcc {metrics['eval/step_acc']:.3f}  "
            f"E(y) {metrics.get('eval/ey_density', float('nan')):.2f}")


def _run(options: ArmFlipOptions, run_dir: Path, terminal: Terminal) -> ArmFlipResult:
    """RQ1 (Fig. 6b/6c): DASD trained to update S, then continued to T three ways from the
    same checkpoint and optimizer state: unperturbed, low-entropy arm flipped, high-entropy arm
    flipped; StepAcc and E(y) on the same held-out prompts every N updates."""
    cfg = options.config()
    terminal.line(f"probe directory: {run_dir}")
    with terminal.bars(cfg.steps, labels=ARM_LABELS, info=_progress_info) as update:
        return run_arm_flip(cfg, run_dir, progress=update)


def _show(options: ArmFlipOptions, result: ArmFlipResult, run_dir: Path,
          terminal: Terminal) -> None:
    cfg = options.config()
    show_arms(terminal, f"Arm-flip probe (Fig. 6b/6c): flip at update {cfg.flip_at} of "
              f"{cfg.steps}, {cfg.train['eval_prompts']} held-out prompts x "
              f"{cfg.train['eval_k']}", PAPER_FINDING, headline_columns(cfg.train["eval_k"]),
              result, run_dir)


register_probe("arm-flip", options=ArmFlipOptions, run=_run, show=_show, resumable=True)
