"""Final-answer extraction and ``math-verify`` equivalence under a time limit (DESIGN.md section 6).

The paper's verifier reward (section 5, appendix F: "verifiable answers ... for rewards") on
real math: take the response's final answer, compare it with the gold answer symbolically.

* :func:`extract_answer` finds the final answer: the content of the last ``\\boxed{...}`` (or
  ``\\fbox{...}``, or ``\\boxed 5``); without one, the last "final answer is X", "the answer
  is X" or "Answer: X" line. It looks only after the reasoning (:func:`after_thinking`): a
  thinking model's answer follows ``</think>``, and one that never closed its ``<think>``
  block (cut off mid-reasoning) has no answer.
* :class:`MathVerifier` compares it with the gold answer with ``math-verify`` (both parsed as
  LaTeX math, gold first: math-verify is not symmetric). Every comparison runs in a persistent
  worker process under a wall-clock limit; a worker that overruns is killed and replaced, so
  adversarial LaTeX (``9^{9^{9^{9}}}``, ``(x+1)^{100000}``) costs at most the limit and scores 0.

Choices and departures:

1. The time limit covers parsing both answers and comparing them, for each answer; it is
   enforced by killing the worker, a child interpreter (``subprocess``, so no main module is
   re-imported as ``multiprocessing``'s spawn would), not by ``signal.alarm`` in the caller's
   thread, which math-verify uses by default and which neither works off the main thread nor
   interrupts long C-level integer arithmetic. Starting a worker is not counted.
2. The worker's address space is capped (``memory_mb``, Linux/BSD ``RLIMIT_AS``) so that a huge
   power fails with ``MemoryError`` (scored 0) instead of exhausting the machine's memory.
3. Fast paths in the caller: identical strings are equal; two plain decimal numbers are equal
   iff they are equal as decimals ("025" = "25" = "25.0"), and two different integers are
   unequal. Everything else goes to math-verify.
4. A timeout, a worker crash, an empty answer or an answer longer than ``MAX_ANSWER_CHARS``
   scores 0, never raises.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import weakref
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO

__all__ = [
    "MAX_ANSWER_CHARS",
    "MathVerifier",
    "after_thinking",
    "clean_answer",
    "extract_answer",
    "last_boxed",
    "serve",
]

#: Longer extracted (or gold) answers are not compared and score 0.
MAX_ANSWER_CHARS = 1000
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_FALLBACKS = (
    re.compile(r"final answer\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE),
    re.compile(r"the answer is\s*:?\s*(.+)", re.IGNORECASE),
    re.compile(r"^[ \t*#]*answer\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE),
)
_MATH_SPAN = re.compile(r"\$\$?(.+?)\$\$?|\\\((.+?)\\\)|\\\[(.+?)\\\]")
_CLAUSE_END = re.compile(r"\.\s|;|,?\s(?:since|because|which|as|so|for)\s", re.IGNORECASE)
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_WORKER_START_S = 120.0


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` (braces balanced), or of
    the last ``\\boxed X`` (up to the next space or ``$``); None if there is none or it is
    unclosed."""
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    pos = text.index("\\", start) + 1
    while pos < len(text) and text[pos].isalpha():
        pos += 1
    if text.startswith(" ", pos) and not text.startswith(" {", pos):
        match = re.match(r" +([^\s$]+)", text[pos:])
        return match.group(1) if match else None
    while pos < len(text) and text[pos] == " ":
        pos += 1
    if pos >= len(text) or text[pos] != "{":
        return None
    depth = 0
    for end in range(pos, len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
            if depth == 0:
                return text[pos + 1 : end]
    return None


def clean_answer(answer: str) -> str:
    """Strip the wrapping an answer often comes in: spaces, ``$``, ``\\( \\)``, ``\\[ \\]``,
    bold ``**``, a trailing period."""
    text = answer.strip()
    previous = None
    while text != previous:
        previous = text
        text = text.strip().strip("*").strip()
        if text.endswith(".") and not text.endswith(".."):
            text = text[:-1].rstrip()
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if (
                text.startswith(left)
                and text.endswith(right)
                and len(text) >= len(left) + len(right)
            ):
                text = text[len(left) : len(text) - len(right)]
    return text.strip()


def _fallback_answer(text: str) -> str | None:
    """The answer after the last "final answer is", "the answer is" or "Answer:" (one line)."""
    best: tuple[int, str] | None = None
    for pattern in _FALLBACKS:
        for match in pattern.finditer(text):
            if best is None or match.start() >= best[0]:
                best = (match.start(), match.group(1))
    if best is None:
        return None
    line = best[1].split("\n", 1)[0]
    span = _MATH_SPAN.search(line)
    if span is not None:
        return next(g for g in span.groups() if g is not None)
    cut = _CLAUSE_END.search(line + " ")
    return line[: cut.start()] if cut else line


def after_thinking(text: str, *, thinking: bool | None = None) -> str | None:
    """The part of a response that may hold its final answer: the text after its last
    ``</think>``; the whole text when it has no think tags and ``thinking`` is not True; None
    when it opened ``<think>`` without closing it, or when ``thinking`` is True (the chat template
    asked for reasoning, and may have opened the block in the prompt) and it has no ``</think>``.
    """
    _, closed, tail = text.rpartition("</think>")
    if closed:
        return tail
    if thinking or "<think>" in text:
        return None
    return text


def extract_answer(text: str, *, thinking: bool | None = None) -> str | None:
    """The final answer of a response (module docstring), cleaned; None if there is none.
    ``thinking``: the model was asked to reason in a ``<think>`` block (:func:`after_thinking`)."""
    if not isinstance(text, str):
        return None
    text = after_thinking(text, thinking=thinking)
    if text is None:
        return None
    found = last_boxed(text)
    if found is None:
        found = _fallback_answer(text)
    if found is None:
        return None
    cleaned = clean_answer(found)
    return cleaned or None


def _as_decimal(text: str) -> Decimal | None:
    if not _PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _fast_verdict(gold: str, answer: str) -> bool | None:
    """True/False where no symbolic work is needed (module docstring, rule 3); None otherwise."""
    if gold == answer:
        return True
    g, a = _as_decimal(gold), _as_decimal(answer)
    if g is None or a is None:
        return None
    if g == a:
        return True
    if g == g.to_integral_value() and a == a.to_integral_value():
        return False
    return None


def _limit_memory(memory_mb: int | None) -> None:
    """Cap this process's address space where the platform allows it (module docstring, rule 2)."""
    if memory_mb is None:
        return
    try:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, AttributeError, ValueError, OSError):
        return


