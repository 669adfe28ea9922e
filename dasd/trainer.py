"""The one core trainer (paper section 4, appendix C Algorithm 1, appendix F): orchestration only.

Each update s = 1..steps: sample G rollouts per prompt from the current (old) policy without the
privileged context, score them with the verifier, form group-relative advantages, score the
student (entropy, log-prob) and, when the method needs one, the privileged teacher (same
weights, r in the prompt, no gradient), turn these into per-token advantages with the method
(``dasd.advantages.METHODS``), and take clipped PPO steps over mini-batches with AdamW and
gradient clipping. The math lives in ``dasd.advantages`` and ``dasd.losses``; this module only
moves tensors between them, the engines and the run directory.

Departures from the paper and choices it leaves open:

1. Sizes are scaled to the model: the defaults (16 prompts x G = 8 per update, mini-batches of
   32 responses, learning rate 1e-4) suit the built-in tiny model on a CPU; the paper uses
   B = 128 prompts, B_mini = 32 and lr 3e-6 for Qwen3-1.7B. G = 8, rho = 0.2, clip 0.2 and
   cosine decay are the paper's.
2. beta (the weight of the teacher term, eq. 5/8) is not given in the paper; the default 0.1 is
   a choice, not a tuned value.
3. pi_old is the policy that sampled the batch; its log-probs are recomputed by a scoring pass
   (as verl does) rather than taken from the sampler, so the first PPO ratio is exactly 1.
4. Every random choice of update s (its prompts, its samples, its mini-batch order) is drawn
   from generators seeded by (seed, s), so a run resumed from a checkpoint repeats an
   uninterrupted run exactly on the same machine. Held-out evaluations reuse one seed at every
   step (common random numbers), so differences between steps are not sampling noise.
5. The learning rate is a pure function of the update index (linear warmup, cosine decay to
   ``min_lr_ratio * lr``), so it needs no scheduler state.
6. Step 0 is the base model's evaluation; a checkpoint "0" is the base model itself (not saved).
7. Memory at long responses: every forward pass over whole responses, with gradient or without
   (scoring, the PPO micro-batches, held-out scoring), takes ``micro_batch_size`` responses;
   with a plain output layer (``dasd.head``) none of them holds ``(rows, T, V)`` logits: the
   output layer is applied ``chunk_size`` positions at a time inside one autograd function
   (``dasd.entropy.head_entropy_and_logprob``). The reverse-KL methods need whole logits (student
   and teacher); their micro-batches are cut further to fit ``logits_budget_gb``, as are the RQ3
   routing passes (``dasd.routing``). Generation batches fit ``kv_cache_budget_gb`` of KV cache
   (``dasd.memory``). ``gradient_checkpointing`` recomputes each decoder layer in the backward
   pass instead of storing its activations (training passes only). The policy's parameters and
   AdamW state are float32 by default (``param_dtype``), whatever the checkpoint's dtype: at
   the paper's lr 3e-6 most updates of a bf16 weight (spacing ~1e-4 near 0.02) would round to
   nothing. On CUDA the passes run under bf16 autocast (``mixed_precision``) on those float32
   master weights; log-probs and entropies always come from float32 logits.
8. ``rollout_engine="vllm"`` samples with vLLM on the GPU (``dasd.rollout.vllm``: the policy's
   weights are copied into vLLM before each batch of rollouts); scoring stays with the HF model.
    The advantages are multiplied by truncated importance weights min(pi_old / pi_vLLM, C) per
    token (``dasd.importance``, as TRL's ``vllm_importance_sampling_correction``), which also
    makes top-p < 1 admissible there; ``train/sampler_logp_gap`` logs the mean
    |log pi_sampler - log pi_old| with either engine.
9. A response with no EOS within ``max_new_tokens`` is rewarded ``truncated_reward`` (0) without
   asking the verifier; ``train/truncated_frac`` and ``eval/truncated_frac`` log how many.
10. Beside the ``time/`` phase timers (rollout; scoring with routing and advantages; update),
    each update logs ``perf/`` metrics (``dasd.perf``): generation and training tokens/s, the
    teacher's share of scoring, and on CUDA peak memory and MFU. ``report_to`` streams every
    logged metric to TensorBoard or W&B as well.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dasd.advantages import TokenAdvantages, get_method, group_advantages
from dasd.config_checks import check_fields, check_known
from dasd.entropy import token_entropy_and_logprob
from dasd.evaluation import eval_metrics, sample_rollout_rows
from dasd.importance import logprob_gap, truncated_is_weights
from dasd.losses import (
    AGGREGATIONS,
    aggregate_denominator,
    ppo_clip_loss,
    reverse_kl_loss,
)
from dasd.memory import GIB, REVERSE_KL_LOGIT_COPIES, logits_bytes_per_row, rows_within
from dasd.models import load_model, resolve_device
from dasd.perf import build_reporter, check_report_to, peak_flops, synced_time, update_metrics
from dasd.records import rollout_frame, verifier_rewards
from dasd.rollout import (
    ROLLOUT_ENGINES,
    Rollouts,
    build_rollout_engine,
    check_rollout_engine,
)
from dasd.rollout.hf import encode_prompts, kv_budget_batch_size
from dasd.routing import ROUTING_SIGNALS, RoutingBatch, build_routing_signal
from dasd.runlog import (
    RunWriter,
    check_new_run,
    create_run,
    open_run,
    os_error_at,
    read_manifest,
    read_metrics,
)
from dasd.scoring import TokenScores, response_logits, response_token_stats, score_rollouts
from dasd.tasks import TASKS, build_task
from dasd.tasks.base import Problem, Task

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"
#: ``TrainConfig.param_dtype`` -> the dtype ``load_model`` gets (None: the checkpoint's).
PARAM_DTYPES: dict[str, torch.dtype | None] = {"float32": torch.float32, "checkpoint": None}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; checked on construction, written into the manifest."""

    method: str = "dasd"
    """A registered method (``dasd.advantages.METHODS``)."""
    model: str = "tiny"
    """``tiny``, a local checkpoint directory, or a hub name."""
    task: str = "countdown"
    """A registered task."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Keyword settings of the task (e.g. ``{"benchmark": "aime24"}``)."""
    steps: int = 60
    """Policy updates (each: one batch of rollouts, PPO epochs over its mini-batches)."""
    prompts_per_step: int = 16
    """Prompts per update (the paper's B = 128, scaled)."""
    group_size: int = 8
    """Rollouts per prompt, G (paper: 8)."""
    mini_batch_size: int = 32
    """Responses per optimizer step (the paper's B_mini = 32 prompts, scaled)."""
    micro_batch_size: int = 16
    """Responses per forward pass, grouped by length; gradients are accumulated over a
    mini-batch exactly."""
    ppo_epochs: int = 1
    """Passes over each update's batch."""
    lr: float = 1e-4
    """Peak AdamW learning rate (paper: 3e-6 for Qwen3-1.7B)."""
    warmup_steps: int = 0
    """Linear warmup updates before the cosine decay."""
    min_lr_ratio: float = 0.0
    """Cosine decay ends at ``min_lr_ratio * lr``."""
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    """Max global gradient norm per optimizer step."""
    clip_low: float = 0.2
    """PPO clip epsilon below 1 (paper: 0.2)."""
    clip_high: float = 0.2
    """PPO clip epsilon above 1 (paper: 0.2; DAPO's clip-higher uses 0.28)."""
    loss_agg: str = "seq_mean_token_mean"
    """Loss aggregation (``dasd.losses.AGGREGATIONS``; the paper's eq. 1/5 is the default)."""
    beta: float = 0.1
    """Weight of the teacher term (eq. 5/8; not given by the paper)."""
    rho: float = 0.2
    """Router quantile (paper: 0.2); HEPO's top-entropy share."""
    routing: str = "entropy"
    """Per-token routing signal passed to the method where it takes the student entropy
    (``dasd.routing.ROUTING_SIGNALS``; the routing ablation of Table 12)."""
    eps: float = 1e-6
    method_options: dict[str, Any] = field(default_factory=dict)
    """Extra options of the method (e.g. ``{"direction": "hard"}`` for dasd)."""
    temperature: float = 1.0
    """Rollout temperature."""
    top_p: float = 1.0
    """Rollout nucleus top-p (1.0: the full policy, so PPO's ratio is on-policy)."""
    max_new_tokens: int = 160
    eval_every: int = 10
    """Evaluate every N updates (and at step 0 and the last step); 0 evaluates only those two."""
    eval_prompts: int = 64
    eval_k: int = 16
    eval_temperature: float = 1.0
    eval_top_p: float = 0.9
    eval_teacher: bool = False
    """Also score the privileged teacher on held-out rollouts."""
    log_rollouts_every: int = 10
    """Write the update's training rollouts (per-token entropy, log-probs, omega, advantage)
    every N updates (and at the first and last)."""
    checkpoint_every: int = 10
    """Save a checkpoint every N updates (and at the last)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    generation_batch_size: int = 128
    """Prompts per decoding batch of the ``hf`` rollout engine."""
    rollout_engine: str = "hf"
    """Sampler of training and held-out rollouts: ``hf`` (``transformers`` KV cache) or
    ``vllm`` (needs a CUDA GPU and ``pip install 'dasd[vllm]'``; ``dasd.rollout.vllm``)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Share of the GPU's memory vLLM takes for its weights and KV cache (``vllm`` engine);
    the rest is left to training."""
    vllm_max_prompt_tokens: int = 1024
    """Longest prompt vLLM reserves room for: its ``max_model_len`` is this +
    ``max_new_tokens`` (``vllm`` engine)."""
    vllm_is_cap: float = 3.0
    """Truncation C of the per-token importance weights min(pi_old / pi_vLLM, C) that correct
    for the mismatch between vLLM's sampler and the HF scorer (``dasd.importance``; TRL's
    ``vllm_importance_sampling_clip_max``); 0 turns the correction off (``vllm`` engine)."""
    truncated_reward: float | None = 0.0
    """Reward of a response with no EOS within ``max_new_tokens`` (training and held-out): 0,
    since the paper's verifier never sees an answer in it; None lets the verifier decide."""
    param_dtype: str = "float32"
    """Dtype of the trained parameters (and so of AdamW's state): ``float32`` (default; master
    weights that small updates do not round away) or ``checkpoint`` (keep the checkpoint's
    dtype, e.g. bf16: half the memory, but updates below the dtype's spacing are lost)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass of the PPO forward
    (``use_reentrant=False``) instead of storing them: less memory at long responses, about one
    more forward pass of time. Scoring and rollouts are unaffected."""
    mixed_precision: str = "auto"
    """Autocast of the policy's passes (rollouts, scoring, routing, the PPO forward): ``auto``
    (bf16 on CUDA, none on a CPU), ``bf16`` or ``no``. Parameters and AdamW state stay in
    ``param_dtype`` (float32 master weights by default), and log-probs and entropies come from
    float32 logits either way (``dasd.scoring``)."""
    kv_cache_budget_gb: float = 16.0
    """KV cache a generation batch of the ``hf`` engine may hold: its prompts are at most
    ``generation_batch_size`` and as many as fit (``dasd.memory``)."""
    logits_budget_gb: float = 8.0
    """float32 logits (or attention probabilities) a pass that holds them whole may take: the
    reverse-KL micro-steps are cut to fit it, as are the ``grad_norm`` and ``attention``
    routing passes (``dasd.memory``)."""
    report_to: str = "none"
    """Also stream the logged metrics to ``tensorboard`` or ``wandb`` (optional extras);
    ``metrics.jsonl`` is written either way."""
    peak_tflops: float = 0.0
    """Peak FLOP/s of the accelerator for ``perf/mfu`` (TFLOP/s); 0: the card's dense bf16 peak
    from ``dasd.perf.PEAK_BF16_TFLOPS``, no MFU where unknown."""
    seed: int = 0
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu`` or ``cuda``."""

    @property
    def corrects_sampler_gap(self) -> bool:
        """Whether the rollouts' sampler-vs-scorer gap is corrected by truncated importance
        sampling: an engine whose sampler is not the scorer (``vllm``) and
        ``vllm_is_cap > 0``."""
        return ROLLOUT_ENGINES.get(self.rollout_engine).corrects_sampler_gap \
            and self.vllm_is_cap > 0

    def __post_init__(self) -> None:
        check_fields(self)
        method = get_method(self.method)
        TASKS.get(self.task)
        AGGREGATIONS.get(self.loss_agg)
        ROUTING_SIGNALS.get(self.routing)
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be >= 2, got {self.group_size}: the group-relative advantage "
                "divides by the std of G rewards"
            )
        if not 0 < self.rho < 1:
            raise ValueError(f"rho must be in (0, 1), got {self.rho}")
        positive = ("steps", "prompts_per_step", "mini_batch_size", "micro_batch_size",
                    "ppo_epochs", "max_new_tokens", "eval_prompts", "eval_k",
                    "generation_batch_size", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "log_rollouts_every", "checkpoint_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        batch = self.prompts_per_step * self.group_size
        if batch % self.mini_batch_size or self.mini_batch_size % self.micro_batch_size:
            raise ValueError(
                f"need mini_batch_size | prompts_per_step * group_size ({batch}) and "
                f"micro_batch_size | mini_batch_size; got {self.mini_batch_size}, "
                f"{self.micro_batch_size}"
            )
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.grad_clip > 0):
            raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1 and grad_clip > 0")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got "
                             f"{self.clip_low}, {self.clip_high}")
        if not (math.isfinite(self.beta) and self.eps > 0):
            raise ValueError(f"beta must be finite and eps > 0, got {self.beta}, {self.eps}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("training rollouts need temperature > 0 and 0 < top_p <= 1")
        if not (self.vllm_is_cap >= 0 and math.isfinite(self.vllm_is_cap)
                and self.vllm_max_prompt_tokens >= 1):
            raise ValueError("need vllm_is_cap >= 0 (finite) and vllm_max_prompt_tokens >= 1, got "
                             f"{self.vllm_is_cap}, {self.vllm_max_prompt_tokens}")
        if self.top_p < 1 and not self.corrects_sampler_gap:
            raise ValueError(
                f"top_p={self.top_p} < 1 makes the PPO ratio off-policy (the scorer's pi_old has "
                "no top-p); use top_p=1, or rollout_engine=vllm with vllm_is_cap > 0 to correct it"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not 0 < self.vllm_gpu_memory_utilization < 1:
            raise ValueError("vllm_gpu_memory_utilization must be in (0, 1), got "
                             f"{self.vllm_gpu_memory_utilization}")
        if self.mixed_precision not in ("auto", "bf16", "no"):
            raise ValueError(f"mixed_precision must be auto, bf16 or no, got "
                             f"{self.mixed_precision!r}")
        if not (self.kv_cache_budget_gb > 0 and self.logits_budget_gb > 0
                and self.peak_tflops >= 0):
            raise ValueError("need kv_cache_budget_gb > 0, logits_budget_gb > 0 and "
                             "peak_tflops >= 0")
        check_report_to(self.report_to)
        if self.param_dtype not in PARAM_DTYPES:
            raise ValueError(f"param_dtype must be one of {', '.join(PARAM_DTYPES)}, got "
                             f"{self.param_dtype!r}")
        check_rollout_engine(self.rollout_engine, device=self.device)
        _dry_run(method, self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config stored in a run's manifest (unknown keys are an error)."""
        check_known(cls, values)
        return cls(**values)


