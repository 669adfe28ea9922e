"""The policy's output layer applied in float32 (issue 17, defect 2).

A bf16 model's logits rounded to bf16 are off by ~2^-9 of their size (~0.04 nats on LM-like
logits, the size of the teacher-student gap delta); entropy, log-probs and sampling
probabilities are therefore formed from logits computed here: the final-normed hidden states of
``model.get_decoder()`` times the output layer's weight, both upcast to float32 (float64 if
either is float64), autocast off. This is what TRL's ``cast_lm_head_to_fp32`` does; the final
norm's output stays in the model's dtype, as there.

It applies to models whose logits are exactly ``lm_head(decoder(x))`` (``output_layer``: Qwen3,
Qwen2, Llama, ...). Models that scale or soft-cap their logits (Gemma 2/3, Cohere, Granite)
keep their own forward, with logits in the model's dtype, upcast before the softmax work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["head_logits", "output_layer"]

#: Config keys of models whose logits are not just ``lm_head(hidden)``.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def output_layer(model: nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """The ``(weight (V, d), bias (V,) or None)`` of ``model``'s output layer when its logits are
    exactly ``lm_head(decoder(x))`` (a plain ``nn.Linear``, no logit scaling or soft-capping,
    a ``get_decoder()`` giving the final-normed hidden states), else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config: Any = getattr(model, "config", None)
    if not isinstance(head, nn.Linear) or not hasattr(model, "get_decoder"):
        return None
    if any(getattr(config, key, None) not in (None, 1.0) for key in _LOGIT_TRANSFORMS):
        return None
    return head.weight, head.bias


def head_logits(model: nn.Module, hidden: Tensor) -> Tensor:
    """float32 (float64 with float64 inputs) logits ``(..., V)`` of ``model``'s plain output
    layer at ``hidden (..., d)``: weights and hidden states upcast, autocast off."""
    layer = output_layer(model)
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no plain linear output layer; use its "
                         "own forward for logits")
    weight, bias = layer
    cd = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
    with torch.autocast(hidden.device.type, enabled=False):
        return nn.functional.linear(hidden.to(cd), weight.to(cd),
                                    None if bias is None else bias.to(cd))
