"""`dasd-probe ablate --panel routing|direction|gate|quantile`: RQ3, are DASD's design choices
better than plausible replacements? (paper section 6 "RQ3", Table 5; appendix G Tables 11-14).

Each panel replaces one design choice of DASD and keeps everything else fixed:

* ``routing`` (Table 12): the routing signal fed to the direction map, ``dasd.routing``:
  position proxy, token frequency, gradient norm, attention entropy, student entropy (default);
* ``direction`` (Table 13): the direction map D: constant +1 (OPSD-like), constant -1
  (Novelty), hard threshold, linear ramp, tanh (default);
* ``gate`` (Table 14): the reliability gate: none, fixed threshold 1[|delta_t| > c],
  magnitude |delta_bar_t|, sigmoid(|delta_bar_t| - 1) (default);
* ``quantile`` (Table 11): the router quantile rho in {0.05, 0.2 (default), 0.5, 0.75, 0.95}.

Every (variant, seed) is one ordinary run of the core trainer with method ``dasd``, written as
a sub-directory ``<variant>-seed<s>/`` of the probe's parent run directory (kind
``probe:ablate``; its config names the ``panel``, the ``variants`` in the paper's row order
with their row ``labels``, the ``seeds``, which sub-run is which variant (``runs``) and the
shared ``train`` settings). A variant's result is the trainer's last held-out evaluation, at
step ``steps``, of its final policy: Avg@k, Pass@k, E(y) density and the other health metrics.
Within one seed all variants share the data order, the sampling seeds and the held-out
prompts, so they differ only in the ablated choice. The parent holds ``runs.parquet`` (one row
per run: its final evaluation) and ``summary.parquet`` / ``summary.json`` (one row per
(variant, metric): the mean over seeds with a 95% Student-t interval, and the mean paired
difference from the panel's default variant over the same seeds with its interval).
``dasd-analyze tables`` reads the sub-runs through the parent (``analysis.tables``), so the
panels land in the paper's Tables 5 and 11-14 with mean +- half-width across seeds.

Departures from the paper:

1. The default world is the built-in one: the tiny model on Countdown, evaluated on
   Countdown's held-out split, not Qwen3-1.7B on DAPO-Math-17k evaluated on AIME24/25 and
   MATH500. The tables then have one Countdown column where the paper has two AIME columns.
2. Sizes are scaled to a 2-core CPU (``DEFAULT_BUDGET``, ``DEFAULT_SEEDS`` seeds;
   ``QUICK_BUDGET`` / ``QUICK_SEEDS`` for a smoke version): far fewer updates, prompts and
   held-out samples than the paper; k = 8 held-out samples per prompt, not 16.
3. The paper reports one run per row; each row here is repeated over ``seeds`` (consecutive
   seeds from the shared ``seed``) and reported as a mean with a confidence interval
   (``analysis.intervals.t_interval``).
4. The routing signals other than entropy, the position formula, the frequency corpus and
   the gradient-norm proxy are ``dasd.routing``'s choices (its docstring lists them); the
   fixed gate's threshold c is ``dasd.advantages.DEFAULT_FIXED_GATE_C`` (log 2) unless
   ``method_options`` sets ``c``. The paper gives no beta; all variants share one.
5. Variants run one after another in one process; an interrupted probe resumes when re-run
   on the same directory with the same settings: finished runs are kept as they are, a
   half-finished one continues from its newest checkpoint (``probes.parent_run``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from analysis.intervals import t_interval
from analysis.paper import ABLATION_ROWS, paper_value
from dasd.config_checks import as_tuple, check_fields, check_known
from dasd.registry import Registry
from dasd.runlog import read_metrics
from dasd.trainer import TrainConfig
from figures.terminal import Terminal
from probes.parent_run import PROBE_BATCH, Progress, TrainingProbeOptions, open_parent, run_child
from probes.registry import register_probe, timestamped_name

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_SEEDS",
    "KIND",
    "PANELS",
    "QUICK_BUDGET",
    "QUICK_SEEDS",
    "AblateConfig",
    "AblateOptions",
    "AblateResult",
    "Panel",
    "Variant",
    "ablate_config",
    "headline_metrics",
    "run_ablate",
    "run_name",
    "summarize",
]

KIND = "probe:ablate"
METHOD = "dasd"

#: TrainConfig sizes and seeds of the default probe (one panel, 4-5 variants x DEFAULT_SEEDS
#: seeds, on a 2-core CPU with the built-in tiny model) and of ``--quick`` (a smoke version of
#: one panel in a few minutes).
DEFAULT_BUDGET: dict[str, int] = {**PROBE_BATCH, "steps": 20, "prompts_per_step": 16,
                                  "micro_batch_size": 16, "eval_every": 0, "eval_prompts": 32,
                                  "eval_k": 8, "checkpoint_every": 5}
DEFAULT_SEEDS = 3
QUICK_BUDGET: dict[str, int] = {"steps": 2, "prompts_per_step": 4, "group_size": 4,
                                "mini_batch_size": 16, "micro_batch_size": 16, "eval_every": 0,
                                "eval_prompts": 8, "eval_k": 4, "checkpoint_every": 1}
QUICK_SEEDS = 2


@dataclass(frozen=True)
class Variant:
    """One row of a panel: its ``name`` (CLI and sub-run name), the paper's row ``label``,
    the ``TrainConfig`` fields it sets (``method_options`` are merged into the shared ones)
    and the paper's numbers for the row (``Panel.paper_columns``, from ``analysis.paper``)."""

    name: str
    label: str
    train: Mapping[str, Any]
    paper: tuple[float, ...]


