"""Throughput of the KV-cache rollout engine and of student/teacher scoring.

Measures, in one run on the same prompts (countdown problems) and settings (temperature 1.0,
top-p 0.9, as the paper's evaluation, appendix F):

- ``dasd.rollout.generate`` vs ``model.generate`` (HF, ``do_sample=True``, top-k off): new
  response tokens per second (EOS counted, padding not);
- ``dasd.scoring.score_responses`` on the sampled responses, student and privileged-teacher
  contexts: scored response tokens per second (each token scored in both contexts).

Each engine runs ``--repeats`` times, interleaved, and its best run counts. Most of the
engine's lead over ``model.generate`` comes from dropping finished rows from the batch
(``dasd.rollout.hf``, departure 2), which ``model.generate`` does not do.

Run from the repository root: ``.venv/bin/python -m benchmarks.bench_rollout --model random``.
On a CPU shared with other jobs, set ``OMP_WAIT_POLICY=PASSIVE`` (or ``--threads 1``):
busy-waiting OpenMP threads otherwise slow small models by one to two orders of magnitude.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dasd.models import load_model, make_char_tokenizer
from dasd.rollout import Rollouts, generate
from dasd.rollout.hf import encode_prompts, stop_token_ids
from dasd.scoring import score_rollouts
from dasd.tasks.countdown import CountdownTask
from tests.fixtures_models import random_qwen3


def random_model(seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random Qwen3 of about 1M parameters (hidden 128, 4 layers) over the char tokenizer."""
    tokenizer = make_char_tokenizer()
    model = random_qwen3(tokenizer, seed=seed, hidden_size=128, intermediate_size=512,
                         num_hidden_layers=4, max_position_embeddings=1024)
    return model, tokenizer


def engine_parser(description: str) -> argparse.ArgumentParser:
    """The options of the engine benchmarks (this one and ``bench_lockstep``): model, prompts,
    response length, batch, threads, seed and timed rounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", choices=["random", "tiny"], default="random")
    parser.add_argument("--prompts", type=int, default=64, help="number of prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine; the best counts")
    return parser


def engine_model(args: argparse.Namespace) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The benchmarked model (``--model``: ``random_model(--seed)`` or ``tiny``), with torch
    limited to ``--threads`` threads."""
    torch.set_num_threads(args.threads)
    return random_model(args.seed) if args.model == "random" else load_model("tiny")


def hf_new_tokens(sequences: torch.Tensor, prompt_width: int, eos: list[int]) -> int:
    """Tokens ``model.generate`` emitted per row up to and including the first EOS."""
    new = sequences[:, prompt_width:]
    is_eos = torch.isin(new, torch.tensor(eos))
    before_or_at_eos = (is_eos.long().cumsum(-1) - is_eos.long()) == 0
    return int(before_or_at_eos.sum())


def best_of(engines: Mapping[str, Callable[[], int]], repeats: int) -> dict[str, tuple[int, float]]:
    """Per engine, the ``(tokens, seconds)`` of its fastest call (tokens per second) over
    ``repeats`` rounds; the rounds interleave the engines, as the machine may be shared."""
    best = {name: (0, float("inf")) for name in engines}
    for _ in range(repeats):
        for name, fn in engines.items():
            start = time.perf_counter()
            tokens = fn()
            seconds = time.perf_counter() - start
            if tokens / seconds > best[name][0] / best[name][1]:
                best[name] = (tokens, seconds)
    return best


def settings_line(args: argparse.Namespace, model: PreTrainedModel, extra: str = "") -> str:
    """The measured setting: model and size, prompts, batch, length, sampling, threads,
    ``extra`` and the number of rounds."""
    n_params = sum(p.numel() for p in model.parameters())
    return (f"model={args.model} ({n_params / 1e6:.2f}M params)  prompts={args.prompts}  "
            f"batch={args.batch_size}  max_new_tokens={args.max_new_tokens}  T=1.0 top_p=0.9  "
            f"threads={args.threads}  {extra}best of {args.repeats}")


def main() -> None:
    args = engine_parser(__doc__.splitlines()[0]).parse_args()
    model, tokenizer = engine_model(args)
    task = CountdownTask()
    problems = task.sample(args.prompts, seed=args.seed)
    prompts = [task.student_prompt(p) for p in problems]
    teacher_prompts = [task.teacher_prompt(p) for p in problems]
    sampling = {"temperature": 1.0, "top_p": 0.9}
    eos = stop_token_ids(model, tokenizer)

    def sample() -> Rollouts:
        return generate(
            model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            generator=torch.Generator().manual_seed(args.seed), **sampling,
        )

    def ours() -> int:
        return int(sample().response_mask.sum())

    def hf() -> int:
        ids, mask = encode_prompts(tokenizer, prompts)
        torch.manual_seed(args.seed)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask.long(), do_sample=True, top_k=0,
                max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling,
            )
        return hf_new_tokens(out, ids.shape[1], eos)

    rollouts = sample()  # also the warm-up of our engine

    def score() -> int:
        score_rollouts(model, tokenizer, rollouts, teacher_prompts)
        return int(rollouts.response_mask.sum())

    engines = {"dasd generate": ours, "HF model.generate": hf, "score_responses (student+teacher)": score}
    hf()
    score()
    best = best_of(engines, args.repeats)
    print(settings_line(args, model))
    print(f"{'engine':<36}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}")
    for name, (tokens, seconds) in best.items():
        print(f"{name:<36}{tokens:>8}{seconds:>10.2f}{tokens / seconds:>11.0f}")
    ours_tps, hf_tps = (best[k][0] / best[k][1] for k in ("dasd generate", "HF model.generate"))
    print(f"rollout speed-up, dasd generate / HF model.generate: {ours_tps / hf_tps:.2f}x")


if __name__ == "__main__":
    main()
