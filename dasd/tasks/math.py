"""The ``math`` task: real benchmarks, chat-template prompts, math-verify rewards (DESIGN.md
section 6; paper section 5 and appendix F).

Evaluation benchmarks MATH500, Minerva, OlympiadBench, AIME24, AIME25, HMMT25 (and AMC23) and the
training set DAPO-Math-17k load from local JSONL / JSON-array / Parquet files, or from the hub
through ``datasets`` (``pip install dasd[hub]``) where a user has network. A benchmark is named
by:

* a known name (``BENCHMARKS``: ``aime24``, ``math500``, ...), looked up under the data
  directory: ``$DASD_DATA_DIR``, else ``../shared/data`` beside the working directory or beside
  the repository, holding ``aime24/test.jsonl``, ``math500/test.jsonl``, ... (the layout of
  ``shared/data``);
* a path to a ``.jsonl``, ``.json`` (an array) or ``.parquet`` file;
* ``hub:NAME`` (a known name, loaded from its hub dataset) or ``hub:OWNER/DATASET[@SPLIT]``
  (split ``test`` by default).

Rows are read whatever their schema (:func:`problem_from_row`): the problem in ``problem``,
``question`` or a chat ``prompt``; the answer in ``answer`` (a string, or a number such as
AMC23's ``27.0`` -> ``"27"``), ``final_answer`` (OlympiadBench's list of ``$...$``),
``reward_model.ground_truth`` (verl format) or only as the last ``\\boxed{}`` of ``solution``
(Minerva); ids of any type become strings.

Prompts (appendix F): the student sees x = the problem and the ``\\boxed{}`` instruction, in the
model's chat template when its tokenizer has one (Qwen3's ``enable_thinking`` set by
``thinking``), else in a plain-text template. The privileged teacher sees r prepended to x in the
same user turn; r is the row's reference solution, or, for rows that have only a final answer
(AIME25, HMMT25, AMC23, DAPO-Math-17k), a sentence stating that answer. :meth:`MathTask.describe`
returns every template in use, rendered, for the run manifest.

Choices and departures:

1. Control characters that JSON escapes made out of LaTeX commands (AIME25 rows 18, 19, 27:
   ``\\f`` + ``rac`` became a form feed + ``rac``, ``\\t`` + ``riangle`` a TAB + ``riangle``) are
   repaired for a known list of commands (:func:`repair_latex_controls`); other control
   characters except newline and TAB become spaces.
2. DAPO-Math-17k's original prompt wrapper ("Solve the following math problem step by step. The
   last line of your response should be of the form Answer: $Answer ...") is removed, so every
   benchmark gets the same instruction; the SvS copy in ``shared/data`` has the bare problem.
3. OlympiadBench's reference r is its first listed solution; its answer joins the
   ``final_answer`` list with ", " (``$`` removed).
4. ``sample(n, split="eval")`` returns the benchmark's rows without repetition: all of them in
   file order when ``n`` is at least their number, else the first ``n`` of a seeded
   permutation. ``split="train"`` samples the training set as Countdown does (without
   replacement, reshuffled when exhausted).
5. Steps (:func:`split_steps`) are blank-line paragraphs, as in ProcessBench; a single
   paragraph splits at "Step k:" lines, else into lines; display math is never cut. Without a
   step judge, ``judge_steps`` returns no verdicts (an empty list): StepAcc on real math needs
   a judge (``analysis.judges``), passed as ``step_judge``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dasd.registry import Registry
from dasd.tasks.base import TASKS, Problem, Task
from dasd.verify import MathVerifier, last_boxed

__all__ = [
    "BENCHMARKS",
    "DEFAULT_ANSWER_REFERENCE",
    "DEFAULT_PLAIN_TEMPLATE",
    "DEFAULT_REFERENCE_TEMPLATE",
    "DEFAULT_USER_TEMPLATE",
    "BenchmarkSpec",
    "MathTask",
    "default_data_dir",
    "load_benchmark",
    "problem_from_row",
    "read_rows",
    "repair_latex_controls",
    "split_steps",
]

#: The student's user message: the problem and the ``\boxed{}`` instruction (Qwen2.5-Math style).
DEFAULT_USER_TEMPLATE = (
    "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
)
#: Prepended to the student's user message in the privileged teacher's prompt (appendix F).
DEFAULT_REFERENCE_TEMPLATE = "Reference solution:\n{reference}\n\nProblem:\n"
#: The reference r of a row that has only a final answer.
DEFAULT_ANSWER_REFERENCE = "The final answer is $\\boxed{{{answer}}}$."
#: The prompt around a user message when the tokenizer has no chat template.
DEFAULT_PLAIN_TEMPLATE = "{content}\n\nSolution:\n"


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a known benchmark lives: files under the data directory, and its hub dataset."""

    name: str
    local: tuple[str, ...]
    """Candidate files relative to the data directory, first found wins."""
    hub: str
    """Hub dataset id for ``hub:NAME``."""
    hub_split: str
    hub_config: str | None = None


