"""How each registered method is named and drawn: one table read by the tables (row labels),
the figures (colour, marker, legend label), the paper's numbers (its row in Tables 2, 6 and
7) and the command-line help.

Order: the paper's table order (Table 2's rows, then the two sign-flip arms of Probe 1); the
figures keep their own legend order (``figures.style.METHOD_ORDER``). Colours: GRPO, OPSD and
DASD follow the paper (orange, mauve, green); the others are fixed, colour-blind-safe picks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METHOD_STYLES", "MethodStyle"]


@dataclass(frozen=True)
class MethodStyle:
    """The presentation of one method."""

    label: str
    """Row and legend label (the paper's name)."""
    color: str
    """Line and marker colour in the figures."""
    marker: str
    """Matplotlib marker in the figures."""
    paper_row: str | None = None
    """The method's row in the paper's Tables 2, 6 and 7 (None: not a row there)."""


#: Method registry name -> its style, in the paper's table order.
METHOD_STYLES: dict[str, MethodStyle] = {
    "grpo": MethodStyle("GRPO", "#E69F00", "o", "+GRPO"),
    "hepo": MethodStyle("HEPO", "#56B4E9", "P", "+HEPO"),
    "opsd": MethodStyle("OPSD", "#B07AA1", "s", "+OPSD"),
    "sdpo": MethodStyle("SDPO", "#BCBD22", "<", "+SDPO"),
    "rlsd": MethodStyle("RLSD", "#8C564B", "X", "+RLSD"),
    "srpo": MethodStyle("SRPO", "#17BECF", ">", "+SRPO"),
    "dasd": MethodStyle("DASD", "#2CA02C", "D", "+DASD (ours)"),
    "conformity": MethodStyle("Conformity", "#0072B2", "^"),
    "novelty": MethodStyle("Novelty", "#D62728", "v"),
}
