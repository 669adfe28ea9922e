"""The figures of docs/control-worlds.md for one model: ``python scripts/world_stats.py MODEL``.

On 64 held-out Countdown problems x 4 samples (seed 0), prints as JSON:

* ``student`` / ``teacher``: Avg@4 and StepAcc of the student (prompt x) and of the privileged
  teacher writing its own response (prompt x + r), temperature 1, top-p 0.9;
* ``top_p_1``: on student samples at top-p 1, the median |δ_t| = |log q − log p| of the sampled
  token on tokens below / at or above their trajectory's median entropy, entropy quantiles and
  the share of tokens below 0.01 nats (the probes' scoring: ``dasd.evaluation``);
* ``mult_last_digit``: at the last digit of every ``a*b=c`` step of those samples (the digit
  ``tiny-planted`` slips), the share slipped (one above the right digit, mod 10), the median
  student entropy, the share below the trajectory median and below the running median, and
  the teacher's probability of the right digit at the response's first ``*`` step and at later
  ones. A diagnostic of the control worlds, not a probe.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import torch

from dasd.evaluation import sample_rollout_rows
from dasd.models import load_model
from dasd.tasks import build_task

MULT = re.compile(r"(\d+)\*(\d+)=(\d+)\n")


class _TeacherView:
    """The task with the teacher prompt as the prompt, to sample the teacher itself."""

    def __init__(self, task: object) -> None:
        self._task = task

    def __getattr__(self, name: str) -> object:
        return getattr(self._task, name)

    def student_prompt(self, problem: object) -> str:
        return self._task.teacher_prompt(problem)


def _slipped(match: re.Match) -> tuple[bool, str]:
    right = str(int(match.group(1)) * int(match.group(2)))
    slip = right[:-1] + str((int(right[-1]) + 1) % 10)
    return match.group(3) == slip, right[-1]


def main(name: str) -> dict:
    model, tok = load_model(name)
    task = build_task("countdown", tokenizer=tok)
    problems = task.sample(64, split="eval", seed=0)
    out: dict = {"model": name}

    def sample(view: object, top_p: float, teacher: bool):
        return sample_rollout_rows(model, tok, view, problems, k=4, step=0, split="eval",
                                   max_new_tokens=160, top_p=top_p, teacher=teacher,
                                   generator=torch.Generator().manual_seed(0))

    for label, view in (("student", task), ("teacher", _TeacherView(task))):
        rows = sample(view, 0.9, False)
        out[label] = {"avg": float(rows["correct"].mean()),
                      "step_acc": float(np.mean([np.mean(s) for s in rows["step_correct"]
                                                 if len(s)]))}
    rows = sample(task, 1.0, True)
    low, high, entropies = [], [], []
    digits: dict[str, list] = {"H": [], "below_traj": [], "below_running": [], "slipped": []}
    q_right: dict[str, list[float]] = {"first": [], "later": []}
    for problem, response, h, ps, pt in zip(
            [p for p in problems for _ in range(4)], rows["response"], rows["entropy"],
            rows["student_logp"], rows["teacher_logp"]):
        h = np.asarray(h)
        gap = np.abs(np.asarray(pt) - np.asarray(ps))
        low.append(gap[h < np.median(h)])
        high.append(gap[h >= np.median(h)])
        entropies.append(h)
        matches = [m for m in MULT.finditer(response + "\n") if m.end(3) - 1 < len(h)]
        if not matches:
            continue
        context = task.teacher_prompt(problem)
        ids = tok(context + response, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            teacher = torch.log_softmax(model(ids).logits[0].float(), -1)
        for k, m in enumerate(matches):
            t = m.end(3) - 1
            slipped, right = _slipped(m)
            digits["H"].append(h[t])
            digits["below_traj"].append(h[t] < np.median(h))
            digits["below_running"].append(h[t] < np.median(h[: t + 1]))
            digits["slipped"].append(slipped)
            right_id = tok.convert_tokens_to_ids(right)
            q_right["first" if k == 0 else "later"].append(
                float(teacher[len(context) + t - 1, right_id].exp()))
    h = np.concatenate(entropies)
    out["top_p_1"] = {
        "avg": float(rows["correct"].mean()),
        "median_abs_delta_low": float(np.median(np.concatenate(low))),
        "median_abs_delta_high": float(np.median(np.concatenate(high))),
        "entropy_quantiles": {q: float(np.quantile(h, q)) for q in (0.1, 0.25, 0.5, 0.8, 0.9)},
        "share_below_0.01": float(np.mean(h < 0.01)),
        "n_tokens": int(h.size),
    }
    out["mult_last_digit"] = {
        "n": len(digits["H"]),
        "slipped": float(np.mean(digits["slipped"])),
        "median_entropy": float(np.median(digits["H"])),
        "below_trajectory_median": float(np.mean(digits["below_traj"])),
        "below_running_median": float(np.mean(digits["below_running"])),
        **{f"teacher_q_right_{k}_median": float(np.median(v)) for k, v in q_right.items() if v},
    }
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/world_stats.py MODEL (tiny, tiny-planted, ...)")
    print(json.dumps(main(sys.argv[1]), indent=1))
