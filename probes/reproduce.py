"""``dasd-probe reproduce``: the paper's probes on one model and task, under one parent run.

Runs, in order (each a stage with its own run directory under the parent):

* ``eval-base``: the base model's held-out Avg@k / Pass@k (Table 2's "base" row);
* ``train-<method>-s<seed>`` for GRPO, OPSD and DASD (section 5, Table 2), then
  ``eval-<method>-s<seed>``: each trained run's final checkpoint on the same held-out prompts;
* ``sign-flip-s<seed>`` (Probe 1, Fig. 2), ``entropy-tv`` (Probe 2, Fig. 3),
  ``prefix-intervene`` (Probe 3, Table 1);
* ``arm-flip-s<seed>`` (RQ1, Fig. 6b/6c), ``causal`` (RQ2, Fig. 7, on the base model and the
  three trained checkpoints), ``ablate-<panel>`` for the four panels (RQ3, Tables 5, 11-14);

then writes, from the logged runs only, ``tables/`` (``dasd-analyze tables``), ``figures/``
(``dasd-analyze figures``), ``findings.json`` / ``findings.md`` (``analysis.findings``: one
verdict per paper finding by a stated rule) and ``report.html`` (``dasd-analyze report``).

Power: given a ``calibration.csv`` of ``dasd-probe validate`` (``calibration``, else found
beside the parent as ``validate-<budget>/calibration.csv``, the default name of a validation
at the same budget), the findings and the report show each claim's verdict on the positive
control world beside ours; without one they are written as before.

Budgets (``BUDGETS``) set the sizes. ``quick`` is a smoke version that must finish within ten
minutes on a 2-core CPU with the built-in tiny model (measured: under four); ``default`` uses
every probe's default size (measured: 44 minutes there);
``full`` is larger, for a GPU. ``seeds`` repeats the training stages (train, sign-flip,
arm-flip) at consecutive seeds and sets the ablations' seeds.

Resume: the parent's manifest holds the budget, seeds, seed, model and task; re-running with the
same settings skips every stage whose run is ``complete``, continues the training stages from
their newest checkpoints (each probe resumes its own arms), and restarts an interrupted
inference stage (eval, entropy-tv, prefix-intervene, causal: a few minutes at most) after
removing its partial directory. Other settings on an existing parent are refused.

Departures: none from the paper's protocols (each probe module states its own); the sizes are
ours, and the paper trains no tiny model.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from analysis.calibration import Row, read_calibration
from analysis.findings import findings, write_findings
from dasd.config_checks import check_fields
from dasd.runlog import read_manifest
from dasd.trainer import TrainConfig
from figures.terminal import Terminal
from probes.parent_run import open_parent, run_child
from probes.registry import register_probe

__all__ = [
    "BUDGETS",
    "FIGURE_STAGES",
    "KIND",
    "METHODS",
    "PANELS",
    "Budget",
    "Display",
    "ReproduceConfig",
    "ReproduceOptions",
    "Stage",
    "calibration_beside",
    "plan",
    "probe_stages",
    "run_reproduce",
    "run_stages",
    "show_outcome",
    "stage_display",
    "stage_done",
]

KIND = "probe:reproduce"
#: The trained methods (Table 2's rows that the built-in world can train).
METHODS = ("grpo", "opsd", "dasd")
#: The ablation panels of RQ3, in the paper's table order.
PANELS = ("quantile", "routing", "direction", "gate")


@dataclass(frozen=True)
class Budget:
    """Sizes of every stage: ``sizes`` maps a command (``eval``, ``train`` or a registered
    probe: ``sign-flip``, ``entropy-tv``, ...) to the keyword arguments of its config
    (``TrainConfig`` fields for the training stages); a command not named takes its defaults.
    ``seconds`` estimates each stage kind's wall time on a 2-core CPU (the progress display's
    time left; measured for ``quick`` and ``default``, rough for ``full``)."""

    name: str
    seeds: int
    sizes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)
    quick_probes: bool = False
    """Use the training probes' own ``--quick`` sizes (sign-flip, arm-flip, ablate)."""

    def of(self, command: str) -> Mapping[str, Any]:
        """The sizes of ``command`` (empty: its defaults)."""
        return self.sizes.get(command, {})


