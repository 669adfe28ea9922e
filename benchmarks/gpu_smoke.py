"""The real-model path on one device, end to end, in minutes: a smoke test with measurements.

    python -m benchmarks.gpu_smoke [--size tiny|1.7b] [--out FILE.json]

Builds a randomly initialised Qwen3 (no download) and a synthetic tokenizer, then runs the
project's own code on it and prints one table (and writes it as JSON with ``--out``):

a. ``update``: one full update of ``dasd.trainer.Trainer`` (HF engine, method ``dasd``,
   2 prompts x 2 samples, gradient checkpointing): rollout, student and teacher scoring, PPO
   and AdamW; its own phase timers, peak device memory.
b. ``ppo m=1`` / ``ppo m=2``: the trainer's PPO step (``Trainer._ppo``: forward, chunked
   log-prob, clipped loss, backward, gradient clip, one AdamW step) on 2 responses of the long
   length, in micro-batches of 1 and of 2; peak device memory.
c. ``score fp32`` / ``score bf16``: ``dasd.scoring.score_responses`` over the same 2 long
   responses (one response per forward pass) with the float32 policy and a bf16 copy: time,
   tokens/s, peak memory above what was allocated before; ``|dlogp|`` is the mean
   |log p_bf16 - log p_fp32| over the tokens (the precision the issue's defect 2 is about).
d. ``padding fp32`` / ``padding bf16``: the same prompt and response scored alone and in a
   batch where it is left-padded by 57 tokens: max |delta log p| (0 up to rounding when the
   device's attention and the position ids ignore padding).
e. ``generate``: ``dasd.rollout.generate`` (the HF engine) with the policy, many prompts at
   once, temperature 1: new tokens/s.

Sizes (``--size``):

============  ==========================================  =====================================
              ``1.7b`` (Qwen3-1.7B's shape)               ``tiny`` (CI, CPU, seconds)
============  ==========================================  =====================================
model         28 layers, hidden 2048, 16/8 heads,         2 layers, hidden 64, 4/2 heads,
              head_dim 128, MLP 6144, vocab 151,936,      head_dim 16, MLP 128, vocab 1,024,
              tied embeddings                             tied embeddings
a. update     2 x 2 x 256 new tokens                      2 x 2 x 16
b, c. long    2 responses x 8,192 tokens                  2 x 256
d. padding    response of 512 tokens, 57 pad tokens       32 tokens, 57 pad tokens
e. generate   16 prompts x 1,024 new tokens               4 x 32
============  ==========================================  =====================================

What it is and is not:

- The weights are random, so nothing here says anything about learning; a random model rarely
  emits EOS, so every response runs to its limit (the lengths above are the real ones). The
  update's rewards are the parity of each response's length in characters (the Countdown
  verifier would score every random response 0 and leave nothing to update).
- Memory is ``torch.cuda.max_memory_allocated`` (reset before each part) on CUDA; on the CPU
  it is not measured (``-``). Times are wall seconds with ``torch.cuda.synchronize``; one run
  each, no warm-up beyond the first part's. A part that runs out of device memory is recorded
  as ``OOM`` and the rest still run.
- The policy is the trainer's (``param_dtype`` float32 master weights, the trainer's defaults
  for everything not named here).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import transformers  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from dasd.models import CHARSET, make_char_tokenizer  # noqa: E402
from dasd.rollout import generate  # noqa: E402
from dasd.rollout.hf import encode_prompts  # noqa: E402
from dasd.scoring import score_responses  # noqa: E402
from dasd.tasks.base import Problem  # noqa: E402
from dasd.trainer import TrainConfig, Trainer, _Batch  # noqa: E402

PAD_TOKENS = 57


@dataclass(frozen=True)
class Size:
    """A model shape and the token counts of each part."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    update_tokens: int
    long_tokens: int
    padding_tokens: int
    generate_prompts: int
    generate_tokens: int


SIZES = {
    "1.7b": Size(28, 2048, 16, 8, 128, 6144, 151_936, 256, 8192, 512, 16, 1024),
    "tiny": Size(2, 64, 4, 2, 16, 128, 1024, 16, 256, 32, 4, 32),
}


def synthetic_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """The built-in character tokenizer (``dasd.models.make_char_tokenizer``) grown to ``vocab``
    tokens with further single characters (CJK code points upward, surrogates skipped), so
    that every id the model can sample decodes; prompts still encode character by character."""
    extra = vocab - len(make_char_tokenizer())
    points = (c for c in range(0x4E00, 0x110000) if not 0xD800 <= c <= 0xDFFF)
    chars = "".join(chr(next(points)) for _ in range(extra))
    tokenizer = make_char_tokenizer(CHARSET + chars)
    if len(tokenizer) != vocab:
        raise RuntimeError(f"synthetic tokenizer has {len(tokenizer)} tokens, wanted {vocab}")
    return tokenizer


