"""Routing signals for DASD's direction router (paper section 4, eq. 4; section 6 RQ3, Table 5
panel A, appendix G Table 12).

DASD routes each response token by its student entropy H_t: z_t = D((tau_rho - H_t) /
sigma_H), so low-entropy scaffolding is attracted to the privileged teacher and high-entropy
forks are repelled. Table 12 replaces H_t by other per-token signals, each passed through the
same direction map and gate. Every signal here is a ``(B, T)`` tensor where HIGHER means "more
fork-like", as entropy does, so ``dasd.advantages.dasd_advantages`` takes any of them as its
``entropy`` argument unchanged. The router only uses the signal's per-trajectory quantile,
mean and mean absolute deviation, so it is invariant to a positive scale and a shift of the
signal: only its shape within a trajectory matters.

``ROUTING_SIGNALS`` maps a name to a builder ``(task=, tokenizer=) -> RoutingSignal``; a
``RoutingSignal`` is called once per update with the policy and a ``RoutingBatch``. Pure
per-token math is in the public functions (tensors in, tensors out); the builders add the
forward passes a signal needs.

* ``entropy`` (default): the student entropy H_t the scorer already computed; no extra cost.
* ``position``: ``relative_position``, sin(pi (t + 1/2) / |o|) over the response's own
  length, a pure location prior with no access to the model: it is low at both ends of a
  response (setup and final answer, which are formulaic) and high in the middle (where the
  search happens), so the router attracts the ends and repels the middle. No extra cost.
* ``frequency``: ``token_rarity``, -log of the add-one smoothed frequency of the emitted token
  in a training corpus, counted once when the trainer starts. No extra cost per update.
* ``grad_norm``: ``output_grad_norm``, the exact norm of the gradient of log pi(o_t) with
  respect to the unembedding matrix W_U, ||e_{o_t} - p_t||_2 ||h_t||_2 / temperature. One
  extra forward pass without gradient per update.
* ``attention``: ``attention_entropy``, the entropy of the attention distribution of the query
  that predicts o_t, averaged over every head of every layer. One extra forward pass per
  update with eager attention.

Departures from the paper (which names the signals in one line each, Table 12):

1. Position: "sinusoidal relative position" is given without a formula; we choose the half
   period over the response, sin(pi u) with u = (t + 1/2) / |o| in (0, 1), so that position
   alone, not the response length, sets the signal.
2. Token frequency: the corpus is the reference solutions r of ``FREQUENCY_CORPUS_SIZE``
   training problems of the task (seed 0, the same for every run and seed), tokenized as the
   responses are; the signal is -log((c_v + 1) / (N + V)) with c_v the count of token v, N
   the corpus size in tokens and V the table size, so a token never seen in the corpus is the
   rarest. Token ids outside the tokenizer's vocabulary count as unseen.
3. Gradient norm: the paper's ||grad_theta log pi_theta(o_t)|| needs one backward pass per
   token. We use its closed-form part for the output layer: grad_{W_U} log softmax(W_U h_t /
   T)_{o_t} = (e_{o_t} - p_t) h_t^T / T, whose Frobenius norm is ||e_{o_t} - p_t||_2
   ||h_t||_2 / T, exact for W_U and a lower bound of the full norm. h_t is the input of the
   output layer (after the final norm), the decoder's last hidden state; with tied embeddings
   only the output-side use of the shared matrix is counted.
4. Attention entropy: "mean attention-head entropy at token t" is read as the mean over all
   layers and heads of -sum_k a_k log a_k for the query at the position that predicts o_t
   (the position whose logits give H_t), keys over the prompt and the response prefix
   (padding gets weight 0). It needs the attention weights, so the model runs once more with
   eager attention (restored afterwards): O(L^2) memory per layer for one micro-batch, each
   layer reduced to per-token entropies as it finishes (a forward hook on every module named
   ``self_attn``, the ``transformers`` convention).
5. Forward passes run without gradient in eval mode on the policy that sampled the batch,
   longest first, at most ``SIGNAL_BATCH_SIZE`` responses at a time and fewer when the
   pass's float32 logits (``grad_norm``) or one layer's attention probabilities
   (``attention``) would exceed ``memory_budget`` bytes (``dasd.memory``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from dasd.memory import GIB, attention_bytes_per_row, logits_bytes_per_row, rows_within
from dasd.registry import Registry
from dasd.rollout.hf import Rollouts, eval_mode
from dasd.head import head_logits, output_layer
from dasd.scoring import response_hidden, response_logits

__all__ = [
    "FREQUENCY_CORPUS_SIZE",
    "ROUTING_SIGNALS",
    "SIGNAL_BATCH_SIZE",
    "SIGNAL_MEMORY_BUDGET",
    "RoutingBatch",
    "RoutingSignal",
    "attention_entropy",
    "build_routing_signal",
    "corpus_counts",
    "eager_attention",
    "output_grad_norm",
    "relative_position",
    "token_rarity",
]

#: Training problems whose reference solutions form the ``frequency`` signal's corpus.
FREQUENCY_CORPUS_SIZE = 1024
#: Responses per forward pass of the ``grad_norm`` and ``attention`` signals, at most.
SIGNAL_BATCH_SIZE = 32
#: Default byte budget of one such pass's logits or attention probabilities.
SIGNAL_MEMORY_BUDGET = 2 * GIB


@dataclass(frozen=True)
class RoutingBatch:
    """One update's sampled responses as a routing signal sees them (CPU tensors).

    Attributes:
        prompt_ids, prompt_mask: ``(B, P)`` left-padded student prompts x.
        response_ids, response_mask: ``(B, T)`` right-padded responses o, mask True on tokens.
        entropy: ``(B, T)`` student entropy H_t (``dasd.scoring.TokenScores.entropy``).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    entropy: Tensor

    @classmethod
    def from_rollouts(cls, rollouts: Rollouts, entropy: Tensor) -> RoutingBatch:
        return cls(rollouts.prompt_ids, rollouts.prompt_mask, rollouts.response_ids,
                   rollouts.response_mask.bool(), entropy)


