"""`dasd-probe entropy-tv`: Probe 2, token-level teacher pressure vs student entropy (paper
section 3 "Probe 2", Fig. 3, eq. 6 and 7, appendix A.2).

On a batch of student rollouts, per response token o_t with prefix (x, o_<t):

- H_t, the student entropy of p_t = π_θ(·|x, o_<t);
- A_t = log q_t(o_t) − log p_t(o_t) (eq. 6), q_t = π_θ(·|x, r, o_<t) the privileged self-teacher
  (same weights, the reference solution r in the prompt; appendix F);
- its exact expectation under the student, E_{o~p_t}[A_t] = Σ_v p_t(v)(log q_t(v) − log p_t(v))
  = −KL(p_t ‖ q_t) ≤ 0 (DESIGN.md section 5): on the student's own samples the signed gap is
  negative on average at every prefix, so how A_t relates to H_t depends on where p and q
  disagree; ``neg_kl`` is logged beside A_t, and ρ_s(|A_t|, H_t) beside ρ_s(A_t, H_t);
- D_t^(s) = TV(p_t, p_t^(s)) (eq. 7) for s = ±1, where p^(s) is the student after one gradient
  step on the signed objective below, and KL(p_t^(s) ‖ q_t) after each step.

The summary gives ρ_s(A_t, H_t) with a prompt-level bootstrap interval (the paper reports
ρ_s = +0.52), the same for |A_t|, E[A_t], D^(+) and D^(−), means by entropy decile (Fig. 3a/b),
and the split by rollout outcome (correct vs incorrect rollouts).

The one-step objective. Sign s pulls the student toward the teacher (s = +1, Conformity) or
pushes it away (s = −1, Novelty). With the stop-gradient teacher of Proposition 1 (ω_t ≡ s,
A_G = 0), the local loss is ℓ_t = s·KL(p_θ ‖ q), whose score-function gradient on the emitted
token is −s·sg(A_t)·∇ log p_θ(o_t) (appendix B). The step therefore ascends the surrogate

    J_s(θ) = s · (1/N) Σ_i (1/|o_i|) Σ_t sg(A_t) · log p_θ(o_t)        (``signed_gap_objective``)

by plain SGD: θ^(s) = θ + lr·∇J_s(θ) = θ + s·lr·∇J_{+1}(θ). In expectation over o_t ~ p_t this
is a step down s·KL(p ‖ q), so s = +1 moves p toward q. Differentiating Σ_t s·A_t itself (the
gradient flowing through −log p_θ(o_t)) would instead push down every sampled token for s = +1,
whatever the teacher says: not the paper's pressure.

Departures and choices (the paper does not state them):

1. The gradient is computed once on the whole batch; the two steps are θ ± lr·g with the same g,
   each on its own deep copy of the model (the given model is not changed).
2. Aggregation is the paper's eq. 1/5 normalisation (mean over rollouts of the mean over their
   tokens), so ``lr`` does not scale with batch size or response length. The step has no
   momentum, weight decay or clipping; the weights are loaded in float32 so that a small step is
   not lost to bf16 rounding.
3. Since θ^(±) = θ ± lr·g, D^(+) and D^(−) agree to first order in lr; they differ through the
   curvature of the softmax, so their contrast across entropy (Fig. 3b) needs a step beyond the
   linear regime. The default ``lr`` = 1.0 is a choice for the built-in tiny model: there the
   s = +1 step still lowers the batch's mean KL(p ‖ q), while a few times larger steps
   overshoot and raise it for both signs. The summary logs the mean KL before and after each
   step, so the regime of any run can be checked.
4. Rollouts are sampled from the student itself (temperature 1, top-p 1.0, not the paper's
   evaluation top-p 0.9), so that E_p[A_t] = −KL(p_t ‖ q_t) holds for the logged samples; they
   answer the task's held-out split (the paper's probes use AIME24 rollouts).
5. The defaults are the built-in world (tiny model, Countdown, 64 prompts × 4 samples), not
   Qwen3-1.7B on AIME24.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from analysis.stats import binned_means, spearman_cis, tv_from_logits
from dasd.config_checks import check_fields
from dasd.entropy import token_entropy_and_logprob, token_reverse_kl
from dasd.losses import aggregate, aggregate_denominator
from dasd.models import load_model
from dasd.records import rollout_frame
from dasd.rollout import generate
from dasd.rollout.batching import length_sorted_chunks
from dasd.rollout.hf import encode_prompts, eval_mode
from dasd.runlog import create_run
from dasd.scoring import TokenScores, response_logits
from dasd.tasks import build_task
from figures.terminal import Terminal, cell
from probes.config_bases import BootstrapConfig
from probes.registry import register_probe

__all__ = [
    "EntropyTVConfig",
    "ProbeBatch",
    "TokenShift",
    "TOKEN_TABLE_COLUMNS",
    "expected_gap",
    "one_step_shift",
    "run_entropy_tv",
    "signed_gap_objective",
    "summarize_tokens",
    "token_table",
]

#: Columns of ``tokens.parquet`` (one row per response token) and their dtypes.
TOKEN_TABLE_COLUMNS: dict[str, str] = {
    "prompt_id": "str",
    "sample_idx": "int32",
    "position": "int32",
    "token": "int32",
    "correct": "bool",
    "H": "float32",
    "A": "float32",
    "neg_kl": "float32",
    "D_plus": "float32",
    "D_minus": "float32",
    "kl_plus": "float32",
    "kl_minus": "float32",
}

#: Token columns whose Spearman correlation with H (and bootstrap interval) the summary gives.
_CORRELATED = ("A", "abs_A", "neg_kl", "D_plus", "D_minus")
_BINNED = ("A", "abs_A", "neg_kl", "D_plus", "D_minus", "kl_before", "kl_plus", "kl_minus")


@dataclass(frozen=True)
class EntropyTVConfig(BootstrapConfig):
    """Settings of one Probe 2 run; checked on construction, written into the manifest."""

    model: str = "tiny"
    """``tiny``, a local checkpoint directory, or a hub name."""
    task: str = "countdown"
    """A registered task."""
    benchmark: str = ""
    """The task's benchmark where it has several (``math``); empty: the task's default."""
    n_prompts: int = 64
    """Held-out problems."""
    k: int = 4
    """Student samples per problem."""
    lr: float = 1.0
    """Learning rate of the one plain-SGD step (departure 3)."""
    n_bins: int = 10
    """Entropy quantile bins of the binned tables (10: deciles, as Fig. 3)."""
    max_new_tokens: int = 160
    """Generation limit per response."""
    generation_batch_size: int = 128
    """Prompts per generation micro-batch."""
    micro_batch_size: int = 32
    """Responses per forward pass of the scoring, gradient and shift passes."""
    chunk_size: int = 1024
    """Positions per chunk of the float32 softmax work (entropy, KL, TV)."""
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu`` or ``cuda``."""
    seed: int = 0
    """Seed of the problems, the samples and the bootstrap."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.n_prompts < 1 or self.k < 1:
            raise ValueError(f"n_prompts ({self.n_prompts}) and k ({self.k}) must be >= 1")
        if not (np.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr}")
        self.check_bootstrap(allow_none=True)
        for name in ("n_bins", "max_new_tokens", "generation_batch_size", "micro_batch_size",
                     "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


# --------------------------------------------------------------------------- pure math


def signed_gap_objective(
    student_logp: Tensor,
    teacher_logp: Tensor,
    mask: Tensor,
    *,
    sign: float,
    agg: str = "seq_mean_token_mean",
) -> Tensor:
    """The surrogate J_s = s · Agg_t[sg(A_t) · log p_θ(o_t)] whose ascent is the signed step.

    Args:
        student_logp: ``(B, T)`` log p_θ(o_t), with gradient.
        teacher_logp: ``(B, T)`` log q(o_t) of the privileged teacher (no gradient needed).
        mask: ``(B, T)`` bool, valid response tokens.
        sign: s, +1 (Conformity: toward q) or −1 (Novelty: away from q).
        agg: aggregation mode of ``dasd.losses.aggregate`` (default: the paper's eq. 1/5).

    Returns:
        A scalar. Its gradient is s · Agg_t[A_t ∇ log p_θ(o_t)], the sampled form of
        −s · ∇ KL(p_θ ‖ q) (Proposition 1, appendix B); A_t (eq. 6) is held constant.
    """
    if student_logp.shape != teacher_logp.shape or student_logp.shape != mask.shape:
        raise ValueError(
            f"student_logp {tuple(student_logp.shape)}, teacher_logp "
            f"{tuple(teacher_logp.shape)} and mask {tuple(mask.shape)} must have equal shape"
        )
    gap = (teacher_logp - student_logp).detach()
    return sign * aggregate(gap * student_logp, mask.bool(), agg)


def expected_gap(student_logits: Tensor, teacher_logits: Tensor, *, chunk_size: int = 1024
                 ) -> Tensor:
    """E_{o~p}[A] = Σ_v p(v)(log q(v) − log p(v)) = −KL(p ‖ q) per position, ≤ 0.

    ``student_logits``, ``teacher_logits``: ``(..., V)``; returns float32 ``(...)``, no gradient.
    """
    return -token_reverse_kl(student_logits.detach(), teacher_logits.detach(),
                             chunk_size=chunk_size)


# --------------------------------------------------------------------------- the measurement


@dataclass
class ProbeBatch:
    """Responses with their student and teacher prompts (all left-padded prompts, right-padded
    responses, as ``dasd.rollout.generate`` returns them)."""

    prompt_ids: Tensor
    """``(N, P)`` student prompts x."""
    prompt_mask: Tensor
    teacher_ids: Tensor
    """``(N, P')`` teacher prompts (x with r)."""
    teacher_mask: Tensor
    response_ids: Tensor
    """``(N, T)`` sampled responses."""
    response_mask: Tensor
    """``(N, T)`` bool, True on response tokens (valid tokens first in each row)."""


@dataclass
class TokenShift:
    """Per-token measurements of ``one_step_shift``: ``(N, T)`` float32 on CPU, 0 outside the
    response mask."""

    entropy: Tensor
    """H_t of the student p_t."""
    student_logp: Tensor
    """log p_t(o_t)."""
    teacher_logp: Tensor
    """log q_t(o_t)."""
    gap: Tensor
    """A_t = log q_t(o_t) − log p_t(o_t) (eq. 6)."""
    neg_kl: Tensor
    """E_{p_t}[A_t] = −KL(p_t ‖ q_t)."""
    d_plus: Tensor
    """D_t^(+) = TV(p_t, p_t^(+)) (eq. 7)."""
    d_minus: Tensor
    """D_t^(−) = TV(p_t, p_t^(−))."""
    kl_plus: Tensor
    """KL(p_t^(+) ‖ q_t) after the s = +1 step."""
    kl_minus: Tensor
    """KL(p_t^(−) ‖ q_t) after the s = −1 step."""
    grad_norm: float
    """‖∇J_{+1}‖ over all parameters (the step moves the weights by lr times this)."""


def one_step_shift(
    model: nn.Module,
    batch: ProbeBatch,
    *,
    lr: float,
    micro_batch_size: int = 32,
    chunk_size: int = 1024,
    progress: Callable[[int], None] | None = None,
) -> TokenShift:
    """Measure H_t, A_t, −KL(p_t ‖ q_t) and the one-step TV shifts D_t^(±) on ``batch``.

    Pass 1 (on a deep copy of ``model`` holding θ): student and teacher logits per micro-batch,
    the statistics, and the gradient g of ``signed_gap_objective`` with s = +1, accumulated
    exactly over micro-batches. Then θ^(±) = θ ± lr·g (plain SGD, module docstring). Pass 2:
    the logits of θ, θ^(+), θ^(−) and the teacher at every prefix give D^(±) and KL(p^(±) ‖ q).
    ``model`` is left unchanged (and in its mode); ``progress`` is called with the number of
    responses after each micro-batch of each pass (2 N in all).
    """
    mask = batch.response_mask.bool()
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("response_mask must be right-padded (each row's valid tokens first)")
    if not bool(mask.any()):
        raise ValueError("the batch has no response tokens; sample longer responses")
    ids = batch.response_ids.long().masked_fill(~mask, 0)
    out = {name: torch.zeros(mask.shape, dtype=torch.float32) for name in _SHIFT_FIELDS}
    chunks = length_sorted_chunks(mask.sum(-1), micro_batch_size)
    total = aggregate_denominator(mask)
    plus = copy.deepcopy(model).requires_grad_(True)
    plus.zero_grad(set_to_none=True)
    with eval_mode(model), eval_mode(plus):
        for rows in chunks:
            t = max(int(mask[rows].sum(-1).max()), 1)
            _gradient_pass(model, plus, batch, rows, ids[rows, :t], mask[rows, :t], out,
                           total=total, chunk_size=chunk_size)
            if progress is not None:
                progress(len(rows))
    minus, grad_norm = _signed_steps(model, plus, lr)
    with torch.no_grad(), eval_mode(model), eval_mode(plus), eval_mode(minus):
        for rows in chunks:
            t = max(int(mask[rows].sum(-1).max()), 1)
            _shift_pass(model, plus, minus, batch, rows, ids[rows, :t], mask[rows, :t], out,
                        chunk_size=chunk_size)
            if progress is not None:
                progress(len(rows))
    return TokenShift(**out, grad_norm=grad_norm)


#: The per-token fields of ``TokenShift``.
_SHIFT_FIELDS = ("entropy", "student_logp", "teacher_logp", "gap", "neg_kl", "d_plus", "d_minus",
                 "kl_plus", "kl_minus")


def _put(out: dict[str, Tensor], rows: Tensor, m: Tensor, **values: Tensor) -> None:
    """Write ``values (b, t)`` into the rows ``rows`` of ``out``'s ``(N, T)`` tensors, 0 off
    the mask ``m (b, t)``."""
    t = m.shape[1]
    for name, value in values.items():
        out[name][rows, :t] = value.detach().float().cpu().where(m, 0.0)


def _gradient_pass(model: nn.Module, plus: nn.Module, batch: ProbeBatch, rows: Tensor,
                   r_ids: Tensor, m: Tensor, out: dict[str, Tensor], *, total: Tensor,
                   chunk_size: int) -> None:
    """Pass 1 on the micro-batch ``rows`` (responses ``r_ids``, mask ``m`` ``(b, t)``): the
    statistics under θ into ``out``, and this micro-batch's share (weight: its aggregation
    denominator over ``total``) of the gradient of J_{+1} accumulated in ``plus``."""
    device = next(model.parameters()).device
    with torch.no_grad():
        teacher = response_logits(model, batch.teacher_ids[rows], batch.teacher_mask[rows], r_ids)
    student = response_logits(plus, batch.prompt_ids[rows], batch.prompt_mask[rows], r_ids)
    targets = r_ids.to(device)
    entropy, logp = token_entropy_and_logprob(student, targets, chunk_size=chunk_size)
    with torch.no_grad():
        _, teacher_logp = token_entropy_and_logprob(teacher, targets, chunk_size=chunk_size)
        neg_kl = expected_gap(student, teacher, chunk_size=chunk_size)
    objective = signed_gap_objective(logp, teacher_logp, m.to(device), sign=1.0)
    weight = aggregate_denominator(m) / total
    (objective * weight.to(device)).backward()
    _put(out, rows, m, entropy=entropy, student_logp=logp, teacher_logp=teacher_logp,
         gap=teacher_logp - logp, neg_kl=neg_kl)


def _signed_steps(model: nn.Module, plus: nn.Module, lr: float) -> tuple[nn.Module, float]:
    """θ^(±) = θ ± lr·g with g the gradient accumulated in ``plus``: sets ``plus`` to θ^(+)
    (gradient cleared, frozen), returns a frozen copy of ``model`` at θ^(−) and ‖g‖."""
    minus = copy.deepcopy(model).requires_grad_(False)
    squares = []
    with torch.no_grad():
        for p0, pp, pm in zip(model.parameters(), plus.parameters(), minus.parameters(),
                              strict=True):
            grad = pp.grad if pp.grad is not None else torch.zeros_like(p0)
            squares.append(grad.double().pow(2).sum())
            pm.copy_(torch.add(p0, grad, alpha=-lr))
            pp.copy_(torch.add(p0, grad, alpha=lr))
    plus.zero_grad(set_to_none=True)
    plus.requires_grad_(False)
    grad_norm = float(torch.stack(squares).sum().sqrt())
    if not np.isfinite(grad_norm):
        raise FloatingPointError(f"gradient norm is {grad_norm}; check the model's outputs")
    return minus, grad_norm


def _shift_pass(model: nn.Module, plus: nn.Module, minus: nn.Module, batch: ProbeBatch,
                rows: Tensor, r_ids: Tensor, m: Tensor, out: dict[str, Tensor], *,
                chunk_size: int) -> None:
    """Pass 2 on the micro-batch ``rows``: D^(±) = TV(p, p^(±)) and KL(p^(±) ‖ q) into ``out``."""
    args = (batch.prompt_ids[rows], batch.prompt_mask[rows], r_ids)
    old = response_logits(model, *args)
    new_plus, new_minus = response_logits(plus, *args), response_logits(minus, *args)
    teacher = response_logits(model, batch.teacher_ids[rows], batch.teacher_mask[rows], r_ids)
    _put(out, rows, m,
         d_plus=tv_from_logits(old, new_plus, chunk_size=chunk_size),
         d_minus=tv_from_logits(old, new_minus, chunk_size=chunk_size),
         kl_plus=token_reverse_kl(new_plus, teacher, chunk_size=chunk_size),
         kl_minus=token_reverse_kl(new_minus, teacher, chunk_size=chunk_size))


# --------------------------------------------------------------------------- tables


def token_table(
    shift: TokenShift,
    response_ids: Tensor,
    response_mask: Tensor,
    prompt_ids: list[str],
    sample_idx: np.ndarray,
    correct: np.ndarray,
) -> pd.DataFrame:
    """One row per valid response token, columns ``TOKEN_TABLE_COLUMNS``; rows in rollout order
    then position. ``prompt_ids``, ``sample_idx``, ``correct``: one entry per rollout."""
    mask = response_mask.bool().cpu().numpy()
    rows, positions = np.nonzero(mask)
    correct = np.asarray(correct, dtype=bool)

    def col(values: Tensor) -> np.ndarray:
        return values.cpu().numpy()[rows, positions].astype(np.float32)

    return pd.DataFrame({
        "prompt_id": np.asarray(prompt_ids, dtype=object)[rows],
        "sample_idx": np.asarray(sample_idx, dtype=np.int32)[rows],
        "position": positions.astype(np.int32),
        "token": response_ids.cpu().numpy()[rows, positions].astype(np.int32),
        "correct": correct[rows],
        "H": col(shift.entropy),
        "A": col(shift.gap),
        "neg_kl": col(shift.neg_kl),
        "D_plus": col(shift.d_plus),
        "D_minus": col(shift.d_minus),
        "kl_plus": col(shift.kl_plus),
        "kl_minus": col(shift.kl_minus),
    })


def _with_derived(tokens: pd.DataFrame) -> pd.DataFrame:
    frame = tokens.astype({c: np.float64 for c in ("H", "A", "neg_kl", "D_plus", "D_minus",
                                                    "kl_plus", "kl_minus")})
    return frame.assign(abs_A=frame["A"].abs(), kl_before=-frame["neg_kl"])


def _correlations(frame: pd.DataFrame, *, n_boot: int, level: float, seed: int
                  ) -> dict[str, dict[str, float | int]]:
    cis = spearman_cis({name: frame[name].to_numpy() for name in _CORRELATED},
                       frame["H"].to_numpy(), frame["prompt_id"].to_numpy(),
                       n_boot=n_boot, level=level, seed=seed)
    return {name: ci.as_dict() for name, ci in cis.items()}


def _means(frame: pd.DataFrame) -> dict[str, float]:
    return {name: float(frame[name].mean()) if len(frame) else float("nan")
            for name in ("H", *_BINNED)}


def summarize_tokens(
    tokens: pd.DataFrame, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
    n_bins: int = 10,
) -> dict[str, Any]:
    """The Probe 2 summary, computed from a ``tokens.parquet`` table only.

    Keys: ``n_prompts``, ``n_rollouts``, ``n_tokens``; ``spearman`` (for each of A, abs_A, neg_kl,
    D_plus, D_minus: ρ_s with H and its prompt-level bootstrap interval); ``means`` (token means
    of H, A, |A|, −KL, D^(±), KL(p ‖ q) before and after each step); ``by_outcome``
    (``correct`` / ``incorrect`` rollouts: counts, ``spearman``, ``means``); ``bins`` (records
    of ``analysis.stats.binned_means`` over entropy quantile bins).
    """
    if missing := [c for c in TOKEN_TABLE_COLUMNS if c not in tokens.columns]:
        raise ValueError(f"tokens table: missing column {missing[0]!r}")
    if len(tokens) == 0:
        raise ValueError("tokens table is empty; the probe needs at least one response token")
    frame = _with_derived(tokens)
    summary: dict[str, Any] = {
        "n_prompts": int(frame["prompt_id"].nunique()),
        "n_rollouts": int(len(frame.groupby(["prompt_id", "sample_idx"]))),
        "n_tokens": int(len(frame)),
        "spearman": _correlations(frame, n_boot=n_boot, level=level, seed=seed),
        "means": _means(frame),
        "by_outcome": {},
    }
    for outcome, part in (("correct", frame[frame["correct"]]),
                          ("incorrect", frame[~frame["correct"]])):
        summary["by_outcome"][outcome] = {
            "n_rollouts": int(len(part.groupby(["prompt_id", "sample_idx"]))),
            "n_tokens": int(len(part)),
            "spearman": _correlations(part, n_boot=n_boot, level=level, seed=seed),
            "means": _means(part),
        }
    bins = binned_means(frame["H"].to_numpy(), {name: frame[name].to_numpy() for name in _BINNED},
                        n_bins=n_bins)
    summary["bins"] = bins.to_dict(orient="records")
    return summary


# --------------------------------------------------------------------------- orchestration


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available; use --device cpu")
    return torch.device(name)


def run_entropy_tv(
    cfg: EntropyTVConfig, run_dir: Path, *, progress: Callable[[int], None] | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run Probe 2 and log it to ``run_dir`` (kind ``probe:entropy-tv``).

    Writes ``rollouts/step-000000-eval.parquet`` (the sampled rollouts with per-token entropy and
    student / teacher log-probs), ``tokens.parquet`` (``TOKEN_TABLE_COLUMNS``) and
    ``summary.json`` (``summarize_tokens`` plus the step: ``lr``, ``grad_norm``, ``accuracy``),
    each atomically. ``progress`` is called with a number of responses, 3 × n_prompts × k in all
    (sampling, pass 1, pass 2). Returns the token table and the summary.
    """
    device = _device(cfg.device)
    model, tokenizer = load_model(cfg.model, device=device, dtype=torch.float32)
    options = {"benchmark": cfg.benchmark} if cfg.benchmark else {}
    task = build_task(cfg.task, tokenizer=tokenizer, **options)
    problems = task.sample(cfg.n_prompts, split="eval", seed=cfg.seed)
    task_config = task.describe() if hasattr(task, "describe") else {"repr": repr(task)}
    config = {**asdict(cfg), "task_config": task_config, "split": "eval",
              "temperature": 1.0, "top_p": 1.0, "objective": "signed_gap_objective",
              "aggregation": "seq_mean_token_mean", "optimizer": "sgd (one step, no momentum)"}
    with create_run(run_dir, kind="probe:entropy-tv", config=config, seed=cfg.seed,
                    model=cfg.model, task=cfg.task) as run:
        rollouts = generate(
            model, tokenizer, [task.student_prompt(p) for p in problems for _ in range(cfg.k)],
            max_new_tokens=cfg.max_new_tokens, temperature=1.0, top_p=1.0,
            batch_size=cfg.generation_batch_size,
            generator=torch.Generator().manual_seed(cfg.seed), progress=progress,
        )
        teacher_ids, teacher_mask = encode_prompts(
            tokenizer, [task.teacher_prompt(p) for p in problems for _ in range(cfg.k)])
        batch = ProbeBatch(rollouts.prompt_ids, rollouts.prompt_mask, teacher_ids, teacher_mask,
                           rollouts.response_ids, rollouts.response_mask)
        shift = one_step_shift(model, batch, lr=cfg.lr, micro_batch_size=cfg.micro_batch_size,
                               chunk_size=cfg.chunk_size, progress=progress)
        scores = TokenScores(entropy=shift.entropy, student_logp=shift.student_logp,
                             teacher_logp=shift.teacher_logp)
        frame = rollout_frame(task, problems, rollouts, step=0, split="eval", scores=scores)
        run.write_rollouts(0, "eval", frame)
        tokens = token_table(shift, rollouts.response_ids, rollouts.response_mask,
                             list(frame["prompt_id"]), frame["sample_idx"].to_numpy(),
                             frame["correct"].to_numpy())
        run.write_table("tokens", tokens)
        summary = {
            "lr": cfg.lr,
            "grad_norm": shift.grad_norm,
            "accuracy": float(frame["correct"].mean()),
            **summarize_tokens(tokens, n_boot=cfg.n_boot, level=cfg.level, seed=cfg.seed,
                               n_bins=cfg.n_bins),
        }
        run.write_json("summary", summary)
    return tokens, summary


def _run(cfg: EntropyTVConfig, run_dir: Path, terminal: Terminal) -> dict[str, Any]:
    """Probe 2 (Fig. 3): per token, student entropy H_t, the log-evidence gap A_t (eq. 6) and its
    expectation -KL(p_t || q_t); Spearman rho_s(A_t, H_t) with a prompt-bootstrap CI; and the
    one-step TV shifts D_t^(+/-) (eq. 7) after one SGD step toward (+) or away from (-) the
    privileged teacher. Writes tokens.parquet and summary.json."""
    total = 3 * cfg.n_prompts * cfg.k
    with terminal.bar(f"sampling, scoring and stepping {cfg.n_prompts} x {cfg.k}", total) as step:
        _, summary = run_entropy_tv(cfg, run_dir, progress=step)
    return summary


def _rho(entry: dict[str, Any]) -> str:
    """A Spearman correlation with its interval, or "–"."""
    if cell(entry["rho"]) == "–":
        return "–"
    ci = "" if cell(entry["low"]) == "–" else f" [{entry['low']:+.2f}, {entry['high']:+.2f}]"
    return f"{entry['rho']:+.3f}{ci}"


def _show(cfg: EntropyTVConfig, summary: dict[str, Any], run_dir: Path,
          terminal: Terminal) -> None:
    """Probe 2's summary: Spearman with CIs by outcome, means by outcome, the entropy bins."""
    parts = {"all": summary, **summary["by_outcome"]}
    level = summary["spearman"]["A"]["level"]
    labels = {"A": "A_t", "abs_A": "|A_t|", "neg_kl": "E_p[A_t] = -KL(p||q)",
              "D_plus": "D+ (Conformity)", "D_minus": "D- (Novelty)"}
    terminal.table(
        f"{cfg.model} on {cfg.task}: Spearman rho_s(., H_t) [{level:.0%} CI, prompt bootstrap] "
        "by rollouts (count); paper: rho_s(A_t, H_t) = +0.52",
        ["statistic", *(f"{part} ({parts[part]['n_rollouts']})" for part in parts)],
        [[label, *(_rho(parts[part]["spearman"][key]) for part in parts)]
         for key, label in labels.items()])
    means = {"H": "H_t", "A": "A_t", "neg_kl": "-KL(p||q)", "abs_A": "|A_t|",
             "D_plus": "D+", "D_minus": "D-"}
    terminal.wide_table("Token means by rollout outcome", ["part", "tokens", *means.values()],
                        [[part, str(parts[part]["n_tokens"]),
                          *(cell(parts[part]["means"][key], ".4f") for key in means)]
                         for part in parts])
    columns = {"n": "n", "A": "A_t", "abs_A": "|A_t|", "neg_kl": "-KL", "D_plus": "D+",
               "D_minus": "D-", "kl_plus": "KL after +", "kl_minus": "KL after -"}
    terminal.wide_table("By entropy quantile bin (means)", ["H_t range", *columns.values()],
                        [[f"{b['H_low']:.2g} to {b['H_high']:.2g}",
                          *(str(int(b[c])) if c == "n" else cell(b[c], ".4f") for c in columns)]
                         for b in summary["bins"]])
    m = summary["means"]
    terminal.line(
        f"one SGD step, lr {summary['lr']:g}, |grad| {summary['grad_norm']:.3g}: mean KL(p||q) "
        f"{m['kl_before']:.4g} before, {m['kl_plus']:.4g} after s=+1, {m['kl_minus']:.4g} after "
        f"s=-1; accuracy {summary['accuracy']:.3f}")
    terminal.line(f"run directory: {run_dir}")


register_probe("entropy-tv", options=EntropyTVConfig, run=_run, show=_show)
