"""The paper's figures, drawn from run directories only (DESIGN.md section 2, STYLE.md item 10).

:data:`FIGURES` maps a figure name (``fig4_pass_at_k`` …) to its :class:`FigureSpec`;
:func:`write_figures` writes every figure the runs support as PNG and PDF and reports the
others with what they need; :func:`make_figure` draws one as a matplotlib ``Figure``.
"""

from . import paper
from .registry import (
    FIGURES,
    FigureOutcome,
    FigureSpec,
    Missing,
    make_figure,
    register_figure,
    write_figures,
)
from .runs import Group, Run, group_runs, load_runs
from .style import METHOD_COLORS, method_color, method_label, png_bytes, save_figure

__all__ = [
    "FIGURES",
    "FigureOutcome",
    "FigureSpec",
    "Missing",
    "make_figure",
    "register_figure",
    "write_figures",
    "Run",
    "Group",
    "group_runs",
    "load_runs",
    "METHOD_COLORS",
    "method_color",
    "method_label",
    "png_bytes",
    "save_figure",
    "paper",
]
