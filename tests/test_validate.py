"""`dasd-probe validate`: the calibration verdict rule on hand-made rows, the predictions
written before any run, the stage plan, the calibration table from hand-written probe outputs,
the findings' power column, the command's errors, and one tiny end-to-end run."""

import json
import math
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.calibration import COLUMNS, Row, calibration_verdict, read_calibration
from analysis.findings import findings, to_markdown, write_findings
from figures.report import build_report
from cli import probe_app
from dasd.runlog import create_run
from probes import reproduce
from probes.reproduce import BUDGETS, Budget, ReproduceConfig, Stage, run_reproduce, stage_done
from probes.validate import (
    NULL_ZERO,
    PROBES,
    ValidateConfig,
    fallback_sign,
    plan,
    predicted_sign,
    run_validate,
    slot,
)

runner = CliRunner()
NAN = math.nan


# ------------------------------------------------------------------------- the verdict rule


@pytest.mark.parametrize("role, predicted, value, low, high, expected", [
    # Positive control: detected only when the interval excludes 0 on the predicted side.
    ("positive", +1, 0.3, 0.1, 0.5, "detected"),
    ("positive", -1, -0.3, -0.5, -0.1, "detected"),
    ("positive", +1, -0.3, -0.5, -0.1, "missed"),  # wrong side
    ("positive", -1, 0.1, -0.1, 0.3, "missed"),  # inconclusive
    ("positive", +1, 0.1, 0.0, 0.3, "missed"),  # an end at 0 contains 0
    ("positive", +1, 0.3, NAN, NAN, "missed"),  # an estimate without an interval
    ("positive", +1, NAN, NAN, NAN, "not measured"),
    # Negative control, 0 predicted: clean when the interval contains 0.
    ("negative", 0, 0.1, -0.1, 0.3, "clean"),
    ("negative", 0, 0.3, 0.1, 0.5, "false positive"),
    ("negative", 0, -0.3, -0.5, -0.1, "false positive"),
    ("negative", 0, NAN, NAN, NAN, "not measured"),
    # Negative control, a sign predicted: clean unless the other side is seen.
    ("negative", +1, 0.3, 0.1, 0.5, "clean"),
    ("negative", +1, 0.1, -0.1, 0.3, "clean"),
    ("negative", +1, -0.3, -0.5, -0.1, "false positive"),
    # A null check on the positive control follows the null rule.
    ("positive", 0, 0.1, -0.1, 0.3, "clean"),
    ("positive", 0, 0.3, 0.1, 0.5, "false positive"),
])
def test_verdict_rule_on_hand_made_rows(role, predicted, value, low, high, expected):
    assert calibration_verdict(role, predicted, value, low, high) == expected
    assert Row("p", "c", "w", role, predicted, value, low, high).verdict == expected


def test_verdict_rule_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown control role 'natural'"):
        calibration_verdict("natural", 1, 0.3, 0.1, 0.5)
    with pytest.raises(ValueError, match="predicted sign must be -1, 0 or \\+1, got 2"):
        calibration_verdict("positive", 2, 0.3, 0.1, 0.5)
    with pytest.raises(ValueError, match="interval low 0.5 > high 0.1"):
        calibration_verdict("positive", 1, 0.3, 0.5, 0.1)


# --------------------------------------------------------------- predictions, before any run


def _validated_claims():
    return [c for f in findings([], causal_method="base") if f.name in PROBES for c in f.claims]


def test_fallback_predictions_name_real_claims_and_follow_the_paper_on_the_positive_control():
    claims = _validated_claims()
    texts = {c.text for c in claims}
    assert len(claims) == len(texts) == 15
    assert NULL_ZERO <= texts, NULL_ZERO - texts
    for c in claims:
        assert fallback_sign("positive", c) == c.sign
        assert fallback_sign("negative", c) == (0 if c.text in NULL_ZERO else c.sign)
    # Every correctness claim moved through the teacher is a null claim; E(y) ones are not.
    assert "Conformity − Base, E(y) < 0" not in NULL_ZERO
    assert "base: preserve − suppress at revision prefixes, correct > 0" not in NULL_ZERO
    with pytest.raises(ValueError, match="unknown control role"):
        fallback_sign("natural", claims[0])


