"""Mechanism statistics (``dasd.mechanism``), the tail mass of ``dasd.entropy``, the Countdown
step locator, eval's ``mechanism/`` metrics and their tables in health and the report."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cli import analyze_app
from dasd import mechanism
from dasd.entropy import token_entropy_and_logprob, token_entropy_logprob_and_tail
from dasd.evaluation import mechanism_metrics, rescore_student_logp, wrong_step_tokens
from dasd.models import make_char_tokenizer
from dasd.runlog import read_metrics, read_rollouts
from dasd.tasks.countdown import CountdownTask
from tests.test_cli import eval_run  # noqa: F401  (the fixture: a small eval of model_dir)

runner = CliRunner()


# --------------------------------------------------------------------------- tail mass (entropy)


def test_tail_by_hand_and_entropy_unchanged():
    logits = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]).log()
    ids = torch.tensor([1, 0])
    ent, lp, tail = token_entropy_logprob_and_tail(logits, ids)
    assert tail.tolist() == pytest.approx([0.3, 0.5], abs=1e-6)
    ent0, lp0 = token_entropy_and_logprob(logits, ids)
    assert torch.equal(ent, ent0) and torch.equal(lp, lp0)


def test_tail_keeps_precision_where_one_minus_top_rounds_to_zero():
    logits = torch.tensor([[0.0, -30.0, -30.0]])
    _, _, tail = token_entropy_logprob_and_tail(logits, torch.tensor([0]))
    exact = 2 * math.exp(-30) / (1 + 2 * math.exp(-30))
    assert 1 - torch.softmax(logits, -1).max().item() == 0.0  # the naive float32 form
    assert tail.item() == pytest.approx(exact, rel=1e-5)


def test_tail_of_a_one_token_vocabulary_is_zero():
    ids = torch.zeros(2, 3, dtype=torch.long)
    _, _, tail = token_entropy_logprob_and_tail(torch.zeros(2, 3, 1), ids)
    assert torch.equal(tail, torch.zeros(2, 3))


@pytest.mark.parametrize("seed", range(4))
def test_tail_matches_naive_over_shapes_chunks_temperatures(seed):
    g = torch.Generator().manual_seed(seed)
    shape = tuple(int(x) for x in torch.randint(1, 6, (2,), generator=g))
    v = int(torch.randint(2, 40, (1,), generator=g))
    logits = torch.randn(*shape, v, generator=g) * 4
    ids = torch.randint(0, v, shape, generator=g)
    temperature = [1.0, 0.7, 1.3, 2.0][seed]
    _, _, tail = token_entropy_logprob_and_tail(logits, ids, chunk_size=seed + 1,
                                                temperature=temperature)
    naive = 1 - torch.softmax(logits.double() / temperature, -1).max(-1).values
    torch.testing.assert_close(tail.double(), naive, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- deciles


def test_deciles_by_hand():
    h = np.arange(30.0).reshape(3, 10)
    mask = np.ones_like(h, dtype=bool)
    edges = mechanism.decile_edges(h, mask)
    assert edges[0] == pytest.approx(2.9) and edges[-1] == pytest.approx(26.1)
    median, mean, count = mechanism.by_entropy_decile(-(h ** 2), h, mask, edges)
    assert count.tolist() == [3] * 10
    assert median[0] == 1.0 and mean[0] == pytest.approx(5 / 3)  # |{0, -1, -4}|
    assert median[9] == 784.0 and mean[9] == pytest.approx((729 + 784 + 841) / 3)


def test_tied_entropies_share_the_lowest_decile_and_empty_deciles_are_nan():
    h = np.array([[0.0] * 8 + [1.0, 2.0]])
    mask = np.ones_like(h, dtype=bool)
    edges = mechanism.decile_edges(h, mask)
    median, mean, count = mechanism.by_entropy_decile(np.full_like(h, 0.5), h, mask, edges)
    assert count.tolist() == [8, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert np.isnan(median[1:8]).all() and np.isnan(mean[1:8]).all()
    assert median[0] == median[8] == median[9] == 0.5


def _naive_deciles(values, entropy, mask, edges):
    buckets = [[] for _ in range(10)]
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                k = 0
                while k < 9 and entropy[b, t] > edges[k]:
                    k += 1
                buckets[k].append(abs(values[b, t]))
    return ([np.median(x) if x else np.nan for x in buckets],
            [np.mean(x) if x else np.nan for x in buckets], [len(x) for x in buckets])


@pytest.mark.parametrize("seed", range(5))
def test_deciles_match_a_naive_loop_and_ignore_padding(seed):
    rng = np.random.default_rng(seed)
    b, t = rng.integers(1, 6), rng.integers(1, 30)
    entropy = rng.exponential(0.3, (b, t)).round(2)  # rounding makes ties
    values = rng.normal(size=(b, t))
    mask = rng.random((b, t)) < 0.8
    mask[0, 0] = True
    edges = mechanism.decile_edges(entropy, mask)
    got = mechanism.by_entropy_decile(values, entropy, mask, edges)
    want = _naive_deciles(values, entropy, mask, edges)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, equal_nan=True)
    # padded positions: any value, NaN included, changes nothing
    junk_h = np.where(mask, entropy, np.nan)
    junk_v = np.where(mask, values, 1e9)
    wide = np.pad(junk_h, ((0, 0), (0, 3)), constant_values=np.nan)
    wide_v = np.pad(junk_v, ((0, 0), (0, 3)), constant_values=np.inf)
    wide_m = np.pad(mask, ((0, 0), (0, 3)))
    np.testing.assert_array_equal(mechanism.decile_edges(wide, wide_m), edges)
    for g, w in zip(mechanism.by_entropy_decile(wide_v, wide, wide_m, edges), got):
        np.testing.assert_array_equal(g, w)


def test_decile_input_errors():
    h, mask = np.zeros((1, 3)), np.ones((1, 3), dtype=bool)
    with pytest.raises(ValueError, match="9 non-decreasing"):
        mechanism.by_entropy_decile(h, h, mask, np.arange(8.0))
    with pytest.raises(ValueError, match="same shape"):
        mechanism.decile_edges(np.zeros((1, 4)), mask)
    with pytest.raises(ValueError, match="NaN/inf"):
        mechanism.decile_edges(np.array([[0.0, np.nan, 1.0]]), mask)
    assert np.isnan(mechanism.decile_edges(h, ~mask)).all()


# --------------------------------------------------------------------------- low-entropy tokens


def test_below_trajectory_median_is_per_row_and_strict():
    h = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 9.0, 9.0, 0.0], [7.0, 0.0, 0.0, 0.0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)
    low = mechanism.below_trajectory_median(h, mask)
    # row 0: median 2.5; row 1: median 9 (over 0.5, 9, 9); row 2: one token, its own median
    assert low.tolist() == [[True, True, False, False], [True, False, False, False],
                            [False, False, False, False]]
    assert not mechanism.below_trajectory_median(h, np.zeros_like(mask)).any()


def test_tail_ratio_by_hand_is_a_ratio_of_means_with_per_row_medians():
    h = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]])
    student = np.array([[0.01, 0.03, 0.5, 0.5], [0.02, 0.04, 0.5, 0.5]])
    teacher = np.array([[0.002, 0.06, 0.9, 0.9], [0.004, 0.02, 0.9, 0.9]])
    mask = np.ones_like(h, dtype=bool)
    stats = mechanism.tail_mass_ratio(student, teacher, h, mask)
    # low tokens: the first two of each row (a global median of 0.7 would drop row 1);
    # per-token ratios 0.2, 2, 0.2, 0.5 (their mean, 0.725, is not the estimator)
    assert stats.student_mean == pytest.approx(0.1 / 4)
    assert stats.teacher_mean == pytest.approx(0.086 / 4)
    assert stats.ratio == pytest.approx(0.86)
    assert stats.median_ratio == pytest.approx(0.35)
    assert stats.sharper_share == 0.75


def test_tail_ratio_limiting_cases():
    rng = np.random.default_rng(0)
    h = rng.random((3, 7))
    tail = rng.random((3, 7)) * 0.1
    mask = np.ones_like(h, dtype=bool)
    same = mechanism.tail_mass_ratio(tail, tail, h, mask)
    assert same.ratio == pytest.approx(1.0) and same.median_ratio == 1.0
    assert same.sharper_share == 0.0
    # a deterministic student: tail 0 -> documented NaN ratios, finite means and share
    det = mechanism.tail_mass_ratio(np.zeros_like(h), tail, h, mask)
    assert math.isnan(det.ratio) and math.isnan(det.median_ratio)
    assert det.student_mean == 0.0 and det.teacher_mean > 0 and det.sharper_share == 0.0
    sharp = mechanism.tail_mass_ratio(tail, np.zeros_like(h), h, mask)
    assert sharp.ratio == 0.0 and sharp.median_ratio == 0.0 and sharp.sharper_share == 1.0
    assert all(math.isnan(x) for x in mechanism.tail_mass_ratio(tail, tail, h, ~mask))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        mechanism.tail_mass_ratio(tail + 1, tail, h, mask)


@pytest.mark.parametrize("seed", range(4))
def test_tail_ratio_matches_a_naive_loop_and_ignores_padding(seed):
    rng = np.random.default_rng(seed)
    b, t = rng.integers(1, 5), rng.integers(2, 20)
    h, p, q = rng.random((b, t)), rng.random((b, t)) * 0.2, rng.random((b, t)) * 0.2
    p[rng.random((b, t)) < 0.2] = 0.0
    mask = rng.random((b, t)) < 0.7
    mask[:, 0] = mask[:, 1] = True
    ps, qs = [], []
    for i in range(b):
        med = np.median([h[i, j] for j in range(t) if mask[i, j]])
        for j in range(t):
            if mask[i, j] and h[i, j] < med:
                ps.append(p[i, j])
                qs.append(q[i, j])
    ratios = [y / x for x, y in zip(ps, qs) if x > 0]
    want = (sum(qs) / sum(ps) if sum(ps) else np.nan, np.median(ratios) if ratios else np.nan,
            np.mean([y < x for x, y in zip(ps, qs)]), np.mean(ps), np.mean(qs))
    got = mechanism.tail_mass_ratio(p, q, h, mask)
    np.testing.assert_allclose(got, want, equal_nan=True)
    junk = np.where(mask, 1.0, 0.0)
    padded = mechanism.tail_mass_ratio(np.where(mask, p, 0.9), np.where(mask, q, junk),
                                       np.where(mask, h, np.nan), mask)
    np.testing.assert_array_equal(padded, got)


def test_wrong_step_share_by_hand():
    h = np.array([[0.5, 0.1, 0.9, 0.2, 0.3, 0.0]])
    mask = np.array([[1, 1, 1, 1, 1, 0]], dtype=bool)
    # median 0.3: positions 1 (0.1) low; 2 (0.9) and 4 (0.3, not strictly below) not
    share, n = mechanism.low_entropy_error_share(h, mask, np.array([0, 0, 0]), np.array([1, 2, 4]))
    assert (share, n) == (pytest.approx(1 / 3), 3)
    share, n = mechanism.low_entropy_error_share(h, mask, np.zeros(0), np.zeros(0))
    assert math.isnan(share) and n == 0
    with pytest.raises(ValueError, match="valid token"):
        mechanism.low_entropy_error_share(h, mask, np.array([0]), np.array([5]))
    with pytest.raises(ValueError, match="valid token"):
        mechanism.low_entropy_error_share(h, mask, np.array([1]), np.array([0]))


@pytest.mark.parametrize("seed", range(3))
def test_wrong_step_share_matches_a_naive_loop(seed):
    rng = np.random.default_rng(seed)
    h = rng.random((4, 12))
    mask = np.ones_like(h, dtype=bool)
    mask[:, 9:] = rng.random((4, 3)) < 0.5
    rows, cols = np.nonzero(mask & (rng.random((4, 12)) < 0.3))
    low = [h[r, c] < np.median(h[r][mask[r]]) for r, c in zip(rows, cols)]
    share, n = mechanism.low_entropy_error_share(h, mask, rows, cols)
    assert n == len(rows) and share == pytest.approx(np.mean(low))


def test_share_below_reference_threshold():
    h = np.array([[0.001, 0.005, 0.01, 0.5, 7.0]])
    mask = np.array([[1, 1, 1, 1, 0]], dtype=bool)
    assert mechanism.share_below(h, mask) == 0.5  # 0.01 is not strictly below 0.01
    assert mechanism.share_below(h, mask, 1.0) == 1.0
    assert math.isnan(mechanism.share_below(h, np.zeros_like(mask)))
    assert (mechanism.REFERENCE_LOW_ENTROPY_NATS, mechanism.REFERENCE_Q80_NATS) == (0.01, 0.672)


# --------------------------------------------------------------------------- countdown locator


def test_first_wrong_offsets_by_hand():
    task = CountdownTask()
    problem = task.make_problem([3, 7, 8], 29)
    response = ("8*3=25\n24+7=31\nwait, 31 is not 29\n7*3=21\n21+8=29\n9*3=27\n"
                "  12 + 5 = 1\nanswer: (7*3)+8")
    assert task.judge_steps(problem, response) == [False, False, True, True, False, False]
    offsets = task.first_wrong_offsets(problem, response)
    # "8*3=2" begins 8*3=24; the pool is then {7, 25}, so "24" is wrong at its "4";
    # 9 is not in the pool; "12+5=1" on the pool {27, 29} is wrong at its first character
    assert [response[o] for o in offsets] == ["5", "4", "9", "1"]
    assert offsets == [5, 8, 49, 58]


def test_first_wrong_offsets_of_a_step_that_stops_early_and_of_an_unreadable_step():
    task = CountdownTask()
    problem = task.make_problem([3, 7, 8], 29)
    assert task.first_wrong_offsets(problem, "8*3=2\n2+7=9") == [5]  # the newline
    assert task.first_wrong_offsets(problem, "8*3=2") == [4]  # response ends: its last char
    assert task.first_wrong_offsets(problem, "8 * 3 = 24\n24+7x") == [15]  # "x", unreadable
    assert task.first_wrong_offsets(problem, "8*3=24\n24+7=31") == []


def test_first_wrong_offsets_count_the_wrong_steps():
    task = CountdownTask()
    problem = task.make_problem([2, 5, 9], 23)
    rng = np.random.default_rng(0)
    for _ in range(200):
        lines = [f"{rng.integers(1, 30)}{'+-*/'[rng.integers(4)]}{rng.integers(1, 12)}"
                 f"={rng.integers(1, 60)}" for _ in range(rng.integers(1, 5))]
        response = "\n".join(lines)
        verdicts = task.judge_steps(problem, response)
        offsets = task.first_wrong_offsets(problem, response)
        assert len(offsets) == verdicts.count(False)
        assert all(0 <= o < len(response) for o in offsets)


def test_wrong_step_tokens_map_characters_to_tokens():
    task = CountdownTask()
    problem = task.make_problem([3, 7, 8], 29)
    tok = make_char_tokenizer()
    responses = ["8*3=25\n25+7=32", "7*3=21\n21+8=29"]
    rows = pd.DataFrame({
        "prompt_id": [problem.id] * 2, "response": responses,
        "token_ids": [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                      for r in responses]})
    found = wrong_step_tokens(task, [problem], rows, tok)
    # one token per character: the offsets are the token indices
    assert found[0].tolist() == [0] and found[1].tolist() == [5]
    assert wrong_step_tokens(object(), [problem], rows, tok) is None


# --------------------------------------------------------------------------- eval metrics


def _rows(entropy, student, teacher=None):
    frame = pd.DataFrame({"n_tokens": [len(e) for e in entropy],
                          "entropy": [np.asarray(e, dtype=np.float32) for e in entropy],
                          "student_logp": [np.asarray(s, dtype=np.float32) for s in student]})
    if teacher is not None:
        frame["teacher_logp"] = [np.asarray(t, dtype=np.float32) for t in teacher]
    return frame


def test_identical_teacher_gives_zero_delta_and_floors_by_hand():
    rng = np.random.default_rng(1)
    entropy = [rng.random(n) for n in (5, 9, 2)]
    student = [-rng.random(n) for n in (5, 9, 2)]
    out = mechanism_metrics(_rows(entropy, student, student), floor_rows=[1],
                            floor_logp=[student[1] + 0.25], shift_logp=[student[1] + 0.5])
    deltas = [v for k, v in out.items() if k.startswith("mechanism/delta_abs")]
    assert len(deltas) == 20 and all(v == 0 or math.isnan(v) for v in deltas)
    assert out["mechanism/floor_tokens"] == 9
    floors = [v for k, v in out.items() if k.startswith("mechanism/floor_abs")]
    shifts = [v for k, v in out.items() if k.startswith("mechanism/shift_abs")]
    assert {round(v, 6) for v in floors if not math.isnan(v)} == {0.25}
    assert {round(v, 6) for v in shifts if not math.isnan(v)} == {0.25}
    for key in ("tail_ratio_low", "wrong_step_low_share"):
        assert math.isnan(out[f"mechanism/{key}"])  # no tails, no step locator
    assert out["mechanism/wrong_steps"] == 0


def test_scoring_tails_and_rescoring_alone_match_the_batched_scores(model_dir):
    from transformers import AutoModelForCausalLM

    from dasd.rollout.hf import encode_prompts
    from dasd.scoring import response_logits, score_responses

    tok = make_char_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompts = ["nums: 3 7 8\ntarget: 29\n", "nums: 1 2\ntarget: 3\n", "nums: 9 9 9\ntarget: 81\n"]
    responses = ["8*3=24", "1+2=3\nanswer: 1+2", "9*9=81"]
    ids = [tok(r, add_special_tokens=False)["input_ids"] for r in responses]
    width = max(map(len, ids))
    rid = torch.tensor([x + [0] * (width - len(x)) for x in ids])
    rmask = torch.tensor([[j < len(x) for j in range(width)] for x in ids])
    pid, pmask = encode_prompts(tok, prompts)
    scores = score_responses(model, rid, rmask, pid, pmask, batch_size=2, tail=True,
                             teacher_prompt_ids=pid, teacher_prompt_mask=pmask)
    first = scores.student_logp
    with torch.no_grad():
        logits = response_logits(model, pid, pmask, rid)
    naive = 1 - torch.softmax(logits.double(), -1).max(-1).values
    torch.testing.assert_close(scores.student_tail.double(), naive.where(rmask, 0.0), rtol=1e-5,
                               atol=1e-7)
    assert torch.equal(scores.teacher_tail, scores.student_tail)  # the same context here
    assert score_responses(model, rid, rmask, pid, pmask).student_tail is None
    rows = pd.DataFrame({"prompt": prompts, "token_ids": ids, "n_tokens": [len(x) for x in ids]})
    again = rescore_student_logp(model, tok, rows, batch_size=1)
    shifted = rescore_student_logp(model, tok, rows, batch_size=1, position_offset=17)
    for i, n in enumerate(rows["n_tokens"]):
        np.testing.assert_allclose(again[i], first[i, :n].numpy(), atol=1e-5)
        # rotary positions: a constant shift is a no-op up to rounding
        np.testing.assert_allclose(shifted[i], again[i], atol=1e-4)


# --------------------------------------------------------------------------- eval, health, report


def test_eval_logs_the_mechanism_metrics(eval_run):
    run, output = eval_run
    metrics = read_metrics(run).iloc[-1]
    for key in ("tail_ratio_low", "tail_ratio_median_low", "tail_sharper_share_low",
                "wrong_step_low_share", "wrong_steps",
                "entropy_share_below_0.01", "floor_tokens", "delta_abs_median_d1",
                "floor_abs_mean_d10", "shift_abs_median_d5", "entropy_edge_d9"):
        assert f"mechanism/{key}" in metrics.index
    rows = read_rollouts(run)
    entropy = np.concatenate(rows["entropy"].to_list())
    assert metrics["mechanism/entropy_share_below_0.01"] == pytest.approx(np.mean(entropy < 0.01))
    assert metrics["mechanism/floor_tokens"] == rows["n_tokens"].sum()  # 12 <= 64 responses
    for col in ("student_tail", "teacher_tail"):
        assert all(len(x) == n for x, n in zip(rows[col], rows["n_tokens"]))
    # a random model is far from deterministic: tails near 1 - 1/V
    assert 0.5 < metrics["mechanism/tail_student_low"] < 1
    assert "Mechanism statistics" in output and "mechanism/" not in output


def test_health_and_report_show_the_mechanism_statistics(eval_run, tmp_path):
    from figures.report import build_report

    run, _ = eval_run
    result = runner.invoke(analyze_app, ["health", str(run)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "Mechanism statistics" in result.output and "arXiv:2506.01939" in result.output
    assert "by student-entropy decile" in result.output
    page = build_report(run)
    assert 'id="mechanism"' in page and 'href="#mechanism"' in page and "0.672" in page


def test_report_without_mechanism_metrics_has_no_section(eval_run, tmp_path):
    import json
    import shutil

    from figures.report import build_report

    run, _ = eval_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    lines = (old / "metrics.jsonl").read_text().splitlines()
    stripped = [json.dumps({k: v for k, v in json.loads(line).items()
                            if not k.startswith("mechanism/")}) for line in lines]
    (old / "metrics.jsonl").write_text("\n".join(stripped) + "\n")
    page = build_report(old)
    assert 'id="mechanism"' not in page and 'href="#mechanism"' not in page
    result = runner.invoke(analyze_app, ["health", str(old)])
    assert result.exit_code == 0 and "Mechanism statistics" not in result.output
