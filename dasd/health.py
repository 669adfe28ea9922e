"""Reasoning-health metrics over logged rollouts (paper section 3 and 5, Table 3; appendix F).

Execution (from per-step correctness, ``step_correct``: one bool per parsed reasoning step):

* ``step_acc``: mean over responses with at least one step of (correct steps / steps).
* ``csr``: all correct steps / all steps, pooled over responses.
* ``fes``: mean over responses with at least one step of the 1-based index of the first
  incorrect step, counting ``n_steps + 1`` when every step is correct.

Exploration (from the response text):

* ``ey_density``: epistemic markers (``dasd.markers``: whole words or phrases,
  case-insensitive) per 1,000 whitespace words of a response, averaged over responses.
* ``rev_rate``: fraction of responses that revise: a response revises when at least one of
  its marker occurrences is followed by a substantively different continuation, i.e. the
  (up to) 30 words after the marker share at most 30% of their word trigrams with the (up to)
  30 words before it: ``|T(after) ∩ T(before)| / |T(after)| <= 0.3``.
* ``dist3``: per prompt, distinct / total word trigrams over its k responses; mean over
  prompts.

Outcome: ``avg_at_k``, ``pass_at_k`` (unbiased, ``dasd.passk``), ``length_tokens`` (mean
``n_tokens``).

Decisions the paper leaves open (appendix F gives only the one-line definitions above):

1. Words are ``text.lower().split()``: Python's whitespace split (every Unicode whitespace),
   lowercased, punctuation kept ("wait," and "wait" are different words). Trigrams are
   consecutive word triples within one response, never across responses.
2. Marker occurrences are those of ``dasd.markers.find_markers`` on the original text
   (non-overlapping, left to right). A response with no words has E(y) density 0 (it has no
   marker either) and is still counted in the average.
3. Revision windows: the marker's occurrence is located in the whitespace words; "before" is
   the 30 words preceding the word where the marker starts, "after" the 30 words following
   the word where it ends (a marker glued to other characters, "(wait," or "x.Wait", belongs
   to that word; the marker's own words are in neither window). Windows are cut at the ends
   of the response. T(.) is the set of distinct trigrams of a window. Any occurrence
   qualifies. An occurrence with empty T(after) (fewer than 3 words after it) is not a
   revision; one with empty T(before) (fewer than 3 words before it) and non-empty T(after)
   has overlap 0 and is a revision, as the formula says.
4. ``rev_rate`` and ``ey_density`` average over all responses; ``step_acc`` and ``fes`` over
   responses with at least one judged step (a response whose ``step_correct`` is missing is
   left out of all three step metrics); ``dist3`` over prompts with at least one trigram.
5. Prompts are the groups of rows with equal ``prompt_id`` (and equal ``step``/``split``
   when those columns are present); ``k`` for Pass@k defaults to the smallest number of
   samples of any prompt.
6. Step correctness comes from the ``step_correct`` column. Where it is missing,
   :func:`analysis.health.resolve_step_correct` asks the run's task for its step judge, when the task can
   rebuild the problem from the logged row (Countdown: from ids such as ``cd-3-7-8-29``;
   see ``Task.problem_from_row``); otherwise the step metrics are NaN and a note says why.

Speed: the per-response functions (:func:`words`, :func:`trigrams`, :func:`ey_density`,
:func:`revises`, :func:`distinct_3`) are the plain reference definitions; the batch path
(:func:`response_health`, :func:`health_metrics`) computes the same numbers vectorized, over
chunks of whole prompts (about 8 M characters each, which bounds memory): word boundaries
come from a whitespace lookup table over the chunk's code points (numpy), the words are cut
out of its UTF-8 bytes into one Arrow string array and interned by ``dictionary_encode``
(Arrow's own ``utf8_split_whitespace`` is not used: in pyarrow 26 it sometimes returned
garbage tokens after trailing whitespace), a trigram is one int64 key of three word ids,
Dist-3 counts distinct keys per prompt (one small hash table each), and the revision test
compares every marker's two windows of keys as one integer array. Markers: with single-word
markers (the default list), every occurrence lies inside one whitespace word, so the regex
runs once per distinct word of the chunk; otherwise ``str.find`` candidates in the
lowercased text are confirmed by the markers module's regex at each position. Both give
exactly ``find_markers``' matches; texts where lowercasing could change a match (those
holding 'İ', 'ı' or 'ſ'), texts with lone surrogates and non-ASCII marker lists take slower
exact paths. Tests check the batch path against the reference functions on random texts.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dasd.markers import DEFAULT_MARKERS, _pattern, find_markers
from dasd.passk import avg_at_k, pass_at_k, per_prompt_counts


__all__ = [
    "DEFAULT_MARKERS",
    "HEALTH_COLUMNS",
    "METRIC_COLUMNS",
    "REV_MAX_OVERLAP",
    "REV_WINDOW",
    "distinct_3",
    "ey_density",
    "first_error_step",
    "health_metrics",
    "pass_k_values",
    "response_health",
    "revises",
    "trigrams",
    "words",
]

#: Words on each side of a marker that the revision test compares (appendix F: 30).
REV_WINDOW = 30
#: Largest trigram overlap |T(after) ∩ T(before)| / |T(after)| that still counts as a revision.
REV_MAX_OVERLAP = 0.3

#: Metric keys of :func:`health_metrics`, in order.
METRIC_COLUMNS: tuple[str, ...] = (
    "n_prompts", "n_responses", "k", "avg_at_k", "pass_at_k", "step_acc", "fes", "csr",
    "ey_density", "rev_rate", "dist3", "length_tokens",
)
#: Columns of the ``dasd-analyze health`` table and CSV, in order.
HEALTH_COLUMNS: tuple[str, ...] = ("run", "step", "split", *METRIC_COLUMNS)

# Characters that ``re.IGNORECASE`` matches to an ASCII letter although ``str.lower`` does not
# map them to it (and 'İ', the one character whose lowercase is two characters). Texts holding
# one of them take the exact regex path for markers. tests/test_health.py recomputes the set.
_CASE_TRAPS = "\u0130\u0131\u017f"  # İ ı ſ

# Python's whitespace (str.isspace) as a lookup table over code points 0..0x3000 (the largest
# whitespace code point), plus one False entry that every larger code point is clipped to.
_WS_MAX = 0x3001
_WS_TABLE = np.zeros(_WS_MAX + 1, dtype=bool)
_WS_TABLE[[c for c in range(_WS_MAX) if chr(c).isspace()]] = True

# Texts per chunk of the batch path are cut at prompt boundaries near this many characters
# (bounds the memory of the word and trigram arrays).
_CHUNK_CHARS = 1 << 23
# Marker occurrences compared per block in the vectorized revision test.
_MARKER_BLOCK = 4096


# --------------------------------------------------------------------------- reference pieces


def words(text: str) -> list[str]:
    """The response's words: ``text.lower().split()`` (decision 1)."""
    return text.lower().split()


