"""Seconds per training step and peak memory of the core trainer, per method, and our GRPO step
against TRL's ``GRPOTrainer``.

    .venv/bin/python -m benchmarks.bench_trainer [--model random|tiny|PATH]
        [--methods grpo,dasd,opsd] [--no-trl] [--prompts 8] [--group-size 8]
        [--max-new-tokens 160] [--repeats 5] [--warmup 1] [--threads 2]

What is measured, and how:

- Each variant (one per ``--methods`` entry, plus ``trl-grpo``) lives in its own fresh process
  (``spawn``), so its peak memory is its own. After loading the model and building the
  trainer, a worker resets its RSS high-water mark (``/proc/self/clear_refs`` = 5, where the
  kernel permits) and runs ``--warmup`` untimed steps; ``peak RSS`` is the process's high-water
  mark at the end, ``step RSS`` that mark minus the RSS before the warm-up (what a step adds:
  activations, gradients, AdamW state). Without ``/proc`` both print ``n/a``.
- Timed steps are interleaved: in each of ``--repeats`` rounds every worker runs one step while
  the others wait idle, in a rotated order. Each time column is the best (minimum) over the
  rounds; ``median`` is the median whole step; ``cpu s`` is the worker's CPU time in the
  step (all its threads), which other jobs on a shared machine disturb far less than wall
  time; ``resp tok`` is the mean response length (EOS included) over the rounds. Ratios
  (``x<baseline>``) divide by the first method's figure from the same run.
- Our step is ``Trainer.update(step)`` with ``TrainConfig(prompts_per_step=P, group_size=G,
  mini_batch_size=P*G, max_new_tokens=L)`` (micro-batches of the trainer's default size,
  grouped by length), one PPO epoch, i.e. one generation and one AdamW step. The columns are the trainer's own timers: ``rollout``
  (sampling and the verifier), ``score`` (no-grad student and teacher scoring, advantages),
  ``update`` (forward, backward and optimizer step; for ``opsd`` also the teacher forward of
  the reverse KL) and ``step`` (their sum; the trainer's metrics and logging are outside).
  Before every step the worker restores the initial weights and optimizer state; round r runs
  update index ``FIRST_STEP + warmup + r``, whose prompts and sampling seeds derive from
  (seed, index), so in a round every method sees the same prompts and, the model being
  identical, the same sampled responses: the same batch.
- ``trl-grpo`` is TRL's ``GRPOTrainer`` (dev-only dependency: ``pip install -e .[bench]``) on the
  same weights and tokenizer, the same P prompts at each step as our update of that round, G
  generations each, the same max completion length, temperature 1.0 and top-p 1.0, one
  generation and one optimizer step per trainer step (``steps_per_generation=1``,
  ``num_iterations=1``, no gradient accumulation), loss ``grpo`` (= our
  ``seq_mean_token_mean``), group-std scaled rewards, clip 0.2, no KL term, gradient clip 1.0,
  ``adamw_torch`` at the same constant learning rate, float32, no gradient checkpointing, no
  vLLM, rewards from the Countdown verifier. A step is timed from the start of TRL's step to its
  end (callbacks ``on_step_begin``/``on_step_end``), so TRL's batch fetch and logging between
  steps are outside, as ours are; ``rollout`` is ``_generate_and_score_completions``
  (generation, rewards, advantages) and ``update`` the rest of the step.
  Not matched: TRL samples with ``model.generate`` from the global RNG, so its responses (and
  their lengths: see ``resp tok``) are not ours, and its weights drift over the steps (ours are
  restored); with these settings TRL skips the old-log-prob pass (the ratio is 1 by
  construction), which our trainer always runs (``dasd.trainer`` departure 3).

``--model random`` (the default) is a random-init model of the built-in tiny model's exact
architecture (``dasd.models.TINY_RECIPE``) over the character tokenizer, saved to a temporary
directory: the same compute per step as ``tiny``, with responses of random length. ``tiny``
loads (and, on first use, builds) the trained tiny model; any other value is a local model
directory. The workers run with ``OMP_WAIT_POLICY=PASSIVE`` unless it is set: busy-waiting
OpenMP threads slow small models on a shared CPU by orders of magnitude.
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing as mp
import os
import re
import statistics
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import GenerationConfig, Qwen3ForCausalLM

from dasd._tiny_recipe import qwen3_config
from dasd.advantages import METHODS
from dasd.models import TINY_RECIPE, ensure_tiny_model, load_model, make_char_tokenizer
from dasd.tasks import build_task
from dasd.trainer import TrainConfig, Trainer, training_problems

#: Update index of a worker's first step (step 1 would also write its rollouts to disk); its
#: k-th step (warm-up included) runs index ``FIRST_STEP + k``.
FIRST_STEP = 2
#: ``TrainConfig.steps``: far beyond the steps run, so the cosine schedule stays at its peak and
#: no evaluation, rollout log or checkpoint falls due.
HORIZON = 1_000_000
TRL = "trl-grpo"


@dataclass(frozen=True)
class Settings:
    """What every worker needs (picklable)."""

    model_dir: str
    prompts: int
    group_size: int
    max_new_tokens: int
    lr: float
    seed: int
    threads: int
    warmup: int
    repeats: int

    @property
    def batch(self) -> int:
        return self.prompts * self.group_size


@dataclass(frozen=True)
class Timing:
    """Wall seconds of one step and its parts, CPU seconds of the step (all threads of the
    worker), mean response tokens (EOS included)."""

    step: float
    cpu: float
    rollout: float
    score: float
    update: float
    tokens: float


@dataclass(frozen=True)
class Memory:
    """RSS figures of a worker in MiB (None without ``/proc``)."""

    peak: float | None
    base: float | None
    reset: bool


def _status_mib(field: str) -> float | None:
    """``field`` (``VmRSS``, ``VmHWM``) of ``/proc/self/status`` in MiB, or None."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else None


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark to its current RSS; False where not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class _Channel:
    """The worker's side of the parent's protocol: ``ready``; then one ``Timing`` per ``step``
    command; then ``Memory`` on ``done``."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.base: float | None = None
        self.reset = False

    def begin(self) -> None:
        """Mark the end of setup: memory from here on counts as the steps'."""
        self.base = _status_mib("VmRSS")
        self.reset = _reset_peak()

    def ready(self) -> None:
        self.conn.send(("ready", None))

    def next_step(self) -> bool:
        """Wait for the parent; True for ``step``, False for ``done``."""
        return self.conn.recv() == "step"

    def send_timing(self, timing: Timing) -> None:
        self.conn.send(("timing", timing))

    def finish(self) -> None:
        self.conn.send(("memory", Memory(_status_mib("VmHWM"), self.base, self.reset)))


