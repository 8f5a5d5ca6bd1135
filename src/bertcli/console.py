"""Rich output for the CLI: a progress bar on a terminal, plain lines a cluster can read off one.

Core modules never print; they take a `Reporter` and call `start/advance/status/finish`, which
the CLI backs with a rich progress bar on a terminal, or off a terminal (SLURM, nohup, `| tee`)
with plain lines: one per `status` (the trainer's --log-every rows) and one every
`every_seconds` during long phases, each with done/total and ETA. --json keeps stdout to the
JSON object and shows the same progress on stderr, so `--json > result.json 2> run.log` still
logs a run advancing.
"""

from __future__ import annotations

import sys
import time
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

    def start(
        self, description: str, total: float | None, unit: str = "it", completed: float = 0
    ) -> None:
        """Begin a phase with `total` units of work (None when unknown), `completed` of them
        already done (a resumed run)."""

    def advance(self, amount: float = 1, **fields: Any) -> None:
        """`amount` more units done; `fields` are shown next to the bar (loss, lr …)."""

    def status(self, **fields: Any) -> None:
        """A summary of the phase so far (a logged row): one plain line off a terminal."""

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

    def start(
        self, description: str, total: float | None, unit: str = "it", completed: float = 0
    ) -> None:
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
        self.task = self.progress.add_task(
            description, total=total, completed=completed, info="", rate=""
        )

    def advance(self, amount: float = 1, **fields: Any) -> None:
        if self.progress is None or self.task is None:
            return
        info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        speed = self.progress.tasks[0].speed
        rate = _rate(speed, self.unit) if speed else ""
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
    """No bars: log lines, status lines and (every `every_seconds`) progress lines on stderr, so
    stdout stays clean for pipes and --json. `progress=False` keeps only the log lines."""

    def __init__(self, progress: bool = True, every_seconds: float = 30.0):
        self.progress = progress
        self.every_seconds = every_seconds
        self.description: str | None = None

    def start(
        self, description: str, total: float | None, unit: str = "it", completed: float = 0
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done = self.origin = completed
        self.t0 = self.last_line = time.monotonic()
        self.fields: dict[str, Any] = {}
        self.fields_done = completed  # where the fields were given: older lines say so

    def advance(self, amount: float = 1, **fields: Any) -> None:
        if self.description is None:
            return
        self.done += amount
        if fields:  # the newest fields (pages/s, loss …) go on the next periodic line
            self.fields, self.fields_done = fields, self.done
        if self.progress and time.monotonic() - self.last_line >= self.every_seconds:
            self._line(self.fields, self.fields_done)

    def status(self, **fields: Any) -> None:
        if self.progress and self.description is not None:
            self._line(fields)

    def finish(self) -> None:
        self.description = None

    def log(self, message: str) -> None:
        stderr.print(message, highlight=False, soft_wrap=True)  # one line, whatever the width

    def progress_line(self, fields: dict[str, Any], fields_at: float | None = None) -> str:
        """'Pretraining 20/200 steps (10%)  loss=7.1  lr=1e-04  4.2 steps/s  eta 0:00:43'.

        Fields given at an earlier point (`fields_at`, a heartbeat between log steps) are marked
        as the last logged values: 'loss=7.1  lr=1e-04 (step 10)'. Below one unit per second the
        rate is shown as seconds per unit ('3.2 s/step'), which keeps two significant digits.
        """
        now = time.monotonic()
        elapsed = now - self.t0
        rate = (self.done - self.origin) / elapsed if elapsed > 0 else 0.0
        unit = "" if self.unit == "bytes" else f" {self.unit}"
        head = f"{self.description} {_amount(self.done, self.unit)}"
        if self.total:
            head += f"/{_amount(self.total, self.unit)}{unit} ({100 * self.done / self.total:.0f}%)"
        else:
            head += unit
        parts = [head]
        shown = [f"{key}={_fmt(value)}" for key, value in fields.items() if value is not None]
        if shown and fields_at is not None and fields_at != self.done:
            shown[-1] += f" ({_singular(self.unit)} {_amount(fields_at, self.unit)})"
        parts += shown
        if rate > 0:
            parts.append(_rate(rate, self.unit))
            if self.total:
                parts.append(f"eta {_duration(max(0.0, self.total - self.done) / rate)}")
        return "  ".join(parts)

    def _line(self, fields: dict[str, Any], fields_at: float | None = None) -> None:
        stderr.print(self.progress_line(fields, fields_at), highlight=False, soft_wrap=True)
        self.last_line = time.monotonic()


def _singular(unit: str) -> str:
    """'steps' -> 'step' (units are named in the plural)."""
    return unit[:-1] if unit.endswith("s") and len(unit) > 1 else unit


def _rate(per_second: float, unit: str) -> str:
    """'4.2 steps/s', or below 1 unit/s '3.2 s/step' (0.3 steps/s hides a 3.0-3.5 s range)."""
    if unit == "bytes":
        return f"{_amount(per_second, unit)}/s"
    if per_second < 1.0:
        return f"{1.0 / per_second:,.1f} s/{_singular(unit)}"
    return f"{_amount(per_second, unit)} {unit}/s"


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        for suffix in ("B", "kB", "MB", "GB", "TB"):
            if value < 1000 or suffix == "TB":
                return f"{value:.1f} {suffix}" if suffix != "B" else f"{value:.0f} B"
            value /= 1000
    if value == int(value) or value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def make_reporter(quiet: bool = False) -> Reporter:
    """A progress bar on a terminal; plain lines off one. `quiet` (--json) keeps stdout for the
    JSON: the progress goes to stderr, a bar when stderr is a terminal, plain lines otherwise."""
    if quiet:
        return RichReporter(stderr) if sys.stderr.isatty() else PlainReporter()
    if not sys.stdout.isatty():
        return PlainReporter()
    return RichReporter(stdout)
