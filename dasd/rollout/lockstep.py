"""Dual-context lockstep decoding with entropy-bucketed prefix interventions (paper section 3,
Probe 3, Table 1; appendix A.3).

The student context x and the privileged-teacher context x + r (same weights, r prepended by
the task's ``teacher_prompt``) are decoded in lockstep, each with its own KV cache: at every
step both next-token distributions p_t = π_θ(·|x, o_<t) and q_t = π_θ(·|x, r, o_<t) exist for
the same prefix o_<t. The student's entropy H_t assigns the position to a bucket; in the chosen
bucket o_t is drawn from an interventional distribution, elsewhere from p_t, and decoding always
continues from the student context with o_t appended to both contexts:

* Conformity: π̃_t = q_t;
* Novelty: π̃_t(v) ∝ p_t(v) / q_t(v)^α (α = 0.5 in the paper).

Departures and choices:

1. Online median. The paper buckets by the trajectory-local median τ_0.5 of the trajectory's
   entropies, which is unknown while decoding. Here τ_t = median(H_1 … H_t), the running median
   of the entropies seen so far, current position included (numpy's median: the mean of the two
   middle values for an even count); low: H_t < τ_t, high: H_t ≥ τ_t. Positions t < ``burn_in``
   (0-based) are never intervened (their entropies enter the median). H_1 ≥ τ_1 always, hence
   the burn-in.
2. Which positions. Section 3 reads "at each position … within the chosen bucket, we sample o_t
   from" the interventional distribution; appendix A.3 says "after the single intervened token".
   ``positions="every"`` (default) intervenes at every in-bucket position after the burn-in,
   each followed by the student at the next position; ``positions="first"`` only at the first
   in-bucket position after the burn-in (appendix A.3's single token).
3. Random control. The ``random`` bucket holds each position after the burn-in with probability
   ``rate``, from coins of their own (``coin_generator``, or the paired source with its own
   stream), so it is entropy-agnostic and never shifts the sampling stream.
4. Sampling and pairing. Tokens are drawn by ``sample_from_logits`` (one uniform per row,
   inverse nucleus CDF) from one of two sources of uniforms:

   * ``generator`` (stream): one draw per step for the rows still decoding, with the same
     micro-batches and the same dropping of finished rows as ``dasd.rollout``'s ``generate``.
     The stream is consumed identically, so with an empty bucket the decoder reproduces
     ``generate`` token for token. It does not pair intervened and unmodified rollouts row by
     row: once an intervention changes when some row finishes, the draws of the rest of the
     micro-batch (and of every later micro-batch) shift.
   * ``pairing_seed`` (paired): at step t of micro-batch b, one uniform per row of the
     micro-batch from a generator seeded by (pairing_seed, b, t), finished rows included. A
     row's uniforms do not depend on the other rows, so two calls with the same prompts,
     ``batch_size`` and ``pairing_seed`` coincide row by row up to each row's first
     intervention (up to float rounding of batches of different sizes, which moves a token
     only when its uniform falls within rounding of a CDF boundary).

   p_t and q_t are softmax(logits / temperature) (temperature 1 when greedy); temperature and
   top-p apply to π̃_t as they do to p_t.
5. Novelty floor. Where q_t(v) underflows to 0 (a −inf teacher logit), log q_t(v) is clamped to
   the log of float32's smallest normal number, so p_t / q_t^α stays finite; tokens with
   p_t(v) = 0 keep probability 0.
6. Two forward passes per step (one per context, each with its own cache), not one fused batch:
   the student's pass is then the very call ``generate`` makes (bitwise-equal logits, needed
   by departure 4's identity), at the price of launching two smaller batches.

The intervention is an argument of one decoding call: nothing in the model or the sampler is
patched, and the model's train/eval mode is restored on exit (``eval_mode``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from dasd.registry import Registry
from dasd.rollout.batching import (
    check_decoding,
    concat_right_padded,
    over_micro_batches,
    trim_left_padding,
)
from dasd.rollout.hf import (
    DecodeContext,
    DecodedRows,
    Rollouts,
    assemble_rollouts,
    encode_prompts,
    eval_mode,
    model_call_kwargs,
    sample_from_logits,
    stop_token_ids,
)

__all__ = [
    "BUCKETS",
    "DISTRIBUTIONS",
    "POSITIONS",
    "Intervention",
    "LockstepRollouts",
    "bucket_membership",
    "conformity_logprobs",
    "lockstep_generate",
    "novelty_logprobs",
    "prefix_median",
    "running_median",
]

#: Intervention position policies (departure 2).
POSITIONS = ("every", "first")

_LOG_TINY = math.log(torch.finfo(torch.float32).tiny)

# --------------------------------------------------------------------------- pure math

#: Interventional distributions by name: ``f(student_logp, teacher_logp, *, alpha)`` -> log π̃.
DISTRIBUTIONS: Registry[Callable[..., Tensor]] = Registry("intervention mode")


@DISTRIBUTIONS.register("conformity")
def conformity_logprobs(student_logp: Tensor, teacher_logp: Tensor, *, alpha: float = 0.5) -> Tensor:
    """Conformity: log π̃ = log q, the privileged teacher (``alpha`` is unused).

    Args:
        student_logp: ``(B, V)`` log p.
        teacher_logp: ``(B, V)`` log q.

    Returns:
        ``(B, V)`` log-probabilities.
    """
    return teacher_logp


@DISTRIBUTIONS.register("novelty")
def novelty_logprobs(student_logp: Tensor, teacher_logp: Tensor, *, alpha: float = 0.5) -> Tensor:
    """Novelty: log π̃ with π̃(v) ∝ p(v) / q(v)^α, normalised over the vocabulary.

    α = 0 gives p; log q is floored at log(float32 tiny) (departure 5), and p(v) = 0 stays 0.

    Args:
        student_logp: ``(B, V)`` log p (−inf allowed).
        teacher_logp: ``(B, V)`` log q (−inf allowed).
        alpha: the exponent α ≥ 0.

    Returns:
        ``(B, V)`` float32 log-probabilities.
    """
    student_logp = student_logp.float()
    scores = student_logp - alpha * teacher_logp.float().clamp(min=_LOG_TINY)
    scores = scores.masked_fill(student_logp == -math.inf, -math.inf)
    return torch.log_softmax(scores, dim=-1)


def prefix_median(entropy: Tensor) -> Tensor:
    """Median of each row of ``entropy (B, t)`` (numpy's: mean of the two middle values for an
    even count) -> ``(B,)``; τ_t of departure 1 when the row holds H_1 … H_t."""
    return torch.quantile(entropy.float(), 0.5, dim=-1)


def running_median(entropy: Tensor) -> Tensor:
    """Running medians ``(B, T)``: column t is the median of ``entropy[:, :t + 1]``, the online
    τ_t the decoder uses (departure 1). ``entropy``: ``(B, T)``."""
    return torch.stack([prefix_median(entropy[:, : t + 1]) for t in range(entropy.shape[1])], dim=1)


#: Bucket rules by name: ``f(entropy, median, coins, *, rate)`` -> ``(B,)`` bool membership.
BUCKETS: Registry[Callable[..., Tensor]] = Registry("bucket")


@BUCKETS.register("low")
def _low(entropy: Tensor, median: Tensor, coins: Tensor | None, *, rate: float) -> Tensor:
    return entropy < median


@BUCKETS.register("high")
def _high(entropy: Tensor, median: Tensor, coins: Tensor | None, *, rate: float) -> Tensor:
    return entropy >= median


@BUCKETS.register("random")
def _random(entropy: Tensor, median: Tensor, coins: Tensor | None, *, rate: float) -> Tensor:
    if coins is None:
        raise ValueError("the random bucket needs coins (one uniform per position)")
    return coins < rate


def bucket_membership(
    entropy: Tensor,
    median: Tensor,
    *,
    bucket: str,
    burn_in: int,
    step: int | Tensor,
    coins: Tensor | None = None,
    rate: float = 0.5,
) -> Tensor:
    """Whether positions fall in ``bucket`` (module docstring, departures 1 and 3).

    Args:
        entropy: ``(...)`` student entropies H_t.
        median: ``(...)`` the running medians τ_t at the same positions.
        bucket: ``low`` (H_t < τ_t), ``high`` (H_t ≥ τ_t) or ``random`` (coin < ``rate``).
        burn_in: positions ``step < burn_in`` are never in a bucket.
        step: the 0-based position(s), an int or a tensor broadcasting with ``entropy``.
        coins: ``(...)`` uniforms in [0, 1), needed by ``random``.
        rate: the random bucket's per-position probability.

    Returns:
        bool tensor of ``entropy``'s shape.
    """
    member = BUCKETS.get(bucket)(entropy, median, coins, rate=rate)
    return member & (torch.as_tensor(step, device=entropy.device) >= burn_in)


# --------------------------------------------------------------------------- decoder


@dataclass(frozen=True)
class Intervention:
    """Where and how a lockstep decode substitutes the student's next-token distribution."""

    bucket: str
    """``low``, ``high`` or ``random`` (``BUCKETS``)."""
    mode: str
    """``conformity`` or ``novelty`` (``DISTRIBUTIONS``)."""
    alpha: float = 0.5
    """Novelty exponent α (paper: 0.5)."""
    burn_in: int = 8
    """Positions 0 … burn_in − 1 are never intervened."""
    positions: str = "every"
    """``every`` in-bucket position, or only the ``first`` one (departure 2)."""
    rate: float = 0.5
    """Per-position probability of the ``random`` bucket."""

    def __post_init__(self) -> None:
        BUCKETS.get(self.bucket)
        DISTRIBUTIONS.get(self.mode)
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; valid: {', '.join(POSITIONS)}")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if self.burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {self.burn_in}")
        if not 0 <= self.rate <= 1:
            raise ValueError(f"rate must be in [0, 1], got {self.rate}")


