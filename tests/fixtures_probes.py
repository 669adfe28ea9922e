"""Shared pieces of the multi-run probe tests (sign-flip, arm-flip, ablate)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

#: TrainConfig fields of a probe of two-update runs on the random test model (``model`` added
#: by ``small_train``).
SMALL_TRAIN: dict[str, Any] = {
    "steps": 2, "prompts_per_step": 2, "group_size": 4, "mini_batch_size": 8,
    "micro_batch_size": 4, "max_new_tokens": 12, "eval_every": 1, "eval_prompts": 2,
    "eval_k": 2, "checkpoint_every": 1, "log_rollouts_every": 1, "lr": 1e-3, "beta": 1.0,
    "device": "cpu",
}


def small_train(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    """``SMALL_TRAIN`` on the checkpoint ``model_dir``, with ``overrides``."""
    return {"model": str(model_dir), **SMALL_TRAIN, **overrides}


def files_of(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and bytes of every file of a run (checkpoints included)."""
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


class Killed(Exception):
    """Raised by ``kill_when`` to stand for a probe killed mid-run."""


def kill_when(run: str, step: int | None = None
              ) -> Callable[[str, int, Mapping[str, float]], None]:
    """A probe progress callback raising ``Killed`` once sub-run ``run`` logs metrics (at
    ``step``, when given)."""

    def progress(name: str, at: int, metrics: Mapping[str, float]) -> None:
        if name == run and (step is None or at == step) and metrics:
            raise Killed

    return progress


#: Command-line options of a small probe run on the random test model (``--model`` and the
#: probe's own options given beside them).
SMALL_CLI = ["--prompts-per-step", "2", "--set", "group_size=4", "--set", "mini_batch_size=8",
             "--set", "micro_batch_size=8", "--set", "max_new_tokens=8", "--set",
             "device=\"cpu\""]


def run_recorded(run: Callable[..., Any], cfg: Any, run_dir: Path) -> tuple[Any, Any, list]:
    """``run(cfg, run_dir, progress=...)`` recording every progress call as ``(name, step,
    whether metrics were given)``; returns ``(cfg, result, calls)``."""
    calls: list[tuple[str, int, bool]] = []
    result = run(cfg, run_dir, progress=lambda name, step, m: calls.append((name, step, bool(m))))
    return cfg, result, calls


def recorded_probe(run: Callable[..., Any], config: Callable[..., Any], name: str) -> Any:
    """A module-scoped fixture: ``run_recorded(run, config(model_dir), <tmp>/name)``, the
    uninterrupted probe a test module's other tests read."""
    @pytest.fixture(scope="module")
    def probe(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, list]:
        return run_recorded(run, config(model_dir), tmp_path_factory.mktemp("runs") / name)
    return probe


def option_helps(probe: str) -> dict[str, str]:
    """Each option of ``dasd-probe <probe>`` by parameter name: its help text."""
    from cli import probe_command
    from probes.registry import get_probe

    return {param.name: param.help for param in probe_command(get_probe(probe)).params}


def assert_help_states_budgets(probe: str, options: Mapping[str, str],
                               default: Mapping[str, Any], quick: Mapping[str, Any]) -> None:
    """The help of each of ``options`` (option name -> TrainConfig key) of ``probe`` names its
    default and ``--quick`` budget values."""
    helps = option_helps(probe)
    for option, key in options.items():
        assert f"default {default[key]}; --quick: {quick[key]})" in helps[option], option