class RoutingSignal(Protocol):
    def __call__(self, model: nn.Module, batch: RoutingBatch, *, temperature: float,
                 memory_budget: float = SIGNAL_MEMORY_BUDGET) -> Tensor:
        """``(B, T)`` float32 signal (higher: more fork-like), 0 off ``batch.response_mask``;
        a pass of its own holds at most ``memory_budget`` bytes of logits or attention."""
        ...


#: Routing signals by name: each a builder ``(task=..., tokenizer=...) -> RoutingSignal``.
ROUTING_SIGNALS: Registry[Callable[..., RoutingSignal]] = Registry("routing signal")


def build_routing_signal(name: str, *, task: Any, tokenizer: Any) -> RoutingSignal:
    """The routing signal ``name`` (``ROUTING_SIGNALS``) for runs on ``task`` with
    ``tokenizer``; a ``ValueError`` listing the valid names for an unknown one."""
    return ROUTING_SIGNALS.get(name)(task=task, tokenizer=tokenizer)


# --------------------------------------------------------------------------- pure math


def relative_position(mask: Tensor) -> Tensor:
    """sin(pi (t + 1/2) / n) at token t of a trajectory of n valid tokens (module docstring).

    Args:
        mask: ``(B, T)`` bool, right-padded (each row's valid tokens first).

    Returns:
        ``(B, T)`` float32 in (0, 1], 0 off ``mask``.
    """
    mask = mask.bool()
    n = mask.sum(-1, keepdim=True).clamp(min=1).float()
    t = torch.arange(mask.shape[-1], device=mask.device, dtype=torch.float32)
    return torch.where(mask, torch.sin(math.pi * (t + 0.5) / n), 0.0)