def test_a_world_table_overrides_the_fallback_where_it_names_the_claim(monkeypatch):
    claims = {c.text: c for c in _validated_claims()}
    ey, rho = claims["Conformity − Base, E(y) < 0"], claims["rho_s(A_t, H_t) > 0"]
    assert fallback_sign("negative", ey) == -1
    from dasd.worlds import PREDICTED_SIGN

    assert predicted_sign("tiny-null", "negative", ey) == PREDICTED_SIGN["tiny-null"][ey.text]
    assert predicted_sign("tiny", "negative", ey) == -1  # a stand-in world: the fallback
    worlds = types.ModuleType("dasd.worlds")
    worlds.PREDICTED_SIGN = {"tiny-null": {ey.text: 0}}
    monkeypatch.setitem(sys.modules, "dasd.worlds", worlds)
    assert predicted_sign("tiny-null", "negative", ey) == 0
    assert predicted_sign("tiny-null", "negative", rho) == +1
    assert predicted_sign("tiny-planted", "positive", ey) == -1


# ----------------------------------------------------------------------- settings and plan


def test_config_checks_worlds_and_budget(model_dir):
    assert ValidateConfig().worlds == ("tiny-planted", "tiny-null")
    assert ValidateConfig().seeds == 1
    assert ValidateConfig(worlds=("tiny", str(model_dir))).worlds[1] == str(model_dir)
    with pytest.raises(ValueError, match="unknown world 'nope'; valid: tiny-planted, tiny-null"):
        ValidateConfig(worlds=("tiny-planted", "nope"))
    with pytest.raises(ValueError, match="'tiny-null' is the negative control"):
        ValidateConfig(worlds=("tiny-null", "tiny-planted"))
    with pytest.raises(ValueError, match="takes two worlds"):
        ValidateConfig(worlds=("tiny-planted",))
    with pytest.raises(ValueError, match="unknown budget 'full'; valid: quick, default"):
        ValidateConfig(budget="full")
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        ValidateConfig(seeds=0)


def test_plan_runs_every_probe_on_both_worlds_under_their_control_folders():
    cfg = ValidateConfig(worlds=("tiny", "tiny"), seeds=2, seed=3)
    names = [s.name for s in plan(cfg)]
    for role in ("positive", "negative"):
        assert [n.split("/", 1)[1] for n in names if n.startswith(f"{role}-control/")] == [
            "sign-flip-s3", "sign-flip-s4", "entropy-tv", "prefix-intervene", "arm-flip-s3",
            "arm-flip-s4", "causal"]
    assert len(names) == len(set(names)) == 14
    assert {s.kind for s in plan(cfg)} <= set(cfg.sizes.seconds)
    # The causal stage probes one checkpoint here, reproduce's four.
    assert cfg.sizes.seconds["causal"] == BUDGETS["quick"].seconds["causal"] / 4
    assert cfg.sizes.seconds["sign-flip"] == BUDGETS["quick"].seconds["sign-flip"]


# ------------------------------------------------------- calibration from hand-written outputs


def _probe(path: Path, kind: str, summary: dict) -> None:
    with create_run(path, kind=kind, config={}, seed=0, model="m", task="t") as run:
        run.write_json("summary", summary)


#: Hand-written probe outputs: Finding 2's A_t claim is clearly positive and D- inconclusive;
#: Finding 3's low-H Conformity cell clearly positive, high-H Novelty clearly negative; RQ2's
#: fork contrast clearly negative. Sign-flip and arm-flip are left unrun (not measured).
SPEARMAN = {"A": {"rho": 0.4, "low": 0.3, "high": 0.5},
            "D_plus": {"rho": -0.2, "low": -0.3, "high": -0.1},
            "D_minus": {"rho": 0.1, "low": -0.1, "high": 0.2}}
