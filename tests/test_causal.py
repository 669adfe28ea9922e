"""RQ2 causal probe: cut rules, revision prefixes and the suppress ban by hand, the paired
bootstrap by hand, and on a tiny random Qwen3: the teacher's top choice and teacher-forcing use
the privileged context, suppress really bans the marker starts, the parts and the run
directory, checkpoint resolution, and the CLI."""

from __future__ import annotations

import dataclasses
import shutil
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from dasd.health import revises
from analysis.stats import paired_difference
from cli import probe_app
from dasd.rollout import generate
from dasd.runlog import create_run, read_json, read_manifest, read_table
from figures import load_runs, make_figure
from probes.causal import (
    CUTS,
    FIRST_TOKENS,
    CausalConfig,
    Checkpoint,
    FirstTokenInputs,
    ProbeContext,
    _continue,
    _unique,
    marker_start_tokens,
    next_token_logits,
    probe_rollouts,
    resolve_checkpoint,
    revising_markers,
    run_causal,
    starts_with_marker,
)
from tests.hostile import assert_one_line_error

runner = CliRunner()


def small_config(model_dir, **overrides) -> CausalConfig:
    values = {"checkpoints": (str(model_dir),), "n_prompts": 3, "k": 2, "continuations": 2,
              "max_new_tokens": 16, "n_boot": 50, "device": "cpu"}
    return CausalConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def ctx(model_dir) -> ProbeContext:
    return ProbeContext.load(Checkpoint("m", str(model_dir)), small_config(model_dir))


def greedy(ctx: ProbeContext) -> ProbeContext:
    return dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, temperature=0.0))


def cuts_for(ctx: ProbeContext, prefixes: list[str]) -> pd.DataFrame:
    ids = list(ctx.problems)
    return pd.DataFrame({"prompt_id": [ids[i % len(ids)] for i in range(len(prefixes))],
                         "sample_idx": 0, "prefix": prefixes})


# --------------------------------------------------------------------------- pure parts


def test_cut_rules_by_hand():
    entropy = np.array([0.5, 2.0, 0.1, 2.0, 0.1])
    rng = np.random.default_rng(0)
    assert CUTS.get("high")(entropy, rng) == 1  # earliest of the tied maxima
    assert CUTS.get("low")(entropy, rng) == 2
    draws = {CUTS.get("random")(entropy, rng) for _ in range(200)}
    assert draws == {0, 1, 2, 3, 4}
    with pytest.raises(ValueError, match="unknown cut 'middle'; valid: high, low, random"):
        CUTS.get("middle")


@pytest.mark.parametrize(("text", "offsets"), [
    ("7*3=21 then 21+8=29 wait , try 8*3=24 then add 7", [20]),
    ("a b c d wait a b c d", []),
    ("1+1=2\n2+2=4\nwait, 4 is not 9\n3*3=9\nanswer: 3*3", [12]),
    ("wait x y z hmm x y z", [0]),
    ("no marker here at all", []),
])
def test_revising_markers_by_hand(text, offsets):
    found = revising_markers(text)
    assert [m.start() for m in found] == offsets
    assert bool(found) == revises(text)


def test_revising_markers_agree_with_health_revises_on_random_texts():
    rng = np.random.default_rng(0)
    vocab = ["a", "b", "c", "1+1=2", "wait,", "wait", "hmm", "check", "x", "y", "maybe"]
    for _ in range(300):
        text = " ".join(rng.choice(vocab, size=rng.integers(0, 40)))
        assert bool(revising_markers(text, window=5)) == revises(text, window=5), text


@pytest.mark.parametrize(("text", "expected"), [
    ("wait, 3 is not 4", True), ("\n  hmm", True), ("Perhaps 3*4", True),
    ("8*3=24 wait", False), ("awaiting", False), ("", False),
])
def test_starts_with_marker(text, expected):
    assert starts_with_marker(text) is expected


