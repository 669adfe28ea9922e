"""The shared config bases (probes/config_bases.py): one name, default and check per knob in
every probe that inherits them, the older option names still accepted, and --help panels."""

import dataclasses

import pytest
from typer.testing import CliRunner

from cli import probe_app
from probes.causal import CausalConfig
from probes.config_bases import BootstrapConfig, SamplingConfig
from probes.entropy_tv import EntropyTVConfig
from probes.evaluate import EvalConfig
from probes.prefix_intervene import PrefixInterveneConfig
from tests.hostile import assert_one_line_error

runner = CliRunner()


def _defaults(cls, names):
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name in names}


def test_every_sampling_probe_has_the_same_knobs_and_defaults():
    knobs = {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 160,
             "generation_batch_size": 128}
    for cls in (EvalConfig, PrefixInterveneConfig, CausalConfig):
        assert issubclass(cls, SamplingConfig)
        assert _defaults(cls, knobs) == knobs
    bootstrap = {"n_boot": 1000, "level": 0.95}
    for cls in (EntropyTVConfig, PrefixInterveneConfig, CausalConfig):
        assert issubclass(cls, BootstrapConfig)
        assert _defaults(cls, bootstrap) == bootstrap
    for cls in (EvalConfig, EntropyTVConfig, PrefixInterveneConfig, CausalConfig):
        names = {f.name for f in dataclasses.fields(cls)}
        assert not names & {"batch_size", "score_batch_size", "bootstrap", "ci"}, cls


@pytest.mark.parametrize(("settings", "message"), [
    ({"temperature": -0.5}, "temperature must be >= 0, got -0.5"),
    ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
    ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1, got 0"),
    ({"generation_batch_size": 0}, "generation_batch_size must be >= 1, got 0"),
])
def test_sampling_check(settings, message):
    SamplingConfig().check_sampling()
    SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=1,
                   generation_batch_size=1).check_sampling()
    with pytest.raises(ValueError) as error:
        SamplingConfig(**settings).check_sampling()
    assert str(error.value) == message


def test_bootstrap_check():
    BootstrapConfig().check_bootstrap()
    BootstrapConfig(n_boot=0).check_bootstrap(allow_none=True)
    with pytest.raises(ValueError, match=r"^n_boot must be >= 1, got 0$"):
        BootstrapConfig(n_boot=0).check_bootstrap()
    with pytest.raises(ValueError, match=r"^n_boot must be >= 0 \(0: no interval\), got -1$"):
        BootstrapConfig(n_boot=-1).check_bootstrap(allow_none=True)
    for level in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"^level must be in \(0, 1\)"):
            BootstrapConfig(level=level).check_bootstrap()


@pytest.mark.parametrize(("args", "message"), [
    (["prefix-intervene", "--ci", "1.5"], "error: level must be in (0, 1), got 1.5"),
    (["prefix-intervene", "--level", "1.5"], "error: level must be in (0, 1), got 1.5"),
    (["causal", "--batch-size", "0"], "error: generation_batch_size must be >= 1, got 0"),
    (["entropy-tv", "--bootstrap", "-1"],
     "error: n_boot must be >= 0 (0: no interval), got -1"),
    (["eval", "--score-batch-size", "0"], "error: micro_batch_size must be >= 1, got 0"),
    (["eval", "--top-p", "2"], "error: top_p must be in (0, 1], got 2.0"),
])
def test_old_and_new_option_names_reach_the_same_field(args, message, tmp_path):
    result = runner.invoke(probe_app, [*args, "--runs-dir", str(tmp_path), "--name", "x"])
    assert assert_one_line_error(result) == message
    assert not (tmp_path / "x").exists()


def test_help_lists_the_shared_options_in_their_panels():
    result = runner.invoke(probe_app, ["prefix-intervene", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    out = result.output
    assert "Sampling" in out and "Bootstrap" in out
    assert out.index("--model") < out.index("Bootstrap") < out.index("--n-boot")
    assert out.index("Sampling") < out.index("--temperature")
    assert "--level" in out and "--ci" in out
