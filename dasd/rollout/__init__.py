"""Generation engines (DESIGN.md section 2): ``hf`` samples with a ``transformers`` KV cache."""

from dasd.rollout.hf import Rollouts, generate, sample_from_logits

__all__ = ["Rollouts", "generate", "sample_from_logits"]