def test_marker_start_tokens_of_the_char_tokenizer(ctx):
    tok = ctx.tokenizer
    banned = marker_start_tokens(tok)
    # Every default marker starts with one of these letters; capitals are not in the charset.
    assert sorted(tok.decode([i]) for i in banned) == list("achlmpsw")
    assert tok.unk_token_id not in banned and tok.convert_tokens_to_ids(" ") not in banned
    assert [tok.decode([i]) for i in marker_start_tokens(tok, ["zz top"])] == ["z"]
    with pytest.raises(ValueError, match="spells none of the markers"):
        marker_start_tokens(tok, ["Über"])


def test_first_token_rules_on_rigged_logits():
    student = torch.tensor([[0.0, 9.0, 8.0, 1.0]]).repeat(500, 1)  # banned 1 and 2 lead
    teacher = torch.tensor([[0.0, 1.0, 2.0, 7.0]]).repeat(500, 1)
    banned = torch.tensor([1, 2])
    generator = torch.Generator().manual_seed(0)

    def rule(name, temperature):
        return FIRST_TOKENS.get(name)(FirstTokenInputs(
            student, teacher, banned=banned, temperature=temperature, top_p=1.0,
            generator=generator))

    drawn = rule("student_banned", 1.0)
    assert not torch.isin(drawn, banned).any()
    assert set(drawn.tolist()) == {0, 3}
    assert (rule("student_banned", 0.0) == 3).all()
    assert (rule("student", 0.0) == 1).all()
    assert (rule("teacher_top", 1.0) == 3).all()
    assert (rule("teacher", 0.0) == 3).all()


def test_paired_difference_by_hand():
    # Both prompts gain 0.5: every resample's difference is 0.5.
    out = paired_difference((np.array([1.0, 0.0]), np.array([2.0, 2.0])),
                            (np.array([2.0, 1.0]), np.array([2.0, 2.0])), n_boot=200)
    assert (out["base"], out["value"], out["diff"]) == (0.25, 0.75, 0.5)
    assert (out["ci_low"], out["ci_high"]) == (0.5, 0.5)
    # Prompt 0 gains 0, prompt 1 gains 1: resamples give 0, 0.5 or 1.
    out = paired_difference((np.array([1.0, 0.0]), np.array([2.0, 2.0])),
                            (np.array([1.0, 2.0]), np.array([2.0, 2.0])), n_boot=2000,
                            level=0.9)
    assert out["diff"] == 0.5 and (out["ci_low"], out["ci_high"]) == (0.0, 1.0)
    empty = paired_difference((np.zeros(2), np.zeros(2)), (np.zeros(2), np.zeros(2)), n_boot=10)
    assert all(np.isnan(empty[key]) for key in ("base", "diff", "ci_low", "ci_high"))


