"""The findings summary: the verdict rule on hand-made claims, rollout metrics by hand, and
findings measured from hand-written probe outputs."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.findings import Claim, Finding, findings, rollout_sums, to_markdown, verdict
from dasd.runlog import create_run


def claim(ours, low, high, sign=1):
    return Claim("x", sign, ours=ours, low=low, high=high)


def test_verdict_rule_on_hand_made_claims():
    agree, against = claim(0.3, 0.1, 0.5), claim(-0.3, -0.5, -0.1)
    unclear, missing = claim(0.1, -0.1, 0.3), claim(math.nan, math.nan, math.nan)
    assert agree.agreement == "agrees" and against.agreement == "disagrees"
    assert unclear.agreement == "inconclusive" and missing.agreement == "not measured"
    assert claim(-0.3, -0.5, -0.1, sign=-1).agreement == "agrees"
    assert verdict([agree, claim(-0.2, -0.3, -0.1, sign=-1)]) == "reproduced"
    assert verdict([agree, unclear]) == "not reproduced"
    assert verdict([agree, against]) == "not reproduced"
    assert verdict([agree, missing]) == "not reproduced"
    assert verdict([missing, missing]) == "not measurable here"
    assert verdict([]) == "not measurable here"
    line = Finding("RQ9", "a statement", (agree, unclear)).line()
    assert line == "RQ9: not reproduced (1/2 claims agree; 1 inconclusive) — a statement"
    assert Finding("RQ8", "s", (agree,)).line() == "RQ8: reproduced (1/1 claims agree) — s"


def test_rollout_sums_by_hand():
    rows = pd.DataFrame({
        "prompt_id": ["a", "a", "b", "b"],
        "correct": [True, False, False, False],
        "step_correct": [np.array([True, True]), np.array([False]), np.array([], dtype=bool),
                         np.array([True, False, False])],
        "response": ["wait, no", "x y z", "hmm", "fine"],
    })
    num, den = rollout_sums(rows, "avg", ["a", "b"])
    np.testing.assert_array_equal(num, [1, 0]) and np.testing.assert_array_equal(den, [2, 2])
    num, den = rollout_sums(rows, "pass", ["b", "a"])
    np.testing.assert_array_equal(num, [0, 1]) and np.testing.assert_array_equal(den, [1, 1])
    num, den = rollout_sums(rows, "step_acc", ["a", "b"])
    np.testing.assert_array_equal(num, [2, 1]) and np.testing.assert_array_equal(den, [3, 3])
    num, den = rollout_sums(rows, "ey_density", ["a", "b"])
    np.testing.assert_array_equal(den, [2, 2])
    assert num[0] == pytest.approx(1000 / 2) and num[1] == pytest.approx(1000 / 1)
    with pytest.raises(ValueError, match="unknown metric 'len'"):
        rollout_sums(rows, "len", ["a"])


def _probe(path, kind, summary):
    with create_run(path, kind=kind, config={}, seed=0, model="m", task="t") as run:
        run.write_json("summary", summary)


def test_findings_from_hand_written_probe_outputs(tmp_path):
    spearman = {"A": {"rho": 0.4, "low": 0.3, "high": 0.5},
                "D_plus": {"rho": 0.2, "low": 0.1, "high": 0.3},
                "D_minus": {"rho": 0.1, "low": -0.1, "high": 0.2}}
    _probe(tmp_path / "etv", "probe:entropy-tv", {"spearman": spearman})
    cells = [{"bucket": b, "mode": m, "metric": k, "delta_pct": d, "ci_low": lo, "ci_high": hi}
             for b, m, k, d, lo, hi in [
                 ("low", "conformity", "step_acc", 5.0, 1.0, 9.0),
                 ("high", "novelty", "ey_density", 50.0, 30.0, 70.0),
                 ("high", "conformity", "ey_density", -20.0, -30.0, -10.0),
                 ("low", "novelty", "step_acc", -3.0, -6.0, -1.0)]]
    _probe(tmp_path / "pi", "probe:prefix-intervene", {"cells": cells})
    found = {f.name: f for f in findings([tmp_path])}
    assert found["Finding 2"].verdict == "not reproduced"  # D- has no clear negative sign
    assert [c.agreement for c in found["Finding 2"].claims] == [
        "agrees", "agrees", "inconclusive"]
    assert found["Finding 2"].claims[0].paper == 0.52
    assert found["Finding 3"].verdict == "reproduced"
    assert [c.paper for c in found["Finding 3"].claims] == [18.3, 61.3, -86.2, -79.4]
    for name in ("Finding 1", "Table 2", "Table 3", "RQ1", "RQ2", "RQ3"):
        assert found[name].verdict == "not measurable here", name
    text = to_markdown(list(found.values()))
    assert "- Finding 3: reproduced (4/4 claims agree) — routing helps" in text
    assert "- Table 2: not measurable here (0/2 claims agree; 2 not measured)" in text
    assert "| rho_s(A_t, H_t) > 0 | +0.52 | +0.4 [+0.3, +0.5] | agrees |" in text
    json.dumps([c.agreement for f in found.values() for c in f.claims])


def _rows(units, correct):
    return pd.DataFrame({"unit": units, "prompt_id": [u.split("/", 1)[1] for u in units],
                         "correct": correct})


def test_claims_over_several_training_seeds_use_the_across_seed_interval():
    from analysis.findings import _compare, seed_interval
    from scipy import stats

    units = ["s0/a", "s0/a", "s0/b", "s0/b", "s1/a", "s1/a", "s1/b", "s1/b",
             "s2/a", "s2/a", "s2/b", "s2/b"]
    base = _rows(units, [1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0])   # per seed: 1/4, 2/4, 2/4
    new = _rows(units, [1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1])    # per seed: 3/4, 3/4, 4/4
    diffs = np.array([0.5, 0.25, 0.5])
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    seeds = {s: [f"{s}/a", f"{s}/b"] for s in ("s0", "s1", "s2")}
    interval = seed_interval(base, new, "avg", seeds)
    assert (interval.mean, interval.n) == (pytest.approx(diffs.mean()), 3)
    assert (interval.low, interval.high) == (pytest.approx(diffs.mean() - half),
                                             pytest.approx(diffs.mean() + half))
    claim_ = _compare(base, new, "avg", "x", 1, source="here")
    assert claim_.ours == pytest.approx(100 * diffs.mean())
    assert claim_.low == pytest.approx(100 * (diffs.mean() - half))
    assert claim_.source == "here (across 3 seeds)"
    assert diffs.mean() - half == pytest.approx(0.0581, abs=1e-4)
    assert claim_.agreement == "agrees", "t(2) interval [5.8, 77.5] points excludes 0"


def test_one_seed_keeps_the_paired_prompt_bootstrap():
    from analysis.findings import N_BOOT, _compare
    from analysis.stats import paired_difference

    units = [f"s0/p{i}" for i in range(6) for _ in range(2)]
    base = _rows(units, [1, 0] * 6)
    new = _rows(units, [1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 1])
    order = sorted(set(units))
    expected = paired_difference(rollout_sums(base, "avg", order), rollout_sums(new, "avg", order),
                                 n_boot=N_BOOT)
    claim_ = _compare(base, new, "avg", "x", 1, source="here")
    assert (claim_.ours, claim_.low, claim_.high) == (
        100 * expected["diff"], 100 * expected["ci_low"], 100 * expected["ci_high"])
    assert claim_.source == "here"
