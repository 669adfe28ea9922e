"""``dasd-probe validate``: each probe's power and false positives on control worlds (issue 16).

Runs the three paper probes and RQ1/RQ2 — ``sign-flip-s<seed>`` (Probe 1, Fig. 2),
``entropy-tv`` (Probe 2, Fig. 3), ``prefix-intervene`` (Probe 3, Table 1), ``arm-flip-s<seed>``
(RQ1, Fig. 6b/6c) and ``causal`` (RQ2, Fig. 7, on the world's base model) — on two control
worlds, each in its own folder under one parent run directory: ``positive-control/`` (a world
with the paper's mechanisms planted, default ``tiny-planted``) and ``negative-control/`` (a
world whose teacher knows nothing about the answer, default ``tiny-null``). The stages, their
sizes (``probes.reproduce.BUDGETS``' ``quick`` and ``default``), the progress display and the
resume rules are ``dasd-probe reproduce``'s (``probes.reproduce.run_stages``).

Then each world's claims are measured by ``analysis.findings.findings`` (RQ2 on the causal
probe's base model) and judged against the sign the world predicts (``predicted_sign``,
written in code before any run) by ``analysis.calibration``'s rule; ``calibration.csv`` and
``calibration.md`` in the parent hold one row per (probe claim, world). The worlds are controls
in every output, never reproductions: ``analysis.findings`` leaves the runs of a ``validate``
parent out of any findings of the paper.

Budgets: ``quick`` (smoke sizes, within ten minutes on a 2-core CPU for both worlds, model
builds excluded) and ``default`` (every probe's default size, within an hour there).

Departures: the paper has no control worlds. RQ2 is measured on each world's base model, not
on a DASD checkpoint trained there (no training stage), so its claims read ``base: ...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from analysis.calibration import ROLES, Row, summary_lines, write_calibration
from analysis.findings import CONTROLS_KIND, Claim, findings
from dasd.config_checks import check_fields
from figures.terminal import Terminal
from probes.parent_run import open_parent
from probes.registry import register_probe
from probes.reproduce import (
    BUDGETS,
    METHODS,
    Budget,
    Display,
    ReproduceConfig,
    Stage,
    probe_stages,
    run_stages,
    show_outcome,
    stage_display,
)

__all__ = [
    "BUDGET_NAMES",
    "KIND",
    "PROBES",
    "WORLDS",
    "ValidateConfig",
    "ValidateResult",
    "calibration_rows",
    "fallback_sign",
    "plan",
    "predicted_sign",
    "run_validate",
    "slot",
]

KIND = CONTROLS_KIND
#: The budgets validate takes (sizes from ``probes.reproduce.BUDGETS``).
BUDGET_NAMES = ("quick", "default")
#: The built-in control worlds and their roles (``dasd.models.load_model`` resolves the names).
WORLDS: dict[str, str] = {"tiny-planted": "positive", "tiny-null": "negative"}
#: World names that may stand in for a control: the natural world, to time or test the command.
STAND_INS = ("tiny",)
#: Which probe measures each finding of ``analysis.findings`` (the others are left out).
PROBES: dict[str, str] = {"Finding 1": "sign-flip", "Finding 2": "entropy-tv",
                          "Finding 3": "prefix-intervene", "RQ1": "arm-flip", "RQ2": "causal"}


# ------------------------------------------------------------------ predictions, before any run

#: FALLBACK predictions of the negative control (until ``dasd.worlds.PREDICTED_SIGN`` holds the
#: worlds' own): the claims that rest on the teacher knowing the answer, predicted 0 there. A
#: teacher whose context carries no information about the answer cannot make a student's steps
#: or answers more (or less) correct by being followed or avoided, so every correctness claim
#: (Pass@k, StepAcc, correct) moved through the teacher vanishes. The claims on E(y) and on the
#: gap-entropy coupling keep the paper's sign: a teacher that differs from the student but knows
#: nothing still shapes where the student hesitates (the issue's caveat), so the null predicts
#: no reversal there. "preserve − suppress" involves no teacher and keeps its sign too.
NULL_ZERO = frozenset({
    "Conformity − Base, Pass@k < 0",
    "Novelty − Base, StepAcc < 0",
    "low-H_t Conformity, ΔStepAcc % > 0",
    "low-H_t Novelty, ΔStepAcc % < 0",
    "low-H_t arm flipped − unperturbed, StepAcc < 0",
    "base: teacher top token at the highest-H_t position − unmodified, correct < 0",
})


def fallback_sign(role: str, claim: Claim) -> int:
    """FALLBACK prediction (no world table): the positive control predicts the paper's sign for
    every claim; the negative control predicts 0 for the claims of ``NULL_ZERO`` and the
    paper's sign for the others."""
    if role not in ROLES:
        raise ValueError(f"unknown control role {role!r}; valid: {', '.join(ROLES)}")
    return 0 if role == "negative" and claim.text in NULL_ZERO else claim.sign