CELLS = [{"bucket": b, "mode": m, "metric": k, "delta_pct": d, "ci_low": lo, "ci_high": hi}
         for b, m, k, d, lo, hi in [("low", "conformity", "step_acc", 5.0, 1.0, 9.0),
                                    ("high", "novelty", "ey_density", -50.0, -70.0, -30.0),
                                    ("high", "conformity", "ey_density", -2.0, -4.0, 1.0),
                                    ("low", "novelty", "step_acc", -3.0, -6.0, -1.0)]]
CAUSAL = {"checkpoints": [{"label": "m", "method": None,
                           "forks": {"contrasts": [{"cut": "high", "condition": "teacher_top",
                                                    "metric": "correct", "diff": -0.2,
                                                    "ci_low": -0.3, "ci_high": -0.1}]},
                           "revisions": {"contrasts": []}}]}


def _written(name: str, kind: str, summary: dict, calls: list[str]) -> Stage:
    def work(run_dir: Path, report) -> None:
        calls.append(str(run_dir))
        report(run_dir.name, 1, 1)
        _probe(run_dir, kind, summary)

    return Stage(name, kind.removeprefix("probe:"), False, work)


def _fake_stages(calls: list[str]) -> list[Stage]:
    return [_written(f"{slot(role)}/{name}", kind, summary, calls)
            for role in ("positive", "negative")
            for name, kind, summary in (("entropy-tv", "probe:entropy-tv", {"spearman": SPEARMAN}),
                                        ("prefix-intervene", "probe:prefix-intervene",
                                         {"cells": CELLS}),
                                        ("causal", "probe:causal", CAUSAL))]


def test_calibration_table_from_hand_written_probe_outputs(tmp_path):
    cfg = ValidateConfig(worlds=("tiny", "tiny"))
    calls: list[str] = []
    parent = tmp_path / "validate-quick"
    result = run_validate(cfg, parent, stages=_fake_stages(calls))
    assert len(calls) == 6 and set(result.actions.values()) == {"run"}
    table = pd.read_csv(parent / "calibration.csv")
    assert tuple(table.columns) == COLUMNS
    assert len(table) == 30
    assert set(table["world"]) == {"tiny (positive control)", "tiny (negative control)"}
    assert table.groupby("world")["probe"].value_counts().to_dict() == {
        (w, p): n for w in set(table["world"]) for p, n in
        {"sign-flip": 4, "entropy-tv": 3, "prefix-intervene": 4, "arm-flip": 2,
         "causal": 2}.items()}
    assert not table.duplicated(["claim", "world"]).any()
    got = {(r.world, r.claim): r.verdict for r in table.itertuples()}
    pos, neg = "tiny (positive control)", "tiny (negative control)"
    assert got[pos, "rho_s(A_t, H_t) > 0"] == "detected"
    assert got[pos, "rho_s(D+_t, H_t) > 0"] == "missed"  # the other side
    assert got[pos, "rho_s(D-_t, H_t) < 0"] == "missed"  # inconclusive
    assert got[neg, "rho_s(D+_t, H_t) > 0"] == "false positive"
    assert got[neg, "rho_s(D-_t, H_t) < 0"] == "clean"
    assert got[neg, "low-H_t Conformity, ΔStepAcc % > 0"] == "false positive"  # 0 predicted
    assert got[neg, "high-H_t Conformity, ΔE(y) % < 0"] == "clean"
    teacher = "base: teacher top token at the highest-H_t position − unmodified, correct < 0"
    assert got[pos, teacher] == "detected" and got[neg, teacher] == "false positive"
    for probe in ("sign-flip", "arm-flip"):
        assert set(table.loc[table["probe"] == probe, "verdict"]) == {"not measured"}
    assert set(table.loc[table["claim"].str.contains("preserve"), "verdict"]) == {
        "not measured"}
    assert table.loc[table["claim"] == teacher, "predicted_sign"].tolist() == [-1, 0]
    # The rows read back as written; the markdown labels the worlds as controls.
    back = pd.DataFrame([r.record() for r in read_calibration(parent / "calibration.csv")])
    assert back.equals(pd.DataFrame([r.record() for r in result.rows]))
    text = (parent / "calibration.md").read_text()
    assert "controls, not reproductions" in text
    assert "- entropy-tv: 1/3 detected (2 missed) on tiny (positive control); 2/3 clean " \
           "(1 false positive) on tiny (negative control)" in text
    assert "- sign-flip: 0/4 detected (4 not measured) on tiny (positive control)" in text
    assert f"| causal | {teacher} | 0 | -0.2 [-0.3, -0.1] | false positive |" in text
    assert f"| causal | {teacher} | -1 | -0.2 [-0.3, -0.1] | detected |" in text
    # Rerun: every stage is skipped; other settings on the same parent are refused.
    again = run_validate(cfg, parent, stages=_fake_stages(calls))
    assert set(again.actions.values()) == {"skipped"} and len(calls) == 6
    with pytest.raises(ValueError, match="budget: 'quick' there, 'default' now"):
        run_validate(ValidateConfig(budget="default", worlds=("tiny", "tiny")), parent,
                     stages=[])