def test_next_token_logits_ignore_padding(ctx):
    prompts = ["nums: 1 2 3\ntarget: 6\n", "n\n"]
    batched = next_token_logits(ctx.model, ctx.tokenizer, prompts, batch_size=2)
    for i, prompt in enumerate(prompts):
        alone = next_token_logits(ctx.model, ctx.tokenizer, [prompt], batch_size=1)
        torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-5)
    ids = ctx.tokenizer(prompts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full = ctx.model(input_ids=ids).logits[0, -1]
    torch.testing.assert_close(batched[0], full, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- conditions


def _greedy_text(ctx: ProbeContext, prompt: str, budget: int) -> str:
    return generate(ctx.model, ctx.tokenizer, [prompt], max_new_tokens=budget,
                    temperature=0.0).responses[0]


def test_teacher_force_continues_from_the_privileged_context(ctx):
    g = greedy(ctx)
    cuts = cuts_for(g, ["1+1=2\n", "3*"])
    forced = _continue(g, cuts, "teacher_force", seed=0)
    kept = _continue(g, cuts, "preserve", seed=0)
    assert forced["condition"].unique().tolist() == ["teacher_force"]
    assert forced["continuation_idx"].tolist() == [0, 1, 0, 1]
    for i, (pid, prefix) in enumerate(zip(cuts["prompt_id"], cuts["prefix"])):
        problem = g.problems[pid]
        budget = g.cfg.max_new_tokens - len(prefix)
        teacher = prefix + _greedy_text(g, g.task.teacher_prompt(problem) + prefix, budget)
        student = prefix + _greedy_text(g, g.task.student_prompt(problem) + prefix, budget)
        assert forced["response"].iloc[2 * i] == teacher
        assert kept["response"].iloc[2 * i] == student
        assert teacher != student, "the random model's two contexts give different text"
        assert g.task.teacher_prompt(problem).startswith("ref: ")


def test_teacher_top_emits_the_teachers_argmax_then_the_student_continues(ctx):
    cuts = cuts_for(ctx, ["1+1=2\n", "2+", "nums"])
    rows = _continue(ctx, cuts, "teacher_top", seed=0)
    problems = [ctx.problems[p] for p in cuts["prompt_id"]]
    teacher = next_token_logits(ctx.model, ctx.tokenizer,
                                [ctx.task.teacher_prompt(p) + x
                                 for p, x in zip(problems, cuts["prefix"])], batch_size=8)
    assert rows["first_token"].tolist() == np.repeat(teacher.argmax(-1).numpy(), 2).tolist()
    g = greedy(ctx)
    greedy_rows = _continue(g, cuts, "teacher_top", seed=0)
    for i, (problem, prefix) in enumerate(zip(problems, cuts["prefix"])):
        first = ctx.tokenizer.decode([int(teacher[i].argmax())])
        tail = _greedy_text(g, g.task.student_prompt(problem) + prefix + first,
                            g.cfg.max_new_tokens - len(prefix) - 1)
        assert greedy_rows["response"].iloc[2 * i] == prefix + first + tail


class _Says:
    """A forward hook that makes the model continue "\\n" with "wait, " (a +50 logit)."""

    def __init__(self, tokenizer) -> None:
        chain = "\nwait, "
        self.next = {tokenizer.convert_tokens_to_ids(a): tokenizer.convert_tokens_to_ids(b)
                     for a, b in pairwise(chain)}

    def __call__(self, module, args, kwargs, output):
        last = kwargs["input_ids"][:, -1].tolist()
        for row, token in enumerate(last):
            if token in self.next:
                output.logits[row, -1, self.next[token]] += 50.0
        return output


def test_suppress_bans_the_marker_starts_at_the_cut(ctx):
    cuts = cuts_for(ctx, ["1+1=2\n", "3*3=9\n", "4+4=8\n"])
    handle = ctx.model.register_forward_hook(_Says(ctx.tokenizer), with_kwargs=True)
    try:
        kept = _continue(ctx, cuts, "preserve", seed=0)
        suppressed = _continue(ctx, cuts, "suppress", seed=0)
    finally:
        handle.remove()
    w = ctx.tokenizer.convert_tokens_to_ids("w")
    assert (kept["first_token"] == w).all() and kept["marker_at_cut"].all()
    assert all(r.startswith(x + "wait, ") for r, x in zip(kept["response"],
                                                          np.repeat(cuts["prefix"], 2)))
    assert not np.isin(suppressed["first_token"], ctx.banned.numpy()).any()
    assert not suppressed["marker_at_cut"].any()


# --------------------------------------------------------------------------- parts


def crafted_rollouts(ctx: ProbeContext) -> pd.DataFrame:
    """Two rollouts per problem: the first fails a chain, says "wait" and gives the reference
    answer (a revision at offset 12); the second answers at once (no marker)."""
    rows = []
    for pid, problem in ctx.problems.items():
        target = problem.meta["target"]
        revised = f"1+1=2\n2+2=4\nwait, 4 is not {target}\nanswer: {problem.answer}"
        for s, text in enumerate([revised, f"answer: {problem.answer}"]):
            rows.append({"prompt_id": pid, "sample_idx": s, "response": text})
    return pd.DataFrame(rows)


def test_revisions_part_on_crafted_rollouts(ctx):
    cfg = dataclasses.replace(ctx.cfg, parts=("revisions",))
    world = dataclasses.replace(ctx, cfg=cfg)
    rollouts = crafted_rollouts(world)
    report, tables = probe_rollouts(world, rollouts)
    n = len(world.problems)
    assert report["revisions"]["n_prefixes"] == n and "forks" not in report
    rows = tables["revisions"]
    assert len(rows) == n * 3 * cfg.continuations
    assert rows["condition"].unique().tolist() == ["preserve", "suppress", "teacher_force"]
    assert (rows["marker"] == "wait").all() and (rows["offset"] == 12).all()
    assert rows["response"].str.startswith("1+1=2\n2+2=4\n").all()
    assert (rows["sample_idx"] == 0).all()
    rates = {r["condition"]: r for r in report["revisions"]["rates"]}
    suppressed = rows[rows["condition"] == "suppress"]
    assert rates["suppress"]["correct"] == suppressed["correct"].mean()
    assert rates["suppress"]["n"] == n * cfg.continuations
    contrasts = report["revisions"]["contrasts"]
    assert [(c["condition"], c["reference"], c["metric"]) for c in contrasts] == [
        ("preserve", "suppress", "correct"), ("preserve", "suppress", "revises"),
        ("teacher_force", "preserve", "correct"), ("teacher_force", "preserve", "revises")]
    for c in contrasts:
        assert c["diff"] == pytest.approx(c["rate"] - c["reference_rate"])
        assert c["rate"] == rates[c["condition"]][c["metric"]]


def test_forks_part_cuts_sampled_rollouts_where_the_rules_say(ctx):
    world = dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, parts=("forks",)))
    rollouts = world.sample_rollouts()
    report, tables = probe_rollouts(world, rollouts)
    rows = tables["forks"]
    eligible = [r for r in rollouts.itertuples() if r.n_tokens - int(r.token_ids[-1] == 1) > 0]
    assert report["forks"]["n_prefixes"] == 3 * len(eligible)
    assert len(rows) == 3 * len(eligible) * 2 * world.cfg.continuations
    source = rollouts.set_index(["prompt_id", "sample_idx"])
    for row in rows.itertuples():
        rollout = source.loc[(row.prompt_id, row.sample_idx)]
        n = rollout["n_tokens"] - int(rollout["token_ids"][-1] == 1)
        entropy = rollout["entropy"][:n]
        expected = {"high": int(np.argmax(entropy)), "low": int(np.argmin(entropy))}
        assert row.position == expected.get(row.cut, row.position) and row.position < n
        prefix = world.tokenizer.decode(rollout["token_ids"][: row.position].tolist())
        assert row.response.startswith(prefix)
        assert row.original_token == rollout["token_ids"][row.position]
    unmodified = rows[rows["condition"] == "unmodified"]
    top = rows[rows["condition"] == "teacher_top"]
    key = ["cut", "prompt_id", "sample_idx", "position", "continuation_idx"]
    pd.testing.assert_frame_equal(unmodified[key].reset_index(drop=True),
                                  top[key].reset_index(drop=True))
    cells = {(c["cut"], c["metric"]) for c in report["forks"]["contrasts"]}
    assert cells == {(cut, m) for cut in ("high", "low", "random") for m in ("correct", "revises")}
    changed = {r["cut"]: r["changed"] for r in report["forks"]["rates"]
               if r["condition"] == "teacher_top"}
    for cut, value in changed.items():
        part = top[top["cut"] == cut]
        assert value == (part["first_token"] != part["original_token"]).mean()