def random_qwen3(size: Size, tokenizer: PreTrainedTokenizerFast, device: str) -> Qwen3ForCausalLM:
    """A random-init Qwen3 of ``size``'s shape, built directly on ``device`` (seed 0)."""
    config = Qwen3Config(
        vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads, head_dim=size.head_dim,
        max_position_embeddings=40_960, rope_theta=1_000_000.0, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen3ForCausalLM(config).eval()


class LengthParityTask:
    """The trainer's task with a reward a random model earns half the time: 1 when the
    response has an even number of characters (module docstring)."""

    def __init__(self, task: Any) -> None:
        self._task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def reward(self, problem: Problem, response: str) -> float:
        return float(len(response) % 2 == 0)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _measure(fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``fn``; its result and ``seconds``, ``peak_gib`` (peak allocated device memory
    during the call) and ``extra_gib`` (that peak above what was allocated before), or
    ``error: "OOM"`` when the device ran out of memory."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    _sync()
    start = time.perf_counter()
    try:
        result = fn()
    except torch.cuda.OutOfMemoryError:
        return None, {"error": "OOM"}
    _sync()
    stats: dict[str, Any] = {"seconds": time.perf_counter() - start}
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        stats |= {"peak_gib": peak / 2**30, "extra_gib": (peak - before) / 2**30}
    return result, stats


def _long_batch(size: Size, vocab: int, prompt: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """2 responses of ``size.long_tokens`` random tokens after ``prompt (P,)``: prompt ids and
    mask ``(2, P)``, response ids and mask ``(2, T)`` (no pad or EOS id inside)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, size.long_tokens), generator=g)
    prompts = prompt.expand(2, -1).clone()
    return prompts, torch.ones_like(prompts, dtype=torch.bool), ids, torch.ones_like(ids, dtype=torch.bool)


def run(size_name: str, work_dir: Path) -> dict[str, Any]:
    """Every part at ``size_name``; the JSON record (module docstring)."""
    size = SIZES[size_name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    tokenizer = synthetic_tokenizer(size.vocab)
    model = random_qwen3(size, tokenizer, device)
    model.to(torch.bfloat16).save_pretrained(work_dir / "model")
    tokenizer.save_pretrained(work_dir / "model")
    del model
    parts: dict[str, dict[str, Any]] = {}

    cfg = TrainConfig(
        method="dasd", model=str(work_dir / "model"), steps=1, prompts_per_step=2, group_size=2,
        mini_batch_size=4, micro_batch_size=2, max_new_tokens=size.update_tokens, lr=3e-6,
        eval_prompts=1, eval_k=1, gradient_checkpointing=True,
    )
    trainer = Trainer.start(cfg, work_dir / "run")
    trainer.task = LengthParityTask(trainer.task)
    metrics, stats = _measure(lambda: trainer.update(1))
    if metrics is not None:
        stats |= {key.split("/")[1]: metrics[key] for key in
                  ("time/rollout_s", "time/score_s", "time/update_s")}
        stats["tokens"] = int(round(metrics["train/length_tokens"] * 4))
        stats["tokens_per_s"] = stats["tokens"] / stats["seconds"]
    parts["update"] = stats

    model = trainer.model
    prompt = encode_prompts(tokenizer, [trainer.task.student_prompt(
        trainer.task.sample(1, split="eval", seed=0)[0])])[0][0]
    p_ids, p_mask, r_ids, r_mask = _long_batch(size, size.vocab, prompt)
    long_tokens = int(r_mask.sum())
    old_logp = None
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    for label, policy in (("score fp32", model), ("score bf16", bf16)):
        scores, stats = _measure(lambda policy=policy: score_responses(
            policy, r_ids, r_mask, p_ids, p_mask, batch_size=1))
        if scores is not None:
            stats |= {"tokens": long_tokens, "tokens_per_s": long_tokens / stats["seconds"]}
            if old_logp is None:
                old_logp = scores.student_logp
            else:
                stats["mean_abs_dlogp"] = float((scores.student_logp - old_logp).abs().mean())
        parts[label] = stats

    for label, policy in (("padding fp32", model), ("padding bf16", bf16)):
        parts[label] = _padding_check(policy, tokenizer, prompt, size)
    del bf16

    if old_logp is not None:
        advantages = torch.where(torch.arange(2)[:, None] == 0, 1.0, -1.0).expand(2, long_tokens)
        batch = _Batch(p_ids, p_mask, r_ids, r_mask, old_logp.cpu(), advantages.clone(),
                       None, None)
        for micro in (1, 2):
            trainer.cfg = replace(trainer.cfg, mini_batch_size=2, micro_batch_size=micro)
            losses, stats = _measure(lambda: trainer._ppo(batch, 1))
            if losses is not None:
                stats |= {"tokens": long_tokens, "tokens_per_s": long_tokens / stats["seconds"],
                          "grad_norm": losses["optim/grad_norm"]}
            parts[f"ppo m={micro}"] = stats

    prompts = [trainer.task.student_prompt(p) for p in
               trainer.task.sample(size.generate_prompts, split="train", seed=1)]
    rollouts, stats = _measure(lambda: generate(
        model, tokenizer, prompts, max_new_tokens=size.generate_tokens,
        batch_size=size.generate_prompts, generator=torch.Generator().manual_seed(0)))
    if rollouts is not None:
        new = int(rollouts.response_mask.sum())
        stats |= {"tokens": new, "tokens_per_s": new / stats["seconds"]}
    parts["generate"] = stats

    return {
        "size": size_name, "shape": size.__dict__, "device": _device_name(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "parts": parts,
        "wall_s": time.perf_counter() - started,
    }


def _padding_check(model: Any, tokenizer: Any, prompt: torch.Tensor, size: Size) -> dict[str, Any]:
    """Max |delta log p| of one response scored alone and left-padded by ``PAD_TOKENS`` in a
    batch whose other prompt is ``PAD_TOKENS`` tokens longer."""
    g = torch.Generator().manual_seed(2)
    response = torch.randint(3, size.vocab, (1, size.padding_tokens), generator=g)
    longer = torch.cat([torch.randint(3, size.vocab, (PAD_TOKENS,), generator=g), prompt])
    pad = torch.full((PAD_TOKENS,), tokenizer.pad_token_id)
    p_ids = torch.stack([torch.cat([pad, prompt]), longer])
    p_mask = torch.stack([torch.cat([torch.zeros(PAD_TOKENS, dtype=torch.bool),
                                     torch.ones_like(prompt, dtype=torch.bool)]),
                          torch.ones_like(longer, dtype=torch.bool)])
    r_ids = response.expand(2, -1).clone()
    r_mask = torch.ones_like(r_ids, dtype=torch.bool)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        alone = score_responses(model, r_ids[:1], r_mask[:1], prompt[None],
                                torch.ones_like(prompt[None], dtype=torch.bool), batch_size=1)
        padded = score_responses(model, r_ids, r_mask, p_ids, p_mask, batch_size=2)
        return alone.student_logp[0], padded.student_logp[0]

    pair, stats = _measure(both)
    if pair is not None:
        stats |= {"pad_tokens": PAD_TOKENS, "tokens": size.padding_tokens,
                  "max_abs_dlogp": float((pair[0] - pair[1]).abs().max())}
    return stats


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


COLUMNS = (("seconds", "s", "{:.2f}"), ("tokens", "tokens", "{:,}"),
           ("tokens_per_s", "tok/s", "{:,.0f}"), ("peak_gib", "peak GiB", "{:.2f}"),
           ("extra_gib", "extra GiB", "{:.2f}"), ("rollout_s", "rollout s", "{:.2f}"),
           ("score_s", "score s", "{:.2f}"), ("update_s", "update s", "{:.2f}"),
           ("mean_abs_dlogp", "mean |dlogp|", "{:.2e}"), ("max_abs_dlogp", "max |dlogp|", "{:.2e}"))


def render(record: dict[str, Any]) -> Table:
    """The record as one table: a row per part, a column per figure some part has, ``-`` where
    a figure does not apply."""
    parts = record["parts"]
    columns = [c for c in COLUMNS if any(c[0] in stats for stats in parts.values())]
    table = Table(title=f"gpu_smoke --size {record['size']} on {record['device']} "
                        f"({record['wall_s']:.0f} s)")
    table.add_column("part", no_wrap=True)
    for _, header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for name, stats in parts.items():
        cells = [fmt.format(stats[key]) if key in stats else "-" for key, _, fmt in columns]
        if "error" in stats:
            cells = [stats["error"], *["-"] * (len(columns) - 1)]
        table.add_row(name, *cells)
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1.7b")
    parser.add_argument("--out", type=Path, default=None, help="write the record as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dasd-gpu-smoke-") as tmp:
        record = run(args.size, Path(tmp))
    Console(width=200).print(render(record))
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
