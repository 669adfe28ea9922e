"""DASD inside TRL's GRPOTrainer on the built-in world (Countdown), one process or many.

    python examples/trl_dasd.py --model tiny --steps 20
    accelerate launch --num_processes 2 --cpu examples/trl_dasd.py --model PATH --steps 2
    accelerate launch --config_file zero2.yaml examples/trl_dasd.py --model Qwen/Qwen3-1.7B --bf16

Each step samples ``--prompts`` Countdown problems (across all processes) with ``--group-size``
completions each; the dataset carries the student prompt, the privileged teacher prompt (the
solver's reference solution r prepended, ``CountdownTask.teacher_prompt``), the gold answer and
the prompt id. TRL logs its completions table (with DASD's per-token columns) to
``OUTPUT_DIR/completions/``; ``--runs-dir`` converts it into a dasd run directory afterwards, so
``dasd-analyze health RUN --split train`` reads it. Needs ``pip install 'dasd[trl]'``.

Departures from the paper's setup (appendix F), for a CPU smoke run: the sizes are whatever the
options say (the paper: 128 prompts x 8 per update, lr 3e-6 on Qwen3-1.7B), and the reward is
Countdown's exact verifier.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from datasets import Dataset

from dasd.integrations.trl import DASDConfig, DASDGRPOTrainer
from dasd.models import load_model
from dasd.tasks import CountdownTask
from dasd.tasks.base import Problem


def countdown_dataset(task: CountdownTask, problems: list[Problem]) -> Dataset:
    """Rows with ``prompt`` (x), ``teacher_prompt`` (r then x), ``answer`` and ``prompt_id``."""
    return Dataset.from_list([
        {"prompt": task.student_prompt(p), "teacher_prompt": task.teacher_prompt(p),
         "answer": p.answer, "prompt_id": p.id}
        for p in problems
    ])


def countdown_reward(task: CountdownTask, problems: list[Problem]):
    """A TRL reward function: Countdown's verifier (1.0 iff the last answer line reaches the
    target), looked up by the dataset's ``prompt_id`` column."""
    by_id = {p.id: p for p in problems}

    def countdown_correct(completions: list[str], prompt_id: list[str], **_: object) -> list[float]:
        return [task.reward(by_id[pid], text) for pid, text in zip(prompt_id, completions)]

    return countdown_correct


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, a checkpoint directory or a hub id")
    parser.add_argument("--output-dir", type=Path, default=Path("trl-dasd-out"))
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="convert the completions log into a run directory here afterwards")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step, all processes")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt, G")
    parser.add_argument("--max-completion-length", type=int, default=96)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--method", default="dasd")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--rho", type=float, default=0.2)
    parser.add_argument("--direction", default=None, help="dasd direction map (default tanh)")
    parser.add_argument("--gate", default=None, help="dasd gate (default sigmoid)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = args.prompts * args.group_size
    if batch % world:
        raise SystemExit(f"error: prompts x group size ({batch}) must divide over {world} processes")
    task = CountdownTask()
    problems = task.sample(args.prompts * args.steps, split="train", seed=args.seed)
    model, tokenizer = load_model(args.model)
    config = DASDConfig(
        output_dir=str(args.output_dir),
        per_device_train_batch_size=batch // world,
        num_generations=args.group_size,
        max_completion_length=args.max_completion_length,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        bf16=args.bf16,
        gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=1,
        log_completions=True,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        dasd_method=args.method,
        dasd_beta=args.beta,
        dasd_rho=args.rho,
        dasd_direction=args.direction,
        dasd_gate=args.gate,
    )
    trainer = DASDGRPOTrainer(
        model=model,
        reward_funcs=countdown_reward(task, problems),
        args=config,
        train_dataset=countdown_dataset(task, problems),
        processing_class=tokenizer,
    )
    trainer.train()
    if args.runs_dir is not None and trainer.accelerator.is_main_process:
        from analysis.importers import import_trl

        run = import_trl(args.output_dir, args.runs_dir / f"trl-{args.output_dir.name}",
                         task="countdown", method=args.method, model=args.model)
        print(f"run directory: {run}")


if __name__ == "__main__":
    main()