def corpus_counts(sequences: Iterable[Sequence[int]], vocab_size: int) -> Tensor:
    """``(vocab_size,)`` int64 count of each token id over ``sequences``; ids outside
    ``[0, vocab_size)`` are not counted."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for ids in sequences:
        ids = torch.as_tensor(list(ids), dtype=torch.int64)
        ids = ids[(ids >= 0) & (ids < vocab_size)]
        counts += torch.bincount(ids, minlength=vocab_size)
    return counts


def token_rarity(response_ids: Tensor, mask: Tensor, counts: Tensor) -> Tensor:
    """-log((c + 1) / (N + V)) of each emitted token: c its corpus count, N = sum(counts),
    V = len(counts); an id outside ``[0, V)`` counts as unseen (c = 0).

    Args:
        response_ids: ``(B, T)`` int token ids.
        mask: ``(B, T)`` bool, True on valid tokens.
        counts: ``(V,)`` int corpus counts (``corpus_counts``).

    Returns:
        ``(B, T)`` float32, 0 off ``mask``.
    """
    counts = counts.to(response_ids.device, torch.float64)
    vocab = counts.shape[0]
    ids = response_ids.long()
    inside = (ids >= 0) & (ids < vocab)
    c = torch.where(inside, counts[ids.clamp(0, max(vocab - 1, 0))], 0.0)
    rarity = -torch.log((c + 1.0) / (counts.sum() + vocab))
    return torch.where(mask.bool(), rarity, 0.0).float()


def output_grad_norm(logits: Tensor, hidden: Tensor, targets: Tensor, *,
                     temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """||grad_{W_U} log softmax(W_U h / T)_o||_F = ||e_o - p||_2 ||h||_2 / T per position.

    ||e_o - p||^2 = 1 - 2 p_o + sum_v p_v^2 is computed in float32 over ``chunk_size``
    positions at a time.

    Args:
        logits: ``(..., V)`` logits W_U h (before the temperature).
        hidden: ``(..., d)`` the output layer's input h at the same positions.
        targets: ``(...)`` int, the emitted token o.
        temperature: T > 0.
        chunk_size: positions per chunk of the softmax.

    Returns:
        ``(...)`` float32.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    shape = targets.shape
    flat = logits.reshape(-1, logits.shape[-1])
    target = targets.reshape(-1, 1).long().to(flat.device)
    gap = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for s in range(0, flat.shape[0], chunk_size):
        p = torch.softmax(flat[s:s + chunk_size].float() / temperature, dim=-1)
        p_o = p.gather(-1, target[s:s + chunk_size]).squeeze(-1)
        gap[s:s + chunk_size] = (1.0 - 2.0 * p_o + (p * p).sum(-1)).clamp(min=0).sqrt()
    h = hidden.reshape(-1, hidden.shape[-1]).float().to(flat.device).norm(dim=-1)
    return (gap * h / temperature).reshape(shape)


def attention_entropy(weights: Tensor) -> Tensor:
    """-sum_k a_k log a_k of each query's attention distribution, mean over heads.

    Args:
        weights: ``(b, heads, q, k)`` attention probabilities (rows sum to 1; 0 on masked keys).

    Returns:
        ``(b, q)`` float32.
    """
    a = weights.float()
    return -torch.special.xlogy(a, a).sum(-1).mean(1)


