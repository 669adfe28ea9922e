"""Every command's console output: tables, lines, progress bars and status lines.

The probes and ``cli.py`` describe what to show (titles, column names, rows of strings); this
module is the one place that decides how it looks in a terminal (rich). A table too wide for
the terminal becomes one ``column=value`` record per row, so a narrow terminal or a log file
keeps every value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

__all__ = ["SECTION", "StageBar", "Terminal", "cell"]

#: A row that ends a group of rows (a rule under it) in :meth:`Terminal.table`.
SECTION: tuple[str, ...] = ()


def cell(value: object, fmt: str = ".3f") -> str:
    """A table cell: ``value`` formatted with ``fmt`` when it is a float, ``–`` when it is
    missing (None or NaN), else ``str(value)``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt) if isinstance(value, float) else str(value)


@dataclass
class Terminal:
    """Output to one rich console (default: stdout)."""

    console: Console

    @classmethod
    def stdout(cls) -> Terminal:
        return cls(Console())

    def line(self, text: str) -> None:
        """One line of plain text (no markup, never wrapped)."""
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *,
              caption: str | None = None, left: int = 1) -> None:
        """A table of string cells; the first ``left`` columns are left-aligned, the rest
        right-aligned; a :data:`SECTION` row draws a rule between groups of rows."""
        table = Table(title=escape(title), caption=None if caption is None else escape(caption))
        for i, column in enumerate(columns):
            table.add_column(escape(column), justify="left" if i < left else "right")
        for row in rows:
            if row == SECTION:
                table.add_section()
            else:
                table.add_row(*(escape(value) for value in row))
        self.console.print(table)

    def wide_table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *,
                   left: int = 1) -> None:
        """:meth:`table` without wrapping; on a terminal too narrow for it, the title and one
        ``first columns: column=value, ...`` record per row."""
        widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
        if sum(widths) + 3 * len(columns) + 1 <= self.console.width:
            table = Table(title=escape(title))
            for i, column in enumerate(columns):
                table.add_column(escape(column), justify="left" if i < left else "right",
                                 no_wrap=True)
            for row in rows:
                table.add_row(*(escape(value) for value in row))
            self.console.print(table)
            return
        self.line(title)
        for row in rows:
            self.line(" ".join(row[:left]) + ": " + ", ".join(
                f"{c}={v}" for c, v in zip(columns[left:], row[left:])))

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar with time elapsed and left, gone when done; yields ``advance(n)``."""
        columns = (*Progress.get_default_columns(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task, n)

    @contextmanager
    def bars(self, total: int, *, labels: Mapping[str, str] | None = None,
             info: Callable[[Mapping[str, float]], str | None] | None = None,
             ) -> Iterator[Callable[[str, int, Mapping[str, float]], None]]:
        """One progress bar per sub-run of a multi-run probe, each out of ``total`` updates;
        yields ``update(run, step, metrics)`` (``parent_run.Progress``). A bar is labelled
        ``labels[run]`` (default: the run's name); ``info(metrics)``, where given and not
        None, is shown beside it (e.g. the latest held-out accuracy)."""
        columns = [*Progress.get_default_columns(), TimeElapsedColumn()]
        if info is not None:
            columns.append(TextColumn("{task.fields[info]}"))
        with Progress(*columns, console=self.console) as progress:
            tasks: dict[str, TaskID] = {}

            def update(run: str, step: int, metrics: Mapping[str, float]) -> None:
                if run not in tasks:
                    fields = {} if info is None else {"info": ""}
                    tasks[run] = progress.add_task((labels or {}).get(run, run), total=total,
                                                   **fields)
                shown = None if info is None else info(metrics)
                fields = {} if shown is None else {"info": shown}
                progress.update(tasks[run], completed=step, **fields)

            yield update

    @contextmanager
    def status(self, text: str) -> Iterator[Callable[[str], None]]:
        """A spinner with a status line; yields ``update(line)``."""
        with self.console.status(text) as status:
            yield lambda line: status.update(line)

    @contextmanager
    def stages(self, names: Sequence[str], seconds: Sequence[float]) -> Iterator[StageBar]:
        """One progress bar over a sequence of stages (``reproduce``, ``validate``), each
        weighted by its estimated ``seconds``; yields the ``probes.reproduce.Display``."""
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      TextColumn("left"), TimeRemainingColumn(),
                      TextColumn("{task.fields[run]}"), console=self.console) as progress:
            yield StageBar(progress, list(names), list(seconds))


class StageBar:
    """``probes.reproduce.Display`` on a rich progress bar: the stage, the run at work and the
    time left from the per-stage estimates."""

    def __init__(self, bar: Progress, names: list[str], seconds: list[float]) -> None:
        self.bar, self.names, self.seconds = bar, names, seconds
        self.task = bar.add_task("starting", total=sum(seconds), run="")
        self.index = 0

    def stage(self, index: int, stage: Any, action: str) -> None:
        self.index = index
        self.bar.update(self.task, completed=sum(self.seconds[:index]),
                        description=f"stage {index + 1}/{len(self.names)} {stage.name} "
                                    f"({action})", run="")

    def progress(self, run: str, done: float, total: float) -> None:
        share = min(done / total, 1.0) if total else 0.0
        self.bar.update(self.task, run=run, completed=sum(self.seconds[:self.index])
                        + share * self.seconds[self.index])

    def finished(self, index: int, stage: Any) -> None:
        self.bar.update(self.task, completed=sum(self.seconds[:index + 1]))