@dataclass
class LockstepRollouts:
    """A lockstep decode: the student's rollouts and both contexts' per-token statistics.

    All ``(N, T)`` tensors are on CPU, aligned with ``rollouts.response_ids`` and 0 (False)
    outside ``rollouts.response_mask``; distributions are softmax(logits / temperature)
    without top-p (temperature 1 when greedy). ``rollouts.logprobs`` is log p_t(o_t), the
    student's log-prob of each emitted token, whichever distribution it was drawn from.

    Attributes:
        rollouts: ``Rollouts`` of the student prompts, as ``generate`` returns them.
        entropy: ``(N, T)`` float32 student entropy H_t.
        teacher_entropy: ``(N, T)`` float32 teacher entropy H[q_t].
        teacher_logp: ``(N, T)`` float32 log q_t(o_t).
        kl: ``(N, T)`` float32 KL(p_t ‖ q_t).
        median: ``(N, T)`` float32 running median τ_t of H_1 … H_t.
        in_bucket: ``(N, T)`` bool, the position was in the bucket (after the burn-in).
        intervened: ``(N, T)`` bool, o_t was drawn from the interventional distribution.
    """

    rollouts: Rollouts
    entropy: Tensor
    teacher_entropy: Tensor
    teacher_logp: Tensor
    kl: Tensor
    median: Tensor
    in_bucket: Tensor
    intervened: Tensor


