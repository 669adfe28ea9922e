"""Step judges for StepAcc / FES / CSR on real math, scored on ProcessBench (DESIGN.md section 6;
paper appendix F "Reasoning-health metrics", ProcessBench [23]).

A step judge says which steps of a solution are correct: ``judge(problem, steps) ->
list[bool]``. On Countdown every step is checkable (``dasd.tasks.countdown``); on real math a
model judges:

* :class:`PRMJudge`: a process reward model with a two-class head over the tokens, such as
  Qwen2.5-Math-PRM-7B. The steps are joined with its separator token (``<extra_0>``), each
  followed by one; a step is correct iff the positive-class probability at its separator is
  above ``threshold`` (0.5). The prompt is the PRM's chat template over (system, problem,
  steps), as its model card does.
* :class:`CriticJudge`: a generative model prompted with ProcessBench's critique template (the
  solution's paragraphs tagged ``<paragraph_i>`` and indexed from 0) for the index of the
  earliest wrong paragraph in ``\\boxed{}`` (-1: none), decoded greedily.
* :class:`OracleJudge` (ProcessBench's own labels) and :class:`ConstantJudge` (every step
  correct): references for the score.

ProcessBench's metric (:func:`processbench_score`): on the erroneous rows (label >= 0) the
accuracy of the predicted earliest-error index, on the correct rows (label -1) the share
predicted -1, and F1 = their harmonic mean.

Choices and departures:

1. A judge's predicted earliest error is the index of its first False verdict (-1 if none). The
   critic only names the earliest error: it judges the steps before it correct and the rest
   wrong; a critique without a valid index (no ``\\boxed{k}``, or k out of range) judges every
   step wrong, and counts as a wrong prediction on both subsets, as in ProcessBench.
2. The PRM reads no more than what fits its context: inputs are not truncated, so a response
   longer than the PRM's position limit is judged with degraded positions (Qwen2.5-Math-PRM-7B:
   4,096 tokens), not cut.
3. A PRM checkpoint with its own modeling code (Qwen2.5-Math-PRM's ``auto_map``) is loaded
   only with ``trust_remote_code=True``; others load as ``AutoModelForTokenClassification`` with
   two labels.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from dasd.models import load_model
from dasd.registry import Registry
from dasd.rollout import generate
from dasd.tasks.math import default_data_dir
from dasd.verify import last_boxed

__all__ = [
    "JUDGES",
    "PROCESSBENCH_SUBSETS",
    "PROCESSBENCH_TEMPLATE",
    "QWEN_PRM_SYSTEM",
    "ConstantJudge",
    "CriticJudge",
    "JudgeEvaluation",
    "JudgeOptions",
    "OracleJudge",
    "PRMJudge",
    "ProcessBenchRow",
    "ProcessBenchScore",
    "StepJudge",
    "build_judge",
    "evaluate_judge",
    "first_error",
    "load_processbench",
    "predict_first_errors",
    "processbench_score",
    "verdicts_from_first_error",
]

PROCESSBENCH_SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")
#: ProcessBench's critique prompt (QwenLM/ProcessBench ``code/templates/critique_template.txt``).
PROCESSBENCH_TEMPLATE = (
    "The following is a math problem and a solution (split into paragraphs, enclosed with tags "
    "and indexed from 0):\n\n[Math Problem]\n\n{problem}\n\n[Solution]\n\n{tagged_response}\n\n"
    "Your task is to review and critique the solution paragraph by paragraph. Once you identify "
    "an error in a paragraph, return the index of the paragraph where the earliest error occurs. "
    'Otherwise, return the index of -1 (which typically denotes "not found").\n\n'
    "Please put your final answer (i.e., the index) in \\boxed{{}}."
)
#: The system message of Qwen2.5-Math-PRM's model-card usage.
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@runtime_checkable
class StepJudge(Protocol):
    """Judges the steps of a solution: one verdict per step, True = correct."""

    name: str

    def judge(self, problem: str, steps: Sequence[str]) -> list[bool]:
        """Correctness of each of ``steps`` (same length and order)."""
        ...


def first_error(verdicts: Sequence[bool]) -> int:
    """Index of the first False verdict; -1 if every step is judged correct."""
    return next((i for i, ok in enumerate(verdicts) if not ok), -1)


def verdicts_from_first_error(index: int | None, n_steps: int) -> list[bool]:
    """Verdicts of a judge that names only the earliest error (module docstring, rule 1):
    steps before ``index`` correct, the rest wrong; -1 all correct; None all wrong."""
    if index is None:
        return [False] * n_steps
    if index < 0:
        return [True] * n_steps
    return [i < index for i in range(n_steps)]


def predict_first_errors(
    judge: StepJudge, problems: Sequence[str], steps_lists: Sequence[Sequence[str]]
) -> list[int | None]:
    """The earliest-error index each problem's steps get from ``judge`` (None: no valid
    prediction). Uses the judge's batched ``first_errors`` where it has one."""
    batched = getattr(judge, "first_errors", None)
    if batched is not None:
        return list(batched(problems, steps_lists))
    return [first_error(judge.judge(p, s)) for p, s in zip(problems, steps_lists)]


