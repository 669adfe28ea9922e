"""Command-line entry points: ``dasd-probe`` (compute, writes run dirs) and ``dasd-analyze``
(reads run dirs). ``dasd-probe`` has one command per registered probe (``probes.registry``),
generated here from the probe's options dataclass; the ``dasd-analyze`` commands are written
out. Every command runs inside one error wrapper (bad input: one line, exit 2)."""

from __future__ import annotations

import dataclasses
import errno
import inspect
import os
import types
import typing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from dasd.config_checks import field_docs
from figures.terminal import Terminal, cell
from probes.registry import Probe, discover_probes, get_probe

#: What to do about an OSError, by errno (the message names the path and the system's reason).
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free space and rerun (dasd-probe train --resume RUN "
                  "continues a train run)",
    errno.EDQUOT: "the disk quota is exhausted: free space and rerun",
    errno.EACCES: "choose a location you can write (--runs-dir, --out) or fix its permissions",
    errno.EPERM: "choose a location you can write (--runs-dir, --out) or fix its permissions",
    errno.EROFS: "the file system is read-only: choose a writable --runs-dir or --out",
    errno.ENOTDIR: "a file stands where a folder is expected: move it or choose another path",
    errno.EISDIR: "a folder stands where a file is expected: move it or choose another path",
    errno.EEXIST: "something other than a folder is there: move it or choose another path",
    errno.ELOOP: "a symbolic link loops: fix or remove it",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def _os_error_line(err: OSError) -> str:
    """An OSError as one line: the path(s), the system's reason and what to do."""
    if err.errno is None:  # raised by our code with a message of its own
        return str(err)
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    reason = err.strerror or os.strerror(err.errno)
    advice = _OS_ADVICE.get(err.errno, "check the path and the disk")
    return f"{where}: {reason}; {advice}" if where else f"{reason}; {advice}"


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Bad input (unknown name, missing file, malformed run dir or model, bad config value)
    and a failing environment (any OSError: permissions, full disk, a file in a folder's place)
    -> one line on stderr, exit 2. Other exceptions are bugs and keep their traceback."""
    try:
        yield
    except (ValueError, OSError) as err:
        line = _os_error_line(err) if isinstance(err, OSError) else str(err)
        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]error:[/] {escape(' '.join(line.split()))}", highlight=False
        )
        raise typer.Exit(2) from None


class _OneLineGroup(TyperGroup):
    """Runs every command inside ``_one_line_errors``."""

    def invoke(self, ctx: typer.Context) -> Any:
        with _one_line_errors():
            return super().invoke(ctx)


class _ProbeGroup(_OneLineGroup):
    """``dasd-probe``: its own commands plus one per registered probe (``probes.registry``),
    each built from its module only when it runs or shows its help, so that listing the
    commands imports no probe."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        own = super().list_commands(ctx)
        return [*own, *(name for name in discover_probes() if name not in own)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and (source := discover_probes().get(name)) is not None:
            return click.Command(name, help=source.help)  # what the command list shows
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and args[0] in discover_probes():
            self.add_command(probe_command(get_probe(args[0])), args[0])
        return super().resolve_command(ctx, args)


probe_app = typer.Typer(
    cls=_ProbeGroup,
    add_completion=False,
    no_args_is_help=True,
    help="Run the DASD paper's probes and training on a model and task (default: the built-in "
    "world, the tiny model on Countdown). Every command writes a run directory under --runs-dir.",
)
analyze_app = typer.Typer(
    cls=_OneLineGroup,
    add_completion=False,
    no_args_is_help=True,
    help="Metrics, tables and figures computed from run directories only.",
)
console = Console()
terminal = Terminal(console)
#: The positional argument of every ``dasd-analyze`` command that reads runs.
RUN_DIRS = typer.Argument(..., help="Run directories, or parents of run directories.")


@probe_app.callback()
def _probe() -> None:
    """Run the DASD paper's probes and training."""
    from transformers.utils import logging as hf_logging

    # Our progress bars show the work; transformers' per-load bars would interleave with them.
    hf_logging.disable_progress_bar()


@analyze_app.callback()
def _analyze() -> None:
    """Analyse logged runs."""


def _run_dir(runs_dir: Path, name: str, default: str) -> Path:
    """``runs_dir/name`` (``name``: plain folder names, checked by ``runlog.run_path``), or
    ``runs_dir/default`` when no name is given."""
    from dasd.runlog import run_path

    return run_path(runs_dir, name or default)


@contextmanager
def _resumable(hint: str) -> Iterator[None]:
    """Ctrl-C -> one line on stderr saying how to resume (``hint``), exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        Console(stderr=True, soft_wrap=True).print(f"interrupted; {hint}", highlight=False)
        raise typer.Exit(130) from None


def _on_off(option: str, value: str) -> bool | None:
    """``on`` -> True, ``off`` -> False, empty -> None; anything else is a one-line error."""
    choices = {"on": True, "off": False, "": None}
    if value not in choices:
        raise ValueError(f"--{option} takes on or off, got {value!r}")
    return choices[value]


def _given_options(ctx: typer.Context, *, allowed: Iterable[str]) -> list[str]:
    """The options of this command given on the command line (or by environment), but for
    the parameters named in ``allowed``."""
    given = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name not in allowed and source is not None \
                and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.append(param.opts[0])
    return given


def _option(f: dataclasses.Field, hint: Any, probe: Probe) -> tuple[Any, Any] | None:
    """The command-line annotation and ``typer.Option`` of the options field ``f`` (the
    conventions in ``probes.registry``); None for a field that is not an option."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else \
        (... if f.default is dataclasses.MISSING else f.default)
    doc = field_docs(probe.options).get(f.name, "").replace("``", "")
    stated = getattr(probe.options, "option_default", lambda name: None)(f.name)
    help_text = f"{doc} ({stated})" if stated else doc
    flags = [f.metadata.get("flag", "--" + f.name.replace("_", "-")),
             *f.metadata.get("aliases", ())]
    panel = {"rich_help_panel": f.metadata.get("panel")}
    args = typing.get_args(hint)
    if hint in (str, int, float, Path):
        return hint, typer.Option(default, *flags, help=help_text, **panel)
    if hint is bool:
        flag = flags[0] if default is False else f"{flags[0]}/--no-{flags[0][2:]}"
        return bool, typer.Option(default, flag, help=help_text, **panel)
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        if inner is bool:
            shown = {True: "on", False: "off", None: ""}[default]
            return str, typer.Option(shown, *flags, help=f"{help_text} on|off; empty: None.",
                                     **panel)
        return typing.Optional[inner], typer.Option(default, *flags, help=help_text, **panel)
    if typing.get_origin(hint) is tuple and args == (str, ...):
        if f.metadata.get("repeatable"):
            return list[str], typer.Option(list(default), *flags, help=help_text, **panel)
        return str, typer.Option(",".join(default), *flags, help=f"{help_text} "
                                 "Comma-separated.", **panel)
    return None


def _as_field(name: str, value: Any, hint: Any) -> Any:
    """The command-line value of option ``name`` as the options field of annotation ``hint``
    takes it."""
    if hint == bool | None:
        return _on_off(name.replace("_", "-"), value)
    if typing.get_origin(hint) is tuple:
        parts = value.split(",") if isinstance(value, str) else value
        return tuple(part.strip() for part in parts if part.strip())
    return value


def probe_command(probe: Probe) -> click.Command:
    """The command of ``probe``: its options are the fields of its options dataclass plus
    ``--runs-dir`` and ``--name`` (``probes.registry``)."""
    hints = typing.get_type_hints(probe.options)
    params, annotations = [], {}
    for f in dataclasses.fields(probe.options):
        made = _option(f, hints[f.name], probe)
        if made is not None:
            annotations[f.name], option = made
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                            default=option, annotation=annotations[f.name]))
    resume = "; an existing one with the same settings is resumed" if probe.resumable else ""
    extra = {"runs_dir": (Path, typer.Option(Path("runs"), help="Parent directory of run "
                                                            "directories.")),
             "name": (str, typer.Option("", help=f"Run directory name (default: "
                                              f"{probe.default_name_text}){resume}."))}
    for key, (annotation, option) in extra.items():
        annotations[key] = annotation
        params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=annotation))

    def command(ctx: typer.Context, **values: Any) -> None:
        runs_dir, name = values.pop("runs_dir"), values.pop("name")
        options = probe.options(**{key: _as_field(key, value, hints[key])
                                   for key, value in values.items()})
        resume = getattr(options, "resume", None)
        takes = ("resume", *getattr(options, "resume_takes", ()))
        if resume is not None and (given := _given_options(ctx, allowed=takes)):
            raise ValueError(f"--resume continues {resume} with its logged settings and takes "
                             f"only {', '.join('--' + t.replace('_', '-') for t in takes[1:])}; "
                             f"drop {', '.join(given)}")
        run_dir = _run_dir(runs_dir, name, probe.default_name(options))
        hint = probe.interrupt_hint
        with nullcontext() if hint is None else _resumable(escape(hint(options, run_dir))):
            result = probe.run(options, run_dir, terminal)
        probe.show(options, result, run_dir, terminal)

    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=typer.Context)
    command.__signature__ = inspect.Signature([context, *params])  # type: ignore[attr-defined]
    command.__annotations__ = {"ctx": typer.Context, **annotations}
    command.__doc__ = probe.help
    app = typer.Typer(add_completion=False)
    app.command(probe.name)(command)
    return typer.main.get_command(app)


