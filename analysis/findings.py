"""One line per paper finding: reproduced, not reproduced, or not measurable here.

Each finding of the paper (Findings 1-3 of section 3, Tables 2 and 3 of section 5, RQ1-RQ3 of
section 6) is split into signed claims, each a difference that the paper reports with a sign
(the paper's value where it prints one). Each claim is measured from logged runs only, as a
difference between two conditions on the same held-out prompts with a 95% paired percentile
bootstrap interval over prompts (``analysis.stats.paired_difference``; for a probe that
already logs an interval, that interval), and judged by ``analysis.agreement.sign_agreement``:
"agrees" when the interval excludes 0 on the paper's side, "disagrees" when it excludes 0 on
the other side, "inconclusive" when it contains 0.

The verdict of a finding follows one stated rule (``verdict``): **reproduced** when every
measured claim agrees and none is missing; **not measurable here** when no claim could be
measured (no run of the needed kind); **not reproduced** otherwise, with the counts. Nothing
in a verdict is written by hand.

Rollout metrics (``rollout_sums``): ``avg`` (share of correct responses, Avg@k), ``pass``
(prompts with at least one correct response, Pass@k at k = the samples per prompt),
``step_acc`` (correct steps / judged steps, pooled per prompt) and ``ey_density`` (mean
epistemic-marker density per response, ``dasd.health.response_health``). The unit of
resampling is the prompt. When a claim pools trained runs of two or more seeds (``--seeds``:
sign-flip, arm-flip, the trained methods, RQ3's rows), its interval is the 95% Student-t
interval of the per-seed differences instead (``seed_interval``): on the negative control the
prompt bootstrap of one training run called differences between arms that only training noise
made (docs/results.md, "Calibration"), and only repeats of the training see that noise. One
seed keeps the prompt bootstrap, which does not count training-run variance.

Departures: the paper reports single runs without intervals and most findings as figure
trends; the claims here are the signs those trends state, measured at the last evaluation.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.agreement import sign_agreement
from analysis.calibration import Row, estimate_text
from analysis.intervals import Interval, t_interval
from dasd.health import response_health
from analysis.paper import (TABLE1_BUCKETS, TABLE1_METRICS, TABLE1_MODES, TABLE3_METHODS,
                            TABLE3_ROWS, method_row, paper_value)
from analysis.stats import paired_difference, per_prompt_sums
from dasd.runlog import (
    Run,
    find_runs,
    json_shape,
    read_json,
    read_manifest,
    read_rollouts,
    write_text,
)

__all__ = [
    "METRICS",
    "Claim",
    "Finding",
    "findings",
    "rollout_sums",
    "seed_interval",
    "verdict",
    "write_findings",
]

#: Rollout metrics a claim can compare: name -> label.
METRICS = {"avg": "Avg@k", "pass": "Pass@k", "step_acc": "StepAcc", "ey_density": "E(y)"}
N_BOOT = 1000


@dataclass(frozen=True)
class Claim:
    """One signed difference the paper states, and ours."""

    text: str
    """The claim in words, e.g. "Conformity − Base, Pass@k < 0"."""
    sign: int
    """The sign the paper states: +1 or -1."""
    paper: float = math.nan
    """The paper's value where it prints one (same units as ``ours`` where comparable)."""
    ours: float = math.nan
    low: float = math.nan
    high: float = math.nan
    source: str = ""
    """Where ours comes from (run directory) or why it is missing."""

    @property
    def agreement(self) -> str:
        """``analysis.agreement.sign_agreement`` of ours against the paper's sign."""
        return sign_agreement(float(self.sign), self.ours, self.low, self.high)


@dataclass(frozen=True)
class Finding:
    """A paper finding, its claims and the verdict derived from them."""

    name: str
    statement: str
    claims: tuple[Claim, ...] = field(default_factory=tuple)

    @property
    def verdict(self) -> str:
        return verdict(self.claims)

    def line(self) -> str:
        """``name: verdict (k/n claims agree; counts of the others) — statement``."""
        states = [c.agreement for c in self.claims]
        others = ", ".join(f"{states.count(s)} {s}" for s in
                           ("disagrees", "inconclusive", "not measured") if states.count(s))
        counts = f"{states.count('agrees')}/{len(states)} claims agree" if states else \
            "no claims"
        return f"{self.name}: {self.verdict} ({counts}{'; ' + others if others else ''}) " \
            f"— {self.statement}"