def _enable_checkpointing(model: Any) -> None:
    """Turn on ``transformers``' activation checkpointing of every decoder layer with
    ``use_reentrant=False``; it acts only in training mode with gradients enabled, so eval-mode
    and no-grad passes run as before. ``activation_checkpointing_enable`` where the installed
    ``transformers`` has it (>= 5.x), else ``gradient_checkpointing_enable``."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"gradient_checkpointing: {type(model).__name__} does not support "
                         "activation checkpointing; set gradient_checkpointing=false")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _dry_run(method: Any, cfg: TrainConfig) -> None:
    """Call the method's shaper on a one-row batch so bad ``method_options`` fail before any
    work starts."""
    ones = torch.ones(1, 2)
    options = dict(cfg.method_options)
    if method.needs_correct:
        options["correct"] = torch.ones(1, dtype=torch.bool)
    method(torch.zeros(1), ones, -ones, -ones, ones.bool(), beta=cfg.beta, rho=cfg.rho,
           eps=cfg.eps, **options)


def learning_rate(update: int, cfg: TrainConfig) -> float:
    """Learning rate of update ``update`` (1-based): linear warmup, then cosine decay from
    ``cfg.lr`` toward ``cfg.min_lr_ratio * cfg.lr``, reached one update after the last, so that
    the last update still learns (paper appendix F: cosine decay)."""
    if update <= cfg.warmup_steps:
        return cfg.lr * update / (cfg.warmup_steps + 1)
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = (update - cfg.warmup_steps - 1) / span
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def _seed(seed: int, step: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0])


def _generator(seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(seed, step, stream))


_DATA, _SAMPLING, _SHUFFLE, _EVAL = range(4)


def training_problems(task: Task, cfg: TrainConfig, step: int) -> list[Problem]:
    """The training prompts of update ``step``: a function of (``cfg.seed``, ``step``) only, so
    every method (and another trainer, in the benchmarks) sees the same batches."""
    return task.sample(cfg.prompts_per_step, split="train", seed=_seed(cfg.seed, step, _DATA))


@dataclass
class _Batch:
    """One update's tensors, responses grouped by prompt (G consecutive rows per prompt)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor
    teacher_ids: torch.Tensor | None
    teacher_mask: torch.Tensor | None