def trigrams(tokens: Sequence[str]) -> list[tuple[str, str, str]]:
    """Consecutive word triples of ``tokens`` (empty when fewer than three words)."""
    return list(zip(tokens, tokens[1:], tokens[2:]))


def _check_markers(markers: Sequence[str]) -> tuple[str, ...]:
    if isinstance(markers, str):
        raise ValueError(f"markers must be a sequence of words or phrases, got the string "
                         f"{markers!r}; wrap it in a list")
    markers = tuple(markers)
    if not markers:
        raise ValueError("markers is empty; give at least one marker word or phrase")
    for marker in markers:
        if not isinstance(marker, str) or not marker.split():
            raise ValueError(f"marker {marker!r} is empty; every marker needs a word")
    return markers


def ey_density(text: str, markers: Sequence[str] = DEFAULT_MARKERS) -> float:
    """Epistemic markers per 1,000 whitespace words of ``text`` (0.0 for a text with no words).

    >>> ey_density("wait , that is wrong")
    200.0
    """
    n_words = len(text.split())
    if n_words == 0:
        return 0.0
    return 1000.0 * len(find_markers(text, _check_markers(markers))) / n_words


def _check_revision_args(window: int, max_overlap: float) -> None:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive number of words, got {window!r}")
    if not 0.0 <= float(max_overlap) <= 1.0:
        raise ValueError(f"max_overlap must be in [0, 1], got {max_overlap!r}")