_STATS = ("logp", "entropy", "teacher_entropy", "teacher_logp", "kl", "median")
_FLAGS = ("in_bucket", "intervened")


class _Randomness:
    """Uniforms of one micro-batch (departure 4): sampled tokens and random-bucket coins.

    ``rows`` are the indices, within the micro-batch of ``n`` rows, of the rows still in the
    decoding batch, in batch order.
    """

    def __init__(self, n: int, batch_index: int, *, generator: torch.Generator | None,
                 coin_generator: torch.Generator | None, pairing_seed: int | None) -> None:
        self.n, self.batch_index = n, batch_index
        self.generator, self.coin_generator = generator, coin_generator
        self.pairing_seed = pairing_seed

    def _paired(self, stream: int, step: int) -> torch.Generator:
        keys = [self.pairing_seed, stream, self.batch_index, step]
        seed = int(np.random.SeedSequence(keys).generate_state(1, dtype=np.uint64)[0])
        return torch.Generator().manual_seed(seed)

    def tokens(self, logits: Tensor, rows: Tensor, step: int, *, temperature: float,
               top_p: float) -> Tensor:
        """Sampled token ids ``(len(rows),)`` from ``logits (len(rows), V)``."""
        if self.pairing_seed is None:
            return sample_from_logits(logits, temperature=temperature, top_p=top_p,
                                      generator=self.generator)[0]
        full = logits.new_zeros(self.n, logits.shape[-1])
        full[rows] = logits
        tokens, _ = sample_from_logits(full, temperature=temperature, top_p=top_p,
                                       generator=self._paired(0, step))
        return tokens[rows]

    def coins(self, rows: Tensor, step: int) -> Tensor:
        """One uniform in [0, 1) per row, ``(len(rows),)``, on the device of ``rows``."""
        if self.pairing_seed is None:
            gen = self.coin_generator
            device = gen.device if gen is not None else rows.device
            return torch.rand(len(rows), generator=gen, device=device).to(rows.device)
        return torch.rand(self.n, generator=self._paired(1, step)).to(rows.device)[rows]


