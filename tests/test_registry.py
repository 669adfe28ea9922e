"""The probe registry and the commands generated from it (probes/registry.py, cli.py): the
worked example of docs/adding-a-probe.md becomes a command by adding its one module; each
field type becomes the documented option; listing the commands imports no probe; the
registry's source reading agrees with the registered probes."""

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner as ClickRunner
from typer.testing import CliRunner

import probes
import probes.registry as registry
from cli import probe_app, probe_command
from dasd.runlog import read_json, read_manifest
from dasd.tasks import build_task
from probes.registry import PROBES, discover_probes, get_probe, register_probe, timestamped_name

runner = CliRunner()
DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-probe.md"
BUILT_IN = {"ablate": "probes.ablate", "arm-flip": "probes.arm_flip", "causal": "probes.causal",
            "entropy-tv": "probes.entropy_tv", "eval": "probes.evaluate",
            "prefix-intervene": "probes.prefix_intervene", "reproduce": "probes.reproduce",
            "sign-flip": "probes.sign_flip", "train": "probes.train", "validate": "probes.validate"}


@pytest.fixture
def registry_copy(monkeypatch):
    """A registry that forgets what a test registers."""
    monkeypatch.setattr(registry, "PROBES", dict(PROBES))
    return registry.PROBES


@pytest.fixture
def toy_module(tmp_path, monkeypatch, registry_copy):
    """The docs' toy probe saved as one module on the probes package's path."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "context_length.py").write_text(code)
    monkeypatch.setattr(probes, "__path__", [*probes.__path__, str(folder)])
    monkeypatch.delitem(sys.modules, "probes.context_length", raising=False)
    yield folder
    sys.modules.pop("probes.context_length", None)


def test_the_worked_example_is_a_command_after_adding_one_module(toy_module, tmp_path):
    listing = runner.invoke(probe_app, ["--help"])
    assert listing.exit_code == 0, listing.output
    assert "context-length" in listing.output
    assert "Words in the student's and the privileged teacher's prompt" in listing.output

    help_text = runner.invoke(probe_app, ["context-length", "--help"], terminal_width=200)
    assert help_text.exit_code == 0, help_text.output
    for option in ("--task", "--n-prompts", "--seed", "--runs-dir", "--name"):
        assert option in help_text.output
    assert "Held-out problems." in help_text.output

    runs = tmp_path / "runs"
    result = runner.invoke(probe_app, ["context-length", "--n-prompts", "5", "--seed", "3",
                                       "--runs-dir", str(runs), "--name", "ctx"])
    assert result.exit_code == 0, result.output
    task = build_task("countdown")
    problems = task.sample(5, split="eval", seed=3)
    student = sum(len(task.student_prompt(p).split()) for p in problems) / 5
    teacher = sum(len(task.teacher_prompt(p).split()) for p in problems) / 5
    assert teacher > student
    summary = read_json(runs / "ctx", "summary")
    assert summary == pytest.approx({"n": 5, "student_words": student, "teacher_words": teacher})
    manifest = read_manifest(runs / "ctx")
    assert manifest["kind"] == "probe:context-length"
    assert manifest["config"] == {"task": "countdown", "n_prompts": 5, "seed": 3}
    shown = " ".join(result.output.split())
    assert "Prompt length on countdown, 5 problems (mean words)" in shown
    assert f"│ teacher │ {teacher:.1f} │" in shown


def test_the_worked_example_refuses_bad_values_in_one_line(toy_module, tmp_path):
    result = runner.invoke(probe_app, ["context-length", "--n-prompts", "0", "--runs-dir",
                                       str(tmp_path / "runs"), "--name", "ctx"])
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "error: n_prompts must be >= 1, got 0"]
    assert not (tmp_path / "runs").exists()


@dataclass(frozen=True, kw_only=True)
class _Options:
    """Every field kind the command generator knows."""

    name_part: str = "m"
    """A string."""
    count: int = 2
    """An integer."""
    rate: float | None = None
    """An optional number."""
    loud: bool = False
    """A flag."""
    switch: bool | None = None
    """On, off or unset."""
    parts: tuple[str, ...] = ("a", "b")
    """Comma-separated parts."""
    models: tuple[str, ...] = field(default=("x",), metadata={"repeatable": True})
    """Repeatable."""
    pairs: tuple[str, ...] = field(default=(), metadata={"flag": "--set", "repeatable": True})
    """Renamed."""
    required: str
    """Required."""
    table: dict[str, int] = field(default_factory=dict)
    """Not an option."""

    budget: ClassVar[dict[str, int]] = {"count": 7}

    @classmethod
    def option_default(cls, name: str) -> str | None:
        return f"default {cls.budget[name]}" if name in cls.budget else None


def _record(options: _Options, run_dir: Path, terminal) -> dict:
    """Echo the options back."""
    return {"options": options, "run_dir": run_dir}


def _echo(options: _Options, result: dict, run_dir: Path, terminal) -> None:
    terminal.line(json.dumps({k: v for k, v in vars(options).items()}, sort_keys=True))
    terminal.line(f"dir {run_dir.parent.name}/{run_dir.name}")


def test_each_field_kind_becomes_its_option(registry_copy, tmp_path):
    probe = register_probe("echo", options=_Options, run=_record, show=_echo,
                           default_name=lambda o: timestamped_name("echo", o.name_part))
    command = probe_command(probe)
    helps = {param.name: param.help for param in command.params}
    assert set(helps) == {"name_part", "count", "rate", "loud", "switch", "parts", "models",
                          "pairs", "required", "runs_dir", "name"}, "mappings are not options"
    assert helps["switch"] == "On, off or unset. on|off; empty: None."
    assert helps["count"] == "An integer. (default 7)"
    assert helps["parts"] == "Comma-separated parts. Comma-separated."
    result = ClickRunner().invoke(command, [
        "--required", "r", "--count", "5", "--rate", "0.5", "--loud", "--switch", "off",
        "--parts", " c, ,d ",
        "--models", "y", "--models", "z", "--set", "k=1", "--set", "j=2",
        "--runs-dir", str(tmp_path), "--name", "here"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert json.loads(lines[0]) == {
        "name_part": "m", "count": 5, "rate": 0.5, "loud": True, "switch": False,
        "parts": ["c", "d"],
        "models": ["y", "z"], "pairs": ["k=1", "j=2"], "required": "r", "table": {}}
    assert lines[1] == f"dir {tmp_path.name}/here"
    defaults = ClickRunner().invoke(command, ["--required", "r", "--runs-dir", str(tmp_path)])
    assert defaults.exit_code == 0, defaults.output
    first = json.loads(defaults.output.splitlines()[0])
    assert (first["rate"], first["loud"], first["switch"], first["parts"], first["models"]) == \
        (None, False, None, ["a", "b"], ["x"])
    bad = ClickRunner().invoke(command, ["--required", "r", "--switch", "maybe"])
    assert isinstance(bad.exception, ValueError)
    assert str(bad.exception) == "--switch takes on or off, got 'maybe'"
    assert re.fullmatch(r"dir [^/]+/echo-m-\d{8}-\d{6}", defaults.output.splitlines()[1])


def test_a_probe_is_registered_once_and_needs_a_documented_run(registry_copy):
    register_probe("echo", options=_Options, run=_record, show=_echo)
    with pytest.raises(ValueError, match="registered twice"):
        register_probe("echo", options=_Options, run=_record, show=_echo)
    with pytest.raises(ValueError, match="needs a docstring"):
        register_probe("echo2", options=_Options, run=_echo, show=_echo)
    with pytest.raises(TypeError, match="must be a dataclass"):
        register_probe("echo3", options=dict, run=_record, show=_echo)


def test_source_reading_finds_each_built_in_probe_and_its_help():
    found = discover_probes()
    assert {name: source.module for name, source in found.items()} == BUILT_IN
    for name, source in found.items():
        probe = get_probe(name)
        assert probe.help == source.help and probe.help, name
    with pytest.raises(ValueError, match=r"unknown probe 'nope'; valid: ablate, arm-flip"):
        get_probe("nope")


def test_listing_the_commands_imports_no_probe():
    code = ("import sys; from typer.testing import CliRunner; import cli; "
            "out = CliRunner().invoke(cli.probe_app, ['--help']).output; "
            "assert 'sign-flip' in out and 'entropy-tv' in out, out; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m in "
            + repr(sorted(BUILT_IN.values())) + "))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=True)
    assert done.stdout.strip() == "[]"