def test_control_worlds_never_count_as_a_reproduction(tmp_path):
    run_validate(ValidateConfig(worlds=("tiny", "tiny")), tmp_path / "v", stages=_fake_stages([]))
    _probe(tmp_path / "natural-etv", "probe:entropy-tv",
           {"spearman": {k: {"rho": 0.0, "low": -0.1, "high": 0.1} for k in SPEARMAN}})
    found = {f.name: f for f in findings([tmp_path])}
    assert [c.ours for c in found["Finding 2"].claims] == [0.0, 0.0, 0.0]
    assert found["Finding 3"].verdict == "not measurable here"
    assert all(f.verdict == "not measurable here" for f in findings([tmp_path / "v"]))


def test_read_calibration_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no calibration file; run dasd-probe validate"):
        read_calibration(tmp_path / "calibration.csv")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a calibration table"):
        read_calibration(tmp_path / "x.csv")


# ------------------------------------------------------------------- the findings' power column


def test_findings_power_column(tmp_path):
    natural = tmp_path / "reproduce-quick"
    _probe(natural / "entropy-tv", "probe:entropy-tv", {"spearman": SPEARMAN})
    plain = to_markdown(findings([natural]))
    write_findings(natural)
    assert (natural / "findings.md").read_text() == plain
    assert "power" not in (natural / "findings.json").read_text()
    power = {"rho_s(A_t, H_t) > 0": Row("entropy-tv", "rho_s(A_t, H_t) > 0", "tiny-planted",
                                        "positive", 1, 0.6, 0.5, 0.7),
             "rho_s(D-_t, H_t) < 0": Row("entropy-tv", "rho_s(D-_t, H_t) < 0", "tiny-planted",
                                         "positive", -1, 0.0, -0.1, 0.1)}
    write_findings(natural, power=power)
    text = (natural / "findings.md").read_text()
    assert "tiny-planted (positive control); a control, not a reproduction" in text
    assert "| agreement | source | power on the positive control |" in text
    assert "| rho_s(A_t, H_t) > 0 | +0.52 | +0.4 [+0.3, +0.5] | agrees | entropy-tv | " \
           "detected: +0.6 [+0.5, +0.7] |" in text
    assert "| rho_s(D-_t, H_t) < 0 | sign only | +0.1 [-0.1, +0.2] | inconclusive | " \
           "entropy-tv | missed: +0 [-0.1, +0.1] |" in text
    assert "| rho_s(D+_t, H_t) > 0 | sign only | -0.2 [-0.3, -0.1] | disagrees | entropy-tv " \
           "| – |" in text
    claims = {c["text"]: c for f in json.loads((natural / "findings.json").read_text())
              for c in f["claims"]}
    assert claims["rho_s(A_t, H_t) > 0"]["power"]["verdict"] == "detected"
    assert claims["rho_s(A_t, H_t) > 0"]["power"]["world"] == "tiny-planted (positive control)"
    assert claims["rho_s(D+_t, H_t) > 0"]["power"] is None
    page = build_report([natural], power=power)
    assert "power on the positive control" in page and "detected: +0.6 [+0.5, +0.7]" in page
    assert "power on the positive control" not in build_report([natural])


