"""The rollout-engine registry: each engine module registers a :class:`RolloutEngine` under
its name (``hf`` in ``dasd.rollout.hf``, ``vllm`` in ``dasd.rollout.vllm``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dasd.registry import Registry

__all__ = ["ROLLOUT_ENGINES", "RolloutEngine"]


@dataclass(frozen=True)
class RolloutEngine:
    """One way to sample rollouts."""

    check: Callable[[str], None]
    """``check(device)``: a one-line ``ValueError`` when the engine cannot run on ``device``
    (``auto``, ``cpu``, ``cuda``)."""
    build: Callable[..., Callable[..., Any]]
    """``build(model, *, max_new_tokens, max_prompt_tokens, gpu_memory_utilization, seed,
    sampler_logprobs)``: a function called like ``dasd.rollout.hf.generate``."""
    corrects_sampler_gap: bool
    """Whether its sampler is not the scorer (other kernels, top-p processed log-probs in
    ``Rollouts.logprobs``), so that truncated importance sampling against the scorer's
    log-probs corrects the gap (``dasd.importance``; the trainer's ``vllm_is_cap``)."""


#: Engines by the name a config's ``rollout_engine`` takes.
ROLLOUT_ENGINES: Registry[RolloutEngine] = Registry("rollout_engine")
