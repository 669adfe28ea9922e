"""figures.report: token pieces, audit values, a self-contained escaped page, the
`dasd-analyze report` command, and a real headless browser rendering it."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from figures.report import (
    EOS_PIECE,
    audit_tokens,
    build_report,
    pick_audit_rows,
    token_pieces,
    write_report,
)
from cli import analyze_app
from dasd.runlog import create_run, open_run
from figures import FIGURES, Missing, load_runs, make_figure
from tests.test_figures import make_eval_run, make_train_run

EPS = 1e-6

# --------------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    ("response", "n_tokens", "ids", "pieces", "how"),
    [
        ("ab", 2, None, ["a", "b"], "characters"),
        ("ab", 3, [4, 5, 1], ["a", "b", EOS_PIECE], "characters + EOS"),
        ("abc", 2, [17, 9], ["[17]", "[9]"], "token ids"),
        ("abc", 2, None, ["[#0]", "[#1]"], "token ids"),
        ("", 0, None, [], "characters"),
    ],
)
def test_token_pieces(response, n_tokens, ids, pieces, how):
    assert token_pieces(response, n_tokens, ids) == (pieces, how)


def test_audit_tokens_logged_omega_and_method_gap_by_hand():
    row = {"response": "a+b", "n_tokens": 3, "token_ids": np.array([5, 6, 7]),
           "entropy": np.array([0.1, 0.2, 0.3]), "student_logp": np.array([-1.0, -2.0, -0.5]),
           "teacher_logp": np.array([-0.5, -2.5, -0.5]), "omega": np.array([0.5, -1.0, 0.0])}
    tokens = audit_tokens(row)
    assert tokens.pieces == ["a", "+", "b"] and tokens.omega_from == "logged"
    np.testing.assert_allclose(tokens.delta, [0.5, -0.5, 0.0])
    # The dasd method's raw gap (METHOD_GAP_SCALE = "none"): delta_bar = delta.
    np.testing.assert_allclose(tokens.delta_bar, [0.5, -0.5, 0.0])
    np.testing.assert_allclose(tokens.omega, [0.5, -1.0, 0.0])


def test_audit_tokens_derives_omega_with_dasd_defaults_by_hand():
    h = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    row = {"response": "abcd", "n_tokens": 5, "entropy": h, "student_logp": -np.ones(5),
           "teacher_logp": np.zeros(5), "omega": None, "token_ids": None}
    tokens = audit_tokens(row)
    assert tokens.omega_from == "derived" and tokens.pieces[-1] == EOS_PIECE
    # tau = Quantile_0.2(H) = 0.8; sigma = mean |H - 2| = 1.2; delta = 1 everywhere, the raw
    # gap of the dasd method, so the gate is sigmoid(1 - 1) = 0.5.
    gate = 0.5
    expected = np.tanh((0.8 - h) / (1.2 + EPS)) * gate
    np.testing.assert_allclose(tokens.omega, expected, rtol=1e-9)
    assert tokens.omega[0] > 0 and (tokens.omega[1:] < 0).all()  # attract low H, repel high


def test_audit_tokens_without_token_columns():
    tokens = audit_tokens({"response": "xy", "n_tokens": 2})
    assert tokens.omega_from == "absent"
    assert np.isnan(tokens.entropy).all() and np.isnan(tokens.delta_bar).all()


def test_pick_audit_rows_balances_outcomes():
    rows = pd.DataFrame({"prompt_id": ["b", "a", "a", "c", "c", "d"],
                         "sample_idx": [0, 1, 0, 0, 1, 0],
                         "correct": [True, True, True, False, True, True]})
    picked = pick_audit_rows(rows, 4)
    assert list(zip(picked["prompt_id"], picked["sample_idx"])) == [
        ("a", 0), ("a", 1), ("b", 0), ("c", 0)]
    assert len(pick_audit_rows(rows, 0)) == 0


# --------------------------------------------------------------------------- page

AUDIT_RESPONSE = "<b>&x"


def make_audit_run(root: Path) -> Path:
    """A train run whose last rollouts hold a response and prompt that need escaping and
    tokens with known H and omega."""
    path = make_train_run(root, "dasd")
    n = len(AUDIT_RESPONSE) + 1
    rows = pd.DataFrame({
        "prompt_id": ["p0"], "sample_idx": np.int32([0]),
        "prompt": ["<script>alert(1)</script> reach 7"], "response": [AUDIT_RESPONSE],
        "answer": ["3+4"], "reward": [1.0], "correct": [True], "n_tokens": np.int32([n]),
        "entropy": [np.array([0.125, 2.0, 0.5, 0.25, 1.0, 0.0], np.float32)],
        "student_logp": [np.full(n, -1.0, np.float32)],
        "teacher_logp": [np.full(n, -0.5, np.float32)],
        "omega": [np.array([1.0, -1.0, 0.5, -0.25, 0.0, 0.75], np.float32)],
    })
    with open_run(path) as run:
        run.write_rollouts(40, "train", rows)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_audit_run(root)
    make_train_run(root, "grpo")
    make_eval_run(root, "grpo", "Qwen3-1.7B", "aime24")
    make_eval_run(root, "dasd", "Qwen3-1.7B", "aime24")
    with create_run(root / "probe-x", kind="probe:other", seed=1, config={"note": "<x> & y"}):
        pass
    return root


@pytest.fixture(scope="module")
def page(world) -> str:
    return build_report(world, audit_rollouts=2)


def test_page_is_self_contained(page):
    assert page.startswith("<!DOCTYPE html>")
    for external in ("http://", "https://", "<script", "<link", "url(", "@import", "<iframe"):
        assert external not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    png = base64.b64decode(sources[0].split(",", 1)[1])
    assert png.startswith(b"\x89PNG")


def test_page_embeds_every_figure_with_data(world, page):
    runs = load_runs(world)
    drawn = [n for n in FIGURES if not isinstance(make_figure(n, runs), Missing)]
    assert drawn == ["fig2_sign_flip", "fig4_pass_at_k", "fig5_training_dynamics",
                     "fig6a_entropy_distribution", "fig10b_validation"]
    assert page.count("data:image/png;base64,") == len(drawn)
    assert "fig8_scale</strong>: needs eval runs of at least 2 model sizes" in page


def audit_block(page: str, run: str) -> str:
    return page.split(f"<h3>{run} ")[1].split("<h3>")[0]


def test_page_escapes_logged_text(page):
    assert "<b>" not in page and "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the prompt, shown escaped
    assert "&quot;note&quot;: &quot;&lt;x&gt; &amp; y&quot;" in page  # the config
    pieces = re.findall(r'<span class="t[^"]*" style="[^"]*" title="[^"]*">([^<]*)</span>',
                        audit_block(page, "train-dasd"))
    assert pieces[:6] == ["&lt;", "b", "&gt;", "&amp;", "x", EOS_PIECE]


def test_audit_tokens_show_values_on_hover_and_colors(page):
    spans = re.findall(r'<span class="t[^"]*" style="--w:([^;]*);--h:([^"]*)" title="([^"]*)">',
                       audit_block(page, "train-dasd"))
    (w0, h0, t0), (w1, h1, t1) = spans[0], spans[1]
    # omega = +1: attraction (blue) at full strength; omega = -1: repulsion (red).
    assert w0 == "rgba(0,114,178,0.800)" and w1 == "rgba(214,39,40,0.800)"
    # Entropy scaled to the run's largest audited H (2.0): 0.125 / 2 * 0.8 = 0.05.
    assert h0 == "rgba(117,107,177,0.050)" and h1 == "rgba(117,107,177,0.800)"
    assert "H = 0.125 nats" in t0 and "ω = +1.000 (logged)" in t0
    # delta = 0.5 everywhere: median 0.5, delta_bar = 1.
    assert "δ = +0.500 (raw" in t0 and "δ̄ = +0.50 (as the dasd method" in t0
    assert "H = 2.000 nats" in t1 and "ω = -1.000 (logged)" in t1


def test_page_lists_runs_configs_and_health(world, page):
    for run in ("train-dasd", "train-grpo", "eval-grpo-Qwen3-1.7B-aime24", "probe-x"):
        assert f"{run}: config" in page
    # Health of eval-dasd (aime24, correct 1, 1, 3 of 4): Avg@4 = 5/12.
    health = page.split('id="tables"')[1].split('id="figures"')[0]
    row = re.search(r'<td class="l">eval-dasd-Qwen3-1.7B-aime24</td>(.*?)</tr>', health).group(1)
    assert "0.4167" in row and ">dasd<" in row


def test_report_is_deterministic(world, page):
    assert build_report(world, audit_rollouts=2) == page


# --------------------------------------------------------------------------- command


def test_cli_report(world, tmp_path):
    out = tmp_path / "sub" / "report.html"
    result = CliRunner().invoke(analyze_app, ["report", str(world / "train-dasd"), "--out",
                                              str(out), "--audit-rollouts", "1"])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output
    assert out.read_text(encoding="utf-8").count('<div class="rollout">') == 1


def test_cli_report_bad_path(tmp_path):
    result = CliRunner().invoke(analyze_app, ["report", str(tmp_path / "none"), "--out",
                                              str(tmp_path / "r.html")])
    assert result.exit_code == 2
    assert "none: does not exist" in " ".join(result.output.split())
    assert not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- browser

CHROMIUM = next((c for c in ("chromium", "chromium-browser") if shutil.which(c)), None)


def make_striped_run(root: Path) -> Path:
    """One character-level rollout: omega = +1 on its first 30 tokens, -1 on the rest."""
    response = "7*3=21 then 21+8=29 wait, try 8*3=24 then 24+7=31 no 29 ok."
    n = len(response)
    rows = pd.DataFrame({
        "prompt_id": ["p0"], "sample_idx": np.int32([0]), "prompt": ["reach 29"],
        "response": [response], "answer": ["29"], "reward": [1.0], "correct": [True],
        "n_tokens": np.int32([n]), "entropy": [np.linspace(0, 2, n, dtype=np.float32)],
        "omega": [np.where(np.arange(n) < 30, 1.0, -1.0).astype(np.float32)],
    })
    with create_run(root / "striped", kind="train", config={}, seed=0, method="dasd") as run:
        run.write_rollouts(0, "train", rows)
    return root / "striped"


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian: apt-get install chromium)")
def test_headless_browser_renders_the_audit(tmp_path):
    from matplotlib.image import imread

    report = write_report(make_striped_run(tmp_path), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1280,2000", report.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    pixels = np.rint(imread(shot)[..., :3] * 255).astype(np.int64)
    assert pixels.shape == (2000, 1280, 3)
    assert pixels.std() > 20 and (pixels.sum(axis=2) < 600).mean() > 0.01  # not blank

    def near(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - np.array(rgb)).max(axis=2) <= 6).sum())

    # 30 token backgrounds each at omega = +1 and -1 (alpha 0.8 over white), painted by the
    # CSS switch: far more pixels than the legend's 14 x 14 swatches.
    assert near((51, 142, 193)) > 1500  # rgba(0,114,178,.8) on white
    assert near((222, 82, 83)) > 1500  # rgba(214,39,40,.8) on white