def verdict(claims: Sequence[Claim]) -> str:
    """The rule of the module docstring: reproduced / not reproduced / not measurable here."""
    states = [c.agreement for c in claims]
    if not states or all(s == "not measured" for s in states):
        return "not measurable here"
    if all(s == "agrees" for s in states):
        return "reproduced"
    return "not reproduced"


# --------------------------------------------------------------------------- rollout metrics


def rollout_sums(rows: pd.DataFrame, metric: str, order: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per unit of ``order`` (``unit`` column, else ``prompt_id``): the numerator and
    denominator of ``metric`` (``METRICS``) over the rows, each ``(P,)``."""
    units = rows["unit"] if "unit" in rows else rows["prompt_id"]
    if metric == "avg":
        return per_prompt_sums(units, rows["correct"].to_numpy(dtype=float), order)
    if metric == "pass":
        solved = rows.groupby(units.to_numpy())["correct"].any()
        values = np.array([float(solved.get(u, np.nan)) for u in order])
        return np.nan_to_num(values), np.isfinite(values).astype(float)
    if metric == "step_acc":
        steps = rows["step_correct"]
        right = np.array([float(np.sum(s)) if s is not None else np.nan for s in steps])
        judged = np.array([float(len(s)) if s is not None else np.nan for s in steps])
        num, _ = per_prompt_sums(units, right, order)
        den, _ = per_prompt_sums(units, judged, order)
        return num, den
    if metric == "ey_density":
        density = response_health(rows["response"].tolist())["ey_density"].to_numpy()
        return per_prompt_sums(units, density, order)
    raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")


def _compare(base: pd.DataFrame, new: pd.DataFrame, metric: str, text: str, sign: int, *,
             source: str, paper: float = math.nan) -> Claim:
    """The claim ``text``: new − base in ``metric`` on their common prompts, in percentage
    points for the rates (Avg@k, Pass@k, StepAcc) and in markers per 1,000 words for E(y).
    Units ``<seed or run>/<prompt>`` of two or more training seeds: the mean and Student-t
    interval of the per-seed differences (module docstring); else the paired prompt
    bootstrap."""
    scale = 1.0 if metric == "ey_density" else 100.0
    key = "unit" if "unit" in base and "unit" in new else "prompt_id"
    order = sorted(set(base[key]) & set(new[key]))
    if not order:
        return Claim(text, sign, paper, source=f"{source}: no common prompts")
    seeds = _by_seed(order) if key == "unit" else {}
    if len(seeds) >= 2:
        interval = seed_interval(base, new, metric, seeds)
        return Claim(text, sign, paper, scale * interval.mean, scale * interval.low,
                     scale * interval.high, f"{source} (across {interval.n} seeds)")
    out = paired_difference(rollout_sums(base, metric, order), rollout_sums(new, metric, order),
                            n_boot=N_BOOT)
    return Claim(text, sign, paper, scale * out["diff"], scale * out["ci_low"],
                 scale * out["ci_high"], source)


def _by_seed(units: Sequence[str]) -> dict[str, list[str]]:
    """Units ``<seed or run>/<prompt>`` grouped by their seed part, in sorted order."""
    groups: dict[str, list[str]] = {}
    for unit in units:
        groups.setdefault(unit.split("/", 1)[0], []).append(unit)
    return dict(sorted(groups.items()))


def seed_interval(base: pd.DataFrame, new: pd.DataFrame, metric: str,
                  seeds: Mapping[str, Sequence[str]]) -> Interval:
    """new − base in ``metric`` (a fraction; E(y) per 1,000 words) within each training seed,
    on that seed's common units ``seeds[seed]``, then the mean over seeds with its 95%
    Student-t interval (``analysis.intervals.t_interval``): the interval counts how much
    training runs differ, which a bootstrap over the prompts of one run does not."""
    diffs = []
    for units in seeds.values():
        (b_sum, b_cnt), (n_sum, n_cnt) = (
            rollout_sums(frame[frame["unit"].isin(units)], metric, units)
            for frame in (base, new))
        diffs.append(n_sum.sum() / n_cnt.sum() - b_sum.sum() / b_cnt.sum()
                     if b_cnt.sum() > 0 and n_cnt.sum() > 0 else math.nan)
    return t_interval(diffs)


def _final_eval(run: Path) -> pd.DataFrame | None:
    """The rollouts of ``run``'s last logged evaluation (None without one)."""
    folder = run / "rollouts"
    steps = sorted(int(p.name[5:11]) for p in folder.glob("step-*-eval.parquet")) \
        if folder.is_dir() else []
    if not steps:
        return None
    return read_rollouts(run, step=steps[-1], split="eval",
                         columns=["prompt_id", "response", "correct", "step_correct"])


def _num(value: object) -> float:
    """A logged number; JSON ``null`` (how a NaN is stored) reads as NaN."""
    return math.nan if value is None else float(value)


def _missing(text: str, sign: int, why: str, paper: float = math.nan) -> Claim:
    return Claim(text, sign, paper, source=why)


# --------------------------------------------------------------------------- the findings


#: The parent kind of ``dasd-probe validate``: its runs are on control worlds, which are never
#: counted as a reproduction of the paper.
CONTROLS_KIND = "probe:validate"


def _runs(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, dict]]:
    """The runs under ``paths`` with their manifests, less those inside a control-world parent
    (``CONTROLS_KIND``) found among them."""
    runs = [(run, read_manifest(run)) for run in find_runs(list(paths))]
    controls = [run for run, m in runs if m.get("kind") == CONTROLS_KIND]
    return [(run, m) for run, m in runs
            if not any(run == c or c in run.parents for c in controls)]


