"""figures: every paper figure from hand-made run directories (values checked on the drawn
lines), the registry's no-data reasons, byte-identical reruns, and `dasd-analyze figures`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer
from typer.testing import CliRunner

from dasd.passk import pass_at_k
from cli import analyze_app
from dasd.runlog import create_run, read_rollouts
from figures import FIGURES, Missing, load_runs, make_figure, write_figures
from figures.paper import binned_means, pass_at_k_curve
from figures.style import METHOD_COLORS

TRAIN_STEPS = (0, 10, 20, 30)
EVAL_STEPS = (0, 20)
#: Per method: (reward slope, eval accuracy at steps 0 and 20, endpoint entropy scale).
TRAIN_METHODS = {
    "grpo": (0.010, (0.30, 0.40), 1.0),
    "conformity": (0.002, (0.30, 0.20), 0.3),
    "novelty": (0.005, (0.30, 0.35), 2.0),
    "dasd": (0.015, (0.30, 0.50), 1.5),
    "opsd": (0.001, (0.30, 0.25), 0.2),
}
#: Eval runs: (method, model, task) -> correct count per prompt (4 samples per prompt).
EVAL_CORRECT = {
    ("grpo", "Qwen3-1.7B", "aime24"): [0, 1, 2],
    ("dasd", "Qwen3-1.7B", "aime24"): [1, 1, 3],
    ("grpo", "Qwen3-1.7B", "math500"): [2, 4, 4],
    ("dasd", "Qwen3-1.7B", "math500"): [3, 4, 4],
    ("grpo", "Qwen3-4B", "aime24"): [1, 2, 2],
    ("dasd", "Qwen3-4B", "aime24"): [2, 2, 4],
    ("grpo", "Qwen3-4B", "math500"): [3, 4, 4],
    ("dasd", "Qwen3-4B", "math500"): [4, 4, 4],
}
N_SAMPLES = 4


def endpoint_entropy(scale: float, n_rows: int = 6, n_tokens: int = 5) -> list[np.ndarray]:
    """Deterministic per-token entropies of the last train rollouts of a method."""
    return [scale * (0.1 + np.arange(n_tokens, dtype=np.float32) / n_tokens + 0.05 * i)
            for i in range(n_rows)]


def rollout_rows(*, step: int, split: str, n_rows: int, entropy: list[np.ndarray] | None = None,
                 correct: list[bool] | None = None, prompt_ids: list[str] | None = None,
                 responses: list[str] | None = None, omega_sign: float = 1.0) -> pd.DataFrame:
    """Rollout rows following the schema; char-level responses where ``responses`` is None
    (one token per character plus a final EOS token)."""
    responses = responses or [f"1+{i}={i + 1}" for i in range(n_rows)]
    n_tokens = [len(r) + 1 for r in responses]
    correct = correct if correct is not None else [i % 2 == 0 for i in range(n_rows)]
    rows = pd.DataFrame({
        "step": step, "split": split,
        "prompt_id": prompt_ids or [f"p{i // 2}" for i in range(n_rows)],
        "sample_idx": np.arange(n_rows, dtype=np.int32) % 2 if prompt_ids is None
        else np.zeros(n_rows, dtype=np.int32),
        "prompt": ["reach 7 with 3 4"] * n_rows, "response": responses,
        "answer": ["3+4"] * n_rows, "reward": [float(c) for c in correct], "correct": correct,
        "n_tokens": np.asarray(n_tokens, dtype=np.int32),
    })
    if prompt_ids is not None:
        rows["sample_idx"] = rows.groupby("prompt_id").cumcount().astype(np.int32)
    if entropy is not None:
        rows["entropy"] = [np.resize(e, n).astype(np.float32) for e, n in zip(entropy, n_tokens)]
        rows["student_logp"] = [-np.linspace(0.1, 1.0, n).astype(np.float32) for n in n_tokens]
        rows["teacher_logp"] = [-np.linspace(1.0, 0.1, n).astype(np.float32) for n in n_tokens]
        rows["omega"] = [omega_sign * np.linspace(-1, 1, n).astype(np.float32) for n in n_tokens]
        rows["token_ids"] = [np.arange(3, 3 + n, dtype=np.int32) for n in n_tokens]
    return rows


def make_train_run(root: Path, method: str, *, seed: int = 0, name: str | None = None) -> Path:
    slope, (acc0, acc20), scale = TRAIN_METHODS[method]
    path = root / (name or f"train-{method}")
    with create_run(path, kind="train", config={"method": method, "beta": 1.0}, seed=seed,
                    method=method, model="tiny", task="countdown") as run:
        for step in TRAIN_STEPS:
            run.log_metrics(step, "train", {
                "train/reward": 0.2 + slope * step + 0.01 * seed,
                "train/length_tokens": 40.0 + step * (1 if method != "opsd" else -1),
                "train/entropy_mean": scale * (1.0 - 0.01 * step),
                "loss/total": 0.1,
            })
        for step, acc in zip(EVAL_STEPS, (acc0, acc20)):
            metrics = {"eval/avg_at_16": acc, "eval/avg_at_4": acc,
                       "eval/step_acc": 0.5 + acc / 2, "eval/ey_density": scale,
                       "eval/length_tokens": 40.0 + step}
            for k in (1, 2, 4, 8, 16):
                metrics[f"eval/pass_at_{k}"] = min(1.0, acc * (1 + np.log2(k) / 4))
            run.log_metrics(step, "eval", metrics)
        run.write_rollouts(10, "train", rollout_rows(step=10, split="train", n_rows=4,
                                                     entropy=endpoint_entropy(10.0)))
        run.write_rollouts(30, "train", rollout_rows(step=30, split="train", n_rows=6,
                                                     entropy=endpoint_entropy(scale)))
    return path


def make_eval_run(root: Path, method: str, model: str, task: str) -> Path:
    correct_counts = EVAL_CORRECT[(method, model, task)]
    path = root / f"eval-{method}-{model}-{task}"
    prompt_ids = [f"{task}-{p}" for p in range(len(correct_counts)) for _ in range(N_SAMPLES)]
    correct = [s < c for c in correct_counts for s in range(N_SAMPLES)]
    config = {"k": N_SAMPLES, "method": method}
    with create_run(path, kind="eval", config=config, seed=0, model=f"Qwen/{model}",
                    task=task) as run:
        run.write_rollouts(0, "eval", rollout_rows(step=0, split="eval", n_rows=len(correct),
                                                   correct=correct, prompt_ids=prompt_ids))
    return path


#: Fig. 3 tokens: Spearman(H, A) over H = 1..4, A = 1, 3, 2, 4 is 1 - 6 * 2 / 60 = 0.8.
TOKENS = pd.DataFrame({
    "prompt_id": ["p0"] * 4, "position": np.arange(4), "token": [5, 6, 7, 8],
    "H": [1.0, 2.0, 3.0, 4.0], "A": [1.0, 3.0, 2.0, 4.0],
    "D_plus": [0.1, 0.2, 0.3, 0.4], "D_minus": [0.4, 0.3, 0.2, 0.1],
})


def make_probe_run(root: Path, tokens: pd.DataFrame = TOKENS, name: str = "probe-entropy-tv"
                   ) -> Path:
    path = root / name
    with create_run(path, kind="probe:entropy-tv", config={}, seed=0, model="tiny",
                    task="countdown") as run:
        run.write_table("tokens", tokens)
    return path


def build_world(root: Path) -> Path:
    """Train runs of five methods, eval runs of two methods x two models x two tasks, an
    entropy-tv, an arm-flip and a causal probe run; all under ``root``."""
    for method in TRAIN_METHODS:
        make_train_run(root, method)
    for method, model, task in EVAL_CORRECT:
        make_eval_run(root, method, model, task)
    make_probe_run(root)
    make_arm_flip_run(root)
    make_causal_run(root)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def runs(world):
    return load_runs(world)


def lines_by_label(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {line.get_label(): (np.asarray(line.get_xdata(), float),
                               np.asarray(line.get_ydata(), float))
            for line in ax.lines if not line.get_label().startswith("_")}


# --------------------------------------------------------------------------- pure helpers


def test_binned_means_by_hand():
    out = binned_means(np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 3.0, 5.0, 7.0]), n_bins=2)
    np.testing.assert_allclose(out["x"], [0.5, 2.5])
    np.testing.assert_allclose(out["mean"], [2.0, 6.0])
    # std([1, 3], ddof=1) = sqrt(2); 1.96 * sqrt(2) / sqrt(2) = 1.96.
    np.testing.assert_allclose(out["ci"], [1.96, 1.96])
    assert out["n"].tolist() == [2, 2]


def test_binned_means_drops_nonfinite_and_merges_tied_edges():
    out = binned_means(np.array([1.0, 1.0, 1.0, np.nan]), np.array([2.0, 4.0, np.inf, 0.0]))
    assert out["n"].tolist() == [2]
    np.testing.assert_allclose(out["mean"], [3.0])


def test_pass_at_k_curve_by_hand():
    ks, values = pass_at_k_curve(pd.DataFrame({"n": [4, 4], "c": [1, 0]}))
    assert ks.tolist() == [1, 2, 4]
    # prompt 1: 1/4, 1 - C(3,2)/C(4,2) = 1/2, 1; prompt 2: 0, 0, 0.
    np.testing.assert_allclose(values, [0.125, 0.25, 0.5])


# --------------------------------------------------------------------------- figures


def test_registry_lists_the_paper_figures():
    assert list(FIGURES) == ["fig2_sign_flip", "fig3_entropy_pressure", "fig4_pass_at_k",
                             "fig5_training_dynamics", "fig6a_entropy_distribution",
                             "fig6bc_arm_flip", "fig7_causal", "fig8_scale",
                             "fig10b_validation"]
    with pytest.raises(ValueError, match="unknown figure 'fig99'.*fig2_sign_flip"):
        make_figure("fig99", [])


def test_fig2_draws_the_three_probe_methods(runs):
    fig = make_figure("fig2_sign_flip", runs)
    ax_a, ax_b, ax_c = fig.axes[:3]
    lines = lines_by_label(ax_a)
    assert set(lines) == {f"{m} {s}" for m in ("GRPO", "Conformity", "Novelty")
                          for s in ("pass@16", "avg@16")}
    steps, acc = lines["Novelty avg@16"]
    assert steps.tolist() == [0, 20]
    np.testing.assert_allclose(acc, [0.30, 0.35])
    np.testing.assert_allclose(lines["GRPO pass@16"][1], [0.6, 0.8])
    np.testing.assert_allclose(lines_by_label(ax_b)["Conformity"][1], [0.65, 0.60])
    assert "DASD avg@16" not in lines  # only the sign-flip methods
    colors = {line.get_label(): to_hex(line.get_color()) for line in ax_a.lines}
    assert colors["GRPO pass@16"] == METHOD_COLORS["grpo"].lower()
    assert colors["Conformity avg@16"] == METHOD_COLORS["conformity"].lower()
    assert all(line.get_marker() not in (None, "None", "") for line in ax_a.lines)
    length = lines_by_label(fig.axes[3])["GRPO length"]
    np.testing.assert_allclose(length[1], [40.0, 60.0])


def test_fig3_spearman_in_title_and_binned_pressure(runs):
    fig = make_figure("fig3_entropy_pressure", runs)
    ax_a, ax_b = fig.axes
    assert "+0.80" in ax_a.get_title()
    h, a = lines_by_label(ax_a)["$A_t$"]
    np.testing.assert_allclose(h, [1, 2, 3, 4])  # 4 tokens -> 4 singleton bins
    np.testing.assert_allclose(a, [1, 3, 2, 4])
    d_minus = lines_by_label(ax_b)["$D^{(-)}_t$ Novelty"]
    np.testing.assert_allclose(d_minus[1], [0.4, 0.3, 0.2, 0.1])


def test_fig3_names_the_file_and_the_missing_column(tmp_path):
    make_probe_run(tmp_path, TOKENS.drop(columns=["D_minus"]))
    with pytest.raises(ValueError, match=r"tokens\.parquet: missing column 'D_minus'"):
        make_figure("fig3_entropy_pressure", load_runs(tmp_path))


def test_fig4_pass_at_k_per_task_from_rollouts(runs):
    fig = make_figure("fig4_pass_at_k", runs)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["aime24 (3 prompts)", "math500 (3 prompts)"]
    lines = lines_by_label(fig.axes[0])
    assert set(lines) == {"GRPO (Qwen3-1.7B)", "GRPO (Qwen3-4B)", "DASD (Qwen3-1.7B)",
                          "DASD (Qwen3-4B)"}
    ks, values = lines["DASD (Qwen3-1.7B)"]
    assert ks.tolist() == [1, 2, 4]
    c = np.array(EVAL_CORRECT[("dasd", "Qwen3-1.7B", "aime24")])
    expected = [100 * np.mean(pass_at_k(N_SAMPLES, c, k)) for k in (1, 2, 4)]
    np.testing.assert_allclose(values, expected)
    # By hand: c = 1, 1, 3 of 4 -> pass@1 = 5/12, pass@4 = 1.
    np.testing.assert_allclose(values[[0, 2]], [100 * 5 / 12, 100.0])


def test_fig5_training_dynamics_per_method(runs):
    fig = make_figure("fig5_training_dynamics", runs)
    reward = lines_by_label(fig.axes[0])
    assert list(reward) == ["GRPO", "OPSD", "DASD", "Conformity", "Novelty"]  # paper order
    steps, values = reward["DASD"]
    assert steps.tolist() == list(TRAIN_STEPS)
    np.testing.assert_allclose(values, [0.2, 0.35, 0.5, 0.65])
    np.testing.assert_allclose(lines_by_label(fig.axes[1])["OPSD"][1], [40, 30, 20, 10])


def test_fig5_averages_seeds_with_a_band(tmp_path):
    make_train_run(tmp_path, "dasd", seed=0, name="a")
    make_train_run(tmp_path, "dasd", seed=2, name="b")
    fig = make_figure("fig5_training_dynamics", load_runs(tmp_path))
    _, values = lines_by_label(fig.axes[0])["DASD"]
    np.testing.assert_allclose(values, [0.21, 0.36, 0.51, 0.66])  # seed offsets 0 and 0.02
    assert len(fig.axes[0].collections) == 1  # the min-max band


def test_fig6a_uses_the_last_rollouts_and_marks_p80(runs, world):
    fig = make_figure("fig6a_entropy_distribution", runs)
    (ax,) = fig.axes
    endpoint = read_rollouts(world / "train-dasd", step=30, split="train")
    values = np.concatenate(endpoint["entropy"].to_list()).astype(np.float64)
    label = f"DASD (p80 = {np.quantile(values, 0.8):.2f})"
    lines = lines_by_label(ax)
    assert label in lines and ax.get_yscale() == "log"
    x, freq = lines[label]
    assert np.nansum(freq) == pytest.approx(1.0)
    # The step-10 rollouts (entropies x10) are not the endpoint: nothing drawn beyond step 30's.
    assert x[np.isfinite(freq)].max() < values.max() + (x[1] - x[0])
    assert len([line for line in ax.lines if line.get_linestyle() == ":"]) == len(TRAIN_METHODS)


def test_fig8_macro_avg_per_model_size(runs):
    fig = make_figure("fig8_scale", runs)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Qwen3-1.7B", "Qwen3-4B"]
    lines = lines_by_label(ax)
    # DASD 1.7B: aime24 (1+1+3)/12, math500 (3+4+4)/12 -> macro (5/12 + 11/12) / 2 = 2/3.
    np.testing.assert_allclose(lines["DASD"][1][0], 100 * 2 / 3)
    np.testing.assert_allclose(lines["GRPO"][1], [100 * (3 / 12 + 10 / 12) / 2,
                                                  100 * (5 / 12 + 11 / 12) / 2])
    assert len(ax.collections) == 2  # one standard-error band per method


def test_fig8_needs_two_model_sizes(tmp_path):
    make_eval_run(tmp_path, "grpo", "Qwen3-1.7B", "aime24")
    result = make_figure("fig8_scale", load_runs(tmp_path))
    assert isinstance(result, Missing)
    assert "at least 2 model sizes; found 1 (Qwen3-1.7B)" in result.reason


def test_fig8_orders_models_by_logged_parameter_count(tmp_path):
    for name, size, correct in (("big-ckpt", 5e6, [True] * 4), ("small-ckpt", 2e6, [False] * 4)):
        with create_run(tmp_path / name, kind="eval", config={"n_parameters": size}, seed=0,
                        method="dasd", model=f"/ckpts/{name}", task="countdown") as run:
            run.write_rollouts(0, "eval", rollout_rows(step=0, split="eval", n_rows=4,
                                                       correct=correct, prompt_ids=["p"] * 4))
    (ax,) = make_figure("fig8_scale", load_runs(tmp_path)).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["small-ckpt\n2M", "big-ckpt\n5M"]
    np.testing.assert_allclose(lines_by_label(ax)["DASD"][1], [0.0, 100.0])


def test_fig10b_only_dasd_and_grpo(runs):
    fig = make_figure("fig10b_validation", runs)
    lines = lines_by_label(fig.axes[0])
    assert list(lines) == ["GRPO", "DASD"]
    np.testing.assert_allclose(lines["DASD"][1], [0.30, 0.50])
    assert "Avg@16" in fig.axes[0].get_title()


def test_fig10b_reads_avg_at_k_logged_with_its_k_apart(tmp_path):
    # analysis.health's naming: eval/avg_at_k beside eval/k (the sample count).
    with create_run(tmp_path / "g", kind="train", config={}, seed=0, method="grpo") as run:
        run.log_metrics(0, "eval", {"eval/avg_at_k": 0.25, "eval/k": 8})
        run.log_metrics(10, "eval", {"eval/avg_at_k": 0.5, "eval/k": 8})
    fig = make_figure("fig10b_validation", load_runs(tmp_path))
    assert "Avg@8" in fig.axes[0].get_title()
    steps, values = lines_by_label(fig.axes[0])["GRPO"]
    assert steps.tolist() == [0, 10]
    np.testing.assert_allclose(values, [0.25, 0.5])


def test_each_figure_says_what_it_lacks(tmp_path):
    make_eval_run(tmp_path, "grpo", "Qwen3-1.7B", "aime24")
    outcomes = {o.spec.name: o for o in write_figures(tmp_path, tmp_path / "out")}
    assert outcomes["fig4_pass_at_k"].files
    for name in ("fig2_sign_flip", "fig3_entropy_pressure", "fig5_training_dynamics",
                 "fig6a_entropy_distribution", "fig8_scale", "fig10b_validation"):
        assert not outcomes[name].files and outcomes[name].reason
        assert FIGURES[name].needs
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "fig4_pass_at_k.pdf", "fig4_pass_at_k.png"]


def assert_identical_reruns(runs, tmp_path, names=None) -> list[Path]:
    first = write_figures(runs, tmp_path / "a", names=names)
    second = write_figures(runs, tmp_path / "b", names=names)
    files = [p for o in first for p in o.files]
    assert files == [tmp_path / "a" / p.name for o in second for p in o.files]
    for path in files:
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    return files


def test_figures_are_byte_identical_across_runs(runs, tmp_path):
    # Mathtext, twin axes and bands: the figures most likely to carry unstable bytes.
    files = assert_identical_reruns(runs, tmp_path, ["fig2_sign_flip", "fig3_entropy_pressure"])
    assert [p.name for p in files] == ["fig2_sign_flip.png", "fig2_sign_flip.pdf",
                                       "fig3_entropy_pressure.png", "fig3_entropy_pressure.pdf"]
    png, pdf = files[0].read_bytes(), files[1].read_bytes()
    assert png.startswith(b"\x89PNG") and b"Software" not in png
    assert pdf.startswith(b"%PDF") and b"CreationDate" not in pdf and b"Producer" not in pdf


@pytest.mark.slow
def test_every_figure_is_byte_identical_across_runs(runs, tmp_path):
    files = assert_identical_reruns(runs, tmp_path)
    assert len(files) == 2 * len(FIGURES)  # every figure has data in the full world


# --------------------------------------------------------------------------- command


def test_cli_figures_writes_and_names_what_is_missing(tmp_path):
    make_probe_run(tmp_path)
    make_eval_run(tmp_path, "dasd", "Qwen3-1.7B", "aime24")
    out = tmp_path / "figs"
    result = CliRunner().invoke(analyze_app, ["figures", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "fig3_entropy_pressure.pdf", "fig3_entropy_pressure.png",
        "fig4_pass_at_k.pdf", "fig4_pass_at_k.png"]
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("wrote")] == [
        "wrote fig3_entropy_pressure", "wrote fig4_pass_at_k"]
    fig2 = next(line for line in lines if "fig2_sign_flip" in line)
    assert fig2.startswith("no data") and "(dasd-probe sign-flip)" in fig2


def test_cli_figures_without_any_data_exits_1(tmp_path):
    with create_run(tmp_path / "r", kind="probe:other", config={}, seed=0):
        pass
    result = CliRunner().invoke(analyze_app, ["figures", str(tmp_path), "--out",
                                              str(tmp_path / "figs")])
    assert result.exit_code == 1
    assert "no paper figure has data" in result.output


def test_cli_figures_bad_path_is_an_error(tmp_path):
    result = CliRunner().invoke(analyze_app, ["figures", str(tmp_path / "nope"), "--out",
                                              str(tmp_path / "figs")])
    assert result.exit_code == 2
    # Rich wraps the one error line at the terminal width; the message is whole once joined.
    message = " ".join(result.output.split())
    assert "nope: does not exist" in message and "Traceback" not in message


# --------------------------------------------------------------------------- Fig. 6b/6c, Fig. 7

#: An arm-flip summary (flip at step 2 of 4): base rows 0..2, then each arm's rows 2..4.
ARM_FLIP_SUMMARY = pd.DataFrame({
    "arm": ["base"] * 3 + ["none"] * 3 + ["low"] * 3 + ["high"] * 3,
    "step": [0, 1, 2, 2, 3, 4, 2, 3, 4, 2, 3, 4],
    "eval/step_acc": [0.5, 0.6, 0.7, 0.7, 0.75, 0.8, 0.7, 0.5, 0.4, 0.7, 0.72, 0.78],
    "eval/ey_density": [10.0, 11.0, 12.0, 12.0, 13.0, 14.0, 12.0, 11.0, 13.0, 12.0, 6.0, 4.0],
})


def make_arm_flip_run(root: Path, summary: pd.DataFrame = ARM_FLIP_SUMMARY,
                      name: str = "probe-arm-flip") -> Path:
    path = root / name
    with create_run(path, kind="probe:arm-flip", config={"flip_at": 2, "arms": []}, seed=0,
                    model="tiny", task="countdown") as run:
        run.write_table("summary", summary)
    return path


def _fork_contrast(cut: str, metric: str, diff: float) -> dict:
    return {"cut": cut, "condition": "teacher_top", "reference": "unmodified",
            "metric": metric, "rate": 0.5 + diff, "reference_rate": 0.5, "diff": diff,
            "ci_low": diff - 0.1, "ci_high": diff + 0.05}


def causal_entry(label: str, method: str | None, shift: float) -> dict:
    """A checkpoint entry of a causal summary: fork effects -0.3/-0.1/0 (+ shift) on
    correctness, half that on revisions; revision rates 0.6/0.2/0.8 (+ shift)."""
    forks = [_fork_contrast(cut, metric, scale * (diff + shift))
             for cut, diff in (("high", -0.3), ("low", -0.1), ("random", 0.0))
             for metric, scale in (("correct", 1.0), ("revises", 0.5))]
    rates = {"preserve": 0.6 + shift, "suppress": 0.2 + shift, "teacher_force": 0.8 + shift}
    return {
        "label": label, "model": f"/ckpt/{label}", "method": method,
        "rollouts": {"n": 8, "accuracy": 0.5, "rev_rate": 0.25},
        "forks": {"n_prefixes": 24, "rates": [], "contrasts": forks},
        "revisions": {
            "n_prefixes": 3,
            "rates": [{"condition": c, "n": 12, "correct": v, "revises": 0.5,
                       "marker_at_cut": 0.0} for c, v in rates.items()],
            "contrasts": [{"condition": "preserve", "reference": "suppress", "metric": "correct",
                           "rate": rates["preserve"], "reference_rate": rates["suppress"],
                           "diff": 0.4, "ci_low": 0.1 + shift, "ci_high": 0.6}],
        },
    }


def make_causal_run(root: Path, name: str = "probe-causal",
                    entries: list[dict] | None = None) -> Path:
    path = root / name
    entries = entries if entries is not None else [causal_entry("dasd@40", "dasd", 0.0),
                                                   causal_entry("grpo@40", "grpo", 0.1)]
    with create_run(path, kind="probe:causal", config={}, seed=0, model="tiny",
                    task="countdown") as run:
        run.write_json("summary", {"checkpoints": entries, "continuations": 4})
    return path


def test_fig6bc_draws_the_unperturbed_run_through_the_flip_and_both_flips(runs):
    fig = make_figure("fig6bc_arm_flip", runs)
    ax_b, ax_c = fig.axes
    lines = lines_by_label(ax_b)
    assert list(lines) == ["unperturbed DASD", "low-$H_t$ arm flipped", "high-$H_t$ arm flipped"]
    steps, values = lines["unperturbed DASD"]
    assert steps.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(values, [0.5, 0.6, 0.7, 0.75, 0.8])
    np.testing.assert_allclose(lines["low-$H_t$ arm flipped"][1], [0.7, 0.5, 0.4])
    assert lines_by_label(ax_c)["high-$H_t$ arm flipped"][0].tolist() == [2, 3, 4]
    np.testing.assert_allclose(lines_by_label(ax_c)["high-$H_t$ arm flipped"][1], [12, 6, 4])
    styles = {line.get_label(): line.get_linestyle() for line in ax_b.lines}
    assert styles["unperturbed DASD"] == ":" and styles["low-$H_t$ arm flipped"] == "-"
    colors = {line.get_label(): to_hex(line.get_color()) for line in ax_b.lines}
    assert colors["unperturbed DASD"] == METHOD_COLORS["dasd"].lower()
    flip_lines = [line for line in ax_b.lines if line.get_label().startswith("_")]
    assert [float(line.get_xdata()[0]) for line in flip_lines] == [2.0]


def test_fig6bc_averages_probe_runs_and_names_a_bad_summary(tmp_path):
    make_arm_flip_run(tmp_path, name="a")
    shifted = ARM_FLIP_SUMMARY.assign(**{"eval/step_acc": ARM_FLIP_SUMMARY["eval/step_acc"] + 0.1})
    make_arm_flip_run(tmp_path, shifted, name="b")
    (ax_b, _) = make_figure("fig6bc_arm_flip", load_runs(tmp_path)).axes
    np.testing.assert_allclose(lines_by_label(ax_b)["low-$H_t$ arm flipped"][1],
                               [0.75, 0.55, 0.45])
    assert len(ax_b.collections) == 3  # one min-max band per curve
    make_arm_flip_run(tmp_path, ARM_FLIP_SUMMARY.drop(columns="arm"), name="c")
    with pytest.raises(ValueError, match=r"c/summary\.parquet: missing column 'arm'"):
        make_figure("fig6bc_arm_flip", load_runs(tmp_path))


def bars(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per bar label: bar heights and (low, high) of their error bars."""
    out = {}
    for container in (c for c in ax.containers if isinstance(c, BarContainer)):
        heights = np.array([p.get_height() for p in container.patches])
        segments = container.errorbar.lines[2][0].get_segments() if container.errorbar else []
        out[container.get_label()] = heights, np.array([[s[0][1], s[1][1]] for s in segments])
    return out


