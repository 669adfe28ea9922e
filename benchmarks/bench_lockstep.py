"""Throughput of the dual-context lockstep decoder (``dasd.rollout.lockstep``, Probe 3).

On the same Countdown prompts and settings (temperature 1.0, top-p 0.9), compares:

- ``lockstep``: one decode that advances the student context x and the teacher context x + r
  together (two forward passes per step, one per KV cache), without intervention;
- ``lockstep + Novelty (high)``: the same with Probe 3's Novelty intervention in the high-H_t
  bucket (adds the running median and the interventional distribution);
- ``two generations``: ``dasd.rollout.generate`` on the student prompts, then on the teacher
  prompts: the same number of forward passes, but each context follows its own tokens, so no
  step has both distributions for one prefix;
- ``generate + score teacher``: student rollouts, then one teacher forward pass over them
  (``dasd.scoring``): both distributions on the student's tokens, but only after the fact, so it
  cannot intervene while decoding.

Work is counted in context-tokens: a response token decoded (or scored) in one context counts
once, in both contexts twice; ``ratio`` is each engine's context-tokens/s over that of the two
generations. By default no row stops early (the stop token is replaced by an id outside the
model's vocabulary), so every engine decodes ``--max-new-tokens`` steps for every row: with EOS,
the teacher's own generation has other lengths than the student's, and on a small model the
time of a decode follows its number of steps more than its number of tokens.
Each engine runs ``--repeats`` times, interleaved, and its best run counts.

Run from the repository root: ``.venv/bin/python -m benchmarks.bench_lockstep``. On a CPU shared
with other jobs set ``OMP_WAIT_POLICY=PASSIVE``: busy-waiting OpenMP threads otherwise slow
small models by one to two orders of magnitude.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from benchmarks.bench_rollout import best_of, engine_model, engine_parser, settings_line
from dasd.rollout import generate
from dasd.rollout.lockstep import Intervention, lockstep_generate
from dasd.scoring import score_rollouts
from dasd.tasks.countdown import CountdownTask


def never_stop(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the stop token an id the model cannot emit (one past its vocabulary)."""
    tokenizer.add_special_tokens({"eos_token": "<never>"})
    if tokenizer.eos_token_id < model.config.vocab_size:
        raise ValueError("the model's vocabulary is padded beyond the tokenizer; use --stop-at-eos")
    model.generation_config.eos_token_id = tokenizer.eos_token_id


def main() -> None:
    parser = engine_parser(__doc__.splitlines()[0])
    parser.add_argument("--stop-at-eos", action="store_true", help="let rows stop at EOS")
    args = parser.parse_args()
    model, tokenizer = engine_model(args)
    if not args.stop_at_eos:
        never_stop(model, tokenizer)
    task = CountdownTask()
    problems = task.sample(args.prompts, split="eval", seed=args.seed)
    prompts = [task.student_prompt(p) for p in problems]
    teacher_prompts = [task.teacher_prompt(p) for p in problems]
    settings = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                "temperature": 1.0, "top_p": 0.9}

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(args.seed)

    def lockstep(intervention: Intervention | None) -> Callable[[], int]:
        def run() -> int:
            out = lockstep_generate(model, tokenizer, prompts, teacher_prompts,
                                    intervention=intervention, generator=seeded(), **settings)
            return 2 * int(out.rollouts.response_mask.sum())
        return run

    def two_generations() -> int:
        student = generate(model, tokenizer, prompts, generator=seeded(), **settings)
        teacher = generate(model, tokenizer, teacher_prompts, generator=seeded(), **settings)
        return int(student.response_mask.sum() + teacher.response_mask.sum())

    def generate_and_score() -> int:
        rollouts = generate(model, tokenizer, prompts, generator=seeded(), **settings)
        score_rollouts(model, tokenizer, rollouts, teacher_prompts)
        return 2 * int(rollouts.response_mask.sum())

    engines: dict[str, Callable[[], int]] = {
        "two generations (x, then x + r)": two_generations,
        "lockstep (x and x + r)": lockstep(None),
        "lockstep + Novelty (high bucket)": lockstep(Intervention("high", "novelty")),
        "generate + score teacher": generate_and_score,
    }
    for fn in engines.values():  # warm-up
        fn()
    best = best_of(engines, args.repeats)
    print(settings_line(args, model, f"stop at EOS: {args.stop_at_eos}  "))
    reference = best["two generations (x, then x + r)"]
    print(f"{'engine':<36}{'ctx-tokens':>11}{'seconds':>9}{'ctx-tok/s':>11}{'ratio':>7}")
    for name, (tokens, seconds) in best.items():
        ratio = (tokens / seconds) / (reference[0] / reference[1])
        print(f"{name:<36}{tokens:>11}{seconds:>9.2f}{tokens / seconds:>11.0f}{ratio:>7.2f}")


if __name__ == "__main__":
    main()
