"""Generation engines (DESIGN.md section 2): ``hf`` samples with a ``transformers`` KV cache;
``vllm`` (optional extra) samples with vLLM on a GPU and returns the same ``Rollouts``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dasd.rollout.hf import Rollouts, generate, sample_from_logits

__all__ = [
    "ROLLOUT_ENGINES",
    "Rollouts",
    "build_rollout_engine",
    "check_rollout_engine",
    "generate",
    "sample_from_logits",
]

#: Names a config's ``rollout_engine`` takes.
ROLLOUT_ENGINES = ("hf", "vllm")


def check_rollout_engine(name: str, *, device: str = "auto") -> None:
    """Raise a one-line ``ValueError`` if engine ``name`` is unknown or cannot run here
    (``vllm``: needs CUDA and the ``dasd[vllm]`` extra; checked without importing vLLM)."""
    if name not in ROLLOUT_ENGINES:
        raise ValueError(f"unknown rollout_engine {name!r}; valid: {', '.join(ROLLOUT_ENGINES)}")
    if name == "vllm":
        from dasd.rollout.vllm import check_vllm_available

        check_vllm_available(device)


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
    if name == "hf":
        return generate
    from dasd.rollout.vllm import VLLMEngine

    return VLLMEngine(model.name_or_path, gpu_memory_utilization=gpu_memory_utilization,
                      seed=seed, max_model_len=max_prompt_tokens + max_new_tokens,
                      sampler_logprobs=sampler_logprobs)
