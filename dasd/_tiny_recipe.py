"""How the built-in ``tiny`` model is made: its recipe and its supervised training loop.

DESIGN.md section 5: a real ``transformers`` Qwen3 architecture, trained by supervised
fine-tuning on Countdown solver traces that search, fail, say "wait" and revise, with a share of
privileged-format examples (the reference solution r in the prompt, paper appendix F) so that
the same weights later act as a privileged teacher.

Choices and departures (this is not a paper procedure; the paper starts from pretrained Qwen3):

1. About 0.8 M parameters, not "a few million": the build must fit 5 minutes on 2 CPU cores,
   and at a fixed budget the number of optimizer updates mattered more than width or depth
   (batch 8 beat batch 16, 32 and 64 on the same tokens).
2. Character-level tokenizer (``dasd.models.make_char_tokenizer``), tied input/output
   embeddings, no dropout, fp32 (bf16 is slower on CPUs).
3. AdamW with linear warmup and cosine decay; cross-entropy on response tokens and EOS only.
4. 25% privileged-format examples (the prototype of DESIGN.md section 5 used 40%): fewer cost
   the teacher little and gave the student more to learn from.
5. Batches are bucketed by length (shuffle, sort within pools of ``pool_batches`` batches,
   shuffle the batches) and right-padded, so training needs no attention mask; inference is
   left-padded with an attention mask and the same weights.
6. A fixed number of optimizer steps (not a time budget), so the weights depend on the seed
   only: bitwise equal on one machine (1 and 2 torch threads gave identical weights), not
   promised across CPUs or library versions.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import torch
from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the tiny model besides the seed and the task's data."""

    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 4
    """Number of decoder layers."""
    num_heads: int = 4
    """Attention heads (head dim = hidden_size / num_heads)."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention, as Qwen3)."""
    intermediate_size: int = 384
    """Width of the SwiGLU MLP."""
    max_positions: int = 512
    """Longest sequence (prompt + response) the model is built for."""
    task: str = "countdown"
    """Task (``dasd.tasks.get_task``) whose ``sft_examples`` supply the training pairs."""
    n_examples: int = 20_000
    """Number of (prompt, response) training pairs drawn from the task's train split."""
    privileged_fraction: float = 0.25
    """Share of pairs in the privileged-teacher format (r in the prompt)."""
    steps: int = 5_200
    """Optimizer steps."""
    batch_size: int = 8
    """Sequences per step."""
    lr: float = 2e-3
    """Peak learning rate."""
    warmup_steps: int = 300
    """Linear warmup steps before cosine decay to ``min_lr_ratio * lr``."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr``."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (not on norms)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    pool_batches: int = 32
    """Batches per length-bucketing pool."""

    def __post_init__(self) -> None:
        positive = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                    "max_positions", "n_examples", "steps", "batch_size", "pool_batches")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TinyRecipe.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"TinyRecipe.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"TinyRecipe.num_heads ({self.num_heads}) must be divisible by "
                             f"num_kv_heads ({self.num_kv_heads})")
        if not 0.0 <= self.privileged_fraction <= 1.0:
            raise ValueError(f"TinyRecipe.privileged_fraction must be in [0, 1], "
                             f"got {self.privileged_fraction}")
        if not (self.lr > 0 and 0 <= self.warmup_steps and 0 <= self.min_lr_ratio <= 1):
            raise ValueError("TinyRecipe needs lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1")

    @classmethod
    def fast(cls) -> TinyRecipe:
        """A drastically reduced recipe (seconds to build) for tests; not a useful model."""
        return cls(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                   intermediate_size=64, n_examples=64, steps=4, batch_size=8, warmup_steps=1,
                   pool_batches=2)

    def fingerprint(self, *extra: str) -> str:
        """12 hex digits identifying this recipe plus ``extra`` strings (tokenizer, data)."""
        blob = json.dumps([asdict(self), *extra], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def qwen3_config(recipe: TinyRecipe, tokenizer: PreTrainedTokenizerBase) -> Qwen3Config:
    """The Qwen3 architecture config of the tiny model."""
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        head_dim=recipe.hidden_size // recipe.num_heads,
        max_position_embeddings=recipe.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def encode_pairs(
    pairs: Sequence[tuple[str, str]], tokenizer: PreTrainedTokenizerBase, *, max_positions: int
) -> list[tuple[list[int], int]]:
    """Token ids of ``prompt + response + EOS`` and the prompt length, one per pair."""
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"]
    encoded = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids = [*p, *r, tokenizer.eos_token_id]
        if len(ids) > max_positions:
            raise ValueError(f"training pair {i} is {len(ids)} tokens, over the recipe's "
                             f"max_positions={max_positions}; raise TinyRecipe.max_positions")
        encoded.append((ids, len(p)))
    return encoded


def batch_order(lengths: Sequence[int], *, steps: int, batch_size: int, pool_batches: int,
                seed: int) -> list[list[int]]:
    """``steps`` batches of example indices, length-bucketed, deterministic in ``seed``.

    Each epoch shuffles all indices, sorts pools of ``pool_batches * batch_size`` by length,
    cuts them into batches and shuffles the batches; epochs repeat until ``steps`` batches.
    """
    rng = random.Random(seed)
    n = len(lengths)
    pool = pool_batches * batch_size
    order: list[list[int]] = []
    while len(order) < steps:
        idx = list(range(n))
        rng.shuffle(idx)
        epoch = []
        for start in range(0, n, pool):
            chunk = sorted(idx[start:start + pool], key=lambda i: lengths[i])
            epoch += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
        rng.shuffle(epoch)
        order += epoch
    return order[:steps]


def collate(examples: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``labels`` (``IGNORE_INDEX`` on prompt and padding)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(examples):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, n_prompt:len(ids)] = input_ids[row, n_prompt:len(ids)]
    return input_ids, labels


def lr_at(step: int, recipe: TinyRecipe) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup, then cosine decay."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    span = max(1, recipe.steps - recipe.warmup_steps)
    progress = min(1.0, (step - recipe.warmup_steps) / span)
    floor = recipe.min_lr_ratio
    return recipe.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    model: Qwen3ForCausalLM,
    encoded: Sequence[tuple[list[int], int]],
    recipe: TinyRecipe,
    *,
    seed: int,
    pad_id: int,
    on_step: Callable[[int, float], None],
) -> list[float]:
    """Supervised training of ``model`` in place; returns the loss of every step.

    ``on_step(step, loss)`` is called after each optimizer step (for a progress bar).
    """
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr, betas=(0.9, 0.95),
    )
    batches = batch_order([len(ids) for ids, _ in encoded], steps=recipe.steps,
                          batch_size=recipe.batch_size, pool_batches=recipe.pool_batches,
                          seed=seed)
    model.train()
    losses = []
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe)
        input_ids, labels = collate([encoded[i] for i in batch], pad_id)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        on_step(step, losses[-1])
    model.eval()
    return losses
