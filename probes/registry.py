"""The probe registry: a probe is one module that registers its options, how it runs and how
its result is shown; ``dasd-probe`` gets one command per registered probe.

A probe module ends with::

    register_probe("entropy-tv", options=EntropyTVConfig, run=_run, show=_show)

``options`` is a dataclass; ``cli.py`` makes each of its fields a command-line option (the
field's name with dashes, its type and default, its docstring as the help), as CleanRL's
``tyro.cli(Args)`` and TRL's dataclass parsers do, so a probe never writes command-line code.
``run(options, run_dir, terminal)`` runs (or resumes) the probe into ``run_dir`` showing its
progress on ``terminal`` and returns its result; ``show(options, result, run_dir, terminal)``
prints it. :func:`discover_probes` finds every ``register_probe`` call in the modules of the
``probes`` package by reading their source, so adding a probe touches one module
(docs/adding-a-probe.md walks through a toy one), and ``dasd-probe --help`` imports none of them
(torch and transformers take seconds to import); :func:`get_probe` imports the one asked for.

Field conventions read by the command-line generator (``cli.py``): ``str``, ``int``,
``float``, ``bool`` and ``Path`` fields (or ``X | None``) are options of the same name
(``bool | None``: given as ``on``, ``off`` or empty);

- ``tuple[str, ...]`` fields are given comma-separated (``--parts forks,revisions``), or
  repeated when the field's metadata says ``{"repeatable": True}``;
- a field's metadata ``{"flag": "--set"}`` names its option where the field name cannot,
  ``{"aliases": ("--ci",)}`` adds other accepted names, and ``{"panel": "Sampling"}`` lists
  it under that heading of ``--help`` (the shared bases of ``probes.config_bases`` do both);
- fields whose annotation is not a plain value (a mapping) are not options;
- an ``options`` class may define ``option_default(name) -> str | None``, a text appended to
  a field's help (e.g. the budget defaults of the training probes);
- a ``resume: Path | None`` field continues that run, and the command then refuses every
  option but those named in the class's ``resume_takes``.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from figures.terminal import Terminal

__all__ = ["PROBES", "Probe", "ProbeSource", "discover_probes", "get_probe", "register_probe",
           "timestamped_name"]


@dataclass(frozen=True)
class Probe:
    """One registered probe."""

    name: str
    """The command name, e.g. ``entropy-tv``."""
    options: type
    """A dataclass whose fields are the command's options."""
    run: Callable[[Any, Path, Terminal], Any]
    """``run(options, run_dir, terminal) -> result``."""
    show: Callable[[Any, Any, Path, Terminal], None]
    """``show(options, result, run_dir, terminal)``: the result on the terminal."""
    help: str
    """What the probe measures (the command's help; the run function's docstring)."""
    default_name: Callable[[Any], str]
    """The run directory's name when ``--name`` is not given."""
    default_name_text: str
    """That name as the help states it, e.g. ``entropy-tv-<model>-<time>``."""
    resumable: bool
    """Whether re-running with the same options and ``--name`` resumes an interrupted run."""
    interrupt_hint: Callable[[Any, Path], str] | None
    """``interrupt_hint(options, run_dir)``: how to continue after Ctrl-C (None: nothing to
    say)."""


def timestamped_name(kind: str, model: str) -> str:
    """``<kind>-<model>-<UTC time>``, the model reduced to its last path part in safe
    characters: a fresh run directory name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-")
    return f"{kind}-{slug}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


#: Every registered probe by name, in registration order.
PROBES: dict[str, Probe] = {}


def register_probe(name: str, *, options: type, run: Callable[[Any, Path, Terminal], Any],
                   show: Callable[[Any, Any, Path, Terminal], None],
                   default_name: Callable[[Any], str] | None = None,
                   default_name_text: str | None = None, resumable: bool = False,
                   interrupt_hint: Callable[[Any, Path], str] | None = None) -> Probe:
    """Register the probe ``name`` (module docstring); returns its :class:`Probe`.
    ``default_name`` defaults to ``timestamped_name(name, options.model)``
    (``<name>-<model>-<time>``, its ``default_name_text``); the help is ``run``'s docstring;
    a ``resumable`` probe's ``interrupt_hint`` defaults to rerunning with the same name."""
    if name in PROBES:
        raise ValueError(f"probe {name!r} is registered twice")
    if not is_dataclass(options):
        raise TypeError(f"probe {name!r}: options must be a dataclass, got {options!r}")
    if not run.__doc__:
        raise ValueError(f"probe {name!r}: its run function needs a docstring (the help)")
    probe = Probe(name=name, options=options, run=run, show=show,
                  help=" ".join(run.__doc__.split()),
                  default_name=default_name or (lambda opts: timestamped_name(name, opts.model)),
                  default_name_text=default_name_text or f"{name}-<model>-<time>",
                  resumable=resumable,
                  interrupt_hint=interrupt_hint or (_same_name if resumable else None))
    PROBES[name] = probe
    return probe


@dataclass(frozen=True)
class ProbeSource:
    """Where a probe is registered, read from source without importing it."""

    name: str
    """The command name."""
    module: str
    """The module that registers it, e.g. ``probes.entropy_tv``."""
    help: str
    """Its run function's docstring on one line (the command's help)."""


def discover_probes() -> dict[str, ProbeSource]:
    """Every probe of the ``probes`` package by name: each module's top-level
    ``register_probe("name", ..., run=function)`` statements, read from its source."""
    import probes

    found: dict[str, ProbeSource] = {}
    for info in pkgutil.iter_modules(probes.__path__):
        path = Path(getattr(info.module_finder, "path", "")) / f"{info.name}.py"
        if not path.is_file():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = {node.name: ast.get_docstring(node) or "" for node in tree.body
                if isinstance(node, ast.FunctionDef)}
        for node in tree.body:
            call = node.value if isinstance(node, ast.Expr | ast.Assign) else None
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                    and call.func.id == "register_probe" and call.args
                    and isinstance(call.args[0], ast.Constant)):
                continue
            run = next((k.value for k in call.keywords if k.arg == "run"), None)
            doc = docs.get(run.id, "") if isinstance(run, ast.Name) else ""
            name = call.args[0].value
            found[name] = ProbeSource(name=name, module=f"probes.{info.name}",
                                      help=" ".join(doc.split()))
    return found


def _same_name(options: Any, run_dir: Path) -> str:
    return f"resume with the same options and --name {run_dir.name}"


def get_probe(name: str) -> Probe:
    """The registered probe ``name``, importing only its module; a one-line error lists the
    valid ones."""
    sources = discover_probes()
    if name not in PROBES and name in sources:
        importlib.import_module(sources[name].module)
    try:
        return PROBES[name]
    except KeyError:
        raise ValueError(f"unknown probe {name!r}; valid: {', '.join(sources)}") from None