def _teacher_prompts(
    task: Task, method: Any, problems: Sequence[Problem], rollouts: Rollouts,
    correct: torch.Tensor, group_size: int,
) -> list[str] | None:
    """The privileged context of each response: none, the reference r (appendix F), or a correct
    sibling rollout of the same group (SDPO-style; the reference when no sibling is correct)."""
    if method.teacher == "none":
        return None
    prompts = []
    for i, response in enumerate(rollouts.responses):
        problem = problems[i // group_size]
        if method.teacher == "sibling":
            start = (i // group_size) * group_size
            siblings = [j for j in range(start, start + group_size) if j != i and correct[j]]
            if siblings:
                problem = replace(problem, reference=rollouts.responses[siblings[0]])
        prompts.append(task.teacher_prompt(problem))
    return prompts


def _checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in (run_dir / CHECKPOINTS).glob("step-*"):
        if path.is_dir() and (path / TRAINER_STATE).exists() and path.name[5:].isdigit():
            found.append((int(path.name[5:]), path))
    return sorted(found)


def _save_checkpoint(run_dir: Path, step: int, model: Any, tokenizer: Any,
                     optimizer: torch.optim.Optimizer, keep: int) -> None:
    """``checkpoints/step-N/``: weights and tokenizer (``save_pretrained``), optimizer state,
    trainer state; written under a temporary name and renamed, so a kill leaves none or all
    (a temporary left by a kill is removed at the next save; one left by an error, e.g. a full
    disk, at once)."""
    root = run_dir / CHECKPOINTS
    root.mkdir(exist_ok=True)
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_STATE)
        (tmp / TRAINER_STATE).write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise os_error_at(exc, tmp) from None
        raise
    for _, old in _checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old)