def lockstep_generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    teacher_prompts: list[str],
    *,
    max_new_tokens: int,
    intervention: Intervention | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    coin_generator: torch.Generator | None = None,
    pairing_seed: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> LockstepRollouts:
    """Sample one response per student prompt, decoding the teacher context in lockstep.

    Same contract as ``dasd.rollout.generate`` (micro-batches, EOS handling, left padding,
    ``torch.inference_mode``, eval mode restored), plus the teacher context
    ``teacher_prompts[i]`` (x with r) fed the same tokens, and ``intervention`` applied
    (module docstring). With ``intervention=None``, or a bucket that stays empty, the
    rollouts equal ``generate``'s with the same arguments and a generator in the same state;
    with ``pairing_seed``, they equal those of any other call with the same prompts,
    ``batch_size`` and ``pairing_seed`` up to each row's first intervention (departure 4).

    Args:
        model, tokenizer: a ``transformers`` causal LM and its tokenizer (pad token needed).
        prompts: N student prompts x.
        teacher_prompts: N privileged prompts, one per student prompt.
        max_new_tokens: the most tokens a response may have.
        intervention: where and how to substitute the student's distribution, or None.
        temperature, top_p, generator: as in ``sample_from_logits``.
        batch_size: prompts per micro-batch.
        coin_generator: source of the random bucket's coins (one uniform per row and step).
        pairing_seed: draw the uniforms of sampling and coins per (micro-batch, step) from this
            seed instead of ``generator`` / ``coin_generator`` (departure 4).
        progress: called after each micro-batch with the number of prompts it finished.

    Returns:
        ``LockstepRollouts`` on CPU.
    """
    check_decoding(max_new_tokens, batch_size, temperature, top_p)
    if len(teacher_prompts) != len(prompts):
        raise ValueError(
            f"teacher_prompts has {len(teacher_prompts)} prompts for {len(prompts)} student "
            "prompts; pass one teacher prompt per student prompt"
        )
    if pairing_seed is not None and (generator is not None or coin_generator is not None):
        raise ValueError("pass pairing_seed or generator/coin_generator, not both")
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    teacher_ids, teacher_mask = encode_prompts(tokenizer, teacher_prompts)
    pad_id = tokenizer.pad_token_id
    eos = stop_token_ids(model, tokenizer)

    def decode(rows: slice, index: int) -> dict[str, Tensor]:
        randomness = _Randomness(len(prompt_ids[rows]), index, generator=generator,
                                 coin_generator=coin_generator, pairing_seed=pairing_seed)
        return _decode_pair(
            model, trim_left_padding(prompt_ids[rows], prompt_mask[rows]),
            trim_left_padding(teacher_ids[rows], teacher_mask[rows]), randomness=randomness,
            intervention=intervention, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, pad_id=pad_id, eos=eos,
        )

    with torch.inference_mode(), eval_mode(model):
        parts = over_micro_batches(len(prompts), batch_size, decode, progress)

    def cat(name: str, value: float | bool) -> Tensor:
        return concat_right_padded([part[name] for part in parts], value)

    rollouts = assemble_rollouts(tokenizer, prompts, prompt_ids, prompt_mask, cat("ids", pad_id),
                                 cat("mask", False), cat("logp", 0.0), eos)
    stats = {name: cat(name, 0.0) for name in _STATS if name != "logp"}
    return LockstepRollouts(rollouts=rollouts, **stats, **{f: cat(f, False) for f in _FLAGS})


