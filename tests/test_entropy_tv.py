"""Probe 2 (``probes.entropy_tv``, ``dasd-probe entropy-tv``): E_p[A_t] = -KL, the signed step's
direction, the one-step TV shift, the run directory and the command."""

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

import dasd.runlog
import probes.entropy_tv as etv
from cli import probe_app
from dasd.rollout import generate
from dasd.rollout.hf import encode_prompts
from dasd.runlog import read_json, read_manifest, read_rollouts, read_table
from dasd.scoring import score_responses
from dasd.tasks import get_task
from figures.paper import TOKENS_COLUMNS
from probes.entropy_tv import (
    TOKEN_TABLE_COLUMNS,
    EntropyTVConfig,
    ProbeBatch,
    expected_gap,
    one_step_shift,
    run_entropy_tv,
    signed_gap_objective,
    summarize_tokens,
)
from tests.fixtures_models import random_qwen3

runner = CliRunner()

P = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
Q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)


# --------------------------------------------------------------------------- pure math


def test_expected_gap_is_minus_kl_by_hand():
    # sum_v p (log q - log p) = .7 ln(2/7) + .2 ln(5/2) + .1 ln 3 = -0.583815...
    by_hand = 0.7 * math.log(0.2 / 0.7) + 0.2 * math.log(0.5 / 0.2) + 0.1 * math.log(3.0)
    assert by_hand == pytest.approx(-0.5838150, abs=1e-6)
    gaps = Q.log() - P.log()  # A for each possible emitted token
    assert float((P * gaps).sum()) == pytest.approx(by_hand, abs=1e-12)
    assert float(expected_gap(P.log(), Q.log())) == pytest.approx(by_hand, abs=1e-6)
    assert float(expected_gap(P.log(), P.log() + 1.0)) == pytest.approx(0.0, abs=1e-7)
    g = torch.Generator().manual_seed(0)
    many = expected_gap(torch.randn(50, 7, generator=g), torch.randn(50, 7, generator=g))
    assert many.shape == (50,) and bool((many <= 1e-6).all())


def test_objective_gradient_is_the_sampled_form_of_minus_kl_gradient():
    """Proposition 1 / appendix B: E_{o~p}[A(o) grad log p(o)] = -grad KL(p || q) exactly."""
    theta = P.log().clone().requires_grad_(True)
    expected = torch.zeros(3, dtype=torch.float64)
    for token in range(3):
        logp = torch.log_softmax(theta, -1)[token].reshape(1, 1)
        objective = signed_gap_objective(logp, Q.log()[token].reshape(1, 1),
                                         torch.ones(1, 1, dtype=torch.bool), sign=1.0)
        (grad,) = torch.autograd.grad(objective, theta)
        # The teacher gap is a constant: the gradient is A(o) grad log p(o), nothing more.
        one_hot = torch.nn.functional.one_hot(torch.tensor(token), 3).double()
        gap = float(Q[token].log() - P[token].log())
        torch.testing.assert_close(grad, gap * (one_hot - P))
        expected += P[token] * grad
    kl = (torch.softmax(theta, -1) * (torch.log_softmax(theta, -1) - Q.log())).sum()
    (kl_grad,) = torch.autograd.grad(kl, theta)
    torch.testing.assert_close(expected, -kl_grad)