def revises(
    text: str,
    markers: Sequence[str] = DEFAULT_MARKERS,
    *,
    window: int = REV_WINDOW,
    max_overlap: float = REV_MAX_OVERLAP,
) -> bool:
    """Whether ``text`` revises: some marker occurrence whose next ``window`` words share at
    most ``max_overlap`` of their distinct trigrams with the ``window`` words before it
    (module docstring, decision 3).

    >>> revises("7*3=21 then 21+8=29 wait , try 8*3=24 then add 7")
    True
    >>> revises("a b c d wait a b c d")
    False
    """
    markers = _check_markers(markers)
    _check_revision_args(window, max_overlap)
    matches = find_markers(text, markers)
    if not matches:
        return False
    tokens = words(text)
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    for match in matches:
        first = bisect_right(starts, match.start()) - 1  # word where the marker starts
        last = bisect_right(starts, match.end() - 1) - 1  # word where it ends
        after = set(trigrams(tokens[last + 1 : last + 1 + window]))
        if not after:
            continue
        before = set(trigrams(tokens[max(0, first - window) : first]))
        if len(after & before) / len(after) <= max_overlap:
            return True
    return False


def distinct_3(texts: Iterable[str]) -> float:
    """Distinct / total word trigrams over ``texts`` (one prompt's responses); NaN when they
    hold no trigram.

    >>> distinct_3(["a b c d", "a b c"])
    0.6666666666666666
    """
    grams = [g for text in texts for g in trigrams(words(text))]
    return len(set(grams)) / len(grams) if grams else math.nan


def first_error_step(step_correct: Sequence[bool]) -> int:
    """1-based index of the first incorrect step; ``len + 1`` when every step is correct.

    >>> first_error_step([True, False, True]), first_error_step([True, True])
    (2, 3)
    """
    for i, ok in enumerate(step_correct):
        if not ok:
            return i + 1
    return len(step_correct) + 1


def pass_k_values(n: int) -> list[int]:
    """1, 2, 4, ... below ``n``, then ``n`` itself: the default Pass@k sweep for n samples."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [*(1 << i for i in range(n.bit_length()) if (1 << i) < n), n]


# --------------------------------------------------------------------------- batch path


class _MarkerFinder:
    """``find_markers``' occurrences, found fast (both ways need ASCII markers and a text
    without the characters of ``_CASE_TRAPS``, so that IGNORECASE matching on the text is
    plain matching on its lowercase, position for position):

    * :meth:`spans`: ``str.find`` candidates for a marker's first word in the lowercased
      text, each confirmed by the markers module's regex (exactly ``finditer``'s matches);
    * :meth:`vocab_counts`: with single-word markers only, every occurrence lies inside one
      whitespace word (the regex's boundaries are non-word characters, and whitespace is one),
      so occurrences are counted once per distinct word of the vocabulary.
    """

    def __init__(self, markers: tuple[str, ...]) -> None:
        self.pattern = _pattern(markers)
        self.fast = all(m.isascii() for m in markers)
        self.single_words = self.fast and all(len(m.split()) == 1 for m in markers)
        self.firsts = sorted({m.split()[0].lower() for m in markers})

    def vocab_counts(self, vocabulary: pa.Array) -> np.ndarray:
        """Occurrences inside each (lowercased) word of ``vocabulary`` (single-word markers)."""
        hit = pc.match_substring(vocabulary, self.firsts[0])
        for word in self.firsts[1:]:
            hit = pc.or_(hit, pc.match_substring(vocabulary, word))
        counts = np.zeros(len(vocabulary), dtype=np.int64)
        for i in np.flatnonzero(hit.to_numpy(zero_copy_only=False)):
            counts[i] = len(self.pattern.findall(vocabulary[int(i)].as_py()))
        return counts

    def spans(self, text: str, low: str) -> list[tuple[int, int]]:
        """(start, end) of every marker occurrence in ``text`` (``low`` is ``text.lower()``)."""
        if not self.fast or (not text.isascii() and any(c in text for c in _CASE_TRAPS)):
            return [m.span() for m in self.pattern.finditer(text)]
        # Every match starts where ``low`` holds a marker's first word: the text has no
        # character that IGNORECASE folds onto an ASCII letter differently from str.lower,
        # and each character lowercases to one character, so positions agree.
        candidates: list[int] = []
        for word in self.firsts:
            at = low.find(word)
            while at >= 0:
                candidates.append(at)
                at = low.find(word, at + 1)
        if not candidates:
            return []
        candidates.sort()
        match = self.pattern.match
        out: list[tuple[int, int]] = []
        end = 0
        for at in candidates:  # as finditer: leftmost match at or after the previous end
            if at < end:
                continue
            found = match(text, at)
            if found is not None:
                end = found.end()
                out.append((at, end))
        return out


def _space_mask(text: str) -> np.ndarray:
    """Per character of ``text``: is it whitespace (``str.isspace``)?"""
    if text.isascii():
        return _WS_TABLE[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    chars = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return _WS_TABLE[np.minimum(chars, _WS_MAX)]


def _word_bounds(space: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) character offsets of the maximal non-whitespace runs."""
    word = ~space
    start = word.copy()
    start[1:] &= space[:-1]
    end = word  # reuse: last character of each run
    end[:-1] &= space[1:]
    return np.flatnonzero(start), np.flatnonzero(end) + 1


def _intern_words(low: str, space: np.ndarray, starts: np.ndarray, ends: np.ndarray
                  ) -> tuple[np.ndarray, pa.Array] | None:
    """Interned ids of the words ``low[starts[i]:ends[i]]`` and the vocabulary (id -> word),
    by Arrow (one string array of the words, cut out of the UTF-8 bytes, then
    dictionary-encoded); None when ``low`` has no UTF-8 form (a lone surrogate)."""
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64), pa.array([], type=pa.large_string())
    try:
        data = np.frombuffer(low.encode("utf-8"), dtype=np.uint8)
    except UnicodeEncodeError:
        return None
    if len(data) == len(space):  # ASCII: one byte per character
        keep = ~space
        byte_start, byte_end = starts, ends
    else:
        chars = np.frombuffer(low.encode("utf-32-le"), dtype=np.uint32)
        width = (1 + (chars >= 0x80) + (chars >= 0x800) + (chars >= 0x10000)).astype(np.int64)
        keep = np.repeat(~space, width)
        position = np.concatenate(([0], np.cumsum(width)))  # byte offset of each character
        byte_start, byte_end = position[starts], position[ends]
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(byte_end - byte_start, out=offsets[1:])
    words_array = pa.LargeStringArray.from_buffers(
        len(starts), pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data[keep])))
    encoded = pc.dictionary_encode(words_array)
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary


