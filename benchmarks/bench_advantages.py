"""Time ``dasd_advantages`` (vectorized over rows) against the naive one-row-at-a-time loop.

    .venv/bin/python -m benchmarks.bench_advantages [--batch 512] [--tokens 4096] [--repeats 5]
        [--device cpu] [--threads N]

Both run in the same process on the same random float32 batch (right-padded rows of random
length 0..T), interleaved (naive, vectorized, naive, ...) so that a shared machine's load falls
on both alike; each column is the best of ``--repeats`` runs: wall time, and the process's CPU
time (all threads: the work done, which other jobs on the machine disturb far less than wall
time). The table also reports the largest difference between the two results, so a fast wrong
answer cannot pass unnoticed.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from dasd.advantages import dasd_advantages
from tests import naive_advantages


def make_batch(batch: int, tokens: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(group_adv, entropy, student_logp, teacher_logp, mask), float32, random row lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, tokens + 1, (batch,), generator=g)
    mask = torch.arange(tokens)[None, :] < lengths[:, None]
    entropy = torch.rand(batch, tokens, generator=g) * 3.0
    student = -torch.rand(batch, tokens, generator=g) * 4.0
    teacher = student + torch.randn(batch, tokens, generator=g)
    group_adv = torch.randn(batch, generator=g)
    return group_adv, entropy, student, teacher, mask


def best_times(
    fns: list[Callable[[], object]], repeats: int, sync: Callable[[], None]
) -> list[tuple[float, float, object]]:
    """Per function: best wall time, best CPU time (process, all threads) of ``repeats``
    interleaved calls (after one warm-up call each), and its last result."""
    results = [fn() for fn in fns]
    sync()
    wall = [float("inf")] * len(fns)
    cpu = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            w0, c0 = time.perf_counter(), time.process_time()
            results[i] = fn()
            sync()
            wall[i] = min(wall[i], time.perf_counter() - w0)
            cpu[i] = min(cpu[i], time.process_time() - c0)
    return list(zip(wall, cpu, results, strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="rows B (default 512)")
    parser.add_argument("--tokens", type=int, default=4096, help="padded length T (default 4096)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs, best kept (default 5)")
    parser.add_argument("--device", default="cpu",
                        help="device of the vectorized run (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    batch = make_batch(args.batch, args.tokens)
    on_device = [x.to(args.device) for x in batch]
    as_numpy = [x.numpy() for x in batch]
    kw = dict(beta=1.0, rho=0.2)
    sync = torch.cuda.synchronize if on_device[0].is_cuda else (lambda: None)

    (t_naive, c_naive, ref), (t_vec, c_vec, vec) = best_times(
        [lambda: naive_advantages.dasd_advantages(*as_numpy, **kw),
         lambda: dasd_advantages(*on_device, **kw)], args.repeats, sync)
    diff = np.abs(vec.advantages.cpu().numpy() - ref["advantages"]).max()

    n_valid = int(batch[-1].sum())
    threads = torch.get_num_threads()
    print(f"dasd_advantages, B={args.batch} T={args.tokens} float32, {n_valid} valid tokens, "
          f"best of {args.repeats} interleaved; torch {torch.__version__}, {threads} CPU threads; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'implementation':<26}{'device':>8}{'wall (ms)':>11}{'speed-up':>10}"
          f"{'cpu (ms)':>10}{'cpu ratio':>11}")
    print(f"{'naive row loop (numpy)':<26}{'cpu':>8}{t_naive * 1e3:>11.1f}{1.0:>9.1f}x"
          f"{c_naive * 1e3:>10.1f}{1.0:>10.1f}x")
    print(f"{'vectorized (torch)':<26}{args.device:>8}{t_vec * 1e3:>11.1f}{t_naive / t_vec:>9.1f}x"
          f"{c_vec * 1e3:>10.1f}{c_naive / c_vec:>10.1f}x")
    print(f"max |A_hat vectorized - A_hat naive| = {diff:.2e}")


if __name__ == "__main__":
    main()