#: Known benchmarks by name (DESIGN.md section 6).
BENCHMARKS: Registry[BenchmarkSpec] = Registry("benchmark")
for _spec in (
    BenchmarkSpec("math500", ("math500/test.jsonl",), "HuggingFaceH4/MATH-500", "test"),
    BenchmarkSpec("minerva", ("minerva_math/test.jsonl",), "math-ai/minervamath", "test"),
    BenchmarkSpec(
        "olympiadbench",
        ("olympiadbench/test.jsonl",),
        "Hothan/OlympiadBench",
        "train",
        "OE_TO_maths_en_COMP",
    ),
    BenchmarkSpec("aime24", ("aime24/test.jsonl",), "HuggingFaceH4/aime_2024", "train"),
    BenchmarkSpec("aime25", ("aime25/test.jsonl",), "math-ai/aime25", "test"),
    BenchmarkSpec("hmmt25", ("hmmt_feb_2025/test.jsonl",), "MathArena/hmmt_feb_2025", "train"),
    BenchmarkSpec("amc23", ("amc23/test.jsonl",), "math-ai/amc23", "test"),
    BenchmarkSpec(
        "dapo-math-17k",
        ("dapo_math_17k/dapo_math_17k.parquet", "dapo_math_17k/dapo_math_17k.jsonl"),
        "BytedTsinghua-SIA/DAPO-Math-17k",
        "train",
    ),
):
    BENCHMARKS.register(_spec.name)(_spec)

_ALIASES = {
    "math-500": "math500",
    "minerva-math": "minerva",
    "hmmt-feb-2025": "hmmt25",
    "dapo": "dapo-math-17k",
}
_GENERIC_STEMS = {"test", "train", "validation", "val", "dev", "data"}
_ID_KEYS = ("id", "unique_id", "idx", "problem_idx")
_QUESTION_KEYS = ("problem", "question", "Problem", "Question")
_ANSWER_KEYS = ("answer", "Answer", "final_answer")

# Control characters that a JSON escape made out of "\f", "\t", "\b", "\r" + a LaTeX command
# (the command's first letter went into the escape: a form feed + "rac" was "\frac").
_CONTROL_COMMANDS = {
    "\f": "frac forall".split(),
    "\t": "triangle times textbf textit text theta tfrac tilde tan tau therefore".split(),
    "\b": "binom beta bar begin boxed bmod bigl bigr bullet".split(),
    "\r": "rho right rangle rfloor rceil rightarrow".split(),
}
_CONTROL_RE = re.compile(
    "|".join(
        f"{re.escape(ch)}(?:{'|'.join(sorted((c[1:] for c in cmds), key=len, reverse=True))})"
        "(?![A-Za-z])"
        for ch, cmds in _CONTROL_COMMANDS.items()
    )
)
_CONTROL_LETTER = {"\f": "f", "\t": "t", "\b": "b", "\r": "r"}
_STRAY_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_DAPO_PREFIX = re.compile(
    r"^\s*Solve the following math problem step by step\..*?where \$Answer is the answer to "
    r"the problem\.\s*",
    re.DOTALL,
)
_DAPO_SUFFIX = re.compile(
    r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$"
)
_STEP_MARKER = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*)?Step[ \t]+\d+[ \t]*[:.)]", re.IGNORECASE | re.MULTILINE
)


def repair_latex_controls(text: str) -> str:
    """Undo JSON-escape damage to LaTeX (module docstring, rule 1): a form feed + "rac" becomes
    ``\\frac``, a TAB + "riangle" ``\\triangle`` (known commands only); other control characters
    except newline and TAB become spaces (a CR LF pair becomes a newline)."""
    text = _CONTROL_RE.sub(lambda m: "\\" + _CONTROL_LETTER[m.group(0)[0]] + m.group(0)[1:], text)
    return _STRAY_CONTROL.sub(" ", text.replace("\r\n", "\n"))


