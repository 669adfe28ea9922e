"""Plotting conventions of the paper (appendix F, "Plotting conventions") and byte-stable saving.

- One fixed color per method: GRPO orange, OPSD mauve, DASD green (the paper's three), plus
  fixed colors for the probes' Conformity / Novelty and the other baselines, so a method has
  the same color in every figure. Runs without a method (a base model) are gray.
- Curves drawn from logged checkpoints carry markers on the logged points.
- The style is applied locally (``with paper_style():``); global ``rcParams`` are never changed.
- Saving is deterministic: the same figure gives byte-identical PNG and PDF files (fixed dpi,
  no software / producer / creation-date metadata).

Matplotlib is imported inside functions only (no backend is selected: figures are
``matplotlib.figure.Figure`` objects, saved through their own canvas, never through pyplot).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from dasd.method_styles import METHOD_STYLES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "METHOD_COLORS",
    "METHOD_LABELS",
    "METHOD_MARKERS",
    "METHOD_ORDER",
    "BASE_COLOR",
    "DPI",
    "method_color",
    "method_label",
    "method_marker",
    "paper_style",
    "new_figure",
    "save_figure",
    "png_bytes",
]

#: Legend and drawing order of curves.
METHOD_ORDER: tuple[str, ...] = ("grpo", "opsd", "dasd", "conformity", "novelty", "hepo", "rlsd",
                                 "sdpo", "srpo")
#: Each method's colour, label and marker (``dasd.method_styles``), in legend order.
METHOD_COLORS: dict[str, str] = {m: METHOD_STYLES[m].color for m in METHOD_ORDER}
METHOD_LABELS: dict[str, str] = {m: METHOD_STYLES[m].label for m in METHOD_ORDER}
METHOD_MARKERS: dict[str, str] = {m: METHOD_STYLES[m].marker for m in METHOD_ORDER}
#: Runs without a method (an untrained base model) and methods outside the table.
BASE_COLOR = "#7F7F7F"
DPI = 150

_STYLE: dict[str, object] = {
    "font.size": 9.0,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9.0,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 4.0,
    "pdf.fonttype": 42,
}


def method_color(method: str | None) -> str:
    """The method's fixed color; gray for a base model (``None``) or an unknown method."""
    return METHOD_COLORS.get(method or "", BASE_COLOR)


def method_label(method: str | None) -> str:
    """Display name: ``GRPO``, ``DASD`` …; ``Base`` for ``None``; other names unchanged."""
    if method is None:
        return "Base"
    return METHOD_LABELS.get(method, method)


def method_marker(method: str | None) -> str:
    """The method's fixed marker (``o`` for a base model or an unknown method)."""
    return METHOD_MARKERS.get(method or "", "o")


@contextmanager
def paper_style() -> Iterator[None]:
    """The figures' style (seaborn white grid plus the overrides above), applied locally."""
    import matplotlib.style

    with matplotlib.style.context(["seaborn-v0_8-whitegrid", _STYLE]):
        yield


def new_figure(ncols: int, *, nrows: int = 1, width: float = 3.8, height: float = 3.2
               ) -> tuple[Figure, list]:
    """A constrained-layout figure of ``nrows x ncols`` panels, each ``width x height`` inches;
    returns it with its axes as a flat list. Call inside :func:`paper_style`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save_figure(fig: Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``stem.png`` (``DPI``) and ``stem.pdf`` under ``out_dir``; byte-identical on every
    call for the same figure. Returns the two paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
    with paper_style():
        fig.savefig(png, format="png", dpi=DPI, metadata={"Software": None})
        fig.savefig(pdf, format="pdf", metadata={"Creator": None, "Producer": None,
                                                  "CreationDate": None})
    return [png, pdf]


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (as :func:`save_figure` writes it)."""
    buffer = io.BytesIO()
    with paper_style():
        fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()
