"""The paper's figures, drawn from run directories only (DESIGN.md section 2, STYLE.md item 10).

:data:`FIGURES` maps a figure name (``fig4_pass_at_k`` …) to its :class:`FigureSpec`;
:func:`write_figures` writes every figure the runs support as PNG and PDF and reports the
others with what they need; :func:`make_figure` draws one as a matplotlib ``Figure``.
``figures.terminal`` renders every command's console output.

The names below are loaded on first use (PEP 562), so that ``figures.terminal`` does not
import matplotlib and torch; the first of them registers the paper's figures.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Each public name and the module that defines it.
_HOME = {
    "FIGURES": "registry", "FigureOutcome": "registry", "FigureSpec": "registry",
    "Missing": "registry", "make_figure": "registry", "register_figure": "registry",
    "write_figures": "registry",
    "Run": "runs", "Group": "runs", "group_runs": "runs", "load_runs": "runs",
    "METHOD_COLORS": "style", "method_color": "style", "method_label": "style",
    "png_bytes": "style", "save_figure": "style",
}

__all__ = [*_HOME, "paper"]


def __getattr__(name: str) -> Any:
    if name != "paper" and name not in _HOME:
        raise AttributeError(f"module 'figures' has no attribute {name!r}")
    paper = importlib.import_module(".paper", __name__)  # registers the paper's figures
    return paper if name == "paper" else getattr(importlib.import_module(f".{_HOME[name]}",
                                                                         __name__), name)