def test_reproduce_finds_the_calibration_beside_it(tmp_path):
    run_validate(ValidateConfig(worlds=("tiny", "tiny")), tmp_path / "validate-quick",
                 stages=_fake_stages([]))
    parent = tmp_path / "reproduce-quick"
    run_reproduce(ReproduceConfig(), parent, stages=[])
    _probe(parent / "entropy-tv", "probe:entropy-tv", {"spearman": SPEARMAN})
    result = run_reproduce(ReproduceConfig(), parent, stages=[])
    assert result.outputs["calibration"] == tmp_path / "validate-quick" / "calibration.csv"
    text = (parent / "findings.md").read_text()
    assert "| agrees | entropy-tv | detected: +0.4 [+0.3, +0.5] |" in text
    # The DASD claims of RQ2 have no control here: the controls probe the base model.
    assert "| DASD: preserve − suppress at revision prefixes, correct > 0 | sign only | – | " \
           "not measured | needs a causal probe of a DASD checkpoint | – |" in text
    # A reproduction at another budget finds none, and writes the findings as before.
    other = run_reproduce(ReproduceConfig(budget="default"), tmp_path / "reproduce-default",
                          stages=[])
    assert "calibration" not in other.outputs


# ----------------------------------------------------------------------------- the command


def test_cli_help_and_one_line_errors(tmp_path):
    result = runner.invoke(probe_app, ["validate", "--help"])
    assert result.exit_code == 0
    for option in ("--budget", "--seeds", "--worlds", "--runs-dir", "--name"):
        assert option in result.output
    for args, message in ((["--worlds", "tiny-planted,nope"], "unknown world 'nope'"),
                          (["--budget", "full"], "unknown budget 'full'")):
        result = runner.invoke(probe_app, ["validate", *args, "--runs-dir", str(tmp_path)])
        assert result.exit_code == 2
        assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_validate_end_to_end_on_a_random_model_and_resume(model_dir, tmp_path, monkeypatch):
    from tests.test_reproduce import TINY

    train = {k: v for k, v in TINY["train"].items() if k != "device"}
    budget = Budget(
        name="quick", seeds=1, quick_probes=True,
        sizes={"eval": TINY["eval"], "train": TINY["train"], "sign-flip": train,
               "arm-flip": train, "entropy-tv": TINY["entropy-tv"],
               "prefix-intervene": TINY["prefix-intervene"], "causal": TINY["causal"]},
        seconds={k: 1.0 for k in BUDGETS["quick"].seconds})
    monkeypatch.setitem(reproduce.BUDGETS, "quick", budget)
    args = ["validate", "--worlds", f"{model_dir},{model_dir}", "--runs-dir", str(tmp_path)]
    result = runner.invoke(probe_app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    parent = tmp_path / "validate-quick"
    cfg = ValidateConfig(worlds=(str(model_dir), str(model_dir)))
    assert all(stage_done(parent / s.name) for s in plan(cfg))
    causal = json.loads((parent / "positive-control" / "causal" / "summary.json").read_text())
    assert [c["method"] for c in causal["checkpoints"]] == [None]  # the base model only
    table = pd.read_csv(parent / "calibration.csv")
    assert tuple(table.columns) == COLUMNS and len(table) == 30
    assert set(table["verdict"]) <= {"detected", "missed", "clean", "false positive",
                                     "not measured"}
    # Each world: every probe's claims (a random model leaves some unmeasured, e.g. Table 1's
    # cells without judged steps), Spearman's rho measured on both.
    for role in ("positive", "negative"):
        rows = table[table["world"] == f"{model_dir} ({role} control)"]
        assert rows["probe"].value_counts().to_dict() == {
            "sign-flip": 4, "entropy-tv": 3, "prefix-intervene": 4, "arm-flip": 2, "causal": 2}
        assert (rows.loc[rows["probe"] == "entropy-tv", "verdict"] != "not measured").all()
    assert "entropy-tv:" in result.output and "calibration:" in result.output
    again = runner.invoke(probe_app, args)
    assert again.exit_code == 0, again.output
    actions = json.loads((parent / "stages.json").read_text())["actions"]
    assert set(actions.values()) == {"skipped"}