# --------------------------------------------------------------------------- checkpoints, run


def fake_train_run(root, model_dir, *, method="dasd", step=3):
    path = root / f"train-{method}"
    with create_run(path, kind="train", config={}, seed=0, method=method):
        pass
    shutil.copytree(model_dir, path / "checkpoints" / f"step-{step}")
    return path


def test_resolve_checkpoint(model_dir, tmp_path):
    assert resolve_checkpoint("tiny") == Checkpoint("tiny", "tiny")
    assert resolve_checkpoint(str(model_dir)) == Checkpoint(model_dir.name, str(model_dir))
    run = fake_train_run(tmp_path, model_dir)
    shutil.copytree(model_dir, run / "checkpoints" / "step-10")
    newest = Checkpoint("dasd@10", str(run / "checkpoints" / "step-10"), "dasd")
    assert resolve_checkpoint(str(run)) == newest
    assert resolve_checkpoint(str(run / "checkpoints" / "step-3")) == Checkpoint(
        "dasd@3", str(run / "checkpoints" / "step-3"), "dasd")
    with create_run(tmp_path / "ev", kind="eval", config={}, seed=0):
        pass
    with pytest.raises(ValueError, match="is a eval run; give a train run"):
        resolve_checkpoint(str(tmp_path / "ev"))
    with create_run(tmp_path / "empty", kind="train", config={}, seed=0):
        pass
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"))
    assert [c.label for c in _unique([newest, newest, Checkpoint("x", "x")])] == [
        "dasd@10", "dasd@10#2", "x"]