@dataclass(frozen=True)
class Panel:
    """One ablation panel: its variants in the paper's row order, which one is DASD's
    default, the ``TrainConfig`` field (or ``method_options`` key) it varies, the paper table
    and the columns of the paper's numbers."""

    name: str
    table: str
    sets: str
    variants: tuple[Variant, ...]
    default: str
    paper_columns: tuple[str, ...]
    finding: str

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise ValueError(f"unknown {self.name} variant {name!r}; valid: "
                         f"{', '.join(v.name for v in self.variants)}")

    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)


#: The panels of Table 5 / Tables 11-14 by name.
PANELS: Registry[Panel] = Registry("ablation panel")

_AIME_EY = ("AIME24", "AIME25", "E(y)")
_QUANTILE_COLUMNS = ("MATH500 Avg@16", "MATH500 Pass@16", "AIME24 Avg@16", "AIME24 Pass@16",
                     "AIME25 Avg@16", "AIME25 Pass@16")


def _options(key: str, value: str) -> dict[str, Any]:
    return {"method_options": {key: value}}


def _panel(name: str, table: str, sets: str, default: str, columns: tuple[str, ...],
           variants: Sequence[tuple[str, str, Mapping[str, Any]]], finding: str) -> Panel:
    """A panel whose variants (name, label, train fields) take the paper's numbers of their
    row of Table ``table`` (``analysis.paper.ABLATION_ROWS``)."""
    rows = ABLATION_ROWS[name][f"Table {table}"]
    return Panel(
        name=name, table=table, sets=sets, default=default, paper_columns=columns,
        variants=tuple(Variant(v, label, train, tuple(
            paper_value(f"Table {table}", rows[v], column) for column in columns))
            for v, label, train in variants),
        finding=finding,
    )


PANELS.register("routing")(_panel(
    "routing", "12", "routing", "entropy", _AIME_EY, (
        ("position", "Position proxy", {"routing": "position"}),
        ("frequency", "Token frequency", {"routing": "frequency"}),
        ("grad_norm", "Gradient norm", {"routing": "grad_norm"}),
        ("attention", "Attention entropy", {"routing": "attention"}),
        ("entropy", "Student entropy H_t (default)", {"routing": "entropy"}),
    ),
    finding="paper (Table 12): entropy > attention entropy > gradient norm > frequency > "
            "position, in accuracy and E(y)",
))
PANELS.register("direction")(_panel(
    "direction", "13", "direction", "tanh", _AIME_EY, (
        ("plus", "OPSD: const. +1", _options("direction", "plus")),
        ("minus", "Novelty: const. -1", _options("direction", "minus")),
        ("hard", "Hard threshold", _options("direction", "hard")),
        ("linear", "Linear ramp", _options("direction", "linear")),
        ("tanh", "tanh direction (default)", _options("direction", "tanh")),
    ),
    finding="paper (Table 13): tanh > linear > hard >> const. +1 / -1; const. +1 collapses "
            "E(y), const. -1 keeps the most E(y) at low accuracy",
))
PANELS.register("gate")(_panel(
    "gate", "14", "gate", "sigmoid", _AIME_EY, (
        ("none", "No gate", _options("gate", "none")),
        ("fixed", "Fixed threshold", _options("gate", "fixed")),
        ("magnitude", "Magnitude-only", _options("gate", "magnitude")),
        ("sigmoid", "Gap-reliability gate (default)", _options("gate", "sigmoid")),
    ),
    finding="paper (Table 14): sigmoid gate > magnitude > none > fixed threshold",
))
PANELS.register("quantile")(_panel(
    "quantile", "11", "rho", "0.2", _QUANTILE_COLUMNS, (
        ("0.05", "0.05 (Novelty-biased)", {"rho": 0.05}),
        ("0.2", "0.20 (default)", {"rho": 0.2}),
        ("0.5", "0.50", {"rho": 0.5}),
        ("0.75", "0.75", {"rho": 0.75}),
        ("0.95", "0.95 (Conformity-biased)", {"rho": 0.95}),
    ),
    finding="paper (Table 11): rho = 0.2 is best; accuracy falls gradually toward both ends",
))

