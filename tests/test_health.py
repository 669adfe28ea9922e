"""analysis.health: reasoning-health metrics (paper Table 3, appendix F) by hand, against the
per-response reference definitions, and over run directories with bad input."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dasd.health as health
from analysis.health import analyze_runs, passk_report, resolve_step_correct, run_variant
from dasd.health import (
    DEFAULT_MARKERS,
    HEALTH_COLUMNS,
    distinct_3,
    ey_density,
    first_error_step,
    health_metrics,
    pass_k_values,
    response_health,
    revises,
    trigrams,
    words,
)
from dasd.runlog import create_run

# A Countdown trace of the built-in world: 4 correct steps on cd-3-7-8-29, 11 words, 1 marker.
GOOD = "8*3=24\n24+7=31\nwait, 31 is not 29\n7*3=21\n21+8=29\nanswer: (7*3)+8"
BAD = "7*3=22\nanswer: 7*3"  # 1 wrong step, 3 words, no marker


def frame(responses, prompt_ids, correct=None, step_correct=None, n_tokens=None):
    n = len(responses)
    data = {
        "prompt_id": prompt_ids,
        "response": responses,
        "correct": [False] * n if correct is None else correct,
        "n_tokens": [10] * n if n_tokens is None else n_tokens,
    }
    if step_correct is not None:
        data["step_correct"] = step_correct
    return pd.DataFrame(data)


# ---------------------------------------------------------------- E(y) density


def test_markers_count_as_whole_words_only():
    # "Waiting" and "checking" are not markers; "check," and "hmm." are (punctuation is a
    # boundary); 5 whitespace words.
    assert ey_density("Waiting for the check, hmm.") == pytest.approx(400.0)
    assert ey_density("checking rechecked unwaited maybes") == 0.0
    # A marker glued to other characters by a non-word character still counts.
    assert ey_density("x.Wait,hmm") == pytest.approx(2000.0)  # 1 word, 2 markers


def test_ey_density_is_per_thousand_whitespace_words_and_zero_for_empty():
    assert ey_density("wait " + "x " * 99) == pytest.approx(10.0)
    assert ey_density("") == 0.0 and ey_density(" \n\t") == 0.0
    assert ey_density("WAIT maybe", markers=["maybe"]) == pytest.approx(500.0)
    assert ey_density("let me check again now", markers=["check again"]) == pytest.approx(200.0)


def test_ey_density_averages_over_responses():
    rows = frame(["wait a b c", "a b c d e", ""], ["p", "p", "p"])
    # 250 per 1000 words, 0, 0 (the empty response counts, with density 0).
    assert health_metrics(rows)["ey_density"] == pytest.approx(250.0 / 3)


# ---------------------------------------------------------------- revision rate


def test_verbatim_repetition_is_not_a_revision_and_new_text_is():
    assert not revises("a b c d e wait a b c d e")
    assert revises("a b c d e wait x y z v w")
    # Lowercased words: a repetition in another case is still a repetition.
    assert not revises("A B C D wait a b c d")


def test_revision_threshold_is_inclusive_at_thirty_percent():
    after = "a b c d e f g h i j k l"  # 10 distinct trigrams, 3 of them abc bcd cde
    assert revises(f"a b c d e wait {after}")  # 3/10 = 0.3 <= 0.3
    assert not revises(f"a b c d e f wait {after}")  # 4/10 = 0.4 (def shared too)
    assert revises(f"a b c d e f wait {after}", max_overlap=0.4)


def test_revision_edge_cases():
    assert not revises("a b c d wait x y")  # fewer than 3 words after: empty T(after)
    assert revises("wait x y z")  # empty T(before): overlap 0 (decision 3)
    assert not revises("no marker here at all, just words")
    # Any occurrence qualifies: the first repeats, the second revises.
    assert revises("a b c d wait a b c d hmm p q r s")
    # Words more than 30 before the marker are outside the window.
    far = "a b c " + " ".join(f"w{i}" for i in range(30)) + " wait a b c"
    assert revises(far)
    assert not revises("a b c " + " ".join(f"w{i}" for i in range(27)) + " wait a b c")


def test_revision_windows_skip_the_marker_word():
    # "x.wait," is one whitespace word holding the marker: it is in neither window.
    assert not revises("p q r x.wait, p q r")
    assert response_health(["p q r x.wait, p q r"])["revises"].tolist() == [False]


def test_rev_rate_is_the_share_of_revising_responses():
    rows = frame(["a b c d e wait x y z v w", "a b c d e wait a b c d e", "no marker"],
                 ["p", "p", "q"])
    assert health_metrics(rows)["rev_rate"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- Dist-3


def test_distinct_3_on_tiny_texts():
    assert trigrams(words("A b c d")) == [("a", "b", "c"), ("b", "c", "d")]
    assert distinct_3(["a b c d", "a b c"]) == pytest.approx(2 / 3)
    assert distinct_3(["A b C", "a B c"]) == pytest.approx(0.5)  # lowercased
    assert distinct_3(["a b c d e"]) == 1.0
    assert math.isnan(distinct_3(["a b", "c"]))  # no trigram at all
    # Trigrams never span two responses: "b c" + "d" makes none.
    assert distinct_3(["a b c", "d e"]) == 1.0


def test_dist3_is_per_prompt_then_averaged():
    rows = frame(["a b c", "a b c", "x y z w", "q"], ["p", "p", "r", "s"])
    # p: 1 distinct of 2 -> 0.5; r: 2 of 2 -> 1.0; s: no trigram, left out.
    assert health_metrics(rows)["dist3"] == pytest.approx(0.75)


# ---------------------------------------------------------------- step metrics


def test_fes_with_all_correct_responses_counts_n_steps_plus_one():
    assert first_error_step([True, True, True]) == 4
    assert first_error_step([False]) == 1 and first_error_step([]) == 1
    rows = frame(["x", "y"], ["p", "p"], step_correct=[[True, True, True], [True, False]])
    assert health_metrics(rows)["fes"] == pytest.approx((4 + 2) / 2)


def test_step_acc_and_csr_differ_on_unequal_step_counts():
    rows = frame(["x", "y"], ["p", "p"], step_correct=[[True], [False, False, False, True]])
    m = health_metrics(rows)
    assert m["step_acc"] == pytest.approx((1.0 + 0.25) / 2)  # mean of per-response ratios
    assert m["csr"] == pytest.approx(2 / 5)  # pooled
    assert m["fes"] == pytest.approx((2 + 1) / 2)


def test_responses_without_steps_or_judgement_are_left_out():
    rows = frame(["a", "b", "c", "d"], ["p"] * 4,
                 step_correct=[[True, False], [], None, np.array([True])])
    m = health_metrics(rows)
    assert m["step_acc"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["csr"] == pytest.approx(2 / 3)
    assert m["fes"] == pytest.approx((2 + 2) / 2)


def test_step_metrics_are_nan_without_step_correctness():
    m = health_metrics(frame(["a"], ["p"]))
    assert all(math.isnan(m[k]) for k in ("step_acc", "fes", "csr"))
    m = health_metrics(frame(["a", "b"], ["p", "p"], step_correct=[None, None]))
    assert all(math.isnan(m[k]) for k in ("step_acc", "fes", "csr"))


# ---------------------------------------------------------------- outcome and the whole dict


def test_health_metrics_by_hand():
    rows = frame([GOOD, BAD, BAD, BAD], ["cd-3-7-8-29"] * 2 + ["cd-2-4-6-3"] * 2,
                 correct=[True, False, False, False], n_tokens=[40, 10, 12, 14],
                 step_correct=[[True] * 4, [False], [False], [False]])
    m = health_metrics(rows)
    assert list(m) == list(health.METRIC_COLUMNS)
    assert (m["n_prompts"], m["n_responses"], m["k"]) == (2, 4, 2)
    assert m["avg_at_k"] == pytest.approx(0.25)  # (1/2 + 0/2) / 2
    assert m["pass_at_k"] == pytest.approx(0.5)  # pass@2: 1 and 0
    assert health_metrics(rows, k=1)["pass_at_k"] == pytest.approx(0.25)
    assert m["step_acc"] == pytest.approx(0.25) and m["csr"] == pytest.approx(4 / 7)
    assert m["fes"] == pytest.approx((5 + 1 + 1 + 1) / 4)
    assert m["ey_density"] == pytest.approx(1000 / 11 / 4)
    assert m["rev_rate"] == pytest.approx(0.25)  # GOOD revises: 0 shared of 6 trigrams
    # cd-3-7-8-29: 9 + 1 trigrams, all distinct; cd-2-4-6-3: 2 equal trigrams.
    assert m["dist3"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["length_tokens"] == pytest.approx(19.0)


def test_prompts_are_split_by_step_when_several_steps_are_passed():
    rows = frame(["a b c", "a b c"], ["p", "p"]).assign(step=[0, 1])
    m = health_metrics(rows)
    assert m["n_prompts"] == 2 and m["k"] == 1 and m["dist3"] == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="lack column"):
        health_metrics(pd.DataFrame({"prompt_id": ["p"], "response": ["x"]}))
    with pytest.raises(ValueError, match="k must be an integer in 1..2"):
        health_metrics(frame(["a", "b"], ["p", "p"]), k=3)
    with pytest.raises(ValueError, match="empty"):
        health_metrics(frame([], []))
    with pytest.raises(ValueError, match="markers is empty"):
        ey_density("wait", markers=[])
    with pytest.raises(ValueError, match="wrap it in a list"):
        response_health(["wait"], markers="wait")
    with pytest.raises(ValueError, match="window"):
        revises("wait", window=0)
    with pytest.raises(ValueError, match="not text"):
        response_health(["a", None])


def test_pass_k_values():
    assert pass_k_values(1) == [1]
    assert pass_k_values(16) == [1, 2, 4, 8, 16]
    assert pass_k_values(12) == [1, 2, 4, 8, 12]


# ---------------------------------------------------------------- batch path == reference

PIECES = ["wait", "Wait,", "WAIT", "hmm", "check", "checking", "maybe", "x", "y", "z", "a",
          "(wait", "x.wait", "'wait", "wait'", "mightn't", "check again", "K", "é", "Σ", "ΣΑΣ",
          "İ", "ıwait", "ſeems", "seems", "7*3=21", "", "b", "c"]
SPACES = [" ", "  ", "\n", "\t", "\u3000", "\x1c", "\x85", "\xa0", ""]
texts_strategy = st.lists(
    st.lists(st.tuples(st.sampled_from(PIECES), st.sampled_from(SPACES)), max_size=50).map(
        lambda parts: "".join(p + s for p, s in parts)),
    min_size=1, max_size=8,
)
marker_sets = st.sampled_from([DEFAULT_MARKERS, ("check again", "wait"), ("Check", "x y"),
                               ("é",), ("wait", "wait wait"), ("seems",)])


@settings(max_examples=300, deadline=None)
@given(texts=texts_strategy, markers=marker_sets, window=st.sampled_from([30, 5, 3, 2]),
       max_overlap=st.sampled_from([0.3, 0.0, 1.0]))
def test_batch_path_equals_the_reference_definitions(texts, markers, window, max_overlap):
    got = response_health(texts, markers=markers, window=window, max_overlap=max_overlap)
    assert got["n_words"].tolist() == [len(t.split()) for t in texts]
    assert got["ey_density"].tolist() == pytest.approx([ey_density(t, markers) for t in texts])
    assert got["revises"].tolist() == [
        revises(t, markers, window=window, max_overlap=max_overlap) for t in texts]


@settings(max_examples=150, deadline=None)
@given(texts=texts_strategy, groups=st.lists(st.integers(0, 2), min_size=8, max_size=8),
       chunk=st.sampled_from([1, 30, 1 << 23]))
def test_dist3_and_chunking_equal_the_reference(texts, groups, chunk):
    prompt_ids = [f"p{g}" for g in groups[: len(texts)]]
    rows = frame(texts, prompt_ids)
    expected = [distinct_3([t for t, p in zip(texts, prompt_ids) if p == q])
                for q in sorted(set(prompt_ids))]
    expected = [e for e in expected if not math.isnan(e)]
    old = health._CHUNK_CHARS
    health._CHUNK_CHARS = chunk
    try:
        got = health_metrics(rows)["dist3"]
    finally:
        health._CHUNK_CHARS = old
    if expected:
        assert got == pytest.approx(float(np.mean(expected)))
    else:
        assert math.isnan(got)


def test_lone_surrogates_take_the_python_path():
    texts = ["a \ud800 wait b c d", "wait x y z"]
    got = response_health(texts)
    assert got["n_words"].tolist() == [6, 4]
    assert got["revises"].tolist() == [revises(t) for t in texts]


def test_case_traps_and_whitespace_table_are_complete():
    """Characters IGNORECASE matches to an ASCII letter that str.lower does not map to it, or
    whose lowercase is longer, must all be in _CASE_TRAPS; the whitespace table must be
    str.isspace."""
    letter = re.compile("[a-z]", re.IGNORECASE)
    found = set()
    for cp in range(0x80, sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        low = ch.lower()
        if len(low) != 1 or (letter.fullmatch(ch) and not (low.isascii() and low.isalpha())):
            found.add(ch)
    assert found <= set(health._CASE_TRAPS)
    spaces = {cp for cp in range(sys.maxunicode + 1) if chr(cp).isspace()}
    assert max(spaces) < health._WS_MAX and not health._WS_TABLE[health._WS_MAX]
    assert set(np.flatnonzero(health._WS_TABLE)) == spaces


# ---------------------------------------------------------------- step correctness from a judge


def test_countdown_rows_without_step_correct_are_judged():
    rows = frame([GOOD, BAD], ["cd-3-7-8-29", "cd-3-7-8-29"])
    filled, note = resolve_step_correct(rows, "countdown")
    assert note is None
    assert [list(v) for v in filled["step_correct"]] == [[True] * 4, [False]]
    assert "step_correct" not in rows  # the input is not modified


def test_unrebuildable_rows_and_unknown_tasks_get_a_note():
    rows = frame([GOOD, BAD], ["cd-3-7-8-29", "not-an-id"])
    filled, note = resolve_step_correct(rows, "countdown")
    assert "1 of them could not be judged" in note
    assert health_metrics(filled)["step_acc"] == pytest.approx(1.0)
    same, note = resolve_step_correct(rows, "aime24")
    assert same is rows and "task 'aime24' has no step judge" in note
    assert "step metrics are empty (NaN)" in note
    _, note = resolve_step_correct(rows, None)
    assert "names no task" in note
    logged = rows.assign(step_correct=[[True], [False]])
    assert resolve_step_correct(logged, "aime24") == (logged, None)


# ---------------------------------------------------------------- run directories


def rollout_rows(n_correct: int, *, with_steps: bool = True) -> list[dict]:
    rows = []
    for pid in ("cd-3-7-8-29", "cd-2-4-6-3"):
        for j in range(4):
            ok = pid == "cd-3-7-8-29" and j < n_correct
            row = dict(prompt_id=pid, sample_idx=j, prompt="x", response=GOOD if ok else BAD,
                       answer="(7*3)+8", reward=float(ok), correct=ok, n_tokens=30 + j)
            if with_steps:
                row["step_correct"] = [True] * 4 if ok else [False]
            rows.append(row)
    return rows


def make_run(root, name, *, steps=(0,), n_correct=1, finish=True, method=None,
             with_steps=True, kind="eval", task="countdown"):
    writer = create_run(root / name, kind=kind, config={}, seed=0, model="tiny",
                        method=method, task=task)
    for step in steps:
        writer.write_rollouts(step, "eval", rollout_rows(n_correct, with_steps=with_steps))
        writer.log_metrics(step, "eval", {"eval/avg_at_4": n_correct / 8})
    if finish:
        writer.finish()
    return root / name


def test_analyze_runs_rows_per_run_and_step(tmp_path):
    make_run(tmp_path, "a", steps=(0, 40), n_correct=2, method="dasd")
    make_run(tmp_path, "b", with_steps=False)  # judged by the countdown step judge
    report = analyze_runs([tmp_path])
    assert report.analysed and not [i for i in report.issues if i.level == "error"]
    rows = report.rows
    assert list(rows.columns[: len(HEALTH_COLUMNS)]) == list(HEALTH_COLUMNS)
    assert list(zip(rows["run"], rows["step"])) == [("a", 0), ("a", 40), ("b", 0)]
    assert rows["avg_at_k"].tolist() == pytest.approx([0.25, 0.25, 0.125])
    b = rows[rows["run"] == "b"].iloc[0]
    assert b["step_acc"] == pytest.approx(1 / 8) and b["fes"] == pytest.approx(12 / 8)
    assert rows["method"].tolist()[:1] == ["dasd"]
    last = analyze_runs([tmp_path], last=True).rows
    assert list(zip(last["run"], last["step"])) == [("a", 40), ("b", 0)]
    only = analyze_runs([tmp_path / "a"], step=0).rows
    assert list(only["step"]) == [0]


def test_bad_input_is_reported_and_other_runs_still_analysed(tmp_path):
    make_run(tmp_path, "good")
    make_run(tmp_path, "running", finish=False)
    missing = make_run(tmp_path, "missing-col")
    file = missing / "rollouts" / "step-000000-eval.parquet"
    pq.write_table(pq.read_table(file).drop(["response"]), file)
    wrong = make_run(tmp_path, "wrong-type")
    file = wrong / "rollouts" / "step-000000-eval.parquet"
    table = pq.read_table(file)
    table = table.set_column(table.column_names.index("n_tokens"), "n_tokens",
                             pa.array(["x"] * table.num_rows))
    pq.write_table(table, file)
    garbage = make_run(tmp_path, "garbage")
    (garbage / "rollouts" / "step-000000-eval.parquet").write_bytes(b"not parquet")
    (tmp_path / "no-manifest-json").mkdir()
    bad_manifest = tmp_path / "bad-manifest"
    bad_manifest.mkdir()
    (bad_manifest / "manifest.json").write_text("{not json")
    empty = tmp_path / "empty"
    empty.mkdir()

    report = analyze_runs([tmp_path, empty])
    assert sorted(report.rows["run"]) == ["good", "running"]
    messages = {i.level: [] for i in report.issues}
    for issue in report.issues:
        messages[issue.level].append(issue.message)
        assert "\n" not in issue.message
    errors = " | ".join(messages["error"])
    assert "missing-col/rollouts/step-000000-eval.parquet: missing column 'response'" in errors
    assert "wrong-type/rollouts/step-000000-eval.parquet: column 'n_tokens' has type string" \
        in errors
    assert "garbage/rollouts/step-000000-eval.parquet: not a readable Parquet file" in errors
    assert "bad-manifest/manifest.json: not valid JSON" in errors
    assert f"{empty}: no run directories found" in errors
    assert any("running: still running" in m for m in messages["warning"])


def test_runs_without_rollouts_of_the_split_are_errors(tmp_path):
    create_run(tmp_path / "probe", kind="probe:x", config={}, seed=0).finish()
    report = analyze_runs([tmp_path])
    assert not report.analysed
    assert report.issues[0].message.endswith("no eval rollouts to analyse")


def test_labels_disambiguate_equal_run_names(tmp_path):
    make_run(tmp_path / "x", "run")
    make_run(tmp_path / "y", "run")
    assert sorted(analyze_runs([tmp_path]).rows["run"]) == ["x/run", "y/run"]


def test_passk_report_defaults_to_powers_of_two_up_to_n(tmp_path):
    make_run(tmp_path, "a", n_correct=2)
    frame_, issues = passk_report([tmp_path])
    assert not issues
    row = frame_.iloc[0]
    assert list(frame_.columns) == ["run", "task", "step", "n_prompts", "n", "avg_at_n",
                                    "pass@1", "pass@2", "pass@4"]
    assert (row["task"], row["n"], row["n_prompts"]) == ("countdown", 4, 2)
    # prompt 1: 2 of 4 correct; prompt 2: none.
    assert row["pass@1"] == pytest.approx(0.25)
    assert row["pass@2"] == pytest.approx((1 - 1 / 6) / 2)
    assert row["pass@4"] == pytest.approx(0.5)
    frame_, _ = passk_report([tmp_path], ks=[3, 8])
    assert frame_.iloc[0]["pass@3"] == pytest.approx(0.5) and math.isnan(
        frame_.iloc[0]["pass@8"])


def test_run_variant_names_what_sets_a_run_apart():
    assert run_variant({}) == "" and run_variant({"method_options": {}}) == ""
    # Defaults (the paper's entropy routing, rho = 0.2, up to float noise) are no variant.
    assert run_variant({"routing": "entropy", "rho": 0.2000000001, "seed": 3}) == ""
    assert run_variant({"method_options": {"gate": "none", "direction": "hard"},
                        "routing": "position", "rho": 0.05}) == \
        "direction=hard, gate=none, routing=position, rho=0.05"
