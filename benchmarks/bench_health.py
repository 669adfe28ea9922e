"""Time the reasoning-health metrics (``analysis.health``) on synthetic logged rollouts.

    .venv/bin/python -m benchmarks.bench_health [--responses 100000] [--k 16]
        [--profile countdown|math|all] [--median-words 500] [--seed 0] [--keep DIR]

Per profile it generates ``--responses`` rollout rows (``--k`` per prompt), writes them as one
run directory (``dasd.runlog``), then measures two things, each once, in this process:

* ``health_metrics``: the pure function the trainer calls, on the in-memory DataFrame;
* ``analyze_runs``: what ``dasd-analyze health RUN`` does (read the Parquet file, fill
  nothing, compute the metrics).

It prints responses/s and words/s (wall time), the wall and CPU seconds, and memory: the peak resident set (VmHWM, reset
before each measurement through /proc/self/clear_refs where the kernel allows) above the RSS
before the call, and the tracemalloc peak (Python objects and numpy arrays; Arrow's own buffers
are not traced). The brief's bar is 5,000 responses/s on 100,000 responses.

Profiles ("realistic lengths and marker rates"):

* ``countdown``: the built-in world's solver traces (``CountdownTask.sft_examples``, plain
  prompts): ~7 words, half with a marker line ("wait, 31 is not 29").
* ``math``: long free-form reasoning like Qwen3's on math benchmarks: lengths log-normal with
  median ``--median-words`` (default 500; sigma 0.7, so mean ~640 and p99 ~2,500 words), capped
  at 6,000 words (about the paper's 8,192-token limit); Zipf-distributed words from a
  4,000-word vocabulary, LaTeX-ish tokens and numbers; epistemic markers at ~4 per 1,000 words
  (the paper's Table 3 E(y) is 0.7-4.3); after 60% of markers the text moves on (a revision),
  after the rest it repeats the 30 words before the marker; responses to one prompt share about
  a third of their text (so Dist-3 lands near the paper's 0.5-0.8). AIME-length traces
  (~3,000-4,500 words) can be timed with ``--median-words 3500``; the cost per word is the same.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.health import analyze_runs

from dasd.health import health_metrics
from dasd.runlog import create_run

_MATH_WORDS = (
    "the", "of", "and", "we", "is", "a", "to", "so", "that", "let", "this", "then", "it",
    "for", "with", "be", "are", "now", "number", "sum", "value", "since", "therefore", "gives",
    "equation", "solve", "find", "compute", "first", "term", "integer", "divisible", "by",
    "$x$", "$y$", "$n$", "$k$", "=", "+", "-", "\\cdot", "\\frac{1}{2}", "x^2", "(x+1)",
    "\\sqrt{2}", "mod", "remainder", "digits", "triangle", "angle", "side", "area", "probability",
    "case", "cases", "substitute", "simplify", "factor", "roots", "polynomial", "coefficient",
)
_MARKERS = ("Wait,", "Hmm,", "Alternatively,", "But wait,", "maybe", "Actually,", "Let me check",
            "perhaps", "It seems")
_MARKER_RATE = 0.004  # per word
_REVISION_SHARE = 0.6
_SHARED_SHARE = 0.35  # of a response copied from its prompt's common text


def _vocab(size: int, rng: np.random.Generator) -> np.ndarray:
    extra = [f"w{i}" for i in range(size - len(_MATH_WORDS) - 1000)]
    numbers = [str(n) for n in rng.integers(0, 10_000, 1000)]
    return np.array([*_MATH_WORDS, *numbers, *extra], dtype=object)


def make_math_rollouts(n: int, k: int, *, median_words: int = 500, seed: int = 0
                       ) -> pd.DataFrame:
    """``n`` synthetic long-reasoning rollout rows, ``k`` per prompt (module docstring)."""
    rng = np.random.default_rng(seed)
    vocab = _vocab(4000, rng)
    ranks = np.arange(1, len(vocab) + 1, dtype=np.float64)
    zipf = (1 / ranks) / np.sum(1 / ranks)
    lengths = np.clip(rng.lognormal(np.log(median_words), 0.7, n), 20, 6000).astype(np.int64)
    n_prompts = -(-n // k)
    common = [rng.choice(len(vocab), size=3000, p=zipf) for _ in range(n_prompts)]
    responses, step_correct = [], []
    for i in range(n):
        L = int(lengths[i])
        idx = rng.choice(len(vocab), size=L, p=zipf)
        shared = int(L * _SHARED_SHARE)
        if shared:
            src = common[i // k]
            at = int(rng.integers(0, max(1, len(src) - shared)))
            put = int(rng.integers(0, L - shared + 1))
            idx[put : put + shared] = src[at : at + shared][: L - put]
        tokens = vocab[idx].tolist()
        n_markers = rng.binomial(L, _MARKER_RATE)
        for pos in np.sort(rng.integers(0, L, n_markers)):
            tokens[pos] = _MARKERS[int(rng.integers(len(_MARKERS)))]
            if rng.random() > _REVISION_SHARE and pos >= 30:  # repeat instead of revising
                tail = tokens[pos - 30 : pos]
                tokens[pos + 1 : pos + 31] = tail[: max(0, len(tokens) - pos - 1)]
                del tokens[L:]
        responses.append(" ".join(tokens))
        n_steps = max(1, L // 40)
        step_correct.append(rng.random(n_steps) < 0.8)
    return _frame(responses, k, step_correct, tokens_per_word=1.35, rng=rng)


def make_countdown_rollouts(n: int, k: int, *, seed: int = 0) -> pd.DataFrame:
    """``n`` rollout rows of the built-in world's solver traces, ``k`` per prompt."""
    from dasd.tasks import get_task

    task = get_task("countdown")
    examples = task.sft_examples(n, seed=seed, privileged_fraction=0.0)
    responses = [response for _, response in examples]
    steps = [np.asarray(task.judge_steps(p, r), dtype=bool) for p, r in
             zip(task.sample(n, split="train", seed=seed), responses)]
    return _frame(responses, k, steps, tokens_per_word=4.0, rng=np.random.default_rng(seed))