def run_name(variant: str, seed: int) -> str:
    """The sub-run directory of ``variant`` at ``seed``."""
    return f"{variant}-seed{seed}"


@dataclass(frozen=True)
class AblateConfig:
    """Settings of one ablation panel; checked on construction, written into the parent's
    manifest (with ``train`` fully resolved)."""

    panel: str
    """A registered panel (``PANELS``): routing, direction, gate or quantile."""
    variants: tuple[str, ...] = ()
    """Rows to train, a subset of the panel's without repeats; empty: all of them."""
    seeds: int = DEFAULT_SEEDS
    """Repeats of each row, at seeds ``train.seed``, ``train.seed + 1``, ..."""
    train: Mapping[str, Any] = field(default_factory=dict)
    """``TrainConfig`` fields shared by every run (not ``method``, which is dasd, nor the
    field the panel varies); fields not given take the trainer's defaults."""

    def __post_init__(self) -> None:
        names = as_tuple(self.variants)
        object.__setattr__(self, "variants", names)
        check_fields(self)
        panel = PANELS.get(self.panel)
        for name in names:
            panel.variant(name)
        if len(set(names)) != len(names):
            raise ValueError(f"variants must not repeat, got {', '.join(names)}")
        names = tuple(n for n in panel.names() if n in names) if names else panel.names()
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if "method" in self.train:
            raise ValueError("the ablations train method dasd; do not set train.method")
        check_known(TrainConfig, self.train, exclude={"method"})
        if panel.sets in self.train or panel.sets in (self.train.get("method_options") or {}):
            raise ValueError(f"the {panel.name} panel sets {panel.sets}; choose it with "
                             "--variants, not in the shared settings")
        resolved = asdict(TrainConfig(method=METHOD, **self.train))
        del resolved["method"]
        object.__setattr__(self, "variants", names)
        object.__setattr__(self, "train", resolved)
        for name in names:
            self.run_config(name, 0)

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(self.train["seed"] + i for i in range(self.seeds))

    def run_config(self, variant: str, index: int) -> TrainConfig:
        """The trainer config of ``variant`` at its ``index``-th seed."""
        values = dict(self.train)
        overrides = dict(PANELS.get(self.panel).variant(variant).train)
        options = {**values["method_options"], **overrides.pop("method_options", {})}
        values.update(overrides, method_options=options, seed=self.train["seed"] + index)
        return TrainConfig(method=METHOD, **values)

    def runs(self) -> dict[str, tuple[str, int]]:
        """Sub-run name -> (variant, seed), variant-major in the paper's row order."""
        return {run_name(v, s): (v, s) for v in self.variants for s in self.seed_list}

    def to_dict(self) -> dict[str, Any]:
        """The config as stored in the parent's manifest (plain JSON data); ``panel``,
        ``variants`` (row order), ``default`` (the paper's default row), ``labels`` and
        ``runs`` (sub-run -> variant) are what ``analysis.tables`` and ``analysis.findings``
        read."""
        panel = PANELS.get(self.panel)
        return json.loads(json.dumps({
            "panel": self.panel, "variants": list(self.variants), "default": panel.default,
            "labels": {v: panel.variant(v).label for v in self.variants},
            "seeds": list(self.seed_list),
            "runs": {name: variant for name, (variant, _) in self.runs().items()},
            "train": dict(self.train),
        }))


def ablate_config(panel: str, *, variants: Sequence[str] = (), seeds: int | None = None,
                  quick: bool = False, **train: Any) -> AblateConfig:
    """An ``AblateConfig`` on the default budget (``quick``: the smoke budget); ``train``
    fields override the budget's sizes and the trainer's defaults."""
    budget = QUICK_BUDGET if quick else DEFAULT_BUDGET
    if seeds is None:
        seeds = QUICK_SEEDS if quick else DEFAULT_SEEDS
    return AblateConfig(panel=panel, variants=tuple(variants), seeds=seeds,
                        train={**budget, **train})


