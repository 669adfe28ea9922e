"""analysis.agreement on hand-made numbers: sign agreement of a signed change, and the
ordering agreement of rows (best row, concordant / discordant / undecided pairs, verdict)."""

from __future__ import annotations

import math

import pytest

from analysis.agreement import bound_agreement, ordering_agreement, sign_agreement

NAN = math.nan


@pytest.mark.parametrize(("paper", "ours", "expected"), [
    (18.3, (12.0, 5.0, 20.0), "agrees"),          # CI above 0, paper positive
    (-79.4, (-50.0, -70.0, -30.0), "agrees"),     # CI below 0, paper negative
    (18.3, (-12.0, -20.0, -5.0), "disagrees"),    # CI below 0, paper positive
    (-4.21, (3.0, 1.0, 5.0), "disagrees"),        # CI above 0, paper negative
    (61.3, (2.0, -1.0, 5.0), "inconclusive"),     # CI contains 0
    (61.3, (2.0, 0.0, 5.0), "inconclusive"),      # an end at exactly 0 contains it
    (61.3, (2.0, NAN, NAN), "inconclusive"),      # an estimate without an interval
    (61.3, (NAN, NAN, NAN), "not measured"),
])
def test_sign_agreement(paper, ours, expected):
    assert sign_agreement(paper, *ours) == expected


def test_sign_agreement_rejects_a_paper_value_without_sign_and_a_reversed_interval():
    with pytest.raises(ValueError, match="has no sign"):
        sign_agreement(0.0, 1.0, 0.5, 1.5)
    with pytest.raises(ValueError, match="has no sign"):
        sign_agreement(NAN, 1.0, 0.5, 1.5)
    with pytest.raises(ValueError, match="low 2.0 > high 1.0"):
        sign_agreement(1.0, 1.5, 2.0, 1.0)


# Paper (Table 3, Step accuracy): GRPO 58.4 < OPSD 59.1 < DASD 63.7.
PAPER = {"GRPO": 58.4, "OPSD": 59.1, "DASD": 63.7}


def test_ordering_all_pairs_separated_the_paper_way():
    ours = {"GRPO": (10.0, 9.0, 11.0), "OPSD": (20.0, 19.0, 21.0), "DASD": (30.0, 29.0, 31.0)}
    got = ordering_agreement(PAPER, ours)
    assert (got.concordant, got.discordant, got.undecided) == (3, 0, 0)
    assert got.verdict == "agrees" and got.tau == 1.0 and got.pairs == 3
    assert got.paper_best == ("DASD",) and got.our_best == ("DASD",) and got.best_agrees


def test_ordering_reversed_pairs_disagree():
    ours = {"GRPO": (30.0, 29.0, 31.0), "OPSD": (20.0, 19.0, 21.0), "DASD": (10.0, 9.0, 11.0)}
    got = ordering_agreement(PAPER, ours)
    assert (got.concordant, got.discordant, got.undecided) == (0, 3, 0)
    assert got.verdict == "disagrees" and got.tau == -1.0
    assert got.our_best == ("GRPO",) and got.best_agrees is False


def test_ordering_mixed_and_undecided_pairs():
    # DASD above both (2 concordant); OPSD clearly below GRPO (1 discordant).
    ours = {"GRPO": (20.0, 19.0, 21.0), "OPSD": (10.0, 9.0, 11.0), "DASD": (30.0, 29.0, 31.0)}
    got = ordering_agreement(PAPER, ours)
    assert (got.concordant, got.discordant, got.undecided) == (2, 1, 0)
    assert got.verdict == "mixed" and got.tau == pytest.approx(1 / 3)
    # Overlapping intervals decide nothing, even when the means follow the paper.
    wide = {"GRPO": (10.0, 0.0, 40.0), "OPSD": (20.0, 0.0, 40.0), "DASD": (30.0, 0.0, 40.0)}
    got = ordering_agreement(PAPER, wide)
    assert (got.concordant, got.discordant, got.undecided) == (0, 0, 3)
    assert got.verdict == "undecided" and got.tau == 0.0 and got.best_agrees


