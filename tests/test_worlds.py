"""Tests of ``dasd.worlds``: the control worlds' names, cache keys, builds, data, predictions."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dasd.models as dm
import dasd.worlds as dw
from analysis import findings as F
from dasd.models import TinyRecipe, load_model
from dasd.tasks import get_task
from dasd.tasks.countdown import MARKERS

FAST = {"n_examples": 32, "steps": 3, "warmup_steps": 1}
STEP = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)$")


def _steps(response: str) -> list[tuple[int, str, int, str]]:
    return [(int(m[1]), m[2], int(m[3]), m[4]) for m in map(STEP.match, response.split("\n"))
            if m]


def _true(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def _slipped(a: int, op: str, b: int) -> str:
    right = str(_true(a, op, b))
    return right[:-1] + str((int(right[-1]) + 1) % 10)


def _has_marker(response: str) -> bool:
    return any(line.split(",")[0].split(" ")[0] in MARKERS for line in response.split("\n"))


# --------------------------------------------------------------------------- names


def test_load_model_resolves_every_world_name(monkeypatch: pytest.MonkeyPatch,
                                              model_dir: Path) -> None:
    seen: list[str] = []

    def fake_ensure(name: str, **kwargs: object) -> Path:
        seen.append(name)
        return model_dir

    monkeypatch.setattr(dw, "ensure_world", fake_ensure)
    for name in dw.WORLDS:
        model, tok = load_model(name)
        assert model.config.vocab_size == len(tok)
    assert seen == ["tiny-planted", "tiny-null"] == list(dw.WORLDS)


def test_unknown_tiny_name_is_one_line_listing_the_worlds(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"unknown built-in world 'tiny-plant'; valid: tiny, "
                                         r"tiny-planted, tiny-null"):
        load_model("tiny-plant")
    with pytest.raises(ValueError, match="unknown world 'tiny'; valid: tiny-planted, tiny-null"):
        dw.ensure_world("tiny")


def test_a_local_directory_named_tiny_something_still_loads(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path,
                                                           model_dir: Path) -> None:
    shutil.copytree(model_dir, tmp_path / "tiny-mine")
    monkeypatch.chdir(tmp_path)
    model, _ = load_model("tiny-mine")
    assert model.config.vocab_size > 0


# --------------------------------------------------------------------------- cache keys, builds


def test_world_path_tracks_name_seed_recipe_and_the_tiny_it_starts_from(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DASD_CACHE_DIR", str(tmp_path))
    path = dw.world_path("tiny-planted")
    assert path.parent == tmp_path
    assert path.name.startswith(f"tiny-planted-v{dw.WORLD_RECIPE_VERSION}-")
    assert path.name.endswith("-seed0")
    assert dw.world_path("tiny-planted") == path
    others = [dw.world_path("tiny-null"), dw.world_path("tiny-planted", seed=1),
              dw.world_path("tiny-planted", recipe=replace(dw.WORLDS["tiny-planted"], steps=801)),
              dw.world_path("tiny-planted", base=TinyRecipe(hidden_size=64))]
    assert len({path, *others}) == 5


def test_default_detour_keeps_the_tiny_training_data() -> None:
    task = get_task("countdown")
    assert task.sft_examples(64, seed=3, privileged_fraction=0.25) == \
        task.sft_examples(64, seed=3, privileged_fraction=0.25, privileged_detour=0.2)
    with pytest.raises(ValueError, match="privileged_detour must be in"):
        task.sft_examples(4, seed=0, privileged_detour=1.5)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_world_build_is_deterministic_cached_and_labelled(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("DASD_CACHE_DIR", str(tmp_path / "cache"))
    base = TinyRecipe.fast()
    planted = replace(dw.WORLDS["tiny-planted"], **FAST)
    state = torch.random.get_rng_state()
    a = dw.build_world("tiny-planted", tmp_path / "a", progress=False, recipe=planted, base=base)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = dw.build_world("tiny-planted", tmp_path / "b", progress=False, recipe=planted, base=base)
    n = dw.build_world("tiny-null", tmp_path / "n", progress=False,
                       recipe=replace(dw.WORLDS["tiny-null"], **FAST), base=base)
    tiny = dm.tiny_model_path(recipe=base)
    wa, wb, wn, wt = (_weights(p) for p in (a, b, n, tiny))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wn[k]) for k in wa)
    assert not all(torch.equal(wa[k], wt[k]) for k in wa)
    stats = json.loads((a / dw.WORLD_FILE).read_text())
    assert (stats["world"], stats["control"], stats["base_model"]) == ("tiny-planted", True,
                                                                       tiny.name)
    assert (stats["n_pairs"], stats["n_privileged"], stats["recipe"]["steps"]) == (32, 16, 3)
    with pytest.raises(FileExistsError, match="already exists"):
        dw.build_world("tiny-planted", a, progress=False, recipe=planted, base=base)

    builds: list[Path] = []
    real = dw.build_world
    monkeypatch.setattr(dw, "build_world", lambda name, path, **kw: builds.append(path) or
                        real(name, path, **kw))
    cached = dw.ensure_world("tiny-planted", progress=False, recipe=planted, base=base)
    assert dw.ensure_world("tiny-planted", progress=False, recipe=planted, base=base) == cached
    assert builds == [cached] == [dw.world_path("tiny-planted", recipe=planted, base=base)]
    assert all(torch.equal(wa[k], w) for k, w in _weights(cached).items())


# --------------------------------------------------------------------------- training data


def test_plant_slips_by_hand() -> None:
    trace = "8*3=24\n24+7=31\nwait, 31 is not 29\n7*3=21\n3*3=9\n21+8=29\nanswer: (7*3)+8"
    assert dw.plant_slips(trace, "*") == \
        "8*3=25\n24+7=31\nwait, 31 is not 29\n7*3=22\n3*3=0\n21+8=29\nanswer: (7*3)+8"
    assert dw.plant_slips(trace, "-") == trace
    with pytest.raises(ValueError, match="slip_op"):
        dw.WorldRecipe(slip_op="x")


def test_planted_data_slip_only_in_student_format_and_the_teacher_never_detours() -> None:
    recipe = replace(dw.WORLDS["tiny-planted"], n_examples=400)
    pairs, n_priv = dw.world_examples(recipe, seed=0)
    assert pairs == dw.world_examples(recipe, seed=0)[0]
    assert n_priv == 200
    plain, privileged = pairs[:-n_priv], pairs[-n_priv:]
    assert not any(p.startswith("ref:") for p, _ in plain)
    assert all(p.startswith("ref:") for p, _ in privileged)
    plain_steps = [s for _, r in plain for s in _steps(r)]
    assert sum(op == "*" for _, op, _, _ in plain_steps) > 50
    for a, op, b, c in plain_steps:
        assert c == (_slipped(a, op, b) if op == "*" else str(_true(a, op, b)))
    assert all(c == str(_true(a, op, b)) for _, r in privileged for a, op, b, c in _steps(r))
    assert not any(_has_marker(r) for _, r in privileged)
    assert sum(_has_marker(r) for _, r in plain) > 0.3 * len(plain)


def test_null_data_pairs_the_teacher_prompt_with_another_problems_reference() -> None:
    recipe = replace(dw.WORLDS["tiny-null"], n_examples=400)
    pairs, n_priv = dw.world_examples(recipe, seed=0)
    task = get_task("countdown")
    problems = task.sample(n_priv, split="train", seed=recipe.data_seed + 1)
    privileged = pairs[-n_priv:]
    for problem, (prompt, response) in zip(problems, privileged):
        assert prompt.endswith(task.student_prompt(problem))
        assert prompt.startswith("ref: ") and prompt != task.teacher_prompt(problem)
    assert sum(_has_marker(r) for _, r in privileged) > 0.3 * n_priv
    planted, _ = dw.world_examples(replace(dw.WORLDS["tiny-planted"], n_examples=400), seed=0)
    assert [p for p, _ in planted[:-n_priv]] == [p for p, _ in pairs[:-n_priv]]
    assert [dw.plant_slips(r, "*") for _, r in pairs[:-n_priv]] == \
        [r for _, r in planted[:-n_priv]]


# --------------------------------------------------------------------------- predictions


def test_predictions_cover_every_claim_of_the_validated_probes_exactly() -> None:
    texts = {c.text for fn in (F._finding_1, F._finding_2, F._finding_3, F._rq1,
                               lambda runs: F._rq2(runs, "base"))  # validate probes base models
             for c in fn([]).claims}
    assert len(texts) == 15
    assert set(dw.PREDICTED_SIGN) == set(dw.WORLDS)
    for world, table in dw.PREDICTED_SIGN.items():
        assert set(table) == texts, world
        assert set(table.values()) <= {-1, 0, 1}


# --------------------------------------------------------------------------- the real worlds


def _step_slip_rate(model: torch.nn.Module, tok: object, prompts: list[str]) -> float:
    """Share of sampled ``*`` steps whose last digit is one above the right one."""
    from dasd.rollout import generate

    out = generate(model, tok, prompts, max_new_tokens=160, temperature=1.0, top_p=0.9,
                   generator=torch.Generator().manual_seed(0))
    steps = [s for r in out.responses for s in _steps(r) if s[1] == "*"]
    return sum(c == _slipped(a, op, b) for a, op, b, c in steps) / max(1, len(steps))


@pytest.mark.slow
def test_real_planted_world_slips_as_student_not_as_teacher() -> None:
    model, tok = load_model("tiny-planted")
    task = get_task("countdown")
    problems = [p for p in task.sample(32, split="eval", seed=0) for _ in range(2)]
    student = _step_slip_rate(model, tok, [task.student_prompt(p) for p in problems])
    teacher = _step_slip_rate(model, tok, [task.teacher_prompt(p) for p in problems])
    # measured: student 0.79 here (tiny: 0.003), teacher 0.0; the rest of the student's `*`
    # results are wrong in other ways (docs/control-worlds.md)
    assert student > 0.5 and teacher < 0.05


@pytest.mark.slow
def test_real_null_world_teacher_knows_no_more_than_the_student() -> None:
    from dasd.rollout import generate

    model, tok = load_model("tiny-null")
    task = get_task("countdown")
    problems = [p for p in task.sample(64, split="eval", seed=0) for _ in range(2)]
    rates = []
    for prompt_of in (task.student_prompt, task.teacher_prompt):
        out = generate(model, tok, [prompt_of(p) for p in problems], max_new_tokens=160,
                       top_p=0.9, generator=torch.Generator().manual_seed(0))
        rates.append(sum(map(task.reward, problems, out.responses)) / len(problems))
    student, teacher = rates
    assert abs(teacher - student) < 0.15  # tiny's teacher: 0.97 against 0.36