def _decode_pair(
    model: nn.Module,
    student: tuple[Tensor, Tensor],
    teacher: tuple[Tensor, Tensor],
    *,
    randomness: _Randomness,
    intervention: Intervention | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    pad_id: int,
    eos: list[int],
) -> dict[str, Tensor]:
    """Decode one micro-batch of ``B`` student/teacher prompt pairs (``(ids, mask)``, left-padded).

    Mirrors ``dasd.rollout.hf._decode`` step for step (one forward pass of the student, one
    sampling call, the same dropping of finished rows), adding the teacher's pass and the
    intervention. Returns CPU tensors ``(B, T)``, T ≤ ``max_new_tokens``:
    ``ids``, ``mask``, each of ``_STATS`` and ``_FLAGS``.
    """
    device = next(model.parameters()).device
    cache_kw, has_keep = model_call_kwargs(model)
    keep_kw = {"logits_to_keep": 1} if has_keep else {}
    s_ctx, t_ctx = DecodeContext(*student, device), DecodeContext(*teacher, device)
    n = s_ctx.ids.shape[0]
    scale = temperature if temperature > 0 else 1.0
    out = DecodedRows(n, max_new_tokens, pad_id=pad_id, eos=eos, device=device, floats=_STATS,
                      flags=_FLAGS)
    history = torch.zeros(n, max_new_tokens, device=device)
    used = torch.zeros(n, dtype=torch.bool, device=device)
    while True:
        s_logits = s_ctx.forward(model, cache_kw, keep_kw)
        t_logits = t_ctx.forward(model, cache_kw, keep_kw)
        step = out.steps
        values = _step_statistics(s_logits, t_logits, scale)
        history[out.rows, step] = values["entropy"]
        values["median"] = prefix_median(history[out.rows, : step + 1])
        logits, values["in_bucket"], values["intervened"] = _intervene(
            intervention, s_logits, values, used, rows=out.rows, step=step,
            randomness=randomness, scale=scale,
        )
        used |= values["intervened"]
        tokens = randomness.tokens(logits, out.rows, step, temperature=temperature, top_p=top_p)
        values = _at_tokens(values, tokens)
        if out.record(tokens, values):
            break
        keep = out.compact()
        if keep is not None:
            s_ctx.select(keep)
            t_ctx.select(keep)
            tokens, used = tokens[keep], used[keep]
        next_ids = torch.where(out.alive, tokens, pad_id)
        s_ctx.append(next_ids)
        t_ctx.append(next_ids)
    return out.result(finite=("logp", "teacher_logp"))


def _step_statistics(s_logits: Tensor, t_logits: Tensor, scale: float) -> dict[str, Tensor]:
    """One step's student and teacher log-distributions ``log_p``, ``log_q`` ``(b, V)`` at
    temperature ``scale``, and the per-row ``entropy``, ``teacher_entropy`` and ``kl``
    (KL(p ‖ q)) ``(b,)``."""
    logp = torch.log_softmax(s_logits.float() / scale, -1)
    t_logp = torch.log_softmax(t_logits.float() / scale, -1)
    p, q = logp.exp(), t_logp.exp()
    return {
        "log_p": logp,
        "log_q": t_logp,
        "entropy": torch.special.entr(p).sum(-1),
        "teacher_entropy": torch.special.entr(q).sum(-1),
        "kl": (p * (logp - t_logp)).where(p > 0, 0.0).sum(-1),
    }


def _intervene(
    intervention: Intervention | None,
    s_logits: Tensor,
    values: dict[str, Tensor],
    used: Tensor,
    *,
    rows: Tensor,
    step: int,
    randomness: _Randomness,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The logits to sample from ``(b, V)``, bucket membership and intervened rows ``(b,)``
    of one step: the student's logits, except the interventional distribution (times
    ``scale``) on the rows in the bucket (``first``: not ``used`` before)."""
    member = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
    if intervention is None:
        return s_logits, member, member
    coins = randomness.coins(rows, step) if intervention.bucket == "random" else None
    member = bucket_membership(
        values["entropy"], values["median"], bucket=intervention.bucket,
        burn_in=intervention.burn_in, step=step, coins=coins, rate=intervention.rate,
    )
    act = member & ~used if intervention.positions == "first" else member
    target = DISTRIBUTIONS.get(intervention.mode)(values["log_p"], values["log_q"],
                                                  alpha=intervention.alpha)
    return torch.where(act[:, None], scale * target, s_logits.float()), member, act


def _at_tokens(values: dict[str, Tensor], tokens: Tensor) -> dict[str, Tensor]:
    """The step's ``_STATS`` and ``_FLAGS`` ``(b,)``: the log-probs of ``tokens (b,)`` under
    both distributions, and the per-row values."""
    picked = tokens[:, None]
    out = {"logp": values["log_p"].gather(-1, picked).squeeze(-1),
           "teacher_logp": values["log_q"].gather(-1, picked).squeeze(-1)}
    return out | {name: values[name] for name in _STATS + _FLAGS if name not in out}