def _frame(responses: list[str], k: int, step_correct: list[np.ndarray], *,
           tokens_per_word: float, rng: np.random.Generator) -> pd.DataFrame:
    n = len(responses)
    prompt = np.arange(n) // k
    difficulty = rng.random(prompt.max() + 1)
    correct = rng.random(n) > difficulty[prompt]
    n_words = np.fromiter((len(r.split()) for r in responses), dtype=np.int64, count=n)
    return pd.DataFrame({
        "step": np.zeros(n, dtype=np.int64),
        "split": ["eval"] * n,
        "prompt_id": [f"p{p:06d}" for p in prompt],
        "sample_idx": (np.arange(n) % k).astype(np.int32),
        "prompt": [f"problem {p}" for p in prompt],
        "response": responses,
        "answer": ["42"] * n,
        "reward": correct.astype(np.float64),
        "correct": correct,
        "n_tokens": np.maximum(1, np.round(n_words * tokens_per_word)).astype(np.int32),
        "step_correct": step_correct,
    })


# --------------------------------------------------------------------------- measuring


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(fn: Callable[[], object]) -> dict[str, float]:
    """Wall time, peak RSS above the starting RSS (MiB) and tracemalloc peak (MiB) of fn()."""
    gc.collect()
    reset = _reset_peak_rss()
    before = _rss_kib("VmRSS")
    tracemalloc.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _rss_kib("VmHWM")
    extra = (peak - before) / 1024 if reset and peak is not None and before is not None \
        else float("nan")
    # tracemalloc slows Python-level allocation; time again without it.
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    seconds = min(seconds, time.perf_counter() - start)
    return {"seconds": seconds, "cpu_seconds": time.process_time() - cpu,
            "peak_rss_mib": extra, "traced_mib": traced / 2**20}


def _analyze(run_dir: Path) -> None:
    report = analyze_runs([run_dir])
    assert report.analysed, report.issues


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=100_000,
                        help="rollout rows per profile (default 100000)")
    parser.add_argument("--k", type=int, default=16, help="responses per prompt (default 16)")
    parser.add_argument("--profile", choices=("countdown", "math", "all"), default="all")
    parser.add_argument("--median-words", type=int, default=500,
                        help="median response length of the math profile (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the run directories here and keep them (default: a temp dir)")
    args = parser.parse_args(argv)

    profiles = ("countdown", "math") if args.profile == "all" else (args.profile,)
    root_ctx = tempfile.TemporaryDirectory() if args.keep is None else None
    root = Path(root_ctx.name) if root_ctx else args.keep
    rows = []
    try:
        for profile in profiles:
            t0 = time.perf_counter()
            frame = (make_countdown_rollouts(args.responses, args.k, seed=args.seed)
                     if profile == "countdown" else
                     make_math_rollouts(args.responses, args.k,
                                        median_words=args.median_words, seed=args.seed))
            n_words = int(sum(len(r.split()) for r in frame["response"]))
            text_mib = sum(map(len, frame["response"])) / 2**20
            run_dir = root / f"bench-{profile}"
            with create_run(run_dir, kind="eval", config={"profile": profile}, seed=args.seed,
                            model="synthetic", task="synthetic") as run:
                run.write_rollouts(0, "eval", frame)
            made = time.perf_counter() - t0
            print(f"{profile}: {len(frame):,} responses, {n_words / len(frame):.0f} words "
                  f"each on average ({text_mib:.0f} MiB of text), generated in {made:.0f} s")
            metrics = health_metrics(frame)
            for what, fn in (("health_metrics", partial(health_metrics, frame)),
                             ("analyze_runs", partial(_analyze, run_dir))):
                stats = measure(fn)
                rows.append((profile, what, len(frame), n_words, stats))
            print("  metrics: " + ", ".join(f"{k}={metrics[k]:.3g}" for k in
                                             ("ey_density", "rev_rate", "dist3", "step_acc")))
            del frame
    finally:
        if root_ctx:
            root_ctx.cleanup()

    print()
    header = (f"{'profile':<10} {'what':<15} {'responses':>10} {'resp/s':>9} {'Mwords/s':>9} "
              f"{'seconds':>8} {'CPU s':>6} {'peak RSS +MiB':>14} {'traced MiB':>11}")
    print(header)
    print("-" * len(header))
    for profile, what, n, n_words, s in rows:
        print(f"{profile:<10} {what:<15} {n:>10,} {n / s['seconds']:>9,.0f} "
              f"{n_words / s['seconds'] / 1e6:>9.2f} {s['seconds']:>8.2f} "
              f"{s['cpu_seconds']:>6.2f} {s['peak_rss_mib']:>14.0f} {s['traced_mib']:>11.0f}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n(CPU: {os.cpu_count()} cores, load average {load:.1f}; resp/s is wall time; "
          "CPU s counts every thread of this process; bar: 5,000 responses/s)")


if __name__ == "__main__":
    main()