def _worker(target: Callable[[_Channel, str, Settings], None], conn: Connection, name: str,
            settings: Settings) -> None:
    """Run a worker body; a failure also goes to the parent as an ``error`` message."""
    try:
        torch.set_num_threads(settings.threads)
        transformers.logging.disable_progress_bar()
        target(_Channel(conn), name, settings)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        raise
    finally:
        conn.close()


def _config(method: str, s: Settings) -> TrainConfig:
    """Our trainer at the benchmark's settings (one optimizer step per update)."""
    return TrainConfig(
        method=method, model=s.model_dir, prompts_per_step=s.prompts, group_size=s.group_size,
        mini_batch_size=s.batch, max_new_tokens=s.max_new_tokens, lr=s.lr, steps=HORIZON,
        eval_every=0, log_rollouts_every=HORIZON, checkpoint_every=HORIZON, seed=s.seed,
        device="cpu",
    )


def _ours(channel: _Channel, method: str, s: Settings) -> None:
    """``Trainer.update(FIRST_STEP + k)`` of ``method`` at its k-th step, always from the
    initial weights and optimizer state."""
    cfg = _config(method, s)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer.start(cfg, Path(tmp) / "run")
        weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        optimizer = copy.deepcopy(trainer.optimizer.state_dict())

        def step(k: int) -> Timing:
            trainer.model.load_state_dict(weights)
            trainer.optimizer.load_state_dict(optimizer)
            cpu = time.process_time()
            m = trainer.update(FIRST_STEP + k)
            cpu = time.process_time() - cpu
            return Timing(m["time/step_s"], cpu, m["time/rollout_s"], m["time/score_s"],
                          m["time/update_s"], m["train/length_tokens"])

        channel.begin()
        for k in range(s.warmup):
            step(k)
        channel.ready()
        k = s.warmup
        while channel.next_step():
            channel.send_timing(step(k))
            k += 1
    channel.finish()