_QUICK_TRAIN = {"steps": 6, "prompts_per_step": 8, "group_size": 8, "mini_batch_size": 32,
                "eval_every": 3, "eval_prompts": 16, "eval_k": 8, "checkpoint_every": 3}

#: ``quick``: about ten minutes on a 2-core CPU; ``default``: every probe's default size;
#: ``full``: larger held-out sets, longer training and three seeds, for a GPU.
BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        name="quick", seeds=1, quick_probes=True,
        sizes={"eval": {"n_prompts": 16, "k": 8}, "train": _QUICK_TRAIN,
               "entropy-tv": {"n_prompts": 16, "k": 4, "n_boot": 200},
               "prefix-intervene": {"n_prompts": 16, "k": 4, "n_boot": 200},
               "causal": {"n_prompts": 8, "k": 2, "continuations": 2, "n_boot": 200}},
        seconds={"eval": 5, "train": 40, "sign-flip": 55, "entropy-tv": 10,
                 "prefix-intervene": 15, "arm-flip": 50, "causal": 40, "ablate": 45},
    ),
    "default": Budget(
        name="default", seeds=1,
        seconds={"eval": 25, "train": 210, "sign-flip": 470, "entropy-tv": 25,
                 "prefix-intervene": 45, "arm-flip": 290, "causal": 300, "ablate": 260},
    ),
    "full": Budget(
        name="full", seeds=3,
        sizes={"eval": {"n_prompts": 256},
               "train": {"steps": 200, "eval_every": 20, "eval_prompts": 256},
               "sign-flip": {"steps": 100, "eval_prompts": 128},
               "arm-flip": {"steps": 100, "eval_prompts": 128},
               "ablate": {"steps": 60, "eval_prompts": 128, "eval_k": 16},
               "entropy-tv": {"n_prompts": 256}, "prefix-intervene": {"n_prompts": 256},
               "causal": {"n_prompts": 128}},
        seconds={"eval": 60, "train": 1800, "sign-flip": 3600, "entropy-tv": 90,
                 "prefix-intervene": 180, "arm-flip": 3600, "causal": 600, "ablate": 3600},
    ),
}


@dataclass(frozen=True)
class ReproduceConfig:
    """Settings of one reproduction; written into the parent's manifest."""

    budget: str = "quick"
    """A name in ``BUDGETS``."""
    seeds: int | None = None
    """Seeds of the training stages; None: the budget's."""
    seed: int = 0
    """First seed; the training stages use seed, seed + 1, ..."""
    model: str = "tiny"
    task: str = "countdown"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r}; valid: {', '.join(BUDGETS)}")
        if self.seeds is None:
            object.__setattr__(self, "seeds", BUDGETS[self.budget].seeds)
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")

    @property
    def sizes(self) -> Budget:
        return BUDGETS[self.budget]

    def to_dict(self) -> dict[str, Any]:
        """The parent manifest's config (``train`` names model, task and seed for
        ``open_parent``)."""
        return {"budget": self.budget, "seeds": self.seeds,
                "train": {"model": self.model, "task": self.task, "seed": self.seed}}


#: ``report(run, done, total)``: progress within a stage; ``run`` names the run at work.
Report = Callable[[str, float, float], None]


@dataclass(frozen=True)
class Stage:
    """One step of the reproduction: its run directory ``name`` under the parent, its ``kind``
    (a key of ``Budget.seconds``), whether it resumes in place, and the work."""

    name: str
    kind: str
    resumable: bool
    work: Callable[[Path, Report], None]


