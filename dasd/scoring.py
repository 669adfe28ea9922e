"""Student and privileged-teacher scores of sampled responses (paper appendix C, Algorithm 1
lines 6-11; section 4).

For each response token o_t the student branch p_t = π_θ(·|x, o_<t) gives the entropy H_t and
log p_t(o_t); the privileged self-teacher q_t = π_θ(·|x, r, o_<t) — the same weights, with the
reference solution r in the prompt (appendix F) — gives log q_t(o_t). δ_t = log q_t(o_t) −
log p_t(o_t) is formed downstream (``dasd.advantages``).

Departures and choices:

1. Both branches run without gradient (``torch.inference_mode``). Algorithm 1 keeps the
   gradient on the student branch; here the student scores are the routing statistics and the
   old-policy log-probs, and the trainer recomputes log π_θ with gradient for the PPO ratio.
2. The teacher context is whatever prompt the caller builds (x with r placed in it); this module
   only needs its token ids.
3. Micro-batches are formed from rows sorted by prompt + response length (results come back
   in input order), so short responses are not padded to the longest of the whole batch.
4. Memory and precision: with a plain output layer (``dasd.head``; Qwen3, Llama, Qwen2)
   the logits are formed in float32 from the final hidden states ``chunk_size`` positions at
   a time (``dasd.entropy.head_entropy_and_logprob``), so a pass holds no ``(batch_size, T,
   V)`` logits and a bf16 model's scores are those of its float32-upcast output layer (bf16
   logits would be off by ~0.04 nats, the size of delta). Other models fall back to their own
   logits, upcast to float32 before the softmax work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from dasd.entropy import (
    head_entropy_and_logprob,
    head_entropy_logprob_and_tail,
    token_entropy_and_logprob,
    token_entropy_logprob_and_tail,
)
from dasd.head import head_logits, output_layer
from dasd.perf import synced_time
from dasd.rollout.batching import length_sorted_chunks
from dasd.rollout.hf import (
    Rollouts,
    encode_prompts,
    eval_mode,
    model_call_kwargs,
    positions_from_mask,
)

__all__ = [
    "TokenScores",
    "response_hidden",
    "response_logits",
    "response_token_stats",
    "score_responses",
    "score_rollouts",
]


@dataclass
class TokenScores:
    """Per-token scores of N responses; float32, 0 outside the response mask.

    Attributes:
        entropy: ``(N, T)`` student entropy H_t of softmax(logits / temperature) (context x).
        student_logp: ``(N, T)`` student log p_t(o_t) (context x).
        teacher_logp: ``(N, T)`` privileged-teacher log q_t(o_t) (context x + r), or None when
            no teacher prompts were given.
        student_tail, teacher_tail: ``(N, T)`` tail masses 1 - max_v p_t(v) and
            1 - max_v q_t(v) when scored with ``tail=True`` (teacher: when there is one), else
            None.
    """

    entropy: torch.Tensor
    student_logp: torch.Tensor
    teacher_logp: torch.Tensor | None
    student_tail: torch.Tensor | None = None
    teacher_tail: torch.Tensor | None = None


def score_responses(
    model: nn.Module,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    student_prompt_ids: torch.Tensor,
    student_prompt_mask: torch.Tensor,
    *,
    teacher_prompt_ids: torch.Tensor | None = None,
    teacher_prompt_mask: torch.Tensor | None = None,
    batch_size: int = 32,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    timings: dict[str, float] | None = None,
    tail: bool = False,
    position_offset: int = 0,
) -> TokenScores:
    """Score responses under the student context and, optionally, the teacher context.

    Each prompt (left-padded) is followed by its response; position ids count attended tokens
    only, so the amount of padding changes nothing. The logits at the position before each
    response token give its entropy and log-prob (``dasd.entropy.token_entropy_and_logprob``).
    Runs under ``torch.inference_mode()`` with the model in eval mode (its mode is restored);
    the teacher is the same ``model``.

    Args:
        model: a ``transformers`` causal LM.
        response_ids: ``(N, T)`` int, right-padded.
        response_mask: ``(N, T)`` bool, True on response tokens; each row's True entries come
            first.
        student_prompt_ids, student_prompt_mask: ``(N, P)`` left-padded student prompts (x).
        teacher_prompt_ids, teacher_prompt_mask: ``(N, P')`` left-padded teacher prompts
            (x with r), both or neither.
        batch_size: responses per forward pass (bounds the ``(batch_size, T + 1, V)`` logits).
        chunk_size: positions per chunk of the float32 softmax.
        temperature: scores are of softmax(logits / temperature).
        timings: when given, ``"student_s"`` and ``"teacher_s"`` are incremented by the wall
            seconds of each branch's passes (after the device's queued work is done).
        tail: also give the tail masses 1 - max_v of both distributions (same pass).
        position_offset: added to every position id (``response_logits``).

    Returns:
        ``TokenScores`` on the device of ``response_ids``.
    """
    response_mask = response_mask.bool()
    _check_score_inputs(response_ids, response_mask, student_prompt_ids, student_prompt_mask,
                        teacher_prompt_ids, teacher_prompt_mask, batch_size=batch_size,
                        temperature=temperature)
    response_ids = response_ids.long().masked_fill(~response_mask, 0)
    entropy = torch.zeros(response_ids.shape, dtype=torch.float32, device=response_ids.device)
    scores = TokenScores(
        entropy=entropy,
        student_logp=torch.zeros_like(entropy),
        teacher_logp=None if teacher_prompt_ids is None else torch.zeros_like(entropy),
        student_tail=torch.zeros_like(entropy) if tail else None,
        teacher_tail=torch.zeros_like(entropy) if tail and teacher_prompt_ids is not None else None,
    )
    # (prompt ids, prompt mask, entropy out, log-prob out, tail out, timing key) per branch
    branches = [(student_prompt_ids, student_prompt_mask, scores.entropy, scores.student_logp,
                 scores.student_tail, "student_s")]
    if teacher_prompt_ids is not None:
        branches.append((teacher_prompt_ids, teacher_prompt_mask, None, scores.teacher_logp,
                         scores.teacher_tail, "teacher_s"))
    block_kw = {"chunk_size": chunk_size, "temperature": temperature, "tail": tail,
                "position_offset": position_offset}
    clock = _Clock(next(model.parameters()).device, timings)
    with torch.inference_mode(), eval_mode(model):
        lengths = response_mask.sum(-1)
        for rows in length_sorted_chunks(lengths + student_prompt_mask.bool().sum(-1), batch_size):
            t = int(lengths[rows].max())
            if t == 0:
                break
            ids, mask = response_ids[rows, :t], response_mask[rows, :t]
            for prompt_ids, prompt_mask, *outs, key in branches:
                block = _score_block(model, prompt_ids[rows], prompt_mask[rows], ids, **block_kw)
                for out, value in zip(outs, block):
                    if out is not None:
                        out[rows, :t] = value.where(mask, 0.0)
                clock.lap(key)
    return scores


def _check_score_inputs(
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    student_prompt_ids: torch.Tensor,
    student_prompt_mask: torch.Tensor,
    teacher_prompt_ids: torch.Tensor | None,
    teacher_prompt_mask: torch.Tensor | None,
    *,
    batch_size: int,
    temperature: float,
) -> None:
    """Raise a one-line ``ValueError`` on ``score_responses`` arguments it cannot score."""
    _check_pair("response", response_ids, response_mask)
    _check_pair("student_prompt", student_prompt_ids, student_prompt_mask, n=response_ids.shape[0])
    if (teacher_prompt_ids is None) != (teacher_prompt_mask is None):
        raise ValueError("pass both teacher_prompt_ids and teacher_prompt_mask, or neither")
    if teacher_prompt_ids is not None:
        _check_pair("teacher_prompt", teacher_prompt_ids, teacher_prompt_mask, n=response_ids.shape[0])
    if bool((response_mask[:, 1:] & ~response_mask[:, :-1]).any()):
        raise ValueError("response_mask must be right-padded (each row's valid tokens first)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


class _Clock:
    """Adds the wall seconds since the previous lap to ``timings[key]`` (nothing without
    ``timings``)."""

    def __init__(self, device: torch.device, timings: dict[str, float] | None) -> None:
        self.device, self.timings = device, timings
        self.last = synced_time(device) if timings is not None else 0.0

    def lap(self, key: str) -> None:
        if self.timings is not None:
            now = synced_time(self.device)
            self.timings[key] = self.timings.get(key, 0.0) + now - self.last
            self.last = now


def score_rollouts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rollouts: Rollouts,
    teacher_prompts: list[str] | None,
    *,
    batch_size: int = 32,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    timings: dict[str, float] | None = None,
    tail: bool = False,
) -> TokenScores:
    """``score_responses`` on ``rollouts``: the student context is the rollout's own prompt;
    the teacher context is ``teacher_prompts[i]`` (x with r), tokenized with left padding as
    ``dasd.rollout.generate`` tokenizes prompts, or no teacher when None."""
    teacher_ids = teacher_mask = None
    if teacher_prompts is not None:
        if len(teacher_prompts) != len(rollouts.prompts):
            raise ValueError(
                f"teacher_prompts has {len(teacher_prompts)} prompts for {len(rollouts.prompts)} "
                "rollouts; pass one teacher prompt per rollout"
            )
        teacher_ids, teacher_mask = encode_prompts(tokenizer, teacher_prompts)
    return score_responses(model, rollouts.response_ids, rollouts.response_mask,
                           rollouts.prompt_ids, rollouts.prompt_mask,
                           teacher_prompt_ids=teacher_ids, teacher_prompt_mask=teacher_mask,
                           batch_size=batch_size, chunk_size=chunk_size,
                           temperature=temperature, timings=timings, tail=tail)


def _check_pair(name: str, ids: torch.Tensor, mask: torch.Tensor, *, n: int | None = None) -> None:
    if ids.dim() != 2 or ids.shape != mask.shape:
        raise ValueError(
            f"{name}_ids {tuple(ids.shape)} and {name}_mask {tuple(mask.shape)} "
            "must be (N, L) tensors of equal shape"
        )
    if n is not None and ids.shape[0] != n:
        raise ValueError(f"{name}_ids has {ids.shape[0]} rows for {n} responses; pass one per response")


def _joined(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
            device: torch.device, position_offset: int = 0) -> dict[str, torch.Tensor]:
    """The forward kwargs of left-padded prompts followed by their responses; position ids
    count attended tokens only, plus ``position_offset`` (a no-op in exact arithmetic for a
    model with rotary positions, which depend only on relative positions; it changes the
    rounding)."""
    prompt_mask = prompt_mask.bool()
    if not bool(prompt_mask.any(-1).all()):
        raise ValueError("a prompt has no tokens (its mask row is all False); pass non-empty prompts")
    first = int(prompt_mask.any(0).nonzero()[0])
    ids = torch.cat([prompt_ids[:, first:].long(), response_ids.long()], dim=1).to(device)
    attn = torch.cat([prompt_mask[:, first:], torch.ones_like(response_ids, dtype=torch.bool)], dim=1)
    attn = attn.long().to(device)
    return {"input_ids": ids, "attention_mask": attn,
            "position_ids": positions_from_mask(attn) + position_offset, "use_cache": False}


def response_hidden(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    response_ids: torch.Tensor, *, position_offset: int = 0) -> torch.Tensor:
    """The output layer's input ``(b, t, d)`` (final-normed hidden states) at the positions
    predicting each token of ``response_ids (b, t)`` after the left-padded prompts
    ``prompt_ids, prompt_mask (b, P)``; differentiable, on the model's device. Needs a model
    with ``output_layer(model)`` not None."""
    device = next(model.parameters()).device
    t = response_ids.shape[1]
    out = model.get_decoder()(**_joined(prompt_ids, prompt_mask, response_ids, device,
                                        position_offset))
    return out.last_hidden_state[:, -t - 1 : -1]


def response_logits(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    response_ids: torch.Tensor, *, position_offset: int = 0) -> torch.Tensor:
    """Logits ``(b, t, V)`` predicting each token of ``response_ids (b, t)`` after the
    left-padded prompts ``prompt_ids, prompt_mask (b, P)``; differentiable (the trainer's
    reverse-KL forward uses it with gradient), on the model's device; float32
    (``dasd.head.head_logits``) for a model with a plain output layer, else the model's own
    logits upcast to float32.

    Position ids count attended tokens only, so the amount of left padding changes nothing;
    ``position_offset`` is added to all of them (``_joined``). Positions after a row's last
    valid response token hold logits of padding; callers mask them.
    """
    if output_layer(model) is not None:
        return head_logits(model, response_hidden(model, prompt_ids, prompt_mask, response_ids,
                                                  position_offset=position_offset))
    device = next(model.parameters()).device
    t = response_ids.shape[1]
    _, has_keep = model_call_kwargs(model)
    keep_kw = {"logits_to_keep": t + 1} if has_keep else {}
    kwargs = _joined(prompt_ids, prompt_mask, response_ids, device, position_offset)
    return model(**kwargs, **keep_kw).logits[:, -t - 1 : -1].float()


def response_token_stats(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    tail: bool = False,
    position_offset: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Entropy and log-prob ``(b, t)`` float32 of each token of ``response_ids (b, t)`` after
    the left-padded prompts, on the model's device; differentiable. With a plain output layer
    the logits are never held whole (``dasd.entropy.head_entropy_and_logprob``); otherwise
    from ``response_logits``. With ``tail`` (not differentiable) a third ``(b, t)`` tensor, the
    tail mass 1 - max_v p(v) (``dasd.entropy.token_entropy_logprob_and_tail``)."""
    targets = response_ids.long().to(next(model.parameters()).device)
    kw = {"chunk_size": chunk_size, "temperature": temperature}
    layer = output_layer(model)
    if layer is None:
        logits = response_logits(model, prompt_ids, prompt_mask, response_ids,
                                 position_offset=position_offset)
        stats = token_entropy_logprob_and_tail if tail else token_entropy_and_logprob
        return stats(logits, targets, **kw)
    hidden = response_hidden(model, prompt_ids, prompt_mask, response_ids,
                             position_offset=position_offset)
    stats = head_entropy_logprob_and_tail if tail else head_entropy_and_logprob
    return stats(hidden, layer[0], targets, bias=layer[1], **kw)


def _score_block(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    *,
    chunk_size: int,
    temperature: float,
    tail: bool,
    position_offset: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Entropy, log-prob and (with ``tail``, else None) tail mass ``(b, t)`` of
    ``response_ids (b, t)`` after left-padded ``prompt_ids, prompt_mask (b, P)``; on the device
    of ``response_ids``."""
    out = response_token_stats(model, prompt_ids, prompt_mask, response_ids,
                               chunk_size=chunk_size, temperature=temperature, tail=tail,
                               position_offset=position_offset)
    ent, lp, tl = out if tail else (*out, None)
    dev = response_ids.device
    return ent.to(dev), lp.to(dev), None if tl is None else tl.to(dev)