def serve(memory_mb: int | None = None) -> None:
    """The worker's loop (run by :class:`MathVerifier` in a child interpreter): read JSON lines
    ``[gold, answer]`` on stdin, write ``true``/``false`` lines on stdout; EOF stops it."""
    out = sys.stdout
    sys.stdout = sys.stderr
    _limit_memory(memory_mb)
    # math-verify warns once when its own signal-based timeouts are off; ours is the kill.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from math_verify import parse, verify

    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        gold, answer = json.loads(line)
        try:
            verdict = bool(
                verify(
                    parse(f"${gold}$", parsing_timeout=None),
                    parse(f"${answer}$", parsing_timeout=None),
                    timeout_seconds=None,
                )
            )
        except (Exception, RecursionError, MemoryError):  # any failure on odd input scores 0
            verdict = False
        out.write("true\n" if verdict else "false\n")
        out.flush()


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


def _pump(stream: IO[str], replies: queue.SimpleQueue[str | None]) -> None:
    """Forward the worker's reply lines to ``replies``; None at EOF (the worker died)."""
    for line in stream:
        replies.put(line.strip())
    replies.put(None)


class _Worker:
    """A child interpreter running :func:`serve`, and a thread reading its replies.

    A plain subprocess (not ``multiprocessing``), so that no main module is re-imported: it works
    from scripts without a ``__main__`` guard and from notebooks. Killed when collected.
    """

    def __init__(self, memory_mb: int | None) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from dasd.verify import serve; serve({memory_mb!r})"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.replies: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(
            target=_pump, args=(self.process.stdout, self.replies), daemon=True
        ).start()
        self.ready = False
        self._finalizer = weakref.finalize(self, _stop, self.process)

    def wait_ready(self) -> None:
        if self.ready:
            return
        try:
            reply = self.replies.get(timeout=_WORKER_START_S)
        except queue.Empty:
            reply = None
        if reply != "ready":
            self.stop()
            raise RuntimeError(
                "math-verify worker did not start; install it with `pip install math-verify` "
                "and check that `python -c 'import math_verify'` works"
            )
        self.ready = True

    def ask(self, gold: str, answer: str, timeout_s: float) -> bool | None:
        """The verdict, or None if the worker overran ``timeout_s`` or died."""
        try:
            self.process.stdin.write(json.dumps([gold, answer]) + "\n")
            self.process.stdin.flush()
            reply = self.replies.get(timeout=timeout_s)
        except (OSError, queue.Empty):
            return None
        return None if reply is None else reply == "true"

    def stop(self) -> None:
        self._finalizer()