@dataclass(frozen=True)
class AblateResult:
    """What ``run_ablate`` did and found."""

    run_dir: Path
    """The parent run directory."""
    actions: dict[str, str]
    """Per sub-run: ``trained`` (new), ``resumed`` (from a checkpoint) or ``skipped``."""
    runs: pd.DataFrame
    """One row per sub-run: its final evaluation (see ``summarize``)."""
    summary: pd.DataFrame
    """One row per (variant, metric): mean and intervals across seeds (see ``summarize``)."""


def headline_metrics(k: int) -> dict[str, str]:
    """The summary metrics of the probe's printed table (Table 5's columns) and labels."""
    return {f"eval/avg_at_{k}": f"Avg@{k}", f"eval/pass_at_{k}": f"Pass@{k}",
            "eval/ey_density": "E(y)", "eval/step_acc": "StepAcc"}


def result_table(cfg: AblateConfig, result: AblateResult) -> tuple[str, list[str], list[list[str]]]:
    """The printed table of a panel's result: its title, columns and one row per variant
    (the ``headline_metrics`` as "mean [95% interval]" across seeds, Avg/Pass/StepAcc in %;
    the paired difference of Avg@k from the default row; the paper's numbers)."""
    panel, eval_k = PANELS.get(cfg.panel), cfg.train["eval_k"]
    metrics = headline_metrics(eval_k)
    scale = {key: 100.0 for key in metrics if "_at_" in key or key == "eval/step_acc"}
    summary = result.summary.set_index(["variant", "metric"])

    def interval(variant: str, key: str, columns: tuple[str, str, str]) -> str:
        if (variant, key) not in summary.index:
            return "–"
        row = summary.loc[(variant, key)]
        mean, low, high = (scale.get(key, 1.0) * float(row[c]) for c in columns)
        if math.isnan(mean):
            return "–"
        return f"{mean:.1f}" if math.isnan(low) else f"{mean:.1f} [{low:.1f}, {high:.1f}]"

    avg = f"eval/avg_at_{eval_k}"
    spread, paired = ("mean", "ci_low", "ci_high"), ("delta", "delta_low", "delta_high")
    title = (f"Ablation, panel {cfg.panel} (Table {panel.table}): {cfg.train['eval_prompts']} "
             f"held-out prompts x {eval_k} samples, {cfg.seeds} seed(s); mean [95% interval]; "
             "Avg/Pass/StepAcc in %")
    columns = ["variant", *metrics.values(), f"Δ Avg@{eval_k} vs {panel.default}",
               "paper " + "/".join(panel.paper_columns)]
    rows = [[panel.variant(v).label, *(interval(v, key, spread) for key in metrics),
             interval(v, avg, paired), " / ".join(f"{x:.1f}" for x in panel.variant(v).paper)]
            for v in cfg.variants]
    return title, columns, rows


def _final_eval(run_dir: Path, steps: int) -> dict[str, float]:
    metrics = read_metrics(run_dir)
    rows = metrics[(metrics["split"] == "eval") & (metrics["step"] == steps)]
    if rows.empty:
        raise ValueError(f"{run_dir} has no evaluation at step {steps}; resume the probe")
    row = rows.iloc[-1]
    return {key: float(row[key]) for key in metrics.columns
            if key.startswith("eval/") and pd.notna(row[key])}