def _intern_words_python(lows: Iterable[str]) -> tuple[np.ndarray, int]:
    vocab: dict[str, int] = {}
    codes = [vocab.setdefault(w, len(vocab)) for low in lows for w in low.split()]
    return np.asarray(codes, dtype=np.int64), len(vocab)


def _trigram_keys(codes: np.ndarray, vocab: int) -> np.ndarray:
    """An int64 key per word position p (the trigram of words p, p+1, p+2; positions
    0..len-3): equal keys iff equal trigrams."""
    if len(codes) < 3:
        return np.zeros(0, dtype=np.int64)
    v = np.int64(max(vocab, 1))
    if v < (1 << 21):  # v**3 fits in int64: the key is the triple itself
        return (codes[:-2] * v + codes[1:-1]) * v + codes[2:]
    bigram = pd.factorize(codes[:-1] * v + codes[1:])[0].astype(np.int64)
    return bigram[:-1] * v + codes[2:]


def _distinct_per_segment(keys: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Number of distinct values in each ``keys[bounds[i]:bounds[i+1]]`` (one small hash table
    per segment: they stay in cache, unlike one table over every key of the chunk)."""
    return np.fromiter((len(pd.unique(keys[a:b])) if b > a else 0
                        for a, b in pairwise(bounds)),
                       dtype=np.int64, count=len(bounds) - 1)


def _gather(tri: np.ndarray, first: np.ndarray, count: np.ndarray, width: int, fill: int
            ) -> np.ndarray:
    """Rows ``tri[first : first + count]`` padded with ``fill`` to ``width`` columns."""
    cols = np.arange(width)
    valid = cols[None, :] < count[:, None]
    idx = np.where(valid, first[:, None] + cols[None, :], 0)
    return np.where(valid, tri[idx] if len(tri) else fill, fill)


def _revising_markers(tri: np.ndarray, first: np.ndarray, last: np.ndarray, lo: np.ndarray,
                      hi: np.ndarray, window: int, max_overlap: float) -> np.ndarray:
    """Per marker occurrence (word where it starts/ends, its response's word range [lo, hi)):
    whether its windows pass the revision test (decision 3). ``tri[p]`` is the id of the
    trigram starting at word p."""
    width = window - 2
    out = np.zeros(len(first), dtype=bool)
    if width <= 0:
        return out
    after_first = last + 1
    after_n = np.clip(np.minimum(window, hi - after_first) - 2, 0, None)
    before_first = np.maximum(lo, first - window)
    before_n = np.clip(first - before_first - 2, 0, None)
    for s in range(0, len(first), _MARKER_BLOCK):
        blk = slice(s, s + _MARKER_BLOCK)
        after = np.sort(_gather(tri, after_first[blk], after_n[blk], width, -1), axis=1)
        before = _gather(tri, before_first[blk], before_n[blk], width, -2)
        distinct = after >= 0
        distinct[:, 1:] &= after[:, 1:] != after[:, :-1]
        shared = (after[:, :, None] == before[:, None, :]).any(axis=2) & distinct
        n_after = distinct.sum(axis=1)
        n_shared = shared.sum(axis=1)
        out[blk] = (n_after > 0) & (n_shared / np.maximum(n_after, 1) <= max_overlap)
    return out


@dataclass
class _TextStats:
    n_words: np.ndarray  # per response
    n_markers: np.ndarray
    revises: np.ndarray
    tri_distinct: np.ndarray  # per group
    tri_total: np.ndarray


def _chunk_bounds(lengths: np.ndarray, groups: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) slices of responses sorted by group, cut at group changes after about
    ``_CHUNK_CHARS`` characters."""
    ends = np.cumsum(lengths + 1)
    cuts = np.flatnonzero(np.diff(groups) != 0) + 1  # first row of each new group
    bounds, start, used = [], 0, 0
    for cut in cuts:
        if ends[cut - 1] - used >= _CHUNK_CHARS:
            bounds.append((start, int(cut)))
            start, used = int(cut), int(ends[cut - 1])
    if start < len(lengths):
        bounds.append((start, len(lengths)))
    return bounds


def _plain_case(joined: str, low: str) -> bool:
    """Whether IGNORECASE matching on ``joined`` is plain matching on ``low``, position for
    position (for ASCII markers)."""
    return len(low) == len(joined) and (
        joined.isascii() or not any(c in joined for c in _CASE_TRAPS))


def _marker_spans(finder: _MarkerFinder, chunk: list[str], joined: str, low: str,
                  base: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner response, (start, end) in ``joined``) of every marker occurrence of the chunk."""
    if finder.fast and _plain_case(joined, low):  # one candidate search over the whole chunk
        spans = finder.spans(joined, low)
        flat = np.array(spans, dtype=np.int64).reshape(-1, 2)
        owner = np.searchsorted(base, flat[:, 0], side="right") - 1
        # A phrase marker can match across the newline between two texts: redo those texts.
        crossing = flat[:, 1] > base[owner] + lengths[owner]
        redo = np.unique(np.concatenate((owner[crossing], owner[crossing] + 1)))
        redo = redo[redo < len(chunk)]
    else:
        flat, owner = np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
        redo = np.arange(len(chunk))
    if len(redo):
        keep = ~np.isin(owner, redo)
        parts = [finder.spans(chunk[r], chunk[r].lower()) for r in redo]
        extra = np.array([se for sp in parts for se in sp], dtype=np.int64).reshape(-1, 2)
        extra_owner = np.repeat(redo, [len(sp) for sp in parts])
        flat = np.concatenate((flat[keep], extra + base[extra_owner][:, None]))
        owner = np.concatenate((owner[keep], extra_owner))
    return owner, flat


def _text_stats(texts: pd.Series, groups: np.ndarray, n_groups: int,
                markers: tuple[str, ...], window: int, max_overlap: float) -> _TextStats:
    """Per-response word and marker counts and revision flags, and per-group trigram counts,
    of ``texts`` (a Series of str; Python strings are made one chunk at a time)."""
    finder = _MarkerFinder(markers)
    n = len(texts)
    if not pd.api.types.is_string_dtype(texts.dtype) and n:
        bad = texts[~texts.map(lambda t: isinstance(t, str))]
        if len(bad):
            raise ValueError(f"response {bad.index[0]!r} is {type(bad.iloc[0]).__name__}, "
                             "not text")
    if texts.isna().any():
        raise ValueError(f"response {texts.index[texts.isna()][0]!r} is missing, not text")
    stats = _TextStats(
        n_words=np.zeros(n, dtype=np.int64), n_markers=np.zeros(n, dtype=np.int64),
        revises=np.zeros(n, dtype=bool), tri_distinct=np.zeros(n_groups, dtype=np.int64),
        tri_total=np.zeros(n_groups, dtype=np.int64),
    )
    order = np.argsort(groups, kind="stable")
    all_lengths = texts.str.len().to_numpy(dtype=np.int64) if n else np.zeros(0, np.int64)
    for start, stop in _chunk_bounds(all_lengths[order], groups[order]):
        rows = order[start:stop]
        chunk = texts.iloc[rows].tolist()
        lengths = all_lengths[rows]
        # The chunk as one string: texts joined by newlines (whitespace, so no word spans two
        # texts); base[r] is where text r starts.
        joined = "\n".join(chunk)
        base = np.concatenate(([0], np.cumsum(lengths + 1)))
        low = joined.lower()
        space = _space_mask(joined)
        starts, ends = _word_bounds(space)
        n_words = np.diff(np.searchsorted(starts, base))
        if len(low) == len(joined):  # lowercasing kept every character a single character
            interned = _intern_words(low, space, starts, ends)
        else:  # 'İ' became two characters: the words are the same, their offsets are not
            low_space = _space_mask(low)
            interned = _intern_words(low, low_space, *_word_bounds(low_space))
        if interned is not None:
            codes, vocabulary = interned
            vocab = len(vocabulary)
        else:
            codes, vocab = _intern_words_python(t.lower() for t in chunk)
            vocabulary = None
        stats.n_words[rows] = n_words
        # Trigrams: the one starting at word p is valid when p + 2 lies in the same response.
        # Rows are sorted by group, so each group's trigrams are one contiguous segment.
        tri = _trigram_keys(codes, vocab)
        word_owner = np.repeat(np.arange(len(chunk)), n_words)
        valid = word_owner[:-2] == word_owner[2:]
        if valid.any():
            keys = tri[valid]
            word_group = groups[rows][word_owner[:-2][valid]]
            present, first_at = np.unique(word_group, return_index=True)
            bounds = np.append(first_at, len(keys))
            stats.tri_total[present] += np.diff(bounds)
            stats.tri_distinct[present] += _distinct_per_segment(keys, bounds)
        # Markers: every occurrence's response and the words where it starts and ends.
        if finder.single_words and vocabulary is not None and _plain_case(joined, low):
            per_word = finder.vocab_counts(vocabulary)[codes]
            marked = np.flatnonzero(per_word)
            first = last = np.repeat(marked, per_word[marked])
            owner = word_owner[first]
        else:
            owner, spans = _marker_spans(finder, chunk, joined, low, base, lengths)
            first = np.searchsorted(starts, spans[:, 0], side="right") - 1
            last = np.searchsorted(starts, spans[:, 1] - 1, side="right") - 1
        stats.n_markers[rows] = np.bincount(owner, minlength=len(chunk))
        if len(owner) == 0:
            continue
        offsets = np.concatenate(([0], np.cumsum(n_words)))
        ok = _revising_markers(tri, first, last, offsets[owner], offsets[owner + 1], window,
                               max_overlap)
        stats.revises[rows] = np.bincount(owner[ok], minlength=len(chunk)) > 0
    return stats


def response_health(
    texts: Sequence[str] | pd.Series,
    *,
    markers: Sequence[str] = DEFAULT_MARKERS,
    window: int = REV_WINDOW,
    max_overlap: float = REV_MAX_OVERLAP,
) -> pd.DataFrame:
    """Per-response exploration statistics, vectorized: ``n_words``, ``n_markers``,
    ``ey_density`` (markers per 1,000 words) and ``revises``, in the order of ``texts``.
    Equal to :func:`ey_density` and :func:`revises` applied one text at a time."""
    markers = _check_markers(markers)
    _check_revision_args(window, max_overlap)
    texts = (texts.reset_index(drop=True) if isinstance(texts, pd.Series)
             else pd.Series(list(texts), dtype=object))
    stats = _text_stats(texts, np.zeros(len(texts), dtype=np.int64), 1, markers, window,
                        max_overlap)
    return pd.DataFrame({
        "n_words": stats.n_words,
        "n_markers": stats.n_markers,
        "ey_density": _density(stats.n_markers, stats.n_words),
        "revises": stats.revises,
    })


def _density(n_markers: np.ndarray, n_words: np.ndarray) -> np.ndarray:
    return np.where(n_words > 0, 1000.0 * n_markers / np.maximum(n_words, 1), 0.0)


def _step_flags(values: Iterable[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(known mask, steps per response, flattened flags) of a ``step_correct`` column; a
    missing entry (None/NaN) is unknown."""
    known, lengths, parts = [], [], []
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            known.append(False)
            lengths.append(0)
            continue
        arr = np.asarray(value)
        if arr.ndim != 1 or (arr.size and arr.dtype != bool):
            raise ValueError(f"step_correct entries must be lists of booleans, got {value!r}")
        known.append(True)
        lengths.append(arr.size)
        parts.append(arr.astype(bool, copy=False))
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
    return np.asarray(known, dtype=bool), np.asarray(lengths, dtype=np.int64), flat


def _step_metrics(values: Iterable[Any]) -> dict[str, float]:
    known, lengths, flat = _step_flags(values)
    nan = {"step_acc": math.nan, "fes": math.nan, "csr": math.nan}
    if not known.any() or lengths.sum() == 0:
        return nan
    has = lengths > 0
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    correct = np.add.reduceat(flat.astype(np.int64), bounds[:-1][has]) if has.any() else []
    local = np.arange(len(flat)) - np.repeat(bounds[:-1], lengths)
    first_bad = np.where(flat, np.iinfo(np.int64).max, local + 1)
    fes = np.minimum(np.minimum.reduceat(first_bad, bounds[:-1][has]), lengths[has] + 1)
    return {
        "step_acc": float(np.mean(np.asarray(correct) / lengths[has])),
        "fes": float(np.mean(fes)),
        "csr": float(np.sum(correct) / lengths.sum()),
    }


def _require(rollouts: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in rollouts.columns]
    if missing:
        raise ValueError(f"rollouts lack column(s) {missing}; have {list(rollouts.columns)}")


def health_metrics(
    rollouts: pd.DataFrame,
    *,
    markers: Sequence[str] = DEFAULT_MARKERS,
    k: int | None = None,
    window: int = REV_WINDOW,
    max_overlap: float = REV_MAX_OVERLAP,
) -> dict[str, float]:
    """Reasoning-health metrics of one evaluation's rollouts (one row per response).

    Needs columns ``prompt_id``, ``response``, ``correct`` (bool), ``n_tokens``; uses
    ``step_correct`` (lists of bools) when present, else the step metrics are NaN (see
    :func:`resolve_step_correct` to fill it from a task's step judge). Rows are grouped into
    prompts by ``prompt_id`` (and ``step``/``split`` when present). ``k`` for Pass@k defaults
    to the smallest number of samples of any prompt. Returns the keys of
    :data:`METRIC_COLUMNS` (module docstring for the definitions); pure, no I/O.
    """
    _require(rollouts, ("prompt_id", "response", "correct", "n_tokens"))
    markers = _check_markers(markers)
    _check_revision_args(window, max_overlap)
    if len(rollouts) == 0:
        raise ValueError("rollouts are empty; there is nothing to measure")
    keys = [c for c in ("step", "split", "prompt_id") if c in rollouts.columns]
    counts = per_prompt_counts(rollouts, by=keys)
    n, c = counts["n"].to_numpy(), counts["c"].to_numpy()
    kk = int(n.min()) if k is None else k
    if isinstance(kk, bool) or not isinstance(kk, (int, np.integer)) or not 1 <= kk <= n.min():
        raise ValueError(f"k must be an integer in 1..{int(n.min())} (the fewest samples of "
                         f"any prompt), got {k!r}")
    groups = rollouts.groupby(keys, sort=True, observed=True, dropna=False).ngroup()
    stats = _text_stats(rollouts["response"].reset_index(drop=True),
                        groups.to_numpy(np.int64), len(counts), markers, window, max_overlap)
    has_tri = stats.tri_total > 0
    steps = _step_metrics(rollouts["step_correct"]) if "step_correct" in rollouts.columns \
        else {"step_acc": math.nan, "fes": math.nan, "csr": math.nan}
    return {
        "n_prompts": len(counts),
        "n_responses": len(rollouts),
        "k": int(kk),
        "avg_at_k": float(np.mean(avg_at_k(n, c))),
        "pass_at_k": float(np.mean(pass_at_k(n, c, kk))),
        **steps,
        "ey_density": float(np.mean(_density(stats.n_markers, stats.n_words))),
        "rev_rate": float(np.mean(stats.revises)),
        "dist3": float(np.mean(stats.tri_distinct[has_tri] / stats.tri_total[has_tri]))
        if has_tri.any() else math.nan,
        "length_tokens": float(rollouts["n_tokens"].mean()),
    }
