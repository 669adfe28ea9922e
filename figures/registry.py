"""The figure registry: paper figure name -> function(runs) -> Figure, or the reason it has no data.

A figure is one function registered with :func:`register_figure`; it receives every loaded run
(:class:`figures.runs.Run`), picks the ones it reads, and returns a matplotlib ``Figure`` or a
:class:`Missing` naming what it lacked. ``needs`` states, for the user, which runs the figure
reads and which command makes them. Adding a figure (6b/6c arm flips, 7 causal) is one more
decorated function.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .runs import Run, load_runs
from .style import paper_style, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Missing",
    "FigureSpec",
    "FigureOutcome",
    "FIGURES",
    "register_figure",
    "make_figure",
    "write_figures",
]


@dataclass(frozen=True)
class Missing:
    """A figure could not be drawn: ``reason`` says what the runs lacked."""

    reason: str


Builder = Callable[[Sequence[Run]], "Figure | Missing"]


@dataclass(frozen=True)
class FigureSpec:
    """A registered paper figure."""

    name: str
    """File stem and registry key, e.g. ``fig4_pass_at_k``."""
    title: str
    """What the figure shows, with the paper's figure number."""
    needs: str
    """The runs it reads and the command that makes them."""
    build: Builder


@dataclass(frozen=True)
class FigureOutcome:
    """One figure's result: the files written, or why there were none."""

    spec: FigureSpec
    files: tuple[Path, ...] = ()
    reason: str | None = None


#: Registered figures, in paper order.
FIGURES: dict[str, FigureSpec] = {}


def register_figure(name: str, *, title: str, needs: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``build`` as figure ``name``."""

    def deco(build: Builder) -> Builder:
        if name in FIGURES:
            raise ValueError(f"figure {name!r} is already registered")
        FIGURES[name] = FigureSpec(name, title, needs, build)
        return build

    return deco


def make_figure(name: str, runs: Sequence[Run]) -> Figure | Missing:
    """Draw figure ``name`` from ``runs`` (in the paper style); a ``ValueError`` listing the
    registered names for an unknown one."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; registered: {', '.join(FIGURES)}")
    with paper_style():
        return FIGURES[name].build(runs)


def write_figures(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | Sequence[Run],
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
) -> list[FigureOutcome]:
    """Every registered figure (or those in ``names``) the runs support, as ``NAME.png`` and
    ``NAME.pdf`` under ``out_dir``; figures without data are reported with their reason.

    ``paths``: run directories or their parents, or already loaded runs."""
    runs = _as_runs(paths)
    outcomes = []
    for name in names or list(FIGURES):
        result = make_figure(name, runs)
        spec = FIGURES[name]
        if isinstance(result, Missing):
            outcomes.append(FigureOutcome(spec, reason=result.reason))
        else:
            outcomes.append(FigureOutcome(spec, files=tuple(save_figure(result, out_dir, name))))
    return outcomes


def _as_runs(paths: object) -> list[Run]:
    if isinstance(paths, Sequence) and not isinstance(paths, (str, bytes)) and paths and all(
            isinstance(p, Run) for p in paths):
        return list(paths)
    return load_runs(paths)  # type: ignore[arg-type]