def summarize(run_dir: Path, cfg: AblateConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The panel's results from the sub-runs under ``run_dir``.

    Returns ``(runs, summary)``. ``runs``: one row per sub-run, columns ``variant``,
    ``label``, ``seed``, ``run`` and every ``eval/...`` metric of its evaluation at step
    ``steps``. ``summary``: one row per (variant, metric), columns ``variant``, ``label``,
    ``metric``, ``n`` (seeds), ``mean``, ``ci_low``, ``ci_high`` (95% Student-t across
    seeds) and ``delta``, ``delta_low``, ``delta_high``: the mean and interval of the paired
    difference from the panel's default variant at the same seeds (NaN without the default).
    """
    panel = PANELS.get(cfg.panel)
    rows = []
    for name, (variant, seed) in cfg.runs().items():
        rows.append({"variant": variant, "label": panel.variant(variant).label, "seed": seed,
                     "run": name, **_final_eval(Path(run_dir) / name, cfg.train["steps"])})
    runs = pd.DataFrame(rows)
    runs["seed"] = runs["seed"].astype("int64")
    metrics = [c for c in runs.columns if c.startswith("eval/")]
    table = runs.set_index(["variant", "seed"])
    default = table.loc[panel.default] if panel.default in cfg.variants else None
    records = []
    for variant in cfg.variants:
        mine = table.loc[variant]
        for metric in metrics:
            spread = t_interval(mine[metric].to_numpy())
            if default is None:
                delta = t_interval([])
            else:
                delta = t_interval((mine[metric] - default[metric]).to_numpy())
            records.append({
                "variant": variant, "label": panel.variant(variant).label, "metric": metric,
                "n": spread.n, "mean": spread.mean, "ci_low": spread.low,
                "ci_high": spread.high, "delta": delta.mean, "delta_low": delta.low,
                "delta_high": delta.high,
            })
    summary = pd.DataFrame(records)
    summary["n"] = summary["n"].astype("int64")
    return runs, summary


def run_ablate(cfg: AblateConfig, run_dir: Path, *,
               progress: Progress | None = None) -> AblateResult:
    """Run (or resume) the panel into ``run_dir``: one train run per (variant, seed) in
    ``run_dir/<variant>-seed<s>``, then ``runs.parquet`` and ``summary.parquet`` /
    ``summary.json`` in ``run_dir``.

    ``progress(run, step, metrics)`` is called when a sub-run starts (with its first step and
    no metrics; a finished one with its last step) and after every step it logs.
    """
    run_dir = Path(run_dir)
    actions: dict[str, str] = {}
    with open_parent(run_dir, kind=KIND, config=cfg.to_dict()) as parent:
        for name, (variant, seed) in cfg.runs().items():
            report = None if progress is None else partial(progress, name)
            index = cfg.seed_list.index(seed)
            actions[name] = run_child(cfg.run_config(variant, index), run_dir / name, report,
                                      label=f"{variant} (seed {seed})")
        runs, summary = summarize(run_dir, cfg)
        parent.write_table("runs", runs)
        parent.write_table("summary", summary)
        parent.write_json("summary", {
            "panel": cfg.panel, "variants": list(cfg.variants), "seeds": list(cfg.seed_list),
            "eval_k": cfg.train["eval_k"], "default": PANELS.get(cfg.panel).default,
            "rows": summary.to_dict("records"),
        })
    return AblateResult(run_dir=run_dir, actions=actions, runs=runs, summary=summary)


@dataclass(frozen=True, kw_only=True)
class AblateOptions(TrainingProbeOptions):
    """The options of ``dasd-probe ablate``."""

    panel: str
    """Design choice to ablate: routing (Table 12), direction (Table 13), gate (Table 14) or
    quantile (Table 11)."""
    variants: tuple[str, ...] = ()
    """Rows to train (default: all of the panel's), e.g. --variants position,entropy."""
    seeds: int | None = None
    """Repeats of each row at consecutive seeds, for a confidence interval."""

    default_budget: ClassVar[Mapping[str, Any]] = DEFAULT_BUDGET
    quick_budget: ClassVar[Mapping[str, Any]] = QUICK_BUDGET

    @classmethod
    def option_default(cls, name: str) -> str | None:
        if name == "seeds":
            return f"default {DEFAULT_SEEDS}; --quick: {QUICK_SEEDS}"
        return super().option_default(name)

    def config(self) -> AblateConfig:
        """The probe's config: the budget, then these options."""
        return ablate_config(self.panel, variants=self.variants, seeds=self.seeds,
                             quick=self.quick, **self.train_values())


def _run(options: AblateOptions, run_dir: Path, terminal: Terminal) -> AblateResult:
    """RQ3 (Table 5, Tables 11-14): DASD trained once per row of a design-space panel, all else
    fixed, each row repeated over seeds; the final evaluation's Avg@k, Pass@k and E(y) as mean
    and 95% interval across seeds, and the paired difference from DASD's default row.
    `dasd-analyze tables` puts the runs into the paper's tables."""
    cfg = options.config()
    terminal.line(f"probe directory: {run_dir}")
    with terminal.bars(cfg.train["steps"]) as update:
        return run_ablate(cfg, run_dir, progress=update)


def _show(options: AblateOptions, result: AblateResult, run_dir: Path,
          terminal: Terminal) -> None:
    cfg = options.config()
    terminal.wide_table(*result_table(cfg, result))
    terminal.line(PANELS.get(cfg.panel).finding)
    for run, action in result.actions.items():
        terminal.line(f"{run}: {action}")
    terminal.line(f"probe directory: {run_dir}")


register_probe("ablate", options=AblateOptions, run=_run, show=_show, resumable=True,
               default_name=lambda options: timestamped_name(f"ablate-{options.panel}",
                                                             options.model),
               default_name_text="ablate-<panel>-<model>-<time>")
