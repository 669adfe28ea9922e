"""Does a measured result agree with the paper's? The rule behind every "paper vs ours" mark
(``analysis.tables``; the paper's values are ``analysis.paper``).

Pure functions: numbers in, verdicts out. Our results come as an estimate with a confidence
interval [low, high] (a bootstrap interval for Table 1's changes, a Student-t interval across
seeds for the others); the paper reports single numbers without intervals, so its numbers are
taken as given and only ours carry uncertainty.

Sign agreement (a signed change the paper reports, e.g. Table 1's % changes):

* ``agrees``: our interval excludes 0 on the paper's side (low > 0 for a positive paper value,
  high < 0 for a negative one);
* ``disagrees``: our interval excludes 0 on the other side;
* ``inconclusive``: our interval contains 0 (an end at exactly 0 counts as containing it), or
  we have an estimate but no interval (a single run);
* ``not measured``: our estimate is NaN.

Bound agreement (the paper states a bound on an effect's size, e.g. Table 1's Random-H_t
control, "|Δ| ≤ 5%"):

* ``agrees``: our interval lies inside [-bound, bound];
* ``disagrees``: our interval lies wholly outside it (low > bound or high < -bound);
* ``inconclusive``: otherwise, or no interval; ``not measured``: a NaN estimate.

Ordering agreement (the paper's values of a set of rows: methods or variants, one column):

* Best row: the paper's best rows (ties share it) and ours by point estimate; it agrees when
  our best row is one of the paper's best.
* Pairs, Kendall-tau-like: every pair of rows the paper orders (unequal values) is
  ``concordant`` when our intervals separate in the paper's direction (the better row's low
  end above the other's high end), ``discordant`` when they separate the other way, else
  ``undecided`` (overlapping intervals, or a row without an interval). Pairs the paper ties
  are not counted. ``tau = (concordant − discordant) / ordered pairs``.
* Verdict, one word: ``agrees`` when some pair is concordant and none discordant;
  ``disagrees`` when some pair is discordant and none concordant; ``mixed`` when both occur;
  ``undecided`` when no pair is separated; ``unmeasured`` when fewer than two of the paper's
  rows have an estimate. The best-row check is reported beside the verdict, not folded in.

Rows are matched by name; rows only one side has are left out (``missing`` lists the paper's
rows we did not measure). ``higher_is_better=False`` reverses what "better" means for both
sides: it changes the best rows, not whether a pair agrees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

__all__ = [
    "ORDERING_VERDICTS",
    "SIGN_VERDICTS",
    "OrderingAgreement",
    "bound_agreement",
    "ordering_agreement",
    "sign_agreement",
]

SIGN_VERDICTS = ("agrees", "disagrees", "inconclusive", "not measured")
ORDERING_VERDICTS = ("agrees", "disagrees", "mixed", "undecided", "unmeasured")


def _nan(x: float | None) -> bool:
    return x is None or math.isnan(x)


def _unjudged(estimate: float, low: float, high: float) -> str | None:
    """``not measured`` (NaN estimate) or ``inconclusive`` (no interval) before any rule
    applies, else None; an interval with low > high raises a ``ValueError``."""
    if _nan(estimate):
        return "not measured"
    if _nan(low) or _nan(high):
        return "inconclusive"
    if low > high:
        raise ValueError(f"interval low {low} > high {high}")
    return None


def sign_agreement(paper: float, estimate: float, low: float, high: float) -> str:
    """Whether our signed effect (``estimate`` with interval [``low``, ``high``]) agrees in
    sign with the paper's ``paper`` (module docstring): ``agrees``, ``disagrees``,
    ``inconclusive`` or ``not measured``. A paper value of 0 or NaN has no sign and raises a
    ``ValueError``, as does an interval with low > high."""
    if _nan(paper) or paper == 0:
        raise ValueError(f"the paper's effect {paper!r} has no sign to agree with")
    if (unjudged := _unjudged(estimate, low, high)) is not None:
        return unjudged
    if low > 0 or high < 0:
        return "agrees" if (low > 0) == (paper > 0) else "disagrees"
    return "inconclusive"


def bound_agreement(bound: float, estimate: float, low: float, high: float) -> str:
    """Whether our effect (``estimate`` in [``low``, ``high``]) keeps the paper's bound
    |effect| <= ``bound`` (module docstring): ``agrees``, ``disagrees``, ``inconclusive`` or
    ``not measured``. A bound that is not a finite number > 0 raises a ``ValueError``."""
    if _nan(bound) or not 0 < bound < math.inf:
        raise ValueError(f"the paper's bound {bound!r} must be a finite number > 0")
    if (unjudged := _unjudged(estimate, low, high)) is not None:
        return unjudged
    if -bound <= low and high <= bound:
        return "agrees"
    if low > bound or high < -bound:
        return "disagrees"
    return "inconclusive"


@dataclass(frozen=True)
class OrderingAgreement:
    """How our ordering of rows compares with the paper's (module docstring)."""

    verdict: str
    """``agrees``, ``disagrees``, ``mixed``, ``undecided`` or ``unmeasured``."""
    concordant: int
    discordant: int
    undecided: int
    paper_best: tuple[str, ...]
    """The paper's best rows among those we measured (ties share it); empty when
    unmeasured."""
    our_best: tuple[str, ...]
    """Our best rows by point estimate (ties share it); empty when unmeasured."""
    missing: tuple[str, ...] = ()
    """The paper's rows without an estimate of ours."""

    @property
    def pairs(self) -> int:
        """Pairs the paper orders, among the rows both sides have."""
        return self.concordant + self.discordant + self.undecided

    @property
    def tau(self) -> float:
        """(concordant − discordant) / pairs; NaN without pairs."""
        return (self.concordant - self.discordant) / self.pairs if self.pairs else math.nan

    @property
    def best_agrees(self) -> bool | None:
        """Whether one of our best rows is one of the paper's best; None when unmeasured."""
        if not self.our_best:
            return None
        return bool(set(self.our_best) & set(self.paper_best))


