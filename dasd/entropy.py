"""Chunked, memory-bounded token statistics from logits (paper section 2, section 4, appendix C).

Pure tensor math. Two per-position quantities the method needs from a ``(..., V)`` logits
tensor, computed without ever materialising a full ``(N, V)`` float32 log-softmax:

- ``token_entropy_and_logprob``: the student entropy H_t = -sum_v p(v) log p(v) that drives the
  entropy router (eq. 4; Algorithm 1 line 9) and the log-probability log p(o_t) of the emitted
  token (the PPO ratio of eq. 1 and 5, and delta_t of eq. 4).
- ``head_entropy_and_logprob``: the same two quantities from the output layer's input (hidden
  states and the lm_head weight), the logits formed in float32 one chunk at a time, so the PPO
  forward and the scoring passes never hold ``(N, V)`` logits, nor their gradient.
- ``token_entropy_logprob_and_tail`` / ``head_entropy_logprob_and_tail``: the same two plus the
  tail mass 1 - max_v p(v) in the same pass (forward only; the mechanism statistics of
  ``dasd.mechanism``).
- ``token_reverse_kl``: the full-vocabulary reverse KL(p || sg[q]) per position (eq. 2 and the
  KL inside eq. 3), used by ``dasd.losses.reverse_kl_loss``.

Memory. Positions are processed ``chunk_size`` rows at a time; each chunk is upcast to float32
(float64 logits stay float64) into reused scratch buffers: two ``(chunk_size, V)`` buffers for
the entropy / log-prob, three for the KL. At the default ``chunk_size=1024`` and Qwen3's
V = 151,936 that is 1.2 GB (entropy) whatever the number of positions, against 10 GB for one
full float32 log-softmax of 16,384 positions. Both functions are differentiable through custom
autograd functions that save only the logits (already held by the caller) and O(N) per-position
statistics, and recompute softmax chunk by chunk in backward, so the backward pass is bounded in
the same way (plus the unavoidable gradient tensor, in the logits' dtype).

Departures and limits:

1. Double backward is not supported (the backward is ``once_differentiable``); the trainer only
   needs first-order gradients.
2. Logits whose leading dimensions cannot be flattened as a view (e.g. ``logits[:, :-1]``) are
   gathered one chunk at a time (a chunk-sized copy), never copied whole.
3. Non-finite logits (NaN, +inf, and -inf too, since an entropy or KL over a -inf logit is
   ambiguous in float arithmetic) are rejected with a ``ValueError``; detection reads the
   per-position results, so it costs no extra pass over the logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "head_entropy_and_logprob",
    "head_entropy_logprob_and_tail",
    "token_entropy_and_logprob",
    "token_entropy_logprob_and_tail",
    "token_reverse_kl",
]


# ---------------------------------------------------------------------------------------------
# helpers


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precisions are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _row_source(x: Tensor) -> Callable[[int, int], Tensor]:
    """A function ``rows(s, e)`` giving rows ``s:e`` of ``x`` seen as ``(N, V)``.

    A view when the leading dims flatten as a view; otherwise a gather of just those rows.
    """
    v = x.shape[-1]
    try:
        flat = x.view(-1, v)
    except RuntimeError:
        lead = x.shape[:-1]

        def rows(s: int, e: int) -> Tensor:
            idx = torch.unravel_index(torch.arange(s, e, device=x.device), lead)
            return x[idx]

        return rows
    return lambda s, e: flat[s:e]


def _log_softmax_into(chunk: Tensor, logp: Tensor, p: Tensor, temperature: float) -> Tensor:
    """Fill ``logp`` with log softmax(chunk / T) and ``p`` with softmax(chunk / T); return lse.

    ``logp`` and ``p`` are preallocated ``(n, V)`` buffers of the compute dtype; no other
    ``(n, V)`` temporary is created. ``chunk`` may be ``logp`` itself (logits already there).
    """
    if chunk is not logp:
        logp.copy_(chunk)
    if temperature != 1.0:
        logp.div_(temperature)
    m = logp.amax(dim=-1, keepdim=True)
    torch.sub(logp, m, out=p)
    p.exp_()
    s = p.sum(dim=-1, keepdim=True)
    lse = m + s.log()
    p.div_(s)
    logp.sub_(lse)
    return lse.squeeze(-1)


def _check_finite(name: str, *stats: Tensor) -> None:
    ok = torch.ones((), dtype=torch.bool, device=stats[0].device)
    for s in stats:
        ok = ok & torch.isfinite(s).all()
    if not bool(ok):
        bad = ~torch.stack([torch.isfinite(s) for s in stats]).all(dim=0)
        pos = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{name} contain NaN/inf (first at flattened position {pos}); "
            "check the model's forward pass or the temperature"
        )


def _check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return float(temperature)


def _flat_ids(token_ids: Tensor, lead: torch.Size, v: int, device: torch.device,
              what: str) -> Tensor:
    """``token_ids (...)`` checked (shape ``lead``, integer, in ``[0, v)``), flattened ``(N,)``
    int64 on ``device``."""
    if token_ids.shape != lead:
        raise ValueError(
            f"token_ids shape {tuple(token_ids.shape)} must equal {what} {tuple(lead)}"
        )
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise ValueError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
    ids = token_ids.reshape(-1).to(device=device, dtype=torch.long)
    if ids.numel() and bool(((ids < 0) | (ids >= v)).any()):
        raise ValueError(
            f"token_ids must lie in [0, {v}); got min {int(ids.min())}, max {int(ids.max())}"
        )
    return ids


def _check_common(logits: Tensor, chunk_size: int, name: str = "logits") -> None:
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


# ---------------------------------------------------------------------------------------------
# entropy and emitted-token log-prob


#: ``chunk(buf, s, e)``: the logits of positions ``s:e`` as ``(e - s, V)``, either a view of
#: the caller's logits or ``buf`` (a compute-dtype buffer of that shape) filled with them.
ChunkLogits = Callable[[Tensor, int, int], Tensor]


def _softmax_chunks(chunk: ChunkLogits, n: int, v: int, cd: torch.dtype, dev: torch.device,
                    chunk_size: int, temperature: float
                    ) -> Iterator[tuple[int, int, Tensor, Tensor, Tensor]]:
    """For each chunk ``s:e`` of the ``n`` positions: ``(s, e, logp, p, lse)`` with
    ``logp, p (e - s, V)`` the log-softmax and softmax of ``chunk``'s logits at ``temperature``
    in two reused compute-dtype buffers (the caller may overwrite them) and ``lse (e - s,)``
    the log-normalizers: the one chunk loop of the forward and backward passes."""
    c = max(min(chunk_size, n), 1)
    buf_logp = torch.empty((c, v), dtype=cd, device=dev)
    buf_p = torch.empty((c, v), dtype=cd, device=dev)
    for s in range(0, n, c):
        e = min(s + c, n)
        logp, p = buf_logp[: e - s], buf_p[: e - s]
        lse = _log_softmax_into(chunk(logp, s, e), logp, p, temperature)
        yield s, e, logp, p, lse


def _entropy_logprob_chunks(
    chunk: ChunkLogits, ids: Tensor, v: int, cd: torch.dtype, chunk_size: int,
    temperature: float, tail: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-position entropy and token log-prob, flattened ``(N,)``, in the compute dtype ``cd``,
    from the logits ``chunk`` gives one chunk at a time.

    With ``tail`` (an ``(N,)`` buffer of dtype ``cd``) also fills the tail mass 1 - max_v p(v),
    summed over the non-top probabilities (no cancellation against 1).
    """
    n = ids.numel()
    dev = ids.device
    ent = torch.empty(n, dtype=cd, device=dev)
    lp = torch.empty(n, dtype=cd, device=dev)
    lse = torch.empty(n, dtype=cd, device=dev)
    for s, e, logp, p, chunk_lse in _softmax_chunks(chunk, n, v, cd, dev, chunk_size,
                                                    temperature):
        lse[s:e] = chunk_lse
        lp[s:e] = logp.gather(1, ids[s:e, None]).squeeze(1)
        if tail is not None:
            top, arg = p.max(dim=-1, keepdim=True)
            tail[s:e] = p.scatter_(1, arg, 0.0).sum(dim=-1)
            p.scatter_(1, arg, top)
        # in place (no third buffer); torch.sum's cascaded summation keeps H accurate
        ent[s:e] = -p.mul_(logp).sum(dim=-1)
    _check_finite("logits", ent, lse)
    return ent, lp