def _of_kind(runs: list[tuple[Path, dict]], kind: str) -> list[tuple[Path, dict]]:
    return [(run, m) for run, m in runs if m.get("kind") == kind]


def _finding_1(runs: list[tuple[Path, dict]]) -> Finding:
    statement = ("uniform signs fail on different axes: Conformity loses Pass@k and E(y), "
                 "Novelty loses StepAcc while E(y) grows (Fig. 2)")
    specs = [("conformity", "pass", -1), ("conformity", "ey_density", -1),
             ("novelty", "step_acc", -1), ("novelty", "ey_density", +1)]
    parents = _of_kind(runs, "probe:sign-flip")
    claims = []
    for arm, metric, sign in specs:
        text = f"{arm.capitalize()} − Base, {METRICS[metric]} {'<' if sign < 0 else '>'} 0"
        pooled = _pooled(parents, ["grpo", arm])
        if pooled is None:
            claims.append(_missing(text, sign, "needs a sign-flip probe with arms grpo, " + arm))
            continue
        claims.append(_compare(pooled["grpo"], pooled[arm], metric, text, sign,
                               source=", ".join(str(p) for p, _ in parents)))
    return Finding("Finding 1", statement, tuple(claims))


def _pooled(parents: list[tuple[Path, dict]], arms: Sequence[str]
            ) -> dict[str, pd.DataFrame] | None:
    """Each arm's final-evaluation rollouts over every parent holding all ``arms``, with a
    ``unit`` column (parent, prompt) so that seeds pool as separate prompts."""
    frames: dict[str, list[pd.DataFrame]] = {arm: [] for arm in arms}
    for parent, _ in parents:
        got = {arm: _final_eval(parent / arm) for arm in arms}
        if any(rows is None for rows in got.values()):
            continue
        for arm, rows in got.items():
            frames[arm].append(rows.assign(unit=parent.name + "/" + rows["prompt_id"]))
    if not frames[arms[0]]:
        return None
    return {arm: pd.concat(f, ignore_index=True) for arm, f in frames.items()}


def _finding_2(runs: list[tuple[Path, dict]]) -> Finding:
    statement = ("the signed gap A_t rises with entropy (rho_s = +0.52); Conformity moves "
                 "high-H_t forks most, Novelty low-H_t scaffolding (Fig. 3)")
    rho = paper_value("Figure 3", "A_t vs H_t", "Spearman ρ_s")
    specs = [("A", "rho_s(A_t, H_t) > 0", +1, rho),
             ("D_plus", "rho_s(D+_t, H_t) > 0", +1, math.nan),
             ("D_minus", "rho_s(D-_t, H_t) < 0", -1, math.nan)]
    found = [(run, m) for run, m in _of_kind(runs, "probe:entropy-tv")
             if (run / "summary.json").is_file()]
    if not found:
        return Finding("Finding 2", statement, tuple(
            _missing(text, sign, "needs an entropy-tv probe", paper)
            for _, text, sign, paper in specs))
    run = found[0][0]
    summary = read_json(run, "summary", expect=dict)
    with json_shape(run / "summary.json"):
        entries = {key: [_num(summary["spearman"][key][x]) for x in ("rho", "low", "high")]
                   for key, *_ in specs}
    claims = [Claim(text, sign, paper, *entries[key], str(run))
              for key, text, sign, paper in specs]
    return Finding("Finding 2", statement, tuple(claims))


