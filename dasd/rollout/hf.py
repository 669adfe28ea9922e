"""Batched sampling from a ``transformers`` causal LM with a KV cache.

Implements the rollout step of the paper (section 2, GRPO: sample G trajectories from
π_θold(·|x); appendix C, Algorithm 1 line 3: rollouts are sampled without privileged context;
appendix F: evaluation samples at temperature 1.0, top-p 0.9). The engine left-pads prompts,
prefills once, then decodes one token per step reusing the model's KV cache.

Departures and choices:

1. ``Rollouts.logprobs`` are log-probs under softmax(logits / temperature) *without* top-p
   truncation: this is the π_old of the PPO ratio (section 2, ρ_t), the same distribution the
   scorer (``dasd.scoring``) computes. At temperature 0 (greedy) they are taken at
   temperature 1.
2. Rows that have emitted EOS are dropped from the decoding batch (the KV cache is compacted)
   once they make up a quarter of it, so long stragglers do not pay for finished rows.
3. Sampling draws one uniform number per row from ``generator`` (on its own device) and
   inverts the nucleus CDF, so a CPU generator makes runs reproducible on any device.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from dasd.head import head_logits, output_layer
from dasd.memory import GIB, generation_rows
from dasd.rollout.batching import (check_decoding, check_sampling, concat_right_padded,
                                   over_micro_batches, trim_left_padding)
from dasd.rollout.engines import ROLLOUT_ENGINES, RolloutEngine

__all__ = [
    "DecodeContext",
    "DecodedRows",
    "Rollouts",
    "assemble_rollouts",
    "encode_prompts",
    "eval_mode",
    "generate",
    "kv_budget_batch_size",
    "model_call_kwargs",
    "next_token_logits",
    "positions_from_mask",
    "sample_from_logits",
    "stop_token_ids",
]


@dataclass
class Rollouts:
    """Sampled responses to a list of prompts, on CPU, in input order.

    Attributes:
        prompts: the N prompt strings.
        prompt_ids: ``(N, P)`` int64, left-padded with the tokenizer's pad id.
        prompt_mask: ``(N, P)`` bool, True on prompt tokens.
        response_ids: ``(N, T)`` int64, right-padded with the pad id; T is the longest response.
        response_mask: ``(N, T)`` bool, True on emitted tokens (EOS included).
        logprobs: ``(N, T)`` float32, log π_old of each emitted token under
            softmax(logits / temperature) without top-p truncation (temperature 1 when sampling
            greedily); 0 outside ``response_mask``.
        finished: ``(N,)`` bool, True where the response ended with EOS.
        responses: the N decoded responses, without EOS or padding.
    """

    prompts: list[str]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    finished: torch.Tensor
    responses: list[str]

    @property
    def lengths(self) -> torch.Tensor:
        """``(N,)`` int64: the number of emitted tokens of each response (EOS included)."""
        return self.response_mask.sum(-1)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` (every submodule) in eval mode; restore each submodule's mode on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``(B, L)`` int64 from an attention mask ``(B, L)``: 0 at each row's first
    attended token, counting attended tokens only; 0 on the left padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def model_call_kwargs(model: nn.Module) -> tuple[str, bool]:
    """How to call ``model.forward`` across ``transformers`` versions.

    Returns the keyword of the KV cache (``"cache"`` in transformers >= 5.x, where
    ``past_key_values`` is deprecated; ``"past_key_values"`` before) and whether the forward
    takes ``logits_to_keep``.
    """
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    return cache_kw, "logits_to_keep" in params


def next_token_logits(model: nn.Module, cache_kw: str, keep_kw: dict[str, int],
                      **inputs: object) -> tuple[Tensor, object]:
    """Next-token logits ``(B, V)`` of one cached decoding call with ``inputs`` (ids, masks,
    positions, ``use_cache`` and the cache under ``cache_kw``), and the advanced cache.

    A plain output layer (``dasd.head``) in bf16/fp16, or under autocast, gives float32 logits
    from the final hidden state, so such a model samples and scores from float32 logits; a
    float32 output layer without autocast, or any other model, runs its own forward (the same
    float32 logits, and forward hooks on the model still see them)."""
    layer = output_layer(model)
    device_type = next(model.parameters()).device.type
    if layer is None or (layer[0].dtype in (torch.float32, torch.float64)
                         and not torch.is_autocast_enabled(device_type)):
        out = model(**inputs, **keep_kw)
        return out.logits[:, -1], getattr(out, cache_kw)
    out = model.get_decoder()(**inputs)
    return head_logits(model, out.last_hidden_state[:, -1]), getattr(out, cache_kw)


def kv_budget_batch_size(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                         prompts: Sequence[str], *, max_new_tokens: int, budget_gb: float,
                         cap: int, dtype: torch.dtype | None = None) -> int:
    """Prompts per generation batch: at most ``cap``, and no more than the KV cache of
    (longest prompt + ``max_new_tokens``) tokens each fits ``budget_gb`` GiB
    (``dasd.memory.generation_rows``; ``dtype``: the cache's, default the model's)."""
    width = encode_prompts(tokenizer, list(prompts))[0].shape[1]
    dtype = dtype or next(model.parameters()).dtype
    return generation_rows(model.config, dtype, width + max_new_tokens, budget_gb * GIB, cap)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize ``prompts`` with left padding.

    Returns ``ids (N, P)`` int64 and ``mask (N, P)`` bool. Raises ``ValueError`` when the
    tokenizer has no pad token or a prompt encodes to no tokens.
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token)")
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt")
    enc = tokenizer(list(prompts), padding=True, padding_side="left", return_tensors="pt")
    ids, mask = enc["input_ids"].long(), enc["attention_mask"].bool()
    empty = (~mask.any(-1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(f"prompt {int(empty[0])} encodes to no tokens; pass non-empty prompts")
    return ids, mask


def stop_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The EOS ids that end a response: the tokenizer's EOS and the model's generation-config
    EOS ids (an int or a list), as ``model.generate`` stops. Raises ``ValueError`` if none."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    ids.discard(None)
    if not ids:
        raise ValueError("neither the tokenizer nor the model defines an eos token; set tokenizer.eos_token")
    return sorted(ids)


def sample_from_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row with temperature and nucleus (top-p) truncation.

    Args:
        logits: ``(B, V)`` next-token logits (any float dtype; computed in float32).
        temperature: softmax temperature; 0 means greedy argmax.
        top_p: keep the smallest set of most probable tokens whose cumulative probability is
            ≥ ``top_p`` (the top token is always kept), renormalise, sample.
        generator: source of the one uniform draw per row, on any device.

    Returns:
        ``token_ids (B,)`` int64 and ``logprobs (B,)`` float32: log softmax(logits / temperature)
        at the sampled token, without top-p truncation (temperature 1 when greedy).
    """
    check_sampling(temperature, top_p)
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(-1)
        logp = torch.log_softmax(logits, -1)
    else:
        logp = torch.log_softmax(logits / temperature, -1)
        probs, order = torch.sort(logp.exp(), dim=-1, descending=True, stable=True)
        cdf = probs.cumsum(-1)
        kept = ((cdf - probs) < top_p) & (probs > 0)
        kept[:, 0] = True
        cdf = (probs * kept).cumsum(-1)
        gen_device = generator.device if generator is not None else logits.device
        u = torch.rand(logits.shape[0], 1, generator=generator, device=gen_device).to(logits.device)
        rank = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
        rank = torch.minimum(rank, kept.sum(-1, keepdim=True) - 1)
        tokens = order.gather(-1, rank).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
             batch_size: int = 64, generator: torch.Generator | None = None,
             progress: Callable[[int], None] | None = None) -> Rollouts:
    """Sample one response per prompt with a KV cache, in micro-batches of ``batch_size``.

    Each row stops after emitting an EOS token (see ``stop_token_ids``; the EOS counts as a
    response token); a micro-batch stops when every row has stopped or after
    ``max_new_tokens``. Runs under ``torch.inference_mode()`` with the model in eval mode (its
    mode is restored). Deterministic given a seeded ``generator``.

    Args:
        model: a ``transformers`` causal LM (``logits`` output, KV cache).
        tokenizer: its tokenizer; needs a pad token. Prompts are encoded with its default
            special tokens and left padding.
        prompts: N prompt strings.
        max_new_tokens: the most tokens a response may have.
        temperature, top_p, generator: as in ``sample_from_logits``.
        batch_size: prompts per micro-batch.
        progress: called after each micro-batch with the number of prompts it finished.

    Returns:
        ``Rollouts`` on CPU; responses padded to the longest one over all micro-batches.
    """
    check_decoding(max_new_tokens, batch_size, temperature, top_p)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    pad_id = tokenizer.pad_token_id
    eos = stop_token_ids(model, tokenizer)

    def decode(rows: slice, index: int) -> dict[str, Tensor]:
        return _decode(model, *trim_left_padding(prompt_ids[rows], prompt_mask[rows]),
                       max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       generator=generator, pad_id=pad_id, eos=eos)

    with torch.inference_mode(), eval_mode(model):
        parts = over_micro_batches(len(prompts), batch_size, decode, progress)
    return assemble_rollouts(
        tokenizer, prompts, prompt_ids, prompt_mask,
        concat_right_padded([p["ids"] for p in parts], pad_id),
        concat_right_padded([p["mask"] for p in parts]),
        concat_right_padded([p["logp"] for p in parts]), eos,
    )


