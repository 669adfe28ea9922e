"""Generation engines (DESIGN.md section 2): ``hf`` samples with a ``transformers`` KV cache;
``vllm`` (optional extra) samples with vLLM on a GPU and returns the same ``Rollouts``. Each
engine registers itself in :data:`ROLLOUT_ENGINES` (``dasd.rollout.engines``) in its own
module; the trainer and the evaluation build one by name and read its traits, never its name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

import dasd.rollout.vllm  # noqa: F401  (registers the vllm engine)
from dasd.rollout.engines import ROLLOUT_ENGINES, RolloutEngine
from dasd.rollout.hf import Rollouts, generate, sample_from_logits

__all__ = [
    "ROLLOUT_ENGINES",
    "RolloutEngine",
    "Rollouts",
    "build_rollout_engine",
    "check_rollout_engine",
    "generate",
    "sample_from_logits",
]


def check_rollout_engine(name: str, *, device: str = "auto") -> None:
    """Raise a one-line ``ValueError`` if engine ``name`` is unknown or cannot run here
    (``vllm``: needs CUDA and the ``dasd[vllm]`` extra; checked without importing vLLM)."""
    ROLLOUT_ENGINES.get(name).check(device)


def build_rollout_engine(
    name: str, model: nn.Module, *, max_new_tokens: int, max_prompt_tokens: int = 1024,
    gpu_memory_utilization: float = 0.3, seed: int = 0, sampler_logprobs: bool = True,
) -> Callable[..., Rollouts]:
    """A function called like ``generate(model, tokenizer, prompts, *, max_new_tokens, ...)``:
    ``generate`` itself for ``hf``; for ``vllm`` a bf16 ``VLLMEngine`` in sleep mode built from
    ``model``'s checkpoint (``name_or_path``), which syncs ``model``'s weights at every call,
    reserves ``max_prompt_tokens + max_new_tokens`` tokens per sequence (its
    ``max_model_len``) and returns the sampled tokens' processed log-probs when
    ``sampler_logprobs``."""
    check_rollout_engine(name, device=next(model.parameters()).device.type)
    return ROLLOUT_ENGINES.get(name).build(
        model, max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
        gpu_memory_utilization=gpu_memory_utilization, seed=seed,
        sampler_logprobs=sampler_logprobs)