def _finding_3(runs: list[tuple[Path, dict]]) -> Finding:
    statement = ("routing helps on the diagonal and misrouting harms off it: low-H_t "
                 "Conformity raises StepAcc, high-H_t Novelty raises E(y); high-H_t Conformity "
                 "cuts E(y), low-H_t Novelty cuts StepAcc (Table 1)")
    specs = [("low", "conformity", "step_acc"), ("high", "novelty", "ey_density"),
             ("high", "conformity", "ey_density"), ("low", "novelty", "step_acc")]
    found = [(run, m) for run, m in _of_kind(runs, "probe:prefix-intervene")
             if (run / "summary.json").is_file()]
    cells = {}
    if found:
        summary = read_json(found[0][0], "summary", expect=dict)
        with json_shape(found[0][0] / "summary.json"):
            cells = {(c["bucket"], c["mode"], c["metric"]):
                     {x: c[x] for x in ("delta_pct", "ci_low", "ci_high")}
                     for c in summary["cells"]}
    claims = []
    for bucket, mode, metric in specs:
        paper = paper_value("Table 1", TABLE1_METRICS[metric], TABLE1_MODES[mode],
                            section=TABLE1_BUCKETS[bucket])
        sign = 1 if paper > 0 else -1
        text = (f"{bucket}-H_t {mode.capitalize()}, Δ{METRICS[metric]} % "
                f"{'>' if sign > 0 else '<'} 0")
        cell = cells.get((bucket, mode, metric))
        if cell is None:
            claims.append(_missing(text, sign, "needs a prefix-intervene probe", paper))
            continue
        claims.append(Claim(text, sign, paper, _num(cell["delta_pct"]), _num(cell["ci_low"]),
                            _num(cell["ci_high"]), str(found[0][0])))
    return Finding("Finding 3", statement, tuple(claims))


def _eval_runs(runs: list[tuple[Path, dict]]) -> dict[str, pd.DataFrame]:
    """Final-evaluation rollouts of ``eval`` runs by method (``base`` for the untrained model),
    seeds pooled as separate units; evaluations of method variants (options, routing) are left
    out."""
    frames: dict[str, list[pd.DataFrame]] = {}
    for run, manifest in _of_kind(runs, "eval"):
        info = Run(run, manifest)
        if info.variant:
            continue
        rows = _final_eval(run)
        if rows is None:
            continue
        seed = (info.config or {}).get("seed", 0)
        method = info.method or "base"
        frames.setdefault(method, []).append(rows.assign(unit=f"{seed}/" + rows["prompt_id"]))
    return {m: pd.concat(f, ignore_index=True) for m, f in frames.items()}


def _method_claims(evals: dict[str, pd.DataFrame], specs, why: str) -> tuple[Claim, ...]:
    claims = []
    for base, new, metric, sign, paper in specs:
        text = (f"{new.upper()} − {base.upper() if base != 'base' else 'base'}, "
                f"{METRICS[metric]} {'>' if sign > 0 else '<'} 0")
        if base not in evals or new not in evals:
            claims.append(_missing(text, sign, why, paper))
            continue
        claims.append(_compare(evals[base], evals[new], metric, text, sign, paper=paper,
                               source="eval runs"))
    return tuple(claims)


def _table_2(runs: list[tuple[Path, dict]]) -> Finding:
    statement = "DASD beats GRPO and OPSD in Avg@16 (Table 2; paper: Qwen3-1.7B, AIME24)"
    grpo, opsd, dasd = (paper_value("Table 2", method_row(m, "Qwen3-1.7B"), "AIME24",
                                    section="Qwen3-1.7B") for m in ("grpo", "opsd", "dasd"))
    specs = [("grpo", "dasd", "avg", +1, dasd - grpo), ("opsd", "dasd", "avg", +1, dasd - opsd)]
    return Finding("Table 2", statement, _method_claims(
        _eval_runs(runs), specs, "needs eval runs of GRPO, OPSD and DASD checkpoints"))


