"""`dasd-probe reproduce`: the stage plan, resume (finished stages skipped, interrupted ones
resumed or restarted), settings checks, and one end-to-end run on a tiny random model."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import probe_app
from dasd.runlog import create_run, read_manifest
from probes import reproduce
from probes.reproduce import (
    BUDGETS,
    METHODS,
    PANELS,
    Budget,
    ReproduceConfig,
    Stage,
    plan,
    run_reproduce,
    run_stages,
    stage_done,
)

runner = CliRunner()


def fake_stage(name: str, calls: list[str], *, resumable: bool = False,
               finish: bool = True) -> Stage:
    """A stage that records its call and writes an eval run (left ``running`` unless
    ``finish``)."""

    def work(run_dir: Path, report) -> None:
        calls.append(name)
        report(name, 1, 2)
        if (run_dir / "manifest.json").is_file():
            assert resumable, "a restarted stage must find its directory removed"
            from dasd.runlog import open_run

            open_run(run_dir).finish()
            return
        run = create_run(run_dir, kind="eval", config={"n": 1}, seed=0, model="m", task="t")
        (run_dir / "partial.txt").write_text("written before the end")
        if finish:
            run.finish()

    return Stage(name, "eval", resumable, work)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def stage(self, index, stage, action):
        self.events.append(("stage", index, stage.name, action))

    def progress(self, run, done, total):
        self.events.append(("progress", run, done, total))

    def finished(self, index, stage):
        self.events.append(("finished", index, stage.name))


def test_a_finished_stage_is_skipped_and_an_interrupted_one_resumes_or_restarts(tmp_path):
    cfg = ReproduceConfig()
    calls: list[str] = []
    first = [fake_stage("a", calls), fake_stage("b", calls, resumable=True, finish=False),
             fake_stage("c", calls, finish=False)]
    assert run_stages(cfg, tmp_path, first) == {"a": "run", "b": "run", "c": "run"}
    assert calls == ["a", "b", "c"]
    assert stage_done(tmp_path / "a") and not stage_done(tmp_path / "b")
    # Second pass: "a" is complete and skipped untouched; "b" (resumable) continues in its
    # directory; "c" (not resumable) is restarted from an empty directory.
    calls.clear()
    shown = Recorder()
    second = [fake_stage("a", calls), fake_stage("b", calls, resumable=True),
              fake_stage("c", calls)]
    assert run_stages(cfg, tmp_path, second, display=shown) == {
        "a": "skipped", "b": "resumed", "c": "restarted"}
    assert calls == ["b", "c"]
    assert (tmp_path / "b" / "partial.txt").is_file()
    assert all(stage_done(tmp_path / n) for n in "abc")
    assert shown.events[:2] == [("stage", 0, "a", "skipped"), ("finished", 0, "a")]
    assert ("stage", 2, "c", "restarted") in shown.events
    assert ("progress", "b", 1, 2) in shown.events
    # Third pass: everything is skipped, nothing runs.
    calls.clear()
    assert set(run_stages(cfg, tmp_path, second).values()) == {"skipped"}
    assert calls == []


def test_plan_trains_before_what_reads_the_checkpoints():
    cfg = ReproduceConfig(budget="quick", seeds=2, seed=5)
    names = [s.name for s in plan(cfg)]
    assert names[0] == "eval-base"
    for seed in (5, 6):
        for method in METHODS:
            assert names.index(f"train-{method}-s{seed}") < names.index(
                f"eval-{method}-s{seed}")
        assert f"sign-flip-s{seed}" in names and f"arm-flip-s{seed}" in names
    assert all(names.index(f"train-{m}-s5") < names.index("causal") for m in METHODS)
    assert names[-4:] == [f"ablate-{p}" for p in PANELS]
    assert len(names) == len(set(names)) == 1 + 2 * 6 + 2 + 2 + 2 + 1 + 4
    resumable = {s.name for s in plan(cfg) if s.resumable}
    assert "train-dasd-s5" in resumable and "sign-flip-s5" in resumable
    assert not resumable & {"eval-base", "entropy-tv", "prefix-intervene", "causal"}


def test_config_checks_and_defaults():
    assert ReproduceConfig().seeds == 1 and ReproduceConfig(budget="full").seeds == 3
    with pytest.raises(ValueError, match="unknown budget 'huge'; valid: quick, default, full"):
        ReproduceConfig(budget="huge")
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        ReproduceConfig(seeds=0)
    for budget in BUDGETS.values():
        assert set(budget.seconds) == {s.kind for s in plan(ReproduceConfig(budget=budget.name))}


def test_an_existing_parent_with_other_settings_is_refused(tmp_path):
    parent = tmp_path / "rep"
    run_reproduce(ReproduceConfig(), parent, stages=[])
    assert read_manifest(parent)["kind"] == "probe:reproduce"
    with pytest.raises(ValueError, match="budget: 'quick' there, 'default' now"):
        run_reproduce(ReproduceConfig(budget="default"), parent, stages=[])


#: A reproduction sized for a random model in tests: every stage, minimal sizes.
TINY = {
    "eval": {"n_prompts": 2, "k": 2, "max_new_tokens": 12},
    "train": {"steps": 2, "prompts_per_step": 2, "group_size": 4, "mini_batch_size": 8,
              "micro_batch_size": 4, "max_new_tokens": 12, "eval_every": 1, "eval_prompts": 2,
              "eval_k": 2, "checkpoint_every": 1, "device": "cpu"},
    "entropy-tv": {"n_prompts": 2, "k": 2, "max_new_tokens": 12, "n_boot": 20},
    "prefix-intervene": {"n_prompts": 2, "k": 2, "max_new_tokens": 12, "n_boot": 20, "burn_in": 2},
    "causal": {"n_prompts": 2, "k": 2, "continuations": 1, "max_new_tokens": 12,
               "n_boot": 20},
}


@pytest.mark.slow
def test_reproduce_end_to_end_on_a_random_model_and_resume(model_dir, tmp_path, monkeypatch):
    train = TINY["train"]
    budget = Budget(
        name="quick", seeds=1, quick_probes=True,
        sizes={"eval": TINY["eval"], "train": train,
               "sign-flip": {k: v for k, v in train.items() if k != "device"},
               "arm-flip": {**{k: v for k, v in train.items() if k != "device"}, "steps": 2},
               "ablate": {**{k: v for k, v in train.items() if k not in ("device", "eval_every")},
                          "steps": 1},
               "entropy-tv": TINY["entropy-tv"], "prefix-intervene": TINY["prefix-intervene"],
               "causal": TINY["causal"]},
        seconds={k: 1.0 for k in BUDGETS["quick"].seconds})
    monkeypatch.setitem(reproduce.BUDGETS, "quick", budget)
    result = runner.invoke(probe_app, ["reproduce", "--model", str(model_dir),
                                       "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, (result.output, result.exception)
    parent = tmp_path / "reproduce-quick"
    stages = [s.name for s in plan(ReproduceConfig(model=str(model_dir)))]
    assert all(stage_done(parent / name) for name in stages)
    for out in ("findings.json", "findings.md", "report.html", "stages.json"):
        assert (parent / out).is_file(), out
    assert any((parent / "tables").iterdir()) and any((parent / "figures").iterdir())
    found = json.loads((parent / "findings.json").read_text())
    assert [f["name"] for f in found] == ["Finding 1", "Finding 2", "Finding 3", "Table 2",
                                          "Table 3", "RQ1", "RQ2", "RQ3"]
    assert {f["verdict"] for f in found} <= {"reproduced", "not reproduced",
                                             "not measurable here"}
    assert "Findings of the paper" in (parent / "report.html").read_text()
    assert "Finding 2:" in result.output
    again = runner.invoke(probe_app, ["reproduce", "--model", str(model_dir),
                                      "--runs-dir", str(tmp_path)])
    assert again.exit_code == 0, again.output
    actions = json.loads((parent / "stages.json").read_text())["actions"]
    assert set(actions.values()) == {"skipped"}
