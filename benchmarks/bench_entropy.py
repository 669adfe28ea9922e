"""Chunked vs naive per-token entropy + emitted-token log-prob: time and peak extra memory.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_entropy                       # 16,384 x 151,936, bf16
    .venv/bin/python -m benchmarks.bench_entropy --tokens 2048 --vocab 32000

Variants (both under ``torch.no_grad()``, on CPU):

- ``chunked``: ``dasd.entropy.token_entropy_and_logprob(logits, ids, chunk_size=C)``.
- ``naive``: ``tests.naive_entropy.naive_entropy_and_logprob``: one full float32 log_softmax,
  then ``-(exp(logp) * logp).sum(-1)`` and a gather, the formula most code writes.

Logits default to bfloat16 because that is what a real model (Qwen3 in bf16) hands the loss;
the float32 upcast is exactly the cost the chunked version bounds. ``--dtype float32`` shows the
case where the logits themselves are already float32.

How memory is measured. Each variant runs in a fresh subprocess (``--worker``), so one variant's
freed pages or allocator caches cannot hide the other's. The worker fills the logits in place
chunk by chunk (no transient copy), then resets the kernel's peak-RSS counter (``echo 5 >
/proc/self/clear_refs``, Linux >= 4.0), reads ``VmRSS`` as the baseline, runs the variant
``--repeats`` times, and reads the peak ``VmHWM`` from ``/proc/self/status``. "peak extra" is
``VmHWM - baseline``: every byte the computation held at its worst moment beyond the logits and
token ids (torch's CPU allocator returns large blocks to the OS on free, so RSS tracks live
tensors). Where ``clear_refs`` cannot be written, the lifetime peak is used instead, which is
still sound because nothing before the baseline exceeds it by more than one fill chunk; the
table says which method was used.

Memory budget. The naive variant needs about ``tokens * vocab * (itemsize + 12)`` bytes (the
logits, then log_softmax output, its exp and their product in float32 side by side): ~35 GB at
the default size, more than the ``--mem-budget-gb`` (default 22, further capped at 90% of the
machine's MemAvailable). When it does not fit, the naive variant, and the chunked variant a
second time for a like-for-like ratio, are measured at the largest token count that fits (a
multiple of 256), and the output says so; the chunked variant is also measured at the full size.
Time and memory ratios are only ever formed between runs with the same token count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

DTYPES = {"bfloat16": 2, "float16": 2, "float32": 4}
#: Python + torch import + small tensors, measured RSS of an idle worker is ~0.4 GB.
OVERHEAD_BYTES = 1 << 30
#: Extra float32 bytes per logit the naive formula holds at its peak (see the docstring).
NAIVE_EXTRA_PER_ELEM = 12
GIB = 1 << 30


# ---------------------------------------------------------------------------------------------
# worker (one variant, fresh process)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _worker(args: argparse.Namespace) -> None:
    import torch

    from dasd.entropy import token_entropy_and_logprob
    from tests.naive_entropy import naive_entropy_and_logprob

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    n, v = args.tokens, args.vocab
    gen = torch.Generator().manual_seed(0)
    logits = torch.empty(n, v, dtype=dtype)
    for s in range(0, n, 256):  # in place: no full-size float32 transient
        logits[s : s + 256].normal_(0.0, 2.0, generator=gen)
    ids = torch.randint(0, v, (n,), generator=gen)

    if args.worker == "chunked":

        def run():
            return token_entropy_and_logprob(logits, ids, chunk_size=args.chunk_size)
    else:

        def run():
            return naive_entropy_and_logprob(logits, ids)

    reset = _reset_peak_rss()
    base_kib = _status_kib("VmRSS")
    times = []
    with torch.no_grad():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ent, lp = run()
            times.append(time.perf_counter() - t0)
            sums = (float(ent.double().sum()), float(lp.double().sum()))
            del ent, lp
    peak_kib = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "variant": args.worker,
                "tokens": n,
                "vocab": v,
                "dtype": args.dtype,
                "times": times,
                "peak_extra_bytes": max(peak_kib - base_kib, 0) * 1024,
                "logits_bytes": logits.numel() * logits.element_size(),
                "method": "VmHWM after clear_refs" if reset else "lifetime ru_maxrss",
                "entropy_sum": sums[0],
                "logprob_sum": sums[1],
            }
        )
    )


# ---------------------------------------------------------------------------------------------
# parent


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _estimate(variant: str, n: int, v: int, itemsize: int, chunk: int) -> int:
    if variant == "naive":
        return n * v * (itemsize + NAIVE_EXTRA_PER_ELEM) + OVERHEAD_BYTES
    return n * v * itemsize + 2 * min(chunk, n) * v * 4 + OVERHEAD_BYTES


def _largest_fitting(variant: str, n: int, v: int, itemsize: int, chunk: int, budget: int) -> int:
    if _estimate(variant, n, v, itemsize, chunk) <= budget:
        return n
    per_tok = v * (itemsize + (NAIVE_EXTRA_PER_ELEM if variant == "naive" else 0))
    fit = (budget - OVERHEAD_BYTES - (0 if variant == "naive" else 2 * chunk * v * 4)) // per_tok
    return int(fit // 256 * 256)


def _spawn(variant: str, n: int, args: argparse.Namespace) -> dict | None:
    cmd = [
        sys.executable, "-m", "benchmarks.bench_entropy", "--worker", variant,
        "--tokens", str(n), "--vocab", str(args.vocab), "--dtype", args.dtype,
        "--chunk-size", str(args.chunk_size), "--repeats", str(args.repeats),
        "--threads", str(args.threads),
    ]  # fmt: skip
    print(f"  running {variant} at {n:,} tokens ...", flush=True)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        why = " (killed: likely out of memory)" if proc.returncode in (-9, 137) else ""
        print(
            f"  {variant} at {n:,} tokens failed, exit {proc.returncode}{why}: {' | '.join(tail)}"
        )
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_row(r: dict) -> str:
    return (
        f"{r['variant']:<8} {r['tokens']:>8,} {r['vocab']:>8,} {r['dtype']:>9} "
        f"{min(r['times']):>9.3f} {r['peak_extra_bytes'] / GIB:>13.3f} "
        f"{r['peak_extra_bytes'] / r['logits_bytes']:>13.3f}"
    )


def _parser() -> argparse.ArgumentParser:
    """The command line of the benchmark (module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16_384, help="positions N (default 16,384)")
    p.add_argument(
        "--vocab", type=int, default=151_936, help="vocabulary V (default Qwen3's 151,936)"
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bfloat16",
        help="logits dtype (default bfloat16)",
    )
    p.add_argument(
        "--chunk-size", type=int, default=1024, help="positions per chunk (default 1024)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed calls per variant; the table shows the fastest",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)"
    )
    p.add_argument(
        "--mem-budget-gb", type=float, default=22.0, help="RAM the benchmark may use (default 22)"
    )
    p.add_argument("--worker", choices=["chunked", "naive"], help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.worker:
        _worker(args)
        return

    n, v, cs, item = args.tokens, args.vocab, args.chunk_size, DTYPES[args.dtype]
    avail = _mem_available_bytes()
    budget = int(args.mem_budget_gb * 1e9)
    if avail is not None:
        budget = min(budget, int(0.9 * avail))
    print(
        f"entropy + log-prob, {n:,} tokens x {v:,} vocab, {args.dtype} logits "
        f"({n * v * item / GIB:.2f} GiB), chunk {cs}, {os.cpu_count()} CPUs"
    )
    print(
        f"memory budget {budget / 1e9:.1f} GB (--mem-budget-gb {args.mem_budget_gb:g}"
        + (f", 90% of MemAvailable {avail / 1e9:.1f} GB)" if avail is not None else ")")
    )
    if _estimate("chunked", n, v, item, cs) > budget:
        need = _estimate("chunked", n, v, item, cs) / 1e9
        sys.exit(
            f"the chunked variant needs ~{need:.1f} GB at this size; "
            "lower --tokens or raise --mem-budget-gb"
        )
    n_naive = _largest_fitting("naive", n, v, item, cs, budget)
    if n_naive < n:
        print(
            f"NOTE: naive needs ~{_estimate('naive', n, v, item, cs) / 1e9:.1f} GB at {n:,} "
            f"tokens, over budget; naive (and chunked, for the ratios) measured at "
            f"{n_naive:,} tokens instead"
        )

    results = {("chunked", n): _spawn("chunked", n, args)}
    if 0 < n_naive < n:
        results[("chunked", n_naive)] = _spawn("chunked", n_naive, args)
    if n_naive > 0:
        results[("naive", n_naive)] = _spawn("naive", n_naive, args)
    else:
        print("NOTE: naive does not fit even at 256 tokens; not measured")

    _report(results, n_naive, args.repeats)


def _report(results: dict, n_naive: int, repeats: int) -> None:
    """Print the table of ``results`` and, where both variants ran at ``n_naive`` tokens,
    their time and memory ratios and the agreement of their sums."""
    print()
    head = ("variant", "tokens", "vocab", "dtype", "time_s", "peak_extra_GiB", "extra/logits")
    print("{:<8} {:>8} {:>8} {:>9} {:>9} {:>13} {:>13}".format(*head))
    for r in results.values():
        if r is not None:
            print(_fmt_row(r))
    ch, nv = results.get(("chunked", n_naive)), results.get(("naive", n_naive))
    if ch and nv:
        t_ratio = min(nv["times"]) / min(ch["times"])
        m_ratio = nv["peak_extra_bytes"] / max(ch["peak_extra_bytes"], 1)
        dh = abs(ch["entropy_sum"] - nv["entropy_sum"]) / max(abs(nv["entropy_sum"]), 1e-30)
        dl = abs(ch["logprob_sum"] - nv["logprob_sum"]) / max(abs(nv["logprob_sum"]), 1e-30)
        print()
        print(f"at {n_naive:,} tokens (same run, same logits): naive / chunked")
        print(f"  time ratio            {t_ratio:8.2f}x   (fastest of {repeats} calls each)")
        print(f"  peak-extra-mem ratio  {m_ratio:8.2f}x")
        print(f"  results agree: relative difference of sums H {dh:.1e}, log p {dl:.1e}")
    print(f"memory method: {next((r['method'] for r in results.values() if r), 'n/a')}")


if __name__ == "__main__":
    main()
