"""Rich output for the CLI: progress bars that go quiet off a terminal or under --json.

Core modules never print; they take a `Reporter` and call `start/advance/finish`, which the CLI
backs with a rich progress bar (or nothing).
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

stdout = Console()
stderr = Console(stderr=True)


class Reporter:
    """Receives progress from long-running core functions. The base class ignores everything."""

    def start(self, description: str, total: float | None, unit: str = "it") -> None:
        """Begin a phase with `total` units of work (None when unknown)."""

    def advance(self, amount: float = 1, **fields: Any) -> None:
        """`amount` more units done; `fields` are shown next to the bar (loss, lr …)."""

    def finish(self) -> None:
        """End the current phase."""

    def log(self, message: str) -> None:
        """A line worth showing to the user (not an error)."""


class RichReporter(Reporter):
    """A rich progress bar with rate and ETA on stderr-friendly stdout."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.fields: dict[str, Any] = {}

    def start(self, description: str, total: float | None, unit: str = "it") -> None:
        self.finish()
        if unit == "bytes":
            columns = [DownloadColumn(), TransferSpeedColumn()]
        else:
            columns = [MofNCompleteColumn(), TextColumn("{task.fields[rate]}")]
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=20),
            TaskProgressColumn(),
            *columns,
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.unit = unit
        self.task = self.progress.add_task(description, total=total, info="", rate="")

    def advance(self, amount: float = 1, **fields: Any) -> None:
        if self.progress is None or self.task is None:
            return
        info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        speed = self.progress.tasks[0].speed
        rate = f"{speed:,.1f} {self.unit}/s" if speed else ""
        kwargs = {"rate": rate}
        if fields:
            kwargs["info"] = info
        self.progress.update(self.task, advance=amount, **kwargs)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.progress = None
        self.task = None

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)


class PlainReporter(Reporter):
    """No bars; log lines go to stderr so stdout stays clean (pipes, --json)."""

    def log(self, message: str) -> None:
        stderr.print(message, highlight=False)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def make_reporter(quiet: bool = False) -> Reporter:
    """A progress bar on a terminal; plain and quiet otherwise or when asked."""
    if quiet or not sys.stdout.isatty():
        return PlainReporter()
    return RichReporter(stdout)
