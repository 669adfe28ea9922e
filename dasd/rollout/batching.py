"""Micro-batching shared by the engines, the scorer and the probes (DESIGN.md section 2).

One place for what every batched pass over prompts or responses repeats: checking the decoding
arguments, cutting N rows into micro-batches (in input order for decoding, longest first for
scoring, so short rows are not padded to the longest of the whole batch), dropping the columns
that are left padding in every row of a micro-batch, and concatenating the micro-batches'
right-padded results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "check_decoding",
    "check_sampling",
    "concat_right_padded",
    "length_sorted_chunks",
    "over_micro_batches",
    "trim_left_padding",
]

T = TypeVar("T")


def check_sampling(temperature: float, top_p: float) -> None:
    """Raise a one-line ``ValueError`` unless ``temperature >= 0`` and ``0 < top_p <= 1``."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def check_decoding(max_new_tokens: int, batch_size: int, temperature: float = 1.0,
                   top_p: float = 1.0) -> None:
    """Raise a one-line ``ValueError`` unless ``max_new_tokens`` and ``batch_size`` are >= 1
    and the sampling settings pass ``check_sampling``: every engine's argument check."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_sampling(temperature, top_p)


def over_micro_batches(n: int, batch_size: int, run: Callable[[slice, int], T],
                       progress: Callable[[int], None] | None = None) -> list[T]:
    """``run(rows, index)`` on consecutive slices ``rows`` of at most ``batch_size`` of ``n``
    rows (``index``: the micro-batch's 0-based number), in order; ``progress`` is called after
    each with its number of rows. Returns the results in order."""
    parts = []
    for index, start in enumerate(range(0, n, batch_size)):
        rows = slice(start, min(start + batch_size, n))
        parts.append(run(rows, index))
        if progress is not None:
            progress(rows.stop - rows.start)
    return parts


def trim_left_padding(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the columns of a left-padded micro-batch ``ids, mask (B, P)`` that are padding in
    every row."""
    first = int(mask.any(0).nonzero()[0])
    return ids[:, first:], mask[:, first:]


def concat_right_padded(parts: Sequence[Tensor], value: float | bool = 0) -> Tensor:
    """Concatenate ``(b_i, t_i)`` tensors along rows, each right-padded with ``value`` to the
    widest ``t_i``."""
    width = max(part.shape[1] for part in parts)
    return torch.cat([nn.functional.pad(p, (0, width - p.shape[1]), value=value) for p in parts])


def length_sorted_chunks(lengths: Tensor, size: int) -> list[Tensor]:
    """Row indices in chunks of at most ``size``, longest ``lengths (N,)`` first (stable among
    equal lengths), so each chunk pads to lengths alike."""
    order = torch.argsort(lengths, descending=True, stable=True)
    return [order[s : s + size] for s in range(0, len(order), size)]