def _entropy_logprob_fwd(
    logits: Tensor, ids: Tensor, chunk_size: int, temperature: float, tail: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-position entropy and token log-prob of ``logits``, flattened ``(N,)`` (and the tail
    mass into ``tail``, see ``_entropy_logprob_chunks``)."""
    rows = _row_source(logits)
    return _entropy_logprob_chunks(lambda buf, s, e: rows(s, e), ids, logits.shape[-1],
                                   _compute_dtype(logits), chunk_size, temperature, tail)


def _entropy_logprob_bwd_chunks(
    chunk: ChunkLogits, ids: Tensor, ent: Tensor, g_ent: Tensor | None, g_lp: Tensor | None,
    v: int, chunk_size: int, temperature: float, consume: Callable[[Tensor, int, int], None],
) -> None:
    """Recompute each chunk's softmax (exactly as in forward) and pass dL/dlogits of positions
    ``s:e`` (a reused ``(e - s, V)`` buffer in ``ent``'s dtype) to ``consume(grad, s, e)``."""
    n, cd, dev = ids.numel(), ent.dtype, ent.device
    g_ent = None if g_ent is None else g_ent.reshape(-1).to(cd)
    g_lp = None if g_lp is None else g_lp.reshape(-1).to(cd)
    # g <- log p, p <- p; then g <- dL/dlogits in place
    for s, e, g, p, _ in _softmax_chunks(chunk, n, v, cd, dev, chunk_size, temperature):
        _entropy_logprob_grad_into(g, p, ent[s:e], ids[s:e], _rows_of(g_ent, s, e),
                                   _rows_of(g_lp, s, e), temperature)
        consume(g, s, e)


def _rows_of(x: Tensor | None, s: int, e: int) -> Tensor | None:
    return None if x is None else x[s:e]


def _entropy_logprob_grad_into(g: Tensor, p: Tensor, ent: Tensor, ids: Tensor,
                               g_ent: Tensor | None, g_lp: Tensor | None,
                               temperature: float) -> None:
    """Turn ``g`` (holding log p of a chunk ``(n, V)``) into dL/dx of the logits x, given the
    upstream gradients ``g_ent``, ``g_lp`` ``(n,)`` of entropy and emitted-token log-prob.

    dH/dz_j = -p_j (log p_j + H);  d log p(o)/dz_j = 1[j = o] - p_j;  z = x / T.
    """
    if g_ent is not None:
        g.add_(ent[:, None]).mul_(g_ent[:, None])
        if g_lp is not None:
            g.add_(g_lp[:, None])
    else:
        g.copy_(g_lp[:, None].expand_as(g))
    g.mul_(p).neg_()
    if g_lp is not None:
        g.scatter_add_(1, ids[:, None], g_lp[:, None])
    if temperature != 1.0:
        g.div_(temperature)


def _saved_outputs(ctx: Any, inputs: tuple[Tensor | None, ...], ent: Tensor, lp: Tensor,
                   chunk_size: int, temperature: float) -> tuple[Tensor, Tensor]:
    """End a chunked forward: save ``inputs`` and the entropies for the backward (which
    recomputes the softmax), and return float32 ``(entropy, logprob)``; the entropy is a copy,
    so that in-place edits of the returned entropy cannot break backward."""
    ctx.save_for_backward(*inputs, ent)
    ctx.chunk_size, ctx.temperature = chunk_size, temperature
    ctx.set_materialize_grads(False)
    return ent.to(torch.float32, copy=True), lp.float()


class _EntropyLogprob(torch.autograd.Function):
    """Autograd wrapper: saves logits and O(N) stats, recomputes softmax chunkwise in backward."""

    @staticmethod
    def forward(ctx, logits, ids, chunk_size, temperature):
        ent, lp = _entropy_logprob_fwd(logits, ids, chunk_size, temperature)
        return _saved_outputs(ctx, (logits, ids), ent, lp, chunk_size, temperature)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_ent, g_lp):
        logits, ids, ent = ctx.saved_tensors
        if g_ent is None and g_lp is None:
            return None, None, None, None
        v = logits.shape[-1]
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        grad_flat = grad.view(-1, v)
        rows = _row_source(logits)

        def consume(g: Tensor, s: int, e: int) -> None:
            grad_flat[s:e].copy_(g)

        _entropy_logprob_bwd_chunks(lambda buf, s, e: rows(s, e), ids, ent, g_ent, g_lp, v,
                                    ctx.chunk_size, ctx.temperature, consume)
        return grad, None, None, None


def token_entropy_and_logprob(
    logits: Tensor,
    token_ids: Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Entropy of softmax(logits / T) and log-prob of ``token_ids``, per position, in chunks.

    Args:
        logits: ``(..., V)`` float tensor of any float dtype (bf16 as a model emits it is fine;
            it is upcast one chunk at a time, never whole).
        token_ids: ``(...)`` integer tensor, the emitted token at each position, in ``[0, V)``.
        chunk_size: positions per chunk; peak extra memory is about ``2 * chunk_size * V * 4``
            bytes (float32 compute) in forward and in backward.
        temperature: T > 0; the distribution is softmax(logits / T).

    Returns:
        ``(entropy, logprob)``, both float32 of shape ``(...)``: H = -sum_v p log p and
        log p(token_id). Differentiable w.r.t. ``logits`` (first order).

    Raises:
        ValueError: non-finite logits, temperature <= 0, mismatched shapes, token ids out of
            range.
    """
    _check_common(logits, chunk_size)
    lead = logits.shape[:-1]
    ids = _flat_ids(token_ids, lead, logits.shape[-1], logits.device, "logits.shape[:-1]")
    temperature = _check_temperature(temperature)
    if torch.is_grad_enabled() and logits.requires_grad:
        ent, lp = _EntropyLogprob.apply(logits, ids, chunk_size, temperature)
    else:
        ent, lp = _entropy_logprob_fwd(logits, ids, chunk_size, temperature)
        ent, lp = ent.float(), lp.float()
    return ent.view(lead), lp.view(lead)


# ---------------------------------------------------------------------------------------------
# the output layer fused with entropy and emitted-token log-prob


def _head_logits_into(out: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``out (n, V) <- hidden (n, d) @ weight.T (+ bias)`` in ``out``'s dtype (the weight is
    already in it); autocast never applies (the logits stay float32)."""
    torch.matmul(hidden.to(out.dtype), weight.t(), out=out)
    if bias is not None:
        out.add_(bias)
    return out


def _head_fwd(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, chunk_size: int,
              temperature: float, tail: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Entropy and token log-prob ``(N,)`` of softmax((hidden @ W.T + b) / T), chunk by chunk,
    in the compute dtype (and the tail mass into ``tail``); ``weight`` and ``bias`` are already
    in it."""
    return _entropy_logprob_chunks(
        lambda buf, s, e: _head_logits_into(buf, hidden[s:e], weight, bias), ids,
        weight.shape[0], weight.dtype, chunk_size, temperature, tail)


class _HeadEntropyLogprob(torch.autograd.Function):
    """Autograd wrapper of ``_head_fwd``: saves hidden states, weight and O(N) stats; backward
    recomputes each chunk's logits and softmax and accumulates the gradients of the hidden
    states, the weight and the bias chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, chunk_size, temperature):
        cd = _compute_dtype(hidden, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cd)
            b = None if bias is None else bias.to(cd)
            ent, lp = _head_fwd(hidden, w, b, ids, chunk_size, temperature)
        return _saved_outputs(ctx, (hidden, weight, bias, ids), ent, lp, chunk_size, temperature)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_ent, g_lp):
        hidden, weight, bias, ids, ent = ctx.saved_tensors
        if g_ent is None and g_lp is None:
            return None, None, None, None, None, None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        cd, dev = ent.dtype, hidden.device
        with torch.autocast(dev.type, enabled=False):
            w = weight.to(cd)
            b = None if bias is None else bias.to(cd)
            grad_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=dev) if need_h else None
            grad_w = torch.zeros(w.shape, dtype=cd, device=dev) if need_w else None
            grad_b = torch.zeros(w.shape[0], dtype=cd, device=dev) if need_b else None

            def consume(g: Tensor, s: int, e: int) -> None:
                if need_h:
                    grad_h[s:e] = g @ w
                if need_w:
                    grad_w.addmm_(g.t(), hidden[s:e].to(cd))
                if need_b:
                    grad_b.add_(g.sum(dim=0))

            _entropy_logprob_bwd_chunks(
                lambda buf, s, e: _head_logits_into(buf, hidden[s:e], w, b), ids, ent, g_ent,
                g_lp, w.shape[0], ctx.chunk_size, ctx.temperature, consume)
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None