def test_fig7_draws_effects_with_their_intervals_per_checkpoint(runs):
    fig = make_figure("fig7_causal", runs)
    ax_a, ax_b, ax_c, ax_d = fig.axes
    a = bars(ax_a)
    assert list(a) == ["dasd@40", "grpo@40"]
    np.testing.assert_allclose(a["dasd@40"][0], [-0.3, -0.1, 0.0])
    np.testing.assert_allclose(a["dasd@40"][1], [[-0.4, -0.25], [-0.2, -0.05], [-0.1, 0.05]])
    np.testing.assert_allclose(a["grpo@40"][0], [-0.2, 0.0, 0.1])
    np.testing.assert_allclose(bars(ax_b)["dasd@40"][0], [-0.15, -0.05, 0.0])
    np.testing.assert_allclose(bars(ax_c)["grpo@40"][0], [0.7, 0.3, 0.9])
    assert bars(ax_c)["grpo@40"][1].size == 0, "rates carry no interval"
    d = bars(ax_d)
    np.testing.assert_allclose(d["dasd@40"][0], [0.4])
    np.testing.assert_allclose(d["grpo@40"][1], [[0.2, 0.6]])
    colors = {c.get_label(): to_hex(c.patches[0].get_facecolor()) for c in ax_d.containers
              if isinstance(c, BarContainer)}
    assert colors == {"dasd@40": METHOD_COLORS["dasd"].lower(),
                      "grpo@40": METHOD_COLORS["grpo"].lower()}
    assert [t.get_text() for t in ax_a.get_xticklabels()] == ["high-$H_t$", "low-$H_t$",
                                                              "random"]


