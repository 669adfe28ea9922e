"""Command-line entry points: ``dasd-probe`` (compute, writes run dirs) and ``dasd-analyze``
(reads run dirs). Thin: parse options, call library functions, print results."""

from __future__ import annotations

import errno
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperGroup

if TYPE_CHECKING:
    from probes.reproduce import ReproduceConfig, Stage
    from probes.validate import ValidateConfig


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


probe_app = typer.Typer(
    cls=_OneLineGroup,
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


@probe_app.callback()
def _probe() -> None:
    """Run the DASD paper's probes and training."""
    from transformers.utils import logging as hf_logging

    # Our progress bars show the work; transformers' per-load bars would interleave with them.
    hf_logging.disable_progress_bar()


@analyze_app.callback()
def _analyze() -> None:
    """Analyse logged runs."""


def _run_name(kind: str, model: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-")
    return f"{kind}-{slug}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def _run_dir(runs_dir: Path, name: str, default: str) -> Path:
    """``runs_dir/name`` (``name``: plain folder names, checked by ``runlog.run_path``), or
    ``runs_dir/default`` when no name is given."""
    from dasd.runlog import run_path

    return run_path(runs_dir, name or default)


def _print_arms(title: str, caption: str, labels: dict[str, str], result: Any,
                run_dir: Path) -> None:
    """A training probe's result: one table row per (arm, evaluation step) with the ``labels``
    columns of ``result.summary``, then what was done to each arm and the probe directory."""
    formats = {"eval/ey_density": ".2f", "eval/length_tokens": ".1f"}
    table = Table(title=title, caption=caption)
    table.add_column("arm")
    table.add_column("step", justify="right")
    for label in labels.values():
        table.add_column(label, justify="right")
    for arm, rows in result.summary.groupby("arm", sort=False):
        for row in rows.to_dict("records"):
            table.add_row(arm, str(row["step"]),
                          *(_cell(float(row.get(key, float("nan"))), formats.get(key, ".3f"))
                            for key in labels))
        table.add_section()
    console.print(table)
    for arm, action in result.actions.items():
        console.print(f"{arm}: {action}", highlight=False)
    console.print(f"probe directory: {escape(str(run_dir))}", highlight=False, soft_wrap=True)


@contextmanager
def _resumable(hint: str) -> Iterator[None]:
    """Ctrl-C -> one line on stderr saying how to resume (``hint``), exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        Console(stderr=True, soft_wrap=True).print(f"interrupted; {hint}", highlight=False)
        raise typer.Exit(130) from None


@contextmanager
def _progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (with time left); yields ``advance(n)``."""
    columns = (*Progress.get_default_columns(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}")
    console.print(table)


@probe_app.command("reproduce")
def reproduce_cmd(
    budget: str = typer.Option("quick", help="quick (about 10 minutes on a 2-core CPU), default "
                               "(every probe's default size, about 45 minutes there) or full "
                               "(larger, 3 seeds; for a GPU)."),
    seeds: int = typer.Option(None, help="Seeds of the training stages (default: the "
                              "budget's, 1 for quick and default, 3 for full)."),
    seed: int = typer.Option(0, help="First seed."),
    model: str = typer.Option("tiny", help="'tiny' (built-in), a local checkpoint dir, or a "
                              "hub name."),
    task: str = typer.Option("countdown", help="Registered task name."),
    runs_dir: Path = typer.Option(Path("runs"), help="Parent directory of run directories."),
    name: str = typer.Option("", help="Parent run directory name (default: "
                             "reproduce-<budget>); rerunning with the same settings resumes "
                             "it."),
    calibration: Path = typer.Option(None, help="calibration.csv of dasd-probe validate: the "
                                     "findings show each claim's power on the positive "
                                     "control (default: <runs-dir>/validate-<budget>/"
                                     "calibration.csv when it exists)."),
) -> None:
    """The paper on one model and task, in one command: base evaluation, GRPO / OPSD / DASD
    training and their evaluations, the three probes and RQ1-RQ3, under one parent directory;
    then the tables (paper beside ours), figures, findings (reproduced / not reproduced, by a
    stated rule) and the HTML report. Interrupted, it resumes where it stopped."""
    from probes.reproduce import ReproduceConfig, plan, run_reproduce

    run_dir = _run_dir(runs_dir, name, f"reproduce-{budget}")
    with _one_line_errors():
        cfg = ReproduceConfig(budget=budget, seeds=seeds, seed=seed, model=model, task=task)
        stages = plan(cfg)
        console.print(f"parent directory: {escape(str(run_dir))} ({len(stages)} stages, "
                      f"budget {cfg.budget}, {cfg.seeds} seed(s))", highlight=False,
                      soft_wrap=True)
        result = _run_shown(run_dir, stages, cfg, lambda display: run_reproduce(
            cfg, run_dir, stages=stages, calibration=calibration, display=display))
    from analysis.findings import findings

    for finding in findings([run_dir]):
        console.print(f"- {finding.line()}", highlight=False, soft_wrap=True, markup=False)
    for key, path in result.outputs.items():
        console.print(f"{key}: {escape(str(path))}", highlight=False, soft_wrap=True)


class _ReproduceDisplay:
    """``probes.reproduce.Display`` on a rich progress bar: the stage, the run at work and the
    time left from the budget's per-stage estimates."""

    def __init__(self, bar: Progress, stages: list[Stage],
                 cfg: ReproduceConfig | ValidateConfig) -> None:
        self.bar, self.stages = bar, stages
        self.seconds = [cfg.sizes.seconds.get(s.kind, 60.0) for s in stages]
        self.task = bar.add_task("starting", total=sum(self.seconds), run="")
        self.index = 0

    def stage(self, index: int, stage: Stage, action: str) -> None:
        self.index = index
        self.bar.update(self.task, completed=sum(self.seconds[:index]),
                        description=f"stage {index + 1}/{len(self.stages)} {stage.name} "
                                    f"({action})", run="")

    def progress(self, run: str, done: float, total: float) -> None:
        share = min(done / total, 1.0) if total else 0.0
        self.bar.update(self.task, run=run, completed=sum(self.seconds[:self.index])
                        + share * self.seconds[self.index])

    def finished(self, index: int, stage: Stage) -> None:
        self.bar.update(self.task, completed=sum(self.seconds[:index + 1]))


def _run_shown(run_dir: Path, stages: list[Stage], cfg: ReproduceConfig | ValidateConfig,
               run: Callable[[_ReproduceDisplay], Any]) -> Any:
    """``run(display)`` under a progress bar of ``stages``; Ctrl-C says how to resume."""
    with _resumable(f"the same command resumes it ({escape(str(run_dir))})"):
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      TextColumn("left"), TimeRemainingColumn(),
                      TextColumn("{task.fields[run]}"), console=console) as bar:
            return run(_ReproduceDisplay(bar, stages, cfg))


@probe_app.command("validate")
def validate_cmd(
    budget: str = typer.Option("quick", help="quick (smoke sizes, within 10 minutes on a "
                               "2-core CPU) or default (every probe's default size, within "
                               "an hour there); model builds excluded."),
    seeds: int = typer.Option(None, help="Seeds of sign-flip and arm-flip (default: the "
                              "budget's, 1)."),
    worlds: str = typer.Option("tiny-planted,tiny-null", help="The positive control, then the "
                               "negative control, comma-separated: built-in control worlds, "
                               "'tiny' as a stand-in, or checkpoint directories."),
    runs_dir: Path = typer.Option(Path("runs"), help="Parent directory of run directories."),
    name: str = typer.Option("", help="Parent run directory name (default: "
                             "validate-<budget>); rerunning with the same settings resumes "
                             "it."),
) -> None:
    """Each probe's power on control worlds: sign-flip, entropy-tv, prefix-intervene, arm-flip
    and causal on a positive control (the paper's mechanisms planted) and a negative control (a
    teacher that knows nothing), under one parent directory; then calibration.csv / .md, one
    row per (probe claim, world): detected / missed on the positive control, clean / false
    positive on the negative one. Controls, not reproductions. Interrupted, it resumes where
    it stopped."""
    from probes.validate import ValidateConfig, plan, run_validate

    run_dir = runs_dir / (name or f"validate-{budget}")
    with _one_line_errors():
        cfg = ValidateConfig(budget=budget, seeds=seeds,
                             worlds=tuple(w.strip() for w in worlds.split(",")))
        stages = plan(cfg)
        console.print(f"parent directory: {escape(str(run_dir))} ({len(stages)} stages, "
                      f"budget {cfg.budget}, {cfg.seeds} seed(s)); positive control "
                      f"{escape(cfg.worlds[0])}, negative control {escape(cfg.worlds[1])}",
                      highlight=False, soft_wrap=True)
        result = _run_shown(run_dir, stages, cfg, lambda display: run_validate(
            cfg, run_dir, stages=stages, display=display))
    from analysis.calibration import summary_lines

    for line in summary_lines(result.rows):
        console.print(f"- {line}", highlight=False, soft_wrap=True, markup=False)
    for key, path in result.outputs.items():
        console.print(f"{key}: {escape(str(path))}", highlight=False, soft_wrap=True)


@probe_app.command("eval")
def eval_cmd(
    model: str = typer.Option("tiny", help="'tiny' (built-in), a local checkpoint dir, or a hub name."),
    task: str = typer.Option("countdown", help="Registered task name."),
    benchmark: str = typer.Option(
        "", help="Benchmark of a task that has several (math: aime24, aime25, hmmt25, math500, "
        "minerva, olympiadbench, amc23, a .jsonl/.json/.parquet file, or hub:NAME).",
    ),
    n_prompts: int = typer.Option(64, help="Held-out problems to evaluate."),
    k: int = typer.Option(16, help="Samples per problem (Avg@k, Pass@k)."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (paper: 1.0)."),
    top_p: float = typer.Option(0.9, help="Nucleus top-p (paper: 0.9)."),
    max_new_tokens: int = typer.Option(160, help="Generation limit per response."),
    batch_size: int = typer.Option(128, help="Prompts per generation micro-batch."),
    teacher: bool = typer.Option(True, help="Also score the privileged teacher's log-probs."),
    score_batch_size: int = typer.Option(32, help="Responses per scoring forward pass (lower "
                                         "it for long responses: 4 at 8,192 tokens)."),
    rollout_engine: str = typer.Option("hf", help="Sampler: hf, or vllm (needs a CUDA GPU and "
                                       "the vllm extra of dasd)."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
    dtype: str = typer.Option("auto", help="Weights' dtype: auto (bf16 on CUDA, float32 on "
                              "CPU), float32, bfloat16 or checkpoint; evaluate a base model and "
                              "its trained checkpoints at the same one."),
    seed: int = typer.Option(0, help="Seed for problem sampling and generation."),
    thinking: str = typer.Option("", help="on|off: the chat template's enable_thinking (math "
                                 "task, e.g. Qwen3; on: the answer is read after </think>); "
                                 "empty: the template's default."),
    runs_dir: Path = typer.Option(Path("runs"), help="Parent directory of run directories."),
    name: str = typer.Option("", help="Run directory name (default: eval-<model>-<time>)."),
) -> None:
    """Avg@k / Pass@k of a model on a task's held-out problems; logs rollouts with per-token
    entropy and student/teacher log-probs."""
    from probes.evaluate import EvalConfig, run_eval

    cfg = EvalConfig(
        model=model, task=task, benchmark=benchmark, n_prompts=n_prompts, k=k,
        temperature=temperature,
        top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size,
        teacher=teacher, score_batch_size=score_batch_size, rollout_engine=rollout_engine,
        device=device, dtype=dtype, seed=seed, thinking=_on_off("thinking", thinking),
    )
    run_dir = _run_dir(runs_dir, name, _run_name("eval", model))
    with _progress_bar(f"sampling {n_prompts} x {k}", n_prompts * k) as step:
        _, summary = run_eval(cfg, run_dir, progress=step)
    _print_metrics(f"{model} on {task} ({n_prompts} prompts x {k})",
                   {key: v for key, v in summary.items() if not key.startswith("mechanism/")})
    _print_mechanism({run_dir.name: run_dir})
    console.print(f"run directory: {run_dir}")


def _on_off(option: str, value: str) -> bool | None:
    """``on`` -> True, ``off`` -> False, empty -> None; anything else is a one-line error."""
    choices = {"on": True, "off": False, "": None}
    if value not in choices:
        raise ValueError(f"--{option} takes on or off, got {value!r}")
    return choices[value]


def _parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON when it parses (numbers, booleans, objects),
    else kept as a string."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (VALUE as JSON), got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _given_options(ctx: typer.Context, *, allowed: set[str]) -> list[str]:
    """The options of this command given on the command line (or by environment), but for
    the parameters named in ``allowed``."""
    given = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name not in allowed and source is not None \
                and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.append(param.opts[0])
    return given


@probe_app.command("train")
def train_cmd(
    ctx: typer.Context,
    method: str = typer.Option("dasd", help="Method: grpo, dasd, conformity, novelty, hepo, "
                               "opsd, rlsd, sdpo, srpo."),
    model: str = typer.Option("tiny", help="'tiny' (built-in), a local checkpoint dir, or a hub name."),
    task: str = typer.Option("countdown", help="Registered task name."),
    steps: int = typer.Option(None, help="Policy updates (default 60); with --resume, extends "
                              "the run to this many."),
    beta: float = typer.Option(0.1, help="Weight of the teacher term (eq. 5/8)."),
    rho: float = typer.Option(0.2, help="Router quantile (paper: 0.2)."),
    lr: float = typer.Option(1e-4, help="Peak learning rate (cosine decay)."),
    eval_every: int = typer.Option(10, help="Held-out evaluation every N updates (0: first/last only)."),
    seed: int = typer.Option(0, help="Seed of data order, sampling and evaluation."),
    report_to: str = typer.Option("none", help="Also stream metrics to tensorboard or wandb "
                                  "(optional extras); metrics.jsonl is written either way."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Any other TrainConfig field as KEY=VALUE (JSON values), e.g. "
        "--set group_size=4 --set 'method_options={\"direction\": \"hard\"}'."),
    runs_dir: Path = typer.Option(Path("runs"), help="Parent directory of run directories."),
    name: str = typer.Option("", help="Run directory name (default: train-<method>-<time>)."),
    resume: Path = typer.Option(None, help="Continue this run directory from its newest "
                                "checkpoint (its logged config is used; --steps extends it)."),
) -> None:
    """Train with the one core trainer (GRPO backbone; the method shapes per-token advantages)
    and log metrics, rollouts, held-out evaluations and checkpoints to a run directory."""
    from dasd import trainer

    with _one_line_errors():
        if resume is not None:
            if given := _given_options(ctx, allowed={"resume", "steps"}):
                raise ValueError(f"--resume continues {resume} with its logged settings and takes "
                                 f"only --steps; drop {', '.join(given)}")
            run = trainer.Trainer.resume(resume, steps=steps)
        else:
            values = dict(method=method, model=model, task=task, beta=beta, rho=rho, lr=lr,
                          eval_every=eval_every, seed=seed, report_to=report_to)
            if steps is not None:
                values["steps"] = steps
            values.update(_parse_overrides(overrides))
            cfg = trainer.TrainConfig.from_dict(values)
            run = trainer.Trainer.start(cfg, _run_dir(runs_dir, name,
                                                      _run_name(f"train-{method}", model)))
        cfg = run.cfg
        columns = (*Progress.get_default_columns(), TimeElapsedColumn(),
                   TextColumn("{task.fields[info]}"))
        with Progress(*columns, console=console) as bar:
            task_id = bar.add_task(f"{cfg.method} on {cfg.task}", total=cfg.steps,
                                   completed=run.start_step, info="")
            latest: dict[str, float] = {}

            def show(step: int, metrics: dict[str, float]) -> None:
                latest.update(metrics)
                acc = next((v for k, v in latest.items() if k.startswith("eval/avg_at_")), None)
                info = f"reward {latest.get('train/reward', float('nan')):.3f}"
                if acc is not None:
                    info += f"  eval Avg@{cfg.eval_k} {acc:.3f}"
                bar.update(task_id, completed=step, info=info)

            with _resumable(f"continue it with: dasd-probe train --resume "
                            f"{escape(str(run.run_dir))}"):
                run_dir = run.run(show)
    console.print(f"run directory: {run_dir}")


@probe_app.command("sign-flip")
def sign_flip_cmd(
    arms: str = typer.Option("grpo,conformity,novelty", help="Comma-separated arms: grpo "
                             "(Base), conformity (omega = +1), novelty (omega = -1)."),
    model: str = typer.Option("tiny", help="'tiny' (built-in), a local checkpoint dir, or a "
                              "hub name."),
    task: str = typer.Option("countdown", help="Registered task name."),
    steps: int = typer.Option(None, help="Policy updates per arm (default 40; --quick: 4)."),
    eval_every: int = typer.Option(None, help="Held-out evaluation every N updates "
                                   "(default 5; --quick: 2)."),
    k: int = typer.Option(None, "--k", help="Samples per held-out prompt, for Avg@k and Pass@k "
                          "(default 16; --quick: 8)."),
    eval_prompts: int = typer.Option(None, help="Held-out prompts, the same for every arm "
                                     "(default 32; --quick: 16)."),
    prompts_per_step: int = typer.Option(None, help="Training prompts per update "
                                         "(default 16; --quick: 8)."),
    beta: float = typer.Option(None, help="Teacher-term weight, shared by the arms "
                               "(default: the trainer's, 0.1)."),
    seed: int = typer.Option(0, help="Seed of data order, sampling and evaluation (all arms)."),
    quick: bool = typer.Option(False, "--quick", help="A 2-minute smoke version (smaller sizes)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Any other TrainConfig field shared by the arms as KEY=VALUE (JSON "
        "values), e.g. --set lr=3e-4."),
    runs_dir: Path = typer.Option(Path("runs"), help="Parent directory of run directories."),
    name: str = typer.Option("", help="Probe directory name (default: "
                             "sign-flip-<model>-<time>); an existing one with the same "
                             "settings is resumed."),
) -> None:
    """Probe 1 (Fig. 2): Base (GRPO), Conformity and Novelty trained from the same model, data
    order and seed, each evaluated every N updates on the same held-out prompts; one train run
    per arm under one probe directory, a summary, and the final table."""
    from probes.sign_flip import (
        ARM_LABELS,
        PAPER_FINDING,
        headline_columns,
        run_sign_flip,
        sign_flip_config,
    )

    values = {"model": model, "task": task, "seed": seed, "steps": steps,
              "eval_every": eval_every, "eval_k": k, "eval_prompts": eval_prompts,
              "prompts_per_step": prompts_per_step, "beta": beta}
    values = {key: value for key, value in values.items() if value is not None}
    values.update(_parse_overrides(overrides))
    run_dir = _run_dir(runs_dir, name, _run_name("sign-flip", model))
    with _one_line_errors():
        cfg = sign_flip_config(arms=[a.strip() for a in arms.split(",") if a.strip()],
                               quick=quick, **values)
        eval_k = cfg.train["eval_k"]
        console.print(f"probe directory: {escape(str(run_dir))}", highlight=False, soft_wrap=True)
        columns = (*Progress.get_default_columns(), TimeElapsedColumn(),
                   TextColumn("{task.fields[info]}"))
        with _resumable(f"resume with the same options and --name {escape(run_dir.name)}"):
            with Progress(*columns, console=console) as bar:
                bars: dict[str, TaskID] = {}

                def show(arm: str, step: int, metrics: dict[str, float]) -> None:
                    if arm not in bars:
                        bars[arm] = bar.add_task(ARM_LABELS[arm], total=cfg.train["steps"],
                                                 info="")
                    info = {}
                    if f"eval/avg_at_{eval_k}" in metrics:
                        info["info"] = f"eval Avg@{eval_k} {metrics[f'eval/avg_at_{eval_k}']:.3f}"
                    bar.update(bars[arm], completed=step, **info)

                result = run_sign_flip(cfg, run_dir, progress=show)
    _print_arms(f"Sign-flip probe (Fig. 2): {cfg.train['eval_prompts']} held-out prompts x "
                f"{eval_k} samples", PAPER_FINDING, headline_columns(eval_k), result, run_dir)


@probe_app.command("arm-flip")
def arm_flip_cmd(
    arms: str = typer.Option("none,low,high", help="Comma-separated arms continued from the "
                             "flip: none (unperturbed DASD), low (omega > 0 tokens become "
                             "repulsive), high (omega < 0 tokens become attractive)."),
    flip_at: int = typer.Option(None, help="Update S at which the arms branch off the DASD run "
                                "(default: half of --steps)."),
    model: str = typer.Option("tiny", help="'tiny' (built-in), a local checkpoint dir, or a "
                              "hub name."),
    task: str = typer.Option("countdown", help="Registered task name."),
    steps: int = typer.Option(None, help="Total updates T, base plus arm "
                              "(default 40; --quick: 4)."),
    eval_every: int = typer.Option(None, help="Held-out evaluation every N updates "
                                   "(default 5; --quick: 1)."),
    k: int = typer.Option(None, "--k", help="Samples per held-out prompt "
                          "(default 16; --quick: 8)."),
    eval_prompts: int = typer.Option(None, help="Held-out prompts, the same for every run "
                                     "(default 32; --quick: 16)."),
    prompts_per_step: int = typer.Option(None, help="Training prompts per update "
                                         "(default 16; --quick: 8)."),
    beta: float = typer.Option(None, help="Teacher-term weight (default: the trainer's, 0.1)."),
    seed: int = typer.Option(0, help="Seed of data order, sampling and evaluation (all runs)."),
    quick: bool = typer.Option(False, "--quick", help="A smoke version (smaller sizes)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Any other TrainConfig field shared by all runs as KEY=VALUE (JSON "
        "values), e.g. --set lr=3e-4 (the probe's default min_lr_ratio is 1: constant lr)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Parent directory of run directories."),
    name: str = typer.Option("", help="Probe directory name (default: arm-flip-<model>-<time>); "
                             "an existing one with the same settings is resumed."),
) -> None:
    """RQ1 (Fig. 6b/6c): DASD trained to update S, then continued to T three ways from the
    same checkpoint and optimizer state: unperturbed, low-entropy arm flipped, high-entropy arm
    flipped; StepAcc and E(y) on the same held-out prompts every N updates."""
    from probes.arm_flip import (
        ARM_LABELS,
        PAPER_FINDING,
        arm_flip_config,
        headline_columns,
        run_arm_flip,
    )

    values = {"model": model, "task": task, "seed": seed, "steps": steps,
              "eval_every": eval_every, "eval_k": k, "eval_prompts": eval_prompts,
              "prompts_per_step": prompts_per_step, "beta": beta}
    values = {key: value for key, value in values.items() if value is not None}
    values.update(_parse_overrides(overrides))
    run_dir = _run_dir(runs_dir, name, _run_name("arm-flip", model))
    with _one_line_errors():
        cfg = arm_flip_config(arms=[a.strip() for a in arms.split(",") if a.strip()],
                              flip_at=flip_at, quick=quick, **values)
        eval_k = cfg.train["eval_k"]
        console.print(f"probe directory: {escape(str(run_dir))}", highlight=False, soft_wrap=True)
        columns = (*Progress.get_default_columns(), TimeElapsedColumn(),
                   TextColumn("{task.fields[info]}"))
        with _resumable(f"resume with the same options and --name {escape(run_dir.name)}"):
            with Progress(*columns, console=console) as bar:
                bars: dict[str, TaskID] = {}

                def show(arm: str, step: int, metrics: dict[str, float]) -> None:
                    if arm not in bars:
                        bars[arm] = bar.add_task(ARM_LABELS[arm], total=cfg.steps, info="")
                    info = {}
                    if "eval/step_acc" in metrics:
                        info["info"] = (f"StepAcc {metrics['eval/step_acc']:.3f}  "
                                        f"E(y) {metrics.get('eval/ey_density', math.nan):.2f}")
                    bar.update(bars[arm], completed=step, **info)

                result = run_arm_flip(cfg, run_dir, progress=show)
    _print_arms(f"Arm-flip probe (Fig. 6b/6c): flip at update {cfg.flip_at} of {cfg.steps}, "
                f"{cfg.train['eval_prompts']} held-out prompts x {eval_k}", PAPER_FINDING,
                headline_columns(eval_k), result, run_dir)


@probe_app.command("ablate")
def ablate_cmd(
    panel: str = typer.Option(..., help="Design choice to ablate: routing (Table 12), direction "
                              "(Table 13), gate (Table 14) or quantile (Table 11)."),
    variants: str = typer.Option("", help="Comma-separated rows to train (default: all of the "
                                 "panel's), e.g. --variants position,entropy."),
    seeds: int = typer.Option(None, help="Repeats of each row at consecutive seeds, for a "
                              "confidence interval (default 3; --quick: 2)."),
    model: str = typer.Option("tiny", help="'tiny' (built-in), a local checkpoint dir, or a "
                              "hub name."),
    task: str = typer.Option("countdown", help="Registered task name."),
    steps: int = typer.Option(None, help="Policy updates per run (default 20; --quick: 2)."),
    k: int = typer.Option(None, "--k", help="Samples per held-out prompt, for Avg@k and Pass@k "
                          "(default 8; --quick: 4)."),
    eval_prompts: int = typer.Option(None, help="Held-out prompts of the final evaluation "
                                     "(default 32; --quick: 8)."),
    prompts_per_step: int = typer.Option(None, help="Training prompts per update "
                                         "(default 16; --quick: 4)."),
    beta: float = typer.Option(None, help="Teacher-term weight, shared by the rows "
                               "(default: the trainer's, 0.1)."),
    seed: int = typer.Option(0, help="First seed of data order, sampling and evaluation."),
    quick: bool = typer.Option(False, "--quick", help="A smoke version (smaller sizes)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Any other TrainConfig field shared by the rows as KEY=VALUE (JSON "
        "values), e.g. --set lr=3e-4."),
    runs_dir: Path = typer.Option(Path("runs"), help="Parent directory of run directories."),
    name: str = typer.Option("", help="Probe directory name (default: "
                             "ablate-<panel>-<model>-<time>); an existing one with the same "
                             "settings is resumed."),
) -> None:
    """RQ3 (Table 5, Tables 11-14): DASD trained once per row of a design-space panel, all else
    fixed, each row repeated over seeds; the final evaluation's Avg@k, Pass@k and E(y) as mean
    and 95% interval across seeds, and the paired difference from DASD's default row.
    `dasd-analyze tables` puts the runs into the paper's tables."""
    from probes.ablate import PANELS, ablate_config, result_table, run_ablate

    values = {"model": model, "task": task, "seed": seed, "steps": steps, "eval_k": k,
              "eval_prompts": eval_prompts, "prompts_per_step": prompts_per_step, "beta": beta}
    values = {key: value for key, value in values.items() if value is not None}
    values.update(_parse_overrides(overrides))
    run_dir = _run_dir(runs_dir, name, _run_name(f"ablate-{panel}", model))
    with _one_line_errors():
        cfg = ablate_config(panel, variants=[v.strip() for v in variants.split(",") if v.strip()],
                            seeds=seeds, quick=quick, **values)
        spec = PANELS.get(panel)
        console.print(f"probe directory: {escape(str(run_dir))}", highlight=False, soft_wrap=True)
        with _resumable(f"resume with the same options and --name {escape(run_dir.name)}"):
            with Progress(*Progress.get_default_columns(), TimeElapsedColumn(),
                          console=console) as bar:
                bars: dict[str, TaskID] = {}

                def show(run: str, step: int, logged: dict[str, float]) -> None:
                    if run not in bars:
                        bars[run] = bar.add_task(run, total=cfg.train["steps"])
                    bar.update(bars[run], completed=step)

                result = run_ablate(cfg, run_dir, progress=show)
    title, columns, rows = result_table(cfg, result)
    _print_wide(title, columns, rows)
    console.print(spec.finding, highlight=False, soft_wrap=True)
    for run, action in result.actions.items():
        console.print(f"{run}: {action}", highlight=False)
    console.print(f"probe directory: {escape(str(run_dir))}", highlight=False, soft_wrap=True)


@probe_app.command("entropy-tv")
def entropy_tv_cmd(
    model: str = typer.Option("tiny", help="'tiny' (built-in), a local checkpoint dir, or a hub "
                              "name."),
    task: str = typer.Option("countdown", help="Registered task name."),
    benchmark: str = typer.Option("", help="Benchmark of a task that has several (math: aime24, "
                                  "math500, a file ...)."),
    n_prompts: int = typer.Option(64, help="Held-out problems."),
    k: int = typer.Option(4, "--k", help="Student samples per problem."),
    lr: float = typer.Option(1.0, help="Learning rate of the one plain-SGD step (s = +1 and -1)."),
    bootstrap: int = typer.Option(1000, help="Prompt-level bootstrap resamples (Spearman CIs; "
                                  "0: none)."),
    max_new_tokens: int = typer.Option(160, help="Generation limit per response."),
    micro_batch_size: int = typer.Option(32, help="Responses per forward pass (lower it for "
                                         "large vocabularies)."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu, cuda, cuda:N."),
    seed: int = typer.Option(0, help="Seed of problems, sampling and bootstrap."),
    runs_dir: Path = typer.Option(Path("runs"), help="Parent directory of run directories."),
    name: str = typer.Option("", help="Run directory name (default: entropy-tv-<model>-<time>)."),
) -> None:
    """Probe 2 (Fig. 3): per token, student entropy H_t, the log-evidence gap A_t (eq. 6) and its
    expectation -KL(p_t || q_t); Spearman rho_s(A_t, H_t) with a prompt-bootstrap CI; and the
    one-step TV shifts D_t^(+/-) (eq. 7) after one SGD step toward (+) or away from (-) the
    privileged teacher. Writes tokens.parquet and summary.json."""
    from probes.entropy_tv import EntropyTVConfig, run_entropy_tv

    run_dir = _run_dir(runs_dir, name, _run_name("entropy-tv", model))
    with _one_line_errors():
        cfg = EntropyTVConfig(
            model=model, task=task, benchmark=benchmark, n_prompts=n_prompts, k=k, lr=lr,
            bootstrap=bootstrap, max_new_tokens=max_new_tokens,
            micro_batch_size=micro_batch_size, device=device, seed=seed,
        )
        total = 3 * n_prompts * k
        with _progress_bar(f"sampling, scoring and stepping {n_prompts} x {k}", total) as step:
            _, summary = run_entropy_tv(cfg, run_dir, progress=step)
    _print_entropy_tv(summary, title=f"{model} on {task}")
    console.print(f"run directory: {escape(str(run_dir))}", highlight=False, soft_wrap=True)


def _print_entropy_tv(summary: dict, *, title: str) -> None:
    """Probe 2's summary: Spearman with CIs by outcome, means by outcome, the entropy bins."""
    def rho(entry: dict) -> str:
        if _cell(entry["rho"]) == "–":
            return "–"
        ci = "" if _cell(entry["low"]) == "–" else f" [{entry['low']:+.2f}, {entry['high']:+.2f}]"
        return f"{entry['rho']:+.3f}{ci}"

    parts = {"all": summary, **summary["by_outcome"]}
    level = summary["spearman"]["A"]["level"]
    labels = {"A": "A_t", "abs_A": "|A_t|", "neg_kl": "E_p[A_t] = -KL(p||q)",
              "D_plus": "D+ (Conformity)", "D_minus": "D- (Novelty)"}
    table = Table(title=f"{title}: Spearman rho_s(., H_t) [{level:.0%} CI, prompt bootstrap] "
                        "by rollouts (count); paper: rho_s(A_t, H_t) = +0.52")
    table.add_column("statistic")
    for part in parts:
        table.add_column(f"{part} ({parts[part]['n_rollouts']})", justify="right")
    for key, label in labels.items():
        table.add_row(label, *(rho(parts[part]["spearman"][key]) for part in parts))
    console.print(table)
    means = {"H": "H_t", "A": "A_t", "neg_kl": "-KL(p||q)", "abs_A": "|A_t|",
             "D_plus": "D+", "D_minus": "D-"}
    _print_wide("Token means by rollout outcome", ["part", "tokens", *means.values()],
                [[part, str(parts[part]["n_tokens"]),
                  *(_cell(parts[part]["means"][key], ".4f") for key in means)] for part in parts])
    columns = {"n": "n", "A": "A_t", "abs_A": "|A_t|", "neg_kl": "-KL", "D_plus": "D+",
               "D_minus": "D-", "kl_plus": "KL after +", "kl_minus": "KL after -"}
    _print_wide("By entropy quantile bin (means)", ["H_t range", *columns.values()],
                [[f"{b['H_low']:.2g} to {b['H_high']:.2g}",
                  *(str(int(b[c])) if c == "n" else _cell(b[c], ".4f") for c in columns)]
                 for b in summary["bins"]])
    m = summary["means"]
    console.print(
        f"one SGD step, lr {summary['lr']:g}, |grad| {summary['grad_norm']:.3g}: mean KL(p||q) "
        f"{m['kl_before']:.4g} before, {m['kl_plus']:.4g} after s=+1, {m['kl_minus']:.4g} after "
        f"s=-1; accuracy {summary['accuracy']:.3f}", highlight=False, soft_wrap=True)


@probe_app.command("prefix-intervene")
def prefix_intervene_cmd(
    bucket: str = typer.Option("all", help="Where to intervene: low (H_t below the running "
                               "median), high (at/above it), random (entropy-agnostic control) "
                               "or all three."),
    model: str = typer.Option("tiny", help="'tiny' (built-in), a local checkpoint dir, or a hub name."),
    task: str = typer.Option("countdown", help="Registered task name."),
    benchmark: str = typer.Option("", help="Benchmark of a task that has several (math: aime24, "
                                  "math500, ..., or a .jsonl/.json/.parquet file)."),
    alpha: float = typer.Option(0.5, help="Novelty exponent: p / q^alpha (paper: 0.5)."),
    positions: str = typer.Option("every", help="Intervene at every in-bucket position, or only "
                                  "the first (appendix A.3's single token)."),
    burn_in: int = typer.Option(8, help="Leading response tokens never intervened (they seed "
                                "the running median)."),
    random_rate: float = typer.Option(None, help="Random control's per-position rate "
                                      "(default: the realized low/high in-bucket rate; 0.5 "
                                      "when the random bucket runs alone)."),
    n_prompts: int = typer.Option(64, help="Held-out problems."),
    k: int = typer.Option(4, "--k", help="Samples per problem in every condition."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (paper: 1.0)."),
    top_p: float = typer.Option(0.9, help="Nucleus top-p (paper: 0.9)."),
    max_new_tokens: int = typer.Option(160, help="Generation limit per response."),
    batch_size: int = typer.Option(128, help="Prompts per generation micro-batch."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples of the prompts (CIs)."),
    seed: int = typer.Option(0, help="Seed of problems, sampling (shared by all conditions) and "
                             "bootstrap."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
    runs_dir: Path = typer.Option(Path("runs"), help="Parent directory of run directories."),
    name: str = typer.Option("", help="Run directory name "
                             "(default: prefix-intervene-<model>-<time>)."),
) -> None:
    """Probe 3 (Table 1): inference-time prefix interventions. The student and the privileged
    teacher are decoded in lockstep; in the chosen entropy bucket the token comes from the
    teacher (Conformity) or from p / q^alpha (Novelty), elsewhere from the student. Reports
    the % change of StepAcc and E(y) vs unmodified rollouts of the same prompts and seeds."""
    from analysis.paper import TABLE1_BUCKETS, TABLE1_METRICS
    from probes.prefix_intervene import PrefixInterveneConfig, run_prefix_intervene

    run_dir = _run_dir(runs_dir, name, _run_name("prefix-intervene", model))
    with _one_line_errors():
        cfg = PrefixInterveneConfig(
            model=model, task=task, benchmark=benchmark, bucket=bucket, alpha=alpha,
            positions=positions, burn_in=burn_in, random_rate=random_rate,
            n_prompts=n_prompts, k=k, temperature=temperature, top_p=top_p,
            max_new_tokens=max_new_tokens, batch_size=batch_size, n_boot=n_boot, seed=seed,
            device=device,
        )
        total = n_prompts * k * (1 + 2 * len(cfg.buckets))
        with _progress_bar(f"sampling {total} responses", total) as step:
            summary = run_prefix_intervene(cfg, run_dir, progress=step)
    labels = {**TABLE1_BUCKETS, **TABLE1_METRICS}
    table = Table(title=f"Table 1: prefix interventions, % change vs unmodified rollouts "
                        f"[{summary['ci']['level']:.0%} CI], {n_prompts} prompts x {k}")
    for col in ("bucket / metric", "Conformity", "Novelty", "paper C", "paper N"):
        table.add_column(col, justify="left" if col == "bucket / metric" else "right")
    cells = {(c["bucket"], c["metric"], c["mode"]): c for c in summary["cells"]}
    for bucket_name in cfg.buckets:
        table.add_row(labels[bucket_name])
        for metric in ("step_acc", "ey_density"):
            ours = [cells[(bucket_name, metric, mode)] for mode in ("conformity", "novelty")]
            table.add_row(
                f"  {labels[metric]}",
                *(f"{c['delta_pct']:+.1f}% [{c['ci_low']:+.1f}, {c['ci_high']:+.1f}]"
                  if c["delta_pct"] == c["delta_pct"] else "–" for c in ours),
                *(f"{c['paper_delta_pct']:+.1f}%" for c in ours),
            )
        table.add_section()
    console.print(table)
    base = summary["unmodified"]
    console.print(f"unmodified: StepAcc {_cell(base['step_acc'])}, E(y) "
                  f"{_cell(base['ey_density'], '.2f')} per 1k words, accuracy "
                  f"{_cell(base['avg_correct'])}", highlight=False)
    if summary["random_rate"] is not None:
        console.print(f"random control rate: {summary['random_rate']['value']:.3f} "
                      f"({summary['random_rate']['source']})", highlight=False)
    console.print(f"run directory: {escape(str(run_dir))}", highlight=False, soft_wrap=True)

@probe_app.command("causal")
def causal_cmd(
    checkpoints: list[str] = typer.Option(
        ["tiny"], "--checkpoints", help="Model to probe, repeatable: 'tiny', a checkpoint dir, "
        "or a train run dir (its newest checkpoint), e.g. one each of GRPO, OPSD and DASD."),
    task: str = typer.Option("countdown", help="Registered task name."),
    benchmark: str = typer.Option("", help="Benchmark of a task that has several."),
    parts: str = typer.Option("forks,revisions", help="forks (Fig. 7a,b: teacher's top choice "
                              "at a cut position) and/or revisions (Fig. 7c,d: preserve, "
                              "suppress or teacher-force at revision prefixes)."),
    cuts: str = typer.Option("high,low,random", help="Cut positions of the forks part: highest "
                             "H_t, lowest H_t, random."),
    n_prompts: int = typer.Option(32, help="Held-out problems."),
    k: int = typer.Option(2, "--k", help="Rollouts per problem (the prefixes come from them)."),
    continuations: int = typer.Option(4, help="Continuations per prefix and condition."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (paper: 1.0)."),
    top_p: float = typer.Option(0.9, help="Nucleus top-p (paper: 0.9)."),
    max_new_tokens: int = typer.Option(160, help="Length limit of every response."),
    batch_size: int = typer.Option(128, help="Prompts per generation micro-batch."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples of the prompts (CIs)."),
    seed: int = typer.Option(0, help="Seed of problems, sampling and bootstrap."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu, cuda, cuda:N."),
    runs_dir: Path = typer.Option(Path("runs"), help="Parent directory of run directories."),
    name: str = typer.Option("", help="Run directory name (default: causal-<model>-<time>)."),
) -> None:
    """RQ2 (Fig. 7): cut each checkpoint's rollouts at a high-H_t, low-H_t or random position
    and emit the privileged teacher's top choice there, or at a revision prefix and preserve,
    suppress or teacher-force the revision; final correctness and revision rate against the
    paired reference continuations, with prompt-bootstrap CIs."""
    from probes.causal import PAPER_FINDING, CausalConfig, run_causal

    def split(text: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in text.split(",") if x.strip())

    run_dir = _run_dir(runs_dir, name, _run_name("causal", checkpoints[0]))
    with _one_line_errors():
        cfg = CausalConfig(
            checkpoints=tuple(checkpoints), task=task, benchmark=benchmark, parts=split(parts),
            cuts=split(cuts), n_prompts=n_prompts, k=k, continuations=continuations,
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
            batch_size=batch_size, n_boot=n_boot, seed=seed, device=device,
        )
        with console.status("probing") as status:
            summary = run_causal(cfg, run_dir, progress=lambda line: status.update(line))

    level = f"{summary['ci']['level']:.0%} CI"
    for entry in summary["checkpoints"]:
        console.print(f"{escape(entry['label'])}: {entry['rollouts']['n']} rollouts, accuracy "
                      f"{entry['rollouts']['accuracy']:.3f}, revision rate "
                      f"{entry['rollouts']['rev_rate']:.3f}", highlight=False)
        if entry.get("forks", {}).get("contrasts"):
            console.print(_forks_table(entry["forks"], summary["continuations"], level))
        if entry.get("revisions", {}).get("contrasts"):
            console.print(_revisions_table(entry["revisions"], summary["continuations"], level))
        elif "revisions" in entry:
            console.print("  no revision prefix in these rollouts", highlight=False)
    console.print(PAPER_FINDING, highlight=False, soft_wrap=True)
    console.print(f"run directory: {escape(str(run_dir))}", highlight=False, soft_wrap=True)


def _effect(c: dict) -> str:
    """A causal contrast's difference and interval, or "–"."""
    if _cell(c["diff"]) == "–":
        return "–"
    return f"{c['diff']:+.3f} [{_cell(c['ci_low'], '+.3f')}, {_cell(c['ci_high'], '+.3f')}]"


def _forks_table(forks: dict, continuations: int, level: str) -> Table:
    """Fig. 7a,b of one checkpoint: per cut and metric, the unmodified and teacher-top rates."""
    table = Table(title=f"Fig. 7a,b: teacher's top choice at the cut vs the student "
                        f"({forks['n_prefixes']} prefixes x {continuations}), {level}")
    for col in ("cut", "metric", "unmodified", "teacher top", "difference"):
        table.add_column(col, justify="left" if col in ("cut", "metric") else "right")
    for c in forks["contrasts"]:
        table.add_row(c["cut"], c["metric"], _cell(c["reference_rate"]), _cell(c["rate"]),
                      _effect(c))
    return table


def _revisions_table(revisions: dict, continuations: int, level: str) -> Table:
    """Fig. 7c,d of one checkpoint: the rates per condition, then each contrast's difference."""
    table = Table(title=f"Fig. 7c,d: continuations of {revisions['n_prefixes']} revision "
                        f"prefixes x {continuations}, {level}")
    for col in ("condition", "correct", "revises", "marker at cut"):
        table.add_column(col, justify="left" if col == "condition" else "right")
    for condition, r in {r["condition"]: r for r in revisions["rates"]}.items():
        table.add_row(condition, _cell(r["correct"]), _cell(r["revises"]),
                      _cell(r["marker_at_cut"]))
    pairs: dict[tuple[str, str], dict[str, dict]] = {}
    for c in revisions["contrasts"]:
        pairs.setdefault((c["condition"], c["reference"]), {})[c["metric"]] = c
    for (new, ref), by_metric in pairs.items():
        table.add_row(f"{new} - {ref}", _effect(by_metric["correct"]),
                      _effect(by_metric["revises"]), "")
    return table


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


def _print_wide(title: str, columns: list[str], rows: list[list[str]], *, left: int = 1
                ) -> None:
    """A rich table; on a terminal too narrow for it, one "column=value" record per row."""
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    if sum(widths) + 3 * len(columns) + 1 <= console.width:
        table = Table(title=escape(title))
        for i, col in enumerate(columns):
            table.add_column(escape(col), justify="left" if i < left else "right",
                             no_wrap=True)
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
        return
    console.print(title, highlight=False, markup=False)
    for row in rows:
        console.print(" ".join(row[:left]) + ": " + ", ".join(
            f"{c}={v}" for c, v in zip(columns[left:], row[left:])),
            highlight=False, markup=False, soft_wrap=True)


def _cell(value: object, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt) if isinstance(value, float) else str(value)


@analyze_app.command("passk")
def passk_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories, or parents of run directories."),
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
        _print_wide(
            f"Pass@k ({split} rollouts)",
            ["run", "task", "step", "prompts", "n", "Avg@n", *(f"Pass@{c[5:]}" for c in passes)],
            [[row.run, str(row.task or "–"), str(row.step), str(row.n_prompts), str(row.n),
              f"{row.avg_at_n:.3f}", *(_cell(float(v)) for v in row[6:])]
             for row in frame.itertuples(index=False)], left=2,
        )
    _report_issues(issues, analysed=len(frame) > 0)


@analyze_app.command("health")
def health_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories, or parents of run directories."),
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
        _print_wide(
            f"Reasoning health ({split} rollouts)", [heads.get(c, c) for c in HEALTH_COLUMNS],
            [[_cell(v, formats.get(col, ".3f")) for col, v in zip(HEALTH_COLUMNS, row)]
             for row in rows.itertuples(index=False)],
        )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            rows.to_csv(out, index=False)
            console.print(f"wrote {escape(str(out))}", highlight=False, soft_wrap=True)
    _print_mechanism({info.label: info.path for info in report.runs})
    _report_issues(issues=report.issues, analysed=report.analysed)


def _print_mechanism(runs: dict[str, Path]) -> None:
    """The mechanism statistics the runs' evals logged (``analysis.mechanism``); nothing for
    runs without them."""
    from analysis.mechanism import mechanism_tables

    summary, deciles = mechanism_tables(runs)
    if summary.empty:
        return
    fmt = {"wrong_steps": ".0f", "tail_student_low": ".3g", "tail_teacher_low": ".3g"}
    _print_wide("Mechanism statistics (low = below the trajectory's median entropy; reference "
                "share is a lower bound)", list(summary.columns),
                [[row.run, *(_cell(float(v), fmt.get(c, ".3f"))
                             for c, v in zip(summary.columns[1:], row[1:]))]
                 for row in summary.itertuples(index=False)])
    _print_wide("|delta| by student-entropy decile beside the round-off floors (floor: the same "
                "tokens scored in another batch; shift: positions shifted), nats",
                list(deciles.columns),
                [[row.run, str(row.decile), *(_cell(float(v), ".3g") for v in row[2:])]
                 for row in deciles.itertuples(index=False)], left=2)


@analyze_app.command("tables")
def tables_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories, or parents of run directories."),
    out: Path = typer.Option(
        Path("paper-tables"), "--out", help="Folder for the Markdown, LaTeX and CSV files."
    ),
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
    runs: list[Path] = typer.Argument(..., help="Run directories, or parents of run directories."),
    out: Path = typer.Option(
        Path("paper-figures"), "--out", help="Folder for the PNG and PDF files."
    ),
) -> None:
    """Every paper figure the runs support, as PNG and PDF (byte-identical on a rerun); names the
    figures without data and the runs they need. Exit 1 when no figure has data."""

    from figures import write_figures

    with _one_line_errors():
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
    runs: list[Path] = typer.Argument(..., help="Run directories, or parents of run directories."),
    out: Path = typer.Option(Path("report.html"), "--out", help="The HTML file to write."),
    audit_rollouts: int = typer.Option(
        4, min=0, help="Rollouts per run shown token by token (half correct, half not)."
    ),
) -> None:
    """One self-contained HTML audit page: runs and configs, tables, figures, and rollouts token by
    token colored by omega (attraction / repulsion) or entropy."""
    from figures.report import write_report

    with _one_line_errors():
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
    with _one_line_errors():
        rows = {
            subset: load_processbench(subset, directory=processbench or None, limit=limit or None)
            for subset in (subsets or PROCESSBENCH_SUBSETS)
        }
        step_judge = build_judge(judge, options, [r for subset_rows in rows.values() for r in subset_rows])
        total = sum(len(subset_rows) for subset_rows in rows.values())
        with _progress_bar(f"judging {total} solutions", total) as advance:
            evaluation = evaluate_judge(step_judge, rows, chunk_size=8 * batch_size, progress=advance)
    table = Table(title=f"ProcessBench: {judge}" + (f" ({model})" if model else ""))
    for col in ("subset", "rows", "erroneous", "correct", "acc err", "acc ok", "F1"):
        table.add_column(col, justify="left" if col == "subset" else "right", no_wrap=True)
    for score in evaluation.scores:
        table.add_row(
            score.subset, str(score.n), str(score.n_error), str(score.n_correct),
            f"{score.error_acc:.4f}", f"{score.correct_acc:.4f}", f"{score.f1:.4f}",
        )
    if len(evaluation.scores) > 1:
        table.add_row("average", "", "", "", "", "", f"{evaluation.average_f1:.4f}")
    console.print(table)
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
    with _one_line_errors():
        dest = _run_dir(runs_dir, name, f"{fmt}-{source.resolve().name}")
        imported = import_log(fmt, source, dest, **options)
    console.print(f"imported {imported.rows} rollouts at {len(imported.steps)} steps into "
                  f"{escape(str(imported.path))}", soft_wrap=True, highlight=False)