def _checkpoint_state(path: Path, step: int) -> dict[str, Any]:
    """The optimizer state of checkpoint ``path`` (of update ``step``), after checking that it
    holds everything a resume needs (config, weights, trainer state); a one-line error naming
    what is missing otherwise, raised before anything of the run is touched."""
    redo = f"remove {path} to resume from the checkpoint before it"
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    if not (path / "config.json").is_file() or not any((path / w).is_file() for w in weights):
        raise ValueError(f"{path}: checkpoint has no config.json or model weights; {redo}")
    try:
        state = json.loads((path / TRAINER_STATE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path / TRAINER_STATE}: unreadable ({exc}); {redo}") from None
    if not isinstance(state, dict) or state.get("step") != step:
        raise ValueError(f"{path / TRAINER_STATE}: does not record step {step}; {redo}")
    try:
        return torch.load(path / OPTIMIZER_STATE, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path / OPTIMIZER_STATE}: unreadable optimizer state ({detail}); "
                         f"{redo}") from None


def _train_metrics(rewards: torch.Tensor, correct: torch.Tensor, rollouts: Rollouts,
                   scores: TokenScores, shaped: TokenAdvantages) -> dict[str, float]:
    """The ``train/...`` metrics of one update: reward, accuracy, length, token entropy, the
    shaper's statistics, truncation and the sampler's log-prob gap (per valid token)."""
    mask = rollouts.response_mask
    valid = mask.sum().clamp(min=1)
    return {
        "train/reward": float(rewards.mean()),
        "train/accuracy": float(correct.float().mean()),
        "train/length_tokens": float(mask.sum(1).float().mean()),
        "train/entropy_mean": float(scores.entropy[mask].sum() / valid),
        "train/omega_pos_frac": float(((shaped.omega > 0) & mask).sum() / valid),
        "train/delta_bar_abs_mean": float(shaped.delta_bar[mask].abs().sum() / valid),
        "train/advantage_abs_mean": float(shaped.advantages[mask].abs().sum() / valid),
        "train/truncated_frac": float((~rollouts.finished).float().mean()),
        "train/sampler_logp_gap": float(logprob_gap(scores.student_logp, rollouts.logprobs,
                                                    mask)),
    }