def test_fig7_without_revision_prefixes_says_so(tmp_path):
    entry = causal_entry("tiny", None, 0.0)
    entry["revisions"] = {"n_prefixes": 0, "rates": [], "contrasts": []}
    make_causal_run(tmp_path, entries=[entry])
    fig = make_figure("fig7_causal", load_runs(tmp_path))
    assert [t.get_text() for t in fig.axes[3].texts] == ["not logged"]
    assert list(bars(fig.axes[0])) == ["tiny"]


def test_new_figures_say_what_they_lack(tmp_path):
    make_eval_run(tmp_path, "grpo", "Qwen3-1.7B", "aime24")
    runs = load_runs(tmp_path)
    assert make_figure("fig6bc_arm_flip", runs).reason == (
        "no probe:arm-flip run with summary.parquet")
    assert make_figure("fig7_causal", runs).reason == "no probe:causal run with summary.json"
    assert "dasd-probe arm-flip" in FIGURES["fig6bc_arm_flip"].needs
    assert "dasd-probe causal" in FIGURES["fig7_causal"].needs


def test_new_figures_are_byte_identical_across_runs(runs, tmp_path):
    files = assert_identical_reruns(runs, tmp_path, ["fig6bc_arm_flip", "fig7_causal"])
    assert len(files) == 4


