"""`dasd-probe sign-flip`: Probe 1, does reversing the self-distillation direction restore
reasoning? (paper section 3 "Probe 1", Fig. 2, appendix A.1).

Three arms start from the same model with the same data order, seed and held-out prompts:
Base (GRPO), Conformity (omega = +1, pulled toward the privileged self-teacher) and Novelty
(omega = -1, pushed away from it). Each arm is one ordinary run of the core trainer
(``dasd.trainer``), written as a sub-directory ``<arm>/`` of the probe's parent run directory;
every ``eval_every`` updates the trainer evaluates it on the held-out prompts with k samples
(Avg@k, Pass@k, StepAcc, E(y) density, response length, ...). The parent holds its own
manifest (kind ``probe:sign-flip``) and a summary, one row per (arm, evaluation step), as
``summary.parquet`` and ``summary.json``. This module only builds the arms' configs, runs
them one after another, resumes them, and collects the summary; it trains nothing itself.

Departures from the paper:

1. The default world is the built-in one: the tiny model trained on Countdown, evaluated on
   Countdown's held-out split, not Qwen3-1.7B on DAPO-Math-17k evaluated on AIME24. StepAcc
   comes from Countdown's exact step judge instead of a ProcessBench-scored PRM.
2. Sizes are scaled so that the three arms together fit a 2-core CPU in 20 minutes
   (``DEFAULT_BUDGET``; ``QUICK_BUDGET`` is a 2-minute smoke version): fewer updates, prompts,
   held-out prompts and samples than the paper; the held-out k is 16 as in the paper's
   pass@16 / acc@16 only in the default budget.
3. Conformity and Novelty are the registered methods ``conformity`` and ``novelty``: the GRPO
   advantage plus or minus beta times the trajectory-normalized gap delta_bar (eq. 8), not the
   raw sampled gap A_t of eq. 6 (see their docstrings). The paper gives no beta; all arms share
   one (the trainer's default unless set), and the GRPO arm ignores it.
4. The held-out evaluation uses one sampling seed at every step and in every arm (the
   trainer's common random numbers), so the step-0 evaluation is identical across arms and
   later differences are not sampling noise.
5. Arms run one after another in one process; an interrupted probe resumes when re-run on the
   same directory with the same settings: finished arms are kept as they are, a half-finished
   arm continues from its newest checkpoint (``Trainer.resume``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from dasd.runlog import read_metrics
from dasd.trainer import TrainConfig
from figures.terminal import Terminal
from probes.parent_run import (PROBE_BATCH, SUMMARY, Progress, TrainingProbeOptions,
                               open_parent, resolve_arms, run_child, show_arms)
from probes.registry import register_probe

__all__ = [
    "ARMS",
    "ARM_LABELS",
    "DEFAULT_BUDGET",
    "KIND",
    "PAPER_FINDING",
    "QUICK_BUDGET",
    "SUMMARY",
    "SignFlipConfig",
    "SignFlipOptions",
    "SignFlipResult",
    "headline_columns",
    "run_sign_flip",
    "sign_flip_config",
    "summarize",
]

#: The probe's arms (each a registered method), in the paper's order.
ARMS = ("grpo", "conformity", "novelty")
ARM_LABELS = {"grpo": "Base (GRPO)", "conformity": "Conformity (ω ≡ +1)",
              "novelty": "Novelty (ω ≡ −1)"}
#: Fig. 2's finding (Qwen3-1.7B, AIME24), to read beside the built-in world's numbers.
PAPER_FINDING = ("paper (Fig. 2): Conformity cuts length and E(y) without gaining accuracy; "
                 "Novelty briefly beats Base, then E(y) and length grow while StepAcc falls")
KIND = "probe:sign-flip"

#: TrainConfig sizes of the default probe (the three arms within 20 minutes on a 2-core CPU
#: with the built-in tiny model) and of ``--quick`` (within 2 minutes).
DEFAULT_BUDGET: dict[str, int] = {**PROBE_BATCH, "steps": 40, "prompts_per_step": 16,
                                  "micro_batch_size": 64, "eval_every": 5, "eval_prompts": 32,
                                  "eval_k": 16, "checkpoint_every": 5}
QUICK_BUDGET: dict[str, int] = {**PROBE_BATCH, "steps": 4, "prompts_per_step": 8,
                                "micro_batch_size": 64, "eval_every": 2, "eval_prompts": 16,
                                "eval_k": 8, "checkpoint_every": 2}


@dataclass(frozen=True)
class SignFlipConfig:
    """Settings of one sign-flip probe; checked on construction, written into the parent's
    manifest (with ``train`` fully resolved)."""

    arms: tuple[str, ...] = ARMS
    """Arms to run, a non-empty subset of ``ARMS`` without repeats."""
    train: Mapping[str, Any] = field(default_factory=dict)
    """``TrainConfig`` fields shared by every arm (all but ``method``, which the arm sets);
    fields not given take the trainer's defaults."""

    def __post_init__(self) -> None:
        resolved = resolve_arms(self, ARMS, None,
                                "the arms set the method; choose them with arms, not train.method")
        for arm in self.arms[1:]:
            TrainConfig(method=arm, **self.train)
        object.__setattr__(self, "train", resolved)

    def arm_config(self, arm: str) -> TrainConfig:
        """The trainer config of ``arm``: the shared settings with ``method=arm``."""
        return TrainConfig(method=arm, **self.train)

    def to_dict(self) -> dict[str, Any]:
        """The config as stored in the parent's manifest (plain JSON data)."""
        return json.loads(json.dumps({"arms": list(self.arms), "train": dict(self.train)}))