def _token_counts(rollouts: Rollouts, teacher_mask: torch.Tensor | None,
                  ppo_epochs: int) -> dict[str, int]:
    """Tokens generated, trained on (prompt + response, per PPO epoch) and fed to the teacher's
    forward in the loss (reverse KL only) in one update (``dasd.perf.update_metrics``)."""
    response_tokens = int(rollouts.response_mask.sum())
    teacher_tokens = 0 if teacher_mask is None else ppo_epochs * (
        int(teacher_mask.sum()) + response_tokens)
    return {"generated_tokens": response_tokens,
            "trained_tokens": ppo_epochs * (int(rollouts.prompt_mask.sum()) + response_tokens),
            "teacher_forward_tokens": teacher_tokens}


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


class Trainer:
    """Runs ``TrainConfig`` into a run directory; ``run()`` trains to ``cfg.steps``.

    Use ``Trainer.start(cfg, run_dir)`` for a new run and ``Trainer.resume(run_dir)`` to continue
    a killed or finished one from its newest checkpoint.
    """

    def __init__(self, cfg: TrainConfig, open_writer: Callable[[], RunWriter], *,
                 start_step: int, model_source: str,
                 optimizer_state: dict[str, Any] | None = None) -> None:
        """Build the model, engine, task, routing and optimizer, and only then call
        ``open_writer()`` for the run directory, so a bad model, task or option leaves no
        run behind and a resume rewinds nothing."""
        self.cfg = cfg
        self.start_step = start_step
        device = resolve_device(cfg.device)
        self.device = torch.device(device)
        self.model, self.tokenizer = load_model(model_source, device=device,
                                                dtype=PARAM_DTYPES[cfg.param_dtype])
        self.autocast = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto"
                                                          and self.device.type == "cuda")
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.peak_flops = peak_flops(self.device, cfg.peak_tflops)
        if cfg.gradient_checkpointing:
            _enable_checkpointing(self.model)
        self.generate = build_rollout_engine(
            cfg.rollout_engine, self.model,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, seed=cfg.seed,
            max_new_tokens=cfg.max_new_tokens, max_prompt_tokens=cfg.vllm_max_prompt_tokens,
        )
        self.task = build_task(cfg.task, tokenizer=self.tokenizer, **cfg.task_options)
        self.method = get_method(cfg.method)
        self.routing = build_routing_signal(cfg.routing, task=self.task, tokenizer=self.tokenizer)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        self.eval_problems = self.task.sample(cfg.eval_prompts, split="eval", seed=cfg.seed)
        self.run_writer = open_writer()
        self.run_dir = self.run_writer.path
        self.reporter = build_reporter(cfg.report_to, self.run_dir, asdict(cfg))

    @classmethod
    def start(cls, cfg: TrainConfig, run_dir: Path) -> Trainer:
        check_new_run(run_dir)
        return cls(cfg, partial(create_run, run_dir, kind="train", config=asdict(cfg),
                                seed=cfg.seed, method=cfg.method, model=cfg.model,
                                task=cfg.task),
                   start_step=0, model_source=cfg.model)

    @classmethod
    def resume(cls, run_dir: Path, *, steps: int | None = None) -> Trainer:
        """Continue the run at ``run_dir`` from its newest checkpoint (or from the base model
        when none was written); ``steps`` extends a finished run, and must not be below what
        the run has logged. The checkpoint is checked and loaded before the run's records of
        later steps are rewound (``open_run``), so a broken checkpoint loses nothing."""
        manifest = read_manifest(run_dir)
        if manifest["kind"] != "train":
            raise ValueError(f"{run_dir} is a {manifest['kind']} run, not a train run")
        where = Path(run_dir) / "manifest.json"
        if not isinstance(manifest.get("config"), dict):
            raise ValueError(f"{where}: holds no config to resume from")
        try:
            cfg = TrainConfig.from_dict(manifest["config"])
        except ValueError as err:
            raise ValueError(f"{where}: config: {err}") from None
        checkpoints = _checkpoint_dirs(Path(run_dir))
        step, source, optimizer_state = 0, cfg.model, None
        if checkpoints:
            step, path = checkpoints[-1]
            source = str(path)
            optimizer_state = _checkpoint_state(path, step)
        if steps is not None:
            logged = read_metrics(run_dir)["step"]
            done = max(step, int(logged.max()) if len(logged) else 0)
            if steps < done:
                raise ValueError(f"--steps {steps} is below what {run_dir} has logged (step "
                                 f"{done}); give --steps {done} or more, or leave it out")
            cfg = replace(cfg, steps=steps)

        def open_writer() -> RunWriter:
            run = open_run(run_dir, rewind_to=step)
            if steps is not None:
                run.update_manifest(config=asdict(cfg))
            return run

        return cls(cfg, open_writer, start_step=step, model_source=source,
                   optimizer_state=optimizer_state)

    def run(self, callback: Callable[[int, dict[str, float]], None] | None = None) -> Path:
        """Train to ``cfg.steps``; ``callback(step, metrics)`` after every logged step."""
        cfg = self.cfg
        with self.run_writer, self._closing_reporter():
            # The base model's evaluation; a resumed run's was logged before its checkpoint.
            if self.start_step == 0 and not self._eval_logged(0):
                metrics = self.evaluate(0)
                if callback:
                    callback(0, metrics)
            for step in range(self.start_step + 1, cfg.steps + 1):
                metrics = self.update(step)
                self._log(step, "train", metrics)
                if _due(step, cfg.eval_every, cfg.steps):
                    metrics |= self.evaluate(step)
                if _due(step, cfg.checkpoint_every, cfg.steps):
                    _save_checkpoint(self.run_dir, step, self.model, self.tokenizer,
                                     self.optimizer, cfg.keep_checkpoints)
                if callback:
                    callback(step, metrics)
        return self.run_dir

    @contextmanager
    def _closing_reporter(self) -> Iterator[None]:
        try:
            yield
        finally:
            if self.reporter is not None:
                self.reporter.close()

    def _log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Append to metrics.jsonl (the source of truth), then to the ``report_to`` sink."""
        self.run_writer.log_metrics(step, split, metrics)
        if self.reporter is not None:
            self.reporter.log(step, split, metrics)

    def _precision(self) -> Any:
        """The autocast context of the policy's passes (``mixed_precision``)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def _generation_batch(self, prompts: Sequence[str]) -> int:
        """Prompts per ``hf`` generation batch: ``generation_batch_size`` at most, and no more
        than the KV cache of (longest prompt + max_new_tokens) tokens each fits the budget."""
        return kv_budget_batch_size(
            self.model, self.tokenizer, prompts, max_new_tokens=self.cfg.max_new_tokens,
            budget_gb=self.cfg.kv_cache_budget_gb, cap=self.cfg.generation_batch_size,
            dtype=torch.bfloat16 if self.autocast else None)

    def _eval_logged(self, step: int) -> bool:
        if not (self.run_dir / "metrics.jsonl").exists():
            return False
        metrics = read_metrics(self.run_dir)
        return bool(((metrics["step"] == step) & (metrics["split"] == "eval")).any())

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out Avg@k, Pass@k and reasoning health of the current policy, logged at ``step``."""
        cfg = self.cfg
        batch_size = self._generation_batch([self.task.student_prompt(p)
                                             for p in self.eval_problems])
        with self._precision():
            frame = sample_rollout_rows(
                self.model, self.tokenizer, self.task, self.eval_problems, k=cfg.eval_k,
                step=step, split="eval", max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.eval_temperature, top_p=cfg.eval_top_p, batch_size=batch_size,
                teacher=cfg.eval_teacher, generator=_generator(cfg.seed, 0, _EVAL),
                engine=self.generate, score_batch_size=cfg.micro_batch_size,
                truncated_reward=cfg.truncated_reward,
            )
        self.run_writer.write_rollouts(step, "eval", frame)
        metrics = eval_metrics(frame)
        self._log(step, "eval", metrics)
        return metrics

    def update(self, step: int) -> dict[str, float]:
        """One policy update (Algorithm 1 lines 3-25) at 1-based index ``step``."""
        cfg = self.cfg
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = synced_time(self.device)
        problems = training_problems(self.task, cfg, step)
        prompts = [self.task.student_prompt(p) for p in problems for _ in range(cfg.group_size)]
        with self._precision():
            rollouts = self.generate(
                self.model, self.tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature, top_p=cfg.top_p,
                batch_size=self._generation_batch(prompts),
                generator=_generator(cfg.seed, step, _SAMPLING),
            )
        rewards = torch.from_numpy(verifier_rewards(self.task, problems, rollouts,
                                                    truncated_reward=cfg.truncated_reward))
        correct = rewards > 0.5
        t_rollout = synced_time(self.device)
        teacher_prompts = _teacher_prompts(self.task, self.method, problems, rollouts, correct,
                                           cfg.group_size)
        timings: dict[str, float] = {}
        with self._precision():
            scores = score_rollouts(self.model, self.tokenizer, rollouts, teacher_prompts,
                                    batch_size=cfg.micro_batch_size, temperature=cfg.temperature,
                                    timings=timings)
            group_adv = group_advantages(rewards, cfg.group_size, eps=cfg.eps)
            routing = self.routing(self.model,
                                   RoutingBatch.from_rollouts(rollouts, scores.entropy),
                                   temperature=cfg.temperature,
                                   memory_budget=cfg.logits_budget_gb * GIB)
        shaped, advantages = self._shape(group_adv, routing, scores, rollouts, correct)
        t_score = synced_time(self.device)
        teacher_ids = teacher_mask = None
        if self.method.reverse_kl:
            teacher_ids, teacher_mask = encode_prompts(self.tokenizer, teacher_prompts)
        batch = _Batch(rollouts.prompt_ids, rollouts.prompt_mask, rollouts.response_ids,
                       rollouts.response_mask, scores.student_logp, advantages,
                       teacher_ids, teacher_mask)
        losses = self._ppo(batch, step)
        t_update = synced_time(self.device)
        metrics = {
            **_train_metrics(rewards, correct, rollouts, scores, shaped),
            "optim/lr": learning_rate(step, cfg),
            "time/rollout_s": t_rollout - t0,
            "time/score_s": t_score - t_rollout,
            "time/update_s": t_update - t_score,
            "time/step_s": t_update - t0,
            **update_metrics(device=self.device, peak=self.peak_flops, n_params=self.n_params,
                             rollout_s=t_rollout - t0, update_s=t_update - t_score,
                             teacher_s=timings.get("teacher_s", 0.0),
                             **_token_counts(rollouts, teacher_mask, cfg.ppo_epochs)),
            **losses,
        }
        if _due(step, cfg.log_rollouts_every, cfg.steps) or step == 1:
            self._log_rollouts(step, problems, rollouts, scores, shaped)
        return metrics

    def _shape(self, group_adv: torch.Tensor, routing: torch.Tensor, scores: TokenScores,
               rollouts: Rollouts, correct: torch.Tensor) -> tuple[TokenAdvantages, torch.Tensor]:
        """The method's token advantages (Algorithm 1 lines 13-21) from the routing signal
        ``(B, T)``, and the ``(B, T)`` advantages the PPO loss takes: the same, times the
        truncated importance weights of the sampler's log-probs with vLLM rollouts and
        ``vllm_is_cap`` > 0."""
        cfg = self.cfg
        mask = rollouts.response_mask
        options = dict(cfg.method_options)
        if self.method.needs_correct:
            options["correct"] = correct
        shaped = self.method(group_adv.float(), routing, scores.student_logp,
                             scores.teacher_logp, mask, beta=cfg.beta, rho=cfg.rho, eps=cfg.eps,
                             **options)
        advantages = shaped.advantages
        if cfg.corrects_sampler_gap:
            advantages = advantages * truncated_is_weights(
                scores.student_logp, rollouts.logprobs, mask, cap=cfg.vllm_is_cap)
        return shaped, advantages

    def _log_rollouts(self, step: int, problems: Sequence[Problem], rollouts: Rollouts,
                      scores: TokenScores, shaped: Any) -> None:
        frame = rollout_frame(self.task, problems, rollouts, step=step, split="train",
                              scores=scores,
                              token_columns={"omega": shaped.omega, "advantage": shaped.advantages},
                              truncated_reward=self.cfg.truncated_reward)
        self.run_writer.write_rollouts(step, "train", frame)

    def _ppo(self, batch: _Batch, step: int) -> dict[str, float]:
        """PPO epochs over shuffled mini-batches; one AdamW step per mini-batch, gradients
        accumulated exactly over its micro-batches (``aggregate_denominator``)."""
        cfg = self.cfg
        lr = learning_rate(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n = batch.response_ids.shape[0]
        shuffle = _generator(cfg.seed, step, _SHUFFLE)
        sums: dict[str, float] = {}
        count = 0
        self.model.train()
        try:
            for _ in range(cfg.ppo_epochs):
                order = torch.randperm(n, generator=shuffle, device=batch.response_ids.device)
                for start in range(0, n, cfg.mini_batch_size):
                    rows = order[start:start + cfg.mini_batch_size]
                    stats = self._optimizer_step(batch, rows)
                    for key, value in stats.items():
                        sums[key] = sums.get(key, 0.0) + value
                    count += 1
        finally:
            self.model.eval()
        return {key: value / count for key, value in sums.items()}

    def _optimizer_step(self, batch: _Batch, rows: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        device = next(self.model.parameters()).device
        mini_mask = batch.response_mask[rows]
        total = aggregate_denominator(mini_mask, cfg.loss_agg)
        # Longest first, so each micro-batch is cut to lengths alike (little padding); the
        # accumulation is exact whatever the grouping.
        rows = rows[torch.argsort(mini_mask.sum(1), descending=True, stable=True)]
        self.optimizer.zero_grad(set_to_none=True)
        stats = {"loss/total": 0.0, "loss/policy": 0.0, "loss/kl": 0.0, "loss/clip_frac": 0.0,
                 "loss/approx_kl": 0.0}
        start = 0
        while start < len(rows):
            take = self._micro_rows(int(batch.response_mask[rows[start]].sum()))
            micro = rows[start:start + take]
            start += take
            mask = batch.response_mask[micro]
            width = max(int(mask.sum(1).max()), 1)
            mask = mask[:, :width].to(device)
            ids = batch.response_ids[micro, :width].masked_fill(~mask.cpu(), 0)
            weight = float(aggregate_denominator(mask, cfg.loss_agg) / total)
            with self._precision():
                if self.method.reverse_kl:
                    logits = response_logits(self.model, batch.prompt_ids[micro],
                                             batch.prompt_mask[micro], ids)
                    _, logp = token_entropy_and_logprob(logits, ids.to(device),
                                                        temperature=cfg.temperature)
                else:
                    _, logp = response_token_stats(self.model, batch.prompt_ids[micro],
                                                   batch.prompt_mask[micro], ids,
                                                   temperature=cfg.temperature)
                policy, ppo_stats = ppo_clip_loss(
                    logp, batch.old_logp[micro, :width].to(device),
                    batch.advantages[micro, :width].to(device), mask,
                    clip_low=cfg.clip_low, clip_high=cfg.clip_high, agg=cfg.loss_agg,
                )
                loss = policy
                if self.method.reverse_kl:
                    with torch.no_grad():
                        teacher_logits = response_logits(self.model, batch.teacher_ids[micro],
                                                         batch.teacher_mask[micro], ids)
                    kl, _ = reverse_kl_loss(logits, teacher_logits, mask, agg=cfg.loss_agg,
                                            temperature=cfg.temperature)
                    loss = loss + cfg.beta * kl
                    stats["loss/kl"] += weight * float(kl.detach())
            (loss * weight).backward()
            stats["loss/total"] += weight * float(loss.detach())
            stats["loss/policy"] += weight * float(policy.detach())
            stats["loss/clip_frac"] += weight * float(ppo_stats["clip_frac"])
            stats["loss/approx_kl"] += weight * float(ppo_stats["approx_kl"])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(
                f"gradient norm is {float(grad_norm)}; lower lr or beta, or check the inputs"
            )
        self.optimizer.step()
        stats["optim/grad_norm"] = float(grad_norm)
        return stats

    def _micro_rows(self, longest: int) -> int:
        """Responses in the next PPO forward (its longest has ``longest`` tokens):
        ``micro_batch_size``, fewer for a reverse-KL method when its float32 student logits,
        their gradient and the teacher logits would exceed ``logits_budget_gb``."""
        cfg = self.cfg
        if not self.method.reverse_kl:
            return cfg.micro_batch_size
        per_row = logits_bytes_per_row(max(longest, 1), self.model.config.vocab_size,
                                       REVERSE_KL_LOGIT_COPIES)
        return rows_within(cfg.logits_budget_gb * GIB, per_row, cfg.micro_batch_size)


def train(cfg: TrainConfig, run_dir: Path,
          callback: Callable[[int, dict[str, float]], None] | None = None) -> Path:
    """Train a new run at ``run_dir`` (see ``Trainer``)."""
    return Trainer.start(cfg, run_dir).run(callback)


def resume(run_dir: Path, *, steps: int | None = None,
           callback: Callable[[int, dict[str, float]], None] | None = None) -> Path:
    """Continue the run at ``run_dir`` from its newest checkpoint (see ``Trainer.resume``)."""
    return Trainer.resume(run_dir, steps=steps).run(callback)