def test_run_causal_compares_checkpoints(model_dir, tmp_path):
    run = fake_train_run(tmp_path, model_dir, method="grpo", step=5)
    cfg = small_config(model_dir, checkpoints=(str(model_dir), str(run)), n_prompts=2, k=1)
    lines = []
    summary = run_causal(cfg, tmp_path / "causal", progress=lines.append)
    assert [e["label"] for e in summary["checkpoints"]] == [model_dir.name, "grpo@5"]
    assert [e["method"] for e in summary["checkpoints"]] == [None, "grpo"]
    assert len(lines) == 2 and lines[1].startswith("grpo@5: 2 x 1 rollouts")
    manifest = read_manifest(tmp_path / "causal")
    assert manifest["kind"] == "probe:causal" and manifest["status"] == "complete"
    assert [r["label"] for r in manifest["config"]["resolved"]] == [model_dir.name, "grpo@5"]
    assert read_json(tmp_path / "causal", "summary") == summary
    source = read_table(tmp_path / "causal", "source_rollouts")
    assert source["checkpoint"].tolist() == [model_dir.name] * 2 + ["grpo@5"] * 2
    forks = read_table(tmp_path / "causal", "forks")
    assert set(forks["checkpoint"]) == {model_dir.name, "grpo@5"}
    first = summary["checkpoints"][0]
    assert first["forks"]["n_prefixes"] == 3 * 2
    assert first["revisions"] == {"n_prefixes": 0, "rates": [], "contrasts": []}
    # The same weights under two names, seeded alike: the same rollouts and numbers.
    assert summary["checkpoints"][1]["forks"] == first["forks"]
    assert source["response"].tolist()[:2] == source["response"].tolist()[2:]
    fig = make_figure("fig7_causal", load_runs(tmp_path / "causal"))
    bars = [c for c in fig.axes[0].containers if hasattr(c, "patches")]
    assert [b.get_label() for b in bars] == [model_dir.name, "grpo@5"]
    heights = [p.get_height() for p in bars[0].patches]
    assert heights == [c["diff"] for c in first["forks"]["contrasts"] if c["metric"] == "correct"]
    assert [t.get_text() for t in fig.axes[2].texts] == ["not logged"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"parts": ("forks", "bogus")}, "unknown part 'bogus'; valid: forks, revisions"),
    ({"cuts": ("middle",)}, "unknown cut 'middle'"),
    ({"checkpoints": ()}, "checkpoints must not be empty"),
    ({"k": 0}, "k must be >= 1"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"level": 1.0}, r"level must be in \(0, 1\)"),
])
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        CausalConfig(**overrides)


def test_cli_runs_the_probe(model_dir, tmp_path):
    args = ["causal", "--checkpoints", str(model_dir), "--n-prompts", "2", "--k", "1",
            "--continuations", "1", "--max-new-tokens", "10", "--n-boot", "20", "--device",
            "cpu", "--runs-dir", str(tmp_path), "--name", "c"]
    result = runner.invoke(probe_app, args)
    assert result.exit_code == 0, result.output
    assert "Fig. 7a,b" in result.output and "no revision prefix" in result.output
    assert read_manifest(tmp_path / "c")["kind"] == "probe:causal"


def test_cli_bad_part_gives_a_one_line_error(tmp_path):
    result = runner.invoke(probe_app, ["causal", "--parts", "forks,bogus", "--runs-dir",
                                       str(tmp_path), "--name", "c"])
    assert assert_one_line_error(result) == (
        "error: unknown part 'bogus'; valid: forks, revisions")
    assert not (tmp_path / "c").exists()