def head_entropy_and_logprob(hidden: Tensor, weight: Tensor, token_ids: Tensor, *,
                             bias: Tensor | None = None, chunk_size: int = 1024,
                             temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """``token_entropy_and_logprob`` of the logits ``hidden @ weight.T + bias`` without ever
    holding them: the output layer (lm_head) is applied ``chunk_size`` positions at a time.

    The logits are formed in float32 (float64 if an input is float64) from the hidden states
    and weight as given, whatever their dtype and whatever autocast is active: a bf16 model's
    entropy and log-probs are those of its float32-upcast output layer (as TRL's
    ``cast_lm_head_to_fp32``), not of bf16-rounded logits. Peak extra memory is two
    ``(chunk_size, V)`` buffers in forward and backward, plus a float32 copy of the weight
    when it is not float32, and in backward its float32 gradient; never ``(N, V)``.

    Args:
        hidden: ``(..., d)`` the output layer's input (after the final norm), any float dtype.
        weight: ``(V, d)`` the output layer's weight; ``bias`` its ``(V,)`` bias or None.
        token_ids: ``(...)`` integer, the emitted token at each position, in ``[0, V)``.
        chunk_size: positions per chunk.
        temperature: T > 0; the distribution is softmax(logits / T).

    Returns:
        ``(entropy, logprob)``, float32 ``(...)``, differentiable (first order) w.r.t.
        ``hidden``, ``weight`` and ``bias``.

    Raises:
        ValueError: as ``token_entropy_and_logprob``; a weight that is not ``(V, d)``.
    """
    ids, temperature = _check_head_args(hidden, weight, token_ids, bias, chunk_size, temperature)
    flat = hidden.reshape(-1, hidden.shape[-1])
    ent, lp = _HeadEntropyLogprob.apply(flat, weight, bias, ids, chunk_size, temperature)
    lead = hidden.shape[:-1]
    return ent.view(lead), lp.view(lead)


def _check_head_args(hidden: Tensor, weight: Tensor, token_ids: Tensor, bias: Tensor | None,
                     chunk_size: int, temperature: float) -> tuple[Tensor, float]:
    """Validate the arguments of the output-layer functions; ``token_ids`` flattened ``(N,)``
    long on the hidden states' device, and the temperature as a float."""
    _check_common(hidden, chunk_size, "hidden")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} must be (V, d) with d = "
                         f"hidden.shape[-1] = {hidden.shape[-1]}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias {tuple(bias.shape)} must be (V,) = ({weight.shape[0]},)")
    ids = _flat_ids(token_ids, hidden.shape[:-1], weight.shape[0], hidden.device,
                    "hidden.shape[:-1]")
    return ids, _check_temperature(temperature)