def assemble_rollouts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    logprobs: Tensor,
    eos: Sequence[int],
) -> Rollouts:
    """``Rollouts`` from sampled ``(N, T)`` response tokens, mask and log-probs (any engine):
    a row is finished when its last valid token is in ``eos``; its text is its valid tokens
    other than ``eos``, decoded without skipping other special tokens."""
    eos_t = torch.tensor(list(eos), dtype=torch.long)
    lengths = response_mask.sum(-1)
    last = response_ids.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
    finished = (lengths > 0) & torch.isin(last, eos_t)
    keep = response_mask & ~torch.isin(response_ids, eos_t)
    responses = tokenizer.batch_decode(
        [row[k].tolist() for row, k in zip(response_ids, keep)], skip_special_tokens=False
    )
    return Rollouts(prompts=list(prompts), prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                    response_ids=response_ids, response_mask=response_mask, logprobs=logprobs,
                    finished=finished, responses=responses)


class DecodeContext:
    """One decoding context of a micro-batch: ids to feed, attention mask, positions, KV cache."""

    def __init__(self, ids: Tensor, mask: Tensor, device: torch.device) -> None:
        self.ids = ids.to(device)
        self.attn = mask.to(device).long()
        self.pos = positions_from_mask(self.attn)
        self.cache = None

    def forward(self, model: nn.Module, cache_kw: str, keep_kw: dict[str, int]) -> Tensor:
        """Next-token logits ``(B, V)``; advances the cache."""
        logits, self.cache = next_token_logits(
            model, cache_kw, keep_kw, input_ids=self.ids, attention_mask=self.attn,
            position_ids=self.pos, use_cache=True, **{cache_kw: self.cache},
        )
        return logits

    def select(self, keep: Tensor) -> None:
        """Keep the rows ``keep`` of the batch (cache included)."""
        self.cache.batch_select_indices(keep)
        self.attn, self.pos = self.attn[keep], self.pos[keep]

    def append(self, ids: Tensor) -> None:
        """Feed the tokens ``ids (B,)`` at the next step."""
        self.ids = ids[:, None]
        self.attn = torch.cat([self.attn, torch.ones_like(self.attn[:, :1])], dim=1)
        self.pos = self.pos[:, -1:] + 1