def test_objective_sign_value_and_mask():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[-0.5, -3.0, 5.0], [-1.5, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    # Row 1: (0.5 * -1 + -1 * -2) / 2 = 0.75; row 2: -1 * -0.5 = 0.5; mean 0.625.
    plus = signed_gap_objective(logp, teacher, mask, sign=1.0)
    assert plus.item() == pytest.approx(0.625)
    assert signed_gap_objective(logp, teacher, mask, sign=-1.0).item() == pytest.approx(-0.625)
    (grad,) = torch.autograd.grad(plus, logp)
    # d/d logp = gap / (rows * tokens of the row): [.5, -1] / 4 and [-1] / 2.
    torch.testing.assert_close(grad, torch.tensor([[0.125, -0.25, 0.0], [-0.5, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="equal shape"):
        signed_gap_objective(logp, teacher[:, :2], mask, sign=1.0)


# --------------------------------------------------------------------------- the measurement


@pytest.fixture(scope="module")
def model(tok):
    return random_qwen3(tok, seed=1)


@pytest.fixture(scope="module")
def batch(tok, model):
    task = get_task("countdown")
    problems = task.sample(6, split="eval", seed=0)
    prompts = [task.student_prompt(p) for p in problems for _ in range(3)]
    rollouts = generate(model, tok, prompts, max_new_tokens=20, temperature=1.0,
                        generator=torch.Generator().manual_seed(0))
    t_ids, t_mask = encode_prompts(tok, [task.teacher_prompt(p) for p in problems
                                         for _ in range(3)])
    return ProbeBatch(rollouts.prompt_ids, rollouts.prompt_mask, t_ids, t_mask,
                      rollouts.response_ids, rollouts.response_mask)


@pytest.fixture(scope="module")
def shift(model, batch):
    return one_step_shift(model, batch, lr=0.05, micro_batch_size=7)


def _mean(values, mask):
    return float(values[mask].double().mean())


def test_statistics_match_the_scoring_code(model, batch, shift):
    scores = score_responses(model, batch.response_ids, batch.response_mask, batch.prompt_ids,
                             batch.prompt_mask, teacher_prompt_ids=batch.teacher_ids,
                             teacher_prompt_mask=batch.teacher_mask)
    torch.testing.assert_close(shift.entropy, scores.entropy, atol=1e-5, rtol=0)
    torch.testing.assert_close(shift.student_logp, scores.student_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(shift.teacher_logp, scores.teacher_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(shift.gap, scores.teacher_logp - scores.student_logp,
                               atol=1e-5, rtol=0)
    mask = batch.response_mask
    assert bool((shift.neg_kl[mask] <= 1e-6).all())
    for values in (shift.entropy, shift.gap, shift.neg_kl, shift.d_plus, shift.kl_minus):
        assert bool((values[~mask] == 0).all())


def test_conformity_step_moves_p_toward_q_and_novelty_away(batch, shift):
    mask = batch.response_mask
    before = -_mean(shift.neg_kl, mask)
    assert _mean(shift.kl_plus, mask) < before < _mean(shift.kl_minus, mask)
    # Both steps are θ ± lr·g: at a small lr the two TV shifts agree to first order.
    d_plus, d_minus = _mean(shift.d_plus, mask), _mean(shift.d_minus, mask)
    assert d_plus > 0 and d_minus == pytest.approx(d_plus, rel=0.02)
    assert bool((shift.d_plus[mask] <= 1).all()) and shift.grad_norm > 0


def test_zero_step_and_micro_batching_change_nothing(model, batch, shift):
    before = [p.detach().clone() for p in model.parameters()]
    still = one_step_shift(model, batch, lr=0.0, micro_batch_size=64)
    mask = batch.response_mask
    assert float(still.d_plus.abs().max()) < 1e-6 and float(still.d_minus.abs().max()) < 1e-6
    torch.testing.assert_close(still.kl_plus[mask], -still.neg_kl[mask], atol=1e-5, rtol=0)
    # The gradient is accumulated exactly over micro-batches (7 rows vs all at once).
    assert still.grad_norm == pytest.approx(shift.grad_norm, rel=1e-4)
    torch.testing.assert_close(still.gap, shift.gap, atol=1e-5, rtol=0)
    # The model itself is not changed and holds no gradient.
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_bad_batches_are_refused(model, batch):
    empty = ProbeBatch(batch.prompt_ids, batch.prompt_mask, batch.teacher_ids,
                       batch.teacher_mask, batch.response_ids,
                       torch.zeros_like(batch.response_mask))
    with pytest.raises(ValueError, match="no response tokens"):
        one_step_shift(model, empty, lr=0.1)
    holes = batch.response_mask.clone()
    holes[:, 0] = False
    gappy = ProbeBatch(batch.prompt_ids, batch.prompt_mask, batch.teacher_ids,
                       batch.teacher_mask, batch.response_ids, holes)
    with pytest.raises(ValueError, match="right-padded"):
        one_step_shift(model, gappy, lr=0.1)


def test_config_checks_itself():
    with pytest.raises(ValueError, match="lr must be"):
        EntropyTVConfig(lr=-1.0)
    with pytest.raises(ValueError, match="k \\(0\\) must be >= 1"):
        EntropyTVConfig(k=0)
    with pytest.raises(ValueError, match="device"):
        EntropyTVConfig(device="tpu")


# --------------------------------------------------------------------------- summary


def _hand_tokens():
    """Two prompts, one correct and one incorrect rollout each; A rises with H."""
    rows = []
    for prompt, sample, correct, hs in (("p0", 0, True, [0.1, 0.5, 0.9]),
                                        ("p0", 1, False, [0.2, 0.6]),
                                        ("p1", 0, True, [0.3, 0.7, 1.1]),
                                        ("p1", 1, False, [0.4, 0.8])):
        for t, h in enumerate(hs):
            rows.append({"prompt_id": prompt, "sample_idx": sample, "position": t, "token": 5,
                         "correct": correct, "H": h, "A": h - 0.5, "neg_kl": -0.1 * h,
                         "D_plus": 0.2 * h, "D_minus": 0.3 - 0.1 * h, "kl_plus": 0.05 * h,
                         "kl_minus": 0.2 * h})
    return pd.DataFrame(rows).astype(TOKEN_TABLE_COLUMNS)


def test_summary_by_hand():
    summary = summarize_tokens(_hand_tokens(), n_boot=50, n_bins=2)
    assert (summary["n_prompts"], summary["n_rollouts"], summary["n_tokens"]) == (2, 4, 10)
    assert summary["spearman"]["A"]["rho"] == pytest.approx(1.0)
    assert summary["spearman"]["D_minus"]["rho"] == pytest.approx(-1.0)
    # |A| = |H - 0.5| is V-shaped in H; with tied ranks, cov 22.5, variances 82.5 and 80.5.
    assert summary["spearman"]["abs_A"]["rho"] == pytest.approx(22.5 / math.sqrt(82.5 * 80.5))
    assert summary["means"]["A"] == pytest.approx(0.06)  # mean H = 5.6 / 10
    assert summary["means"]["kl_before"] == pytest.approx(0.056)
    correct = summary["by_outcome"]["correct"]
    assert (correct["n_rollouts"], correct["n_tokens"]) == (2, 6)
    assert correct["means"]["H"] == pytest.approx(0.6)
    assert summary["by_outcome"]["incorrect"]["means"]["H"] == pytest.approx(0.5)
    bins = summary["bins"]
    assert [b["n"] for b in bins] == [5, 5]
    # Split at the median H = 0.55: H in {.1 .. .5} and {.6, .7, .8, .9, 1.1}.
    assert bins[0]["A"] == pytest.approx(-0.2) and bins[1]["A"] == pytest.approx(0.32)
    with pytest.raises(ValueError, match="missing column 'D_plus'"):
        summarize_tokens(_hand_tokens().drop(columns="D_plus"))


# --------------------------------------------------------------------------- run directory, CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("model")
    random_qwen3(tok, seed=1).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _cfg(model_dir, **kw):
    return EntropyTVConfig(model=str(model_dir), n_prompts=3, k=2, lr=0.1, n_boot=40,
                           max_new_tokens=12, device="cpu", **kw)


def test_run_writes_the_schema_and_the_summary_recomputes(model_dir, tmp_path):
    calls = []
    tokens, summary = run_entropy_tv(_cfg(model_dir), tmp_path / "run", progress=calls.append)
    run = tmp_path / "run"
    manifest = read_manifest(run)
    assert manifest["kind"] == "probe:entropy-tv" and manifest["status"] == "complete"
    assert manifest["config"]["lr"] == 0.1 and manifest["config"]["top_p"] == 1.0
    assert sum(calls) == 3 * 3 * 2
    table = read_table(run, "tokens")
    assert list(table.columns) == list(TOKEN_TABLE_COLUMNS)
    assert pd.api.types.is_string_dtype(table["prompt_id"])
    assert {c: str(table[c].dtype) for c in table.columns if c != "prompt_id"} == {
        c: t for c, t in TOKEN_TABLE_COLUMNS.items() if c != "prompt_id"}
    assert set(TOKENS_COLUMNS) <= set(table.columns)  # what Fig. 3 reads
    rollouts = read_rollouts(run)
    assert len(table) == rollouts["n_tokens"].sum() == summary["n_tokens"]
    first = rollouts.iloc[0]
    rows = table[(table["prompt_id"] == first["prompt_id"]) & (table["sample_idx"] == 0)]
    assert rows["position"].tolist() == list(range(first["n_tokens"]))
    assert rows["token"].tolist() == first["token_ids"].tolist()
    np.testing.assert_allclose(rows["A"], first["teacher_logp"] - first["student_logp"], atol=1e-6)
    assert rows["correct"].eq(first["correct"]).all()
    stored = read_json(run, "summary")
    assert set(stored) == {"lr", "grad_norm", "accuracy", "n_prompts", "n_rollouts", "n_tokens",
                           "spearman", "means", "by_outcome", "bins"}
    assert set(stored["spearman"]) == {"A", "abs_A", "neg_kl", "D_plus", "D_minus"}
    assert set(stored["by_outcome"]) == {"correct", "incorrect"}
    assert stored["accuracy"] == pytest.approx(rollouts["correct"].mean())
    again = summarize_tokens(table, n_boot=40, seed=0)
    for key in ("spearman", "means", "by_outcome", "bins"):
        assert _flat(again[key]) == pytest.approx(_flat(stored[key]), nan_ok=True)


def _flat(obj, prefix=""):
    """Nested dicts and lists as {path: float}; JSON null (a logged NaN) reads as NaN."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _flat(val, f"{prefix}/{key}").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in _flat(val, f"{prefix}/{i}").items()}
    return {prefix: math.nan if obj is None else float(obj)}


def _leftovers(run):
    return sorted(p.name for p in run.rglob(".*"))


def test_a_probe_failing_midway_leaves_only_whole_files(model_dir, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(etv, "token_table", boom)
    with pytest.raises(RuntimeError, match="killed"):
        run_entropy_tv(_cfg(model_dir), tmp_path / "a")
    run = tmp_path / "a"
    manifest = read_manifest(run)
    assert manifest["status"] == "failed" and "killed" in manifest["error"]
    assert not (run / "tokens.parquet").exists() and not (run / "summary.json").exists()
    assert len(read_rollouts(run)) == 6 and _leftovers(run) == []


def test_a_write_interrupted_midway_leaves_no_partial_file(model_dir, tmp_path, monkeypatch):
    real_write = pq.write_table

    def half_written(table, where, **kwargs):
        if "D_plus" in table.column_names:
            where.write(b"PAR1 partial")
            raise KeyboardInterrupt
        real_write(table, where, **kwargs)

    monkeypatch.setattr(dasd.runlog.pq, "write_table", half_written)
    with pytest.raises(KeyboardInterrupt):
        run_entropy_tv(_cfg(model_dir), tmp_path / "b")
    run = tmp_path / "b"
    assert read_manifest(run)["status"] == "failed"
    assert not (run / "tokens.parquet").exists() and _leftovers(run) == []
    assert len(read_rollouts(run)) == 6


def test_cli_smoke(model_dir, tmp_path):
    args = ["entropy-tv", "--model", str(model_dir), "--n-prompts", "3", "--k", "2",
            "--max-new-tokens", "12", "--lr", "0.1", "--bootstrap", "30", "--device", "cpu",
            "--runs-dir", str(tmp_path), "--name", "e"]
    result = runner.invoke(probe_app, args)
    assert result.exit_code == 0, result.output
    assert "Spearman" in result.output and "By entropy quantile bin" in result.output
    assert "after s=+1" in result.output
    assert read_manifest(tmp_path / "e")["status"] == "complete"
    bad = runner.invoke(probe_app, ["entropy-tv", "--model", str(model_dir), "--lr", "-1",
                                    "--runs-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "lr must be a finite number >= 0" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    missing = runner.invoke(probe_app, ["entropy-tv", "--model", str(tmp_path / "nope"),
                                        "--runs-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "no model directory" in missing.output
