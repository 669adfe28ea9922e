"""`dasd-probe eval`: Avg@k and Pass@k rollouts of a model on a task (paper section 5, appendix F).

For each held-out problem, k samples at temperature 1.0 and top-p 0.9 (the paper's protocol),
verifier rewards, the task's step judge, and per-token student entropy / log-prob plus the
privileged teacher's log-prob of the same tokens (same weights, r prepended). Everything goes to a
run directory (DESIGN.md section 4); the summary is computed from the logged rows, with the
mechanism statistics of ``dasd.mechanism`` under ``mechanism/`` (``dasd.evaluation.
measure_mechanism``: |delta| by entropy decile beside a re-scoring round-off floor, the tail-mass
ratio, the wrong-step share, the low-entropy share); the rollouts carry the per-token tail masses
``student_tail`` and ``teacher_tail`` beside the schema's columns.

Departures from the paper:
1. The default model and task are the built-in world (tiny model, Countdown), not Qwen3 on AIME.
2. The generation limit defaults to what the task needs (``max_new_tokens``), not 8,192 tokens.
3. ``rollout_engine="vllm"`` samples with vLLM (``dasd.rollout.vllm``; needs a CUDA GPU and the
   ``dasd[vllm]`` extra); entropies and log-probs are always scored by the HF model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from dasd.config_checks import check_fields
from dasd.evaluation import eval_metrics, measure_mechanism, sample_rollout_rows
from dasd.models import load_model, resolve_device, resolve_dtype
from dasd.rollout import build_rollout_engine, check_rollout_engine
from dasd.rollout.hf import kv_budget_batch_size
from dasd.runlog import create_run
from dasd.tasks import build_task
from figures.terminal import Terminal, cell
from probes.config_bases import SamplingConfig
from probes.registry import register_probe


@dataclass(frozen=True)
class EvalConfig(SamplingConfig):
    """Settings of one evaluation; written into the run's manifest."""

    model: str = "tiny"
    """``tiny``, a local checkpoint directory, or a hub name."""
    task: str = "countdown"
    """A registered task name."""
    benchmark: str = ""
    """The task's benchmark where it has several (``math``: a name such as ``aime24``, a file,
    or ``hub:...``); empty: the task's default."""
    n_prompts: int = 64
    """Held-out problems to evaluate."""
    k: int = 16
    """Samples per problem (Avg@k, Pass@k)."""
    kv_cache_budget_gb: float = 16.0
    """KV cache a generation micro-batch of the ``hf`` engine may hold: the micro-batch holds
    fewer than ``generation_batch_size`` prompts when their KV cache (longest prompt +
    ``max_new_tokens`` tokens each) would exceed it (``dasd.memory``)."""
    teacher: bool = True
    """Also score the privileged teacher's log-prob of every response token."""
    micro_batch_size: int = field(default=32, metadata={"aliases": ("--score-batch-size",)})
    """Responses per scoring forward pass; bounds its activations (the logits are formed a
    chunk of positions at a time for models with a plain output layer, ``dasd.scoring``)."""
    floor_responses: int = 64
    """Responses scored a second time, alone, for the round-off floor of the mechanism
    statistics (``dasd.evaluation.measure_mechanism``); 0 skips the floor."""
    rollout_engine: str = "hf"
    """Sampler: ``hf`` (``transformers`` KV cache) or ``vllm`` (CUDA GPU and
    ``pip install 'dasd[vllm]'``)."""
    vllm_gpu_memory_utilization: float = 0.5
    """Share of the GPU's memory vLLM takes (``vllm`` engine); the rest is left to scoring."""
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu`` or ``cuda``."""
    dtype: str = "auto"
    """Weights' dtype: ``auto`` (bf16 on CUDA, float32 on a CPU), ``float32``, ``bfloat16`` or
    ``checkpoint`` (the checkpoint's own: a bf16 base model and its float32 trained checkpoints
    would then be evaluated at different precisions). Log-probs and entropies come from float32
    logits either way (``dasd.scoring``)."""
    seed: int = 0
    """Seed of problem sampling and generation."""
    thinking: bool | None = None
    """The chat template's ``enable_thinking`` (``math`` task, e.g. Qwen3); None: the
    template's default. With True the answer is read after ``</think>`` only."""
    truncated_reward: float | None = 0.0
    """Reward of a response with no EOS within ``max_new_tokens`` (0: the paper's verifier never
    sees its answer); None lets the verifier decide."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.n_prompts < 1 or self.k < 1:
            raise ValueError(f"n_prompts ({self.n_prompts}) and k ({self.k}) must be >= 1")
        self.check_sampling()
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.floor_responses < 0:
            raise ValueError(f"floor_responses must be >= 0, got {self.floor_responses}")
        if not self.kv_cache_budget_gb > 0:
            raise ValueError(f"kv_cache_budget_gb must be > 0, got {self.kv_cache_budget_gb}")
        resolve_dtype(self.dtype, resolve_device(self.device))
        if not 0 < self.vllm_gpu_memory_utilization < 1:
            raise ValueError("vllm_gpu_memory_utilization must be in (0, 1), got "
                             f"{self.vllm_gpu_memory_utilization}")
        check_rollout_engine(self.rollout_engine, device=self.device)


def run_eval(
    cfg: EvalConfig, run_dir: Path, *, progress: Callable[[int], None] | None = None
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Evaluate ``cfg.model`` on ``cfg.task``'s held-out split and log everything to ``run_dir``.

    ``progress`` is called with the number of responses sampled after each generation batch
    (``cfg.n_prompts * cfg.k`` in all).
    """
    device = resolve_device(cfg.device)
    model, tokenizer = load_model(cfg.model, device=device, dtype=resolve_dtype(cfg.dtype, device))
    engine = build_rollout_engine(cfg.rollout_engine, model, seed=cfg.seed,
                                  max_new_tokens=cfg.max_new_tokens,
                                  gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                                  sampler_logprobs=False)
    options: dict[str, object] = {"benchmark": cfg.benchmark} if cfg.benchmark else {}
    if cfg.thinking is not None:
        options["thinking"] = cfg.thinking
    task = build_task(cfg.task, tokenizer=tokenizer, **options)
    problems = task.sample(cfg.n_prompts, split="eval", seed=cfg.seed)
    task_config = task.describe() if hasattr(task, "describe") else {"repr": repr(task)}
    config = {**asdict(cfg), "task_config": task_config}
    with create_run(
        run_dir, kind="eval", config=config, seed=cfg.seed, model=cfg.model, task=cfg.task
    ) as run:
        frame = sample_rollout_rows(
            model,
            tokenizer,
            task,
            problems,
            k=cfg.k,
            step=0,
            split="eval",
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            batch_size=kv_budget_batch_size(
                model, tokenizer, [task.student_prompt(p) for p in problems],
                max_new_tokens=cfg.max_new_tokens, budget_gb=cfg.kv_cache_budget_gb,
                cap=cfg.generation_batch_size),
            teacher=cfg.teacher,
            generator=torch.Generator().manual_seed(cfg.seed),
            progress=progress,
            engine=engine,
            score_batch_size=cfg.micro_batch_size,
            tail=True,
            truncated_reward=cfg.truncated_reward,
        )
        run.write_rollouts(0, "eval", frame)
        summary = eval_metrics(frame)
        summary |= measure_mechanism(model, tokenizer, task, problems, frame,
                                     floor_responses=cfg.floor_responses,
                                     score_batch_size=cfg.micro_batch_size,
                                     temperature=cfg.temperature)
        run.log_metrics(0, "eval", summary)
    return frame, summary