def sign_flip_config(*, arms: Sequence[str] = ARMS, quick: bool = False,
                     **train: Any) -> SignFlipConfig:
    """A ``SignFlipConfig`` on the default budget (``quick``: the smoke budget); ``train``
    fields override the budget's sizes and the trainer's defaults."""
    budget = QUICK_BUDGET if quick else DEFAULT_BUDGET
    return SignFlipConfig(arms=tuple(arms), train={**budget, **train})


@dataclass(frozen=True)
class SignFlipResult:
    """What ``run_sign_flip`` did and found."""

    run_dir: Path
    """The parent run directory."""
    arm_dirs: dict[str, Path]
    """Each arm's train run directory."""
    actions: dict[str, str]
    """Per arm: ``trained`` (new), ``resumed`` (from a checkpoint) or ``skipped`` (finished)."""
    summary: pd.DataFrame
    """One row per (arm, evaluation step); see ``summarize``."""


def summarize(run_dir: Path, arms: Sequence[str]) -> pd.DataFrame:
    """The held-out metrics of each arm's run under ``run_dir``: one row per (arm, evaluation
    step), columns ``arm``, ``step`` and every ``eval/...`` metric the trainer logged (Avg@k,
    Pass@k, StepAcc, FES, CSR, E(y) density, length, ...), read from the arms' metrics.jsonl."""
    frames = []
    for arm in arms:
        metrics = read_metrics(Path(run_dir) / arm)
        rows = metrics[metrics["split"] == "eval"].drop_duplicates("step", keep="last")
        keys = [c for c in rows.columns if c.startswith("eval/") and rows[c].notna().any()]
        frame = rows[["step", *keys]].sort_values("step")
        frames.append(frame.assign(arm=arm)[["arm", "step", *keys]])
    summary = pd.concat(frames, ignore_index=True)
    summary["step"] = summary["step"].astype("int64")
    return summary


def headline_columns(k: int) -> dict[str, str]:
    """The summary columns of the probe's final table (Fig. 2's panels) and their labels."""
    return {f"eval/avg_at_{k}": f"Avg@{k}", f"eval/pass_at_{k}": f"Pass@{k}",
            "eval/step_acc": "StepAcc", "eval/ey_density": "E(y)",
            "eval/length_tokens": "length"}


def run_sign_flip(cfg: SignFlipConfig, run_dir: Path, *,
                  progress: Progress | None = None) -> SignFlipResult:
    """Run (or resume) the probe into ``run_dir``: one train run per arm in ``run_dir/<arm>``,
    then ``summary.parquet`` / ``summary.json`` in ``run_dir``.

    ``progress(arm, step, metrics)`` is called when an arm starts (with its first step and no
    metrics; a finished arm with its last step) and after every step it logs.
    """
    run_dir = Path(run_dir)
    actions: dict[str, str] = {}
    with open_parent(run_dir, kind=KIND, config=cfg.to_dict()) as parent:
        for arm in cfg.arms:
            report = None if progress is None else partial(progress, arm)
            actions[arm] = run_child(cfg.arm_config(arm), run_dir / arm, report,
                                     label=arm)
        summary = summarize(run_dir, cfg.arms)
        parent.write_table(SUMMARY, summary)
        parent.write_json(SUMMARY, {"arms": list(cfg.arms), "eval_k": cfg.train["eval_k"],
                                    "rows": summary.to_dict("records")})
    return SignFlipResult(run_dir=run_dir, arm_dirs={arm: run_dir / arm for arm in cfg.arms},
                          actions=actions, summary=summary)


@dataclass(frozen=True, kw_only=True)
class SignFlipOptions(TrainingProbeOptions):
    """The options of ``dasd-probe sign-flip``."""

    arms: tuple[str, ...] = ARMS
    """Arms: grpo (Base), conformity (omega = +1), novelty (omega = -1)."""

    default_budget: ClassVar[Mapping[str, Any]] = DEFAULT_BUDGET
    quick_budget: ClassVar[Mapping[str, Any]] = QUICK_BUDGET

    def config(self) -> SignFlipConfig:
        """The probe's config: the budget, then these options."""
        return sign_flip_config(arms=self.arms, quick=self.quick, **self.train_values())


def _run(options: SignFlipOptions, run_dir: Path, terminal: Terminal) -> SignFlipResult:
    """Probe 1 (Fig. 2): Base (GRPO), Conformity and Novelty trained from the same model, data
    order and seed, each evaluated every N updates on the same held-out prompts; one train run
    per arm under one probe directory, a summary, and the final table."""
    cfg = options.config()
    key = f"eval/avg_at_{cfg.train['eval_k']}"
    terminal.line(f"probe directory: {run_dir}")
    with terminal.bars(cfg.train["steps"], labels=ARM_LABELS, info=lambda metrics: (
            f"eval Avg@{cfg.train['eval_k']} {metrics[key]:.3f}" if key in metrics else None)
    ) as update:
        return run_sign_flip(cfg, run_dir, progress=update)


def _show(options: SignFlipOptions, result: SignFlipResult, run_dir: Path,
          terminal: Terminal) -> None:
    cfg = options.config()
    show_arms(terminal, f"Sign-flip probe (Fig. 2): {cfg.train['eval_prompts']} held-out "
              f"prompts x {cfg.train['eval_k']} samples", PAPER_FINDING,
              headline_columns(cfg.train["eval_k"]), result, run_dir)


register_probe("sign-flip", options=SignFlipOptions, run=_run, show=_show, resumable=True)