def _table_3(runs: list[tuple[Path, dict]]) -> Finding:
    statement = ("DASD keeps execution and exploration healthy; OPSD collapses exploration "
                 "(Table 3)")

    def gap(new: str, base: str, metric: str) -> float:
        row = TABLE3_ROWS[metric]
        return (paper_value("Table 3", row, TABLE3_METHODS[new])
                - paper_value("Table 3", row, TABLE3_METHODS[base]))

    specs = [(base, new, metric, sign, gap(new, base, metric)) for base, new, metric, sign in
             (("grpo", "dasd", "step_acc", +1), ("grpo", "dasd", "ey_density", +1),
              ("grpo", "opsd", "ey_density", -1))]
    return Finding("Table 3", statement, _method_claims(
        _eval_runs(runs), specs, "needs eval runs of GRPO, OPSD and DASD checkpoints"))


def _rq1(runs: list[tuple[Path, dict]]) -> Finding:
    statement = ("flipping the low-H_t arm hurts StepAcc; flipping the high-H_t arm "
                 "suppresses E(y) (Fig. 6b/6c)")
    parents = _of_kind(runs, "probe:arm-flip")
    claims = []
    for arm, metric in (("low", "step_acc"), ("high", "ey_density")):
        text = f"{arm}-H_t arm flipped − unperturbed, {METRICS[metric]} < 0"
        pooled = _pooled(parents, ["none", arm])
        if pooled is None:
            claims.append(_missing(text, -1, f"needs an arm-flip probe with arms none, {arm}"))
            continue
        claims.append(_compare(pooled["none"], pooled[arm], metric, text, -1,
                               source=", ".join(str(p) for p, _ in parents)))
    return Finding("RQ1", statement, tuple(claims))


def _rq2(runs: list[tuple[Path, dict]], method: str) -> Finding:
    """RQ2's claims on the causal probe's checkpoint of ``method`` (``base``: the untrained
    model)."""
    statement = ("teacher-forcing DASD's high-H_t forks lowers correctness; preserving its "
                 "revisions beats suppressing them (Fig. 7)")
    name = method.upper() if method != "base" else "base"
    texts = (f"{name}: teacher top token at the highest-H_t position − unmodified, "
             "correct < 0",
             f"{name}: preserve − suppress at revision prefixes, correct > 0")
    found = [(run, m) for run, m in _of_kind(runs, "probe:causal")
             if (run / "summary.json").is_file()]
    entry = None
    if found:
        summary = read_json(found[0][0], "summary", expect=dict)
        with json_shape(found[0][0] / "summary.json"):
            entry = next((c for c in summary["checkpoints"]
                          if (c.get("method") or "base") == method), None)
    if entry is None:
        why = f"needs a causal probe of a {name} checkpoint"
        return Finding("RQ2", statement, (_missing(texts[0], -1, why),
                                          _missing(texts[1], +1, why)))

    def contrast(part: str, match: dict) -> dict | None:
        with json_shape(found[0][0] / "summary.json"):
            for c in (entry.get(part) or {}).get("contrasts", []):
                if all(c.get(k) == v for k, v in match.items()):
                    return {x: c[x] for x in ("diff", "ci_low", "ci_high")}
        return None

    claims = []
    for text, sign, part, match in (
            (texts[0], -1, "forks", {"cut": "high", "condition": "teacher_top",
                                     "metric": "correct"}),
            (texts[1], +1, "revisions", {"condition": "preserve", "reference": "suppress",
                                         "metric": "correct"})):
        c = contrast(part, match)
        claims.append(_missing(text, sign, f"no {part} prefixes found") if c is None else
                      Claim(text, sign, math.nan, _num(c["diff"]), _num(c["ci_low"]),
                            _num(c["ci_high"]), str(found[0][0])))
    return Finding("RQ2", statement, tuple(claims))


def _rq3(runs: list[tuple[Path, dict]]) -> Finding:
    statement = ("DASD's defaults (entropy routing, tanh direction, sigmoid gate, rho = 0.2) "
                 "beat every replacement in Avg@k (Tables 5, 11-14)")
    claims = []
    for parent, manifest in _of_kind(runs, "probe:ablate"):
        config = manifest.get("config") or {}
        default, labels = config.get("default"), config.get("labels") or {}
        by_variant: dict[str, list[pd.DataFrame]] = {}
        for name, variant in (config.get("runs") or {}).items():
            rows = _final_eval(parent / name)
            if rows is not None:
                seed = name.rsplit("seed", 1)[-1]
                by_variant.setdefault(variant, []).append(
                    rows.assign(unit=f"{seed}/" + rows["prompt_id"]))
        if default not in by_variant:
            continue
        reference = pd.concat(by_variant[default], ignore_index=True)
        for variant, frames in by_variant.items():
            if variant == default:
                continue
            text = (f"{config['panel']}: {labels.get(variant, variant)} − "
                    f"{labels.get(default, default)}, Avg@k < 0")
            claims.append(_compare(reference, pd.concat(frames, ignore_index=True), "avg", text,
                                   -1, source=str(parent)))
    if not claims:
        claims.append(_missing("every replacement − default, Avg@k < 0", -1,
                               "needs ablate probes with the default row"))
    return Finding("RQ3", statement, tuple(claims))