class DecodedRows:
    """The outputs of a micro-batch of ``n`` rows decoded step by step (departure 2).

    ``rows`` are the micro-batch indices of the rows still in the decoding batch and ``alive``
    which of them have not emitted EOS; each step writes the token and the per-token
    ``values`` of the alive rows only, so every entry past a row's EOS stays pad / 0 / False.
    """

    def __init__(self, n: int, max_new_tokens: int, *, pad_id: int, eos: list[int],
                 device: torch.device, floats: Sequence[str], flags: Sequence[str] = ()) -> None:
        self.max_new_tokens, self.device = max_new_tokens, device
        self.eos = torch.tensor(eos, device=device)
        self.ids = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
        self.values = {name: torch.zeros(n, max_new_tokens, dtype=torch.float32, device=device)
                       for name in floats}
        self.values |= {name: torch.zeros(n, max_new_tokens, dtype=torch.bool, device=device)
                        for name in flags}
        self.lengths = torch.zeros(n, dtype=torch.long, device=device)
        self.rows = torch.arange(n, device=device)
        self.alive = torch.ones(n, dtype=torch.bool, device=device)
        self.steps = 0

    def record(self, tokens: Tensor, values: dict[str, Tensor]) -> bool:
        """Write one step's ``tokens (b,)`` and ``values`` (each ``(b,)``) of the batch's rows;
        True when decoding is over (every row finished, or ``max_new_tokens`` steps)."""
        live = self.rows[self.alive]
        self.ids[live, self.steps] = tokens[self.alive]
        for name, value in values.items():
            self.values[name][live, self.steps] = value[self.alive]
        self.lengths[live] += 1
        self.alive &= ~torch.isin(tokens, self.eos)
        self.steps += 1
        return self.steps == self.max_new_tokens or bool((~self.alive).all())

    def compact(self) -> Tensor | None:
        """Once a quarter of the batch has finished, drop the finished rows and return the
        batch indices kept (the caller drops them from its contexts); else None."""
        if 4 * int((~self.alive).sum()) < self.alive.numel():
            return None
        keep = self.alive.nonzero().flatten()
        self.rows, self.alive = self.rows[keep], self.alive[keep]
        return keep

    def result(self, finite: Sequence[str]) -> dict[str, Tensor]:
        """CPU ``ids``, ``mask`` and every value ``(n, T)``, T the steps taken; raises if a
        value named in ``finite`` is not finite on a response token."""
        steps = self.steps
        valid = torch.arange(steps, device=self.device) < self.lengths[:, None]
        for name in finite:
            if not bool(self.values[name][:, :steps][valid].isfinite().all()):
                raise ValueError("the model produced NaN/inf logits while decoding; "
                                 "check its weights and dtype")
        result = {"ids": self.ids[:, :steps].cpu(), "mask": valid.cpu()}
        return result | {name: value[:, :steps].cpu() for name, value in self.values.items()}