def _trl(channel: _Channel, _: str, s: Settings) -> None:
    """TRL's ``GRPOTrainer`` on our model, prompts and verifier (module docstring)."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    warnings.filterwarnings("ignore", category=FutureWarning)  # gradient_checkpointing rename

    model, tokenizer = load_model(s.model_dir, device="cpu")
    task = build_task("countdown", tokenizer=tokenizer)
    steps = s.warmup + s.repeats
    cfg = _config("grpo", s)
    problems = [p for k in range(steps) for p in training_problems(task, cfg, FIRST_STEP + k)]
    rows = [{"prompt": task.student_prompt(p), "index": i} for i, p in enumerate(problems)]

    def countdown_reward(completions: list[str], index: list[int], **_: Any) -> list[float]:
        return [task.reward(problems[i], c) for i, c in zip(index, completions)]

    class StepClock(TrainerCallback):
        """Hold TRL at each timed step's start until the parent says ``step``; report the
        step's timing once TRL is idle again (at the next step's start, or after training)."""

        def __init__(self) -> None:
            self.start = self.cpu = 0.0
            self.rollout = self.tokens = math.nan
            self.pending: Timing | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if self.pending is not None:
                channel.send_timing(self.pending)
                self.pending = None
            if state.global_step == s.warmup:
                channel.ready()
            if state.global_step >= s.warmup and not channel.next_step():
                raise RuntimeError("the parent stopped the TRL worker before its last step")
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            elapsed = time.perf_counter() - self.start
            cpu = time.process_time() - self.cpu
            if state.global_step > s.warmup:
                self.pending = Timing(elapsed, cpu, self.rollout, math.nan,
                                      elapsed - self.rollout, self.tokens)

    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=s.batch,
            gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
            num_generations=s.group_size, max_completion_length=s.max_new_tokens,
            temperature=1.0, top_p=1.0, beta=0.0, loss_type="grpo", scale_rewards="group",
            epsilon=0.2, max_grad_norm=1.0, learning_rate=s.lr, lr_scheduler_type="constant",
            optim="adamw_torch", weight_decay=0.0, bf16=False, gradient_checkpointing=False,
            use_vllm=False, use_cpu=True, shuffle_dataset=False, seed=s.seed,
            report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=countdown_reward, args=config,
                              train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer)
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.remove_callback(PrinterCallback)
        generate_and_score = trainer._generate_and_score_completions

        def timed_generate_and_score(batch: Any) -> Any:
            start = time.perf_counter()
            out = generate_and_score(batch)
            clock.rollout = time.perf_counter() - start
            clock.tokens = float(out["completion_mask"].sum(1).float().mean())
            return out

        trainer._generate_and_score_completions = timed_generate_and_score
        channel.begin()
        trainer.train()
        if clock.pending is not None:
            channel.send_timing(clock.pending)
        if channel.next_step():
            raise RuntimeError("the parent asked the TRL worker for more steps than it ran")
    channel.finish()


def _receive(conn: Connection, name: str, kind: str) -> Any:
    try:
        got, payload = conn.recv()
    except EOFError:
        raise RuntimeError(f"worker {name} died without a message") from None
    if got == "error":
        raise RuntimeError(f"worker {name} failed:\n{payload}")
    if got != kind:
        raise RuntimeError(f"worker {name} sent {got!r}, expected {kind!r}")
    return payload


def measure(variants: list[str], settings: Settings
            ) -> tuple[dict[str, list[Timing]], dict[str, Memory]]:
    """Start one worker per variant, run the interleaved rounds, collect timings and memory."""
    ctx = mp.get_context("spawn")
    conns: dict[str, Connection] = {}
    procs = []
    finished = False
    try:
        for name in variants:
            parent, child = ctx.Pipe()
            target = _trl if name == TRL else _ours
            proc = ctx.Process(target=_worker, args=(target, child, name, settings), daemon=True)
            proc.start()
            child.close()
            conns[name] = parent
            procs.append(proc)
        for name in variants:
            _receive(conns[name], name, "ready")
        timings: dict[str, list[Timing]] = {name: [] for name in variants}
        for r in range(settings.repeats):
            shift = r % len(variants)
            for name in variants[shift:] + variants[:shift]:
                conns[name].send("step")
                timings[name].append(_receive(conns[name], name, "timing"))
        memory = {}
        for name in variants:
            conns[name].send("done")
            memory[name] = _receive(conns[name], name, "memory")
        finished = True
    finally:
        for proc in procs:
            if not finished:
                proc.kill()
            proc.join()
    return timings, memory


def save_random_model(out_dir: Path, seed: int) -> Path:
    """A random-init model of the tiny model's architecture with the char tokenizer."""
    tokenizer = make_char_tokenizer()
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qwen3_config(TINY_RECIPE, tokenizer))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def print_table(timings: dict[str, list[Timing]], memory: dict[str, Memory]) -> None:
    """One row per variant: best-of-rounds seconds, ratios to the first variant, memory."""
    baseline = next(iter(timings))
    best = {name: Timing(*(min(getattr(t, f) for t in ts) for f in Timing.__dataclass_fields__
                           if f != "tokens"), statistics.mean(t.tokens for t in ts))
            for name, ts in timings.items()}
    base = best[baseline]
    x = "x" + baseline
    head = (f"{'variant':<10} {'step s':>7} {'median':>7} {x:>7} {'cpu s':>7} {x:>7} "
            f"{'rollout':>7} {'score':>7} {'update':>7} {x:>7} {'resp tok':>8} "
            f"{'peak RSS':>8} {'step RSS':>8}")
    print(head)
    print("-" * len(head))
    for name, b in best.items():
        mem = memory[name]
        step_rss = None if mem.peak is None or mem.base is None else mem.peak - mem.base
        median = statistics.median(t.step for t in timings[name])
        print(f"{name:<10} {b.step:>7.3f} {median:>7.3f} {b.step / base.step:>7.2f} "
              f"{b.cpu:>7.3f} {b.cpu / base.cpu:>7.2f} {_fmt(b.rollout):>7} {_fmt(b.score):>7} "
              f"{b.update:>7.3f} {b.update / base.update:>7.2f} {b.tokens:>8.1f} "
              f"{_fmt(mem.peak, '.0f'):>8} {_fmt(step_rss, '.0f'):>8}")
    print("\nseconds: wall (cpu s: CPU of the worker), best of the rounds per column; "
          "RSS in MiB", end="")
    if not all(m.reset for m in memory.values()):
        print(" (high-water mark not resettable here: peak includes setup)", end="")
    print()
    pairs = [("dasd", "grpo", " (aim: <= 1.35x)"), (TRL, "grpo", " (> 1: ours faster)")]
    for num, den, note in pairs:
        if num in best and den in best:
            print(f"{num} / {den}: step {best[num].step / best[den].step:.2f}x wall, "
                  f"{best[num].cpu / best[den].cpu:.2f}x cpu; "
                  f"update {best[num].update / best[den].update:.2f}x{note}")


