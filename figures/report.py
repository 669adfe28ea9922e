"""`dasd-analyze report`: one self-contained HTML audit page of logged runs.

The page holds, from run directories only (DESIGN.md section 4):

0. when the runs measure any of them, the paper's findings, one line each, reproduced / not
   reproduced / not measurable here by the rule of :mod:`analysis.findings`, with the claims
   (and, given a calibration of ``dasd-probe validate``, each claim's power on the positive
   control world);
1. the runs: manifest fields and the resolved config of each;
2. the reasoning-health table (Table 3's metrics, :func:`analysis.health.analyze_runs` on
   each run's last eval rollouts) with the issues it met;
3. every paper figure the runs support (:mod:`figures`), embedded as base64 PNG, and the
   figures without data with what they need;
4. a rollout audit in the spirit of the paper's Fig. 9: responses token by token, colored by
   omega (attraction omega > 0 blue, repulsion omega < 0 red, the Conformity / Novelty colors
   of the figures) or, with the switch, by the student's entropy H_t; hovering a token shows
   H_t, the raw gap delta_t = teacher_logp - student_logp, the gap delta_bar_t as the ``dasd``
   method scales it (``dasd.advantages.METHOD_GAP_SCALE``), and omega_t.

Self-contained: inline CSS, images as data URIs, no script, no font or other external
resource; every logged string is escaped. The color switch is two radio buttons and CSS.

Decisions and departures:

1. Token pieces are model-free: a response is split into characters when its length equals
   ``n_tokens`` (a character-level tokenizer, as the built-in world's, stopped by the length
   limit) or ``n_tokens - 1`` (the same, the last token being EOS, which the response text
   omits); otherwise the tokens are shown as their ids (``token_ids``) or positions.
2. omega is the logged ``omega`` column. Where a rollout has none (eval rollouts) but has
   ``entropy``, ``student_logp`` and ``teacher_logp``, omega is derived with DASD's defaults
   (the ``dasd`` method: rho = 0.2, tanh direction, sigmoid gate) and the page
   says so: it shows where DASD would attract and repel on that rollout, not what trained it.
3. Audited rollouts: per run, the last logged rollout file (train split first, whose rows
   carry the trainer's omega, else eval), up to ``audit_rollouts`` rows, half correct and half
   not where both exist, in (prompt_id, sample_idx) order. Entropy colors are scaled to the
   largest entropy among the run's audited tokens.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.calibration import Row
from analysis.findings import findings, power_note
from analysis.health import analyze_runs
from dasd.health import HEALTH_COLUMNS
from figures import FIGURES, Missing, make_figure, png_bytes
from figures.runs import Run, load_runs

__all__ = [
    "AUDIT_COLUMNS",
    "token_pieces",
    "AuditTokens",
    "audit_tokens",
    "pick_audit_rows",
    "build_report",
    "write_report",
]

#: Rollout columns the audit reads.
AUDIT_COLUMNS = ("prompt_id", "sample_idx", "prompt", "response", "answer", "reward", "correct",
                 "n_tokens", "token_ids", "entropy", "student_logp", "teacher_logp", "omega")
EOS_PIECE = "⟨eos⟩"
_ATTRACT = (0, 114, 178)  # Conformity blue (figures.style)
_REPEL = (214, 39, 40)  # Novelty red
_ENTROPY = (117, 107, 177)
_MAX_ALPHA = 0.8


def token_pieces(response: str, n_tokens: int, token_ids: Sequence[int] | None = None
                 ) -> tuple[list[str], str]:
    """The response's ``n_tokens`` tokens as display pieces, and how they were obtained:
    ``"characters"`` (len(response) == n_tokens), ``"characters + EOS"`` (len == n_tokens - 1:
    the last token is EOS, shown as ``⟨eos⟩``), else ``"token ids"`` (``[id]``, or ``[#i]``
    when ``token_ids`` is missing)."""
    if len(response) == n_tokens:
        return list(response), "characters"
    if n_tokens >= 1 and len(response) == n_tokens - 1:
        return [*response, EOS_PIECE], "characters + EOS"
    if token_ids is not None and len(token_ids) == n_tokens:
        return [f"[{int(t)}]" for t in token_ids], "token ids"
    return [f"[#{i}]" for i in range(n_tokens)], "token ids"


@dataclass(frozen=True)
class AuditTokens:
    """Per-token display data of one rollout (each array has one value per token; NaN where
    the rollout does not log what it needs)."""

    pieces: list[str]
    pieces_from: str
    entropy: np.ndarray
    delta: np.ndarray
    delta_bar: np.ndarray
    omega: np.ndarray
    omega_from: str
    """``logged``, ``derived`` (DASD defaults) or ``absent``."""


def _token_array(value: Any, n: int) -> np.ndarray | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    arr = np.asarray(value, dtype=np.float64)
    return arr if arr.shape == (n,) else None


def _dasd_terms(entropy: np.ndarray, student: np.ndarray, teacher: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(delta_bar, omega) of one response with DASD's defaults (one source of the formula)."""
    import torch

    from dasd.advantages import get_method

    def row(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float64)[None, :]

    out = get_method("dasd")(torch.zeros(1, dtype=torch.float64), row(entropy), row(student),
                             row(teacher), torch.ones(1, entropy.size, dtype=torch.bool),
                             beta=0.0)
    return out.delta_bar[0].numpy(), out.omega[0].numpy()


def audit_tokens(row: Any) -> AuditTokens:
    """Display data of one rollout row (a mapping or namedtuple with :data:`AUDIT_COLUMNS`;
    optional token columns may be missing or None)."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name, None)
    n = int(get("n_tokens"))
    ids = get("token_ids")
    pieces, pieces_from = token_pieces(str(get("response")), n,
                                       None if _token_array(ids, n) is None else list(ids))
    nan = np.full(n, np.nan)
    entropy = _token_array(get("entropy"), n)
    student, teacher = _token_array(get("student_logp"), n), _token_array(get("teacher_logp"), n)
    omega = _token_array(get("omega"), n)
    delta = delta_bar = nan
    derived_omega = None
    if student is not None and teacher is not None and n > 0:
        delta = teacher - student
        routing = entropy if entropy is not None else np.zeros(n)
        delta_bar, derived_omega = _dasd_terms(routing, student, teacher)
    if omega is not None:
        omega_from = "logged"
    elif derived_omega is not None and entropy is not None:
        omega, omega_from = derived_omega, "derived"
    else:
        omega, omega_from = nan, "absent"
    return AuditTokens(pieces, pieces_from, entropy if entropy is not None else nan, delta,
                       delta_bar, omega, omega_from)


def pick_audit_rows(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to ``n`` rows, half correct and half not where both exist (the rest from whichever
    has more), the first of each in (prompt_id, sample_idx) order; returned in that order."""
    rows = rows.sort_values(["prompt_id", "sample_idx"], kind="stable")
    good, bad = rows[rows["correct"]], rows[~rows["correct"]]
    n_good = min(len(good), max(n - min(len(bad), n // 2), 0))
    n_bad = min(len(bad), n - n_good)
    picked = pd.concat([good.head(n_good), bad.head(n_bad)])
    return picked.sort_values(["prompt_id", "sample_idx"], kind="stable")


# --------------------------------------------------------------------------- HTML pieces


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    alpha = 0.0 if not math.isfinite(alpha) else min(max(alpha, 0.0), 1.0) * _MAX_ALPHA
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def _fmt(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "n/a"


def _token_html(tokens: AuditTokens, h_max: float) -> str:
    spans = []
    for i, piece in enumerate(tokens.pieces):
        h, d, db, w = (float(tokens.entropy[i]), float(tokens.delta[i]),
                       float(tokens.delta_bar[i]), float(tokens.omega[i]))
        w_color = _rgba(_ATTRACT if w > 0 else _REPEL, abs(w))
        h_color = _rgba(_ENTROPY, h / h_max)
        title = (f"#{i} {piece!r}\nH = {_fmt(h, '.3f')} nats\n"
                 f"δ = {_fmt(d, '+.3f')} (raw: teacher_logp − student_logp)\n"
                 f"δ̄ = {_fmt(db, '+.2f')} (as the dasd method scales δ)\n"
                 f"ω = {_fmt(w, '+.3f')} ({tokens.omega_from})")
        shown = "↵\n" if piece == "\n" else piece
        cls = "t eos" if piece == EOS_PIECE and tokens.pieces_from == "characters + EOS" else "t"
        spans.append(f'<span class="{cls}" style="--w:{w_color};--h:{h_color}" '
                     f'title="{_e(title)}">{_e(shown)}</span>')
    return "".join(spans)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;
 color:#222;background:#fff;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.6em;margin:.4em 0}h2{border-bottom:2px solid #2CA02C;padding-bottom:2px;
 margin-top:1.8em}h3{margin:1.2em 0 .3em}
nav a{margin-right:1em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f2f2f2}td.l,th.l{text-align:left}
tr.dasd td{background:#e7f4e4}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:.8em;max-height:420px}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444}
.muted{color:#777}.issue{font-size:.85em}.issue.error{color:#a00}
.rollout{border:1px solid #ddd;border-radius:4px;padding:6px 10px;margin:.6em 0}
.rollout .head{font-size:.85em;color:#444;margin-bottom:4px}
.ok{color:#2CA02C;font-weight:bold}.bad{color:#D62728;font-weight:bold}
.tokens{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;
 white-space:pre-wrap;word-break:break-all;font-size:.95em;line-height:1.7}
.t{border-radius:2px;padding:1px 0}.t:hover{outline:1px solid #000}
.t.eos{font-size:.8em}
.wide{overflow-x:auto}.wide td.l{white-space:nowrap}
#by-omega:checked~.audit .t{background:var(--w)}
#by-entropy:checked~.audit .t{background:var(--h)}
.swatch{display:inline-block;width:14px;height:14px;vertical-align:middle;
 border:1px solid #999;margin:0 3px}
"""


def _table(frame: pd.DataFrame, *, left: Sequence[str] = (), highlight: str | None = None
           ) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{_e(c)}</th>' for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for col in frame.columns:
            value = row[col]
            if isinstance(value, float):
                text = _fmt(value, ".4g")
            else:
                text = "" if value is None else str(value)
            cells.append(f'<td class="{"l" if col in left else ""}">{_e(text)}</td>')
        cls = ' class="dasd"' if highlight and row.get(highlight) == "dasd" else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _runs_section(runs: Sequence[Run]) -> str:
    rows = []
    for run in runs:
        m = run.manifest
        sha = m.get("git_sha") or ""
        rows.append({
            "run": run.name, "kind": run.kind, "method": run.method or "", "model": run.model,
            "task": run.task, "seed": "" if m.get("seed") is None else str(m.get("seed")),
            "status": str(m.get("status")), "created": str(m.get("created") or ""),
            "git": (sha[:10] + (" (dirty)" if m.get("git_dirty") else "")) if sha else "",
        })
    table = _table(pd.DataFrame(rows), left=["run", "kind", "method", "model", "task",
                                             "status", "created", "git"], highlight="method")
    details = []
    for run in runs:
        config = json.dumps(run.config, indent=2, sort_keys=True)
        extra = {"path": str(run.path), **{k: run.manifest[k] for k in ("versions", "argv",
                                                                       "error")
                                           if run.manifest.get(k)}}
        details.append(
            f"<details><summary>{_e(run.name)}: config</summary><pre>{_e(config)}</pre>"
            f"<pre>{_e(json.dumps(extra, indent=2, sort_keys=True))}</pre></details>"
        )
    return f'<h2 id="runs">Runs ({len(runs)})</h2>{table}{"".join(details)}'


def _tables_section(runs: Sequence[Run]) -> str:
    report = analyze_runs([run.path for run in runs], last=True, split="eval",
                          kinds=lambda info: info.kind in ("train", "eval"))
    parts = ['<h2 id="tables">Reasoning health (Table 3 metrics, last eval rollouts)</h2>']
    if report.analysed:
        by_path = {run.path: run for run in runs}
        # The method as the figures read it (manifest, else config; analysis.health reads the
        # manifest only), so an eval of a trained checkpoint is named by its method.
        methods = {info.label: by_path[info.path].method for info in report.runs
                   if info.path in by_path}
        rows = report.rows.assign(method=report.rows["run"].map(methods))
        columns = ["run", "method", "model", "task",
                   *(c for c in HEALTH_COLUMNS if c != "run")]
        parts.append('<div class="wide">' + _table(
            rows[columns], left=["run", "method", "model", "task", "split"],
            highlight="method") + "</div>")
    else:
        parts.append('<p class="muted">No run has eval rollouts to measure.</p>')
    if report.issues:
        issues = "".join(f'<div class="issue {_e(i.level)}">{_e(i.level)}: {_e(i.message)}</div>'
                         for i in report.issues)
        parts.append(f"<details><summary>{len(report.issues)} issue(s) met while measuring"
                     f"</summary>{issues}</details>")
    return "".join(parts)


def _findings_section(runs: Sequence[Run], power: Mapping[str, Row] | None) -> str:
    """One line per paper finding (``analysis.findings``) and its claims (with ``power``: each
    claim's power on the positive control); empty when no finding is measurable from these
    runs."""
    found = findings([run.path for run in runs])
    if all(f.verdict == "not measurable here" for f in found):
        return ""
    lines = "".join(f"<li>{_e(f.line())}</li>" for f in found)
    claims = pd.DataFrame([
        {"finding": f.name, "claim": c.text, "paper": c.paper, "ours": c.ours,
         "low": c.low, "high": c.high, "agreement": c.agreement,
         **({} if power is None else {
             "power on the positive control": power[c.text].cell() if c.text in power
             else "–"})}
        for f in found for c in f.claims])
    left = ["finding", "claim", "agreement"]
    note = ""
    if power is not None:
        left.append("power on the positive control")
        note = f'<p class="muted">{_e(power_note(power))}</p>'
    return ('<h2 id="findings">Findings of the paper, measured here</h2>'
            '<p class="muted">A finding is reproduced when every claim\'s 95% interval excludes '
            "0 on the paper's side, not measurable here when no claim has data, else not "
            f"reproduced.</p>{note}<ul>{lines}</ul>"
            + _table(claims, left=left))


def _figures_section(runs: Sequence[Run]) -> str:
    shown, missing = [], []
    for name, spec in FIGURES.items():
        result = make_figure(name, runs)
        if isinstance(result, Missing):
            missing.append(f"<li><strong>{_e(name)}</strong>: {_e(result.reason)}; needs "
                           f"{_e(spec.needs)}</li>")
            continue
        data = base64.b64encode(png_bytes(result)).decode("ascii")
        shown.append(f'<figure id="{_e(name)}"><img alt="{_e(spec.title)}" '
                     f'src="data:image/png;base64,{data}"><figcaption>{_e(spec.title)} '
                     f'<span class="muted">({_e(name)})</span></figcaption></figure>')
    body = "".join(shown) or '<p class="muted">No figure has data in these runs.</p>'
    if missing:
        body += f"<h3>Figures without data</h3><ul>{''.join(missing)}</ul>"
    return f'<h2 id="figures">Figures</h2>{body}'


def _audit_rows(run: Run, n: int) -> pd.DataFrame | None:
    if n <= 0 or not run.has_rollouts():
        return None
    rows = run.last_rollouts(AUDIT_COLUMNS, splits=("train", "eval"))
    return None if rows is None or rows.empty else pick_audit_rows(rows, n)


def _audit_run(run: Run, rows: pd.DataFrame) -> str:
    tokens = [audit_tokens(row) for row in rows.itertuples(index=False)]
    h_all = np.concatenate([t.entropy for t in tokens]) if tokens else np.zeros(0)
    h_all = h_all[np.isfinite(h_all)]
    h_max = float(h_all.max()) if h_all.size and h_all.max() > 0 else 1.0
    sources = sorted({t.omega_from for t in tokens})
    step, split = int(rows["step"].iloc[0]), str(rows["split"].iloc[0])
    note = {"logged": "ω as logged by the run",
            "derived": "ω derived with DASD defaults (ρ = 0.2, tanh, sigmoid gate): not logged",
            "absent": "no ω (the rollouts lack entropy or log-probs)"}
    parts = [f"<h3>{_e(run.name)} <span class=\"muted\">({_e(run.kind)}, "
             f"{_e(run.method or 'no method')}, step {step} {_e(split)}; "
             f"{_e('; '.join(note[s] for s in sources))}; entropy scale 0–{h_max:.2f} nats)"
             "</span></h3>"]
    for row, tok in zip(rows.itertuples(index=False), tokens):
        verdict = '<span class="ok">correct</span>' if row.correct else \
            '<span class="bad">wrong</span>'
        parts.append(
            f'<div class="rollout"><div class="head">{_e(row.prompt_id)} · sample '
            f"{int(row.sample_idx)} · {verdict} · reward {row.reward:g} · "
            f"{int(row.n_tokens)} tokens ({_e(tok.pieces_from)}) · gold {_e(row.answer)}</div>"
            f"<details><summary>prompt</summary><pre>{_e(row.prompt)}</pre></details>"
            f'<div class="tokens">{_token_html(tok, h_max)}</div></div>'
        )
    return "".join(parts)


def _audit_section(runs: Sequence[Run], n: int) -> str:
    blocks = [(run, rows) for run in runs if (rows := _audit_rows(run, n)) is not None]
    body = "".join(_audit_run(run, rows) for run, rows in blocks) or \
        '<p class="muted">No rollouts to audit.</p>'
    # The radio buttons are siblings before .audit, which the CSS switch (~) needs.
    return (
        '<h2 id="audit">Rollout audit</h2><p>Each response token by token. Hover a token for '
        "H (nats), δ = teacher_logp − student_logp (raw), δ̄ = δ / median|δ| over the response "
        "(normalized, eq. 8) and ω.</p>"
        '<div class="switch">Color: <input type="radio" name="color" id="by-omega" checked>'
        '<label for="by-omega">by ω <span class="swatch" style="background:'
        f'{_rgba(_ATTRACT, 1.0)}"></span>attraction (ω &gt; 0) <span class="swatch" '
        f'style="background:{_rgba(_REPEL, 1.0)}"></span>repulsion (ω &lt; 0)</label> '
        '<input type="radio" name="color" id="by-entropy"><label for="by-entropy">by entropy '
        f'H <span class="swatch" style="background:{_rgba(_ENTROPY, 1.0)}"></span>high</label>'
        f'<div class="audit">{body}</div></div>'
    )


def build_report(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
                 audit_rollouts: int = 4, title: str = "DASD audit report",
                 power: Mapping[str, Row] | None = None) -> str:
    """The HTML page for the runs under ``paths`` (run directories or their parents); with
    ``power`` (positive-control calibration rows by claim text) the findings show each
    claim's power. Deterministic: the same runs give the same bytes."""
    if audit_rollouts < 0:
        raise ValueError(f"audit_rollouts must be >= 0, got {audit_rollouts}")
    runs = load_runs(paths)
    summary = _findings_section(runs, power)
    sections = [summary, _runs_section(runs), _tables_section(runs), _figures_section(runs),
                _audit_section(runs, audit_rollouts)]
    nav = ('<nav>' + ('<a href="#findings">Findings</a>' if summary else "")
           + '<a href="#runs">Runs</a><a href="#tables">Health</a>'
           '<a href="#figures">Figures</a><a href="#audit">Rollout audit</a></nav>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(title)}</h1><p class=\"muted\">{len(runs)} run(s); generated from run "
        f"directories only by dasd-analyze report.</p>{nav}{''.join(sections)}"
        "</main></body></html>\n"
    )


def write_report(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
                 out: str | os.PathLike[str], *, audit_rollouts: int = 4,
                 power: Mapping[str, Row] | None = None) -> Path:
    """Write :func:`build_report` to ``out`` (UTF-8; parent folders created); returns it."""
    page = build_report(paths, audit_rollouts=audit_rollouts, power=power)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