def _run(cfg: EvalConfig, run_dir: Path, terminal: Terminal) -> dict[str, float]:
    """Avg@k / Pass@k of a model on a task's held-out problems; logs rollouts with per-token
    entropy and student/teacher log-probs."""
    with terminal.bar(f"sampling {cfg.n_prompts} x {cfg.k}", cfg.n_prompts * cfg.k) as step:
        _, summary = run_eval(cfg, run_dir, progress=step)
    return summary


def show_mechanism(terminal: Terminal, runs: dict[str, Path]) -> None:
    """The mechanism statistics the runs' evals logged (``analysis.mechanism``) as two tables;
    nothing for runs without them."""
    from analysis.mechanism import mechanism_tables

    summary, deciles = mechanism_tables(runs)
    if summary.empty:
        return
    fmt = {"wrong_steps": ".0f", "tail_student_low": ".3g", "tail_teacher_low": ".3g"}
    terminal.wide_table(
        "Mechanism statistics (low = below the trajectory's median entropy; reference share is "
        "a lower bound)", list(summary.columns),
        [[row.run, *(cell(float(v), fmt.get(c, ".3f"))
                     for c, v in zip(summary.columns[1:], row[1:]))]
         for row in summary.itertuples(index=False)])
    terminal.wide_table(
        "|delta| by student-entropy decile beside the round-off floors (floor: the same tokens "
        "scored in another batch; shift: positions shifted), nats", list(deciles.columns),
        [[row.run, str(row.decile), *(cell(float(v), ".3g") for v in row[2:])]
         for row in deciles.itertuples(index=False)], left=2)


def _show(cfg: EvalConfig, summary: dict[str, float], run_dir: Path, terminal: Terminal
          ) -> None:
    terminal.table(f"{cfg.model} on {cfg.task} ({cfg.n_prompts} prompts x {cfg.k})",
                   ["metric", "value"],
                   [[key, f"{value:.4g}"] for key, value in summary.items()
                    if not key.startswith("mechanism/")])
    show_mechanism(terminal, {run_dir.name: run_dir})
    terminal.line(f"run directory: {run_dir}")


register_probe("eval", options=EvalConfig, run=_run, show=_show)