def ordering_agreement(
    paper: Mapping[str, float],
    ours: Mapping[str, tuple[float, float, float]],
    *,
    higher_is_better: bool = True,
) -> OrderingAgreement:
    """Compare the ordering of rows (module docstring).

    Args:
        paper: row name -> the paper's value (NaN values are left out).
        ours: row name -> (estimate, low, high); NaN low/high: no interval.
        higher_is_better: whether larger values are better (both sides).

    Returns:
        An :class:`OrderingAgreement` over the rows both sides have.
    """
    sign = 1.0 if higher_is_better else -1.0
    reference = {r: sign * v for r, v in paper.items() if not _nan(v)}
    measured = {r: ours[r] for r in reference if r in ours and not _nan(ours[r][0])}
    missing = tuple(r for r in reference if r not in measured)
    if len(measured) < 2:
        return OrderingAgreement("unmeasured", 0, 0, 0, (), (), missing)
    shown = {r: tuple(sign * x for x in measured[r]) for r in measured}
    # With higher_is_better=False the interval's ends swap under the sign flip; a row
    # without an interval gets NaN ends, which separate from nothing.
    bounds = {r: (math.nan, math.nan) if _nan(v[1]) or _nan(v[2])
              else (min(v[1], v[2]), max(v[1], v[2])) for r, v in shown.items()}
    concordant = discordant = undecided = 0
    for a, b in combinations(measured, 2):
        if reference[a] == reference[b]:
            continue
        better, worse = (a, b) if reference[a] > reference[b] else (b, a)
        (b_low, b_high), (w_low, w_high) = bounds[better], bounds[worse]
        if b_low > w_high:
            concordant += 1
        elif b_high < w_low:
            discordant += 1
        else:
            undecided += 1
    top = max(reference[r] for r in measured)
    paper_best = tuple(r for r in measured if reference[r] == top)
    ours_top = max(shown[r][0] for r in measured)
    our_best = tuple(r for r in measured if shown[r][0] == ours_top)
    if concordant and discordant:
        verdict = "mixed"
    elif concordant:
        verdict = "agrees"
    elif discordant:
        verdict = "disagrees"
    else:
        verdict = "undecided"
    return OrderingAgreement(verdict, concordant, discordant, undecided, paper_best, our_best,
                             missing)
