"""The paper's figures, one function each, drawn from run directories only.

Registered in :data:`figures.registry.FIGURES` (paper order): Fig. 2 (section 3, Probe 1),
Fig. 3 (section 3, Probe 2), Fig. 4 (section 5), Fig. 5 and 6a-c (section 6, RQ1), Fig. 7
(section 6, RQ2), Fig. 8 and
10b (appendix G). Colors, markers and the style follow appendix F (:mod:`figures.style`).

Departures from the paper, common to all figures:

1. Several runs of one method (seeds) are drawn as one curve: the mean over the runs at each
   logged step, with a shaded min-max band; the paper shows one run per method.
2. Curves are keyed by method; the model and task names are added to a curve's label (and
   the line style varies) when the runs span several models or tasks, so nothing from
   different settings is averaged.

Axis labels name the logged metric (``eval/step_acc`` …), so every curve can be traced back
to ``metrics.jsonl``. Each function's docstring lists its own departures.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dasd.passk import avg_at_k, pass_at_k, per_prompt_counts
from analysis.stats import quantile_bins, spearman
from dasd.runlog import json_shape, read_json, read_table

from .registry import Missing, register_figure
from .runs import Group, Run, group_runs, model_size
from .style import (
    METHOD_COLORS,
    method_color,
    method_label,
    method_marker,
    new_figure,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["fig2_sign_flip", "fig3_entropy_pressure", "fig4_pass_at_k", "fig5_training_dynamics",
           "fig6a_entropy_distribution", "fig6bc_arm_flip", "fig7_causal", "fig8_scale",
           "fig10b_validation", "TOKENS_COLUMNS", "binned_means", "pass_at_k_curve"]

SIGN_FLIP_METHODS = ("grpo", "conformity", "novelty")
VALIDATION_METHODS = ("dasd", "grpo")
#: Columns Fig. 3 reads from a probe:entropy-tv run's ``tokens.parquet``.
TOKENS_COLUMNS = ("H", "A", "D_plus", "D_minus")
_RUN_STYLES = ("-", "--", ":", "-.")
_NEUTRAL = "#404040"


# --------------------------------------------------------------------------- helpers


def _combine(series: Sequence[pd.Series]) -> pd.DataFrame:
    """Mean, min and max over runs at each step (the union of their logged steps)."""
    frame = pd.concat(list(series), axis=1).sort_index()
    return pd.DataFrame({"mean": frame.mean(axis=1), "lo": frame.min(axis=1),
                         "hi": frame.max(axis=1), "n": frame.count(axis=1)})


def _plot_metric(ax: Axes, groups: Sequence[Group], split: str, key: str, *,
                 linestyle: str | None = None, suffix: str = "", filled: bool = True) -> bool:
    """One curve per group of ``key`` over steps (markers on logged steps, hollow unless
    ``filled``; line style by setting unless ``linestyle``); False if no group logged it."""
    drawn = False
    for group in groups:
        series = [s for s in (run.series(split, key) for run in group.runs) if len(s)]
        if not series:
            continue
        curve = _combine(series)
        color = method_color(group.method)
        ax.plot(curve.index, curve["mean"], color=color,
                linestyle=linestyle or _linestyle(group), marker=method_marker(group.method),
                markerfacecolor=color if filled else "white", label=group.label + suffix)
        if (curve["n"] > 1).any():
            ax.fill_between(curve.index, curve["lo"], curve["hi"], color=color, alpha=0.15,
                            linewidth=0)
        drawn = True
    return drawn


def _linestyle(group: Group) -> str:
    """Solid for the first (model, task) setting, then dashed, dotted, dash-dotted."""
    return _RUN_STYLES[group.variant % len(_RUN_STYLES)]


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            color="#808080", fontsize=8)


def _has_split(run: Run, split: str) -> bool:
    return bool((run.metrics["split"] == split).any())


def _logged_ks(run: Run, prefix: str) -> set[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    found = set()
    for column in run.metrics.columns:
        match = pattern.match(column)
        if match and len(run.series("eval", column)):
            found.add(int(match.group(1)))
    return found


def _pick_k(runs: Sequence[Run], prefix: str, *, prefer: int | None) -> int | None:
    """``prefer`` if every run logged ``prefix{k}``, else the largest k all of them logged,
    else the largest k any of them logged (``None`` if none)."""
    logged = [ks for ks in (_logged_ks(run, prefix) for run in runs) if ks]
    if not logged:
        return None
    common = set.intersection(*logged)
    if prefer is not None and prefer in common:
        return prefer
    return max(common) if common else max(set.union(*logged))


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


# --------------------------------------------------------------------------- Fig. 2


@register_figure(
    "fig2_sign_flip",
    title="Fig. 2: training trajectories of Base (GRPO), Conformity and Novelty (sign-flip probe)",
    needs="train runs of method grpo, conformity or novelty with eval metrics logged over steps "
    "(dasd-probe sign-flip)",
)
def fig2_sign_flip(runs: Sequence[Run]) -> Figure | Missing:
    """Fig. 2 (section 3, Probe 1): (a) pass@k and avg@k, (b) StepAcc, (c) E(y) density with
    response length on a second axis, over training steps.

    Departure: k is 16 when every run logged it (the paper's pass@16 / acc@16), else the largest
    k they all logged.
    """
    chosen = [r for r in runs if r.kind == "train" and r.method in SIGN_FLIP_METHODS
              and _has_split(r, "eval")]
    if not chosen:
        return Missing("no train run of method grpo/conformity/novelty with eval metrics")
    groups = group_runs(chosen)
    fig, (ax_a, ax_b, ax_c) = new_figure(3)
    k_pass = _pick_k(chosen, "eval/pass_at_", prefer=16)
    k_avg = _pick_k(chosen, "eval/avg_at_", prefer=16)
    drawn = False
    if k_pass is not None:
        drawn |= _plot_metric(ax_a, groups, "eval", f"eval/pass_at_{k_pass}",
                              suffix=f" pass@{k_pass}")
    if k_avg is not None:
        drawn |= _plot_metric(ax_a, groups, "eval", f"eval/avg_at_{k_avg}", linestyle="--",
                              suffix=f" avg@{k_avg}", filled=False)
    if not drawn:
        _note(ax_a, "no eval/pass_at_k or eval/avg_at_k logged")
    ax_a.set(title="(a) Global reasoning", xlabel="training step", ylabel="accuracy")
    if not _plot_metric(ax_b, groups, "eval", "eval/step_acc"):
        _note(ax_b, "no eval/step_acc logged")
    ax_b.set(title="(b) Rigorous execution", xlabel="training step",
             ylabel="StepAcc (eval/step_acc)")
    ax_len = ax_c.twinx()
    ax_len.spines["right"].set_visible(True)
    ax_len.grid(False)
    has_ey = _plot_metric(ax_c, groups, "eval", "eval/ey_density", suffix=" E(y)")
    has_len = _plot_metric(ax_len, groups, "eval", "eval/length_tokens", linestyle="--",
                           suffix=" length", filled=False)
    if not (has_ey or has_len):
        _note(ax_c, "no eval/ey_density or eval/length_tokens logged")
    ax_c.set(title="(c) Exploration", xlabel="training step",
             ylabel="E(y) density (eval/ey_density)")
    ax_len.set_ylabel("response length, tokens (dashed)")
    handles, labels = ax_c.get_legend_handles_labels()
    handles_len, labels_len = ax_len.get_legend_handles_labels()
    if handles or handles_len:
        ax_c.legend(handles + handles_len, labels + labels_len)
    _legend(ax_a)
    _legend(ax_b)
    return fig


# --------------------------------------------------------------------------- Fig. 3


def binned_means(h: np.ndarray, values: np.ndarray, *, n_bins: int = 10) -> pd.DataFrame:
    """``values`` binned by ``analysis.stats.quantile_bins`` of ``h`` (equal-count bins): per bin the
    mean of ``h`` (``x``), the mean of ``values``, its 95% normal-approximation half-width
    ``ci`` = 1.96 std / sqrt(n) (0 for a bin of one), and ``n``. Non-finite pairs are dropped."""
    h = np.asarray(h, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(h) & np.isfinite(values)
    h, values = h[keep], values[keep]
    if h.size == 0:
        return pd.DataFrame({"x": [], "mean": [], "ci": [], "n": []})
    bins, _ = quantile_bins(h, n_bins=n_bins)
    frame = pd.DataFrame({"bin": bins, "h": h, "v": values})
    grouped = frame.groupby("bin", sort=True)
    out = pd.DataFrame({
        "x": grouped["h"].mean(),
        "mean": grouped["v"].mean(),
        "ci": (1.96 * grouped["v"].std(ddof=1) / np.sqrt(grouped["v"].count())).fillna(0.0),
        "n": grouped["v"].count(),
    })
    return out.reset_index(drop=True)


def _read_tokens(run: Run) -> pd.DataFrame:
    frame = read_table(run.path, "tokens")
    missing = [c for c in TOKENS_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{run.path / 'tokens.parquet'}: missing column {missing[0]!r}; Fig. 3 needs "
            f"{list(TOKENS_COLUMNS)}"
        )
    try:
        return frame[list(TOKENS_COLUMNS)].astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{run.path / 'tokens.parquet'}: columns {list(TOKENS_COLUMNS)} must be numeric"
        ) from None


def _errorbar(ax: Axes, binned: pd.DataFrame, *, color: str, linestyle: str, marker: str,
              label: str) -> None:
    ax.plot(binned["x"], binned["mean"], color=color, linestyle=linestyle, marker=marker,
            label=label)
    ax.fill_between(binned["x"], binned["mean"] - binned["ci"], binned["mean"] + binned["ci"],
                    color=color, alpha=0.15, linewidth=0)


@register_figure(
    "fig3_entropy_pressure",
    title="Fig. 3: token-level teacher pressure vs student entropy H_t",
    needs="a run of kind probe:entropy-tv holding tokens.parquet with columns "
    "H, A, D_plus, D_minus (dasd-probe entropy-tv)",
)
def fig3_entropy_pressure(runs: Sequence[Run]) -> Figure | Missing:
    """Fig. 3 (section 3, Probe 2): (a) the log-evidence gap A_t by entropy decile (mean and
    95% CI) with Spearman rho_s(H_t, A_t) in the title; (b) the one-step TV shifts D+ (Conformity)
    and D- (Novelty) by entropy decile.

    Departures: bins are entropy deciles drawn at their mean entropy (the paper does not give
    its binning); several probe runs are overlaid with different line styles.
    """
    chosen = [r for r in runs
              if r.kind == "probe:entropy-tv" and (r.path / "tokens.parquet").is_file()]
    if not chosen:
        return Missing("no probe:entropy-tv run with tokens.parquet")
    fig, (ax_a, ax_b) = new_figure(2, width=4.2)
    rhos = []
    for i, run in enumerate(chosen):
        tokens = _read_tokens(run)
        style = _RUN_STYLES[i % len(_RUN_STYLES)]
        suffix = f" ({run.name})" if len(chosen) > 1 else ""
        valid = np.isfinite(tokens["H"]) & np.isfinite(tokens["A"])
        rho = spearman(tokens.loc[valid, "H"], tokens.loc[valid, "A"]) \
            if valid.sum() > 1 else float("nan")
        rhos.append(f"{rho:+.2f}" if np.isfinite(rho) else "n/a")
        _errorbar(ax_a, binned_means(tokens["H"], tokens["A"]), color=_NEUTRAL,
                  linestyle=style, marker="o", label="$A_t$" + suffix)
        _errorbar(ax_b, binned_means(tokens["H"], tokens["D_plus"]),
                  color=METHOD_COLORS["conformity"], linestyle=style, marker="^",
                  label="$D^{(+)}_t$ Conformity" + suffix)
        _errorbar(ax_b, binned_means(tokens["H"], tokens["D_minus"]),
                  color=METHOD_COLORS["novelty"], linestyle=style, marker="v",
                  label="$D^{(-)}_t$ Novelty" + suffix)
    ax_a.axhline(0.0, color="#A0A0A0", linewidth=0.8)
    ax_a.set(title=f"(a) Log-evidence gap, Spearman $\\rho_s$ = {', '.join(rhos)}",
             xlabel="student entropy $H_t$ (decile means, nats)",
             ylabel="$A_t$ (mean ± 95% CI)")
    ax_b.set(title="(b) One-step TV shift", xlabel="student entropy $H_t$ (decile means, nats)",
             ylabel="$D_t^{(s)}$ (mean ± 95% CI)")
    _legend(ax_a)
    _legend(ax_b)
    return fig


# --------------------------------------------------------------------------- Fig. 4


def _eval_counts(run: Run) -> pd.DataFrame | None:
    """Samples n and correct c per prompt of the run's last eval rollouts."""
    if not run.has_rollouts():
        return None
    rows = run.last_rollouts(["prompt_id", "correct"], splits=("eval",))
    return None if rows is None or rows.empty else per_prompt_counts(rows)


def _pooled_counts(group: Group) -> pd.DataFrame | None:
    frames = [c.assign(run=i) for i, c in enumerate(_eval_counts(r) for r in group.runs)
              if c is not None]
    return pd.concat(frames, ignore_index=True) if frames else None


def pass_at_k_curve(counts: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(ks, mean pass@k over prompts): k = 1, 2, 4, … below the smallest n, and that n."""
    n, c = counts["n"].to_numpy(), counts["c"].to_numpy()
    n_min = int(n.min())
    ks = np.array([*(1 << i for i in range(n_min.bit_length()) if (1 << i) < n_min), n_min])
    return ks, pass_at_k(n[:, None], c[:, None], ks[None, :]).mean(axis=0)


@register_figure(
    "fig4_pass_at_k",
    title="Fig. 4: Pass@k curves per benchmark",
    needs="eval runs with eval rollouts (dasd-probe eval), one per method and benchmark",
)
def fig4_pass_at_k(runs: Sequence[Run]) -> Figure | Missing:
    """Fig. 4 (section 5): unbiased Pass@k (``dasd.passk``) of each method's eval
    rollouts, one panel per task, k = 1, 2, 4, … up to the number of samples per prompt.

    Departure: k stops at the samples logged per prompt (the paper goes to 128).
    """
    from matplotlib.ticker import NullLocator

    chosen = [r for r in runs if r.kind == "eval" and r.has_rollouts()]
    tasks = sorted({r.task for r in chosen})
    by_model = len({r.model for r in chosen}) > 1
    panels = []
    for task in tasks:
        curves = []
        for group in group_runs([r for r in chosen if r.task == task], by_model=by_model,
                                by_task=False):
            counts = _pooled_counts(group)
            if counts is not None:
                curves.append((group, *pass_at_k_curve(counts), len(counts)))
        if curves:
            panels.append((task, curves))
    if not panels:
        return Missing("no eval run with eval rollouts")
    fig, axes = new_figure(len(panels), width=3.6)
    for ax, (task, curves) in zip(axes, panels):
        all_ks: set[int] = set()
        for group, ks, values, _ in curves:
            ax.plot(ks, 100 * values, color=method_color(group.method),
                    linestyle=_linestyle(group), marker=method_marker(group.method),
                    label=group.label)
            all_ks.update(int(k) for k in ks)
        ax.set_xscale("log", base=2)
        ticks = sorted(all_ks)
        ax.set_xticks(ticks, labels=[str(k) for k in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        prompts = sorted({n for *_, n in curves})
        ax.set(title=f"{task} ({'/'.join(map(str, prompts))} prompts)", xlabel="k",
               ylabel="Pass@k (%)")
        _legend(ax)
    return fig


# --------------------------------------------------------------------------- Fig. 5


_DYNAMICS = (
    ("train/reward", "(a) Training reward", "reward (train/reward)"),
    ("train/length_tokens", "(b) Response length", "tokens (train/length_tokens)"),
    ("train/entropy_mean", "(c) Token entropy", "mean $H_t$, nats (train/entropy_mean)"),
)


@register_figure(
    "fig5_training_dynamics",
    title="Fig. 5: training dynamics (reward, response length, token entropy)",
    needs="train runs with train/reward, train/length_tokens or train/entropy_mean logged "
    "(dasd-probe train --method M)",
)
def fig5_training_dynamics(runs: Sequence[Run]) -> Figure | Missing:
    """Fig. 5 (section 6, RQ1): training reward, mean response length and mean token entropy
    over updates, one curve per method (train split of ``metrics.jsonl``)."""
    keys = [key for key, *_ in _DYNAMICS]
    chosen = [r for r in runs if r.kind == "train"
              and any(len(r.series("train", key)) for key in keys)]
    if not chosen:
        return Missing("no train run with " + ", ".join(keys))
    groups = group_runs(chosen)
    fig, axes = new_figure(3)
    for ax, (key, title, ylabel) in zip(axes, _DYNAMICS):
        if not _plot_metric(ax, groups, "train", key):
            _note(ax, f"no {key} logged")
        ax.set(title=title, xlabel="training step", ylabel=ylabel)
        _legend(ax)
    return fig


# --------------------------------------------------------------------------- Fig. 6a


def _endpoint_entropy(run: Run) -> np.ndarray:
    """Token entropies of the run's last logged rollouts (eval split first, else train)."""
    if not run.has_rollouts():
        return np.zeros(0)
    for split in ("eval", "train"):
        rows = run.last_rollouts(["entropy"], splits=(split,))
        if rows is None:
            continue
        lists = [np.asarray(e, dtype=np.float64) for e in rows["entropy"]
                 if isinstance(e, np.ndarray)]
        values = np.concatenate(lists) if lists else np.zeros(0)
        values = values[np.isfinite(values)]
        if values.size:
            return values
    return np.zeros(0)


@register_figure(
    "fig6a_entropy_distribution",
    title="Fig. 6a: endpoint token-entropy distributions (log frequency, 80th percentile marked)",
    needs="train runs whose rollouts log per-token entropy (dasd-probe train --method M)",
)
def fig6a_entropy_distribution(runs: Sequence[Run]) -> Figure | Missing:
    """Fig. 6(a) (section 6, RQ1): the distribution of per-token entropy in each method's last
    logged rollouts, as log-frequency curves over 40 shared bins, the 80th percentile dotted.

    Departures: the endpoint is the last logged rollout file (eval split preferred, else
    train), not a separate convergence evaluation; runs of one method are pooled.
    """
    chosen = [r for r in runs if r.kind == "train"]
    curves = []
    for group in group_runs(chosen):
        parts = [v for v in (_endpoint_entropy(r) for r in group.runs) if v.size]
        if parts:
            curves.append((group, np.concatenate(parts)))
    if not curves:
        return Missing("no train run with per-token entropy in its rollouts")
    top = max(float(values.max()) for _, values in curves)
    edges = np.linspace(0.0, top if top > 0 else 1.0, 41)
    centers = 0.5 * (edges[:-1] + edges[1:])
    fig, (ax,) = new_figure(1, width=5.0, height=3.4)
    for group, values in curves:
        counts, _ = np.histogram(values, bins=edges)
        freq = np.where(counts > 0, counts / values.size, np.nan)
        color = method_color(group.method)
        p80 = float(np.quantile(values, 0.8))
        ax.plot(centers, freq, color=color, linestyle=_linestyle(group),
                label=f"{group.label} (p80 = {p80:.2f})")
        ax.axvline(p80, color=color, linestyle=":", linewidth=1.2)
    ax.set_yscale("log")
    ax.set(title="(a) Endpoint token entropy", xlabel="token entropy $H_t$ (nats)",
           ylabel="frequency (fraction of tokens)")
    _legend(ax)
    return fig


# --------------------------------------------------------------------------- Fig. 6b/6c

#: Fig. 6b/6c curves: (summary arms, color, line style, marker, label). The base run up to the
#: flip and the ``none`` arm after it form one dotted unperturbed-DASD curve; a flipped arm is
#: colored as the uniform sign it turns its arm into (low -> repulsion, high -> attraction).
_ARM_FLIP_CURVES = (
    (("base", "none"), METHOD_COLORS["dasd"], ":", method_marker("dasd"), "unperturbed DASD"),
    (("low",), METHOD_COLORS["novelty"], "-", method_marker("novelty"),
     "low-$H_t$ arm flipped"),
    (("high",), METHOD_COLORS["conformity"], "-", method_marker("conformity"),
     "high-$H_t$ arm flipped"),
)
_ARM_FLIP_PANELS = (
    ("eval/step_acc", "(b) Execution after a flip", "StepAcc (eval/step_acc)"),
    ("eval/ey_density", "(c) Exploration after a flip", "E(y) density (eval/ey_density)"),
)


def _arm_flip_summary(run: Run) -> pd.DataFrame:
    frame = read_table(run.path, "summary")
    missing = [c for c in ("arm", "step") if c not in frame.columns]
    if missing:
        raise ValueError(f"{run.path / 'summary.parquet'}: missing column {missing[0]!r}; "
                         "Fig. 6b/6c needs arm, step and eval metrics")
    return frame


@register_figure(
    "fig6bc_arm_flip",
    title="Fig. 6b/6c: StepAcc and E(y) after flipping one routing arm (dotted: unperturbed DASD)",
    needs="a run of kind probe:arm-flip holding summary.parquet (dasd-probe arm-flip)",
)
def fig6bc_arm_flip(runs: Sequence[Run]) -> Figure | Missing:
    """Fig. 6(b, c) (section 6, RQ1): held-out StepAcc (b) and E(y) density (c) over training
    steps for unperturbed DASD (dotted, through the flip) and the runs continued with the low-
    or the high-entropy routing arm flipped; the flip step is marked by a vertical line.

    Departures: both flips are drawn in both panels (the paper's caption pairs the low flip
    with StepAcc and the high flip with E(y)); several probe runs are averaged per arm at each
    step, with a min-max band.
    """
    chosen = [r for r in runs
              if r.kind == "probe:arm-flip" and (r.path / "summary.parquet").is_file()]
    if not chosen:
        return Missing("no probe:arm-flip run with summary.parquet")
    summaries = [_arm_flip_summary(run) for run in chosen]
    flips = sorted({r.config["flip_at"] for r in chosen
                    if isinstance(r.config.get("flip_at"), int)})
    fig, axes = new_figure(2)
    for ax, (key, title, ylabel) in zip(axes, _ARM_FLIP_PANELS):
        drawn = False
        for arms, color, style, marker, label in _ARM_FLIP_CURVES:
            series = [rows.groupby("step")[key].mean() for rows in
                      (frame.loc[frame["arm"].isin(arms), ["step", key]].dropna()
                       for frame in summaries if key in frame.columns) if len(rows)]
            if not series:
                continue
            curve = _combine(series)
            ax.plot(curve.index, curve["mean"], color=color, linestyle=style, marker=marker,
                    label=label)
            if (curve["n"] > 1).any():
                ax.fill_between(curve.index, curve["lo"], curve["hi"], color=color, alpha=0.15,
                                linewidth=0)
            drawn = True
        for step in flips:
            ax.axvline(step, color="#A0A0A0", linestyle="--", linewidth=0.8)
        if not drawn:
            _note(ax, f"no {key} logged")
        ax.set(title=title, xlabel="training step", ylabel=ylabel)
        _legend(ax)
    return fig


# --------------------------------------------------------------------------- Fig. 7


def _causal_entries(runs: Sequence[Run]) -> list[tuple[str, dict]]:
    """(label, checkpoint entry) of every checkpoint of the causal runs, the run's name
    prefixed to the label when there are several runs."""
    out = []
    for run in runs:
        summary = read_json(run.path, "summary", expect=dict)
        with json_shape(run.path / "summary.json"):
            for entry in summary.get("checkpoints", []):
                prefix = f"{run.name}: " if len(runs) > 1 else ""
                out.append((prefix + str(entry["label"]), dict(entry)))
    return out


Cell = tuple[float | None, float | None, float | None]
"""A bar's (value, CI low, CI high); None where not logged."""


def _ci_bars(ax: Axes, groups: Sequence[str],
             bars: Sequence[tuple[str, str, Sequence[Cell | None]]]) -> bool:
    """Grouped bars: one group per name in ``groups``, one bar per ``(label, color, cells)``
    with ``cells[i]`` the bar of group i (None: no bar); a CI is drawn as an error bar where
    both ends are known. Returns whether any bar was drawn."""
    width = 0.8 / max(len(bars), 1)
    drawn = False
    for j, (label, color, cells) in enumerate(bars):
        xs, heights, errors, known = [], [], [[], []], False
        for i, cell in enumerate(cells):
            if cell is None or cell[0] is None:
                continue
            value, low, high = cell
            xs.append(i - 0.4 + width * (j + 0.5))
            heights.append(value)
            has_ci = low is not None and high is not None
            errors[0].append(value - low if has_ci else 0.0)
            errors[1].append(high - value if has_ci else 0.0)
            known |= has_ci
        if xs:
            ax.bar(xs, heights, width=width, color=color, label=label,
                   yerr=errors if known else None, capsize=2)
            drawn = True
    ax.set_xticks(range(len(groups)), labels=list(groups))
    ax.axhline(0.0, color="#A0A0A0", linewidth=0.8)
    return drawn


def _contrast(entry: dict, part: str, new: str, ref: str, metric: str, **where: str
              ) -> Cell | None:
    """The (diff, CI low, CI high) of one logged contrast of a causal checkpoint entry."""
    for c in entry.get(part, {}).get("contrasts", []):
        if (c["condition"], c["reference"], c["metric"]) == (new, ref, metric) and all(
                c.get(k) == v for k, v in where.items()):
            return c["diff"], c["ci_low"], c["ci_high"]
    return None


def _correct_rate(entry: dict, condition: str) -> Cell | None:
    """The final correctness of one revision condition of a causal checkpoint entry."""
    for r in entry.get("revisions", {}).get("rates", []):
        if r["condition"] == condition:
            return r["correct"], None, None
    return None


@register_figure(
    "fig7_causal",
    title="Fig. 7: causal interventions on forks (teacher's top choice) and revisions "
    "(preserve, suppress, teacher-force)",
    needs="a run of kind probe:causal holding summary.json (dasd-probe causal)",
)
def fig7_causal(runs: Sequence[Run]) -> Figure | Missing:
    """Fig. 7 (section 6, RQ2): (a, b) the change of final correctness and of the revision
    rate when the privileged teacher's top choice replaces the token at the highest-H_t,
    lowest-H_t or a random position (vs the student's own continuation of the same prefix);
    (c) final correctness when revision prefixes are preserved, suppressed or teacher-forced;
    (d) preserve minus suppress. Error bars: the paired prompt-bootstrap CIs of
    ``summary.json``.

    Departures: (a, b) and (d) draw differences with their intervals rather than pairs of
    absolute bars; every checkpoint of every causal run is a bar of its own, colored by its
    method (gray when unknown).
    """
    chosen = [r for r in runs
              if r.kind == "probe:causal" and (r.path / "summary.json").is_file()]
    if not chosen:
        return Missing("no probe:causal run with summary.json")
    entries = _causal_entries(chosen)
    fig, axes = new_figure(4, width=3.4)
    cuts = ("high", "low", "random")
    panels = (
        (axes[0], "(a) Fork replacement: correctness", "teacher top choice - unmodified",
         ("high-$H_t$", "low-$H_t$", "random"),
         lambda e: [_contrast(e, "forks", "teacher_top", "unmodified", "correct", cut=c)
                    for c in cuts]),
        (axes[1], "(b) Fork replacement: revision rate", "teacher top choice - unmodified",
         ("high-$H_t$", "low-$H_t$", "random"),
         lambda e: [_contrast(e, "forks", "teacher_top", "unmodified", "revises", cut=c)
                    for c in cuts]),
        (axes[2], "(c) Revision prefixes: correctness", "final correctness",
         ("preserve", "suppress", "teacher-force"),
         lambda e: [_correct_rate(e, c) for c in ("preserve", "suppress", "teacher_force")]),
        (axes[3], "(d) Preserve - suppress", "correctness difference", ("revision prefixes",),
         lambda e: [_contrast(e, "revisions", "preserve", "suppress", "correct")]),
    )
    for ax, title, ylabel, groups, cells in panels:
        with json_shape(" or ".join(str(r.path / "summary.json") for r in chosen)):
            bars = [(label, method_color(e.get("method")), cells(e)) for label, e in entries]
        if not _ci_bars(ax, groups, bars):
            _note(ax, "not logged")
        ax.set(title=title, ylabel=ylabel)
        _legend(ax)
    return fig


# --------------------------------------------------------------------------- Fig. 8


def _format_size(size: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g}{unit}"
    return f"{size:.0f}"


@register_figure(
    "fig8_scale",
    title="Fig. 8: macro Avg@k vs model size",
    needs="eval runs with eval rollouts of at least two model sizes (dasd-probe eval --model M; "
    "parameter count from config n_parameters or the model name)",
)
def fig8_scale(runs: Sequence[Run]) -> Figure | Missing:
    """Fig. 8 (appendix G.2): Avg@k macro-averaged over tasks, per method and model size, with
    a ±1 standard-error band over tasks (std / sqrt(#tasks), drawn when there are ≥ 2 tasks).

    Departures: Avg@k is recomputed from the logged eval rollouts (mean over prompts of c / n);
    model sizes are placed at equal spacing in size order (as the paper's 1.7B/4B/8B axis).
    """
    chosen = [r for r in runs if r.kind == "eval" and r.has_rollouts()]
    models = {r.model_name: model_size(r) for r in chosen}
    if len(models) < 2:
        found = ", ".join(sorted(models)) or "none"
        return Missing(f"needs eval runs of at least 2 model sizes; found {len(models)} ({found})")
    order = sorted(models, key=lambda m: (models[m] is None, models[m] or 0.0, m))
    scores: dict[tuple[str, str | None], dict[str, dict[str, float]]] = {}
    for group in group_runs(chosen, by_model=True, by_task=True):
        counts = _pooled_counts(group)
        if counts is None:
            continue
        run = group.runs[0]
        label = method_label(group.method)
        avg = float(np.mean(avg_at_k(counts["n"].to_numpy(), counts["c"].to_numpy())))
        scores.setdefault((label, group.method), {}).setdefault(run.model_name, {})[run.task] = avg
    fig, (ax,) = new_figure(1, width=4.6, height=3.4)
    for (label, method), per_model in scores.items():
        xs, means, ses = [], [], []
        for x, model in enumerate(order):
            if model not in per_model:
                continue
            values = 100 * np.array(list(per_model[model].values()))
            xs.append(x)
            means.append(values.mean())
            ses.append(values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else 0.0)
        color = method_color(method)
        ax.plot(xs, means, color=color, marker=method_marker(method), label=label)
        if any(ses):
            ax.fill_between(xs, np.subtract(means, ses), np.add(means, ses), color=color,
                            alpha=0.15, linewidth=0)
    ticks = [m if models[m] is None or _format_size(models[m]) in m
             else f"{m}\n{_format_size(models[m])}" for m in order]
    ax.set_xticks(range(len(order)), labels=ticks)
    n_tasks = len({r.task for r in chosen})
    ax.set(title=f"Macro Avg@k over {n_tasks} task(s)", xlabel="model",
           ylabel="Avg@k (%)")
    _legend(ax)
    return fig


# --------------------------------------------------------------------------- Fig. 10b


@register_figure(
    "fig10b_validation",
    title="Fig. 10b: logged validation trajectory (Avg@k) of DASD and GRPO",
    needs="train runs of method dasd or grpo with eval/avg_at_k logged over steps "
    "(dasd-probe train --method dasd|grpo)",
)
def fig10b_validation(runs: Sequence[Run]) -> Figure | Missing:
    """Fig. 10(b) (appendix G): ``eval/avg_at_k`` over training steps for DASD and GRPO, markers
    on the logged checkpoints. k is the largest one every run logged (the paper: mean@4)."""
    chosen = [r for r in runs if r.kind == "train" and r.method in VALIDATION_METHODS]
    k = _pick_k(chosen, "eval/avg_at_", prefer=None)
    if k is None:
        return Missing("no dasd or grpo train run with eval/avg_at_k logged")
    fig, (ax,) = new_figure(1, width=4.6, height=3.4)
    _plot_metric(ax, group_runs(chosen), "eval", f"eval/avg_at_{k}")
    ax.set(title=f"(b) Validation Avg@{k}", xlabel="training step",
           ylabel=f"Avg@{k} (eval/avg_at_{k})")
    _legend(ax)
    return fig