def predicted_sign(world: str, role: str, claim: Claim) -> int:
    """The sign ``world`` (a control of ``role``) predicts for ``claim``: the world's own table
    (``dasd.worlds.PREDICTED_SIGN``) where it names the claim, else ``fallback_sign``."""
    try:
        from dasd.worlds import PREDICTED_SIGN
    except ModuleNotFoundError:
        return fallback_sign(role, claim)
    return PREDICTED_SIGN.get(world, {}).get(claim.text, fallback_sign(role, claim))


# --------------------------------------------------------------------------------- the run


def slot(role: str) -> str:
    """The folder of the control world of ``role`` under the parent."""
    return f"{role}-control"


@dataclass(frozen=True)
class ValidateConfig:
    """Settings of one validation; written into the parent's manifest."""

    budget: str = "quick"
    """A name in ``BUDGET_NAMES``: quick (smoke sizes, within 10 minutes on a 2-core CPU) or
    default (every probe's default size, within an hour there); model builds excluded."""
    seeds: int | None = None
    """Seeds of sign-flip and arm-flip; None: the budget's (1)."""
    worlds: tuple[str, ...] = ("tiny-planted", "tiny-null")
    """The positive control, then the negative control: a name of ``WORLDS``, a stand-in
    (``STAND_INS``, e.g. tiny) or a checkpoint directory."""
    seed: int = 0
    """First seed of every stage."""
    task: str = "countdown"
    """A registered task."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.budget not in BUDGET_NAMES:
            raise ValueError(f"unknown budget {self.budget!r}; valid: {', '.join(BUDGET_NAMES)}")
        if len(self.worlds) != len(ROLES):
            raise ValueError(f"--worlds takes two worlds, the positive control then the "
                             f"negative one; got {len(self.worlds)}: {', '.join(self.worlds)}")
        for world, role in zip(self.worlds, ROLES):
            if world in WORLDS and WORLDS[world] != role:
                raise ValueError(f"world {world!r} is the {WORLDS[world]} control, given as the "
                                 f"{role} one; list the positive control first")
            if world not in WORLDS and world not in STAND_INS and not Path(world).is_dir():
                raise ValueError(f"unknown world {world!r}; valid: {', '.join(WORLDS)}, a "
                                 f"stand-in ({', '.join(STAND_INS)}) or a checkpoint directory")
        # The budget's seeds by default, checked as a reproduction checks them.
        object.__setattr__(self, "seeds", ReproduceConfig(self.budget, self.seeds).seeds)

    @property
    def sizes(self) -> Budget:
        """``probes.reproduce.BUDGETS[budget]``; its causal estimate scaled to the one
        checkpoint probed here (reproduce probes the base model and three trained ones)."""
        sizes = BUDGETS[self.budget]
        causal = sizes.seconds["causal"] / (1 + len(METHODS))
        return replace(sizes, seconds={**sizes.seconds, "causal": causal})

    def world(self, role: str) -> ReproduceConfig:
        """The reproduction settings of the control world of ``role``."""
        return ReproduceConfig(budget=self.budget, seeds=self.seeds, seed=self.seed,
                               model=self.worlds[ROLES.index(role)], task=self.task)

    def to_dict(self) -> dict[str, Any]:
        """The parent manifest's config (``train`` names the positive control for
        ``open_parent``)."""
        return {"budget": self.budget, "seeds": self.seeds,
                "worlds": dict(zip(ROLES, self.worlds)),
                "train": {"model": self.worlds[0], "task": self.task, "seed": self.seed}}


def plan(cfg: ValidateConfig) -> list[Stage]:
    """Every stage in run order: the positive control's probes, then the negative control's,
    each named ``<role>-control/<stage>``."""
    return [replace(stage, name=f"{slot(role)}/{stage.name}")
            for role in ROLES for stage in probe_stages(cfg.world(role), causal_methods=())]


def calibration_rows(cfg: ValidateConfig, run_dir: Path) -> list[Row]:
    """One row per (probe claim, world) from the runs in each world's folder (claims without
    runs are not measured)."""
    rows = []
    for role, world in zip(ROLES, cfg.worlds):
        folder = run_dir / slot(role)
        found = findings([folder] if folder.is_dir() else [], causal_method="base")
        for finding in found:
            if finding.name not in PROBES:
                continue
            rows += [Row(PROBES[finding.name], c.text, world, role,
                         predicted_sign(world, role, c), c.ours, c.low, c.high)
                     for c in finding.claims]
    return rows


@dataclass(frozen=True)
class ValidateResult:
    """What ``run_validate`` did: per stage ``run``, ``resumed``, ``restarted`` or
    ``skipped``; the rows and the files written."""

    run_dir: Path
    actions: dict[str, str]
    rows: list[Row]
    outputs: Mapping[str, Path]


def run_validate(cfg: ValidateConfig, run_dir: Path, *, display: Display | None = None,
                 stages: list[Stage] | None = None) -> ValidateResult:
    """Run (or resume) every stage of ``plan(cfg)`` (or the given ``stages``) under the parent
    ``run_dir``, then write ``calibration.csv`` and ``calibration.md`` there."""
    run_dir = Path(run_dir)
    stages = plan(cfg) if stages is None else stages
    with open_parent(run_dir, kind=KIND, config=cfg.to_dict()) as parent:
        actions = run_stages(cfg, run_dir, stages, display=display)
        rows = calibration_rows(cfg, run_dir)
        outputs = write_calibration(rows, run_dir)
        parent.write_json("stages", {"budget": cfg.budget, "seeds": cfg.seeds,
                                     "worlds": dict(zip(ROLES, cfg.worlds)),
                                     "stages": [s.name for s in stages], "actions": actions})
    return ValidateResult(run_dir=run_dir, actions=actions, rows=rows, outputs=outputs)


def _run(cfg: ValidateConfig, run_dir: Path, terminal: Terminal) -> ValidateResult:
    """Each probe's power on control worlds: sign-flip, entropy-tv, prefix-intervene, arm-flip
    and causal on a positive control (the paper's mechanisms planted) and a negative control (a
    teacher that knows nothing), under one parent directory; then calibration.csv / .md, one
    row per (probe claim, world): detected / missed on the positive control, clean / false
    positive on the negative one. Controls, not reproductions. Interrupted, it resumes where
    it stopped."""
    stages = plan(cfg)
    terminal.line(f"parent directory: {run_dir} ({len(stages)} stages, budget {cfg.budget}, "
                  f"{cfg.seeds} seed(s)); positive control {cfg.worlds[0]}, negative control "
                  f"{cfg.worlds[1]}")
    with stage_display(terminal, cfg.sizes, stages) as display:
        return run_validate(cfg, run_dir, stages=stages, display=display)


def _show(cfg: ValidateConfig, result: ValidateResult, run_dir: Path,
          terminal: Terminal) -> None:
    show_outcome(terminal, summary_lines(result.rows), result.outputs)


register_probe("validate", options=ValidateConfig, run=_run, show=_show, resumable=True,
               default_name=lambda cfg: f"validate-{cfg.budget}",
               default_name_text="validate-<budget>")