def default_data_dir() -> Path | None:
    """The local data directory: ``$DASD_DATA_DIR`` if set, else ``../shared/data`` beside the
    working directory or beside the repository, if it exists; None otherwise."""
    env = os.environ.get("DASD_DATA_DIR")
    if env:
        return Path(env).expanduser()
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``.jsonl``, ``.json`` (an array of objects) or ``.parquet`` file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}: line {number} is not JSON ({err.msg})") from None
        return rows
    if suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON array of objects, got {type(rows).__name__}")
        return rows
    raise ValueError(
        f"{path}: unsupported benchmark file type {suffix!r}; use .jsonl, .json or .parquet"
    )


def _answer_text(value: Any) -> str:
    """An answer field as text: floats that are integers lose ".0"; lists are joined by ", "."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(_answer_text(v) for v in value if str(v).strip())
    text = str(value).strip()
    return re.sub(r"(?<!\\)\$", "", text).strip()


def _question_text(row: Mapping[str, Any]) -> str | None:
    for key in _QUESTION_KEYS:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value
    prompt = row.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        return prompt
    if isinstance(prompt, (list, tuple)):
        users = [
            m.get("content", "")
            for m in prompt
            if isinstance(m, Mapping) and m.get("role") == "user"
        ]
        if users and users[-1].strip():
            return users[-1]
    return None


def _solution_text(row: Mapping[str, Any]) -> str:
    value = row.get("solution")
    if isinstance(value, (list, tuple)):
        value = next((v for v in value if isinstance(v, str) and v.strip()), "")
    return value if isinstance(value, str) else ""


def _gold_answer(row: Mapping[str, Any], solution: str) -> str | None:
    for key in _ANSWER_KEYS:
        value = row.get(key)
        if value is not None and _answer_text(value):
            return _answer_text(value)
    reward_model = row.get("reward_model")
    if isinstance(reward_model, Mapping) and reward_model.get("ground_truth") is not None:
        text = _answer_text(reward_model["ground_truth"])
        if text:
            return text
    boxed = last_boxed(solution) if solution else None
    return boxed.strip() if boxed and boxed.strip() else None


def _source_id(row: Mapping[str, Any]) -> str | None:
    for key in _ID_KEYS:
        if row.get(key) is not None and str(row[key]).strip():
            return str(row[key]).strip()
    extra = row.get("extra_info")
    if isinstance(extra, Mapping) and extra.get("index") is not None:
        return str(extra["index"])
    return None


def problem_from_row(
    row: Mapping[str, Any],
    *,
    benchmark: str,
    index: int,
    answer_reference: str = DEFAULT_ANSWER_REFERENCE,
) -> Problem:
    """One benchmark row as a ``Problem`` (module docstring: fields, rules 1-3).

    ``id`` is ``<benchmark>-<row id>`` (``<benchmark>-<index>`` for rows without one);
    ``meta`` holds ``benchmark``, ``row`` (``index``) and ``reference_kind`` (``"solution"`` or
    ``"answer"``). Raises ``ValueError`` naming the row when it has no problem or no answer.
    """
    question = _question_text(row)
    if question is None:
        raise ValueError(
            f"{benchmark} row {index} has no problem text (looked for "
            f"{', '.join(_QUESTION_KEYS)} and a chat 'prompt'); fix the row or the file"
        )
    question = _DAPO_SUFFIX.sub("", _DAPO_PREFIX.sub("", repair_latex_controls(question))).strip()
    solution = repair_latex_controls(_solution_text(row)).strip()
    answer = _gold_answer(row, solution)
    if answer is None:
        raise ValueError(
            f"{benchmark} row {index} has no answer (looked for answer, final_answer, "
            "reward_model.ground_truth and a \\boxed{} in solution); fix the row or the file"
        )
    answer = repair_latex_controls(answer)
    source_id = _source_id(row)
    return Problem(
        id=f"{benchmark}-{source_id if source_id is not None else index}",
        question=question,
        answer=answer,
        reference=solution or answer_reference.format(answer=answer),
        meta={
            "benchmark": benchmark,
            "row": index,
            "reference_kind": "solution" if solution else "answer",
        },
    )


def _problems(
    rows: Iterable[Mapping[str, Any]], *, benchmark: str, answer_reference: str
) -> list[Problem]:
    problems = [
        problem_from_row(row, benchmark=benchmark, index=i, answer_reference=answer_reference)
        for i, row in enumerate(rows)
    ]
    if len({p.id for p in problems}) < len(problems):
        problems = [
            Problem(f"{benchmark}-{i}", p.question, p.answer, p.reference, p.meta)
            for i, p in enumerate(problems)
        ]
    return problems


def _hub_rows(dataset: str, split: str, config: str | None) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"loading {dataset} from the hub needs the `datasets` package; "
            "install it with `pip install dasd[hub]`, or pass a local file"
        ) from None
    return [dict(row) for row in datasets.load_dataset(dataset, config, split=split)]


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    return _ALIASES.get(key, key)


@dataclass(frozen=True)
class _Source:
    """A resolved benchmark: its name, and a local file or a hub dataset."""

    name: str
    path: Path | None = None
    hub: tuple[str, str, str | None] | None = None

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        dataset, split, config = self.hub
        return f"hub:{dataset}" + (f"/{config}" if config else "") + f"@{split}"

    def rows(self) -> list[dict[str, Any]]:
        return read_rows(self.path) if self.path is not None else _hub_rows(*self.hub)


def _resolve(benchmark: str, directory: Path | None) -> _Source:
    """Where ``benchmark`` (a known name, a file path or ``hub:...``) is; module docstring."""
    if benchmark.startswith("hub:"):
        target = benchmark[len("hub:") :]
        if _canonical(target) in BENCHMARKS:
            spec = BENCHMARKS.get(_canonical(target))
            return _Source(spec.name, hub=(spec.hub, spec.hub_split, spec.hub_config))
        dataset, _, split = target.partition("@")
        if "/" not in dataset:
            raise ValueError(
                f"unknown hub benchmark {target!r}; use hub:NAME with a known name "
                f"({', '.join(BENCHMARKS.names())}) or hub:OWNER/DATASET[@SPLIT]"
            )
        return _Source(dataset.rsplit("/", 1)[1].lower(), hub=(dataset, split or "test", None))
    path = Path(benchmark).expanduser()
    if path.is_file():
        name = path.parent.name if path.stem.lower() in _GENERIC_STEMS else path.stem
        return _Source(name or path.stem, path=path)
    key = _canonical(benchmark)
    if key not in BENCHMARKS:
        raise ValueError(
            f"unknown benchmark {benchmark!r}: not a file and not one of "
            f"{', '.join(BENCHMARKS.names())}; pass a known name or a .jsonl/.json/.parquet path"
        )
    spec = BENCHMARKS.get(key)
    if directory is not None:
        for relative in spec.local:
            if (directory / relative).is_file():
                return _Source(spec.name, path=directory / relative)
    looked = f"{directory / spec.local[0]}" if directory is not None else "no data directory found"
    raise FileNotFoundError(
        f"benchmark {spec.name!r} has no local file ({looked}); set DASD_DATA_DIR to the folder "
        f"holding {spec.local[0]}, pass a file path, or load hub:{spec.name} (needs network "
        "and `pip install dasd[hub]`)"
    )


def load_benchmark(
    benchmark: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    answer_reference: str = DEFAULT_ANSWER_REFERENCE,
) -> list[Problem]:
    """Every row of ``benchmark`` (a known name, a file path or ``hub:...``) as ``Problem``s, in
    file order. ``data_dir`` overrides the data directory (module docstring)."""
    directory = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    source = _resolve(benchmark, directory)
    return _problems(source.rows(), benchmark=source.name, answer_reference=answer_reference)


def _has_open_math(text: str) -> bool:
    return (
        text.count("$$") % 2 == 1
        or text.count("\\[") > text.count("\\]")
        or text.count("\\begin{") > text.count("\\end{")
    )


def split_steps(text: str) -> list[str]:
    """The reasoning steps of a response (module docstring, rule 5), stripped, in order.

    ``<think>`` tags are dropped (``</think>`` ends a paragraph). Steps are the paragraphs
    between blank lines (ProcessBench's steps). A response that is a single paragraph is split
    before each line that starts with "Step k:" (optionally after ``#`` or ``**``; text before
    the first is a step of its own) where there are at least two such lines, else into its
    lines. A piece that leaves a display-math block (``$$``, ``\\[``, ``\\begin{...}``) open
    is joined to the next.
    """
    if not isinstance(text, str):
        return []
    text = text.replace("\r\n", "\n").replace("<think>", "").replace("</think>", "\n\n")
    pieces = re.split(r"\n[ \t]*\n", text)
    if sum(1 for p in pieces if p.strip()) == 1:
        starts = [m.start() for m in _STEP_MARKER.finditer(text)]
        if len(starts) >= 2:
            bounds = zip(starts, [*starts[1:], len(text)])
            pieces = [text[: starts[0]]] + [text[a:b] for a, b in bounds]
        else:
            pieces = text.split("\n")
    steps: list[str] = []
    pending = ""
    for piece in pieces:
        pending = f"{pending}\n\n{piece}" if pending else piece
        if not _has_open_math(pending):
            if pending.strip():
                steps.append(pending.strip())
            pending = ""
    if pending.strip():
        steps.append(pending.strip())
    return steps


def _check_template(label: str, template: str, fields: set[str]) -> str:
    try:
        found = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"math {label} {template!r} is not a format string ({err})") from None
    if found != fields:
        want = ", ".join("{" + f + "}" for f in sorted(fields))
        raise ValueError(
            f"math {label} must use exactly {want} (double other braces), got {template!r}"
        )
    return template


@TASKS.register("math")
class MathTask(Task):
    """Real math benchmarks as a ``Task`` (module docstring; DESIGN.md section 6).

    Args:
        benchmark: the evaluation benchmark (``split="eval"``): a known name, a file path, or
            ``hub:...`` (module docstring).
        train: the training set (``split="train"``), same forms; loaded on first use.
        tokenizer: the model's tokenizer; its chat template wraps the prompts when it has one.
        data_dir: the local data directory (default: :func:`default_data_dir`).
        thinking: Qwen3's ``enable_thinking`` for the chat template; None leaves the
            template's default.
        system: a system message (None: none).
        chat_template: use the tokenizer's chat template; None: when it has one.
        user_template: the student's user message, with ``{question}``.
        reference_template: prepended to the user message for the teacher, with ``{reference}``.
        answer_reference: r for rows with only a final answer, with ``{answer}``.
        plain_template: the prompt without a chat template, with ``{content}``.
        verify_timeout_s: math-verify's time limit per answer (``dasd.verify``).
        step_judge: ``judge(problem_text, steps) -> list[bool]``, e.g. the ``judge`` method of
            a judge from ``analysis.judges``; None: ``judge_steps`` returns no verdicts.

    It keeps the default :meth:`Task.problem_from_row` (no problem rebuilt from a logged
    rollout row): a row's ``prompt_id`` names a benchmark item, not its text, so rows logged
    without ``step_correct`` stay unjudged (the module function :func:`problem_from_row`
    reads benchmark files, not rollouts).
    """

    name = "math"

    def __init__(
        self,
        *,
        benchmark: str = "aime24",
        train: str = "dapo-math-17k",
        tokenizer: Any = None,
        data_dir: str | os.PathLike[str] | None = None,
        thinking: bool | None = None,
        system: str | None = None,
        chat_template: bool | None = None,
        user_template: str = DEFAULT_USER_TEMPLATE,
        reference_template: str = DEFAULT_REFERENCE_TEMPLATE,
        answer_reference: str = DEFAULT_ANSWER_REFERENCE,
        plain_template: str = DEFAULT_PLAIN_TEMPLATE,
        verify_timeout_s: float = 5.0,
        step_judge: Callable[[str, list[str]], list[bool]] | None = None,
    ) -> None:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template and not has_template:
            raise ValueError(
                "math chat_template=True but the tokenizer has no chat template; "
                "pass a tokenizer that has one or leave chat_template unset"
            )
        self.user_template = _check_template("user_template", user_template, {"question"})
        self.reference_template = _check_template(
            "reference_template", reference_template, {"reference"}
        )
        self.answer_reference = _check_template("answer_reference", answer_reference, {"answer"})
        self.plain_template = _check_template("plain_template", plain_template, {"content"})
        self.tokenizer = tokenizer
        self.use_chat_template = has_template if chat_template is None else chat_template
        self.thinking = thinking
        self.system = system
        self.step_judge = step_judge
        self.verifier = MathVerifier(timeout_s=verify_timeout_s)
        self._dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        self.benchmark = benchmark
        self.train = train
        self._sources = {"eval": _resolve(benchmark, self._dir)}
        self._pools: dict[str, list[Problem]] = {}

    def __repr__(self) -> str:
        return f"MathTask(benchmark={self.benchmark!r}, train={self.train!r})"

    def _source(self, split: str) -> _Source:
        if split not in ("train", "eval"):
            raise ValueError(f"math split must be 'train' or 'eval', got {split!r}")
        if split not in self._sources:
            self._sources[split] = _resolve(self.train, self._dir)
        return self._sources[split]

    def pool(self, split: str) -> list[Problem]:
        """Every problem of ``split`` in file order; loaded on first use."""
        source = self._source(split)
        if split not in self._pools:
            self._pools[split] = _problems(
                source.rows(), benchmark=source.name, answer_reference=self.answer_reference
            )
        return self._pools[split]

    def sample(self, n: int, *, split: str = "train", seed: int = 0) -> list[Problem]:
        """``n`` problems of ``split``, deterministic in ``seed`` (module docstring, rule 4)."""
        if n < 0:
            raise ValueError(f"math sample size must be >= 0, got {n}")
        pool = self.pool(split)
        if n and not pool:
            raise ValueError(f"math {split} set {self._source(split).describe()} has no rows")
        rng = random.Random(f"math-sample-{split}-{seed}")
        if split == "eval":
            if n >= len(pool):
                return list(pool)
            order = list(range(len(pool)))
            rng.shuffle(order)
            return [pool[i] for i in order[:n]]
        picked: list[Problem] = []
        while len(picked) < n:
            order = list(pool)
            rng.shuffle(order)
            picked.extend(order[: n - len(picked)])
        return picked

    def _wrap(self, content: str) -> str:
        """``content`` as the user turn of the prompt (chat template or plain template)."""
        if self.use_chat_template:
            messages = [{"role": "system", "content": self.system}] if self.system else []
            messages.append({"role": "user", "content": content})
            extra = {} if self.thinking is None else {"enable_thinking": self.thinking}
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **extra
            )
        prompt = self.plain_template.format(content=content)
        return f"{self.system}\n\n{prompt}" if self.system else prompt

    def student_prompt(self, problem: Problem) -> str:
        """x: the problem and the ``\\boxed{}`` instruction as the user turn."""
        return self._wrap(self.user_template.format(question=problem.question))

    def teacher_prompt(self, problem: Problem) -> str:
        """r prepended to x inside the same user turn (appendix F)."""
        return self._wrap(
            self.reference_template.format(reference=problem.reference)
            + self.user_template.format(question=problem.question)
        )

    def reward(self, problem: Problem, response: str) -> float:
        """1.0 iff the response's final answer equals ``problem.answer`` under math-verify
        (``dasd.verify``); 0.0 for no answer, a different one, or a timeout. The answer is read
        after ``</think>`` only; with ``thinking=True`` a response without ``</think>`` (cut off
        while reasoning) has none (``dasd.verify.after_thinking``)."""
        if not isinstance(response, str):
            return 0.0
        return self.verifier.score(problem.answer, response, thinking=self.thinking)

    def parse_steps(self, response: str) -> list[str]:
        """The response's steps (:func:`split_steps`)."""
        return split_steps(response)

    def judge_steps(self, problem: Problem, response: str) -> list[bool]:
        """The step judge's verdict on each step; empty without a judge (module docstring, 5)."""
        if self.step_judge is None:
            return []
        steps = self.parse_steps(response)
        verdicts = [bool(v) for v in self.step_judge(problem.question, steps)]
        if len(verdicts) != len(steps):
            raise ValueError(
                f"step judge returned {len(verdicts)} verdicts for {len(steps)} steps; "
                "a judge must return one verdict per step"
            )
        return verdicts

    def describe(self) -> dict[str, Any]:
        """The settings and rendered prompt formats in use, for the run manifest."""
        template = (
            getattr(self.tokenizer, "chat_template", None) if self.use_chat_template else None
        )
        placeholder = Problem("", "{question}", "{answer}", "{reference}")
        return {
            "benchmark": self.benchmark,
            "benchmark_source": self._sources["eval"].describe(),
            "train": self.train,
            "user_template": self.user_template,
            "reference_template": self.reference_template,
            "answer_reference": self.answer_reference,
            "plain_template": None if self.use_chat_template else self.plain_template,
            "chat_template_sha256": (
                hashlib.sha256(template.encode()).hexdigest()[:16]
                if isinstance(template, str)
                else None
            ),
            "thinking": self.thinking,
            "system": self.system,
            "student_prompt_format": self.student_prompt(placeholder),
            "teacher_prompt_format": self.teacher_prompt(placeholder),
            "verify_timeout_s": self.verifier.timeout_s,
            "step_judge": None if self.step_judge is None else repr(self.step_judge),
        }