def test_ordering_single_runs_have_no_interval_so_pairs_stay_undecided():
    ours = {"GRPO": (10.0, NAN, NAN), "OPSD": (20.0, NAN, NAN), "DASD": (30.0, NAN, NAN)}
    got = ordering_agreement(PAPER, ours)
    assert got.verdict == "undecided" and got.undecided == 3 and got.best_agrees


def test_ordering_ties_unmeasured_and_missing_rows():
    # The paper ties DASD and HEPO: that pair is not counted; both share the best row.
    paper = {"GRPO": 32.5, "HEPO": 35.0, "DASD": 35.0}
    ours = {"GRPO": (10.0, 9.0, 11.0), "HEPO": (30.0, 29.0, 31.0), "DASD": (40.0, 39.0, 41.0)}
    got = ordering_agreement(paper, ours)
    assert got.pairs == 2 and got.concordant == 2 and got.verdict == "agrees"
    assert got.paper_best == ("HEPO", "DASD") and got.our_best == ("DASD",) and got.best_agrees
    # Rows only the paper has are missing; rows only we have are ignored.
    got = ordering_agreement(PAPER, {"DASD": (30.0, 29.0, 31.0), "SRPO": (1.0, 0.0, 2.0)})
    assert got.verdict == "unmeasured" and got.missing == ("GRPO", "OPSD")
    assert got.best_agrees is None and math.isnan(got.tau)
    got = ordering_agreement(PAPER, {"GRPO": (NAN, NAN, NAN), "DASD": (3.0, 2.0, 4.0)})
    assert got.verdict == "unmeasured" and got.missing == ("GRPO", "OPSD")


def test_lower_is_better_picks_the_lowest_rows_as_best():
    # Paper: lower is better, so A (1.0) beats B (2.0); ours: A's interval is below B's.
    paper, ours = {"A": 1.0, "B": 2.0}, {"A": (5.0, 4.0, 6.0), "B": (9.0, 8.0, 10.0)}
    got = ordering_agreement(paper, ours, higher_is_better=False)
    assert got.verdict == "agrees" and got.paper_best == ("A",) and got.our_best == ("A",)
    # Reading both sides the other way round keeps the pairs' agreement, not the best rows.
    flipped = ordering_agreement(paper, ours)
    assert flipped.verdict == "agrees" and flipped.paper_best == ("B",) == flipped.our_best
    # A disagreement stays one either way.
    swapped = {"A": (9.0, 8.0, 10.0), "B": (5.0, 4.0, 6.0)}
    assert ordering_agreement(paper, swapped, higher_is_better=False).verdict == "disagrees"
    assert ordering_agreement(paper, swapped).verdict == "disagrees"


@pytest.mark.parametrize(
    ("ours", "expected"),
    [((1.0, -4.0, 4.9), "agrees"), ((-3.0, -5.0, 5.0), "agrees"),
     ((8.0, 6.0, 10.0), "disagrees"), ((-20.0, -30.0, -8.2), "disagrees"),
     ((3.0, -1.0, 7.0), "inconclusive"), ((0.0, -9.0, 9.0), "inconclusive"),
     ((2.0, math.nan, math.nan), "inconclusive"), ((math.nan, 1.0, 2.0), "not measured")],
)
def test_bound_agreement(ours, expected):
    """Table 1's control: the paper bounds |Δ| by 5%."""
    assert bound_agreement(5.0, *ours) == expected


def test_bound_agreement_rejects_a_bad_bound_and_a_reversed_interval():
    for bound in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="must be a finite number > 0"):
            bound_agreement(bound, 1.0, 0.0, 2.0)
    with pytest.raises(ValueError, match="low 2.0 > high 1.0"):
        bound_agreement(5.0, 1.5, 2.0, 1.0)