def findings(paths: Iterable[str | os.PathLike[str]], *, causal_method: str = "dasd"
             ) -> list[Finding]:
    """Every finding, measured from the runs under ``paths``, in the paper's order; claim
    sources are named relative to the first path. RQ2 reads the causal probe's checkpoint of
    ``causal_method`` (``base`` for the untrained model, as on a control world)."""
    paths = [Path(p) for p in paths]
    runs = _runs(paths)
    found = [_finding_1(runs), _finding_2(runs), _finding_3(runs), _table_2(runs),
             _table_3(runs), _rq1(runs), _rq2(runs, causal_method), _rq3(runs)]
    root = str(paths[0]).rstrip("/") + "/" if paths else ""
    return [replace(f, claims=tuple(replace(c, source=c.source.replace(root, ""))
                                    for c in f.claims)) for f in found]


def power_note(power: Mapping[str, Row]) -> str:
    """What the power column shows, naming the positive-control world(s) of ``power``."""
    worlds = ", ".join(sorted({row.label for row in power.values()}))
    return ("Power: the same claim measured by the same probe on a control world with the "
            f"effect planted ({worlds}; a control, not a reproduction): *detected* when its "
            "95% interval excludes 0 on the planted side, else *missed*. A claim not "
            "reproduced here whose probe detected the planted effect is a measured negative "
            "result; – marks a claim without a control.")


def to_markdown(found: Sequence[Finding], power: Mapping[str, Row] | None = None) -> str:
    """The summary lines, then one table of claims per finding; with ``power`` (positive-control
    calibration rows by claim text, ``analysis.calibration``) a column of each claim's power."""
    rule = ("Rule: a finding is *reproduced* when every claim's 95% interval excludes 0 on the "
            "paper's side, *not measurable here* when no claim has data, else *not "
            "reproduced*.")
    header = "| claim | paper | ours [95% CI] | agreement | source |"
    ruler = "| --- | --- | --- | --- | --- |"
    lines = ["# Findings of the paper, measured here", "", rule, ""]
    if power is not None:
        header += " power on the positive control |"
        ruler += " --- |"
        lines[-1:] = ["", power_note(power), ""]
    lines += [f"- {f.line()}" for f in found]
    for f in found:
        lines += ["", f"## {f.name}: {f.verdict}", "", header, ruler]
        for c in f.claims:
            paper = "sign only" if math.isnan(c.paper) else f"{c.paper:+.3g}"
            ours = estimate_text(c.ours, c.low, c.high)
            line = f"| {c.text} | {paper} | {ours} | {c.agreement} | {c.source} |"
            if power is not None:
                line += f" {power[c.text].cell() if c.text in power else '–'} |"
            lines.append(line)
    return "\n".join(lines) + "\n"


def write_findings(run_dir: str | os.PathLike[str], *, power: Mapping[str, Row] | None = None
                   ) -> dict[str, Path]:
    """``findings.json`` and ``findings.md`` in ``run_dir`` from the runs under it; with
    ``power`` (``to_markdown``) each claim also carries its positive control's row."""
    run_dir = Path(run_dir)
    found = findings([run_dir])
    data = [{"name": f.name, "statement": f.statement, "verdict": f.verdict, "line": f.line(),
             "claims": [{**asdict(c), "agreement": c.agreement,
                         **({} if power is None else {"power": _power_record(power, c)})}
                        for c in f.claims]}
            for f in found]
    text = json.dumps(data, indent=2, allow_nan=True) + "\n"
    paths = {"findings": run_dir / "findings.json", "findings_md": run_dir / "findings.md"}
    write_text(paths["findings"], text)
    write_text(paths["findings_md"], to_markdown(found, power))
    return paths


def _power_record(power: Mapping[str, Row], claim: Claim) -> dict[str, object] | None:
    row = power.get(claim.text)
    return None if row is None else row.record()
