"""`dasd-probe train`: the one core trainer (``dasd.trainer``, paper section 2: the GRPO
backbone, the method shaping per-token advantages) from the command line: a new run from
options, or an interrupted or finished one continued with ``--resume``.

Departures: none (this module only turns options into a ``TrainConfig`` and shows progress).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from dasd.method_styles import METHOD_STYLES
from dasd.trainer import TrainConfig, Trainer
from figures.terminal import Terminal
from probes.parent_run import TrainFieldOptions, parse_overrides
from probes.registry import register_probe, timestamped_name

__all__ = ["TrainOptions"]


@dataclass(frozen=True, kw_only=True)
class TrainOptions(TrainFieldOptions):
    """The options of ``dasd-probe train``; an option left None takes ``TrainConfig``'s
    default."""

    method: str = "dasd"
    """Method (the method registry)."""
    rho: float | None = None
    """Router quantile (paper: 0.2)."""
    lr: float | None = None
    """Peak learning rate (cosine decay)."""
    report_to: str = "none"
    """Also stream metrics to tensorboard or wandb (optional extras); metrics.jsonl is written
    either way."""
    overrides: tuple[str, ...] = field(default=(), metadata={"flag": "--set",
                                                             "repeatable": True})
    """Any other TrainConfig field as KEY=VALUE (JSON values), e.g. --set group_size=4 --set
    'method_options={"direction": "hard"}'."""
    resume: Path | None = None
    """Continue this run directory from its newest checkpoint (its logged config is used;
    --steps extends it)."""

    #: The options ``resume`` takes (the command line refuses any other beside it).
    resume_takes: ClassVar[tuple[str, ...]] = ("steps",)

    @classmethod
    def option_default(cls, name: str) -> str | None:
        """The defaults the help states: ``TrainConfig``'s, and the registered methods."""
        if name == "method":
            return f"one of {', '.join(METHOD_STYLES)}"
        if name == "steps":
            return f"default {TrainConfig.steps}; with --resume: the total to extend the run to"
        if name in ("steps", "beta", "rho", "lr", "eval_every"):
            return f"default {getattr(TrainConfig, name)}"
        return None

    def config(self) -> TrainConfig:
        """The ``TrainConfig`` of a new run: these options over the trainer's defaults."""
        values = {**self.set_fields("rho", "lr"), "method": self.method,
                  "report_to": self.report_to}
        return TrainConfig.from_dict({**values, **parse_overrides(self.overrides)})


def _run(options: TrainOptions, run_dir: Path, terminal: Terminal) -> Path:
    """Train with the one core trainer (GRPO backbone; the method shapes per-token advantages)
    and log metrics, rollouts, held-out evaluations and checkpoints to a run directory."""
    if options.resume is not None:
        run = Trainer.resume(options.resume, steps=options.steps)
    else:
        run = Trainer.start(options.config(), run_dir)
    cfg, latest = run.cfg, {}

    def info(metrics: dict[str, float]) -> str:
        latest.update(metrics)
        shown = f"reward {latest.get('train/reward', float('nan')):.3f}"
        acc = next((v for k, v in latest.items() if k.startswith("eval/avg_at_")), None)
        return shown if acc is None else f"{shown}  eval Avg@{cfg.eval_k} {acc:.3f}"

    label = f"{cfg.method} on {cfg.task}"
    with terminal.bars(cfg.steps, info=info) as update:
        update(label, run.start_step, {})
        return run.run(lambda step, metrics: update(label, step, metrics))


def _show(options: TrainOptions, run_dir: Path, _: Path, terminal: Terminal) -> None:
    terminal.line(f"run directory: {run_dir}")


register_probe("train", options=TrainOptions, run=_run, show=_show,
               default_name=lambda options: timestamped_name(f"train-{options.method}",
                                                             options.model),
               default_name_text="train-<method>-<model>-<time>",
               interrupt_hint=lambda options, run_dir: "continue it with: dasd-probe train "
                                                       f"--resume {options.resume or run_dir}")