def token_entropy_logprob_and_tail(
    logits: Tensor,
    token_ids: Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``token_entropy_and_logprob`` plus the tail mass 1 - max_v p(v) of each position, in the
    same chunked pass (one extra max and sum per chunk); not differentiable (use it for
    statistics, e.g. ``dasd.mechanism.tail_mass_ratio``).

    The tail is summed over the non-top probabilities rather than formed as 1 - p_top, so a
    near-deterministic position keeps its relative precision (a tail of 1e-12 is resolved, not
    rounded to 0 against 1 in float32); it is exactly 0 when V = 1 or the other logits
    underflow.

    Returns:
        ``(entropy, logprob, tail)``, float32 of shape ``(...)``.
    """
    _check_common(logits, chunk_size)
    lead = logits.shape[:-1]
    ids = _flat_ids(token_ids, lead, logits.shape[-1], logits.device, "logits.shape[:-1]")
    tail = torch.empty(ids.numel(), dtype=_compute_dtype(logits), device=logits.device)
    with torch.no_grad():
        ent, lp = _entropy_logprob_fwd(logits, ids, chunk_size, _check_temperature(temperature),
                                       tail)
    return ent.float().view(lead), lp.float().view(lead), tail.float().view(lead)


def head_entropy_logprob_and_tail(hidden: Tensor, weight: Tensor, token_ids: Tensor, *,
                                  bias: Tensor | None = None, chunk_size: int = 1024,
                                  temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """``token_entropy_logprob_and_tail`` of the logits ``hidden @ weight.T + bias``, formed in
    float32 one chunk at a time as in ``head_entropy_and_logprob``; not differentiable.

    Returns:
        ``(entropy, logprob, tail)``, float32 of shape ``hidden.shape[:-1]``.
    """
    ids, temperature = _check_head_args(hidden, weight, token_ids, bias, chunk_size, temperature)
    cd = _compute_dtype(hidden, weight)
    flat = hidden.reshape(-1, hidden.shape[-1])
    tail = torch.empty(ids.numel(), dtype=cd, device=hidden.device)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        ent, lp = _head_fwd(flat, weight.to(cd), None if bias is None else bias.to(cd), ids,
                            chunk_size, temperature, tail)
    lead = hidden.shape[:-1]
    return ent.float().view(lead), lp.float().view(lead), tail.float().view(lead)


# ---------------------------------------------------------------------------------------------
# full-vocabulary reverse KL(p || sg q)


def _kl_chunks(student: Tensor, teacher: Tensor, n: int, v: int, cd: torch.dtype,
               chunk_size: int, temperature: float
               ) -> Iterator[tuple[int, int, Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """For each chunk ``s:e`` of the ``n`` positions: ``(s, e, logp, p, logq, lse_p, lse_q)``,
    the student's log-softmax and softmax and the teacher's log-softmax ``(e - s, V)`` at
    ``temperature`` in three reused compute-dtype buffers (the caller may overwrite them), and
    both log-normalizers ``(e - s,)``: the one chunk loop of reverse KL's forward and
    backward. q's softmax goes into p's buffer first (discarded), then p overwrites it."""
    dev = student.device
    s_rows, t_rows = _row_source(student), _row_source(teacher)
    c = max(min(chunk_size, n), 1)
    buf_logp = torch.empty((c, v), dtype=cd, device=dev)
    buf_p = torch.empty((c, v), dtype=cd, device=dev)
    buf_logq = torch.empty((c, v), dtype=cd, device=dev)
    for s in range(0, n, c):
        e = min(s + c, n)
        logp, p, logq = buf_logp[: e - s], buf_p[: e - s], buf_logq[: e - s]
        lse_q = _log_softmax_into(t_rows(s, e), logq, p, temperature)
        lse_p = _log_softmax_into(s_rows(s, e), logp, p, temperature)
        yield s, e, logp, p, logq, lse_p, lse_q


def _reverse_kl_fwd(student: Tensor, teacher: Tensor, chunk_size: int, temperature: float) -> Tensor:
    """Per-position KL(p || q) of softmax(logits / T), flattened ``(N,)``, in the compute dtype."""
    v = student.shape[-1]
    n = student.numel() // v
    cd = _compute_dtype(student, teacher)
    dev = student.device
    kl = torch.empty(n, dtype=cd, device=dev)
    lse_p = torch.empty(n, dtype=cd, device=dev)
    lse_q = torch.empty(n, dtype=cd, device=dev)
    for s, e, logp, p, logq, chunk_lse_p, chunk_lse_q in _kl_chunks(
            student, teacher, n, v, cd, chunk_size, temperature):
        lse_p[s:e], lse_q[s:e] = chunk_lse_p, chunk_lse_q
        kl[s:e] = p.mul_(logp.sub_(logq)).sum(dim=-1)
    _check_finite("student/teacher logits", kl, lse_p, lse_q)
    return kl


class _ReverseKL(torch.autograd.Function):
    """Autograd wrapper for KL(p || sg q): gradient to the student only."""

    @staticmethod
    def forward(ctx, student, teacher, chunk_size, temperature):
        kl = _reverse_kl_fwd(student, teacher, chunk_size, temperature)
        ctx.save_for_backward(student, teacher, kl)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return kl.float()

    @staticmethod
    @once_differentiable
    def backward(ctx, g_kl):
        student, teacher, kl = ctx.saved_tensors
        t = ctx.temperature
        v = student.shape[-1]
        n = kl.numel()
        cd = kl.dtype
        dev = student.device
        grad = torch.empty(student.shape, dtype=student.dtype, device=dev)
        grad_flat = grad.view(-1, v)
        g_kl = g_kl.reshape(-1).to(cd)
        for s, e, g, p, logq, _, _ in _kl_chunks(student, teacher, n, v, cd, ctx.chunk_size, t):
            # dKL/dz_j = p_j (log p_j - log q_j - KL);  z = x / T
            g.sub_(logq).sub_(kl[s:e, None]).mul_(p).mul_(g_kl[s:e, None])
            if t != 1.0:
                g.div_(t)
            grad_flat[s:e].copy_(g)
        return grad, None, None, None  # teacher: stop-gradient, no gradient


def token_reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> Tensor:
    """Full-vocabulary KL(softmax(student / T) || sg[softmax(teacher / T)]) per position, in
    chunks.

    Args:
        student_logits: ``(..., V)``, any float dtype; receives the gradient.
        teacher_logits: same shape; always treated as a constant (stop-gradient, eq. 2): it gets
            no gradient even when it requires grad.
        chunk_size: positions per chunk; peak extra memory about ``3 * chunk_size * V * 4`` bytes.
        temperature: T > 0, applied one chunk at a time (so a caller never holds a divided
            ``(..., V)`` copy of either tensor); the gradient is w.r.t. the undivided
            ``student_logits``.

    Returns:
        float32 ``(...)`` tensor of KL values (>= 0 up to rounding).
    """
    _check_common(student_logits, chunk_size, "student_logits")
    _check_common(teacher_logits, chunk_size, "teacher_logits")
    _check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    lead = student_logits.shape[:-1]
    teacher = teacher_logits.detach()
    if torch.is_grad_enabled() and student_logits.requires_grad:
        kl = _ReverseKL.apply(student_logits, teacher, chunk_size, float(temperature))
    else:
        kl = _reverse_kl_fwd(student_logits, teacher, chunk_size, float(temperature)).float()
    return kl.view(lead)