class ConstantJudge:
    """Every step correct: predicts -1 everywhere, so it scores 0 on ProcessBench's erroneous
    subset, 1 on the correct one, and F1 = 0."""

    name = "constant-correct"

    def __repr__(self) -> str:
        return "ConstantJudge()"

    def judge(self, problem: str, steps: Sequence[str]) -> list[bool]:
        return [True] * len(steps)


@dataclass(frozen=True)
class ProcessBenchRow:
    """One ProcessBench solution: ``label`` is the earliest wrong step's index, -1 if none."""

    id: str
    subset: str
    problem: str
    steps: tuple[str, ...]
    label: int
    final_answer_correct: bool
    generator: str


class OracleJudge:
    """ProcessBench's own labels, looked up by (problem, steps): F1 = 1 by construction."""

    name = "oracle"

    def __init__(self, rows: Sequence[ProcessBenchRow]) -> None:
        self._labels = {(r.problem, r.steps): r.label for r in rows}

    def __repr__(self) -> str:
        return f"OracleJudge({len(self._labels)} labelled solutions)"

    def judge(self, problem: str, steps: Sequence[str]) -> list[bool]:
        key = (problem, tuple(steps))
        if key not in self._labels:
            raise ValueError(
                "oracle judge has no label for this solution; it only judges the "
                "ProcessBench rows it was built from"
            )
        return verdicts_from_first_error(self._labels[key], len(steps))


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class PRMJudge:
    """A process reward model as a step judge (module docstring).

    Args:
        model: returns ``(B, T, 2)`` logits as its first output (``outputs[0]``), class 1 =
            correct: ``AutoModelForTokenClassification`` with two labels, or Qwen2.5-Math-PRM.
        tokenizer: its tokenizer; ``separator`` must be one token of it.
        separator: the step separator token.
        system: the system message (used with a chat template).
        threshold: a step is correct iff its positive probability is above this.
        batch_size: solutions per forward pass (right-padded).
    """

    name = "prm"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        separator: str = "<extra_0>",
        system: str = QWEN_PRM_SYSTEM,
        threshold: float = 0.5,
        batch_size: int = 4,
    ) -> None:
        ids = tokenizer.encode(separator, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"PRM tokenizer encodes the step separator {separator!r} as {len(ids)} tokens; "
                "pass the separator token the PRM was trained with (Qwen2.5-Math-PRM: <extra_0>)"
            )
        if not 0 < threshold < 1 or batch_size < 1:
            raise ValueError(
                f"PRM needs 0 < threshold < 1 and batch_size >= 1, got {threshold}, {batch_size}"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.separator = separator
        self.separator_id = ids[0]
        self.system = system
        self.threshold = threshold
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return (
            f"PRMJudge({type(self.model).__name__}, separator={self.separator!r}, "
            f"threshold={self.threshold})"
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, trust_remote_code: bool = False,
                        **kwargs: Any) -> PRMJudge:
        """Load a PRM checkpoint (module docstring, rule 3); ``kwargs`` go to the constructor."""
        config = AutoConfig.from_pretrained(path)
        architectures = getattr(config, "architectures", None) or []
        own_code = bool(getattr(config, "auto_map", None)) and not any(
            a.endswith("ForTokenClassification") for a in architectures
        )
        load_kw: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
        if own_code:
            if not trust_remote_code:
                raise ValueError(
                    f"PRM {path} ({', '.join(architectures) or 'custom'}) needs its own modeling "
                    "code; pass --trust-remote-code if you trust it"
                )
            model = AutoModel.from_pretrained(path, trust_remote_code=True, **load_kw)
        else:
            if getattr(config, "num_labels", None) != 2:
                raise ValueError(
                    f"PRM {path} has {getattr(config, 'num_labels', None)} labels; a PRM judge "
                    "needs a two-class (wrong, correct) token head"
                )
            model = AutoModelForTokenClassification.from_pretrained(path, **load_kw)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        return cls(model.to(device), tokenizer, **kwargs)

    def text(self, problem: str, steps: Sequence[str]) -> str:
        """The PRM's input: each step followed by the separator, in the chat template if any
        (separator text inside the problem or the steps is removed)."""
        problem = problem.replace(self.separator, "")
        body = "".join(s.replace(self.separator, "") + self.separator for s in steps)
        if getattr(self.tokenizer, "chat_template", None):
            messages = [
                {"role": "system", "content": self.system},
                {"role": "user", "content": problem},
                {"role": "assistant", "content": body},
            ]
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=False
            )
        return f"{self.system}\n\n{problem}\n\n{body}"

    @torch.inference_mode()
    def step_probabilities(
        self, problems: Sequence[str], steps_lists: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """The positive-class probability of each step, per solution."""
        out: list[list[float]] = [[] for _ in problems]
        todo = [i for i, steps in enumerate(steps_lists) if steps]
        device = _device_of(self.model)
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            encoded = [
                self.tokenizer.encode(
                    self.text(problems[i], steps_lists[i]), add_special_tokens=False
                )
                for i in batch
            ]
            width = max(len(e) for e in encoded)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, e in enumerate(encoded):
                ids[row, : len(e)] = torch.tensor(e)
                mask[row, : len(e)] = 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device))[0]
            if logits.dim() != 3 or logits.shape[-1] != 2:
                raise ValueError(
                    f"PRM output has shape {tuple(logits.shape)}; "
                    "a PRM judge needs (B, T, 2) logits"
                )
            positive = torch.softmax(logits.float(), dim=-1)[..., 1].cpu()
            at_separator = (ids == self.separator_id) & mask.bool()
            for row, i in enumerate(batch):
                probs = positive[row][at_separator[row]].tolist()
                if len(probs) != len(steps_lists[i]):
                    raise ValueError(
                        f"PRM input has {len(probs)} separator tokens for {len(steps_lists[i])} "
                        "steps; the separator must not be merged with neighbouring text"
                    )
                out[i] = probs
        return out

    def judge(self, problem: str, steps: Sequence[str]) -> list[bool]:
        return [p > self.threshold for p in self.step_probabilities([problem], [steps])[0]]

    def first_errors(
        self, problems: Sequence[str], steps_lists: Sequence[Sequence[str]]
    ) -> list[int | None]:
        """Earliest-error index per solution from one batched pass."""
        return [
            first_error([p > self.threshold for p in probs])
            for probs in self.step_probabilities(problems, steps_lists)
        ]