def stage_done(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run (manifest status ``complete``)."""
    return (run_dir / "manifest.json").is_file() and read_manifest(run_dir)["status"] == "complete"


def _last_checkpoint(train_dir: Path) -> Path:
    return train_dir / "checkpoints" / f"step-{read_manifest(train_dir)['config']['steps']}"


def _train_stage(cfg: ReproduceConfig, method: str, seed: int) -> Stage:
    config = TrainConfig(method=method, model=cfg.model, task=cfg.task, seed=seed,
                         **cfg.sizes.of("train"))

    def work(run_dir: Path, report: Report) -> None:
        run_child(config, run_dir, lambda step, _: report(run_dir.name, step, config.steps),
                  label=method)

    return Stage(f"train-{method}-s{seed}", "train", True, work)


def _eval_stage(name: str, cfg: ReproduceConfig, model: Callable[[Path], str]) -> Stage:
    from probes.evaluate import EvalConfig, run_eval

    def work(run_dir: Path, report: Report) -> None:
        config = EvalConfig(model=model(run_dir.parent), task=cfg.task, seed=cfg.seed,
                            **cfg.sizes.of("eval"))
        total, done = config.n_prompts * config.k, [0]

        def advance(n: int) -> None:
            done[0] += n
            report(name, done[0], total)

        run_eval(config, run_dir, progress=advance)

    return Stage(name, "eval", False, work)


def _arms_report(report: Report, label: str, total: int) -> Callable[[str, int, Mapping], None]:
    """A training probe's ``progress(arm, step, metrics)`` as overall progress over ``total``
    updates of all its runs."""
    steps: dict[str, int] = {}

    def show(arm: str, step: int, metrics: Mapping[str, float]) -> None:
        steps[arm] = step
        report(f"{label}/{arm}", sum(steps.values()), total)

    return show


def _sign_flip_stage(cfg: ReproduceConfig, seed: int) -> Stage:
    from probes.sign_flip import run_sign_flip, sign_flip_config

    config = sign_flip_config(quick=cfg.sizes.quick_probes, model=cfg.model, task=cfg.task,
                              seed=seed, **cfg.sizes.of("sign-flip"))

    def work(run_dir: Path, report: Report) -> None:
        total = len(config.arms) * config.train["steps"]
        run_sign_flip(config, run_dir, progress=_arms_report(report, run_dir.name, total))

    return Stage(f"sign-flip-s{seed}", "sign-flip", True, work)


def _arm_flip_stage(cfg: ReproduceConfig, seed: int) -> Stage:
    from probes.arm_flip import arm_flip_config, run_arm_flip

    config = arm_flip_config(quick=cfg.sizes.quick_probes, model=cfg.model, task=cfg.task,
                             seed=seed, **cfg.sizes.of("arm-flip"))

    def work(run_dir: Path, report: Report) -> None:
        total = config.flip_at + len(config.arms) * config.steps
        run_arm_flip(config, run_dir, progress=_arms_report(report, run_dir.name, total))

    return Stage(f"arm-flip-s{seed}", "arm-flip", True, work)


def _ablate_stage(cfg: ReproduceConfig, panel: str) -> Stage:
    from probes.ablate import ablate_config, run_ablate

    config = ablate_config(panel, seeds=cfg.seeds, quick=cfg.sizes.quick_probes,
                           model=cfg.model, task=cfg.task, seed=cfg.seed, **cfg.sizes.of("ablate"))

    def work(run_dir: Path, report: Report) -> None:
        total = len(config.runs()) * config.train["steps"]
        run_ablate(config, run_dir, progress=_arms_report(report, run_dir.name, total))

    return Stage(f"ablate-{panel}", "ablate", True, work)


def _entropy_tv_stage(cfg: ReproduceConfig) -> Stage:
    from probes.entropy_tv import EntropyTVConfig, run_entropy_tv

    config = EntropyTVConfig(model=cfg.model, task=cfg.task, seed=cfg.seed,
                             **cfg.sizes.of("entropy-tv"))

    def work(run_dir: Path, report: Report) -> None:
        total, done = 3 * config.n_prompts * config.k, [0]

        def advance(n: int) -> None:
            done[0] += n
            report(run_dir.name, done[0], total)

        run_entropy_tv(config, run_dir, progress=advance)

    return Stage("entropy-tv", "entropy-tv", False, work)


def _prefix_stage(cfg: ReproduceConfig) -> Stage:
    from probes.prefix_intervene import PrefixInterveneConfig, run_prefix_intervene

    config = PrefixInterveneConfig(model=cfg.model, task=cfg.task, seed=cfg.seed,
                                   **cfg.sizes.of("prefix-intervene"))

    def work(run_dir: Path, report: Report) -> None:
        total, done = config.n_prompts * config.k * (1 + 2 * len(config.buckets)), [0]

        def advance(n: int) -> None:
            done[0] += n
            report(run_dir.name, done[0], total)

        run_prefix_intervene(config, run_dir, progress=advance)

    return Stage("prefix-intervene", "prefix-intervene", False, work)


def _causal_stage(cfg: ReproduceConfig, methods: tuple[str, ...]) -> Stage:
    """RQ2 on the base model, then on the trained checkpoint of each of ``methods`` (the
    ``train-<method>-s<seed>`` runs beside the stage)."""
    from probes.causal import CausalConfig, run_causal

    def work(run_dir: Path, report: Report) -> None:
        trained = tuple(str(run_dir.parent / f"train-{m}-s{cfg.seed}") for m in methods)
        config = CausalConfig(checkpoints=(cfg.model, *trained), task=cfg.task, seed=cfg.seed,
                              **cfg.sizes.of("causal"))
        done = [0]

        def advance(line: str) -> None:
            done[0] += 1
            report(f"{run_dir.name}: {line}", done[0], len(config.checkpoints))

        run_causal(config, run_dir, progress=advance)

    return Stage("causal", "causal", False, work)


def plan(cfg: ReproduceConfig) -> list[Stage]:
    """Every stage of ``cfg`` in run order (trained checkpoints before the stages that read
    them)."""
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    stages = [_eval_stage("eval-base", cfg, lambda parent: cfg.model)]
    for seed in seeds:
        for method in METHODS:
            stages.append(_train_stage(cfg, method, seed))
            name = f"train-{method}-s{seed}"
            stages.append(_eval_stage(f"eval-{method}-s{seed}", cfg,
                                      lambda parent, name=name: str(
                                          _last_checkpoint(parent / name))))
    stages += probe_stages(cfg, causal_methods=METHODS)
    stages += [_ablate_stage(cfg, panel) for panel in PANELS]
    return stages


def probe_stages(cfg: ReproduceConfig, *, causal_methods: tuple[str, ...]) -> list[Stage]:
    """The three paper probes and RQ1/RQ2 in run order: ``sign-flip-s<seed>`` per seed,
    ``entropy-tv``, ``prefix-intervene``, ``arm-flip-s<seed>`` per seed and ``causal`` (on the
    base model and the trained checkpoints of ``causal_methods``, which must run first)."""
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    stages = [_sign_flip_stage(cfg, seed) for seed in seeds]
    stages += [_entropy_tv_stage(cfg), _prefix_stage(cfg)]
    stages += [_arm_flip_stage(cfg, seed) for seed in seeds]
    stages.append(_causal_stage(cfg, causal_methods))
    return stages


class Display(Protocol):
    """What ``run_reproduce`` tells its caller; the CLI draws it, tests record it."""

    def stage(self, index: int, stage: Stage, action: str) -> None:
        """Stage ``index`` (0-based) starts (``action``: run, resumed, restarted) or is
        ``skipped``."""

    def progress(self, run: str, done: float, total: float) -> None:
        """Progress within the current stage: ``done`` of ``total`` units of ``run``."""

    def finished(self, index: int, stage: Stage) -> None:
        """Stage ``index`` is complete."""


class _Quiet:
    """A ``Display`` that shows nothing."""

    def stage(self, index: int, stage: Stage, action: str) -> None:
        return None

    def progress(self, run: str, done: float, total: float) -> None:
        return None

    def finished(self, index: int, stage: Stage) -> None:
        return None


@dataclass(frozen=True)
class ReproduceResult:
    """What ``run_reproduce`` did: per stage ``run``, ``resumed``, ``restarted`` or
    ``skipped``; and the analysis outputs written."""

    run_dir: Path
    actions: dict[str, str]
    outputs: dict[str, Path]


def run_stages(cfg: object, run_dir: Path, stages: list[Stage], *,
               display: Display | None = None) -> dict[str, str]:
    """Run (or resume) ``stages`` under the open parent ``run_dir`` (module docstring's resume
    rules); returns per stage ``run``, ``resumed``, ``restarted`` or ``skipped``. ``cfg``, the
    caller's settings (``ReproduceConfig``, ``probes.validate.ValidateConfig``), is not read:
    each stage carries its own."""
    display = display or _Quiet()
    actions: dict[str, str] = {}
    for index, stage in enumerate(stages):
        path = Path(run_dir) / stage.name
        if stage_done(path):
            actions[stage.name] = "skipped"
            display.stage(index, stage, "skipped")
            display.finished(index, stage)
            continue
        action = "run"
        if (path / "manifest.json").is_file():
            action = "resumed" if stage.resumable else "restarted"
            if not stage.resumable:
                shutil.rmtree(path)
        display.stage(index, stage, action)
        stage.work(path, display.progress)
        actions[stage.name] = action
        display.finished(index, stage)
    return actions


def calibration_beside(run_dir: Path, budget: str) -> Path | None:
    """``validate-<budget>/calibration.csv`` beside ``run_dir`` when it exists, else None."""
    path = Path(run_dir).parent / f"validate-{budget}" / "calibration.csv"
    return path if path.is_file() else None


def _power(calibration: Path | None) -> dict[str, Row] | None:
    """The positive-control rows of ``calibration`` by claim text (None without a file)."""
    if calibration is None:
        return None
    return {row.claim: row for row in read_calibration(calibration) if row.role == "positive"}


def run_reproduce(cfg: ReproduceConfig, run_dir: Path, *, display: Display | None = None,
                  stages: list[Stage] | None = None, calibration: Path | None = None
                  ) -> ReproduceResult:
    """Run (or resume) every stage of ``plan(cfg)`` (or the given ``stages``) under the parent
    ``run_dir``, then write the tables, figures, findings and report there; with a
    ``calibration`` file (default: ``calibration_beside``) the findings and report show each
    claim's power on the positive control."""
    run_dir = Path(run_dir)
    stages = plan(cfg) if stages is None else stages
    calibration = calibration or calibration_beside(run_dir, cfg.budget)
    power = _power(calibration)
    with open_parent(run_dir, kind=KIND, config=cfg.to_dict()) as parent:
        actions = run_stages(cfg, run_dir, stages, display=display)
        outputs = write_findings(run_dir, power=power)
        outputs.update(_analyse(run_dir, power))
        if calibration is not None:
            outputs["calibration"] = calibration
        parent.write_json("stages", {"budget": cfg.budget, "seeds": cfg.seeds,
                                     "stages": [s.name for s in stages], "actions": actions})
    return ReproduceResult(run_dir=run_dir, actions=actions, outputs=outputs)


#: Which stages feed each figure (stage-name prefixes): the paper draws Fig. 5, 6a and 10b from
#: its main GRPO / OPSD / DASD runs, Fig. 2 from the sign-flip probe alone, and so on, so that
#: ablation rows and probe arms do not crowd the main comparison.
FIGURE_STAGES: dict[str, tuple[str, ...]] = {
    "fig2_sign_flip": ("sign-flip-",),
    "fig3_entropy_pressure": ("entropy-tv",),
    "fig4_pass_at_k": ("eval-",),
    "fig5_training_dynamics": ("train-",),
    "fig6a_entropy_distribution": ("train-",),
    "fig6bc_arm_flip": ("arm-flip-",),
    "fig7_causal": ("causal",),
    "fig8_scale": ("eval-",),
    "fig10b_validation": ("train-",),
}


def _analyse(run_dir: Path, power: Mapping[str, Row] | None) -> dict[str, Path]:
    """Tables, figures (each from the stages ``FIGURE_STAGES`` names) and the HTML report of
    the runs under ``run_dir`` (with ``power``: the findings' power column)."""
    from analysis.health import analyze_runs
    from figures.report import write_report
    from analysis.tables import build_tables, write_tables
    from figures import FIGURES, write_figures

    report = analyze_runs([run_dir], last=True, split="eval")
    tables, missing = build_tables(report)
    write_tables(tables, missing, run_dir / "tables")
    stages = sorted(p for p in run_dir.iterdir() if (p / "manifest.json").is_file())
    for name in FIGURES:
        prefixes = FIGURE_STAGES.get(name)
        sources = [p for p in stages if prefixes is None or p.name.startswith(prefixes)]
        if sources:
            write_figures(sources, run_dir / "figures", names=[name])
    return {"tables": run_dir / "tables", "figures": run_dir / "figures",
            "report": write_report([run_dir], run_dir / "report.html", power=power)}


@dataclass(frozen=True)
class ReproduceOptions:
    """The options of ``dasd-probe reproduce``: a ``ReproduceConfig`` and where the power of
    each claim comes from."""

    budget: str = "quick"
    """quick (about 10 minutes on a 2-core CPU), default (every probe's default size, about 45
    minutes there) or full (larger, 3 seeds; for a GPU)."""
    seeds: int | None = None
    """Seeds of the training stages (default: the budget's, 1 for quick and default, 3 for
    full)."""
    seed: int = 0
    """First seed."""
    model: str = "tiny"
    """``tiny`` (built-in), a local checkpoint directory, or a hub name."""
    task: str = "countdown"
    """A registered task."""
    calibration: Path | None = None
    """calibration.csv of dasd-probe validate: the findings show each claim's power on the
    positive control (default: <runs-dir>/validate-<budget>/calibration.csv when it exists)."""

    def config(self) -> ReproduceConfig:
        return ReproduceConfig(budget=self.budget, seeds=self.seeds, seed=self.seed,
                               model=self.model, task=self.task)


def stage_display(terminal: Terminal, sizes: Budget, stages: list[Stage]
                  ) -> AbstractContextManager[Display]:
    """A progress bar over ``stages`` on ``terminal``, each weighted by the budget's estimate
    of its kind's seconds (60 when it has none)."""
    return terminal.stages([s.name for s in stages],
                           [sizes.seconds.get(s.kind, 60.0) for s in stages])


def _run(options: ReproduceOptions, run_dir: Path, terminal: Terminal) -> ReproduceResult:
    """The paper on one model and task, in one command: base evaluation, GRPO / OPSD / DASD
    training and their evaluations, the three probes and RQ1-RQ3, under one parent directory;
    then the tables (paper beside ours), figures, findings (reproduced / not reproduced, by a
    stated rule) and the HTML report. Interrupted, it resumes where it stopped."""
    cfg = options.config()
    stages = plan(cfg)
    terminal.line(f"parent directory: {run_dir} ({len(stages)} stages, budget {cfg.budget}, "
                  f"{cfg.seeds} seed(s))")
    with stage_display(terminal, cfg.sizes, stages) as display:
        return run_reproduce(cfg, run_dir, stages=stages, calibration=options.calibration,
                             display=display)


def show_outcome(terminal: Terminal, lines: Iterable[str], outputs: Mapping[str, Path]
                 ) -> None:
    """A parent run's outcome: each of ``lines`` as a list item, then each file written."""
    for line in lines:
        terminal.line(f"- {line}")
    for key, path in outputs.items():
        terminal.line(f"{key}: {path}")


def _show(options: ReproduceOptions, result: ReproduceResult, run_dir: Path,
          terminal: Terminal) -> None:
    show_outcome(terminal, (finding.line() for finding in findings([run_dir])), result.outputs)


register_probe("reproduce", options=ReproduceOptions, run=_run, show=_show, resumable=True,
               default_name=lambda options: f"reproduce-{options.budget}",
               default_name_text="reproduce-<budget>")