def _decode(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    pad_id: int,
    eos: list[int],
) -> dict[str, Tensor]:
    """Decode one left-padded micro-batch ``ids, mask (B, P)``.

    Returns CPU ``ids (B, T)`` (pad after EOS), ``mask (B, T)`` bool and ``logp (B, T)``
    float32 with T ≤ ``max_new_tokens``.
    """
    device = next(model.parameters()).device
    cache_kw, has_keep = model_call_kwargs(model)
    keep_kw = {"logits_to_keep": 1} if has_keep else {}
    ctx = DecodeContext(ids, mask, device)
    out = DecodedRows(ids.shape[0], max_new_tokens, pad_id=pad_id, eos=eos, device=device,
                      floats=("logp",))
    while True:
        logits = ctx.forward(model, cache_kw, keep_kw)
        tokens, logp = sample_from_logits(
            logits, temperature=temperature, top_p=top_p, generator=generator
        )
        if out.record(tokens, {"logp": logp}):
            break
        keep = out.compact()
        if keep is not None:
            ctx.select(keep)
            tokens = tokens[keep]
        ctx.append(torch.where(out.alive, tokens, pad_id))
    return out.result(finite=("logp",))


def _build(model: nn.Module, **_: Any) -> Callable[..., Rollouts]:
    """The ``hf`` engine is :func:`generate` itself, whatever the model."""
    return generate


ROLLOUT_ENGINES.register("hf")(RolloutEngine(check=lambda device: None, build=_build,
                                             corrects_sampler_gap=False))