def _methods(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {unknown}; valid: {', '.join(sorted(METHODS))}"
        )
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random",
                        help="random (default: random-init tiny architecture), tiny, or a "
                             "local model directory")
    parser.add_argument("--methods", type=_methods, default=["grpo", "dasd", "opsd"],
                        help="comma-separated methods; the first is the baseline "
                             "(default grpo,dasd,opsd)")
    parser.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True,
                        help="also time TRL's GRPOTrainer (needs the [bench] extra)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (default 8)")
    parser.add_argument("--group-size", type=int, default=8, help="responses per prompt (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=160,
                        help="max response tokens (default 160, as TrainConfig)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds; the best counts (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.prompts, args.group_size - 1, args.max_new_tokens, args.repeats,
           args.threads) < 1 or args.warmup < 0:
        parser.error("need prompts, max-new-tokens, repeats, threads >= 1, group-size >= 2 "
                     "and warmup >= 0")
    variants = args.methods + ([TRL] if args.trl else [])
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "random":
            model_dir = save_random_model(Path(tmp) / "random", args.seed)
        elif args.model == "tiny":
            model_dir = ensure_tiny_model()
        else:
            model_dir = Path(args.model)
            if not model_dir.is_dir():
                parser.error(f"--model {args.model}: not random, tiny or a model directory")
        settings = Settings(str(model_dir), args.prompts, args.group_size, args.max_new_tokens,
                            args.lr, args.seed, args.threads, args.warmup, args.repeats)
        load = os.getloadavg()[0]
        print(f"model {args.model}; {args.prompts} prompts x {args.group_size} = "
              f"{settings.batch} responses of <= {args.max_new_tokens} tokens per step; "
              f"{args.threads} threads; {args.repeats} rounds after {args.warmup} warm-up; "
              f"load average {load:.1f} on {os.cpu_count()} CPUs\n")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        timings, memory = measure(variants, settings)
    print_table(timings, memory)


if __name__ == "__main__":
    main()