def test_method_variants_are_separate_curves():
    from pathlib import Path

    from figures.runs import Run, group_runs

    def run(name, **config):
        manifest = {"kind": "train", "method": "dasd", "model": "tiny", "task": "countdown",
                    "config": {"method": "dasd", **config}}
        return Run(Path(name), manifest)

    groups = group_runs([run("a"), run("b"), run("c", method_options={"flip": "low"}),
                         run("d", routing="position")])
    assert [len(g.runs) for g in groups] == [2, 1, 1]
    labels = [g.label for g in groups]
    assert any("flip=low" in label for label in labels)
    assert any("routing=position" in label for label in labels)


def test_figures_draw_a_run_as_recorded_where_the_run_view_traces_it(tmp_path):
    from dasd.runlog import Run as RunView
    from dasd.runlog import create_run, read_manifest
    from figures.runs import Run

    train = create_run(tmp_path / "train", kind="train", config={}, seed=0, model="tiny",
                       method="grpo")
    ckpt = train.path / "checkpoints" / "step-2"
    ckpt.mkdir(parents=True)
    train.finish()
    ev = create_run(tmp_path / "ev", kind="eval", config={}, seed=0, model=str(ckpt))
    ev.finish()
    manifest = read_manifest(ev.path)
    drawn, viewed = Run(ev.path, manifest), RunView(ev.path, manifest)
    assert (drawn.method, drawn.model, drawn.task) == (None, str(ckpt), "unknown task")
    assert (viewed.method, viewed.model, viewed.task) == ("grpo", "tiny", None)


def test_every_registered_method_has_one_style_used_everywhere():
    from analysis.paper import METHOD_ROWS
    from analysis.tables import METHOD_LABELS as TABLE_LABELS
    from dasd.advantages import METHODS
    from dasd.method_styles import METHOD_STYLES
    from figures.style import METHOD_LABELS, METHOD_MARKERS, METHOD_ORDER

    assert set(METHOD_STYLES) == set(METHODS.names())
    assert sorted(METHOD_ORDER) == sorted(METHOD_STYLES)
    assert METHOD_LABELS == {m: METHOD_STYLES[m].label for m in METHOD_ORDER} == {
        m: TABLE_LABELS[m] for m in METHOD_ORDER}
    assert list(TABLE_LABELS) == list(METHOD_STYLES), "tables keep the paper's row order"
    assert METHOD_MARKERS["dasd"] == "D" and METHOD_COLORS["dasd"] == "#2CA02C"
    assert METHOD_ROWS == {"grpo": "+GRPO", "hepo": "+HEPO", "opsd": "+OPSD", "sdpo": "+SDPO",
                           "rlsd": "+RLSD", "srpo": "+SRPO", "dasd": "+DASD (ours)"}