class MathVerifier:
    """Symbolic answer checking with ``math-verify`` in a worker process under a time limit.

    Args:
        timeout_s: wall-clock limit per answer (parse both, compare), in seconds.
        memory_mb: address-space cap of the worker in MiB (None: no cap).

    The worker starts on the first comparison that needs it and is reused; one that overruns
    the limit or dies is killed and a fresh one is started at once. ``n_timeouts`` counts the
    answers that hit the limit. Safe to call from several threads (calls are serialised).
    Use as a context manager, or call :meth:`close`, to stop the worker early; it is killed
    anyway when the verifier is collected or the interpreter exits.
    """

    def __init__(self, *, timeout_s: float = 5.0, memory_mb: int | None = 2048) -> None:
        if not timeout_s > 0:
            raise ValueError(f"verifier timeout_s must be > 0, got {timeout_s}")
        if memory_mb is not None and memory_mb < 256:
            raise ValueError(f"verifier memory_mb must be >= 256 or None, got {memory_mb}")
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        self.n_timeouts = 0
        self._worker: _Worker | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MathVerifier(timeout_s={self.timeout_s}, memory_mb={self.memory_mb})"

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker process (a later comparison starts a new one)."""
        with self._lock:
            if self._worker is not None:
                self._worker.stop()
                self._worker = None

    def equivalent(self, gold: str, answer: str) -> bool:
        """Whether ``answer`` (an extracted final answer) equals ``gold``; False on timeout."""
        gold, answer = clean_answer(str(gold)), clean_answer(str(answer))
        if not gold or not answer or max(len(gold), len(answer)) > MAX_ANSWER_CHARS:
            return False
        fast = _fast_verdict(gold, answer)
        if fast is not None:
            return fast
        with self._lock:
            return self._ask(_UNESCAPED_DOLLAR.sub("", gold), _UNESCAPED_DOLLAR.sub("", answer))

    def score(self, gold: str, response: str, *, thinking: bool | None = None) -> float:
        """1.0 iff the final answer of ``response`` (:func:`extract_answer`, with ``thinking``)
        equals ``gold``."""
        answer = extract_answer(response, thinking=thinking)
        if answer is None:
            return 0.0
        return 1.0 if self.equivalent(gold, answer) else 0.0

    def _ask(self, gold: str, answer: str) -> bool:
        if self._worker is None or self._worker.process.poll() is not None:
            self._worker = _Worker(self.memory_mb)
        self._worker.wait_ready()
        verdict = self._worker.ask(gold, answer, self.timeout_s)
        if verdict is not None:
            return verdict
        if self._worker.process.poll() is None:
            self.n_timeouts += 1
        self._worker.stop()
        self._worker = _Worker(self.memory_mb)
        return False
