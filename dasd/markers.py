"""Epistemic markers E(y) (paper section 3, appendix F "Reasoning-health metrics").

Markers are matched as whole words or phrases, case-insensitively. The default list is the one
used in the self-distillation analysis the paper cites ("wait", "hmm", ...), minus its substring
bug: "checking" does not count as "check".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

DEFAULT_MARKERS: tuple[str, ...] = (
    "wait",
    "hmm",
    "perhaps",
    "maybe",
    "actually",
    "alternatively",
    "seems",
    "might",
    "likely",
    "check",
)


@lru_cache(maxsize=32)
def _pattern(markers: tuple[str, ...]) -> re.Pattern[str]:
    if not markers:
        raise ValueError("markers is empty; give at least one marker word or phrase")
    alternatives = "|".join(r"\s+".join(map(re.escape, m.split())) for m in markers)
    return re.compile(rf"(?<![\w'])(?:{alternatives})(?![\w'])", re.IGNORECASE)


def find_markers(text: str, markers: Sequence[str] = DEFAULT_MARKERS) -> list[re.Match[str]]:
    """Every whole-word (or whole-phrase) occurrence of a marker in ``text``, in order."""
    return list(_pattern(tuple(markers)).finditer(text))


def count_markers(text: str, markers: Sequence[str] = DEFAULT_MARKERS) -> int:
    """Number of marker occurrences in ``text``."""
    return len(find_markers(text, markers))