def _report_issues(issues: list, *, analysed: bool, what: str = "runs") -> None:
    """Print analysis issues one line each on stderr; exit 2 (bad input, as
    ``_one_line_errors``) when nothing could be analysed, said on the last issue's line (so
    one bad run gives one line)."""
    err = Console(stderr=True, soft_wrap=True)
    style = {"error": "bold red", "warning": "yellow", "note": "cyan"}
    lines = [(issue.level, issue.message) for issue in issues]
    if not analysed:
        closing = f"nothing could be analysed in these {what}"
        lines = [*lines[:-1], ("error", f"{lines[-1][1]}; {closing}")] if lines else \
            [("error", closing)]
    for level, message in lines:
        err.print(f"[{style.get(level, 'bold')}]{level}:[/] {escape(message)}", highlight=False)
    if not analysed:
        raise typer.Exit(2)


@analyze_app.command("passk")
def passk_cmd(
    runs: list[Path] = RUN_DIRS,
    ks: str = typer.Option(
        "", "--k", help="Comma-separated k values (default: 1, 2, 4, ... up to n, the samples "
        "per prompt)."
    ),
    split: str = typer.Option("eval", help="Rollout split to read."),
) -> None:
    """Unbiased Pass@k and Avg@n per run, task and logged step, from logged rollouts. Bad runs
    are reported one line each; exit 2 only when no run could be analysed."""
    from analysis.health import passk_report

    try:
        k_values = [int(x) for x in ks.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--k must be comma-separated integers, got {ks!r}") from None
    if any(k < 1 for k in k_values):
        raise ValueError(f"--k values must be >= 1, got {ks!r}")
    frame, issues = passk_report(runs, ks=k_values or None, split=split)
    if len(frame):
        passes = [c for c in frame.columns if c.startswith("pass@")]
        terminal.wide_table(
            f"Pass@k ({split} rollouts)",
            ["run", "task", "step", "prompts", "n", "Avg@n", *(f"Pass@{c[5:]}" for c in passes)],
            [[row.run, str(row.task or "–"), str(row.step), str(row.n_prompts), str(row.n),
              f"{row.avg_at_n:.3f}", *(cell(float(v)) for v in row[6:])]
             for row in frame.itertuples(index=False)], left=2,
        )
    _report_issues(issues, analysed=len(frame) > 0)


@analyze_app.command("health")
def health_cmd(
    runs: list[Path] = RUN_DIRS,
    step: int = typer.Option(None, "--step", min=0, help="Only this logged step."),
    last: bool = typer.Option(False, "--last", help="Only each run's last logged step."),
    split: str = typer.Option("eval", help="Rollout split to read."),
    out: Path = typer.Option(None, "--out", help="Also write the rows to this CSV file."),
    markers: str = typer.Option(
        "", help="Comma-separated epistemic markers (default: dasd.markers' list)."
    ),
) -> None:
    """Reasoning health (paper Table 3 metrics, appendix F) per run and logged step: Avg@k,
    Pass@k, StepAcc, FES, CSR, E(y) density, revision rate, Dist-3, length. Bad runs are
    reported one line each; exit 2 only when nothing could be analysed."""
    from analysis.health import analyze_runs
    from dasd.health import DEFAULT_MARKERS, HEALTH_COLUMNS
    from probes.evaluate import show_mechanism

    if step is not None and last:
        raise ValueError("give --step S or --last, not both")
    marker_list = [m.strip() for m in markers.split(",") if m.strip()] or list(DEFAULT_MARKERS)
    report = analyze_runs(runs, step=step, last=last, split=split, markers=marker_list)
    rows = report.rows[list(HEALTH_COLUMNS)]
    if len(rows):
        heads = {"n_prompts": "prompts", "n_responses": "resp", "avg_at_k": "Avg@k",
                 "pass_at_k": "Pass@k", "step_acc": "StepAcc", "fes": "FES", "csr": "CSR",
                 "ey_density": "E(y)", "rev_rate": "RevRate", "dist3": "Dist-3",
                 "length_tokens": "length"}
        formats = {"fes": ".2f", "ey_density": ".2f", "length_tokens": ".1f"}
        terminal.wide_table(
            f"Reasoning health ({split} rollouts)", [heads.get(c, c) for c in HEALTH_COLUMNS],
            [[cell(v, formats.get(col, ".3f")) for col, v in zip(HEALTH_COLUMNS, row)]
             for row in rows.itertuples(index=False)],
        )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            rows.to_csv(out, index=False)
            console.print(f"wrote {escape(str(out))}", highlight=False, soft_wrap=True)
    show_mechanism(terminal, {info.label: info.path for info in report.runs})
    _report_issues(issues=report.issues, analysed=report.analysed)


@analyze_app.command("tables")
def tables_cmd(
    runs: list[Path] = RUN_DIRS,
    out: Path = typer.Option(Path("paper-tables"), help="Folder for the Markdown, LaTeX and CSV "
                             "files."),
) -> None:
    """The paper's tables that the runs support (Table 1 from `dasd-probe prefix-intervene`
    runs, Tables 2/6 and 7 from eval runs, Table 3 from reasoning health, Tables 5 and 11-14
    from `dasd-probe ablate` directories; runs differing only in seed pooled as mean ± 95%
    half-width), each followed by a "vs paper" table (the paper's numbers beside ours with our
    intervals, and agreement marks: sign for Table 1, ordering of methods or variants for the
    others), as Markdown on the terminal and Markdown, LaTeX and CSV files (byte-identical on
    a rerun); names the tables without data and the runs they need."""
    from analysis.health import analyze_runs
    from analysis.tables import build_tables, write_tables

    report = analyze_runs(runs, last=True, split="eval")
    if report.analysed:
        tables, missing = build_tables(report)
        for part in (p for table in tables for p in (table, table.versus) if p is not None):
            console.print(part.to_markdown(), markup=False, highlight=False, emoji=False,
                          soft_wrap=True)
        for line in missing:
            console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        written = write_tables(tables, missing, out)
        console.print(f"wrote {len(written)} files to {escape(str(out))}", highlight=False,
                      soft_wrap=True)
    _report_issues(report.issues, analysed=report.analysed)


@analyze_app.command("figures")
def figures_cmd(
    runs: list[Path] = RUN_DIRS,
    out: Path = typer.Option(Path("paper-figures"), help="Folder for the PNG and PDF files."),
) -> None:
    """Every paper figure the runs support, as PNG and PDF (byte-identical on a rerun); names the
    figures without data and the runs they need. Exit 1 when no figure has data."""

    from figures import write_figures

    outcomes = write_figures(runs, out)
    for outcome in outcomes:
        name = escape(outcome.spec.name)
        if outcome.files:
            files = ", ".join(escape(str(p)) for p in outcome.files)
            console.print(f"[green]wrote[/] {name}: {files}", soft_wrap=True, highlight=False)
        else:
            console.print(
                f"[yellow]no data[/] {name}: {escape(outcome.reason or '')}; needs "
                f"{escape(outcome.spec.needs)}", soft_wrap=True, highlight=False,
            )
    if not any(outcome.files for outcome in outcomes):
        Console(stderr=True).print("[bold red]error:[/] no paper figure has data in these runs")
        raise typer.Exit(1)


@analyze_app.command("report")
def report_cmd(
    runs: list[Path] = RUN_DIRS,
    out: Path = typer.Option(Path("report.html"), "--out", help="The HTML file to write."),
    audit_rollouts: int = typer.Option(
        4, min=0, help="Rollouts per run shown token by token (half correct, half not)."
    ),
) -> None:
    """One self-contained HTML audit page: runs and configs, tables, figures, and rollouts token by
    token colored by omega (attraction / repulsion) or entropy."""
    from figures.report import write_report

    path = write_report(runs, out, audit_rollouts=audit_rollouts)
    console.print(f"report: {path}", soft_wrap=True, highlight=False, markup=False)


@analyze_app.command("judge-eval")
def judge_eval_cmd(
    judge: str = typer.Option(..., help="Step judge: prm, critic, oracle or constant-correct."),
    model: str = typer.Option("", help="The judge's checkpoint directory or hub id (prm, critic)."),
    subsets: list[str] = typer.Option(
        [], "--subset", help="ProcessBench subset, repeatable: gsm8k, math, olympiadbench, "
        "omnimath (default: all four).",
    ),
    limit: int = typer.Option(
        0, min=0, help="Score N rows of each subset, spread evenly over it (0: all)."
    ),
    processbench: str = typer.Option(
        "", help="Folder holding ProcessBench's gsm8k.json ... (default: <data dir>/processbench)."
    ),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu, cuda, cuda:N."),
    batch_size: int = typer.Option(4, min=1, help="Solutions per judge forward pass or generation batch."),
    max_new_tokens: int = typer.Option(2048, min=1, help="Critique length limit (critic)."),
    trust_remote_code: bool = typer.Option(
        False, help="Allow a PRM's own modeling code (needed by Qwen2.5-Math-PRM-7B)."
    ),
    out: str = typer.Option("", help="Also write the scores and per-row predictions to this JSON file."),
) -> None:
    """A step judge's ProcessBench score: accuracy on the erroneous solutions (earliest wrong
    step found), on the correct ones (none flagged), and their harmonic mean F1."""
    import json

    from analysis.judges import (
        PROCESSBENCH_SUBSETS,
        JudgeOptions,
        build_judge,
        evaluate_judge,
        load_processbench,
    )

    options = JudgeOptions(
        model=model, device=device, batch_size=batch_size, max_new_tokens=max_new_tokens,
        trust_remote_code=trust_remote_code,
    )
    rows = {
        subset: load_processbench(subset, directory=processbench or None, limit=limit or None)
        for subset in (subsets or PROCESSBENCH_SUBSETS)
    }
    step_judge = build_judge(judge, options, [r for subset_rows in rows.values() for r in subset_rows])
    total = sum(len(subset_rows) for subset_rows in rows.values())
    with terminal.bar(f"judging {total} solutions", total) as advance:
        evaluation = evaluate_judge(step_judge, rows, chunk_size=8 * batch_size, progress=advance)
    scores = [[score.subset, str(score.n), str(score.n_error), str(score.n_correct),
               f"{score.error_acc:.4f}", f"{score.correct_acc:.4f}", f"{score.f1:.4f}"]
              for score in evaluation.scores]
    if len(evaluation.scores) > 1:
        scores.append(["average", "", "", "", "", "", f"{evaluation.average_f1:.4f}"])
    terminal.wide_table(f"ProcessBench: {judge}" + (f" ({model})" if model else ""),
                        ["subset", "rows", "erroneous", "correct", "acc err", "acc ok", "F1"],
                        scores)
    if out:
        record = {"judge": judge, "model": model, "limit": limit, **evaluation.to_dict(rows)}
        Path(out).write_text(json.dumps(record, indent=1) + "\n")
        console.print(f"wrote {out}", soft_wrap=True, highlight=False, markup=False)


@analyze_app.command("import")
def import_cmd(
    fmt: str = typer.Argument(..., metavar="trl|verl", help="Log format: trl (GRPOTrainer "
                              "completions tables) or verl (rollout dumps)."),
    source: Path = typer.Argument(..., help="TRL's output_dir, or verl's trainer.rollout_data_dir."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where to create the run directory."),
    name: str = typer.Option("", help="Run directory name (default: FORMAT-<source folder name>)."),
    split: str = typer.Option("train", help="Split of the logged rollouts: train, or eval for "
                              "validation logs."),
    tokenizer: str = typer.Option("", help="Tokenizer (name or directory) that counts response "
                                  "tokens when the log has no token_ids column."),
    reward_columns: list[str] = typer.Option(
        [], "--reward-column", help="trl: a reward-function column, repeatable (default: every "
        "float column that is not a known one)."),
    correct_threshold: float = typer.Option(0.5, help="correct = reward > this, when the log has "
                                            "no correct/acc field."),
    task: str = typer.Option("", help="Task for the manifest (countdown: health judges steps "
                             "from cd-... prompt ids)."),
    method: str = typer.Option("", help="Method for the manifest (e.g. dasd, grpo)."),
    model: str = typer.Option("", help="Model for the manifest."),
) -> None:
    """Convert a TRL or verl rollout log into a run directory, so that health, tables and figures
    read runs made with those trainers."""
    from analysis.importers import import_log

    if reward_columns and fmt != "trl":
        raise ValueError("--reward-column applies to trl logs only")
    options: dict[str, object] = {
        "split": split, "correct_threshold": correct_threshold, "tokenizer": tokenizer or None,
        "method": method or None, "model": model or None, "task": task or None,
    }
    if reward_columns:
        options["reward_columns"] = reward_columns
    dest = _run_dir(runs_dir, name, f"{fmt}-{source.resolve().name}")
    imported = import_log(fmt, source, dest, **options)
    console.print(f"imported {imported.rows} rollouts at {len(imported.steps)} steps into "
                  f"{escape(str(imported.path))}", soft_wrap=True, highlight=False)
