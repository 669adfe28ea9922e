"""Countdown train/val Parquet in verl's RL dataset format, for the DASD recipe.

    python examples/verl/prepare_data.py --out data/verl-countdown

One row per problem: ``data_source``, ``prompt`` (chat messages: an instruction, then the
student prompt x), ``ability``, ``reward_model`` (``ground_truth``: the reference answer
expression) and ``extra_info`` with ``index``, ``prompt_id`` (``cd-...``, which the importer and
the step judge read), ``numbers``, ``target`` (for ``countdown_reward.py``) and
``teacher_prompt`` (the same instruction, then r and x: ``CountdownTask.teacher_prompt``), which
``dasd.integrations.verl`` feeds to the privileged teacher.

Departure: the instruction line is ours; the tiny model of the built-in world reads the bare
prompt, a chat model needs the rules spelled out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dasd.tasks import CountdownTask

INSTRUCTION = ("Reach the target with + - * / using each given number at most once. Write one "
               "step per line as 'a op b=c' and end with a line 'answer: <expression>'.\n\n")


def rows(task: CountdownTask, split: str, n: int, seed: int) -> list[dict]:
    out = []
    for i, problem in enumerate(task.sample(n, split=split, seed=seed)):
        out.append({
            "data_source": "dasd/countdown",
            "prompt": [{"role": "user", "content": INSTRUCTION + task.student_prompt(problem)}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": problem.answer},
            "extra_info": {
                "index": i, "split": split, "prompt_id": problem.id,
                "numbers": list(problem.meta["numbers"]), "target": problem.meta["target"],
                "teacher_prompt": [{"role": "user",
                                    "content": INSTRUCTION + task.teacher_prompt(problem)}],
            },
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/verl-countdown"))
    parser.add_argument("--train", type=int, default=2048, help="training problems")
    parser.add_argument("--val", type=int, default=128, help="validation problems")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    task = CountdownTask()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, n, name in (("train", args.train, "train"), ("eval", args.val, "val")):
        pd.DataFrame(rows(task, split, n, args.seed)).to_parquet(args.out / f"{name}.parquet")
        print(f"wrote {n} rows to {args.out / f'{name}.parquet'}")


if __name__ == "__main__":
    main()