# --------------------------------------------------------------------------- forward passes


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` with eager attention (which returns attention weights) inside the block;
    its attention implementation is restored on exit."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


PerToken = Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]
#: Bytes one row of a pass needs, from the model and the row's prompt + response length.
RowBytes = Callable[[nn.Module, int, int], int]


def _per_token(model: nn.Module, batch: RoutingBatch, fn: PerToken, row_bytes: RowBytes, *,
               memory_budget: float, batch_size: int = SIGNAL_BATCH_SIZE) -> Tensor:
    """``fn(model, prompt_ids, prompt_mask, response_ids) -> (b, t)`` over micro-batches of
    ``batch`` (longest first) of at most ``batch_size`` responses and ``memory_budget`` bytes
    (``row_bytes(model, prompt + response length, response length)`` each), assembled into
    ``(B, T)`` float32, 0 off the mask."""
    mask = batch.response_mask.bool()
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    lengths = mask.sum(-1)
    order = torch.argsort(lengths + batch.prompt_mask.bool().sum(-1), descending=True,
                          stable=True)
    width = batch.prompt_mask.shape[-1]
    with torch.inference_mode(), eval_mode(model):
        s = 0
        while s < len(order):
            t = int(lengths[order[s]])
            if t == 0:
                break
            take = rows_within(memory_budget, row_bytes(model, width + t, t), batch_size)
            rows = order[s:s + take]
            s += take
            ids = batch.response_ids[rows, :t].long().masked_fill(~mask[rows, :t], 0)
            values = fn(model, batch.prompt_ids[rows], batch.prompt_mask[rows], ids)
            out[rows, :t] = values.float().to(out.device).where(mask[rows, :t], 0.0)
    return out


def _logits_row_bytes(model: nn.Module, length: int, t: int) -> int:
    return logits_bytes_per_row(t, model.config.vocab_size)


def _attention_row_bytes(model: nn.Module, length: int, t: int) -> int:
    return attention_bytes_per_row(model.config, length)


def _grad_norm_block(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor,
                     ids: Tensor, *, temperature: float) -> Tensor:
    if output_layer(model) is None:
        raise ValueError(f"the grad_norm routing signal needs a plain linear output layer; "
                         f"{type(model).__name__} transforms its logits (use another signal)")
    hidden = response_hidden(model, prompt_ids, prompt_mask, ids)
    return output_grad_norm(head_logits(model, hidden), hidden, ids, temperature=temperature)


def _attention_block(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor,
                     ids: Tensor) -> Tensor:
    t = ids.shape[1]
    layers: list[Tensor] = []

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        layers.append(attention_entropy(output[1][:, :, -t - 1:-1]))

    modules = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "self_attn"]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no modules named self_attn; the "
                         "attention routing signal needs a transformers decoder")
    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        with eager_attention(model):
            forward = response_logits if output_layer(model) is None else response_hidden
            forward(model, prompt_ids, prompt_mask, ids)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(layers).mean(0)


# --------------------------------------------------------------------------- the registry


@ROUTING_SIGNALS.register("entropy")
def _entropy(*, task: Any, tokenizer: Any) -> RoutingSignal:
    def signal(model: nn.Module, batch: RoutingBatch, *, temperature: float,
               memory_budget: float = SIGNAL_MEMORY_BUDGET) -> Tensor:
        return batch.entropy
    return signal


@ROUTING_SIGNALS.register("position")
def _position(*, task: Any, tokenizer: Any) -> RoutingSignal:
    def signal(model: nn.Module, batch: RoutingBatch, *, temperature: float,
               memory_budget: float = SIGNAL_MEMORY_BUDGET) -> Tensor:
        return relative_position(batch.response_mask)
    return signal


@ROUTING_SIGNALS.register("frequency")
def _frequency(*, task: Any, tokenizer: Any) -> RoutingSignal:
    corpus = [p.reference for p in task.sample(FREQUENCY_CORPUS_SIZE, split="train", seed=0)]
    ids = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    counts = corpus_counts(ids, len(tokenizer))

    def signal(model: nn.Module, batch: RoutingBatch, *, temperature: float,
               memory_budget: float = SIGNAL_MEMORY_BUDGET) -> Tensor:
        return token_rarity(batch.response_ids, batch.response_mask, counts)
    return signal


@ROUTING_SIGNALS.register("grad_norm")
def _grad_norm(*, task: Any, tokenizer: Any) -> RoutingSignal:
    def signal(model: nn.Module, batch: RoutingBatch, *, temperature: float,
               memory_budget: float = SIGNAL_MEMORY_BUDGET) -> Tensor:
        def block(m: nn.Module, p: Tensor, pm: Tensor, ids: Tensor) -> Tensor:
            return _grad_norm_block(m, p, pm, ids, temperature=temperature)
        return _per_token(model, batch, block, _logits_row_bytes, memory_budget=memory_budget)
    return signal


@ROUTING_SIGNALS.register("attention")
def _attention(*, task: Any, tokenizer: Any) -> RoutingSignal:
    def signal(model: nn.Module, batch: RoutingBatch, *, temperature: float,
               memory_budget: float = SIGNAL_MEMORY_BUDGET) -> Tensor:
        return _per_token(model, batch, _attention_block, _attention_row_bytes,
                          memory_budget=memory_budget)
    return signal