class CriticJudge:
    """A generative critic prompted ProcessBench-style (module docstring).

    Args:
        model, tokenizer: a causal LM and its tokenizer (its chat template wraps the prompt).
        template: the critique prompt, with ``{problem}`` and ``{tagged_response}``.
        max_new_tokens: the critique's generation limit.
        batch_size: prompts per generation micro-batch.
        thinking: ``enable_thinking`` for a Qwen3 chat template; None: the template's default.
    """

    name = "critic"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        template: str = PROCESSBENCH_TEMPLATE,
        max_new_tokens: int = 2048,
        batch_size: int = 8,
        thinking: bool | None = None,
    ) -> None:
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("critic max_new_tokens and batch_size must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.thinking = thinking

    def __repr__(self) -> str:
        return f"CriticJudge({type(self.model).__name__}, max_new_tokens={self.max_new_tokens})"

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, **kwargs: Any) -> CriticJudge:
        """Load a causal LM with ``dasd.models.load_model``; ``kwargs`` go to the constructor."""
        model, tokenizer = load_model(path, device=device, dtype=dtype)
        return cls(model, tokenizer, **kwargs)

    def prompt(self, problem: str, steps: Sequence[str]) -> str:
        """The critique prompt for one solution, in the chat template if the tokenizer has one."""
        tagged = "\n\n".join(f"<paragraph_{i}>\n{s}\n</paragraph_{i}>" for i, s in enumerate(steps))
        content = self.template.format(problem=problem, tagged_response=tagged)
        if not getattr(self.tokenizer, "chat_template", None):
            return content
        extra = {} if self.thinking is None else {"enable_thinking": self.thinking}
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            tokenize=False,
            add_generation_prompt=True,
            **extra,
        )

    def critique(self, problems: Sequence[str], steps_lists: Sequence[Sequence[str]]) -> list[str]:
        """The critic's greedy critique of each solution."""
        prompts = [self.prompt(p, s) for p, s in zip(problems, steps_lists)]
        if not prompts:
            return []
        rollouts = generate(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=self.max_new_tokens,
            temperature=0.0,
            batch_size=self.batch_size,
        )
        return rollouts.responses

    @staticmethod
    def parse_first_error(critique: str, n_steps: int) -> int | None:
        """The index in the critique's last ``\\boxed{}``: -1 or 0..n_steps-1; None otherwise."""
        boxed = last_boxed(critique)
        if boxed is None:
            return None
        try:
            index = int(boxed.strip())
        except ValueError:
            return None
        return index if -1 <= index < n_steps else None

    def first_errors(
        self, problems: Sequence[str], steps_lists: Sequence[Sequence[str]]
    ) -> list[int | None]:
        """Earliest-error index per solution (None where the critique gives no valid one)."""
        critiques = self.critique(problems, steps_lists)
        return [self.parse_first_error(c, len(s)) for c, s in zip(critiques, steps_lists)]

    def judge(self, problem: str, steps: Sequence[str]) -> list[bool]:
        return verdicts_from_first_error(self.first_errors([problem], [steps])[0], len(steps))


def load_processbench(
    subset: str,
    *,
    directory: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[ProcessBenchRow]:
    """The rows of a ProcessBench subset in file order: all, or ``limit`` of them spread evenly
    over the file (rows ``i * n // limit``), since the files list every erroneous solution
    before the correct ones.

    ``directory`` holds ``gsm8k.json`` ... ``omnimath.json`` (JSON arrays); default: the data
    directory's ``processbench/`` (``dasd.tasks.math.default_data_dir``).
    """
    if subset not in PROCESSBENCH_SUBSETS:
        raise ValueError(
            f"unknown ProcessBench subset {subset!r}; valid: {', '.join(PROCESSBENCH_SUBSETS)}"
        )
    if limit is not None and limit < 1:
        raise ValueError(f"ProcessBench limit must be >= 1, got {limit}")
    if directory is None:
        root = default_data_dir()
        if root is None:
            raise FileNotFoundError(
                "no ProcessBench directory: set DASD_DATA_DIR (holding processbench/) or pass "
                "the folder with gsm8k.json ... omnimath.json"
            )
        directory = root / "processbench"
    path = Path(directory).expanduser() / f"{subset}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no ProcessBench file {path}; "
            f"pass the folder holding {subset}.json (QwenLM/ProcessBench)"
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a JSON array of ProcessBench rows")
    picked = (
        range(len(raw))
        if limit is None or limit >= len(raw)
        else (i * len(raw) // limit for i in range(limit))
    )
    rows = []
    for i in picked:
        item = raw[i]
        try:
            rows.append(
                ProcessBenchRow(
                    id=str(item["id"]),
                    subset=subset,
                    problem=item["problem"],
                    steps=tuple(item["steps"]),
                    label=int(item["label"]),
                    final_answer_correct=bool(item.get("final_answer_correct", False)),
                    generator=str(item.get("generator", "")),
                )
            )
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{path}: row {i} lacks id/problem/steps/label; is this a ProcessBench file?"
            ) from None
    return rows


@dataclass(frozen=True)
class ProcessBenchScore:
    """ProcessBench's metric on one subset (accuracies in [0, 1]; NaN where a side is empty)."""

    subset: str
    n: int
    n_error: int
    n_correct: int
    error_acc: float
    correct_acc: float
    f1: float


def processbench_score(
    labels: Sequence[int], predictions: Sequence[int | None], *, subset: str = ""
) -> ProcessBenchScore:
    """Accuracy on the erroneous rows (prediction == label), on the correct rows (prediction ==
    -1), and their harmonic mean F1 (0 when both are 0)."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    error = [(l, p) for l, p in zip(labels, predictions) if l >= 0]
    correct = [p for l, p in zip(labels, predictions) if l < 0]
    error_acc = sum(p == l for l, p in error) / len(error) if error else math.nan
    correct_acc = sum(p == -1 for p in correct) / len(correct) if correct else math.nan
    total = error_acc + correct_acc
    f1 = 2 * error_acc * correct_acc / total if total > 0 else (0.0 if total == 0 else math.nan)
    return ProcessBenchScore(
        subset, len(labels), len(error), len(correct), error_acc, correct_acc, f1
    )


@dataclass(frozen=True)
class JudgeOptions:
    """What building a judge by name may need (``build_judge``)."""

    model: str = ""
    """Checkpoint directory or hub id (``prm``, ``critic``)."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    batch_size: int = 4
    max_new_tokens: int = 2048
    """Critique length limit (``critic``)."""
    trust_remote_code: bool = False
    """Allow a PRM's own modeling code (Qwen2.5-Math-PRM)."""


def _from_checkpoint(
    judge: type[PRMJudge] | type[CriticJudge], name: str, options: JudgeOptions, **kwargs: Any
) -> StepJudge:
    """``judge`` loaded from ``options.model`` on ``options.device`` (``auto``: CUDA when
    available, else CPU) with ``options.batch_size``; ``kwargs`` go to its ``from_pretrained``."""
    if not options.model:
        raise ValueError(f"judge {name!r} needs --model (a checkpoint directory or hub id)")
    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return judge.from_pretrained(options.model, device=device, batch_size=options.batch_size,
                                 **kwargs)


#: Judge builders by name: ``(options, processbench_rows) -> StepJudge``.
JUDGES: Registry[Callable[[JudgeOptions, Sequence[ProcessBenchRow]], StepJudge]] = Registry("judge")


@JUDGES.register("prm")
def _prm(options: JudgeOptions, rows: Sequence[ProcessBenchRow]) -> StepJudge:
    return _from_checkpoint(PRMJudge, "prm", options, trust_remote_code=options.trust_remote_code)


@JUDGES.register("critic")
def _critic(options: JudgeOptions, rows: Sequence[ProcessBenchRow]) -> StepJudge:
    return _from_checkpoint(CriticJudge, "critic", options, max_new_tokens=options.max_new_tokens)


@JUDGES.register("oracle")
def _oracle(options: JudgeOptions, rows: Sequence[ProcessBenchRow]) -> StepJudge:
    return OracleJudge(rows)


@JUDGES.register("constant-correct")
def _constant_correct(options: JudgeOptions, rows: Sequence[ProcessBenchRow]) -> StepJudge:
    return ConstantJudge()


def build_judge(
    name: str, options: JudgeOptions, rows: Sequence[ProcessBenchRow] = ()
) -> StepJudge:
    """The judge registered as ``name`` (``oracle`` is built from ``rows``)."""
    return JUDGES.get(name)(options, rows)


@dataclass(frozen=True)
class JudgeEvaluation:
    """A judge's ProcessBench scores per subset and its predicted earliest-error indices."""

    scores: list[ProcessBenchScore]
    predictions: dict[str, list[int | None]]

    @property
    def average_f1(self) -> float:
        """The mean F1 over the subsets (ProcessBench's "Avg. F1")."""
        return sum(s.f1 for s in self.scores) / len(self.scores)

    def to_dict(self, rows: Mapping[str, Sequence[ProcessBenchRow]]) -> dict[str, Any]:
        """JSON-storable: scores, average F1 and, per subset, each row's id, label, prediction."""
        return {
            "scores": [asdict(s) for s in self.scores],
            "average_f1": self.average_f1,
            "predictions": {
                subset: [
                    {"id": r.id, "label": r.label, "predicted": p}
                    for r, p in zip(rows[subset], preds)
                ]
                for subset, preds in self.predictions.items()
            },
        }


def evaluate_judge(
    judge: StepJudge,
    rows: Mapping[str, Sequence[ProcessBenchRow]],
    *,
    chunk_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> JudgeEvaluation:
    """Score ``judge`` on ProcessBench ``rows`` (by subset) with ProcessBench's metric.

    Rows go to the judge ``chunk_size`` at a time; ``progress`` is called with the number of
    rows done after each chunk.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    scores, predictions = [], {}
    for subset, subset_rows in rows.items():
        if not subset_rows:
            raise ValueError(f"ProcessBench subset {subset!r} has no rows to score")
        preds: list[int | None] = []
        for start in range(0, len(subset_rows), chunk_size):
            chunk = subset_rows[start : start + chunk_size]
            preds.extend(
                predict_first_errors(judge, [r.problem for r in chunk], [r.steps for r in chunk])
            )
            if progress is not None:
                progress(len(chunk))
        predictions[subset] = preds
        scores.append(processbench_score([r.label for r in subset_rows], preds, subset=subset))
    return JudgeEvaluation(scores, predictions)
